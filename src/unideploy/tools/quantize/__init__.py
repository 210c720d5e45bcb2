"""INT8 post-training quantization with an optional accuracy gate, and a before/after report.

Paths (``backend`` = where the INT8 model will run, ``method`` = what quantizes it):

=============  ========  ====================================================================
backend        method    result
=============  ========  ====================================================================
openvino       nncf      OpenVINO IR with FakeQuantize (NNCF; ``max_drop`` -> accuracy control)
onnxruntime    ort       ONNX, QOperator uint8 activations / int8 weights (ONNX Runtime static)
onnxruntime    nncf      ONNX, QDQ int8 (NNCF; ``max_drop`` -> accuracy control)
=============  ========  ====================================================================

Calibration images go through the model's own adapter preprocessing (:class:`CalibrationSet`), the same
code path as ``predict``. With ``data`` the report gives mAP50-95 / mAP50 before and after (unideploy's
``eval``); with ``max_drop`` as well, NNCF keeps the layers whose quantization costs the most accuracy
in float until the mAP50-95 drop (absolute, 0..1) is at most ``max_drop``. The ONNX Runtime path has no
accuracy control: when its drop exceeds ``max_drop`` it raises :class:`AccuracyDropError` and keeps no model.

Example:
    >>> import unideploy
    >>> r = unideploy.quantize("yolov8n.onnx", "calib/", backend="openvino", data="val/data.yaml",
    ...                        max_drop=0.01)  # doctest: +SKIP
    >>> r.path, r.report["accuracy_drop"]["mAP50-95"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from unideploy.tools.convert import require
from unideploy.core.errors import AccuracyDropError, InputError
from unideploy.tools.quantize.calibration import CalibrationSet

PRESETS = ("mixed", "performance")
#: backend -> default method
DEFAULT_METHOD = {"openvino": "nncf", "onnxruntime": "ort"}


@dataclass
class QuantizeResult:
    """Where the INT8 model was written, and the before/after report (also written as JSON beside it)."""

    path: Path
    report: dict[str, Any]
    report_path: Path | None = None


def _resolve_model(model: str | os.PathLike) -> Path:
    """The float model file (an OpenVINO folder -> its .xml), which must be ONNX or OpenVINO IR."""
    from unideploy.runtime.open import resolve_model_path

    p = resolve_model_path(model)
    if p.suffix.lower() not in (".onnx", ".xml"):
        raise InputError(f"{p}: quantize reads ONNX (.onnx) or OpenVINO IR (.xml) models; export it first "
                         f"(unideploy export {p.name} --to onnx)")
    return p


def _base(src: Path) -> Path:
    """Output stem: ``dir/x`` for ``dir/x.onnx``; ``dir/x`` for ``dir/x_openvino_model/x.xml``."""
    if src.suffix.lower() == ".xml" and src.parent.name.endswith("_openvino_model"):
        return src.parent.parent / src.stem
    return src.with_suffix("")


def default_output(src: Path, backend: str) -> Path:
    """``x_int8_openvino_model/x_int8.xml`` (OpenVINO) or ``x_int8.onnx`` (ONNX Runtime), beside the source."""
    base = _base(src)
    if backend == "openvino":
        return base.with_name(f"{base.name}_int8_openvino_model") / f"{base.name}_int8.xml"
    return base.with_name(f"{base.name}_int8.onnx")


def _output(out: str | os.PathLike | None, src: Path, backend: str) -> Path:
    if out is None:
        return default_output(src, backend)
    p = Path(out)
    suffix = ".xml" if backend == "openvino" else ".onnx"
    if p.suffix.lower() in (".xml", ".onnx"):
        if p.suffix.lower() != suffix:
            raise InputError(f"--out {p}: the {backend} backend writes a {suffix} model")
        return p
    return p / f"{_base(src).name}_int8{suffix}"


def _backend_and_method(backend: str, method: str | None) -> tuple[str, str]:
    """Canonical backend name (any alias the backend registry knows) and method, checked against each other."""
    from unideploy.runtime.backends.registry import BACKENDS, canonical_backend
    from unideploy.tools.quantize.methods import METHODS

    key = str(backend).strip().lower()
    backend = canonical_backend(key) if key in BACKENDS else key
    if backend not in DEFAULT_METHOD:
        raise InputError(f"unknown quantization backend {backend!r}; valid backends: {', '.join(sorted(DEFAULT_METHOD))}")
    method = METHODS.canonical(method or DEFAULT_METHOD[backend])
    if backend not in METHODS.get(method):
        raise InputError(f"method {method!r} does not produce models for {backend}; "
                         f"{backend} takes: {', '.join(m for m in METHODS.names() if backend in METHODS.get(m))}")
    return backend, method


def _check_tools(backend: str, method: str) -> None:
    if method == "nncf":
        require("nncf", "quantize", f"quantization with NNCF for {backend}")
        if backend == "openvino":
            require("openvino", "quantize", "quantization for OpenVINO")
        else:
            require("onnx", "quantize", "quantization of ONNX models")
    else:
        require("onnxruntime.quantization", "onnxruntime", "ONNX Runtime static quantization")
        require("onnx", "quantize", "quantization of ONNX models")


def quantize(
    model: str | os.PathLike,
    calib: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    backend: str = "openvino",
    method: str | None = None,
    samples: int = 300,
    preset: str = "mixed",
    max_drop: float | None = None,
    data: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    ignore: Sequence[str] = (),
    keep_head_float: bool = True,
    recipe: str | None = "auto",
    device: str | None = None,
    speed: bool = True,
    speed_runs: int = 50,
    ranking_subset: int | None = 100,
    write_report: bool = True,
) -> QuantizeResult:
    """Quantize a float ONNX / OpenVINO model to INT8 and report size, accuracy and speed before and after.

    Args:
        model: float model (.onnx, OpenVINO .xml or its folder) with its spec (as ``unideploy export`` writes it).
        calib: calibration images: a folder, a glob, or a list of paths. Undecodable files are skipped and reported.
        backend: runtime of the INT8 model: "openvino" (IR) or "onnxruntime" (ONNX).
        method: "nncf" or "ort" (default: nncf for openvino, ort for onnxruntime).
        samples: calibration images to use at most (picked evenly over the sorted files).
        preset: "mixed" (asymmetric activations; ort: per-channel weights) or "performance"
            (symmetric activations; ort: per-tensor weights).
        max_drop: largest acceptable mAP50-95 drop, absolute in 0..1 (0.01 = one point); needs ``data``.
        data: labelled data set for the accuracy figures (COCO JSON + ``images`` or an Ultralytics data.yaml).
        images: image folder of a COCO JSON ``data`` (default: found beside it).
        out: output model path (``.xml`` / ``.onnx``) or folder (default: ``<stem>_int8...`` beside the model).
        ignore: extra regular expressions over node names to keep in float.
        keep_head_float: keep an Ultralytics detection head's box decoding in float (see ``scope.py``).
        recipe: NNCF model type and float layers per model family (``recipes.py``): "auto" (RT-DETR ->
            "rtdetr", else "default"), "default", "seed", "transformer", "rtdetr" or "rtdetr-decoder". With ``max_drop`` the
            calibration images must not be validation images (checked by content).
        device: device of the float and INT8 models for evaluation and timing.
        speed: measure ms/image and images/s of both models (``speed_runs`` runs each); on OpenVINO the float
            model at the runtime's default precision (bf16 on CPUs with native bf16) and at true f32, and say
            which artefact is faster (``report["recommendation"]``).
        ranking_subset: validation images NNCF uses to rank layers in accuracy control.
        write_report: write the report as JSON beside the model (``<model>.quantize.json``).

    Returns:
        :class:`QuantizeResult` with the model path and the report.

    Raises:
        InputError: unknown backend / method / preset, bad ``max_drop`` or ``samples``, ``max_drop`` without ``data``.
        SourceError: the calibration folder has no usable image.
        ModelError: the model is missing or cannot be read or quantized.
        BackendUnavailableError: NNCF / OpenVINO / onnx is not installed (names the pip extra).
        AccuracyDropError: ONNX Runtime path only: the drop exceeds ``max_drop``.

    Example:
        >>> r = quantize("model.onnx", "calib/", backend="onnxruntime", samples=100)  # doctest: +SKIP
        >>> print(r.report["int8"]["size_mb"])  # doctest: +SKIP
    """
    from unideploy.runtime.load import load
    from unideploy.runtime.open import read_spec
    from unideploy.tools.bench.discover import model_size_bytes
    from unideploy.tools.quantize.report import compare_speed, format_report
    from unideploy.tools.quantize.scope import check_patterns, int8_ops
    from unideploy.tools.quantize.accuracy_control import RestorerLog, check_disjoint, float_layers
    from unideploy.tools.quantize.recipes import resolve_recipe

    from unideploy.tools.quantize.methods import METHODS

    backend, method = _backend_and_method(backend, method)
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if max_drop is not None:
        if not 0.0 <= float(max_drop) < 1.0:
            raise InputError(f"--max-drop is an absolute mAP50-95 drop between 0 and 1 (0.01 = one point), got {max_drop}")
        if data is None:
            raise InputError("--max-drop needs --data: a labelled data set to measure the accuracy drop on")
    if int(samples) < 1:
        raise InputError(f"--samples must be a positive integer, got {samples}")
    patterns = check_patterns(list(ignore))
    src = _resolve_model(model)
    if backend == "onnxruntime" and src.suffix.lower() != ".onnx":
        raise InputError(f"{src}: the onnxruntime backend quantizes ONNX models; give the .onnx file (or --backend openvino)")
    _check_tools(backend, method)
    dest = _output(out, src, backend)
    if dest.resolve() == src.resolve():
        raise InputError(f"--out {dest} is the input model; choose another path")

    spec = read_spec(src)
    rec = resolve_recipe(recipe, spec.family)
    patterns = [*patterns, *rec.float_patterns]
    keep_head_float = keep_head_float if rec.keep_head is None else rec.keep_head
    # float NCHW input as in the source model: NNCF calibrates and the accuracy gate runs that graph
    eval_options: dict[str, Any] = {"precision": "f32", "in_model_preprocess": False} if backend == "openvino" else {}
    dataset = None
    if data is not None:
        from unideploy.tools.evaluate import load_dataset

        dataset = load_dataset(Path(data), images)

    report: dict[str, Any] = {"backend": backend, "method": method, "preset": preset}
    with load(src, backend, device, **eval_options) as fp32:
        calibration = CalibrationSet(calib, fp32, samples)
        if max_drop is not None and dataset is not None:
            check_disjoint(calibration.paths, [s.path for s in dataset.samples])
        gate = None
        fp32_acc: dict[str, Any] = {}
        if dataset is not None:
            from unideploy.tools.quantize.accuracy import AccuracyGate

            gate = AccuracyGate(fp32, dataset, backend)
            fp32_acc = _accuracy(fp32, gate)
        t0 = time.perf_counter()
        fn = METHODS.get(method)[backend]
        restorer = RestorerLog(enabled=gate is not None and max_drop is not None)
        try:
            with restorer:
                qmodel, kept = fn(src, calibration, preset=preset, patterns=patterns,
                                  # seg/pose/obb heads end in the same decoding tail (+ mask coefficients,
                                  # keypoint / angle decoding): keep it float as for detection
                                  head=keep_head_float and spec.task in ("detect", "segment", "pose", "obb"),
                                  gate=gate if max_drop is not None else None, max_drop=max_drop,
                                  ranking_subset=ranking_subset, model_type=rec.model_type)
        except BaseException:
            if gate is not None:
                gate.close()
            raise
        quantize_s = time.perf_counter() - t0
    q_spec = spec.updated(extra={**spec.extra, "precision": "int8",
                                 "quantization": {"backend": backend, "method": method, "preset": preset,
                                                  "calibration_images": len(calibration.paths),
                                                  "max_drop": max_drop, "float_nodes": len(kept), "recipe": rec.name}})
    _save(qmodel, dest, q_spec, backend, src)

    report.update(
        calibration={"source": calibration.source, "images": len(calibration.paths),
                     "skipped": [f"{n}: {why}" for n, why in calibration.skipped]},
        quantize_s=quantize_s, float_nodes=len(kept), float_node_names=kept, int8_ops=int8_ops(qmodel),
        recipe=rec.as_dict(), float_layers=float_layers(qmodel),
        **({"accuracy_control": restorer.as_dict()} if gate is not None and max_drop is not None else {}),
        fp32={"model": str(src), "size_mb": model_size_bytes(src) / 1e6, **fp32_acc},
        int8={"model": str(dest), "size_mb": model_size_bytes(dest) / 1e6},
    )
    try:
        if gate is not None:
            with load(dest, backend, device, **eval_options) as int8:
                report["int8"].update(_accuracy(int8, gate))
            report["data"] = str(data)
            report["accuracy_drop"] = {k: report["fp32"][k] - report["int8"][k] for k in ("mAP50-95", "mAP50")}
            if gate.skipped:
                report["data_skipped"] = gate.skipped
            if max_drop is not None:
                ok = report["accuracy_drop"]["mAP50-95"] <= float(max_drop) + 1e-9
                report["gate"] = {"max_drop": float(max_drop), "metric": "mAP50-95", "result": "passed" if ok else "failed"}
        if speed:
            sp = compare_speed(src, dest, backend, device=device, runs=speed_runs)
            for key in ("fp32", "int8"):
                report[key].update(sp[key])
            report.update(fp32_f32=sp["fp32_f32"], speedup=sp["speedup"], recommendation=sp["recommendation"])
    finally:
        if gate is not None:
            gate.close()
    report["summary"] = format_report(report)
    report_path = None
    if write_report:
        report_path = dest.with_name(dest.stem + ".quantize.json")
        report_path.write_text(json.dumps(report, indent=2, default=str))
    if report.get("gate", {}).get("result") == "failed":
        drop = report["accuracy_drop"]["mAP50-95"]
        _remove(dest, backend)
        hint = ("; this method has no accuracy control: use --backend openvino or --method nncf, which keep the most "
                "sensitive layers in float" if method == "ort" else "")
        raise AccuracyDropError(
            f"the INT8 model loses {drop * 100:.2f} mAP50-95 points on {data} (FP32 {report['fp32']['mAP50-95']:.4f} -> "
            f"INT8 {report['int8']['mAP50-95']:.4f}), more than --max-drop {max_drop} allows; no model was kept{hint}")
    return QuantizeResult(dest, report, report_path)


def _accuracy(predictor: Any, gate: Any) -> dict[str, Any]:
    from unideploy.tools.evaluate import evaluate_detection
    from unideploy.tools.quantize.accuracy import EVAL_CONF, EVAL_IOU

    r = evaluate_detection(predictor, gate.dataset, conf=EVAL_CONF, iou=EVAL_IOU)
    return {"mAP50-95": r["mAP50-95"], "mAP50": r["mAP50"], "eval_images": r["images"]}


def _save(qmodel: Any, dest: Path, spec: Any, backend: str, src: Path) -> None:
    from unideploy.tools.convert.metadata import embed_onnx, embed_openvino

    dest.parent.mkdir(parents=True, exist_ok=True)
    if backend == "openvino":
        import openvino as ov

        embed_openvino(qmodel, spec)
        ov.save_model(qmodel, str(dest), compress_to_fp16=False)
        yml = src.parent / "metadata.yaml"
        if yml.is_file() and yml.resolve() != (dest.parent / "metadata.yaml").resolve():
            shutil.copyfile(yml, dest.parent / "metadata.yaml")  # Ultralytics' loader reads it
    else:
        import onnx

        embed_onnx(qmodel, spec)
        tmp = dest.with_name(dest.name + ".tmp")
        onnx.save(qmodel, str(tmp))
        os.replace(tmp, dest)


def _remove(dest: Path, backend: str) -> None:
    dest.unlink(missing_ok=True)
    if backend == "openvino":
        dest.with_suffix(".bin").unlink(missing_ok=True)


__all__ = ["quantize", "QuantizeResult", "AccuracyDropError", "CalibrationSet", "PRESETS", "default_output"]

