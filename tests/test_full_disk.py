"""A full disk or a read-only folder, for real (a small tmpfs): one line naming the place, nothing half-written."""

from pathlib import Path

from conftest import DIGITS, assert_one_line_error, copy_run

BASE_MODEL = ("--net", DIGITS / "train_val.prototxt", "--weights", DIGITS / "digits.caffemodel")


def left_in(folder):
    """What a failed command left in ``folder``, hidden staging folders included."""
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_prepare_on_a_full_disk(cli, images, small_disk):
    disk = small_disk("disk", 200)
    result = cli("prepare", "--gpu", "cpu", *BASE_MODEL, "--data", images, "--copy-data", "-o", disk / "run")
    assert_one_line_error(result, "cannot write here: No space left on device", "MB free on its file system")
    assert str(disk) in result.stderr and left_in(disk) == []


def test_prepare_into_a_read_only_folder(cli, images, small_disk):
    disk = small_disk("readonly", 1000, read_only=True)
    result = cli("prepare", "--gpu", "cpu", *BASE_MODEL, "--data", images, "-o", disk / "run")
    assert_one_line_error(result, f"{disk}: cannot write here: Read-only file system")


def test_evaluate_export_and_sweep_on_a_full_disk(cli, trained_digits, images, tmp_path, small_disk):
    run = copy_run(trained_digits, tmp_path)
    disk = small_disk("disk", 64)
    for args in (("evaluate", run, "-o", disk / "eval"), ("export", run, "-o", disk / "bundle"),
                 ("sweep", "--gpu", "cpu", *BASE_MODEL, "--data", images, "--freeze-upto", "conv1,fc1",
                  "--copy-data", "-o", disk / "sweep")):
        result = cli(*args)
        assert_one_line_error(result, f"{disk}", "cannot write here: No space left on device")
        assert left_in(disk) == [], (args[0], left_in(disk))


def test_launch_when_the_disk_fills_up(cli, caffe, images, small_disk):
    """Caffe cannot write its first snapshot, nor caffegen the log and curves: one line, and a resumable run."""
    disk = small_disk("disk", 320)
    run = disk / "run"
    assert cli("prepare", "--gpu", "cpu", *BASE_MODEL, "--data", images, "--epochs", 2, "-o", run).returncode == 0
    result = cli("launch", run)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"caffegen: error: {run}") and "No space left on device" in last, result.stderr
    assert not list(run.glob(".*.tmp")) and not list(run.glob("*/.*.tmp"))


def test_a_cached_run_whose_features_fill_the_disk(cli, caffe, images, small_disk):
    disk = small_disk("disk", 400)
    run = disk / "run"
    assert cli("prepare", "--gpu", "cpu", *BASE_MODEL, "--data", images, "--epochs", 1, "--freeze-upto", "conv2",
               "--cache-features", "--engine", "caffe", "-o", run).returncode == 0
    result = cli("launch", run)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert last.startswith(f"caffegen: error: {run / 'features'}") and "No space left on device; 0.0 MB free" in last


def test_a_failed_forward_pass_keeps_the_log_it_names(cli, trained_digits, tmp_path):
    run = copy_run(trained_digits, tmp_path)
    wrong = tmp_path / "wrong.caffemodel"
    wrong.write_bytes((DIGITS / "digits.caffemodel").read_bytes()[:1000])  # cut short: Caffe cannot read it
    result = cli("evaluate", run, "--weights", wrong, "-o", tmp_path / "eval")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    log = result.stderr.split("caffegen: error: ")[1].split(": ")[0]
    assert log.endswith("forward.log") and Path(log).is_file(), result.stderr
