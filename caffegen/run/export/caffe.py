"""The Caffe format of a bundle: deploy.prototxt and model.caffemodel, which Caffe, OpenCV DNN and edge
toolchains take, and the mean image when the model subtracts one."""

import shutil

from caffegen.job.model import BUNDLE_WEIGHTS, DEPLOY

MEAN_FILE = "mean.binaryproto"


def write_caffe(model, folder):
    """Copy ``model``'s deploy net, weights and mean file into ``folder``; return {role: file name} written."""
    shutil.copyfile(model.deploy, folder / DEPLOY)
    shutil.copyfile(model.weights, folder / BUNDLE_WEIGHTS)
    written = {"deploy": DEPLOY, "weights": BUNDLE_WEIGHTS}
    if model.mean_file:
        shutil.copyfile(model.mean_file, folder / MEAN_FILE)
        written["mean"] = MEAN_FILE
    return written
