"""Solver state files, in Caffe's binary and HDF5 layouts.

A solver state records the iteration, the path of the model written with it
(``learned_net``), the step counter of the "step"/"multistep" policies and one
history blob per entry of the solver's history (momentum, squared gradients, ...).

- ``.solverstate`` is a binary ``SolverState`` message.
- ``.solverstate.h5`` contains the int32 datasets ``iter`` and ``current_step`` of shape
  (1,), the scalar string ``learned_net`` and a group ``history`` with the datasets
  ``"0"``, ``"1"``, ... of each blob's shape.

Each file is written whole to a temporary name and renamed, so an interrupted write
leaves any previous file in place. The models written beside the states are
``brewnet.io.model`` (.caffemodel) and ``brewnet.io.hdf5`` (.caffemodel.h5) files.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from brewnet.errors import ModelFileError
from brewnet.io.model import array_to_blob_proto, blob_proto_to_array
from brewnet.io.prototxt import read_binary, write_bytes
from brewnet.proto import caffe_pb2

logger = logging.getLogger("brewnet.solver")


@dataclass
class StateRecord:
    """The contents of a solver state file."""

    iter: int
    learned_net: str | None
    current_step: int
    history: list[np.ndarray] = field(default_factory=list)


# ============================================================ binary solver states
def write_state_proto(path: str, record: StateRecord) -> None:
    """Write ``record`` as a binary SolverState message."""
    state = caffe_pb2.SolverState()
    state.iter = record.iter
    if record.learned_net is not None:
        state.learned_net = record.learned_net
    state.current_step = record.current_step
    for array in record.history:
        state.history.append(
            array_to_blob_proto(array, double=array.dtype == np.float64)
        )
    write_bytes(path, state.SerializeToString())


def read_state_proto(path: str) -> StateRecord:
    """Read a binary SolverState file."""
    state = read_binary(path, caffe_pb2.SolverState())
    history = []
    for index, proto in enumerate(state.history):
        try:
            history.append(blob_proto_to_array(proto))
        except ModelFileError as error:
            raise ModelFileError(f"{path}: history blob {index}: {error}") from None
    learned_net = state.learned_net if state.HasField("learned_net") else None
    return StateRecord(state.iter, learned_net, state.current_step, history)


# ============================================================== HDF5 solver states
def write_state_hdf5(path: str, record: StateRecord) -> None:
    """Write ``record`` in the layout of Caffe's ``.solverstate.h5``."""
    h5py = _import_h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle.create_dataset("iter", data=np.array([record.iter], dtype=np.int32))
        if record.learned_net is not None:
            _write_string(handle, "learned_net", record.learned_net)
        handle.create_dataset(
            "current_step", data=np.array([record.current_step], dtype=np.int32)
        )
        group = handle.create_group("history")
        for index, array in enumerate(record.history):
            group.create_dataset(str(index), data=array)
    write_bytes(path, buffer.getvalue())


def read_state_hdf5(path: str) -> StateRecord:
    """Read a ``.solverstate.h5`` file."""
    h5py = _import_h5py()
    handle = _open_hdf5(h5py, path)
    with handle:
        for name in ("iter", "current_step", "history"):
            if name not in handle:
                raise ModelFileError(
                    f"{path}: no '{name}' in the file; it is not a Caffe HDF5 solver "
                    f"state"
                )
        iteration = _read_int(handle, "iter", path)
        current_step = _read_int(handle, "current_step", path)
        learned_net = None
        if "learned_net" in handle:
            learned_net = _read_string(handle, "learned_net")
        group = handle["history"]
        history = []
        for index in range(len(group)):
            if str(index) not in group:
                raise ModelFileError(
                    f"{path}: history has {len(group)} entries but no dataset '{index}'"
                )
            history.append(np.asarray(group[str(index)][()]))
    return StateRecord(iteration, learned_net, current_step, history)


def _write_string(handle, name: str, text: str) -> None:
    """Write a scalar, null-terminated fixed-length string, as H5LT does."""
    h5py = _import_h5py()
    data = text.encode("utf-8")
    string_type = h5py.h5t.C_S1.copy()
    string_type.set_size(len(data) + 1)
    string_type.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dataset = h5py.h5d.create(handle.id, name.encode("utf-8"), string_type, space)
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(data + b"\0"), mtype=string_type)


def _read_string(handle, name: str) -> str:
    value = handle[name][()]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return str(value).rstrip("\0")


def _read_int(handle, name: str, path: str) -> int:
    values = np.asarray(handle[name][()]).reshape(-1)
    if values.size != 1:
        raise ModelFileError(
            f"{path}: '{name}' has {values.size} values, expected 1; the file is not a "
            f"Caffe HDF5 solver state"
        )
    return int(values[0])


# ====================================================================== helpers
def tensor_to_array(tensor: torch.Tensor) -> np.ndarray:
    """Return a CPU NumPy copy of ``tensor``, in float64 or float32 like the tensor."""
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.detach().to("cpu", dtype).numpy().copy()


def _open_hdf5(h5py, path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ModelFileError(f"{path}: not a readable HDF5 file ({error})") from None


def _import_h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise ModelFileError(
            "HDF5 snapshots need the h5py package; install it or use "
            "snapshot_format: BINARYPROTO"
        ) from None
    return h5py
