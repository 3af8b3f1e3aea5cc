#!/usr/bin/env python3
"""Writes the I/O benchmark's inputs into DIR: cxr.png (2000 x 2000, 16-bit, PadChest-like: a
smooth body with noise, about 6 MB) and ct/ (300 slices of 512 x 512 int16 CT, explicit VR little
endian, rescale -1024, 1.25 mm apart, file names shuffled)."""
import os
import sys

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

out = sys.argv[1]
os.makedirs(os.path.join(out, "ct"), exist_ok=True)
rng = np.random.default_rng(7)
y, x = np.mgrid[0:2000, 0:2000] / 2000.0
body = np.exp(-(((x - 0.5) / 0.35) ** 2 + ((y - 0.55) / 0.45) ** 2) ** 2)
img = 3000 + 40000 * body + rng.normal(0, 600, body.shape)
Image.fromarray(np.clip(img, 0, 65535).astype(np.uint16)).save(os.path.join(out, "cxr.png"))

series, study = generate_uid(), generate_uid()
yy, xx = np.mgrid[0:512, 0:512] / 512.0
order = rng.permutation(300)
for k in range(300):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, study
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [-250.0, -250.0, -400.0 + 1.25 * k]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.98, 0.98]
    ds.SliceThickness = 1.25
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    hu = np.where(((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.16, 40 + 30 * np.sin(k / 20 + 8 * xx), -1000)
    hu = hu + rng.normal(0, 15, hu.shape)
    ds.PixelData = np.clip(hu + 1024, -2048, 2047).astype(np.int16).tobytes()
    ds.save_as(os.path.join(out, "ct", f"IM{order[k]:05d}.dcm"), enforce_file_format=True)
print("wrote", out)
