//! Which model file a pipeline runs, and its identity in every result.
//!
//! - A model argument is an ONNX file, or the name of a zoo model, built once into the model
//!   cache ([`resolve`]). The zoo's INT8 versions are quantized once and cached too
//!   ([`zoo_int8`]).
//! - The trained cardiac model ships inside the binary and is written to the cache once per
//!   content ([`shipped_cardiac`]).
//! - [`ModelId`] (file, sha256, what its metadata says of its weights) goes into every report,
//!   so a result can always be traced to the model that made it.
//!
//! The cache is `$MEDINFER_HOME/models` (default `~/.cache/medinfer/models`), next to the
//! native runtimes but apart from them.

use crate::PipelineError;
use medinfer_core::Tensor;
use medinfer_engine::BackendKind;
use medinfer_onnx::qdq::{self, QuantConfig};
use medinfer_onnx::zoo;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The trained cardiac model shipped with medinfer (see models/cardiac/README.md).
const CARDIAC_FP32: &[u8] = include_bytes!("../../../models/cardiac/cardiac-unet.onnx");
/// Its INT8 version (medinfer quantize with accuracy control, see the model card).
const CARDIAC_INT8: &[u8] = include_bytes!("../../../models/cardiac/cardiac-unet-int8.onnx");

/// The trained fMRI network classifier (see models/fmri/README.md), weights stored as FP16.
const FMRI_FP32_F16: &[u8] = include_bytes!("../../../models/fmri/fmri-resnet50.onnx");
/// Its INT8 version.
const FMRI_INT8: &[u8] = include_bytes!("../../../models/fmri/fmri-resnet50-int8.onnx");

/// Where models are cached.
pub fn cache_dir() -> PathBuf {
    medinfer_engine::runtimes::home().join("models")
}

fn model_err(model: &Path, reason: impl Into<String>) -> PipelineError {
    PipelineError::Model {
        model: model.display().to_string(),
        reason: reason.into(),
    }
}

fn create_dir(dir: &Path) -> Result<(), PipelineError> {
    std::fs::create_dir_all(dir).map_err(|e| PipelineError::Output {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })
}

/// A model argument: an existing file, or a zoo model name built (once) into the cache.
pub fn resolve(arg: &str) -> Result<PathBuf, PipelineError> {
    let p = PathBuf::from(arg);
    if p.exists() {
        return Ok(p);
    }
    if zoo::entry(arg).is_ok() {
        let dir = medinfer_engine::runtimes::home()
            .join("zoo")
            .join(medinfer_onnx::builder::ZOO_FORMAT);
        let file = dir.join(format!("{arg}.onnx"));
        if !file.exists() {
            create_dir(&dir)?;
            let m = zoo::build(arg).map_err(medinfer_engine::EngineError::from)?;
            medinfer_onnx::save_model(&m, &file).map_err(medinfer_engine::EngineError::from)?;
        }
        return Ok(file);
    }
    Err(model_err(
        &p,
        "no such file, and no zoo model of that name (see `medinfer zoo list`)",
    ))
}

/// The INT8 version of a zoo model: optimized, calibrated on 100 synthetic samples (`zoo
/// samples`, seed 1) on the fastest engine, min/max ranges, bias correction; built once into
/// the zoo cache. `note` hears about the one-time quantization.
pub fn zoo_int8(name: &str, note: &dyn Fn(&str)) -> Result<PathBuf, PipelineError> {
    let fp32 = resolve(name)?;
    let file = fp32.with_file_name(format!("{name}-int8.onnx"));
    if file.exists() {
        return Ok(file);
    }
    note(&format!(
        "quantizing {name} for the int8 rows (once; cached as {})",
        file.display()
    ));
    let onnx =
        |e: medinfer_onnx::OnnxError| PipelineError::from(medinfer_engine::EngineError::from(e));
    let e = zoo::entry(name).map_err(onnx)?;
    let mut model = medinfer_onnx::load_model(&fp32).map_err(onnx)?;
    medinfer_onnx::optimize(&mut model).map_err(onnx)?;
    let mut shape = e.input_shape.to_vec();
    shape[0] = 1;
    let samples: Vec<Tensor> = zoo::sample_inputs(name, 100, 1)
        .map_err(onnx)?
        .into_iter()
        .map(|v| Tensor::from_f32(shape.clone(), v).map_err(|e| model_err(&fp32, e.to_string())))
        .collect::<Result<_, _>>()?;
    let config = QuantConfig::default();
    let plan = qdq::plan(&model, &config).map_err(onnx)?;
    let calib = medinfer_engine::calibrate::calibrate(
        &model,
        &plan,
        config.method,
        &samples,
        BackendKind::auto(),
        &mut |_| {},
    )?;
    let (qm, _) = qdq::quantize(&model, &plan, &calib, &config, &HashSet::new()).map_err(onnx)?;
    medinfer_onnx::save_model(&qm, &file).map_err(onnx)?;
    Ok(file)
}

/// The shipped cardiac segmentation model, FP32 or INT8, written to the cache once per content.
pub fn shipped_cardiac(int8: bool) -> Result<PathBuf, PipelineError> {
    if int8 {
        materialize(CARDIAC_INT8, "cardiac-unet-int8")
    } else {
        materialize(CARDIAC_FP32, "cardiac-unet")
    }
}

/// The shipped fMRI network classifier, FP32 or INT8, written to the cache once per content
/// (the FP32 model's FP16-stored weights expanded to FP32 on the way).
pub fn shipped_fmri(int8: bool) -> Result<PathBuf, PipelineError> {
    if int8 {
        return materialize(FMRI_INT8, "fmri-resnet50-int8");
    }
    materialize_with(FMRI_FP32_F16, "fmri-resnet50", |bytes| {
        let onnx = |e: medinfer_onnx::OnnxError| {
            PipelineError::from(medinfer_engine::EngineError::from(e))
        };
        let mut m = medinfer_onnx::decode_model(bytes, "shipped fmri-resnet50").map_err(onnx)?;
        medinfer_onnx::f16store::expand(&mut m);
        Ok(medinfer_onnx::encode_model(&m))
    })
}

/// Writes an embedded model into the cache (once per content) and returns its path.
fn materialize(bytes: &[u8], name: &str) -> Result<PathBuf, PipelineError> {
    materialize_with(bytes, name, |b| Ok(b.to_vec()))
}

/// [`materialize`] with a transformation of the embedded bytes (named by the embedded
/// bytes' hash; it is written to a temporary file and renamed, so a file that exists is whole).
fn materialize_with(
    bytes: &[u8],
    name: &str,
    transform: impl FnOnce(&[u8]) -> Result<Vec<u8>, PipelineError>,
) -> Result<PathBuf, PipelineError> {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    let dir = cache_dir();
    let path = dir.join(format!("{name}-{}.onnx", &sha[..12]));
    if path.is_file() {
        return Ok(path);
    }
    create_dir(&dir)?;
    let bytes = transform(bytes)?;
    let tmp = dir.join(format!(".{name}-{}.{}.tmp", &sha[..12], std::process::id()));
    let write_err = |p: &Path, e: std::io::Error| PipelineError::Output {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::write(&tmp, &bytes).map_err(|e| write_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| write_err(&path, e))?;
    Ok(path)
}

/// Identity of the model that produced a result.
#[derive(Clone, Debug, Serialize)]
pub struct ModelId {
    /// File.
    pub path: String,
    /// sha256 of the file.
    pub sha256: String,
    /// The model's `medinfer.weights` metadata, if any.
    pub weights: Option<String>,
}

impl ModelId {
    /// Hashes `path` and reads its weight description.
    pub fn of(path: &Path) -> Result<ModelId, PipelineError> {
        use sha2::Digest;
        let bytes = std::fs::read(path).map_err(|e| model_err(path, e.to_string()))?;
        let weights = medinfer_onnx::decode_model(&bytes, &path.display().to_string())
            .ok()
            .and_then(|m| {
                m.metadata_props
                    .iter()
                    .find(|p| p.key.as_deref() == Some("medinfer.weights"))
                    .and_then(|p| p.value.clone())
            });
        Ok(ModelId {
            path: path.display().to_string(),
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            weights,
        })
    }
}

/// Which of a pipeline's own models to run (ignored for a user's model file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// INT8 where the backend runs INT8 (ONNX Runtime, OpenVINO), else FP32.
    Auto,
    /// The FP32 model.
    Fp32,
    /// The INT8 (QDQ) model.
    Int8,
}

impl Precision {
    /// Whether a pipeline's own INT8 model is the one to run on `backend`.
    pub fn int8_on(self, backend: BackendKind) -> bool {
        match self {
            Precision::Int8 => true,
            Precision::Fp32 => false,
            Precision::Auto => backend != BackendKind::Tract,
        }
    }
}

/// The model a pipeline run uses.
#[derive(Clone, Debug)]
pub struct ChosenModel {
    /// The file.
    pub path: PathBuf,
    /// For a zoo model with seeded (untrained) weights: its name, so results can say so.
    pub untrained_zoo: Option<&'static str>,
}

/// The model for `pipeline` on `backend`: the user's file when given, else the pipeline's own
/// (the shipped trained cardiac model; the zoo model, untrained, for cxr and ct), FP32 or INT8
/// by `precision`. `note` hears about one-time work (quantizing a zoo model).
pub fn choose(
    pipeline: crate::Pipeline,
    backend: BackendKind,
    precision: Precision,
    user: Option<&Path>,
    note: &dyn Fn(&str),
) -> Result<ChosenModel, PipelineError> {
    if let Some(p) = user {
        return Ok(ChosenModel {
            path: p.to_path_buf(),
            untrained_zoo: None,
        });
    }
    let int8 = precision.int8_on(backend);
    match pipeline.default_zoo_model() {
        None => Ok(ChosenModel {
            path: shipped_cardiac(int8)?,
            untrained_zoo: None,
        }),
        Some(zoo_name) => Ok(ChosenModel {
            path: if int8 {
                zoo_int8(zoo_name, note)?
            } else {
                resolve(zoo_name)?
            },
            untrained_zoo: Some(zoo_name),
        }),
    }
}
