"""
prepare.py at corpus scale: Parquet files (audio as bytes or as Hugging Face's {bytes, path}), a Hugging Face
save_to_disk folder and WebDataset tar shards, built here from real recorded speech (the Asterisk prompts, Debian
package asterisk-core-sounds-en-g722) with the bad rows real corpora have, prepare into the same shards as the same
utterances in a JSONL manifest, whatever order the rows come in.
torchrun with 2 processes (gloo, CPU) writes the same bytes as one process, and so does a 2-process job killed with
SIGKILL and started again. The tiny random-weight codec from tests/fixtures stands in for the real one
(--codec_ckpt=''). The merge of the finished parts into the shards holds one part's tokens at a time (tracemalloc).
"""

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import ROOT, one_line_error, run

sys.path.insert(0, ROOT)
from data import Shards, write_meta  # noqa: E402

sf = pytest.importorskip("soundfile")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
import speech_metrics as sm  # noqa: E402

ASTERISK = sm.available()["asterisk"]

pytestmark = [
    pytest.mark.slow,  # the whole file: see pytest.ini
    pytest.mark.skipif(ASTERISK is not None, reason=str(ASTERISK)),
    pytest.mark.skipif(importlib.util.find_spec("stable_codec") is None,
                       reason="needs stable_codec: pip install --no-deps -r requirements-codec.txt"),
]
TINY_CODEC = [f"--codec_config={os.path.join(ROOT, 'tests', 'fixtures', 'tiny_stable_codec_config.json')}",
              "--codec_ckpt=", "--device=cpu"]
SHARD_FILES = [f"{split}.{name}" for split in ("train", "val") for name in ("text.bin", "audio.bin", "index.npy")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same float arithmetic in every process: the same tokens


@pytest.fixture(scope="module")
def corpus():
    """Rows {id, text, speaker, audio: bytes or None}: 8 prompts, 2 speakers (the prompts as recorded, and at
    8 kHz), as FLAC, WAV and OGG; then the bad ones: no audio bytes, corrupt audio, empty text, an id again.
    Returns (rows, {id: reason} of the bad ones)."""
    rows = []
    for i, (name, wav, text) in enumerate(sm.load_asterisk_prompts(8, min_words=4, max_words=12)):
        buf = io.BytesIO()
        fmt = ["FLAC", "WAV", "OGG"][i % 3]
        sf.write(buf, wav if i % 2 else wav[::2], 16000 if i % 2 else 8000, format=fmt)  # every 2nd at 8 kHz
        rows.append({"id": name, "text": text, "speaker": ["allison", "allison-8k"][i % 2], "audio": buf.getvalue()})
    rows += [{"id": "no-audio", "text": "There is no audio here.", "speaker": "allison", "audio": None},
             {"id": "corrupt", "text": "This audio is garbage.", "speaker": "allison",
              "audio": b"RIFF\x00\x01garbage, not a wave file at all" * 10},
             {"id": "no-text", "text": "", "speaker": "allison", "audio": rows[0]["audio"]},
             {**rows[3], "text": "The first of an id is kept.", "audio": rows[2]["audio"]}]
    return rows, {"no-audio": "missing audio", "corrupt": "unreadable", "no-text": "no text",
                  rows[3]["id"]: "duplicate id"}


def write_jsonl(rows, folder):
    folder.mkdir()
    lines = []
    for i, r in enumerate(rows):
        if r["audio"] is not None:
            (folder / f"{i}.audio").write_bytes(r["audio"])
        lines.append(json.dumps({"id": r["id"], "audio": f"{i}.audio", "text": r["text"], "speaker": r["speaker"]}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def table(rows, hf_struct):
    audio = [{"bytes": r["audio"], "path": f"{r['id']}.flac"} for r in rows] if hf_struct else \
        [r["audio"] for r in rows]
    return pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                     "speaker": [r["speaker"] for r in rows], "audio": audio})


def write_parquet(rows, folder, hf_struct=False):
    """Two files (as Hugging Face's data/train-0000N-of-00002.parquet) of row groups of 2 rows."""
    (folder / "data").mkdir(parents=True)
    half = len(rows) // 2
    for n, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(table(part, hf_struct), folder / "data" / f"train-{n:05d}-of-00002.parquet", row_group_size=2)
    return folder


def write_save_to_disk(rows, folder):
    """What datasets' save_to_disk writes: Arrow stream files named in state.json, batches of 3 rows here."""
    folder.mkdir(parents=True)
    t = table(rows, hf_struct=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        for batch in t.to_batches(max_chunksize=3):
            w.write_batch(batch)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                   "_split": "train"}))
    (folder / "dataset_info.json").write_text("{}")
    return folder


def write_tars(rows, folder):
    """Emilia's layout: <key>.flac + <key>.json ({id, text, speaker}) per record, in two shards (one gzipped)."""
    folder.mkdir()
    half = len(rows) // 2
    for n, part in enumerate((rows[:half], rows[half:])):
        with tarfile.open(folder / f"shard-{n:06d}.tar{'.gz' if n else ''}", "w:gz" if n else "w") as tar:
            for i, r in enumerate(part):
                key = f"EN_B{n:05d}_W{i:06d}"
                members = [("json", json.dumps({"id": r["id"], "text": r["text"], "speaker": r["speaker"]}).encode())]
                members += [("flac", r["audio"])] if r["audio"] is not None else []
                for ext, data in members:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def process_tree(pid):
    """pid and every process below it, from /proc."""
    children = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(p))
    tree, todo = set(), [pid]
    while todo:
        tree.add(todo[-1])
        todo += [c for c in children.get(todo.pop(), []) if c not in tree]
    return tree


def environ(pid, what="environ"):
    """A process's environment (or command line) as a list of strings; [] when it is gone."""
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def signal_quietly(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # gone already
        pass


def prepare(tmp_path, name, input, *args, script="prepare.py"):
    return run(script, f"--dataset={name}", f"--input={input}", f"--out_dir={tmp_path / name}", *TINY_CODEC, *args,
               cwd=tmp_path, env=ENV)


def same_files(a, b, files):
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"{f} differs between {a} and {b}"


def test_parquet_and_tar_shards_prepare_like_a_jsonl_manifest(corpus, tmp_path):
    rows, bad = corpus
    manifest = write_jsonl(rows, tmp_path / "jsonl")
    prepare(tmp_path, "jsonl", manifest)
    expected = json.loads((tmp_path / "jsonl" / "meta.json").read_text())
    assert sum(s["utterances"] for s in expected["splits"].values()) == 8
    assert expected["speakers"] == ["allison", "allison-8k"]
    assert expected["skipped"] == {"duplicate id": 1, "missing audio": 1, "no text": 1, "unreadable": 1}
    inputs = {"parquet": write_parquet(rows, tmp_path / "pq-bytes"),  # a folder found at any depth
              "parquet_hf": f"{write_parquet(rows, tmp_path / 'pq-hf', hf_struct=True)}/data/*.parquet",  # a glob
              "save_to_disk": write_save_to_disk(rows, tmp_path / "hf-disk"),
              "tars": write_tars(rows, tmp_path / "tars")}
    for (name, input), workers in zip(inputs.items(), (2, 1, 0, 2)):  # 0: read in the encoding process
        proc = prepare(tmp_path, name, input, "--chunk_size=3", f"--workers={workers}")
        same_files(tmp_path / "jsonl", tmp_path / name, SHARD_FILES)
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        assert meta["splits"] == expected["splits"] and meta["speakers"] == expected["speakers"]
        assert meta["skipped"] == expected["skipped"], proc.stdout
        skips = [line for line in proc.stdout.splitlines() if line.startswith("skip ")]
        assert len(skips) == 4 and all(f": {reason}" in "".join(skips) for reason in bad.values()), proc.stdout
        assert not (tmp_path / name / ".parts").exists()

    # the rows in another order: the same shards (they hold the utterances sorted by id)
    prepare(tmp_path, "reversed", write_parquet(rows[7::-1] + rows[8:], tmp_path / "pq-reversed"), "--chunk_size=3")
    same_files(tmp_path / "jsonl", tmp_path / "reversed", SHARD_FILES)


def test_torchrun_matches_one_process_and_survives_sigkill(corpus, tmp_path):
    """2 processes write the bytes 1 process writes; SIGKILL of the whole job, then the same command, too."""
    rows, _ = corpus
    more = [{**r, "id": f"{r['id']}-{n}"} for n in range(3) for r in rows[:8]] + rows[8:11]  # 24 utterances, 3 bad
    data = write_parquet(more, tmp_path / "pq")
    args = ["--chunk_size=2", "--batch_size=2", "--workers=1"]
    prepare(tmp_path, "one", data, *args)
    files = sorted(os.listdir(tmp_path / "one"))
    assert "meta.json" in files and "skipped.tsv" in files
    out = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                os.path.join(ROOT, "prepare.py"), "--dataset=one", f"--input={data}", f"--out_dir={out}", *TINY_CODEC,
                *args]
    proc = subprocess.run(torchrun, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0: encoded" in proc.stdout and "rank 1: encoded" in proc.stdout
    assert sorted(os.listdir(out)) == files
    same_files(tmp_path / "one", out, files)

    # a 1-process job killed; then of a 2-process job one rank (torchrun stops the other; the folder does not look
    # complete); then the whole job (every process, as a scheduler does); then the same command finishes, same bytes
    out = tmp_path / "killed"
    torchrun[torchrun.index(f"--out_dir={tmp_path / 'two'}")] = f"--out_dir={out}"
    torchrun[torchrun.index("--chunk_size=2")] = "--chunk_size=1"  # 27 chunks: time to kill a job part-way
    done = lambda: {f for f in os.listdir(out / ".parts") if f.endswith(".npz")} if (out / ".parts").exists() \
        else set()  # noqa: E731
    one = [a.replace("--nproc_per_node=2", "--nproc_per_node=1") for a in torchrun]  # parts are parts, whatever N
    for kill, command in (("the job", one), ("rank 1", torchrun), ("the job", torchrun)):
        job = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
        before, deadline = len(done()), time.time() + 300
        while time.time() < deadline and job.poll() is None and len(done()) < before + 3:
            time.sleep(0.01)
        tree = process_tree(job.pid)  # torchrun starts each rank in a session of its own: a kill names each
        ranks = {p for p in tree if f"RANK={kill[-1]}" in environ(p)} if kill == "rank 1" else tree
        for pid in ranks:
            signal_quietly(pid, signal.SIGSTOP)  # none finishes or starts another while the others are killed
        for pid in ranks | (process_tree(job.pid) if kill == "the job" else set()):
            signal_quietly(pid, signal.SIGKILL)
        stderr = job.communicate(timeout=120)[1]
        assert job.returncode != 0, f"the job finished before {kill} could be killed"
        deadline = time.time() + 10  # no process is left behind: a rank's workers end with it
        while time.time() < deadline and any(f"--out_dir={out}" in " ".join(environ(p, "cmdline")) for p in tree):
            time.sleep(0.1)
        assert not [p for p in tree if f"--out_dir={out}" in " ".join(environ(p, "cmdline"))], kill
        assert before + 3 <= len(done()) < 27 and not (out / "meta.json").exists(), (kill, stderr)
    finished = len(done())
    proc = subprocess.run(torchrun, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resuming: {finished} of 27 chunks already done" in proc.stdout, proc.stdout
    same_files(tmp_path / "one", out, files)


def test_container_mistakes_are_one_line_errors(corpus, tmp_path):
    rows, _ = corpus
    data = write_parquet(rows[:2], tmp_path / "pq")
    cases = [(["--text_field=transcript"], "--text_field=transcript"),
             (["--speaker_field=spk"], "--speaker_field=spk"),
             ([f"--input={tmp_path}/nothing-*.parquet"], "the glob matches nothing"),
             (["--format=webdataset"], "no .tar files")]
    for args, needle in cases:
        proc = run("prepare.py", "--dataset=x", f"--input={data}", f"--out_dir={tmp_path}/x", *TINY_CODEC, *args,
                   cwd=tmp_path, check=False)
        one_line_error(proc, needle)
        assert not (tmp_path / "x").exists()


def test_container_layouts(corpus, tmp_path):
    """What the readers find, without encoding: a save_to_disk DatasetDict's splits in order; a tar record's text
    from its .txt when it has no .json, its audio by --audio_ext, a .json that is not an object, keys in folders."""
    import corpora
    rows, _ = corpus
    for split in ("train", "test"):
        write_save_to_disk(rows[:2], tmp_path / "dd" / split)
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert corpora.detect_format(str(tmp_path / "dd")) == "parquet"
    assert corpora.container_files("parquet", str(tmp_path / "dd")) == \
        [str(tmp_path / "dd" / s / "data-00000-of-00001.arrow") for s in ("train", "test")]

    members = [("a.b/x1.txt", b"Text from a txt file."), ("a.b/x1.flac", rows[0]["audio"]),
               ("a.b/x1.wav", rows[1]["audio"]), ("a.b/x2.json", b"[1, 2]"), ("a.b/x2.flac", rows[2]["audio"]),
               ("a.b/x3.seg.json", b"{}"), ("a.b/x3.json", json.dumps({"text": "Three.", "id": "three"}).encode())]
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fields = corpora.Fields("id", "text", "speaker", "audio", "wav,flac")
    runs = corpora.chunk_records("webdataset", str(tmp_path / "s.tar"), 2)
    assert [r[:2] for r in runs] == [(0, 2), (2, 1)] and runs[1][2] > runs[0][2]
    got = [u for run in runs for u in corpora.read_records("webdataset", str(tmp_path / "s.tar"), str(tmp_path), *run,
                                                           fields)]
    assert got[0] == corpora.Utterance("a.b/x1", rows[1]["audio"], "s.tar:a.b/x1", "Text from a txt file.", None)
    assert got[1] == corpora.Skip("s.tar:a.b/x2", "bad record", "its .json is not a JSON object")
    assert got[2] == corpora.Skip("s.tar:a.b/x3", "missing audio", "no audio bytes or path")

    # Parquet audio as a path, relative to the Parquet file; Hugging Face's struct with only a path
    pq.write_table(pa.table({"text": ["One.", "Two."], "audio": ["clips/1.flac", None],
                             "hf": [{"bytes": None, "path": "/abs/2.flac"}] * 2}), tmp_path / "p.parquet")
    paths = corpora.Fields("id", "text", "speaker", "audio", "")
    got = list(corpora.read_records("parquet", str(tmp_path / "p.parquet"), str(tmp_path), 0, 2, None, paths))
    assert got == [corpora.Utterance("p.parquet:0", str(tmp_path / "clips" / "1.flac"), "p.parquet:0", "One.", None),
                   corpora.Skip("p.parquet:1", "missing audio", "no audio bytes or path")]
    hf = list(corpora.read_records("parquet", str(tmp_path / "p.parquet"), str(tmp_path), 1, 1, None,
                                   paths._replace(audio="hf")))
    assert hf == [corpora.Utterance("p.parquet:1", "/abs/2.flac", "p.parquet:1", "Two.", None)]


@pytest.mark.parametrize("ids", ["rising", "falling"])
def test_merge_holds_one_part_of_tokens_at_a_time(tmp_path, ids):
    """prepare.py's merge (parts.py), on 200 parts of 8 utterances of 2,000 tokens (6.4 MB of tokens in all): the
    Python heap's peak (tracemalloc, numpy's arrays included) stays under a quarter of the tokens, where holding them
    all would take more than all; the shards hold every kept utterance sorted by id, the first of an id (in plan
    order) kept, the skips and speakers counted, val chosen by the id's hash. Ids rising as the parts come stream
    straight through; falling ones go through the spill file."""
    import hashlib
    import tracemalloc

    import numpy as np

    import parts
    from corpora import Skip, Utterance
    rng = np.random.default_rng(0)
    paths, kept, skipped = [], [], 0
    for c in range(200):
        items, results = [], []
        for i in range(8):
            n = 8 * c + i
            uid = f"utt{(n if ids == 'rising' else 99999 - n):05d}"
            duplicate = f"utt{(7 if ids == 'rising' else 99999 - 7):05d}"
            uid = duplicate if n == 1501 else uid  # an id again, far from its first
            items.append(Utterance(uid, None, f"{n}.flac", f"Utterance {n}.", f"spk{n % 3}" if n % 10 else None))
            results.append(Skip(f"{n}.flac", "silent", "") if n % 50 == 0 else rng.integers(0, 46656, 2000))
            if n % 50:
                kept.append((uid, items[-1].text.encode(), results[-1], -1 if n % 10 == 0 else n % 3))
            skipped += n % 50 == 0
        paths.append(str(tmp_path / f"{c:05d}.npz"))
        parts.save_part(paths[-1], items, results, 1.0)
    first = {}
    kept = sorted((first.setdefault(k[0], k) for k in kept if k[0] not in first), key=lambda k: k[0])
    tokens = sum(len(k[2]) for k in kept) * 2

    tracemalloc.start()
    plan = parts.plan_merge(paths, 0.05)
    stats = parts.write_merge(str(tmp_path / "out"), paths, plan)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert tokens > 6_000_000 and peak < tokens / 4, f"peak {peak:,} bytes for {tokens:,} bytes of tokens"

    assert plan.speakers == ["spk0", "spk1", "spk2"] and plan.kept == len(kept) == 1600 - 32 - 1
    assert len(plan.skipped) == skipped == 32 and [d.detail for d in plan.duplicates] == [duplicate]
    assert (plan.order is None) == (ids == "rising")  # falling: through the spill file, which is gone afterwards
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(p) for p in paths] + ["out"])
    write_meta(str(tmp_path / "out"), {"dataset": "merge", "speakers": plan.speakers, "splits": stats})
    is_val = [int.from_bytes(hashlib.sha256(k[0].encode()).digest()[:8], "big") / 2 ** 64 < 0.05 for k in kept]
    assert 0 < sum(is_val) < len(kept)
    for split, want in (("train", False), ("val", True)):
        shards = Shards(str(tmp_path / "out"), split)
        expected = [k for k, v in zip(kept, is_val) if v == want]
        assert len(shards) == len(expected) and shards.verified
        for i, (uid, text, audio, speaker) in enumerate(expected):
            got = shards[i]
            assert got[0] == text and np.array_equal(got[1], audio) and got[2] == speaker, (split, i, uid)
