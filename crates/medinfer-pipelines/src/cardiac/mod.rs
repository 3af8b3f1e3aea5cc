//! Cardiac cine-MRI quantification: a short-axis cine stack in, LV / RV volumes, ejection
//! fractions and LV mass out.
//!
//! Stages (each timed in the report):
//! 1. **read**: a 4D NIfTI or a DICOM cine series into a [`Volume`] `[x, y, slices, phases]`.
//! 2. **preprocess**: locate the heart from the temporal standard deviation of the middle
//!    slices (the heart is what moves in a cine), then for every slice x phase sample a
//!    patch of the model's input size at the model's pixel spacing around it (bilinear:
//!    resampling and cropping in one pass) and normalise it (z-score for the shipped model);
//!    size, spacing, normalisation and which output channel is LV / MYO / RV come from the
//!    model config ([`CardiacSpec`], [`crate::config`]).
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
pub use eval::{dice, evaluate, training_set, ConditionSet, EvalSummary, ExamScore};
pub use outputs::{mid_ventricular_slice, volume_curves_svg, write_outputs, write_overlay_pair};
pub(crate) use preprocess::anatomical_axes;
pub use preprocess::{
    check_input, exam_patches, locate_heart, sample_label_patch, sample_patch, HeartLocation,
    PatchGeometry, View, MIN_MOTION_CONTRAST,
};

use crate::config::{ModelConfig, ModelSpec, Normalization, Orientation};
use crate::PipelineError;
use medinfer_core::Volume;
use medinfer_engine::Session;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What the cardiac pipeline needs of its model, from the model's config: patch size and
/// spacing, normalisation, and which output channel holds each structure. The masks medinfer
/// writes always use 1 = LV cavity, 2 = LV myocardium, 3 = RV cavity, whatever the model's
/// own order.
#[derive(Clone, Debug, Serialize)]
pub struct CardiacSpec {
    /// Patch (rows, columns).
    pub size: [usize; 2],
    /// Patch pixel spacing, mm (rows, columns).
    pub spacing_mm: [f64; 2],
    /// Normalisation of each patch.
    pub normalization: Normalization,
    /// Which way up the model expects the patch.
    pub orientation: Orientation,
    /// Output channels of the model.
    pub channels: usize,
    /// Output channel of the LV cavity, the LV myocardium and the RV cavity.
    pub classes: [usize; 3],
    /// Where the config came from.
    pub config: String,
}

impl CardiacSpec {
    /// The shipped model's spec (its config, models/cardiac/cardiac-unet.json).
    pub fn shipped() -> CardiacSpec {
        let c = ModelConfig::builtin(crate::Pipeline::Cardiac);
        let lab = |n: &[&str]| {
            c.labels
                .iter()
                .position(|l| n.iter().any(|x| l.eq_ignore_ascii_case(x)))
                .expect("the shipped config names LV, MYO and RV")
        };
        CardiacSpec {
            size: c.input.size.expect("the shipped config gives the size"),
            spacing_mm: c
                .input
                .spacing_mm
                .expect("the shipped config gives the spacing"),
            normalization: c.normalization.unwrap_or(Normalization::Zscore),
            orientation: c.input.orientation.unwrap_or_default(),
            channels: c.labels.len(),
            classes: [lab(LV_NAMES), lab(MYO_NAMES), lab(RV_NAMES)],
            config: c.source,
        }
    }

    /// The spec of a model whose config was checked against it: the labels must name the LV
    /// cavity, the myocardium and the RV cavity, the input must be one channel, the output
    /// as large as the input, and a pixel spacing must be given.
    pub fn from_model(spec: &ModelSpec, model: &str) -> Result<CardiacSpec, PipelineError> {
        let bad = |reason: String| PipelineError::Model {
            model: model.to_string(),
            reason: format!("{reason} (config: {})", spec.source),
        };
        if spec.channels != 1 {
            return Err(bad(format!(
                "the cardiac pipeline feeds one channel; the model takes {}",
                spec.channels
            )));
        }
        let find = |names: &[&str], what: &str| {
            spec.label_index(names).ok_or_else(|| {
                bad(format!(
                    "the labels {:?} do not name the {what} (one of {names:?})",
                    spec.labels
                ))
            })
        };
        let classes = [
            find(LV_NAMES, "LV cavity")?,
            find(MYO_NAMES, "LV myocardium")?,
            find(RV_NAMES, "RV cavity")?,
        ];
        if spec.output_rank != 4 {
            return Err(bad(format!(
                "the cardiac pipeline reads (batch, classes, rows, columns) scores; the model's output has rank {}",
                spec.output_rank
            )));
        }
        if let Some([r, c]) = spec.output_spatial {
            if r.is_some_and(|r| r != spec.size[0]) || c.is_some_and(|c| c != spec.size[1]) {
                return Err(bad(format!(
                    "the output is {r:?} x {c:?}, the input {} x {}: the scores must be on the input grid",
                    spec.size[0], spec.size[1]
                )));
            }
        }
        // The patch spacing decides every volume: never guessed for a model that brought a
        // config of its own (a MONAI bundle's metadata has no field for it).
        let spacing_mm = spec
            .spacing_mm
            .filter(|_| !spec.defaulted.contains(&"input.spacing_mm"))
            .ok_or_else(|| {
                bad(
                    "the config gives no pixel spacing (input.spacing_mm, mm per row and column); \
                     add it with --config FILE or MODEL.json"
                        .into(),
                )
            })?;
        Ok(CardiacSpec {
            size: spec.size,
            spacing_mm,
            normalization: spec.normalization,
            orientation: spec.orientation,
            channels: spec.output_channels.unwrap_or(spec.labels.len()),
            classes,
            config: spec.source.clone(),
        })
    }

    /// Values in one patch.
    pub fn patch_len(&self) -> usize {
        self.size[0] * self.size[1]
    }
}

/// Base-to-apex direction of the heart's long axis in RAS+, roughly (to the patient's left,
/// anterior and inferior): the coverage flag tells the apical end by it, and the phantom tilts
/// its drawn axis around it.
pub(crate) const APEX_DIRECTION: [f64; 3] = [-0.6, 0.55, -0.58];

/// Names accepted for the LV cavity, the LV myocardium and the RV cavity (case-insensitive).
const LV_NAMES: &[&str] = &["LV", "LV cavity", "left ventricle", "LV blood pool", "LVC"];
const MYO_NAMES: &[&str] = &["MYO", "myocardium", "LV myocardium", "LVM", "myo"];
const RV_NAMES: &[&str] = &["RV", "RV cavity", "right ventricle", "RV blood pool", "RVC"];

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
    /// The model config used: patch size and spacing, normalisation, output channels.
    pub model_config: CardiacSpec,
    /// Backend that ran the model.
    pub backend: String,
    /// Precision the engine ran with.
    pub precision: String,
    /// Where the heart was found.
    pub heart: HeartLocation,
    /// How the model's patches lie in the stored grid (the anatomical view when the model's
    /// config asks for it).
    pub view: View,
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
    /// The model's patch geometry and label order (its config).
    pub spec: CardiacSpec,
}

/// Runs `f` on every item on `threads` scoped threads, the items split into one contiguous
/// group per thread (the per-image stages: patch sampling, back-projection, per-phase cleanup).
pub(crate) fn for_each_split<T: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) + Sync) {
    let per = items.len().div_ceil(threads.max(1)).max(1);
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    let f = &f;
    std::thread::scope(|s| {
        for g in groups {
            s.spawn(move || g.into_iter().for_each(f));
        }
    });
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Reads `input` (a 4D NIfTI file or a DICOM cine series folder / file list), analyses it and,
/// with `out_dir`, writes `report.json`, `masks.nii.gz` (labels in the input geometry),
/// `ed_es.png` (mid-ventricular slice at ED and ES, image | overlay) and `volumes.svg`.
pub fn run(session: &Session, request: &CardiacRequest) -> Result<CardiacResult, PipelineError> {
    let t0 = Instant::now();
    let vol = medinfer_io::read_volume(&request.input)?;
    run_volume(session, request, &vol, t0)
}

/// [`run`] on a volume the caller has already read from `request.input` (the server keeps it
/// for its viewer); `started` is when the read began, so the timings include it.
pub fn run_volume(
    session: &Session,
    request: &CardiacRequest,
    vol: &Volume,
    started: Instant,
) -> Result<CardiacResult, PipelineError> {
    let (input, model, out_dir) = (
        request.input.as_path(),
        request.model.clone(),
        request.output.as_deref(),
    );
    let t_all = started;
    let read_ms = ms(started);
    let name = input.display().to_string();
    let mut res = analyse(vol, &name, session, model, &request.spec)?;
    res.report.timings.read_ms = read_ms;
    if let Some(dir) = out_dir {
        let t0 = Instant::now();
        write_outputs(dir, vol, &res)?;
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
