"""caffe.proto / caffegen.io.caffe_pb2 stay compatible with real BVLC Caffe.

Three independent checks:

* drift: the committed ``caffegen/io/caffe_pb2.py`` is exactly what grpc_tools'
  protoc generates from ``caffe.proto`` today;
* schema: our descriptor matches, element by element, the descriptor compiled
  into a real ``libcaffe.so`` (Debian's CPU Caffe 1.0, installed by
  ``caffegen.run.install``);
* text format: every BVLC-format prototxt of the shared model zoo parses with
  our schema and survives text -> message -> text -> message unchanged.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ZOO, zoo_files
from google.protobuf import descriptor_pb2, descriptor_pool, text_format

from caffegen.io import caffe_pb2

REPO = Path(__file__).resolve().parents[1]
PB2 = REPO / "caffegen" / "io" / "caffe_pb2.py"
REGENERATE = (
    "regenerate it from the repository root with: "
    "python -m grpc_tools.protoc -I. --python_out=caffegen/io caffe.proto"
)

FDP = descriptor_pb2.FileDescriptorProto
FIELD = descriptor_pb2.FieldDescriptorProto


# ---------------------------------------------------------------------------
# a. drift between caffe.proto and the committed generated module
# ---------------------------------------------------------------------------


def test_committed_pb2_is_generated_from_caffe_proto(tmp_path):
    # Same command line as REGENERATE, so the embedded "source:" path and the
    # serialized descriptor come out identical.
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.",
         f"--python_out={tmp_path}", "caffe.proto"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, f"protoc failed on caffe.proto:\n{result.stderr}"
    fresh = (tmp_path / "caffe_pb2.py").read_bytes()
    assert fresh == PB2.read_bytes(), (
        "caffegen/io/caffe_pb2.py is out of date with caffe.proto (or was made by "
        f"another grpcio-tools version); {REGENERATE}"
    )


# ---------------------------------------------------------------------------
# b. our schema against the descriptor embedded in the real libcaffe
# ---------------------------------------------------------------------------

# Start of Caffe's serialized FileDescriptorProto: field 1 (name) =
# "caffe.proto", then field 2 (package) = "caffe".
DESCRIPTOR_START = b"\n\x0bcaffe.proto\x12\x05caffe"

# What BVLC master added after the 1.0 release (tag 1.0, April 2017) that the
# library lacks, as keys of describe() below, each with its evidence.
#
# It is empty because the comparison found nothing to allow.  Debian's "Caffe
# 1.0" (libcaffe1 1.0.0+git20180821.99bd997) is built from a master snapshot
# of 2018-08-21, which already holds master's post-1.0 additions, e.g.:
#   SwishParameter + LayerParameter.swish_param = 147   BVLC PR #6002 (Oct 2017)
#   ClipParameter + LayerParameter.clip_param = 148     BVLC PR #3791, still
#                                                       unmerged in March 2018
#   PoolingParameter.RoundMode + .round_mode = 13       BVLC PR #6282 (Mar 2018)
#   SolverParameter.weights = 42                        BVLC PR #6123 (Dec 2017)
# and caffe.proto, which follows master, matches it element for element.
# Allowing a ("message", name) or ("enum", name) key allows everything in it.
# A key added here must really be missing from the library:
# test_allow_list_is_not_stale checks that.
POST_1_0_ADDITIONS: dict[tuple[str, ...], str] = {}


def _field_wire_types() -> dict[int, set[int]]:
    """FileDescriptorProto field number -> wire types it may use."""
    message = descriptor_pb2.DescriptorProto()
    FDP.DESCRIPTOR.CopyToProto(message)  # descriptor.proto's own definition
    wire = {}
    for field in message.field:
        if field.type in (FIELD.TYPE_MESSAGE, FIELD.TYPE_STRING, FIELD.TYPE_BYTES):
            wire[field.number] = {2}
        elif field.label == FIELD.LABEL_REPEATED:
            wire[field.number] = {0, 2}  # varints, plain or packed
        else:
            wire[field.number] = {0}  # the rest are varints / enums
    return wire


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def extract_file_descriptor(blob: bytes, start_marker: bytes = DESCRIPTOR_START) -> FDP:
    """Find and parse the serialized FileDescriptorProto protoc embedded in blob.

    protoc's generated C++ keeps the file's serialized FileDescriptorProto as
    a char array (``descriptor_table_protodef_caffe_2eproto``), so its bytes
    are in the shared library verbatim, but nothing next to them records the
    length.  It is recovered like this:

    1. Find the array by its first bytes: field 1 (name) "caffe.proto" then
       field 2 (package) "caffe".
    2. Walk top-level fields greedily from there: read a tag, check that its
       field number is one FileDescriptorProto defines and that its wire type
       fits that field (length-delimited for strings and messages, varint for
       the rest), skip the value, and note the offset after it.  The walk ends
       at the first tag that is not a valid FileDescriptorProto field (with
       protobuf 3.x the array is a string literal, so that is its NUL
       terminator, tag 0) or at a value that would run past the data.
    3. The array ends on one of those field boundaries.  Try them from the
       longest down and take the first prefix that parses as a
       FileDescriptorProto, serializes back to exactly the same bytes (so
       nothing unknown or foreign was swallowed) and builds in a fresh
       DescriptorPool (so every type reference resolves).  Backing off like
       this copes with trailing bytes that happen to look like a field.
    """
    wire_types = _field_wire_types()
    offsets = []
    start = blob.find(start_marker)
    while start != -1:
        offsets.append(start)
        start = blob.find(start_marker, start + 1)
    if not offsets:
        raise LookupError(f"no {start_marker!r} in the data")

    for start in offsets:
        boundaries = []
        pos = start
        while pos < len(blob):
            try:
                tag, after_tag = _read_varint(blob, pos)
                number, wire = tag >> 3, tag & 7
                if wire not in wire_types.get(number, ()):
                    break
                if wire == 2:
                    length, value_start = _read_varint(blob, after_tag)
                    end = value_start + length
                else:
                    _, end = _read_varint(blob, after_tag)
            except ValueError:
                break
            if end > len(blob):
                break
            pos = end
            boundaries.append(pos)

        for end in reversed(boundaries):
            chunk = blob[start:end]
            try:
                proto = FDP.FromString(chunk)
            except Exception:  # DecodeError, or a malformed nested message
                continue
            if proto.SerializeToString() != chunk:
                continue
            try:
                descriptor_pool.DescriptorPool().Add(proto)
            except Exception:  # TypeError / KeyError from an unresolved name
                continue
            return proto
    raise LookupError("found the descriptor's start but no complete FileDescriptorProto")


def _canonical_default(field: FIELD) -> str:
    """protoc versions spell float defaults differently ("1e-08" from the
    protoc that built libcaffe, "9.99999994e-09" from today's); compare the
    value each spelling denotes, rounded to the field's own precision."""
    text = field.default_value
    if field.type == FIELD.TYPE_FLOAT:
        value = struct.unpack("<f", struct.pack("<f", float(text)))[0]
    elif field.type == FIELD.TYPE_DOUBLE:
        value = float(text)
    else:
        return text
    return "nan" if math.isnan(value) else repr(value)


def describe(proto: FDP) -> dict[tuple[str, ...], object]:
    """Flatten a FileDescriptorProto into comparable entries.

    Keys: ("message", full name), ("enum", full name), ("value", enum, name),
    ("field", message, name), ("field order", message) and a few ("file", x).
    Message and enum entries hold their own options, oneofs, ranges and
    reserved names; a field entry holds every FieldDescriptorProto attribute
    (number, label, type, type_name, default, options incl. packed, ...)
    except json_name, which protoc derives from the name.
    """
    out: dict[tuple[str, ...], object] = {
        ("file", "package"): proto.package,
        ("file", "syntax"): proto.syntax or "proto2",
        ("file", "dependency"): tuple(proto.dependency),
        ("file", "options"): text_format.MessageToString(proto.options, as_one_line=True),
        ("file", "services"): tuple(s.name for s in proto.service),
        ("file", "extensions"): tuple(e.name for e in proto.extension),
    }

    def enum(node, scope):
        name = f"{scope}.{node.name}"
        shell = descriptor_pb2.EnumDescriptorProto()
        shell.CopyFrom(node)
        shell.ClearField("value")
        out[("enum", name)] = text_format.MessageToString(shell, as_one_line=True)
        for value in node.value:
            out[("value", name, value.name)] = text_format.MessageToString(value, as_one_line=True)

    def message(node, scope):
        name = f"{scope}.{node.name}"
        shell = descriptor_pb2.DescriptorProto()
        shell.CopyFrom(node)
        for part in ("field", "nested_type", "enum_type"):
            shell.ClearField(part)
        out[("message", name)] = text_format.MessageToString(shell, as_one_line=True)
        out[("field order", name)] = tuple(f.name for f in node.field)
        for field in node.field:
            copy = FIELD()
            copy.CopyFrom(field)
            copy.ClearField("json_name")
            if copy.HasField("default_value"):
                copy.default_value = _canonical_default(copy)
            out[("field", name, field.name)] = text_format.MessageToString(copy, as_one_line=True)
        for nested in node.enum_type:
            enum(nested, name)
        for nested in node.nested_type:
            message(nested, name)

    scope = f".{proto.package}" if proto.package else ""
    for node in proto.enum_type:
        enum(node, scope)
    for node in proto.message_type:
        message(node, scope)
    return out


def _is_allowed(key, allowed) -> bool:
    if key in allowed:
        return True
    scopes = {k[1] for k in allowed if k[0] in ("message", "enum")}
    return len(key) > 1 and any(key[1] == s or key[1].startswith(s + ".") for s in scopes)


def schema_differences(ours: FDP, real: FDP, allowed=POST_1_0_ADDITIONS) -> list[str]:
    """Everything in which `ours` differs from `real`, minus allowed extras."""
    mine, theirs = describe(ours), describe(real)
    problems = []
    for key in sorted(theirs.keys() - mine.keys()):
        problems.append(f"missing from caffe.proto: {key}")
    for key in sorted(mine.keys() - theirs.keys()):
        if not _is_allowed(key, allowed):
            problems.append(f"not in libcaffe (and not allow-listed): {key}")
    for key in sorted(mine.keys() & theirs.keys()):
        a, b = mine[key], theirs[key]
        if key[0] == "field order":
            a = tuple(n for n in a if not _is_allowed(("field", key[1], n), allowed))
        if a != b:
            problems.append(f"differs: {key}\n    ours:     {a}\n    libcaffe: {b}")
    return problems


def _our_file_descriptor() -> FDP:
    proto = FDP()
    caffe_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto


@pytest.fixture(scope="session")
def libcaffe(caffe) -> Path:
    from caffegen.run.install import libcaffe_path
    path = Path(libcaffe_path())
    assert path.is_file(), f"libcaffe_path() returned {path}, which is not a file"
    return path


@pytest.fixture(scope="session")
def libcaffe_descriptor(libcaffe) -> FDP:
    return extract_file_descriptor(libcaffe.read_bytes())


def test_libcaffe_descriptor_is_caffes_schema(libcaffe_descriptor):
    assert libcaffe_descriptor.name == "caffe.proto"
    assert libcaffe_descriptor.package == "caffe"
    names = {m.name for m in libcaffe_descriptor.message_type}
    assert {"NetParameter", "LayerParameter", "SolverParameter", "V1LayerParameter"} <= names


def test_schema_matches_libcaffe(libcaffe_descriptor):
    problems = schema_differences(_our_file_descriptor(), libcaffe_descriptor)
    assert not problems, "caffe.proto disagrees with the real libcaffe:\n" + "\n".join(problems)


def test_allow_list_is_not_stale(libcaffe_descriptor):
    mine, theirs = describe(_our_file_descriptor()), describe(libcaffe_descriptor)
    for key, why in POST_1_0_ADDITIONS.items():
        assert key in mine, f"allow-listed {key} ({why}) is not in caffe.proto"
        assert key not in theirs, f"allow-listed {key} ({why}) is in libcaffe after all"


# The extraction and the comparison themselves, without the library.


def test_extraction_recovers_a_descriptor_from_surrounding_bytes():
    ours = _our_file_descriptor()
    raw = ours.SerializeToString()
    # As a NUL-terminated literal between other data ...
    assert extract_file_descriptor(b"\x7fELF junk\x00" + raw + b"\x00\xff\x01") == ours
    # ... and followed by bytes that read as one more valid field (a
    # message_type whose body is garbage), which must be backed off from.
    trailing = b'"\x04\xff\xff\xff\xff' + b"\x00" * 8
    assert extract_file_descriptor(b"junk" + raw + trailing) == ours
    with pytest.raises(LookupError):
        extract_file_descriptor(b"no descriptor here")


def _edited(proto: FDP, edit) -> FDP:
    """A copy of proto with edit(messages by name, file) applied."""
    copy = FDP()
    copy.CopyFrom(proto)
    edit({m.name: m for m in copy.message_type}, copy)
    return copy


def _field(message, name):
    return next(f for f in message.field if f.name == name)


def test_comparison_catches_schema_changes():
    ours = _our_file_descriptor()
    assert schema_differences(ours, ours) == []

    def default(m, _):
        field = _field(m["SolverParameter"], "momentum2")
        field.default_value = repr(float(field.default_value) / 2)

    def renumber(m, _):
        _field(m["LayerParameter"], "clip_param").number = 149

    def retype(m, _):
        _field(m["TileParameter"], "tiles").type = FIELD.TYPE_UINT32

    def unpack(m, _):
        _field(m["BlobProto"], "data").options.ClearField("packed")

    def enum_value(m, _):
        m["V1LayerParameter"].enum_type[0].value[1].number = 99

    def drop(m, _):
        del m["PoolingParameter"].field[-1]

    def reorder(m, _):
        fields = m["NetParameter"].field
        last = FIELD()
        last.CopyFrom(fields[-1])
        del fields[-1]
        fields.insert(0, last)

    for edit in (default, renumber, retype, unpack, enum_value, drop, reorder):
        assert schema_differences(ours, _edited(ours, edit)), f"{edit.__name__} went unnoticed"

    # A float default spelt differently but equal in float32 is not a change.
    def respell(m, _):
        _field(m["SolverParameter"], "delta").default_value = "1e-08"

    assert schema_differences(ours, _edited(ours, respell)) == []


def test_allow_list_excuses_only_what_it_names():
    ours = _our_file_descriptor()

    def without_clip(m, file):
        layer = m["LayerParameter"]
        del layer.field[[f.name for f in layer.field].index("clip_param")]
        del file.message_type[[x.name for x in file.message_type].index("ClipParameter")]

    older = _edited(ours, without_clip)
    clip = {
        ("field", ".caffe.LayerParameter", "clip_param"): "added after 1.0",
        ("message", ".caffe.ClipParameter"): "added after 1.0",
    }
    assert len(schema_differences(ours, older, allowed={})) > 2
    assert schema_differences(ours, older, allowed=clip) == []
    del clip[("message", ".caffe.ClipParameter")]
    assert schema_differences(ours, older, allowed=clip)


# ---------------------------------------------------------------------------
# c. text format: the shared model zoo
# ---------------------------------------------------------------------------

# Zoo files our (BVLC) schema must reject, keyed by path under the zoo, with
# the fields or messages of forked Caffes they use.  test_zoo_expected_failures
# checks that exactly these names are what the schema does not know.
EXPECTED_FAILURES: dict[str, tuple[set[str], str]] = {
    "densenet/DenseNet_121.prototxt": (
        {"PoolingParameter.ceil_mode"},
        "pooling_param.ceil_mode is from a forked Caffe (BVLC spells it round_mode)",
    ),
    "ssd_labelmap/labelmap_voc.prototxt": (
        {"NetParameter.item"},
        "an SSD LabelMap (item { name label display_name }), not a net",
    ),
    "ssd_mobilenet/MobileNetSSD_deploy.prototxt": (
        {"LayerParameter.permute_param", "LayerParameter.prior_box_param",
         "LayerParameter.detection_output_param"},
        "SSD-fork layers: Permute, PriorBox, DetectionOutput",
    ),
    "ssd_mobilenet/MobileNetSSD_test.prototxt": (
        {"LayerParameter.annotated_data_param", "TransformationParameter.resize_param",
         "LayerParameter.permute_param", "LayerParameter.prior_box_param",
         "LayerParameter.detection_output_param",
         "LayerParameter.detection_evaluate_param"},
        "SSD-fork data, transform and detection layers",
    ),
    "ssd_mobilenet/MobileNetSSD_train.prototxt": (
        {"LayerParameter.annotated_data_param", "TransformationParameter.resize_param",
         "TransformationParameter.emit_constraint",
         "TransformationParameter.distort_param", "TransformationParameter.expand_param",
         "LayerParameter.permute_param", "LayerParameter.prior_box_param",
         "LayerParameter.multibox_loss_param"},
        "SSD-fork data augmentation and MultiBoxLoss",
    ),
    "ssd_mobilenet/solver.prototxt": (
        {"SolverParameter.eval_type", "SolverParameter.ap_version"},
        "SSD-fork solver fields for detection evaluation",
    ),
}


def _message_class(relpath: str):
    """Solvers are the files named *solver*; everything else is a net."""
    return caffe_pb2.SolverParameter if "solver" in Path(relpath).stem else caffe_pb2.NetParameter


def unknown_names(text: str, descriptor) -> set[str]:
    """Names ("Message.field") in a prototxt that the schema does not define.

    Walks the text with protobuf's own tokenizer, following the schema into
    known message fields and skipping the whole value of unknown ones.
    """
    tokens = text_format.Tokenizer(text.splitlines())
    found: set[str] = set()

    def skip_value():
        if tokens.TryConsume("{") or tokens.TryConsume("<"):
            depth = 1
            while depth:
                if tokens.AtEnd():
                    raise tokens.ParseError("unbalanced braces")
                if tokens.token in ("{", "<"):
                    depth += 1
                elif tokens.token in ("}", ">"):
                    depth -= 1
                tokens.NextToken()
        elif tokens.TryConsume("["):
            while not tokens.TryConsume("]"):
                if tokens.AtEnd():
                    raise tokens.ParseError("unterminated list")
                tokens.NextToken()
        elif tokens.token.startswith(("'", '"')):
            tokens.ConsumeString()  # also joins adjacent string literals
        else:
            tokens.NextToken()

    def walk(desc, closing):
        while not (tokens.AtEnd() if closing is None else tokens.TryConsume(closing)):
            name = tokens.ConsumeIdentifierOrNumber()
            field = desc.fields_by_name.get(name)
            has_colon = tokens.TryConsume(":")
            if field is None:
                found.add(f"{desc.name}.{name}")
                skip_value()
            elif field.message_type is not None:
                if tokens.TryConsume("{"):
                    walk(field.message_type, "}")
                else:
                    tokens.Consume("<")
                    walk(field.message_type, ">")
            else:
                assert has_colon, f"{name} needs a ':'"
                skip_value()
            tokens.TryConsume(",") or tokens.TryConsume(";")

    walk(descriptor, None)
    return found


@pytest.mark.zoo
def test_zoo_is_present_and_listed():
    files = zoo_files()
    assert all((ZOO / name).is_file() for name in files), f"expected the zoo corpus at {ZOO}"
    stale = sorted(set(EXPECTED_FAILURES) - set(files))
    assert not stale, f"EXPECTED_FAILURES lists files not in the zoo: {stale}"


@pytest.mark.zoo
@pytest.mark.parametrize("relpath", sorted(EXPECTED_FAILURES))
def test_zoo_expected_failures(relpath):
    names, reason = EXPECTED_FAILURES[relpath]
    text = (ZOO / relpath).read_text()
    cls = _message_class(relpath)
    with pytest.raises(text_format.ParseError, match="has no field named"):
        text_format.Parse(text, cls())
    assert unknown_names(text, cls.DESCRIPTOR) == names, reason


@pytest.mark.zoo
@pytest.mark.parametrize("relpath", [p for p in zoo_files() if p not in EXPECTED_FAILURES])
def test_zoo_round_trips(relpath):
    path = ZOO / relpath
    assert path.is_file(), f"no zoo at {ZOO.resolve()}"
    cls = _message_class(relpath)
    text = path.read_text()
    assert unknown_names(text, cls.DESCRIPTOR) == set()

    first = text_format.Parse(text, cls())
    assert first.ByteSize() > 0
    printed = text_format.MessageToString(first)
    second = text_format.Parse(printed, cls())
    assert second == first
    assert text_format.MessageToString(second) == printed
    # And the binary wire format, as in a .caffemodel / .binaryproto.
    assert cls.FromString(first.SerializeToString()) == first
