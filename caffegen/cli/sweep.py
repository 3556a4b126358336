"""``caffegen sweep``: one fine-tuning run per freeze point and learning rate, here or on Slurm, compared."""

from dataclasses import replace
from pathlib import Path

import click

from caffegen.cli.joboptions import job_from_options, job_options
from caffegen.cli.options import force_option, number_list, slurm_options, tracking_options, tracking_settings
from caffegen.errors import CaffegenError
from caffegen.io.quoting import sh_command
from caffegen.reporting import reporter_for_stderr


def _optional(*names):
    """Make the named options of a command optional: they are needed in one mode only, and checked there."""
    def relax(command):
        for param in command.params:
            if param.name in names:
                param.required = False
        return command
    return relax


def _names(value, option):
    """The comma-separated names of ``option`` as a tuple; none when it was not given."""
    if value is None:
        return ()
    names = tuple(part.strip() for part in value.split(","))
    if not all(names):
        raise CaffegenError(f"{option} takes comma-separated names, got '{value}'")
    return names


@_optional("net", "weights")
@click.command("sweep")
@job_options
@click.option("--lr", "learning_rates", callback=number_list(float, positive=True), metavar="LR[,LR…]",
              help="Learning rates to try, one run each per freeze point (default: as --base-lr).")
@click.option("-o", "--output", type=click.Path(path_type=str), help="The sweep directory to create.")
@force_option("Replace an existing sweep directory, and prepare runs whose estimated memory exceeds the machine's "
              "(RAM available, or the GPUs' free memory; with --slurm, the --mem asked for).")
@click.option("--gpus", metavar="ID[,ID…]", help="Train here on these GPUs, one run per GPU at a time.")
@slurm_options("Write slurm.sh, a job array with one task per run, and submit it.",
               "slurm.sh (and slurm_features.sh with --cache-features)")
@click.option("--collect", "collect_dir", metavar="DIR", type=click.Path(path_type=str),
              help="Gather the results of the sweep in DIR (after Slurm, or any time).")
@tracking_options("Send the runs to these trackers while they train: tensorboard (one log dir, HParams table), "
                  "mlflow (a parent run, one child run each).")
@click.pass_context
def sweep_command(ctx, learning_rates, output, force, gpus, slurm, slurm_opts, no_submit, collect_dir, report_to,
                  mlflow_uri, **params):
    """Fine-tune once per freeze point × learning rate and compare the runs.

    \b
    caffegen sweep --net N --weights W --data DIR --freeze-upto conv5,fc6,fc7 --lr 0.001,0.0001 -o runs/sweep
    caffegen sweep ... --gpus 0,1          one run per GPU at a time
    caffegen sweep ... --slurm [--slurm-opt --partition=gpu ...]
    caffegen sweep --collect runs/sweep    gather the results, any time

    --freeze-upto (or --freeze-from) takes comma-separated layers. Each run gets a directory such as
    upto-conv5_lr-0.001, listed in sweep.json. Without --slurm the runs train here, one after another;
    a failing run does not stop the others. --slurm writes slurm.sh, a job array with one task per
    run, and submits it with sbatch. The comparison goes to results.csv and results.png, the table to
    standard output. Exit code after training here: 0 when every run ended well, 1 when one did not,
    130 after Ctrl-C.
    """
    from caffegen.strategies.sweep import collect, run_here, run_on_gpus
    reporter = reporter_for_stderr()
    if collect_dir:
        if output or slurm or gpus:
            raise CaffegenError("--collect DIR gathers an existing sweep: give it without -o, --slurm or --gpus")
        _show(collect(collect_dir), collect_dir, reporter)
        return
    _check_modes(output, params, learning_rates, gpus, slurm, slurm_opts, no_submit, report_to)
    gpu_ids = _gpu_ids(gpus)
    target = _sweep_target(params, gpus, gpu_ids, slurm)
    settings = tracking_settings(mlflow_uri)
    with _tracking(None if slurm else report_to, settings) as watch:
        runs = _prepared_runs(params, learning_rates, output, force, gpus, slurm_opts if slurm else None, target,
                              reporter)
        if slurm:
            _submit(output, runs, slurm_opts, params["caffe_path"], no_submit, reporter)
            if report_to:
                from caffegen.strategies.watching import watch_in_background
                watch_in_background(output, report_to, settings, reporter)
            return
        watch.follow([Path(output).resolve()])
        # Per GPU, or here, each run on the device it was prepared for.
        errors = run_on_gpus(output, runs, gpu_ids, target.caffe, reporter) if gpu_ids else \
            run_here(output, runs, replace(target, device=None), reporter)
    rows = _show(collect(output, runs, errors), output, reporter)
    statuses = {row["status"] for row in rows}
    ctx.exit(130 if "interrupted" in statuses else 0 if statuses == {"ok"} else 1)


def _prepared_runs(params, learning_rates, output, force, gpus, sbatch_options, target, reporter):
    """Prepare one run per freeze point × learning rate in ``output``, for Slurm with ``sbatch_options`` when
    given; return the SweepRuns."""
    from caffegen.job.device import Device
    from caffegen.run.lmdb import DatabaseBuilder
    from caffegen.strategies.sweep import combinations, prepare_sweep, sweep_budget
    options = job_from_options(params, target, reporter)
    planned = combinations(options, _names(params["freeze_upto"], "--freeze-upto"),
                           _names(params["freeze_from"], "--freeze-from"), learning_rates)
    budget = sweep_budget(Device.parse(gpus) if gpus else options.device, sbatch_options)
    databases = DatabaseBuilder(target.required(), reporter) if options.lmdb else None
    return prepare_sweep(planned, output, force, target.caffe or "caffe", reporter, budget=budget, databases=databases)


def _sweep_target(params, gpus, gpu_ids, slurm):
    """The Caffe and device of the sweep: the first of --gpus, which a CPU-only Caffe refuses."""
    from caffegen.run.target import resolve_target
    target = resolve_target(params["caffe_path"], gpu_ids[0] if gpu_ids else params["gpu"], required=not slurm)
    if gpu_ids and target.cpu_only:
        raise CaffegenError(f"{target.caffe} is a CPU-only build and cannot use --gpus {gpus}; drop --gpus to train "
                            "the runs one after another on the CPU")
    return target


def _tracking(report_to, settings):
    """While inside, a watch process of its own gets ready to send the sweep's runs to the trackers ``report_to``."""
    from caffegen.strategies.watching import watching
    return watching(report_to, settings)


def _check_modes(output, params, learning_rates, gpus, slurm, slurm_opts, no_submit, report_to):
    """Refuse option combinations that cannot mean anything, before anything is written."""
    if report_to and no_submit:
        raise CaffegenError("--report-to follows the runs once submitted; with --no-submit, follow them after "
                            "sbatch with: caffegen watch --report-to TRACKERS DIR")
    if not output:
        raise CaffegenError("give the sweep directory to create with -o DIR (or gather one with --collect DIR)")
    if not params["net"] or not params["weights"]:
        raise CaffegenError("give the base model with --net and --weights")
    if learning_rates and params["base_lr"] is not None:
        raise CaffegenError("give --lr (the learning rates to sweep) or --base-lr, not both")
    if gpus and slurm:
        raise CaffegenError("--gpus runs here; with --slurm ask Slurm for GPUs with --slurm-opt --gres=gpu:1")
    if gpus and params["gpu"]:
        raise CaffegenError("give --gpus (one run per GPU) or --gpu (every run on these GPUs), not both")
    if (slurm_opts or no_submit) and not slurm:
        raise CaffegenError("--slurm-opt and --no-submit go with --slurm")
    if slurm:
        from caffegen.strategies.slurm import check_slurm
        check_slurm(output, slurm_opts)


def _gpu_ids(gpus):
    ids = _names(gpus, "--gpus")
    if not all(gpu.isdigit() for gpu in ids):
        raise CaffegenError(f"--gpus takes GPU ids such as 0,1, got '{gpus}'")
    return ids


def _submit(output, runs, slurm_opts, caffe_path, no_submit, reporter):
    from caffegen.strategies.slurm import SWEEP_SCRIPT, log_name, sbatch_line
    from caffegen.strategies.sweep import submit_sweep, write_slurm_scripts
    features, script = write_slurm_scripts(output, runs, slurm_opts, caffe_path)
    if no_submit:
        if features:
            reporter.line(f"wrote {features}: compute the shared trunk features first: {sbatch_line(features)}")
        reporter.line(f"wrote {script} ({len(runs)} tasks); submit it with: "
                      f"{sbatch_line(script, after_job=bool(features))}"
                      + (" (JOB: the features job's id)" if features else ""))
        return
    after, job_id = submit_sweep(features, script)
    if after:
        reporter.line(f"submitted the trunk features as job array {after}; the runs start when it succeeds")
    click.echo(job_id)
    reporter.line(f"submitted job array {job_id} ({len(runs)} tasks); "
                  f"logs: {Path(output) / log_name(SWEEP_SCRIPT, job_id, '*')}")
    reporter.line(f"gather the results with: {sh_command('caffegen', 'sweep', '--collect', output)}")


def _show(rows, sweep_dir, reporter):
    from caffegen.strategies.sweep import PLOT, TABLE, table_lines
    for line in table_lines(rows):
        click.echo(line)
    reporter.line(f"table: {Path(sweep_dir) / TABLE}; plot: {Path(sweep_dir) / PLOT}")
    return rows
