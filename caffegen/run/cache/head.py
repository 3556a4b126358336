"""The head of a cached run: its net on the stored features, its solver and first weights, and the merged
final.caffemodel."""

import os

from caffegen.io.files import write_atomic
from caffegen.io.prototxt import to_text
from caffegen.io.schema import BVLC
from caffegen.job.cacheplan import LISTS, unique
from caffegen.net.layers import DATA_TYPES
from caffegen.net.netview import PHASE_NUMBERS, TRAIN
from caffegen.run.cache.store import FEATURE_DATASET, FEATURES, LABEL_DATASET, add_reshape
from caffegen.run.cache.weights import write_trimmed_weights

HEAD_WEIGHTS = f"{FEATURES}/head_init.caffemodel"


HEAD_NET = "head_train_val.prototxt"


HEAD_SOLVER = "head_solver.prototxt"


HEAD_SNAPSHOTS = "snapshots/head"


FINAL_MODEL = "final.caffemodel"


def head_net(plan):
    """The train_val net with its trunk replaced by HDF5Data layers on the cached features."""
    net = BVLC.NetParameter(name=plan.net.name)
    for phase, subset in LISTS.items():
        data = plan.data_layers[phase]
        layer = net.layer.add(name=data.name, type="HDF5Data", top=[FEATURE_DATASET, LABEL_DATASET])
        layer.include.add().phase = PHASE_NUMBERS[phase]
        layer.hdf5_data_param.source = f"{FEATURES}/{subset}.txt"
        layer.hdf5_data_param.batch_size = data.image_data_param.batch_size
        if phase == TRAIN and data.image_data_param.shuffle:
            layer.hdf5_data_param.shuffle = True
    # HDF5Output stores 4 axes under fixed names: give the head its blobs back under their own names and shapes.
    if plan.boundary != FEATURE_DATASET:
        add_reshape(net, FEATURE_DATASET, plan.boundary, (0,) + plan.feature_shape)
    if plan.label != LABEL_DATASET:
        add_reshape(net, LABEL_DATASET, plan.label, (0,))
    for layer in plan.net.layer:
        if layer.name in plan.head and layer.type not in DATA_TYPES:
            net.layer.add().CopyFrom(layer)
    return net


def head_solver(run_solver, gpu):
    """The run's solver on the head net: the same batch sizes, so the same iterations, tests and epochs."""
    solver = type(run_solver)()
    solver.CopyFrom(run_solver)
    for name in ("train_net", "test_net", "net_param", "train_net_param", "test_net_param"):
        solver.ClearField(name)
    solver.net = HEAD_NET
    solver.snapshot_prefix = HEAD_SNAPSHOTS
    solver.solver_mode = solver.CPU if gpu is None else solver.GPU
    return solver


def write_head(plan, store, solver, gpu):
    """Write the head net on ``store``'s features, its solver and its starting weights; return ``caffe train``'s
    arguments."""
    run_dir = plan.run_dir
    (run_dir / FEATURES).mkdir(exist_ok=True)
    for phase, subset in LISTS.items():
        files = [os.path.relpath(store.path / chunk.path(".h5"), run_dir)
                 for chunk in store.work if chunk.phase == phase]
        write_atomic(run_dir / FEATURES / f"{subset}.txt", "".join(f"{name}\n" for name in files))
    write_atomic(run_dir / HEAD_NET, to_text(head_net(plan)))
    write_atomic(run_dir / HEAD_SOLVER, to_text(head_solver(solver, gpu)))
    arguments = ["train", "-solver", HEAD_SOLVER]
    if write_trimmed_weights(plan.weights, run_dir / HEAD_WEIGHTS, plan.head, plan.param_shapes):
        arguments += ["-weights", HEAD_WEIGHTS]
    if gpu is not None:
        arguments += ["-gpu", str(gpu)]
    return arguments + ["-sigint_effect", "stop"]


def merge_model(plan, head_snapshot):
    """Write final.caffemodel: the trunk's blobs from the base weights, the head's from ``head_snapshot``."""
    names = unique(layer.name for layer in plan.net.layer)
    target = plan.run_dir / FINAL_MODEL
    write_trimmed_weights(plan.weights, target, names, plan.param_shapes, override=head_snapshot)
    return target
