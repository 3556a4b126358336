"""``caffegen prepare``: a run directory for fine-tuning a pretrained model on your images."""

import click

from caffegen.errors import CaffegenError
from caffegen.job.prepare import JobOptions, parse_stages, prepare
from caffegen.run.locate import caffe_is_cpu_only, find_caffe
from caffegen.net.lr_rules import parse_lr_rules
from caffegen.net.wiring import DataSettings
from caffegen.cli.options import number_list, report


def choose_device(gpu, caffe_path, echo):
    """(device, Caffe binary or None): --gpu as given, else a GPU when the Caffe found can use one, else CPU."""
    try:
        caffe = find_caffe(caffe_path)
    except CaffegenError:
        if gpu is None:
            echo("no Caffe found yet: preparing for CPU (pass --gpu 0 to train on a GPU)")
        return (gpu or "cpu").lower(), None
    if gpu is not None:
        return gpu.lower(), caffe
    if caffe_is_cpu_only(caffe):
        echo(f"{caffe} is a CPU-only build: training on the CPU")
        return "cpu", caffe
    return "0", caffe


JOB_OPTIONS = [
    click.option("--net", "net", required=True, type=click.Path(path_type=str),
                 help="The base net: a train_val .prototxt (or a deploy net, which gains data layers and a loss)."),
    click.option("--weights", required=True, type=click.Path(path_type=str), help="The pretrained .caffemodel."),
    click.option("--data", type=click.Path(path_type=str), help="A folder with one sub-folder of images per class."),
    click.option("--train-list", type=click.Path(path_type=str), help="A Caffe list of training images ('path label')."),
    click.option("--val-list", type=click.Path(path_type=str), help="A Caffe list of validation images."),
    click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Share of each class kept for validation."),
    click.option("--seed", type=int, default=1, show_default=True, help="Seed of the split and of Caffe."),
    click.option("--skip-bad", is_flag=True, help="Leave out unreadable or non-image files instead of stopping."),
    click.option("--cache-features", is_flag=True,
                 help="Push the images through the frozen trunk once and train the head on the stored features."),
    click.option("--keep-data-layers", is_flag=True,
                 help="Keep the base net's own data layers (LMDB, …) instead of ImageData on lists."),
    click.option("--num-classes", type=click.IntRange(min=2), help="With --keep-data-layers: the classes."),
    click.option("--train-images", type=click.IntRange(min=1), help="With --keep-data-layers: training images."),
    click.option("--val-images", type=click.IntRange(min=1), help="With --keep-data-layers: validation images."),
    click.option("--copy-data", is_flag=True, help="Copy the images into the run directory (relative paths: portable)."),
    click.option("--freeze-upto", metavar="LAYER", help="Freeze LAYER and everything before it."),
    click.option("--freeze-from", metavar="LAYER", help="Train LAYER and what follows; freeze the rest."),
    click.option("--epochs", type=click.IntRange(min=1), help="Passes over the training images (default: 10)."),
    click.option("--strategy", type=click.Choice(["auto"]),
                 help="auto: freeze point, learning rate and epochs from `caffegen advise` (needs --similarity)."),
    click.option("--similarity", type=click.Choice(["high", "low"]),
                 help="How close your images are to the base model's training data (for --strategy auto)."),
    click.option("--batch-size", type=click.IntRange(min=1), help="Training batch (default: the base net's)."),
    click.option("--val-batch-size", type=click.IntRange(min=1), help="Validation batch (default: the base net's)."),
    click.option("--iter-size", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Batches accumulated per iteration."),
    click.option("--resize", callback=number_list(int, (1, 2), positive=True), metavar="H[,W]", help="Resize images to H×W before cropping."),
    click.option("--mean-value", callback=number_list(float, (1, 3)), metavar="B,G,R", help="Per-channel mean to subtract."),
    click.option("--mean-file", type=click.Path(path_type=str), help="The mean .binaryproto the base net names."),
    click.option("--base-lr", type=float, help="Learning rate (default: 1/10 of --solver's, else 0.001)."),
    click.option("--solver", "base_solver", type=click.Path(path_type=str), help="The base model's solver, for its learning rate."),
    click.option("--solver-set", multiple=True, metavar="KEY=VALUE", help="Set any solver field. Repeatable."),
    click.option("--snapshot-every", type=click.IntRange(min=1), default=1, show_default=True, help="Epochs between snapshots."),
    click.option("--gpu", metavar="ID|all|cpu", help="0, 0,1, all or cpu (default: a GPU when Caffe can use one)."),
    click.option("--caffe", "caffe_path", type=click.Path(path_type=str), help="The caffe binary."),
    click.option("--lr-mult", "lr_rules", multiple=True, metavar="PATTERN=MULT",
                 help="lr_mult of the trainable layers whose names match PATTERN (glob; the most specific "
                      "wins; a bias gets twice MULT). Repeatable."),
    click.option("--head-name", help="Name of the new classifier (default: <old>_ft)."),
    click.option("--head-lr-mult", type=click.FloatRange(min=0),
                 help="Learning-rate multiplier of the new classifier (default: 10; its bias gets twice this)."),
]


def job_options(command):
    """The options that describe a fine-tuning job, shared by prepare and the commands built on it."""
    for option in reversed(JOB_OPTIONS):
        command = option(command)
    return command


def job_from_options(params, echo):
    """(JobOptions, Caffe binary or None) from the parsed job options."""
    if params["freeze_upto"] and params["freeze_from"]:
        raise CaffegenError("give --freeze-upto or --freeze-from, not both")
    device, caffe = choose_device(params["gpu"], params["caffe_path"], echo)
    resize = params["resize"]
    settings = DataSettings(params["batch_size"], params["val_batch_size"], (resize * 2)[:2] if resize else None,
                            params["mean_value"] or ())
    options = JobOptions(
        net=params["net"], weights=params["weights"], data=params["data"], train_list=params["train_list"],
        val_list=params["val_list"], val_fraction=params["val_fraction"], seed=params["seed"],
        skip_bad=params["skip_bad"], copy_data=params["copy_data"], freeze_upto=params["freeze_upto"],
        freeze_from=params["freeze_from"], epochs=params["epochs"], snapshot_every=params["snapshot_every"],
        iter_size=params["iter_size"], data_settings=settings, mean_file=params["mean_file"],
        base_lr=params["base_lr"], base_solver=params["base_solver"], solver_set=params["solver_set"],
        device=device, head_lr_mult=params["head_lr_mult"], head_name=params["head_name"],
        lr_rules=parse_lr_rules(params["lr_rules"]), keep_data_layers=params["keep_data_layers"],
        num_classes=params["num_classes"], train_images=params["train_images"], val_images=params["val_images"],
        strategy=params["strategy"], similarity=params["similarity"], cache_features=params["cache_features"])
    return options, caffe


@click.command("prepare")
@job_options
@click.option("--stages", metavar="STAGE;STAGE…",
              help="Staged fine-tuning, e.g. 'upto=fc7,lr=0.001,epochs=5;from=conv4,lr=0.0001,epochs=5': "
                   "each stage starts from the one before.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="The run directory to create.")
@click.option("--force", is_flag=True, help="Replace an existing run directory.")
def prepare_command(stages, output, force, **params):
    """Prepare a fine-tuning run: wired nets, epoch-based solver, image lists, train.sh/.bat, manifest.

    Labels are 0…K-1 in sorted class order; the classifier is retargeted to K classes.
    """
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    options, caffe = job_from_options(params, echo)
    job = prepare(options, output, force=force, caffe=caffe or "caffe", warn=echo,
                  stages=parse_stages(stages) if stages else ())
    report(job.notes)
    images = job.manifest["images"]
    echo(f"prepared {job.run_dir}: {len(job.manifest['classes'])} classes, {images['train']} training and "
         f"{images['val']} validation images, {job.manifest['schedule']['max_iter']} iterations")
    echo(f"run it with: caffegen launch {job.run_dir}")
