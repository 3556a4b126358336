"""The ``caffegen`` command line: one module per command, user errors as one line and exit code 2."""

import importlib
import sys

import click

from caffegen import __version__
from caffegen.errors import CaffegenError

# Every command by name: the module and the click command in it, imported only when that command is
# run or listed, so that a command loads no more than it uses.
COMMANDS = {
    "advise": "caffegen.cli.advise:advise_command",
    "demo": "caffegen.cli.demo:demo_command",
    "evaluate": "caffegen.cli.evaluate:evaluate_command",
    "export": "caffegen.cli.export:export_command",
    "freeze": "caffegen.cli.freeze:freeze_command",
    "head": "caffegen.cli.head:head_command",
    "inspect": "caffegen.cli.inspect:inspect_command",
    "install-caffe": "caffegen.cli.install:install_caffe_command",
    "launch": "caffegen.cli.launch:launch_command",
    "lint": "caffegen.cli.lint:lint_command",
    "predict": "caffegen.cli.predict:predict_command",
    "prepare": "caffegen.cli.prepare:prepare_command",
    "sweep": "caffegen.cli.sweep:sweep_command",
    "upgrade": "caffegen.cli.upgrade:upgrade_command",
    "zoo": "caffegen.cli.zoo:zoo_command",
}


class LazyGroup(click.Group):
    """A group whose commands are imported from ``COMMANDS`` when first asked for."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="caffegen")
def cli():
    """Turn a pretrained BVLC Caffe model into a correct fine-tuning job and run it."""


def main(argv=None):
    """Entry point: run the command line and turn user errors into one line on stderr."""
    try:
        return cli.main(args=argv, prog_name="caffegen", standalone_mode=False) or 0
    except CaffegenError as error:
        _error_line(str(error))
        return error.exit_code
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.UsageError as error:
        hint = f" (see: caffegen {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else ""
        _error_line(error.format_message() + hint)
        return error.exit_code
    except click.ClickException as error:
        _error_line(error.format_message())
        return error.exit_code
    except click.Abort:
        click.echo("caffegen: interrupted", err=True)
        return 130


def _error_line(message):
    """Print ``message`` as one line: line breaks and other control characters in it (from a name in a
    damaged file, say) are written as escapes."""
    line = "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)
    click.echo(f"caffegen: error: {line}", err=True)


if __name__ == "__main__":
    sys.exit(main())
