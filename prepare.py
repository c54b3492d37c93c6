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
    python prepare.py --dataset=emilia --input='Emilia/EN/*.tar' --audio_ext=mp3   # needs the codec weights
    python prepare.py --dataset=hf --input=my_dataset/data                # needs the codec weights: Parquet files
    python train.py --dataset=ljspeech ...       # needs the codec weights (to prepare it): reads data/ljspeech/
On every GPU of a node, or of two nodes (train.py's torchrun flags; out_dir on a filesystem every node sees):
    torchrun --standalone --nproc_per_node=8 prepare.py --dataset=hf --input=my_dataset/data  # on a GPU
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=node0 prepare.py --input=...  # on a GPU
The format is detected from --input (or --format=ljspeech|libritts|jsonl|parquet|webdataset):
    ljspeech   a folder with metadata.csv (`id|text|normalized_text` lines; the normalized text is used when
               present) and wavs/<id>.wav (or any other audio extension)
    libritts   a folder tree of <speaker>/<chapter>/<utt>.wav (LibriTTS, LibriTTS-R) with the transcript beside it
               in <utt>.normalized.txt, else <utt>.original.txt, <utt>.txt or <utt>.lab; the speaker is the
               folder two levels above the audio file (or the top folder when the tree is shallower)
    jsonl      one {"audio": path relative to the manifest, "text": ..., "speaker": optional, "id": optional}
               per line
    parquet    Parquet files (a file, a folder searched at any depth, or a glob), or a Hugging Face dataset saved
               with save_to_disk (its folder): a row per utterance, the columns named by id_field, text_field,
               speaker_field and audio_field; the audio an audio file's bytes, Hugging Face's {bytes, path}, or a
               path (relative to the Parquet file). Needs pyarrow (pip install -r requirements-corpora.txt).
    webdataset .tar shards (a file, a folder or a glob; Emilia's layout): a record is the members sharing a key
               (the name up to the first dot of the file name), e.g. X.mp3 + X.json; the text, speaker and id are
               fields of the .json (text_field, speaker_field, id_field; else the .txt and the key), the audio the
               member with an extension in audio_ext.
Audio can be anything soundfile reads (WAV, FLAC, OGG, MP3, ...) at any rate and channel count; in Parquet and tar
files also anything else FFmpeg reads (through PyAV: M4A, Opus, ...). Files that are
missing, corrupt, empty, silent, too short or too long, or whose text is missing or too long are skipped, each
named with its reason as it is found, counted at the end and listed in <out_dir>/skipped.tsv; so are records of
Parquet and tar files without audio bytes or text, and whole files that cannot be read.
Parquet and tar files are read in order, a chunk of records at a time, so memory does not grow with the corpus; the
other formats are planned from every file's header, sorted by duration so that batches fill up. The shards hold the
utterances sorted by id (the same bytes whatever the format, order or number of processes they came in), the first
of an id in the input kept; each goes to val when a hash of its id falls below val_fraction. They are written from
the finished chunks one at a time (through a spill file on disk when the input's order is not id order), so that
memory holds their metadata, never the corpus's tokens.

Resumable: work is done in chunks of chunk_size utterances, each saved in <out_dir>/.parts/ when finished. Kill
the run at any point and start the same command again: it carries on from the last finished chunk and ends with
the same files, byte for byte, as a run that was never interrupted. Batch size does not change the tokens (a batch
only holds clips of the same token length, so no clip is padded by its neighbours), so a run killed by running out
of GPU memory can go on with a smaller --batch_size.

Under torchrun, chunk c is encoded by rank c % WORLD_SIZE, each on its own GPU (or CPU process), and rank 0 writes
the shards once every chunk is done: the same bytes as one process, whatever the process count. A killed rank takes
the job down (torchrun stops the others); the same command, with any process count, finishes it. A folder has a
meta.json only when it is complete. Each rank reads and decodes audio in `workers` processes ahead of its codec.

Test fixture option: --codec_ckpt='' builds the codec with random weights from --codec_config (e.g.
tests/fixtures/tiny_stable_codec_config.json); the tokens are then meaningless, but every step runs.
"""

import glob
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta

from codec import CKPT_PATH, CONFIG_PATH, SILENCE_DB, TOKENS_PER_SECOND
from common import atomic_write, check_device, fail, init_distributed, skip_line, skip_summary
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
input = ""  # a folder (ljspeech, libritts), a .jsonl manifest, or Parquet / tar files: a file, a folder or a glob
format = "auto"  # auto, ljspeech, libritts, jsonl, parquet or webdataset
# parquet and webdataset: the Parquet column, or the field of a tar record's .json, that holds each thing
id_field = "id"  # none: <file>:<row> (Parquet), the record's key (tar)
text_field = "text"  # tar: a record without a .json has its text in its .txt
speaker_field = "speaker"  # none: the speaker is unknown
audio_field = "audio"  # Parquet: an audio file's bytes, Hugging Face's {bytes, path}, or a path
audio_ext = ""  # tar: the audio member, by extension: the first of e.g. "mp3,flac" a record has; "" = any audio
min_seconds = 0.5
max_seconds = 30.0
max_text_bytes = 1000  # UTF-8 bytes
silence_db = SILENCE_DB  # skip audio with an RMS below this (dB full scale), where the codec's loudness norm stops
val_fraction = 0.01  # utterances in the val split, chosen by a hash of their id (at least one)
codec_config = CONFIG_PATH
codec_ckpt = CKPT_PATH  # '' = random weights (a test fixture, see above)
device = "auto"  # auto = cuda when there is a GPU, else cpu
batch_size = 32  # clips per codec call (at most; a batch holds clips of one token length)
chunk_size = 256  # utterances per resumable unit of work, and the clips a batch is drawn from
workers = 4  # processes (per rank) reading, decoding and resampling audio ahead of the codec; 0 = in this one
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
    fail(f"unknown dataset {dataset!r}: use --dataset=synthetic, or pass --input=<a folder, a manifest.jsonl, or "
         f"Parquet or tar files> to prepare a speech corpus under that name")
if not (glob.glob(input, recursive=True) if glob.has_magic(input) else os.path.exists(input)):
    fail(f"no such file or folder: {input}" + (" (the glob matches nothing)" if glob.has_magic(input) else ""))

from corpora import (CONTAINER_FORMATS, FILE_FORMATS, FORMATS, Fields, Limits, Skip,  # noqa: E402
                     chunk_records, container_files, container_name, detect_format, list_utterances, load_chunk,
                     one_line, parquet_problem, probe, start_workers)
from parts import part_seconds, plan_merge, save_part, write_merge  # noqa: E402

if format not in ("auto", *FORMATS):
    fail(f"--format must be auto, {', '.join(FORMATS)}, not {format!r}")
if format == "auto":
    format = detect_format(input)
    if format is None:
        fail(f"{input} is a file but not a .jsonl manifest, a Parquet file or a .tar shard; pass a folder, or "
             f"--format")
if format in FILE_FORMATS and glob.has_magic(input):
    fail(f"--format={format} reads one folder or manifest, not a glob: {input}")
if format == "jsonl" and not os.path.isfile(input) or format in ("ljspeech", "libritts") and not os.path.isdir(input):
    fail(f"--format={format} expects a {'manifest file' if format == 'jsonl' else 'folder'}, got {input}")
if format == "ljspeech" and not os.path.exists(os.path.join(input, "metadata.csv")):
    fail(f"no metadata.csv in {input}; is it an LJSpeech-style folder? (else pass --format)")
if not 0 < val_fraction < 1 or not 0 <= min_seconds < max_seconds or min(batch_size, chunk_size) < 1 or workers < 0:
    fail("need 0 < val_fraction < 1, 0 <= min_seconds < max_seconds, batch_size and chunk_size >= 1, workers >= 0")
fields = Fields(id_field, text_field, speaker_field, audio_field, audio_ext)
limits = Limits(min_seconds, max_seconds, max_text_bytes, silence_db)
files = []  # the container files, in order
if format in CONTAINER_FORMATS:
    files = container_files(format, input)
    if not files:
        fail(f"no {'.parquet or .arrow' if format == 'parquet' else '.tar'} files in {input} (--format={format})")
if format == "parquet":  # the first file's columns: a misnamed one is one line here, not a corpus of skips
    asked = {"text_field", "audio_field"} | _overridden  # noqa: F821  (configurator.py's): id, speaker may be absent
    problem = parquet_problem(files[0], {f"--{k}={globals()[k]}": k in asked
                                         for k in ("text_field", "audio_field", "id_field", "speaker_field")})
    if problem:
        fail(problem)

import torch  # noqa: E402  (the synthetic corpus needs none of these)
import torch.distributed as dist  # noqa: E402
from tqdm import tqdm  # noqa: E402

import codec as stable_codec  # noqa: E402

pool = start_workers(workers)  # forked now, before the codec or any thread exists

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


def report(skip):
    tqdm.write(skip_line(skip.name, skip.reason, skip.detail))


# -----------------------------------------------------------------------------
# 1. the codec first, so a missing one fails before any work; under torchrun, one per rank on its own GPU
device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
try:
    check_device(device)
except ValueError as e:
    fail(str(e))
# the ranks only wait for each other (a CPU barrier), however long the slowest takes
ddp, rank, local_rank, world, device = init_distributed(device, "gloo", timeout=timedelta(days=30))
torch.backends.cudnn.deterministic = True  # the same tokens when a resumed run re-encodes a chunk
try:  # a bad config or checkpoint is one line here, before anything is written; codec.py prints its own notes
    codec = stable_codec.Codec(codec_config, codec_ckpt or None, device)
except stable_codec.CodecUnavailable as e:
    fail(str(e))
say = print if rank == 0 else lambda *a, **k: None  # noqa: E731  what the job as a whole does: rank 0 says it

# 2. the plan, the same in every rank: a list of chunks
skipped = []  # what could not become an utterance
if format in FILE_FORMATS:  # every utterance, checked from its header, sorted by duration so batches fill up
    entries = list(list_utterances(format, input))
    if not entries:
        fail(f"found no utterances in {input} (format {format})")
    say(f"reading {len(entries):,} {format} entries from {input}")
    seen, candidates = set(), []
    for e in entries:
        if isinstance(e, Skip):
            skipped.append(e)
        elif e.id in seen:
            skipped.append(Skip(e.name, "duplicate id", e.id))
        else:
            seen.add(e.id)
            candidates.append(e)
    plan = []  # (utterance, seconds from the header)
    with ThreadPoolExecutor(max(workers, 1)) as threads:
        for r in threads.map(lambda u: probe(u, limits), candidates):
            (skipped if isinstance(r, Skip) else plan).append(r)
    plan.sort(key=lambda p: (p[1], p[0].id))
    chunks = [[u for u, _ in plan[i:i + chunk_size]] for i in range(0, len(plan), chunk_size)]
    weights = [sum(s for _, s in plan[i:i + chunk_size]) for i in range(0, len(plan), chunk_size)]
    listing = [(u.id, u.name, u.text, u.speaker, s) for u, s in plan]
else:  # runs of records in the order of the files, cut from their metadata; the audio is read when encoded
    chunks, listing = [], []
    for path in files:
        name = container_name(path, input)
        try:
            runs = chunk_records(format, path, chunk_size)
        except Exception as e:  # a damaged file: skip it, as a bad audio file is skipped
            skipped.append(Skip(name, "unreadable", one_line(e)))
            continue
        chunks += [(path, *run) for run in runs]
        listing.append((name, os.path.getsize(path), runs))
    weights = [n for _, _, n, _ in chunks]  # clips: their duration is known once they are decoded
    say(f"reading {sum(weights):,} records from {len(files)} {format} files in {input}")
for s in skipped if rank == 0 else []:
    report(s)

# 3. encode every chunk without a part file; a finished chunk is never redone
settings = dict(format=format, min_seconds=min_seconds, max_seconds=max_seconds, max_text_bytes=max_text_bytes,
                silence_db=silence_db, val_fraction=val_fraction)
if format in CONTAINER_FORMATS:
    settings.update(id_field=id_field, text_field=text_field, speaker_field=speaker_field, audio_field=audio_field,
                    audio_ext=audio_ext)
with open(codec_config, "rb") as f:
    codec_id = [hashlib.sha256(f.read()).hexdigest(), os.path.getsize(codec_ckpt) if codec_ckpt else "random"]
key = hashlib.sha256(json.dumps([settings, codec_id, chunk_size, torch.device(device).type, listing]).encode())
key = key.hexdigest()
if ddp:  # every rank must have planned the same work, or the shards would mix two corpora
    keys = [None] * world
    dist.all_gather_object(keys, key)
    if len(set(keys)) > 1:
        fail(f"the ranks planned different work from --input={input} (ranks {[k[:8] for k in keys]}); every node "
             f"must see the same files and settings")
parts_dir = os.path.join(out_dir, ".parts")
key_path = os.path.join(parts_dir, "plan.sha256")
part_path = lambda c: os.path.join(parts_dir, f"{c:05d}.npz")  # noqa: E731
if rank == 0:  # the others wait until it has made .parts/ right for this plan
    os.makedirs(parts_dir, exist_ok=True)
    if not os.path.exists(key_path) or open(key_path).read() != key:
        if any(f.endswith(".npz") for f in os.listdir(parts_dir)):
            print(f"note: {parts_dir} is from another input or other settings; starting over")
        shutil.rmtree(parts_dir)
        os.makedirs(parts_dir)
        save_atomic(key_path, key.encode())
    for f in os.listdir(parts_dir):  # a write cut short by a kill
        if ".tmp" in f:
            os.remove(os.path.join(parts_dir, f))
    if os.path.exists(os.path.join(out_dir, "meta.json")):  # a folder being made has no meta.json: not complete
        os.remove(os.path.join(out_dir, "meta.json"))
if ddp:
    dist.barrier()
done_at_start = {c for c in range(len(chunks)) if os.path.exists(part_path(c))}
todo = [c for c in range(rank, len(chunks), world) if c not in done_at_start]
if done_at_start:
    say(f"resuming: {len(done_at_start)} of {len(chunks)} chunks already done")
say(f"encoding {sum(weights) if format in CONTAINER_FORMATS else len(listing):,} utterances"
    + (f" ({sum(weights) / 3600:.2f} h)" if format in FILE_FORMATS else "") + f" in {len(chunks)} chunks on "
    + (f"{world} processes ({torch.device(device).type})" if ddp else device))
signal.signal(signal.SIGINT, lambda *_: fail("interrupted; run the same command again to carry on from here"))
# rank 0's bar: the whole job's audio (file formats: seconds; else clips), each rank's finished chunks read from
# .parts/, the audio hours encoded per second of this run
bar = tqdm(total=sum(weights), initial=sum(weights[c] for c in done_at_start), unit="s" if format in FILE_FORMATS
           else "clip", unit_scale=True, dynamic_ncols=True, desc="audio", smoothing=0.1, disable=rank != 0)
t_start, finished, last_look = time.time(), {}, [0.0]  # finished: chunk -> seconds, those done by this run


def show(partial=0.0, partial_seconds=0.0):
    """Rank 0's bar, from every part file (at most every 2 s): partial is this rank's chunk so far."""
    if rank != 0 or time.time() - last_look[0] < 2 and partial:
        return
    last_look[0] = time.time()
    on_disk = {int(f[:-4]) for f in os.listdir(parts_dir) if f.endswith(".npz")}
    for c in on_disk - done_at_start - set(finished):
        finished[c] = part_seconds(part_path(c))
    bar.n = sum(weights[c] for c in done_at_start | set(finished)) + partial
    hours = (sum(finished.values()) + partial_seconds) / 3600
    ranks = " ".join(f"{sum(1 for c in on_disk if c % world == r)}/{len(range(r, len(chunks), world))}"
                     for r in range(world))
    rate = hours / max(time.time() - t_start, 1e-9)
    bar.set_postfix_str(f"{rate:.3g} audio h/s = {rate * 3600:.0f}x real time, chunks by rank {ranks}", refresh=False)
    bar.refresh()


def submit(c):
    """Chunk c read and decoded by a worker process (or here, with workers=0)."""
    args = (format, chunks[c], input, fields, limits)
    if pool:
        return pool.submit(load_chunk, *args)
    future = Future()
    future.set_result(load_chunk(*args))
    return future


def fill():
    while len(ahead) < max(workers, 1) and (c := next(queue, None)) is not None:
        ahead.append(submit(c))


t_read = t_encode = encoded_seconds = 0.0
encoded_clips = 0
ahead, queue = deque(), iter(todo)  # chunks being read: as many as there are workers
for c in todo:
    t = time.time()
    fill()
    try:
        loaded = ahead.popleft().result()
    except BrokenProcessPool:
        fail("a worker process reading audio died (out of memory, or a decoder crashed on a file); run the same "
             "command again, with --workers=0 to see which file")
    fill()  # the next chunks are read while this one encodes (with workers=0: here, now)
    t_read += time.time() - t  # the codec's wait for audio
    items, clips = [u for u, _ in loaded], [r for _, r in loaded]
    seconds = [0.0 if isinstance(x, Skip) else len(x) / stable_codec.SAMPLE_RATE for x in clips]
    for r in clips:
        if isinstance(r, Skip):
            report(r)
    weight = seconds if format in FILE_FORMATS else [1] * len(clips)
    done_rows = []

    def progress(rows):
        done_rows.extend(rows)
        show(sum(weight[i] for i in done_rows), sum(seconds[i] for i in done_rows))

    t = time.time()
    results = encode_chunk(codec, clips, progress)
    t_encode += time.time() - t
    results = [r._replace(name=u.name) if isinstance(r, Skip) else r for u, r in zip(items, results)]
    for r, x in zip(results, clips):
        if isinstance(r, Skip) and not isinstance(x, Skip):
            report(r)
    save_part(part_path(c), items, results, sum(seconds))
    encoded_seconds += sum(seconds)
    encoded_clips += sum(not isinstance(r, Skip) for r in results)
    show()
if pool:
    pool.shutdown()
if todo:
    elapsed = time.time() - t_start
    print(f"{f'rank {rank}: ' if ddp else ''}encoded {encoded_clips:,} clips, {encoded_seconds / 3600:.3f} h of audio "
          f"in {elapsed:.1f}s: {encoded_clips / elapsed:.1f} clips/s, {encoded_seconds / elapsed:.0f}x real time; "
          f"waiting for audio {t_read:.1f}s, encoding {t_encode:.1f}s", flush=True)
if ddp:
    dist.barrier()  # every rank's chunks are on disk
    if rank != 0:
        dist.destroy_process_group()
        sys.exit(0)
show()
bar.close()

# 4. merge the parts into the shards (parts.py), in two passes so that memory holds metadata, not tokens: the first
# reads every part's metadata and decides what is kept (the first of an id in plan order), the val split (a hash of
# the id), the speakers and the id order; the second streams the kept utterances, in id order, to the shards
missing = [c for c in range(len(chunks)) if not os.path.exists(part_path(c))]
if missing:  # a rank that stopped without an error: never write shards that look complete
    fail(f"{len(missing)} of {len(chunks)} chunks are not done (chunk {missing[0]} first); run the same command again")
paths = [part_path(c) for c in range(len(chunks))]
merge = plan_merge(paths, val_fraction, ([u.id for u in chunk] for chunk in chunks) if format in FILE_FORMATS else None)
for s in merge.duplicates:
    report(s)
skipped = sorted(skipped + merge.skipped + merge.duplicates, key=lambda s: (s.name, s.reason))
summary = skip_summary(s.reason for s in skipped)
print(f"kept {merge.kept:,} of {merge.kept + len(skipped):,} utterances" + (f"; skipped {summary}" if summary else ""))
if merge.kept < 2:
    fail(f"need at least 2 usable utterances in {input}, found {merge.kept}")
for name in os.listdir(out_dir):  # files a kill left behind while writing the shards
    if re.fullmatch(r"(train|val)\.(text\.bin|audio\.bin|index\.npy)\.tmp\d+|(meta\.json|skipped\.tsv)\.tmp\d+", name):
        os.remove(os.path.join(out_dir, name))
stats = write_merge(out_dir, paths, merge)
save_atomic(os.path.join(out_dir, "skipped.tsv"),
            "".join(f"{s.name}\t{s.reason}\t{s.detail}\n" for s in skipped).encode())
write_meta(out_dir, {"dataset": dataset, "speakers": merge.speakers, "splits": stats,
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
if ddp:
    dist.destroy_process_group()
