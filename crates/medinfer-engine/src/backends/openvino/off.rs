use super::{Availability, Backend, Loaded};
use crate::options::Prepared;
use crate::{BackendKind, EngineError};

pub(crate) struct OpenVino;

#[path = "isa.rs"]
pub mod isa;

/// Whether OpenVINO's library is loaded in this process: never, without the feature.
pub(crate) fn loaded() -> bool {
    false
}

impl Backend for OpenVino {
    fn availability(&self) -> Availability {
        Availability::missing(
            BackendKind::OpenVino,
            "medinfer was built without the `openvino` feature".into(),
            "rebuild with --features openvino",
        )
    }
    fn load(&self, _: &Prepared) -> Result<Loaded, EngineError> {
        let a = self.availability();
        Err(EngineError::Unavailable {
            backend: BackendKind::OpenVino,
            reason: a.reason.unwrap_or_default(),
            fix: a.fix,
        })
    }
}

pub(crate) fn load_dyn(
    _: &crate::dynamic::DynPrepared,
) -> Result<crate::dynamic::DynLoaded, EngineError> {
    let a = OpenVino.availability();
    Err(EngineError::Unavailable {
        backend: BackendKind::OpenVino,
        reason: a.reason.unwrap_or_default(),
        fix: a.fix,
    })
}
