"""HDF5Output: write the data and label bottoms of each forward to an HDF5 file."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch

from brewnet.errors import DataError
from brewnet.layers.base import Layer, Shape, is_meta
from brewnet.layers.data import numpy_dtype
from brewnet.layers.registry import register_layer

logger = logging.getLogger(__name__)

# The dataset names that Caffe's HDF5 layers use for the two blobs.
DATA_DATASET = "data"
LABEL_DATASET = "label"


def legacy_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Return ``shape`` as Caffe's (num, channels, height, width), padded with ones.

    HDF5Output stores its blobs through Caffe's four-axis accessors, so a bottom of
    shape (N,) is written as (N, 1, 1, 1) and one of shape (N, K) as (N, K, 1, 1).
    """
    dims = tuple(int(d) for d in shape)
    return dims + (1,) * (4 - len(dims))  # type: ignore[return-value]


@register_layer
class HDF5OutputLayer(Layer):
    """Write the two bottoms to an HDF5 file as the datasets "data" and "label".

    Args (``hdf5_output_param``):
        file_name: the HDF5 file; a relative path starts at the working directory.
            The file is created (or truncated) when the net is built.

    Bottom: data (N, ...) and label (N, ...), with the same N and at most 4 axes
    each. Each forward replaces the file's contents with the two bottoms, as
    float32 datasets in a float32 net and float64 datasets in a float64 net, of
    shape (N, C, H, W): missing trailing axes are written as 1, as Caffe does.
    The layer has no tops, and no gradient flows back through it.

    NOTE: BVLC Caffe creates the datasets again at every forward, which fails from
    the second forward on because they already exist. brewnet overwrites them
    instead, so the file contains the bottoms of the last forward.
    """

    type = "HDF5Output"
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 0
    can_backward = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        file_name = self.param.hdf5_output_param.file_name
        if not file_name:
            raise self.error(
                "hdf5_output_param.file_name is empty; set it to the HDF5 file to write"
            )
        self.file_name = os.path.abspath(os.path.expanduser(file_name))
        self._check_shapes(bottom_shapes)
        self._write({})

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_shapes(bottom_shapes)
        return []

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        if is_meta(bottom[0]):
            return []
        self._check_shapes([tuple(b.shape) for b in bottom])
        dtype = numpy_dtype(self.dtype)
        arrays = {
            name: blob.detach().cpu().numpy().astype(dtype).reshape(legacy_shape(blob.shape))
            for name, blob in zip((DATA_DATASET, LABEL_DATASET), bottom)
        }
        logger.info("Saving HDF5 file %s", self.file_name)
        self._write(arrays)
        logger.info("Successfully saved %d rows", arrays[DATA_DATASET].shape[0])
        return []

    def _check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        for role, shape in zip(("data", "label"), bottom_shapes):
            if len(shape) > 4:
                raise self.error(
                    f"the {role} bottom has shape {tuple(shape)}; HDF5Output writes "
                    f"blobs of at most 4 axes, so reshape it first"
                )
        data_rows = legacy_shape(bottom_shapes[0])[0]
        label_rows = legacy_shape(bottom_shapes[1])[0]
        if data_rows != label_rows:
            raise self.error(
                f"the data bottom has {data_rows} rows but the label bottom has "
                f"{label_rows}; both bottoms need the same batch size"
            )

    def _write(self, arrays: dict[str, np.ndarray]) -> None:
        """Truncate the file and write ``arrays`` as its datasets."""
        import h5py

        try:
            with h5py.File(self.file_name, "w") as handle:
                for name, array in arrays.items():
                    handle.create_dataset(name, data=array)
        except OSError as error:
            raise DataError(
                f"layer '{self.name}' (type {self.type}): failed to write HDF5 file "
                f"'{self.file_name}': {error}; check that its folder exists and is "
                f"writable"
            ) from None
