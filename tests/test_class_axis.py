"""Retargeting every layer that states the number of classes: FCN segmentation heads, SSD detection heads.

Real Caffe loads the zoo's FCN nets after retargeting, with the shapes caffegen infers, and trains a
small FCN-style net from the original's weights with its upsamplers kept fixed and bilinear. No SSD
Caffe runs here: SSD nets are read with the test copy of SSD's schema and checked by shape inference.
"""

import numpy as np
import pytest
from caffe_runs import assert_same_shapes, caffe_top_shapes, train
from conftest import ROOT, ZOO, assert_one_line_error
from fork_schemas import ssd_proto
from google.protobuf import text_format

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_caffemodel
from caffegen.io.prototxt import parse_text, read_net, read_text, to_text
from caffegen.io.schema import BVLC, load_fork_schema
from caffegen.net.classaxis import find_class_axes, find_classifiers
from caffegen.net.head import retarget_head
from caffegen.net.lint import lint
from caffegen.net.netview import PHASE_NUMBERS, TEST, TRAIN, NetView
from caffegen.net.retarget import retarget_layer
from caffegen.net.shapes import infer_shapes

FCN8S = ZOO / "fcn_voc8s/train.prototxt"
SIFTFLOW = ZOO / "fcn_siftflow32s/trainval.prototxt"
SSD = ZOO / "ssd_mobilenet"
TINY_FCN = ROOT / "tests/data/fcn_tiny.prototxt"
FCN8S_CLASS_LAYERS = ["score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"]
UPSAMPLERS = ["upscore2", "upscore_pool4", "upscore8"]


def layer(net, name):
    return next(item for item in net.layer if item.name == name)


def bilinear(size):
    """The bilinear upsampling kernel FCN's surgery.upsample_filt computes."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    rows, columns = np.ogrid[:size, :size]
    return (1 - abs(rows - center) / factor) * (1 - abs(columns - center) / factor)


@pytest.fixture(scope="module")
def ssd_schema(tmp_path_factory):
    return load_fork_schema(ssd_proto(tmp_path_factory.mktemp("ssd") / "caffe.proto"))


@pytest.mark.zoo
class TestFcnHead:
    def test_every_class_count_layer_of_fcn8s_is_found_through_crops_and_eltwises(self):
        net = read_net(FCN8S).net
        (axis,) = find_class_axes(net)
        assert (axis.root, axis.names) == ("loss", FCN8S_CLASS_LAYERS)
        assert find_classifiers(net) == []

    def test_fcn8s_is_retargeted_with_a_line_per_layer(self):
        net = read_net(FCN8S).net
        report = retarget_head(net, 5)
        assert [old for old, _, _ in report.renamed] == FCN8S_CLASS_LAYERS
        assert all(new == f"{old}_ft" and before == 21 for old, new, before in report.renamed)
        assert "score_pool4: num_output 21 → 5, renamed 'score_pool4_ft' (class axis of loss 'loss' via fuse_pool4)" \
            in report.summary()
        assert "upscore8: num_output 21 → 5, group 1 → 5, bilinear weights, lr_mult 0, renamed 'upscore8_ft' " \
               "(class axis of loss 'loss')" in report.summary()
        for name in UPSAMPLERS:
            upsampler = layer(net, f"{name}_ft")
            param = upsampler.convolution_param
            assert (param.num_output, param.group, param.weight_filler.type) == (5, 5, "bilinear")
            assert [(spec.lr_mult, spec.decay_mult) for spec in upsampler.param] == [(0, 0)]
            assert list(upsampler.top) == [name]
        assert layer(net, "score_pool3_ft").convolution_param.num_output == 5
        assert lint(net) == []

    @pytest.mark.parametrize("named", ["upscore8", "score_pool4", "fuse_pool4", "loss"])
    def test_naming_one_layer_of_the_axis_retargets_the_whole_axis(self, named):
        net = read_net(FCN8S).net
        report = retarget_head(net, 5, layers=[named])
        assert [old for old, _, _ in report.renamed] == FCN8S_CLASS_LAYERS

    def test_layers_shared_by_two_outputs_are_retargeted_once(self):
        net = read_net(FCN8S).net
        prob = net.layer.add(name="prob", type="Softmax", bottom=["score"], top=["prob"])
        prob.include.add(phase=PHASE_NUMBERS[TEST])
        assert [axis.root for axis in find_class_axes(net)] == ["loss", "prob"]
        report = retarget_head(net, 5)
        assert [old for old, _, _ in report.renamed] == FCN8S_CLASS_LAYERS and len(report.summary()) == 6

    def test_two_tasks_are_refused_and_picked_by_their_loss(self):
        with pytest.raises(CaffegenError, match=r"2 sets of classes \(loss: 33 classes; loss_geo: 3 classes\)"):
            retarget_head(read_net(SIFTFLOW).net, 5)
        net = read_net(SIFTFLOW).net
        report = retarget_head(net, 2, layers=["loss_geo"])
        assert [old for old, _, _ in report.renamed] == ["score_fr_geo", "upscore_geo"]
        assert layer(net, "upscore_sem").convolution_param.num_output == 33

    def test_one_name_for_several_layers_is_refused_before_anything_changes(self):
        net = read_net(FCN8S).net
        before = to_text(net)
        with pytest.raises(CaffegenError, match="6 layers state the number of classes"):
            retarget_head(net, 5, new_name="mine")
        net.layer.add(name="upscore8_ft", type="ReLU", bottom=["score"], top=["score"])
        before = to_text(net)
        with pytest.raises(CaffegenError, match="cannot rename 'upscore8' to 'upscore8_ft'"):
            retarget_head(net, 5)
        assert to_text(net) == before

    def test_an_upsampler_caffe_cannot_fill_bilinearly_is_refused(self):
        net = read_net(FCN8S).net
        param = layer(net, "upscore8").convolution_param
        param.ClearField("kernel_size")
        param.kernel_h, param.kernel_w = 16, 8
        square_only = "'upscore8': Caffe's bilinear filler fills square kernels only, not 16×8"
        with pytest.raises(CaffegenError, match=square_only):
            retarget_head(net, 5)

    def test_cli_retargets_fcn8s_and_lint_agrees(self, cli, tmp_path):
        out = tmp_path / "ft.prototxt"
        result = cli("head", FCN8S, "--num-output", "5", "-o", out)
        assert result.returncode == 0, result.stderr
        lines = result.stderr.strip().splitlines()
        assert [line.split(":")[0] for line in lines] == FCN8S_CLASS_LAYERS
        assert cli("lint", out).returncode == 0


@pytest.mark.zoo
class TestLintClassAxes:
    def test_a_layer_retargeted_alone_is_named(self):
        net = read_net(FCN8S).net
        retarget_layer(layer(net, "score_pool4"), "score_pool4_ft", 5)
        findings = lint(net)
        assert [finding.layer for finding in findings if "classes" in finding.problem] == ["score_pool4_ft"]
        problem = next(finding for finding in findings if finding.layer == "score_pool4_ft").format("n")
        assert "states 5 classes but the rest of the class axis of loss 'loss' states 21" in problem
        assert "disagree at 'fuse_pool4'" in problem and "caffegen head --num-output N" in problem

    def test_a_layer_left_at_the_old_size_is_named(self):
        net = read_net(FCN8S).net
        retarget_head(net, 5)
        layer(net, "upscore_pool4_ft").convolution_param.num_output = 21
        assert [finding.layer for finding in lint(net)] == ["upscore_pool4_ft"]

    def test_ssd_confidences_that_do_not_fit_their_priors(self, ssd_schema):
        net = read_net(SSD / "MobileNetSSD_train.prototxt", ssd_schema).net
        layer(net, "conv13_mbox_conf").convolution_param.num_output = 125
        layer(net, "mbox_loss").multibox_loss_param.num_classes = 20
        problems = {finding.layer: finding.problem for finding in lint(net)}
        assert "no multiple of its 6 priors" in problems["conv13_mbox_conf"]
        assert "states 20 classes but the rest of the class axis of loss 'mbox_loss' states 21" in problems["mbox_loss"]


def with_inputs(net, side):
    """``net`` with its data layer (Python, or Input) replaced by an Input of images of ``side``² and label maps."""
    data = next(item for item in net.layer if item.type in ("Python", "Input"))
    inputs = BVLC.LayerParameter(name=data.name, type="Input", top=data.top)
    inputs.include.extend(data.include)
    inputs.input_param.shape.extend([BVLC.BlobShape(dim=[1, 3 if top == "data" else 1, side, side])
                                     for top in data.top])
    data.CopyFrom(inputs)
    return net


@pytest.mark.zoo
class TestFcnZooInCaffe:
    @pytest.mark.parametrize("name, phase, tasks", [
        ("fcn_voc8s/train.prototxt", TRAIN, {None: 5}), ("fcn_voc8s/val.prototxt", TEST, {None: 5}),
        ("fcn_voc8s/deploy.prototxt", TEST, {None: 5}), ("fcn_voc32s/train.prototxt", TRAIN, {None: 5}),
        ("fcn_voc32s/val.prototxt", TEST, {None: 5}),
        ("fcn_siftflow32s/trainval.prototxt", TRAIN, {"loss": 5, "loss_geo": 2}),
        ("fcn_siftflow32s/test.prototxt", TEST, {"loss": 5, "loss_geo": 2}),
    ])
    def test_retargeted_fcn_loads_with_the_shapes_caffegen_infers(self, caffe, tmp_path, name, phase, tasks):
        net = read_net(ZOO / name).net
        net = with_inputs(net, 64)
        for loss, classes in tasks.items():
            retarget_head(net, classes, layers=[loss] if loss else None)
        ours = infer_shapes(NetView(net, phase))
        assert not [(result.name, result.note) for result in ours if result.note]
        scores = {top: shape for result in ours if result.type == "Crop" for top, shape in result.tops.items()
                  if shape[2:] == (64, 64)}
        assert sorted(shape[1] for shape in scores.values()) == sorted(tasks.values())
        assert_same_shapes(ours, caffe_top_shapes(caffe, tmp_path, net, phase))


class TestFcnTraining:
    def test_upsamplers_stay_fixed_and_bilinear_while_fine_tuning(self, caffe, tmp_path):
        base, _ = train(caffe, tmp_path / "base", read_text(TINY_FCN), max_iter=5)
        net = read_net(TINY_FCN).net
        report = retarget_head(net, 3)
        assert [old for old, _, _ in report.renamed] == ["score_fr", "upscore2", "score_pool1", "upscore"]
        model, log = train(caffe, tmp_path / "fine", to_text(net), max_iter=2, weights=base)
        weights = read_caffemodel(model)
        for name in ("upscore2_ft", "upscore_ft"):
            (kernels,) = weights.values(name)
            assert kernels.shape == (3, 1, 4, 4)
            for kernel in kernels[:, 0]:
                assert np.allclose(kernel, bilinear(4), atol=1e-6), name
        assert weights.layer("score_pool1_ft").blobs[0].shape == (3, 8, 1, 1)
        ignored = {line.rsplit(" ", 1)[-1] for line in log.splitlines() if "Ignoring source layer" in line}
        assert {name for name in ignored if not name.endswith("_split")} == {old for old, _, _ in report.renamed}


@pytest.mark.zoo
class TestSsdHead:
    def test_mobilenet_ssd_confidences_become_priors_times_the_new_classes(self, ssd_schema):
        net = read_net(SSD / "MobileNetSSD_train.prototxt", ssd_schema).net
        report = retarget_head(net, 5, label_map_file="voc5.prototxt")
        assert "conv11_mbox_conf: num_output 63 → 15 (3 priors × 5 classes), renamed 'conv11_mbox_conf_ft' " \
               "(class axis of loss 'mbox_loss' via mbox_conf)" in report.summary()
        assert "mbox_loss: num_classes 21 → 5 (class axis of loss 'mbox_loss')" in report.summary()
        assert report.label_map == ["background", "class_1", "class_2", "class_3", "class_4"]
        assert layer(net, "data").annotated_data_param.label_map_file == "voc5.prototxt"
        results = {result.name: result for result in infer_shapes(NetView(net, TRAIN), (1, 3, 300, 300))}
        assert not [result.name for result in results.values() if result.note]
        priors = results["mbox_priorbox"].tops["mbox_priorbox"][2] // 4
        assert results["mbox_conf"].tops["mbox_conf"][1] == priors * 5

    def test_the_deploy_nets_reshape_and_detection_output_follow(self, ssd_schema):
        net = read_net(SSD / "MobileNetSSD_deploy.prototxt", ssd_schema).net
        retarget_head(net, 5)
        assert list(layer(net, "mbox_conf_reshape").reshape_param.shape.dim) == [0, -1, 5]
        assert layer(net, "detection_out").detection_output_param.num_classes == 5
        results = {result.name: result for result in infer_shapes(NetView(net, TEST))}
        assert results["mbox_conf_reshape"].tops["mbox_conf_reshape"] == (1, 1917, 5)
        assert not [result.name for result in results.values() if result.note or result.rejected]

    def test_cli_writes_the_label_map_beside_the_net(self, cli, tmp_path, ssd_schema):
        proto = ssd_proto(tmp_path / "caffe.proto")
        out = tmp_path / "ft" / "train.prototxt"
        out.parent.mkdir()
        result = cli("head", SSD / "MobileNetSSD_train.prototxt", "--num-output", "3", "--proto", proto, "-o", out)
        assert result.returncode == 0, result.stderr
        label_map = parse_text(read_text(out.parent / "labelmap.prototxt"), ssd_schema.LabelMap(), "labels")
        assert [(item.label, item.name) for item in label_map.item] == [(0, "background"), (1, "class_1"),
                                                                        (2, "class_2")]
        assert 'label_map_file: "labelmap.prototxt"' in out.read_text()
        assert "wrote the label map of the 3 classes" in result.stderr

    def test_cli_without_a_place_for_the_label_map_writes_nothing(self, cli, tmp_path):
        proto = ssd_proto(tmp_path / "caffe.proto")
        result = cli("head", SSD / "MobileNetSSD_deploy.prototxt", "--num-output", "3", "--proto", proto)
        assert_one_line_error(result, "needs a label map", "--label-map")
        assert result.stdout == ""

    def test_without_the_ssd_schema_the_error_names_proto(self, cli, tmp_path):
        result = cli("head", SSD / "MobileNetSSD_deploy.prototxt", "--num-output", "3")
        assert_one_line_error(result, "permute_param", "--proto")
        net = tmp_path / "bare.prototxt"
        net.write_text(text_format.MessageToString(text_format.Parse(
            'layer { name: "data" type: "Input" top: "data" top: "label" }'
            'layer { name: "conf" type: "Convolution" bottom: "data" top: "conf" convolution_param { num_output: 4 } }'
            'layer { name: "loc" type: "Convolution" bottom: "data" top: "loc" convolution_param { num_output: 4 } }'
            'layer { name: "loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "data" bottom: "label" }',
            BVLC.NetParameter())))
        assert_one_line_error(cli("head", net, "--num-output", "3", "-o", tmp_path / "out.prototxt"),
                              "SSD's MultiBoxLoss", "--proto")
        assert not (tmp_path / "out.prototxt").exists()
