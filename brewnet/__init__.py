"""brewnet: Caffe's nets, solvers and model files, run on PyTorch.

The package is also pycaffe: a script written for pycaffe runs after replacing
``import caffe`` with ``import brewnet as caffe``.
"""

from __future__ import annotations

from brewnet import io
from brewnet.blob import Blob
from brewnet.layers import layer_type_list
from brewnet.layers.base import TEST, TRAIN
from brewnet.logs import init_log, log
from brewnet.mode import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from brewnet.net import Net
from brewnet.net_spec import NetSpec, params, to_proto
from brewnet.python_layer import Layer

# ``brewnet.layers`` is the package of layer classes; its module __getattr__ also makes
# it pycaffe's ``caffe.layers`` (``from brewnet import layers as L``).
from brewnet import layers  # noqa: E402  (after Net, which imports it first)

__version__ = "0.1.0"

# Names that load their module on first use, so that an import error there does not
# break ``import brewnet``.
_LAZY = {
    "get_solver": "brewnet.solvers",
    "SGDSolver": "brewnet.solvers",
    "NesterovSolver": "brewnet.solvers",
    "AdaGradSolver": "brewnet.solvers",
    "RMSPropSolver": "brewnet.solvers",
    "AdaDeltaSolver": "brewnet.solvers",
    "AdamSolver": "brewnet.solvers",
    "Classifier": "brewnet.classifier",
    "Detector": "brewnet.classifier",
    "draw": "brewnet.draw",
}


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'brewnet' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(module_name)
    if module_name == f"{__name__}.{name}":
        return module
    return getattr(module, name)


__all__ = [
    "Blob",
    "Layer",
    "Net",
    "NetSpec",
    "TEST",
    "TRAIN",
    "init_log",
    "io",
    "layer_type_list",
    "log",
    "layers",
    "params",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_random_seed",
    "to_proto",
    *sorted(_LAZY),
]
