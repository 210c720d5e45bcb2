"""The quantization methods: NNCF (OpenVINO IR or ONNX QDQ, optional accuracy control) and ONNX Runtime
static quantization (QOperator, uint8 activations / int8 weights).

Each function takes the float model's path, a :class:`CalibrationSet` and the float-node patterns, and
returns the quantized model in memory (``openvino.Model`` or ``onnx.ModelProto``) plus the names kept in float.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from unideploy.core.errors import InputError, ModelError
from unideploy.core.registry import Registry
from unideploy.tools.quantize.scope import float_nodes


@contextlib.contextmanager
def quiet_third_party(enabled: bool = True) -> Iterator[None]:
    """Silence what NNCF and OpenVINO print while quantizing (INFO log lines, progress bars and stray prints on
    stdout); warnings and errors still show. ``enabled=False`` (``--debug`` / ``--verbose``) lets all of it through.

    Example:
        >>> with quiet_third_party():
        ...     print("hidden")
    """
    if not enabled:
        yield
        return
    # NNCF's INFO lines; torch's "No CUDA runtime is found" warning when NNCF imports it on a CPU machine
    logs = {"nncf": logging.WARNING, "torch.utils.cpp_extension": logging.ERROR}
    levels = {name: logging.getLogger(name).level for name in logs}
    for name, level in logs.items():
        logging.getLogger(name).setLevel(level)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _nncf_preset(nncf: Any, preset: str) -> Any:
    return {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}[preset]


def no_smooth_quant() -> Any:
    """NNCF parameters with SmoothQuant off, for accuracy control with the transformer model type.

    With ``model_type=TRANSFORMER`` NNCF applies SmoothQuant: it divides each MatMul's activation by a per-channel
    scale (a Multiply inserted before the quantizer) and multiplies the weights by it. The accuracy restorer
    reverts a layer by putting back its original weights and removing its quantizers, but leaves the inserted
    activation scale: a "reverted" layer then computes ``(x / s) @ W`` instead of ``x @ W``. On the RT-DETR demo
    every revert made the drop worse, all 55 quantized operations were reverted, and the model with no
    quantizer left still lost 3.23 mAP50-95 points (``benchmarks/results/smoothquant_revert.json``). With
    SmoothQuant off a reverted layer is the float layer again.
    """
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    return AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1))


def _nncf_run(nncf: Any, model: Any, calib: Any, *, as_dict: bool, preset: str, ignored: list[str], gate: Any,
              max_drop: float | None, ranking_subset: int | None, model_type: str | None = None) -> Any:
    scope = nncf.IgnoredScope(names=ignored, validate=False) if ignored else None
    common = dict(preset=_nncf_preset(nncf, preset), subset_size=len(calib), fast_bias_correction=True, ignored_scope=scope)
    if model_type:
        common["model_type"] = nncf.ModelType(model_type)
    if gate is None:
        return nncf.quantize(model, calib.nncf_dataset(as_dict), **common)
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    if model_type == "transformer":
        common["advanced_quantization_parameters"] = no_smooth_quant()
    n_val = len(gate.dataset.samples)
    restorer = AdvancedAccuracyRestorerParameters(ranking_subset_size=min(n_val, ranking_subset or n_val),
                                                  num_ranking_workers=1)
    return nncf.quantize_with_accuracy_control(
        model, calib.nncf_dataset(as_dict), gate.nncf_dataset(), gate.validation_fn, max_drop=float(max_drop or 0.0),
        drop_type=nncf.DropType.ABSOLUTE, advanced_accuracy_restorer_parameters=restorer, **common)


def nncf_openvino(src: Path, calib: Any, *, preset: str, patterns: list[str], head: bool = True, gate: Any = None,
                  max_drop: float | None = None, ranking_subset: int | None = None,
                  model_type: str | None = None) -> tuple[Any, list[str]]:
    """NNCF post-training quantization for OpenVINO -> ``openvino.Model``.

    An ONNX source goes through ``openvino.convert_model`` first (not ``Core.read_model``): its graph
    transformations fuse ``x * sigmoid(x)`` into ``Swish``, which the CPU plugin fuses into the INT8
    convolution. Quantized as separate Sigmoid and Multiply, NNCF puts FakeQuantize on both inputs of every
    Multiply, and each SiLU then runs on its own in float between requantizations (the demo model was no
    faster in INT8 than in bf16 that way).
    """
    import nncf
    import openvino as ov

    from unideploy.runtime.backends.openvino import shared_core

    try:
        model = ov.convert_model(str(src)) if src.suffix.lower() == ".onnx" else shared_core(ov).read_model(str(src))
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{src}: openvino could not read it: {str(e).strip().splitlines()[0]}") from None
    ignored = float_nodes(model, patterns, head)
    q = _nncf_run(nncf, model, calib, as_dict=False, preset=preset, ignored=ignored, gate=gate, max_drop=max_drop,
                  ranking_subset=ranking_subset, model_type=model_type)
    return q, ignored


def nncf_onnx(src: Path, calib: Any, *, preset: str, patterns: list[str], head: bool = True, gate: Any = None,
              max_drop: float | None = None, ranking_subset: int | None = None,
              model_type: str | None = None) -> tuple[Any, list[str]]:
    """NNCF post-training quantization of an ONNX model -> QDQ ``onnx.ModelProto``."""
    import nncf
    import onnx

    model = onnx.load(str(src))
    ignored = float_nodes(model, patterns, head)
    q = _nncf_run(nncf, model, calib, as_dict=True, preset=preset, ignored=ignored, gate=gate, max_drop=max_drop,
                  ranking_subset=ranking_subset, model_type=model_type)
    return q, ignored


def ort_static(src: Path, calib: Any, *, preset: str, patterns: list[str], head: bool = True, **_: Any) -> tuple[Any, list[str]]:
    """ONNX Runtime static quantization, QOperator format, uint8 activations (asymmetric) and int8 weights.

    ``mixed`` quantizes weights per channel (more accurate), ``performance`` per tensor. The graph first goes
    through ``quant_pre_process`` (shape inference and graph optimisation), as ONNX Runtime recommends.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    work = Path(tempfile.mkdtemp(prefix="unideploy_ortq_"))
    try:
        pre = work / "pre.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - optional step: quantize the graph as it is
            shutil.copyfile(src, pre)
        ignored = float_nodes(onnx.load(str(pre)), patterns, head)
        out = work / "int8.onnx"
        try:
            quantize_static(str(pre), str(out), calib.ort_reader(), quant_format=QuantFormat.QOperator,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=preset == "mixed", calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=ignored, extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        except Exception as e:  # noqa: BLE001 - the quantizer's failures are about this model
            raise ModelError(f"{src.name}: onnxruntime could not quantize it: {str(e).strip().splitlines()[0]}") from None
        return onnx.load(str(out)), ignored
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: method name -> {backend whose model it writes: function}
METHODS: Registry[dict[str, Callable[..., tuple[Any, list[str]]]]] = Registry(
    "quantization method", error=InputError, choices="valid methods")
METHODS.register("nncf", {"openvino": nncf_openvino, "onnxruntime": nncf_onnx})
METHODS.register("ort", {"onnxruntime": ort_static})
