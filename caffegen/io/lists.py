"""Caffe's image lists: one ``path label`` line per image.

Caffe's ``ImageData`` layer splits each line on its last space, so paths may contain spaces
(never a newline) and the label is what follows the last space.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from caffegen.errors import CaffegenError

INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class ListLine:
    """One non-blank line of a list: its line number, its path and its label as written."""

    number: int
    path: str
    label: str

    @property
    def label_number(self):
        """The label as Caffe reads it, an integer, or None when it is no number."""
        return int(self.label) if INTEGER.fullmatch(self.label) else None

    def text(self):
        """The line as Caffe reads it, with its newline."""
        return list_line(self.path, self.label)


def list_line(path, label):
    """The list line of an image ``path`` with ``label``."""
    return f"{path} {label}\n"


def parse_list(text):
    """The non-blank lines of a list's ``text``, each split on its last space."""
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            path, _, label = line.rstrip().rpartition(" ")
            lines.append(ListLine(number, path, label))
    return lines


def read_list(path, what="list"):
    """The lines of the list file ``path``; ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise CaffegenError(f"no such {what} file", path)
    try:
        return parse_list(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise CaffegenError(f"cannot read {what} file: {error}", path) from None
