"""TensorBoard: event files in the run's ``tensorboard/`` folder (a sweep's: ``SWEEP/tensorboard/RUN``), so that
``tensorboard --logdir DIR`` shows them; a sweep's runs also carry the HParams plugin's table.

They are written with tensorboardX, the lightest well-kept writer of TensorBoard's files: it needs
numpy and protobuf only, where TensorBoard's own writer comes with TensorFlow or PyTorch.
"""

import importlib.util

from caffegen.errors import CaffegenError
from caffegen.run.track.tracker import Tracker

FOLDER = "tensorboard"
IMAGES = ("curves.png", "confusion.png")


class TensorBoardTracker(Tracker):
    """A run's curves as scalars, its parameters as text and hparams, its curves and confusion matrix as images."""

    @classmethod
    def check_installed(cls):
        if importlib.util.find_spec("tensorboardX") is None:
            raise CaffegenError("the tensorboard tracker needs tensorboardX: pip install 'caffegen[tensorboard]'")

    @classmethod
    def warm_up(cls, settings):
        from tensorboardX import SummaryWriter  # noqa: F401 - loaded ahead, while the runs are prepared

    def destination(self):
        tracked = self.tracked
        return str(tracked.group.path / FOLDER / tracked.name if tracked.group else tracked.run.path / FOLDER)

    def open(self, memo, params):
        from tensorboardX import SummaryWriter
        self.params = params
        self.writer = SummaryWriter(logdir=self.destination(), flush_secs=5)
        if not memo.get("params"):
            table = "\n".join(f"| {name} | {value} |" for name, value in params.items())
            self.writer.add_text("params", "| parameter | value |\n|---|---|\n" + table, 0)
        return {"params": True}

    def send(self, points):
        for point in points:
            self.writer.add_scalar(point.name, point.value, point.step, walltime=point.time)
        self.writer.flush()

    def finish(self, outcome):
        from tensorboardX.summary import hparams
        for name, value in outcome.metrics.items():
            self.writer.add_scalar(name, value, outcome.step)
        chosen = {**{name: value for name, value in self.params.items() if name != "class_names"},
                  **outcome.params, **self.tracked.hparams}
        for summary in hparams(_hparam_values(chosen), dict(outcome.metrics)):
            self.writer.file_writer.add_summary(summary)
        for path in outcome.artifacts:
            if path.name in IMAGES:
                self.writer.add_image(path.stem, _pixels(path), outcome.step, dataformats="HWC")
        self.writer.flush()

    def close(self):
        self.writer.close()


def _hparam_values(values):
    """``values`` as the HParams plugin takes them: numbers, booleans and strings."""
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value)
            for name, value in values.items() if value is not None}


def _pixels(path):
    """The RGB pixels of the image file ``path``, as an array of height × width × 3."""
    import numpy as np
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
