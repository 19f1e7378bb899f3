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
