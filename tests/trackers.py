"""Reading what trackers received, with their own readers (TensorBoard's EventAccumulator, MLflow's client), and
running what feeds them (a launch, a watch, an MLflow server) in processes of their own."""

import contextlib
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

from conftest import DIGITS, run_caffegen, wait_for

from caffegen.run import caffelog

GLOG_TIME = re.compile(r"[IWEF](\d{4}) (\d\d:\d\d:\d\d\.\d+) ")


def scalars(folder, tag):
    """{step: value} of the scalar ``tag`` in the TensorBoard files of ``folder``, read by TensorBoard's own reader."""
    return {event.step: event.value for event in accumulator(folder).Scalars(tag)}


def accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    loaded = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    loaded.Reload()
    return loaded


def logged(run, kind):
    """The events of ``kind`` that train.log holds, parsed by caffegen's own parser."""
    _, events = caffelog.parse_log((run / "train.log").read_text().splitlines())
    return [event for event in events if isinstance(event, kind)]


def expected_curves(run, offset=0):
    """{metric: {step: value}} that train.log's display, learning-rate and test lines make."""
    curves = {"train/loss": {}, "train/lr": {}}
    for event in logged(run, caffelog.Progress):
        curves["train/loss"][event.iteration + offset] = event.loss
    for event in logged(run, caffelog.LearningRate):
        curves["train/lr"][event.iteration + offset] = event.lr
    for event in logged(run, caffelog.TestResult):
        for name, value in event.outputs.items():
            curves.setdefault(name, {})[event.iteration + offset] = value
    return curves


def mlflow_client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(uri)


def mlflow_run(client, name):
    """The MLflow run called ``name`` in caffegen's experiment."""
    experiment = client.get_experiment_by_name("caffegen")
    found = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert len(found) == 1, [run.info.run_name for run in found]
    return found[0]


def history(client, run_id, name):
    """{step: value} of the metric ``name``; each step once (nothing was sent twice)."""
    metrics = client.get_metric_history(run_id, name)
    assert len({metric.step for metric in metrics}) == len(metrics), f"{name} sent twice"
    return {metric.step: metric.value for metric in metrics}


def artifacts(client, run_id):
    names = []
    for item in client.list_artifacts(run_id):
        names += [inner.path for inner in client.list_artifacts(run_id, item.path)] if item.is_dir else [item.path]
    return set(names)


def launched(run, *extra):
    """``caffegen launch RUN`` in a process of its own, as a user starts it: the leader of its process group, as a
    terminal's foreground job is (``os.killpg`` is a Ctrl-C)."""
    return subprocess.Popen([sys.executable, "-m", "caffegen", "launch", str(run), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0)


def children(pid):
    """{pid: argv} of the processes whose parent is ``pid``."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after the command's name, which may hold ")"
            if parent == pid:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().decode().split("\0")
    return found


def watched(run, trackers):
    """``caffegen watch RUN --report-to trackers`` in a process of its own."""
    return subprocess.Popen([sys.executable, "-m", "caffegen", "watch", str(run), "--report-to", trackers,
                             "--every", "0.2"], stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def background(process):
    """``process`` while inside; killed on the way out if it still runs (a failed test leaves nothing running)."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def prepare_long(images, run):
    """The digits job for 100 epochs: still training while the test looks."""
    prepared = run_caffegen("prepare", "--gpu", "cpu", "--net", DIGITS / "train_val.prototxt", "--weights",
                            DIGITS / "digits.caffemodel", "--data", images, "--freeze-upto", "conv2", "--epochs", 100,
                            "-o", run)
    assert prepared.returncode == 0, prepared.stderr
    return run


def wait_for_tests(uri, run, count, seen=None):
    """Wait until MLflow at ``uri`` holds ``count`` test passes of ``run``; {step: (when MLflow had it, train.log's
    time)}, added to ``seen`` (those of an earlier wait). Its store is read once the run's MLflow run exists (a local
    store is created by the first writer)."""
    seen, clients = {} if seen is None else seen, []

    def arrived():
        state = run / ".track.json"
        memo = json.loads(state.read_text()).get(f"mlflow {uri}", {}).get("memo", {}) if state.is_file() else {}
        if memo.get("run_id") and not clients:
            clients.append(mlflow_client(uri))
        for step in history(clients[0], memo["run_id"], "test/accuracy") if clients else {}:
            seen.setdefault(step, (time.time(), None))
        return len(seen) >= count
    wait_for(arrived, f"{count} test passes in MLflow", timeout=120, every=0.05)
    printed = printed_test_times(run)
    return {step: (when, printed[step]) for step, (when, _) in seen.items() if step in printed}


def printed_test_times(run):
    """{iteration: when train.log printed its first test output} (glog's local time)."""
    times, testing = {}, None
    year = datetime.now().year
    for line in (run / "train.log").read_text().splitlines():
        found = re.search(r"Iteration (\d+), Testing net", line)
        if found:
            testing = int(found[1])
        stamp = GLOG_TIME.match(line)
        if testing is not None and "Test net output #0" in line and stamp:
            times.setdefault(testing, datetime.strptime(f"{year}{stamp[1]} {stamp[2]}", "%Y%m%d %H:%M:%S.%f")
                             .timestamp())
    return times


def free_port():
    with socket.socket() as probe:
        return probe.bind(("127.0.0.1", 0)) or probe.getsockname()[1]


def mlflow_server(folder, port, store=None):
    """A real MLflow tracking server on 127.0.0.1:``port``, storing in ``folder`` (or serving the store ``store``);
    returned once it answers."""
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--backend-store-uri",
                               store or f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
                               str(folder / "art")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: answers(port), "the MLflow server", timeout=120, every=0.5)
    return server


def answers(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
    except OSError:
        return False


def stop(server):
    """Stop the MLflow server (its process group: uvicorn's workers too)."""
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def process_runs(pid):
    """Whether the process ``pid`` runs (not ended, nor a zombie no one reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def compare_page(port, experiment_id, run_ids):
    """The address of the MLflow UI's page that compares ``run_ids``."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
    return f"http://127.0.0.1:{port}/#/compare-runs?{query}"


def chromium_page(address, screenshot):
    """The text of the page at ``address`` as headless Chromium draws it, and its screenshot (``screenshot``, a
    1600×1000 PNG), once its scripts ran; Chromium is required under CI, and the test skips without it elsewhere."""
    import pytest
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium is required in CI (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=30000",
                  "--hide-scrollbars"]
        drawn = subprocess.run([*common, f"--screenshot={screenshot}", address], capture_output=True, text=True,
                               timeout=180)
        assert drawn.returncode == 0 and Path(screenshot).is_file(), drawn.stderr[-2000:]
        dumped = subprocess.run([*common, "--dump-dom", address], capture_output=True, text=True, timeout=180)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    return html.unescape(re.sub(r"<[^>]+>", " ", dumped.stdout)), screenshot
