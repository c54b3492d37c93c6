"""
Data shared by prepare.py, train.py, sample.py and eval.py: the on-disk shard format, the training batches, and the
built-in synthetic speech corpus.

Shard format (one folder per dataset, e.g. data/synthetic/), defined here and nowhere else:
    meta.json           {"format": "dirt-shards-v2", "dataset", "tokens_per_second": 25, "speakers": [names],
                         "splits": {"train": {"utterances", "text_bytes", "audio_tokens"}, "val": {...}}, ...}
    {split}.text.bin    uint8: the UTF-8 bytes of every transcript, back to back
    {split}.audio.bin   uint16: the Stable Codec ids (0..46655) of every utterance, back to back
    {split}.index.npy   int64 [N, 7]: text_start, text_len, audio_start, audio_len, speaker (index into
                        meta["speakers"], -1 if unknown), border_text, border_audio (where the utterance's last
                        sentence starts when it was spoken on its own after the others, in bytes and frames: the
                        model's continuation anchor, see model.GPTConfig.anchor_continuations; 0, 0 if none)
v1 shards (no border columns) still read, as utterances without borders.
The .bin files are read through np.memmap, so a corpus far bigger than RAM trains without loading it. Every file is
written to a temporary name and renamed into place, so a reader never sees half a shard.
"""

import json
import os

import numpy as np

from model import EOA, N_AUDIO, PAD, SOA, TEXT_OFFSET

FORMAT = "dirt-shards-v2"
READABLE_FORMATS = ("dirt-shards-v1", FORMAT)
INDEX_COLUMNS = ("text_start", "text_len", "audio_start", "audio_len", "speaker", "border_text", "border_audio")


# --------------------------------------------------------------------------------------------------------------
# shard format


def _atomic_save(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_split(out_dir, split, utterances):
    """
    Write one split. utterances: iterable of (text: bytes, audio: int array of codec ids, speaker: int), optionally
    with a fourth item (border_text, border_audio): where its last sentence starts (see the index above).
    """
    os.makedirs(out_dir, exist_ok=True)
    texts, audios, index = [], [], []
    text_pos = audio_pos = 0
    for text, audio, speaker, *border in utterances:
        audio = np.asarray(audio)
        if audio.size and (audio.min() < 0 or audio.max() >= N_AUDIO):
            raise ValueError(f"audio ids must be in 0..{N_AUDIO - 1}")
        border_text, border_audio = border[0] if border else (0, 0)
        if not (0 <= border_text < max(1, len(text)) and 0 <= border_audio < max(1, len(audio))):
            raise ValueError(f"border ({border_text}, {border_audio}) is outside its utterance")
        texts.append(np.frombuffer(bytes(text), dtype=np.uint8))
        audios.append(audio.astype(np.uint16))
        index.append((text_pos, len(text), audio_pos, len(audio), speaker, border_text, border_audio))
        text_pos += len(text)
        audio_pos += len(audio)
    index = np.array(index, dtype=np.int64).reshape(-1, len(INDEX_COLUMNS))
    for name, arr in (("text", texts), ("audio", audios)):
        data = np.concatenate(arr) if arr else np.zeros(0, dtype=np.uint8 if name == "text" else np.uint16)
        _atomic_save(os.path.join(out_dir, f"{split}.{name}.bin"), lambda f, d=data: f.write(d.tobytes()))
    _atomic_save(os.path.join(out_dir, f"{split}.index.npy"), lambda f: np.save(f, index))
    return {"utterances": len(index), "text_bytes": text_pos, "audio_tokens": audio_pos}


def write_meta(out_dir, meta):
    meta = {"format": FORMAT, "tokens_per_second": 25, **meta}
    _atomic_save(os.path.join(out_dir, "meta.json"), lambda f: f.write(json.dumps(meta, indent=2).encode()))


def read_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no dataset at {data_dir} (missing meta.json); run prepare.py first")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}; re-run prepare.py")
    return meta


class Shards:
    """One split of a prepared dataset, memory-mapped."""

    def __init__(self, data_dir, split):
        self.meta = read_meta(data_dir)
        self.index = np.load(os.path.join(data_dir, f"{split}.index.npy"))
        if self.index.shape[1] < len(INDEX_COLUMNS):  # v1: no borders
            self.index = np.pad(self.index, ((0, 0), (0, len(INDEX_COLUMNS) - self.index.shape[1])))
        self.text = self._memmap(os.path.join(data_dir, f"{split}.text.bin"), np.uint8)
        self.audio = self._memmap(os.path.join(data_dir, f"{split}.audio.bin"), np.uint16)

    @staticmethod
    def _memmap(path, dtype):
        if os.path.getsize(path) == 0:  # np.memmap refuses empty files
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        """-> (text bytes, audio ids as int64 array, speaker index)"""
        ts, tl, as_, al, speaker = (int(v) for v in self.index[i, :5])
        return bytes(self.text[ts:ts + tl]), self.audio[as_:as_ + al].astype(np.int64), speaker

    def anchor(self, i, text_dropped=False):
        """
        Utterance i's continuation anchor in its training stream (text, SOA, audio): (the stream offset of its first
        sentence's last audio frame, the byte where the last sentence starts), or None (one sentence, or no text).
        """
        text_len, border_text, border_audio = (int(self.index[i, c]) for c in (1, 5, 6))
        return None if text_dropped or border_audio == 0 else (text_len + border_audio, border_text)

    def stream_lengths(self):
        """Tokens per training stream: text + SOA + audio + EOA."""
        return self.index[:, 1] + self.index[:, 3] + 2


# --------------------------------------------------------------------------------------------------------------
# training batches


def utterance_stream(text, audio):
    """The model's token stream for one utterance (see model.py for the layout)."""
    return np.concatenate([np.frombuffer(text, dtype=np.uint8).astype(np.int64) + TEXT_OFFSET, [SOA], audio, [EOA]])


def inputs_and_targets(stream):
    """One stream's model inputs (all but its EOA) and targets (the next audio id or the EOA; -1 for text, SOA)."""
    y = np.where(stream[1:] < N_AUDIO, stream[1:], -1)
    y[-1] = EOA
    return stream[:-1], y


def length_sorted_rows(shards, max_len):
    """Indices of the utterances whose stream fits max_len + 1 tokens, sorted by length (for get_batch)."""
    lengths = shards.stream_lengths()
    rows = np.flatnonzero(lengths - 1 <= max_len)
    return rows[np.argsort(lengths[rows], kind="stable")]


def get_batch(shards, rows, batch_size, rng, text_dropout=0.0):
    """
    A batch of batch_size neighbours in `rows` (from length_sorted_rows) starting at a random place, so the batch's
    utterances have about the same length and padding wastes almost nothing. Padded to the longest.
    text_dropout: the fraction of utterances whose text is removed, which teaches the model the unconditional
    distribution that classifier-free guidance needs.
    x [B, T] inputs; y [B, T] next tokens, -1 where no loss is taken (text, SOA, padding); anchor [B, T]: at an
    utterance's continuation anchor (Shards.anchor) the byte its last sentence starts at, -1 elsewhere.
    """
    picks = rows[(rng.integers(len(rows)) + np.arange(batch_size)) % len(rows)]
    drop = rng.random(batch_size) < text_dropout
    streams = [utterance_stream(b"" if d else shards[i][0], shards[i][1]) for i, d in zip(picks, drop)]
    T = max(len(s) for s in streams) - 1
    x = np.full((batch_size, T), PAD, dtype=np.int64)
    y = np.full((batch_size, T), -1, dtype=np.int64)
    anchor = np.full((batch_size, T), -1, dtype=np.int64)
    for r, (s, i, d) in enumerate(zip(streams, picks, drop)):
        x[r, : len(s) - 1], y[r, : len(s) - 1] = inputs_and_targets(s)
        if a := shards.anchor(i, d):
            anchor[r, a[0]] = a[1]
    return x, y, anchor


def get_packed_batch(shards, rows, block_size, batch_size, rng, text_dropout=0.0, fill=0.97):
    """
    batch_size rows of exactly block_size positions, each holding whole utterances back to back (an utterance takes
    len(stream) - 1 positions: its EOA is a target, never an input, as in get_batch), then padding.
    Utterances are drawn uniformly at random from `rows` until they fill `fill` of the batch, then placed longest
    first, each into the fullest row that still has room (best-fit decreasing). Random draws, not neighbours in
    length order as in get_batch: filling a row needs long and short utterances together (three of ~67 tokens leave
    55 of 256 empty), and every utterance stays as likely to be drawn as in get_batch. With 3% left to spare, an
    utterance rarely fits nowhere (it is then left out); filling the last few percent too would mean leaving out
    more of them (long ones) or waiting for short ones: either would skew which utterances are trained on.
    x, y, anchor [B, T] as get_batch; doc [B, T]: which utterance of its row each position holds (0, 1, ...; the
    padding is one more), for GPT.forward to give each utterance its own positions and attention.
    """
    target, total = fill * batch_size * block_size, 0
    picks, drop, lengths = [], [], []
    while total < target:  # draw batch_size at a time until the batch is full
        picks.append(rows[rng.integers(len(rows), size=batch_size)])
        drop.append(rng.random(batch_size) < text_dropout)
        text_len, audio_len = shards.index[picks[-1], 1], shards.index[picks[-1], 3]
        lengths.append(text_len * ~drop[-1] + audio_len + 1)  # text, SOA, audio
        total += int(lengths[-1].sum())
    picks, drop, lengths = np.concatenate(picks), np.concatenate(drop), np.concatenate(lengths)
    n = int(np.searchsorted(np.cumsum(lengths), target)) + 1
    room = np.full(batch_size, block_size)
    placed = [[] for _ in range(batch_size)]
    for k in np.argsort(-lengths[:n], kind="stable"):
        fits = np.flatnonzero(room >= lengths[k])
        if len(fits):
            r = fits[np.argmin(room[fits])]
            room[r] -= lengths[k]
            placed[r].append(k)
    x = np.full((batch_size, block_size), PAD, dtype=np.int64)
    y = np.full((batch_size, block_size), -1, dtype=np.int64)
    doc = np.zeros((batch_size, block_size), dtype=np.int64)
    anchor = np.full((batch_size, block_size), -1, dtype=np.int64)
    for r, ks in enumerate(placed):
        at = 0
        for d, k in enumerate(ks):
            text, audio, _ = shards[picks[k]]
            xs, ys = inputs_and_targets(utterance_stream(b"" if drop[k] else text, audio))
            x[r, at:at + len(xs)], y[r, at:at + len(xs)], doc[r, at:at + len(xs)] = xs, ys, d
            if a := shards.anchor(picks[k], drop[k]):
                anchor[r, at + a[0]] = a[1]
            at += len(xs)
        doc[r, at:] = len(ks)
    return x, y, doc, anchor


# --------------------------------------------------------------------------------------------------------------
# the synthetic speech corpus


WORDS = """
the a an and of to in is was he she it you we they that this for on with as at by from but not or have has had
be been are were one two three four five six seven eight nine ten all some any many more most other new old good
great small large long little big high low first last next early late young right left same different own
time year day week night morning evening people man woman child friend family world house home room door window
city town river sea water fire tree garden road street car train book letter story song voice word name question
answer idea money work school market table chair bread milk tea coffee light music picture paper color sound
see saw look find found give gave take took make made come came go went know knew think thought say said tell told
ask asked call called try tried leave left feel felt keep kept begin began walk walked run ran sing sang read write
open close bring brought carry hold speak spoke listen hear heard learn play wait stay watch follow show
quickly slowly softly always never often today tomorrow yesterday here there now then again very quite almost
""".split()


class SyntheticSpeech:
    """
    A toy text-to-speech corpus that checks the machinery, not a model of speech. Its token sequences behave like
    speech tokens where it matters for a TTS model:
    - monotonic in the text: each byte lasts 1 to 3 frames (random per frame, speaker-dependent rates averaging
      1.55 to 2.0 frames per byte, i.e. 12 to 16 characters per second at 25 Hz);
    - a frame's id depends on its byte, on the class of the NEXT byte (coarticulation) and on whether it is the
      byte's onset or a hold, so the model must read ahead in the text and keep time;
    - each speaker changes every id in its own way; ids are spread over the whole 0..46655 range by an affine
      bijection, so neighbouring ids share nothing (the hard case for a model: no structure to lean on);
    - one sentence per utterance, or up to max_sentences (a share multi_share of them), each spoken on its own and
      joined: a voice prompt or the previous chunk of a long text is a finished utterance (its last frame has the
      end-of-text context), so a model that hears finished sentences continue learns what prompts and chunks need;
    - `recognise` inverts it exactly: any token sequence -> (text, speaker per frame), which makes character error
      rate (CER) and speaker consistency the toy counterparts of ASR WER and speaker similarity.
    """

    n_speakers = 4
    n_classes = 4  # class of the next byte: vowel, other letter, space, anything else (incl. end of text)
    n_phases = 2  # onset frame, hold frame
    durations = (1, 2, 3)
    rates = ((0.50, 0.45, 0.05), (0.35, 0.55, 0.10), (0.30, 0.50, 0.20), (0.20, 0.60, 0.20))  # per speaker
    scale, shift = 7919, 12345  # id = (scale * code + shift) mod 46656; scale is coprime with 46656 = 2^6 3^6
    n_codes = 256 * n_classes * n_phases * n_speakers  # 8192 of the 46656 ids are ever said

    def __init__(self, max_sentences=1, multi_share=0.4):
        self.max_sentences, self.multi_share = max_sentences, multi_share
        self.unscale = pow(self.scale, -1, N_AUDIO)
        cls = np.full(257, 3, dtype=np.int64)  # index 256 = end of text
        cls[list(b"aeiouAEIOU")] = 0
        cls[[b for b in range(256) if chr(b).isalpha() and b not in b"aeiouAEIOU" and b < 128]] = 1
        cls[ord(" ")] = 2
        self.byte_class = cls

    def sentence(self, rng):
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=int(rng.integers(2, 8)))]
        text = " ".join(words)
        return text[0].upper() + text[1:] + str(rng.choice([".", ".", ".", "?", "!"]))

    def sentences(self, rng):
        """One sentence, or (multi_share of the time) more: a model that has heard two in a row can continue a
        prompt or a chunk."""
        n = (1 if self.max_sentences == 1 or rng.random() < 1 - self.multi_share
             else int(rng.integers(2, self.max_sentences + 1)))
        return [self.sentence(rng) for _ in range(n)]

    def speak(self, text, speaker, rng):
        """text bytes -> codec-like ids, one per 40 ms frame."""
        b = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
        nxt = self.byte_class[np.append(b[1:], 256)]
        dur = rng.choice(self.durations, size=len(b), p=self.rates[speaker])
        byte = np.repeat(b, dur)
        klass = np.repeat(nxt, dur)
        phase = np.ones(len(byte), dtype=np.int64)
        phase[np.cumsum(dur) - dur] = 0
        code = ((byte * self.n_classes + klass) * self.n_phases + phase) * self.n_speakers + speaker
        return (self.scale * code + self.shift) % N_AUDIO

    def utterance(self, rng):
        """-> (text, audio, speaker, (border_text, border_audio): where its last sentence starts; 0, 0 if one)"""
        speaker = int(rng.integers(self.n_speakers))
        parts = [s.encode() if i == 0 else b" " + s.encode() for i, s in enumerate(self.sentences(rng))]
        spoken = [self.speak(part, speaker, rng) for part in parts]  # each finished on its own
        border = (sum(map(len, parts[:-1])), sum(map(len, spoken[:-1])))
        return b"".join(parts), np.concatenate(spoken), speaker, border

    def decode_frames(self, ids):
        """ids -> (byte, phase, speaker) per frame; all -1 for an id no speaker ever says."""
        code = (np.asarray(ids, dtype=np.int64) - self.shift) * self.unscale % N_AUDIO
        valid = code < self.n_codes
        speaker = np.where(valid, code % self.n_speakers, -1)
        phase = np.where(valid, code // self.n_speakers % self.n_phases, -1)
        byte = np.where(valid, code // (self.n_speakers * self.n_phases * self.n_classes), -1)
        return byte, phase, speaker

    def recognise(self, ids):
        """
        Token ids -> (text, speakers per frame). A character starts at each onset frame, and at a hold frame whose
        byte differs from the character it would extend; ids no speaker says are dropped (and count as errors in
        speaker consistency).
        """
        byte, phase, speaker = self.decode_frames(ids)
        out, current = bytearray(), None
        for b, p in zip(byte.tolist(), phase.tolist()):
            if b < 0:
                current = None
                continue
            if p == 0 or b != current:
                out.append(b)
            current = b
        return out.decode("utf-8", errors="replace"), speaker


def synthetic_corpus(seed, n_train, n_val, max_sentences=1, multi_share=0.4):
    """Deterministic from seed: (train utterances, val utterances, speaker names)."""
    corpus = SyntheticSpeech(max_sentences, multi_share)
    rng = np.random.default_rng(seed)
    train = [corpus.utterance(rng) for _ in range(n_train)]
    val = [corpus.utterance(rng) for _ in range(n_val)]
    return train, val, [f"synthetic-{s}" for s in range(corpus.n_speakers)]


# --------------------------------------------------------------------------------------------------------------
# checkpoints: one dict (model, optimizer, model_args, iter_num, best_val_loss, config), as in nanoGPT


def save_checkpoint(path, checkpoint):
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    import torch

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    """Load without running code from the file (weights_only). Raises CheckpointError with a one-line reason."""
    import pickle
    import zipfile

    import torch

    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train one first (python train.py ...) or pass --out_dir")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupt?): {reason[:200]}") from None
    missing = [k for k in ("model", "model_args", "iter_num") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a Dirt checkpoint (missing {', '.join(missing)})")
    return ckpt


class CheckpointError(RuntimeError):
    pass
