"""Test double of ``rknnlite.api.RKNNLite`` (rknn-toolkit-lite2, on the board): load_rknn -> init_runtime(core_mask)
-> inference -> release, with the NPU_CORE_* masks; runs the double's .rknn files."""

from __future__ import annotations

from rknn_model import Compiled


class RKNNLite:
    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2 = 0, 1, 2, 4, 3, 7
    calls: list = []

    def __init__(self, verbose=False):
        self._m = None
        self._rt = False

    def load_rknn(self, path):
        RKNNLite.calls.append("load_rknn")
        self._m = Compiled.load(path)
        return 0 if self._m is not None else -1

    def init_runtime(self, core_mask=0):
        RKNNLite.calls.append(("init_runtime", core_mask))
        if self._m is None or core_mask not in (0, 1, 2, 4, 3, 7):
            return -1
        self._rt = True
        return 0

    def inference(self, inputs, data_format="nhwc"):
        return self._m.run(inputs, data_format) if self._rt else None

    def release(self):
        RKNNLite.calls.append("release")
        self._m = None
        self._rt = False
