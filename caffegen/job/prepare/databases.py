"""The image databases of a job prepared with --lmdb: the options that combine with them, where they are
built, and the checks of what was built."""



from caffegen.errors import CaffegenError
from caffegen.io.files import temp_folder
from caffegen.io.meanfile import read_mean_file
from caffegen.job.imagedb import TRAIN_DB, VAL_DB, plan_databases
from caffegen.job.options import MEAN_IMAGE
from caffegen.job.prepare.geometry import input_channels, input_geometry
from caffegen.net.wiring import data_layers


def check_lmdb_options(options, stages, databases):
    """Refuse --lmdb where this preparation cannot build the databases (the options alone: JobOptions.check)."""
    if not options.lmdb:
        return
    if stages:
        raise CaffegenError("--lmdb does not combine with --stages yet: prepare the stages without it")
    if databases is None:
        raise CaffegenError("--lmdb is not available here: only caffegen prepare and sweep build the databases")


def scratch_beside(run_dir):
    """A temporary folder beside ``run_dir`` (so that what is built there can be renamed into it), removed after."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return temp_folder(run_dir.parent, f".{run_dir.name}.lmdb.")


def lmdb_plan(net, options, dataset):
    """The databases to build for ``net``'s ImageData layers: their images resized and coloured as those read them."""
    layer = data_layers(net)[0]
    params = layer.image_data_param
    resize = (params.new_height, params.new_width) if params.new_height and params.new_width else None
    return plan_databases(dataset, resize, input_channels(layer) == 1, options.encode_type if options.encoded else None,
                          options.mean == MEAN_IMAGE, options.seed)


def _check_first_datum(net, dataset, settings, databases, planned):
    """Refuse databases whose first Datum gives the net another input than ``planned`` (channels, height, width)."""
    found = input_geometry(net, dataset, settings, databases)
    if found != planned:
        raise CaffegenError(f"the first Datum gives the net {'×'.join(map(str, found))} inputs, the first image "
                            f"{'×'.join(map(str, planned))}: the images differ in size; pass --resize H,W",
                            databases / TRAIN_DB)


def lmdb_preprocessing(plan):
    """What the databases did to the images before the Data layers read them, for the manifest's preprocessing."""
    database = plan.train
    changed = {"resize": list(database.resize) if database.resize else None}
    if database.gray:
        changed["channel_order"] = "gray"
    return changed


def lmdb_fields(plan, computed_mean):
    return {"lmdb": {"train": TRAIN_DB, "val": VAL_DB, "encoded": plan.train.encode_type,
                     "mean": "the mean image of train_lmdb (compute_image_mean)" if computed_mean else None}}


def check_databases(built, net, dataset, options, geometry, notes):
    """Check the first record of the databases ``built`` (None: none) against the net's input ``geometry``;
    return the mean image computed from them, or None."""
    if not built:
        return None
    notes += built.notes
    _check_first_datum(net, dataset, options.data_settings, built.folder, geometry)
    return read_mean_file(built.mean) if built.mean else None


def database_moves(built, plan):
    """{built path: name in the run directory} of the databases built for ``plan`` (none when none were)."""
    if not built:
        return {}
    return {built.folder / name: name for database in plan.databases for name in (database.name, database.record_name)}
