"""What a fine-tuning job is told: ``JobOptions``, the stages of a staged job, and the tasks it can be.

Light to import (no image, array or template library), so the command line can state its options'
defaults from here.
"""

from dataclasses import dataclass, field
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.job.device import CPU, Device
from caffegen.net.wiring import DataSettings

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
# Each task, with why --lmdb cannot build its databases (None where it can). A new task is an entry here and
# in the tables of job/prepare (PREPARERS), run/evaluate (EVALUATIONS), run/report (REPORTS) and cli/predict.
LMDB_REFUSALS = {
    CLASSIFICATION: None,
    SEGMENTATION: "--lmdb builds databases of labelled images; --task segmentation reads images and masks with its "
                  "own data layers: drop --lmdb",
}
TASKS = tuple(LMDB_REFUSALS)
# What computes the trunk features of a cached run: Caffe, another engine, or the fastest that agrees (else Caffe).
CAFFE, OPENCV, ONNXRUNTIME, OPENVINO, AUTO = "caffe", "opencv", "onnxruntime", "openvino", "auto"
ENGINES = (AUTO, CAFFE, OPENCV, ONNXRUNTIME, OPENVINO)
MEAN_IMAGE = "image"  # --mean image: the mean of the training database, by compute_image_mean


@dataclass
class JobOptions:
    """Everything ``caffegen prepare`` is told."""

    net: Path
    weights: Path
    data: Path = None
    train_list: Path = None
    val_list: Path = None
    val_fraction: float = 0.2
    seed: int = 1
    skip_bad: bool = False
    copy_data: bool = False
    freeze_upto: str = None
    freeze_from: str = None
    epochs: int = None
    snapshot_every: int = 1
    iter_size: int = 1
    data_settings: DataSettings = field(default_factory=DataSettings)
    mean_file: Path = None
    base_lr: float = None
    base_solver: Path = None
    solver_set: tuple = ()
    device: Device = CPU
    head_lr_mult: float = None
    head_name: str = None
    lr_rules: tuple = ()
    keep_data_layers: bool = False
    num_classes: int = None
    train_images: int = None
    val_images: int = None
    strategy: str = None
    similarity: str = None
    cache_features: bool = False
    # With cache_features: a folder, relative to the run directory, whose stores runs with the same
    # trunk share (a sweep's); None keeps the features in the run's own features/.
    feature_store: Path = None
    # The zoo model (a ZooModel) that net, weights and preprocessing come from (job.zoo.with_zoo_model), or None.
    zoo_model: object = None
    task: str = CLASSIFICATION  # or SEGMENTATION: --data holds images/ and masks/
    # With cache_features: what computes the trunk features (caffe, opencv, or auto: OpenCV where it can).
    engine: str = AUTO
    # With cache_features: images per mini-batch of the extraction; None: the most that fit (memorycheck).
    cache_batch: int = None
    # Train from LMDBs built by convert_imageset (train_lmdb/, val_lmdb/) instead of ImageData on the lists.
    lmdb: bool = False
    encoded: bool = False  # with lmdb: store the images encoded (encode_type) instead of raw pixels
    encode_type: str = "png"
    mean: str = None  # MEAN_IMAGE: subtract the mean image of train_lmdb, computed by compute_image_mean

    def __post_init__(self):
        if not isinstance(self.device, Device):
            self.device = Device.parse(self.device)

    def check(self):
        """Refuse, in one line, options that do not go together: the command line and Python callers alike."""
        for refused, message in self._refusals():
            if refused:
                raise CaffegenError(message)
        return self

    def _refusals(self):
        task_refusal = LMDB_REFUSALS.get(self.task)
        lmdb = [
            (self.cache_features, "--lmdb speeds up reading the images at every epoch; --cache-features reads each "
                                  "image once, so it gains nothing from a database: drop one of them"),
            (self.keep_data_layers, "--keep-data-layers keeps the base net's data layers, --lmdb builds new ones: "
                                    "drop one of them"),
            (task_refusal, task_refusal),
            (self.mean == MEAN_IMAGE and (self.mean_file or self.data_settings.mean_value),
             "give one of --mean image, --mean-file and --mean-value"),
        ]
        without_lmdb = f"{'--encoded' if self.encoded else '--mean image'} needs --lmdb: it is about the LMDBs that " \
                       "convert_imageset builds"
        return [
            (self.task not in TASKS, f"task {self.task!r} is none of {', '.join(TASKS)}"),
            (self.freeze_upto and self.freeze_from, "give --freeze-upto or --freeze-from, not both"),
            (self.cache_batch and not self.cache_features,
             "--cache-batch sets the mini-batch of the feature extraction: give it with --cache-features"),
            *(lmdb if self.lmdb else [(self.encoded or self.mean == MEAN_IMAGE, without_lmdb)]),
        ]


@dataclass
class Stage:
    """One stage of a staged fine-tuning; what it leaves unset comes from the job's options."""

    freeze_upto: str = None
    freeze_from: str = None
    base_lr: float = None
    epochs: int = None

    def describe(self):
        point = (f"frozen up to {self.freeze_upto}" if self.freeze_upto else
                 f"trained from {self.freeze_from}" if self.freeze_from else "nothing frozen")
        return f"{point}, base_lr {self.base_lr:g}, {self.epochs} epochs"


STAGE_KEYS = {"upto": "freeze_upto", "from": "freeze_from", "lr": "base_lr", "epochs": "epochs"}


def parse_stages(text):
    """Stages from 'upto=fc7,lr=0.001,epochs=5;from=conv4,lr=0.0001,epochs=5' (``upto=none``: freeze nothing)."""
    stages = []
    for number, part in enumerate(filter(None, (p.strip() for p in text.split(";"))), start=1):
        values = {}
        for item in filter(None, (i.strip() for i in part.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in STAGE_KEYS:
                raise CaffegenError(f"--stages: stage {number}: expected upto=LAYER, from=LAYER, lr=X or epochs=N, "
                                    f"got '{item}'")
            values[STAGE_KEYS[key.strip()]] = value.strip()
        stages.append(_stage(values, number))
    if len(stages) < 2:
        raise CaffegenError("--stages needs at least two stages separated by ';'")
    return stages


def _stage(values, number):
    try:
        stage = Stage(values.get("freeze_upto"), values.get("freeze_from"),
                      float(values["base_lr"]) if "base_lr" in values else None,
                      int(values["epochs"]) if "epochs" in values else None)
    except ValueError as error:
        raise CaffegenError(f"--stages: stage {number}: {error}") from None
    if stage.freeze_upto and stage.freeze_from:
        raise CaffegenError(f"--stages: stage {number}: give upto= or from=, not both")
    if stage.freeze_upto == "none":
        stage.freeze_upto = None
    return stage
