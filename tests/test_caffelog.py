"""The log parser on real Caffe 1.0 logs (tests/data/logs, made by make_logs.py) and on a live run."""

import math
import os
import signal
import subprocess
from pathlib import Path

from caffegen.run import caffelog
from caffegen.run.caffelog import LogWatcher, Progress, Snapshot, parse_log
from caffegen.run.diagnose import Diagnosis

LOGS = Path(__file__).parent / "data" / "logs"


def log_lines(name):
    return (LOGS / f"{name}.log").read_text().splitlines(keepends=True)


def watch(name):
    return parse_log(log_lines(name))


def of_type(events, kind):
    return [event for event in events if isinstance(event, kind)]


def message_lines(lines, marker):
    """The glog messages of ``lines`` that contain ``marker``, read with plain string operations."""
    return [line.split("] ", 1)[1].rstrip("\n") for line in lines if marker in line and "] " in line]


def display_losses(lines):
    """{iteration: loss} of the display lines, read independently of the parser."""
    return {int(text.split()[1]): float(text.rsplit("loss = ", 1)[1]) for text in message_lines(lines, " iter/s, ")}


class TestCleanRun:
    def test_iterations_and_max_iter(self):
        watcher, _ = watch("train_ok")
        assert watcher.max_iter == 60
        assert watcher.iteration == 60
        assert [record["iteration"] for record in watcher.records] == list(range(0, 65, 5))
        assert watcher.done and not watcher.stopped_early

    def test_losses_match_the_display_lines(self):
        watcher, events = watch("train_ok")
        by_iteration = {record["iteration"]: record for record in watcher.records}
        for iteration, loss in display_losses(log_lines("train_ok")).items():
            assert by_iteration[iteration]["loss"] == loss
        assert [event.iteration for event in of_type(events, Progress)] == list(range(0, 65, 5))

    def test_final_loss_is_the_last_loss_line(self):
        watcher, events = watch("train_ok")
        last = message_lines(log_lines("train_ok"), "Iteration 60, loss = ")[-1]
        assert watcher.records[-1]["loss"] == float(last.rsplit(" ", 1)[1])
        assert of_type(events, Progress)[-1] == Progress(60, float(last.rsplit(" ", 1)[1]), None)

    def test_training_outputs_and_learning_rate_steps(self):
        watcher, _ = watch("train_ok")
        first = watcher.records[0]
        assert first["train/loss"] == 1.16164
        assert {record["lr"] for record in watcher.records if "lr" in record and record["iteration"] < 40} == {0.01}
        assert {record["lr"] for record in watcher.records if "lr" in record and record["iteration"] >= 40} == {0.001}

    def test_test_results(self):
        watcher, events = watch("train_ok")
        results = of_type(events, caffelog.TestResult)
        assert [result.iteration for result in results] == [0, 20, 40, 60]
        assert results[0].outputs == {"test/accuracy": 0.6875, "test/loss": 0.999657}
        assert watcher.latest_test == {"iteration": 60, **results[-1].outputs}
        assert watcher.records[0]["test/accuracy"] == 0.6875

    def test_snapshots(self):
        watcher, events = watch("train_ok")
        assert watcher.snapshots == ["base_iter_30.caffemodel", "base_iter_30.solverstate",
                                     "base_iter_60.caffemodel", "base_iter_60.solverstate"]
        assert of_type(events, Snapshot)[:2] == [Snapshot("base_iter_30.caffemodel", "weights"),
                                                 Snapshot("base_iter_30.solverstate", "solverstate")]

    def test_rates_skip_the_first_garbage_one(self):
        watcher, events = watch("train_ok")
        printed = [float(text.split("(")[1].split()[0]) for text in message_lines(log_lines("train_ok"), " iter/s, ")]
        assert watcher.rates == printed[1:]
        assert of_type(events, Progress)[0].rate is None
        assert of_type(events, Progress)[1].rate == printed[1]

    def test_solver_echo_is_read_and_the_net_echo_is_not(self):
        watcher, _ = watch("train_ok")
        assert watcher.solver["base_lr"] == "0.01"
        assert watcher.solver["net"] == "net.prototxt"
        assert "name" not in watcher.solver and "level" not in watcher.solver

    def test_layers_without_backward_are_those_of_the_training_net(self):
        watcher, _ = watch("train_ok")
        assert watcher.no_backward == ["data"]

    def test_nothing_to_diagnose(self):
        for name in ("train_ok", "finetune", "resume", "outputs", "interrupted"):
            watcher, events = watch(name)
            assert not watcher.diagnoses and not of_type(events, Diagnosis), name

    def test_lines_with_or_without_newlines_give_the_same_records(self):
        with_newlines, _ = parse_log(log_lines("train_ok"))
        without, _ = parse_log(line.rstrip("\n") for line in log_lines("train_ok"))
        assert with_newlines.records == without.records

    def test_a_test_that_ends_the_log_is_reported_by_close(self):
        lines = log_lines("train_ok")
        last_output = max(i for i, line in enumerate(lines) if "Test net output" in line)
        watcher = LogWatcher()
        fed = [event for line in lines[:last_output + 1] for event in watcher.feed(line)]
        assert of_type(fed, caffelog.TestResult)[-1].iteration == 40
        assert [result.iteration for result in watcher.close()] == [60]


class TestFineTuneAndResume:
    def test_finetune(self):
        watcher, _ = watch("finetune")
        assert watcher.finetuned_from == "base_iter_60.caffemodel"
        assert watcher.resumed_from is None
        assert {"conv1", "relu1"} <= set(watcher.no_backward)
        assert "fc_ft" not in watcher.no_backward
        assert "ft_iter_40.caffemodel" in watcher.snapshots

    def test_resume_starts_at_the_snapshot(self):
        watcher, _ = watch("resume")
        assert watcher.resumed_from == "base_iter_30.solverstate"
        assert watcher.finetuned_from is None
        assert watcher.records[0]["iteration"] == 30
        assert watcher.records[-1]["iteration"] == 60 and watcher.done


class TestOutputNames:
    def test_several_test_nets_and_outputs_of_several_values(self):
        watcher, events = watch("outputs")
        first = of_type(events, caffelog.TestResult)[:2]
        assert [result.net for result in first] == [0, 1]
        assert list(first[0].outputs) == ["test/accuracy", "test/loss", "test/per_class", "test/per_class[1]",
                                          "test/per_class[2]"]
        assert list(first[1].outputs)[0] == "test1/accuracy"
        assert watcher.records[0]["train/per_class[2]"] == 0.5
        assert set(watcher.latest_test) >= {"iteration", "test/accuracy", "test1/accuracy"}


class TestInterrupted:
    def test_sigint_stops_with_a_snapshot(self):
        watcher, events = watch("interrupted")
        assert watcher.stopped_early and watcher.done
        weights, state = of_type(events, Snapshot)
        assert (weights.kind, state.kind) == ("weights", "solverstate")
        snapshot_iteration = int(weights.path.rsplit("_iter_", 1)[1].split(".")[0])
        assert watcher.iteration == 3000 < snapshot_iteration < watcher.max_iter


class TestFailedRuns:
    def test_nan_losses_parse_as_nan(self):
        watcher, _ = watch("diverge_nan")
        assert math.isnan(watcher.records[-1]["loss"])
        assert not math.isnan(watcher.records[0]["loss"])

    def test_a_fatal_error_before_training(self):
        watcher, events = watch("shape_mismatch")
        assert watcher.records == [] and watcher.iteration is None
        assert not watcher.done
        assert [event.kind for event in events] == ["shape_mismatch"]

    def test_stack_traces_and_hdf5_chatter_add_nothing(self):
        watcher, events = watch("missing_weights")
        assert [event.kind for event in events] == ["missing_weights"]
        assert watcher.finetuned_from == "missing.caffemodel"


GLOG = dict(os.environ, GLOG_logtostderr="1")

LIVE_NET = """name: "live"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { data_filler { type: "gaussian" std: 1 } data_filler { %s }
                     shape { dim: 8 dim: 2 dim: 6 dim: 6 } shape { dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
"""

LIVE_SOLVER = """net: "net.prototxt"
base_lr: %s
lr_policy: "fixed"
max_iter: %d
display: 5
test_iter: 1
test_interval: 10
snapshot: 10
snapshot_prefix: "live"
solver_mode: CPU
random_seed: 1
"""


def start_caffe(caffe, workdir, labels, base_lr, max_iter):
    (workdir / "net.prototxt").write_text(LIVE_NET % labels)
    (workdir / "solver.prototxt").write_text(LIVE_SOLVER % (base_lr, max_iter))
    return subprocess.Popen([str(caffe), "train", "-solver", "solver.prototxt"], cwd=workdir, env=GLOG, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


class TestLiveCaffe:
    def test_records_of_live_output_match_the_log(self, caffe, tmp_path):
        watcher, lines, events = LogWatcher(), [], []
        with start_caffe(caffe, tmp_path, 'type: "constant" value: 2', 0.01, 30) as process:
            for line in process.stdout:
                lines.append(line)
                events += watcher.feed(line)
        events += watcher.close()
        assert process.returncode == 0, "".join(lines[-30:])
        assert watcher.max_iter == 30 and watcher.iteration == 30 and watcher.done
        by_iteration = {record["iteration"]: record for record in watcher.records}
        displayed = display_losses(lines)
        assert sorted(displayed) == [0, 5, 10, 15, 20, 25]
        assert all(by_iteration[iteration]["loss"] == loss for iteration, loss in displayed.items())
        assert [result.iteration for result in of_type(events, caffelog.TestResult)] == [0, 10, 20, 30]
        assert [event.path for event in of_type(events, Snapshot)] == watcher.snapshots
        assert all((tmp_path / path).is_file() for path in watcher.snapshots)
        assert "live_iter_30.caffemodel" in watcher.snapshots

    def test_a_diverging_run_is_stopped_at_its_diagnosis(self, caffe, tmp_path):
        watcher, stop = LogWatcher(), None
        with start_caffe(caffe, tmp_path, 'type: "uniform" min: 0 max: 2.99', 1000, 10000000) as process:
            for line in process.stdout:
                stop = next((event for event in watcher.feed(line) if isinstance(event, Diagnosis) and event.stop),
                            None)
                if stop:
                    process.terminate()
                    process.wait()
                    break
        assert stop is not None and stop.kind == "diverged"
        assert process.returncode == -signal.SIGTERM, "Caffe should still have been running"
        losses = [record["loss"] for record in watcher.records if "loss" in record]
        assert math.isnan(losses[-1]) and all(math.isfinite(loss) for loss in losses[:-1])
        assert not watcher.done


def test_a_data_thread_line_inside_a_test_does_not_cut_it():
    """Real lines of a run whose prefetch thread printed between the test's header and its outputs."""
    lines = [
        "I1124 03:34:08.410923 18171 solver.cpp:347] Iteration 0, Testing net (#0)",
        "I1124 03:34:08.410931 18171 blocking_queue.cpp:49] Waiting for data",
        "I1124 03:34:08.468472 18171 solver.cpp:414]     Test net output #0: accuracy = 0.21",
        "I1124 03:34:08.468677 18171 solver.cpp:414]     Test net output #1: loss = 5.05149 (* 1 = 5.05149 loss)",
        "I1124 03:34:08.488790 18171 solver.cpp:239] Iteration 0 (-1.14954e+22 iter/s, 0.078s/5 iters), loss = 5.8944",
    ]
    watcher = LogWatcher()
    for line in lines:
        watcher.feed(line)
    assert watcher.records[0]["test/accuracy"] == 0.21 and watcher.records[0]["loss"] == 5.8944
    assert watcher.latest_test["test/accuracy"] == 0.21
