"""Time forward and backward of the classic nets in examples/models with ``brewnet time``.

Runs ``brewnet time`` (through :func:`brewnet.timing.time_net`) on each deploy net at
the batch size given, after a warm-up pass, and prints one Markdown table row per net:

    python bench/architectures.py [--batch 1] [--iterations 3] [--nets alexnet,vgg16]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

import brewnet
from brewnet.timing import time_net, timing_net

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"
NETS = ["alexnet", "vgg16", "resnet50", "googlenet", "squeezenet_v1.1", "fcn32s_small"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="images per pass")
    parser.add_argument("--iterations", type=int, default=3, help="timed passes per net")
    parser.add_argument("--nets", default=",".join(NETS), help="comma-separated net names")
    args = parser.parse_args(argv)
    logging.getLogger("brewnet").setLevel(logging.WARNING)
    sys.stdout.write(
        f"batch {args.batch}, {args.iterations} passes, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n\n"
        "| net | forward ms | backward ms | forward-backward ms | build s |\n"
        "| --- | --- | --- | --- | --- |\n"
    )
    for name in args.nets.split(","):
        started = time.perf_counter()
        net = timing_net(str(MODELS / f"{name}.prototxt"), brewnet.TRAIN)
        data = net.blobs[net.inputs[0]]
        data.reshape(args.batch, *data.shape[1:])
        net.reshape()
        built = time.perf_counter() - started
        averages = time_net(net, args.iterations)
        sys.stdout.write(
            f"| {name} | {averages['forward_ms']:.1f} | {averages['backward_ms']:.1f} | "
            f"{averages['forward_backward_ms']:.1f} | {built:.1f} |\n"
        )
        sys.stdout.flush()
        del net
    return 0


if __name__ == "__main__":
    sys.exit(main())
