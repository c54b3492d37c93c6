"""The command lines a user types: sample.py, eval.py, prepare.py and the one-line errors for bad input."""

import csv
import json
import os

import numpy as np
import pytest

from conftest import ROOT, one_line_error, run, run_many

pytestmark = pytest.mark.slow  # the whole file: see pytest.ini

CONFIG = os.path.join(ROOT, "config", "train_synthetic.py")


def test_sample_writes_tokens_for_any_utf8(trained, tmp_path):
    work, out_dir = trained
    lines = tmp_path / "lines.txt"
    lines.write_text("Call me tomorrow.\n\nআমি বাংলায় কথা বলি।\nShort.\n", encoding="utf-8")
    proc = run("sample.py", f"--out_dir={out_dir}", f"--text_file={lines}", f"--output_dir={tmp_path}/s",
               "--max_seconds=2", "--seed=1", cwd=work)
    outputs = sorted(os.listdir(tmp_path / "s"))
    assert outputs == ["000.npy", "001.npy", "002.npy"]  # the empty line is skipped
    for name in outputs:
        tokens = np.load(tmp_path / "s" / name)
        assert tokens.dtype == np.int64 and len(tokens) > 0 and ((tokens >= 0) & (tokens < 46656)).all()
    assert "synthetic recogniser hears" in proc.stdout and "tokens/s" in proc.stdout
    again = run("sample.py", f"--out_dir={out_dir}", f"--text_file={lines}", f"--output_dir={tmp_path}/t",
                "--max_seconds=2", "--seed=1", cwd=work)
    def heard(p):
        return [line.split(": ", 1)[1] for line in p.stdout.splitlines() if "recogniser hears" in line]

    assert heard(again) == heard(proc) and len(heard(proc)) == 3  # same seed, same output
    assert np.array_equal(np.load(tmp_path / "s" / "000.npy"), np.load(tmp_path / "t" / "000.npy"))


def test_eval_prints_json_last(trained):
    work, out_dir = trained
    proc = run("eval.py", f"--out_dir={out_dir}", "--n=6", "--max_seconds=3", "--csv=scores/six.csv", cwd=work)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == 6 and 0 <= result["speaker_consistency"] <= 1 and result["cer"] >= 0
    assert result["tokens_per_s"] > 0 and result["iter_num"] == 40
    with open(os.path.join(work, "scores", "six.csv")) as f:  # --csv: one row per utterance, what was heard
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(0 <= float(r["cer"]) and r["text"] and int(r["frames"]) >= 0 for r in rows)
    assert [r["speaker_heard"] == r["speaker"] for r in rows].count(True) == round(6 * result["speaker_match"])
    proc = run("eval.py", f"--out_dir={out_dir}", "--n=4", "--max_seconds=2", "--prompted=True", "--long_chars=150",
               "--long_n=3", "--cfg_scale=2.0", cwd=work, check=False)
    if proc.returncode == 0:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert 0 <= result["speaker_acc"] <= 1 and result["long_n"] == 3 and result["long_cer"] >= 0
        assert 0 <= result["long_one_voice"] <= 1 and result["long_speaker_consistency"] <= result["long_one_voice"]
    else:  # this barely trained model has never heard speech continue: a long text's lost chunk is said, loudly
        one_line_error(proc, "--long_chars: text", "ended after")


def test_eval_continued_scores_second_sentences(trained, tmp_path):
    """--continued: each second sentence after its true first one, and alone; a corpus without any is an error."""
    work, out_dir = trained
    run("prepare.py", "--dataset=synthetic", "--max_sentences=2", "--n_train=20", "--n_val=30",
        f"--out_dir={tmp_path}/two", cwd=work)
    proc = run("eval.py", f"--out_dir={out_dir}", f"--data_dir={tmp_path}/two", "--n=5", "--max_seconds=3",
               "--continued=True", cwd=work)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["continued_n"] == 5
    for name in ("continued", "alone"):
        assert 0 <= result[f"{name}_wrong"] <= 1 and result[f"{name}_cer"] >= 0
        assert (result[f"{name}_wrong"] == 0) == (result[f"{name}_cer"] == 0)
    one_line_error(run("eval.py", f"--out_dir={out_dir}", "--continued=True", check=False, cwd=work),
                   "no two-sentence utterances", "--max_sentences=2")


def test_bad_input_gets_one_line_errors(trained, tmp_path):
    work, out_dir = trained
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")  # latin-1, not UTF-8
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(os.path.join(out_dir, "ckpt.pt"), "rb").read()[:5000])
    cases = [
        (("sample.py", f"--out_dir={out_dir}", "--text="), ("no text",)),
        (("sample.py", f"--out_dir={out_dir}", "--text=   "), ("no text",)),
        (("sample.py", f"--out_dir={out_dir}", f"--text_file={bad}"), ("not valid UTF-8", "byte 3")),
        (("sample.py", f"--out_dir={out_dir}", f"--text_file={tmp_path}/missing.txt"), ("cannot read",)),
        (("sample.py", f"--out_dir={tmp_path}/nowhere", "--text=hi"), ("no checkpoint",)),
        (("sample.py", f"--ckpt={truncated}", "--text=hi"), ("truncated or corrupt",)),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--temperature=-1"), ("temperature",)),
        (("eval.py", f"--ckpt={truncated}"), ("truncated or corrupt",)),
        (("train.py", CONFIG, "--n_layers=3"), ("unknown config key 'n_layers'", "did you mean 'n_layer'")),
        (("train.py", CONFIG, "--max_iters=ten"), ("--max_iters expects a int",)),
        (("train.py", CONFIG, "--init_from=resume", f"--out_dir={tmp_path}/none"), ("no checkpoint",)),
        (("train.py", CONFIG, f"--data_dir={tmp_path}/none"), ("run prepare.py first",)),
        (("train.py", CONFIG, "--mark_borders=True"), ("mark_borders=True needs anchor_continuations=True",)),
        (("prepare.py", "--dataset=librispeech"), ("unknown dataset",)),
    ]
    for (args, needles), proc in zip(cases, run_many([args for args, _ in cases], work)):
        one_line_error(proc, *needles)


@pytest.mark.parametrize("args,message", [
    (["config/none.py"], "cannot read config file"),
    (["--batch_size=1.5"], "--batch_size expects a int"),
    (["--compile=1"], "--compile expects a bool"),
    (["batch_size=3"], "expected --key=value"),
])
def test_configurator_errors(tmp_path, args, message):
    one_line_error(run("train.py", *args, cwd=tmp_path, check=False), message)


def test_configurator_file_typo_and_values(tmp_path):
    (tmp_path / "typo.py").write_text("import math\nlearning_rat = 1e-3\n")
    one_line_error(run("train.py", str(tmp_path / "typo.py"), cwd=tmp_path, check=False),
                   "sets unknown key 'learning_rat'", "did you mean 'learning_rate'")
    # ints are accepted for floats, strings need no quotes; the run then fails later for want of data
    proc = run("train.py", "--learning_rate=1", "--device=cpu", "--data_dir=nowhere", cwd=tmp_path, check=False)
    assert "Overriding: learning_rate = 1.0" in proc.stdout and "Overriding: device = 'cpu'" in proc.stdout
