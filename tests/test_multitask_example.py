"""The multitask digits example: a classifier and an autoencoder sharing one encoder.

The example's prototxts train on LMDBs built into a temporary folder. The tests check
that both weighted loss terms fall, that the training log shows each term with its
weight and weighted contribution, and that the documented command runs unchanged.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brewnet import solvers
from brewnet.io.prototxt import read_text
from brewnet.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits"
EXAMPLE = DIGITS / "multitask"
NET = EXAMPLE / "multitask_train_test.prototxt"
SOLVER = EXAMPLE / "multitask_solver.prototxt"

CLASS_LOSS = "class_loss"
RECONSTRUCTION_LOSS = "reconstruction_loss"
# The loss_weight values that the example's prototxt sets.
CLASS_WEIGHT = 1.0
RECONSTRUCTION_WEIGHT = 0.005

ITERATIONS = 200
DISPLAY = 10
WINDOW = 10  # iterations averaged at each end of the run

# "    Train net output #1: reconstruction_loss = 536.5 (* 0.005 = 2.6825 loss)"
OUTPUT_LINE = re.compile(
    r"(Train|Test) net output #(\d+): (\S+) = (\S+)(?: \(\* (\S+) = (\S+) loss\))?$"
)
ITERATION_LINE = re.compile(r"^Iteration (\d+) \(.*\), loss = (\S+)$")


# ------------------------------------------------------------------ helpers
def load_digits_module():
    path = DIGITS / "make_digits_lmdb.py"
    spec = importlib.util.spec_from_file_location("make_digits_lmdb", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    """A folder laid out as the repository root, with the digits LMDBs built in it."""
    root = tmp_path_factory.mktemp("multitask_root")
    load_digits_module().ensure_digits_lmdb(str(root / "examples" / "digits"))
    return root


def net_with_sources(root: Path) -> caffe_pb2.NetParameter:
    """Return the example net with each Data source moved under ``root``."""
    net = read_text(str(NET), caffe_pb2.NetParameter())
    moved = 0
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(root / layer.data_param.source)
            moved += 1
    if moved != 2:
        raise RuntimeError(f"{NET} should have a TRAIN and a TEST Data layer, has {moved}")
    return net


def parse_outputs(lines: list[str], kind: str) -> list[tuple[str, float, str, str]]:
    """Return (name, value, weight, contribution) for each "<kind> net output" line.

    The weight and contribution stay strings as logged, or None for unweighted tops.
    """
    rows = []
    for line in lines:
        match = OUTPUT_LINE.search(line)
        if match and match.group(1) == kind:
            name, value, weight, contribution = match.group(3, 4, 5, 6)
            rows.append((name, float(value), weight, contribution))
    return rows


def loss_weights(net: caffe_pb2.NetParameter) -> dict[str, float]:
    return {
        top: weight
        for layer in net.layer
        for top, weight in zip(layer.top, layer.loss_weight)
    }


# ------------------------------------------------------------------ the prototxt
def test_prototxt_weights_both_terms():
    net = read_text(str(NET), caffe_pb2.NetParameter())
    weights = loss_weights(net)
    assert weights[CLASS_LOSS] == pytest.approx(CLASS_WEIGHT)
    assert weights[RECONSTRUCTION_LOSS] == pytest.approx(RECONSTRUCTION_WEIGHT)


def test_prototxt_builds_with_two_weighted_outputs(digits_dir):
    import brewnet

    net = brewnet.Net(net_with_sources(digits_dir), brewnet.TRAIN)
    assert set(net.outputs) == {CLASS_LOSS, RECONSTRUCTION_LOSS}
    assert net.blob_loss_weights[CLASS_LOSS] == pytest.approx(CLASS_WEIGHT)
    assert net.blob_loss_weights[RECONSTRUCTION_LOSS] == pytest.approx(
        RECONSTRUCTION_WEIGHT
    )
    # The bottleneck: 784 pixels in, 32 numbers per image in the shared code.
    assert net.blobs["data"].shape == (64, 1, 28, 28)
    assert net.blobs["code"].shape == (64, 32)
    assert net.blobs["reconstruction"].shape == (64, 784)
    assert net.blobs["flat_data"].shape == (64, 784)


# ------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def trained(digits_dir):
    """Train the example for ITERATIONS iterations through the solver API.

    Returns the solver, the per-iteration (class, reconstruction) loss values read
    from the train net's blobs, and the solver's log messages.
    """
    param = solvers.read_solver_parameter(str(SOLVER))
    param.ClearField("net")
    param.net_param.CopyFrom(net_with_sources(digits_dir))
    param.max_iter = ITERATIONS
    param.display = DISPLAY
    param.test_interval = ITERATIONS
    param.test_initialization = False
    param.snapshot_after_train = False
    solver = solvers.get_solver(param, source=str(SOLVER))

    terms: list[tuple[float, float]] = []

    def record(iteration: int, smoothed_loss: float) -> None:
        blobs = solver.net.blobs
        terms.append(
            (float(blobs[CLASS_LOSS].data), float(blobs[RECONSTRUCTION_LOSS].data))
        )

    solver.add_iteration_callback(record)
    messages = LogCapture("brewnet.solver")
    with messages:
        solver.solve()
    return solver, np.array(terms), messages.lines


class LogCapture:
    """Collect the messages of one logger at INFO level while in a ``with`` block."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)
        self.lines: list[str] = []
        self.handler = logging.Handler(logging.INFO)
        self.handler.emit = lambda record: self.lines.append(record.getMessage())

    def __enter__(self) -> "LogCapture":
        self.previous_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc_info) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous_level)


@pytest.mark.slow
def test_training_runs_all_iterations(trained):
    solver, terms, _ = trained
    assert solver.iter == ITERATIONS
    assert terms.shape == (ITERATIONS, 2)
    assert np.isfinite(terms).all()


@pytest.mark.slow
def test_class_loss_falls(trained):
    _, terms, _ = trained
    first = terms[:WINDOW, 0].mean()
    last = terms[-WINDOW:, 0].mean()
    # It starts near ln(10) = 2.30 and must lose at least three quarters of that.
    assert first == pytest.approx(np.log(10), abs=0.3)
    assert last < 0.25 * first


@pytest.mark.slow
def test_reconstruction_loss_falls(trained):
    _, terms, _ = trained
    first = terms[:WINDOW, 1].mean()
    last = terms[-WINDOW:, 1].mean()
    # It starts near 784 * ln(2) = 543. Its minimum is the entropy of the targets,
    # about 130 per training image, so no run can go below that.
    assert first == pytest.approx(784 * np.log(2), rel=0.1)
    assert last < 0.6 * first
    assert last > 125


@pytest.mark.slow
def test_log_shows_both_terms_every_display(trained):
    _, _, lines = trained
    rows = parse_outputs(lines, "Train")
    displays = ITERATIONS // DISPLAY
    names = [row[0] for row in rows]
    assert names == [CLASS_LOSS, RECONSTRUCTION_LOSS] * displays


@pytest.mark.slow
def test_log_contribution_is_weight_times_value(trained):
    _, _, lines = trained
    rows = parse_outputs(lines, "Train")
    expected_weight = {CLASS_LOSS: "1", RECONSTRUCTION_LOSS: "0.005"}
    for name, value, weight, contribution in rows:
        assert weight == expected_weight[name], name
        # Both numbers are logged to 6 significant digits, each off by at most 5e-6
        # relative.
        assert float(contribution) == pytest.approx(float(weight) * value, rel=1e-5), name


@pytest.mark.slow
def test_log_loss_is_sum_of_contributions(trained):
    _, _, lines = trained
    rows = parse_outputs(lines, "Train")
    losses = [
        float(match.group(2))
        for match in map(ITERATION_LINE.match, lines)
        if match is not None
    ]
    assert len(losses) == ITERATIONS // DISPLAY
    # average_loss is 1, so the logged loss is the weighted sum of this iteration's terms.
    for index, loss in enumerate(losses):
        class_row, reconstruction_row = rows[2 * index], rows[2 * index + 1]
        total = float(class_row[3]) + float(reconstruction_row[3])
        assert loss == pytest.approx(total, rel=1e-5), index


@pytest.mark.slow
def test_log_terms_match_blob_values(trained):
    _, terms, lines = trained
    rows = parse_outputs(lines, "Train")
    weights = (np.float32(CLASS_WEIGHT), np.float32(RECONSTRUCTION_WEIGHT))
    # Display lines come at iterations 0, 10, ..., before that iteration's update.
    for index in range(ITERATIONS // DISPLAY):
        logged = rows[2 * index : 2 * index + 2]
        recorded = terms[index * DISPLAY]
        for (name, value, _, contribution), blob_value, weight in zip(
            logged, recorded, weights
        ):
            assert value == pytest.approx(blob_value, rel=5e-6), (index, name)
            # The solver multiplies in float32, as Caffe does, and prints with %g.
            expected = "%g" % (weight * np.float32(blob_value))
            assert contribution == expected, (index, name)


@pytest.mark.slow
def test_test_net_scores_accuracy(trained):
    solver, _, lines = trained
    rows = parse_outputs(lines, "Test")
    names = [row[0] for row in rows]
    assert names == ["accuracy", CLASS_LOSS, RECONSTRUCTION_LOSS]
    accuracy = rows[0]
    assert accuracy[2] is None  # Accuracy carries no loss weight
    assert accuracy[1] > 0.9
    assert dict(solver.test_outputs[0])["accuracy"] == pytest.approx(accuracy[1], rel=1e-5)


# ------------------------------------------------------------------ the command
def test_readme_command_trains(digits_dir):
    """Run the README's command, for fewer iterations, from a copy of the repository
    layout."""
    example = digits_dir / "examples" / "digits" / "multitask"
    shutil.copytree(EXAMPLE, example, dirs_exist_ok=True)
    iterations = 10
    result = subprocess.run(
        [
            sys.executable, "-m", "brewnet", "train",
            "--solver", "examples/digits/multitask/multitask_solver.prototxt",
            "--iterations", str(iterations),
        ],
        capture_output=True, text=True, cwd=digits_dir, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    train = parse_outputs(lines, "Train")
    assert [row[0] for row in train] == [CLASS_LOSS, RECONSTRUCTION_LOSS]
    assert [row[2] for row in train] == ["1", "0.005"]
    test = parse_outputs(lines, "Test")
    assert [row[0] for row in test] == ["accuracy", CLASS_LOSS, RECONSTRUCTION_LOSS]
    assert (example / f"multitask_iter_{iterations}.caffemodel").is_file()
    assert lines[-1].endswith("] Optimization Done.")
