"""Blobs: named tensors with a ``data`` and a ``diff`` array, as pycaffe shows them."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

Shape = tuple[int, ...]


def shape_string(shape: Sequence[int]) -> str:
    """Return a shape the way Caffe logs it: ``"64 1 28 28 (50176)"``, ``"(1)"``."""
    total = 1
    for dim in shape:
        total *= int(dim)
    dims = " ".join(str(int(d)) for d in shape)
    return f"{dims} ({total})" if dims else f"({total})"


def reshape_arguments(name: str, shape: tuple) -> Shape:
    """Return the shape that ``reshape(*shape)`` or ``reshape(shape)`` requests.

    Raises:
        ValueError: a dimension is negative.
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    new_shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in new_shape):
        raise ValueError(f"blob '{name}': negative dimension in shape {new_shape}")
    return new_shape


class LegacyShape:
    """Caffe's num/channels/height/width accessors over ``self.shape``: a missing
    axis counts as 1."""

    shape: Shape

    def _legacy_dim(self, index: int) -> int:
        shape = self.shape
        return shape[index] if index < len(shape) else 1

    @property
    def num(self) -> int:
        return self._legacy_dim(0)

    @property
    def channels(self) -> int:
        return self._legacy_dim(1)

    @property
    def height(self) -> int:
        return self._legacy_dim(2)

    @property
    def width(self) -> int:
        return self._legacy_dim(3)


class Blob(LegacyShape):
    """A named activation: its current tensor, and its gradient after backward.

    ``data`` and ``diff`` are NumPy views of the tensors on the CPU, so writing into
    them (``blob.data[...] = x``) changes what the next forward pass reads.
    """

    def __init__(
        self,
        name: str,
        shape: Sequence[int] = (),
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.name = name
        self._shape: Shape = tuple(int(d) for d in shape)
        self._dtype = dtype
        self._device = torch.device(device)
        self._data: torch.Tensor | None = None
        self._diff: torch.Tensor | None = None

    # ---------------------------------------------------------------- tensors
    @property
    def tensor(self) -> torch.Tensor:
        """The current data tensor (allocated as zeros on first use)."""
        if self._data is None:
            self._data = torch.zeros(self._shape, dtype=self._dtype, device=self._device)
        return self._data

    @tensor.setter
    def tensor(self, value: torch.Tensor) -> None:
        self._data = value
        self._shape = tuple(value.shape)

    @property
    def grad(self) -> torch.Tensor:
        """The current diff tensor (allocated as zeros on first use)."""
        if self._diff is None or tuple(self._diff.shape) != self.shape:
            self._diff = torch.zeros(self.shape, dtype=self._dtype, device=self._device)
        return self._diff

    @grad.setter
    def grad(self, value: torch.Tensor | None) -> None:
        self._diff = value

    # ---------------------------------------------------------------- pycaffe surface
    @property
    def data(self) -> np.ndarray:
        """The blob's values as a NumPy array that writes through to the tensor."""
        return _numpy_view(self.tensor)

    @data.setter
    def data(self, value) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        """The blob's gradient as a NumPy array that writes through to the tensor."""
        return _numpy_view(self.grad)

    @diff.setter
    def diff(self, value) -> None:
        self.diff[...] = value

    @property
    def shape(self) -> Shape:
        if self._data is not None:
            return tuple(self._data.shape)
        return self._shape

    @property
    def count(self) -> int:
        total = 1
        for dim in self.shape:
            total *= dim
        return total

    def reshape(self, *shape: int) -> None:
        """Give the blob a new shape; its data and diff become zeros of that shape."""
        self._shape = reshape_arguments(self.name, shape)
        self._data = None
        self._diff = None

    def __repr__(self) -> str:
        return f"<Blob '{self.name}' {shape_string(self.shape)}>"


class ParamBlob(Blob):
    """A learnable parameter: a leaf tensor whose ``.grad`` is the blob's diff."""

    def __init__(self, name: str, tensor: torch.Tensor) -> None:
        super().__init__(name, tuple(tensor.shape), tensor.dtype, tensor.device)
        self._data = tensor

    @property
    def tensor(self) -> torch.Tensor:
        return self._data

    @tensor.setter
    def tensor(self, value: torch.Tensor) -> None:
        self._data = value

    @property
    def grad(self) -> torch.Tensor:
        param = self._data
        if param.grad is None:
            param.grad = torch.zeros_like(param, requires_grad=False)
        return param.grad

    @grad.setter
    def grad(self, value: torch.Tensor | None) -> None:
        self._data.grad = value

    def reshape(self, *shape: int) -> None:
        """Give the parameter a new shape (data zeros), keeping the same tensor object."""
        with torch.no_grad():
            self._data.data = torch.zeros(
                reshape_arguments(self.name, shape),
                dtype=self._data.dtype, device=self._data.device,
            )
        self._data.grad = None


def _numpy_view(tensor: torch.Tensor) -> np.ndarray:
    detached = tensor.detach()
    if detached.device.type != "cpu":
        # NOTE: a GPU tensor has no CPU view, so this is a copy and writes into it
        # do not reach the tensor.
        return detached.cpu().numpy()
    return detached.numpy()
