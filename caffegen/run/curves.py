"""Training curves from the records of a :class:`~caffegen.run.caffelog.LogWatcher`: a CSV table and a PNG plot.

Both files are written atomically, so a viewer refreshing them during training never sees half a
file. matplotlib is imported only when a plot is drawn.
"""

import csv
import io
import math

from caffegen.io.files import write_atomic
from caffegen.run.plots import plain_text

FIRST_COLUMNS = ("iteration", "loss", "lr")


def curve_columns(records):
    """``iteration``, ``loss``, ``lr``, then the training outputs and each test net's outputs, by name."""
    outputs = {key for record in records for key in record if key not in FIRST_COLUMNS}
    return list(FIRST_COLUMNS) + sorted(outputs, key=_output_order)


def _output_order(key):
    group, _, name = key.partition("/")
    net = group.removeprefix("test")
    return (group != "train", int(net) if net.isdigit() else 0, group, name)


def write_curves_csv(records, path):
    """Write one row per record; a value a record lacks is an empty cell."""
    columns = curve_columns(records)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record.get(column)) for column in columns])
    write_atomic(path, text.getvalue())


def _cell(value):
    return "" if value is None else repr(value)


@plain_text
def plot_curves(records, path, stage_boundaries=(), title="Training curves"):
    """Draw the losses, and below them any other outputs (accuracies), against the iteration as a PNG.

    ``stage_boundaries`` are iterations where one training stage hands over to the next; each
    gets a dashed vertical line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    losses, metrics = _series(records)
    figure = Figure(figsize=(10, 6.5 if metrics else 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2 if metrics else 1, 1, sharex=True, squeeze=False)[:, 0]
    _draw(axes[0], losses, "loss", stage_boundaries)
    if metrics:
        _draw(axes[1], metrics, _metric_label(metrics), stage_boundaries)
    axes[-1].set_xlabel("iteration")
    figure.suptitle(title)
    image = io.BytesIO()
    figure.savefig(image, format="png")
    write_atomic(path, image.getvalue())


def _series(records):
    """The curves to draw, as {label: (iterations, values)}: the losses, and the tests' other outputs.

    The training net's outputs other than the displayed loss stay in the CSV only.
    """
    losses, metrics = {"train loss": _points(records, "loss")}, {}
    for key in curve_columns(records)[len(FIRST_COLUMNS):]:
        group, _, name = key.partition("/")
        if group != "train":
            (losses if "loss" in name else metrics)[f"{group} {name}"] = _points(records, key)
    return _drawable(losses), _drawable(metrics)


def _drawable(series):
    return {label: points for label, points in series.items() if points[0]}


def _metric_label(metrics):
    return "accuracy" if all("accuracy" in label for label in metrics) else "output"


def _points(records, key):
    points = [(record["iteration"], record[key]) for record in records
              if key in record and math.isfinite(record[key])]
    return [i for i, _ in points], [value for _, value in points]


def _draw(axis, series, ylabel, stage_boundaries):
    from matplotlib.ticker import MaxNLocator

    for label, (iterations, values) in series.items():
        axis.plot(iterations, values, marker="o" if len(values) < 30 else None, markersize=3, label=label)
    for i, boundary in enumerate(stage_boundaries):
        axis.axvline(boundary, color="grey", linestyle="--", linewidth=1, label="next stage" if i == 0 else None)
    axis.set_ylabel(ylabel)
    if all(0 <= value <= 1 for _, values in series.values() for value in values):
        axis.set_ylim(-0.02, 1.02)
    axis.grid(True, alpha=0.3)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
