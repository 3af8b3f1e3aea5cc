#!/usr/bin/env bash
# medinfer's group ICA + dual regression against nilearn's CanICA and DictLearning on one
# phantom cohort, in one run, plus the NumPy check of dual regression.
#
#   benchmarks/peers/fmri.sh                 # 20 subjects, 13 components; CanICA takes ~7 min
#   SUBJECTS=10 benchmarks/peers/fmri.sh
#
# Writes target/fmri-peers/{cohort,medinfer,canica,dictlearning} and prints, per tool, wall
# time, peak RSS and the recovery figures of `medinfer phantom fmri-eval` (the same scorer for
# every tool's maps). The peers get medinfer's default preprocessing (6 mm, detrend,
# 0.01-0.1 Hz, standardise, EPI mask) and the same number of components.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
work="${MEDINFER_FMRI_PEERS_DIR:-$root/target/fmri-peers}"
venv="${MEDINFER_FMRI_PEERS_VENV:-$HOME/.cache/medinfer/venv-fmri-peers}"
subjects="${SUBJECTS:-20}"
components="${COMPONENTS:-13}"
seed="${SEED:-5}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import nilearn, scipy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check nilearn==0.12.1
fi
cargo build --release -q -p medinfer-cli
mi="$root/target/release/medinfer"
py="$venv/bin/python"
rm -rf "$work" && mkdir -p "$work"
"$mi" phantom fmri -o "$work/cohort" --subjects "$subjects" --seed "$seed"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
/usr/bin/time -f "medinfer wall %e s, peak RSS %M KB" \
  "$mi" run fmri "$work"/cohort/sub-*.nii.gz -o "$work/medinfer" --components "$components" | tail -2
"$mi" phantom fmri-eval --cohort "$work/cohort" --maps "$work/medinfer" | tail -1
for tool in canica dictlearning; do
  "$py" benchmarks/peers/fmri_peers.py "$tool" "$work/cohort" "$work/$tool" --components "$components"
  "$mi" phantom fmri-eval --cohort "$work/cohort" --maps "$work/$tool/group_maps.nii.gz" | tail -1
done
"$py" benchmarks/peers/fmri_peers.py dualreg "$work/cohort" "$work/medinfer" --subjects 3
# The z maps (--stat z) against SciPy's t -> z of the NumPy t maps.
"$mi" run fmri "$work"/cohort/sub-*.nii.gz -o "$work/medinfer-z" --components "$components" --stat z --no-classify >/dev/null
"$py" benchmarks/peers/fmri_peers.py dualreg "$work/cohort" "$work/medinfer-z" --subjects 3
