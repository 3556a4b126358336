"""The caffemodel reader: shapes without values, V1 and legacy blobs, damaged files, and V1 upgrades."""

import re
import tracemalloc

import numpy as np
import pytest
from caffe_runs import read_blobs, run_caffe, train
from conftest import ROOT, assert_one_line_error
from google.protobuf import text_format

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import (
    BLOB_DATA,
    BLOB_DOUBLE_DATA,
    BLOB_SHAPE,
    LAYER_BLOBS,
    LAYER_NAME,
    LAYER_TYPE,
    LEGACY_FIELDS,
    NET_LAYER,
    NET_NAME,
    NET_V1_LAYERS,
    SHAPE_DIM,
    V1_BLOBS,
    V1_NAME,
    V1_TYPE,
    read_caffemodel,
    upgrade_caffemodel,
    write_caffemodel,
)
from caffegen.io.schema import BVLC
from caffegen.io.upgrade import V1_TYPE_NAMES

# A small net of layer types that the V1 format knows, so that its weights can be written as V1.
SMALL = """
name: "small"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 }
                     shape { dim: 4 dim: 2 dim: 7 dim: 7 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
V1_TYPE_NUMBERS = {name: BVLC.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"].values_by_name[v1].number
                   for v1, name in V1_TYPE_NAMES.items() if name}


@pytest.fixture(scope="module")
def trained(caffe, tmp_path_factory):
    """A caffemodel written by real Caffe after training SMALL."""
    model, _ = train(caffe, tmp_path_factory.mktemp("small"), SMALL, max_iter=2)
    return model


def to_v1(model_path, target, legacy=True):
    """Rewrite a current caffemodel as a V1 one, as pre-2015 Caffe wrote them (legacy 4-D blob dimensions)."""
    net = BVLC.NetParameter.FromString(model_path.read_bytes())
    v1 = BVLC.NetParameter(name=net.name)
    for layer in net.layer:
        old = v1.layers.add(name=layer.name, type=V1_TYPE_NUMBERS[layer.type], bottom=layer.bottom, top=layer.top)
        for blob in layer.blobs:
            copy = old.blobs.add()
            copy.CopyFrom(blob)
            if legacy:
                dims = [1] * (4 - len(blob.shape.dim)) + list(blob.shape.dim)
                copy.ClearField("shape")
                copy.num, copy.channels, copy.height, copy.width = dims
        if layer.type == "Convolution":
            old.blobs_lr.extend([1, 2])
            old.weight_decay.extend([1, 0])
    target.write_bytes(v1.SerializeToString())
    return target


def listing(model):
    return [(layer.name, layer.type, [blob.shape for blob in layer.blobs]) for layer in model.layers]


def full_parse_listing(path):
    net = BVLC.NetParameter.FromString(path.read_bytes())
    return [(layer.name, layer.type, [tuple(blob.shape.dim) for blob in layer.blobs]) for layer in net.layer]


class TestFieldNumbers:
    def test_wire_numbers_are_those_of_caffe_proto(self):
        text = (ROOT / "caffe.proto").read_text()

        def number(message, field):
            body = re.search(r"\nmessage %s \{(.*?)\n\}" % message, text, re.S).group(1)
            return int(re.search(r"\b%s = (\d+)" % field, body).group(1))

        assert (NET_NAME, NET_LAYER, NET_V1_LAYERS) == tuple(number("NetParameter", f) for f in ("name", "layer", "layers"))
        assert (LAYER_NAME, LAYER_TYPE, LAYER_BLOBS) == tuple(number("LayerParameter", f) for f in ("name", "type", "blobs"))
        assert (V1_NAME, V1_TYPE, V1_BLOBS) == tuple(number("V1LayerParameter", f) for f in ("name", "type", "blobs"))
        assert (BLOB_SHAPE, BLOB_DATA, BLOB_DOUBLE_DATA) == tuple(
            number("BlobProto", f) for f in ("shape", "data", "double_data"))
        assert LEGACY_FIELDS == tuple(number("BlobProto", f) for f in ("num", "channels", "height", "width"))
        assert SHAPE_DIM == number("BlobShape", "dim")


class TestReading:
    def test_lists_what_a_full_parse_finds_in_a_model_trained_by_caffe(self, trained):
        model = read_caffemodel(trained)
        assert not model.v1 and model.name == "small"
        assert listing(model) == full_parse_listing(trained)
        assert [layer.name for layer in model.layers if layer.blobs] == ["conv1", "fc"]

    def test_values_are_read_only_views_equal_to_the_parsed_ones(self, trained):
        model = read_caffemodel(trained)
        expected = read_blobs(trained)
        for name, blobs in expected.items():
            values = model.values(name)
            for ours, theirs in zip(values, blobs, strict=True):
                assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
                assert not ours.flags.owndata and not ours.flags.writeable

    def test_v1_model_with_legacy_dimensions(self, trained, tmp_path):
        path = to_v1(trained, tmp_path / "v1.caffemodel")
        model = read_caffemodel(path)
        assert model.v1
        assert [(layer.name, layer.type) for layer in model.layers] == [(n, t) for n, t, _ in full_parse_listing(trained)]
        conv1, fc = model.layer("conv1"), model.layer("fc")
        assert all(blob.legacy for blob in conv1.blobs + fc.blobs)
        assert [blob.shape for blob in fc.blobs] == [(1, 1) + read_blobs(trained)["fc"][0].shape,
                                                     (1, 1, 1) + read_blobs(trained)["fc"][1].shape]
        assert np.array_equal(model.values("fc")[0].reshape(-1), read_blobs(trained)["fc"][0].reshape(-1))

    def test_unpacked_and_double_values(self, tmp_path):
        blob = BVLC.BlobProto(double_data=[1.5, -2.0, 3.25])
        blob.shape.dim.extend([3])
        layer = BVLC.LayerParameter(name="d", type="Bias", blobs=[blob])
        unpacked = b"".join(varint(BLOB_DATA << 3 | 5) + np.float32(v).tobytes() for v in (4.0, 5.0))
        body = varint(BLOB_SHAPE << 3 | 2) + bytes([2]) + varint(SHAPE_DIM << 3 | 0) + bytes([2]) + unpacked
        raw_layer = BVLC.LayerParameter(name="u", type="Bias").SerializeToString()
        raw_layer += varint(LAYER_BLOBS << 3 | 2) + varint(len(body)) + body
        path = tmp_path / "odd.caffemodel"
        path.write_bytes(BVLC.NetParameter(layer=[layer]).SerializeToString()
                         + varint(NET_LAYER << 3 | 2) + varint(len(raw_layer)) + raw_layer)
        assert BVLC.NetParameter.FromString(path.read_bytes()).layer[1].blobs[0].data == [4.0, 5.0]
        model = read_caffemodel(path)
        double, single = model.layer("d").blobs[0], model.layer("u").blobs[0]
        assert (double.dtype, double.count, single.dtype, single.count) == ("float64", 3, "float32", 2)
        assert model.values("d")[0].tolist() == [1.5, -2.0, 3.25]
        assert model.values("u")[0].tolist() == [4.0, 5.0]

    def test_written_models_parse_with_protobuf(self, tmp_path):
        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal((5, 2, 3, 3)).astype(np.float32), np.arange(5, dtype=np.float32)]
        path = tmp_path / "w.caffemodel"
        write_caffemodel(path, [(BVLC.LayerParameter(name="c", type="Convolution"), arrays),
                                (BVLC.LayerParameter(name="r", type="ReLU"), [])], name="written")
        net = BVLC.NetParameter.FromString(path.read_bytes())
        assert net.name == "written" and [layer.name for layer in net.layer] == ["c", "r"]
        for blob, array in zip(net.layer[0].blobs, arrays, strict=True):
            assert tuple(blob.shape.dim) == array.shape
            assert np.array_equal(np.array(blob.data, dtype=np.float32).reshape(array.shape), array)


class TestUnpackedValues:
    ROWS, COLUMNS = 1000, 4000  # 4 million values, one key before each: a 20 MB caffemodel

    def test_inspect_reads_unpacked_weights_in_a_fraction_of_their_size(self, cli, tmp_path):
        net, weights = self.write(tmp_path)
        cli("inspect", net)  # the command's modules, imported before memory is counted
        tracemalloc.start()
        try:
            result = cli("inspect", net, "--weights", weights)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.returncode == 0, result.stderr
        assert "1 layer loaded" in result.stdout
        size = weights.stat().st_size
        assert peak < size / 2, f"reading a {size / 1e6:.0f} MB caffemodel allocated {peak / 1e6:.0f} MB"

    def test_a_run_of_unpacked_values_is_one_strided_view_of_the_file(self, tmp_path):
        _, weights = self.write(tmp_path)
        blob, count = read_caffemodel(weights).layer("fc").blobs[0], self.ROWS * self.COLUMNS
        assert (blob.shape, blob.count, list(blob.value_runs())) == ((self.ROWS, self.COLUMNS), count,
                                                                      [(blob.runs[0], count, 5)])
        values = read_caffemodel(weights).values("fc")[0]
        assert np.array_equal(values, np.arange(self.ROWS * self.COLUMNS, dtype=np.float32).reshape(self.ROWS, -1))

    def test_unpacked_runs_broken_by_other_fields_keep_every_value_in_order(self, tmp_path):
        def unpacked(*values):
            return b"".join(varint(BLOB_DATA << 3 | 5) + np.float32(v).tobytes() for v in values)
        packed = np.float32([4, 5]).tobytes()
        body = (unpacked(1, 2) + varint(LEGACY_FIELDS[0] << 3 | 0) + bytes([6]) + unpacked(3)
                + varint(BLOB_DATA << 3 | 2) + varint(len(packed)) + packed + unpacked(6) + varint(BLOB_DATA << 3 | 5))
        path = tmp_path / "broken.caffemodel"
        path.write_bytes(self.model_bytes(body[:-1]))
        model = read_caffemodel(path)
        assert [count for _, count, _ in model.layer("fc").blobs[0].value_runs()] == [2, 1, 2, 1]
        assert model.values("fc")[0].tolist() == [1, 2, 3, 4, 5, 6]
        path.write_bytes(self.model_bytes(body) + self.model_bytes(b""))
        with pytest.raises(CaffegenError, match="a field of 4 bytes runs past the end of its message .* in layer 'fc'"):
            read_caffemodel(path)

    def write(self, folder):
        """An InnerProduct net, and its weights with every value written unpacked, a key before each."""
        net = folder / "net.prototxt"
        net.write_text(f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: '
                       f'{self.COLUMNS} }} }} }}\nlayer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                       f'inner_product_param {{ num_output: {self.ROWS} bias_term: false }} }}\n')
        fields = np.empty(self.ROWS * self.COLUMNS, dtype=[("key", "u1"), ("value", "<f4")])
        fields["key"], fields["value"] = BLOB_DATA << 3 | 5, np.arange(fields.size)
        dims = varint(self.ROWS) + varint(self.COLUMNS)
        shape = varint(SHAPE_DIM << 3 | 2) + varint(len(dims)) + dims
        weights = folder / "unpacked.caffemodel"
        weights.write_bytes(self.model_bytes(varint(BLOB_SHAPE << 3 | 2) + varint(len(shape)) + shape
                                             + fields.tobytes()))
        return net, weights

    @staticmethod
    def model_bytes(blob_body):
        layer = BVLC.LayerParameter(name="fc", type="InnerProduct").SerializeToString()
        layer += varint(LAYER_BLOBS << 3 | 2) + varint(len(blob_body)) + blob_body
        return varint(NET_LAYER << 3 | 2) + varint(len(layer)) + layer


def varint(value):
    """Protobuf's base-128 encoding of a non-negative integer."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


class TestDamagedFiles:
    def check(self, path, *words):
        with pytest.raises(CaffegenError) as caught:
            read_caffemodel(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and "\n" not in message
        for word in words:
            assert word in message, message
        return message

    def test_cut_in_half(self, trained, tmp_path):
        cut = tmp_path / "half.caffemodel"
        data = trained.read_bytes()
        cut.write_bytes(data[:len(data) // 2])
        message = self.check(cut, "runs past the end of the file", "cut short", f"of {len(data) // 2}")
        offset = int(re.search(r"at byte (\d+)", message).group(1))
        assert 0 <= offset < len(data) // 2

    def test_every_cut_is_an_error_or_a_shorter_model(self, trained, tmp_path):
        data = trained.read_bytes()
        boundaries = layer_boundaries(data)
        cut = tmp_path / "cut.caffemodel"
        for size in range(1, len(data), 7):
            cut.write_bytes(data[:size])
            if size in boundaries:
                assert read_caffemodel(cut).layers
            else:
                self.check(cut, "not a valid caffemodel")

    def test_a_prototxt(self, tmp_path):
        path = tmp_path / "net.caffemodel"
        path.write_text(SMALL)
        self.check(path, "looks like text")

    @pytest.mark.parametrize("seed", range(5))
    def test_random_bytes(self, tmp_path, seed):
        path = tmp_path / "random.caffemodel"
        path.write_bytes(np.random.default_rng(seed).bytes(4096))
        self.check(path)

    def test_no_layers(self, tmp_path):
        path = tmp_path / "empty_net.caffemodel"
        path.write_bytes(BVLC.NetParameter(name="x").SerializeToString())
        self.check(path, "no layers")

    def test_empty_missing_directory_and_hdf5(self, tmp_path):
        (tmp_path / "empty.caffemodel").write_bytes(b"")
        self.check(tmp_path / "empty.caffemodel", "empty file")
        self.check(tmp_path / "missing.caffemodel", "no such file")
        self.check(tmp_path, "is a directory")
        (tmp_path / "w.caffemodel.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
        self.check(tmp_path / "w.caffemodel.h5", "HDF5")


def layer_boundaries(data):
    """Byte offsets at which a caffemodel's top-level fields end."""
    net = BVLC.NetParameter.FromString(data)
    ends, position = set(), 0
    pieces = ([BVLC.NetParameter(name=net.name)] if net.name else []) + [BVLC.NetParameter(layer=[layer])
                                                                          for layer in net.layer]
    for piece in pieces:
        position += len(piece.SerializeToString())
        ends.add(position)
    assert position == len(data)
    return ends


class TestUpgrade:
    def test_matches_caffes_own_binary_upgrade(self, caffe, trained, tmp_path):
        old = to_v1(trained, tmp_path / "v1.caffemodel")
        code, log = run_caffe(caffe.with_name("upgrade_net_proto_binary"), old, tmp_path / "theirs.caffemodel",
                              cwd=tmp_path)
        assert code == 0, log[-2000:]
        assert upgrade_caffemodel(old, tmp_path / "ours.caffemodel") is True
        theirs = BVLC.NetParameter.FromString((tmp_path / "theirs.caffemodel").read_bytes())
        ours = BVLC.NetParameter.FromString((tmp_path / "ours.caffemodel").read_bytes())
        assert not ours.layers and len(ours.layer) == len(theirs.layer) == len(BVLC.NetParameter.FromString(
            old.read_bytes()).layers)
        for our_layer, their_layer in zip(ours.layer, theirs.layer):
            assert our_layer == their_layer, our_layer.name
        assert ours == theirs
        assert not read_caffemodel(tmp_path / "ours.caffemodel").v1

    def test_current_model_is_copied_unchanged(self, trained, tmp_path):
        assert upgrade_caffemodel(trained, tmp_path / "copy.caffemodel") is False
        assert (tmp_path / "copy.caffemodel").read_bytes() == trained.read_bytes()

    def test_cli_upgrades_net_and_weights_that_caffe_then_loads(self, caffe, cli, trained, tmp_path):
        v1_net = text_format.Parse(SMALL, BVLC.NetParameter())
        old_text = "".join(v1_layer_text(layer) for layer in v1_net.layer)
        (tmp_path / "old.prototxt").write_text(f'name: "small"\n{old_text}')
        to_v1(trained, tmp_path / "old.caffemodel")
        result = cli("upgrade", tmp_path / "old.prototxt", "-o", tmp_path / "new.prototxt",
                     "--weights", tmp_path / "old.caffemodel", "--weights-out", tmp_path / "new.caffemodel")
        assert result.returncode == 0, result.stderr
        assert "upgraded legacy V1 layers" in result.stderr
        assert "layers {" not in (tmp_path / "new.prototxt").read_text()
        assert not read_caffemodel(tmp_path / "new.caffemodel").v1
        code, log = run_caffe(caffe, "test", "-model", "new.prototxt", "-weights", "new.caffemodel",
                              "-iterations", "1", cwd=tmp_path)
        assert code == 0, log[-2000:]
        assert "Ignoring source layer conv1" not in log and "Ignoring source layer fc" not in log

    def test_damaged_weights_leave_neither_the_net_nor_the_weights_written(self, cli, tmp_path):
        (tmp_path / "net.prototxt").write_text(SMALL)
        data = self.v1_model()
        (tmp_path / "cut.caffemodel").write_bytes(data[:len(data) - 10])
        result = cli("upgrade", tmp_path / "net.prototxt", "-o", tmp_path / "new.prototxt",
                     "--weights", tmp_path / "cut.caffemodel", "--weights-out", tmp_path / "new.caffemodel")
        assert_one_line_error(result, "cut.caffemodel", "cut short")
        assert sorted(path.name for path in tmp_path.iterdir()) == ["cut.caffemodel", "net.prototxt"]

    def test_a_v1_layer_protobuf_cannot_read_is_named_and_nothing_is_written(self, cli, tmp_path):
        bottom = BVLC.V1LayerParameter.DESCRIPTOR.fields_by_name["bottom"].number
        layer = BVLC.V1LayerParameter(name="conv1", type=V1_TYPE_NUMBERS["Convolution"]).SerializeToString()
        layer += varint(bottom << 3 | 2) + varint(2) + b"\xff\xfe"  # a bottom name that is not UTF-8
        (tmp_path / "net.prototxt").write_text(SMALL)
        (tmp_path / "odd.caffemodel").write_bytes(varint(NET_V1_LAYERS << 3 | 2) + varint(len(layer)) + layer)
        result = cli("upgrade", tmp_path / "net.prototxt", "-o", tmp_path / "new.prototxt",
                     "--weights", tmp_path / "odd.caffemodel", "--weights-out", tmp_path / "new.caffemodel")
        assert_one_line_error(result, "odd.caffemodel", "in layer 'conv1'", "protobuf cannot read")
        assert sorted(path.name for path in tmp_path.iterdir()) == ["net.prototxt", "odd.caffemodel"]

    @staticmethod
    def v1_model():
        """A V1 caffemodel of one convolution with legacy blob dimensions."""
        weights = BVLC.BlobProto(num=3, channels=2, height=3, width=3, data=[0.5] * 54)
        bias = BVLC.BlobProto(num=1, channels=1, height=1, width=3, data=[0.0] * 3)
        layer = BVLC.V1LayerParameter(name="conv1", type=V1_TYPE_NUMBERS["Convolution"], bottom=["data"],
                                      top=["conv1"], blobs=[weights, bias])
        return BVLC.NetParameter(name="small", layers=[layer]).SerializeToString()

    def test_cli_refuses_half_the_weights_options(self, cli, trained, tmp_path):
        (tmp_path / "net.prototxt").write_text(SMALL)
        result = cli("upgrade", tmp_path / "net.prototxt", "--weights", trained)
        assert_one_line_error(result, "--weights-out")


def v1_layer_text(layer):
    """A current layer written as a V1 ``layers {}`` entry (enough for SMALL's layers)."""
    v1_type = next(v1 for v1, name in V1_TYPE_NAMES.items() if name == layer.type)
    inner = text_format.MessageToString(layer).replace(f'type: "{layer.type}"\n', f"type: {v1_type}\n")
    return "layers {\n" + inner + "}\n"
