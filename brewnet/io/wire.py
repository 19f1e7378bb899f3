"""Protobuf wire format, read and written by hand for large blob fields.

Model files store their weights as packed ``float`` (or ``double``) fields of
BlobProto messages. Parsing a whole NetParameter with the protobuf library keeps the
file's bytes and a second copy of every value in memory, and turning a repeated field
into a NumPy array costs a Python float per value. This module walks the wire format
instead: it records where each packed field lies in the file, so the values can be
read straight into the destination tensor, and it writes blobs from array memory.

Encoding rules used here (protobuf's documented wire format): a field is a varint key
``number << 3 | wire_type`` followed by a varint (type 0), 8 bytes (type 1), a varint
length and that many bytes (type 2) or 4 bytes (type 5). Repeated numeric fields may
be packed (one type-2 field) or not (one field per value); readers accept both.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

import numpy as np
from google.protobuf import descriptor as _descriptor

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5

# How many bytes one read or write moves when a conversion buffer is needed.
CHUNK_BYTES = 1 << 24

FLOAT32 = np.dtype("<f4")
FLOAT64 = np.dtype("<f8")


class WireError(Exception):
    """The bytes are not valid wire format for the expected message.

    ``truncated`` is True when a field runs past the end of the outermost buffer,
    which is what a file cut short looks like.
    """

    def __init__(self, message: str, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


class Field(NamedTuple):
    """One field of a message: its key and where its bytes lie in the buffer."""

    number: int
    wire_type: int
    start: int  # first byte of the key
    value_start: int  # first byte of the payload (after the length, for type 2)
    end: int  # one past the last byte of the field
    value: int  # the decoded varint for type 0, else 0


# ============================================================================ reading
def read_varint(buffer, position: int, end: int, outer_end: int) -> tuple[int, int]:
    """Decode the varint at ``position``; return (value, position after it)."""
    result = 0
    shift = 0
    while True:
        if position >= end:
            raise WireError(
                "a varint runs past the end of its message", truncated=end >= outer_end
            )
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift >= 70:
            raise WireError("a varint is longer than 10 bytes")


def iter_fields(
    buffer, start: int, end: int, outer_end: int | None = None
) -> Iterator[Field]:
    """Yield the fields of the message stored in ``buffer[start:end]``.

    ``outer_end`` is the end of the whole buffer; a field that runs past it marks the
    buffer as truncated rather than corrupt.
    """
    if outer_end is None:
        outer_end = end
    position = start
    while position < end:
        field_start = position
        key, position = read_varint(buffer, position, end, outer_end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {field_start}")
        value = 0
        if wire_type == VARINT:
            value, position = read_varint(buffer, position, end, outer_end)
            value_start = position
            field_end = position
        elif wire_type == LENGTH_DELIMITED:
            length, value_start = read_varint(buffer, position, end, outer_end)
            field_end = value_start + length
        elif wire_type == FIXED64:
            value_start, field_end = position, position + 8
        elif wire_type == FIXED32:
            value_start, field_end = position, position + 4
        else:
            raise WireError(
                f"field {number} at byte {field_start} has wire type {wire_type}"
            )
        if field_end > end:
            raise WireError(
                f"field {number} at byte {field_start} needs {field_end - field_start} "
                f"bytes but only {end - field_start} remain",
                truncated=end >= outer_end,
            )
        position = field_end
        yield Field(number, wire_type, field_start, value_start, field_end, value)


def expected_wire_types(
    descriptor: _descriptor.Descriptor,
) -> dict[int, tuple[int, ...]]:
    """Return, for each field number of ``descriptor``, the wire types it may use."""
    by_type = {
        _descriptor.FieldDescriptor.TYPE_DOUBLE: FIXED64,
        _descriptor.FieldDescriptor.TYPE_FIXED64: FIXED64,
        _descriptor.FieldDescriptor.TYPE_SFIXED64: FIXED64,
        _descriptor.FieldDescriptor.TYPE_FLOAT: FIXED32,
        _descriptor.FieldDescriptor.TYPE_FIXED32: FIXED32,
        _descriptor.FieldDescriptor.TYPE_SFIXED32: FIXED32,
        _descriptor.FieldDescriptor.TYPE_STRING: LENGTH_DELIMITED,
        _descriptor.FieldDescriptor.TYPE_BYTES: LENGTH_DELIMITED,
        _descriptor.FieldDescriptor.TYPE_MESSAGE: LENGTH_DELIMITED,
    }
    table: dict[int, tuple[int, ...]] = {}
    for item in descriptor.fields:
        wire_type = by_type.get(item.type, VARINT)
        if item.is_repeated and wire_type != LENGTH_DELIMITED:
            table[item.number] = (wire_type, LENGTH_DELIMITED)
        else:
            table[item.number] = (wire_type,)
    return table


def check_wire_type(
    item: Field, table: dict[int, tuple[int, ...]], message: str
) -> None:
    """Raise WireError when a known field of ``message`` uses a wrong wire type."""
    allowed = table.get(item.number)
    if allowed is not None and item.wire_type not in allowed:
        raise WireError(
            f"field {item.number} of {message} at byte {item.start} has wire type "
            f"{item.wire_type}, not {allowed[0]}"
        )


def signed64(value: int) -> int:
    """Return a varint-decoded int64 or int32 value with its sign restored."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


# ============================================================================ blobs
@dataclass
class Values:
    """Positions of the values of one repeated float or double field in a buffer."""

    dtype: np.dtype
    segments: list[tuple[int, int]] = field(default_factory=list)  # (offset, count)

    @property
    def count(self) -> int:
        return sum(count for _, count in self.segments)

    def add(self, offset: int, count: int) -> None:
        if self.segments:
            last_offset, last_count = self.segments[-1]
            if last_offset + last_count * self.dtype.itemsize == offset:
                self.segments[-1] = (last_offset, last_count + count)
                return
        self.segments.append((offset, count))


@dataclass
class BlobRecord:
    """A BlobProto located in a buffer: its shape fields and value positions."""

    shape: tuple[int, ...] | None = None  # dims of the ``shape`` field, if present
    legacy: tuple[int, int, int, int] | None = None  # num, channels, height, width
    data: Values = field(default_factory=lambda: Values(FLOAT32))
    diff: Values = field(default_factory=lambda: Values(FLOAT32))
    double_data: Values = field(default_factory=lambda: Values(FLOAT64))
    double_diff: Values = field(default_factory=lambda: Values(FLOAT64))

    def shape_tuple(self) -> tuple[int, ...]:
        """Return the shape Caffe gives this blob: the 4 legacy fields win if set."""
        if self.legacy is not None:
            return self.legacy
        return self.shape or ()

    def data_values(self) -> Values:
        """Return the data field Caffe reads: double_data when it has values."""
        return self.double_data if self.double_data.count else self.data

    def diff_values(self) -> Values:
        """Return the diff field Caffe reads: double_diff when it has values."""
        return self.double_diff if self.double_diff.count else self.diff


_BLOB_LEGACY_FIELDS = {1: 0, 2: 1, 3: 2, 4: 3}  # num, channels, height, width
_BLOB_VALUE_FIELDS = {5: "data", 6: "diff", 8: "double_data", 9: "double_diff"}


def scan_blob(buffer, start: int, end: int, outer_end: int, table) -> BlobRecord:
    """Locate the fields of the BlobProto in ``buffer[start:end]``.

    ``table`` is :func:`expected_wire_types` of BlobProto.
    """
    record = BlobRecord()
    legacy: list[int | None] = [None, None, None, None]
    for item in iter_fields(buffer, start, end, outer_end):
        check_wire_type(item, table, "BlobProto")
        if item.number in _BLOB_VALUE_FIELDS:
            _add_values(getattr(record, _BLOB_VALUE_FIELDS[item.number]), item)
        elif item.number in _BLOB_LEGACY_FIELDS:
            legacy[_BLOB_LEGACY_FIELDS[item.number]] = signed64(item.value)
        elif item.number == 7:
            record.shape = _scan_shape(buffer, item, outer_end)
    if any(dim is not None for dim in legacy):
        record.legacy = tuple(dim or 0 for dim in legacy)  # type: ignore[assignment]
    return record


def _add_values(values: Values, item: Field) -> None:
    size = values.dtype.itemsize
    if item.wire_type == LENGTH_DELIMITED:
        length = item.end - item.value_start
        if length % size:
            raise WireError(
                f"a packed field at byte {item.start} has {length} bytes, which is "
                f"not a multiple of {size}"
            )
        if length:
            values.add(item.value_start, length // size)
    else:
        values.add(item.value_start, 1)


def _scan_shape(buffer, item: Field, outer_end: int) -> tuple[int, ...]:
    dims: list[int] = []
    for dim_field in iter_fields(buffer, item.value_start, item.end, outer_end):
        if dim_field.number != 1:
            continue
        if dim_field.wire_type == VARINT:
            dims.append(signed64(dim_field.value))
        elif dim_field.wire_type == LENGTH_DELIMITED:
            position = dim_field.value_start
            while position < dim_field.end:
                value, position = read_varint(
                    buffer, position, dim_field.end, outer_end
                )
                dims.append(signed64(value))
        else:
            raise WireError(f"BlobShape dim at byte {dim_field.start} is not a varint")
    return tuple(dims)


def gather_values(buffer, values: Values) -> np.ndarray:
    """Return the values of ``values`` as a new 1-D array (float32 or float64)."""
    result = np.empty(values.count, dtype=values.dtype.newbyteorder("="))
    position = 0
    for offset, count in values.segments:
        chunk = np.frombuffer(buffer, dtype=values.dtype, count=count, offset=offset)
        result[position : position + count] = chunk
        position += count
    return result


def read_values_into(handle: BinaryIO, values: Values, destination: np.ndarray) -> None:
    """Read ``values`` from the open file ``handle`` into the 1-D ``destination``.

    The bytes go straight into ``destination`` when it has the file's dtype and byte
    order; otherwise they pass through a buffer of at most :data:`CHUNK_BYTES`.
    """
    direct = (
        destination.dtype == values.dtype
        and destination.flags.c_contiguous
        and destination.flags.writeable
    )
    position = 0
    for offset, count in values.segments:
        handle.seek(offset)
        if direct:
            target = memoryview(destination[position : position + count]).cast("B")
            _read_exactly(handle, target)
        else:
            _read_converted(
                handle, values.dtype, destination[position : position + count]
            )
        position += count


def _read_converted(handle: BinaryIO, dtype: np.dtype, destination: np.ndarray) -> None:
    step = max(1, CHUNK_BYTES // dtype.itemsize)
    buffer = np.empty(min(step, destination.size), dtype=dtype)
    for begin in range(0, destination.size, step):
        part = buffer[: min(step, destination.size - begin)]
        _read_exactly(handle, memoryview(part).cast("B"))
        destination[begin : begin + part.size] = part


def _read_exactly(handle: BinaryIO, target: memoryview) -> None:
    filled = 0
    while filled < len(target):
        got = handle.readinto(target[filled:])
        if not got:
            raise WireError("the file ended while reading blob values", truncated=True)
        filled += got


# ============================================================================ writing
def encode_varint(value: int) -> bytes:
    """Return the varint encoding of a non-negative ``value`` (or an int64)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_key(number: int, wire_type: int) -> bytes:
    """Return the key of field ``number`` with ``wire_type``."""
    return encode_varint(number << 3 | wire_type)


def length_prefix(number: int, length: int) -> bytes:
    """Return the key and length of a length-delimited field of ``length`` bytes."""
    return encode_key(number, LENGTH_DELIMITED) + encode_varint(length)


def encode_shape_field(shape: Sequence[int]) -> bytes:
    """Return BlobProto field 7 (``shape``) for ``shape``; empty for a 0-axis blob.

    Caffe's Blob::ToProto sets the field only through its ``dim`` entries, so a
    blob without axes is written without a ``shape`` field.
    """
    if not shape:
        return b""
    dims = b"".join(encode_varint(int(d)) for d in shape)
    inner = length_prefix(1, len(dims)) + dims
    return length_prefix(7, len(inner)) + inner


def _values_prefix(number: int, count: int, itemsize: int) -> bytes:
    # Protobuf omits an empty packed field, so an empty blob writes no prefix.
    return length_prefix(number, count * itemsize) if count else b""


def blob_size(shape: Sequence[int], double: bool, with_diff: bool) -> int:
    """Return the encoded size of a BlobProto written by :func:`write_blob`."""
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    itemsize = 8 if double else 4
    data_number = 8 if double else 5
    size = len(_values_prefix(data_number, count, itemsize)) + count * itemsize
    if with_diff:
        size += len(_values_prefix(data_number + 1, count, itemsize)) + count * itemsize
    return size + len(encode_shape_field(shape))


def write_blob(handle: BinaryIO, data: np.ndarray, diff: np.ndarray | None) -> None:
    """Write a BlobProto's fields (not its own key and length) from arrays.

    The layout is Caffe's Blob::ToProto: ``data`` (or ``double_data`` for float64
    arrays), then ``diff``, then ``shape``, which is also protobuf's field order.
    """
    double = data.dtype == np.float64
    dtype = FLOAT64 if double else FLOAT32
    data_number = 8 if double else 5
    for number, values in ((data_number, data), (data_number + 1, diff)):
        if values is None:
            continue
        flat = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
        handle.write(_values_prefix(number, flat.size, dtype.itemsize))
        if flat.size:
            handle.write(memoryview(flat).cast("B"))
    handle.write(encode_shape_field(data.shape))


def native_little_endian() -> bool:
    """Return whether this machine stores numbers little-endian, as the files do."""
    return sys.byteorder == "little"
