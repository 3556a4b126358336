"""Nets of forked Caffes: a clear error without their schema, full support with --proto."""

import pytest
from conftest import ZOO, assert_one_line_error
from fork_schemas import ceil_mode_proto

from caffegen.errors import CaffegenError
from caffegen.io.prototxt import read_net, to_text
from caffegen.io.schema import load_fork_schema
from caffegen.net.freeze import freeze
from caffegen.net.head import retarget_head

pytestmark = pytest.mark.zoo

DENSENET = ZOO / "densenet/DenseNet_121.prototxt"


@pytest.fixture(scope="module")
def fork_proto(tmp_path_factory):
    """A fork-style schema: BVLC's caffe.proto with the fields DenseNet's Caffe adds to PoolingParameter."""
    return ceil_mode_proto(tmp_path_factory.mktemp("fork") / "caffe.proto")


def test_without_the_fork_schema_the_error_points_to_proto():
    with pytest.raises(CaffegenError, match=r"DenseNet_121.prototxt:54:5: .*ceil_mode.*--proto"):
        read_net(DENSENET)


def test_fork_schema_reads_transforms_and_writes(fork_proto):
    schema = load_fork_schema(fork_proto)
    assert schema.is_fork
    net = read_net(DENSENET, schema).net
    assert not next(layer for layer in net.layer if layer.type == "Pooling").pooling_param.ceil_mode
    report = freeze(net, upto="conv2_1/x1")
    assert "conv1" in report.layers
    retarget_head(net, 4)
    text = to_text(net)
    assert "ceil_mode: false" in text
    assert read_net_text(text, schema, fork_proto.parent) == net


def read_net_text(text, schema, folder):
    path = folder / "again.prototxt"
    path.write_text(text)
    return read_net(path, schema).net


def test_cli_proto_option(cli, fork_proto, tmp_path):
    out = tmp_path / "ft.prototxt"
    result = cli("head", DENSENET, "--num-output", "4", "--proto", fork_proto, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "ceil_mode: false" in out.read_text()
    assert "'fc6' (1000 outputs) as 'fc6_ft'" in result.stderr


def test_broken_fork_schema_is_one_line(cli, tmp_path):
    bad = tmp_path / "caffe.proto"
    bad.write_text('syntax = "proto2";\npackage caffe;\nmessage NetParameter { optional strin name = 1; }\n')
    result = cli("lint", DENSENET, "--proto", bad)
    assert_one_line_error(result, "cannot compile schema")
