"""ONNX conversion against real Caffe 1.0: each layer's semantics, the command line, the first differing layer,
and BatchNorm folding. One net holds a branch per case, so one Caffe run checks every case's blobs."""

import numpy as np
import pytest
from caffe_weights import write_random_weights

from caffegen.io.caffemodel import read_caffemodel
from caffegen.io.prototxt import parse_net
from caffegen.net.onnx import build_onnx
from caffegen.net.onnx.layout import layout, prepared_net
from caffegen.run.convert.agreement import check_blobs, random_inputs
from caffegen.run.engines.onnxruntime import onnxruntime_forward
from caffegen.run.target import Target

INPUT = ('name: "cases"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 '
         'dim: 9 dim: 11 } } }\n')


def layer(name, kind, bottoms, tops=None, params=""):
    tops = tops or [name]
    return (f'layer {{ name: "{name}" type: "{kind}" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
            + " ".join(f'top: "{t}"' for t in tops) + f" {params} }}\n")


POOL = "pooling_param {{ pool: {} {} }}"
# case: its layers, on the input "data" (2, 4, 9, 11) or on the blobs of the cases before it.
CASES = {
    # 9 → ceil(10/3)+1 = 5 windows, the last starting in the padding: Caffe drops it (4); 11 → 5 kept.
    "pool-max-ceil-drops-padding-window": layer("pool_max", "Pooling", ["data"],
                                                params=POOL.format("MAX", "kernel_size: 3 stride: 3 pad: 2")),
    "pool-ave-ceil-drops-padding-window": layer("pool_ave", "Pooling", ["data"],
                                                params=POOL.format("AVE", "kernel_size: 3 stride: 3 pad: 2")),
    "pool-ave-rectangular": layer("pool_rect", "Pooling", ["data"], params=POOL.format(
        "AVE", "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1")),
    # 9 → ceil(7/2)+1 = 5 windows of height 2, the last over row 8 only: Caffe divides it by 1·3, not 2·3.
    "pool-ave-window-past-the-input": layer("pool_past", "Pooling", ["data"], params=POOL.format(
        "AVE", "kernel_h: 2 kernel_w: 3 stride: 2 pad_h: 0 pad_w: 1")),
    "pool-max-no-pad": layer("pool_plain", "Pooling", ["data"], params=POOL.format("MAX", "kernel_size: 2 stride: 2")),
    "pool-global-max": layer("pool_gmax", "Pooling", ["data"], params=POOL.format("MAX", "global_pooling: true")),
    "pool-global-ave": layer("pool_gave", "Pooling", ["data"], params=POOL.format("AVE", "global_pooling: true")),
    "lrn-across-channels": layer("lrn_across", "LRN", ["data"],
                                 params="lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"),
    "lrn-within-channel": layer("lrn_within", "LRN", ["data"], params="lrn_param { local_size: 3 alpha: 0.5 "
                                "beta: 0.75 norm_region: WITHIN_CHANNEL }"),
    "batchnorm-factor-eps": layer("bn", "BatchNorm", ["data"], params="batch_norm_param { eps: 0.001 }"),
    "scale-axis-num-axes-bias": layer("scale_ax", "Scale", ["data"],
                                      params="scale_param { axis: 1 num_axes: 2 bias_term: true }"),
    "scale-scalar": layer("scale_0", "Scale", ["data"], params="scale_param { num_axes: 0 bias_term: true }"),
    "scale-second-bottom": layer("gave_flat", "Flatten", ["pool_gave"]) + layer(
        "scale_2", "Scale", ["data", "gave_flat"], params="scale_param { axis: 0 }"),
    "bias-axis": layer("bias_ax", "Bias", ["data"], params="bias_param { axis: 2 num_axes: 1 }"),
    "bias-second-bottom": layer("bias_2", "Bias", ["data", "gave_flat"], params="bias_param { axis: 0 }"),
    "eltwise-sum-coefficients": layer("sum", "Eltwise", ["data", "bn"],
                                      params="eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }"),
    "eltwise-prod": layer("prod", "Eltwise", ["data", "bn"], params="eltwise_param { operation: PROD }"),
    "eltwise-max": layer("max", "Eltwise", ["data", "bn", "scale_ax"], params="eltwise_param { operation: MAX }"),
    "innerproduct-axis": layer("ip_axis", "InnerProduct", ["data"], params="inner_product_param { num_output: 5 "
                               "axis: 2 }"),
    "innerproduct-transpose": layer("ip_t", "InnerProduct", ["data"], params="inner_product_param { num_output: 7 "
                                    "transpose: true bias_term: false }"),
    "conv-group-dilation": layer("conv_gd", "Convolution", ["data"], params="convolution_param { num_output: 6 "
                                 "group: 2 kernel_size: 3 dilation: 2 pad: 2 }"),
    "conv-rectangular": layer("conv_rect", "Convolution", ["data"], params="convolution_param { num_output: 3 "
                              "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 bias_term: false }"),
    "deconv-group-stride": layer("deconv", "Deconvolution", ["data"], params="convolution_param { num_output: 6 "
                                 "group: 2 kernel_size: 3 stride: 2 pad: 1 }"),
    "deconv-rectangular-dilation": layer("deconv_rect", "Deconvolution", ["data"], params="convolution_param { "
                                         "num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_w: 1 "
                                         "dilation: 2 }"),
    "crop-offsets": layer("crop", "Crop", ["data", "pool_max"], params="crop_param { axis: 2 offset: 1 offset: 2 }"),
    "crop-channels": layer("crop_c", "Crop", ["conv_gd", "data"], params="crop_param { axis: 1 offset: 1 offset: 0 "
                           "offset: 0 }"),
    "concat-channels": layer("cat_c", "Concat", ["data", "bn"]),
    "concat-width": layer("cat_w", "Concat", ["data", "bn", "sum"], params="concat_param { axis: -1 }"),
    "slice-points": layer("slice_c", "Slice", ["data"], ["part_a", "part_b", "part_c"],
                          "slice_param { axis: 1 slice_point: 1 slice_point: 3 }"),
    "slice-equal-height": layer("slice_h", "Slice", ["cat_c"], ["half_a", "half_b"], "slice_param { slice_dim: 1 }"),
    "reshape-0-and-minus-1": layer("reshaped", "Reshape", ["data"],
                                   params="reshape_param { shape { dim: 0 dim: -1 dim: 11 } }"),
    "reshape-axis-range": layer("reshaped_ax", "Reshape", ["data"],
                                params="reshape_param { axis: 1 num_axes: 2 shape { dim: -1 } }"),
    "flatten": layer("flat", "Flatten", ["data"]),
    "flatten-axes": layer("flat_hw", "Flatten", ["data"], params="flatten_param { axis: 2 end_axis: -1 }"),
    "softmax-channels": layer("prob", "Softmax", ["data"]),
    "softmax-axis": layer("prob_w", "Softmax", ["data"], params="softmax_param { axis: 3 }"),
    "relu": layer("relu", "ReLU", ["data"]),
    "relu-negative-slope": layer("leaky", "ReLU", ["data"], params="relu_param { negative_slope: 0.1 }"),
    "prelu-per-channel": layer("prelu", "PReLU", ["data"]),
    "prelu-shared": layer("prelu_s", "PReLU", ["data"], params="prelu_param { channel_shared: true }"),
    "power": layer("power", "Power", ["data"], params="power_param { power: 2 scale: 0.5 shift: 3 }"),
    "power-affine": layer("affine", "Power", ["data"], params="power_param { scale: -1 shift: 0.5 }"),
    "sigmoid": layer("sigmoid", "Sigmoid", ["data"]),
    "tanh": layer("tanh", "TanH", ["data"]),
    "elu": layer("elu", "ELU", ["data"], params="elu_param { alpha: 0.5 }"),
    "absval": layer("abs", "AbsVal", ["data"]),
    "dropout-at-test": layer("drop", "Dropout", ["data"], params="dropout_param { dropout_ratio: 0.3 }"),
    "split": layer("split", "Split", ["data"], ["copy_a", "copy_b"]),
    "in-place-chain": layer("conv_ip", "Convolution", ["data"], params="convolution_param { num_output: 3 "
                            "kernel_size: 1 }") + layer("bn_ip", "BatchNorm", ["conv_ip"], ["conv_ip"])
    + layer("scale_ip", "Scale", ["conv_ip"], ["conv_ip"], "scale_param { bias_term: true }")
    + layer("relu_ip", "ReLU", ["conv_ip"], ["conv_ip"]),
}
CASES_NET = INPUT + "".join(CASES.values())


def tops_of(text):
    net = parse_net(INPUT + text, "case.prototxt").net
    return [top for item in net.layer[1:] for top in item.top]


@pytest.fixture(scope="module")
def cases(caffe, tmp_path_factory):
    """{blob: BlobCheck} of every blob of the cases' net, ONNX Runtime against one real Caffe run."""
    folder = tmp_path_factory.mktemp("cases")
    deploy = folder / "cases.prototxt"
    deploy.write_text(CASES_NET)
    net = prepared_net(deploy)
    weights = write_random_weights(net, folder / "cases.caffemodel")
    plan = layout(net, deploy)
    blobs = [blob for result in plan.layers[1:] for blob in result.tops]
    model = build_onnx(plan.layers, read_caffemodel(weights), plan.inputs, blobs)
    checks = check_blobs(Target(caffe), net, weights, model, random_inputs(plan.inputs), blobs, plan.producers,
                         folder)
    return {check.blob: check for check in checks}, model, plan


@pytest.mark.parametrize("case", CASES)
def test_the_layer_computes_what_caffe_does(cases, case):
    checks, _, _ = cases
    tops = [top.split("@")[0] for top in tops_of(CASES[case])]
    found = [check for blob, check in checks.items() if blob.split("@")[0] in tops]
    assert found and all(check.passed for check in found), [(check.blob, check.words()) for check in found]
    assert all(check.scale > 0 for check in found)


def test_the_checks_see_the_in_place_values_caffe_overwrites(cases):
    checks, _, _ = cases
    assert {"conv_ip@conv_ip", "conv_ip@bn_ip", "conv_ip@scale_ip", "conv_ip"} <= set(checks)


def test_the_batch_axis_is_dynamic(cases):
    """The model fed 3 items (it was checked on 2) computes each item as it does alone."""
    _, model, plan = cases
    items = random_inputs({"data": (3, 4, 9, 11)})["data"]
    outputs = ["prob", "ip_axis", "scale_2", "reshaped", "flat", "pool_ave", "deconv"]
    together = onnxruntime_forward(model, {"data": items}, outputs)
    for index in range(3):
        alone = onnxruntime_forward(model, {"data": items[index:index + 1]}, outputs)
        for blob in outputs:
            np.testing.assert_allclose(together[blob][index:index + 1], alone[blob], rtol=1e-5, atol=1e-6)
