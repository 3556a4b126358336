"""File locks (``flock``) that a process holds while it works on a folder, and that end with it, however it ends.

:func:`waiting_lock` takes turns with the other holders (a feature store); :func:`sole_lock` refuses
to start beside another holder and names its process (a run directory being launched), and
:func:`holder` tells, without taking it, which process holds a lock.
"""

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from caffegen.errors import CaffegenError


@contextmanager
def waiting_lock(path, waiting, shared=False):
    """Hold a lock on ``path`` (created if missing) for the block, saying ``waiting`` when it must wait first.

    Exclusive, or ``shared`` by the workers of one job, which write only their own parts.
    """
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with open(path, "a") as lock:
        try:
            try:
                fcntl.flock(lock, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                waiting()
                fcntl.flock(lock, mode)
        except OSError as error:
            raise _unsupported(path, error) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def sole_lock(path, busy):
    """Hold ``path``'s lock for the block, with this process's id in it; ``busy(pid)`` is the error raised when
    another process holds it."""
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise busy(lock.read().strip() or "unknown") from None
        except OSError as error:
            raise _unsupported(path, error) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def holder(path):
    """The process id written in ``path`` by the process holding its lock, or None when nobody holds it."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock.read().strip() or "unknown"
        except OSError:
            return None
        fcntl.flock(lock, fcntl.LOCK_UN)
        return None


def _unsupported(path, error):
    return CaffegenError(f"cannot lock {Path(path).name} ({error.strerror}): its file system does not support "
                         "file locks; use a folder on a local or lock-capable file system", Path(path).parent)
