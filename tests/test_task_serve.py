"""Ray Serve over HTTP answering segmentation, pose and oriented-box requests: one Serve instance (one start: Ray is
slow to start on a small machine) runs the three bundled task demo models as three applications on their own
routes, and each answer equals the single-process ``predict`` records (mask RLE, keypoints, ``xywhr`` + ``poly``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import unideploy
from unideploy.apps.demo import ASSETS
from unideploy.testing import free_port

pytest.importorskip("ultralytics")
pytest.importorskip("ray")
pytest.importorskip("ray.serve")

TASKS = ("seg", "pose", "obb")
FIELDS = {"seg": ("mask",), "pose": ("keypoints",), "obb": ("xywhr", "poly")}


@pytest.fixture(scope="module")
def task_models(task_demo_onnx) -> dict[str, Path]:
    return task_demo_onnx  # conftest.py: the three demo checkpoints exported at 96 px


@pytest.fixture(scope="module")
def server(task_models):
    """One Serve instance, the three task models as applications at /seg, /pose and /obb."""
    from ray import serve

    from unideploy.apps import distributed
    from unideploy.apps.serving import build_app

    ray = distributed.init(num_cpus=2)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for t in TASKS:  # a fraction of a CPU each: three replicas on two cores
            serve.run(build_app(task_models[t], num_cpus=0.5, max_batch_size=4, batch_wait_s=0.02, conf=0.25),
                      name=f"task_{t}", route_prefix=f"/{t}")
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def rle_decode(rle: dict) -> np.ndarray:
    """A COCO RLE (compressed string, column-major) back to a bool mask, written out here to check the answer."""
    h, w = rle["size"]
    s, counts, i = rle["counts"], [], 0
    while i < len(s):
        x = k = 0
        more = True
        while more:
            c = ord(s[i]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat = np.zeros(h * w, bool)
    pos = 0
    for j, n in enumerate(counts):
        if j % 2:
            flat[pos:pos + n] = True
        pos += n
    return flat.reshape(w, h).T


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_serve_answers_task_records(server, task_models, task):
    """POST /<task>/predict (multipart, two images) answers the single-process records, task fields included."""
    import requests

    files = sorted((ASSETS / f"val_{task}" / "images").glob("*.jpg"))[:2]
    with unideploy.load(task_models[task], conf=0.25) as pred:
        ref = {f.name: pred(f) for f in files}
    url = f"{server}/{task}"
    assert requests.get(url + "/health", timeout=60).json() == {"status": "ok"}
    r = requests.post(url + "/predict", files=[("file", (f.name, f.read_bytes())) for f in files], timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert [o["name"] for o in out] == [f.name for f in files]
    assert sum(len(o["detections"]) for o in out) >= 2
    for o in out:
        res = ref[o["name"]]
        assert o["image_shape"] == list(res.image_shape)
        assert o["detections"] == res.to_dicts(), o["name"]  # the same records, exactly
        for d, k in zip(o["detections"], range(len(res))):
            assert all(f in d for f in FIELDS[task]), d.keys()
            if task == "seg":  # the RLE decodes to the mask the library computed
                np.testing.assert_array_equal(rle_decode(d["mask"]), res.masks.data[k])
            if task == "pose":
                assert np.asarray(d["keypoints"]).shape == (5, 3)
            if task == "obb":
                assert len(d["xywhr"]) == 5 and len(d["poly"]) == 8
    if task == "seg":  # masks as outline polygons instead, or left out; anything else is a 400 naming the choices
        for fmt in ("polygon", "none"):
            r = requests.post(f"{url}/predict?masks={fmt}", data=files[0].read_bytes(),
                              headers={"Content-Type": "image/jpeg"}, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["detections"] == ref[files[0].name].to_dicts(masks=fmt)
        r = requests.post(f"{url}/predict?masks=png", data=files[0].read_bytes(), timeout=60,
                          headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 400 and "masks must be one of rle, polygon, none" in r.json()["error"]


def test_masks_option_is_checked():
    from unideploy.apps.serving import RequestError, check_options, result_json
    from unideploy.core.results import Detections

    assert check_options({"masks": "polygon", "conf": "0.5"}) == {"masks": "polygon", "conf": 0.5}
    with pytest.raises(RequestError, match="masks must be one of rle, polygon, none, got 'png'"):
        check_options({"masks": "png"})
    boxes = Detections(np.array([[1, 2, 3, 4]], np.float32), np.array([0.9], np.float32), np.array([0]), {0: "a"}, (8, 8))
    assert result_json("a.jpg", boxes, "polygon")["detections"] == boxes.to_dicts()  # boxes have no masks to write
