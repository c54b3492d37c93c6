"""
nanoGPT's poor man's configurator. A script defines its settings as module-level globals, then runs
    exec(open('configurator.py').read())
which overrides them, in order, from
    python train.py config/some_config.py --batch_size=32 --compile=False
A config file is plain Python that assigns the same globals. A --key=value flag must name an existing global and
its value must have the default's type (ints are accepted for floats). Mistakes end the script with one line.
"""

import ast
import difflib
import sys


def _config_fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _nearest_key(key):
    known = [k for k, v in globals().items()
             if not k.startswith("_") and k != key and isinstance(v, (int, float, bool, str))]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else "; see the settings at the top of the script"


for _arg in sys.argv[1:]:
    if "=" not in _arg:
        if _arg.startswith("-"):
            _config_fail(f"expected --key=value or a config file, got '{_arg}'")
        try:
            with open(_arg) as _f:
                _source = _f.read()
        except OSError as _e:
            _config_fail(f"cannot read config file '{_arg}': {_e.strerror}")
        print(f"Overriding config with {_arg}:")
        print(_source)
        _before = {k for k in globals() if not k.startswith("_")}
        exec(_source)
        _added = sorted(  # imports and helpers in a config file are fine; new settings are typos
            k for k, v in globals().items()
            if not k.startswith("_") and k not in _before and isinstance(v, (int, float, bool, str))
        )
        if _added:  # a typo in a config file would otherwise be silently ignored
            _config_fail(f"{_arg} sets unknown key '{_added[0]}'{_nearest_key(_added[0])}")
    else:
        if not _arg.startswith("--"):
            _config_fail(f"expected --key=value, got '{_arg}'")
        _key, _val = _arg[2:].split("=", 1)
        if _key not in globals() or _key.startswith("_"):
            _config_fail(f"unknown config key '{_key}'{_nearest_key(_key)}")
        _default = globals()[_key]
        try:
            _value = ast.literal_eval(_val)
        except (SyntaxError, ValueError):
            _value = _val  # a bare string, e.g. --device=cuda
        if isinstance(_default, bool) or isinstance(_value, bool):
            _ok = isinstance(_default, bool) and isinstance(_value, bool)
        elif isinstance(_default, float) and isinstance(_value, int):
            _value, _ok = float(_value), True
        else:
            _ok = _default is None or type(_value) is type(_default)
        if not _ok:
            _config_fail(f"--{_key} expects a {type(_default).__name__} (default {_default!r}), got {_val!r}")
        print(f"Overriding: {_key} = {_value!r}")
        globals()[_key] = _value
