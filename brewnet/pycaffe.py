"""pycaffe's Net surface: layer views, batch helpers and the other extras.

:class:`PycaffeNet` is a base class of :class:`brewnet.Net`. It gives pycaffe's
``layers``, ``layer_dict``, ``_layer_names``, ``forward_all``,
``forward_backward_all``, ``set_input_arrays``, ``save_hdf5`` and ``load_hdf5``.

pycaffe's ``net.layers[i].blobs[j].data`` is a NumPy array, while brewnet's layers
keep their parameters as torch tensors in ``layer.blobs``. So ``net.layers`` and
``net.layer_dict`` return :class:`LayerView` objects, whose ``blobs`` are
:class:`~brewnet.blob.ParamBlob` views of the tensors; every other attribute is the
layer's own. Code inside brewnet uses ``net._layers`` and ``net._layer_dict``, which
hold the layer objects themselves.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from itertools import zip_longest
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from brewnet.blob import Blob, ParamBlob

if TYPE_CHECKING:
    from brewnet.layers.base import Layer

logger = logging.getLogger(__name__)


class LayerView:
    """pycaffe's view of a layer: ``type`` and ``blobs`` with NumPy ``data``/``diff``.

    Reading or setting any other attribute reaches the underlying brewnet layer
    (``view.name``, ``view.param``, ``view.set_input_arrays(...)``).
    """

    __slots__ = ("_layer",)

    def __init__(self, layer: Layer) -> None:
        object.__setattr__(self, "_layer", layer)

    @property
    def blobs(self) -> list[ParamBlob]:
        """The layer's parameters as blobs whose ``data``/``diff`` write through."""
        layer = self._layer
        return [
            ParamBlob(f"{layer.name}[{index}]", tensor)
            for index, tensor in enumerate(layer.blobs)
        ]

    @property
    def type(self) -> str:
        return self._layer.type

    @property
    def layer(self) -> Layer:
        """The brewnet layer object behind this view."""
        return self._layer

    def __getattr__(self, name: str):
        if name == "_layer":  # not yet set, as in a copy under construction
            raise AttributeError(name)
        return getattr(self._layer, name)

    def __setattr__(self, name: str, value) -> None:
        if name == "_layer":
            object.__setattr__(self, name, value)
        else:
            setattr(self._layer, name, value)

    def __repr__(self) -> str:
        return f"<LayerView '{self._layer.name}' ({self._layer.type})>"


def layer_view(layer: Layer):
    """Return what pycaffe's ``net.layers`` shows for ``layer``.

    A Python layer is shown as the user's own object, as in pycaffe; any other layer
    as a :class:`LayerView`.
    """
    python_object = getattr(layer, "python_object", None)
    if python_object is not None:
        return python_object
    return LayerView(layer)


class PycaffeNet:
    """pycaffe's extra Net members; :class:`brewnet.Net` inherits them.

    The methods rely on the Net attributes ``_layers``, ``blobs``, ``inputs``,
    ``outputs``, ``top_names``, ``bottom_names``, :meth:`forward` and
    :meth:`backward`.
    """

    # ------------------------------------------------------------------ layers
    @property
    def layers(self) -> list:
        """The layers in net order, as pycaffe shows them (see :class:`LayerView`)."""
        views = self.__dict__.get("_layer_views")
        if views is None or len(views) != len(self._layers):
            views = [layer_view(layer) for layer in self._layers]
            self.__dict__["_layer_views"] = views
        return list(views)

    @property
    def layer_dict(self) -> OrderedDict:
        """The layer views by name; with repeated names the last layer wins."""
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def _layer_names(self) -> list[str]:
        return [layer.name for layer in self._layers]

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def _blobs(self) -> list[Blob]:
        return list(self.blobs.values())

    def _top_ids(self, index: int) -> list[int]:
        """Return the blob indices of the tops of layer ``index``."""
        names = self._blob_names
        return [names.index(name) for name in self.top_names[self._layer_names[index]]]

    def _bottom_ids(self, index: int) -> list[int]:
        """Return the blob indices of the bottoms of layer ``index``."""
        names = self._blob_names
        return [names.index(name) for name in self.bottom_names[self._layer_names[index]]]

    def _forward(self, start: int, end: int) -> float:
        """Run layers ``start..end`` (indices, inclusive) forward; return the loss."""
        names = self._layer_names
        self.forward(start=names[start], end=names[end])
        return self.loss

    def _backward(self, start: int, end: int) -> None:
        """Run layers ``start`` down to ``end`` (indices, inclusive) backward."""
        names = self._layer_names
        self.backward(start=names[start], end=names[end])

    # ------------------------------------------------------------------ batches
    def _batch(self, arrays: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Yield ``arrays`` cut into batches of the net's batch size.

        The batch size is the first dimension of the net's first blob, as in pycaffe.
        The last batch is padded with zeros to the full size.
        """
        if not arrays:
            return
        num = len(next(iter(arrays.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        full, remainder = divmod(num, batch_size)
        for batch in range(full):
            start = batch * batch_size
            yield {name: array[start : start + batch_size] for name, array in arrays.items()}
        if remainder:
            padded = {}
            for name, array in arrays.items():
                array = np.asarray(array)
                padding = np.zeros((batch_size - remainder,) + array.shape[1:])
                padded[name] = np.concatenate([array[-remainder:], padding])
            yield padded

    def _check_batch_inputs(self, arrays: dict[str, np.ndarray], what: str) -> None:
        lengths = {name: len(array) for name, array in arrays.items()}
        for name in arrays:
            if name not in self.blobs:
                raise KeyError(f"net '{self.name}' has no blob named '{name}'")
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"{what}: the arrays have different lengths {lengths}; give every input "
                f"the same number of items"
            )

    def forward_all(self, blobs: Iterable[str] | None = None, **inputs) -> dict[str, np.ndarray]:
        """Run forward over input arrays of any length, in batches of the net's size.

        Returns the output blobs (and ``blobs``) for every item, concatenated, with the
        padding of the last batch removed.
        """
        blobs = list(blobs or [])
        self._check_batch_inputs(inputs, "forward_all")
        collected: dict[str, list] = {name: [] for name in set(self.outputs + blobs)}
        for batch in self._batch(inputs):
            outputs = self.forward(blobs=blobs, **batch)
            for name, value in outputs.items():
                _collect(collected[name], value)
        results = {name: np.asarray(values) for name, values in collected.items()}
        return _strip_padding(results, inputs, self._padded_length(inputs))

    def forward_backward_all(
        self,
        blobs: Iterable[str] | None = None,
        diffs: Iterable[str] | None = None,
        **arrays,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Run forward and backward over arrays of any length, in batches.

        Keyword arrays named after inputs feed forward; those named after outputs are
        the output diffs of backward. Returns (blob arrays, diff arrays) for every
        item, with the padding of the last batch removed.
        """
        blobs = list(blobs or [])
        diffs = list(diffs or [])
        self._check_batch_inputs(arrays, "forward_backward_all")
        all_outputs: dict[str, list] = {name: [] for name in set(self.outputs + blobs)}
        all_diffs: dict[str, list] = {name: [] for name in set(self.inputs + diffs)}
        forward_batches = self._batch({k: arrays[k] for k in self.inputs if k in arrays})
        backward_batches = self._batch({k: arrays[k] for k in self.outputs if k in arrays})
        for forward_batch, backward_batch in zip_longest(
            forward_batches, backward_batches, fillvalue={}
        ):
            outputs = self.forward(blobs=blobs, **forward_batch)
            gradients = self.backward(diffs=diffs, **backward_batch)
            for name, value in outputs.items():
                _collect(all_outputs[name], value)
            for name, value in gradients.items():
                _collect(all_diffs[name], value)
        outputs = {name: np.asarray(values) for name, values in all_outputs.items()}
        gradients = {name: np.asarray(values) for name, values in all_diffs.items()}
        padded = self._padded_length(arrays)
        return _strip_padding(outputs, arrays, padded), _strip_padding(gradients, arrays, padded)

    def _padded_length(self, arrays: dict[str, np.ndarray]) -> int:
        """Return the item count after :meth:`_batch` pads ``arrays``."""
        if not arrays:
            return 0
        num = len(next(iter(arrays.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        return -(-num // batch_size) * batch_size

    # ------------------------------------------------------------------ MemoryData
    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Hand ``data`` (N, C, H, W) and ``labels`` (N,) to the net's MemoryData layer.

        pycaffe requires the first layer to be the MemoryData layer; brewnet uses the
        first MemoryData layer wherever it is. The arrays are copied.

        Raises:
            ValueError: the net has no MemoryData layer, or the arrays have the wrong
                shapes for it.
        """
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = labels[:, np.newaxis, np.newaxis, np.newaxis]
        for layer in self._layers:
            if layer.type == "MemoryData":
                layer.set_input_arrays(np.asarray(data), labels)
                return
        raise ValueError(
            f"net '{self.name}' has no MemoryData layer; set_input_arrays needs one "
            f"(type: \"MemoryData\" with memory_data_param)"
        )

    # ------------------------------------------------------------------ HDF5
    def save_hdf5(self, filename: str | os.PathLike) -> None:
        """Write the parameters as a Caffe ``.caffemodel.h5`` file."""
        from brewnet.io.hdf5 import save_hdf5

        save_hdf5(self, filename)

    def load_hdf5(self, filename: str | os.PathLike) -> None:
        """Copy parameters by layer name from a Caffe ``.caffemodel.h5`` file."""
        from brewnet.io.hdf5 import copy_trained_layers_from_hdf5

        copy_trained_layers_from_hdf5(self, filename)


def _collect(values: list, output: np.ndarray) -> None:
    """Add a batch's rows to ``values``; a scalar output (a loss) adds one entry."""
    if np.ndim(output) == 0:
        values.append(np.array(output))
    else:
        values.extend(np.array(output, copy=True))


def _strip_padding(
    results: dict[str, np.ndarray], inputs: dict[str, np.ndarray], padded: int
) -> dict[str, np.ndarray]:
    """Drop the rows that :meth:`PycaffeNet._batch` added to fill the last batch.

    Only arrays with one row per padded item are cut; per-batch values (a scalar
    loss gives one per batch) stay whole.
    """
    if not results or not inputs:
        return results
    pad = padded - len(next(iter(inputs.values())))
    if pad <= 0:
        return results
    return {
        name: values[:-pad] if len(values) == padded else values
        for name, values in results.items()
    }
