"""The stand-in for an Ascend offline model, shared by the test doubles of ``atc``, ``ais_bench`` and ``acl``.

A fake ``.om`` is a JSON file written by ``fake_atc.py`` from exactly what ATC is told (the ONNX model,
embedded so the OM stands alone like a real one, or a path to it for hand-made test files; input shape with -1 for dynamic dims, batch / image-size gears, output type). :class:`OmModel` executes it with
ONNX Runtime on the referenced ONNX file, one sample at a time when the ONNX graph has a fixed batch of 1
(ATC re-shapes such graphs to the gears it is given), and casts outputs to the ATC ``--output_type``. An OM built
with AIPP (``aipp`` recorded by fake_atc) declares its input as uint8 NHWC, as ATC makes it, and applies the AIPP
config (``fake_aipp.apply_aipp``) before the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MAGIC = "UNIDEPLOY-TEST-DOUBLE-OM"
OUTPUT_TYPES = {"FP32": np.float32, "FP16": np.float16}


class FakeOmError(Exception):
    """The file is not a fake OM (a real runtime would fail to load it)."""


def write_fake_om(path: Path, **fields) -> Path:
    path.write_text(json.dumps({"magic": MAGIC, **fields}))
    return path


class OmModel:
    """A loaded fake OM: declared inputs/outputs (with -1 dims) and an ONNX Runtime executor."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            raise FakeOmError(f"{p} is not an OM model") from None
        if not isinstance(d, dict) or d.get("magic") != MAGIC:
            raise FakeOmError(f"{p} is not an OM model")
        import onnxruntime as ort

        self.path = p
        self.info = d
        if "onnx_b64" in d:  # written by fake_atc: self-contained like a real OM
            import base64

            source = base64.b64decode(d["onnx_b64"])
        else:
            source = d["onnx"]
        self.sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        self.input_name = d["input_name"]
        self.input_shape = [int(v) for v in d["input_shape"]]  # -1 where dynamic
        self.aipp = d.get("aipp")
        self.input_dtype = np.dtype(np.uint8 if self.aipp else np.float32)
        if self.aipp:  # ATC turns the input AIPP feeds into NHWC uint8
            n, c, h, w = self.input_shape
            self.input_shape = [n, h, w, c]
        self.batch_gears = [int(b) for b in d.get("dynamic_batch") or []]
        self.hw_gears = [tuple(int(v) for v in hw) for hw in d.get("dynamic_hw") or []]
        self.output_dtype = np.dtype(OUTPUT_TYPES[d.get("output_type", "FP32")])
        self.onnx_batch = self.sess.get_inputs()[0].shape[0]
        self.output_names = [o.name for o in self.sess.get_outputs()]
        # output dims at every gear (ATC sizes output buffers for the largest)
        self.max_input = self._concrete(max(self.batch_gears) if self.batch_gears else None,
                                        max(self.hw_gears, key=lambda hw: hw[0] * hw[1]) if self.hw_gears else None)
        probe = self.execute([np.zeros(self.max_input, self.input_dtype)])
        self.max_output_shapes = [list(o.shape) for o in probe]
        self.output_shapes = [[-1 if (self.batch_gears and j == 0) or (self.hw_gears and j >= 2) else v
                               for j, v in enumerate(s)] for s in self.max_output_shapes]
        if self.hw_gears:  # every output dim after the channel axis depends on the image size
            self.output_shapes = [[s[0], s[1]] + [-1] * (len(s) - 2) if len(s) >= 3 else s for s in self.output_shapes]

    @property
    def mode(self) -> str:
        return "dymbatch" if self.batch_gears else "dymhw" if self.hw_gears else "static"

    def _concrete(self, batch: int | None, hw: tuple[int, int] | None) -> list[int]:
        s = list(self.input_shape)
        if batch is not None:
            s[0] = batch
        if hw is not None:
            s[2], s[3] = hw
        return s

    def execute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self.aipp:
            from fake_aipp import apply_aipp

            x = apply_aipp(self.aipp, inputs[0])
        else:
            x = inputs[0].astype(np.float32, copy=False)
        if self.onnx_batch == 1 and x.shape[0] != 1:
            parts = [self.sess.run(self.output_names, {self.input_name: x[i : i + 1]}) for i in range(x.shape[0])]
            outs = [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]
        else:
            outs = self.sess.run(self.output_names, {self.input_name: x})
        return [o.astype(self.output_dtype) for o in outs]
