"""Segmentation from prepare to evaluate with real Caffe: an FCN-style net trained from scratch, retargeted, fine-tuned."""

import csv
import json

import h5py
import numpy as np
import pytest
from conftest import ROOT, ZOO, assert_one_line_error, run_caffegen
from PIL import Image
from segmentation_data import make_segmentation_data

from caffegen.io.caffemodel import read_caffemodel, write_caffemodel
from caffegen.io.prototxt import read_net
from caffegen.io.schema import BVLC
from caffegen.job.rundir import RunDir

FCN_SEG = ROOT / "tests" / "data" / "fcn_seg.prototxt"
UPSAMPLERS = ("upscore2", "upscore")


def no_weights(path):
    """A caffemodel that names none of the net's layers: every layer starts from its fillers."""
    write_caffemodel(path, [(BVLC.LayerParameter(name="unused", type="Convolution"), [np.zeros((1, 1, 1, 1), "f4")])])
    return path


def prepare(*args):
    """prepare --task segmentation on the CPU, checked to succeed."""
    done = run_caffegen("prepare", "--task", "segmentation", "--gpu", "cpu", *args)
    assert done.returncode == 0, done.stderr
    return done


def final_weights(run):
    return RunDir(run).trained_weights()


def bilinear(kernel):
    """The kernel Caffe's bilinear filler writes."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    ramp = 1 - np.abs(np.arange(kernel) - center) / factor
    return np.outer(ramp, ramp)


@pytest.fixture(scope="module")
def base(caffe, tmp_path_factory):
    """A 3-class FCN (background, squares, discs) trained from scratch by caffegen on 48×48 images."""
    folder = tmp_path_factory.mktemp("segbase")
    data = make_segmentation_data(folder / "data", 160, 3)
    prepare("--net", FCN_SEG, "--weights", no_weights(folder / "none.caffemodel"), "--force", "--data", data,
            "--epochs", 4, "-o", folder / "run")
    done = run_caffegen("launch", folder / "run")
    assert done.returncode == 0, done.stderr
    return folder / "run"


@pytest.fixture(scope="module")
def tuned(base, tmp_path_factory):
    """The base model retargeted to 4 classes and fine-tuned with conv1 frozen; its mean IoU before and after."""
    folder = tmp_path_factory.mktemp("segtune")
    data = make_segmentation_data(folder / "data", 120, 4, seed=1)
    run = folder / "run"
    prepare("--net", base / "train_val.prototxt", "--weights", final_weights(base), "--data", data,
            "--freeze-upto", "conv1", "--epochs", 4, "-o", run)
    start = run_caffegen("evaluate", run, "--weights", final_weights(base), "-o", folder / "start")
    assert start.returncode == 0, start.stderr
    done = run_caffegen("launch", run)
    assert done.returncode == 0, done.stderr
    after = run_caffegen("evaluate", run)
    assert after.returncode == 0, after.stderr
    return {"run": run, "data": data, "start": json.loads((folder / "start" / "metrics.json").read_text()),
            "after": json.loads((run / "eval" / "metrics.json").read_text())}


def test_fine_tuning_raises_mean_iou(tuned):
    start, after = tuned["start"], tuned["after"]
    assert start["task"] == after["task"] == "segmentation"
    assert [row["class"] for row in after["per_class"]] == ["0", "1", "2", "3"]
    assert after["mean_iou"] > 0.7
    assert after["mean_iou"] > start["mean_iou"] + 0.3
    assert after["pixel_accuracy"] > 0.9


def test_frozen_blobs_and_upsamplers_stay_fixed(base, tuned):
    before, after = read_caffemodel(final_weights(base)), read_caffemodel(final_weights(tuned["run"]))
    for old, new in zip(before.values("conv1"), after.values("conv1"), strict=True):
        assert np.array_equal(old, new)
    assert not np.array_equal(before.values("conv2")[0], after.values("conv2")[0])
    net = read_net(tuned["run"] / "train_val.prototxt").net
    for layer in net.layer:
        if layer.type == "Deconvolution":
            weights = after.values(layer.name)[0]
            assert weights.shape[0] == 4
            assert np.array_equal(weights.reshape(-1, *weights.shape[2:])[0], bilinear(4).astype("f4"))


def test_metrics_are_those_of_the_confusion_matrix_and_caffes_accuracy(tuned):
    run = tuned["run"]
    with (run / "eval" / "confusion.csv").open() as table:
        counts = np.array([row[1:] for row in list(csv.reader(table))[1:]], dtype=int)
    assert tuned["after"]["pixels"] == counts.sum() == 24 * 47 * 48  # the ignored border row left out
    assert tuned["after"]["pixel_accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
    union = counts.sum(0) + counts.sum(1) - np.diag(counts)
    assert tuned["after"]["mean_iou"] == pytest.approx(np.mean(np.diag(counts) / union))
    with (run / "curves.csv").open() as table:
        rows = list(csv.DictReader(table))
    accuracy = [float(row["test/accuracy"]) for row in rows if row["test/accuracy"]]
    assert accuracy[-1] == pytest.approx(tuned["after"]["pixel_accuracy"], abs=0.01)
    assert "loss" in rows[0]
    for name in ("contact_sheet.png", "confusion.png", "report.html", "predictions.csv"):
        assert (run / "eval" / name).stat().st_size > 0
    assert "mean IoU" in (run / "eval" / "report.html").read_text()


def test_predict_writes_palette_masks(tuned, tmp_path):
    images = sorted((tuned["data"] / "images").iterdir())[:3]
    done = run_caffegen("predict", tuned["run"], *images, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 mask(s) to masks" in done.stdout
    with Image.open(tmp_path / "masks" / images[0].name) as mask:
        assert mask.mode == "P"
        assert set(np.unique(np.asarray(mask))) <= {0, 1, 2, 3}
        assert mask.getpalette()[3:6] == [128, 0, 0]  # VOC's colour of class 1


def test_the_exported_bundle_records_the_task_and_evaluates(tuned, tmp_path):
    exported = run_caffegen("export", tuned["run"], "-o", tmp_path / "bundle")
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "bundle" / "preprocessing.json").read_text())["task"] == "segmentation"
    done = run_caffegen("evaluate", tmp_path / "bundle", "--data", tuned["data"], "-o", tmp_path / "eval")
    assert done.returncode == 0, done.stderr
    assert "mean IoU" in done.stdout


def test_another_engine_segments_as_caffe_does(tuned, tmp_path):
    pytest.importorskip("onnxruntime")
    done = run_caffegen("evaluate", tuned["run"], "--engine", "onnxruntime", "--batch-size", 4, "-o", tmp_path / "eval")
    assert done.returncode == 0, done.stderr
    assert "ONNX Runtime" in done.stderr and "probabilities computed by onnxruntime at " in done.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["engine"] == "onnxruntime"
    assert (metrics["pixel_accuracy"], metrics["mean_iou"]) == pytest.approx(
        (tuned["after"]["pixel_accuracy"], tuned["after"]["mean_iou"]), abs=1e-3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A few image and mask pairs of 3 classes, and a caffemodel naming none of the net's layers."""
    folder = tmp_path_factory.mktemp("segsmall")
    make_segmentation_data(folder / "data", 6, 3)
    return folder


def prepare_error(small, tmp_path, data=None, net=FCN_SEG, *args):
    return run_caffegen("prepare", "--task", "segmentation", "--gpu", "cpu", "--net", net,
                        "--weights", no_weights(tmp_path / "none.caffemodel"), "--force", "--data",
                        data or small / "data", *args, "-o", tmp_path / "run")


def copied(small, tmp_path):
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for path in (small / "data" / sub).iterdir():
            (data / sub / path.name).write_bytes(path.read_bytes())
    return data


def test_colour_mask_is_refused(small, tmp_path):
    data = copied(small, tmp_path)
    Image.open(data / "masks" / "0002.png").convert("RGB").save(data / "masks" / "0002.png")
    assert_one_line_error(prepare_error(small, tmp_path, data), "0002.png", "RGB colour mask", "convert")
    assert not (tmp_path / "run").exists()


def test_palette_mask_gives_its_indices(small, tmp_path):
    data = copied(small, tmp_path)
    palette = Image.fromarray(np.asarray(Image.open(data / "masks" / "0002.png")), mode="P")
    palette.putpalette([value for index in range(256) for value in (index, 255 - index, 0)])
    palette.save(data / "masks" / "0002.png")
    done = prepare_error(small, tmp_path, data)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "labels.txt").read_text().splitlines() == ["0", "1", "2"]


def test_missing_mask_is_named(small, tmp_path):
    data = copied(small, tmp_path)
    (data / "masks" / "0004.png").unlink()
    assert_one_line_error(prepare_error(small, tmp_path, data), "no mask for image '0004.png'")


def test_mask_of_another_size_is_refused(small, tmp_path):
    data = copied(small, tmp_path)
    Image.new("L", (40, 48)).save(data / "masks" / "0001.png")
    assert_one_line_error(prepare_error(small, tmp_path, data), "0001.png", "48×40", "images are 48×48")


def test_mask_value_beyond_the_classes_is_refused(small, tmp_path):
    assert_one_line_error(prepare_error(small, tmp_path, None, FCN_SEG, "--num-classes", "2"),
                          "pixel value 2 is no class", "0…1", "255")


def test_evaluate_refuses_masks_of_classes_the_model_lacks(tuned, base, tmp_path):
    done = run_caffegen("evaluate", base, "--data", tuned["data"], "-o", tmp_path / "eval")
    assert_one_line_error(done, "pixel value 3 is no class", "0…2")


@pytest.mark.zoo
def test_net_without_a_spatial_loss_is_refused(small, tmp_path):
    net = ZOO / "bvlc_reference_caffenet" / "train_val.prototxt"
    done = prepare_error(small, tmp_path, None, net, "--mean-value", "104,117,123")
    assert_one_line_error(done, "train_val.prototxt", "N×K×H×W", "'loss'")


def test_cache_features_is_refused_with_its_reason(small, tmp_path):
    assert_one_line_error(prepare_error(small, tmp_path, None, FCN_SEG, "--cache-features"),
                          "--cache-features does not apply", "Crop")


@pytest.mark.zoo
def test_fcns_published_net_gets_hdf5_data_a_pixel_loss_and_fcns_solver(small, tmp_path):
    done = prepare_error(small, tmp_path, None, ZOO / "fcn_voc8s" / "train.prototxt", "--base-lr", "1e-10")
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    net = read_net(run / "train_val.prototxt").net
    data = [layer for layer in net.layer if layer.type == "HDF5Data"]
    assert [layer.hdf5_data_param.source for layer in data] == ["train_h5.txt", "val_h5.txt"]
    assert not [layer for layer in net.layer if layer.type == "Python"]
    loss = next(layer for layer in net.layer if layer.type == "SoftmaxWithLoss")
    assert (loss.loss_param.ignore_label, loss.loss_param.normalize) == (255, False)
    accuracy = next(layer for layer in net.layer if layer.type == "Accuracy")
    assert accuracy.accuracy_param.ignore_label == 255 and list(accuracy.bottom) == list(loss.bottom)
    scores = [layer for layer in net.layer if layer.name.startswith("score") and layer.type == "Convolution"]
    assert scores and all(layer.convolution_param.num_output == 3 for layer in scores)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["task"] == "segmentation"
    assert manifest["preprocessing"]["mean_value"] == pytest.approx([104.00699, 116.66877, 122.67892])
    solver = (run / "solver.prototxt").read_text()
    assert 'lr_policy: "fixed"' in solver and "momentum: 0.99" in solver and "base_lr: 1e-10" in solver
    deploy = read_net(run / "deploy.prototxt").net
    assert deploy.layer[0].type == "Input" and deploy.layer[-1].type == "Softmax"


def test_hdf5_pairs_hold_the_preprocessed_image_and_its_mask(small, tmp_path):
    done = prepare_error(small, tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    pairs = json.loads((run / "segmentation.json").read_text())
    names = (run / "train_h5.txt").read_text().split()
    with h5py.File(run / names[0]) as stored:
        image, mask = pairs["train"][0]
        rgb = np.asarray(Image.open(image), dtype=np.float32)
        expected = ((rgb[:, :, ::-1] - 110) * np.float32(0.0125)).transpose(2, 0, 1)
        np.testing.assert_allclose(stored["data"][0], expected, rtol=1e-6)
        assert np.array_equal(stored["label"][0, 0], np.asarray(Image.open(mask)))
        assert stored["data"].shape[0] == len(pairs["train"]) == 5
