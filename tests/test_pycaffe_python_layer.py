"""Python layers (type "Python"): user classes over NumPy blobs, run by autograd."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch

import brewnet as caffe
from brewnet.errors import LayerSetupError

_counter = itertools.count()

LAYERS_SOURCE = '''
import numpy as np
import brewnet as caffe


class TimesTen(caffe.Layer):
    """top = 10 * bottom."""

    def setup(self, bottom, top):
        self.calls = []

    def reshape(self, bottom, top):
        self.calls.append("reshape")
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.calls.append("forward")
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class EuclideanLoss(caffe.Layer):
    """sum((a - b)^2) / (2 N), with Caffe's EuclideanLoss gradients."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                sign = 1 if i == 0 else -1
                bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


class AddParam(caffe.Layer):
    """top = bottom + w, with one learnable scalar w that starts at 0."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += top[0].diff.sum()
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff


class Phase(caffe.Layer):
    """A scalar top holding the phase; param_str is kept for inspection."""

    def setup(self, bottom, top):
        self.seen_param_str = self.param_str

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase

    def backward(self, top, propagate_down, bottom):
        pass


class Counter(caffe.Layer):
    """A data layer: top (2, 1) contains [k, k + 1] on the k-th forward (from 0)."""

    def setup(self, bottom, top):
        self.k = 0

    def reshape(self, bottom, top):
        top[0].reshape(2, 1)

    def forward(self, bottom, top):
        top[0].data[:, 0] = [self.k, self.k + 1]
        self.k += 1

    def backward(self, top, propagate_down, bottom):
        pass


class DoubleInPlace(caffe.Layer):
    """In place: top = 2 * bottom; backward doubles the shared diff in place."""

    def setup(self, bottom, top):
        self.same_blob = top[0] is bottom[0]

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] *= 2

    def backward(self, top, propagate_down, bottom):
        top[0].diff[...] *= 2


class FailsInSetup(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("setup refused")

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class LateBlob(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        self.blobs.add_blob(2)
        top[0].reshape(1)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class NoBackward(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data


class NotALayer:
    pass
'''


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Write LAYERS_SOURCE as a fresh module on sys.path and return its name."""
    name = f"pycaffe_test_layers_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(LAYERS_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def python_layer(name, cls, bottoms, tops, extra="", module_name=""):
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    top = " ".join(f'top: "{t}"' for t in tops)
    return (
        f'layer {{ name: "{name}" type: "Python" {bottom} {top} '
        f'python_param {{ module: "{module_name}" layer: "{cls}" }} {extra} }}\n'
    )


def input_layer(name, *dims):
    shape = " ".join(f"dim: {d}" for d in dims)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {shape} }} }} }}\n'


def build(tmp_path, text, phase=caffe.TRAIN, **kwargs):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase, **kwargs)


# ------------------------------------------------------------------ forward and backward
def times_ten_net(tmp_path, module):
    text = "force_backward: true\n" + input_layer("data", 2, 3)
    text += python_layer("one", "TimesTen", ["data"], ["one"], module_name=module)
    text += python_layer("two", "TimesTen", ["one"], ["two"], module_name=module)
    text += python_layer("three", "TimesTen", ["two"], ["three"], module_name=module)
    return build(tmp_path, text)


def test_forward_chains_three_layers(tmp_path, module):
    net = times_ten_net(tmp_path, module)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["data"].data[...] = x
    out = net.forward()
    np.testing.assert_array_equal(out["three"], 1000 * x)
    np.testing.assert_array_equal(net.blobs["one"].data, 10 * x)


def test_backward_multiplies_diffs(tmp_path, module):
    net = times_ten_net(tmp_path, module)
    net.blobs["data"].data[...] = 1
    net.forward()
    diffs = net.backward(three=np.ones((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(diffs["data"], np.full((2, 3), 1000.0))
    np.testing.assert_array_equal(net.blobs["two"].diff, np.full((2, 3), 10.0))


def test_reshape_runs_before_every_forward(tmp_path, module):
    net = times_ten_net(tmp_path, module)
    layer = net.layer_dict["one"]
    assert layer.calls == ["reshape"]
    net.forward()
    assert layer.calls == ["reshape", "reshape", "forward"]
    net.blobs["data"].reshape(4, 5)
    net.reshape()
    assert net.blobs["three"].shape == (4, 5)
    net.blobs["data"].data[...] = 2
    np.testing.assert_array_equal(net.forward()["three"], np.full((4, 5), 2000.0))


def test_layer_view_is_user_object(tmp_path, module):
    net = times_ten_net(tmp_path, module)
    layer = net.layers[1]
    assert type(layer).__name__ == "TimesTen"
    assert layer.type == "Python"
    assert layer is net.layer_dict["one"]
    assert len(layer.blobs) == 0


# ------------------------------------------------------------------ a loss written in Python
def euclidean_net(tmp_path, module, loss_type="Python", weight=1.0, dtype=torch.float32):
    text = input_layer("x", 2, 3) + input_layer("y", 2, 3)
    text += (
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" '
        "inner_product_param { num_output: 3 bias_term: false "
        'weight_filler { type: "constant" value: 0.5 } } }\n'
    )
    if loss_type == "Python":
        text += python_layer(
            "loss", "EuclideanLoss", ["h", "y"], ["loss"], f"loss_weight: {weight}", module
        )
    else:
        text += (
            'layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "y" '
            f'top: "loss" loss_weight: {weight} }}\n'
        )
    return build(tmp_path, "force_backward: true\n" + text, dtype=dtype)


X = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 2.0]])
Y = np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def test_python_euclidean_loss_value(tmp_path, module):
    net = euclidean_net(tmp_path, module)
    net.blobs["x"].data[...] = X
    net.blobs["y"].data[...] = Y
    out = net.forward()
    # h = 0.5 * row sums: [3, 3, 3] and [0.5, 0.5, 0.5]; squared distances
    # (9 + 4 + 9) + (0.25 * 3) = 22.75, over 2 N = 4.
    assert out["loss"].shape == (1,)
    assert out["loss"][0] == pytest.approx(22.75 / 4)
    assert net.loss == pytest.approx(22.75 / 4)


def test_python_loss_weight_scales(tmp_path, module):
    net = euclidean_net(tmp_path, module, weight=3.0)
    net.blobs["x"].data[...] = X
    net.blobs["y"].data[...] = Y
    net.forward()
    assert net.loss == pytest.approx(3 * 22.75 / 4)
    net.backward()
    # d loss / d h = 3 * (h - y) / N
    expected = 3 * (np.array([[3.0, 2.0, 3.0], [-0.5, -0.5, -0.5]])) / 2
    np.testing.assert_allclose(net.blobs["h"].diff, expected, rtol=1e-6)


def test_python_loss_without_weight_is_zero(tmp_path, module):
    text = input_layer("x", 2, 3) + input_layer("y", 2, 3)
    text += python_layer("loss", "EuclideanLoss", ["x", "y"], ["loss"], module_name=module)
    net = build(tmp_path, text)
    assert net.blob_loss_weights["loss"] == 0.0
    net.blobs["x"].data[...] = X
    net.forward()
    assert net.loss == 0.0


def test_python_loss_matches_builtin(tmp_path, module):
    diffs = {}
    for kind in ("Python", "EuclideanLoss"):
        net = euclidean_net(tmp_path, module, loss_type=kind)
        net.blobs["x"].data[...] = X
        net.blobs["y"].data[...] = Y
        net.forward()
        diffs[kind] = net.backward(diffs=["h", "y"])
        diffs[kind]["w"] = net.params["ip"][0].diff.copy()
    for name in ("x", "h", "y", "w"):
        np.testing.assert_allclose(diffs["Python"][name], diffs["EuclideanLoss"][name], rtol=1e-6)


def test_python_loss_gradcheck(tmp_path, module):
    net = euclidean_net(tmp_path, module, dtype=torch.float64)
    layer = net._layer_dict["loss"]
    a = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(Y + 0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: layer.forward([p, q])[0], (a, b))


def test_net_gradient_matches_finite_differences(tmp_path, module):
    net = euclidean_net(tmp_path, module, dtype=torch.float64)
    net.blobs["x"].data[...] = X
    net.blobs["y"].data[...] = Y
    net.forward()
    analytic = net.backward()["x"].copy()
    numeric = np.zeros_like(X)
    step = 1e-6
    for index in np.ndindex(X.shape):
        values = []
        for sign in (1, -1):
            shifted = X.copy()
            shifted[index] += sign * step
            net.blobs["x"].data[...] = shifted
            values.append(net.forward()["loss"][0])
        numeric[index] = (values[0] - values[1]) / (2 * step)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ parameters
def add_param_text(module):
    return input_layer("x", 1, 2) + python_layer("add", "AddParam", ["x"], ["y"], "loss_weight: 1", module)


def test_param_blob_is_net_param(tmp_path, module):
    net = build(tmp_path, add_param_text(module))
    assert list(net.params) == ["add"]
    assert net.params["add"][0].shape == (1,)
    net.layers[1].blobs[0].data[0] = 2.5
    assert net.params["add"][0].data[0] == 2.5
    net.blobs["x"].data[...] = [[1.0, 2.0]]
    np.testing.assert_array_equal(net.forward()["y"], [[3.5, 4.5]])


def test_param_diff_written_by_backward(tmp_path, module):
    net = build(tmp_path, add_param_text(module))
    net.forward()
    net.backward()
    # The top diff is its loss weight 1 at both positions.
    assert net.params["add"][0].diff[0] == 2.0


def test_param_trained_by_solver(tmp_path, module):
    net_path = tmp_path / "add.prototxt"
    net_path.write_text(add_param_text(module))
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(
        f'net: "{net_path}"\nbase_lr: 0.5\nlr_policy: "fixed"\nmax_iter: 10\n'
        f'snapshot_after_train: false\nsolver_mode: CPU\ndisplay: 0\n'
    )
    solver = caffe.SGDSolver(str(solver_path))
    solver.step(3)
    # Each step: diff = 2 (two positions with weight 1), w -= 0.5 * 2.
    assert solver.net.params["add"][0].data[0] == pytest.approx(-3.0)
    assert solver.net.layers[1].blobs[0].data[0] == pytest.approx(-3.0)


def test_param_saved_and_loaded(tmp_path, module):
    net = build(tmp_path, add_param_text(module))
    net.params["add"][0].data[0] = 7.0
    weights = tmp_path / "add.caffemodel"
    net.save(str(weights))
    loaded = build(tmp_path, add_param_text(module), weights=str(weights))
    assert loaded.params["add"][0].data[0] == 7.0


def test_add_blob_outside_setup(tmp_path, module):
    text = input_layer("x", 1) + python_layer("late", "LateBlob", ["x"], ["y"], module_name=module)
    with pytest.raises(LayerSetupError) as caught:
        build(tmp_path, text)
    message = str(caught.value)
    assert "layer 'late' (type Python)" in message
    assert "add_blob() may only be called in setup()" in message


# ------------------------------------------------------------------ attributes and kinds
def test_phase_and_param_str(tmp_path, module):
    text = input_layer("x", 1) + (
        'layer { name: "phase" type: "Python" bottom: "x" top: "p" python_param { '
        f'module: "{module}" layer: "Phase" param_str: "{{\'k\': 3}}" }} }}\n'
    )
    for phase in (caffe.TRAIN, caffe.TEST):
        net = build(tmp_path, text, phase)
        assert net.forward()["p"] == phase
        layer = net.layer_dict["phase"]
        assert layer.phase == phase
        assert layer.seen_param_str == "{'k': 3}"
        assert layer.param_str == "{'k': 3}"


def test_data_layer_without_bottoms(tmp_path, module):
    text = python_layer("count", "Counter", [], ["c"], module_name=module)
    text += 'layer { name: "sq" type: "Power" bottom: "c" top: "sq" power_param { power: 2 } }\n'
    net = build(tmp_path, text)
    assert net.blobs["c"].shape == (2, 1)
    np.testing.assert_array_equal(net.forward()["sq"], [[0.0], [1.0]])
    np.testing.assert_array_equal(net.forward()["sq"], [[1.0], [4.0]])


def test_in_place_layer_shares_blob(tmp_path, module):
    text = "force_backward: true\n" + input_layer("x", 3)
    text += python_layer("double", "DoubleInPlace", ["x"], ["x"], module_name=module)
    text += 'layer { name: "sq" type: "Power" bottom: "x" top: "sq" power_param { power: 2 } }\n'
    net = build(tmp_path, text)
    assert net.layer_dict["double"].same_blob
    net.blobs["x"].data[...] = [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(net.forward()["sq"], [4.0, 16.0, 36.0])
    # d sq / d x = 2 * (2x) * 2 = 8x, with the in-place diff doubled by the layer.
    diffs = net.backward(sq=np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(diffs["x"], [8.0, 16.0, 24.0])


# ------------------------------------------------------------------ errors
def test_missing_module_names_layer_and_module(tmp_path):
    text = input_layer("x", 1) + python_layer("p", "Any", ["x"], ["y"], module_name="no_such_module_here")
    with pytest.raises(LayerSetupError) as caught:
        build(tmp_path, text)
    message = str(caught.value)
    assert message.startswith("layer 'p' (type Python): cannot import python_param.module 'no_such_module_here'")
    assert "PYTHONPATH" in message


def test_failing_dependency_is_reported(tmp_path, monkeypatch):
    (tmp_path / "needs_missing_dep.py").write_text("import surely_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = input_layer("x", 1) + python_layer("p", "Any", ["x"], ["y"], module_name="needs_missing_dep")
    try:
        with pytest.raises(LayerSetupError) as caught:
            build(tmp_path, text)
    finally:
        sys.modules.pop("needs_missing_dep", None)
    message = str(caught.value)
    assert "importing python_param.module 'needs_missing_dep' failed" in message
    assert "surely_absent_dependency" in message


def test_missing_class_suggests_names(tmp_path, module):
    text = input_layer("x", 1) + python_layer("p", "TimesTem", ["x"], ["y"], module_name=module)
    with pytest.raises(LayerSetupError) as caught:
        build(tmp_path, text)
    message = str(caught.value)
    assert f"module '{module}'" in message
    assert "has no class 'TimesTem'" in message
    assert "did you mean 'TimesTen'?" in message


def test_class_without_methods(tmp_path, module):
    text = input_layer("x", 1) + python_layer("p", "NotALayer", ["x"], ["y"], module_name=module)
    with pytest.raises(LayerSetupError) as caught:
        build(tmp_path, text)
    assert f"class {module}.NotALayer lacks setup, reshape, forward, backward" in str(caught.value)


def test_empty_python_param(tmp_path):
    text = input_layer("x", 1) + 'layer { name: "p" type: "Python" bottom: "x" top: "y" }\n'
    with pytest.raises(LayerSetupError) as caught:
        build(tmp_path, text)
    assert "python_param.module is empty" in str(caught.value)
    text = input_layer("x", 1) + (
        'layer { name: "p" type: "Python" bottom: "x" top: "y" python_param { module: "m" } }\n'
    )
    with pytest.raises(LayerSetupError) as caught:
        build(tmp_path, text)
    assert "python_param.layer is empty" in str(caught.value)


def test_user_exception_propagates_with_note(tmp_path, module):
    text = input_layer("x", 1) + python_layer("bad", "FailsInSetup", ["x"], ["y"], module_name=module)
    with pytest.raises(RuntimeError, match="setup refused") as caught:
        build(tmp_path, text)
    assert f"in {module}.FailsInSetup.setup() of layer 'bad' (type Python)" in caught.value.__notes__


def test_missing_backward_message(tmp_path, module):
    text = "force_backward: true\n" + input_layer("x", 2)
    text += python_layer("nb", "NoBackward", ["x"], ["y"], module_name=module)
    net = build(tmp_path, text)
    net.forward()
    with pytest.raises(NotImplementedError, match="NoBackward has no backward"):
        net.backward(y=np.ones(2, dtype=np.float32))


def test_base_class_defaults_raise():
    layer = caffe.Layer()
    assert layer.type == "Python"
    assert layer.param_str == ""
    with pytest.raises(NotImplementedError, match="has no reshape"):
        layer.reshape([], [])
    with pytest.raises(NotImplementedError, match="has no forward"):
        layer.forward([], [])
    with pytest.raises(RuntimeError, match="add_blob needs a layer built by a net"):
        layer.blobs.add_blob(1)


