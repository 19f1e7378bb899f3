"""Common and utility layers: fully connected, softmax, shape, routing and reduction.

Each layer's arithmetic is a module-level function over tensors (``inner_product``,
``eltwise``, ``argmax``, ...) that the tests call directly. The classes read the
``LayerParameter`` and validate it as Caffe (BVLC master) does.

Layers that Caffe implements by sharing memory (Flatten, Reshape, Split, a one-top
Slice) return views of their bottom, so writing into such a top's ``data`` changes
the bottom as well, as it does in Caffe.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F

from brewnet.blob import shape_string
from brewnet.layers.base import Layer, Shape, canonical_axis, count, is_meta
from brewnet.layers.registry import register_layer
from brewnet.proto import caffe_pb2

logger = logging.getLogger(__name__)

_Eltwise = caffe_pb2.EltwiseParameter
_Reduction = caffe_pb2.ReductionParameter


# ================================================================== pure functions
def inner_product(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    axis: int = 1,
    transpose: bool = False,
) -> torch.Tensor:
    """Apply a fully connected map to the axes of ``x`` from ``axis`` on.

    ``weight`` is (N_out, K), or (K, N_out) when ``transpose`` is set, where K is the
    product of ``x.shape[axis:]``. The result has shape ``x.shape[:axis] + (N_out,)``.
    """
    rows = x.reshape(count(x.shape, 0, axis), count(x.shape, axis))
    if transpose:
        y = rows @ weight if bias is None else torch.addmm(bias, rows, weight)
    else:
        y = F.linear(rows, weight, bias)
    return y.reshape(tuple(x.shape[:axis]) + (y.shape[1],))


def softmax(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Return the softmax of ``x`` along ``axis``."""
    return torch.softmax(x, dim=axis)


def concat(bottoms: Sequence[torch.Tensor], axis: int = 1) -> torch.Tensor:
    """Join ``bottoms`` along ``axis``; the other dimensions must agree."""
    return torch.cat(list(bottoms), dim=axis)


def slice_along(
    x: torch.Tensor, axis: int, points: Sequence[int]
) -> list[torch.Tensor]:
    """Split ``x`` along ``axis`` at the increasing indices ``points``."""
    bounds = [0, *points, x.shape[axis]]
    return [x.narrow(axis, lo, hi - lo) for lo, hi in pairwise(bounds)]


def eltwise(
    bottoms: Sequence[torch.Tensor],
    operation: int,
    coeffs: Sequence[float] | None = None,
) -> torch.Tensor:
    """Combine equally shaped tensors element by element.

    ``operation`` is an ``EltwiseParameter`` value: PROD multiplies, SUM adds with
    ``coeffs`` (one per bottom, default 1) and MAX takes the maximum. For MAX the
    gradient of each element goes to the first bottom with the maximum value, as
    Caffe's argmax mask does.
    """
    if operation == _Eltwise.PROD:
        result = bottoms[0]
        for bottom in bottoms[1:]:
            result = result * bottom
        return result
    if operation == _Eltwise.SUM:
        coeffs = list(coeffs) if coeffs else [1.0] * len(bottoms)
        result = bottoms[0] * coeffs[0] if coeffs[0] != 1 else bottoms[0]
        for bottom, coeff in zip(bottoms[1:], coeffs[1:]):
            result = result + (bottom * coeff if coeff != 1 else bottom)
        return result
    if operation == _Eltwise.MAX:
        result = bottoms[0]
        for bottom in bottoms[1:]:
            # Only a strictly greater value takes over, so ties stay with the
            # earlier bottom and torch.where routes the gradient to it.
            result = torch.where(bottom > result, bottom, result)
        return result
    raise ValueError(f"unknown eltwise operation {operation}")


def tile(x: torch.Tensor, axis: int, tiles: int) -> torch.Tensor:
    """Repeat the block ``x[..., axis:]`` ``tiles`` times along ``axis``.

    ``[a, b]`` tiled twice along its only axis is ``[a, b, a, b]``.
    """
    repeats = [1] * x.dim()
    repeats[axis] = tiles
    return x.repeat(*repeats)


def reduction(
    x: torch.Tensor, operation: int, axis: int = 0, coeff: float = 1.0
) -> torch.Tensor:
    """Reduce the axes of ``x`` from ``axis`` on, then scale by ``coeff``.

    ``operation`` is a ``ReductionParameter`` value: SUM, ASUM (sum of absolute
    values), SUMSQ (sum of squares) or MEAN. The result has shape ``x.shape[:axis]``.
    """
    rows = x.reshape(count(x.shape, 0, axis), count(x.shape, axis))
    if operation == _Reduction.SUM:
        result = rows.sum(dim=1)
    elif operation == _Reduction.ASUM:
        result = rows.abs().sum(dim=1)
    elif operation == _Reduction.SUMSQ:
        result = (rows * rows).sum(dim=1)
    elif operation == _Reduction.MEAN:
        result = rows.sum(dim=1) / max(rows.shape[1], 1)
    else:
        raise ValueError(f"unknown reduction operation {operation}")
    return (result * coeff).reshape(tuple(x.shape[:axis]))


def sorted_top_k(
    x: torch.Tensor, k: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the ``k`` largest values along ``dim`` and their indices.

    Equal values come out with the larger index first, which is the order of Caffe's
    sort of (value, index) pairs with ``std::greater``.
    """
    size = x.shape[dim]
    values, flipped = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
    indices = (size - 1) - flipped
    return values.narrow(dim, 0, k), indices.narrow(dim, 0, k)


def argmax(
    x: torch.Tensor, top_k: int = 1, out_max_val: bool = False, axis: int | None = None
) -> torch.Tensor:
    """Return the indices (or values) of the ``top_k`` largest entries, as floats.

    With ``axis``, the result is ``x`` with that axis cut to ``top_k``, holding
    indices, or the values when ``out_max_val`` is set. Without ``axis``, each sample
    (index 0) is searched over all its other entries. The result then has shape
    (N, 1, top_k), or (N, 2, top_k) with indices then values when ``out_max_val`` is
    set. Trailing axes of size 1 pad it to the bottom's number of axes.
    """
    with torch.no_grad():
        if axis is not None:
            values, indices = sorted_top_k(x, top_k, axis)
            return values if out_max_val else indices.to(x.dtype)
        rows = x.reshape(x.shape[0], -1)
        values, indices = sorted_top_k(rows, top_k, 1)
        parts = [indices.to(x.dtype), values] if out_max_val else [indices.to(x.dtype)]
        result = torch.stack(parts, dim=1)
        return result.reshape(result.shape + (1,) * max(x.dim() - 3, 0))


def filter_batch(
    bottoms: Sequence[torch.Tensor], selector: torch.Tensor
) -> list[torch.Tensor]:
    """Keep the items (index 0) of each bottom whose ``selector`` entry is nonzero."""
    flags = selector.detach().reshape(selector.shape[0], -1)[:, 0] != 0
    keep = torch.nonzero(flags).flatten()
    return [bottom.index_select(0, keep) for bottom in bottoms]


def embed(
    indices: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Look up the rows of ``weight`` (input_dim, num_output) for integer ``indices``.

    The result has shape ``indices.shape + (num_output,)``; repeated indices add
    their gradients into the same weight row.
    """
    rows = weight.index_select(0, indices.detach().reshape(-1).long())
    if bias is not None:
        rows = rows + bias
    return rows.reshape(tuple(indices.shape) + (weight.shape[1],))


def batch_reindex(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Return ``x[indices]`` along axis 0; repeated indices sum their gradients."""
    return x.index_select(0, indices.detach().reshape(-1).long())


# ================================================================== helpers
def _integer_values(tensor: torch.Tensor) -> bool:
    return bool(torch.all(tensor == torch.trunc(tensor)))


def _check_index_blob(
    layer: Layer, values: torch.Tensor, limit: int, what: str, fix: str
) -> None:
    """Raise unless every entry of ``values`` is an integer in [0, limit)."""
    if is_meta(values) or values.numel() == 0:
        return
    values = values.detach()
    if not _integer_values(values):
        bad = values[values != torch.trunc(values)].flatten()[0].item()
        raise layer.error(f"{what} must be integers, but {bad:g} is not; {fix}")
    low, high = values.min().item(), values.max().item()
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        raise layer.error(
            f"{what} must be in [0, {limit - 1}], but {bad:g} is given; {fix}"
        )


def _reject_in_place(layer: Layer) -> None:
    """Raise when the layer's top is its bottom; Caffe rejects this for views."""
    if (
        layer.param.top
        and layer.param.bottom
        and layer.param.top[0] == layer.param.bottom[0]
    ):
        raise layer.error(
            f"cannot run in place (top and bottom are both '{layer.param.top[0]}'); "
            f"give the top a new name"
        )


# ================================================================== layers
@register_layer
class InnerProductLayer(Layer):
    """Fully connected layer: ``y = x W^T + b`` over the axes from ``axis`` on.

    Args (``inner_product_param``):
        num_output: number of outputs N_out (required, positive).
        bias_term: add a learned bias (default true).
        weight_filler, bias_filler: fillers (default constant 0).
        axis: first axis folded into the input vector (default 1; negative counts
            from the end).
        transpose: store the weight as (K, N_out) instead of (N_out, K).

    Bottom: any shape with K = product of ``shape[axis:]``, fixed at set-up.
    Top: ``shape[:axis] + (N_out,)``.
    Blobs: weight (N_out, K) or (K, N_out); bias (N_out,).
    """

    type = "InnerProduct"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.inner_product_param
        if param.num_output <= 0:
            raise self.error(
                "inner_product_param.num_output must be positive; set it to the "
                "number of outputs"
            )
        shape = bottom_shapes[0]
        self._axis_param = param.axis
        axis = canonical_axis(self, param.axis, len(shape))
        self._k = count(shape, axis)
        self._n = int(param.num_output)
        self._transpose = param.transpose
        self._bias_term = param.bias_term
        weight_shape = (self._k, self._n) if self._transpose else (self._n, self._k)
        self.blobs = [self.new_blob(weight_shape, param.weight_filler)]
        if self._bias_term:
            self.blobs.append(self.new_blob((self._n,), param.bias_filler))

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        axis = canonical_axis(self, self._axis_param, x.dim())
        k = count(x.shape, axis)
        if k != self._k:
            raise self.error(
                f"the bottom has {k} inputs per row (shape {shape_string(x.shape)}, "
                f"axis {axis}) but the weights were set up for {self._k}; the input "
                f"size cannot change after set-up"
            )
        bias = self.blobs[1] if self._bias_term else None
        return [inner_product(x, self.blobs[0], bias, axis, self._transpose)]


@register_layer
class SoftmaxLayer(Layer):
    """Softmax along one axis.

    Args (``softmax_param``):
        axis: the normalized axis (default 1; negative counts from the end).
        engine: accepted and ignored.

    Bottom: any shape. Top: same shape.
    """

    type = "Softmax"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        axis = canonical_axis(self, self.param.softmax_param.axis, bottom[0].dim())
        return [softmax(bottom[0], axis)]


@register_layer
class FlattenLayer(Layer):
    """Merge the axes ``axis`` through ``end_axis`` into one.

    Args (``flatten_param``):
        axis: first merged axis (default 1).
        end_axis: last merged axis (default -1, the last axis).

    Bottom: any shape. Top: ``shape[:axis] + (product of shape[axis:end_axis+1],) +
    shape[end_axis+1:]``, a view of the bottom. The layer cannot run in place.
    """

    type = "Flatten"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        _reject_in_place(self)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        param = self.param.flatten_param
        start = canonical_axis(self, param.axis, x.dim())
        end = canonical_axis(self, param.end_axis, x.dim(), field="end_axis")
        if end + 1 < start:
            raise self.error(
                f"end_axis {param.end_axis} comes before axis {param.axis} for a "
                f"bottom of shape {shape_string(x.shape)}; give an end_axis at or "
                f"after axis"
            )
        shape = tuple(x.shape[:start]) + (count(x.shape, start, end + 1),)
        return [x.reshape(shape + tuple(x.shape[end + 1 :]))]


@register_layer
class ConcatLayer(Layer):
    """Join several bottoms along one axis.

    Args (``concat_param``):
        axis: the joined axis (default 1; negative counts from the end).
        concat_dim: deprecated non-negative form of ``axis``; give one of the two.

    Bottoms: the same shape except along the axis. Top: the sum of their sizes along
    the axis.
    """

    type = "Concat"
    min_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.concat_param
        if param.HasField("axis") and param.HasField("concat_dim"):
            raise self.error(
                "concat_param sets both axis and concat_dim; keep only axis"
            )
        self._check_shapes(bottom_shapes)

    def _concat_axis(self, num_axes: int) -> int:
        param = self.param.concat_param
        if param.HasField("concat_dim"):
            if param.concat_dim >= num_axes:
                raise self.error(
                    f"concat_dim {param.concat_dim} is out of range for bottoms with "
                    f"{num_axes} axes; use a value in [0, {num_axes - 1}]"
                )
            return int(param.concat_dim)
        return canonical_axis(self, param.axis, num_axes)

    def _check_shapes(self, shapes: Sequence[Shape]) -> int:
        first = tuple(shapes[0])
        axis = self._concat_axis(len(first))
        for index, shape in enumerate(shapes[1:], start=1):
            same_rank = len(shape) == len(first)
            if not same_rank or any(
                a != b for j, (a, b) in enumerate(zip(first, shape)) if j != axis
            ):
                raise self.error(
                    f"bottom {index} has shape {shape_string(shape)} but bottom 0 has "
                    f"{shape_string(first)}; all bottoms must have the same number of "
                    f"axes and the same shape except along axis {axis}"
                )
        return axis

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        axis = self._check_shapes([tuple(t.shape) for t in bottom])
        return [concat(bottom, axis)]


@register_layer
class SplitLayer(Layer):
    """Copy one bottom to several tops; the bottom's gradient is the sum of theirs.

    Bottom: any shape. Tops: the same shape, views of the bottom.
    """

    type = "Split"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        return [x.view(x.shape) for _ in self.param.top]


@register_layer
class SilenceLayer(Layer):
    """Consume bottoms so that they are not net outputs; it has no tops.

    Bottoms: any number (at least one), any shape; their gradient from this layer is
    zero.
    """

    type = "Silence"
    min_bottom_blobs = 1
    exact_num_top_blobs = 0

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return []

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return []


@register_layer
class ReshapeLayer(Layer):
    """Change the shape of a bottom without changing its data.

    Args (``reshape_param``):
        shape: the new dimensions; 0 copies the bottom's dimension at that place and
            a single -1 is inferred from the element count.
        axis: first bottom axis replaced (default 0; negative counts from the end,
            -1 meaning after the last axis).
        num_axes: number of bottom axes replaced (default -1, all from ``axis``).

    Bottom: any shape. Top: a view with the same element count. The layer cannot run
    in place.
    """

    type = "Reshape"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        _reject_in_place(self)
        dims = [int(d) for d in self.param.reshape_param.shape.dim]
        self._dims = dims
        self._copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            raise self.error(
                f"reshape_param.shape {dims} has {len(inferred)} dimensions of -1; "
                f"at most one dimension can be inferred"
            )
        if any(d < -1 for d in dims):
            raise self.error(
                f"reshape_param.shape {dims} has a negative dimension; use 0 to copy "
                f"a dimension or -1 to infer one"
            )
        self._inferred_axis = inferred[0] if inferred else None
        self._constant_count = count([d for d in dims if d > 0])

    def top_shape(self, shape: Shape) -> Shape:
        """Return the top shape for a bottom of ``shape``."""
        start, end = self._replaced_axes(shape)
        top = list(shape[:start]) + list(self._dims) + list(shape[end:])
        num_axes = len(shape)
        for index in self._copy_axes:
            if start + index >= num_axes:
                raise self.error(
                    f"reshape_param.shape has a 0 at position {index}, but the bottom "
                    f"(shape {shape_string(shape)}) has no axis {start + index} to copy"
                )
            top[start + index] = shape[start + index]

        if self._inferred_axis is not None:
            top[start + self._inferred_axis] = self._infer(shape, top, start, end)
        if count(top) != count(shape):
            raise self.error(
                f"cannot reshape a bottom of shape {shape_string(shape)} to "
                f"{shape_string(top)}; the element count must not change"
            )
        return tuple(top)

    def _replaced_axes(self, shape: Shape) -> tuple[int, int]:
        """Return the range [start, end) of bottom axes that ``shape`` replaces."""
        param = self.param.reshape_param
        num_axes = len(shape)
        start = param.axis if param.axis >= 0 else num_axes + param.axis + 1
        if not 0 <= start <= num_axes:
            raise self.error(
                f"reshape_param.axis {param.axis} is out of range for a bottom with "
                f"{num_axes} axes; use a value in [{-num_axes - 1}, {num_axes}]"
            )
        if param.num_axes < -1:
            raise self.error(
                f"reshape_param.num_axes is {param.num_axes}; use a value >= 0, or -1 "
                f"for all axes from axis on"
            )
        end = num_axes if param.num_axes == -1 else start + param.num_axes
        if end > num_axes:
            raise self.error(
                f"reshape_param.axis + num_axes = {end} is past the {num_axes} axes of "
                f"the bottom (shape {shape_string(shape)})"
            )
        return start, end

    def _infer(self, shape: Shape, top: list[int], start: int, end: int) -> int:
        explicit = self._constant_count * count(shape, 0, start) * count(shape, end)
        for index in self._copy_axes:
            explicit *= top[start + index]
        total = count(shape)
        if explicit == 0 or total % explicit != 0:
            raise self.error(
                f"cannot infer the -1 dimension: the bottom count {total} (shape "
                f"{shape_string(shape)}) is not a multiple of the product of the other "
                f"dimensions, {explicit}"
            )
        return total // explicit

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [bottom[0].reshape(self.top_shape(tuple(bottom[0].shape)))]


@register_layer
class SliceLayer(Layer):
    """Cut a bottom along one axis into several tops.

    Args (``slice_param``):
        axis: the cut axis (default 1; negative counts from the end).
        slice_point: increasing indices where a new top starts, one fewer than the
            tops; without them the axis is split into equal parts.
        slice_dim: deprecated non-negative form of ``axis``; give one of the two.

    Bottom: any shape. Tops: views of the bottom.
    """

    type = "Slice"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.slice_param
        if param.HasField("axis") and param.HasField("slice_dim"):
            raise self.error("slice_param sets both axis and slice_dim; keep only axis")

    def _slice_axis(self, num_axes: int) -> int:
        param = self.param.slice_param
        if param.HasField("slice_dim"):
            if param.slice_dim >= num_axes:
                raise self.error(
                    f"slice_dim {param.slice_dim} is out of range for a bottom with "
                    f"{num_axes} axes; use a value in [0, {num_axes - 1}]"
                )
            return int(param.slice_dim)
        return canonical_axis(self, param.axis, num_axes)

    def _points(self, size: int) -> list[int]:
        points = [int(p) for p in self.param.slice_param.slice_point]
        num_tops = len(self.param.top)
        if not points:
            if size % num_tops != 0:
                raise self.error(
                    f"{num_tops} tops do not evenly divide the sliced axis of size "
                    f"{size}; give slice_point values or change the number of tops"
                )
            part = size // num_tops
            return [part * i for i in range(1, num_tops)]
        if len(points) != num_tops - 1:
            raise self.error(
                f"{len(points)} slice_point values for {num_tops} tops; give one "
                f"fewer slice_point than tops"
            )
        if num_tops > size:
            raise self.error(
                f"{num_tops} tops cannot be cut from an axis of size {size}"
            )
        previous = 0
        for point in points:
            if point <= previous:
                raise self.error(
                    f"slice_point values {points} must be positive and strictly "
                    f"increasing"
                )
            previous = point
        if points[-1] > size:
            raise self.error(
                f"slice_point {points[-1]} is past the end of the sliced axis, which "
                f"has size {size}"
            )
        return points

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        axis = self._slice_axis(x.dim())
        return slice_along(x, axis, self._points(x.shape[axis]))


@register_layer
class EltwiseLayer(Layer):
    """Combine equally shaped bottoms element by element.

    Args (``eltwise_param``):
        operation: PROD, SUM (default) or MAX.
        coeff: one factor per bottom for SUM (default all 1); not allowed for PROD,
            ignored for MAX.
        stable_prod_grad: accepted and ignored (autograd computes the PROD gradient).

    Bottoms: two or more of one shape. Top: that shape. MAX sends each element's
    gradient to the first bottom with the maximum value.
    """

    type = "Eltwise"
    min_bottom_blobs = 2
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.eltwise_param
        coeffs = list(param.coeff)
        if coeffs and len(coeffs) != len(bottom_shapes):
            raise self.error(
                f"eltwise_param has {len(coeffs)} coeff values for "
                f"{len(bottom_shapes)} bottoms; give one coeff per bottom, or none"
            )
        if coeffs and param.operation == _Eltwise.PROD:
            raise self.error("coeff is only used by operation SUM; remove it for PROD")
        if coeffs and param.operation == _Eltwise.MAX:
            logger.warning(
                "layer '%s': eltwise_param.coeff is ignored for operation MAX",
                self.name,
            )
        self._coeffs = [float(c) for c in coeffs] or None

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        first = tuple(bottom[0].shape)
        for index, tensor in enumerate(bottom[1:], start=1):
            if tuple(tensor.shape) != first:
                raise self.error(
                    f"all bottoms must have the same shape, but bottom 0 has "
                    f"{shape_string(first)} and bottom {index} has "
                    f"{shape_string(tensor.shape)}"
                )
        operation = self.param.eltwise_param.operation
        return [eltwise(bottom, operation, self._coeffs)]


@register_layer
class TileLayer(Layer):
    """Repeat a bottom ``tiles`` times along one axis.

    Args (``tile_param``):
        axis: the repeated axis (default 1; negative counts from the end).
        tiles: number of copies (required, positive).

    Bottom: any shape. Top: the bottom shape with ``shape[axis]`` multiplied by
    ``tiles``; the block ``x[..., axis:]`` repeats as a whole.
    """

    type = "Tile"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.tile_param
        if not param.HasField("tiles"):
            raise self.error("tile_param.tiles is missing; set the number of copies")
        if param.tiles <= 0:
            raise self.error(f"tile_param.tiles is {param.tiles}; it must be positive")

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        param = self.param.tile_param
        axis = canonical_axis(self, param.axis, bottom[0].dim())
        return [tile(bottom[0], axis, int(param.tiles))]


@register_layer
class ReductionLayer(Layer):
    """Reduce all axes from ``axis`` on to one number per leading index.

    Args (``reduction_param``):
        operation: SUM (default), ASUM, SUMSQ or MEAN.
        axis: first reduced axis (default 0, which reduces to a scalar; negative
            counts from the end).
        coeff: factor applied to the result (default 1).

    Bottom: any shape. Top: ``shape[:axis]``.
    """

    type = "Reduction"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        param = self.param.reduction_param
        axis = canonical_axis(self, param.axis, bottom[0].dim())
        return [reduction(bottom[0], param.operation, axis, param.coeff)]


@register_layer
class ArgMaxLayer(Layer):
    """Indices (and optionally values) of the ``top_k`` largest entries.

    Args (``argmax_param``):
        top_k: number of entries (default 1).
        out_max_val: output values; with ``axis`` the values replace the indices,
            without it both are given.
        axis: the searched axis; unset searches all non-batch entries of each sample.

    Bottom: any shape. Top: see :func:`argmax`. Ties list the larger index first.
    The layer has no gradient.
    """

    type = "ArgMax"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    can_backward = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.argmax_param
        shape = bottom_shapes[0]
        if param.top_k < 1:
            raise self.error(
                f"argmax_param.top_k is {param.top_k}; it must be at least 1"
            )
        if param.HasField("axis"):
            axis = canonical_axis(self, param.axis, len(shape))
            if param.top_k > shape[axis]:
                raise self.error(
                    f"argmax_param.top_k {param.top_k} is larger than axis {axis} of "
                    f"the bottom (shape {shape_string(shape)})"
                )
        elif param.top_k > count(shape, 1):
            raise self.error(
                f"argmax_param.top_k {param.top_k} is larger than the "
                f"{count(shape, 1)} entries per sample of the bottom (shape "
                f"{shape_string(shape)})"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        param = self.param.argmax_param
        x = bottom[0]
        axis = (
            canonical_axis(self, param.axis, x.dim())
            if param.HasField("axis")
            else None
        )
        return [argmax(x, int(param.top_k), param.out_max_val, axis)]


@register_layer
class FilterLayer(Layer):
    """Keep the items of each bottom whose selector entry is nonzero.

    Bottoms: the blobs to filter, then the selector, of shape (N,) or (N, 1, ...);
    every bottom has the same N. Tops: one per filtered bottom, with the kept items
    (index 0) in order, so their first dimension depends on the data. The selector
    gets no gradient; dropped items get zero.
    """

    type = "Filter"
    min_bottom_blobs = 2
    min_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if len(self.param.top) != len(bottom_shapes) - 1:
            raise self.error(
                f"has {len(bottom_shapes)} bottoms and {len(self.param.top)} tops; "
                f"give one top per bottom except the last, which is the selector"
            )

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_shapes(bottom_shapes)
        # The kept count is known only after forward; like Caffe, keep every item
        # until then.
        return [tuple(shape) for shape in bottom_shapes[:-1]]

    def _check_shapes(self, shapes: Sequence[Shape]) -> None:
        selector = tuple(shapes[-1])
        if not selector or any(d != 1 for d in selector[1:]):
            raise self.error(
                f"the selector (last bottom) has shape {shape_string(selector)}; it "
                f"must be (N,) or have every axis after the first of size 1"
            )
        for index, shape in enumerate(shapes[:-1]):
            if not shape or shape[0] != selector[0]:
                raise self.error(
                    f"bottom {index} has shape {shape_string(shape)}, but the "
                    f"selector has {selector[0]} items; every bottom needs the same "
                    f"first dimension as the selector"
                )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        self._check_shapes([tuple(t.shape) for t in bottom])
        return filter_batch(bottom[:-1], bottom[-1])

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != len(self.param.bottom) - 1


@register_layer
class EmbedLayer(Layer):
    """Look up a learned vector for each integer index (a one-hot inner product).

    Args (``embed_param``):
        input_dim: vocabulary size, one more than the largest index (positive).
        num_output: length of each vector (positive).
        bias_term: add a learned bias (default true).
        weight_filler, bias_filler: fillers (default constant 0).

    Bottom: integer indices in [0, input_dim), any shape. Top: ``shape +
    (num_output,)``. Blobs: weight (input_dim, num_output); bias (num_output,).
    The indices get no gradient.
    """

    type = "Embed"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.embed_param
        if param.input_dim <= 0:
            raise self.error(
                "embed_param.input_dim must be positive; set it to the vocabulary size"
            )
        if param.num_output <= 0:
            raise self.error(
                "embed_param.num_output must be positive; set it to the vector length"
            )
        self._input_dim = int(param.input_dim)
        self._bias_term = param.bias_term
        self.blobs = [
            self.new_blob((self._input_dim, int(param.num_output)), param.weight_filler)
        ]
        if self._bias_term:
            self.blobs.append(
                self.new_blob((int(param.num_output),), param.bias_filler)
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        _check_index_blob(
            self,
            bottom[0],
            self._input_dim,
            "Embed indices",
            "check the bottom blob and embed_param.input_dim",
        )
        bias = self.blobs[1] if self._bias_term else None
        return [embed(bottom[0], self.blobs[0], bias)]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False


@register_layer
class ParameterLayer(Layer):
    """Expose a learned blob as a top, for use as a bottom of other layers.

    Args (``parameter_param``):
        shape: the blob's shape.

    No bottoms. Top: the blob itself (initially zeros), so gradients reach it.
    """

    type = "Parameter"
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise self.error(
                f"parameter_param.shape {list(shape)} has a negative dimension"
            )
        self.blobs = [self.new_blob(shape, None)]

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(self.blobs[0].shape)]

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.blobs[0].view(self.blobs[0].shape)]


@register_layer
class BatchReindexLayer(Layer):
    """Gather items of a batch by index: ``top[i] = bottom0[bottom1[i]]``.

    Bottoms: data (N, ...), then indices of shape (M,) with integers in [0, N).
    Top: (M, ...). Repeated indices add their gradients into the same item; the
    indices get no gradient.
    """

    type = "BatchReindex"
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def _check_shapes(self, data: Shape, indices: Shape) -> None:
        if len(indices) != 1:
            raise self.error(
                f"the index bottom has shape {shape_string(indices)}; it must have "
                f"exactly one axis"
            )
        if not data:
            raise self.error("the data bottom must have at least one axis")

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        data, indices = bottom
        self._check_shapes(tuple(data.shape), tuple(indices.shape))
        _check_index_blob(
            self,
            indices,
            data.shape[0],
            "BatchReindex indices",
            f"every index must select one of the {data.shape[0]} items of the data "
            f"bottom",
        )
        return [batch_reindex(data, indices)]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0
