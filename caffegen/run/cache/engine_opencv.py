"""OpenCV DNN as the engine of an extraction.

OpenCV's DNN module runs the same trunk net and weights, without a Caffe process per chunk or
the LMDBs in between; bench/cache_scale.py measures which engine is faster on a machine. caffegen
feeds it the images preprocessed as Caffe's ImageData layer does, and trusts it only after it
agreed with Caffe on the first mini-batch of every extraction.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffegen.errors import CaffegenError
from caffegen.io.featuredb import read_feature_db, write_features_h5
from caffegen.io.files import write_atomic
from caffegen.io.prototxt import to_text
from caffegen.io.schema import BVLC
from caffegen.job.options import CAFFE, OPENCV
from caffegen.net.netview import TEST
from caffegen.run.cache.engine_caffe import caffe_databases
from caffegen.run.cache.store import FEATURE_DATASET, LABEL_DATASET, STORE_WEIGHTS, Chunk, feature_shapes
from caffegen.run.opencv import caffe_input, compare_features, opencv_batch, opencv_dnn, opencv_net
from caffegen.run.shards import COMPUTED_BY

OPENCV_NET = "opencv_trunk.prototxt"


# Layer types whose OpenCV DNN output is known to differ from Caffe 1.0's: {type: why, for a layer, or None}.
# OpenCV's LRN reads no k and always adds 1 (features 30% off with k: 2); with k: 1 they agree.
OPENCV_DIFFERS = {
    "LRN": lambda layer: f"OpenCV DNN ignores k: {layer.lrn_param.k:g} of LRN '{layer.name}' (it adds 1)"
    if layer.lrn_param.k != 1 else None,
}


@dataclass
class OpenCVTrunk:
    """The trunk as OpenCV DNN runs it: its net, the deploy file, the input blob, the layer giving the features."""

    net: object
    deploy: Path
    input_blob: str
    output: str


def checked_engine(target, plan, store, nets, todo, device, batch_size, reporter, derived):
    """The OpenCVTrunk to compute the features with, or None for Caffe.

    OpenCV when asked for (with ``auto``: when it is installed and reads the trunk), and only when
    it agrees with Caffe on the first mini-batch; otherwise Caffe, saying why in one line.
    """
    if plan.engine == CAFFE or not todo:
        return None
    if derived:
        reporter.line("computing the features with Caffe: they start from a shallower trunk's stored features")
        return None
    try:
        check, trunk = engine_check(target, nets[todo[0].name], STORE_WEIGHTS, todo[0].lines[:batch_size],
                                    plan.boundary, plan.input_shape, store.path, device,
                                    name=f"{todo[0].name}.opencv_check")
    except CaffegenError as error:
        if plan.engine == OPENCV:
            raise
        reporter.line(f"computing the features with Caffe: {error.message}")
        return None
    if not check.passed:
        reporter.line(f"{check.line()}: computing all the features with Caffe instead")
        return None
    reporter.line(check.line())
    return trunk


def engine_check(target, net, weights, lines, boundary, input_shape, folder, device=None, name="opencv_check"):
    """(FeatureCheck, OpenCVTrunk): OpenCV DNN against real Caffe on the images of ``lines`` for trunk ``net``.

    ``net`` starts with its ImageData layer and computes blob ``boundary`` from images of
    ``input_shape``; ``weights`` and the files written (named ``name``) are in ``folder``. Refuses in
    one line what OpenCV cannot compute as Caffe does.
    """
    folder = Path(folder)
    trunk = opencv_trunk(net, boundary, input_shape, folder / weights, folder)
    first = Chunk(TEST, name, list(lines))
    write_atomic(folder / first.path(".txt"), "".join(line.text() for line in first.lines))
    checking = type(net)()
    checking.CopyFrom(net)
    checking.layer[0].image_data_param.source = first.path(".txt")
    databases = caffe_databases(target, first, checking, [boundary], folder, device, len(first.lines), weights)
    try:
        caffe = read_feature_db(databases[boundary], len(first.lines))
    finally:
        shutil.rmtree(databases[boundary], ignore_errors=True)
        (folder / first.path(".txt")).unlink()
    return compare_features(caffe, _opencv_rows(trunk, net.layer[0], first.lines, folder)), trunk


def opencv_trunk(net, boundary, input_shape, weights, folder):
    """The OpenCVTrunk of trunk ``net`` (ImageData first), refusing in one line what OpenCV cannot compute as Caffe."""
    opencv_dnn()
    data = net.layer[0]
    if data.transform_param.mirror:
        raise CaffegenError(f"mirror: true in '{data.name}' flips images at random with Caffe's own generator")
    differing = [why for layer in net.layer if layer.type in OPENCV_DIFFERS
                 for why in [OPENCV_DIFFERS[layer.type](layer)] if why]
    if differing:
        raise CaffegenError(f"{differing[0]}, so its features would differ from Caffe's")
    deploy = BVLC.NetParameter(name=net.name)
    deploy.layer.add(name=data.name, type="Input", top=[data.top[0]]).input_param.shape.add().dim.extend(
        (1,) + tuple(input_shape[1:]))
    deploy.layer.extend(net.layer[1:])
    write_atomic(folder / OPENCV_NET, to_text(deploy))
    output = [layer.name for layer in net.layer if boundary in layer.top][-1]
    return OpenCVTrunk(opencv_net(folder / OPENCV_NET, weights), folder / OPENCV_NET, data.top[0], output)


def _opencv_rows(trunk, data, lines, store):
    """OpenCV's features (N, values) of the images of ``lines``, read as ImageData layer ``data`` reads them."""
    paths = [data.image_data_param.root_folder + line.path for line in lines]
    return opencv_batch(trunk.net, trunk.input_blob, caffe_input(data, paths, store), trunk.output, trunk.deploy)


def run_chunk_opencv(plan, chunk, net, store, trunk, batch_size):
    """Compute one chunk's features with OpenCV DNN, a mini-batch at a time, and its labels into its HDF5 file."""
    count = len(chunk.lines)
    features = (_opencv_rows(trunk, net.layer[0], chunk.lines[start:start + batch_size], store)
                for start in range(0, count, batch_size))
    labels = [np.array([line.label_number for line in chunk.lines], np.float32)]
    try:
        write_features_h5(store / chunk.path(".h5"), {FEATURE_DATASET: features, LABEL_DATASET: labels}, count,
                          feature_shapes(plan), {COMPUTED_BY: OPENCV})
    except CaffegenError as error:
        raise CaffegenError(f"computing the features of {chunk.name} with OpenCV failed: {error.message}",
                            error.path) from None
