"""A trained model's probabilities over images, computed by the engine asked for: Caffe, or another engine trusted
once it agreed with Caffe on the first mini-batch (with ``auto``, the fastest of those that agree).

Caffe computes the first mini-batch and gives out the input blob its data layer made; every engine
checked is fed that blob, so the check compares the engines alone. The images after it are fed to
the engine preprocessed as Caffe's ImageData layer does (``imagedata``), which must reproduce that
blob first.
"""

import time
from dataclasses import dataclass

import numpy as np

from caffegen.defaults import FORWARD_BATCH
from caffegen.errors import CaffegenError
from caffegen.job.options import CAFFE
from caffegen.reporting import SilentReporter
from caffegen.run.engines import ENGINES
from caffegen.run.engines.agreement import compare_features, compare_probabilities, output_layer, session_forward
from caffegen.run.engines.caffe import forward_images, image_data_layer, needed_resize
from caffegen.run.engines.imagedata import caffe_input


@dataclass(frozen=True)
class EngineRun:
    """Which engine computed a model's probabilities, the images a second it computed them at, and why each other
    engine asked for was not used."""

    engine: str
    rate: float
    others: tuple = ()

    def line(self):
        why = f"; not used: {'; '.join(self.others)}" if self.others else ""
        return f"probabilities computed by {self.engine} at {self.rate:.1f} img/s{why}"

    def record(self):
        """What metrics.json records of it."""
        return {"engine": self.engine, "images_per_second": round(self.rate, 2)}


@dataclass
class _Candidate:
    """An engine checked on the first mini-batch: its name, session and images a second there."""

    name: str
    session: object
    rate: float


def model_probabilities(target, model, paths, engine=CAFFE, batch_size=FORWARD_BATCH, device=None, reporter=None):
    """(probabilities (N, values) of ``model`` over the image files ``paths``, EngineRun), computed by ``engine``."""
    reporter = reporter or SilentReporter()
    blob, started = model.output_blob, time.perf_counter()
    if engine == CAFFE:
        found = forward_images(target, model, paths, [blob], batch_size, device, reporter)[blob]
        return found, EngineRun(CAFFE, len(paths) / _since(started))  # as always: nothing to tell
    if engine in ENGINES:
        ENGINES[engine].title()  # refuses an engine that is not installed before Caffe runs
    first, rest = paths[:batch_size], paths[batch_size:]
    blobs = forward_images(target, model, first, [model.input_blob, blob], batch_size, device, reporter, sized=paths)
    layer = image_data_layer(model, needed_resize(model, paths, SilentReporter()))
    chosen, others = _chosen(model, blobs, layer, first, engine, reporter)
    if chosen is None:
        found = forward_images(target, model, rest, [blob], batch_size, device, SilentReporter(), sized=paths)[blob] \
            if rest else blobs[blob][:0]
        return np.concatenate([blobs[blob], found]), _told(reporter, EngineRun(CAFFE, len(paths) / _since(started),
                                                                              tuple(others)))
    started = time.perf_counter()
    output = output_layer(model.deploy_net, blob)
    found = [chosen.session.forward(model.input_blob, caffe_input(layer, rest[start:start + batch_size], "."), output)
             for start in range(0, len(rest), batch_size)]
    rate = len(rest) / _since(started) if rest else chosen.rate
    return np.concatenate([blobs[blob]] + found), _told(reporter, EngineRun(chosen.name, rate, tuple(others)))


def _chosen(model, blobs, layer, first, engine, reporter):
    """(the _Candidate to compute the other images with, or None for Caffe; why each other was not used)."""
    inputs = blobs[model.input_blob].reshape(len(first), *model.input_shape[1:])
    try:
        refused = _preprocessing_refused(inputs, layer, first)
    except CaffegenError as error:  # OpenCV, which reads the images for the other engines, is missing
        if engine in ENGINES:
            raise
        refused = f"preprocessing the images for another engine: {error.message}"
    if refused:
        return None, [refused]
    agreeing, others = [], []
    for name in [engine] if engine in ENGINES else list(ENGINES):
        try:
            candidate, check = _checked(name, model, inputs, blobs[model.output_blob])
        except CaffegenError as error:
            if name == engine:
                raise
            others.append(error.message)
            continue
        reporter.line(check.line())
        if check.passed:
            agreeing.append(candidate)
        else:
            others.append(f"{check.engine} differs from Caffe")
    chosen = max(agreeing, key=lambda candidate: candidate.rate, default=None)
    if chosen is not None and len(agreeing) > 1:
        rates = ", ".join(f"{candidate.name} {candidate.rate:.0f} img/s" for candidate in agreeing)
        others.append(f"the others were slower on the first mini-batch ({rates})")
    return chosen, others


def _preprocessing_refused(inputs, layer, first):
    """Why another engine cannot be fed the images: ImageData ``layer``'s preprocessing in numpy gives other input
    blobs than Caffe's, ``inputs``, on the first mini-batch; or None."""
    preprocessed = caffe_input(layer, first, ".")
    same = compare_features("caffegen's preprocessing", inputs.reshape(len(inputs), -1),
                            preprocessed.reshape(len(inputs), -1))
    return None if same.passed else f"{same.line()}, so another engine would be fed other images"


def _checked(name, model, inputs, caffe):
    """(_Candidate, EngineCheck) of engine ``name`` fed Caffe's input blob ``inputs``, against Caffe's ``caffe``;
    refuses in one line an engine not installed, or one known to compute a layer of the model otherwise."""
    engine = ENGINES[name]
    title = engine.title()
    differing = engine.differences(model.deploy_net)
    if differing:
        raise CaffegenError(f"{differing[0]}, so its probabilities would differ from Caffe's")
    session = engine.load(model.deploy, model.weights)
    output = output_layer(model.deploy_net, model.output_blob)
    found = session_forward(session, model.input_blob, inputs, output)  # builds what the engine builds lazily
    started = time.perf_counter()
    session_forward(session, model.input_blob, inputs, output)  # the rate the images after it will see
    return _Candidate(name, session, len(inputs) / _since(started)), compare_probabilities(title, caffe, found)


def _told(reporter, run):
    reporter.line(run.line())
    return run


def _since(started):
    return max(time.perf_counter() - started, 1e-9)
