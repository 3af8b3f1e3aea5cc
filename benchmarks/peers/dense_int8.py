#!/usr/bin/env python3
"""INT8 of a real pretrained dense-prediction model with dynamic height and width, side by side.

The model is not medinfer's: PP-OCRv4's text detector (a DBNet, input x [N,3,H,W] with every
dimension dynamic, output a text-probability map [N,1,H,W]), as shipped inside the PyPI wheel
`rapidocr_onnxruntime` (fetched with `pip download`, not installed). In one run on one machine:

  1. samples: synthetic document pages (lines of text in the DejaVu fonts, several sizes, colours,
     rotations, paper noise and a photo-like patch), rendered with Pillow at several sizes
     (multiples of 32, as the detector needs), preprocessed as RapidOCR does ((x/255 - 0.5)/0.5,
     CHW); 48 calibration and 48 validation pages, disjoint seeds;
  2. NNCF `nncf.quantize` with its defaults on the ONNX model (ONNX backend, QDQ ONNX out) and on
     the OpenVINO model (IR out), same calibration pages;
  3. `medinfer quantize` with no accuracy control, and with accuracy control
     (`--validate --metric iou:0.3 --max-drop 0.05`), same pages, each page at its own size;
  4. agreement of every INT8 model with FP32 on the validation pages: pooled IoU of the
     probability maps thresholded at 0.3 (DBNet's binarisation threshold), the same engine
     running FP32 and INT8 (ONNX Runtime and OpenVINO, Python APIs);
  5. latency at 1x3x640x640 on both engines in paired interleaved rounds (rounds.py).

Usage: benchmarks/peers/run_dense_int8.sh [--rounds 8] [--runs 10] [--json out.json]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rounds  # noqa: E402  (paired interleaved timing)

CORES = len(os.sched_getaffinity(0))
WHEEL = "rapidocr_onnxruntime==1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
SIZES = [(320, 480), (480, 640), (640, 640), (640, 480), (480, 480), (384, 512)]
THRESH = 0.3
WORDS = ("patient study series image report chest lung heart contrast axial sagittal coronal "
         "slice thickness window level dose protocol scanner field view matrix phase trigger "
         "echo repetition time flip angle 120 kVp 250 mAs 0.625 mm 512 x 512 MRN 0042817 "
         "ACC-2026-118 normal findings impression no acute cardiopulmonary process").split()


def fetch_model(cache):
    """The detector ONNX from the rapidocr_onnxruntime wheel (pip download, no install)."""
    path = os.path.join(cache, "ppocrv4_det.onnx")
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", d, WHEEL],
                       check=True)
        whl = glob.glob(os.path.join(d, "*.whl"))[0]
        with zipfile.ZipFile(whl) as z, open(path + ".part", "wb") as f:
            f.write(z.read(MEMBER))
    os.replace(path + ".part", path)
    return path


def page(seed):
    """One synthetic document page, HxWx3 uint8, with its size from SIZES."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont
    rng = np.random.default_rng(seed)
    h, w = SIZES[seed % len(SIZES)]
    fonts = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
    base = rng.integers(170, 256, 3)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in base))
    dr = ImageDraw.Draw(img)
    # a photo-like patch: smooth gradient with noise
    if rng.random() < 0.5:
        ph, pw = int(rng.integers(h // 6, h // 2)), int(rng.integers(w // 6, w // 2))
        y0, x0 = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        yy, xx = np.mgrid[0:ph, 0:pw]
        g = (np.sin(yy / rng.uniform(8, 40)) + np.cos(xx / rng.uniform(8, 40))) * 60 + 128
        patch = np.clip(g[..., None] + rng.normal(0, 12, (ph, pw, 3)), 0, 255).astype(np.uint8)
        img.paste(Image.fromarray(patch), (x0, y0))
    y = int(rng.integers(4, 30))
    while y < h - 12:
        size = int(rng.integers(10, 34))
        font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], size)
        x = int(rng.integers(4, max(5, w // 4)))
        text = " ".join(rng.choice(WORDS, int(rng.integers(2, 9))))
        col = tuple(int(c) for c in rng.integers(0, 90, 3))
        dr.text((x, y), text, font=font, fill=col)
        y += int(size * rng.uniform(1.3, 2.6))
    if rng.random() < 0.5:
        img = img.rotate(float(rng.uniform(-4, 4)), fillcolor=tuple(int(c) for c in base))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    a = np.asarray(img).astype(np.float32)
    a += rng.normal(0, rng.uniform(1, 8), a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


def preprocess(img):
    """RapidOCR's detector input: (x/255 - 0.5)/0.5, CHW, batch of 1."""
    x = (img.astype(np.float32) / 255.0 - 0.5) / 0.5
    return x.transpose(2, 0, 1)[None].copy()


def write_pages(folder, seeds):
    os.makedirs(folder, exist_ok=True)
    xs = []
    for s in seeds:
        x = preprocess(page(s))
        np.save(os.path.join(folder, f"page{s:05d}.npy"), x[0])
        xs.append(x)
    return xs


def outputs(engine, path, xs):
    """Probability maps of `path` on every input, one compiled model per input shape."""
    outs = []
    if engine == "ort":
        import onnxruntime as ort
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return [sess.run(None, {name: x})[0] for x in xs]
    import openvino as ov
    core = ov.Core()
    compiled = {}
    for x in xs:
        c = compiled.get(x.shape)
        if c is None:
            m = core.read_model(path)
            m.reshape({m.inputs[0].get_any_name(): list(x.shape)})
            c = compiled[x.shape] = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        outs.append(c.create_infer_request().infer({0: x})[c.outputs[0]].copy())
    return outs


def pooled_iou(ref, test, t=THRESH):
    inter = union = 0
    for r, q in zip(ref, test):
        a, b = r > t, q > t
        inter += int((a & b).sum())
        union += int((a | b).sum())
    return inter / union if union else 1.0


def child(spec):
    """Runs one output job in a child process so that an engine crash is contained."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec), "--child-out", out],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sig = -r.returncode if r.returncode < 0 else None
        return {"error": f"crash (signal {sig})" if sig else f"failed: {r.stderr.strip().splitlines()[-1:]}"}
    with open(out) as f:
        return json.load(f)


def run_child(spec, out):
    xs = [np.load(p) for p in spec["xs"]]
    ys = outputs(spec["engine"], spec["path"], xs)
    np.savez(spec["dest"], *ys)
    with open(out, "w") as f:
        json.dump({"ok": True}, f)


def medinfer_quantize(mi, fp32, out, calib, extra):
    t = time.perf_counter()
    p = subprocess.run([mi, "quantize", fp32, "-o", out, "--calib", calib, "--samples", "300", "--json"] + extra,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"medinfer quantize {' '.join(extra)} failed:\n{p.stderr}")
    return time.perf_counter() - t, json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--medinfer", default="target/release/medinfer")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/medinfer/models"))
    ap.add_argument("--calib", type=int, default=48, help="calibration pages")
    ap.add_argument("--val", type=int, default=48, help="validation pages")
    ap.add_argument("--max-drop", type=float, default=0.05, help="medinfer accuracy control: largest IoU drop")
    ap.add_argument("--tight-drop", type=float, default=0.02,
                    help="a second accuracy-controlled run with this tighter budget (0 = none), to show "
                         "which layers stay float and what that costs")
    ap.add_argument("--runs", type=int, default=10, help="timed requests per runner per round")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-timing", action="store_true", help="accuracy only")
    ap.add_argument("--json")
    ap.add_argument("--child")
    ap.add_argument("--child-out")
    a = ap.parse_args()
    if a.child:
        return run_child(json.loads(a.child), a.child_out)

    mi = os.path.abspath(a.medinfer)
    fp32 = fetch_model(a.cache)
    work = tempfile.mkdtemp(prefix="dense-int8-")
    calib_dir, val_dir = os.path.join(work, "calib"), os.path.join(work, "val")
    calib = write_pages(calib_dir, range(a.calib))
    val = write_pages(val_dir, range(10000, 10000 + a.val))
    print(f"{len(calib)} calibration + {len(val)} validation pages, sizes {sorted(set(x.shape[2:] for x in calib))}",
          flush=True)

    models, qtime, reports = {"fp32": fp32}, {}, {}
    # NNCF defaults, ONNX backend (QDQ ONNX that both engines run) and OpenVINO backend (IR).
    import nncf
    import onnx
    import openvino as ov
    t = time.perf_counter()
    q = nncf.quantize(onnx.load(fp32), nncf.Dataset(calib, lambda x: {"x": x}), subset_size=len(calib))
    path = os.path.join(work, "nncf-onnx-int8.onnx")
    onnx.save(q, path)
    qtime["nncf (onnx)"] = time.perf_counter() - t
    models["nncf-onnx-int8"] = path
    t = time.perf_counter()
    q = nncf.quantize(ov.Core().read_model(fp32), nncf.Dataset(calib), subset_size=len(calib))
    path = os.path.join(work, "nncf-ov-int8.xml")
    ov.save_model(q, path)
    qtime["nncf (openvino)"] = time.perf_counter() - t
    models["nncf-ov-int8"] = path
    # medinfer, without and with accuracy control
    path = os.path.join(work, "medinfer-int8.onnx")
    qtime["medinfer"], reports["medinfer"] = medinfer_quantize(mi, fp32, path, calib_dir, [])
    models["medinfer-int8"] = path
    path = os.path.join(work, "medinfer-ac-int8.onnx")
    qtime["medinfer (accuracy control)"], reports["medinfer-ac"] = medinfer_quantize(
        mi, fp32, path, calib_dir,
        ["--validate", val_dir, "--metric", f"iou:{THRESH}", "--max-drop", str(a.max_drop)])
    models["medinfer-ac-int8"] = path
    acs = {"medinfer-ac-int8": reports["medinfer-ac"].get("accuracy") or {}}
    if a.tight_drop > 0:
        path = os.path.join(work, "medinfer-ac-tight-int8.onnx")
        qtime["medinfer (accuracy control, tight)"], reports["medinfer-ac-tight"] = medinfer_quantize(
            mi, fp32, path, calib_dir,
            ["--validate", val_dir, "--metric", f"iou:{THRESH}", "--max-drop", str(a.tight_drop), "--force"])
        models["medinfer-ac-tight-int8"] = path
        acs["medinfer-ac-tight-int8"] = reports["medinfer-ac-tight"].get("accuracy") or {}
    for k, ac in acs.items():
        print(f"{k}: IoU all layers INT8 {ac.get('int8_all_layers')}, after control {ac.get('int8')} "
              f"(budget {ac.get('max_drop')}), stayed float: {ac.get('reverted')}", flush=True)

    # Agreement with FP32 on the validation pages, FP32 and INT8 on the same engine.
    results = {"cores": CORES, "quantize_seconds": qtime, "iou": {}, "latency": {}, "ratios": {},
               "accuracy_control": acs, "pages": {"calib": len(calib), "val": len(val)}}
    vpaths = []
    for i, v in enumerate(val):
        p = os.path.join(work, f"v{i}.npy")
        np.save(p, v)
        vpaths.append(p)
    for engine in ("ort", "ov"):
        ref = os.path.join(work, f"ref-{engine}.npz")
        r = child({"engine": engine, "path": fp32, "xs": vpaths, "dest": ref})
        if "error" in r:
            print(f"{engine} fp32: {r['error']}")
            continue
        refv = list(np.load(ref).values())
        for label, path in models.items():
            if label == "fp32" or (engine == "ort" and path.endswith(".xml")):
                continue
            dest = os.path.join(work, f"out-{engine}-{label}.npz")
            r = child({"engine": engine, "path": path, "xs": vpaths, "dest": dest})
            iou = r if "error" in r else pooled_iou(refv, list(np.load(dest).values()))
            results["iou"][f"{engine}/{label}"] = iou
            print(f"IoU@{THRESH} vs FP32  {engine:4} {label:18} {iou if isinstance(iou, dict) else f'{iou:.4f}'}",
                  flush=True)

    if not a.no_timing:
        x = preprocess(page(2))  # seed 2 is a 640 x 640 page
        xp = os.path.join(work, "x.npy")
        np.save(xp, x)
        workers = []
        for engine in ("ov", "ort"):
            for label, path in models.items():
                if engine == "ort" and path.endswith(".xml"):
                    continue
                workers.append(rounds.Worker(f"{engine}/{label}", {"kind": engine, "path": path, "x": xp,
                                                                   "warmup": a.warmup}))
        rounds.run_rounds(workers, a.rounds, a.runs, log=lambda m: print(m, flush=True))
        by = {w.label: w for w in workers}
        for w in workers:
            results["latency"][w.label] = w.summary()
        for engine in ("ov", "ort"):
            for label in models:
                k = f"{engine}/{label}"
                if label != "fp32" and k in by:
                    results["ratios"][f"{engine}/fp32 / {k}"] = rounds.paired_ratio(by[f"{engine}/fp32"], by[k])
        for engine in ("ort", "ov"):
            for k in acs:
                results["ratios"][f"{engine}/{k} / {engine}/medinfer-int8"] = rounds.paired_ratio(
                    by[f"{engine}/{k}"], by[f"{engine}/medinfer-int8"])

    # Table
    L, R = results["latency"], results["ratios"]
    print(f"\n### PP-OCRv4 text detector ({WHEEL}), {CORES} cores; IoU@{THRESH} of INT8 vs FP32 over "
          f"{len(val)} validation pages; latency at 1x3x640x640, median ms over {a.rounds} rounds x {a.runs} runs\n")
    print("| model | IoU (ORT) | IoU (OpenVINO) | ms ORT | speed-up vs FP32 (ORT) | ms OpenVINO | speed-up vs FP32 (OpenVINO) |")
    print("|---|---|---|---|---|---|---|")

    def f(v, fmt):
        return "-" if v is None else (fmt.format(v) if isinstance(v, float) else str(v))

    for label in models:
        row = [label]
        for engine in ("ort", "ov"):
            row.append(f(results["iou"].get(f"{engine}/{label}"), "{:.4f}"))
        for engine in ("ort", "ov"):
            d = L.get(f"{engine}/{label}") or {}
            row.append(f(d.get("median"), "{:.1f}"))
            r = R.get(f"{engine}/fp32 / {engine}/{label}")
            row.append("-" if not r else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})")
        print("| " + " | ".join(row) + " |")
    for k, ac in acs.items():
        cost = ", ".join(
            f"{e} {R[f'{e}/{k} / {e}/medinfer-int8']['median']:.2f}x"
            for e in ("ort", "ov") if R.get(f"{e}/{k} / {e}/medinfer-int8"))
        print(f"{k}: budget IoU >= {1 - ac.get('max_drop', 0):.2f}; stayed float: {ac.get('reverted')}; "
              f"time relative to all-INT8 (>1 = slower): {cost or '-'}")
    print("quantization time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in qtime.items()))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
