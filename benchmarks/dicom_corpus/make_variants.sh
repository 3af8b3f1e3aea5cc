#!/usr/bin/env bash
# Writes every base file of the public corpus into every transfer syntax dcmtk and GDCM can
# write, into OUT (default /tmp/dicom-variants): the "written by others in every transfer
# syntax" part of the coverage corpus. Needs: apt-get install dcmtk libgdcm-tools.
# Usage: make_variants.sh PYTHON [OUT]   (PYTHON: the venv with pydicom, to find its test files)
set -uo pipefail
py=$1; out=${2:-/tmp/dicom-variants}
mkdir -p "$out"
td=$("$py" -c 'import pydicom, os; print(os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files"))')
# Uncompressed sources of several kinds: CT 16-bit signed, MR, RGB, 8-bit, multi-frame, palette.
bases=(CT_small.dcm MR_small.dcm SC_rgb.dcm SC_rgb_16bit.dcm OBXXXX1A.dcm emri_small.dcm rtdose.dcm
       liver.dcm SC_rgb_2frame.dcm examples_palette.dcm)
n=0
for b in "${bases[@]}"; do
  src=$(find "$td" "$("$py" -c 'import data_store, os; print(os.path.dirname(data_store.__file__))' 2>/dev/null)" -name "$b" 2>/dev/null | head -1)
  [ -n "$src" ] || continue
  s=${b%.dcm}
  for opt in +te +tb +ti +td; do dcmconv "$opt" "$src" "$out/${s}_dcmconv${opt}.dcm" 2>/dev/null && n=$((n+1)); done
  dcmcrle "$src" "$out/${s}_dcmcrle.dcm" 2>/dev/null && n=$((n+1))
  for opt in +eb +ee +el +es; do dcmcjpeg "$opt" "$src" "$out/${s}_dcmcjpeg${opt}.dcm" 2>/dev/null && n=$((n+1)); done
  for opt in +el +en; do dcmcjpls "$opt" "$src" "$out/${s}_dcmcjpls${opt}.dcm" 2>/dev/null && n=$((n+1)); done
  for opt in --raw --rle --jpeg --lossy --j2k --jpegls; do
    gdcmconv "$opt" "$src" "$out/${s}_gdcmconv${opt}.dcm" 2>/dev/null && n=$((n+1))
  done
done
find "$out" -size 0 -delete
echo "$(ls "$out" | wc -l) variant files in $out"
