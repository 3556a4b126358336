"""Reading nets: the zoo, legacy V1 upgrades, and every kind of bad input."""

import os
import stat

import pytest
from conftest import NOT_BVLC_NETS, ZOO, assert_one_line_error, is_solver, zoo_files, zoo_nets
from google.protobuf import text_format

from caffegen.errors import CaffegenError
from caffegen.io.files import built_beside, temp_folder, write_atomic
from caffegen.io.prototxt import read_net, to_text
from caffegen.io.schema import BVLC


@pytest.mark.zoo
class TestZoo:
    @pytest.mark.parametrize("name", zoo_nets())
    def test_loads_and_round_trips(self, name):
        net = read_net(ZOO / name).net
        assert len(net.layer) > 0
        again = text_format.Parse(to_text(net), BVLC.NetParameter())
        assert again == net
        assert to_text(again) == to_text(net)

    @pytest.mark.parametrize("name", sorted(NOT_BVLC_NETS))
    def test_non_bvlc_files_are_named_in_the_error(self, name):
        with pytest.raises(CaffegenError) as error:
            read_net(ZOO / name)
        assert NOT_BVLC_NETS[name] in str(error.value)
        assert str(ZOO / name) in str(error.value)

    @pytest.mark.parametrize("name", [n for n in zoo_files() if is_solver(n)])
    def test_solvers_are_recognised(self, name):
        with pytest.raises(CaffegenError, match="solver definition"):
            read_net(ZOO / name)

    def test_fork_error_names_line_column_and_suggests_proto(self):
        with pytest.raises(CaffegenError) as error:
            read_net(ZOO / "densenet/DenseNet_121.prototxt")
        assert (error.value.line, error.value.column) == (54, 5)
        assert "--proto" in str(error.value)


class TestV1Upgrade:
    @pytest.mark.zoo
    def test_types_params_and_rates(self):
        loaded = read_net(ZOO / "v1_2015_bvlc_reference_caffenet/train_val.prototxt")
        assert loaded.upgraded_from == "V1"
        net = loaded.net
        assert not net.layers
        conv1 = next(layer for layer in net.layer if layer.name == "conv1")
        assert conv1.type == "Convolution"
        assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
        assert conv1.convolution_param.num_output == 96
        types = {layer.type for layer in net.layer}
        assert {"Data", "ReLU", "LRN", "Pooling", "InnerProduct", "Dropout", "SoftmaxWithLoss", "Accuracy"} <= types
        data = [layer for layer in net.layer if layer.type == "Data"]
        assert [len(layer.include) for layer in data] == [1, 1]
        assert data[0].transform_param.crop_size == 227

    def test_deprecated_transform_fields_move_to_transform_param(self):
        text = 'layers { name: "d" type: IMAGE_DATA top: "data" top: "label" ' \
               'image_data_param { source: "l.txt" batch_size: 2 crop_size: 7 mirror: true scale: 0.5 } }'
        v1 = text_format.Parse(text, BVLC.NetParameter())
        from caffegen.io.upgrade import upgrade_v1_net
        layer = upgrade_v1_net(v1, BVLC).layer[0]
        assert layer.type == "ImageData"
        assert (layer.transform_param.crop_size, layer.transform_param.mirror, layer.transform_param.scale) == (7, True, 0.5)
        assert not layer.image_data_param.HasField("crop_size")

    def test_shared_param_names(self, tmp_path):
        path = tmp_path / "shared.prototxt"
        path.write_text('layers { name: "a" type: INNER_PRODUCT bottom: "x" top: "y" param: "w" param: "b" '
                        'blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 inner_product_param { num_output: 2 } }\n'
                        'input: "x"')
        layer = read_net(path).net.layer[0]
        assert [(p.name, p.lr_mult, p.decay_mult) for p in layer.param] == [("w", 1, 1), ("b", 2, 0)]

    def test_v0_is_refused_with_advice(self, tmp_path):
        path = tmp_path / "v0.prototxt"
        path.write_text('layers { layer { name: "conv1" type: "conv" } bottom: "data" top: "conv1" }')
        with pytest.raises(CaffegenError, match="V0 format"):
            read_net(path)


class TestBadInput:
    def test_missing_file(self, tmp_path):
        with pytest.raises(CaffegenError, match="no such file"):
            read_net(tmp_path / "nope.prototxt")

    def test_directory(self, tmp_path):
        with pytest.raises(CaffegenError, match="is a directory"):
            read_net(tmp_path)

    def test_empty(self, tmp_path):
        (tmp_path / "e.prototxt").write_text("  \n")
        with pytest.raises(CaffegenError, match="empty file"):
            read_net(tmp_path / "e.prototxt")

    def test_binary_junk(self, tmp_path):
        (tmp_path / "j.prototxt").write_bytes(bytes(range(256)))
        with pytest.raises(CaffegenError, match="binary data"):
            read_net(tmp_path / "j.prototxt")

    def test_syntax_error_has_line_and_column(self, tmp_path):
        path = tmp_path / "s.prototxt"
        path.write_text('name: "x"\nlayer {\n  name: "a"\n  type: \n}\n')
        with pytest.raises(CaffegenError) as error:
            read_net(path)
        assert str(error.value).startswith(f"{path}:5:1: ")

    @pytest.mark.zoo
    def test_label_map(self):
        with pytest.raises(CaffegenError, match="label map"):
            read_net(ZOO / "ssd_labelmap/labelmap_voc.prototxt")

    def test_no_layers(self, tmp_path):
        (tmp_path / "n.prototxt").write_text('name: "nothing"\n')
        with pytest.raises(CaffegenError, match="no layers"):
            read_net(tmp_path / "n.prototxt")

    @pytest.mark.parametrize("text", ['layer { name: "a" ', "# only a comment\n\tname: 'x'\n layer {} }"])
    def test_unbalanced(self, tmp_path, text):
        (tmp_path / "u.prototxt").write_text(text)
        with pytest.raises(CaffegenError, match=r"u\.prototxt:\d+:\d+: "):
            read_net(tmp_path / "u.prototxt")

    @pytest.mark.parametrize("text", [
        'name: "deep"\n' + "layer { " * 400 + "}" * 400,
        'name: "deep"\nlayer { name: "a" type: "ReLU" ' + "unknown < " * 400 + ">" * 400 + " }",
    ], ids=["layers", "unknown-fields"])
    def test_nesting_hundreds_of_levels_deep_is_one_line(self, cli, tmp_path, text):
        path = tmp_path / "deep.prototxt"
        path.write_text(text)
        with pytest.raises(CaffegenError, match=r"deep\.prototxt:2: messages nested more than 100 levels deep"):
            read_net(path)
        assert_one_line_error(cli("inspect", path), str(path), "nested more than 100 levels")

    def test_braces_in_strings_and_comments_are_not_nesting(self, tmp_path):
        path = tmp_path / "braces.prototxt"
        path.write_text('name: "' + "{" * 200 + '" # ' + "{" * 200 + "\n"
                        "layer { name: '{{' type: \"ReLU\" bottom: \"x\" top: \"x\" }\n")
        assert read_net(path).net.name == "{" * 200


class TestTextForms:
    def test_tabs_comments_and_no_trailing_newline(self, tmp_path):
        path = tmp_path / "t.prototxt"
        path.write_text('# a net\nname:\t"t"  # named\ninput: "data"\ninput_dim: 1\ninput_dim: 3\n'
                        'input_dim: 4\ninput_dim: 4\nlayer {\n\tname: "ip"\ttype: "InnerProduct"\n'
                        '\tbottom: "data" top: "ip" inner_product_param { num_output: 2 } }')
        net = read_net(path).net
        assert list(net.input_dim) == [1, 3, 4, 4]
        assert net.layer[0].inner_product_param.num_output == 2

    def test_write_atomic_replaces_whole_file(self, tmp_path):
        target = tmp_path / "out.prototxt"
        target.write_text("old")
        write_atomic(target, "new text")
        assert target.read_text() == "new text"
        assert [p.name for p in tmp_path.iterdir()] == ["out.prototxt"]

    def test_atomic_writes_get_the_permissions_of_the_umask(self, tmp_path):
        previous = os.umask(0o027)
        try:
            write_atomic(tmp_path / "out.prototxt", "text")
            with built_beside(tmp_path / "folder") as folder:
                (folder / "inside").write_text("text")
        finally:
            os.umask(previous)
        assert stat.S_IMODE((tmp_path / "out.prototxt").stat().st_mode) == 0o640
        assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o750

    @pytest.mark.parametrize("make", [lambda parent: temp_folder(parent), lambda parent: built_beside(parent / "run")])
    def test_a_signal_as_a_temporary_folder_is_made_leaves_nothing(self, tmp_path, monkeypatch, make):
        """SIGTERM raises wherever Python is: as the folder is made, its removal must already be arranged."""
        made = os.mkdir

        def made_then_interrupted(path, *args, **kwargs):
            made(path, *args, **kwargs)
            raise KeyboardInterrupt  # as the command line's SIGTERM handler raises, a BaseException
        monkeypatch.setattr(os, "mkdir", made_then_interrupted)
        with pytest.raises(KeyboardInterrupt), make(tmp_path):
            pass
        assert list(tmp_path.iterdir()) == []
