"""The run directory's wrappers: ``train.sh`` for POSIX shells and ``train.bat`` (CRLF) for Windows.

Every path in them is quoted by :mod:`caffegen.io.quoting` for its shell; their comments name no input.
"""

from caffegen.io.quoting import CannotQuote, bat_word, sh_word
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


def wrapper_scripts(caffe, weights, gpu, num_classes, notes):
    """{name: text} of train.sh and train.bat; train.bat is left out, with a note, where cmd.exe cannot take a path."""
    scripts = {"train.sh": render_train_sh(caffe, weights, gpu, num_classes)}
    try:
        scripts["train.bat"] = render_train_bat(weights, gpu, num_classes)
    except CannotQuote as reason:
        notes.append(f"train.bat is not written: {reason}; pass --copy-data for a run directory whose paths are "
                     "its own")
        return scripts
    if not scripts["train.bat"].isascii():
        notes.append("train.bat names a non-ASCII path: cmd reads it as UTF-8 on Windows 10 and later only; "
                     "elsewhere pass --copy-data, so that every path in it is relative to the run directory")
    return scripts


def render_train_sh(caffe, weights, gpu, num_classes):
    """``train.sh``: run Caffe from the run directory, appending its output to train.log."""
    arguments = " ".join(sh_word(arg) for arg in caffe_arguments(weights=weights, gpu=gpu))
    return render_template("train.sh.j2", caffe=sh_word(caffe), arguments=arguments, num_classes=num_classes)


def render_stages_sh(stage_dirs):
    """``train.sh`` of a staged run: each stage's own train.sh, in order, stopping at the first failure."""
    return render_template("stages.sh.j2", stages=[sh_word(f"./{folder}/train.sh") for folder in stage_dirs])


def render_train_bat(weights, gpu, num_classes):
    """``train.bat``: the Windows twin of train.sh, with CRLF line endings and cmd.exe quoting.

    Raises ``CannotQuote`` when a path in it is one cmd.exe cannot take (a double quote, a line break).
    """
    arguments = " ".join(_bat_argument(arg) for arg in caffe_arguments(weights=weights, gpu=gpu, flag_style="--"))
    return render_template("train.bat.j2", "\r\n", arguments=arguments, num_classes=num_classes)


def _bat_argument(argument):
    """One cmd.exe argument: ``--name="value"``."""
    name, sep, value = argument.partition("=")
    if not sep:
        return argument
    option = name.lstrip("-")
    return f"{name}={bat_word(value, f'the {option} value')}"

