"""The Debian 11 packages of Caffe, resolved with apt-get under a private configuration.

Its own sources, state, status and cache directories: of the system's apt setup only the Debian
mirror address is read, and nothing is written.
"""

import os
import re
import subprocess
from pathlib import Path

from caffegen.errors import CaffegenError

SUITE = "bullseye"
PACKAGES = ("caffe", "libopenblas0-pthread")
MIRRORS = ("http://deb.debian.org/debian", "http://archive.debian.org/debian")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SYSTEM_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


class Apt:
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


def private_apt(apt_dir, log):
    """Return an Apt whose package index for bullseye is up to date, and the mirror it uses."""
    failures = []
    for number, mirror in enumerate(mirrors()):
        log(f"fetching the Debian 11 ({SUITE}) package index from {mirror}")
        apt = Apt(apt_dir / str(number), mirror)
        result = subprocess.run(["apt-get", "update"], env=apt.env, capture_output=True, text=True)
        if result.returncode == 0 and apt.has_index():
            return apt, mirror
        failures.append(f"{mirror}: {_apt_error(result.stderr)}")
    raise CaffegenError(f"cannot download the Debian {SUITE} package index ({'; '.join(failures)})")


def mirrors():
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


def resolve(apt):
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
