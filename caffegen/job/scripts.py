"""The run directory's wrappers: ``train.sh`` for POSIX shells and ``train.bat`` (CRLF) for Windows."""

import shlex

from caffegen.io.templates import render_template


def caffe_arguments(weights=None, snapshot=None, gpu=None, flag_style="-"):
    """``caffe train`` arguments as a list: ``-solver``, ``-weights`` or ``-snapshot``, ``-gpu``."""
    if weights and snapshot:
        raise ValueError("Caffe takes -weights or -snapshot, not both")
    pairs = [("solver", "solver.prototxt")]
    if weights:
        pairs.append(("weights", str(weights)))
    if snapshot:
        pairs.append(("snapshot", str(snapshot)))
    if gpu is not None:
        pairs.append(("gpu", str(gpu)))
    if flag_style == "-":
        return ["train"] + [item for name, value in pairs for item in (f"-{name}", value)]
    return ["train"] + [f"--{name}={value}" for name, value in pairs]


def render_train_sh(caffe, weights, gpu, net_name, num_classes):
    """``train.sh``: run Caffe from the run directory, appending its output to train.log."""
    arguments = " ".join(shlex.quote(arg) for arg in caffe_arguments(weights=weights, gpu=gpu))
    return render_template(
        "train.sh.j2", caffe=str(caffe).replace('"', '\\"').replace("$", "\\$").replace("`", "\\`"),
        arguments=arguments, net_name=net_name, num_classes=num_classes)


def render_stages_sh(stage_dirs):
    """``train.sh`` of a staged run: each stage's own train.sh, in order, stopping at the first failure."""
    return render_template("stages.sh.j2", stages=stage_dirs)


def render_train_bat(weights, gpu, net_name, num_classes):
    """``train.bat``: the Windows twin of train.sh, with CRLF line endings and cmd.exe quoting."""
    arguments = " ".join(_bat_argument(arg) for arg in caffe_arguments(weights=weights, gpu=gpu, flag_style="--"))
    return render_template("train.bat.j2", "\r\n", arguments=arguments, net_name=_bat_text(net_name),
                           num_classes=num_classes)


def _bat_argument(argument):
    """One cmd.exe argument: ``--name=value`` with the value quoted when it needs to be."""
    name, sep, value = argument.partition("=")
    if not sep:
        return argument
    if any(char in value for char in ' &()^%!;,=<>|'):
        value = '"' + value + '"'
    return f"{name}={_bat_text(value)}"


def _bat_text(text):
    """Text for a batch file: cmd.exe expands % even inside quotes, so it is doubled."""
    return text.replace("%", "%%")

