"""Shared core of the rknn-toolkit2 / rknn-toolkit-lite2 test doubles: a "compiled" model that runs its ONNX
with ONNX Runtime behind the toolkit's input contract (uint8 NHWC, ``(x - mean) / std`` applied inside)."""

from __future__ import annotations

import base64
import json
import os

import numpy as np

MAGIC = "UNIDEPLOY-TEST-DOUBLE-RKNN"


class Compiled:
    def __init__(self, onnx_bytes: bytes, mean, std, target: str, dtype: str):
        import onnxruntime as ort

        self.onnx_bytes, self.mean, self.std, self.target, self.dtype = onnx_bytes, mean, std, target, dtype
        self.sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.inp = self.sess.get_inputs()[0]

    def run(self, inputs, data_format="nhwc"):
        if len(inputs) != 1:
            return None
        x = np.asarray(inputs[0])
        if data_format == "nhwc":
            if x.ndim == 3:
                x = x[None]
            x = x.transpose(0, 3, 1, 2)
        mean = np.asarray(self.mean[0], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std[0], np.float32).reshape(1, -1, 1, 1)
        want = [d if isinstance(d, int) else None for d in self.inp.shape]
        if any(w is not None and w != g for w, g in zip(want, x.shape)):
            print(f"E inference: input shape {x.shape} does not match the model's {self.inp.shape}")
            return None
        xf = (x.astype(np.float32) - mean) / std
        outs = self.sess.run(None, {self.inp.name: xf})
        if self.dtype == "fp16":  # the NPU computes in fp16
            outs = [o.astype(np.float16).astype(np.float32) for o in outs]
        else:  # int8: one asymmetric 8-bit scale per output tensor
            outs = [quantize_u8(o) for o in outs]
        return outs

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"magic": MAGIC, "onnx_b64": base64.b64encode(self.onnx_bytes).decode(), "mean": self.mean,
                       "std": self.std, "target": self.target, "dtype": self.dtype}, f)

    @classmethod
    def load(cls, path: str) -> "Compiled | None":
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError):
            return None
        if d.get("magic") != MAGIC:
            return None
        return cls(base64.b64decode(d["onnx_b64"]), d["mean"], d["std"], d["target"], d["dtype"])


def quantize_u8(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return x.astype(np.float32)
    step = (hi - lo) / 255.0
    return (np.round((x - lo) / step) * step + lo).astype(np.float32)


def fail(call: str) -> bool:
    """Fault injection: DOUBLE_RKNN_FAIL=build makes rknn.build return -1."""
    return os.environ.get("DOUBLE_RKNN_FAIL") == call
