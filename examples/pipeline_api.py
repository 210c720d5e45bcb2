"""The detect -> crop -> classify pipeline of detect_then_classify.yaml, built with the Python API.

python examples/pipeline_api.py IMAGE_OR_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

from unideploy.apps.graphs import Crop, Merge, Model, Pipeline

HERE = Path(__file__).resolve().parent


def main(source: str) -> None:
    stages = [
        Model("detect", "unideploy:assets/demo/shapes_yolov8.onnx", conf=0.25, iou=0.7),
        Crop("crops", ["input", "detect"], pad=0.1, square=True, min_size=4),
        Model("classify", "shapes_crop_cls.onnx"),
        Merge("labelled", ["detect", "classify"], score="product"),
    ]
    with Pipeline(stages, name="detect_then_classify", base_dir=HERE) as pipeline:
        print(pipeline.describe())
        for item, result, error, _ in pipeline.stream(source):
            if error is not None:
                print(f"{item.name}: skipped ({error})")
                continue
            det = result.output
            print(
                f"{item.name}: {len(det)} box(es): "
                + ", ".join(f"{n} {c:.2f}" for n, c in zip(det.class_names, det.confidence))
            )
        print({k: f"{v * 1e3:.1f} ms" for k, v in pipeline.timings().items()})


if __name__ == "__main__":
    main(
        sys.argv[1]
        if len(sys.argv) > 1
        else str(Path(__file__).resolve().parents[1] / "src/unideploy/assets/demo/val/images")
    )
