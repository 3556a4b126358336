"""Published nets mutated at random, and damaged caffemodels, through every net command: never a traceback.

Each case mutates a zoo net at the message level (a field dropped, a number set to 0, -1 or a huge
value, a layer removed, duplicated or given another's name, a bottom renamed) or damages its caffemodel
(cut short, bytes flipped), and runs one command on it in this process: inspect (with and without
--weights), freeze, head, lint, upgrade (with and without --weights) or advise. Every case must end in
exit code 0, 1 or 2 without a traceback, a failure in one ``caffegen: error:`` line, and a command that
failed must leave no output file. ``python tests/test_fuzz.py SEED CASES [KEEP]`` runs another seed,
copying the inputs of each crash into the folder KEEP.
"""

import contextlib
import random
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DIGITS, ZOO, run_caffegen, zoo_nets
from google.protobuf.descriptor import FieldDescriptor

from caffegen.io.prototxt import parse_text, read_net, read_text, to_text
from caffegen.io.schema import BVLC
from caffegen.net.netview import TRAIN, NetView
from caffegen.net.shapes import infer_shapes, product

SEED = 20240607
CASES = 2000
NUMERIC = {"int32": (0, -1, 2**31 - 1), "int64": (0, -1, 2**63 - 1), "uint32": (0, 2**32 - 1),
           "uint64": (0, 2**64 - 1), "float": (0.0, -1.0, 1e30), "double": (0.0, -1.0, 1e300)}
TYPE_NAMES = {getattr(FieldDescriptor, f"TYPE_{name.upper()}"): name for name in NUMERIC}
CASE_SECONDS = 10
STORED_VALUES = 4096  # blobs larger than this are written with their shape only


@dataclass
class Corpus:
    """The zoo nets as parsed messages (V1 nets as they are) and a caffemodel for each, by net name."""

    nets: dict
    weights: dict


@dataclass
class Outcome:
    """What one case ran and how it ended."""

    what: str
    args: list
    code: int = None
    crash: str = None


@pytest.mark.zoo
def test_mutated_nets_and_damaged_weights_end_in_one_line_at_most(zoo, tmp_path):
    started = time.perf_counter()
    outcomes = run_fuzz(build_corpus(tmp_path / "corpus"), SEED, CASES, tmp_path / "cases")
    codes = Counter(outcome.code for outcome in outcomes)
    print(f"fuzz: {len(outcomes)} cases, seed {SEED}, exit codes {dict(sorted(codes.items(), key=str))}, "
          f"{time.perf_counter() - started:.1f} s")
    crashes = [outcome for outcome in outcomes if outcome.crash]
    assert not crashes, "\n".join(f"{c.what}: caffegen {' '.join(map(str, c.args))}: {c.crash}" for c in crashes[:10])
    assert set(codes) <= {0, 1, 2} and len(codes) == 3


def build_corpus(folder):
    """Parse every zoo net and write a caffemodel for it, plus the bundled digits net and weights."""
    folder.mkdir(parents=True, exist_ok=True)
    nets, weights = {}, {}
    for name in zoo_nets() + ["digits"]:
        path = DIGITS / "train_val.prototxt" if name == "digits" else ZOO / name
        nets[name] = parse_text(read_text(path), BVLC.NetParameter(), path)
        weights[name] = DIGITS / "digits.caffemodel" if name == "digits" else _weights_for(nets[name], path, folder)
    return Corpus(nets, weights)


def _weights_for(net, path, folder):
    """A caffemodel as Caffe writes one, legacy V1 for a V1 net: the net's layers with their learnable blobs,
    values where they are small, their shapes only where large."""
    shapes = {result.name: result.params or [] for result in infer_shapes(NetView(read_net(path).net, TRAIN))}
    model = BVLC.NetParameter()
    model.CopyFrom(net)
    for layer in list(model.layer) + list(model.layers):
        for shape in shapes.get(layer.name, []):
            dims = [dim or 1 for dim in shape or ()]
            blob = layer.blobs.add()
            if len(model.layers):
                blob.num, blob.channels, blob.height, blob.width = ([1] * 4 + dims)[-4:]
            else:
                blob.shape.dim.extend(dims)
            if product(dims) <= STORED_VALUES:
                blob.data.extend([0.5] * product(dims))
    target = folder / (path.parent.name + "_" + path.stem + ".caffemodel")
    target.write_bytes(model.SerializeToString())
    return target


def run_fuzz(corpus, seed, cases, folder, keep=None):
    """Run ``cases`` random cases; the outcome of each. The inputs of each crash are copied into ``keep``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(corpus.nets)
    # Parsing text takes most of the time: a net is drawn in inverse proportion to the square root of its size,
    # so ResNet-152, 27 times the text of AlexNet, comes up a fifth as often.
    odds = [corpus.nets[name].ByteSize() ** -0.5 for name in names]
    outcomes = []
    for number in range(cases):
        outcomes.append(_run_case(corpus, rng.choices(names, odds)[0], rng, folder))
        if keep and outcomes[-1].crash:
            shutil.copytree(folder, Path(keep) / str(number))
    return outcomes


def _run_case(corpus, name, rng, folder):
    net_path, weights_path = folder / "net.prototxt", folder / "weights.caffemodel"
    outputs = [folder / "out.prototxt", folder / "out.caffemodel"]
    for output in outputs:
        output.unlink(missing_ok=True)
    net = BVLC.NetParameter()
    net.CopyFrom(corpus.nets[name])
    weights = corpus.weights[name].read_bytes()
    if rng.random() < 0.8:
        what = ", ".join(_mutate(net, rng) for _ in range(rng.randint(1, 3)))
        command = rng.choice(["inspect", "inspect-weights", "freeze", "head", "lint", "upgrade", "advise"])
    else:
        weights, what = _damage(weights, rng)
        command = rng.choice(["inspect-weights", "upgrade-weights"])
    net_path.write_text(to_text(net), encoding="utf-8")
    weights_path.write_bytes(weights)
    args = _arguments(command, net_path, weights_path, outputs, net, rng)
    outcome = Outcome(f"{name} ({what})", args)
    try:
        with _time_limit(CASE_SECONDS):
            result = run_caffegen(*args)
    except Exception as error:  # an exception escaping caffegen.cli.main is what this test looks for
        outcome.crash = "".join(traceback.format_exception_only(error)).strip() + _where(error)
        return outcome
    outcome.code = result.returncode
    printed, last = result.stdout + result.stderr, (result.stderr.strip().splitlines() or [""])[-1]
    if "Traceback" in printed or result.returncode not in (0, 1, 2):
        outcome.crash = f"exit {result.returncode}: {printed[-500:]}"
    elif result.returncode == 2 and not last.startswith("caffegen: error: "):
        outcome.crash = f"exit 2 without an error line: {result.stderr[-500:]}"
    elif result.returncode != 0 and any(output.exists() for output in outputs):
        outcome.crash = f"exit {result.returncode} left an output file: {result.stderr[-300:]}"
    return outcome


class TooSlow(Exception):
    """A case ran longer than it may: a loop that does not end, most likely."""


@contextlib.contextmanager
def _time_limit(seconds):
    def interrupt(signum, frame):
        raise TooSlow(f"no answer after {seconds} s")
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _where(error):
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"


def _arguments(command, net_path, weights_path, outputs, net, rng):
    layers = [layer.name for layer in list(net.layer) + list(net.layers)]
    if command == "inspect":
        return ["inspect", net_path] + (["--json"] if rng.random() < 0.3 else [])
    if command == "inspect-weights":
        return ["inspect", net_path, "--weights", weights_path]
    if command == "freeze":
        return ["freeze", net_path, "--upto", rng.choice(layers or ["conv1"]), "-o", outputs[0]]
    if command == "head":
        return ["head", net_path, "--num-output", 3, "-o", outputs[0]]
    if command == "lint":
        return ["lint", net_path]
    if command == "upgrade":
        return ["upgrade", net_path, "-o", outputs[0]]
    if command == "upgrade-weights":
        return ["upgrade", net_path, "-o", outputs[0], "--weights", weights_path, "--weights-out", outputs[1]]
    return ["advise", "--net", net_path, "--train-images", rng.choice([10, 5000, 100000]),
            "--similarity", rng.choice(["high", "low"])] + (["--classes", 3] if rng.random() < 0.5 else [])


def _mutate(net, rng):
    """Apply one random mutation to ``net``; say what it was."""
    layers = net.layer if len(net.layer) else net.layers
    mutation = rng.choice(["drop", "number", "number", "set", "remove", "bottom", "name", "duplicate"])
    if mutation == "remove" and len(layers):
        index = rng.randrange(len(layers))
        name = layers[index].name
        del layers[index]
        return f"removed layer '{name}'"
    if mutation == "duplicate" and len(layers):
        return _duplicate_layer(layers, rng)
    if mutation == "bottom":
        readers = [layer for layer in layers if len(layer.bottom)]
        if readers:
            layer = rng.choice(readers)
            blobs = [top for other in layers for top in other.top] + ["nowhere"]
            index = rng.randrange(len(layer.bottom))
            layer.bottom[index] = rng.choice(blobs)
            return f"bottom {index} of '{layer.name}' is '{layer.bottom[index]}'"
    if mutation == "name" and len(layers) > 1:
        layer, other = rng.sample(list(layers), 2)
        layer.name = other.name
        return f"a layer renamed '{other.name}'"
    if mutation == "set" and len(layers):
        return _set_number(rng.choice(layers), rng)
    if mutation == "number":
        return _change_number(net, rng)
    return _drop_field(net, rng)


def _duplicate_layer(layers, rng):
    """Insert a copy of a random layer at a random place (the container has no insert)."""
    copies = []
    for layer in layers:
        copy = type(layer)()
        copy.CopyFrom(layer)
        copies.append(copy)
    source, position = rng.randrange(len(copies)), rng.randrange(len(copies) + 1)
    copies.insert(position, copies[source])
    del layers[:]
    layers.extend(copies)
    return f"layer '{copies[source].name}' duplicated at {position}"


def _set_fields(message):
    """(message, field, index) of every value set in ``message`` and its sub-messages; index None: not repeated."""
    for field, value in message.ListFields():
        values = list(value) if field.is_repeated else [value]
        for index, item in enumerate(values):
            yield message, field, index if field.is_repeated else None
            if field.message_type is not None:
                yield from _set_fields(item)


def _drop_field(net, rng):
    message, field, index = rng.choice(list(_set_fields(net)))
    if index is None:
        message.ClearField(field.name)
    else:
        del getattr(message, field.name)[index]
    return f"dropped {message.DESCRIPTOR.name}.{field.name}" + ("" if index is None else f"[{index}]")


def _change_number(net, rng):
    found = [(message, field, index) for message, field, index in _set_fields(net)
             if field.type in TYPE_NAMES or field.enum_type is not None]
    if not found:
        return _drop_field(net, rng)
    message, field, index = rng.choice(found)
    if field.enum_type is not None:
        value = rng.choice([number for number in field.enum_type.values_by_number])
    else:
        value = rng.choice(NUMERIC[TYPE_NAMES[field.type]])
    if index is None:
        setattr(message, field.name, value)
    else:
        getattr(message, field.name)[index] = value
    return f"{message.DESCRIPTOR.name}.{field.name} = {value}"


def _set_number(layer, rng):
    """Give a number field of ``layer`` or of one of its messages (mostly those it sets) one of the values."""
    messages = [getattr(layer, field.name) for field in layer.DESCRIPTOR.fields
                if field.message_type is not None and not field.is_repeated]
    present = [value for field, value in layer.ListFields() if field.message_type is not None and not field.is_repeated]
    message = rng.choice([layer] + present) if rng.random() < 0.7 else rng.choice(messages)
    fields = [field for field in message.DESCRIPTOR.fields if field.type in TYPE_NAMES]
    if not fields:
        return f"nothing to set in {message.DESCRIPTOR.name}"
    field = rng.choice(fields)
    value = rng.choice(NUMERIC[TYPE_NAMES[field.type]])
    if field.is_repeated:
        getattr(message, field.name).append(value)
    else:
        setattr(message, field.name, value)
    return f"{message.DESCRIPTOR.name}.{field.name} set to {value}"


def _damage(data, rng):
    """``data`` cut short or with bytes flipped; and which."""
    if rng.random() < 0.4:
        size = rng.randrange(len(data))
        return data[:size], f"caffemodel cut at {size} of {len(data)} bytes"
    damaged = bytearray(data)
    offsets = [rng.randrange(min(len(data), rng.choice([64, 4096, len(data)]))) for _ in range(rng.randint(1, 8))]
    for offset in offsets:
        damaged[offset] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
    return bytes(damaged), f"caffemodel bytes flipped at {sorted(offsets)}"


if __name__ == "__main__":
    import tempfile
    seed, count = (int(arg) for arg in sys.argv[1:3])
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        results = run_fuzz(build_corpus(Path(scratch) / "corpus"), seed, count, Path(scratch) / "cases",
                           keep=sys.argv[3] if len(sys.argv) > 3 else None)
        for number, result in enumerate(results):
            if result.crash:
                print(f"{number}: {result.what}: caffegen {' '.join(map(str, result.args))}\n    {result.crash}")
        print(f"seed {seed}: {len(results)} cases, exit codes {Counter(r.code for r in results)}, "
              f"{sum(bool(r.crash) for r in results)} crashes, {time.perf_counter() - began:.1f} s")
