"""Measure the memory that loading a large .caffemodel costs beyond the net itself.

    python examples/models/measure_load_memory.py [--model vgg16.prototxt]

The script saves the net with random weights to a temporary file, then, in a fresh
process for each method, builds the net, touches every parameter (so its memory is
resident before loading starts) and loads the file:

- ``copy_from``: ``Net.copy_from``, which scans the file and reads blob values
  straight into the parameter tensors;
- ``protobuf``: ``read_caffemodel`` (one protobuf message with every value) and
  ``copy_layers_from_proto``, for comparison.

Just before the load it resets the kernel's peak resident set size (writing 5 to
``/proc/self/clear_refs``, Linux 4.0 and later) and it prints the resident size at
that moment, the peak during the load and their difference: the extra memory the
load needed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def status_mib(field: str) -> float:
    """Return a memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def reset_peak() -> None:
    """Make the kernel's peak resident size (VmHWM) restart from the current size."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def build_net(model: str):
    import torch

    import brewnet

    net = brewnet.Net(str(HERE / model), brewnet.TEST)
    with torch.no_grad():
        for layer in net._layers:
            for tensor in layer.blobs:
                tensor.fill_(1.0)
    return net


def save(model: str, path: str) -> None:
    import torch

    net = build_net(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net._layers:
            for tensor in layer.blobs:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    net.save(path)


def load(model: str, path: str, method: str) -> None:
    from brewnet.io.model import copy_layers_from_proto, read_caffemodel

    net = build_net(model)
    reset_peak()
    before = status_mib("VmRSS")
    start = time.perf_counter()
    if method == "copy_from":
        net.copy_from(path)
    else:
        copy_layers_from_proto(net, read_caffemodel(path).layer, path)
    seconds = time.perf_counter() - start
    peak = status_mib("VmHWM")
    print(
        f"{method:10s} RSS before load {before:8.1f} MiB, peak during load "
        f"{peak:8.1f} MiB, extra {peak - before:8.1f} MiB, {seconds:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="vgg16.prototxt", help="prototxt in this folder"
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("MODEL", "PATH", "METHOD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        load(*args.child)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "weights.caffemodel")
        save(args.model, path)
        size = Path(path).stat().st_size / 2**20
        print(f"{args.model}: {size:.1f} MiB model file")
        for method in ("copy_from", "protobuf"):
            subprocess.run(
                [sys.executable, __file__, "--child", args.model, path, method],
                check=True,
            )


if __name__ == "__main__":
    main()
