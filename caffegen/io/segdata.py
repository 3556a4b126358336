"""The files of a segmentation job: label masks (PNG in, palette PNG out) and the HDF5 files Caffe trains on.

BVLC Caffe has no layer that reads an image and its mask together, so caffegen writes both into
HDF5 files that one ``HDF5Data`` layer reads (datasets ``data`` and ``label``). HDF5 is chosen
over two LMDBs because one record holds the image and its mask side by side: the pair cannot
drift apart when the layer shuffles, and the mask keeps its float 1×H×W shape with no Datum
encoding. The images are stored preprocessed as Caffe's image layers would feed them (BGR,
mean subtracted, then scaled, channels first, float32), so evaluation on the image files
through ``ImageData`` sees the same input.
"""

import numpy as np
from PIL import Image, UnidentifiedImageError

from caffegen.errors import CaffegenError

# PIL modes whose pixel values are class indices ('P': PIL gives the palette index, as VOC's masks hold).
INDEX_MODES = {"L", "P", "I", "I;16", "1"}


def read_mask(path):
    """The class indices of the label PNG at ``path`` as a (H, W) int array; a colour mask is refused."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in INDEX_MODES:
                raise CaffegenError(f"a {mode} colour mask, where class indices are expected: convert it to one "
                                    "channel whose value is the class (mode 'L', or 'P' with the index per "
                                    "pixel), with 255 for pixels to ignore", path)
            return np.asarray(image, dtype=np.int64)
    except (OSError, UnidentifiedImageError) as error:
        raise CaffegenError(f"not a readable mask image ({error.__class__.__name__})", path) from None


def read_image_size(path):
    """(height, width) of the image at ``path``."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, UnidentifiedImageError) as error:
        raise CaffegenError(f"not a readable image ({error.__class__.__name__})", path) from None


def preprocessed_image(path, mean_value=(), scale=1.0):
    """The image at ``path`` as Caffe's image layers feed it: (3, H, W) float32, BGR, mean subtracted, then scaled."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1]
    if mean_value:
        pixels = pixels - np.asarray((list(mean_value) * 3)[:3] if len(mean_value) == 1 else mean_value,
                                     dtype=np.float32)
    return np.ascontiguousarray((pixels * np.float32(scale)).transpose(2, 0, 1))


def write_pairs_h5(path, pairs, mean_value=(), scale=1.0):
    """Write the (image, mask) ``pairs`` into the HDF5 file ``path``: ``data`` (N, 3, H, W) and ``label``
    (N, 1, H, W)."""
    import h5py
    with h5py.File(path, "w") as out:
        first = preprocessed_image(pairs[0][0], mean_value, scale)
        data = out.create_dataset("data", (len(pairs), *first.shape), dtype="f4")
        label = out.create_dataset("label", (len(pairs), 1, *first.shape[1:]), dtype="f4")
        for index, (image, mask) in enumerate(pairs):
            data[index] = preprocessed_image(image, mean_value, scale)
            label[index, 0] = read_mask(mask)


def voc_palette(count=256):
    """PASCAL VOC's colour map: ``count`` RGB colours, class 0 black."""
    colours = []
    for index in range(count):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours.append((red, green, blue))
    return colours


def write_mask_png(path, mask):
    """Write the (H, W) class indices ``mask`` as a palette PNG coloured with VOC's colour map."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette([channel for colour in voc_palette() for channel in colour])
    image.save(path, format="PNG")
