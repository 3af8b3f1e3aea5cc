//! One tune candidate in its own process.
//!
//! `medinfer tune` never loads a candidate in its own process: each runs in a child (`medinfer
//! --cpu-isa ISA tune-worker SPEC`), for three reasons. A native engine can crash on a graph
//! (OpenVINO segfaulted on a QDQ DenseNet-121, ../shared/docs/runtimes.md): the child dies, the
//! tune goes on and reports the crash. oneDNN's instruction-set cap is per process, so
//! candidates that differ only in it need processes of their own. And candidates stay loaded
//! side by side, so that timing rounds can interleave them (paired rounds) without reloading.
//!
//! The protocol is one JSON object per line. The child prints `{"ready": ...}` once loaded,
//! then answers each request on stdin with `{"ok": ...}` or `{"error": "..."}`:
//! - `{"validate": {"data": PATH, "limit": N, "out": DIR}}` runs the first `N` samples under
//!   `PATH` (the `arrays` formats) one at a time and writes each one's first output as
//!   `DIR/NNNNN.npy`;
//! - `{"time": {"requests": N}}` runs `N` requests on seeded inputs, one in flight per stream,
//!   and answers the wall time, the items and the median request latency.
//!
//! The child exits at the end of its stdin.

use super::TuneError;
use medinfer_core::Tensor;
use medinfer_engine::{load_on, BackendKind, CpuIsa, Mode, Precision, Session, SessionOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a candidate's process may take to answer one request (its load, a validation pass
/// or a timed slice) before it is taken for hung and killed: 300 s, or
/// `MEDINFER_TUNE_HANG_S` seconds.
fn hang_limit() -> Duration {
    let s = std::env::var("MEDINFER_TUNE_HANG_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(300.0);
    Duration::from_secs_f64(s)
}

/// What a worker loads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerSpec {
    /// Model file.
    pub model: PathBuf,
    /// Engine.
    pub backend: BackendKind,
    /// Precision the engine computes in.
    pub precision: Precision,
    /// Parallel streams (1 = latency mode).
    pub streams: usize,
    /// Threads per stream.
    pub threads: usize,
    /// Items per request.
    pub batch: usize,
    /// Full shapes of inputs with dynamic dimensions other than the batch.
    #[serde(default)]
    pub input_shapes: HashMap<String, Vec<usize>>,
}

impl WorkerSpec {
    fn options(&self, batch: usize, shapes: HashMap<String, Vec<usize>>) -> SessionOptions {
        SessionOptions {
            precision: self.precision,
            mode: Mode::for_streams(self.streams),
            streams: Some(self.streams),
            threads: Some(self.threads),
            batch: Some(batch),
            input_shapes: shapes,
            ..Default::default()
        }
    }
}

/// What a worker reports once loaded.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Ready {
    /// Load and compile time.
    pub load_ms: f64,
    /// Precision the engine says it runs (`int8` for a QDQ model, `bf16`, ...).
    pub effective_precision: String,
    /// Engine version.
    pub backend_version: String,
    /// Streams x threads the engine really uses.
    pub streams: usize,
    /// Threads per stream.
    pub threads: usize,
}

/// One timed slice of requests.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, Default)]
pub struct Slice {
    /// Wall time of the slice.
    pub wall_s: f64,
    /// Items processed (requests x batch).
    pub items: usize,
    /// Median request latency.
    pub p50_ms: f64,
}

// ---------------------------------------------------------------------------------------------
// The child side.

/// Serves the worker protocol on this process's stdin / stdout until stdin ends. Errors that
/// stop the worker (the model does not load) are returned; request errors are answered.
pub fn serve_worker(spec: &WorkerSpec) -> Result<(), TuneError> {
    if let Ok(fault) = std::env::var("MEDINFER_TUNE_FAULT") {
        // Fault injection for tests of crash handling: `abort:BACKEND` dies like an engine
        // crash when loading on that backend (no Rust unwinding, a signal).
        if fault == format!("abort:{}", spec.backend) {
            std::process::abort();
        }
        // `hang:BACKEND` stops answering like a hung engine.
        if fault == format!("hang:{}", spec.backend) {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
    let t0 = Instant::now();
    let session = load_on(
        spec.backend,
        &spec.model,
        &spec.options(spec.batch, spec.input_shapes.clone()),
    )?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let info = session.info().clone();
    let inputs = crate::seeded_inputs(session.inputs(), 1);
    // One inference before "ready": the first run of some engines compiles kernels.
    session.run(&inputs)?;
    let ready = Ready {
        load_ms,
        effective_precision: info.effective_precision.clone(),
        backend_version: info.backend_version.clone(),
        streams: info.streams,
        threads: info.threads,
    };
    let stdout = std::io::stdout();
    let say = |v: Value| -> Result<(), TuneError> {
        let mut out = stdout.lock();
        writeln!(out, "{v}").and_then(|_| out.flush())?;
        Ok(())
    };
    say(json!({ "ready": ready }))?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(req) => handle(spec, &session, &inputs, &req),
            Err(e) => Err(format!("request is not JSON: {e}")),
        };
        say(match answer {
            Ok(v) => json!({ "ok": v }),
            Err(e) => json!({ "error": e }),
        })?;
    }
    Ok(())
}

fn handle(
    spec: &WorkerSpec,
    session: &Session,
    inputs: &[Tensor],
    req: &Value,
) -> Result<Value, String> {
    if let Some(v) = req.get("time") {
        let n = v
            .get("requests")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1) as usize;
        let s = time_requests(session, inputs, n).map_err(|e| e.to_string())?;
        return serde_json::to_value(s).map_err(|e| e.to_string());
    }
    if let Some(v) = req.get("validate") {
        let data = v
            .get("data")
            .and_then(Value::as_str)
            .ok_or("validate needs data")?;
        let out = v
            .get("out")
            .and_then(Value::as_str)
            .ok_or("validate needs out")?;
        let limit = v.get("limit").and_then(Value::as_u64).unwrap_or(u64::MAX) as usize;
        let n = validate(spec, session, Path::new(data), limit, Path::new(out))
            .map_err(|e| e.to_string())?;
        return Ok(json!({ "samples": n }));
    }
    Err(format!("unknown request {req}"))
}

/// `n` requests, one in flight per stream; `n` is rounded up to a multiple of the streams.
///
/// Without the rounding, an odd count on two streams ends with one request running alone while
/// the other stream idles, and the slice's throughput is low by about 1 / (n + 1): 10 % for
/// the 9 requests of a 0.3 s screening slice of DenseNet-121 at batch 4, 2 % for the 36 at
/// batch 1. That bias favoured small batches in screening (the exhaustive check's best,
/// 2 streams x batch 4, was screened out for it, 2026-12-06).
fn time_requests(session: &Session, inputs: &[Tensor], n: usize) -> Result<Slice, TuneError> {
    let n = crate::timed_runs(n, session.info().streams);
    let (lat, wall_s) = crate::drive_requests(session, inputs, n, true, &|| {})?;
    let batch = session
        .inputs()
        .first()
        .and_then(|s| s.shape.first().copied())
        .unwrap_or(1);
    Ok(Slice {
        wall_s,
        items: n * batch,
        p50_ms: crate::latency_stats(&lat).p50,
    })
}

/// Runs validation samples one at a time (a batch-1 session per sample shape) and writes each
/// first output.
fn validate(
    spec: &WorkerSpec,
    session: &Session,
    data: &Path,
    limit: usize,
    out: &Path,
) -> Result<usize, TuneError> {
    let model = medinfer_onnx::load_model(&spec.model)?;
    let info = medinfer_onnx::analyze(&model, Some(&[]));
    drop(model);
    let slots =
        medinfer_pipelines::arrays::InputSlot::of_model(&info, &spec.model.display().to_string())?;
    let samples = medinfer_pipelines::arrays::load(data, &slots)?;
    std::fs::create_dir_all(out).map_err(|e| TuneError::io(out, e))?;
    let shapes_of =
        |s: &[Tensor]| -> Vec<Vec<usize>> { s.iter().map(|t| t.shape().to_vec()).collect() };
    let own: Vec<Vec<usize>> = session.inputs().iter().map(|i| i.shape.clone()).collect();
    let mut other: Option<(Vec<Vec<usize>>, Session)> = None;
    let mut n = 0;
    for (i, s) in samples.iter().take(limit).enumerate() {
        let shapes = shapes_of(s);
        let outs = if shapes == own {
            session.run(s)?
        } else {
            if other.as_ref().map(|(k, _)| k != &shapes).unwrap_or(true) {
                let named = session
                    .inputs()
                    .iter()
                    .zip(&shapes)
                    .map(|(i, d)| (i.name.clone(), d.clone()))
                    .collect();
                let opts = spec.options(shapes[0].first().copied().unwrap_or(1), named);
                other = Some((shapes.clone(), load_on(spec.backend, &spec.model, &opts)?));
            }
            other.as_ref().expect("loaded above").1.run(s)?
        };
        let first = outs.into_iter().next().ok_or_else(|| {
            TuneError::Candidate(format!("{} produced no output", spec.model.display()))
        })?;
        medinfer_io::npy::write(&out.join(format!("{i:05}.npy")), &first)?;
        n += 1;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// The parent side.

/// Why a candidate's process did not answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The process died without saying why (a signal: an engine crash).
    Crashed(String),
    /// It reported an error.
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Crashed(m) => write!(f, "crashed: {m}"),
            Failure::Error(m) => f.write_str(m),
        }
    }
}

/// A running candidate process.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The child's stdout lines, read by a thread of their own so that a hung child can be
    /// waited for with a deadline.
    lines: Receiver<String>,
    hang_limit: Duration,
    log: PathBuf,
    /// What it reported once loaded.
    pub ready: Ready,
}

impl Worker {
    /// Starts `exe --cpu-isa ISA tune-worker SPEC` and waits until the model is loaded.
    /// The child's stderr goes to `log`.
    pub fn spawn(
        exe: &Path,
        isa: CpuIsa,
        spec: &WorkerSpec,
        log: &Path,
    ) -> Result<Worker, Failure> {
        let spec_json = serde_json::to_string(spec).map_err(|e| Failure::Error(e.to_string()))?;
        let err = std::fs::File::create(log)
            .map_err(|e| Failure::Error(format!("{}: {e}", log.display())))?;
        let mut child = Command::new(exe)
            .args(["--cpu-isa", isa.name(), "tune-worker", &spec_json])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| Failure::Error(format!("could not start {}: {e}", exe.display())))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || loop {
            let mut line = String::new();
            match stdout.read_line(&mut line) {
                Ok(n) if n > 0 => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        });
        let mut w = Worker {
            child,
            stdin,
            lines,
            hang_limit: hang_limit(),
            log: log.to_path_buf(),
            ready: Ready::default(),
        };
        let line = w.read_line()?;
        let ready = line
            .get("ready")
            .cloned()
            .ok_or_else(|| Failure::Error(format!("unexpected first line {line}")))?;
        w.ready = serde_json::from_value(ready).map_err(|e| Failure::Error(e.to_string()))?;
        Ok(w)
    }

    fn read_line(&mut self) -> Result<Value, Failure> {
        match self.lines.recv_timeout(self.hang_limit) {
            Ok(line) => {
                serde_json::from_str(&line).map_err(|e| Failure::Error(format!("bad reply: {e}")))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.death()),
            Err(RecvTimeoutError::Timeout) => {
                self.stdin = None;
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(Failure::Crashed(format!(
                    "hung: the engine gave no answer within {:.0} s, so its process was killed",
                    self.hang_limit.as_secs_f64()
                )))
            }
        }
    }

    /// What became of a child that stopped answering.
    fn death(&mut self) -> Failure {
        self.stdin = None;
        let status = self.child.wait();
        let last =
            medinfer_core::last_error_line(&std::fs::read_to_string(&self.log).unwrap_or_default());
        match status {
            Ok(s) if s.code().is_some() => Failure::Error(if last.is_empty() {
                format!("the candidate process exited with {s}")
            } else {
                last
            }),
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                Failure::Crashed(format!(
                    "the engine died with signal {} in the candidate's own process{}",
                    s.signal().unwrap_or(0),
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(" (last words: {last})")
                    }
                ))
            }
            Err(e) => Failure::Crashed(e.to_string()),
        }
    }

    fn request(&mut self, req: Value) -> Result<Value, Failure> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(Failure::Error("the candidate process has stopped".into()));
        };
        if writeln!(stdin, "{req}")
            .and_then(|_| stdin.flush())
            .is_err()
        {
            return Err(self.death());
        }
        let v = self.read_line()?;
        if let Some(e) = v.get("error") {
            return Err(Failure::Error(e.as_str().unwrap_or_default().to_string()));
        }
        v.get("ok")
            .cloned()
            .ok_or_else(|| Failure::Error(format!("unexpected reply {v}")))
    }

    /// Times `requests` requests.
    pub fn time(&mut self, requests: usize) -> Result<Slice, Failure> {
        let v = self.request(json!({ "time": { "requests": requests } }))?;
        serde_json::from_value(v).map_err(|e| Failure::Error(e.to_string()))
    }

    /// Runs the first `limit` validation samples under `data`; their first outputs go to `out`.
    pub fn validate(&mut self, data: &Path, limit: usize, out: &Path) -> Result<usize, Failure> {
        let v = self.request(json!({ "validate": {
            "data": data.display().to_string(), "limit": limit, "out": out.display().to_string()
        }}))?;
        Ok(v.get("samples").and_then(Value::as_u64).unwrap_or(0) as usize)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stdin = None;
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice on two streams always runs an even number of requests, so no request runs alone
    /// at its end while the other stream idles (that tail biased screening against large
    /// batches); every request is counted in the items.
    #[test]
    fn a_slice_keeps_every_stream_busy_to_its_end() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m.onnx");
        medinfer_onnx::save_model(&medinfer_onnx::zoo::build("resnet18-ct").unwrap(), &model)
            .unwrap();
        let session = load_on(
            BackendKind::Tract,
            &model,
            &SessionOptions {
                mode: Mode::Throughput,
                streams: Some(2),
                threads: Some(1),
                batch: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(session.info().streams, 2);
        let spec = &session.inputs()[0];
        let n: usize = spec.shape.iter().product();
        let input = Tensor::from_f32(spec.shape.clone(), vec![0.5; n]).unwrap();
        for (asked, run) in [(3, 4), (4, 4), (1, 2)] {
            let s = time_requests(&session, std::slice::from_ref(&input), asked).unwrap();
            assert_eq!(s.items, run * 2, "{asked} requests asked");
        }
    }
}
