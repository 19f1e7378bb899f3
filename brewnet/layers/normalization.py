"""Normalization layers: BatchNorm and MVN, and the affine layers Scale and Bias.

Caffe's BatchNorm only normalizes; a Scale layer with ``bias_term: true`` after it
supplies the learned scale and shift.
"""

from __future__ import annotations

from typing import Sequence

import torch

from brewnet.layers.base import TRAIN, Layer, Shape, canonical_axis
from brewnet.layers.registry import register_layer
from brewnet.proto import caffe_pb2


# =================================================================== functions
def _per_channel(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` viewed as (N, C, rest); a 1-axis ``x`` has one channel."""
    if x.dim() == 1:
        return x.reshape(x.shape[0], 1, 1)
    return x.reshape(x.shape[0], x.shape[1], -1)


def batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the mean and the biased variance of every channel (axis 1) of ``x``.

    Both have shape (C,); the statistics run over the batch and spatial axes.
    """
    rows = _per_channel(x)
    mean = rows.mean(dim=(0, 2))
    variance = (rows - mean.reshape(1, -1, 1)).pow(2).mean(dim=(0, 2))
    return mean, variance


def batch_norm(
    x: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Return ``(x - mean) / sqrt(variance + eps)`` with (C,) statistics on axis 1."""
    rows = _per_channel(x)
    mean = mean.reshape(1, -1, 1)
    std = torch.sqrt(variance.reshape(1, -1, 1) + eps)
    return ((rows - mean) / std).reshape(x.shape)


class _VarianceNormalization(torch.autograd.Function):
    """Row-wise ``(x - mean) / (std + eps)`` with Caffe's MVN gradient.

    The gradient is ``(dy - mean(dy) - y * mean(y * dy)) / (std + eps)``. It equals
    the derivative up to a relative error of ``eps / std`` in its last term, and it
    stays finite for a constant row, where the derivative of ``std`` is infinite.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, eps: float) -> torch.Tensor:
        centered = rows - rows.mean(dim=1, keepdim=True)
        std = centered.pow(2).mean(dim=1, keepdim=True).sqrt() + eps
        y = centered / std
        ctx.save_for_backward(y, std)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, std = ctx.saved_tensors
        mean_grad = grad.mean(dim=1, keepdim=True)
        mean_product = (y * grad).mean(dim=1, keepdim=True)
        return (grad - mean_grad - y * mean_product) / std, None


def legacy_shape(shape: Sequence[int]) -> Shape:
    """Return ``shape`` padded with trailing 1s to Caffe's 4 legacy axes."""
    return tuple(int(d) for d in shape) + (1,) * (4 - len(shape))


def mvn(
    x: torch.Tensor,
    normalize_variance: bool = True,
    across_channels: bool = False,
    eps: float = 1e-9,
) -> torch.Tensor:
    """Subtract the mean of every (sample, channel), and divide by its std + eps.

    With ``across_channels`` the statistics of a sample run over all its channels
    too. ``eps`` is added to the standard deviation, not to the variance. ``x``
    has at most 4 axes, and the result has exactly 4, as Caffe's MVN top has.
    """
    shape = legacy_shape(x.shape)
    rows_count = shape[0] if across_channels else shape[0] * shape[1]
    rows = x.reshape(rows_count, -1)
    if normalize_variance:
        y = _VarianceNormalization.apply(rows, eps)
    else:
        y = rows - rows.mean(dim=1, keepdim=True)
    return y.reshape(shape)


def broadcast_over(p: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """Return ``p`` viewed so that it broadcasts onto ``ndim`` axes from ``axis`` on."""
    trailing = ndim - axis - p.dim()
    return p.reshape((1,) * axis + tuple(p.shape) + (1,) * trailing)


def scale(x: torch.Tensor, factor: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Return ``x * factor``, with ``factor``'s axes matching ``x``'s from ``axis`` on."""
    return x * broadcast_over(factor, x.dim(), axis)


def bias(x: torch.Tensor, offset: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Return ``x + offset``, with ``offset``'s axes matching ``x``'s from ``axis`` on."""
    return x + broadcast_over(offset, x.dim(), axis)


# =================================================================== BatchNorm
@register_layer
class BatchNormLayer(Layer):
    """Normalize each channel (axis 1) by batch statistics or by running averages.

    Args (``batch_norm_param``):
        use_global_stats: normalize with the stored running averages instead of
            the batch's statistics; unset means false at TRAIN and true at TEST.
        moving_average_fraction: decay ``f`` of the running averages
            (default 0.999).
        eps: added to the variance before the square root (default 1e-5).

    Blobs, as Caffe stores them: the running sum of batch means (C,), the running
    sum of unbiased batch variances (C,), and their normalizer (1,). After each
    TRAIN pass with batch statistics: ``s2 = f * s2 + 1``, ``s0 = f * s0 + mean``
    and ``s1 = f * s1 + m / (m - 1) * variance``, with ``m`` the values per channel
    (the factor is 1 when m is 1). The running mean is ``s0 / s2`` and the running
    variance ``s1 / s2`` (both 0 while s2 is 0). The blobs are statistics, so
    setup gives each one a ``param { lr_mult: 0 }`` and the solver leaves them
    alone, as Caffe does. A nonzero lr_mult on them is an error.

    Bottom: (N, C, ...), or (N,) as one channel. Top: the bottom's shape.
    """

    type = "BatchNorm"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shape = bottom_shapes[0]
        if len(shape) == 0:
            raise self.error(
                "bottom is a scalar, but BatchNorm needs (N, C, ...) or (N,); "
                "reshape the bottom"
            )
        p = self.param.batch_norm_param
        self.use_global_stats = self.phase != TRAIN
        if p.HasField("use_global_stats"):
            self.use_global_stats = p.use_global_stats
        self.channels = 1 if len(shape) == 1 else int(shape[1])
        self.blobs = [
            self.new_blob((self.channels,), None),
            self.new_blob((self.channels,), None),
            self.new_blob((1,), None),
        ]
        self._freeze_statistics()

    def _freeze_statistics(self) -> None:
        """Give every statistics blob lr_mult 0, adding param specs where absent."""
        specs = self.param.param
        for index in range(len(self.blobs)):
            if index == len(specs):
                specs.add().lr_mult = 0.0
            elif specs[index].lr_mult != 0:
                raise self.error(
                    f"param {index} has lr_mult {specs[index].lr_mult:g}, but "
                    f"BatchNorm's blobs are running statistics that the solver "
                    f"must not update; set lr_mult: 0 or remove the param entries"
                )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        self._check_channels(tuple(x.shape))
        eps = self.param.batch_norm_param.eps
        if self.use_global_stats:
            mean, variance = self._running_statistics()
        else:
            mean, variance = batch_statistics(x)
            self._update_running_sums(mean.detach(), variance.detach(), x)
        return [batch_norm(x, mean, variance, eps)]

    def _check_channels(self, shape: Shape) -> None:
        if len(shape) == 0:
            channels = None
        elif len(shape) == 1:
            channels = 1
        else:
            channels = shape[1]
        if channels != self.channels:
            raise self.error(
                f"bottom has shape {shape}, but the layer was set up for "
                f"{self.channels} channels on axis 1; the channel count cannot change"
            )

    def _running_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the running mean and variance (constants for autograd)."""
        normalizer = self.blobs[2].detach().reshape(-1)[0]
        factor = torch.where(normalizer == 0, 0.0, 1.0 / normalizer)
        return self.blobs[0].detach() * factor, self.blobs[1].detach() * factor

    def _update_running_sums(
        self, mean: torch.Tensor, variance: torch.Tensor, x: torch.Tensor
    ) -> None:
        fraction = self.param.batch_norm_param.moving_average_fraction
        m = x.numel() // self.channels
        correction = m / (m - 1) if m > 1 else 1.0
        with torch.no_grad():
            self.blobs[2].mul_(fraction).add_(1.0)
            self.blobs[0].mul_(fraction).add_(mean)
            self.blobs[1].mul_(fraction).add_(variance * correction)


# =================================================================== MVN
@register_layer
class MVNLayer(Layer):
    """Mean-variance normalization of each sample's channels.

    Args (``mvn_param``):
        normalize_variance: also divide by the standard deviation (default true).
        across_channels: normalize over all channels of a sample at once instead
            of each channel alone (default false).
        eps: added to the standard deviation, not to the variance (default 1e-9).

    Bottom: up to 4 axes. Top: the bottom's shape padded with 1s to 4 axes, as in
    Caffe, whose MVN top always has 4 axes.
    """

    type = "MVN"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self._check_axes(bottom_shapes[0])

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_axes(bottom_shapes[0])
        return [legacy_shape(bottom_shapes[0])]

    def _check_axes(self, shape: Shape) -> None:
        if len(shape) > 4:
            raise self.error(
                f"bottom has shape {tuple(shape)}, but MVN works on Caffe's 4 legacy "
                f"axes (N, C, H, W); reshape the bottom to at most 4 axes"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.param.mvn_param
        return [mvn(bottom[0], p.normalize_variance, p.across_channels, p.eps)]


# =================================================================== Scale, Bias
def _parameter_shape(
    layer: Layer, shape: Shape, axis: int, num_axes: int, what: str
) -> Shape:
    """Return the shape of a learned ``what`` blob covering ``shape`` from ``axis``."""
    axis = canonical_axis(layer, axis, len(shape))
    if num_axes < -1:
        raise layer.error(
            f"num_axes is {num_axes}, but it must be non-negative, or -1 to cover "
            f"bottom[0] from axis {axis} to its end"
        )
    if num_axes >= 0 and len(shape) < axis + num_axes:
        raise layer.error(
            f"the {what} blob would cover {num_axes} axes of bottom[0] from axis "
            f"{axis}, but bottom[0] has shape {tuple(shape)}; lower num_axes or axis"
        )
    end = len(shape) if num_axes == -1 else axis + num_axes
    return tuple(shape[axis:end])


def _broadcast_axis(
    layer: Layer, shape: Shape, p_shape: Shape, axis: int, what: str
) -> int:
    """Return the first axis of bottom[0] that the ``what`` blob lines up with.

    A scalar blob lines up with axis 0, whatever ``axis`` is, as in Caffe.
    """
    if len(p_shape) == 0:
        return 0
    axis = canonical_axis(layer, axis, len(shape))
    if len(shape) < axis + len(p_shape):
        raise layer.error(
            f"the {what} blob of shape {tuple(p_shape)} extends past bottom[0]'s "
            f"shape {tuple(shape)} when applied from axis {axis}; lower the axis"
        )
    for index, size in enumerate(p_shape):
        if shape[axis + index] != size:
            raise layer.error(
                f"dimension mismatch: bottom[0] axis {axis + index} has size "
                f"{shape[axis + index]}, but axis {index} of the {what} blob has size "
                f"{size}; bottom[0] has shape {tuple(shape)} and the {what} blob "
                f"{tuple(p_shape)}, applied from axis {axis}"
            )
    return axis


@register_layer
class ScaleLayer(Layer):
    """Multiply bottom[0] by a scale that broadcasts over it, optionally add a bias.

    The scale is bottom[1] when given, else a learned blob of shape
    ``bottom[0].shape[axis:axis + num_axes]``.

    Args (``scale_param``):
        axis: first axis of bottom[0] that the scale covers (default 1); negative
            values count from the end. A scalar scale ignores it.
        num_axes: axes of a learned scale (default 1); -1 covers all axes from
            ``axis``, 0 makes a scalar. Ignored with a bottom[1].
        filler: initializer of a learned scale (default constant 1).
        bias_term: also add a learned bias, as a following Bias layer would
            (default false). Its shape is that of the scale.
        bias_filler: initializer of the bias (default constant 0).

    Blobs: [scale, bias] with one bottom, [bias] with two, [] without bias_term and
    with two bottoms.
    Bottom: bottom[0] of any shape, bottom[1] (optional) the scale.
    Top: bottom[0]'s shape.
    """

    type = "Scale"
    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.scale_param
        shape = tuple(bottom_shapes[0])
        self.blobs = []
        if len(bottom_shapes) == 1:
            scale_shape = _parameter_shape(self, shape, p.axis, p.num_axes, "scale")
            if p.HasField("filler"):
                filler = p.filler
            else:
                filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
            self.blobs.append(self.new_blob(scale_shape, filler))
        if p.bias_term:
            if len(bottom_shapes) > 1:
                bias_axes = len(bottom_shapes[1])
            else:
                bias_axes = p.num_axes
            bias_shape = _parameter_shape(self, shape, p.axis, bias_axes, "bias")
            self.blobs.append(self.new_blob(bias_shape, p.bias_filler))

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        p = self.param.scale_param
        shape = tuple(x.shape)
        factor = bottom[1] if len(bottom) > 1 else self.blobs[0]
        axis = _broadcast_axis(self, shape, tuple(factor.shape), p.axis, "scale")
        y = scale(x, factor, axis)
        if p.bias_term:
            offset = self.blobs[-1]
            axis = _broadcast_axis(self, shape, tuple(offset.shape), p.axis, "bias")
            y = bias(y, offset, axis)
        return [y]


@register_layer
class BiasLayer(Layer):
    """Add a bias that broadcasts over bottom[0].

    The bias is bottom[1] when given, else a learned blob of shape
    ``bottom[0].shape[axis:axis + num_axes]``.

    Args (``bias_param``):
        axis: first axis of bottom[0] that the bias covers (default 1); negative
            values count from the end. A scalar bias ignores it.
        num_axes: axes of a learned bias (default 1); -1 covers all axes from
            ``axis``, 0 makes a scalar. Ignored with a bottom[1].
        filler: initializer of a learned bias (default constant 0).

    Blobs: [bias] with one bottom, [] with two.
    Bottom: bottom[0] of any shape, bottom[1] (optional) the bias.
    Top: bottom[0]'s shape.
    """

    type = "Bias"
    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.bias_param
        self.blobs = []
        if len(bottom_shapes) == 1:
            shape = tuple(bottom_shapes[0])
            bias_shape = _parameter_shape(self, shape, p.axis, p.num_axes, "bias")
            self.blobs.append(self.new_blob(bias_shape, p.filler))

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        offset = bottom[1] if len(bottom) > 1 else self.blobs[0]
        axis = _broadcast_axis(
            self, tuple(x.shape), tuple(offset.shape), self.param.bias_param.axis, "bias"
        )
        return [bias(x, offset, axis)]
