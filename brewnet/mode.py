"""Global settings: CPU or GPU mode, the device index and the random seed."""

from __future__ import annotations

import random

import numpy as np
import torch

_state = {"mode": "cpu", "device_id": 0}


def set_mode_cpu() -> None:
    """Build new nets on the CPU."""
    _state["mode"] = "cpu"


def set_mode_gpu() -> None:
    """Build new nets on the GPU chosen by :func:`set_device`.

    Raises:
        DeviceError: this PyTorch build finds no CUDA device.
    """
    from brewnet.errors import DeviceError

    if not torch.cuda.is_available():
        raise DeviceError(
            "GPU mode requested, but PyTorch sees no CUDA device; install a CUDA build "
            "of torch or use CPU mode"
        )
    _state["mode"] = "gpu"


def set_device(device_id: int) -> None:
    """Choose the GPU that GPU mode uses."""
    _state["device_id"] = int(device_id)


def default_device() -> torch.device:
    """Return the device that new nets are built on."""
    if _state["mode"] == "gpu":
        return torch.device("cuda", _state["device_id"])
    return torch.device("cpu")


def set_random_seed(seed: int) -> None:
    """Seed every random generator brewnet draws from (fillers, dropout, data order)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)
