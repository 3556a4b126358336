"""The strategy advisor: the four cases, freeze points found in published nets, commands that run."""

import json
import shlex

import pytest
from conftest import DIGITS, ZOO, assert_one_line_error, zoo_nets
from google.protobuf import text_format

from caffegen.cli.prepare import prepare_command
from caffegen.errors import CaffegenError
from caffegen.io.prototxt import read_net, read_solver, to_text
from caffegen.io.schema import BVLC
from caffegen.net.advise import (
    CASES,
    SMALL_DATASET_IMAGES,
    SMALL_DATASET_PER_CLASS,
    advise,
    dataset_size,
    find_freeze_points,
)
from caffegen.net.freeze import freeze, layers_up_to
from caffegen.net.layers import is_frozen, learnable_blob_count
from caffegen.net.netview import TRAIN, NetView
from caffegen.strategies.digits import write_digit_images

SMALL, LARGE = 500, 50_000
# (net, classifier, bottleneck, first block end, block end around the middle of the trunk)
NETS = [
    ("bvlc_alexnet/train_val.prototxt", "fc8", "fc7", "conv1", "conv4"),
    ("bvlc_reference_caffenet/train_val.prototxt", "fc8", "fc7", "conv1", "conv4"),
    ("bvlc_googlenet/train_val.prototxt", "loss3/classifier", "inception_5b/output", "inception_3a/output",
     "inception_4c/output"),
    ("resnet/ResNet-50-deploy.prototxt", "fc1000", "res5c", "res2a", "res4a"),
    ("resnet50_3classes_pr29/ResNet-50-train_val.prototxt", "fc3", "res5c", "res2a", "res4a"),
    ("squeezenet_v1.0/train_val.prototxt", "conv10", "fire9/concat", "fire2/concat", "fire5/concat"),
    ("squeezenet_v1.1/train_val.prototxt", "conv10", "fire9/concat", "fire2/concat", "fire5/concat"),
    ("mobilenet_pr72/mobilenet_train.prototxt", "fc7", "conv6/sep", "conv1", "conv4_2/sep"),
    ("mobilenet/mobilenet_v2_deploy.prototxt", "fc7", "conv6_4/bn", "block_3_1", "block_4_6"),
]
NET_NAMES = [row[0] for row in NETS]
# (train images, similarity) for cases 1 to 4
CASE_INPUTS = {1: (SMALL, "high"), 2: (LARGE, "high"), 3: (SMALL, "low"), 4: (LARGE, "low")}
NO_CLASSIFIER = ("no classifier found: no Softmax or SoftmaxWithLoss in the TRAIN phase is fed by an InnerProduct "
                 "or Convolution; the advisor needs one to place the freeze")
# The zoo nets the advisor refuses, with the error each one gets: nets without a softmax classifier
# (segmentation, an autoencoder, a regression, a siamese net) and a classifier straight on the input.
ZOO_REFUSALS = {
    **{name: NO_CLASSIFIER for name in (
        "fcn_siftflow32s/test.prototxt", "fcn_siftflow32s/trainval.prototxt", "fcn_voc32s/train.prototxt",
        "fcn_voc32s/val.prototxt", "fcn_voc8s/deploy.prototxt", "fcn_voc8s/train.prototxt", "fcn_voc8s/val.prototxt",
        "mnist/mnist_autoencoder.prototxt", "pycaffe_python_layer/linreg.prototxt",
        "siamese/mnist_siamese_train_test.prototxt")},
    "hdf5_classification/train_val.prototxt":
        "classifier 'fc1' reads the net's input directly: there are no pretrained features to reuse",
}


CHAIN = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "mystery" type: "Mystery" bottom: "conv2" top: "mystery" }
layer { name: "fc" type: "InnerProduct" bottom: "mystery" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def chain(*replacements):
    """CHAIN with each (old, new) text replaced, as a net."""
    text = CHAIN
    for old, new in replacements:
        text = text.replace(old, new)
    return text_format.Parse(text, BVLC.NetParameter())


def test_a_classifier_without_a_bottom_is_one_line(cli, tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(to_text(chain(('bottom: "mystery" top: "fc"', 'top: "fc"'))))
    result = cli("advise", "--net", path, "--train-images", SMALL, "--similarity", "high")
    assert_one_line_error(result, str(path), "classifier 'fc' has no bottom")


def test_earlier_features_with_nothing_learnable_between_them_and_the_classifier():
    advice = advise(chain(), SMALL, "low")
    assert (advice.freeze_upto, advice.bottleneck) == ("conv2", "mystery")
    assert "Freeze up to 'conv2', a block boundary around the middle of the trunk, and train the new classifier " \
           "'fc' at 10× the rate." in advice.strategy


def nested_module(name, bottom):
    """An Inception-C-like module: one branch splits again and is joined by a Concat inside the module."""
    convs = [("a", bottom), ("b", bottom), ("b1", f"{name}/b"), ("b2", f"{name}/b")]
    text = "".join(f'layer {{ name: "{name}/{conv}" type: "Convolution" bottom: "{source}" top: "{name}/{conv}" '
                   'convolution_param { num_output: 4 kernel_size: 1 } }\n' for conv, source in convs)
    return text + (f'layer {{ name: "{name}/b/concat" type: "Concat" bottom: "{name}/b1" bottom: "{name}/b2" '
                   f'top: "{name}/b/concat" }}\n'
                   f'layer {{ name: "{name}/out" type: "Concat" bottom: "{name}/a" bottom: "{name}/b/concat" '
                   f'top: "{name}/out" }}\n')


def nested_net():
    """Three nested modules, a classifier and its loss."""
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'
            'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }\n'
            + nested_module("m1", "data") + nested_module("m2", "m1/out") + nested_module("m3", "m2/out")
            + 'layer { name: "fc" type: "InnerProduct" bottom: "m3/out" top: "fc" '
            'inner_product_param { num_output: 3 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')
    return text_format.Parse(text, BVLC.NetParameter())


def load(name):
    return read_net(ZOO / name).net


def advice_for(name, case, **extra):
    images, similarity = CASE_INPUTS[case]
    return advise(load(name), images, similarity, net_path=str(ZOO / name), **extra)


def frozen_view(name, freeze_upto):
    """The TRAIN view of zoo net ``name`` after caffegen's freeze up to ``freeze_upto``."""
    net = load(name)
    if freeze_upto:
        freeze(net, upto=freeze_upto)
    return NetView(net, TRAIN)


def learnable_path(view, classifier):
    """The learnable layers ``classifier`` depends on."""
    ancestors = view.ancestors(classifier)
    return [layer for layer in view.layers if layer.name in ancestors and learnable_blob_count(layer)]


def disconnects(view, classifier, removed):
    """Whether every path from the data to ``classifier`` goes through layer ``removed``."""
    stack, seen = [classifier], set()
    while stack:
        for source in view.sources(stack.pop()):
            if source is None or not view.layer(source).bottom:
                return False
            if source != removed and source not in seen:
                seen.add(source)
                stack.append(source)
    return True


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The scikit-learn digits 5 to 9 as image folders, and their count."""
    images = tmp_path_factory.mktemp("digits")
    return images, write_digit_images(images, range(5, 10))


class TestDatasetSize:
    @pytest.mark.parametrize("images, classes, size", [
        (SMALL_DATASET_IMAGES - 1, None, "small"),
        (SMALL_DATASET_IMAGES, None, "large"),
        (SMALL_DATASET_IMAGES - 1, 2, "small"),
        (20 * SMALL_DATASET_PER_CLASS - 1, 20, "small"),
        (20 * SMALL_DATASET_PER_CLASS, 20, "large"),
        (5000, 2, "large"),
    ])
    def test_thresholds(self, images, classes, size):
        assert dataset_size(images, classes)[0] == size

    def test_rule_is_stated(self):
        assert dataset_size(1500, 30)[1] == "1500 training images in 30 classes, fewer than 100 a class"
        assert dataset_size(800)[1] == "800 training images, fewer than 1000"

    @pytest.mark.zoo
    @pytest.mark.parametrize("case", CASES, ids=lambda case: str(case.number))
    def test_each_case_is_chosen(self, case):
        images, similarity = CASE_INPUTS[case.number]
        advice = advise(load(NET_NAMES[0]), images, similarity)
        assert (advice.case, advice.dataset, advice.similarity) == (case.number, case.dataset, case.similarity)


@pytest.mark.zoo
class TestFreezePoints:
    @pytest.mark.parametrize("name, classifier, bottleneck, first, middle", NETS, ids=NET_NAMES)
    def test_points_of_published_nets(self, name, classifier, bottleneck, first, middle):
        points = find_freeze_points(NetView(load(name), TRAIN))
        assert (points.classifier, points.bottleneck, points.block_ends[0], points.middle()) == \
            (classifier, bottleneck, first, middle)
        assert [advice_for(name, case).freeze_upto for case in (1, 2, 3, 4)] == [bottleneck, first, middle, None]

    def test_googlenet_auxiliary_classifiers_are_named(self):
        advice = advice_for(NET_NAMES[2], 1)
        assert "loss1/classifier, loss2/classifier" in advice.strategy

    def test_depthwise_convolutions_open_no_block(self):
        view = NetView(load("mobilenet_pr72/mobilenet_train.prototxt"), TRAIN)
        ends = find_freeze_points(view).block_ends
        assert ends and all(view.layer(name).convolution_param.group == 1 for name in ends)

    def test_merges_inside_a_block_are_no_boundary(self):
        view = NetView(nested_net(), TRAIN)
        points = find_freeze_points(view)
        assert (points.bottleneck, points.block_ends, points.middle()) == ("m3/out", ["m1/out", "m2/out"], "m2/out")
        assert not disconnects(view, "fc", "m2/b/concat") and disconnects(view, "fc", "m2/out")

    def test_batch_norm_that_is_not_in_place_stays_in_its_block(self):
        points = find_freeze_points(NetView(load("cifar10/cifar10_full_sigmoid_train_test_bn.prototxt"), TRAIN))
        assert (points.bottleneck, points.block_ends) == ("bn3", ["bn1", "bn2"])


def check_linear_classifier(name, advice):
    """Case 1: after the freeze, only the classifier (and auxiliary heads) learn."""
    view = frozen_view(name, advice.freeze_upto)
    path = learnable_path(view, advice.classifier)
    assert path and all(is_frozen(layer) for layer in path)
    assert not is_frozen(view.layer(advice.classifier))
    main = view.ancestors(advice.classifier)
    learning = [layer.name for layer in view.layers if learnable_blob_count(layer) and not is_frozen(layer)]
    assert all(layer == advice.classifier or layer not in main for layer in learning)


def check_earlier_features(name, advice):
    """Case 3: a block boundary below the bottleneck; before it all is frozen, after it the freeze changed
    nothing and every layer learns (BatchNorm keeps its own setting: its statistics are not learned by SGD)."""
    cut = advice.freeze_upto
    view = frozen_view(name, cut)
    assert cut in view and view.index(cut) < view.index(advice.bottleneck)
    assert disconnects(view, advice.classifier, cut)
    frozen, base = layers_up_to(view, cut), NetView(load(name), TRAIN)
    for layer in learnable_path(view, advice.classifier):
        assert is_frozen(layer) if layer.name in frozen else layer == base.layer(layer.name)
    learning = [layer for layer in learnable_path(view, advice.classifier) + [view.layer(advice.classifier)]
                if layer.name not in frozen and layer.type != "BatchNorm"]
    assert learning and not any(is_frozen(layer) for layer in learning)
    assert advice.bottleneck not in frozen
    last = view.inplace_followers(cut)[-1:] or [cut]
    readers = [layer for layer in view.layers if last[0] in view.sources(layer.name)]
    assert readers and not any(layer.type in ("BatchNorm", "Scale") for layer in readers)


@pytest.mark.zoo
class TestStructure:
    @pytest.mark.parametrize("name", NET_NAMES)
    def test_linear_classifier_freezes_everything_below_it(self, name):
        check_linear_classifier(name, advice_for(name, 1))

    def test_alexnet_trains_fc8_alone(self):
        view = frozen_view(NET_NAMES[0], advice_for(NET_NAMES[0], 1).freeze_upto)
        assert [layer.name for layer in view.layers if learnable_blob_count(layer) and not is_frozen(layer)] == ["fc8"]

    @pytest.mark.parametrize("name", NET_NAMES)
    def test_earlier_features_train_a_whole_upper_part(self, name):
        check_earlier_features(name, advice_for(name, 3))

    @pytest.mark.parametrize("name", NET_NAMES)
    def test_large_similar_freezes_only_the_first_block(self, name):
        gentle, earlier = advice_for(name, 2), advice_for(name, 3)
        view = NetView(load(name), TRAIN)
        assert view.index(gentle.freeze_upto) < view.index(earlier.freeze_upto)
        assert gentle.base_lr < advice_for(name, 4).base_lr

    def test_large_different_trains_everything_longer(self):
        gentle, everything = advice_for(NET_NAMES[0], 2), advice_for(NET_NAMES[0], 4)
        assert everything.freeze_upto is None and "--freeze-upto" not in everything.command
        assert everything.epochs > gentle.epochs and everything.base_lr == 10 * gentle.base_lr

    @pytest.mark.parametrize("name", zoo_nets())
    def test_every_zoo_classifier_net(self, name):
        if name in ZOO_REFUSALS:
            with pytest.raises(CaffegenError) as refused:
                find_freeze_points(NetView(load(name), TRAIN))
            assert str(refused.value) == ZOO_REFUSALS[name]
            return
        points = find_freeze_points(NetView(load(name), TRAIN))
        check_linear_classifier(name, advice_for(name, 1))
        if points.block_ends:
            check_earlier_features(name, advice_for(name, 3))


@pytest.mark.zoo
class TestCommand:
    @pytest.mark.parametrize("case", [1, 2, 3, 4])
    @pytest.mark.parametrize("name", NET_NAMES[:4])
    def test_command_parses_as_prepare(self, name, case):
        advice = advice_for(name, case)
        assert advice.command[:2] == ["caffegen", "prepare"]
        known = {opt for param in prepare_command.params for opt in param.opts}
        assert all(word in known for word in advice.command[2:] if word.startswith("-"))
        params = prepare_command.make_context("prepare", advice.command[2:]).params
        assert (params["net"], params["weights"], params["data"], params["output"]) == \
            (str(ZOO / name), "WEIGHTS", "DATA", "RUN_DIR")
        assert (params["freeze_upto"], params["base_lr"], params["epochs"], params["head_lr_mult"]) == \
            (advice.freeze_upto, advice.base_lr, advice.epochs, advice.head_lr_mult)

    def test_weights_and_data_are_used(self):
        advice = advice_for(NET_NAMES[0], 1, weights="my weights.caffemodel", data="img")
        assert advice.command[4:8] == ["--weights", "my weights.caffemodel", "--data", "img"]
        assert shlex.split(advice.command_line) == advice.command

    @pytest.mark.parametrize("case, expect_frozen", [(1, "fc1"), (2, "conv1"), (3, "conv2"), (4, None)])
    def test_advised_command_prepares_the_digits_job(self, cli, tmp_path, digits, case, expect_frozen):
        images, count = digits
        similarity = CASE_INPUTS[case][1]
        advice = advise(read_net(DIGITS / "train_val.prototxt").net, count if case in (1, 3) else 10 * count,
                        similarity, classes=5, net_path=str(DIGITS / "train_val.prototxt"),
                        weights=str(DIGITS / "digits.caffemodel"), data=str(images))
        assert advice.freeze_upto == expect_frozen
        command = list(advice.command)
        command[command.index("--epochs") + 1] = "2"
        command[command.index("-o") + 1] = str(tmp_path / "run")
        result = cli(*command[1:])
        assert result.returncode == 0, result.stderr
        net = read_net(tmp_path / "run" / "train_val.prototxt").net
        learning = [layer.name for layer in NetView(net, TRAIN).layers
                    if learnable_blob_count(layer) and not is_frozen(layer)]
        assert learning == {1: ["fc2_ft"], 2: ["conv2", "bn2", "scale2", "fc1", "fc2_ft"],
                            3: ["fc1", "fc2_ft"], 4: ["conv1", "bn1", "scale1", "conv2", "bn2", "scale2", "fc1",
                                                      "fc2_ft"]}[case]
        solver = read_solver(tmp_path / "run" / "solver.prototxt")
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert solver.base_lr == pytest.approx(advice.base_lr)
        assert manifest["schedule"]["epochs"] == 2


@pytest.mark.zoo
class TestCli:
    NET = ZOO / "bvlc_alexnet/train_val.prototxt"

    def test_text(self, cli):
        result = cli("advise", "--net", self.NET, "--train-images", 300, "--similarity", "low")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == ("case 3: a small dataset different from the pretraining data "
                            "(300 training images, fewer than 1000)")
        assert "freeze: up to conv4" in lines
        assert shlex.split(lines[-1]) == advise(load(NET_NAMES[0]), 300, "low", net_path=str(self.NET)).command

    def test_json(self, cli):
        result = cli("advise", "--net", self.NET, "--train-images", 5000, "--similarity", "high", "--classes", 10,
                     "--json", "--weights", "w.caffemodel")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        expected = advise(load(NET_NAMES[0]), 5000, "high", 10, str(self.NET), "w.caffemodel").to_json()
        assert data == expected and data["case"] == 2 and data["freeze_upto"] == "conv1"

    def test_help_states_the_rule(self, cli):
        result = cli("advise", "--help")
        assert result.returncode == 0 and f"fewer than {SMALL_DATASET_IMAGES}" in result.stdout


@pytest.mark.zoo
class TestBadInput:
    def run(self, cli, net=ZOO / NET_NAMES[0], images=100, similarity="high", *extra):
        return cli("advise", "--net", net, "--train-images", images, "--similarity", similarity, *extra)

    def test_unknown_similarity(self, cli):
        assert_one_line_error(self.run(cli, similarity="medium"), "--similarity must be high or low", "medium")

    @pytest.mark.parametrize("images", [0, -5])
    def test_non_positive_images(self, cli, images):
        assert_one_line_error(self.run(cli, images=images), "--train-images must be at least 1")

    @pytest.mark.parametrize("classes, words", [(0, "--classes must be at least 2"), (-1, "--classes must be"),
                                                (1, "at least 2"), (101, "cannot cover 101 classes")])
    def test_bad_classes(self, cli, classes, words):
        assert_one_line_error(self.run(cli, ZOO / NET_NAMES[0], 100, "high", "--classes", classes), words)

    def test_net_without_classifier(self, cli):
        net = ZOO / "mnist/mnist_autoencoder.prototxt"
        assert_one_line_error(self.run(cli, net), "no classifier found", str(net))

    def test_classifier_on_the_input(self, cli):
        net = ZOO / "hdf5_classification/train_val.prototxt"
        assert_one_line_error(self.run(cli, net), "reads the net's input directly")

    def test_earlier_features_need_a_block_boundary(self, cli):
        net = ZOO / "hdf5_classification/nonlinear_train_val.prototxt"
        assert_one_line_error(self.run(cli, net, 100, "low"), "no block boundary below the bottleneck 'fc1'")

    def test_missing_net(self, cli, tmp_path):
        assert_one_line_error(self.run(cli, tmp_path / "none.prototxt"), "no such file")

    def test_library_rejects_the_same(self):
        net = text_format.Parse('layer { name: "d" type: "Input" top: "d" }', BVLC.NetParameter())
        with pytest.raises(CaffegenError, match="no classifier found"):
            advise(net, 10, "high")
        with pytest.raises(CaffegenError, match="--similarity"):
            advise(load(NET_NAMES[0]), 10, "High")
