"""
Generation, in gpt-fast's shape: a preallocated KV cache (model.setup_cache), one `prefill` over the prompt, then a
small step, `decode_and_sample` (feed a token, sample the next), that `torch.compile` turns into one CUDA graph.
On top of it: `stream` / `generate` (ragged batches, classifier-free guidance, continuation anchors) and
`token_logprobs` (teacher-forced scores); speak.py turns texts of any length into speech with them.

Every sampling setting lives in one place, the Sampling dataclass below; scripts take their command-line settings
from its fields and hand one Sampling object down to the step that uses it.
"""

from dataclasses import asdict, dataclass, fields

import torch

from model import EOA, N_COARSE, N_FINE, PAD, SOA, stream_positions


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
        keep, keep_t, sel = list(range(B)), None, None
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
