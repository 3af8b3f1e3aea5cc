//! The config of a volumetric segmentation model: what `medinfer run segment` must know that
//! the ONNX file does not say (issue 8's model config, in three dimensions).
//!
//! ```json
//! {
//!   "pipeline": "segment",
//!   "input": {"channels": 1, "spacing_mm": [1.5, 1.5, 1.5], "orientation": "RAS",
//!             "axis_order": "xyz", "max_anisotropy": 3.0},
//!   "normalization": {"kind": "window", "center": 40, "width": 400},
//!   "labels": ["background", "liver", "tumour"],
//!   "output": {"activation": "softmax"},
//!   "sliding_window": {"roi": [96, 96, 96], "overlap": 0.25, "mode": "gaussian",
//!                      "sigma_scale": 0.125, "padding_mode": "constant", "cval": 0,
//!                      "sw_batch_size": 1, "pad_smaller": false},
//!   "postprocess": {"largest_component": true}
//! }
//! ```
//! - `orientation`: nibabel's axis codes of the grid the model was trained on (`RAS`: the
//!   first voxel axis runs to the patient's right, ...), as MONAI's `Orientationd(axcodes=)`;
//!   or `stored` (the default), the grid as the file stores it.
//! - `spacing_mm`: voxel size of that grid along its three axes, as MONAI's
//!   `Spacingd(pixdim=)`; absent, the volume is not resampled.
//! - `axis_order`: how the grid becomes the model's `N x C x D0 x D1 x D2` tensor: `xyz`
//!   (MONAI, nibabel: D0 is the grid's first axis) or `zyx` (SimpleITK arrays, nnU-Net: D0 is
//!   the third). `roi` is in the tensor's order.
//! - `layout`: `channels_first` (default) or `channels_last` (Keras exports: N x D0 x D1 x D2
//!   x C in and out; windows are transposed around the model, which for one channel is free).
//! - `max_anisotropy`: the largest ratio of the input's longest to shortest voxel side that is
//!   resampled (default 3): thicker slices than that would be invented by interpolation.
//! - `sliding_window`: MONAI's `sliding_window_inference` arguments (`roi` defaults to the
//!   model's fixed spatial shape). A volume smaller than the ROI after resampling is refused
//!   unless `pad_smaller` (then padded as MONAI pads it).
//! - `output.activation`: `softmax` (labels by arg-max; channel 0 is background), `sigmoid`
//!   (one label per channel, where its probability passes its threshold, 0.5 unless
//!   `thresholds` says), or `logits` (the output is already probabilities: arg-max over several
//!   channels, > threshold for one).
//!
//! A MONAI bundle's `metadata.json` is read too (its `network_data_format`: channels, the
//! spatial shape as ROI, `channel_def` as labels, `segmentation` as softmax); give the
//! spacing and orientation in a medinfer config beside it.

use crate::config::{
    config_files, labels_de, monai_format, read_config_text, Activation, Normalization,
};
use crate::sliding::{Blend, Padding, SlidingWindow};
use crate::PipelineError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Which way the model's grid runs, or the grid as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GridOrientation {
    /// The file's own voxel grid.
    Stored,
    /// nibabel axis codes: for each voxel axis, the world direction it increases toward as
    /// (world axis 0 = x / 1 = y / 2 = z, +1 toward R / A / S, -1 toward L / P / I).
    Codes([(usize, i8); 3]),
}

impl GridOrientation {
    /// Parses `stored` or three letters of R/L, A/P, S/I.
    pub fn parse(s: &str) -> Result<GridOrientation, String> {
        if s.eq_ignore_ascii_case("stored") {
            return Ok(GridOrientation::Stored);
        }
        let letters: Vec<char> = s.chars().map(|c| c.to_ascii_uppercase()).collect();
        if letters.len() != 3 {
            return Err(format!(
                "orientation '{s}': give three axis codes (e.g. RAS, LPS) or 'stored'"
            ));
        }
        let mut out = [(0usize, 1i8); 3];
        for (k, c) in letters.iter().enumerate() {
            out[k] = match c {
                'R' => (0, 1),
                'L' => (0, -1),
                'A' => (1, 1),
                'P' => (1, -1),
                'S' => (2, 1),
                'I' => (2, -1),
                _ => return Err(format!("orientation '{s}': '{c}' is not one of RLAPSI")),
            };
        }
        if out[0].0 == out[1].0 || out[0].0 == out[2].0 || out[1].0 == out[2].0 {
            return Err(format!(
                "orientation '{s}': each of R/L, A/P, S/I must appear once"
            ));
        }
        Ok(GridOrientation::Codes(out))
    }

    /// The codes as letters (`stored` for the stored grid).
    pub fn name(&self) -> String {
        match self {
            GridOrientation::Stored => "stored".into(),
            GridOrientation::Codes(c) => c.iter().map(|&(w, s)| code_letter(w, s)).collect(),
        }
    }
}

/// The letter of world axis `w` in direction `s`.
pub fn code_letter(w: usize, s: i8) -> char {
    match (w, s > 0) {
        (0, true) => 'R',
        (0, false) => 'L',
        (1, true) => 'A',
        (1, false) => 'P',
        (2, true) => 'S',
        _ => 'I',
    }
}

/// Input geometry (all optional as read).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegInput {
    /// Input channels (a 4-D file gives one channel per volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// Voxel size of the model's grid, mm, along its three axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing_mm: Option<[f64; 3]>,
    /// `stored`, or axis codes such as `RAS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<String>,
    /// `xyz` or `zyx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axis_order: Option<String>,
    /// Largest longest / shortest voxel side ratio resampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_anisotropy: Option<f64>,
    /// `channels_first` (N x C x D0 x D1 x D2, PyTorch / MONAI) or `channels_last`
    /// (N x D0 x D1 x D2 x C, TensorFlow / Keras exports), for input and output alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

/// Output interpretation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegOutput {
    /// How scores become probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    /// Thresholds per output channel (sigmoid / one-channel outputs; null = 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<Option<f32>>>,
}

/// MONAI `sliding_window_inference` arguments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegWindow {
    /// Window size in the tensor's spatial order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roi: Option<[usize; 3]>,
    /// Overlap, one value or one per dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Value>,
    /// `constant` or `gaussian`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Gaussian sigma as a fraction of the ROI, one value or one per dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_scale: Option<Value>,
    /// `constant`, `reflect`, `replicate` or `circular`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding_mode: Option<String>,
    /// Constant padding value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cval: Option<f32>,
    /// Windows per model call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sw_batch_size: Option<usize>,
    /// Pad a volume smaller than the ROI (MONAI does) instead of refusing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_smaller: Option<bool>,
}

/// Post-processing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegPost {
    /// Keep the largest 6-connected component of each label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_component: Option<bool>,
}

/// A segmentation model config as read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// `segment` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Input geometry.
    #[serde(default)]
    pub input: SegInput,
    /// Intensity normalisation (per channel over the whole volume; default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// Label names by output channel.
    #[serde(
        default,
        deserialize_with = "labels_de",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub labels: Vec<String>,
    /// Output interpretation.
    #[serde(default)]
    pub output: SegOutput,
    /// Sliding-window settings.
    #[serde(default)]
    pub sliding_window: SegWindow,
    /// Post-processing.
    #[serde(default)]
    pub postprocess: SegPost,
    /// Where it was read from.
    #[serde(skip)]
    pub source: String,
}

fn err(what: &Path, reason: impl Into<String>) -> PipelineError {
    PipelineError::Config {
        what: what.display().to_string(),
        reason: reason.into(),
    }
}

impl SegmentConfig {
    /// Parses a medinfer segmentation config or a MONAI bundle's `metadata.json`.
    pub fn parse(text: &str, path: &Path) -> Result<SegmentConfig, PipelineError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| err(path, format!("not valid JSON: {e}")))?;
        let mut c = if v.get("network_data_format").is_some() {
            from_monai(&v).map_err(|e| err(path, format!("MONAI metadata: {e}")))?
        } else {
            serde_json::from_value::<SegmentConfig>(v)
                .map_err(|e| err(path, format!("not a medinfer segmentation config: {e}")))?
        };
        if let Some(p) = &c.pipeline {
            if !p.eq_ignore_ascii_case("segment") {
                return Err(err(path, format!("is for the {p} pipeline, not segment")));
            }
        }
        c.source = path.display().to_string();
        Ok(c)
    }

    /// Reads a config file (16 MiB at most).
    pub fn read(path: &Path) -> Result<SegmentConfig, PipelineError> {
        Self::parse(&read_config_text(path)?, path)
    }

    /// The config of `model`: `explicit`, then `MODEL.json`, then a MONAI bundle's
    /// `configs/metadata.json`, each filling what the ones before leave out.
    pub fn for_model(
        model: &Path,
        explicit: Option<&Path>,
    ) -> Result<SegmentConfig, PipelineError> {
        let mut merged: Option<SegmentConfig> = None;
        for p in &config_files(model, explicit) {
            let c = Self::read(p)?;
            merged = Some(match merged {
                None => c,
                Some(m) => m.over(c),
            });
        }
        Ok(merged.unwrap_or_else(|| SegmentConfig {
            source: "none (model defaults)".into(),
            ..Default::default()
        }))
    }

    /// `self` with what it leaves out taken from `base`.
    pub fn over(self, base: SegmentConfig) -> SegmentConfig {
        let (a, b) = (self.sliding_window, base.sliding_window);
        SegmentConfig {
            pipeline: self.pipeline.or(base.pipeline),
            input: SegInput {
                channels: self.input.channels.or(base.input.channels),
                spacing_mm: self.input.spacing_mm.or(base.input.spacing_mm),
                orientation: self.input.orientation.or(base.input.orientation),
                axis_order: self.input.axis_order.or(base.input.axis_order),
                max_anisotropy: self.input.max_anisotropy.or(base.input.max_anisotropy),
                layout: self.input.layout.or(base.input.layout),
            },
            normalization: self.normalization.or(base.normalization),
            labels: if self.labels.is_empty() {
                base.labels
            } else {
                self.labels
            },
            output: SegOutput {
                activation: self.output.activation.or(base.output.activation),
                thresholds: self.output.thresholds.or(base.output.thresholds),
            },
            sliding_window: SegWindow {
                roi: a.roi.or(b.roi),
                overlap: a.overlap.or(b.overlap),
                mode: a.mode.or(b.mode),
                sigma_scale: a.sigma_scale.or(b.sigma_scale),
                padding_mode: a.padding_mode.or(b.padding_mode),
                cval: a.cval.or(b.cval),
                sw_batch_size: a.sw_batch_size.or(b.sw_batch_size),
                pad_smaller: a.pad_smaller.or(b.pad_smaller),
            },
            postprocess: SegPost {
                largest_component: self
                    .postprocess
                    .largest_component
                    .or(base.postprocess.largest_component),
            },
            source: format!("{} + {}", self.source, base.source),
        }
    }

    /// The sliding-window settings (MONAI's defaults where the config is silent), the ROI
    /// given.
    pub fn window(&self, roi: [usize; 3]) -> Result<SlidingWindow, PipelineError> {
        let what = Path::new(&self.source);
        let f64s =
            |v: &Option<Value>, name: &str, default: f64| -> Result<Vec<f64>, PipelineError> {
                match v {
                    None => Ok(vec![default]),
                    Some(Value::Number(n)) => Ok(vec![n.as_f64().unwrap_or(default)]),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|x| {
                            x.as_f64().ok_or_else(|| {
                                err(what, format!("sliding_window.{name}: {x} is not a number"))
                            })
                        })
                        .collect(),
                    Some(other) => Err(err(
                        what,
                        format!("sliding_window.{name}: {other} is neither a number nor a list"),
                    )),
                }
            };
        let w = &self.sliding_window;
        let blend = match w.mode.as_deref().unwrap_or("constant") {
            "constant" => Blend::Constant,
            "gaussian" => Blend::Gaussian,
            m => {
                return Err(err(
                    what,
                    format!("sliding_window.mode '{m}': constant or gaussian"),
                ))
            }
        };
        let padding = match w.padding_mode.as_deref().unwrap_or("constant") {
            "constant" => Padding::Constant(w.cval.unwrap_or(0.0)),
            "reflect" => Padding::Reflect,
            "replicate" => Padding::Replicate,
            "circular" => Padding::Circular,
            m => {
                return Err(err(
                    what,
                    format!(
                    "sliding_window.padding_mode '{m}': constant, reflect, replicate or circular"
                ),
                ))
            }
        };
        Ok(SlidingWindow {
            roi: roi.to_vec(),
            overlap: f64s(&w.overlap, "overlap", 0.25)?,
            blend,
            sigma_scale: f64s(&w.sigma_scale, "sigma_scale", 0.125)?,
            padding,
            sw_batch: w.sw_batch_size.unwrap_or(1).max(1),
            streams: 1,
        })
    }
}

/// A MONAI bundle's `network_data_format` (first input and output).
fn from_monai(v: &Value) -> Result<SegmentConfig, String> {
    let f = monai_format(v)?;
    let roi = match f.spatial.as_deref() {
        Some([a, b, c]) => Some([*a, *b, *c]),
        Some(other) => {
            return Err(format!(
                "input spatial_shape {other:?}: run segment takes 3-D models"
            ))
        }
        None => None,
    };
    Ok(SegmentConfig {
        input: SegInput {
            channels: f.channels,
            ..Default::default()
        },
        labels: f.labels,
        output: SegOutput {
            activation: f.activation,
            thresholds: None,
        },
        sliding_window: SegWindow {
            roi,
            ..Default::default()
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientation_codes() {
        assert_eq!(
            GridOrientation::parse("ras").unwrap(),
            GridOrientation::Codes([(0, 1), (1, 1), (2, 1)])
        );
        assert_eq!(GridOrientation::parse("PIL").unwrap().name(), "PIL");
        assert!(GridOrientation::parse("RRS").unwrap_err().contains("once"));
        assert!(GridOrientation::parse("RAX").unwrap_err().contains("'X'"));
        assert_eq!(
            GridOrientation::parse("stored").unwrap(),
            GridOrientation::Stored
        );
    }

    #[test]
    fn monai_metadata_and_medinfer_configs_merge() {
        let monai = SegmentConfig::parse(
            r#"{"network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": [96, 96, 96]}},
                "outputs": {"pred": {"format": "segmentation", "num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}}}}"#,
            Path::new("metadata.json"),
        )
        .unwrap();
        let mine = SegmentConfig::parse(
            r#"{"input": {"spacing_mm": [1.5, 1.5, 2.0], "orientation": "RAS"}, "sliding_window": {"overlap": 0.5, "mode": "gaussian"}}"#,
            Path::new("m.json"),
        )
        .unwrap();
        let c = mine.over(monai);
        assert_eq!(c.sliding_window.roi, Some([96, 96, 96]));
        assert_eq!(c.labels, ["background", "spleen"]);
        assert_eq!(c.output.activation, Some(Activation::Softmax));
        let w = c.window([96, 96, 96]).unwrap();
        assert_eq!(w.overlap, vec![0.5]);
        assert_eq!(w.blend, Blend::Gaussian);
        let e = SegmentConfig::parse(r#"{"input": {"size": [3, 3]}}"#, Path::new("bad.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.json") && e.contains("size"), "{e}");
        let e = SegmentConfig::parse(r#"{"pipeline": "cardiac"}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not segment"), "{e}");
    }
}
