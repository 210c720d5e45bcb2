"""Test double of ``rknn.api.RKNN`` (rknn-toolkit2): same methods, return codes (0 / -1) and call order.

config -> load_onnx -> build(do_quantization, dataset) -> export_rknn / init_runtime() (x86 simulator) ->
inference(inputs, data_format) -> release. Enforced: each step needs the previous one; ``build`` with
quantization needs a dataset file whose lines name existing images/.npy files of the model's input size
(1, 3, H, W) uint8 (the real toolkit reads .npy in the ONNX's NCHW layout); the simulator cannot run a model loaded with ``load_rknn`` (as the real toolkit says); targets
are checked; ``load_onnx(outputs=[...])`` ends the graph at those tensors (unknown names fail, as in the real
toolkit). Accuracy is emulated coarsely: fp16 rounds outputs to float16; INT8 quantizes each output tensor to 8 bits
over its own range (one scale per tensor, as the NPU's per-tensor output quantization does), so an output that
concatenates box pixels with 0-1 scores loses the scores, the failure the real toolkit shows.
"""

from __future__ import annotations

import numpy as np

from rknn_model import Compiled, fail

TARGETS = {"rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1103", "rv1106", "rv1103b", "rv1106b", "rv1126b", "rk2118"}


class RKNN:
    def __init__(self, verbose=False, verbose_file=None):
        self._cfg = None
        self._onnx = None
        self._built = None
        self._runtime = False
        self._from_rknn = False

    def config(self, mean_values=None, std_values=None, target_platform=None, quantized_dtype="w8a8",
               quantized_algorithm="normal", optimization_level=3, **kwargs):
        if target_platform not in TARGETS or fail("config"):
            print(f"E config: target_platform {target_platform!r} is not supported")
            return -1
        self._cfg = dict(mean=mean_values or [[0, 0, 0]], std=std_values or [[1, 1, 1]], target=target_platform,
                         qdtype=quantized_dtype, qalgo=quantized_algorithm)
        return 0

    def load_onnx(self, model, inputs=None, input_size_list=None, outputs=None):
        if self._cfg is None or fail("load_onnx"):
            print("E load_onnx: call config first")
            return -1
        try:
            with open(model, "rb") as f:
                self._onnx = f.read()
        except OSError:
            return -1
        if outputs:
            import onnx

            m = onnx.shape_inference.infer_shapes(onnx.load_from_string(self._onnx))
            known = {v.name: v for v in [*m.graph.value_info, *m.graph.output]}
            missing = [o for o in outputs if o not in known]
            if missing:
                print(f"E load_onnx: outputs {missing} are not tensors of the model")
                return -1
            del m.graph.output[:]
            m.graph.output.extend([known[o] for o in outputs])
            self._onnx = m.SerializeToString()
        return 0

    def build(self, do_quantization=False, dataset=None, rknn_batch_size=None):
        if self._onnx is None or fail("build"):
            return -1
        c = self._cfg
        compiled = Compiled(self._onnx, c["mean"], c["std"], c["target"], "int8" if do_quantization else "fp16")
        if do_quantization:
            if not dataset:
                print("E build: do_quantization=True needs a dataset")
                return -1
            shape = compiled.inp.shape
            with open(dataset) as f:
                lines = [ln.strip() for ln in f if ln.strip()]
            if not lines:
                return -1
            for ln in lines:
                arr = np.load(ln) if ln.endswith(".npy") else None
                if arr is None or arr.shape != (1, 3, shape[2], shape[3]) or arr.dtype != np.uint8:
                    print(f"E build: dataset entry {ln} shape is wrong, expect 'nchw' like (1, 3, {shape[2]}, {shape[3]}) uint8")
                    return -1
        self._built = compiled
        return 0

    def export_rknn(self, export_path):
        if self._built is None or fail("export_rknn"):
            return -1
        self._built.save(export_path)
        return 0

    def load_rknn(self, path):
        self._built = Compiled.load(path)
        self._from_rknn = True
        return 0 if self._built is not None else -1

    def init_runtime(self, target=None, device_id=None, perf_debug=False, eval_mem=False, core_mask=None):
        if self._built is None or fail("init_runtime"):
            return -1
        if target is None and self._from_rknn:
            print("E init_runtime: the simulator cannot run a model loaded with load_rknn; load_onnx + build instead")
            return -1
        self._runtime = True
        return 0

    def inference(self, inputs, data_format="nhwc", inputs_pass_through=None):
        if not self._runtime:
            print("E inference: init_runtime first")
            return None
        return self._built.run(inputs, data_format)

    def release(self):
        self._built = None
        self._runtime = False
