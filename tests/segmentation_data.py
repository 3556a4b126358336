"""Synthetic segmentation data: coloured shapes of a few classes on textured backgrounds, with their masks."""

import numpy as np
from PIL import Image

# The colour (RGB) of each shape class; class 0 is the background.
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def make_segmentation_data(folder, count, classes, size=48, seed=0):
    """Write ``count`` images with masks of ``classes`` classes (background and classes - 1 shapes) under ``folder``."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    ys, xs = np.mgrid[:size, :size]
    for index in range(count):
        texture = rng.integers(60, 140, (size, size, 1)) + rng.integers(-30, 30, (size, size, 3))
        image, mask = np.clip(texture, 0, 255).astype(np.float64), np.zeros((size, size), np.uint8)
        for label in rng.permutation(np.arange(1, classes))[:2]:
            cy, cx, radius = rng.integers(10, size - 10), rng.integers(10, size - 10), rng.integers(5, 10)
            inside = (np.abs(ys - cy) <= radius) & (np.abs(xs - cx) <= radius) if label % 2 else \
                (ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2
            image[inside] = np.asarray(COLOURS[label - 1]) + rng.integers(-25, 25, (inside.sum(), 3))
            mask[inside] = label
        mask[0, :] = 255  # a border row to ignore
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / "images" / f"{index:04d}.png")
        Image.fromarray(mask, mode="L").save(folder / "masks" / f"{index:04d}.png")
    return folder
