"""The net core: parsing, filtering, wiring, loss weights, forward and backward."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import brewnet
from brewnet.errors import (
    LayerSetupError,
    NetDefinitionError,
    PrototxtError,
    UnknownLayerTypeError,
)

X = np.array([[1.0, 2.0], [3.0, -1.0]])
T = np.array([[1.0], [0.0]])

LINEAR = """
name: "linear"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 1 bias_term: false
    weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
"""


def build(tmp_path, text, *args, name="net.prototxt", **kwargs):
    path = tmp_path / name
    path.write_text(text)
    return brewnet.Net(str(path), *args, **kwargs)


def feed(net, **arrays):
    for key, value in arrays.items():
        net.blobs[key].data[...] = value


# ------------------------------------------------------------------ parsing errors
def test_syntax_error_names_file_line_column(tmp_path):
    text = 'name: "n"\nlayer {\n  name: "x"\n  type "Input"\n}\n'
    with pytest.raises(PrototxtError) as caught:
        build(tmp_path, text)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'net.prototxt'}:4:")
    assert "Input" in message or "':'" in message or "Expected" in message


def test_unknown_field_names_field_and_line(tmp_path):
    text = 'name: "n"\nlayer {\n  nmae: "x"\n}\n'
    with pytest.raises(PrototxtError) as caught:
        build(tmp_path, text)
    assert f"{tmp_path / 'net.prototxt'}:3:" in str(caught.value)
    assert "nmae" in str(caught.value)


def test_unknown_enum_value_names_value(tmp_path):
    text = 'name: "n"\nstate {\n  phase: VALIDATE\n}\n'
    with pytest.raises(PrototxtError) as caught:
        build(tmp_path, text)
    assert f"{tmp_path / 'net.prototxt'}:3:" in str(caught.value)
    assert "VALIDATE" in str(caught.value)


def test_unknown_layer_type_suggests_close_names(tmp_path):
    text = 'name: "n"\n\nlayer {\n  name: "x"\n  type: "Inputt"\n  top: "x"\n}\n'
    with pytest.raises(UnknownLayerTypeError) as caught:
        build(tmp_path, text)
    message = str(caught.value)
    assert f"{tmp_path / 'net.prototxt'}:5:3:" in message
    assert "'Inputt'" in message
    assert "Did you mean 'Input'" in message


def test_missing_prototxt_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.prototxt"):
        brewnet.Net(str(tmp_path / "missing.prototxt"), brewnet.TEST)


# ------------------------------------------------------------------ state filtering
FILTERED = """
name: "filtered"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
layer { name: "train_only" type: "Power" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "Power" bottom: "x" top: "b" include { phase: TEST } }
layer { name: "not_test" type: "Power" bottom: "x" top: "c" exclude { phase: TEST } }
layer { name: "level2" type: "Power" bottom: "x" top: "d" include { min_level: 2 } }
layer { name: "upto1" type: "Power" bottom: "x" top: "e" include { max_level: 1 } }
layer { name: "deploy" type: "Power" bottom: "x" top: "f" include { stage: "deploy" } }
layer { name: "both" type: "Power" bottom: "x" top: "g"
  include { stage: "deploy" stage: "fast" } }
layer { name: "nodeploy" type: "Power" bottom: "x" top: "h" include { not_stage: "deploy" } }
layer { name: "either" type: "Power" bottom: "x" top: "i"
  include { phase: TEST } include { stage: "fast" } }
"""


def layer_names(net):
    return [layer.name for layer in net.layers]


def test_phase_rules(tmp_path):
    train = build(tmp_path, FILTERED, brewnet.TRAIN)
    test = build(tmp_path, FILTERED, brewnet.TEST)
    assert layer_names(train) == ["x", "train_only", "not_test", "upto1", "nodeploy"]
    assert layer_names(test) == ["x", "test_only", "upto1", "nodeploy", "either"]


def test_level_rules(tmp_path):
    net = build(tmp_path, FILTERED, brewnet.TRAIN, level=2)
    names = layer_names(net)
    assert "level2" in names
    assert "upto1" not in names


def test_stage_rules(tmp_path):
    net = build(tmp_path, FILTERED, brewnet.TRAIN, stages=["deploy"])
    names = layer_names(net)
    assert "deploy" in names
    assert "both" not in names
    assert "nodeploy" not in names
    fast = build(tmp_path, FILTERED, brewnet.TRAIN, stages=["deploy", "fast"])
    assert {"deploy", "both", "either"} <= set(layer_names(fast))


def test_net_level_state_is_the_base(tmp_path):
    text = FILTERED + 'state { level: 2 stage: "deploy" }\n'
    net = build(tmp_path, text, brewnet.TRAIN)
    names = layer_names(net)
    assert "level2" in names
    assert "deploy" in names


def test_filter_logs_the_reason(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="brewnet"):
        build(tmp_path, FILTERED, brewnet.TRAIN)
    assert (
        "The NetState phase (0) differed from the phase (1) specified by a rule in "
        "layer test_only" in caplog.text
    )


def test_include_and_exclude_together_is_an_error(tmp_path):
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
layer { name: "p" type: "Power" bottom: "x" top: "y"
  include { phase: TRAIN } exclude { phase: TEST } }
"""
    with pytest.raises(NetDefinitionError, match="layer 'p' has both include and exclude"):
        build(tmp_path, text)


# ------------------------------------------------------------------ inputs
def test_legacy_input_shape_becomes_input_layer(tmp_path):
    text = 'input: "data"\ninput_shape { dim: 2 dim: 3 }\ninput: "label"\ninput_shape { dim: 2 }\n'
    with pytest.warns(DeprecationWarning):
        net = build(tmp_path, text, brewnet.TEST)
    assert layer_names(net) == ["input"]
    assert net.blobs["data"].shape == (2, 3)
    assert net.blobs["label"].shape == (2,)
    assert net.inputs == ["data", "label"]


def test_legacy_input_dim_becomes_input_layer(tmp_path):
    text = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 5\n'
    with pytest.warns(DeprecationWarning):
        net = build(tmp_path, text, brewnet.TEST)
    assert net.blobs["data"].shape == (1, 3, 4, 5)


def test_legacy_input_dim_wrong_count_is_an_error(tmp_path):
    text = 'input: "data"\ninput_dim: 1\ninput_dim: 3\n'
    with pytest.raises(NetDefinitionError, match="need 4 input_dim values"):
        build(tmp_path, text, brewnet.TEST)


def test_input_layer_shape_count_mismatch(tmp_path):
    text = """
layer { name: "x" type: "Input" top: "a" top: "b" top: "c"
  input_param { shape { dim: 1 } shape { dim: 2 } } }
"""
    with pytest.raises(LayerSetupError, match="layer 'x' \\(type Input\\): input_param has 2 shapes for 3 tops"):
        build(tmp_path, text)


# ------------------------------------------------------------------ wiring
def test_unknown_bottom_is_an_error(tmp_path):
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
layer { name: "p" type: "Power" bottom: "y" top: "z" }
"""
    with pytest.raises(NetDefinitionError, match="layer 'p' \\(type Power\\): unknown bottom blob 'y'"):
        build(tmp_path, text)


def test_top_produced_twice_is_an_error(tmp_path):
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
layer { name: "p" type: "Power" bottom: "x" top: "y" }
layer { name: "q" type: "Power" bottom: "x" top: "y" }
"""
    with pytest.raises(NetDefinitionError, match="top blob 'y' is produced by more than one"):
        build(tmp_path, text)


def test_duplicate_layer_name_warns_and_maps_to_last(tmp_path, caplog):
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
layer { name: "x" type: "Power" bottom: "x" top: "y" }
"""
    with caplog.at_level(logging.WARNING, logger="brewnet"):
        net = build(tmp_path, text)
    assert "more than one layer is named 'x'" in caplog.text
    assert net.layer_dict["x"].type == "Power"
    assert len(net.layers) == 2


def test_wrong_blob_count_is_an_error(tmp_path):
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }
layer { name: "p" type: "Power" bottom: "x" bottom: "x" top: "y" }
"""
    with pytest.raises(LayerSetupError, match="layer 'p' \\(type Power\\): takes exactly 1 bottom blob, but 2 are given"):
        build(tmp_path, text)


def test_outputs_are_unconsumed_blobs(tmp_path):
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 } } }
layer { name: "a" type: "Power" bottom: "x" top: "a" }
layer { name: "b" type: "Power" bottom: "a" top: "b" }
layer { name: "c" type: "Power" bottom: "x" top: "c" }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
"""
    net = build(tmp_path, text)
    assert net.outputs == ["b", "c"]
    assert net.inputs == ["x"]
    assert list(net.blobs) == ["x", "a", "b", "c"]


def test_in_place_layer_rewrites_blob(tmp_path):
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 } } }
layer { name: "p" type: "Power" bottom: "x" top: "y" power_param { shift: -1 } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
"""
    net = build(tmp_path, text)
    out = net.forward(x=np.array([0.0, 1.0, 3.0]))
    np.testing.assert_array_equal(out["y"], [0.0, 0.0, 2.0])


def test_top_shapes_are_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="brewnet"):
        build(tmp_path, LINEAR)
    assert "Top shape: 2 2 (4)" in caplog.text
    assert "Top shape: 2 1 (2)" in caplog.text
    assert "Top shape: (1)" in caplog.text
    assert "    with loss weight 1" in caplog.text
    assert "ip needs backward computation." in caplog.text
    assert "x does not need backward computation." in caplog.text
    assert "This network produces output loss" in caplog.text


# ------------------------------------------------------------------ forward/backward values
def test_linear_net_loss_and_gradient(tmp_path):
    net = build(tmp_path, LINEAR)
    feed(net, x=X, t=T)
    out = net.forward()
    assert out["loss"] == pytest.approx(0.3125)
    assert net.loss == pytest.approx(0.3125)
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, [[1.75, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(net.blobs["h"].diff, [[0.25], [0.5]], rtol=1e-6)
    # The input needs no gradient without force_backward, so its diff stays zero.
    np.testing.assert_array_equal(net.blobs["x"].diff, np.zeros((2, 2)))


def test_param_diffs_accumulate_until_cleared(tmp_path):
    net = build(tmp_path, LINEAR)
    feed(net, x=X, t=T)
    net.forward()
    net.backward()
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, [[3.5, 0.0]], rtol=1e-6)
    net.clear_param_diffs()
    np.testing.assert_array_equal(net.params["ip"][0].diff, [[0.0, 0.0]])


def test_forward_backward_matches_backward(tmp_path):
    net = build(tmp_path, LINEAR)
    feed(net, x=X, t=T)
    assert net.forward_backward() == pytest.approx(0.3125)
    np.testing.assert_allclose(net.params["ip"][0].diff, [[1.75, 0.0]], rtol=1e-6)


def test_force_backward_fills_input_diffs(tmp_path):
    net = build(tmp_path, "force_backward: true\n" + LINEAR)
    feed(net, x=X, t=T)
    net.forward()
    net.backward()
    # dL/dx = dL/dh * w = [[0.25 * 0.5, 0.25 * 0.5], [0.5 * 0.5, 0.5 * 0.5]]
    np.testing.assert_allclose(net.blobs["x"].diff, [[0.125, 0.125], [0.25, 0.25]])
    # Euclidean's second bottom gets the opposite gradient.
    np.testing.assert_allclose(net.blobs["t"].diff, [[-0.25], [-0.5]])


def test_fan_out_gradients_add_up(tmp_path):
    text = """
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 } } }
layer { name: "double" type: "Power" bottom: "x" top: "a" power_param { scale: 2 } loss_weight: 1 }
layer { name: "square" type: "Power" bottom: "x" top: "b" power_param { power: 2 } loss_weight: 1 }
"""
    net = build(tmp_path, text)
    x = np.array([1.0, -2.0, 0.5])
    net.forward(x=x)
    assert net.loss == pytest.approx(float(np.sum(2 * x) + np.sum(x**2)))
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, 2 + 2 * x, rtol=1e-6)


def test_in_place_gradients_equal_out_of_place(tmp_path):
    template = """
force_backward: true
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 4 }} }} }}
layer {{ name: "shift" type: "Power" bottom: "x" top: "y" power_param {{ shift: 1 }} }}
layer {{ name: "square" type: "Power" bottom: "y" top: "{top}" power_param {{ power: 2 scale: 3 }} }}
layer {{ name: "relu" type: "ReLU" bottom: "{top}" top: "{top}" }}
layer {{ name: "sum" type: "Power" bottom: "{top}" top: "s" loss_weight: 1 }}
"""
    x = np.array([0.5, -1.0, 2.0, -3.0])
    diffs = []
    for top in ("y", "z"):
        net = build(tmp_path, template.format(top=top), name=f"{top}.prototxt")
        net.forward(x=x)
        net.backward()
        diffs.append(net.blobs["x"].diff.copy())
    # d/dx of (3 * (x + 1)^2) = 6 * (x + 1), which ReLU passes everywhere here.
    np.testing.assert_allclose(diffs[0], 18 * (x + 1), rtol=1e-6)
    np.testing.assert_allclose(diffs[1], diffs[0], rtol=1e-6)


def test_in_place_blob_diff_is_first_writers_gradient(tmp_path):
    text = """
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }
layer { name: "shift" type: "Power" bottom: "x" top: "y" power_param { shift: -1 } }
layer { name: "triple" type: "Power" bottom: "y" top: "y" power_param { scale: 3 } }
layer { name: "sum" type: "Power" bottom: "y" top: "s" loss_weight: 2 }
"""
    net = build(tmp_path, text)
    net.forward(x=np.array([1.0, 4.0]))
    net.backward()
    np.testing.assert_allclose(net.blobs["y"].data, [0.0, 9.0])
    # y's diff is the gradient with respect to shift's output: 2 * 3.
    np.testing.assert_allclose(net.blobs["y"].diff, [6.0, 6.0])


def test_propagate_down_false_stops_gradient(tmp_path):
    text = LINEAR.replace(
        'bottom: "h" bottom: "t" top: "loss"',
        'bottom: "h" bottom: "t" top: "loss" propagate_down: false propagate_down: false',
    )
    net = build(tmp_path, text)
    feed(net, x=X, t=T)
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.params["ip"][0].diff, [[0.0, 0.0]])


def test_propagate_down_count_mismatch_is_an_error(tmp_path):
    text = LINEAR.replace('top: "loss"', 'top: "loss" propagate_down: false')
    with pytest.raises(NetDefinitionError, match="propagate_down has 1 entries but the layer has 2 bottoms"):
        build(tmp_path, text)


def test_lr_mult_zero_freezes_param(tmp_path):
    text = LINEAR.replace("inner_product_param", "param { lr_mult: 0 } inner_product_param")
    net = build(tmp_path, text)
    feed(net, x=X, t=T)
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.params["ip"][0].diff, [[0.0, 0.0]])
    assert net.learnable_params[0].lr_mult == 0


def test_layers_off_the_loss_path_skip_backward(tmp_path, caplog):
    text = LINEAR + """
layer { name: "side" type: "Power" bottom: "h" top: "side" }
"""
    with caplog.at_level(logging.INFO, logger="brewnet"):
        net = build(tmp_path, text)
    assert "side does not need backward computation." in caplog.text
    feed(net, x=X, t=T)
    net.forward()
    assert not net.blobs["side"].tensor.requires_grad


def test_gradient_matches_finite_differences(tmp_path):
    text = """
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 3 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "act" type: "TanH" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
layer { name: "penalty" type: "Power" bottom: "h" top: "hp" power_param { power: 2 } loss_weight: 0.1 }
"""
    torch.manual_seed(0)
    net = build(tmp_path, text, dtype=torch.float64)
    rng = np.random.default_rng(0)
    feed(net, x=rng.normal(size=(3, 4)), t=rng.normal(size=(3, 2)))
    net.forward()
    net.backward()
    analytic = {
        "x": net.blobs["x"].diff.copy(),
        "w1": net.params["ip1"][0].diff.copy(),
        "b1": net.params["ip1"][1].diff.copy(),
        "w2": net.params["ip2"][0].diff.copy(),
    }
    arrays = {
        "x": net.blobs["x"].data,
        "w1": net.params["ip1"][0].data,
        "b1": net.params["ip1"][1].data,
        "w2": net.params["ip2"][0].data,
    }
    step = 1e-6
    for key, array in arrays.items():
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            saved = array[index]
            array[index] = saved + step
            net.forward()
            plus = net.loss
            array[index] = saved - step
            net.forward()
            minus = net.loss
            array[index] = saved
            numeric[index] = (plus - minus) / (2 * step)
        np.testing.assert_allclose(analytic[key], numeric, rtol=1e-5, atol=1e-8, err_msg=key)


# ------------------------------------------------------------------ shared parameters
SHARED = """
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 2 }} }} }}
layer {{ name: "t" type: "Input" top: "t" input_param {{ shape {{ dim: 2 dim: 1 }} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "x" top: "h1" param {{ name: "w" {first} }}
  inner_product_param {{ num_output: 1 bias_term: false weight_filler {{ type: "constant" value: 0.5 }} }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "x" top: "h2" param {{ name: "w" {second} }}
  inner_product_param {{ num_output: {outputs} bias_term: false weight_filler {{ type: "constant" value: 0.5 }} }} }}
layer {{ name: "l1" type: "EuclideanLoss" bottom: "h1" bottom: "t" top: "l1" }}
layer {{ name: "l2" type: "EuclideanLoss" bottom: "h2" bottom: "t" top: "l2" loss_weight: 2 }}
"""


def test_shared_param_gradients_add_up(tmp_path):
    net = build(tmp_path, SHARED.format(first="", second="", outputs=1))
    assert net.params["ip1"][0].tensor is net.params["ip2"][0].tensor
    assert len(net.learnable_params) == 1
    feed(net, x=X, t=T)
    net.forward()
    assert net.loss == pytest.approx(0.9375)
    net.backward()
    np.testing.assert_allclose(net.params["ip1"][0].diff, [[5.25, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(net.params["ip2"][0].diff, [[5.25, 0.0]], rtol=1e-6)


def test_shared_param_shape_mismatch_names_both_layers(tmp_path):
    text = SHARED.format(first="", second="", outputs=2)
    text = text.replace('top: "l2" loss_weight: 2', 'top: "l2" loss_weight: 2')
    with pytest.raises(NetDefinitionError) as caught:
        build(tmp_path, text)
    message = str(caught.value)
    assert "owned by layer 'ip1'" in message
    assert "layer 'ip2'" in message
    assert "1 2 (2)" in message
    assert "2 2 (4)" in message


def test_shared_param_lr_mult_conflict_is_an_error(tmp_path):
    text = SHARED.format(first="lr_mult: 1", second="lr_mult: 2", outputs=1)
    with pytest.raises(NetDefinitionError, match="mismatched lr_mult"):
        build(tmp_path, text)


def test_shared_param_explicit_lr_mult_on_one_side_is_used(tmp_path):
    net = build(tmp_path, SHARED.format(first="", second="lr_mult: 3", outputs=1))
    assert net.learnable_params[0].lr_mult == 3


# ------------------------------------------------------------------ ranges and reshape
def test_forward_range_uses_current_blob_data(tmp_path):
    net = build(tmp_path, LINEAR)
    feed(net, x=X, t=T)
    net.forward()
    net.blobs["h"].data[...] = [[2.0], [0.0]]
    out = net.forward(start="loss")
    # (1^2 + 0^2) / (2 * 2)
    assert out["loss"] == pytest.approx(0.25)


def test_forward_end_returns_that_layers_tops(tmp_path):
    net = build(tmp_path, LINEAR)
    feed(net, x=X, t=T)
    out = net.forward(end="ip")
    np.testing.assert_allclose(out["h"], [[1.5], [1.0]])


def test_backward_from_user_diff(tmp_path):
    # Without force_backward no layer is under a loss, so backward would do nothing.
    text = """
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 1 bias_term: false
    weight_filler { type: "constant" value: 0.5 } } }
"""
    net = build(tmp_path, text)
    feed(net, x=X)
    net.forward()
    net.backward(h=np.array([[1.0], [2.0]]))
    np.testing.assert_allclose(net.params["ip"][0].diff, [[7.0, 0.0]])


def test_reshape_follows_new_input_shape(tmp_path):
    net = build(tmp_path, LINEAR)
    net.blobs["x"].reshape(5, 2)
    net.blobs["t"].reshape(5, 1)
    net.reshape()
    assert net.blobs["h"].shape == (5, 1)
    feed(net, x=np.ones((5, 2)), t=np.zeros((5, 1)))
    net.forward()
    # h = 1.0 everywhere: 5 * 1 / (2 * 5)
    assert net.loss == pytest.approx(0.5)


def test_net_accepts_pycaffe_argument_forms(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(LINEAR)
    reference = brewnet.Net(str(path), brewnet.TRAIN)
    weights = tmp_path / "w.caffemodel"
    reference.params["ip"][0].data[...] = [[0.25, -1.0]]
    reference.save(str(weights))
    for net in (
        brewnet.Net(str(path), str(weights), brewnet.TEST),
        brewnet.Net(str(path), brewnet.TEST, weights=str(weights)),
        brewnet.Net(str(path), phase=brewnet.TEST, weights=str(weights)),
    ):
        assert net.phase == brewnet.TEST
        np.testing.assert_array_equal(net.params["ip"][0].data, [[0.25, -1.0]])


def test_invalid_phase_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="phase must be brewnet.TRAIN"):
        build(tmp_path, LINEAR, 7)


def test_loss_layer_without_top_gets_automatic_top(tmp_path):
    text = LINEAR.replace(' top: "loss" }', " }")
    net = build(tmp_path, text)
    assert net.top_names["loss"] == ["(automatic)"]
    assert "(automatic)" not in net.outputs
    feed(net, x=X, t=T)
    net.forward()
    assert net.loss == pytest.approx(0.3125)
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, [[1.75, 0.0]], rtol=1e-6)


def test_blob_loss_weight_comes_from_last_writer(tmp_path):
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }
layer { name: "p" type: "Power" bottom: "x" top: "y" loss_weight: 3 }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
"""
    net = build(tmp_path, text)
    assert net.blob_loss_weights["y"] == 0.0
    net.forward(x=np.array([-1.0, 2.0]))
    # The weight still applies to the Power output, before the ReLU rewrites it.
    assert net.loss == pytest.approx(3.0)


def test_legacy_inputs_without_shape_are_dropped(tmp_path, caplog):
    text = 'input: "data"\nlayer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
    with caplog.at_level(logging.WARNING, logger="brewnet"):
        net = build(tmp_path, text, brewnet.TEST)
    assert "have no input_shape or input_dim and are dropped" in caplog.text
    assert list(net.blobs) == ["x"]


def test_softmax_loss_without_top_gets_automatic_top(tmp_path):
    text = """
layer { name: "x" type: "Input" top: "x" top: "y"
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" }
"""
    net = build(tmp_path, text)
    feed(net, x=np.array([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]), y=np.array([0.0, 2.0]))
    net.forward()
    # Case A of the loss references: the same scores and labels give 0.765126348.
    assert net.loss == pytest.approx(0.765126348, rel=1e-6)


def test_blobs_in_the_definition_initialize_the_layer(tmp_path):
    text = LINEAR.replace(
        "inner_product_param {",
        "blobs { shape { dim: 1 dim: 2 } data: 0.25 data: -1.0 } inner_product_param {",
    )
    net = build(tmp_path, text)
    np.testing.assert_array_equal(net.params["ip"][0].data, [[0.25, -1.0]])
    assert not net.net_param.layer[2].blobs


def test_blobs_in_the_definition_with_wrong_shape(tmp_path):
    text = LINEAR.replace(
        "inner_product_param {",
        "blobs { shape { dim: 2 dim: 2 } data: 1 data: 2 data: 3 data: 4 } inner_product_param {",
    )
    with pytest.raises(brewnet.errors.ModelFileError, match="layer 'ip'"):
        build(tmp_path, text)


DEEP = """
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 2 bias_term: false
    weight_filler { type: "constant" value: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "square" type: "Power" bottom: "h" top: "y" power_param { power: 2 } }
"""


def test_backward_from_a_middle_layer_uses_its_top_diff(tmp_path):
    net = build(tmp_path, DEEP)
    net.forward(x=X, end="ip")
    np.testing.assert_allclose(net.blobs["h"].data, [[1.5, 1.5], [1.0, 1.0]])
    net.blobs["h"].diff[...] = [[1.0, 0.0], [0.0, 2.0]]
    net.backward(start="ip")
    # dL/dx = diff(h) @ W with W all 0.5.
    np.testing.assert_allclose(net.blobs["x"].diff, [[0.5, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(net.params["ip"][0].diff, [[1.0, 2.0], [6.0, -2.0]])


def test_backward_after_partial_forward_reaches_earlier_layers(tmp_path):
    net = build(tmp_path, DEEP)
    net.forward(x=X)
    net.forward(start="square")
    net.backward(y=np.ones((2, 2)))
    # d(sum(h^2))/dh = 2h, then through ReLU (h > 0) and ip.
    np.testing.assert_allclose(net.blobs["h"].diff, [[3.0, 3.0], [2.0, 2.0]])
    np.testing.assert_allclose(net.blobs["x"].diff, [[3.0, 3.0], [2.0, 2.0]])


def test_backward_after_training_step_needs_a_forward(tmp_path):
    net = build(tmp_path, LINEAR)
    feed(net, x=X, t=T)
    net.forward_backward()
    net.forward(start="loss")
    with pytest.raises(RuntimeError, match="run net.forward\\(\\) before net.backward\\(\\)"):
        net.backward()


def test_forward_backward_fills_blob_diffs(tmp_path):
    net = build(tmp_path, "force_backward: true\n" + LINEAR)
    feed(net, x=X, t=T)
    net.forward_backward()
    np.testing.assert_allclose(net.blobs["h"].diff, [[0.25], [0.5]], rtol=1e-6)
    np.testing.assert_allclose(net.blobs["x"].diff, [[0.125, 0.125], [0.25, 0.25]], rtol=1e-6)
    np.testing.assert_allclose(net.blobs["loss"].diff, 1.0)
    # A second pass overwrites the blob diffs, as Caffe's Backward does.
    net.forward_backward()
    np.testing.assert_allclose(net.blobs["h"].diff, [[0.25], [0.5]], rtol=1e-6)


def test_forward_backward_can_skip_blob_diffs(tmp_path):
    net = build(tmp_path, LINEAR)
    net.fill_blob_diffs = False
    feed(net, x=X, t=T)
    net.forward_backward()
    np.testing.assert_array_equal(net.blobs["h"].diff, [[0.0], [0.0]])
    np.testing.assert_allclose(net.params["ip"][0].diff, [[1.75, 0.0]], rtol=1e-6)


def test_written_text_uses_caffes_float_form(tmp_path):
    from brewnet.io.prototxt import read_text, write_text
    from brewnet.proto import caffe_pb2

    param = caffe_pb2.NetParameter()
    layer = param.layer.add(name="ip", type="InnerProduct")
    layer.param.add(lr_mult=1, decay_mult=0.5)
    layer.inner_product_param.num_output = 10
    layer.inner_product_param.weight_filler.std = 1e-05
    path = tmp_path / "out.prototxt"
    write_text(path, param)
    text = path.read_text()
    assert "lr_mult: 1\n" in text
    assert "decay_mult: 0.5\n" in text
    assert "num_output: 10\n" in text
    assert "std: 1e-05\n" in text
    assert read_text(path, caffe_pb2.NetParameter()) == param
