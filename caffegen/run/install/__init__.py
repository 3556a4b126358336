"""Install a CPU-only BVLC Caffe 1.0 into a user-level prefix, without root.

Debian 12 has no Caffe package, but Debian 11 "bullseye" ships a CPU_ONLY build
of Caffe 1.0 (``caffe`` + ``libcaffe1``). ``apt`` resolves that package and its
dependency closure under a private apt configuration, ``debs`` downloads the .debs
into a small cache and unpacks them, and ``wrappers`` writes shell wrappers that run
each Caffe tool through the prefix's own dynamic loader, on OpenBLAS.

Layout of an install:

    <prefix>/bin/caffe, ...              wrappers, the only things meant to be run
    <prefix>/lib/<triplet>/ld-*.so       bullseye's dynamic loader
    <prefix>/usr/...                     the unpacked packages
    <prefix>/.caffegen-install.json      what was installed; its presence marks
                                         a complete install

An install is built in a temporary directory beside the prefix, smoke-tested,
then renamed into place, so an interrupted install never leaves a half-made
prefix behind.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.files import built_beside
from caffegen.run.install.apt import KEYRING, SUITE, private_apt, resolve
from caffegen.run.install.debs import caffe_tools, deb_cache, fetch, unpack
from caffegen.run.install.wrappers import loader_command, refresh_wrappers, write_wrappers

MARKER = ".caffegen-install.json"
REQUIRED_TOOLS = ("apt-get", "apt-cache", "dpkg", "dpkg-deb")
NOT_DEBIAN = (
    "{tool} not found: caffegen can install Caffe only on Debian/Ubuntu; "
    "on Ubuntu use `apt install caffe-cpu`, elsewhere pass --caffe PATH"
)


def default_prefix():
    """Return the install prefix: $CAFFEGEN_CAFFE_PREFIX, else $XDG_DATA_HOME/caffegen/caffe-1.0."""
    explicit = os.environ.get("CAFFEGEN_CAFFE_PREFIX")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "caffegen" / "caffe-1.0"


def install_caffe(prefix=None, *, force=False, log=None):
    """Install Caffe into `prefix` (default: default_prefix()) and return the path of its `caffe` wrapper.

    An existing complete install is reused unless `force` is true.  `log`
    receives one line per progress step (default: printed to stderr).
    """
    prefix = Path(prefix).expanduser().absolute() if prefix else default_prefix().absolute()
    log = log or _print_to_stderr
    wrapper = prefix / "bin" / "caffe"
    if not force and _is_installed(prefix):
        log(f"Caffe is already installed in {prefix}")
        refresh_wrappers(prefix, log)
        return wrapper
    _check_prefix(prefix)
    _check_host()
    try:
        record = _install(prefix, log)
    except OSError as error:
        raise CaffegenError(f"cannot install Caffe into {prefix}: {error}") from None
    try:
        _check_runs([str(wrapper)])
    except CaffegenError:
        (prefix / MARKER).unlink()
        raise
    log(f"installed Caffe {record['packages']['caffe']} in {prefix}")
    return wrapper


def libcaffe_path(prefix=None):
    """Return the path of the real libcaffe shared library inside an installed prefix."""
    prefix = Path(prefix) if prefix else default_prefix()
    candidates = sorted(p for p in prefix.glob("usr/lib/*/libcaffe.so*") if not p.is_symlink())
    if not candidates:
        raise CaffegenError(f"no libcaffe in {prefix}: run `caffegen install-caffe`")
    return candidates[0]


def _print_to_stderr(line):
    print(line, file=sys.stderr)


def _is_installed(prefix):
    wrapper = prefix / "bin" / "caffe"
    return (prefix / MARKER).is_file() and wrapper.is_file() and os.access(wrapper, os.X_OK)


def _check_prefix(prefix):
    # The loader's --library-path splits on both characters.
    if ":" in str(prefix) or ";" in str(prefix):
        raise CaffegenError(f"the Caffe prefix may not contain ':' or ';': {prefix}")
    if _is_foreign(prefix):
        raise CaffegenError(
            f"{prefix} exists and is not a caffegen Caffe install: remove it or choose another prefix"
        )


def _is_foreign(prefix):
    """Whether `prefix` holds something other than an install of ours, which must not be replaced."""
    if prefix.is_symlink() or (prefix.exists() and not prefix.is_dir()):
        return True
    return prefix.is_dir() and not (prefix / MARKER).is_file() and any(prefix.iterdir())


def _check_host():
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            raise CaffegenError(NOT_DEBIAN.format(tool=tool))
    if not KEYRING.is_file():
        raise CaffegenError(
            f"{KEYRING} not found: install the debian-archive-keyring package "
            "(it verifies the Debian 11 packages caffegen downloads)"
        )


def _install(prefix, log):
    """Build an install in a directory beside `prefix` that replaces it once complete."""
    with built_beside(prefix) as root, tempfile.TemporaryDirectory(prefix=".apt.", dir=prefix.parent) as apt_dir:
        record = _build(root, prefix, Path(apt_dir), log)
        (root / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _build(root, prefix, apt_dir, log):
    """Fill `root` with a working install whose wrappers point at `prefix`; return the install record."""
    apt, mirror = private_apt(apt_dir, log)
    packages = resolve(apt)
    debs = fetch(apt, packages, deb_cache(), log)
    log(f"unpacking {len(debs)} packages")
    unpack(debs, root)
    tools = caffe_tools(dict(zip((name for name, _ in packages), debs))["caffe"])
    write_wrappers(root, prefix, tools)
    _check_runs(loader_command(root, "caffe"))
    return {
        "suite": SUITE,
        "mirror": mirror,
        "packages": dict(packages),
        "tools": tools,
    }


def _check_runs(caffe_command):
    """Run `caffe --version` through `caffe_command` and raise CaffegenError unless it works."""
    try:
        result = subprocess.run([*caffe_command, "--version"], capture_output=True, text=True)
    except OSError as error:
        raise CaffegenError(f"the installed caffe does not run: {error}") from None
    if result.returncode != 0 or "caffe version" not in result.stdout:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise CaffegenError(f"the installed caffe does not run: {output[-1] if output else result.returncode}")
