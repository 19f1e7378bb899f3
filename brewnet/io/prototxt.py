"""Reading and writing protobuf text files (prototxt) and binary protobuf files."""

from __future__ import annotations

import os
import re
from typing import TypeVar

from google.protobuf import message, text_format

from brewnet.errors import ModelFileError, PrototxtError

MessageT = TypeVar("MessageT", bound=message.Message)


def parse_text(text: str, proto: MessageT, source: str = "<string>") -> MessageT:
    """Parse protobuf text ``text`` into ``proto`` and return it.

    Raises:
        PrototxtError: a syntax error, unknown field or unknown enum value; the
            message starts with ``source:line:column``.
    """
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as error:
        line, column = error.GetLine(), error.GetColumn()
        detail = str(error)
        # The library prefixes its message with "line:column : "; keep the reason.
        detail = re.sub(r"^\d+:\d+\s*:\s*", "", detail)
        where = f"{source}:{line}:{column}" if line else source
        raise PrototxtError(f"{where}: {detail}") from None
    return proto


def read_text(path: str | os.PathLike, proto: MessageT) -> MessageT:
    """Parse the prototxt file at ``path`` into ``proto`` and return it.

    Raises:
        FileNotFoundError: the file does not exist.
        PrototxtError: the file is not valid text format for ``proto``.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"prototxt file not found: {path}") from None
    except UnicodeDecodeError as error:
        raise PrototxtError(
            f"{path}: not a text file (byte {error.start} is not UTF-8); "
            f"binary files such as .caffemodel need the binary reader"
        ) from None
    return parse_text(text, proto, source=path)


# A whole-number float field as Python's text format prints it ("lr_mult: 1.0").
_WHOLE_FLOAT_LINE = re.compile(r"^(\s*\w+: -?\d+)\.0$", re.MULTILINE)


def format_text(proto: message.Message) -> str:
    """Return ``proto`` as protobuf text, with whole-number floats written as
    Caffe's C++ writer does ("lr_mult: 1", not "lr_mult: 1.0")."""
    return _WHOLE_FLOAT_LINE.sub(r"\1", text_format.MessageToString(proto))


def write_text(path: str | os.PathLike, proto: message.Message) -> None:
    """Write ``proto`` as protobuf text to ``path``, atomically."""
    write_bytes(path, format_text(proto).encode("utf-8"))


def read_binary(path: str | os.PathLike, proto: MessageT) -> MessageT:
    """Parse the binary protobuf file at ``path`` into ``proto`` and return it.

    Raises:
        FileNotFoundError: the file does not exist.
        ModelFileError: the bytes are not a valid ``proto`` message.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    try:
        proto.ParseFromString(data)
    except message.DecodeError as error:
        raise ModelFileError(
            f"{path}: not a valid binary {proto.DESCRIPTOR.name} ({error}); the file "
            f"may be truncated or of another kind"
        ) from None
    return proto


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    An interrupted write leaves any previous file at ``path`` intact.
    """
    path = os.fspath(path)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def find_text_position(text: str, field: str, value: str) -> tuple[int, int] | None:
    """Return the 1-based (line, column) of ``field: "value"`` in ``text``, if any."""
    pattern = re.compile(rf'\b{re.escape(field)}\s*:\s*["\']{re.escape(value)}["\']')
    found = pattern.search(text)
    if found is None:
        return None
    line = text.count("\n", 0, found.start()) + 1
    column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
    return line, column
