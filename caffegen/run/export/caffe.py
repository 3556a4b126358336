"""The Caffe format of a bundle: deploy.prototxt and model.caffemodel, which Caffe, OpenCV DNN and edge
toolchains take."""

import shutil

from caffegen.job.model import BUNDLE_WEIGHTS, DEPLOY


def write_caffe(model, folder, caffe=None, reporter=None):
    """Copy ``model``'s deploy net and weights into ``folder``; return {role: file name} written."""
    shutil.copyfile(model.deploy, folder / DEPLOY)
    shutil.copyfile(model.weights, folder / BUNDLE_WEIGHTS)
    return {"deploy": DEPLOY, "weights": BUNDLE_WEIGHTS}
