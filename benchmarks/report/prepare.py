"""Readies a trained report export for benchmarks/report/run.sh: the pixel values of one image
as the model's processor makes them (pixels0.npy) and the PyTorch checkpoint's greedy tokens
for it (reference.json), which every peer's tokens are checked against.

    python prepare.py EXPORT_DIR IMAGE.png OUT_DIR

EXPORT_DIR holds the ONNX export, its preprocessor_config.json and hf/ (the PyTorch
checkpoint, as training/report/train.py writes it). A 16-bit PNG is mapped to 8 bits by its own
min..max first, as medinfer's processor maps it.
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from transformers import ViTImageProcessor, VisionEncoderDecoderModel

export, image, out = sys.argv[1:4]
proc = ViTImageProcessor.from_pretrained(export)
a = np.array(Image.open(image)).astype(np.float64)
a = np.round((a - a.min()) / max(a.max() - a.min(), 1e-6) * 255.0).astype(np.uint8)
px = proc(images=Image.fromarray(a).convert("RGB"), return_tensors="np")["pixel_values"].astype(np.float32)
np.save(os.path.join(out, "pixels0.npy"), px)
model = VisionEncoderDecoderModel.from_pretrained(os.path.join(export, "hf")).eval()
with torch.no_grad():
    seq = model.generate(pixel_values=torch.from_numpy(px), do_sample=False)[0].tolist()
eos = model.generation_config.eos_token_id
json.dump({"cases": [{"input": "pixels0.npy", "setting": "greedy", "tokens": seq}], "eos": eos},
          open(os.path.join(out, "reference.json"), "w"))
print("greedy tokens", seq)
