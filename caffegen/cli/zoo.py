"""``caffegen zoo``: the catalogue of pretrained models, and their verified download."""

import json
import os
import shutil
from pathlib import Path

import click

from caffegen.cli.options import zoo_source_options
from caffegen.errors import CaffegenError
from caffegen.io.quoting import sh_command
from caffegen.io.tables import text_table

HEADER = ("NAME", "TASK", "INPUT", "SIZE", "LICENCE", "VERIFIED BY", "DOWNLOADED")
FOOTNOTES = {
    "sha256 prefix": "sha256 prefix: its source publishes only the first digits of the SHA-256; the first download's "
                     "full SHA-256 is recorded and checked from then on",
    "size only": "size only: its source publishes no checksum; the download is checked by its size, and the first "
                 "download's SHA-256 is recorded and checked from then on",
    "none": "none: neither a checksum nor a size is known; the first download's SHA-256 is recorded and checked "
            "from then on",
}


@click.group("zoo")
def zoo_command():
    """Pretrained models to fine-tune: list them, download one verified, then prepare --model NAME."""


@zoo_command.command("list")
@zoo_source_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(catalogs, mirror, offline, as_json):
    """Each model's name, task, input size, size on disk, licence, how its download is verified, and whether
    it is downloaded already (in $CAFFEGEN_HOME, default ~/.cache/caffegen)."""
    from caffegen.io.download import cache_home
    from caffegen.io.zoo import load_catalog, model_state
    catalog = load_catalog(catalogs)
    rows = [(model, model_state(model)) for model in catalog]
    if as_json:
        click.echo(json.dumps([dict(model.to_json(), input=list(model.preprocessing.input_size),
                                    downloaded=state.words, bytes_on_disk=state.bytes) for model, state in rows],
                              indent=2))
        return
    table = [(model.name, model.task, "×".join(map(str, model.preprocessing.input_size)), _size(model, state),
              model.licence, _verified_by(model.weights.verified_by), state.words) for model, state in rows]
    for line in text_table(HEADER, table):
        click.echo(line)
    kinds = {_verified_by(model.weights.verified_by) for model in catalog}
    for kind, text in FOOTNOTES.items():
        if kind in kinds:
            click.echo(text, err=True)
    click.echo(f"downloads go to {cache_home() / 'zoo'}; fetch one with: caffegen zoo get NAME", err=True)


@zoo_command.command("get")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(path_type=str), metavar="DIR",
              help="Also copy the files into DIR (they stay in the cache for prepare --model).")
@zoo_source_options
def get_command(name, output, catalogs, mirror, offline):
    """Download model NAME's deploy net, weights, mean file and class names, each verified (resumed if interrupted).

    Files already downloaded are verified and kept; a file is replaced only by one that passes.
    """
    from caffegen.io.zoo import fetch_model, load_catalog, read_class_names
    from caffegen.reporting import reporter_for_stderr
    model = load_catalog(catalogs).find(name)
    fetched = fetch_model(model, mirror=mirror, offline=offline, reporter=reporter_for_stderr())
    for role, file in fetched.files.items():
        remote = model.remotes().get(role)
        click.echo(f"{role}: {file.path} ({_bytes(file.path.stat().st_size)}, {_how(remote, file)})", err=True)
    if output:
        _copy_out(fetched, Path(output))
        click.echo(f"copied into {output}", err=True)
    names = fetched.class_names
    if names:
        click.echo(f"{len(read_class_names(names))} class names in {names.name}", err=True)
    click.echo(f"licence: {model.licence}" + (f"; {model.note}" if model.note else ""), err=True)
    click.echo(f"fine-tune it with: {sh_command('caffegen', 'prepare', '--model', model.name)} --data DIR -o RUN",
               err=True)


def _how(remote, file):
    if remote is None:
        return "inline in the catalogue"
    action = "downloaded" if file.downloaded else "already there"
    if remote.fully_checksummed:
        source = f" ({remote.checksum_from})" if remote.checksum_from else ""
        return f"{action}, {remote.verified_by} verified{source}"
    checked = {"none": "", "size only": ", its size checked"}.get(remote.verified_by,
                                                                  f", its {remote.verified_by} checked")
    if file.recorded_sha256:
        return (f"{action}{checked}; no full published checksum: recorded its sha256 {file.recorded_sha256} for "
                "later checks")
    also = {"none": "", "size only": "its size and "}.get(remote.verified_by, f"its {remote.verified_by} and ")
    return f"{action}, checked: {also}the sha256 recorded at its first download"


def _copy_out(fetched, folder):
    """Copy the model's files (and their SHA-256 records) into ``folder``, each through a temporary name."""
    from caffegen.io.download import record_path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for file in fetched.files.values():
            for source in (file.path, record_path(file.path)):
                if source.is_file() and source.parent != folder.resolve():
                    staging = folder / f".{source.name}.copy"
                    shutil.copyfile(source, staging)
                    os.replace(staging, folder / source.name)
    except OSError as error:
        raise CaffegenError(f"cannot copy the model's files here: {error.strerror}", folder) from None


def _verified_by(kind):
    return "sha256 prefix" if kind.startswith("sha256 prefix") else kind


def _size(model, state):
    if state.present == state.total:
        return _bytes(state.bytes)
    if model.weights.size:
        return _bytes(model.weights.size)
    if model.size_mib:
        return "~" + _bytes(model.size_mib * 2 ** 20)
    return "?"


def _bytes(count):
    return f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count / 1e3:.1f} kB"
