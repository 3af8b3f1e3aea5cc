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

/// The error a backend whose library did not load answers with.
pub(crate) fn unavailable(backend: BackendKind, reason: &str, fix: &str) -> EngineError {
    EngineError::Unavailable {
        backend,
        reason: reason.to_string(),
        fix: Some(fix.to_string()),
    }
}

impl Availability {
    /// A backend whose library is loaded.
    pub(crate) fn found(
        backend: BackendKind,
        version: &str,
        library: &std::path::Path,
        source: &str,
    ) -> Availability {
        Availability {
            backend,
            available: true,
            version: Some(version.to_string()),
            library: Some(library.to_path_buf()),
            source: Some(source.to_string()),
            reason: None,
            fix: None,
        }
    }

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
