"""An engine other than Caffe computing an extraction, trusted only once it agreed with Caffe.

Such an engine runs the same trunk net and weights without a Caffe process per chunk or the LMDBs
in between; bench/cache_scale.py measures which is faster on a machine. caffegen feeds it the
images preprocessed as Caffe's ImageData layer does, and uses it only after it agreed with Caffe on
the first mini-batch of every extraction. With ``auto``, every installed engine is checked, and the
fastest of those that agree (on that mini-batch) computes the features.
"""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffegen.errors import CaffegenError
from caffegen.io.featuredb import read_feature_db, write_features_h5
from caffegen.io.files import write_atomic
from caffegen.io.prototxt import to_text
from caffegen.io.schema import BVLC
from caffegen.job.options import CAFFE
from caffegen.net.netview import TEST
from caffegen.run.cache.engine_caffe import caffe_databases
from caffegen.run.cache.store import FEATURE_DATASET, LABEL_DATASET, STORE_WEIGHTS, Chunk, feature_shapes
from caffegen.run.engines import ENGINES
from caffegen.run.engines.agreement import compare_features
from caffegen.run.engines.imagedata import caffe_input
from caffegen.run.shards import COMPUTED_BY

TRUNK_NET = "engine_trunk.prototxt"


@dataclass
class Trunk:
    """The trunk as an engine runs it: the engine, its session, the deploy file, the input blob, the layer giving the
    features, and the images a second it computed on the first mini-batch."""

    engine: str
    session: object
    deploy: Path
    input_blob: str
    output: str
    rate: float = 0.0


def checked_engine(target, plan, store, nets, todo, device, batch_size, reporter, derived):
    """The Trunk to compute the features with, or None for Caffe.

    The engine asked for (with ``auto``: each installed one that reads the trunk), and only when it
    agrees with Caffe on the first mini-batch; the fastest of those; otherwise Caffe, saying why.
    """
    if plan.engine == CAFFE or not todo:
        return None
    if derived:
        reporter.line("computing the features with Caffe: they start from a shallower trunk's stored features")
        return None
    first = todo[0]
    check = _FirstBatch(target, nets[first.name], first.lines[:batch_size], plan, store.path, device, first.name)
    agreeing, store.engine_checks = [], {}
    for name in [plan.engine] if plan.engine in ENGINES else list(ENGINES):
        trunk, store.engine_checks[name] = _tried(check, name, plan.engine == name, reporter)
        agreeing += [trunk] if trunk else []
    _tell_unused(store.engine_checks, agreeing, plan.engine in ENGINES, reporter)
    chosen = max(agreeing, key=lambda trunk: trunk.rate, default=None)
    if chosen is not None and plan.engine not in ENGINES:
        rates = ", ".join(f"{trunk.engine} {trunk.rate:.0f} img/s" for trunk in agreeing)
        reporter.line(f"computing the features with {chosen.engine}, the fastest that agrees with Caffe on the first "
                      f"mini-batch ({rates})")
    return chosen


def _tried(check, name, asked, reporter):
    """(the Trunk of engine ``name`` if it agrees with Caffe on the first mini-batch, else None; what was found, for
    the run's record). An engine that cannot run the trunk is an error only when it was asked for by name."""
    try:
        trunk, verdict = check.run(name)
    except CaffegenError as error:
        if asked:
            raise
        return None, {"not_used": error.message}
    record = {"agrees": verdict.passed, "max_difference": verdict.max_difference,
              "images_per_s": round(trunk.rate, 1)}
    if not verdict.passed:
        record["not_used"] = f"{verdict.engine} differs from Caffe"
    suffix = ": computing all the features with Caffe instead" if asked and not verdict.passed else ""
    reporter.line(verdict.line() + suffix)
    return (trunk if verdict.passed else None), record


def _tell_unused(checks, agreeing, asked, reporter):
    """One line on the engines not used and why, and on Caffe computing the features when none can."""
    reasons = [record["not_used"] for record in checks.values() if "not_used" in record]
    if agreeing and reasons:
        reporter.line(f"not used: {'; '.join(reasons)}")
    elif reasons and not asked:
        reporter.line(f"computing the features with Caffe: {'; '.join(reasons)}")


class _FirstBatch:
    """Caffe's features of an extraction's first mini-batch, computed once, and each engine checked against them."""

    def __init__(self, target, net, lines, plan, folder, device, name):
        self.net, self.lines, self.plan, self.folder = net, list(lines), plan, Path(folder)
        self.caffe = caffe_features(target, net, STORE_WEIGHTS, self.lines, plan.boundary, folder, device,
                                    f"{name}.engine_check")

    def run(self, name):
        """(Trunk, FeatureCheck) of engine ``name`` on the first mini-batch, and its rate on a second pass over it
        (the first builds what an engine builds lazily, which the rest of the extraction does not pay again)."""
        trunk = engine_trunk(name, self.net, self.plan.boundary, self.plan.input_shape,
                             self.folder / STORE_WEIGHTS, self.folder)
        found = _engine_rows(trunk, self.net.layer[0], self.lines, self.folder)
        started = time.perf_counter()
        _engine_rows(trunk, self.net.layer[0], self.lines, self.folder)
        trunk.rate = len(self.lines) / max(time.perf_counter() - started, 1e-9)
        return trunk, compare_features(ENGINES[name].title(), self.caffe, found)


def engine_check(target, net, weights, lines, boundary, input_shape, folder, device=None, name="opencv",
                 check_name="engine_check"):
    """(FeatureCheck, Trunk): engine ``name`` against real Caffe on the images of ``lines`` for trunk ``net``.

    ``net`` starts with its ImageData layer and computes blob ``boundary`` from images of
    ``input_shape``; ``weights`` and the files written are in ``folder``. Refuses in one line what
    the engine cannot compute as Caffe does.
    """
    folder = Path(folder)
    trunk = engine_trunk(name, net, boundary, input_shape, folder / weights, folder)
    caffe = caffe_features(target, net, weights, lines, boundary, folder, device, check_name)
    return compare_features(ENGINES[name].title(), caffe, _engine_rows(trunk, net.layer[0], lines, folder)), trunk


def caffe_features(target, net, weights, lines, boundary, folder, device, name):
    """Caffe's features (N, values) of blob ``boundary`` for the images of ``lines``, through trunk ``net``."""
    first = Chunk(TEST, name, list(lines))
    write_atomic(folder / first.path(".txt"), "".join(line.text() for line in first.lines))
    checking = type(net)()
    checking.CopyFrom(net)
    checking.layer[0].image_data_param.source = first.path(".txt")
    databases = caffe_databases(target, first, checking, [boundary], folder, device, len(first.lines), weights)
    try:
        return read_feature_db(databases[boundary], len(first.lines))
    finally:
        shutil.rmtree(databases[boundary], ignore_errors=True)
        (folder / first.path(".txt")).unlink()


def engine_trunk(name, net, boundary, input_shape, weights, folder):
    """The Trunk of engine ``name`` for trunk ``net`` (ImageData first), refusing in one line what it cannot compute
    as Caffe does."""
    engine = ENGINES[name]
    engine.title()
    data = net.layer[0]
    if data.transform_param.mirror:
        raise CaffegenError(f"mirror: true in '{data.name}' flips images at random with Caffe's own generator")
    differing = engine.differences(net)
    if differing:
        raise CaffegenError(f"{differing[0]}, so its features would differ from Caffe's")
    deploy = BVLC.NetParameter(name=net.name)
    deploy.layer.add(name=data.name, type="Input", top=[data.top[0]]).input_param.shape.add().dim.extend(
        (1,) + tuple(input_shape[1:]))
    deploy.layer.extend(net.layer[1:])
    write_atomic(folder / TRUNK_NET, to_text(deploy))
    output = [layer.name for layer in net.layer if boundary in layer.top][-1]
    return Trunk(name, engine.load(folder / TRUNK_NET, weights), folder / TRUNK_NET, data.top[0], output)


def _engine_rows(trunk, data, lines, store):
    """The engine's features (N, values) of the images of ``lines``, read as ImageData layer ``data`` reads them."""
    paths = [data.image_data_param.root_folder + line.path for line in lines]
    return trunk.session.forward(trunk.input_blob, caffe_input(data, paths, store), trunk.output)


def run_chunk_engine(plan, chunk, net, store, trunk, batch_size):
    """Compute one chunk's features with the trunk's engine, a mini-batch at a time, and its labels into its HDF5
    file."""
    count = len(chunk.lines)
    features = (_engine_rows(trunk, net.layer[0], chunk.lines[start:start + batch_size], store)
                for start in range(0, count, batch_size))
    labels = [np.array([line.label_number for line in chunk.lines], np.float32)]
    try:
        write_features_h5(store / chunk.path(".h5"), {FEATURE_DATASET: features, LABEL_DATASET: labels}, count,
                          feature_shapes(plan), {COMPUTED_BY: trunk.engine})
    except CaffegenError as error:
        raise CaffegenError(f"computing the features of {chunk.name} with {trunk.engine} failed: {error.message}",
                            error.path) from None
