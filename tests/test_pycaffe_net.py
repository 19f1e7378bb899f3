"""pycaffe's Net surface: construction forms, blobs, layer views, ranges, batches."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import brewnet as caffe
from brewnet.blob import ParamBlob
from brewnet.pycaffe import LayerView

# x (2, 3) -> ip (2 outputs, weights [[1, 0, -1], [0.5, 0.5, 0.5]], bias [0, 1])
# -> relu (in place) -> EuclideanLoss against t.
NET = """
name: "small"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 2 } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
layer { name: "extra" type: "Power" bottom: "x" top: "x2" power_param { power: 2 }
  include { stage: "extra" } }
"""

W = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
B = np.array([0.0, 1.0])
X = np.array([[1.0, 2.0, 3.0], [4.0, -2.0, 1.0]])
T = np.array([[0.0, 1.0], [1.0, 0.0]])


def write(tmp_path, text=NET, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def make_net(tmp_path, *args, **kwargs):
    net = caffe.Net(write(tmp_path), *args, **kwargs)
    net.params["ip"][0].data[...] = W
    net.params["ip"][1].data[...] = B
    return net


def weights_file(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    path = tmp_path / "small.caffemodel"
    net.save(str(path))
    return str(path)


# ------------------------------------------------------------------ construction
def test_phase_positional(tmp_path):
    net = caffe.Net(write(tmp_path), caffe.TEST)
    assert net.phase == caffe.TEST
    assert caffe.TRAIN == 0
    assert caffe.TEST == 1


def test_weights_positional_then_phase(tmp_path):
    weights = weights_file(tmp_path)
    net = caffe.Net(write(tmp_path), weights, caffe.TEST)
    np.testing.assert_array_equal(net.params["ip"][0].data, W)
    np.testing.assert_array_equal(net.params["ip"][1].data, B)


def test_keyword_forms(tmp_path):
    weights = weights_file(tmp_path)
    net = caffe.Net(write(tmp_path), phase=caffe.TEST, weights=weights)
    np.testing.assert_array_equal(net.params["ip"][0].data, W)
    net = caffe.Net(write(tmp_path), caffe.TEST, weights=weights)
    np.testing.assert_array_equal(net.params["ip"][1].data, B)


def test_stages_and_level(tmp_path):
    plain = caffe.Net(write(tmp_path), caffe.TEST)
    staged = caffe.Net(write(tmp_path), caffe.TEST, level=0, stages=["extra"])
    assert "extra" not in plain._layer_names
    assert staged._layer_names[-1] == "extra"
    assert "x2" in staged.outputs


def test_layer_type_list_has_python():
    types = caffe.layer_type_list()
    assert "Python" in types
    assert "InnerProduct" in types
    assert types == sorted(types)


def test_mode_functions_exist():
    caffe.set_mode_cpu()
    caffe.set_device(0)
    caffe.set_random_seed(3)


# ------------------------------------------------------------------ blobs and params
def test_blob_write_through_forward(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    net.blobs["x"].data[...] = X
    net.blobs["t"].data[...] = T
    out = net.forward()
    # h = relu(W x + b) = relu([-2, 4]), relu([3, 2.5]) = [0, 4], [3, 2.5]
    np.testing.assert_allclose(net.blobs["h"].data, [[0.0, 4.0], [3.0, 2.5]])
    # loss = ((0^2 + 3^2) + (2^2 + 2.5^2)) / (2 * 2)
    assert out["loss"] == pytest.approx((9 + 4 + 6.25) / 4)


def test_blob_surface(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    blob = net.blobs["x"]
    assert blob.shape == (2, 3)
    assert blob.count == 6
    assert (blob.num, blob.channels, blob.height, blob.width) == (2, 3, 1, 1)
    assert blob.data.dtype == np.float32
    blob.reshape(4, 3)
    net.blobs["t"].reshape(4, 2)
    net.reshape()
    assert net.blobs["h"].shape == (4, 2)
    assert net.blobs["x"].data.shape == (4, 3)


def test_params_dict(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    assert isinstance(net.params, OrderedDict)
    assert list(net.params) == ["ip"]
    assert [p.data.shape for p in net.params["ip"]] == [(2, 3), (2,)]


def test_names_and_weights(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    assert net.inputs == ["x", "t"]
    assert net.outputs == ["loss"]
    assert list(net.blobs) == ["x", "t", "h", "loss"]
    assert net._blob_names == ["x", "t", "h", "loss"]
    assert net.blob_loss_weights == OrderedDict([("x", 0.0), ("t", 0.0), ("h", 0.0), ("loss", 1.0)])
    assert net.bottom_names["loss"] == ["h", "t"]
    assert net.top_names["relu"] == ["h"]
    assert net._layer_names == ["x", "t", "ip", "relu", "loss"]
    assert net._top_ids(2) == [2]
    assert net._bottom_ids(4) == [2, 1]


# ------------------------------------------------------------------ layer views
def test_layers_are_views(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    layers = net.layers
    assert [layer.type for layer in layers] == ["Input", "Input", "InnerProduct", "ReLU", "EuclideanLoss"]
    assert all(isinstance(layer, LayerView) for layer in layers)
    assert layers[2] is net.layers[2]
    weights = layers[2].blobs[0]
    assert isinstance(weights, ParamBlob)
    assert isinstance(weights.data, np.ndarray)
    np.testing.assert_array_equal(weights.data, W)
    assert len(layers[3].blobs) == 0


def test_layer_view_writes_through(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    net.layers[2].blobs[1].data[...] = [10.0, 20.0]
    np.testing.assert_array_equal(net.params["ip"][1].data, [10.0, 20.0])
    net.blobs["x"].data[...] = 0
    net.forward()
    np.testing.assert_array_equal(net.blobs["h"].data, [[10.0, 20.0], [10.0, 20.0]])


def test_layer_view_diff_after_backward(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    net.blobs["x"].data[...] = X
    net.blobs["t"].data[...] = T
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.layer_dict["ip"].blobs[0].diff, net.params["ip"][0].diff)
    # d loss / d h = (h - t) / 2 where h > 0; bias diff sums over the batch.
    expected_h = np.array([[0.0, 1.5], [1.0, 1.25]])
    np.testing.assert_allclose(net.params["ip"][1].diff, expected_h.sum(0))


def test_layer_view_delegates(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    view = net.layer_dict["ip"]
    assert view.name == "ip"
    assert view.param.inner_product_param.num_output == 2
    assert view.layer is net._layer_dict["ip"]
    view.custom_flag = 5
    assert net._layer_dict["ip"].custom_flag == 5
    assert list(net.layer_dict) == net._layer_names
    assert repr(view) == "<LayerView 'ip' (InnerProduct)>"


# ------------------------------------------------------------------ ranges
def test_forward_start_uses_written_blob(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    net.blobs["x"].data[...] = X
    net.blobs["t"].data[...] = T
    net.forward()
    net.blobs["h"].data[...] = [[-1.0, 1.0], [2.0, -3.0]]
    out = net.forward(start="relu")
    np.testing.assert_array_equal(net.blobs["h"].data, [[0.0, 1.0], [2.0, 0.0]])
    # ((0 - 0)^2 + (1 - 1)^2 + (2 - 1)^2 + (0 - 0)^2) / 4
    assert out["loss"] == pytest.approx(0.25)


def test_forward_end_returns_end_tops(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    net.blobs["x"].data[...] = X
    out = net.forward(end="ip", blobs=["x"])
    assert set(out) == {"h", "x"}
    np.testing.assert_allclose(out["h"], [[-2.0, 4.0], [3.0, 2.5]])


def test_forward_keyword_inputs(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    out = net.forward(x=X, t=T)
    assert out["loss"] == pytest.approx((9 + 4 + 6.25) / 4)


def test_backward_range_and_diffs(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    net.blobs["x"].data[...] = X
    net.blobs["t"].data[...] = T
    net.forward()
    out = net.backward(start="loss", end="ip", diffs=["h"])
    assert set(out) == {"x", "h"}
    np.testing.assert_allclose(out["h"], [[0.0, 1.5], [1.0, 1.25]])


def test_backward_range_without_creator(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    net.blobs["x"].data[...] = X
    net.blobs["t"].data[...] = T
    net.forward()
    out = net.backward(start="loss", end="relu", diffs=["t"])
    assert set(out) == {"h", "t"}
    np.testing.assert_allclose(out["h"], [[0.0, 1.5], [1.0, 1.25]])


def test_index_range_helpers(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    net.blobs["x"].data[...] = X
    net.blobs["t"].data[...] = T
    assert net._forward(0, 4) == pytest.approx((9 + 4 + 6.25) / 4)
    net._backward(4, 0)
    np.testing.assert_allclose(net.params["ip"][1].diff, [1.0, 2.75])


# ------------------------------------------------------------------ batches
def test_forward_all_pads_last_batch(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    items = np.arange(15, dtype=np.float32).reshape(5, 3) - 7
    out = net.forward_all(blobs=["h"], x=items, t=np.zeros((5, 2), dtype=np.float32))
    assert set(out) == {"h", "loss"}
    assert out["h"].shape == (5, 2)
    expected = np.maximum(items @ W.T + B, 0)
    np.testing.assert_allclose(out["h"], expected, rtol=1e-6)
    # The scalar loss gives one value per batch of 2, padded batch included.
    assert out["loss"].shape == (3,)
    assert out["loss"][0] == pytest.approx(np.sum(expected[:2] ** 2) / 4)


def test_forward_all_rejects_ragged_inputs(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    with pytest.raises(ValueError, match="different lengths"):
        net.forward_all(x=np.zeros((4, 3)), t=np.zeros((3, 2)))


def test_forward_backward_all(tmp_path):
    text = "force_backward: true\n" + NET.replace('layer { name: "loss"', '# layer { name: "loss"')
    net = caffe.Net(write(tmp_path, text), caffe.TEST)
    net.params["ip"][0].data[...] = W
    net.params["ip"][1].data[...] = B
    items = np.array([[1.0, 2.0, 3.0], [4.0, -2.0, 1.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    outs, diffs = net.forward_backward_all(
        x=items, t=np.zeros((3, 2), dtype=np.float32), h=np.ones((3, 2), dtype=np.float32)
    )
    np.testing.assert_allclose(outs["h"], np.maximum(items @ W.T + B, 0), rtol=1e-6)
    # dx = W^T (relu' * 1); relu' of [[-2, 4], [3, 2.5], [-1, 1.5]] is [[0,1],[1,1],[0,1]].
    mask = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(diffs["x"], mask @ W, rtol=1e-6)
    assert diffs["t"].shape == (3, 2)


# ------------------------------------------------------------------ MemoryData
MEMORY_NET = """
layer { name: "md" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 } }
layer { name: "sum" type: "Reduction" bottom: "data" top: "s" reduction_param { axis: 1 } }
"""


def test_set_input_arrays_feeds_batches(tmp_path):
    net = caffe.Net(write(tmp_path, MEMORY_NET), caffe.TEST)
    data = np.arange(8, dtype=np.float32).reshape(4, 1, 1, 2)
    labels = np.array([5, 6, 7, 8], dtype=np.float32)
    net.set_input_arrays(data, labels)
    out = net.forward()
    np.testing.assert_array_equal(out["s"], [1.0, 5.0])
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [5.0, 6.0])
    np.testing.assert_array_equal(net.forward()["s"], [9.0, 13.0])


def test_set_input_arrays_needs_memory_data(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    with pytest.raises(ValueError, match="net 'small' has no MemoryData layer"):
        net.set_input_arrays(np.zeros((2, 1, 1, 2)), np.zeros(2))


def test_set_input_arrays_checks_batch(tmp_path):
    net = caffe.Net(write(tmp_path, MEMORY_NET), caffe.TEST)
    with pytest.raises(ValueError, match="multiple of batch size 2"):
        net.set_input_arrays(np.zeros((3, 1, 1, 2), dtype=np.float32), np.zeros(3))


# ------------------------------------------------------------------ weights
def test_copy_from_and_share_with(tmp_path):
    weights = weights_file(tmp_path)
    fresh = caffe.Net(write(tmp_path), caffe.TEST)
    fresh.copy_from(weights)
    np.testing.assert_array_equal(fresh.params["ip"][0].data, W)
    other = caffe.Net(write(tmp_path), caffe.TEST)
    other.share_with(fresh)
    fresh.params["ip"][1].data[...] = [7.0, 8.0]
    np.testing.assert_array_equal(other.params["ip"][1].data, [7.0, 8.0])
    np.testing.assert_array_equal(other.layers[2].blobs[1].data, [7.0, 8.0])


def test_hdf5_round_trip(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    path = tmp_path / "small.caffemodel.h5"
    net.save_hdf5(str(path))
    fresh = caffe.Net(write(tmp_path), caffe.TEST)
    fresh.load_hdf5(str(path))
    np.testing.assert_array_equal(fresh.params["ip"][0].data, W)
    np.testing.assert_array_equal(fresh.params["ip"][1].data, B)


def test_forward_backward_all_without_output_diffs(tmp_path):
    net = make_net(tmp_path, caffe.TEST)
    outs, diffs = net.forward_backward_all(x=X[:1].repeat(3, 0), t=np.zeros((3, 2)))
    assert outs["loss"].shape == (2,)
    assert set(diffs) == {"x", "t"}
    assert diffs["x"].shape == (3, 3)
    # Backward starts from the loss, and param diffs add up over both batches:
    # h = [0, 4] for x0 and [0, 1] for the zero pad row; the bias diff per row is
    # h / 2, so (2 + 2) + (2 + 0.5) = 6.5 for the second output.
    np.testing.assert_allclose(net.params["ip"][1].diff, [0.0, 6.5])


def test_layer_view_copy(tmp_path):
    import copy

    net = make_net(tmp_path, caffe.TEST)
    view = copy.copy(net.layers[2])
    assert view.layer is net._layers[2]
    assert view.type == "InnerProduct"
