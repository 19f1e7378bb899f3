"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, LRN, SPP and Crop.

The layers follow BVLC Caffe (final master) in their parameters, defaults, output
sizes and parameter layouts, so Caffe prototxt files and .caffemodel weights run
unchanged. The math sits in pure functions that tests call directly:

- :func:`convolution`, :func:`deconvolution` and :func:`im2col` for 1 to 3 spatial
  axes (any number for im2col);
- :func:`pool2d` and :func:`max_pool2d` for MAX, AVE and STOCHASTIC pooling;
- :func:`lrn_across_channels`, :func:`lrn_within_channel`,
  :func:`spatial_pyramid_pool` and :func:`crop`.

The shape helpers raise ``ValueError``. The layer classes turn it into a
:class:`~brewnet.errors.LayerSetupError` that names the layer.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from brewnet.errors import LayerSetupError
from brewnet.layers.base import TRAIN, Layer, Shape, canonical_axis
from brewnet.layers.registry import register_layer
from brewnet.proto import caffe_pb2

# Caffe starts every max-pooling window at -FLT_MAX, in float and in double.
FLT_MAX = 3.4028234663852886e38

_PoolMethod = caffe_pb2.PoolingParameter.PoolMethod
_NormRegion = caffe_pb2.LRNParameter.NormRegion

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
MAX_CONV_SPATIAL_AXES = 3


# ======================================================================== geometry


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel size, stride, padding and dilation, one entry per spatial axis."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def num_spatial_axes(self) -> int:
        return len(self.kernel)

    @property
    def extent(self) -> tuple[int, ...]:
        """The span of each dilated kernel: ``dilation * (kernel - 1) + 1``."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))


def conv_geometry(
    param: caffe_pb2.ConvolutionParameter, num_spatial_axes: int
) -> ConvGeometry:
    """Read kernel, stride, pad and dilation from ``convolution_param``.

    Each repeated field takes one value for every spatial axis or one value per axis.
    ``kernel_h``/``kernel_w``, ``stride_h``/``stride_w`` and ``pad_h``/``pad_w`` are the
    2-D alternatives. Unset strides are 1, pads 0 and dilations 1; the kernel size has
    no default.

    Raises:
        ValueError: a field is given a wrong number of times, both forms of a field
            are given, or a kernel size, stride or dilation is zero.
    """
    n = num_spatial_axes
    kernel = _axis_values(param, "kernel_size", "kernel_h", "kernel_w", n, None)
    if any(k <= 0 for k in kernel):
        raise ValueError(
            f"kernel size must be nonzero on every spatial axis, got "
            f"{_shape_text(kernel)}; set kernel_size, or both kernel_h and kernel_w"
        )
    stride = _axis_values(param, "stride", "stride_h", "stride_w", n, 1)
    if any(s <= 0 for s in stride):
        raise ValueError(
            f"stride must be nonzero on every spatial axis, got {_shape_text(stride)}; "
            f"set stride, or both stride_h and stride_w"
        )
    pad = _axis_values(param, "pad", "pad_h", "pad_w", n, 0)
    dilation = _axis_values(param, "dilation", None, None, n, 1)
    # NOTE: Caffe does not check the dilation; a dilation of 0 would make every tap
    # of the kernel read the same pixel. brewnet rejects it.
    if any(d <= 0 for d in dilation):
        raise ValueError(
            f"dilation must be nonzero on every spatial axis, got {_shape_text(dilation)}"
        )
    return ConvGeometry(kernel, stride, pad, dilation)


def _axis_values(
    param: caffe_pb2.ConvolutionParameter,
    field: str,
    field_h: str | None,
    field_w: str | None,
    num_spatial_axes: int,
    default: int | None,
) -> tuple[int, ...]:
    """Return one value per spatial axis for a repeated field and its _h/_w form."""
    if field_h is not None and (param.HasField(field_h) or param.HasField(field_w)):
        if num_spatial_axes != 2:
            raise ValueError(
                f"{field_h} and {field_w} apply only to 2-D convolution, but the "
                f"bottom has {num_spatial_axes} spatial axes; use {field} instead"
            )
        if len(getattr(param, field)):
            raise ValueError(f"give either {field} or {field_h}/{field_w}, not both")
        return (int(getattr(param, field_h)), int(getattr(param, field_w)))
    values = [int(v) for v in getattr(param, field)]
    allowed = {1, num_spatial_axes} if default is None else {0, 1, num_spatial_axes}
    if len(values) not in allowed:
        raise ValueError(
            f"{field} must be given once, or once per spatial axis "
            f"({num_spatial_axes}), but it is given {len(values)} times"
        )
    if not values:
        return (default,) * num_spatial_axes
    if len(values) == 1:
        return (values[0],) * num_spatial_axes
    return tuple(values)


def _trunc_div(numerator: int, denominator: int) -> int:
    """Divide as C++ does for ints: round toward zero."""
    quotient = abs(numerator) // denominator
    return quotient if numerator >= 0 else -quotient


def conv_output_shape(
    input_shape: Sequence[int], geometry: ConvGeometry
) -> tuple[int, ...]:
    """Return Caffe's convolution output size on each spatial axis.

    The size is ``(input + 2 * pad - extent) / stride + 1`` with C++ integer division,
    which rounds toward zero. So a kernel that overhangs the padded input by less
    than the stride still gives one output, computed over zeros past the edge.

    Raises:
        ValueError: the output would be empty.
    """
    output = []
    for axis, size in enumerate(input_shape):
        padded = size + 2 * geometry.pad[axis]
        extent = geometry.extent[axis]
        dim = _trunc_div(padded - extent, geometry.stride[axis]) + 1
        if dim < 1:
            raise ValueError(
                f"the kernel extent {extent} on spatial axis {axis} exceeds the padded "
                f"input size {padded}; use a smaller kernel or dilation, or more padding"
            )
        output.append(dim)
    return tuple(output)


def deconv_output_shape(
    input_shape: Sequence[int], geometry: ConvGeometry
) -> tuple[int, ...]:
    """Return Caffe's deconvolution output size on each spatial axis.

    The size is ``stride * (input - 1) + extent - 2 * pad``.

    Raises:
        ValueError: the padding removes the whole output.
    """
    output = []
    for axis, size in enumerate(input_shape):
        pad = geometry.pad[axis]
        full = geometry.stride[axis] * (size - 1) + geometry.extent[axis]
        if full - 2 * pad < 1:
            raise ValueError(
                f"pad {pad} on spatial axis {axis} removes the whole deconvolution "
                f"output of size {full}; use a smaller pad"
            )
        output.append(full - 2 * pad)
    return tuple(output)


def _shape_text(shape: Sequence[int]) -> str:
    return " x ".join(str(int(s)) for s in shape) if len(shape) else "(none)"


# ===================================================================== convolution


def _flatten_batch(x: torch.Tensor, axis: int) -> tuple[tuple[int, ...], torch.Tensor]:
    """Merge the axes before the channel axis into one batch axis."""
    batch_shape = tuple(x.shape[:axis])
    return batch_shape, x.reshape((math.prod(batch_shape),) + tuple(x.shape[axis:]))


def _unflatten_batch(batch_shape: tuple[int, ...], y: torch.Tensor) -> torch.Tensor:
    return y.reshape(batch_shape + tuple(y.shape[1:]))


def _pad_list(left: Sequence[int], right: Sequence[int]) -> list[int]:
    """Return F.pad's argument, which lists the last axis first."""
    pads: list[int] = []
    for before, after in zip(reversed(left), reversed(right)):
        pads.extend((before, after))
    return pads


def _pad_for_windows(
    x: torch.Tensor, geometry: ConvGeometry, output_shape: Sequence[int]
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return ``x`` and the padding to give torch so that it makes Caffe's windows.

    torch rejects a kernel larger than the padded input, which Caffe's rounding
    toward zero allows; such inputs get extra zeros on the far side instead.
    """
    spatial = x.shape[2:]
    extra = [
        (out - 1) * s + e - (size + 2 * p)
        for out, s, e, size, p in zip(
            output_shape, geometry.stride, geometry.extent, spatial, geometry.pad
        )
    ]
    if all(e <= 0 for e in extra):
        return x, geometry.pad
    right = [p + max(e, 0) for p, e in zip(geometry.pad, extra)]
    padded = F.pad(x, _pad_list(geometry.pad, right))
    return padded, (0,) * geometry.num_spatial_axes


def _with_spatial_axis(
    x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, ConvGeometry]:
    """Give a bottom without spatial axes one axis of size 1 (a 1 x 1 convolution)."""
    unit_geometry = ConvGeometry((1,), (1,), (0,), (1,))
    return x.unsqueeze(-1), weight.unsqueeze(-1), unit_geometry


def _apply_over_batch(function, x, weight, geometry, axis):
    """Run ``function(x, weight, geometry)`` on ``x`` flattened to one batch axis.

    A bottom without spatial axes gets a spatial axis of size 1 for the call (a
    1 x 1 convolution), removed again from the result.
    """
    batch_shape, x = _flatten_batch(x, axis)
    no_spatial_axis = geometry.num_spatial_axes == 0
    if no_spatial_axis:
        x, weight, geometry = _with_spatial_axis(x, weight)
    y = function(x, weight, geometry)
    if no_spatial_axis:
        y = y.squeeze(-1)
    return _unflatten_batch(batch_shape, y)


def convolution(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    group: int = 1,
    axis: int = 1,
) -> torch.Tensor:
    """Convolve ``x`` as Caffe's Convolution layer does (a cross-correlation).

    Args:
        x: ``(batch axes..., C, spatial...)``; ``axis`` is the channel axis and every
            axis before it is a batch axis.
        weight: ``(num_output, C / group, kernel...)``.
        bias: ``(num_output,)`` or None.
        geometry: kernel, stride, pad and dilation per spatial axis (at most 3).
        group: the number of channel groups.

    Returns:
        ``(batch axes..., num_output, output spatial...)``, with the output size of
        :func:`conv_output_shape`.
    """

    def convolve(x, weight, geometry):
        output_shape = conv_output_shape(x.shape[2:], geometry)
        x, padding = _pad_for_windows(x, geometry, output_shape)
        return _CONV[geometry.num_spatial_axes](
            x, weight, bias, stride=geometry.stride, padding=padding,
            dilation=geometry.dilation, groups=group,
        )

    return _apply_over_batch(convolve, x, weight, geometry, axis)


def deconvolution(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    group: int = 1,
    axis: int = 1,
) -> torch.Tensor:
    """Apply Caffe's Deconvolution: the transpose (gradient) of a convolution.

    Args:
        x: ``(batch axes..., C, spatial...)`` with the channel axis at ``axis``.
        weight: ``(C, num_output / group, kernel...)``, Caffe's deconvolution layout.
        bias: ``(num_output,)`` or None.

    Returns:
        ``(batch axes..., num_output, output spatial...)``, with the output size of
        :func:`deconv_output_shape`.
    """

    def transpose_convolve(x, weight, geometry):
        deconv_output_shape(x.shape[2:], geometry)  # raises if the pad removes the output
        return _CONV_TRANSPOSE[geometry.num_spatial_axes](
            x, weight, bias, stride=geometry.stride, padding=geometry.pad,
            groups=group, dilation=geometry.dilation,
        )

    return _apply_over_batch(transpose_convolve, x, weight, geometry, axis)


def im2col(x: torch.Tensor, geometry: ConvGeometry, axis: int = 1) -> torch.Tensor:
    """Rearrange the convolution windows of ``x`` into columns, as Caffe's im2col.

    Output channel ``c * K + j`` contains input channel ``c`` at kernel tap ``j``, where
    ``K`` is the number of taps and ``j`` counts them in row-major order. Windows
    reach past the input into zeros, as for :func:`convolution`.

    Returns:
        ``(batch axes..., C * K, output spatial...)``.
    """
    batch_shape, x = _flatten_batch(x, axis)
    n = geometry.num_spatial_axes
    output_shape = conv_output_shape(x.shape[2:], geometry)
    # Pad (or trim: F.pad accepts negative sizes) so that the windows tile exactly.
    right = [
        (out - 1) * s + e - size - p
        for out, s, e, size, p in zip(
            output_shape, geometry.stride, geometry.extent, x.shape[2:], geometry.pad
        )
    ]
    columns = F.pad(x, _pad_list(geometry.pad, right))
    for i in range(n):
        columns = columns.unfold(2 + i, geometry.extent[i], geometry.stride[i])
    # (N, C, out..., extent...) -> keep every dilation-th tap of each window.
    if any(d != 1 for d in geometry.dilation):
        taps = tuple(slice(None, None, d) for d in geometry.dilation)
        columns = columns[(Ellipsis,) + taps]
    order = [0, 1] + [2 + n + i for i in range(n)] + [2 + i for i in range(n)]
    columns = columns.permute(order)
    num_taps = math.prod(geometry.kernel)
    columns = columns.reshape((x.shape[0], x.shape[1] * num_taps) + output_shape)
    return _unflatten_batch(batch_shape, columns)


# ========================================================================= pooling


def pool_output_shape(
    input_shape: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    ceil_mode: bool = True,
) -> tuple[int, int]:
    """Return Caffe's pooled height and width.

    The size is ``ceil((input + 2 * pad - kernel) / stride) + 1`` (``floor`` with
    ``round_mode: FLOOR``). When any pad is nonzero, a last window that would start
    in the padding is dropped, on both axes.

    Raises:
        ValueError: the output would be empty, or a last window still starts past the
            padded input after that drop.
    """
    rounding = math.ceil if ceil_mode else math.floor
    output = [
        int(rounding((size + 2 * p - k) / s)) + 1
        for size, k, s, p in zip(input_shape, kernel, stride, pad)
    ]
    if any(pad):
        for axis, (size, s, p) in enumerate(zip(input_shape, stride, pad)):
            if (output[axis] - 1) * s >= size + p:
                output[axis] -= 1
            if (output[axis] - 1) * s >= size + p:
                raise ValueError(
                    f"the last pooling window on spatial axis {axis} starts past the "
                    f"padded input of size {size + p}; use a smaller stride"
                )
    for axis, dim in enumerate(output):
        if dim < 1:
            raise ValueError(
                f"the pooling kernel {kernel[axis]} on spatial axis {axis} exceeds the "
                f"padded input size {input_shape[axis] + 2 * pad[axis]}; use a smaller "
                f"kernel or more padding"
            )
    return output[0], output[1]


def _far_pad(
    input_shape: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    output_shape: Sequence[int],
) -> list[int]:
    """Return the padding after the input that makes the windows tile exactly.

    A negative value trims the input instead.
    """
    return [
        (out - 1) * s + k - size - p
        for size, k, s, p, out in zip(input_shape, kernel, stride, pad, output_shape)
    ]


def max_pool2d(
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int] = (1, 1),
    pad: Sequence[int] = (0, 0),
    ceil_mode: bool = True,
    with_mask: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return Caffe's max pooling of a ``(N, C, H, W)`` tensor and its argmax mask.

    Each window covers only the input (never the padding) and starts from -FLT_MAX.
    The first maximum in row-major order wins and receives the gradient. The mask
    contains ``h * W + w`` of that maximum, or -1 when no value exceeds -FLT_MAX (an
    empty window, or a window of -inf). Without ``with_mask`` the mask is None and
    costs nothing, which is the common one-top case.

    NOTE: a NaN in a window wins here (torch's max pooling propagates it), whereas
    Caffe's comparisons skip NaN values. Without the mask, a window whose inputs are
    all -inf gives -inf where Caffe gives -FLT_MAX: clamping every output would cost
    a pass over the top in every forward and backward.
    """
    height, width = x.shape[-2:]
    output_shape = pool_output_shape((height, width), kernel, stride, pad, ceil_mode)
    far = _far_pad((height, width), kernel, stride, pad, output_shape)
    if not any(pad) and all(f <= 0 for f in far):
        if not with_mask:
            values = F.max_pool2d(x, kernel, stride)
            if tuple(values.shape[-2:]) != tuple(output_shape):
                values = values[..., : output_shape[0], : output_shape[1]]
            return values, None
        values, index = F.max_pool2d(x, kernel, stride, return_indices=True)
        values = values[..., : output_shape[0], : output_shape[1]]
        mask = index[..., : output_shape[0], : output_shape[1]]
    else:
        padded = F.pad(x, _pad_list(pad, far), value=-math.inf)
        values, index = F.max_pool2d(padded, kernel, stride, return_indices=True)
        padded_width = padded.shape[-1]
        rows = torch.div(index, padded_width, rounding_mode="floor") - pad[0]
        cols = torch.remainder(index, padded_width) - pad[1]
        mask = rows * width + cols
        if not with_mask:
            return values, None
    lowest = values <= -FLT_MAX
    values = torch.where(lowest, -FLT_MAX, values)
    mask = torch.where(lowest, -1, mask).to(x.dtype)
    return values, mask


def _window_sizes(size: int, kernel: int, stride: int, pad: int, count: int) -> list[int]:
    """Return Caffe's AVE divisor along one axis: windows clipped to the padded input."""
    sizes = []
    for index in range(count):
        start = index * stride - pad
        sizes.append(min(start + kernel, size + pad) - start)
    return sizes


def ave_pool2d(
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int] = (1, 1),
    pad: Sequence[int] = (0, 0),
    ceil_mode: bool = True,
) -> torch.Tensor:
    """Return Caffe's average pooling of a ``(N, C, H, W)`` tensor.

    Each window sums the input values it covers and divides by its size clipped to
    the padded input, so padding counts in the divisor but the part of a window past
    the padding does not.
    """
    height, width = x.shape[-2:]
    output_shape = pool_output_shape((height, width), kernel, stride, pad, ceil_mode)
    far = _far_pad((height, width), kernel, stride, pad, output_shape)
    if not any(pad) and all(f <= 0 for f in far):
        pooled = F.avg_pool2d(x, kernel, stride)
        return pooled[..., : output_shape[0], : output_shape[1]]
    padded = F.pad(x, _pad_list(pad, far))
    sums = F.avg_pool2d(padded, kernel, stride, divisor_override=1)
    rows = _window_sizes(height, kernel[0], stride[0], pad[0], output_shape[0])
    cols = _window_sizes(width, kernel[1], stride[1], pad[1], output_shape[1])
    divisor = torch.tensor(rows, dtype=x.dtype, device=x.device)[:, None] * torch.tensor(
        cols, dtype=x.dtype, device=x.device
    )
    # NOTE: like Caffe, a window that starts exactly at the input's far edge (a stride
    # larger than the kernel, no padding) divides 0 by 0.
    return sums / divisor


def stochastic_pool2d(
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int] = (1, 1),
    ceil_mode: bool = True,
    train: bool = True,
) -> torch.Tensor:
    """Return Caffe's stochastic pooling of a non-negative ``(N, C, H, W)`` tensor.

    In training each window outputs one of its values, drawn with probability
    proportional to the value (torch's global generator supplies the draws), and the
    gradient goes to that value. In testing it outputs the weighted average
    ``sum(x * x) / sum(x)``, or 0 where the sum is not positive.

    NOTE: Caffe runs this method only on the GPU, and its backward always routes the
    gradient by the last training draw. In testing brewnet differentiates the
    weighted average instead.
    """
    height, width = x.shape[-2:]
    output_shape = pool_output_shape((height, width), kernel, stride, (0, 0), ceil_mode)
    far = _far_pad((height, width), kernel, stride, (0, 0), output_shape)
    padded = F.pad(x, _pad_list((0, 0), far))
    windows = padded.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1])
    windows = windows.reshape(tuple(windows.shape[:4]) + (kernel[0] * kernel[1],))
    if train:
        return _sample_windows(windows)
    total = windows.sum(-1)
    squares = (windows * windows).sum(-1)
    positive = total > 0
    return torch.where(positive, squares / torch.where(positive, total, 1), 0)


def _sample_windows(windows: torch.Tensor) -> torch.Tensor:
    """Pick the first value whose running sum reaches ``u * sum`` (u uniform in [0, 1))."""
    running = windows.cumsum(-1)
    # The last running sum is the total, so u < 1 always reaches it when it is >= 0.
    draws = torch.rand(running.shape[:-1], dtype=windows.dtype, device=windows.device)
    threshold = draws * running[..., -1]
    reached = running >= threshold.unsqueeze(-1)
    choice = reached.to(torch.uint8).argmax(-1, keepdim=True)
    picked = windows.gather(-1, choice).squeeze(-1)
    # NOTE: with negative inputs no running sum may reach the threshold; Caffe then
    # leaves the output unwritten, and brewnet outputs 0 there.
    return torch.where(reached.any(-1), picked, 0)


def pool2d(
    x: torch.Tensor,
    method: str,
    kernel: Sequence[int],
    stride: Sequence[int] = (1, 1),
    pad: Sequence[int] = (0, 0),
    ceil_mode: bool = True,
    train: bool = True,
) -> torch.Tensor:
    """Pool a ``(N, C, H, W)`` tensor with Caffe's ``MAX``, ``AVE`` or ``STOCHASTIC``.

    Raises:
        ValueError: an unknown method, padding with STOCHASTIC pooling, a pad not
            smaller than the kernel, or an empty output.
    """
    if any(pad):
        if method not in ("MAX", "AVE"):
            raise ValueError(
                f"padding works only with MAX and AVE pooling, not {method}; set pad 0"
            )
        for name, p, k in zip(("pad_h", "pad_w"), pad, kernel):
            if p >= k:
                raise ValueError(
                    f"{name} ({p}) must be smaller than the kernel size ({k}) on its axis"
                )
    if method == "MAX":
        return max_pool2d(x, kernel, stride, pad, ceil_mode, with_mask=False)[0]
    if method == "AVE":
        return ave_pool2d(x, kernel, stride, pad, ceil_mode)
    if method == "STOCHASTIC":
        return stochastic_pool2d(x, kernel, stride, ceil_mode, train)
    raise ValueError(f"unknown pooling method '{method}'; use MAX, AVE or STOCHASTIC")


# ============================================================ LRN, SPP and Crop


def lrn_across_channels(
    x: torch.Tensor,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
) -> torch.Tensor:
    """Normalize ``(N, C, H, W)`` across channels, as Caffe's ACROSS_CHANNELS LRN.

    ``y = x * (k + alpha / local_size * s) ** -beta``, where ``s`` sums ``x * x`` over
    the ``local_size`` channels centred on each channel (zeros past the ends).
    """
    half = (local_size - 1) // 2
    squares = F.pad(x * x, (0, 0, 0, 0, half, half))
    window_mean = F.avg_pool3d(squares.unsqueeze(1), (local_size, 1, 1), stride=1)
    scale = k + alpha * window_mean.squeeze(1)
    return x * scale.pow(-beta)


def lrn_within_channel(
    x: torch.Tensor, local_size: int = 5, alpha: float = 1.0, beta: float = 0.75
) -> torch.Tensor:
    """Normalize ``(N, C, H, W)`` over spatial windows, as Caffe's WITHIN_CHANNEL LRN.

    Caffe builds this mode from other layers: AVE pooling of ``x * x`` over
    ``local_size x local_size`` windows (pad ``(local_size - 1) / 2``, stride 1, so
    every window divides by ``local_size ** 2``), then ``(1 + alpha * mean) ** -beta``,
    times ``x``. The ``k`` parameter plays no part.
    """
    half = (local_size - 1) // 2
    size = (local_size, local_size)
    window_mean = ave_pool2d(x * x, size, (1, 1), (half, half))
    return x * (1 + alpha * window_mean).pow(-beta)


def spp_level_geometry(
    height: int, width: int, level: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return the (kernel, pad) that split ``height x width`` into ``2**level`` bins.

    The kernel is ``ceil(size / bins)`` and also the stride. The pad is
    ``(kernel * bins - size + 1) // 2``, the shortfall split between both ends.
    """
    bins = 2**level
    kernel = []
    pad = []
    for size in (height, width):
        k = math.ceil(size / bins)
        kernel.append(k)
        pad.append((k * bins - size + 1) // 2)
    return (kernel[0], kernel[1]), (pad[0], pad[1])


def spatial_pyramid_pool(
    x: torch.Tensor, pyramid_height: int, method: str = "MAX", train: bool = True
) -> torch.Tensor:
    """Pool ``(N, C, H, W)`` over a pyramid of 1, 2, 4, ... bins per axis (SPP).

    Returns:
        The levels, each flattened to ``(N, C * bins * bins)``, concatenated along
        axis 1. With ``pyramid_height`` 1 the single level keeps its pooling shape
        ``(N, C, 1, 1)``, as in Caffe.

    Raises:
        ValueError: a level needs a pad not smaller than its kernel (the input is too
            small for the pyramid).
    """
    height, width = x.shape[-2:]
    levels = []
    for level in range(pyramid_height):
        kernel, pad = spp_level_geometry(height, width, level)
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise ValueError(
                f"pyramid level {level} cannot split the {height} x {width} bottom into "
                f"{2**level} x {2**level} bins (it would need pad {_shape_text(pad)} "
                f"with kernel {_shape_text(kernel)}); lower pyramid_height or use a "
                f"larger input"
            )
        pooled = pool2d(x, method, kernel, kernel, pad, ceil_mode=True, train=train)
        if pyramid_height == 1:
            return pooled
        levels.append(pooled.flatten(1))
    return torch.cat(levels, dim=1)


def crop_offsets(
    shape: Sequence[int],
    reference_shape: Sequence[int],
    axis: int,
    offsets: Sequence[int],
) -> list[int]:
    """Return the crop offset of every axis, checked against the bounds.

    Axes before ``axis`` keep their size at offset 0. The others take the reference
    size, at ``offsets[0]`` when one offset is given or ``offsets[i - axis]`` when one
    is given per cropped axis.

    Raises:
        ValueError: the reference has too few axes, the number of offsets is wrong, or
            a crop reaches past the bottom.
    """
    num_axes = len(shape)
    if len(reference_shape) < num_axes:
        raise ValueError(
            f"the reference bottom has {len(reference_shape)} axes, but the bottom to "
            f"crop has {num_axes}; give a reference with as many axes"
        )
    if len(offsets) > 1 and axis + len(offsets) != num_axes:
        raise ValueError(
            f"{len(offsets)} offsets are given for the {num_axes - axis} cropped axes "
            f"(axis {axis} to the last); give one offset, or one per cropped axis"
        )
    result = [0] * num_axes
    for i in range(axis, num_axes):
        offset = 0
        if len(offsets) == 1:
            offset = int(offsets[0])
        elif len(offsets) > 1:
            offset = int(offsets[i - axis])
        if shape[i] - offset < reference_shape[i]:
            raise ValueError(
                f"the crop of axis {i} is out of bounds: offset {offset} plus size "
                f"{reference_shape[i]} exceeds the bottom's size {shape[i]}"
            )
        result[i] = offset
    return result


def crop(
    x: torch.Tensor, reference_shape: Sequence[int], axis: int = 2,
    offsets: Sequence[int] = (),
) -> torch.Tensor:
    """Crop ``x`` to ``reference_shape`` on ``axis`` and later axes (Caffe's Crop)."""
    starts = crop_offsets(tuple(x.shape), tuple(reference_shape), axis, offsets)
    index = tuple(
        slice(start, start + (reference_shape[i] if i >= axis else x.shape[i]))
        for i, start in enumerate(starts)
    )
    return x[index]


# ========================================================================== layers


@contextlib.contextmanager
def _named_errors(layer: Layer) -> Iterator[None]:
    """Turn the shape helpers' ValueError into an error that names ``layer``."""
    try:
        yield
    except LayerSetupError:
        raise
    except ValueError as error:
        raise layer.error(str(error)) from None


def _filled_blob(layer: Layer, shape: Sequence[int], filler, field: str) -> torch.Tensor:
    """Create a parameter blob, naming the layer and field when the filler fails."""
    return layer.new_blob(shape, filler, field)


def _check_four_axes(layer: Layer, shape: Shape) -> None:
    if len(shape) != 4:
        raise layer.error(
            f"needs a bottom with 4 axes (num, channels, height, width), but the "
            f"bottom has shape {_shape_text(shape)}"
        )


class _ConvolutionBase(Layer):
    """Shared set-up of Convolution and Deconvolution (Caffe's BaseConvolutionLayer)."""

    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True
    transposed = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.convolution_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(self, param.axis, len(shape))
        num_spatial = len(shape) - self.axis - 1
        if num_spatial > MAX_CONV_SPATIAL_AXES:
            raise self.error(
                f"supports at most {MAX_CONV_SPATIAL_AXES} spatial axes, but the bottom "
                f"of shape {_shape_text(shape)} has {num_spatial} after channel axis "
                f"{self.axis}"
            )
        with _named_errors(self):
            self.geometry = conv_geometry(param, num_spatial)
        self._setup_channels(param, shape[self.axis])
        self._setup_blobs(param)

    def _setup_channels(self, param: caffe_pb2.ConvolutionParameter, channels: int) -> None:
        self.channels = int(channels)
        self.num_output = int(param.num_output)
        self.group = int(param.group)
        if self.num_output <= 0:
            raise self.error("num_output must be set to a positive number")
        if self.group <= 0:
            raise self.error(f"group must be positive, got {self.group}")
        if self.channels % self.group:
            raise self.error(
                f"the bottom has {self.channels} channels, which is not divisible by "
                f"group {self.group}"
            )
        if self.num_output % self.group:
            raise self.error(
                f"num_output {self.num_output} is not divisible by group {self.group}; "
                f"use a multiple of the group"
            )

    def _setup_blobs(self, param: caffe_pb2.ConvolutionParameter) -> None:
        if self.transposed:
            weight_shape = (self.channels, self.num_output // self.group)
        else:
            weight_shape = (self.num_output, self.channels // self.group)
        weight_shape += self.geometry.kernel
        self.blobs = [_filled_blob(self, weight_shape, param.weight_filler, "weight_filler")]
        if param.bias_term:
            self.blobs.append(
                _filled_blob(self, (self.num_output,), param.bias_filler, "bias_filler")
            )

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        first = tuple(bottom_shapes[0])
        expected_axes = self.axis + 1 + self.geometry.num_spatial_axes
        if len(first) != expected_axes:
            raise self.error(
                f"was set up for a bottom with {expected_axes} axes, but the bottom now "
                f"has shape {_shape_text(first)}; the number of axes may not change"
            )
        if first[self.axis] != self.channels:
            raise self.error(
                f"was set up for {self.channels} input channels, but the bottom now has "
                f"{first[self.axis]} (shape {_shape_text(first)})"
            )
        for index, shape in enumerate(bottom_shapes[1:], start=1):
            if tuple(shape) != first:
                raise self.error(
                    f"all bottoms must have the same shape, but bottom {index} has shape "
                    f"{_shape_text(shape)} and bottom 0 has {_shape_text(first)}"
                )
        with _named_errors(self):
            return super().reshape(bottom_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        weight = self.blobs[0]
        bias = self.blobs[1] if len(self.blobs) > 1 else None
        apply = deconvolution if self.transposed else convolution
        return [
            apply(x, weight, bias, self.geometry, self.group, self.axis) for x in bottom
        ]


@register_layer
class ConvolutionLayer(_ConvolutionBase):
    """Convolve each bottom with learned filters (cross-correlation, as Caffe).

    Args (``convolution_param``):
        num_output: number of filters (required). bias_term: add a learned bias
            (default true). kernel_size, or kernel_h and kernel_w. stride (default
            1), or stride_h and stride_w. pad (default 0), or pad_h and pad_w.
            dilation (default 1). The repeated fields take one value, or one per
            spatial axis. group (default 1): channel groups. axis (default 1): the
            channel axis, and earlier axes are batch axes. weight_filler,
            bias_filler (default constant 0). force_nd_im2col and engine change
            nothing.

    Bottoms/tops: one or more bottoms of equal shape ``(batch..., C, spatial...)``
    with 0 to 3 spatial axes; one top each, ``(batch..., num_output, out...)`` with
    ``out = (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1``.
    Blobs: weight ``(num_output, C / group, kernel...)``, bias ``(num_output,)``.
    """

    type = "Convolution"


@register_layer
class DeconvolutionLayer(_ConvolutionBase):
    """Apply the transpose of a convolution (learned upsampling), as Caffe.

    Args: ``convolution_param`` as for Convolution. A ``bilinear`` weight filler with
    ``group`` and ``num_output`` equal to the channels, ``kernel_size: 2 * f - f % 2``,
    ``stride: f`` and ``pad: ceil((f - 1) / 2)`` upsamples by a factor ``f``.

    Bottoms/tops: as for Convolution, with
    ``out = stride * (in - 1) + dilation * (kernel - 1) + 1 - 2 * pad``.
    Blobs: weight ``(C, num_output / group, kernel...)``, bias ``(num_output,)``.
    """

    type = "Deconvolution"
    transposed = True


@register_layer
class Im2colLayer(Layer):
    """Rearrange convolution windows into columns (Caffe's Im2col layer).

    Args (``convolution_param``): kernel_size (or kernel_h and kernel_w), stride,
        pad, dilation and axis, as for Convolution. The other fields are ignored.

    Bottom: ``(batch..., C, spatial...)`` with at least one spatial axis.
    Top: ``(batch..., C * prod(kernel), out...)``; channel ``c * K + j`` is input
    channel ``c`` at kernel tap ``j`` (row-major), out as for Convolution.
    """

    type = "Im2col"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.convolution_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(self, param.axis, len(shape))
        num_spatial = len(shape) - self.axis - 1
        if num_spatial < 1:
            raise self.error(
                f"needs at least one spatial axis after channel axis {self.axis}, but "
                f"the bottom has shape {_shape_text(shape)}"
            )
        with _named_errors(self):
            self.geometry = conv_geometry(param, num_spatial)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = bottom_shapes[0]
        expected_axes = self.axis + 1 + self.geometry.num_spatial_axes
        if len(shape) != expected_axes:
            raise self.error(
                f"was set up for a bottom with {expected_axes} axes, but the bottom now "
                f"has shape {_shape_text(shape)}; the number of axes may not change"
            )
        with _named_errors(self):
            return super().reshape(bottom_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [im2col(bottom[0], self.geometry, self.axis)]


@register_layer
class PoolingLayer(Layer):
    """Pool over spatial windows of a 4-axis bottom, with Caffe's output size.

    Args (``pooling_param``):
        pool: MAX (default), AVE or STOCHASTIC. kernel_size, or kernel_h and
            kernel_w. stride (default 1), or stride_h and stride_w. pad (default 0),
            or pad_h and pad_w; only MAX and AVE accept padding, and it must be
            smaller than the kernel. global_pooling: the kernel is the whole bottom
            (then pad 0 and stride 1). round_mode: CEIL (default) or FLOOR.

    Bottom: ``(N, C, H, W)``.
    Tops: ``(N, C, PH, PW)`` with ``PH = ceil((H + 2 * pad - kernel) / stride) + 1``,
    minus one when any pad is set and the last window would start in the padding.
    MAX pooling takes an optional second top: the argmax mask, ``h * W + w`` per
    output. STOCHASTIC samples in TRAIN and takes the weighted average in TEST.
    """

    type = "Pooling"
    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.pooling_param
        self.method = _PoolMethod.Name(param.pool)
        self.num_tops = len(self.param.top)
        if self.num_tops > 1 and self.method != "MAX":
            raise self.error(
                f"takes a second top (the argmax mask) only with pool: MAX, not "
                f"{self.method}; remove the second top"
            )
        self.global_pooling = param.global_pooling
        self.kernel = self._read_kernel(param)
        self.pad = self._read_pair(param, "pad")
        self.stride = self._read_pair(param, "stride")
        self.ceil_mode = param.round_mode == caffe_pb2.PoolingParameter.CEIL
        self._check_geometry()

    def _read_kernel(self, param: caffe_pb2.PoolingParameter) -> tuple[int, int] | None:
        has_size = param.HasField("kernel_size")
        has_h, has_w = param.HasField("kernel_h"), param.HasField("kernel_w")
        if self.global_pooling:
            if has_size or has_h or has_w:
                raise self.error(
                    "global_pooling takes the kernel size from the bottom; remove "
                    "kernel_size, kernel_h and kernel_w"
                )
            return None
        if has_size and has_h and has_w:
            raise self.error("give either kernel_size or kernel_h and kernel_w, not both")
        if has_size:
            kernel = (int(param.kernel_size),) * 2
        elif has_h and has_w:
            kernel = (int(param.kernel_h), int(param.kernel_w))
        elif has_h or has_w:
            raise self.error("a non-square kernel needs both kernel_h and kernel_w")
        else:
            raise self.error(
                "needs a kernel size: set kernel_size, kernel_h and kernel_w, or "
                "global_pooling: true"
            )
        if min(kernel) <= 0:
            raise self.error(f"kernel size must be nonzero, got {_shape_text(kernel)}")
        return kernel

    def _read_pair(self, param: caffe_pb2.PoolingParameter, field: str) -> tuple[int, int]:
        has_h, has_w = param.HasField(f"{field}_h"), param.HasField(f"{field}_w")
        if has_h or has_w:
            if param.HasField(field) or not (has_h and has_w):
                raise self.error(
                    f"give either {field}, or both {field}_h and {field}_w"
                )
            return int(getattr(param, f"{field}_h")), int(getattr(param, f"{field}_w"))
        return (int(getattr(param, field)),) * 2

    def _check_geometry(self) -> None:
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise self.error(
                f"global_pooling needs pad 0 and stride 1, got pad "
                f"{_shape_text(self.pad)} and stride {_shape_text(self.stride)}"
            )
        if min(self.stride) <= 0:
            raise self.error(f"stride must be nonzero, got {_shape_text(self.stride)}")
        if any(self.pad):
            if self.method not in ("MAX", "AVE"):
                raise self.error(
                    f"padding works only with MAX and AVE pooling, not {self.method}; "
                    f"set pad 0"
                )
            if self.kernel is not None:
                for name, p, k in zip(("pad_h", "pad_w"), self.pad, self.kernel):
                    if p >= k:
                        raise self.error(
                            f"{name} ({p}) must be smaller than the kernel size ({k}) "
                            f"on its axis"
                        )

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        _check_four_axes(self, bottom_shapes[0])
        with _named_errors(self):
            return super().reshape(bottom_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        kernel = tuple(x.shape[-2:]) if self.global_pooling else self.kernel
        if self.method == "MAX":
            values, mask = max_pool2d(
                x, kernel, self.stride, self.pad, self.ceil_mode, with_mask=self.num_tops > 1
            )
            return [values, mask][: self.num_tops]
        train = self.phase == TRAIN
        return [pool2d(x, self.method, kernel, self.stride, self.pad, self.ceil_mode, train)]


@register_layer
class LRNLayer(Layer):
    """Local response normalization of a 4-axis bottom, as Caffe computes it.

    Args (``lrn_param``): local_size (default 5, odd), alpha (default 1), beta
        (default 0.75), k (default 1), norm_region: ACROSS_CHANNELS (default) or
        WITHIN_CHANNEL.

    ACROSS_CHANNELS: ``y = x * (k + alpha / local_size * s) ** -beta`` with ``s`` the
    sum of squares over ``local_size`` neighbouring channels. WITHIN_CHANNEL:
    ``y = x * (1 + alpha / local_size**2 * s) ** -beta`` with ``s`` over a
    ``local_size x local_size`` spatial window; Caffe ignores ``k`` in this mode.

    Bottom/top: ``(N, C, H, W)``.
    """

    type = "LRN"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.lrn_param
        self.local_size = int(param.local_size)
        if self.local_size % 2 != 1:
            raise self.error(f"local_size must be odd, got {self.local_size}")
        self.alpha = float(param.alpha)
        self.beta = float(param.beta)
        self.k = float(param.k)
        self.within_channel = param.norm_region == _NormRegion.Value("WITHIN_CHANNEL")

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        _check_four_axes(self, bottom_shapes[0])
        return super().reshape(bottom_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        if self.within_channel:
            return [lrn_within_channel(x, self.local_size, self.alpha, self.beta)]
        return [lrn_across_channels(x, self.local_size, self.alpha, self.beta, self.k)]


@register_layer
class SPPLayer(Layer):
    """Spatial pyramid pooling: pool into 1, 2, 4, ... bins per axis and concatenate.

    Args (``spp_param``): pyramid_height (required, at least 1); pool: MAX (default),
        AVE or STOCHASTIC. Level ``l`` pools with kernel and stride
        ``ceil(size / 2**l)`` and pad ``(kernel * 2**l - size + 1) / 2``.

    Bottom: ``(N, C, H, W)``. Top: ``(N, C * (1 + 4 + ... + 4**(height-1)))``, level
    by level; with pyramid_height 1 the top is ``(N, C, 1, 1)``, as in Caffe.
    """

    type = "SPP"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.spp_param
        self.pyramid_height = int(param.pyramid_height)
        if self.pyramid_height < 1:
            raise self.error(
                f"pyramid_height must be at least 1, got {self.pyramid_height}"
            )
        self.method = caffe_pb2.SPPParameter.PoolMethod.Name(param.pool)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shape = bottom_shapes[0]
        _check_four_axes(self, shape)
        if min(shape[2:]) <= 0:
            raise self.error(
                f"needs a nonempty bottom, but the bottom has shape {_shape_text(shape)}"
            )
        with _named_errors(self):
            return super().reshape(bottom_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        train = self.phase == TRAIN
        return [spatial_pyramid_pool(bottom[0], self.pyramid_height, self.method, train)]


@register_layer
class CropLayer(Layer):
    """Crop the first bottom to the shape of the second from ``axis`` on.

    Args (``crop_param``): axis (default 2, and negative values count from the
        end). offset: none (all 0), one offset shared by all cropped axes, or one
        per cropped axis.

    Bottoms: the tensor to crop, and a reference that gives only its shape (it gets
    no gradient). Top: the first bottom's shape before ``axis``, the reference's from
    ``axis`` on.
    """

    type = "Crop"
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.crop_param
        num_axes = len(bottom_shapes[0])
        self.axis = canonical_axis(self, param.axis, num_axes)
        self.offsets = [int(o) for o in param.offset]
        if len(self.offsets) > 1 and self.axis + len(self.offsets) != num_axes:
            raise self.error(
                f"{len(self.offsets)} offsets are given for the {num_axes - self.axis} "
                f"cropped axes (axis {self.axis} to the last); give one offset, or one "
                f"per cropped axis"
            )

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        with _named_errors(self):
            return super().reshape(bottom_shapes)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [crop(bottom[0], tuple(bottom[1].shape), self.axis, self.offsets)]
