"""Inspecting a net before Caffe runs it: shapes, learnable parameters, learning rates, and its weights.

Weights are matched as Caffe's ``Net::CopyTrainedLayersFrom`` matches them: each layer of the
caffemodel goes to the first layer of the net with the same name; the blob counts must be equal
("Incompatible number of blobs"), then every blob's shape ("Cannot copy param N weights …
shape mismatch"), legacy num/channels/height/width blobs compared as Caffe's
``Blob::ShapeEquals`` does. A caffemodel layer the net does not name is ignored; a net layer the
caffemodel does not name keeps its fillers' initialisation.
"""

from dataclasses import dataclass, field

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_caffemodel
from caffegen.io.datasources import first_input
from caffegen.net.layers import DATA_TYPES
from caffegen.net.netview import TEST, TRAIN, NetView
from caffegen.net.shapes import format_shape, infer_shapes, learnable_blobs, product, unknown

LOADED, NEW, MISMATCH, NONE, UNKNOWN = "loaded", "new", "mismatch", "none", "unknown"
# In the weights, and no known dimension differs, but some of the net's are unknown: Caffe may still abort.
UNVERIFIED = "unverified"
FROZEN, TRAINABLE, PARTLY_FROZEN, BATCH_STATS = "frozen", "trainable", "partly frozen", "batch stats"
RENAME_FIX = ("rename the layer in the net so that Caffe initialises it fresh (caffegen head renames a "
              "retargeted classifier), or give it the weights' shape")


@dataclass(frozen=True)
class WeightProblem:
    """A net layer that cannot take its weights: which blob, both shapes, and the fix.

    ``fatal`` problems make Caffe abort while loading the weights; the others let it run wrongly.
    """

    layer: str
    blob: int  # None when the problem is the layer's, not one blob's
    net_shape: tuple
    weights_shape: tuple
    message: str
    fatal: bool = True

    def format(self, path):
        return f"{path}: layer '{self.layer}': {self.message}"


@dataclass
class LayerReport:
    """One layer as inspected; ``weights`` is its status against a caffemodel (None without one)."""

    name: str
    type: str
    tops: dict
    params: list
    lr_mult: list
    decay_mult: list
    state: str
    multiply_adds: int
    param_names: list = field(default_factory=list)  # names that share blobs between layers ("" when unnamed)
    note: str = None
    rejected: bool = False  # Caffe would refuse to set the layer up
    weights: str = None


@dataclass
class Inspection:
    """A net inspected in one phase, with what a caffemodel gives it when one was named."""

    phase: str
    layers: list
    weights_path: object = None
    model: object = None  # the Caffemodel read, with weights
    ignored: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def caffe_would_abort(self):
        """Whether Caffe would refuse the net, or abort while loading the weights."""
        return any(report.rejected for report in self.layers) or any(problem.fatal for problem in self.problems)

    def totals(self):
        """Parameter counts (trainable, frozen, of unknown size), multiply-adds, and weight statuses."""
        totals = {"params_trainable": 0, "params_frozen": 0, "param_blobs_unknown": 0, "multiply_adds": 0,
                  "layers_unknown_multiply_adds": 0}
        shared = set()
        for report in self.layers:
            for shape, rate, name in zip(report.params or [], report.lr_mult, report.param_names):
                if name in shared:
                    continue  # a blob shared by name counts once
                if name:
                    shared.add(name)
                size = None if shape is None else product(shape)
                if size is None:
                    totals["param_blobs_unknown"] += 1
                else:
                    totals["params_trainable" if rate else "params_frozen"] += size
            if report.multiply_adds is None:
                totals["layers_unknown_multiply_adds"] += 1
            else:
                totals["multiply_adds"] += report.multiply_adds
        if self.weights_path is not None:
            for status in (LOADED, UNVERIFIED, NEW, MISMATCH, UNKNOWN):
                totals[f"layers_{status}"] = sum(report.weights == status for report in self.layers)
            totals["layers_ignored"] = len(self.ignored)
        return totals

    def to_json(self):
        """The inspection as plain JSON data."""
        return {
            "phase": self.phase,
            "layers": [{"name": r.name, "type": r.type,
                        "tops": {blob: _json_shape(shape) for blob, shape in r.tops.items()},
                        "params": None if r.params is None else [_json_shape(shape) for shape in r.params],
                        "lr_mult": r.lr_mult, "decay_mult": r.decay_mult, "state": r.state,
                        "multiply_adds": r.multiply_adds, "weights": r.weights, "note": r.note,
                        "rejected": r.rejected}
                       for r in self.layers],
            "weights_file": None if self.weights_path is None else str(self.weights_path),
            "ignored": list(self.ignored),
            "problems": [{"layer": p.layer, "blob": p.blob, "net_shape": _json_shape(p.net_shape),
                          "weights_shape": _json_shape(p.weights_shape), "message": p.message, "fatal": p.fatal}
                         for p in self.problems],
            "totals": self.totals(),
        }


def input_from_data(net, phase=TRAIN, net_dir="."):
    """(N, C, H, W) of the phase's data as its first data layer's files tell, or None; and a line saying whence."""
    layer = next((layer for layer in NetView(net, phase).layers if layer.type in DATA_TYPES), None)
    found = first_input(layer, net_dir) if layer is not None else None
    if found is None:
        return None, None
    if found.shape is None:
        return None, f"input of '{layer.name}' unknown: {found.origin}"
    return (1,) + found.shape, f"input of '{layer.name}': {format_shape(found.shape)} per item, from {found.origin}"


def inspect_net(net, phase=TRAIN, input_shape=None, weights=None, path=None):
    """Inspect ``net`` in ``phase``; with ``weights`` (a caffemodel path), match it as Caffe would."""
    shapes = infer_shapes(NetView(net, phase, path=path), input_shape)
    reports = [_layer_report(result, phase) for result in shapes]
    inspection = Inspection(phase, reports)
    if weights is not None:
        model = read_caffemodel(weights)
        inspection.weights_path, inspection.model = model.path, model
        inspection.problems, inspection.ignored = _match_weights(reports, model)
    return inspection


def check_weights(net, caffemodel_path, phase=TRAIN, input_shape=None):
    """What keeps ``net`` from taking the weights in ``caffemodel_path``: a preflight for launching Caffe.

    Fatal problems are those on which Caffe aborts; a frozen layer that gets no weights is reported
    too, as it would keep its random initialisation.
    """
    return inspect_net(net, phase, input_shape, weights=caffemodel_path).problems


def preflight(net, caffemodel_path, input_shape=None, allow_unrelated=False):
    """Refuse weights Caffe would abort on, in either phase (it loads them into both nets).

    Returns what is not fatal but worth reading, one line each: frozen layers without weights. Weights
    that give the net nothing at all (the wrong file, most likely) are refused, or with ``allow_unrelated``
    said in one line, which counts the frozen layers they leave at their fillers.
    """
    warnings = []
    for phase in (TRAIN, TEST):
        inspection = inspect_net(net, phase, input_shape, weights=caffemodel_path)
        fatal = [problem for problem in inspection.problems if problem.fatal]
        if fatal:
            more = f" (and {len(fatal) - 1} more)" if len(fatal) > 1 else ""
            raise CaffegenError(f"Caffe would abort loading these weights: layer '{fatal[0].layer}': "
                                f"{fatal[0].message}{more}", caffemodel_path)
        warnings += [line for line in (problem.format(caffemodel_path) for problem in inspection.problems)
                     if line not in warnings]
    if any(layer.weights in (LOADED, UNVERIFIED) for layer in inspection.layers):
        return warnings
    conclusion = (f"names none of the net's layers: every layer would start from its fillers"
                  f"{f' ({len(warnings)} of them frozen)' if warnings else ''}; are these the right weights?")
    if not allow_unrelated:
        raise CaffegenError(f"{conclusion} Pass --force to prepare the job anyway", caffemodel_path)
    return [f"{caffemodel_path}: {conclusion}"]


def _layer_report(result, phase):
    count = None if result.params is None else len(result.params)
    lr_mult, decay_mult = _rates(result, count)
    names = [spec.name for spec in result.layer.param[:count or 0]] if result.layer is not None else []
    names += [""] * ((count or 0) - len(names))
    return LayerReport(result.name, result.type, result.tops, result.params, lr_mult, decay_mult,
                       _state(result, lr_mult, phase), result.multiply_adds, names, result.note, result.rejected)


def _rates(result, count):
    """Effective lr_mult and decay_mult per learnable blob (Caffe's default is 1; BatchNorm's statistics 0)."""
    if not count:
        return [], []
    specs = list(result.layer.param[:count]) if result.layer is not None else []
    lr = [spec.lr_mult for spec in specs] + [1.0] * (count - len(specs))
    decay = [spec.decay_mult for spec in specs] + [1.0] * (count - len(specs))
    if result.type == "BatchNorm":
        lr = [0.0] * count  # Caffe masks the statistics from the solver
    return lr, decay


def _state(result, lr_mult, phase):
    if result.params is None:
        return "?"
    if not result.params:
        return "-"
    if result.type == "BatchNorm":
        param = result.layer.batch_norm_param
        global_stats = param.use_global_stats if param.HasField("use_global_stats") else phase == TEST
        return FROZEN if global_stats else BATCH_STATS
    if all(rate == 0 for rate in lr_mult):
        return FROZEN
    return TRAINABLE if all(lr_mult) else PARTLY_FROZEN


def _match_weights(reports, model):
    """(problems, ignored layer names) of the net's layers against the caffemodel's, and each layer's status."""
    first = {}
    for report in reports:
        first.setdefault(report.name, report)
    matched, problems, ignored = {}, [], []
    for weight_layer in model.layers:
        report = first.get(weight_layer.name)
        if report is None:
            if weight_layer.blobs and weight_layer.name not in ignored:
                ignored.append(weight_layer.name)
            continue
        found = _blob_problems(report, weight_layer)
        matched.setdefault(report.name, []).extend(found)
        problems.extend(found)
    for report in reports:
        report.weights = _status(report, matched.get(report.name), model.layer(report.name))
        if report.weights == UNVERIFIED:
            problems.append(WeightProblem(
                report.name, None, None, None,
                f"unverified: the net's shapes {', '.join(map(format_shape, report.params))} are partly unknown, so "
                "caffegen cannot tell whether Caffe copies the weights' "
                f"{', '.join(format_shape(blob.shape) for blob in model.layer(report.name).blobs)}: Caffe may still "
                "abort loading them", fatal=False))
        if report.weights == NEW and report.state == FROZEN:
            problems.append(WeightProblem(
                report.name, None, None, None,
                "frozen but not in the weights, so it keeps its initial values (its fillers', or zero "
                "statistics for a BatchNorm); fix: let it learn, or name it as in the weights", fatal=False))
    return problems, ignored


def _status(report, problems, weight_layer):
    if problems:
        return MISMATCH
    has_blobs = weight_layer is not None and weight_layer.blobs
    if report.params is None:
        return UNKNOWN if has_blobs else NONE
    if not report.params:
        return NONE
    if weight_layer is None:
        return NEW
    return UNVERIFIED if any(unknown(shape) for shape in report.params) else LOADED


def _blob_problems(report, weight_layer):
    """Every reason Caffe would refuse to copy ``weight_layer`` into the net layer of ``report``."""
    name, params, blobs = report.name, report.params, weight_layer.blobs
    if params is None:
        return []
    if len(params) != len(blobs):
        return [WeightProblem(
            name, None, None, None,
            f"the net gives it {learnable_blobs(len(params))} but the weights' layer has {len(blobs)}: Caffe aborts "
            f"with \"Incompatible number of blobs for layer {name}\"; fix: rename the layer in the net so that "
            "Caffe initialises it fresh, or make it match the weights' layer (type, bias_term)")]
    problems = []
    for index, (shape, blob) in enumerate(zip(params, blobs)):
        if not _shape_equals(shape, blob):
            problems.append(WeightProblem(
                name, index, shape, blob.shape,
                f"param {index}: the net's shape {format_shape(shape)} differs from the weights' "
                f"{format_shape(blob.shape)}: Caffe aborts with \"Cannot copy param {index} weights from layer "
                f"'{name}'; shape mismatch\"; fix: {RENAME_FIX}"))
        elif blob.count != product(blob.shape):
            problems.append(WeightProblem(
                name, index, shape, blob.shape,
                f"param {index}: the weights' blob holds {blob.count} values but its shape "
                f"{format_shape(blob.shape)} needs {product(blob.shape)}: the caffemodel is damaged; "
                "fix: download or export it again"))
    return problems


def _shape_equals(shape, blob):
    """Caffe's Blob::ShapeEquals on what is known: an unknown net dimension differs from nothing.

    Whether it really matches is for the caller to doubt (:data:`UNVERIFIED`). Legacy blobs give
    four dimensions counted from the end: a bias of 1×1×1×N fits shape (N,).
    """
    if shape is None:
        return True
    if blob.legacy:
        if len(shape) > 4:
            return False
        shape = (1,) * (4 - len(shape)) + tuple(shape)
    return len(shape) == len(blob.shape) and all(dim is None or dim == other for dim, other in zip(shape, blob.shape))


def _json_shape(shape):
    return None if shape is None else list(shape)
