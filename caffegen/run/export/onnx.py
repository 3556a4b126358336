"""The ONNX format of a bundle: model.onnx, converted from the trained model and written only once ONNX Runtime
agrees with real Caffe (:mod:`caffegen.run.convert`)."""

from caffegen.run.convert import convert_to_onnx

ONNX_MODEL = "model.onnx"


def write_onnx(model, folder, caffe, reporter):
    """Convert ``model``'s deploy net and weights into ``folder``/model.onnx, checked by the Caffe ``caffe``; return
    {role: file name} written."""
    check = convert_to_onnx(model.deploy, model.weights, folder / ONNX_MODEL, caffe.required(), reporter=reporter)
    reporter.line(check.line().replace(str(folder / ONNX_MODEL), ONNX_MODEL))
    return {"onnx": ONNX_MODEL}
