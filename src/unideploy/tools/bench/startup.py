"""``python -m unideploy.tools.bench.startup MODEL --backend NAME``: one honest cold load, in this fresh process.

Prints one JSON line: ``import_s`` (the runtime's import), ``load_s`` (Predictor construction),
``first_run_s`` (first inference + postprocess on a synthetic image), ``time_to_first_result_s`` (their
sum), ``rss_before_mb`` (before the runtime import) and ``peak_rss_mb`` (the process peak). Used by
:func:`unideploy.tools.bench.runners.startup`, which runs it twice to get the first and the cached load.

Example:
    $ python -m unideploy.tools.bench.startup model.onnx --backend onnxruntime
    {"import_s": 0.12, "load_s": 0.05, ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Load the model once in this process and print the start-up JSON line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m unideploy.tools.bench.startup")
    p.add_argument("model")
    p.add_argument("--backend", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--options", default="{}", help="backend options as JSON")
    args = p.parse_args(argv)

    import numpy as np

    from unideploy.runtime.backends.registry import get_backend
    from unideploy.tools.bench.timers import peak_rss_mb, rss_mb

    rss0 = rss_mb()
    cls = get_backend(args.backend)
    t0 = time.perf_counter()
    cls.require()
    t1 = time.perf_counter()
    from unideploy.runtime.predictor import Predictor

    pred = Predictor(args.model, args.backend, args.device, **json.loads(args.options))
    t2 = time.perf_counter()
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pred.predict_arrays([img])
    t3 = time.perf_counter()
    pred.close()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_run_s": t3 - t2, "time_to_first_result_s": t3 - t0,
                      "rss_before_mb": rss0, "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
