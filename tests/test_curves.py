"""Curves CSV and PNG from the records of real Caffe 1.0 logs (tests/data/logs)."""

import csv
import math
import struct
import subprocess
import sys
from pathlib import Path

from caffegen.run.caffelog import parse_log
from caffegen.run.curves import curve_columns, plot_curves, write_curves_csv

LOGS = Path(__file__).parent / "data" / "logs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def records(name):
    return parse_log((LOGS / f"{name}.log").read_text().splitlines())[0].records


def read_csv(path):
    with open(path, newline="") as rows:
        return list(csv.DictReader(rows))


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

    def test_written_atomically_over_an_old_file(self, tmp_path):
        target = tmp_path / "curves.csv"
        target.write_text("old\n")
        write_curves_csv(records("train_ok"), target)
        assert target.read_text().startswith("iteration,loss,lr,")
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

    def test_nan_losses_are_left_out(self, tmp_path):
        plot_curves(records("diverge_nan"), tmp_path / "curves.png")
        assert png_size(tmp_path / "curves.png") == (1000, 650)

    def test_matplotlib_is_imported_only_to_plot(self):
        code = "import sys, caffegen.run.curves; print('matplotlib' in sys.modules)"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "False"
