"""
prepare.py's input side: every corpus format it reads (described in prepare.py's docstring), read into utterances,
and each utterance's audio decoded to the codec's 16 kHz mono (in prepare.py's worker processes).

Two kinds of format:
    file formats (ljspeech, libritts, jsonl): each utterance is an audio file. list_utterances lists them all;
        prepare.py checks each file's header and plans the work sorted by duration, so batches fill up.
    container formats (parquet, webdataset): the audio is inside big files, read in order and never all at once.
        chunk_records cuts each file into runs of records from its metadata alone (Parquet's footer, the Arrow
        stream's batch headers, the tar's member headers), and read_records streams one run.
"""

import glob
import io
import json
import multiprocessing
import os
import signal
import tarfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from collections import namedtuple

import numpy as np
import soundfile as sf

import codec as stable_codec

FILE_FORMATS = ("ljspeech", "libritts", "jsonl")
CONTAINER_FORMATS = ("parquet", "webdataset")
FORMATS = FILE_FORMATS + CONTAINER_FORMATS
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet", ".arrow")  # .arrow: the Arrow stream files of a Hugging Face save_to_disk folder

Utterance = namedtuple("Utterance", "id audio name text speaker")  # audio: a path or an audio file's bytes
Skip = namedtuple("Skip", "name reason detail")
Limits = namedtuple("Limits", "min_seconds max_seconds max_text_bytes silence_db")
Fields = namedtuple("Fields", "id text speaker audio audio_ext")  # container formats: where each field is
AUDIO_EXTENSIONS = {"." + f.lower() for f in sf.available_formats()} | {".opus", ".oga", ".aif", ".m4a", ".webm"}


def clean_text(text):
    return " ".join(text.split())  # one line, single spaces


def one_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def detect_format(path):
    """The format of --input (a folder, a file or a glob), or None when nothing says."""
    if glob.has_magic(path):
        names = glob.glob(path, recursive=True)
        return next((f for f in CONTAINER_FORMATS if names and all(n.endswith(suffixes(f)) for n in names)), None)
    if os.path.isfile(path):
        return "jsonl" if path.endswith((".jsonl", ".json")) else next(
            (f for f in CONTAINER_FORMATS if path.endswith(suffixes(f))), None)
    if any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")):
        return "parquet"
    if os.path.exists(os.path.join(path, "metadata.csv")):
        return "ljspeech"
    for f in CONTAINER_FORMATS:  # a folder of containers, at any depth
        if any(n.endswith(suffixes(f)) for _, _, files in os.walk(path) for n in files):
            return f
    return "libritts"


def suffixes(fmt):
    return PARQUET_SUFFIXES if fmt == "parquet" else TAR_SUFFIXES

# -----------------------------------------------------------------------------
# file formats: every utterance listed up front


def list_utterances(fmt, path):
    return {"ljspeech": read_ljspeech, "libritts": read_libritts, "jsonl": read_jsonl}[fmt](path)


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


def probe(u, limits):
    """Check an utterance from its text and audio header (cheap): -> (utterance, seconds) or a Skip."""
    skip = check_text(u, limits)
    if skip:
        return skip
    if not os.path.exists(u.audio):
        return Skip(u.name, "missing audio", "")
    try:
        info = sf.info(u.audio)
    except Exception as e:
        return Skip(u.name, "unreadable", one_line(e))
    return check_duration(u, info.frames / info.samplerate, limits) or (u, info.frames / info.samplerate)

# -----------------------------------------------------------------------------
# container formats: runs of records, read in order


def container_files(fmt, path):
    """--input's container files, sorted: a file, a glob, or a folder searched at any depth; for Parquet also a
    Hugging Face save_to_disk folder (state.json names its Arrow files; dataset_dict.json its splits' folders)."""
    if glob.has_magic(path):
        return sorted(glob.glob(path, recursive=True))
    if os.path.isfile(path):
        return [path]
    if fmt == "parquet" and os.path.exists(os.path.join(path, "dataset_dict.json")):
        with open(os.path.join(path, "dataset_dict.json")) as f:
            return [n for split in json.load(f)["splits"] for n in container_files(fmt, os.path.join(path, split))]
    if fmt == "parquet" and os.path.exists(os.path.join(path, "state.json")):
        with open(os.path.join(path, "state.json")) as f:
            return [os.path.join(path, d["filename"]) for d in json.load(f)["_data_files"]]
    return sorted(os.path.join(folder, n) for folder, _, files in os.walk(path, followlinks=True) for n in files
                  if n.endswith(suffixes(fmt)))


def container_name(path, input):
    """How reports call a container file: its path from --input's folder."""
    return os.path.relpath(path, input if os.path.isdir(input) else os.path.dirname(input) or ".")


def chunk_records(fmt, path, chunk_size):
    """A container file cut into runs of chunk_size records, from its metadata: [(first record, records, where the
    run starts: the member's byte offset in an uncompressed tar, else None)]."""
    if fmt == "parquet":
        if path.endswith(".arrow"):
            with pa_stream(path) as stream:
                n = sum(batch.num_rows for batch in stream)  # memory-mapped: the batch headers, not the audio
        else:
            n = pq().ParquetFile(path).metadata.num_rows
        return [(s, min(chunk_size, n - s), None) for s in range(0, n, chunk_size)]
    runs, n, key, seekable = [], 0, None, not is_compressed(path)
    with tarfile.open(path, "r:*") as tar:  # seeks past the audio of an uncompressed tar
        for member in tar:
            k = tar_key(member.name)
            if not member.isfile() or k == key:
                continue
            if n % chunk_size == 0:
                runs.append([n, 0, member.offset if seekable else None])
            runs[-1][1] += 1
            n, key = n + 1, k
            tar.members = []  # tarfile keeps every member it has read: memory would grow with the shard
    return [tuple(r) for r in runs]


def read_records(fmt, path, root, start, count, offset, fields):
    """Records start..start+count of one container file -> Utterances (audio: bytes, or a path) or Skips."""
    name = container_name(path, root)
    rows = (parquet_rows if fmt == "parquet" else tar_records)(path, start, count, offset, fields)
    for i, row in enumerate(rows, start):
        yield make_utterance(row, f"{name}:{i}" if fmt == "parquet" else f"{name}:{row.get('__key__')}",
                             os.path.dirname(path), fields)


def make_utterance(row, name, folder, fields):
    """One record (a dict of its fields) -> an Utterance, or a Skip saying what it lacks."""
    if "__error__" in row:
        return Skip(name, "bad record", row["__error__"])
    text, audio = row.get(fields.text), row.get(fields.audio)
    if not isinstance(text, str):
        return Skip(name, "no text", f"no {fields.text!r} field" if text is None else f"{fields.text!r} is not text")
    if isinstance(audio, dict):  # Hugging Face's Audio: {"bytes", "path"}, the bytes when it has them
        audio = audio.get("bytes") or audio.get("path")
    if isinstance(audio, str) and audio:
        audio = audio if os.path.isabs(audio) else os.path.join(folder, audio)
    elif not isinstance(audio, bytes) or not audio:
        return Skip(name, "missing audio", "no audio bytes or path")
    uid, speaker = row.get(fields.id), row.get(fields.speaker)
    return Utterance(name if uid is None else str(uid), audio, name, clean_text(text),
                     None if speaker is None else str(speaker))


def parquet_rows(path, start, count, offset, fields):
    if path.endswith(".arrow"):
        with pa_stream(path) as stream:
            yield from rows_of(stream, start, count, fields)
        return
    f = pq().ParquetFile(path)
    groups, first, row = [], None, 0  # the row groups that hold the run, and the row the first of them starts at
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if row + n > start and row < start + count:
            groups.append(g)
            first = row if first is None else first
        row += n
    columns = [c for c in (fields.id, fields.text, fields.speaker, fields.audio) if c in f.schema_arrow.names]
    yield from rows_of(f.iter_batches(batch_size=64, row_groups=groups, columns=columns), start - (first or 0),
                       count, fields)


def rows_of(batches, skip, count, fields):
    """Rows skip..skip+count of a stream of record batches, as dicts; only the batches that hold them converted."""
    for batch in batches:
        if count <= 0:
            return
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        batch = batch.slice(skip, count)
        skip, count = 0, count - batch.num_rows
        wanted = [c for c in (fields.id, fields.text, fields.speaker, fields.audio) if c in batch.schema.names]
        yield from batch.select(wanted).to_pylist()


def tar_records(path, start, count, offset, fields):
    """WebDataset's convention: a record is the run of members whose names agree up to the first dot of the file
    name (the key); the rest of the name is the field, e.g. 'a/b.mp3' and 'a/b.json' are record 'a/b'."""
    exts = [e.strip().lstrip(".").lower() for e in fields.audio_ext.split(",") if e.strip()] or \
        [e[1:] for e in sorted(AUDIO_EXTENSIONS)]
    with open(path, "rb") as raw:
        if offset is not None:
            raw.seek(offset)  # the run's first member: the tar is read from there as a stream
        tar = tarfile.open(fileobj=raw, mode="r|*")
        record, n = None, start if offset is not None else 0  # n: the number of the record being gathered
        for member in tar:
            if not member.isfile():
                continue
            key = tar_key(member.name)
            if record is not None and key != record["__key__"]:
                if n >= start:
                    yield tar_fields(record, fields, exts)
                record, n = None, n + 1
                if n >= start + count:
                    return
            record = record or {"__key__": key}
            record[member.name[len(key) + 1:].lower()] = tar.extractfile(member).read() if n >= start else b""
            tar.members = []  # tarfile keeps every member it has read: memory would grow with the shard
        if record is not None and n >= start:
            yield tar_fields(record, fields, exts)


def tar_fields(record, fields, exts):
    """A tar record's members -> the fields make_utterance reads: the .json's, the .txt, the first audio found."""
    row = {"__key__": record["__key__"], fields.id: record["__key__"]}
    if "json" in record:
        try:
            meta = json.loads(record["json"])
            assert isinstance(meta, dict)
        except (ValueError, AssertionError):
            return {"__key__": record["__key__"], "__error__": "its .json is not a JSON object"}
        row.update(meta)
    elif "txt" in record:
        row[fields.text] = record["txt"].decode("utf-8", errors="replace")
    row[fields.audio] = next((record[e] for e in exts if e in record), None)
    return row


def tar_key(name):
    folder, base = os.path.split(name)
    return os.path.join(folder, base.split(".", 1)[0])


def is_compressed(path):
    with open(path, "rb") as f:
        head = f.read(6)
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00"


def parquet_problem(path, fields):
    """None, or one line on what keeps a Parquet file (or Arrow stream) from being read: no pyarrow, a file that
    is not Parquet, or a column of fields ({"--text_field=text": required}) it does not have."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "--format=parquet needs pyarrow: pip install -r requirements-corpora.txt"
    try:
        if path.endswith(".arrow"):
            with pa_stream(path) as stream:
                columns = stream.schema.names
        else:
            columns = pq().read_schema(path).names
    except Exception as e:
        return f"cannot read {path}: {one_line(e)}"
    for flag, required in fields.items():
        if required and flag.split("=", 1)[1] not in columns:
            return f"{flag}: {path} has no such column (it has {', '.join(columns)})"


def pq():
    import pyarrow.parquet  # optional: only the container formats need it (requirements-corpora.txt)
    return pyarrow.parquet


class pa_stream:
    """The record batches of an Arrow IPC stream file (what save_to_disk writes), memory-mapped."""

    def __init__(self, path):
        import pyarrow as pa
        self.source = pa.memory_map(path)
        self.reader = pa.ipc.open_stream(self.source)

    def __enter__(self):
        return self.reader

    def __exit__(self, *exc):
        self.source.close()

# -----------------------------------------------------------------------------
# audio: decoded, checked and resampled, in a worker process


def check_text(u, limits):
    text_bytes = len(u.text.encode())
    if text_bytes == 0:
        return Skip(u.name, "no text", "empty transcript")
    if "\ufffd" in u.text:  # the readers decode with errors="replace": the transcript was not UTF-8
        return Skip(u.name, "text not UTF-8", "re-save the transcript as UTF-8")
    if text_bytes > limits.max_text_bytes:
        return Skip(u.name, "text too long", f"{text_bytes} bytes > max_text_bytes={limits.max_text_bytes}")


def check_duration(u, seconds, limits):
    if seconds == 0:
        return Skip(u.name, "empty audio", "no samples")
    if seconds < limits.min_seconds:
        return Skip(u.name, "too short", f"{seconds:.2f}s < min_seconds={limits.min_seconds}")
    if seconds > limits.max_seconds:
        return Skip(u.name, "too long", f"{seconds:.2f}s > max_seconds={limits.max_seconds}")


def load(u, limits):
    """An utterance's audio as 16 kHz mono float32 (not yet loudness-normalised), or a Skip."""
    try:
        x = stable_codec.load_audio(io.BytesIO(u.audio) if isinstance(u.audio, bytes) else u.audio)
    except Exception as e:  # corrupt data, or anything else wrong with one file: never stop the run for it
        return Skip(u.name, "missing audio" if isinstance(u.audio, str) and not os.path.exists(u.audio)
                    else "unreadable", one_line(e))
    if not np.isfinite(x).all():
        return Skip(u.name, "unreadable", "samples that are not finite numbers")
    skip = check_duration(u, len(x) / stable_codec.SAMPLE_RATE, limits)
    if skip:
        return skip
    loudness = stable_codec.rms_db(x)
    if loudness < limits.silence_db:
        return Skip(u.name, "silent", f"RMS {loudness:.0f} dB < silence_db={limits.silence_db:g}")
    return x


def start_workers(n):
    """n processes that read and decode audio (None for n=0), forked at once: call it before any thread exists (a
    fork copies only the thread that calls it)."""
    if n == 0:
        return None
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"), initializer=worker_init,
                               initargs=(os.getpid(),))
    pool.submit(int).result()  # a forked pool starts all its processes at its first task
    return pool


def worker_init(parent):
    """A worker ignores Ctrl-C, which the main process answers for all, and ends when the main process is gone
    (killed with SIGKILL, it cannot stop its workers, which would wait for work forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def load_chunk(fmt, spec, root, fields, limits):
    """One chunk's utterances, read and decoded (what a worker process does): -> [(utterance without its audio,
    16 kHz clip or Skip)]. spec: the planned utterances (file formats), or (file, first record, records, offset)."""
    if fmt in FILE_FORMATS:
        items = spec
    else:
        path, start, count, offset = spec
        items = list(read_records(fmt, path, root, start, count, offset, fields))
    out = []
    for u in items:
        result = u if isinstance(u, Skip) else check_text(u, limits) or load(u, limits)
        out.append((Utterance(None, None, u.name, None, None) if isinstance(u, Skip) else u._replace(audio=None),
                    result))
    return out
