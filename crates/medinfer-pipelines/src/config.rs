//! Model configs: what a pipeline must know about a model that the ONNX file does not say.
//!
//! A config gives the input size and pixel spacing, the intensity normalisation, the label
//! names and their output indices, and the output activation with any thresholds. Every
//! pipeline reads one for every model, its own included: the shipped and zoo models' configs
//! are the JSON files embedded below ([`ModelConfig::builtin`]), so the values a pipeline uses
//! are written once.
//!
//! Where a config comes from ([`ModelConfig::for_model`]); each found fills what the ones
//! before it leave out:
//! 1. `--config FILE` (a medinfer config, or a MONAI bundle's `metadata.json`);
//! 2. `MODEL.json` next to `MODEL.onnx`;
//! 3. a MONAI bundle: the model under `BUNDLE/models/` and `BUNDLE/configs/metadata.json`,
//!    whose `network_data_format` gives the input channels and spatial shape, the output
//!    channels and their names (`channel_def`);
//! 4. the pipeline's built-in config.
//!
//! Anything no config gives comes from the pipeline's built-in config (a MONAI bundle has no
//! pixel spacing or normalisation field, for example: give them in `--config` or `MODEL.json`). Then [`ModelConfig::resolve`] checks
//! it against the model's own input and output shapes before any inference: a config that
//! contradicts the model (channels, size, number of labels) is an error naming both.
//!
//! The medinfer format (all fields optional):
//! ```json
//! {
//!   "pipeline": "cardiac",
//!   "input": {"size": [96, 96], "channels": 1, "spacing_mm": [1.6, 1.6]},
//!   "normalization": {"kind": "zscore"},
//!   "labels": {"background": 0, "LV": 1, "MYO": 2, "RV": 3},
//!   "output": {"activation": "softmax", "thresholds": null}
//! }
//! ```
//! `size` and `spacing_mm` are (rows, columns). `labels` is a list in output order, an object
//! of name -> index, or an object of index -> name (MONAI's `channel_def`). Normalisations:
//! `zscore` (per image), `minmax` (per image, to [0, 1]), `range` (`min`, `max` -> [0, 1], `clip` optional), `window` (`center`, `width` -> [0, 1],
//! DICOM's linear VOI function), `xrv` (TorchXRayVision's [-1024, 1024] from the encoding's
//! maximum), `none`. Activations: `softmax`, `sigmoid`, `logits` (none).

use crate::{Pipeline, PipelineError};
use medinfer_onnx::Dim;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The shipped cardiac model's config (also the cardiac pipeline's defaults).
const CARDIAC: &str = include_str!("../../../models/cardiac/cardiac-unet.json");
/// The chest X-ray pipeline's defaults (the zoo densenet121-cxr, TorchXRayVision's layout).
const CXR: &str = include_str!("../configs/cxr.json");
/// The CT pipeline's defaults (the zoo resnet18-ct).
const CT: &str = include_str!("../configs/ct.json");

/// Intensity normalisation of the model input.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Normalization {
    /// Zero mean, unit variance over each input image.
    Zscore,
    /// `(v - min) / (max - min)`, clipped to [0, 1] with `clip` (MONAI's
    /// `ScaleIntensityRanged(a_min, a_max, 0, 1, clip)`).
    Range {
        /// Maps to 0.
        min: f64,
        /// Maps to 1.
        max: f64,
        /// Clip the result to [0, 1].
        #[serde(default)]
        clip: bool,
    },
    /// `(v - min) / (max - min)` with the image's own minimum and maximum (MONAI's
    /// `ScaleIntensity`; divide-by-maximum for MRI whose minimum is 0).
    Minmax,
    /// DICOM's linear VOI window to [0, 1].
    Window {
        /// Window centre.
        center: f64,
        /// Window width (>= 1).
        width: f64,
    },
    /// TorchXRayVision: `(2 v / maxval - 1) x 1024`, maxval = the encoding's maximum.
    Xrv,
    /// Values as read (modality units).
    None,
}

impl Normalization {
    /// Applies a normalisation that needs nothing but the values (`xrv` needs the encoding's
    /// maximum and is applied by the pipeline that reads the file).
    pub fn apply(&self, data: &mut [f32]) -> Result<(), medinfer_core::CoreError> {
        use medinfer_core::preprocess;
        match *self {
            Normalization::Zscore => preprocess::zscore(data),
            Normalization::Range { min, max, clip } => {
                let (lo, k) = (min as f32, 1.0 / ((max - min) as f32));
                data.iter_mut().for_each(|v| *v = (*v - lo) * k);
                if clip {
                    data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
                }
            }
            Normalization::Window { center, width } => {
                preprocess::window(data, center, width, 0.0, 1.0)?
            }
            Normalization::Minmax => preprocess::min_max_normalize(data),
            Normalization::Xrv | Normalization::None => {}
        }
        Ok(())
    }
}

/// Which way up the model expects its input images (the cardiac pipeline reads it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Orientation {
    /// The pixel grid as the file stores it (nothing is turned): the default for a model that
    /// brings its own config, since medinfer cannot know how its training data was stored.
    #[default]
    Stored,
    /// The anatomical view, made from the volume's affine: the patient's anterior up, the
    /// patient's left on the image's right (the radiological display), in the slice plane.
    /// Any in-plane rotation or mirroring of the stored grid is undone in the same bilinear
    /// pass that samples the model's patch.
    Anatomical,
}

/// What the model's output is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Class logits; probabilities by softmax over the channel axis.
    Softmax,
    /// Independent labels; probabilities by a sigmoid each.
    Sigmoid,
    /// Already probabilities, or scores used as they are.
    Logits,
}

/// Input geometry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// (rows, columns) of one input image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[usize; 2]>,
    /// Channels of the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// Pixel spacing the model was trained at, mm (rows, columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing_mm: Option<[f64; 2]>,
    /// Which way up the model expects the image (`stored` when a model's own config leaves it
    /// out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<Orientation>,
}

/// Output interpretation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// How scores become probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    /// Operating thresholds, one per label (null = none for that label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<Option<f32>>>,
}

/// A model config as read (every part optional until merged with the pipeline's defaults).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The pipeline it is meant for (checked when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Input geometry.
    #[serde(default)]
    pub input: InputSpec,
    /// Intensity normalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// Label names by output index (empty: not given).
    #[serde(
        default,
        deserialize_with = "labels_de",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub labels: Vec<String>,
    /// Output interpretation.
    #[serde(default)]
    pub output: OutputSpec,
    /// Where it was read from (`builtin:cardiac`, a file, ...).
    #[serde(skip)]
    pub source: String,
    /// Parts taken from the pipeline's built-in config although a config of the model's own
    /// was found (e.g. `input.spacing_mm` under a MONAI bundle): a pipeline may refuse to
    /// guess those.
    #[serde(skip)]
    pub defaulted: Vec<&'static str>,
}

/// Labels as a list, `{name: index}` or `{"index": name}`.
pub(crate) fn labels_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    labels_from_value(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Label names from a list, `{name: index}` or `{"index": name}`.
pub(crate) fn labels_from_value(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("label {x} is not a string"))
            })
            .collect(),
        Value::Object(m) => {
            let mut pairs: Vec<(usize, String)> = Vec::new();
            for (k, val) in m {
                let pair = match (k.parse::<usize>(), val) {
                    (Ok(i), Value::String(name)) => (i, name.clone()),
                    (_, Value::Number(n)) => match n.as_u64() {
                        Some(i) => (i as usize, k.clone()),
                        None => {
                            return Err(format!("label '{k}': index {n} is not a whole number"))
                        }
                    },
                    _ => {
                        return Err(format!(
                            "label entry '{k}': {val} is neither a name nor an index"
                        ))
                    }
                };
                pairs.push(pair);
            }
            if pairs.is_empty() {
                return Ok(Vec::new());
            }
            let n = pairs.iter().map(|p| p.0).max().unwrap_or(0) + 1;
            if n > 100_000 {
                return Err(format!("label index {} is absurd", n - 1));
            }
            let mut out = vec![String::new(); n];
            for (i, name) in pairs {
                if !out[i].is_empty() {
                    return Err(format!(
                        "two labels have index {i}: '{}' and '{name}'",
                        out[i]
                    ));
                }
                out[i] = name;
            }
            if let Some(i) = out.iter().position(|s| s.is_empty()) {
                return Err(format!("no label has index {i} (indices must be 0..{n})"));
            }
            Ok(out)
        }
        other => Err(format!("labels must be a list or an object, not {other}")),
    }
}

/// The config files of `model`, first to last: `explicit`, `MODEL.json` beside it, a MONAI
/// bundle's `configs/metadata.json` (the model under `BUNDLE/models/`), those that exist.
pub(crate) fn config_files(model: &Path, explicit: Option<&Path>) -> Vec<PathBuf> {
    let beside = model.with_extension("json");
    let bundle = model
        .parent()
        .filter(|d| d.file_name().is_some_and(|n| n == "models"))
        .and_then(Path::parent)
        .map(|b| b.join("configs").join("metadata.json"));
    let mut found: Vec<PathBuf> = explicit.map(Path::to_path_buf).into_iter().collect();
    for p in [Some(beside), bundle].into_iter().flatten() {
        if p.is_file() && !found.contains(&p) {
            found.push(p);
        }
    }
    found
}

/// A config file's text (16 MiB at most: anything larger is not a model config).
pub(crate) fn read_config_text(path: &Path) -> Result<String, PipelineError> {
    let meta = std::fs::metadata(path).map_err(|e| config_err(path, e.to_string()))?;
    if meta.len() > 16 << 20 {
        return Err(config_err(path, "larger than 16 MiB: not a model config"));
    }
    std::fs::read_to_string(path).map_err(|e| config_err(path, e.to_string()))
}

fn config_err(what: &Path, reason: impl Into<String>) -> PipelineError {
    PipelineError::Config {
        what: what.display().to_string(),
        reason: reason.into(),
    }
}

impl ModelConfig {
    /// The built-in config of a pipeline (its own model's).
    pub fn builtin(pipeline: Pipeline) -> ModelConfig {
        let text = match pipeline {
            Pipeline::Cardiac => CARDIAC,
            Pipeline::Cxr => CXR,
            Pipeline::Ct => CT,
        };
        let mut c: ModelConfig = serde_json::from_str(text).expect("built-in configs are valid");
        c.source = format!("builtin:{}", pipeline.name());
        c
    }

    /// Parses a medinfer config or a MONAI `metadata.json` (recognised by its
    /// `network_data_format`).
    pub fn parse(text: &str, path: &Path) -> Result<ModelConfig, PipelineError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| config_err(path, format!("not valid JSON: {e}")))?;
        let mut c = if v.get("network_data_format").is_some() {
            from_monai(&v).map_err(|e| config_err(path, format!("MONAI metadata: {e}")))?
        } else {
            serde_json::from_value::<ModelConfig>(v)
                .map_err(|e| config_err(path, format!("not a medinfer model config: {e}")))?
        };
        c.source = path.display().to_string();
        Ok(c)
    }

    /// Reads a config file.
    pub fn read(path: &Path) -> Result<ModelConfig, PipelineError> {
        Self::parse(&read_config_text(path)?, path)
    }

    /// The config for `model` in `pipeline`: every config found, each filling what the ones
    /// before it leave out: `explicit`, then `MODEL.json`, then a MONAI bundle's
    /// `configs/metadata.json`, then the pipeline's built-in config. (So a MONAI bundle's
    /// labels and size can be completed by a small medinfer config giving the spacing.)
    pub fn for_model(
        pipeline: Pipeline,
        model: &Path,
        explicit: Option<&Path>,
    ) -> Result<ModelConfig, PipelineError> {
        let mut merged: Option<ModelConfig> = None;
        for path in &config_files(model, explicit) {
            let c = Self::read(path)?;
            if let Some(p) = &c.pipeline {
                if !p.eq_ignore_ascii_case(pipeline.name()) {
                    return Err(config_err(
                        path,
                        format!("is for the {p} pipeline, not {}", pipeline.name()),
                    ));
                }
            }
            merged = Some(match merged {
                None => c,
                Some(m) => {
                    let mut sources = m.source.clone();
                    sources.push_str(" + ");
                    sources.push_str(&c.source);
                    let mut out = m.over(c);
                    out.source = sources;
                    out
                }
            });
        }
        Ok(match merged {
            Some(m) => {
                let mut defaulted = Vec::new();
                if m.input.spacing_mm.is_none() {
                    defaulted.push("input.spacing_mm");
                }
                if m.input.size.is_none() {
                    defaulted.push("input.size");
                }
                if m.labels.is_empty() {
                    defaulted.push("labels");
                }
                if m.normalization.is_none() {
                    defaulted.push("normalization");
                }
                // Never the built-in model's orientation: a model of one's own sees the grid
                // as stored unless its config says otherwise.
                let orientation = m.input.orientation.unwrap_or_default();
                let mut out = m.over(Self::builtin(pipeline));
                out.input.orientation = Some(orientation);
                out.defaulted = defaulted;
                out
            }
            None => Self::builtin(pipeline),
        })
    }

    /// `self` with every part it leaves out taken from `base`.
    pub fn over(self, base: ModelConfig) -> ModelConfig {
        ModelConfig {
            pipeline: self.pipeline.or(base.pipeline),
            input: InputSpec {
                size: self.input.size.or(base.input.size),
                channels: self.input.channels.or(base.input.channels),
                spacing_mm: self.input.spacing_mm.or(base.input.spacing_mm),
                orientation: self.input.orientation.or(base.input.orientation),
            },
            normalization: self.normalization.or(base.normalization),
            labels: if self.labels.is_empty() {
                base.labels
            } else {
                self.labels
            },
            output: OutputSpec {
                activation: self.output.activation.or(base.output.activation),
                thresholds: self.output.thresholds.or(base.output.thresholds),
            },
            source: self.source,
            defaulted: self.defaulted,
        }
    }

    /// Checks the config against the model file's declared input and output and fills what
    /// the model fixes. `batch` is the batch the session will run.
    pub fn resolve(&self, model: &Path, batch: usize) -> Result<ModelSpec, PipelineError> {
        let m = medinfer_onnx::load_model(model).map_err(medinfer_engine::EngineError::from)?;
        let info = medinfer_onnx::analyze(&m, None);
        let bad = |reason: String| PipelineError::Model {
            model: model.display().to_string(),
            reason: format!("{reason} (config: {})", self.source),
        };
        if info.inputs.len() != 1 || info.inputs[0].shape.len() != 4 {
            return Err(bad(format!(
                "takes {} input(s) of shape {:?}; the pipelines feed one (batch, channels, rows, columns) image",
                info.inputs.len(),
                info.inputs.iter().map(|i| dims(&i.shape)).collect::<Vec<_>>()
            )));
        }
        let inp = &info.inputs[0];
        let fixed = |d: &Dim| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Dynamic(_) => None,
        };
        let pick =
            |what: &str, axis: usize, want: Option<usize>| match (fixed(&inp.shape[axis]), want) {
                (Some(m), Some(c)) if m != c => Err(bad(format!(
                    "the config says {what} {c}, the model's input has {m}"
                ))),
                (Some(m), _) => Ok(m),
                (None, Some(c)) => Ok(c),
                (None, None) => Err(bad(format!(
                    "the model's input {what} is dynamic and the config does not give it"
                ))),
            };
        let channels = pick("channels", 1, self.input.channels)?;
        let rows = pick("rows", 2, self.input.size.map(|s| s[0]))?;
        let cols = pick("columns", 3, self.input.size.map(|s| s[1]))?;
        let batch = fixed(&inp.shape[0]).unwrap_or(batch.max(1));
        let dynamic = inp.shape.iter().skip(1).any(|d| fixed(d).is_none());
        let out = info
            .outputs
            .first()
            .ok_or_else(|| bad("has no output".into()))?;
        let out_channels = out.shape.get(1).and_then(fixed);
        if let Some(n) = out_channels {
            if !self.labels.is_empty() && n != self.labels.len() {
                return Err(bad(format!(
                    "the model gives {n} output channels, the config names {} labels",
                    self.labels.len()
                )));
            }
        }
        if let Some(t) = &self.output.thresholds {
            if !self.labels.is_empty() && t.len() != self.labels.len() {
                return Err(bad(format!(
                    "{} thresholds for {} labels",
                    t.len(),
                    self.labels.len()
                )));
            }
        }
        if let Some(Normalization::Window { width, .. }) = self.normalization {
            if width.is_nan() || width < 1.0 {
                return Err(bad(format!("window width {width} must be >= 1")));
            }
        }
        if let Some(Normalization::Range { min, max, .. }) = self.normalization {
            if min.partial_cmp(&max) != Some(std::cmp::Ordering::Less) {
                return Err(bad(format!("range [{min}, {max}] must have min < max")));
            }
        }
        if let Some(s) = self.input.spacing_mm {
            if !(s[0] > 0.0 && s[1] > 0.0 && s[0] < 1000.0 && s[1] < 1000.0) {
                return Err(bad(format!("pixel spacing {s:?} mm is not plausible")));
            }
        }
        let mut input_shapes = HashMap::new();
        if dynamic {
            input_shapes.insert(inp.name.clone(), vec![batch, channels, rows, cols]);
        }
        Ok(ModelSpec {
            defaulted: self.defaulted.clone(),
            source: self.source.clone(),
            size: [rows, cols],
            channels,
            spacing_mm: self.input.spacing_mm,
            orientation: self.input.orientation.unwrap_or_default(),
            normalization: self.normalization.unwrap_or(Normalization::None),
            labels: self.labels.clone(),
            activation: self.output.activation.unwrap_or(Activation::Logits),
            thresholds: self.output.thresholds.clone(),
            output_channels: out_channels,
            output_rank: out.shape.len(),
            output_spatial: out.shape.get(2..4).map(|s| [fixed(&s[0]), fixed(&s[1])]),
            input_shapes,
        })
    }
}

fn dims(s: &[Dim]) -> Vec<String> {
    s.iter().map(|d| d.to_string()).collect()
}

/// A config checked against its model: everything a pipeline needs, concrete.
#[derive(Clone, Debug, Serialize)]
pub struct ModelSpec {
    /// Where the config came from.
    pub source: String,
    /// Input (rows, columns).
    pub size: [usize; 2],
    /// Input channels.
    pub channels: usize,
    /// Pixel spacing of the input, mm (rows, columns), when the pipeline resamples.
    pub spacing_mm: Option<[f64; 2]>,
    /// Which way up the model expects its images.
    pub orientation: Orientation,
    /// Intensity normalisation.
    pub normalization: Normalization,
    /// Label names by output index.
    pub labels: Vec<String>,
    /// Output activation.
    pub activation: Activation,
    /// Operating thresholds per label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<Option<f32>>>,
    /// Output channels, when the model fixes them.
    #[serde(skip)]
    pub output_channels: Option<usize>,
    /// Rank of the first output.
    #[serde(skip)]
    pub output_rank: usize,
    /// Spatial dims of the first output (rank-4 outputs), when fixed.
    #[serde(skip)]
    pub output_spatial: Option<[Option<usize>; 2]>,
    /// Input shapes to give the session (dynamic models).
    #[serde(skip)]
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Parts the model's own config left to the pipeline's built-in one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub defaulted: Vec<&'static str>,
}

impl ModelSpec {
    /// The output index of a label, by name (case-insensitive; `aliases` tried too).
    pub fn label_index(&self, names: &[&str]) -> Option<usize> {
        self.labels
            .iter()
            .position(|l| names.iter().any(|n| l.eq_ignore_ascii_case(n)))
    }

    /// The thresholds as the pipelines use them (NaN = none).
    pub fn thresholds_f32(&self) -> Option<Vec<f32>> {
        self.thresholds
            .as_ref()
            .map(|t| t.iter().map(|v| v.unwrap_or(f32::NAN)).collect())
    }
}

/// A MONAI bundle's `metadata.json`: `network_data_format` inputs / outputs (the first of
/// each): `num_channels`, `spatial_shape` (numbers; symbolic entries such as "16*n" leave the
/// size to the model), output `channel_def` as labels, `format: segmentation` -> softmax.
fn from_monai(v: &Value) -> Result<ModelConfig, String> {
    let f = monai_format(v)?;
    let size = match f.spatial.as_deref() {
        Some([r, c]) => Some([*r, *c]),
        Some(other) => {
            return Err(format!(
                "input spatial_shape {other:?}: the pipelines take 2-D images"
            ))
        }
        None => None,
    };
    Ok(ModelConfig {
        input: InputSpec {
            size,
            channels: f.channels,
            spacing_mm: None,
            orientation: None,
        },
        labels: f.labels,
        output: OutputSpec {
            activation: f.activation,
            thresholds: None,
        },
        ..Default::default()
    })
}

/// What a MONAI bundle's `network_data_format` says of its first input and output.
pub(crate) struct MonaiFormat {
    /// Input channels.
    pub channels: Option<usize>,
    /// Input spatial shape (numbers only; symbolic entries leave it to the model).
    pub spatial: Option<Vec<usize>>,
    /// Output names from `channel_def` (checked against the output's `num_channels`).
    pub labels: Vec<String>,
    /// `segmentation` -> softmax, `probabilities` -> as they are.
    pub activation: Option<Activation>,
}

/// Reads a MONAI bundle's `network_data_format` (for the 2-D and the segmentation configs).
pub(crate) fn monai_format(v: &Value) -> Result<MonaiFormat, String> {
    let ndf = &v["network_data_format"];
    let first = |k: &str| -> Result<&serde_json::Map<String, Value>, String> {
        ndf.get(k)
            .and_then(Value::as_object)
            .and_then(|m| m.values().next())
            .and_then(Value::as_object)
            .ok_or_else(|| format!("network_data_format.{k} has no entry"))
    };
    let inp = first("inputs")?;
    let out = first("outputs")?;
    let count = |m: &serde_json::Map<String, Value>| {
        m.get("num_channels")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
    };
    let spatial: Option<Vec<usize>> = inp
        .get("spatial_shape")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect());
    let labels = match out.get("channel_def") {
        Some(cd) => labels_from_value(cd)?,
        None => Vec::new(),
    };
    if let (Some(n), false) = (count(out), labels.is_empty()) {
        if n != labels.len() {
            return Err(format!(
                "outputs num_channels {n} but channel_def names {}",
                labels.len()
            ));
        }
    }
    let activation = match out.get("format").and_then(Value::as_str) {
        Some("segmentation") => Some(Activation::Softmax),
        Some("probabilities") => Some(Activation::Logits),
        _ => None,
    };
    Ok(MonaiFormat {
        channels: count(inp),
        spatial,
        labels,
        activation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_configs_parse() {
        for p in Pipeline::ALL {
            let c = ModelConfig::builtin(p);
            assert!(c.input.size.is_some(), "{p:?}");
            assert!(!c.labels.is_empty(), "{p:?}");
        }
    }

    #[test]
    fn orientation_is_anatomical_for_the_shipped_model_and_stored_for_a_users_own() {
        assert_eq!(
            ModelConfig::builtin(Pipeline::Cardiac).input.orientation,
            Some(Orientation::Anatomical)
        );
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        // A config of the model's own that says nothing of orientation: the grid as stored,
        // never the built-in model's view.
        std::fs::write(
            dir.path().join("m.json"),
            r#"{"input": {"spacing_mm": [1.0, 1.0]}}"#,
        )
        .unwrap();
        let c = ModelConfig::for_model(Pipeline::Cardiac, &model, None).unwrap();
        assert_eq!(c.input.orientation, Some(Orientation::Stored));
        std::fs::write(
            dir.path().join("m.json"),
            r#"{"input": {"orientation": "anatomical"}}"#,
        )
        .unwrap();
        let c = ModelConfig::for_model(Pipeline::Cardiac, &model, None).unwrap();
        assert_eq!(c.input.orientation, Some(Orientation::Anatomical));
        let e = ModelConfig::parse(
            r#"{"input": {"orientation": "sideways"}}"#,
            Path::new("x.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.json") && e.contains("sideways"), "{e}");
    }

    #[test]
    fn labels_as_list_map_or_channel_def() {
        let list = labels_from_value(&serde_json::json!(["a", "b"])).unwrap();
        let map = labels_from_value(&serde_json::json!({"b": 1, "a": 0})).unwrap();
        let def = labels_from_value(&serde_json::json!({"1": "b", "0": "a"})).unwrap();
        assert_eq!(list, map);
        assert_eq!(map, def);
        assert!(labels_from_value(&serde_json::json!({"a": 0, "b": 0}))
            .unwrap_err()
            .contains("two labels"));
        assert!(labels_from_value(&serde_json::json!({"a": 0, "b": 2}))
            .unwrap_err()
            .contains("no label has index 1"));
    }
}
