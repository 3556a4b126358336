"""The jobs that are more than one run of classification: staged jobs and segmentation."""

from dataclasses import replace

from caffegen import __version__
from caffegen.errors import CaffegenError
from caffegen.job.manifest import Images, Manifest, Schedule, StageEntry
from caffegen.job.options import Stage
from caffegen.job.prepare.build import PreparedJob, base_lr, build_run, run_manifest, utc_now
from caffegen.job.prepare.inputs import with_defaults
from caffegen.job.prepare.writing import write_run_dir
from caffegen.job.rundir import SNAPSHOT_DIR, manifest_file
from caffegen.job.scripts import render_stages_sh
from caffegen.job.segmentation import build_segmentation


def prepare_stages(options, stages, dataset, weights, run_dir, caffe, memory, warn):
    if options.copy_data or options.cache_features:
        raise CaffegenError("--copy-data and --cache-features do not combine with --stages yet")
    files, notes, entries, weights_ref = {}, [], [], weights
    for number, stage in enumerate(stages, start=1):
        stage = Stage(stage.freeze_upto, stage.freeze_from,
                      stage.base_lr if stage.base_lr is not None else base_lr(options),
                      stage.epochs or options.epochs)
        stage_options = replace(options, freeze_upto=stage.freeze_upto, freeze_from=stage.freeze_from,
                                base_lr=stage.base_lr, epochs=stage.epochs)
        build = build_run(stage_options, dataset, weights, weights_ref, caffe, memory, warn if number == 1 else None)
        name = f"stage{number}"
        build.files.update(manifest_file(replace(build.manifest, stage=number)))
        files.update({f"{name}/{path}": text for path, text in build.files.items()})
        notes += [f"stage {number}: {stage.describe()}"] + [f"  {note}" for note in build.notes]
        max_iter = build.manifest.schedule.max_iter
        entries.append(StageEntry(name, build.manifest.freeze, stage.base_lr, stage.epochs, max_iter))
        weights_ref = f"../{name}/{SNAPSHOT_DIR}/ft_iter_{max_iter}.caffemodel"
    manifest = Manifest(__version__, utc_now(), tuple(dataset.classes), Images(dataset.train_count, dataset.val_count),
                        str(options.device), Schedule(sum(entry.max_iter for entry in entries)), stages=tuple(entries))
    files.update(manifest_file(manifest))
    files["train.sh"] = render_stages_sh([entry.dir for entry in entries])
    write_run_dir(run_dir, files, {})
    return PreparedJob(run_dir, manifest, notes)


def prepare_segmentation(options, request):
    """Write the segmentation run directory of ``request`` (:mod:`caffegen.job.segmentation`)."""
    if request.stages or options.strategy:
        raise CaffegenError("--stages and --strategy do not combine with --task segmentation yet")
    weights = request.weights
    build = build_segmentation(with_defaults(options), weights, request.caffe, request.force)
    manifest = replace(run_manifest(with_defaults(options), weights, weights, build.dataset, build.schedule, None),
                       **build.manifest)
    build.files.update(manifest_file(manifest))
    write_run_dir(request.run_dir, build.files, {}, build.write_data)
    return PreparedJob(request.run_dir, manifest, build.notes)
