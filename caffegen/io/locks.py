"""File locks (``flock``) that a process holds while it works on a folder, and that end with it, however it ends.

:func:`waiting_lock` takes turns with the other holders (a feature store); :func:`sole_lock` refuses
to start beside another holder and names its process (a run directory being launched), and
:func:`holder` tells, without taking it, which process holds a lock (:func:`refuse_if_held` refuses then).
"""

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from caffegen.errors import CaffegenError

LOOK_ATTEMPTS, LOOK_PAUSE_S = 5, 0.05  # how long a lock without a holder's id is waited for


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
        _take_alone(lock, path, busy)
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _take_alone(lock, path, busy):
    """Take ``lock`` exclusively, or raise ``busy(pid)``; a holder that has not yet written its id (or one that
    only looks, see :func:`holder`) is given a moment first."""
    for attempt in range(LOOK_ATTEMPTS):
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip()
            if pid or attempt == LOOK_ATTEMPTS - 1:
                raise busy(pid or "unknown") from None
            time.sleep(LOOK_PAUSE_S)
        except OSError as error:
            raise _unsupported(path, error) from None


def refuse_if_held(path, busy):
    """Raise ``busy(pid)`` while another process holds ``path``'s lock."""
    pid = holder(path)
    if pid is not None:
        raise busy(pid)


def holder(path):
    """The process id written in ``path`` by the process holding its lock, or None when nobody holds it.

    It looks with a shared lock, which a read-only descriptor may take (NFS's emulation of flock
    refuses it an exclusive one) and which conflicts with the holder's; what cannot be looked at is
    an error, never "nobody".
    """
    path = Path(path)
    if not path.is_file():
        return None
    with open(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock.read().strip() or "unknown"
        except OSError as error:
            raise _unsupported(path, error) from None
        fcntl.flock(lock, fcntl.LOCK_UN)
        return None


def _unsupported(path, error):
    return CaffegenError(f"cannot lock {Path(path).name} ({error.strerror}): its file system does not support "
                         "file locks; use a folder on a local or lock-capable file system", Path(path).parent)
