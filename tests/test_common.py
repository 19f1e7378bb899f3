"""The common and utility layers: Caffe's references, hand values, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_case import assert_close, load_case, run_case

import brewnet
from brewnet.errors import LayerSetupError
from brewnet.io.prototxt import parse_text
from brewnet.layers import layer_class
from brewnet.layers.common import (
    argmax,
    batch_reindex,
    concat,
    eltwise,
    embed,
    filter_batch,
    inner_product,
    reduction,
    slice_along,
    softmax,
    tile,
)
from brewnet.proto import caffe_pb2

PROD = caffe_pb2.EltwiseParameter.PROD
SUM = caffe_pb2.EltwiseParameter.SUM
MAX = caffe_pb2.EltwiseParameter.MAX
R = caffe_pb2.ReductionParameter


def make_net(text: str, dtype: torch.dtype = torch.float32) -> brewnet.Net:
    return brewnet.Net(
        parse_text(text, caffe_pb2.NetParameter()), brewnet.TRAIN, dtype=dtype
    )


def make_layer(text: str, bottom_shapes, dtype: torch.dtype = torch.float64):
    """Build one layer from its prototxt text and run its set-up and reshape."""
    param = parse_text(text, caffe_pb2.LayerParameter())
    layer = layer_class(param.type)(param, dtype=dtype)
    layer.check_blob_counts(len(param.bottom), len(param.top))
    layer.setup([tuple(s) for s in bottom_shapes])
    layer.reshape([tuple(s) for s in bottom_shapes])
    return layer


def input_layers(**shapes) -> str:
    lines = []
    for name, shape in shapes.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(
            f'layer {{ name: "{name}" type: "Input" top: "{name}" '
            f"input_param {{ shape {{ {dims} }} }} }}"
        )
    return "\n".join(lines) + "\n"


def rand(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(
        *shape, generator=generator, dtype=torch.float64, requires_grad=True
    )


def gradcheck(function, *inputs):
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6)


# ================================================================== Caffe's references
REFERENCE_CASES = [
    "concat_axis2",
    "flatten_axis",
    "ip_axis2",
    "ip_transpose",
    "softmax_axis2",
    "reshape_infer",
    "eltwise_max",
    "eltwise_prod",
    "eltwise_sum_coeff",
    "tile",
    "reduction_asum",
    "reduction_mean",
    "reduction_sumsq",
    "argmax_topk",
    "embed",
]


@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_reference_case(name):
    run_case("layers", name)


def test_reference_case_slice_points_follows_the_loss_specification():
    # Caffe's split insertion clears every loss_weight of the Slice because its
    # weighted top b is also read by "sq", so Caffe's loss drops 1.3 * sum(a) and
    # 2.1 * sum(c). brewnet keeps every top's weight, as the loss specification says;
    # the forward values and the rest of Caffe's loss still agree.
    net, data = load_case("layers", "slice_points")
    net.forward()
    net.backward()
    for blob in ("a", "b", "c", "b2"):
        assert_close(net.blobs[blob].data, data[f"data/{blob}"], f"data of {blob}")
    a, b, c = (data[f"data/{blob}"].astype(np.float64) for blob in ("a", "b", "c"))
    caffe_loss = 1.7 * b.sum() + 0.5 * (b**2).sum()
    assert float(data["loss"]) == pytest.approx(caffe_loss, rel=1e-5)
    assert net.loss == pytest.approx(caffe_loss + 1.3 * a.sum() + 2.1 * c.sum(), rel=1e-5)
    np.testing.assert_allclose(net.blobs["a"].diff, np.full(a.shape, 1.3), rtol=1e-6)
    np.testing.assert_allclose(net.blobs["b"].diff, 1.7 + b, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["c"].diff, np.full(c.shape, 2.1), rtol=1e-6)
    expected_x = np.concatenate([np.full(a.shape, 1.3), 1.7 + b, np.full(c.shape, 2.1)], axis=1)
    np.testing.assert_allclose(net.blobs["x"].diff, expected_x, rtol=1e-5)


def test_slice_loss_weights_reach_the_bottom():
    # Without a consumer of any top there is no split in Caffe, so every loss weight
    # of the Slice counts and x's diff is the weight of the top each element went to.
    net = make_net(
        "force_backward: true\n"
        + input_layers(x=(2, 6, 3))
        + 'layer { name: "L" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" '
        "loss_weight: 1.3 loss_weight: 1.7 loss_weight: 2.1 "
        "slice_param { axis: 1 slice_point: 1 slice_point: 4 } }"
    )
    x = np.arange(36, dtype=np.float32).reshape(2, 6, 3)
    net.blobs["x"].data[...] = x
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["a"].data, x[:, 0:1])
    np.testing.assert_array_equal(net.blobs["b"].data, x[:, 1:4])
    np.testing.assert_array_equal(net.blobs["c"].data, x[:, 4:6])
    expected = 1.3 * x[:, 0:1].sum() + 1.7 * x[:, 1:4].sum() + 2.1 * x[:, 4:6].sum()
    assert net.loss == pytest.approx(expected, rel=1e-6)
    diff = net.blobs["x"].diff
    np.testing.assert_allclose(diff[:, 0:1], np.full((2, 1, 3), 1.3), rtol=1e-6)
    np.testing.assert_allclose(diff[:, 1:4], np.full((2, 3, 3), 1.7), rtol=1e-6)
    np.testing.assert_allclose(diff[:, 4:6], np.full((2, 2, 3), 2.1), rtol=1e-6)


# ================================================================== InnerProduct
def test_inner_product_by_hand():
    x = torch.tensor([[1.0, 2.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    bias = torch.tensor([0.5, 0.0, -1.0])
    assert inner_product(x, weight, bias).tolist() == [[1.5, 2.0, 2.0]]
    assert inner_product(x, weight.t(), None, transpose=True).tolist() == [
        [1.0, 2.0, 3.0]
    ]


def test_inner_product_axis_keeps_leading_axes():
    x = torch.arange(12.0).reshape(2, 3, 2)
    weight = torch.tensor([[1.0, -1.0]])
    y = inner_product(x, weight, None, axis=2)
    assert y.shape == (2, 3, 1)
    assert y.flatten().tolist() == [-1.0] * 6


def test_inner_product_layer_blob_shapes():
    layer = make_layer(
        'name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
        "inner_product_param { num_output: 4 }",
        [(2, 3, 5)],
    )
    assert [tuple(b.shape) for b in layer.blobs] == [(4, 15), (4,)]
    transposed = make_layer(
        'name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
        "inner_product_param { num_output: 4 transpose: true bias_term: false axis: 2 }",
        [(2, 3, 5)],
    )
    assert [tuple(b.shape) for b in transposed.blobs] == [(5, 4)]
    assert transposed.reshape([(2, 3, 5)]) == [(2, 3, 4)]


def test_inner_product_default_filler_is_zero():
    layer = make_layer(
        'name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
        "inner_product_param { num_output: 2 }",
        [(1, 3)],
    )
    assert torch.count_nonzero(layer.blobs[0]) == 0
    assert torch.count_nonzero(layer.blobs[1]) == 0


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_gradcheck(transpose):
    x = rand(2, 3, 4)
    weight = rand(*((4, 5) if transpose else (5, 4)), seed=1)
    bias = rand(5, seed=2)
    gradcheck(lambda x, w, b: inner_product(x, w, b, 2, transpose), x, weight, bias)


def test_inner_product_net_param_gradient():
    net = make_net(
        input_layers(x=(2, 2))
        + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
        "loss_weight: 1 inner_product_param { num_output: 1 "
        'weight_filler { type: "constant" value: 1 } } }'
    )
    net.blobs["x"].data[...] = [[1, 2], [3, -1]]
    net.forward()
    net.backward()
    assert net.loss == pytest.approx(5.0)
    np.testing.assert_allclose(net.params["ip"][0].diff, [[4.0, 1.0]])
    np.testing.assert_allclose(net.params["ip"][1].diff, [2.0])


def test_inner_product_without_num_output_is_an_error():
    with pytest.raises(LayerSetupError, match="num_output must be positive"):
        make_layer('name: "ip" type: "InnerProduct" bottom: "x" top: "y"', [(2, 3)])


def test_inner_product_input_size_change_is_an_error():
    net = make_net(
        input_layers(x=(2, 3))
        + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
        "inner_product_param { num_output: 2 } }"
    )
    net.blobs["x"].reshape(2, 4)
    with pytest.raises(LayerSetupError, match="set up for 3"):
        net.reshape()


def test_inner_product_bad_axis_is_an_error():
    with pytest.raises(LayerSetupError, match="axis 3 is out of range"):
        make_layer(
            'name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
            "inner_product_param { num_output: 2 axis: 3 }",
            [(2, 3)],
        )


# ================================================================== Softmax
def test_softmax_by_hand():
    y = softmax(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    np.testing.assert_allclose(
        y.numpy(), [[0.09003057, 0.24472847, 0.66524096]], rtol=1e-7
    )


def test_softmax_layer_negative_axis():
    layer = make_layer(
        'name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: -1 }',
        [(2, 3)],
    )
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 100.0]], dtype=torch.float64)
    y = layer.forward([x])[0]
    np.testing.assert_allclose(y[0].numpy(), [1 / 3] * 3)
    np.testing.assert_allclose(y[1].numpy(), [0, 0, 1], atol=1e-40)


def test_softmax_gradcheck():
    gradcheck(lambda x: softmax(x, 2), rand(2, 3, 4))


# ================================================================== Flatten
FLATTEN = 'name: "f" type: "Flatten" bottom: "x" top: "y" '


@pytest.mark.parametrize(
    "params, expected",
    [
        ("", (2, 60)),
        ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
        ("flatten_param { axis: 0 }", (120,)),
        ("flatten_param { axis: -2 }", (2, 3, 20)),
        ("flatten_param { axis: 2 end_axis: 1 }", (2, 3, 1, 4, 5)),
    ],
)
def test_flatten_shapes(params, expected):
    assert make_layer(FLATTEN + params, [(2, 3, 4, 5)]).reshape([(2, 3, 4, 5)]) == [
        expected
    ]


def test_flatten_keeps_values_and_gradient():
    layer = make_layer(FLATTEN, [(2, 3, 2)])
    x = rand(2, 3, 2)
    assert torch.equal(layer.forward([x])[0], x.reshape(2, 6))
    gradcheck(lambda x: layer.forward([x])[0], x)


def test_flatten_end_before_axis_is_an_error():
    with pytest.raises(LayerSetupError, match="end_axis 0 comes before axis 2"):
        make_layer(FLATTEN + "flatten_param { axis: 2 end_axis: 0 }", [(2, 3, 4)])


def test_flatten_in_place_is_an_error():
    with pytest.raises(LayerSetupError, match="cannot run in place"):
        make_layer('name: "f" type: "Flatten" bottom: "x" top: "x"', [(2, 3)])


# ================================================================== Concat
def concat_layer(params, shapes):
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    return make_layer(f'name: "c" type: "Concat" {bottoms} top: "y" {params}', shapes)


def test_concat_by_hand():
    a = torch.tensor([[1.0, 2.0]])
    b = torch.tensor([[3.0]])
    assert concat([a, b], 1).tolist() == [[1.0, 2.0, 3.0]]
    layer = concat_layer("concat_param { concat_dim: 0 }", [(1, 2), (2, 2)])
    assert layer.reshape([(1, 2), (2, 2)]) == [(3, 2)]


def test_concat_gradcheck():
    layer = concat_layer("concat_param { axis: -1 }", [(2, 3, 1), (2, 3, 2)])
    gradcheck(
        lambda a, b: layer.forward([a, b])[0], rand(2, 3, 1), rand(2, 3, 2, seed=1)
    )


def test_concat_single_bottom_is_a_copy():
    layer = concat_layer("", [(2, 3)])
    x = rand(2, 3)
    assert torch.equal(layer.forward([x])[0], x)


def test_concat_axis_and_concat_dim_is_an_error():
    with pytest.raises(LayerSetupError, match="both axis and concat_dim"):
        concat_layer("concat_param { axis: 1 concat_dim: 1 }", [(2, 3), (2, 3)])


def test_concat_shape_mismatch_is_an_error():
    with pytest.raises(
        LayerSetupError, match=r"bottom 1 has shape 3 3 \(9\) but bottom 0"
    ):
        concat_layer("", [(2, 3), (3, 3)])


def test_concat_axes_mismatch_is_an_error():
    with pytest.raises(LayerSetupError, match="same number of axes"):
        concat_layer("", [(2, 3), (2, 3, 1)])


def test_concat_dim_out_of_range_is_an_error():
    with pytest.raises(LayerSetupError, match="concat_dim 2 is out of range"):
        concat_layer("concat_param { concat_dim: 2 }", [(2, 3), (2, 3)])


# ================================================================== Split and Silence
def test_split_gradients_add_up():
    net = make_net(
        "force_backward: true\n"
        + input_layers(x=(2, 3))
        + 'layer { name: "s" type: "Split" bottom: "x" top: "a" top: "b" '
        "loss_weight: 1 loss_weight: 3 }"
    )
    net.blobs["x"].data[...] = np.arange(6).reshape(2, 3)
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["a"].data, np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(net.blobs["b"].data, np.arange(6).reshape(2, 3))
    assert net.loss == pytest.approx(4 * 15)
    np.testing.assert_array_equal(net.blobs["x"].diff, np.full((2, 3), 4.0))


def test_split_gradcheck():
    layer = make_layer(
        'name: "s" type: "Split" bottom: "x" top: "a" top: "b"', [(2, 2)]
    )
    weights = torch.tensor([[[1.0]], [[-2.0]]], dtype=torch.float64)
    gradcheck(lambda x: torch.stack(layer.forward([x])) * weights, rand(2, 2))


def test_silence_has_no_tops_and_zero_gradient():
    net = make_net(
        "force_backward: true\n"
        + input_layers(x=(2, 3), z=(1,))
        + 'layer { name: "s" type: "Silence" bottom: "x" bottom: "z" }'
    )
    net.blobs["x"].data[...] = 1
    outputs = net.forward()
    net.backward()
    assert outputs == {}
    np.testing.assert_array_equal(net.blobs["x"].diff, np.zeros((2, 3)))


def test_silence_with_a_top_is_an_error():
    with pytest.raises(LayerSetupError, match="exactly 0 top blobs"):
        make_layer('name: "s" type: "Silence" bottom: "x" top: "y"', [(2,)])


# ================================================================== Reshape
RESHAPE = 'name: "r" type: "Reshape" bottom: "x" top: "y" '


@pytest.mark.parametrize(
    "params, bottom, expected",
    [
        ("shape { dim: 0 dim: -1 }", (2, 3, 4), (2, 12)),
        ("shape { dim: -1 }", (2, 3, 4), (24,)),
        ("shape { dim: 3 dim: 1 } axis: 1 num_axes: 1", (2, 3, 4), (2, 3, 1, 4)),
        ("shape { dim: 1 } axis: -1", (2, 3), (2, 3, 1)),
        ("shape { dim: 1 } axis: 0 num_axes: 0", (2, 3), (1, 2, 3)),
        ("shape { dim: 0 dim: 2 dim: -1 } axis: 1", (2, 3, 4), (2, 3, 2, 2)),
        ("shape { }", (1, 1), ()),
    ],
)
def test_reshape_shapes(params, bottom, expected):
    layer = make_layer(RESHAPE + f"reshape_param {{ {params} }}", [bottom])
    assert layer.reshape([bottom]) == [expected]


def test_reshape_gradcheck():
    layer = make_layer(
        RESHAPE + "reshape_param { shape { dim: -1 dim: 2 } }", [(2, 3, 2)]
    )
    x = rand(2, 3, 2)
    assert torch.equal(layer.forward([x])[0], x.reshape(6, 2))
    gradcheck(lambda x: layer.forward([x])[0], x)


@pytest.mark.parametrize(
    "params, bottom, message",
    [
        ("shape { dim: -1 dim: -1 }", (2, 3), "at most one dimension can be inferred"),
        ("shape { dim: -2 dim: 3 }", (2, 3), "has a negative dimension"),
        (
            "shape { dim: 5 }",
            (2, 3),
            r"cannot reshape a bottom of shape 2 3 \(6\) to 5",
        ),
        ("shape { dim: 0 dim: 0 dim: 0 }", (2, 3), "no axis 2 to copy"),
        ("shape { dim: 4 dim: -1 }", (2, 3), "not a multiple of the product"),
        ("shape { dim: 1 } axis: 3", (2, 3), "axis 3 is out of range"),
        ("shape { dim: 1 } axis: -4", (2, 3), "axis -4 is out of range"),
        ("shape { dim: 1 } num_axes: -2", (2, 3), "num_axes is -2"),
        ("shape { dim: 1 } axis: 1 num_axes: 2", (2, 3), "past the 2 axes"),
    ],
)
def test_reshape_errors(params, bottom, message):
    with pytest.raises(LayerSetupError, match=message):
        make_layer(RESHAPE + f"reshape_param {{ {params} }}", [bottom])


def test_reshape_in_place_is_an_error():
    with pytest.raises(LayerSetupError, match="cannot run in place"):
        make_layer('name: "r" type: "Reshape" bottom: "x" top: "x"', [(2, 3)])


# ================================================================== Slice
def slice_layer(params, num_tops, shape):
    tops = " ".join(f'top: "t{i}"' for i in range(num_tops))
    return make_layer(f'name: "s" type: "Slice" bottom: "x" {tops} {params}', [shape])


def test_slice_by_hand():
    x = torch.arange(6.0).reshape(1, 6)
    parts = slice_along(x, 1, [1, 4])
    assert [p.tolist() for p in parts] == [[[0.0]], [[1.0, 2.0, 3.0]], [[4.0, 5.0]]]


def test_slice_equal_parts_and_legacy_dim():
    layer = slice_layer("", 3, (2, 6))
    assert layer.reshape([(2, 6)]) == [(2, 2), (2, 2), (2, 2)]
    legacy = slice_layer("slice_param { slice_dim: 0 }", 2, (4, 3))
    assert legacy.reshape([(4, 3)]) == [(2, 3), (2, 3)]


def test_slice_point_at_the_end_gives_an_empty_top():
    layer = slice_layer("slice_param { axis: 0 slice_point: 3 }", 2, (3, 2))
    assert layer.reshape([(3, 2)]) == [(3, 2), (0, 2)]


def test_slice_gradcheck():
    layer = slice_layer(
        "slice_param { axis: -1 slice_point: 1 slice_point: 3 }", 3, (2, 4)
    )
    weights = [torch.tensor(float(w), dtype=torch.float64) for w in (1, -2, 3)]
    gradcheck(
        lambda x: sum((w * t).sum() for w, t in zip(weights, layer.forward([x]))),
        rand(2, 4),
    )


@pytest.mark.parametrize(
    "params, num_tops, message",
    [
        ("slice_param { slice_point: 2 }", 3, "1 slice_point values for 3 tops"),
        ("slice_param { slice_point: 3 slice_point: 2 }", 3, "strictly increasing"),
        ("slice_param { slice_point: 0 }", 2, "positive and strictly increasing"),
        ("slice_param { slice_point: 7 }", 2, "slice_point 7 is past the end"),
        ("", 4, "4 tops do not evenly divide the sliced axis of size 6"),
        ("slice_param { axis: 1 slice_dim: 1 }", 2, "both axis and slice_dim"),
        ("slice_param { slice_dim: 2 }", 2, "slice_dim 2 is out of range"),
    ],
)
def test_slice_errors(params, num_tops, message):
    with pytest.raises(LayerSetupError, match=message):
        slice_layer(params, num_tops, (2, 6))


def test_slice_more_tops_than_axis_size_is_an_error():
    with pytest.raises(
        LayerSetupError, match="3 tops cannot be cut from an axis of size 2"
    ):
        slice_layer("slice_param { slice_point: 1 slice_point: 2 }", 3, (1, 2))


# ================================================================== Eltwise
def eltwise_layer(params, shapes):
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    return make_layer(f'name: "e" type: "Eltwise" {bottoms} top: "y" {params}', shapes)


def test_eltwise_by_hand():
    a = torch.tensor([1.0, -2.0, 3.0])
    b = torch.tensor([2.0, 5.0, -1.0])
    assert eltwise([a, b], PROD).tolist() == [2.0, -10.0, -3.0]
    assert eltwise([a, b], SUM).tolist() == [3.0, 3.0, 2.0]
    assert eltwise([a, b], SUM, [0.5, -2.0]).tolist() == [-3.5, -11.0, 3.5]
    assert eltwise([a, b], MAX).tolist() == [2.0, 5.0, 3.0]


def test_eltwise_max_gradient_goes_to_first_maximum():
    a = torch.tensor([1.0, 2.0, 0.0], requires_grad=True)
    b = torch.tensor([1.0, 1.0, 3.0], requires_grad=True)
    c = torch.tensor([0.0, 2.0, 3.0], requires_grad=True)
    eltwise([a, b, c], MAX).sum().backward()
    assert a.grad.tolist() == [1.0, 1.0, 0.0]
    assert b.grad.tolist() == [0.0, 0.0, 1.0]
    assert c.grad.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("operation", [PROD, SUM, MAX])
def test_eltwise_gradcheck(operation):
    coeffs = [0.5, -2.0, 1.5] if operation == SUM else None
    gradcheck(
        lambda a, b, c: eltwise([a, b, c], operation, coeffs),
        rand(2, 3),
        rand(2, 3, seed=1),
        rand(2, 3, seed=2),
    )


def test_eltwise_layer_accepts_stable_prod_grad():
    layer = eltwise_layer(
        "eltwise_param { operation: PROD stable_prod_grad: false }", [(2,), (2,)]
    )
    out = layer.forward([torch.tensor([2.0, 3.0]), torch.tensor([4.0, 0.5])])
    assert out[0].tolist() == [8.0, 1.5]


def test_eltwise_coeff_count_is_an_error():
    with pytest.raises(LayerSetupError, match="3 coeff values for 2 bottoms"):
        eltwise_layer("eltwise_param { coeff: 1 coeff: 2 coeff: 3 }", [(2,), (2,)])


def test_eltwise_prod_with_coeff_is_an_error():
    with pytest.raises(LayerSetupError, match="coeff is only used by operation SUM"):
        eltwise_layer(
            "eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2,), (2,)]
        )


def test_eltwise_shape_mismatch_names_both_shapes():
    with pytest.raises(
        LayerSetupError, match=r"bottom 0 has 2 3 \(6\) and bottom 1 has 3 2 \(6\)"
    ):
        eltwise_layer("", [(2, 3), (3, 2)])


def test_eltwise_one_bottom_is_an_error():
    with pytest.raises(LayerSetupError, match="at least 2 bottom blobs"):
        eltwise_layer("", [(2,)])


# ================================================================== Tile
def test_tile_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert tile(x, 1, 2).tolist() == [[1.0, 2.0, 1.0, 2.0], [3.0, 4.0, 3.0, 4.0]]
    assert tile(x, 0, 2).tolist() == [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.0]]


def test_tile_gradcheck():
    layer = make_layer(
        'name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: -2 tiles: 3 }',
        [(2, 3, 2)],
    )
    assert layer.reshape([(2, 3, 2)]) == [(2, 9, 2)]
    gradcheck(lambda x: layer.forward([x])[0], rand(2, 3, 2))


@pytest.mark.parametrize(
    "params, message",
    [
        ("", "tile_param.tiles is missing"),
        ("tile_param { tiles: 0 }", "must be positive"),
    ],
)
def test_tile_errors(params, message):
    with pytest.raises(LayerSetupError, match=message):
        make_layer(f'name: "t" type: "Tile" bottom: "x" top: "y" {params}', [(2, 3)])


# ================================================================== Reduction
X23 = [[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]]


@pytest.mark.parametrize(
    "operation, axis, coeff, expected",
    [
        (R.SUM, 0, 1.0, 3.5),
        (R.SUM, 1, 2.0, [4.0, 3.0]),
        (R.ASUM, 1, 1.0, [6.0, 9.5]),
        (R.SUMSQ, 1, 1.0, [14.0, 41.25]),
        (R.MEAN, 1, 1.0, [2.0 / 3.0, 0.5]),
        (R.MEAN, 0, 3.0, 1.75),
    ],
)
def test_reduction_by_hand(operation, axis, coeff, expected):
    y = reduction(torch.tensor(X23, dtype=torch.float64), operation, axis, coeff)
    np.testing.assert_allclose(y.numpy(), expected)


def test_reduction_layer_top_shape():
    layer = make_layer(
        'name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { axis: -2 }',
        [(2, 3, 4, 5)],
    )
    assert layer.reshape([(2, 3, 4, 5)]) == [(2, 3)]
    default = make_layer('name: "r" type: "Reduction" bottom: "x" top: "y"', [(2, 3)])
    assert default.reshape([(2, 3)]) == [()]


@pytest.mark.parametrize("operation", [R.SUM, R.ASUM, R.SUMSQ, R.MEAN])
def test_reduction_gradcheck(operation):
    gradcheck(lambda x: reduction(x, operation, 1, 0.7), rand(2, 3, 4))


def test_reduction_asum_gradient_at_zero_is_zero():
    x = torch.tensor([0.0, -1.0, 2.0], requires_grad=True)
    reduction(x, R.ASUM).backward()
    assert x.grad.tolist() == [0.0, -1.0, 1.0]


# ================================================================== ArgMax
def test_argmax_ties_list_larger_index_first():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 4.0, 4.0, 6.0]])
    assert argmax(x, 2).tolist() == [[[2.0, 1.0]], [[3.0, 0.0]]]
    assert argmax(x, 2, out_max_val=True).tolist() == [
        [[2.0, 1.0], [3.0, 3.0]],
        [[3.0, 0.0], [6.0, 5.0]],
    ]


def test_argmax_with_axis():
    x = torch.tensor([[1.0, 7.0, 2.0], [4.0, 0.0, 9.0]])
    assert argmax(x, 1, axis=0).tolist() == [[1.0, 0.0, 1.0]]
    assert argmax(x, 2, out_max_val=True, axis=1).tolist() == [[7.0, 2.0], [9.0, 4.0]]


def test_argmax_layer_shapes():
    text = 'name: "a" type: "ArgMax" bottom: "x" top: "y" '
    assert make_layer(text, [(3, 6)]).reshape([(3, 6)]) == [(3, 1, 1)]
    four = make_layer(
        text + "argmax_param { out_max_val: true top_k: 2 }", [(2, 3, 4, 5)]
    )
    assert four.reshape([(2, 3, 4, 5)]) == [(2, 2, 2, 1)]
    axis = make_layer(text + "argmax_param { axis: 1 top_k: 2 }", [(2, 3, 4)])
    assert axis.reshape([(2, 3, 4)]) == [(2, 2, 4)]


def test_argmax_flattens_each_sample():
    layer = make_layer('name: "a" type: "ArgMax" bottom: "x" top: "y"', [(2, 2, 2)])
    x = torch.tensor([[[0.0, 1.0], [5.0, 2.0]], [[9.0, 1.0], [0.0, 2.0]]])
    assert layer.forward([x])[0].tolist() == [[[2.0]], [[0.0]]]


def test_argmax_layer_has_no_gradient():
    assert layer_class("ArgMax").can_backward is False
    x = rand(2, 3)
    assert not argmax(x, 1).requires_grad


@pytest.mark.parametrize(
    "params, message",
    [
        ("argmax_param { top_k: 0 }", "top_k is 0; it must be at least 1"),
        ("argmax_param { top_k: 7 }", "larger than the 6 entries per sample"),
        ("argmax_param { top_k: 3 axis: 0 }", "larger than axis 0"),
        ("argmax_param { axis: 2 }", "axis 2 is out of range"),
    ],
)
def test_argmax_errors(params, message):
    with pytest.raises(LayerSetupError, match=message):
        make_layer(f'name: "a" type: "ArgMax" bottom: "x" top: "y" {params}', [(2, 6)])


# ================================================================== Filter
FILTER_NET = input_layers(x=(4, 2), z=(4,), s=(4, 1)) + (
    'layer { name: "f" type: "Filter" bottom: "x" bottom: "z" bottom: "s" '
    'top: "fx" top: "fz" }\n'
    'layer { name: "r" type: "Reduction" bottom: "fx" top: "sum" loss_weight: 1 }\n'
)


def test_filter_by_hand():
    x = torch.arange(8.0).reshape(4, 2)
    kept = filter_batch([x], torch.tensor([1.0, 0.0, -2.0, 0.0]))
    assert kept[0].tolist() == [[0.0, 1.0], [4.0, 5.0]]


def test_filter_gradient_reaches_kept_items_only():
    x = rand(4, 2)
    selector = torch.tensor(
        [0.0, 1.0, 0.0, 1.0], dtype=torch.float64, requires_grad=True
    )
    layer = make_layer(
        'name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y"', [(4, 2), (4,)]
    )
    layer.forward([x, selector])[0].sum().backward()
    assert x.grad.tolist() == [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    assert selector.grad is None
    gradcheck(lambda x: layer.forward([x, selector.detach()])[0], rand(4, 2))


def test_filter_net_shape_follows_the_selector():
    net = make_net("force_backward: true\n" + FILTER_NET, dtype=torch.float64)
    assert net.blobs["fx"].shape == (4, 2)
    net.blobs["x"].data[...] = np.arange(8).reshape(4, 2)
    net.blobs["z"].data[...] = [10, 11, 12, 13]
    net.blobs["s"].data[...] = [[0], [1], [1], [0]]
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["fx"].data, [[2, 3], [4, 5]])
    np.testing.assert_array_equal(net.blobs["fz"].data, [11, 12])
    assert net.loss == pytest.approx(14.0)
    np.testing.assert_array_equal(net.blobs["x"].diff, [[0, 0], [1, 1], [1, 1], [0, 0]])
    np.testing.assert_array_equal(net.blobs["s"].diff, np.zeros((4, 1)))
    assert net.layer_dict["f"].allow_force_backward(2) is False


def test_filter_top_count_is_an_error():
    with pytest.raises(LayerSetupError, match="has 3 bottoms and 1 tops"):
        make_layer(
            'name: "f" type: "Filter" bottom: "x" bottom: "z" bottom: "s" top: "y"',
            [(4, 2), (4,), (4,)],
        )


def test_filter_selector_shape_is_an_error():
    with pytest.raises(
        LayerSetupError, match=r"selector \(last bottom\) has shape 4 2"
    ):
        make_layer(
            'name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y"',
            [(4, 2), (4, 2)],
        )


def test_filter_first_dimension_mismatch_is_an_error():
    with pytest.raises(LayerSetupError, match="the selector has 3 items"):
        make_layer(
            'name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y"',
            [(4, 2), (3, 1)],
        )


# ================================================================== Embed
EMBED = (
    'name: "e" type: "Embed" bottom: "x" top: "y" '
    "embed_param { input_dim: 4 num_output: 2 "
    'weight_filler { type: "gaussian" } bias_filler { type: "constant" value: 0.5 } }'
)


def test_embed_by_hand_and_repeated_rows():
    weight = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], requires_grad=True)
    bias = torch.tensor([10.0, 20.0], requires_grad=True)
    indices = torch.tensor([[2.0, 0.0], [2.0, 2.0]])
    y = embed(indices, weight, bias)
    assert y.tolist() == [[[14.0, 25.0], [10.0, 21.0]], [[14.0, 25.0], [14.0, 25.0]]]
    y.sum().backward()
    assert weight.grad.tolist() == [[1.0, 1.0], [0.0, 0.0], [3.0, 3.0]]
    assert bias.grad.tolist() == [4.0, 4.0]


def test_embed_layer_blobs_and_shape():
    layer = make_layer(EMBED, [(3, 5)])
    assert [tuple(b.shape) for b in layer.blobs] == [(4, 2), (2,)]
    assert layer.reshape([(3, 5)]) == [(3, 5, 2)]
    assert layer.blobs[1].tolist() == [0.5, 0.5]
    assert layer.allow_force_backward(0) is False


def test_embed_gradcheck_weights():
    indices = torch.tensor([3.0, 1.0, 3.0, 0.0], dtype=torch.float64)
    gradcheck(lambda w, b: embed(indices, w, b), rand(4, 2), rand(2, seed=1))


@pytest.mark.parametrize(
    "value, message",
    [
        (1.5, "Embed indices must be integers, but 1.5 is not"),
        (4.0, r"Embed indices must be in \[0, 3\], but 4 is given"),
        (-1.0, r"Embed indices must be in \[0, 3\], but -1 is given"),
    ],
)
def test_embed_bad_index_is_an_error(value, message):
    layer = make_layer(EMBED, [(3,)])
    with pytest.raises(LayerSetupError, match=message):
        layer.forward([torch.tensor([0.0, value, 1.0], dtype=torch.float64)])


@pytest.mark.parametrize(
    "params, message",
    [
        ("embed_param { num_output: 2 }", "input_dim must be positive"),
        ("embed_param { input_dim: 3 }", "num_output must be positive"),
    ],
)
def test_embed_missing_sizes_are_errors(params, message):
    with pytest.raises(LayerSetupError, match=message):
        make_layer(f'name: "e" type: "Embed" bottom: "x" top: "y" {params}', [(3,)])


# ================================================================== Parameter
def test_parameter_layer_is_learned():
    net = make_net(
        'layer { name: "p" type: "Parameter" top: "w" '
        "parameter_param { shape { dim: 2 dim: 3 } } }\n"
        'layer { name: "r" type: "Reduction" bottom: "w" top: "s" loss_weight: 2 '
        "reduction_param { operation: SUMSQ } }"
    )
    assert net.params["p"][0].data.shape == (2, 3)
    np.testing.assert_array_equal(net.params["p"][0].data, np.zeros((2, 3)))
    net.params["p"][0].data[...] = np.arange(6).reshape(2, 3)
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["w"].data, np.arange(6).reshape(2, 3))
    assert net.loss == pytest.approx(2 * 55)
    np.testing.assert_allclose(net.params["p"][0].diff, 4 * np.arange(6).reshape(2, 3))


def test_parameter_gradcheck():
    layer = make_layer(
        'name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 3 } }', []
    )

    def forward(weight):
        layer.blobs[0] = weight
        return layer.forward([])[0] * 2

    gradcheck(forward, rand(3))


def test_parameter_with_a_bottom_is_an_error():
    with pytest.raises(LayerSetupError, match="exactly 0 bottom blobs"):
        make_layer('name: "p" type: "Parameter" bottom: "x" top: "w"', [(2,)])


# ================================================================== BatchReindex
REINDEX = 'name: "b" type: "BatchReindex" bottom: "x" bottom: "i" top: "y"'


def test_batch_reindex_by_hand_and_accumulation():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    y = batch_reindex(x, torch.tensor([2.0, 0.0, 2.0]))
    assert y.tolist() == [[5.0, 6.0], [1.0, 2.0], [5.0, 6.0]]
    y.sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]]


def test_batch_reindex_layer_gradcheck():
    layer = make_layer(REINDEX, [(3, 2), (4,)])
    assert layer.reshape([(3, 2), (4,)]) == [(4, 2)]
    assert layer.allow_force_backward(1) is False
    indices = torch.tensor([1.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    gradcheck(lambda x: layer.forward([x, indices])[0], rand(3, 2))


@pytest.mark.parametrize(
    "indices, message",
    [
        ([0.0, 3.0], r"BatchReindex indices must be in \[0, 2\], but 3 is given"),
        ([-1.0, 0.0], r"BatchReindex indices must be in \[0, 2\], but -1 is given"),
        ([0.5, 0.0], "BatchReindex indices must be integers, but 0.5 is not"),
    ],
)
def test_batch_reindex_bad_index_is_an_error(indices, message):
    layer = make_layer(REINDEX, [(3, 2), (2,)])
    with pytest.raises(LayerSetupError, match=message):
        layer.forward([torch.zeros(3, 2, dtype=torch.float64), torch.tensor(indices)])


def test_batch_reindex_index_axes_is_an_error():
    with pytest.raises(LayerSetupError, match="must have exactly one axis"):
        make_layer(REINDEX, [(3, 2), (2, 1)])


def test_batch_reindex_scalar_data_is_an_error():
    with pytest.raises(
        LayerSetupError, match="data bottom must have at least one axis"
    ):
        make_layer(REINDEX, [(), (2,)])


def test_parameter_negative_dimension_is_an_error():
    with pytest.raises(
        LayerSetupError, match=r"shape \[2, -1\] has a negative dimension"
    ):
        make_layer(
            'name: "p" type: "Parameter" top: "w" '
            "parameter_param { shape { dim: 2 dim: -1 } }",
            [],
        )


def test_eltwise_max_ignores_coeff_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="brewnet.layers.common"):
        layer = eltwise_layer(
            "eltwise_param { operation: MAX coeff: 2 coeff: 3 }", [(2,)] * 2
        )
    assert "coeff is ignored for operation MAX" in caplog.text
    out = layer.forward([torch.tensor([1.0, 5.0]), torch.tensor([2.0, 4.0])])
    assert out[0].tolist() == [2.0, 5.0]
