"""Preflight that does not guess: partial shapes, the data's own files, and 'unverified' where it cannot know."""

import h5py
import lmdb
import numpy as np
import pytest
from caffe_runs import run_caffe
from conftest import run_caffegen
from fork_schemas import ceil_mode_proto

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import write_caffemodel
from caffegen.io.prototxt import parse_net
from caffegen.io.schema import BVLC, load_fork_schema
from caffegen.net.inspect import LOADED, MISMATCH, UNVERIFIED, inspect_net, preflight

HDF5_NET = """name: "tabular"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "train_h5.txt" batch_size: 5 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 8 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: CLASSES } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
LMDB_NET = """name: "images"
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { crop_size: 10 } data_param { source: "train_lmdb" backend: LMDB batch_size: 2 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def layer(name, kind):
    return BVLC.LayerParameter(name=name, type=kind)


def hdf5_run(folder, classes, with_data=True):
    """An HDF5Data train_val net, its base weights (4 classes, 20 features) and, if asked, its data files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.prototxt").write_text(HDF5_NET.replace("CLASSES", str(classes)))
    rng = np.random.default_rng(0)
    write_caffemodel(folder / "base.caffemodel", [
        (layer("ip1", "InnerProduct"), [rng.normal(size=(8, 20)).astype(np.float32), np.zeros(8, np.float32)]),
        (layer("ip2", "InnerProduct"), [rng.normal(size=(4, 8)).astype(np.float32), np.zeros(4, np.float32)])])
    if with_data:
        with h5py.File(folder / "train.h5", "w") as stored:
            stored["data"] = rng.normal(size=(10, 20)).astype(np.float32)
            stored["label"] = rng.integers(0, 3, 10).astype(np.float32)
        (folder / "train_h5.txt").write_text("train.h5\n")
    return folder


def lmdb_run(folder, weight_channels):
    """A Data (LMDB) net on 3×12×12 images cropped to 10, weights whose conv1 takes ``weight_channels``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.prototxt").write_text(LMDB_NET)
    with lmdb.open(str(folder / "train_lmdb"), map_size=1 << 24) as env, env.begin(write=True) as transaction:
        for index in range(4):
            datum = BVLC.Datum(channels=3, height=12, width=12, label=index % 2, data=bytes((index + i) % 256 for i in range(432)))
            transaction.put(f"{index:08d}".encode(), datum.SerializeToString())
    rng = np.random.default_rng(1)
    write_caffemodel(folder / "base.caffemodel", [
        (layer("conv1", "Convolution"), [rng.normal(size=(4, weight_channels, 3, 3)).astype(np.float32),
                                         np.zeros(4, np.float32)]),
        (layer("fc", "InnerProduct"), [rng.normal(size=(2, 256)).astype(np.float32), np.zeros(2, np.float32)])])
    return folder


def statuses(folder, input_shape=None):
    net = parse_net((folder / "net.prototxt").read_text(), folder / "net.prototxt").net
    inspection = inspect_net(net, weights=folder / "base.caffemodel", input_shape=input_shape)
    return {report.name: report.weights for report in inspection.layers if report.params}


class TestWithoutTheData:
    def test_a_changed_classifier_is_a_mismatch_with_no_input_shape(self, tmp_path):
        run = hdf5_run(tmp_path, classes=3, with_data=False)
        assert statuses(run) == {"ip1": UNVERIFIED, "ip2": MISMATCH}
        done = run_caffegen("inspect", run / "net.prototxt", "--weights", run / "base.caffemodel")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "param 0: the net's shape 3×8 differs from the weights' 4×8" in done.stdout
        assert "input of 'data' unknown: its source list train_h5.txt is not here" in done.stdout

    def test_what_cannot_be_checked_is_unverified_never_loaded(self, tmp_path):
        run = hdf5_run(tmp_path, classes=4, with_data=False)
        done = run_caffegen("inspect", run / "net.prototxt", "--weights", run / "base.caffemodel")
        assert done.returncode == 0, done.stdout + done.stderr
        summary = next(line for line in done.stdout.splitlines() if line.startswith("weights "))
        assert summary.endswith("1 layer loaded, 1 unverified (shapes partly unknown: pass --input-shape N,C,H,W), "
                                "0 new, 0 mismatched, 0 ignored")
        table = {line.split()[0]: line.split()[-1] for line in done.stdout.splitlines()[1:6] if line.strip()}
        assert table["ip1"] == UNVERIFIED and table["ip2"] == LOADED

    def test_prepare_and_launch_preflight_warn_about_unverified_weights(self, tmp_path):
        run = hdf5_run(tmp_path, classes=4, with_data=False)
        net = parse_net((run / "net.prototxt").read_text(), run / "net.prototxt").net
        warnings = preflight(net, run / "base.caffemodel")
        assert len(warnings) == 1 and "layer 'ip1': unverified: the net's shapes 8×?, 8 are partly unknown" in warnings[0]


class TestFromTheData:
    def test_hdf5_files_give_the_input(self, tmp_path):
        run = hdf5_run(tmp_path, classes=4)
        assert statuses(run, None) == {"ip1": UNVERIFIED, "ip2": LOADED}  # the library takes only what it is given
        done = run_caffegen("inspect", run / "net.prototxt", "--weights", run / "base.caffemodel")
        assert done.returncode == 0, done.stdout
        assert f"note: input of 'data': 20 per item, from the dataset 'data' of {run / 'train.h5'}" in done.stdout
        assert "2 layers loaded, 0 unverified, 0 new, 0 mismatched, 0 ignored" in done.stdout

    @pytest.mark.parametrize("channels, status", [(3, LOADED), (1, MISMATCH)])
    def test_the_first_datum_of_an_lmdb_gives_the_channels(self, tmp_path, channels, status):
        run = lmdb_run(tmp_path, channels)
        assert statuses(run)["conv1"] == UNVERIFIED
        done = run_caffegen("inspect", run / "net.prototxt", "--weights", run / "base.caffemodel")
        assert f"note: input of 'data': 3×12×12 per item, from the first Datum of {run / 'train_lmdb'}" in done.stdout
        row = next(line for line in done.stdout.splitlines() if line.startswith("conv1 "))
        assert row.split()[-1] == status and done.returncode == (status == MISMATCH)
        if status == MISMATCH:
            assert "the net's shape 4×3×3×3 differs from the weights' 4×1×3×3" in done.stdout


@pytest.mark.parametrize("classes", [3, 4])
def test_real_caffe_agrees(caffe, tmp_path, classes):
    run = hdf5_run(tmp_path, classes)
    inspected = run_caffegen("inspect", run / "net.prototxt", "--weights", run / "base.caffemodel")
    code, log = run_caffe(caffe, "test", "-model", "net.prototxt", "-weights", "base.caffemodel", "-iterations", "1",
                          cwd=run)
    if classes == 4:
        assert inspected.returncode == 0 and code == 0, log
    else:
        assert inspected.returncode == 1 and code != 0
        assert "Cannot copy param 0 weights from layer 'ip2'; shape mismatch" in log


def test_real_caffe_reads_the_lmdb_as_inspect_did(caffe, tmp_path):
    run = lmdb_run(tmp_path, 1)
    code, log = run_caffe(caffe, "test", "-model", "net.prototxt", "-weights", "base.caffemodel", "-iterations", "1",
                          cwd=run)
    assert code != 0 and "Cannot copy param 0 weights from layer 'conv1'; shape mismatch" in log
    assert "Top shape: 2 3 10 10" in log


def test_the_first_image_of_an_image_list_gives_the_input(tmp_path):
    from PIL import Image
    Image.new("L", (14, 12)).save(tmp_path / "a b.png")
    (tmp_path / "list.txt").write_text("a b.png 0\n")
    text = LMDB_NET.replace('type: "Data"', 'type: "ImageData"').replace(
        'data_param { source: "train_lmdb" backend: LMDB batch_size: 2 }',
        'image_data_param { source: "list.txt" batch_size: 2 is_color: false root_folder: "" }').replace(
        "crop_size: 10", "crop_size: 8")
    (tmp_path / "net.prototxt").write_text(text)
    done = run_caffegen("inspect", tmp_path / "net.prototxt")
    assert done.returncode == 0, done.stderr
    assert f"note: input of 'data': 1×12×14 per item, from the first image of {tmp_path / 'list.txt'}" in done.stdout
    conv = next(line for line in done.stdout.splitlines() if line.startswith("conv1 "))
    assert "2×4×6×6" in conv and "4×1×3×3" in conv


FORK_NET = """name: "fork"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "conv" top: "dw" }
layer { name: "bn" type: "BatchNorm" bottom: "dw" top: "dw" }
layer { name: "sc" type: "Scale" bottom: "dw" top: "dw" scale_param { bias_term: true } }
layer { name: "pw" type: "Convolution" bottom: "dw" top: "pw" convolution_param { num_output: 16 kernel_size: 1 } }
"""


def test_a_fork_layer_before_a_batchnorm_leaves_its_axes_unknown_and_the_net_accepted(tmp_path):
    """Read with a fork's schema, a type Caffe 1.0 lacks may be the fork's own; read with BVLC's, it is refused."""
    from caffegen.net.netview import TRAIN, NetView
    from caffegen.net.shapes import check_runs, infer_shapes
    with pytest.raises(CaffegenError, match="layer 'dw': Caffe would reject it: Caffe 1.0 has no layer type "
                                            "'ConvolutionDepthwise'"):
        check_runs(parse_net(FORK_NET, "fork.prototxt").net)
    net = parse_net(FORK_NET, "fork.prototxt", load_fork_schema(ceil_mode_proto(tmp_path / "fork.proto"))).net
    check_runs(net)  # nothing Caffe would reject is found where the shapes are unknown
    results = {result.name: result for result in infer_shapes(NetView(net, TRAIN))}
    assert results["bn"].tops == {"dw": None} and results["bn"].params == [(None,), (None,), (1,)]
    assert results["sc"].params == [(None,), (None,)] and not results["pw"].rejected
    assert results["pw"].params == [(16, None, 1, 1), (16,)]


def test_unreadable_data_files_are_a_note_not_a_traceback(tmp_path):
    (tmp_path / "train.h5").write_bytes(b"not hdf5 at all")
    (tmp_path / "train_h5.txt").write_text("train.h5\n")
    (tmp_path / "net.prototxt").write_text(HDF5_NET.replace("CLASSES", "3"))
    done = run_caffegen("inspect", tmp_path / "net.prototxt")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "note: input of 'data' unknown: its data cannot be read (" in done.stdout
