"""The user-error exception family: messages that name the file, the place and the fix."""

import errno
import os
import shutil
from pathlib import Path

# Every character str.splitlines() ends a line at.
LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def one_line(text):
    """``text`` as one line of a terminal: line breaks and other characters that are not printable (from a name
    in a damaged file, say, or a terminal's escape sequence) are written as Python writes them in a string."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def did_you_mean(names):
    """' (did you mean 'a', 'b'?)' for the close ``names`` a message offers, or '' when there are none."""
    return f" (did you mean {', '.join(repr(name) for name in names)}?)" if names else ""


class CaffegenError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""

    exit_code = 2

    def __init__(self, message, path=None, line=None, column=None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.column = column

    def __str__(self):
        where = ""
        if self.path is not None:
            where = str(self.path)
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        # A name from the input may hold a line break; the message stays one line whatever it quotes.
        return one_line(where + self.message)


# What the file system answers a write it refuses for want of room or of a writable medium: full, over quota,
# too large, read-only; and permissions, which it answers reads too.
FULL_OR_READ_ONLY = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS))
DENIED = frozenset((errno.EACCES, errno.EPERM))
WRITE_ERRNOS = FULL_OR_READ_ONLY | DENIED


def cannot_write(error, path=None):
    """The one-line error of a write the file system refused (``error``, an OSError), naming the place and the
    free space on its file system."""
    place = Path(path or error.filename2 or error.filename or ".")  # a copy's or a rename's target is filename2
    try:
        folder = next((parent for parent in (place, *place.parents) if os.path.isdir(parent)), Path("."))
        free = f"; {shutil.disk_usage(folder).free / 1e6:.1f} MB free on its file system"
    except OSError:
        free = ""
    return CaffegenError(f"cannot write here: {error.strerror or error}{free}", place)


class CaffeNotFound(CaffegenError):
    """No usable Caffe binary was found."""


class Terminated(BaseException):
    """SIGTERM came: raised wherever the command is, so that it unwinds; no ``except Exception`` stops it.

    The command line exits 143 on it. A launch that is training lets Caffe snapshot and stop first,
    then raises it with the run's ``result`` (:mod:`caffegen.run.runner`), for its callers to record.
    """

    def __init__(self, result=None):
        super().__init__()
        self.result = result
