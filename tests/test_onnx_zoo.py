"""The zoo's deploy nets converted to ONNX with random weights, each checked against real Caffe 1.0."""

import time

import pytest
from caffe_weights import write_random_weights
from conftest import ZOO, run_caffegen, zoo_cases
from fork_schemas import densenet_for_caffe, ssd_proto

from caffegen.io.prototxt import read_net, to_text
from caffegen.io.schema import BVLC, load_fork_schema
from caffegen.net.onnx import CONVERTERS
from caffegen.run.convert import convert_to_onnx
from caffegen.run.target import Target

# name: (the zoo file, a smaller square input for the nets whose own is large, --fold-bn, --batch)
# The batch is fixed at 1 for the slowest nets (VGG's and the FCNs' 3×3 convolutions at full width, ResNet's
# depth): the dynamic batch, checked on 2 items, is the default elsewhere.
ZOO_NETS = {
    "AlexNet": ("bvlc_alexnet/deploy.prototxt", None, False, None),
    "CaffeNet": ("bvlc_reference_caffenet/deploy.prototxt", None, False, None),
    "GoogLeNet": ("bvlc_googlenet/deploy.prototxt", None, False, None),
    "VGG-16": ("v1_vgg16_rcnn/rcnn_batch_256_output_fc7_vgg_verydeep_16.prototxt", None, False, 1),
    "ResNet-50": ("resnet/ResNet-50-deploy.prototxt", None, False, None),
    "ResNet-50 --fold-bn": ("resnet/ResNet-50-deploy.prototxt", None, True, None),
    "ResNet-101": ("resnet/ResNet-101-deploy.prototxt", None, False, 1),
    "ResNet-152": ("resnet/ResNet-152-deploy.prototxt", None, False, 1),
    "SqueezeNet 1.0": ("squeezenet_v1.0/deploy.prototxt", None, False, None),
    "SqueezeNet 1.1": ("squeezenet_v1.1/deploy.prototxt", None, False, None),
    "MobileNet v1": ("mobilenet/mobilenet_deploy.prototxt", None, False, None),
    "MobileNet v2": ("mobilenet/mobilenet_v2_deploy.prototxt", None, False, None),
    "MobileNet v2 --fold-bn": ("mobilenet/mobilenet_v2_deploy.prototxt", None, True, None),
    # FCNs pad their input by 100: 500×500 costs minutes on a CPU, 64×64 runs every layer alike.
    "FCN-8s": ("fcn_voc8s/deploy.prototxt", 64, False, 1),
    "FCN-32s": ("fcn_voc32s/val.prototxt", 64, False, 1),
}
TRAINING_ONLY = {"Python", "SoftmaxWithLoss"}


def deploy_of(net, side):
    """``net`` as a deploy net: its Python data layer and loss gone, an Input of ``side``² in their place."""
    if not any(layer.type in TRAINING_ONLY for layer in net.layer) and side is None:
        return net
    deploy = type(net)()
    deploy.CopyFrom(net)
    kept = [layer for layer in deploy.layer if layer.type not in TRAINING_ONLY | {"Input"}]
    del deploy.layer[:]
    data = deploy.layer.add(name="input", type="Input", top=["data"])
    data.input_param.shape.add(dim=[1, 3, side, side])
    deploy.layer.extend(kept)
    return deploy


def convertible_part(net):
    """``net`` up to the layers ONNX (and BVLC Caffe) cannot run: those and every layer that depends on them go."""
    part = type(net)()
    part.CopyFrom(net)
    dropped, kept = set(), []
    for layer in part.layer:
        if layer.type != "Input" and (layer.type not in CONVERTERS or dropped.intersection(layer.bottom)):
            dropped.update(layer.top)
        else:
            kept.append(layer)
    del part.layer[:]
    part.layer.extend(kept)
    return part


def converted(caffe, folder, net, fold_bn=False, batch=None):
    deploy = folder / "deploy.prototxt"
    deploy.write_text(to_text(net))
    weights = write_random_weights(net, folder / "weights.caffemodel")
    started = time.monotonic()
    check = convert_to_onnx(deploy, weights, folder / "model.onnx", Target(caffe), batch=batch, fold_bn=fold_bn)
    return check, time.monotonic() - started


def zoo_nets():
    return [pytest.param(*ZOO_NETS[name], id=name) for name in ZOO_NETS]


@pytest.mark.zoo
@pytest.mark.parametrize("path, side, fold_bn, batch", zoo_cases(zoo_nets, 4))
def test_the_zoo_net_converts_and_agrees_with_caffe(caffe, tmp_path, capsys, path, side, fold_bn, batch):
    check, seconds = converted(caffe, tmp_path, deploy_of(read_net(ZOO / path).net, side), fold_bn, batch)
    with capsys.disabled():
        print(f"\n{path}{' --fold-bn' if fold_bn else ''}: {seconds:.1f} s, {check.line()}")
    assert check.outputs >= 1 and all(item.passed for item in check.checks)
    assert (tmp_path / "model.onnx").stat().st_size > 0
    assert bool(check.folded) == fold_bn


@pytest.mark.zoo
def test_mobilenet_ssd_converts_up_to_its_boxes_and_names_what_onnx_cannot(caffe, tmp_path, capsys):
    proto = ssd_proto(tmp_path / "caffe.proto")
    path = ZOO / "ssd_mobilenet/MobileNetSSD_deploy.prototxt"
    net = read_net(path, load_fork_schema(proto)).net
    weights = write_random_weights(net, tmp_path / "full.caffemodel")
    result = run_caffegen("convert", path, weights, "--proto", proto, "-o", tmp_path / "full.onnx", "--caffe", caffe)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    for named in ("(Permute)", "'conv11_mbox_priorbox' (PriorBox)", "'detection_out' (DetectionOutput)"):
        assert named in result.stderr
    part = read_net(path, load_fork_schema(proto)).net
    part = BVLC.NetParameter.FromString(convertible_part(part).SerializeToString())
    check, seconds = converted(caffe, tmp_path, part)
    with capsys.disabled():
        print(f"\nMobileNet-SSD up to its box convolutions: {seconds:.1f} s, {check.line()}")
    assert check.outputs == 12 and all(item.passed for item in check.checks)


@pytest.mark.zoo
def test_densenet_through_its_fork_schema_converts_and_agrees_with_caffe(caffe, tmp_path, capsys):
    """DenseNet-121 is read through its fork's schema; BVLC Caffe checks it once its ceil_mode fields are gone
    (Caffe 1.0's poolings always round up), with BatchNorm folded as an NPU toolchain asks."""
    folder = tmp_path / "schema"
    folder.mkdir()
    net = densenet_for_caffe(folder)
    check, seconds = converted(caffe, tmp_path, net, fold_bn=True, batch=1)
    with capsys.disabled():
        print(f"\nDenseNet-121 --fold-bn: {seconds:.1f} s, {check.line()}")
    assert check.outputs >= 1 and all(item.passed for item in check.checks)
    writer, after_convolution = {}, set()  # a BatchNorm after a concatenation has no layer to fold into
    for layer in net.layer:
        if layer.type == "BatchNorm" and writer.get(layer.bottom[0]) == "Convolution":
            after_convolution.add(layer.name)
        writer.update((top, layer.type) for top in layer.top)
    assert set(check.folded) == after_convolution and len(after_convolution) == 59

