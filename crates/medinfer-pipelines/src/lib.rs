//! medinfer's clinical pipelines: files in, clinical numbers out, with the phantoms that give
//! them exact ground truth. The CLI and the server are thin shells over what this crate
//! returns: each pipeline takes a typed request and a [`medinfer_engine::Session`] and returns
//! a typed (serde) report plus its artefacts.
//!
//! | module | what |
//! |---|---|
//! | [`cardiac`] | cardiac cine-MRI quantification (`medinfer run cardiac`) |
//! | [`cxr`] | chest X-ray multi-label classification over files and folders (`medinfer run cxr`) |
//! | [`ct`] | CT slice anatomy tagging per series (`medinfer run ct`) |
//! | [`fmri`] | resting-state fMRI group ICA, dual regression (`medinfer run fmri`) |
//! | [`segment`] | 3-D segmentation of a CT / MRI volume with a user's model, MONAI-style sliding window (`medinfer run segment`) |
//! | [`sliding`] | MONAI's sliding-window inference |
//! | [`batch`] | the bounded decode -> inference executor every pipeline runs on |
//! | [`resume`] | resumable CSV / JSON-lines result files, deterministic sharding |
//! | [`models`] | model resolution (file, zoo name, shipped model) and model identity |
//! | [`samples`] | model inputs made by a pipeline's preprocessing, for INT8 calibration |
//! | [`phantom`] | the cardiac cine-MRI phantom (exact masks, volumes, EF and mass) |
//!
//! A new pipeline is a folder `src/<task>/` with `mod.rs` exposing its request, `run` and
//! report, one [`Pipeline`] variant, and one `commands/run_<task>.rs` in the CLI.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod arrays;
pub mod batch;
pub mod cardiac;
pub mod config;
pub mod ct;
pub mod cxr;
pub mod fmri;
pub mod models;
pub mod phantom;
pub mod resume;
pub mod samples;
pub mod segment;
pub mod sliding;

use serde::Serialize;

/// The clinical pipelines, listed once: commands, calibration-sample making and the pipeline
/// benchmarks all read this list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pipeline {
    /// Cardiac cine-MRI segmentation and quantification.
    Cardiac,
    /// Chest X-ray classification.
    Cxr,
    /// CT slice tagging.
    Ct,
}

impl Pipeline {
    /// Every pipeline.
    pub const ALL: [Pipeline; 3] = [Pipeline::Cardiac, Pipeline::Cxr, Pipeline::Ct];

    /// Its name on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Pipeline::Cardiac => "cardiac",
            Pipeline::Cxr => "cxr",
            Pipeline::Ct => "ct",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Pipeline> {
        Pipeline::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
    }

    /// The shape of one input sample (without the batch axis) of the pipeline's own model,
    /// from its built-in config.
    pub fn sample_shape(self) -> [usize; 3] {
        let c = config::ModelConfig::builtin(self);
        let [r, w] = c.input.size.expect("built-in configs give the size");
        [c.input.channels.unwrap_or(1), r, w]
    }

    /// The zoo model a pipeline runs when given none (`None`: it ships a trained model).
    pub fn default_zoo_model(self) -> Option<&'static str> {
        match self {
            Pipeline::Cardiac => None,
            Pipeline::Cxr => Some("densenet121-cxr"),
            Pipeline::Ct => Some("resnet18-ct"),
        }
    }
}

/// Pipeline errors: what was wrong with which input, or which stage failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// An input this pipeline cannot analyse (wrong dimensionality, absurd spacing, no heart,
    /// no series, ...).
    #[error("{input}: {reason}")]
    Input {
        /// The input file or folder.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing an image file failed.
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
    /// A setting, or a file of settings (labels, thresholds), that cannot be used.
    #[error("{what}: {reason}")]
    Config {
        /// The setting or file.
        what: String,
        /// Why.
        reason: String,
    },
    /// Writing a result or a cached model failed.
    #[error("{path}: {reason}")]
    Output {
        /// The file or folder.
        path: String,
        /// Why.
        reason: String,
    },
    /// The batch failed as a whole (an inference worker panicked, or the model's output does
    /// not fit the batch).
    #[error("{0}")]
    Batch(String),
}

impl PipelineError {
    /// An [`PipelineError::Input`] error.
    pub fn input(input: impl Into<String>, reason: impl Into<String>) -> PipelineError {
        PipelineError::Input {
            input: input.into(),
            reason: reason.into(),
        }
    }

    /// An [`PipelineError::Output`] error: writing `path` failed because of `reason`.
    pub fn output(path: &std::path::Path, reason: impl std::fmt::Display) -> PipelineError {
        PipelineError::Output {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}
