"""
Data shared by prepare.py, train.py, sample.py and eval.py: the on-disk shard format, the training batches, and the
checkpoints (the synthetic corpus is in synthetic.py).

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

from codec import TOKENS_PER_SECOND
from common import atomic_write
from model import EOA, GPT, N_AUDIO, PAD, SOA, TEXT_OFFSET, GPTConfig

FORMAT = "dirt-shards-v2"
READABLE_FORMATS = ("dirt-shards-v1", FORMAT)
INDEX_COLUMNS = ("text_start", "text_len", "audio_start", "audio_len", "speaker", "border_text", "border_audio")
COLUMN = {name: i for i, name in enumerate(INDEX_COLUMNS)}  # index[:, COLUMN["audio_len"]]: columns by name


# --------------------------------------------------------------------------------------------------------------
# shard format


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
        atomic_write(os.path.join(out_dir, f"{split}.{name}.bin"), lambda f, d=data: f.write(d.tobytes()))
    atomic_write(os.path.join(out_dir, f"{split}.index.npy"), lambda f: np.save(f, index))
    return {"utterances": len(index), "text_bytes": text_pos, "audio_tokens": audio_pos}


def write_meta(out_dir, meta):
    meta = {"format": FORMAT, "tokens_per_second": TOKENS_PER_SECOND, **meta}
    atomic_write(os.path.join(out_dir, "meta.json"), lambda f: f.write(json.dumps(meta, indent=2).encode()))


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
        ts, tl, as_, al, speaker = (int(self.index[i, COLUMN[c]]) for c in INDEX_COLUMNS[:5])
        return bytes(self.text[ts:ts + tl]), self.audio[as_:as_ + al].astype(np.int64), speaker

    def anchor(self, i, text_dropped=False):
        """
        Utterance i's continuation anchor in its training stream (text, SOA, audio): (the stream offset of its first
        sentence's last audio frame, the byte where the last sentence starts), or None (one sentence, or no text).
        """
        text_len, border_text, border_audio = (int(self.index[i, COLUMN[c]]) for c in
                                               ("text_len", "border_text", "border_audio"))
        return None if text_dropped or border_audio == 0 else (text_len + border_audio, border_text)

    def stream_lengths(self):
        """Tokens per training stream: text + SOA + audio + EOA."""
        return self.column("text_len") + self.column("audio_len") + 2

    def column(self, name):
        """One column of the index (INDEX_COLUMNS) for every utterance."""
        return self.index[:, COLUMN[name]]


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
        text_len, audio_len = shards.column("text_len")[picks[-1]], shards.column("audio_len")[picks[-1]]
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
# checkpoints: one dict (model, optimizer, model_args, iter_num, best_val_loss, config), as in nanoGPT


def save_checkpoint(path, checkpoint):
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    import torch

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, lambda f: torch.save(checkpoint, f))


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


def model_config(model_args, path):
    """A checkpoint's model_args -> GPTConfig; an unknown or invalid one is a CheckpointError naming it."""
    from dataclasses import fields

    unknown = sorted(set(model_args) - {f.name for f in fields(GPTConfig)})
    if unknown:
        raise CheckpointError(f"{path} has model settings this model.py does not know ({', '.join(unknown)}); "
                              "it was written by another version of Dirt")
    try:
        return GPTConfig(**model_args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has invalid model settings: {e}") from None


def load_model(path, device="cpu"):
    """-> (model in eval mode on device, checkpoint dict). Raises CheckpointError with a one-line reason."""
    ckpt = load_checkpoint(path, device)
    model = GPT(model_config(ckpt["model_args"], path))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the model: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), ckpt


class CheckpointError(RuntimeError):
    pass
