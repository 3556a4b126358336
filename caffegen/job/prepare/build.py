"""One run of a job, before it is written: the wired nets, the solver, the lists, the scripts and the
manifest, from the base net and the options."""

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from caffegen import __version__
from caffegen.defaults import FINE_TUNE_LR
from caffegen.errors import CaffegenError
from caffegen.io.files import file_sha256
from caffegen.io.prototxt import read_net, read_solver, to_text
from caffegen.job.cacheplan import check_cacheable
from caffegen.job.dataset import Dataset
from caffegen.job.imagedb import TRAIN_DB, VAL_DB
from caffegen.job.manifest import Freeze, Images, Manifest, Schedule
from caffegen.job.memorycheck import training_check
from caffegen.job.options import ENGINES
from caffegen.job.prepare.databases import check_databases, database_moves, lmdb_fields, lmdb_plan, lmdb_preprocessing
from caffegen.job.prepare.geometry import MEAN_FILE, input_geometry, resolve_mean_file, set_scale
from caffegen.job.rundir import DEPLOY, SNAPSHOT_DIR, SOLVER, TRAIN_VAL, manifest_file
from caffegen.job.scripts import caffe_arguments, wrapper_scripts
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
from caffegen.net.freeze import freeze
from caffegen.net.head import retarget_head
from caffegen.net.inspect import preflight
from caffegen.net.layers import PYTHON, python_layer_note
from caffegen.net.lr_rules import apply_lr_rules
from caffegen.net.netview import TEST, TRAIN
from caffegen.net.retarget import drop_unscorable_accuracies
from caffegen.net.shapes import check_runs
from caffegen.net.wiring import (
    DataSettings,
    deploy_net,
    fit_crop,
    phase_batch_sizes,
    preprocessing,
    read_from_lmdb,
    set_batch,
    wire_image_data,
)

WEIGHTS_COPY = "base.caffemodel"


@dataclass
class PreparedJob:
    """A written run directory and what the user should hear about it."""

    run_dir: Path
    manifest: Manifest
    notes: list
    cache_plan: object = None  # a cached run's CachePlan, as worked out in the directory before it took its place


@dataclass
class _Build:
    """The files of one run directory, before they are written."""

    files: dict
    copies: dict
    manifest: Manifest
    notes: list
    moves: dict = field(default_factory=dict)  # {built path: name in the run directory}, renamed in


@dataclass(frozen=True)
class Checks:
    """The memory a job may take (None: not checked), whether to prepare it anyway (beyond that, with weights
    that name none of its layers), and the net it is for."""

    budget: object
    force: bool
    path: Path

    def note(self, check):
        """The note of a MemoryCheck, or its refusal."""
        return [check.note(self.force, self.path)]


def build_run(options, dataset, weights, weights_ref, caffe, memory, warn=None, build_databases=None):
    """Nets, solver, lists, scripts and manifest of one run, from the base net and ``options``.

    Its memory is checked against ``memory`` (a Checks) unless it caches features (the
    extraction is checked then); ``warn``, if given, hears what the base net leaves unsaid about
    its preprocessing. ``build_databases``, given with --lmdb, builds an LmdbPlan's databases.
    """
    notes = []
    net = _base_net(options, warn, notes)
    test_batch = _wire_data(net, options, dataset, notes)
    plan = lmdb_plan(net, options, dataset) if build_databases else None
    mean = resolve_mean_file(net, options, dataset)
    set_scale(net, options.data_settings.scale)
    _retarget(net, options, len(dataset.classes), notes)
    channels, height, width = input_geometry(net, dataset, options.data_settings, net_dir=Path(options.net).parent)
    if plan:
        read_from_lmdb(net, {TRAIN: TRAIN_DB, TEST: VAL_DB})
    input_shape = [1, channels, height, width]
    checked_weights = weights if weights_ref == weights else None  # a later stage's do not exist yet
    _check_net(net, options, input_shape, checked_weights, memory, notes)
    schedule, solver_text, base_lr, solver = _solver(options, net, dataset, test_batch)
    notes += _training_memory(net, options, solver, input_shape, checked_weights, memory)
    built = build_databases(plan) if plan else None  # the longest step, once every check has passed
    mean = check_databases(built, net, dataset, options, (channels, height, width), notes) or mean
    copies = dataset.copy_names() if options.copy_data else {}
    if options.copy_data:
        copies[weights] = weights_ref = WEIGHTS_COPY
    files = _run_files(net, deploy_net(net, channels, height, width), solver_text, dataset, copies,
                       wrapper_scripts(caffe, weights_ref, options.device.gpu_flag, len(dataset.classes), notes))
    computed_mean = bool(built and built.mean)
    manifest = replace(run_manifest(options, weights, weights_ref, dataset, schedule,
                                    mean.path if mean and not computed_mean else None),
                       base_lr=base_lr, input_shape=tuple(input_shape),
                       preprocessing=_preprocessing(net, mean, plan if built else None),
                       **lmdb_fields(plan, computed_mean) if built else {}, **_cache_fields(options))
    files.update(manifest_file(manifest))
    if mean:
        copies[mean.path] = MEAN_FILE
    return _Build(files, copies, manifest, notes, database_moves(built, plan))


def _training_memory(net, options, solver, input_shape, weights, memory):
    """The note (or the refusal) of the training's memory against ``memory``'s budget; none for a cached run,
    whose extraction is checked once it is planned."""
    if memory.budget is None or options.cache_features:
        return []
    return memory.note(training_check(net, solver.type, input_shape, weights, options.device, solver.iter_size,
                                      memory.budget, options.net))


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
    fields = solver_fields(schedule, base_lr(options), not options.device.is_cpu,
                           options.seed, options.iter_size, snapshot_prefix=f"{SNAPSHOT_DIR}/ft")
    text = render_solver(fields, schedule, parse_overrides(options.solver_set))
    solver = check_solver_text(text)
    check_snapshot_prefix(solver)
    # base_lr as Caffe reads it: a float32, given with the 7 digits it holds.
    return schedule, text, float(f"{solver.base_lr:.7g}"), solver


def base_lr(options):
    if options.base_lr is not None:
        return options.base_lr
    if options.base_solver:
        solver = read_solver(options.base_solver)
        if solver.HasField("base_lr"):
            return solver.base_lr / 10
    return FINE_TUNE_LR


def _preprocessing(net, mean, plan):
    """The manifest's preprocessing: the net's data layer's, the mean file's shape, and what the databases of
    ``plan`` (None: no databases) did to the images."""
    described = preprocessing(net)
    if mean:
        described["mean_file_shape"] = list(mean.shape)
    if plan:
        described.update(lmdb_preprocessing(plan))
    return described


def _cache_fields(options):
    """The manifest fields of a cached run: its engine, mini-batch and shared store."""
    if not options.cache_features:
        return {}
    return {"cache_features": True, "engine": _engine(options.engine), "cache_batch": options.cache_batch,
            "feature_store": str(options.feature_store) if options.feature_store else None}


def _engine(name):
    """``name`` when it is an engine caffegen knows, else a one-line error."""
    if name not in ENGINES:
        raise CaffegenError(f"--engine takes {', '.join(ENGINES)}, got '{name}'")
    return name


def run_manifest(options, weights, weights_ref, dataset, schedule, mean_source):
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
        created=utc_now(),
        inputs=inputs,
        classes=tuple(dataset.classes),
        images=Images(dataset.train_count, dataset.val_count),
        freeze=Freeze(options.freeze_upto, options.freeze_from),
        schedule=Schedule(schedule.max_iter, schedule.epochs, schedule.iters_per_epoch, schedule.test_iter),
        device=str(options.device),
        weights=str(weights_ref),
        command=tuple(["caffe"] + caffe_arguments(weights=weights_ref, gpu=options.device.gpu_flag)),
    )


def utc_now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _describe(path):
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "sha256": file_sha256(path)}
