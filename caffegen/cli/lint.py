"""``caffegen lint``: find the classic fine-tuning traps before Caffe runs."""

import click

from caffegen.cli.options import load_net, net_argument, proto_option


@click.command("lint")
@net_argument
@click.option("--labels", type=click.Path(path_type=str),
              help="A label list (Caffe 'path label' lines, or one class name per line) to check num_output against.")
@proto_option
@click.pass_context
def lint_command(ctx, net_path, labels, proto_path):
    """Check a net; one line per finding (file, layer, problem, fix). Exit 1 with findings, 0 when clean."""
    from caffegen.net.lint import count_classes, lint
    loaded = load_net(net_path, proto_path)
    num_classes = count_classes(labels) if labels else None
    findings = lint(loaded.net, num_classes, path=net_path)
    for finding in findings:
        click.echo(finding.format(net_path))
    ctx.exit(1 if findings else 0)
