"""train.py: the loss falls (bucketed and packed), a resumed run continues the same curve, and DDP (gloo, 2 processes)
writes once."""

import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, read_log, run

pytestmark = pytest.mark.slow  # the whole file: see pytest.ini

CONFIG = os.path.join(ROOT, "config", "train_synthetic.py")


def losses(out_dir):
    return {r["iter"]: r["loss"] for r in read_log(out_dir) if "loss" in r}


def test_loss_falls(trained):
    _, out_dir = trained
    curve = losses(out_dir)
    assert curve[1] > 10.0  # about ln(217 * 216) = ln(46656) at the start
    assert curve[40] < curve[1] - 3.0
    assert os.path.exists(os.path.join(out_dir, "ckpt.pt"))
    assert not [f for f in os.listdir(out_dir) if ".tmp" in f]


def test_packed_run_loss_falls(corpus):
    """Rows packed with whole utterances (and activation checkpointing on): little padding, and it learns."""
    proc = run("train.py", CONFIG, *TINY, "--packing=True", "--activation_checkpointing=True", "--max_iters=12",
               "--eval_interval=12", "--out_dir=packed", cwd=corpus)
    assert "each iteration: 8 rows of 192 tokens" in proc.stdout
    assert float(re.search(r"padding: ([\d.]+)% of the positions in a batch \(packed\)", proc.stdout)[1]) < 5.0
    curve = losses(os.path.join(corpus, "packed"))
    assert curve[1] > 10.0 and curve[12] < curve[1] - 3.0


def test_killed_run_resumes_on_the_same_curve(corpus):
    common = [CONFIG, *TINY, "--eval_interval=5", "--dropout=0.1", "--max_iters=16"]
    run("train.py", *common, "--out_dir=straight", cwd=corpus)
    # the same run, killed (SIGKILL, no chance to clean up) once iteration 7 is logged: its last checkpoint is 5
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *common, "--out_dir=killed"],
                            cwd=corpus, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("iter 7:"):
            proc.kill()
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run("train.py", *common, "--out_dir=killed", "--init_from=resume", cwd=corpus)
    log = [r for r in read_log(os.path.join(corpus, "killed")) if "loss" in r]
    assert [r["iter"] for r in log].count(6) == 2  # iterations after the checkpoint really ran twice
    straight, resumed = losses(os.path.join(corpus, "straight")), losses(os.path.join(corpus, "killed"))
    assert straight == resumed  # later log lines win: the resumed curve is the uninterrupted one, bit for bit


def test_ddp_two_processes_only_rank0_writes(corpus):
    proc = run("torchrun --standalone --nproc_per_node=2", os.path.join(ROOT, "train.py"), CONFIG, *TINY,
               "--device=cpu", "--max_iters=4", "--eval_interval=2", "--gradient_accumulation_steps=2",
               "--out_dir=ddp", cwd=corpus)
    out = proc.stdout
    assert out.count("iter 4: loss") == 1 and out.count("each iteration: 16 utterances (1 micro-steps x 2 processes x 8)") == 1
    assert sorted(os.listdir(os.path.join(corpus, "ddp"))) == ["ckpt.pt", "log.jsonl"]
    assert len([r for r in read_log(os.path.join(corpus, "ddp")) if "loss" in r]) == 4


def test_real_speech_run_logs_a_spoken_sample(tmp_path):
    """At each evaluation a real-speech run writes a sample .wav and its spectrogram (here via the test codec)."""
    import importlib.util

    import numpy as np

    from data import write_meta, write_split

    if importlib.util.find_spec("stable_codec") is None or importlib.util.find_spec("matplotlib") is None:
        pytest.skip("needs the codec and matplotlib: bash setup.sh")
    rng = np.random.default_rng(0)
    utterances = [(b"hello there", rng.integers(0, 46656, 30), 0) for _ in range(20)]
    splits = {"train": write_split(tmp_path / "speech", "train", utterances),
              "val": write_split(tmp_path / "speech", "val", utterances[:2])}
    write_meta(tmp_path / "speech", {"dataset": "speech", "speakers": ["a"], "splits": splits})
    fixture = os.path.join(ROOT, "tests", "fixtures", "tiny_stable_codec_config.json")
    run("train.py", CONFIG, *TINY, "--data_dir=speech", "--max_iters=2", "--eval_interval=2", "--out_dir=out",
        f"--codec_config={fixture}", "--codec_ckpt=", cwd=tmp_path)
    samples = sorted(os.listdir(tmp_path / "out" / "samples"))
    assert samples == ["0000002.npy", "0000002.png", "0000002.wav"]
