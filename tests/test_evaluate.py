"""evaluate, predict and export on real runs of the bundled model, with real Caffe and OpenCV DNN 4.x."""

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS, assert_one_line_error, copy_run, run_caffegen, run_caffegen_process, wait_for
from PIL import Image

from caffegen.errors import CaffegenError
from caffegen.io.lists import read_list
from caffegen.io.prototxt import read_net, to_text
from caffegen.job.model import load_model
from caffegen.run.evaluate import Evaluation


@pytest.fixture(scope="module")
def trained(trained_digits, tmp_path_factory):
    """A copy of the session's run fine-tuned from the bundled model to the digits 5–9 (trunk frozen, 2 epochs)."""
    return copy_run(trained_digits, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def evaluated(trained):
    result = run_caffegen("evaluate", trained)
    assert result.returncode == 0, result.stderr
    return trained / "eval", result


class TestMetrics:
    """Evaluation's arithmetic, on probabilities chosen by hand."""

    def evaluation(self):
        probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
        return Evaluation(["a", "b", "c"], ["p0", "p1", "p2", "p3"], np.array([0, 1, 1, 1]), probabilities)

    def test_top1_mean_class_accuracy_and_per_class(self):
        metrics = self.evaluation().metrics()
        assert metrics["top1"] == 0.5
        # recall: a 1/1, b 1/3; c has no images and does not count.
        assert metrics["mean_class_accuracy"] == pytest.approx((1 + 1 / 3) / 2)
        b = metrics["per_class"][1]
        assert (b["precision"], b["recall"], b["support"]) == (1.0, pytest.approx(1 / 3), 3)
        assert "top5" not in metrics  # three classes: every label is in the top 5

    def test_confusion_and_mistakes(self):
        evaluation = self.evaluation()
        assert evaluation.confusion().tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
        assert list(evaluation.mistakes(5)) == [2, 3]  # both wrong at 0.5: the earlier first
        evaluation.probabilities[3] = [0.1, 0.3, 0.6]
        assert list(evaluation.mistakes(1)) == [3]

    def test_top5_with_more_than_five_classes(self):
        probabilities = np.array([[0.04, 0.4, 0.2, 0.1, 0.09, 0.08, 0.09],   # label 1: first
                                  [0.3, 0.04, 0.4, 0.1, 0.06, 0.05, 0.05],   # label 0: second
                                  [0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05]])  # label 6: last
        evaluation = Evaluation(list("abcdefg"), ["x", "y", "z"], np.array([1, 0, 6]), probabilities)
        metrics = evaluation.metrics()
        assert metrics["top1"] == pytest.approx(1 / 3) and metrics["top5"] == pytest.approx(2 / 3)


def caffe_accuracy(caffe, run, weights):
    """The accuracy Caffe's own Accuracy layer gives over val.txt, one image per iteration (no wrap-around)."""
    net = read_net(run / "train_val.prototxt").net
    count = len(read_list(run / "val.txt"))
    for layer in net.layer:
        if layer.type == "ImageData" and layer.include and layer.include[0].phase == 1:
            layer.image_data_param.batch_size = 1
    (run / "accuracy_check.prototxt").write_text(to_text(net))
    done = subprocess.run([str(caffe), "test", "-model", "accuracy_check.prototxt", "-weights", str(weights),
                           "-iterations", str(count)], cwd=run, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(re.findall(r"\] accuracy = ([0-9.]+)", done.stderr)[-1]), count


def test_evaluate_top1_equals_caffes_accuracy_layer(caffe, trained, evaluated):
    out, result = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    final = json.loads((trained / "result.json").read_text())["final_model"]
    accuracy, count = caffe_accuracy(caffe, trained, final)
    assert metrics["images"] == count
    assert metrics["top1"] == pytest.approx(accuracy, abs=1e-6)
    assert f"top-1 {metrics['top1']:.4f}" in result.stdout


def test_another_engine_gives_caffes_top1_once_it_agrees(cli, trained, evaluated, tmp_path):
    """ONNX Runtime computes every mini-batch after the first (of 8 images) once it agreed with Caffe on that one."""
    pytest.importorskip("onnxruntime")
    caffe_metrics = json.loads((evaluated[0] / "metrics.json").read_text())
    assert caffe_metrics["engine"] == "caffe" and caffe_metrics["images_per_second"] > 0
    result = cli("evaluate", trained, "-o", tmp_path / "eval", "--engine", "onnxruntime", "--batch-size", 8)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ONNX Runtime [0-9.]+ agrees with Caffe on 8 images: max \|Δ probability\| ", result.stderr,
                     re.M), result.stderr
    assert re.search(r"^probabilities computed by onnxruntime at [0-9.]+ img/s$", result.stderr, re.M), result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["engine"] == "onnxruntime" and metrics["images_per_second"] > 0
    assert f"onnxruntime at {metrics['images_per_second']} img/s" in (tmp_path / "eval" / "report.html").read_text()
    assert metrics["images"] > 8 and metrics["top1"] == caffe_metrics["top1"]
    predicted = [row["predicted_label"] for row in csv.DictReader((tmp_path / "eval" / "predictions.csv").open())]
    assert predicted == [row["predicted_label"] for row in csv.DictReader((evaluated[0] / "predictions.csv").open())]


def test_predict_with_auto_says_which_engine_ran_and_why_not_the_others(cli, trained, evaluated):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    image = evaluated_image(evaluated)
    caffe = json.loads(cli("predict", trained, image, "--json").stdout)[0]["top"]
    result = cli("predict", trained, image, "--json", "--engine", "auto")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)[0]["top"]
    assert [entry["class"] for entry in found] == [entry["class"] for entry in caffe]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(found, caffe)) <= 1e-4
    chosen = re.search(r"^probabilities computed by (\w+) at [0-9.]+ img/s; not used: .*the others were slower on "
                       r"the first mini-batch \((.*)\)$", result.stderr, re.M)
    assert chosen, result.stderr
    rates = dict(re.findall(r"(\w+) (\d+) img/s", chosen.group(2)))
    assert set(rates) == {"opencv", "onnxruntime", "openvino"}
    assert chosen.group(1) == max(rates, key=lambda name: int(rates[name]))


def without(module, folder):
    """An environment in which ``import module`` fails, as where it is not installed (for a process of its own)."""
    folder.mkdir()
    (folder / f"{module}.py").write_text(f"raise ImportError('No module named {module}')\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))


def test_an_engine_not_installed_is_refused_in_one_line(trained, tmp_path):
    result = run_caffegen_process("evaluate", trained, "-o", tmp_path / "eval", "--engine", "openvino",
                                  env=without("openvino", tmp_path / "no_openvino"))
    assert_one_line_error(result, "OpenVINO is not installed: pip install 'caffegen[openvino]'")
    assert not (tmp_path / "eval").exists()


def test_auto_without_opencv_evaluates_with_caffe_and_says_why(trained, tmp_path):
    result = run_caffegen_process("evaluate", trained, "-o", tmp_path / "eval", "--engine", "auto",
                                  env=without("cv2", tmp_path / "no_cv2"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^probabilities computed by caffe at [0-9.]+ img/s; not used: preprocessing the images for "
                     r"another engine: OpenCV is not installed", result.stderr, re.M), result.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["engine"] == "caffe"


def test_evaluate_files_agree(evaluated):
    out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == metrics["images"]
    assert sum(int(row["correct"]) for row in rows) / len(rows) == pytest.approx(metrics["top1"])
    assert all(row["top1_label"] == row["predicted_label"] for row in rows)
    assert all(float(row["top1_probability"]) >= float(row["top2_probability"]) for row in rows)
    confusion = list(csv.reader((out / "confusion.csv").open()))
    assert confusion[0][1:] == ["5", "6", "7", "8", "9"]
    counts = np.array([[int(cell) for cell in row[1:]] for row in confusion[1:]])
    assert counts.sum() == len(rows) and np.trace(counts) == sum(int(row["correct"]) for row in rows)
    assert [entry["support"] for entry in metrics["per_class"]] == counts.sum(axis=1).tolist()
    for name in ("confusion.png", "mistakes.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # curves, confusion, mistakes: nothing to fetch
    assert not re.search(r'src="(?!data:)', html)
    assert f"{metrics['mean_class_accuracy']:.4f}" in html


def test_a_copied_run_directory_scores_its_own_model(cli, trained, tmp_path):
    """``cp -r A B``, then A trains again: B keeps scoring the model it holds, never A's."""
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    final = json.loads((copy / "result.json").read_text())["final_model"]
    assert not Path(final).is_absolute() and (copy / final).is_file()
    assert load_model(copy).weights == (copy / final).resolve()
    # As an older caffegen recorded it: the absolute path of the original's model.
    summary = json.loads((copy / "result.json").read_text())
    (copy / "result.json").write_text(json.dumps(dict(summary, final_model=str(trained / final))))
    assert load_model(copy).weights == (copy / final).resolve()
    result = cli("evaluate", copy, "-o", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_a_snapshot_folder_linked_to_scratch_space_is_the_run_directorys_own(trained, tmp_path):
    copy = copy_run(trained, tmp_path / "runs")
    scratch = tmp_path / "scratch"
    shutil.move(copy / "snapshots", scratch)
    (copy / "snapshots").symlink_to(scratch)
    final = json.loads((copy / "result.json").read_text())["final_model"]
    assert load_model(copy).weights == copy / final and (copy / final).resolve().parent == scratch


def test_a_recorded_model_outside_the_run_directory_is_not_used(trained, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    outside = tmp_path / "elsewhere.caffemodel"
    outside.write_bytes(b"")
    result = json.loads((copy / "result.json").read_text())
    (copy / "result.json").write_text(json.dumps(dict(result, final_model="../elsewhere.caffemodel")))
    with pytest.raises(CaffegenError, match="no trained model here yet"):
        load_model(copy)


def test_evaluate_on_class_folders_and_lists(cli, trained, images, tmp_path):
    data = tmp_path / "new"
    for name in ("6", "9"):
        (data / name).mkdir(parents=True)
        for path in sorted((images / name).iterdir())[:5]:
            (data / name / path.name).write_bytes(path.read_bytes())
    result = cli("evaluate", trained, "--data", data, "-o", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))
    assert len(rows) == 10 and {row["true_label"] for row in rows} == {"6", "9"}
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{path} 1\n" for path in sorted((data / "6").iterdir())))
    result = cli("evaluate", trained, "--list", listed, "-o", tmp_path / "eval2")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "eval2" / "metrics.json").read_text())["per_class"][1]["support"] == 5


# Class names that matplotlib's mathtext cannot parse, or would typeset, beside a plain one.
DOLLAR_NAMES = {"5": "$x_$", "6": "$\\frac{$", "7": "a$^$b", "8": "8", "9": "$$"}


def test_class_names_with_dollar_signs_are_drawn_as_written(cli, caffe, images, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    for digit, name in DOLLAR_NAMES.items():
        shutil.copytree(images / digit, data / name)
    prepared = cli("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                   "--data", data, "--freeze-upto", "conv2", "--epochs", 1, "-o", run)
    assert prepared.returncode == 0, prepared.stderr
    assert cli("launch", run).returncode == 0
    result = cli("evaluate", run)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((run / "eval" / "predictions.csv").open()))
    assert {row["true_label"] for row in rows} == set(DOLLAR_NAMES.values())
    assert any(row["correct"] == "0" for row in rows)  # so mistakes.png titles images with the names
    for name in ("confusion.png", "mistakes.png"):
        with Image.open(run / "eval" / name) as image:
            assert image.format == "PNG" and image.width > 300


def test_evaluate_bad_input(cli, trained, images, tmp_path):
    assert_one_line_error(cli("evaluate", trained), "exists", "--force")
    listed = tmp_path / "list.txt"
    first = sorted((images / "5").iterdir())[0]
    listed.write_text(f"{first} 7\n")
    assert_one_line_error(cli("evaluate", trained, "--list", listed, "-o", tmp_path / "e"), "list.txt:1",
                          "label '7'", "labels.txt")
    (tmp_path / "folders" / "cat").mkdir(parents=True)
    assert_one_line_error(cli("evaluate", trained, "--data", tmp_path / "folders", "-o", tmp_path / "e"), "cat",
                          "unknown")
    (tmp_path / "empty" / "5").mkdir(parents=True)
    assert_one_line_error(cli("evaluate", trained, "--data", tmp_path / "empty", "-o", tmp_path / "e"),
                          "no images")
    (tmp_path / "empty" / "5" / "notes.txt").write_text("not an image")
    assert_one_line_error(cli("evaluate", trained, "--data", tmp_path / "empty", "-o", tmp_path / "e"),
                          "notes.txt", "not an image")
    assert not (tmp_path / "e").exists()


def test_a_run_without_a_trained_model_names_launch(cli, images, tmp_path):
    run = tmp_path / "untrained"
    assert cli("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
               "--data", images, "-o", run).returncode == 0
    for command in (("evaluate", run), ("predict", run, images / "5"), ("export", run, "-o", tmp_path / "b")):
        assert_one_line_error(cli(*command), "no trained model", "caffegen launch")
    assert not (tmp_path / "b").exists()


def test_predict_table_json_csv_and_bad_files(cli, trained, images, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    source = sorted((images / "7").iterdir())[0]
    with Image.open(source) as image:
        image.save(folder / "seven.png")
        image.convert("RGB").resize((40, 30)).save(folder / "seven_rgb_40x30.jpg")
    (folder / "broken.png").write_bytes(b"not a png")
    table = cli("predict", trained, folder, tmp_path / "missing.png")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["image", "#1", "#2", "#3", "#4", "#5"] and len(lines) == 3
    assert "skipped" in table.stderr and "broken.png" in table.stderr and "missing.png" in table.stderr
    assert table.stderr.count("resizing every image") == 1
    predictions = json.loads(cli("predict", trained, folder / "seven.png", "--json", "--top-k", 2).stdout)
    top = predictions[0]["top"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    rows = list(csv.DictReader(cli("predict", trained, folder, "--csv").stdout.splitlines()))
    assert len(rows) == 2 and rows[0]["top1_label"] in "56789"
    # The same image as PNG and as a resized colour JPEG: the model says the same.
    assert rows[0]["top1_label"] == rows[1]["top1_label"]
    assert_one_line_error(cli("predict", trained, folder / "broken.png"), "no readable images")


def test_predict_agrees_with_evaluate(cli, trained, evaluated):
    out, _ = evaluated
    row = next(csv.DictReader((out / "predictions.csv").open()))
    predicted = json.loads(cli("predict", trained, row["path"], "--json").stdout)[0]["top"][0]
    assert predicted["class"] == row["top1_label"]
    assert predicted["probability"] == pytest.approx(float(row["top1_probability"]), rel=1e-5)


def test_export_folder_and_archive(cli, trained, evaluated, tmp_path):
    bundle = tmp_path / "bundle"
    result = cli("export", trained, "-o", bundle)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "deploy.prototxt", "info.json", "labels.txt",
                                                         "model.caffemodel", "preprocessing.json"]
    info = json.loads((bundle / "info.json").read_text())
    assert info["metrics"]["top1"] == json.loads((evaluated[0] / "metrics.json").read_text())["top1"]
    assert info["formats"] == ["caffe"] and sorted(info["sha256"]) == ["deploy.prototxt", "model.caffemodel"]
    assert info["sha256"]["model.caffemodel"] == hashlib.sha256((bundle / "model.caffemodel").read_bytes()).hexdigest()
    assert (bundle / "labels.txt").read_text().split() == ["5", "6", "7", "8", "9"]
    assert_one_line_error(cli("export", trained, "-o", bundle), "exists", "--force")
    archive = tmp_path / "model.tar.gz"
    assert cli("export", trained, "-o", archive).returncode == 0
    with tarfile.open(archive) as tar:
        assert "model/model.caffemodel" in tar.getnames()
    predictions = [json.loads(cli("predict", source, evaluated_image(evaluated), "--json").stdout)[0]
                   for source in (trained, bundle, archive)]
    assert predictions[0] == predictions[1] == predictions[2]


@pytest.mark.parametrize("formats, words", [("tflite", "tflite: choose from caffe"), (",", "none given: choose from")])
def test_export_refuses_a_format_it_does_not_write(cli, trained, tmp_path, formats, words):
    result = cli("export", trained, "-o", tmp_path / "bundle", "--format", formats)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("change, words", [
    ({"preprocessing": {"mean_file": "/etc/passwd"}}, "the bundle's mean file names '/etc/passwd', outside its own"),
    ({"preprocessing": {"mean_file": "../elsewhere.binaryproto"}}, "names '../elsewhere.binaryproto', outside"),
    ({"input_shape": [1, 3, 20000, 20000]}, "input_shape [1, 3, 20000, 20000] is not the deploy net's input"),
    ({"preprocessing": {"channel_order": "RGB"}}, "channel_order 'RGB' does not feed the net's 1 channels"),
    ({"preprocessing": {"scale": -1}}, "scale -1 is no positive number"),
    ({"preprocessing": {"mean_value": [1, 2, 3, 4]}}, "mean_value [1, 2, 3, 4] is not one number or one per channel"),
    ({"task": "detection"}, "task 'detection' is none of classification, segmentation"),
    ({"preprocessing": {"resize": 5}}, "resize 5 is not a height and a width"),
    ({"preprocessing": {"mean_value": 104}}, "mean_value 104 is not one number or one per channel"),
    ({"preprocessing": {"mean_file": 5}}, "mean_file 5 is no file name"),
], ids=["absolute mean file", "mean file outside", "input shape", "channels", "scale", "mean", "task", "resize type",
        "mean type", "mean file type"])
def test_a_bundle_reads_nothing_outside_itself_and_agrees_with_its_net(cli, trained, evaluated, tmp_path, change,
                                                                        words):
    bundle = tmp_path / "bundle"
    assert cli("export", trained, "-o", bundle).returncode == 0
    described = json.loads((bundle / "preprocessing.json").read_text())
    for key, value in change.items():
        described[key] = dict(described[key], **value) if isinstance(value, dict) else value
    (bundle / "preprocessing.json").write_text(json.dumps(described))
    result = cli("predict", bundle, evaluated_image(evaluated))
    assert_one_line_error(result, words)
    assert "root:" not in result.stdout + result.stderr


def test_a_run_reads_no_mean_file_outside_itself(cli, trained, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocessing"]["mean_file"] = "/etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(cli("export", copy, "-o", tmp_path / "bundle"),
                          "the manifest's mean file names '/etc/passwd', outside its own folder")
    assert not (tmp_path / "bundle").exists()


def evaluated_image(evaluated):
    return next(csv.DictReader((evaluated[0] / "predictions.csv").open()))["path"]


def test_export_check_opencv_on_a_batchnorm_net(cli, trained, tmp_path):
    pytest.importorskip("cv2")
    assert any(layer.type == "BatchNorm" for layer in read_net(trained / "deploy.prototxt").net.layer)
    result = cli("export", trained, "-o", tmp_path / "bundle", "--check-opencv")
    assert result.returncode == 0, result.stderr
    found = re.search(r"agrees with Caffe on (\d+) images: max \|Δ probability\| ([0-9.e+-]+)", result.stdout)
    assert found and int(found.group(1)) == 50 and float(found.group(2)) < 1e-4, result.stdout


def assert_readme_code_gives_caffes_class(cli, bundle, evaluated, start, model=None):
    """The README's Python block that begins with ``start``, run on a validation image, prints the class Caffe gives
    with ``model`` (default: the bundle)."""
    code = re.search(rf"```python\n({re.escape(start)}.*?)```", (bundle / "README.md").read_text(), re.S).group(1)
    image = evaluated_image(evaluated)
    expected = json.loads(cli("predict", model or bundle, image, "--json").stdout)[0]["top"][0]["class"]
    done = subprocess.run([sys.executable, "-c", code.replace("image.jpg", image)], cwd=bundle, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_the_bundle_readmes_opencv_code_gives_caffes_probabilities(cli, trained, evaluated, tmp_path):
    pytest.importorskip("cv2")
    bundle = tmp_path / "bundle"
    assert cli("export", trained, "-o", bundle).returncode == 0
    assert_readme_code_gives_caffes_class(cli, bundle, evaluated, "import cv2\nimport numpy as np\n\nnet = ")


def test_an_onnx_bundle_computes_what_caffe_computes_and_its_readme_code_runs(cli, trained, evaluated, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("cv2")
    bundle = tmp_path / "bundle"
    result = cli("export", trained, "-o", bundle, "--format", "caffe,onnx")
    assert result.returncode == 0, result.stderr
    assert re.search(r"wrote model\.onnx \(ONNX opset \d+, dynamic batch\): ONNX Runtime agrees with Caffe",
                     result.stderr)
    info = json.loads((bundle / "info.json").read_text())
    assert info["formats"] == ["caffe", "onnx"] and "model.onnx" in info["sha256"]
    assert_readme_code_gives_caffes_class(cli, bundle, evaluated,
                                          "import cv2\nimport numpy as np\nimport onnxruntime\n")
    only = tmp_path / "onnx-only"
    assert cli("export", trained, "-o", only, "--format", "onnx").returncode == 0
    assert sorted(path.name for path in only.iterdir()) == ["README.md", "info.json", "labels.txt", "model.onnx",
                                                            "preprocessing.json"]
    assert "readNetFromCaffe" not in (only / "README.md").read_text()
    refused = cli("export", trained, "-o", tmp_path / "other", "--format", "onnx", "--check-opencv")
    assert refused.returncode == 2 and "--check-opencv checks the caffe format" in refused.stderr


def test_export_fold_bn_ships_the_folded_model_that_caffe_checked(cli, trained, evaluated, tmp_path):
    pytest.importorskip("onnxruntime")
    batch_norms = [layer.name for layer in read_net(trained / "deploy.prototxt").net.layer if layer.type == "BatchNorm"]
    assert batch_norms
    bundle = tmp_path / "bundle"
    result = cli("export", trained, "-o", bundle, "--format", "caffe,onnx", "--fold-bn")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^folded {len(batch_norms)} BatchNorm: real Caffe runs the folded net as the original, "
                     r"largest difference 'prob' max \|Δ\| [0-9.e+-]+ \(probabilities", result.stderr, re.M)
    assert re.search(r"^wrote model\.onnx .*: ONNX Runtime agrees with Caffe", result.stderr, re.M)
    info = json.loads((bundle / "info.json").read_text())
    assert info["folded_batchnorm"] == batch_norms and "model.onnx" in info["sha256"]
    folded = read_net(bundle / "deploy.prototxt").net
    assert not any(layer.type in ("BatchNorm", "Scale") for layer in folded.layer)
    assert folded.layer[0].input_param.shape[0].dim[0] == 1
    images = [row["path"] for row in csv.DictReader((evaluated[0] / "predictions.csv").open())][:20]
    found, expected = (json.loads(cli("predict", model, *images, "--json").stdout) for model in (bundle, trained))
    assert max(abs(a["probability"] - b["probability"]) for x, y in zip(found, expected)
               for a, b in zip(x["top"], y["top"])) <= 1e-4
    unfolded = tmp_path / "unfolded"
    assert cli("export", trained, "-o", unfolded).returncode == 0
    assert "folded_batchnorm" not in json.loads((unfolded / "info.json").read_text())


def test_the_bundle_readmes_openvino_code_gives_caffes_class(cli, trained, evaluated, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    pytest.importorskip("cv2")
    bundle = tmp_path / "bundle"
    assert cli("export", trained, "-o", bundle, "--format", "onnx").returncode == 0
    assert_readme_code_gives_caffes_class(cli, bundle, evaluated, "import cv2\nimport numpy as np\nimport openvino\n",
                                          trained)


def test_evaluate_predict_export_on_a_cached_run(cli, caffe, images, tmp_path):
    pytest.importorskip("cv2")
    run = tmp_path / "cached"
    assert cli("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
               "--data", images, "--freeze-upto", "conv2", "--epochs", 2, "--cache-features", "-o", run).returncode == 0
    assert cli("launch", run).returncode == 0
    result = cli("evaluate", run)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["top1"] > 0.5  # chance is 0.2: the merged final.caffemodel carries the trained head
    assert json.loads((run / "result.json").read_text())["final_model"].endswith("final.caffemodel")
    image = next(csv.DictReader((run / "eval" / "predictions.csv").open()))["path"]
    assert json.loads(cli("predict", run, image, "--json").stdout)[0]["top"][0]["class"] in "56789"
    exported = cli("export", run, "-o", tmp_path / "bundle", "--check-opencv")
    assert exported.returncode == 0 and "agrees with Caffe" in exported.stdout, exported.stderr


# --- bundle archives: bounded, and removed however the command ends ------------------------------------


class _Reader:
    """``size`` bytes made by ``make(n)``, read as a file is, without holding them all."""

    def __init__(self, size, make=bytes):
        self.left, self.make = size, make

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.make(n)


def write_archive(path, members, compresslevel=9):
    """A .tar.gz of ``members``: {name: (size, make)}."""
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tar:
        for name, (size, make) in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, _Reader(size, make))
    return path


@pytest.fixture
def temporary(tmp_path, monkeypatch):
    """An empty $TMPDIR for the command (in this process and in those it starts)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


class TestBundleArchives:
    def test_an_archive_that_would_unpack_far_larger_is_refused_before_unpacking(self, cli, tmp_path, temporary):
        archive = write_archive(tmp_path / "bomb.tar.gz", {"model/model.caffemodel": (100 << 20, bytes)})
        assert archive.stat().st_size < 1 << 20
        result = cli("predict", archive, tmp_path / "image.png")
        assert_one_line_error(result, str(archive), "would unpack to more than 64 MiB (4 times its own size, 64 MiB "
                              "at least)", "unpack it yourself if you trust it, and give the folder")
        assert list(temporary.iterdir()) == []

    def test_an_archive_of_too_many_files_is_refused(self, cli, tmp_path, temporary):
        archive = write_archive(tmp_path / "many.tar.gz", {f"model/{i}.txt": (1, bytes) for i in range(65)})
        assert_one_line_error(cli("evaluate", archive, "--data", tmp_path), str(archive),
                              "holds more than 64 files and folders")
        assert list(temporary.iterdir()) == []

    def test_sigterm_while_unpacking_exits_cleanly_and_removes_the_temporary_folder(self, tmp_path, temporary):
        size = 128 << 20  # random bytes, stored: as incompressible as weights, and long enough to unpack to stop midway
        archive = write_archive(tmp_path / "big.tar.gz", {"big.bin": (size, os.urandom)}, compresslevel=0)
        process = subprocess.Popen([sys.executable, "-m", "caffegen", "predict", archive, tmp_path / "image.png"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: list(temporary.glob("caffegen-bundle-*/big.bin")) or process.poll() is not None,
                     "predict to start unpacking", every=0.001)
            process.send_signal(signal.SIGSTOP)
            unpacked = list(temporary.glob("caffegen-bundle-*/big.bin"))
            assert process.poll() is None and unpacked and unpacked[0].stat().st_size < size, "unpacked before stopped"
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        assert (process.returncode, stderr) == (143, "caffegen: terminated\n")
        assert list(temporary.iterdir()) == []
