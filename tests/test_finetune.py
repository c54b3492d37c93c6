"""Fine-tuning (train.py --init_from=<a model>, --freeze_layers) and exported models (export.py): a folder of
config.json, model.safetensors and a model card that every script loads as it loads a training run."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, one_line_error, read_log, run, run_many
from data import load_model
from generate import Sampling
from speak import synthesize

pytestmark = pytest.mark.slow  # the whole file: see pytest.ini

CONFIG = os.path.join(ROOT, "config", "train_synthetic.py")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The tiny trained model, evaluated (eval_synthetic.json beside it), exported in float32 and in bfloat16."""
    work, out_dir = trained
    folder = tmp_path_factory.mktemp("export")
    run("eval.py", f"--out_dir={out_dir}", "--n=4", "--max_seconds=2", cwd=work)
    run("export.py", f"--out_dir={out_dir}", f"--export_dir={folder}/fp32", "--language=en", cwd=work)
    run("export.py", f"--out_dir={out_dir}", f"--export_dir={folder}/bf16", "--dtype=bfloat16", cwd=work)
    return work, out_dir, folder


def test_export_writes_config_weights_and_a_model_card(exported):
    work, out_dir, folder = exported
    assert sorted(os.listdir(folder / "fp32")) == ["README.md", "config.json", "model.safetensors"]
    card = json.loads((folder / "fp32" / "config.json").read_text())
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)
    assert card["model"] == ckpt["model_args"] and card["iter_num"] == 40 and card["sampling"]["top_p"] == 0.8
    readme = (folder / "fp32" / "README.md").read_text()
    assert readme.startswith("---\nlicense: other\nlanguage:\n- en\n") and "pipeline_tag: text-to-speech" in readme
    assert "## Evaluation (synthetic)" in readme and "| cer |" in readme and "stable-codec-speech-16k" in readme
    licence = readme[readme.index("## Licence"):]  # the weights', the code's and the codec's, each said
    assert "`other`" in licence and "Dirt, is under the MIT licence" in licence
    assert "Stability AI's own licence" in licence and "huggingface.co/stabilityai/stable-codec-speech-16k" in licence
    weights = [os.path.getsize(folder / d / "model.safetensors") for d in ("fp32", "bf16")]
    assert weights[1] < 0.51 * weights[0]  # bfloat16: half the bytes
    assert weights[0] < 0.5 * os.path.getsize(os.path.join(out_dir, "ckpt.pt"))  # no optimizer state


def test_overwrite_replaces_an_earlier_export(exported, tmp_path):
    work, out_dir, folder = exported
    run("export.py", f"--out_dir={out_dir}", f"--export_dir={tmp_path}/m", "--dtype=bfloat16", cwd=work)
    run("export.py", f"--out_dir={out_dir}", f"--export_dir={tmp_path}/m", "--overwrite=True", cwd=work)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == (folder / "fp32" / "model.safetensors").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary folder left beside it


def test_an_exported_model_speaks_as_its_checkpoint(exported, tmp_path):
    work, out_dir, folder = exported
    texts, greedy = [b"Call me tomorrow.", b"Go there now."], Sampling(temperature=0, max_seconds=2)
    reference = synthesize(load_model(out_dir)[0], texts, greedy, strict=False)
    got = synthesize(load_model(str(folder / "fp32"))[0], texts, greedy, strict=False)
    assert all(np.array_equal(a, b) for a, b in zip(reference, got))  # the same weights, bit for bit
    # every script takes the folder where it takes an out_dir; bfloat16 loads and samples
    run("sample.py", f"--out_dir={folder}/bf16", "--text=Call me.", "--max_seconds=2", f"--output_dir={tmp_path}/s",
        cwd=work)
    assert len(np.load(tmp_path / "s" / "000.npy")) > 0
    result = json.loads(run("eval.py", f"--out_dir={folder}/fp32", "--n=3", "--max_seconds=2",
                            cwd=work).stdout.strip().splitlines()[-1])
    assert result["n"] == 3 and result["iter_num"] == 40
    bench = run("bench.py", f"--ckpt={folder}/fp32", "--threads=1", "--runs=1", "--prompt_len=8", "--new_tokens=8",
                "--bandwidth_mb=32", cwd=work)
    assert json.loads(bench.stdout.strip().splitlines()[-1])["config"]["n_layer"] == 2


@pytest.mark.parametrize("parent", ["out_dir", "export"])
def test_fine_tuning_starts_from_the_parent_and_names_it(exported, parent):
    work, out_dir, folder = exported
    source = out_dir if parent == "out_dir" else str(folder / "fp32")
    run("train.py", CONFIG, *TINY, f"--init_from={source}", f"--out_dir=ft-{parent}", "--max_iters=6",
        "--eval_interval=6", "--freeze_layers=1", "--learning_rate=1e-3", cwd=work)
    ckpt = torch.load(os.path.join(work, f"ft-{parent}", "ckpt.pt"), weights_only=True)
    before = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)
    assert ckpt["iter_num"] == 6 and ckpt["parent"]["path"] == os.path.abspath(source)  # its own schedule from 0
    assert ckpt["parent"]["iter_num"] == 40 and ckpt["parent"]["val_loss"] == pytest.approx(before["best_val_loss"])
    log = read_log(os.path.join(work, f"ft-{parent}"))
    assert log[0]["iter"] == 1 and log[0]["loss"] < 9.0  # a trained start: far below ln(46656) = 10.75
    for name, weights in ckpt["model"].items():  # the embeddings and the first block frozen, the rest trained
        frozen = name.startswith(("wte.", "coarse_embed.", "fine_embed.", "blocks.0."))
        assert torch.equal(weights, before["model"][name]) == frozen, name
    # a run resumed from the fine-tuned checkpoint keeps naming the parent, and its layers frozen as they were
    run("train.py", CONFIG, *TINY, "--init_from=resume", f"--out_dir=ft-{parent}", "--max_iters=8",
        "--eval_interval=6", "--learning_rate=1e-3", cwd=work)
    resumed = torch.load(os.path.join(work, f"ft-{parent}", "ckpt.pt"), weights_only=True)
    assert resumed["parent"] == ckpt["parent"] and resumed["iter_num"] == 8
    assert torch.equal(resumed["model"]["blocks.0.attn.qkv.weight"], before["model"]["blocks.0.attn.qkv.weight"])


def test_export_and_fine_tuning_mistakes_are_one_line(exported, tmp_path):
    work, out_dir, folder = exported
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "config.json").write_text(json.dumps({"format": "dirt-model-v1", "model": {"n_layer": 2}}))
    torch.save({"not": "safetensors"}, tmp_path / "fake" / "model.safetensors")  # a pickle: never loaded as one
    cases = [
        (("export.py", f"--out_dir={out_dir}", f"--export_dir={folder}/fp32"), "exists; choose another"),
        (("export.py", f"--out_dir={out_dir}"), "give --export_dir"),
        # --overwrite deletes the folder it replaces: only an earlier export, never a folder of other files,
        # nor one that holds the model being exported
        (("export.py", f"--out_dir={out_dir}", f"--export_dir={tmp_path}", "--overwrite=True"), "holds other files"),
        (("export.py", f"--out_dir={out_dir}", f"--export_dir={work}", "--overwrite=True"), "holds other files"),
        (("export.py", f"--out_dir={folder}/fp32", f"--export_dir={folder}/fp32", "--overwrite=True"),
         "holds the model being exported"),
        (("export.py", f"--out_dir={out_dir}", f"--export_dir={tmp_path}/fake/config.json", "--overwrite=True"),
         "is a file"),
        (("export.py", f"--out_dir={out_dir}", f"--export_dir={tmp_path}/x", "--dtype=float16"), "--dtype=float16"),
        (("sample.py", f"--out_dir={tmp_path}/fake", "--text=hi"),
         "model.safetensors is not the weights export.py writes (safetensors): it is truncated or corrupt"),
        (("sample.py", f"--out_dir={tmp_path}", "--text=hi"), "no model in"),
        (("train.py", CONFIG, *TINY, f"--init_from={folder}/fp32", "--n_embd=32", f"--out_dir={tmp_path}/o"),
         "--n_embd=32 differs from 64"),
        (("train.py", CONFIG, *TINY, f"--init_from={folder}/fp32", "--freeze_layers=3", f"--out_dir={tmp_path}/o"),
         "--freeze_layers=3 is out of range"),
        (("train.py", CONFIG, *TINY, "--freeze_layers=1", f"--out_dir={tmp_path}/o"), "--init_from=<a model>"),
    ]
    for (args, needle), proc in zip(cases, run_many([args for args, _ in cases], work)):
        one_line_error(proc, needle)
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "x")
    assert os.path.isfile(tmp_path / "fake" / "model.safetensors") and os.path.isdir(os.path.join(work, "data"))
