"""Tests for Caffe's loss-weight rules, each with the loss worked out by hand.

The rules: a layer of the loss kind weighs its first top 1 and its other tops 0; any
other layer weighs its tops 0; ``loss_weight`` (one per top) overrides that on any
layer that can backpropagate; the net loss is the sum of ``weight * sum(top)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import brewnet
from brewnet.errors import NetDefinitionError
from brewnet.proto import caffe_pb2


def input_layers(**shapes: tuple[int, ...]) -> str:
    text = ""
    for name, shape in shapes.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += (
            f'layer {{ name: "{name}" type: "Input" top: "{name}" '
            f"input_param {{ shape {{ {dims} }} }} }}\n"
        )
    return text


def inner_product(name, bottom, top, num_output, fields=""):
    return (
        f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" '
        f"inner_product_param {{ num_output: {num_output} bias_term: false "
        f'weight_filler {{ type: "constant" value: 1 }} }} {fields} }}\n'
    )


def make_net(text: str, dtype=torch.float32):
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    return brewnet.Net(param, brewnet.TRAIN, dtype=dtype)


def run_net(net, **values):
    for name, value in values.items():
        net.blobs[name].data[...] = np.asarray(value)
    net.forward()
    net.backward()
    return net


X = [[1, 2], [3, -1]]
CASE_A_X = [[1, 2, 0.5], [-1, 0, 3]]
CASE_A_Y = [0, 2]
CASE_A_LOSS = 0.765126348
CASE_A_PROB = np.array(
    [[0.231223896, 0.628531694, 0.14024438], [0.017147826, 0.0466126204, 0.936239541]]
)
CASE_E_A = [[1, 2, 3], [4, 5, 6]]
CASE_E_B = [[1, 0, 3], [0, 5, 9]]
CASE_E_GRAD = np.array([[0, 1, 0], [2, 0, -1.5]])  # (a - b) / 2; the loss is 7.25


def euclidean_net(fields=""):
    return make_net(
        "force_backward: true\n"
        + input_layers(a=(2, 3), b=(2, 3))
        + f'layer {{ name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" '
        f'top: "loss" {fields} }}'
    )


# ============================================================================= defaults
def test_loss_layer_weighs_first_top_one():
    net = make_net(
        input_layers(x=(2, 3), y=(2,))
        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" '
        'top: "loss" top: "prob" }'
    )
    assert net.layer_loss_weights("loss") == [1.0, 0.0]
    assert net.blob_loss_weights["loss"] == 1.0
    assert net.blob_loss_weights["prob"] == 0.0
    run_net(net, x=CASE_A_X, y=CASE_A_Y)
    # sum(prob) = 2 would show up in the loss if prob weighed anything.
    assert net.loss == pytest.approx(CASE_A_LOSS, rel=1e-5)


def test_other_layers_weigh_zero():
    net = make_net(input_layers(x=(2, 2)) + inner_product("ip", "x", "h", 2))
    assert net.layer_loss_weights("ip") == [0.0]
    run_net(net, x=X)
    assert float(net.blobs["h"].data.sum()) == 10.0
    assert net.loss == 0.0


def test_spec_examples_agree():
    # The specification's SoftmaxWithLoss without and with `loss_weight: 1`.
    results = []
    for fields in ("", "loss_weight: 1"):
        net = make_net(
            "force_backward: true\n"
            + input_layers(pred=(2, 3), label=(2,))
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pred" '
            f'bottom: "label" top: "loss" {fields} }}'
        )
        run_net(net, pred=CASE_A_X, label=CASE_A_Y)
        results.append((net.loss, net.blobs["pred"].diff.copy()))
    (loss_default, grad_default), (loss_explicit, grad_explicit) = results
    assert loss_default == pytest.approx(CASE_A_LOSS, rel=1e-5)
    assert loss_default == loss_explicit
    np.testing.assert_array_equal(grad_default, grad_explicit)
    onehot = np.array([[1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(grad_default, (CASE_A_PROB - onehot) / 2, rtol=1e-5)


# ============================================================================= explicit
def test_weighted_inner_product_output():
    # loss = 2 * sum(h) with h = x W^T, W all ones: h = [[3, 3], [2, 2]], sum 10.
    net = make_net(
        "force_backward: true\n"
        + input_layers(x=(2, 2))
        + inner_product("ip", "x", "h", 2, "loss_weight: 2")
    )
    run_net(net, x=X)
    assert net.loss == pytest.approx(20.0)
    np.testing.assert_allclose(net.blobs["h"].diff, np.full((2, 2), 2.0))
    # dL/dW[o, i] = 2 * sum_n x[n, i] = 2 * [4, 1] for every output o.
    np.testing.assert_allclose(net.params["ip"][0].diff, [[8, 2], [8, 2]])
    # dL/dx[n, i] = 2 * sum_o W[o, i] = 4.
    np.testing.assert_allclose(net.blobs["x"].diff, np.full((2, 2), 4.0))


def test_relu_activation_penalty():
    # x = [[1, 2], [3, -1]], W = [[1, 1], [1, -1]]: h = [[3, -1], [2, 4]],
    # r = relu(h) = [[3, 0], [2, 4]], t = [[1, 0], [0, 1]].
    # loss = 0.25 * sum(r) + 2 * |r - t|^2 / (2 * 2) = 0.25 * 9 + 2 * 17 / 4 = 10.75.
    net = make_net(
        "force_backward: true\n"
        + input_layers(x=(2, 2), t=(2, 2))
        + inner_product("ip", "x", "h", 2)
        + 'layer { name: "relu" type: "ReLU" bottom: "h" top: "r" loss_weight: 0.25 }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "r" bottom: "t" '
        'top: "loss" '
        "loss_weight: 2 }"
    )
    net.params["ip"][0].data[...] = [[1, 1], [1, -1]]
    run_net(net, x=X, t=[[1, 0], [0, 1]])
    assert net.loss == pytest.approx(10.75, rel=1e-6)
    # dL/dr = 0.25 at every entry plus 2 * (r - t) / 2 from the Euclidean loss.
    np.testing.assert_allclose(net.blobs["r"].diff, [[2.25, 0.25], [2.25, 3.25]])
    # The ReLU passes it where h > 0.
    np.testing.assert_allclose(net.blobs["h"].diff, [[2.25, 0], [2.25, 3.25]])
    np.testing.assert_allclose(net.params["ip"][0].diff, [[9, 2.25], [9.75, -3.25]])
    np.testing.assert_allclose(net.blobs["x"].diff, [[2.25, 2.25], [5.5, -1.0]])


def test_weighted_prob_top_adds_its_sum():
    net = make_net(
        input_layers(x=(2, 3), y=(2,))
        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" '
        'top: "loss" top: "prob" loss_weight: 1 loss_weight: 0.5 }'
    )
    run_net(net, x=CASE_A_X, y=CASE_A_Y)
    # Each row of prob sums to 1, so 0.5 * sum(prob) = 1.
    assert net.loss == pytest.approx(CASE_A_LOSS + 1.0, rel=1e-5)


@pytest.mark.parametrize(
    "tops, weights",
    [
        ('top: "loss"', "loss_weight: 1 loss_weight: 0"),
        ('top: "loss" top: "prob"', "loss_weight: 1"),
        ('top: "loss" top: "prob"', "loss_weight: 1 loss_weight: 0 loss_weight: 0"),
    ],
)
def test_wrong_loss_weight_count(tops, weights):
    text = input_layers(x=(2, 3), y=(2,)) + (
        'layer { name: "cls" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" '
        f"{tops} {weights} }}"
    )
    with pytest.raises(NetDefinitionError) as error:
        make_net(text)
    message = str(error.value)
    assert "layer 'cls' (type SoftmaxWithLoss)" in message
    assert "loss_weight" in message
    assert "one loss_weight per top" in message


def test_several_losses_with_weights():
    # 2 * Euclidean(a, b) + 0.5 * SoftmaxWithLoss(x, y) = 2 * 7.25 + 0.5 * 0.765126.
    net = make_net(
        "force_backward: true\n"
        + input_layers(a=(2, 3), b=(2, 3), x=(2, 3), y=(2,))
        + 'layer { name: "fit" type: "EuclideanLoss" bottom: "a" bottom: "b" '
        'top: "fit" loss_weight: 2 }\n'
        'layer { name: "cls" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" '
        'top: "cls" loss_weight: 0.5 }'
    )
    run_net(net, a=CASE_E_A, b=CASE_E_B, x=CASE_A_X, y=CASE_A_Y)
    assert net.loss == pytest.approx(2 * 7.25 + 0.5 * CASE_A_LOSS, rel=1e-6)
    assert float(net.blobs["fit"].data) == pytest.approx(7.25)
    np.testing.assert_allclose(net.blobs["a"].diff, 2 * CASE_E_GRAD, rtol=1e-6)
    onehot = np.array([[1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(
        net.blobs["x"].diff, 0.5 * (CASE_A_PROB - onehot) / 2, rtol=1e-5, atol=1e-8
    )


def test_loss_weight_zero_computes_without_gradient():
    net = make_net(
        input_layers(x=(2, 2), t=(2, 2))
        + inner_product("ip", "x", "h", 2)
        + 'layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" '
        'top: "loss" loss_weight: 0 }'
    )
    assert net.layer_loss_weights("loss") == [0.0]
    run_net(net, x=X, t=[[0, 0], [1, 1]])
    # h = [[3, 3], [2, 2]], so the layer still reports (9 + 9 + 1 + 1) / 4 = 5.
    assert float(net.blobs["loss"].data) == pytest.approx(5.0)
    assert net.loss == 0.0
    assert not net._steps[-1].need_backward
    np.testing.assert_array_equal(net.params["ip"][0].diff, np.zeros((2, 2)))


def test_negative_loss_weight():
    net = run_net(euclidean_net("loss_weight: -1"), a=CASE_E_A, b=CASE_E_B)
    assert net.loss == pytest.approx(-7.25)
    assert float(net.blobs["loss"].data) == pytest.approx(7.25)
    np.testing.assert_allclose(net.blobs["a"].diff, -CASE_E_GRAD, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["b"].diff, CASE_E_GRAD, rtol=1e-6)


def test_accuracy_weight_rejected():
    text = input_layers(x=(2, 3), y=(2,)) + (
        'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" '
        "loss_weight: 1 }"
    )
    with pytest.raises(NetDefinitionError) as error:
        make_net(text)
    message = str(error.value)
    assert "layer 'acc' (type Accuracy)" in message
    assert "cannot backpropagate" in message


def test_accuracy_zero_weight_accepted():
    net = make_net(
        input_layers(x=(2, 3), y=(2,))
        + 'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" '
        "loss_weight: 0 }"
    )
    run_net(net, x=CASE_A_X, y=CASE_A_Y)
    # Sample 0 scores class 1 highest against label 0; sample 1 is right.
    assert float(net.blobs["acc"].data) == 0.5
    assert net.loss == 0.0


# ================================================================================= nets
def classify_reconstruct(w1, w2):
    """Run enc -> (cls -> SoftmaxWithLoss, dec -> EuclideanLoss against x).

    With x = [1, 2] and the weights below: code = 3, score = [3, 0], recon = [3, 3].
    """
    net = make_net(
        "force_backward: true\n"
        + input_layers(x=(1, 2), y=(1,))
        + inner_product("enc", "x", "code", 1)
        + inner_product("cls", "code", "score", 2)
        + inner_product("dec", "code", "recon", 2)
        + 'layer { name: "cls_loss" type: "SoftmaxWithLoss" bottom: "score" '
        f'bottom: "y" top: "cls_loss" loss_weight: {w1} }}\n'
        'layer { name: "rec_loss" type: "EuclideanLoss" bottom: "recon" bottom: "x" '
        f'top: "rec_loss" loss_weight: {w2} }}'
    )
    net.params["cls"][0].data[...] = [[1], [0]]
    return run_net(net, x=[[1, 2]], y=[0])


def test_classify_reconstruct_by_hand():
    net = classify_reconstruct(0.3, 1.5)
    cls_loss = math.log1p(math.exp(-3))  # -log(e^3 / (e^3 + 1))
    rec_loss = 2.5  # |[3, 3] - [1, 2]|^2 / 2
    assert float(net.blobs["cls_loss"].data) == pytest.approx(cls_loss, rel=1e-6)
    assert float(net.blobs["rec_loss"].data) == pytest.approx(rec_loss, rel=1e-6)
    assert net.loss == pytest.approx(0.3 * cls_loss + 1.5 * rec_loss, rel=1e-6)
    p1 = 1 / (1 + math.exp(3))
    d_score = 0.3 * np.array([-p1, p1])
    d_recon = 1.5 * np.array([2.0, 1.0])
    np.testing.assert_allclose(
        net.params["cls"][0].diff, 3 * d_score[:, None], rtol=1e-5
    )
    np.testing.assert_allclose(
        net.params["dec"][0].diff, 3 * d_recon[:, None], rtol=1e-6
    )
    d_code = d_score[0] + d_recon.sum()
    np.testing.assert_allclose(
        net.params["enc"][0].diff, [[d_code, 2 * d_code]], rtol=1e-5
    )


def test_scaling_weight_scales_its_gradients():
    base = classify_reconstruct(0.3, 1.5)
    scaled = classify_reconstruct(0.6, 1.5)
    only_cls = classify_reconstruct(0.3, 0)
    assert scaled.loss == pytest.approx(
        base.loss + float(base.blobs["cls_loss"].data) * 0.3, rel=1e-6
    )
    # cls is reached only by the classification loss: its gradient doubles.
    np.testing.assert_allclose(
        scaled.params["cls"][0].diff, 2 * base.params["cls"][0].diff, rtol=1e-6
    )
    # dec is reached only by the reconstruction loss: unchanged.
    np.testing.assert_array_equal(
        scaled.params["dec"][0].diff, base.params["dec"][0].diff
    )
    # enc is reached by both: its classification part doubles.
    np.testing.assert_allclose(
        scaled.params["enc"][0].diff,
        base.params["enc"][0].diff + only_cls.params["enc"][0].diff,
        rtol=1e-6,
    )


def test_shared_weights_two_weighted_losses():
    # Two InnerProducts share w = [0.5, 0.5]; each prediction is [1.5, 1.0] against
    # t = [1, 0], so each Euclidean loss is (0.25 + 1) / 4 = 0.3125 and its weight
    # gradient is ((0.5 * [1, 2] + 1.0 * [3, -1]) / 2 = [1.75, 0].
    fields = 'param { name: "w" }'
    text = (
        input_layers(x=(2, 2), t=(2, 1))
        + inner_product("ip1", "x", "p1", 1, fields)
        + inner_product("ip2", "x", "p2", 1, fields)
        + 'layer { name: "l1" type: "EuclideanLoss" bottom: "p1" bottom: "t" '
        'top: "l1" }\n'
        'layer { name: "l2" type: "EuclideanLoss" bottom: "p2" bottom: "t" top: "l2" '
        "loss_weight: 2 }"
    )
    net = make_net(text)
    net.params["ip1"][0].data[...] = [[0.5, 0.5]]
    run_net(net, x=X, t=[[1], [0]])
    assert float(net.blobs["l1"].data) == pytest.approx(0.3125)
    assert net.loss == pytest.approx(0.9375)
    np.testing.assert_allclose(
        net.params["ip1"][0].diff, [[5.25, 0]], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        net.params["ip2"][0].diff, [[5.25, 0]], rtol=1e-6, atol=1e-7
    )


def test_weighted_top_also_consumed():
    # h = x W^T = [[3, 3], [2, 2]] with weight 0.5, then EuclideanLoss(h, t):
    # loss = 0.5 * 10 + 20 / 4 = 10; dL/dh = 0.5 + (h - t) / 2 = [[2, 2], [1, 1]].
    net = make_net(
        "force_backward: true\n"
        + input_layers(x=(2, 2), t=(2, 2))
        + inner_product("ip", "x", "h", 2, "loss_weight: 0.5")
        + 'layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" '
        'top: "loss" }'
    )
    run_net(net, x=X, t=[[0, 0], [1, 1]])
    assert net.loss == pytest.approx(10.0)
    np.testing.assert_allclose(net.blobs["h"].diff, [[2, 2], [1, 1]])
    np.testing.assert_allclose(net.blobs["x"].diff, [[4, 4], [2, 2]])
    np.testing.assert_allclose(net.params["ip"][0].diff, [[5, 3], [5, 3]])


def test_consumed_loss_top_keeps_its_weight():
    # l = EuclideanLoss(a, b) = 7.25 (weight 1) feeds q = 2 l (weight 1):
    # loss = 3 l = 21.75, dL/dl = 1 + 2 = 3, dL/da = 3 (a - b) / 2.
    net = make_net(
        "force_backward: true\n"
        + input_layers(a=(2, 3), b=(2, 3))
        + 'layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" '
        'top: "l" }\n'
        'layer { name: "double" type: "Power" bottom: "l" top: "q" '
        "power_param { scale: 2 } loss_weight: 1 }"
    )
    losses = []
    for _ in range(3):
        run_net(net, a=CASE_E_A, b=CASE_E_B)
        losses.append(net.loss)
        assert float(net.blobs["l"].data) == pytest.approx(7.25)
        assert float(net.blobs["l"].diff) == pytest.approx(3.0)
        np.testing.assert_allclose(net.blobs["a"].diff, 3 * CASE_E_GRAD, rtol=1e-6)
    assert losses == [pytest.approx(21.75)] * 3
    assert net.forward_backward() == pytest.approx(21.75)
    assert net.forward_backward() == pytest.approx(21.75)
