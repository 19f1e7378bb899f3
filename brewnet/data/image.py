"""Image files and image lists for the ImageData layer.

Images are read as Caffe's ``ReadImageToCVMat`` reads them with OpenCV: decoded to
H x W x C uint8 in BGR order (or one grey channel), then resized with bilinear
interpolation when a new size is given.
"""

from __future__ import annotations

import numpy as np

from brewnet.data.datum import decode_image
from brewnet.errors import DataError

# OpenCV's fixed-point bilinear resize: weights carry 11 fractional bits, so a
# product of two weights carries 22.
_WEIGHT_BITS = 11
_WEIGHT_ONE = 1 << _WEIGHT_BITS


def read_image_list(path: str) -> list[tuple[str, int]]:
    """Read an ImageData source list: one ``filename label`` per line.

    The label is the text after the last space, as Caffe splits the line, so file
    names may contain spaces. Blank lines are skipped.

    Raises:
        DataError: the file cannot be read, a line has no label, or no line is left.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise DataError(f"cannot read the image list '{path}': {error.strerror}") from None
    entries: list[tuple[str, int]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, space, label = line.rpartition(" ")
        try:
            value = int(label.strip())
        except ValueError:
            value = None
        if not space or value is None:
            raise DataError(
                f"{path}:{number}: expected 'filename label' with an integer label "
                f"after the last space, got {line!r}"
            )
        entries.append((name, value))
    if not entries:
        raise DataError(f"the image list '{path}' is empty; add 'filename label' lines")
    return entries


def read_image(path: str, color: bool, height: int = 0, width: int = 0) -> np.ndarray:
    """Read an image file as H x W x C uint8 (BGR or grey), resized when a size is given.

    Raises:
        DataError: the file cannot be read or decoded.
    """
    try:
        with open(path, "rb") as handle:
            payload = handle.read()
    except OSError as error:
        raise DataError(f"could not load '{path}': {error.strerror}") from None
    try:
        image = decode_image(payload, color)
    except DataError as error:
        raise DataError(f"could not load '{path}': {error}") from None
    if height > 0 and width > 0:
        image = resize_linear(image, height, width)
    return image


def resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an H x W x C uint8 image with OpenCV's ``INTER_LINEAR`` arithmetic.

    Output pixel centres map back with ``x_in = (x_out + 0.5) * scale - 0.5``, and
    source positions outside the image clamp to the edge. The two weights of each
    axis are rounded to 11 bits, and the result is rounded once after both passes.
    NOTE: written from OpenCV's scalar code path; its SIMD paths may round some
    pixels differently (by one grey level), and no OpenCV was at hand to compare.
    """
    rows, row_weights = _axis_taps(image.shape[0], height)
    cols, col_weights = _axis_taps(image.shape[1], width)
    wide = image.astype(np.int64)
    horizontal = (
        wide[:, cols[0]] * col_weights[0][None, :, None]
        + wide[:, cols[1]] * col_weights[1][None, :, None]
    )
    vertical = (
        horizontal[rows[0]] * row_weights[0][:, None, None]
        + horizontal[rows[1]] * row_weights[1][:, None, None]
    )
    rounded = (vertical + (1 << (2 * _WEIGHT_BITS - 1))) >> (2 * _WEIGHT_BITS)
    return np.clip(rounded, 0, 255).astype(np.uint8)


def _axis_taps(source: int, target: int):
    """Return the two source indices and fixed-point weights of each output position."""
    scale = 1.0 / (target / source)
    position = ((np.arange(target) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = (position - first).astype(np.float32)
    before = first < 0
    fraction[before] = 0
    first[before] = 0
    after = first >= source - 1
    fraction[after] = 0
    first[after] = source - 1
    second = np.minimum(first + 1, source - 1)
    weight_second = np.rint(fraction * np.float32(_WEIGHT_ONE)).astype(np.int64)
    weight_first = np.rint((np.float32(1) - fraction) * np.float32(_WEIGHT_ONE)).astype(np.int64)
    return (first, second), (weight_first, weight_second)
