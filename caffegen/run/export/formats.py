"""The table of a bundle's formats, one :class:`Exporter` each; light to import, so that ``--help`` lists them."""

import importlib
from dataclasses import dataclass

CAFFE_FORMAT, ONNX_FORMAT = "caffe", "onnx"


@dataclass(frozen=True)
class Exporter:
    """One format of a bundle: what it is for, and its writer (``module:function``, imported when it writes), which
    takes the model, the folder, the Caffe that checks what it writes and the reporter."""

    name: str
    description: str
    writer: str

    def write(self, model, folder, caffe, reporter):
        """Write ``model``'s files of this format into ``folder``; return {role: file name}."""
        module, function = self.writer.split(":")
        return getattr(importlib.import_module(module), function)(model, folder, caffe, reporter)


FORMATS = {
    CAFFE_FORMAT: Exporter(CAFFE_FORMAT, "deploy.prototxt + model.caffemodel (Caffe, OpenCV DNN, edge toolchains)",
                           "caffegen.run.export.caffe:write_caffe"),
    ONNX_FORMAT: Exporter(ONNX_FORMAT, "model.onnx, written once ONNX Runtime agrees with real Caffe (ONNX Runtime, "
                          "OpenVINO, TensorRT, NPU toolchains)", "caffegen.run.export.onnx:write_onnx"),
}
