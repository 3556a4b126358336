"""Shape inference agrees with real Caffe: the "Top shape" lines it logs while it builds each net.

Every zoo net is built by real Caffe at batch 1 and stopped once the net is set up. Nets that
read files (LMDB, image lists, window files) get Input layers with the shapes caffegen infers
for their data layers, which ``TestDataLayers`` checks on its own against real files.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from caffe_runs import READY, assert_same_shapes, caffe_top_shapes, constant_fillers, run_caffe
from conftest import DIGITS, ROOT, ZOO, assert_one_line_error, zoo_cases, zoo_nets
from fork_schemas import ceil_mode_proto, ssd_proto
from google.protobuf import text_format

from caffegen.io.caffemodel import read_caffemodel
from caffegen.io.prototxt import read_net, to_text
from caffegen.io.schema import BVLC, load_fork_schema
from caffegen.net.layers import BVLC_TYPES, priors_per_location
from caffegen.net.netview import TEST, TRAIN, NetView
from caffegen.net.shapes import infer_shapes

FILE_DATA_TYPES = {"Data", "ImageData", "WindowData"}
# The size of the images a zoo net's database holds, by folder (N, C, H, W); ImageNet-sized otherwise.
STORED_IMAGES = {"mnist": (1, 1, 28, 28), "v1_2015_mnist": (1, 1, 28, 28), "siamese": (1, 2, 28, 28),
                 "cifar10": (1, 3, 32, 32)}
IMAGENET = (1, 3, 256, 256)
DENSENET = ZOO / "densenet/DenseNet_121.prototxt"
# One layer of every type and option caffegen infers, in a net that real Caffe builds.
EVERY_RULE = """
layer { name: "dummy" type: "DummyData" top: "dummy_a" top: "dummy_b"
  dummy_data_param { num: 2 channels: 3 channels: 4 height: 5 width: 6 width: 7 } }
layer { name: "memory" type: "MemoryData" top: "memory" top: "memory_label"
  memory_data_param { batch_size: 2 channels: 3 height: 8 width: 9 } }
layer { name: "data" type: "Input" top: "data" top: "ids" top: "label" top: "index"
  input_param { shape { dim: 2 dim: 6 dim: 13 dim: 11 } shape { dim: 2 dim: 5 } shape { dim: 2 } shape { dim: 3 } } }
layer { name: "conv_dil" type: "Convolution" bottom: "data" top: "conv_dil"
  convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 dilation: 2 group: 3 } }
layer { name: "conv_nd" type: "Convolution" bottom: "data" top: "conv_nd"
  convolution_param { num_output: 4 kernel_size: 3 kernel_size: 1 stride: 2 pad: 1 pad: 0 bias_term: false } }
layer { name: "deconv" type: "Deconvolution" bottom: "conv_dil" top: "deconv"
  convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "pool_clip" type: "Pooling" bottom: "data" top: "pool_clip"
  pooling_param { pool: MAX kernel_size: 3 stride: 3 pad: 2 } }
layer { name: "pool_floor" type: "Pooling" bottom: "data" top: "pool_floor" top: "pool_mask"
  pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 3 round_mode: FLOOR } }
layer { name: "pool_ceil" type: "Pooling" bottom: "data" top: "pool_ceil"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 pad_h: 1 pad_w: 0 } }
layer { name: "pool_global" type: "Pooling" bottom: "data" top: "pool_global" pooling_param { pool: AVE global_pooling: true } }
layer { name: "im2col" type: "Im2col" bottom: "data" top: "im2col" convolution_param { kernel_size: 3 stride: 2 } }
layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" }
layer { name: "prelu" type: "PReLU" bottom: "conv_dil" top: "prelu" }
layer { name: "prelu_shared" type: "PReLU" bottom: "conv_dil" top: "prelu_shared" prelu_param { channel_shared: true } }
layer { name: "elu" type: "ELU" bottom: "prelu" top: "prelu" }
layer { name: "sig" type: "Sigmoid" bottom: "prelu" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "sig" top: "sig" }
layer { name: "abs" type: "AbsVal" bottom: "sig" top: "abs" }
layer { name: "power" type: "Power" bottom: "abs" top: "abs" power_param { power: 2 } }
layer { name: "exp" type: "Exp" bottom: "abs" top: "abs" }
layer { name: "log" type: "Log" bottom: "abs" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "abs" top: "abs" }
layer { name: "drop" type: "Dropout" bottom: "abs" top: "abs" }
layer { name: "bn" type: "BatchNorm" bottom: "abs" top: "abs" }
layer { name: "scale" type: "Scale" bottom: "abs" top: "abs" scale_param { bias_term: true } }
layer { name: "bias" type: "Bias" bottom: "abs" top: "abs" bias_param { num_axes: -1 } }
layer { name: "thr" type: "Threshold" bottom: "abs" top: "thr" }
layer { name: "scale_2d" type: "Scale" bottom: "abs" top: "scale_2d" scale_param { axis: 1 num_axes: 2 } }
layer { name: "mvn" type: "MVN" bottom: "abs" top: "mvn" }
layer { name: "factor" type: "Parameter" top: "factor" parameter_param { shape { dim: 6 } } }
layer { name: "scale_by" type: "Scale" bottom: "mvn" bottom: "factor" top: "scale_by" scale_param { bias_term: true } }
layer { name: "bias_by" type: "Bias" bottom: "mvn" bottom: "factor" top: "bias_by" }
layer { name: "sum" type: "Eltwise" bottom: "scale_by" bottom: "bias_by" top: "sum" }
layer { name: "cat" type: "Concat" bottom: "conv_dil" bottom: "prelu_shared" top: "cat" }
layer { name: "cat0" type: "Concat" bottom: "data" bottom: "data" top: "cat0" concat_param { concat_dim: 0 } }
layer { name: "cat_last" type: "Concat" bottom: "data" bottom: "lrn" top: "cat_last" concat_param { axis: -1 } }
layer { name: "slice" type: "Slice" bottom: "data" top: "s1" top: "s2" top: "s3" slice_param { slice_point: 1 slice_point: 4 } }
layer { name: "slice_even" type: "Slice" bottom: "data" top: "e1" top: "e2" slice_param { axis: 0 } }
layer { name: "split" type: "Split" bottom: "data" top: "copy1" top: "copy2" }
layer { name: "flatten" type: "Flatten" bottom: "data" top: "flat" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "flatten_all" type: "Flatten" bottom: "data" top: "flat_all" }
layer { name: "reshape" type: "Reshape" bottom: "data" top: "reshaped" reshape_param { shape { dim: 0 dim: -1 dim: 11 } } }
layer { name: "reshape_mid" type: "Reshape" bottom: "data" top: "reshaped_mid"
  reshape_param { axis: 1 num_axes: 2 shape { dim: 3 dim: -1 dim: 2 } } }
layer { name: "reshape_end" type: "Reshape" bottom: "data" top: "reshaped_end" reshape_param { axis: -1 shape { dim: 1 } } }
layer { name: "crop" type: "Crop" bottom: "data" bottom: "pool_ceil" top: "crop" crop_param { axis: 2 offset: 1 offset: 2 } }
layer { name: "crop_all" type: "Crop" bottom: "data" bottom: "pool_floor" top: "crop_all" crop_param { axis: 1 offset: 0 } }
layer { name: "softmax" type: "Softmax" bottom: "data" top: "softmax" softmax_param { axis: 2 } }
layer { name: "fc_axis2" type: "InnerProduct" bottom: "data" top: "fc_axis2" inner_product_param { num_output: 7 axis: 2 transpose: true } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 10 bias_term: false } }
layer { name: "argmax" type: "ArgMax" bottom: "fc" top: "argmax" argmax_param { top_k: 3 out_max_val: true } }
layer { name: "argmax_axis" type: "ArgMax" bottom: "data" top: "argmax_axis" argmax_param { top_k: 2 axis: 1 } }
layer { name: "reduce" type: "Reduction" bottom: "data" top: "reduced" reduction_param { axis: 2 operation: ASUM } }
layer { name: "reduce_all" type: "Reduction" bottom: "data" top: "reduced_all" }
layer { name: "tile" type: "Tile" bottom: "data" top: "tiled" tile_param { axis: -1 tiles: 3 } }
layer { name: "embed" type: "Embed" bottom: "ids" top: "embedded" embed_param { input_dim: 10 num_output: 4 } }
layer { name: "reindex" type: "BatchReindex" bottom: "data" bottom: "index" top: "reindexed" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" top: "per_class" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "l2" type: "EuclideanLoss" bottom: "fc" bottom: "fc" top: "l2" }
layer { name: "swish" type: "Swish" bottom: "data" top: "swish" }
layer { name: "silence" type: "Silence" bottom: "tiled" }
"""


def batch_of_one(net):
    """Set every batch size of ``net`` to 1, in place."""
    for shape in net.input_shape:
        shape.dim[0] = 1
    for index in range(0, len(net.input_dim), 4):
        net.input_dim[index] = 1
    for layer in net.layer:
        for shape in list(layer.input_param.shape) + list(layer.dummy_data_param.shape):
            shape.dim[0] = 1
        for name in ("data_param", "image_data_param", "window_data_param", "hdf5_data_param", "memory_data_param"):
            if layer.HasField(name):
                getattr(layer, name).batch_size = 1
    return net


def layer_types(net):
    return {layer.type for layer in net.layer}


def deploy_nets():
    """Zoo nets that Caffe builds without any file: their data comes from Input layers or input fields."""
    return [name for name in zoo_nets()
            if not layer_types(read_net(ZOO / name).net) & (FILE_DATA_TYPES | {"HDF5Data", "Python"})]


def file_data_nets():
    """(net, phase) of the zoo nets whose data layers read databases, image lists or window files."""
    cases = []
    for name in zoo_nets():
        net = read_net(ZOO / name).net
        if layer_types(net) & {"HDF5Data", "Python"}:
            continue
        for phase in (TRAIN, TEST):
            if {layer.type for layer in NetView(net, phase).layers} & FILE_DATA_TYPES:
                cases.append((name, phase))
    return cases


def with_inputs_for_file_data(net, phase, shapes):
    """``net`` with each file-reading data layer of ``phase`` replaced by an Input layer of the inferred shapes."""
    inferred = {result.name: result for result in shapes}
    view = NetView(net, phase)
    runnable = BVLC.NetParameter()
    runnable.CopyFrom(net)
    runnable.ClearField("layer")
    for layer in view.layers:
        if layer.type in FILE_DATA_TYPES:
            tops = inferred[layer.name].tops
            assert all(None not in shape for shape in tops.values()), (layer.name, tops)
            runnable.layer.add(name=layer.name, type="Input", top=layer.top).input_param.shape.extend(
                [BVLC.BlobShape(dim=tops[top]) for top in layer.top])
        else:
            runnable.layer.add().CopyFrom(layer)
    return runnable


@pytest.mark.zoo
class TestZooAgainstCaffe:
    def test_the_deploy_nets_cover_the_published_families(self):
        names = set(deploy_nets())
        for expected in ("bvlc_alexnet/deploy.prototxt", "bvlc_reference_caffenet/deploy.prototxt",
                         "bvlc_googlenet/deploy.prototxt", "resnet/ResNet-50-deploy.prototxt",
                         "resnet/ResNet-101-deploy.prototxt", "resnet/ResNet-152-deploy.prototxt",
                         "squeezenet_v1.0/deploy.prototxt", "squeezenet_v1.1/deploy.prototxt",
                         "mobilenet/mobilenet_deploy.prototxt", "mobilenet/mobilenet_v2_deploy.prototxt",
                         "fcn_voc8s/deploy.prototxt"):
            assert expected in names

    @pytest.mark.parametrize("name", zoo_cases(deploy_nets))
    def test_deploy_net(self, caffe, tmp_path, name):
        net = batch_of_one(read_net(ZOO / name).net)
        ours = infer_shapes(NetView(net, TEST))
        assert not [result.name for result in ours if result.note], [(r.name, r.note) for r in ours if r.note]
        assert_same_shapes(ours, caffe_top_shapes(caffe, tmp_path, net, TEST))

    @pytest.mark.parametrize("name,phase", zoo_cases(file_data_nets, arity=2))
    def test_net_reading_files(self, caffe, tmp_path, name, phase):
        net = batch_of_one(read_net(ZOO / name).net)
        ours = infer_shapes(NetView(net, phase), STORED_IMAGES.get(Path(name).parts[0], IMAGENET))
        assert_same_shapes(ours, caffe_top_shapes(caffe, tmp_path, with_inputs_for_file_data(net, phase, ours), phase))

    def test_densenet_with_its_forks_ceil_mode(self, caffe, tmp_path):
        fork = load_fork_schema(ceil_mode_proto(tmp_path / "fork.proto"))
        net = read_net(DENSENET, fork).net
        floor = [layer.name for layer in net.layer if layer.type == "Pooling" and not layer.pooling_param.ceil_mode]
        assert floor, "DenseNet-Caffe should round some pooled sizes down"
        ours = infer_shapes(NetView(net, TEST))
        assert_same_shapes(ours, caffe_top_shapes(caffe, tmp_path, as_bvlc_rounding(net), TEST))

    def test_every_rule(self, caffe, tmp_path):
        net = every_rule_net()
        ours = infer_shapes(NetView(net, TRAIN))
        assert not [result.name for result in ours if result.note]
        assert_same_shapes(ours, caffe_top_shapes(caffe, tmp_path, net))


def every_rule_net():
    return text_format.Parse(EVERY_RULE, BVLC.NetParameter(name="every_rule"))


def as_bvlc_rounding(net):
    """A fork net in BVLC's schema: ceil_mode becomes the round_mode BVLC Caffe has."""
    for layer in net.layer:
        param = layer.pooling_param
        if layer.type == "Pooling" and param.HasField("ceil_mode"):
            param.round_mode = param.CEIL if param.ceil_mode else param.FLOOR
            param.ClearField("ceil_mode")
    return text_format.Parse(to_text(net), BVLC.NetParameter())


class TestParameterShapes:
    """Learnable blob shapes agree with the blobs real Caffe saves in a snapshot of the net."""

    @pytest.mark.zoo
    @pytest.mark.parametrize("path", [None, ZOO / "bvlc_alexnet/deploy.prototxt",
                                      ZOO / "resnet/ResNet-50-deploy.prototxt",
                                      ZOO / "squeezenet_v1.1/deploy.prototxt",
                                      ZOO / "mobilenet/mobilenet_v2_deploy.prototxt",
                                      ZOO / "bvlc_googlenet/deploy.prototxt"], ids=lambda path: path.parent.name if path else "every_rule")
    def test_snapshot_blobs(self, caffe, tmp_path, path):
        net = batch_of_one(read_net(path).net) if path else every_rule_net()
        (tmp_path / "net.prototxt").write_text(to_text(constant_fillers(net)))
        (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n'
                                                  'max_iter: 0\nsolver_mode: CPU\nsnapshot_prefix: "snap"\n')
        code, log = run_caffe(caffe, "train", "-solver", "solver.prototxt", cwd=tmp_path)
        assert code == 0, log[-2000:]
        saved = {layer.name: [blob.shape for blob in layer.blobs]
                 for layer in read_caffemodel(tmp_path / "snap_iter_0.caffemodel").layers}
        ours = {result.name: result.params for result in infer_shapes(NetView(net, TRAIN)) if result.layer}
        assert ours == {name: saved[name] for name in ours}


class TestDataLayers:
    """Data layers as Caffe shapes them from real files: an LMDB made by convert_imageset, image lists."""

    @pytest.mark.zoo
    def test_lmdb_with_crop(self, caffe, tmp_path):
        write_image(tmp_path / "a.ppm", height=260, width=300, channels=3)
        make_lmdb(caffe, tmp_path, ["a.ppm 0"], "db")
        net = reading_files(ZOO / "bvlc_alexnet/train_val.prototxt", tmp_path / "db")
        ours = infer_shapes(NetView(net, TRAIN), (1, 3, 260, 300))
        assert ours[0].tops["data"] == (1, 3, 227, 227)
        assert_same_shapes(ours, caffe_top_shapes(caffe, tmp_path, net))

    @pytest.mark.zoo
    def test_lmdb_without_crop(self, caffe, tmp_path):
        write_image(tmp_path / "a.pgm", height=20, width=24, channels=1)
        make_lmdb(caffe, tmp_path, ["a.pgm 0"], "db", "--gray")
        net = reading_files(ZOO / "mnist/lenet_train_test.prototxt", tmp_path / "db")
        ours = infer_shapes(NetView(net, TRAIN), (1, 1, 20, 24))
        assert ours[0].tops["data"] == (1, 1, 20, 24)
        assert_same_shapes(ours, caffe_top_shapes(caffe, tmp_path, net))

    @pytest.mark.zoo
    def test_image_list_resized_and_cropped(self, caffe, tmp_path):
        write_image(tmp_path / "a.ppm", height=30, width=40, channels=3)
        (tmp_path / "list.txt").write_text("a.ppm 0\n")
        net = reading_files(ZOO / "finetune_flickr_style/train_val.prototxt", tmp_path / "list.txt", tmp_path)
        ours = infer_shapes(NetView(net, TRAIN))
        assert ours[0].tops["data"] == (1, 3, 227, 227) and not ours[0].note
        assert_same_shapes(ours, caffe_top_shapes(caffe, tmp_path, net))

    def test_image_list_keeps_the_nets_channels(self, caffe, tmp_path):
        write_image(tmp_path / "a.ppm", height=28, width=28, channels=3)
        (tmp_path / "list.txt").write_text("a.ppm 0\n")
        net = reading_files(ROOT / "models/digits/train_val.prototxt", tmp_path / "list.txt", tmp_path)
        unknown = infer_shapes(NetView(net, TRAIN))
        assert unknown[0].tops["data"] == (1, 1, None, None) and "--input-shape" in unknown[0].note
        ours = infer_shapes(NetView(net, TRAIN), (1, 3, 28, 28))
        assert ours[0].tops["data"] == (1, 1, 28, 28)
        assert_same_shapes(ours, caffe_top_shapes(caffe, tmp_path, net))


def write_image(path, height, width, channels):
    """A binary PPM (colour) or PGM (grey) image of random pixels."""
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, channels), dtype=np.uint8)
    path.write_bytes(f"P{6 if channels == 3 else 5}\n{width} {height}\n255\n".encode() + pixels.tobytes())


def make_lmdb(caffe, folder, lines, name, *flags):
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    code, log = run_caffe(caffe.with_name("convert_imageset"), *flags, f"{folder}/", "list.txt", name, cwd=folder)
    assert code == 0, log[-2000:]


def reading_files(path, source, root=None):
    """A zoo net at batch 1 whose data layers read ``source``, without mean files."""
    net = batch_of_one(read_net(path).net)
    for layer in net.layer:
        if layer.type in ("Data", "ImageData"):
            param = layer.data_param if layer.type == "Data" else layer.image_data_param
            param.source = str(source)
            if layer.type == "Data":
                param.backend = param.LMDB
            else:
                param.root_folder = f"{root}/"
                param.shuffle = False
            layer.transform_param.ClearField("mean_file")
    return net


REJECTED = {
    "eltwise of different shapes": 'layer { name: "bad" type: "Eltwise" bottom: "data" bottom: "other" top: "bad" }',
    "pad not below the kernel": 'layer { name: "bad" type: "Pooling" bottom: "data" top: "bad" '
                                'pooling_param { kernel_size: 2 pad: 2 } }',
    "reshape to another count": 'layer { name: "bad" type: "Reshape" bottom: "data" top: "bad" '
                                'reshape_param { shape { dim: 0 dim: 5 dim: -1 dim: 7 } } }',
    "slice that does not divide": 'layer { name: "bad" type: "Slice" bottom: "data" top: "a" top: "b" }',
    "group that does not divide": 'layer { name: "bad" type: "Convolution" bottom: "data" top: "bad" '
                                  'convolution_param { num_output: 4 kernel_size: 1 group: 2 } }',
    "param on a layer without blobs": 'layer { name: "bad" type: "ReLU" bottom: "data" top: "bad" param { lr_mult: 0 } }',
    "concat of different sizes": 'layer { name: "bad" type: "Concat" bottom: "data" bottom: "other" top: "bad" }',
    "pooling kernel beyond the input": 'layer { name: "bad" type: "Pooling" bottom: "data" top: "bad" '
                                       'pooling_param { pool: AVE kernel_size: 11 stride: 1 } }',
    "convolution without a top": 'layer { name: "bad" type: "Convolution" bottom: "data" '
                                 'convolution_param { num_output: 4 kernel_size: 1 } }',
    "slice_dim beyond the axes": 'layer { name: "bad" type: "Slice" bottom: "data" top: "a" top: "b" '
                                 'slice_param { slice_dim: 4 } }',
    "concat_dim beyond the axes": 'layer { name: "bad" type: "Concat" bottom: "data" bottom: "data" top: "bad" '
                                  'concat_param { concat_dim: 7 } }',
    "argmax of a scalar": 'layer { name: "sum" type: "Reduction" bottom: "data" top: "sum" '
                          'reduction_param { axis: 0 } } layer { name: "bad" type: "ArgMax" bottom: "sum" top: "bad" }',
}
TWO_INPUTS = ('layer { name: "input" type: "Input" top: "data" top: "other" '
              'input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } shape { dim: 1 dim: 3 dim: 8 dim: 9 } } }\n')


class TestWithoutCaffe:
    @pytest.mark.parametrize("case", sorted(REJECTED))
    def test_what_caffe_rejects_is_flagged_and_caffe_does_reject_it(self, caffe, tmp_path, case):
        net = text_format.Parse(TWO_INPUTS + REJECTED[case], BVLC.NetParameter())
        bad = infer_shapes(NetView(net, TRAIN))[-1]
        assert bad.rejected and bad.note.startswith("Caffe would reject it")
        (tmp_path / "net.prototxt").write_text(to_text(net))
        code, log = run_caffe(caffe, "time", "-model", "net.prototxt", "-iterations", "1", cwd=tmp_path)
        assert code != 0 and "Check failed" in log and READY not in log

    def test_a_pooling_that_leaves_nothing_is_flagged_and_caffe_aborts_on_it(self, caffe, tmp_path):
        """Caffe builds a net with an empty blob, then aborts at its first forward pass."""
        empty = 'layer { name: "bad" type: "Pooling" bottom: "data" top: "bad" pooling_param { kernel_size: 10 stride: 2 } }'
        net = text_format.Parse(TWO_INPUTS + empty, BVLC.NetParameter())
        bad = infer_shapes(NetView(net, TRAIN))[-1]
        assert bad.rejected and "the output would be empty (0×0)" in bad.note
        (tmp_path / "net.prototxt").write_text(to_text(net))
        code, log = run_caffe(caffe, "time", "-model", "net.prototxt", "-iterations", "1", cwd=tmp_path)
        assert code != 0 and "Check failed" in log and "Average Forward pass" not in log

    @pytest.mark.parametrize("setting", ["inner_product_param { axis: 40 }", "scale_param { axis: 30 num_axes: 3 }"])
    def test_settings_implying_more_axes_than_caffe_blobs_have_are_rejected(self, setting):
        layer_type = "Scale" if "scale" in setting else "InnerProduct"
        net = text_format.Parse('layer { name: "input" type: "Input" top: "data" }\n'
                                f'layer {{ name: "bad" type: "{layer_type}" bottom: "data" top: "bad" {setting} }}',
                                BVLC.NetParameter())
        bad = infer_shapes(NetView(net, TRAIN))[-1]
        assert bad.rejected and "axes; Caffe's blobs have at most 32" in bad.note

    @pytest.mark.zoo
    def test_an_unknown_layer_type_leaves_what_follows_unknown_but_what_layers_fix(self):
        net = read_net(ZOO / "bvlc_alexnet/deploy.prototxt").net
        pool2 = next(layer for layer in net.layer if layer.name == "pool2")
        pool2.type = "MyPooling"
        results = {result.name: result for result in infer_shapes(NetView(net, TRAIN))}
        assert results["pool2"].tops == {"pool2": None} and "'MyPooling'" in results["pool2"].note
        # A convolution fixes its outputs and kernel, not its input channels; what follows learns its channels.
        assert results["conv3"].tops == {"conv3": (None, 384, None, None)} and results["conv3"].note is None
        assert results["conv3"].params == [(384, None, 3, 3), (384,)] and results["conv3"].multiply_adds is None
        assert results["conv4"].params == [(384, 192, 3, 3), (384,)]
        assert results["fc6"].params == [(4096, None), (4096,)] and results["fc7"].params == [(4096, 4096), (4096,)]
        assert results["conv2"].tops["conv2"] is not None

    @pytest.mark.zoo
    def test_unknown_image_size_stays_partly_known(self):
        net = batch_of_one(read_net(ZOO / "mnist/lenet_train_test.prototxt").net)
        results = {result.name: result for result in infer_shapes(NetView(net, TRAIN))}
        assert results["mnist"].tops["data"] == (1, None, None, None) and "--input-shape" in results["mnist"].note
        assert results["conv1"].tops["conv1"] == (1, 20, None, None)
        assert results["conv1"].params == [(20, None, 5, 5), (20,)]
        assert results["ip1"].tops["ip1"] == (1, 500) and results["ip1"].params == [(500, None), (500,)]
        assert results["conv1"].multiply_adds is None
        assert results["loss"].tops["loss"] == ()

    @pytest.mark.zoo
    def test_multiply_adds_and_parameters_match_published_figures(self):
        """MobileNet v1: 569 million mult-adds and 4.2 million parameters (Howard et al. 2017, table 8);
        ResNet-50: 3.8 billion FLOPs, counted as multiply-adds (He et al. 2015, table 1)."""
        def totals(name):
            results = infer_shapes(NetView(read_net(ZOO / name).net, TEST))
            multiply_adds = sum(result.multiply_adds for result in results)
            parameters = sum(np.prod(shape, dtype=np.int64) for result in results
                             if result.type not in ("BatchNorm",) for shape in result.params or [])
            return multiply_adds, parameters

        multiply_adds, parameters = totals("mobilenet/mobilenet_deploy.prototxt")
        assert round(multiply_adds / 1e6) == 569 and round(parameters / 1e5) == 42
        multiply_adds, _ = totals("resnet/ResNet-50-deploy.prototxt")
        assert round(multiply_adds / 1e8) in (38, 39)


SSD = ZOO / "ssd_mobilenet"


@pytest.fixture(scope="module")
def ssd_schema(tmp_path_factory):
    return load_fork_schema(ssd_proto(tmp_path_factory.mktemp("ssd") / "caffe.proto"))


@pytest.mark.zoo
class TestSsdFork:
    """SSD's layers, read with the test copy of SSD's schema. No SSD Caffe can run here, so the checks
    are SSD's own: its published MobileNet-SSD figures and the CHECKs of its layers' Reshape."""

    @pytest.mark.parametrize("settings, count", [
        ("min_size: 60 aspect_ratio: 2 flip: true", 3),
        ("min_size: 105 max_size: 150 aspect_ratio: 2 aspect_ratio: 3 flip: true", 6),
        ("min_size: 30 aspect_ratio: 2 aspect_ratio: 0.5 flip: true", 3),
        ("min_size: 30 aspect_ratio: 2 aspect_ratio: 2 flip: false", 2),
        ("min_size: 30 aspect_ratio: 1", 1),
        ("min_size: 30 min_size: 60 max_size: 60 max_size: 90 aspect_ratio: 2", 8),
    ])
    def test_priors_per_location_are_counted_as_ssd_does(self, ssd_schema, settings, count):
        assert priors_per_location(text_format.Parse(settings, ssd_schema.PriorBoxParameter())) == count

    @pytest.mark.parametrize("name, phase", [("MobileNetSSD_deploy.prototxt", TEST),
                                             ("MobileNetSSD_train.prototxt", TRAIN),
                                             ("MobileNetSSD_test.prototxt", TEST)])
    def test_mobilenet_ssd_confidences_are_priors_times_classes(self, ssd_schema, name, phase):
        """MobileNet-SSD scores 1917 priors at 300×300 (19², 10², 5², 3², 2², 1² locations × 3 or 6 priors)."""
        net = read_net(SSD / name, ssd_schema).net
        view = NetView(net, phase)
        results = {result.name: result for result in infer_shapes(view, (1, 3, 300, 300))}
        assert not [(result.name, result.note) for result in results.values() if result.note]
        boxes = [layer for layer in view.layers if layer.type == "PriorBox"]
        sides = [results[view.sources(box.name)[0]].tops[box.bottom[0]][2] for box in boxes]
        assert sides == [19, 10, 5, 3, 2, 1]
        for box in boxes:
            conf = view.layer(box.bottom[0] + "_mbox_conf")
            assert conf.convolution_param.num_output == priors_per_location(box.prior_box_param) * 21
        assert results["mbox_priorbox"].tops["mbox_priorbox"] == (1, 2, 1917 * 4)
        batch = results["mbox_conf"].tops["mbox_conf"][0]
        assert results["mbox_conf"].tops["mbox_conf"] == (batch, 1917 * 21)
        assert results["mbox_loc"].tops["mbox_loc"] == (batch, 1917 * 4)
        assert results["conv11_mbox_conf_perm"].tops["conv11_mbox_conf_perm"] == (batch, 19, 19, 63)

    @pytest.mark.parametrize("name, layer, param", [("MobileNetSSD_train.prototxt", "mbox_loss", "multibox_loss_param"),
                                                    ("MobileNetSSD_deploy.prototxt", "detection_out",
                                                     "detection_output_param")])
    def test_confidences_that_miss_a_class_are_rejected(self, ssd_schema, name, layer, param):
        net = read_net(SSD / name, ssd_schema).net
        getattr(next(item for item in net.layer if item.name == layer), param).num_classes = 20
        phase = TRAIN if "train" in name else TEST
        result = next(r for r in infer_shapes(NetView(net, phase), (1, 3, 300, 300)) if r.name == layer)
        assert result.rejected and "1917 priors × 20 make 38340" in result.note

    def test_without_the_forks_schema_the_shapes_are_unknown(self):
        net = text_format.Parse('layer { name: "data" type: "Input" top: "data" '
                                'input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }'
                                'layer { name: "perm" type: "Permute" bottom: "data" top: "perm" }',
                                BVLC.NetParameter())
        result = infer_shapes(NetView(net, TEST))[-1]
        assert result.tops == {"perm": None} and "--proto" in result.note and not result.rejected


class TestTypesAndBlobs:
    """A mistyped layer type or bottom: Caffe refuses the net, and prepare, inspect and lint say so first."""

    def mistyped(self, tmp_path, old, new):
        text = (DIGITS / "train_val.prototxt").read_text()
        assert old in text
        path = tmp_path / "net.prototxt"
        path.write_text(text.replace(old, new, 1))
        return path

    def test_caffegen_knows_the_layer_types_of_the_caffe_it_installs(self, caffe, tmp_path):
        net = text_format.Parse(TWO_INPUTS + 'layer { name: "bad" type: "Convolutoin" bottom: "data" top: "bad" }',
                                BVLC.NetParameter())
        (tmp_path / "net.prototxt").write_text(to_text(net))
        code, log = run_caffe(caffe, "time", "-model", "net.prototxt", "-iterations", "1", cwd=tmp_path)
        known = re.search(r"Unknown layer type: Convolutoin \(known types: ([^)]*)\)", log)
        assert code != 0 and known, log[-2000:]
        assert set(known.group(1).split(", ")) == BVLC_TYPES

    @pytest.mark.parametrize("old, new, words", [
        ('type: "Convolution"', 'type: "Convolutoin"', "layer 'conv1': Caffe would reject it: Caffe 1.0 has no layer "
                                                       "type 'Convolutoin' (did you mean 'Convolution'"),
        ('bottom: "conv1" top: "conv1" }', 'bottom: "conv_1" top: "conv1" }',
         "layer 'bn1': Caffe would reject it: bottom 'conv_1' is produced by no earlier layer (did you mean 'conv1'"),
    ], ids=["type", "bottom"])
    def test_prepare_inspect_and_lint_name_the_layer_and_the_likely_name(self, cli, images, tmp_path, old, new, words):
        net = self.mistyped(tmp_path, old, new)
        prepared = cli("prepare", "--gpu", "cpu", "--net", net, "--weights", DIGITS / "digits.caffemodel",
                       "--data", images, "-o", tmp_path / "run")
        assert_one_line_error(prepared, words.split(": ", 1)[1].split(" (")[0])
        assert not (tmp_path / "run").exists()
        inspected = cli("inspect", net)
        assert inspected.returncode == 1 and words in inspected.stdout, inspected.stdout
        linted = cli("lint", net)
        likely = words.rsplit("(", 1)[1]
        assert linted.returncode == 1 and likely in linted.stdout, linted.stdout
