"""`medinfer run segment` against MONAI's sliding-window inference, time and peak memory, in one run.

Two parts, each tool in its own process (peak RSS from wait4), rounds interleaved:

1. **time**: a MONAI UNet with the spleen bundle's architecture (3-D, 1 -> 2 channels,
   channels 16-256, strides 2, 2 residual units; seeded weights: speed only), exported to ONNX;
   a synthetic CT of 512 x 512 x 600 voxels of 0.78 x 0.78 x 1.0 mm (int16 NIfTI, LPS-stored
   as DICOM converters write it); the spleen bundle's preprocessing (RAS, 1.5 x 1.5 x 2.0 mm,
   HU -57..164 -> 0..1 clipped), roi 96^3, overlap 0.25, sw_batch_size 1.
   - MONAI (torch predictor, and an onnxruntime session as predictor): LoadImage,
     EnsureChannelFirst, Orientation, Spacing, ScaleIntensityRange, sliding_window_inference,
     softmax, interpolation back to the oriented input grid, argmax. (No reorientation back and
     no file written: a little less work than medinfer does.)
   - medinfer `run segment` end to end (read, reorient, resample, normalise, windows, back to the
     stored grid, labels, mask.nii.gz, overlay.png, report.json), on ONNX Runtime and OpenVINO.
2. **memory**: the same CT at its own spacing (no resampling), a one-convolution model so that
   the data structures, not the network, set the peak: MONAI's sliding window (torch) on the
   whole 512 x 512 x 600 volume vs medinfer `run segment`.

Usage: run.sh [--rounds 2] [--skip-time] [--skip-memory]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def synthetic_ct(path, shape=(512, 512, 600), spacing=(0.78, 0.78, 1.0), seed=0):
    """A body cylinder (soft tissue 40 HU, fat -100), a spine (700 HU), a spleen-like ellipsoid
    (50 HU), air outside, noise sd 10 HU; stored LPS as converters from DICOM write it."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = (np.arange(nx) - nx / 2) * spacing[0]
    y = (np.arange(ny) - ny / 2) * spacing[1]
    X, Y = np.meshgrid(x, y, indexing="ij")
    body = (X / 170) ** 2 + (Y / 120) ** 2 < 1
    fat = body & ((X / 160) ** 2 + (Y / 110) ** 2 >= 1)
    spine = ((X) / 15) ** 2 + ((Y + 70) / 15) ** 2 < 1
    vol = np.empty(shape, np.int16)
    for k in range(nz):
        z = (k - nz / 2) * spacing[2]
        sl = np.full((nx, ny), -1000.0)
        sl[body] = 40
        sl[fat] = -100
        sl[spine] = 700
        spleen = ((X - 90) / 45) ** 2 + ((Y + 20) / 35) ** 2 + (z / 60) ** 2 < 1
        sl[spleen] = 50
        sl += rng.normal(0, 10, sl.shape)
        vol[:, :, k] = np.clip(sl, -1024, 3000).astype(np.int16)
    # LPS storage: x runs to the patient's left, y to posterior (RAS affine with -x, -y).
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    nib.save(nib.Nifti1Image(vol, aff), path)


def unet():
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="batch",
    ).eval()


class Tiny:
    """One 3 x 3 x 3 convolution, 1 -> 2 channels (the memory part)."""

    @staticmethod
    def make():
        import torch

        torch.manual_seed(0)
        return torch.nn.Conv3d(1, 2, 3, padding=1).eval()


def export(model, path, roi):
    import torch

    x = torch.zeros(1, 1, *roi)
    torch.onnx.export(
        model, x, path, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False
    )


def monai_role(args):
    """One MONAI run in this process; prints a JSON line of stage times."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Compose,
        EnsureChannelFirst,
        LoadImage,
        Orientation,
        ScaleIntensityRange,
        Spacing,
    )

    torch.set_num_threads(os.cpu_count())
    t0 = time.perf_counter()
    if args.part == "time":
        pre = Compose(
            [
                LoadImage(image_only=True),
                EnsureChannelFirst(),
                Orientation(axcodes="RAS"),
                Spacing(pixdim=(1.5, 1.5, 2.0), mode="bilinear"),
                ScaleIntensityRange(a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
            ]
        )
        oriented = Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS")])
        target = oriented(args.volume).shape[1:]
        img = pre(args.volume)
        net = unet()
    else:
        img = Compose([LoadImage(image_only=True), EnsureChannelFirst()])(args.volume)
        img = (img.float() + 1000.0) / 2000.0
        target = img.shape[1:]
        net = Tiny.make()
    x = img.as_tensor().unsqueeze(0).float() if hasattr(img, "as_tensor") else img.unsqueeze(0).float()
    t1 = time.perf_counter()
    if args.predictor == "torch":
        def predictor(t):
            return net(t)
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count()
        sess = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])

        def predictor(t):
            return torch.from_numpy(sess.run(None, {"x": t.numpy()})[0])

    with torch.no_grad():
        y = sliding_window_inference(x, args.roi, 1, predictor, overlap=0.25)
    t2 = time.perf_counter()
    with torch.no_grad():
        p = torch.softmax(y, 1)
        del y
        if tuple(p.shape[2:]) != tuple(target):
            p = torch.nn.functional.interpolate(p, size=tuple(target), mode="trilinear", align_corners=False)
        labels = torch.argmax(p, 1).to(torch.uint8)
    t3 = time.perf_counter()
    print(
        json.dumps(
            {
                "preprocess_s": t1 - t0,
                "sliding_window_s": t2 - t1,
                "postprocess_s": t3 - t2,
                "total_s": t3 - t0,
                "foreground_voxels": int(labels.sum()),
            }
        )
    )


def measured(cmd, env=None):
    """Runs cmd; returns (stdout, wall s, peak RSS MiB)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    out = p.stdout.read().decode()
    err = p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return out, wall, ru.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--medinfer")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    # roles (internal)
    ap.add_argument("--role", default=None)
    ap.add_argument("--part", default="time")
    ap.add_argument("--predictor", default="torch")
    ap.add_argument("--volume")
    ap.add_argument("--onnx")
    ap.add_argument("--roi", type=int, nargs=3, default=[96, 96, 96])
    args = ap.parse_args()
    if args.role == "monai":
        return monai_role(args)

    import monai
    import onnxruntime
    import torch

    work = args.work or tempfile.mkdtemp(prefix="medinfer-segbench-")
    os.makedirs(work, exist_ok=True)
    ct = os.path.join(work, "ct.nii")
    if not os.path.exists(ct):
        synthetic_ct(ct)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    result = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "monai": monai.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "volume": "512 x 512 x 600 int16, 0.78 x 0.78 x 1.0 mm",
        "parts": {},
    }
    me = [sys.executable, os.path.abspath(__file__), "--role", "monai", "--volume", ct]
    parts = []
    if not args.skip_time:
        onnx = os.path.join(work, "unet.onnx")
        export(unet(), onnx, (96, 96, 96))
        with open(os.path.join(work, "unet.json"), "w") as f:
            json.dump(
                {
                    "pipeline": "segment",
                    "input": {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 2.0]},
                    "normalization": {"kind": "range", "min": -57, "max": 164, "clip": True},
                    "labels": ["background", "spleen"],
                    "output": {"activation": "softmax"},
                    "sliding_window": {"roi": [96, 96, 96], "overlap": 0.25, "sw_batch_size": 1},
                },
                f,
            )
        parts.append(("time", onnx))
    if not args.skip_memory:
        onnx = os.path.join(work, "tiny.onnx")
        export(Tiny.make(), onnx, (96, 96, 96))
        with open(os.path.join(work, "tiny.json"), "w") as f:
            json.dump(
                {
                    "pipeline": "segment",
                    "normalization": {"kind": "range", "min": -1000, "max": 1000},
                    "labels": ["background", "fg"],
                    "output": {"activation": "softmax"},
                    "sliding_window": {"roi": [96, 96, 96], "overlap": 0.25, "sw_batch_size": 1},
                },
                f,
            )
        parts.append(("memory", onnx))
    for part, onnx in parts:
        tools = {
            "monai-torch": me + ["--part", part, "--predictor", "torch", "--onnx", onnx],
            "monai-onnxruntime": me + ["--part", part, "--predictor", "ort", "--onnx", onnx],
        }
        for backend in ["ort", "openvino"] if part == "time" else ["ort"]:
            tools[f"medinfer-{backend}"] = [
                args.medinfer, "run", "segment", ct, "--model", onnx, "-o",
                os.path.join(work, f"out-{part}-{backend}"), "--backend", backend, "--json",
            ]
        if part == "memory":
            del tools["monai-onnxruntime"]
        rows = {k: [] for k in tools}
        for r in range(args.rounds):
            for name, cmd in tools.items():
                out, wall, rss = measured(cmd)
                d = json.loads(out.strip().splitlines()[-1]) if name.startswith("monai") else json.loads(out)
                row = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss)}
                if name.startswith("monai"):
                    row.update({k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()})
                else:
                    row.update({k: round(v, 2) for k, v in d["timings"].items()})
                    row["windows"] = d["windows"]
                    row["foreground_voxels"] = d["labels"][0]["voxels"]
                rows[name].append(row)
                print(part, r, name, row, flush=True)
        result["parts"][part] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
