"""The brewnet command: flags, one-line errors and exit statuses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from brewnet import cli


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "brewnet", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


def test_no_command_prints_help_and_fails():
    result = run()
    assert result.returncode == 1
    assert "COMMAND" in result.stderr


def test_bad_flag_is_one_line_error():
    result = run("train", "--no-such-flag")
    assert result.returncode == 1
    assert "error: unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_solver_flag():
    result = run("train")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "brewnet train: error: missing -solver: give the solver prototxt to train with"
    )


def test_missing_solver_file(tmp_path):
    missing = tmp_path / "nope.prototxt"
    result = run("train", "-solver", str(missing))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"brewnet train: error: -solver file not found: {missing}"
    )


def test_malformed_solver_names_line(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "n.prototxt"\nbase_lr 0.1\n')
    result = run("train", f"-solver={solver}")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"brewnet train: error: {solver}:2:")
    assert "Traceback" not in result.stderr


def test_weights_and_snapshot_together_is_an_error(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "n.prototxt"\n')
    result = run("train", "--solver", str(solver), "--weights", "a", "--snapshot", "b")
    assert result.returncode == 1
    assert "give -snapshot to resume training or -weights to fine-tune, not both" in result.stderr


def test_test_command_needs_weights(tmp_path):
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n')
    result = run("test", "-model", str(model))
    assert result.returncode == 1
    assert "missing -weights" in result.stderr


def test_malformed_model_in_time_command(tmp_path):
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "x" type: "Inptu" top: "x" }\n')
    result = run("time", "-model", str(model), "-iterations", "1")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "unknown layer type 'Inptu'" in last
    assert "Did you mean 'Input'" in last


def test_layers_command_lists_types():
    result = run("layers")
    assert result.returncode == 0
    assert "Input" in result.stdout.split()


def test_single_dash_flags_parse():
    args = cli.build_parser().parse_args(["train", "-solver", "s.prototxt", "-weights=a,b"])
    assert args.solver == "s.prototxt"
    assert args.weights == "a,b"
    args = cli.build_parser().parse_args(["test", "--model", "m", "-iterations", "3"])
    assert args.iterations == 3


@pytest.mark.parametrize("command", ["train", "test", "time", "device_query", "upgrade"])
def test_help_documents_flags(command):
    result = run(command, "--help")
    assert result.returncode == 0
    if command in ("test", "time"):
        assert "-iterations" in result.stdout
        assert "number of" in result.stdout


def test_signal_actions_map_effects():
    import signal

    actions = cli.SignalActions("stop", "snapshot")
    actions._handle(signal.SIGINT, None)
    assert actions.requested_action() == "stop"
    assert actions.requested_action() == "none"
    actions = cli.SignalActions("none", "snapshot")
    actions._handle(signal.SIGINT, None)
    assert actions.requested_action() == "none"


def test_bad_flag_names_the_subcommand():
    result = run("test", "--bogus", "x")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "brewnet test: error: unrecognized arguments: --bogus x"
    assert "usage: brewnet test" in result.stderr


def test_unknown_command_is_one_line_error():
    result = run("frobnicate")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("brewnet: error: argument COMMAND")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_flag_without_cuda_is_one_line_error(tmp_path):
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n')
    result = run("time", "-model", str(model), "-gpu", "0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "brewnet time: error: GPU mode requested, but PyTorch sees no CUDA device"
    )


def test_upgrade_of_current_net_says_so(tmp_path):
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n')
    result = run("upgrade", str(model), str(tmp_path / "out.prototxt"))
    assert result.returncode == 0, result.stderr
    assert f"File already in latest proto format: {model}" in result.stderr
    assert (tmp_path / "out.prototxt").is_file()


def test_upgrade_missing_input(tmp_path):
    result = run("upgrade", str(tmp_path / "nope.prototxt"), str(tmp_path / "out.prototxt"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"brewnet upgrade: error: input file not found: {tmp_path / 'nope.prototxt'}"
    )
