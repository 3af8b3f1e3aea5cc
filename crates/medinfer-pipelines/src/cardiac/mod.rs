//! Cardiac cine-MRI quantification: a short-axis cine stack in, LV / RV volumes, ejection
//! fractions and LV mass out.
//!
//! Stages (each timed in the report):
//! 1. **read**: a 4D NIfTI or a DICOM cine series into a [`Volume`] `[x, y, slices, phases]`.
//! 2. **preprocess**: locate the heart from the temporal standard deviation of the middle
//!    slices (the heart is what moves in a cine), then for every slice x phase sample a
//!    [`CROP`] x [`CROP`] patch at [`MODEL_SPACING`] mm around it (bilinear: resampling and
//!    cropping in one pass) and z-score it.
//! 3. **segment**: the model on every patch, in batches spread over the session's streams.
//! 4. **postprocess**: class scores interpolated back onto the input grid, arg-max, the largest
//!    3D connected component per structure and phase, areas x slice spacing (summation of
//!    discs, gap included), ED = largest LV volume, ES = smallest, EF, SV, and LV mass =
//!    myocardial volume at ED x 1.05 g/ml.
//! 5. **write** (by the caller): report JSON, masks as NIfTI in the input geometry, overlays and
//!    the volume curves.
//!
//! | file | what |
//! |---|---|
//! | `preprocess.rs` | input checks, heart location, patch sampling |
//! | `analyse.rs` | segmentation on the engine, back-projection, components, volumes |
//! | `outputs.rs` | masks, overlays and the volume-curve chart |
//! | `eval.rs` | training patches and accuracy on phantoms (not the clinical pipeline) |

mod analyse;
mod eval;
mod outputs;
mod preprocess;

pub use crate::models::ModelId;
pub use analyse::{analyse, check_model, keep_largest_component};
pub use eval::{dice, evaluate, training_set, EvalSummary, ExamScore};
pub use outputs::{mid_ventricular_slice, volume_curves_svg, write_outputs, write_overlay_pair};
pub use preprocess::{
    check_input, exam_patches, locate_heart, sample_label_patch, sample_patch, HeartLocation,
    PatchGeometry, MIN_MOTION_CONTRAST,
};

use crate::PipelineError;
use medinfer_engine::Session;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Pixel spacing of the model's input, mm.
pub const MODEL_SPACING: f64 = 1.6;
/// Side of the model's input patch, pixels.
pub const CROP: usize = 96;

/// Volumes of one chamber.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Chamber {
    /// End-diastolic volume, ml.
    pub edv_ml: f64,
    /// End-systolic volume, ml.
    pub esv_ml: f64,
    /// Stroke volume, ml.
    pub sv_ml: f64,
    /// Ejection fraction, %.
    pub ef_pct: f64,
}

impl Chamber {
    fn new(edv: f64, esv: f64) -> Chamber {
        Chamber {
            edv_ml: edv,
            esv_ml: esv,
            sv_ml: edv - esv,
            ef_pct: if edv > 0.0 {
                100.0 * (edv - esv) / edv
            } else {
                0.0
            },
        }
    }
}

/// Wall-clock time per stage, ms.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timings {
    /// Reading the input files.
    pub read_ms: f64,
    /// Locating the heart and sampling the patches.
    pub preprocess_ms: f64,
    /// The model on every patch.
    pub segment_ms: f64,
    /// Back to the input grid, connected components, volumes.
    pub postprocess_ms: f64,
    /// Writing masks, overlays, curves and the report.
    pub write_ms: f64,
    /// Everything.
    pub total_ms: f64,
}

/// The clinical result of one exam.
#[derive(Clone, Debug, Serialize)]
pub struct CardiacReport {
    /// Input file or folder.
    pub input: String,
    /// `[columns, rows, slices, phases]`.
    pub dims: [usize; 4],
    /// Pixel spacing x, y, slice spacing (thickness + gap) in mm, and the time step in ms.
    pub spacing: [f64; 4],
    /// Model file, its sha256 and what its metadata says of its weights.
    pub model: ModelId,
    /// Backend that ran the model.
    pub backend: String,
    /// Precision the engine ran with.
    pub precision: String,
    /// Where the heart was found.
    pub heart: HeartLocation,
    /// End-diastolic phase (largest LV volume).
    pub ed_phase: usize,
    /// End-systolic phase (smallest LV volume).
    pub es_phase: usize,
    /// Left ventricle.
    pub lv: Chamber,
    /// Right ventricle (ED / ES phases of the LV).
    pub rv: Chamber,
    /// LV myocardial mass at ED, g (volume x 1.05 g/ml).
    pub lv_mass_g: f64,
    /// Per-phase volumes, ml.
    pub curves: Curves,
    /// Images (slices x phases) segmented.
    pub images: usize,
    /// Segmented images per second of the segment stage.
    pub images_per_s: f64,
    /// Anything a reader should check before trusting the numbers.
    pub flags: Vec<String>,
    /// Time per stage.
    pub timings: Timings,
}

/// Volume-time curves.
#[derive(Clone, Debug, Serialize)]
pub struct Curves {
    /// LV cavity, ml per phase.
    pub lv_ml: Vec<f64>,
    /// RV cavity, ml per phase.
    pub rv_ml: Vec<f64>,
    /// LV myocardium, ml per phase.
    pub myo_ml: Vec<f64>,
}

/// The segmentation and the numbers of one exam.
pub struct CardiacResult {
    /// The report (timings of read / write are filled in by the caller when it does those).
    pub report: CardiacReport,
    /// Labels in the input geometry, the same layout as the input volume.
    pub labels: Vec<u8>,
}

/// What to analyse and where the outputs go.
#[derive(Clone, Debug)]
pub struct CardiacRequest {
    /// A 4D NIfTI file, or a DICOM cine series (folder or file).
    pub input: PathBuf,
    /// The model that the session runs (identity recorded in the report).
    pub model: ModelId,
    /// Folder for `report.json`, `masks.nii.gz`, `ed_es.png`, `volumes.svg` (none: no files).
    pub output: Option<PathBuf>,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Reads `input` (a 4D NIfTI file or a DICOM cine series folder / file list), analyses it and,
/// with `out_dir`, writes `report.json`, `masks.nii.gz` (labels in the input geometry),
/// `ed_es.png` (mid-ventricular slice at ED and ES, image | overlay) and `volumes.svg`.
pub fn run(session: &Session, request: &CardiacRequest) -> Result<CardiacResult, PipelineError> {
    let (input, model, out_dir) = (
        request.input.as_path(),
        request.model.clone(),
        request.output.as_deref(),
    );
    let t_all = Instant::now();
    let t0 = Instant::now();
    let vol = medinfer_io::read_volume(input)?;
    let read_ms = ms(t0);
    let name = input.display().to_string();
    let mut res = analyse(&vol, &name, session, model)?;
    res.report.timings.read_ms = read_ms;
    if let Some(dir) = out_dir {
        let t0 = Instant::now();
        write_outputs(dir, &vol, &res)?;
        res.report.timings.write_ms = ms(t0);
        res.report.timings.total_ms = ms(t_all);
        // The report is written last so that it carries the write time too.
        let path = dir.join("report.json");
        let json =
            serde_json::to_string_pretty(&res.report).map_err(|e| PipelineError::Output {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        std::fs::write(&path, json).map_err(|e| medinfer_io::IoError::Os {
            path: path.display().to_string(),
            source: e,
        })?;
    } else {
        res.report.timings.total_ms = ms(t_all);
    }
    Ok(res)
}
