//! CT slice anatomy tagging: every slice of a series gets a body-region label, and the series
//! gets a summary of which regions it covers over which slice ranges.
//!
//! Preprocessing per slice: values in HU (rescale applied by the reader), the window
//! (centre, width) with DICOM's linear VOI function to [0, 1], area resize to 128 x 128, one
//! channel. Series are found and ordered from their headers alone (medinfer's series reader:
//! ordered along the slice normal, gaps and duplicates refused); then every slice of every
//! series streams through [`crate::batch::run_ordered`]: decoded, windowed and resized by one
//! worker per core while the engine's streams classify earlier slices. A batch of thousands of
//! series therefore never waits for a whole volume to be read, and memory stays bounded.

mod batch;

pub use batch::{CtBatch, CtBatchRequest, CtRecord, CtSummary};

use crate::config::{ModelConfig, ModelSpec, Normalization};
use crate::PipelineError;
use medinfer_core::preprocess::{self, Filter};
use medinfer_core::{Image2d, Volume};
use medinfer_engine::Session;
use medinfer_io::series::Series;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Mutex;

/// How each slice becomes a model input: the normalisation (a HU window to [0, 1] for the
/// pipeline's own model: centre 40, width 400) and the size, from the model's config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CtPrep {
    /// Model input (rows, columns).
    pub size: [usize; 2],
    /// Intensity normalisation of the HU values.
    pub normalization: Normalization,
}

impl Default for CtPrep {
    /// The pipeline's own model (its built-in config).
    fn default() -> Self {
        let c = ModelConfig::builtin(crate::Pipeline::Ct);
        CtPrep {
            size: c.input.size.expect("the built-in config gives the size"),
            normalization: c.normalization.unwrap_or(Normalization::None),
        }
    }
}

impl From<(f64, f64)> for CtPrep {
    /// The default size with a HU window (centre, width).
    fn from((center, width): (f64, f64)) -> Self {
        CtPrep {
            normalization: Normalization::Window { center, width },
            ..CtPrep::default()
        }
    }
}

impl CtPrep {
    /// From a model's checked config.
    pub fn of(spec: &ModelSpec) -> CtPrep {
        CtPrep {
            size: spec.size,
            normalization: spec.normalization,
        }
    }

    /// The pipeline's default window (centre, width), from its built-in config.
    pub fn default_window() -> (f64, f64) {
        match CtPrep::default().normalization {
            Normalization::Window { center, width } => (center, width),
            _ => (40.0, 400.0),
        }
    }
}

/// The region names of the pipeline's own classifier, in output order (its built-in config).
pub fn default_regions() -> Vec<String> {
    ModelConfig::builtin(crate::Pipeline::Ct).labels
}

/// One slice's result.
#[derive(Clone, Debug, Serialize)]
pub struct SliceResult {
    /// Slice index along the normal (0 = first position).
    pub index: usize,
    /// Position along the slice normal, mm.
    pub position_mm: f64,
    /// The region with the highest score.
    pub region: String,
    /// Softmax probabilities, in the model's region order (its config or the label file).
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
    /// Input: the series' folder (or its one file).
    pub input: String,
    /// Series Instance UID.
    pub series_uid: String,
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
    /// Seconds: the header scan and slice ordering (this series' share), then decode +
    /// preprocess + classify, streamed (wall time until its last slice was tagged).
    pub seconds: [f64; 2],
}

/// Slice `z` (phase 0) of a volume normalised (windowed) and resized as `prep` says.
pub fn preprocess_slice(
    vol: &Volume,
    z: usize,
    prep: impl Into<CtPrep>,
) -> Result<Vec<f32>, String> {
    let [nx, ny, nz, _] = vol.dims;
    if z >= nz {
        return Err(format!("slice {z} of {nz}"));
    }
    let start = z * nx * ny;
    let img = Image2d::gray(nx, ny, vol.data[start..start + nx * ny].to_vec())
        .map_err(|e| e.to_string())?;
    preprocess_image(img, prep)
}

/// One decoded slice (values in HU) normalised (windowed to [0, 1] by default) and
/// area-resized to the model's size.
pub fn preprocess_image(mut img: Image2d, prep: impl Into<CtPrep>) -> Result<Vec<f32>, String> {
    let prep = prep.into();
    if img.channels != 1 {
        return Err(format!("{} channels; a CT slice has one", img.channels));
    }
    match prep.normalization {
        // Before resizing: the window clips, as the pipeline's model was trained.
        Normalization::Window { .. } | Normalization::Range { .. } | Normalization::None => {
            prep.normalization
                .apply(&mut img.data)
                .map_err(|e| e.to_string())?;
            let [r, c] = prep.size;
            let img = preprocess::resize(&img, c, r, Filter::Area).map_err(|e| e.to_string())?;
            Ok(img.data)
        }
        Normalization::Zscore | Normalization::Minmax | Normalization::Xrv => {
            let [r, c] = prep.size;
            let mut img =
                preprocess::resize(&img, c, r, Filter::Area).map_err(|e| e.to_string())?;
            if prep.normalization == Normalization::Xrv {
                return Err("the xrv normalisation is for radiographs, not CT slices".into());
            }
            prep.normalization
                .apply(&mut img.data)
                .map_err(|e| e.to_string())?;
            Ok(img.data)
        }
    }
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

/// A series ready to be tagged: its slice order and geometry worked out from the headers, no
/// pixel decoded yet.
#[derive(Clone, Debug)]
pub struct SeriesPlan {
    /// Series Instance UID.
    pub uid: String,
    /// Where it was found (its folder, or its one file).
    pub input: String,
    /// `[columns, rows, slices]`.
    pub dims: [usize; 3],
    /// Position of each slice along the slice normal, mm, in slice order.
    pub positions_mm: Vec<f64>,
    /// Seconds spent on the header scan and ordering, this series' share.
    pub scan_seconds: f64,
    series: Series,
    /// `(file index, frame)` per slice.
    order: Vec<(usize, usize)>,
    /// Some file holds several frames: the series is decoded whole, once, instead of per slice.
    multi_frame: bool,
}

impl SeriesPlan {
    /// Orders the slices of `series` from its headers. A 4D (cine) series, inconsistent
    /// geometry, gaps and duplicates are errors that name the series.
    pub fn new(series: Series, scan_seconds: f64) -> Result<Self, PipelineError> {
        let lay = medinfer_io::series::layout(&series)?;
        let [nx, ny, nz, nt] = lay.dims;
        let input = match series.files.as_slice() {
            [one] => one.path.display().to_string(),
            files => files
                .iter()
                .map(|f| f.path.parent().unwrap_or(&f.path).display().to_string())
                .min()
                .unwrap_or_default(),
        };
        if nt != 1 {
            return Err(PipelineError::input(
                input,
                format!(
                    "series {}: a CT series has one time point; this one has {nt}",
                    series.uid
                ),
            ));
        }
        let a = lay.affine;
        let c = [a[0][2], a[1][2], a[2][2]];
        let len = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        let n = if len > 0.0 {
            [c[0] / len, c[1] / len, c[2] / len]
        } else {
            [0.0, 0.0, 1.0]
        };
        let positions_mm = (0..nz)
            .map(|z| (0..3).map(|i| (a[i][2] * z as f64 + a[i][3]) * n[i]).sum())
            .collect();
        let multi_frame = series.files.iter().any(|f| f.header.frames > 1);
        Ok(SeriesPlan {
            uid: series.uid.clone(),
            input,
            dims: [nx, ny, nz],
            positions_mm,
            scan_seconds,
            order: lay.order,
            series,
            multi_frame,
        })
    }
}

/// A series' plan, or why it cannot be tagged.
pub type Planned = Result<SeriesPlan, String>;

/// Finds the DICOM series in `files` (headers only, on every core) and orders each one. Series
/// come back in the order of their first file's path; one that cannot be ordered is an `Err`
/// in its place. Files that are DICOM but unreadable come back separately with the reason;
/// files that are not DICOM at all are ignored.
pub fn plan(files: &[PathBuf]) -> (Vec<Planned>, Vec<(PathBuf, String)>) {
    let t = std::time::Instant::now();
    let scan = medinfer_io::series::scan(files);
    let share = t.elapsed().as_secs_f64() / scan.series.len().max(1) as f64;
    let mut series = scan.series;
    for s in &mut series {
        s.files.sort_by(|a, b| a.path.cmp(&b.path));
    }
    series.sort_by(|a, b| a.files[0].path.cmp(&b.files[0].path));
    let plans = series
        .into_iter()
        .map(|s| SeriesPlan::new(s, share).map_err(|e| e.to_string()))
        .collect();
    let rejected = scan
        .rejected
        .into_iter()
        .filter(|(p, _)| matches!(medinfer_io::detect(p), Ok(Some(medinfer_io::Format::Dicom))))
        .collect();
    (plans, rejected)
}

/// A multi-frame series decoded whole, once, by the first worker that needs it (dropped when the
/// series is done).
type Whole = Option<Result<std::sync::Arc<Volume>, String>>;

/// The model input of slice `z` of plan `p`: decoded (one file, or the whole multi-frame series
/// once), windowed and resized.
fn slice_input(
    plans: &[Planned],
    wholes: &[Mutex<Whole>],
    p: usize,
    z: usize,
    prep: &CtPrep,
) -> Result<Vec<f32>, String> {
    let plan = plans[p].as_ref().map_err(|e| e.clone())?;
    if z >= plan.dims[2] {
        return Err(format!("slice {z} of {}", plan.dims[2]));
    }
    if plan.multi_frame {
        let vol = {
            let mut w = wholes[p].lock().unwrap_or_else(|e| e.into_inner());
            w.get_or_insert_with(|| {
                medinfer_io::series::assemble(&plan.series)
                    .map(std::sync::Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()?
        };
        return preprocess_slice(&vol, z, *prep);
    }
    let (f, frame) = plan.order[z];
    let path = &plan.series.files[f].path;
    let mut images = medinfer_io::dicom::DicomFile::open(path)
        .and_then(|d| d.images())
        .map_err(|e| e.to_string())?;
    if frame >= images.len() {
        return Err(format!("{}: no frame {frame}", path.display()));
    }
    let img = images.swap_remove(frame);
    if [img.width, img.height] != [plan.dims[0], plan.dims[1]] {
        return Err(format!(
            "{}: {}x{} pixels, the series header said {}x{}",
            path.display(),
            img.width,
            img.height,
            plan.dims[0],
            plan.dims[1]
        ));
    }
    preprocess_image(img, *prep)
}

/// The model inputs of the slices `items` (`(plan, slice)` pairs), decoded and preprocessed on
/// every core, in order: calibration and validation data for a slice classifier.
pub fn slice_inputs(
    plans: &[Planned],
    items: &[(usize, usize)],
    prep: impl Into<CtPrep>,
) -> Vec<Result<Vec<f32>, String>> {
    let prep = prep.into();
    let wholes: Vec<Mutex<Whole>> = plans.iter().map(|_| Mutex::new(None)).collect();
    medinfer_io::series::parallel_map(items, |&(p, z)| {
        if p >= plans.len() {
            return Err(format!("no series {p}"));
        }
        slice_input(plans, &wholes, p, z, &prep)
    })
}

/// Tags every slice of every series in `plans`, streaming: slices are decoded, windowed and
/// resized by `decoders` workers while the engine's streams classify earlier ones (the bounded
/// queue of [`crate::batch::run_ordered`]), so no series is ever held in memory whole (except a
/// multi-frame one, decoded once). `on_slice` is called after each slice; `on_series` once per
/// entry of `plans`, in order, with its report or what went wrong. A broken file fails its
/// series only; a failing engine stops the batch and is returned.
#[allow(clippy::too_many_arguments)]
pub fn tag_series(
    plans: &[Planned],
    session: &Session,
    prep: &CtPrep,
    regions: &[String],
    decoders: usize,
    mut on_slice: impl FnMut(),
    mut on_series: impl FnMut(usize, Result<CtReport, String>),
) -> Result<(), PipelineError> {
    let info = session.info();
    let (backend, precision) = (
        info.backend.name().to_string(),
        info.effective_precision.clone(),
    );
    let items: Vec<(usize, usize)> = plans
        .iter()
        .enumerate()
        .filter_map(|(p, r)| r.as_ref().ok().map(|plan| (p, plan.dims[2])))
        .flat_map(|(p, nz)| (0..nz).map(move |z| (p, z)))
        .collect();
    let wholes: Vec<Mutex<Whole>> = plans.iter().map(|_| Mutex::new(None)).collect();
    let decode = |&(p, z): &(usize, usize)| slice_input(plans, &wholes, p, z, prep);
    // Plans before `cursor` have been reported.
    let mut cursor = 0usize;
    let mut slices: Vec<SliceResult> = Vec::new();
    let mut first_error: Option<String> = None;
    let mut since = std::time::Instant::now();
    crate::batch::run_ordered(&items, session, decoders, decode, |i, r| {
        let (p, z) = items[i];
        let Ok(plan) = &plans[p] else { return };
        while cursor < p {
            if let Err(e) = &plans[cursor] {
                on_series(cursor, Err(e.clone()));
            }
            cursor += 1;
        }
        match r {
            Ok(logits) if logits.len() == regions.len() => {
                let prob = softmax(&logits);
                let best = (0..prob.len())
                    .max_by(|&a, &b| prob[a].total_cmp(&prob[b]))
                    .unwrap_or(0);
                slices.push(SliceResult {
                    index: z,
                    position_mm: plan.positions_mm[z],
                    region: regions[best].clone(),
                    probabilities: prob,
                });
            }
            Ok(logits) => {
                first_error.get_or_insert(format!(
                    "the model gives {} scores, there are {} regions",
                    logits.len(),
                    regions.len()
                ));
            }
            Err(e) => {
                first_error.get_or_insert(format!("slice {z}: {e}"));
            }
        }
        on_slice();
        if z + 1 == plan.dims[2] {
            *wholes[p].lock().unwrap_or_else(|e| e.into_inner()) = None;
            let done = std::mem::take(&mut slices);
            let out = match first_error.take() {
                Some(e) => Err(format!("{}: series {}: {e}", plan.input, plan.uid)),
                None => Ok(CtReport {
                    input: plan.input.clone(),
                    series_uid: plan.uid.clone(),
                    dims: plan.dims,
                    backend: backend.clone(),
                    precision: precision.clone(),
                    summary: summarize(&done),
                    slices: done,
                    seconds: [plan.scan_seconds, since.elapsed().as_secs_f64()],
                }),
            };
            since = std::time::Instant::now();
            on_series(p, out);
            cursor = p + 1;
        }
    })?;
    for (k, r) in plans.iter().enumerate().skip(cursor) {
        if let Err(e) = r {
            on_series(k, Err(e.clone()));
        }
    }
    Ok(())
}

/// Reads the one series at `input` (a folder or a file of it) and tags every slice.
pub fn run(
    input: &std::path::Path,
    session: &Session,
    prep: impl Into<CtPrep>,
    regions: &[String],
    decoders: usize,
) -> Result<CtReport, PipelineError> {
    let prep = prep.into();
    let name = input.display().to_string();
    let files = medinfer_io::series::list_files(input)?;
    let (mut plans, rejected) = plan(&files);
    match plans.len() {
        0 => {
            return Err(PipelineError::input(
                name,
                match rejected.first() {
                    Some((p, e)) => format!("no readable DICOM series ({}: {e})", p.display()),
                    None => "no DICOM series found".into(),
                },
            ))
        }
        1 => {}
        n => {
            return Err(PipelineError::input(
                name,
                format!(
                "{n} series found; point at one series' folder, or pass them all to the batch mode"
            ),
            ))
        }
    }
    if let Ok(p) = &mut plans[0] {
        p.input = name.clone();
    }
    let mut out = None;
    tag_series(
        &plans,
        session,
        &prep,
        regions,
        decoders,
        || {},
        |_, r| out = Some(r),
    )?;
    let prefix = format!("{name}: ");
    out.unwrap_or_else(|| Err("no result".into())).map_err(|e| {
        let reason = e.strip_prefix(&prefix).unwrap_or(&e).to_string();
        PipelineError::input(name, reason)
    })
}
