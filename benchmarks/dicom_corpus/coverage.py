#!/usr/bin/env python3
"""DICOM decode coverage: medinfer against pydicom (+ pylibjpeg, pyjpegls) on public test files.

One correction to pydicom is made: it reads the plain Palette Color LUT Data of big-endian files
as little-endian words (its colours for OBXXXX1A_expb.dcm differ from those of OBXXXX1A.dcm, the
same image in little endian); the reference swaps those words back.

Every file of the corpus that carries pixel data is decoded by pydicom (`pixel_array`, every
frame; YBR converted to RGB as pydicom does by default; PALETTE COLOR through `apply_color_lut`;
grayscale through `apply_modality_lut`) and by `medinfer convert FILE -o x.npy` (a single file
converts to its frames in file order: (frames, rows, columns[, 3])). Each file lands in one class:

- correct: same shape, same values (exact up to float32 rounding for lossless transfer syntaxes;
  for lossy ones within 3 % of the value range at any sample and 0.5 % on average, as two JPEG
  decoders may differ);
- medinfer error: pydicom decodes it, medinfer refuses it with a one-line error (a gap);
- both refuse: pydicom cannot decode it either (medinfer's error must still be one clean line);
- WRONG: different shape or values, or a panic, or more than one line on stderr.

Usage: coverage.py MEDINFER [--extra DIR ...] [--json out.json] [--strict]

Exit status 1 when any file is WRONG; with --strict (what `cargo xtask test` runs) also when
medinfer refuses a file pydicom decodes.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import UID

LOSSY = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.111",
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102",
    "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.106",
}


def corpus(extra):
    """Public test files shipped in PyPI packages, plus extra folders (e.g. dcmtk conversions)."""
    roots = []
    import pydicom as _p
    roots.append(os.path.join(os.path.dirname(_p.__file__), "data", "test_files"))
    try:
        import data_store  # pydicom-data
        roots.append(os.path.join(os.path.dirname(data_store.__file__), "data"))
    except ImportError:
        pass
    try:
        import nibabel
        base = os.path.dirname(nibabel.__file__)
        roots += [os.path.join(base, "tests", "data"), os.path.join(base, "nicom", "tests", "data")]
    except ImportError:
        pass
    try:
        import highdicom
        roots.append(os.path.dirname(highdicom.__file__))
    except ImportError:
        pass
    roots += extra
    files = []
    for r in roots:
        for p in sorted(glob.glob(os.path.join(r, "**", "*"), recursive=True)):
            if not os.path.isfile(p) or p.endswith((".py", ".pyc", ".json", ".txt", ".dump", ".icc", ".gz")):
                continue
            with open(p, "rb") as f:
                head = f.read(132)
            if head[128:132] == b"DICM" or p.lower().endswith((".dcm", ".ima")) or "dicom" in r.lower():
                files.append(p)
    return sorted(set(files))


def reference(path):
    """(array (frames, rows, cols, samples) float64, transfer syntax, photometric) or raises."""
    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        return None
    ts = str(getattr(ds.file_meta, "TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    pi = str(ds.get("PhotometricInterpretation", ""))
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    if pi == "PALETTE COLOR":
        if ts == "1.2.840.10008.1.2.2":
            # pydicom reads plain Palette Color LUT Data of a big-endian file as little-endian
            # words (its output for OBXXXX1A_expb.dcm is byte-swapped against OBXXXX1A.dcm, the
            # same image in little endian); the reference swaps them back.
            for c in ("Red", "Green", "Blue"):
                kw = f"{c}PaletteColorLookupTableData"
                if kw in ds:
                    b = bytearray(ds[kw].value)
                    b[0::2], b[1::2] = b[1::2], b[0::2]
                    setattr(ds, kw, bytes(b))
        arr = apply_color_lut(arr, ds)
        spp = 3
    elif spp == 1 and "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds \
            and enhanced_rescale(ds, frames):
        # Enhanced multi-frame: each frame's own Pixel Value Transformation (pydicom's
        # apply_modality_lut reads only the top-level elements).
        arr = np.asarray(arr, dtype=np.float64).reshape(frames, int(ds.Rows), int(ds.Columns))
        for i, (slope, icpt) in enumerate(enhanced_rescale(ds, frames)):
            arr[i] = arr[i] * slope + icpt
    elif spp == 1 and "RescaleSlope" not in ds and "DoseGridScaling" in ds:
        # RT Dose: Gy = stored value x Dose Grid Scaling (PS3.3 C.8.8.3.3), which pydicom
        # leaves to the caller.
        arr = np.asarray(arr, dtype=np.float64) * float(ds.DoseGridScaling)
    elif spp == 1:
        arr = apply_modality_lut(arr, ds)
    arr = np.asarray(arr, dtype=np.float64).reshape(frames, int(ds.Rows), int(ds.Columns), spp)
    return arr, ts, pi


def enhanced_rescale(ds, frames):
    """Per-frame (slope, intercept) from the functional groups, or None."""
    def pvt(item):
        seq = item.get("PixelValueTransformationSequence") if item is not None else None
        if seq and "RescaleSlope" in seq[0]:
            return float(seq[0].RescaleSlope), float(seq[0].RescaleIntercept)
        return None
    shared = ds.get("SharedFunctionalGroupsSequence")
    sh = pvt(shared[0]) if shared else None
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if not per and not sh:
        return None
    out = []
    for i in range(frames):
        v = pvt(per[i]) if per and i < len(per) else None
        out.append(v or sh or (1.0, 0.0))
    return out


def ts_name(uid):
    try:
        return UID(uid).name if uid else "(none: guessed)"
    except Exception:
        return uid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("medinfer")
    ap.add_argument("--extra", action="append", default=[])
    ap.add_argument("--json")
    ap.add_argument("--strict", action="store_true",
                    help="also fail when medinfer refuses a file pydicom decodes")
    a = ap.parse_args()
    files = corpus(a.extra)
    rows = []
    t_py = t_mi = 0.0
    tmp_dir = tempfile.TemporaryDirectory(prefix="medinfer-coverage-")
    tmp = tmp_dir.name
    for path in files:
        t0 = time.perf_counter()
        try:
            ref = reference(path)
            ref_err = None
        except Exception as e:  # pydicom cannot decode it
            ref, ref_err = None, f"{type(e).__name__}: {e}"
        t1 = time.perf_counter()
        if ref is None and ref_err is None:
            continue  # no pixel data: not an image
        out = os.path.join(tmp, "x.npy")
        if os.path.exists(out):
            os.remove(out)
        t2 = time.perf_counter()
        p = subprocess.run([a.medinfer, "convert", path, "-o", out], capture_output=True, text=True)
        t3 = time.perf_counter()
        err = p.stderr.strip()
        clean = p.returncode != 0 and len(err.splitlines()) == 1 and err.startswith("error: ") \
            and "panicked" not in err and os.path.basename(path) in err
        row = {"file": path, "pydicom_error": ref_err, "medinfer_rc": p.returncode,
               "medinfer_error": err if p.returncode else None}
        if ref is not None:
            arr, ts, pi = ref
            t_py += t1 - t0
            t_mi += t3 - t2
            row.update(ts=ts, pi=pi, shape=list(arr.shape), pydicom_s=t1 - t0, medinfer_s=t3 - t2)
            if p.returncode != 0:
                row["class"] = "medinfer error" if clean else "WRONG (unclean error)"
            elif "panicked" in err:
                row["class"] = "WRONG (panic text)"
            else:
                got = np.load(out).astype(np.float64)
                if got.ndim == 2:  # round 1 wrote a single (rows, columns) frame
                    got = got[None, ..., None]
                if got.ndim == 3:
                    got = got[..., None]
                if got.shape != arr.shape:
                    row["class"] = f"WRONG (shape {list(got.shape)})"
                else:
                    d = np.abs(got - arr)
                    span = max(1.0, float(arr.max() - arr.min()))
                    if ts in LOSSY:
                        ok = d.max() <= 0.03 * span and d.mean() <= 0.005 * span
                    else:
                        ok = d.max() <= 1e-6 * max(1.0, float(np.abs(arr).max())) + 1e-3
                    row["max_abs_diff"] = float(d.max())
                    row["class"] = "correct" if ok else f"WRONG (values, max diff {d.max():.4g})"
        else:
            try:
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
                row.update(ts=str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""),
                           pi=str(ds.get("PhotometricInterpretation", "")))
            except Exception:
                row.update(ts="(unreadable)", pi="")
            row["class"] = "both refuse" if (p.returncode != 0 and clean) else (
                "medinfer decodes, pydicom refuses" if p.returncode == 0 else "WRONG (unclean error)")
        rows.append(row)
    # The table by transfer syntax and photometric interpretation.
    table = {}
    for r in rows:
        k = (ts_name(r.get("ts", "")), r.get("pi", ""))
        c = r["class"].split(" (")[0]
        table.setdefault(k, {}).setdefault(c, 0)
        table[k][c] += 1
    classes = ["correct", "medinfer error", "both refuse", "medinfer decodes, pydicom refuses", "WRONG"]
    print(f"| transfer syntax | photometric | " + " | ".join(classes) + " |")
    print("|---|---|" + "---|" * len(classes))
    for k in sorted(table):
        print(f"| {k[0]} | {k[1]} | " + " | ".join(str(table[k].get(c, 0) or "") for c in classes) + " |")
    tot = {c: sum(v.get(c, 0) for v in table.values()) for c in classes}
    print(f"| **all {len(rows)} files** | | " + " | ".join(str(tot[c]) for c in classes) + " |")
    print(f"\npydicom decode {t_py:.2f} s, medinfer convert {t_mi:.2f} s (one process per file, "
          f"startup included) on the {sum(1 for r in rows if r.get('shape'))} files pydicom decodes")
    for r in rows:
        if r["class"] != "correct" and r["class"] != "both refuse":
            print(f"  {r['class']}: {r['file']}: {r.get('medinfer_error') or ''} {('[pydicom: ' + r['pydicom_error'] + ']') if r['pydicom_error'] else ''}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "pydicom_s": t_py, "medinfer_s": t_mi}, f, indent=1)
    if tot["WRONG"] or (a.strict and tot["medinfer error"]):
        return 1
    if not rows:
        print("no corpus files found: is pydicom installed in this Python?")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
