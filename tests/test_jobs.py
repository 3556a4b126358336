"""Preparing jobs without running Caffe: data, solver arithmetic, wiring, scripts, the run directory."""

import json
import re

import pytest
from conftest import DIGITS, ZOO, assert_one_line_error
from PIL import Image

from caffegen.errors import CaffegenError
from caffegen.io.lists import read_list
from caffegen.io.prototxt import read_net, read_solver
from caffegen.job.dataset import read_lists, scan_class_folders
from caffegen.job.manifest import Schedule
from caffegen.job.prepare import JobOptions, prepare
from caffegen.job.scripts import render_train_bat, render_train_sh
from caffegen.job.solver import (
    check_solver_text,
    epoch_schedule,
    exact_batch,
    parse_overrides,
    render_solver,
    solver_fields,
)
from caffegen.net.wiring import DataSettings, deploy_net, wire_image_data


def write_images(folder, counts, size=(28, 28)):
    for name, count in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("L", size, color=i * 7 % 255).save(folder / name / f"img {i}.png")
    return folder


class TestSolverArithmetic:
    @pytest.mark.parametrize("train, val, batch, val_batch, iter_size, gpus, per_epoch, test_iter", [
        (1000, 200, 32, 50, 1, 1, 32, 4),
        (1000, 201, 32, 67, 1, 1, 32, 3),
        (1000, 200, 32, 50, 2, 1, 16, 4),
        (1000, 200, 32, 50, 1, 4, 8, 4),
        (1000, 200, 10, 50, 3, 2, 17, 4),
        (7, 3, 32, 3, 1, 1, 1, 1),
    ])
    def test_epochs_to_iterations(self, train, val, batch, val_batch, iter_size, gpus, per_epoch, test_iter):
        schedule = epoch_schedule(train, val, batch, val_batch, epochs=10, iter_size=iter_size, n_gpus=gpus)
        assert schedule.iters_per_epoch == per_epoch
        assert schedule.max_iter == 10 * per_epoch
        assert schedule.test_iter == test_iter
        solver = check_solver_text(render_solver(solver_fields(schedule, iter_size=iter_size), schedule))
        assert (solver.max_iter, solver.test_iter[0], solver.test_interval, solver.snapshot) == \
            (10 * per_epoch, test_iter, per_epoch, per_epoch)
        assert solver.iter_size == iter_size

    def test_overrides_replace_and_extend(self):
        schedule = epoch_schedule(100, 10, 10, 10, 2)
        text = render_solver(solver_fields(schedule), schedule,
                             parse_overrides(["base_lr=0.01", "lr_policy=multistep", "stepvalue=5", "stepvalue=9"]))
        solver = check_solver_text(text)
        assert solver.base_lr == pytest.approx(0.01)
        assert list(solver.stepvalue) == [5, 9]
        assert text.count("base_lr:") == 1

    @pytest.mark.parametrize("setting, words", [
        ("base_lr=fast", "base_lr=fast"), ("baselr=1", "did you mean 'base_lr'"),
        ("solver_mode=TPU", "TPU"), ("nothing", "key=value")])
    def test_bad_overrides(self, setting, words):
        with pytest.raises(CaffegenError, match=words):
            parse_overrides([setting])


def test_prepare_says_what_a_python_layer_needs(tmp_path):
    net = tmp_path / "python.prototxt"
    python = ('layer { name: "py" type: "Python" bottom: "fc1" top: "fc1" python_param { module: "my_layer" '
              'layer: "MyLayer" } }\nlayer { name: "relu3"')
    net.write_text((DIGITS / "train_val.prototxt").read_text().replace('layer { name: "relu3"', python, 1))
    write_images(tmp_path / "images", {"cat": 5, "dog": 5})
    job = prepare(JobOptions(net=net, weights=DIGITS / "digits.caffemodel", data=tmp_path / "images",
                             freeze_upto="conv2", epochs=1), tmp_path / "run")
    assert any(note.startswith("layer 'py' is a Python layer (module 'my_layer')") and "PYTHONPATH" in note
               for note in job.notes), job.notes


class TestExactValidation:
    """test_iter × the TEST batch is the validation set: Caffe wraps its TEST data around, counting images twice."""

    @pytest.mark.parametrize("images, requested, batch", [(200, 50, 50), (201, 50, 3), (179, 50, 1), (40, 50, 40),
                                                          (1000, 64, 50), (7, 1, 1)])
    def test_the_batch_is_the_largest_that_divides_the_set(self, images, requested, batch):
        assert exact_batch(images, requested) == batch
        assert epoch_schedule(1000, images, 32, batch, epochs=1).test_iter * batch == images

    def test_a_batch_that_does_not_divide_the_set_is_refused(self):
        with pytest.raises(CaffegenError, match="a validation batch of 50 does not divide the 201 validation images: "
                                                "Caffe would count some twice; use 3"):
            epoch_schedule(1000, 201, 32, 50, epochs=1)

    def test_prepare_gives_the_test_net_a_batch_that_divides_the_validation_set(self, tmp_path):
        write_images(tmp_path / "images", {"cat": 11, "dog": 11})  # 2 × 3 validation images at --val-fraction 0.25
        job = prepare(JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel",
                                 data=tmp_path / "images", val_fraction=0.25, freeze_upto="conv2", epochs=1),
                      tmp_path / "run")
        val = len((tmp_path / "run" / "val.txt").read_text().splitlines())
        test_layer = next(layer for layer in read_net(tmp_path / "run" / "train_val.prototxt").net.layer
                          if layer.type == "ImageData" and layer.include[0].phase == 1)
        solver = read_solver(tmp_path / "run" / "solver.prototxt")
        assert solver.test_iter[0] * test_layer.image_data_param.batch_size == val == 6
        assert test_layer.image_data_param.batch_size == 6
        assert "validation batch 6 instead of 50: 1 iteration of 6 images score each of the 6 validation images once" \
            in job.notes


class TestData:
    @pytest.mark.parametrize("name", ["cat\u2028dog", "cat\rdog", "cat\x85dog", "cat\ndog"])
    def test_a_class_or_image_name_holding_a_line_break_is_refused_in_one_line(self, tmp_path, name):
        write_images(tmp_path / "classes", {name: 2, "eel": 2})
        with pytest.raises(CaffegenError, match="holds a line break .* cannot carry: rename it") as refused:
            scan_class_folders(tmp_path / "classes")
        assert "\n" not in str(refused.value) and len(str(refused.value).splitlines()) == 1
        write_images(tmp_path / "images", {"cat": 2, "eel": 2})
        (tmp_path / "images" / "cat" / "img 0.png").rename(tmp_path / "images" / "cat" / f"{name}.png")
        with pytest.raises(CaffegenError, match=r"are not usable images: .* a line break \(U\+[0-9A-F]{4}\) in its path"):
            scan_class_folders(tmp_path / "images")

    def test_a_list_is_split_as_caffe_splits_it_and_other_line_breaks_are_refused(self, tmp_path):
        write_images(tmp_path, {"a": 2})
        listed = tmp_path / "train.txt"
        listed.write_text("a/img 0.png 0\r\na/img 1.png 1\r\n")
        assert [(line.path, line.label) for line in read_list(listed)] == [("a/img 0.png", "0"), ("a/img 1.png", "1")]
        listed.write_text("a/img 0.png 0\na/im\u2028g 1.png 1\n")
        with pytest.raises(CaffegenError, match=r"train.txt:2: the line .* holds a line break \(U\+2028\)"):
            read_list(listed)

    def test_class_folders_split_stratified_and_stable(self, tmp_path):
        write_images(tmp_path, {"cat": 10, "dog": 5, "eel": 3})
        first = scan_class_folders(tmp_path, val_fraction=0.2, seed=3)
        again = scan_class_folders(tmp_path, val_fraction=0.2, seed=3)
        assert first == again
        assert first.classes == ["cat", "dog", "eel"]
        assert sorted(label for _, label in first.val) == [0, 0, 1, 2]
        assert len(first.train) + len(first.val) == 18
        assert scan_class_folders(tmp_path, val_fraction=0.2, seed=4).train != first.train

    def test_paths_with_spaces_keep_their_label_last(self, tmp_path):
        dataset = scan_class_folders(write_images(tmp_path / "my data", {"a b": 2, "c": 2}))
        line = dataset.list_text("train").splitlines()[0]
        path, _, label = line.rpartition(" ")
        assert " " in path and label in ("0", "1")

    @pytest.mark.parametrize("counts, words", [({"only": 3}, "at least 2"), ({"a": 3, "b": 0}, "without images"),
                                               ({"a": 3, "b": 1}, "single image")])
    def test_bad_class_layouts(self, tmp_path, counts, words):
        write_images(tmp_path, counts)
        with pytest.raises(CaffegenError, match=words):
            scan_class_folders(tmp_path)

    def test_non_images_are_reported_or_skipped(self, tmp_path):
        write_images(tmp_path, {"a": 3, "b": 3})
        (tmp_path / "a" / "notes.txt").write_text("hello")
        (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
        (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
        with pytest.raises(CaffegenError, match=r"2 file\(s\) are not usable images.*--skip-bad"):
            scan_class_folders(tmp_path)
        warnings = []
        dataset = scan_class_folders(tmp_path, skip_bad=True, warn=warnings.append)
        assert len(dataset.train) + len(dataset.val) == 6 and "left out 2" in warnings[0]

    def test_lists_are_validated(self, tmp_path):
        write_images(tmp_path, {"a": 2})
        good = tmp_path / "train.txt"
        good.write_text("a/img 0.png 0\na/img 1.png 2\na/img 1.png 1\n")
        val = tmp_path / "val.txt"
        val.write_text("a/img 0.png 1\n")
        dataset = read_lists(good, val)
        assert dataset.classes == ["0", "1", "2"] and dataset.train[0][0].is_absolute()
        val.write_text("a/img 0.png 3\n")
        with pytest.raises(CaffegenError, match=f"val.txt: class 3 is in the validation list but not in the training "
                                                f"list {good}: the classifier would never learn it"):
            read_lists(good, val)
        gap = tmp_path / "gap.txt"
        gap.write_text("a/img 0.png 0\na/img 1.png 2\n")
        with pytest.raises(CaffegenError, match="0…2 without gaps; missing: 1$"):
            read_lists(gap, gap)
        val.write_text("a/missing.png 1\n")
        with pytest.raises(CaffegenError, match=r"val.txt:1: image not found"):
            read_lists(good, val)
        val.write_text("a/img 0.png one\n")
        with pytest.raises(CaffegenError, match="expected 'path label'"):
            read_lists(good, val)


class TestWiring:
    @pytest.mark.zoo
    def test_train_val_gets_image_data_with_the_base_transforms(self):
        net = read_net(ZOO / "bvlc_googlenet/train_val.prototxt").net
        assert wire_image_data(net, DataSettings(batch_size=8)) == {"TRAIN": 8, "TEST": 50}
        train, test = [layer for layer in net.layer if layer.type == "ImageData"]
        assert (train.image_data_param.source, test.image_data_param.source) == ("train.txt", "val.txt")
        assert train.transform_param.mirror and not test.transform_param.mirror
        assert train.transform_param.crop_size == 224 and list(test.transform_param.mean_value) == [104, 117, 123]
        assert train.image_data_param.shuffle and not test.image_data_param.shuffle
        assert (train.image_data_param.new_height, train.image_data_param.new_width) == (256, 256)

    @pytest.mark.zoo
    def test_deploy_keeps_the_main_classifier_only(self):
        net = read_net(ZOO / "bvlc_googlenet/train_val.prototxt").net
        wire_image_data(net, DataSettings())
        deploy = deploy_net(net, 3, 224, 224)
        names = [layer.name for layer in deploy.layer]
        assert names[0] == "data" and deploy.layer[0].type == "Input"
        assert names[-2:] == ["loss3/classifier", "prob"]
        assert not any(name.startswith(("loss1", "loss2")) for name in names)
        assert not any(layer.include or "label" in layer.bottom for layer in deploy.layer)

    @pytest.mark.zoo
    def test_deploy_only_net_gains_data_loss_and_accuracy(self):
        net = read_net(ZOO / "resnet/ResNet-50-deploy.prototxt").net
        wire_image_data(net, DataSettings(mean_value=(104, 117, 123)))
        types = [layer.type for layer in net.layer]
        assert types[:2] == ["ImageData", "ImageData"] and types[-2:] == ["SoftmaxWithLoss", "Accuracy"]
        assert "Softmax" not in types and not net.input
        assert net.layer[0].transform_param.crop_size == 224


class TestScripts:
    def test_bat_is_crlf_with_cmd_quoting(self):
        weights = r"C:\my models (v2)\50% & more^\base.caffemodel"
        text = render_train_bat(weights, "0", 5)
        assert "\r\n" in text and "\n" not in text.replace("\r\n", "")
        assert r'--weights="C:\my models (v2)\50%% & more^\base.caffemodel"' in text
        assert '--solver="solver.prototxt"' in text and '--gpu="0"' in text
        assert 'if not defined CAFFE set "CAFFE=caffe.exe"' in text and text.rstrip().endswith("pause")
        assert text.index("chcp 65001 >nul") < text.index("set \"CAFFE")
        assert ">> train.log 2>&1" in text

    def test_bat_without_gpu_and_plain_path(self):
        text = render_train_bat("/w/base.caffemodel", None, 2)
        assert '--weights="/w/base.caffemodel"' in text and "--gpu" not in text

    def test_sh_quotes_for_posix(self):
        text = render_train_sh("/opt/my caffe/caffe", "/w/it's here.caffemodel", None, 2)
        assert "'/w/it'\"'\"'s here.caffemodel'" in text
        assert "caffe_here='/opt/my caffe/caffe'\nCAFFE=\"${CAFFE:-$caffe_here}\"" in text and "\r" not in text


class TestPrepare:
    def options(self, data, **extra):
        settings = dict(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=data,
                        freeze_upto="conv2", epochs=2)
        return JobOptions(**{**settings, **extra})

    def test_run_directory(self, tmp_path):
        data = write_images(tmp_path / "images", {"x": 6, "y": 4}, size=(28, 28))
        job = prepare(self.options(data, copy_data=True), tmp_path / "run")
        run = tmp_path / "run"
        assert sorted(p.name for p in run.iterdir()) == [
            "base.caffemodel", "data", "deploy.prototxt", "labels.txt", "manifest.json", "snapshots",
            "solver.prototxt", "train.bat", "train.sh", "train.txt", "train_val.prototxt", "val.txt"]
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest == job.manifest.to_record() and manifest["classes"] == ["x", "y"]
        assert manifest["command"][:4] == ["caffe", "train", "-solver", "solver.prototxt"]
        assert len(manifest["inputs"]["weights"]["sha256"]) == 64
        for line in (run / "train.txt").read_text().splitlines() + (run / "val.txt").read_text().splitlines():
            path, _, _ = line.rpartition(" ")
            assert (run / path).is_file()
        net = read_net(run / "train_val.prototxt").net
        head = next(layer for layer in net.layer if layer.name == "fc2_ft")
        assert head.inner_product_param.num_output == 2
        conv2 = next(layer for layer in net.layer if layer.name == "conv2")
        assert all(spec.lr_mult == 0 for spec in conv2.param)
        deploy = read_net(run / "deploy.prototxt").net
        assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 1, 28, 28]
        solver = read_solver(run / "solver.prototxt")
        assert solver.max_iter == 2 * manifest["schedule"]["iters_per_epoch"] and solver.solver_mode == solver.CPU

    @pytest.mark.parametrize("extra, words", [
        ({"freeze_from": "fc1"}, "give --freeze-upto or --freeze-from, not both"),
        ({"cache_batch": 8}, "--cache-batch sets the mini-batch of the feature extraction"),
        ({"encoded": True}, "--encoded needs --lmdb"),
        ({"lmdb": True, "cache_features": True}, "--cache-features reads each image once"),
        ({"task": "detection"}, "task 'detection' is none of classification, segmentation"),
    ])
    def test_options_that_do_not_go_together_are_one_line_for_python_callers_too(self, tmp_path, extra, words):
        data = write_images(tmp_path / "images", {"x": 6, "y": 4}, size=(28, 28))
        with pytest.raises(CaffegenError, match=re.escape(words)):
            prepare(self.options(data, **extra), tmp_path / "run")
        assert not (tmp_path / "run").exists()

    def test_freeze_from_names_the_classifier_of_the_base_net(self, tmp_path):
        data = write_images(tmp_path / "images", {"x": 3, "y": 3})
        prepare(self.options(data, freeze_upto=None, freeze_from="fc2"), tmp_path / "run")
        net = read_net(tmp_path / "run" / "train_val.prototxt").net
        rates = {layer.name: [spec.lr_mult for spec in layer.param] for layer in net.layer}
        assert rates["fc1"] == [0, 0] and rates["conv1"] == [0, 0]
        assert rates["fc2_ft"] == [10, 20]

    def test_existing_run_directory_needs_force(self, tmp_path):
        data = write_images(tmp_path / "images", {"x": 3, "y": 3})
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "keep.txt").write_text("mine")
        with pytest.raises(CaffegenError, match="--force"):
            prepare(self.options(data), tmp_path / "run")
        assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
        prepare(self.options(data), tmp_path / "run", force=True)
        assert not (tmp_path / "run" / "keep.txt").exists()

    def test_failure_leaves_nothing_behind(self, tmp_path):
        data = write_images(tmp_path / "images", {"x": 3, "y": 3})
        with pytest.raises(CaffegenError, match="not found"):
            prepare(self.options(data, freeze_upto="conv9"), tmp_path / "run")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]

    @pytest.mark.zoo
    def test_base_solver_lr_is_divided_by_ten(self, tmp_path):
        data = write_images(tmp_path / "images", {"x": 3, "y": 3})
        prepare(self.options(data, base_solver=ZOO / "bvlc_alexnet/solver.prototxt"), tmp_path / "run")
        assert read_solver(tmp_path / "run" / "solver.prototxt").base_lr == pytest.approx(0.001)


def unrelated_weights(tmp_path):
    """A caffemodel that names none of the net's layers: every layer starts from its fillers."""
    from caffegen.io.schema import BVLC
    path = tmp_path / "other.caffemodel"
    net = BVLC.NetParameter(name="other")
    net.layer.add(name="elsewhere", type="InnerProduct").blobs.add().shape.dim.extend([2, 2])
    path.write_bytes(net.SerializeToString())
    return path


def test_weights_that_name_none_of_the_layers_stop_prepare_unless_forced(cli, tmp_path):
    """The one line that matters comes first, once, instead of after a warning per frozen layer."""
    write_images(tmp_path / "images", {"cat": 5, "dog": 5})
    weights = unrelated_weights(tmp_path)
    args = ["prepare", "--gpu", "cpu", "--net", DIGITS / "train_val.prototxt", "--weights", weights,
            "--data", tmp_path / "images", "--freeze-upto", "conv2"]
    refused = cli(*args, "-o", tmp_path / "run")
    assert_one_line_error(refused, "other.caffemodel: names none of the net's layers", "are these the right weights?",
                          "--force")
    assert not (tmp_path / "run").exists()
    forced = cli(*args, "--force", "-o", tmp_path / "run")
    assert forced.returncode == 0, forced.stderr
    about_the_weights = [line for line in forced.stderr.splitlines() if str(weights) in line]
    assert len(about_the_weights) == 1 and "names none of the net's layers" in about_the_weights[0]
    assert "(6 of them frozen)" in about_the_weights[0]


def test_snapshots_are_kept_inside_the_run_directory(tmp_path):
    write_images(tmp_path / "images", {"cat": 5, "dog": 5})
    options = JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel",
                         data=tmp_path / "images", solver_set=("snapshot_prefix=/scratch/ft",))
    with pytest.raises(CaffegenError, match="snapshot_prefix '/scratch/ft' leaves the run directory"):
        prepare(options, tmp_path / "run")
    assert not (tmp_path / "run").exists()


DUMMY_NET = """name: "dummy"
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TRAIN }
  dummy_data_param { shape { dim: 4 dim: 1 dim: 28 dim: 28 } shape { dim: 4 } } }
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TEST }
  dummy_data_param { shape { dim: 4 dim: 1 dim: 28 dim: 28 } shape { dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_a_kept_data_layer_without_a_batch_size_leaves_the_validation_figure_unverified(tmp_path):
    (tmp_path / "net.prototxt").write_text(DUMMY_NET)
    job = prepare(JobOptions(net=tmp_path / "net.prototxt", weights=DIGITS / "digits.caffemodel",
                             keep_data_layers=True, num_classes=3, train_images=40, val_images=10, epochs=1,
                             data_settings=DataSettings(resize=(28, 28))), tmp_path / "run", force=True)
    assert any(note.startswith("the TEST data layer sets no batch size of its own: unverified") for note in job.notes)


class TestKeptDataLayers:
    @pytest.mark.zoo
    def test_lmdb_data_layers_stay_and_counts_drive_the_solver(self, tmp_path):
        options = JobOptions(net=ZOO / "bvlc_reference_caffenet/train_val.prototxt", weights=unrelated_weights(tmp_path),
                             keep_data_layers=True, num_classes=7, train_images=2560, val_images=500,
                             freeze_upto="conv5", epochs=2, data_settings=DataSettings(mean_value=(104, 117, 123)))
        job = prepare(options, tmp_path / "run", force=True)
        net = read_net(tmp_path / "run" / "train_val.prototxt").net
        data = [layer for layer in net.layer if layer.type == "Data"]
        assert [layer.data_param.source for layer in data] == ["examples/imagenet/ilsvrc12_train_lmdb",
                                                               "examples/imagenet/ilsvrc12_val_lmdb"]
        assert job.manifest.schedule == Schedule(epochs=2, iters_per_epoch=10, max_iter=20, test_iter=10)
        assert not (tmp_path / "run" / "train.txt").exists()
        assert all(list(layer.transform_param.mean_value) == [104, 117, 123] and not layer.transform_param.mean_file
                   for layer in data)
        assert (tmp_path / "run" / "labels.txt").read_text().split() == [str(i) for i in range(7)]
        assert any("names none of the net's layers" in note for note in job.notes)
        deploy = read_net(tmp_path / "run" / "deploy.prototxt").net
        assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 3, 227, 227]

    @pytest.mark.zoo
    def test_counts_are_required(self, tmp_path):
        options = JobOptions(net=ZOO / "bvlc_reference_caffenet/train_val.prototxt", weights=unrelated_weights(tmp_path),
                             keep_data_layers=True, num_classes=7)
        with pytest.raises(CaffegenError, match="--train-images"):
            prepare(options, tmp_path / "run")


class TestStrategyAuto:
    def options(self, data, **extra):
        settings = dict(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=data,
                        strategy="auto", similarity="high")
        return JobOptions(**{**settings, **extra})

    def test_small_similar_dataset_trains_the_classifier_only(self, tmp_path):
        data = write_images(tmp_path / "images", {"x": 6, "y": 6}, size=(28, 28))
        job = prepare(self.options(data), tmp_path / "run")
        assert job.notes[0].startswith("strategy: case 1")
        net = read_net(tmp_path / "run" / "train_val.prototxt").net
        learning = [layer.name for layer in net.layer if any(spec.lr_mult for spec in layer.param)]
        assert learning == ["fc2_ft"]
        assert job.manifest.freeze.upto == "fc1" and job.manifest.schedule.epochs == 20

    def test_what_the_user_gives_wins(self, tmp_path):
        data = write_images(tmp_path / "images", {"x": 6, "y": 6}, size=(28, 28))
        job = prepare(self.options(data, freeze_upto="conv1", epochs=3, head_lr_mult=2), tmp_path / "run")
        assert job.manifest.freeze.upto == "conv1" and job.manifest.schedule.epochs == 3
        net = read_net(tmp_path / "run" / "train_val.prototxt").net
        assert [spec.lr_mult for spec in net.layer[-3].param] == [2, 4]

    def test_similarity_is_required(self, tmp_path):
        data = write_images(tmp_path / "images", {"x": 3, "y": 3})
        with pytest.raises(CaffegenError, match="--similarity"):
            prepare(self.options(data, similarity=None), tmp_path / "run")


def test_prepare_refuses_weights_caffe_would_abort_on(tmp_path):
    data = write_images(tmp_path / "images", {"x": 3, "y": 3}, size=(40, 40))
    options = JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=data)
    with pytest.raises(CaffegenError, match=r"layer 'fc1'.*64×3200 differs from the weights' 64×1568"):
        prepare(options, tmp_path / "run")
    assert not (tmp_path / "run").exists()
