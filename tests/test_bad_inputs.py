"""
Bad inputs of every kind, one case (at least) per cause: each gets one line on stderr that starts with the words a
user needs, a non-zero exit, no traceback, and nothing written where the run would have written. Add a case here
for every new way a user can get it wrong.
"""

import json
import os
import pickle

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


# --------------------------------------------------------------------------------------------------------------
# model, codec and corpus files: whatever is wrong with one, every loader says so in one line naming it, never a
# traceback, never torch's advice to load with weights_only=False, and nothing in the file runs


class Hostile:
    """Unpickling this runs os.mkdir(marker): a stand-in for any code a pickle can carry."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def bad_model_files(folder, ckpt_path):
    """name -> path of a file that no loader may take: 20 of random bytes (0 B to 1 MB, bare or behind a zip, pickle
    or .npy header), then real checkpoints cut short or missing a key, pickles that would run code, JSON of the
    wrong shape and a Git LFS pointer."""
    rng = np.random.default_rng(0)
    paths = {}

    def put(name, data):
        paths[name] = folder / name
        paths[name].write_bytes(data)

    for size in (0, 1, 100, 10_000, 1_000_000):
        for kind, head in (("bare", b""), ("zip", b"PK\x03\x04"), ("pickle", b"\x80\x02"), ("npy", b"\x93NUMPY")):
            put(f"random_{size}_{kind}", head + rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    real = open(ckpt_path, "rb").read()
    put("truncated_half", real[:len(real) // 2])
    put("truncated_5000", real[:5000])
    ckpt = torch.load(ckpt_path, weights_only=True)
    for key in ("model", "model_args", "iter_num"):
        torch.save({k: v for k, v in ckpt.items() if k != key}, folder / f"without_{key}")
        paths[f"without_{key}"] = folder / f"without_{key}"
    edits = {"tensor_missing": {"model": {k: v for k, v in list(ckpt["model"].items())[1:]}},
             "model_a_list": {"model": list(ckpt["model"].values())},
             "float_n_layer": {"model_args": {**ckpt["model_args"], "n_layer": 2.5}},
             "hostile_tensor": {"model": {**ckpt["model"], "wte.weight": Hostile(str(folder / "code_ran"))}}}
    for name, edit in edits.items():
        torch.save({**ckpt, **edit}, folder / name)
        paths[name] = folder / name
    torch.save(torch.zeros(3), folder / "a_tensor")
    paths["a_tensor"] = folder / "a_tensor"
    put("hostile_pickle", pickle.dumps(Hostile(str(folder / "code_ran")), protocol=2))  # torch.save's protocol
    put("json_list", b"[1, 2]")
    put("json_object", json.dumps({"format": "dirt-model-v1", "model": {"n_layer": "two"}, "iter_num": 1.5}).encode())
    put("json_deep", b"[" * 100_000)
    put("lfs_pointer", b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    return paths


def refused_in_one_line(load, path, error, capsys=None):
    """load(path) raises `error` (SystemExit: prints one line) whose one line names path and passes on no advice."""
    with pytest.raises(error) as e:
        load(path)
    message = capsys.readouterr().err.strip() if capsys else str(e.value)
    assert "\n" not in message and str(path) in message, message
    assert "weights_only" not in message and "weights only" not in message.lower(), message
    return message


def test_any_bad_model_codec_or_corpus_file_is_one_line(files, tmp_path, capsys):
    """Each file as a checkpoint (a file, an out_dir's ckpt.pt), an export's config.json or model.safetensors, a
    codec checkpoint (.ckpt, .safetensors) or config, a corpus's meta.json or index, a prepare.py part."""
    from safetensors.torch import save_file

    import codec
    from data import CheckpointError, CorpusError, Shards, load_model, write_meta, write_split
    from parts import load_part
    from synthetic import synthetic_corpus

    work, out_dir, _ = files
    paths = bad_model_files(tmp_path, os.path.join(out_dir, "ckpt.pt"))
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)
    good_config = json.dumps({"format": "dirt-model-v1", "model": ckpt["model_args"], "iter_num": 1}).encode()
    train, val, speakers = synthetic_corpus(0, 5, 3)
    for name, path in paths.items():
        case = tmp_path / f"case_{name}"
        for sub in ("run", "export_config", "export_weights", "corpus"):
            os.makedirs(case / sub)
        (case / "run" / "ckpt.pt").write_bytes(path.read_bytes())
        (case / "export_config" / "config.json").write_bytes(path.read_bytes())
        save_file(ckpt["model"], str(case / "export_config" / "model.safetensors"))
        (case / "export_weights" / "config.json").write_bytes(good_config)
        (case / "export_weights" / "model.safetensors").write_bytes(path.read_bytes())
        (case / "codec.safetensors").write_bytes(path.read_bytes())
        for form in (path, case / "run", case / "export_config", case / "export_weights"):
            refused_in_one_line(load_model, form, CheckpointError)
        for form in (path, case / "codec.safetensors"):
            refused_in_one_line(codec.read_state_dict, form, codec.CodecCheckpointError)
        if name != "json_object":  # a JSON object: a codec config, as far as reading it goes
            refused_in_one_line(codec.read_config, path, codec.CodecCheckpointError)
        refused_in_one_line(load_part, path, SystemExit, capsys)
        stats = {"train": write_split(case / "corpus", "train", train), "val": write_split(case / "corpus", "val", val)}
        write_meta(case / "corpus", {"dataset": "synthetic", "speakers": speakers, "splits": stats})
        (case / "corpus" / "val.index.npy").write_bytes(path.read_bytes())
        refused_in_one_line(lambda p: Shards(p.parent, "val"), case / "corpus" / "val.index.npy", CorpusError)
        (case / "corpus" / "meta.json").write_bytes(path.read_bytes())
        refused_in_one_line(lambda p: Shards(p.parent, "val"), case / "corpus" / "meta.json", CorpusError)
    assert not os.path.exists(tmp_path / "code_ran")  # refused unread: nothing in a file ran


def test_scripts_refuse_a_bad_model_or_codec_file_in_one_line(files, tmp_path):
    """The files above through the scripts that take them, a representative few: one line, nothing run."""
    work, out_dir, _ = files
    paths = bad_model_files(tmp_path, os.path.join(out_dir, "ckpt.pt"))
    for run_dir, ckpt in (("random-run", paths["random_1000000_bare"]), ("hostile-run", paths["hostile_tensor"])):
        os.makedirs(tmp_path / run_dir)
        (tmp_path / run_dir / "ckpt.pt").write_bytes(ckpt.read_bytes())
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)
    os.makedirs(tmp_path / "no-optimizer")
    torch.save({k: v for k, v in ckpt.items() if k != "optimizer"}, tmp_path / "no-optimizer" / "ckpt.pt")
    soundfile.write(tmp_path / "hello.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"audio": "hello.wav", "text": "Hello."}) + "\n")
    tiny_codec = f"--codec_config={ROOT}/tests/fixtures/tiny_stable_codec_config.json"
    data = f"--data_dir={work}/data/synthetic"
    not_a_ckpt = "is not a Dirt checkpoint (a file train.py writes): "
    code = "it is a pickle that needs code to load (posix.mkdir), refused before any of it ran"
    cases = [
        (("sample.py", f"--ckpt={paths['random_100_zip']}", "--text=hi"), f"{paths['random_100_zip']} {not_a_ckpt}"),
        (("sample.py", f"--out_dir={tmp_path}/random-run", "--text=hi"), f"{tmp_path}/random-run/ckpt.pt {not_a_ckpt}"),
        (("eval.py", f"--ckpt={paths['without_model_args']}"), f"{not_a_ckpt}it has no model_args"),
        (("eval.py", f"--out_dir={tmp_path}/hostile-run"), f"{not_a_ckpt}{code}"),
        (("serve.py", f"--ckpt={paths['truncated_half']}"), f"{not_a_ckpt}it is truncated or corrupt"),
        (("bench.py", f"--ckpt={paths['json_object']}"), f"{not_a_ckpt}it is truncated or corrupt"),
        (("export.py", f"--ckpt={paths['tensor_missing']}", f"--export_dir={tmp_path}/x"),
         "does not match the model its settings describe: 1 of the model's"),
        (("train.py", CONFIG, *TINY, f"--init_from={paths['hostile_pickle']}", f"--out_dir={tmp_path}/o1", data),
         f"{not_a_ckpt}{code}"),
        (("train.py", CONFIG, *TINY, f"--init_from={paths['float_n_layer']}", f"--out_dir={tmp_path}/o2", data),
         "has invalid model settings: n_layer is 2.5"),
        (("train.py", CONFIG, *TINY, "--init_from=resume", f"--out_dir={tmp_path}/random-run", data), not_a_ckpt),
        (("train.py", CONFIG, *TINY, "--init_from=resume", f"--out_dir={tmp_path}/no-optimizer", data),
         "has no optimizer state to resume with"),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--audio=yes", tiny_codec,
          f"--codec_ckpt={paths['random_10000_zip']}", f"--output_dir={tmp_path}/s1"),
         f"codec checkpoint {paths['random_10000_zip']} is not a Stable Codec checkpoint"),
        (("sample.py", f"--out_dir={out_dir}", "--text=hi", "--audio=yes", f"--codec_config={paths['json_deep']}",
          "--codec_ckpt=", f"--output_dir={tmp_path}/s2"), f"codec config {paths['json_deep']} is not JSON"),
        (("prepare.py", "--dataset=mine", f"--input={tmp_path}/manifest.jsonl", f"--out_dir={tmp_path}/p", tiny_codec,
          f"--codec_ckpt={paths['hostile_pickle']}", "--device=cpu"), code),
    ]
    failures = []
    for (args, needle), proc in zip(cases, run_many([args for args, _ in cases], tmp_path)):
        lines = proc.stderr.strip().splitlines()
        if not (proc.returncode != 0 and "Traceback" not in proc.stderr and len(lines) == 1
                and lines[0].startswith("error: ") and needle in lines[0] and "weights_only" not in lines[0]):
            failures.append(f"{' '.join(args)}\n  exit {proc.returncode}, stderr: {proc.stderr.strip()[-400:]!r}")
    assert not failures, "\n".join(failures)
    assert not any(os.path.exists(tmp_path / p) for p in ("code_ran", "x", "o1", "o2", "s1", "s2", "p"))
