#!/usr/bin/env bash
# Three-stage offline mode (ais_bench folder conventions): each stage can run on another machine.
#   bash examples/offline_three_stage.sh MODEL IMAGES WORKDIR
set -euo pipefail
MODEL=${1:-src/unideploy/assets/demo/shapes_yolov8.onnx}
IMAGES=${2:-src/unideploy/assets/demo/val/images}
WORK=${3:-out/offline}

# 1. on any machine: images -> one .bin tensor per image + manifest.json
unideploy preprocess "$MODEL" "$IMAGES" --out "$WORK/pre" --format bin
# 2. on the inference box (any backend): tensors -> <stem>_<output>.bin in WORK/out/run1/
unideploy infer "$MODEL" --input "$WORK/pre" --output "$WORK/out" --outfmt bin --output-dirname run1
# 3. anywhere: outputs + manifest -> detections, saved like 'predict' does
unideploy postprocess "$MODEL" --input "$WORK/out/run1" --manifest "$WORK/pre/manifest.json" \
    --save-json "$WORK/detections.json" --save-txt "$WORK/labels"
