"""Batch prediction on Ray Data and an HTTP client for ``unideploy serve`` (needs: pip install 'unideploy[ray]').

python examples/ray_batch_and_serve.py MODEL IMAGES          # batch: COCO JSON + Parquet
unideploy serve MODEL --port 8000 &                            # then, in another shell:
python examples/ray_batch_and_serve.py --client http://127.0.0.1:8000 IMAGE
"""

from __future__ import annotations

import base64
import sys


def batch(model: str, images: str) -> None:
    from unideploy import ray as uray

    uray.init(num_cpus=2)  # or uray.init("auto") on a cluster
    results = uray.predict(
        model,
        images,
        concurrency=2,
        num_cpus=1,
        conf=0.25,
        save_json="ray_predictions.json",
        save_parquet="ray_predictions_parquet",
    )
    for name, det in results[:5]:
        print(name, det if isinstance(det, str) else f"{len(det)} box(es)")


def client(url: str, image: str) -> None:
    import requests

    with open(image, "rb") as f:
        data = f.read()
    r = requests.post(url.rstrip("/") + "/predict", files={"file": (image, data)}, timeout=60)  # multipart
    print(r.status_code, r.json())
    r = requests.post(
        url.rstrip("/") + "/predict", json={"image": base64.b64encode(data).decode(), "conf": 0.5}, timeout=60
    )  # base64 JSON, per-request threshold
    print(r.status_code, r.json())


if __name__ == "__main__":
    if sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3])
    else:
        batch(sys.argv[1], sys.argv[2])
