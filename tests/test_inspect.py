"""Inspecting nets and weights: statuses as real Caffe copies weights, the preflight check, the command line."""

import json
import re
import tracemalloc

import numpy as np
import pytest
from caffe_runs import run_caffe, train
from conftest import ZOO, assert_one_line_error
from google.protobuf import text_format

from caffegen.io.caffemodel import write_caffemodel
from caffegen.io.prototxt import read_net, to_text
from caffegen.io.schema import BVLC
from caffegen.net.freeze import freeze
from caffegen.net.head import retarget_head
from caffegen.net.inspect import LOADED, MISMATCH, NEW, NONE, check_weights, inspect_net
from caffegen.net.netview import PHASE_NUMBERS, TEST, TRAIN, NetView
from caffegen.net.shapes import infer_shapes

BASE = """
name: "base"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 }
                     shape { dim: 4 dim: 2 dim: 9 dim: 9 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 5 kernel_size: 3 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
ALEXNET_DEPLOY = ZOO / "bvlc_alexnet/deploy.prototxt"
ALEXNET_TRAIN_VAL = ZOO / "bvlc_alexnet/train_val.prototxt"
VGG16 = ZOO / "v1_vgg16_rcnn/rcnn_batch_256_output_fc7_vgg_verydeep_16.prototxt"


@pytest.fixture(scope="module")
def base_model(caffe, tmp_path_factory):
    model, _ = train(caffe, tmp_path_factory.mktemp("base"), BASE, max_iter=2)
    return model


def base_net():
    return text_format.Parse(BASE, BVLC.NetParameter())


def layer(net, name):
    return next(layer for layer in net.layer if layer.name == name)


def statuses(inspection):
    return {report.name: report.weights for report in inspection.layers}


def caffe_loads(caffe, workdir, net, weights):
    """Real Caffe builds ``net`` and copies ``weights`` into it: (return code, log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "net.prototxt").write_text(to_text(net))
    return run_caffe(caffe, "test", "-model", "net.prototxt", "-weights", weights, "-iterations", "1", cwd=workdir)


def ignored_by_caffe(log):
    return [line.rsplit(" ", 1)[-1] for line in log.splitlines() if "] Ignoring source layer " in line]


class TestWeightsAsCaffeCopiesThem:
    def test_the_trained_net_loads_every_layer(self, caffe, base_model, tmp_path):
        inspection = inspect_net(base_net(), weights=base_model)
        learnable = {"conv1", "bn1", "scale1", "conv2", "fc"}
        assert statuses(inspection) == {name: LOADED if name in learnable else NONE
                                        for name in ("data", "conv1", "bn1", "scale1", "relu1", "conv2", "fc", "loss")}
        assert not inspection.problems and not inspection.ignored
        code, log = caffe_loads(caffe, tmp_path, base_net(), base_model)
        assert code == 0, log[-2000:]
        assert not ignored_by_caffe(log)

    def test_a_renamed_head_is_new_and_the_old_one_ignored(self, caffe, base_model, tmp_path):
        net = base_net()
        freeze(net, upto="conv1")
        retarget_head(net, 3)
        inspection = inspect_net(net, weights=base_model)
        assert statuses(inspection)["fc_ft"] == NEW
        assert {name for name, status in statuses(inspection).items() if status == LOADED} == {
            "conv1", "bn1", "scale1", "conv2"}
        assert inspection.ignored == ["fc"] and not inspection.problems
        code, log = caffe_loads(caffe, tmp_path, net, base_model)
        assert code == 0, log[-2000:]
        assert ignored_by_caffe(log) == inspection.ignored

    def test_num_output_changed_without_rename_is_a_mismatch_on_which_caffe_aborts(self, caffe, base_model,
                                                                                   tmp_path):
        net = base_net()
        layer(net, "fc").inner_product_param.num_output = 3
        inspection = inspect_net(net, weights=base_model)
        assert statuses(inspection)["fc"] == MISMATCH
        first = inspection.problems[0]
        assert (first.layer, first.blob, first.fatal) == ("fc", 0, True)
        assert "Cannot copy param 0 weights from layer 'fc'" in first.message and "caffegen head" in first.message
        assert [problem.blob for problem in inspection.problems] == [0, 1]
        code, log = caffe_loads(caffe, tmp_path, net, base_model)
        assert code != 0
        caught = re.search(r"Cannot copy param (\d+) weights from layer '(\w+)'; shape mismatch.  Source param shape "
                           r"is ([\d ]+) \(\d+\); target param shape is ([\d ]+) \(\d+\)", log)
        assert caught, log[-2000:]
        assert (int(caught.group(1)), caught.group(2)) == (first.blob, first.layer)
        assert tuple(map(int, caught.group(3).split())) == first.weights_shape
        assert tuple(map(int, caught.group(4).split())) == first.net_shape

    def test_a_different_blob_count_is_a_mismatch_on_which_caffe_aborts(self, caffe, base_model, tmp_path):
        net = base_net()
        layer(net, "conv2").convolution_param.bias_term = False
        problems = check_weights(net, base_model)
        assert [(problem.layer, problem.blob) for problem in problems] == [("conv2", None)]
        assert "Incompatible number of blobs for layer conv2" in problems[0].message
        code, log = caffe_loads(caffe, tmp_path, net, base_model)
        assert code != 0 and "Incompatible number of blobs for layer conv2" in log

    def test_the_name_alone_decides_even_for_a_layer_without_parameters(self, caffe, base_model, tmp_path):
        net = base_net()
        layer(net, "fc").name = "fc_new"
        layer(net, "relu1").name = "fc"
        inspection = inspect_net(net, weights=base_model)
        assert statuses(inspection)["fc"] == MISMATCH and statuses(inspection)["fc_new"] == NEW
        assert "0 learnable blobs but the weights' layer has 2" in inspection.problems[0].message
        code, log = caffe_loads(caffe, tmp_path, net, base_model)
        assert code != 0 and "Incompatible number of blobs for layer fc" in log

    def test_legacy_blob_dimensions_count_from_the_end(self, caffe, base_model, tmp_path):
        legacy = with_legacy_dimensions(base_model, tmp_path / "legacy.caffemodel")
        assert not check_weights(base_net(), legacy)
        code, log = caffe_loads(caffe, tmp_path / "fits", base_net(), legacy)
        assert code == 0, log[-2000:]
        net = base_net()
        layer(net, "fc").inner_product_param.num_output = 3
        problems = check_weights(net, legacy)
        assert [(problem.layer, problem.blob) for problem in problems] == [("fc", 0), ("fc", 1)]
        assert problems[0].weights_shape[:2] == (1, 1)
        code, log = caffe_loads(caffe, tmp_path / "mismatch", net, legacy)
        assert code != 0 and "Cannot copy param 0 weights from layer 'fc'" in log

    def test_a_frozen_layer_missing_from_the_weights_is_reported(self, base_model):
        net = base_net()
        freeze(net, upto="conv2")
        layer(net, "conv2").name = "conv2_new"
        problems = check_weights(net, base_model)
        assert [(problem.layer, problem.fatal) for problem in problems] == [("conv2_new", False)]
        assert "keeps its initial values" in problems[0].message

    def test_phases_see_their_own_layers(self, base_model):
        net = base_net()
        fc = layer(net, "fc")
        fc.inner_product_param.num_output = 3
        fc.include.add(phase=PHASE_NUMBERS[TEST])
        assert check_weights(net, base_model, phase=TRAIN) == []
        assert check_weights(net, base_model, phase=TEST)


def with_legacy_dimensions(model, target):
    """The caffemodel with every blob's shape given as num/channels/height/width, as old Caffe wrote it."""
    net = BVLC.NetParameter.FromString(model.read_bytes())
    for trained in net.layer:
        for blob in trained.blobs:
            dims = [1] * (4 - len(blob.shape.dim)) + list(blob.shape.dim)
            blob.ClearField("shape")
            blob.num, blob.channels, blob.height, blob.width = dims
    target.write_bytes(net.SerializeToString())
    return target


@pytest.mark.zoo
class TestPreflightSpeed:
    def test_check_weights_on_a_vgg_sized_model_decodes_none_of_its_values(self, tmp_path):
        net = read_net(VGG16).net
        shapes = infer_shapes(NetView(net, TRAIN))
        path = tmp_path / "vgg16.caffemodel"
        write_caffemodel(path, [(BVLC.LayerParameter(name=result.name, type=result.type),
                                 [np.broadcast_to(np.float32(0), shape) for shape in result.params or []])
                                for result in shapes])
        assert path.stat().st_size > 500e6
        tracemalloc.start()
        problems = check_weights(net, path)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 10e6, f"checking the weights allocated {peak / 1e6:.0f} MB: it decoded their values"
        assert problems == []
        layer(net, "fc7").inner_product_param.num_output = 10
        assert [(problem.layer, problem.blob) for problem in check_weights(net, path)] == [("fc7", 0), ("fc7", 1)]


class TestLibrary:
    @pytest.mark.zoo
    def test_parameters_follow_from_the_shapes(self):
        inspection = inspect_net(read_net(ALEXNET_DEPLOY).net)
        reports = {report.name: report for report in inspection.layers}
        pool5 = reports["pool5"].tops["pool5"]
        assert reports["fc6"].params == [(4096, pool5[1] * pool5[2] * pool5[3]), (4096,)]
        assert reports["fc6"].lr_mult == [1, 2] and reports["fc6"].decay_mult == [1, 0]
        # Published figures for BVLC AlexNet (two groups in conv2, conv4, conv5): 60,965,224 parameters and
        # 724,406,816 multiply-adds an image (Sze et al., "Efficient Processing of Deep Neural Networks", 2017);
        # by hand, weights + biases: conv1 96·3·11·11 + 96, conv2 256·48·5·5 + 256, conv3 384·256·3·3 + 384,
        # conv4 384·192·3·3 + 384, conv5 256·192·3·3 + 256, fc6 4096·9216 + 4096, fc7 4096·4096 + 4096,
        # fc8 1000·4096 + 1000. deploy.prototxt feeds a batch of 10 images.
        assert inspection.totals() == {"params_trainable": 60_965_224, "params_frozen": 0, "param_blobs_unknown": 0,
                                       "multiply_adds": 10 * 724_406_816, "layers_unknown_multiply_adds": 0}

    def test_frozen_layers_and_batchnorm_states(self):
        net = base_net()
        freeze(net, upto="conv1")
        reports = {report.name: report for report in inspect_net(net).layers}
        assert [reports[name].state for name in ("conv1", "bn1", "scale1", "conv2")] == [
            "frozen", "frozen", "frozen", "trainable"]
        net = base_net()
        assert {report.name: report.state for report in inspect_net(net).layers}["bn1"] == "batch stats"
        assert {report.name: report.state for report in inspect_net(net, TEST).layers}["bn1"] == "frozen"

    def test_shared_parameters_count_once(self):
        net = base_net()
        twin = net.layer.add()
        twin.CopyFrom(layer(net, "conv2"))
        twin.name, twin.top[0] = "conv2_twin", "conv2_twin"
        for conv in (layer(net, "conv2"), twin):
            conv.param.add(name="shared_w")
            conv.param.add(name="shared_b")
        totals = inspect_net(net).totals()
        assert totals["params_trainable"] == inspect_net(base_net()).totals()["params_trainable"]
        # BASE by hand: conv1 4·2·3·3 + 4, scale1 4 + 4, conv2 5·4·3·3 + 5, fc 4·(5·3·3) + 4 = 453 trainable;
        # bn1's mean, variance and scale factor (4 + 4 + 1) are never learnt. The twin adds nothing.
        assert (totals["params_trainable"], totals["params_frozen"]) == (453, 9)


class TestCommandLine:
    @pytest.mark.zoo
    def test_table(self, cli):
        result = cli("inspect", ALEXNET_DEPLOY)
        assert result.returncode == 0, result.stderr
        header, *rows = result.stdout.split("\n\n")[0].splitlines()
        assert header.split() == ["layer", "type", "output", "params", "lr_mult", "decay_mult", "state"]
        names = [row.split()[0] for row in rows]
        assert names == [layer.name for layer in read_net(ALEXNET_DEPLOY).net.layer]
        fc6 = next(row for row in rows if row.startswith("fc6 "))
        assert "4096×9216, 4096" in fc6 and "trainable" in fc6
        assert "learnable parameters" in result.stdout and "multiply-adds" in result.stdout

    @pytest.mark.zoo
    def test_json_with_input_shape_and_phase(self, cli):
        result = cli("inspect", ALEXNET_TRAIN_VAL, "--json", "--phase", "test", "--input-shape", "1,3,256,256")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        layers = {entry["name"]: entry for entry in data["layers"]}
        assert data["phase"] == TEST and "accuracy" in layers
        assert layers["data"]["tops"]["data"] == [50, 3, 227, 227]
        assert layers["conv1"]["params"] == [[96, 3, 11, 11], [96]]
        assert layers["conv1"]["weights"] is None and data["ignored"] == []

    @pytest.mark.parametrize("wiring, why", [('top: "conv"', "needs 1 bottom blob"),
                                             ('bottom: "data"', "needs a top blob")])
    def test_a_convolution_without_a_bottom_or_a_top_is_flagged_and_its_memory_left_out(self, cli, tmp_path, wiring,
                                                                                         why):
        path = tmp_path / "net.prototxt"
        path.write_text('layer { name: "data" type: "Input" top: "data" '
                        'input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
                        f'layer {{ name: "conv" type: "Convolution" {wiring} convolution_param {{ num_output: 4 '
                        'kernel_size: 3 } }\n')
        result = cli("inspect", path)
        assert result.returncode == 1, result.stderr
        assert f"note: layer 'conv': Caffe would reject it: Convolution {why}" in result.stdout
        assert "memory, estimated for Caffe 1.0 on the CPU:" in result.stdout

    @pytest.mark.zoo
    def test_unknown_image_size_is_shown_and_explained(self, cli):
        result = cli("inspect", ALEXNET_TRAIN_VAL)
        assert result.returncode == 0
        assert "256×?×227×227" in result.stdout and "96×?×11×11" in result.stdout
        assert "note: layer 'data'" in result.stdout and "--input-shape" in result.stdout

    def test_weights_mismatch_exits_1(self, cli, base_model, tmp_path):
        net = base_net()
        layer(net, "fc").inner_product_param.num_output = 3
        (tmp_path / "ft.prototxt").write_text(to_text(net))
        result = cli("inspect", tmp_path / "ft.prototxt", "--weights", base_model)
        assert result.returncode == 1
        assert f"{tmp_path / 'ft.prototxt'}: layer 'fc': param 0:" in result.stdout
        assert "1 mismatched" in result.stdout
        data = json.loads(cli("inspect", tmp_path / "ft.prototxt", "--weights", base_model, "--json").stdout)
        assert {entry["name"]: entry["weights"] for entry in data["layers"]}["fc"] == MISMATCH
        assert data["problems"][0]["weights_shape"][0] == 4 and data["problems"][0]["net_shape"][0] == 3

    def test_renamed_head_exits_0(self, cli, base_model, tmp_path):
        net = base_net()
        retarget_head(net, 3)
        (tmp_path / "ft.prototxt").write_text(to_text(net))
        result = cli("inspect", tmp_path / "ft.prototxt", "--weights", base_model)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "new (not in the weights, initialised by their fillers): fc_ft" in result.stdout
        assert "ignored (in the weights, not in the net): fc" in result.stdout

    @pytest.mark.parametrize("args,words", [
        (["--input-shape", "1,3,224"], ["four positive integers"]),
        (["--weights", "{tmp}/missing.caffemodel"], ["missing.caffemodel", "no such file"]),
        (["--weights", str(ALEXNET_DEPLOY)], ["looks like text"]),
    ])
    @pytest.mark.zoo
    def test_bad_input_is_one_line(self, cli, tmp_path, args, words):
        result = cli("inspect", ALEXNET_DEPLOY, *[arg.format(tmp=tmp_path) for arg in args])
        assert_one_line_error(result, *words)
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith(("caffegen: error: ", "Error: "))
        for word in words:
            assert word in message

    @pytest.mark.parametrize("command", ["inspect", "upgrade"])
    def test_help(self, cli, command):
        result = cli(command, "--help")
        assert result.returncode == 0 and "Usage: caffegen " + command in result.stdout
