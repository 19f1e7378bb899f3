"""Binary .caffemodel files: a NetParameter whose layers carry their blobs.

Reading does not hand the whole file to the protobuf library. :func:`scan_caffemodel`
walks the wire format once, keeping for every layer its name, its non-blob fields and
the file offsets of its blob values; :func:`copy_trained_layers` then reads each
blob's values from the file straight into the net's tensor. A 530 MB VGG-16 model
thus needs no memory beyond the net itself (docs/model-files.md has the numbers).

Writing follows Caffe's ``Net::ToProto``: the net's name, then every layer's
parameters as the layer was built, with its blobs, streamed from the tensors.

Weights load by layer name, as in Caffe's ``Net::CopyTrainedLayersFrom``: a file
layer the net lacks is skipped, and a layer present in both must have the same
number of blobs with matching shapes. A blob stored with the legacy
num/channels/height/width fields matches a net blob of up to 4 axes whose shape,
padded with leading 1s to 4 axes, equals those four numbers (Caffe's
``Blob::ShapeEquals``). Every check runs before any value is copied, so a failed load
leaves the net unchanged.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from google.protobuf import message

from brewnet.blob import shape_string
from brewnet.errors import ModelFileError
from brewnet.io import wire
from brewnet.io.wire import BlobRecord, Values, WireError
from brewnet.proto import caffe_pb2

if TYPE_CHECKING:
    from brewnet.net import Net

logger = logging.getLogger(__name__)

_NET_TABLE = wire.expected_wire_types(caffe_pb2.NetParameter.DESCRIPTOR)
_LAYER_TABLE = wire.expected_wire_types(caffe_pb2.LayerParameter.DESCRIPTOR)
_V1_TABLE = wire.expected_wire_types(caffe_pb2.V1LayerParameter.DESCRIPTOR)
_V0_TABLE = wire.expected_wire_types(caffe_pb2.V0LayerParameter.DESCRIPTOR)
_BLOB_TABLE = wire.expected_wire_types(caffe_pb2.BlobProto.DESCRIPTOR)

# Field numbers used by the scanner: (name, type, blobs) of each layer format.
_NET_LAYER = 100  # NetParameter.layer
_NET_LAYERS = 2  # NetParameter.layers (V1)
_LAYER_FIELDS = (1, 2, 7)  # LayerParameter
_V1_FIELDS = (4, 5, 6)  # V1LayerParameter
_V1_NESTED_V0 = 1  # V1LayerParameter.layer
_V0_FIELDS = (1, 2, 50)  # V0LayerParameter

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# ============================================================================ BlobProto
def blob_proto_shape(proto: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """Return the shape Caffe gives a BlobProto.

    The legacy num/channels/height/width fields win when any of them is set; else
    the ``shape`` field's dims, which may be empty (a blob with no axes contains one
    value).
    """
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return tuple(int(d) for d in proto.shape.dim)


def blob_proto_to_array(proto: caffe_pb2.BlobProto, diff: bool = False) -> np.ndarray:
    """Return the data (or diff) of a BlobProto as a NumPy array of its shape.

    The array is float64 when the values are stored in ``double_data`` (or
    ``double_diff``), else float32.

    Raises:
        ModelFileError: the number of values does not match the shape.
    """
    raw = proto.SerializeToString()
    record = wire.scan_blob(raw, 0, len(raw), len(raw), _BLOB_TABLE)
    values = record.diff_values() if diff else record.data_values()
    shape = record.shape_tuple()
    _check_value_count(values, shape, "blob", "diff" if diff else "data")
    return wire.gather_values(raw, values).reshape(shape)


def array_to_blob_proto(
    array: np.ndarray, diff: np.ndarray | None = None, double: bool = False
) -> caffe_pb2.BlobProto:
    """Return a BlobProto with ``shape`` and the values (and diff) of arrays.

    Values are stored as float (``data``), or as ``double_data`` when ``double`` is
    true, as Caffe's ``Blob::ToProto`` writes them for float and double nets.
    """
    dtype = np.float64 if double else np.float32
    buffer = io.BytesIO()
    data = np.asarray(array, dtype=dtype)
    wire.write_blob(
        buffer, data, None if diff is None else np.asarray(diff, dtype=dtype)
    )
    return caffe_pb2.BlobProto.FromString(buffer.getvalue())


def _check_value_count(
    values: Values, shape: Sequence[int], where: str, kind: str
) -> None:
    expected = _count(shape)
    if values.count != expected:
        raise ModelFileError(
            f"{where} has {values.count} {kind} values but its shape "
            f"{shape_string(shape)} needs {expected}; the file is corrupt"
        )


def _count(shape: Sequence[int]) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


# ============================================================================ scanning
@dataclass
class LayerRecord:
    """A layer of a model file: its name, type, blobs and other fields.

    ``rest`` contains the layer's fields other than its blobs, as the bytes of a
    LayerParameter (``format`` "layer") or V1LayerParameter ("V1" and "V0"; for "V0"
    the nested V0LayerParameter is included, without its blobs).
    """

    name: str
    type: str | int
    format: str
    blobs: list[BlobRecord] = field(default_factory=list)
    blob_spans: list[tuple[int, int]] = field(default_factory=list)  # payload bytes
    rest: bytes = b""


@dataclass
class ModelIndex:
    """The layout of a binary model file, with no blob values loaded."""

    path: str
    size: int
    name: str
    layers: list[LayerRecord]
    header: bytes  # the NetParameter's fields other than its layers

    @property
    def legacy_format(self) -> str | None:
        """ "V0" or "V1" when the file uses a legacy layer format, else None."""
        formats = {record.format for record in self.layers}
        if "V0" in formats:
            return "V0"
        return "V1" if "V1" in formats else None

    def skeleton(self) -> caffe_pb2.NetParameter:
        """Return the file's NetParameter without any blob values."""
        parts = [self.header]
        for record in self.layers:
            number = _NET_LAYER if record.format == "layer" else _NET_LAYERS
            parts.append(wire.length_prefix(number, len(record.rest)) + record.rest)
        try:
            return caffe_pb2.NetParameter.FromString(b"".join(parts))
        except message.DecodeError as error:
            raise ModelFileError(
                f"{self.path}: a layer's settings are not valid protobuf ({error}); "
                f"the file is corrupt"
            ) from None


def scan_caffemodel(path: str | os.PathLike) -> ModelIndex:
    """Locate the layers and blobs of the binary model file at ``path``.

    Raises:
        FileNotFoundError: the file does not exist.
        ModelFileError: the file is empty, truncated, not a NetParameter, or has
            no layers; the message names the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            return _scan_file(handle, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {path}") from None


def _scan_file(handle: BinaryIO, path: str) -> ModelIndex:
    size = os.fstat(handle.fileno()).st_size
    if size == 0:
        raise ModelFileError(
            f"{path}: the file is empty; expected a binary NetParameter (.caffemodel)"
        )
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        try:
            return _scan_net(buffer, path, size)
        except WireError as error:
            raise _scan_error(path, size, buffer, error) from None


def _scan_error(path: str, size: int, buffer, error: WireError) -> ModelFileError:
    if error.truncated:
        return ModelFileError(
            f"{path}: the file is truncated ({error}; the file has {size} bytes). "
            f"Copy or download it again"
        )
    head = bytes(buffer[: min(size, 64)])
    hint = ""
    if head.startswith(_HDF5_SIGNATURE):
        hint = (
            "; it is an HDF5 file, which is read as weights when its name ends in .h5"
        )
    elif _looks_like_text(head):
        hint = (
            "; it looks like a text file (a prototxt?), but weights must be a binary "
            "model such as a .caffemodel"
        )
    elif _looks_like_blob_proto(buffer):
        hint = (
            "; it reads as a BlobProto (a mean file such as mean.binaryproto?), which "
            "belongs in transform_param.mean_file, not in the weights"
        )
    return ModelFileError(
        f"{path}: not a binary NetParameter (.caffemodel): {error}{hint}"
    )


def _looks_like_blob_proto(buffer) -> bool:
    """Return whether the bytes parse as a BlobProto with a shape and data."""
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(bytes(buffer))
    except message.DecodeError:
        return False
    has_shape = blob.HasField("shape") or blob.HasField("num")
    return has_shape and (len(blob.data) > 0 or len(blob.double_data) > 0)


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _scan_net(buffer, path: str, size: int) -> ModelIndex:
    header: list[bytes] = []
    layers: list[LayerRecord] = []
    name = ""
    known_fields = 0
    for item in wire.iter_fields(buffer, 0, size):
        wire.check_wire_type(item, _NET_TABLE, "NetParameter")
        if item.number in _NET_TABLE:
            known_fields += 1
        if item.number == _NET_LAYER:
            layers.append(_scan_layer(buffer, item, size))
        elif item.number == _NET_LAYERS:
            layers.append(_scan_v1_layer(buffer, item, size))
        else:
            if item.number == 1:
                name = _decode_string(buffer, item, "the net name")
            header.append(bytes(buffer[item.start : item.end]))
    if not known_fields:
        raise WireError("it has none of NetParameter's fields")
    formats = {record.format for record in layers}
    if "layer" in formats and len(formats) > 1:
        raise ModelFileError(
            f"{path}: the file mixes current 'layer' entries with legacy 'layers' "
            f"entries; upgrade it with 'brewnet upgrade' from a consistent source"
        )
    if not layers:
        raise ModelFileError(
            f"{path}: the NetParameter has no layers, so it has no weights"
        )
    return ModelIndex(path, size, name, layers, b"".join(header))


def _decode_string(buffer, item: wire.Field, what: str) -> str:
    try:
        return bytes(buffer[item.value_start : item.end]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"{what} at byte {item.start} is not UTF-8 text") from None


def _scan_layer(buffer, outer: wire.Field, size: int) -> LayerRecord:
    name_number, type_number, blobs_number = _LAYER_FIELDS
    record = LayerRecord(name="", type="", format="layer")
    rest: list[bytes] = []
    for item in wire.iter_fields(buffer, outer.value_start, outer.end, size):
        wire.check_wire_type(item, _LAYER_TABLE, "LayerParameter")
        if item.number == blobs_number:
            _add_blob(record, buffer, item, size)
            continue
        if item.number == name_number:
            record.name = _decode_string(buffer, item, "a layer name")
        elif item.number == type_number:
            record.type = _decode_string(buffer, item, "a layer type")
        rest.append(bytes(buffer[item.start : item.end]))
    record.rest = b"".join(rest)
    return record


def _scan_v1_layer(buffer, outer: wire.Field, size: int) -> LayerRecord:
    """Scan a V1 layer, or the V0 layer nested in it."""
    name_number, type_number, blobs_number = _V1_FIELDS
    record = LayerRecord(name="", type=0, format="V1")
    rest: list[bytes] = []
    nested: LayerRecord | None = None
    for item in wire.iter_fields(buffer, outer.value_start, outer.end, size):
        wire.check_wire_type(item, _V1_TABLE, "V1LayerParameter")
        if item.number == blobs_number:
            _add_blob(record, buffer, item, size)
            continue
        if item.number == _V1_NESTED_V0:
            nested = _scan_v0_layer(buffer, item, size)
            continue
        if item.number == name_number:
            record.name = _decode_string(buffer, item, "a layer name")
        elif item.number == type_number:
            record.type = item.value
        rest.append(bytes(buffer[item.start : item.end]))
    record.rest = b"".join(rest)
    if nested is None:
        return record
    # Caffe's V0 upgrade takes the name and blobs from the nested V0 layer only.
    nested.rest = (
        record.rest + wire.length_prefix(_V1_NESTED_V0, len(nested.rest)) + nested.rest
    )
    return nested


def _scan_v0_layer(buffer, outer: wire.Field, size: int) -> LayerRecord:
    name_number, type_number, blobs_number = _V0_FIELDS
    record = LayerRecord(name="", type="", format="V0")
    rest: list[bytes] = []
    for item in wire.iter_fields(buffer, outer.value_start, outer.end, size):
        wire.check_wire_type(item, _V0_TABLE, "V0LayerParameter")
        if item.number == blobs_number:
            _add_blob(record, buffer, item, size)
            continue
        if item.number == name_number:
            record.name = _decode_string(buffer, item, "a layer name")
        elif item.number == type_number:
            record.type = _decode_string(buffer, item, "a layer type")
        rest.append(bytes(buffer[item.start : item.end]))
    record.rest = b"".join(rest)
    return record


def _add_blob(record: LayerRecord, buffer, item: wire.Field, size: int) -> None:
    record.blobs.append(
        wire.scan_blob(buffer, item.value_start, item.end, size, _BLOB_TABLE)
    )
    record.blob_spans.append((item.value_start, item.end))


def read_caffemodel(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Read a binary model file into one NetParameter message, blobs included.

    The file is checked with :func:`scan_caffemodel` first, so a damaged file gets
    the same messages. This keeps every value in protobuf's memory; to load weights
    into a net, :func:`copy_trained_layers` needs far less.

    Raises:
        FileNotFoundError: the file does not exist.
        ModelFileError: the file is not a valid binary NetParameter.
    """
    path = os.fspath(path)
    scan_caffemodel(path)
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return caffe_pb2.NetParameter.FromString(data)
    except message.DecodeError as error:
        raise ModelFileError(
            f"{path}: not a valid binary NetParameter ({error})"
        ) from None


# ============================================================================ copying
@dataclass
class _SourceBlob:
    """One stored blob to copy, and the bytes that contain its values."""

    record: BlobRecord
    buffer: object | None  # bytes for in-memory sources, None to read from the file


@dataclass
class _Transfer:
    tensor: torch.Tensor
    source: _SourceBlob
    with_diff: bool


def copy_trained_layers(net: Net, path: str | os.PathLike) -> None:
    """Copy the parameters of every layer of a model file into the same-named layer.

    A name ending in ``.h5`` selects Caffe's HDF5 format (as Caffe's
    ``Net::CopyTrainedLayersFrom`` does); any other name is read as a binary
    NetParameter, whose layers may use the current, V1 or V0 format. Layers of the
    file that the net lacks are skipped with an INFO line. Blob diffs stored in the
    file are copied into the parameter diffs, as Caffe does.

    Raises:
        FileNotFoundError: the file does not exist.
        ModelFileError: the file is invalid, or a layer's blob count or a blob's
            shape differs; the message names the file, the layer and both shapes.
    """
    path = os.fspath(path)
    if path.endswith(".h5"):
        from brewnet.io.hdf5 import copy_trained_layers_from_hdf5

        copy_trained_layers_from_hdf5(net, path)
        return
    index = scan_caffemodel(path)
    if index.legacy_format is not None:
        logger.info("Reading %s layers of the legacy model %s", index.legacy_format, path)
        warnings.warn(
            f"{path}: the model uses the {index.legacy_format} layer format; run "
            f"'brewnet upgrade {path} NEW_FILE' to convert it",
            DeprecationWarning,
            stacklevel=3,
        )
    entries = [
        (record.name, [_SourceBlob(blob, None) for blob in record.blobs])
        for record in index.layers
        if not (record.format == "V0" and record.type == "padding")
    ]
    transfers = _plan_transfers(net, entries, path)
    with open(path, "rb") as handle:
        _run_transfers(transfers, handle, path)


def copy_layers_from_proto(
    net: Net, layers: Iterable[caffe_pb2.LayerParameter], source: str = "<NetParameter>"
) -> None:
    """Copy blobs from LayerParameter messages into the same-named layers of ``net``.

    The rules of :func:`copy_trained_layers` apply; ``source`` names the origin in
    messages.
    """
    entries = []
    for layer in layers:
        blobs = []
        for blob_proto in layer.blobs:
            raw = blob_proto.SerializeToString()
            record = wire.scan_blob(raw, 0, len(raw), len(raw), _BLOB_TABLE)
            blobs.append(_SourceBlob(record, raw))
        entries.append((layer.name, blobs))
    _run_transfers(_plan_transfers(net, entries, source), None, source)


def copy_layers_from_net(target: Net, source: Net) -> None:
    """Copy the parameter values of ``source`` into same-named layers of ``target``.

    This is :func:`copy_trained_layers` without a file: layers ``target`` lacks are
    skipped, and layers present in both must agree in blob count and exact shape.

    Raises:
        ModelFileError: a layer's blob count or a blob's shape differs.
    """
    by_name = _first_layer_by_name(target)
    for layer in source._layers:
        destination = by_name.get(layer.name)
        if destination is None:
            logger.info("Ignoring source layer %s", layer.name)
            continue
        origin = f"net '{source.name}'" if source.name else "the source net"
        stored = len(layer.blobs)
        _check_blob_count(layer.name, stored, len(destination.blobs), "<net>", origin)
        for index, (tensor, values) in enumerate(zip(destination.blobs, layer.blobs)):
            if tuple(tensor.shape) != tuple(values.shape):
                raise _shape_error(
                    "<net>", layer.name, index, values.shape, tensor.shape, origin
                )
    for layer in source._layers:
        destination = by_name.get(layer.name)
        if destination is None:
            continue
        logger.info("Copying source layer %s", layer.name)
        with torch.no_grad():
            for tensor, values in zip(destination.blobs, layer.blobs):
                if tensor is not values:
                    tensor.copy_(values.to(device=tensor.device, dtype=tensor.dtype))


def _plan_transfers(
    net: Net, entries: list[tuple[str, list[_SourceBlob]]], source: str
) -> list[_Transfer]:
    """Check every file layer against the net and return the copies to make."""
    transfers: list[_Transfer] = []
    by_name = _first_layer_by_name(net)
    for name, blobs in entries:
        layer = by_name.get(name)
        if layer is None:
            logger.info("Ignoring source layer %s", name)
            continue
        logger.info("Copying source layer %s", name)
        _check_blob_count(name, len(blobs), len(layer.blobs), source)
        for index, (blob, tensor) in enumerate(zip(blobs, layer.blobs)):
            record = blob.record
            target_shape = tuple(tensor.shape)
            if not shape_equals(record, target_shape):
                raise _shape_error(
                    source, name, index, record.shape_tuple(), target_shape
                )
            where = f"{source}: blob {index} of layer '{name}'"
            _check_value_count(
                record.data_values(), record.shape_tuple(), where, "data"
            )
            diff = record.diff_values()
            if diff.count:
                _check_value_count(diff, record.shape_tuple(), where, "diff")
            transfers.append(_Transfer(tensor, blob, bool(diff.count)))
    return transfers


def _first_layer_by_name(net: Net) -> dict:
    """Map each layer name to its first layer, the one Caffe's binary loader picks."""
    layers: dict = {}
    for layer in net._layers:
        layers.setdefault(layer.name, layer)
    return layers


def shape_equals(record: BlobRecord, shape: Sequence[int]) -> bool:
    """Return whether a stored blob fits a net blob of ``shape`` (Caffe's ShapeEquals).

    A blob with legacy num/channels/height/width fields fits a net blob of at most 4
    axes whose shape, padded with leading 1s to 4 axes, equals those fields; e.g. an
    old InnerProduct weight 1 1 10 20 fits a net blob 10 20.
    """
    shape = tuple(int(d) for d in shape)
    if record.legacy is not None:
        if len(shape) > 4:
            return False
        return (1,) * (4 - len(shape)) + shape == tuple(record.legacy)
    return tuple(record.shape or ()) == shape


def _check_blob_count(
    name: str, stored: int, in_net: int, source: str, origin: str = "the file"
) -> None:
    if stored != in_net:
        raise ModelFileError(
            f"{source}: layer '{name}' has {stored} blobs in {origin} but {in_net} in "
            f"the net; the weights come from a different layer definition. "
            f"Rename the layer to train it from scratch instead"
        )


def _shape_error(
    source: str,
    name: str,
    index: int,
    stored: Sequence[int],
    expected: Sequence[int],
    origin: str = "the file",
) -> ModelFileError:
    return ModelFileError(
        f"{source}: cannot copy blob {index} of layer '{name}': shape mismatch; "
        f"{origin} has {shape_string(stored)} and the net expects "
        f"{shape_string(tuple(expected))}. To learn this layer's parameters from "
        f"scratch instead, rename the layer"
    )


def _run_transfers(
    transfers: list[_Transfer], handle: BinaryIO | None, source: str
) -> None:
    try:
        for transfer in transfers:
            record = transfer.source.record
            _fill_tensor(
                transfer.tensor, record.data_values(), transfer.source.buffer, handle
            )
            if transfer.with_diff:
                tensor = transfer.tensor
                if tensor.grad is None:
                    tensor.grad = torch.zeros_like(tensor)
                _fill_tensor(
                    tensor.grad, record.diff_values(), transfer.source.buffer, handle
                )
    except WireError as error:
        raise ModelFileError(
            f"{source}: {error}; the file changed or is truncated"
        ) from None


def _fill_tensor(
    tensor: torch.Tensor, values: Values, buffer, handle: BinaryIO | None
) -> None:
    """Write ``values`` into ``tensor``, in place and without a full-size copy on CPU."""
    writable = tensor.detach()
    if (
        writable.device.type == "cpu"
        and writable.is_contiguous()
        and writable.dtype
        in (
            torch.float32,
            torch.float64,
        )
    ):
        destination = writable.numpy().reshape(-1)
        _fill_array(destination, values, buffer, handle)
        return
    staging = np.empty(
        writable.numel(),
        dtype=np.float64 if writable.dtype == torch.float64 else np.float32,
    )
    _fill_array(staging, values, buffer, handle)
    with torch.no_grad():
        writable.copy_(torch.from_numpy(staging).reshape(writable.shape))


def _fill_array(
    destination: np.ndarray, values: Values, buffer, handle: BinaryIO | None
) -> None:
    if buffer is not None:
        destination[...] = wire.gather_values(buffer, values)
    else:
        wire.read_values_into(handle, values, destination)


# ============================================================================ writing
@dataclass
class _Payload:
    """A blob to write inside a layer: its encoded size and how to write it."""

    size: int
    write: Callable[[BinaryIO], None]


def net_to_proto(net: Net, write_diff: bool = False) -> caffe_pb2.NetParameter:
    """Return the net as Caffe's ``Net::ToProto`` does: name, layers and their blobs.

    Each layer is the LayerParameter it was built from, with ``phase`` set to the
    net's phase where the definition left it unset, followed by its parameter blobs.
    """
    proto = caffe_pb2.NetParameter(name=net.name)
    for layer_param, layer in zip(_layer_params(net), net._layers):
        target = proto.layer.add()
        target.CopyFrom(layer_param)
        for tensor in layer.blobs:
            data, diff = _tensor_arrays(tensor, write_diff)
            target.blobs.append(
                array_to_blob_proto(data, diff, double=data.dtype == np.float64)
            )
    return proto


def save_caffemodel(
    net: Net, path: str | os.PathLike, write_diff: bool = False
) -> None:
    """Write ``net``'s parameters to ``path`` as a binary NetParameter Caffe reads.

    The bytes equal ``net_to_proto(net, write_diff).SerializeToString()``; they are
    streamed from the tensors to a temporary file that then replaces ``path``, so
    an interrupted save leaves any earlier file intact. Float64 nets write
    ``double_data``, as Caffe's double nets do.
    """
    header = wire.length_prefix(1, len(net.name.encode("utf-8"))) + net.name.encode(
        "utf-8"
    )
    layers = []
    for layer_param, layer in zip(_layer_params(net), net._layers):
        layers.append(
            (layer_param, [_tensor_payload(t, write_diff) for t in layer.blobs])
        )
    write_model_file(path, header, layers)


def write_model_file(
    path: str | os.PathLike,
    header: bytes,
    layers: Iterable[
        tuple[caffe_pb2.LayerParameter | caffe_pb2.V1LayerParameter, list[_Payload]]
    ],
) -> None:
    """Write a NetParameter: ``header`` fields, then each layer with its blobs.

    A LayerParameter goes to field ``layer`` with its blobs in field 7; a
    V1LayerParameter goes to ``layers`` with blobs in field 6. Each layer's own
    ``blobs`` must be empty: its blobs come from the payloads, inserted where
    protobuf's field order puts them.
    """
    path = os.fspath(path)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(header)
            for layer_param, payloads in layers:
                _write_layer(handle, layer_param, payloads)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _write_layer(handle: BinaryIO, layer_param, payloads: list[_Payload]) -> None:
    if isinstance(layer_param, caffe_pb2.V1LayerParameter):
        outer_number, blobs_number = _NET_LAYERS, _V1_FIELDS[2]
    else:
        outer_number, blobs_number = _NET_LAYER, _LAYER_FIELDS[2]
    fields = layer_param.SerializeToString()
    split = _first_field_after(fields, blobs_number)
    prefixes = [wire.length_prefix(blobs_number, payload.size) for payload in payloads]
    length = len(fields) + sum(
        len(p) + payload.size for p, payload in zip(prefixes, payloads)
    )
    handle.write(wire.length_prefix(outer_number, length))
    handle.write(fields[:split])
    for prefix, payload in zip(prefixes, payloads):
        handle.write(prefix)
        payload.write(handle)
    handle.write(fields[split:])


def _first_field_after(fields: bytes, number: int) -> int:
    """Return the offset of the first field numbered above ``number``.

    Protobuf serializes known fields in field-number order, so the blobs belong
    there.
    """
    for item in wire.iter_fields(fields, 0, len(fields)):
        if item.number > number:
            return item.start
    return len(fields)


def _layer_params(net: Net) -> list[caffe_pb2.LayerParameter]:
    params = []
    for layer in net._layers:
        layer_param = caffe_pb2.LayerParameter()
        layer_param.CopyFrom(layer.param)
        layer_param.ClearField("blobs")
        if not layer_param.HasField("phase"):
            layer_param.phase = net.phase
        params.append(layer_param)
    return params


def _tensor_arrays(
    tensor: torch.Tensor, write_diff: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    data = tensor.detach().to("cpu", dtype).contiguous().numpy()
    diff = None
    if write_diff:
        grad = tensor.grad
        diff = (
            grad.detach().to("cpu", dtype).contiguous().numpy()
            if grad is not None
            else np.zeros_like(data)
        )
    return data, diff


def _tensor_payload(tensor: torch.Tensor, write_diff: bool) -> _Payload:
    shape = tuple(tensor.shape)
    size = wire.blob_size(shape, tensor.dtype == torch.float64, write_diff)

    def write(handle: BinaryIO) -> None:
        data, diff = _tensor_arrays(tensor, write_diff)
        wire.write_blob(handle, data, diff)

    return _Payload(size, write)


def raw_payload(source: BinaryIO, start: int, end: int) -> _Payload:
    """Return a payload that copies bytes ``start..end`` of ``source`` unchanged."""

    def write(handle: BinaryIO) -> None:
        source.seek(start)
        remaining = end - start
        while remaining:
            chunk = source.read(min(remaining, wire.CHUNK_BYTES))
            if not chunk:
                raise ModelFileError(
                    f"{getattr(source, 'name', '<file>')}: ended early"
                )
            handle.write(chunk)
            remaining -= len(chunk)

    return _Payload(end - start, write)
