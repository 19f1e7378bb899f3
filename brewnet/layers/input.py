"""The Input layer: net inputs whose data the user writes."""

from __future__ import annotations

from typing import Sequence

import torch

from brewnet.layers.base import Layer, Shape
from brewnet.layers.registry import register_layer


@register_layer
class InputLayer(Layer):
    """Provide blobs of fixed shapes that the caller fills before each forward.

    Args (``input_param``):
        shape: one BlobShape per top, or a single one shared by every top.

    Top: one blob per listed top, of the given shape.
    """

    type = "Input"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    can_backward = False
    keeps_top_data = True

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shapes = list(self.param.input_param.shape)
        num_tops = len(self.param.top)
        if len(shapes) not in (0, 1, num_tops):
            raise self.error(
                f"input_param has {len(shapes)} shapes for {num_tops} tops; give one "
                f"shape, or one per top"
            )
        if len(shapes) == 1:
            shapes = shapes * num_tops
        self._shapes = [tuple(int(d) for d in shape.dim) for shape in shapes]
        if not self._shapes:
            self._shapes = [()] * num_tops
        for shape in self._shapes:
            if any(d < 0 for d in shape):
                raise self.error(f"input_param shape {shape} has a negative dimension")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self._shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        raise RuntimeError("the net keeps Input data itself; Input.forward is never called")
