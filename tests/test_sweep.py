"""caffegen sweep with real Caffe: runs per freeze point × learning rate, here and as a real Slurm job array."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS, ROOT, assert_one_line_error, run_caffegen, wait_for

from caffegen.job import cacheplan
from caffegen.job.prepare import JobOptions
from caffegen.job.rundir import RunDir, newest_snapshot
from caffegen.reporting import PlainReporter
from caffegen.run.cache import store_of
from caffegen.strategies.sweep import (
    collect,
    combinations,
    feature_groups,
    plot_sweep,
    prepare_sweep,
    run_on_gpus,
    write_slurm_scripts,
)
from caffegen.strategies.sweep import here as sweep_here

BASE_MODEL = ("--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel")
PNG = b"\x89PNG\r\n\x1a\n"


def sweep(images, out, *extra, epochs=2, env=None):
    return run_caffegen("sweep", *BASE_MODEL, "--data", images, "--epochs", epochs, "-o", out, *extra, env=env)


def table(sweep_dir):
    with open(sweep_dir / "results.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def result(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def assert_real_result(row, run_dir):
    """The table's row says what the run's result.json says: a finished run with a real accuracy."""
    recorded = result(run_dir)
    assert row["status"] == "ok" and row["exit_code"] == "0"
    assert float(row["best_accuracy"]) == recorded["best_accuracy"] > 0.5
    assert float(row["last_accuracy"]) == recorded["last_accuracy"]
    assert float(row["seconds"]) == recorded["seconds"] > 0
    evaluated = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert float(row["mean_class_accuracy"]) == evaluated["mean_class_accuracy"] > 0.3  # chance: 0.2


def printed_row(stdout, run):
    return next(line.split() for line in stdout.splitlines() if line.startswith(run + " "))


def test_run_names_and_statuses_with_dollar_signs_are_plotted_as_written(tmp_path):
    rows = [{"run": "freeze-$x_$", "best_accuracy": 0.5, "mean_class_accuracy": 0.4, "status": "ok"},
            {"run": "freeze-$^$", "best_accuracy": None, "mean_class_accuracy": None, "status": "failed $\\frac{$"}]
    plot_sweep(rows, [([0, 10], [0.2, 0.5]), ([], [])], tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes().startswith(PNG)


def test_local_sweep_trains_each_combination_and_compares_them(caffe, images, tmp_path):
    out = tmp_path / "sweep"
    done = sweep(images, out, "--freeze-upto", "conv1,fc1", "--lr", "0.002")
    assert done.returncode == 0, done.stderr
    runs = ["upto-conv1_lr-0.002", "upto-fc1_lr-0.002"]
    assert json.loads((out / "sweep.json").read_text())["runs"] == [
        {"run_dir": runs[0], "freeze_upto": "conv1", "freeze_from": None, "lr": 0.002},
        {"run_dir": runs[1], "freeze_upto": "fc1", "freeze_from": None, "lr": 0.002}]
    rows = table(out)
    assert [row["run"] for row in rows] == runs
    for row in rows:
        assert_real_result(row, out / row["run"])
        assert printed_row(done.stdout, row["run"])[4] == f"{float(row['best_accuracy']):.4f}"
        assert "base_lr: 0.002" in (out / row["run"] / "solver.prototxt").read_text()
    conv1_log, fc1_log = ((out / run / "train.log").read_text() for run in runs)
    assert "conv1 does not need backward computation." in conv1_log
    assert "fc1 does not need backward computation." in fc1_log
    assert "fc1 does not need backward computation." not in conv1_log
    assert (out / "results.png").read_bytes()[:8] == PNG


def test_a_diverging_run_is_diagnosed_and_the_next_one_still_runs(caffe, images, tmp_path):
    out = tmp_path / "sweep"
    done = sweep(images, out, "--freeze-upto", "conv2", "--lr", "1000,0.001")
    assert done.returncode == 1, done.stderr
    diverged, good = table(out)
    assert diverged["run"] == "upto-conv2_lr-1000"
    assert diverged["status"] == "diverged" and diverged["exit_code"] == "3"
    assert printed_row(done.stdout, diverged["run"])[-1] == "diverged"
    assert "training diverged" in done.stderr and "Traceback" not in done.stderr
    assert good["run"] == "upto-conv2_lr-0.001"
    assert_real_result(good, out / good["run"])
    assert "Optimization Done." in (out / good["run"] / "train.log").read_text()


def test_gpus_on_a_cpu_only_caffe_are_refused_before_anything_is_written(caffe, images, tmp_path):
    done = sweep(images, tmp_path / "sweep", "--freeze-upto", "conv1,conv2", "--gpus", "0,1")
    assert_one_line_error(done, "is a CPU-only build and cannot use --gpus 0,1; "
                                "drop --gpus to train the runs one after another on the CPU")
    assert done.stderr.strip().splitlines()[-1].endswith("is a CPU-only build and cannot use --gpus 0,1; "
                                                         "drop --gpus to train the runs one after another on the CPU")
    assert not (tmp_path / "sweep").exists()


def test_an_unknown_layer_leaves_no_sweep_behind(caffe, images, tmp_path):
    done = sweep(images, tmp_path / "sweep", "--freeze-upto", "conv1,conv9")
    assert done.returncode == 2
    assert "conv9" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_one_run_per_device_at_a_time(caffe, images, tmp_path):
    options = JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images,
                         epochs=1)
    out = tmp_path / "sweep"
    runs = prepare_sweep(combinations(options, ("conv1", "conv2", "fc1")), out)
    events = []
    errors = run_on_gpus(out, runs, ["cpu", "cpu"], caffe, PlainReporter(events.append), poll_seconds=0.05)
    assert errors == {}
    assert events[:2] == ["GPU cpu: started upto-conv1", "GPU cpu: started upto-conv2"]
    assert events[2].startswith("GPU cpu: upto-conv") and events[2].endswith("ended with exit code 0")
    assert events.index("GPU cpu: started upto-fc1") > 2
    for row in collect(out):
        assert row["status"] == "ok" and row["best_accuracy"] == result(out / row["run"])["best_accuracy"]


class Stopped(BaseException):
    """What SIGTERM raises in caffegen (cli.Terminated), raised here while the launches run."""


def test_a_sweep_stopped_by_sigterm_stops_its_launches(caffe, images, tmp_path, monkeypatch):
    options = JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images,
                         epochs=30)
    out = tmp_path / "sweep"
    runs = prepare_sweep(combinations(options, ("conv1", "conv2")), out)
    started = []

    def stop_once_training(seconds):
        logs = [out / run.run_dir / "train.log" for run in runs]
        if all(log.is_file() and "Iteration 20 " in log.read_text() for log in logs):
            raise Stopped()

    monkeypatch.setattr(sweep_here.time, "sleep", stop_once_training)
    monkeypatch.setattr(sweep_here.subprocess, "Popen", recording(sweep_here.subprocess.Popen, started))
    with pytest.raises(Stopped):
        run_on_gpus(out, runs, ["cpu", "cpu"], caffe)
    assert len(started) == 2 and all(process.poll() is not None for process in started)
    for run in runs:
        log = (out / run.run_dir / "train.log").read_text()
        result = json.loads((out / run.run_dir / "result.json").read_text())
        assert result["interrupted"] and log.rstrip().endswith("Optimization Done."), log[-2000:]
        assert "Snapshotting to binary proto file" in log and newest_snapshot(out / run.run_dir).is_file()
        assert result["iterations"] < 690 / 2  # both stopped, not one after the other


def recording(popen, started):
    def start(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]
    return start


def test_a_run_refused_by_launch_shows_why(caffe, images, tmp_path):
    options = JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images,
                         epochs=1)
    out = tmp_path / "sweep"
    runs = prepare_sweep(combinations(options, ("conv1",)), out)
    errors = run_on_gpus(out, runs, ["0"], caffe, poll_seconds=0.05)
    assert errors["upto-conv1"].endswith("CPU-only build and cannot use --gpu 0; drop --gpu to train on the CPU")
    [row] = collect(out, runs, errors)
    assert row["status"] == "error: " + errors["upto-conv1"] and row["best_accuracy"] is None


def test_slurm_script_gives_each_task_its_run(caffe, images, tmp_path):
    out = tmp_path / "my sweep"
    done = sweep(images, out, "--freeze-upto", "conv1,conv2,fc1", "--slurm", "--no-submit",
                 "--slurm-opt", "--partition=gpu", "--slurm-opt=--time=00:10:00")
    assert done.returncode == 0, done.stderr
    lines = (out / "slurm.sh").read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert [line for line in lines[first_command:] if line.startswith("#SBATCH")] == []
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --array=0-2" in lines
    assert f'#SBATCH --output="{out}/slurm-%A_%a.out"' in lines
    assert "#SBATCH --partition=gpu" in lines and "#SBATCH --time=00:10:00" in lines
    assert f"exec {shlex.quote(sys.executable)} -m caffegen launch --evaluate " + '"${RUNS[$SLURM_ARRAY_TASK_ID]}"' in lines
    for run in ("upto-conv1", "upto-conv2", "upto-fc1"):
        assert f"  {shlex.quote(str(out / run))}" in lines

    task = subprocess.run(["bash", out / "slurm.sh"], cwd=ROOT, env=dict(os.environ, SLURM_ARRAY_TASK_ID="1"),
                          capture_output=True, text=True)
    assert task.returncode == 0, task.stderr
    collected = run_caffegen("sweep", "--collect", out)
    assert collected.returncode == 0, collected.stderr
    first, second, third = table(out)
    assert first["status"] == third["status"] == "not finished" and first["best_accuracy"] == ""
    assert_real_result(second, out / "upto-conv2")
    assert printed_row(collected.stdout, "upto-fc1")[-2:] == ["not", "finished"]


def test_a_slurm_sweep_checks_its_runs_against_the_memory_asked_of_a_node(images, tmp_path):
    out = tmp_path / "sweep"
    refused = sweep(images, out, "--freeze-upto", "conv1", "--gpu", "cpu", "--slurm", "--no-submit",
                    "--slurm-opt=--mem=1")
    assert_one_line_error(refused, "training (TRAIN net at batch 32 + TEST net at batch 1) peaks at about",
                          "more than the 1.0 MB of the node's memory asked for (--mem=1)")
    assert not out.exists()
    done = sweep(images, out, "--freeze-upto", "conv1", "--slurm", "--no-submit", "--slurm-opt=--mem=4G")
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --mem=4G" in (out / "slurm.sh").read_text().splitlines()


def test_a_sweep_still_training_is_not_replaced(caffe, images, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", *BASE_MODEL, "--gpu", "cpu", "--data", images, "--epochs", 30, "--freeze-upto", "conv1,fc1",
            "-o", out]
    running = subprocess.Popen([sys.executable, "-m", "caffegen", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        log = out / "upto-conv1" / "train.log"
        wait_for(lambda: log.is_file() and "Iteration 20 " in log.read_text(), "the first run's iteration 20")
        refused = run_caffegen(*args, "--force")
        assert_one_line_error(refused, f"a caffegen sweep (process {running.pid}) is training these runs",
                              "before you replace the sweep")
    finally:
        running.send_signal(signal.SIGINT)
        running.communicate(timeout=120)
    assert (out / "sweep.json").is_file() and log.is_file()


def test_bad_sweep_options_are_one_line_errors(caffe, tmp_path):
    cases = [
        (("sweep", "--collect", tmp_path), "no sweep.json"),
        (("sweep", *BASE_MODEL, "--data", tmp_path, "--lr", "0.01", "--base-lr", "0.1", "-o", tmp_path / "s"),
         "--lr (the learning rates to sweep) or --base-lr, not both"),
        (("sweep", *BASE_MODEL, "--data", tmp_path, "--freeze-upto", "conv1,conv1", "-o", tmp_path / "s"),
         "upto-conv1 more than once"),
        (("sweep", *BASE_MODEL, "--data", tmp_path, "--gpus", "0,x", "-o", tmp_path / "s"), "GPU ids such as 0,1"),
        (("sweep", *BASE_MODEL, "--data", tmp_path, "--slurm", "--slurm-opt", "partition=x", "-o", tmp_path / "s"),
         "an sbatch option such as --partition=gpu"),
        (("sweep", "--data", tmp_path, "-o", tmp_path / "s"), "--net and --weights"),
    ]
    for args, message in cases:
        done = run_caffegen(*args)
        assert done.returncode == 2, (args, done.stderr)
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("caffegen: error: ") and message in last and "Traceback" not in done.stderr, args
    assert list(tmp_path.iterdir()) == []


def test_slurm_job_array_trains_every_run_and_collect_gathers_them(slurm, caffe, images, tmp_path):
    out = tmp_path / "slurm sweep"
    done = sweep(images, out, "--freeze-upto", "conv1,conv2", "--slurm", "--slurm-opt=--time=10", env=slurm.env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert job_id.isdigit(), done.stdout
    slurm.wait_for_job(job_id, timeout=180)
    collected = run_caffegen("sweep", "--collect", out, env=slurm.env)
    assert collected.returncode == 0, collected.stderr
    rows = table(out)
    assert [row["run"] for row in rows] == ["upto-conv1", "upto-conv2"]
    for task, row in enumerate(rows):
        log = (out / f"slurm-{job_id}_{task}.out").read_text()
        assert row["status"] == "ok", log + slurm.logs()
        assert_real_result(row, out / row["run"])
        assert f"log: {out / row['run'] / 'train.log'}" in log
        assert printed_row(collected.stdout, row["run"])[4] == f"{float(row['best_accuracy']):.4f}"


def test_sbatch_refusing_the_array_is_a_one_line_error(slurm, caffe, images, tmp_path):
    done = sweep(images, tmp_path / "sweep", "--freeze-upto", "conv1", "--slurm", "--slurm-opt=--partition=nowhere",
                 env=slurm.env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"caffegen: error: {tmp_path / 'sweep' / 'slurm.sh'}: sbatch refused the job array: "
        "sbatch: error: Batch job submission failed: Invalid partition name specified")


def stores(sweep_dir):
    """The sweep's feature stores that hold a finished extraction."""
    return sorted(path.parent for path in (sweep_dir / "features").glob("*/cache.json"))


def cache_record(run_dir):
    return result(run_dir)["cache"]


def test_cached_runs_with_one_trunk_compute_its_features_once(caffe, images, tmp_path):
    out = tmp_path / "sweep"
    # With Caffe as the engine, extract.log shows each extraction that ran.
    done = sweep(images, out, "--freeze-upto", "conv1,conv2", "--lr", "0.02,0.01,0.005", "--cache-features",
                 "--engine", "caffe", epochs=1)
    assert done.returncode == 0, done.stderr
    assert len(stores(out)) == 2
    runs = [row["run"] for row in table(out)]
    assert len(runs) == 6 and {row["status"] for row in table(out)} == {"ok"}
    by_trunk = {}
    for run in runs:
        record = cache_record(out / run)
        by_trunk.setdefault(run.split("_")[0], []).append((record["reused"], record["store"]))
    for point, records in by_trunk.items():
        assert [reused for reused, _ in records] == [False, True, True], point
        assert len({store for _, store in records}) == 1 and Path(records[0][1]).parent == out / "features"
    assert {store for records in by_trunk.values() for _, store in records} == {str(path) for path in stores(out)}
    # Caffe ran the trunk once per chunk of each store, never for the runs that reused it.
    assert done.stderr.count("trunk features:") == 6 and done.stderr.count("(reused from ") == 4
    # conv2 costs most of its trunk's work, so its features are not worth deriving from pool1's.
    assert "not deriving 'pool2' from the cached 'pool1' of " in done.stderr
    assert "not worth it" in done.stderr.split("not deriving 'pool2'")[1].splitlines()[0]
    for store in stores(out):
        log = (store / "extract.log").read_text()
        assert log.count("Successfully extracted the features!") == len(list(store.glob("*.h5"))) >= 2

    # A store whose extraction did not finish is never reused: launching again computes it anew.
    first = stores(out)[0]
    (first / "cache.json").unlink()
    again = run_caffegen("launch", out / by_trunk_run(out, first))
    assert again.returncode == 0, again.stderr
    assert f"(computed into {first})" in again.stderr and (first / "cache.json").is_file()


def by_trunk_run(sweep_dir, store):
    """A run of the sweep that reads ``store``."""
    return next(row["run"] for row in table(sweep_dir) if cache_record(sweep_dir / row["run"])["store"] == str(store))


def test_unshared_sweep_keeps_a_store_per_run(caffe, images, tmp_path):
    options = JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images,
                         epochs=1, cache_features=True)
    planned = combinations(options, ("conv2",), (), (0.01, 0.005))
    shared = prepare_sweep(planned, tmp_path / "shared")
    alone = prepare_sweep(planned, tmp_path / "alone", share_features=False)
    assert [store_of(RunDir(tmp_path / "shared" / run.run_dir)).path for run in shared] == \
        [tmp_path / "shared" / "features" / store_of(RunDir(tmp_path / "shared" / shared[0].run_dir)).key[:16]] * 2
    assert [store_of(RunDir(tmp_path / "alone" / run.run_dir)).path for run in alone] == \
        [tmp_path / "alone" / run.run_dir / "features" for run in alone]


@pytest.mark.parametrize("copy_data", [False, True], ids=["images-in-place", "images-copied"])
def test_the_slurm_scripts_group_the_runs_by_the_plans_prepare_worked_out(images, tmp_path, monkeypatch, copy_data):
    options = JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images,
                         epochs=1, cache_features=True, copy_data=copy_data)
    planned = combinations(options, ("conv1", "conv2"), (), (0.01, 0.005))
    plans = []
    monkeypatch.setattr(cacheplan, "plan_cache", recording(cacheplan.plan_cache, plans))
    out = tmp_path / "sweep"
    runs = prepare_sweep(planned, out)
    assert len(plans) == 4  # one per run, as prepare checks it
    features, _ = write_slurm_scripts(out, runs)
    grouped = feature_groups(out, runs)
    assert len(plans) == 4  # the scripts were written from the same plans
    # The stores are those each run finds on its own, where it lies now.
    found = {}
    for run in runs:
        found.setdefault(store_of(RunDir(out / run.run_dir)).path, []).append(run.run_dir)
    assert {store: [run.run_dir for run in group] for store, group in grouped.items()} == found
    assert len(found) == (4 if copy_data else 2)
    assert "#SBATCH --array=0-%d" % (len(found) - 1) in features.read_text().splitlines()


def test_slurm_computes_shared_features_in_a_job_the_runs_depend_on(slurm, caffe, images, tmp_path):
    out = tmp_path / "cached sweep"
    done = sweep(images, out, "--freeze-upto", "conv1,conv2", "--lr", "0.01,0.005", "--cache-features", "--slurm",
                 "--slurm-opt=--time=10", epochs=1, env=slurm.env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    features_job = done.stderr.split("submitted the trunk features as job array ")[1].split(";")[0]
    assert job_id.isdigit() and features_job.isdigit() and features_job != job_id
    dependency = slurm.client("scontrol", "show", "job", job_id).stdout
    assert "KillOInInvalidDependent=Yes" in dependency  # a failed features job cancels the runs
    assert f"Dependency=afterok:{features_job}" in dependency.replace("(unfulfilled)", "")
    assert "#SBATCH --array=0-1" in (out / "slurm_features.sh").read_text().splitlines()
    slurm.wait_for_job(job_id, timeout=300)
    collected = run_caffegen("sweep", "--collect", out, env=slurm.env)
    assert collected.returncode == 0, collected.stderr
    rows = table(out)
    assert len(stores(out)) == 2
    for task, row in enumerate(rows):
        log = (out / f"slurm-{job_id}_{task}.out").read_text()
        assert row["status"] == "ok", log + slurm.logs()
        assert cache_record(out / row["run"])["reused"] is True, log
    for task in range(2):
        assert "(computed)" in (out / f"slurm-features-{features_job}_{task}.out").read_text()


def features(store):
    """The (features, labels) of every chunk of a store, in chunk order."""
    import h5py
    arrays = []
    for path in sorted(store.glob("*.h5")):
        with h5py.File(path, "r") as stored:
            arrays.append((stored["data"][...], stored["label"][...]))
    return arrays


def test_features_derived_from_opencv_features_record_both_engines(caffe, images, tmp_path):
    out = tmp_path / "sweep"
    done = sweep(images, out, "--freeze-upto", "conv2,fc1", "--lr", "0.01", "--cache-features", "--engine", "opencv",
                 epochs=1)
    assert done.returncode == 0, done.stderr
    assert "deriving 'fc1' from the cached 'pool2' of " in done.stderr
    shallow, deep = (cache_record(out / run) for run in ("upto-conv2_lr-0.01", "upto-fc1_lr-0.01"))
    assert shallow["engine"] == "opencv"
    assert deep["engine"] == "caffe and opencv", "Caffe computed fc1 from features that OpenCV computed"


def test_a_deeper_trunk_is_computed_from_the_shallower_features(caffe, images, tmp_path):
    out = tmp_path / "sweep"
    # One engine throughout, so that derived and direct features sum in the same order.
    done = sweep(images, out, "--freeze-upto", "conv2,fc1", "--lr", "0.01", "--cache-features", "--engine", "caffe",
                 epochs=1)
    assert done.returncode == 0, done.stderr
    shallow, deep = (Path(cache_record(out / run)["store"]) for run in ("upto-conv2_lr-0.01", "upto-fc1_lr-0.01"))
    assert f"deriving 'fc1' from the cached 'pool2' of {shallow}: " in done.stderr
    assert "HDF5Data" in (deep / "train_0000.prototxt").read_text()
    assert (deep / "train_0000.source.txt").read_text() == f"{shallow / 'train_0000.h5'}\n"
    # The same features as the trunk computes from the images: a run of its own, nothing shared.
    alone = tmp_path / "alone"
    assert run_caffegen("prepare", *BASE_MODEL, "--data", images, "--freeze-upto", "fc1", "--epochs", "1",
                        "--cache-features", "--engine", "caffe", "-o", alone).returncode == 0
    assert run_caffegen("launch", alone).returncode == 0
    derived, direct = features(deep), features(alone / "features")
    assert len(derived) == len(direct) >= 2
    for (derived_data, derived_labels), (direct_data, direct_labels) in zip(derived, direct):
        assert derived_data.shape == direct_data.shape and derived_data.shape[1:] == (64,)  # fc1: 64 values an image
        np.testing.assert_array_equal(derived_labels, direct_labels)
        np.testing.assert_allclose(derived_data, direct_data, rtol=1e-6, atol=1e-6)
    assert table(out)[1]["status"] == "ok"
