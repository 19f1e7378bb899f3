"""Classic architectures from examples/models: shapes, parameter counts, round trips.

Each net is built once per module (a module-scoped fixture), given seeded random
weights, reshaped to batch 1 and batch 10, run forward, and saved and reloaded as a
.caffemodel. Only the small nets run forward at batch 10, to keep this file fast.
"""

from __future__ import annotations

import filecmp
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import brewnet

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"


@dataclass(frozen=True)
class Architecture:
    filename: str
    sample_shape: tuple[int, ...]  # input blob "data" without the batch axis
    output: str
    output_shape: tuple[int, ...]  # output blob without the batch axis
    parameters: int  # every stored blob value
    learnable: int  # without BatchNorm's statistics; the published figure
    small: bool  # cheap enough to run forward at batch 10


# Published parameter counts: AlexNet 60,965,224 (bvlc_alexnet), VGG-16
# 138,357,544, ResNet-50 25,557,032 (the authors' Caffe model, BatchNorm statistics
# excluded), GoogLeNet 6,998,552 (bvlc_googlenet), SqueezeNet v1.1 1,235,496. The
# FCN net is this repository's own; its count is worked out in its prototxt header.
ARCHITECTURES = [
    Architecture("alexnet.prototxt", (3, 227, 227), "prob", (1000,), 60_965_224, 60_965_224, False),
    Architecture("vgg16.prototxt", (3, 224, 224), "prob", (1000,), 138_357_544, 138_357_544, False),
    Architecture("resnet50.prototxt", (3, 224, 224), "prob", (1000,), 25_610_205, 25_557_032, False),
    Architecture("googlenet.prototxt", (3, 224, 224), "prob", (1000,), 6_998_552, 6_998_552, False),
    Architecture(
        "squeezenet_v1.1.prototxt", (3, 227, 227), "prob", (1000, 1, 1), 1_235_496, 1_235_496, True
    ),
    Architecture("fcn32s_small.prototxt", (3, 64, 64), "score", (21, 64, 64), 229_557, 229_557, True),
]  # fmt: skip


def randomize(net: brewnet.Net, seed: int) -> None:
    """Give every parameter seeded random values that keep activations finite.

    Weights get He-scaled normal values, biases small ones; BatchNorm gets positive
    variances and a scale factor of 1, Scale layers gamma near 1.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net._layers:
            for index, tensor in enumerate(layer.blobs):
                shape = tuple(tensor.shape)
                values = torch.randn(shape, generator=generator)
                if layer.type == "BatchNorm":
                    values = (values.abs() * 0.1 + 1.0) if index == 1 else values * 0.1
                    if index == 2:
                        values = torch.ones(shape)
                elif layer.type == "Scale" and index == 0:
                    values = 1.0 + 0.1 * values
                elif len(shape) >= 2:
                    values = values * math.sqrt(2.0 / math.prod(shape[1:]))
                else:
                    values = values * 0.01
                tensor.copy_(values)


def parameter_count(net: brewnet.Net, skip_type: str | None = None) -> int:
    return sum(
        tensor.numel()
        for layer in net._layers
        if layer.type != skip_type
        for tensor in layer.blobs
    )


@pytest.fixture(
    scope="module", params=ARCHITECTURES, ids=lambda a: a.filename.split(".prototxt")[0]
)
def built(request):
    arch = request.param
    net = brewnet.Net(str(MODELS / arch.filename), brewnet.TEST)
    randomize(net, seed=0)
    yield arch, net


def set_batch(net: brewnet.Net, arch: Architecture, batch: int) -> None:
    net.blobs["data"].reshape(batch, *arch.sample_shape)
    net.reshape()


def test_parameter_count(built):
    arch, net = built
    assert parameter_count(net) == arch.parameters
    assert parameter_count(net, skip_type="BatchNorm") == arch.learnable


def test_reshape_to_batch_1_and_10(built):
    arch, net = built
    for batch in (10, 1):
        set_batch(net, arch, batch)
        assert net.blobs["data"].shape == (batch, *arch.sample_shape)
        assert net.blobs[arch.output].shape == (batch, *arch.output_shape)


def test_forward_with_random_weights(built):
    arch, net = built
    batch = 10 if arch.small else 1
    set_batch(net, arch, batch)
    rng = np.random.default_rng(1)
    data = rng.standard_normal((batch, *arch.sample_shape)).astype(np.float32)
    output = net.forward(data=data)[arch.output]
    assert output.shape == (batch, *arch.output_shape)
    assert np.all(np.isfinite(output))
    assert float(output.std()) > 0
    if arch.output == "prob":
        sums = output.reshape(batch, -1).sum(axis=1)
        np.testing.assert_allclose(sums, 1.0, rtol=1e-4)
    if batch > 1:
        # Samples are independent, so sample 0 alone gives the same values.
        set_batch(net, arch, 1)
        single = net.forward(data=data[:1])[arch.output]
        np.testing.assert_allclose(single[0], output[0], rtol=1e-4, atol=1e-6)


def test_caffemodel_round_trip(built, tmp_path):
    arch, net = built
    set_batch(net, arch, 1)
    first, second = tmp_path / "first.caffemodel", tmp_path / "second.caffemodel"
    net.save(str(first))
    loaded = brewnet.Net(str(MODELS / arch.filename), brewnet.TEST)
    loaded.copy_from(str(first))
    for original, copy in zip(net._layers, loaded._layers):
        assert original.name == copy.name
        for index, (left, right) in enumerate(zip(original.blobs, copy.blobs)):
            assert torch.equal(left, right), (
                f"{original.name}[{index}] differs after reload"
            )
    loaded.save(str(second))
    assert filecmp.cmp(first, second, shallow=False)
    if arch.small:
        data = np.random.default_rng(2).standard_normal((1, *arch.sample_shape))
        expected = net.forward(data=data)[arch.output]
        assert np.array_equal(loaded.forward(data=data)[arch.output], expected)


def test_alexnet_grouped_convolutions():
    net = brewnet.Net(str(MODELS / "alexnet.prototxt"), brewnet.TEST)
    shapes = {
        name: tuple(net.params[name][0].data.shape)
        for name in ("conv2", "conv4", "conv5")
    }
    assert shapes == {
        "conv2": (256, 48, 5, 5),
        "conv4": (384, 192, 3, 3),
        "conv5": (256, 192, 3, 3),
    }
    assert net.blobs["norm1"].shape == (1, 96, 55, 55)
    assert net.blobs["pool5"].shape == (1, 256, 6, 6)


def test_googlenet_inception_widths():
    net = brewnet.Net(str(MODELS / "googlenet.prototxt"), brewnet.TEST)
    widths = {
        "3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832,
        "5a": 832, "5b": 1024,
    }  # fmt: skip
    for key, width in widths.items():
        assert net.blobs[f"inception_{key}/output"].shape[1] == width, key
    assert net.blobs["pool5/7x7_s1"].shape == (1, 1024, 1, 1)
