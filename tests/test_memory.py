"""The memory estimate: Caffe's accounting of blobs, gradients, buffers and solvers, and real Caffe's peaks.

``TestAgainstCaffe`` runs real Caffe 1.0 on five zoo nets at two batch sizes each (what
``bench/memory_estimate.py`` does on more) and holds every estimate within 25 % of the measured peak.
"""

import sys

import pytest
from conftest import ROOT

from caffegen.io.prototxt import parse_net
from caffegen.net.memory import (
    BASELINE_BYTES,
    FLOAT_BYTES,
    extraction_memory,
    largest_batch,
    message_copy,
    net_memory,
    training_memory,
    with_batch,
)
from caffegen.net.memory import testing_memory as caffe_test_memory
from caffegen.net.netview import TEST, TRAIN, NetView

sys.path.insert(0, str(ROOT / "bench"))
import memory_estimate

DATA = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } } }\n'
LABEL = 'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }\n'
IMAGE = 4 * 3 * 8 * 8  # elements of the data blob


def net(body, data=DATA):
    return parse_net(data + body, "test.prototxt").net


def conv(name, bottom, top=None, kernel=1, outputs=3, frozen=False, extra=""):
    rates = "param { lr_mult: 0 } param { lr_mult: 0 }" if frozen else ""
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}" {rates} '
            f'convolution_param {{ num_output: {outputs} kernel_size: {kernel} pad: {kernel // 2} {extra} }} }}\n')


def layer(name, kind, bottom, top=None, extra=""):
    bottoms = " ".join(f'bottom: "{blob}"' for blob in bottom.split(","))
    return f'layer {{ name: "{name}" type: "{kind}" {bottoms} top: "{top or name}" {extra} }}\n'


LOSS = 'layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "target" top: "loss" }\n'
TARGET = 'layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } } }\n'


class TestBlobs:
    def test_in_place_layers_write_into_their_bottom(self):
        apart = net_memory(net(conv("conv", "data") + layer("relu", "ReLU", "conv", "relu")), TEST)
        in_place = net_memory(net(conv("conv", "data") + layer("relu", "ReLU", "conv", "conv")), TEST)
        assert apart.parts["blobs"] - in_place.parts["blobs"] == FLOAT_BYTES * IMAGE

    def test_flatten_and_reshape_share_their_bottom(self):
        flat = net_memory(net(conv("conv", "data") + layer("flat", "Flatten", "conv")), TEST)
        alone = net_memory(net(conv("conv", "data")), TEST)
        assert flat.parts["blobs"] == alone.parts["blobs"] == FLOAT_BYTES * 2 * IMAGE

    def test_the_batch_scales_the_blobs_not_the_parameters(self):
        body = net(conv("conv", "data", kernel=3))
        small, large = (net_memory(body, TEST, batch) for batch in (2, 8))
        assert large.parts["blobs"] == 4 * small.parts["blobs"]
        assert large.parts["params"] == small.parts["params"] == FLOAT_BYTES * (3 * 3 * 3 * 3 + 3)
        assert large.parts["im2col"] == small.parts["im2col"], "Caffe 1.0's col buffer holds one image"

    def test_with_batch_sets_every_kind_of_input(self):
        deprecated = parse_net('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                               + conv("conv", "data"), "deploy.prototxt").net
        assert with_batch(deprecated, TEST, 5).input_dim[0] == 5
        dummy = net(conv("conv", "data"), 'layer { name: "data" type: "DummyData" top: "data" '
                                          'dummy_data_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n')
        assert net_memory(dummy, TEST, 6).parts["blobs"] == FLOAT_BYTES * 2 * 6 * 3 * 8 * 8

    def test_prefetching_layers_hold_their_batches_not_their_tops(self):
        images = net(conv("conv", "data"), 'layer { name: "data" type: "ImageData" top: "data" top: "label" '
                                           'image_data_param { batch_size: 4 new_height: 8 new_width: 8 } }\n')
        memory = net_memory(images, TEST)
        assert memory.parts["prefetch"] == FLOAT_BYTES * 4 * (IMAGE + 4)
        assert memory.parts["blobs"] == FLOAT_BYTES * IMAGE, "only the convolution's output"


class TestBuffers:
    def test_im2col_buffer_per_layer_none_for_1x1(self):
        body = net(conv("a", "data", kernel=3) + conv("b", "a", kernel=3) + conv("c", "b", kernel=1))
        columns = 3 * 3 * 3 * 8 * 8  # kernel_dim × output spatial size, one image
        assert net_memory(body, TEST).parts["im2col"] == FLOAT_BYTES * 2 * columns

    def test_batch_norm_keeps_two_copies_three_when_learning_in_place(self):
        bn = layer("bn", "BatchNorm", "conv", "conv")
        testing = net_memory(net(conv("conv", "data") + bn), TEST)
        assert testing.parts["buffers"] == FLOAT_BYTES * 2 * IMAGE
        training = net_memory(net(TARGET + conv("conv", "data") + bn + layer("out", "ReLU", "conv") + LOSS), TRAIN)
        assert training.parts["buffers"] == FLOAT_BYTES * 3 * IMAGE

    def test_dropout_masks_in_training_only(self):
        body = net(TARGET + layer("out", "Dropout", "data") + LOSS)
        assert net_memory(body, TRAIN).parts["buffers"] - net_memory(body, TEST).parts["buffers"] == \
            FLOAT_BYTES * IMAGE

    def test_max_pooling_keeps_its_mask(self):
        pool = layer("pool", "Pooling", "data", extra="pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
        average = layer("pool", "Pooling", "data", extra="pooling_param { pool: AVE kernel_size: 2 stride: 2 }")
        assert net_memory(net(pool), TEST).parts["buffers"] == FLOAT_BYTES * IMAGE // 4
        assert net_memory(net(average), TEST).parts["buffers"] == 0


class TestGradients:
    def test_testing_touches_no_gradient(self):
        body = net(TARGET + conv("out", "data") + LOSS)
        assert net_memory(body, TEST).parts["gradients"] == 0
        assert net_memory(body, TEST).parts.get("param_gradients") == 0

    def test_a_frozen_trunk_gets_no_gradients(self):
        trunk = conv("a", "data", frozen=True) + conv("b", "a", frozen=True)
        frozen = net_memory(net(TARGET + trunk + conv("out", "b") + LOSS), TRAIN)
        learning = net_memory(net(TARGET + conv("a", "data") + conv("b", "a") + conv("out", "b") + LOSS), TRAIN)
        # The trainable head's output and the scalar loss have gradients; the loss's bottom 'target' none.
        assert frozen.parts["gradients"] == FLOAT_BYTES * (IMAGE + 1)
        assert learning.parts["gradients"] == FLOAT_BYTES * (3 * IMAGE + 1)

    def test_a_blob_read_twice_gets_a_gradient_per_reader(self):
        body = conv("a", "data") + conv("b", "a") + conv("c", "a") + layer("out", "Eltwise", "b,c") + LOSS
        memory = net_memory(net(TARGET + body), TRAIN)
        # a, its two Split outputs, b, c and out: six gradients of the batch each, and the loss's.
        assert memory.parts["gradients"] == FLOAT_BYTES * (6 * IMAGE + 1)
        # data, target, a, b, c, out and the loss: the Splits' outputs are a's data.
        assert memory.parts["blobs"] == FLOAT_BYTES * (6 * IMAGE + 1)

    def test_a_batch_norm_without_param_specs_needs_backward(self):
        bn = layer("bn", "BatchNorm", "a", "a", 'batch_norm_param { use_global_stats: true }')
        body = TARGET + conv("a", "data", frozen=True) + bn + conv("out", "a", frozen=True) + LOSS
        assert net_memory(net(body), TRAIN).parts["gradients"] > 0, "Net::Init reads lr_mult 1 by default"


class TestProcesses:
    def test_solvers_keep_their_history(self):
        body = net(TARGET + conv("out", "data") + LOSS)
        sgd, adam = (training_memory(body, kind) for kind in ("SGD", "Adam"))
        params = sgd.parts["params"]
        assert (sgd.parts["history"], adam.parts["history"]) == (params, 3 * params)
        assert sgd.parts["param_gradients"] == params

    def test_loading_the_weights_can_be_the_peak(self):
        big = layer("out", "InnerProduct", "data", extra="inner_product_param { num_output: 20000 }")
        memory = caffe_test_memory(net(big))
        params = memory.parts["params"]
        assert memory.peak == BASELINE_BYTES + params + FLOAT_BYTES * message_copy([IMAGE // 4 * 20000, 20000])
        assert memory.peak > memory.resident

    def test_a_growing_message_holds_the_next_power_of_two(self):
        assert message_copy([3, 5]) == 3 + 8
        assert message_copy([1 << 20]) == 1 << 20
        assert message_copy([100, (1 << 20) + 1, 10]) == 100 + (1 << 21)

    def test_extraction_copies_what_it_writes(self):
        body = net(conv("conv", "data", kernel=3) + LABEL)
        layers = NetView(body, TEST).layers
        memory = extraction_memory(layers, ("conv", "label"), 4)
        assert memory.parts["buffers"] == FLOAT_BYTES * (IMAGE + 4)
        assert extraction_memory(layers, ("conv", "label"), 8).parts["blobs"] == 2 * memory.parts["blobs"]

    def test_largest_batch_fits_the_budget(self):
        body = net(conv("conv", "data", kernel=3))
        def peak(batch):
            return caffe_test_memory(body, batch).peak

        batch = largest_batch(peak, peak(37) + 1, 1000)
        assert batch == 37 and peak(38) > peak(37)
        assert largest_batch(peak, peak(1) - 1, 1000) is None


# Small batches keep the whole check near a minute on two cores; the bench runs larger ones.
VALIDATED = {"resnet50": (2, 4), "caffenet": (1, 4), "googlenet": (1, 4), "squeezenet": (1, 4), "mobilenet": (1, 4)}


@pytest.mark.zoo
class TestAgainstCaffe:
    @pytest.fixture(scope="class")
    @classmethod
    def rows(cls, caffe, tmp_path_factory):
        folder = tmp_path_factory.mktemp("memory")
        rows = []
        for name, batches in VALIDATED.items():
            commands = ("test", "train+test") + (("extract",) if name == "squeezenet" else ())
            rows += memory_estimate.measure_net(caffe, name, batches, commands, folder / name)
        print("\n" + "\n".join(memory_estimate.table(rows)))
        return rows

    def test_every_estimate_is_within_a_quarter_of_the_real_peak(self, rows):
        table = "\n".join(memory_estimate.table(rows))
        assert len({row.net for row in rows}) == 5 and all(abs(row.error) <= 25 for row in rows), table
