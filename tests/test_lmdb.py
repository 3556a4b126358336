"""prepare --lmdb with the real Caffe: databases built by convert_imageset, their mean, reuse, training on them."""

import io
import math
import os
import signal
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from conftest import DIGITS, assert_one_line_error, run_caffegen, wait_for
from PIL import Image

from caffegen.io.schema import BVLC
from caffegen.job.prepare import JobOptions, prepare
from caffegen.net.wiring import DataSettings
from caffegen.reporting import PlainReporter
from caffegen.run.launch import launch
from caffegen.run.lmdb import DatabaseBuilder
from caffegen.run.target import Target
from caffegen.strategies.sweep import combinations, prepare_sweep

CLASSES, PER_CLASS, SIDE, RESIZE = 3, 10, 32, 28  # the bundled digits model takes gray 28×28 images


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes of 10 gray 32×32 PNGs, each class brighter than the one before."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in range(CLASSES):
        (folder / f"class{label}").mkdir()
        for index in range(PER_CLASS):
            pixels = (rng.random((SIDE, SIDE)) * 80 + label * 60).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"class{label}" / f"{index}.png")
    return folder


def job(images, **extra):
    return JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images,
                      epochs=1, lmdb=True, data_settings=DataSettings(resize=(RESIZE, RESIZE)), **extra)


def prepare_lmdb(caffe, images, run_dir, force=False, **extra):
    return prepare(job(images, **extra), run_dir, force=force, databases=DatabaseBuilder(Target(caffe)))


def datums(database):
    """{image file name: Datum} of an LMDB that convert_imageset wrote (keys: index_path)."""
    with lmdb.open(str(database), readonly=True, lock=False) as env, env.begin() as transaction:
        return {key.decode().split("_", 1)[1]: BVLC.Datum.FromString(value) for key, value in transaction.cursor()}


def pixels(datum):
    """A Datum's image as a (channels, height, width) array, decoded when it is encoded."""
    if datum.encoded:
        image = np.asarray(Image.open(io.BytesIO(datum.data)))
        return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)


def listed_labels(list_file):
    return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in list_file.read_text().splitlines()}


@pytest.fixture(scope="module")
def raw_run(caffe, image_folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("raw") / "run"
    return prepare_lmdb(caffe, image_folder, run_dir, mean="image")


def test_the_databases_hold_every_image_resized_with_its_label(raw_run):
    run_dir = raw_run.run_dir
    for database, listed in (("train_lmdb", "train.txt"), ("val_lmdb", "val.txt")):
        stored, labels = datums(run_dir / database), listed_labels(run_dir / listed)
        assert sorted(stored) == sorted(labels)
        for name, datum in stored.items():
            assert (datum.channels, datum.height, datum.width, datum.encoded) == (1, RESIZE, RESIZE, False)
            assert datum.label == labels[name]
    assert raw_run.manifest.input_shape == (1, 1, RESIZE, RESIZE)
    assert raw_run.manifest.preprocessing["resize"] == [RESIZE, RESIZE]
    assert raw_run.manifest.preprocessing["channel_order"] == "gray"
    text = (run_dir / "train_val.prototxt").read_text()
    assert 'type: "Data"' in text and 'source: "train_lmdb"' in text and "backend: LMDB" in text
    assert "ImageData" not in text and not list(run_dir.parent.glob(".*"))


def test_mean_image_is_the_mean_of_the_resized_training_images(raw_run):
    run_dir = raw_run.run_dir
    blob = BVLC.BlobProto.FromString((run_dir / "mean.binaryproto").read_bytes())
    mean = np.asarray(blob.data, np.float64).reshape(1, RESIZE, RESIZE)
    images = np.stack([pixels(datum) for datum in datums(run_dir / "train_lmdb").values()]).astype(np.float64)
    np.testing.assert_allclose(mean, images.mean(axis=0), atol=1e-3)
    assert raw_run.manifest.preprocessing["mean_file"] == "mean.binaryproto"
    assert 'mean_file: "mean.binaryproto"' in (run_dir / "train_val.prototxt").read_text()


def test_encoded_databases_store_png_that_decodes_to_the_raw_pixels(caffe, image_folder, raw_run, tmp_path):
    job = prepare_lmdb(caffe, image_folder, tmp_path / "run", encoded=True)
    encoded, raw = datums(job.run_dir / "train_lmdb"), datums(raw_run.run_dir / "train_lmdb")
    assert sorted(encoded) == sorted(raw)
    for name, datum in encoded.items():
        assert datum.encoded and datum.data[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(pixels(datum), pixels(raw[name]))
    assert job.manifest.input_shape == (1, 1, RESIZE, RESIZE)


def test_the_same_images_and_seed_give_the_same_databases(caffe, image_folder, raw_run, tmp_path):
    again = prepare_lmdb(caffe, image_folder, tmp_path / "again")
    first, second = (list(datums(run.run_dir / "train_lmdb").items()) for run in (raw_run, again))
    assert first == second
    labels = [datum.label for _, datum in first]
    assert labels != sorted(labels), "a Data layer reads its database in order: the images go in shuffled"
    other = prepare_lmdb(caffe, image_folder, tmp_path / "other", seed=2)
    assert list(datums(other.run_dir / "train_lmdb")) != [name for name, _ in first]


def test_training_on_the_databases_runs(caffe, image_folder, tmp_path):
    job = prepare_lmdb(caffe, image_folder, tmp_path / "run", mean="image")
    result = launch(job.run_dir, Target(caffe))
    assert result.exit_code == 0
    assert all(math.isfinite(record["loss"]) for record in result.records if "loss" in record)
    assert (job.run_dir / "snapshots" / "ft_iter_1.caffemodel").is_file()


def test_unchanged_images_reuse_the_databases_and_a_touched_one_rebuilds(caffe, image_folder, tmp_path):
    first = prepare_lmdb(caffe, image_folder, tmp_path / "run", mean="image")
    inode = (first.run_dir / "val_lmdb" / "data.mdb").stat().st_ino
    again = prepare_lmdb(caffe, image_folder, tmp_path / "run", force=True, mean="image")
    reused = [note for note in again.notes if "convert_imageset not run" in note]
    assert len(reused) == 2 and (again.run_dir / "mean.binaryproto").is_file()
    assert (again.run_dir / "val_lmdb" / "data.mdb").stat().st_ino == inode
    train_image = (tmp_path / "run" / "train.txt").read_text().split("\n")[0].rsplit(" ", 1)[0]
    os.utime(train_image, ns=(os.stat(train_image).st_atime_ns, os.stat(train_image).st_mtime_ns + 10**9))
    touched = prepare_lmdb(caffe, image_folder, tmp_path / "run", force=True, mean="image")
    assert [note.split(":")[0] for note in touched.notes if "convert_imageset not run" in note] == ["val_lmdb"]
    assert len(datums(touched.run_dir / "train_lmdb")) == first.manifest.images.train


def test_an_unreadable_image_is_one_line_and_leaves_nothing(caffe, image_folder, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    listed = "".join(f"{path} {label}\n" for label in range(2) for path in sorted((image_folder / f"class{label}")
                                                                                  .glob("*.png")))
    (tmp_path / "train.txt").write_text(listed + f"{broken} 1\n")
    (tmp_path / "val.txt").write_text(listed)
    result = run_caffegen("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                          "--train-list", tmp_path / "train.txt", "--val-list", tmp_path / "val.txt", "--lmdb",
                          "--resize", RESIZE, "--gpu", "cpu", "--caffe", caffe, "-o", tmp_path / "out" / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    progress, error = result.stderr.strip().splitlines()  # the build's progress line, then the error
    assert progress.startswith("building train_lmdb") and error.startswith("caffegen: error: ")
    assert str(broken) in error and "convert_imageset cannot read" in error
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("extra, words", [
    (["--lmdb", "--cache-features"], ["--cache-features reads each image once"]),
    (["--lmdb", "--stages", "upto=fc1,lr=0.001,epochs=1;upto=none,lr=0.0001,epochs=1"], ["--stages"]),
    (["--encoded"], ["--encoded needs --lmdb"]),
    (["--mean", "image"], ["--mean image needs --lmdb"]),
    (["--lmdb", "--mean", "image", "--mean-value", "10"], ["give one of --mean image"]),
])
def test_what_does_not_combine_with_lmdb_is_refused(caffe, image_folder, tmp_path, extra, words):
    result = run_caffegen("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                          "--data", image_folder, "--gpu", "cpu", "--caffe", caffe, "-o", tmp_path / "run", *extra)
    assert_one_line_error(result, *words)
    assert not (tmp_path / "run").exists()


def test_kept_data_layers_take_the_shape_of_their_first_datum(raw_run, tmp_path):
    text = (raw_run.run_dir / "train_val.prototxt").read_text()
    for name in ("train_lmdb", "val_lmdb", "mean.binaryproto"):
        text = text.replace(f'"{name}"', f'"{raw_run.run_dir / name}"')
    (tmp_path / "lmdb_net.prototxt").write_text(text)
    options = JobOptions(net=tmp_path / "lmdb_net.prototxt", weights=DIGITS / "digits.caffemodel", epochs=1,
                         keep_data_layers=True, num_classes=CLASSES, train_images=24, val_images=6)
    job = prepare(options, tmp_path / "run")
    assert job.manifest.input_shape == (1, 1, RESIZE, RESIZE)


def test_a_job_caffe_would_refuse_is_refused_before_any_database_is_built(caffe, image_folder, tmp_path):
    result = run_caffegen("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                          "--data", image_folder, "--lmdb", "--resize", 24, "--gpu", "cpu", "--caffe", caffe,
                          "-o", tmp_path / "run")
    assert_one_line_error(result, "shape mismatch")  # the 24×24 images do not fit fc1 of the 28×28 weights
    assert not list(tmp_path.iterdir())


def test_the_runs_of_a_sweep_share_one_build_of_the_databases(caffe, image_folder, tmp_path):
    heard = []
    runs = prepare_sweep(combinations(job(image_folder, mean="image"), learning_rates=(0.01, 0.001)), tmp_path / "sweep",
                         databases=DatabaseBuilder(Target(caffe), PlainReporter(heard.append)))
    built = [line for line in heard if line.startswith("building")]
    assert built == ["building train_lmdb with convert_imageset: 24 images",
                     "building val_lmdb with convert_imageset: 6 images"]
    first, second = (tmp_path / "sweep" / run.run_dir for run in runs)
    assert (first / "train_lmdb" / "data.mdb").stat().st_ino == (second / "train_lmdb" / "data.mdb").stat().st_ino
    assert (first / "mean.binaryproto").read_bytes() == (second / "mean.binaryproto").read_bytes()


def test_sigterm_while_the_databases_are_built_leaves_nothing(caffe, tmp_path):
    """SIGTERM (a scheduler's, a user's kill) during convert_imageset: the staging folder goes with the command."""
    images = tmp_path / "images"
    rng = np.random.default_rng(1)
    for label in range(2):
        (images / f"class{label}").mkdir(parents=True)
        for index in range(150):
            pixels = rng.integers(0, 256, (600, 600), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"class{label}" / f"{index}.png")
    parent = tmp_path / "runs"
    command = [sys.executable, "-m", "caffegen", "prepare", "--gpu", "cpu", "--net", DIGITS / "train_val.prototxt",
               "--weights", DIGITS / "digits.caffemodel", "--data", images, "--lmdb", "--resize", "28",
               "-o", parent / "run"]
    preparing = subprocess.Popen([str(part) for part in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
    wait_for(lambda: any(path.name.startswith(".run.lmdb.") for path in parent.glob(".*")),
             "prepare to start building the databases", every=0.02)
    preparing.send_signal(signal.SIGTERM)
    _, stderr = preparing.communicate(timeout=60)
    assert preparing.returncode == 143 and stderr.strip().splitlines()[-1] == "caffegen: terminated", stderr
    assert list(parent.iterdir()) == []
