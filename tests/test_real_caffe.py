"""Real Caffe 1.0 proves the surgery: it loads every transformed zoo net, and training shows what froze."""

import numpy as np
import pytest
from caffe_runs import layers_without_backward, read_blobs, run_caffe, train
from conftest import ZOO, zoo_cases, zoo_nets
from google.protobuf import text_format

from caffegen.io.prototxt import read_net, to_text
from caffegen.io.schema import BVLC
from caffegen.net.classaxis import find_classifiers
from caffegen.net.freeze import freeze
from caffegen.net.head import retarget_head
from caffegen.net.layers import learnable_blob_count
from caffegen.net.lint import lint
from caffegen.net.netview import TRAIN, NetView
from caffegen.net.shapes import infer_shapes

BASE = """
name: "base"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 }
                     shape { dim: 8 dim: 2 dim: 6 dim: 6 } shape { dim: 8 } } }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "conv_a" param { name: "shared_w" }
  convolution_param { num_output: 4 kernel_size: 3 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "conv_b" param { name: "shared_w" }
  convolution_param { num_output: 4 kernel_size: 3 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "sum" type: "Eltwise" bottom: "conv_a" bottom: "conv_b" top: "sum" }
layer { name: "bn1" type: "BatchNorm" bottom: "sum" top: "sum" }
layer { name: "scale1" type: "Scale" bottom: "sum" top: "sum" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "conv2" type: "Convolution" bottom: "sum" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
FROZEN = ["conv_a", "conv_b", "bn1", "scale1"]
TRAINABLE = ["conv2", "bn2", "scale2"]


@pytest.fixture(scope="module")
def base_model(caffe, tmp_path_factory):
    model, _ = train(caffe, tmp_path_factory.mktemp("base"), BASE)
    return model


def parse(text):
    return text_format.Parse(text, BVLC.NetParameter())


def fine_tune(caffe, workdir, net, base_model):
    model, log = train(caffe, workdir, to_text(net), weights=base_model)
    return read_blobs(model), log


class TestFreezingByTraining:
    def test_frozen_blobs_stay_bit_identical_and_the_rest_learns(self, caffe, base_model, tmp_path):
        net = parse(BASE)
        report = freeze(net, upto="sum")
        assert report.shared == {"shared_w": ["conv_a", "conv_b"]}
        retarget_head(net, 3)
        after, log = fine_tune(caffe, tmp_path, net, base_model)
        before = read_blobs(base_model)
        for name in FROZEN:
            for old, new in zip(before[name], after[name], strict=True):
                assert np.array_equal(old, new), f"{name} changed although frozen"
        for name in TRAINABLE:
            assert all(not np.array_equal(old, new) for old, new in zip(before[name], after[name], strict=True)), name
        assert after["fc_ft"][0].shape == (3, 4 * 2 * 2)
        assert set(FROZEN) <= layers_without_backward(log)
        assert not set(TRAINABLE) & layers_without_backward(log)
        assert "Copying source layer fc" not in log

    def test_the_seed_trap_batchnorm_drifts_without_global_stats(self, caffe, base_model, tmp_path):
        net = parse(BASE)
        freeze(net, upto="sum")
        bn1 = next(layer for layer in net.layer if layer.name == "bn1")
        bn1.batch_norm_param.ClearField("use_global_stats")
        assert [f.layer for f in lint(net)] == ["bn1"]
        after, _ = fine_tune(caffe, tmp_path, net, base_model)
        before = read_blobs(base_model)
        assert all(s.lr_mult == 0 for s in bn1.param)
        assert not np.array_equal(before["bn1"][0], after["bn1"][0]), "mean should drift"
        assert not np.array_equal(before["bn1"][1], after["bn1"][1]), "variance should drift"

    def test_without_batchnorm_params_the_frozen_trunk_back_propagates(self, caffe, base_model, tmp_path):
        net = parse(BASE)
        freeze(net, upto="sum")
        next(layer for layer in net.layer if layer.name == "bn1").ClearField("param")
        _, log = fine_tune(caffe, tmp_path, net, base_model)
        assert "bn1" not in layers_without_backward(log)
        assert "conv_a" in layers_without_backward(log)


def deploy_nets():
    nets = []
    for name in zoo_nets():
        view = NetView(read_net(ZOO / name).net, TRAIN)
        if view.inputs and not any(layer.type.endswith("Data") for layer in view.layers):
            nets.append(name)
    return nets


# Input sides: at most 227, or at most 96 where every layer still has an output at that size (a fully
# convolutional net's), which loads the same layers sooner.
SIDES = (96, 227)


def trainable_version(net):
    """The net with Input layers (batch 1, the smaller of SIDES that it takes) and a loss on the classifier's scores.

    The loss is a sum of squares with a loss weight, so it suits scores of any shape.
    """
    for side in SIDES:
        trial = at_most(net, side)
        if not any(result.note for result in infer_shapes(NetView(trial, TRAIN))):
            break
    classifiers = find_classifiers(trial)
    if classifiers:
        scores = next(layer for layer in trial.layer if layer.name == classifiers[-1]).top[0]
        loss = trial.layer.add(name="ft_loss", type="Reduction", bottom=[scores], top=["ft_loss"], loss_weight=[1])
        loss.reduction_param.operation = loss.reduction_param.SUMSQ
    else:
        trial.force_backward = True
    return trial


def at_most(net, side):
    """The net with Input layers of batch 1 and sides of at most ``side``."""
    trial = BVLC.NetParameter()
    trial.CopyFrom(net)
    shapes = [list(shape.dim) for shape in net.input_shape] or \
        [list(net.input_dim[i:i + 4]) for i in range(0, len(net.input_dim), 4)]
    for blob, dims in zip(net.input, shapes):
        trial.layer.add(name=f"input_{blob}", type="Input", top=[blob]).input_param.shape.add(dim=dims)
    for field in ("input", "input_dim", "input_shape"):
        trial.ClearField(field)
    for layer in trial.layer:
        for shape in layer.input_param.shape:
            shape.dim[0] = 1
            for axis in range(2, len(shape.dim)):
                shape.dim[axis] = min(shape.dim[axis], side)
    ordered = sorted(trial.layer, key=lambda layer: layer.type != "Input")
    trial.ClearField("layer")
    trial.layer.extend(ordered)
    return trial


@pytest.mark.zoo
@pytest.mark.parametrize("name", zoo_cases(deploy_nets))
def test_real_caffe_loads_transformed_deploy_nets(caffe, tmp_path, name):
    net = read_net(ZOO / name).net
    learnable = [layer.name for layer in NetView(net, TRAIN).layers if learnable_blob_count(layer)]
    freeze(net, upto=learnable[len(learnable) // 2])
    if find_classifiers(net):
        retarget_head(net, 3)
    (tmp_path / "net.prototxt").write_text(to_text(trainable_version(net)))
    code, log = run_caffe(caffe, "time", "-model", "net.prototxt", "-iterations", "1", cwd=tmp_path)
    assert code == 0, log[-3000:]
    assert "Average Forward-Backward" in log


def v1_nets():
    return [name for name in zoo_nets() if read_net(ZOO / name).upgraded_from == "V1"]


@pytest.mark.zoo
@pytest.mark.parametrize("name", zoo_cases(v1_nets))
def test_v1_upgrade_matches_caffes_own_upgrade_tool(caffe, tmp_path, name):
    code, log = run_caffe(caffe.with_name("upgrade_net_proto_text"), ZOO / name, tmp_path / "up.prototxt", cwd=tmp_path)
    assert code == 0, log[-2000:]
    theirs = read_net(tmp_path / "up.prototxt").net
    ours = read_net(ZOO / name).net
    # Caffe also turns the deprecated input fields into an Input layer; caffegen keeps them as they are.
    theirs_layers = [layer for layer in theirs.layer if layer.type != "Input"]
    assert len(theirs_layers) == len(ours.layer)
    for their_layer, our_layer in zip(theirs_layers, ours.layer):
        assert our_layer == their_layer, our_layer.name
