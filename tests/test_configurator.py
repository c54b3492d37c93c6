"""configurator.py: --help from the globals and the source, one-line config-file errors, _file_keys."""

import json
import os
import runpy
import sys
import textwrap

import pytest
from conftest import ROOT, one_line_error, run


@pytest.mark.parametrize("script,args,needles", [
    ("train.py", ["--max_iters=5", "--no_such_key=1", "--help"],  # --help anywhere wins, before any other work
     ["Train Dirt: text bytes", "settings (defaults", "  # I/O\n  out_dir = 'out'\n", "  learning_rate = 0.0006\n",
      "  eval_only = False  # evaluate once and exit\n", "  # data\n  dataset = 'synthetic'\n",
      "  n_kv_head = 0  # grouped-query attention"]),  # model.GPTConfig's fields, with their comments there
    ("sample.py", ["-h"], ["Sample speech from a trained Dirt model", "  top_p = 0.8  # nucleus sampling; 0 or 1 = off\n"]),
    ("eval.py", ["-h"], ["Evaluate a trained Dirt model", "  # real speech\n  test_list = ''  # audio_path",
                         "  best_of = 1  # sample each chunk"]),  # generate.Sampling's fields
    ("bench.py", ["--help"], ["(a config file sets only block_size, n_layer,", "  n_layer = 12\n",
                              "  temperature = 0.6  # 0 = greedy\n"]),
    ("prepare.py", ["--help"], ["  workers = 4  # processes (per rank) reading, decoding and resampling audio ahead of the codec; 0 = in this one\n"]),
    ("export.py", ["--help"], ["  export_dir = ''  # the folder to write (required)"]),
])
def test_help_lists_every_setting(tmp_path, script, args, needles, monkeypatch, capfd):
    """Each script's --help, run in this process as `python script ...` runs it (runpy): a fresh process for each
    would spend seconds importing torch; tests/test_readme.py runs `python train.py --help` as a user does."""
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, script), *args])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as ended:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    stdout, stderr = capfd.readouterr()
    assert ended.value.code in (0, None) and stderr == "" and "Overriding" not in stdout and not os.listdir(tmp_path)
    for needle in needles:
        assert needle in stdout
    settings = stdout.split("\nsettings (")[1]
    assert "TOP_P" not in settings and "PAD" not in settings  # ALL_CAPS constants are not settings
    assert script == "export.py" or ("  seed = 1337" in settings and "  device = " in settings)


def fake_script(folder, file_keys=False):
    """A script without torch whose model settings come from a dataclass in another module, as train.py's will."""
    (folder / "shapes.py").write_text(textwrap.dedent("""
        import dataclasses


        @dataclasses.dataclass
        class Shape:
            n_layer: int = 12  # transformer blocks
            # attention heads per block; a long comment that goes on and on and on and on and on and on, and on
            # until it is cut to one line of at most a hundred and twenty columns, with an ellipsis
            n_head: int = 12
            n_embd: int = 768
    """))
    script = folder / "fake.py"
    script.write_text(textwrap.dedent(f'''
        """A fake script."""
        import dataclasses
        import json
        import sys

        from shapes import Shape

        sys.path.append({ROOT!r})  # configurator.py's one-line errors come from the repo's common.py

        # -----------------------------------------------------------------------------
        # I/O
        out_dir = "out"  # where to write
        globals().update({{f.name: f.default for f in dataclasses.fields(Shape)}})
        learning_rate = 6e-4
        compile = False  # a setting that hides the builtin
        {"_file_keys = [f.name for f in dataclasses.fields(Shape)]" if file_keys else ""}
        exec(open({os.path.join(ROOT, "configurator.py")!r}).read())
        print(json.dumps({{k: globals()[k] for k in ("out_dir", "n_layer", "n_head", "n_embd", "learning_rate")}}))
    '''))
    return str(script)


def test_help_takes_injected_settings_comments_from_the_dataclass(tmp_path):
    proc = run(fake_script(tmp_path, file_keys=True), "--help", cwd=tmp_path)
    assert proc.stdout.startswith("A fake script.\n\nsettings (") and "{" not in proc.stdout  # exited after help
    assert "(a config file sets only n_layer, n_head, n_embd; its other settings are ignored here)" in proc.stdout
    assert "  # I/O\n  out_dir = 'out'  # where to write\n  n_layer = 12  # transformer blocks\n" in proc.stdout
    assert "  # attention heads per block; a long comment that goes on" in proc.stdout
    assert " ...\n  n_head = 12\n  n_embd = 768\n  learning_rate = 0.0006\n" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 120


@pytest.mark.slow
@pytest.mark.parametrize("script,content,needles", [
    ("train.py", "learning_rate = 1e-3\nbatch_size = 1 // 0\n", ["line 2: ZeroDivisionError: "]),
    ("fake", "n_layer = 4\nn_head = (\n", ["line 2: SyntaxError: '(' was never closed"]),
    ("fake", "import math\n\nn_layer = undefined + 1\n", ["line 3: NameError: name 'undefined' is not defined"]),
    ("fake keys", "import no_such_module_anywhere\n", ["line 1: ModuleNotFoundError: No module named"]),
    ("fake keys", "def f():\n    raise ValueError('bad\\nsecond line')\nf()\n", ["line 2: ValueError: bad"]),
])
def test_config_file_errors_are_one_line_naming_the_line(tmp_path, script, content, needles):
    (tmp_path / "cfg.py").write_text(content)
    if script.startswith("fake"):
        script = fake_script(tmp_path, file_keys=script == "fake keys")
    proc = run(script, str(tmp_path / "cfg.py"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    one_line_error(proc, f"error: {tmp_path / 'cfg.py'} line", *needles)


# False ends in an error, whose one line (common.fail) imports torch: seconds
@pytest.mark.parametrize("file_keys", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_file_keys_take_only_those_settings_from_a_config_file(tmp_path, file_keys):
    (tmp_path / "cfg.py").write_text("import math\nn_layer = 4\nn_head = n_layer * 2\nlearning_rate = 1.0\n"
                                     "weight_decay = 0.1\n")
    proc = run(fake_script(tmp_path, file_keys), str(tmp_path / "cfg.py"), "--n_embd=256", cwd=tmp_path, check=False)
    if not file_keys:  # a config file's unknown key is an error, as ever
        one_line_error(proc, "sets unknown key 'weight_decay'")
        return
    assert proc.returncode == 0, proc.stderr
    assert f"From {tmp_path / 'cfg.py'}: n_layer=4, n_head=8 (its other settings are ignored here)" in proc.stdout
    values = json.loads(proc.stdout.splitlines()[-1])
    assert values == {"out_dir": "out", "n_layer": 4, "n_head": 8, "n_embd": 256, "learning_rate": 6e-4}
