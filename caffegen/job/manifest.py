"""The two records of a run directory: its manifest (what prepare made) and its result (how training ended).

Both are frozen dataclasses with a schema version, written and read as JSON only here and in
:mod:`caffegen.job.rundir`. A manifest of the release before schema versions (schema 1, no
``schema`` key) reads as schema 1; one from a newer caffegen is refused with one line.
"""

import json
from dataclasses import dataclass, fields

from caffegen.errors import CaffegenError
from caffegen.job.options import CAFFE, CLASSIFICATION

MANIFEST_SCHEMA = 3  # 3: report_to; 2: the first numbered; a manifest of either, or of none, loads
RESULT_SCHEMA = 2  # 2: caffe_version


@dataclass(frozen=True)
class Images:
    """How many images each list holds."""

    train: int
    val: int


@dataclass(frozen=True)
class Freeze:
    """The freeze point: frozen up to ``upto``, or trained from ``start`` (the manifest's ``from``)."""

    upto: str = None
    start: str = None

    def to_json(self):
        return {"upto": self.upto, "from": self.start}

    @classmethod
    def from_json(cls, value):
        return cls(value.get("upto"), value.get("from"))


@dataclass(frozen=True)
class Schedule:
    """The solver's schedule in iterations (a staged job records only the sum of its stages' max_iter)."""

    max_iter: int
    epochs: int = None
    iters_per_epoch: int = None
    test_iter: int = None


@dataclass(frozen=True)
class StageEntry:
    """One stage of a staged job: its folder, freeze point, learning rate and length."""

    dir: str
    freeze: Freeze
    base_lr: float
    epochs: int
    max_iter: int


@dataclass(frozen=True)
class Manifest:
    """What ``caffegen prepare`` made: the inputs, the job's settings and how its images are preprocessed."""

    caffegen: str
    created: str
    classes: tuple
    images: Images
    device: str
    schedule: Schedule
    inputs: dict = None
    freeze: Freeze = None
    weights: str = None
    command: tuple = ()
    base_lr: float = None
    input_shape: tuple = None
    preprocessing: dict = None
    task: str = CLASSIFICATION
    segmentation: dict = None
    lmdb: dict = None
    cache_features: bool = False
    engine: str = CAFFE  # asked for: caffe, opencv or auto
    features_engine: str = None  # what computed the features, once they were
    cache_batch: int = None
    feature_store: str = None
    stage: int = None
    stages: tuple = ()
    report_to: tuple = ()  # the trackers a launch sends the run to (tensorboard, mlflow)
    schema: int = MANIFEST_SCHEMA

    def to_record(self):
        """{key: JSON value}: every field set, under the keys the earlier releases wrote."""
        record = {"schema": self.schema}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "schema" or value is None or value == () and item.name in ("stages", "report_to"):
                continue
            record.update(_manifest_entry(item.name, value))
        return record

    def to_json(self):
        """The manifest.json text."""
        return json.dumps(self.to_record(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text):
        """The manifest in ``text``; ValueError, KeyError or TypeError where it is not one."""
        record = json.loads(text)
        schema = record.pop("schema", 1)
        if not isinstance(schema, int) or schema > MANIFEST_SCHEMA:
            raise ValueError(f"schema {schema!r} is newer than this caffegen reads ({MANIFEST_SCHEMA})")
        values = {"schema": MANIFEST_SCHEMA, "classes": tuple(record.pop("classes")),
                  "images": Images(**record.pop("images")), "schedule": Schedule(**record.pop("schedule"))}
        if "input" in record:
            values["input_shape"] = tuple(record.pop("input")["shape"])
        if "freeze" in record:
            values["freeze"] = Freeze.from_json(record.pop("freeze"))
        if "stages" in record:
            values["stages"] = tuple(StageEntry(**dict(stage, freeze=Freeze.from_json(stage["freeze"])))
                                     for stage in record.pop("stages"))
        for name in ("command", "report_to"):
            if name in record:
                values[name] = tuple(record.pop(name))
        return cls(**values, **record)


def _manifest_entry(name, value):
    """{key: JSON value} of the manifest field ``name``."""
    if name == "input_shape":
        return {"input": {"shape": list(value)}}
    if name in ("images", "schedule"):
        return {name: {key: item for key, item in vars(value).items() if item is not None}}
    if name == "freeze":
        return {name: value.to_json()}
    if name == "stages":
        return {name: [dict(vars(stage), freeze=stage.freeze.to_json()) for stage in value]}
    if isinstance(value, tuple):
        return {name: list(value)}
    return {name: value}


@dataclass(frozen=True)
class RunResult:
    """How a run's training ended, as result.json records it: for people, sweeps and later stages.

    ``final_model`` is relative to the run directory, as every file a run directory records.
    """

    exit_code: int
    caffe_exit_code: int
    diagnosis: str = None
    interrupted: bool = False
    seconds: float = 0.0
    iterations: int = 0
    last_accuracy: float = None
    best_accuracy: float = None
    best_iteration: int = None
    final_model: str = None
    cache: dict = None
    caffe_version: str = None  # what `caffe --version` said (such as 1.0.0); None where it said nothing
    schema: int = RESULT_SCHEMA

    def to_json(self):
        record = {item.name: getattr(self, item.name) for item in fields(self)}
        for optional in ("cache", "caffe_version"):
            if record[optional] is None:
                del record[optional]
        return json.dumps(record, indent=2) + "\n"

    @classmethod
    def from_json(cls, text):
        record = json.loads(text)
        schema = record.pop("schema", RESULT_SCHEMA)
        if not isinstance(schema, int) or schema > RESULT_SCHEMA:
            raise ValueError(f"schema {schema!r} is newer than this caffegen reads ({RESULT_SCHEMA})")
        return cls(**record)


def read_record(cls, path, again):
    """The ``cls`` (Manifest or RunResult) in the file ``path``, or one line saying to ``again``."""
    try:
        return cls.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CaffegenError(f"unreadable {path.name} ({error}); {again}", path) from None
