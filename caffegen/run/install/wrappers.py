"""The wrappers that run each Caffe tool of an install through the prefix's own dynamic loader, OpenBLAS first.

bullseye's libcaffe links ``libblas.so.3``; ``libopenblas0-pthread`` is installed alongside and
its directory comes first on the loader's library path, so Caffe runs on OpenBLAS rather than the
reference BLAS. That OpenBLAS (0.3.13) takes the AVX-512 CPUs it does not know (AMD Zen 4 and 5)
for Haswell; on a CPU with AVX-512 F, DQ, BW and VL the wrappers ask for its SkylakeX kernels, as
later OpenBLAS releases do for Zen 4 (ResNet-50's forward pass ran 15 % faster on a Zen 5), unless
``OPENBLAS_CORETYPE`` is set. ``caffegen install-caffe`` rewrites the wrappers of an existing
install that an earlier caffegen wrote.
"""

from caffegen.errors import CaffegenError
from caffegen.io.files import write_atomic
from caffegen.run.install.apt import SUITE


def loader_command(root, tool, installed_at=None):
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


def write_wrappers(root, prefix, tools):
    """Write an executable <root>/bin/<tool> for each tool, running it from `prefix` once installed there."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        wrapper = bin_dir / tool
        wrapper.write_text(_wrapper_script(tool, loader_command(root, tool, installed_at=prefix)))
        wrapper.chmod(0o755)


def refresh_wrappers(prefix, log):
    """Rewrite the wrappers of the install in ``prefix`` that differ from the ones this caffegen writes."""
    wanted = {wrapper: _wrapper_script(wrapper.name, loader_command(prefix, wrapper.name))
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
