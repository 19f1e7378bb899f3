"""The brewnet subcommands run end to end on a small net."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "x" top: "t"
  dummy_data_param { shape { dim: 8 dim: 4 } shape { dim: 8 dim: 1 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""

SOLVER = """
net: "net.prototxt"
base_lr: 0.1
lr_policy: "fixed"
display: 1
max_iter: {max_iter}
snapshot_prefix: "snap"
random_seed: 3
"""


def write_case(folder, max_iter=4):
    (folder / "net.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(SOLVER.format(max_iter=max_iter))


def run(folder, *args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "brewnet", *args],
        capture_output=True, text=True, cwd=folder, timeout=timeout,
    )


def test_train_writes_final_snapshot_and_logs(tmp_path):
    write_case(tmp_path)
    result = run(tmp_path, "train", "-solver", "solver.prototxt")
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert "Solving tiny" in log
    assert re.search(r"\] Iteration 0 \(.*\), loss = ", log)
    assert "    Train net output #0: loss = " in log
    assert "Iteration 0, lr = 0.1" in log
    assert "Snapshotting to binary proto file snap_iter_4.caffemodel" in log
    assert "Optimization Done." in log
    # glog's line prefix: severity, date, time with microseconds, thread, file:line.
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ", log, re.M)
    assert (tmp_path / "snap_iter_4.caffemodel").is_file()
    assert (tmp_path / "snap_iter_4.solverstate").is_file()


def test_iterations_flag_overrides_max_iter(tmp_path):
    write_case(tmp_path, max_iter=100)
    result = run(tmp_path, "train", "--solver=solver.prototxt", "--iterations", "2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "snap_iter_2.caffemodel").is_file()


def test_resume_from_snapshot(tmp_path):
    write_case(tmp_path)
    assert run(tmp_path, "train", "-solver", "solver.prototxt", "-iterations", "2").returncode == 0
    result = run(tmp_path, "train", "-solver", "solver.prototxt", "-snapshot", "snap_iter_2.solverstate")
    assert result.returncode == 0, result.stderr
    assert "Resuming from snap_iter_2.solverstate" in result.stderr
    assert "Iteration 2, lr = 0.1" in result.stderr
    assert (tmp_path / "snap_iter_4.caffemodel").is_file()


def test_weights_flag_finetunes(tmp_path):
    write_case(tmp_path, max_iter=1)
    assert run(tmp_path, "train", "-solver", "solver.prototxt").returncode == 0
    result = run(tmp_path, "train", "-solver", "solver.prototxt", "-weights", "snap_iter_1.caffemodel")
    assert result.returncode == 0, result.stderr
    assert "snap_iter_1.caffemodel" in result.stderr


def test_test_command_prints_batches_and_means(tmp_path):
    write_case(tmp_path, max_iter=1)
    assert run(tmp_path, "train", "-solver", "solver.prototxt").returncode == 0
    result = run(tmp_path, "test", "-model", "net.prototxt", "-weights", "snap_iter_1.caffemodel",
                 "-iterations", "3")
    assert result.returncode == 0, result.stderr
    batches = re.findall(r"Batch (\d), loss = ([\d.e+-]+)", result.stderr)
    assert [b for b, _ in batches] == ["0", "1", "2"]
    mean = sum(float(v) for _, v in batches) / 3
    final = re.search(r"\] loss = ([\d.e+-]+) \(\* 1 = ([\d.e+-]+) loss\)", result.stderr)
    assert final is not None
    assert float(final.group(1)) == pytest.approx(mean, rel=1e-4)
    assert float(final.group(2)) == pytest.approx(mean, rel=1e-4)
    assert re.search(r"\] Loss: ", result.stderr)


def test_time_command_reports_layers(tmp_path):
    write_case(tmp_path)
    result = run(tmp_path, "time", "-model", "net.prototxt", "-iterations", "3")
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert "Average time per layer: " in log
    for layer in ("data", "ip", "loss"):
        assert re.search(rf"\s{layer}\tforward: [\d.e+-]+ ms\.", log)
        assert re.search(rf"\s{layer}\tbackward: [\d.e+-]+ ms\.", log)
    assert re.search(r"Average Forward pass: [\d.e+-]+ ms\.", log)
    assert re.search(r"Average Backward pass: [\d.e+-]+ ms\.", log)
    assert re.search(r"Average Forward-Backward: [\d.e+-]+ ms\.", log)
    assert "*** Benchmark ends ***" in log


def test_device_query_runs_without_gpu(tmp_path):
    result = run(tmp_path, "device_query")
    assert result.returncode == 0, result.stderr
    assert "Querying devices" in result.stderr


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
@pytest.mark.parametrize("signum, effect_flag", [(signal.SIGINT, "stop"), (signal.SIGHUP, "stop")])
def test_signal_stops_with_final_snapshot(tmp_path, signum, effect_flag):
    write_case(tmp_path, max_iter=10_000_000)
    flag = "-sigint_effect" if signum == signal.SIGINT else "-sighup_effect"
    process = subprocess.Popen(
        [sys.executable, "-m", "brewnet", "train", "-solver", "solver.prototxt", flag, effect_flag],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if "Iteration 20," in line:
            break
    process.send_signal(signum)
    _, rest = process.communicate(timeout=60)
    log = "".join(lines) + rest
    assert process.returncode == 0, log
    snapshots = sorted(p.name for p in tmp_path.glob("snap_iter_*.caffemodel"))
    assert len(snapshots) == 1, log
    assert "Optimization Done." in log


def test_time_command_runs_backward_of_a_deploy_net(tmp_path):
    (tmp_path / "deploy.prototxt").write_text("""
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
""")
    result = run(tmp_path, "time", "-model", "deploy.prototxt", "-iterations", "2")
    assert result.returncode == 0, result.stderr
    backward = re.search(r"\s+ip\tbackward: ([\d.e+-]+) ms\.", result.stderr)
    assert backward is not None
    assert float(backward.group(1)) > 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_solver_mode_gpu_falls_back_to_cpu(tmp_path):
    write_case(tmp_path, max_iter=1)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(solver.read_text() + "solver_mode: GPU\n")
    result = run(tmp_path, "train", "-solver", "solver.prototxt")
    assert result.returncode == 0, result.stderr
    assert "solver_mode: GPU, but PyTorch sees no CUDA device; training on the CPU" in result.stderr
    assert "Use CPU." in result.stderr


def test_missing_net_file_names_the_solver(tmp_path):
    (tmp_path / "solver.prototxt").write_text('net: "nope.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    result = run(tmp_path, "train", "-solver", "solver.prototxt")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("brewnet train: error: solver.prototxt: net file not found: nope.prototxt")
