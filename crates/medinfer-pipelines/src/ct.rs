//! CT slice anatomy tagging: every slice of a series gets a body-region label, and the series
//! gets a summary of which regions it covers over which slice ranges.
//!
//! Preprocessing per slice: values in HU (rescale applied by the reader), the window
//! (centre, width) with DICOM's linear VOI function to [0, 1], area resize to 128 x 128, one
//! channel. The series is read with medinfer's series reader (ordered along the slice normal,
//! gaps and duplicates refused), slices are then preprocessed and classified by
//! [`crate::batch::run_ordered`] on every core and stream.

use crate::PipelineError;
use medinfer_core::preprocess::{self, Filter};
use medinfer_core::{Image2d, Volume};
use medinfer_engine::Session;
use serde::Serialize;

/// Side of the model input.
pub const SIZE: usize = 128;

/// The six body regions of the default classifier's outputs, in order.
pub const REGIONS: [&str; 6] = ["head", "neck", "chest", "abdomen", "pelvis", "legs"];

/// Default window: centre 40 HU, width 400 HU (soft tissue).
pub const DEFAULT_WINDOW: (f64, f64) = (40.0, 400.0);

/// One slice's result.
#[derive(Clone, Debug, Serialize)]
pub struct SliceResult {
    /// Slice index along the normal (0 = first position).
    pub index: usize,
    /// Position along the slice normal, mm.
    pub position_mm: f64,
    /// The region with the highest score.
    pub region: String,
    /// Softmax probabilities, in [`REGIONS`] order (or the label file's).
    pub probabilities: Vec<f32>,
}

/// A run of consecutive slices with the same region.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RegionRange {
    /// Region.
    pub region: String,
    /// First and last slice index.
    pub slices: [usize; 2],
    /// Positions of the first and last slice along the normal, mm.
    pub positions_mm: [f64; 2],
}

/// The result for a series.
#[derive(Clone, Debug, Serialize)]
pub struct CtReport {
    /// Input.
    pub input: String,
    /// `[columns, rows, slices]`.
    pub dims: [usize; 3],
    /// Backend and precision.
    pub backend: String,
    /// Precision the engine ran with.
    pub precision: String,
    /// Per slice.
    pub slices: Vec<SliceResult>,
    /// Consecutive runs of one region.
    pub summary: Vec<RegionRange>,
    /// Seconds to read + assemble, and to preprocess + classify.
    pub seconds: [f64; 2],
}

/// Slice `z` (phase 0) windowed to [0, 1] and resized to `SIZE x SIZE`.
pub fn preprocess_slice(vol: &Volume, z: usize, window: (f64, f64)) -> Result<Vec<f32>, String> {
    let [nx, ny, _, _] = vol.dims;
    let start = z * nx * ny;
    let mut data = vol.data[start..start + nx * ny].to_vec();
    preprocess::window(&mut data, window.0, window.1, 0.0, 1.0).map_err(|e| e.to_string())?;
    let img = Image2d::gray(nx, ny, data).map_err(|e| e.to_string())?;
    let img = preprocess::resize(&img, SIZE, SIZE, Filter::Area).map_err(|e| e.to_string())?;
    Ok(img.data)
}

/// Softmax of one row of logits.
pub fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Consecutive runs of the same region.
pub fn summarize(slices: &[SliceResult]) -> Vec<RegionRange> {
    let mut out: Vec<RegionRange> = Vec::new();
    for s in slices {
        match out.last_mut() {
            Some(r) if r.region == s.region && r.slices[1] + 1 == s.index => {
                r.slices[1] = s.index;
                r.positions_mm[1] = s.position_mm;
            }
            _ => out.push(RegionRange {
                region: s.region.clone(),
                slices: [s.index, s.index],
                positions_mm: [s.position_mm, s.position_mm],
            }),
        }
    }
    out
}

/// Reads the series at `input` and tags every slice.
pub fn run(
    input: &std::path::Path,
    session: &Session,
    window: (f64, f64),
    regions: &[String],
    decoders: usize,
) -> Result<CtReport, PipelineError> {
    let t0 = std::time::Instant::now();
    let vol = medinfer_io::series::read_series(input)?;
    let read_s = t0.elapsed().as_secs_f64();
    let name = input.display().to_string();
    let [nx, ny, nz, nt] = vol.dims;
    if nt != 1 {
        return Err(PipelineError::Input(format!(
            "{name}: a CT series has one time point; this one has {nt}"
        )));
    }
    let t1 = std::time::Instant::now();
    let n = vol.slice_normal();
    let pos = |z: usize| {
        let a = &vol.affine;
        (0..3)
            .map(|i| (a[i][2] * z as f64 + a[i][3]) * n[i])
            .sum::<f64>()
    };
    let idx: Vec<usize> = (0..nz).collect();
    let mut slices = Vec::with_capacity(nz);
    let mut first_error = None;
    crate::batch::run_ordered(
        &idx,
        session,
        decoders,
        |&z| preprocess_slice(&vol, z, window),
        |z, r| match r {
            Ok(logits) => {
                if logits.len() != regions.len() {
                    first_error.get_or_insert(format!(
                        "the model gives {} scores, there are {} regions",
                        logits.len(),
                        regions.len()
                    ));
                    return;
                }
                let p = softmax(&logits);
                let best = (0..p.len())
                    .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                    .unwrap_or(0);
                slices.push(SliceResult {
                    index: z,
                    position_mm: pos(z),
                    region: regions[best].clone(),
                    probabilities: p,
                });
            }
            Err(e) => {
                first_error.get_or_insert(format!("slice {z}: {e}"));
            }
        },
    )?;
    if let Some(e) = first_error {
        return Err(PipelineError::Input(format!("{name}: {e}")));
    }
    let info = session.info();
    Ok(CtReport {
        input: name,
        dims: [nx, ny, nz],
        backend: info.backend.name().into(),
        precision: info.effective_precision.clone(),
        summary: summarize(&slices),
        slices,
        seconds: [read_s, t1.elapsed().as_secs_f64()],
    })
}
