"""The base class of every layer.

A layer follows Caffe's life cycle, over PyTorch tensors:

``setup(bottom_shapes)``
    Called once when the net is built. Validates the layer's parameters against the
    bottom shapes and creates the parameter blobs in ``self.blobs`` (filled by the
    layer's fillers).
``reshape(bottom_shapes) -> top_shapes``
    Infers the top shapes. The default runs :meth:`forward` on tensors of the
    ``meta`` device, which carry shapes but no data, so most layers need not
    override it.
``forward(bottom) -> top``
    Computes the tops from the bottoms with differentiable torch operations. Autograd
    provides the backward pass, so a layer has no ``backward`` of its own. A forward
    never writes into its bottoms, which is what makes in-place layers safe.

The net owns the wiring: it decides which bottoms carry gradients, weights the tops
with their loss weights and shares parameter tensors between layers. Layers read their
parameters from ``self.blobs`` at every call, so a shared or reloaded tensor is seen at
once.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from brewnet.errors import LayerSetupError
from brewnet.proto import caffe_pb2

Shape = tuple[int, ...]

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


class Layer:
    """A Caffe layer: parameters from a ``LayerParameter``, tensors in and out.

    Class attributes that subclasses set:
        type: the Caffe type name used in prototxt (``"Convolution"``).
        exact_num_bottom_blobs, min_bottom_blobs, max_bottom_blobs,
        exact_num_top_blobs, min_top_blobs, max_top_blobs: blob counts the layer
            accepts; -1 means no constraint, as in Caffe.
        equal_num_bottom_top_blobs: the layer needs as many tops as bottoms.
        is_loss: the layer is of Caffe's loss kind, so its first top weighs 1 and its
            other tops 0 when the prototxt gives no ``loss_weight``.
        can_backward: False for layers that cannot propagate a gradient (Accuracy,
            ArgMax, data layers); a nonzero loss weight on their tops is an error.
        keeps_top_data: True for Input-like layers whose tops are written by the user;
            the net keeps the blob data instead of calling :meth:`forward`.
    """

    type: ClassVar[str] = ""
    exact_num_bottom_blobs: ClassVar[int] = -1
    min_bottom_blobs: ClassVar[int] = -1
    max_bottom_blobs: ClassVar[int] = -1
    exact_num_top_blobs: ClassVar[int] = -1
    min_top_blobs: ClassVar[int] = -1
    max_top_blobs: ClassVar[int] = -1
    equal_num_bottom_top_blobs: ClassVar[bool] = False
    is_loss: ClassVar[bool] = False
    can_backward: ClassVar[bool] = True
    keeps_top_data: ClassVar[bool] = False

    def __init__(
        self,
        param: caffe_pb2.LayerParameter,
        phase: int = TRAIN,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.param = param
        self.name = param.name
        self.phase = phase
        self.dtype = dtype
        self.device = torch.device(device)
        self.blobs: list[torch.Tensor] = []

    # ----------------------------------------------------------------------------
    # Life cycle; subclasses override these.

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        """Validate parameters against the bottom shapes and create ``self.blobs``."""

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        """Return the top shapes for the given bottom shapes."""
        return infer_shapes_on_meta(self, bottom_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        """Compute the top tensors from the bottom tensors."""
        raise NotImplementedError(f"layer type '{self.type}' has no forward")

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Return whether ``force_backward`` may send a gradient to this bottom."""
        return True

    # ----------------------------------------------------------------------------
    # Helpers for subclasses.

    def error(self, message: str) -> LayerSetupError:
        """Return an error whose message names this layer and its type."""
        return LayerSetupError(f"layer '{self.name}' (type {self.type}): {message}")

    def new_blob(
        self,
        shape: Sequence[int],
        filler: caffe_pb2.FillerParameter | None,
        field: str | None = None,
    ):
        """Create a parameter tensor of ``shape`` filled by ``filler``.

        A missing filler means Caffe's default filler: constant zero. A filler error
        names this layer and, when given, the prototxt ``field`` of the filler.
        """
        from brewnet.fillers import fill

        if filler is None:
            filler = caffe_pb2.FillerParameter()
        try:
            values = fill(filler, tuple(int(s) for s in shape), dtype=self.dtype)
        except LayerSetupError as error:
            prefix = f"{field}: " if field else ""
            raise self.error(f"{prefix}{error}") from None
        return values.to(self.device)

    def check_blob_counts(self, num_bottom: int, num_top: int) -> None:
        """Raise when the layer has a number of bottoms or tops it does not accept."""
        checks = [
            ("bottom", num_bottom, self.exact_num_bottom_blobs, "exactly"),
            ("bottom", num_bottom, self.min_bottom_blobs, "at least"),
            ("bottom", num_bottom, self.max_bottom_blobs, "at most"),
            ("top", num_top, self.exact_num_top_blobs, "exactly"),
            ("top", num_top, self.min_top_blobs, "at least"),
            ("top", num_top, self.max_top_blobs, "at most"),
        ]
        for kind, actual, bound, relation in checks:
            if bound < 0:
                continue
            failed = (
                (relation == "exactly" and actual != bound)
                or (relation == "at least" and actual < bound)
                or (relation == "at most" and actual > bound)
            )
            if failed:
                plural = "blob" if bound == 1 else "blobs"
                raise self.error(
                    f"takes {relation} {bound} {kind} {plural}, but {actual} "
                    f"{'is' if actual == 1 else 'are'} given"
                )
        if self.equal_num_bottom_top_blobs and num_bottom != num_top:
            raise self.error(
                f"needs as many tops as bottoms, but has {num_bottom} bottoms "
                f"and {num_top} tops"
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


def infer_shapes_on_meta(layer: Layer, bottom_shapes: Sequence[Shape]) -> list[Shape]:
    """Run ``layer.forward`` on meta tensors and return the top shapes.

    Meta tensors have shapes and dtypes but no storage, so this costs no arithmetic.
    The layer's parameter tensors are swapped for meta copies during the call.
    """
    saved = layer.blobs
    layer.blobs = [blob.detach().to("meta") for blob in saved]
    try:
        with torch.no_grad():
            bottoms = [
                torch.empty(shape, dtype=layer.dtype, device="meta")
                for shape in bottom_shapes
            ]
            tops = layer.forward(bottoms)
    finally:
        layer.blobs = saved
    return [tuple(top.shape) for top in tops]


def is_meta(tensor: torch.Tensor) -> bool:
    """Return whether ``tensor`` is a shape-only tensor of the meta device.

    Value checks (a label out of range, say) cannot run on such tensors and are
    skipped during shape inference.
    """
    return tensor.device.type == "meta"


def canonical_axis(layer: Layer, axis: int, num_axes: int, field: str = "axis") -> int:
    """Return ``axis`` made non-negative, as Caffe's ``CanonicalAxisIndex`` does."""
    if not -num_axes <= axis < max(num_axes, 1):
        raise layer.error(
            f"{field} {axis} is out of range for a bottom with {num_axes} axes; "
            f"use a value in [{-num_axes}, {num_axes - 1}]"
        )
    return axis + num_axes if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Return the product of ``shape[start:end]`` (1 for an empty range)."""
    result = 1
    for dim in shape[start:end]:
        result *= int(dim)
    return result
