"""A tiny HTTP MJPEG server for the live-stream tests: numbered frames, stoppable and restartable on one port."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from unideploy.testing import free_port

__all__ = ["MjpegServer", "frame_number"]

SIZE = (96, 64)


def _frame(n: int) -> bytes:
    img = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    img[:, :, 0] = n % 256  # the frame number, readable back from the decoded pixels
    img[:, :, 1] = (n // 256) % 256
    cv2.rectangle(img, (10 + n % 40, 10), (40 + n % 40, 40), (255, 255, 255), -1)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def frame_number(img: np.ndarray) -> int:
    """The number a served frame carries (read from a corner, away from the moving square)."""
    b, g = img[SIZE[1] - 4:, :8, 0].mean(), img[SIZE[1] - 4:, :8, 1].mean()
    return int(round(b)) + 256 * int(round(g))


class MjpegServer:
    """``multipart/x-mixed-replace`` JPEG frames at ``fps`` on http://127.0.0.1:PORT/stream.mjpg.

    ``stop()`` kills it mid-stream (open connections are cut); ``start()`` serves again on the same port, the frame
    numbers carrying on. ``frames``: how many frames it has sent in total.
    """

    def __init__(self, fps: float = 60.0, port: int = 0) -> None:
        self.fps = fps
        self.port = port or free_port()
        self.counter = 0
        self.frames = 0
        self._server: ThreadingHTTPServer | None = None
        self._alive = threading.Event()
        self.paused = threading.Event()  # set: keep connections open but send nothing (a stalled stream)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while owner._alive.is_set():
                        if owner.paused.is_set():
                            time.sleep(0.02)
                            continue
                        data = _frame(owner.counter)
                        owner.counter += 1
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                        owner.frames += 1
                        time.sleep(1.0 / owner.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._alive.set()
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._alive.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
