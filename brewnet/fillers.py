"""Caffe's weight fillers: constant, uniform, gaussian, xavier, msra,
positive_unitball and bilinear.

Each filler follows BVLC Caffe's ``include/caffe/filler.hpp`` (final master),
including its checks: a ``sparse`` value only on the gaussian filler, a positive
``std``, ``min <= max``. fan_in is ``count / shape[0]`` and fan_out is
``count / shape[1]`` (``count`` for a blob with one axis). The random numbers come
from torch's global generator, which :func:`brewnet.set_random_seed` seeds, so they
differ from Caffe's own draws.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from brewnet.errors import LayerSetupError
from brewnet.proto import caffe_pb2

Shape = tuple[int, ...]
_VarianceNorm = caffe_pb2.FillerParameter.VarianceNorm


def _count(shape: Shape) -> int:
    return math.prod(shape)


def _shape_text(shape: Shape) -> str:
    return " ".join(map(str, shape)) if shape else "(scalar)"


def _fan_scale_n(param: caffe_pb2.FillerParameter, shape: Shape) -> float:
    """Return the ``n`` of xavier and msra: fan_in, fan_out or their mean."""
    total = _count(shape)
    fan_in = total // shape[0] if shape else total
    fan_out = total // shape[1] if len(shape) > 1 else total
    if param.variance_norm == _VarianceNorm.Value("AVERAGE"):
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == _VarianceNorm.Value("FAN_OUT"):
        return float(fan_out)
    return float(fan_in)


def _constant(param, shape, dtype):
    return torch.full(shape, param.value, dtype=dtype)


def _uniform(param, shape, dtype):
    if param.min > param.max:
        raise LayerSetupError(
            f"the uniform filler needs min <= max, got min {param.min:g} and max "
            f"{param.max:g}"
        )
    return torch.empty(shape, dtype=dtype).uniform_(param.min, param.max)


def _gaussian(param, shape, dtype):
    if param.std <= 0:
        raise LayerSetupError(
            f"the gaussian filler needs a positive std, got {param.std:g}"
        )
    values = torch.empty(shape, dtype=dtype).normal_(param.mean, param.std)
    if param.sparse < -1:
        raise LayerSetupError(
            f"sparse must be -1 (dense) or at least 0, got {param.sparse}"
        )
    if param.sparse >= 0:
        values *= _sparse_mask(param.sparse, shape, dtype)
    return values


def _sparse_mask(sparse: int, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
    """Return Caffe's Bernoulli mask that keeps each weight with ``sparse / shape[0]``."""
    if len(shape) < 1:
        raise LayerSetupError("the sparse gaussian filler needs a blob with axes")
    probability = sparse / shape[0]
    if probability > 1:
        raise LayerSetupError(
            f"sparse {sparse} exceeds the blob's first axis ({shape[0]}), so the "
            f"probability of a nonzero weight, sparse / {shape[0]}, is above 1; use a "
            f"sparse of at most {shape[0]}"
        )
    return torch.bernoulli(torch.full(shape, probability, dtype=dtype))


def _positive_unitball(param, shape, dtype):
    values = torch.rand(shape, dtype=dtype)
    num = shape[0] if shape else 1
    rows = values.reshape(num, -1)
    rows /= rows.sum(dim=1, keepdim=True)
    return values


def _xavier(param, shape, dtype):
    scale = math.sqrt(3.0 / _fan_scale_n(param, shape))
    return torch.empty(shape, dtype=dtype).uniform_(-scale, scale)


def _msra(param, shape, dtype):
    std = math.sqrt(2.0 / _fan_scale_n(param, shape))
    return torch.empty(shape, dtype=dtype).normal_(0.0, std)


def _bilinear(param, shape, dtype):
    if len(shape) != 4 or shape[2] != shape[3]:
        raise LayerSetupError(
            f"the bilinear filler needs a 4-axis blob with square kernels, got shape "
            f"{_shape_text(shape)}"
        )
    width = shape[3]
    f = math.ceil(width / 2.0)
    # The centre is (width - 1) / (2 f), as in BVLC Caffe's final master. Release
    # 1.0 used (2 f - 1 - f % 2) / (2 f), which is off centre for widths such as 3
    # and 6.
    center = (width - 1) / (2.0 * f)
    positions = torch.arange(width, dtype=torch.float64)
    weights_1d = 1 - torch.abs(positions / f - center)
    kernel = torch.outer(weights_1d, weights_1d).to(dtype)  # (kH, kW)
    return kernel.expand(shape).clone()


_Filler = Callable[[caffe_pb2.FillerParameter, Shape, torch.dtype], torch.Tensor]
_FILLERS: dict[str, _Filler] = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}

_SPARSE_CAPABLE = {"gaussian"}


def filler_types() -> list[str]:
    """Return the filler type names this module implements."""
    return sorted(_FILLERS)


def fill(
    param: caffe_pb2.FillerParameter, shape: Shape, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Return a new tensor of ``shape`` filled as ``param`` describes.

    Raises:
        LayerSetupError: the filler type is unknown, ``sparse`` is set on a filler
            other than gaussian, or the filler's parameters or the blob's shape are
            invalid for it (Caffe rejects the same cases).
    """
    kind = param.type
    try:
        filler = _FILLERS[kind]
    except KeyError:
        raise LayerSetupError(
            f"unknown filler type '{kind}'; known types are {', '.join(filler_types())}"
        ) from None
    if param.sparse != -1 and kind not in _SPARSE_CAPABLE:
        raise LayerSetupError(
            f"the {kind} filler does not support 'sparse'; only the gaussian filler does"
        )
    if _count(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    return filler(param, shape, dtype)
