"""Shards of one feature extraction: the parts of its chunks that the tasks of a Slurm job array compute at once.

Shard i of N is the i-th of N contiguous runs of the extraction's mini-batches, so its boundaries
fall where an unsharded extraction's mini-batches begin and every image goes through Caffe with the
same batch shape: the features are the same, bit for bit. Where a shard covers rows a:b of a chunk,
it writes ``<chunk>.rows-a-b.h5``, complete or not at all, so a task run again skips the parts it
finished. The parts name their rows, so :func:`merge_parts` joins a chunk's parts in row order into
``<chunk>.h5`` (the file an unsharded extraction writes) whatever shard count computed them, and
removes them.
"""

import itertools
import re
from dataclasses import dataclass

from caffegen.io.featuredb import stored_attribute, stored_slices, write_features_h5

PART = re.compile(r"\.rows-(\d+)-(\d+)\.h5$")
# The HDF5 attribute naming the engine that computed a chunk's or a part's features.
COMPUTED_BY = "computed_by"


@dataclass(frozen=True)
class Part:
    """Rows ``start:end`` of a chunk, computed by one shard."""

    chunk: object  # the Chunk
    start: int
    end: int

    @property
    def name(self):
        """The part's name in the store: its files are NAME.h5, NAME.txt, …"""
        return f"{self.chunk.name}.rows-{self.start}-{self.end}"

    @property
    def lines(self):
        return self.chunk.lines[self.start:self.end]


def parse_shard(text):
    """(i, N) from 'i/N', shard i of N counting from 0; None when ``text`` is not that."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if match is None or not int(match[1]) < int(match[2]):
        return None
    return int(match[1]), int(match[2])


def shard_parts(work, shard, shards, batch_size):
    """The Parts of chunks ``work`` that shard ``shard`` of ``shards`` computes in mini-batches of ``batch_size``.

    A chunk's last, partial mini-batch stays with the one before it: Caffe then runs it in a full
    mini-batch, as without shards.
    """
    batches = []  # (chunk, first row, end)
    for chunk in work:
        starts = _batch_starts(len(chunk.lines), batch_size)
        batches += [(chunk, start, end) for start, end in zip(starts, starts[1:] + [len(chunk.lines)])]
    parts = []
    for chunk, start, end in batches[shard * len(batches) // shards:(shard + 1) * len(batches) // shards]:
        if parts and parts[-1].chunk.name == chunk.name:
            parts[-1] = Part(chunk, parts[-1].start, end)
        else:
            parts.append(Part(chunk, start, end))
    return parts


def _batch_starts(count, batch_size):
    """Where the mini-batches of ``count`` images begin, a last partial one joined to the one before."""
    starts = list(range(0, count, batch_size))
    return starts[:-1] if len(starts) > 1 and count % batch_size else starts


def merge_parts(folder, chunk, shapes):
    """Join the parts of ``chunk`` in ``folder`` into its HDF5 file when they cover its rows; return whether they did.

    ``shapes`` gives each dataset's shape per image. The parts are removed once merged, with any
    others of the chunk (from a shard count given up).
    """
    ends = {}
    for path in folder.glob(f"{chunk.name}.rows-*.h5"):
        match = PART.search(path.name)
        if match:
            ends.setdefault(int(match[1]), []).append(int(match[2]))
    cover = _cover(ends, 0, len(chunk.lines))
    if cover is None:
        return False
    paths = [folder / f"{Part(chunk, start, end).name}.h5" for start, end in cover]
    engines = sorted({stored_attribute(path, COMPUTED_BY) or "unknown" for path in paths})
    write_features_h5(folder / f"{chunk.name}.h5",
                      {name: _joined(paths, name) for name in shapes},
                      len(chunk.lines), shapes, {COMPUTED_BY: " and ".join(engines)})
    remove_parts(folder, chunk)
    return True


def remove_parts(folder, chunk):
    """Remove the files of every part of ``chunk`` in ``folder``: its features, lists, nets and logs."""
    for path in folder.glob(f"{chunk.name}.rows-*"):
        path.unlink()


def _joined(paths, name):
    """The rows of dataset ``name`` of the HDF5 files ``paths``, one after another, a slice at a time."""
    return itertools.chain.from_iterable(stored_slices(path, name) for path in paths)


def _cover(ends, start, count):
    """[(start, end), …] of parts (``ends``: {start: [ends]}) covering rows start:count in order, or None."""
    if start == count:
        return []
    for end in sorted(ends.get(start, ()), reverse=True):
        rest = _cover(ends, end, count)
        if rest is not None:
            return [(start, end)] + rest
    return None
