"""The DummyData layer: shapes, fillers, refilling rules and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import brewnet
from brewnet.errors import LayerSetupError, NetDefinitionError
from brewnet.io.prototxt import parse_text
from brewnet.proto import caffe_pb2


def dummy_net(params: str, tops: str = 'top: "a"', extra: str = "", **kwargs):
    text = (
        f"{extra}\n"
        f'layer {{ name: "d" type: "DummyData" {tops} '
        f"dummy_data_param {{ {params} }} }}\n"
    )
    return brewnet.Net(
        parse_text(text, caffe_pb2.NetParameter()), brewnet.TRAIN, **kwargs
    )


def test_default_filler_is_constant_zero():
    net = dummy_net("shape { dim: 2 dim: 3 }")
    outputs = net.forward()
    np.testing.assert_array_equal(outputs["a"], np.zeros((2, 3)))


def test_one_shape_for_every_top():
    net = dummy_net(
        'shape { dim: 2 } data_filler { type: "constant" value: 7 }',
        tops='top: "a" top: "b"',
    )
    outputs = net.forward()
    np.testing.assert_array_equal(outputs["a"], [7.0, 7.0])
    np.testing.assert_array_equal(outputs["b"], [7.0, 7.0])


def test_one_shape_and_filler_per_top():
    net = dummy_net(
        "shape { dim: 2 } shape { dim: 1 dim: 3 } "
        'data_filler { type: "constant" value: 2 } '
        'data_filler { type: "uniform" min: 5 max: 6 }',
        tops='top: "a" top: "b"',
    )
    outputs = net.forward()
    np.testing.assert_array_equal(outputs["a"], [2.0, 2.0])
    assert outputs["b"].shape == (1, 3)
    assert np.all((outputs["b"] >= 5) & (outputs["b"] <= 6))


def test_legacy_dimensions():
    net = dummy_net(
        "num: 2 channels: 3 channels: 1 height: 4 width: 5",
        tops='top: "a" top: "b"',
    )
    assert net.blobs["a"].shape == (2, 3, 4, 5)
    assert net.blobs["b"].shape == (2, 1, 4, 5)


def test_constant_top_is_filled_once():
    net = dummy_net('shape { dim: 3 } data_filler { type: "constant" value: 1.5 }')
    net.forward()
    net.blobs["a"].data[...] = [4.0, 5.0, 6.0]
    outputs = net.forward()
    # Caffe does not refill a constant top, so values written into it stay.
    np.testing.assert_array_equal(outputs["a"], [4.0, 5.0, 6.0])


def test_random_top_is_refilled_every_forward():
    torch.manual_seed(0)
    net = dummy_net('shape { dim: 50 } data_filler { type: "gaussian" std: 2 }')
    first = net.forward()["a"]
    second = net.forward()["a"]
    assert first.shape == (50,)
    assert not np.array_equal(first, second)
    assert 1.0 < float(np.std(np.concatenate([first, second]))) < 3.0


def test_dtype_follows_the_net():
    net = dummy_net("shape { dim: 2 }", dtype=torch.float64)
    assert net.forward()["a"].dtype == np.float64


@pytest.mark.parametrize(
    "params, tops, message",
    [
        (
            'shape { dim: 2 } data_filler { type: "constant" } data_filler { }',
            'top: "a" top: "b" top: "c"',
            "2 data_filler values for 3 tops",
        ),
        (
            "shape { dim: 2 } shape { dim: 3 }",
            'top: "a" top: "b" top: "c"',
            "2 shapes for 3 tops",
        ),
        ("", 'top: "a"', "0 shapes for 1 tops"),
        (
            "shape { dim: 2 } num: 1 channels: 1 height: 1 width: 1",
            'top: "a"',
            "gives both shape and the deprecated",
        ),
        (
            "num: 1 num: 2 channels: 1 height: 1 width: 1",
            'top: "a" top: "b" top: "c"',
            "2 'num' values for 3 tops",
        ),
        ("num: 1 height: 1 width: 1", 'top: "a"', "0 'channels' values for 1 tops"),
        (
            'shape { dim: 2 } data_filler { type: "nonsense" }',
            'top: "a"',
            "unknown data_filler type 'nonsense'",
        ),
        ("shape { dim: -1 }", 'top: "a"', "has a negative dimension"),
    ],
)
def test_parameter_errors(params, tops, message):
    with pytest.raises(LayerSetupError, match=message):
        dummy_net(params, tops=tops)


def test_bottom_is_an_error():
    text = (
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
        'layer { name: "d" type: "DummyData" bottom: "x" top: "a" '
        "dummy_data_param { shape { dim: 1 } } }\n"
    )
    with pytest.raises(LayerSetupError, match="exactly 0 bottom blobs"):
        brewnet.Net(parse_text(text, caffe_pb2.NetParameter()), brewnet.TRAIN)


def test_loss_weight_is_an_error():
    with pytest.raises(NetDefinitionError, match="cannot backpropagate"):
        dummy_net("shape { dim: 1 }", tops='top: "a" loss_weight: 1')
