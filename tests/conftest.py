"""Shared fixtures: a tiny synthetic corpus and a tiny trained run, made once per test session."""

import concurrent.futures
import json
import os
import subprocess
import sys

import pytest
import torch

# The tests in this process run tiny models: one thread is as fast, gives the same float order on every machine (the
# pinned outputs), and spares OpenMP's spin-waits on a core shared with other work (seconds a test). The scripts the
# tests start keep their own default; OMP_NUM_THREADS, when set, decides for both.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=192", "--batch_size=8", "--eval_iters=2",
        "--log_interval=1", "--warmup_iters=5", "--lr_decay_iters=40", "--learning_rate=1e-2"]


def run(script, *args, cwd, check=True, env=None):
    """Run one of the repo's scripts as a user would; returns the CompletedProcess."""
    if script.endswith(".py"):
        cmd = [sys.executable, os.path.join(ROOT, script), *args]
    else:  # "torchrun ...": the venv's own, whether or not the venv is activated
        cmd = [sys.executable, "-m", "torch.distributed.run", *script.split()[1:], *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_many(commands, cwd):
    """run() each command ((script, *args)) two at a time, check=False: a command that fails at once spends most of
    its time importing torch, on one core. -> the CompletedProcesses, in order."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda command: run(*command, cwd=cwd, check=False), commands))


def one_line_error(proc, *needles):
    """A user's mistake: a non-zero exit and one stderr line, "error: ...", holding each needle; no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small synthetic corpus in data/synthetic of a fresh working folder."""
    work = tmp_path_factory.mktemp("work")
    run("prepare.py", "--dataset=synthetic", "--n_train=600", "--n_val=40", cwd=work)
    return work


@pytest.fixture(scope="session")
def trained(corpus):
    """A tiny model trained for 40 iterations on the small corpus; returns (working folder, out_dir)."""
    run("train.py", "config/train_synthetic.py".replace("config", os.path.join(ROOT, "config")), *TINY,
        "--max_iters=40", "--eval_interval=20", "--out_dir=out-tiny", cwd=corpus)
    return corpus, os.path.join(corpus, "out-tiny")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With DIRT_NO_SKIP=1 (CI sets it) a skipped test fails: CI must run every test, not quietly skip one."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("DIRT_NO_SKIP") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under DIRT_NO_SKIP=1: {report.longrepr}"
