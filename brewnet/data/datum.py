"""Caffe ``Datum`` records: parsing, conversion to arrays and image decoding.

A Datum contains one sample: ``channels`` x ``height`` x ``width`` values as raw uint8
bytes in ``data`` or as floats in ``float_data``, an integer ``label``, and the flag
``encoded`` when ``data`` is a compressed image file (PNG, JPEG, ...).

Encoded images are decoded with Pillow into the layout OpenCV's ``imdecode`` gives
Caffe: height x width x channels, uint8, colour channels in BGR order. Without
``force_color`` or ``force_gray`` an image keeps its own kind, as with OpenCV's
``IMREAD_ANYCOLOR``: grey images give one channel, every other image three
(an alpha channel is dropped).
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
from google.protobuf.message import DecodeError

from brewnet.errors import DataError
from brewnet.proto import caffe_pb2

# Pillow modes that OpenCV decodes to a single grey channel.
_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

# libpng's fixed-point weights (out of 32768) for OpenCV's grey decoding of colour
# PNGs: png_set_rgb_to_gray(png, 1, 0.299, 0.587) truncates 0.299 and 0.587 to
# 15 bits, and blue takes the rest.
_PNG_RED_WEIGHT = 9797
_PNG_GREEN_WEIGHT = 19234
_PNG_BLUE_WEIGHT = 32768 - _PNG_RED_WEIGHT - _PNG_GREEN_WEIGHT


def parse_datum(value: bytes, source: str = "<bytes>", key: bytes | str = "") -> caffe_pb2.Datum:
    """Parse one database value as a Datum.

    Raises:
        DataError: ``value`` is not a serialized Datum; the message names ``source``
            and ``key``.
    """
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError as error:
        raise DataError(
            f"{source}: record {_key_text(key)} is not a Caffe Datum ({error}); the "
            f"database must contain serialized Datum messages, as Caffe's "
            f"convert_imageset writes them"
        ) from None
    return datum


def datum_to_array(
    datum: caffe_pb2.Datum,
    force_color: bool = False,
    force_gray: bool = False,
    source: str = "<datum>",
    key: bytes | str = "",
) -> np.ndarray:
    """Return the sample of ``datum`` as a C x H x W array.

    Raw records give uint8 (``data``) or float32 (``float_data``) arrays. Encoded
    records are decoded into uint8 BGR (or grey) channels; ``force_color`` and
    ``force_gray`` apply only to them, as in Caffe.

    Raises:
        DataError: the record's sizes do not match its values, or its image cannot
            be decoded; the message names ``source`` and ``key``.
    """
    if datum.encoded:
        color = None
        if force_color:
            color = True
        elif force_gray:
            color = False
        try:
            image = decode_image(datum.data, color)
        except DataError as error:
            raise DataError(f"{source}: record {_key_text(key)}: {error}") from None
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    shape = (datum.channels, datum.height, datum.width)
    where = f"{source}: record {_key_text(key)}"
    if min(shape) <= 0:
        raise DataError(
            f"{where} has shape {shape} (channels, height, width); every dimension "
            f"must be positive"
        )
    count = shape[0] * shape[1] * shape[2]
    if len(datum.data):
        if len(datum.data) != count:
            raise DataError(
                f"{where} has {len(datum.data)} bytes of data but its shape {shape} "
                f"needs {count}"
            )
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data):
        if len(datum.float_data) != count:
            raise DataError(
                f"{where} has {len(datum.float_data)} float_data values but its shape "
                f"{shape} needs {count}"
            )
        return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)
    raise DataError(f"{where} has neither data nor float_data")


def array_to_datum(array: np.ndarray, label: int = 0) -> caffe_pb2.Datum:
    """Return a Datum for a C x H x W array: uint8 arrays fill ``data``, others ``float_data``."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(
            f"a Datum needs a 3-D array (channels, height, width), got shape {array.shape}"
        )
    datum = caffe_pb2.Datum(
        channels=array.shape[0], height=array.shape[1], width=array.shape[2], label=int(label)
    )
    if array.dtype == np.uint8:
        datum.data = np.ascontiguousarray(array).tobytes()
    else:
        datum.float_data.extend(array.astype(np.float32).ravel().tolist())
    return datum


def encoded_datum(image_bytes: bytes, label: int = 0) -> caffe_pb2.Datum:
    """Return an encoded Datum holding an image file's bytes, as convert_imageset --encoded does."""
    return caffe_pb2.Datum(data=image_bytes, label=int(label), encoded=True)


def decode_image(data: bytes, color: Optional[bool] = None) -> np.ndarray:
    """Decode an image file's bytes into an H x W x C uint8 array, as OpenCV does.

    Args:
        data: the bytes of a PNG, JPEG or other file that Pillow reads.
        color: True for three BGR channels (OpenCV's ``IMREAD_COLOR``), False for one
            grey channel (``IMREAD_GRAYSCALE``), None for the image's own kind
            (``IMREAD_ANYCOLOR``).

    Raises:
        DataError: Pillow cannot read the bytes.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if color is False and image.format == "JPEG":
            # OpenCV requests grey output from libjpeg, which returns the luma channel.
            image.draft("L", image.size)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"cannot decode the image ({error})") from None
    grey_source = image.mode in _GREY_MODES
    if color is None:
        color = not grey_source
    if color:
        rgb = np.asarray(_to_8bit(image).convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1])
    if grey_source or image.format == "JPEG":
        return np.asarray(_to_8bit(image).convert("L"))[:, :, None]
    return _grey_like_libpng(np.asarray(image.convert("RGB")))[:, :, None]


def _to_8bit(image):
    """Return ``image`` with wide grey samples (16-bit, 32-bit, float) cut to 8 bits."""
    from PIL import Image

    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image)
    if image.mode == "F":
        values = np.clip(values, 0, 255)
    else:
        # OpenCV keeps the high byte of 16-bit samples (libpng's strip_16).
        # NOTE: 32-bit integer images are read as if they were 16-bit.
        values = np.clip(values.astype(np.int64) >> 8, 0, 255)
    return Image.fromarray(values.astype(np.uint8), mode="L")


def _grey_like_libpng(rgb: np.ndarray) -> np.ndarray:
    """Convert RGB pixels to grey with libpng's truncating fixed-point formula."""
    r = rgb[:, :, 0].astype(np.uint32)
    g = rgb[:, :, 1].astype(np.uint32)
    b = rgb[:, :, 2].astype(np.uint32)
    grey = (_PNG_RED_WEIGHT * r + _PNG_GREEN_WEIGHT * g + _PNG_BLUE_WEIGHT * b) >> 15
    # libpng copies a pixel whose three channels agree instead of weighing it.
    same = (r == g) & (r == b)
    return np.where(same, r, grey).astype(np.uint8)


def _key_text(key: bytes | str) -> str:
    if isinstance(key, bytes):
        try:
            key = key.decode("ascii")
        except UnicodeDecodeError:
            return repr(key)
    return f"'{key}'"
