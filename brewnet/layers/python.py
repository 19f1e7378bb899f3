"""The Python layer: a layer written in Python against pycaffe's ``caffe.Layer``.

The user's class (see :mod:`brewnet.python_layer`) works on NumPy arrays. Its forward
runs inside a ``torch.autograd.Function``, so autograd calls the user's ``backward``
with the top diffs and takes the bottom diffs it writes.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import sys
from typing import Sequence

import numpy as np
import torch

from brewnet.layers.base import Layer, Shape, is_meta
from brewnet.layers.registry import register_layer
from brewnet.python_layer import ArrayBlob, BlobVec

logger = logging.getLogger(__name__)

_REQUIRED_METHODS = ("setup", "reshape", "forward", "backward")


@register_layer
class PythonLayer(Layer):
    """Run a layer class written in Python (pycaffe's Python layer).

    Args (``python_param``):
        module: the module to import (found on ``sys.path``, e.g. via PYTHONPATH).
        layer: the class in that module; it is called with the LayerParameter.
        param_str: a string handed to the object as ``self.param_str``.
        share_in_parallel: accepted and ignored (brewnet trains in one process).

    Bottom and top: any number, of any shapes the class accepts. Parameter blobs
    that the class creates with ``self.blobs.add_blob`` are learnable, saved in
    ``.caffemodel`` files, and shown as ``net.params[name]``.
    """

    type = "Python"

    def __init__(self, param, phase=0, dtype=torch.float32, device="cpu") -> None:
        super().__init__(param, phase=phase, dtype=dtype, device=device)
        self.python_object = None
        self.in_setup = False
        self._numpy_dtype = np.float64 if dtype == torch.float64 else np.float32
        self._bottom_blobs: list[ArrayBlob] = []
        self._top_blobs: list[ArrayBlob] = []

    # ------------------------------------------------------------------ building
    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        cls = self._load_class()
        try:
            python_object = cls(self.param)
        except Exception as error:
            _add_note(error, f"while constructing {self._class_path()} for {self._where()}")
            raise
        python_object.param_str = self.param.python_param.param_str
        python_object.phase = int(self.phase)
        python_object.blobs = BlobVec(self)
        self.python_object = python_object
        self._make_blobs(bottom_shapes)
        self.in_setup = True
        try:
            self._call("setup", self._bottom_blobs, self._top_blobs)
        finally:
            self.in_setup = False

    def _make_blobs(self, bottom_shapes: Sequence[Shape]) -> None:
        """Create the bottom and top blobs; an in-place top is its bottom's blob."""
        bottoms = [
            ArrayBlob(name, self._numpy_dtype, shape)
            for name, shape in zip(self.param.bottom, bottom_shapes)
        ]
        by_name = {blob.name: blob for blob in bottoms}
        tops = [by_name.get(name) or ArrayBlob(name, self._numpy_dtype) for name in self.param.top]
        self._bottom_blobs = bottoms
        self._top_blobs = tops

    def _load_class(self) -> type:
        python_param = self.param.python_param
        module_name = python_param.module
        class_name = python_param.layer
        if not module_name:
            raise self.error(
                "python_param.module is empty; name the Python module that defines "
                "the layer class"
            )
        if not class_name:
            raise self.error(
                f"python_param.layer is empty; name the class in module "
                f"'{module_name}' to use"
            )
        module = self._import(module_name)
        cls = getattr(module, class_name, None)
        if cls is None:
            raise self.error(_missing_class_message(module, class_name))
        if not inspect.isclass(cls):
            raise self.error(
                f"python_param.layer '{class_name}' in module '{module_name}' is a "
                f"{type(cls).__name__}, not a class"
            )
        missing = [name for name in _REQUIRED_METHODS if not callable(getattr(cls, name, None))]
        if missing:
            raise self.error(
                f"class {self._class_path()} lacks {', '.join(missing)}; subclass "
                f"brewnet.Layer (caffe.Layer) and define setup, reshape, forward and "
                f"backward"
            )
        return cls

    def _import(self, module_name: str):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name or module_name.startswith(f"{error.name}."):
                raise self.error(
                    f"cannot import python_param.module '{module_name}': {error}. Put "
                    f"the directory that contains it on PYTHONPATH (searched: "
                    f"{', '.join(p or '.' for p in sys.path[:6])}"
                    f"{', ...' if len(sys.path) > 6 else ''})"
                ) from error
            raise self.error(
                f"importing python_param.module '{module_name}' failed: {error}; "
                f"install the missing module or fix the import"
            ) from error
        except Exception as error:
            raise self.error(
                f"importing python_param.module '{module_name}' failed: "
                f"{type(error).__name__}: {error}"
            ) from error

    # ------------------------------------------------------------------ shapes
    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        for blob, shape in zip(self._bottom_blobs, bottom_shapes):
            blob.reshape(shape)
        self._call("reshape", self._bottom_blobs, self._top_blobs)
        return [blob.shape for blob in self._top_blobs]

    # ------------------------------------------------------------------ running
    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        if any(is_meta(tensor) for tensor in bottom):
            shapes = self.reshape([tuple(tensor.shape) for tensor in bottom])
            return [torch.empty(shape, dtype=self.dtype, device="meta") for shape in shapes]
        inputs = list(bottom) + list(self.blobs)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            return list(_PythonFunction.apply(self, len(bottom), *inputs))
        with torch.no_grad():
            return self.run_forward(bottom)

    def run_forward(self, bottom: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Call the user's reshape and forward on ``bottom``; return the top tensors."""
        for blob, tensor in zip(self._bottom_blobs, bottom):
            blob._set_arrays(tensor.detach().cpu().numpy().astype(self._numpy_dtype, copy=True))
        self._call("reshape", self._bottom_blobs, self._top_blobs)
        self._call("forward", self._bottom_blobs, self._top_blobs)
        return [self._tensor(blob.data) for blob in self._top_blobs]

    def run_backward(
        self,
        top_grads: Sequence[torch.Tensor | None],
        propagate_down: list[bool],
        bottom_data: list[np.ndarray],
        top_data: list[np.ndarray],
    ) -> list[torch.Tensor | None]:
        """Call the user's backward; return the bottom diffs it wrote."""
        for blob, data in zip(self._bottom_blobs, bottom_data):
            blob._set_arrays(data)
        for blob, data, grad in zip(self._top_blobs, top_data, top_grads):
            diff = (
                np.zeros_like(data)
                if grad is None
                else grad.detach().cpu().numpy().astype(self._numpy_dtype, copy=True)
            )
            blob._set_arrays(data, diff)
        self._call("backward", self._top_blobs, list(propagate_down), self._bottom_blobs)
        return [
            self._tensor(blob.diff) if down else None
            for blob, down in zip(self._bottom_blobs, propagate_down)
        ]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        values = np.array(array, dtype=self._numpy_dtype, copy=True)
        return torch.from_numpy(values).to(self.device)

    # ------------------------------------------------------------------ helpers
    def _call(self, method: str, *args) -> None:
        try:
            getattr(self.python_object, method)(*args)
        except Exception as error:
            _add_note(error, f"in {self._class_path()}.{method}() of {self._where()}")
            raise

    def _class_path(self) -> str:
        python_param = self.param.python_param
        return f"{python_param.module}.{python_param.layer}"

    def _where(self) -> str:
        return f"layer '{self.name}' (type Python)"


class _PythonFunction(torch.autograd.Function):
    """Autograd node that runs a Python layer's forward and calls its backward.

    Inputs: the layer, the number of bottoms, the bottom tensors, then the layer's
    parameter tensors. The parameters are inputs only to put the node in the graph
    when they need gradients. The user's backward writes their diffs straight into
    the tensors' ``.grad``, as Caffe's Python layers write the parameter diffs.
    """

    @staticmethod
    def forward(ctx, layer: PythonLayer, num_bottom: int, *tensors: torch.Tensor):
        tops = layer.run_forward(tensors[:num_bottom])
        ctx.layer = layer
        ctx.num_bottom = num_bottom
        ctx.num_params = len(tensors) - num_bottom
        ctx.bottom_data = [blob.data for blob in layer._bottom_blobs]
        ctx.top_data = [blob.data.copy() for blob in layer._top_blobs]
        return tuple(tops)

    @staticmethod
    def backward(ctx, *top_grads: torch.Tensor):
        layer: PythonLayer = ctx.layer
        num_bottom = ctx.num_bottom
        propagate_down = [bool(flag) for flag in ctx.needs_input_grad[2 : 2 + num_bottom]]
        for tensor in layer.blobs:
            if tensor.requires_grad and tensor.grad is None:
                tensor.grad = torch.zeros_like(tensor)
        bottom_diffs = layer.run_backward(top_grads, propagate_down, ctx.bottom_data, ctx.top_data)
        return (None, None, *bottom_diffs, *([None] * ctx.num_params))


def _missing_class_message(module, class_name: str) -> str:
    classes = sorted(
        name for name, value in vars(module).items()
        if inspect.isclass(value) and callable(getattr(value, "forward", None))
    )
    close = difflib.get_close_matches(class_name, classes, n=3)
    where = getattr(module, "__file__", None) or module.__name__
    message = f"module '{module.__name__}' ({where}) has no class '{class_name}'"
    if close:
        return f"{message}; did you mean {', '.join(repr(c) for c in close)}?"
    if classes:
        return f"{message}; its layer classes are {', '.join(classes)}"
    return f"{message}; define it there, subclassing brewnet.Layer (caffe.Layer)"


def _add_note(error: BaseException, note: str) -> None:
    """Attach ``note`` to ``error`` so the traceback names the layer."""
    if hasattr(error, "add_note"):
        error.add_note(note)
