"""MLflow: one MLflow run per run directory (a sweep's as children of one parent run), in the store of
``--mlflow-uri``, of $MLFLOW_TRACKING_URI, or by default a local one: ``sqlite:///DIR/mlflow.db``, the backend
MLflow recommends (its file store is in maintenance mode), with the artifacts in ``DIR/mlartifacts``.

The full ``mlflow`` package, not ``mlflow-skinny``: the skinny one lacks the SQL store. Most of what
MLflow costs is its import (about 2 s on 2 cores), the import of its SQL store (1 s) and the making
of a new store's tables (1.7 s). A watch does all of it ahead, while its command prepares, in a
scratch store, and a new local store starts as a copy of that one (the same tables, made by the same
MLflow in the same process). The tables are made once per installed MLflow: the scratch store starts
as a copy of a template kept in caffegen's cache, the tables without the Default experiment, which
MLflow adds when it opens the store, as it does to a store it makes in place.
"""

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import tempfile
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.download import cache_home
from caffegen.job.rundir import EVAL_DIR, read_result
from caffegen.run.track.state import Sent, read_sent, record_sent
from caffegen.run.track.tracker import Tracker

EXPERIMENT = "caffegen"
STORE, ARTIFACTS = "mlflow.db", "mlartifacts"
BATCH = 1000  # the most metrics one log_batch takes
UNSAFE = re.compile(r"[^\w\-. /]")  # MLflow names: letters, digits, _ - . space and /
# A tracking server that is down answers at once, not after MLflow's minutes of retries; and MLflow prints no links
# on standard output, which is the command's own.
CLIENT_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class MLflowTracker(Tracker):
    """A run's curves as metric histories, its manifest as parameters, its files as artifacts."""

    scratch = None  # the folder of the store warm_up made ahead, which new local stores start as copies of

    @classmethod
    def check_installed(cls):
        if importlib.util.find_spec("mlflow") is None:
            raise CaffegenError("the mlflow tracker needs MLflow: pip install 'caffegen[mlflow]'")

    @classmethod
    def warm_up(cls, settings):
        client = _client_class()
        if _explicit_uri(settings) is None:
            cls.scratch = tempfile.TemporaryDirectory(prefix="caffegen-mlflow-")
            _make_scratch_store(client, Path(cls.scratch.name) / STORE)

    @classmethod
    def cool_down(cls):
        if cls.scratch is not None:
            cls.scratch.cleanup()
            cls.scratch = None

    def destination(self):
        return _explicit_uri(self.settings) or f"sqlite:///{self.tracked.home / STORE}"

    def open(self, memo, params):
        from mlflow.entities import Param
        if self.scratch is not None and _explicit_uri(self.settings) is None:
            _start_store_from(Path(self.scratch.name) / STORE, self.tracked.home / STORE)
        self.client = _client_class()(self.destination())
        self.run_id = memo.get("run_id")
        if self.run_id is None:
            experiment = self._experiment()
            tags = {"mlflow.parentRunId": self._parent(experiment)} if self.tracked.group else {}
            self.run_id = self.client.create_run(experiment, run_name=self.tracked.name, tags=tags).info.run_id
            values = {**params, **{name: value for name, value in self.tracked.hparams.items() if value is not None}}
            self.client.log_batch(self.run_id, params=[Param(_name(name), str(value)[:6000])
                                                       for name, value in values.items()])
        return {"run_id": self.run_id}

    def send(self, points):
        from mlflow.entities import Metric
        metrics = [Metric(_name(point.name), point.value, int(point.time * 1000), point.step) for point in points]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH])

    def finish(self, outcome):
        import time

        from mlflow.entities import Metric, Param
        now = int(time.time() * 1000)
        logged = self.client.get_run(self.run_id).data.params  # a parameter once logged cannot change in MLflow
        self.client.log_batch(self.run_id, metrics=[Metric(_name(name), value, now, outcome.step)
                                                    for name, value in outcome.metrics.items()],
                              params=[Param(_name(name), str(value)) for name, value in outcome.params.items()
                                      if _name(name) not in logged])
        for path in outcome.artifacts:
            self.client.log_artifact(self.run_id, str(path), EVAL_DIR if path.parent.name == EVAL_DIR else None)
        self.client.set_terminated(self.run_id, "FAILED" if outcome.failed else "FINISHED")
        if self.tracked.group and _all_ended(self.tracked.group):
            self.client.set_terminated(self._parent(self._experiment()), "FINISHED")

    def _experiment(self):
        """The id of the experiment caffegen's runs go to, created where missing (local artifacts beside the store)."""
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        local = self.destination().startswith("sqlite:")
        location = (self.tracked.home / ARTIFACTS).as_uri() if local else None
        return self.client.create_experiment(EXPERIMENT, artifact_location=location)

    def _parent(self, experiment):
        """The id of the group's parent run, created once and remembered in the group's folder."""
        group, key = self.tracked.group, f"mlflow-parent {self.destination()}"
        sent = read_sent(group.path, key)
        if sent.memo.get("run_id"):
            return sent.memo["run_id"]
        run_id = self.client.create_run(experiment, run_name=group.name, tags={"caffegen.sweep": "true"}).info.run_id
        record_sent(group.path, key, Sent(memo={"run_id": run_id}))
        return run_id


def _client_class():
    """MLflow's client class, imported with caffegen's settings: quiet, and quick to give up on a server down."""
    for name, value in CLIENT_SETTINGS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient
    for logger in ("mlflow", "alembic"):  # its database's creation and upgrades are not the user's business (set
        logging.getLogger(logger).setLevel(logging.WARNING)  # once imported: MLflow's import sets its own level)
    return MlflowClient


def _explicit_uri(settings):
    """The store asked for (--mlflow-uri, else $MLFLOW_TRACKING_URI); None for the local default."""
    return settings.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")


def _make_scratch_store(client, scratch):
    """Have MLflow open the new store ``scratch``, which loads its SQL store. Where caffegen's cache holds this
    MLflow's template, the store starts as a copy of it; otherwise MLflow makes the tables, and a template is kept."""
    import sqlite3
    template, copied = store_template(), False
    with contextlib.suppress(OSError, sqlite3.Error):  # no template, or an unreadable one: MLflow makes the tables
        _copy_store(template, scratch)
        copied = True
    client(f"sqlite:///{scratch}").get_experiment_by_name(EXPERIMENT)
    if not copied:
        _keep_as_template(scratch, template)


def store_template():
    """Where caffegen keeps the tables of a new store made by the installed MLflow (and the database libraries it
    makes them with)."""
    versions = "-".join(f"{name}-{importlib.metadata.version(name)}" for name in ("mlflow", "sqlalchemy", "alembic"))
    return cache_home() / "mlflow" / f"store-{versions}.db"


def _keep_as_template(store, template):
    """Keep a copy of the new store ``store`` without its experiments as ``template``, put in place in one step; a
    cache that cannot be written is left alone (the next watch makes the tables again)."""
    import sqlite3
    part = template.with_name(f".{template.name}.{os.getpid()}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        _copy_store(store, part)
        with contextlib.closing(sqlite3.connect(part)) as database:
            with database:
                database.execute("DELETE FROM experiments")  # only Default, whose artifact folder is the cwd's
            database.execute("VACUUM")
        os.replace(part, template)
    except (OSError, sqlite3.Error):
        pass
    finally:
        part.unlink(missing_ok=True)


def _start_store_from(scratch, store):
    """Make the new local store ``store`` a copy of the store ``scratch``, put in place in one step; a store that
    exists, or appears meanwhile, is left as it is."""
    import sqlite3
    if store.exists() or not scratch.is_file():
        return
    copy = store.with_name(f".{store.name}.{os.getpid()}")
    try:
        _copy_store(scratch, copy)
        os.link(copy, store)  # never replaces a store another watch made meanwhile
    except (OSError, sqlite3.Error):
        pass  # a file system without links, or a store made meanwhile: MLflow opens or makes it itself
    finally:
        copy.unlink(missing_ok=True)


def _copy_store(source, destination):
    """Copy the SQLite database ``source`` (opened read-only: one that is missing is an error, not made) to
    ``destination`` with SQLite's backup: a consistent copy."""
    import sqlite3
    reading = f"{Path(source).resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(reading, uri=True)) as database, \
            contextlib.closing(sqlite3.connect(destination)) as copy:
        database.backup(copy)


def _name(name):
    """``name`` as MLflow accepts it: other characters (such as ``[1]`` of a blob's second value) become ``_``."""
    return UNSAFE.sub("_", name)


def _all_ended(group):
    return all(read_result(group.path / member) is not None for member in group.members)
