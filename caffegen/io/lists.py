"""Caffe's image lists: one ``path label`` line per image.

Caffe's ``ImageData`` layer reads a list line by line (lines end at LF; a CR before it is ignored)
and splits each line on its last space, so paths may contain spaces and the label is what follows
the last space. A path or class name holding any other line break is refused everywhere, as caffegen
and the tools around Caffe would split it where Caffe does not.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from caffegen.errors import LINE_BREAKS, CaffegenError

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


def check_one_line(text, what, path=None, line=None):
    """Refuse ``text`` (a path or a class name, named by ``what``) when it holds a line break."""
    breaks = sorted({f"U+{ord(char):04X}" for char in str(text) if char in LINE_BREAKS})
    if breaks:
        raise CaffegenError(f"{what} {str(text)!r} holds a line break ({', '.join(breaks)}), which a line of Caffe's "
                            "lists and of labels.txt cannot carry: rename it", path, line)


def parse_list(text, path=None):
    """The non-blank lines of a list's ``text``, split as Caffe splits them, each on its last space."""
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        check_one_line(line, "the line", path, number)
        if line.strip():
            image, _, label = line.rstrip().rpartition(" ")
            lines.append(ListLine(number, image, label))
    return lines


def read_list(path, what="list"):
    """The lines of the list file ``path``; ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise CaffegenError(f"no such {what} file", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CaffegenError(f"cannot read {what} file: {error}", path) from None
    return parse_list(text, path)
