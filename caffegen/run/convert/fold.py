"""BatchNorm folded into the layers before it, and real Caffe's word that the folded net computes what the
original does: both run on the same fixed-seed random input, every output within the ONNX check's tolerance."""

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import write_caffemodel
from caffegen.net.foldbn import fold_batch_norms
from caffegen.net.onnx.layout import layout
from caffegen.run.convert.agreement import compare_blob, is_probability, random_inputs
from caffegen.run.engines.caffe import caffe_forward

FOLDED_WEIGHTS = "folded.caffemodel"


def fold_and_check(target, plan, caffemodel, workdir, reporter):
    """(Layout of the folded net, its weights' path, the BatchNorms folded), once Caffe ran both nets alike."""
    folding = fold_batch_norms(plan.net, caffemodel)
    for name, why in folding.kept:
        reporter.line(f"BatchNorm '{name}' left unfolded: {why}")
    if not folding.folded:
        reporter.line("no BatchNorm to fold: converting the net as it is")
        return plan, caffemodel.path, ()
    weights = workdir / FOLDED_WEIGHTS
    write_caffemodel(weights, folding.weights, plan.net.name)
    folded = layout(folding.net)
    feed = random_inputs(plan.inputs)
    before = _outputs(target, plan.net, caffemodel.path, feed, plan.outputs, workdir / "unfolded")
    after = _outputs(target, folded.net, weights, feed, plan.outputs, workdir / "folded")
    checks = [compare_blob(blob, before[blob], after[blob], is_probability(plan.producers[blob]))
              for blob in plan.outputs]
    worst = max(checks, key=lambda check: check.measure / check.tolerance)
    if not worst.passed:
        raise CaffegenError(f"folding BatchNorm changes Caffe's output '{worst.blob}': {worst.words()}; "
                            "nothing written")
    reporter.line(f"folded {len(folding.folded)} BatchNorm: real Caffe runs the folded net as the original, "
                  f"largest difference '{worst.blob}' {worst.words()}")
    return folded, weights, tuple(folding.folded)


def _outputs(target, net, weights, feed, blobs, folder):
    folder.mkdir()
    return caffe_forward(target, net, weights, feed, blobs, folder)
