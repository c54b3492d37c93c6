"""
Turn a corpus into Dirt's training shards (the format is documented in data.py).

The built-in synthetic speech corpus (no download; a toy task that checks the machinery, not speech):
    python prepare.py --dataset=synthetic
    python prepare.py --dataset=synthetic --n_train=50000 --seed=7 --out_dir=data/synthetic-big
Speakers held out (ids keep their meaning: a model of speakers 0-2 has never heard speaker 3; for fine-tuning):
    python prepare.py --dataset=synthetic --speakers=0,1,2 --out_dir=data/syn012
    python prepare.py --dataset=synthetic --speakers=3 --n_train=2000 --n_val=200 --seed=7 --out_dir=data/syn3

A real speech corpus, encoded to Stable Codec tokens (25 per second; needs the codec, see codec.py; use a GPU):
    python prepare.py --dataset=ljspeech --input=LJSpeech-1.1           # needs the codec weights: metadata.csv + wavs/
    python prepare.py --dataset=libritts_r --input=LibriTTS_R/train-clean-100  # needs the codec weights: <speaker>/...
    python prepare.py --dataset=mine --input=recordings/manifest.jsonl  # needs the codec weights: {"audio", "text"}
    python prepare.py --dataset=mine --input=... --max_seconds=20 --batch_size=64  # needs the codec weights
    python train.py --dataset=ljspeech ...       # needs the codec weights (to prepare it): reads data/ljspeech/
The format is detected from --input (or --format=ljspeech|libritts|jsonl):
    ljspeech   a folder with metadata.csv (`id|text|normalized_text` lines; the normalized text is used when
               present) and wavs/<id>.wav (or any other audio extension)
    libritts   a folder tree of <speaker>/<chapter>/<utt>.wav (LibriTTS, LibriTTS-R) with the transcript beside it
               in <utt>.normalized.txt, else <utt>.original.txt, <utt>.txt or <utt>.lab; the speaker is the
               folder two levels above the audio file (or the top folder when the tree is shallower)
    jsonl      one {"audio": path relative to the manifest, "text": ..., "speaker": optional, "id": optional}
               per line
Audio can be anything soundfile reads (WAV, FLAC, OGG, MP3, ...) at any rate and channel count. Files that are
missing, corrupt, empty, silent, too short or too long, or whose text is missing or too long are skipped, each
named with its reason as it is found, counted at the end and listed in <out_dir>/skipped.tsv.

Resumable: work is done in chunks of chunk_size utterances, each saved in <out_dir>/.parts/ when finished. Kill
the run at any point and start the same command again: it carries on from the last finished chunk and ends with
the same files, byte for byte, as a run that was never interrupted. Batch size does not change the tokens (a batch
only holds clips of the same token length, so no clip is padded by its neighbours), so a run killed by running out
of GPU memory can go on with a smaller --batch_size.

Test fixture option: --codec_ckpt='' builds the codec with random weights from --codec_config (e.g.
tests/fixtures/tiny_stable_codec_config.json); the tokens are then meaningless, but every step runs.
"""

import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter, namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from codec import CKPT_PATH, CONFIG_PATH, TOKENS_PER_SECOND
from common import atomic_write, check_device, fail, skip_line, skip_summary
from data import write_meta, write_split
from synthetic import SyntheticSpeech, synthetic_corpus

# -----------------------------------------------------------------------------
dataset = "synthetic"
out_dir = ""  # default: data/<dataset>
seed = 1337
n_train = 20000  # synthetic: utterances in the train split
n_val = 500  # synthetic: utterances in the val split
max_sentences = 1  # synthetic: sentences per utterance, at most (2 teaches continuation: prompts, chunks)
multi_share = 0.4  # synthetic, max_sentences > 1: the share of utterances with more than one sentence
speakers = ""  # synthetic: the speaker ids that speak, e.g. "0,1,2" (hold speaker 3 out to fine-tune on); "" = all 4
# real speech corpora
input = ""  # a folder (ljspeech, libritts) or a .jsonl manifest
format = "auto"  # auto, ljspeech, libritts or jsonl
min_seconds = 0.5
max_seconds = 30.0
max_text_bytes = 1000  # UTF-8 bytes
silence_db = -60.0  # skip audio with an RMS below this (dB full scale), where the codec's loudness norm stops
val_fraction = 0.01  # utterances in the val split, chosen by a hash of their id (at least one)
codec_config = CONFIG_PATH
codec_ckpt = CKPT_PATH  # '' = random weights (a test fixture, see above)
device = "auto"  # auto = cuda when there is a GPU, else cpu
batch_size = 32  # clips per codec call (at most; a batch holds clips of one token length)
chunk_size = 256  # utterances per resumable unit of work
workers = 4  # threads reading and resampling audio ahead of the codec
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
# -----------------------------------------------------------------------------


out_dir = out_dir or os.path.join("data", dataset)
t0 = time.time()
# every check fails before anything is written: a mistake costs one line, and leaves no half-made folder behind
existing = os.path.abspath(out_dir)
while not os.path.exists(existing):  # the folder, or the nearest one above it that exists, which makedirs builds on
    existing = os.path.dirname(existing)
if not os.path.isdir(existing):
    fail(f"--out_dir={out_dir}: {existing} is a file; give a folder for the shards")
if dataset == "synthetic" and not input:
    if n_train < 1 or n_val < 1:
        fail(f"--n_train={n_train} and --n_val={n_val}: both must be at least 1")
    if max_sentences < 1:
        fail(f"--max_sentences={max_sentences}: use 1 or more (2 teaches continuation)")
    if not 0 <= multi_share <= 1:
        fail(f"--multi_share={multi_share} is a share: use a value from 0 to 1")
    n_speakers = SyntheticSpeech.n_speakers
    ids = [s.strip() for s in speakers.split(",")] if speakers.strip() else [str(s) for s in range(n_speakers)]
    if not all(s.isdigit() and int(s) < n_speakers for s in ids) or len(set(map(int, ids))) != len(ids):
        fail(f"--speakers={speakers}: give distinct speaker ids from 0 to {n_speakers - 1}, comma-separated "
             f"(e.g. --speakers=0,1,2), or leave it empty for all {n_speakers}")
    speaking = [int(s) for s in ids]
    train, val, names = synthetic_corpus(seed, n_train, n_val, max_sentences, multi_share, speaking)
    stats = {"train": write_split(out_dir, "train", train), "val": write_split(out_dir, "val", val)}
    meta = {"dataset": "synthetic", "seed": seed, "speakers": names, "splits": stats}
    if len(speaking) < n_speakers:  # the default corpus's meta stays as it was
        meta["speaking"] = speaking
    write_meta(out_dir, meta)
    if len(speaking) < n_speakers:
        print(f"speakers: {', '.join(names[s] for s in speaking)} (of {n_speakers})")
    for split, s in stats.items():
        print(f"{split}: {s['utterances']:,} utterances, {s['text_bytes']:,} text bytes, {s['audio_tokens']:,} "
              f"audio tokens ({s['audio_tokens'] / TOKENS_PER_SECOND / 3600:.2f} h)")
    print(f"wrote {out_dir} in {time.time() - t0:.1f}s")
    sys.exit(0)
if not input:
    fail(f"unknown dataset {dataset!r}: use --dataset=synthetic, or pass --input=<folder or manifest.jsonl> to "
         f"prepare a speech corpus under that name")
if not os.path.exists(input):
    fail(f"no such file or folder: {input}")
if format not in ("auto", "ljspeech", "libritts", "jsonl"):
    fail(f"--format must be auto, ljspeech, libritts or jsonl, not {format!r}")
if format == "auto" and os.path.isfile(input) and not input.endswith((".jsonl", ".json")):
    fail(f"{input} is a file but not a .jsonl manifest; pass a folder, or --format=jsonl")
if format == "auto":
    is_lj = os.path.exists(os.path.join(input, "metadata.csv"))
    format = "jsonl" if os.path.isfile(input) else "ljspeech" if is_lj else "libritts"
if format == "jsonl" and not os.path.isfile(input) or format != "jsonl" and not os.path.isdir(input):
    fail(f"--format={format} expects a {'manifest file' if format == 'jsonl' else 'folder'}, got {input}")
if format == "ljspeech" and not os.path.exists(os.path.join(input, "metadata.csv")):
    fail(f"no metadata.csv in {input}; is it an LJSpeech-style folder? (else pass --format)")
if not 0 < val_fraction < 1 or not 0 <= min_seconds < max_seconds or min(batch_size, chunk_size, workers) < 1:
    fail("need 0 < val_fraction < 1, 0 <= min_seconds < max_seconds, and batch_size, chunk_size, workers >= 1")

import soundfile as sf  # noqa: E402  (the synthetic corpus needs none of these)
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import codec as stable_codec  # noqa: E402

# -----------------------------------------------------------------------------
# reading the corpus: a list of utterances, and the lines that could not become one

Utterance = namedtuple("Utterance", "id audio name text speaker")  # audio: path; name: how reports call it
Skip = namedtuple("Skip", "name reason detail")
AUDIO_EXTENSIONS = {"." + f.lower() for f in sf.available_formats()} | {".opus", ".oga", ".aif"}


def clean_text(text):
    return " ".join(text.split())  # one line, single spaces


def read_ljspeech(root):
    wavs = os.path.join(root, "wavs")
    audio = {}  # id -> file name in wavs/, whatever the audio format
    for f in sorted(os.listdir(wavs)) if os.path.isdir(wavs) else []:
        stem, ext = os.path.splitext(f)
        if ext.lower() in AUDIO_EXTENSIONS:
            audio.setdefault(stem, f)
    with open(os.path.join(root, "metadata.csv"), encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("|")
            if len(fields) < 2:
                yield Skip(f"metadata.csv:{n}", "bad metadata line", "expected id|text|normalized_text")
                continue
            uid, text = fields[0].strip(), fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]
            name = os.path.join("wavs", audio.get(uid, uid + ".wav"))
            speaker = os.path.basename(os.path.abspath(root))  # one speaker: named after the folder
            yield Utterance(uid, os.path.join(root, name), name, clean_text(text), speaker)


def read_libritts(root):
    for folder, subfolders, files in os.walk(root, followlinks=True):  # a folder of links can pick subsets
        subfolders.sort()
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in AUDIO_EXTENSIONS:
                continue
            name = os.path.relpath(os.path.join(folder, f), root)
            parts = name.split(os.sep)
            speaker = parts[-3] if len(parts) >= 3 else parts[0] if len(parts) == 2 else None
            for sidecar in (".normalized.txt", ".original.txt", ".txt", ".lab"):
                if os.path.exists(os.path.join(folder, stem + sidecar)):
                    try:
                        with open(os.path.join(folder, stem + sidecar), encoding="utf-8", errors="replace") as t:
                            text = clean_text(t.read())
                    except OSError as e:
                        yield Skip(name, "no text", one_line(e))
                        break
                    yield Utterance(os.path.splitext(name)[0], os.path.join(folder, f), name, text, speaker)
                    break
            else:
                yield Skip(name, "no text", f"no {stem}.normalized.txt, .original.txt, .txt or .lab")


def read_jsonl(manifest):
    root = os.path.dirname(manifest)
    with open(manifest, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio, text = row["audio"], row["text"]
                assert isinstance(audio, str) and isinstance(text, str)
            except (ValueError, KeyError, TypeError, AssertionError):
                yield Skip(f"{os.path.basename(manifest)}:{n}", "bad manifest line",
                           'expected {"audio": path, "text": str}')
                continue
            speaker = row.get("speaker")
            yield Utterance(str(row.get("id", audio)), os.path.join(root, audio), audio, clean_text(text),
                            None if speaker is None else str(speaker))


def probe(u):
    """Check an utterance from its text and audio header (cheap): -> (utterance, seconds) or a Skip."""
    text_bytes = len(u.text.encode())
    if text_bytes == 0:
        return Skip(u.name, "no text", "empty transcript")
    if text_bytes > max_text_bytes:
        return Skip(u.name, "text too long", f"{text_bytes} bytes > max_text_bytes={max_text_bytes}")
    if not os.path.exists(u.audio):
        return Skip(u.name, "missing audio", "")
    try:
        info = sf.info(u.audio)
    except Exception as e:
        return Skip(u.name, "unreadable", one_line(e))
    return check_duration(u, info.frames / info.samplerate) or (u, info.frames / info.samplerate)


def check_duration(u, seconds):
    if seconds == 0:
        return Skip(u.name, "empty audio", "no samples")
    if seconds < min_seconds:
        return Skip(u.name, "too short", f"{seconds:.2f}s < min_seconds={min_seconds}")
    if seconds > max_seconds:
        return Skip(u.name, "too long", f"{seconds:.2f}s > max_seconds={max_seconds}")


def one_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def load(u):
    """An utterance's audio as 16 kHz mono float32 (not yet loudness-normalised), or a Skip."""
    try:
        return read_audio(u)
    except Exception as e:  # corrupt data, or anything else wrong with one file: never stop the run for it
        return Skip(u.name, "unreadable", one_line(e))


def read_audio(u):
    x = stable_codec.load_audio(u.audio)  # the same downmix and resampler as codec.preprocess, which then normalises
    if not np.isfinite(x).all():
        return Skip(u.name, "unreadable", "samples that are not finite numbers")
    skip = check_duration(u, len(x) / stable_codec.SAMPLE_RATE)
    if skip:
        return skip
    loudness = stable_codec.rms_db(x)
    if loudness < silence_db:
        return Skip(u.name, "silent", f"RMS {loudness:.0f} dB < silence_db={silence_db:g}")
    return x


# -----------------------------------------------------------------------------
# encoding: one chunk of utterances at a time, each finished chunk saved as a part file


def encode_chunk(codec, clips, progress):
    """clips: 16 kHz arrays or Skips -> (token arrays or Skips). A batch holds clips of one token length only, so
    none is padded with silence that the encoder would see: a clip's tokens do not depend on its neighbours.
    progress(rows) is called with the clips each batch has encoded."""
    out = list(clips)
    by_length = {}
    for i, clip in enumerate(clips):
        if not isinstance(clip, Skip):
            by_length.setdefault(math.ceil(len(clip) / stable_codec.HOP), []).append(i)
    for _, rows in sorted(by_length.items()):
        for b in range(0, len(rows), batch_size):
            batch = rows[b:b + batch_size]
            try:
                tokens, lengths = codec.encode([clips[i] for i in batch], stable_codec.SAMPLE_RATE)
                out_rows = [tokens[j, :lengths[j]].numpy() for j in range(len(batch))]
            except Exception:  # e.g. out of memory: one clip at a time gives the same tokens
                out_rows = []
                for i in batch:
                    try:
                        tokens, lengths = codec.encode([clips[i]], stable_codec.SAMPLE_RATE)
                        out_rows.append(tokens[0, :lengths[0]].numpy())
                    except Exception as e:
                        out_rows.append(Skip(None, "codec error", one_line(e)))
            for i, row in zip(batch, out_rows):
                out[i] = row
            progress(batch)
    return out


def save_atomic(path, data):
    atomic_write(path, lambda f: f.write(data))


def save_part(path, items, results):
    """One finished chunk: the tokens of the utterances kept and the reasons for those skipped."""
    kept = [r for r in results if not isinstance(r, Skip)]
    info = {"ids": [u.id for u in items],
            "skipped": [[u.name, r.reason, r.detail] if isinstance(r, Skip) else None for u, r in zip(items, results)]}
    buf = io.BytesIO()
    np.savez(buf, info=np.frombuffer(json.dumps(info).encode(), dtype=np.uint8),
             lengths=np.array([len(r) for r in kept], dtype=np.int64),
             tokens=np.concatenate(kept).astype(np.uint16) if kept else np.zeros(0, np.uint16))
    save_atomic(path, buf.getvalue())


def read_part(path, items):
    """-> per item: token array or Skip."""
    with np.load(path) as part:
        info = json.loads(part["info"].tobytes())
        lengths, tokens = part["lengths"], part["tokens"].astype(np.int64)
    if info["ids"] != [u.id for u in items]:
        fail(f"{path} belongs to another plan; delete {os.path.dirname(path)} and run again")
    rows = iter(np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else [])
    return [Skip(*s) if s else next(rows) for s in info["skipped"]]


def report(skip):
    tqdm.write(skip_line(skip.name, skip.reason, skip.detail))


def is_val(uid):
    return hash_fraction(uid) < val_fraction


def hash_fraction(uid):
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") / 2 ** 64


# -----------------------------------------------------------------------------
# 1. the codec first, so a missing one fails before any work
device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
try:
    check_device(device)
except ValueError as e:
    fail(str(e))
torch.backends.cudnn.deterministic = True  # the same tokens when a resumed run re-encodes a chunk
try:  # a bad config or checkpoint is one line here, before anything is written; codec.py prints its own notes
    codec = stable_codec.Codec(codec_config, codec_ckpt or None, device)
except stable_codec.CodecUnavailable as e:
    fail(str(e))

# 2. the plan: every utterance, checked from its header, sorted by duration so batches need little padding
readers = {"ljspeech": read_ljspeech, "libritts": read_libritts, "jsonl": read_jsonl}
entries = list(readers[format](input))
if not entries:
    fail(f"found no utterances in {input} (format {format})")
print(f"reading {len(entries):,} {format} entries from {input}")
skipped, seen, candidates = [], set(), []
for e in entries:
    if isinstance(e, Skip):
        skipped.append(e)
    elif e.id in seen:
        skipped.append(Skip(e.name, "duplicate id", e.id))
    else:
        seen.add(e.id)
        candidates.append(e)
pool = ThreadPoolExecutor(workers)
plan = []  # (utterance, seconds from the header)
for r in pool.map(probe, candidates):
    (skipped if isinstance(r, Skip) else plan).append(r)
for s in skipped:
    report(s)
plan.sort(key=lambda p: (p[1], p[0].id))
chunks = [plan[i:i + chunk_size] for i in range(0, len(plan), chunk_size)]

# 3. encode every chunk without a part file; a finished chunk is never redone
settings = dict(format=format, min_seconds=min_seconds, max_seconds=max_seconds, max_text_bytes=max_text_bytes,
                silence_db=silence_db, val_fraction=val_fraction)
with open(codec_config, "rb") as f:
    codec_id = [hashlib.sha256(f.read()).hexdigest(), os.path.getsize(codec_ckpt) if codec_ckpt else "random"]
key = hashlib.sha256(json.dumps([settings, codec_id, chunk_size, torch.device(device).type,
                                 [(u.id, u.name, u.text, u.speaker, s) for u, s in plan]]).encode()).hexdigest()
parts_dir = os.path.join(out_dir, ".parts")
os.makedirs(parts_dir, exist_ok=True)
key_path = os.path.join(parts_dir, "plan.sha256")
if not os.path.exists(key_path) or open(key_path).read() != key:
    if any(f.endswith(".npz") for f in os.listdir(parts_dir)):
        print(f"note: {parts_dir} is from another input or other settings; starting over")
    shutil.rmtree(parts_dir)
    os.makedirs(parts_dir)
    save_atomic(key_path, key.encode())
for f in os.listdir(parts_dir):  # a write cut short by a kill
    if ".tmp" in f:
        os.remove(os.path.join(parts_dir, f))
part_path = lambda c: os.path.join(parts_dir, f"{c:05d}.npz")  # noqa: E731
todo = [c for c in range(len(chunks)) if not os.path.exists(part_path(c))]
done_seconds = sum(s for c in sorted(set(range(len(chunks))) - set(todo)) for _, s in chunks[c])
if len(todo) < len(chunks):
    print(f"resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks already done")
total_seconds = sum(s for _, s in plan)
print(f"encoding {len(plan):,} utterances ({total_seconds / 3600:.2f} h) in {len(chunks)} chunks on {device}")
t_encode, encoded_seconds = time.time(), 0.0
signal.signal(signal.SIGINT, lambda *_: fail("interrupted; run the same command again to carry on from here"))
bar = tqdm(total=total_seconds, initial=done_seconds, unit="s", unit_scale=True, dynamic_ncols=True, desc="audio",
           smoothing=0.1)  # counts seconds of audio, not files: the ETA holds although short files come first
loading = [pool.submit(load, u) for u, _ in chunks[todo[0]]] if todo else []
for n, c in enumerate(todo):
    clips = [f.result() for f in loading]
    if n + 1 < len(todo):  # read the next chunk while this one encodes
        loading = [pool.submit(load, u) for u, _ in chunks[todo[n + 1]]]
    seconds = [s for _, s in chunks[c]]
    results = encode_chunk(codec, clips, lambda rows: bar.update(sum(seconds[i] for i in rows)))
    bar.update(sum(s for s, clip in zip(seconds, clips) if isinstance(clip, Skip)))
    encoded_seconds += sum(seconds)
    items = [u for u, _ in chunks[c]]
    results = [r._replace(name=u.name) if isinstance(r, Skip) else r for u, r in zip(items, results)]
    for r in results:
        if isinstance(r, Skip):
            report(r)
    save_part(part_path(c), items, results)
bar.close()
pool.shutdown()
if todo:
    elapsed = time.time() - t_encode
    print(f"encoded {encoded_seconds / 3600:.2f} h of audio in {elapsed:.1f}s "
          f"({encoded_seconds / max(elapsed, 1e-9):.0f}x real time)")

# 4. merge the parts in order into the shards: utterances sorted by id, the split by a hash of the id
kept = []  # (id, text, tokens, speaker name)
for c, chunk in enumerate(chunks):
    items = [u for u, _ in chunk]
    for u, r in zip(items, read_part(part_path(c), items)):
        if isinstance(r, Skip):
            skipped.append(r)
        else:
            kept.append((u.id, u.text.encode(), r, u.speaker))
kept.sort(key=lambda k: k[0])
skipped.sort(key=lambda s: (s.name, s.reason))
summary = skip_summary(s.reason for s in skipped)
print(f"kept {len(kept):,} of {len(kept) + len(skipped):,} utterances" + (f"; skipped {summary}" if summary else ""))
if len(kept) < 2:
    fail(f"need at least 2 usable utterances in {input}, found {len(kept)}")
ids = [k[0] for k in kept]
val_ids = {uid for uid in ids if is_val(uid)} or {min(ids, key=hash_fraction)}
if len(val_ids) == len(ids):
    val_ids.remove(max(ids, key=hash_fraction))
speakers = sorted({k[3] for k in kept if k[3] is not None})
speaker_index = {s: i for i, s in enumerate(speakers)}
for name in os.listdir(out_dir):  # files a kill left behind while writing the shards
    if re.fullmatch(r"(train|val)\.(text\.bin|audio\.bin|index\.npy)\.tmp\d+|(meta\.json|skipped\.tsv)\.tmp\d+", name):
        os.remove(os.path.join(out_dir, name))
stats = {}
for split in ("train", "val"):
    rows = [(text, tokens, speaker_index.get(spk, -1)) for uid, text, tokens, spk in kept
            if (uid in val_ids) == (split == "val")]
    stats[split] = write_split(out_dir, split, rows)
save_atomic(os.path.join(out_dir, "skipped.tsv"),
            "".join(f"{s.name}\t{s.reason}\t{s.detail}\n" for s in skipped).encode())
write_meta(out_dir, {"dataset": dataset, "speakers": speakers, "splits": stats,
                     "source": {"input": input, **settings},
                     "codec": {"config": codec_config, "checkpoint": codec_ckpt or "random weights (test fixture)"},
                     "skipped": dict(sorted(Counter(s.reason for s in skipped).items()))})
shutil.rmtree(parts_dir)
for split, s in stats.items():
    print(f"{split}: {s['utterances']:,} utterances, {s['text_bytes']:,} text bytes, {s['audio_tokens']:,} audio "
          f"tokens ({s['audio_tokens'] / TOKENS_PER_SECOND / 3600:.2f} h)")
if skipped:
    print(f"skipped files are listed in {os.path.join(out_dir, 'skipped.tsv')}")
print(f"wrote {out_dir} in {time.time() - t0:.1f}s")
