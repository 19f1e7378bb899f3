"""Tests of the RNN, LSTM and LSTMUnit layers against Caffe's values and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from reference_case import REFERENCE, assert_close, run_case

import brewnet
from brewnet.errors import LayerSetupError
from brewnet.layers import layer_class, layer_type_list
from brewnet.layers.recurrent import lstm, lstm_unit, rnn
from brewnet.proto import caffe_pb2

F64 = torch.float64
LN3 = math.log(3.0)  # sigmoid(LN3) = 0.75, sigmoid(-LN3) = 0.25


def tensor(values, grad=False):
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def random(*shape, grad=True):
    return torch.randn(*shape, dtype=F64).mul_(0.5).requires_grad_(grad)


def make_layer(kind, bottom_shapes, num_output=3, expose_hidden=False, num_tops=None):
    """Build and set up a float64 RNN or LSTM layer outside a net."""
    param = caffe_pb2.LayerParameter(name="L", type=kind)
    recurrent = param.recurrent_param
    recurrent.num_output = num_output
    recurrent.expose_hidden = expose_hidden
    for filler in (recurrent.weight_filler, recurrent.bias_filler):
        filler.type = "uniform"
        filler.min, filler.max = -0.5, 0.5
    layer = layer_class(kind)(param, dtype=F64)
    if num_tops is None:
        num_tops = 1 + (len(layer.state_bottom_names) if expose_hidden else 0)
    layer.check_blob_counts(len(bottom_shapes), num_tops)
    layer.setup(bottom_shapes)
    layer.reshape(bottom_shapes)
    return layer


def build_net(text, dtype=torch.float32):
    return brewnet.Net(
        text_format.Parse(text, caffe_pb2.NetParameter()), brewnet.TRAIN, dtype=dtype
    )


def dims(shape):
    return " ".join(f"dim: {d}" for d in shape)


def inputs_text(x_shape, cont_shape, extra=""):
    x_layer = (
        'layer { name: "x" type: "Input" top: "x" input_param { shape { %s } } }\n'
    )
    cont_layer = 'layer { name: "cont" type: "Input" top: "cont" input_param { shape { %s } } }\n'
    return x_layer % dims(x_shape) + cont_layer % dims(cont_shape) + extra


# ================================================================ Caffe's references
@pytest.mark.parametrize("case", ["lstm_cont", "rnn_cont"])
def test_reference_case(case):
    # The reference nets square the output with a Power layer.
    if "Power" not in layer_type_list():
        pytest.skip("the Power layer is not registered yet")
    run_case("layers", case)


@pytest.mark.parametrize("case, kind", [("lstm_cont", "LSTM"), ("rnn_cont", "RNN")])
def test_reference_weights_load(case, kind):
    # The recurrent layer alone, with the weights file Caffe wrote, and the diff that
    # the reference net's loss sends into y (1.3 + y) set by hand.
    folder = REFERENCE / "layers" / case
    data = np.load(folder / "data.npz")
    net = build_net(
        "force_backward: true\n"
        + inputs_text((3, 2, 4), (3, 2))
        + f'layer {{ name: "L" type: "{kind}" bottom: "x" bottom: "cont" top: "y" '
        f"loss_weight: 1.3 recurrent_param {{ num_output: 5 }} }}"
    )
    net.copy_from(folder / "weights.caffemodel")
    for index, param in enumerate(net.params["L"]):
        np.testing.assert_array_equal(param.data, data[f"param/L/{index}"])
    net.blobs["x"].data[...] = data["input/x"]
    net.blobs["cont"].data[...] = data["input/cont"]
    net.forward()
    assert_close(net.blobs["y"].data, data["data/y"], f"{case}: y")
    net.backward(y=data["diff/y"])
    assert_close(net.blobs["x"].diff, data["diff/x"], f"{case}: diff of x")
    np.testing.assert_array_equal(net.blobs["cont"].diff, np.zeros((3, 2)))
    for index, param in enumerate(net.params["L"]):
        expected = data[f"param_diff/L/{index}"]
        assert_close(param.diff, expected, f"{case}: diff of param {index}")


@pytest.mark.parametrize("case, function", [("lstm_cont", lstm), ("rnn_cont", rnn)])
def test_reference_pure_function(case, function):
    data = np.load(REFERENCE / "layers" / case / "data.npz")
    x = tensor(data["input/x"], grad=True)
    cont = tensor(data["input/cont"])
    count = 3 if function is lstm else 5
    params = [tensor(data[f"param/L/{i}"], grad=True) for i in range(count)]
    y = function(x, cont, *params)[0]
    loss = 1.3 * y.sum() + 0.5 * (y * y).sum()
    loss.backward()
    assert_close(y.detach().numpy(), data["data/y"], "y")
    assert_close(loss.detach().numpy(), data["loss"], "loss")
    assert_close(x.grad.numpy(), data["diff/x"], "diff of x")
    for index, param in enumerate(params):
        assert_close(
            param.grad.numpy(), data[f"param_diff/L/{index}"], f"param {index}"
        )


# ======================================================================== by hand
def lstm_tiny_params():
    # Gate rows i, f, o, g: biases give i = 0.75, f = 0.25, o = 0.5 and only the
    # candidate g reads x and h.
    w_xc = tensor([[0.0], [0.0], [0.0], [1.0]], grad=True)
    b_c = tensor([LN3, -LN3, 0.0, 0.0], grad=True)
    w_hc = tensor([[0.0], [0.0], [0.0], [1.0]], grad=True)
    return w_xc, b_c, w_hc


def test_lstm_hand_worked():
    x = tensor([[[1.0]], [[0.5]]])
    cont = tensor([[0.0], [1.0]])
    h, h_last, c_last = lstm(x, cont, *lstm_tiny_params())
    # t=1: c1 = 0.75 tanh(1) = 0.571195617, h1 = 0.5 tanh(c1) = 0.258118402.
    # t=2: g2 = tanh(0.5 + h1) = 0.639967324, c2 = 0.25 c1 + 0.75 g2 = 0.622774398,
    #      h2 = 0.5 tanh(c2) = 0.276528385.
    assert h.shape == (2, 1, 1)
    assert h[0, 0, 0].item() == pytest.approx(0.258118401869521, abs=1e-12)
    assert h[1, 0, 0].item() == pytest.approx(0.27652838533432034, abs=1e-12)
    assert h_last.shape == (1, 1, 1)
    assert h_last.item() == pytest.approx(0.27652838533432034, abs=1e-12)
    assert c_last.item() == pytest.approx(0.6227743975754486, abs=1e-12)


def test_lstm_hand_worked_reset():
    x = tensor([[[1.0]], [[0.5]]])
    cont = tensor([[0.0], [0.0]])
    h, _, c_last = lstm(x, cont, *lstm_tiny_params())
    # cont = 0 at t=2 drops h1 and c1: g2 = tanh(0.5), c2 = 0.75 g2 = 0.346587868,
    # h2 = 0.5 tanh(c2) = 0.166673012.
    assert c_last.item() == pytest.approx(0.3465878679450073, abs=1e-12)
    assert h[1, 0, 0].item() == pytest.approx(0.1666730122653704, abs=1e-12)


def rnn_tiny_params():
    names = ("w_xh", "b_h", "w_hh", "w_ho", "b_o")
    values = ([[1.0]], [0.0], [[0.5]], [[2.0]], [0.1])
    return {name: tensor(value, grad=True) for name, value in zip(names, values)}


def test_rnn_hand_worked():
    x = tensor([[[1.0]], [[0.5]]])
    o, h_last = rnn(x, tensor([[0.0], [1.0]]), **rnn_tiny_params())
    # h1 = tanh(1) = 0.761594156, o1 = tanh(2 h1 + 0.1) = 0.925085386,
    # h2 = tanh(0.5 h1 + 0.5) = 0.706818409, o2 = tanh(2 h2 + 0.1) = 0.907582322.
    assert o[0, 0, 0].item() == pytest.approx(0.9250853864829044, abs=1e-12)
    assert o[1, 0, 0].item() == pytest.approx(0.9075823218256984, abs=1e-12)
    assert h_last.item() == pytest.approx(0.7068184091418056, abs=1e-12)


def test_rnn_hand_worked_reset():
    x = tensor([[[1.0]], [[0.5]]])
    o, h_last = rnn(x, tensor([[0.0], [0.0]]), **rnn_tiny_params())
    # h2 = tanh(0.5) = 0.462117157, o2 = tanh(2 h2 + 0.1) = 0.771585581.
    assert h_last.item() == pytest.approx(0.46211715726000974, abs=1e-12)
    assert o[1, 0, 0].item() == pytest.approx(0.771585581456574, abs=1e-12)


@pytest.mark.parametrize("cont_value", [1.0, 0.0])
def test_lstm_unit_hand_worked(cont_value):
    c_prev = tensor([[[2.0]]], grad=True)
    gates = tensor([[[LN3, -LN3, 0.0, 0.0]]], grad=True)  # i .75, f .25, o .5, g 0
    cell, hidden = lstm_unit(c_prev, gates, tensor([[cont_value]]))
    hidden.sum().backward()
    # c = cont * 0.25 * 2 + 0.75 * 0 and h = 0.5 tanh(c).
    expected_cell = 0.5 * cont_value
    assert cell.item() == pytest.approx(expected_cell, abs=1e-12)
    assert hidden.item() == pytest.approx(0.5 * math.tanh(expected_cell), abs=1e-12)
    # dh/dc_prev = o (1 - tanh(c)^2) cont f = 0.5 (1 - tanh(0.5)^2) 0.25 for cont 1.
    expected_c_grad = 0.09830596662074093 if cont_value else 0.0
    assert c_prev.grad.item() == pytest.approx(expected_c_grad, abs=1e-12)
    # dh/dg' = o (1 - tanh(c)^2) i (1 - g^2) = 0.294917900 for cont 1, 0.375 for 0.
    expected_g_grad = 0.2949178998622228 if cont_value else 0.5 * 0.75
    assert gates.grad[0, 0, 3].item() == pytest.approx(expected_g_grad, abs=1e-12)


def test_lstm_unit_layer_in_net():
    net = build_net(
        'layer { name: "in" type: "Input" top: "c" top: "g" top: "cont" input_param {'
        " shape { dim: 1 dim: 2 dim: 1 } shape { dim: 1 dim: 2 dim: 4 }"
        " shape { dim: 1 dim: 2 } } }\n"
        'layer { name: "u" type: "LSTMUnit" bottom: "c" bottom: "g" bottom: "cont"'
        ' top: "c_next" top: "h_next" loss_weight: 0 loss_weight: 1 }\n'
        "force_backward: true",
        dtype=F64,
    )
    net.blobs["c"].data[...] = [[[2.0], [2.0]]]
    net.blobs["g"].data[...] = [[[LN3, -LN3, 0.0, 0.0]] * 2]
    net.blobs["cont"].data[...] = [[1.0, 0.0]]
    net.forward()
    # Stream 0 continues: c = 0.25 * 2 = 0.5; stream 1 restarts: c = 0.
    np.testing.assert_allclose(net.blobs["c_next"].data, [[[0.5], [0.0]]], atol=1e-12)
    np.testing.assert_allclose(
        net.blobs["h_next"].data, [[[0.23105857863000487], [0.0]]], atol=1e-12
    )
    net.backward()
    # dh/dc_prev = o (1 - tanh(c)^2) cont f = 0.5 (1 - tanh(0.5)^2) 0.25 for cont 1.
    np.testing.assert_allclose(
        net.blobs["c"].diff, [[[0.09830596662074093], [0.0]]], atol=1e-12
    )
    np.testing.assert_array_equal(net.blobs["cont"].diff, np.zeros((1, 2)))


# ==================================================================== gradients
def test_lstm_unit_gradcheck():
    c_prev, gates = random(1, 3, 2), random(1, 3, 8)
    cont = tensor([[1.0, 0.0, 0.5]])
    assert torch.autograd.gradcheck(lambda c, g: lstm_unit(c, g, cont), (c_prev, gates))


def test_lstm_gradcheck():
    torch.manual_seed(0)
    steps, num, hidden = 3, 2, 2
    args = (
        random(steps, num, 2, 2),
        random(4 * hidden, 4),
        random(4 * hidden),
        random(4 * hidden, hidden),
    )
    states = (random(1, num, hidden), random(1, num, hidden))
    static = (random(num, 3), random(4 * hidden, 3))
    cont = tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.5]])

    def function(x, w_xc, b_c, w_hc, h0, c0, x_static, w_static):
        return lstm(
            x,
            cont,
            w_xc,
            b_c,
            w_hc,
            h0=h0,
            c0=c0,
            x_static=x_static,
            w_xc_static=w_static,
        )

    assert torch.autograd.gradcheck(function, args + states + static)


def test_rnn_gradcheck():
    torch.manual_seed(1)
    steps, num, hidden = 3, 2, 3
    args = (
        random(steps, num, 4),
        random(hidden, 4),
        random(hidden),
        random(hidden, hidden),
        random(hidden, hidden),
        random(hidden),
    )
    extra = (random(1, num, hidden), random(num, 2), random(hidden, 2))
    cont = tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.5]])

    def function(x, w_xh, b_h, w_hh, w_ho, b_o, h0, x_static, w_static):
        return rnn(
            x,
            cont,
            w_xh,
            b_h,
            w_hh,
            w_ho,
            b_o,
            h0=h0,
            x_static=x_static,
            w_xh_static=w_static,
        )

    assert torch.autograd.gradcheck(function, args + extra)


@pytest.mark.parametrize("kind, num_blobs", [("LSTM", 4), ("RNN", 6)])
def test_layer_gradcheck(kind, num_blobs):
    torch.manual_seed(2)
    shapes = [(3, 2, 2), (3, 2), (2, 3)]
    layer = make_layer(kind, shapes, num_output=2)
    assert len(layer.blobs) == num_blobs
    cont = tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    params = [blob.detach().clone().requires_grad_(True) for blob in layer.blobs]

    def function(x, x_static, *blobs):
        layer.reset_state()
        layer.blobs = list(blobs)
        return layer.forward([x, cont, x_static])[0]

    assert torch.autograd.gradcheck(function, (random(3, 2, 2), random(2, 3), *params))


def test_net_gradcheck_float64():
    torch.manual_seed(3)
    net = build_net(
        "force_backward: true\n"
        + inputs_text((3, 2, 3), (3, 2))
        + 'layer { name: "L" type: "LSTM" bottom: "x" bottom: "cont" top: "y" '
        'loss_weight: 1 recurrent_param { num_output: 2 weight_filler { type: "uniform" '
        'min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }',
        dtype=F64,
    )
    x = np.random.default_rng(0).normal(size=(3, 2, 3))
    cont = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    net.blobs["cont"].data[...] = cont
    net.blobs["x"].data[...] = x
    net.forward()
    net.backward()
    numeric = np.zeros_like(x)
    eps = 1e-6
    for index in np.ndindex(x.shape):
        for sign in (1, -1):
            shifted = x.copy()
            shifted[index] += sign * eps
            net.blobs["x"].data[...] = shifted
            net.forward()
            numeric[index] += sign * net.loss / (2 * eps)
    np.testing.assert_allclose(net.blobs["x"].diff, numeric, rtol=1e-6, atol=1e-8)


# ================================================================= sequence state
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_cont_zero_restarts_sequence(kind):
    torch.manual_seed(4)
    layer = make_layer(kind, [(4, 2, 3), (4, 2)])
    x = random(4, 2, 3, grad=False)
    cont = tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    full = layer.forward([x, cont])[0]
    fresh = make_layer(kind, [(2, 2, 3), (2, 2)])
    fresh.blobs = layer.blobs
    restarted = fresh.forward([x[2:], tensor([[0.0, 0.0], [1.0, 1.0]])])[0]
    # Stream 0 restarts at t=2 and matches a fresh sequence; stream 1 does not.
    torch.testing.assert_close(full[2:, 0], restarted[:, 0], rtol=0, atol=1e-12)
    assert not torch.allclose(full[2:, 1], restarted[:, 1])


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_to_next_forward(kind):
    torch.manual_seed(5)
    layer = make_layer(kind, [(2, 2, 3), (2, 2)])
    x = random(4, 2, 3, grad=False)
    first = tensor([[0.0, 0.0], [1.0, 1.0]])
    second = tensor([[1.0, 0.0], [1.0, 1.0]])
    layer.forward([x[:2], first])
    continued = layer.forward([x[2:], second])[0]
    long_layer = make_layer(kind, [(4, 2, 3), (4, 2)])
    long_layer.blobs = layer.blobs
    whole = long_layer.forward([x, torch.cat([first, second])])[0]
    torch.testing.assert_close(continued, whole[2:], rtol=0, atol=1e-12)
    layer.reset_state()
    restarted = layer.forward([x[2:], second])[0]
    assert not torch.allclose(restarted[:, 0], whole[2:, 0])


def test_first_forward_starts_from_zero():
    torch.manual_seed(6)
    layer = make_layer("RNN", [(2, 1, 3), (2, 1)])
    x = random(2, 1, 3, grad=False)
    all_ones = layer.forward([x, tensor([[1.0], [1.0]])])[0]
    layer.reset_state()
    zero_first = layer.forward([x, tensor([[0.0], [1.0]])])[0]
    torch.testing.assert_close(all_ones, zero_first, rtol=0, atol=0)


def test_state_resets_when_streams_change():
    torch.manual_seed(7)
    layer = make_layer("LSTM", [(2, 2, 3), (2, 2)])
    layer.forward([random(2, 2, 3, grad=False), tensor([[0.0, 0.0], [1.0, 1.0]])])
    x = random(2, 3, 3, grad=False)
    cont = tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    layer.reshape([(2, 3, 3), (2, 3)])
    expected = lstm(x, cont, *layer.blobs)[0]
    torch.testing.assert_close(layer.forward([x, cont])[0], expected, rtol=0, atol=0)


# ================================================================ expose_hidden
def test_lstm_expose_hidden_forward():
    torch.manual_seed(8)
    shapes = [(3, 2, 3), (3, 2), (1, 2, 4), (1, 2, 4)]
    layer = make_layer("LSTM", shapes, num_output=4, expose_hidden=True)
    assert layer.reshape(shapes) == [(3, 2, 4), (1, 2, 4), (1, 2, 4)]
    x, h0, c0 = random(3, 2, 3), random(1, 2, 4), random(1, 2, 4)
    cont = tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    h, h_last, c_last = layer.forward([x, cont, h0, c0])
    expected = lstm(x, cont, *layer.blobs, h0=h0, c0=c0)
    for actual, reference in zip((h, h_last, c_last), expected):
        torch.testing.assert_close(actual, reference, rtol=0, atol=0)
    torch.testing.assert_close(h_last[0], h[-1], rtol=0, atol=0)
    # The exposed initial state replaces the carried one: a second pass gives the same.
    again = layer.forward([x, cont, h0, c0])[0]
    torch.testing.assert_close(again, h, rtol=0, atol=0)


def test_rnn_expose_hidden_forward():
    torch.manual_seed(9)
    shapes = [(2, 2, 3), (2, 2), (1, 2, 3)]
    layer = make_layer("RNN", shapes, expose_hidden=True)
    x, h0 = random(2, 2, 3), random(1, 2, 3)
    cont = tensor([[1.0, 0.0], [1.0, 1.0]])
    o, h_last = layer.forward([x, cont, h0])
    expected_o, expected_h = rnn(x, cont, *layer.blobs, h0=h0)
    torch.testing.assert_close(o, expected_o, rtol=0, atol=0)
    torch.testing.assert_close(h_last, expected_h, rtol=0, atol=0)


def exposed_net_text(state_weight):
    states = (
        'layer { name: "s" type: "Input" top: "h0" top: "c0" input_param {'
        " shape { dim: 1 dim: 2 dim: 4 } } }\n"
    )
    return (
        "force_backward: true\n"
        + inputs_text((2, 2, 3), (2, 2), states)
        + 'layer { name: "L" type: "LSTM" bottom: "x" bottom: "cont" bottom: "h0" '
        f'bottom: "c0" top: "h" top: "hT" top: "cT" loss_weight: 1 '
        f"loss_weight: {state_weight} loss_weight: {state_weight} "
        "recurrent_param { num_output: 4 expose_hidden: true "
        'weight_filler { type: "uniform" min: -0.5 max: 0.5 } } }'
    )


def run_exposed_net(state_weight):
    torch.manual_seed(10)
    net = build_net(exposed_net_text(state_weight), dtype=F64)
    rng = np.random.default_rng(1)
    for name in ("x", "h0", "c0"):
        net.blobs[name].data[...] = rng.normal(size=net.blobs[name].shape)
    net.blobs["cont"].data[...] = [[1.0, 1.0], [1.0, 0.0]]
    net.forward()
    net.backward()
    return net


def test_expose_hidden_no_gradient_through_state():
    # Caffe shares only the data of the state bottoms and tops with its unrolled net:
    # h0 and c0 get no diff and a loss on hT or cT does not reach the parameters.
    plain = run_exposed_net(0)
    weighted = run_exposed_net(2)
    np.testing.assert_array_equal(weighted.blobs["h0"].diff, np.zeros((1, 2, 4)))
    np.testing.assert_array_equal(weighted.blobs["c0"].diff, np.zeros((1, 2, 4)))
    state_sum = weighted.blobs["hT"].data.sum() + weighted.blobs["cT"].data.sum()
    assert weighted.loss == pytest.approx(plain.loss + 2 * state_sum, abs=1e-12)
    for index in range(3):
        np.testing.assert_allclose(
            weighted.params["L"][index].diff, plain.params["L"][index].diff, atol=1e-12
        )
    np.testing.assert_allclose(
        weighted.blobs["x"].diff, plain.blobs["x"].diff, atol=1e-12
    )


# ======================================================================= x_static
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_x_static_acts_as_stream_bias(kind):
    torch.manual_seed(11)
    layer = make_layer(kind, [(3, 1, 2), (3, 1), (1, 5)])
    x, x_static = random(3, 1, 2, grad=False), random(1, 5, grad=False)
    cont = tensor([[0.0], [1.0], [1.0]])
    output = layer.forward([x, cont, x_static])[0]
    # With one stream, W_static x_static only shifts the input bias of every step.
    blobs = list(layer.blobs)
    static_weight = blobs.pop(2)
    blobs[1] = blobs[1] + static_weight @ x_static[0]
    expected = (lstm if kind == "LSTM" else rnn)(x, cont, *blobs)[0]
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kind, static, expected",
    [
        ("LSTM", False, [(12, 6), (12,), (12, 3)]),
        ("LSTM", True, [(12, 6), (12,), (12, 10), (12, 3)]),
        ("RNN", False, [(3, 6), (3,), (3, 3), (3, 3), (3,)]),
        ("RNN", True, [(3, 6), (3,), (3, 10), (3, 3), (3, 3), (3,)]),
    ],
)
def test_parameter_shapes(kind, static, expected):
    shapes = [(2, 4, 2, 3), (2, 4)] + ([(4, 2, 5)] if static else [])
    layer = make_layer(kind, shapes)
    assert [tuple(blob.shape) for blob in layer.blobs] == expected
    assert layer.reshape(shapes) == [(2, 4, 3)]


def test_default_fillers_are_zero():
    param = caffe_pb2.LayerParameter(name="L", type="LSTM")
    param.recurrent_param.num_output = 2
    layer = layer_class("LSTM")(param)
    layer.setup([(2, 1, 3), (2, 1)])
    assert all(not blob.any() for blob in layer.blobs)


# ========================================================================= errors
def expect_setup_error(kind, shapes, message, num_tops=None, **options):
    with pytest.raises(LayerSetupError) as info:
        make_layer(kind, shapes, num_tops=num_tops, **options)
    text = str(info.value)
    assert f"layer 'L' (type {kind})" in text
    assert message in text


def test_error_num_output_zero():
    expect_setup_error(
        "RNN", [(2, 1, 3), (2, 1)], "num_output must be positive", num_output=0
    )


@pytest.mark.parametrize(
    "kind, shapes, expose, message",
    [
        (
            "RNN",
            [(2, 1, 3)],
            False,
            "takes 2 bottoms (x, cont) or 3 (x, cont, x_static), but 1 is given",
        ),
        (
            "LSTM",
            [(2, 1, 3), (2, 1)],
            True,
            (
                "takes 4 bottoms (x, cont, h_0, c_0) or 5 (x, cont, x_static, h_0, "
                "c_0) because expose_hidden is set, but 2 are given"
            ),
        ),
    ],
)
def test_error_bottom_count(kind, shapes, expose, message):
    expect_setup_error(kind, shapes, message, num_tops=1, expose_hidden=expose)


def test_error_top_count_without_expose_hidden():
    expect_setup_error(
        "LSTM",
        [(2, 1, 3), (2, 1)],
        "takes 1 top (h), but 3 are given; set expose_hidden in recurrent_param",
        num_tops=3,
    )


def test_error_top_count_with_expose_hidden():
    expect_setup_error(
        "RNN",
        [(2, 1, 3), (2, 1), (1, 1, 3)],
        "takes 2 tops (o, h_T) because expose_hidden is set, but 1 is given",
        num_tops=1,
        expose_hidden=True,
    )


def test_error_x_axes():
    expect_setup_error(
        "RNN",
        [(2, 3), (2, 3)],
        "bottom x has shape 2 x 3, but it needs at least 3 axes",
    )


def test_error_cont_axes():
    expect_setup_error(
        "LSTM",
        [(2, 1, 3), (2, 1, 1)],
        "bottom cont has shape 2 x 1 x 1, but it needs exactly 2 axes",
    )


@pytest.mark.parametrize("cont_shape", [(3, 1), (2, 4)])
def test_error_cont_shape(cont_shape):
    expect_setup_error(
        "LSTM",
        [(2, 1, 3), cont_shape],
        f"bottom cont has shape {cont_shape[0]} x {cont_shape[1]}, but x is 2 x 1 x 3, "
        "so cont must be 2 x 1 (T x N)",
    )


@pytest.mark.parametrize("static_shape", [(2, 4), (4,)])
def test_error_x_static_shape(static_shape):
    shape_text = " x ".join(map(str, static_shape))
    expect_setup_error(
        "RNN",
        [(2, 1, 3), (2, 1), static_shape],
        f"bottom x_static has shape {shape_text}, but it must be N x ... with N = 1",
    )


@pytest.mark.parametrize("bad_index, name", [(2, "h_0"), (3, "c_0")])
def test_error_state_shape(bad_index, name):
    shapes = [(2, 1, 3), (2, 1), (1, 1, 3), (1, 1, 3)]
    shapes[bad_index] = (1, 2, 3)
    expect_setup_error(
        "LSTM",
        shapes,
        f"bottom {name} (bottom {bad_index}) has shape 1 x 2 x 3, but the hidden "
        "state is 1 x 1 x 3",
        expose_hidden=True,
    )


def test_error_feature_size_changes():
    layer = make_layer("LSTM", [(2, 1, 3), (2, 1), (1, 4)])
    with pytest.raises(
        LayerSetupError, match="bottom x has shape 2 x 1 x 5, 5 features per timestep"
    ):
        layer.reshape([(2, 1, 5), (2, 1), (1, 4)])
    with pytest.raises(
        LayerSetupError, match="bottom x_static has shape 1 x 6, 6 features per stream"
    ):
        layer.reshape([(2, 1, 3), (2, 1), (1, 6)])


def test_error_in_net_names_layer():
    net = build_net(
        inputs_text((2, 1, 3), (2, 1))
        + 'layer { name: "L" type: "LSTM" bottom: "x" bottom: "cont" top: "y" '
        "recurrent_param { num_output: 2 } }"
    )
    net.blobs["cont"].reshape(2, 2)
    with pytest.raises(
        LayerSetupError, match="layer 'L' \\(type LSTM\\): bottom cont has shape 2 x 2"
    ):
        net.reshape()


def expect_unit_error(shapes, message):
    param = caffe_pb2.LayerParameter(name="U", type="LSTMUnit")
    layer = layer_class("LSTMUnit")(param)
    with pytest.raises(LayerSetupError) as info:
        layer.setup(shapes)
    assert "layer 'U' (type LSTMUnit)" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "shapes, message",
    [
        (
            [(2, 3), (1, 2, 12), (1, 2)],
            "bottom c_prev (bottom 0) has shape 2 x 3, but it must be 1 x N x ... with 3 axes",
        ),
        (
            [(2, 2, 3), (2, 2, 12), (2, 2)],
            "bottom c_prev (bottom 0) has shape 2 x 2 x 3, but it must be 1 x N x ...",
        ),
        (
            [(1, 2, 3), (1, 2, 12), (1, 2, 1)],
            "bottom cont (bottom 2) has shape 1 x 2 x 1, but it must be 1 x N with 2 axes",
        ),
        (
            [(1, 2, 3), (1, 3, 12), (1, 2)],
            (
                "bottom gates (bottom 1) has shape 1 x 3 x 12, but c_prev is 1 x 2 x 3, "
                "so it must have N = 2"
            ),
        ),
        (
            [(1, 2, 3), (1, 2, 12), (1, 3)],
            "bottom cont (bottom 2) has shape 1 x 3, but c_prev is 1 x 2 x 3",
        ),
        (
            [(1, 2, 3), (1, 2, 9), (1, 2)],
            (
                "bottom gates has shape 1 x 2 x 9, but c_prev is 1 x 2 x 3, so gates "
                "must be 1 x 2 x 12"
            ),
        ),
    ],
)
def test_lstm_unit_shape_errors(shapes, message):
    expect_unit_error(shapes, message)


def test_lstm_unit_blob_counts():
    param = caffe_pb2.LayerParameter(name="U", type="LSTMUnit")
    layer = layer_class("LSTMUnit")(param)
    with pytest.raises(
        LayerSetupError, match="takes exactly 3 bottom blobs, but 2 are given"
    ):
        layer.check_blob_counts(2, 2)
    with pytest.raises(
        LayerSetupError, match="takes exactly 2 top blobs, but 1 is given"
    ):
        layer.check_blob_counts(3, 1)
