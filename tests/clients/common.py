"""Shared by the client checks: `medinfer serve` on a free loopback port, and a list of checks.
"""
import json
import os
import shutil
import signal
import socket
import subprocess


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unet_repository(medinfer, work):
    """WORK/repo/unet/1/model.onnx: the zoo's cardiac U-Net on ONNX Runtime, with batching
    (input [batch, 1, 96, 96], output [batch, 4, 96, 96]); returns (repo folder, model path)."""
    model_dir = os.path.join(work, "repo", "unet", "1")
    os.makedirs(model_dir)
    path = os.path.join(model_dir, "model.onnx")
    subprocess.run([medinfer, "zoo", "build", "cardiac-unet", "-o", path], check=True,
                   capture_output=True)
    with open(os.path.join(work, "repo", "unet", "config.json"), "w") as f:
        f.write('{"backend": "ort", "max_batch": 4, "max_queue_delay_us": 5000}')
    return os.path.join(work, "repo"), path


def cardiac_exam_repository(medinfer, work, seed, fmt):
    """Phantom exam SEED written by `medinfer phantom cardiac --format FMT` under WORK/exam, the
    command line's report of it (the reference: tract, the shipped model, which the report
    names), and WORK/repo/heart/1/model.onnx = that same model file (pipeline "cardiac", tract).
    Returns (repo folder, the exam's input path: cine.nii.gz or the DICOM folder, report)."""
    repo = os.path.join(work, "repo")
    os.makedirs(os.path.join(repo, "heart", "1"))
    exam = os.path.join(work, "exam")
    subprocess.run([medinfer, "phantom", "cardiac", "--seed", str(seed), "--format", fmt,
                    "-o", exam], check=True, capture_output=True)
    study = os.path.join(exam, "cine.nii.gz" if fmt == "nifti" else "dicom")
    ref = json.loads(subprocess.run(
        [medinfer, "run", "cardiac", study, "-b", "tract", "--json"],
        check=True, capture_output=True, text=True).stdout)
    shutil.copyfile(ref["model"]["path"], os.path.join(repo, "heart", "1", "model.onnx"))
    with open(os.path.join(repo, "heart", "config.json"), "w") as f:
        json.dump({"backend": "tract", "pipeline": "cardiac"}, f)
    return repo, study, ref


class Server:
    """`medinfer serve --models REPO` on a free port, its output in WORK/server.log."""

    def __init__(self, medinfer, repo, work):
        self.work = work
        self.port = free_port()
        self.log = os.path.join(work, "server.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([medinfer, "serve", "--models", repo, "--port",
                                          str(self.port)], stdout=log, stderr=subprocess.STDOUT)

    def stop(self):
        """SIGTERM (drain, then exit); the exit status, or a note when it had to be killed."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "killed after 60 s"


class Checks:
    """Prints each check; `finish` fails the script (with the server's log) if any failed."""

    def __init__(self):
        self.failures = []

    def __call__(self, cond, what):
        print(("ok    " if cond else "FAIL  ") + what, flush=True)
        if not cond:
            self.failures.append(what)

    def finish(self, server, done):
        """Prints the server's log if a check failed, then removes the server's work folder
        (models, uploads, browser profile: ~100 MB a run that would otherwise pile up in /tmp)."""
        if self.failures:
            with open(server.log) as f:
                print("server log:\n" + f.read())
        shutil.rmtree(server.work, ignore_errors=True)
        if self.failures:
            raise SystemExit(f"{len(self.failures)} check(s) failed")
        print(done)
