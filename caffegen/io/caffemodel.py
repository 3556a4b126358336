"""Reading and writing .caffemodel weights without materialising their values.

A caffemodel is a binary ``NetParameter``. Its layers are walked field by field on the
protobuf wire format, through a memory map: the packed ``data``/``diff`` payloads of each
blob are skipped by their length, so listing the layers and blob shapes of a 550 MB model
touches a few pages. Current (``layer``) and legacy V1 (``layers``) files are read, as are
blobs that give ``num``/``channels``/``height``/``width`` instead of ``shape``. Values stored
unpacked (a key before each one) are kept as strided runs, a few numbers each, so memory stays
a fraction of the file's size whatever the encoding. Values come as numpy arrays, on the memory
map where the file stores them packed, only when asked (and numpy is imported only then).
"""

import mmap
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from caffegen.errors import CaffegenError
from caffegen.io.files import temp_file_beside
from caffegen.io.schema import BVLC
from caffegen.io.upgrade import V1_TYPE_NAMES, upgrade_v1_layer

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def _field_numbers(message, *names):
    fields = getattr(BVLC, message).DESCRIPTOR.fields_by_name
    return [fields[name].number for name in names]


NET_NAME, NET_LAYER, NET_V1_LAYERS = _field_numbers("NetParameter", "name", "layer", "layers")
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = _field_numbers("LayerParameter", "name", "type", "blobs")
V1_NAME, V1_TYPE, V1_BLOBS, V1_V0_LAYER = _field_numbers("V1LayerParameter", "name", "type", "blobs", "layer")
BLOB_SHAPE, BLOB_DATA, BLOB_DOUBLE_DATA = _field_numbers("BlobProto", "shape", "data", "double_data")
LEGACY_FIELDS = tuple(_field_numbers("BlobProto", "num", "channels", "height", "width"))
(SHAPE_DIM,) = _field_numbers("BlobShape", "dim")
V1_TYPE_ENUM = BVLC.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"]
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
WRITE_CHUNK = 1 << 24
SCAN_CHUNK = 1 << 16  # unpacked values whose keys are compared at a time


@dataclass(frozen=True)
class Blob:
    """One stored blob: its shape, how many values it holds, and where they lie in the file."""

    shape: tuple
    legacy: bool  # the shape came from num/channels/height/width
    count: int
    dtype: str  # "float32", "float64", or None when the blob stores no values
    runs: array  # (byte offset of the first value, values, bytes from one to the next) of each run, flat

    def value_runs(self):
        """(offset, count, stride) of each run of values: a packed run's stride is the value's width."""
        return zip(self.runs[0::3], self.runs[1::3], self.runs[2::3])


@dataclass(frozen=True)
class WeightLayer:
    """A layer of a caffemodel: its name, type and blobs (V1 enum types are given as current type names)."""

    name: str
    type: str
    blobs: tuple


class Caffemodel:
    """The layers of a caffemodel file, read without their values; ``values()`` maps them when asked."""

    def __init__(self, path, name, layers, v1):
        self.path = Path(path)
        self.name = name
        self.layers = layers
        self.v1 = v1
        self._map = None

    def layer(self, name):
        """The first layer called ``name`` (the one Caffe finds first), or None."""
        return next((layer for layer in self.layers if layer.name == name), None)

    def values(self, name):
        """The blobs of layer ``name`` as numpy arrays; packed float32 data is a view on the file."""
        layer = self.layer(name)
        if layer is None:
            raise CaffegenError(f"no layer '{name}' in the weights", self.path)
        if self._map is None:
            self._map = _open_map(self.path)
        return [_blob_array(self._map, blob) for blob in layer.blobs]


def read_caffemodel(path):
    """List the layers and blob shapes of a caffemodel; a file that is not one is a one-line error."""
    path = Path(path)
    with _Mapped(path) as buf:
        wire = _Wire(buf, path)
        try:
            return _read_net(wire)
        except _WireError as error:
            raise wire.user_error(error) from None


def cut_short(path):
    """How a binary protobuf file (a .solverstate, a .caffemodel) is cut short, in words, or None when every
    top-level field it starts ends within it. Only the fields' lengths are read, not their contents."""
    with _Mapped(Path(path)) as buf:
        wire = _Wire(buf, path)
        try:
            for _ in wire.fields(0, wire.size):
                pass
        except _WireError as error:
            return f"{error.reason} at byte {error.offset} of {wire.size}"
    return None


def read_mean_file(path):
    """The mean image of a .binaryproto (a ``BlobProto``) as float32 (channels, height, width)."""
    path = Path(path)
    try:
        blob = BVLC.BlobProto.FromString(path.read_bytes())
    except (OSError, DecodeError) as error:
        raise CaffegenError(f"not a readable mean file ({error.__class__.__name__})", path) from None
    import numpy as np
    dims = list(blob.shape.dim) or [blob.num, blob.channels, blob.height, blob.width]
    values = np.asarray(blob.data, dtype=np.float32)
    if len(dims) < 3 or _product(dims[-3:]) != values.size:
        raise CaffegenError(f"the mean file holds {values.size} values, not an image of shape {dims}", path)
    return values.reshape(dims[-3:])


def upgrade_caffemodel(source, target):
    """Write caffemodel ``source`` in the current format at ``target``; return whether it was a V1 one.

    As Caffe's ``upgrade_net_proto_binary`` does, every V1 ``layers`` entry becomes a ``layer``. Blob
    bytes are copied as they are, so memory stays low; a current-format file is copied unchanged.
    """
    source, target = Path(source), Path(target)
    was_v1 = read_caffemodel(source).v1
    with _Mapped(source) as buf, _AtomicBinary(target) as out:
        wire = _Wire(buf, source)
        try:
            for number, wire_type, value, start, end in wire.fields(0, len(buf)):
                if number == NET_V1_LAYERS:
                    _write_upgraded_layer(wire, value, out)
                else:
                    _copy(buf, start, end, out)
        except _WireError as error:
            raise wire.user_error(error) from None
    return was_v1


def write_caffemodel(path, layers, name=""):
    """Write a current-format caffemodel from (LayerParameter, [arrays]) pairs, streaming the values.

    The arrays become the layer's blobs (float32, their shapes as ``shape``); blobs already in the
    LayerParameter are kept before them.
    """
    with _AtomicBinary(Path(path)) as out:
        if name:
            encoded = name.encode("utf-8")
            out.write(_key(NET_NAME, LENGTH) + _varint_bytes(len(encoded)) + encoded)
        for layer, arrays in layers:
            header = layer.SerializeToString()
            blobs = [(_blob_header(array.shape), array) for array in arrays]
            size = len(header) + sum(_blob_field_size(blob_header, array) for blob_header, array in blobs)
            out.write(_key(NET_LAYER, LENGTH) + _varint_bytes(size) + header)
            for blob_header, array in blobs:
                out.write(_key(LAYER_BLOBS, LENGTH) + _varint_bytes(len(blob_header) + 4 * array.size) + blob_header)
                _write_float32(array, out)


class _WireError(Exception):
    """A malformed field at ``offset``; ``layer`` names the layer being read when known."""

    def __init__(self, offset, reason, truncated=False):
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.truncated = truncated
        self.layer = None


class _Wire:
    """Protobuf wire-format walking over a buffer: varints and the fields of one message."""

    def __init__(self, buf, path):
        self.buf = buf
        self.path = path
        self.size = len(buf)

    def varint(self, pos, end):
        """The varint at ``pos`` and the position after it."""
        result = shift = 0
        while True:
            if pos >= end:
                raise self._overrun(pos, "a number", end)
            byte = self.buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                raise _WireError(pos, "a number longer than 10 bytes")

    def fields(self, start, end):
        """Yield (number, wire type, value, field start, field end) for each field in [start, end).

        The value is a varint's integer, a length-delimited payload's (start, end), or a fixed-size
        value's offset.
        """
        pos = start
        while pos < end:
            number, wire_type, value, field_end = self.field(pos, end)
            yield number, wire_type, value, pos, field_end
            pos = field_end

    def field(self, pos, end):
        """(number, wire type, value, field end) of the field at ``pos``, as :meth:`fields` gives them."""
        key, value_start = self.varint(pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _WireError(pos, "field number 0")
        if wire_type == VARINT:
            return (number, wire_type, *self.varint(value_start, end))
        if wire_type == LENGTH:
            length, start = self.varint(value_start, end)
            return number, wire_type, (start, start + length), self._skip(start, length, end)
        if wire_type in (FIXED32, FIXED64):
            return number, wire_type, value_start, self._skip(value_start, 4 if wire_type == FIXED32 else 8, end)
        raise _WireError(pos, f"invalid protobuf wire type {wire_type}")

    def repeats(self, pos, end, key, stride):
        """How many fields of one-byte ``key`` follow each other from ``pos``, each ``stride`` bytes long."""
        count = 0
        while pos + stride <= end:
            stop = min(end - (end - pos) % stride, pos + stride * SCAN_CHUNK)
            keys = self.buf[pos:stop:stride]
            same = len(keys) - len(keys.lstrip(key))
            count += same
            if same < len(keys):
                break
            pos = stop
        return count

    def text(self, value, wire_type, offset, what):
        """The UTF-8 string of a length-delimited field."""
        if wire_type != LENGTH:
            raise _WireError(offset, f"{what} is not a string")
        return bytes(self.buf[value[0]:value[1]]).decode("utf-8", errors="replace")

    def user_error(self, error):
        """The one-line user error for a wire error."""
        where = f" in layer '{error.layer}'" if error.layer else ""
        hint = ""
        if _looks_like_text(self.buf):
            hint = "; it looks like text (a .prototxt?) but a caffemodel is binary"
        elif error.truncated:
            hint = "; the file is cut short (an interrupted download or copy?)"
        return CaffegenError(f"not a valid caffemodel: {error.reason}{where} at byte {error.offset} "
                             f"of {self.size}{hint}", self.path)

    def _skip(self, pos, length, end):
        if pos + length > end:
            raise self._overrun(pos, f"a field of {length} bytes", end)
        return pos + length

    def _overrun(self, pos, what, end):
        if end == self.size:
            return _WireError(pos, f"{what} runs past the end of the file", truncated=True)
        return _WireError(pos, f"{what} runs past the end of its message (byte {end})")


def _read_net(wire):
    name, layers, kinds = "", [], set()
    for number, wire_type, value, start, _ in wire.fields(0, wire.size):
        if number == NET_NAME:
            name = wire.text(value, wire_type, start, "the net name")
        elif number in (NET_LAYER, NET_V1_LAYERS):
            if wire_type != LENGTH:
                raise _WireError(start, "a layer that is not a message")
            kinds.add(number)
            layers.append(_read_layer(wire, value, v1=number == NET_V1_LAYERS))
    if not layers:
        hint = "; it looks like text (a .prototxt?)" if _looks_like_text(wire.buf) else ""
        raise CaffegenError(f"no layers: not a caffemodel (a binary net with trained layers){hint}", wire.path)
    if len(kinds) > 1:
        raise CaffegenError("mixes legacy 'layers' and current 'layer' entries; Caffe cannot read it", wire.path)
    return Caffemodel(wire.path, name, layers, v1=NET_V1_LAYERS in kinds)


def _read_layer(wire, value, v1):
    name_field, type_field, blobs_field = (V1_NAME, V1_TYPE, V1_BLOBS) if v1 else (LAYER_NAME, LAYER_TYPE, LAYER_BLOBS)
    name, layer_type, blobs = "", "", []
    try:
        for number, wire_type, field_value, start, _ in wire.fields(*value):
            if number == name_field:
                name = wire.text(field_value, wire_type, start, "the layer name")
            elif number == type_field:
                layer_type = _v1_type(field_value, wire_type, start) if v1 else wire.text(
                    field_value, wire_type, start, "the type")
            elif number == blobs_field:
                blobs.append(_read_blob(wire, field_value, wire_type, start))
            elif v1 and number == V1_V0_LAYER:
                raise _WireError(start, "a V0 layer (upgrade the file with Caffe's upgrade_net_proto_binary)")
    except _WireError as error:
        error.layer = error.layer or name or None
        raise
    return WeightLayer(name, layer_type, tuple(blobs))


def _v1_type(number, wire_type, offset):
    """The current type name of a V1 layer type number."""
    if wire_type != VARINT:
        raise _WireError(offset, "a V1 layer type that is not a number")
    value = V1_TYPE_ENUM.values_by_number.get(number)
    return V1_TYPE_NAMES.get(value.name, value.name) if value else f"V1 type {number}"


def _read_blob(wire, value, wire_type, offset):
    if wire_type != LENGTH:
        raise _WireError(offset, "a blob that is not a message")
    shape, legacy, runs = (), {}, {"float32": array("q"), "float64": array("q")}
    pos, end = value
    while pos < end:
        number, field_type, field_value, field_end = wire.field(pos, end)
        if number == BLOB_SHAPE and field_type == LENGTH:
            shape = _read_dims(wire, *field_value)
        elif number in LEGACY_FIELDS and field_type == VARINT:
            legacy[number] = _int32(field_value)
        elif number in (BLOB_DATA, BLOB_DOUBLE_DATA):
            dtype, width = ("float32", 4) if number == BLOB_DATA else ("float64", 8)
            run, field_end = _value_run(wire, field_type, field_value, width, pos, field_end, end)
            runs[dtype].extend(run)
        pos = field_end
    if legacy:
        # Caffe prefers the legacy dimensions when any is present; absent ones count as 0.
        shape = tuple(legacy.get(field, 0) for field in LEGACY_FIELDS)
    # Caffe reads double_data when there is any, data otherwise.
    dtype = "float64" if runs["float64"] else ("float32" if runs["float32"] else None)
    kept = runs[dtype] if dtype else array("q")
    return Blob(tuple(shape), bool(legacy), sum(kept[1::3]), dtype, kept)


def _value_run(wire, wire_type, value, width, start, field_end, end):
    """The (offset, count, stride) of the values at field ``start``, and where the fields after them begin.

    A packed field is one run; unpacked values of the same key one after the other are one strided run.
    """
    if wire_type == LENGTH:
        begin, stop = value
        if (stop - begin) % width:
            raise _WireError(begin, f"packed values of {stop - begin} bytes, not a multiple of {width}")
        return (begin, (stop - begin) // width, width), field_end
    if wire_type != (FIXED32 if width == 4 else FIXED64):
        raise _WireError(start, "blob values of the wrong wire type")
    key, stride = wire.buf[start:value], field_end - start
    more = wire.repeats(field_end, end, key, stride) if len(key) == 1 else 0
    return (value, 1 + more, stride), field_end + more * stride


def _read_dims(wire, start, end):
    dims = []
    for number, wire_type, value, offset, _ in wire.fields(start, end):
        if number != SHAPE_DIM:
            continue
        if wire_type == VARINT:
            dims.append(_int64(value))
        elif wire_type == LENGTH:
            pos, stop = value
            while pos < stop:
                dim, pos = wire.varint(pos, stop)
                dims.append(_int64(dim))
        else:
            raise _WireError(offset, "a blob dimension of the wrong wire type")
    return tuple(dims)


def _int64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def _int32(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _blob_array(buf, blob):
    """The values of ``blob``: a view on ``buf`` for one packed run, a copy otherwise, shaped when they fit."""
    import numpy as np
    dtype = np.dtype("<f4" if blob.dtype != "float64" else "<f8")
    parts = [np.ndarray((count,), dtype, buffer=buf, offset=offset, strides=(stride,))
             for offset, count, stride in blob.value_runs()]
    if len(parts) == 1 and parts[0].strides == (dtype.itemsize,):
        flat = parts[0]
    else:
        flat = np.concatenate(parts or [np.zeros(0, dtype)])
    return flat.reshape(blob.shape) if _product(blob.shape) == flat.size else flat


def _product(dims):
    total = 1
    for dim in dims:
        total *= dim
    return total


def _write_upgraded_layer(wire, value, out):
    """Write one V1 layer as a current ``layer`` entry: its small fields upgraded, its blob bytes copied."""
    header, blobs, name = bytearray(), [], None
    for number, wire_type, field_value, start, end in wire.fields(*value):
        if number == V1_BLOBS and wire_type == LENGTH:
            blobs.append(field_value)
        else:
            header += wire.buf[start:end]
            name = wire.text(field_value, wire_type, start, "the layer name") if number == V1_NAME else name
    try:
        layer = upgrade_v1_layer(BVLC.V1LayerParameter.FromString(bytes(header)), BVLC).SerializeToString()
    except (DecodeError, UnicodeDecodeError) as error:
        damaged = _WireError(value[0], f"a layer whose settings protobuf cannot read ({error.__class__.__name__})")
        damaged.layer = name
        raise damaged from None
    keys = [_key(LAYER_BLOBS, LENGTH) + _varint_bytes(end - start) for start, end in blobs]
    size = len(layer) + sum(len(key) + end - start for key, (start, end) in zip(keys, blobs))
    out.write(_key(NET_LAYER, LENGTH) + _varint_bytes(size) + layer)
    for key, (start, end) in zip(keys, blobs):
        out.write(key)
        _copy(wire.buf, start, end, out)


def _copy(buf, start, end, out):
    with memoryview(buf) as view:
        out.write(view[start:end])


def _blob_header(shape):
    """A BlobProto's bytes up to its packed float32 values: its shape, and the values' key and length."""
    dims = b"".join(_varint_bytes(dim) for dim in shape)
    shape_message = _key(SHAPE_DIM, LENGTH) + _varint_bytes(len(dims)) + dims
    count = _product(shape)
    return (_key(BLOB_SHAPE, LENGTH) + _varint_bytes(len(shape_message)) + shape_message
            + _key(BLOB_DATA, LENGTH) + _varint_bytes(4 * count))


def _blob_field_size(blob_header, array):
    body = len(blob_header) + 4 * array.size
    return len(_key(LAYER_BLOBS, LENGTH)) + len(_varint_bytes(body)) + body


def _write_float32(array, out):
    """Write ``array`` as little-endian float32 a chunk at a time, so broadcast arrays never expand whole."""
    import numpy as np
    if array.size == 0:
        return
    rows = array.reshape(1, -1) if array.ndim < 2 else array.reshape(array.shape[0], -1)
    per_chunk = max(1, WRITE_CHUNK // max(1, 4 * rows.shape[1]))
    for first in range(0, rows.shape[0], per_chunk):
        out.write(np.ascontiguousarray(rows[first:first + per_chunk], dtype="<f4").tobytes())


def _key(number, wire_type):
    return _varint_bytes(number << 3 | wire_type)


def _varint_bytes(value):
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _looks_like_text(buf):
    head = bytes(buf[:256])
    return bool(head) and all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head)


class _Mapped:
    """A read-only memory map of ``path`` as a context manager."""

    def __init__(self, path):
        self.path = path
        self.map = None

    def __enter__(self):
        self.map = _open_map(self.path)
        return self.map

    def __exit__(self, *exc):
        self.map.close()


def _open_map(path):
    """Map ``path`` read-only; missing, empty, HDF5 and unreadable files are user errors."""
    path = Path(path)
    if path.is_dir():
        raise CaffegenError("is a directory, expected a .caffemodel file", path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(HDF5_SIGNATURE))
            if not head:
                raise CaffegenError("empty file, expected a .caffemodel", path)
            if head == HDF5_SIGNATURE:
                raise CaffegenError("HDF5 weights (.caffemodel.h5) are not supported; "
                                    "save the weights in the binary protobuf format", path)
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise CaffegenError("no such file", path) from None
    except OSError as error:
        raise CaffegenError(f"cannot read: {error.strerror}", path) from None


class _AtomicBinary:
    """A binary file that replaces ``path`` when complete, and vanishes when writing fails."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        try:
            fd, self.tmp = temp_file_beside(self.path)
        except OSError as error:
            raise CaffegenError(f"cannot write here: {error.strerror}", self.path) from None
        self.out = os.fdopen(fd, "wb")
        return self.out

    def __exit__(self, exc_type, *exc):
        self.out.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
