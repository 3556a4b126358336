"""Writing files and directories so that readers see the old version or the new one, never half."""

import functools
import hashlib
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from caffegen.errors import WRITE_ERRNOS, cannot_write


def temp_file_beside(path):
    """(descriptor, name) of a new temporary file beside ``path``, with the permissions ``open`` would give
    ``path`` (the umask's, not ``mkstemp``'s owner-only ones), to be renamed onto it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path, data):
    """Write ``data`` (text or bytes) to ``path`` through a temporary file beside it, renamed into place."""
    path = Path(path)
    try:
        fd, tmp = temp_file_beside(path)
    except OSError as error:
        raise cannot_write(error, path) from None
    try:
        binary = isinstance(data, bytes)
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8",
                       newline=None if binary else "") as out:
            out.write(data)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise cannot_write(error, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unused_name(parent, prefix):
    """A path in ``parent`` that nothing holds yet, for a temporary folder.

    Make it with ``mkdir`` inside the ``try`` that removes it: a SIGTERM raised as it is made then
    cannot leave it behind, as it can with ``tempfile.mkdtemp`` (made, and not yet returned).
    """
    while True:
        path = Path(parent or tempfile.gettempdir()) / f"{prefix}{secrets.token_hex(6)}"
        if not os.path.lexists(path):
            return path


@contextmanager
def temp_folder(parent=None, prefix="caffegen-"):
    """A new folder in ``parent`` (the system's temporary folder by default), removed however the block ends."""
    path = unused_name(parent, prefix)
    try:
        path.mkdir(mode=0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def built_beside(target):
    """A fresh directory beside ``target`` that replaces it when the block ends well, and vanishes if not."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise cannot_write(error, target.parent) from None
    staging = unused_name(target.parent, f".{target.name}.")
    try:
        _make_folder(staging, target.parent)
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno in WRITE_ERRNOS:
            raise cannot_write(error, error.filename2 or error.filename or target) from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _make_folder(path, parent):
    try:
        path.mkdir(mode=0o700)
    except OSError as error:
        raise cannot_write(error, parent) from None


def file_sha256(path):
    """The SHA-256 of a file's content, computed once per version of it (size and modification time)."""
    return file_digest(path, "sha256")


def file_digest(path, algorithm):
    """The ``hashlib`` digest ``algorithm`` (sha1, sha256) of a file's content, once per version of it."""
    path = Path(path).resolve()
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns, algorithm)


@functools.lru_cache(maxsize=64)
def _digest(path, size, mtime_ns, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
