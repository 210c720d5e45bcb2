"""Reliability: hostile and unusual image inputs.

* a folder mixing good images with truncated, empty, wrong-extension, non-image and unreadable files: every good
  file is processed and written, every bad one is listed with its reason, the exit status is 1;
* the pixel cap refuses decompression bombs from the header (OpenCV is never called), and only allow-listed
  formats (by magic bytes) are decoded;
* input normalisation: 8 EXIF orientations, grayscale, gray+alpha, RGBA, palette, 1-bit, CMYK and 16-bit PNG/TIFF
  decode to the same 3-channel uint8 BGR as Ultralytics' reader and as an independent reference (Pillow);
  detections on an EXIF-rotated file match the physically rotated image (IoU >= 0.99);
* a fuzzing run (hypothesis) on the image decoder raises only ImageDecodeError.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
import unideploy.core.sources as sources
from conftest import scene
from reliability_helpers import (
    BACKENDS,
    apply_orientation,
    fuzz_settings,
    assert_same_boxes,
    model_for,
    pil_bytes,
    with_orientation,
)
from unideploy.cli.main import main
from unideploy.core.errors import ImageDecodeError
from unideploy.core.security import sniff_image
from unideploy.core.sources import decode_image, read_image

pytestmark = pytest.mark.timeout(600)


def _scene(seed: int = 0, h: int = 120, w: int = 160) -> np.ndarray:
    return scene(np.random.default_rng(seed), h, w)


# ------------------------------------------------------------------------------------------ bad files


def _make_mixed_folder(d: Path) -> tuple[list[str], dict[str, str]]:
    """Good images of several formats plus one bad file of each kind; returns (good names, {bad name: reason})."""
    from PIL import Image

    d.mkdir()
    good = []
    for i in range(4):
        cv2.imwrite(str(d / f"good{i}.jpg"), _scene(i, 90 + 10 * i, 130))
        good.append(f"good{i}.jpg")
    cv2.imwrite(str(d / "gray.png"), cv2.cvtColor(_scene(5), cv2.COLOR_BGR2GRAY))
    (d / "rgba.png").write_bytes(pil_bytes(Image.fromarray(np.dstack([_scene(6), _scene(7)[..., 0]])), "PNG"))
    cv2.imwrite(str(d / "deep.tif"), _scene(8).astype(np.uint16) * 257)
    cv2.imwrite(str(d / "lossless.webp"), _scene(9), [cv2.IMWRITE_WEBP_QUALITY, 101])
    (d / "png_named.jpg").write_bytes(cv2.imencode(".png", _scene(10))[1].tobytes())  # right content, wrong name
    good += ["gray.png", "rgba.png", "deep.tif", "lossless.webp", "png_named.jpg"]
    jpeg = (d / "good0.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (d / "zero.png").write_bytes(b"")
    (d / "video_named.jpg").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))  # a video renamed .jpg
    (d / "notes.png").write_text("these are my notes, not a picture\n")
    (d / "unreadable.jpg").write_bytes(jpeg)
    (d / "unreadable.jpg").chmod(0)
    bad = {
        "truncated.jpg": "truncated",
        "zero.png": "empty file",
        "video_named.jpg": "MP4/QuickTime video",
        "notes.png": "got text",
        "unreadable.jpg": "PermissionError",
    }
    return good, bad


def test_folder_with_bad_files(tiny, tmp_path, monkeypatch, capsys):
    good, bad = _make_mixed_folder(tmp_path / "mixed")
    target = tmp_path / "mixed" / "unreadable.jpg"
    try:
        target.open("rb").close()
        blocked = False  # running as root: mode 000 does not stop reads, so make the read fail as it would
    except PermissionError:
        blocked = True
    if not blocked:
        real = np.fromfile

        def fromfile(file, *a, **k):
            if Path(file).name == "unreadable.jpg":
                raise PermissionError(13, "Permission denied", str(file))
            return real(file, *a, **k)

        monkeypatch.setattr(sources.np, "fromfile", fromfile)
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(tiny["onnxruntime"]),
            str(tmp_path / "mixed"),
            "--conf",
            "0.1",
            "--quiet",
            "--save-txt",
            str(out / "txt"),
            "--save-json",
            str(out / "r.json"),
            "--save-img",
            str(out / "img"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1, err
    assert {p.stem for p in (out / "txt").glob("*.txt")} == {Path(g).stem for g in good}
    assert len(list((out / "img").iterdir())) == len(good)
    assert {r["file_name"] for r in json.loads((out / "r.json").read_text())} <= set(good)
    assert f"{len(bad)} file(s) skipped" in err
    listed = {line.strip().split(":", 1)[0]: line for line in err.splitlines() if line.startswith("  ")}
    assert set(listed) == set(bad), err
    for name, reason in bad.items():
        assert reason in listed[name], listed[name]


def test_stream_reports_bad_items_in_order(tiny, tmp_path):
    good, bad = _make_mixed_folder(tmp_path / "mixed")
    (tmp_path / "mixed" / "unreadable.jpg").chmod(0o644)
    files = sorted((tmp_path / "mixed").iterdir())
    with unideploy.load(tiny["onnxruntime"]) as p:
        outs = list(p.stream(files))
    assert [o.item.name for o in outs] == [f.name for f in files]
    assert {o.item.name for o in outs if not o.ok} == set(bad) - {"unreadable.jpg"}
    assert all(isinstance(o.error, ImageDecodeError) for o in outs if not o.ok)


# ------------------------------------------------------------------------------------- pixel cap


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(w: int, h: int) -> bytes:
    """A valid grayscale PNG of w x h zeros: a few hundred KB on disk, w*h bytes once decoded."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (w + 1)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def big_header(fmt: str, w: int, h: int) -> bytes:
    """Just enough of a file of format ``fmt`` for its header to declare w x h pixels."""
    if fmt == "png":
        return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + b"\0" * 64
    if fmt == "jpeg":
        app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
        return b"\xff\xd8" + app0 + sof + b"\xff\xd9"
    if fmt == "bmp":
        return (
            b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)
        )
    if fmt == "webp":
        body = (
            b"VP8X"
            + struct.pack("<I", 10)
            + b"\x00\x00\x00\x00"
            + (w - 1).to_bytes(3, "little")
            + (h - 1).to_bytes(3, "little")
        )
        return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    if fmt == "tiff":
        ifd = struct.pack("<H", 2) + struct.pack("<HHII", 256, 4, 1, w) + struct.pack("<HHII", 257, 4, 1, h) + b"\0" * 4
        return b"II*\x00" + struct.pack("<I", 8) + ifd
    if fmt == "pfm":
        return f"PF\n{w} {h}\n-1.0\n".encode() + b"\0" * 64
    raise AssertionError(fmt)


@pytest.fixture()
def no_decoder(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("cv2.imdecode was called on an image above the pixel cap")

    monkeypatch.setattr(cv2, "imdecode", boom)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "bmp", "webp", "tiff", "pfm"])
def test_pixel_cap_from_header(fmt, no_decoder):
    data = big_header(fmt, 20000, 10000)
    assert sniff_image(data).pixels == 200_000_000
    with pytest.raises(ImageDecodeError, match=r"20000x10000 \(200\.0 megapixels\), above the limit of 100 megapixels"):
        decode_image(data, "big")


def test_pixel_cap_on_a_real_bomb(tmp_path, no_decoder):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(12000, 9000))  # 108 MP, ~100 KB on disk
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ImageDecodeError, match="108.0 megapixels"):
        read_image(bomb)


def test_pixel_cap_is_configurable(tmp_path, monkeypatch):
    img = _scene(1, 100, 200)
    data = cv2.imencode(".png", img)[1].tobytes()
    with pytest.raises(ImageDecodeError, match="above the limit of 0.01 megapixels"):
        decode_image(data, max_pixels=10_000)
    assert decode_image(data, max_pixels=20_000).shape == (100, 200, 3)
    monkeypatch.setattr(sources, "MAX_PIXELS", 19_999)
    with pytest.raises(ImageDecodeError):
        decode_image(data)
    assert decode_image(data, max_pixels=0).shape == (100, 200, 3)  # 0 = no limit
    path = tmp_path / "a.png"
    path.write_bytes(data)
    code = f"import unideploy.core.sources as s\ntry:\n s.read_image({str(path)!r})\nexcept s.ImageDecodeError as e:\n print('REFUSED', e)"
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "UNIDEPLOY_MAX_PIXELS": "5000"},
    )
    assert "REFUSED" in proc.stdout and "0.005 megapixels" in proc.stdout, proc.stdout + proc.stderr


OTHER = {
    "gif": (b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\0" * 32, "GIF data"),
    "pnm": (b"P6\n4 4\n255\n" + b"\x80" * 48, "PNM (netpbm) data"),
    "exr": (b"\x76\x2f\x31\x01" + b"\0" * 64, "OpenEXR data"),
    "hdr": (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 4 +X 4\n" + b"\0" * 64, "Radiance HDR data"),
    "sunras": (b"\x59\xa6\x6a\x95" + b"\0" * 64, "Sun raster data"),
    "pdf": (b"%PDF-1.7\n" + b"\0" * 64, "PDF data"),
    "elf": (b"\x7fELF" + b"\0" * 64, "ELF executable data"),
    "random": (bytes(range(200, 256)) * 3, "unknown format"),
}


@pytest.mark.parametrize("kind", sorted(OTHER))
def test_only_allow_listed_formats_reach_opencv(kind, no_decoder):
    data, reason = OTHER[kind]
    with pytest.raises(
        ImageDecodeError, match=r"expected an image in a format unideploy decodes \(bmp, jpeg, pfm, png, tiff, webp\)"
    ) as e:
        decode_image(data, "x.jpg")
    assert reason in str(e.value)


def test_pnm_decodes_when_opencv_would_but_is_refused():
    data, _ = OTHER["pnm"]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None  # OpenCV alone would decode it
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_allow_list_can_be_narrowed():
    data = cv2.imencode(".bmp", _scene())[1].tobytes()
    assert decode_image(data).shape == (120, 160, 3)
    with pytest.raises(ImageDecodeError, match=r"BMP images are not in the allowed formats \(jpeg, png\)"):
        decode_image(data, formats=("jpeg", "png"))


def test_truncated_headers_are_decode_errors():
    for fmt in ("png", "jpeg", "bmp", "webp", "tiff"):
        data = big_header(fmt, 64, 32)
        with pytest.raises(ImageDecodeError):
            decode_image(data[: len(data) // 3 + 4], fmt)


# ---------------------------------------------------------------------------------- normalisation


def _cases(tmp: Path) -> dict[str, tuple[Path, np.ndarray | None]]:
    """{case: (file, expected BGR uint8 or None when only Ultralytics parity is checked)}."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(5)
    bgr = _scene(11, 75, 110)
    rgb = Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))
    out: dict[str, tuple[Path, np.ndarray | None]] = {}

    def put(name: str, data: bytes, expected: np.ndarray | None) -> None:
        p = tmp / name
        p.write_bytes(data)
        out[name] = (p, expected)

    def pil_ref(name: str) -> np.ndarray:
        with Image.open(tmp / name) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[..., ::-1]

    for fmt, ext, kw in (
        ("JPEG", "jpg", {"quality": 95}),
        ("PNG", "png", {}),
        ("WEBP", "webp", {"lossless": True}),
        ("TIFF", "tif", {}),
    ):
        for o in range(1, 9):
            name = f"exif{o}.{ext}"
            put(name, with_orientation(bgr, o, fmt, **kw), None)
            out[name] = (out[name][0], pil_ref(name))
            if fmt != "JPEG":  # lossless: the exact upright pixels are known
                np.testing.assert_array_equal(out[name][1], apply_orientation(bgr, o))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    g3 = np.repeat(gray[..., None], 3, 2)
    put("gray.png", cv2.imencode(".png", gray)[1].tobytes(), g3)
    put("gray.tif", cv2.imencode(".tiff", gray)[1].tobytes(), g3)
    put(
        "gray_alpha.png",
        pil_bytes(Image.fromarray(np.dstack([gray, rng.integers(0, 256, gray.shape, np.uint8)]), "LA"), "PNG"),
        g3,
    )
    alpha = rng.integers(0, 256, gray.shape, np.uint8)
    put("rgba.png", pil_bytes(Image.fromarray(np.dstack([bgr[..., ::-1], alpha]), "RGBA"), "PNG"), bgr)  # alpha dropped
    put("rgba.tif", cv2.imencode(".tiff", np.dstack([bgr, alpha]))[1].tobytes(), bgr)
    put(
        "rgba.webp",
        pil_bytes(Image.fromarray(np.dstack([bgr[..., ::-1], alpha]), "RGBA"), "WEBP", lossless=True, exact=True),
        bgr,
    )
    pal = rgb.quantize(32)
    pal_bgr = np.asarray(pal.convert("RGB"))[..., ::-1]
    put("palette.png", pil_bytes(pal, "PNG"), pal_bgr)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    put("palette_trns.png", pil_bytes(pal_t, "PNG"), pal_bgr)  # transparency dropped like alpha
    put("palette.bmp", pil_bytes(pal, "BMP"), pal_bgr)
    one = rgb.convert("1")
    put("onebit.png", pil_bytes(one, "PNG"), np.repeat(np.asarray(one.convert("L"))[..., None], 3, 2))
    deep = bgr.astype(np.uint16) * 257 + rng.integers(0, 257, bgr.shape).astype(np.uint16)
    high = (deep >> 8).astype(np.uint8)
    put("rgb16.png", cv2.imencode(".png", deep)[1].tobytes(), high)
    put("rgb16.tif", cv2.imencode(".tiff", deep)[1].tobytes(), high)
    put("gray16.png", cv2.imencode(".png", deep[..., 0])[1].tobytes(), np.repeat(high[..., :1], 3, 2))
    put("gray16.tif", cv2.imencode(".tiff", deep[..., 0])[1].tobytes(), np.repeat(high[..., :1], 3, 2))
    put("rgba16.png", cv2.imencode(".png", np.dstack([deep, deep[..., :1]]))[1].tobytes(), high)
    put("rgba16.tif", cv2.imencode(".tiff", np.dstack([deep, deep[..., :1]]))[1].tobytes(), high)
    put("cmyk.jpg", pil_bytes(rgb.convert("CMYK"), "JPEG", quality=95), None)
    put("gray.jpg", pil_bytes(rgb.convert("L"), "JPEG", quality=95), None)
    return out


def test_every_input_kind_becomes_3_channel_uint8_like_ultralytics(tmp_path):
    pytest.importorskip("ultralytics")
    from ultralytics.utils.patches import imread as ultralytics_imread

    cases = _cases(tmp_path)
    assert len(cases) == 4 * 8 + 18
    for name, (path, expected) in cases.items():
        img = read_image(path)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.flags.c_contiguous, name
        np.testing.assert_array_equal(img, ultralytics_imread(str(path)), err_msg=f"{name}: differs from Ultralytics")
        if expected is not None:
            np.testing.assert_array_equal(img, expected, err_msg=f"{name}: differs from the reference")


@pytest.mark.parametrize("backend", BACKENDS)
def test_exif_rotated_file_matches_physically_rotated_image(tiny, tmp_path, backend):
    model = model_for(tiny, backend)
    from PIL import Image

    stored = _scene(21, 96, 160)
    plain = decode_image(pil_bytes(Image.fromarray(stored[..., ::-1].copy()), "JPEG", quality=95))  # no EXIF
    with unideploy.load(model, backend=backend, conf=0.05) as p:
        unrotated = p(plain)
        differs = 0
        for o in range(1, 9):
            f = tmp_path / f"o{o}.jpg"
            f.write_bytes(with_orientation(stored, o, "JPEG", quality=95))
            physical = tmp_path / f"physical{o}.png"
            cv2.imwrite(str(physical), apply_orientation(plain, o))
            a, b = p(f), p(physical)
            assert a.image_shape == b.image_shape
            assert len(a) > 0
            assert_same_boxes(a, b, 0.99)
            assert tuple(a.image_shape[:2]) == (apply_orientation(plain, o).shape[:2])
            if o != 1 and not (len(a) == len(unrotated) and np.allclose(a.xyxy, unrotated.xyxy, atol=1)):
                differs += 1
        assert differs >= 6, "orientation had no effect on the detections: the test cannot tell rotated from not"


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_path_list_and_stream_agree(tiny, tmp_path, backend):
    model = model_for(tiny, backend)
    cases = _cases(tmp_path)
    files = [
        cases[k][0] for k in ("exif6.jpg", "gray16.tif", "rgba.png", "palette.png", "gray_alpha.png", "exif3.webp")
    ]
    with unideploy.load(model, backend=backend, conf=0.05) as p:
        one = [p(f) for f in files]
        one_str = [p(str(f)) for f in files]
        many = p(files)
        arrays = p([read_image(f) for f in files])
        streamed = [o.result for o in p.stream(files)]
    for name, group in (("str", one_str), ("list", many), ("arrays", arrays), ("stream", streamed)):
        for f, a, b in zip(files, one, group):
            assert len(a) == len(b), (name, f.name)
            np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-5, err_msg=f"{name} {f.name}")
            np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
            np.testing.assert_array_equal(a.class_id, b.class_id)


# ------------------------------------------------------------------------------------------- fuzzing


def _seeds() -> list[bytes]:
    from PIL import Image

    img = _scene(3, 24, 32)
    pil = Image.fromarray(img[..., ::-1].copy())
    return [
        cv2.imencode(".jpg", img)[1].tobytes(),
        pil_bytes(pil, "JPEG", progressive=True),
        cv2.imencode(".png", img)[1].tobytes(),
        cv2.imencode(".png", img.astype(np.uint16) * 257)[1].tobytes(),
        cv2.imencode(".bmp", img)[1].tobytes(),
        pil_bytes(pil, "WEBP"),
        pil_bytes(pil, "WEBP", lossless=True),
        cv2.imencode(".tiff", img)[1].tobytes(),
        pil_bytes(pil, "TIFF", compression="tiff_lzw"),
        with_orientation(img, 6, "JPEG"),
        cv2.imencode(".pfm", img.astype(np.float32))[1].tobytes(),
    ]


def test_fuzz_image_decoder(tmp_path):
    """Random bytes and mutated real images (flips, cuts, splices, header field rewrites) for a fixed budget:
    decode_image / read_image return a (H, W, 3) uint8 image or raise ImageDecodeError, nothing else."""
    pytest.importorskip("hypothesis")
    from hypothesis import given
    from hypothesis import strategies as st

    seeds = _seeds()

    @st.composite
    def mutated(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(["flip", "cut", "splice", "field", "dup"]))
            i = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[i] ^= draw(st.integers(1, 255))
            elif op == "cut":
                del data[i:]
            elif op == "splice":
                data[i:i] = draw(st.binary(max_size=64))
            elif op == "field" and len(data) > i + 4:  # a big number where a size field may be
                data[i : i + 4] = draw(
                    st.sampled_from(
                        [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"]
                    )
                )
            elif op == "dup":
                data += data[i : i + draw(st.integers(1, 512))]
        return bytes(data)

    path = tmp_path / "fuzz.img"
    stats = {"ok": 0, "refused": 0}

    @fuzz_settings()
    @given(st.one_of(mutated(), st.binary(max_size=512)))
    def check(data: bytes) -> None:
        for fn in (lambda: decode_image(data, "fuzz"), lambda: (path.write_bytes(data), read_image(path))[1]):
            try:
                img = fn()
            except ImageDecodeError:
                stats["refused"] += 1
                continue
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            stats["ok"] += 1

    check()
    assert stats["ok"] > 0 and stats["refused"] > 0, stats
