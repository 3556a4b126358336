"""Real images for the demo and the bundled base model: scikit-learn's handwritten digits.

The 8×8 scans (values 0–16) are upscaled to 28×28 grayscale PNGs, one folder per digit.
"""

from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 28


def write_digit_images(out_dir, digits):
    """Write every scikit-learn digit in ``digits`` as ``out_dir/<digit>/<index>.png``; return the count."""
    from sklearn.datasets import load_digits

    data = load_digits()
    out_dir = Path(out_dir)
    count = 0
    for index, (image, target) in enumerate(zip(data.images, data.target)):
        if target not in digits:
            continue
        folder = out_dir / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((SIDE, SIDE), Image.BILINEAR).save(folder / f"{index:04d}.png")
        count += 1
    return count
