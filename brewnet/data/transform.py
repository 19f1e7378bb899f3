"""Caffe's ``transform_param``: crop, mirror, mean subtraction and scaling.

:class:`DataTransformer` follows Caffe's ``DataTransformer`` for one sample at a
time. The steps run in Caffe's order: take the crop window, subtract the mean (a mean
image at the crop window's position, or one value per channel), multiply by
``scale``, and flip horizontally when the sample is mirrored. Random choices are drawn per sample
in the same order as Caffe: the mirror coin first, then the crop row, then the crop
column.

Fields:
    scale: factor applied after the mean is subtracted.
    mirror: flip each sample left-right with probability 1/2. Caffe draws this in
        every phase, TEST included.
    crop_size: square crop; its offset is random in TRAIN and centred in TEST,
        ``(height - crop_size) // 2`` rows and ``(width - crop_size) // 2`` columns.
    mean_file: a BlobProto mean image with the samples' full (uncropped) shape.
    mean_value: one value for every channel, or one value per channel.
    force_color, force_gray: decode encoded images to 3 channels or to 1.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from brewnet.errors import DataError, LayerSetupError
from brewnet.layers.base import TRAIN
from brewnet.proto import caffe_pb2

logger = logging.getLogger(__name__)

ErrorFactory = Callable[[str], Exception]


def load_mean_file(path: str) -> np.ndarray:
    """Read a binaryproto mean image and return it as a C x H x W float32 array.

    Raises:
        DataError: the file is missing or is not a BlobProto of one image.
    """
    from brewnet.io.model import blob_proto_to_array

    try:
        with open(path, "rb") as handle:
            payload = handle.read()
    except OSError as error:
        raise DataError(
            f"cannot read mean_file '{path}': {error.strerror}; relative paths start at "
            f"the working directory, '{os.getcwd()}'"
        ) from None
    proto = caffe_pb2.BlobProto()
    try:
        proto.ParseFromString(payload)
        mean = blob_proto_to_array(proto).astype(np.float32)
    except (DecodeError, ValueError) as error:
        raise DataError(f"mean_file '{path}' is not a BlobProto ({error})") from None
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise DataError(
            f"mean_file '{path}' has shape {mean.shape}; a mean image must have shape "
            f"(1, channels, height, width)"
        )
    return mean


class DataTransformer:
    """Turn C x H x W samples into the arrays a data layer outputs.

    Args:
        param: the layer's ``TransformationParameter``.
        phase: ``brewnet.TRAIN`` or ``brewnet.TEST``; it decides random or centred crops.
        rng: the generator of the random choices (mirror, crop offsets).
        dtype: the floating-point type of the output.
        error: builds the exception raised for invalid parameters (a layer passes its
            ``error`` method so that messages name the layer).

    Raises:
        DataError: the mean file cannot be read.
        LayerSetupError: both ``mean_file`` and ``mean_value`` are given.
    """

    def __init__(
        self,
        param: caffe_pb2.TransformationParameter,
        phase: int,
        rng: Optional[np.random.Generator] = None,
        dtype: np.dtype | type = np.float32,
        error: ErrorFactory = LayerSetupError,
    ) -> None:
        self.param = param
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.error = error
        self.crop_size = int(param.crop_size)
        self.scale = self.dtype.type(param.scale)
        self.mean: Optional[np.ndarray] = None
        self.mean_values: Optional[np.ndarray] = None
        if param.HasField("mean_file") and len(param.mean_value):
            raise error(
                "transform_param sets both mean_file and mean_value; keep only one of them"
            )
        if param.HasField("mean_file"):
            logger.info("Loading mean file from: %s", param.mean_file)
            self.mean = load_mean_file(param.mean_file).astype(self.dtype)
        if len(param.mean_value):
            self.mean_values = np.asarray(list(param.mean_value), dtype=np.float32)
            self.mean_values = self.mean_values.astype(self.dtype)
        self.needs_random = bool(param.mirror or (phase == TRAIN and self.crop_size))
        self.rng = rng if rng is not None else np.random.default_rng()
        self._warned_force = False

    # ----------------------------------------------------------------------------
    # Decoding and shapes.

    def datum_to_array(self, datum: caffe_pb2.Datum, source: str, key: bytes) -> np.ndarray:
        """Return a Datum's sample as C x H x W, decoding images as ``force_color`` and ``force_gray`` set.

        Raises:
            DataError: the record is invalid (see :func:`brewnet.data.datum.datum_to_array`).
            LayerSetupError: ``force_color`` and ``force_gray`` are both set and the
                record is an encoded image.
        """
        from brewnet.data.datum import datum_to_array

        force_color = bool(self.param.force_color)
        force_gray = bool(self.param.force_gray)
        if datum.encoded and force_color and force_gray:
            raise self.error(
                "transform_param sets both force_color and force_gray; set at most one"
            )
        if not datum.encoded and (force_color or force_gray) and not self._warned_force:
            logger.error("force_color and force_gray only for encoded datum")
            self._warned_force = True
        return datum_to_array(datum, force_color, force_gray, source, key)

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Return the C x H x W output shape for samples of ``shape``.

        Raises:
            DataError: such samples do not fit the crop, the mean image or the number
                of mean values.
        """
        channels, height, width = (int(d) for d in shape)
        self._check_crop(height, width)
        self._mean_for(channels, height, width)
        if self.crop_size:
            return channels, self.crop_size, self.crop_size
        return channels, height, width

    # ----------------------------------------------------------------------------
    # The transformation.

    def transform(self, sample: np.ndarray) -> np.ndarray:
        """Return the transformed C x h x w array of one C x H x W sample.

        Raises:
            DataError: the sample does not fit the crop, the mean image or the number
                of mean values.
        """
        channels, height, width = sample.shape
        self._check_crop(height, width)
        mean = self._mean_for(channels, height, width)
        do_mirror = bool(self.param.mirror) and self._rand(2) == 1
        row, column = self._crop_offsets(height, width)
        size_h = self.crop_size or height
        size_w = self.crop_size or width
        window = sample[:, row : row + size_h, column : column + size_w]
        values = window.astype(self.dtype)
        if mean is not None:
            if self.mean is not None:
                # The mean image is indexed by the sample's pixel, not the output's.
                mean = mean[:, row : row + size_h, column : column + size_w]
            values = values - mean
        values = values * self.scale
        if do_mirror:
            values = values[:, :, ::-1]
        return np.ascontiguousarray(values)

    def _crop_offsets(self, height: int, width: int) -> tuple[int, int]:
        if not self.crop_size:
            return 0, 0
        if self.phase == TRAIN:
            row = self._rand(height - self.crop_size + 1)
            column = self._rand(width - self.crop_size + 1)
            return row, column
        return (height - self.crop_size) // 2, (width - self.crop_size) // 2

    def _mean_for(self, channels: int, height: int, width: int) -> Optional[np.ndarray]:
        """Return the mean to subtract: an image, a (C, 1, 1) column, or None."""
        if self.mean is not None:
            if self.mean.shape != (channels, height, width):
                raise DataError(
                    f"mean_file '{self.param.mean_file}' has shape "
                    f"{tuple(self.mean.shape)} but the samples have shape "
                    f"{(channels, height, width)} (channels, height, width); the mean "
                    f"image must have the samples' full uncropped shape"
                )
            return self.mean
        if self.mean_values is not None:
            count = len(self.mean_values)
            if count not in (1, channels):
                raise DataError(
                    f"transform_param has {count} mean_value entries but the samples "
                    f"have {channels} channels; specify either 1 mean_value or as many "
                    f"as channels"
                )
            return np.broadcast_to(self.mean_values, (channels,))[:, None, None]
        return None

    def _check_crop(self, height: int, width: int) -> None:
        if self.crop_size > height or self.crop_size > width:
            raise DataError(
                f"crop_size {self.crop_size} is larger than a sample of {height} x "
                f"{width} pixels; use a crop_size of at most {min(height, width)}"
            )

    def _rand(self, count: int) -> int:
        return int(self.rng.integers(count))


def transformation_param(layer_param: caffe_pb2.LayerParameter, legacy) -> caffe_pb2.TransformationParameter:
    """Return ``transform_param`` with the deprecated fields of ``legacy`` folded in.

    Old nets put scale, mean_file, crop_size and mirror in ``data_param`` or
    ``image_data_param``; Caffe's upgrade moves them into ``transform_param``, and
    this does the same for nets that reach a layer unconverted.
    """
    param = caffe_pb2.TransformationParameter()
    param.CopyFrom(layer_param.transform_param)
    moved = []
    for field in ("scale", "mean_file", "crop_size", "mirror"):
        if legacy is not None and legacy.HasField(field):
            setattr(param, field, getattr(legacy, field))
            moved.append(field)
    if moved:
        logger.warning(
            "layer '%s': %s in %s are deprecated; they were moved to transform_param",
            layer_param.name, ", ".join(moved), type(legacy).__name__,
        )
    return param
