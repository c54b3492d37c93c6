"""
Texts of any length into speech, on generate.py's batched sampler: `synthesize` splits a text that does not fit the
context at sentence ends and speaks each chunk as the continuation of the last (so the voice holds), continues a
voice prompt, keeps the most likely of best_of samples, checks that every chunk came back with its speech
(`missing_speech`, else `SpeechMissing`), and streams each text's tokens as they come. sample.py, eval.py, serve.py
and train.py's samples all speak through it; `load_voice` reads a voice prompt from a file for sample.py and serve.py.

Read top to bottom: splitting text, the checks, `Texts` (each text's chunks and what it has said), `synthesize`,
then its two paths: `speak_round` (a batch of next chunks, sampled again on a slip) and `speak_streamed` (every
chunk in one running batch, tokens handed on as they come).
"""

import re

import numpy as np
import torch

from codec import SAMPLE_RATE, SILENCE_DB, TOKENS_PER_SECOND, load_audio, rms_db
from common import load_array, native_stderr_quiet
from generate import Sampling, generate, stream, token_logprobs
from model import EOA, N_AUDIO, make_prompt, text_to_tokens


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


SEEDS = 2 ** 63  # a text's seed is 0 .. SEEDS - 1 (2**63-1): a torch.Generator takes a signed 64-bit integer


def check_seeds(seeds):
    """Each text's seed (synthesize's seed + i, or one per text) as a torch.Generator takes it, or a ValueError."""
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEEDS:
            raise ValueError(f"seed {s!r} (text {i}'s) is out of range: --seed is an integer from 0 to "
                             f"{SEEDS - 1}, and text i of a batch takes --seed + i")


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


SEED = 1337  # synthesize's seed, and sample.py's --seed, by default
BATCH_SIZE = 16  # texts sampled side by side, likewise


class Texts:
    """
    The texts of one synthesize call, each numbered in order: its chunks, what it has said so far (its voice prompt,
    then each chunk spoken, as (text, audio) pairs), its audio so far, and its own random stream.
    """

    def __init__(self, model, sampling, frames_per_byte):
        self.model, self.sampling, self.frames_per_byte = model, sampling, frames_per_byte
        self.block = model.config.block_size
        # the previous chunk (or the voice prompt) and the current one share the context window. An anchored model
        # speaks sentence by sentence and takes any earlier chunk that fits as the prompt (see next_chunk): a
        # sentence may take 2/3 of the window, so that few are cut (a piece of a sentence has no anchor of its own)
        self.pack = not model.config.anchor_continuations
        self.max_chunk = int((self.block - 2) / ((2 if self.pack else 1.5) * (1 + frames_per_byte)))
        self.chunks, self.spoken, self.outputs, self.generators = [], [], [], []
        self.dropped = set()  # texts given up on (on_token returned False, or their speech went missing)

    def add(self, text, voice, seed):
        """A text to speak, with its voice (None or (text, ids)) and seed; cut (and sampled) the same whatever its
        batch mates are. -> its number."""
        block, per_byte = self.block, 1 + self.frames_per_byte
        voice = (voice[0], np.asarray(voice[1], dtype=np.int64)) if voice else (b"", EMPTY)
        most = min(self.max_chunk, int((block - 2 - len(voice[0]) - len(voice[1])) / per_byte))
        if most < 8:
            raise ValueError(f"the voice prompt leaves too little room in this model's block_size {block}; use a "
                             f"shorter prompt (at most ~{(block // 2) / per_byte / 12:.0f} s)")
        fits = 2 + len(voice[0]) + len(voice[1]) + per_byte * len(text) <= block
        whole = fits and (self.pack or len(split_text(text, len(text), pack=False)) == 1)
        self.chunks.append([text] if whole else split_text(text, most, self.pack))  # a text that fits is not split
        self.spoken.append([voice] if len(voice[1]) else [])
        self.outputs.append([])
        self.generators.append(torch.Generator(device=self.model.wte.weight.device).manual_seed(seed))
        return len(self.chunks) - 1

    def chunk(self, i):
        """Text i's chunk to say next."""
        return self.chunks[i][len(self.outputs[i])]

    def next_chunk(self, i):
        """Text i's next chunk as a row: (prompt, unconditional prompt, anchor, the most tokens it may take)."""
        # the prompt: the latest chunk that fits beside this one, so the previous one unless it is long (or ran
        # long: no end-of-audio in time, or came out empty); any earlier chunk holds the voice as well, as a voice
        # prompt does
        room = self.block - 2 - (1 + self.frames_per_byte) * len(self.chunk(i))  # 2: the space before it, SOA
        prev_text, prev_audio = next(((t, a) for t, a in reversed(self.spoken[i]) if 0 < len(a) <= room - len(t)),
                                     (b"", EMPTY))
        text = prev_text + b" " + self.chunk(i) if prev_text else self.chunk(i)
        prompt = make_prompt(text_to_tokens(text), torch.from_numpy(prev_audio))
        most = min(int(self.sampling.max_seconds * TOKENS_PER_SECOND), self.block - len(prompt))
        if most < 1:
            raise ValueError(f"text does not fit this model's block_size {self.block}")
        return (prompt, make_prompt(text_to_tokens(b""), torch.from_numpy(prev_audio)),
                len(prev_text) if len(prev_audio) else None, most)  # anchor: the new speech starts at the space

    def missing(self, i, audio, tries):
        """missing_speech of text i's next chunk coming back as audio: why it lacks its speech, or ""."""
        return missing_speech(self.model, audio, self.chunks[i], len(self.outputs[i]), self.spoken[i], i, tries)

    def record(self, i, audio, anchor):
        """Text i's next chunk came back as audio. -> whether the text has more chunks to say."""
        chunk = self.chunk(i)
        self.outputs[i].append(audio)
        # a continuation speaks the space before its text too: as a prompt, its text must hold that space, or its
        # audio runs a byte ahead of its text and the next chunk repeats the end of it
        self.spoken[i].append((chunk if anchor is None else b" " + chunk, audio))
        return len(self.outputs[i]) < len(self.chunks[i])

    def unsaid(self, group):
        return [i for i in group if len(self.outputs[i]) < len(self.chunks[i]) and i not in self.dropped]

    def audio(self):
        return [np.concatenate(o) if o else EMPTY for o in self.outputs]


EMPTY = np.zeros(0, dtype=np.int64)


@torch.no_grad()
def synthesize(model, texts, sampling=Sampling(), seed=SEED, batch_size=BATCH_SIZE, voices=None, frames_per_byte=2.5,
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
    on_token: streaming (speak_streamed): on_token(i, id) is called with each audio id of text i as soon as it is
    sampled, and on_token(i, None) once text i is finished; see speak_streamed. best_of must then be 1.
    decode_step: a compile_decode_step() (see sample.py --compile), or None for the eager one.
    seed: each text draws from its own random stream, seeded seed + i for text i (or seed[i], given a list of one
    per text), through all its chunks, retries and best_of samples (draw_noise): a text comes out the same whatever
    the texts beside it, so text i here is what synthesize([text], seed=seed + i) gives.
    join: None, or join(n) -> a list of at most n (text, voice, seed) to add to the batch (serve.py's waiting
    requests): at the next step boundary when streaming (generate.stream's join), else between two rounds of
    chunks; they are numbered on from len(texts), in order, for on_token.
    strict: a chunk that ends without speech, or far sooner than the speech before it (missing_speech), is sampled
    again, and after RETRIES more tries raises SpeechMissing instead of coming back short; strict=False keeps it
    as it came (eval.py scores short outputs as the errors they are).
    """
    if on_token is not None and sampling.best_of != 1:
        raise ValueError("streaming speaks one sample of each text (not with --best_of)")
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(texts))]
    if len(seeds) != len(texts):
        raise ValueError(f"{len(seeds)} seeds for {len(texts)} texts: give one per text, or one for all")
    check_seeds(seeds)
    state = Texts(model, sampling, frames_per_byte)
    for text, voice, s in zip(texts, voices or [None] * len(texts), seeds):
        state.add(text, voice, s)
    order = sorted(range(len(texts)), key=lambda i: sum(map(len, state.chunks[i])))  # similar lengths batch well
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        while True:  # one round: the next chunk of each text of the group that has one left, in one batch
            todo = state.unsaid(group)
            if join:  # texts that came meanwhile take the free rows, from this round on
                joined = [state.add(*request) for request in join(batch_size - len(todo))]
                group, todo = group + joined, todo + joined
            if not todo:
                break
            if on_token is not None:  # every chunk of these texts, and of those that join meanwhile
                speak_streamed(state, todo, decode_step, batch_size, on_token, join, strict)
            else:
                speak_round(state, todo, decode_step, strict)
    return state.audio()


def speak_round(state, todo, decode_step, strict):
    """
    The next chunk of each text of todo, in one batch. A chunk that comes back without its speech (missing_speech:
    a slip) is sampled again, up to RETRIES times, then raises SpeechMissing (strict) or is kept as it came.
    """
    for attempt in range(1 + (RETRIES if strict else 0)):
        said, todo = speak_chunks(state, todo, decode_step), []
        for i, (audio, anchor, most) in said.items():
            problem = strict and len(audio) < most and state.missing(i, audio, 1 + RETRIES)
            if problem and attempt < RETRIES:
                todo.append(i)
            elif problem:
                raise SpeechMissing(problem)
            else:
                state.record(i, audio, anchor)
        if not todo:
            break


def speak_chunks(state, active, decode_step):
    """The next chunk of each text in active, in one batch (best_of samples of each side by side): {text: (audio ids,
    its anchor, the most it could say)}."""
    sampling, best_of = state.sampling, state.sampling.best_of
    rows = [state.next_chunk(i) for i in active for _ in range(best_of)]
    prompts, unconds, anchors, most = (list(x) for x in zip(*rows))
    audio = generate(state.model, prompts, most, sampling,
                     generators=[state.generators[i] for i in active for _ in range(best_of)],
                     uncond_prompts=unconds if sampling.cfg_scale != 1.0 else None, decode_step=decode_step,
                     anchors=anchors)
    if best_of > 1:
        chunks = [state.chunk(i) for i in active]
        audio = keep_most_likely(state.model, prompts, audio, anchors, chunks, best_of)
    return {i: (a.cpu().numpy(), anchor, m) for i, a, anchor, m in zip(active, audio, anchors[::best_of],
                                                                      most[::best_of])}


def keep_most_likely(model, prompts, audio, anchors, chunks, best_of):
    """Of each text's best_of samples (side by side in audio), the one the model finds most likely (most_likely)."""
    block = model.config.block_size
    # a sample scores its end too (a run-on, a missing one), where the row has room for it
    ends = [torch.cat([a.cpu(), torch.tensor([EOA] if len(p) + len(a) < block else [], dtype=torch.long)])
            for p, a in zip(prompts, audio)]
    scores = [[s] for s in token_logprobs(model, prompts, ends, anchors)]
    # a continuation is read twice: after its prompt (does the voice carry on?) and after its own text alone (does
    # it say that text from the first word? one that re-speaks the prompt's last "!", then skips a word, is likely
    # after the prompt, not without it). Both readings halve the sentences said wrong against the first alone
    rows = [j for j, a in enumerate(anchors) if a is not None]
    no_audio = torch.zeros(0, dtype=torch.long)
    alone = [make_prompt(text_to_tokens(b" " + chunks[j // best_of]), no_audio) for j in rows]
    for j, s in zip(rows, token_logprobs(model, alone, [ends[j] for j in rows]) if rows else []):
        scores[j].append(s)
    return [audio[j + most_likely(scores[j:j + best_of])] for j in range(0, len(audio), best_of)]


def speak_streamed(state, active, decode_step, batch_size, on_token, join, strict):
    """
    Every chunk of each text in active, in one running batch (generate.stream's join): a text's next chunk joins as
    soon as its last has ended, and texts that came meanwhile (join) take the free rows. on_token(i, id) gets each
    audio id of text i as soon as it is sampled, and on_token(i, None) once text i is finished (at its last chunk's
    end-of-audio, while its batch mates go on); an on_token that returns False drops text i (its later chunks are
    not spoken; its row ends at once). Chunks are not sampled again (what was handed on is said): a chunk that ends
    without its speech (strict) is on_token(i, SpeechMissing(...)), which drops text i when on_token returns True (a
    server fails that request alone) and is raised otherwise.
    """
    text_of, steps, pending, stop = {}, {}, [], set()  # per row: its text and anchor, its tokens; texts due next

    def row(j, i):
        prompt, uncond, anchor, most = state.next_chunk(i)
        text_of[j], steps[j] = (i, anchor), []
        return prompt, uncond, state.generators[i], anchor, most

    def more(free):
        texts = [pending.pop(0) for _ in range(min(len(free), len(pending)))]
        if join and len(texts) < len(free):  # texts that came meanwhile take the free rows
            texts += [state.add(*request) for request in join(len(free) - len(texts))]
        return [row(j, i) for j, i in zip(free, texts)]

    prompts, unconds, gens, anchors, most = (list(x) for x in zip(*[row(j, i) for j, i in enumerate(active)]))
    guided = state.sampling.cfg_scale != 1.0
    for token in stream(state.model, prompts, most, state.sampling, gens, unconds if guided else None, decode_step,
                        anchors, join=more, capacity=batch_size, stop=stop):
        for j, t in enumerate(token.tolist()):
            if j not in text_of:
                continue
            i, anchor = text_of[j]
            if t != EOA:
                steps[j].append(t)
                if on_token(i, t) is False:
                    state.dropped.add(i)
                    stop.add(j)
                    del text_of[j]
                continue
            del text_of[j]
            if chunk_ended(state, i, steps[j], anchor, on_token, strict):
                pending.append(i)


def chunk_ended(state, i, audio, anchor, on_token, strict):
    """A streamed chunk of text i ended: record it, or fail the text if its speech is missing (handed on already,
    so not sampled again: the text fails, its batch goes on). -> whether the text has a next chunk to say."""
    problem = strict and state.missing(i, audio, 1)
    if problem:
        state.dropped.add(i)
        if on_token(i, SpeechMissing(problem)) is not True:
            raise SpeechMissing(problem)
        return False
    if state.record(i, np.asarray(audio, dtype=np.int64), anchor):
        return True
    on_token(i, None)
    return False


def load_voice(path, transcript, codec_loader, ids=False):
    """
    A voice prompt for synthesize, (transcript bytes, audio ids): the recording at path, encoded by codec_loader()'s
    codec, or (ids=True) the codec ids np.save wrote there, as sample.py writes them. transcript: the words spoken
    in it. sample.py's --prompt_audio / --prompt_tokens and serve.py's --voices read voices through it. A file that
    will not do is a one-line ValueError that starts with path, so that each caller names its own setting before it.
    """
    if ids:
        not_ids = f"{path} is not a .npy array of integer codec ids (np.save of the ids sample.py writes)"
        try:
            audio = load_array(path)  # never unpickled; any failure is a one-line reason
        except ValueError as e:
            raise ValueError(f"{not_ids}: {e}") from None
        if audio.dtype.kind not in "iu":
            raise ValueError(not_ids)
        if audio.ndim != 1:
            raise ValueError(f"{path} holds an array of shape {audio.shape}: give one recording's ids, a 1-D array "
                             "(np.save of the ids sample.py writes)")
        audio = audio.astype(np.int64)
        if len(audio) == 0 or audio.min() < 0 or audio.max() >= N_AUDIO:
            raise ValueError(f"{path} must hold Stable Codec ids 0..{N_AUDIO - 1}")
        return transcript.strip().encode(), audio
    try:
        with native_stderr_quiet():  # callers read voices before any other thread starts
            wav = load_audio(path)
    except ValueError as e:
        raise ValueError(f"{path} cannot be read: {e}") from None
    if len(wav) < 0.5 * SAMPLE_RATE:
        raise ValueError(f"{path} is shorter than 0.5 s; use 3 to 10 s of clean speech")
    if not np.isfinite(wav).all() or rms_db(wav) < SILENCE_DB:
        raise ValueError(f"{path} is silent (or not finite); use 3 to 10 s of clean speech")
    tokens, lengths = codec_loader().encode([wav], [SAMPLE_RATE])
    return transcript.strip().encode(), tokens[0, : int(lengths[0])].cpu().numpy()
