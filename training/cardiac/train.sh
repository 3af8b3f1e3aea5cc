#!/usr/bin/env bash
# Trains medinfer's cardiac segmentation model from scratch and writes
# models/cardiac/cardiac-unet.onnx (FP32) and models/cardiac/cardiac-unet-int8.onnx (INT8).
#
#   training/cardiac/train.sh            # about 25 minutes on 2 cores
#
# 1. 240 phantom exams (seeds 100000-100239, never used for evaluation), each stored under its
#    own random conditions (rotation, mirroring, slice order, ED phase, tilted long axis) ->
#    ~12,400 patches (every slice at ED, ES and 3 random phases, 96x96 at 1.6 mm around the
#    located heart in the pipeline's anatomical view, shifted up to 12 mm at random).
# 2. train.py: PyTorch (CPU, 2 threads, deterministic), 4 epochs, AdamW + one-cycle, seed 7;
#    validation on 5 % of the exams (split by exam, exam.npy).
# 3. medinfer's own ONNX builder assembles the graph with the trained weights (zoo
#    architecture cardiac-unet), medinfer optimize folds the batch norms.
# 4. medinfer quantize: INT8 calibrated on 300 patches from other phantom exams, accuracy
#    control on Dice (max drop 0.005).
# 5. The accuracy on 20 held-out exams (seeds 1-20) under every condition set, FP32 and INT8,
#    for the model card.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
work="${MEDINFER_TRAIN_DIR:-$root/target/cardiac-training}"
venv="${MEDINFER_PEERS_VENV:-$HOME/.cache/medinfer/peers-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy torch==2.9.1
fi
cargo build --release -q -p medinfer-cli
mi="$root/target/release/medinfer"
mkdir -p "$work"
"$mi" phantom cardiac-training -o "$work/data" --exams 240 --first-seed 100000
"$venv/bin/python" training/cardiac/train.py --data "$work/data" --out "$work/weights" --epochs 4 --seed 7 --threads 2
cp "$work/weights/training_log.json" models/cardiac/training_log.json
"$mi" zoo build cardiac-unet --weights "$work/weights" \
  --weights-note "trained on cardiac phantoms (training/cardiac/train.sh, seed 7, 4 epochs)" -o "$work/raw.onnx"
"$mi" optimize "$work/raw.onnx" -o models/cardiac/cardiac-unet.onnx
# Calibration and validation patches from exams that neither training nor evaluation uses.
"$mi" phantom cardiac-training -o "$work/calib" --exams 30 --first-seed 200000 --extra-phases 1
"$mi" phantom cardiac-training -o "$work/val" --exams 20 --first-seed 300000 --extra-phases 1
"$mi" quantize models/cardiac/cardiac-unet.onnx -o models/cardiac/cardiac-unet-int8.onnx \
  --calib "$work/calib/x.npy" --samples 300 --validate "$work/val/x.npy" --validate-samples 300 \
  --metric dice --max-drop 0.005
cargo build --release -q -p medinfer-cli   # embeds the new models
"$mi" phantom cardiac-eval --first-seed 1 --exams 20 --precision fp32 --backend ort --conditions all
"$mi" phantom cardiac-eval --first-seed 1 --exams 20 --precision int8 --backend ort --conditions all
