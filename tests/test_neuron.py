"""Tests for brewnet/layers/neuron.py: element-wise layers against Caffe and by hand."""

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from reference_case import run_case

import brewnet
from brewnet.errors import LayerSetupError, NetDefinitionError
from brewnet.layers import neuron
from brewnet.proto import caffe_pb2

X5 = [-2.0, -0.5, 0.0, 0.5, 2.0]


def make_net(text, phase=brewnet.TRAIN, dtype=torch.float32):
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    return brewnet.Net(param, phase, dtype=dtype)


def one_layer_net(layer_text, shape=(5,), top="y", extra=""):
    """Return the text of a net: Input x of ``shape``, then ``layer_text``."""
    dims = " ".join(f"dim: {d}" for d in shape)
    return f"""
    {extra}
    layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}
    layer {{ name: "L" bottom: "x" top: "{top}" {layer_text} }}
    """


def run_forward(layer_text, values, phase=brewnet.TRAIN):
    values = np.asarray(values, dtype=np.float64)
    net = make_net(one_layer_net(layer_text, values.shape), phase, torch.float64)
    net.blobs["x"].data[...] = values
    net.forward()
    return net.blobs["y"].data.copy()


def input_gradient(layer_text, values, extra="force_backward: true"):
    """Return d(sum y)/dx through a net with the layer under a weight-1 loss."""
    values = np.asarray(values, dtype=np.float64)
    text = one_layer_net(layer_text + " loss_weight: 1", values.shape, extra=extra)
    net = make_net(text, dtype=torch.float64)
    net.blobs["x"].data[...] = values
    net.forward()
    net.backward()
    return net.blobs["x"].diff.copy()


def double(values, requires_grad=True):
    return torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)


# =================================================================== Caffe's values
NEURON_CASES = [
    "absval",
    "bnll",
    "clip",
    "elu",
    "exp_base",
    "log_base",
    "power",
    "prelu",
    "prelu_shared",
    "relu_leaky",
    "sigmoid",
    "swish",
    "tanh",
    "threshold",
]


@pytest.mark.parametrize("name", NEURON_CASES)
def test_reference_case(name):
    run_case("layers", name)


# =================================================================== forward by hand
def test_relu_forward_and_default_slope():
    leaky = run_forward('type: "ReLU" relu_param { negative_slope: 0.25 }', X5)
    np.testing.assert_allclose(leaky, [-0.5, -0.125, 0.0, 0.5, 2.0])
    plain = run_forward('type: "ReLU"', X5)
    np.testing.assert_allclose(plain, [0.0, 0.0, 0.0, 0.5, 2.0])


def test_relu_gradient_at_zero_is_slope():
    # Caffe: dy/dx = (x > 0) + negative_slope * (x <= 0), so x = 0 takes the slope.
    grad = input_gradient('type: "ReLU" relu_param { negative_slope: 0.25 }', X5)
    np.testing.assert_allclose(grad, [0.25, 0.25, 0.25, 1.0, 1.0])


def test_sigmoid_forward():
    y = run_forward('type: "Sigmoid"', X5)
    expected = [0.11920292202211755, 0.3775406687981454, 0.5, 0.6224593312018546,
                0.8807970779778823]
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_tanh_forward():
    y = run_forward('type: "TanH"', X5)
    expected = [-0.9640275800758169, -0.46211715726000974, 0.0, 0.46211715726000974,
                0.9640275800758169]
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_power_forward():
    # (1 + 3x)^2 at x = -2, -0.5, 0, 0.5, 2.
    y = run_forward('type: "Power" power_param { power: 2 scale: 3 shift: 1 }', X5)
    np.testing.assert_allclose(y, [25.0, 0.25, 1.0, 6.25, 49.0])


def test_power_defaults_are_identity():
    y = run_forward('type: "Power"', X5)
    np.testing.assert_allclose(y, X5)


def test_power_gradient_by_hand():
    # d/dx (1 + 3x)^2 = 6 (1 + 3x).
    grad = input_gradient('type: "Power" power_param { power: 2 scale: 3 shift: 1 }', X5)
    np.testing.assert_allclose(grad, [-30.0, -3.0, 6.0, 15.0, 42.0])


def test_power_zero_power_is_constant_one():
    y = run_forward('type: "Power" power_param { power: 0 scale: 3 shift: -2 }', X5)
    np.testing.assert_allclose(y, np.ones(5))
    grad = input_gradient('type: "Power" power_param { power: 0 shift: -2 }', X5)
    np.testing.assert_array_equal(grad, np.zeros(5))


def test_power_zero_scale_is_constant_shift_power():
    # With scale 0 the output is shift^power = 4^1.5 = 8 and the gradient is 0.
    layer = 'type: "Power" power_param { power: 1.5 scale: 0 shift: 4 }'
    np.testing.assert_allclose(run_forward(layer, X5), np.full(5, 8.0))
    np.testing.assert_array_equal(input_gradient(layer, X5), np.zeros(5))


def test_power_zero_scale_zero_shift_gradient_not_nan():
    # 0^0.5 is constant 0; the derivative of a constant is 0, not 0 * inf.
    layer = 'type: "Power" power_param { power: 0.5 scale: 0 shift: 0 }'
    np.testing.assert_array_equal(input_gradient(layer, X5), np.zeros(5))


def test_power_zero_shift_gradient_at_zero():
    # d/dx (2x)^3 = 24 x^2, which is 0 at x = 0 (Caffe's power * y / x is NaN).
    layer = 'type: "Power" power_param { power: 3 scale: 2 }'
    grad = input_gradient(layer, [0.0, 1.0])
    np.testing.assert_allclose(grad, [0.0, 24.0])


def test_absval_forward_and_gradient():
    np.testing.assert_allclose(run_forward('type: "AbsVal"', X5), [2, 0.5, 0, 0.5, 2])
    # sign(x), with sign(0) = 0 as in Caffe.
    grad = input_gradient('type: "AbsVal"', X5)
    np.testing.assert_allclose(grad, [-1.0, -1.0, 0.0, 1.0, 1.0])


def test_bnll_forward():
    expected = [0.1269280110429725, 0.4740769841801067, 0.6931471805599453,
                0.9740769841801067, 2.1269280110429727]
    np.testing.assert_allclose(run_forward('type: "BNLL"', X5), expected, rtol=1e-12)


def test_bnll_large_inputs_are_finite():
    y = run_forward('type: "BNLL"', [-100.0, 100.0])
    np.testing.assert_allclose(y, [math.log1p(math.exp(-100.0)), 100.0], rtol=1e-12)
    grad = input_gradient('type: "BNLL"', [-100.0, 100.0])
    np.testing.assert_allclose(grad, [math.exp(-100.0), 1.0], rtol=1e-12)


def test_elu_forward_and_gradient_at_zero():
    y = run_forward('type: "ELU" elu_param { alpha: 0.75 }', X5)
    # 0.75 (e^x - 1) for x <= 0.
    expected = [-0.6484985375725405, -0.29510200521552496, 0.0, 0.5, 2.0]
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    # Caffe: x <= 0 gives dy * (y + alpha), which is alpha at x = 0.
    grad = input_gradient('type: "ELU" elu_param { alpha: 0.75 }', [0.0, 1.0])
    np.testing.assert_allclose(grad, [0.75, 1.0])


def test_elu_default_alpha_is_one():
    y = run_forward('type: "ELU"', [-2.0])
    np.testing.assert_allclose(y, [math.exp(-2.0) - 1.0], rtol=1e-12)


def test_exp_forward_base_two():
    # 2^(0.1 + 0.5x).
    y = run_forward('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', X5)
    expected = [0.5358867312681466, 0.9012504626108302, 1.0717734625362931,
                1.2745606273192622, 2.1435469250725863]
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_exp_default_base_is_e():
    y = run_forward('type: "Exp"', X5)
    np.testing.assert_allclose(y, np.exp(X5), rtol=1e-12)


def test_exp_natural_base_with_shift():
    # e^(1 + 2x): the shift must use e as the base, not -1.
    y = run_forward('type: "Exp" exp_param { scale: 2 shift: 1 }', [0.0, 0.5])
    np.testing.assert_allclose(y, [math.e, math.e**2], rtol=1e-12)


def test_log_forward_base_ten():
    # log10(0.5 + 2x) at 0.25, 4.75, 49.75 is 0, 1, 2.
    layer = 'type: "Log" log_param { base: 10 scale: 2 shift: 0.5 }'
    y = run_forward(layer, [0.25, 4.75, 49.75])
    np.testing.assert_allclose(y, [0.0, 1.0, 2.0], atol=1e-6)


def test_log_default_base_is_e():
    y = run_forward('type: "Log"', [1.0, math.e])
    np.testing.assert_allclose(y, [0.0, 1.0], atol=1e-12)


def test_log_gradient_by_hand():
    # d/dx log10(0.5 + 2x) = 2 / ((0.5 + 2x) ln 10).
    layer = 'type: "Log" log_param { base: 10 scale: 2 shift: 0.5 }'
    grad = input_gradient(layer, [0.25, 4.75])
    expected = [2.0 / (1.0 * math.log(10.0)), 2.0 / (10.0 * math.log(10.0))]
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_swish_forward():
    y = run_forward('type: "Swish" swish_param { beta: 1.5 }', X5)
    expected = [-0.09485174635513356, -0.1604106504123035, 0.0, 0.3395893495876965,
                1.9051482536448667]
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_swish_default_beta_is_one():
    y = run_forward('type: "Swish"', [2.0])
    np.testing.assert_allclose(y, [2.0 * 0.8807970779778823], rtol=1e-12)


def test_clip_forward():
    y = run_forward('type: "Clip" clip_param { min: -0.5 max: 0.7 }', X5)
    np.testing.assert_allclose(y, [-0.5, -0.5, 0.0, 0.5, 0.7], rtol=1e-7)


def test_clip_gradient_passes_at_bounds():
    # Caffe: dx = dy * (min <= x <= max), both bounds included.
    layer = 'type: "Clip" clip_param { min: -0.5 max: 2 }'
    grad = input_gradient(layer, [-2.0, -0.5, 0.0, 2.0, 3.0])
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 1.0, 0.0])


def test_clip_min_above_max_gives_min():
    layer = 'type: "Clip" clip_param { min: 1 max: -1 }'
    np.testing.assert_array_equal(run_forward(layer, X5), np.ones(5))
    np.testing.assert_array_equal(input_gradient(layer, X5), np.zeros(5))


def test_threshold_forward_is_strict():
    y = run_forward('type: "Threshold" threshold_param { threshold: 0.5 }', X5)
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.0, 0.0, 1.0])
    default = run_forward('type: "Threshold"', X5)
    np.testing.assert_array_equal(default, [0.0, 0.0, 0.0, 1.0, 1.0])


def test_prelu_forward_per_channel():
    # Channel 0 has slope 0.25, channel 1 slope 0.5; x is (1, 2, 2).
    text = one_layer_net('type: "PReLU"', (1, 2, 2))
    net = make_net(text, dtype=torch.float64)
    net.params["L"][0].data[...] = [0.25, 0.5]
    net.blobs["x"].data[...] = [[[-2.0, 1.0], [-4.0, 3.0]]]
    net.forward()
    np.testing.assert_allclose(net.blobs["y"].data, [[[-0.5, 1.0], [-2.0, 3.0]]])


def test_prelu_default_filler_and_blob_shapes():
    net = make_net(one_layer_net('type: "PReLU"', (2, 3, 4)))
    assert net.params["L"][0].data.shape == (3,)
    np.testing.assert_array_equal(net.params["L"][0].data, np.full(3, 0.25))
    shared = make_net(
        one_layer_net('type: "PReLU" prelu_param { channel_shared: true }', (2, 3))
    )
    assert shared.params["L"][0].data.shape == ()
    assert float(shared.params["L"][0].data) == 0.25


def test_prelu_filler_is_used():
    layer = 'type: "PReLU" prelu_param { filler { type: "constant" value: 0.1 } }'
    net = make_net(one_layer_net(layer, (1, 2)))
    np.testing.assert_allclose(net.params["L"][0].data, [0.1, 0.1])


def test_prelu_gradients_by_hand():
    # Under loss sum(y): dx = 1 for x > 0 and slope for x <= 0;
    # dslope[c] = sum of x over the elements of channel c with x <= 0.
    text = one_layer_net('type: "PReLU" loss_weight: 1', (2, 2, 1), extra="force_backward: true")
    net = make_net(text, dtype=torch.float64)
    net.params["L"][0].data[...] = [0.25, 0.5]
    net.blobs["x"].data[...] = [[[-2.0], [0.0]], [[3.0], [-1.0]]]
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, [[[0.25], [0.5]], [[1.0], [0.5]]])
    np.testing.assert_allclose(net.params["L"][0].diff, [-2.0, -1.0])


# =================================================================== gradcheck
def _points(shape=(2, 3, 4), low=-2.0, high=2.0, avoid=(), seed=0):
    """Return float64 points in [low, high] at least 0.05 away from ``avoid``."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(shape, generator=generator, dtype=torch.float64)
    values = low + (high - low) * values
    for kink in avoid:
        close = (values - kink).abs() < 0.05
        values = torch.where(close, values + 0.1, values)
    return values.requires_grad_(True)


GRADCHECK_CASES = [
    ("relu", lambda x: neuron.relu(x), (0.0,)),
    ("relu_leaky", lambda x: neuron.relu(x, 0.1), (0.0,)),
    ("relu_negative_slope", lambda x: neuron.relu(x, -0.3), (0.0,)),
    ("sigmoid", neuron.sigmoid, ()),
    ("tanh", neuron.tanh, ()),
    ("absval", neuron.absval, (0.0,)),
    ("bnll", neuron.bnll, ()),
    ("elu", lambda x: neuron.elu(x, 0.7), (0.0,)),
    ("elu_default", neuron.elu, (0.0,)),
    ("exp", neuron.exp, ()),
    ("exp_base", lambda x: neuron.exp(x, 2.0, 0.5, 0.1), ()),
    ("exp_natural_shift", lambda x: neuron.exp(x, -1.0, 1.5, -0.3), ()),
    ("swish", neuron.swish, ()),
    ("swish_beta", lambda x: neuron.swish(x, 1.5), ()),
    ("clip", lambda x: neuron.clip(x, -0.5, 0.7), (-0.5, 0.7)),
    ("power_square", lambda x: neuron.power(x, 2.0, 0.8, 2.5), ()),
    ("power_identity_scaled", lambda x: neuron.power(x, 1.0, -1.5, 0.3), ()),
    ("power_zero_shift", lambda x: neuron.power(x, 3.0, 2.0, 0.0), ()),
]


@pytest.mark.parametrize("name,function,kinks", GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
def test_gradcheck(name, function, kinks):
    assert torch.autograd.gradcheck(function, (_points(avoid=kinks),))


@pytest.mark.parametrize("power,scale,shift", [(1.5, 0.8, 2.5), (-0.5, 2.0, 5.0), (0.5, 1.0, 3.0)])
def test_gradcheck_power_positive_base(power, scale, shift):
    # The base shift + scale * x stays positive for x in [-1, 1].
    x = _points(low=-1.0, high=1.0)
    assert torch.autograd.gradcheck(lambda t: neuron.power(t, power, scale, shift), (x,))


@pytest.mark.parametrize(
    "base,scale,shift,low,high",
    [(-1.0, 1.0, 0.0, 0.3, 3.0), (10.0, 2.0, 0.5, 0.0, 2.0), (2.0, -1.0, 5.0, -1.0, 1.0)],
)
def test_gradcheck_log(base, scale, shift, low, high):
    # shift + scale * x stays positive for x in [low, high].
    x = _points(low=low, high=high)
    assert torch.autograd.gradcheck(lambda t: neuron.log(t, base, scale, shift), (x,))


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 1)])
def test_gradcheck_prelu(shape):
    x = _points(shape, avoid=(0.0,))
    slope = double(np.linspace(0.1, 0.4, shape[1]))
    assert torch.autograd.gradcheck(neuron.prelu, (x, slope))
    shared = double(0.25)
    assert torch.autograd.gradcheck(neuron.prelu, (x, shared))


def test_gradcheck_dropout_fixed_mask():
    def dropped(x):
        torch.manual_seed(3)
        return neuron.dropout(x, 0.4, train=True)

    assert torch.autograd.gradcheck(dropped, (_points(),))


# =================================================================== Dropout
def dropout_net(ratio, phase, shape=(200, 500)):
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f"""
    force_backward: true
    layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}
    layer {{ name: "d" type: "Dropout" bottom: "x" top: "y" loss_weight: 1
             dropout_param {{ dropout_ratio: {ratio} }} }}
    """
    return make_net(text, phase, torch.float64)


def test_dropout_train_statistics_and_scale():
    torch.manual_seed(0)
    net = dropout_net(0.25, brewnet.TRAIN)
    net.blobs["x"].data[...] = 1.0
    net.forward()
    y = net.blobs["y"].data
    kept = y != 0
    # 100000 draws: the dropped fraction is 0.25 within about 5 standard deviations.
    assert abs(1.0 - kept.mean() - 0.25) < 0.007
    np.testing.assert_allclose(y[kept], 1.0 / 0.75, rtol=1e-12)
    net.backward()
    # The gradient goes through the same mask with the same scale.
    np.testing.assert_array_equal(net.blobs["x"].diff, y)


def test_dropout_masks_differ_between_passes():
    torch.manual_seed(0)
    net = dropout_net(0.5, brewnet.TRAIN, shape=(100,))
    net.blobs["x"].data[...] = 1.0
    first = net.forward()["y"]
    second = net.forward()["y"]
    assert not np.array_equal(first, second)


def test_dropout_default_ratio_is_half():
    torch.manual_seed(1)
    text = one_layer_net('type: "Dropout"', (100000,))
    net = make_net(text, dtype=torch.float64)
    net.blobs["x"].data[...] = 1.0
    net.forward()
    y = net.blobs["y"].data
    assert abs((y == 0).mean() - 0.5) < 0.008
    np.testing.assert_allclose(y[y != 0], 2.0)


def test_dropout_test_phase_is_identity():
    net = dropout_net(0.25, brewnet.TEST, shape=(2, 3))
    values = np.arange(6.0).reshape(2, 3) - 2.5
    net.blobs["x"].data[...] = values
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, values)
    net.backward()
    np.testing.assert_array_equal(net.blobs["x"].diff, np.ones((2, 3)))


def test_dropout_zero_ratio_keeps_everything():
    y = run_forward('type: "Dropout" dropout_param { dropout_ratio: 0 }', X5)
    np.testing.assert_array_equal(y, X5)


# =================================================================== in place
IN_PLACE_NET = """
force_backward: true
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "a" type: "Power" bottom: "x" top: "h" power_param {{ scale: 2 shift: 1 }} }}
layer {{ name: "p" bottom: "h" top: "{top}" {layer} }}
layer {{ name: "sq" type: "Power" bottom: "{top}" top: "z" power_param {{ power: 2 }}
         loss_weight: 0.5 }}
"""
X23 = np.array([[-1.2, -0.5, -0.2], [0.0, 0.3, 1.0]])


def in_place_pair(layer):
    """Return (in-place net, out-of-place net) after forward and backward on X23."""
    nets = []
    for top in ("h", "g"):
        net = make_net(IN_PLACE_NET.format(top=top, layer=layer), dtype=torch.float64)
        net.blobs["x"].data[...] = X23
        net.forward()
        net.backward()
        nets.append(net)
    return nets


def test_in_place_power_matches_out_of_place():
    layer = 'type: "Power" power_param { power: 3 shift: 0.5 }'
    in_place, out_of_place = in_place_pair(layer)
    np.testing.assert_allclose(in_place.blobs["x"].diff, out_of_place.blobs["x"].diff)
    np.testing.assert_allclose(in_place.blobs["h"].data, out_of_place.blobs["g"].data)
    # h = 2x + 1, g = (h + 0.5)^3, loss = 0.5 g^2, so dL/dx = 2 * g * 3 (h + 0.5)^2.
    h = 2 * X23 + 1
    expected = 2 * (h + 0.5) ** 3 * 3 * (h + 0.5) ** 2
    np.testing.assert_allclose(in_place.blobs["x"].diff, expected, rtol=1e-12)
    # The diff of an in-place blob is the gradient at its first writer's output.
    np.testing.assert_allclose(in_place.blobs["h"].diff, expected / 2, rtol=1e-12)


def test_in_place_relu_matches_out_of_place():
    layer = 'type: "ReLU" relu_param { negative_slope: 0.125 }'
    in_place, out_of_place = in_place_pair(layer)
    np.testing.assert_allclose(in_place.blobs["x"].diff, out_of_place.blobs["x"].diff)
    np.testing.assert_allclose(in_place.blobs["h"].data, out_of_place.blobs["g"].data)
    # h = 2x + 1 is [-1.4, 0, 0.6, 1, 1.6, 3]; g = relu(h), dL/dh = g * slope'(h).
    h = 2 * X23 + 1
    g = np.where(h > 0, h, 0.125 * h)
    expected = 2 * g * np.where(h > 0, 1.0, 0.125)
    np.testing.assert_allclose(in_place.blobs["x"].diff, expected, rtol=1e-12)


# =================================================================== Threshold backward
def test_threshold_backward_raises():
    text = one_layer_net('type: "Threshold" loss_weight: 1', extra="force_backward: true")
    net = make_net(text)
    net.forward()
    with pytest.raises(NetDefinitionError, match=r"layer 'L' \(type Threshold\) cannot backpropagate"):
        net.backward()


def test_threshold_backward_raises_in_training_step():
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 } } }
    layer { name: "s" type: "Bias" bottom: "x" top: "b" bias_param { axis: 0 num_axes: 0 } }
    layer { name: "t" type: "Threshold" bottom: "b" top: "y" loss_weight: 1 }
    """
    net = make_net(text)
    with pytest.raises(NetDefinitionError, match="Caffe defines no gradient"):
        net.forward_backward()


def test_threshold_without_gradient_need_runs_backward():
    # No force_backward, and the Input needs no gradient: backward skips the layer.
    net = make_net(one_layer_net('type: "Threshold" loss_weight: 1'))
    net.blobs["x"].data[...] = X5
    net.forward()
    net.backward()
    assert net.loss == 2.0


def test_threshold_with_propagate_down_false_runs_backward():
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 } } }
    layer { name: "s" type: "Bias" bottom: "x" top: "b" bias_param { axis: 0 num_axes: 0 } }
    layer { name: "t" type: "Threshold" bottom: "b" top: "y" loss_weight: 1
            propagate_down: false }
    """
    net = make_net(text)
    net.blobs["x"].data[...] = [-1.0, 0.5, 2.0]
    assert net.forward_backward() == 2.0


# =================================================================== errors
def test_dropout_ratio_one_rejected():
    text = one_layer_net('type: "Dropout" dropout_param { dropout_ratio: 1 }')
    with pytest.raises(LayerSetupError, match=r"layer 'L' \(type Dropout\): dropout_ratio is 1, but it must be in \[0, 1\)"):
        make_net(text)


def test_dropout_negative_ratio_rejected():
    text = one_layer_net('type: "Dropout" dropout_param { dropout_ratio: -0.1 }')
    with pytest.raises(LayerSetupError, match=r"dropout_ratio is -0.1"):
        make_net(text)


def test_absval_in_place_rejected():
    text = one_layer_net('type: "AbsVal"', top="x")
    with pytest.raises(LayerSetupError, match="AbsVal does not run in place"):
        make_net(text)


@pytest.mark.parametrize("kind", ["Exp", "Log"])
@pytest.mark.parametrize("base", ["0", "-2"])
def test_nonpositive_base_rejected(kind, base):
    field = kind.lower() + "_param"
    text = one_layer_net(f'type: "{kind}" {field} {{ base: {base} }}')
    with pytest.raises(LayerSetupError, match=f"base is {base}, but it must be positive, or -1 for base e"):
        make_net(text)


@pytest.mark.parametrize("kind", ["Exp", "Log"])
def test_infinite_base_rejected(kind):
    field = kind.lower() + "_param"
    text = one_layer_net(f'type: "{kind}" {field} {{ base: inf }}')
    with pytest.raises(LayerSetupError, match="base is infinite"):
        make_net(text)


def test_log_base_one_rejected():
    text = one_layer_net('type: "Log" log_param { base: 1 }')
    with pytest.raises(LayerSetupError, match="base is 1, whose logarithm is 0"):
        make_net(text)


def test_exp_base_one_is_constant():
    # 1^(anything) = 1; Caffe accepts base 1 for Exp.
    y = run_forward('type: "Exp" exp_param { base: 1 scale: 3 }', X5)
    np.testing.assert_allclose(y, np.ones(5))


def test_prelu_one_axis_rejected():
    with pytest.raises(LayerSetupError, match=r"bottom has shape \(5,\), but PReLU needs at least 2 axes"):
        make_net(one_layer_net('type: "PReLU"'))


def test_prelu_slope_count_mismatch_rejected():
    net = make_net(one_layer_net('type: "PReLU"', (2, 3)))
    net.params["L"][0].reshape(4)
    with pytest.raises(LayerSetupError, match="the slope blob has 4 values, but the bottom has 3 channels"):
        net.forward()


@pytest.mark.parametrize("fields,missing", [("min: 1", "max"), ("max: 1", "min"), ("", "min and max")])
def test_clip_missing_bound_rejected(fields, missing):
    text = one_layer_net(f'type: "Clip" clip_param {{ {fields} }}')
    with pytest.raises(LayerSetupError, match=f"clip_param is missing the required field {missing};"):
        make_net(text)


def test_neuron_layer_needs_one_bottom():
    text = """
    layer { name: "x" type: "Input" top: "x" top: "w" input_param { shape { dim: 2 } } }
    layer { name: "L" type: "ReLU" bottom: "x" bottom: "w" top: "y" }
    """
    with pytest.raises(LayerSetupError, match=r"takes exactly 1 bottom blob, but 2 are given"):
        make_net(text)
