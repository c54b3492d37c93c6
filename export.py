"""
Export a trained model as a folder in the Hugging Face layout, to share it and to load it anywhere without pickles:

    python export.py --out_dir=out-synthetic --export_dir=dirt-synthetic
    python export.py --out_dir=out-small --export_dir=dirt-small --dtype=bfloat16 --language=en  # on a GPU: its run

writes
    config.json         the model's shape (model.GPTConfig), the sampling defaults (generate.Sampling), the steps,
                        val loss and training settings, and the model it was fine-tuned from (data.py: the format)
    model.safetensors   the weights only (no optimizer state), float32 or bfloat16
    README.md           a model card: YAML header (licence, language, tags, the codec it needs), then the data, steps,
                        val loss, eval figures (eval_*.json beside the checkpoint, from eval.py), how to sample

sample.py, eval.py, bench.py and train.py --init_from take the folder wherever they take an out_dir. To publish it:
    hf upload <user>/<name> dirt-synthetic      # downloads: needs a Hugging Face account
"""

import glob
import json
import os
import shutil
from dataclasses import asdict

from codec import CODEC_REPO, PRESET, SAMPLE_RATE, TOKENS_PER_SECOND
from common import DTYPES, atomic_write, fail
from data import (EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_WEIGHTS, CheckpointError, find_model, load_model, read_meta,
                  split_problem)
from generate import Sampling

# -----------------------------------------------------------------------------
out_dir = "out"  # the model to export: a training run's out_dir (or an exported folder, to convert its dtype)
ckpt = ""  # a checkpoint file, in place of out_dir
export_dir = ""  # the folder to write (required); an existing one is replaced only with overwrite=True
overwrite = False  # replace an existing export_dir: an earlier export (or an empty folder) only, never other files
dtype = "float32"  # of the saved weights: float32, or bfloat16 (half the size; sample.py computes in its --dtype)
license = "other"  # the model card's licence (a Hugging Face id: mit, apache-2.0, cc-by-4.0, ...); mind the data's
language = ""  # the languages it speaks, comma-separated ISO codes (en,de); "" = none given (the synthetic corpus)
repo_id = ""  # where it will be published (user/name), for the card's commands; "" = <user>/<the folder's name>
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
# -----------------------------------------------------------------------------


def model_card(checkpoint, evals, meta):
    """README.md: the Hugging Face model card, YAML header first."""
    training = checkpoint.get("config", {})
    synthetic = training.get("dataset") == "synthetic"
    languages = [x.strip() for x in language.split(",") if x.strip()]
    name = repo_id or f"<user>/{os.path.basename(os.path.abspath(export_dir))}"
    header = ["---", f"license: {license}"]
    header += ["language:"] + [f"- {x}" for x in languages] if languages else []
    header += ["library_name: dirt", "pipeline_tag: text-to-speech",
               "tags:", "- text-to-speech", "- dirt", "- stable-codec"] + (["- synthetic"] if synthetic else [])
    header += ["---", ""]
    cfg = checkpoint["model_args"]
    lines = [f"# {os.path.basename(os.path.abspath(export_dir))}", "",
             "A Dirt text-to-speech model: one decoder-only Transformer that reads the UTF-8 "
             f"bytes of a text and writes [Stable Codec](https://huggingface.co/{CODEC_REPO}) tokens "
             f"(`{CODEC_REPO.split('/')[1]}`, post-hoc bottleneck `{PRESET}`, {TOKENS_PER_SECOND} tokens per second, "
             f"{SAMPLE_RATE // 1000} kHz mono). Turning them into audio needs that codec's weights, which are gated: "
             "accept their licence on the codec's page.", ""]
    if synthetic:
        lines += ["Trained on Dirt's built-in synthetic corpus: a toy that checks the machinery, not speech.", ""]
    lines += ["## Model", "", f"{cfg.get('n_layer')} layers, width {cfg.get('n_embd')}, {cfg.get('n_head')} heads, "
              f"context {cfg.get('block_size')} tokens; all settings in `config.json`. Weights: `{EXPORT_WEIGHTS}` "
              f"({dtype}).", "", "## Training", ""]
    data = f"`{training.get('dataset', '?')}`"
    if meta:
        splits = {name: s for name, s in meta["splits"].items() if not split_problem(s)}  # as Shards reads them
        per_second = meta.get("tokens_per_second", TOKENS_PER_SECOND)  # checked by read_meta
        hours = sum(s.get("audio_tokens", 0) for s in splits.values()) / per_second / 3600
        data += f" ({splits.get('train', {}).get('utterances', 0):,} training utterances, {hours:.1f} h in all)"
    lines += [f"- data: {data}", f"- steps: {checkpoint['iter_num']:,}",
              f"- val loss: {loss_text(checkpoint.get('best_val_loss'))}"]
    parent = checkpoint.get("parent")
    if parent:  # a checkpoint's or config.json's own words: shown as they are, whatever their type
        lines.append(f"- fine-tuned from `{parent.get('path')}` (step {parent.get('iter_num')}, val loss "
                     f"{loss_text(parent.get('val_loss'))})")
    lines.append("")
    for mode, scores in evals.items():
        lines += [f"## Evaluation ({mode})", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in scores.items() if type(v) in (int, float)]
        lines.append("")
    lines += ["## Sampling", "", "```sh", f"hf download {name} --local-dir {os.path.basename(name)}",
              f'python sample.py --out_dir={os.path.basename(name)} --text="Call me tomorrow."', "```", "",
              "in a clone of Dirt, with the codec installed for audio (see its docs/real-speech.md). Sampling "
              "defaults: " + ", ".join(f"{k}={v}" for k, v in asdict(Sampling()).items()) + ".", ""]
    return "\n".join(header + lines + licence_lines(synthetic))


def loss_text(loss):
    return f"{loss:.4f}" if type(loss) in (int, float) else "not recorded"


def licence_lines(synthetic):
    """The card's licence section: the weights', the code's, and the codec's, which is not this model's to give."""
    data = ("Dirt's built-in synthetic corpus (ids in Stable Codec's vocabulary, made without the codec)" if synthetic
            else "the exporter's own speech data, encoded as Stable Codec tokens")
    codec_use = "turn the tokens into audio" + ("" if synthetic else " (and made the training tokens from speech)")
    return ["## Licence", "",
            f"- The weights: `{license}` (this card's header, set by export.py --license), trained on {data}; "
            "that data's terms apply to them too.",
            "- The code that trains and runs them, Dirt, is under the MIT licence.",
            f"- The Stable Codec weights that {codec_use} are under Stability AI's own licence, on "
            f"[the codec's page](https://huggingface.co/{CODEC_REPO}).", ""]


if not export_dir:
    fail("give --export_dir=FOLDER, the folder to write")
if dtype not in ("float32", "bfloat16"):
    fail(f"--dtype={dtype}: use float32 or bfloat16")
source = ckpt or out_dir
if os.path.exists(export_dir) and not os.path.isdir(export_dir):  # a folder is replaced, never a file
    fail(f"--export_dir={export_dir} is a file; give a folder to write the model to")
if os.path.exists(export_dir) and not overwrite:
    fail(f"--export_dir={export_dir} exists; choose another, or pass --overwrite=True to replace it")


def earlier_export(path):
    """Whether a folder is one --overwrite may replace: empty, or an export (its config.json in export.py's format)."""
    if not os.listdir(path):
        return True
    try:
        with open(os.path.join(path, EXPORT_CONFIG)) as f:
            return json.load(f).get("format") == EXPORT_FORMAT
    except Exception:  # unreadable, not JSON, not an object: not an export
        return False


if os.path.exists(export_dir) and not earlier_export(export_dir):  # --overwrite deletes the folder: never another
    fail(f"--export_dir={export_dir} holds other files, not an earlier export; --overwrite=True replaces only an "
         "export.py folder: give a new folder")
try:
    where, kind = find_model(source)
    model, checkpoint = load_model(source)
except CheckpointError as e:
    fail(str(e))
if os.path.commonpath([os.path.abspath(export_dir), os.path.abspath(where)]) == os.path.abspath(export_dir):
    fail(f"--export_dir={export_dir} holds the model being exported; write the copy elsewhere")
folder = os.path.dirname(where) if kind == "checkpoint" else where
evals = {}
for path in sorted(glob.glob(os.path.join(folder, "eval_*.json"))):
    try:
        with open(path) as f:
            scores = json.load(f)
        if not isinstance(scores, dict):
            raise ValueError("not an object")
        evals[os.path.basename(path)[5:-5]] = scores
    except Exception:  # unreadable, not JSON, not eval.py's object of scores
        print(f"note: {path} is not eval.py's JSON; the card leaves it out")
training = checkpoint.get("config", {})
data_dir = str(training.get("data_dir") or os.path.join("data", str(training.get("dataset", ""))))
try:
    meta = read_meta(data_dir) if training.get("dataset") else None
except (OSError, ValueError):
    meta = None  # the corpus is not on this machine: the card says less about it
card = {"format": EXPORT_FORMAT, "model": checkpoint["model_args"], "sampling": asdict(Sampling()),
        "iter_num": checkpoint["iter_num"], "val_loss": checkpoint.get("best_val_loss"), "training": training,
        "parent": checkpoint.get("parent")}

# written to a temporary folder, then renamed into place: a failed export leaves no half a model
tmp = f"{export_dir.rstrip(os.sep)}.tmp{os.getpid()}"
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp)
try:
    from safetensors.torch import save_file
except ImportError:
    fail("export.py needs safetensors: pip install safetensors")
weights = {k: v.to(DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
save_file(weights, os.path.join(tmp, EXPORT_WEIGHTS), metadata={"format": "pt"})
atomic_write(os.path.join(tmp, EXPORT_CONFIG), lambda f: f.write(json.dumps(card, indent=2).encode()))
atomic_write(os.path.join(tmp, "README.md"), lambda f: f.write(model_card(checkpoint, evals, meta).encode()))
if os.path.exists(export_dir):
    shutil.rmtree(export_dir)
os.replace(tmp, export_dir)
n_bytes = os.path.getsize(os.path.join(export_dir, EXPORT_WEIGHTS))
print(f"wrote {export_dir}/: {EXPORT_CONFIG}, {EXPORT_WEIGHTS} ({n_bytes / 1e6:.1f} MB, {dtype}), README.md "
      f"(from {where}, step {checkpoint['iter_num']})")
