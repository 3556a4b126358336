"""Every combination of --resize, the base net's crop or input size and --cache-features trains, or is refused.

Three zoo nets, each with its own kind of input: CaffeNet (crop 227, fixed-size fc6 after the
convolutions), ResNet-50's deploy net (an Input of 224, a 7×7 pool5 before the fixed-size fc1000),
SqueezeNet v1.1 (crop 227, a global pooling before the softmax). Each accepted job trains one
iteration with real Caffe; each refused one is a one-line error naming the options. The cached
jobs use the nets without their training-time mirroring, which a one-time cache refuses anyway.
"""

import os
import subprocess

import pytest
from conftest import ZOO, assert_one_line_error, run_caffegen
from PIL import Image

from caffegen.io.prototxt import read_net, to_text
from caffegen.io.schema import BVLC
from caffegen.net.layers import DATA_TYPES

pytestmark = pytest.mark.zoo

NETS = {  # name: (base net, freeze point whose trunk can be cached, side of the init net's input)
    "caffenet": (ZOO / "bvlc_reference_caffenet/train_val.prototxt", "conv5", 227),
    "resnet50": (ZOO / "resnet/ResNet-50-deploy.prototxt", "res5c", 224),
    "squeezenet": (ZOO / "squeezenet_v1.1/train_val.prototxt", "fire9/concat", 227),
}
RESIZES = (None, 128, 256)
# What prepare must say for (net, resize, cache): None trains, else words of the one-line refusal.
REFUSED = {
    ("caffenet", 128, False): "--resize 128,128 is smaller than the 227×227 crop this net needs: 'fc6'",
    ("caffenet", 128, True): "--resize 128,128 is smaller than the 227×227 crop this net needs: 'fc6'",
    ("caffenet", 256, True): "crop_size: 227 in the TRAIN data layer",
    ("resnet50", 128, False): "--resize 128,128 is smaller than the 224×224 crop this net needs: 'fc1000'",
    ("resnet50", 128, True): "--resize 128,128 is smaller than the 224×224 crop this net needs: 'fc1000'",
    ("resnet50", 256, True): "crop_size: 224 in the TRAIN data layer",
    ("squeezenet", 256, True): "crop_size: 227 in the TRAIN data layer",
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two classes of three 256×256 images."""
    folder = tmp_path_factory.mktemp("photos")
    for label, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        (folder / f"class{label}").mkdir()
        for index in range(3):
            Image.new("RGB", (256, 256), tuple(value + 10 * index for value in colour)).save(
                folder / f"class{label}" / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def weights(caffe, tmp_path_factory):
    """{net: Caffe's own initialisation of it}, from zero iterations of caffe train (which still snapshots)."""
    found = {}
    for name, (path, _, side) in NETS.items():
        folder = tmp_path_factory.mktemp(name)
        net = read_net(path).net
        init = BVLC.NetParameter(name=net.name)
        init.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(dim=[1, 3, side, side])
        init.layer.extend(layer for layer in net.layer
                          if layer.type not in DATA_TYPES | {"Input"} and "label" not in layer.bottom)
        (folder / "init.prototxt").write_text(to_text(init))
        (folder / "solver.prototxt").write_text('net: "init.prototxt"\nbase_lr: 0\nlr_policy: "fixed"\nmax_iter: 0\n'
                                                'snapshot_prefix: "init"\nsolver_mode: CPU\n')
        done = subprocess.run([str(caffe), "train", "-solver", "solver.prototxt"], cwd=folder, capture_output=True,
                              text=True, env=dict(os.environ, GLOG_logtostderr="1"))
        assert done.returncode == 0, done.stderr[-2000:]
        found[name] = folder / "init_iter_0.caffemodel"
    return found


@pytest.mark.parametrize("cache", [False, True], ids=["images", "cached"])
@pytest.mark.parametrize("resize", RESIZES, ids=lambda side: f"resize-{side}")
@pytest.mark.parametrize("name", NETS)
def test_prepare_gives_a_job_caffe_trains_or_refuses_it(name, resize, cache, photos, weights, caffe, tmp_path):
    net, freeze, _ = NETS[name]
    if cache:
        net = without_mirror(net, tmp_path / "base.prototxt")
    run = tmp_path / "run"
    args = ["prepare", "--net", net, "--weights", weights[name], "--data", photos, "--val-fraction", "0.34",
            "--freeze-upto", freeze, "--batch-size", "2", "--val-batch-size", "1", "--epochs", "1",
            "--mean-value", "104,117,123", "--solver-set", "max_iter=1", "--gpu", "cpu", "-o", run]
    args += ["--resize", f"{resize},{resize}"] if resize else []
    args += ["--cache-features"] if cache else []
    prepared = run_caffegen(*args)
    refusal = REFUSED.get((name, resize, cache))
    if refusal:
        assert_one_line_error(prepared, refusal)
        assert not run.exists()
        return
    assert prepared.returncode == 0, prepared.stderr
    launched = run_caffegen("launch", run)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "Optimization Done." in (run / "train.log").read_text()


def without_mirror(path, target):
    """A copy of the net at ``path`` whose data layers do not mirror."""
    net = read_net(path).net
    for layer in net.layer:
        if layer.HasField("transform_param"):
            layer.transform_param.ClearField("mirror")
    target.write_text(to_text(net))
    return target
