#!/usr/bin/env bash
# Trains medinfer's fMRI network classifier from scratch and writes
# models/fmri/fmri-resnet50.onnx (FP32, weights stored as FP16) and
# models/fmri/fmri-resnet50-int8.onnx (INT8).
#
#   training/fmri/train.sh            # about 40 minutes on 2 cores
#
# 1. 40 phantom cohorts (seeds 100000-100039, never used for evaluation), each run through
#    `medinfer run fmri` with 12-16 components: every group and subject component becomes
#    three 45x45 slices through its peak (200 mm field of view), labelled with the source its
#    group map matches (about 5,000 samples).
# 2. train.py: PyTorch (CPU, 2 threads, deterministic), ResNet-50, 4 epochs, AdamW +
#    one-cycle, seed 7.
# 3. medinfer's own ONNX builder assembles the graph with the trained weights (zoo
#    architecture fmri-resnet50); medinfer optimize folds the batch norms and stores the
#    weights as FP16 (47 MB instead of 94; loaded back as FP32).
# 4. medinfer quantize: INT8 calibrated on the slices of 3 other cohorts (seeds 200000-),
#    accuracy control on top-1 agreement (max drop 0.005) on 3 more (seeds 300000-).
# 5. The accuracy on held-out cohorts (seeds 1-10), FP32 and INT8, for the model card.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
work="${MEDINFER_TRAIN_DIR:-$root/target/fmri-training}"
venv="${MEDINFER_PEERS_VENV:-$HOME/.cache/medinfer/peers-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy torch==2.9.1
fi
cargo build --release -q -p medinfer-cli
mi="$root/target/release/medinfer"
mkdir -p "$work" models/fmri
[ -f "$work/data/y.npy" ] || "$mi" phantom fmri-training -o "$work/data" --cohorts 40 --first-seed 100000
"$venv/bin/python" training/fmri/train.py --data "$work/data" --out "$work/weights" --epochs 4 --seed 7 --threads 2
cp "$work/weights/training_log.json" models/fmri/training_log.json
"$mi" zoo build fmri-resnet50 --weights "$work/weights" \
  --weights-note "trained on resting-state fMRI phantoms (training/fmri/train.sh, seed 7, 4 epochs)" -o "$work/raw.onnx"
"$mi" optimize "$work/raw.onnx" --store-fp16 -o models/fmri/fmri-resnet50.onnx
# Calibration and validation slices from cohorts that neither training nor evaluation uses.
[ -f "$work/calib/x.npy" ] || "$mi" phantom fmri-training -o "$work/calib" --cohorts 3 --first-seed 200000
[ -f "$work/val/x.npy" ] || "$mi" phantom fmri-training -o "$work/val" --cohorts 3 --first-seed 300000
"$mi" quantize models/fmri/fmri-resnet50.onnx -o models/fmri/fmri-resnet50-int8.onnx \
  --calib "$work/calib/x.npy" --samples 300 --validate "$work/val/x.npy" --validate-samples 300 \
  --metric top1 --max-drop 0.005
cargo build --release -q -p medinfer-cli   # embeds the new models
"$mi" phantom fmri-classify-eval --first-seed 1 --cohorts 10 --precision fp32 --backend ort
"$mi" phantom fmri-classify-eval --first-seed 1 --cohorts 10 --precision int8 --backend ort
