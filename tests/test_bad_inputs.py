"""
Bad inputs of every kind, one case (at least) per cause: each gets one line on stderr that starts with the words a
user needs, a non-zero exit, no traceback, and nothing written where the run would have written. Add a case here
for every new way a user can get it wrong.
"""

import os

import numpy as np
import pytest
import soundfile
import torch

from conftest import ROOT, TINY, run_many

pytestmark = pytest.mark.slow  # the whole file: see pytest.ini

CONFIG = os.path.join(ROOT, "config", "train_synthetic.py")


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    """The inputs the cases use, made once: (working folder with a trained model, folder of bad files)."""
    work, out_dir = trained
    bad = tmp_path_factory.mktemp("bad")
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)
    torch.save({**ckpt, "model_args": {**ckpt["model_args"], "n_experts": 4}}, bad / "unknown_arg.pt")
    torch.save({**ckpt, "model_args": {**ckpt["model_args"], "n_layer": 3}}, bad / "wrong_weights.pt")
    os.makedirs(bad / "wrong_run")
    torch.save({**ckpt, "model_args": {**ckpt["model_args"], "n_layer": 3}}, bad / "wrong_run" / "ckpt.pt")
    # a model that ends every utterance at once: the blocks add nothing, and end-of-audio is by far the likeliest
    # token after SOA (the residual stream is then SOA's own embedding)
    mute = {k: v.clone() for k, v in ckpt["model"].items()}
    for k in mute:
        if k.endswith(("proj.weight", "down.weight")):
            mute[k].zero_()
    h = torch.nn.functional.rms_norm(mute["wte.weight"][46912], (mute["wte.weight"].shape[1],)) * mute["norm.weight"]
    mute["coarse_head.weight"][-1] = 100 * h / h.norm()
    os.makedirs(bad / "mute", exist_ok=True)
    torch.save({**ckpt, "model": mute}, bad / "mute" / "ckpt.pt")
    np.savez(bad / "voice.npz", ids=np.arange(20))
    np.save(bad / "two.npy", np.arange(40).reshape(2, 20))  # two recordings' ids, not one
    soundfile.write(bad / "silent.wav", np.zeros(32000, np.float32), 16000)
    (bad / "a_file").write_text("not a folder\n")
    return work, out_dir, bad


def cases(work, out_dir, bad):
    """(args, the words stderr must start with, paths the run must not create)."""
    data = f"--data_dir={work}/data/synthetic"
    long_text = "--text=" + "Call me tomorrow. Go there now. " * 40
    return [
        # settings checked where they are defined (GPTConfig, Sampling, train.py's loop), before any work
        (("train.py", CONFIG, "--gradient_accumulation_steps=0", "--out_dir=o1"),
         "error: --gradient_accumulation_steps=0 is out of range", ["o1"]),
        (("train.py", CONFIG, "--batch_size=0", "--out_dir=o2"), "error: --batch_size=0 is out of range", ["o2"]),
        (("train.py", CONFIG, "--eval_interval=0", "--out_dir=o3"), "error: --eval_interval=0 is out of range", ["o3"]),
        (("train.py", CONFIG, "--n_head=3", "--out_dir=o4"), "error: n_embd (128) must be a multiple of n_head (3)",
         ["o4"]),
        (("train.py", CONFIG, "--dropout=1.5", "--out_dir=o5"), "error: dropout must be in [0, 1)", ["o5"]),
        (("train.py", CONFIG, "--lr_decay_iters=0", "--out_dir=o6"),
         "error: --lr_decay_iters=0 is out of range: use >= warmup_iters (30)", ["o6"]),
        (("train.py", CONFIG, "--out_dir="), "error: --out_dir is empty", []),
        (("eval.py", f"--out_dir={out_dir}", "--temperature=-1"), "error: --temperature=-1.0 is out of range", []),
        (("eval.py", f"--out_dir={out_dir}", "--batch_size=0"), "error: --batch_size=0: use 1 or more", []),
        (("eval.py", f"--out_dir={out_dir}", "--max_seconds=0"), "error: --max_seconds=0.0 is out of range", []),
        (("eval.py", f"--out_dir={out_dir}", "--seed=-5"), "error: seed -5 (text 0's) is out of range", []),
        (("eval.py", f"--out_dir={out_dir}", "--long_chars=-5"), "error: --long_chars=-5 --long_n=8: use", []),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--quantize=int3", "--output_dir=q1"),
         "error: --quantize='int3' is not a quantisation: use '' (off), 'int8' or 'int4'", ["q1"]),
        (("eval.py", f"--out_dir={out_dir}", "--quantize=fp8"), "error: --quantize='fp8' is not a quantisation", []),
        (("bench.py", "--quantize=INT8"), "error: --quantize='INT8' is not a quantisation", []),
        (("bench.py", "--threads=-2"), "error: --threads=-2 is out of range: use >= 0", []),
        (("bench.py", "--mode=train", "--runs=0"), "error: --runs=0 is out of range: use >= 1", []),
        (("bench.py", "--mode=train", f"--nanogpt={bad}"), f"error: --nanogpt={bad} has no model.py", []),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--top_p=2", "--output_dir=s1"),
         "error: --top_p=2.0 is out of range", ["s1"]),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--seed=-1", "--output_dir=s10"),
         "error: seed -1 (text 0's) is out of range: --seed is an integer from 0 to 9223372036854775807", ["s10"]),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", f"--seed={2 ** 64}", "--output_dir=s11"),
         f"error: seed {2 ** 64} (text 0's) is out of range", ["s11"]),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--batch_size=-2", "--output_dir=s12"),
         "error: --batch_size=-2: sample at least 1 text at a time", ["s12"]),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--stream_to=-", "--output_dir=s13"),
         "error: --stream_to=- needs --stream=True", ["s13"]),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--stream=True", "--stream_to=none/x.wav",
          "--output_dir=s14"), "error: --stream_to=none/x.wav: its folder does not exist", ["s14"]),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--stream=True", "--stream_to=x.wav", "--output_dir=s16"),
         "error: --stream_to=x.wav: a synthetic-corpus model streams what the recogniser hears", ["s16", "x.wav"]),
        # output paths
        (("train.py", CONFIG, f"--out_dir={bad}/a_file"), f"error: --out_dir={bad}/a_file is a file", []),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", f"--output_dir={bad}/a_file"),
         f"error: --output_dir={bad}/a_file is a file", []),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--output_dir="), "error: --output_dir is empty", []),
        # checkpoints that do not fit
        (("train.py", CONFIG, *TINY, "--n_layer=3", "--init_from=resume", f"--out_dir={out_dir}", data),
         "error: --n_layer=3 differs from 2", []),
        (("sample.py", f"--ckpt={bad}/unknown_arg.pt", "--text=hi", "--output_dir=s2"),
         f"error: {bad}/unknown_arg.pt has model settings this model.py does not know (n_experts)", ["s2"]),
        (("eval.py", f"--ckpt={bad}/wrong_weights.pt"), f"error: {bad}/wrong_weights.pt does not match the model", []),
        (("train.py", "--init_from=resume", f"--out_dir={bad}/wrong_run", data, "--device=cpu", "--dtype=float32",
          "--compile=False"), f"error: {bad}/wrong_run/ckpt.pt does not match its own model settings", []),
        # the machine
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--device=cuda", "--output_dir=s3"),
         "error: device is cuda but no GPU is visible", ["s3"]),
        (("eval.py", f"--out_dir={out_dir}", "--device=cuda"), "error: device is cuda but no GPU is visible", []),
        # voice prompts
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", f"--prompt_tokens={bad}/voice.npz", "--prompt_text=x",
          "--output_dir=s4"), f"error: --prompt_tokens {bad}/voice.npz is not a .npy array", ["s4"]),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", f"--prompt_tokens={bad}/two.npy", "--prompt_text=x",
          "--output_dir=s15"), f"error: --prompt_tokens {bad}/two.npy holds an array of shape (2, 20)", ["s15"]),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", f"--prompt_audio={bad}/silent.wav", "--prompt_text=x",
          "--output_dir=s5"), f"error: --prompt_audio {bad}/silent.wav is silent", ["s5"]),
        # audio asked for and no codec: said before sampling
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--audio=yes", f"--codec_config={bad}/none.json",
          "--output_dir=s6"), "error: Stable Codec unavailable", ["s6"]),
        # speech that goes missing is said, never written as if it were there
        (("sample.py", f"--out_dir={bad}/mute", "--text=Call me tomorrow.", "--output_dir=s7"),
         "error: text 1 ended after 0 frames for 17 bytes: the model said nothing", ["s7"]),
        (("sample.py", f"--out_dir={bad}/mute", long_text, "--output_dir=s8"), "error: text 1, chunk 1 of", ["s8"]),
        (("sample.py", f"--out_dir={bad}/mute", "--text=Call me tomorrow.", "--stream=True", "--output_dir=s9"),
         "error: text 1 ended after 0 frames for 17 bytes: the model said nothing:", ["s9"]),
        (("eval.py", f"--out_dir={bad}/mute", "--n=2", "--long_chars=300", "--long_n=1", data),
         "error: --long_chars: text 1, chunk 1 of", []),
    ]


def test_each_bad_input_is_one_line_before_any_work(files, tmp_path):
    work, out_dir, bad = files
    failures, todo = [], cases(work, out_dir, bad)
    for (args, start, created), proc in zip(todo, run_many([args for args, _, _ in todo], tmp_path)):
        lines = proc.stderr.strip().splitlines()
        ok = (proc.returncode != 0 and "Traceback" not in proc.stderr and len(lines) == 1
              and lines[0].startswith(start) and not any(os.path.exists(tmp_path / p) for p in created))
        if not ok:
            failures.append(f"{' '.join(args)}\n  exit {proc.returncode}, stderr: {proc.stderr.strip()[-400:]!r}")
    assert not failures, "\n".join(failures)
