"""The whole flow on the bundled model, offline, on the CPU.

The bundled base model was trained on the handwritten digits 0–4; the demo fine-tunes it,
trunk frozen, to the digits 5–9: it writes the images, prepares a run directory and launches
the real Caffe, then evaluates the trained model on the validation images (``eval/``). The
directory is left complete, so ``caffegen launch DIR`` can run it again.
"""

import tempfile
from pathlib import Path

from caffegen.errors import CaffegenError, CaffeNotFound
from caffegen.reporting import SilentReporter
from caffegen.run.track.tracker import Settings
from caffegen.strategies.watching import watching

NEW_TASK = range(5, 10)
FREEZE_UPTO = "conv2"


def ensure_caffe(caffe, reporter):
    """The Caffe to train with on the CPU, installed into the user prefix when none is found."""
    from caffegen.job.device import CPU
    from caffegen.run.install import default_prefix, install_caffe
    from caffegen.run.target import Target, resolve_target
    try:
        return resolve_target(caffe, CPU.name)
    except CaffeNotFound:
        if caffe:
            raise
        reporter.line(f"Caffe not found: installing a CPU build of Caffe 1.0 into {default_prefix()} "
                      "(once, about 20 s)")
        return Target(install_caffe(log=reporter.line), CPU)


def run_demo(out_dir, caffe=None, force=False, reporter=None, report_to=(), settings=Settings()):
    """Fine-tune the bundled digits model to new digits in ``out_dir`` and evaluate it, sent to the trackers
    ``report_to`` (with ``settings``) as it goes.

    Returns the launch result and the evaluation's metrics (None when training failed). The libraries the
    demo needs load once the watch has started, so that the trackers get ready meanwhile.
    """
    reporter = reporter or SilentReporter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise CaffegenError("exists; pass --force to replace it, or choose another directory with -o", out_dir)
    with watching(report_to, settings) as watch:  # first: the trackers get ready while the demo prepares
        from caffegen.job.rundir import RunDir
        from caffegen.run.evaluate import evaluate_validation
        from caffegen.run.launch import launch_run
        target = ensure_caffe(caffe, reporter)
        _prepare_demo(out_dir, force, target, reporter)
        watch.follow([out_dir])
        result = launch_run(RunDir(out_dir), target, False, reporter)
        if result.exit_code != 0:
            return result, None
        reporter.line("evaluating the trained model on the validation images")
        return result, evaluate_validation(target, out_dir, reporter=reporter)


def _prepare_demo(out_dir, force, target, reporter):
    """Write the images of the new digits and prepare the run directory ``out_dir`` to fine-tune on them."""
    from caffegen.io.resources import resource_dir
    from caffegen.job.device import CPU
    from caffegen.job.prepare import JobOptions, prepare
    from caffegen.strategies.digits import write_digit_images
    base = resource_dir("models") / "digits"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        count = write_digit_images(Path(tmp), NEW_TASK)
        reporter.line(f"wrote {count} images of the digits {NEW_TASK[0]}–{NEW_TASK[-1]} (the base model knows 0–4)")
        options = JobOptions(net=base / "train_val.prototxt", weights=base / "digits.caffemodel", data=Path(tmp),
                             freeze_upto=FREEZE_UPTO, copy_data=True, device=CPU)
        job = prepare(options, out_dir, force=force, caffe=target.caffe, warn=reporter.line)
    for note in job.notes:
        reporter.line(note)
    reporter.line(f"prepared {out_dir}; training on the CPU")
