"""A two-input model through the INT8 recipe: accuracy, speed on both engines, and the kernels
each engine ran (issue 27's section 1 figures for a multi-input model).

No public two-input medical model could be found in a wheel, so the model is built here in the
shape multimodal clinical models take: an image branch (a ResNet-style CNN, 1 x 224 x 224,
4 stages of two basic blocks, 32-256 channels; 2.8 M parameters) and a clinical-vector branch (8 values
through two linear layers), concatenated into a linear head of 4 logits; seeded weights (torch),
exported to ONNX with inputs `image` and `clinical`. Samples: smooth-noise images with bright
blobs, clinical vectors of plausible scale (age in decades, sex, labs); 32 calibration and 64
validation samples as NPZ keyed by input name.

- medinfer `quantize` (portable target) with accuracy control on top-1 agreement
  (`--metric top1 --max-drop 0.01`), and without;
- INT8 vs FP32 on ONNX Runtime and OpenVINO on the validation samples: top-1 agreement and
  cosine of the logits, raw and centred (minus their FP32 mean: seeded weights make every
  sample's logits nearly the same, so the centred part is where INT8 error would show);
- latency, batch 1, `medinfer bench` on each engine, rounds interleaved (median of each run's
  p50); and the kernels each engine ran (OpenVINO exec types, ONNX Runtime's profile).

Usage: run_two_input.sh [--rounds 3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peers"))
import int8  # noqa: E402  (kernels_ov, kernels_ort)


def model():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class TwoInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 32
            for cout, stride in [(32, 1), (64, 2), (128, 2), (256, 2)]:
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.body = nn.Sequential(*layers)
            self.clin = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
            self.head = nn.Linear(256 + 64, 4)

        def forward(self, image, clinical):
            f = self.body(self.stem(image)).mean((2, 3))
            return self.head(torch.cat([f, self.clin(clinical)], 1))

    torch.manual_seed(0)
    m = TwoInput()
    # Non-trivial batch-norm statistics, as a trained model has.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    return m.eval()


def samples(n, seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = np.empty((n, 1, 224, 224), np.float32)
    yy, xx = np.mgrid[:224, :224]
    for i in range(n):
        v = ndimage.gaussian_filter(rng.normal(size=(224, 224)), 6) * 8
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(40, 184), rng.uniform(40, 184), rng.uniform(8, 30)
            v += 1.5 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
        img[i, 0] = v
    clin = np.stack(
        [rng.uniform(2, 9, n), rng.integers(0, 2, n), rng.normal(1, 0.3, n), rng.normal(140, 5, n) / 100,
         rng.normal(4, 1, n), rng.uniform(0, 1, n), rng.normal(0, 1, n), rng.normal(7.4, 0.05, n)], 1
    ).astype(np.float32)
    return img, clin


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--medinfer", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import onnxruntime as ort
    import openvino as ov
    import torch

    work = tempfile.mkdtemp(prefix="medinfer-twoinput-")
    fp32 = os.path.join(work, "two_input.onnx")
    m = model()
    torch.onnx.export(
        m, (torch.zeros(1, 1, 224, 224), torch.zeros(1, 8)), fp32, input_names=["image", "clinical"],
        output_names=["logits"], dynamic_axes={"image": {0: "n"}, "clinical": {0: "n"}, "logits": {0: "n"}},
        opset_version=17, dynamo=False,
    )
    for name, n, seed in [("calib", 32, 1), ("val", 64, 2)]:
        d = os.path.join(work, name)
        os.makedirs(d)
        img, clin = samples(n, seed)
        for k in range(0, n, 8):
            np.savez(os.path.join(d, f"part{k // 8}.npz"), image=img[k:k + 8], clinical=clin[k:k + 8])
    val_img, val_clin = samples(64, 2)
    mi = args.medinfer
    models = {"fp32": fp32}
    report = {}
    for tag, extra in [("int8", []), ("int8_ac", ["--validate", os.path.join(work, "val"), "--metric", "top1", "--max-drop", "0.01"])]:
        out = os.path.join(work, f"{tag}.onnx")
        r = subprocess.run([mi, "quantize", fp32, "-o", out, "--calib", os.path.join(work, "calib"), "--json"] + extra,
                           check=True, capture_output=True, text=True)
        q = json.loads(r.stdout)
        report[tag] = {"float_layers": [l["name"] for l in q["report"]["layers"] if not l.get("quantized")],
                       "accuracy": q.get("accuracy")}
        models[tag] = out
    feeds = {"image": val_img, "clinical": val_clin}

    def logits(engine, path):
        if engine == "ort":
            s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            return s.run(None, feeds)[0]
        core = ov.Core()
        c = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return c(feeds)[0]

    result = {"cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(":\t "),
              "cores": os.cpu_count(), "quantize": report, "accuracy": {}, "kernels": {}, "latency_ms": {}}
    for engine in ["ort", "openvino"]:
        ref = logits(engine, fp32)
        for tag in ["int8", "int8_ac"]:
            y = logits(engine, models[tag])
            cos = float((ref * y).sum() / (np.linalg.norm(ref) * np.linalg.norm(y)))
            # Seeded weights give every sample nearly the same logits (one class wins for all),
            # so the sample-dependent part is what is judged: logits minus their FP32 mean
            # over the validation set; agreement of its arg-max, its cosine, and the error
            # relative to its size.
            mu = ref.mean(0)
            rc, yc = ref - mu, y - mu
            result["accuracy"][f"{engine}/{tag}"] = {
                "top1_agreement_raw": float((ref.argmax(1) == y.argmax(1)).mean()),
                "top1_agreement_centred": float((rc.argmax(1) == yc.argmax(1)).mean()),
                "cosine_raw": round(cos, 5),
                "cosine_centred": round(float((rc * yc).sum() / (np.linalg.norm(rc) * np.linalg.norm(yc))), 5),
                "relative_error_centred": round(float(np.linalg.norm(y - ref) / np.linalg.norm(rc)), 4),
            }
        one = {"image": val_img[:1], "clinical": val_clin[:1]}
        for tag, path in models.items():
            fn = int8.kernels_ov if engine == "openvino" else int8.kernels_ort
            result["kernels"][f"{engine}/{tag}"] = fn(path, one)
    runs = {f"{b}/{t}": [] for b in ["ort", "openvino"] for t in models}
    for _ in range(args.rounds):
        for key in runs:
            b, t = key.split("/")
            r = subprocess.run([mi, "bench", models[t], "-b", b, "--batch", "1", "--runs", "30", "--warmup", "5", "--json"],
                               check=True, capture_output=True, text=True)
            runs[key].append(json.loads(r.stdout)[0]["latency_ms"]["p50"])
    for key, v in runs.items():
        result["latency_ms"][key] = {"median_p50": round(float(np.median(v)), 2), "rounds": [round(x, 2) for x in v]}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
