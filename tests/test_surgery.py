"""Net view, freeze, head and lint on small nets built here and on the whole zoo."""

import pytest
from conftest import ZOO, zoo_nets
from google.protobuf import text_format

from caffegen.errors import CaffegenError
from caffegen.io.prototxt import read_net, to_text
from caffegen.io.schema import BVLC
from caffegen.net.classaxis import find_classifiers
from caffegen.net.freeze import freeze
from caffegen.net.head import retarget_head
from caffegen.net.layers import learnable_blob_count
from caffegen.net.lint import count_classes, lint
from caffegen.net.netview import TEST, TRAIN, NetView

SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { name: "w1" lr_mult: 1 } convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "twin" type: "Convolution" bottom: "data" top: "twin"
        param { name: "w1" } convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" include { phase: TEST } }
"""


def small_net():
    return text_format.Parse(SMALL, BVLC.NetParameter())


def layer(net, name):
    return next(layer for layer in net.layer if layer.name == name)


def rates(net, name):
    return [(spec.lr_mult, spec.decay_mult) for spec in layer(net, name).param]


class TestNetView:
    def test_phase_filtering(self):
        net = small_net()
        assert "acc" not in NetView(net, TRAIN)
        assert "acc" in NetView(net, TEST)

    def test_stage_and_exclude_rules(self):
        net = text_format.Parse(
            'layer { name: "a" type: "Input" top: "x" include { phase: TRAIN stage: "s" } }'
            'layer { name: "b" type: "Input" top: "x" exclude { phase: TEST } }', BVLC.NetParameter())
        assert [layer.name for layer in NetView(net, TRAIN).layers] == ["b"]
        assert [layer.name for layer in NetView(net, TRAIN, stages=("s",)).layers] == ["a", "b"]
        assert [layer.name for layer in NetView(net, TEST).layers] == []

    def test_in_place_chain_is_sequential(self):
        view = NetView(small_net())
        assert view.producers("conv1") == ["conv1", "bn1", "scale1", "relu1"]
        assert view.sources("scale1") == ["bn1"]
        assert view.sources("conv2") == ["relu1"]
        assert view.consumers("conv1") == ["bn1", "scale1", "relu1", "conv2"]

    def test_ancestors_and_followers(self):
        view = NetView(small_net())
        assert view.ancestors("conv2") == {"data", "conv1", "bn1", "scale1", "relu1"}
        assert view.inplace_followers("conv1") == ["bn1", "scale1", "relu1"]
        assert view.descendants("conv2") == {"fc", "drop", "loss"}

    def test_a_name_several_layers_share_means_the_first_and_every_walk_moves_up_the_net(self):
        net = small_net()
        relu = next(layer for layer in net.layer if layer.name == "relu1")
        net.layer.add().CopyFrom(relu)  # a second 'relu1' at the end, in place on conv1 after the first one
        view = NetView(net)
        assert view.index("relu1") == 5 and view.sources("relu1") == ["scale1"]
        for layer in view.layers:
            assert all(view.index(source) < view.index(layer.name) for source in view.sources(layer.name)
                       if source is not None), layer.name

    def test_unknown_layer_suggests_close_names(self):
        with pytest.raises(CaffegenError, match=r"layer 'conv3' not found \(did you mean 'conv2', 'conv1'"):
            NetView(small_net()).layer("conv3")

    def test_test_only_layer_is_explained(self):
        with pytest.raises(CaffegenError, match="exists only in the TEST phase"):
            NetView(small_net()).layer("acc")


class TestFreeze:
    def test_upto_freezes_ancestors_and_in_place_followers(self):
        net = small_net()
        report = freeze(net, upto="conv1")
        assert rates(net, "conv1") == [(0, 0)]
        assert rates(net, "bn1") == [(0, 0)] * 3
        assert layer(net, "bn1").batch_norm_param.use_global_stats
        assert rates(net, "scale1") == [(0, 0)] * 2
        assert sorted(report.layers) == ["bn1", "conv1", "scale1"]
        assert report.blobs == 1 + 3 + 2

    def test_shared_parameter_is_frozen_everywhere_and_reported(self):
        net = small_net()
        report = freeze(net, upto="conv1")
        assert rates(net, "twin") == [(0, 0)]
        assert layer(net, "twin").param[0].name == "w1"
        assert report.shared == {"w1": ["conv1", "twin"]}
        assert any("shared parameter 'w1'" in line for line in report.summary())

    def test_downstream_layers_are_unchanged(self):
        before, net = small_net(), small_net()
        freeze(net, upto="conv1")
        for name in ("conv2", "fc", "drop", "loss", "acc"):
            assert layer(net, name).SerializeToString() == layer(before, name).SerializeToString()

    def test_existing_param_fields_are_kept(self):
        net = small_net()
        spec = layer(net, "conv2").param.add()
        spec.name = "keep"
        freeze(net, upto="conv2")
        assert [s.name for s in layer(net, "conv2").param] == ["keep", ""]
        assert rates(net, "conv2") == [(0, 0), (0, 0)]

    def test_from_trains_the_layer_and_after(self):
        net = small_net()
        freeze(net, train_from="conv2")
        assert rates(net, "conv1") == [(0, 0)]
        assert rates(net, "conv2") == []
        assert rates(net, "fc") == []

    def test_freezing_twice_changes_nothing(self):
        net = small_net()
        freeze(net, upto="conv2")
        once = to_text(net)
        freeze(net, upto="conv2")
        assert to_text(net) == once

    def test_unknown_layer(self):
        with pytest.raises(CaffegenError, match="not found"):
            freeze(small_net(), upto="conv9")


class TestHead:
    def test_finds_and_retargets_the_classifier(self):
        net = small_net()
        assert find_classifiers(net) == ["fc"]
        report = retarget_head(net, 3)
        fc = layer(net, "fc_ft")
        assert fc.inner_product_param.num_output == 3
        assert fc.inner_product_param.weight_filler.type == "gaussian"
        assert fc.inner_product_param.weight_filler.std == pytest.approx(0.01)
        assert fc.inner_product_param.bias_filler.type == "constant"
        assert rates(net, "fc_ft") == [(10, 1), (20, 0)]
        assert report.renamed == [("fc", "fc_ft", 10)]
        assert list(fc.top) == ["fc"] and layer(net, "loss").bottom[0] == "fc"

    def test_existing_fillers_are_kept_and_lr_mult_is_configurable(self):
        net = small_net()
        layer(net, "fc").inner_product_param.weight_filler.type = "xavier"
        retarget_head(net, 3, new_name="new_fc", lr_mult=5)
        assert layer(net, "new_fc").inner_product_param.weight_filler.type == "xavier"
        assert rates(net, "new_fc") == [(5, 1), (10, 0)]

    def test_name_clash_is_refused(self):
        with pytest.raises(CaffegenError, match="a layer of that name exists"):
            retarget_head(small_net(), 3, new_name="conv2")

    def test_a_namesake_of_another_type_in_the_other_phase_is_left_alone(self):
        namesake = 'layer { name: "fc" type: "ReLU" bottom: "conv2" top: "conv2" include { phase: TEST } }\n'
        text = SMALL.replace('layer { name: "fc"', namesake + 'layer { name: "fc"').replace(
            'top: "loss" }', 'top: "loss" include { phase: TRAIN } }')
        net = text_format.Parse(text, BVLC.NetParameter())
        report = retarget_head(net, 3)
        assert report.renamed == [("fc", "fc_ft", 10)]
        assert [(layer.name, layer.type) for layer in net.layer if layer.name.startswith("fc")] == [
            ("fc", "ReLU"), ("fc_ft", "InnerProduct")]

    def test_layer_without_num_output_is_refused(self):
        with pytest.raises(CaffegenError, match="has no num_output"):
            retarget_head(small_net(), 3, layers=["relu1"])

    @pytest.mark.parametrize("name, classifiers", [
        ("bvlc_alexnet/train_val.prototxt", ["fc8"]),
        ("squeezenet_v1.1/train_val.prototxt", ["conv10"]),
        ("mobilenet/mobilenet_deploy.prototxt", ["fc7"]),
        ("resnet/ResNet-50-deploy.prototxt", ["fc1000"]),
        ("bvlc_googlenet/train_val.prototxt", ["loss1/classifier", "loss2/classifier", "loss3/classifier"]),
    ])
    @pytest.mark.zoo
    def test_zoo_classifiers(self, name, classifiers):
        net = read_net(ZOO / name).net
        assert find_classifiers(net) == classifiers
        report = retarget_head(net, 7)
        assert [new for _, new, _ in report.renamed] == [c + "_ft" for c in classifiers]

    @pytest.mark.zoo
    def test_several_classifiers_refuse_one_name(self):
        net = read_net(ZOO / "bvlc_googlenet/train_val.prototxt").net
        with pytest.raises(CaffegenError, match="3 classifiers"):
            retarget_head(net, 7, new_name="x")


class TestLint:
    def test_clean_net(self):
        assert lint(small_net()) == []

    def test_the_seed_trap_drifting_batchnorm(self):
        net = small_net()
        layer(net, "conv1").param[0].lr_mult = 0
        layer(net, "conv1").param[0].decay_mult = 0
        twin = layer(net, "twin").param[0]
        twin.lr_mult, twin.decay_mult = 0, 0
        for _ in range(3):
            layer(net, "bn1").param.add(lr_mult=0, decay_mult=0)
        problems = {(f.layer, f.problem.split(" ")[0]) for f in lint(net)}
        assert ("bn1", "BatchNorm") in problems
        freeze(net, upto="conv1")
        assert lint(net) == []

    def test_trainable_scale_after_frozen_batchnorm(self):
        net = small_net()
        freeze(net, upto="conv1")
        layer(net, "scale1").ClearField("param")
        assert [f.layer for f in lint(net)] == ["scale1"]

    def test_zero_rate_with_decay(self):
        net = small_net()
        layer(net, "conv2").param.add(lr_mult=0)
        findings = lint(net)
        assert [f.layer for f in findings] == ["conv2"]
        assert "decay_mult 1" in findings[0].problem

    def test_classifier_size_against_labels(self, tmp_path):
        listing = tmp_path / "train.txt"
        listing.write_text("a b.jpg 0\nc.jpg 2\nd.jpg 1\n")
        assert count_classes(listing) == 3
        names = tmp_path / "labels.txt"
        names.write_text("cat\ndog\n")
        assert count_classes(names) == 2
        findings = lint(small_net(), num_classes=3)
        assert [f.layer for f in findings] == ["fc"]
        assert "caffegen head --num-output 3" in findings[0].format("n")

    def test_unproduced_and_late_bottoms(self):
        net = small_net()
        layer(net, "conv2").bottom[0] = "nothing"
        layer(net, "twin").bottom[0] = "fc"
        problems = {f.layer: f.problem for f in lint(net)}
        assert "produced by no layer" in problems["conv2"]
        assert "only by a later layer" in problems["twin"]


@pytest.mark.zoo
class TestZooSurgery:
    @pytest.mark.parametrize("name", zoo_nets())
    def test_freeze_at_several_points_then_head(self, name):
        net = read_net(ZOO / name).net
        view = NetView(net, TRAIN)
        learnable = [layer.name for layer in view.layers if learnable_blob_count(layer)]
        if not learnable:
            pytest.skip("no learnable layers")
        for point in {learnable[0], learnable[len(learnable) // 2], learnable[-1]}:
            trial = BVLC.NetParameter()
            trial.CopyFrom(net)
            report = freeze(trial, upto=point)
            frozen = NetView(trial, TRAIN)
            for frozen_name in report.layers:
                frozen_layer = frozen.layer(frozen_name)
                count = learnable_blob_count(frozen_layer)
                assert len(frozen_layer.param) == count, frozen_name
                assert all(s.lr_mult == 0 and s.decay_mult == 0 for s in frozen_layer.param)
            assert text_format.Parse(to_text(trial), BVLC.NetParameter()) == trial
        if find_classifiers(net):
            retarget_head(net, 3)
            assert all(new.endswith("_ft") for new in find_classifiers(net))


class TestLearnableBlobs:
    @pytest.mark.parametrize("text, count", [
        ('type: "Scale" bottom: "x"', 1), ('type: "Scale" bottom: "x" scale_param { bias_term: true }', 2),
        ('type: "Scale" bottom: "x" bottom: "s"', 0),
        ('type: "Scale" bottom: "x" bottom: "s" scale_param { bias_term: true }', 1),
        ('type: "Bias" bottom: "x"', 1), ('type: "Bias" bottom: "x" bottom: "b"', 0),
        ('type: "ReLU" param { lr_mult: 0 }', 0), ('type: "Python" param { } param { }', 2),
        ('type: "Python"', None), ('type: "InnerProduct" inner_product_param { bias_term: false }', 1),
        ('type: "BatchNorm"', 3)])
    def test_counts_follow_caffe(self, text, count):
        assert learnable_blob_count(text_format.Parse(text, BVLC.LayerParameter())) == count
