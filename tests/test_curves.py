"""Curves CSV and PNG from the records of real Caffe 1.0 logs (tests/data/logs)."""

import csv
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from caffegen.errors import CaffegenError
from caffegen.run.caffelog import parse_log
from caffegen.run.curves import curve_columns, plot_curves, write_curves_csv

LOGS = Path(__file__).parent / "data" / "logs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def records(name):
    return parse_log((LOGS / f"{name}.log").read_text().splitlines())[0].records


def read_csv(path):
    with open(path, newline="") as rows:
        return list(csv.DictReader(rows))


def plotted_lines(monkeypatch):
    """The lines the plot draws, as {label: (iterations, values)}, filled in as matplotlib's Axes.plot is called."""
    from matplotlib.axes import Axes

    lines, plot = {}, Axes.plot

    def recording_plot(axes, x, y, *args, **kwargs):
        lines[kwargs.get("label")] = (list(x), list(y))
        return plot(axes, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", recording_plot)
    return lines


def observe_renames(monkeypatch, fail=False):
    """Record each os.replace or os.rename as (source, target, source bytes, target bytes at that moment).

    With ``fail``, each one raises as a full disk would, after being recorded.
    """
    calls = []

    def observer(rename):
        def observed(source, target, *args, **kwargs):
            target_bytes = Path(target).read_bytes() if Path(target).exists() else None
            calls.append((Path(source), Path(target), Path(source).read_bytes(), target_bytes))
            if fail:
                raise OSError(28, "No space left on device")
            return rename(source, target, *args, **kwargs)
        return observed

    monkeypatch.setattr(os, "replace", observer(os.replace))
    monkeypatch.setattr(os, "rename", observer(os.rename))
    return calls


def png_size(path):
    """(width, height) from the IHDR chunk of a PNG file, after checking its signature."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


class TestCsv:
    def test_round_trip(self, tmp_path):
        original = records("train_ok")
        write_curves_csv(original, tmp_path / "curves.csv")
        rows = read_csv(tmp_path / "curves.csv")
        assert len(rows) == len(original)
        for row, record in zip(rows, original):
            assert {key: float(value) for key, value in row.items() if value} == record
            assert all(row[key] == "" for key in row if key not in record)

    def test_columns_in_a_stable_order(self, tmp_path):
        write_curves_csv(records("outputs"), tmp_path / "curves.csv")
        header = (tmp_path / "curves.csv").read_text().splitlines()[0].split(",")
        assert header == ["iteration", "loss", "lr",
                          "train/accuracy", "train/loss", "train/per_class", "train/per_class[1]", "train/per_class[2]",
                          "test/accuracy", "test/loss", "test/per_class", "test/per_class[1]", "test/per_class[2]",
                          "test1/accuracy", "test1/loss", "test1/per_class", "test1/per_class[1]",
                          "test1/per_class[2]"]
        assert curve_columns(list(reversed(records("outputs")))) == header

    def test_nan_survives_the_round_trip(self, tmp_path):
        write_curves_csv(records("diverge_nan"), tmp_path / "curves.csv")
        assert math.isnan(float(read_csv(tmp_path / "curves.csv")[-1]["loss"]))

    def test_written_atomically_over_an_old_file(self, tmp_path, monkeypatch):
        target = tmp_path / "curves.csv"
        target.write_text("old\n")
        calls = observe_renames(monkeypatch)
        write_curves_csv(records("train_ok"), target)
        assert target.read_text().startswith("iteration,loss,lr,")
        assert [path.name for path in tmp_path.iterdir()] == ["curves.csv"]
        # The whole new file was written beside the old one, which stayed intact until one rename swapped them.
        assert len(calls) == 1, f"the new file should be renamed into place once, not {len(calls)} times"
        [(source, renamed_to, new_bytes, old_bytes)] = calls
        assert renamed_to == target and source.parent == tmp_path and source != target
        assert old_bytes == b"old\n" and new_bytes == target.read_bytes()

    def test_a_failed_write_leaves_the_old_file_and_no_temporary(self, tmp_path, monkeypatch):
        target = tmp_path / "curves.csv"
        target.write_text("old\n")
        calls = observe_renames(monkeypatch, fail=True)
        with pytest.raises(CaffegenError, match="curves.csv: cannot write here: No space left on device"):
            write_curves_csv(records("train_ok"), target)
        assert len(calls) == 1 and calls[0][2].startswith(b"iteration,loss,lr,")
        assert target.read_text() == "old\n"
        assert [path.name for path in tmp_path.iterdir()] == ["curves.csv"]


class TestPlot:
    def test_two_panels_with_test_accuracy(self, tmp_path):
        plot_curves(records("train_ok"), tmp_path / "curves.png", stage_boundaries=[30])
        assert png_size(tmp_path / "curves.png") == (1000, 650)
        assert [path.name for path in tmp_path.iterdir()] == ["curves.png"]

    def test_one_panel_without_test_outputs(self, tmp_path):
        plot_curves(records("stuck_87"), tmp_path / "curves.png")
        assert png_size(tmp_path / "curves.png") == (1000, 450)

    def test_stage_boundaries_are_drawn(self, tmp_path):
        plot_curves(records("train_ok"), tmp_path / "plain.png")
        plot_curves(records("train_ok"), tmp_path / "staged.png", stage_boundaries=[30])
        assert (tmp_path / "plain.png").read_bytes() != (tmp_path / "staged.png").read_bytes()

    def test_nan_losses_are_left_out(self, tmp_path, monkeypatch):
        lines = plotted_lines(monkeypatch)
        plot_curves(records("diverge_nan"), tmp_path / "curves.png")
        assert png_size(tmp_path / "curves.png") == (1000, 650)
        # diverge_nan.log: the training loss is finite up to iteration 6, then nan; the test loss is nan at 20.
        assert lines == {
            "train loss": ([0, 2, 4, 6], [1.03775, 65.5024, 43.6683, 65.5024]),
            "test loss": ([0], [1.23053]),
            "test accuracy": ([0, 20], [0.25, 1.0]),
        }
        assert all(math.isfinite(value) for _, values in lines.values() for value in values)

    def test_output_names_and_a_title_with_dollar_signs_are_drawn_as_written(self, tmp_path):
        named = [{("test/$x_$" if key == "test/accuracy" else key): value for key, value in record.items()}
                 for record in records("train_ok")]
        plot_curves(named, tmp_path / "curves.png", title="run $\\frac{$")
        assert png_size(tmp_path / "curves.png") == (1000, 650)

    def test_matplotlib_is_imported_only_to_plot(self):
        code = "import sys, caffegen.run.curves; print('matplotlib' in sys.modules)"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "False"
