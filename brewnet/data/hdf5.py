"""HDF5 files for the HDF5Data layer: the source list and the datasets of one file."""

from __future__ import annotations

import logging
import os

import numpy as np

from brewnet.errors import DataError

logger = logging.getLogger(__name__)


def read_hdf5_list(path: str) -> list[str]:
    """Return the HDF5 file names in a source list, split on whitespace as Caffe does.

    Raises:
        DataError: the list cannot be read or names no file.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            names = handle.read().split()
    except OSError as error:
        raise DataError(f"cannot read the HDF5 source list '{path}': {error.strerror}") from None
    if not names:
        raise DataError(
            f"the HDF5 source list '{path}' names no file; list one .h5 path per line"
        )
    logger.info("Number of HDF5 files: %d", len(names))
    return names


def load_hdf5_datasets(path: str, names: list[str], dtype: type) -> list[np.ndarray]:
    """Read the datasets ``names`` of one HDF5 file as arrays of ``dtype``.

    Raises:
        DataError: the file cannot be opened, a dataset is missing, is not numeric,
            has no axis, or the datasets differ in their number of rows.
    """
    import h5py

    if not os.path.isfile(path):
        raise DataError(
            f"HDF5 file '{path}' not found; relative paths in the source list start at "
            f"the working directory, '{os.getcwd()}'"
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"failed opening HDF5 file '{path}': {error}") from None
    arrays = []
    with handle:
        for name in names:
            if name not in handle or not isinstance(handle[name], h5py.Dataset):
                raise DataError(
                    f"HDF5 file '{path}' has no dataset '{name}'; each top of an "
                    f"HDF5Data layer reads the dataset of the same name"
                )
            dataset = handle[name]
            if dataset.dtype.kind not in "fiub":
                raise DataError(
                    f"dataset '{name}' in HDF5 file '{path}' has type {dataset.dtype}; "
                    f"only integer and floating-point datasets can be read"
                )
            if dataset.ndim < 1:
                raise DataError(
                    f"dataset '{name}' in HDF5 file '{path}' is a scalar; it needs at "
                    f"least one axis (rows)"
                )
            arrays.append(np.asarray(dataset[()], dtype=dtype))
    rows = arrays[0].shape[0]
    if rows == 0:
        raise DataError(f"HDF5 file '{path}': dataset '{names[0]}' has no rows")
    for name, array in zip(names, arrays):
        if array.shape[0] != rows:
            raise DataError(
                f"HDF5 file '{path}': dataset '{name}' has {array.shape[0]} rows but "
                f"'{names[0]}' has {rows}; all datasets need the same number of rows"
            )
    logger.debug("Successfully loaded %d rows", rows)
    return arrays
