"""Two-stage fine-tuning with real Caffe: the head first, then the newly unfrozen layers."""

import json

import numpy as np
import pytest
from caffe_runs import read_blobs
from conftest import DIGITS, run_caffegen

from caffegen.errors import CaffegenError
from caffegen.job.prepare import parse_stages
from caffegen.run.caffelog import parse_log
from caffegen.strategies.digits import write_digit_images

STAGES = "upto=fc1,lr=0.001,epochs=2;upto=conv1,lr=0.0005,epochs=2"


@pytest.fixture(scope="module")
def staged_run(caffe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("staged")
    write_digit_images(folder / "images", range(5, 10))
    run = folder / "run"
    prepared = run_caffegen("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                            "--data", folder / "images", "--stages", STAGES, "-o", run)
    assert prepared.returncode == 0, prepared.stderr
    launched = run_caffegen("launch", run)
    assert launched.returncode == 0, launched.stderr
    return run, launched


def stage_log(run, number):
    watcher, _ = parse_log((run / f"stage{number}" / "train.log").read_text().splitlines())
    return watcher


def test_stage_two_starts_from_stage_one(staged_run):
    run, launched = staged_run
    first, second = stage_log(run, 1), stage_log(run, 2)
    assert "stage 1/2: frozen up to fc1" in launched.stderr and "stage 2/2: frozen up to conv1" in launched.stderr
    assert second.finetuned_from.endswith(f"stage1/snapshots/ft_iter_{first.iteration}.caffemodel")
    assert "conv2" in first.no_backward and "conv2" not in second.no_backward
    assert "conv1" in second.no_backward


def test_stage_two_trains_the_newly_unfrozen_layers_only(staged_run):
    run, _ = staged_run
    first = read_blobs(run / "stage1" / "snapshots" / f"ft_iter_{stage_log(run, 1).iteration}.caffemodel")
    second = read_blobs(run / "stage2" / "snapshots" / f"ft_iter_{stage_log(run, 2).iteration}.caffemodel")
    base = read_blobs(DIGITS / "digits.caffemodel")
    for name in ("conv2", "fc1"):
        assert np.array_equal(base[name][0], first[name][0]), f"{name} moved in stage 1"
        assert not np.array_equal(first[name][0], second[name][0]), f"{name} did not learn in stage 2"
    assert np.array_equal(first["conv1"][0], second["conv1"][0])
    assert not np.array_equal(first["fc2_ft"][0], second["fc2_ft"][0])


def test_curves_are_joined_with_the_boundary(staged_run):
    run, _ = staged_run
    manifest = json.loads((run / "manifest.json").read_text())
    boundary, total = manifest["stages"][0]["max_iter"], manifest["schedule"]["max_iter"]
    iterations = [int(line.split(",")[0]) for line in (run / "curves.csv").read_text().splitlines()[1:]]
    assert iterations == sorted(iterations) and iterations[-1] == total
    assert any(i < boundary for i in iterations) and any(i > boundary for i in iterations)
    assert json.loads((run / "result.json").read_text())["iterations"] == total
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_run_directory_tells_each_stage_and_its_training_as_events(staged_run):
    run, _ = staged_run
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    stages = [(event["event"], event["stage"]) for event in events if event["event"].startswith("stage_")]
    assert stages == [("stage_started", 1), ("stage_ended", 1), ("stage_started", 2), ("stage_ended", 2)]
    boundary = json.loads((run / "manifest.json").read_text())["stages"][0]["max_iter"]
    assert [event["first_iteration"] for event in events if event["event"] == "stage_started"] == [0, boundary]
    second = [event["event"] for event in events].index("stage_started", 1)
    tested = [event for event in events[second:] if event["event"] == "test_result"]
    assert tested and tested == [json.loads(line) for line in (run / "stage2" / "events.jsonl").read_text().splitlines()
                                 if json.loads(line)["event"] == "test_result"]


def test_resume_skips_finished_stages(staged_run):
    run, _ = staged_run
    first_log = (run / "stage1" / "train.log").read_text()
    (run / "stage2" / "result.json").unlink()
    for state in (run / "stage2" / "snapshots").iterdir():
        state.unlink()
    resumed = run_caffegen("launch", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "stage 1/2" not in resumed.stderr and "stage 2/2" in resumed.stderr
    assert (run / "stage1" / "train.log").read_text() == first_log


@pytest.mark.parametrize("text, words", [("upto=fc1", "at least two"), ("upto=a,from=b;upto=c", "not both"),
                                         ("upto=a,speed=3;upto=b", "speed=3"), ("lr=fast;upto=b", "fast")])
def test_bad_stages(text, words):
    with pytest.raises(CaffegenError, match=words):
        parse_stages(text)
