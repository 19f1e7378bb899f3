"""The DummyData layer: tops of fixed shapes filled by weight fillers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from brewnet.fillers import fill, filler_types
from brewnet.layers.base import Layer, Shape
from brewnet.layers.registry import register_layer
from brewnet.proto import caffe_pb2

_LEGACY_FIELDS = ("num", "channels", "height", "width")


@register_layer
class DummyDataLayer(Layer):
    """Produce tops of fixed shapes from fillers, for tests and placeholders.

    Args (``dummy_data_param``):
        shape: one BlobShape for every top, or one per top.
        num, channels, height, width: deprecated 4-axis form of ``shape``; each is
            given once or once per top, and ``shape`` must then be absent.
        data_filler: none (constant 0), one for every top, or one per top.

    No bottoms. Tops: the given shapes. A constant filler fills its top once, at
    set-up; any other filler draws new values at every forward, as in Caffe.
    The layer has no gradient.
    """

    type = "DummyData"
    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    can_backward = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.dummy_data_param
        num_tops = len(self.param.top)
        self._shapes = self._top_shapes(param, num_tops)
        self._fillers = self._top_fillers(param, num_tops)
        # NOTE: Caffe fills constant tops during set-up, so their blobs hold the
        # value before the first forward; here the value appears at the first forward.
        self._constant: list[torch.Tensor | None] = [
            self._fill(i) if filler.type == "constant" else None
            for i, filler in enumerate(self._fillers)
        ]

    def _top_shapes(
        self, param: caffe_pb2.DummyDataParameter, num_tops: int
    ) -> list[Shape]:
        legacy = any(len(getattr(param, name)) for name in _LEGACY_FIELDS)
        if not legacy:
            if len(param.shape) not in (1, num_tops):
                raise self.error(
                    f"dummy_data_param has {len(param.shape)} shapes for {num_tops} "
                    f"tops; give one shape, or one per top"
                )
            shapes = [tuple(int(d) for d in s.dim) for s in param.shape]
        else:
            if len(param.shape):
                raise self.error(
                    "dummy_data_param gives both shape and the deprecated "
                    "num/channels/height/width fields; use only shape"
                )
            columns = []
            for name in _LEGACY_FIELDS:
                values = [int(v) for v in getattr(param, name)]
                if len(values) not in (1, num_tops):
                    raise self.error(
                        f"dummy_data_param has {len(values)} '{name}' values for "
                        f"{num_tops} tops; give it once, or once per top"
                    )
                columns.append(values)
            shapes = [
                tuple(values[0 if len(values) == 1 else i] for values in columns)
                for i in range(num_tops)
            ]
        if len(shapes) == 1:
            shapes = shapes * num_tops
        for shape in shapes:
            if any(d < 0 for d in shape):
                raise self.error(
                    f"dummy_data_param shape {list(shape)} has a negative dimension"
                )
        return shapes

    def _top_fillers(
        self, param: caffe_pb2.DummyDataParameter, num_tops: int
    ) -> list[caffe_pb2.FillerParameter]:
        fillers = list(param.data_filler)
        if len(fillers) not in (0, 1, num_tops):
            raise self.error(
                f"dummy_data_param has {len(fillers)} data_filler values for "
                f"{num_tops} tops; give none (constant 0), one, or one per top"
            )
        if not fillers:
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        for filler in fillers:
            if filler.type not in filler_types():
                raise self.error(
                    f"unknown data_filler type '{filler.type}'; known types are "
                    f"{', '.join(filler_types())}"
                )
        if len(fillers) == 1:
            fillers = fillers * num_tops
        return fillers

    def _fill(self, index: int) -> torch.Tensor:
        values = fill(self._fillers[index], self._shapes[index], dtype=self.dtype)
        return values.to(self.device)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self._shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            constant if constant is not None else self._fill(i)
            for i, constant in enumerate(self._constant)
        ]
