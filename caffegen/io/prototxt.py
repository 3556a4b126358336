"""Reading and writing prototxt files: the edge where text meets protobuf messages.

Nets are parsed with the schema's ``NetParameter``; legacy V1 nets are upgraded on the way in.
Every failure becomes a one-line :class:`CaffegenError` naming the file, line and column.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from caffegen.errors import CaffegenError
from caffegen.io.files import write_atomic
from caffegen.io.schema import BVLC
from caffegen.io.upgrade import is_v1_net, upgrade_v1_net

# Caffe's messages nest a few levels deep; protobuf's Python parser recurses once a level, so far deeper
# text would exhaust the stack before any parse error could name it.
MAX_NESTING = 100
# What matters to the nesting: strings and comments (skipped whole) and the braces of messages.
NESTING_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"?' r"|'(?:[^'\\\n]|\\.)*'?" r"|#[^\n]*|[{}<>]")


@dataclass
class LoadedNet:
    """A net read from ``path``; ``upgraded_from`` is ``"V1"`` when it was a legacy net."""

    path: Path
    net: object
    upgraded_from: str = None


def read_text(path):
    """Return the text of a prototxt file, refusing directories, empty files and binary data."""
    path = Path(path)
    if path.is_dir():
        raise CaffegenError("is a directory, expected a .prototxt file", path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaffegenError("no such file", path) from None
    except OSError as error:
        raise CaffegenError(f"cannot read: {error.strerror}", path) from None
    return decode_text(data, path)


def decode_text(data, path):
    """The text of prototxt bytes, refusing empty input and binary data."""
    if not data.strip():
        raise CaffegenError("empty file, expected a Caffe net definition (layer { … })", path)
    if b"\0" in data:
        raise CaffegenError("binary data, not a text prototxt (a .caffemodel? nets are .prototxt files)", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CaffegenError(f"not UTF-8 text (byte {error.start}): not a prototxt file", path) from None


def parse_text(text, message, path):
    """Parse prototxt ``text`` into ``message``; syntax errors name the file, line and column."""
    check_nesting(text, path)
    return _parse(text, message, path)


def check_nesting(text, path):
    """Refuse text whose messages nest more than :data:`MAX_NESTING` levels deep, naming the line."""
    depth = 0
    for token in NESTING_TOKENS.finditer(text):
        brace = token.group()
        if brace in "{<":
            depth += 1
            if depth > MAX_NESTING:
                line = text.count("\n", 0, token.start()) + 1
                raise CaffegenError(f"messages nested more than {MAX_NESTING} levels deep: not a Caffe definition "
                                    "(Caffe's nest a few levels)", path, line)
        elif brace in "}>":
            depth -= 1


def _parse(text, message, path):
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise _describe_parse_error(error, message, path) from None
    return message


def read_net(path, schema=BVLC):
    """Read a net definition, upgrading a legacy V1 net to the ``layer {}`` form."""
    return parse_net(read_text(path), path, schema)


def parse_net(text, path, schema=BVLC):
    """Parse the text of a net definition read from ``path`` (used in messages only)."""
    check_nesting(text, path)
    net = schema.NetParameter()
    try:
        _parse(text, net, path)
    except CaffegenError as error:
        raise _not_a_net(text, schema, path) or error
    if not net.layer and not net.layers:
        raise _not_a_net(text, schema, path) or CaffegenError("no layers: not a Caffe net definition", path)
    if is_v1_net(net):
        return LoadedNet(Path(path), upgrade_v1_net(net, schema, path), "V1")
    return LoadedNet(Path(path), net)


def read_solver(path, schema=BVLC):
    """Read a solver definition into a ``SolverParameter``."""
    path = Path(path)
    return parse_text(read_text(path), schema.SolverParameter(), path)


def to_text(message):
    """The prototxt text of ``message``."""
    return text_format.MessageToString(message)


def write_label_map(path, names, schema):
    """Write an SSD LabelMap naming classes 0…K-1 in order (``schema`` must be a fork's that has LabelMap)."""
    try:
        label_map = schema.message_class("LabelMap")()
    except KeyError:
        raise CaffegenError(f"{schema.origin} has no LabelMap message: pass --proto with SSD's caffe.proto",
                            path) from None
    for label, name in enumerate(names):
        label_map.item.add(name=name, label=label, display_name=name)
    write_atomic(path, to_text(label_map))


def _describe_parse_error(error, message, path):
    detail = str(error)
    line, column = error.GetLine(), error.GetColumn()
    prefix = f"{line}:{column} : "
    if detail.startswith(prefix):
        detail = detail[len(prefix):]
    if "has no field named" in detail and f'"{message.DESCRIPTOR.full_name}"' not in detail:
        detail += (" The file may be written for a forked Caffe (SSD, DenseNet, …): "
                   "pass --proto FORK.proto with that fork's caffe.proto.")
    return CaffegenError(detail, path, line if line > 0 else None, column if column > 0 else None)


SOLVER_ONLY_FIELDS = ("net", "train_net", "base_lr", "lr_policy", "max_iter", "solver_mode", "snapshot_prefix")


def _not_a_net(text, schema, path):
    """Recognise a solver or an SSD label map given where a net was expected."""
    solver = schema.SolverParameter()
    try:
        text_format.Parse(text, solver, allow_unknown_field=True)
    except text_format.ParseError:
        solver = None
    if solver is not None and any(solver.HasField(name) for name in SOLVER_ONLY_FIELDS):
        named = solver.net or solver.train_net
        hint = f"; its net is '{named}'" if named else ""
        return CaffegenError(f"this is a solver definition (SolverParameter), not a net{hint}", path)
    if text.lstrip().startswith("item") and "display_name" in text:
        return CaffegenError("this is a label map (item { name label display_name }), not a net", path)
    return None
