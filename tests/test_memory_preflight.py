"""Memory before and after Caffe runs: the budget, prepare's and sweep's refusals, and out-of-memory diagnoses."""

import json
import os
import re

import numpy as np
import pytest
from caffe_runs import started_address_space
from conftest import DIGITS, ZOO, assert_one_line_error, gpu_caffe, run_caffegen

from caffegen.cli import main
from caffegen.defaults import CACHE_BATCH
from caffegen.io.caffemodel import read_caffemodel, write_caffemodel
from caffegen.io.prototxt import read_net, read_solver, to_text
from caffegen.io.schema import BVLC
from caffegen.job.cacheplan import plan_cache
from caffegen.job.dataset import scan_class_folders
from caffegen.job.device import CPU, Device
from caffegen.job.memorycheck import extraction_batch, extraction_check
from caffegen.job.prepare import JobOptions, prepare
from caffegen.job.solver import exact_batch
from caffegen.net.memory import MemoryBudget, format_bytes, training_memory, weights_copy
from caffegen.net.netview import TRAIN
from caffegen.run import target as target_module
from caffegen.run.launch import launch
from caffegen.run.target import Target, available_ram, free_gpu_memory

BASE_MODEL = ("--net", str(DIGITS / "train_val.prototxt"), "--weights", str(DIGITS / "digits.caffemodel"))
FIX = re.compile(r"pass --batch-size (\d+) --iter-size (\d+) to keep the effective batch of 32")


def mem_available(monkeypatch, tmp_path, bytes_available):
    """Make /proc/meminfo say ``bytes_available`` are available."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       99999999 kB\nMemAvailable:   {bytes_available // 1024} kB\n")
    monkeypatch.setattr(target_module, "MEMINFO", meminfo)


def stand_in(folder, name, script):
    """An executable ``name`` in ``folder`` running the shell ``script``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def val_batch(images):
    """The digits job's TEST batch: its base net's 50, or the largest batch below that divides the validation set."""
    return exact_batch(scan_class_folders(images).val_count, 50)


@pytest.fixture(scope="module")
def peaks(images, tmp_path_factory):
    """The digits job's training peak at batch 8 and at its own 32, estimated on the net prepare writes."""
    run = tmp_path_factory.mktemp("estimate") / "run"
    job = prepare(JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images,
                             freeze_upto="conv2"), run)
    net, shape = read_net(run / "train_val.prototxt").net, list(job.manifest.input_shape)
    copy = weights_copy(read_caffemodel(DIGITS / "digits.caffemodel"))
    return {batch: training_memory(net, batches={TRAIN: batch}, input_shape=shape, weights_copy=copy).peak
            for batch in (8, 32)}


class TestBudget:
    def test_mem_available(self, monkeypatch, tmp_path):
        mem_available(monkeypatch, tmp_path, 5 << 30)
        assert available_ram().bytes == 5 << 30 and "MemAvailable" in available_ram().source
        (tmp_path / "meminfo").write_text("MemTotal: 1 kB\n")
        assert available_ram().bytes is None

    def test_this_machine_has_some(self):
        assert available_ram().bytes > 0

    def test_nvidia_smi_gives_the_least_free_gpu(self, monkeypatch, tmp_path):
        stand_in(tmp_path, "nvidia-smi", 'echo "0, 81000"\necho "1, 500"\n')
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        for device, free, gpu in (("0", 81000, "0"), ("0,1", 500, "1"), ("all", 500, "1")):
            budget = free_gpu_memory(Device.parse(device))
            assert (budget.bytes, budget.source) == (free << 20, f"free memory of GPU {gpu} (nvidia-smi)")
        assert free_gpu_memory(Device.parse("2")).bytes is None

    def test_without_nvidia_smi_the_gpu_is_unverified(self, monkeypatch, tmp_path):
        monkeypatch.setenv("PATH", str(tmp_path))
        assert "nvidia-smi is not on PATH" in free_gpu_memory(Device.parse("0")).source
        stand_in(tmp_path, "nvidia-smi", 'echo "NVIDIA-SMI has failed because it couldn\'t communicate"\nexit 9\n')
        budget = free_gpu_memory(Device.parse("0"))
        assert budget.bytes is None and "couldn't communicate" in budget.source


class TestPrepare:
    def test_a_job_that_does_not_fit_is_refused_with_a_batch_that_does(self, images, tmp_path, monkeypatch, capsys,
                                                                       peaks, val_batch):
        mem_available(monkeypatch, tmp_path, (peaks[8] + peaks[32]) // 2)
        run = tmp_path / "run"
        assert main(["prepare", *BASE_MODEL, "--data", str(images), "--freeze-upto", "conv2", "-o", str(run)]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"training (TRAIN net at batch 32 + TEST net at batch {val_batch}) peaks at about" in error
        assert "more than the" in error and "RAM available (MemAvailable)" in error and "--force" in error
        assert FIX.search(error), error
        batch, iter_size = map(int, FIX.search(error).groups())
        assert 8 <= batch < 32 and batch * iter_size == 32
        assert not run.exists()
        assert main(["prepare", *BASE_MODEL, "--data", str(images), "--freeze-upto", "conv2", "-o", str(run),
                     "--batch-size", str(batch), "--iter-size", str(iter_size)]) == 0
        assert f"TRAIN net at batch {batch} + TEST net at batch {val_batch}) peaks at about" in capsys.readouterr().err

    def test_force_prepares_it_anyway(self, images, tmp_path, monkeypatch, capsys, peaks):
        mem_available(monkeypatch, tmp_path, peaks[8])
        run = tmp_path / "run"
        assert main(["prepare", *BASE_MODEL, "--data", str(images), "-o", str(run), "--force"]) == 0
        assert "prepared anyway (--force)" in capsys.readouterr().err
        assert (run / "solver.prototxt").is_file()

    def test_a_gpu_job_is_checked_against_the_gpu(self, images, tmp_path):
        bin_dir = tmp_path / "bin"
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        stand_in(bin_dir, "nvidia-smi", 'echo "0, 80000"\n')
        gpu = ("--gpu", "0", "--caffe", gpu_caffe(tmp_path / "cuda"))
        ok = run_caffegen("prepare", *BASE_MODEL, "--data", images, *gpu, "-o", tmp_path / "run", env=env)
        assert ok.returncode == 0 and "within the 83.9 GB of free memory of GPU 0 (nvidia-smi)" in ok.stderr
        stand_in(bin_dir, "nvidia-smi", 'echo "0, 10"\n')
        refused = run_caffegen("prepare", *BASE_MODEL, "--data", images, *gpu, "-o", tmp_path / "small", env=env)
        assert_one_line_error(refused, "more than the 10.5 MB of free memory of GPU 0 (nvidia-smi)",
                              "not even one image at a time fits")

    def test_an_unreadable_budget_is_unverified_not_ok(self, images, tmp_path):
        env = dict(os.environ, PATH=str(tmp_path / "empty"))
        env["PATH"] += os.pathsep + os.path.dirname(os.sys.executable)
        done = run_caffegen("prepare", *BASE_MODEL, "--data", images, "--gpu", "0", "--caffe",
                            gpu_caffe(tmp_path / "cuda"), "-o", tmp_path / "run", env=env)
        assert done.returncode == 0, done.stderr
        assert "; unverified: nvidia-smi is not on PATH" in done.stderr

    def test_a_cached_job_is_checked_at_its_extraction(self, images, tmp_path, monkeypatch, capsys):
        command = ["prepare", *BASE_MODEL, "--data", str(images), "--freeze-upto", "conv2", "--cache-features"]
        assert main([*command, "-o", str(tmp_path / "run")]) == 0
        note = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("memory: "))
        batch = int(re.search(r"feature extraction \(trunk at batch (\d+)\) peaks at about", note)[1])
        assert batch == CACHE_BATCH, "extract_features runs the trunk in mini-batches, whatever the images"
        mem_available(monkeypatch, tmp_path, 1 << 20)
        assert main([*command, "-o", str(tmp_path / "small")]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("caffegen: error: ") and "feature extraction" in error
        assert "not even one image at a time fits: train without --cache-features" in error
        assert not (tmp_path / "small").exists()

    def test_the_extraction_batch_is_the_most_that_fits(self, images, tmp_path, monkeypatch, capsys):
        command = ["prepare", *BASE_MODEL, "--data", str(images), "--freeze-upto", "conv2", "--cache-features"]
        assert main([*command, "-o", str(tmp_path / "run")]) == 0
        assert f"feature extraction in mini-batches of {CACHE_BATCH} images (the default, within memory)" in \
            capsys.readouterr().err
        plan = plan_cache(tmp_path / "run")
        fewer = CACHE_BATCH - 1
        peak = {size: extraction_check(plan, CPU, MemoryBudget(None, "unknown"), size).estimate.peak
                for size in (fewer, CACHE_BATCH)}
        assert peak[fewer] < peak[CACHE_BATCH]
        budget = (peak[fewer] + peak[CACHE_BATCH]) // 2
        assert extraction_batch(plan, CPU, MemoryBudget(budget, "test")).size == fewer
        mem_available(monkeypatch, tmp_path, budget)
        assert main([*command, "-o", str(tmp_path / "short")]) == 0
        assert f"feature extraction in mini-batches of {fewer} images (the most that fit the" in capsys.readouterr().err
        assert main([*command, "--cache-batch", "9", "-o", str(tmp_path / "asked")]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "feature extraction (trunk at batch 9) peaks at about" in error and f"pass --cache-batch {fewer}," in error
        assert not (tmp_path / "asked").exists()

    def test_cache_batch_needs_cache_features(self, images, tmp_path):
        refused = run_caffegen("prepare", *BASE_MODEL, "--data", images, "--cache-batch", "4", "-o", tmp_path / "run")
        assert_one_line_error(refused, "--cache-batch sets the mini-batch of the feature extraction: give it with "
                                       "--cache-features")
        assert not (tmp_path / "run").exists()

    def test_sweep_refuses_a_run_that_cannot_fit(self, caffe, images, tmp_path, monkeypatch, capsys, peaks):
        mem_available(monkeypatch, tmp_path, (peaks[8] + peaks[32]) // 2)
        out = tmp_path / "sweep"
        code = main(["sweep", *BASE_MODEL, "--data", str(images), "--freeze-upto", "conv2,fc1", "-o", str(out)])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and FIX.search(error) and not out.exists()


@pytest.mark.zoo
class TestInspect:
    CAFFENET = ZOO / "bvlc_reference_caffenet" / "train_val.prototxt"

    def test_the_estimates_by_part(self):
        done = run_caffegen("inspect", self.CAFFENET, "--input-shape", "1,3,227,227")
        lines = done.stdout.splitlines()
        table = lines[lines.index("memory, estimated for Caffe 1.0 on the CPU:") + 1:]
        assert "training (TRAIN net at batch 256 + TEST net at batch 50)" in table[0]
        assert "testing (TEST net at batch 50)" in table[0]
        assert [row.split()[0] for row in table[1:4]] == ["layer", "their", "im2col"]
        assert table[-1].startswith("peak") and not any(line.startswith("unverified") for line in lines)

    def test_json_holds_the_same_figures(self):
        done = run_caffegen("inspect", self.CAFFENET, "--input-shape", "1,3,227,227", "--json")
        memory = json.loads(done.stdout)["memory"]
        expected = training_memory(read_net(self.CAFFENET).net, input_shape=(1, 3, 227, 227))
        assert memory[0]["peak"] == expected.peak and memory[0]["parts"] == expected.parts

    def test_a_cached_run_shows_its_extraction(self, images, tmp_path):
        run = tmp_path / "run"
        assert main(["prepare", *BASE_MODEL, "--data", str(images), "--freeze-upto", "conv2", "--cache-features",
                     "--cache-batch", "3", "-o", str(run)]) == 0
        done = run_caffegen("inspect", run / "train_val.prototxt")
        assert done.returncode == 0, done.stderr
        expected = extraction_check(plan_cache(run), CPU, MemoryBudget(None, "unknown"), 3).estimate
        assert expected.what == "feature extraction (trunk at batch 3)" and expected.what in done.stdout
        peak_row = next(line for line in done.stdout.splitlines() if line.startswith("peak "))
        assert peak_row.endswith(format_bytes(expected.peak))
        assert "feature extraction in mini-batches of 3 images (--cache-batch)" in done.stdout
        shown = json.loads(run_caffegen("inspect", run / "train_val.prototxt", "--json").stdout)["memory"]
        assert shown[-1]["what"] == expected.what and shown[-1]["peak"] == expected.peak

    def test_unknown_sizes_are_unverified(self):
        done = run_caffegen("inspect", self.CAFFENET)
        assert "unverified: the memory of 2 layers of unknown size (conv1, data) is left out" in done.stdout


class TestOutOfMemoryRuns:
    @pytest.fixture(scope="class")
    @classmethod
    def run(cls, images, tmp_path_factory):
        run = tmp_path_factory.mktemp("oom") / "run"
        assert main(["prepare", *BASE_MODEL, "--data", str(images), "--freeze-upto", "conv2", "-o", str(run)]) == 0
        return run

    def test_a_killed_caffe_is_diagnosed_with_the_estimate(self, run, tmp_path, val_batch):
        caffe = stand_in(tmp_path, "caffe", 'if [ "$1" = device_query ]; then echo "Cannot use GPU in CPU-only Caffe"; '
                                            'exit 1; fi\necho "I1202 00:00:00.000000  1 caffe.cpp:197] Use CPU."\n'
                                            'kill -9 $$\n')
        result = launch(run, Target(caffe, Device.parse("cpu")))
        assert (result.exit_code, result.diagnosis.kind) == (137, "out_of_memory")
        message = result.diagnosis.message
        assert "killed by SIGKILL, exit code -9" in message
        estimate = f"caffegen estimated that training (TRAIN net at batch 32 + TEST net at batch {val_batch}) peaks at"
        assert estimate in message and "within the" in message and "--iter-size" in message

    def test_real_caffe_out_of_address_space_is_diagnosed(self, caffe, run, tmp_path):
        """Weights with an unused 256 MiB layer, parsed by real Caffe in a little more address space than it needs
        to start."""
        model = read_caffemodel(DIGITS / "digits.caffemodel")
        layers = [(BVLC.LayerParameter(name=layer.name, type=layer.type), model.values(layer.name))
                  for layer in model.layers if layer.blobs]
        unused = (BVLC.LayerParameter(name="unused", type="InnerProduct"), [np.zeros((1 << 26) + 1, np.float32)])
        write_caffemodel(run / "base.caffemodel", layers + [unused])
        solver = read_solver(run / "solver.prototxt")
        solver.max_iter = 1  # one iteration with the small weights: the address space the whole run needs
        (run / "solver_1.prototxt").write_text(to_text(solver))
        limit = started_address_space(caffe, "train", "-solver", "solver_1.prototxt", "-weights",
                                      DIGITS / "digits.caffemodel", cwd=run)
        limited = stand_in(tmp_path, "caffe", f'ulimit -v {limit // 1024}\nexec "{caffe}" "$@"\n')
        manifest = (run / "manifest.json").read_text()
        (run / "manifest.json").write_text(re.sub(r'"weights": "[^"]*"', '"weights": "base.caffemodel"', manifest))
        result = launch(run, Target(limited, Device.parse("cpu")))
        assert result.diagnosis.kind == "out_of_memory", (run / "train.log").read_text()[-2000:]
        assert "std::bad_alloc" in result.diagnosis.message and "caffegen estimated that" in result.diagnosis.message
        assert result.exit_code == 3

