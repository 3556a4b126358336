"""Tests for installing the Debian bullseye Caffe into a user prefix and for locating a Caffe binary.

The installer tests run the real installer into the default prefix (reused
when already there), so the first run needs network access to the Debian
archive.
"""

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import wait_for

from caffegen.errors import CaffegenError, CaffeNotFound
from caffegen.run import install, locate
from caffegen.run.install import apt, default_prefix, install_caffe, libcaffe_path, wrappers
from caffegen.run.locate import ask_caffe_version, caffe_is_cpu_only, find_caffe

QUIET_GLOG = dict(os.environ, GLOG_logtostderr="1")

TINY_NET = """\
name: "tiny"
layer {
  name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param {
    shape { dim: 4 dim: 8 }
    shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 }
    data_filler { type: "constant" value: 1 }
  }
}
layer {
  name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } }
}
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

SOLVER = """\
net: "{net}"
base_lr: 0.01
lr_policy: "fixed"
max_iter: {max_iter}
display: 1
snapshot_prefix: "{prefix}"
solver_mode: CPU
"""


@pytest.fixture(scope="session")
def caffe():
    """The wrapper of a real install in the default prefix."""
    return install_caffe()


def write_solver(directory, max_iter):
    net = directory / "tiny.prototxt"
    net.write_text(TINY_NET)
    solver = directory / "solver.prototxt"
    solver.write_text(SOLVER.format(net=net, max_iter=max_iter, prefix=directory / "tiny"))
    return solver


def make_executable(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho fake caffe\n")
    path.chmod(0o755)
    return path


def test_default_prefix_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CAFFEGEN_CAFFE_PREFIX", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_prefix() == tmp_path / "data" / "caffegen" / "caffe-1.0"
    monkeypatch.setenv("CAFFEGEN_CAFFE_PREFIX", str(tmp_path / "mine"))
    assert default_prefix() == tmp_path / "mine"


def test_wrapper_is_an_executable_sh_script_that_execs_the_loader(caffe):
    assert caffe == default_prefix().absolute() / "bin" / "caffe"
    assert caffe.is_file() and os.access(caffe, os.X_OK)
    script = caffe.read_text()
    assert script.startswith("#!/bin/sh\n")
    assert re.search(r"^exec '.*/ld-linux[^']*' '--library-path' '.*/openblas-pthread:.*' '.*/usr/bin/caffe' \"\$@\"$",
                     script, flags=re.MULTILINE)


def test_other_caffe_tools_get_wrappers_too(caffe):
    for tool in ("upgrade_net_proto_text", "upgrade_solver_proto_text", "convert_imageset"):
        wrapper = caffe.parent / tool
        assert os.access(wrapper, os.X_OK)
        assert f"/usr/bin/{tool}'" in wrapper.read_text()


def test_caffe_without_arguments_prints_usage(caffe):
    result = subprocess.run([str(caffe)], capture_output=True, text=True, env=QUIET_GLOG)
    assert result.returncode == 0
    assert "usage: caffe <command> <args>" in result.stdout
    assert "commands:" in result.stdout
    assert "train           train or finetune a model" in result.stdout


def test_caffe_reports_its_version(caffe):
    result = subprocess.run([str(caffe), "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == "caffe version 1.0.0"


def test_the_version_is_what_caffe_says_and_none_where_it_says_none(caffe, tmp_path):
    assert ask_caffe_version(caffe)() == "1.0.0"
    silent = tmp_path / "caffe"
    silent.write_text("#!/bin/sh\necho 'no version here'\n")
    silent.chmod(0o755)
    assert ask_caffe_version(silent)() is None
    assert ask_caffe_version(tmp_path / "missing")() is None


def test_build_is_cpu_only(caffe, monkeypatch):
    assert caffe_is_cpu_only(caffe) is True

    def no_second_run(*args, **kwargs):
        raise AssertionError("caffe_is_cpu_only ran caffe again for the same path")

    monkeypatch.setattr(locate.subprocess, "run", no_second_run)
    assert caffe_is_cpu_only(caffe) is True


def test_libcaffe_is_the_cpu_only_library(caffe):
    library = libcaffe_path()
    assert library.name.startswith("libcaffe.so")
    data = library.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert b"Cannot use GPU in CPU-only Caffe" in data


@pytest.mark.parametrize("coretype", [None, "Haswell"], ids=["coretype-unset", "coretype-set"])
def test_caffe_loads_openblas_and_only_libraries_from_the_prefix(caffe, coretype):
    prefix = caffe.parent.parent
    env = {name: value for name, value in os.environ.items() if name != "OPENBLAS_CORETYPE"}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    result = subprocess.run([str(caffe), "--version"], capture_output=True, text=True, env=dict(env, LD_DEBUG="libs"))
    assert result.returncode == 0, result.stderr[-2000:]
    programs = re.findall(r"^\s*(\d+):\s+initialize program: (\S+)$", result.stderr, flags=re.MULTILINE)
    # The wrapper's own process: the shell, then (after exec, same pid) caffe itself. Commands the
    # shell runs before the exec (reading the CPU's flags) are children with other pids.
    wrapper_pid = programs[0][0]
    assert programs[0][1] == "/bin/sh"
    assert [program for pid, program in programs if pid == wrapper_pid] == ["/bin/sh", str(prefix / "usr/bin/caffe")]
    # The loader initialises caffe's libraries between the two "initialize program" lines of that pid.
    after_shell = result.stderr.split("initialize program: /bin/sh")[1]
    caffe_startup = after_shell.split(f"initialize program: {prefix}/usr/bin/caffe")[0]
    libraries = re.findall(rf"^\s*{wrapper_pid}:\s+calling init: (\S+)$", caffe_startup, flags=re.MULTILINE)
    assert str(prefix / "usr/lib/x86_64-linux-gnu/libcaffe.so.1.0.0") in libraries
    blas = [library for library in libraries if Path(library).name == "libblas.so.3"]
    assert blas == [str(prefix / "usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")]
    assert str(prefix / "usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0") in libraries
    assert [library for library in libraries if not library.startswith(f"{prefix}/")] == []


def test_second_install_reuses_the_existing_one(caffe, monkeypatch):
    marker = caffe.parent.parent / install.MARKER
    before = (marker.stat().st_mtime_ns, caffe.stat().st_ino, caffe.stat().st_mtime_ns)

    def no_subprocess(*args, **kwargs):
        raise AssertionError("a reused install must not run apt-get or dpkg-deb")

    monkeypatch.setattr(install.subprocess, "run", no_subprocess)
    lines = []
    assert install_caffe(log=lines.append) == caffe
    assert (marker.stat().st_mtime_ns, caffe.stat().st_ino, caffe.stat().st_mtime_ns) == before
    assert lines == [f"Caffe is already installed in {caffe.parent.parent}"]


def test_install_into_a_prefix_with_spaces_uses_the_deb_cache(caffe, tmp_path):
    prefix = tmp_path / "my caffe prefix"
    lines = []
    wrapper = install_caffe(prefix, log=lines.append)
    assert wrapper == prefix / "bin" / "caffe"
    assert any(re.fullmatch(r"\d+ packages \([\d.]+ MB\), 0 to download into .*", line) for line in lines)
    result = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True)
    assert result.stdout.strip() == "caffe version 1.0.0"
    assert [path.name for path in tmp_path.iterdir()] == ["my caffe prefix"]
    shutil.rmtree(prefix)


def test_tiny_net_trains(caffe, tmp_path):
    solver = write_solver(tmp_path, max_iter=5)
    result = subprocess.run([str(caffe), "train", "-solver", str(solver)], cwd=tmp_path,
                            capture_output=True, text=True, env=QUIET_GLOG, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Optimization Done" in result.stderr
    assert "Iteration 5, loss = " in result.stderr
    assert (tmp_path / "tiny_iter_5.caffemodel").is_file()


def test_sigint_reaches_caffe_through_the_wrapper(caffe, tmp_path):
    solver = write_solver(tmp_path, max_iter=100_000_000)
    log = tmp_path / "train.log"
    with log.open("w") as stream:
        process = subprocess.Popen([str(caffe), "train", "-solver", str(solver)], cwd=tmp_path,
                                   stdout=stream, stderr=subprocess.STDOUT, env=QUIET_GLOG)
    try:
        wait_for(lambda: "Iteration 10," in log.read_text(), "Caffe's iteration 10")
        assert Path(f"/proc/{process.pid}/exe").resolve().name.startswith("ld-")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    output = log.read_text()
    assert "Optimization stopped early." in output
    assert "Optimization Done." in output


def test_install_without_apt_get_fails_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CaffegenError, match=r"^apt-get not found: .*apt install caffe-cpu.*--caffe PATH$"):
        install_caffe(tmp_path / "prefix")


def test_install_refuses_a_prefix_with_a_colon(tmp_path):
    with pytest.raises(CaffegenError, match="may not contain ':'"):
        install_caffe(tmp_path / "a:b")


def test_install_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(CaffegenError, match="is not a caffegen Caffe install"):
        install_caffe(tmp_path, force=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.fixture
def search_env(monkeypatch, tmp_path):
    """A fake executable at every step of find_caffe's search, with the environment pointing at them."""
    fakes = {
        "explicit": make_executable(tmp_path / "explicit" / "caffe"),
        "CAFFE_BIN": make_executable(tmp_path / "bin-var" / "caffe"),
        "CAFFE_ROOT": make_executable(tmp_path / "root" / "build" / "tools" / "caffe"),
        "PATH": make_executable(tmp_path / "on-path" / "caffe"),
        "prefix": make_executable(tmp_path / "prefix" / "bin" / "caffe"),
    }
    monkeypatch.setenv("CAFFE_BIN", str(fakes["CAFFE_BIN"]))
    monkeypatch.setenv("CAFFE_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("PATH", str(tmp_path / "on-path"))
    monkeypatch.setenv("CAFFEGEN_CAFFE_PREFIX", str(tmp_path / "prefix"))
    return fakes


def test_find_caffe_search_order(search_env, monkeypatch, tmp_path):
    assert find_caffe(search_env["explicit"]) == search_env["explicit"]
    assert find_caffe() == search_env["CAFFE_BIN"]
    monkeypatch.delenv("CAFFE_BIN")
    assert find_caffe() == search_env["CAFFE_ROOT"]
    monkeypatch.delenv("CAFFE_ROOT")
    assert find_caffe() == search_env["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_caffe() == search_env["prefix"]


def test_find_caffe_skips_a_caffe_root_without_a_build(search_env, monkeypatch, tmp_path):
    monkeypatch.delenv("CAFFE_BIN")
    monkeypatch.setenv("CAFFE_ROOT", str(tmp_path / "source-only"))
    assert find_caffe() == search_env["PATH"]


def test_find_caffe_rejects_a_missing_or_non_executable_explicit_path(search_env, tmp_path):
    with pytest.raises(CaffeNotFound, match="no such file"):
        find_caffe(tmp_path / "missing")
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(CaffeNotFound, match="not an executable file"):
        find_caffe(plain)


def test_find_caffe_rejects_a_broken_caffe_bin(search_env, monkeypatch, tmp_path):
    monkeypatch.setenv("CAFFE_BIN", str(tmp_path / "missing"))
    with pytest.raises(CaffeNotFound, match=r"^CAFFE_BIN .*missing: no such file$"):
        find_caffe()


def test_find_caffe_explains_what_it_searched(monkeypatch, tmp_path):
    monkeypatch.delenv("CAFFE_BIN", raising=False)
    monkeypatch.delenv("CAFFE_ROOT", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CAFFEGEN_CAFFE_PREFIX", str(tmp_path / "empty-prefix"))
    with pytest.raises(CaffeNotFound) as raised:
        find_caffe()
    message = str(raised.value)
    for searched in ("$CAFFE_BIN", "$CAFFE_ROOT", "caffe on PATH", str(tmp_path / "empty-prefix" / "bin" / "caffe"),
                     "caffegen install-caffe"):
        assert searched in message


def test_unreachable_archive_gives_a_one_line_error(monkeypatch, tmp_path):
    # Nothing listens on port 9 of this machine: the connection is refused at once.
    monkeypatch.setattr(apt, "mirrors", lambda: ["http://127.0.0.1:9/debian"])
    with pytest.raises(CaffegenError) as raised:
        install_caffe(tmp_path / "prefix", log=lambda line: None)
    message = str(raised.value)
    assert message.startswith("cannot download the Debian bullseye package index (http://127.0.0.1:9/debian: ")
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_openblas_gets_its_avx512_kernels_where_the_cpu_has_them(caffe):
    """OpenBLAS 0.3.13 runs AMD's AVX-512 CPUs on Haswell kernels unless the wrapper names SkylakeX."""
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    unset = {name: value for name, value in os.environ.items() if name != "OPENBLAS_CORETYPE"}

    def core(command, **env):
        done = subprocess.run([*command, "--version"], capture_output=True, text=True,
                              env=dict(unset, OPENBLAS_VERBOSE="2", **env))
        return re.search(r"^Core: (\S+)$", done.stderr, flags=re.MULTILINE)[1]

    if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= set(flags):
        assert core([str(caffe)]) == "SkylakeX"
    else:
        assert core([str(caffe)]) == core(wrappers.loader_command(caffe.parent.parent, "caffe"))
    assert core([str(caffe)], OPENBLAS_CORETYPE="Haswell") == "Haswell", "a core the user names is left alone"


def test_reinstalling_rewrites_the_wrappers_an_earlier_caffegen_wrote(caffe, tmp_path):
    real, prefix = caffe.parent.parent, tmp_path / "prefix"
    prefix.mkdir()
    for folder in ("lib", "usr"):
        (prefix / folder).symlink_to(real / folder)
    shutil.copy(real / install.MARKER, prefix / install.MARKER)
    (prefix / "bin").mkdir()
    old = prefix / "bin" / "caffe"
    old.write_text("#!/bin/sh\nexec false\n")
    old.chmod(0o755)
    lines = []
    assert install_caffe(prefix, log=lines.append) == old
    assert lines[-1] == f"rewrote the 1 wrappers in {prefix / 'bin'} that an earlier caffegen wrote"
    assert subprocess.run([str(old), "--version"], capture_output=True, text=True).stdout == "caffe version 1.0.0\n"
    lines.clear()
    install_caffe(prefix, log=lines.append)
    assert lines == [f"Caffe is already installed in {prefix}"]
