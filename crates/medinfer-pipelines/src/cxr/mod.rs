//! Chest X-ray multi-label classification with TorchXRayVision's conventions.
//!
//! Preprocessing, by default exactly TorchXRayVision's recipe (`skimage.io.imread` ->
//! `xrv.datasets.normalize(img, maxval)` -> mean over colour channels -> `XRayCenterCrop` ->
//! `XRayResizer(224)`): the first frame of a PNG (8 / 16-bit), JPEG or DICOM radiograph,
//! MONOCHROME1 inverted, `(2 x / maxval - 1) x 1024` in f32 with `maxval` the largest value of
//! the image's encoding (255, 65535, or 2^BitsStored - 1 after the modality LUT), colour
//! averaged to one channel, the centred square at xrv's offsets, then scikit-image's resize to
//! 224 x 224 (Gaussian anti-aliasing + bilinear, zeros beyond the edges, clipped:
//! [`preprocess::resize_skimage`]). Checked against the real `torchxrayvision` package
//! (tests/cxr.rs, fixtures from `tests/fixtures/xrv/make_xrv_fixtures.py`). [`Resize::Area`]
//! is the faster option (area averaging); its score difference is in docs/benchmarks.md.
//! A model with another config gets its size and normalisation; `minmax` is applied to the
//! image's own range before the resize (as `xrv` is), other normalisations after it.
//!
//! Scores: a sigmoid per label; with operating thresholds (TorchXRayVision's `op_threshs`), each
//! score is mapped piecewise-linearly so that its threshold lands on 0.5:
//! `p < t ? p / (2t) : 1 - (1 - p) / (2 (1 - t))`. A NaN threshold leaves the sigmoid as it is
//! (TorchXRayVision would return NaN for that label).

mod batch;
pub mod phantom;

pub use batch::{collect_inputs, csv_header, CxrBatch, CxrBatchRequest, CxrRecord, CxrSummary};

use crate::config::{ModelConfig, ModelSpec, Normalization};
use crate::PipelineError;
use medinfer_core::preprocess::{self, Filter};
use std::path::Path;

/// TorchXRayVision's 18 default pathologies (`xrv.datasets.default_pathologies`), in order:
/// the output order of its "all" DenseNet and of medinfer's `densenet121-cxr`.
pub const XRV_LABELS: [&str; 18] = [
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
];

/// TorchXRayVision's PadChest label set (`PC_Dataset.pathologies`, sorted as it sorts them;
/// the quote in `Tube'` is TorchXRayVision's own).
pub const PADCHEST_LABELS: [&str; 28] = [
    "Air Trapping",
    "Aortic Atheromatosis",
    "Aortic Elongation",
    "Atelectasis",
    "Bronchiectasis",
    "Cardiomegaly",
    "Consolidation",
    "Costophrenic Angle Blunting",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Flattened Diaphragm",
    "Fracture",
    "Granuloma",
    "Hemidiaphragm Elevation",
    "Hernia",
    "Hilar Enlargement",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
    "Scoliosis",
    "Support Devices",
    "Tube'",
    "Tuberculosis",
];

/// How the centred square is brought to `SIZE x SIZE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// TorchXRayVision's `XRayResizer` (scikit-image `resize`, anti-aliased), exact.
    #[default]
    Xrv,
    /// Area averaging: faster on large radiographs, scores differ slightly from xrv's.
    Area,
}

impl Resize {
    /// `xrv` or `area`.
    pub fn parse(s: &str) -> Option<Resize> {
        match s.to_ascii_lowercase().as_str() {
            "xrv" | "skimage" => Some(Resize::Xrv),
            "area" => Some(Resize::Area),
            _ => None,
        }
    }
}

/// How a radiograph becomes a model input: size, normalisation (from the model's config) and
/// the resize.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CxrPrep {
    /// Model input (rows, columns).
    pub size: [usize; 2],
    /// Intensity normalisation (`xrv` for TorchXRayVision models).
    pub normalization: Normalization,
    /// How the centred square is resized.
    pub resize: Resize,
}

impl Default for CxrPrep {
    /// The pipeline's own model (its built-in config), TorchXRayVision-exact.
    fn default() -> Self {
        let c = ModelConfig::builtin(crate::Pipeline::Cxr);
        CxrPrep {
            size: c.input.size.expect("the built-in config gives the size"),
            normalization: c.normalization.unwrap_or(Normalization::Xrv),
            resize: Resize::Xrv,
        }
    }
}

impl From<Resize> for CxrPrep {
    fn from(resize: Resize) -> Self {
        CxrPrep {
            resize,
            ..CxrPrep::default()
        }
    }
}

impl CxrPrep {
    /// From a model's checked config, with a choice of resize.
    pub fn of(spec: &ModelSpec, resize: Resize) -> CxrPrep {
        CxrPrep {
            size: spec.size,
            normalization: spec.normalization,
            resize,
        }
    }
}

/// Reads one radiograph and returns the model input (TorchXRayVision-exact).
pub fn preprocess_file(path: &Path) -> Result<Vec<f32>, PipelineError> {
    preprocess_file_with(path, CxrPrep::default())
}

/// [`preprocess_file`] with another size, normalisation or resize.
pub fn preprocess_file_with(
    path: &Path,
    prep: impl Into<CxrPrep>,
) -> Result<Vec<f32>, PipelineError> {
    let mut frames = medinfer_io::read_images(path)?;
    if frames.is_empty() {
        return Err(PipelineError::input(
            path.display().to_string(),
            "no image in the file",
        ));
    }
    let img = frames.swap_remove(0);
    preprocess_image_with(img, prep)
        .map_err(|e| PipelineError::input(path.display().to_string(), e.to_string()))
}

/// The preprocessing of [`preprocess_file`] on a decoded image.
pub fn preprocess_image(img: medinfer_core::Image2d) -> Result<Vec<f32>, medinfer_core::CoreError> {
    preprocess_image_with(img, CxrPrep::default())
}

/// [`preprocess_image`] with another size, normalisation or resize.
pub fn preprocess_image_with(
    img: medinfer_core::Image2d,
    prep: impl Into<CxrPrep>,
) -> Result<Vec<f32>, medinfer_core::CoreError> {
    let prep = prep.into();
    let maxval = img.value_range.1;
    let mut img = img.to_monochrome2();
    // xrv normalises first: skimage's resize pads with 0 and clips to the input's range, so
    // the order matters (0 is mid-grey after normalisation). minmax maps the image's own range,
    // before the resize too (as medinfer's ViT processor and Pillow-based training code map a
    // 16-bit radiograph to 8 bits): after it, thin bright lines (tubes, wires) would have lost
    // their peak and moved the range. Linear in the values, so it commutes with the colour mean.
    let xrv = prep.normalization == Normalization::Xrv;
    let first = xrv || prep.normalization == Normalization::Minmax;
    if xrv {
        preprocess::xrv_normalize(&mut img.data, maxval)?;
    } else if first {
        prep.normalization.apply(&mut img.data)?;
    }
    let img = preprocess::center_crop_square(&img.mean_channels());
    let [rows, cols] = prep.size;
    let mut img = match prep.resize {
        Resize::Xrv => preprocess::resize_skimage(&img, cols, rows)?,
        Resize::Area => preprocess::resize(&img, cols, rows, Filter::Area)?,
    };
    if !first {
        prep.normalization.apply(&mut img.data)?;
    }
    Ok(img.data)
}

/// Sigmoid of the logits, then TorchXRayVision's operating-point normalisation when
/// `thresholds` is given (same length as the logits).
pub fn scores(logits: &[f32], thresholds: Option<&[f32]>) -> Vec<f32> {
    logits
        .iter()
        .enumerate()
        .map(|(i, &z)| {
            let p = 1.0 / (1.0 + (-z).exp());
            match thresholds.map(|t| t[i]) {
                Some(t) if t.is_finite() && t > 0.0 && t < 1.0 => {
                    if p < t {
                        p / (2.0 * t)
                    } else {
                        1.0 - (1.0 - p) / (2.0 * (1.0 - t))
                    }
                }
                _ => p,
            }
        })
        .collect()
}

/// Reads a label list: `xrv` (the 18 default pathologies), `padchest`, or a text file with one
/// label per line (blank lines and `#` comments ignored).
pub fn read_labels(spec: &str) -> Result<Vec<String>, PipelineError> {
    match spec {
        "xrv" | "default" => return Ok(XRV_LABELS.iter().map(|s| s.to_string()).collect()),
        "padchest" => return Ok(PADCHEST_LABELS.iter().map(|s| s.to_string()).collect()),
        _ => {}
    }
    let text = std::fs::read_to_string(spec).map_err(|e| medinfer_io::IoError::Os {
        path: spec.to_string(),
        source: e,
    })?;
    let labels: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if labels.is_empty() {
        return Err(PipelineError::Config {
            what: spec.to_string(),
            reason: "no labels in the file".into(),
        });
    }
    Ok(labels)
}

/// Reads operating thresholds: numbers separated by commas, spaces or new lines, one per label
/// in label order (`nan` for a label without one), each in (0, 1).
pub fn read_thresholds(path: &Path, labels: usize) -> Result<Vec<f32>, PipelineError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| medinfer_io::IoError::Os {
        path: p.clone(),
        source: e,
    })?;
    let mut out = Vec::new();
    for tok in text
        .split(|c: char| c == ',' || c.is_whitespace() || c == '[' || c == ']')
        .filter(|t| !t.is_empty())
    {
        let bad = |reason: String| PipelineError::Config {
            what: p.clone(),
            reason,
        };
        let v: f32 = tok
            .parse()
            .map_err(|_| bad(format!("'{tok}' is not a number")))?;
        if v.is_finite() && !(v > 0.0 && v < 1.0) {
            return Err(bad(format!("threshold {v} is outside (0, 1)")));
        }
        out.push(v);
    }
    if out.len() != labels {
        return Err(PipelineError::Config {
            what: p,
            reason: format!("{} thresholds for {labels} labels", out.len()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operating_thresholds_map_to_one_half() {
        // logit 0 -> 0.5; threshold 0.2: 0.5 >= 0.2 -> 1 - 0.5 / 1.6 = 0.6875.
        let s = scores(
            &[0.0, 0.0, (0.2f32 / 0.8).ln(), 0.0],
            Some(&[0.2, 0.8, 0.2, f32::NAN]),
        );
        assert!((s[0] - 0.6875).abs() < 1e-6);
        // threshold 0.8: 0.5 < 0.8 -> 0.5 / 1.6 = 0.3125.
        assert!((s[1] - 0.3125).abs() < 1e-6);
        // A score equal to its threshold becomes 0.5.
        assert!((s[2] - 0.5).abs() < 1e-6);
        // NaN threshold: the sigmoid.
        assert!((s[3] - 0.5).abs() < 1e-6);
        assert_eq!(XRV_LABELS.len(), 18);
        let mut sorted = PADCHEST_LABELS.to_vec();
        sorted.sort();
        assert_eq!(sorted, PADCHEST_LABELS.to_vec());
    }
}
