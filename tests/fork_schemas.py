"""Schemas of forked Caffes for tests: BVLC's caffe.proto with a fork's fields and messages added."""

from conftest import ROOT

from caffegen.io.schema import BVLC

SSD_ADDITIONS = ROOT / "tests" / "data" / "ssd_fork.proto"
FIELD_MARK = "//+ "


def fork_proto(path, fields, messages=""):
    """Write BVLC's caffe.proto to ``path`` with ``fields`` ({message: [field lines]}) and ``messages`` added."""
    text = (ROOT / "caffe.proto").read_text()
    for message, lines in fields.items():
        anchor = f"message {message} {{"
        assert text.count(anchor) == 1, anchor
        text = text.replace(anchor, "\n  ".join([anchor, *lines]))
    path.write_text(text + "\n" + messages)
    return path


def ceil_mode_proto(path):
    """DenseNet-Caffe's schema: BVLC's with ``ceil_mode`` in PoolingParameter."""
    number = max(field.number for field in BVLC.PoolingParameter.DESCRIPTOR.fields) + 1
    return fork_proto(path, {"PoolingParameter": [f"optional bool ceil_mode = {number} [default = true];"]})


def densenet_for_caffe(folder):
    """The zoo's DenseNet-121 read through its fork's schema (written into ``folder``), its ceil_mode fields removed
    so that BVLC Caffe reads it: its poolings then round up, as Caffe 1.0's always do."""
    from conftest import ZOO

    from caffegen.io.prototxt import parse_net, read_net, to_text
    from caffegen.io.schema import load_fork_schema
    schema = load_fork_schema(ceil_mode_proto(folder / "caffe.proto"))
    net = read_net(ZOO / "densenet/DenseNet_121.prototxt", schema).net
    for layer in net.layer:
        layer.pooling_param.ClearField("ceil_mode")
    return parse_net(to_text(net), "DenseNet_121.prototxt").net


def ssd_proto(path):
    """SSD's schema, as far as tests/data/ssd_fork.proto copies it: its messages and the fields it adds."""
    fields, messages = {}, []
    for line in SSD_ADDITIONS.read_text().splitlines():
        if line.startswith(FIELD_MARK):
            message, declaration = line[len(FIELD_MARK):].split(": ", 1)
            fields.setdefault(message, []).append(declaration)
        else:
            messages.append(line)
    return fork_proto(path, fields, "\n".join(messages) + "\n")
