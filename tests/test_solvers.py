"""Solvers: Caffe's reference runs, the update rules in closed form, logs and errors."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from reference_case import REFERENCE, case_names

import brewnet
from brewnet.errors import NetDefinitionError, SolverError
from brewnet.proto import caffe_pb2
from brewnet.solvers import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    SolverAction,
    get_solver,
    read_solver_parameter,
    solver_type_list,
)
from brewnet.solvers.base import format_number

X = np.array([[1.0, 2.0], [3.0, -1.0]])
T = np.array([[1.0], [0.0]])

# Cases H and I: one InnerProduct (1 output, no bias, weights 0.5) and a EuclideanLoss.
LINEAR = """
name: "linear"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 1 bias_term: false
    weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
"""

BASE_SOLVER = """
net: "net.prototxt"
base_lr: 0.1
lr_policy: "fixed"
max_iter: 100
snapshot_after_train: false
"""


def write_solver(tmp_path, solver_text, net_text=LINEAR, net_name="net.prototxt"):
    (tmp_path / net_name).write_text(net_text)
    path = tmp_path / "solver.prototxt"
    path.write_text(solver_text)
    return path


def make_solver(
    tmp_path, monkeypatch, extra="", net_text=LINEAR, base=BASE_SOLVER, **kw
):
    monkeypatch.chdir(tmp_path)
    path = write_solver(tmp_path, base + extra, net_text)
    return get_solver(str(path), **kw)


def feed(net, **arrays):
    for name, value in arrays.items():
        net.blobs[name].data[...] = value


def weights(solver, layer="ip", index=0):
    return solver.net.params[layer][index].data.copy()


# ============================================================== Caffe's reference runs
SOLVER_CASES = case_names("solvers")


def load_reference_params(net, data):
    for key in data.files:
        parts = key.split("/")
        if parts[0] == "param":
            net.params[parts[1]][int(parts[2])].data[...] = data[key]


@pytest.mark.parametrize("case", SOLVER_CASES)
def test_reference_solver_run(case, monkeypatch):
    folder = REFERENCE / "solvers" / case
    monkeypatch.chdir(folder)
    solver = get_solver("solver.prototxt")
    data = np.load("data.npz")
    net = solver.net
    load_reference_params(net, data)
    previous = {key: data[key] for key in data.files if key.startswith("param/")}
    for k in range(6):
        for name in ("x", "y"):
            net.blobs[name].data[...] = data[f"step{k}/input/{name}"]
        solver.step(1)
        expected_loss = float(data[f"step{k}/loss"])
        assert abs(net.loss - expected_loss) <= 1e-5 * abs(expected_loss), (
            f"{case} step {k}: loss {net.loss}, Caffe {expected_loss}"
        )
        for key in data.files:
            if not key.startswith(f"step{k}/param/"):
                continue
            _, _, layer, index = key.split("/")
            actual = net.params[layer][int(index)].data.astype(np.float64)
            expected = data[key].astype(np.float64)
            before = previous[f"param/{layer}/{index}"].astype(np.float64)
            scale = np.max(np.abs(expected))
            assert np.max(np.abs(actual - expected)) <= 1e-5 * scale, (
                f"{case} step {k}: {layer}[{index}] differs from Caffe"
            )
            # The update itself, which is small next to the weights, must agree too.
            update_scale = np.max(np.abs(expected - before))
            assert np.max(np.abs((actual - before) - (expected - before))) <= (
                1e-4 * update_scale + 1e-9
            ), f"{case} step {k}: the update of {layer}[{index}] differs from Caffe"
            previous[f"param/{layer}/{index}"] = expected
            # Continue from Caffe's values so that errors do not compound.
            net.params[layer][int(index)].data[...] = data[key]
    assert solver.iter == 6


def test_reference_solver_classes(monkeypatch):
    expected = {
        "SGD": SGDSolver,
        "Nesterov": NesterovSolver,
        "AdaGrad": AdaGradSolver,
        "RMSProp": RMSPropSolver,
        "AdaDelta": AdaDeltaSolver,
        "Adam": AdamSolver,
        "SGD_L1_clip_itersize": SGDSolver,
    }
    assert set(SOLVER_CASES) == set(expected)
    for case, cls in expected.items():
        monkeypatch.chdir(REFERENCE / "solvers" / case)
        assert type(get_solver("solver.prototxt")) is cls


def test_solver_type_list():
    assert solver_type_list() == [
        "AdaDelta",
        "AdaGrad",
        "Adam",
        "Nesterov",
        "RMSProp",
        "SGD",
    ]


# ===================================================== case H: display and average_loss
H_LOSSES = [0.3125, 0.0828125, 0.0243379, 0.00840547, 0.00349444]
H_DISPLAYED = [0.3125, 0.197656, 0.139883, 0.0385186, 0.0120793]
DISPLAY_LINE = re.compile(
    r"^Iteration (\d+) \(\S+ iter/s, \S+s/1 iters\), loss = (\S+)$"
)
TRAIN_LINE = re.compile(
    r"^    Train net output #0: loss = (\S+) \(\* 1 = (\S+) loss\)$"
)


def solver_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "brewnet.solver"]


def test_average_loss_display(tmp_path, monkeypatch, caplog):
    solver = make_solver(
        tmp_path, monkeypatch, "momentum: 0\naverage_loss: 3\ndisplay: 1\n"
    )
    feed(solver.net, x=X, t=T)
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver.step(5)
    messages = solver_messages(caplog)
    displayed = [m for m in map(DISPLAY_LINE.match, messages) if m]
    outputs = [m for m in map(TRAIN_LINE.match, messages) if m]
    assert [int(m.group(1)) for m in displayed] == [0, 1, 2, 3, 4]
    assert [float(m.group(2)) for m in displayed] == pytest.approx(
        H_DISPLAYED, rel=1e-5
    )
    assert [float(m.group(1)) for m in outputs] == pytest.approx(H_LOSSES, rel=1e-5)
    assert [float(m.group(2)) for m in outputs] == pytest.approx(H_LOSSES, rel=1e-5)
    assert [m.group(2) for m in displayed] == [format_number(v) for v in H_DISPLAYED]


def test_average_loss_resets_each_step_call(tmp_path, monkeypatch, caplog):
    solver = make_solver(
        tmp_path, monkeypatch, "momentum: 0\naverage_loss: 3\ndisplay: 1\n"
    )
    feed(solver.net, x=X, t=T)
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    for _ in range(5):
        solver.step(1)
    displayed = [m for m in map(DISPLAY_LINE.match, solver_messages(caplog)) if m]
    assert [float(m.group(2)) for m in displayed] == pytest.approx(H_LOSSES, rel=1e-5)


def test_display_lr_and_interval(tmp_path, monkeypatch, caplog):
    solver = make_solver(tmp_path, monkeypatch, "display: 2\n")
    feed(solver.net, x=X, t=T)
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver.step(5)
    messages = solver_messages(caplog)
    assert [m for m in messages if ", lr = " in m] == [
        "Iteration 0, lr = 0.1",
        "Iteration 2, lr = 0.1",
        "Iteration 4, lr = 0.1",
    ]
    assert sum(1 for m in messages if "Train net output" in m) == 3


def test_format_number_is_cpp_stream_style():
    assert format_number(0.01) == "0.01"
    assert format_number(1.0) == "1"
    assert format_number(2.3867354) == "2.38674"
    assert format_number(0.000179862) == "0.000179862"
    assert format_number(1e-5) == "1e-05"
    assert format_number(np.float32(0.0093353)) == "0.0093353"
    assert format_number(123456789.0) == "1.23457e+08"


# ===================================================== case I: clipping and iter_size
@pytest.mark.parametrize("iter_size, expected", [(1, 0.4), (2, 0.45), (4, 0.475)])
def test_clip_gradients_with_iter_size(
    tmp_path, monkeypatch, caplog, iter_size, expected
):
    solver = make_solver(
        tmp_path, monkeypatch, f"clip_gradients: 1\niter_size: {iter_size}\n"
    )
    feed(solver.net, x=X, t=T)
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver.step(1)
    np.testing.assert_allclose(weights(solver), [[expected, 0.5]], rtol=1e-6, atol=1e-7)
    norm = format_number(1.75 * iter_size)
    scale = format_number(np.float32(1) / np.float32(1.75 * iter_size))
    assert (
        f"Gradient clipping: scaling down gradients (L2 norm {norm} > 1) by scale "
        f"factor {scale}"
    ) in solver_messages(caplog)


def test_clip_gradients_below_threshold_does_nothing(tmp_path, monkeypatch, caplog):
    solver = make_solver(tmp_path, monkeypatch, "clip_gradients: 2\n")
    feed(solver.net, x=X, t=T)
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver.step(1)
    np.testing.assert_allclose(
        weights(solver), [[0.5 - 0.175, 0.5]], rtol=1e-6, atol=1e-7
    )
    assert not any("Gradient clipping" in m for m in solver_messages(caplog))


def test_iter_size_decay_not_divided(tmp_path, monkeypatch):
    # weight_decay is added after the division by iter_size, so it is not divided.
    solver = make_solver(tmp_path, monkeypatch, "iter_size: 2\nweight_decay: 0.1\n")
    feed(solver.net, x=X, t=T)
    solver.step(1)
    np.testing.assert_allclose(
        weights(solver), [[0.5 - 0.1 * (1.75 + 0.05), 0.5 - 0.1 * 0.05]], rtol=1e-6
    )


# ======================================================= case J: shared parameters
SHARED = """
name: "shared"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h1" param { name: "w" %s }
  inner_product_param { num_output: 1 bias_term: false
    weight_filler { type: "constant" value: 0.5 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "x" top: "h2" param { name: "w" %s }
  inner_product_param { num_output: 1 bias_term: false
    weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss1" type: "EuclideanLoss" bottom: "h1" bottom: "t" top: "loss1" }
layer { name: "loss2" type: "EuclideanLoss" bottom: "h2" bottom: "t" top: "loss2"
  loss_weight: 2 }
"""


def test_shared_weights_update_once(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, net_text=SHARED % ("", ""))
    feed(solver.net, x=X, t=T)
    assert len(solver.net.learnable_params) == 1
    solver.step(1)
    assert solver.net.loss == pytest.approx(0.9375, rel=1e-6)
    # The shared gradient is 1.75 + 2 * 1.75 = 5.25, applied once.
    np.testing.assert_allclose(
        weights(solver, "ip1"), [[0.5 - 0.525, 0.5]], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(weights(solver, "ip1"), weights(solver, "ip2"))


def test_shared_weights_explicit_lr_mult_on_one_side(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, net_text=SHARED % ("", "lr_mult: 2"))
    feed(solver.net, x=X, t=T)
    solver.step(1)
    np.testing.assert_allclose(
        weights(solver, "ip2"), [[0.5 - 1.05, 0.5]], rtol=1e-6, atol=1e-7
    )


def test_shared_weights_lr_mult_conflict(tmp_path, monkeypatch):
    with pytest.raises(NetDefinitionError) as caught:
        make_solver(
            tmp_path, monkeypatch, net_text=SHARED % ("lr_mult: 1", "lr_mult: 2")
        )
    message = str(caught.value)
    assert "shared param 'w' has mismatched lr_mult" in message
    assert "'ip1'" in message
    assert "'ip2'" in message


# ================================================ hand-computed momentum and decay
def test_momentum_and_weight_decay_by_hand(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, "momentum: 0.9\nweight_decay: 0.1\n")
    feed(solver.net, x=X, t=T)
    solver.step(1)
    # g = [1.75, 0] + 0.1 * [0.5, 0.5]; h = 0.1 * g; w = [0.5, 0.5] - h
    np.testing.assert_allclose(weights(solver), [[0.32, 0.495]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        solver.history[0].numpy(), [[0.18, 0.005]], rtol=1e-6, atol=1e-7
    )
    solver.step(1)
    # residuals [0.31, 0.465]: g = [0.8525, 0.0775] + 0.1 * [0.32, 0.495]
    # h = 0.9 * [0.18, 0.005] + 0.1 * [0.8845, 0.127]
    assert solver.net.loss == pytest.approx(0.07808125, rel=1e-6)
    np.testing.assert_allclose(
        solver.history[0].numpy(), [[0.25045, 0.0172]], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        weights(solver), [[0.06955, 0.4778]], rtol=1e-5, atol=1e-7
    )


def test_l1_regularization_by_hand(tmp_path, monkeypatch):
    solver = make_solver(
        tmp_path, monkeypatch, 'weight_decay: 0.5\nregularization_type: "L1"\n'
    )
    feed(solver.net, x=X, t=T)
    with torch.no_grad():
        solver.net.params["ip"][0].tensor.copy_(torch.tensor([[0.5, -0.5]]))
    solver.step(1)
    # h = [-0.5, 2], residuals [-1.5, 2]: g = [2.25, -2.5] + 0.5 * sign([0.5, -0.5])
    np.testing.assert_allclose(
        weights(solver), [[0.5 - 0.275, -0.5 + 0.3]], rtol=1e-6, atol=1e-7
    )


# ============================================== least squares in closed form (NumPy)
LEAST_SQUARES = """
name: "least_squares"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: %(n)d dim: 3 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: %(n)d dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 1
    weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
"""

LEAST_SQUARES_SHARED = """
name: "least_squares_shared"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: %(n)d dim: 3 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: %(n)d dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  param { name: "w" lr_mult: 1 decay_mult: 1 } param { name: "b" lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 1
    weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.5 } } }
layer { name: "ip_again" type: "InnerProduct" bottom: "x" top: "h2"
  param { name: "w" } param { name: "b" }
  inner_product_param { num_output: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
layer { name: "loss2" type: "EuclideanLoss" bottom: "h2" bottom: "t" top: "loss2"
  loss_weight: 0.5 }
"""


class PassFeeder:
    """Write the next (x, t) batch into the net before each forward-backward pass."""

    def __init__(self, net, batches):
        self.batches = batches
        self.count = 0
        self.run = net.forward_backward
        self.net = net
        net.forward_backward = self

    def __call__(self):
        x, t = self.batches[self.count % len(self.batches)]
        feed(self.net, x=x, t=t)
        self.count += 1
        return self.run()


def least_squares_gradient(x, t, w, b, loss_scale):
    """Gradient of loss_scale * sum((x w^T + b - t)^2) / (2 N) for w (1, D), b (1,)."""
    residual = x @ w.T + b - t
    n = x.shape[0]
    return loss_scale * residual.T @ x / n, loss_scale * residual.sum(axis=0) / n


def expected_least_squares(kind, settings, batches, w, b, iterations, loss_scale):
    """Run Caffe's update rules in float64 NumPy; return the final (w, b)."""
    s = settings
    iter_size = s.get("iter_size", 1)
    params = [w.copy(), b.copy()]
    lr_mults, decay_mults = [1.0, 2.0], [1.0, 0.0]
    history = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    passes = 0
    for it in range(iterations):
        grads = [np.zeros_like(p) for p in params]
        for _ in range(iter_size):
            x, t = batches[passes % len(batches)]
            passes += 1
            gw, gb = least_squares_gradient(x, t, params[0], params[1], loss_scale)
            grads[0] += gw
            grads[1] += gb
        for i, p in enumerate(params):
            g = grads[i] / iter_size + s.get("weight_decay", 0.0) * decay_mults[i] * p
            rate = s["base_lr"] * lr_mults[i]
            m, delta = s.get("momentum", 0.0), s.get("delta", 1e-8)
            if kind == "SGD":
                history[i] = m * history[i] + rate * g
                update = history[i]
            elif kind == "Nesterov":
                old = history[i].copy()
                history[i] = m * history[i] + rate * g
                update = (1 + m) * history[i] - m * old
            elif kind == "AdaGrad":
                history[i] = history[i] + g * g
                update = rate * g / (np.sqrt(history[i]) + delta)
            elif kind == "RMSProp":
                decay = s["rms_decay"]
                history[i] = decay * history[i] + (1 - decay) * g * g
                update = rate * g / (np.sqrt(history[i]) + delta)
            elif kind == "AdaDelta":
                history[i] = m * history[i] + (1 - m) * g * g
                step = g * np.sqrt((second[i] + delta) / (history[i] + delta))
                second[i] = m * second[i] + (1 - m) * step * step
                update = rate * step
            elif kind == "Adam":
                m2 = s["momentum2"]
                history[i] = m * history[i] + (1 - m) * g
                second[i] = m2 * second[i] + (1 - m2) * g * g
                k = it + 1
                correction = np.sqrt(1 - m2**k) / (1 - m**k)
                update = rate * correction * history[i] / (np.sqrt(second[i]) + delta)
            params[i] = p - update
    return params


CLOSED_FORM_CASES = [
    ("SGD", {"base_lr": 0.05}),
    ("SGD", {"base_lr": 0.05, "momentum": 0.9}),
    ("SGD", {"base_lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}),
    ("SGD", {"base_lr": 0.05, "momentum": 0.5, "weight_decay": 0.1, "iter_size": 2}),
    ("Nesterov", {"base_lr": 0.05, "momentum": 0.9}),
    (
        "Nesterov",
        {"base_lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "iter_size": 2},
    ),
    ("AdaGrad", {"base_lr": 0.1, "delta": 1e-6}),
    ("AdaGrad", {"base_lr": 0.1, "weight_decay": 0.1, "iter_size": 2}),
    ("RMSProp", {"base_lr": 0.01, "rms_decay": 0.95, "delta": 1e-6}),
    (
        "RMSProp",
        {"base_lr": 0.01, "rms_decay": 0.9, "weight_decay": 0.1, "iter_size": 2},
    ),
    ("AdaDelta", {"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6}),
    (
        "AdaDelta",
        {"base_lr": 0.5, "momentum": 0.9, "weight_decay": 0.1, "iter_size": 2},
    ),
    ("Adam", {"base_lr": 0.01, "momentum": 0.9, "momentum2": 0.999}),
    (
        "Adam",
        {
            "base_lr": 0.01,
            "momentum": 0.9,
            "momentum2": 0.99,
            "weight_decay": 0.1,
            "iter_size": 2,
        },
    ),
]


def closed_form_run(tmp_path, monkeypatch, kind, settings, net_text, loss_scale):
    rng = np.random.default_rng(7)
    batches = [(rng.normal(size=(4, 3)), rng.normal(size=(4, 1))) for _ in range(3)]
    fields = "".join(f"{key}: {value}\n" for key, value in settings.items())
    text = (
        f'net: "net.prototxt"\ntype: "{kind}"\nlr_policy: "fixed"\nmax_iter: 10\n'
        f"snapshot_after_train: false\nrandom_seed: 3\n{fields}"
    )
    monkeypatch.chdir(tmp_path)
    path = write_solver(tmp_path, text, net_text % {"n": 4})
    solver = get_solver(str(path), dtype=torch.float64)
    w = solver.net.params["ip"][0].data.copy()
    b = solver.net.params["ip"][1].data.copy()
    PassFeeder(solver.net, batches)
    solver.step(5)
    # The solver rounds its settings to float32, as Caffe's SolverParameter does.
    rounded = {key: getattr(solver.param, key) for key in settings}
    expected = expected_least_squares(kind, rounded, batches, w, b, 5, loss_scale)
    return solver, expected


@pytest.mark.parametrize("kind, settings", CLOSED_FORM_CASES)
def test_least_squares_closed_form(tmp_path, monkeypatch, kind, settings):
    solver, (w, b) = closed_form_run(
        tmp_path, monkeypatch, kind, settings, LEAST_SQUARES, 1.0
    )
    np.testing.assert_allclose(solver.net.params["ip"][0].data, w, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(solver.net.params["ip"][1].data, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "kind, settings", [CLOSED_FORM_CASES[2], CLOSED_FORM_CASES[13]]
)
def test_least_squares_shared_params(tmp_path, monkeypatch, kind, settings):
    # Two layers share w and b; the second loss weighs 0.5, so the gradient is 1.5x.
    solver, (w, b) = closed_form_run(
        tmp_path, monkeypatch, kind, settings, LEAST_SQUARES_SHARED, 1.5
    )
    assert len(solver.net.learnable_params) == 2
    np.testing.assert_allclose(solver.net.params["ip"][0].data, w, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        solver.net.params["ip_again"][1].data, b, rtol=1e-6, atol=1e-9
    )


def test_iter_size_two_half_batches_equal_one_full(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    full = [(rng.normal(size=(4, 3)), rng.normal(size=(4, 1))) for _ in range(3)]
    halves = [(x[i : i + 2], t[i : i + 2]) for x, t in full for i in (0, 2)]
    results = []
    for n, iter_size, batches in ((4, 1, full), (2, 2, halves)):
        folder = tmp_path / f"n{n}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        text = (
            'net: "net.prototxt"\nbase_lr: 0.05\nmomentum: 0.9\nweight_decay: 0.01\n'
            f'lr_policy: "fixed"\niter_size: {iter_size}\nrandom_seed: 5\n'
            "snapshot_after_train: false\n"
        )
        path = write_solver(folder, text, LEAST_SQUARES % {"n": n})
        solver = get_solver(str(path), dtype=torch.float64)
        PassFeeder(solver.net, batches)
        solver.step(3)
        results.append([p.data.copy() for p in solver.net.params["ip"]])
    for full_param, half_param in zip(*results):
        np.testing.assert_allclose(half_param, full_param, rtol=1e-12)


def test_lr_mult_zero_freezes_param(tmp_path, monkeypatch):
    net_text = LINEAR.replace('top: "h"\n', 'top: "h" param { lr_mult: 0 }\n')
    solver = make_solver(
        tmp_path, monkeypatch, "momentum: 0.9\nweight_decay: 0.1\n", net_text=net_text
    )
    feed(solver.net, x=X, t=T)
    solver.step(3)
    np.testing.assert_array_equal(weights(solver), [[0.5, 0.5]])


def test_float64_net_steps(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, dtype=torch.float64)
    feed(solver.net, x=X, t=T)
    solver.step(1)
    assert solver.history[0].dtype == torch.float64
    # base_lr is a float field, so the rate is 0.1 rounded to single precision.
    rate = float(np.float32(0.1))
    np.testing.assert_allclose(weights(solver), [[0.5 - rate * 1.75, 0.5]], rtol=1e-12)


# ================================================================ nets and states
STAGED = """
name: "staged"
state { stage: "from_net" }
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 1 bias_term: false
    weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
layer { name: "both_stages" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "extra"
  include { stage: "from_net" stage: "from_solver" } }
layer { name: "test_only" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "test_loss"
  include { phase: TEST } }
layer { name: "level2" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "deep"
  include { min_level: 2 } }
"""


def test_train_state_merges_with_net_state(tmp_path, monkeypatch):
    solver = make_solver(
        tmp_path,
        monkeypatch,
        'train_state { stage: "from_solver" level: 2 }\ntest_iter: 1\ntest_interval: 10\n'
        'test_state { stage: "other" }\n',
        net_text=STAGED,
    )
    train_layers = [layer.name for layer in solver.net.layers]
    assert train_layers == ["x", "t", "ip", "loss", "both_stages", "level2"]
    assert solver.net.phase == brewnet.TRAIN
    test_layers = [layer.name for layer in solver.test_nets[0].layers]
    assert test_layers == ["x", "t", "ip", "loss", "test_only"]
    assert solver.test_nets[0].phase == brewnet.TEST


def test_test_nets_from_every_source(tmp_path, monkeypatch):
    (tmp_path / "test_a.prototxt").write_text(LINEAR.replace("linear", "a"))
    inline = caffe_pb2.NetParameter()
    from google.protobuf import text_format

    text_format.Parse(LINEAR.replace("linear", "inline"), inline)
    param = caffe_pb2.SolverParameter()
    text_format.Parse(
        BASE_SOLVER + 'test_net: "test_a.prototxt"\ntest_iter: 1\ntest_iter: 2\n'
        "test_iter: 3\ntest_interval: 5\n",
        param,
    )
    param.test_net_param.add().CopyFrom(inline)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(LINEAR)
    solver = get_solver(param)
    assert [net.name for net in solver.test_nets] == ["inline", "a", "linear"]


def test_train_net_param_inline(tmp_path, monkeypatch):
    from google.protobuf import text_format

    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.1\nlr_policy: "fixed"\n', param)
    text_format.Parse(LINEAR, param.train_net_param)
    monkeypatch.chdir(tmp_path)
    solver = SGDSolver(param)
    feed(solver.net, x=X, t=T)
    solver.step(1)
    np.testing.assert_allclose(weights(solver), [[0.325, 0.5]], rtol=1e-6, atol=1e-7)


def test_weights_field_finetunes(tmp_path, monkeypatch):
    source = make_solver(tmp_path, monkeypatch)
    with torch.no_grad():
        source.net.params["ip"][0].tensor.copy_(torch.tensor([[0.25, -1.0]]))
    source.net.save(str(tmp_path / "init.caffemodel"))
    solver = make_solver(
        tmp_path,
        monkeypatch,
        'weights: "init.caffemodel"\ntest_iter: 1\ntest_interval: 9\n',
    )
    np.testing.assert_array_equal(weights(solver), [[0.25, -1.0]])
    np.testing.assert_array_equal(
        solver.test_nets[0].params["ip"][0].data, [[0.25, -1.0]]
    )


def test_random_seed_repeats_fillers(tmp_path, monkeypatch):
    text = LEAST_SQUARES % {"n": 4}
    first = make_solver(tmp_path, monkeypatch, "random_seed: 17\n", net_text=text)
    second = make_solver(tmp_path, monkeypatch, "random_seed: 17\n", net_text=text)
    third = make_solver(tmp_path, monkeypatch, "random_seed: 18\n", net_text=text)
    np.testing.assert_array_equal(weights(first), weights(second))
    assert not np.array_equal(weights(first), weights(third))


def test_legacy_solver_type(tmp_path, monkeypatch):
    with pytest.warns(
        DeprecationWarning, match="'solver_type: NESTEROV' is deprecated"
    ):
        solver = make_solver(
            tmp_path, monkeypatch, "solver_type: NESTEROV\nmomentum: 0.9\n"
        )
    assert isinstance(solver, NesterovSolver)
    assert solver.param.type == "Nesterov"
    assert not solver.param.HasField("solver_type")


def test_snapshot_prefix_defaults_to_solver_path(tmp_path):
    path = write_solver(tmp_path, BASE_SOLVER)
    assert read_solver_parameter(str(path)).snapshot_prefix == str(tmp_path / "solver")
    (tmp_path / "snaps").mkdir()
    path.write_text(BASE_SOLVER + f'snapshot_prefix: "{tmp_path / "snaps"}"\n')
    assert read_solver_parameter(str(path)).snapshot_prefix == str(
        tmp_path / "snaps" / "solver"
    )


# ======================================================================= testing
def test_test_outputs_are_means(tmp_path, monkeypatch, caplog):
    solver = make_solver(
        tmp_path,
        monkeypatch,
        "test_iter: 2\ntest_interval: 3\ntest_compute_loss: true\n",
    )
    test_net = solver.test_nets[0]
    batches = [(X, T), (X, T + 1.0)]
    run = test_net.forward_no_grad
    count = [0]

    def feed_then_forward():
        x, t = batches[count[0] % 2]
        count[0] += 1
        feed(test_net, x=x, t=t)
        return run()

    test_net.forward_no_grad = feed_then_forward
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver.test(0)
    # h = [1.5, 1.0]: targets [1, 0] give loss 0.3125 and targets [2, 1] give 0.0625.
    messages = solver_messages(caplog)
    assert messages[0] == "Iteration 0, Testing net (#0)"
    first = 0.3125
    second = ((1.5 - 2.0) ** 2 + (1.0 - 1.0) ** 2) / 4
    mean = format_number((first + second) / 2)
    assert messages[1] == f"Test loss: {mean}"
    assert messages[2] == f"    Test net output #0: loss = {mean} (* 1 = {mean} loss)"
    assert solver.test_outputs[0] == [("loss", pytest.approx((first + second) / 2))]


def test_test_interval_and_initialization(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver = make_solver(tmp_path, monkeypatch, "test_iter: 1\ntest_interval: 2\n")
    feed(solver.net, x=X, t=T)
    feed(solver.test_nets[0], x=X, t=T)
    solver.step(5)
    tested = [m for m in solver_messages(caplog) if "Testing net" in m]
    assert tested == [f"Iteration {i}, Testing net (#0)" for i in (0, 2, 4)]

    caplog.clear()
    solver = make_solver(
        tmp_path,
        monkeypatch,
        "test_iter: 1\ntest_interval: 2\ntest_initialization: false\n",
    )
    solver.step(3)
    tested = [m for m in solver_messages(caplog) if "Testing net" in m]
    assert tested == ["Iteration 2, Testing net (#0)"]


def test_test_net_shares_trained_weights(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, "test_iter: 1\ntest_interval: 1\n")
    feed(solver.net, x=X, t=T)
    feed(solver.test_nets[0], x=X, t=T)
    solver.step(2)
    # Step 1: w = [0.325, 0.5]; step 2: residuals [0.325, 0.475], g = [0.875, 0.0875].
    np.testing.assert_allclose(
        weights(solver), [[0.2375, 0.49125]], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(
        solver.test_nets[0].params["ip"][0].data, weights(solver)
    )
    assert (
        solver.test_nets[0].params["ip"][0].tensor is solver.net.params["ip"][0].tensor
    )


# ============================================================ solve, actions, logs
def test_solve_logs_in_caffe_order(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver = make_solver(
        tmp_path,
        monkeypatch,
        "max_iter: 4\ndisplay: 2\ntest_iter: 1\ntest_interval: 4\nsnapshot_after_train: true\n"
        'snapshot_prefix: "snap"\n',
        base=BASE_SOLVER.replace("max_iter: 100\nsnapshot_after_train: false\n", ""),
    )
    feed(solver.net, x=X, t=T)
    feed(solver.test_nets[0], x=X, t=T)
    solver.solve()
    messages = solver_messages(caplog)
    start = messages.index("Solving linear")
    assert messages[start + 1] == "Learning Rate Policy: fixed"
    assert messages[start + 2] == "Iteration 0, Testing net (#0)"
    tail = messages[
        messages.index("Snapshotting to binary proto file snap_iter_4.caffemodel") :
    ]
    assert (
        tail[1]
        == "Snapshotting solver state to binary proto file snap_iter_4.solverstate"
    )
    assert re.fullmatch(r"Iteration 4, loss = \S+", tail[2])
    assert tail[3] == "Iteration 4, Testing net (#0)"
    assert tail[-1] == "Optimization Done."
    assert (tmp_path / "snap_iter_4.caffemodel").exists()
    assert (tmp_path / "snap_iter_4.solverstate").exists()


def test_setup_logs_loss_weights(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="brewnet")
    make_solver(tmp_path, monkeypatch, net_text=SHARED % ("", ""))
    messages = [r.getMessage() for r in caplog.records]
    done = messages.index("Solver scaffolding done.")
    weighted = [m for m in messages[:done] if "with loss weight" in m]
    assert weighted == ["    with loss weight 1", "    with loss weight 2"]


@pytest.mark.parametrize("stop_value", [SolverAction.STOP, "stop", 1])
def test_stop_action_writes_final_snapshot(tmp_path, monkeypatch, caplog, stop_value):
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver = make_solver(
        tmp_path,
        monkeypatch,
        'snapshot_prefix: "snap"\n',
        base=BASE_SOLVER.replace("snapshot_after_train: false\n", ""),
    )
    feed(solver.net, x=X, t=T)
    actions = iter(["none", "none", stop_value])
    solver.set_action_function(lambda: next(actions, "none"))
    solver.solve()
    assert solver.iter == 3
    assert (tmp_path / "snap_iter_3.caffemodel").exists()
    messages = solver_messages(caplog)
    assert messages[-1] == "Optimization stopped early."


def test_snapshot_action(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch, 'snapshot_prefix: "snap"\n')
    feed(solver.net, x=X, t=T)
    actions = iter([SolverAction.NONE, SolverAction.SNAPSHOT])
    solver.set_action_function(lambda: next(actions, SolverAction.NONE))
    solver.step(3)
    assert sorted(p.name for p in tmp_path.glob("snap_*")) == [
        "snap_iter_2.caffemodel",
        "snap_iter_2.solverstate",
    ]


def test_stop_action_during_test(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver = make_solver(tmp_path, monkeypatch, "test_iter: 3\ntest_interval: 1\n")
    solver.set_action_function(lambda: "stop")
    solver.step(5)
    assert solver.iter == 0
    assert "Test interrupted." in solver_messages(caplog)


def test_unknown_action_value(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch)
    solver.set_action_function(lambda: "pause")
    with pytest.raises(SolverError) as caught:
        solver.step(1)
    assert "unknown solver action 'pause'" in str(caught.value)


def test_callbacks_run_each_iteration(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, monkeypatch)
    feed(solver.net, x=X, t=T)
    events = []
    solver.add_callback(
        lambda: events.append(("start", solver.iter)),
        lambda: events.append(("gradients", solver.iter)),
    )
    solver.add_iteration_callback(lambda i, loss: events.append(("done", i)))
    solver.step(2)
    assert events == [
        ("start", 0),
        ("gradients", 0),
        ("done", 1),
        ("start", 1),
        ("gradients", 1),
        ("done", 2),
    ]


# ========================================================================= errors
def error_for(tmp_path, monkeypatch, solver_text, net_text=LINEAR):
    monkeypatch.chdir(tmp_path)
    path = write_solver(tmp_path, solver_text, net_text)
    with pytest.raises(SolverError) as caught:
        get_solver(str(path))
    message = str(caught.value)
    assert message.startswith(str(path)), message
    return message


INVALID_SETTINGS = [
    (
        'base_lr: 0.1\nlr_policy: "fixed"\n',
        "no train net; give one of the fields net, net_param, train_net, train_net_param",
    ),
    (
        BASE_SOLVER + 'train_net: "net.prototxt"\n',
        "more than one train net (net, train_net)",
    ),
    ('net: "net.prototxt"\nbase_lr: 0.1\n', "unknown lr_policy (none given)"),
    (
        BASE_SOLVER.replace('"fixed"', '"cosine"'),
        "unknown lr_policy 'cosine'; use one of fixed, step, exp, inv, multistep, poly, sigmoid",
    ),
    (
        BASE_SOLVER.replace('"fixed"', '"step"') + "gamma: 0.1\n",
        "lr_policy 'step' needs stepsize > 0, got stepsize: 0",
    ),
    (
        BASE_SOLVER.replace('"fixed"', '"step"') + "stepsize: 5\ngamma: -0.1\n",
        "lr_policy 'step' needs gamma >= 0, got gamma: -0.1",
    ),
    (
        BASE_SOLVER.replace('"fixed"', '"exp"') + "gamma: -2\n",
        "lr_policy 'exp' needs gamma >= 0, got gamma: -2",
    ),
    (
        BASE_SOLVER.replace('"fixed"', '"inv"') + "gamma: -2\n",
        "lr_policy 'inv' needs gamma >= 0, got gamma: -2",
    ),
    (
        BASE_SOLVER.replace('"fixed"', '"multistep"') + "gamma: -2\n",
        "lr_policy 'multistep' needs gamma >= 0, got gamma: -2",
    ),
    (
        BASE_SOLVER.replace('"fixed"', '"sigmoid"') + "gamma: 0.5\n",
        "lr_policy 'sigmoid' needs stepsize > 0, got stepsize: 0",
    ),
    (
        BASE_SOLVER.replace('"fixed"', '"poly"').replace("max_iter: 100\n", "")
        + "power: 1\n",
        "lr_policy 'poly' divides by max_iter, which must be > 0, got max_iter: 0",
    ),
    (
        BASE_SOLVER + 'type: "AdaGrad"\nmomentum: 0.9\n',
        "AdaGrad does not use momentum, got momentum: 0.9",
    ),
    (
        BASE_SOLVER + 'type: "RMSProp"\nmomentum: 0.5\n',
        "RMSProp does not use momentum, got momentum: 0.5",
    ),
    (
        BASE_SOLVER + 'type: "RMSProp"\nrms_decay: 1\n',
        "rms_decay must lie in [0, 1), got rms_decay: 1",
    ),
    (
        BASE_SOLVER + 'type: "Adam"\nmomentum: 0.9\nmomentum2: 1\n',
        "Adam needs momentum2 in [0, 1), got momentum2: 1",
    ),
    (
        BASE_SOLVER + 'type: "Adam"\nmomentum: 0.9\nmomentum2: -0.5\n',
        "Adam needs momentum2 in [0, 1), got momentum2: -0.5",
    ),
    (
        BASE_SOLVER + 'type: "Adam"\nmomentum: 1.5\n',
        "Adam needs momentum in [0, 1), got momentum: 1.5",
    ),
    (
        BASE_SOLVER + 'type: "LBFGS"\n',
        (
            "unknown solver type 'LBFGS'; known types: AdaDelta, AdaGrad, Adam, Nesterov, "
            "RMSProp, SGD"
        ),
    ),
    (
        BASE_SOLVER + 'type: "SGD"\nsolver_type: ADAM\n',
        "both 'solver_type' (deprecated enum) and 'type' are set; keep only type: \"SGD\"",
    ),
    (
        BASE_SOLVER + "average_loss: 0\n",
        "average_loss must be >= 1, got average_loss: 0",
    ),
    (BASE_SOLVER + "iter_size: 0\n", "iter_size must be >= 1, got iter_size: 0"),
    (
        BASE_SOLVER + "display: -1\n",
        "display must be >= 0 (0 turns it off), got display: -1",
    ),
    (
        BASE_SOLVER + 'regularization_type: "L3"\n',
        'unknown regularization_type \'L3\'; use "L2" or "L1"',
    ),
    (
        BASE_SOLVER + 'test_net: "net.prototxt"\n',
        "1 test nets (test_net, test_net_param) but 0 test_iter values",
    ),
    (
        BASE_SOLVER + "test_iter: 1\ntest_interval: 5\ntest_state { stage: 'a' }\n"
        "test_state { stage: 'b' }\n",
        "2 test_state entries for 1 test nets",
    ),
    (
        BASE_SOLVER + "test_iter: 1\n",
        "the solver has 1 test net(s) but test_interval is 0",
    ),
    (
        BASE_SOLVER + "test_iter: 0\ntest_interval: 5\n",
        "test_iter #0 must be >= 1, got test_iter: 0",
    ),
    (
        BASE_SOLVER + 'snapshot: 5\nsnapshot_prefix: "missing/dir/snap"\n',
        "cannot write to snapshot prefix 'missing/dir/snap'",
    ),
]


@pytest.mark.parametrize("solver_text, expected", INVALID_SETTINGS)
def test_invalid_setting_message(tmp_path, monkeypatch, solver_text, expected):
    assert expected in error_for(tmp_path, monkeypatch, solver_text)


def test_snapshot_without_prefix_in_message(tmp_path, monkeypatch):
    from google.protobuf import text_format

    param = caffe_pb2.SolverParameter()
    text_format.Parse(BASE_SOLVER + "snapshot: 10\n", param)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(LINEAR)
    with pytest.raises(SolverError) as caught:
        get_solver(param)
    assert str(caught.value) == (
        "<SolverParameter>: snapshot is 10 but snapshot_prefix is not given; set "
        "snapshot_prefix"
    )


def test_source_names_solver_in_errors(tmp_path, monkeypatch):
    from google.protobuf import text_format

    param = caffe_pb2.SolverParameter()
    text_format.Parse('net: "net.prototxt"\nlr_policy: "bogus"\n', param)
    with pytest.raises(SolverError) as caught:
        get_solver(param, source="train.prototxt")
    assert str(caught.value).startswith("train.prototxt: unknown lr_policy 'bogus'")


def test_missing_net_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "solver.prototxt"
    path.write_text(BASE_SOLVER)
    with pytest.raises(FileNotFoundError) as caught:
        get_solver(str(path))
    assert "net.prototxt" in str(caught.value)
