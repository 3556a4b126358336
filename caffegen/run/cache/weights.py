"""The blobs of some layers of a caffemodel, written as Caffe loads them."""



from caffegen.io.caffemodel import read_caffemodel, write_caffemodel
from caffegen.io.schema import BVLC
from caffegen.job.cacheplan import stored
from caffegen.net.shapes import product


def write_trimmed_weights(source, target, names, param_shapes, override=None):
    """Write the blobs of layers ``names`` to ``target``, from ``override`` where it has them, else from ``source``.

    Legacy 4-axis blobs are given the shapes Caffe gives the layers' parameters, so Caffe copies them.
    """
    models = [read_caffemodel(path) for path in ((override,) if override else ()) + (source,)]
    layers = []
    for name in names:
        model = next((model for model in models if stored(model, name)), None)
        if model is not None:
            layer = model.layer(name)
            arrays = [_shaped(array, blob, shape) for array, blob, shape in
                      zip(model.values(name), layer.blobs, param_shapes.get(name) or [None] * len(layer.blobs))]
            layers.append((BVLC.LayerParameter(name=name, type=layer.type), arrays))
    write_caffemodel(target, layers)
    return len(layers)


def _shaped(array, blob, shape):
    if blob.legacy and shape and None not in shape and product(shape) == array.size:
        return array.reshape(shape)
    return array
