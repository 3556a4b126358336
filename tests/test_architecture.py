"""The package's layers, as ARCHITECTURE.md states them: imports point down, formats stay at the edge."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "caffegen"
# Lowest first: a module may import its own layer and the layers below it.
LAYERS = ("io", "net", "job", "run", "strategies", "cli")
# Modules at the package's root that every layer may import; they import no layer themselves.
SHARED = {"caffegen", "caffegen.errors", "caffegen.defaults", "caffegen.reporting"}
# Libraries that only some layers may use: the wire and text formats, templates, and child processes.
CONFINED = {
    "google.protobuf.text_format": {"io"},
    "jinja2": {"io"},
    "onnx": {"io"},
    "subprocess": {"io", "run", "strategies"},  # io runs protoc on a fork's schema
    "urllib.request": {"io"},  # downloads: the zoo's verified, resumable fetch
}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """The absolute names of the modules ``path`` imports (``from X import y`` counts X and X.y)."""
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def imports_in(text, module, is_package=False):
    """The absolute names of the modules that ``text``, the source of ``module``, imports."""
    tree = ast.parse(text)
    current = module.split(".")
    package = current if is_package else current[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def layer_of(name):
    parts = name.split(".")
    if parts[0] != "caffegen" or name in SHARED or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


MODULES = sorted(path for path in PACKAGE.rglob("*.py") if path.name != "caffe_pb2.py")


def test_every_module_lives_in_a_layer():
    loose = [module_name(path) for path in MODULES
             if layer_of(module_name(path)) is None and module_name(path) not in SHARED | {"caffegen.__main__"}]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_point_down(path):
    source = layer_of(module_name(path))
    rank = LAYERS.index(source) if source else -1
    upward = [f"line {line}: {name}" for name, line in imports(path)
              if (target := layer_of(name)) and LAYERS.index(target) > rank
              and module_name(path) != "caffegen.__main__"]
    assert not upward, f"{module_name(path)} ({source or 'shared'}) imports a higher layer: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_confined_libraries(path):
    source = layer_of(module_name(path))
    misplaced = [f"line {line}: {name}" for name, line in imports(path) for library, allowed in CONFINED.items()
                 if (name == library or name.startswith(library + ".")) and source not in allowed]
    assert not misplaced, f"{module_name(path)} ({source}) uses what only {CONFINED} may: {misplaced}"


def test_the_checker_resolves_relative_and_absolute_imports():
    text = "from caffegen.run.launch import launch\nfrom ..job import rundir\nfrom . import head\n"
    found = [name for name, _ in imports_in(text, "caffegen.net.probe")]
    assert found == ["caffegen.run.launch", "caffegen.run.launch.launch", "caffegen.job", "caffegen.job.rundir",
                     "caffegen.net", "caffegen.net.head"]
    assert [layer_of(name) for name in found] == ["run", "run", "job", "job", "net", "net"]


# The option groups of the command line: the only cli modules a command module may import. The package itself
# (cli/__init__.py, the command table and main) is no option group, and every other module is one command's.
OPTION_GROUPS = {"caffegen.cli.options", "caffegen.cli.joboptions"}
COMMAND_MODULES = [path for path in MODULES if module_name(path).startswith("caffegen.cli.")
                   and module_name(path) not in OPTION_GROUPS]
CLI_MODULES = {module_name(path) for path in MODULES if layer_of(module_name(path)) == "cli"}


def cli_imports(text, module):
    """The cli modules whose names ``text``, the source of ``module``, uses: ``from caffegen.cli import x`` uses the
    module x where there is one, else a name of the package (cli/__init__.py)."""
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = [name for name, _ in imports_in(ast.unparse(node), module)]
        if isinstance(node, ast.ImportFrom):
            base, taken = names[0], names[1:]
            if base == "caffegen.cli":  # its modules, or names that cli/__init__.py defines
                names = [name if name in CLI_MODULES else base for name in taken]
            else:  # from a cli module, that module whatever names it gives; from above the cli, what is taken
                names = [base] if base in CLI_MODULES else taken
        yield from ((name, node.lineno) for name in names if name in CLI_MODULES)


@pytest.mark.parametrize("path", COMMAND_MODULES, ids=module_name)
def test_a_command_module_imports_only_the_option_groups_of_the_cli(path):
    own = module_name(path)
    others = {f"line {line}: {name}" for name, line in cli_imports(path.read_text(encoding="utf-8"), own)
              if name not in OPTION_GROUPS | {own}}
    assert not others, f"{own} imports a cli module that is no option group (shared options go in cli/options.py " \
                       f"or cli/joboptions.py): {others}"


def test_the_cli_check_sees_commands_and_the_package():
    text = ("from caffegen.cli.options import report\nfrom caffegen.cli import joboptions, main\n"
            "import caffegen.cli.sweep\nfrom . import launch\nfrom caffegen import cli\n")
    found = [name for name, _ in cli_imports(text, "caffegen.cli.probe") if name not in OPTION_GROUPS]
    assert found == ["caffegen.cli", "caffegen.cli.sweep", "caffegen.cli.launch", "caffegen.cli"]


# The run directory's two records, read and written only where their schema lives.
RECORDS = {"MANIFEST": "manifest.json", "RESULT": "result.json"}
RECORD_HOMES = {"caffegen.job.rundir", "caffegen.job.manifest"}


def record_uses(text, module):
    """Where ``text`` imports the names of the run directory's records, or names their files by string."""
    for name, line in imports_in(text, module):
        if name in {f"caffegen.job.rundir.{constant}" for constant in RECORDS}:
            yield f"line {line}: imports {name}"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and any(node.value == file or node.value.endswith("/" + file) for file in RECORDS.values()):
            yield f"line {node.lineno}: names {node.value!r}"


@pytest.mark.parametrize("path", [path for path in MODULES if module_name(path) not in RECORD_HOMES], ids=module_name)
def test_only_the_run_directory_reads_its_manifest_and_result(path):
    uses = list(record_uses(path.read_text(encoding="utf-8"), module_name(path)))
    assert not uses, f"{module_name(path)} reads the run directory's records itself (use RunDir, read_result): {uses}"


def test_the_record_check_sees_imports_and_file_names():
    text = 'from caffegen.job.rundir import MANIFEST\npath = run / "result.json"\nnote = "no manifest.json here"\n'
    assert list(record_uses(text, "caffegen.run.probe")) == [
        "line 1: imports caffegen.job.rundir.MANIFEST", "line 2: names 'result.json'"]
