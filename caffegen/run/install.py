"""Install a CPU-only BVLC Caffe 1.0 into a user-level prefix, without root.

Debian 12 has no Caffe package, but Debian 11 "bullseye" ships a CPU_ONLY build
of Caffe 1.0 (``caffe`` + ``libcaffe1``).  This module resolves that package and
its dependency closure with apt-get under a private configuration (its own
sources, state, status and cache directories; of the system's apt setup only
the Debian mirror address is read, and nothing is written), downloads the .debs
into a small cache, unpacks them with ``dpkg-deb -x`` and writes shell wrappers that run
each Caffe tool through the prefix's own dynamic loader.

bullseye's libcaffe links ``libblas.so.3``; ``libopenblas0-pthread`` is
installed alongside and its directory comes first on the loader's library
path, so Caffe runs on OpenBLAS rather than the reference BLAS. That OpenBLAS
(0.3.13) takes the AVX-512 CPUs it does not know (AMD Zen 4 and 5) for Haswell;
on a CPU with AVX-512 F, DQ, BW and VL the wrappers ask for its SkylakeX kernels,
as later OpenBLAS releases do for Zen 4 (ResNet-50's forward pass ran 15 % faster
on a Zen 5), unless ``OPENBLAS_CORETYPE`` is set. ``caffegen install-caffe``
rewrites the wrappers of an existing install that an earlier caffegen wrote.

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

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.files import built_beside, write_atomic

SUITE = "bullseye"
PACKAGES = ("caffe", "libopenblas0-pthread")
MIRRORS = ("http://deb.debian.org/debian", "http://archive.debian.org/debian")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SYSTEM_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
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
        _refresh_wrappers(prefix, log)
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
    apt, mirror = _private_apt(apt_dir, log)
    packages = _resolve(apt)
    debs = _fetch(apt, packages, _deb_cache(), log)
    log(f"unpacking {len(debs)} packages")
    _unpack(debs, root)
    tools = _caffe_tools(dict(zip((name for name, _ in packages), debs))["caffe"])
    _write_wrappers(root, prefix, tools)
    _check_runs(_loader_command(root, "caffe"))
    return {
        "suite": SUITE,
        "mirror": mirror,
        "packages": dict(packages),
        "tools": tools,
    }


class _Apt:
    """apt-get and apt-cache run against a private configuration in one directory."""

    def __init__(self, directory, mirror):
        self.directory = directory
        etc = directory / "etc"
        for sub in ("etc/apt.conf.d", "etc/sources.list.d", "etc/preferences.d",
                    "state/lists/partial", "cache/archives/partial", "log"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "status").write_text("")
        (etc / "sources.list").write_text(f"deb [signed-by={KEYRING}] {mirror} {SUITE} main\n")
        config = directory / "apt.conf"
        config.write_text(_apt_config(directory, _native_architecture()))
        self.env = dict(os.environ, APT_CONFIG=str(config), LC_ALL="C")

    def run(self, args, cwd=None):
        """Run an apt command and return its stdout; raise CaffegenError with apt's own error if it fails."""
        result = subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise CaffegenError(f"`{' '.join(args[:2])}` failed: {_apt_error(result.stderr)}")
        return result.stdout

    def has_index(self):
        """Whether the last `apt-get update` stored a package index."""
        return any((self.directory / "state" / "lists").glob("*_Packages*"))


def _apt_config(directory, architecture):
    # Dir::Etc moves sources.list, apt.conf.d, preferences and keyrings into the
    # private directory; the empty status file means nothing counts as installed.
    # apt running as root would drop to the _apt user, which cannot enter the
    # private directories; it falls back to root anyway, this only avoids the warning.
    return (
        f'Dir::Etc "{directory}/etc";\n'
        f'Dir::State "{directory}/state";\n'
        f'Dir::State::status "{directory}/status";\n'
        f'Dir::Cache "{directory}/cache";\n'
        f'Dir::Log "{directory}/log";\n'
        f'APT::Architecture "{architecture}";\n'
        f'APT::Architectures {{ "{architecture}"; }};\n'
        'APT::Sandbox::User "root";\n'
    )


def _apt_error(stderr):
    """The most telling line of apt's stderr: its first error, else its first failed fetch."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for start in ("E:", "W: Failed to fetch", "W:"):
        for line in lines:
            if line.startswith(start):
                return line
    return lines[-1] if lines else "no error message"


def _native_architecture():
    result = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        raise CaffegenError(f"`dpkg --print-architecture` failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _private_apt(apt_dir, log):
    """Return an _Apt whose package index for bullseye is up to date, and the mirror it uses."""
    failures = []
    for number, mirror in enumerate(_mirrors()):
        log(f"fetching the Debian 11 ({SUITE}) package index from {mirror}")
        apt = _Apt(apt_dir / str(number), mirror)
        result = subprocess.run(["apt-get", "update"], env=apt.env, capture_output=True, text=True)
        if result.returncode == 0 and apt.has_index():
            return apt, mirror
        failures.append(f"{mirror}: {_apt_error(result.stderr)}")
    raise CaffegenError(f"cannot download the Debian {SUITE} package index ({'; '.join(failures)})")


def _mirrors():
    """Debian mirrors to try: the one this system's apt uses, then the official hosts."""
    system = _system_mirror()
    return list(dict.fromkeys(([system] if system else []) + list(MIRRORS)))


def _system_mirror():
    """The first http(s) URI ending in /debian in the system's apt sources, or None."""
    uri = re.compile(r"(?:^|\s)(https?://\S+/debian)/?(?=\s|$)")
    for path in _system_source_files():
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            match = uri.search(line.split("#", 1)[0])
            if match:
                return match.group(1)
    return None


def _system_source_files():
    for source in SYSTEM_SOURCES:
        if source.is_dir():
            yield from sorted(source.glob("*.sources"))
            yield from sorted(source.glob("*.list"))
        else:
            yield source


def _resolve(apt):
    """Return [(name, version)] for Caffe, OpenBLAS and their dependencies, in apt's install order.

    Essential packages (coreutils, dpkg, tar, ...) are left out: every Debian
    system has them and Caffe needs none of them at run time.
    """
    output = apt.run(["apt-get", "install", "--simulate", "--no-install-recommends", *PACKAGES])
    packages = re.findall(r"^Inst (\S+) \((\S+) ", output, flags=re.MULTILINE)
    if not any(name == "caffe" for name, _ in packages):
        raise CaffegenError(f"unexpected apt output: Debian {SUITE} offers no caffe package")
    essential = _essential(apt, [name for name, _ in packages])
    return [(name, version) for name, version in packages if name not in essential]


def _essential(apt, names):
    output = apt.run(["apt-cache", "show", "--no-all-versions", *names])
    essential = set()
    for record in output.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Essential): (\S+)", record, flags=re.MULTILINE))
        if fields.get("Essential") == "yes":
            essential.add(fields["Package"])
    return essential


def _deb_cache():
    from caffegen.io.download import cache_home
    return cache_home() / "debs"


def _fetch(apt, packages, cache, log):
    """Make sure `cache` holds a verified .deb for every package; return their paths in `packages` order."""
    cache.mkdir(parents=True, exist_ok=True)
    wanted = [f"{name}={version}" for name, version in packages]
    entries = _download_entries(apt, wanted)
    missing = {spec: entry for spec, entry in zip(wanted, entries) if not _is_cached(cache, entry)}
    total_mb = sum(size for _, size, _ in entries) / 1e6
    log(f"{len(entries)} packages ({total_mb:.1f} MB), {len(missing)} to download into {cache}")
    if missing:
        apt.run(["apt-get", "download", *missing], cwd=cache)
    for filename, size, digest in missing.values():
        if not _is_cached(cache, (filename, size, digest)):
            raise CaffegenError(f"apt-get download did not produce a valid {cache / filename}")
    _prune_cache(cache, {filename for filename, _, _ in entries})
    return [cache / filename for filename, _, _ in entries]


def _download_entries(apt, wanted):
    """Return [(filename, size, 'ALGO:hexdigest')] for `wanted`, in order, as apt-get download would store them."""
    # Run where no .deb exists: apt-get leaves out packages already in its working directory.
    output = apt.run(["apt-get", "download", "--print-uris", *wanted], cwd=apt.directory)
    entries = re.findall(r"^'\S+' (\S+) (\d+) (\S+)$", output, flags=re.MULTILINE)
    if len(entries) != len(wanted):
        raise CaffegenError(f"unexpected apt output: {len(entries)} download URIs for {len(wanted)} packages")
    by_name = {filename.split("_", 1)[0]: (filename, int(size), digest) for filename, size, digest in entries}
    return [by_name[spec.split("=", 1)[0]] for spec in wanted]


def _is_cached(cache, entry):
    filename, size, digest = entry
    path = cache / filename
    if not path.is_file() or path.stat().st_size != size:
        return False
    algorithm, _, expected = digest.partition(":")
    actual = hashlib.new(algorithm.lower().removesuffix("sum"))
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            actual.update(block)
    return actual.hexdigest() == expected


def _prune_cache(cache, keep):
    for path in cache.glob("*.deb"):
        if path.name not in keep:
            path.unlink()


def _unpack(debs, root):
    for deb in debs:
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
        if result.returncode != 0:
            raise CaffegenError(f"cannot unpack {deb.name}: {result.stderr.strip()}")


def _caffe_tools(caffe_deb):
    """Names of the programs the caffe package installs in /usr/bin."""
    listing = subprocess.run(["dpkg-deb", "--contents", str(caffe_deb)], capture_output=True, text=True)
    tools = re.findall(r"^-\S+ .* \./usr/bin/([^/\s]+)$", listing.stdout, flags=re.MULTILINE)
    if "caffe" not in tools:
        raise CaffegenError(f"unexpected layout: {caffe_deb.name} has no usr/bin/caffe")
    return tools


def _loader_command(root, tool, installed_at=None):
    """The argument list that runs usr/bin/`tool` through the loader unpacked in `root`.

    Paths are those the files will have once `root` is renamed to `installed_at`
    (default: where they are now).
    """
    loaders = sorted(root.glob("lib/*/ld-linux*.so.*"))
    if not loaders:
        raise CaffegenError(f"unexpected layout: no dynamic loader under {root / 'lib'}")
    base = installed_at or root
    triplet = loaders[0].parent.name
    library_path = [
        base / "usr/lib" / triplet / "openblas-pthread",
        base / "lib" / triplet,
        base / "usr/lib" / triplet,
        base / "lib",
        base / "usr/lib",
    ]
    loader = base / loaders[0].relative_to(root)
    return [str(loader), "--library-path", ":".join(map(str, library_path)), str(base / "usr/bin" / tool)]


def _write_wrappers(root, prefix, tools):
    """Write an executable <root>/bin/<tool> for each tool, running it from `prefix` once installed there."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        wrapper = bin_dir / tool
        wrapper.write_text(_wrapper_script(tool, _loader_command(root, tool, installed_at=prefix)))
        wrapper.chmod(0o755)


def _refresh_wrappers(prefix, log):
    """Rewrite the wrappers of the install in ``prefix`` that differ from the ones this caffegen writes."""
    wanted = {wrapper: _wrapper_script(wrapper.name, _loader_command(prefix, wrapper.name))
              for wrapper in sorted((prefix / "bin").iterdir())}
    stale = [wrapper for wrapper, text in wanted.items() if wrapper.read_text() != text]
    try:
        for wrapper in stale:
            write_atomic(wrapper, wanted[wrapper])
            wrapper.chmod(0o755)
    except (CaffegenError, OSError) as error:
        log(f"the wrappers in {prefix / 'bin'} are an earlier caffegen's and stay so ({error}); "
            "caffegen install-caffe --force writes new ones")
        return
    if stale:
        log(f"rewrote the {len(stale)} wrappers in {prefix / 'bin'} that an earlier caffegen wrote")


# Runs before the exec: asks OpenBLAS for its AVX-512 kernels where the CPU has what they use.
AVX512_KERNELS = """\
if [ -z "$OPENBLAS_CORETYPE" ] && [ -r /proc/cpuinfo ]; then
    flags=" $(grep -m1 '^flags' /proc/cpuinfo) "
    coretype=SkylakeX
    for flag in avx512f avx512dq avx512bw avx512vl; do
        case "$flags" in *" $flag "*) ;; *) coretype= ;; esac
    done
    if [ -n "$coretype" ]; then OPENBLAS_CORETYPE=$coretype; export OPENBLAS_CORETYPE; fi
fi
"""


def _wrapper_script(tool, command):
    quoted = " ".join(_sh_quote(arg) for arg in command)
    return (
        "#!/bin/sh\n"
        f"# {tool} from Debian {SUITE}, run through the loader in its prefix, OpenBLAS first.\n"
        f"{AVX512_KERNELS}"
        f'exec {quoted} "$@"\n'
    )


def _sh_quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _check_runs(caffe_command):
    """Run `caffe --version` through `caffe_command` and raise CaffegenError unless it works."""
    try:
        result = subprocess.run([*caffe_command, "--version"], capture_output=True, text=True)
    except OSError as error:
        raise CaffegenError(f"the installed caffe does not run: {error}") from None
    if result.returncode != 0 or "caffe version" not in result.stdout:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise CaffegenError(f"the installed caffe does not run: {output[-1] if output else result.returncode}")

