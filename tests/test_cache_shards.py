"""Cached features in shards with real Caffe: computed in any order, resumed, merged into the unsharded features
bit for bit, and launched as a real Slurm job array with the head's training after it."""

import json
import os
import re
import signal
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from conftest import DIGITS, assert_one_line_error, run_caffegen, wait_for
from test_cache import prepare_run
from trackers import expected_curves, process_runs, scalars

from caffegen.defaults import CACHE_BATCH
from caffegen.io.locks import waiting_lock
from caffegen.job.cacheplan import plan_cache
from caffegen.job.device import CPU, Device
from caffegen.job.options import CAFFE, OPENCV
from caffegen.net.memory import MemoryBudget
from caffegen.reporting import PlainReporter
from caffegen.run import cache
from caffegen.run.cache import FEATURES, FINAL_MODEL, STORE_RECORD
from caffegen.run.shards import Part, merge_parts, parse_shard, shard_parts
from caffegen.run.target import Target
from caffegen.strategies.slurm import node_budget

BASE_MODEL = ("--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel")


def fake_chunk(name, count):
    return SimpleNamespace(name=name, lines=list(range(count)))


def test_shards_split_the_mini_batches_in_order():
    work = [fake_chunk("train_0000", 50), fake_chunk("train_0001", 45), fake_chunk("val_0000", 12)]
    shards = [shard_parts(work, shard, 3, 8) for shard in range(3)]
    rows = [(part.chunk.name, row) for parts in shards for part in parts for row in range(part.start, part.end)]
    assert rows == [(chunk.name, row) for chunk in work for row in chunk.lines]  # each row once, in order
    parts = [part for parts in shards for part in parts]
    assert all(part.start % 8 == 0 for part in parts)  # where unsharded mini-batches start
    # No part is a chunk's partial last mini-batch alone: Caffe runs every mini-batch full, as without shards.
    assert all(part.end - part.start >= 8 or part.end - part.start == len(part.chunk.lines) for part in parts)
    assert [sum(part.end - part.start for part in parts) for parts in shards] == [32, 34, 41]  # 4 mini-batches each
    assert [part.name for part in shards[1]] == ["train_0000.rows-32-50", "train_0001.rows-0-16"]
    assert shard_parts(work, 3, 30, 8) == []  # more shards than mini-batches: some have nothing to do


def test_shard_numbers_read_as_i_of_n():
    assert parse_shard("2/3") == (2, 3) and parse_shard(" 0/1 ") == (0, 1)
    assert [parse_shard(text) for text in ("3/3", "1", "a/2", "-1/2", "1/0")] == [None] * 5


def write_part(folder, part, engine=CAFFE):
    rows = np.arange(part.start, part.end, dtype=np.float32)
    with h5py.File(folder / f"{part.name}.h5", "w") as out:
        out["data"] = np.stack([rows, rows + 0.5], axis=1)
        out["label"] = rows
        out.attrs["computed_by"] = engine


def test_parts_merge_in_row_order_whatever_shard_count_computed_them(tmp_path):
    chunk = fake_chunk("train_0000", 10)
    # Parts of 3 shards, and two stale ones of 2 shards whose second half never finished.
    for start, end in ((4, 8), (0, 4), (8, 10), (0, 5), (5, 9)):
        write_part(tmp_path, Part(chunk, start, end))
    (tmp_path / "train_0000.rows-0-4.txt").write_text("list\n")
    assert merge_parts(tmp_path, chunk, {"data": (2,), "label": ()})
    with h5py.File(tmp_path / "train_0000.h5", "r") as merged:
        np.testing.assert_array_equal(merged["label"][...], np.arange(10))
        np.testing.assert_array_equal(merged["data"][:, 1], np.arange(10) + 0.5)
        assert merged.attrs["computed_by"] == CAFFE
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train_0000.h5"]


def test_parts_that_leave_a_gap_are_not_merged(tmp_path):
    chunk = fake_chunk("val_0000", 10)
    for start, end in ((0, 4), (8, 10)):
        write_part(tmp_path, Part(chunk, start, end))
    assert not merge_parts(tmp_path, chunk, {"data": (2,), "label": ()})
    assert not (tmp_path / "val_0000.h5").exists() and len(list(tmp_path.glob("*.h5"))) == 2


def test_parts_of_both_engines_say_so(tmp_path):
    chunk = fake_chunk("val_0000", 6)
    write_part(tmp_path, Part(chunk, 0, 3), OPENCV)
    write_part(tmp_path, Part(chunk, 3, 6), CAFFE)  # a shard whose first mini-batch differed fell back to Caffe
    assert merge_parts(tmp_path, chunk, {"data": (2,), "label": ()})
    with h5py.File(tmp_path / "val_0000.h5", "r") as merged:
        assert merged.attrs["computed_by"] == "caffe and opencv"


def stored_arrays(store):
    """{chunk file: (features, labels)} of a store's chunks."""
    arrays = {}
    for path in sorted(store.glob("*_0*.h5")):
        with h5py.File(path, "r") as stored:
            arrays[path.name] = (stored["data"][...], stored["label"][...])
    return arrays


def assert_same_features(store, expected):
    found = stored_arrays(store)
    assert found.keys() == expected.keys() and found
    for name, (data, labels) in expected.items():
        np.testing.assert_array_equal(found[name][0], data)  # bit for bit
        np.testing.assert_array_equal(found[name][1], labels)


@pytest.fixture(scope="module")
def unsharded(caffe, images, tmp_path_factory):
    """The features of the digits job frozen up to conv2, in chunks of 200 images, computed without shards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache.store, "CHUNK_IMAGES", 200)
        run = prepare_run(images, tmp_path_factory.mktemp("unsharded") / "run")
        store, reused = cache.extract(plan_cache(run), Target(caffe), seed=1, batch_size=7)
    assert not reused and len(store.work) == 5
    return stored_arrays(store.path)


def test_shards_in_any_order_resume_and_merge_into_the_unsharded_features(caffe, images, unsharded, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(cache.store, "CHUNK_IMAGES", 200)
    run = prepare_run(images, tmp_path / "run")
    plan, target = plan_cache(run), Target(caffe)
    for shard in (2, 0):
        store, images_done = cache.extract_shard(plan, target, shard, 3, seed=1, batch_size=7)
        assert images_done > 0
    parts = sorted(path.name for path in store.path.glob("*.rows-*.h5"))
    assert parts and not list(store.path.glob("*_0???.h5")) and not (store.path / STORE_RECORD).exists()
    # A shard run again (its array cancelled, resubmitted) keeps what it computed.
    stamps = {path: path.stat().st_mtime_ns for path in store.path.glob("*.rows-*.h5")}
    lines = []
    heard = PlainReporter(lines.append)
    assert cache.extract_shard(plan, target, 0, 3, reporter=heard, seed=1, batch_size=7)[1] == 0
    assert any(line.startswith("shard 0/3: ") and "parts are already computed" in line for line in lines)
    assert stamps == {path: path.stat().st_mtime_ns for path in store.path.glob("*.rows-*.h5")}
    cache.extract_shard(plan, target, 1, 3, seed=1, batch_size=7)
    computed = (store.path / "extract.log").read_text().count("Successfully extracted the features!")

    lines = []
    heard = PlainReporter(lines.append)
    store, reused = cache.extract(plan, target, reporter=heard, seed=1, batch_size=7)
    assert not reused and "merged the shards' parts of 5 chunks of features" in lines
    assert (store.path / "extract.log").read_text().count("Successfully extracted the features!") == computed
    assert not list(store.path.glob("*.rows-*"))
    assert_same_features(store.path, unsharded)
    record = json.loads((store.path / STORE_RECORD).read_text())
    assert record["key"] == store.key and record["computed_by"] == CAFFE
    # The store is the unsharded extraction's: launched again, with or without shards, it is reused.
    assert cache.extract(plan, target, seed=1, batch_size=7)[1] is True
    assert cache.extract_shard(plan, target, 1, 4, seed=1, batch_size=7)[1] == 0


def test_a_chunk_not_covered_by_parts_is_computed_whole(caffe, images, unsharded, tmp_path, monkeypatch):
    monkeypatch.setattr(cache.store, "CHUNK_IMAGES", 200)
    run = prepare_run(images, tmp_path / "run")
    plan, target = plan_cache(run), Target(caffe)
    folder = cache.feature_store(plan, 1).path
    folder.mkdir(parents=True)
    lines = []
    heard = PlainReporter(lines.append)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail(f"the shard waited for another shard: {lines}"))
    signal.alarm(300)
    try:
        with waiting_lock(folder / cache.STORE_LOCK, lambda: lines.append("waiting"), shared=True):  # another shard
            store, _ = cache.extract_shard(plan, target, 0, 2, reporter=heard, seed=1, batch_size=7)
    finally:
        signal.alarm(0)
    assert not any(line.startswith("waiting") for line in lines)  # shards do not wait for each other
    # The second shard never ran.
    lines = []
    heard = PlainReporter(lines.append)
    cache.extract(plan, target, reporter=heard, seed=1, batch_size=7)
    assert "merged the shards' parts of 2 chunks of features" in lines
    assert "resuming: 2 of 5 chunks of features are already computed" in lines
    assert_same_features(store.path, unsharded)


def test_opencv_shards_check_their_first_mini_batch_and_say_what_computed_them(caffe, images, tmp_path):
    pytest.importorskip("cv2")
    runs = {kind: prepare_run(images, tmp_path / kind, engine=OPENCV, cache_features=True) for kind in ("sharded", "whole")}
    target = Target(caffe)
    lines = []
    heard = PlainReporter(lines.append)
    for shard in range(2):
        cache.extract_shard(plan_cache(runs["sharded"]), target, shard, 2, reporter=heard, seed=1)
    assert sum(line.startswith("OpenCV DNN ") and " agrees with Caffe" in line for line in lines) == 2, lines
    store, _ = cache.extract(plan_cache(runs["sharded"]), target, seed=1)
    whole, _ = cache.extract(plan_cache(runs["whole"]), target, seed=1)
    assert store.engine == whole.engine == OPENCV
    assert json.loads((store.path / STORE_RECORD).read_text())["computed_by"] == OPENCV
    assert_same_features(store.path, stored_arrays(whole.path))


def prepare_cached(images, run_dir, *extra):
    done = run_caffegen("prepare", *BASE_MODEL, "--data", images, "--freeze-upto", "conv2", "--epochs", 1,
                        "--cache-features", "--engine", "caffe", "-o", run_dir, *extra)
    assert done.returncode == 0, done.stderr
    return run_dir


def test_bad_slurm_launches_are_one_line_errors(images, tmp_path):
    cached = prepare_cached(images, tmp_path / "cached")
    uncached = tmp_path / "uncached"
    assert run_caffegen("prepare", *BASE_MODEL, "--data", images, "--freeze-upto", "conv2",
                        "-o", uncached).returncode == 0
    (tmp_path / "bin").mkdir()
    no_sbatch = dict(os.environ, PATH=str(tmp_path / "bin"))
    cases = [
        ((uncached, "--slurm"), None, "--slurm takes a run prepared with --cache-features"),
        ((cached, "--slurm", "--shards", "0"), None, "--shards"),
        ((cached, "--slurm", "--shards", "x"), None, "--shards"),
        ((cached, "--shards", "3"), None, "go with --slurm"),
        ((cached, "--slurm", "--features-only"), None, "without --resume, --features-only or --shard"),
        ((cached, "--shard", "0/2"), None, "--shard goes with --features-only"),
        ((cached, "--features-only", "--shard", "2/2"), None, "--shard takes I/N"),
        ((cached, "--slurm", "--slurm-opt", "partition=x"), None, "an sbatch option such as --partition=gpu"),
        ((cached, "--slurm"), no_sbatch, "sbatch not found"),
    ]
    for args, env, message in cases:
        assert_one_line_error(run_caffegen("launch", *args, env=env), message)


def test_the_scripts_name_each_shard_and_the_head_after_them(images, tmp_path):
    run = prepare_cached(images, tmp_path / "my run")
    done = run_caffegen("launch", run, "--slurm", "--no-submit", "--evaluate", "--slurm-opt=--time=10")
    assert done.returncode == 0, done.stderr
    features, head = ((run / name).read_text().splitlines() for name in ("slurm_features.sh", "slurm_head.sh"))
    assert "#SBATCH --array=0-0" in features and "#SBATCH --time=10" in features  # ~1,000 images: one shard
    assert features[-1].endswith(' --features-only --shard "$SLURM_ARRAY_TASK_ID/1"')
    assert f'#SBATCH --output="{run}/slurm-features-%A_%a.out"' in features
    assert not any(line.startswith("#SBATCH --array") for line in head) and head[-1].endswith(" --evaluate")
    assert "sbatch --dependency=afterok:JOB" in done.stderr
    assert f"every shard runs feature extraction in mini-batches of {CACHE_BATCH} images" in done.stderr
    assert json.loads((run / "manifest.json").read_text())["cache_batch"] == CACHE_BATCH


def test_a_node_budget_is_the_memory_asked_with_mem_on_the_cpu_only():
    assert node_budget(["--partition=cpu", "--mem=2G"], CPU) == MemoryBudget(
        2 << 30, "the node's memory asked for (--mem=2G)")
    assert node_budget(["--mem=1", "--mem 512"], CPU).bytes == 512 << 20  # megabytes; the last one counts
    assert node_budget(["--mem=300K"], CPU).bytes == 300 << 10
    for options, device in ((["--mem=0"], CPU), (["--mem-per-cpu=2G"], CPU), ([], CPU), (["--mem=2G"], Device("0"))):
        assert node_budget(options, device).bytes is None, options


def test_the_shards_mini_batch_fits_the_memory_asked_of_a_node(images, tmp_path):
    small = prepare_cached(images, tmp_path / "small")
    done = run_caffegen("launch", small, "--slurm", "--no-submit", "--slurm-opt=--mem=1")
    assert done.returncode == 0, done.stderr
    assert ("every shard runs feature extraction in mini-batches of 1 images (not even one image fits the 1.0 MB "
            "of the node's memory asked for (--mem=1))") in done.stderr
    assert json.loads((small / "manifest.json").read_text())["cache_batch"] == 1
    roomy = prepare_cached(images, tmp_path / "roomy")
    done = run_caffegen("launch", roomy, "--slurm", "--no-submit", "--slurm-opt=--mem=4G")
    assert f"mini-batches of {CACHE_BATCH} images (the default, within memory)" in done.stderr
    assert json.loads((roomy / "manifest.json").read_text())["cache_batch"] == CACHE_BATCH


def test_slurm_computes_the_shards_in_a_job_array_and_trains_the_head_after_it(slurm, caffe, images, tmp_path):
    run = prepare_cached(images, tmp_path / "sharded run")
    done = run_caffegen("launch", run, "--slurm", "--shards", "3", "--slurm-opt=--time=10", "--report-to",
                        "tensorboard", env=slurm.env)
    assert done.returncode == 0, done.stderr
    watch = int(re.search(r"\(process (\d+);", done.stderr).group(1))
    head = done.stdout.strip()
    array = done.stderr.split("submitted the trunk features as job array ")[1].split(" ")[0]
    assert head.isdigit() and array.isdigit() and f"squeue -j {array},{head}" in done.stderr
    dependency = slurm.client("scontrol", "show", "job", head).stdout
    assert "KillOInInvalidDependent=Yes" in dependency
    assert f"Dependency=afterok:{array}" in dependency.replace("(unfulfilled)", "")
    slurm.wait_for_job(head, timeout=300)
    head_log = (run / f"slurm-head-{head}.out").read_text() if (run / f"slurm-head-{head}.out").exists() else ""
    assert (run / FINAL_MODEL).is_file(), head_log + slurm.logs()
    logs = [(run / f"slurm-features-{array}_{task}.out").read_text() for task in range(3)]
    for task, log in enumerate(logs):
        assert f"shard {task}/3: computed " in log and " with caffe" in log, log
    assert not (run / f"slurm-features-{array}_3.out").exists()
    assert "merged the shards' parts of 2 chunks of features" in head_log
    assert "resuming: 2 of 2 chunks of features are already computed" in head_log
    assert json.loads((run / "result.json").read_text())["exit_code"] == 0
    # The watch left where it was submitted sends the head's training; the head's own launch sends nothing.
    wait_for(lambda: not process_runs(watch), "the watch to end after the head's job", timeout=120)
    assert (run / "slurm_head.sh").read_text().splitlines()[-1].endswith(" --report-to none")
    assert scalars(run / "tensorboard", "test/accuracy") == pytest.approx(expected_curves(run)["test/accuracy"])

    whole = prepare_cached(images, tmp_path / "whole run")
    assert run_caffegen("launch", whole, "--features-only").returncode == 0
    assert_same_features(run / FEATURES, stored_arrays(whole / FEATURES))
