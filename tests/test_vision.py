"""Tests of the vision layers: Convolution, Deconvolution, Im2col, Pooling, LRN, SPP
and Crop.

Values come from three sources: the arrays BVLC Caffe computed (tests/caffe_reference),
small cases worked out by hand, and plain loop implementations of Caffe's formulas
written here. Gradients are checked against finite differences in float64.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import brewnet
from brewnet.errors import LayerSetupError
from brewnet.layers import layer_class, layer_type_list
from brewnet.layers import vision
from brewnet.layers.vision import ConvGeometry
from brewnet.proto import caffe_pb2
from reference_case import REFERENCE, assert_close, run_case

VISION_CASES = [
    "conv_group_dilation",
    "conv_rect_kernel",
    "deconv",
    "pool_ave_pad",
    "pool_global_ave",
    "pool_max_ceil",
    "lrn_across",
    "lrn_within",
    "im2col",
    "spp",
    "crop",
]

FLT_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run torch on one thread, because these tensors are tiny. On a busy two-core
    machine, two threads made test_gradcheck_convolution take 9.5 s, not 0.13 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_layer(text, bottom_shapes, phase=brewnet.TRAIN, dtype=torch.float64):
    """Build, set up and reshape one layer from its prototxt text."""
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = layer_class(param.type)(param, phase=phase, dtype=dtype)
    layer.check_blob_counts(len(param.bottom), len(param.top))
    layer.setup([tuple(s) for s in bottom_shapes])
    layer.top_shapes = layer.reshape([tuple(s) for s in bottom_shapes])
    return layer


def geometry(kernel, stride=None, pad=None, dilation=None):
    n = len(kernel)
    return ConvGeometry(
        tuple(kernel),
        tuple(stride or (1,) * n),
        tuple(pad or (0,) * n),
        tuple(dilation or (1,) * n),
    )


def tensor(values, requires_grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)


def gradcheck(function, *inputs):
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6)


# ============================================================ Caffe's reference values


@pytest.mark.skipif("Power" not in layer_type_list(), reason="needs the Power layer")
@pytest.mark.parametrize("name", VISION_CASES)
def test_reference_case_through_net(name):
    run_case("layers", name)


@pytest.mark.parametrize("name", VISION_CASES)
def test_reference_case_layer_alone(name):
    """Run the case's layer 'L' without the net: forward, then backward from diff/y."""
    folder = REFERENCE / "layers" / name
    data = np.load(folder / "data.npz")
    net_param = text_format.Parse(
        (folder / "net.prototxt").read_text(), caffe_pb2.NetParameter()
    )
    param = next(p for p in net_param.layer if p.name == "L")
    bottoms = [
        torch.tensor(data[f"input/{b}"], requires_grad=True) for b in param.bottom
    ]
    layer = make_layer(
        text_format.MessageToString(param), [b.shape for b in bottoms],
        dtype=torch.float32,
    )
    for index, blob in enumerate(layer.blobs):
        layer.blobs[index] = torch.tensor(
            data[f"param/L/{index}"], requires_grad=True
        )

    (top,) = layer.forward(bottoms)
    assert_close(top.detach().numpy(), data["data/y"], f"{name}: data of y")
    top.backward(torch.tensor(data["diff/y"]))
    for blob_name, bottom in zip(param.bottom, bottoms):
        grad = bottom.grad if bottom.grad is not None else torch.zeros_like(bottom)
        assert_close(grad.numpy(), data[f"diff/{blob_name}"], f"{name}: diff of {blob_name}")
    for index, blob in enumerate(layer.blobs):
        assert_close(
            blob.grad.numpy(), data[f"param_diff/L/{index}"], f"{name}: param diff {index}"
        )


# ===================================================================== convolution


def naive_convolution(x, weight, bias, geo, group):
    """Caffe's convolution as plain loops over an (N, C, spatial...) array."""
    x, weight = np.asarray(x), np.asarray(weight)
    num, channels = x.shape[:2]
    spatial = x.shape[2:]
    num_output = weight.shape[0]
    out_shape = vision.conv_output_shape(spatial, geo)
    y = np.zeros((num, num_output) + out_shape)
    per_group_in = channels // group
    per_group_out = num_output // group
    for n, o in itertools.product(range(num), range(num_output)):
        g = o // per_group_out
        for position in itertools.product(*(range(d) for d in out_shape)):
            total = 0.0 if bias is None else float(bias[o])
            for c in range(per_group_in):
                for tap in itertools.product(*(range(k) for k in geo.kernel)):
                    source = [
                        p * s - pad + t * d
                        for p, s, pad, t, d in zip(
                            position, geo.stride, geo.pad, tap, geo.dilation
                        )
                    ]
                    if all(0 <= i < size for i, size in zip(source, spatial)):
                        value = x[(n, g * per_group_in + c) + tuple(source)]
                        total += weight[(o, c) + tap] * value
            y[(n, o) + position] = total
    return y


@pytest.mark.parametrize(
    "spatial, geo, group",
    [
        ((7,), geometry((3,), (2,), (1,), (2,)), 1),
        ((6, 5), geometry((3, 2), (2, 1), (1, 0), (1, 2)), 2),
        ((5, 4, 4), geometry((2, 3, 2), (1, 2, 1), (1, 0, 1), (2, 1, 1)), 1),
        ((4, 3), geometry((2, 2), (1, 1), (0, 0), (1, 1)), 4),
    ],
)
def test_convolution_matches_loops(spatial, geo, group):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4) + spatial, generator=generator, dtype=torch.float64)
    weight = torch.randn((6 if group != 4 else 4, 4 // group) + geo.kernel,
                         generator=generator, dtype=torch.float64)
    bias = torch.randn(weight.shape[0], generator=generator, dtype=torch.float64)
    y = vision.convolution(x, weight, bias, geo, group)
    np.testing.assert_allclose(
        y.numpy(), naive_convolution(x, weight, bias, geo, group), rtol=1e-12, atol=1e-12
    )


def test_convolution_by_hand_2d():
    x = tensor([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]])
    ones = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    y = vision.convolution(x, ones, tensor([0.5]), geometry((2, 2)))
    np.testing.assert_array_equal(y.numpy(), [[[[12.5, 16.5], [24.5, 28.5]]]])
    # Dilation 2 makes the 2 x 2 kernel read the four corners: 1 + 3 + 7 + 9.
    y = vision.convolution(x, ones, None, geometry((2, 2), dilation=(2, 2)))
    np.testing.assert_array_equal(y.numpy(), [[[[20.0]]]])


def test_convolution_3d_by_hand():
    x = torch.arange(1, 9, dtype=torch.float64).reshape(1, 1, 2, 2, 2)
    weight = torch.ones(2, 1, 2, 2, 2, dtype=torch.float64)
    weight[1] = 0
    weight[1, 0, 1, 1, 1] = 1  # picks x[1, 1, 1] = 8
    y = vision.convolution(x, weight, tensor([0.0, -1.0]), geometry((2, 2, 2)))
    np.testing.assert_array_equal(y.numpy().reshape(-1), [36.0, 7.0])
    # Padding 1 with stride 2: the first output reads only x[0, 0, 0] = 1.
    y = vision.convolution(x, weight[:1], None, geometry((2, 2, 2), (2, 2, 2), (1, 1, 1)))
    assert y.shape == (1, 1, 2, 2, 2)
    assert y[0, 0, 0, 0, 0].item() == 1.0
    assert y[0, 0, 1, 1, 1].item() == 8.0


def test_convolution_kernel_overhang_rounds_toward_zero():
    # Caffe: (2 - 3) / 2 + 1 = 1 with C++ division, so one output over [1, 2, 0].
    x = tensor([[[1.0, 2.0]]])
    weight = tensor([[[1.0, 10.0, 100.0]]])
    y = vision.convolution(x, weight, None, geometry((3,), (2,)))
    np.testing.assert_array_equal(y.numpy(), [[[21.0]]])


def test_convolution_channel_axis_2():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, 4, 3, generator=generator, dtype=torch.float64)
    y = vision.convolution(x, weight, None, geometry((3,)), axis=2)
    expected = vision.convolution(x.reshape(6, 4, 6), weight, None, geometry((3,)))
    assert y.shape == (2, 3, 5, 4)
    np.testing.assert_allclose(y.numpy(), expected.reshape(2, 3, 5, 4).numpy())


def test_convolution_without_spatial_axes_is_grouped_matmul():
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    bias = tensor([1.0, 2.0, 3.0, 4.0])
    y = vision.convolution(x, weight, bias, geometry(()), group=2)
    expected = torch.cat([x[:, :3] @ weight[:2].T, x[:, 3:] @ weight[2:].T], 1) + bias
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-12)


def test_convolution_layer_blobs_and_top_shape():
    layer = make_layer(
        'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
        "num_output: 6 kernel_size: 3 stride: 2 pad: 1 dilation: 2 group: 2 "
        'weight_filler { type: "constant" value: 0.5 } '
        'bias_filler { type: "constant" value: 0.25 } }',
        [(2, 4, 9, 8)],
    )
    assert [tuple(b.shape) for b in layer.blobs] == [(6, 2, 3, 3), (6,)]
    assert layer.top_shapes == [(2, 6, 4, 3)]
    assert torch.all(layer.blobs[0] == 0.5)
    assert torch.all(layer.blobs[1] == 0.25)


def test_convolution_layer_defaults():
    layer = make_layer(
        'name: "c" type: "Convolution" bottom: "x" top: "y" '
        "convolution_param { num_output: 2 kernel_size: 2 bias_term: false }",
        [(1, 3, 4, 4)],
    )
    assert len(layer.blobs) == 1
    assert torch.all(layer.blobs[0] == 0)  # Caffe's default filler is constant 0
    assert layer.geometry == geometry((2, 2))


def test_convolution_layer_rect_fields_and_per_axis_values():
    layer = make_layer(
        'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
        "num_output: 1 kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_w: 1 }",
        [(1, 1, 6, 7)],
    )
    assert layer.geometry == geometry((3, 2), (1, 2), (0, 1))
    assert layer.top_shapes == [(1, 1, 4, 4)]
    layer = make_layer(
        'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
        "num_output: 1 kernel_size: 1 kernel_size: 2 kernel_size: 3 "
        "stride: 1 stride: 2 stride: 1 dilation: 2 }",
        [(1, 1, 5, 6, 7)],
    )
    assert layer.geometry == geometry((1, 2, 3), (1, 2, 1), (0, 0, 0), (2, 2, 2))
    assert layer.top_shapes == [(1, 1, 5, 2, 3)]


def test_convolution_layer_several_bottoms_share_weights():
    layer = make_layer(
        'name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" '
        'convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "constant" value: 1 } }',
        [(1, 3, 2, 2), (1, 3, 2, 2)],
    )
    a = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    ya, yb = layer.forward([a, 2 * a])
    np.testing.assert_array_equal(ya.numpy(), np.full((1, 2, 2, 2), 3.0))
    np.testing.assert_array_equal(yb.numpy(), np.full((1, 2, 2, 2), 6.0))


# =================================================================== deconvolution


def test_deconvolution_output_size_and_weight_layout():
    layer = make_layer(
        'name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param { '
        "num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 }",
        [(2, 4, 4, 5)],
    )
    assert [tuple(b.shape) for b in layer.blobs] == [(4, 3, 4, 4), (6,)]
    # stride * (in - 1) + kernel - 2 * pad: 2 * 3 + 4 - 2 = 8 and 2 * 4 + 4 - 2 = 10.
    assert layer.top_shapes == [(2, 6, 8, 10)]


@pytest.mark.parametrize(
    "spatial, geo, group",
    [
        ((4, 5), geometry((4, 4), (2, 2), (1, 1)), 2),
        ((3, 4), geometry((3, 2), (1, 2), (1, 0), (2, 1)), 1),
        ((3, 2, 3), geometry((2, 2, 3), (2, 1, 1), (0, 0, 1)), 2),
    ],
)
def test_deconvolution_is_adjoint_of_convolution(spatial, geo, group):
    """<deconv(x, W), y> equals <x, conv(y, W)> with the same weight tensor."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn((2, 4) + spatial, generator=generator, dtype=torch.float64)
    weight = torch.randn((4, 6 // group) + geo.kernel, generator=generator,
                         dtype=torch.float64)
    up = vision.deconvolution(x, weight, None, geo, group)
    y = torch.randn(up.shape, generator=generator, dtype=torch.float64)
    down = vision.convolution(y, weight, None, geo, group)
    assert down.shape == x.shape
    assert torch.allclose((up * y).sum(), (x * down).sum(), rtol=1e-12)


BILINEAR_DECONV = """
name: "upsample"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 2 dim: 2 } } }
layer { name: "up" type: "Deconvolution" bottom: "x" top: "y"
  param { lr_mult: 0 }
  convolution_param { num_output: 2 group: 2 kernel_size: 4 stride: 2 pad: 1
    bias_term: false weight_filler { type: "bilinear" } } }
"""


def test_deconvolution_bilinear_upsampling_by_hand(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(BILINEAR_DECONV)
    net = brewnet.Net(str(path), brewnet.TEST)
    assert net.params["up"][0].data.shape == (2, 1, 4, 4)
    net.blobs["x"].data[0, 0] = 1.0
    net.blobs["x"].data[0, 1] = [[1.0, 0.0], [0.0, 0.0]]
    net.forward()
    y = net.blobs["y"].data
    # Kernel rows [0.25, 0.75, 0.75, 0.25]; a constant image keeps its value inside
    # and drops to 0.75 at the border.
    edge = np.array([0.75, 1.0, 1.0, 0.75])
    np.testing.assert_allclose(y[0, 0], np.outer(edge, edge), rtol=1e-6)
    # A single pixel spreads as [0.75, 0.75, 0.25, 0] per axis; no channel mixing.
    spread = np.array([0.75, 0.75, 0.25, 0.0])
    np.testing.assert_allclose(y[0, 1], np.outer(spread, spread), rtol=1e-6)


# ========================================================================== im2col


def test_im2col_by_hand():
    x = tensor([[[[1, 2], [3, 4]]]])
    columns = vision.im2col(x, geometry((2, 2), pad=(1, 1)))
    assert columns.shape == (1, 4, 3, 3)
    np.testing.assert_array_equal(columns[0, 0].numpy(), [[0, 0, 0], [0, 1, 2], [0, 3, 4]])
    np.testing.assert_array_equal(columns[0, 3].numpy(), [[1, 2, 0], [3, 4, 0], [0, 0, 0]])
    x = torch.arange(1, 10, dtype=torch.float64).reshape(1, 1, 3, 3)
    columns = vision.im2col(x, geometry((2, 2), dilation=(2, 2)))
    np.testing.assert_array_equal(columns.reshape(-1).numpy(), [1, 3, 7, 9])


@pytest.mark.parametrize(
    "spatial, geo",
    [
        ((7,), geometry((3,), (2,), (2,), (1,))),
        ((6, 5), geometry((3, 2), (2, 1), (1, 1), (1, 2))),
        ((4, 3, 5), geometry((2, 2, 3), (1, 2, 1), (1, 0, 1), (1, 1, 2))),
        ((2,), geometry((3,), (2,))),
    ],
)
def test_im2col_times_weights_is_convolution(spatial, geo):
    generator = torch.Generator().manual_seed(8)
    x = torch.randn((2, 3) + spatial, generator=generator, dtype=torch.float64)
    weight = torch.randn((4, 3) + geo.kernel, generator=generator, dtype=torch.float64)
    columns = vision.im2col(x, geo)
    product = torch.einsum("ok,nk...->no...", weight.reshape(4, -1), columns)
    expected = vision.convolution(x, weight, None, geo)
    np.testing.assert_allclose(product.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


def test_im2col_layer_top_shape():
    layer = make_layer(
        'name: "i" type: "Im2col" bottom: "x" top: "y" '
        "convolution_param { kernel_size: 3 stride: 2 dilation: 2 pad: 1 }",
        [(2, 3, 9, 8)],
    )
    # (9 + 2 - 5) / 2 + 1 = 4 and (8 + 2 - 5) / 2 + 1 = 3.
    assert layer.top_shapes == [(2, 27, 4, 3)]


# ========================================================================= pooling


def naive_pool(x, method, kernel, stride, pad, ceil_mode=True):
    """Caffe's MAX and AVE pooling loops; return (top, mask, backward function)."""
    x = np.asarray(x, dtype=np.float64)
    num, channels, height, width = x.shape
    out_h, out_w = vision.pool_output_shape((height, width), kernel, stride, pad, ceil_mode)
    top = np.zeros((num, channels, out_h, out_w))
    mask = np.full(top.shape, -1.0)
    windows = {}
    for ph, pw in itertools.product(range(out_h), range(out_w)):
        h0, w0 = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
        if method == "MAX":
            h1, w1 = min(h0 + kernel[0], height), min(w0 + kernel[1], width)
            divisor = 1.0
        else:
            h1 = min(h0 + kernel[0], height + pad[0])
            w1 = min(w0 + kernel[1], width + pad[1])
            divisor = (h1 - h0) * (w1 - w0)
            h1, w1 = min(h1, height), min(w1, width)
        h0, w0 = max(h0, 0), max(w0, 0)
        windows[ph, pw] = (h0, h1, w0, w1, divisor)
        for n, c in itertools.product(range(num), range(channels)):
            if method == "MAX":
                best = -FLT_MAX
                for h, w in itertools.product(range(h0, h1), range(w0, w1)):
                    if x[n, c, h, w] > best:
                        best, mask[n, c, ph, pw] = x[n, c, h, w], h * width + w
                top[n, c, ph, pw] = best
            else:
                top[n, c, ph, pw] = x[n, c, h0:h1, w0:w1].sum() / divisor

    def backward(top_diff):
        diff = np.zeros_like(x)
        for (ph, pw), (h0, h1, w0, w1, divisor) in windows.items():
            for n, c in itertools.product(range(num), range(channels)):
                g = top_diff[n, c, ph, pw]
                if method == "MAX":
                    index = int(mask[n, c, ph, pw])
                    if index >= 0:
                        diff[n, c, index // width, index % width] += g
                else:
                    diff[n, c, h0:h1, w0:w1] += g / divisor
        return diff

    return top, mask, backward


POOL_GEOMETRIES = [
    ((8, 7), (3, 3), (2, 2), (0, 0)),
    ((7, 6), (3, 3), (2, 2), (1, 1)),
    ((3, 3), (2, 2), (2, 2), (1, 1)),
    ((6, 7), (3, 2), (1, 2), (1, 0)),
    ((5, 5), (2, 3), (3, 2), (0, 1)),
    ((4, 4), (4, 4), (1, 1), (0, 0)),
    ((5, 4), (2, 2), (2, 2), (0, 0)),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape, kernel, stride, pad", POOL_GEOMETRIES)
def test_pooling_matches_caffe_loops_with_ties(method, shape, kernel, stride, pad):
    generator = torch.Generator().manual_seed(11)
    # Values from {0, 1, 2} make many ties; Caffe keeps the first maximum.
    x = torch.randint(0, 3, (2, 2) + shape, generator=generator).to(torch.float64)
    x.requires_grad_(True)
    top, mask, backward = naive_pool(x.detach(), method, kernel, stride, pad)
    if method == "MAX":
        y, y_mask = vision.max_pool2d(x, kernel, stride, pad)
        np.testing.assert_array_equal(y_mask.numpy(), mask)
    else:
        y = vision.ave_pool2d(x, kernel, stride, pad)
    np.testing.assert_allclose(y.detach().numpy(), top, rtol=1e-12)
    top_diff = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    y.backward(top_diff)
    np.testing.assert_allclose(x.grad.numpy(), backward(top_diff.numpy()), rtol=1e-12)


def test_max_pooling_by_hand():
    x = tensor([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]])
    values, mask = vision.max_pool2d(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(values.numpy(), [[[[5, 6], [8, 9]]]])
    np.testing.assert_array_equal(mask.numpy(), [[[[4, 5], [7, 8]]]])


def test_max_pooling_tie_sends_gradient_to_first():
    x = tensor([[[[1, 3, 3, 2], [3, 0, 1, 3]]]], requires_grad=True)
    values, mask = vision.max_pool2d(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(values.detach().numpy(), [[[[3, 3]]]])
    np.testing.assert_array_equal(mask.numpy(), [[[[1, 2]]]])
    values.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[[[0, 1, 1, 0], [0, 0, 0, 0]]]])


def test_ave_pooling_divisor_clipped_to_padded_image():
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    y = vision.ave_pool2d(x, (3, 3), (2, 2), (1, 1))
    # Rows covered per window [2, 3, 1], window sizes clipped to the padded image
    # [3, 3, 2]. (count_include_pad=False would give all ones.)
    ratio = np.array([2 / 3, 1.0, 1 / 2])
    np.testing.assert_allclose(y[0, 0].numpy(), np.outer(ratio, ratio), rtol=1e-12)


def test_pooling_last_window_must_start_inside_image():
    # ceil((3 + 2 - 2) / 2) + 1 = 3, but the third window would start in the padding.
    assert vision.pool_output_shape((3, 3), (2, 2), (2, 2), (1, 1)) == (2, 2)
    # The rule applies to both axes when any pad is set: width 3 becomes 2 here...
    assert vision.pool_output_shape((4, 4), (2, 1), (2, 2), (1, 0)) == (3, 2)
    # ...and without padding the empty last window stays, outputting -FLT_MAX.
    assert vision.pool_output_shape((4, 4), (2, 1), (2, 2), (0, 0)) == (2, 3)
    values, mask = vision.max_pool2d(torch.ones(1, 1, 4, 4), (2, 1), (2, 2))
    assert values[0, 0, 0, 2].item() == -FLT_MAX
    assert mask[0, 0, 0, 2].item() == -1


def test_pooling_floor_round_mode():
    assert vision.pool_output_shape((3, 3), (2, 2), (2, 2), (0, 0), ceil_mode=False) == (1, 1)
    layer = make_layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" '
        "pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }",
        [(1, 1, 5, 5)],
    )
    assert layer.top_shapes == [(1, 1, 2, 2)]


def test_global_pooling():
    x = torch.arange(24, dtype=torch.float64).reshape(1, 2, 3, 4)
    ave = make_layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" '
        "pooling_param { pool: AVE global_pooling: true }",
        [x.shape],
    )
    np.testing.assert_allclose(ave.forward([x])[0].reshape(-1).numpy(), [5.5, 17.5])
    maximum = make_layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" top: "mask" '
        "pooling_param { global_pooling: true }",
        [x.shape],
    )
    values, mask = maximum.forward([x])
    np.testing.assert_array_equal(values.reshape(-1).numpy(), [11, 23])
    np.testing.assert_array_equal(mask.reshape(-1).numpy(), [11, 11])


def test_pooling_layer_mask_top_through_net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(
        'layer { name: "x" type: "Input" top: "x" '
        "input_param { shape { dim: 1 dim: 1 dim: 3 dim: 3 } } }\n"
        'layer { name: "p" type: "Pooling" bottom: "x" top: "y" top: "mask" '
        "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n"
    )
    net = brewnet.Net(str(path), brewnet.TEST)
    net.blobs["x"].data[...] = np.array([9, 1, 2, 3, 4, 5, 6, 7, 8]).reshape(1, 1, 3, 3)
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data[0, 0], [[9, 5], [7, 8]])
    np.testing.assert_array_equal(net.blobs["mask"].data[0, 0], [[0, 5], [7, 8]])


def test_stochastic_pooling_test_phase_weighted_average():
    x = tensor([[[[1, 2, 0, 0], [3, 4, 0, 0]]]])
    y = vision.stochastic_pool2d(x, (2, 2), (2, 2), train=False)
    # (1 + 4 + 9 + 16) / (1 + 2 + 3 + 4) = 3, and an all-zero window gives 0.
    np.testing.assert_allclose(y.numpy(), [[[[3.0, 0.0]]]])


def test_stochastic_pooling_train_samples_from_window():
    torch.manual_seed(0)
    window = tensor([[1, 2], [3, 4]])
    x = window.expand(20000, 1, 2, 2).clone().requires_grad_(True)
    y = vision.stochastic_pool2d(x, (2, 2), (2, 2), train=True)
    assert y.shape == (20000, 1, 1, 1)
    values = y.detach().reshape(-1)
    assert set(values.tolist()) <= {1.0, 2.0, 3.0, 4.0}
    frequencies = [(values == v).double().mean().item() for v in (1, 2, 3, 4)]
    # Probabilities 0.1, 0.2, 0.3, 0.4; the standard error is below 0.004.
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.3, 0.4], atol=0.015)
    y.sum().backward()
    grads = x.grad.reshape(20000, 4)
    assert torch.all(grads.sum(1) == 1)
    chosen = window.reshape(-1)[grads.argmax(1)]
    assert torch.equal(chosen, values)


def test_stochastic_pooling_layer_phases():
    text = (
        'name: "p" type: "Pooling" bottom: "x" top: "y" '
        "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }"
    )
    x = tensor([[[[1, 2, 5, 5], [3, 4, 5, 5], [0, 0, 7, 0], [0, 0, 0, 0]]]])
    test_layer = make_layer(text, [x.shape], phase=brewnet.TEST)
    np.testing.assert_allclose(
        test_layer.forward([x])[0][0, 0].numpy(), [[3.0, 5.0], [0.0, 7.0]]
    )
    torch.manual_seed(1)
    train_layer = make_layer(text, [x.shape], phase=brewnet.TRAIN)
    y = train_layer.forward([x])[0][0, 0]
    assert y[0, 0].item() in (1, 2, 3, 4)
    assert y[0, 1].item() == 5
    assert y[1, 1].item() == 7
    assert y[1, 0].item() == 0


# ============================================================================= LRN


def test_lrn_across_channels_by_hand():
    x = tensor([1, 2, 3]).reshape(1, 3, 1, 1)
    y = vision.lrn_across_channels(x, local_size=3, alpha=3.0, beta=1.0, k=1.0)
    # scale = 1 + (3 / 3) * window sum of squares: 1 + (1 + 4), 1 + 14, 1 + (4 + 9).
    np.testing.assert_allclose(y.reshape(-1).numpy(), [1 / 6, 2 / 15, 3 / 14], rtol=1e-12)


def test_lrn_within_channel_by_hand_ignores_k():
    x = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    layer = make_layer(
        'name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 '
        "alpha: 9 beta: 1 k: 5 norm_region: WITHIN_CHANNEL }",
        [x.shape],
    )
    y = layer.forward([x])[0]
    # scale = 1 + 9 / 3**2 * (ones in the zero-padded 3 x 3 window): 4, 6 or 9 of them.
    expected = 1 / (1 + np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]]))
    np.testing.assert_allclose(y[0, 0].numpy(), expected, rtol=1e-12)


def test_lrn_layer_defaults():
    layer = make_layer('name: "n" type: "LRN" bottom: "x" top: "y"', [(1, 7, 2, 2)])
    assert (layer.local_size, layer.alpha, layer.beta, layer.k) == (5, 1.0, 0.75, 1.0)
    assert not layer.within_channel


# ========================================================================= SPP, Crop


def test_spp_by_hand():
    x = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(
        vision.spatial_pyramid_pool(x, 2, "MAX").numpy(), [[15, 5, 7, 13, 15]]
    )
    np.testing.assert_allclose(
        vision.spatial_pyramid_pool(x, 2, "AVE").numpy(), [[7.5, 2.5, 4.5, 10.5, 12.5]]
    )
    assert vision.spatial_pyramid_pool(x, 1, "MAX").shape == (1, 1, 1, 1)


def test_spp_level_geometry():
    # 7 into 2 bins: kernel 4, pad (8 - 7 + 1) / 2 = 1; 6 into 4 bins: kernel 2, pad 1.
    assert vision.spp_level_geometry(7, 6, 1) == ((4, 3), (1, 0))
    assert vision.spp_level_geometry(6, 7, 2) == ((2, 2), (1, 1))
    layer = make_layer(
        'name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 }',
        [(2, 3, 9, 10)],
    )
    assert layer.top_shapes == [(2, 3 * (1 + 4 + 16))]


def test_crop_by_hand():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    y = vision.crop(x, (2, 3, 2, 3), axis=2, offsets=(1, 2))
    np.testing.assert_array_equal(y.numpy(), x[:, :, 1:3, 2:5].numpy())
    y = vision.crop(x, (2, 3, 2, 3), axis=2, offsets=(1,))
    np.testing.assert_array_equal(y.numpy(), x[:, :, 1:3, 1:4].numpy())
    y = vision.crop(x, (1, 2, 2, 2), axis=0)
    np.testing.assert_array_equal(y.numpy(), x[:1, :2, :2, :2].numpy())
    layer = make_layer(
        'name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: -1 offset: 3 }',
        [(2, 3, 4, 5), (9, 9, 9, 2)],
    )
    assert layer.top_shapes == [(2, 3, 4, 2)]
    assert not layer.allow_force_backward(1)


# =================================================================== gradient checks


def _random(shape, seed, positive=False):
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(shape, generator=generator, dtype=torch.float64)
    values = values + 0.5 if positive else 2 * values - 1
    return values.requires_grad_(True)


def test_gradcheck_convolution():
    geo = geometry((3, 2), (2, 1), (1, 1), (2, 1))
    gradcheck(
        lambda x, w, b: vision.convolution(x, w, b, geo, 2),
        _random((1, 4, 5, 5), 1), _random((4, 2, 3, 2), 2), _random((4,), 3),
    )
    geo3 = geometry((2, 2, 2), (1, 2, 1), (1, 0, 0))
    gradcheck(
        lambda x, w: vision.convolution(x, w, None, geo3),
        _random((1, 2, 3, 4, 3), 4), _random((2, 2, 2, 2, 2), 5),
    )
    gradcheck(
        lambda x, w: vision.convolution(x, w, None, geometry((3,), (2,))),
        _random((1, 1, 2), 6), _random((1, 1, 3), 7),
    )


def test_gradcheck_deconvolution():
    geo = geometry((4, 3), (2, 1), (1, 1))
    gradcheck(
        lambda x, w, b: vision.deconvolution(x, w, b, geo, 2),
        _random((1, 4, 3, 3), 8), _random((4, 3, 4, 3), 9), _random((6,), 10),
    )
    gradcheck(
        lambda x, w: vision.deconvolution(x, w, None, geometry((2, 2, 2), (2, 1, 1))),
        _random((1, 2, 2, 2, 2), 11), _random((2, 1, 2, 2, 2), 12),
    )


def test_gradcheck_im2col():
    geo = geometry((2, 3), (1, 2), (1, 1), (2, 1))
    gradcheck(lambda x: vision.im2col(x, geo), _random((2, 2, 5, 6), 13))


def test_gradcheck_pooling():
    # Distinct values keep each maximum apart from the others by more than eps.
    x = (torch.randperm(2 * 7 * 6, generator=torch.Generator().manual_seed(0))
         .reshape(1, 2, 7, 6).to(torch.float64) / 10).requires_grad_(True)
    gradcheck(lambda t: vision.max_pool2d(t, (3, 3), (2, 2), (1, 1))[0], x)
    gradcheck(lambda t: vision.max_pool2d(t, (3, 3), (2, 2))[0], x)
    gradcheck(lambda t: vision.ave_pool2d(t, (3, 2), (2, 2), (1, 1)), _random((1, 2, 7, 6), 14))
    gradcheck(lambda t: vision.ave_pool2d(t, (7, 6), (1, 1)), _random((1, 2, 7, 6), 15))


def test_gradcheck_stochastic_pooling():
    x = _random((2, 2, 5, 4), 16, positive=True)
    gradcheck(lambda t: vision.stochastic_pool2d(t, (2, 2), (2, 2), train=False), x)

    def sampled(t):
        torch.manual_seed(3)
        return vision.stochastic_pool2d(t, (3, 2), (2, 2), train=True)

    gradcheck(sampled, x)


def test_gradcheck_lrn():
    x = _random((1, 5, 3, 3), 17)
    gradcheck(lambda t: vision.lrn_across_channels(t, 3, 0.7, 0.75, 2.0), x)
    gradcheck(lambda t: vision.lrn_within_channel(t, 3, 0.7, 0.75), x)


def test_gradcheck_spp_and_crop():
    x = (torch.randperm(2 * 6 * 7, generator=torch.Generator().manual_seed(1))
         .reshape(1, 2, 6, 7).to(torch.float64) / 10).requires_grad_(True)
    gradcheck(lambda t: vision.spatial_pyramid_pool(t, 3, "MAX"), x)
    gradcheck(lambda t: vision.spatial_pyramid_pool(t, 2, "AVE"), x)
    gradcheck(lambda t: vision.crop(t, (1, 2, 3, 3), 2, (2, 1)), x)


def _central_differences(net, array, eps=1e-6):
    """Return d(net loss)/d(array) by central differences; ``array`` is a net view."""
    grad = np.zeros(array.shape)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        net.forward()
        plus = net.loss
        array[index] = saved - eps
        net.forward()
        minus = net.loss
        array[index] = saved
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def test_convolution_net_float64_matches_differences(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(
        "force_backward: true\n"
        'layer { name: "x" type: "Input" top: "x" '
        "input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }\n"
        'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
        "convolution_param { num_output: 2 kernel_size: 2 pad: 1 stride: 2 "
        'weight_filler { type: "gaussian" std: 0.5 } '
        'bias_filler { type: "gaussian" std: 0.5 } } }\n'
        'layer { name: "p" type: "Pooling" bottom: "y" top: "z" loss_weight: 1 '
        "pooling_param { pool: AVE kernel_size: 2 pad: 1 } }\n"
    )
    brewnet.set_random_seed(4)
    net = brewnet.Net(str(path), brewnet.TRAIN, dtype=torch.float64)
    net.blobs["x"].data[...] = np.random.default_rng(0).normal(size=(1, 2, 3, 3))
    net.forward()
    net.backward()
    x_diff = net.blobs["x"].diff.copy()
    weight_diff = net.params["c"][0].diff.copy()
    bias_diff = net.params["c"][1].diff.copy()
    np.testing.assert_allclose(
        x_diff, _central_differences(net, net.blobs["x"].data), atol=1e-7
    )
    np.testing.assert_allclose(
        weight_diff, _central_differences(net, net.params["c"][0].data), atol=1e-7
    )
    np.testing.assert_allclose(
        bias_diff, _central_differences(net, net.params["c"][1].data), atol=1e-7
    )


# ========================================================================== errors

CONV = 'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ {} }}'
POOL = 'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ {} }}'

ERROR_CASES = [
    # Convolution and its geometry.
    (CONV.format("num_output: 2 kernel_size: 0"), [(1, 1, 4, 4)], "kernel size must be nonzero"),
    (CONV.format("num_output: 2"), [(1, 1, 4, 4)], "kernel_size must be given once"),
    (CONV.format("num_output: 2 kernel_h: 3"), [(1, 1, 4, 4)], r"got 3 x 0"),
    (CONV.format("num_output: 2 kernel_size: 2 kernel_h: 2 kernel_w: 2"), [(1, 1, 4, 4)],
     "give either kernel_size or kernel_h/kernel_w, not both"),
    (CONV.format("num_output: 2 kernel_h: 2 kernel_w: 2"), [(1, 1, 4, 4, 4)],
     "apply only to 2-D convolution, but the bottom has 3 spatial axes"),
    (CONV.format("num_output: 2 kernel_size: 2 kernel_size: 2"), [(1, 1, 4, 4, 4)],
     r"kernel_size must be given once, or once per spatial axis \(3\), but it is given 2"),
    (CONV.format("num_output: 2 kernel_size: 2 stride: 0"), [(1, 1, 4, 4)],
     "stride must be nonzero"),
    (CONV.format("num_output: 2 kernel_size: 2 stride: 1 stride: 1 stride: 1"),
     [(1, 1, 4, 4)], "stride must be given once"),
    (CONV.format("num_output: 2 kernel_size: 2 pad: 1 pad_h: 1"), [(1, 1, 4, 4)],
     "give either pad or pad_h/pad_w, not both"),
    (CONV.format("num_output: 2 kernel_size: 2 dilation: 0"), [(1, 1, 4, 4)],
     "dilation must be nonzero"),
    (CONV.format("num_output: 2 kernel_size: 1 group: 2"), [(1, 3, 4, 4)],
     "3 channels, which is not divisible by group 2"),
    (CONV.format("num_output: 3 kernel_size: 1 group: 2"), [(1, 4, 4, 4)],
     "num_output 3 is not divisible by group 2"),
    (CONV.format("kernel_size: 1"), [(1, 1, 4, 4)], "num_output must be set"),
    (CONV.format("num_output: 2 kernel_size: 1 group: 0"), [(1, 2, 4, 4)],
     "group must be positive"),
    (CONV.format("num_output: 2 kernel_size: 5"), [(1, 1, 3, 3)],
     "kernel extent 5 on spatial axis 0 exceeds the padded input size 3"),
    (CONV.format("num_output: 2 kernel_size: 3 dilation: 2"), [(1, 1, 4, 4)],
     "kernel extent 5 on spatial axis 0 exceeds"),
    (CONV.format("num_output: 2 kernel_size: 1"), [(1, 1, 2, 2, 2, 2)],
     "at most 3 spatial axes"),
    (CONV.format("num_output: 2 kernel_size: 1 axis: 4"), [(1, 1, 4, 4)],
     "axis 4 is out of range"),
    (CONV.format('num_output: 2 kernel_size: 2 weight_filler { type: "bilinear" }'),
     [(1, 1, 4, 4, 4)], "weight_filler: the bilinear filler needs a 4-axis blob"),
    ('name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" '
     "convolution_param { num_output: 1 kernel_size: 1 }", [(1, 1, 2, 2), (1, 1, 3, 2)],
     "all bottoms must have the same shape, but bottom 1 has shape 1 x 1 x 3 x 2"),
    ('name: "d" type: "Deconvolution" bottom: "x" top: "y" '
     "convolution_param { num_output: 1 kernel_size: 1 pad: 1 }", [(1, 1, 2, 2)],
     "pad 1 on spatial axis 0 removes the whole deconvolution output of size 2"),
    ('name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 1 }',
     [(4, 3)], "needs at least one spatial axis after channel axis 1"),
    # Pooling.
    (POOL.format("pool: MAX"), [(1, 1, 4, 4)], "needs a kernel size"),
    (POOL.format("kernel_size: 2 kernel_h: 2 kernel_w: 2"), [(1, 1, 4, 4)],
     "give either kernel_size or kernel_h and kernel_w, not both"),
    (POOL.format("kernel_h: 2"), [(1, 1, 4, 4)], "needs both kernel_h and kernel_w"),
    (POOL.format("kernel_size: 0"), [(1, 1, 4, 4)], "kernel size must be nonzero"),
    (POOL.format("global_pooling: true kernel_size: 2"), [(1, 1, 4, 4)],
     "global_pooling takes the kernel size from the bottom"),
    (POOL.format("global_pooling: true stride: 2"), [(1, 1, 4, 4)],
     "global_pooling needs pad 0 and stride 1"),
    (POOL.format("kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1"), [(1, 1, 4, 4)],
     "give either pad, or both pad_h and pad_w"),
    (POOL.format("kernel_size: 2 stride_h: 1"), [(1, 1, 4, 4)],
     "give either stride, or both stride_h and stride_w"),
    (POOL.format("kernel_size: 2 stride: 0"), [(1, 1, 4, 4)], "stride must be nonzero"),
    (POOL.format("pool: STOCHASTIC kernel_size: 2 pad: 1"), [(1, 1, 4, 4)],
     "padding works only with MAX and AVE pooling, not STOCHASTIC"),
    (POOL.format("kernel_size: 2 pad: 2"), [(1, 1, 4, 4)],
     r"pad_h \(2\) must be smaller than the kernel size \(2\)"),
    ('name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" '
     "pooling_param { pool: AVE kernel_size: 2 }", [(1, 1, 4, 4)],
     "takes a second top .* only with pool: MAX, not AVE"),
    (POOL.format("kernel_size: 2"), [(1, 4, 4)], "needs a bottom with 4 axes"),
    (POOL.format("kernel_size: 5"), [(1, 1, 3, 3)],
     "pooling kernel 5 on spatial axis 0 exceeds the padded input size 3"),
    # LRN, SPP and Crop.
    ('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 }',
     [(1, 4, 2, 2)], "local_size must be odd, got 4"),
    ('name: "n" type: "LRN" bottom: "x" top: "y"', [(1, 4, 2)], "needs a bottom with 4 axes"),
    ('name: "s" type: "SPP" bottom: "x" top: "y"', [(1, 1, 4, 4)],
     "pyramid_height must be at least 1, got 0"),
    ('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 }',
     [(1, 1, 5, 5)], "pyramid level 2 cannot split the 5 x 5 bottom into 4 x 4 bins"),
    ('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 }',
     [(1, 1, 5)], "needs a bottom with 4 axes"),
    ('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" '
     "crop_param { offset: 1 offset: 1 offset: 1 }", [(1, 1, 4, 4), (1, 1, 2, 2)],
     "3 offsets are given for the 2 cropped axes"),
    ('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 3 }',
     [(1, 1, 4, 4), (1, 1, 2, 2)],
     "crop of axis 2 is out of bounds: offset 3 plus size 2 exceeds the bottom's size 4"),
    ('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y"', [(1, 1, 4, 4), (1, 1, 2)],
     "the reference bottom has 3 axes, but the bottom to crop has 4"),
    ('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 4 }',
     [(1, 1, 4, 4), (1, 1, 2, 2)], "axis 4 is out of range"),
]


@pytest.mark.parametrize("text, shapes, message", ERROR_CASES)
def test_layer_errors(text, shapes, message):
    with pytest.raises(LayerSetupError, match=message) as info:
        make_layer(text, shapes)
    layer_name = text_format.Parse(text, caffe_pb2.LayerParameter()).name
    assert f"layer '{layer_name}'" in str(info.value)


def test_convolution_reshape_rejects_changed_channels():
    layer = make_layer(CONV.format("num_output: 2 kernel_size: 1"), [(1, 3, 4, 4)])
    with pytest.raises(LayerSetupError, match="set up for 3 input channels"):
        layer.reshape([(1, 4, 4, 4)])
    with pytest.raises(LayerSetupError, match="the number of axes may not change"):
        layer.reshape([(1, 3, 4)])


def test_pooling_helpers_reject_bad_values():
    with pytest.raises(ValueError, match="unknown pooling method 'MIN'"):
        vision.pool2d(torch.ones(1, 1, 2, 2), "MIN", (2, 2))
    with pytest.raises(ValueError, match="last pooling window on spatial axis 0"):
        vision.pool_output_shape((2, 2), (1, 1), (1, 1), (3, 3))
    assert math.isnan(
        vision.ave_pool2d(torch.ones(1, 1, 5, 1), (1, 1), (5, 1))[0, 0, 1, 0].item()
    )
