"""Every writer of a script or a command line, fed hostile strings, and the result run: nothing executes.

train.sh and the Slurm scripts run in bash with stand-ins for Caffe and caffegen that record their
argv; the command lines caffegen shows to copy run in bash too; the code of a bundle's README is
Python. Each string either arrives exactly as given or is refused in one line. train.bat is run in
wine's cmd in test_train_bat.py.
"""

import os
import subprocess

import pytest
from hostile import HOSTILE, HOSTILE_NAMES, pwned

from caffegen.io.quoting import CannotQuote, python_string, sh_command
from caffegen.job.scripts import render_train_sh
from caffegen.strategies import childlaunch
from caffegen.strategies.childlaunch import launch_command
from caffegen.strategies.slurm import write_sbatch_script

RECORDER = '#!/bin/sh\nprintf "%s\\0" "$@" > "$(dirname "$0")/argv"\n'


def recorder(folder):
    """A program that records its arguments, NUL-separated, in ``folder/argv``."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "recorder"
    program.write_text(RECORDER)
    program.chmod(0o755)
    return program


def recorded(program):
    return program.with_name("argv").read_bytes().decode().split("\0")[:-1]


def bash(script, cwd, **env):
    environ = {name: value for name, value in os.environ.items() if name != "CAFFE"}
    return subprocess.run(["bash", str(script)], cwd=cwd, env=dict(environ, **env), capture_output=True, text=True)


@pytest.mark.parametrize("text", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_train_sh_passes_hostile_paths_to_caffe_exactly(tmp_path, text):
    caffe = recorder(tmp_path / "caffe" / text)
    weights = str(tmp_path / "weights" / text / "base.caffemodel")
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.sh").write_text(render_train_sh(caffe, weights, None, 3))
    done = bash(run / "train.sh", tmp_path)
    assert done.returncode == 0, done.stderr
    assert recorded(caffe) == ["train", "-solver", "solver.prototxt", "-weights", weights]
    assert pwned(tmp_path) == []
    assert text not in (run / "train.sh").read_text().split("caffe_here=")[0]  # no input text in the comments


@pytest.mark.parametrize("text", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_slurm_scripts_pass_hostile_paths_exactly_or_refuse_them(tmp_path, monkeypatch, text):
    caffegen = recorder(tmp_path / "caffegen")
    monkeypatch.setattr(childlaunch, "CAFFEGEN", (str(caffegen),))
    folder = tmp_path / "sweep" / text
    folder.mkdir(parents=True)
    caffe = tmp_path / "caffe" / text / "caffe"
    try:
        script = write_sbatch_script(folder, "slurm.sh", "runs", launch_command("--evaluate", caffe=caffe),
                                     "a test", ["--comment=" + text], tasks=1,
                                     task_argument='"${RUNS[$SLURM_ARRAY_TASK_ID]}"', runs=[folder / text])
    except CannotQuote as refused:
        assert len(str(refused).splitlines()) == 1 and "an sbatch script cannot hold" in str(refused)
        assert not (folder / "slurm.sh").exists()
        return
    directives = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert f"#SBATCH --comment={text}" in directives and len(directives) == 4
    done = bash(script, tmp_path, SLURM_ARRAY_TASK_ID="0")
    assert done.returncode == 0, done.stderr
    assert recorded(caffegen) == ["launch", "--caffe", str(caffe), "--evaluate", str(folder / text)]
    assert pwned(tmp_path) == []


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_command_lines_to_copy_give_the_shell_each_word_exactly_or_refuse(tmp_path, text):
    words = ["caffegen", "launch", text, "--resume"]
    try:
        line = sh_command(*words)
    except CannotQuote:
        assert "\0" in text
        return
    done = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], cwd=tmp_path, capture_output=True)
    assert done.stdout.decode().split("\0")[:-1] == words
    assert pwned(tmp_path) == []


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_python_strings_in_a_bundles_readme_are_literals(text):
    assert eval(python_string(text), {"__builtins__": {}}) == text  # noqa: S307 (a literal, which is the point)
