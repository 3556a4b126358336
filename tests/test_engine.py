"""OpenCV DNN as the engine of cached trunk features, against real Caffe 1.0 on zoo trunks and real photos."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
from conftest import DIGITS, ZOO, assert_one_line_error, run_caffegen_process
from fork_schemas import densenet_for_caffe

from caffegen.defaults import CACHE_BATCH
from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import write_caffemodel
from caffegen.io.lists import ListLine
from caffegen.io.prototxt import parse_net, read_net
from caffegen.io.schema import BVLC
from caffegen.job.prepare import JobOptions, prepare
from caffegen.job.rundir import RunDir
from caffegen.net.netview import TEST, NetView
from caffegen.net.shapes import infer_shapes
from caffegen.reporting import PlainReporter
from caffegen.run import cache
from caffegen.run.cache import engine_check, run_cached
from caffegen.run.engines import ENGINES
from caffegen.run.engines.agreement import FEATURE_TOLERANCE
from caffegen.run.engines.opencv import OPENCV_DIFFERS
from caffegen.run.target import Target

# Real photos scikit-learn ships (427×640 JPEGs): Caffe and OpenCV decode, resize and crop them.
PHOTOS = sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))
MEAN = (104.0, 117.0, 123.0)

# name: (zoo deploy net, the blob cached, images compared, input scale)
ZOO_TRUNKS = {
    "ResNet-50": ("resnet/ResNet-50-deploy.prototxt", "pool5", 2, 1.0),
    "VGG-16": ("v1_vgg16_rcnn/rcnn_batch_256_output_fc7_vgg_verydeep_16.prototxt", "fc7", 1, 1.0),
    "GoogLeNet": ("bvlc_googlenet/deploy.prototxt", "pool5/7x7_s1", 2, 1.0),
    "SqueezeNet v1.1": ("squeezenet_v1.1/deploy.prototxt", "pool10", 2, 1.0),
    "MobileNet": ("mobilenet/mobilenet_deploy.prototxt", "pool6", 2, 0.017),
}


def input_side(net):
    """The side of a deploy net's square input, from its Input layer or its legacy input fields."""
    if net.input_shape:
        return net.input_shape[0].dim[-1]
    if net.input_dim:
        return net.input_dim[-1]
    return next(layer for layer in net.layer if layer.type == "Input").input_param.shape[0].dim[-1]


def trunk_of(deploy, boundary, side, scale, source):
    """ImageData (photos resized to side+32, centre-cropped to side, mean and scale) and ``deploy`` up to
    ``boundary``."""
    net = BVLC.NetParameter(name=f"{deploy.name}_trunk")
    data = net.layer.add(name="data", type="ImageData", top=["data", "label"])
    data.image_data_param.source, data.image_data_param.batch_size = source, 1
    data.image_data_param.new_height = data.image_data_param.new_width = side + 32
    data.transform_param.crop_size, data.transform_param.scale = side, scale
    data.transform_param.mean_value.extend(MEAN)
    layers = [layer for layer in deploy.layer if layer.type != "Input"]
    last = max(index for index, layer in enumerate(layers) if boundary in layer.top)
    net.layer.extend(layers[:last + 1])
    return net


def sane_weights(net, side, path, seed=0):
    """Random weights that keep activations of the order of 1: He-scaled filters, BatchNorm with positive
    variances and its scale factor 1, Scale near 1."""
    rng = np.random.default_rng(seed)
    layers = []
    for result in infer_shapes(NetView(net, TEST), (1, 3, side, side)):
        if not result.params:
            continue
        layer = next(layer for layer in net.layer if layer.name == result.name)
        shapes = [tuple(shape) for shape in result.params]
        if layer.type == "BatchNorm":
            arrays = [rng.normal(0, 0.1, shapes[0]), rng.uniform(0.5, 2.0, shapes[1]), np.ones(shapes[2])]
        elif layer.type == "Scale":
            arrays = [rng.uniform(0.8, 1.2, shape) if i == 0 else rng.normal(0, 0.1, shape)
                      for i, shape in enumerate(shapes)]
        else:
            fan_in = int(np.prod(shapes[0][1:]))
            arrays = [rng.normal(0, np.sqrt(2 / fan_in), shapes[0])] + [rng.normal(0, 0.01, shape)
                                                                        for shape in shapes[1:]]
        layers.append((BVLC.LayerParameter(name=layer.name, type=layer.type), [a.astype(np.float32) for a in arrays]))
    write_caffemodel(path, layers)


def photo_lines(count):
    return [ListLine(i + 1, str(PHOTOS[i % len(PHOTOS)]), "0") for i in range(count)]


def check_trunk(caffe, deploy, boundary, images, scale, folder):
    """engine_check's FeatureCheck of OpenCV against Caffe for ``deploy`` up to ``boundary`` on ``images`` photos."""
    side = input_side(deploy)
    net = trunk_of(deploy, boundary, side, scale, "photos.txt")
    sane_weights(net, side, folder / "weights.caffemodel")
    check, _ = engine_check(Target(caffe), net, "weights.caffemodel", photo_lines(images), boundary,
                            (1, 3, side, side), folder)
    return check


@pytest.mark.zoo
def test_zoo_trunks_agree_within_the_tolerance(caffe, tmp_path, capsys):
    rows = []
    for name, (path, boundary, images, scale) in ZOO_TRUNKS.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        check = check_trunk(caffe, read_net(ZOO / path).net, boundary, images, scale, folder)
        rows.append((name, boundary, check))
    folder = tmp_path / "densenet"
    folder.mkdir()
    rows.append(("DenseNet-121 (ceil_mode removed)", "pool5",
                 check_trunk(caffe, densenet_for_caffe(folder), "pool5", 1, 1.0, folder)))
    with capsys.disabled():
        print(f"\n{'net':34} {'features':14} {'images':>6}  max |Δ| / max |caffe|")
        for name, boundary, check in rows:
            print(f"{name:34} {boundary:14} {check.images:>6}  {check.max_difference:.2e}")
    assert all(check.passed for _, _, check in rows), rows


def test_pooling_sizes_caffe_rounds_up_agree(caffe, tmp_path):
    """Caffe 1.0 rounds pooling sizes up and then drops a last window that would start in the padding
    (10 → 5 → 4 here, kernel 3, stride 3, pad 2); OpenCV DNN 4.x computes the same shapes and values."""
    net = parse_net('name: "p" input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }\n'
                    'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
                    'convolution_param { num_output: 4 kernel_size: 3 } }\n'
                    'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
                    'pooling_param { pool: MAX kernel_size: 3 stride: 3 pad: 2 } }', "pool.prototxt").net
    check = check_trunk(caffe, net, "pool1", 1, 0.01, tmp_path)
    assert check.passed, check.line()


@pytest.mark.zoo
def test_opencv_reads_densenet_with_its_fork_fields():
    cv2 = pytest.importorskip("cv2")
    names = cv2.dnn.readNetFromCaffe(str(ZOO / "densenet/DenseNet_121.prototxt")).getLayerNames()
    assert "pool5" in names


# --- prepared runs -----------------------------------------------------------------------------

BASE_NET = (DIGITS / "train_val.prototxt").read_text()
# An LRN with k: 2 between pool1 and conv2: OpenCV DNN adds 1 instead of k.
CONV2 = 'layer {\n  name: "conv2"\n  type: "Convolution"\n  bottom: "pool1"'
LRN_NET = BASE_NET.replace(CONV2, 'layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { '
                           'local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 } }\n' + CONV2.replace("pool1", "norm1"))


def prepare_digits(images, run_dir, engine, net_text=BASE_NET):
    """A cached digits job frozen up to conv2, computing its features with ``engine``."""
    net = run_dir.parent / f"{run_dir.name}_base.prototxt"
    net.write_text(net_text)
    prepare(JobOptions(net=net, weights=DIGITS / "digits.caffemodel", data=images, freeze_upto="conv2", epochs=1,
                       cache_features=True, engine=engine), run_dir)
    return RunDir(run_dir)


def features(run):
    """The (features, labels) of a run's training images, from its one chunk."""
    import h5py
    with h5py.File(next((run.path / cache.FEATURES).glob("train_*.h5")), "r") as stored:
        return np.array(stored["data"]), np.array(stored["label"])


def relative_difference(found, expected):
    return float(np.abs(found - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def trained(caffe, images, tmp_path_factory):
    """The digits job trained on cached features, computed with ``auto``, ``caffe`` and each engine that converts to
    ONNX."""
    runs = {}
    for engine in ("auto", "caffe", "onnxruntime", "openvino"):
        run = prepare_digits(images, tmp_path_factory.mktemp(engine) / "run", engine)
        lines = []
        result = run_cached(run, Target(caffe), PlainReporter(lines.append))
        assert result.exit_code == 0, (run.path / "train.log").read_text()[-2000:]
        runs[engine] = run, lines
    return runs


def test_auto_checks_every_engine_and_computes_with_the_fastest_that_agrees(trained):
    run, lines = trained["auto"]
    for title in ("OpenCV DNN", "ONNX Runtime", "OpenVINO"):
        assert any(line.startswith(title) and f"agrees with Caffe on the first {CACHE_BATCH} images" in line
                   for line in lines), lines
    chosen = [line for line in lines if line.startswith("computing the features with ")]
    rates = dict(re.findall(r"(\w+) (\d+) img/s", chosen[0]))
    assert len(chosen) == 1 and set(rates) == {"opencv", "onnxruntime", "openvino"}
    engine = max(rates, key=lambda name: int(rates[name]))
    assert chosen[0].startswith(f"computing the features with {engine}, the fastest that agrees")
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert (manifest["engine"], manifest["features_engine"]) == ("auto", engine)
    result = json.loads((run.path / "result.json").read_text())["cache"]
    assert (result["engine"], result["engine_asked"]) == (engine, "auto")
    assert json.loads((run.path / cache.FEATURES / cache.STORE_RECORD).read_text())["computed_by"] == engine
    checked = result["engine_checks"]
    assert set(checked) == set(ENGINES) and all(check["agrees"] for check in checked.values())
    assert all(abs(checked[name]["images_per_s"] - int(rate)) <= 1 for name, rate in rates.items())


@pytest.mark.parametrize("engine", ["auto", "onnxruntime", "openvino"])
def test_another_engines_features_equal_caffe_features(trained, engine):
    (engine_run, _), (caffe_run, caffe_lines) = trained[engine], trained["caffe"]
    assert not any(line.startswith(("OpenCV", "ONNX")) for line in caffe_lines)
    assert json.loads((caffe_run.path / "result.json").read_text())["cache"]["engine"] == "caffe"
    (found, found_labels), (expected, labels) = features(engine_run), features(caffe_run)
    assert found.shape == expected.shape and found.dtype == np.float32
    assert relative_difference(found, expected) <= FEATURE_TOLERANCE
    np.testing.assert_array_equal(found_labels, labels)


@pytest.mark.parametrize("engine, title", [("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")])
def test_a_named_engine_is_used_once_it_agrees(trained, engine, title):
    run, lines = trained[engine]
    assert any(line.startswith(title) and "agrees with Caffe" in line for line in lines)
    assert not any(line.startswith(("OpenCV", "ONNX", "OpenVINO")) and not line.startswith(title) for line in lines)
    assert json.loads((run.path / "result.json").read_text())["cache"]["engine"] == engine


def test_a_layer_known_to_differ_keeps_auto_off_that_engine(caffe, images, tmp_path, monkeypatch):
    """LRN with k: 2: OpenCV is not used, ONNX Runtime or OpenVINO is; with OpenCV the only other engine, Caffe
    is."""
    why = "OpenCV DNN ignores k: 2 of LRN 'norm1' (it adds 1), so its features would differ from Caffe's"
    for folder, engines, told in (("both", ("onnxruntime", "openvino"), f"not used: {why}"),
                                  ("opencv", ("caffe",), f"computing the features with Caffe: {why}")):
        if engines == ("caffe",):
            monkeypatch.delitem(ENGINES, "onnxruntime")
            monkeypatch.delitem(ENGINES, "openvino")
        lines = []
        extracted = cache.extract_features(prepare_digits(images, tmp_path / folder, "auto", LRN_NET), Target(caffe),
                                           PlainReporter(lines.append))
        assert extracted.store.engine in engines and told in lines, lines


def test_opencv_asked_for_refuses_a_layer_known_to_differ(caffe, images, tmp_path):
    run = prepare_digits(images, tmp_path / "run", "opencv", LRN_NET)
    with pytest.raises(CaffegenError, match=r"ignores k: 2 of LRN 'norm1'") as error:
        cache.extract_features(run, Target(caffe))
    assert "\n" not in str(error.value)


def test_the_first_batch_comparison_falls_back_to_caffe(caffe, images, tmp_path, monkeypatch):
    """With the LRN left off the list, the first mini-batch shows the difference and Caffe computes everything."""
    monkeypatch.delitem(OPENCV_DIFFERS, "LRN")
    monkeypatch.delitem(ENGINES, "onnxruntime")  # which compute this LRN as Caffe does
    monkeypatch.delitem(ENGINES, "openvino")
    runs = {}
    for engine in ("auto", "opencv", "caffe"):
        lines = []
        run = prepare_digits(images, tmp_path / engine, engine, LRN_NET)
        runs[engine] = cache.extract_features(run, Target(caffe), PlainReporter(lines.append)), lines, run
    for engine, after in (("auto", "computing the features with Caffe: OpenCV DNN"),
                          ("opencv", "computing all the features with Caffe instead")):
        extracted, lines, run = runs[engine]
        assert extracted.store.engine == "caffe"
        assert json.loads((run.path / "manifest.json").read_text())["features_engine"] == "caffe"
        assert any(f"DIFFERS from Caffe on the first {CACHE_BATCH} images" in line for line in lines), lines
        assert any(after in line for line in lines), lines
        np.testing.assert_array_equal(features(run)[0], features(runs["caffe"][2])[0])


@pytest.fixture
def without_cv2(tmp_path):
    """An environment in which ``import cv2`` fails, as where OpenCV is not installed (for a process of its own)."""
    folder = tmp_path / "no_cv2"
    folder.mkdir()
    (folder / "cv2.py").write_text("raise ImportError('No module named cv2')\n")
    return dict(os.environ, PYTHONPATH=str(folder))


def test_opencv_asked_for_without_opencv_is_one_line(images, without_cv2, tmp_path):
    result = run_caffegen_process("prepare", "--net", DIGITS / "train_val.prototxt", "--weights",
                                  DIGITS / "digits.caffemodel", "--data", images, "--freeze-upto", "conv2",
                                  "--cache-features", "--engine", "opencv", "-o", tmp_path / "run", env=without_cv2)
    assert_one_line_error(result, "OpenCV is not installed", "pip install")
    assert not (tmp_path / "run").exists()


def test_openvino_asked_for_without_openvino_is_one_line(images, tmp_path):
    folder = tmp_path / "no_openvino"
    folder.mkdir()
    (folder / "openvino.py").write_text("raise ImportError('No module named openvino')\n")
    result = run_caffegen_process("prepare", "--net", DIGITS / "train_val.prototxt", "--weights",
                                  DIGITS / "digits.caffemodel", "--data", images, "--freeze-upto", "conv2",
                                  "--cache-features", "--engine", "openvino", "-o", tmp_path / "run",
                                  env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                      filter(None, [str(folder), os.environ.get("PYTHONPATH")]))))
    assert_one_line_error(result, "OpenVINO is not installed", "pip install 'caffegen[openvino]'")
    assert not (tmp_path / "run").exists()


def test_auto_without_opencv_uses_caffe_and_says_why(caffe, images, without_cv2, tmp_path):
    run = tmp_path / "run"
    prepared = run_caffegen_process("prepare", "--net", DIGITS / "train_val.prototxt", "--weights",
                                    DIGITS / "digits.caffemodel", "--data", images, "--freeze-upto", "conv2",
                                    "--epochs", 1, "--cache-features", "-o", run, env=without_cv2)
    assert prepared.returncode == 0, prepared.stderr
    assert json.loads((run / "manifest.json").read_text())["engine"] == "auto"
    launched = run_caffegen_process("launch", run, env=without_cv2)
    assert launched.returncode == 0, launched.stderr
    assert "computing the features with Caffe: OpenCV is not installed: pip install" in launched.stderr
    assert json.loads((run / "result.json").read_text())["cache"]["engine"] == "caffe"


def test_every_engine_an_option_names_is_caffe_auto_or_one_of_the_table():
    from caffegen.job.options import AUTO, CAFFE
    from caffegen.job.options import ENGINES as NAMED
    from caffegen.run.engines import ENGINES
    assert set(NAMED) == {AUTO, CAFFE} | set(ENGINES)
    assert all(engine.name == name for name, engine in ENGINES.items())
