//! The three backends. Each is always present; one whose native library is missing or whose
//! cargo feature is off answers [`Availability`] with the reason and the fix.

use crate::options::Prepared;
use crate::{BackendKind, BackendSession, EngineError, SessionInfo, TensorSpec};
use serde::Serialize;
use std::path::PathBuf;

#[cfg(feature = "openvino")]
pub(crate) mod openvino;
#[cfg(not(feature = "openvino"))]
#[path = "openvino/off.rs"]
pub(crate) mod openvino;
#[cfg(feature = "ort")]
mod ort;
#[cfg(not(feature = "ort"))]
#[path = "ort_off.rs"]
mod ort;
mod tract;

/// Whether a backend can run here, and if not why and how to fix it.
#[derive(Clone, Debug, Serialize)]
pub struct Availability {
    /// The backend.
    pub backend: BackendKind,
    /// True when sessions can be loaded.
    pub available: bool,
    /// Engine version.
    pub version: Option<String>,
    /// The native library in use or found.
    pub library: Option<PathBuf>,
    /// How the library was found.
    pub source: Option<String>,
    /// Why it is unavailable.
    pub reason: Option<String>,
    /// The command that fixes it.
    pub fix: Option<String>,
}

/// A native library as loaded: where it is, how it was found, its version.
pub(crate) struct NativeLib {
    pub path: PathBuf,
    pub source: String,
    pub version: String,
}

/// The outcome of loading a native backend's library once per process: its state, or (why
/// not, the command that fixes it).
pub(crate) type LoadOutcome<R> = Result<R, (String, &'static str)>;

/// A native backend's availability from the outcome of loading its library.
pub(crate) fn native_availability(
    backend: BackendKind,
    loaded: Result<&NativeLib, &(String, &'static str)>,
) -> Availability {
    match loaded {
        Ok(lib) => Availability {
            backend,
            available: true,
            version: Some(lib.version.clone()),
            library: Some(lib.path.clone()),
            source: Some(lib.source.clone()),
            reason: None,
            fix: None,
        },
        Err((reason, fix)) => Availability::missing(backend, reason.clone(), fix),
    }
}

/// The loaded state of a native backend, or the error that says why it cannot run.
pub(crate) fn native_ready<R>(
    backend: BackendKind,
    outcome: &'static LoadOutcome<R>,
) -> Result<&'static R, EngineError> {
    outcome
        .as_ref()
        .map_err(|(reason, fix)| EngineError::Unavailable {
            backend,
            reason: reason.clone(),
            fix: Some(fix.to_string()),
        })
}

impl Availability {
    pub(crate) fn missing(backend: BackendKind, reason: String, fix: &str) -> Availability {
        Availability {
            backend,
            available: false,
            version: None,
            library: None,
            source: None,
            reason: Some(reason),
            fix: Some(fix.to_string()),
        }
    }
}

pub(crate) type Loaded = (Box<dyn BackendSession>, SessionInfo, Vec<TensorSpec>);

/// Internal backend interface: availability and loading of a prepared model.
pub(crate) trait Backend: Send + Sync {
    fn availability(&self) -> Availability;
    fn load(&self, prepared: &Prepared) -> Result<Loaded, EngineError>;
}

/// The backend of a kind.
pub(crate) fn backend_impl(kind: BackendKind) -> &'static dyn Backend {
    match kind {
        BackendKind::Tract => &tract::Tract,
        BackendKind::Ort => &ort::Ort,
        BackendKind::OpenVino => &openvino::OpenVino,
    }
}

/// A backend's public face: its availability.
pub struct BackendHandle(BackendKind);

impl BackendHandle {
    /// Whether it can run here.
    pub fn availability(&self) -> Availability {
        backend_impl(self.0).availability()
    }

    pub(crate) fn load(&self, prepared: &Prepared) -> Result<Loaded, EngineError> {
        backend_impl(self.0).load(prepared)
    }
}

/// The backend of a kind.
pub fn backend(kind: BackendKind) -> BackendHandle {
    BackendHandle(kind)
}

/// Availability of every backend, fastest first.
pub fn availability_all() -> Vec<Availability> {
    BackendKind::ALL_FASTEST_FIRST
        .into_iter()
        .map(|k| backend(k).availability())
        .collect()
}

/// A dynamic-shape session on ONNX Runtime.
pub(crate) fn ort_dyn(
    p: &crate::dynamic::DynPrepared,
) -> Result<crate::dynamic::DynLoaded, EngineError> {
    ort::load_dyn(p)
}

/// A dynamic-shape session on OpenVINO.
pub(crate) fn openvino_dyn(
    p: &crate::dynamic::DynPrepared,
) -> Result<crate::dynamic::DynLoaded, EngineError> {
    openvino::load_dyn(p)
}
