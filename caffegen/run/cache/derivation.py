"""Deeper trunks from shallower features.

When one freeze point's trunk continues another's (upto=fc6 and upto=fc7), the deeper features
are the layers in between applied to the shallower ones: the same float32 inputs, the same layers,
so the same features, for a fraction of the work when the layers in between are cheap.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from caffegen.io.prototxt import to_text
from caffegen.io.schema import BVLC
from caffegen.run.cache.store import FEATURE_DATASET, LABEL_DATASET, STORE_RECORD, add_reshape

# Derive when the layers on top cost at most this share of the whole trunk's multiply-adds.
DERIVE_SHARE = 0.5


@dataclass
class Source:
    """A finished store of a shallower trunk, and the layers that compute this trunk's features from its own."""

    path: Path
    record: dict
    layers: list  # names, in the order the trunk runs them


def derivation(plan, store, reporter):
    """The Source to compute ``store`` from, when one exists and saves enough work; says which and why."""
    source = _shallower_store(plan, store)
    if source is None:
        return None
    data = {layer.name for layer in plan.data_layers.values()}
    trunk = [name for name in plan.trunk_names if name not in data]
    whole, rest = (_cost(plan, names) for names in (trunk, source.layers))
    words = f"'{plan.boundary}' from the cached '{source.record['boundary']}' of {source.path}"
    if whole is None or rest is None:
        reporter.line(f"not deriving {words}: the cost of the layers is unknown")
        return None
    saving = f"{_millions(rest)} multiply-adds per image instead of {_millions(whole)}"
    if rest > DERIVE_SHARE * whole:
        reporter.line(f"not deriving {words}: not worth it, {saving}")
        return None
    reporter.line(f"deriving {words}: {saving}")
    return source


def _shallower_store(plan, store):
    """The deepest finished store in the shared folder whose trunk nets begin this store's, or None."""
    if plan.store_root is None:
        return None
    mine = store.layer_digests
    found = None
    for path in sorted(plan.store_root.glob(f"*/{STORE_RECORD}")):
        record = json.loads(path.read_text(encoding="utf-8"))
        theirs = record.get("chunks", {})
        same_inputs = all(record.get(name) == value for name, value in store.inputs.items())
        if path.parent == store.path or not same_inputs or theirs.keys() != mine.keys():
            continue
        depth = len(next(iter(theirs.values())))
        if not all(mine[name][:depth] == digests and len(mine[name]) > depth for name, digests in theirs.items()):
            continue
        if not all((path.parent / f"{name}.h5").is_file() for name in theirs):
            continue
        layers = _layers_on(store.nets[store.work[0].name], depth, record)
        if layers is not None and (found is None or depth > found[0]):
            found = depth, Source(path.parent, record, layers)
    return found and found[1]


def _layers_on(trunk, depth, record):
    """Names of the layers of ``trunk`` after its first ``depth``, when they read nothing but the stored blobs."""
    available = {record["boundary"], record["label"]}
    layers = trunk.layer[depth:]
    for layer in layers:
        if not set(layer.bottom) <= available:
            return None
        available.update(layer.top)
    return [layer.name for layer in layers]


def _cost(plan, names):
    costs = [plan.multiply_adds.get(name) for name in names]
    return None if None in costs else sum(costs)


def _millions(count):
    return f"{count / 1e6:.1f} M"


def derived_net(plan, store, source, chunk):
    """The net computing a chunk's features from the source's: HDF5Data on its features, the layers on top."""
    net = BVLC.NetParameter(name=f"{plan.net.name}_trunk")
    data = net.layer.add(name="cached", type="HDF5Data", top=[FEATURE_DATASET, LABEL_DATASET])
    data.hdf5_data_param.source, data.hdf5_data_param.batch_size = chunk.path(".source.txt"), 1
    if source.record["boundary"] != FEATURE_DATASET:
        add_reshape(net, FEATURE_DATASET, source.record["boundary"], [0] + list(source.record["feature_shape"]))
    if source.record["label"] != LABEL_DATASET:
        add_reshape(net, LABEL_DATASET, source.record["label"], (0,))
    trunk = {layer.name: layer for layer in store.nets[chunk.name].layer}
    net.layer.extend(trunk[name] for name in source.layers)
    return net


def derived_files(plan, store, source):
    """{name in the store: text}: each chunk's derived net and the list of the source features it reads."""
    files = {chunk.path(".prototxt"): to_text(derived_net(plan, store, source, chunk)) for chunk in store.work}
    files.update((chunk.path(".source.txt"), f"{source.path / chunk.path('.h5')}\n") for chunk in store.work)
    return files
