"""Facts worked out once per command: the Caffe and device (Target), the run's manifest (RunDir)."""

import json

import pytest
from conftest import DIGITS, assert_one_line_error, run_caffegen

from caffegen.cli import main
from caffegen.errors import CaffegenError, CaffeNotFound
from caffegen.job import cacheplan, rundir
from caffegen.job.device import CPU, Device
from caffegen.job.prepare import JobOptions, prepare
from caffegen.reporting import PlainReporter
from caffegen.run import target as target_module
from caffegen.run.target import Target, resolve_target

BASE_MODEL = ("--net", str(DIGITS / "train_val.prototxt"), "--weights", str(DIGITS / "digits.caffemodel"))


class TestDevice:
    @pytest.mark.parametrize("text, flag, workers", [("cpu", None, 1), ("CPU", None, 1), ("0", "0", 1),
                                                     ("0,1", "0,1", 2), ("0, 2,3", "0,2,3", 3), ("all", "all", 1)])
    def test_parse(self, text, flag, workers):
        device = Device.parse(text)
        assert (device.gpu_flag, device.workers, device.is_cpu) == (flag, workers, flag is None)

    @pytest.mark.parametrize("text", ["gpu", "0,", "-1", "1;2", ""])
    def test_refused(self, text):
        with pytest.raises(CaffegenError, match="--gpu takes cpu"):
            Device.parse(text)

    def test_bad_gpu_is_one_line(self, tmp_path, images):
        result = run_caffegen("prepare", *BASE_MODEL, "--data", images, "--gpu", "first", "-o", tmp_path / "run")
        assert_one_line_error(result, "--gpu takes cpu", "'first'")
        assert not (tmp_path / "run").exists()


class TestTarget:
    def test_cpu_only_is_asked_once(self, caffe, monkeypatch):
        calls = []
        monkeypatch.setattr(target_module, "caffe_is_cpu_only", lambda path: calls.append(path) or True)
        target = Target(caffe)
        assert target.cpu_only and target.cpu_only
        assert calls == [caffe]

    def test_cpu_only_caffe_plans_and_launches_on_the_cpu(self, caffe):
        target = resolve_target(str(caffe))
        lines = []
        assert target.planned_device(PlainReporter(lines.append)) == CPU
        assert target.launch_device(Device("0"), PlainReporter(lines.append)) == CPU
        assert lines == [f"{caffe} is a CPU-only build: training on the CPU",
                         f"{caffe} is a CPU-only build: training on the CPU instead of GPU 0"]
        with pytest.raises(CaffegenError, match="cannot use --gpu 1"):
            resolve_target(str(caffe), "1").launch_device(CPU, PlainReporter(lines.append))

    def test_missing_caffe_is_allowed_only_when_not_required(self, monkeypatch, tmp_path):
        monkeypatch.setenv("PATH", str(tmp_path))
        monkeypatch.setenv("CAFFEGEN_CAFFE_PREFIX", str(tmp_path / "none"))
        monkeypatch.delenv("CAFFE_BIN", raising=False)
        monkeypatch.delenv("CAFFE_ROOT", raising=False)
        target = resolve_target(required=False)
        assert target.caffe is None and target.cpu_only is None
        lines = []
        assert target.planned_device(PlainReporter(lines.append)) == CPU and "no Caffe found yet" in lines[0]
        with pytest.raises(CaffeNotFound, match="no Caffe binary found"):
            target.required()
        with pytest.raises(CaffeNotFound):
            resolve_target(required=True)
        with pytest.raises(CaffeNotFound, match="no such file"):
            resolve_target(str(tmp_path / "caffe"), required=False)


def counting(monkeypatch, module, name):
    """Replace ``module.name`` by a wrapper that records its calls; return the list of calls."""
    calls, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_a_local_sweep_finds_caffe_once_and_reads_each_manifest_once(caffe, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAFFE_BIN", str(caffe))
    finds = counting(monkeypatch, target_module, "find_caffe")
    probes = counting(monkeypatch, target_module, "caffe_is_cpu_only")
    loads = counting(monkeypatch, rundir.RunDir, "__init__")
    code = main(["sweep", *BASE_MODEL, "--data", str(images), "--freeze-upto", "conv2", "--lr", "0.01,0.001",
                 "--epochs", "1", "-o", str(tmp_path / "sweep")])
    assert code == 0, capsys.readouterr().err
    assert len(finds) == 1 and len(probes) == 1
    assert sorted(str(args[1]) for args in loads) == [str(tmp_path / "sweep" / name)
                                                      for name in ("upto-conv2_lr-0.001", "upto-conv2_lr-0.01")]



def test_a_cached_run_works_out_its_cache_plan_once_per_command(caffe, images, tmp_path, monkeypatch, capsys):
    """prepare checks the plan once, and a launch (labels, store, extraction, head) once more, not per step."""
    plans = counting(monkeypatch, cacheplan, "_trunk")  # the first step of working a plan out
    code = main(["prepare", *BASE_MODEL, "--data", str(images), "--freeze-upto", "conv2", "--cache-features",
                 "--epochs", "1", "--gpu", "cpu", "-o", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert len(plans) == 1
    code = main(["launch", str(tmp_path / "run"), "--caffe", str(caffe)])
    assert code == 0, capsys.readouterr().err
    assert len(plans) == 2 and json.loads((tmp_path / "run" / "result.json").read_text())["cache"]["boundary"]

def test_the_manifest_records_what_launch_needs(images, tmp_path):
    job = prepare(JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images,
                             freeze_upto="conv2", device="0,1", cache_features=True), tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest == job.manifest.to_record()
    assert manifest["input"] == {"shape": [1, 1, 28, 28]}
    assert manifest["device"] == "0,1" and manifest["engine"] == "auto" and manifest["base_lr"] == 0.001
    assert manifest["preprocessing"] == {"layer_type": "ImageData", "channel_order": "gray", "resize": None,
                                         "crop_size": None, "mean_value": [], "mean_file": None,
                                         "scale": 0.00390625}
    run = rundir.RunDir(tmp_path / "run")
    assert (run.device, run.input_shape, run.caches_features) == (Device("0,1"), (1, 1, 28, 28), True)


def test_a_manifest_of_the_release_before_schema_versions_still_loads(images, tmp_path):
    """The previous release wrote no ``schema`` and left out the fields of what the run does not use."""
    prepare(JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images),
            tmp_path / "run")
    written = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert written["schema"] == 3
    older = {key: value for key, value in written.items() if key not in ("schema", "task", "engine", "cache_features")}
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(older))
    run = rundir.RunDir(tmp_path / "run")
    assert run.manifest.to_record() == written
    assert (run.input_shape, run.caches_features, run.engine, run.manifest.freeze.upto) == (
        (1, 1, 28, 28), False, "caffe", None)


def test_a_manifest_of_schema_2_still_loads(images, tmp_path):
    """Schema 2 had no report_to: such a manifest loads, and is written back as schema 3 with nothing lost."""
    prepare(JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images),
            tmp_path / "run")
    written = json.loads((tmp_path / "run" / "manifest.json").read_text())
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(dict(written, schema=2)))
    run = rundir.RunDir(tmp_path / "run")
    assert run.manifest.to_record() == written and run.manifest.report_to == ()


@pytest.mark.parametrize("change, words", [
    ({"schema": 4}, "unreadable manifest.json (schema 4 is newer than this caffegen reads (3)); prepare the run again"),
    ({"images": {"train": 3}}, "unreadable manifest.json ("),
    ({"colour": "red"}, "unreadable manifest.json ("),
    ({"device": "gpu7"}, "unreadable manifest ("),
])
def test_a_manifest_caffegen_cannot_read_is_one_line(images, tmp_path, change, words):
    prepare(JobOptions(net=DIGITS / "train_val.prototxt", weights=DIGITS / "digits.caffemodel", data=images),
            tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(dict(manifest, **change)))
    assert_one_line_error(run_caffegen("launch", tmp_path / "run"), words)
