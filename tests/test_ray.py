"""Ray: batch predict / eval over Ray Data equal single-process results; Ray Serve HTTP endpoint on localhost
with good and bad uploads. Request parsing is tested without Ray."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

import unideploy
from unideploy.cli.main import main
from unideploy.apps.serving import RequestError, check_options, parse_upload
from unideploy.testing import free_port

# ------------------------------------------------------------------------------ parsing (no Ray needed)


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> tuple[str, bytes]:
    body = b""
    for field, filename, data in parts:
        disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        body += (
            f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        )
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def test_parse_upload_forms():
    ct, body = _multipart(
        [("file", "a.jpg", b"\xff\xd8AAA\r\n\x00B"), ("file", "b.png", b"PNG"), ("conf", None, b"0.4")]
    )
    images, opts = parse_upload(ct, body)
    assert images == [("a.jpg", b"\xff\xd8AAA\r\n\x00B"), ("b.png", b"PNG")] and opts == {"conf": "0.4"}
    b64 = base64.b64encode(b"img").decode()
    images, opts = parse_upload(
        "application/json", json.dumps({"images": [b64, "data:image/png;base64," + b64], "iou": 0.5}).encode()
    )
    assert images == [("images[0]", b"img"), ("images[1]", b"img")] and opts == {"iou": 0.5}
    assert parse_upload("image/jpeg", b"raw")[0] == [("body", b"raw")]


BAD_UPLOADS = [
    ("text/plain", b"x", 415, r"unsupported Content-Type 'text/plain'"),
    ("", b"x", 415, r"unsupported Content-Type 'none'"),
    ("application/json", b"{not json", 400, r"expected a JSON body, could not parse it"),
    ("application/json", b'{"img": "aGk="}', 400, r'expected a JSON object with "image"'),
    ("application/json", b'{"image": "%%%"}', 400, r"image: expected base64 data, it is not valid base64"),
    ("application/json", b'{"image": 3}', 400, r"image: expected a base64 string, got int"),
    ("application/json", b'{"images": "aGk="}', 400, r'"images" must be a list'),
    ("application/json", json.dumps({"images": ["aGk="] * 17}).encode(), 413, r"at most 16 images per request, got 17"),
    ("multipart/form-data", b"--x\r\n", 400, r"without a boundary"),
    ("multipart/form-data; boundary=XyZ", b"--XyZ--\r\n", 400, r"multipart/form-data body, it could not be parsed"),
    (
        "multipart/form-data; boundary=XyZ",
        b'--XyZ\r\nContent-Disposition: form-data; name="conf"\r\n\r\n0.3\r\n--XyZ--\r\n',
        400,
        r"the request holds no image",
    ),
]


@pytest.mark.parametrize("ct,body,status,match", BAD_UPLOADS, ids=range(len(BAD_UPLOADS)))
def test_bad_uploads(ct, body, status, match):
    with pytest.raises(RequestError, match=match) as ei:
        parse_upload(ct, body)
    assert ei.value.status == status and "\n" not in str(ei.value)


def test_check_options():
    assert check_options({"conf": "0.5", "max_det": "10"}) == {"conf": 0.5, "max_det": 10}
    for opts, match in [
        ({"conf": "high"}, "conf must be a number"),
        ({"iou": 2}, "iou must be between 0 and 1"),
        ({"max_det": 0}, "max_det must be a positive integer"),
    ]:
        with pytest.raises(RequestError, match=match):
            check_options(opts)


# ------------------------------------------------------------------------------------- on local Ray


@pytest.fixture(scope="module")
def ray_local():
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from unideploy.apps import distributed

    ray = distributed.init(num_cpus=2)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
    except AttributeError:
        pass
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - serve may never have started
        pass
    ray.shutdown()


@pytest.fixture(scope="module")
def model(yolo_models) -> Path:
    return yolo_models["yolov8n"]["onnx"]


@pytest.fixture(scope="module")
def images(image_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ray_images")
    for f in sorted(image_dir.iterdir())[:10]:
        shutil.copy(f, d / f.name)
    (d / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return d


def same(a, b, where=""):
    assert len(a) == len(b), where
    np.testing.assert_array_equal(a.xyxy, b.xyxy, err_msg=where)
    np.testing.assert_array_equal(a.confidence, b.confidence, err_msg=where)
    np.testing.assert_array_equal(a.class_id, b.class_id, err_msg=where)
    assert a.image_shape == b.image_shape


@pytest.mark.slow
def test_ray_predict_equals_single_process(ray_local, model, images, tmp_path):
    from unideploy import ray as uray  # the public name: must be unideploy's module, not ray itself

    assert uray.__name__ == "unideploy.ray" and hasattr(uray, "predict_dataset")
    files = sorted(images.iterdir())
    res = uray.predict(
        model,
        images,
        concurrency=2,
        batch_size=3,
        conf=0.2,
        save_json=tmp_path / "ray.json",
        save_parquet=tmp_path / "pq",
    )
    assert [n for n, _ in res] == [f.name for f in files]
    assert isinstance(res[-1][1], str) and "zz_broken.jpg" in res[-1][1] and "truncated" in res[-1][1]
    total = 0
    with unideploy.load(model, conf=0.2) as pred:
        for (name, det), f in zip(res[:-1], files[:-1]):
            same(det, pred(f), name)
            assert det.names == pred.names
            total += len(det)
    assert total > 20
    # the COCO JSON is the one predict --save-json writes (same ids, same records)
    assert (
        main(
            ["predict", str(model), str(images), "--conf", "0.2", "--save-json", str(tmp_path / "one.json"), "--quiet"]
        )
        == 1
    )  # 1: the broken file is reported
    assert json.loads((tmp_path / "ray.json").read_text()) == json.loads((tmp_path / "one.json").read_text())
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pq")
    assert set(table.column_names) >= {"index", "path", "name", "xyxy", "confidence", "class_id", "error"}
    assert table.num_rows == len(files)
    # the CLI path
    assert (
        main(
            [
                "predict",
                str(model),
                str(images),
                "--conf",
                "0.2",
                "--ray",
                "--ray-actors",
                "2",
                "--save-json",
                str(tmp_path / "cli.json"),
                "--quiet",
            ]
        )
        == 1
    )
    assert json.loads((tmp_path / "cli.json").read_text()) == json.loads((tmp_path / "one.json").read_text())
    assert main(["predict", str(model), str(images), "--ray", "--save-txt", str(tmp_path / "t")]) == 1


@pytest.mark.slow
def test_ray_evaluate_equals_single_process(ray_local, model, images, tmp_path):
    from unideploy.apps import distributed
    from unideploy.tools.evaluate import evaluate

    root = tmp_path / "data"
    (root / "labels").mkdir(parents=True)
    shutil.copytree(images, root / "images")
    (root / "images" / "zz_broken.jpg").unlink()
    rng = np.random.default_rng(0)
    for f in (root / "images").iterdir():
        lines = [
            f"{int(rng.integers(0, 80))} {rng.uniform(0.3, 0.7):.3f} {rng.uniform(0.3, 0.7):.3f} "
            f"{rng.uniform(0.1, 0.5):.3f} {rng.uniform(0.1, 0.5):.3f}"
            for _ in range(3)
        ]
        (root / "labels" / f"{f.stem}.txt").write_text("\n".join(lines) + "\n")
    names = unideploy.read_spec(model).names
    (root / "data.yaml").write_text(
        yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": names})
    )
    ref = evaluate(model, root / "data.yaml")
    got = distributed.evaluate(model, root / "data.yaml", concurrency=2)
    assert got["images"] == ref["images"] == 10
    for k in ("mAP50-95", "mAP50", "mAP75"):
        assert got[k] == ref[k], k
    assert got["mAP50"] > 0, "random boxes should still match some labels at IoU 0.5"


@pytest.fixture(scope="module")
def server(ray_local, model):
    from ray import serve

    from unideploy.apps.serving import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_app(model, max_upload_mb=0.5, max_images=4, max_batch_size=4, batch_wait_s=0.05, max_queue=4, conf=0.25),
        name="unideploy",
        route_prefix="/",
    )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.mark.slow
def test_serve_predicts_like_predict(server, model, image_dir):
    import requests

    files = [f for f in sorted(image_dir.iterdir()) if f.stat().st_size < 400_000][:4]
    assert requests.get(server + "/health", timeout=30).json() == {"status": "ok"}
    info = requests.get(server + "/", timeout=30).json()
    assert info["model"] == model.name and info["max_images"] == 4
    with unideploy.load(model, conf=0.25) as pred:
        ref = {f.name: pred(f).to_dicts() for f in files}
        ref_conf = pred(files[0], conf=0.6).to_dicts()
    # multipart, two files in one request
    r = requests.post(server + "/predict", files=[("file", (f.name, f.read_bytes())) for f in files[:2]], timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert [o["name"] for o in out] == [f.name for f in files[:2]]
    for o in out:
        assert o["detections"] == ref[o["name"]]
    # base64 JSON with a per-request threshold; raw body
    r = requests.post(
        server + "/predict", json={"image": base64.b64encode(files[0].read_bytes()).decode(), "conf": 0.6}, timeout=60
    )
    assert r.status_code == 200 and r.json()["results"][0]["detections"] == ref_conf
    r = requests.post(
        server + "/predict?conf=0.6", data=files[0].read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert r.json()["results"][0]["detections"] == ref_conf
    # concurrent requests are batched together and each gets its own answer
    answers: dict[str, list] = {}

    def post(f: Path) -> None:
        rr = requests.post(server + "/predict", files={"file": (f.name, f.read_bytes())}, timeout=120)
        answers[f.name] = rr.json()["results"][0]["detections"]

    threads = [threading.Thread(target=post, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ref


@pytest.mark.slow
def test_serve_bad_input_is_4xx(server, image_dir):
    import requests

    jpg = sorted(image_dir.glob("*.jpg"))[0].read_bytes()
    cases = [
        (dict(files={"file": ("bad.jpg", b"not an image")}), 400, "bad.jpg: expected an image"),
        (dict(files={"file": ("cut.jpg", jpg[: len(jpg) // 2])}), 400, "cut.jpg: expected a complete JPEG"),
        (dict(data=b"x" * 600_000, headers={"Content-Type": "image/jpeg"}), 413, "over the limit of 524288 bytes"),
        (dict(data=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported Content-Type"),
        (dict(data=b"{oops", headers={"Content-Type": "application/json"}), 400, "expected a JSON body"),
        (dict(json={"image": "%%%"}), 400, "not valid base64"),
        (dict(json={"images": ["aGk="] * 5}), 413, "at most 4 images per request, got 5"),
        (dict(json={"image": base64.b64encode(jpg).decode(), "conf": 3}), 400, "conf must be between 0 and 1"),
    ]
    for kwargs, status, message in cases:
        r = requests.post(server + "/predict", timeout=60, **kwargs)
        assert r.status_code == status, (message, r.status_code, r.text)
        assert message in r.json()["error"], r.text

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"y" * 50_000

    r = requests.post(server + "/predict", data=chunks(), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 413, r.text
    assert requests.get(server + "/nope", timeout=30).status_code == 404
    assert requests.put(server + "/predict", data=b"x", timeout=30).status_code == 405
    # the server is still fine afterwards
    assert requests.post(server + "/predict", files={"file": ("ok.jpg", jpg)}, timeout=60).status_code == 200


@pytest.mark.slow
def test_serve_sheds_load_with_503_retry_after(server, image_dir):
    """More requests at once than the bounded queue holds: the extra ones get 503 + Retry-After, the rest 200."""
    import requests

    jpg = sorted(image_dir.glob("*.jpg"))[0].read_bytes()
    answers: list[tuple[int, str | None, dict]] = []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def post() -> None:
        start.wait()
        r = requests.post(server + "/predict", files={"file": ("a.jpg", jpg)}, timeout=120)
        with lock:
            answers.append((r.status_code, r.headers.get("Retry-After"), r.json()))

    threads = [threading.Thread(target=post) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(answers) == 32
    codes = sorted({a[0] for a in answers})
    assert codes == [200, 503], codes
    for status, retry, body in answers:
        if status == 503:
            assert retry is not None and int(retry) >= 1, retry
            assert "server busy" in body["error"] and "limit 4" in body["error"], body
        else:
            assert len(body["results"]) == 1
    # shedding leaves nothing behind: the queue is empty again and the server answers
    assert requests.get(server + "/", timeout=30).json()["in_flight"] == 0
    assert requests.post(server + "/predict", files={"file": ("a.jpg", jpg)}, timeout=60).status_code == 200
