"""Layer classes, one module per family, registered by Caffe type name.

Importing this package imports every module in it, so a new family only needs a new
file whose classes use the :func:`register_layer` decorator.
"""

from __future__ import annotations

import importlib
import pkgutil

from brewnet.layers.base import Layer
from brewnet.layers.registry import layer_class, layer_type_list, register_layer

__all__ = ["Layer", "layer_class", "layer_type_list", "register_layer"]

_INFRASTRUCTURE = {"base", "registry"}

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def __getattr__(name: str):
    """Return the NetSpec layer function for a registered type (``layers.Convolution``).

    This makes ``from brewnet import layers as L`` work as pycaffe's ``caffe.layers``.

    Raises:
        AttributeError: ``name`` is no registered layer type; the message lists the
            closest known names.
    """
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from brewnet import net_spec

    if name not in layer_type_list():
        raise AttributeError(net_spec.unknown_layer_type_message(name))
    return net_spec.layer_function(name)
