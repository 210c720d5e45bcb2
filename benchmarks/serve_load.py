"""Load and abuse check of ``unideploy serve`` (Ray Serve) on localhost, with a bounded number of requests.

Starts the server on a tiny random-weight YOLOv8n (or ``--model``), then:

1. latency: 8 concurrent clients send ``--requests`` small JPEGs in all; median, p90, p99 and p99/median;
2. oversize: a request declaring a body over the limit, of which only 1 KB is sent: time to the 413 answer
   (the server must answer without waiting for the rest of the body);
3. killed clients: 20 clients send headers and half a body, then close the socket; afterwards /health and a
   prediction must still succeed;
4. flood: 200 requests at once against a queue of ``--max-queue`` (default: the server's 64): the status codes
   seen (the ones over the bound get 503 with Retry-After), and the server still answers afterwards.

    python benchmarks/serve_load.py                      # prints a table, writes out/serve_load.json

Needs the ``ray`` extra (ray[serve]) and ``requests``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")


def _raw(port: int, head: bytes, body: bytes, read: bool = True, timeout: float = 30) -> tuple[float, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.perf_counter()
    s.sendall(head + body)
    data = b""
    if read:
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
    s.close()
    return time.perf_counter() - t0, data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model file (default: a 64x64 random-weight YOLOv8n built here)")
    ap.add_argument("--requests", type=int, default=400, help="requests of the latency phase (default 400)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--max-queue", type=int, default=64, help="server's bound on requests in flight (default 64)")
    ap.add_argument("--work", default="out/serve_load", help="work folder (default out/serve_load)")
    args = ap.parse_args(argv)
    import cv2
    import requests

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = work / "yolov8n.onnx"
        if not model.exists():
            import subprocess

            code = (
                f"from unideploy.testing import build_random_yolo; build_random_yolo('yolov8n.yaml', {str(work)!r}, 64)"
            )
            subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
    from unideploy.testing import free_port, scene

    jpg = cv2.imencode(".jpg", scene(np.random.default_rng(0), 240, 320))[1].tobytes()
    from unideploy.apps.serving import serve_model

    port = free_port()
    limit_mb = 1.0
    t0 = time.perf_counter()
    url = serve_model(
        model, port=port, blocking=False, max_upload_mb=limit_mb, max_batch_size=8, batch_wait_s=0.005, threads=1,
        max_queue=args.max_queue,
    )
    startup = time.perf_counter() - t0
    report: dict = {"startup_s": startup, "clients": args.clients, "max_queue": args.max_queue}
    try:
        for _ in range(5):  # warm-up
            requests.post(url + "predict", files={"file": ("w.jpg", jpg)}, timeout=120).raise_for_status()

        # 1. latency at N concurrent clients
        def one(_: int) -> tuple[int, float]:
            t = time.perf_counter()
            r = requests.post(url + "predict", files={"file": ("a.jpg", jpg)}, timeout=120)
            return r.status_code, time.perf_counter() - t

        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            res = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t
        lat = sorted(d for s, d in res if s == 200)
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
        report["latency"] = {
            "ok": len(lat),
            "failed": len(res) - len(lat),
            "median_ms": statistics.median(lat) * 1e3,
            "p90_ms": q(0.90) * 1e3,
            "p99_ms": q(0.99) * 1e3,
            "p99_over_median": q(0.99) / statistics.median(lat),
            "req_per_s": len(res) / wall,
        }

        # 2. oversize: declared too large, only 1 KB sent
        declared = int(limit_mb * 1024 * 1024) * 10
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        ).encode()
        dt, data = _raw(port, head, b"x" * 1024)
        report["oversize"] = {"status_line": data.split(b"\r\n", 1)[0].decode(errors="replace"), "answer_s": dt}

        # 3. clients killed mid-request
        body = jpg
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        for _ in range(20):
            _raw(port, head, body[: len(body) // 2], read=False)
        time.sleep(1.0)
        health = requests.get(url + "health", timeout=60).status_code
        after = requests.post(url + "predict", files={"file": ("a.jpg", jpg)}, timeout=120).status_code
        report["killed_clients"] = {"killed": 20, "health_after": health, "predict_after": after}

        # 4. flood
        codes: dict[str, int] = {}
        retry_after: set[str] = set()
        lock = threading.Lock()

        def flood(_: int) -> None:
            try:
                r = requests.post(url + "predict", files={"file": ("a.jpg", jpg)}, timeout=300)
                key, ra = str(r.status_code), r.headers.get("Retry-After")
            except requests.RequestException as e:
                key, ra = type(e).__name__, None
            with lock:
                codes[key] = codes.get(key, 0) + 1
                if ra:
                    retry_after.add(ra)

        with ThreadPoolExecutor(200) as pool:
            list(pool.map(flood, range(200)))
        report["flood"] = {"requests": 200, "status": codes, "retry_after": sorted(retry_after)}
        report["alive_after"] = requests.get(url + "health", timeout=60).status_code
    finally:
        from ray import serve

        import ray

        serve.shutdown()
        ray.shutdown()
    lat = report["latency"]
    print(f"\nunideploy serve on localhost ({Path(model).name}; startup {startup:.0f} s)\n")
    print("| check | result |\n|---|---|")
    print(
        f"| latency, {args.clients} clients, {args.requests} requests | median {lat['median_ms']:.0f} ms, p90 "
        f"{lat['p90_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, p99/median {lat['p99_over_median']:.2f}, "
        f"{lat['req_per_s']:.1f} req/s, {lat['failed']} failed |"
    )
    o = report["oversize"]
    print(
        f"| oversize body (declared {declared:,} B, 1 KB sent) | {o['status_line']} after {o['answer_s'] * 1e3:.0f} ms |"
    )
    k = report["killed_clients"]
    print(f"| 20 clients killed mid-body | /health {k['health_after']}, predict {k['predict_after']} afterwards |")
    f = report["flood"]
    print(f"| 200 simultaneous requests, queue bound {args.max_queue} | {f['status']}; Retry-After: {f['retry_after'] or 'none'} |")
    out = work / "serve_load.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
