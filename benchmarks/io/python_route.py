#!/usr/bin/env python3
"""The usual Python route for the same two jobs as `medinfer bench-io`, timed the same way
(one warm-up, then RUNS repetitions; mean per stage):

cxr: Pillow decodes the 16-bit PNG, NumPy converts to float32 and applies TorchXRayVision's
     normalization ((2 x / 65535 - 1) x 1024), centre crop, scikit-image resize to 224 x 224
     (TorchXRayVision's XRayResizer: skimage.transform.resize, anti-aliased), NCHW array.
ct:  pydicom reads every file of the folder, sorts by Image Position projected on the slice
     normal, stacks pixel_array x slope + intercept into a float32 volume, NumPy windows it.
Usage: python_route.py cxr|ct PATH [--runs N]; prints JSON like medinfer's.
"""
import argparse
import json
import os
import time

import numpy as np


def cxr(path):
    from PIL import Image
    from skimage.transform import resize

    t = time.perf_counter()
    a = np.asarray(Image.open(path))
    d = time.perf_counter() - t
    t = time.perf_counter()
    a = a.astype(np.float32)
    a = (2 * (a / 65535.0) - 1.0) * 1024
    h, w = a.shape
    s = min(h, w)
    a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    a = resize(a, (224, 224), mode="constant", preserve_range=True).astype(np.float32)
    x = a[None, None]
    return [("decode", d), ("preprocess", time.perf_counter() - t)], x


def ct(path, c=40.0, w=400.0):
    import pydicom

    t = time.perf_counter()
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))]
    dss = [pydicom.dcmread(f) for f in files]
    o = np.array(dss[0].ImageOrientationPatient, dtype=float)
    n = np.cross(o[:3], o[3:])
    dss.sort(key=lambda d: float(np.dot(n, np.array(d.ImagePositionPatient, dtype=float))))
    vol = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    r = time.perf_counter() - t
    t = time.perf_counter()
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    vol = np.clip((vol - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    vol[vol <= 0] = 0
    return [("read + assemble", r), ("window", time.perf_counter() - t)], vol


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["cxr", "ct"])
    ap.add_argument("path")
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    fn = cxr if a.task == "cxr" else ct
    totals, sums = [], None
    for rep in range(a.runs + 1):
        t = time.perf_counter()
        stages, _ = fn(a.path)
        total = time.perf_counter() - t
        if rep == 0:
            sums = [[n, 0.0] for n, _ in stages]
            continue
        totals.append(total * 1e3)
        for acc, (_, v) in zip(sums, stages):
            acc[1] += v * 1e3 / a.runs
    print(json.dumps({"task": a.task, "path": a.path, "runs": a.runs, "stages_ms": sums,
                      "total_ms": {"mean": float(np.mean(totals)), "std": float(np.std(totals)), "min": float(np.min(totals))}}, indent=2))


if __name__ == "__main__":
    main()
