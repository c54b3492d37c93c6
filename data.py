"""
Data shared by prepare.py, train.py, sample.py and eval.py: the on-disk shard format, the training batches, and the
checkpoints (the synthetic corpus is in synthetic.py).

Shard format (one folder per dataset, e.g. data/synthetic/), defined here and nowhere else:
    meta.json           {"format": "dirt-shards-v2", "dataset", "tokens_per_second": 25, "speakers": [names],
                         "splits": {"train": {"utterances", "text_bytes", "audio_tokens",
                                              "sha256": {"train.text.bin": hex, "train.audio.bin": hex,
                                                         "train.index.npy": hex}},
                                    "val": {...}}, ...}
    {split}.text.bin    uint8: the UTF-8 bytes of every transcript, back to back
    {split}.audio.bin   uint16: the Stable Codec ids (0..46655) of every utterance, back to back
    {split}.index.npy   int64 [N, 7]: text_start, text_len, audio_start, audio_len, speaker (index into
                        meta["speakers"], -1 if unknown), border_text, border_audio (where the utterance's last
                        sentence starts when it was spoken on its own after the others, in bytes and frames: the
                        model's continuation anchor, see model.GPTConfig.anchor_continuations; 0, 0 if none)
v1 shards (no border columns) still read, as utterances without borders. The "sha256" of each split (the SHA-256 of
each whole file) came later without a new format name, since older readers ignore it; shards written before it still
read, with a note that they are unverified.
The utterances are in the order they were written: for a speech corpus, the order prepare.py encoded them in (its
docstring says which), for the synthetic one the order it was drawn in. The .bin files are written as the utterances
come and read through np.memmap, so a corpus far bigger than RAM is prepared and trains without being held in memory.
Every file is written to a temporary name and renamed into place, so a reader never sees half a shard.

Shards checks a split when it opens it, so that a corrupt corpus never trains in silence: meta.json is a JSON object of
a known format that lists the split; the three files exist; the index is a 2-D integer array of 7 (v1: 5) columns with
as many rows as meta.json records; each .bin file has the size meta.json records; every utterance's text and audio lie
inside their files, the last ending at the file's end, and its border and speaker in range; each file's SHA-256 is the
one in meta.json (flipped bytes keep every size). Any failure, whatever the bytes on disk, is a CorpusError (a
ValueError) of one line naming the file and the fix, which train.py and eval.py print as "error: ...". Every file is
hashed whole, since hashing costs little next to the run that reads the corpus (what it costs: docs/results.md, "What
the checks cost").
"""

import hashlib
import io
import json
import os
from array import array
from contextlib import ExitStack

import numpy as np
import torch

from codec import TOKENS_PER_SECOND
from common import atomic_file, atomic_write, load_array, load_exactly, load_tensors, why_unreadable
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
    Returns the split's entry in meta.json's "splits" (pass it to write_meta), with the checksums Shards verifies.
    """
    with SplitWriter(out_dir, split) as writer:
        for utterance in utterances:
            writer.add(*utterance)
    return writer.stats


class SplitWriter:
    """
    One split written as its utterances come, in the order they come (write_split's streaming form, for writing two
    splits at once): the .bin files grow under temporary names and are hashed as they grow, so memory holds only the
    index (7 int64 per utterance). When the with block ends the three files are renamed into place and .stats is the
    split's entry in meta.json; when it raises, none is.
    """

    def __init__(self, out_dir, split):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.split = out_dir, split
        self.names = {kind: f"{split}.{kind}.bin" for kind in ("text", "audio")}
        self.sha256 = {name: hashlib.sha256() for name in self.names.values()}
        with ExitStack() as files:  # the open .bin files: atomic_file renames each into place when they close
            self.out = {kind: files.enter_context(atomic_file(os.path.join(out_dir, name)))
                        for kind, name in self.names.items()}
            self.files = files.pop_all()  # kept open (unless opening one failed: then those opened are removed)
        self.index = array("q")  # int64, row after row
        self.text_pos = self.audio_pos = 0
        self.stats = None

    def add(self, text, audio, speaker, border=(0, 0)):
        audio = np.asarray(audio)
        if audio.size and (audio.min() < 0 or audio.max() >= N_AUDIO):
            raise ValueError(f"audio ids must be in 0..{N_AUDIO - 1}")
        border_text, border_audio = border
        if not (0 <= border_text < max(1, len(text)) and 0 <= border_audio < max(1, len(audio))):
            raise ValueError(f"border ({border_text}, {border_audio}) is outside its utterance")
        for kind, data in (("text", bytes(text)), ("audio", audio.astype(np.uint16).tobytes())):
            self.out[kind].write(data)
            self.sha256[self.names[kind]].update(data)
        self.index.extend((self.text_pos, len(text), self.audio_pos, len(audio), speaker, border_text, border_audio))
        self.text_pos += len(text)
        self.audio_pos += len(audio)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.files.__exit__(*exc)  # the .bin files: into place, or removed when the block raised
        if exc[0] is not None:
            return False
        index = np.frombuffer(self.index, dtype=np.int64).reshape(-1, len(INDEX_COLUMNS))
        buf = io.BytesIO()
        np.save(buf, index)  # the same bytes for the same index, so a resumed prepare.py writes the same meta.json
        name = f"{self.split}.index.npy"
        atomic_write(os.path.join(self.out_dir, name), lambda f: f.write(buf.getvalue()))
        self.sha256[name] = hashlib.sha256(buf.getvalue())
        self.stats = {"utterances": len(index), "text_bytes": self.text_pos, "audio_tokens": self.audio_pos,
                      "sha256": {name: h.hexdigest() for name, h in self.sha256.items()}}
        return False


def write_meta(out_dir, meta):
    meta = {"format": FORMAT, "tokens_per_second": TOKENS_PER_SECOND, **meta}
    atomic_write(os.path.join(out_dir, "meta.json"), lambda f: f.write(json.dumps(meta, indent=2).encode()))


class CorpusError(ValueError):
    """A prepared corpus that is missing a file or does not match itself; the message is one line naming the file."""


def rewrite_hint(data_dir):
    return f"re-run prepare.py (the command that made it) with --out_dir={data_dir} to rewrite it"


def read_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no dataset at {data_dir} (missing meta.json); run prepare.py first")
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read())
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # not JSON, not text at all, or nested past the parser's depth
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise CorpusError(f"{path} is not valid JSON ({reason}); {rewrite_hint(data_dir)}") from None
    if not isinstance(meta, dict):
        raise CorpusError(f"{path} is not a Dirt meta.json (a JSON {type(meta).__name__}, not an object); "
                          f"{rewrite_hint(data_dir)}")
    if meta.get("format") not in READABLE_FORMATS:
        raise CorpusError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}; {rewrite_hint(data_dir)}")
    if not isinstance(meta.get("splits"), dict):
        raise CorpusError(f"{path} has no \"splits\" object; {rewrite_hint(data_dir)}")
    if not isinstance(meta.get("speakers", []), list):
        raise CorpusError(f"{path} has \"speakers\" that are not a list; {rewrite_hint(data_dir)}")
    per_second = meta.get("tokens_per_second", TOKENS_PER_SECOND)
    if type(per_second) not in (int, float) or not per_second > 0:
        raise CorpusError(f"{path} has tokens_per_second {per_second!r}; {rewrite_hint(data_dir)}")
    return meta


def split_problem(info):
    """What keeps a split's entry in meta.json from being one write_split made, in a few words; '' if nothing."""
    if not isinstance(info, dict):
        return f"is a JSON {type(info).__name__}, not an object"
    for k in ("utterances", "text_bytes", "audio_tokens"):
        if k in info and (type(info[k]) is not int or info[k] < 0):
            return f"has {k} {info[k]!r}, not a count"
    if not isinstance(info.get("sha256", {}), dict):
        return "has a \"sha256\" that is not an object"
    return ""


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


_unverified_noted = set()  # data folders whose note has been printed: one line per corpus, not one per split


class Shards:
    """One split of a prepared dataset, memory-mapped, checked on opening as the format docstring above says: any
    problem is a CorpusError of one line (or FileNotFoundError when there is no meta.json at all)."""

    def __init__(self, data_dir, split):
        self.meta = read_meta(data_dir)
        self.fix = rewrite_hint(data_dir)
        self.meta_path = os.path.join(data_dir, "meta.json")
        info = self.meta["splits"].get(split)
        if info is None:
            raise CorpusError(f"{self.meta_path} lists no {split!r} split; {self.fix}")
        if problem := split_problem(info):
            raise CorpusError(f"{self.meta_path}: its {split!r} split {problem}; {self.fix}")
        try:
            self._open(data_dir, split, info)
        except (CorpusError, FileNotFoundError):
            raise
        except Exception as e:  # a check above let through what no check foresaw: still one line, naming the split
            raise CorpusError(f"the {split!r} split of {data_dir} is not one prepare.py writes "
                              f"({type(e).__name__}); {self.fix}") from None

    def _open(self, data_dir, split, info):
        self.names = {kind: f"{split}.{kind}" for kind in ("index.npy", "text.bin", "audio.bin")}
        self.paths = {kind: os.path.join(data_dir, name) for kind, name in self.names.items()}
        for path in self.paths.values():
            if not os.path.isfile(path):
                raise CorpusError(f"{path} is missing; {self.fix}")
        # the cheapest and most telling checks first: a file whose size differs from what meta.json records was cut
        # short or overwritten, and the message names it; only then the index against the files, then the contents
        self.index = self._read_index(info.get("utterances"))
        self._check_sizes(info)
        self.text = self._memmap(self.paths["text.bin"], np.uint8)
        self.audio = self._memmap(self.paths["audio.bin"], np.uint16)
        self._check_ranges()
        self.verified = self._check_sums(info.get("sha256"), data_dir)

    def _read_index(self, utterances):
        path = self.paths["index.npy"]
        try:
            index = load_array(path)
        except ValueError as e:
            raise CorpusError(f"{path} is not a readable .npy file ({e}); {self.fix}") from None
        if index.ndim != 2 or index.dtype.kind not in "iu" or index.shape[1] not in (5, len(INDEX_COLUMNS)):
            raise CorpusError(f"{path} holds an array of shape {index.shape} and type {index.dtype}, not integers of "
                              f"shape (N, {len(INDEX_COLUMNS)}) (or (N, 5) in v1); {self.fix}")
        if utterances is not None and len(index) != utterances:
            raise CorpusError(f"{path} has {len(index):,} utterances, {self.meta_path} records {utterances:,}; "
                              f"{self.fix}")
        if index.shape[1] < len(INDEX_COLUMNS):  # v1: no borders
            index = np.pad(index, ((0, 0), (0, len(INDEX_COLUMNS) - index.shape[1])))
        return index.astype(np.int64, copy=False)

    def _check_sizes(self, info):
        for kind, count, itemsize in (("text.bin", "text_bytes", 1), ("audio.bin", "audio_tokens", 2)):
            path, size = self.paths[kind], os.path.getsize(self.paths[kind])
            if size % itemsize:
                raise CorpusError(f"{path} is truncated ({size:,} bytes: not a whole number of {itemsize}-byte "
                                  f"ids); {self.fix}")
            expected = info.get(count, size // itemsize) * itemsize  # no count (hand-made meta.json): the index alone
            if size != expected:
                how = "truncated" if size < expected else "longer than it should be"
                raise CorpusError(f"{path} is {how} ({size:,} bytes, {self.meta_path} records {expected:,}); "
                                  f"{self.fix}")

    def _check_ranges(self):
        """Every utterance's text and audio inside their files, and nothing in a file that no utterance covers."""
        path = self.paths["index.npy"]
        for name in INDEX_COLUMNS:
            low = -1 if name == "speaker" else 0  # -1: speaker unknown
            if (self.column(name) < low).any():
                i = int(np.argmax(self.column(name) < low))
                raise CorpusError(f"{path}: utterance {i} has {name} {self.index[i, COLUMN[name]]}; {self.fix}")
        for kind, data, unit in (("text", self.text, "bytes"), ("audio", self.audio, "ids")):
            ends = self.column(f"{kind}_start") + self.column(f"{kind}_len")
            last = int(ends.max()) if len(ends) else 0
            if last > len(data):
                i = int(np.argmax(ends > len(data)))
                raise CorpusError(f"{path}: utterance {i}'s {kind} ends at {int(ends[i]):,}, past the end of "
                                  f"{self.paths[f'{kind}.bin']} ({len(data):,} {unit}); {self.fix}")
            if last < len(data):
                raise CorpusError(f"{path} covers {last:,} of the {len(data):,} {unit} in "
                                  f"{self.paths[f'{kind}.bin']}; {self.fix}")
        outside = ((self.column("border_text") > self.column("text_len"))
                   | (self.column("border_audio") > self.column("audio_len")))
        if "speakers" in self.meta:
            outside |= self.column("speaker") >= len(self.meta["speakers"])
        if outside.any():
            i = int(np.argmax(outside))
            raise CorpusError(f"{path}: utterance {i} has a border or speaker out of range; {self.fix}")

    def _check_sums(self, sums, data_dir):
        """-> whether the files were hashed: shards from before the checksums are read unverified, with a note."""
        if sums is None:
            if data_dir not in _unverified_noted:
                _unverified_noted.add(data_dir)
                print(f"note: {data_dir} has no checksums (prepared before they were added), so its contents are "
                      f"unverified; {self.fix} with them")
            return False
        for kind, path in self.paths.items():
            expected = sums.get(self.names[kind]) if isinstance(sums, dict) else None
            if expected is None:
                raise CorpusError(f"{self.meta_path} has no sha256 for {self.names[kind]}; {self.fix}")
            if file_sha256(path) != expected:  # flipped bytes keep every size: only the contents can tell
                raise CorpusError(f"{path} does not match its sha256 in {self.meta_path} (corrupted or changed "
                                  f"since prepare.py wrote it); {self.fix}")
        return True

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
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path, device="cpu"):
    """A checkpoint train.py wrote -> its dict, read without running code from the file. Whatever is wrong with the
    file (missing, unreadable, not a checkpoint, a key missing or of the wrong type) is a CheckpointError of one
    line naming it."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train one first (python train.py ...) or pass --out_dir")
    what = f"{path} is not a Dirt checkpoint (a file train.py writes)"
    try:
        ckpt = load_tensors(path, device)
    except Exception as e:  # torch's errors for a cut, damaged or foreign file have no common type
        raise CheckpointError(f"{what}: {why_unreadable(path, e)}") from None
    problem = checkpoint_problem(ckpt)
    if problem:
        raise CheckpointError(f"{what}: {problem}")
    return ckpt


# a checkpoint's keys: those it must have, and the others' types when it has them (type(None): null)
CHECKPOINT_KEYS = {"model": dict, "model_args": dict, "iter_num": int}
CHECKPOINT_OPTIONAL = {"optimizer": (dict, list), "best_val_loss": (int, float, type(None)), "config": dict,
                       "parent": (dict, type(None))}


def checkpoint_problem(ckpt, names=None):
    """What keeps a loaded object from being a checkpoint's dict, in a few words; '' if nothing does. names: what
    the file calls a key, where it is not the key (an export's config.json)."""
    name = (names or {}).get
    if not isinstance(ckpt, dict):
        return f"it holds an object of type {type(ckpt).__name__}, not a dict"
    missing = [name(k, k) for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        return f"it has no {', '.join(missing)}"
    for k, kind in {**CHECKPOINT_KEYS, **CHECKPOINT_OPTIONAL}.items():
        if k in ckpt and (not isinstance(ckpt[k], kind) or isinstance(ckpt[k], bool)):
            return f"its {name(k, k)} is of type {type(ckpt[k]).__name__}"
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in ckpt["model"].items()):
        return f"its {name('model', 'model')} is not a dict of named tensors"
    if not all(isinstance(k, str) for k in ckpt["model_args"]):
        return f"its {name('model_args', 'model_args')} are not named settings"
    return ""


def model_config(model_args, path):
    """A checkpoint's model_args -> GPTConfig; an unknown, mistyped or invalid one is a CheckpointError naming it."""
    from dataclasses import fields

    known = {f.name: type(f.default) for f in fields(GPTConfig)}
    unknown = sorted(set(model_args) - set(known))
    if unknown:
        raise CheckpointError(f"{path} has model settings this model.py does not know ({', '.join(unknown)}); "
                              "it was written by another version of Dirt")
    for k, v in model_args.items():  # a float where an int belongs would build a model that fails later
        if not (type(v) is known[k] or known[k] is float and type(v) is int):
            raise CheckpointError(f"{path} has invalid model settings: {k} is {v!r}, not of type {known[k].__name__}")
    try:
        return GPTConfig(**model_args)
    except ValueError as e:
        raise CheckpointError(f"{path} has invalid model settings: {e}") from None


# --------------------------------------------------------------------------------------------------------------
# exported models: a folder in the Hugging Face layout (export.py writes it), loaded with JSON and safetensors only
#   config.json         {"format": EXPORT_FORMAT, "model": GPTConfig's fields, "sampling": generate.Sampling's
#                        defaults, "iter_num", "val_loss", "training": the run's settings, "parent": or null}
#   model.safetensors   the weights, fp32 or bf16
#   README.md           the model card

EXPORT_FORMAT = "dirt-model-v1"
EXPORT_CONFIG, EXPORT_WEIGHTS = "config.json", "model.safetensors"
# a checkpoint's keys as config.json names them (the weights, "model" of a checkpoint, are model.safetensors)
EXPORT_NAMES = {"model": EXPORT_WEIGHTS, "model_args": '"model"', "iter_num": '"iter_num"',
                "best_val_loss": '"val_loss"', "config": '"training"', "parent": '"parent"'}


def find_model(path):
    """A model is a checkpoint file, a training run's out_dir (its ckpt.pt) or an exported folder (config.json and
    model.safetensors) -> (the file or folder, 'checkpoint' or 'export'). CheckpointError (one line) if none."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "ckpt.pt")):
            return os.path.join(path, "ckpt.pt"), "checkpoint"
        if os.path.exists(os.path.join(path, EXPORT_CONFIG)):
            return path, "export"
        raise CheckpointError(f"no model in {path}: neither a training run's ckpt.pt nor an exported {EXPORT_CONFIG}; "
                              "train one first (python train.py ...) or pass --out_dir")
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train one first (python train.py ...) or pass --out_dir")
    return path, "checkpoint"


def read_export(folder, device="cpu"):
    """An exported folder -> the dict a checkpoint is (model, model_args, iter_num, best_val_loss, config, parent),
    without its optimizer. Nothing in it is unpickled: config.json and safetensors. CheckpointError (one line)
    naming the file that is wrong."""
    config_path, weights_path = os.path.join(folder, EXPORT_CONFIG), os.path.join(folder, EXPORT_WEIGHTS)
    what = f"{config_path} is not a Dirt model's config.json (format {EXPORT_FORMAT}, export.py writes it)"
    try:
        with open(config_path, encoding="utf-8") as f:
            card = json.load(f)
    except Exception as e:  # not JSON, not text, nested past the parser's depth, unreadable
        reason = e.strerror if isinstance(e, OSError) else (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise CheckpointError(f"{what}: cannot read it ({reason})") from None
    if not isinstance(card, dict) or card.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{what}: it has no \"format\": \"{EXPORT_FORMAT}\"")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError("an exported model needs safetensors: pip install safetensors") from None
    try:
        state = load_file(weights_path, device=str(device))
    except Exception as e:  # missing, truncated, or not safetensors: their errors have no common type
        reason = "it is missing" if not os.path.exists(weights_path) else why_unreadable(weights_path, e)
        raise CheckpointError(f"{weights_path} is not the weights export.py writes (safetensors): {reason}") from None
    ckpt = {"model": state, "model_args": card.get("model"), "iter_num": card.get("iter_num", 0),
            "best_val_loss": card.get("val_loss"), "config": card.get("training", {}), "parent": card.get("parent")}
    ckpt = {k: v for k, v in ckpt.items() if v is not None or k in ("best_val_loss", "parent")}
    problem = checkpoint_problem(ckpt, EXPORT_NAMES)
    if problem:
        raise CheckpointError(f"{what}: {problem}")
    return ckpt


def read_model(path, device="cpu"):
    """Any of find_model's forms -> the checkpoint dict (read_export's keys, and optimizer for a checkpoint)."""
    where, kind = find_model(path)
    return (load_checkpoint if kind == "checkpoint" else read_export)(where, device)


def load_model(path, device="cpu"):
    """A checkpoint file, out_dir or exported folder -> (model in eval mode on device, its checkpoint dict).
    Raises CheckpointError with a one-line reason."""
    ckpt = read_model(path, device)
    model = GPT(model_config(ckpt["model_args"], path))
    problems = load_exactly(model, ckpt["model"])
    if problems:
        raise CheckpointError(f"{path} does not match the model its settings describe: {problems}")
    return model.to(device).eval(), ckpt


class CheckpointError(RuntimeError):
    pass
