//! # medinfer-engine
//!
//! One interface over three inference engines:
//!
//! | backend | what | needs |
//! |---|---|---|
//! | `tract` | pure-Rust engine, the embedded default | nothing |
//! | `ort` | ONNX Runtime through the `ort` crate, loaded at run time | `medinfer runtimes install` |
//! | `openvino` | OpenVINO through the `openvino` crate, loaded at run time | `medinfer runtimes install` |
//!
//! A backend that is compiled out or whose native library is missing still exists and answers
//! [`Availability`] with the reason and the command that fixes it. [`load`] with backend `auto`
//! picks the fastest available one (OpenVINO, then ONNX Runtime, then tract).
//!
//! ```no_run
//! use medinfer_engine::{load, SessionOptions};
//! use medinfer_core::Tensor;
//! let session = load("auto", "model.onnx".as_ref(), &SessionOptions::default()).unwrap();
//! let spec = &session.inputs()[0];
//! let input = Tensor::zeros(spec.dtype, spec.shape.clone()).unwrap();
//! let outputs = session.run(&[input]).unwrap();
//! println!("{} ran {:?}", session.info().backend, outputs[0].shape());
//! ```
//!
//! Sessions are `Send + Sync`: [`Session::run`] takes `&self` and may be called from many
//! threads at once; each call takes one of the session's streams (an OpenVINO infer request,
//! an ONNX Runtime session, a tract execution state) and waits when all are busy.
#![warn(missing_docs)]

mod backends;
pub mod calibrate;
pub mod dynamic;
mod options;
mod pool;
pub mod runtimes;

pub use backends::openvino::isa;
pub use backends::{availability_all, backend, Availability};
pub use dynamic::{load_dynamic, DynSession, DynSpec, Value};
pub use isa::{cpu_flags, cpu_isa_cap, set_cpu_isa, CpuIsa};
pub use options::{BackendKind, Mode, Precision, SessionOptions};

use medinfer_core::{DType, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Errors of the engine layer. Every variant names what was wrong and, where there is one,
/// the command that fixes it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No backend of that name.
    #[error("unknown backend '{0}' (choose tract, ort, openvino or auto)")]
    UnknownBackend(String),
    /// The backend exists but cannot run here.
    #[error("backend {backend} is unavailable: {reason}{}", fix.as_ref().map(|f| format!(" (fix: {f})")).unwrap_or_default())]
    Unavailable {
        /// The backend.
        backend: BackendKind,
        /// Why.
        reason: String,
        /// The command that fixes it.
        fix: Option<String>,
    },
    /// The model file is not a usable ONNX model.
    #[error(transparent)]
    Model(#[from] medinfer_onnx::OnnxError),
    /// The engine refused or failed to load / compile the model.
    #[error("{backend} could not load {path}: {message}")]
    Load {
        /// The backend.
        backend: BackendKind,
        /// The model file.
        path: PathBuf,
        /// The engine's message.
        message: String,
    },
    /// A configuration this backend cannot honour (e.g. bf16 on tract).
    #[error("{backend} does not support {what}")]
    Unsupported {
        /// The backend.
        backend: BackendKind,
        /// What was asked.
        what: String,
    },
    /// Inputs do not match the model's declared inputs.
    #[error("{0}")]
    BadInput(String),
    /// The engine failed while running.
    #[error("{backend} inference failed: {message}")]
    Run {
        /// The backend.
        backend: BackendKind,
        /// The engine's message.
        message: String,
    },
    /// Installing or verifying native runtimes failed.
    #[error("{0}")]
    Runtime(String),
}

/// A concrete input or output of a loaded session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; inputs are always fully known (dynamic dims are fixed at load time), outputs may
    /// contain 0 for a dimension that only the engine knows.
    pub shape: Vec<usize>,
}

/// What a loaded session really runs with, read back from the engine where it can tell.
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    /// The backend.
    pub backend: BackendKind,
    /// The engine's version.
    pub backend_version: String,
    /// The native library in use (none for tract).
    pub library: Option<PathBuf>,
    /// Precision requested.
    pub precision: Precision,
    /// Precision the engine reports it runs with (e.g. OpenVINO's inference precision);
    /// `int8` is appended when the model carries quantized (QDQ) layers.
    pub effective_precision: String,
    /// Execution mode.
    pub mode: Mode,
    /// Parallel streams (requests in flight at once).
    pub streams: usize,
    /// Threads per stream.
    pub threads: usize,
    /// Engine-specific facts read back after compilation.
    pub notes: Vec<String>,
}

/// Backend-specific half of a session: runs already validated inputs.
pub(crate) trait BackendSession: Send + Sync {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError>;
}

/// A model loaded on a backend, ready to run. `Send + Sync`.
pub struct Session {
    inner: Box<dyn BackendSession>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    info: SessionInfo,
    model_path: PathBuf,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.model_path)
            .field("info", &self.info)
            .finish()
    }
}

impl Session {
    /// The inputs, in the order [`Session::run`] takes them.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The outputs, in the order [`Session::run`] returns them.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// How the session runs.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Runs one request. Inputs are checked against [`Session::inputs`] (count, dtype, shape)
    /// before anything reaches the engine. Safe to call from many threads at once.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        check_inputs(&self.inputs, inputs, &self.model_path)?;
        self.inner.run(inputs)
    }
}

fn check_inputs(specs: &[TensorSpec], inputs: &[Tensor], model: &Path) -> Result<(), EngineError> {
    if specs.len() != inputs.len() {
        return Err(EngineError::BadInput(format!(
            "{} takes {} input(s) ({}), got {}",
            model.display(),
            specs.len(),
            specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            inputs.len()
        )));
    }
    for (s, t) in specs.iter().zip(inputs) {
        if s.dtype != t.dtype() || s.shape != t.shape() {
            return Err(EngineError::BadInput(format!(
                "input '{}' of {} must be {} {:?}, got {} {:?}",
                s.name,
                model.display(),
                s.dtype,
                s.shape,
                t.dtype(),
                t.shape()
            )));
        }
    }
    Ok(())
}

/// Loads `model` on the backend named `backend_name` (`tract`, `ort`, `openvino` or `auto`).
pub fn load(
    backend_name: &str,
    model: &Path,
    opts: &SessionOptions,
) -> Result<Session, EngineError> {
    load_on(resolve_backend(backend_name)?, model, opts)
}

/// The backend called `name`: `tract`, `ort`, `openvino`, or `auto` (the fastest available:
/// OpenVINO, then ONNX Runtime, then tract). Every command resolves backend names here.
pub fn resolve_backend(name: &str) -> Result<BackendKind, EngineError> {
    if name.trim().eq_ignore_ascii_case("auto") {
        Ok(BackendKind::auto())
    } else {
        BackendKind::parse(name.trim()).ok_or_else(|| EngineError::UnknownBackend(name.to_string()))
    }
}

/// Loads `model` on a given backend.
pub fn load_on(
    kind: BackendKind,
    model: &Path,
    opts: &SessionOptions,
) -> Result<Session, EngineError> {
    let prepared = options::prepare(model, opts)?;
    let b = backend(kind);
    let avail = b.availability();
    if !avail.available {
        return Err(EngineError::Unavailable {
            backend: kind,
            reason: avail.reason.unwrap_or_default(),
            fix: avail.fix,
        });
    }
    let (inner, mut info, outputs) = b.load(&prepared)?;
    if prepared.quantized && !info.effective_precision.contains("int8") {
        info.effective_precision = format!("int8+{}", info.effective_precision);
    }
    Ok(Session {
        inner,
        inputs: prepared.inputs.clone(),
        outputs,
        info,
        model_path: model.to_path_buf(),
    })
}

/// The native backends (ONNX Runtime, OpenVINO) available here, for tests and benchmarks that
/// run a case on every engine. A missing one is skipped with a note on stderr, unless the
/// environment variable `MEDINFER_REQUIRE_BACKENDS` (comma-separated, e.g. `ort,openvino`)
/// names it: then its absence is an error, so that a CI run with a broken runtime install fails
/// instead of silently testing less.
pub fn native_backends_for_tests() -> Result<Vec<BackendKind>, EngineError> {
    let required: Vec<BackendKind> = std::env::var("MEDINFER_REQUIRE_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| BackendKind::parse(s.trim()))
        .collect();
    let mut out = Vec::new();
    for k in [BackendKind::Ort, BackendKind::OpenVino] {
        let a = backend(k).availability();
        if a.available {
            out.push(k);
        } else if required.contains(&k) {
            return Err(EngineError::Unavailable {
                backend: k,
                reason: format!(
                    "required by MEDINFER_REQUIRE_BACKENDS: {}",
                    a.reason.unwrap_or_default()
                ),
                fix: a.fix,
            });
        } else {
            eprintln!("note: skipping {k}: {}", a.reason.unwrap_or_default());
        }
    }
    Ok(out)
}

/// Runs `f` and turns a panic inside an engine binding into an error (native engines and
/// bindings occasionally assert on malformed models; a server must not die of it).
pub(crate) fn guard<T>(
    backend: BackendKind,
    what: &str,
    f: impl FnOnce() -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    medinfer_core::panic::catch(f).unwrap_or_else(|p| {
        Err(EngineError::Run {
            backend,
            message: format!("{what}: the engine binding panicked: {p}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backend whose engine call panics on the first request and works afterwards, holding
    /// its one stream in a [`pool::Pool`] as the real backends do.
    struct PanicsOnce {
        streams: pool::Pool<()>,
        calls: AtomicUsize,
    }

    impl BackendSession for PanicsOnce {
        fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
            guard(BackendKind::Tract, "running", || {
                self.streams.with(|_| {
                    if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("simulated engine assertion");
                    }
                    Ok(inputs.to_vec())
                })
            })
        }
    }

    /// Regression (hardening review): a panic inside a backend lost the stream it ran on; in
    /// latency mode (one stream) every later `Session::run` then waited forever.
    #[test]
    fn a_panic_inside_a_backend_does_not_lose_a_stream() {
        let spec = TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![1, 2],
        };
        let session = Session {
            inner: Box::new(PanicsOnce {
                streams: pool::Pool::new(vec![()]),
                calls: AtomicUsize::new(0),
            }),
            inputs: vec![spec.clone()],
            outputs: vec![spec],
            info: SessionInfo {
                backend: BackendKind::Tract,
                backend_version: "test".into(),
                library: None,
                precision: Precision::Fp32,
                effective_precision: "fp32".into(),
                mode: Mode::Latency,
                streams: 1,
                threads: 1,
                notes: vec![],
            },
            model_path: "panics-once.onnx".into(),
        };
        let x = Tensor::from_f32(vec![1, 2], vec![1.0, 2.0]).unwrap();
        let e = session.run(std::slice::from_ref(&x)).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..3 {
                    tx.send(
                        session
                            .run(std::slice::from_ref(&x))
                            .map_err(|e| e.to_string()),
                    )
                    .unwrap();
                }
            });
            for _ in 0..3 {
                let got = rx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("the session hung after a panic: its stream was lost");
                assert_eq!(got.unwrap(), vec![x.clone()]);
            }
        });
    }

    #[test]
    fn sessions_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Session>();
        assert_send_sync::<super::EngineError>();
    }
}
