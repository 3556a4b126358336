"""The databases Caffe's ``extract_features`` writes: one float ``Datum`` per image, keyed by its index."""

import lmdb
import numpy as np

from caffegen.errors import CaffegenError
from caffegen.io.schema import BVLC


def read_feature_db(path, count):
    """The first ``count`` records of the feature LMDB ``path`` as a float32 array (count, values per image).

    ``extract_features`` runs whole mini-batches, so it stores a few records past the last image
    (the data layer wraps around to the start); keys are zero-padded indices, so they sort in order.
    """
    try:
        with lmdb.open(str(path), readonly=True, lock=False, readahead=False) as env, env.begin() as transaction:
            rows = [np.asarray(BVLC.Datum.FromString(value).float_data, dtype=np.float32)
                    for _, value in zip(range(count), transaction.cursor().iternext(keys=False))]
    except lmdb.Error as error:
        raise CaffegenError(f"cannot read the features Caffe wrote: {error}", path) from None
    if len(rows) < count:
        raise CaffegenError(f"Caffe wrote {len(rows)} feature records, {count} were expected", path)
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)
