"""The ``caffegen`` command line: one module per command, user errors as one line and exit code 2."""

import sys

import click

from caffegen import __version__
from caffegen.cli.advise import advise_command
from caffegen.cli.demo import demo_command
from caffegen.cli.evaluate import evaluate_command
from caffegen.cli.export import export_command
from caffegen.cli.freeze import freeze_command
from caffegen.cli.head import head_command
from caffegen.cli.inspect import inspect_command
from caffegen.cli.install import install_caffe_command
from caffegen.cli.launch import launch_command
from caffegen.cli.lint import lint_command
from caffegen.cli.predict import predict_command
from caffegen.cli.prepare import prepare_command
from caffegen.cli.sweep import sweep_command
from caffegen.cli.upgrade import upgrade_command
from caffegen.cli.zoo import zoo_command
from caffegen.errors import CaffegenError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="caffegen")
def cli():
    """Turn a pretrained BVLC Caffe model into a correct fine-tuning job and run it."""


for command in (demo_command, advise_command, zoo_command, prepare_command, launch_command, evaluate_command,
                predict_command, export_command, sweep_command, freeze_command, head_command, lint_command,
                inspect_command, upgrade_command, install_caffe_command):
    cli.add_command(command)


def main(argv=None):
    """Entry point: run the command line and turn user errors into one line on stderr."""
    try:
        return cli.main(args=argv, prog_name="caffegen", standalone_mode=False) or 0
    except CaffegenError as error:
        click.echo(f"caffegen: error: {error}", err=True)
        return error.exit_code
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.UsageError as error:
        hint = f" (see: caffegen {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else ""
        click.echo(f"caffegen: error: {error.format_message()}{hint}", err=True)
        return error.exit_code
    except click.ClickException as error:
        click.echo(f"caffegen: error: {error.format_message()}", err=True)
        return error.exit_code
    except click.Abort:
        click.echo("caffegen: interrupted", err=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
