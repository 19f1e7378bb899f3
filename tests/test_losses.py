"""Tests for brewnet/layers/loss.py: Caffe's loss layers, value by value.

Expected numbers come from the Caffe reference folders (run_case) or were computed
by BVLC Caffe for the small cases written out below, or are worked out by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from reference_case import REFERENCE, case_names, run_case

import brewnet
from brewnet.errors import BrewnetError, LayerSetupError
from brewnet.io.model import array_to_blob_proto
from brewnet.layers import layer_class, layer_type_list
from brewnet.layers import loss as L
from brewnet.proto import caffe_pb2

FLT_MIN = 1.17549435e-38


# ============================================================================== helpers
def input_layers(**shapes: tuple[int, ...]) -> str:
    """Return prototxt Input layers, one per keyword: name=shape."""
    text = ""
    for name, shape in shapes.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += (
            f'layer {{ name: "{name}" type: "Input" top: "{name}" '
            f"input_param {{ shape {{ {dims} }} }} }}\n"
        )
    return text


def make_net(text: str, dtype: torch.dtype = torch.float32, phase=brewnet.TRAIN):
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    return brewnet.Net(param, phase, dtype=dtype)


def run_net(net, **values):
    """Write the inputs, run forward and backward, and return the net."""
    for name, value in values.items():
        net.blobs[name].data[...] = np.asarray(value)
    net.forward()
    net.backward()
    return net


def softmax_net(
    layer_fields: str, x_shape, y_shape, tops=("loss",), dtype=torch.float32
):
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    return make_net(
        "force_backward: true\n"
        + input_layers(x=x_shape, y=y_shape)
        + f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" '
        f"{top_lines} {layer_fields} }}",
        dtype,
    )


def make_layer(text: str, bottom_shapes, dtype=torch.float64):
    """Build one layer from LayerParameter text and set it up for ``bottom_shapes``."""
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = layer_class(param.type)(param, dtype=dtype)
    layer.check_blob_counts(len(param.bottom), len(param.top))
    layer.setup(bottom_shapes)
    layer.reshape(bottom_shapes)
    return layer


def net_types(prototxt: Path) -> set[str]:
    param = text_format.Parse(prototxt.read_text(), caffe_pb2.NetParameter())
    return {layer.type for layer in param.layer}


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# =========================================================================== references
REFERENCE_CASES = [n for n in case_names("losses") if n != "accuracy_topk_ignore"]


@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_reference_case(name):
    missing = net_types(REFERENCE / "losses" / name / "net.prototxt") - set(
        layer_type_list()
    )
    if missing:
        pytest.skip(f"layer types not registered yet: {sorted(missing)}")
    run_case("losses", name)


# ====================================================================== SoftmaxWithLoss
CASE_A_X = [[1, 2, 0.5], [-1, 0, 3]]
CASE_A_Y = [0, 2]
CASE_A_LOSS = 0.765126348
CASE_A_PROB = [
    [0.231223896, 0.628531694, 0.14024438],
    [0.017147826, 0.0466126204, 0.936239541],
]


@pytest.mark.parametrize("weights", ["", "loss_weight: 1 loss_weight: 0"])
def test_softmax_prob_top(weights):
    net = softmax_net(weights, (2, 3), (2,), tops=("loss", "prob"))
    run_net(net, x=CASE_A_X, y=CASE_A_Y)
    assert net.layer_loss_weights("loss") == [1.0, 0.0]
    assert net.loss == pytest.approx(CASE_A_LOSS, rel=1e-5)
    np.testing.assert_allclose(net.blobs["prob"].data, CASE_A_PROB, rtol=1e-5)
    # The gradient is that of the loss alone: (p - onehot) / 2.
    onehot = np.array([[1, 0, 0], [0, 0, 1]])
    expected = (np.array(CASE_A_PROB) - onehot) / 2
    np.testing.assert_allclose(net.blobs["x"].diff, expected, rtol=1e-5, atol=1e-7)


def test_softmax_prob_top_has_no_gradient():
    # Caffe's backward ignores the diff of the prob top: a loss on prob adds to the
    # net loss but nothing to the gradient of the scores.
    net = make_net(
        "force_backward: true\n"
        + input_layers(x=(2, 3), y=(2,), t=(2, 3))
        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" '
        'top: "loss" top: "prob" }\n'
        'layer { name: "fit" type: "EuclideanLoss" bottom: "prob" bottom: "t" '
        'top: "fit" }'
    )
    run_net(net, x=CASE_A_X, y=CASE_A_Y, t=np.zeros((2, 3)))
    fit = (np.array(CASE_A_PROB) ** 2).sum() / 4
    assert float(net.blobs["fit"].data) == pytest.approx(fit, rel=1e-5)
    assert net.loss == pytest.approx(CASE_A_LOSS + fit, rel=1e-5)
    expected = (np.array(CASE_A_PROB) - np.array([[1, 0, 0], [0, 0, 1]])) / 2
    np.testing.assert_allclose(net.blobs["x"].diff, expected, rtol=1e-5, atol=1e-7)


CASE_C_X = np.array([1, 2, 0.5, -1, 0, 3, 0, 0, 0, 2, 1, 0]).reshape(2, 2, 3)


@pytest.mark.parametrize("mode", ["VALID", "NONE", "FULL", "BATCH_SIZE"])
def test_softmax_all_labels_ignored(mode):
    fields = (
        "softmax_param { axis: -1 } "
        f"loss_param {{ ignore_label: 7 normalization: {mode} }}"
    )
    net = softmax_net(fields, (2, 2, 3), (2, 2))
    run_net(net, x=CASE_C_X, y=[[7, 7], [7, 7]])
    assert net.loss == 0.0
    assert not np.isnan(net.blobs["loss"].data).any()
    np.testing.assert_array_equal(net.blobs["x"].diff, np.zeros((2, 2, 3)))


CASE_D_X = np.array(
    [[[[1, 2]], [[0.5, -1]], [[-0.5, 3]]], [[[0, 1]], [[2, 1]], [[1, -2]]]],
    dtype=np.float32,
)
CASE_D_Y = np.array([0, 2, 1, 255], dtype=np.float32).reshape(2, 1, 1, 2)
CASE_D_SUM = 1.33829927


@pytest.mark.parametrize(
    "fields, expected",
    [
        ("", 0.446099758),
        ("normalization: VALID", 0.446099758),
        ("normalization: FULL", 0.334574819),
        ("normalization: BATCH_SIZE", 0.669149637),
        ("normalization: NONE", CASE_D_SUM),
        ("normalize: true", 0.446099758),
        ("normalize: false", 0.669149637),
        ("normalize: false normalization: VALID", 0.446099758),
    ],
)
def test_softmax_normalization(fields, expected):
    net = softmax_net(
        f"loss_param {{ ignore_label: 255 {fields} }}", (2, 3, 1, 2), (2, 1, 1, 2)
    )
    run_net(net, x=CASE_D_X, y=CASE_D_Y)
    assert net.loss == pytest.approx(expected, rel=1e-5)


def test_softmax_valid_gradient():
    net = softmax_net("loss_param { ignore_label: 255 }", (2, 3, 1, 2), (2, 1, 1, 2))
    run_net(net, x=CASE_D_X, y=CASE_D_Y)
    expected = [
        -0.151150212,
        0.0884626508,
        0.11049965,
        0.00440429617,
        0.040650554,
        -0.0928669423,
        0.0300101899,
        0,
        -0.111586377,
        0,
        0.0815761536,
        0,
    ]
    diff = net.blobs["x"].diff
    np.testing.assert_allclose(diff.ravel(), expected, rtol=1e-5, atol=1e-8)
    # Every channel of the ignored position (sample 1, column 1) is exactly 0.
    assert (diff[1, :, 0, 1] == 0).all()


def test_softmax_batch_size_is_outer_count():
    # With axis -1 on (2, 2, 3), BATCH_SIZE divides by 2 * 2 = 4, not by 2.
    labels = [[0, 2], [1, 0]]
    batch = softmax_net(
        "softmax_param { axis: -1 } loss_param { normalization: BATCH_SIZE }",
        (2, 2, 3),
        (2, 2),
    )
    none = softmax_net(
        "softmax_param { axis: -1 } loss_param { normalization: NONE }",
        (2, 2, 3),
        (2, 2),
    )
    run_net(batch, x=CASE_C_X, y=labels)
    run_net(none, x=CASE_C_X, y=labels)
    assert batch.loss == pytest.approx(none.loss / 4, rel=1e-6)
    log_p = torch.log_softmax(torch.tensor(CASE_C_X, dtype=torch.float64), -1)
    by_hand = -(log_p[0, 0, 0] + log_p[0, 1, 2] + log_p[1, 0, 1] + log_p[1, 1, 0]) / 4
    assert batch.loss == pytest.approx(float(by_hand), rel=1e-6)


def test_softmax_underflow_plateau():
    # p underflows to 0 in float32 and is clamped to FLT_MIN: -ln(FLT_MIN) = 87.3365.
    net = softmax_net("", (2, 3), (2,))
    run_net(net, x=[[0, 200, 0], [0, 0, 0]], y=[0, 0])
    assert net.loss == pytest.approx(44.2175789, rel=1e-6)
    assert net.loss == pytest.approx((-math.log(FLT_MIN) + math.log(3)) / 2, rel=1e-6)
    # The gradient is not clamped: (p - onehot) / 2.
    expected = [-0.5, 0.5, 0, -1 / 3, 1 / 6, 1 / 6]
    np.testing.assert_allclose(
        net.blobs["x"].diff.ravel(), expected, rtol=1e-5, atol=1e-7
    )


def test_softmax_clamp_is_flt_min_in_float64():
    loss, _ = L.softmax_with_loss(f64([[0, 800, 0]]), f64([0]))
    assert float(loss.detach()) == pytest.approx(87.3365447505531, rel=1e-12)


def test_softmax_spatial_labels():
    # Scores (N, C, H, W) with labels (N, H, W): one label per pixel.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    y = torch.tensor([[[0, 1], [2, 0]], [[1, 1], [2, 2]]], dtype=torch.float64)
    net = softmax_net("", (2, 3, 2, 2), (2, 2, 2), dtype=torch.float64)
    run_net(net, x=x.numpy(), y=y.numpy())
    log_p = torch.log_softmax(x, dim=1)
    picked = log_p.gather(1, y.long().unsqueeze(1))
    assert net.loss == pytest.approx(float(-picked.mean()), rel=1e-12)


def test_softmax_labels_truncate_toward_zero():
    # static_cast<int>(1.9) == 1, and 255.5 counts as ignore_label 255.
    loss, _ = L.softmax_with_loss(f64(CASE_A_X), f64([0.7, 2.9]))
    assert float(loss.detach()) == pytest.approx(CASE_A_LOSS, rel=1e-6)
    loss, _ = L.softmax_with_loss(f64(CASE_A_X), f64([0, 255.5]), ignore_label=255)
    assert float(loss.detach()) == pytest.approx(-math.log(CASE_A_PROB[0][0]), rel=1e-6)


def test_softmax_label_gets_no_gradient():
    net = softmax_net("", (2, 3), (2,))
    assert net.layer_dict["loss"].allow_force_backward(0)
    assert not net.layer_dict["loss"].allow_force_backward(1)
    run_net(net, x=CASE_A_X, y=CASE_A_Y)
    np.testing.assert_array_equal(net.blobs["y"].diff, np.zeros(2))


def test_softmax_label_out_of_range():
    net = softmax_net("", (2, 3), (2,))
    net.blobs["x"].data[...] = CASE_A_X
    net.blobs["y"].data[...] = [0, 3]
    with pytest.raises(LayerSetupError) as error:
        net.forward()
    message = str(error.value)
    assert "layer 'loss' (type SoftmaxWithLoss)" in message
    assert "label 3 at index 1" in message
    assert "[0, 2]" in message


def test_softmax_negative_label_out_of_range():
    net = softmax_net("loss_param { ignore_label: 255 }", (2, 3), (2,))
    net.blobs["y"].data[...] = [-1, 255]
    with pytest.raises(
        LayerSetupError, match=r"label -1 at index 0 .*ignore_label 255"
    ):
        net.forward()


def test_softmax_ignored_label_may_be_out_of_range():
    net = softmax_net("loss_param { ignore_label: 9 }", (2, 3), (2,))
    run_net(net, x=CASE_A_X, y=[0, 9])
    assert net.loss == pytest.approx(-math.log(CASE_A_PROB[0][0]), rel=1e-5)


def test_softmax_label_count_mismatch():
    with pytest.raises(LayerSetupError) as error:
        softmax_net("", (2, 3, 4), (2, 3))
    message = str(error.value)
    assert "layer 'loss' (type SoftmaxWithLoss)" in message
    assert "bottom 0 ('x') of shape 2 3 4 (24)" in message
    assert "bottom 1 ('y') of shape 2 3 (6)" in message
    assert "8 labels" in message


def test_softmax_first_dimension_mismatch():
    with pytest.raises(LayerSetupError, match=r"differ in the first dimension"):
        softmax_net("softmax_param { axis: 0 }", (2, 3), (3,))


def test_softmax_axis_out_of_range():
    with pytest.raises(LayerSetupError, match=r"softmax_param.axis 3 is out of range"):
        softmax_net("softmax_param { axis: 3 }", (2, 3), (2,))


def test_softmax_three_tops_rejected():
    with pytest.raises(LayerSetupError, match=r"'loss'.*at most 2 top blobs, but 3"):
        softmax_net("", (2, 3), (2,), tops=("loss", "prob", "extra"))


def test_label_propagate_down_rejected():
    with pytest.raises(
        LayerSetupError, match=r"cannot backpropagate to bottom 1 \('y'\)"
    ):
        softmax_net("propagate_down: true propagate_down: true", (2, 3), (2,))


def test_label_propagate_down_test_phase():
    # Caffe only aborts in backward, which a TEST net never runs.
    net = make_net(
        input_layers(x=(2, 3), y=(2,))
        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" '
        'top: "loss" propagate_down: true propagate_down: true }',
        phase=brewnet.TEST,
    )
    net.blobs["x"].data[...] = CASE_A_X
    net.blobs["y"].data[...] = CASE_A_Y
    net.forward()
    assert net.loss == pytest.approx(CASE_A_LOSS, rel=1e-5)


def test_label_propagate_down_false_accepted():
    net = softmax_net("propagate_down: true propagate_down: false", (2, 3), (2,))
    run_net(net, x=CASE_A_X, y=CASE_A_Y)
    assert net.loss == pytest.approx(CASE_A_LOSS, rel=1e-5)


# ======================================================================== EuclideanLoss
def euclidean_net(fields=""):
    return make_net(
        "force_backward: true\n"
        + input_layers(a=(2, 3), b=(2, 3, 1, 1))
        + f'layer {{ name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" '
        f'top: "loss" {fields} }}'
    )


CASE_E_A = [[1, 2, 3], [4, 5, 6]]
CASE_E_B = np.array([[1, 0, 3], [0, 5, 9]]).reshape(2, 3, 1, 1)
CASE_E_GRAD = [0, 1, 0, 2, 0, -1.5]


def test_euclidean_value_and_gradient():
    net = run_net(euclidean_net(), a=CASE_E_A, b=CASE_E_B)
    assert net.loss == pytest.approx(7.25, rel=1e-6)  # 29 / (2 * 2)
    np.testing.assert_allclose(net.blobs["a"].diff.ravel(), CASE_E_GRAD, rtol=1e-6)
    np.testing.assert_allclose(
        net.blobs["b"].diff.ravel(), -np.array(CASE_E_GRAD), rtol=1e-6
    )
    assert net.blobs["b"].diff.shape == (2, 3, 1, 1)


def test_euclidean_loss_weight_two():
    net = run_net(euclidean_net("loss_weight: 2"), a=CASE_E_A, b=CASE_E_B)
    assert net.loss == pytest.approx(14.5, rel=1e-6)
    np.testing.assert_allclose(
        net.blobs["a"].diff.ravel(), 2 * np.array(CASE_E_GRAD), rtol=1e-6
    )


def test_euclidean_both_bottoms_forced():
    net = euclidean_net()
    assert net.layer_dict["loss"].allow_force_backward(1)


def test_euclidean_count_mismatch():
    text = input_layers(a=(2, 3), b=(2, 4)) + (
        'layer { name: "dist" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }'
    )
    with pytest.raises(LayerSetupError) as error:
        make_net(text)
    message = str(error.value)
    assert "layer 'dist' (type EuclideanLoss)" in message
    assert "bottom 0 ('a') of shape 2 3 (6)" in message
    assert "bottom 1 ('b') of shape 2 4 (8)" in message
    assert "same count per sample" in message


def test_euclidean_batch_mismatch():
    text = input_layers(a=(2, 3), b=(3, 2)) + (
        'layer { name: "dist" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }'
    )
    with pytest.raises(LayerSetupError, match=r"'dist'.*differ in the first dimension"):
        make_net(text)


def test_euclidean_one_bottom_rejected():
    text = input_layers(a=(2, 3)) + (
        'layer { name: "dist" type: "EuclideanLoss" bottom: "a" top: "l" }'
    )
    with pytest.raises(LayerSetupError, match=r"'dist'.*exactly 2 bottom blobs, but 1"):
        make_net(text)


# ============================================================================ SigmoidCE
def test_sigmoid_ce_value_by_hand():
    x, t = f64([[0.0, 2.0], [-1.0, 3.0]]), f64([[1.0, 0.0], [0.5, 1.0]])
    expected = sum(
        max(xi, 0) - xi * ti + math.log1p(math.exp(-abs(xi)))
        for xi, ti in zip(x.ravel().tolist(), t.ravel().tolist())
    )
    assert float(L.sigmoid_cross_entropy_loss(x, t)) == pytest.approx(expected / 2)


def test_sigmoid_ce_gradient_at_zero():
    # Caffe's gradient is sigmoid(x) - t, which is 0.5 - t at x = 0.
    x = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    L.sigmoid_cross_entropy_loss(x, f64([[0.0, 1.0]])).backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0.5, -0.5]])


def test_sigmoid_ce_large_scores_stable():
    x = f64([[100.0, -100.0]])
    loss = L.sigmoid_cross_entropy_loss(x, f64([[0.0, 1.0]]))
    assert float(loss.detach()) == pytest.approx(200.0)


@pytest.mark.parametrize(
    "fields, divisor",
    [
        ("ignore_label: 2", 2),  # BATCH_SIZE by default, even with ignore_label
        ("ignore_label: 2 normalization: VALID", 3),
        ("ignore_label: 2 normalization: FULL", 4),
        ("ignore_label: 2 normalization: NONE", 1),
        ("ignore_label: 2 normalize: true", 3),
        ("ignore_label: 2 normalize: false", 2),
    ],
)
def test_sigmoid_ce_normalization(fields, divisor):
    x, t = [[0.0, 2.0], [-1.0, 3.0]], [[1.0, 2.0], [0.0, 1.0]]
    net = make_net(
        "force_backward: true\n"
        + input_layers(x=(2, 2), t=(2, 2))
        + 'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" '
        f'bottom: "t" top: "loss" loss_param {{ {fields} }} }}'
    )
    run_net(net, x=x, t=t)
    summed = (
        math.log(2) + (math.log1p(math.exp(-1))) + (3 - 3 + math.log1p(math.exp(-3)))
    )
    assert net.loss == pytest.approx(summed / divisor, rel=1e-6)
    sigmoid = 1 / (1 + np.exp(-np.array(x)))
    expected = (sigmoid - np.array(t)) / divisor
    expected[0, 1] = 0  # ignored target
    np.testing.assert_allclose(net.blobs["x"].diff, expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(net.blobs["t"].diff, np.zeros((2, 2)))


def test_sigmoid_ce_count_mismatch():
    text = input_layers(x=(2, 3), t=(2, 2)) + (
        'layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" '
        'top: "l" }'
    )
    with pytest.raises(LayerSetupError) as error:
        make_net(text)
    message = str(error.value)
    assert "layer 'sce' (type SigmoidCrossEntropyLoss)" in message
    assert "2 3 (6)" in message
    assert "2 2 (4)" in message
    assert "one target per score" in message


# ============================================================================ HingeLoss
CASE_F_X = [[0.5, -2, 0.3], [1.5, 0.2, -0.4]]
CASE_F_Y = [0, 2]


def hinge_net(norm, fields=""):
    return make_net(
        "force_backward: true\n"
        + input_layers(x=(2, 3), y=(2,))
        + 'layer { name: "loss" type: "HingeLoss" bottom: "x" bottom: "y" top: "loss" '
        f"hinge_loss_param {{ norm: {norm} }} {fields} }}"
    )


@pytest.mark.parametrize(
    "norm, loss, grad",
    [
        ("L1", 3.45, [-0.5, 0, 0.5, 0.5, 0.5, -0.5]),
        ("L2", 5.795, [-0.5, 0, 1.3, 2.5, 1.2, -1.4]),
    ],
)
def test_hinge_values(norm, loss, grad):
    net = run_net(hinge_net(norm), x=CASE_F_X, y=CASE_F_Y)
    assert net.loss == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(net.blobs["x"].diff.ravel(), grad, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(net.blobs["y"].diff, np.zeros(2))


def test_hinge_default_norm_is_l1():
    x, y = f64(CASE_F_X), f64(CASE_F_Y)
    assert float(L.hinge_loss(x, y)) == pytest.approx(3.45)


def test_hinge_zero_margin_has_zero_gradient():
    # A margin of exactly 0 gets sign(0) = 0 in Caffe's L1 gradient.
    x = f64([[1.0, -1.0]]).requires_grad_(True)
    L.hinge_loss(x, f64([0])).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0.0, 0.0]])


def test_hinge_weight_zero_changes_no_gradient():
    # A HingeLoss with loss_weight 0 that reads the same scores as a weighted
    # SoftmaxWithLoss leaves the scores' gradient as SoftmaxWithLoss alone gives it.
    base = (
        "force_backward: true\n"
        + input_layers(x=(2, 3), y=(2,))
        + 'layer { name: "soft" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" '
        'top: "soft" }\n'
    )
    hinge = (
        'layer { name: "hinge" type: "HingeLoss" bottom: "x" bottom: "y" top: "hinge" '
        "loss_weight: 0 hinge_loss_param { norm: L2 } }\n"
    )
    alone = run_net(make_net(base), x=CASE_F_X, y=CASE_F_Y)
    both = run_net(make_net(base + hinge), x=CASE_F_X, y=CASE_F_Y)
    np.testing.assert_array_equal(both.blobs["x"].diff, alone.blobs["x"].diff)
    assert both.loss == alone.loss
    assert float(both.blobs["hinge"].data) == pytest.approx(5.795, rel=1e-6)
    # The same is true with the hinge layer first.
    soft_layer = base.index('layer { name: "soft"')
    hinge_first = base[:soft_layer] + hinge + base[soft_layer:]
    first = run_net(make_net(hinge_first), x=CASE_F_X, y=CASE_F_Y)
    np.testing.assert_array_equal(first.blobs["x"].diff, alone.blobs["x"].diff)


def test_hinge_label_out_of_range():
    net = hinge_net("L1")
    net.blobs["y"].data[...] = [0, 5]
    with pytest.raises(
        LayerSetupError, match=r"'loss' \(type HingeLoss\): label 5 at index 1"
    ):
        net.forward()


def test_hinge_label_count_mismatch():
    text = input_layers(x=(2, 3), y=(2, 2)) + (
        'layer { name: "h" type: "HingeLoss" bottom: "x" bottom: "y" top: "l" }'
    )
    with pytest.raises(
        LayerSetupError, match=r"'h'.*2 2 \(4\).*one label per sample, 2"
    ):
        make_net(text)


# ========================================================================= InfogainLoss
INFOGAIN_H = [[1.0, 0.5, 0.0], [0.2, 2.0, 0.3], [0.0, 0.0, 1.5]]


def infogain_by_hand(x, y, h):
    log_p = torch.log_softmax(f64(x), dim=1)
    h = f64(h)
    return float(-sum((h[int(label)] * log_p[i]).sum() for i, label in enumerate(y)))


def infogain_net(fields="", source=None, tops=("loss",), h_bottom=True):
    shapes = {"x": (2, 3), "y": (2,)}
    bottoms = 'bottom: "x" bottom: "y"'
    if h_bottom:
        shapes["H"] = (1, 1, 3, 3)
        bottoms += ' bottom: "H"'
    param = f'infogain_loss_param {{ source: "{source}" }}' if source else ""
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    return make_net(
        "force_backward: true\n"
        + input_layers(**shapes)
        + f'layer {{ name: "info" type: "InfogainLoss" {bottoms} {top_lines} '
        f"{param} {fields} }}"
    )


def test_infogain_value_and_gradient():
    net = run_net(
        infogain_net(), x=CASE_A_X, y=CASE_A_Y, H=np.reshape(INFOGAIN_H, (1, 1, 3, 3))
    )
    expected = infogain_by_hand(CASE_A_X, CASE_A_Y, INFOGAIN_H) / 2
    assert net.loss == pytest.approx(expected, rel=1e-5)
    # Caffe's gradient: (p * sum_l H[y, l] - H[y, :]) / 2.
    p, h = np.array(CASE_A_PROB), np.array(INFOGAIN_H)
    rows = h[CASE_A_Y]
    grad = (p * rows.sum(1, keepdims=True) - rows) / 2
    np.testing.assert_allclose(net.blobs["x"].diff, grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(net.blobs["H"].diff, np.zeros((1, 1, 3, 3)))
    assert not net.layer_dict["info"].allow_force_backward(2)


def test_infogain_from_source_file(tmp_path):
    path = tmp_path / "H.binaryproto"
    path.write_bytes(
        array_to_blob_proto(np.reshape(INFOGAIN_H, (1, 1, 3, 3))).SerializeToString()
    )
    net = run_net(infogain_net(source=path, h_bottom=False), x=CASE_A_X, y=CASE_A_Y)
    expected = infogain_by_hand(CASE_A_X, CASE_A_Y, INFOGAIN_H) / 2
    assert net.loss == pytest.approx(expected, rel=1e-5)
    assert "info" not in net.params  # H is not a learnable parameter


def test_infogain_identity_is_softmax_loss():
    net = run_net(
        infogain_net(), x=CASE_A_X, y=CASE_A_Y, H=np.eye(3).reshape(1, 1, 3, 3)
    )
    assert net.loss == pytest.approx(CASE_A_LOSS, rel=1e-5)


def test_infogain_prob_top():
    net = infogain_net(tops=("loss", "prob"))
    assert net.layer_loss_weights("info") == [1.0, 0.0]
    run_net(net, x=CASE_A_X, y=CASE_A_Y, H=np.eye(3).reshape(1, 1, 3, 3))
    np.testing.assert_allclose(net.blobs["prob"].data, CASE_A_PROB, rtol=1e-5)


def test_infogain_clamp_is_1e20():
    # The label class has p = 0 in float32: -ln(1e-20) = 46.0517 for that sample.
    loss, _ = L.infogain_loss(
        torch.tensor([[0.0, 200.0]]), torch.tensor([0.0]), torch.eye(2)
    )
    assert float(loss.detach()) == pytest.approx(-math.log(1e-20), rel=1e-6)


def test_infogain_ignore_label_and_axis():
    x = torch.tensor([[[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]], dtype=torch.float64)
    h = f64(INFOGAIN_H)
    # Axis -1 of (1, 2, 3): two positions, the second one ignored.
    loss, _ = L.infogain_loss(x, f64([[0, 9]]), h, axis=2, ignore_label=9)
    assert float(loss.detach()) == pytest.approx(
        infogain_by_hand([CASE_A_X[0]], [0], INFOGAIN_H)
    )
    loss, _ = L.infogain_loss(
        x, f64([[0, 9]]), h, axis=2, ignore_label=9, normalization=L.FULL
    )
    assert float(loss.detach()) == pytest.approx(
        infogain_by_hand([CASE_A_X[0]], [0], INFOGAIN_H) / 2
    )


def test_infogain_all_ignored():
    x = f64(CASE_A_X).requires_grad_(True)
    loss, _ = L.infogain_loss(x, f64([4, 4]), f64(INFOGAIN_H), ignore_label=4)
    loss.backward()
    assert float(loss.detach()) == 0.0
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((2, 3)))


def test_infogain_rejects_normalize():
    with pytest.raises(LayerSetupError) as error:
        infogain_net("loss_param { normalize: true }")
    message = str(error.value)
    assert "layer 'info' (type InfogainLoss)" in message
    assert "loss_param.normalize" in message
    assert "normalization" in message


def test_infogain_missing_source():
    with pytest.raises(LayerSetupError, match=r"'info'.*infogain matrix H is missing"):
        infogain_net(h_bottom=False)


def test_infogain_unreadable_source(tmp_path):
    missing = tmp_path / "none.binaryproto"
    with pytest.raises(LayerSetupError, match=r"'info'.*cannot read.*none.binaryproto"):
        infogain_net(source=missing, h_bottom=False)


def test_infogain_matrix_size_mismatch(tmp_path):
    path = tmp_path / "H2.binaryproto"
    path.write_bytes(array_to_blob_proto(np.eye(2)).SerializeToString())
    with pytest.raises(LayerSetupError) as error:
        infogain_net(source=path, h_bottom=False)
    message = str(error.value)
    assert "layer 'info' (type InfogainLoss)" in message
    assert "2 2 (4)" in message
    assert "3 x 3 = 9 values" in message


def test_infogain_label_out_of_range():
    net = infogain_net()
    net.blobs["y"].data[...] = [3, 0]
    with pytest.raises(
        LayerSetupError, match=r"'info' \(type InfogainLoss\): label 3 at index 0"
    ):
        net.forward()


# ========================================================================== Multinomial
def multinomial_net(y_shape=(2,)):
    return make_net(
        "force_backward: true\n"
        + input_layers(p=(2, 3), y=y_shape)
        + 'layer { name: "mll" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" '
        'top: "loss" }'
    )


def test_multinomial_value_and_gradient():
    p = [[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]
    net = run_net(multinomial_net(), p=p, y=[1, 2])
    assert net.loss == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2, rel=1e-6)
    expected = [[0, -1 / (2 * 0.5), 0], [0, 0, -1 / (2 * 0.8)]]
    np.testing.assert_allclose(net.blobs["p"].diff, expected, rtol=1e-6)


def test_multinomial_clamp_and_gradient():
    # p = 0 costs -ln(1e-20) = 46.0517, and the gradient is -1 / (N * 1e-20).
    p = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = L.multinomial_logistic_loss(p, torch.tensor([0.0]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(46.0517019, rel=1e-6)
    assert float(p.grad[0, 0]) == pytest.approx(-1e20, rel=1e-6)
    assert float(p.grad[0, 1]) == 0.0


def test_multinomial_label_shape():
    with pytest.raises(LayerSetupError) as error:
        multinomial_net((2, 3))
    message = str(error.value)
    assert "layer 'mll' (type MultinomialLogisticLoss)" in message
    assert "bottom 1 ('y') of shape 2 3 (6)" in message
    assert "(N) or (N, 1, 1, 1)" in message


def test_multinomial_label_out_of_range():
    net = multinomial_net()
    net.blobs["p"].data[...] = 0.5
    net.blobs["y"].data[...] = [0, 3]
    with pytest.raises(LayerSetupError, match=r"'mll'.*label 3 at index 1"):
        net.forward()


# ========================================================================== Contrastive
def contrastive_net(fields=""):
    return make_net(
        "force_backward: true\n"
        + input_layers(a=(2, 2), b=(2, 2), sim=(2,))
        + 'layer { name: "con" type: "ContrastiveLoss" bottom: "a" bottom: "b" '
        f'bottom: "sim" top: "loss" {fields} }}'
    )


PAIR_A = [[0.0, 0.0], [0.0, 0.0]]
PAIR_B = [[3.0, 4.0], [0.3, 0.4]]  # distances 5 and 0.5


def test_contrastive_by_hand():
    net = run_net(contrastive_net(), a=PAIR_A, b=PAIR_B, sim=[1, 0])
    # (5^2 + max(1 - 0.5, 0)^2) / (2 * 2)
    assert net.loss == pytest.approx(6.3125, rel=1e-6)
    # Similar pair: (a - b) / N. Dissimilar: -(m - d) / (d + 1e-4) (a - b) / N.
    scale = -(1 - 0.5) / (0.5 + 1e-4) / 2
    expected = [[-1.5, -2.0], [scale * -0.3, scale * -0.4]]
    np.testing.assert_allclose(net.blobs["a"].diff, expected, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["b"].diff, -np.array(expected), rtol=1e-6)
    np.testing.assert_array_equal(net.blobs["sim"].diff, np.zeros(2))


def test_contrastive_legacy_by_hand():
    fields = "contrastive_loss_param { legacy_version: true }"
    net = run_net(contrastive_net(fields), a=PAIR_A, b=PAIR_B, sim=[1, 0])
    # (25 + max(1 - 0.25, 0)) / 4
    assert net.loss == pytest.approx(6.4375, rel=1e-6)
    expected = [[-1.5, -2.0], [0.15, 0.2]]  # -(a - b) / N for the dissimilar pair
    np.testing.assert_allclose(net.blobs["a"].diff, expected, rtol=1e-6)


def test_contrastive_margin_and_far_pair():
    fields = "contrastive_loss_param { margin: 0.4 }"
    net = run_net(contrastive_net(fields), a=PAIR_A, b=PAIR_B, sim=[0, 0])
    assert net.loss == 0.0
    np.testing.assert_array_equal(net.blobs["a"].diff, np.zeros((2, 2)))


def test_contrastive_zero_distance_gradient_finite():
    a = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    loss = L.contrastive_loss(a, torch.zeros(1, 2, dtype=torch.float64), f64([0]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.5)
    np.testing.assert_array_equal(a.grad.numpy(), [[0.0, 0.0]])


def test_contrastive_similarity_truncates():
    # 0.7 truncates to 0, so the pair counts as dissimilar.
    loss = L.contrastive_loss(f64(PAIR_A[:1]), f64(PAIR_B[:1]), f64([0.7]))
    assert float(loss.detach()) == 0.0


def test_contrastive_shape_mismatch():
    text = input_layers(a=(2, 2), b=(2, 3), sim=(2,)) + (
        'layer { name: "con" type: "ContrastiveLoss" bottom: "a" bottom: "b" '
        'bottom: "sim" top: "l" }'
    )
    with pytest.raises(LayerSetupError) as error:
        make_net(text)
    message = str(error.value)
    assert "layer 'con' (type ContrastiveLoss)" in message
    assert "2 2 (4)" in message
    assert "2 3 (6)" in message
    assert "(N, C) or (N, C, 1, 1)" in message


def test_contrastive_label_shape():
    text = input_layers(a=(2, 2), b=(2, 2), sim=(3,)) + (
        'layer { name: "con" type: "ContrastiveLoss" bottom: "a" bottom: "b" '
        'bottom: "sim" top: "l" }'
    )
    with pytest.raises(LayerSetupError, match=r"'con'.*bottom 2 \('sim'\) of shape 3"):
        make_net(text)


def test_contrastive_similarity_gets_no_gradient():
    net = contrastive_net()
    assert not net.layer_dict["con"].allow_force_backward(2)
    assert net.layer_dict["con"].allow_force_backward(1)


# =========================================================================== gradchecks
def gradcheck_layer(text, inputs, grad_indices):
    """Run torch.autograd.gradcheck on a float64 layer's first top."""
    layer = make_layer(text, [tuple(t.shape) for t in inputs])
    leaves = [t.clone().requires_grad_(i in grad_indices) for i, t in enumerate(inputs)]

    def first_top(*grad_inputs):
        bottom = list(leaves)
        for index, tensor in zip(grad_indices, grad_inputs):
            bottom[index] = tensor
        return layer.forward(bottom)[0]

    chosen = [leaves[i] for i in grad_indices]
    assert torch.autograd.gradcheck(first_top, chosen, eps=1e-6, atol=1e-5, rtol=1e-3)


def randn(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize(
    "fields",
    [
        "",
        "loss_param { ignore_label: 1 normalization: FULL }",
        "loss_param { normalization: BATCH_SIZE }",
        "loss_param { normalization: NONE }",
    ],
)
def test_gradcheck_softmax(fields):
    text = (
        f'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "l" {fields}'
    )
    labels = f64([[0, 1], [2, 1]]).reshape(2, 1, 2)
    gradcheck_layer(text, [randn(2, 3, 1, 2), labels], [0])


def test_gradcheck_softmax_axis_last():
    text = (
        'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "l" '
        "softmax_param { axis: -1 }"
    )
    gradcheck_layer(text, [randn(2, 2, 4), f64([[0, 3], [1, 2]])], [0])


def test_gradcheck_euclidean():
    text = 'name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l"'
    gradcheck_layer(text, [randn(3, 4), randn(3, 2, 2, seed=1)], [0, 1])


def test_gradcheck_sigmoid_ce():
    text = (
        'name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "l" '
        "loss_param { ignore_label: 2 normalization: VALID }"
    )
    targets = f64([[0, 1, 2], [0.3, 2, 1]])
    gradcheck_layer(text, [randn(2, 3), targets], [0])


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_gradcheck_hinge(norm):
    text = (
        f'name: "l" type: "HingeLoss" bottom: "x" bottom: "y" top: "l" '
        f"hinge_loss_param {{ norm: {norm} }}"
    )
    gradcheck_layer(text, [randn(4, 3), f64([0, 2, 1, 2])], [0])


def test_gradcheck_infogain():
    text = (
        'name: "l" type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "H" top: "l" '
        "loss_param { ignore_label: 0 }"
    )
    h = f64(INFOGAIN_H).reshape(1, 1, 3, 3)
    gradcheck_layer(text, [randn(4, 3), f64([0, 2, 1, 2]), h], [0])


def test_gradcheck_multinomial():
    text = 'name: "l" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "l"'
    probs = torch.softmax(randn(3, 4), dim=1)
    gradcheck_layer(text, [probs, f64([3, 0, 1])], [0])


@pytest.mark.parametrize("legacy", ["true", "false"])
def test_gradcheck_contrastive(legacy):
    # Distances stay near 1 or more, where Caffe's d + 1e-4 denominator is within
    # the gradcheck tolerance of the exact derivative.
    text = (
        'name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" '
        'top: "l" '
        f"contrastive_loss_param {{ margin: 3 legacy_version: {legacy} }}"
    )
    a = f64([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    b = f64([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [-0.5, 1.5]])
    gradcheck_layer(text, [a, b, f64([1, 0, 0, 1])], [0, 1])


def test_gradcheck_softmax_through_net():
    # The float64 net path: net.backward's diff against finite differences.
    net = softmax_net(
        "loss_param { ignore_label: 255 }",
        (2, 3, 1, 2),
        (2, 1, 1, 2),
        dtype=torch.float64,
    )
    x = CASE_D_X.astype(np.float64)
    run_net(net, x=x, y=CASE_D_Y)
    analytic = net.blobs["x"].diff.copy()

    def loss_at(values):
        net.blobs["x"].data[...] = values
        net.forward()
        return net.loss

    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = 1e-6
        numeric[index] = (loss_at(x + step) - loss_at(x - step)) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


# =============================================================================== shapes
def test_loss_top_is_scalar():
    net = run_net(euclidean_net(), a=CASE_E_A, b=CASE_E_B)
    assert net.blobs["loss"].shape == ()


def test_reshape_checks_new_shapes():
    net = euclidean_net()
    net.blobs["b"].reshape(2, 4)
    with pytest.raises(LayerSetupError, match=r"same count per sample"):
        net.reshape()


def test_loss_errors_are_brewnet_errors():
    with pytest.raises(BrewnetError):
        softmax_net("", (2, 3, 4), (2, 3))
