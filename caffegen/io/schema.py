"""The Caffe schema: BVLC's compiled caffe.proto, or a fork's compiled at run time.

This is the only module that imports the generated ``caffe_pb2``; everything else asks a
:class:`Schema` for message classes, so the same code reads and writes forked nets.
"""

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from caffegen.errors import CaffegenError
from caffegen.io import caffe_pb2


class Schema:
    """The message classes of one Caffe schema, looked up by message name (``schema.NetParameter``)."""

    def __init__(self, file_descriptor, origin):
        self.file_descriptor = file_descriptor
        self.origin = origin
        self._classes = {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.message_class(name)
        except KeyError:
            raise AttributeError(f"{self.origin} has no message {name}") from None

    def message_class(self, name):
        """The class of message ``name`` (``KeyError`` when the schema lacks it)."""
        if name not in self._classes:
            descriptor = self.file_descriptor.message_types_by_name[name]
            self._classes[name] = message_factory.GetMessageClass(descriptor)
        return self._classes[name]

    @property
    def is_fork(self):
        return self.file_descriptor is not caffe_pb2.DESCRIPTOR


BVLC = Schema(caffe_pb2.DESCRIPTOR, "BVLC caffe.proto")


@functools.lru_cache(maxsize=None)
def load_fork_schema(proto_path):
    """Compile a forked Caffe's ``caffe.proto`` (package ``caffe``) and return its :class:`Schema`."""
    proto_path = Path(proto_path).resolve()
    if not proto_path.is_file():
        raise CaffegenError("no such file (expected a fork's caffe.proto for --proto)", proto_path)
    descriptor_set = _compile_descriptor_set(proto_path)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in descriptor_set.file:
        pool.Add(file_proto)
    file_descriptor = pool.FindFileByName(proto_path.name)
    if file_descriptor.package != "caffe" or "NetParameter" not in file_descriptor.message_types_by_name:
        raise CaffegenError("not a Caffe schema: expected 'package caffe;' with a NetParameter message", proto_path)
    return Schema(file_descriptor, str(proto_path))


def _compile_descriptor_set(proto_path):
    """Run protoc (from grpcio-tools) on ``proto_path`` and return the parsed FileDescriptorSet."""
    try:
        import grpc_tools
    except ImportError:
        raise CaffegenError("--proto needs grpcio-tools to compile the schema: pip install grpcio-tools") from None
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "schema.desc"
        result = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_path.parent}", f"-I{well_known}",
             "--include_imports", f"--descriptor_set_out={out}", str(proto_path)],
            capture_output=True, text=True)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["protoc failed"])[0]
            raise CaffegenError(f"cannot compile schema: {first}", proto_path)
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
