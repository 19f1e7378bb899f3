"""Caffe's weight fillers: constant, uniform, gaussian, xavier, msra,
positive_unitball and bilinear.

Fan-in and fan-out follow Caffe's legacy blob accessors: fan_in is
``count / shape[0]`` and fan_out is ``count / shape[1]``, where a missing axis counts
as 1. The random numbers come from torch's global generator, which
:func:`brewnet.set_random_seed` seeds, so they differ from Caffe's own draws.
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


def _legacy_dim(shape: Shape, index: int) -> int:
    return shape[index] if index < len(shape) else 1


def _fan_scale_n(param: caffe_pb2.FillerParameter, shape: Shape) -> float:
    total = _count(shape)
    fan_in = total // _legacy_dim(shape, 0)
    fan_out = total // _legacy_dim(shape, 1)
    if param.variance_norm == _VarianceNorm.Value("AVERAGE"):
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == _VarianceNorm.Value("FAN_OUT"):
        return float(fan_out)
    return float(fan_in)


def _constant(param, shape, dtype):
    return torch.full(shape, param.value, dtype=dtype)


def _uniform(param, shape, dtype):
    return torch.empty(shape, dtype=dtype).uniform_(param.min, param.max)


def _gaussian(param, shape, dtype):
    values = torch.empty(shape, dtype=dtype).normal_(param.mean, param.std)
    if param.sparse >= 0:
        # 'sparse' is the mean number of nonzero weights per output (axis 0).
        if len(shape) < 1:
            raise LayerSetupError("the sparse gaussian filler needs a blob with axes")
        probability = min(1.0, param.sparse / shape[0])
        values *= torch.bernoulli(torch.full(shape, probability, dtype=dtype))
    return values


def _positive_unitball(param, shape, dtype):
    values = torch.rand(shape, dtype=dtype)
    num = _legacy_dim(shape, 0)
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
            f"{' '.join(map(str, shape))}"
        )
    width = shape[3]
    f = math.ceil(width / 2.0)
    center = (width - 1) / (2.0 * f)
    positions = torch.arange(width, dtype=torch.float64)
    weights_1d = 1 - torch.abs(positions / f - center)
    kernel = torch.outer(weights_1d, weights_1d).to(dtype)  # (kH, kW)
    return kernel.expand(shape).clone()


_FILLERS: dict[str, Callable[[caffe_pb2.FillerParameter, Shape, torch.dtype], torch.Tensor]] = {
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
        LayerSetupError: the filler type is unknown, or ``sparse`` is set on a filler
            other than gaussian (Caffe rejects that too).
    """
    kind = param.type
    try:
        filler = _FILLERS[kind]
    except KeyError:
        raise LayerSetupError(
            f"unknown filler type '{kind}'; known types are {', '.join(filler_types())}"
        ) from None
    if param.sparse != -1 and kind not in _SPARSE_CAPABLE:
        raise LayerSetupError(f"the {kind} filler does not support 'sparse'")
    if _count(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    return filler(param, shape, dtype)
