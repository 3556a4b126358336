"""A Caffe deploy net and its weights converted to ONNX, and written only once ONNX Runtime agrees with real Caffe.

Both engines run the same fixed-seed random input blob; every output of the net is compared. Where
one differs, every intermediate blob is compared, and the first layer whose blob differs is named.
"""

from dataclasses import dataclass
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_caffemodel
from caffegen.io.files import temp_folder, write_atomic
from caffegen.io.onnxfile import keep_outputs
from caffegen.net.onnx import OPSET, build_onnx
from caffegen.net.onnx.layout import CHECK_BATCH, layout, prepared_net
from caffegen.reporting import SilentReporter
from caffegen.run.convert.agreement import check_blobs, first_difference, random_inputs
from caffegen.run.convert.fold import fold_and_check
from caffegen.run.engines.onnxruntime import onnx_modules


@dataclass(frozen=True)
class ConversionCheck:
    """What was written, and how far ONNX Runtime's outputs were from Caffe's."""

    output: Path
    checks: tuple  # a BlobCheck per output of the net, then per blob an output Softmax reads
    outputs: int  # how many of the checks are outputs
    batch: int  # None: dynamic
    checked_batch: int
    folded: tuple = ()  # the BatchNorm layers folded

    @property
    def worst(self):
        """The output check with the largest difference, as measured against its tolerance."""
        return max(self.checks, key=lambda check: check.measure / check.tolerance)

    def line(self):
        batch = f"batch {self.batch}" if self.batch else "dynamic batch"
        folded = f", {len(self.folded)} BatchNorm folded" if self.folded else ""
        scores = len(self.checks) - self.outputs
        scores = f" and the {scores} blob(s) their Softmax reads" if scores else ""
        return (f"wrote {self.output} (ONNX opset {OPSET}, {batch}{folded}): ONNX Runtime agrees with Caffe on "
                f"{self.outputs} output(s){scores} for a random input of {self.checked_batch}; largest "
                f"difference: '{self.worst.blob}' {self.worst.words()}")


def convert_to_onnx(deploy, weights, output, target, proto=None, batch=None, fold_bn=False, reporter=None,
                    force=False):
    """Convert ``deploy`` + ``weights`` to ONNX at ``output`` once ONNX Runtime agrees with real Caffe (``target``).

    ``batch`` fixes the batch axis (None: dynamic); ``fold_bn`` first folds each BatchNorm (and its Scale)
    into the layer before it, checked by Caffe against the unfolded net. An existing ``output`` is
    replaced only with ``force``. Returns a ConversionCheck.
    """
    if Path(output).exists() and not force:
        raise CaffegenError("exists; pass --force to replace it, or choose another name with -o", output)
    onnx_modules()
    target.required()
    net = prepared_net(deploy, proto, batch)
    weights = Path(weights)
    caffemodel = read_caffemodel(weights)
    plan = layout(net, deploy)
    with temp_folder() as work:
        folded = ()
        if fold_bn:
            plan, weights, folded = fold_and_check(target, plan, caffemodel, work, reporter or SilentReporter())
            caffemodel = read_caffemodel(weights)
        checked = plan.checked
        model = build_onnx(plan.layers, caffemodel, plan.inputs, checked, batch, net.name or "caffe")
        feed = random_inputs(plan.inputs)
        checks = _checked(target, plan, weights, model, feed, checked, work / "outputs")
        if not all(check.passed for check in checks):
            raise _located(target, plan, weights, caffemodel, batch, feed, work / "layers")
        keep_outputs(model, len(plan.outputs))  # the scores were outputs for the check only
        write_atomic(output, model.SerializeToString())
    return ConversionCheck(Path(output), tuple(checks), len(plan.outputs), batch, batch or CHECK_BATCH,
                           tuple(folded))


def _checked(target, plan, weights, model, feed, blobs, folder):
    folder.mkdir()
    return check_blobs(target, plan.net, weights, model, feed, blobs, plan.producers, folder)


def _located(target, plan, weights, caffemodel, batch, feed, folder):
    """The error naming the first layer whose blob differs, every intermediate blob an output of a check-only model."""
    blobs = [blob for result in plan.layers if result.layer is not None and result.type != "Input"
             for blob in result.tops]
    model = build_onnx(plan.layers, caffemodel, plan.inputs, blobs, batch)
    checks = _checked(target, plan, weights, model, feed, blobs, folder)
    return first_difference(checks, plan.producers) or CaffegenError(
        "ONNX Runtime differs from Caffe on the outputs but on no intermediate blob; nothing written")
