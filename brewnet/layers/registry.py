"""The layer registry: Caffe type names to layer classes."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from brewnet.errors import UnknownLayerTypeError

if TYPE_CHECKING:
    from brewnet.layers.base import Layer

_REGISTRY: dict[str, type[Layer]] = {}


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Register ``cls`` under its ``type`` attribute; use as a class decorator."""
    name = getattr(cls, "type", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"layer class {cls.__name__} has no 'type' string attribute")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(
            f"layer type '{name}' is registered twice: by "
            f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__name__} and by "
            f"{cls.__module__}.{cls.__name__}"
        )
    _REGISTRY[name] = cls
    return cls


def suggest_layer_types(name: str, count: int = 3) -> list[str]:
    """Return up to ``count`` registered type names that are closest to ``name``."""
    by_lower = {known.lower(): known for known in _REGISTRY}
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=count, cutoff=0.5)
    return [by_lower[match] for match in matches]


def layer_class(name: str) -> type[Layer]:
    """Return the class registered for the Caffe type ``name``.

    Raises:
        UnknownLayerTypeError: no class is registered under ``name``; the message
            lists the closest known names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = suggest_layer_types(name)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownLayerTypeError(
            f"unknown layer type '{name}'.{hint} "
            f"Run 'brewnet layers' for the list of known types."
        ) from None


def layer_type_list() -> list[str]:
    """Return every registered layer type name, sorted."""
    return sorted(_REGISTRY)
