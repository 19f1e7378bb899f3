"""Weights in Caffe's HDF5 format (``.caffemodel.h5``).

Caffe's ``Net::ToHDF5`` writes one group per layer under ``data`` (and under
``diff`` when diffs are saved), each holding one dataset per parameter blob, named
by the blob's index: ``data/conv1/0`` is conv1's weight, ``data/conv1/1`` its bias.
A dataset has the blob's shape and the net's float type. A blob that a layer shares
with an earlier layer is stored only under its owner; diffs are stored for every
blob. Layers without parameters get an empty group.

Loading follows ``Net::CopyTrainedLayersFromHDF5``: groups of layers the net lacks
are skipped, a group may not contain more datasets than its layer has blobs, a missing
dataset is allowed only for a shared blob, and shapes must match exactly.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from brewnet.blob import shape_string
from brewnet.errors import ModelFileError

if TYPE_CHECKING:
    from brewnet.net import Net

logger = logging.getLogger(__name__)


def save_hdf5(net: Net, path: str | os.PathLike, write_diff: bool = False) -> None:
    """Write ``net``'s parameters to ``path`` in Caffe's HDF5 weights layout.

    Datasets are float32, or float64 for a float64 net. A layer name that contains
    ``/`` becomes nested groups, which :func:`copy_trained_layers_from_hdf5` reads
    back.

    NOTE: Caffe itself fails to save such names (GoogLeNet's ``inception_3a/1x1``)
    because it does not create the intermediate groups, so only brewnet reads those
    files.
    """
    path = os.fspath(path)
    owners = _owner_flags(net)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with h5py.File(temporary, "w") as handle:
            data_group = handle.create_group("data")
            diff_group = handle.create_group("diff") if write_diff else None
            for layer, owned in zip(net._layers, owners):
                layer_data = data_group.require_group(layer.name)
                layer_diff = (
                    diff_group.require_group(layer.name) if diff_group else None
                )
                for index, (tensor, is_owner) in enumerate(zip(layer.blobs, owned)):
                    if is_owner:
                        layer_data.create_dataset(str(index), data=_array(tensor))
                    if layer_diff is not None:
                        layer_diff.create_dataset(str(index), data=_grad_array(tensor))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def copy_trained_layers_from_hdf5(net: Net, path: str | os.PathLike) -> None:
    """Copy the parameters stored in an HDF5 weights file into same-named layers.

    Raises:
        FileNotFoundError: the file does not exist.
        ModelFileError: the file is not HDF5, has no ``data`` group, or a layer's
            datasets do not fit its blobs; the message names the file and layer.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ModelFileError(
            f"{path}: cannot open as HDF5 weights ({error}); a name ending in .h5 "
            f"selects Caffe's HDF5 format, so rename a binary model to .caffemodel"
        ) from None
    with handle:
        data_group = handle.get("data")
        if not isinstance(data_group, h5py.Group):
            raise ModelFileError(
                f"{path}: no 'data' group; Caffe's HDF5 weights store each layer's "
                f"blobs under data/<layer name>/<blob index>"
            )
        transfers = _plan(net, path, _layer_groups(data_group))
        for tensor, dataset in transfers:
            _read_dataset(tensor, dataset, path)


def _layer_groups(data_group: h5py.Group) -> list[tuple[str, h5py.Group]]:
    """Return (layer name, group) for every group below ``data``.

    A group that contains only other groups is the parent of names containing ``/``
    and is left out, unless it is empty (a layer without parameters).
    """
    found: list[tuple[str, h5py.Group]] = []

    def visit(name: str, item) -> None:
        if not isinstance(item, h5py.Group):
            return
        children = list(item.values())
        has_datasets = any(isinstance(child, h5py.Dataset) for child in children)
        if has_datasets or not children:
            found.append((name, item))

    data_group.visititems(visit)
    return found


def _plan(net: Net, path: str, groups) -> list[tuple[torch.Tensor, h5py.Dataset]]:
    owners = dict(zip((layer.name for layer in net._layers), _owner_flags(net)))
    transfers = []
    for name, group in groups:
        layer = net._layer_dict.get(name)
        if layer is None:
            logger.info("Ignoring source layer %s", name)
            continue
        logger.info("Copying source layer %s", name)
        datasets = {
            key: item for key, item in group.items() if isinstance(item, h5py.Dataset)
        }
        if len(datasets) > len(layer.blobs):
            raise ModelFileError(
                f"{path}: layer '{name}' has {len(datasets)} datasets in the file but "
                f"{len(layer.blobs)} blobs in the net; the weights were saved from a "
                f"different layer definition"
            )
        for index, tensor in enumerate(layer.blobs):
            dataset = datasets.get(str(index))
            if dataset is None:
                if not owners[name][index]:
                    continue  # A shared blob takes its values from its owner.
                raise ModelFileError(
                    f"{path}: layer '{name}' has no dataset data/{name}/{index} for its "
                    f"blob {index} of shape {shape_string(tuple(tensor.shape))}"
                )
            _check_dataset(dataset, tensor, path, name, index)
            transfers.append((tensor, dataset))
    return transfers


def _check_dataset(
    dataset: h5py.Dataset, tensor: torch.Tensor, path: str, name: str, index: int
) -> None:
    if dataset.dtype.kind != "f":
        raise ModelFileError(
            f"{path}: dataset data/{name}/{index} contains {dataset.dtype} values; "
            f"expected float or double data"
        )
    if tuple(dataset.shape) != tuple(tensor.shape):
        raise ModelFileError(
            f"{path}: cannot copy blob {index} of layer '{name}': shape mismatch; the "
            f"file has {shape_string(dataset.shape)} and the net expects "
            f"{shape_string(tuple(tensor.shape))}. To learn this layer's parameters "
            f"from scratch instead, rename the layer"
        )


def _read_dataset(tensor: torch.Tensor, dataset: h5py.Dataset, path: str) -> None:
    writable = tensor.detach()
    try:
        if (
            writable.device.type == "cpu"
            and writable.is_contiguous()
            and writable.dtype
            in (
                torch.float32,
                torch.float64,
            )
        ):
            destination = writable.numpy()
            if destination.size:
                dataset.read_direct(destination)
            return
        values = np.asarray(
            dataset[()],
            dtype=np.float64 if writable.dtype == torch.float64 else np.float32,
        )
    except OSError as error:
        raise ModelFileError(
            f"{path}: reading dataset {dataset.name} failed ({error})"
        ) from None
    with torch.no_grad():
        writable.copy_(torch.from_numpy(values).reshape(writable.shape))


def _owner_flags(net: Net) -> list[list[bool]]:
    """Return, per layer and blob, whether the blob owns its tensor (is not shared)."""
    seen: set[int] = set()
    flags = []
    for layer in net._layers:
        owned = []
        for tensor in layer.blobs:
            owned.append(id(tensor) not in seen)
            seen.add(id(tensor))
        flags.append(owned)
    return flags


def _array(tensor: torch.Tensor) -> np.ndarray:
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.detach().to("cpu", dtype).numpy()


def _grad_array(tensor: torch.Tensor) -> np.ndarray:
    if tensor.grad is None:
        return np.zeros(tuple(tensor.shape), dtype=_array(tensor).dtype)
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.grad.detach().to("cpu", dtype).numpy()
