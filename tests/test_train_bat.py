"""train.bat in a real Windows command interpreter: wine's cmd, with a stand-in caffe.exe that records its argv.

A stand-in is enough here: only argument passing and the working directory are under test. Paths
cover spaces, parentheses, ``!`` and non-ASCII letters. Where wine's cmd differs from Windows
(``&`` and ``^`` inside quotes, ``%`` in ``cd /d "%~dp0"``), the content-level tests in
test_jobs.py cover the characters instead.
"""

import os
import shutil
import subprocess

import pytest
from conftest import DIGITS
from hostile import HOSTILE_NAMES, pwned

from caffegen.io.quoting import CannotQuote
from caffegen.job.prepare import JobOptions, prepare
from caffegen.job.scripts import caffe_arguments, render_train_bat

RECORDER = os.path.join(os.path.dirname(__file__), "data", "windows", "argv_recorder.c")
PROGRAMS = ("wine", "x86_64-w64-mingw32-gcc")


@pytest.fixture(scope="session")
def wine(tmp_path_factory):
    """(environment for wine, the stand-in caffe.exe); required in CI."""
    missing = [name for name in PROGRAMS if shutil.which(name) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install wine64 gcc-mingw-w64-x86-64)"
        if os.environ.get("CI"):
            pytest.fail(f"wine and mingw are required in CI: {reason}")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("wine")
    exe = folder / "caffe.exe"
    subprocess.run(["x86_64-w64-mingw32-gcc", "-municode", "-O2", "-o", exe, RECORDER], check=True)
    env = dict(os.environ, WINEPREFIX=str(folder / "prefix"), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree,mshtml=")
    boot_wine(env, folder / "prefix")
    return env, exe


def boot_wine(env, prefix, tries=3):
    """Create the wine prefix. wineboot can fail on a machine that just installed wine (its wineserver still
    starting, or busy); it is tried again on a clean prefix, and its own words end the test where it never works."""
    for _ in range(tries):
        booted = subprocess.run(["wineboot", "--init"], env=env, capture_output=True, text=True, timeout=300)
        subprocess.run(["wineserver", "-w"], env=env, capture_output=True, timeout=300)
        if booted.returncode == 0:
            return
        shutil.rmtree(prefix, ignore_errors=True)
    said = " | ".join((booted.stdout + booted.stderr).strip().splitlines()[-5:])
    pytest.fail(f"wineboot --init failed {tries} times (exit {booted.returncode}): {said}")


def windows_path(path):
    """``path`` as wine's Windows programs see it: on drive Z:, with backslashes."""
    return "Z:" + str(path).replace("/", "\\")


def prepared_run(parent, weights_dir, images, copy_data=False):
    """A run directory in ``parent`` whose weights live in ``weights_dir``; the job and what prepare said."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    weights = weights_dir / "base weights.caffemodel"
    shutil.copyfile(DIGITS / "digits.caffemodel", weights)
    run = parent / "run"
    job = prepare(JobOptions(net=DIGITS / "train_val.prototxt", weights=weights, data=images, freeze_upto="conv2",
                             copy_data=copy_data), run)
    return run, job


def with_caffe(run, caffe):
    """Point train.bat at ``caffe`` (a Windows path), as a user edits its ``set CAFFE=`` line."""
    bat = run / "train.bat"
    text = bat.read_bytes().decode("utf-8").replace('set "CAFFE=caffe.exe"', f'set "CAFFE={caffe}"')
    bat.write_bytes(text.encode("utf-8"))


def cmd(env, bat, cwd, **extra):
    """``wine cmd /c bat`` in ``cwd``, once no wineserver is left: one that is shutting down can fail a new start."""
    subprocess.run(["wineserver", "-w"], env=env, timeout=120)
    return subprocess.run(["wine", "cmd", "/c", bat], cwd=cwd, env=dict(env, **extra), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=120)


def recorded(exe_dir):
    lines = (exe_dir / "argv.txt").read_bytes().decode("utf-8").splitlines()
    return lines[0], lines[1:]


def launched(env, run, started_from, **extra):
    """Run the run's train.bat from its own folder, or from its parent through a launcher that calls it."""
    if started_from == "run directory":
        return cmd(env, "train.bat", run, **extra)
    (run.parent / "launch all.bat").write_bytes(b'@echo off\r\ncall "%~dp0run\\train.bat"\r\n')
    return cmd(env, "launch all.bat", run.parent, **extra)


def assert_caffe_ran(done, caffe_dir, run, arguments):
    log = (run / "train.log").read_bytes() if (run / "train.log").is_file() else b""
    assert done.returncode == 0, done.stdout + done.stderr + log
    cwd, argv = recorded(caffe_dir)
    assert cwd.rstrip("\\") == windows_path(run)
    assert argv == arguments
    assert (run / "train.log").is_file()  # Caffe's output went to the run's own train.log
    assert b"Caffe finished with exit code 0" in done.stdout and b"Press any key" in done.stdout  # pause returned


@pytest.mark.parametrize("where", ["plain", "spaces (and parentheses)!"])
@pytest.mark.parametrize("started_from", ["run directory", "parent via a launcher"])
def test_train_bat_passes_caffe_its_arguments_exactly(wine, images, tmp_path, where, started_from):
    env, exe = wine
    caffe_dir = tmp_path / f"caffe {where}"
    caffe_dir.mkdir()
    shutil.copyfile(exe, caffe_dir / "caffe.exe")
    run, job = prepared_run(tmp_path / where, tmp_path / f"weights {where}", images)
    with_caffe(run, windows_path(caffe_dir / "caffe.exe"))
    arguments = caffe_arguments(weights=job.manifest.weights, flag_style="--")
    assert_caffe_ran(launched(env, run, started_from), caffe_dir, run, arguments)


@pytest.mark.parametrize("started_from", ["run directory", "parent via a launcher"])
def test_non_ascii_paths_come_from_windows_not_from_the_file(wine, images, tmp_path, started_from):
    """A run directory under a non-Latin user name, with the data copied in, and Caffe named by %CAFFE%."""
    env, exe = wine
    caffe_dir = tmp_path / "Žofia Đorđević" / "caffe"
    caffe_dir.mkdir(parents=True)
    shutil.copyfile(exe, caffe_dir / "caffe.exe")
    run, job = prepared_run(tmp_path / "Žofia Đorđević" / "тренировка", tmp_path / "weights", images, copy_data=True)
    assert (run / "train.bat").read_bytes().isascii()
    done = launched(env, run, started_from, CAFFE=windows_path(caffe_dir / "caffe.exe"))
    assert_caffe_ran(done, caffe_dir, run, caffe_arguments(weights="base.caffemodel", flag_style="--"))


def test_a_non_ascii_path_written_into_train_bat_is_announced(images, tmp_path):
    run, job = prepared_run(tmp_path / "plain", tmp_path / "Žofia weights", images)
    text = (run / "train.bat").read_bytes().decode("utf-8")
    assert "Žofia weights" in text and text.index("chcp 65001 >nul") < text.index("Žofia")
    assert any(note.startswith("train.bat names a non-ASCII path") and "--copy-data" in note for note in job.notes)


def test_hostile_paths_reach_caffe_exactly_or_leave_train_bat_out(wine, tmp_path):
    """Every hostile name as a folder of the weights' path: cmd passes it to Caffe as written, runs nothing,
    or caffegen refuses to write the batch file. One cmd runs all the cases, each train.bat in turn.

    Wine's cmd reads a batch file in its console's code page despite ``chcp 65001``, unlike Windows 10:
    a non-ASCII path arrives garbled there (prepare says so of such a train.bat), but runs nothing."""
    env, exe = wine
    driver, cases = ["@echo off"], []
    for number, text in enumerate(HOSTILE_NAMES):
        weights = f"C:\\weights\\{text}\\base.caffemodel"
        try:
            bat = render_train_bat(weights, None, 3)
        except CannotQuote as refused:
            assert len(str(refused).splitlines()) == 1 and "cmd.exe cannot take the weights value" in str(refused)
            assert any(char == '"' or ord(char) < 32 for char in text)
            continue
        run = tmp_path / f"case {number}"
        run.mkdir()
        shutil.copyfile(exe, run / "caffe.exe")
        (run / "train.bat").write_bytes(bat.encode("utf-8"))
        driver.append(f'call "{windows_path(run)}\\train.bat"')
        cases.append((run, weights))
    (tmp_path / "all.bat").write_bytes(("\r\n".join(driver) + "\r\n").encode("utf-8"))
    done = cmd(env, "all.bat", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for run, weights in cases:
        cwd, argv = recorded(run)
        if weights.isascii():
            assert argv == ["train", "--solver=solver.prototxt", f"--weights={weights}"], weights
    assert pwned(tmp_path) == [] and len(cases) >= 20
