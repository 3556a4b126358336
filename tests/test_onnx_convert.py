"""``caffegen convert`` against real Caffe 1.0: what it writes, what it refuses in one line, the first layer that
differs, and --fold-bn."""

import dataclasses

import numpy as np
import onnx
import pytest
from caffe_weights import write_random_weights
from conftest import DIGITS, assert_one_line_error, run_caffegen

from caffegen.io.prototxt import parse_net
from caffegen.net import onnx as converters
from caffegen.net.onnx.normalization import lrn
from caffegen.run.convert.agreement import random_inputs
from caffegen.run.engines.onnxruntime import onnxruntime_forward

# The legacy input fields, an LRN with k: 2 and a classifier.
LEGACY_NET = '''name: "legacy"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 12 input_dim: 12
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param {
  num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param {
  pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''
BN = ('layer {{ name: "{0}" type: "BatchNorm" bottom: "{1}" top: "{1}" }}\n'
      'layer {{ name: "{0}_scale" type: "Scale" bottom: "{1}" top: "{1}" scale_param {{ bias_term: true }} }}\n')
# conv1's and the (transposed) fc's BatchNorms fold; conv2's output is also read by the Eltwise, so its BatchNorm
# stays.
BN_NET = ('name: "bn"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 '
          'dim: 8 } } }\n'
          'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 '
          'kernel_size: 3 pad: 1 bias_term: false } }\n' + BN.format("bn1", "conv1")
          + 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
          'layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param { num_output: 4 '
          'kernel_size: 1 } }\n'
          'layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "bn2" }\n'
          'layer { name: "sum" type: "Eltwise" bottom: "conv2" bottom: "bn2" top: "sum" }\n'
          'layer { name: "fc" type: "InnerProduct" bottom: "sum" top: "fc" inner_product_param { num_output: 3 '
          'transpose: true } }\n' + BN.format("bn3", "fc"))


def model_files(folder, text, name="net"):
    deploy = folder / f"{name}.prototxt"
    deploy.write_text(text)
    return deploy, write_random_weights(parse_net(text, deploy).net, folder / f"{name}.caffemodel")


def test_a_legacy_input_net_is_written_with_a_dynamic_batch(caffe, tmp_path):
    deploy, weights = model_files(tmp_path, LEGACY_NET)
    result = run_caffegen("convert", deploy, weights, "-o", tmp_path / "net.onnx", "--caffe", caffe)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"wrote {tmp_path / 'net.onnx'} (ONNX opset 17, dynamic batch): ONNX Runtime agrees "
                           "with Caffe on 1 output(s) and the 1 blob(s) their Softmax reads for a random input of "
                           "2; largest difference: "), line
    assert "'prob' max |Δ|" in line or "'fc' max |Δ|" in line
    model = onnx.load(tmp_path / "net.onnx")
    onnx.checker.check_model(model)
    assert [dim.dim_param or dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim] == \
        ["N", 3, 12, 12]
    assert [output.name for output in model.graph.output] == ["prob"]


def test_a_fixed_batch_is_written_as_a_number(caffe, tmp_path):
    deploy, weights = model_files(tmp_path, LEGACY_NET)
    result = run_caffegen("convert", deploy, weights, "-o", tmp_path / "net.onnx", "--batch", 3, "--caffe", caffe)
    assert result.returncode == 0, result.stderr
    assert "(ONNX opset 17, batch 3)" in result.stdout and "random input of 3" in result.stdout
    model = onnx.load(tmp_path / "net.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


def test_a_layer_without_an_onnx_form_is_one_line_and_nothing_is_written(caffe, tmp_path):
    text = LEGACY_NET.replace('type: "Softmax"', 'type: "ArgMax"')
    deploy, weights = model_files(tmp_path, text)
    result = run_caffegen("convert", deploy, weights, "-o", tmp_path / "net.onnx", "--caffe", caffe)
    assert_one_line_error(result, "cannot convert to ONNX", "'prob' (ArgMax)")
    assert sorted(tmp_path.iterdir()) == sorted([deploy, weights])


def k_ignored(graph, io):
    """An LRN that adds 1 where Caffe adds k (OpenCV DNN's mistake)."""
    changed = type(io.layer)()
    changed.CopyFrom(io.layer)
    changed.lrn_param.k = 1
    lrn(graph, dataclasses.replace(io, layer=changed))


def test_a_difference_names_the_first_layer_that_differs(caffe, tmp_path, monkeypatch):
    deploy, weights = model_files(tmp_path, LEGACY_NET)
    monkeypatch.setitem(converters.CONVERTERS, "LRN", k_ignored)
    result = run_caffegen("convert", deploy, weights, "-o", tmp_path / "net.onnx", "--caffe", caffe)
    assert_one_line_error(result, "ONNX Runtime DIFFERS from Caffe first at layer 'norm1' (LRN), blob 'norm1'",
                          "on values of scale", "nothing written")
    assert not (tmp_path / "net.onnx").exists()


def test_fold_bn_folds_what_it_can_and_agrees_with_caffe(caffe, tmp_path):
    deploy, weights = model_files(tmp_path, BN_NET)
    plain = run_caffegen("convert", deploy, weights, "-o", tmp_path / "plain.onnx", "--caffe", caffe)
    assert plain.returncode == 0, plain.stderr
    result = run_caffegen("convert", deploy, weights, "-o", tmp_path / "folded.onnx", "--fold-bn", "--caffe", caffe)
    assert result.returncode == 0, result.stderr
    assert "2 BatchNorm folded" in result.stdout and "agrees with Caffe" in result.stdout
    assert "BatchNorm 'bn2' left unfolded: 'conv2' is read by other layers too" in result.stderr
    assert "folded 2 BatchNorm: real Caffe runs the folded net as the original, largest difference 'fc'" \
        in result.stderr
    folded, unfolded = (onnx.load(tmp_path / name) for name in ("folded.onnx", "plain.onnx"))
    ops = [node.op_type for node in folded.graph.node]
    assert ops.count("BatchNormalization") == 1 and "Mul" not in ops
    assert [node.op_type for node in unfolded.graph.node].count("BatchNormalization") == 3
    feed = random_inputs({"data": (2, 3, 8, 8)})
    np.testing.assert_allclose(onnxruntime_forward(folded.SerializeToString(), feed, ["fc"])["fc"],
                               onnxruntime_forward(unfolded.SerializeToString(), feed, ["fc"])["fc"], rtol=1e-4,
                               atol=1e-5)


def test_fold_bn_without_a_batchnorm_converts_the_net_as_it_is(caffe, tmp_path):
    deploy, weights = model_files(tmp_path, LEGACY_NET)
    result = run_caffegen("convert", deploy, weights, "-o", tmp_path / "net.onnx", "--fold-bn", "--caffe", caffe)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "no BatchNorm to fold: converting the net as it is"
    assert "folded" not in result.stdout


def test_batch_statistics_at_test_time_are_one_line(caffe, tmp_path):
    text = BN_NET.replace('top: "bn2" }', 'top: "bn2" batch_norm_param { use_global_stats: false } }')
    deploy, weights = model_files(tmp_path, text)
    result = run_caffegen("convert", deploy, weights, "-o", tmp_path / "net.onnx", "--caffe", caffe)
    assert_one_line_error(result, "cannot convert layer 'bn2' (BatchNorm) to ONNX: use_global_stats: false")
    assert not (tmp_path / "net.onnx").exists()


def test_missing_weights_are_one_line(caffe, tmp_path):
    deploy, _ = model_files(tmp_path, LEGACY_NET)
    _, other = model_files(tmp_path, BN_NET, "other")
    result = run_caffegen("convert", deploy, other, "-o", tmp_path / "net.onnx", "--caffe", caffe)
    assert_one_line_error(result, "layer 'conv1' (Convolution)")
    assert not (tmp_path / "net.onnx").exists()


def test_a_net_without_inputs_is_refused_in_one_line(caffe, tmp_path):
    result = run_caffegen("convert", DIGITS / "train_val.prototxt", DIGITS / "digits.caffemodel", "-o",
                          tmp_path / "net.onnx", "--caffe", caffe)
    assert_one_line_error(result, "no Input layer and no input fields: convert takes a deploy net")
    assert not (tmp_path / "net.onnx").exists()


@pytest.mark.parametrize("args", [(), ("--batch", 0)])
def test_usage_errors_are_one_line(tmp_path, args):
    result = run_caffegen("convert", tmp_path / "none.prototxt", tmp_path / "none.caffemodel", *args)
    assert_one_line_error(result)
