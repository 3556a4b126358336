"""A sweep's results: each run's result.json gathered into results.csv, a table for the terminal and results.png.

:func:`collect` reads them whenever the runs have ended, here or on Slurm, and says which have not.
"""

import csv
import io
import json
from pathlib import Path

from caffegen.io.files import write_atomic
from caffegen.io.tables import text_table
from caffegen.job.rundir import CURVES_CSV, EVAL_DIR, read_result
from caffegen.run.plots import plain_text
from caffegen.run.report import METRICS
from caffegen.strategies.sweep.plan import load_sweep

TABLE = "results.csv"
PLOT = "results.png"
COLUMNS = ("run", "freeze", "lr", "best_accuracy", "last_accuracy", "mean_class_accuracy", "seconds", "exit_code",
           "status")
NOT_FINISHED = "not finished"


def collect(sweep_dir, runs=None, errors=None):
    """Read each run's result.json; write ``results.csv`` and ``results.png``; return the table's rows."""
    sweep_dir = Path(sweep_dir)
    runs = load_sweep(sweep_dir) if runs is None else runs
    rows = [_row(sweep_dir, run, (errors or {}).get(run.run_dir)) for run in runs]
    write_atomic(sweep_dir / TABLE, _csv_text(rows))
    plot_sweep(rows, [_accuracy_curve(sweep_dir / run.run_dir) for run in runs], sweep_dir / PLOT)
    return rows


def _row(sweep_dir, run, error):
    result, evaluated = read_result(sweep_dir / run.run_dir), sweep_dir / run.run_dir / EVAL_DIR / METRICS
    metrics = json.loads(evaluated.read_text(encoding="utf-8")) if evaluated.is_file() else {}
    return {"run": run.run_dir, "freeze": run.freeze, "lr": run.lr,
            "best_accuracy": result and result.best_accuracy, "last_accuracy": result and result.last_accuracy,
            "mean_class_accuracy": metrics.get("mean_class_accuracy"),
            "seconds": result and result.seconds, "exit_code": result and result.exit_code,
            "status": f"error: {error}" if error else _status(result)}


def _status(result):
    if result is None:
        return NOT_FINISHED
    if result.diagnosis:
        return result.diagnosis
    if result.interrupted:
        return "interrupted"
    return "ok" if result.exit_code == 0 else f"exit {result.exit_code}"


def _csv_text(rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return text.getvalue()


def table_lines(rows):
    """The rows as an aligned text table for the terminal."""
    header = ("run", "freeze", "lr", "best acc", "last acc", "class acc", "time", "exit", "status")
    return text_table(header, [(row["run"], row["freeze"], _number(row["lr"], "g"),
                                _number(row["best_accuracy"], ".4f"), _number(row["last_accuracy"], ".4f"),
                                _number(row["mean_class_accuracy"], ".4f"), _number(row["seconds"], ".1f", " s"),
                                _number(row["exit_code"], "d"), row["status"]) for row in rows])


def _number(value, spec, unit=""):
    return "-" if value is None else f"{value:{spec}}{unit}"


def _accuracy_curve(run_dir):
    """(iterations, validation accuracies) from a run's curves.csv; empty when it has none."""
    path = run_dir / CURVES_CSV
    if not path.is_file():
        return [], []
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        column = next((key for key in reader.fieldnames or () if key.startswith("test/") and key.endswith("accuracy")),
                      None)
        points = [(int(record["iteration"]), float(record[column])) for record in reader if column and record[column]]
    return [i for i, _ in points], [value for _, value in points]


@plain_text
def plot_sweep(rows, curves, path):
    """Draw each run's best validation accuracy as a bar (its mean class accuracy as a mark), and all validation
    curves, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 1.6 + 0.45 * max(len(rows), 6)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    bars, lines = figure.subplots(1, 2, width_ratios=(1, 1.3))
    _draw_bars(bars, rows)
    _draw_curves(lines, rows, curves)
    figure.suptitle("Sweep: validation accuracy per run")
    image = io.BytesIO()
    figure.savefig(image, format="png")
    write_atomic(Path(path), image.getvalue())


def _draw_bars(axis, rows):
    positions = range(len(rows))
    values = [row["best_accuracy"] or 0.0 for row in rows]
    colors = ["tab:blue" if row["status"] == "ok" else "tab:red" for row in rows]
    axis.barh(positions, values, color=colors)
    for position, row, value in zip(positions, rows, values):
        label = f"{value:.3f}" if row["best_accuracy"] is not None else ""
        if row["status"] != "ok":
            label = f"{label}  {row['status']}".strip()
        axis.text(value + 0.01, position, label, va="center", fontsize="small")
    evaluated = [(position, row["mean_class_accuracy"]) for position, row in zip(positions, rows)
                 if row["mean_class_accuracy"] is not None]
    if evaluated:
        axis.scatter([value for _, value in evaluated], [position for position, _ in evaluated], marker="D",
                     color="black", zorder=3, label="mean class accuracy (final model)")
        axis.legend(loc="lower right", fontsize="small")
    axis.set_yticks(list(positions), [row["run"] for row in rows])
    axis.invert_yaxis()
    axis.set_xlim(0, 1.3)
    axis.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axis.set_xlabel("best validation accuracy")
    axis.grid(True, axis="x", alpha=0.3)


def _draw_curves(axis, rows, curves):
    for row, (iterations, values) in zip(rows, curves):
        if iterations:
            axis.plot(iterations, values, marker="o" if len(values) < 30 else None, markersize=3, label=row["run"])
    axis.set_xlabel("iteration")
    axis.set_ylabel("validation accuracy")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(True, alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="lower right", fontsize="small")
