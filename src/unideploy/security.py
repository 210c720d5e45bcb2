"""Checks on untrusted files before a decoder or a runtime reads them.

Three kinds of check, all pure Python (no ``onnx``, no runtime import):

* **Image headers** (:func:`sniff_image`): the format is recognised from the magic bytes and the width and
  height are read from the header, so :func:`unideploy.sources.decode_image` refuses formats outside an
  allow-list and images above a pixel limit before OpenCV allocates anything (decompression bombs).
* **ONNX external data** (:func:`check_onnx_external_data`): every ``external_data`` ``location`` of every
  tensor in the model (graph initializers, sparse initializers, tensors in node attributes, sub-graphs,
  functions, training graphs) must name a regular file inside the model's folder. Absolute paths, ``..``
  components, symlinks that resolve outside the folder and ONNX Runtime's in-memory marker
  (``*/_ORT_MEM_ADDR_/*``) are refused before any runtime opens the model (CVE-2024-27318 class).
* **SHA-256 pinning** (:func:`verify_sha256`): a model file (and, by name, the files beside it: an IR's
  ``.bin``, external data) must have the digest the user pinned (``--model-sha256`` / ``sha256=``).

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
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator, Mapping

from .errors import InputError, ModelError

# ------------------------------------------------------------------------------------------ images

#: image formats :func:`unideploy.sources.decode_image` hands to OpenCV; anything else is refused unread
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
    from .errors import ImageDecodeError

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


# ----------------------------------------------------------------------------------- ONNX external data


class UnsafeModelError(ModelError):
    """A model file that would make the runtime read or run something outside what it should."""


@dataclass(frozen=True)
class ExternalRef:
    """One tensor's external-data reference in an ONNX model (offset/length None when not given)."""

    tensor: str
    location: str
    offset: int | None = None
    length: int | None = None


#: ONNX Runtime reads "external data" at a raw memory address when it sees this location
ORT_MEM_ADDR = "*/_ORT_MEM_ADDR_/*"
_MAX_DEPTH = 64


def _pb_fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    pos, end = 0, len(buf)

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ValueError("truncated or overlong varint")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while pos < end:
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            yield num, wt, varint()
        elif wt == 1:
            pos += 8
        elif wt == 2:
            ln = varint()
            if pos + ln > end:
                raise ValueError("truncated field")
            yield num, wt, buf[pos : pos + ln]
            pos += ln
        elif wt == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
    if pos > end:
        raise ValueError("truncated field")


# message kind -> {field number: message kind of that (length-delimited) field}
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _walk(buf: memoryview, kind: str, depth: int, out: list[ExternalRef]) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"graphs nested deeper than {_MAX_DEPTH} levels")
    if kind == "tensor":
        name, entries = "", []
        for num, wt, val in _pb_fields(buf):
            if num == 8 and wt == 2:
                name = bytes(val).decode("utf-8", "replace")  # type: ignore[arg-type]
            elif num == 13 and wt == 2:
                kv = {n: bytes(v) for n, w, v in _pb_fields(val) if w == 2}  # type: ignore[arg-type]
                entries.append((kv.get(1, b"").decode("utf-8", "replace"), kv.get(2, b"")))
        if entries:
            d = dict(entries)
            if "location" not in d:
                raise ValueError(f"tensor {name!r} has external_data without a location")
            try:
                loc = d["location"].decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"tensor {name!r}: external data location is not valid UTF-8") from None

            def num_or_none(key: str) -> int | None:
                v = d.get(key)
                if v is None:
                    return None
                try:
                    return int(v)
                except ValueError:
                    raise ValueError(f"tensor {name!r}: external data {key} {v!r} is not an integer") from None

            out.append(ExternalRef(name, loc, num_or_none("offset"), num_or_none("length")))
        return
    sub = _SCHEMA[kind]
    for num, wt, val in _pb_fields(buf):
        if wt == 2 and num in sub:
            _walk(val, sub[num], depth + 1, out)  # type: ignore[arg-type]


def onnx_external_refs(path: str | os.PathLike) -> list[ExternalRef]:
    """Every external-data reference in an ONNX file, read without the ``onnx`` package.

    Raises:
        ModelError: the file cannot be read or is not a parsable ONNX protobuf.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelError(f"{p}: expected a readable ONNX file, got {type(e).__name__}: {e.strerror or e}") from None
    if b"location" not in data:  # no external_data entry can exist without its "location" key
        return []
    out: list[ExternalRef] = []
    try:
        _walk(memoryview(data), "model", 0, out)
    except (ValueError, IndexError) as e:
        raise ModelError(
            f"{p}: expected an ONNX model (protobuf ModelProto), but it could not be parsed ({e})"
        ) from None
    return out


def _inside(child: str, roots: list[str]) -> bool:
    return any(child == r or child.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def check_onnx_external_data(path: str | os.PathLike) -> list[ExternalRef]:
    """Refuse an ONNX model whose external data would be read from outside its own folder.

    A location must be a relative path without ``..`` components that names an existing regular file
    in the model's folder (or a sub-folder), after resolving symlinks; ``offset + length`` must lie within
    that file. The folder is the one the model was opened from; when the model file itself is a symlink
    (a Hugging Face cache snapshot), the folder its target lives in is accepted too.

    Returns:
        The references found (empty for a self-contained model).

    Raises:
        UnsafeModelError: a location is absolute, has a ``..`` component, is ONNX Runtime's memory-address
            marker, or resolves (through symlinks) outside the model's folder.
        ModelError: a referenced file is missing or shorter than the data it should hold; the model cannot be parsed.

    Example:
        >>> check_onnx_external_data("model.onnx")  # doctest: +SKIP
        [ExternalRef(tensor='w', location='model.onnx.data', offset=0, length=4096)]
    """
    p = Path(path)
    refs = onnx_external_refs(p)
    if not refs:
        return refs
    base = p.parent
    roots = sorted({os.path.realpath(base), os.path.realpath(p.resolve().parent)})
    for ref in refs:
        loc = ref.location
        what = f"{p.name}: tensor {ref.tensor!r} has external data at {loc!r}"
        if not loc or "\x00" in loc:
            raise UnsafeModelError(
                f"{what}; expected a file name relative to the model's folder, got an empty or NUL-containing one"
            )
        if loc.startswith(ORT_MEM_ADDR):
            raise UnsafeModelError(
                f"{what}: that is ONNX Runtime's in-memory address marker, which a model file must not use"
            )
        posix, win = PurePosixPath(loc), PureWindowsPath(loc)
        if posix.is_absolute() or win.is_absolute() or win.drive or win.root or loc.startswith(("/", "\\", "~")):
            raise UnsafeModelError(f"{what}; expected a path relative to the model's folder, got an absolute one")
        if ".." in posix.parts or ".." in win.parts:
            raise UnsafeModelError(f"{what}; expected a path inside the model's folder, got one with '..'")
        target = base / loc
        real = os.path.realpath(target)
        if not _inside(real, roots):
            raise UnsafeModelError(
                f"{what}, which resolves (through a symlink) to {real}, outside the model's folder {roots[0]}"
            )
        if not os.path.isfile(real):
            raise ModelError(f"{what}; expected that file beside the model, it does not exist or is not a regular file")
        size = os.path.getsize(real)
        off, length = ref.offset or 0, ref.length
        if off < 0 or (length is not None and length < 0) or off > size or (length is not None and off + length > size):
            raise ModelError(f"{what} (offset {off}, length {length}); the file holds only {size} bytes")
    return refs


def check_model_file(path: str | os.PathLike) -> None:
    """The checks a backend runs in ``open()`` before the runtime sees ``path`` (external data of .onnx files).

    Example:
        >>> check_model_file("model.xml")  # doctest: +SKIP
    """
    if str(path).lower().endswith(".onnx"):
        check_onnx_external_data(path)


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
