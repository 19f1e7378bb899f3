"""Time one LeNet training step in brewnet and in plain PyTorch, in one run.

A step is forward, backward and the SGD update (momentum 0.9, weight decay 5e-4,
lr_mult 2 on biases) on a batch of 64 1x28x28 images. Both sides run the same
arithmetic on the same device. brewnet's step goes through ``Solver.step(1)`` as
``brewnet train`` runs it. A second brewnet row ("pycaffe") also keeps every blob's
diff, as a pycaffe ``solver.step`` does. Rounds alternate between the sides, so that
drift in machine load hits all of them, and the ratios of the medians are printed.

    python bench/lenet_step.py [--rounds 10] [--steps 50] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from google.protobuf import text_format

import brewnet
from brewnet.proto import caffe_pb2
from brewnet.solvers import get_solver

BATCH = 64

NET = """
name: "LeNet"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """
base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005
lr_policy: "inv" gamma: 0.0001 power: 0.75
max_iter: 1000000 display: 0 snapshot_after_train: false random_seed: 1
"""


class TorchLeNet(torch.nn.Module):
    """The same network as NET, written directly with torch.nn."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 20, 5)
        self.conv2 = torch.nn.Conv2d(20, 50, 5)
        self.ip1 = torch.nn.Linear(800, 500)
        self.ip2 = torch.nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2, 2, ceil_mode=True)
        x = F.max_pool2d(self.conv2(x), 2, 2, ceil_mode=True)
        x = F.relu(self.ip1(x.flatten(1)))
        return self.ip2(x)


def brewnet_stepper(data: torch.Tensor, label: torch.Tensor, blob_diffs: bool = False):
    """Return a brewnet step; ``blob_diffs`` keeps pycaffe's blob diffs, which
    ``brewnet train`` skips."""
    param = text_format.Parse(SOLVER, caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    solver = get_solver(param)
    solver.net.fill_blob_diffs = blob_diffs
    solver.net.blobs["data"].data[...] = data.numpy()
    solver.net.blobs["label"].data[...] = label.numpy()
    return lambda: solver.step(1)


def torch_stepper(data: torch.Tensor, label: torch.Tensor):
    model = TorchLeNet()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [{"params": weights, "lr": 0.01}, {"params": biases, "lr": 0.02}],
        lr=0.01, momentum=0.9, weight_decay=5e-4,
    )
    target = label.long()

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()

    return step


def time_steps(step, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        step()
    return (time.perf_counter() - started) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per side")
    parser.add_argument("--steps", type=int, default=50, help="training steps per round")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    brewnet.set_random_seed(1)
    data = torch.rand(BATCH, 1, 28, 28)
    label = torch.randint(0, 10, (BATCH,)).float()
    steppers = {
        "brewnet": brewnet_stepper(data, label),
        "pycaffe": brewnet_stepper(data, label, blob_diffs=True),
        "pytorch": torch_stepper(data, label),
    }

    for step in steppers.values():
        time_steps(step, 10)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(args.rounds):
        for name, step in steppers.items():
            times[name].append(time_steps(step, args.steps))

    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        sys.stdout.write(f"{name:8s} {value * 1e3:8.3f} ms/step (median of {args.rounds})\n")
    sys.stdout.write(f"ratio brewnet/pytorch: {medians['brewnet'] / medians['pytorch']:.3f}\n")
    sys.stdout.write(
        f"ratio with blob diffs (pycaffe solver.step)/pytorch: "
        f"{medians['pycaffe'] / medians['pytorch']:.3f}\n"
    )
    sys.stdout.write(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
