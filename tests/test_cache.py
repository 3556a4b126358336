"""Cached trunk features with real Caffe: the refusals, the cache's size, and cached vs uncached results."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from caffe_runs import run_caffe
from conftest import DIGITS, assert_one_line_error

from caffegen.defaults import CACHE_BATCH
from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_caffemodel, write_caffemodel
from caffegen.io.prototxt import read_net, to_text
from caffegen.io.schema import BVLC
from caffegen.job.cacheplan import check_cacheable, plan_cache
from caffegen.job.prepare import JobOptions, prepare
from caffegen.job.rundir import RunDir
from caffegen.net.netview import TEST, NetView
from caffegen.net.wiring import DataSettings
from caffegen.reporting import PlainReporter
from caffegen.run.cache import FEATURES, FINAL_MODEL, HEAD_NET, run_cached, write_trimmed_weights
from caffegen.run.launch import launch
from caffegen.run.target import Target

BASE_NET = (DIGITS / "train_val.prototxt").read_text()
TRUNK_BLOB = "pool2"
HDF5_HEADER = 2560  # what an HDF5 file holds besides its two datasets (2 KiB)
CHUNKING = 0.01  # chunked datasets: the chunk index, and a few rows of padding in the last chunk


def prepare_run(images, run_dir, net_text=BASE_NET, weights=DIGITS / "digits.caffemodel", upto="conv2", **options):
    """A run directory written by caffegen prepare for the digits base net (given as text)."""
    net = run_dir.parent / f"{run_dir.name}_base.prototxt"
    net.write_text(net_text)
    prepare(JobOptions(net=net, weights=weights, data=images, freeze_upto=upto, epochs=3, **options), run_dir)
    return run_dir


def edit_layer(text, name, old, new):
    """``text`` with ``old`` replaced by ``new`` inside the first layer called ``name``."""
    start = text.index(f'name: "{name}"')
    end = text.index("layer {", start)
    assert old in text[start:end]
    return text[:start] + text[start:end].replace(old, new, 1) + text[end:]


def add_after(text, name, layer_text):
    """``text`` with ``layer_text`` inserted right after the layer called ``name``."""
    start = text.index(f'name: "{name}"')
    end = text.index("layer {", start)
    return text[:end] + layer_text + "\n" + text[end:]


def read_h5(path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "r") as stored:
        return np.array(stored["data"]), np.array(stored["label"]).ravel()


def cached_features(run_dir, subset):
    """The cached (features, labels) of ``subset``, its chunks in list order."""
    files = (run_dir / FEATURES / f"{subset}.txt").read_text().split()
    parts = [read_h5(run_dir / name) for name in files]
    return np.concatenate([data for data, _ in parts]), np.concatenate([labels for _, labels in parts])


def val_count(run_dir):
    return len((run_dir / "val.txt").read_text().splitlines())


def run_net(caffe, net, weights, workdir, cwd):
    """``caffe test`` of ``net`` (one batch) writing its HDF5Output to workdir/out.h5; return its datasets."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "net.prototxt").write_text(to_text(net))
    code, log = run_caffe(caffe, "test", "-model", workdir / "net.prototxt", "-weights", weights,
                          "-iterations", "1", cwd=cwd)
    assert code == 0, log[-3000:]
    return read_h5(workdir / "out.h5")


def add_output(net, data, label, workdir):
    layer = net.layer.add(name="out", type="HDF5Output", bottom=[data, label])
    layer.hdf5_output_param.file_name = str(workdir / "out.h5")


def phase_layers(net):
    """The TEST-phase layers of ``net`` without their phase rules."""
    layers = []
    for layer in NetView(net, TEST).layers:
        copy = BVLC.LayerParameter()
        copy.CopyFrom(layer)
        copy.ClearField("include")
        layers.append(copy)
    return layers


def normal_trunk_output(caffe, run_dir, weights, workdir):
    """What the trunk computes inside the run's own train_val net on the validation images, by real Caffe."""
    net = BVLC.NetParameter(name="normal")
    for layer in phase_layers(read_net(run_dir / "train_val.prototxt").net):
        if layer.type == "ImageData":
            layer.image_data_param.batch_size = val_count(run_dir)
        net.layer.add().CopyFrom(layer)
        if TRUNK_BLOB in layer.top:
            break
    add_output(net, TRUNK_BLOB, "label", workdir)
    return run_net(caffe, net, weights, workdir, run_dir)


def deploy_on_images(caffe, run_dir, weights, workdir):
    """(probabilities, labels) of deploy.prototxt with ``weights`` on the validation images, by real Caffe."""
    data = next(layer for layer in phase_layers(read_net(run_dir / "train_val.prototxt").net)
                if layer.type == "ImageData")
    data.image_data_param.batch_size = val_count(run_dir)
    net = BVLC.NetParameter(name="deploy_on_images")
    net.layer.add().CopyFrom(data)
    net.layer.extend(layer for layer in read_net(run_dir / "deploy.prototxt").net.layer if layer.type != "Input")
    add_output(net, "prob", "label", workdir)
    probabilities, labels = run_net(caffe, net, weights, workdir, run_dir)
    return probabilities.reshape(len(labels), -1), labels


def head_on_features(caffe, run_dir, weights, workdir):
    """(probabilities, labels) of the head net with ``weights`` on the cached validation features, by real Caffe."""
    net = BVLC.NetParameter(name="head_on_features")
    for layer in phase_layers(read_net(run_dir / HEAD_NET).net):
        if layer.type == "HDF5Data":
            layer.hdf5_data_param.batch_size = val_count(run_dir)
        net.layer.add().CopyFrom(layer)
    scores = next(layer for layer in net.layer if layer.type == "SoftmaxWithLoss").bottom[0]
    net.layer.add(name="prob", type="Softmax", bottom=[scores], top=["prob"])
    add_output(net, "prob", "label", workdir)
    probabilities, labels = run_net(caffe, net, weights, workdir, run_dir)
    return probabilities.reshape(len(labels), -1), labels


def curves(run_dir):
    with open(run_dir / "curves.csv", newline="") as stream:
        return list(csv.DictReader(stream))


class TestRefusals:
    def test_the_bundled_job_is_cacheable(self, images, tmp_path):
        plan = plan_cache(prepare_run(images, tmp_path / "run"))
        assert (plan.boundary, plan.feature_shape, plan.warnings) == (TRUNK_BLOB, (32, 7, 7), [])
        assert plan.head == ["fc1", "relu3", "fc2_ft", "loss", "accuracy"]

    def test_mirror_in_training(self, images, tmp_path):
        text = edit_layer(BASE_NET, "data", "mirror: false", "mirror: true")
        with pytest.raises(CaffegenError, match="mirror: true in the TRAIN data layer 'data'.*one mirrored or "
                                                "unmirrored version.*without --cache-features"):
            plan_cache(prepare_run(images, tmp_path / "run", text))

    def test_mirror_in_validation_is_a_warning(self, images, tmp_path):
        net = read_net(prepare_run(images, tmp_path / "run") / "train_val.prototxt").net
        next(layer for layer in NetView(net, TEST).layers if layer.type == "ImageData").transform_param.mirror = True
        assert [warning.split(":")[0] for warning in check_cacheable(net)] == ["mirror"]

    def test_random_crop_in_training(self, images, tmp_path):
        text = edit_layer(BASE_NET, "data", "mirror: false", "crop_size: 28")
        with pytest.raises(CaffegenError, match=r"crop_size: 28 in the TRAIN data layer.*random 28×28 crop.*"
                                                r"--resize 28,28"):
            plan_cache(prepare_run(images, tmp_path / "run", text))

    def test_crop_of_the_resized_size_is_deterministic(self, images, tmp_path):
        text = edit_layer(BASE_NET, "data", "mirror: false", "crop_size: 28")
        run = prepare_run(images, tmp_path / "run", text, data_settings=DataSettings(resize=(28, 28)))
        assert plan_cache(run).feature_shape == (32, 7, 7)

    def test_dropout_inside_the_trunk(self, images, tmp_path):
        text = add_after(BASE_NET, "relu1", 'layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" }')
        with pytest.raises(CaffegenError, match="Dropout 'drop1' is inside the frozen trunk.*new random mask"):
            plan_cache(prepare_run(images, tmp_path / "run", text))

    def test_dropout_after_the_trunk_runs_in_the_head(self, images, tmp_path):
        text = add_after(BASE_NET, "pool2", 'layer { name: "drop2" type: "Dropout" bottom: "pool2" top: "pool2" }')
        plan = plan_cache(prepare_run(images, tmp_path / "run", text))
        assert plan.boundary == TRUNK_BLOB and plan.head[:2] == ["drop2", "fc1"]
        assert "drop2" not in plan.extracted["TRAIN"] and "fresh random masks" in plan.notes[0]

    def test_batchnorm_without_global_stats(self, images, tmp_path):
        net = read_net(prepare_run(images, tmp_path / "run") / "train_val.prototxt").net
        next(layer for layer in net.layer if layer.name == "bn2").batch_norm_param.ClearField("use_global_stats")
        with pytest.raises(CaffegenError, match="BatchNorm 'bn2' is frozen without use_global_stats"):
            check_cacheable(net)

    def test_two_blobs_between_trunk_and_head(self, images, tmp_path):
        text = BASE_NET + ('layer { name: "aux" type: "InnerProduct" bottom: "pool1" top: "aux" '
                           'inner_product_param { num_output: 5 } }\n'
                           'layer { name: "aux_loss" type: "SoftmaxWithLoss" bottom: "aux" bottom: "label" }\n')
        with pytest.raises(CaffegenError, match=r"read 2 blobs from the frozen trunk: 'pool2' \(by fc1\), "
                                                r"'pool1' \(by aux"):
            plan_cache(prepare_run(images, tmp_path / "run", text))

    def test_nothing_frozen(self, images, tmp_path):
        with pytest.raises(CaffegenError, match="nothing is frozen"):
            plan_cache(prepare_run(images, tmp_path / "run", upto=None))

    def test_frozen_layer_without_weights(self, images, tmp_path):
        weights = tmp_path / "partial.caffemodel"
        write_trimmed_weights(DIGITS / "digits.caffemodel", weights, ["conv1", "bn1", "scale1", "fc1", "fc2"], {})
        with pytest.raises(CaffegenError, match=r"frozen layer\(s\) conv2, bn2, scale2 have no weights"):
            plan_cache(prepare_run(images, tmp_path / "run", weights=weights))


@pytest.fixture(scope="module")
def cached(caffe, images, tmp_path_factory):
    """A prepared digits job, frozen up to conv2, trained on cached features with real Caffe."""
    run = prepare_run(images, tmp_path_factory.mktemp("cached") / "run")
    lines = []
    result = run_cached(RunDir(run), Target(caffe), PlainReporter(lines.append))
    assert result.exit_code == 0, (run / "train.log").read_text()[-3000:]
    return run, result, lines


class TestCachedRun:
    def test_each_chunk_computed_is_an_event_of_the_run(self, cached):
        run, result, _ = cached
        events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
        chunks = [event for event in events if event["event"] == "chunk_computed"]
        assert sorted(event["chunk"] for event in chunks) == ["train_0000", "val_0000"]
        assert sum(event["images"] for event in chunks) == sum(plan_cache(run).images.values())
        assert all(event["engine"] in ("caffe", "opencv") and event["seconds"] > 0 for event in chunks)
        kinds = [event["event"] for event in events]
        assert kinds.index("chunk_computed") < kinds.index("test_result")  # the head trains on them after

    def test_reports_size_before_extracting_and_equals_the_files(self, cached):
        run, _, lines = cached
        plan = plan_cache(run)
        assert plan.describe() in lines and f"{plan.bytes / 1e6:.1f} MB" in plan.describe()
        assert f"feature extraction in mini-batches of {CACHE_BATCH} images (the default, within memory)" in lines
        assert f"output data size: {CACHE_BATCH}," in (run / FEATURES / "extract.log").read_text()
        files = sorted((run / FEATURES).glob("*.h5"))
        assert [path.name for path in files] == ["train_0000.h5", "val_0000.h5"]  # up to 4,096 images a chunk
        stored = sum(path.stat().st_size for path in files)
        assert plan.bytes <= stored <= plan.bytes * (1 + CHUNKING) + HDF5_HEADER * len(files)
        data, labels = cached_features(run, "train")
        assert data.shape == (plan.images["train"],) + plan.feature_shape and data.dtype == np.float32
        assert json.loads((run / "result.json").read_text())["cache"]["bytes"] == plan.bytes

    def test_features_equal_the_trunk_inside_the_normal_net(self, caffe, cached, tmp_path):
        run, _, _ = cached
        normal, normal_labels = normal_trunk_output(caffe, run, DIGITS / "digits.caffemodel", tmp_path)
        features, labels = cached_features(run, "val")
        assert normal.shape == features.shape
        np.testing.assert_allclose(features, normal, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(labels, normal_labels)
        train_labels = sorted(int(line.rpartition(" ")[2]) for line in (run / "train.txt").read_text().splitlines())
        assert sorted(cached_features(run, "train")[1].astype(int)) == train_labels

    def test_final_model_classifies_images_as_the_head_does_features(self, caffe, cached, tmp_path):
        run, result, _ = cached
        assert result.final_model == run / FINAL_MODEL
        head_snapshot = run / "snapshots" / "head_iter_69.caffemodel"
        on_images, labels = deploy_on_images(caffe, run, run / FINAL_MODEL, tmp_path / "deploy")
        on_features, feature_labels = head_on_features(caffe, run, head_snapshot, tmp_path / "head")
        np.testing.assert_array_equal(labels, feature_labels)
        np.testing.assert_allclose(on_images, on_features, atol=1e-5)
        accuracy = np.mean(on_images.argmax(axis=1) == labels)
        assert accuracy == np.mean(on_features.argmax(axis=1) == labels) and accuracy > 0.85

    def test_merged_model_holds_the_base_trunk_and_the_trained_head(self, cached):
        run, _, _ = cached
        final, base = read_caffemodel(run / FINAL_MODEL), read_caffemodel(DIGITS / "digits.caffemodel")
        head = read_caffemodel(run / "snapshots" / "head_iter_69.caffemodel")
        for name in ("conv1", "bn1", "scale1", "conv2", "bn2", "scale2"):
            for merged, original in zip(final.values(name), base.values(name)):
                np.testing.assert_array_equal(merged, original)
        for name in ("fc1", "fc2_ft"):
            for merged, trained in zip(final.values(name), head.values(name)):
                np.testing.assert_array_equal(merged, trained)
        assert not np.array_equal(final.values("fc1")[0], base.values("fc1")[0])

    def test_launch_outputs(self, cached):
        run, result, _ = cached
        rows = curves(run)
        assert rows[-1]["iteration"] == "69" and float(rows[-1]["test/accuracy"]) > 0.85
        assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        summary = json.loads((run / "result.json").read_text())
        assert summary["final_model"] == FINAL_MODEL and summary["cache"]["reused"] is False
        assert "Optimization Done." in (run / "train.log").read_text()



def reused(run, caffe):
    """Run the cached job again; return whether it reused the features, checking that it says so."""
    lines = []
    assert run_cached(RunDir(run), Target(caffe), PlainReporter(lines.append)).exit_code == 0
    said = any(line.startswith("reusing the cached features") for line in lines)
    assert json.loads((run / "result.json").read_text())["cache"]["reused"] is said
    return said


def test_features_are_reused_until_an_image_changes(caffe, images, tmp_path):
    shutil.copytree(images, tmp_path / "images")
    run = prepare_run(tmp_path / "images", tmp_path / "run")
    assert not reused(run, caffe)
    stamps = {path: path.stat().st_mtime_ns for path in (run / FEATURES).glob("*.h5")}
    assert reused(run, caffe)
    assert stamps == {path: path.stat().st_mtime_ns for path in (run / FEATURES).glob("*.h5")}
    image = Path((run / "val.txt").read_text().split()[0])
    image.write_bytes(image.read_bytes())
    assert not reused(run, caffe)
    assert reused(run, caffe)


def test_cached_and_uncached_training_agree_when_nothing_is_random(caffe, images, tmp_path):
    """Same batches in the same order and the same starting weights: the same training and predictions."""
    weights = tmp_path / "with_head.caffemodel"
    base = read_caffemodel(DIGITS / "digits.caffemodel")
    rng = np.random.default_rng(5)
    head = [(BVLC.LayerParameter(name="fc2_ft", type="InnerProduct"),
             [rng.normal(0, 0.1, (5, 64)).astype(np.float32), np.zeros(5, np.float32)])]
    write_caffemodel(weights, [(BVLC.LayerParameter(name=layer.name, type=layer.type), base.values(layer.name))
                               for layer in base.layers if layer.blobs and layer.name != "fc2"] + head)
    runs = {}
    for kind in ("uncached", "cached"):
        run = prepare_run(images, tmp_path / kind, weights=weights)
        net_path = run / "train_val.prototxt"
        net_path.write_text(net_path.read_text().replace("shuffle: true", "shuffle: false"))
        runs[kind] = run
    assert launch(runs["uncached"], Target(caffe)).exit_code == 0
    assert run_cached(RunDir(runs["cached"]), Target(caffe)).exit_code == 0
    uncached, cached_rows = curves(runs["uncached"]), curves(runs["cached"])
    assert [row["iteration"] for row in uncached] == [row["iteration"] for row in cached_rows]
    for column in ("loss", "test/accuracy", "test/loss"):
        expected = [float(row[column]) for row in uncached if row[column]]
        measured = [float(row[column]) for row in cached_rows if row[column]]
        assert expected and measured == pytest.approx(expected, rel=1e-4)
    uncached_probs, labels = deploy_on_images(caffe, runs["uncached"], runs["uncached"] / "snapshots" /
                                              "ft_iter_69.caffemodel", tmp_path / "eval_uncached")
    cached_probs, _ = deploy_on_images(caffe, runs["cached"], runs["cached"] / FINAL_MODEL, tmp_path / "eval_cached")
    np.testing.assert_allclose(cached_probs, uncached_probs, atol=1e-4)
    assert np.array_equal(cached_probs.argmax(axis=1), uncached_probs.argmax(axis=1))


def test_a_missing_image_is_reported(caffe, images, tmp_path):
    copy = tmp_path / "images"
    shutil.copytree(images, copy)
    run = prepare_run(copy, tmp_path / "run")
    missing = (run / "val.txt").read_text().splitlines()[3].rpartition(" ")[0]
    Path(missing).unlink()
    with pytest.raises(CaffegenError, match=f"computing the features of val_0000 failed.*{missing.rpartition('/')[2]}"):
        run_cached(RunDir(run), Target(caffe))


def test_prepare_and_launch_with_cache_features(cli, caffe, images, tmp_path):
    run = tmp_path / "run"
    prepared = cli("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                   "--data", images, "--freeze-upto", "conv2", "--epochs", 2, "--cache-features", "--cache-batch", 3,
                   "-o", run)
    assert prepared.returncode == 0, prepared.stderr
    assert "caching 'pool2'" in prepared.stderr
    assert "feature extraction in mini-batches of 3 images (--cache-batch)" in prepared.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["cache_features"] is True and manifest["cache_batch"] == 3
    launched = cli("launch", run)
    assert launched.returncode == 0, launched.stderr
    assert "feature extraction in mini-batches of 3 images (--cache-batch)" in launched.stderr
    assert "output data size: 3," in (run / FEATURES / "extract.log").read_text()
    result = json.loads((run / "result.json").read_text())
    assert result["cache"]["boundary"] == "pool2" and result["last_accuracy"] > 0.5
    assert f"final model: {run / FINAL_MODEL}" in launched.stderr
    resumed = cli("launch", run, "--resume")
    assert_one_line_error(resumed, "does not resume")
    on_gpu = cli("launch", run, "--gpu", "0")
    assert_one_line_error(on_gpu, "CPU-only build")


def test_prepare_refuses_to_cache_random_augmentation(cli, images, tmp_path):
    net = tmp_path / "mirrored.prototxt"
    net.write_text(BASE_NET.replace("mirror: false", "mirror: true"))
    result = cli("prepare", "--net", net, "--weights", DIGITS / "digits.caffemodel", "--data", images,
                 "--freeze-upto", "conv2", "--cache-features", "-o", tmp_path / "run")
    assert result.returncode == 2 and "mirror" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_refused_cache_leaves_no_run_directory(images, tmp_path):
    weights = tmp_path / "partial.caffemodel"
    write_trimmed_weights(DIGITS / "digits.caffemodel", weights, ["conv1", "bn1", "scale1", "fc1", "fc2"], {})
    with pytest.raises(CaffegenError, match=r"frozen layer\(s\) conv2, bn2, scale2 have no weights"):
        prepare_run(images, tmp_path / "run", weights=weights, cache_features=True)
    assert not (tmp_path / "run").exists()


def test_a_mean_file_is_subtracted_in_the_store_too(caffe, images, tmp_path):
    mean = BVLC.BlobProto()
    mean.shape.dim.extend([1, 1, 28, 28])
    mean.data.extend([100.0] * 28 * 28)
    (tmp_path / "mean.binaryproto").write_bytes(mean.SerializeToString())
    text = BASE_NET.replace("transform_param { scale: 0.00390625 mirror: false }",
                            'transform_param { scale: 0.00390625 mean_file: "mean.binaryproto" }')
    text = text.replace("transform_param { scale: 0.00390625 }",
                        'transform_param { scale: 0.00390625 mean_file: "mean.binaryproto" }')
    run = prepare_run(images, tmp_path / "run", text, cache_features=True, mean_file=tmp_path / "mean.binaryproto")
    result = run_cached(RunDir(run), Target(caffe))
    assert result.exit_code == 0, (run / "features" / "extract.log").read_text()[-2000:]
    assert (run / "features" / "mean.binaryproto").read_bytes() == mean.SerializeToString()
    log = (run / "features" / "extract.log").read_text()
    assert "Loading mean file from: mean.binaryproto" in log


def test_many_chunks_keep_list_order_and_an_interrupted_extraction_resumes(caffe, cached, images, tmp_path,
                                                                           monkeypatch):
    """Chunks of 200 images (4 for training), mini-batches of 7: the same features as one chunk; a lost chunk is
    computed again alone."""
    from caffegen.run import cache
    one_chunk, _, _ = cached
    monkeypatch.setattr(cache.store, "CHUNK_IMAGES", 200)
    run = prepare_run(images, tmp_path / "run")
    store, reused = cache.extract(plan_cache(run), Target(caffe), seed=1, batch_size=7)
    assert not reused and [chunk.name for chunk in store.work] == [f"train_{i:04d}" for i in range(4)] + [
        "val_0000"]
    for subset in ("train", "val"):
        write_list = "".join(f"{FEATURES}/{chunk.path('.h5')}\n" for chunk in store.work if chunk.name.startswith(subset))
        (run / FEATURES / f"{subset}.txt").write_text(write_list)
        np.testing.assert_allclose(cached_features(run, subset)[0], cached_features(one_chunk, subset)[0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cached_features(run, subset)[1], cached_features(one_chunk, subset)[1])
    before = {path.name: path.stat().st_mtime_ns for path in (run / FEATURES).glob("*.h5")}
    (run / FEATURES / "cache.json").unlink()
    (run / FEATURES / "train_0002.h5").unlink()
    lines = []
    store, reused = cache.extract(plan_cache(run), Target(caffe), reporter=PlainReporter(lines.append), seed=1,
                                  batch_size=7)
    assert "resuming: 4 of 5 chunks of features are already computed" in lines and not reused
    after = {path.name: path.stat().st_mtime_ns for path in (run / FEATURES).glob("*.h5")}
    assert {name for name in after if after[name] != before.get(name)} == {"train_0002.h5"}
    assert not list((run / FEATURES).glob("*.lmdb"))
