"""Real Caffe's blobs for given input blobs: the inputs written to HDF5 and fed by an HDF5Data layer."""

from caffegen.io.featuredb import write_features_h5
from caffegen.net.deployinputs import hdf5_input_net
from caffegen.run.forward import extract_blobs

INPUTS = "inputs.h5"
INPUT_LIST = "inputs.txt"


def caffe_forward(target, net, weights, inputs, blobs, workdir):
    """{blob: float32 array (N, values per item)} of deploy ``net`` with ``weights`` fed ``inputs`` ({name: (N, …)}).

    ``workdir`` receives the inputs, the net Caffe runs, its log and the blobs it writes.
    """
    count = len(next(iter(inputs.values())))
    write_features_h5(workdir / INPUTS, {name: [values] for name, values in inputs.items()}, count,
                      {name: values.shape[1:] for name, values in inputs.items()})
    (workdir / INPUT_LIST).write_text(f"{workdir / INPUTS}\n", encoding="utf-8")
    fed = hdf5_input_net(net, workdir / INPUT_LIST, count)
    return extract_blobs(target, fed, weights, list(blobs), count, count, workdir)
