use super::{Availability, Backend, Loaded};
use crate::options::Prepared;
use crate::{BackendKind, EngineError};

pub(crate) struct Ort;

impl Backend for Ort {
    fn availability(&self) -> Availability {
        Availability::missing(
            BackendKind::Ort,
            "medinfer was built without the `ort` feature".into(),
            "rebuild with --features ort",
        )
    }
    fn load(&self, _: &Prepared) -> Result<Loaded, EngineError> {
        let a = self.availability();
        Err(EngineError::Unavailable {
            backend: BackendKind::Ort,
            reason: a.reason.unwrap_or_default(),
            fix: a.fix,
        })
    }
}

pub(crate) fn load_dyn(
    _: &crate::dynamic::DynPrepared,
) -> Result<crate::dynamic::DynLoaded, EngineError> {
    let a = Ort.availability();
    Err(EngineError::Unavailable {
        backend: BackendKind::Ort,
        reason: a.reason.unwrap_or_default(),
        fix: a.fix,
    })
}
