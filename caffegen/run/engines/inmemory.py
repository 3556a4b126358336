"""A deploy net and its weights converted to ONNX in memory, one model per output blob, for the engines that run ONNX.

The graph gives out the blob a layer writes, by the layer's name, as OpenCV's sessions do; its batch is dynamic.
"""



class InMemoryOnnx:
    """``deploy`` and ``weights`` read once; ``model(output)`` is the ONNX model (dynamic batch) computing the blob
    that layer ``output`` writes."""

    def __init__(self, deploy, weights):
        from caffegen.io.caffemodel import read_caffemodel
        from caffegen.net.onnx.layout import layout, prepared_net
        self.deploy, self.weights = deploy, read_caffemodel(weights)
        self.layout = layout(prepared_net(deploy), deploy)
        self.blob_of = {result.name: list(result.tops)[-1] for result in self.layout.layers if result.tops}

    def model(self, output):
        """(blob, onnx.ModelProto): the blob layer ``output`` writes, and the model giving it out."""
        from caffegen.net.onnx import build_onnx
        blob = self.blob_of[output]
        return blob, build_onnx(self.layout.layers, self.weights, self.layout.inputs, [blob], None, "trunk")


def first_line(error):
    """The first line of an engine's exception, or its type's name when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
