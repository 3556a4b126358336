"""The options that describe a fine-tuning job, shared by prepare and sweep, and the JobOptions they make."""

from dataclasses import fields, replace

import click

from caffegen.cli.options import CAFFE_OPTION, ZOO_SOURCE_OPTIONS, gpu_option, number_list
from caffegen.defaults import CACHE_BATCH, EPOCHS, GPU_CACHE_BATCH, HEAD_LR_MULT
from caffegen.errors import CaffegenError
from caffegen.job.imagedb import ENCODE_TYPES
from caffegen.job.options import AUTO, CAFFE, ENGINES, MEAN_IMAGE, TASKS, JobOptions

# Click options that JobOptions receives in another form (the data settings and the device are no click options).
CONVERTED = {"lr_rules"}


def default(name):
    """The default of JobOptions field ``name``: the one place it is stated."""
    return JobOptions.__dataclass_fields__[name].default


JOB_OPTIONS = [
    click.option("--net", "net", type=click.Path(path_type=str),
                 help="The base net: a train_val .prototxt (or a deploy net, which gains data layers and a loss)."),
    click.option("--weights", type=click.Path(path_type=str), help="The pretrained .caffemodel."),
    click.option("--model", metavar="NAME",
                 help="A zoo model (caffegen zoo list) instead of --net and --weights: downloaded if needed, with "
                      "its own preprocessing."),
    *ZOO_SOURCE_OPTIONS,
    click.option("--data", type=click.Path(path_type=str), help="A folder with one sub-folder of images per class "
                 "(with --task segmentation: images/ and masks/)."),
    click.option("--task", type=click.Choice(TASKS), default=default("task"),
                 show_default=True, help="segmentation: an FCN trained on label masks (pixel value = class, 255 = "
                 "ignore)."),
    click.option("--train-list", type=click.Path(path_type=str),
                 help="A Caffe list of training images ('path label')."),
    click.option("--val-list", type=click.Path(path_type=str), help="A Caffe list of validation images."),
    click.option("--val-fraction", type=float, default=default("val_fraction"), show_default=True,
                 help="Share of each class kept for validation."),
    click.option("--seed", type=int, default=default("seed"), show_default=True,
                 help="Seed of the split and of Caffe."),
    click.option("--skip-bad", is_flag=True, help="Leave out unreadable or non-image files instead of stopping."),
    click.option("--cache-features", is_flag=True,
                 help="Push the images through the frozen trunk once and train the head on the stored features."),
    click.option("--engine", type=click.Choice(ENGINES), default=default("engine"), show_default=True,
                 help="With --cache-features: what computes the trunk features; auto checks every installed "
                      "engine that reads the trunk against Caffe on the first mini-batch and uses the fastest that "
                      "agrees, else Caffe. A named engine is checked against Caffe every time too."),
    click.option("--cache-batch", type=click.IntRange(min=1), metavar="N",
                 help="With --cache-features: images per mini-batch of the extraction [default: the most, up to "
                      f"{CACHE_BATCH} on the CPU and {GPU_CACHE_BATCH} on a GPU, that the memory estimate fits in "
                      "the machine's]."),
    click.option("--lmdb", is_flag=True,
                 help="Build train_lmdb/ and val_lmdb/ with Caffe's convert_imageset (resized, shuffled) and train "
                      "from Data layers on them: no image decoding at every epoch. Rebuilt only when the images "
                      "change."),
    click.option("--encoded", is_flag=True, help="With --lmdb: store the images encoded (--encode-type), not as "
                 "raw pixels: a smaller database, decoded at every epoch."),
    click.option("--encode-type", type=click.Choice(ENCODE_TYPES), default=default("encode_type"),
                 show_default=True, help="With --encoded: the image format stored."),
    click.option("--mean", type=click.Choice([MEAN_IMAGE]),
                 help="image: subtract the mean image of train_lmdb, computed by compute_image_mean (needs --lmdb)."),
    click.option("--keep-data-layers", is_flag=True,
                 help="Keep the base net's own data layers (LMDB, …) instead of ImageData on lists."),
    click.option("--num-classes", type=click.IntRange(min=2),
                 help="With --keep-data-layers or --task segmentation: the classes."),
    click.option("--train-images", type=click.IntRange(min=1), help="With --keep-data-layers: training images."),
    click.option("--val-images", type=click.IntRange(min=1), help="With --keep-data-layers: validation images."),
    click.option("--copy-data", is_flag=True,
                 help="Copy the images into the run directory (relative paths: portable)."),
    click.option("--freeze-upto", metavar="LAYER", help="Freeze LAYER and everything before it."),
    click.option("--freeze-from", metavar="LAYER", help="Train LAYER and what follows; freeze the rest."),
    click.option("--epochs", type=click.IntRange(min=1), help=f"Passes over the training images (default: {EPOCHS})."),
    click.option("--strategy", type=click.Choice(["auto"]),
                 help="auto: freeze point, learning rate and epochs from `caffegen advise` (needs --similarity)."),
    click.option("--similarity", type=click.Choice(["high", "low"]),
                 help="How close your images are to the base model's training data (for --strategy auto)."),
    click.option("--batch-size", type=click.IntRange(min=1), help="Training batch (default: the base net's)."),
    click.option("--val-batch-size", type=click.IntRange(min=1), help="Validation batch (default: the base net's)."),
    click.option("--iter-size", type=click.IntRange(min=1), default=default("iter_size"), show_default=True,
                 help="Batches accumulated per iteration."),
    click.option("--resize", callback=number_list(int, (1, 2), positive=True), metavar="H[,W]",
                 help="Resize images to H×W before cropping."),
    click.option("--mean-value", callback=number_list(float, (1, 3)), metavar="B,G,R",
                 help="Per-channel mean to subtract."),
    click.option("--mean-file", type=click.Path(path_type=str),
                 help="A mean .binaryproto to subtract (default: the one the base net names)."),
    click.option("--scale", type=click.FloatRange(min=0, min_open=True),
                 help="Multiply the mean-subtracted pixels by this (transform_param.scale; MobileNet's is 0.017)."),
    click.option("--base-lr", type=float, help="Learning rate (default: 1/10 of --solver's, else 0.001)."),
    click.option("--solver", "base_solver", type=click.Path(path_type=str),
                 help="The base model's solver, for its learning rate."),
    click.option("--solver-set", multiple=True, metavar="KEY=VALUE", help="Set any solver field. Repeatable."),
    click.option("--snapshot-every", type=click.IntRange(min=1), default=default("snapshot_every"), show_default=True,
                 help="Epochs between snapshots."),
    gpu_option("a GPU when Caffe can use one"),
    CAFFE_OPTION,
    click.option("--lr-mult", "lr_rules", multiple=True, metavar="PATTERN=MULT",
                 help="lr_mult of the trainable layers whose names match PATTERN (glob; the most specific "
                      "wins; a bias gets twice MULT). Repeatable."),
    click.option("--head-name", help="Name of the new classifier (default: <old>_ft)."),
    click.option("--head-lr-mult", type=click.FloatRange(min=0),
                 help=f"Learning-rate multiplier of the new classifier (default: {HEAD_LR_MULT:g}; its bias gets "
                      "twice this)."),
]


def job_options(command):
    """The options that describe a fine-tuning job, shared by prepare and the commands built on it."""
    for option in reversed(JOB_OPTIONS):
        command = option(command)
    return command


def job_from_options(params, target, reporter):
    """JobOptions from the parsed job options, for the device ``target`` plans: every field named alike is copied.

    With --model, the zoo model is downloaded (or found downloaded) first, and gives the net, the
    weights and the preprocessing the options leave unsaid.
    """
    from caffegen.job.zoo import with_zoo_model
    from caffegen.net.lr_rules import parse_lr_rules
    from caffegen.net.wiring import DataSettings
    resize = params["resize"]
    settings = DataSettings(params["batch_size"], params["val_batch_size"], (resize * 2)[:2] if resize else None,
                            params["mean_value"] or (), params["scale"])
    given = {field.name: params[field.name] for field in fields(JobOptions)
             if field.name in params and field.name not in CONVERTED}
    options = JobOptions(**given, data_settings=settings, lr_rules=parse_lr_rules(params["lr_rules"])).check()
    fetched = _zoo_model(params, reporter)  # once the options are known to go together
    if params["cache_features"] and params["engine"] not in (AUTO, CAFFE):
        from caffegen.run.engines import ENGINES as INSTALLABLE
        INSTALLABLE[params["engine"]].title()  # refuses an engine that is not installed, before anything is written
    options = replace(options, device=target.planned_device(reporter))
    return with_zoo_model(options, fetched) if fetched else options


def _zoo_model(params, reporter):
    """The zoo model --model names, downloaded and verified; None without --model."""
    if not params["model"]:
        if not (params["net"] and params["weights"]):
            raise CaffegenError("give the base model: --net and --weights, or --model NAME (see caffegen zoo list)")
        return None
    if params["net"] or params["weights"]:
        raise CaffegenError("give --model or --net/--weights, not both: --model brings its own net and weights")
    from caffegen.io.zoo import fetch_model, load_catalog
    model = load_catalog(params["catalogs"]).find(params["model"])
    return fetch_model(model, mirror=params["mirror"], offline=params["offline"], reporter=reporter)
