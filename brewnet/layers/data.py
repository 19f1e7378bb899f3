"""Data layers: batches read from databases, image lists, HDF5 files and arrays.

Every layer here has no bottoms and cannot backpropagate. Random choices (crop
offsets, mirroring, rand_skip, shuffling) come from a NumPy generator that each layer
seeds from torch's global generator when the net is built, so
``brewnet.set_random_seed`` makes them repeatable.
"""

from __future__ import annotations

import logging
import weakref
from typing import Sequence

import numpy as np
import torch

from brewnet.data.datum import parse_datum
from brewnet.data.db import LEVELDB_MESSAGE, LMDBReader, RecordCursor, resolve_source
from brewnet.data.prefetch import Prefetcher
from brewnet.data.transform import DataTransformer, transformation_param
from brewnet.errors import DataError, LayerSetupError
from brewnet.layers.base import Layer, Shape
from brewnet.layers.registry import register_layer
from brewnet.proto import caffe_pb2

logger = logging.getLogger(__name__)


def layer_rng() -> np.random.Generator:
    """Return a NumPy generator seeded from torch's global generator."""
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
    return np.random.default_rng(seed)


def detached_error(layer: Layer):
    """Return an error factory like ``layer.error`` that holds no reference to ``layer``.

    Objects used by a prefetch thread take this one, so that the layer can still be
    garbage-collected while the thread runs.
    """
    prefix = f"layer '{layer.name}' (type {layer.type}): "

    def build(message: str) -> LayerSetupError:
        return LayerSetupError(prefix + message)

    return build


def numpy_dtype(dtype: torch.dtype) -> type:
    """Return the NumPy type that data arrays are computed in for a net of ``dtype``."""
    return np.float64 if dtype == torch.float64 else np.float32


class _DatumBatchLoader:
    """Read and transform batches of Datum records; runs in the prefetch thread.

    It holds no reference to its layer, so that the layer can be collected while the
    thread runs.
    """

    def __init__(
        self,
        reader: LMDBReader,
        cursor: RecordCursor,
        transformer: DataTransformer,
        batch_size: int,
        output_labels: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.reader = reader
        self.cursor = cursor
        self.transformer = transformer
        self.batch_size = batch_size
        self.output_labels = output_labels
        self.dtype = dtype
        self.device = device

    def load(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the next batch as (data, label) tensors; label is None without a label top."""
        source = self.reader.path
        samples: list[np.ndarray] = []
        labels = np.empty(self.batch_size, dtype=numpy_dtype(self.dtype))
        for item in range(self.batch_size):
            key, value = self.cursor.current()
            datum = parse_datum(value, source, key)
            try:
                sample = self.transformer.transform(
                    self.transformer.datum_to_array(datum, source, key)
                )
            except DataError as error:
                if source in str(error):
                    raise
                raise DataError(f"{source}: record {_key_text(key)}: {error}") from None
            if samples and sample.shape != samples[0].shape:
                raise DataError(
                    f"{source}: record {_key_text(key)} gives a sample of shape "
                    f"{sample.shape}, but the batch started with shape "
                    f"{samples[0].shape}; all records of a batch must have one shape"
                )
            samples.append(sample)
            labels[item] = datum.label
            self.cursor.advance()
        data = torch.from_numpy(np.stack(samples)).to(self.device, self.dtype)
        label = None
        if self.output_labels:
            label = torch.from_numpy(labels).to(self.device, self.dtype)
        return data, label

    def close(self) -> None:
        """End the cursor's transaction and close the database."""
        self.cursor.close()
        self.reader.close()


@register_layer
class DataLayer(Layer):
    """Read batches of Datum records from an LMDB database, in key order.

    Args (``data_param``):
        source: the LMDB directory; a relative path starts at the working directory.
        batch_size: records per batch.
        backend: LMDB (LEVELDB, the proto default, is not supported).
        rand_skip: skip a random number of records in [0, rand_skip) at the start.
            NOTE: BVLC master's DataLayer ignores this field; brewnet applies it as
            Caffe's earlier DataLayer did.
        prefetch: batches prepared ahead in a background thread (default 4).
    Args (``transform_param``): see :mod:`brewnet.data.transform`.

    Top: data (N, C, H, W), the shape given by the first record and the crop, and
    optionally label (N,). After the last record, reading starts again at the first.
    """

    type = "Data"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    max_top_blobs = 2
    can_backward = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.data_param
        self._check_param(param)
        self.source = resolve_source(param.source)
        reader = LMDBReader(self.source)
        rng = layer_rng()
        transformer = DataTransformer(
            transformation_param(self.param, param), self.phase, rng,
            numpy_dtype(self.dtype), detached_error(self),
        )

        cursor = reader.cursor()
        try:
            if param.rand_skip:
                skip = int(rng.integers(param.rand_skip))
                logger.info("Skipping first %d data points.", skip)
                cursor.skip(skip)
            key, value = cursor.current()
            sample = transformer.datum_to_array(parse_datum(value, self.source, key), self.source, key)
            sample_shape = transformer.output_shape(sample.shape)
        except BaseException:
            cursor.close()
            reader.close()
            raise

        batch = int(param.batch_size)
        self._top_shapes: list[Shape] = [(batch, *sample_shape)]
        if len(self.param.top) > 1:
            self._top_shapes.append((batch,))
        logger.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))
        loader = _DatumBatchLoader(
            reader, cursor, transformer, batch, len(self.param.top) > 1, self.dtype,
            self.device,
        )
        self._prefetcher = Prefetcher(loader.load, int(param.prefetch), self.source, loader.close)
        weakref.finalize(self, self._prefetcher.close)

    def _check_param(self, param: caffe_pb2.DataParameter) -> None:
        if param.backend != caffe_pb2.DataParameter.LMDB:
            default = "" if param.HasField("backend") else " (the default when no backend is set)"
            raise DataError(f"layer '{self.name}' (type Data): backend LEVELDB{default}: {LEVELDB_MESSAGE}")
        if not param.source:
            raise self.error("data_param.source is empty; set it to an LMDB directory")
        if param.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive")
        if param.prefetch <= 0:
            raise self.error(
                f"data_param.prefetch is {param.prefetch}; it must be at least 1"
            )

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self._top_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        data, label = self._prefetcher.next()
        self._top_shapes[0] = tuple(data.shape)
        return [data] if label is None else [data, label]

    def close(self) -> None:
        """Stop the prefetch thread and close the database."""
        self._prefetcher.close()


def _key_text(key: bytes) -> str:
    try:
        return f"'{key.decode('ascii')}'"
    except UnicodeDecodeError:
        return repr(key)


class _ImageBatchLoader:
    """Read, resize and transform batches of listed image files; runs in the prefetch thread."""

    def __init__(self, layer: "ImageDataLayer", transformer: DataTransformer, shuffle_rng) -> None:
        param = layer.param.image_data_param
        self.source = layer.source
        self.entries = layer.entries
        self.position = layer.position
        self.root = param.root_folder
        self.color = bool(param.is_color)
        self.size = (int(param.new_height), int(param.new_width))
        self.batch_size = int(param.batch_size)
        self.shuffle = bool(param.shuffle)
        self.shuffle_rng = shuffle_rng
        self.transformer = transformer
        self.dtype = layer.dtype
        self.device = layer.device

    def read(self, index: int) -> np.ndarray:
        """Return entry ``index`` as a C x H x W uint8 array."""
        from brewnet.data.image import read_image

        name = self.entries[index][0]
        image = read_image(self.root + name, self.color, *self.size)
        return image.transpose(2, 0, 1)

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        samples: list[np.ndarray] = []
        labels = np.empty(self.batch_size, dtype=numpy_dtype(self.dtype))
        for item in range(self.batch_size):
            sample = self.transformer.transform(self.read(self.position))
            if samples and sample.shape != samples[0].shape:
                raise DataError(
                    f"{self.source}: image '{self.entries[self.position][0]}' gives a "
                    f"sample of shape {sample.shape}, but the batch started with shape "
                    f"{samples[0].shape}; set new_height and new_width, or crop_size, "
                    f"so that all images have one shape"
                )
            samples.append(sample)
            labels[item] = self.entries[self.position][1]
            self.position += 1
            if self.position >= len(self.entries):
                logger.debug("Restarting data prefetching from start.")
                self.position = 0
                if self.shuffle:
                    shuffle_entries(self.entries, self.shuffle_rng)
        data = torch.from_numpy(np.stack(samples)).to(self.device, self.dtype)
        return data, torch.from_numpy(labels).to(self.device, self.dtype)


def shuffle_entries(entries: list, rng: np.random.Generator) -> None:
    """Shuffle ``entries`` in place."""
    order = rng.permutation(len(entries))
    entries[:] = [entries[i] for i in order]


@register_layer
class ImageDataLayer(Layer):
    """Read batches of image files named in a list file, with their labels.

    Args (``image_data_param``):
        source: a text file with one ``filename label`` per line; the label follows
            the last space.
        root_folder: prefixed to every file name as plain text (as in Caffe, so it
            usually ends with '/').
        batch_size: images per batch (default 1).
        new_height, new_width: resize every image to this size (bilinear); 0 and 0
            keep the original size. Set both or neither.
        is_color: decode to 3 BGR channels (default) or to 1 grey channel.
        shuffle: shuffle the list at the start and after every pass.
        rand_skip: skip a random number of lines in [0, rand_skip) at the start.
    Args (``transform_param``): see :mod:`brewnet.data.transform`.

    Top: data (N, C, H, W), the shape given by the first image, and label (N,).
    Relative paths start at the working directory.
    """

    type = "ImageData"
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2
    can_backward = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        from brewnet.data.image import read_image_list

        param = self.param.image_data_param
        if (param.new_height == 0) != (param.new_width == 0):
            raise self.error(
                "image_data_param needs new_height and new_width set together (or "
                "neither)"
            )
        if param.batch_size <= 0:
            raise self.error("image_data_param.batch_size must be positive")
        self.source = resolve_source(param.source)
        self.entries = read_image_list(self.source)
        shuffle_rng = layer_rng()
        transformer = DataTransformer(
            transformation_param(self.param, param), self.phase, layer_rng(),
            numpy_dtype(self.dtype), detached_error(self),
        )
        if param.shuffle:
            logger.info("Shuffling data")
            shuffle_entries(self.entries, shuffle_rng)
        logger.info("A total of %d images.", len(self.entries))
        self.position = 0
        if param.rand_skip:
            skip = int(shuffle_rng.integers(param.rand_skip))
            logger.info("Skipping first %d data points.", skip)
            if skip >= len(self.entries):
                raise self.error(
                    f"rand_skip drew {skip}, but the list has only {len(self.entries)} "
                    f"images; not enough points to skip, lower rand_skip"
                )
            self.position = skip
        loader = _ImageBatchLoader(self, transformer, shuffle_rng)
        first = loader.read(self.position)
        shape = transformer.output_shape(first.shape)
        batch = int(param.batch_size)
        self._top_shapes: list[Shape] = [(batch, *shape), (batch,)]
        logger.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))
        self._prefetcher = Prefetcher(loader.load, int(self.param.data_param.prefetch), self.source)
        weakref.finalize(self, self._prefetcher.close)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self._top_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        data, label = self._prefetcher.next()
        self._top_shapes[0] = tuple(data.shape)
        return [data, label]

    def close(self) -> None:
        """Stop the prefetch thread."""
        self._prefetcher.close()


@register_layer
class HDF5DataLayer(Layer):
    """Read rows of HDF5 datasets, one dataset per top, from a list of files.

    Args (``hdf5_data_param``):
        source: a text file that lists .h5 files (whitespace-separated); relative
            paths start at the working directory.
        batch_size: rows per batch.
        shuffle: shuffle the order of the files and of the rows within each file;
            rows of different files are never mixed.

    Top: one blob per dataset, named as the dataset, of shape (N, ...) where ...
    is the dataset's shape after its first axis. After the last row of the last
    file, reading starts again at the first file. Values are read as floats.
    """

    type = "HDF5Data"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    can_backward = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        from brewnet.data.hdf5 import read_hdf5_list

        param = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param")
        if param.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive")
        self.source = resolve_source(param.source)
        self.files = read_hdf5_list(self.source)
        self._rng = layer_rng()
        self._file_order = list(range(len(self.files)))
        if param.shuffle:
            self._file_order = self._rng.permutation(len(self.files)).tolist()
        self._current_file = 0
        self._trailing: list[Shape] | None = None
        self._load_file()
        batch = int(param.batch_size)
        self._trailing = [tuple(a.shape[1:]) for a in self._arrays]
        self._top_shapes: list[Shape] = [(batch, *shape) for shape in self._trailing]

    def _load_file(self) -> None:
        from brewnet.data.hdf5 import load_hdf5_datasets

        name = self.files[self._file_order[self._current_file]]
        logger.debug("Loading HDF5 file: %s", name)
        self._arrays = load_hdf5_datasets(
            name, list(self.param.top), numpy_dtype(self.dtype)
        )
        trailing = [tuple(a.shape[1:]) for a in self._arrays]
        if self._trailing is not None and trailing != self._trailing:
            raise DataError(
                f"HDF5 file '{name}' has datasets of shapes {trailing} after the first "
                f"axis, but the first file had {self._trailing}; every listed file "
                f"must have the same shapes"
            )
        rows = self._arrays[0].shape[0]
        self._row_order = np.arange(rows)
        if self.param.hdf5_data_param.shuffle:
            self._row_order = self._rng.permutation(rows)
        self._current_row = 0

    def _next_row(self) -> None:
        self._current_row += 1
        if self._current_row < len(self._row_order):
            return
        shuffle = self.param.hdf5_data_param.shuffle
        if len(self.files) > 1:
            self._current_file += 1
            if self._current_file == len(self.files):
                self._current_file = 0
                if shuffle:
                    self._file_order = self._rng.permutation(len(self.files)).tolist()
                logger.debug("Looping around to first file.")
            self._load_file()
        self._current_row = 0
        if shuffle and len(self.files) == 1:
            self._row_order = self._rng.permutation(len(self._row_order))

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self._top_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        batch = self._top_shapes[0][0]
        outputs = [np.empty(shape, dtype=a.dtype) for shape, a in zip(self._top_shapes, self._arrays)]
        for item in range(batch):
            row = self._row_order[self._current_row]
            for output, array in zip(outputs, self._arrays):
                output[item] = array[row]
            self._next_row()
        return [torch.from_numpy(o).to(self.device, self.dtype) for o in outputs]


@register_layer
class MemoryDataLayer(Layer):
    """Serve batches from arrays that the caller hands over with :meth:`set_input_arrays`.

    Args (``memory_data_param``):
        batch_size, channels, height, width: the shape of each data batch; all
            must be positive.

    Top: data (N, C, H, W) and label, (N,) before the first forward and
    (N, 1, 1, 1) after it, as in Caffe. Batches walk through the arrays and start
    again at the first row after the last. The arrays are not transformed.
    """

    type = "MemoryData"
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2
    can_backward = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.memory_data_param
        self._shape = (int(param.batch_size), int(param.channels), int(param.height), int(param.width))
        if min(self._shape) <= 0:
            raise self.error(
                f"memory_data_param gives batch_size, channels, height, width = "
                f"{self._shape}; all must be specified and positive"
            )
        self._data: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._position = 0

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        label = (self._shape[0], 1, 1, 1) if self._data is not None else (self._shape[0],)
        return [self._shape, label]

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Use ``data`` (M, C, H, W) and ``labels`` (M,) or (M, 1, 1, 1) from now on.

        M must be a multiple of batch_size. Reading starts again at the first row.

        Raises:
            ValueError: the arrays have the wrong shapes.
        """
        data = np.asarray(data)
        labels = np.asarray(labels)
        batch, channels, height, width = self._shape
        if data.ndim != 4 or data.shape[1:] != (channels, height, width):
            raise ValueError(
                f"layer '{self.name}': data array has shape {data.shape}; expected "
                f"(M, {channels}, {height}, {width}) to match memory_data_param"
            )
        if labels.ndim == 4 and labels.shape[1:] == (1, 1, 1):
            labels = labels.reshape(-1)
        if labels.ndim != 1:
            raise ValueError(
                f"layer '{self.name}': labels array has shape {labels.shape}; expected "
                f"(M,) or (M, 1, 1, 1)"
            )
        if labels.shape[0] != data.shape[0]:
            raise ValueError(
                f"layer '{self.name}': data and labels must have the same first "
                f"dimension, got {data.shape[0]} and {labels.shape[0]}"
            )
        if data.shape[0] == 0 or data.shape[0] % batch:
            raise ValueError(
                f"layer '{self.name}': first dimensions of input arrays must be a "
                f"positive multiple of batch size {batch}, got {data.shape[0]}"
            )
        self._data = torch.as_tensor(np.ascontiguousarray(data)).to(self.device, self.dtype)
        self._labels = torch.as_tensor(np.ascontiguousarray(labels)).to(self.device, self.dtype)
        self._position = 0

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._data is None:
            raise self.error(
                "MemoryData has no arrays; call set_input_arrays(data, labels) on the "
                "layer before the first forward"
            )
        batch = self._shape[0]
        start = self._position
        data = self._data[start : start + batch]
        labels = self._labels[start : start + batch].reshape(batch, 1, 1, 1)
        self._position = (start + batch) % self._data.shape[0]
        return [data, labels]
