#!/usr/bin/env python3
"""Validates the deployment manifests without a cluster.

- deploy/k8s/*.yaml: against the Kubernetes 1.37 OpenAPI schemas bundled in the
  `kubernetes-validate` package, strict (unknown fields are errors).
- deploy/kserve/*.yaml: KServe's CRDs are not in those schemas; they are checked for the fields
  KServe needs (a v2 ServingRuntime for the onnx format whose container runs `medinfer serve`
  on /mnt/models, and an InferenceService that names that runtime).

Usage: python deploy/validate.py   (run by `cargo xtask test` in its own venv)
"""
import glob
import os
import subprocess
import sys

import yaml

root = os.path.dirname(os.path.abspath(__file__))
k8s = sorted(glob.glob(os.path.join(root, "k8s", "*.yaml")))
r = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *k8s])
if r.returncode != 0:
    raise SystemExit("Kubernetes manifests failed validation")
print(f"ok    {len(k8s)} Kubernetes manifest file(s) valid (strict, Kubernetes 1.37)")

errors = []
for path in sorted(glob.glob(os.path.join(root, "kserve", "*.yaml"))):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    runtimes = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ServingRuntime"}
    for name, rt in runtimes.items():
        spec = rt["spec"]
        if "v2" not in spec.get("protocolVersions", []):
            errors.append(f"{path}: ServingRuntime {name} does not declare protocol v2")
        if not any(f.get("name") == "onnx" for f in spec.get("supportedModelFormats", [])):
            errors.append(f"{path}: ServingRuntime {name} does not support the onnx format")
        c = spec["containers"][0]
        cmd = c.get("command", []) + c.get("args", [])
        if cmd[:2] != ["medinfer", "serve"] or "/mnt/models" not in cmd:
            errors.append(f"{path}: ServingRuntime {name} must run `medinfer serve --models /mnt/models`")
        port = str(c["ports"][0]["containerPort"])
        if port not in cmd:
            errors.append(f"{path}: ServingRuntime {name} listens on another port than it declares ({port})")
    for d in docs:
        if d.get("kind") == "InferenceService":
            m = d["spec"]["predictor"]["model"]
            if m.get("runtime") not in runtimes:
                errors.append(f"{path}: InferenceService {d['metadata']['name']} names an unknown runtime")
            if m.get("protocolVersion") != "v2":
                errors.append(f"{path}: InferenceService {d['metadata']['name']} is not protocol v2")
if errors:
    raise SystemExit("\n".join(errors))
print("ok    KServe ServingRuntime / InferenceService consistent")
