"""Checks on untrusted files before a decoder or a runtime reads them.

Checks of image headers and SHA-256 pins, all pure Python (no ``onnx``, no runtime import):

* **Image headers** (:func:`sniff_image`): the format is recognised from the magic bytes and the width and
  height are read from the header, so :func:`unideploy.core.sources.decode_image` refuses formats outside an
  allow-list and images above a pixel limit before OpenCV allocates anything (decompression bombs).
* **SHA-256 pinning** (:func:`verify_sha256`): a model file (and, by name, the files beside it: an IR's
  ``.bin``, external data) must have the digest the user pinned (``--model-sha256`` / ``sha256=``).

The check of an ONNX model's external data lives with the one reader of ONNX files, :mod:`unideploy.core.onnx_file`.

Example:
    >>> sniff_image(b"\\x89PNG\\r\\n\\x1a\\n\\x00\\x00\\x00\\rIHDR\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x80\\x08\\x02")
    ImageHeader(format='png', width=256, height=128, bits=8)
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from unideploy.core.errors import InputError, ModelError

# ------------------------------------------------------------------------------------------ images

#: image formats :func:`unideploy.core.sources.decode_image` hands to OpenCV; anything else is refused unread
IMAGE_FORMATS = ("bmp", "jpeg", "pfm", "png", "tiff", "webp")

#: recognised but not decoded (named in the error so the user knows what the file really is)
_OTHER_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"%PDF", 0, "PDF"),
    (b"PK\x03\x04", 0, "ZIP"),
    (b"\x1a\x45\xdf\xa3", 0, "Matroska/WebM video"),
    (b"8BPS", 0, "Photoshop"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"#?RADIANCE", 0, "Radiance HDR"),
    (b"#?RGBE", 0, "Radiance HDR"),
    (b"\x76\x2f\x31\x01", 0, "OpenEXR"),
    (b"\x59\xa6\x6a\x95", 0, "Sun raster"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"\x1f\x8b", 0, "gzip"),
    (b"\x7fELF", 0, "ELF executable"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftyp", 4, "MP4/QuickTime video"),
    (b"AVI ", 8, "AVI video"),
    (b"WAVE", 8, "WAV audio"),
)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header declares: format name, width, height (pixels) and bits per sample."""

    format: str
    width: int
    height: int
    bits: int = 8

    @property
    def pixels(self) -> int:
        return self.width * self.height


class _Unreadable(Exception):
    """Internal: a header too short or malformed to give a size."""


def describe_data(head: bytes) -> str:
    """A short name for data that is not an allowed image: "GIF", "PDF", "text", or its first bytes in hex.

    Example:
        >>> describe_data(b"GIF89a....")
        'GIF data'
    """
    for magic, off, name in _OTHER_MAGIC:
        if head[off : off + len(magic)] == magic:
            return f"{name} data"
    if re.fullmatch(rb"P[1-7]\s", head[:3]):
        return "PNM (netpbm) data"
    sample = head[:512]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "text"
    return f"data of an unknown format (first bytes {head[:8].hex(' ')})"


def _u16(b: bytes | memoryview, off: int, big: bool) -> int:
    if off + 2 > len(b):
        raise _Unreadable
    return struct.unpack_from(">H" if big else "<H", b, off)[0]


def _u32(b: bytes | memoryview, off: int, big: bool) -> int:
    if off + 4 > len(b):
        raise _Unreadable
    return struct.unpack_from(">I" if big else "<I", b, off)[0]


def _jpeg_size(b: memoryview) -> tuple[int, int, int]:
    pos = 2
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    while pos < len(b):
        if b[pos] != 0xFF:
            raise _Unreadable
        while pos < len(b) and b[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(b):
            raise _Unreadable
        marker = b[pos]
        pos += 1
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            raise _Unreadable
        length = _u16(b, pos, True)
        if marker in sof:
            if pos + 7 > len(b):
                raise _Unreadable
            return _u16(b, pos + 5, True), _u16(b, pos + 3, True), b[pos + 2]  # width, height, precision
        if length < 2:
            raise _Unreadable
        pos += length
    raise _Unreadable


def _tiff_size(b: memoryview) -> tuple[int, int, int]:
    big = bytes(b[:2]) == b"MM"
    bigtiff = _u16(b, 2, big) == 43
    if bigtiff:
        ifd = struct.unpack_from(">Q" if big else "<Q", b, 8)[0] if len(b) >= 16 else None
        if ifd is None or ifd + 8 > len(b):
            raise _Unreadable
        count = struct.unpack_from(">Q" if big else "<Q", b, ifd)[0]
        start, size = ifd + 8, 20
    else:
        ifd = _u32(b, 4, big)
        count = _u16(b, ifd, big)
        start, size = ifd + 2, 12
    if count > 4096:
        raise _Unreadable
    tags: dict[int, int] = {}
    for i in range(count):
        e = start + i * size
        tag, typ = _u16(b, e, big), _u16(b, e + 2, big)
        if tag not in (256, 257, 258):
            continue
        voff = e + (12 if bigtiff else 8)
        n = struct.unpack_from(">Q" if big else "<Q", b, e + 4)[0] if bigtiff else _u32(b, e + 4, big)
        if typ == 3:  # SHORT
            if n * 2 > (8 if bigtiff else 4):  # values stored elsewhere (BitsPerSample of RGB)
                voff = struct.unpack_from(">Q" if big else "<Q", b, voff)[0] if bigtiff else _u32(b, voff, big)
            tags[tag] = _u16(b, voff, big)
        elif typ == 4:  # LONG
            if n * 4 > (8 if bigtiff else 4):
                voff = struct.unpack_from(">Q" if big else "<Q", b, voff)[0] if bigtiff else _u32(b, voff, big)
            tags[tag] = _u32(b, voff, big)
        elif typ == 16 and bigtiff:  # LONG8
            tags[tag] = struct.unpack_from(">Q" if big else "<Q", b, voff)[0]
    if 256 not in tags or 257 not in tags:
        raise _Unreadable
    return tags[256], tags[257], tags.get(258, 1)


def _webp_size(b: bytes) -> tuple[int, int, int]:
    chunk = b[12:16]
    if chunk == b"VP8 ":
        if b[23:26] != b"\x9d\x01\x2a":
            raise _Unreadable
        return _u16(b, 26, False) & 0x3FFF, _u16(b, 28, False) & 0x3FFF, 8
    if chunk == b"VP8L":
        if len(b) < 25 or b[20] != 0x2F:
            raise _Unreadable
        v = _u32(b, 21, False)
        return (v & 0x3FFF) + 1, ((v >> 14) & 0x3FFF) + 1, 8
    if chunk == b"VP8X":
        if len(b) < 30:
            raise _Unreadable
        return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1, 8
    raise _Unreadable


def _pfm_size(b: bytes) -> tuple[int, int, int]:
    tokens = b[:128].split()
    if len(tokens) < 3:
        raise _Unreadable
    try:
        return int(tokens[1]), int(tokens[2]), 32
    except ValueError:
        raise _Unreadable from None


def image_format(head: bytes) -> str | None:
    """The allow-listed format ``head`` starts with ("jpeg", "png", ...), or None.

    Example:
        >>> image_format(b"\\xff\\xd8\\xff\\xe0"), image_format(b"GIF89a")
        ('jpeg', None)
    """
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:2] == b"BM" and len(head) >= 18:
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:3] in (b"PF\n", b"Pf\n", b"PF\r", b"Pf\r", b"PF ", b"Pf "):
        return "pfm"
    return None


def sniff_image(data: bytes | memoryview, name: str = "<bytes>") -> ImageHeader:
    """Format and size of an encoded image, from its header alone (nothing is decoded).

    Raises:
        ImageDecodeError: the data is not one of :data:`IMAGE_FORMATS`, or its header is cut short or malformed.

    Example:
        >>> sniff_image(b"BM" + bytes(12) + (40).to_bytes(4, "little") + (64).to_bytes(4, "little")
        ...             + (-32).to_bytes(4, "little", signed=True)).pixels
        2048
    """
    from unideploy.core.errors import ImageDecodeError

    mv = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    head = bytes(mv[:65536])
    fmt = image_format(head)
    if fmt is None:
        raise ImageDecodeError(
            f"{name}: expected an image in a format unideploy decodes ({', '.join(IMAGE_FORMATS)}), got {describe_data(head)}"
        )
    try:
        if fmt == "jpeg":
            w, h, bits = _jpeg_size(mv)  # walks segment lengths: large EXIF / ICC blocks are skipped, not read
        elif fmt == "png":
            if head[12:16] != b"IHDR":
                raise _Unreadable
            w, h, bits = _u32(head, 16, True), _u32(head, 20, True), head[24] if len(head) > 24 else 8
        elif fmt == "bmp":
            dib = _u32(head, 14, False)
            if dib == 12:
                w, h = _u16(head, 18, False), _u16(head, 20, False)
            else:
                w, h = struct.unpack_from("<ii", head, 18) if len(head) >= 26 else (None, None)
                if w is None:
                    raise _Unreadable
                w, h = abs(w), abs(h)
            bits = 8
        elif fmt == "webp":
            w, h, bits = _webp_size(head)
        elif fmt == "tiff":
            w, h, bits = _tiff_size(mv)  # the first IFD may sit anywhere, often after the pixel data
        else:
            w, h, bits = _pfm_size(head)
    except (_Unreadable, struct.error, IndexError):
        raise ImageDecodeError(
            f"{name}: expected a complete {fmt.upper()} header, got a truncated or malformed one"
        ) from None
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{name}: {fmt.upper()} header declares an empty image ({w}x{h})")
    return ImageHeader(fmt, int(w), int(h), int(bits))


# ---------------------------------------------------------------------------------------- SHA-256

_HEX = re.compile(r"(?:sha256[:=])?([0-9a-fA-F]{64})")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks.

    Example:
        >>> file_sha256("model.onnx")  # doctest: +SKIP
        '3b0c…'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parse_sha256_pins(pins: str | Mapping[str, str] | list[str] | tuple[str, ...]) -> dict[str | None, str]:
    """Normalise pins: "HEX" (the model file), "NAME=HEX" (a file beside it), a list of those, or a mapping.

    Returns {None or file name: lower-case hex}.

    Raises:
        InputError: a digest is not 64 hex digits.

    Example:
        >>> parse_sha256_pins(["a" * 64, "model.bin=" + "B" * 64]) == {None: "a" * 64, "model.bin": "b" * 64}
        True
    """
    items: list[tuple[str | None, str]] = []
    if isinstance(pins, Mapping):
        items = [(k or None, v) for k, v in pins.items()]
    else:
        for s in [pins] if isinstance(pins, str) else list(pins):
            for part in str(s).split(","):
                part = part.strip()
                if not part:
                    continue
                name, sep, digest = (
                    part.rpartition("=") if "=" in part and not part.lower().startswith("sha256=") else ("", "", part)
                )
                items.append((name or None, digest))
    out: dict[str | None, str] = {}
    for name, digest in items:
        m = _HEX.fullmatch(str(digest).strip())
        if not m:
            raise InputError(f"--model-sha256 expects 64 hexadecimal digits (optionally NAME=DIGEST), got {digest!r}")
        out[name] = m.group(1).lower()
    return out


def verify_sha256(model_path: str | os.PathLike, pins: str | Mapping[str, str] | list[str] | tuple[str, ...]) -> None:
    """Check a model file (and named files beside it) against pinned SHA-256 digests.

    Args:
        model_path: the model file (.onnx, .xml, .pt, an engine ...).
        pins: "HEX" for the model file itself; "NAME=HEX" for a file in the model's folder (an IR's .bin,
            external data); a comma-separated string, a list or a {name: hex} mapping of those.

    Raises:
        InputError: a malformed digest, or a pinned name outside the model's folder.
        ModelError: a pinned file is missing or its digest differs.

    Example:
        >>> verify_sha256("model.onnx", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")  # doctest: +SKIP
    """
    p = Path(model_path)
    for name, want in parse_sha256_pins(pins).items():
        if name is None:
            target = p
        else:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise InputError(f"--model-sha256 {name}=…: expected a file name in the model's folder, got {name!r}")
            target = p.parent / name
        if not target.is_file():
            raise ModelError(f"{target}: pinned with --model-sha256 but it does not exist")
        got = file_sha256(target)
        if got != want:
            raise ModelError(
                f"{target.name}: SHA-256 is {got}, expected {want} (--model-sha256); "
                "the file is not the one that was pinned"
            )
