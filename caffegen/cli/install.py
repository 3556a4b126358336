"""``caffegen install-caffe``: a CPU build of BVLC Caffe 1.0 in a user prefix, without root."""

import click

from caffegen.cli.options import force_option


@click.command("install-caffe")
@click.option("--prefix", type=click.Path(path_type=str), help="Where to install (default: see below).")
@force_option("Install again even when a working install is there.")
def install_caffe_command(prefix, force):
    """Install Debian 11's CPU-only Caffe 1.0 (with OpenBLAS) into a user prefix.

    Default prefix: $CAFFEGEN_CAFFE_PREFIX, else $XDG_DATA_HOME/caffegen/caffe-1.0.
    Prints the path of the caffe wrapper; point CAFFE_BIN at it or let caffegen find it.
    """
    from caffegen.run.install import default_prefix, install_caffe
    caffe = install_caffe(prefix or default_prefix(), force=force, log=lambda line: click.echo(line, err=True))
    click.echo(caffe)
