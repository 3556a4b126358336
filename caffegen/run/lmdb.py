"""A job's image LMDBs, built by Caffe's own tools: ``convert_imageset``, and ``compute_image_mean`` for the mean.

Each database is written into a temporary folder beside its place and renamed into it once
every image is in, so it is complete or absent. ``convert_imageset`` skips an image it cannot read
with an error line and goes on; that line is turned into a one-line error naming the image.
Caffe 1.0's LMDB writer doubles its map whenever it fills, so a database of any size fits.
A database whose record (:mod:`caffegen.job.imagedb`) matches in a run directory given to reuse
(the one being replaced, a sweep's earlier runs) is hard-linked from there instead of being built again.
"""

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.datasources import record_count
from caffegen.io.files import file_sha256, temp_folder, write_atomic
from caffegen.reporting import SilentReporter

UNREADABLE = re.compile(r"Could not open or find file (.+)$")
PROCESSED = re.compile(r"Processed (\d+) files")  # convert_imageset logs it every 1,000 images
MEAN_NAME = "mean.binaryproto"


@dataclass
class BuiltDatabases:
    """The databases of an LmdbPlan in ``folder`` (each beside its record), the computed mean, what was done."""

    folder: Path
    mean: Path
    notes: list


class DatabaseBuilder:
    """Builds a job's LMDBs with the tools beside one Caffe (a :class:`~caffegen.run.target.Target`)."""

    def __init__(self, target, reporter=None):
        self.target = target
        self.reporter = reporter or SilentReporter()

    def __call__(self, plan, folder, reusable=()):
        """Build ``plan`` (an LmdbPlan) into ``folder``; link what a run directory of ``reusable`` holds unchanged."""
        folder, notes, sources = Path(folder), [], {}
        for database in plan.databases:
            sources[database.name] = next((Path(run_dir) for run_dir in reusable if database.recorded(run_dir)), None)
            if sources[database.name] is not None:
                _link_folder(sources[database.name] / database.name, folder / database.name)
                notes.append(f"{database.name}: its {database.count} images are unchanged since it was built in "
                             f"{sources[database.name].name}/; reused it, convert_imageset not run")
            else:
                self.reporter.line(f"building {database.name} with convert_imageset: {database.count} images")
                self._convert(database, folder)
        mean = self._mean(plan, folder, sources[plan.train.name]) if plan.mean else None
        for database in plan.databases:
            computed = file_sha256(mean) if mean and database is plan.train else None
            write_atomic(folder / database.record_name, json.dumps(database.record(computed), indent=2) + "\n")
        return BuiltDatabases(folder, mean, notes)

    def _convert(self, database, folder):
        """Run convert_imageset on ``database``'s list into ``folder/<name>``, through a temporary folder."""
        with temp_folder(folder, f".{database.name}.") as scratch:
            listed = scratch / "list.txt"
            listed.write_text(database.list_text, encoding="utf-8")
            command = [str(self.target.tool("convert_imageset")), "--backend=lmdb"]  # the plan's order is shuffled
            if database.resize:
                command += [f"--resize_height={database.resize[0]}", f"--resize_width={database.resize[1]}"]
            if database.gray:
                command.append("--gray")
            if database.encode_type:
                command += ["--encoded", f"--encode_type={database.encode_type}"]
            output = _run(command + ["", str(listed), str(scratch / "db")], "convert_imageset",
                          self._progress(database))
            unreadable = [match.group(1).strip() for line in output.splitlines()
                          if (match := UNREADABLE.search(line))]
            if unreadable:
                more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
                raise CaffegenError(f"convert_imageset cannot read this image{more}; fix or remove it and prepare "
                                    "again", unreadable[0])
            stored = record_count(scratch / "db")
            if stored != database.count:
                raise CaffegenError(f"convert_imageset stored {stored} of the {database.count} images: "
                                    f"{_last_line(output)}", folder / database.name)
            os.rename(scratch / "db", folder / database.name)

    def _progress(self, database):
        """What hears convert_imageset's lines: it tells the images done, about every tenth of them."""
        step = max(1000, database.count // 10 // 1000 * 1000)

        def hear(line):
            done = PROCESSED.search(line)
            if done and int(done.group(1)) % step == 0:
                self.reporter.line(f"{database.name}: {done.group(1)} of {database.count} images")
        return hear

    def _mean(self, plan, folder, source):
        """The mean image of the training database: computed by compute_image_mean, or reused with the database.

        ``source`` is the run directory the training database was reused from (None: it was built).
        """
        mean = folder / MEAN_NAME
        recorded = plan.train.recorded(source).get("mean_sha256") if source else None
        if recorded and (source / MEAN_NAME).is_file() and file_sha256(source / MEAN_NAME) == recorded:
            shutil.copyfile(source / MEAN_NAME, mean)
            return mean
        self.reporter.line(f"computing the mean image of {plan.train.name} with compute_image_mean")
        _run([str(self.target.tool("compute_image_mean")), "--backend=lmdb", str(folder / plan.train.name),
              str(mean)], "compute_image_mean")
        return mean


def _run(command, tool, hear=None):
    """Run a Caffe tool, ``hear`` hearing each line it logs; its output, or a one-line error with its reason."""
    lines = []
    with subprocess.Popen(command, env=dict(os.environ, GLOG_logtostderr="1"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as process:
        for line in process.stdout:
            lines.append(line)
            if hear:
                hear(line)
    output = "".join(lines)
    if process.returncode != 0:
        raise CaffegenError(f"Caffe's {tool} failed (exit code {process.returncode}): {_last_line(output)}")
    return output


def _last_line(output):
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _link_folder(source, target):
    """``target``: a folder holding hard links to the files of ``source`` (copies where links cannot be made)."""
    target.mkdir()
    for path in source.iterdir():
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)
