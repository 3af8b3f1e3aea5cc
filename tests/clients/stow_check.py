#!/usr/bin/env python3
"""`medinfer serve` as a DICOMweb STOW-RS endpoint, driven by dicomweb-client (the DICOMweb
client of the Imaging Data Commons, unchanged).

Starts `medinfer serve` on a free loopback port over a repository holding the shipped cardiac
model (pipeline "cardiac", tract), writes phantom exam 11 as a DICOM series with
`medinfer phantom cardiac --format dicom`, and runs that folder through
`medinfer run cardiac --json` as the reference. Then:
  - the instances, read with pydicom, are stored with `DICOMwebClient.store_instances` at the
    base URL /v1/pipelines/cardiac/heart (so at .../studies);
  - the answer (a DICOM JSON dataset, parsed by the client) acknowledges every SOP instance
    UID that was sent, and its Retrieve URL is the study's analysis job;
  - the job finishes with the command line's EDV / ESV / EF for both ventricles.
Every wait is bounded.

Usage: python stow_check.py MEDINFER   (run by `cargo xtask test` in its own venv)
"""
import json
import os
import sys
import tempfile
import time
import urllib.request

import pydicom
from common import Checks, Server, cardiac_exam_repository
from dicomweb_client.api import DICOMwebClient


def main():
    medinfer = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="medinfer-stow-")
    repo, series, ref = cardiac_exam_repository(medinfer, work, 11, "dicom")

    server = Server(medinfer, repo, work)
    base = f"http://127.0.0.1:{server.port}"
    check = Checks()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/v2/models/heart/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        datasets = [pydicom.dcmread(os.path.join(series, n)) for n in sorted(os.listdir(series))]
        client = DICOMwebClient(url=f"{base}/v1/pipelines/cardiac/heart")
        answer = client.store_instances(datasets)
        sent = sorted(str(ds.SOPInstanceUID) for ds in datasets)
        acked = sorted(str(item.ReferencedSOPInstanceUID)
                       for item in answer.get("ReferencedSOPSequence", []))
        check(acked == sent, f"STOW-RS acknowledged {len(acked)} of {len(sent)} instances by UID")
        classes = {str(item.ReferencedSOPClassUID)
                   for item in answer.get("ReferencedSOPSequence", [])}
        check(classes == {str(ds.SOPClassUID) for ds in datasets},
              f"and their SOP classes ({sorted(classes)})")
        job_url = str(answer.get("RetrieveURL", ""))
        check(job_url.startswith("/v1/jobs/"), f"the Retrieve URL is the analysis job ({job_url})")
        job = {}
        deadline = time.time() + 180
        while time.time() < deadline:
            with urllib.request.urlopen(base + job_url, timeout=10) as r:
                job = json.load(r)
            if job.get("status") in ("done", "failed"):
                break
            time.sleep(0.2)
        check(job.get("status") == "done", f"the job finished ({job.get('status')}: "
              f"{job.get('error', '')})")
        report = job.get("report", {})
        for chamber in ("lv", "rv"):
            for key in ("edv_ml", "esv_ml", "ef_pct"):
                got = report.get(chamber, {}).get(key)
                want = ref[chamber][key]
                check(got is not None and abs(got - want) < 1e-6,
                      f"{chamber}.{key}: served {got}, command line {want}")
    finally:
        status = server.stop()
    check(status == 0, f"the server drained and exited cleanly on SIGTERM ({status})")
    check.finish(server, "STOW-RS: dicomweb-client stored a study and got the command line's "
                 "numbers")


if __name__ == "__main__":
    main()
