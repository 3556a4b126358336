"""The .debs of an install: downloaded into a small verified cache, and unpacked with ``dpkg-deb -x``."""

import hashlib
import re
import subprocess

from caffegen.errors import CaffegenError


def deb_cache():
    """Where downloaded .debs are kept between installs: debs/ in caffegen's cache."""
    from caffegen.io.download import cache_home
    return cache_home() / "debs"


def fetch(apt, packages, cache, log):
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


def unpack(debs, root):
    """Unpack the .debs ``debs`` into the folder ``root``."""
    for deb in debs:
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
        if result.returncode != 0:
            raise CaffegenError(f"cannot unpack {deb.name}: {result.stderr.strip()}")


def caffe_tools(caffe_deb):
    """Names of the programs the caffe package installs in /usr/bin."""
    listing = subprocess.run(["dpkg-deb", "--contents", str(caffe_deb)], capture_output=True, text=True)
    tools = re.findall(r"^-\S+ .* \./usr/bin/([^/\s]+)$", listing.stdout, flags=re.MULTILINE)
    if "caffe" not in tools:
        raise CaffegenError(f"unexpected layout: {caffe_deb.name} has no usr/bin/caffe")
    return tools
