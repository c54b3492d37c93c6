"""
prepare.py on real speech: LJSpeech, LibriTTS and JSONL corpora built at test time from flite voices (Debian
package `flite`), with the bad files real corpora have; the tiny random-weight codec from tests/fixtures stands in
for the real one (--codec_ckpt=''), so the tokens are meaningless but every step runs. Also: a run killed with
SIGKILL and started again ends with the same bytes as one that was never stopped, and train.py trains on the result.
"""

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run

sys.path.insert(0, ROOT)
from data import Shards  # noqa: E402

sf = pytest.importorskip("soundfile")
soxr = pytest.importorskip("soxr")
pytestmark = [
    pytest.mark.slow,  # the whole file: see pytest.ini
    pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite: apt-get install flite"),
    pytest.mark.skipif(importlib.util.find_spec("stable_codec") is None,
                       reason="needs stable_codec: pip install --no-deps -r requirements-codec.txt"),
]
TINY_CODEC = [f"--codec_config={os.path.join(ROOT, 'tests', 'fixtures', 'tiny_stable_codec_config.json')}",
              "--codec_ckpt=", "--device=cpu"]
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
]
VOICES = ["slt", "rms", "awb", "kal16"]


def speak(text, voice, tmp_path):
    """flite's voice -> (float32 samples, rate)."""
    path = tmp_path / "flite.wav"
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, capture_output=True)
    x, sr = sf.read(path, dtype="float32")
    return x, sr


def tokens_for(x, sr):
    """The tokens prepare.py must keep of a clip: 25 per second of its 16 kHz mono version, rounding up."""
    x = x.mean(axis=1) if x.ndim == 2 else x
    n = len(x) if sr == 16000 else len(soxr.resample(x, sr, 16000))
    return math.ceil(n / 640)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flite")
    return [speak(s, VOICES[i % len(VOICES)], tmp) for i, s in enumerate(SENTENCES)]


def write_garbage(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x01garbage, not a wave file at all" * 10)


@pytest.fixture(scope="module")
def ljspeech(clips, tmp_path_factory):
    """An LJSpeech folder: 6 good clips (one stereo 44.1 kHz), then one each corrupt, silent, too long, missing.
    Returns (folder, {text kept: expected tokens}, {file: reason})."""
    root = tmp_path_factory.mktemp("LJSpeech-mini")
    (root / "wavs").mkdir()
    lines, expected = [], {}
    for i, (x, sr) in enumerate(clips[:6]):
        if i == 5:  # stereo at 44.1 kHz, quieter on the right
            x = soxr.resample(x, sr, 44100)
            x, sr = np.stack([x, 0.5 * x], axis=1), 44100
        sf.write(root / "wavs" / f"LJ001-{i:04d}.wav", x, sr)
        raw = SENTENCES[i].replace("well", "wel")  # the normalized column must win
        lines.append(f"LJ001-{i:04d}|{raw}|{SENTENCES[i]}")
        expected[SENTENCES[i]] = tokens_for(*sf.read(root / "wavs" / f"LJ001-{i:04d}.wav", dtype="float32"))
    write_garbage(root / "wavs" / "LJ002-0000.wav")
    sf.write(root / "wavs" / "LJ002-0001.wav", np.zeros(32000, np.float32), 16000)
    long = np.concatenate([x if sr == 16000 else soxr.resample(x, sr, 16000) for x, sr in clips[:4]])
    sf.write(root / "wavs" / "LJ002-0002.wav", long, 16000)  # longer than --max_seconds=6
    lines += ["LJ002-0000|Corrupt.|Corrupt.", "LJ002-0001|Silent.|Silent.", "LJ002-0002|Too long.|Too long.",
              "LJ002-0003|Missing audio.|Missing audio."]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(long) / 16000 > 6
    bad = {"wavs/LJ002-0000.wav": "unreadable", "wavs/LJ002-0001.wav": "silent", "wavs/LJ002-0002.wav": "too long",
           "wavs/LJ002-0003.wav": "missing audio"}
    return root, expected, bad


def check_shards(data_dir, expected):
    """Every kept utterance is in train or val once, with 25 tokens per second of its audio."""
    meta = json.load(open(os.path.join(data_dir, "meta.json")))
    found = {}
    for split in ("train", "val"):
        shards = Shards(str(data_dir), split)
        assert len(shards) >= 1
        for i in range(len(shards)):
            text, audio, speaker = shards[i]
            assert text.decode() not in found
            found[text.decode()] = len(audio)
            assert ((audio >= 0) & (audio < 46656)).all() and -1 <= speaker < len(meta["speakers"])
    assert found == expected
    return meta


def assert_skips_reported(output, bad):
    for name, reason in bad.items():
        assert f"skip {name}: {reason}" in output, f"{name} ({reason}) not reported in:\n{output}"


def test_ljspeech(ljspeech, tmp_path):
    root, expected, bad = ljspeech
    proc = run("prepare.py", "--dataset=lj", f"--input={root}", f"--out_dir={tmp_path}/lj", "--max_seconds=6.0",
               *TINY_CODEC, cwd=tmp_path)
    assert_skips_reported(proc.stdout, bad)
    assert "kept 6 of 10 utterances; skipped 1 missing audio, 1 silent, 1 too long, 1 unreadable" in proc.stdout
    assert "Traceback" not in proc.stderr
    meta = check_shards(tmp_path / "lj", expected)
    assert meta["speakers"] == [root.name] and meta["source"]["format"] == "ljspeech"
    assert meta["skipped"] == {"missing audio": 1, "silent": 1, "too long": 1, "unreadable": 1}
    listed = (tmp_path / "lj" / "skipped.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(bad)
    assert not (tmp_path / "lj" / ".parts").exists()

    # train.py trains on the shards unchanged
    proc = run("train.py", os.path.join(ROOT, "config", "train_synthetic.py"), f"--data_dir={tmp_path}/lj",
               f"--out_dir={tmp_path}/out", "--max_iters=2", "--n_layer=1", "--n_head=2", "--n_embd=32",
               "--eval_iters=1", "--eval_interval=1", "--batch_size=2", "--log_interval=1", cwd=tmp_path)
    assert os.path.exists(tmp_path / "out" / "ckpt.pt"), proc.stdout


def test_libritts(clips, tmp_path):
    root = tmp_path / "LibriTTS_R" / "train-clean-100"
    expected, bad = {}, {}
    layout = [("1034", "121", "normalized.txt"), ("1034", "121", "original.txt"), ("1034", "122", "lab"),
              ("2416", "152", "normalized.txt"), ("2416", "152", "txt")]
    for i, (speaker, chapter, sidecar) in enumerate(layout):
        folder = root / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{speaker}_{chapter}_{i:06d}"
        x, sr = clips[i]
        sf.write(folder / f"{stem}.{'flac' if i == 2 else 'wav'}", x, sr)
        (folder / f"{stem}.{sidecar}").write_text(SENTENCES[i] + "\n")
        expected[SENTENCES[i]] = tokens_for(x, sr)
    # an original transcript next to a normalized one: the normalized one wins
    (root / "1034" / "121" / "1034_121_000000.original.txt").write_text("THE BIRCH CANOE...")
    sf.write(root / "2416" / "152" / "no_text.wav", clips[5][0], clips[5][1])
    bad["2416/152/no_text.wav"] = "no text"
    sf.write(root / "2416" / "152" / "empty.wav", np.zeros(0, np.float32), 16000)
    (root / "2416" / "152" / "empty.normalized.txt").write_text("Nothing here.")
    bad["2416/152/empty.wav"] = "empty audio"
    write_garbage(root / "2416" / "153" / "corrupt.wav")
    (root / "2416" / "153" / "corrupt.normalized.txt").write_text("Garbage.")
    bad["2416/153/corrupt.wav"] = "unreadable"

    # the LibriTTS_R root (one level up) finds the same speakers: two folders above each file
    proc = run("prepare.py", "--dataset=libri", f"--input={root.parent}", f"--out_dir={tmp_path}/libri",
               *TINY_CODEC, cwd=tmp_path)
    assert_skips_reported(proc.stdout, {f"train-clean-100/{k}": v for k, v in bad.items()})
    meta = check_shards(tmp_path / "libri", expected)
    assert meta["speakers"] == ["1034", "2416"] and meta["source"]["format"] == "libritts"
    speakers = [Shards(str(tmp_path / "libri"), s)[i][2] for s in ("train", "val")
                for i in range(len(Shards(str(tmp_path / "libri"), s)))]
    assert sorted(speakers) == [0, 0, 0, 1, 1]


def test_jsonl(clips, tmp_path):
    audio = tmp_path / "corpus" / "audio"
    audio.mkdir(parents=True)
    rows, expected = [], {}
    for i, ext in enumerate(["flac", "ogg", "wav", "wav"]):
        x, sr = clips[i]
        sf.write(audio / f"u{i}.{ext}", x, sr)
        rows.append(json.dumps({"audio": f"audio/u{i}.{ext}", "text": SENTENCES[i], "speaker": ["ann", "bob"][i % 2]}))
        expected[SENTENCES[i]] = tokens_for(*sf.read(audio / f"u{i}.{ext}", dtype="float32"))
    rows.append(json.dumps({"audio": "audio/u3.wav", "text": SENTENCES[5], "id": "second reading"}))  # no speaker
    expected[SENTENCES[5]] = expected[SENTENCES[3]]
    rows.append(json.dumps({"audio": "audio/gone.wav", "text": "Missing."}))
    rows.append("{not json")
    rows.append(json.dumps({"audio": "audio/u0.flac", "text": "Same id twice."}))
    rows.append(json.dumps({"audio": "audio/u1.ogg", "text": "x" * 2000, "id": "long text"}))
    manifest = tmp_path / "corpus" / "manifest.jsonl"
    # a transcript in Latin-1, not UTF-8: skipped and said, never trained on as replacement characters
    latin1 = b'{"audio": "audio/u2.wav", "text": "Caf\xe9.", "id": "l"}\n'
    manifest.write_bytes(("\n".join(rows) + "\n").encode() + latin1)
    proc = run("prepare.py", "--dataset=mine", f"--input={manifest}", f"--out_dir={tmp_path}/mine", *TINY_CODEC,
               cwd=tmp_path)
    assert_skips_reported(proc.stdout, {"audio/gone.wav": "missing audio", "manifest.jsonl:7": "bad manifest line",
                                        "audio/u0.flac": "duplicate id", "audio/u1.ogg": "text too long",
                                        "audio/u2.wav": "text not UTF-8"})
    meta = check_shards(tmp_path / "mine", expected)
    assert meta["speakers"] == ["ann", "bob"] and meta["source"]["format"] == "jsonl"
    assert sum(meta["skipped"].values()) == 5


def test_unavailable_codec_and_bad_input_are_one_line_errors(ljspeech, tmp_path):
    root = ljspeech[0]
    cases = [([f"--input={root}"], "Stable Codec unavailable"),  # no checkpoints/stable-codec/ in tmp_path
             ([f"--input={tmp_path}/nothing", *TINY_CODEC], "no such file or folder"),
             ([f"--input={root}/metadata.csv", *TINY_CODEC], "not a .jsonl manifest")]
    for args, needle in cases:
        proc = run("prepare.py", "--dataset=x", f"--out_dir={tmp_path}/x", *args, cwd=tmp_path, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], proc.stderr
    proc = run("prepare.py", "--max_sentences=2", "--multi_share=70", f"--out_dir={tmp_path}/s", cwd=tmp_path,
               check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: --multi_share=70.0 is a share"), proc.stderr


def test_killed_and_resumed_run_gives_identical_files(clips, tmp_path):
    """SIGKILL twice while chunks are being encoded, then finish: the same bytes as an uninterrupted run, which
    also used another chunk and batch size (neither may change the output)."""
    (tmp_path / "c").mkdir()
    rows = []
    for i, (x, sr) in enumerate(clips):
        sf.write(tmp_path / "c" / f"{i}.wav", x, sr)
    for n in range(30):
        rows.append(json.dumps({"audio": f"{n % len(clips)}.wav", "text": f"{SENTENCES[n % len(clips)]} ({n})",
                                "id": f"utt{n:02d}", "speaker": VOICES[n % len(clips) % len(VOICES)]}))
    rows.append(json.dumps({"audio": "missing.wav", "text": "Missing."}))
    manifest = tmp_path / "c" / "manifest.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    common = ["--dataset=resume", f"--input={manifest}", *TINY_CODEC]
    run("prepare.py", *common, f"--out_dir={tmp_path}/whole", "--batch_size=8", cwd=tmp_path)

    out, parts = tmp_path / "killed", tmp_path / "killed" / ".parts"

    def parts_done():  # a finished run removes .parts: then 30, which the kill check below reports
        try:
            return len([f for f in os.listdir(parts) if f.endswith(".npz")])
        except FileNotFoundError:
            return 30 if (out / "meta.json").exists() else 0

    # one utterance a chunk: 30 chunks leave a slow or loaded machine time to kill the run part-way
    cmd = [sys.executable, os.path.join(ROOT, "prepare.py"), *common, f"--out_dir={out}", "--chunk_size=1",
           "--batch_size=1"]
    for kill_after in (3, 8):
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and parts_done() < kill_after:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "prepare.py finished before it could be killed"
        done = parts_done()
        assert kill_after <= done < 30
    (parts / "00029.npz.tmp99999").write_bytes(b"half a part file")  # what a kill during a write leaves
    proc = run("prepare.py", *common, f"--out_dir={out}", "--chunk_size=1", "--batch_size=3", cwd=tmp_path)
    assert f"resuming: {done} of 30 chunks already done" in proc.stdout

    files = sorted(os.listdir(tmp_path / "whole"))
    assert files == sorted(os.listdir(out)) and "meta.json" in files and "train.audio.bin" in files
    for f in files:
        assert (tmp_path / "whole" / f).read_bytes() == (out / f).read_bytes(), f"{f} differs"
    assert len(Shards(str(out), "train")) + len(Shards(str(out), "val")) == 30
