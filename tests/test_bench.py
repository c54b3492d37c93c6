"""bench.py: each mode runs on a tiny model and ends with one JSON line; the roofline's byte count is a hand count."""

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import ROOT, run

from bench import decode_bytes
from model import GPT, GPTConfig

# one thread: on a small shared CI machine a second OpenMP thread can make tiny steps 10x slower, not faster
FAST = ["--threads=1", "--runs=2", "--prompt_len=8", "--new_tokens=8", "--bandwidth_mb=32"]


def last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_decode_bytes_is_the_hand_count():
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_kv_head=1, n_embd=8, qk_norm=True))
    # by hand: SwiGLU hidden = 8 * 8/3 rounded up to 64; head_dim 4; q, k, v = 2 + 1 + 1 heads of 4
    layer = 8 + 8 * 16 + 8 * 8 + 4 + 4 + 8 + 8 * 2 * 64 + 64 * 8  # norm, qkv, proj, q/k norms, norm, gate_up, down
    head = 8 + 217 * 8 + 8 + 216 * 8  # final norm, coarse head (+ EOA), fine norm, fine head
    rows = 4 * 8  # per sequence: wte, coarse_embed, fine_embed rows of the input token + coarse_embed of the head
    kv = 2 * 1 * 10 * 1 * 4  # keys and values, 1 layer, 10 positions, 1 KV head of 4
    assert decode_bytes(model, 3, 10, 4) == (layer + head + 3 * rows + 3 * kv) * 4
    assert decode_bytes(model, 3, 10, 2) == (layer + head + 3 * rows + 3 * kv) * 2
    # the 46976-row input table is never read whole: it is most of the parameters, not of the bytes
    assert decode_bytes(model, 1, 10, 4) < model.wte.weight.numel() * 4 / 20


@pytest.mark.slow
def test_sample_mode_takes_a_config_files_shape_and_ends_with_json(tmp_path):
    config = tmp_path / "recipe.py"
    config.write_text("out_dir = 'x'\nlearning_rate = 1e-3\nbatch_size = 32\ncompile = True\n"
                      "n_layer = 2\nn_head = 2\nn_kv_head = 1\nn_embd = 32\nblock_size = 64\n")
    proc = run("bench.py", str(config), "--batch_size=3", *FAST, cwd=tmp_path)
    r = last_json(proc)
    assert r["mode"] == "sample" and r["dtype"] == "float32" and r["compile"] is False  # training settings ignored
    assert (r["config"]["n_layer"], r["config"]["n_kv_head"], r["config"]["block_size"]) == (2, 1, 64)
    assert r["batch_sizes"] == [1, 3] and r["batch_size"] == 1 and r["batch_n"]["batch_size"] == 3
    for fig in (r, r["batch_n"]):
        assert fig["tokens_per_s"] > 0 and fig["step_ms"] > 0 and fig["prefill_ms"] > 0
        assert fig["ttfa_ms"] > fig["prefill_ms"]
        assert fig["rtf"] == pytest.approx(fig["tokens_per_s"] / 25)
        assert fig["tokens_per_s"] == pytest.approx(fig["batch_size"] * 1000 / fig["step_ms"])
        assert 0 < fig["roofline_fraction"] < 1  # a tiny model is all overhead, nowhere near the bandwidth limit
        assert fig["roofline_ms"] == pytest.approx(fig["bytes_per_step"] / r["bandwidth_GBps"] / 1e6)
    kernels = r["bandwidth_by_kernel_GBps"]  # the roofline's: the faster matrix-vector product, named
    assert set(kernels) == {"sum", "copy", "gemv", "gemv_compiled"} and r["bandwidth_kernel"].startswith("gemv")
    assert r["bandwidth_GBps"] == kernels[r["bandwidth_kernel"]] == max(kernels["gemv"], kernels["gemv_compiled"]) > 0
    # batch 1 side by side: eager fp32, int8, int4 (and transformers' generate where it is installed)
    rows = r["rows"]
    assert {"float32 eager", "int8 eager", "int4 eager"} <= set(rows) and r["name"] == "float32 eager"
    assert rows["int4 eager"]["bytes_per_step"] < rows["int8 eager"]["bytes_per_step"] < r["bytes_per_step"]
    assert all(row["tokens_per_s"] > 0 and row["batch_size"] == 1 for row in rows.values())
    assert ("hf generate" in rows) == ("no peer row" not in proc.stdout)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_kv_head=1, n_embd=32, block_size=64, qk_norm=True))  # bench's qk_norm
    assert r["bytes_per_step"] == int(decode_bytes(model, 1, 8 + 4.5, 4))  # mean context: prompt + (8 + 1) / 2
    assert r["batch_n"]["bytes_per_step"] == int(decode_bytes(model, 3, 8 + 4.5, 4))
    assert "roofline" in proc.stdout and "tokens/s" in proc.stdout


@pytest.mark.slow
def test_train_mode_ends_with_json(tmp_path):
    proc = run("bench.py", "--mode=train", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=64",
               "--batch_size=2", *FAST, cwd=tmp_path)
    r = last_json(proc)
    assert r["mode"] == "train" and r["batch_size"] == 2 and r["seq_len"] == 64 and r["peers"] == {}
    assert r["tokens_per_s"] == pytest.approx(2 * 64 * 1000 / r["step_ms"])
    assert 0 < r["mfu"] < 1 and r["peak_flops"] > 1e9 and "measured" in r["peak_flops_source"]
    assert r["peak_memory_MB"] > 50  # the process's max RSS: torch alone is more


# a stand-in for nanoGPT's model.py (its interface: GPTConfig, GPT(config), forward -> (logits, loss),
# configure_optimizers), written by the test: nanoGPT's own code is not part of this repo
NANOGPT_STANDIN = """
from dataclasses import dataclass
import torch, torch.nn as nn, torch.nn.functional as F

@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)

    def forward(self, idx, targets=None):
        logits = self.lm_head(self.wte(idx))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
"""


@pytest.mark.slow
def test_train_mode_times_a_nanogpt_checkout_side_by_side(tmp_path):
    (tmp_path / "nanogpt").mkdir()
    (tmp_path / "nanogpt" / "model.py").write_text(NANOGPT_STANDIN)
    proc = run("bench.py", "--mode=train", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=64",
               "--batch_size=2", "--nanogpt=nanogpt", "--nanogpt_vocab=11", *FAST, cwd=tmp_path)
    r = last_json(proc)
    peer = r["peers"]["nanogpt"]
    assert peer["tokens_per_s"] == pytest.approx(2 * 64 * 1000 / peer["step_ms"])
    assert "nanogpt (vocab 11, same trunk dims)" in proc.stdout and "x its tokens/s" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--mode=fly"], "mode must be"),
    (["--block_size=64", "--prompt_len=60", "--new_tokens=10"], "exceeds block_size"),
    (["config/none.py"], "cannot read config file"),
])
def test_bad_settings_get_one_line_errors(tmp_path, args, message):
    proc = run("bench.py", "--n_layer=1", "--n_head=2", "--n_embd=32", *args, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and message in proc.stderr



@pytest.mark.slow
def test_serve_mode_times_the_mix_alone_and_together_and_ends_with_json(trained, tmp_path):
    """serve.py started, timed and stopped by bench.py: the mix (a voice, a WAV in 8 through the stand-in codec) one
    at a time and from 4 clients at once, twice; every answer under load its answer alone."""
    missing = [m for m in ("fastapi", "uvicorn", "stable_codec") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: bash setup.sh")
    _, out_dir = trained
    (tmp_path / "voices").mkdir()
    np.save(tmp_path / "voices" / "anna.npy", np.arange(15) * 11)
    (tmp_path / "voices" / "anna.txt").write_text("Tell me now.")
    codec = os.path.join(ROOT, "tests", "fixtures", "tiny_stable_codec_config.json")
    serve_args = f"--serve_args=--voices=voices --codec_config={codec} --codec_ckpt="
    proc = run("bench.py", "--mode=serve", f"--ckpt={out_dir}", "--clients=4", "--requests_per_client=2", "--runs=2",
               "--max_seconds=2", "--temperature=0", serve_args, cwd=tmp_path)
    r = last_json(proc)
    assert r["mode"] == "serve" and r["voices"] == ["default", "anna"] and r["codec"] and r["threads"] >= 1
    assert (r["clients"], r["requests_per_client"], r["requests"], r["runs"], len(r["speedups"])) == (4, 2, 8, 2, 2)
    assert r["tokens"] > 0 and r["mismatched"] == 0 and r["sampling"]["temperature"] == 0
    assert r["alone_tokens_per_s"] == pytest.approx(r["tokens"] / r["alone_s"])
    assert r["together_tokens_per_s"] == pytest.approx(r["tokens"] / r["together_s"])
    assert r["speedup"] == pytest.approx(r["alone_s"] / r["together_s"])
    assert 0 < r["latency_p50_s"] <= r["latency_p95_s"]
    assert "4 clients at once" in proc.stdout and "x the tokens/s of one at a time" in proc.stdout
