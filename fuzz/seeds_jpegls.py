"""Seeds for the jpegls_decode fuzz target: every JPEG-LS frame of the DICOM fixtures, each
prefixed with the expected columns, rows (u16 LE) and samples per pixel.
Run with a Python that has pydicom: python fuzz/seeds_jpegls.py fuzz/corpus/jpegls_decode"""
import pathlib
import struct
import sys

import pydicom
from pydicom.encaps import generate_frames

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
fixtures = pathlib.Path(__file__).resolve().parent.parent / "crates/medinfer-io/tests/fixtures/dicom"
n = 0
for f in sorted(fixtures.glob("*.dcm")):
    ds = pydicom.dcmread(f, force=True)
    if getattr(ds.file_meta, "TransferSyntaxUID", None) not in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"):
        continue
    nf = int(getattr(ds, "NumberOfFrames", 1) or 1)
    head = struct.pack("<HHB", ds.Columns, ds.Rows, ds.SamplesPerPixel)
    for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=nf)):
        (out / f"{f.stem}_{i}").write_bytes(head + frame)
        n += 1
print(f"{n} seeds in {out}")
