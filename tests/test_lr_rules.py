"""Per-layer learning-rate rules."""

import pytest
from conftest import ZOO

from caffegen.errors import CaffegenError
from caffegen.io.prototxt import read_net
from caffegen.net.freeze import freeze
from caffegen.net.lr_rules import apply_lr_rules, matching_rule, parse_lr_rules


def rates(net, name):
    return [spec.lr_mult for spec in next(layer for layer in net.layer if layer.name == name).param]


def test_longest_pattern_wins():
    rules = parse_lr_rules(["*=0.1", "fc*=1", "fc8=10"])
    assert matching_rule("conv1", rules) == ("*", 0.1)
    assert matching_rule("fc6", rules) == ("fc*", 1.0)
    assert matching_rule("fc8", rules) == ("fc8", 10.0)


@pytest.mark.zoo
def test_rules_set_weights_and_double_bias_and_skip_frozen_and_batchnorm():
    net = read_net(ZOO / "resnet/ResNet-50-deploy.prototxt").net
    freeze(net, upto="res2c")
    report = apply_lr_rules(net, parse_lr_rules(["*=0.1", "fc1000=10", "scale5*=0.5", "nothing*=3"]))
    assert rates(net, "fc1000") == [10, 20]
    assert rates(net, "res5a_branch2a") == [pytest.approx(0.1)]
    assert rates(net, "scale5a_branch2a") == [0.5, 1.0]
    assert rates(net, "res2a_branch1") == [0]
    assert rates(net, "bn5a_branch2a") == []
    assert report.unused == ["nothing*"]
    assert any("on 1 layer(s) matching 'fc1000'" in line for line in report.summary())


@pytest.mark.parametrize("setting", ["fc8", "=3", "fc8=fast", "fc8=-1"])
def test_bad_rules(setting):
    with pytest.raises(CaffegenError, match="PATTERN=MULT"):
        parse_lr_rules([setting])


def test_prepare_writes_the_rules(tmp_path):
    from caffegen.io.resources import resource_dir
    from caffegen.job.prepare import JobOptions, prepare
    from caffegen.strategies.digits import write_digit_images
    digits = resource_dir("models") / "digits"
    write_digit_images(tmp_path / "images", range(2))
    options = JobOptions(net=digits / "train_val.prototxt", weights=digits / "digits.caffemodel",
                         data=tmp_path / "images", freeze_upto="conv1",
                         lr_rules=parse_lr_rules(["*=0.5", "fc2_ft=4", "conv1=9"]))
    job = prepare(options, tmp_path / "run")
    net = read_net(tmp_path / "run" / "train_val.prototxt").net
    assert rates(net, "conv1") == [0, 0]
    assert rates(net, "conv2") == [0.5, 1.0]
    assert rates(net, "fc2_ft") == [4, 8]
    assert "no trainable layer matches 'conv1'" in job.notes
