"""The one protobuf wire-format reader of the package (no ``protobuf`` or ``onnx`` import).

It reads just enough of the wire format to walk a message: field number, wire type and value of each field.
:mod:`unideploy.core.onnx_file` uses it to read an ONNX model's metadata and its external-data references.

Example:
    >>> list(iter_fields(b"\\x08\\x96\\x01\\x12\\x02hi"))
    [(1, 0, 150), (2, 2, b'hi')]
"""

from __future__ import annotations

from typing import Iterator, Union

__all__ = ["read_varint", "iter_fields", "Buffer"]

#: what :func:`iter_fields` reads; slices of a memoryview stay views (nothing is copied)
Buffer = Union[bytes, bytearray, memoryview]


def read_varint(buf: Buffer, pos: int) -> tuple[int, int]:
    """The varint at ``buf[pos:]`` and the position after it.

    Raises:
        ValueError: the varint runs past the end of ``buf`` or is longer than 64 bits.
    """
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def iter_fields(buf: Buffer) -> Iterator[tuple[int, int, int | Buffer]]:
    """Yield ``(field number, wire type, value)`` of each field of one message.

    Values: an int for wire type 0 (varint), a slice of ``buf`` for types 1 (8 bytes), 2 (length-delimited) and
    5 (4 bytes).

    Raises:
        ValueError: a field runs past the end of ``buf``, or a wire type is unknown (3 and 4, groups, are not read).
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = read_varint(buf, pos)
            yield num, wt, val
            continue
        if wt == 2:
            size, pos = read_varint(buf, pos)
        elif wt == 1:
            size = 8
        elif wt == 5:
            size = 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if pos + size > end:
            raise ValueError("truncated field")
        yield num, wt, buf[pos : pos + size]
        pos += size
