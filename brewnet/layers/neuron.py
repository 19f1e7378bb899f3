"""Neuron layers: element-wise functions of one bottom into a top of the same shape.

Each layer may run in place (its top named like its bottom). The net then passes the
bottom tensor in and stores the output as a new tensor, so autograd keeps the values
that the gradient needs and an in-place layer gives the same gradients as an
out-of-place one. Caffe's in-place Power layer differs here: it computes its gradient
from the overwritten blob, and brewnet does not reproduce that.

The functions take and return tensors; the layer classes read their arguments from
the ``LayerParameter``. Every function returns a new tensor, never its input, because
the net gives each blob its own tensor.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from brewnet.errors import NetDefinitionError
from brewnet.layers.base import TRAIN, Layer, Shape
from brewnet.layers.registry import register_layer
from brewnet.proto import caffe_pb2

# Caffe writes base -1 for Exp and Log to mean base e.
NATURAL_BASE = -1.0


# =================================================================== functions
def relu(x: torch.Tensor, negative_slope: float = 0.0) -> torch.Tensor:
    """Return ``max(x, 0) + negative_slope * min(x, 0)``.

    The gradient at ``x == 0`` is ``negative_slope``, as in Caffe.
    """
    if negative_slope == 0:
        return torch.relu(x)  # the same values and gradient, with a faster kernel
    return F.leaky_relu(x, negative_slope)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Return ``1 / (1 + exp(-x))``."""
    return torch.sigmoid(x)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """Return the hyperbolic tangent of ``x``."""
    return torch.tanh(x)


def power(
    x: torch.Tensor, power: float = 1.0, scale: float = 1.0, shift: float = 0.0
) -> torch.Tensor:
    """Return ``(shift + scale * x) ** power``.

    When ``power * scale`` is 0 the output does not depend on ``x``: it is 1 for
    power 0 and ``shift ** power`` otherwise, and the gradient is exactly 0, as in
    Caffe. Otherwise the gradient is ``power * scale * (shift + scale * x) **
    (power - 1)``.

    NOTE: Caffe computes the gradient for ``shift == 0`` as ``power * y / x``, which
    is NaN at ``x == 0``; brewnet returns the derivative's value there instead.
    """
    if power * scale == 0:
        if power == 0:
            value = 1.0
        else:
            value = torch.tensor(shift, dtype=x.dtype).pow(power).item()
        return torch.full_like(x, value)
    base = x * scale
    if shift != 0:
        base = base + shift
    if power == 1:
        return base
    return base.pow(power)


def dropout(x: torch.Tensor, ratio: float = 0.5, train: bool = True) -> torch.Tensor:
    """Zero each element with probability ``ratio`` and scale the rest by 1/(1-ratio).

    With ``train`` false the output is a copy of ``x``. The mask is drawn from
    torch's global generator.
    """
    if not train:
        return x.clone()
    keep = torch.empty_like(x).bernoulli_(1.0 - ratio)
    return x * keep * (1.0 / (1.0 - ratio))


def absval(x: torch.Tensor) -> torch.Tensor:
    """Return ``|x|``; the gradient at 0 is 0."""
    return torch.abs(x)


def bnll(x: torch.Tensor) -> torch.Tensor:
    """Return the binomial normal log likelihood ``log(1 + exp(x))``, computed stably."""
    return F.softplus(x)


def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Return ``x`` for ``x > 0`` and ``alpha * (exp(x) - 1)`` otherwise."""
    return F.elu(x, alpha)


def exp(
    x: torch.Tensor, base: float = NATURAL_BASE, scale: float = 1.0, shift: float = 0.0
) -> torch.Tensor:
    """Return ``base ** (shift + scale * x)``; base -1 means e.

    As in Caffe, this is computed as ``base ** shift * exp(log(base) * scale * x)``.
    """
    log_base = 1.0 if base == NATURAL_BASE else math.log(base)
    inner_scale = log_base * scale
    if shift == 0:
        outer_scale = 1.0
    elif base == NATURAL_BASE:
        outer_scale = math.exp(shift)
    else:
        outer_scale = base**shift
    y = torch.exp(x if inner_scale == 1 else x * inner_scale)
    if outer_scale != 1:
        y = y * outer_scale
    return y


def log(
    x: torch.Tensor, base: float = NATURAL_BASE, scale: float = 1.0, shift: float = 0.0
) -> torch.Tensor:
    """Return ``log_base(shift + scale * x)``; base -1 means e."""
    base_scale = 1.0 if base == NATURAL_BASE else 1.0 / math.log(base)
    inner = x
    if scale != 1:
        inner = inner * scale
    if shift != 0:
        inner = inner + shift
    y = torch.log(inner)
    if base_scale != 1:
        y = y * base_scale
    return y


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """Return ``x`` where ``x > 0`` and ``slope * x`` elsewhere.

    ``slope`` contains one value for every channel (axis 1), or a single value shared
    by all channels. At ``x == 0`` the gradient takes the negative side: ``slope``
    for ``x`` and ``x`` (that is, 0) for the slope, as in Caffe.
    """
    if slope.numel() == 1:
        factor = slope.reshape(())
    else:
        factor = slope.reshape((1, -1) + (1,) * (x.dim() - 2))
    return torch.where(x > 0, x, x * factor)


class _StepFunction(torch.autograd.Function):
    """The Threshold step, whose backward raises: Caffe has no gradient for it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: float, description: str) -> torch.Tensor:
        ctx.description = description
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise NetDefinitionError(
            f"{ctx.description} cannot backpropagate, because Caffe defines no "
            f"gradient for it. Keep it out of the backward pass: set "
            f"'propagate_down: false' on it (and drop force_backward, which "
            f"overrides that), or make no weighted loss depend on its top"
        )


def threshold(
    x: torch.Tensor, threshold: float = 0.0, description: str = "the Threshold layer"
) -> torch.Tensor:
    """Return 1 where ``x > threshold`` and 0 elsewhere.

    Requesting a gradient through the result raises :class:`NetDefinitionError`,
    whose message starts with ``description``.
    """
    return _StepFunction.apply(x, threshold, description)


def swish(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Return ``x * sigmoid(beta * x)``."""
    return x * torch.sigmoid(beta * x)


def clip(x: torch.Tensor, min_value: float, max_value: float) -> torch.Tensor:
    """Return ``max(min_value, min(x, max_value))``.

    The gradient passes where ``min_value <= x <= max_value``, bounds included, as
    in Caffe. With ``min_value > max_value`` every output is ``min_value`` and every
    gradient is 0.
    """
    return x.clamp(max=max_value).clamp(min=min_value)


# =================================================================== layers
class NeuronLayer(Layer):
    """A layer with one bottom and one top of the bottom's shape."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]


@register_layer
class ReLULayer(NeuronLayer):
    """Rectified linear unit, leaky when ``negative_slope`` is nonzero.

    Args (``relu_param``):
        negative_slope: factor applied to negative inputs (default 0).

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "ReLU"

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [relu(bottom[0], self.param.relu_param.negative_slope)]


@register_layer
class SigmoidLayer(NeuronLayer):
    """Logistic sigmoid ``1 / (1 + exp(-x))``.

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "Sigmoid"

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [sigmoid(bottom[0])]


@register_layer
class TanHLayer(NeuronLayer):
    """Hyperbolic tangent.

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "TanH"

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [tanh(bottom[0])]


@register_layer
class PowerLayer(NeuronLayer):
    """``y = (shift + scale * x) ** power``.

    Args (``power_param``):
        power: exponent (default 1).
        scale: factor applied to the input first (default 1).
        shift: added after scaling (default 0).

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "Power"

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.param.power_param
        return [power(bottom[0], p.power, p.scale, p.shift)]


@register_layer
class DropoutLayer(NeuronLayer):
    """Dropout: at TRAIN, zero inputs at random and scale the rest; at TEST, copy.

    Args (``dropout_param``):
        dropout_ratio: probability of zeroing an element (default 0.5), in [0, 1).
            The kept elements are multiplied by ``1 / (1 - dropout_ratio)``.

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "Dropout"

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        ratio = self.param.dropout_param.dropout_ratio
        if not 0.0 <= ratio < 1.0:
            raise self.error(
                f"dropout_ratio is {ratio:g}, but it must be in [0, 1) because the "
                f"kept elements are scaled by 1 / (1 - dropout_ratio)"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        ratio = self.param.dropout_param.dropout_ratio
        return [dropout(bottom[0], ratio, train=self.phase == TRAIN)]


@register_layer
class AbsValLayer(NeuronLayer):
    """Absolute value ``|x|``.

    Caffe rejects this layer in place, and so does brewnet, so that a net that runs
    here also runs in Caffe.

    Bottom: any shape. Top: the bottom's shape, under another name.
    """

    type = "AbsVal"

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if self.param.top[0] == self.param.bottom[0]:
            raise self.error(
                f"top '{self.param.top[0]}' is the layer's bottom, but AbsVal does "
                f"not run in place (Caffe rejects it too); give the top another name"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [absval(bottom[0])]


@register_layer
class BNLLLayer(NeuronLayer):
    """Binomial normal log likelihood ``log(1 + exp(x))``.

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "BNLL"

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [bnll(bottom[0])]


@register_layer
class ELULayer(NeuronLayer):
    """Exponential linear unit.

    Args (``elu_param``):
        alpha: the output for large negative inputs approaches ``-alpha``
            (default 1).

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "ELU"

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [elu(bottom[0], self.param.elu_param.alpha)]


def _check_log_base(layer: Layer, base: float) -> None:
    """Raise unless ``base`` is -1 (meaning e) or a positive number with a finite log."""
    if base == NATURAL_BASE:
        return
    if not base > 0:
        raise layer.error(
            f"base is {base:g}, but it must be positive, or -1 for base e"
        )
    if math.isinf(base):
        raise layer.error("base is infinite; give a finite positive base, or -1 for e")


@register_layer
class ExpLayer(NeuronLayer):
    """``y = base ** (shift + scale * x)``.

    Args (``exp_param``):
        base: positive base, or -1 (the default) for e.
        scale: factor applied to the input (default 1).
        shift: added after scaling (default 0).

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "Exp"

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        _check_log_base(self, self.param.exp_param.base)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.param.exp_param
        return [exp(bottom[0], p.base, p.scale, p.shift)]


@register_layer
class LogLayer(NeuronLayer):
    """``y = log_base(shift + scale * x)``.

    Args (``log_param``):
        base: positive base other than 1, or -1 (the default) for e.
        scale: factor applied to the input (default 1).
        shift: added after scaling (default 0).

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "Log"

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        base = self.param.log_param.base
        _check_log_base(self, base)
        if base == 1:
            raise self.error(
                "base is 1, whose logarithm is 0, so log_base(x) is undefined; give "
                "another positive base, or -1 for e"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.param.log_param
        return [log(bottom[0], p.base, p.scale, p.shift)]


@register_layer
class PReLULayer(NeuronLayer):
    """Parametric ReLU: a learned slope for negative inputs, per channel (axis 1).

    Args (``prelu_param``):
        filler: initializer of the slopes (default constant 0.25).
        channel_shared: one slope for all channels (default false).

    Blobs: the slopes, of shape (C,), or of shape () when channel_shared.
    Bottom: (N, C, ...), at least 2 axes. Top: the bottom's shape.
    """

    type = "PReLU"

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        shape = bottom_shapes[0]
        self._check_axes(shape)
        p = self.param.prelu_param
        if p.HasField("filler"):
            filler = p.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        slope_shape = () if p.channel_shared else (shape[1],)
        self.blobs = [self.new_blob(slope_shape, filler)]

    def _check_axes(self, shape: Shape) -> None:
        if len(shape) < 2:
            raise self.error(
                f"bottom has shape {tuple(shape)}, but PReLU needs at least 2 axes "
                f"(N, C, ...), because the slopes follow axis 1"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        self._check_axes(tuple(x.shape))
        slope = self.blobs[0]
        expected = 1 if self.param.prelu_param.channel_shared else x.shape[1]
        if slope.numel() != expected:
            raise self.error(
                f"the slope blob has {slope.numel()} values, but the bottom has "
                f"{x.shape[1]} channels and channel_shared is "
                f"{str(self.param.prelu_param.channel_shared).lower()}, so it needs "
                f"{expected}; check the weights file or channel_shared"
            )
        return [prelu(x, slope)]


@register_layer
class ThresholdLayer(NeuronLayer):
    """Step function: 1 where ``x > threshold``, 0 elsewhere.

    Caffe does not implement this layer's backward, so a backward pass that needs a
    gradient through it raises :class:`NetDefinitionError`. A net that only runs
    forward, or whose backward does not reach this layer's bottom, works.

    Args (``threshold_param``):
        threshold: the step position (default 0).

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "Threshold"

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        description = f"layer '{self.name}' (type {self.type})"
        return [threshold(bottom[0], self.param.threshold_param.threshold, description)]


@register_layer
class SwishLayer(NeuronLayer):
    """Swish ``x * sigmoid(beta * x)``.

    Args (``swish_param``):
        beta: factor inside the sigmoid (default 1).

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "Swish"

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [swish(bottom[0], self.param.swish_param.beta)]


@register_layer
class ClipLayer(NeuronLayer):
    """Clip every value to ``[min, max]``.

    The gradient passes where ``min <= x <= max``, bounds included.

    Args (``clip_param``, both required):
        min: lower bound.
        max: upper bound.

    Bottom: any shape. Top: the bottom's shape.
    """

    type = "Clip"

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        p = self.param.clip_param
        missing = [name for name in ("min", "max") if not p.HasField(name)]
        if missing:
            raise self.error(
                f"clip_param is missing the required field "
                f"{' and '.join(missing)}; write clip_param {{ min: ... max: ... }}"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.param.clip_param
        return [clip(bottom[0], p.min, p.max)]
