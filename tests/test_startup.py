"""Start-up is part of the interface: the command line loads heavy libraries only in the commands that use them.

One fresh interpreter imports the command line, asks every command for its help, then runs the net
commands on the bundled model, and reports which libraries each step left loaded.
"""

import json
import subprocess
import sys

from conftest import DIGITS

from caffegen.cli import COMMANDS

# Libraries that cost a command from a tenth of a second to seconds to import.
HEAVY = ("sklearn", "scipy", "matplotlib", "cv2", "h5py", "lmdb", "onnx", "onnxruntime", "openvino")
# What the help of every command needs none of either.
NOT_FOR_HELP = HEAVY + ("numpy", "PIL", "jinja2", "tqdm")

PROBE = """
import io, json, sys
from contextlib import redirect_stderr, redirect_stdout

def loaded():
    return sorted({name.split(".")[0] for name in sys.modules} & set(NAMES))

def run(*args):
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        code = main(list(args))
    assert code in (0, 1), (args, code)

steps = {}
from caffegen.cli import COMMANDS, main
steps["import caffegen.cli"] = loaded()
run("--help")
steps["caffegen --help"] = loaded()
for command in COMMANDS:
    run(command, "--help")
steps["every command's --help"] = loaded()
net, weights, out = sys.argv[1:4]
run("freeze", "--upto", "conv2", net, "-o", out + "/frozen.prototxt")
run("head", "--num-output", "3", net, "-o", out + "/head.prototxt")
run("lint", net)
run("inspect", net, "--weights", weights)
run("inspect", net, "--weights", weights, "--json")
steps["freeze, head, lint, inspect"] = loaded()
print(json.dumps(steps))
"""


def steps(tmp_path):
    names = f"NAMES = {list(NOT_FOR_HELP)!r}\n"
    done = subprocess.run([sys.executable, "-c", names + PROBE, DIGITS / "train_val.prototxt",
                           DIGITS / "digits.caffemodel", tmp_path], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_command_line_and_every_help_load_no_heavy_library(tmp_path):
    loaded = steps(tmp_path)
    for step in ("import caffegen.cli", "caffegen --help", "every command's --help"):
        assert loaded[step] == [], f"{step} loaded {loaded[step]}"
    assert not set(loaded["freeze, head, lint, inspect"]) & set(HEAVY), loaded


def test_every_command_is_in_the_table_and_lists_in_the_help(cli):
    listed = [line.split()[0] for line in cli("--help").stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == sorted(COMMANDS)
