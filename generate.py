"""
Generation, in gpt-fast's shape: a preallocated KV cache (model.setup_cache), one `prefill` over the prompt, then a
small step, `decode_and_sample` (feed a token, sample the next), that `torch.compile` turns into one CUDA graph.
On top of it: `stream` / `generate` (ragged batches, classifier-free guidance, continuation anchors),
`token_logprobs` (teacher-forced scores) and `synthesize` (any length of text in chunks, voice prompts, best_of),
which sample.py, eval.py, bench.py and train.py's samples all use.

Every sampling setting lives in one place, the Sampling dataclass below; scripts take their command-line settings
from its fields and hand one Sampling object down to the step that uses it.
"""

import re
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from codec import TOKENS_PER_SECOND
from model import EOA, N_COARSE, N_FINE, PAD, SOA, make_prompt, stream_positions, text_to_tokens


@dataclass(frozen=True)
class Sampling:
    """How to sample: every script that samples takes these settings (same names, same defaults) from here."""

    # lower: fewer slips and less variety; the synthetic corpus is said best near 0.6 (docs/results.md)
    temperature: float = 0.6  # 0 = greedy
    top_k: int = 0  # sample each stage from its k most likely classes; 0 = off
    # each stage (coarse class, fine digits) draws from its smallest set of classes holding this much probability;
    # the tail it cuts is where slips and new voices come from, and a long text draws from it thousands of times
    top_p: float = 0.8  # nucleus sampling; 0 or 1 = off
    cfg_scale: float = 1.0  # classifier-free guidance; 1 = off (needs a model trained with text_dropout > 0)
    best_of: int = 1  # sample each chunk this many times side by side and keep the most likely (fewer slips)
    max_seconds: float = 30.0  # the longest audio for one chunk of text

    def __post_init__(self):
        """An impossible setting is a ValueError naming it, the same in every script (they print it as one line)."""
        limits = {"temperature": (0, 10, "0 (greedy) to 10"), "top_k": (0, None, "0 (off) or more"),
                  "top_p": (0, 1, "0 to 1 (0 or 1 = off)"), "cfg_scale": (1e-9, 20, "above 0, at most 20"),
                  "best_of": (1, 64, "1 to 64"), "max_seconds": (1e-9, 3600, "above 0, at most 3600")}
        for name, (low, high, allowed) in limits.items():
            value = getattr(self, name)
            whole = self.__dataclass_fields__[name].type is int  # top_k, best_of: a count, never 2.5
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not (
                    low <= value and (high is None or value <= high)):
                raise ValueError(f"--{name}={value!r} is out of range: use {allowed}")

    @classmethod
    def defaults(cls):
        """{setting: default}: what a script puts among its globals for the configurator to override."""
        return asdict(cls())

    @classmethod
    def from_settings(cls, settings):
        """The Sampling of a script's settings (its globals, after the configurator)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls)})

# -----------------------------------------------------------------------------
# the step: prefill, decode one token, sample it


def prefill(model, idx, pos, valid, P, anchor=None):
    """Run the whole prompt once, filling the cache; returns the last position's hidden state [B, n_embd]."""
    T = idx.shape[1]
    causal = torch.ones(T, valid.shape[1], dtype=torch.bool, device=idx.device).tril()
    own = torch.eye(T, valid.shape[1], dtype=torch.bool, device=idx.device)
    # a pad query sees only itself: a query with no visible key would make NaNs that leak through the values
    mask = (causal[None] & (valid[:, None, :] | own[None]))[:, None]  # [B, 1, T, S]
    return model(idx, pos=pos, mask=mask, input_pos=torch.arange(T, device=idx.device), anchor=anchor)[:, -1]


def decode_one_token(model, token, pos, valid, input_pos):
    """One step: a single new token per row attends to every filled slot up to input_pos. Returns [B, n_embd]."""
    slots = torch.arange(valid.shape[1], device=token.device)
    mask = (valid & (slots[None, :] <= input_pos))[:, None, None, :]  # [B, 1, 1, S]
    return model(token, pos=pos, mask=mask, input_pos=input_pos)[:, -1]


def decode_and_sample(model, token, pos, valid, input_pos, sampling, noise=None):
    """
    One generation step, the unit sample.py --compile turns into a CUDA graph: feed each row's last token [B] (twice
    under guidance: the conditional rows, then the unconditional), then sample the next one [B]. Sampling in the
    graph too, not only the decode: eager sampling is some 25 small kernel launches, which on a GPU can take longer
    than the whole compiled decode (docs/results.md). noise: as sample_audio_token's; the graph takes the draws of
    draw_races as an input (a torch.Generator cannot go into it).
    """
    feed = token.repeat(2) if sampling.cfg_scale != 1.0 else token
    h = decode_one_token(model, feed[:, None], pos, valid, input_pos)
    return sample_audio_token(model, h, sampling, noise)


def decode_compile_options(device):
    """
    torch.compile options for decode_and_sample on a device. On a CPU a batch-1 step is bound by reading the weights
    once, in model.matvec's product-and-sum loops, and inductor by default inlines whatever computed a loop's input
    vector (the RMSNorm before it, even the embedding lookups of the first layer) into the loop, recomputing it once
    per weight row: hidden behind memory in fp32, it is most of an int8 step. Realizing every elementwise result that
    reads more than one buffer (realize_acc_reads_threshold=1) computes each input once; the step gets 1.15x faster in
    fp32, 2.1x in int8 (docs/results.md). On CUDA the step is replayed as a CUDA graph, and at batch 1 it is bound by
    its ~150 small kernels, not by memory bandwidth; so, as gpt-fast: coordinate-descent tuning (with it inductor also
    writes each batch-1 matrix-vector product as a Triton reduction fused with its neighbours, the RMSNorm before it
    say, instead of a cuBLAS call), combo kernels (small independent kernels launched as one) and, from Hopper on,
    programmatic dependent launch (a kernel's start overlaps the end of the one before). What each gains:
    docs/results.md.
    """
    if not str(device).startswith("cuda"):
        return {"realize_acc_reads_threshold": 1}
    options = {"triton.cudagraphs": True, "coordinate_descent_tuning": True, "combo_kernels": True}
    if torch.cuda.get_device_capability(device) >= (9, 0):
        options["triton.enable_pdl"] = True
    return options


def compile_decode_step(device):
    """decode_and_sample compiled for device (sample.py --compile, bench.py --compile=True): one static graph per
    shape (dynamic=False), so stream() keeps its cache lengths few."""
    return torch.compile(decode_and_sample, dynamic=False, options=decode_compile_options(device))


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """Temperature, then top-k, then nucleus (top-p) filtering of [B, V] logits. temperature must be > 0."""
    logits = logits / temperature
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p and 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def pick(logits, sampling, noise):
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p).softmax(dim=-1)
    # the exponential race: argmax(p_i / E_i), E_i ~ Exp(1), is i with probability p_i, with no host sync and no
    # torch.multinomial, so that a compiled step samples inside its CUDA graph (gpt-fast does the same)
    race = noise if isinstance(noise, torch.Tensor) else torch.empty_like(probs).exponential_(1, generator=noise)
    return (probs / race).argmax(dim=-1)


RACE_WIDTH = N_COARSE + 1 + N_FINE  # one row's draws per step: its coarse class (or EOA), then its fine digits


def generator_runs(generators):
    """[(generator, first row, end row)]: the runs of adjacent rows that share one generator (a text's best_of)."""
    runs = []
    for j, g in enumerate(generators):
        if runs and runs[-1][0] is g:
            runs[-1][2] = j + 1
        else:
            runs.append([g, j, j + 1])
    return runs


def draw_races(races, runs, ended):
    """
    One step's Exp(1) draws for sample_audio_token, each text from its own stream: races [B, RACE_WIDTH] is refilled
    in place, row by row (its coarse draws, then its fine ones), one call per run of rows that share a generator
    (generator_runs), and only while one of them is still speaking (ended: per row, a list). So a text's draws are a
    function of its seed and of its own tokens alone: not of its batch mates, nor of how long they run after it has
    ended, nor of when it joined. The cost is one call per text per step, not one per batch: on a CPU, 1 to 2 us
    per text on top of the ~7 us of its draws (docs/serving.md); on a GPU one small kernel launch per text
    per step, outside the compiled step's graph. A counter-based stream (a Philox hash of seed and step in the graph)
    would be one kernel, but would change every sampled output, batch-1 ones too.
    """
    for g, first, end in runs:
        if not all(ended[first:end]):
            races[first:end].exponential_(1, generator=g)
    return races


def sample_audio_token(model, h, sampling, noise=None):
    """
    One next token per row from hidden states h [B, n_embd]: a coarse class (or EOA), then the fine digits given
    it. Only audio ids 0..46655 or EOA can come out. temperature 0 = greedy; top-k / top-p apply to each stage.
    With cfg_scale != 1, h holds the conditional rows then the unconditional ones ([2B, n_embd]); both stages use
    the guided logits uncond + cfg_scale * (cond - uncond), and B tokens come out (guidance draws nothing more).
    noise: where the random draws come from: None (torch's global random state) or a torch.Generator, one stream
    for the whole batch; or the draws themselves, [B, RACE_WIDTH] from draw_races, one stream per text.
    """
    guided = sampling.cfg_scale != 1.0

    def guide(logits):
        if not guided:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + sampling.cfg_scale * (cond - uncond)

    drawn = isinstance(noise, torch.Tensor)
    coarse = pick(guide(model.coarse_logits(h)), sampling, noise[:, :N_COARSE + 1] if drawn else noise)
    eoa = coarse == N_COARSE
    coarse = coarse.clamp(max=N_COARSE - 1)
    both = coarse.repeat(2) if guided else coarse
    fine = pick(guide(model.fine_logits(h, both)), sampling, noise[:, N_COARSE + 1:] if drawn else noise)
    return torch.where(eoa, torch.full_like(coarse, EOA), coarse * N_FINE + fine)

# -----------------------------------------------------------------------------
# whole generations


@torch.no_grad()
def stream(model, prompts, max_new_tokens, sampling=Sampling(), generators=None, uncond_prompts=None,
           decode_step=None, anchors=None):
    """
    Continue each prompt (a 1-D LongTensor from model.make_prompt) with audio tokens, yielding the next token of every
    row ([B] LongTensor, EOA once a row is done) as soon as it is sampled.
    Prompts of different lengths are left-padded into one batch: pads are masked out and each row keeps its own
    RoPE positions, so a row's output is the same as when it is sampled alone.
    Classifier-free guidance (sampling.cfg_scale != 1): uncond_prompts (the same prompts without their text) run in
    the same batch, and logits = uncond + cfg_scale * (cond - uncond) at each stage of the head.
    generators: per prompt, the torch.Generator its draws come from (draw_races; adjacent prompts may share one: a
    text's best_of samples), so that each row samples the same whatever its batch mates; None: torch's global random
    state, one stream for the batch. decode_step: a compile_decode_step(), or None for the eager decode_and_sample.
    anchors: per prompt, None or (for one that ends in a voice prompt's audio) the byte of its text where the new
    speech starts; with GPTConfig.anchor_continuations the new audio's positions restart there.
    """
    cfg = model.config
    device = model.wte.weight.device
    B = len(prompts)
    guided = sampling.cfg_scale != 1.0
    if guided and (uncond_prompts is None or len(uncond_prompts) != B):
        raise ValueError("classifier-free guidance needs one unconditional prompt per prompt")
    rows = list(prompts) + (list(uncond_prompts) if guided else [])
    lengths = torch.tensor([len(p) for p in rows], device=device)
    P = int(lengths.max())
    total = P + max_new_tokens
    if total > cfg.block_size:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds block_size {cfg.block_size}")
    compiled = decode_step not in (None, decode_and_sample)
    if compiled:  # a few cache lengths, not one per call: each new shape recompiles (and records a CUDA graph)
        total = min(cfg.block_size, -(-total // 256) * 256)
    pad = P - lengths  # left padding per row
    idx = torch.full((len(rows), P), PAD, dtype=torch.long, device=device)
    for i, p in enumerate(rows):
        idx[i, pad[i]:] = p.to(device)
    slots = torch.arange(total, device=device)
    valid = slots[None, :] >= pad[:, None]  # [rows, total]: which cache slots hold real tokens, per row
    soa_at = torch.tensor([int((p == SOA).nonzero()[0]) for p in rows], device=device)[:, None]
    anchor_at = anchor_byte = None
    if cfg.anchor_continuations and anchors is not None and any(a is not None for a in anchors):
        anchored = torch.tensor([a is not None for a in anchors] + [False] * (len(rows) - B), device=device)
        anchor_at = torch.where(anchored, lengths - 1, total)[:, None]  # the prompt's last audio token
        anchor_byte = torch.tensor([a or 0 for a in anchors] + [0] * (len(rows) - B), device=device)[:, None]
    pos_all = stream_positions(slots[None, :] - pad[:, None], soa_at, cfg.audio_pos_rate, cfg.align_audio_pos,
                               anchor_at, anchor_byte)

    model.setup_cache(len(rows), total)
    decode_step = decode_step or decode_and_sample
    noise = None
    if generators is not None and sampling.temperature > 0:
        if len(generators) != B:
            raise ValueError(f"{len(generators)} generators for {B} prompts: give one per prompt")
        runs = generator_runs(generators)
        noise = draw_races(torch.empty(B, RACE_WIDTH, device=device), runs, [False] * B)
    try:
        anchor = None
        if anchor_at is not None:  # at each anchored prompt's last token, as data.get_batch marks it
            anchor = torch.full((len(rows), P), -1, dtype=torch.long, device=device)
            anchor[:, P - 1] = torch.where(anchored, anchor_byte[:, 0], -1)
        h = prefill(model, idx, pos_all[:, :P], valid[:, :P], P, anchor)  # the prompt sees the prompt's slots only
        token = sample_audio_token(model, h, sampling, noise)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        # eager steps drop the rows whose text has ended from the batch (and the KV cache), a quarter of the batch at a
        # time: a step reads every row's cache, so it then costs what the rows still speaking do. keep: the prompts
        # still in the batch, in order; a text's best_of rows (one generator) stay until all of them have ended
        keep = list(range(B))
        group = [(first, end) for _, first, end in runs] if noise is not None else [(j, j + 1) for j in range(B)]
        for t in range(max_new_tokens):
            if len(keep) < B:  # the full row of tokens: EOA for the rows that have left
                token = torch.full((B,), EOA, dtype=token.dtype, device=device).index_copy_(0, keep_t, token)
            token = torch.where(done, torch.full_like(token, EOA), token)  # a new tensor: a graph's output is not
            done |= token == EOA
            yield token
            ended = done.tolist()
            if all(ended) or t == max_new_tokens - 1:
                break
            if noise is not None:  # the rows that have ended draw no more
                draw_races(noise, runs, ended)
            if not compiled:
                going = [j for first, end in group if not all(ended[first:end]) for j in range(first, end)]
                if len(keep) - len(going) >= max(1, len(keep) // 4):
                    at = {j: n for n, j in enumerate(keep)}
                    rows_now = [at[j] for j in going]
                    model.keep_cache_rows(torch.tensor(rows_now + [r + len(keep) for r in rows_now] if guided
                                                       else rows_now, device=device))
                    keep = going
                    keep_t = torch.tensor(keep, device=device)
                    sel = torch.cat([keep_t, keep_t + B]) if guided else keep_t
            slot = P + t
            # eager: attend to (and read) the filled slots only; compiled: one static shape, one graph
            seen = valid if compiled else valid[:, :slot + 1]
            pos = pos_all[:, slot:slot + 1]
            if len(keep) < B:
                token, pos, seen = token[keep_t], pos[sel], seen[sel]
            token = decode_step(model, token, pos, seen, slots[slot:slot + 1], sampling,
                                noise if noise is None or len(keep) == B else noise[keep_t])
    finally:
        model.clear_cache()


@torch.no_grad()
def generate(model, prompts, max_new_tokens, sampling=Sampling(), generators=None, uncond_prompts=None,
             decode_step=None, anchors=None):
    """stream() to the end: a list of 1-D LongTensors of audio ids per prompt (EOA not included)."""
    steps = list(stream(model, prompts, max_new_tokens, sampling, generators, uncond_prompts, decode_step, anchors))
    out = torch.stack(steps, 1) if steps else torch.empty(len(prompts), 0, dtype=torch.long)
    results = []
    for row in out:
        stop = (row == EOA).nonzero()
        results.append(row[: int(stop[0])] if len(stop) else row)
    return results


@torch.no_grad()
def token_logprobs(model, prompts, continuations, anchors=None):
    """
    Teacher-forced scores: per row, the log-probability of each token of a continuation (1-D audio ids, and EOA if
    it ends) after its prompt (a make_prompt stream; anchors as in stream()), in one batch of right-padded rows.
    Returns a list of 1-D float tensors. synthesize's best_of ranks samples of one text by these.
    """
    device = model.wte.weight.device
    rows = [torch.cat([p.to(device), c.to(device)]) for p, c in zip(prompts, continuations)]
    idx = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long, device=device)
    anchor = torch.full_like(idx, -1)
    for j, row in enumerate(rows):
        idx[j, :len(row)] = row
        if anchors is not None and anchors[j] is not None:
            anchor[j, len(prompts[j]) - 1] = anchors[j]  # the prompt's last audio token, as data.get_batch marks it
    h = model(idx, anchor=anchor)
    scores = []
    for j, (p, c) in enumerate(zip(prompts, continuations)):
        hj, c = h[j, len(p) - 1:len(p) - 1 + len(c)], c.to(device)  # the state before each token predicts it
        coarse = torch.where(c == EOA, N_COARSE, c // N_FINE)
        lp = model.coarse_logits(hj).log_softmax(-1).gather(1, coarse[:, None])[:, 0]
        fine = model.fine_logits(hj, coarse.clamp(max=N_COARSE - 1)).log_softmax(-1)
        scores.append(lp + torch.where(c == EOA, 0.0, fine.gather(1, (c % N_FINE)[:, None])[:, 0]))
    return scores

# -----------------------------------------------------------------------------
# texts of any length, voices, best_of


SENTENCE_END = re.compile(r"(?<=[.!?;:。！？।])\s+|\n+")


def split_text(text, max_bytes, pack=True):
    """
    Split UTF-8 text into chunks of at most max_bytes: whole sentences (packed together where they fit, if pack), a
    longer sentence at spaces, a longer word between characters (never inside one).
    """
    pieces = []
    for sentence in SENTENCE_END.split(text.decode("utf-8")):
        words = sentence.split()
        while words:  # the longest run of words that fits
            n = 1
            while n < len(words) and len(" ".join(words[:n + 1]).encode()) <= max_bytes:
                n += 1
            piece, words = " ".join(words[:n]), words[n:]
            while len(piece.encode()) > max_bytes:  # a single word longer than a chunk
                cut = max_bytes
                while len(piece[:cut].encode()) > max_bytes:
                    cut -= 1
                pieces.append(piece[:cut].encode())
                piece = piece[cut:]
            pieces.append(piece.encode())
    chunks = []
    for piece in pieces:
        if pack and chunks and len(chunks[-1]) + 1 + len(piece) <= max_bytes and chunks[-1][-1:] in b".!?;:":
            chunks[-1] += b" " + piece  # sentences share a chunk; pieces of one sentence do not
        else:
            chunks.append(piece)
    return chunks


class SpeechMissing(ValueError):
    """A chunk of a text came back without its speech (missing_speech); the message is one line with the fix."""


RETRIES = 2  # times synthesize samples a chunk again that came back without its speech, before it gives up


def missing_speech(model, audio, chunks, k, spoken, i, tries=1 + RETRIES):
    """
    Why chunk k of text i (chunks: all of that text's) is missing its speech, or "" when it is not: it ended without
    speech, or with under a quarter of the frames its bytes need at the rate of the speech before it (its voice
    prompt and earlier chunks: spoken, (text, audio) pairs). A model that has never heard speech continue after a
    finished sentence ends every continuation at once, and a long text would come back as its first sentence alone.
    """
    said_text, said_audio = sum(len(t) for t, _ in spoken), sum(len(a) for _, a in spoken)
    rate = said_audio / said_text if said_text and said_audio else 0.0
    if len(audio) > 0 and len(audio) >= rate * len(chunks[k]) / 4:
        return ""
    where = f"text {i + 1}" + (f", chunk {k + 1} of {len(chunks)}," if len(chunks) > 1 else "")
    got = f"{len(audio)} frames for {len(chunks[k])} bytes"
    got += f" (the speech before it: {rate:.2f} per byte)" if rate else ""
    if k > 0 and not model.config.anchor_continuations:
        fix = ("this model has not learned to continue speech after a finished sentence, which long texts (spoken in "
               "chunks, each continuing the last) need: train one that has, e.g. config/train_synthetic_prompts.py, "
               "or give texts short enough to be spoken whole")
    elif spoken:
        fix = (f"the model stopped mid-text{f' {tries} times' if tries > 1 else ''}: try --best_of=4, a lower "
               "--temperature, or another --seed")
    else:
        fix = (f"the model said nothing{f' {tries} times' if tries > 1 else ''}: is it trained? try another --seed or "
               "--temperature")
    return f"{where} ended after {got}: {fix}"


def most_likely(scores, weakest=3):
    """
    Which of several samples of one chunk to keep. scores: per sample, its token log-probabilities under one or more
    readings (token_logprobs), a 1-D tensor each. Kept: the sample whose `weakest` least likely tokens are the most
    likely, summed over its readings. A slip (a skipped word, a doubled letter, a new voice) is a token the sampler
    drew against the odds; a sample's mean hides it, its weakest tokens show it.
    """
    weakness = [sum(float(s.sort().values[:weakest].mean()) if len(s) else -np.inf for s in readings)
                for readings in scores]
    return int(np.argmax(weakness))


@torch.no_grad()
def synthesize(model, texts, sampling=Sampling(), seed=1337, batch_size=16, voices=None, frames_per_byte=2.5,
               on_token=None, decode_step=None, strict=True, join=None):
    """
    Speak each text (UTF-8 bytes). Returns a list of int64 arrays of Stable Codec ids, one per text, in order.

    Texts are sampled batch_size at a time, each row stopping at its own end-of-audio. voices: None, or per text
    None or (prompt text bytes, prompt audio ids): the model continues that recording, in its voice. Any length of
    text works: a text that does not fit the context after its voice prompt (with room for frames_per_byte audio
    tokens per byte) is split at sentence ends into chunks, each spoken as the continuation of the previous chunk
    (its text and audio as the voice prompt), so the voice holds across chunks; the chunks' tokens join seamlessly.
    A model trained with anchor_continuations has only heard speech continue at an anchored sentence border: it
    speaks every sentence as its own chunk, anchored where the sentence starts. sampling.best_of: sample each chunk
    that many times in one batch and keep the one the model finds most likely (most_likely). sampling.max_seconds
    caps each chunk. cfg_scale != 1 runs the text-free prompts in the same batch for classifier-free guidance.
    on_token: streaming: on_token(i, id) is called with each audio id of text i as soon as it is sampled, and
    on_token(i, None) once text i is finished (at its last chunk's end-of-audio, while its batch mates go on); an
    on_token that returns False drops text i (its later chunks are not spoken; a batch whose rows have all ended or
    been dropped stops at once). Chunks are not sampled again (what was handed on is said), and best_of must be 1: a
    chunk that ends without its speech (strict) is on_token(i, SpeechMissing(...)), which drops text i when on_token
    returns True (a server fails that request alone) and is raised otherwise.
    decode_step: a compile_decode_step() (see sample.py --compile), or None for the eager one.
    seed: each text draws from its own random stream, seeded seed + i for text i (or seed[i], given a list of one
    per text), through all its chunks, retries and best_of samples (draw_races): a text comes out the same whatever
    the texts beside it, so text i here is what synthesize([text], seed=seed + i) gives.
    join: None, or join(n) -> a list of at most n (text, voice, seed) to add to the batch between two rounds of
    chunks (serve.py's waiting requests); they are numbered on from len(texts), in order, for on_token.
    strict: a chunk that ends without speech, or far sooner than the speech before it (missing_speech), is sampled
    again, and after RETRIES more tries raises SpeechMissing instead of coming back short; strict=False keeps it
    as it came (eval.py scores short outputs as the errors they are).
    """
    best_of = sampling.best_of
    if on_token is not None and best_of != 1:
        raise ValueError("streaming speaks one sample of each text (not with --best_of)")
    block = model.config.block_size
    device = model.wte.weight.device
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(texts))]
    if len(seeds) != len(texts):
        raise ValueError(f"{len(seeds)} seeds for {len(texts)} texts: give one per text, or one for all")
    empty = np.zeros(0, dtype=np.int64)
    # the previous chunk (or the voice prompt) and the current one share the context window. An anchored model
    # speaks sentence by sentence and takes any earlier chunk that fits as the prompt (see below): a sentence may
    # take 2/3 of the window, so that few are cut (a piece of a sentence has no anchor of its own)
    pack = not model.config.anchor_continuations
    max_chunk = int((block - 2) / ((2 if pack else 1.5) * (1 + frames_per_byte)))
    chunks, spoken, outputs = [], [], []  # per text: its chunks; its voice prompt, then each chunk spoken; its audio
    generators = []  # per text: its own random stream
    dropped = set()  # texts whose on_token returned False

    def add(text, voice, seed):
        """A text to speak, with its voice (None or (text, ids)) and seed; cut (and sampled) the same whatever its
        batch mates are."""
        voice = (voice[0], np.asarray(voice[1], dtype=np.int64)) if voice else (b"", empty)
        most = min(max_chunk, int((block - 2 - len(voice[0]) - len(voice[1])) / (1 + frames_per_byte)))
        if most < 8:
            raise ValueError(f"the voice prompt leaves too little room in this model's block_size {block}; use a "
                             f"shorter prompt (at most ~{(block // 2) / (1 + frames_per_byte) / 12:.0f} s)")
        fits = 2 + len(voice[0]) + len(voice[1]) + (1 + frames_per_byte) * len(text) <= block
        whole = fits and (pack or len(split_text(text, len(text), pack=False)) == 1)
        chunks.append([text] if whole else split_text(text, most, pack))  # a text that fits is not split
        spoken.append([voice] if len(voice[1]) else [])
        outputs.append([])
        generators.append(torch.Generator(device=device).manual_seed(seed))
        return len(chunks) - 1

    for text, voice, s in zip(texts, voices or [None] * len(texts), seeds):
        add(text, voice, s)

    def speak(active):
        """The next chunk of each text in active, in one batch: {text: (audio ids, its anchor, the most it could
        say)}."""
        prompts, unconds, anchors = [], [], []
        at = {i: len(outputs[i]) for i in active}  # which chunk of each text
        for i in active:
            k = at[i]
            # the prompt: the latest chunk that fits beside this one, so the previous one unless it is long (or ran
            # long: no end-of-audio in time, or came out empty); any earlier chunk holds the voice as well, as a
            # voice prompt does
            room = block - 2 - (1 + frames_per_byte) * len(chunks[i][k])  # 2: the space before it, SOA
            prev_text, prev_audio = next(((t, a) for t, a in reversed(spoken[i]) if 0 < len(a) <= room - len(t)),
                                         (b"", empty))
            text = prev_text + b" " + chunks[i][k] if prev_text else chunks[i][k]
            prompts += [make_prompt(text_to_tokens(text), torch.from_numpy(prev_audio))] * best_of
            anchors += [len(prev_text) if len(prev_audio) else None] * best_of  # new speech starts at the space
            unconds += [make_prompt(text_to_tokens(b""), torch.from_numpy(prev_audio))] * best_of
        longest = max(len(p) for p in prompts)
        max_new = min(int(sampling.max_seconds * TOKENS_PER_SECOND), block - longest)
        if max_new < 1:
            raise ValueError(f"text does not fit this model's block_size {block}")
        args = dict(generators=[generators[i] for i in active for _ in range(best_of)],
                    uncond_prompts=unconds if sampling.cfg_scale != 1.0 else None,
                    decode_step=decode_step, anchors=anchors)
        if on_token is None:
            audio = generate(model, prompts, max_new, sampling, **args)
        else:  # streaming: hand each row's tokens on as soon as they are sampled, and each text's end at its own
            steps, live = [[] for _ in active], set(range(len(active)))
            last = {j for j, i in enumerate(active) if at[i] == len(chunks[i]) - 1}  # rows whose text ends here
            for token in stream(model, prompts, max_new, sampling, **args):
                for j, t in enumerate(token.tolist()):
                    if j not in live:
                        continue
                    if t == EOA:
                        live.discard(j)
                        i = active[j]
                        problem = strict and missing_speech(model, steps[j], chunks[i], at[i], spoken[i], i, 1)
                        if problem:  # handed on already, so not sampled again: the text fails, its batch goes on
                            dropped.add(i)
                            if on_token(i, SpeechMissing(problem)) is not True:
                                raise SpeechMissing(problem)
                        elif j in last:
                            on_token(i, None)
                    else:
                        steps[j].append(t)
                        if on_token(active[j], t) is False:
                            live.discard(j)
                            dropped.add(active[j])
                if not live:
                    break
            for j in live & last:  # ran to max_new without an end-of-audio
                on_token(active[j], None)
            audio = [torch.tensor(s, dtype=torch.long) for s in steps]
        if best_of > 1:  # each text's samples sit side by side: keep the most likely of each run
            # a sample scores its end too (a run-on, a missing one), where the row has room for it
            ends = [torch.cat([a.cpu(), torch.tensor([EOA] if len(p) + len(a) < block else [], dtype=torch.long)])
                    for p, a in zip(prompts, audio)]
            scores = [[s] for s in token_logprobs(model, prompts, ends, anchors)]
            # a continuation is read twice: after its prompt (does the voice carry on?) and after its own text
            # alone (does it say that text from the first word? one that re-speaks the prompt's last "!", then
            # skips a word, is likely after the prompt, not without it). Both readings halve the sentences said
            # wrong against the first alone (docs/results.md)
            rows = [j for j, a in enumerate(anchors) if a is not None]
            no_audio = torch.zeros(0, dtype=torch.long)
            alone = [make_prompt(text_to_tokens(b" " + chunks[active[j // best_of]][at[active[j // best_of]]]),
                                 no_audio) for j in rows]
            for j, s in zip(rows, token_logprobs(model, alone, [ends[j] for j in rows]) if rows else []):
                scores[j].append(s)
            audio = [audio[j + most_likely(scores[j:j + best_of])] for j in range(0, len(audio), best_of)]
        return {i: (a.cpu().numpy(), anchor, max_new) for i, a, anchor in zip(active, audio, anchors[::best_of])}

    def unsaid(group):
        return [i for i in group if len(outputs[i]) < len(chunks[i]) and i not in dropped]

    order = sorted(range(len(texts)), key=lambda i: sum(map(len, chunks[i])))  # similar lengths batch well
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        while True:  # one round: the next chunk of each text of the group that has one left, in one batch
            todo = unsaid(group)
            if join:  # texts that came meanwhile take the free rows, from this round on
                joined = [add(*request) for request in join(batch_size - len(todo))]
                group, todo = group + joined, todo + joined
            if not todo:
                break
            # a chunk that comes back without its speech is sampled again (a slip), up to RETRIES times, then said
            for attempt in range(1 + (RETRIES if strict and on_token is None else 0)):
                said, todo = speak(todo), []
                for i, (a, anchor, max_new) in said.items():
                    k = len(outputs[i])
                    problem = (strict and i not in dropped and len(a) < max_new
                               and missing_speech(model, a, chunks[i], k, spoken[i], i))
                    if problem and attempt < RETRIES and on_token is None:
                        todo.append(i)
                        continue
                    if problem:
                        raise SpeechMissing(problem)
                    outputs[i].append(a)
                    # a continuation speaks the space before its text too: as a prompt, its text must hold that
                    # space, or its audio runs a byte ahead of its text and the next chunk repeats the end of it
                    spoken[i].append((chunks[i][k] if anchor is None else b" " + chunks[i][k], a))
                if not todo:
                    break
    return [np.concatenate(o) if o else empty for o in outputs]
