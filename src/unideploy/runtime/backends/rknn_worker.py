"""rknn-toolkit2 worker: run by the Python of the isolated toolkit environment, never imported by unideploy.

rknn-toolkit2 pins numpy <= 1.26.4, onnx <= 1.18 and torch <= 2.4, so it lives in its own venv and this
script is the only code that imports it. Protocol: one JSON request per line on stdin, one JSON reply per
line on the original stdout (the toolkit's own prints are sent to stderr); arrays travel as .npy files.

Requests::

    {"cmd": "build", "onnx": ..., "target": "rk3588", "dtype": "fp16"|"int8", "dataset": txt|null,
     "mean": [[0,0,0]], "std": [[255,255,255]], "out": "model.rknn"|null, "simulate": bool,
     "disable_rules": [...]|null, "outputs": [tensor names]|null}
    {"cmd": "infer", "inputs": ["a.npy"], "data_format": "nhwc", "out_dir": ...}
    {"cmd": "close"}

Replies: {"ok": true, ...} or {"ok": false, "call": "rknn.build", "ret": -1, "error": "..."}.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))  # holds unideploy's rknn.py, torch.py: they must not shadow the toolkit's
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    reply_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the toolkit prints progress on stdout: keep it off the protocol channel
    sys.stdout = sys.stderr
    rknn = None

    def reply(**kw):
        reply_stream.write(json.dumps(kw) + "\n")
        reply_stream.flush()

    def check(fn, call, **kw):
        try:
            ret = fn(**kw)
        except Exception as e:  # the real toolkit raises (ValueError with its traceback) instead of returning -1
            last = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1:] or [type(e).__name__]
            raise RuntimeError(json.dumps({"call": call, "ret": None, "why": last[0]})) from None
        if ret != 0:
            raise RuntimeError(json.dumps({"call": call, "ret": ret}))

    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            cmd = req["cmd"]
            if cmd == "build":
                from rknn.api import RKNN

                if rknn is not None:
                    rknn.release()
                rknn = RKNN(verbose=bool(req.get("verbose", False)))
                cfg = dict(mean_values=req["mean"], std_values=req["std"], target_platform=req["target"])
                if req["dtype"] == "int8":
                    cfg.update(quantized_dtype=req.get("quantized_dtype", "w8a8"),
                               quantized_algorithm=req.get("quantized_algorithm", "normal"))
                if req.get("disable_rules"):
                    cfg.update(disable_rules=list(req["disable_rules"]))
                check(rknn.config, "rknn.config", **cfg)
                load = dict(model=req["onnx"])
                if req.get("outputs"):
                    load.update(outputs=list(req["outputs"]))
                check(rknn.load_onnx, "rknn.load_onnx", **load)
                check(rknn.build, "rknn.build", do_quantization=req["dtype"] == "int8", dataset=req.get("dataset"))
                if req.get("out"):
                    check(rknn.export_rknn, "rknn.export_rknn", export_path=req["out"])
                if req.get("simulate"):
                    check(rknn.init_runtime, "rknn.init_runtime")  # no target: the x86 simulator
                reply(ok=True)
            elif cmd == "infer":
                import numpy as np

                if rknn is None:
                    raise RuntimeError(json.dumps({"call": "rknn.inference", "ret": -1, "why": "no model built"}))
                xs = [np.load(p) for p in req["inputs"]]
                outs = rknn.inference(inputs=xs, data_format=req.get("data_format", "nhwc"))
                if outs is None:
                    raise RuntimeError(json.dumps({"call": "rknn.inference", "ret": -1}))
                paths = []
                for i, o in enumerate(outs):
                    p = os.path.join(req["out_dir"], f"out{i}.npy")
                    np.save(p, np.asarray(o))
                    paths.append(p)
                reply(ok=True, outputs=paths)
            elif cmd == "close":
                if rknn is not None:
                    rknn.release()
                    rknn = None
                reply(ok=True)
                return
            else:
                reply(ok=False, call=cmd, ret=-1, error=f"unknown command {cmd!r}")
        except Exception as e:  # noqa: BLE001 - every failure goes back to the parent
            info = {}
            try:
                info = json.loads(str(e))
            except ValueError:
                pass
            reply(ok=False, call=info.get("call", req.get("cmd")), ret=info.get("ret"),
                  error=info.get("why") or (None if info else f"{type(e).__name__}: {e}"),
                  trace=traceback.format_exc(limit=3))


if __name__ == "__main__":
    main()
