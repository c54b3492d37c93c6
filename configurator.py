"""
nanoGPT's poor man's configurator. A script defines its settings as module-level globals, then runs
    exec(open('configurator.py').read())
which overrides them, in order, from
    python train.py config/some_config.py --batch_size=32 --compile=False
A setting is a global whose name is lowercase without a leading _ and whose value is an int, float, bool or str.
A config file is plain Python that assigns settings. A --key=value flag must name a setting and its value must have
the default's type (ints are accepted for floats; a string setting takes the text as written, so --speakers=3 is
"3"). Mistakes, in a flag or a config file, end the script with one line.
--help (or -h) prints the script's docstring and its settings, each with its default and the comments its source
gives it: the one above (often a heading) and the one on its line. A setting the script does not assign, one it put
in its globals from a dataclass's fields, has the comments of that field in the dataclass's source.
A script that defines _file_keys (a collection of setting names) takes only those settings from a config file; the
file runs in a namespace of its own (a copy of the settings) and its other assignments are ignored.
Afterwards _overridden holds the names of the settings a config file or a flag set (train.py: a fine-tuned model
keeps its parent's shape unless one of them sets it).
"""

import ast
import builtins
import dataclasses
import difflib
import inspect
import io
import os
import sys
import textwrap
import tokenize
import traceback


def _config_fail(message):
    from common import fail

    fail(message, code=2)  # 2: a usage error, as argparse's


def _settings():
    return {k: v for k, v in globals().items()  # ALL_CAPS globals are constants (often imported), not settings
            if not k.startswith("_") and not k.isupper() and isinstance(v, (int, float, bool, str))}


def _nearest_key(key):
    close = difflib.get_close_matches(key, [k for k in _settings() if k != key], n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else "; see the settings at the top of the script"


def _comments(source, body):
    """{name: (comment above, comment on the line)} for the first assignment of each name in body, then in its ifs.
    The comment above is the comment lines directly above, from the nearest one up through those that do not end a
    sentence (a blank, code or # ---- line ends them), joined into one line."""
    text, alone = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text[tok.start[0]] = tok.string.lstrip("#").strip()
            if not tok.line[: tok.start[1]].strip():
                alone.add(tok.start[0])
    found, nodes = {}, list(body)
    for node in nodes:  # grows as it goes: the statements of ifs come after the top level's
        if isinstance(node, ast.If):
            nodes += node.body + node.orelse
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for name in [t.id for t in targets if isinstance(t, ast.Name) and t.id not in found]:
            above, n = [], node.lineno - 1
            while n in alone and text[n].strip("-= ") and (not above or not text[n].endswith((".", ")", "?", "!"))):
                above, n = [text[n], *above], n - 1
            on = [text[n] for n in range(node.lineno, node.end_lineno + 1) if n in text and n not in alone]
            found[name] = (" ".join(above), on[0] if on else "")
    return found


def _cut(comment, room):
    """comment, cut at a word to fit room columns (40 at least)."""
    room = max(room, 40)
    return comment if len(comment) <= room else comment[: room - 4].rsplit(" ", 1)[0] + " ..."


def _help():
    """The script's docstring, then its settings in definition order as its source has them: each with its default,
    the comment above it (often a heading) and the one on its line, each cut to one line of 120 columns."""
    try:
        with open(globals().get("__file__", sys.argv[0])) as f:
            source = f.read()
        tree = ast.parse(source)
        doc, comments = ast.get_docstring(tree, clean=False), _comments(source, tree.body)
    except (OSError, SyntaxError, UnicodeDecodeError):
        doc, comments = None, {}
    for cls in [v for v in globals().values() if dataclasses.is_dataclass(v) and isinstance(v, type)]:
        names = {f.name for f in dataclasses.fields(cls)} - set(comments)  # settings the script injected from cls
        if names:
            source = textwrap.dedent(inspect.getsource(cls))
            comments.update({k: c for k, c in _comments(source, ast.parse(source).body[0].body).items() if k in names})
    out = [(doc or "").strip("\n"), "", "settings (defaults; set them with --key=value or in a config file):"]
    if "_file_keys" in globals():
        out.append(f"  (a config file sets only {', '.join(_file_keys)}; its other settings are ignored here)")
    for k, v in _settings().items():
        above, on = comments.get(k, ("", ""))
        line = f"  {k} = {v!r}"
        out += [f"  # {_cut(above, 116)}"] if above else []
        out.append(f"{line}  # {_cut(on, 116 - len(line))}" if on else line)
    try:
        print("\n".join(out), flush=True)
    except BrokenPipeError:  # python train.py --help | head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def _exec_config(path, source, scope):
    """Runs a config file in scope; an error in it ends the script with one line naming the file and line."""
    try:
        tree = ast.parse(source, path)
    except SyntaxError as e:
        _config_fail(f"{path} line {e.lineno}: {type(e).__name__}: {e.msg}")
    try:
        exec(builtins.compile(tree, path, "exec"), scope)  # compile may be a setting
    except Exception as e:
        lines = [n for frame, n in traceback.walk_tb(e.__traceback__) if frame.f_code.co_filename == path]
        _config_fail(f"{path} line {lines[-1]}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
    return tree


if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
    _help()
_overridden = set()  # the settings a config file or a flag set, for a script to tell them from its defaults
for _arg in sys.argv[1:]:
    if "=" not in _arg:
        if _arg.startswith("-"):
            _config_fail(f"expected --key=value or a config file, got '{_arg}'")
        try:
            with open(_arg) as _f:
                _source = _f.read()
        except OSError as _e:
            _config_fail(f"cannot read config file '{_arg}': {_e.strerror}")
        except UnicodeDecodeError:
            _config_fail(f"cannot read config file '{_arg}': not valid UTF-8")
        if "_file_keys" in globals():  # take only these settings from the file, ignore the rest
            _scope = dict(_settings())
            _tree = _exec_config(_arg, _source, _scope)
            _assigned = {n.id for n in ast.walk(_tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            _taken = {k: _scope[k] for k in _file_keys if k in _assigned and k in _scope}
            print(f"From {_arg}: {', '.join(f'{k}={v!r}' for k, v in _taken.items()) or 'nothing'} "
                  f"(its other settings are ignored here)")
            globals().update(_taken)
            _overridden |= set(_taken)
            continue
        print(f"Overriding config with {_arg}:")
        print(_source)
        _before = set(_settings())
        _tree = _exec_config(_arg, _source, globals())
        _overridden |= {n.id for n in ast.walk(_tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        _added = sorted(set(_settings()) - _before)  # imports and helpers in a config file are fine
        if _added:  # a typo in a config file would otherwise be silently ignored
            _config_fail(f"{_arg} sets unknown key '{_added[0]}'{_nearest_key(_added[0])}")
    else:
        if not _arg.startswith("--"):
            _config_fail(f"expected --key=value, got '{_arg}'")
        _key, _val = _arg[2:].split("=", 1)
        if _key not in _settings():
            _config_fail(f"unknown config key '{_key}'{_nearest_key(_key)}")
        _default = globals()[_key]
        try:
            _value = ast.literal_eval(_val)
        except (SyntaxError, ValueError):
            _value = _val  # a bare string, e.g. --device=cuda
        if isinstance(_default, str) and not isinstance(_value, str):
            _value = _val  # a string setting takes the text as written: --speakers=0,1,2 or --speakers=3
        if isinstance(_default, bool) or isinstance(_value, bool):
            _ok = isinstance(_default, bool) and isinstance(_value, bool)
        elif isinstance(_default, float) and isinstance(_value, int):
            _value, _ok = float(_value), True
        else:
            _ok = type(_value) is type(_default)
        if not _ok:
            _config_fail(f"--{_key} expects a {type(_default).__name__} (default {_default!r}), got {_val!r}")
        print(f"Overriding: {_key} = {_value!r}")
        globals()[_key] = _value
        _overridden.add(_key)
