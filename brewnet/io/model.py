"""Binary .caffemodel files: a NetParameter whose layers carry their blobs."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from brewnet.blob import shape_string
from brewnet.errors import ModelFileError
from brewnet.io.prototxt import read_binary, write_bytes
from brewnet.proto import caffe_pb2

if TYPE_CHECKING:
    from brewnet.net import Net

logger = logging.getLogger(__name__)


def blob_proto_shape(proto: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """Return the shape a BlobProto describes, from ``shape`` or the legacy 4 fields."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return (len(proto.data) or len(proto.double_data),)


def blob_proto_to_array(proto: caffe_pb2.BlobProto, diff: bool = False) -> np.ndarray:
    """Return the data (or diff) of a BlobProto as a NumPy array of its shape."""
    shape = blob_proto_shape(proto)
    if diff:
        values = proto.double_diff if len(proto.double_diff) else proto.diff
    else:
        values = proto.double_data if len(proto.double_data) else proto.data
    dtype = np.float64 if (len(proto.double_data) and not diff) else np.float32
    array = np.asarray(values, dtype=dtype)
    expected = int(np.prod(shape)) if shape else 1
    if array.size != expected:
        raise ModelFileError(
            f"blob holds {array.size} values but its shape {shape_string(shape)} needs "
            f"{expected}"
        )
    return array.reshape(shape)


def array_to_blob_proto(
    array: np.ndarray, diff: np.ndarray | None = None
) -> caffe_pb2.BlobProto:
    """Return a BlobProto with ``shape`` and float data (and diff) from arrays."""
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend(int(d) for d in array.shape)
    proto.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    if diff is not None:
        proto.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    return proto


def _tensor_to_blob_proto(tensor: torch.Tensor, write_diff: bool) -> caffe_pb2.BlobProto:
    data = tensor.detach().to("cpu", torch.float32).numpy()
    diff = None
    if write_diff:
        grad = tensor.grad
        diff = (
            grad.detach().to("cpu", torch.float32).numpy()
            if grad is not None
            else np.zeros_like(data)
        )
    return array_to_blob_proto(data, diff)


def net_to_proto(net: Net, write_diff: bool = False) -> caffe_pb2.NetParameter:
    """Return the net's definition with each layer's parameter blobs attached."""
    proto = caffe_pb2.NetParameter()
    proto.CopyFrom(net.net_param)
    for layer_param, layer in zip(proto.layer, net.layers):
        del layer_param.blobs[:]
        for tensor in layer.blobs:
            layer_param.blobs.append(_tensor_to_blob_proto(tensor, write_diff))
    return proto


def save_caffemodel(net: Net, path: str | os.PathLike) -> None:
    """Write ``net``'s parameters to ``path`` as a binary NetParameter."""
    write_bytes(path, net_to_proto(net).SerializeToString())


def read_caffemodel(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Read a binary .caffemodel file.

    Raises:
        FileNotFoundError: the file does not exist.
        ModelFileError: the file is not a binary NetParameter.
    """
    return read_binary(path, caffe_pb2.NetParameter())


def copy_trained_layers(net: Net, path: str | os.PathLike) -> None:
    """Copy the parameters of every layer of the file into the same-named layer.

    Layers of the file that the net lacks are skipped with an INFO line.

    Raises:
        ModelFileError: a layer's blob count or a blob's shape differs; the message
            names the layer, both shapes and the file.
    """
    path = os.fspath(path)
    source = read_caffemodel(path)
    layers = list(source.layer)
    if not layers and source.layers:
        raise ModelFileError(
            f"{path}: the model uses the legacy V1 'layers' field, which this reader "
            f"does not upgrade yet"
        )
    copy_layers_from_proto(net, layers, path)


def copy_layers_from_proto(net: Net, layers, source: str) -> None:
    """Copy blobs from ``layers`` (LayerParameter messages) into ``net`` by name."""
    for source_layer in layers:
        target = net.layer_dict.get(source_layer.name)
        if target is None:
            logger.info("Ignoring source layer %s", source_layer.name)
            continue
        logger.info("Copying source layer %s", source_layer.name)
        if len(source_layer.blobs) != len(target.blobs):
            raise ModelFileError(
                f"{source}: layer '{source_layer.name}' has {len(source_layer.blobs)} "
                f"blobs in the file but {len(target.blobs)} in the net"
            )
        for index, blob_proto in enumerate(source_layer.blobs):
            tensor = target.blobs[index]
            shape = blob_proto_shape(blob_proto)
            if tuple(shape) != tuple(tensor.shape):
                raise ModelFileError(
                    f"{source}: cannot copy param {index} of layer '{source_layer.name}': "
                    f"shape mismatch; the file has {shape_string(shape)} and the net "
                    f"expects {shape_string(tuple(tensor.shape))}. To learn this layer's "
                    f"parameters from scratch instead, rename the layer"
                )
            values = torch.from_numpy(blob_proto_to_array(blob_proto))
            with torch.no_grad():
                tensor.copy_(values.to(tensor.dtype))
