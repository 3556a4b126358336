"""The ``caffegen`` command line: one module per command, user errors as one line and exit code 2.

SIGTERM unwinds the command like an error, so that its temporary files are removed, and exits 143.
"""

import contextlib
import importlib
import signal
import sys
import threading

import click

from caffegen import __version__
from caffegen.errors import FULL_OR_READ_ONLY, WRITE_ERRNOS, CaffegenError, Terminated, cannot_write, one_line

# Every command by name: the module and the click command in it, imported only when that command is
# run or listed, so that a command loads no more than it uses.
COMMANDS = {
    "advise": "caffegen.cli.advise:advise_command",
    "convert": "caffegen.cli.convert:convert_command",
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
    "report-to": "caffegen.cli.reportto:report_to_command",
    "sweep": "caffegen.cli.sweep:sweep_command",
    "upgrade": "caffegen.cli.upgrade:upgrade_command",
    "watch": "caffegen.cli.watch:watch_command",
    "zoo": "caffegen.cli.zoo:zoo_command",
}
TERMINATED = 128 + signal.SIGTERM


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
        with _terminable():
            return cli.main(args=argv, prog_name="caffegen", standalone_mode=False) or 0
    except Terminated:
        click.echo("caffegen: terminated", err=True)
        return TERMINATED
    except CaffegenError as error:
        click.echo(f"caffegen: error: {error}", err=True)
        return error.exit_code
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        # Where no write site named the place, a denied read is as likely as a denied write.
        failure = cannot_write(error) if error.errno in FULL_OR_READ_ONLY else CaffegenError(
            error.strerror, error.filename2 or error.filename)
        click.echo(f"caffegen: error: {failure}", err=True)
        return failure.exit_code
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.UsageError as error:
        hint = f" (see: caffegen {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else ""
        click.echo(f"caffegen: error: {one_line(error.format_message() + hint)}", err=True)
        return error.exit_code
    except click.ClickException as error:
        click.echo(f"caffegen: error: {one_line(error.format_message())}", err=True)
        return error.exit_code
    except click.Abort:
        click.echo("caffegen: interrupted", err=True)
        return 130


@contextlib.contextmanager
def _terminable():
    """SIGTERM raises Terminated while the command runs (in the main thread, the only one signals reach)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


if __name__ == "__main__":
    sys.exit(main())
