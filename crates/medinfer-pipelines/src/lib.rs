//! medinfer's clinical pipelines: files in, clinical numbers out, with the phantoms that give
//! them exact ground truth.
//!
//! - [`phantom`]: the cardiac cine-MRI phantom (exact masks, volumes, EF and mass).
//! - [`cardiac`]: the cardiac cine-MRI quantification pipeline (`medinfer run cardiac`).
//! - [`cxr`]: chest X-ray multi-label classification (`medinfer run cxr`).
//! - [`ct`]: CT slice anatomy tagging per series (`medinfer run ct`).
//! - [`batch`]: the bounded decode -> inference pipeline that keeps every core busy.
//! - [`samples`]: model inputs made by a pipeline's preprocessing, for INT8 calibration.

#![warn(missing_docs)]

pub mod batch;
pub mod cardiac;
pub mod ct;
pub mod cxr;
pub mod phantom;
pub mod samples;

/// Pipeline errors: what was wrong with which input, or which stage failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The input cannot be analysed by this pipeline (wrong dimensionality, absurd spacing, no
    /// heart, ...).
    #[error("{0}")]
    Input(String),
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] medinfer_io::IoError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] medinfer_engine::EngineError),
    /// The model does not fit the pipeline.
    #[error("model {model}: {reason}")]
    Model {
        /// The model file.
        model: String,
        /// What does not fit.
        reason: String,
    },
}
