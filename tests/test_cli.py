"""The real command line: piping, output files, reports and one-line errors."""

import pytest
from conftest import ZOO, assert_one_line_error
from google.protobuf import text_format

from caffegen.io.prototxt import read_net
from caffegen.io.schema import BVLC

ALEXNET = ZOO / "bvlc_alexnet/train_val.prototxt"


def parse(text):
    return text_format.Parse(text, BVLC.NetParameter())


def layer(net, name):
    return next(layer for layer in net.layer if layer.name == name)


class TestFreezeHeadLint:
    @pytest.mark.zoo
    def test_pipeline_through_files(self, cli, tmp_path):
        frozen, tuned = tmp_path / "frozen.prototxt", tmp_path / "ft.prototxt"
        result = cli("freeze", "--upto", "conv5", ALEXNET, "-o", frozen)
        assert result.returncode == 0, result.stderr
        assert "froze 5 layers with learnable parameters (10 parameter blobs)" in result.stderr
        result = cli("head", frozen, "--num-output", "5", "-o", tuned)
        assert result.returncode == 0, result.stderr
        assert "retargeted classifier 'fc8' (1000 outputs) as 'fc8_ft' with 5 outputs" in result.stderr
        net = read_net(tuned).net
        assert all(s.lr_mult == 0 for s in layer(net, "conv5").param)
        assert layer(net, "fc8_ft").inner_product_param.num_output == 5
        assert cli("lint", tuned).returncode == 0

    @pytest.mark.zoo
    def test_stdout_pipes(self, cli, tmp_path):
        frozen = cli("freeze", "--from", "fc6", ALEXNET)
        assert frozen.returncode == 0
        net = parse(frozen.stdout)
        assert [s.lr_mult for s in layer(net, "conv5").param] == [0, 0]
        assert [s.lr_mult for s in layer(net, "fc6").param] == [1, 2]

    @pytest.mark.zoo
    def test_lint_findings_exit_1(self, cli, tmp_path):
        labels = tmp_path / "labels.txt"
        labels.write_text("a\nb\nc\n")
        result = cli("lint", ALEXNET, "--labels", labels)
        assert result.returncode == 1
        assert result.stdout.strip() == (f"{ALEXNET}: layer 'fc8': classifier has num_output 1000 but the labels "
                                         "have 3 classes; fix: caffegen head --num-output 3 (renames it so Caffe "
                                         "initialises it fresh)")

    @pytest.mark.zoo
    def test_v1_upgrade_is_announced(self, cli):
        result = cli("freeze", "--upto", "conv1", ZOO / "v1_2015_mnist/lenet_train_test.prototxt")
        assert result.returncode == 0
        assert "upgraded legacy V1 net" in result.stderr
        assert "layers {" not in result.stdout and "layer {" in result.stdout

    @pytest.mark.parametrize("command", ["freeze", "head", "lint", "install-caffe"])
    def test_help(self, cli, command):
        result = cli(command, "--help")
        assert result.returncode == 0 and "Usage: caffegen " + command in result.stdout


class TestBadInput:
    @pytest.mark.zoo
    def test_unknown_layer_suggests_and_writes_nothing(self, cli, tmp_path):
        out = tmp_path / "out.prototxt"
        result = cli("freeze", "--upto", "conv6", ALEXNET, "-o", out)
        assert_one_line_error(result, "layer 'conv6' not found", "did you mean 'conv5'")
        assert not out.exists()

    @pytest.mark.zoo
    def test_test_only_layer(self, cli):
        assert_one_line_error(cli("freeze", "--upto", "accuracy", ALEXNET), "only in the TEST phase")

    def test_missing_file(self, cli, tmp_path):
        assert_one_line_error(cli("freeze", "--upto", "x", tmp_path / "no.prototxt"), "no such file")

    def test_an_error_naming_line_breaks_stays_one_line(self, cli, tmp_path):
        result = cli("lint", tmp_path / "two\nlines\r.prototxt")
        assert_one_line_error(result, "two\\nlines\\r.prototxt: no such file")

    def test_syntax_error(self, cli, tmp_path):
        bad = tmp_path / "bad.prototxt"
        bad.write_text("layer {\n  name: 'a'\n  type:: 3\n}\n")
        assert_one_line_error(cli("lint", bad), f"{bad}:3:")

    @pytest.mark.zoo
    def test_solver_given_as_net(self, cli):
        assert_one_line_error(cli("lint", ZOO / "bvlc_alexnet/solver.prototxt"), "solver definition")

    @pytest.mark.zoo
    def test_input_is_never_overwritten_without_in_place(self, cli, tmp_path):
        net = tmp_path / "net.prototxt"
        net.write_text(ALEXNET.read_text())
        assert_one_line_error(cli("head", net, "--num-output", "3", "-o", net), "--in-place")
        assert net.read_text() == ALEXNET.read_text()
        assert cli("head", net, "--num-output", "3", "--in-place").returncode == 0
        assert layer(read_net(net).net, "fc8_ft").inner_product_param.num_output == 3

    @pytest.mark.zoo
    def test_freeze_needs_exactly_one_point(self, cli):
        assert_one_line_error(cli("freeze", ALEXNET), "--upto")
