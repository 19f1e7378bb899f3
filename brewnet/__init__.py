"""brewnet: Caffe's nets, solvers and model files, run on PyTorch."""

from __future__ import annotations

from brewnet.blob import Blob
from brewnet.layers import layer_type_list
from brewnet.layers.base import TEST, TRAIN, Layer
from brewnet.mode import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from brewnet.net import Net

__version__ = "0.1.0"

__all__ = [
    "Blob",
    "Layer",
    "Net",
    "TEST",
    "TRAIN",
    "layer_type_list",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_random_seed",
]
