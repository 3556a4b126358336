"""Files that ship with caffegen: templates and bundled models, installed or in a source tree."""

from pathlib import Path

from caffegen.errors import CaffegenError

PACKAGE = Path(__file__).resolve().parents[1]


def resource_dir(name):
    """The directory ``name`` (``templates`` or ``models``): inside the installed package, or beside it."""
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise CaffegenError(f"caffegen's {name}/ directory is missing from {PACKAGE}: reinstall caffegen")
