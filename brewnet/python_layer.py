"""The base class of Python layers (pycaffe's ``caffe.Layer``) and the blobs they see.

A prototxt layer of ``type: "Python"`` names a module and a class in its
``python_param``. The class subclasses :class:`Layer` and defines, as in pycaffe:

``setup(bottom, top)``
    Once, when the net is built. ``self.param_str`` and ``self.phase`` are set
    before it runs; parameter blobs are created here with ``self.blobs.add_blob``.
``reshape(bottom, top)``
    Before every forward pass (and once after ``setup``); it calls
    ``top[i].reshape(...)``.
``forward(bottom, top)``
    Writes ``top[i].data`` from ``bottom[i].data``.
``backward(top, propagate_down, bottom)``
    Writes ``bottom[i].diff`` from ``top[i].diff`` where ``propagate_down[i]`` is
    true, and adds to ``self.blobs[j].diff`` for parameters.

``bottom`` and ``top`` are lists of :class:`ArrayBlob`, whose ``data`` and ``diff``
are NumPy arrays of the net's float type. A top whose name equals a bottom's (an
in-place layer) is the same blob object as that bottom, as in Caffe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from brewnet.blob import LegacyShape, ParamBlob, reshape_arguments, shape_string
from brewnet.layers.base import TRAIN

if TYPE_CHECKING:
    from brewnet.layers.python import PythonLayer


class ArrayBlob(LegacyShape):
    """A bottom or top blob of a Python layer: NumPy ``data`` and ``diff`` arrays.

    A top starts with shape (0,) until the layer's ``reshape`` gives it one.
    """

    def __init__(self, name: str, dtype: np.dtype, shape: Sequence[int] = (0,)) -> None:
        self.name = name
        self._dtype = np.dtype(dtype)
        self._data = np.zeros(tuple(shape), dtype=self._dtype)
        self._diff = np.zeros(tuple(shape), dtype=self._dtype)

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._diff

    @diff.setter
    def diff(self, value) -> None:
        self._diff[...] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    def reshape(self, *shape: int) -> None:
        """Give the blob a new shape; an unchanged shape keeps the data and diff."""
        new_shape = reshape_arguments(self.name, shape)
        if new_shape != self.shape:
            self._data = np.zeros(new_shape, dtype=self._dtype)
            self._diff = np.zeros(new_shape, dtype=self._dtype)

    def _set_arrays(self, data: np.ndarray, diff: np.ndarray | None = None) -> None:
        self._data = data
        self._diff = np.zeros_like(data) if diff is None else diff

    def __repr__(self) -> str:
        return f"<ArrayBlob '{self.name}' {shape_string(self.shape)}>"


class ParamView(ParamBlob):
    """A parameter blob of a Python layer: a view of the layer's tensor ``index``.

    It follows the tensor the net attaches (or shares), so ``data`` always shows the
    current values and ``diff`` the accumulated gradient.
    """

    def __init__(self, layer: PythonLayer, index: int) -> None:
        self._layer = layer
        self._index = index
        self.name = f"{layer.name}[{index}]"

    @property
    def _data(self) -> torch.Tensor:  # read by ParamBlob's members
        return self._layer.blobs[self._index]

    @_data.setter
    def _data(self, value: torch.Tensor) -> None:
        self._layer.blobs[self._index] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)


class BlobVec(list):
    """The parameter blobs of a Python layer (``self.blobs``), as pycaffe's BlobVec."""

    def __init__(self, layer: PythonLayer | None = None) -> None:
        super().__init__()
        self._layer = layer

    def add_blob(self, *shape: int) -> None:
        """Append a parameter blob of ``shape``, filled with zeros, in ``setup``.

        Raises:
            LayerSetupError: called outside ``setup``.
            RuntimeError: the object was not created by a net's Python layer.
        """
        layer = self._layer
        if layer is None:
            raise RuntimeError(
                "add_blob needs a layer built by a net; create the layer from a "
                "prototxt with type: \"Python\""
            )
        if not layer.in_setup:
            raise layer.error(
                "self.blobs.add_blob() may only be called in setup(), before the net "
                "attaches the layer's parameters"
            )
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        dims = tuple(int(d) for d in shape)
        layer.blobs.append(torch.zeros(dims, dtype=layer.dtype, device=layer.device))
        self.append(ParamView(layer, len(layer.blobs) - 1))


class Layer:
    """Base class for Python layers (``caffe.Layer`` in pycaffe).

    Attributes set by the net before ``setup``:
        param_str: ``python_param.param_str`` from the prototxt.
        phase: ``brewnet.TRAIN`` (0) or ``brewnet.TEST`` (1).
        blobs: the layer's parameter blobs (:class:`BlobVec`).
    """

    def __init__(self, param=None) -> None:
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = TRAIN
        self.blobs = BlobVec()

    @property
    def type(self) -> str:
        return "Python"

    def setup(self, bottom: list[ArrayBlob], top: list[ArrayBlob]) -> None:
        """Check parameters and create parameter blobs; the default does nothing."""

    def reshape(self, bottom: list[ArrayBlob], top: list[ArrayBlob]) -> None:
        """Give every top its shape."""
        raise NotImplementedError(
            f"{type(self).__name__} has no reshape(bottom, top); define it and call "
            f"top[i].reshape(...) there"
        )

    def forward(self, bottom: list[ArrayBlob], top: list[ArrayBlob]) -> None:
        """Write ``top[i].data``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no forward(bottom, top); define it"
        )

    def backward(
        self, top: list[ArrayBlob], propagate_down: list[bool], bottom: list[ArrayBlob]
    ) -> None:
        """Write ``bottom[i].diff`` where ``propagate_down[i]`` is true."""
        raise NotImplementedError(
            f"{type(self).__name__} has no backward(top, propagate_down, bottom), but "
            f"the net backpropagates through it; define backward, or set "
            f"propagate_down: false for its bottoms"
        )
