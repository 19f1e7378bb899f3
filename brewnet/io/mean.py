"""Mean files: a BlobProto in binary form (``mean.binaryproto``).

Caffe's data layers subtract the mean image read from ``transform_param.mean_file``;
``compute_image_mean`` writes it as one blob of shape 1 x C x H x W.
"""

from __future__ import annotations

import io
import os

import numpy as np

from brewnet.blob import shape_string
from brewnet.errors import ModelFileError
from brewnet.io import wire
from brewnet.io.prototxt import write_bytes
from brewnet.proto import caffe_pb2

_BLOB_TABLE = wire.expected_wire_types(caffe_pb2.BlobProto.DESCRIPTOR)


def read_mean_file(path: str | os.PathLike) -> np.ndarray:
    """Return the blob stored in a binaryproto file, in the shape the file gives it.

    Files written by Caffe have shape (1, C, H, W). The array is float32, or float64
    when the file stores ``double_data``.

    Raises:
        FileNotFoundError: the file does not exist.
        ModelFileError: the file is empty, truncated or not a BlobProto, or its
            number of values does not match its shape.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"mean file not found: {path}") from None
    if not raw:
        raise ModelFileError(
            f"{path}: the mean file is empty; expected a binary BlobProto"
        )
    try:
        record = _scan(raw)
    except wire.WireError as error:
        if error.truncated:
            raise ModelFileError(
                f"{path}: the mean file is truncated ({error})"
            ) from None
        raise ModelFileError(
            f"{path}: not a binary BlobProto (.binaryproto mean file): {error}"
        ) from None
    values = record.data_values()
    shape = record.shape_tuple()
    expected = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if values.count != expected:
        raise ModelFileError(
            f"{path}: the mean blob has {values.count} values but its shape "
            f"{shape_string(shape)} needs {expected}"
        )
    return wire.gather_values(raw, values).reshape(shape)


def _scan(raw: bytes) -> wire.BlobRecord:
    known = [
        item
        for item in wire.iter_fields(raw, 0, len(raw))
        if item.number in _BLOB_TABLE
    ]
    if not known:
        raise wire.WireError("it has none of BlobProto's fields")
    return wire.scan_blob(raw, 0, len(raw), len(raw), _BLOB_TABLE)


def write_mean_file(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a binaryproto mean file of shape (1, C, H, W).

    A (C, H, W) array gets a leading axis of 1 and an (H, W) array two, because
    Caffe's data transformer reads the mean's channels, height and width from the
    last three of four axes. Values are written as float32.

    Raises:
        ValueError: the array does not have 2, 3 or 4 axes.
    """
    values = np.asarray(array, dtype=np.float32)
    if values.ndim not in (2, 3, 4):
        raise ValueError(
            f"a mean image needs 2 (H, W), 3 (C, H, W) or 4 (1, C, H, W) axes, but the "
            f"array has shape {values.shape}"
        )
    values = values.reshape((1,) * (4 - values.ndim) + values.shape)
    buffer = io.BytesIO()
    wire.write_blob(buffer, values, None)
    write_bytes(path, buffer.getvalue())
