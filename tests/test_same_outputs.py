"""
The reshape that split model.py into model.py / generate.py / optim.py changed where code lives, not what it does:
sampling gives the same tokens and training the same loss curve as before it. The fixtures were recorded with
commit d139243 (the last before the split) by the same calls as below, except the sampled cases ("sampled",
"best_of", "sampled_alone"), re-recorded when sampling became an inverse-CDF draw, one uniform per stage from each
text's own stream (generate.pick, draw_noise), instead of an exponential race over every class.
"""

import json
import os

import pytest
import torch

from conftest import ROOT, read_log, run
from generate import Sampling
from speak import synthesize
from model import GPT, GPTConfig

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TEXTS = [b"Call me tomorrow.", b"Hi.", b"A longer sentence that will not fit whole. And then another one! Is it? Yes."]
VOICE = (b"Good morning.", list(range(100, 130)))
CASES = {  # Sampling settings, synthesize's other arguments
    "greedy": (dict(temperature=0.0), {}),
    "sampled": (dict(temperature=0.6, top_p=0.8), dict(seed=7)),
    "voice": (dict(temperature=0.0), dict(voices=[VOICE] * 3)),
    "cfg": (dict(temperature=0.0, cfg_scale=1.5), {}),
    "best_of": (dict(temperature=0.8, top_k=50, best_of=3), dict(seed=3)),
    "sampled_alone": (dict(temperature=0.6, top_p=0.8), dict(seed=7)),  # the long text alone: three chunks
}


def random_model():
    """Anchored, marked, GQA: every path of generation. Its weights are spread so that the logits are not flat."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=160, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, qk_norm=True,
                          align_audio_pos=True, anchor_continuations=True, mark_borders=True, audio_pos_rate=0.57))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("case", CASES)
def test_sampling_gives_the_recorded_tokens(case):
    with open(os.path.join(FIXTURES, "golden_tokens.json")) as f:
        recorded = json.load(f)[case]
    settings, kwargs = CASES[case]
    texts = TEXTS[2:] if case.endswith("_alone") else TEXTS
    out = synthesize(random_model(), texts, Sampling(max_seconds=1.6, **settings), **kwargs)
    assert [o.tolist() for o in out] == recorded  # long text (chunked), voice, guidance, best_of: token for token


@pytest.mark.slow
def test_training_gives_the_recorded_loss_curve(tmp_path):
    with open(os.path.join(FIXTURES, "golden_train.json")) as f:
        recorded = json.load(f)
    run("prepare.py", "--dataset=synthetic", "--n_train=600", "--n_val=40", "--max_sentences=2", cwd=tmp_path)
    tiny = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=192", "--eval_iters=2", "--log_interval=1",
            "--warmup_iters=5", "--max_iters=12", "--eval_interval=6", "--log_samples=False"]
    config = os.path.join(ROOT, "config")
    runs = {  # Muon, anchors and borders, length-bucketed; AdamW, packed, text dropout
        "a": (f"{config}/train_synthetic_prompts.py", "--batch_size=8", "--lr_decay_iters=40",
              "--data_dir=data/synthetic"),
        "b": (f"{config}/train_synthetic.py", "--batch_size=4", "--packing=True", "--optimizer=adamw",
              "--text_dropout=0.1"),
    }
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same float sums, in the same order, on any machine
    for name, (cfg, *args) in runs.items():
        run("train.py", cfg, *tiny, *args, f"--out_dir=out-{name}", cwd=tmp_path, env=one_thread)
        rows = [{k: r[k] for k in ("iter", "loss", "train_loss", "val_loss", "lr") if k in r}
                for r in read_log(tmp_path / f"out-{name}")]
        assert len(rows) == len(recorded[name]) and all(
            r == pytest.approx(g, rel=1e-6) for r, g in zip(rows, recorded[name])), name
