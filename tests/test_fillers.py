"""Tests of Caffe's weight fillers in brewnet.fillers.

Random fillers are checked by their statistics on large seeded draws (tolerances of
several standard errors); the bilinear filler by values worked out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import brewnet
from brewnet.errors import LayerSetupError
from brewnet.fillers import fill, filler_types
from brewnet.proto import caffe_pb2


def filler(**fields) -> caffe_pb2.FillerParameter:
    return caffe_pb2.FillerParameter(**fields)


@pytest.fixture(autouse=True)
def seeded():
    brewnet.set_random_seed(1701)


def test_filler_types():
    assert filler_types() == [
        "bilinear", "constant", "gaussian", "msra", "positive_unitball", "uniform",
        "xavier",
    ]


def test_default_filler_is_constant_zero():
    values = fill(caffe_pb2.FillerParameter(), (3, 4))
    assert values.dtype == torch.float32
    assert torch.all(values == 0)


def test_constant():
    values = fill(filler(type="constant", value=2.5), (2, 3, 4), dtype=torch.float64)
    assert values.dtype == torch.float64
    assert torch.all(values == 2.5)


def test_uniform_statistics():
    values = fill(filler(type="uniform", min=-2, max=4), (200, 500), torch.float64)
    assert values.min() >= -2
    assert values.max() <= 4
    # Mean 1, std 6 / sqrt(12) = 1.732; 1e5 draws give a standard error of 0.0055.
    assert abs(values.mean().item() - 1.0) < 0.03
    assert abs(values.std().item() - 6 / math.sqrt(12)) < 0.02


def test_uniform_defaults_to_unit_interval():
    values = fill(filler(type="uniform"), (1000,))
    assert values.min() >= 0
    assert values.max() <= 1


def test_gaussian_statistics():
    values = fill(filler(type="gaussian", mean=0.5, std=2.0), (400, 250), torch.float64)
    assert abs(values.mean().item() - 0.5) < 0.03
    assert abs(values.std().item() - 2.0) < 0.03


def test_gaussian_sparse_keeps_sparse_over_first_axis():
    values = fill(filler(type="gaussian", std=1.0, sparse=3), (10, 20000), torch.float64)
    # Each weight survives with probability sparse / shape[0] = 0.3.
    nonzero = (values != 0).double().mean().item()
    assert abs(nonzero - 0.3) < 0.01


def test_gaussian_sparse_zero_gives_zeros():
    values = fill(filler(type="gaussian", sparse=0), (4, 5))
    assert torch.all(values == 0)


@pytest.mark.parametrize(
    "shape, variance_norm, n",
    [
        ((64, 32, 3, 3), "FAN_IN", 32 * 9),
        ((64, 32, 3, 3), "FAN_OUT", 64 * 9),
        ((64, 32, 3, 3), "AVERAGE", (32 * 9 + 64 * 9) / 2),
        ((300, 200), "FAN_OUT", 300),
        ((500,), "FAN_OUT", 500),
        ((16, 8, 3, 3, 3), "AVERAGE", (8 * 27 + 16 * 27) / 2),
    ],
)
def test_xavier_bound_and_std(shape, variance_norm, n):
    norm = caffe_pb2.FillerParameter.VarianceNorm.Value(variance_norm)
    values = fill(filler(type="xavier", variance_norm=norm), shape, torch.float64)
    scale = math.sqrt(3.0 / n)
    assert values.abs().max().item() <= scale
    assert values.abs().max().item() > 0.98 * scale
    # Uniform on [-scale, scale] has std scale / sqrt(3) = sqrt(1 / n).
    assert abs(values.std().item() / math.sqrt(1.0 / n) - 1) < 0.05


@pytest.mark.parametrize(
    "shape, variance_norm, n",
    [
        ((64, 32, 3, 3), "FAN_IN", 32 * 9),
        ((64, 32, 3, 3), "FAN_OUT", 64 * 9),
        ((64, 32, 3, 3), "AVERAGE", (32 * 9 + 64 * 9) / 2),
    ],
)
def test_msra_std(shape, variance_norm, n):
    norm = caffe_pb2.FillerParameter.VarianceNorm.Value(variance_norm)
    values = fill(filler(type="msra", variance_norm=norm), shape, torch.float64)
    assert abs(values.mean().item()) < 0.01
    assert abs(values.std().item() / math.sqrt(2.0 / n) - 1) < 0.02


def test_positive_unitball_rows_sum_to_one():
    values = fill(filler(type="positive_unitball"), (5, 3, 2, 2), torch.float64)
    assert values.min() >= 0
    assert values.max() <= 1
    np.testing.assert_allclose(values.reshape(5, -1).sum(1).numpy(), np.ones(5))


def test_bilinear_kernel_4_by_hand():
    values = fill(filler(type="bilinear"), (2, 1, 4, 4), torch.float64)
    # f = ceil(4 / 2) = 2, centre (4 - 1) / (2 * 2) = 0.75, weight 1 - |x / f - 0.75|.
    row = np.array([0.25, 0.75, 0.75, 0.25])
    for index in range(2):
        np.testing.assert_allclose(values[index, 0].numpy(), np.outer(row, row))


def test_bilinear_odd_kernels_are_symmetric():
    values = fill(filler(type="bilinear"), (1, 1, 3, 3), torch.float64)
    # f = 2, centre (3 - 1) / 4 = 0.5, so the weights per axis are [0.5, 1, 0.5].
    # Caffe 1.0's centre formula gave the lopsided [0.25, 0.75, 0.75].
    row = np.array([0.5, 1.0, 0.5])
    np.testing.assert_allclose(values[0, 0].numpy(), np.outer(row, row))
    values = fill(filler(type="bilinear"), (1, 1, 5, 5), torch.float64)
    row = np.array([1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(values[0, 0].numpy(), np.outer(row, row))


def test_empty_blob_fills_without_error():
    assert fill(filler(type="gaussian"), (0, 3)).shape == (0, 3)


ERROR_CASES = [
    (filler(type="orthogonal"), (2, 2), "unknown filler type 'orthogonal'; known types are"),
    (filler(type="bilinear"), (2, 3, 3), "needs a 4-axis blob with square kernels, got shape 2 3 3"),
    (filler(type="bilinear"), (1, 1, 3, 4), "got shape 1 1 3 4"),
    (filler(type="constant", sparse=2), (4, 4), "the constant filler does not support 'sparse'"),
    (filler(type="xavier", sparse=2), (4, 4), "the xavier filler does not support 'sparse'"),
    (filler(type="gaussian", sparse=-2), (4, 4), "sparse must be -1 .* or at least 0, got -2"),
    (filler(type="gaussian", sparse=5), (4, 4), r"sparse 5 exceeds the blob's first axis \(4\)"),
    (filler(type="gaussian", sparse=1), (), "needs a blob with axes"),
    (filler(type="gaussian", std=0), (4, 4), "needs a positive std, got 0"),
    (filler(type="uniform", min=1, max=0), (4, 4), "needs min <= max, got min 1 and max 0"),
]


@pytest.mark.parametrize("param, shape, message", ERROR_CASES)
def test_filler_errors(param, shape, message):
    with pytest.raises(LayerSetupError, match=message):
        fill(param, shape)
