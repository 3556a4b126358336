"""Plain-language diagnoses of a Caffe training run, matched against what the real Caffe 1.0 prints.

Each diagnosis says what went wrong and how to fix it; ``stop`` tells the caller to end the
run (a fatal error ends it anyway, a diverged run would only waste time).

Labels outside ``0 .. num_output-1`` are not diagnosed from the log, because release builds
of Caffe (such as Debian's CPU build) say nothing about them: SoftmaxWithLoss and Accuracy check
the label range only with ``DCHECK``, which release builds compile out, and then read and
write past their blobs. Real runs of a 3-class net show what follows: with labels equal to
``num_output`` the run ends normally but the loss stays near 11 (a 3-class net starts at
ln 3 = 1.1) while test accuracy reads 1; with labels 5 (or -1) the same happens and then glibc aborts
at exit with "corrupted size vs. prev_size" or "free(): invalid next size (fast)", which
``diagnose_crash`` reports. Check the label lists before training instead.

Running out of memory shows three ways: Caffe's own allocation fails ("host allocation of size N
failed", or CUDA's "out of memory"), another one throws ``std::bad_alloc``, or the kernel kills the
process (SIGKILL, no fatal line). Each diagnosis quotes caffegen's estimate of the run and the batch
that fits, when the caller gives them (``Context.memory``).
"""

import math
import re
from dataclasses import dataclass, field
from typing import Optional

from caffegen.io.quoting import sh_command
from caffegen.job.memorycheck import GENERIC_RETRY

FLT_MIN = 2.0 ** -126
STUCK_LOSS = -math.log(FLT_MIN)  # 87.3365: SoftmaxWithLoss's loss when the right class gets probability 0
STUCK_DISPLAYS = 3

SHAPE_MISMATCH = re.compile(
    r"Cannot copy param (\d+) weights from layer '([^']*)'; shape mismatch\.\s+"
    r"Source param shape is (\d[\d ]*?) \(\d+\); target param shape is (\d[\d ]*?) \(\d+\)")
FILE_NOT_FOUND = re.compile(r"File not found: (.+)")
HDF5_NOT_OPENED = re.compile(r"Couldn't open (.+)")
IMAGE_NOT_LOADED = re.compile(r"Could not load (.+)")
PROTOTXT_NOT_PARSED = re.compile(r"ReadProtoFromTextFile\(.*\) Failed to parse (\w+) file: (.+)")
PROTOBUF_POSITION = re.compile(r"Error parsing text-format caffe\.\w+: (\d+):(\d+): (.*)")
NAMED_LAYER = re.compile(r"layer '([^']+)'")
HEAP_CORRUPTION = re.compile(r"(?:free|malloc\w*|realloc|munmap_chunk)\(\): .+|double free or corruption.*|"
                             r"corrupted .+")
# Caffe's own allocations (syncedmem.hpp's CHECK, CUDA's), and C++'s for everything else (protobuf, vectors).
OUT_OF_MEMORY = re.compile(r"host allocation of size (\d+) failed|out of memory")
BAD_ALLOC = "terminate called after throwing an instance of 'std::bad_alloc'"
# A Python layer that Caffe's embedded Python could not start, import or run.
PYTHON_FAILURE = re.compile(r"Fatal Python error: .+|(?:ModuleNotFoundError|ImportError): .+|"
                            r"terminate called after throwing an instance of 'boost::python::error_already_set'")
# A process the kernel killed: SIGKILL, as Popen reports it and as a shell does.
KILLED = (-9, 128 + 9)
PARAM_NAMES = {0: "weights", 1: "bias"}
PROTO_KINDS = {"NetParameter": "net", "SolverParameter": "solver"}


@dataclass(frozen=True)
class Diagnosis:
    """What went wrong (``kind``, a short identifier), in words with its fix, and whether to stop."""

    kind: str
    message: str
    stop: bool


@dataclass
class Context:
    """What the log said before a failure, which tells what the failure is about."""

    solver: dict = field(default_factory=dict)  # the solver's top-level fields as Caffe printed them
    weights: Optional[str] = None  # the file being fine-tuned from
    snapshot: Optional[str] = None  # the solver state being resumed from
    image_list: Optional[str] = None  # the ImageData list last opened
    layer: Optional[str] = None  # the layer being set up, while the nets are built
    parse_error: Optional[str] = None  # protobuf's last complaint about a prototxt
    memory: Optional[str] = None  # caffegen's estimate of the run's memory, and how to make it fit


def diagnose_fatal(message, context):
    """The diagnosis of a fatal (``F``) log line, given without its glog prefix."""
    for check in (_gpu_on_cpu_only, _shape_mismatch, _missing_file, _missing_image_list, _missing_image,
                  _bad_prototxt, _out_of_memory):
        diagnosis = check(message, context)
        if diagnosis:
            return diagnosis
    return _other_fatal(message, context)


def diagnose_crash(line, context):
    """The diagnosis of a line glibc prints when it finds the heap corrupted, or C++ when memory ran out, else None."""
    if line.strip() == BAD_ALLOC:
        return _ran_out("a memory allocation failed: std::bad_alloc", context.memory)
    if PYTHON_FAILURE.fullmatch(line.strip()):
        return _python_layer(line.strip(), context)
    if not HEAP_CORRUPTION.fullmatch(line):
        return None
    return Diagnosis("memory_corruption",
                     f"Caffe crashed with corrupted memory ({line}). In a release build of Caffe the usual cause "
                     "is labels outside 0 .. num_output-1: SoftmaxWithLoss and Accuracy do not check them and "
                     "write past their buffers, so the losses and accuracies printed before were meaningless too. "
                     "Make every label in the lists run from 0 to num_output-1 of the classifier.", stop=True)


def _python_layer(line, context):
    layer = f"the Python layer '{context.layer}'" if context.layer else "a Python layer"
    return Diagnosis("python_layer",
                     f"Caffe could not run {layer} ({line}). Caffe runs a Python layer in its own embedded Python, "
                     "which must start and import pycaffe and the layer's module: the CPU Caffe that caffegen "
                     "installs cannot (its Python finds no standard library). Train this net with a Caffe built "
                     "with Python layers whose Python has pycaffe and the module on its PYTHONPATH, or replace the "
                     "layer.", stop=True)


def diagnose_killed(exit_code, context):
    """The diagnosis of a Caffe killed by SIGKILL without a fatal error of its own, else None.

    The run has ended already, so the diagnosis does not stop it: the exit code stays Caffe's.
    """
    if exit_code not in KILLED:
        return None
    return _ran_out(f"killed by SIGKILL, exit code {exit_code}, without an error of its own: on Linux that is "
                    "usually the kernel's out-of-memory killer, which dmesg names", context.memory, stop=False)


def _ran_out(evidence, advice, stop=True):
    """Caffe ran out of memory: what showed it, then caffegen's estimate and fix (``advice``; None: the usual fix)."""
    return Diagnosis("out_of_memory", f"Caffe ran out of memory ({evidence}). {advice or f'To fit, {GENERIC_RETRY}.'}",
                     stop)


def diagnose_loss(losses, context):
    """The diagnosis of the displayed losses so far, as (iteration, loss) pairs in order, else None."""
    iteration, loss = losses[-1]
    if not math.isfinite(loss):
        return Diagnosis("diverged",
                         f"The loss became {loss} at iteration {iteration}: training diverged and will not "
                         f"recover. {_lower_rate(context)} Also check that the labels run from 0 to "
                         "num_output-1 and that the batch is not tiny; then start again from the pretrained "
                         "weights, not from a snapshot taken after the loss blew up.", stop=True)
    recent = losses[-STUCK_DISPLAYS:]
    if len(recent) == STUCK_DISPLAYS and all(math.isclose(value, STUCK_LOSS, abs_tol=5e-4) for _, value in recent):
        return Diagnosis("stuck_loss",
                         f"The loss has been 87.3365 for {STUCK_DISPLAYS} displays (iterations {recent[0][0]} to "
                         f"{iteration}). That is -log(FLT_MIN), what SoftmaxWithLoss reports when the right class "
                         "gets probability 0: the class scores have blown up. "
                         f"{_lower_rate(context)} Scale 0-255 pixels to 0-1 (transform_param {{ scale: "
                         "0.00390625 }), shuffle a list sorted by class (image_data_param { shuffle: true }), "
                         "make the labels run from 0 to num_output-1, and use a bigger batch.", stop=True)
    return None


def _lower_rate(context):
    base_lr = context.solver.get("base_lr")
    if base_lr is None:
        return "Lower the learning rate tenfold (base_lr in the solver)."
    return f"Lower the learning rate: base_lr is {base_lr}, try {float(base_lr) / 10:g}."


def _gpu_on_cpu_only(message, context):
    if "Cannot use GPU in CPU-only Caffe" not in message:
        return None
    return Diagnosis("gpu_on_cpu_only",
                     "This Caffe was built for the CPU only (CPU_ONLY) and cannot use a GPU: run on the CPU, "
                     "without --gpu (caffe's -gpu), and with solver_mode: CPU in the solver.", stop=True)


def _shape_mismatch(message, context):
    match = SHAPE_MISMATCH.search(message)
    if not match:
        return None
    index, layer, source, target = int(match[1]), match[2], match[3].split(), match[4].split()
    param = PARAM_NAMES.get(index, f"param {index}")
    net = context.solver.get("net") or context.solver.get("train_net") or "NET.prototxt"
    weights = context.weights or "WEIGHTS.caffemodel"
    return Diagnosis("shape_mismatch",
                     f"Layer '{layer}' cannot take its pretrained {param}: they are {_shape(source)} in {weights} "
                     f"but {_shape(target)} in your net. Caffe copies weights by layer name, so a layer whose size "
                     f"changed needs a new name to start fresh: "
                     f"`{sh_command('caffegen', 'head', net, '--num-output', target[0])}` "
                     f"renames the classifier ('{layer}' becomes '{layer}_ft'); "
                     f"`{sh_command('caffegen', 'inspect', net, '--weights', weights)}` lists every layer whose shape "
                     "differs.",
                     stop=True)


def _shape(dims):
    return "×".join(dims)


def _missing_file(message, context):
    match = FILE_NOT_FOUND.search(message) or HDF5_NOT_OPENED.search(message)
    if not match:
        return None
    path = match[1]
    if path == context.weights:
        return Diagnosis("missing_weights",
                         f"The pretrained weights '{path}' do not exist: check the path given with --weights "
                         "(relative paths start from the folder Caffe runs in).", stop=True)
    if path == context.snapshot:
        return Diagnosis("missing_snapshot",
                         f"The snapshot '{path}' to resume from does not exist: pass a .solverstate that Caffe "
                         "wrote (named <snapshot_prefix>_iter_<N>.solverstate).", stop=True)
    return Diagnosis("missing_file",
                     f"Caffe cannot find the {_file_role(path, context)} '{path}': check the path (relative paths "
                     "start from the folder Caffe runs in).", stop=True)


def _file_role(path, context):
    if not context.solver:
        return "solver file"
    nets = [context.solver.get(name) for name in ("net", "train_net", "test_net")]
    return "net file" if path in nets else "file"


def _missing_image_list(message, context):
    if "!lines_.empty() File is empty" not in message:
        return None
    source = context.image_list or "the ImageData source"
    return Diagnosis("missing_image_list",
                     f"The image list '{source}' does not exist or is empty (Caffe says 'File is empty' for both): "
                     "check image_data_param { source } and that the list holds one 'path label' line per image.",
                     stop=True)


def _missing_image(message, context):
    match = IMAGE_NOT_LOADED.search(message)
    if not match:
        return None
    listed = f" listed in '{context.image_list}'" if context.image_list else ""
    return Diagnosis("missing_image",
                     f"The image '{match[1]}'{listed} is missing or cannot be decoded, and Caffe stops at the first "
                     "such image: fix the list, or image_data_param { root_folder }, which Caffe puts in front of "
                     "every listed path.", stop=True)


def _bad_prototxt(message, context):
    match = PROTOTXT_NOT_PARSED.search(message)
    if not match:
        return None
    what, path = PROTO_KINDS.get(match[1], match[1]), match[2]
    where = PROTOBUF_POSITION.search(context.parse_error or "")
    detail = f"line {where[1]}, column {where[2]}: {where[3]}" if where else "see protobuf's error above"
    return Diagnosis("bad_prototxt", f"The {what} file '{path}' is not valid prototxt: {detail}", stop=True)


def _out_of_memory(message, context):
    match = OUT_OF_MEMORY.search(message)
    if not match:
        return None
    what = f"an allocation of {match[1]} bytes failed" if match[1] else "the GPU has no memory left"
    return _ran_out(f"{what}: {message}", context.memory)


def _other_fatal(message, context):
    named = NAMED_LAYER.search(message)
    layer = named[1] if named else context.layer
    where = f" in layer '{layer}'" if layer else ""
    return Diagnosis("fatal", f"Caffe stopped{where}: {message}", stop=True)
