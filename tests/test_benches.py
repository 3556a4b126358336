"""The benchmarks under bench/ stay in step with the library: each imports, and each says how to run it."""

import ast
import importlib
import inspect
import subprocess
import sys

import pytest
from conftest import ROOT

BENCHES = sorted((ROOT / "bench").glob("*.py"))


@pytest.mark.parametrize("path", BENCHES, ids=lambda path: path.stem)
def test_a_bench_imports_and_calls_only_what_the_library_has(path):
    """Importing it resolves every name it takes from caffegen; its calls of them use parameters they have."""
    done = subprocess.run([sys.executable, "-c", f"import {path.stem}"], cwd=ROOT / "bench", capture_output=True,
                          text=True, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}:{ROOT / 'bench'}", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    called = {node.func.id: {keyword.arg for keyword in node.keywords}
              for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name)}
    sys.path[:0] = [str(ROOT / "bench")]
    try:
        bench = importlib.import_module(path.stem)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for name, keywords in called.items():
        function = getattr(bench, name, None)
        if function is None or not getattr(function, "__module__", "").startswith("caffegen"):
            continue
        parameters = inspect.signature(function).parameters
        if any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters.values()):
            continue
        assert keywords - {None} <= set(parameters), f"{path.name}: {name}() has no {keywords - set(parameters)}"


def test_every_bench_says_how_to_run_it():
    for path in BENCHES:
        assert "Usage: python bench/" in ast.get_docstring(ast.parse(path.read_text())), path.name
