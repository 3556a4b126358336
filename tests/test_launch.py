"""Launching prepared jobs with real Caffe: progress, curves, diagnosis, interruption, resume, the demo."""

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DIGITS, assert_one_line_error, copy_run, gpu_caffe, run_caffegen, wait_for

from caffegen import reporting
from caffegen.io.caffemodel import read_caffemodel
from caffegen.io.prototxt import read_solver


def prepare(images, run_dir, *extra, epochs=3):
    result = run_caffegen("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                          "--data", images, "--freeze-upto", "conv2", "--epochs", epochs, "-o", run_dir, *extra)
    assert result.returncode == 0, result.stderr
    return run_dir


def curve_rows(run_dir):
    with open(run_dir / "curves.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_prepare_then_launch(caffe, images, tmp_path):
    run = prepare(images, tmp_path / "run")
    result = run_caffegen("launch", run)
    assert result.returncode == 0, result.stderr
    log = (run / "train.log").read_text()
    assert "Optimization Done." in log and "Finetuning from" in log
    for frozen in ("conv1", "bn1", "scale1", "conv2", "bn2", "scale2"):
        assert f"{frozen} does not need backward computation." in log
    assert "fc1 does not need backward computation." not in log
    rows = curve_rows(run)
    assert rows[0]["iteration"] == "0" and rows[-1]["iteration"] == "69"
    assert {"loss", "lr", "test/accuracy", "test/loss"} <= set(rows[0])
    last_accuracy = [float(row["test/accuracy"]) for row in rows if row["test/accuracy"]][-1]
    assert last_accuracy > 0.8
    assert f"validation accuracy: last {last_accuracy:.4f}" in result.stderr
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "snapshots" / "ft_iter_69.caffemodel").is_file()
    assert f"final model: {run / 'snapshots' / 'ft_iter_69.caffemodel'}" in result.stderr


def launch_until(run, iteration):
    """``caffegen launch`` in the background, returned once Caffe has logged ``iteration``."""
    launch = subprocess.Popen([sys.executable, "-m", "caffegen", "launch", str(run)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: f"Iteration {iteration} " in _read(run / "train.log"), f"Caffe's iteration {iteration}")
    return launch


def test_interrupt_then_resume_reaches_max_iter(caffe, images, tmp_path):
    run = prepare(images, tmp_path / "run", epochs=30)
    launch = launch_until(run, 100)
    launch.send_signal(signal.SIGINT)
    _, stderr = launch.communicate(timeout=60)
    assert launch.returncode == 130, stderr
    assert "Optimization stopped early." in _read(run / "train.log")
    assert "--resume" in stderr and ".solverstate" in stderr
    state = stderr.split("snapshot: ")[1].split(";")[0]
    stopped_at = int(state.rpartition("_iter_")[2].removesuffix(".solverstate"))
    assert 100 <= stopped_at < 690 and (run / "snapshots" / f"ft_iter_{stopped_at}.caffemodel").is_file()

    result = run_caffegen("launch", run, "--resume")
    assert result.returncode == 0, result.stderr
    log = _read(run / "train.log")
    first_run, _, second_run = log.partition("Optimization stopped early.")
    assert "Finetuning from" in first_run and "Finetuning from" not in second_run
    assert f"Resuming from snapshots/ft_iter_{stopped_at}.solverstate" in second_run
    iterations = [int(row["iteration"]) for row in curve_rows(run)]
    assert iterations == sorted(set(iterations))
    assert iterations[0] == 0 and iterations[-1] == 690 and any(i < stopped_at for i in iterations)


def _read(path):
    return path.read_text() if path.exists() else ""


def test_without_a_terminal_progress_is_a_line_per_test_pass(caffe, images, tmp_path):
    run = prepare(images, tmp_path / "run")
    result = run_caffegen("launch", run)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if re.fullmatch(r"iteration \d+/69: .*", line)]
    tests = [int(row["iteration"]) for row in curve_rows(run) if row.get("test/accuracy")]
    assert [int(line.split()[1].split("/")[0]) for line in lines] == tests and len(tests) >= 3
    assert all(re.search(r"loss [\d.e+-]+, val acc 0\.\d{3}$", line) for line in lines[1:]), lines


def test_without_a_terminal_a_line_comes_at_least_every_interval(caffe, images, tmp_path, monkeypatch):
    monkeypatch.setattr(reporting, "PLAIN_EVERY_S", 0)  # every display line is then past the interval
    run = prepare(images, tmp_path / "run")
    result = run_caffegen("launch", run)
    shown = {int(line.split()[1].split("/")[0]) for line in result.stderr.splitlines()
             if re.match(r"iteration \d+/69", line)}
    assert {int(row["iteration"]) for row in curve_rows(run) if row.get("loss")} <= shown


def test_sigterm_stops_caffe_with_a_snapshot_and_leaves_nothing_running(caffe, images, tmp_path):
    run = prepare(images, tmp_path / "run", epochs=30)
    launch = launch_until(run, 60)
    children = Path(f"/proc/{launch.pid}/task/{launch.pid}/children").read_text().split()
    launch.send_signal(signal.SIGTERM)
    _, stderr = launch.communicate(timeout=90)
    assert launch.returncode == 143 and stderr.strip().splitlines()[-1] == "caffegen: terminated", stderr
    assert children and not any(Path(f"/proc/{child}").exists() for child in children)
    log = _read(run / "train.log")
    assert "Snapshotting to binary proto file" in log and log.rstrip().endswith("Optimization Done.")
    # Caffe's output was followed to its end: its snapshot is an event too, and the run's result is recorded.
    events = [json.loads(line) for line in _read(run / "events.jsonl").splitlines()]
    models = [event["path"] for event in events if event["event"] == "snapshot" and event["kind"] == "weights"]
    snapshotted = [line for line in log.splitlines() if "Snapshotting to binary proto file" in line]
    assert models and snapshotted[-1].endswith(f"Snapshotting to binary proto file {models[-1]}")
    result = json.loads((run / "result.json").read_text())
    assert result["interrupted"] and result["final_model"] == models[-1]



def test_sigterm_during_a_cached_runs_head_training_still_records_the_merged_model(caffe, images, tmp_path):
    """The head's snapshot alone holds no trunk: the run's model is final.caffemodel, merged on the way out."""
    run = prepare(images, tmp_path / "run", "--cache-features", "--engine", "caffe", epochs=60)
    launch = launch_until(run, 40)
    launch.send_signal(signal.SIGTERM)
    _, stderr = launch.communicate(timeout=90)
    assert launch.returncode == 143 and stderr.strip().splitlines()[-1] == "caffegen: terminated", stderr
    result = json.loads((run / "result.json").read_text())
    assert result["interrupted"] and result["final_model"] == "final.caffemodel" and result["cache"]["boundary"]
    merged = {layer.name for layer in read_caffemodel(run / "final.caffemodel").layers}
    assert {"conv1", "conv2"} <= merged

def test_one_launch_per_run_directory(caffe, images, tmp_path):
    """A second launch, or a prepare --force, while one trains: refused naming the first; the first goes on."""
    run = prepare(images, tmp_path / "run", epochs=10)
    first = launch_until(run, 30)
    try:
        second = run_caffegen("launch", run)
        assert_one_line_error(second, f"a caffegen launch (process {first.pid}) is training in this run "
                                      "directory", "before you launch it again")
        replaced = run_caffegen("prepare", "--gpu", "cpu", "--net", DIGITS / "train_val.prototxt", "--weights",
                                DIGITS / "digits.caffemodel", "--data", images, "--force", "-o", run)
        assert_one_line_error(replaced, f"a caffegen launch (process {first.pid}) is training in this run directory",
                              "before you replace it")
    finally:
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    log = _read(run / "train.log")
    assert log.count("Solving ") == 1 and "Optimization Done." in log
    assert run_caffegen("launch", run, "--resume").returncode == 0  # free again once the first ended


def test_resume_passes_over_a_snapshot_cut_short(trained_digits, tmp_path):
    """As after a full disk or a kill while Caffe wrote its last snapshot: the one before is resumed from."""
    run = copy_run(trained_digits, tmp_path)
    newest = run / "snapshots" / "ft_iter_46.solverstate"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    result = run_caffegen("launch", run, "--resume")
    assert result.returncode == 0, result.stderr
    assert "snapshots/ft_iter_46.solverstate: ft_iter_46.solverstate is cut short (" in result.stderr
    assert "Resuming from snapshots/ft_iter_23.solverstate" in _read(run / "train.log")


def test_diverging_run_is_stopped_and_explained(caffe, images, tmp_path):
    run = prepare(images, tmp_path / "run", "--base-lr", "1000", epochs=30)
    result = run_caffegen("launch", run)
    assert result.returncode == 3, result.stderr
    assert "learning rate" in result.stderr and "Traceback" not in result.stderr
    log = _read(run / "train.log")
    assert "Optimization Done." not in log
    # Stopped as soon as the loss diverged, long before the schedule's end.
    max_iter = read_solver(run / "solver.prototxt").max_iter
    last = max(int(found) for found in re.findall(r"Iteration (\d+)", log))
    assert last < max_iter / 10, (last, max_iter)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    diagnoses = [event for event in events if event["event"] == "diagnosis"]
    assert diagnoses and diagnoses[0]["stop"] and "learning rate" in diagnoses[0]["message"]


def test_labels_beyond_the_classifier_are_refused_before_caffe_runs(caffe, images, tmp_path):
    run = prepare(images, tmp_path / "run")
    lines = (run / "val.txt").read_text().splitlines()
    lines[3] = lines[3].rpartition(" ")[0] + " 5"
    (run / "val.txt").write_text("\n".join(lines) + "\n")
    result = run_caffegen("launch", run)
    assert_one_line_error(result, f"{run / 'val.txt'}:4: label '5' is not in 0…4")
    assert not (run / "train.log").exists()


def test_gpu_on_a_cpu_only_caffe_is_refused(caffe, images, tmp_path):
    run = prepare(images, tmp_path / "run")
    result = run_caffegen("launch", run, "--gpu", "0")
    assert_one_line_error(result, "CPU-only build", "drop --gpu")
    assert not (run / "train.log").exists()


def test_a_gpu_job_is_refused_at_prepare_for_a_cpu_only_caffe(caffe, images, tmp_path):
    refused = run_caffegen("prepare", "--gpu", "0", "--caffe", caffe, "--net", DIGITS / "train_val.prototxt",
                           "--weights", DIGITS / "digits.caffemodel", "--data", images, "-o", tmp_path / "run")
    assert_one_line_error(refused, f"{caffe} is a CPU-only build and cannot use --gpu 0", "drop --gpu")
    assert not (tmp_path / "run").exists()


def test_prepared_for_gpu_falls_back_to_cpu(caffe, images, tmp_path):
    """A run prepared for a GPU elsewhere, then launched here with a CPU-only Caffe."""
    run = prepare(images, tmp_path / "run", "--gpu", "0", "--caffe", gpu_caffe(tmp_path / "cuda"))
    assert "-gpu 0" in (run / "train.sh").read_text()
    result = run_caffegen("launch", run)
    assert result.returncode == 0, result.stderr
    assert "CPU-only build: training on the CPU" in result.stderr
    assert "solver_mode: CPU" in (run / "solver.prototxt").read_text()


def test_demo_leaves_a_run_directory_that_launches_again(caffe, tmp_path):
    demo = tmp_path / "demo"
    result = run_caffegen("demo", "-o", demo)
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stderr.split("validation accuracy: last ")[1].split()[0])
    assert accuracy > 0.9
    for name in ("train_val.prototxt", "deploy.prototxt", "solver.prototxt", "train.txt", "val.txt", "labels.txt",
                 "train.sh", "train.bat", "manifest.json", "train.log", "curves.csv", "curves.png",
                 "base.caffemodel", "snapshots/ft_iter_230.caffemodel", "eval/metrics.json", "eval/report.html"):
        assert (demo / name).is_file(), name
    # The demo ends with its evaluation: the metrics line on stdout, the report's path last.
    top1 = json.loads((demo / "eval" / "metrics.json").read_text())["top1"]
    assert result.stdout.startswith(f"evaluation: top-1 {top1:.4f}") and top1 > 0.9
    # The validation accuracy Caffe reports counts each validation image once: it is evaluate's top-1.
    last = json.loads((demo / "result.json").read_text())["last_accuracy"]
    assert last == pytest.approx(top1, abs=1e-5) and f"{accuracy:.4f}" == f"{top1:.4f}"
    assert result.stderr.strip().splitlines()[-1].endswith("report: " + str(demo / "eval" / "report.html"))
    assert_one_line_error(run_caffegen("demo", "-o", demo), str(demo), "exists; pass --force")
    again = run_caffegen("launch", demo)
    assert again.returncode == 0, again.stderr


def test_sigint_sent_to_caffe_itself_counts_as_an_interruption(caffe, images, tmp_path):
    """As when a scheduler preempts the job: Caffe snapshots and stops; the run is resumable."""
    run = prepare(images, tmp_path / "run", epochs=30)
    launch = launch_until(run, 60)
    children = Path(f"/proc/{launch.pid}/task/{launch.pid}/children").read_text().split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGINT)
    _, stderr = launch.communicate(timeout=60)
    assert launch.returncode == 130, stderr
    assert "--resume" in stderr and json.loads((run / "result.json").read_text())["interrupted"] is True


def test_events_and_curves_can_be_read_while_it_trains(caffe, images, tmp_path):
    """events.jsonl and curves.csv are the run directory's account of a run going on, line by line."""
    run = prepare(images, tmp_path / "run", epochs=100)  # still training when curves.png is first redrawn
    launch = launch_until(run, 0)
    # events.jsonl hears of a test pass just before curves.csv is rewritten with it
    wait_for(lambda: len(_test_events(run)) >= 3 and len(_tested_rows(run)) >= 3,
             "three test passes in events.jsonl and curves.csv")
    during = _test_events(run)
    rows_during = curve_rows(run)
    wait_for(lambda: (run / "curves.png").exists(), "curves.png")
    still_training = launch.poll() is None
    launch.send_signal(signal.SIGINT)
    _, stderr = launch.communicate(timeout=60)
    assert still_training and launch.returncode == 130, stderr

    tested_during = [int(row["iteration"]) for row in rows_during if row["test/accuracy"]]
    assert tested_during[:3] == [event["iteration"] for event in during[:3]] and len(tested_during) < 31
    final = curve_rows(run)
    assert final[:len(rows_during) - 1] == rows_during[:-1]  # the last row of then may since have gained a loss
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    tests = [event for event in events if event["event"] == "test_result"]
    assert [event["iteration"] for event in tests] == [int(row["iteration"]) for row in final if row["test/accuracy"]]
    assert [event["outputs"]["test/accuracy"] for event in tests] == \
        [float(row["test/accuracy"]) for row in final if row["test/accuracy"]]
    shown = [event["iteration"] for event in events if event["event"] == "progress"]
    assert shown == sorted(shown) and shown[-1] > tests[0]["iteration"]
    written = {event["path"] for event in events if event["event"] == "snapshot"}
    stopped_at = stderr.split("snapshot: ")[1].split(";")[0]
    assert Path(stopped_at).name in {Path(path).name for path in written}
    assert all(event["time"] >= events[0]["time"] for event in events)


def _tested_rows(run):
    """The rows of curves.csv with a test result, as it is now (missing before the first test pass)."""
    return [row for row in curve_rows(run) if row.get("test/accuracy")] if (run / "curves.csv").exists() else []


def _test_events(run):
    """The test results in events.jsonl so far: every line there is whole, so each parses."""
    lines = _read(run / "events.jsonl").splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == "test_result"]


def test_the_launch_prepare_shows_passes_its_caffe_on_and_runs_as_shown(caffe, images, tmp_path):
    run = tmp_path / "my run"
    done = run_caffegen("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                        "--data", images, "--freeze-upto", "conv2", "--epochs", 1, "--caffe", caffe, "-o", run)
    assert done.returncode == 0, done.stderr
    shown = done.stderr.strip().splitlines()[-1]
    assert shown.startswith("run it with: ")
    words = shlex.split(shown.removeprefix("run it with: "))
    assert words == ["caffegen", "launch", str(run), "--caffe", str(Path(caffe).resolve())]
    launched = run_caffegen(*words[1:])
    assert launched.returncode == 0, launched.stderr
    assert "Optimization Done." in (run / "train.log").read_text()
