"""`medinfer run segment` with a real pretrained 3-D model on real MRI, none of it made here.

- Model: deepbrain's brain-extraction U-Net (PyPI `deepbrain`, TensorFlow, converted to ONNX by
  benchmarks/real3d/model.sh): channels-last (1, 128, 128, 128, 1) in and out, sigmoid.
- Volume: the MNI152 2009a T1 template that ships inside nilearn (197 x 233 x 189 at 1 mm).
- deepbrain's own recipe (its extractor.py): resize the volume to 128^3, divide by the maximum,
  run, resize the probabilities back, threshold 0.5. As a `run segment` config: the stored
  grid, voxel size = FOV / 128 per axis, minmax normalisation, `channels_last`, logits
  (already probabilities), one 128^3 window.
- Checked against: (1) that recipe written in Python with torch's trilinear interpolation
  (align_corners=False) and onnxruntime, as a user of deepbrain would run it (skimage's
  anti-aliased resize replaced by plain linear, which is what medinfer claims to do); (2)
  nilearn's MNI152 brain mask (`load_mni152_brain_mask`), an independent anatomical reference.
  Dice and volumes for each, and the times.

Usage: run_real.sh [--backend ort]
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import nibabel as nib
import numpy as np


def dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--medinfer", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import nilearn
    import onnxruntime as ort
    import torch
    from nilearn.datasets import load_mni152_brain_mask

    work = tempfile.mkdtemp(prefix="medinfer-realbrain-")
    src = os.path.join(
        os.path.dirname(nilearn.__file__),
        "datasets",
        "data",
        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    )
    img = nib.load(src)
    vol = np.asarray(img.dataobj, dtype=np.float32)
    shape = vol.shape
    zooms = img.header.get_zooms()[:3]
    spacing = [float(z) * s / 128 for z, s in zip(zooms, shape)]

    # medinfer
    model = os.path.join(work, "deepbrain.onnx")
    os.symlink(args.model, model)
    with open(os.path.join(work, "deepbrain.json"), "w") as f:
        json.dump(
            {
                "pipeline": "segment",
                "input": {"layout": "channels_last", "orientation": "stored", "spacing_mm": spacing},
                "normalization": {"kind": "minmax"},
                "labels": ["brain"],
                "output": {"activation": "logits", "thresholds": [0.5]},
            },
            f,
        )
    out = os.path.join(work, "out")
    t = time.perf_counter()
    rep = json.loads(
        subprocess.run(
            [args.medinfer, "run", "segment", src, "--model", model, "-o", out, "--backend", args.backend, "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    t_medinfer = time.perf_counter() - t
    mask = np.asarray(nib.load(os.path.join(out, "mask.nii.gz")).dataobj) > 0

    # deepbrain's recipe in Python (torch resize, onnxruntime)
    t = time.perf_counter()
    x = torch.from_numpy(vol)[None, None]
    x = torch.nn.functional.interpolate(x, size=(128, 128, 128), mode="trilinear", align_corners=False)[0, 0].numpy()
    x = (x - x.min()) / (x.max() - x.min())
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    p = sess.run(None, {sess.get_inputs()[0].name: x[None, ..., None].astype(np.float32)})[0][0, ..., 0]
    p = torch.nn.functional.interpolate(torch.from_numpy(p)[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    ref = p > 0.5
    t_python = time.perf_counter() - t

    anat = np.asarray(load_mni152_brain_mask(resolution=1).dataobj) > 0
    voxel_ml = float(np.prod(zooms)) / 1000.0
    result = {
        "volume": "nilearn MNI152 2009a T1 template, %s at %s mm" % ("x".join(map(str, shape)), "x".join("%.1f" % z for z in zooms)),
        "model": "deepbrain extractor (PyPI), ONNX sha256 " + rep["model"]["sha256"][:16],
        "backend": rep["backend"],
        "medinfer_ml": round(float(mask.sum()) * voxel_ml, 1),
        "python_recipe_ml": round(float(ref.sum()) * voxel_ml, 1),
        "nilearn_mask_ml": round(float(anat.sum()) * voxel_ml, 1),
        "dice_medinfer_vs_python_recipe": round(dice(mask, ref), 4),
        "voxels_differing": int((mask != ref).sum()),
        "dice_medinfer_vs_nilearn_mask": round(dice(mask, anat), 4),
        "dice_python_recipe_vs_nilearn_mask": round(dice(ref, anat), 4),
        "medinfer_s": round(t_medinfer, 2),
        "medinfer_timings": rep["timings"],
        "python_recipe_s": round(t_python, 2),
        "overlay": os.path.join(out, "overlay.png"),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
