"""Downloading a file into a cache, verified before it takes its place.

A file is written to ``NAME.part`` beside its place and renamed only after its checksum passes (a
SHA-1 or SHA-256 where its source publishes one, else its size), so a good file is never replaced by
a bad one. An interrupted download resumes with an HTTP Range request; a server that ignores the
range and answers 200 is read again from the start. A download is bounded: it stops past the file's
size (the catalogue's, else ``MAX_SIZE``), below ``MIN_RATE`` over a window of ``RATE_WINDOW_S``, and
when the server is silent for ``TIMEOUT_S``. A file without a full published checksum gets the SHA-256
of its first download recorded beside it (``NAME.sha256``, as ``sha256sum`` writes it), and is
verified against that record from then on. Errors are one line: the URL, the reason, the fix.
"""

import errno
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from caffegen import __version__
from caffegen.errors import CaffegenError
from caffegen.io.files import file_digest, write_atomic
from caffegen.reporting import SilentReporter

HOME_VARIABLE = "CAFFEGEN_HOME"
PART = ".part"
RECORD = ".sha256"
CHUNK = 1 << 20
TIMEOUT_S = 60  # for the server's answer, and for each read of the file
MAX_SIZE = 2**31 - 1  # where the catalogue gives no size: Caffe reads no larger protobuf (kProtoReadBytesLimit)
MIN_RATE = 1024  # bytes per second over each RATE_WINDOW_S: a slower download has stalled
RATE_WINDOW_S = 60
RETRIES = 3
FULL_SHA256 = 64
MIRROR_HINT = "or fetch it from a mirror (--mirror URL or $CAFFEGEN_ZOO_MIRROR)"


def cache_home(environ=None):
    """caffegen's cache: ``$CAFFEGEN_HOME``, else ``$XDG_CACHE_HOME/caffegen``, else ``~/.cache/caffegen``."""
    environ = os.environ if environ is None else environ
    if environ.get(HOME_VARIABLE):
        return Path(environ[HOME_VARIABLE]).expanduser()
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "caffegen"


@dataclass(frozen=True)
class Remote:
    """A file to download: where from, its name on disk, and what it must be."""

    url: str
    name: str
    sha1: str = None
    sha256: str = None  # the full digest, or the prefix its source publishes
    size: int = None  # in bytes, exact
    checksum_from: str = None  # where the checksum is published, in words

    @property
    def checksum(self):
        """(algorithm, expected hex digest or its prefix), or None when the source publishes none."""
        if self.sha1:
            return "sha1", self.sha1.lower()
        if self.sha256:
            return "sha256", self.sha256.lower()
        return None

    @property
    def fully_checksummed(self):
        return bool(self.sha1) or len(self.sha256 or "") == FULL_SHA256

    @property
    def verified_by(self):
        """How a download of this file is checked, in words."""
        if self.sha1:
            return "sha1"
        if self.sha256:
            return "sha256" if self.fully_checksummed else f"sha256 prefix {self.sha256}"
        return "size only" if self.size else "none"


@dataclass(frozen=True)
class Limits:
    """How long a server may be silent, the least rate a download keeps, the most bytes of a file of unknown size."""

    timeout_s: float = TIMEOUT_S
    min_rate: float = MIN_RATE
    rate_window_s: float = RATE_WINDOW_S
    max_size: int = MAX_SIZE


LIMITS = Limits()


@dataclass(frozen=True)
class Fetched:
    """A verified file on disk, and whether this call downloaded it (or found it there)."""

    path: Path
    downloaded: bool
    recorded_sha256: str = None  # the SHA-256 this call recorded for a file without a full checksum


def mirror_url(mirror, *names):
    """The URL of ``names`` (a folder, then a file) on a mirror given as a URL or a local folder."""
    base = mirror if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", mirror) else Path(mirror).resolve().as_uri()
    return "/".join([base.rstrip("/"), *(quote(name) for name in names)])


def record_path(path):
    """Where the SHA-256 of the first download of ``path`` is recorded."""
    return Path(path).with_name(Path(path).name + RECORD)


def part_path(path):
    return Path(path).with_name(Path(path).name + PART)


def fetch(remote, folder, url=None, offline=False, reporter=None, retries=RETRIES, limits=LIMITS):
    """The verified file ``remote`` in ``folder``: the one there if it passes, else a download from ``url``.

    ``url`` defaults to the remote's own (a mirror's otherwise). ``offline`` uses only what is there.
    ``limits`` bounds the download's time and size.
    """
    url = url or remote.url
    target = Path(folder) / remote.name
    if target.is_file():
        problem = problem_with(remote, target)
        if problem is None:
            return Fetched(target, False)
        if offline:
            raise CaffegenError(f"{problem}; run without --offline to download it again", target)
    elif offline:
        raise CaffegenError(f"not downloaded yet, and --offline is given: run without --offline to download it "
                            f"from {url} {MIRROR_HINT}", target)
    _make_folder(target.parent)
    part = part_path(target)
    resumed = _download(url, part, remote, reporter or SilentReporter(), retries, limits)
    problem = problem_with(remote, part, record_path(target))
    if problem and resumed:  # the part kept from before may be what is wrong: try once from the start
        part.unlink()
        _download(url, part, remote, reporter or SilentReporter(), retries, limits)
        problem = problem_with(remote, part, record_path(target))
    if problem:
        raise CaffegenError(f"{url}: {problem}{_html_hint(part)}; the download is kept at {part}: delete it to "
                            f"download again, {MIRROR_HINT}")
    recorded = None
    if not remote.fully_checksummed and not record_path(target).is_file():
        recorded = file_digest(part, "sha256")
        write_atomic(record_path(target), f"{recorded}  {remote.name}\n")
    os.replace(part, target)
    return Fetched(target, True, recorded)


def problem_with(remote, path, record=None):
    """What is wrong with ``path`` as the file ``remote`` (checksum, size, or recorded SHA-256), or None."""
    path = Path(path)
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"expected {remote.size} bytes, got {size}"
    if remote.checksum:
        algorithm, expected = remote.checksum
        got = file_digest(path, algorithm)
        if not got.startswith(expected):
            return f"checksum mismatch: expected {algorithm} {expected}, got {got}"
    recorded = recorded_sha256(record or record_path(path))
    if recorded:
        got = file_digest(path, "sha256")
        if got != recorded:
            return (f"differs from the first download recorded in {record or record_path(path)}: expected sha256 "
                    f"{recorded}, got {got} (if its publisher changed the file, delete the record to accept it)")
    return None


def recorded_sha256(record):
    """The SHA-256 a record file holds, or None when there is none."""
    try:
        text = Path(record).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    match = re.match(r"\s*([0-9a-fA-F]{64})\b", text)
    if not match:
        raise CaffegenError("unreadable SHA-256 record (expected '<sha256>  <name>'); delete it to record the "
                            "file's current SHA-256", record)
    return match.group(1).lower()


class _DroppedError(Exception):
    """The connection ended before the whole file came."""


def _download(url, part, remote, reporter, retries, limits):
    """Download ``url`` into ``part``, resuming what it holds; return whether it resumed a kept part."""
    resumed = part.is_file() and part.stat().st_size > 0
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, remote, reporter, limits)
            return resumed
        except _DroppedError as dropped:
            if attempt == retries:
                raise CaffegenError(f"{url}: the connection dropped {dropped} ({retries + 1} tries): run the command "
                                    f"again to resume from {part}, {MIRROR_HINT}") from None


def _transfer(url, part, remote, reporter, limits):
    cap = remote.size if remote.size is not None else limits.max_size
    have = part.stat().st_size if part.is_file() else 0
    if have > cap:  # a part kept from before that is already too long: start again
        part.unlink()
        have = 0
    headers = {"User-Agent": f"caffegen/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=limits.timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            return  # nothing after what the part holds: it is whole, or the checksum will say otherwise
        raise CaffegenError(_http_problem(url, error)) from None
    except TimeoutError:  # connected, but the answer's wait timed out (a failed connect is a URLError)
        raise CaffegenError(f"{url}: connected but got no answer within {limits.timeout_s:g} s: the server is "
                            f"overloaded or down; try again later, {MIRROR_HINT}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise CaffegenError(_connection_problem(url, error)) from None
    with response:
        if (response.status or 200) == 206:
            sent = response.headers.get("Content-Range")
            if _range_start(sent) != have:
                part.unlink()
                raise _DroppedError(f"(the server sent another range than asked for: {sent})")
            mode = "ab"
        else:  # the server ignored the range: start again
            mode, have = "wb", 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if total is not None and total > cap:
            raise CaffegenError(f"{url}: {_expected(remote, cap)}, but the server announces {total}: nothing was "
                                f"downloaded; check the file's URL and size in the catalogue, {MIRROR_HINT}")
        _stream(response, part, mode, url, (have, total, cap), remote, reporter, limits)
    got = part.stat().st_size
    if total is not None and got < total:
        raise _DroppedError(f"after {got} of {total} bytes")


def _stream(response, part, mode, url, sizes, remote, reporter, limits):
    have, total, cap = sizes
    pace = _Pace(limits, have)
    try:
        with open(part, mode) as out, reporter.progress(total, "B", remote.name, initial=have) as bar:
            while True:
                block = _read(response, out)
                if not block:
                    return
                came = out.tell() + len(block)
                if came > cap:
                    break
                out.write(block)
                bar.advance(len(block))
                pace.check(came, url, part)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            free = shutil.disk_usage(part.parent).free
            more = f", {(total - part.stat().st_size) / 1e6:.1f} MB to go" if total else ""
            raise CaffegenError(f"{url}: no space left on the device of {part} ({free / 1e6:.1f} MB free{more}): "
                                f"free some space and run again to resume, or set ${HOME_VARIABLE} to a larger "
                                "disk") from None
        raise CaffegenError(f"{url}: cannot write {part}: {error.strerror}") from None
    part.unlink()  # cut at the expected size, it would look whole
    raise CaffegenError(f"{url}: {_expected(remote, cap)}, but the server sent more ({came} bytes when stopped): "
                        f"nothing was kept; check the file's URL and size in the catalogue, {MIRROR_HINT}")


def _read(response, out):
    """The next bytes that have come (``read1``: a slow server cannot hold a read for a whole chunk)."""
    try:
        return response.read1(CHUNK)
    except (OSError, http.client.HTTPException) as error:
        out.flush()
        raise _DroppedError(f"after {out.tell()} bytes ({error})") from None


def _expected(remote, cap):
    if remote.size is not None:
        return f"expected {cap} bytes (the catalogue's size)"
    return f"expected at most {cap} bytes (the catalogue gives no size, and Caffe reads no larger file)"


class _Pace:
    """A download's rate, measured over windows of ``limits.rate_window_s``: too slow a window has stalled."""

    def __init__(self, limits, have):
        self.limits = limits
        self.started, self.had = time.monotonic(), have

    def check(self, have, url, part):
        elapsed = time.monotonic() - self.started
        if elapsed < self.limits.rate_window_s:
            return
        came = have - self.had
        if came < self.limits.min_rate * elapsed:
            raise CaffegenError(f"{url}: the download stalled: {came} bytes in the last {elapsed:.3g} s, under the "
                                f"{self.limits.min_rate / 1024:g} KiB/s it needs; run the command again to resume "
                                f"from {part}, {MIRROR_HINT}")
        self.started, self.had = time.monotonic(), have


def _range_start(content_range):
    match = re.match(r"bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _http_problem(url, error):
    if error.code == 404:
        return (f"{url}: HTTP 404 Not Found: the file is not there (moved, renamed or withdrawn): fix its URL in "
                f"the catalogue, {MIRROR_HINT}")
    if 300 <= error.code < 400 and "infinite loop" in str(error.reason):  # urllib's words for a loop or too many
        last = error.headers.get("Location")
        return (f"{url}: the server redirects in a loop (HTTP {error.code}, the last to {last}): fix its URL in the "
                f"catalogue, {MIRROR_HINT}")
    reason = " ".join(str(error.reason).split())
    return f"{url}: HTTP {error.code} {reason}: try again later, {MIRROR_HINT}"


def _connection_problem(url, error):
    reason = getattr(error, "reason", error)
    if isinstance(reason, FileNotFoundError):
        return f"{url}: no such file: put it there, or point --mirror at a folder that has it"
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return (f"{url}: cannot connect ({text}): check the network, {MIRROR_HINT}, or use what is already "
            "downloaded (--offline)")


def _html_hint(part):
    with open(part, "rb") as stream:
        start = stream.read(512).lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return " (the server sent a web page, not the file: open the URL in a browser and save the file by hand)"
    return ""


def _make_folder(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CaffegenError(f"cannot create the download folder: {error.strerror}; set ${HOME_VARIABLE} to a "
                            "writable one", folder) from None
