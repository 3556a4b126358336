"""``caffegen inspect``: shapes, parameters and learning rates of a net, and what it takes from a caffemodel."""

import json
from pathlib import Path

import click

from caffegen.cli.options import STDIN, load_net, net_argument, number_list, proto_option
from caffegen.io.tables import text_table
from caffegen.net.inspect import LOADED, MISMATCH, NEW, UNVERIFIED, input_from_data, inspect_net
from caffegen.net.memory import PART_WORDS, format_bytes, inspected_memory, weights_copy
from caffegen.net.netview import TEST, TRAIN
from caffegen.net.shapes import IMAGE_SIZE_HINT, format_shape


@click.command("inspect")
@net_argument
@click.option("--weights", "weights_path", metavar="FILE.caffemodel", type=click.Path(path_type=str),
              help="Pretrained weights: say what each layer gets from them.")
@click.option("--phase", type=click.Choice([TRAIN, TEST], case_sensitive=False), default=TRAIN, show_default=True,
              help="The phase whose layers to show.")
@click.option("--input-shape", callback=number_list(int, (4,), positive=True, example="1,3,224,224"), metavar="N,C,H,W",
              help="Shape of the data where the net does not give it (the images of an LMDB, say).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@proto_option
@click.pass_context
def inspect_command(ctx, net_path, weights_path, phase, input_shape, as_json, proto_path):
    """Show each layer's output shape, learnable parameters, learning rates and whether it learns.

    Without --input-shape, the data's size comes from the data layer's files where they are found (the
    first HDF5 file, LMDB Datum or image). With --weights, also what each layer gets from the caffemodel,
    matched by name as Caffe copies weights: loaded, unverified (no known dimension differs, but some are
    unknown), new (not in the weights: its fillers initialise it), mismatch (same name, another shape:
    Caffe would abort), none (nothing to learn); and the weights' layers the net ignores.
    Then the estimated peak memory of `caffe train` (TRAIN and TEST nets, SGD) and of `caffe test`
    (TEST net) on the CPU, by part; for the train_val.prototxt of a run prepared with --cache-features,
    also of its feature extraction, at the mini-batch it would run with on this machine.
    Exit 1 when Caffe would reject the net or abort loading the weights, 0 otherwise.
    """
    from caffegen.job.memorycheck import cached_extraction
    from caffegen.run.target import available_ram
    loaded = load_net(net_path, proto_path)
    note = None
    if input_shape is None and net_path != STDIN:
        input_shape, note = input_from_data(loaded.net, phase, Path(net_path).parent)
    inspection = inspect_net(loaded.net, phase, input_shape, weights_path, path=net_path)
    memory = inspected_memory(loaded.net, input_shape, weights_copy(inspection.model) if inspection.model else None,
                              net_path)
    extraction = cached_extraction(net_path, available_ram()) if net_path != STDIN else None
    if extraction:
        memory.append(extraction[0])
    if as_json:
        click.echo(json.dumps(dict(inspection.to_json(), input_note=note,
                                   memory=[process.to_json() for process in memory]), indent=2))
    else:
        if note:
            click.echo(f"note: {note}")
        for line in [*render(inspection, net_path), *render_memory(memory)]:
            click.echo(line)
        if extraction:
            click.echo(extraction[1].line())
    ctx.exit(1 if inspection.caffe_would_abort else 0)


def render(inspection, net_path):
    """The lines of the inspection as a table, totals, notes and weight findings."""
    with_weights = inspection.weights_path is not None
    header = ["layer", "type", "output", "params", "lr_mult", "decay_mult", "state"] + (["weights"] * with_weights)
    rows = [[report.name, report.type, _shapes(report.tops.values()), _shapes(report.params or []) or "",
             _numbers(report.lr_mult), _numbers(report.decay_mult), report.state]
            + ([report.weights] * with_weights) for report in inspection.layers]
    yield from text_table(header, rows)
    yield ""
    totals = inspection.totals()
    yield from _totals(totals, inspection.phase)
    for report in inspection.layers:
        if report.note:
            yield f"note: layer '{report.name}': {report.note}"
    if with_weights:
        yield from _weight_findings(inspection, totals, net_path)


def render_memory(processes):
    """The lines of the memory estimates: one column per process, one row per part, then the peak."""
    if not processes:
        return []
    names = [name for name in PART_WORDS if any(process.parts.get(name) for process in processes)]
    rows = [[PART_WORDS[name]] + [_bytes(process.parts.get(name)) for process in processes] for name in names]
    moments = [process.peak - process.resident for process in processes]
    if any(moments):
        rows.append(["+ for a moment (weights, snapshot)"] + [_bytes(moment) for moment in moments])
    rows.append(["peak"] + [format_bytes(process.peak) for process in processes])
    lines = ["", "memory, estimated for Caffe 1.0 on the CPU:"]
    lines += text_table(["part"] + [process.what for process in processes], rows)
    unknown = sorted({name for process in processes for name in process.unknown})
    if unknown:
        lines.append(f"unverified: the memory of {_plural(len(unknown), 'layer')} of unknown size "
                     f"({', '.join(unknown[:3])}{', …' if len(unknown) > 3 else ''}) is left out; {IMAGE_SIZE_HINT}")
    return lines


def _bytes(count):
    return format_bytes(count) if count else "-"


def _shapes(shapes):
    return ", ".join(format_shape(shape) for shape in shapes)


def _numbers(values):
    return ", ".join(f"{value:g}" for value in values)


def _totals(totals, phase):
    trainable, frozen = totals["params_trainable"], totals["params_frozen"]
    unknown = totals["param_blobs_unknown"]
    extra = f", and {_plural(unknown, 'blob')} of unknown size" if unknown else ""
    yield (f"{phase} phase: {trainable + frozen:,} learnable parameters: {trainable:,} trainable, "
           f"{frozen:,} frozen{extra}")
    partial = totals["layers_unknown_multiply_adds"]
    extra = f" (not counting {_plural(partial, 'layer')} of unknown shape)" if partial else ""
    yield (f"forward pass: {_human(totals['multiply_adds'])} multiply-adds in convolution and inner-product "
           f"layers{extra}")


def _plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _human(count):
    for size, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return str(count)


def _weight_findings(inspection, totals, net_path):
    unverified = totals["layers_unverified"]
    why = f" (shapes partly unknown: {IMAGE_SIZE_HINT})" if unverified else ""
    yield (f"weights {inspection.weights_path}: {_plural(totals['layers_loaded'], 'layer')} loaded, "
           f"{unverified} unverified{why}, {totals['layers_new']} new, {totals['layers_mismatch']} mismatched, "
           f"{totals['layers_ignored']} ignored")
    new = [report.name for report in inspection.layers if report.weights == NEW]
    if new:
        yield f"new (not in the weights, initialised by their fillers): {', '.join(new)}"
    if inspection.ignored:
        yield f"ignored (in the weights, not in the net): {', '.join(inspection.ignored)}"
    for problem in inspection.problems:
        yield problem.format(net_path)
    if not any(report.weights in (LOADED, UNVERIFIED, MISMATCH) for report in inspection.layers):
        yield "warning: no layer of the net takes anything from these weights: are they for another net?"
