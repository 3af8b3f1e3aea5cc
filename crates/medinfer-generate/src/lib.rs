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
//!     encoder: None,
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

/// The image processor of the export in `dir` (its preprocessor_config.json, else the
/// encoder's input size with ViT's defaults), without loading any engine: for preparing
/// calibration samples as [`Generator`] will see them.
pub fn image_processor(dir: &std::path::Path) -> Result<image::ImageProcessor, GenerateError> {
    let files = model::ModelFiles::find(dir, model::DecoderChoice::Auto)?;
    let m = medinfer_onnx::load_model(&files.encoder).map_err(|e| GenerateError::Model {
        path: files.encoder.clone(),
        message: e.to_string(),
    })?;
    let input = m
        .graph
        .as_ref()
        .and_then(|g| medinfer_onnx::data_inputs(g).next())
        .map(medinfer_onnx::value_info);
    let fixed = |d: &medinfer_onnx::Dim| match d {
        medinfer_onnx::Dim::Fixed(n) => *n,
        medinfer_onnx::Dim::Dynamic(_) => 0,
    };
    let hw = match input.as_ref().map(|i| i.shape.as_slice()) {
        Some([_, _, h, w]) => (fixed(h), fixed(w)),
        _ => (0, 0),
    };
    let p = image::ImageProcessor::read(files.preprocessor_config.as_deref(), hw)?;
    if p.size.0 == 0 || p.size.1 == 0 {
        return Err(GenerateError::Model {
            path: files.encoder.clone(),
            message: "cannot tell the image size: no size in preprocessor_config.json and no fixed height / width on the encoder's input".into(),
        });
    }
    Ok(p)
}

/// What [`quantize_export`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QuantizedExport {
    /// The new folder.
    pub output: PathBuf,
    /// Per rewritten decoder file: what changed.
    pub files: Vec<(String, medinfer_onnx::weightonly::WeightOnlyReport)>,
}

/// Writes a copy of the export in `dir` to `out` with the decoders' matrix products in 8- or
/// 4-bit weight-only form (`MatMulNBits`, blocks of `block` along K). The split decoder pair is
/// rewritten (a merged decoder keeps its products inside If branches, so it is left out of the
/// copy), and the encoder too when `encoder` is set; tokenizer and configs are copied as they
/// are.
pub fn quantize_export(
    dir: &std::path::Path,
    out: &std::path::Path,
    bits: u8,
    block: usize,
    accuracy_level: i64,
    encoder: bool,
) -> Result<QuantizedExport, GenerateError> {
    let files = model::ModelFiles::find(dir, model::DecoderChoice::Split)?;
    let options = medinfer_onnx::weightonly::WeightOnlyOptions {
        bits,
        block,
        min_elements: 4096,
        accuracy_level,
    };
    options.check().map_err(GenerateError::Input)?;
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(GenerateError::Input(format!(
            "{} exists and is not empty: choose a new folder",
            out.display()
        )));
    }
    let io = |p: &std::path::Path, e: std::io::Error| GenerateError::Model {
        path: p.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let model::DecoderFiles::Split { first, with_past } = &files.decoder else {
        return Err(GenerateError::Model {
            path: dir.to_path_buf(),
            message: "weight-only quantization needs decoder_model.onnx and decoder_with_past_model.onnx (a merged decoder keeps its products inside If branches)".into(),
        });
    };
    let mut reports = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if !p.is_file() || name == "decoder_model_merged.onnx" || name.ends_with(".onnx_data") {
            continue;
        }
        let target = out.join(&name);
        if p == *first || p == *with_past || (encoder && p == files.encoder) {
            let mut m = medinfer_onnx::load_model(&p).map_err(|e| GenerateError::Model {
                path: p.clone(),
                message: e.to_string(),
            })?;
            let r = medinfer_onnx::weightonly::quantize_weights(&mut m, options);
            medinfer_onnx::save_model(&m, &target).map_err(|e| GenerateError::Model {
                path: target.clone(),
                message: e.to_string(),
            })?;
            reports.push((name, r));
        } else {
            std::fs::copy(&p, &target).map_err(|e| io(&p, e))?;
        }
    }
    Ok(QuantizedExport {
        output: out.to_path_buf(),
        files: reports,
    })
}

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
