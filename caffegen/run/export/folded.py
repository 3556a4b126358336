"""A trained model with each BatchNorm (and the Scale after it) folded into the layer before it, for a bundle whose
formats all carry the folded net; real Caffe runs the folded model against the original first
(:mod:`caffegen.run.convert.fold`)."""

import dataclasses

from caffegen.io.caffemodel import read_caffemodel
from caffegen.io.files import write_atomic
from caffegen.io.prototxt import to_text
from caffegen.net.deployinputs import with_batch
from caffegen.net.onnx.layout import layout, prepared_net
from caffegen.run.convert.fold import fold_and_check

FOLDED_DEPLOY = "folded.prototxt"


def folded_model(model, caffe, folder, reporter):
    """(the TrainedModel of ``model`` folded, its deploy net and weights in ``folder``, the BatchNorms folded), once
    the Caffe ``caffe`` computed the same outputs with both; ``model`` itself when it has no BatchNorm to fold."""
    plan = layout(prepared_net(model.deploy), model.deploy)
    folded, weights, names = fold_and_check(caffe.required(), plan, read_caffemodel(model.weights), folder, reporter)
    if not names:
        return model, ()
    write_atomic(folder / FOLDED_DEPLOY, to_text(with_batch(folded.net, model.input_shape[0])))
    return dataclasses.replace(model, deploy=folder / FOLDED_DEPLOY, weights=weights), tuple(names)

