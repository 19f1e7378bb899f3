"""Upgrades of legacy net definitions to the current NetParameter form.

Caffe reads nets written for older versions of itself and rewrites them on the fly.
This module does the same for the net-level ``input`` fields; the V0 and V1 layer
formats are handled by :mod:`brewnet.io.legacy` when that module is present.
"""

from __future__ import annotations

import logging
import warnings

from brewnet.errors import NetDefinitionError
from brewnet.proto import caffe_pb2

logger = logging.getLogger(__name__)


def needs_input_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Return whether ``net`` declares inputs with the net-level ``input`` fields."""
    return len(net.input) > 0


def upgrade_net_input(net: caffe_pb2.NetParameter, source: str = "<net>") -> None:
    """Move net-level ``input``/``input_shape``/``input_dim`` into an Input layer.

    The new layer is named ``input`` and placed first, as Caffe's upgrade does. Each
    input takes its shape from ``input_shape`` (one per input) or from four
    consecutive ``input_dim`` values (N, C, H, W).

    Raises:
        NetDefinitionError: the shape fields do not match the number of inputs.
    """
    if not needs_input_upgrade(net):
        return
    names = list(net.input)
    shapes: list[caffe_pb2.BlobShape] = []
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise NetDefinitionError(
                f"{source}: {len(names)} net inputs but {len(net.input_shape)} "
                f"input_shape entries; give one input_shape per input"
            )
        shapes = [caffe_pb2.BlobShape(dim=s.dim) for s in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(names):
            raise NetDefinitionError(
                f"{source}: {len(names)} net inputs need {4 * len(names)} input_dim "
                f"values (N, C, H, W each), but {len(net.input_dim)} are given"
            )
        dims = list(net.input_dim)
        shapes = [caffe_pb2.BlobShape(dim=dims[4 * i : 4 * i + 4]) for i in range(len(names))]
    else:
        # Old Caffe wrote models whose inputs carry no shape; Caffe drops them.
        logger.warning(
            "%s: net-level inputs %s have no input_shape or input_dim and are dropped, "
            "as Caffe drops them; give them shapes to keep them", source, names,
        )
        net.ClearField("input")
        return

    layer = caffe_pb2.LayerParameter(name="input", type="Input", top=names)
    layer.input_param.shape.extend(shapes)
    layers = [layer] + [copy_layer(existing) for existing in net.layer]
    del net.layer[:]
    net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    warnings.warn(
        f"{source}: net-level input fields are deprecated; they were converted to an "
        f"Input layer named 'input'",
        DeprecationWarning,
        stacklevel=3,
    )


def upgrade_net(net: caffe_pb2.NetParameter, source: str = "<net>") -> caffe_pb2.NetParameter:
    """Upgrade every legacy construct in ``net`` in place and return it."""
    try:
        from brewnet.io import legacy
    except ImportError:
        legacy = None
    if legacy is not None:
        legacy.upgrade_legacy_layers(net, source)
    elif net.layers:
        raise NetDefinitionError(
            f"{source}: the net uses the legacy 'layers' field (V0/V1 format), which "
            f"this build cannot upgrade"
        )
    upgrade_net_input(net, source)
    return net


def copy_layer(layer: caffe_pb2.LayerParameter) -> caffe_pb2.LayerParameter:
    """Return a deep copy of ``layer``."""
    duplicate = caffe_pb2.LayerParameter()
    duplicate.CopyFrom(layer)
    return duplicate
