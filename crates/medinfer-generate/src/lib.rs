//! # medinfer-generate
//!
//! Text generation from an image with an encoder-decoder model (a chest X-ray in, findings
//! out), on medinfer's native engines.
//!
//! - Reads the layout users already have: the ONNX export of a Hugging Face
//!   VisionEncoderDecoder model (optimum's `image-to-text-with-past`): `encoder_model.onnx`,
//!   `decoder_model_merged.onnx` or `decoder_model.onnx` + `decoder_with_past_model.onnx`,
//!   `tokenizer.json` (read by the `tokenizers` library), `config.json`,
//!   `generation_config.json`, `preprocessor_config.json` ([`model`]).
//! - Decodes greedily or by beam search with `transformers`' semantics: length penalty,
//!   early stopping, repetition penalty, no-repeat n-grams, end tokens, stop strings
//!   ([`decode`]). Token-exact parity with `model.generate` is tested (tests/parity.rs).
//! - Keeps the key/value cache in the engine: on ONNX Runtime the `present.*` outputs are fed
//!   back as the next step's `past_key_values.*` without a copy to the host, and beam search
//!   reorders them in place ([`medinfer_engine::dynamic`]).
//!
//! ```no_run
//! use medinfer_generate::{Generator, LoadOptions, Overrides, model::DecoderChoice};
//! let opts = LoadOptions {
//!     hoist: true,
//!     backend: medinfer_engine::BackendKind::Ort,
//!     session: Default::default(),
//!     decoder: DecoderChoice::Auto,
//! };
//! let g = Generator::load("model-dir".as_ref(), &opts).unwrap();
//! let report = g.generate_file("cxr.png".as_ref(), &Overrides::default()).unwrap();
//! println!("{}", report.text);
//! ```
#![warn(missing_docs)]

pub mod decode;
mod generator;
pub mod image;
pub mod model;

pub use generator::{split_findings, Generation, Generator, LoadOptions, Overrides, Timings};

use std::path::PathBuf;

/// Errors of report generation. Each names the file or the setting that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A model folder or one of its files is missing or unreadable.
    #[error("{}: {message}", path.display())]
    Model {
        /// The folder or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A model's inputs or outputs are laid out in a way medinfer does not know.
    #[error("{}: {message}", path.display())]
    Layout {
        /// The ONNX file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Parts of a model that do not fit each other.
    #[error("{0}")]
    Mismatch(String),
    /// A generation longer than the decoder can hold.
    #[error("{0}")]
    TooLong(String),
    /// An unusable input image or setting.
    #[error("{0}")]
    Input(String),
    /// Reading an image failed.
    #[error(transparent)]
    Io(#[from] medinfer_io::IoError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] medinfer_engine::EngineError),
    /// Generation failed while running.
    #[error("generation failed: {0}")]
    Run(String),
}
