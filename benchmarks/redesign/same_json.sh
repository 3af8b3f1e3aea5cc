#!/usr/bin/env bash
# Checks that two medinfer binaries give the same JSON for the clinical pipelines on the same
# inputs, apart from timings: the redesign's "no behaviour change" (issue: pipelines with one
# face). Usage: benchmarks/redesign/same_json.sh BEFORE_BINARY AFTER_BINARY
#
# Inputs: a cardiac phantom exam (NIfTI and DICOM), the chest X-ray fixtures (PNG, JPEG, DICOM,
# plus a corrupt file), and the DICOM fixture folder as a CT archive (every series tagged or
# refused). Every backend the binaries find runs; each output is normalised (timings removed,
# keys sorted) and compared byte for byte.
set -euo pipefail
before=$(realpath "$1")
after=$(realpath "$2")
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fixtures="$root/crates/medinfer-io/tests/fixtures"

"$before" phantom cardiac -o "$work/exam" --seed 3 > /dev/null
"$before" phantom cardiac -o "$work/exam_dcm" --seed 4 --format dicom > /dev/null
mkdir -p "$work/cxr"
cp "$fixtures"/images/*.png "$fixtures"/images/*.jpg "$work/cxr/"
cp "$fixtures"/dicom/cr_mono1_u8.dcm "$work/cxr/" 2>/dev/null || true
printf 'not an image' > "$work/cxr/broken.png"

normalise() {
    python3 -c '
import json, sys
TIMING = {"timings", "images_per_s", "seconds", "model_load_ms", "phantom_ms"}
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
text = sys.stdin.read()
try:
    docs = [json.loads(text)]
except json.JSONDecodeError:
    docs = [json.loads(l) for l in text.splitlines() if l.strip()]
for d in docs:
    print(json.dumps(strip(d), sort_keys=True))
'
}

backends=$("$after" runtimes --json | python3 -c 'import json,sys; print(" ".join(b["backend"] for b in json.load(sys.stdin) if b["available"]))')
fail=0
check() {
    local name=$1; shift
    local a b
    a=$("$before" "$@" 2>/dev/null | normalise) || { echo "FAIL $name: the before binary failed"; fail=1; return; }
    b=$("$after" "$@" 2>/dev/null | normalise) || { echo "FAIL $name: the after binary failed"; fail=1; return; }
    if [ "$a" == "$b" ]; then
        echo "same  $name ($(printf '%s' "$a" | wc -c) bytes of normalised JSON)"
    else
        echo "DIFF  $name"
        diff <(printf '%s\n' "$a") <(printf '%s\n' "$b") | head -20
        fail=1
    fi
}
for b in $backends; do
    check "run cardiac nifti $b" run cardiac "$work/exam/cine.nii.gz" --backend "$b" --json
    check "run cardiac dicom $b fp32" run cardiac "$work/exam_dcm/dicom" --backend "$b" --precision fp32 --json
    check "run cxr $b" run cxr "$work/cxr" --backend "$b" --json
    check "run ct $b" run ct "$fixtures/dicom" --backend "$b" --json
done
check "phantom cardiac" phantom cardiac -o "$work/ph" --seed 5 --json
exit $fail
