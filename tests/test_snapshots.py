"""Snapshots: file layouts, resuming bit for bit, atomic writes and non-finite losses."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from brewnet.errors import ModelFileError, SolverError
from brewnet.io.prototxt import read_binary
from brewnet.proto import caffe_pb2
from brewnet.solvers import get_solver, solver_type_list

NET = """
name: "resume"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 5 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 }
  bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "s"
  param { lr_mult: 0.5 }
  inner_product_param { num_output: 3 bias_term: false
  weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }
"""

TYPE_SETTINGS = {
    "SGD": "momentum: 0.9\nweight_decay: 0.01\n",
    "Nesterov": "momentum: 0.9\nweight_decay: 0.01\n",
    "AdaGrad": "delta: 1e-6\nweight_decay: 0.01\n",
    "RMSProp": "rms_decay: 0.95\ndelta: 1e-6\n",
    "AdaDelta": "momentum: 0.95\ndelta: 1e-6\n",
    "Adam": "momentum: 0.9\nmomentum2: 0.999\n",
}

RNG = np.random.default_rng(2024)
BATCHES = [
    (
        RNG.normal(size=(4, 5)).astype(np.float32),
        RNG.integers(0, 3, size=4).astype(np.float32),
    )
    for _ in range(8)
]


def solver_text(kind: str, prefix: str, fmt: str, extra: str = "") -> str:
    return (
        f'net: "net.prototxt"\ntype: "{kind}"\nbase_lr: 0.1\nlr_policy: "multistep"\n'
        f"gamma: 0.5\nstepvalue: 2\nstepvalue: 4\nmax_iter: 6\nsnapshot: 3\n"
        f'snapshot_prefix: "{prefix}"\nsnapshot_format: {fmt}\nrandom_seed: 9\n'
        f"display: 1\n{TYPE_SETTINGS[kind]}{extra}"
    )


def build(folder, text, net_text=NET):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.prototxt").write_text(net_text)
    (folder / "solver.prototxt").write_text(text)
    os.chdir(folder)
    solver = get_solver(str(folder / "solver.prototxt"))
    feeder = IterationFeeder(solver)
    solver.add_callback(feeder, None)
    return solver


class IterationFeeder:
    """Write the batch of the current iteration into the Input blobs."""

    def __init__(self, solver):
        self.solver = solver

    def __call__(self):
        x, y = BATCHES[self.solver.iter % len(BATCHES)]
        self.solver.net.blobs["x"].data[...] = x
        self.solver.net.blobs["y"].data[...] = y


def params_of(solver):
    return [p.tensor.detach().clone() for p in solver.net.learnable_params]


def extension(fmt):
    return ".h5" if fmt == "HDF5" else ""


@pytest.fixture
def restore_cwd():
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


# ================================================================= resume = continue
@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("kind", sorted(TYPE_SETTINGS))
def test_resume_equals_uninterrupted(tmp_path, restore_cwd, kind, fmt):
    whole = build(tmp_path / "a", solver_text(kind, str(tmp_path / "a" / "snap"), fmt))
    whole.solve()
    assert whole.iter == 6

    resumed = build(
        tmp_path / "b", solver_text(kind, str(tmp_path / "b" / "snap"), fmt)
    )
    state = tmp_path / "a" / f"snap_iter_3.solverstate{extension(fmt)}"
    resumed.solve(str(state))
    assert resumed.iter == 6
    assert resumed.current_step == whole.current_step == 2
    for index, (a, b) in enumerate(zip(params_of(whole), params_of(resumed))):
        assert torch.equal(a, b), f"{kind}/{fmt}: param {index} differs after resuming"
    assert len(resumed.history) == len(whole.history)
    for index, (a, b) in enumerate(zip(whole.history, resumed.history)):
        assert torch.equal(a, b), (
            f"{kind}/{fmt}: history {index} differs after resuming"
        )


def test_solver_types_all_covered():
    assert sorted(TYPE_SETTINGS) == solver_type_list()


def test_restore_sets_iteration_and_weights(tmp_path, restore_cwd):
    solver = build(tmp_path, solver_text("SGD", "snap", "BINARYPROTO"))
    solver.step(3)
    expected = params_of(solver)
    solver.snapshot()
    fresh = build(tmp_path, solver_text("SGD", "snap", "BINARYPROTO"))
    assert not torch.equal(params_of(fresh)[0], expected[0])
    fresh.restore("snap_iter_3.solverstate")
    assert fresh.iter == 3
    assert fresh.current_step == 1
    for a, b in zip(params_of(fresh), expected):
        assert torch.equal(a, b)


def test_restore_finds_model_beside_state(tmp_path, restore_cwd):
    solver = build(tmp_path / "run", solver_text("SGD", "snap", "BINARYPROTO"))
    solver.step(1)
    solver.snapshot()
    other = build(tmp_path / "elsewhere", solver_text("SGD", "snap", "BINARYPROTO"))
    other.restore(str(tmp_path / "run" / "snap_iter_1.solverstate"))
    assert torch.equal(params_of(other)[0], params_of(solver)[0])


# ====================================================================== layouts
def test_binary_state_layout(tmp_path, restore_cwd):
    solver = build(tmp_path, solver_text("Adam", "snap", "BINARYPROTO"))
    solver.step(3)
    model, state_path = solver.snapshot()
    assert (model, state_path) == ("snap_iter_3.caffemodel", "snap_iter_3.solverstate")
    state = read_binary(state_path, caffe_pb2.SolverState())
    assert state.iter == 3
    assert state.learned_net == "snap_iter_3.caffemodel"
    assert state.current_step == 1
    shapes = [tuple(blob.shape.dim) for blob in state.history]
    assert shapes == [(6, 5), (6,), (3, 6)] * 2
    np.testing.assert_array_equal(
        np.array(state.history[3].data).reshape(6, 5), solver.history[3].numpy()
    )
    model_proto = read_binary(model, caffe_pb2.NetParameter())
    assert [layer.name for layer in model_proto.layer] == [
        "x",
        "y",
        "ip1",
        "relu",
        "ip2",
        "loss",
    ]
    assert len(model_proto.layer[2].blobs) == 2
    assert not model_proto.layer[2].blobs[0].diff


def test_hdf5_layout(tmp_path, restore_cwd):
    solver = build(
        tmp_path, solver_text("SGD", "snap", "HDF5", "snapshot_diff: true\n")
    )
    solver.step(3)
    model, state_path = solver.snapshot()
    assert (model, state_path) == (
        "snap_iter_3.caffemodel.h5",
        "snap_iter_3.solverstate.h5",
    )
    with h5py.File(state_path, "r") as handle:
        assert handle["iter"].shape == (1,)
        assert handle["iter"].dtype == np.int32
        assert int(handle["iter"][0]) == 3
        assert int(handle["current_step"][0]) == 1
        assert handle["learned_net"].shape == ()
        assert handle["learned_net"].id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
        assert handle["learned_net"][()].rstrip(b"\0") == b"snap_iter_3.caffemodel.h5"
        assert sorted(handle["history"]) == ["0", "1", "2"]
        assert handle["history"]["0"].shape == (6, 5)
        assert handle["history"]["0"].dtype == np.float32
    with h5py.File(model, "r") as handle:
        assert sorted(handle["data"]) == sorted(
            ["x", "y", "ip1", "relu", "ip2", "loss"]
        )
        assert sorted(handle["data"]["ip1"]) == ["0", "1"]
        assert len(handle["data"]["relu"]) == 0
        np.testing.assert_array_equal(
            handle["data"]["ip2"]["0"][()], solver.net.params["ip2"][0].data
        )
        assert sorted(handle["diff"]["ip1"]) == ["0", "1"]


SHARED = (
    NET.replace("param { lr_mult: 0.5 }\n", "")
    .replace(
        'layer { name: "loss"',
        'layer { name: "ip3" type: "InnerProduct" bottom: "h" top: "s2" param { name: "w2" }\n'
        "  inner_product_param { num_output: 3 bias_term: false } }\n"
        'layer { name: "loss2" type: "SoftmaxWithLoss" bottom: "s2" bottom: "y" top: "loss2" }\n'
        'layer { name: "loss"',
    )
    .replace('bottom: "h" top: "s"\n', 'bottom: "h" top: "s"\n  param { name: "w2" }\n')
)


def test_hdf5_model_stores_shared_params_once(tmp_path, restore_cwd):
    solver = build(tmp_path, solver_text("SGD", "snap", "HDF5"), net_text=SHARED)
    assert solver.net.params["ip3"][0].tensor is solver.net.params["ip2"][0].tensor
    solver.step(1)
    model, _ = solver.snapshot()
    with h5py.File(model, "r") as handle:
        assert sorted(handle["data"]["ip2"]) == ["0"]
        assert len(handle["data"]["ip3"]) == 0
    fresh = build(tmp_path, solver_text("SGD", "snap", "HDF5"), net_text=SHARED)
    fresh.restore("snap_iter_1.solverstate.h5")
    np.testing.assert_array_equal(
        fresh.net.params["ip3"][0].data, solver.net.params["ip2"][0].data
    )


# ================================================================= atomic writes
@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_interrupted_snapshot_keeps_previous_files(
    tmp_path, restore_cwd, monkeypatch, fmt
):
    solver = build(tmp_path, solver_text("SGD", "snap", fmt))
    paths = solver.snapshot()
    before = {path: (tmp_path / path).read_bytes() for path in paths}
    with torch.no_grad():
        for learnable in solver.net.learnable_params:
            learnable.tensor.add_(1.0)
        solver.history[0].add_(1.0)

    def interrupted(source, target):
        # The write stops after the temporary file is complete, before the rename.
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        solver.snapshot()
    monkeypatch.undo()
    for path, content in before.items():
        assert (tmp_path / path).read_bytes() == content, f"{path} was changed"
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name) == []


# ================================================================ restore errors
def test_restore_wrong_solver_type(tmp_path, restore_cwd):
    solver = build(tmp_path, solver_text("SGD", "snap", "BINARYPROTO"))
    solver.snapshot()
    adam = build(tmp_path, solver_text("Adam", "snap", "BINARYPROTO"))
    with pytest.raises(SolverError) as caught:
        adam.restore("snap_iter_0.solverstate")
    assert str(caught.value) == (
        "snap_iter_0.solverstate: the state has 3 history blobs but a Adam solver for "
        "this net keeps 6; the state belongs to another solver type or net"
    )


def test_restore_missing_model(tmp_path, restore_cwd):
    solver = build(tmp_path, solver_text("SGD", "snap", "BINARYPROTO"))
    solver.snapshot()
    os.remove("snap_iter_0.caffemodel")
    with pytest.raises(FileNotFoundError) as caught:
        solver.restore("snap_iter_0.solverstate")
    assert "its model file 'snap_iter_0.caffemodel' was not found" in str(caught.value)


def test_restore_corrupt_state(tmp_path, restore_cwd):
    solver = build(tmp_path, solver_text("SGD", "snap", "BINARYPROTO"))
    (tmp_path / "bad.solverstate").write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(ModelFileError) as caught:
        solver.restore("bad.solverstate")
    assert "bad.solverstate: not a valid binary SolverState" in str(caught.value)
    (tmp_path / "bad.solverstate.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelFileError) as caught:
        solver.restore("bad.solverstate.h5")
    assert "bad.solverstate.h5: not a readable HDF5 file" in str(caught.value)


def test_restore_missing_state(tmp_path, restore_cwd):
    solver = build(tmp_path, solver_text("SGD", "snap", "HDF5"))
    with pytest.raises(FileNotFoundError) as caught:
        solver.restore("nothing.solverstate.h5")
    assert "nothing.solverstate.h5" in str(caught.value)


# ================================================================ non-finite losses
LINEAR = """
name: "linear"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 1 bias_term: false
    weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
"""


def linear_solver(tmp_path, base_lr):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "net.prototxt").write_text(LINEAR)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "net.prototxt"\nbase_lr: {base_lr}\nlr_policy: "fixed"\n'
    )
    os.chdir(tmp_path)
    solver = get_solver("solver.prototxt")
    solver.net.blobs["x"].data[...] = [[1, 2], [3, -1]]
    solver.net.blobs["t"].data[...] = [[1], [0]]
    return solver


def test_diverging_loss_names_iteration_and_blob(tmp_path, restore_cwd):
    # After one step with rate 1e38 the first weight is -1.75e38, so at iteration 1
    # h = 3 * -1.75e38 overflows float32.
    solver = linear_solver(tmp_path, "1e38")
    with pytest.raises(SolverError) as caught:
        solver.step(5)
    assert str(caught.value) == (
        "Iteration 1: the loss is inf and training stops; the first blob with a "
        "non-finite value, in layer order, is blob 'h' (top of layer 'ip'). Lower "
        "base_lr, set clip_gradients, or check the input data"
    )
    assert solver.iter == 1


def test_nan_input_names_input_blob(tmp_path, restore_cwd):
    solver = linear_solver(tmp_path, "0.1")
    solver.net.blobs["x"].data[0, 1] = np.nan
    with pytest.raises(SolverError) as caught:
        solver.step(1)
    assert "Iteration 0: the loss is nan" in str(caught.value)
    assert "is blob 'x' (top of layer 'x')" in str(caught.value)


def test_infinite_param_names_parameter(tmp_path, restore_cwd):
    solver = linear_solver(tmp_path, "0.1")
    solver.net.params["ip"][0].data[0, 0] = np.inf
    with pytest.raises(SolverError) as caught:
        solver.step(1)
    assert "is parameter 0 of layer 'ip'" in str(caught.value)
