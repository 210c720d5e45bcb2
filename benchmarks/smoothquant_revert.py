"""Why accuracy control failed with NNCF's transformer model type: SmoothQuant scales survive a revert.

Quantizes the RT-DETR demo model as ``quantize --recipe rtdetr --max-drop`` does (transformer model type, weights
not compressed, the decoder ignored), then reverts EVERY quantizer group with NNCF's own restorer function, one
group at a time (what accuracy control does when no revert is enough), and compares the result with the float
model on 6 val images (max abs difference of the raw outputs, both at f32). Run with SmoothQuant at NNCF's
default and with SmoothQuant off (what accuracy control now uses for transformer-type recipes).

    python benchmarks/smoothquant_revert.py [MODEL.onnx] [OUT.json]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
import cv2
import nncf
import numpy as np
import openvino as ov
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters, RestoreMode
from nncf.common.factory import build_graph
from nncf.quantization.algorithms.accuracy_control.algorithm import QuantizationAccuracyRestorer, get_algo_backend
from nncf.quantization.algorithms.accuracy_control.ranker import Ranker
from nncf.common.quantization.quantizer_removal import revert_operations_to_floating_point_precision
from nncf.common.utils.backend import get_backend
from nncf.openvino.quantization.backend_parameters import BackendParameters
import unideploy
from unideploy.tools.quantize.calibration import CalibrationSet
from unideploy.tools.quantize.scope import float_nodes


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src/unideploy/assets/demo/shapes_rtdetr.onnx")
    core = ov.Core()
    with unideploy.load(src, "openvino", precision="f32", in_model_preprocess=False) as fp:
        cal = CalibrationSet("out/shapes_demo/images/train", fp, 30)
        xs = [fp.preprocess(cv2.imread(str(p)))[0][None] for p in sorted(Path("src/unideploy/assets/demo/val/images").glob("*"))[:6]]
    model = ov.convert_model(str(src))
    ignored = float_nodes(model, [], True)
    fcm = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ref = [[fcm(x)[o] for o in fcm.outputs] for x in xs]

    def diff(m):
        cm = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return max(float(np.abs(cm(x)[o] - r).max()) for x, rr in zip(xs, ref) for o, r in zip(cm.outputs, rr))

    def count(m, t): return sum(op.get_type_name() == t for op in m.get_ordered_ops())

    out = {"model": str(src)}
    for name, adv in (("smooth_quant_default", AdvancedQuantizationParameters(backend_params={BackendParameters.COMPRESS_WEIGHTS: False})),
                      ("smooth_quant_off", AdvancedQuantizationParameters(backend_params={BackendParameters.COMPRESS_WEIGHTS: False}, smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1, convolution=-1)))):
        t0 = time.time()
        kw = dict(preset=nncf.QuantizationPreset.MIXED, subset_size=30, fast_bias_correction=True, model_type=nncf.ModelType.TRANSFORMER,
                  ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
        if adv:
            kw["advanced_parameters"] = adv
        q = nncf.quantize(model.clone(), cal.nncf_dataset(False), **kw)
        backend = get_algo_backend(get_backend(q))
        ig, qg = build_graph(model), build_graph(q)
        QuantizationAccuracyRestorer._collect_original_biases_and_weights(ig, qg, model, backend)
        groups = Ranker(1, None, backend, None, 1).find_groups_of_quantizers_to_rank(qg)
        cur = q
        for g in groups:  # one group at a time, as the restorer does
            cur = revert_operations_to_floating_point_precision(g.operations, g.quantizers, cur, qg, RestoreMode.ACTIVATIONS_AND_WEIGHTS,
                  backend.get_op_with_weights_metatypes(), backend.is_node_with_weight, backend.get_weight_tensor_port_ids)
        r = {"quantized_max_abs_diff": diff(q), "fake_quantize": count(q, "FakeQuantize"), "groups": len(groups),
             "reverted_max_abs_diff": diff(cur), "fake_quantize_after_revert": count(cur, "FakeQuantize"),
             "multiply_ops_float_model": count(model, "Multiply"), "multiply_ops_quantized": count(q, "Multiply"),
             "multiply_ops_after_revert": count(cur, "Multiply"),
             "smooth_quant_nodes_after_revert": [op.get_friendly_name() for op in cur.get_ordered_ops() if "smooth" in op.get_friendly_name().lower()][:5],
             "s": round(time.time() - t0, 1)}
        out[name] = r
        print(name, json.dumps(r), flush=True)
    Path(sys.argv[2] if len(sys.argv) > 2 else "benchmarks/results/smoothquant_revert.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
