"""Rockchip RKNN backend: rknn-toolkit-lite2 on a board, the rknn-toolkit2 x86 simulator elsewhere.

* On a Rockchip board (``rknnlite`` importable): ``RKNNLite.load_rknn`` -> ``init_runtime(core_mask)`` ->
  ``inference`` -> ``release``; device ``npu``, ``npu:0``, ``npu:0,1,2`` (RK3588 cores) or ``auto``.
* Elsewhere: the toolkit's simulator (``init_runtime()`` with no target) in the isolated toolkit environment
  (see :mod:`unideploy.runtime.backends.rknn_toolkit`). The simulator cannot execute a ``.rknn`` file, so it rebuilds the
  model from the ONNX kept beside it with the same target / dtype / calibration, as recorded in the sidecar.

Inputs are uint8 NHWC letterboxed images in the network's channel order, batch 1: the normalisation is inside the
model (``in_model="rknn"`` in the spec, the same fields and host code path as OpenVINO's PrePostProcessor and Ascend
AIPP; a sidecar written before that field existed is read the same way).

Example:
    >>> import unideploy
    >>> with unideploy.load("yolov8n.rknn", backend="rknn") as p:  # doctest: +SKIP
    ...     dets = p("bus.jpg")
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import BackendError, DeviceError, InputError, ModelError
from unideploy.core.options import BackendOptions
from unideploy.core.spec import ModelSpec, parse_size, sidecar_paths
from unideploy.runtime.backends.base import Backend, Session, TensorInfo

#: RKNNLite core masks (values of RKNNLite.NPU_CORE_*)
CORE_MASKS = {"auto": 0, "0": 1, "1": 2, "2": 4, "0,1": 3, "0,1,2": 7}


def _sidecar(path: Path) -> dict[str, Any]:
    for side in sidecar_paths(path):
        if side.is_file():
            try:
                return json.loads(side.read_text())
            except ValueError as e:
                raise ModelError(f"{side}: expected a JSON model spec, could not parse it ({e})") from None
    return {}


@dataclass(frozen=True)
class RknnOptions(BackendOptions):
    """Options of :class:`RknnBackend` (see its docstring)."""

    simulator: bool | None = None
    install: bool = False
    imgsz: Any = None
    calib_count: int = 100


class RknnSession(Session):
    backend = "rknn"

    def __init__(self, path: Path, device: str, options: RknnOptions) -> None:
        super().__init__(path, device)
        side = _sidecar(path)
        size = side.get("imgsz") or options.imgsz
        if not size:
            raise ModelError(f"{path}: the input size is unknown (no sidecar spec {sidecar_paths(path)[0].name}); pass imgsz=")
        h, w = parse_size(size, "imgsz")
        self.inputs = [TensorInfo("images", (1, int(h), int(w), 3), np.dtype(np.uint8))]
        self._worker = None
        self._lite = None
        info = (side.get("extra") or {}).get("rknn") or {}
        self._split = info.get("split_outputs")  # INT8 graphs end before the head's Concat: join the parts again
        self._axis = int(info.get("concat_axis") or 1)
        self._parts = int(info.get("concat_parts") or len(self._split or []))  # then the other outputs, as they are
        if importlib.util.find_spec("rknnlite") is not None and options.simulator is not True:
            self._open_board(device)
        else:
            self._open_simulator(info, side, options)
        outs = self._infer(np.zeros((1, int(h), int(w), 3), np.uint8))
        self.outputs = [TensorInfo(f"output{i}", tuple(o.shape), np.dtype(np.float32)) for i, o in enumerate(outs)]

    def _open_board(self, device: str) -> None:
        from rknnlite.api import RKNNLite

        dev = (device or "auto").lower().replace("npu:", "").replace("npu", "auto")
        if dev not in CORE_MASKS:
            raise DeviceError(f"rknn device must be auto, npu:0, npu:1, npu:2, npu:0,1 or npu:0,1,2; got {device!r}")
        lite = RKNNLite()
        ret = lite.load_rknn(str(self.path))
        if ret != 0:
            lite.release()
            raise ModelError(f"{self.path}: RKNNLite.load_rknn failed (ret {ret})")
        ret = lite.init_runtime(core_mask=CORE_MASKS[dev])
        if ret != 0:
            lite.release()
            raise BackendError(f"RKNNLite.init_runtime(core_mask={CORE_MASKS[dev]}) failed (ret {ret})")
        self._lite = lite
        self.mode = "board"

    def _open_simulator(self, info: dict[str, Any], side: dict[str, Any], options: RknnOptions) -> None:
        from unideploy.runtime.backends.rknn_toolkit import DISABLE_RULES, ToolkitWorker, calibration_set, toolkit_python

        if not info:
            raise ModelError(f"{self.path}: the x86 simulator rebuilds the model from its ONNX, but no sidecar spec with "
                             "extra.rknn (written by unideploy export --to rknn) was found")
        onnx = self.path.with_name(info["onnx"])
        if not onnx.is_file():
            raise ModelError(f"{self.path}: the simulator needs {onnx.name} beside the model (kept by export)")
        if info["dtype"] == "int8" and info.get("calib") and not Path(info["calib"]).exists():
            raise ModelError(f"{self.path}: the simulator re-calibrates INT8 from {info['calib']}, which is gone")
        worker = ToolkitWorker(toolkit_python(install=bool(options.install)))
        try:
            dataset = None
            if info["dtype"] == "int8":
                host = {"layout": "nchw", "input_dtype": "float32", "in_model": None}  # calibration resizes on the host
                kept = {k: v for k, v in (side.get("extra") or {}).items() if k != "rknn"}  # kpt_shape, ...
                spec = ModelSpec.from_dict({k: v for k, v in side.items() if k != "extra"} | host | {"extra": kept})
                dataset = str(calibration_set(spec, info["calib"], int(options.calib_count), worker.tmp))
            worker.request(cmd="build", onnx=str(onnx), target=info["target"], dtype=info["dtype"], dataset=dataset,
                           mean=info["mean"], std=info["std"], out=None, simulate=True,
                           quantized_algorithm=info.get("quantized_algorithm", "normal"),
                           disable_rules=info.get("disable_rules", list(DISABLE_RULES)), outputs=info.get("split_outputs"))
        except BaseException:
            worker.close()
            raise
        self._worker = worker
        self.mode = "simulator"

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        if self._lite is not None:
            outs = self._lite.inference(inputs=[x], data_format="nhwc")
            if outs is None:
                raise BackendError("RKNNLite.inference returned no outputs")
            outs = [np.asarray(o, np.float32) for o in outs]
        else:
            p = self._worker.tmp / "in0.npy"
            np.save(p, x)
            rep = self._worker.request(cmd="infer", inputs=[str(p)], data_format="nhwc", out_dir=str(self._worker.tmp))
            outs = [np.load(o).astype(np.float32) for o in rep["outputs"]]
        if self._split and len(outs) == len(self._split) and self._parts > 1:
            outs = [np.concatenate(outs[:self._parts], axis=self._axis), *outs[self._parts:]]
        return outs

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = self._infer(feeds[self.inputs[0].name])
        self.last_timings.total = self.last_timings.compute = time.perf_counter() - t0
        return out

    def fuse_preprocess(self, spec: Any) -> Any:
        """An RKNN model does its normalisation (``export --to rknn`` bakes mean/std in) and takes uint8 NHWC in the
        network's channel order: the spec says ``in_model="rknn"`` (None when it already does)."""
        from unideploy.runtime.backends.in_model import in_model_spec

        return None if spec.in_model == "rknn" else in_model_spec(spec, "rknn", spec.channel_order)

    def _close(self) -> None:
        if self._lite is not None:
            self._lite.release()
            self._lite = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None


class RknnBackend(Backend):
    """Rockchip NPUs (``.rknn``): rknn-toolkit-lite2 on the board, the rknn-toolkit2 simulator on x86.

    Options:
        simulator: force the simulator even where rknnlite is installed.
        install: create the isolated toolkit environment if missing (simulator only).
        imgsz: input size when the sidecar spec is missing (board only).
        calib_count: calibration images the simulator re-calibrates an INT8 model with (default 100).
    """

    name = "rknn"
    runtime_module = "rknnlite"
    extra = "rknn"
    suffixes = (".rknn",)
    default_device = "auto"
    Options = RknnOptions

    @classmethod
    def available(cls) -> bool:
        if importlib.util.find_spec("rknnlite") is not None:
            return True
        try:
            from unideploy.runtime.backends.rknn_toolkit import toolkit_python

            toolkit_python(install=False)
            return True
        except Exception:
            return False

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, **options: Any) -> RknnSession:
        opts: RknnOptions = cls.parse_options(options)
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        if path.suffix.lower() != ".rknn":
            raise InputError(f"{path}: the rknn backend runs .rknn models; convert with: unideploy export {path.name} --to rknn")
        return RknnSession(path, device or "auto", opts)
