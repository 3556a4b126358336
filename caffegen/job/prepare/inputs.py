"""What a job starts from: the base files, the images (class folders, lists or the net's own data layers),
the strategy's choices and the defaults."""

from dataclasses import replace
from pathlib import Path

from caffegen.defaults import EPOCHS, HEAD_LR_MULT
from caffegen.errors import CaffegenError
from caffegen.io.prototxt import read_net
from caffegen.job.dataset import KeptData, read_lists, scan_class_folders
from caffegen.net.advise import advise


def existing_file(path, what):
    path = Path(path)
    if not path.is_file():
        raise CaffegenError(f"no such {what} file", path)
    return path.resolve()


def job_dataset(options, warn):
    if options.keep_data_layers:
        return _kept_data(options)
    if options.data and (options.train_list or options.val_list):
        raise CaffegenError("give --data DIR or --train-list/--val-list, not both")
    if options.data:
        return scan_class_folders(options.data, options.val_fraction, options.seed, options.skip_bad, warn)
    if options.train_list and options.val_list:
        return read_lists(options.train_list, options.val_list)
    raise CaffegenError("give the images: --data DIR (one sub-folder per class) or --train-list and --val-list")


def _kept_data(options):
    if options.data or options.train_list or options.val_list or options.copy_data:
        raise CaffegenError("--keep-data-layers uses the base net's data layers: drop --data, the lists "
                            "and --copy-data")
    counts = (options.num_classes, options.train_images, options.val_images)
    if not all(count and count > 0 for count in counts):
        raise CaffegenError("--keep-data-layers needs --num-classes, --train-images and --val-images "
                            "(caffegen cannot count what is inside an LMDB)")
    return KeptData([str(label) for label in range(options.num_classes)], options.train_images, options.val_images)


def with_defaults(options):
    """``options`` with the defaults of what neither the user nor a strategy chose."""
    return replace(options, epochs=EPOCHS if options.epochs is None else options.epochs,
                   head_lr_mult=HEAD_LR_MULT if options.head_lr_mult is None else options.head_lr_mult)


def apply_strategy(options, dataset):
    """With ``--strategy auto``, the advisor's freeze point, learning rate and epochs where the user gave none."""
    if options.strategy is None:
        return options, []
    if options.strategy != "auto":
        raise CaffegenError(f"--strategy takes 'auto', got '{options.strategy}'")
    if options.similarity is None:
        raise CaffegenError("--strategy auto needs --similarity high|low: how close your images are to what "
                            "the base model was trained on")
    advice = advise(read_net(options.net).net, dataset.train_count, options.similarity, len(dataset.classes),
                    options.net)
    chosen = {"freeze_upto": advice.freeze_upto, "base_lr": advice.base_lr, "epochs": advice.epochs,
              "head_lr_mult": advice.head_lr_mult}
    if options.freeze_upto or options.freeze_from:
        del chosen["freeze_upto"]
    chosen = {key: value for key, value in chosen.items() if getattr(options, key) is None}
    note = f"strategy: case {advice.case}, {advice.title}: " + ", ".join(f"{k} {v}" for k, v in chosen.items())
    return replace(options, **chosen), [note]


def zoo_note(options):
    """What the user hears of a zoo model the job starts from: its name, licence and folder."""
    model = options.zoo_model
    if not model:
        return []
    return [f"base model: the zoo's {model.name} (licence: {model.licence}), from {Path(options.weights).parent}"]
