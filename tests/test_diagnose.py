"""Every diagnosis, proven on a real Caffe 1.0 log (tests/data/logs, made by make_logs.py)."""

import math
from pathlib import Path

import pytest

from caffegen.run.caffelog import LogWatcher, parse_log
from caffegen.run.diagnose import STUCK_LOSS, Diagnosis

LOGS = Path(__file__).parent / "data" / "logs"


def log_lines(name):
    return (LOGS / f"{name}.log").read_text().splitlines(keepends=True)


def only_diagnosis(name):
    """The one diagnosis of log ``name``, checked to be reported once, as an event and on the watcher."""
    watcher, events = parse_log(log_lines(name))
    diagnoses = [event for event in events if isinstance(event, Diagnosis)]
    assert len(diagnoses) == 1 and watcher.diagnoses == diagnoses, diagnoses
    assert diagnoses[0].stop
    return diagnoses[0]


def line_of_diagnosis(name):
    """The line whose feeding returned the first diagnosis."""
    watcher = LogWatcher()
    return next(line for line in log_lines(name) if any(isinstance(e, Diagnosis) for e in watcher.feed(line)))


def fatal_message(name):
    """The message of the log's F-line, read with plain string operations."""
    return next(line.split("] ", 1)[1].rstrip("\n") for line in log_lines(name) if line.startswith("F"))


class TestLoss:
    def test_nan_loss_stops_the_run(self):
        diagnosis = only_diagnosis("diverge_nan")
        assert diagnosis.kind == "diverged"
        assert "base_lr is 1000, try 100." in diagnosis.message
        assert "labels run from 0 to num_output-1" in diagnosis.message

    def test_nan_is_diagnosed_at_the_first_nan_display(self):
        line = line_of_diagnosis("diverge_nan")
        losses = [text for text in log_lines("diverge_nan") if " iter/s, " in text]
        first_nan = next(text for text in losses if "nan" in text.rsplit("loss = ", 1)[1])
        assert line == first_nan
        assert f"loss became nan at iteration {first_nan.split('Iteration ')[1].split()[0]}:" in \
            only_diagnosis("diverge_nan").message

    def test_loss_stuck_at_87_stops_the_run(self):
        diagnosis = only_diagnosis("stuck_87")
        assert diagnosis.kind == "stuck_loss"
        assert "87.3365 for 3 displays (iterations 24 to 26)" in diagnosis.message
        assert "base_lr is 10, try 1." in diagnosis.message
        assert "scale: 0.00390625" in diagnosis.message and "shuffle: true" in diagnosis.message

    def test_single_displays_at_87_are_not_enough(self):
        line = line_of_diagnosis("stuck_87")
        assert "Iteration 26 (" in line and line.rstrip().endswith("loss = 87.3365")
        assert sum("loss = 87.3365" in text and " iter/s, " in text for text in log_lines("stuck_87")) > 3

    def test_the_stuck_value_is_minus_log_flt_min(self):
        assert f"{STUCK_LOSS:.6g}" == "87.3365"


class TestFatal:
    def test_shape_mismatch_names_layer_shapes_and_fix(self):
        diagnosis = only_diagnosis("shape_mismatch")
        assert diagnosis.kind == "shape_mismatch"
        assert diagnosis.message.startswith("Layer 'fc' cannot take its pretrained weights: they are 3×64 in "
                                            "base_iter_60.caffemodel but 5×64 in your net.")
        assert "`caffegen head ft_same_name.prototxt --num-output 5`" in diagnosis.message
        assert "`caffegen inspect ft_same_name.prototxt --weights base_iter_60.caffemodel`" in diagnosis.message

    def test_gpu_on_cpu_only_caffe(self):
        assert "Cannot use GPU in CPU-only Caffe" in fatal_message("gpu_on_cpu_only")
        diagnosis = only_diagnosis("gpu_on_cpu_only")
        assert diagnosis.kind == "gpu_on_cpu_only"
        assert "without --gpu" in diagnosis.message and "solver_mode: CPU" in diagnosis.message

    @pytest.mark.parametrize("name, kind, words", [
        ("missing_weights", "missing_weights", "The pretrained weights 'missing.caffemodel' do not exist"),
        ("missing_snapshot", "missing_snapshot", "The snapshot 'missing.solverstate' to resume from does not exist"),
        ("missing_solver", "missing_file", "cannot find the solver file 'missing_solver.prototxt'"),
        ("missing_net", "missing_file", "cannot find the net file 'missing_net.prototxt'"),
        ("missing_image_list", "missing_image_list", "The image list 'missing.txt' does not exist or is empty"),
        ("missing_image", "missing_image", "The image 'missing.pgm' listed in 'few_missing.txt' is missing"),
    ])
    def test_missing_files(self, name, kind, words):
        diagnosis = only_diagnosis(name)
        assert (diagnosis.kind, words in diagnosis.message) == (kind, True), diagnosis.message

    def test_missing_weights_are_reported_by_hdf5_not_by_protobuf(self):
        assert "Couldn't open missing.caffemodel" in fatal_message("missing_weights")

    def test_a_missing_image_is_logged_then_fatal(self):
        errors = [line for line in log_lines("missing_image") if line.startswith("E")]
        assert [line.split("] ", 1)[1].strip() for line in errors] == ["Could not open or find file missing.pgm"]
        assert "Could not load missing.pgm" in fatal_message("missing_image")

    def test_bad_prototxt_names_line_column_and_field(self):
        diagnosis = only_diagnosis("bad_prototxt")
        assert diagnosis.kind == "bad_prototxt"
        assert diagnosis.message.startswith("The net file 'typo.prototxt' is not valid prototxt: line 9, column 48:")
        assert '"kernel_sise"' in diagnosis.message

    def test_other_fatal_lines_are_shown_as_is_with_their_layer(self):
        diagnosis = only_diagnosis("unknown_layer_type")
        assert diagnosis.kind == "fatal"
        assert diagnosis.message == f"Caffe stopped in layer 'conv1': {fatal_message('unknown_layer_type')}"


class TestLabelsOutOfRange:
    def test_heap_corruption_after_the_run_is_diagnosed(self):
        watcher, _ = parse_log(log_lines("labels_out_of_range"))
        diagnosis = only_diagnosis("labels_out_of_range")
        assert diagnosis.kind == "memory_corruption"
        assert "labels outside 0 .. num_output-1" in diagnosis.message
        assert watcher.done, "the release build finishes training before the heap check fires"
        assert line_of_diagnosis("labels_out_of_range").rstrip("\n") in diagnosis.message

    def test_labels_equal_to_num_output_go_unnoticed(self):
        watcher, _ = parse_log(log_lines("labels_equal_num_output"))
        assert not watcher.diagnoses and watcher.done
        assert watcher.records[-1]["loss"] > 5 * math.log(3), "a 3-class net starts near ln 3 and should fall"
        assert watcher.latest_test["test/accuracy"] == 1.0, "Accuracy reads past its blob too"


class TestOutOfMemory:
    def test_a_failed_allocation_of_caffe_is_out_of_memory(self):
        diagnosis = only_diagnosis("allocation_failed")
        assert diagnosis.kind == "out_of_memory"
        assert "an allocation of 1073741824 bytes failed" in diagnosis.message
        assert "smaller --batch-size and a larger --iter-size" in diagnosis.message

    def test_cuda_out_of_memory_too(self):
        # The line GPU builds print (BVLC/caffe#2339); no GPU here to make a log with.
        line = "F0419 19:59:24.128612 11075 syncedmem.cpp:53] Check failed: error == cudaSuccess (2 vs. 0)  out of memory"
        diagnosis = LogWatcher().feed(line)[0]
        assert diagnosis.kind == "out_of_memory" and "the GPU has no memory left" in diagnosis.message

    def test_a_python_layer_caffe_cannot_run_is_named_with_the_way_out(self):
        diagnosis = only_diagnosis("python_layer")
        assert diagnosis.kind == "python_layer" and diagnosis.stop
        assert diagnosis.message.startswith("Caffe could not run the Python layer 'py' (Fatal Python error: ")
        assert "pycaffe" in diagnosis.message and "PYTHONPATH" in diagnosis.message

    def test_bad_alloc_is_out_of_memory(self):
        diagnosis = only_diagnosis("bad_alloc")
        assert diagnosis.kind == "out_of_memory" and "std::bad_alloc" in diagnosis.message

    def test_the_estimate_and_its_fix_are_quoted(self):
        watcher = LogWatcher(memory="caffegen estimated that training peaks at about 31.2 GB; FIX.")
        diagnoses = [event for line in log_lines("bad_alloc") for event in watcher.feed(line)
                     if isinstance(event, Diagnosis)]
        assert diagnoses[0].message.endswith("caffegen estimated that training peaks at about 31.2 GB; FIX.")

    @pytest.mark.parametrize("code", [-9, 137])
    def test_a_kill_without_an_error_is_out_of_memory(self, code):
        watcher, _ = parse_log(log_lines("train_ok")[:40])
        diagnosis = watcher.ended(code)[0]
        assert diagnosis.kind == "out_of_memory" and not diagnosis.stop
        assert f"killed by SIGKILL, exit code {code}" in diagnosis.message

    def test_other_ends_are_not_diagnosed_again(self):
        watcher, _ = parse_log(log_lines("train_ok"))
        assert watcher.ended(0) == [] and watcher.ended(-15) == []
        watcher, _ = parse_log(log_lines("bad_alloc"))
        assert watcher.ended(-9) == [], "the log explained it already"
