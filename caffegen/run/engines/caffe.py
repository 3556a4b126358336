"""Forward passes of real Caffe over many images, in mini-batches, with ``extract_features``.

``extract_features`` loads the weights once and runs the net's TEST phase for a number of
mini-batches in one process, writing the blobs asked for to LMDBs of float ``Datum`` records, one
per image, in the order the data layer read them. Peak memory depends on the net and the
mini-batch, not on the number of images. The data layer wraps around at the end of its list, so
the records past the last image are dropped.
"""

import math
import os
import shutil
import subprocess
from pathlib import Path

from caffegen.defaults import FORWARD_BATCH
from caffegen.errors import CaffegenError, cannot_write
from caffegen.io.featuredb import read_feature_db, write_features_h5
from caffegen.io.files import unused_name
from caffegen.io.lists import list_line
from caffegen.io.prototxt import to_text
from caffegen.io.segdata import read_image_size
from caffegen.net.deployinputs import hdf5_input_net
from caffegen.net.wiring import image_input_net
from caffegen.reporting import SilentReporter
from caffegen.run.caffelog import parse_log

LIST = "images.txt"
INPUTS, INPUT_LIST = "inputs.h5", "inputs.txt"  # input blobs, and the list HDF5Data reads them from


def run_extract_features(target, net, weights, blobs, count, batch_size, workdir, device=None, name="forward"):
    """Run ``extract_features`` on ``net`` (its data layer reads ``count`` images) in ``workdir``; return {blob: LMDB}.

    ``workdir`` receives the net (NAME.prototxt), Caffe's log (NAME.log) and one fresh LMDB per
    blob; ``device`` is a :class:`~caffegen.job.device.Device` (None: the CPU).
    """
    workdir = Path(workdir)
    (workdir / f"{name}.prototxt").write_text(to_text(net), encoding="utf-8")
    databases = {blob: workdir / f"{name}.{blob.replace('/', '_')}.lmdb" for blob in blobs}
    for database in databases.values():
        shutil.rmtree(database, ignore_errors=True)
    command = [str(target.tool("extract_features")), str(weights), f"{name}.prototxt", ",".join(blobs),
               ",".join(database.name for database in databases.values()), str(math.ceil(count / batch_size)), "lmdb"]
    if device is not None and not device.is_cpu:
        command += ["GPU", device.name.split(",")[0]]
    done = subprocess.run(command, cwd=workdir, env=dict(os.environ, GLOG_logtostderr="1"), check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        (workdir / f"{name}.log").write_text(done.stdout, encoding="utf-8")
    except OSError as error:  # a full disk, which made Caffe fail too, most likely
        raise cannot_write(error, workdir) from None
    if done.returncode != 0:
        raise CaffegenError(f"Caffe's forward pass failed (exit code {done.returncode}): {_reason(done.stdout)}",
                            workdir / f"{name}.log")
    return databases


def extract_blobs(target, net, weights, blobs, count, batch_size, workdir, device=None):
    """{blob: float32 array (count, values per image)} of ``net``, computed by ``extract_features`` in ``workdir``."""
    databases = run_extract_features(target, net, weights, blobs, count, batch_size, workdir, device)
    return {blob: read_feature_db(database, count) for blob, database in databases.items()}


def _reason(output):
    """The diagnosis of a failed Caffe's output, else its last line."""
    watcher, _ = parse_log(output.splitlines())
    if watcher.diagnoses:
        return watcher.diagnoses[0].message
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def forward_images(target, model, paths, blobs, batch_size=FORWARD_BATCH, device=None, reporter=None, workdir=None,
                   sized=None):
    """{blob: array (len(paths), values per image)} of ``model`` (a TrainedModel) over the image files ``paths``.

    The images are preprocessed as the model's validation images were in training; when some of
    ``sized`` (default: ``paths``) have a size the model cannot take as it is, every image is resized
    to its input size, which ``reporter`` notes once.
    """
    paths = [Path(path).resolve() for path in paths]
    resize = needed_resize(model, sized or paths, reporter or SilentReporter())
    tmp = unused_name(workdir, "caffegen-forward-")
    try:
        tmp.mkdir(mode=0o700)
        (tmp / LIST).write_text("".join(list_line(path, 0) for path in paths), encoding="utf-8")
        net = image_input_net(model.deploy_net, model.preprocessing, tmp / LIST, min(batch_size, len(paths)), resize)
        blobs = extract_blobs(target, net, model.weights, blobs, len(paths), min(batch_size, len(paths)), tmp, device)
    except CaffegenError:
        _keep_only(tmp, tmp / "forward.log")  # the log the error names stays, what was computed goes
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return blobs


def _keep_only(folder, log):
    """Remove ``folder`` but for ``log``, when it is there."""
    if not log.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        return
    for path in folder.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path != log:
            path.unlink()


def image_data_layer(model, resize):
    """The ImageData layer through which forward_images feeds ``model`` its images, resized to ``resize`` (H, W)."""
    net = image_input_net(model.deploy_net, model.preprocessing, LIST, 1, resize)
    return next(layer for layer in net.layer if layer.type == "ImageData")


def needed_resize(model, paths, reporter):
    """The (H, W) to resize every image to, when some could not be fed as training fed them, else None."""
    if model.preprocessing.get("resize"):
        return None
    crop = model.preprocessing.get("crop_size")
    height, width = model.input_shape[2:]
    sizes = {read_image_size(path) for path in paths}
    unfit = [size for size in sizes if (size[0] < crop or size[1] < crop if crop else size != (height, width))]
    if not unfit:
        return None
    reporter.line(f"{len(unfit)} image size(s) differ from the model's input of {height}×{width} "
                  f"(for example {unfit[0][0]}×{unfit[0][1]}): resizing every image to {height}×{width}")
    return height, width


def caffe_forward(target, net, weights, inputs, blobs, workdir):
    """{blob: float32 array (N, values per item)} of deploy ``net`` with ``weights`` fed ``inputs`` ({name: (N, …)}).

    ``workdir`` receives the inputs, the net Caffe runs, its log and the blobs it writes.
    """
    count = len(next(iter(inputs.values())))
    write_features_h5(workdir / INPUTS, {name: [values] for name, values in inputs.items()}, count,
                      {name: values.shape[1:] for name, values in inputs.items()})
    (workdir / INPUT_LIST).write_text(f"{workdir / INPUTS}\n", encoding="utf-8")
    fed = hdf5_input_net(net, workdir / INPUT_LIST, count)
    return extract_blobs(target, fed, weights, list(blobs), count, count, workdir)
