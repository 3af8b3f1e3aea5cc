"""Realistic 128^3 head volumes for the 3D brain-extraction U-Net (deepbrain's), made from real
MRI that ships in public packages, with the model's own preprocessing (resize to 128^3, divide
by the maximum; deepbrain/extractor.py).

Sources:
- nibabel's `tests/data/anatomical.nii`: a real T1 head scan (33 x 41 x 25 at 2 mm, skull on);
- nilearn's `datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`: the MNI152
  2009a T1 template (197 x 233 x 189 at 1 mm, brain only).

Each sample is one source under a seeded random augmentation, as a scanner and a head would
vary: rotation up to 12 degrees about a random axis, scale 0.9-1.1, shift up to 8 voxels,
left-right flip, gamma 0.7-1.5, a smooth multiplicative bias field (+-20 %), Gaussian noise
(sigma 0.5-3 % of the maximum). Written as NPY of shape (128, 128, 128, 1), float32, the model's
per-sample input (channels last).

    python volumes.py OUT_DIR --count N --seed S
"""
import argparse
import os

import nibabel
import nilearn
import numpy as np
from scipy import ndimage

SIZE = 128


def sources():
    nib_dir = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")
    nil_dir = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
    out = []
    for path in [
        os.path.join(nib_dir, "anatomical.nii"),
        os.path.join(nil_dir, "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
    ]:
        v = np.asarray(nibabel.load(path).dataobj, dtype=np.float32)
        v = np.clip(v, 0, None)
        v = ndimage.zoom(v, [SIZE / s for s in v.shape], order=1)
        out.append((os.path.basename(path), v / v.max()))
    return out


def rotation(rng, max_deg):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def augment(v, rng):
    m = rotation(rng, 12) / rng.uniform(0.9, 1.1)
    c = (np.array(v.shape) - 1) / 2
    shift = rng.uniform(-8, 8, size=3)
    offset = c - m @ (c + shift)
    v = ndimage.affine_transform(v, m, offset=offset, order=1, mode="constant")
    if rng.uniform() < 0.5:
        v = v[::-1]
    v = np.clip(v, 0, None) ** rng.uniform(0.7, 1.5)
    field = ndimage.zoom(rng.normal(size=(4, 4, 4)), SIZE / 4, order=3)
    v = v * (1 + 0.2 * field / (np.abs(field).max() + 1e-6))
    v = v + rng.normal(0, rng.uniform(0.005, 0.03), v.shape) * v.max()
    v = np.clip(v, 0, None)
    return v / v.max()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    src = sources()
    for i in range(a.count):
        name, v = src[i % len(src)]
        x = augment(v, rng).astype(np.float32)[..., None]
        np.save(os.path.join(a.out, f"vol{i:03d}.npy"), x)
    print(f"{a.count} volumes from {', '.join(n for n, _ in src)} -> {a.out}")


if __name__ == "__main__":
    main()
