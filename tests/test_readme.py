"""Run the commands of README.md (and docs/real-speech.md) as a reader would, so that the page cannot go stale; the
example commands in the scripts' docstrings too (SCRIPTS: their lines that start with python or torchrun).

Every line of a ```sh block is a command (lines that are only a comment are prose; a trailing backslash joins the
next line). A command that cannot run on a CPU-only machine without the codec weights and the internet ends with a
comment that starts with one of these markers, which tell a reader why as well:

    # on a GPU                  needs CUDA (nccl, bf16, flash-attn, a real-speech recipe)
    # needs the codec weights   needs checkpoints/stable-codec/ (gated; see docs/real-speech.md)
    # downloads                 fetches something from the internet
    # set-up: run by hand       installs or activates the environment, or runs this test suite itself
    # runs until stopped        a server (serve.py): tests/test_serve.py starts it and plays its clients
    # talks to the server       a client of that server (curl, aplay): tests/test_serve.py sends the same requests

A marker may go on after a colon or a space ("# on a GPU: DDP on 8 GPUs"). Every other command is run, in page
order (later commands use what earlier ones made), in a temporary folder of symlinks to the repo's files, so data/,
out-*/ and samples/ are written there and not in the checkout. Each must exit 0. Flags that make a command short are
appended to it (the configurator lets a later --key=value win): SHORTEN below, per script. `python` is this
interpreter and `torchrun` is `python -m torch.distributed.run`. `&&` chains are split; anything else the test cannot
run (another program, a pipe, a redirection) fails the test unless it is marked, so markers cannot rot: the lines
skipped are exactly the marked ones. Input files a reader would bring (lines.txt) are written first.

A command that stands word for word on an earlier line (the README's main job, again in train.py's docstring) runs
once.
"""

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", "docs/real-speech.md"]
SCRIPTS = ["train.py", "sample.py", "eval.py", "bench.py", "prepare.py", "export.py", "serve.py"]
MARKERS = ("on a GPU", "needs the codec weights", "downloads", "set-up: run by hand", "runs until stopped",
           "talks to the server")
# appended to each command of a script; tiny shapes where a command would time a 112M model on a CPU
SHORTEN = {
    "prepare.py": ["--n_train=300", "--n_val=20"],  # synthetic only (others need the codec: marked)
    "train.py": ["--max_iters=10", "--eval_interval=5", "--eval_iters=2", "--log_interval=5"],
    "eval.py": ["--n=4", "--long_n=1", "--max_seconds=2"],  # max_seconds: a barely trained model rarely stops
    "sample.py": ["--max_seconds=2"],
    "export.py": [],
    "serve.py": [],  # its commands serve until stopped: marked, and run by tests/test_serve.py instead
    "bench.py": ["--runs=1", "--warmup=0", "--prompt_len=8", "--new_tokens=8", "--threads=1", "--bandwidth_mb=32",
                 "--n_layer=1", "--n_head=2", "--n_kv_head=2", "--n_embd=64", "--block_size=64",
                 "--clients=2", "--requests_per_client=2", "--max_seconds=2"],  # --mode=serve: 4 short requests
}
INPUTS = {"lines.txt": "Call me tomorrow.\nThe rain stopped before noon.\n"}
KEEP_OUT = {".git", ".venv", "data", "samples", "__pycache__", ".pytest_cache"}  # made by runs, or not the repo's


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str  # the command without its comment
    marker: str  # "" = unmarked: must run here

    def __str__(self):
        return f"{self.page}:{self.line}: {self.text}"


class Unrunnable(Exception):
    pass


def split_comment(line):
    """(command, comment) of a shell line: a '#' outside quotes, at the start or after a blank, starts the comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def marker_of(comment):
    for m in MARKERS:
        if re.match(re.escape(m) + r"($|[:\s])", comment):
            return m
    return ""


def collect(page):
    """The commands of a page's ```sh blocks, in order."""
    commands, block, pending = [], False, None
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            stripped = raw.strip()
            if stripped.startswith("```"):
                block = stripped == "```sh"
                continue
            if not block:
                continue
            if pending:  # a continued line
                start, text = pending
                stripped, pending = text + " " + stripped, None
                number = start
            if stripped.endswith("\\"):
                pending = (number, stripped[:-1].rstrip())
                continue
            text, comment = split_comment(stripped)
            if text:
                commands.append(Command(page, number, text, marker_of(comment)))
    return commands


def collect_docstring(script):
    """The example commands of a script's module docstring: its lines that start with python or torchrun."""
    with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        node = ast.parse(f.read()).body[0]
    commands = []
    for number, line in enumerate(node.value.value.splitlines(), node.lineno):
        if line.strip().startswith(("python ", "torchrun ")):
            text, comment = split_comment(line.strip())
            commands.append(Command(script, number, text, marker_of(comment)))
    return commands


COMMANDS = [c for page in PAGES for c in collect(page)] + [c for s in SCRIPTS for c in collect_docstring(s)]
TO_RUN = []
for _c in COMMANDS:
    if not _c.marker and _c.text not in {d.text for d in TO_RUN}:
        TO_RUN.append(_c)


def argvs(command):
    """The argument vectors a command runs, shortened; Unrunnable if this test cannot run it."""
    try:
        words = shlex.split(command.text)
    except ValueError as e:
        raise Unrunnable(f"cannot parse: {e}")
    parts, part = [], []
    for w in words + ["&&"]:
        if w == "&&":
            parts.append(part)
            part = []
        elif w in ("|", "||", ";", "&", ">", ">>", "<") or w.startswith((">", "<", "|")):
            raise Unrunnable(f"'{w}' (only python and torchrun commands joined by && are run)")
        else:
            part.append(w)
    result = []
    for words in parts:
        if not words:
            raise Unrunnable("an empty command")
        if words[0] == "python":
            argv = [sys.executable, *words[1:]]
        elif words[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *words[1:]]
        else:
            raise Unrunnable(f"'{words[0]}' (only python and torchrun commands are run)")
        script = next((w for w in words[1:] if w.endswith(".py")), "")
        if os.path.basename(script) not in SHORTEN:
            raise Unrunnable(f"no shortening flags for '{script or words[1]}'")
        shorten = SHORTEN[os.path.basename(script)]
        if "--help" in words or (script == "prepare.py" and any(
                w.startswith("--dataset=") and w != "--dataset=synthetic" for w in words)):
            shorten = []
        result.append(argv + shorten)
    return result


def test_unmarked_commands_can_run_here():
    """The lines the test skips are exactly the marked ones: an unmarked command it cannot run is an error."""
    assert COMMANDS, "no ```sh commands found"
    cannot = []
    for c in TO_RUN:
        try:
            argvs(c)
        except Unrunnable as e:
            cannot.append(f"{c}  -- {e}; mark it with one of: {', '.join('# ' + m for m in MARKERS)}")
    assert not cannot, "\n".join(cannot)
    skipped = {c for c in COMMANDS if c not in TO_RUN}
    run_before = {c for c in COMMANDS if not c.marker and c not in TO_RUN}
    assert skipped == {c for c in COMMANDS if c.marker} | run_before
    assert all(any(d.text == c.text and d != c for d in TO_RUN) for c in run_before)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A fresh folder that looks like the checkout (symlinks) but keeps what the commands write."""
    work = tmp_path_factory.mktemp("readme")
    for name in os.listdir(ROOT):
        if name in KEEP_OUT or name.startswith(("out", "eval_")):
            continue
        os.symlink(os.path.join(ROOT, name), work / name)
    for name, text in INPUTS.items():
        (work / name).write_text(text, encoding="utf-8")
    return work


@pytest.mark.slow
@pytest.mark.parametrize("command", TO_RUN, ids=[f"{c.page}:{c.line}" for c in TO_RUN])
def test_command(command, folder):
    try:
        runs = argvs(command)
    except Unrunnable as e:
        pytest.fail(f"{command}: {e}")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for argv in runs:
        proc = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=300, env=env)
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            errors = [line for line in lines[:-15] if line.startswith("error")]  # e.g. a torchrun worker's one line
            pytest.fail(f"{command}\nran: {shlex.join(argv[1:])}\nexit {proc.returncode}:\n"
                        + "\n".join(errors[:3] + lines[-15:]))
