"""The forkable core's shape, held by the suite: short functions, no script importing a script, code that says why
(figures live in docs/results.md), a licence, and a README file map that names every module."""

import ast
import os
import re

from conftest import ROOT

SCRIPTS = ("train", "sample", "prepare", "eval", "bench", "serve", "export")


def sources():
    """The repo's own .py files outside tests/: {path relative to the root: text}."""
    out = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "__pycache__", "data")
                   and not d.startswith("out")]
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                with open(path, encoding="utf-8") as fh:
                    out[os.path.relpath(path, ROOT)] = fh.read()
    return out


def test_no_function_over_100_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, text in sources().items() for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100]
    assert not long, long


def test_no_script_imports_a_script():
    found = []
    for path, text in sources().items():
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            found += [f"{path} imports {n}" for n in names if n and n.split(".")[0] in SCRIPTS]
    assert not found, found


def test_code_says_why_and_the_results_log_says_how_much():
    """No dated figure, dev-box figure or CI run figure in the code: they go stale, and are true of one machine."""
    pattern = re.compile(r"20\d\d-[01]\d-[0-3]\d|dev box|dev CPU|dev machine|in CI'?s runs|CI runs? of")
    found = [f"{path}:{n}: {line.strip()}" for path, text in sources().items()
             for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_licence_and_a_file_map_that_names_every_module():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        assert f.read().startswith("MIT License")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    files = readme[readme.index("## Files"):readme.index("## Tests")]
    assert "LICENSE" in files
    missing = [p for p in sources() if os.sep not in p and p not in files]
    assert not missing, f"README's file map does not name {missing}"
