"""
One source for each setting: every script that samples hands the same Sampling (generate.py) from its command line to
the sampler, and bench.py builds exactly the model a training config builds (every GPTConfig field). The scripts
run in this process (runpy, as `python script.py ...` would) with a spy where the setting is used.
"""

import glob
import os
import runpy
import sys

import pytest

import generate
import speak
import model
from conftest import ROOT
from data import write_meta, write_split
from generate import Sampling
from synthetic import synthetic_corpus

SETTINGS = dict(temperature=0.9, top_k=7, top_p=0.5, cfg_scale=1.5, best_of=2, max_seconds=3.0)  # none a default
FLAGS = [f"--{k}={v}" for k, v in SETTINGS.items()]


class Reached(Exception):
    """Raised by a spy: the script got as far as the call that uses the setting."""


def run_until(monkeypatch, module, name, script, *args, cwd=None):
    """Run script with args until it calls module.name; returns the arguments of that call."""
    seen = []

    def spy(*a, **k):
        seen.append((a, k))
        raise Reached

    monkeypatch.setattr(module, name, spy)
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, script), *args])
    monkeypatch.delenv("RANK", raising=False)
    if cwd:
        monkeypatch.chdir(cwd)
    with pytest.raises(Reached):
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    return seen[0]


@pytest.mark.slow
def test_sample_and_eval_hand_every_sampling_setting_to_synthesize(trained, tmp_path, monkeypatch):
    work, out_dir = trained
    (tmp_path / "lines.jsonl").write_text('{"text": "Call me."}\n')
    entry_points = [
        ("sample.py", f"--out_dir={out_dir}", "--text=Call me."),
        ("eval.py", f"--out_dir={out_dir}", "--n=2"),  # synthetic mode
        ("eval.py", "--mode=model", f"--out_dir={out_dir}", f"--test_list={tmp_path}/lines.jsonl",
         f"--codec_config={ROOT}/tests/fixtures/tiny_stable_codec_config.json", "--codec_ckpt=", "--mos=off"),
    ]
    for script, *args in entry_points:
        (model_, texts, sampling, *_), _ = run_until(monkeypatch, speak, "synthesize", script, *args, *FLAGS,
                                                     cwd=work)
        assert sampling == Sampling(**SETTINGS), (script, args)


def test_bench_times_the_decode_step_with_the_sampling_settings(monkeypatch, tmp_path):
    (_, _, sampling, *_), _ = run_until(monkeypatch, generate, "sample_audio_token", "bench.py", "--n_layer=1",
                                        "--n_head=2", "--n_embd=32", "--block_size=64", "--prompt_len=8",
                                        "--new_tokens=8", *FLAGS, cwd=tmp_path)
    assert sampling == Sampling(**SETTINGS)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A few synthetic utterances in data/synthetic, written here as prepare.py writes them: all train.py reads before
    it builds its model (conftest's corpus, made by prepare.py, takes seconds)."""
    work = tmp_path_factory.mktemp("work")
    folder = work / "data" / "synthetic"
    train, val, speakers = synthetic_corpus(0, 20, 4)
    splits = {"train": write_split(folder, "train", train), "val": write_split(folder, "val", val)}
    write_meta(folder, {"dataset": "synthetic", "speakers": speakers, "splits": splits})
    return work


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(ROOT, "config", "*.py"))),
                         ids=os.path.basename)
def test_bench_builds_the_model_a_config_trains(config, small_corpus, monkeypatch):
    # --init_from=scratch: a fine-tuning recipe (config/finetune_*.py) names a parent that is not here; from scratch
    # train.py builds the model of the config's own settings, which are the parent's
    (trained_cfg,), _ = run_until(monkeypatch, model, "GPT", "train.py", config, "--device=cpu", "--dtype=float32",
                                  f"--data_dir={small_corpus}/data/synthetic", "--init_from=scratch", cwd=small_corpus)
    (benched_cfg,), _ = run_until(monkeypatch, model, "GPT", "bench.py", config, "--device=cpu", "--dtype=float32",
                                  cwd=small_corpus)
    assert benched_cfg == trained_cfg
    assert any(getattr(trained_cfg, k) != v for k, v in vars(model.GPTConfig()).items())  # the config's, not defaults


@pytest.mark.parametrize("recipe,parent", [("finetune_synthetic.py", "train_synthetic.py"),
                                           ("finetune_speaker.py", "train_small.py"),
                                           ("finetune_language.py", "train_small.py")])
def test_a_fine_tuning_recipe_has_its_parents_shape(recipe, parent):
    """A recipe trained from scratch (its baseline) builds the parent recipe's model: every GPTConfig field but
    dropout, block_size included; a field the parent leaves at its default the recipe leaves there too."""
    def shape(name):
        settings = {}
        exec(open(os.path.join(ROOT, "config", name)).read(), {}, settings)
        return {f: settings.get(f, d) for f, d in vars(model.GPTConfig()).items() if f != "dropout"}
    assert shape(recipe) == shape(parent)


@pytest.mark.parametrize("script,defaults", [("sample.py", {"seed": 4242, "batch_size": 3}), ("eval.py", {"seed": 4242})])
def test_scripts_take_their_default_seed_from_speak(script, defaults, monkeypatch, capsys):
    """sample.py's --seed and --batch_size, and eval.py's --seed, are speak.SEED / BATCH_SIZE (synthesize's own
    defaults), read from there: the default shown by --help moves with them."""
    monkeypatch.setattr(speak, "SEED", 4242)
    monkeypatch.setattr(speak, "BATCH_SIZE", 3)
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, script), "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    shown = capsys.readouterr().out
    for name, value in defaults.items():
        assert f"  {name} = {value}" in shown, name
