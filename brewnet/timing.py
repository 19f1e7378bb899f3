"""Per-layer forward and backward timing, as ``caffe time`` reports it."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from brewnet.net import Net

logger = logging.getLogger("brewnet.timing")


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _LayerClock:
    """Wraps each layer's forward to time it and to hook its tops for backward."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.forward_ms = [0.0] * len(net._layers)
        self.backward_ms = [0.0] * len(net._layers)
        self.events: list[tuple[float, int]] = []
        self._saved = []
        for index, layer in enumerate(net._layers):
            self._saved.append((layer, layer.__dict__.get("forward")))
            layer.forward = self._wrap(index, layer.forward)

    def _wrap(self, index: int, forward):
        device = self.net.device

        def timed(bottom):
            started = _now(device)
            tops = forward(bottom)
            self.forward_ms[index] += (_now(device) - started) * 1e3
            for top in tops:
                if top.requires_grad:
                    top.register_hook(self._hook(index))
            return tops

        return timed

    def _hook(self, index: int):
        device = self.net.device

        def record(grad):
            self.events.append((_now(device), index))
            return grad

        return record

    def account_backward(self, finished: float) -> None:
        """Turn the hook events of one backward pass into per-layer times."""
        first_seen: dict[int, float] = {}
        for moment, index in sorted(self.events):
            first_seen.setdefault(index, moment)
        starts = sorted((moment, index) for index, moment in first_seen.items())
        for position, (moment, index) in enumerate(starts):
            end = starts[position + 1][0] if position + 1 < len(starts) else finished
            self.backward_ms[index] += (end - moment) * 1e3
        self.events.clear()

    def restore(self) -> None:
        for layer, original in self._saved:
            if original is None:
                del layer.forward
            else:
                layer.forward = original


def _backward(net: Net, loss) -> None:
    """Backpropagate the loss or, in a net without one, a gradient of ones on its
    outputs, so that every layer's backward runs as in ``caffe time``."""
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        loss.backward()
        return
    outputs = [net.blobs[name].tensor for name in net.outputs]
    outputs = [tensor for tensor in outputs if tensor.requires_grad]
    if outputs:
        torch.autograd.backward(outputs, [torch.ones_like(t) for t in outputs])


def timing_net(model, phase: int, level: int = 0, stages=()) -> Net:
    """Build ``model`` for timing: a net without weighted tops is built again with
    ``force_backward``, so that its layers record the graph that backward times."""
    from brewnet.net import Net

    net = Net(model, phase, level=level, stages=list(stages))
    if any(net.blob_loss_weights.values()) or net.net_param.force_backward:
        return net
    param = net.net_param
    param.force_backward = True
    return Net(param, phase, level=level, stages=list(stages))


def time_net(net: Net, iterations: int) -> dict[str, float]:
    """Time ``iterations`` forward-backward passes of ``net`` and log Caffe's report.

    Returns the average forward, backward and forward-backward times in ms. The
    backward time of a layer is measured from the moment the gradient of its tops is
    ready to the moment the next layer's is, so it is an estimate: autograd runs the
    whole backward as one call.
    """
    device = net.device
    logger.info("Performing Forward")
    net.forward()
    logger.info("Initial loss: %g", net.loss)
    logger.info("Performing Backward")
    net.clear_param_diffs()
    net.forward_backward()
    logger.info("*** Benchmark begins ***")
    logger.info("Testing for %d iterations.", iterations)
    clock = _LayerClock(net)
    forward_total = backward_total = 0.0
    total_started = _now(device)
    try:
        for iteration in range(iterations):
            net.clear_param_diffs()
            started = _now(device)
            loss = net._run_forward(0, len(net._layers) - 1)
            middle = _now(device)
            _backward(net, loss)
            finished = _now(device)
            clock.account_backward(finished)
            forward_total += (middle - started) * 1e3
            backward_total += (finished - middle) * 1e3
            logger.info(
                "Iteration: %d forward-backward time: %g ms.",
                iteration + 1, (finished - started) * 1e3,
            )
    finally:
        clock.restore()
    total_ms = (_now(device) - total_started) * 1e3
    logger.info("Average time per layer: ")
    for index, layer in enumerate(net._layers):
        logger.info("%10s\tforward: %g ms.", layer.name, clock.forward_ms[index] / iterations)
        logger.info("%10s\tbackward: %g ms.", layer.name, clock.backward_ms[index] / iterations)
    averages = {
        "forward_ms": forward_total / iterations,
        "backward_ms": backward_total / iterations,
        "forward_backward_ms": (forward_total + backward_total) / iterations,
    }
    logger.info("Average Forward pass: %g ms.", averages["forward_ms"])
    logger.info("Average Backward pass: %g ms.", averages["backward_ms"])
    logger.info("Average Forward-Backward: %g ms.", averages["forward_backward_ms"])
    logger.info("Total Time: %g ms.", total_ms)
    logger.info("*** Benchmark ends ***")
    return averages
