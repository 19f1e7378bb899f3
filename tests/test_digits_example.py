"""The digits example: LeNet trained on the LMDBs that the example script writes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import brewnet
from brewnet.solvers import get_solver, read_solver_parameter

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits"


def load_script():
    spec = importlib.util.spec_from_file_location("make_digits_lmdb", EXAMPLE / "make_digits_lmdb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lenet_beats_90_percent_after_300_iterations(tmp_path, monkeypatch):
    load_script().ensure_digits_lmdb(str(tmp_path / "examples" / "digits"))
    # The example's paths are relative to the repository root, as Caffe's are, so
    # run from a folder laid out the same way.
    for name in ("lenet_solver.prototxt", "lenet_train_test.prototxt"):
        (tmp_path / "examples" / "digits" / name).write_text((EXAMPLE / name).read_text())
    monkeypatch.chdir(tmp_path)
    param = read_solver_parameter("examples/digits/lenet_solver.prototxt")
    param.max_iter = 300
    param.test_interval = 10_000
    param.test_initialization = False
    param.snapshot_after_train = False
    solver = get_solver(param)
    solver.solve()
    assert solver.iter == 300

    test_net = solver.test_nets[0]
    # As in Caffe, a test net takes the trained weights when the solver first tests it.
    test_net.share_with(solver.net)
    accuracies = []
    for _ in range(param.test_iter[0]):
        test_net.forward()
        accuracies.append(float(test_net.blobs["accuracy"].data))
    accuracy = float(np.mean(accuracies))
    assert accuracy > 0.90, f"test accuracy {accuracy:.4f} after 300 iterations"
