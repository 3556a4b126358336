"""The small edge helpers: Caffe lists, text tables, templates."""

import pytest

from caffegen.errors import CaffegenError
from caffegen.io.lists import ListLine, parse_list, read_list
from caffegen.io.tables import text_table
from caffegen.io.templates import render_template
from caffegen.net.lint import count_classes


class TestLists:
    def test_split_on_the_last_space_as_caffe_does(self):
        lines = parse_list("my photos/cat 1.jpg 3\n\n  \nplain.png 0\r\nnolabel\n-1.jpg -1\n")
        assert lines == [ListLine(1, "my photos/cat 1.jpg", "3"), ListLine(4, "plain.png", "0"),
                         ListLine(5, "", "nolabel"), ListLine(6, "-1.jpg", "-1")]
        assert [line.label_number for line in lines] == [3, 0, None, -1]
        assert lines[0].text() == "my photos/cat 1.jpg 3\n"

    def test_missing_and_unreadable_files(self, tmp_path):
        with pytest.raises(CaffegenError, match="no such label file"):
            read_list(tmp_path / "none.txt", "label")
        (tmp_path / "bad.txt").write_bytes(b"\xff\xfe 1\n")
        with pytest.raises(CaffegenError, match="cannot read list file"):
            read_list(tmp_path / "bad.txt")

    def test_lint_counts_classes_of_lists_with_spaces_in_paths(self, tmp_path):
        labels = tmp_path / "train.txt"
        labels.write_text("a b/c d.jpg 0\na b/e\tf.jpg 4\n")
        assert count_classes(labels) == 5
        labels.write_text("golden retriever\ntabby cat\nsiamese\n")
        assert count_classes(labels) == 3


def test_text_table_aligns_columns():
    assert text_table(("a", "long header"), [("wide cell", 1), ("x", 22.5)]) == [
        "a          long header", "wide cell  1", "x          22.5"]


def test_templates_render_strictly_with_the_version():
    from caffegen import __version__
    text = render_template("stages.sh.j2", stages=["stage1", "stage2"])
    assert __version__ in text and "stage2" in text
    bat = render_template("train.bat.j2", "\r\n", arguments="train", num_classes=2)
    assert "\r\n" in bat and "\n" not in bat.replace("\r\n", "")
    with pytest.raises(Exception, match="undefined"):
        render_template("stages.sh.j2")
