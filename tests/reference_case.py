"""The procedure that checks brewnet against values computed by the original Caffe.

Each case folder under ``tests/caffe_reference`` contains a net, its inputs and
parameters, and what Caffe computed for them (see the README there).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import brewnet

REFERENCE = Path(__file__).parent / "caffe_reference"


def case_names(family: str) -> list[str]:
    """Return the case folders of ``family`` (``losses``, ``layers``, ...), sorted."""
    return sorted(p.name for p in (REFERENCE / family).iterdir() if p.is_dir())


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Assert Caffe's comparison: max abs error <= 1e-4 * max |expected| + 1e-7."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape or actual.size == expected.size, (
        f"{what}: shape {actual.shape}, Caffe has {expected.shape}"
    )
    actual = actual.reshape(expected.shape)
    error = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    bound = 1e-4 * (float(np.max(np.abs(expected))) if expected.size else 0.0) + 1e-7
    assert error <= bound, f"{what}: max abs error {error:.3g} > {bound:.3g}"


def load_case(family: str, name: str):
    """Build the case's net in TRAIN, write its inputs and params; return (net, data)."""
    folder = REFERENCE / family / name
    data = np.load(folder / "data.npz")
    net = brewnet.Net(str(folder / "net.prototxt"), brewnet.TRAIN)
    for key in data.files:
        parts = key.split("/")
        if parts[0] == "input":
            net.blobs[parts[1]].data[...] = data[key]
        elif parts[0] == "param":
            net.params[parts[1]][int(parts[2])].data[...] = data[key]
    return net, data


def run_case(family: str, name: str) -> None:
    """Run forward and backward on a case and compare every stored array."""
    net, data = load_case(family, name)
    net.forward()
    net.backward()
    checked = 0
    for key in data.files:
        parts = key.split("/")
        if parts[0] == "data":
            assert_close(net.blobs[parts[1]].data, data[key], f"{name}: data of {parts[1]}")
        elif parts[0] == "diff":
            assert_close(net.blobs[parts[1]].diff, data[key], f"{name}: diff of {parts[1]}")
        elif parts[0] == "param_diff":
            param = net.params[parts[1]][int(parts[2])]
            assert_close(param.diff, data[key], f"{name}: diff of param {parts[1]}[{parts[2]}]")
        elif parts[0] == "loss":
            assert_close(np.array(net.loss), data[key], f"{name}: loss")
        else:
            continue
        checked += 1
    assert checked > 0, f"{name}: no arrays compared"
