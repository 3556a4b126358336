"""Runs in TensorBoard and MLflow, read back with their own readers: replayed from the run directory, followed
live while real Caffe trains, compared across a sweep, and kept while a tracker is down."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from conftest import DIGITS, copy_run, run_caffegen, wait_for
from trackers import (
    accumulator,
    artifacts,
    background,
    children,
    chromium_page,
    compare_page,
    expected_curves,
    free_port,
    history,
    launched,
    logged,
    mlflow_client,
    mlflow_run,
    mlflow_server,
    prepare_long,
    printed_test_times,
    process_runs,
    scalars,
    stop,
    wait_for_tests,
    watched,
)

from caffegen.run import caffelog


@pytest.fixture(scope="module")
def evaluated_run(trained_digits, tmp_path_factory):
    """A copy of the trained digits run, evaluated (eval/metrics.json, report.html, confusion matrix)."""
    run = copy_run(trained_digits, tmp_path_factory.mktemp("evaluated"))
    evaluated = run_caffegen("evaluate", run)
    assert evaluated.returncode == 0, evaluated.stderr
    return run


def test_report_to_replays_a_finished_run_into_both_trackers(caffe, evaluated_run, tmp_path):
    run = copy_run(evaluated_run, tmp_path)
    sent = run_caffegen("report-to", "tensorboard,mlflow", run)
    assert sent.returncode == 0, sent.stderr
    curves = expected_curves(run)
    assert len(curves["test/accuracy"]) >= 3 and len(curves["train/loss"]) >= 10
    for name, points in curves.items():
        assert scalars(run / "tensorboard", name) == pytest.approx(points, rel=1e-6), name
    client = mlflow_client(f"sqlite:///{run / 'mlflow.db'}")
    tracked = mlflow_run(client, run.name)
    for name, points in curves.items():
        assert history(client, tracked.info.run_id, name) == pytest.approx(points), name
    params = tracked.data.params
    assert params["freeze"] == "upto conv2" and params["classes"] == "5" and params["base_model"] == "digits.caffemodel"
    assert {"batch", "iter_size", "base_lr", "lr_policy", "device", "strategy"} <= set(params)
    said = subprocess.run([caffe, "--version"], capture_output=True, text=True).stdout  # "caffe version 1.0.0"
    assert params["caffe_version"] == json.loads((run / "result.json").read_text())["caffe_version"] == said.split()[-1]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert tracked.data.metrics["eval/top1"] == pytest.approx(metrics["top1"])
    assert tracked.data.metrics["final/best_accuracy"] == json.loads((run / "result.json").read_text())["best_accuracy"]
    assert {"curves.png", "eval/report.html", "eval/confusion.png", "eval/confusion.csv"} <= \
        artifacts(client, tracked.info.run_id)
    assert tracked.info.status == "FINISHED"
    assert "curves" in accumulator(run / "tensorboard").Tags()["images"]

    again = run_caffegen("report-to", "mlflow,tensorboard", run)
    assert again.returncode == 0, again.stderr
    assert len(client.get_metric_history(tracked.info.run_id, "test/accuracy")) == len(curves["test/accuracy"])
    assert scalars(run / "tensorboard", "test/accuracy") == pytest.approx(curves["test/accuracy"], rel=1e-6)


def test_a_run_without_events_jsonl_is_replayed_from_its_train_log(trained_digits, tmp_path):
    run = copy_run(trained_digits, tmp_path)
    (run / "events.jsonl").unlink()
    sent = run_caffegen("report-to", "tensorboard", run)
    assert sent.returncode == 0, sent.stderr
    for name, points in expected_curves(run).items():
        assert scalars(run / "tensorboard", name) == pytest.approx(points, rel=1e-6), name


def test_again_sends_everything_once_more_after_the_files_were_removed(trained_digits, tmp_path):
    import shutil
    run = copy_run(trained_digits, tmp_path)
    assert run_caffegen("report-to", "tensorboard", run).returncode == 0
    shutil.rmtree(run / "tensorboard")
    assert run_caffegen("report-to", "tensorboard", run).returncode == 0 and not (run / "tensorboard").exists()
    assert run_caffegen("report-to", "tensorboard", run, "--again").returncode == 0
    assert scalars(run / "tensorboard", "test/accuracy") == pytest.approx(expected_curves(run)["test/accuracy"])


def test_an_unknown_tracker_is_refused_in_one_line(trained_digits):
    refused = run_caffegen("report-to", "tensorboard,wandb", trained_digits)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "unknown tracker wandb" in refused.stderr and "tensorboard, mlflow" in refused.stderr


def test_staged_run_is_one_run_with_the_stage_boundary_marked(caffe, images, tmp_path):
    run = tmp_path / "staged"
    prepared = run_caffegen("prepare", "--net", DIGITS / "train_val.prototxt", "--weights",
                            DIGITS / "digits.caffemodel", "--data", images, "--stages",
                            "upto=fc1,lr=0.001,epochs=1;upto=conv1,lr=0.0005,epochs=1", "-o", run)
    assert prepared.returncode == 0, prepared.stderr
    assert run_caffegen("launch", run).returncode == 0
    assert run_caffegen("report-to", "tensorboard", run).returncode == 0
    boundary = json.loads((run / "manifest.json").read_text())["stages"][0]["max_iter"]
    assert scalars(run / "tensorboard", "stage") == {0: 1, boundary: 2}
    expected = {**expected_curves(run / "stage1")["test/accuracy"],
                **expected_curves(run / "stage2", boundary)["test/accuracy"]}
    assert scalars(run / "tensorboard", "test/accuracy") == pytest.approx(expected, rel=1e-6)


def test_cached_run_logs_its_extraction_and_its_head_training(caffe, images, tmp_path):
    run = tmp_path / "cached"
    prepared = run_caffegen("prepare", "--net", DIGITS / "train_val.prototxt", "--weights",
                            DIGITS / "digits.caffemodel", "--data", images, "--freeze-upto", "conv2", "--epochs", 2,
                            "--cache-features", "-o", run)
    assert prepared.returncode == 0, prepared.stderr
    assert run_caffegen("launch", run).returncode == 0
    assert run_caffegen("report-to", "mlflow", run).returncode == 0
    client = mlflow_client(f"sqlite:///{run / 'mlflow.db'}")
    tracked = mlflow_run(client, run.name)
    chunks = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    chunks = [event for event in chunks if event["event"] == "chunk_computed"]
    rates = history(client, tracked.info.run_id, "extraction/images_per_s")
    assert rates == pytest.approx({number: event["images"] / event["seconds"] for number, event in enumerate(chunks)})
    assert [tracked.data.params["engine"]] == list({event["engine"] for event in chunks})
    assert tracked.data.params["strategy"] == "cached features"
    assert history(client, tracked.info.run_id, "test/accuracy") == pytest.approx(expected_curves(run)["test/accuracy"])


def test_watch_forwards_a_live_run_before_it_ends_and_a_second_watch_goes_on(caffe, images, tmp_path):
    run = prepare_long(images, tmp_path / "run")
    uri = f"sqlite:///{run / 'mlflow.db'}"
    with background(launched(run)) as launch, background(watched(run, "mlflow,tensorboard")) as first:
        started = wait_for_tests(uri, run, 1)  # the passes before MLflow's store was up wait for it
        live = time.time()  # from now on the watch is up: the passes printed after are timed
        seen = wait_for_tests(uri, run, len(started) + 5, dict(started))
        while not any(printed > live for _, printed in seen.values()):  # a backlog sent after live is not timed
            seen = wait_for_tests(uri, run, len(seen) + 1, seen)
        first.send_signal(signal.SIGTERM)
        _, said = first.communicate(timeout=60)
        assert first.returncode == 143 and "goes on where this one stopped" in said, said
        with background(watched(run, "mlflow,tensorboard")) as second:
            wait_for_tests(uri, run, len(seen) + 3, dict(seen))
            still_training = launch.poll() is None
            assert len(scalars(run / "tensorboard", "test/accuracy")) >= 2
            launch.send_signal(signal.SIGINT)
            launch.communicate(timeout=60)
            _, said = second.communicate(timeout=60)
    assert still_training and launch.returncode == 130 and second.returncode == 0, said
    client = mlflow_client(uri)
    tracked = mlflow_run(client, run.name)
    for name, points in expected_curves(run).items():
        assert history(client, tracked.info.run_id, name) == pytest.approx(points), name
    assert scalars(run / "tensorboard", "test/accuracy") == pytest.approx(expected_curves(run)["test/accuracy"])
    delays = [seen_at - line_time for seen_at, line_time in seen.values() if line_time > live]
    print(f"test result in train.log → in MLflow: {', '.join(f'{delay:.2f}' for delay in delays)} s")
    assert max(delays) < 5


def test_launch_report_to_sends_while_it_trains(caffe, images, tmp_path):
    run = prepare_long(images, tmp_path / "run")
    arrivals = []  # (when TensorBoard had a new test pass, its iteration), at the watch's own pace (1 s)

    def arrived(count):
        if (run / "tensorboard").is_dir() and "test/accuracy" in accumulator(run / "tensorboard").Tags()["scalars"]:
            latest = max(scalars(run / "tensorboard", "test/accuracy"))
            if not arrivals or arrivals[-1][1] != latest:
                arrivals.append((time.time(), latest))
        return len(arrivals) >= count
    with background(launched(run, "--report-to", "tensorboard")) as launch:
        wait_for(lambda: arrived(4), "four test passes in TensorBoard", timeout=120, every=0.05)
        still_training = launch.poll() is None
        watches = [pid for pid, argv in children(launch.pid).items() if "watch" in argv]
        policies = [os.sched_getscheduler(pid) for pid in watches]
        os.killpg(launch.pid, signal.SIGINT)  # Ctrl-C: the whole foreground job
        _, stderr = launch.communicate(timeout=60)
    assert still_training and launch.returncode == 130, stderr
    assert policies == [os.SCHED_IDLE]  # one watch, and it runs on the time the training leaves
    # What Caffe wrote on its way out got there too: the watch ends when the command does, not at Ctrl-C.
    assert scalars(run / "tensorboard", "test/accuracy") == \
        pytest.approx(expected_curves(run)["test/accuracy"], rel=1e-6)
    iterations = json.loads((run / "result.json").read_text())["iterations"]
    assert scalars(run / "tensorboard", "final/iterations") == {iterations: iterations}
    printed = printed_test_times(run)
    delays = [when - printed[step] for when, step in arrivals[1:]]  # the first may have waited for the watch
    print(f"launch: test result in train.log → in TensorBoard: {', '.join(f'{delay:.2f}' for delay in delays)} s")
    assert max(delays) < 5


def test_launch_evaluate_sends_the_evaluation_the_run_ends_with(caffe, images, tmp_path):
    """The watch of a command follows the run past its training: the evaluation's metrics and report, written after
    result.json, reach both trackers too; then it has ended, its scratch store removed, before the command ends."""
    run = tmp_path / "run"
    prepared = run_caffegen("prepare", "--gpu", "cpu", "--net", DIGITS / "train_val.prototxt", "--weights",
                            DIGITS / "digits.caffemodel", "--data", images, "--freeze-upto", "conv2", "--epochs", 1,
                            "-o", run, "--report-to", "tensorboard,mlflow")
    assert prepared.returncode == 0, prepared.stderr
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = run_caffegen("launch", run, "--evaluate", env=dict(os.environ, TMPDIR=str(scratch)))
    assert done.returncode == 0, done.stderr
    assert [argv for argv in children(os.getpid()).values() if "watch" in argv] == [] and list(scratch.iterdir()) == []
    top1 = json.loads((run / "eval" / "metrics.json").read_text())["top1"]
    iterations = json.loads((run / "result.json").read_text())["iterations"]
    assert scalars(run / "tensorboard", "eval/top1") == pytest.approx({iterations: top1})
    client = mlflow_client(f"sqlite:///{run / 'mlflow.db'}")
    tracked = mlflow_run(client, run.name)
    assert tracked.data.metrics["eval/top1"] == pytest.approx(top1) and tracked.info.status == "FINISHED"
    assert {"eval/report.html", "eval/confusion.png"} <= artifacts(client, tracked.info.run_id)


def test_demo_sends_its_run_and_evaluation_to_both_trackers(caffe, tmp_path):
    demo = tmp_path / "demo"
    done = run_caffegen("demo", "-o", demo, "--report-to", "tensorboard,mlflow", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    top1, curves = json.loads((demo / "eval" / "metrics.json").read_text())["top1"], expected_curves(demo)
    assert scalars(demo / "tensorboard", "test/accuracy") == pytest.approx(curves["test/accuracy"])
    client = mlflow_client(f"sqlite:///{demo / 'mlflow.db'}")
    tracked = mlflow_run(client, demo.name)
    assert history(client, tracked.info.run_id, "train/loss") == pytest.approx(curves["train/loss"])
    assert tracked.data.metrics["eval/top1"] == pytest.approx(top1) and tracked.info.status == "FINISHED"
    assert tracked.data.params["base_model"].endswith("digits.caffemodel"), tracked.data.params


def test_a_new_local_store_is_the_store_mlflow_makes(tmp_path, monkeypatch):
    """The watch starts a new local store as a copy of the one it made ahead, whose tables the first watch has MLflow
    make and later ones copy from the template kept in caffegen's cache. Either way the store has the same tables,
    columns, indexes, schema version and rows (times aside) as the store MLflow makes in place, and MLflow opens and
    writes it. (Not the same SQL text: MLflow writes a table's CHECK constraints in an order that changes from one
    process to another.)"""
    import sqlite3

    from caffegen.run.track.mlflow import STORE, MLflowTracker, store_template
    from caffegen.run.track.tracker import Settings, Tracked

    def store(path):
        """The store's objects, the shape of each table and index, and each table's rows without their times."""
        with sqlite3.connect(path) as database:
            objects = sorted(database.execute("SELECT type, name, tbl_name FROM sqlite_master"))
            pragma = {"table": "table_info", "index": "index_info"}
            shapes = {name: database.execute(f"PRAGMA {pragma[kind]}('{name}')").fetchall()
                      for kind, name, _ in objects if kind in pragma}
            rows = {name: set(database.execute(f"SELECT {', '.join(untimed(shapes[name]))} FROM '{name}'"))
                    for kind, name, _ in objects if kind == "table"}
            return objects, shapes, rows

    def untimed(columns):
        return [column[1] for column in columns if "time" not in column[1]]

    def new_store(name):
        MLflowTracker.warm_up(Settings())
        home = tmp_path / name
        home.mkdir()
        memo = MLflowTracker(Tracked(None, name, home), Settings()).open({}, {"base_model": "digits"})
        assert mlflow_client(f"sqlite:///{home / STORE}").get_run(memo["run_id"]).data.params == {
            "base_model": "digits"}
        return home / STORE

    monkeypatch.setenv("CAFFEGEN_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # MLflow's Default experiment keeps its artifacts in the working directory
    made_in_place = tmp_path / "in place.db"
    mlflow_client(f"sqlite:///{made_in_place}").search_experiments()
    assert not store_template().exists()
    first = new_store("first")
    with sqlite3.connect(store_template()) as database:
        assert database.execute("SELECT count(*) FROM experiments").fetchone() == (0,)
    from_template = new_store("from template")
    store_template().write_bytes(b"not a database")
    after_damage = new_store("after a damaged template")  # MLflow makes the tables again, and a template is kept
    with sqlite3.connect(store_template()) as database:
        assert database.execute("SELECT count(*) FROM experiments").fetchone() == (0,)
    objects, shapes, rows = store(made_in_place)
    assert [row[1] for row in rows["experiments"]] == ["Default"]
    assert str(tmp_path / "mlruns") in next(iter(rows["experiments"]))[2]
    for made in (first, from_template, after_damage):
        assert store(made)[:2] == (objects, shapes)
        assert all(rows[name] <= made_rows for name, made_rows in store(made)[2].items())  # and the run's own rows


def test_report_to_none_sends_a_run_prepared_with_trackers_nowhere(caffe, images, tmp_path):
    run = tmp_path / "run"
    prepared = run_caffegen("prepare", "--gpu", "cpu", "--net", DIGITS / "train_val.prototxt", "--weights",
                            DIGITS / "digits.caffemodel", "--data", images, "--epochs", 1, "-o", run,
                            "--report-to", "tensorboard")
    assert prepared.returncode == 0, prepared.stderr
    done = run_caffegen("launch", run, "--report-to", "none")
    assert done.returncode == 0, done.stderr
    assert not (run / "tensorboard").exists() and not (run / ".track.json").exists()


def test_a_tracking_server_down_loses_nothing(trained_digits, tmp_path):
    run, port = copy_run(trained_digits, tmp_path), free_port()
    uri = f"http://127.0.0.1:{port}"
    down = run_caffegen("report-to", "mlflow", run, "--mlflow-uri", uri)
    assert down.returncode == 1 and down.stderr.count("is not taking") == 1, down.stderr
    assert "kept and sent when it is back" in down.stderr
    server = mlflow_server(tmp_path, port)
    try:
        back = run_caffegen("report-to", "mlflow", run, "--mlflow-uri", uri)
        assert back.returncode == 0, back.stderr
        client = mlflow_client(uri)
        tracked = mlflow_run(client, run.name)
        for name, points in expected_curves(run).items():
            assert history(client, tracked.info.run_id, name) == pytest.approx(points), name
        assert "curves.png" in artifacts(client, tracked.info.run_id)
    finally:
        stop(server)


def test_a_server_restarted_mid_run_loses_nothing(caffe, images, tmp_path):
    run, port = prepare_long(images, tmp_path / "run"), free_port()
    uri = f"http://127.0.0.1:{port}"
    server = mlflow_server(tmp_path, port)
    try:
        with background(launched(run, "--report-to", "mlflow", "--mlflow-uri", uri)) as launch:
            wait_for_tests(uri, run, 2)
            stop(server)
            tested = len(logged(run, caffelog.TestResult))
            wait_for(lambda: len(logged(run, caffelog.TestResult)) >= tested + 2, "two test passes while it is down",
                     timeout=120)
            server = mlflow_server(tmp_path, port)
            wait_for_tests(uri, run, tested + 3)
            still_training = launch.poll() is None
            launch.send_signal(signal.SIGINT)
            _, stderr = launch.communicate(timeout=60)
        assert still_training and launch.returncode == 130, stderr
        assert stderr.count("is not taking") == 1 and stderr.count("is back;") == 1, stderr
        client = mlflow_client(uri)
        tracked = mlflow_run(client, run.name)
        for name, points in expected_curves(run).items():
            assert history(client, tracked.info.run_id, name) == pytest.approx(points), name
    finally:
        stop(server)


@pytest.fixture(scope="module")
def compared_sweep(caffe, images, tmp_path_factory):
    """A 2×2 sweep (two freeze points × two learning rates) sent to both trackers as it ran."""
    sweep = tmp_path_factory.mktemp("compared") / "sweep"
    swept = run_caffegen("sweep", "--gpu", "cpu", "--net", DIGITS / "train_val.prototxt", "--weights",
                         DIGITS / "digits.caffemodel", "--data", images, "--epochs", 1, "--freeze-upto", "conv1,conv2",
                         "--lr", "0.01,0.001", "-o", sweep, "--report-to", "tensorboard,mlflow")
    assert swept.returncode == 0, swept.stderr
    return sweep


def test_a_2x2_sweep_is_compared_in_the_hparams_table_and_as_nested_mlflow_runs(compared_sweep):
    from tensorboard.plugins.hparams import plugin_data_pb2
    sweep = compared_sweep
    members = [entry["run_dir"] for entry in json.loads((sweep / "sweep.json").read_text())["runs"]]
    assert len(members) == 4 and sorted(path.name for path in (sweep / "tensorboard").iterdir()) == sorted(members)
    for member in members:
        result = json.loads((sweep / member / "result.json").read_text())
        loaded = accumulator(sweep / "tensorboard" / member)
        content = loaded.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        freeze, lr = start.hparams["freeze"].string_value, start.hparams["lr"].number_value
        assert member == f"{freeze.replace(' ', '-')}_lr-{lr:g}"
        assert scalars(sweep / "tensorboard" / member, "final/best_accuracy") == \
            pytest.approx({result["iterations"]: result["best_accuracy"]})
    client = mlflow_client(f"sqlite:///{sweep / 'mlflow.db'}")
    parent = mlflow_run(client, sweep.name)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(child.info.run_name for child in children) == sorted(members)
    for child in children:
        assert child.data.params["freeze"] == child.info.run_name.split("_")[0].replace("-", " ")
        curves = expected_curves(sweep / child.info.run_name)
        assert history(client, child.info.run_id, "test/accuracy") == pytest.approx(curves["test/accuracy"])
    assert parent.info.status == "FINISHED"


def test_mlflow_s_own_page_compares_the_sweep_s_runs(compared_sweep, tmp_path):
    """MLflow's UI, served by a real MLflow server from the sweep's store and drawn by headless Chromium, compares
    the four runs: the page names each of them and the test accuracy, and its screenshot is a drawn page."""
    from PIL import Image
    store = f"sqlite:///{compared_sweep / 'mlflow.db'}"
    client = mlflow_client(store)
    parent = mlflow_run(client, compared_sweep.name)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    port = free_port()
    server = mlflow_server(tmp_path, port, store)
    try:
        page = compare_page(port, parent.info.experiment_id, [child.info.run_id for child in children])
        text, shot = chromium_page(page, tmp_path / "compare.png")
    finally:
        stop(server)
    for child in children:
        assert child.info.run_name in text, child.info.run_name
    assert "test/accuracy" in text
    with Image.open(shot) as image:
        colours = image.convert("L").getextrema()
    assert image.size == (1600, 1000) and colours[1] - colours[0] > 100  # drawn, not blank


def test_prepare_records_the_trackers_and_an_older_manifest_has_none(images, tmp_path):
    from caffegen.job.rundir import RunDir
    run = tmp_path / "run"
    prepared = run_caffegen("prepare", "--gpu", "cpu", "--net", DIGITS / "train_val.prototxt", "--weights",
                            DIGITS / "digits.caffemodel", "--data", images, "--report-to", "mlflow,tensorboard",
                            "-o", run)
    assert prepared.returncode == 0, prepared.stderr
    assert json.loads((run / "manifest.json").read_text())["report_to"] == ["mlflow", "tensorboard"]
    assert RunDir(run).manifest.report_to == ("mlflow", "tensorboard")
    record = json.loads((run / "manifest.json").read_text())
    del record["report_to"]
    (run / "manifest.json").write_text(json.dumps(record))
    assert RunDir(run).manifest.report_to == ()
    refused = run_caffegen("prepare", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                           "--data", images, "--report-to", "neptune", "-o", tmp_path / "other")
    assert refused.returncode == 2 and "unknown tracker neptune" in refused.stderr
    assert not (tmp_path / "other").exists()


def test_only_whole_lines_are_read_and_the_position_goes_on_from_there(tmp_path):
    from caffegen.run.track.events import Position, read_events
    whole = json.dumps({"event": "progress", "time": 1.0, "iteration": 0, "loss": 2.0, "rate": None})
    half = json.dumps({"event": "progress", "time": 2.0, "iteration": 10, "loss": 1.0, "rate": 5.0})
    (tmp_path / "events.jsonl").write_text(whole + "\n" + half[:20])
    events, position = read_events(tmp_path, Position())
    assert [event["iteration"] for event in events] == [0] and position.offset == len(whole) + 1
    with (tmp_path / "events.jsonl").open("a") as log:
        log.write(half[20:] + "\n")
    events, position = read_events(tmp_path, position)
    assert [event["iteration"] for event in events] == [10]
    assert read_events(tmp_path, position) == ([], position)



def test_a_tracker_that_does_not_answer_holds_up_neither_training_nor_the_other_tracker(caffe, images, tmp_path):
    run = prepare_long(images, tmp_path / "run")
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with background(launched(run, "--report-to", "tensorboard,mlflow", "--mlflow-uri", uri)) as launch:
            wait_for(lambda: (run / "tensorboard").is_dir() and "test/accuracy" in
                     accumulator(run / "tensorboard").Tags()["scalars"], "a test pass in TensorBoard", timeout=120)
            wait_for(lambda: len(scalars(run / "tensorboard", "test/accuracy")) >= 3, "three test passes", timeout=120)
            still_training = launch.poll() is None
            launch.send_signal(signal.SIGINT)
            _, stderr = launch.communicate(timeout=60)
    assert still_training and launch.returncode == 130, stderr
    assert stderr.count("is not taking") == 1 and "caffegen report-to mlflow" in stderr, stderr
    assert scalars(run / "tensorboard", "test/accuracy") == pytest.approx(expected_curves(run)["test/accuracy"])


def test_a_slurm_sweep_reports_as_its_tasks_run(slurm, caffe, images, tmp_path):
    """sweep --slurm --report-to leaves a watch running where it was submitted, which reads the sweep directory as
    any watch does: the tasks' test passes reach TensorBoard while the job array runs, and the watch ends once every
    task's run has ended."""
    sweep = tmp_path / "sweep"
    submitted = run_caffegen("sweep", "--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel",
                             "--data", images, "--epochs", 40, "--freeze-upto", "conv1", "--lr", "0.01,0.001",
                             "--slurm", "--slurm-opt=--time=10", "-o", sweep, "--report-to", "tensorboard",
                             env=slurm.env)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    watch = int(re.search(r"\(process (\d+);", submitted.stderr).group(1))
    members = [entry["run_dir"] for entry in json.loads((sweep / "sweep.json").read_text())["runs"]]

    arrivals = {}  # member: (when TensorBoard first had a test pass of it, that pass's iteration)

    def forwarded():
        for member in members:
            if member not in arrivals and (sweep / "tensorboard" / member).is_dir() and \
                    "test/accuracy" in accumulator(sweep / "tensorboard" / member).Tags()["scalars"]:
                arrivals[member] = (time.time(), max(scalars(sweep / "tensorboard" / member, "test/accuracy")))
        return bool(arrivals)
    try:
        wait_for(forwarded, "a test pass of a Slurm task in TensorBoard", timeout=240, every=0.25)
        running = bool(slurm.client("squeue", "-h", "-j", job, "-o", "%i", check=False).stdout.strip())
        slurm.wait_for_job(job, timeout=600)
        wait_for(lambda: not process_runs(watch), "the watch to end after the last task", timeout=120)
    finally:
        if process_runs(watch):
            os.kill(watch, signal.SIGKILL)
    assert running, "the job array ended before anything was forwarded: nothing shows the watch was live"
    for member in members:
        assert scalars(sweep / "tensorboard" / member, "test/accuracy") == \
            pytest.approx(expected_curves(sweep / member)["test/accuracy"]), member
    assert "not all" not in (sweep / "watch.log").read_text()
    member, (arrived, step) = next(iter(arrivals.items()))
    delay = arrived - printed_test_times(sweep / member)[step]
    print(f"Slurm: test result in train.log → in TensorBoard: {delay:.2f} s")
    assert delay < 10
