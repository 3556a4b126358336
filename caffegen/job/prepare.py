"""Preparing a fine-tuning job: a self-contained run directory that ``caffe train`` can run.

The directory holds the wired train_val and deploy nets, the solver, the image lists and
labels, ``train.sh``/``train.bat`` and a manifest of inputs (sizes, hashes) and the command.
It is built beside its final place and renamed into it, so it is either complete or absent.
"""

import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from caffegen import __version__
from caffegen.defaults import EPOCHS, FINE_TUNE_LR, HEAD_LR_MULT
from caffegen.errors import CaffegenError
from caffegen.io.datasources import first_input
from caffegen.io.files import built_beside, file_sha256, temp_folder
from caffegen.io.meanfile import read_mean_file
from caffegen.io.prototxt import read_net, read_solver, to_text
from caffegen.job.cacheplan import check_cacheable
from caffegen.job.dataset import Dataset, KeptData, read_lists, scan_class_folders
from caffegen.job.imagedb import MEAN_IMAGE, TRAIN_DB, VAL_DB, plan_databases
from caffegen.job.manifest import Freeze, Images, Manifest, Schedule, StageEntry
from caffegen.job.memorycheck import extraction_batch, extraction_check, training_check
from caffegen.job.options import ENGINES, SEGMENTATION, JobOptions, Stage, parse_stages  # noqa: F401 (API)
from caffegen.job.rundir import DEPLOY, SNAPSHOT_DIR, SOLVER, TRAIN_VAL, RunDir, manifest_file, refuse_if_launched
from caffegen.job.scripts import caffe_arguments, render_stages_sh, wrapper_scripts
from caffegen.job.segmentation import build_segmentation
from caffegen.job.solver import (
    check_snapshot_prefix,
    check_solver_text,
    epoch_schedule,
    exact_validation,
    parse_overrides,
    render_solver,
    solver_fields,
)
from caffegen.job.zoo import preprocessing_warnings
from caffegen.net.advise import advise
from caffegen.net.freeze import freeze
from caffegen.net.head import drop_unscorable_accuracies, retarget_head
from caffegen.net.inspect import preflight
from caffegen.net.layers import PYTHON, python_layer_note
from caffegen.net.lr_rules import apply_lr_rules
from caffegen.net.netview import TEST, TRAIN
from caffegen.net.shapes import check_runs
from caffegen.net.wiring import (
    DataSettings,
    data_layers,
    deploy_net,
    fit_crop,
    phase_batch_sizes,
    preprocessing,
    read_from_lmdb,
    set_batch,
    wire_image_data,
)

MEAN_FILE = "mean.binaryproto"
WEIGHTS_COPY = "base.caffemodel"


@dataclass
class PreparedJob:
    """A written run directory and what the user should hear about it."""

    run_dir: Path
    manifest: Manifest
    notes: list


@dataclass
class _Build:
    """The files of one run directory, before they are written."""

    files: dict
    copies: dict
    manifest: Manifest
    notes: list
    moves: dict = field(default_factory=dict)  # {built path: name in the run directory}, renamed in


def prepare(options, run_dir, force=False, caffe="caffe", warn=None, stages=(), budget=None, databases=None,
            reuse_from=()):
    """Write the run directory for ``options``; refuse an existing one unless ``force``.

    With ``stages``, the directory holds one run per stage (stage1/, stage2/, …); each stage
    starts from the final weights of the one before. With ``budget`` (a MemoryBudget), a job whose
    estimated peak memory exceeds it is refused too, unless ``force``. With ``options.lmdb``,
    ``databases`` (a :class:`~caffegen.run.lmdb.DatabaseBuilder`) builds the LMDBs; those of the
    run directory it replaces, or of the run directories ``reuse_from``, are reused when their images
    are unchanged.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not force:
        raise CaffegenError("run directory exists; pass --force to replace it", run_dir)
    refuse_if_launched(run_dir, "replace it")
    _check_lmdb_options(options, stages, databases)
    weights = _existing_file(options.weights, "weights")
    if options.task == SEGMENTATION:
        return _prepare_segmentation(options, run_dir, weights, caffe, stages, force)
    dataset = _dataset(options, warn)
    options, notes = _apply_strategy(options, dataset)
    options = _with_defaults(options)
    if options.zoo_model:
        notes.append(f"base model: the zoo's {options.zoo_model.name} (licence: {options.zoo_model.licence}), "
                     f"from {Path(options.weights).parent}")
    say = warn or notes.append
    memory = _Checks(budget, force, options.net)
    if not stages:
        with _scratch_beside(run_dir) if options.lmdb else nullcontext() as scratch:
            build_databases = None
            if options.lmdb:
                reusable = ([run_dir] if run_dir.is_dir() else []) + list(reuse_from)
                build_databases = lambda plan: databases(plan, scratch, reusable)  # noqa: E731
            build = _build(options, dataset, weights, weights, caffe, memory, say, build_databases)
            check = _planned_cache(memory, options.device, build) if options.cache_features else None
            build.notes += _write_run_dir(run_dir, build.files, build.copies, check, build.moves) or []
        return PreparedJob(run_dir, build.manifest, notes + build.notes)
    job = _prepare_stages(options, stages, dataset, weights, run_dir, caffe, memory, say)
    job.notes[:0] = notes
    return job


def _prepare_segmentation(options, run_dir, weights, caffe, stages, force):
    """Write a segmentation run directory (:mod:`caffegen.job.segmentation`)."""
    if stages or options.strategy:
        raise CaffegenError("--stages and --strategy do not combine with --task segmentation yet")
    build = build_segmentation(_with_defaults(options), weights, caffe, force)
    manifest = replace(_manifest(_with_defaults(options), weights, weights, build.dataset, build.schedule, None),
                       **build.manifest)
    build.files.update(manifest_file(manifest))
    _write_run_dir(run_dir, build.files, {}, build.write_data)
    return PreparedJob(run_dir, manifest, build.notes)


def _check_lmdb_options(options, stages, databases):
    """Refuse what does not combine with --lmdb, and its options without it."""
    if not options.lmdb:
        if options.encoded or options.mean == MEAN_IMAGE:
            raise CaffegenError(f"{'--encoded' if options.encoded else '--mean image'} needs --lmdb: it is about "
                                "the LMDBs that convert_imageset builds")
        return
    refusals = [
        (options.cache_features, "--lmdb speeds up reading the images at every epoch; --cache-features reads each "
                                 "image once, so it gains nothing from a database: drop one of them"),
        (options.keep_data_layers, "--keep-data-layers keeps the base net's data layers, --lmdb builds new ones: "
                                   "drop one of them"),
        (options.task == SEGMENTATION, "--lmdb builds databases of labelled images; --task segmentation reads "
                                       "images and masks with its own data layers: drop --lmdb"),
        (bool(stages), "--lmdb does not combine with --stages yet: prepare the stages without it"),
        (databases is None, "--lmdb is not available here: only caffegen prepare and sweep build the databases"),
        (options.mean == MEAN_IMAGE and (options.mean_file or options.data_settings.mean_value),
         "give one of --mean image, --mean-file and --mean-value"),
    ]
    for refused, message in refusals:
        if refused:
            raise CaffegenError(message)


def _scratch_beside(run_dir):
    """A temporary folder beside ``run_dir`` (so that what is built there can be renamed into it), removed after."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return temp_folder(run_dir.parent, f".{run_dir.name}.lmdb.")


def _with_defaults(options):
    """``options`` with the defaults of what neither the user nor a strategy chose."""
    return replace(options, epochs=EPOCHS if options.epochs is None else options.epochs,
                   head_lr_mult=HEAD_LR_MULT if options.head_lr_mult is None else options.head_lr_mult)


def _apply_strategy(options, dataset):
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


@dataclass(frozen=True)
class _Checks:
    """The memory a job may take (None: not checked), whether to prepare it anyway (beyond that, with weights
    that name none of its layers), and the net it is for."""

    budget: object
    force: bool
    path: Path

    def note(self, check):
        """The note of a MemoryCheck, or its refusal."""
        return [check.note(self.force, self.path)]


def _planned_cache(memory, device, build):
    """The check of a cached run's built directory: its cache plan, and its extraction's memory."""
    def check(staging):
        plan = RunDir(staging).cache_plan
        notes = [plan.describe()]
        if memory.budget is not None:
            batch = extraction_batch(plan, device, memory.budget)
            notes += [batch.line()] + memory.note(extraction_check(plan, device, memory.budget, batch.size))
        return notes
    return check


def _prepare_stages(options, stages, dataset, weights, run_dir, caffe, memory, warn):
    if options.copy_data or options.cache_features:
        raise CaffegenError("--copy-data and --cache-features do not combine with --stages yet")
    files, notes, entries, weights_ref = {}, [], [], weights
    for number, stage in enumerate(stages, start=1):
        stage = Stage(stage.freeze_upto, stage.freeze_from,
                      stage.base_lr if stage.base_lr is not None else _base_lr(options),
                      stage.epochs or options.epochs)
        stage_options = replace(options, freeze_upto=stage.freeze_upto, freeze_from=stage.freeze_from,
                                base_lr=stage.base_lr, epochs=stage.epochs)
        build = _build(stage_options, dataset, weights, weights_ref, caffe, memory, warn if number == 1 else None)
        name = f"stage{number}"
        build.files.update(manifest_file(replace(build.manifest, stage=number)))
        files.update({f"{name}/{path}": text for path, text in build.files.items()})
        notes += [f"stage {number}: {stage.describe()}"] + [f"  {note}" for note in build.notes]
        max_iter = build.manifest.schedule.max_iter
        entries.append(StageEntry(name, build.manifest.freeze, stage.base_lr, stage.epochs, max_iter))
        weights_ref = f"../{name}/{SNAPSHOT_DIR}/ft_iter_{max_iter}.caffemodel"
    manifest = Manifest(__version__, _now(), tuple(dataset.classes), Images(dataset.train_count, dataset.val_count),
                        str(options.device), Schedule(sum(entry.max_iter for entry in entries)), stages=tuple(entries))
    files.update(manifest_file(manifest))
    files["train.sh"] = render_stages_sh([entry.dir for entry in entries])
    _write_run_dir(run_dir, files, {})
    return PreparedJob(run_dir, manifest, notes)


def _build(options, dataset, weights, weights_ref, caffe, memory, warn=None, build_databases=None):
    """Nets, solver, lists, scripts and manifest of one run, from the base net and ``options``.

    Its memory is checked against ``memory`` (a _Checks) unless it caches features (the
    extraction is checked then); ``warn``, if given, hears what the base net leaves unsaid about
    its preprocessing. ``build_databases``, given with --lmdb, builds an LmdbPlan's databases.
    """
    notes = []
    net = _base_net(options, warn, notes)
    test_batch = _wire_data(net, options, dataset, notes)
    plan = _lmdb_plan(net, options, dataset) if build_databases else None
    mean = _resolve_mean_file(net, options, dataset)
    _set_scale(net, options.data_settings.scale)
    _retarget(net, options, len(dataset.classes), notes)
    channels, height, width = _input_geometry(net, dataset, options.data_settings, net_dir=Path(options.net).parent)
    if plan:
        read_from_lmdb(net, {TRAIN: TRAIN_DB, TEST: VAL_DB})
    input_shape = [1, channels, height, width]
    checked_weights = weights if weights_ref == weights else None  # a later stage's do not exist yet
    _check_net(net, options, input_shape, checked_weights, memory, notes)
    schedule, solver_text, base_lr, solver = _solver(options, net, dataset, test_batch)
    if memory.budget is not None and not options.cache_features:
        notes += memory.note(training_check(net, solver.type, input_shape, checked_weights, options.device,
                                            solver.iter_size, memory.budget, options.net))
    built = build_databases(plan) if plan else None  # the longest step, once every check has passed
    mean = _check_databases(built, net, dataset, options, (channels, height, width), notes) or mean
    copies = dataset.copy_names() if options.copy_data else {}
    if options.copy_data:
        copies[weights] = weights_ref = WEIGHTS_COPY
    files = _run_files(net, deploy_net(net, channels, height, width), solver_text, dataset, copies,
                       wrapper_scripts(caffe, weights_ref, options.device.gpu_flag, len(dataset.classes), notes))
    computed_mean = bool(built and built.mean)
    manifest = replace(_manifest(options, weights, weights_ref, dataset, schedule,
                                 mean.path if mean and not computed_mean else None),
                       base_lr=base_lr, input_shape=tuple(input_shape),
                       preprocessing=_preprocessing(net, mean, plan if built else None),
                       **_lmdb_fields(plan, computed_mean) if built else {}, **_cache_fields(options))
    files.update(manifest_file(manifest))
    if mean:
        copies[mean.path] = MEAN_FILE
    return _Build(files, copies, manifest, notes, _database_moves(built, plan))


def _check_databases(built, net, dataset, options, geometry, notes):
    """Check the first record of the databases ``built`` (None: none) against the net's input ``geometry``;
    return the mean image computed from them, or None."""
    if not built:
        return None
    notes += built.notes
    _check_first_datum(net, dataset, options.data_settings, built.folder, geometry)
    return read_mean_file(built.mean) if built.mean else None


def _base_net(options, warn, notes):
    """The base net, upgraded from a legacy format if need be; ``warn`` hears what it leaves unsaid."""
    loaded = read_net(options.net)
    if loaded.upgraded_from:
        notes.append(f"upgraded the legacy {loaded.upgraded_from} net to the current layer format")
    for line in preprocessing_warnings(options, loaded.net) if warn else ():
        warn(line)
    return loaded.net


def _wire_data(net, options, dataset, notes):
    """Wire ImageData layers on the lists (or keep the net's own); return the validation batch that covers the
    validation images exactly once."""
    if not options.keep_data_layers:
        wire_image_data(net, options.data_settings, options.net)
        notes += fit_crop(net, bool(options.data_settings.resize), options.cache_features, options.net)
    else:
        _keep_batches(net, options)
    test_batch, exact_notes = _exact_validation(net, dataset.val_count, options.net)
    notes += exact_notes
    notes += [python_layer_note(layer) for layer in net.layer if layer.type == PYTHON]
    return test_batch


def _retarget(net, options, num_classes, notes):
    """Freeze, retarget the class-count layers to ``num_classes``, and apply the learning-rate rules."""
    if options.freeze_upto or options.freeze_from:
        notes += freeze(net, options.freeze_upto, options.freeze_from, options.net).summary()
    notes += retarget_head(net, num_classes, None, options.head_name, options.head_lr_mult, options.net).summary()
    notes += drop_unscorable_accuracies(net, num_classes)
    if options.lr_rules:
        notes += apply_lr_rules(net, options.lr_rules).summary()


def _check_net(net, options, input_shape, weights, memory, notes):
    """Refuse a net Caffe would refuse; check ``weights`` (None: not written yet) against it, and what caching
    its trunk needs."""
    check_runs(net, input_shape, options.net)
    if weights is not None:
        notes += preflight(net, weights, input_shape, allow_unrelated=memory.force)
    if options.cache_features:
        notes += check_cacheable(net, options.net)


def _run_files(net, deploy, solver_text, dataset, copies, scripts):
    """{name: text} of the run directory's nets, solver, labels, scripts and lists (but its manifest)."""
    files = {TRAIN_VAL: to_text(net), DEPLOY: to_text(deploy), SOLVER: solver_text, "labels.txt": dataset.labels_text(),
             **scripts}
    if isinstance(dataset, Dataset):
        files["train.txt"] = dataset.list_text("train", copies)
        files["val.txt"] = dataset.list_text("val", copies)
    return files


def _database_moves(built, plan):
    """{built path: name in the run directory} of the databases built for ``plan`` (none when none were)."""
    if not built:
        return {}
    return {built.folder / name: name for database in plan.databases for name in (database.name, database.record_name)}


def _preprocessing(net, mean, plan):
    """The manifest's preprocessing: the net's data layer's, the mean file's shape, and what the databases of
    ``plan`` (None: no databases) did to the images."""
    described = preprocessing(net)
    if mean:
        described["mean_file_shape"] = list(mean.shape)
    if plan:
        described.update(_lmdb_preprocessing(plan))
    return described


def _lmdb_fields(plan, computed_mean):
    return {"lmdb": {"train": TRAIN_DB, "val": VAL_DB, "encoded": plan.train.encode_type,
                     "mean": "the mean image of train_lmdb (compute_image_mean)" if computed_mean else None}}


def _cache_fields(options):
    """The manifest fields of a cached run: its engine, mini-batch and shared store."""
    if not options.cache_features:
        return {}
    return {"cache_features": True, "engine": _engine(options.engine), "cache_batch": options.cache_batch,
            "feature_store": str(options.feature_store) if options.feature_store else None}


def _lmdb_plan(net, options, dataset):
    """The databases to build for ``net``'s ImageData layers: their images resized and coloured as those read them."""
    layer = data_layers(net)[0]
    params = layer.image_data_param
    resize = (params.new_height, params.new_width) if params.new_height and params.new_width else None
    return plan_databases(dataset, resize, _channels(layer) == 1, options.encode_type if options.encoded else None,
                          options.mean == MEAN_IMAGE, options.seed)


def _check_first_datum(net, dataset, settings, databases, planned):
    """Refuse databases whose first Datum gives the net another input than ``planned`` (channels, height, width)."""
    found = _input_geometry(net, dataset, settings, databases)
    if found != planned:
        raise CaffegenError(f"the first Datum gives the net {'×'.join(map(str, found))} inputs, the first image "
                            f"{'×'.join(map(str, planned))}: the images differ in size; pass --resize H,W",
                            databases / TRAIN_DB)


def _lmdb_preprocessing(plan):
    """What the databases did to the images before the Data layers read them, for the manifest's preprocessing."""
    database = plan.train
    changed = {"resize": list(database.resize) if database.resize else None}
    if database.gray:
        changed["channel_order"] = "gray"
    return changed


def _engine(name):
    """``name`` when it is an engine caffegen knows, else a one-line error."""
    if name not in ENGINES:
        raise CaffegenError(f"--engine takes {', '.join(ENGINES)}, got '{name}'")
    return name


def _existing_file(path, what):
    path = Path(path)
    if not path.is_file():
        raise CaffegenError(f"no such {what} file", path)
    return path.resolve()


def _dataset(options, warn):
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


def _resolve_mean_file(net, options, dataset):
    """The mean file the data layers use (a MeanFile, read and checked), pointed at its copy in the run directory.

    ``--mean-value`` replaces the mean file of every data layer, ``--mean-file`` the mean of every data layer;
    without either, the base net's mean file is looked for beside the net. ``--mean image`` points every data
    layer at the mean image that compute_image_mean writes once train_lmdb is built (None is returned then).
    """
    mean_value = options.data_settings.mean_value
    if options.mean == MEAN_IMAGE:  # computed from train_lmdb once it is built
        for layer in data_layers(net):
            layer.transform_param.ClearField("mean_value")
            layer.transform_param.mean_file = MEAN_FILE
        return None
    if mean_value and options.mean_file:
        raise CaffegenError("give --mean-value or --mean-file, not both")
    if mean_value:
        for layer in data_layers(net):
            layer.transform_param.ClearField("mean_file")
            layer.transform_param.ClearField("mean_value")
            layer.transform_param.mean_value.extend(mean_value)
        return None
    if options.mean_file:
        layers, found = data_layers(net), _existing_file(options.mean_file, "mean")
    else:
        layers = [layer for layer in data_layers(net) if layer.transform_param.mean_file]
        if not layers:
            return None
        named = Path(layers[0].transform_param.mean_file)
        candidates = [named, Path(options.net).parent / named, Path(options.net).parent / named.name]
        found = next((path.resolve() for path in candidates if path.is_file()), None)
        if found is None:
            raise CaffegenError(f"the base net's mean_file '{named}' is not found; pass --mean-file PATH "
                                "or --mean-value B,G,R", options.net)
    mean = read_mean_file(found)
    for layer in layers:
        _check_mean_file(mean, layer, dataset)
        layer.transform_param.ClearField("mean_value")
        layer.transform_param.mean_file = MEAN_FILE
    return mean


def _check_mean_file(mean, layer, dataset):
    """Refuse a mean file that Caffe would abort on in ``layer``: other channels, or images of another size."""
    if layer.type != "ImageData":
        return  # what an LMDB holds is not known here
    channels = _channels(layer)
    if mean.channels != channels:
        kind = "gray" if channels == 1 else "colour (BGR)"
        raise CaffegenError(f"the mean file has {mean.channels} channel(s), but data layer '{layer.name}' feeds the "
                            f"net {kind} images of {channels}: give the mean file of this model, or --mean-value",
                            mean.path)
    params = layer.image_data_param
    if params.new_height and params.new_width:
        size, how = (params.new_height, params.new_width), "resized to"
    elif isinstance(dataset, Dataset):
        with Image.open(dataset.train[0][0]) as image:
            size, how = (image.height, image.width), "not resized; the first is"
    else:
        return
    if size != mean.size:
        height, width = mean.size
        instead = "--mean-value " + ",".join(f"{value:.2f}" for value in mean.channel_means)
        raise CaffegenError(f"the mean file is {height}×{width}, but data layer '{layer.name}' gets images {how} "
                            f"{size[0]}×{size[1]}: Caffe subtracts a mean file only from images of its size; pass "
                            f"--resize {height},{width}, or subtract its per-channel mean instead ({instead})",
                            mean.path)


def _channels(layer):
    """The channels a data layer feeds the net: 1 for gray images, else 3."""
    return 1 if not layer.image_data_param.is_color or layer.transform_param.force_gray else 3


def _set_scale(net, scale):
    """Give every data layer ``scale`` (None: keep the base net's)."""
    if scale is not None:
        for layer in data_layers(net):
            layer.transform_param.scale = scale


def _input_geometry(net, dataset, settings, databases=None, net_dir=None):
    """(channels, height, width) the deploy net takes: the crop, the resize, or the images' own size.

    A Data layer takes the shape of the first Datum of its LMDB, as Caffe does: in ``databases`` (a
    folder) for those prepare built, which must be readable, else beside the net (``net_dir``).
    """
    layer = data_layers(net)[0]
    crop = layer.transform_param.crop_size
    if layer.type == "Data":
        first = first_input(layer, databases or net_dir)
        if first.shape is not None:
            channels, height, width = first.shape
            return (channels, crop, crop) if crop else (channels, height, width)
        if databases is not None:
            raise CaffegenError(f"cannot tell the input size: {first.origin}", databases / layer.data_param.source)
    channels = _channels(layer)
    if crop:
        return channels, crop, crop
    if layer.image_data_param.new_height:
        return channels, layer.image_data_param.new_height, layer.image_data_param.new_width
    if settings.resize:
        return (channels, *settings.resize)
    if not isinstance(dataset, Dataset):
        raise CaffegenError("cannot tell the input size of the deploy net: the data layers neither crop nor "
                            "resize; pass --resize H,W")
    with Image.open(dataset.train[0][0]) as image:
        return channels, image.height, image.width


def _keep_batches(net, options):
    """The batch sizes given for kept data layers, set in them."""
    for phase, batch in ((TRAIN, options.data_settings.batch_size), (TEST, options.data_settings.val_batch_size)):
        if batch:
            set_batch(net, phase, batch, options.net)


def _exact_validation(net, images, path):
    """(the TEST batch, given to the TEST data layer, that divides the validation images; the notes of it)."""
    batch, notes = exact_validation(images, phase_batch_sizes(net, DataSettings(), path)[TEST])
    if not set_batch(net, TEST, batch, path):
        return batch, [f"the TEST data layer sets no batch size of its own: unverified whether a test pass counts "
                       f"each of the {images} validation images once"]
    return batch, notes


def _solver(options, net, dataset, test_batch):
    train_batch = phase_batch_sizes(net, DataSettings(), options.net)[TRAIN]
    schedule = epoch_schedule(dataset.train_count, dataset.val_count, train_batch, test_batch, options.epochs,
                              options.iter_size, options.device.workers, options.snapshot_every)
    fields = solver_fields(schedule, _base_lr(options), not options.device.is_cpu,
                           options.seed, options.iter_size, snapshot_prefix=f"{SNAPSHOT_DIR}/ft")
    text = render_solver(fields, schedule, parse_overrides(options.solver_set))
    solver = check_solver_text(text)
    check_snapshot_prefix(solver)
    # base_lr as Caffe reads it: a float32, given with the 7 digits it holds.
    return schedule, text, float(f"{solver.base_lr:.7g}"), solver


def _base_lr(options):
    if options.base_lr is not None:
        return options.base_lr
    if options.base_solver:
        solver = read_solver(options.base_solver)
        if solver.HasField("base_lr"):
            return solver.base_lr / 10
    return FINE_TUNE_LR


def _manifest(options, weights, weights_ref, dataset, schedule, mean_source):
    inputs = {"net": _describe(options.net), "weights": _describe(weights)}
    if options.zoo_model:
        inputs["model"] = options.zoo_model.to_json()
    if options.base_solver:
        inputs["base_solver"] = _describe(options.base_solver)
    if mean_source:
        inputs["mean_file"] = _describe(mean_source)
    if options.keep_data_layers:
        inputs["data"] = "the base net's data layers"
    elif options.data:
        inputs["data"] = {"path": str(Path(options.data).resolve()), "copied": options.copy_data}
    else:
        inputs["train_list"] = _describe(options.train_list)
        inputs["val_list"] = _describe(options.val_list)
    return Manifest(
        caffegen=__version__,
        created=_now(),
        inputs=inputs,
        classes=tuple(dataset.classes),
        images=Images(dataset.train_count, dataset.val_count),
        freeze=Freeze(options.freeze_upto, options.freeze_from),
        schedule=Schedule(schedule.max_iter, schedule.epochs, schedule.iters_per_epoch, schedule.test_iter),
        device=str(options.device),
        weights=str(weights_ref),
        command=tuple(["caffe"] + caffe_arguments(weights=weights_ref, gpu=options.device.gpu_flag)),
    )


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _describe(path):
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "sha256": file_sha256(path)}


def _write_run_dir(run_dir, files, copies, check=None, moves=None):
    """Build the directory beside ``run_dir`` (texts, copies of files, ``moves`` renamed in) and rename it into place.

    ``check``, if given, is called with the built directory before it takes its place, so that what it
    refuses is never written; its answer is returned.
    """
    with built_beside(run_dir) as staging:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            with open(staging / name, "w", encoding="utf-8", newline="") as out:
                out.write(text)
            if name.endswith(".sh"):
                (staging / name).chmod(0o755)
            if name.endswith("solver.prototxt"):
                (staging / name).parent.joinpath(SNAPSHOT_DIR).mkdir(exist_ok=True)
        for source, name in copies.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
        for source, name in (moves or {}).items():
            os.rename(source, staging / name)
        return check(staging) if check else None

