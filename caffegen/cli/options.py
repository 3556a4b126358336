"""Options shared by the commands, and the reading and writing they imply.

Each option that several commands take is declared here once (``--caffe``, ``--gpu``, ``--force``,
the device and Slurm groups; the job's options in :mod:`caffegen.cli.joboptions`) and composed by the
commands. Command modules import their work inside the command, so that ``caffegen --help`` and
each command load only what they use.
"""

from pathlib import Path

import click

from caffegen.defaults import FORWARD_BATCH
from caffegen.errors import CaffegenError

STDIN = "-"


def net_argument(command):
    """The input net, a .prototxt path or - for standard input."""
    return click.argument("net_path", metavar="NET.prototxt", type=click.Path(path_type=str))(command)


def proto_option(command):
    """--proto: read and write with a forked Caffe's schema."""
    return click.option("--proto", "proto_path", type=click.Path(path_type=str),
                        help="A forked Caffe's caffe.proto (SSD, DenseNet, …) to read and write with.")(command)


# Where zoo models come from, for every command that lists or downloads them.
ZOO_SOURCE_OPTIONS = [
    click.option("--catalog", "catalogs", multiple=True, type=click.Path(path_type=str), metavar="FILE",
                 help="A catalogue of more models, in the format of the built-in one (also: $CAFFEGEN_ZOO_CATALOG). "
                      "Repeatable."),
    click.option("--mirror", metavar="URL|DIR",
                 help="Download zoo files from URL/NAME/FILE instead of their own URLs (also: $CAFFEGEN_ZOO_MIRROR)."),
    click.option("--offline", is_flag=True, help="Use only the zoo files already downloaded."),
]


def zoo_source_options(command):
    """--catalog, --mirror and --offline, meaning the same for every command that reaches the zoo."""
    for option in reversed(ZOO_SOURCE_OPTIONS):
        command = option(command)
    return command


def output_options(command):
    """-o/--output and --in-place, meaning the same for every command that writes a net."""
    command = click.option("--in-place", is_flag=True, help="Overwrite the input net.")(command)
    return click.option("-o", "--output", type=click.Path(path_type=str),
                        help="Where to write the result (default: standard output).")(command)


NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def number_list(kind, counts=None, positive=False, example=None):
    """A click callback parsing 'a,b,c' into a tuple of ``counts`` numbers of ``kind`` (int or float).

    ``counts`` lists the numbers of numbers allowed; None allows any (and gives () when the option is absent).
    """
    def parse(ctx, param, value):
        if value is None:
            return None if counts else ()
        try:
            numbers = tuple(kind(part) for part in value.split(","))
        except ValueError:
            numbers = ()
        if not numbers or (counts and len(numbers) not in counts) or (positive and min(numbers) <= 0):
            words = " or ".join(NUMBER_WORDS[count] for count in counts) if counts else "comma-separated"
            what = ("positive " if positive else "") + ("integers" if kind is int else "numbers")
            such_as = f", such as {example}" if example else ""
            raise click.BadParameter(f"'{value}': expected {words} {what} {param.metavar}{such_as}")
        return numbers
    return parse


def schema_for(proto_path):
    """BVLC's schema, or the fork's given with --proto."""
    from caffegen.io.schema import BVLC, load_fork_schema
    return load_fork_schema(proto_path) if proto_path else BVLC


def load_net(net_path, proto_path):
    """Read the input net, telling the user when it was upgraded from the legacy V1 format."""
    from caffegen.io.prototxt import decode_text, parse_net, read_net
    schema = schema_for(proto_path)
    if net_path == STDIN:
        loaded = parse_net(decode_text(click.get_binary_stream("stdin").read(), "<stdin>"), "<stdin>", schema)
    else:
        loaded = read_net(net_path, schema)
    if loaded.upgraded_from:
        click.echo(f"{net_path}: upgraded legacy {loaded.upgraded_from} net (layers {{}}) "
                   "to the current layer {} format", err=True)
    return loaded


def write_net(net, net_path, output, in_place):
    """Write ``net`` to the output, to the input with --in-place, or to standard output."""
    from caffegen.io.files import write_atomic
    from caffegen.io.prototxt import to_text
    text = to_text(net)
    target = output or (net_path if in_place else None)
    if target is None:
        click.echo(text, nl=False)
        return
    if net_path == STDIN and in_place:
        raise CaffegenError("--in-place needs a net file, not standard input")
    if net_path != STDIN and _same_file(target, net_path) and not in_place:
        raise CaffegenError("refusing to overwrite the input net; pass --in-place to do that", target)
    write_atomic(target, text)


def report(lines):
    """Tell the user what a command did, on standard error."""
    for line in lines:
        click.echo(line, err=True)


def _same_file(a, b):
    return Path(a).resolve() == Path(b).resolve()


# --caffe: the Caffe binary a command runs, found by itself when not given.
CAFFE_OPTION = click.option("--caffe", "caffe_path", type=click.Path(path_type=str), help="The caffe binary.")


def gpu_option(default, several=True):
    """--gpu: the device a command runs on, ``default`` (in words) when not given; ``several``: more than one GPU."""
    metavar, words = ("ID|all|cpu", "0, 0,1, all or cpu") if several else ("ID|cpu", "0 or cpu")
    return click.option("--gpu", metavar=metavar, help=f"{words} (default: {default}).")


def force_option(words):
    """--force: replace what exists (and go beyond a check, where ``words``, its help, says so)."""
    return click.option("--force", is_flag=True, help=words)


def device_options(command):
    """--gpu and --caffe of the commands that run a trained model."""
    command = CAFFE_OPTION(command)
    command = gpu_option("as the run was prepared", several=False)(command)
    return click.option("--batch-size", type=click.IntRange(min=1), default=FORWARD_BATCH, show_default=True,
                        help="Images per forward pass.")(command)


def engine_option(command):
    """--engine of the commands that run a trained model: Caffe by default, another engine once it agrees with Caffe."""
    from caffegen.job.options import CAFFE, ENGINES
    return click.option("--engine", type=click.Choice(ENGINES), default=CAFFE, show_default=True,
                        help="What computes the probabilities: Caffe; another engine, used once it agrees with Caffe "
                             "on the first mini-batch (else Caffe, saying why); or auto, the fastest of the installed "
                             "engines that agree.")(command)


def slurm_options(slurm_help, scripts):
    """--slurm (``slurm_help``), --slurm-opt and --no-submit of the commands that write Slurm ``scripts`` (in words)
    and submit them."""
    def add(command):
        command = click.option("--no-submit", is_flag=True,
                               help=f"With --slurm: write {scripts} without submitting them.")(command)
        command = click.option("--slurm-opt", "slurm_opts", multiple=True, metavar="OPTION",
                               help=f"With --slurm: an sbatch option for {scripts}, such as --partition=gpu or "
                                    "--gres=gpu:1 (--mem=SIZE also tells caffegen a node's memory). "
                                    "Repeatable.")(command)
        return click.option("--slurm", is_flag=True, help=slurm_help)(command)
    return add


# --mlflow-uri: where MLflow runs go, for every command that sends runs to trackers.
MLFLOW_URI_OPTION = click.option("--mlflow-uri", metavar="URI",
                                 help="The MLflow tracking store or server (default: $MLFLOW_TRACKING_URI, else "
                                      "sqlite:///DIR/mlflow.db in the run or sweep directory).")


def report_to_option(words):
    """--report-to: the trackers (tensorboard, mlflow) a command sends runs to, as ``words``, its help, says."""
    return click.option("--report-to", "report_to", metavar="TRACKER[,TRACKER…]", callback=_trackers, help=words)


def tracking_options(report_to_help):
    """--report-to (``report_to_help``) and --mlflow-uri of the commands that send runs to trackers."""
    def add(command):
        return report_to_option(report_to_help)(MLFLOW_URI_OPTION(command))
    return add


def _trackers(ctx, param, value):
    """The tracker names of --report-to, checked against the table of trackers; () for none, None when absent."""
    from caffegen.run.track.tracker import tracker_names
    return tracker_names(value) if value is not None else None


def tracking_settings(mlflow_uri):
    """Where the trackers send, from --mlflow-uri."""
    from caffegen.run.track.tracker import Settings
    return Settings(mlflow_uri=mlflow_uri)
