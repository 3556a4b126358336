"""A deploy net made ready to convert: read, in single assignment, its batch set, its layers shaped, its inputs
and outputs named, and each blob's writer known."""

from dataclasses import dataclass

from caffegen.errors import CaffegenError
from caffegen.io.prototxt import read_net
from caffegen.io.schema import BVLC, load_fork_schema
from caffegen.net.deployinputs import with_batch
from caffegen.net.netview import TEST, NetView
from caffegen.net.onnx import refuse_unconvertible
from caffegen.net.shapes import infer_shapes
from caffegen.net.singleassign import net_outputs, single_assignment

CHECK_BATCH = 2  # items in the checking blob when the batch stays dynamic: more than one, so batching is checked


@dataclass(frozen=True)
class Layout:
    """A prepared net's layers with their shapes, its inputs and outputs, and the layer that writes each blob."""

    net: object
    layers: list
    inputs: dict  # blob -> shape
    outputs: list
    producers: dict  # blob -> LayerShapes

    @property
    def checked(self):
        """The outputs, and the scores each output Softmax reads: saturated probabilities would hide a difference."""
        scores = [self.producers[blob].layer.bottom[0] for blob in self.outputs
                  if self.producers[blob].type == "Softmax"]
        return self.outputs + [blob for blob in scores if blob not in self.outputs and blob in self.producers
                               and self.producers[blob].layer is not None]


def layout(net, path=None):
    """The Layout of ``net`` (single assignment, batch set), refusing a layer Caffe or ONNX cannot run."""
    view = NetView(net, TEST, path=path)
    layers = infer_shapes(view)
    rejected = next((result for result in layers if result.rejected), None)
    if rejected is not None:
        raise CaffegenError(f"layer '{rejected.name}': {rejected.note}", path)
    if not view.inputs:
        raise CaffegenError("no Input layer and no input fields: convert takes a deploy net, whose inputs are fed",
                            path)
    refuse_unconvertible(layers, path)
    unknown = next((result for result in layers if any(shape is None or None in shape
                                                       for shape in result.tops.values())), None)
    if unknown is not None:
        raise CaffegenError(f"the shape of layer '{unknown.name}''s output is unknown"
                            + (f": {unknown.note}" if unknown.note else ""), path)
    producers = {blob: result for result in layers for blob in result.tops}
    inputs = {blob: producers[blob].tops[blob] for blob in view.inputs}
    return Layout(net, layers, inputs, net_outputs(view), producers)


def prepared_net(deploy, proto=None, batch=None):
    """The deploy net read (with a fork's schema), in single assignment, its inputs of ``batch`` items."""
    net = read_net(deploy, load_fork_schema(proto) if proto else BVLC).net
    return with_batch(single_assignment(net), batch or CHECK_BATCH)


