"""A deploy net's inputs (its Input layers, or the legacy input / input_shape / input_dim fields): their batch
size, and an HDF5Data layer in their place that feeds Caffe given blobs."""

from caffegen.errors import CaffegenError

INPUT = "Input"


def with_batch(net, batch):
    """A copy of deploy ``net`` whose every input has ``batch`` items; an input without a shape is refused."""
    net = _copy(net)
    shapes = [shape for layer in net.layer if layer.type == INPUT for shape in layer.input_param.shape]
    shapes += list(net.input_shape)
    if net.input and not net.input_shape:
        if len(net.input_dim) != 4 * len(net.input):
            raise CaffegenError("the net's inputs need a shape: input_shape, input_dim or an Input layer")
        for start in range(0, len(net.input_dim), 4):
            net.input_dim[start] = batch
    for shape in shapes:
        if not shape.dim:
            raise CaffegenError("an input of the net has an empty shape")
        shape.dim[0] = batch
    return net


def hdf5_input_net(net, source, batch):
    """A copy of ``net`` whose inputs are read by one HDF5Data layer from the files listed in ``source``."""
    inputs = list(net.input) + [top for layer in net.layer if layer.type == INPUT for top in layer.top]
    fed = _copy(net)
    for name in ("input", "input_shape", "input_dim"):
        fed.ClearField(name)
    kept = [layer for layer in fed.layer if layer.type != INPUT]
    del fed.layer[:]
    data = fed.layer.add(name="caffegen_hdf5_input", type="HDF5Data", top=inputs)
    data.hdf5_data_param.source, data.hdf5_data_param.batch_size = str(source), batch
    fed.layer.extend(kept)
    return fed


def _copy(net):
    copy = type(net)()
    copy.CopyFrom(net)
    return copy
