"""A trained model as later steps use it: from a run directory or from an exported bundle.

Evaluation, prediction and export need the same five facts of a model: its deploy net, its
weights, its class names, the preprocessing it was trained with and its input shape. A run
directory records them in its manifest and result.json; a bundle in preprocessing.json.

A bundle given as a .tar.gz is unpacked into a temporary folder, removed when the command ends
(SIGTERM included, which the command line turns into an exit). Its members are counted and sized
from their headers before anything is written: a bundle's weights are numbers that gzip hardly
shrinks, so an archive that would unpack to more than ``UNPACK_RATIO`` times its own size
(``UNPACK_FLOOR`` at least) or holds more than ``MEMBERS_MAX`` members is no bundle, and is refused.
"""

import atexit
import functools
import json
import math
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.files import unused_name
from caffegen.io.prototxt import read_net
from caffegen.job.options import CLASSIFICATION, TASKS
from caffegen.job.rundir import DEPLOY, RunDir, inside, is_run_dir
from caffegen.net.netview import TEST, NetView

LABELS = "labels.txt"
PREPROCESSING = "preprocessing.json"
BUNDLE_WEIGHTS = "model.caffemodel"
UNPACK_RATIO = 4  # exported weights gzip to about 0.9 of their size
UNPACK_FLOOR = 64 << 20  # bytes: room for a small bundle, whose text files compress more
MEMBERS_MAX = 64  # files and folders: a bundle is one folder of seven files at most
MAX_SIDE = 1 << 14  # pixels: a larger image side in a bundle's preprocessing is no image a net takes


@dataclass(frozen=True)
class TrainedModel:
    """The deploy net, weights, classes and preprocessing of a trained model; ``run`` when it is a run's."""

    deploy: Path
    weights: Path
    classes: list
    preprocessing: dict  # as the manifest records it, with ``mean_file`` an absolute path or None
    input_shape: tuple  # (N, C, H, W) of the deploy net
    source: Path
    run: RunDir = None
    task: str = CLASSIFICATION  # or SEGMENTATION: the output is an N×K×H×W map of per-pixel probabilities

    @functools.cached_property
    def deploy_net(self):
        return read_net(self.deploy).net

    @property
    def input_blob(self):
        """The blob the deploy net's Input layer feeds."""
        inputs = [layer for layer in self.deploy_net.layer if layer.type == "Input"]
        if len(inputs) != 1 or len(inputs[0].top) != 1:
            raise CaffegenError("the deploy net must have one Input layer with one top to be fed images", self.deploy)
        return inputs[0].top[0]

    @property
    def output_blob(self):
        """The deploy net's probabilities: the top of its last layer, which must be a Softmax."""
        last = NetView(self.deploy_net, TEST).layers[-1]
        if last.type != "Softmax":
            raise CaffegenError(f"the deploy net ends in a {last.type} layer '{last.name}', not a Softmax: "
                                "caffegen evaluates classifiers that output probabilities", self.deploy)
        return last.top[0]

    @property
    def mean_file(self):
        return Path(self.preprocessing["mean_file"]) if self.preprocessing.get("mean_file") else None


def load_model(path, weights=None):
    """The TrainedModel at ``path``: a run directory (or RunDir) or a bundle (folder, .tar.gz); ``weights`` wins."""
    if isinstance(path, RunDir):
        return _from_run(path, weights)
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        path = _unpacked(path)
    if is_run_dir(path):
        return _from_run(RunDir(path), weights)
    if (path / PREPROCESSING).is_file():
        return _from_bundle(path, weights)
    raise CaffegenError("neither a run directory (no manifest.json) nor a model bundle (no preprocessing.json); "
                        "give a directory made by caffegen prepare or caffegen export", path)


def _from_run(run, weights):
    model_run = run.stages[-1] if run.stages else run
    if not model_run.manifest.preprocessing:
        raise CaffegenError("the manifest records no image preprocessing (the run keeps its own data layers); "
                            "export or evaluate needs a run prepared on images", model_run.manifest_path)
    preprocessing = dict(model_run.manifest.preprocessing)
    if preprocessing.get("mean_file"):
        preprocessing["mean_file"] = str(inside(model_run.path, preprocessing["mean_file"], "the manifest's mean file"))
    return TrainedModel(model_run.deploy, _existing(weights) if weights else run.trained_weights(),
                        list(run.manifest.classes), preprocessing, model_run.input_shape, run.path, model_run,
                        model_run.manifest.task)


def _from_bundle(path, weights):
    try:
        recorded = json.loads((path / PREPROCESSING).read_text(encoding="utf-8"))
        preprocessing, input_shape = dict(recorded["preprocessing"]), tuple(recorded["input_shape"])
        task = recorded.get("task", CLASSIFICATION)
    except (ValueError, KeyError, TypeError) as error:
        raise CaffegenError(f"unreadable bundle description ({error}); export the model again",
                            path / PREPROCESSING) from None
    if preprocessing.get("mean_file"):
        if not isinstance(preprocessing["mean_file"], str):
            raise CaffegenError(f"mean_file {preprocessing['mean_file']!r} is no file name: the bundle does not "
                                "describe its own net; export the model again", path / PREPROCESSING)
        preprocessing["mean_file"] = str(_existing(inside(path, preprocessing["mean_file"], "the bundle's mean file")))
    labels = _existing(path / LABELS).read_text(encoding="utf-8").splitlines()
    model = TrainedModel(_existing(path / DEPLOY), _existing(weights or path / BUNDLE_WEIGHTS), labels,
                         preprocessing, input_shape, path.resolve(), task=task)
    problem = _bundle_problem(model)
    if problem:
        raise CaffegenError(f"{problem}: the bundle does not describe its own net; export the model again",
                            path / PREPROCESSING)
    return model


def _bundle_problem(model):
    """What a bundle's preprocessing.json says that its deploy net contradicts or that no net can take, or None."""
    shape, steps = model.input_shape, model.preprocessing
    stated = [list(dim for dim in layer.input_param.shape[0].dim) for layer in model.deploy_net.layer
              if layer.type == "Input" and layer.input_param.shape]
    if len(shape) != 4 or not all(isinstance(dim, int) and dim > 0 for dim in shape):
        return f"input_shape {list(shape)} is no N×C×H×W of positive integers"
    if len(stated) != 1 or stated[0][1:] != list(shape[1:]):
        return f"input_shape {list(shape)} is not the deploy net's input {stated[0] if stated else 'shape'}"
    if model.task not in TASKS:
        return f"task {model.task!r} is none of {', '.join(TASKS)}"
    if steps.get("channel_order") not in ("BGR", "gray") or (steps["channel_order"] == "gray") != (shape[1] == 1):
        return f"channel_order {steps.get('channel_order')!r} does not feed the net's {shape[1]} channels"
    resize = steps.get("resize")
    if not (resize is None or (isinstance(resize, list) and len(resize) == 2)):
        return f"resize {resize!r} is not a height and a width"
    if not all(size is None or (isinstance(size, int) and 0 < size <= MAX_SIDE)
               for size in [steps.get("crop_size"), *(resize or [])]):
        return f"crop_size {steps.get('crop_size')!r} or resize {resize!r} is no image size"
    if steps.get("crop_size") and [steps["crop_size"]] * 2 != list(shape[2:]):
        return f"crop_size {steps['crop_size']} does not give the net's {shape[2]}×{shape[3]} input"
    means = steps.get("mean_value") or []
    if not isinstance(means, list) or len(means) not in (0, 1, shape[1]) or \
            not all(isinstance(value, (int, float)) for value in means):
        return f"mean_value {means!r} is not one number or one per channel"
    if not isinstance(steps.get("scale"), (int, float)) or not 0 < steps["scale"] < math.inf:
        return f"scale {steps.get('scale')!r} is no positive number"
    return None


def _existing(path):
    path = Path(path)
    if not path.is_file():
        raise CaffegenError("no such file", path)
    return path.resolve()


def _unpacked(archive):
    """The bundle folder inside ``archive``, unpacked into a temporary folder removed when the process ends."""
    try:
        with tarfile.open(archive) as tar:
            members = _checked_members(tar, archive)
            folder = unused_name(None, "caffegen-bundle-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)  # before it is made: nothing is left
            try:
                folder.mkdir(mode=0o700)
                tar.extractall(folder, members=members, filter="data")
            except BaseException:  # an error, or SIGTERM: remove what was unpacked now
                shutil.rmtree(folder, ignore_errors=True)
                raise
    except (tarfile.TarError, OSError) as error:
        raise CaffegenError(f"cannot unpack the bundle: {error}", archive) from None
    found = [p.parent for p in folder.rglob(PREPROCESSING)]
    if len(found) != 1:
        raise CaffegenError("the archive holds no model bundle (no preprocessing.json)", archive)
    return found[0]


def _checked_members(tar, archive):
    """The members of ``tar``, read from their headers before anything is unpacked; too many or too large refused."""
    bound = max(UNPACK_FLOOR, UNPACK_RATIO * archive.stat().st_size)
    members, total = [], 0
    for member in tar:
        members.append(member)
        total += member.size
        if len(members) > MEMBERS_MAX:
            raise CaffegenError(f"the archive holds more than {MEMBERS_MAX} files and folders, and a bundle is one "
                                "folder of seven files at most: it is no bundle caffegen exported; unpack it yourself "
                                "if you trust it, and give the folder", archive)
        if total > bound:
            raise CaffegenError(f"the archive would unpack to more than {bound / 2**20:.0f} MiB ({UNPACK_RATIO} "
                                f"times its own size, {UNPACK_FLOOR >> 20} MiB at least), and a bundle's weights "
                                "hardly compress: it is no bundle caffegen exported; unpack it yourself if you trust "
                                "it, and give the folder", archive)
    return members
