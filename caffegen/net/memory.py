"""The peak memory of a Caffe 1.0 process, estimated from the shapes caffegen infers, before Caffe runs.

Caffe allocates a blob's memory on first access (``SyncedMemory::to_cpu``), so what a process holds
is what its layers touch:

- every blob a layer writes, once: an in-place layer (top == bottom) writes into its bottom, and
  the Split layers Caffe inserts where a blob feeds several layers, Flatten and Reshape share
  their bottom's data;
- in TRAIN, a gradient (diff) for every blob that backward reads or writes: the tops of the layers
  that need backward and the bottoms they propagate to, decided as ``Net::Init`` decides it
  (lr_mult, propagate_down, what contributes to the loss); a Split's tops have their own
  gradients, Flatten and Reshape share their bottom's; TEST never touches a diff;
- each non-1×1 Convolution/Deconvolution's own ``col_buffer_``, sized for one image (kernel_dim ×
  output spatial size), not shared between layers in Caffe 1.0;
- the buffers layers keep beside their blobs: BatchNorm's ``temp_`` and ``x_norm_`` (two copies of
  its input, a third for the gradient in place), an in-place Scale's copy of its input, max
  pooling's and Eltwise MAX's index masks, Dropout's mask in TRAIN, SoftmaxWithLoss's
  probabilities, HDF5Output's copies of what it writes;
- a prefetching data layer's ``prefetch`` batches (4 by default), which its tops point into;
- the parameters, and in TRAIN their gradients (``ClearParamDiffs`` touches every learnable blob,
  frozen ones too) and the solver's history (SGD 1×, Nesterov, AdaGrad and RMSProp 2×, Adam 3×,
  AdaDelta 4×);
- the process itself: the binary, its libraries and OpenBLAS's buffers (:data:`BASELINE_BYTES`,
  calibrated against the real Caffe 1.0 CPU build on a 2-core machine);
- for a moment, a copy of the weights: loading a caffemodel parses it whole (a legacy V1 one twice:
  Caffe upgrades a copy), and a snapshot copies the parameters, then the solver history, into a
  message before writing it.

Buffers smaller than one image's worth of a blob (bias multipliers, per-channel statistics) are
left out. ``bench/memory_estimate.py`` measures real Caffe and prints the estimate's error.
"""

from dataclasses import dataclass, field

from caffegen.io.schema import BVLC
from caffegen.net.layers import BATCH_PARAMS, PREFETCHING_TYPES, SHARING_TYPES
from caffegen.net.netview import TEST, TRAIN, NetView
from caffegen.net.shapes import conv_setup, infer_shapes, product, unknown

FLOAT_BYTES = 4
# The resident memory of a Caffe 1.0 CPU process before its nets hold anything: the binary and its
# libraries, and OpenBLAS's buffers once it has multiplied large matrices: calibrated with
# bench/memory_estimate.py on a 2-core machine (63 MB before any net; the rest is what training adds).
BASELINE_BYTES = 75 << 20
# On a GPU: the CUDA context and cuBLAS's handles, on the device (not measured here).
GPU_BASELINE_BYTES = 400 << 20
# Copies of the parameters each solver holds (history_, and update_/temp_ where its update uses them),
# and how many of them a snapshot saves (its history_).
HISTORY_COPIES = {"SGD": (1, 1), "Nesterov": (2, 1), "AdaGrad": (2, 1), "RMSProp": (2, 1), "AdaDelta": (4, 2),
                  "Adam": (3, 2)}
PART_WORDS = {
    "blobs": "layer outputs", "gradients": "their gradients", "im2col": "im2col buffers",
    "buffers": "layer buffers", "prefetch": "prefetched batches", "params": "parameters",
    "param_gradients": "parameter gradients", "history": "solver history", "baseline": "Caffe itself",
}


@dataclass(frozen=True)
class MemoryBudget:
    """How much memory a run may take, and where the figure comes from ('RAM available (MemAvailable)')."""

    bytes: int
    source: str


@dataclass
class NetMemory:
    """One net in one phase at one batch: bytes by part (see :data:`PART_WORDS`); ``unknown`` lists the
    layers whose shapes are unknown, so that the figures leave them out."""

    phase: str
    batch: int
    parts: dict
    unknown: list = field(default_factory=list)
    param_counts: list = field(default_factory=list)  # elements of each learnable blob it owns, in order


@dataclass
class ProcessMemory:
    """A Caffe process (``caffe train``, ``caffe test``): its nets, the process, and its moments of extra memory.

    ``loading`` is what loading the weights adds to the parameters and prefetched batches for a
    moment; ``snapshot`` what writing a snapshot adds to everything else.
    """

    what: str
    nets: list
    baseline: int
    loading: int = 0
    snapshot: int = 0

    @property
    def parts(self):
        """Bytes by part over the whole process, the baseline included."""
        parts = {"baseline": self.baseline}
        for net in self.nets:
            for name, size in net.parts.items():
                parts[name] = parts.get(name, 0) + size
        return parts

    @property
    def resident(self):
        """Bytes held while the nets run."""
        return sum(self.parts.values())

    @property
    def peak(self):
        """The most the process holds at once: running (and snapshotting), or loading the weights."""
        parts = self.parts
        while_loading = parts["baseline"] + parts.get("params", 0) + parts.get("prefetch", 0) + self.loading
        return max(self.resident + self.snapshot, while_loading)

    @property
    def unknown(self):
        """Layers of unknown shape in any of the nets: the figures are then too low."""
        return list(dict.fromkeys(name for net in self.nets for name in net.unknown))

    def to_json(self):
        """The estimate as plain JSON data, in bytes."""
        return {"what": self.what, "peak": self.peak, "resident": self.resident, "parts": self.parts,
                "loading": self.loading, "snapshot": self.snapshot, "unknown": self.unknown}


def format_bytes(count):
    """Bytes for people, in decimal units: 1.2 GB, 340.0 MB."""
    for size, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


# --- processes ----------------------------------------------------------------------------------


def training_memory(net, solver_type="SGD", batches=None, input_shape=None, weights_copy=None, gpu=False,
                    path=None):
    """``caffe train``'s peak: the TRAIN net with its solver, and the TEST net that shares its parameters.

    ``batches`` ({phase: batch}) replaces the data layers' own; ``weights_copy`` is what the weights
    take while Caffe parses them (:func:`weights_copy`; None: a caffemodel of exactly the net's
    parameters), once for each net, one after the other.
    """
    batches = batches or {}
    train = net_memory(net, TRAIN, batches.get(TRAIN), input_shape, path=path)
    held, saved = HISTORY_COPIES.get(solver_type, (1, 1))
    train.parts["history"] = held * train.parts["params"]
    nets = [train]
    if _has_phase(net, TEST):
        nets.append(net_memory(net, TEST, batches.get(TEST), input_shape, shared_params=True, path=path))
    what = " + ".join(f"{memory.phase} net at batch {memory.batch}" for memory in nets)
    if gpu:
        return ProcessMemory(f"training ({what})", nets, GPU_BASELINE_BYTES)
    # The TEST net fills parameters of its own until the first test shares the TRAIN net's.
    loading = _parsed(weights_copy, train) + (train.parts["params"] if len(nets) > 1 else 0)
    # A snapshot copies the parameters into a message, then the solver's history.
    snapshot = FLOAT_BYTES * max(message_copy(train.param_counts), message_copy(train.param_counts * saved))
    return ProcessMemory(f"training ({what})", nets, BASELINE_BYTES, loading, snapshot)


def testing_memory(net, batch=None, input_shape=None, weights_copy=None, gpu=False, path=None):
    """``caffe test``'s peak: the TEST net at ``batch`` (None: its own) with its weights loaded."""
    memory = net_memory(net, TEST, batch, input_shape, path=path)
    label = f"testing (TEST net at batch {memory.batch})"
    if gpu:
        return ProcessMemory(label, [memory], GPU_BASELINE_BYTES)
    return ProcessMemory(label, [memory], BASELINE_BYTES, _parsed(weights_copy, memory))


def extraction_memory(layers, outputs, batch, input_shape=None, gpu=False):
    """The peak of one feature extraction: the TEST pass of ``layers`` (the trunk, data layer first) at ``batch``,
    copying the ``outputs`` blobs (as ``extract_features`` does, stood in for by an HDF5Output), loading the
    trunk's weights only."""
    trunk = BVLC.NetParameter(name="trunk")
    for layer in layers:
        copy = trunk.layer.add()
        copy.CopyFrom(layer)
        copy.ClearField("include")
        copy.ClearField("exclude")
    trunk.layer.add(name="cache", type="HDF5Output", bottom=list(outputs))
    memory = net_memory(trunk, TEST, batch, input_shape)
    label = f"feature extraction (trunk at batch {memory.batch})"
    if gpu:
        return ProcessMemory(label, [memory], GPU_BASELINE_BYTES)
    return ProcessMemory(label, [memory], BASELINE_BYTES, _parsed(None, memory))


def weights_copy(model):
    """What the caffemodel ``model`` (from io.caffemodel) takes while Caffe parses it (:func:`message_copy`);
    a legacy V1 one is then upgraded into a second copy."""
    counts = [blob.count for layer in model.layers for blob in layer.blobs]
    elements = message_copy(counts)
    return FLOAT_BYTES * (max(elements, 2 * sum(counts)) if model.v1 else elements)


def message_copy(counts):
    """The most elements a protobuf message of blobs with ``counts`` values (in order) holds while it is built.

    Caffe's protobuf (3.12 in Debian's build) grows a blob's repeated ``data`` by doubling both when it
    parses a caffemodel and when ``Blob::ToProto`` snapshots: while the last doubling copies, the old
    array and the copy are both held, so a blob of n values takes the next power of two above n for a
    moment, on top of the blobs before it.
    """
    peak = done = 0
    for count in counts:
        peak = max(peak, done + _next_power_of_two(count))
        done += count
    return peak


def _next_power_of_two(count):
    return 1 << (count - 1).bit_length() if count > 4 else count


def _parsed(weights_copy, memory):
    """Bytes of the weights while Caffe parses them: ``weights_copy``, or those of a caffemodel of the net's own."""
    return FLOAT_BYTES * message_copy(memory.param_counts) if weights_copy is None else weights_copy


def largest_batch(peak_at, budget, most):
    """The largest batch from 1 to ``most`` whose ``peak_at(batch)`` fits in ``budget`` bytes; None if none does."""
    if peak_at(1) > budget:
        return None
    low, high = 1, most
    while low < high:
        middle = (low + high + 1) // 2
        if peak_at(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def inspected_memory(net, input_shape=None, weights_copy=None, path=None):
    """What ``caffegen inspect`` shows: ``caffe train``'s peak where the TRAIN phase has a loss, and ``caffe test``'s
    where there is a TEST phase."""
    found = []
    if any(_is_loss(layer) for layer in NetView(net, TRAIN).layers):
        found.append(training_memory(net, input_shape=input_shape, weights_copy=weights_copy, path=path))
    if _has_phase(net, TEST):
        found.append(testing_memory(net, input_shape=input_shape, weights_copy=weights_copy, path=path))
    return found


def _has_phase(net, phase):
    return bool(NetView(net, phase).layers)


def _is_loss(layer):
    """Whether ``layer`` gives the net a loss: a loss type, or an explicit loss_weight."""
    return layer.type.endswith("Loss") or any(layer.loss_weight)


# --- one net ------------------------------------------------------------------------------------


def net_memory(net, phase, batch=None, input_shape=None, shared_params=False, path=None):
    """The memory of ``net`` in ``phase`` at ``batch`` (None: the net's own), as a :class:`NetMemory`.

    ``shared_params``: the parameters belong to another net of the process (``caffe train``'s TEST
    net takes the TRAIN net's), so only the blobs and buffers count.
    """
    view = NetView(with_batch(net, phase, batch) if batch else net, phase, path=path)
    results = infer_shapes(view, input_shape)
    graph = _Graph(results)
    training = phase == TRAIN and graph.decide_backward(view.net.force_backward)
    parts = {"blobs": graph.owned_data(), "gradients": graph.diffs() if training else 0,
             "im2col": sum(_col_buffer(node) for node in graph.layers),
             "buffers": sum(_layer_buffers(node, phase) for node in graph.layers),
             "prefetch": sum(_prefetch(node) for node in graph.layers)}
    counts = [] if shared_params else _param_counts(results)
    if not shared_params:
        parts["params"] = sum(counts)
        parts["param_gradients"] = parts["params"] if phase == TRAIN else 0
    unknown = [result.name for result in results if _unknown_size(result)]
    return NetMemory(phase, batch or _data_batch(results), {name: FLOAT_BYTES * size for name, size in parts.items()},
                     unknown, counts)


def with_batch(net, phase, batch):
    """A copy of ``net`` whose data layers in ``phase`` read ``batch`` items at a time."""
    copy = BVLC.NetParameter()
    copy.CopyFrom(net)
    for shape in copy.input_shape:
        shape.dim[0] = batch
    for index in range(0, len(copy.input_dim), 4):
        copy.input_dim[index] = batch
    for layer in NetView(copy, phase).layers:
        for name in BATCH_PARAMS:
            if layer.HasField(name):
                getattr(layer, name).batch_size = batch
        for shape in list(layer.input_param.shape) + list(layer.dummy_data_param.shape):
            shape.dim[0] = batch
        if layer.dummy_data_param.num:
            layer.dummy_data_param.num[:] = [batch] * len(layer.dummy_data_param.num)
    return copy


def _data_batch(results):
    """The batch of the net: the first dimension of its first blob."""
    return next((shape[0] for result in results for shape in result.tops.values() if shape), None)


def _unknown_size(result):
    """Whether a layer's own memory cannot be known: an output, or a learnable blob, of unknown size."""
    shapes = list(result.tops.values()) + list(result.params or [])
    return result.params is None or any(shape is None or None in shape for shape in shapes)


def _param_counts(results):
    """Elements of every learnable blob a layer owns, in order (a blob shared by name counts once)."""
    seen, counts = set(), []
    for result in results:
        names = [spec.name for spec in result.layer.param] if result.layer is not None else []
        for index, shape in enumerate(result.params or []):
            name = names[index] if index < len(names) else ""
            if name in seen:
                continue
            if name:
                seen.add(name)
            counts.append(_count(shape))
    return counts


def _count(shape):
    """Elements of ``shape``; 0 when unknown (the layer is then listed as unknown)."""
    size = None if shape is None else product(shape)
    return size or 0


# --- what layers keep beside their blobs --------------------------------------------------------


def _col_buffer(node):
    """Elements of a Convolution's or Deconvolution's im2col buffer: one image's columns, none for 1×1."""
    if node.type not in ("Convolution", "Deconvolution") or not node.result.params:
        return 0
    shapes = node.bottom_shapes[:1] + node.top_shapes[:1] + node.result.params[:1]
    if len(shapes) < 3 or any(unknown(shape) for shape in shapes):
        return 0  # a layer Caffe would reject, or of unknown size (listed as such)
    bottom, top, weight = shapes
    axis, kernel, stride, pad, _ = conv_setup(node.result.layer, bottom)
    if all(k == 1 for k in kernel) and all(s == 1 for s in stride) and not any(pad):
        return 0
    spatial = bottom if node.type == "Deconvolution" else top
    return product(weight[1:]) * node.result.layer.convolution_param.group * product(spatial[axis + 1:])


def _layer_buffers(node, phase):
    """Elements of the buffers a layer keeps beside its blobs, in ``phase``."""
    if node.result is None or node.result.layer is None:
        return 0
    layer, bottom, top = node.result.layer, _first(node.bottom_shapes), _first(node.top_shapes)
    in_place = bool(node.tops) and node.bottoms[:1] == node.tops[:1]
    backward = phase == TRAIN and node.needs_backward
    if node.type == "BatchNorm":
        return 2 * bottom + (bottom if in_place and backward else 0)  # temp_, x_norm_ (and its diff in place)
    if node.type in ("Scale", "PReLU"):
        return bottom if in_place else 0  # the input, kept for backward
    if node.type == "Pooling":
        pool = layer.pooling_param.pool
        masks = pool == layer.pooling_param.MAX and len(node.tops) == 1
        return top if masks or (pool == layer.pooling_param.STOCHASTIC and phase == TRAIN) else 0
    if node.type == "Eltwise":
        return top if layer.eltwise_param.operation == layer.eltwise_param.MAX else 0
    if node.type == "Dropout":
        return bottom if phase == TRAIN else 0
    if node.type == "LRN":
        if layer.lrn_param.norm_region == layer.lrn_param.ACROSS_CHANNELS:
            return bottom  # scale_
        return 3 * bottom + (5 * bottom if backward else 0)  # its inner square, pool and power layers
    if node.type == "SoftmaxWithLoss":
        return bottom  # prob_
    if node.type == "HDF5Output":
        return sum(_first([shape]) for shape in node.bottom_shapes)
    return 0


def _prefetch(node):
    """Elements of a prefetching data layer's batches, whose memory its tops point into."""
    if node.type not in PREFETCHING_TYPES or node.result.layer is None:
        return 0
    return node.result.layer.data_param.prefetch * sum(_first([shape]) for shape in node.top_shapes)


def _first(shapes):
    """Elements of the first of ``shapes``; 0 when it is missing or unknown."""
    return _count(shapes[0]) if shapes else 0


# --- Caffe's blobs, as Net::Init wires them -------------------------------------------------------


@dataclass
class _Node:
    """A layer as Caffe instantiates it (Split layers included): its blobs by id, and what backward does."""

    name: str
    type: str
    result: object  # the LayerShapes; None for a Split
    bottoms: list
    tops: list
    bottom_shapes: list
    top_shapes: list
    learns: bool = False  # a learnable blob has a non-zero lr_mult
    loss: bool = False
    propagate_down: list = None
    needs_backward: bool = False
    bottom_needs: list = field(default_factory=list)


@dataclass
class _Blob:
    name: str
    shape: tuple
    owns_data: bool  # False: its data is another blob's, or a prefetch batch's
    diff: int  # the id of the blob whose diff it uses

    @property
    def count(self):
        return _count(self.shape)


class _Graph:
    """The blobs and layers of one net after Caffe's ``InsertSplits``."""

    def __init__(self, results):
        self.blobs, self.layers = [], []
        readers = _reader_counts(results)
        latest = {}  # blob name -> (its writer's (layer, top) index, blob id, split blob ids)
        for index, result in enumerate(results):
            bottoms = [self._bottom(blob, latest) for blob in _bottom_names(result)]
            tops = self._tops(result, bottoms)
            self.layers.append(self._node(result, bottoms, tops))
            for top_index, (name, blob) in enumerate(zip(result.tops, tops)):
                count = readers.get((index, top_index), 0)
                splits = [self._new(f"{name}_split_{i}", self.blobs[blob].shape, False) for i in range(count)]
                if count > 1:
                    shapes = [self.blobs[blob].shape]
                    self.layers.append(_Node(f"{name}_split", "Split", None, [blob], splits, shapes, shapes * count))
                latest[name] = [(index, top_index), blob, list(splits) if count > 1 else []]

    def _new(self, name, shape, owns_data, diff=None):
        self.blobs.append(_Blob(name, shape, owns_data, len(self.blobs) if diff is None else diff))
        return len(self.blobs) - 1

    def _bottom(self, name, latest):
        """The blob id a bottom reads: its writer's top, or the next of the Split's tops after it."""
        if name not in latest:
            return self._new(name, None, False)
        writer = latest[name]
        if writer[2]:
            return writer[2].pop(0)
        return writer[1]

    def _tops(self, result, bottoms):
        """Blob ids of the layer's tops: its bottom's where it works in place, else new ones."""
        tops = []
        for index, (name, shape) in enumerate(result.tops.items()):
            # In place: the top names the bottom it reads, not a Split's output of it.
            if index < len(bottoms) and self.blobs[bottoms[index]].name == name:
                tops.append(bottoms[index])
                continue
            shares = result.type in SHARING_TYPES and bool(bottoms)
            owns = not shares and result.type not in PREFETCHING_TYPES
            tops.append(self._new(name, shape, owns, self.blobs[bottoms[0]].diff if shares else None))
        return tops

    def _node(self, result, bottoms, tops):
        node = _Node(result.name, result.type, result, bottoms, tops, [self.blobs[b].shape for b in bottoms],
                     [self.blobs[t].shape for t in tops])
        layer = result.layer
        if layer is not None:
            # Net::Init reads the net's own ParamSpecs: a BatchNorm without them needs backward too.
            count = len(result.params or [])
            rates = [spec.lr_mult for spec in layer.param[:count]] + [1.0] * (count - len(layer.param))
            node.learns = any(rates)
            node.loss = _is_loss(layer)
            node.propagate_down = list(layer.propagate_down) or None
        return node

    def decide_backward(self, force_backward=False):
        """Which layers need backward and which bottoms get gradients, as Net::Init decides; whether any does."""
        needing = set()
        for node in self.layers:
            node.needs_backward = node.learns or any(blob in needing for blob in node.bottoms)
            node.bottom_needs = ([bool(value) for value in node.propagate_down] if node.propagate_down
                                 else [blob in needing for blob in node.bottoms])
            if node.needs_backward:
                needing.update(node.tops)
        under_loss, skipped = set(), set()
        for node in reversed(self.layers):
            names = [self.blobs[blob].name for blob in node.tops]
            contributes = node.loss or any(name in under_loss for name in names)
            if node.needs_backward and all(name in skipped for name in names):
                node.needs_backward = False
                node.bottom_needs = [False] * len(node.bottoms)
            if not contributes:
                node.needs_backward = False
            for index, blob in enumerate(node.bottoms):
                name = self.blobs[blob].name
                if contributes:
                    under_loss.add(name)
                else:
                    node.bottom_needs[index] = False
                if not node.bottom_needs[index]:
                    skipped.add(name)
        if force_backward:
            for node in self.layers:
                node.needs_backward = True
        return any(node.needs_backward for node in self.layers)

    def owned_data(self):
        """Elements of every blob that holds its own data."""
        return sum(blob.count for blob in self.blobs if blob.owns_data)

    def diffs(self):
        """Elements of every diff that backward reads or writes."""
        touched = set()
        for node in self.layers:
            if not node.needs_backward:
                continue
            if node.type != "Split" or node.bottom_needs[0]:
                touched.update(self.blobs[blob].diff for blob in node.tops)
            touched.update(self.blobs[blob].diff for blob, needed in zip(node.bottoms, node.bottom_needs) if needed)
        return sum(self.blobs[blob].count for blob in touched)


def _bottom_names(result):
    return list(result.layer.bottom) if result.layer is not None else []


def _reader_counts(results):
    """{(layer index, top index): the bottoms reading that top, and its explicit loss weight}, as InsertSplits
    counts them."""
    latest, counts = {}, {}
    for index, result in enumerate(results):
        for blob in _bottom_names(result):
            if blob in latest:
                counts[latest[blob]] = counts.get(latest[blob], 0) + 1
        for top_index, blob in enumerate(result.tops):
            latest[blob] = (index, top_index)
        weights = result.layer.loss_weight if result.layer is not None else []
        for blob, weight in zip(result.tops, weights):
            if weight:
                counts[latest[blob]] = counts.get(latest[blob], 0) + 1
    return counts
