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

use crate::phantom::{ed_es, MYOCARDIAL_DENSITY};
use crate::PipelineError;
use medinfer_core::Volume;
use medinfer_engine::Session;
use serde::Serialize;
use std::time::Instant;

/// Pixel spacing of the model's input, mm.
pub const MODEL_SPACING: f64 = 1.6;
/// Side of the model's input patch, pixels.
pub const CROP: usize = 96;

/// Where the heart is and how sure the locator is.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct HeartLocation {
    /// Centre in pixel coordinates of the input slices (x = column, y = row).
    pub centre_px: [f64; 2],
    /// Peak of the smoothed temporal standard deviation over its median inside the body: the
    /// motion contrast. Below [`MIN_MOTION_CONTRAST`] there is no beating heart in the stack.
    pub motion_contrast: f64,
}

/// The smallest motion contrast accepted as a beating heart. Measured: a stack in which nothing
/// moves but the noise scores 1.01; phantom hearts with EF 15-75 % score 2.1 and up.
pub const MIN_MOTION_CONTRAST: f64 = 1.5;

/// Checks that `vol` is a plausible cine short-axis stack; the error says what is wrong.
pub fn check_input(vol: &Volume, name: &str) -> Result<(), PipelineError> {
    let [nx, ny, nz, nt] = vol.dims;
    let bad = |why: String| Err(PipelineError::Input(format!("{name}: {why}")));
    if nt < 2 {
        return bad(format!(
            "a cine short-axis stack has slices x phases (4D); this is {nx}x{ny}x{nz} with {nt} \
             time point(s)"
        ));
    }
    if nz < 2 {
        return bad(format!(
            "{nz} slice: volumes need a stack of at least 2 slices"
        ));
    }
    if nx < 32 || ny < 32 {
        return bad(format!("{nx}x{ny} pixels is too small for a cine image"));
    }
    let [sx, sy, sz, _] = vol.spacing;
    if !(0.3..=5.0).contains(&sx) || !(0.3..=5.0).contains(&sy) {
        return bad(format!(
            "pixel spacing {sx} x {sy} mm is outside 0.3-5 mm: not a cardiac cine"
        ));
    }
    if !(1.0..=30.0).contains(&sz) {
        return bad(format!(
            "slice spacing {sz} mm is outside 1-30 mm: not a short-axis stack"
        ));
    }
    if vol.data.iter().any(|v| !v.is_finite()) {
        return bad("non-finite voxel values".into());
    }
    // A mask or label map (a handful of distinct values) is not an image to segment.
    let mut distinct: Vec<u32> = Vec::new();
    for v in vol.data.iter().step_by(7) {
        let b = v.to_bits();
        if !distinct.contains(&b) {
            distinct.push(b);
            if distinct.len() >= 16 {
                return Ok(());
            }
        }
    }
    bad(format!(
        "only {} distinct values: this looks like a mask or label map, not a cine image",
        distinct.len()
    ))
}

/// Finds the heart: the centre of the region that moves most over the cycle.
pub fn locate_heart(vol: &Volume) -> HeartLocation {
    let [nx, ny, nz, nt] = vol.dims;
    let plane = nx * ny;
    let mut sd = vec![0f64; plane];
    let (z0, z1) = (nz / 4, (3 * nz).div_ceil(4).max(nz / 4 + 1).min(nz));
    for z in z0..z1 {
        for (p, acc) in sd.iter_mut().enumerate() {
            let (mut s, mut s2) = (0f64, 0f64);
            for t in 0..nt {
                let v = vol.data[(t * nz + z) * plane + p] as f64;
                s += v;
                s2 += v * v;
            }
            let m = s / nt as f64;
            *acc += (s2 / nt as f64 - m * m).max(0.0).sqrt();
        }
    }
    // Box smoothing over ~20 mm (separable, two passes).
    let r = ((10.0 / vol.spacing[0].max(0.1)).round() as usize).max(1);
    let sm = box_blur(&box_blur(&sd, nx, ny, r), nx, ny, r);
    let (mut best, mut bi) = (f64::MIN, 0);
    for (i, &v) in sm.iter().enumerate() {
        if v > best {
            best = v;
            bi = i;
        }
    }
    // Motion contrast: peak over the median of the image region that has signal.
    let mean_img: Vec<f64> = (0..plane)
        .map(|p| {
            (0..nt)
                .map(|t| vol.data[(t * nz + z0) * plane + p] as f64)
                .sum::<f64>()
        })
        .collect();
    let thr = mean_img.iter().cloned().fold(0.0, f64::max) * 0.1;
    let mut inside: Vec<f64> = sm
        .iter()
        .zip(&mean_img)
        .filter(|(_, &m)| m > thr)
        .map(|(&v, _)| v)
        .collect();
    inside.sort_by(|a, b| a.total_cmp(b));
    let median = inside.get(inside.len() / 2).copied().unwrap_or(0.0);
    // Refine: weighted centroid of the smoothed map above half the peak near the peak.
    let (px, py) = ((bi % nx) as f64, (bi / nx) as f64);
    let reach = 60.0 / vol.spacing[0].max(0.1);
    let (mut w, mut cx, mut cy) = (0.0, 0.0, 0.0);
    for y in 0..ny {
        for x in 0..nx {
            let v = sm[y * nx + x];
            if v > 0.5 * best && ((x as f64 - px).hypot(y as f64 - py)) < reach {
                w += v;
                cx += v * x as f64;
                cy += v * y as f64;
            }
        }
    }
    let centre_px = if w > 0.0 { [cx / w, cy / w] } else { [px, py] };
    HeartLocation {
        centre_px,
        motion_contrast: if median > 0.0 { best / median } else { 0.0 },
    }
}

fn box_blur(v: &[f64], nx: usize, ny: usize, r: usize) -> Vec<f64> {
    let mut tmp = vec![0f64; v.len()];
    for y in 0..ny {
        let row = &v[y * nx..(y + 1) * nx];
        let mut acc: f64 = row[..r.min(nx)].iter().sum();
        for x in 0..nx {
            if x + r < nx {
                acc += row[x + r];
            }
            if x > r {
                acc -= row[x - r - 1];
            }
            tmp[y * nx + x] = acc;
        }
    }
    let mut out = vec![0f64; v.len()];
    for x in 0..nx {
        let mut acc: f64 = (0..r.min(ny)).map(|y| tmp[y * nx + x]).sum();
        for y in 0..ny {
            if y + r < ny {
                acc += tmp[(y + r) * nx + x];
            }
            if y > r {
                acc -= tmp[(y - r - 1) * nx + x];
            }
            out[y * nx + x] = acc;
        }
    }
    out
}

/// Geometry of the patch in the input slice: input pixel = centre + (patch index + 0.5 - CROP/2) * step.
#[derive(Clone, Copy, Debug)]
pub struct PatchGeometry {
    /// Centre in input pixel coordinates (x, y).
    pub centre: [f64; 2],
    /// Input pixels per patch pixel along x and y.
    pub step: [f64; 2],
}

impl PatchGeometry {
    /// The patch of `vol` centred at `centre` (input pixels).
    pub fn new(vol: &Volume, centre: [f64; 2]) -> Self {
        PatchGeometry {
            centre,
            step: [
                MODEL_SPACING / vol.spacing[0],
                MODEL_SPACING / vol.spacing[1],
            ],
        }
    }
}

/// Samples the patch of one slice (`nx * ny` values) bilinearly (0 outside) and z-scores it,
/// writing `CROP * CROP` values into `out`.
pub fn sample_patch(slice: &[f32], nx: usize, ny: usize, g: &PatchGeometry, out: &mut [f32]) {
    let half = CROP as f64 / 2.0;
    let at = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= nx as isize || y >= ny as isize {
            0.0
        } else {
            slice[y as usize * nx + x as usize]
        }
    };
    for j in 0..CROP {
        let sy = g.centre[1] + (j as f64 + 0.5 - half) * g.step[1];
        let y0 = sy.floor();
        let fy = (sy - y0) as f32;
        for i in 0..CROP {
            let sx = g.centre[0] + (i as f64 + 0.5 - half) * g.step[0];
            let x0 = sx.floor();
            let fx = (sx - x0) as f32;
            let (x0, y0) = (x0 as isize, y0 as isize);
            let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
            let bot = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
            out[j * CROP + i] = top * (1.0 - fy) + bot * fy;
        }
    }
    let n = (CROP * CROP) as f64;
    let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = out.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / var.sqrt().max(1e-6);
    for v in out.iter_mut() {
        *v = ((*v as f64 - mean) * inv) as f32;
    }
}

/// Nearest-neighbour sample of a label patch (for training targets) at the same geometry.
pub fn sample_label_patch(labels: &[u8], nx: usize, ny: usize, g: &PatchGeometry, out: &mut [u8]) {
    let half = CROP as f64 / 2.0;
    for j in 0..CROP {
        let sy = (g.centre[1] + (j as f64 + 0.5 - half) * g.step[1]).round();
        for i in 0..CROP {
            let sx = (g.centre[0] + (i as f64 + 0.5 - half) * g.step[0]).round();
            out[j * CROP + i] = if sx < 0.0 || sy < 0.0 || sx >= nx as f64 || sy >= ny as f64 {
                0
            } else {
                labels[sy as usize * nx + sx as usize]
            };
        }
    }
}

/// Training patches from phantom exams `seeds`: for each exam, every slice at ED, ES and
/// `extra_phases` random phases, centred on the located heart plus a random shift of up to
/// `jitter_mm` (so the model tolerates an imperfect locator). Returns (images, labels, count)
/// with images `count x CROP x CROP` z-scored like the pipeline's input.
pub fn training_set(
    seeds: &[u64],
    extra_phases: usize,
    jitter_mm: f64,
) -> (Vec<f32>, Vec<u8>, usize) {
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    let per_exam = crate::phantom::parallel(seeds, threads, |&seed| {
        let ph = crate::phantom::cardiac(seed);
        let vol = &ph.image;
        let [nx, ny, nz, nt] = vol.dims;
        let loc = locate_heart(vol);
        let mut rng = medinfer_onnx::SeededRng::new(seed ^ 0x7a1e);
        let mut phases = vec![ph.truth.ed_phase, ph.truth.es_phase];
        for _ in 0..extra_phases {
            phases.push((rng.uniform() * nt as f64) as usize % nt);
        }
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for &t in &phases {
            for z in 0..nz {
                let jx = rng.range(-jitter_mm, jitter_mm) / vol.spacing[0];
                let jy = rng.range(-jitter_mm, jitter_mm) / vol.spacing[1];
                let g = PatchGeometry::new(vol, [loc.centre_px[0] + jx, loc.centre_px[1] + jy]);
                let off = (t * nz + z) * nx * ny;
                let mut x = vec![0f32; CROP * CROP];
                let mut y = vec![0u8; CROP * CROP];
                sample_patch(&vol.data[off..off + nx * ny], nx, ny, &g, &mut x);
                sample_label_patch(&ph.labels[off..off + nx * ny], nx, ny, &g, &mut y);
                xs.extend(x);
                ys.extend(y);
            }
        }
        (xs, ys)
    });
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (x, y) in per_exam {
        xs.extend(x);
        ys.extend(y);
    }
    let n = ys.len() / (CROP * CROP);
    (xs, ys, n)
}

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
    pub fn of(path: &std::path::Path) -> Result<ModelId, PipelineError> {
        use sha2::Digest;
        let bytes = std::fs::read(path).map_err(|e| PipelineError::Model {
            model: path.display().to_string(),
            reason: e.to_string(),
        })?;
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

/// The segmentation and the numbers of one exam.
pub struct CardiacResult {
    /// The report (timings of read / write are filled in by the caller when it does those).
    pub report: CardiacReport,
    /// Labels in the input geometry, the same layout as the input volume.
    pub labels: Vec<u8>,
}

/// Checks that `session` takes `(B, 1, CROP, CROP)` and gives `(B, 4, CROP, CROP)`.
pub fn check_model(session: &Session, model: &str) -> Result<usize, PipelineError> {
    let bad = |reason: String| PipelineError::Model {
        model: model.to_string(),
        reason,
    };
    let ins = session.inputs();
    if ins.len() != 1 || ins[0].shape.len() != 4 || ins[0].shape[1..] != [1, CROP, CROP] {
        return Err(bad(format!(
            "the cardiac pipeline feeds one (batch, 1, {CROP}, {CROP}) input; the model takes {:?}",
            ins.iter().map(|i| &i.shape).collect::<Vec<_>>()
        )));
    }
    let outs = session.outputs();
    if outs.is_empty() || outs[0].shape.len() != 4 || outs[0].shape[1] != 4 {
        return Err(bad(format!(
            "the cardiac pipeline reads (batch, 4, {CROP}, {CROP}) class scores; the model gives {:?}",
            outs.iter().map(|o| &o.shape).collect::<Vec<_>>()
        )));
    }
    Ok(ins[0].shape[0].max(1))
}

/// The model inputs of an exam, as [`analyse`] makes them: the heart located by its motion, then
/// one `CROP x CROP` z-scored patch per slice and phase (image index `t * nz + z`), sampled on
/// every core. Errors: input [`check_input`] refuses, or no beating heart.
pub fn exam_patches(
    vol: &Volume,
    input_name: &str,
) -> Result<(HeartLocation, PatchGeometry, Vec<f32>), PipelineError> {
    check_input(vol, input_name)?;
    let [nx, ny, nz, nt] = vol.dims;
    let plane = nx * ny;
    let heart = locate_heart(vol);
    if heart.motion_contrast < MIN_MOTION_CONTRAST {
        return Err(PipelineError::Input(format!(
            "{input_name}: no beating heart found (motion contrast {:.2}, a cine heart gives > {MIN_MOTION_CONTRAST}); \
             is this a cine short-axis stack?",
            heart.motion_contrast
        )));
    }
    let geo = PatchGeometry::new(vol, heart.centre_px);
    let images = nz * nt;
    let mut patches = vec![0f32; images * CROP * CROP];
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    {
        let chunks: Vec<(usize, &mut [f32])> =
            patches.chunks_mut(CROP * CROP).enumerate().collect();
        let per = chunks.len().div_ceil(threads).max(1);
        let mut groups: Vec<Vec<(usize, &mut [f32])>> = Vec::new();
        let mut it = chunks.into_iter().peekable();
        while it.peek().is_some() {
            groups.push(it.by_ref().take(per).collect());
        }
        std::thread::scope(|s| {
            for g in groups {
                s.spawn(move || {
                    for (img, out) in g {
                        // Patch order: image index = t * nz + z, the volume's own order.
                        let off = img * plane;
                        sample_patch(&vol.data[off..off + plane], nx, ny, &geo, out);
                    }
                });
            }
        });
    }
    Ok((heart, geo, patches))
}

/// Segments and quantifies one cine stack.
pub fn analyse(
    vol: &Volume,
    input_name: &str,
    session: &Session,
    model: ModelId,
) -> Result<CardiacResult, PipelineError> {
    let t_all = Instant::now();
    check_input(vol, input_name)?;
    check_model(session, &model.path)?;
    let [nx, ny, nz, nt] = vol.dims;
    let plane = nx * ny;
    let mut flags = Vec::new();

    // Preprocess.
    let t0 = Instant::now();
    let (heart, geo, patches) = exam_patches(vol, input_name)?;
    let images = nz * nt;
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    let preprocess_ms = ms(t0);

    // Segment: the shared batch pipeline, one worker per engine stream.
    let t0 = Instant::now();
    let idx: Vec<usize> = (0..images).collect();
    let mut logits: Vec<Vec<f32>> = vec![Vec::new(); images];
    let mut failure = None;
    crate::batch::run_ordered(
        &idx,
        session,
        1,
        |&i| Ok(&patches[i * CROP * CROP..(i + 1) * CROP * CROP]),
        |i, r| match r {
            Ok(v) if v.len() == 4 * CROP * CROP => logits[i] = v,
            Ok(v) => {
                failure.get_or_insert(format!(
                    "output has {} values per image, expected {}",
                    v.len(),
                    4 * CROP * CROP
                ));
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        },
    )?;
    if let Some(reason) = failure {
        return Err(PipelineError::Model {
            model: model.path.clone(),
            reason,
        });
    }
    let segment_ms = ms(t0);

    // Postprocess: class scores back onto the input grid inside the patch's footprint.
    let t0 = Instant::now();
    let half = CROP as f64 / 2.0;
    let fx0 = (geo.centre[0] - half * geo.step[0]).floor().max(0.0) as usize;
    let fx1 = ((geo.centre[0] + half * geo.step[0]).ceil().max(0.0) as usize).min(nx);
    let fy0 = (geo.centre[1] - half * geo.step[1]).floor().max(0.0) as usize;
    let fy1 = ((geo.centre[1] + half * geo.step[1]).ceil().max(0.0) as usize).min(ny);
    let mut labels = vec![0u8; vol.data.len()];
    {
        let frames: Vec<(usize, &mut [u8])> = labels.chunks_mut(plane).enumerate().collect();
        let per = frames.len().div_ceil(threads).max(1);
        let mut groups: Vec<Vec<(usize, &mut [u8])>> = Vec::new();
        let mut it = frames.into_iter().peekable();
        while it.peek().is_some() {
            groups.push(it.by_ref().take(per).collect());
        }
        let logits = &logits;
        std::thread::scope(|s| {
            for g in groups {
                s.spawn(move || {
                    for (img, out) in g {
                        back_project(&logits[img], &geo, out, nx, [fx0, fx1, fy0, fy1]);
                    }
                });
            }
        });
    }
    // Largest 3D connected component per structure and phase.
    for t in 0..nt {
        let frame = &mut labels[t * nz * plane..(t + 1) * nz * plane];
        for class in 1..=3u8 {
            keep_largest_component(frame, [nx, ny, nz], class);
        }
    }
    let voxel_ml = vol.spacing[0] * vol.spacing[1] * vol.spacing[2] / 1000.0;
    let mut curves = Curves {
        lv_ml: vec![0.0; nt],
        rv_ml: vec![0.0; nt],
        myo_ml: vec![0.0; nt],
    };
    for t in 0..nt {
        let mut counts = [0usize; 4];
        for &v in &labels[t * nz * plane..(t + 1) * nz * plane] {
            counts[v as usize & 3] += 1;
        }
        curves.lv_ml[t] = counts[1] as f64 * voxel_ml;
        curves.myo_ml[t] = counts[2] as f64 * voxel_ml;
        curves.rv_ml[t] = counts[3] as f64 * voxel_ml;
    }
    let (ed, es) = ed_es(&curves.lv_ml);
    let lv = Chamber::new(curves.lv_ml[ed], curves.lv_ml[es]);
    let rv = Chamber::new(curves.rv_ml[ed], curves.rv_ml[es]);
    if lv.edv_ml < 5.0 {
        flags.push(format!(
            "LV end-diastolic volume {:.1} ml: the segmentation found almost no left ventricle",
            lv.edv_ml
        ));
    }
    if !(5.0..=90.0).contains(&lv.ef_pct) {
        flags.push(format!(
            "LV EF {:.1} % is outside 5-90 %: check the segmentation",
            lv.ef_pct
        ));
    }
    for (name, vals) in [("LV", &curves.lv_ml), ("RV", &curves.rv_ml)] {
        // A chamber touching the first or last slice at ED may extend beyond the stack.
        let _ = vals;
        let edge = [0, nz - 1].iter().any(|&z| {
            let class = if name == "LV" { 1 } else { 3 };
            let start = (ed * nz + z) * plane;
            let n = labels[start..start + plane]
                .iter()
                .filter(|&&v| v == class)
                .count();
            n as f64 * vol.spacing[0] * vol.spacing[1] > 1500.0 && z == nz - 1
        });
        if edge {
            flags.push(format!(
                "{name} is still large on the most apical slice at ED: the stack may not cover the whole ventricle"
            ));
        }
    }
    let lv_mass_g = curves.myo_ml[ed] * MYOCARDIAL_DENSITY;
    let postprocess_ms = ms(t0);
    let info = session.info();
    Ok(CardiacResult {
        report: CardiacReport {
            input: input_name.to_string(),
            dims: vol.dims,
            spacing: vol.spacing,
            model,
            backend: info.backend.name().to_string(),
            precision: info.effective_precision.clone(),
            heart,
            ed_phase: ed,
            es_phase: es,
            lv,
            rv,
            lv_mass_g,
            curves,
            images,
            images_per_s: images as f64 / (segment_ms / 1000.0).max(1e-9),
            flags,
            timings: Timings {
                preprocess_ms,
                segment_ms,
                postprocess_ms,
                total_ms: ms(t_all),
                ..Default::default()
            },
        },
        labels,
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Arg-max of the bilinearly interpolated class scores at every input pixel of the footprint.
fn back_project(l: &[f32], g: &PatchGeometry, out: &mut [u8], nx: usize, fp: [usize; 4]) {
    let half = CROP as f64 / 2.0;
    let plane = CROP * CROP;
    let [x0, x1, y0, y1] = fp;
    for y in y0..y1 {
        // Patch coordinate of this input pixel (patch pixel centres at integer + 0.5 - 0.5).
        let py = (y as f64 - g.centre[1]) / g.step[1] + half - 0.5;
        if py < 0.0 || py > (CROP - 1) as f64 {
            continue;
        }
        let j0 = (py.floor() as usize).min(CROP - 2);
        let fy = (py - j0 as f64) as f32;
        for x in x0..x1 {
            let px = (x as f64 - g.centre[0]) / g.step[0] + half - 0.5;
            if px < 0.0 || px > (CROP - 1) as f64 {
                continue;
            }
            let i0 = (px.floor() as usize).min(CROP - 2);
            let fx = (px - i0 as f64) as f32;
            let mut best = (f32::MIN, 0u8);
            for c in 0..4 {
                let b = c * plane + j0 * CROP + i0;
                let top = l[b] * (1.0 - fx) + l[b + 1] * fx;
                let bot = l[b + CROP] * (1.0 - fx) + l[b + CROP + 1] * fx;
                let v = top * (1.0 - fy) + bot * fy;
                if v > best.0 {
                    best = (v, c as u8);
                }
            }
            out[y * nx + x] = best.1;
        }
    }
}

/// Keeps only the largest 6-connected component of `class` in a `[nx, ny, nz]` frame.
pub fn keep_largest_component(frame: &mut [u8], dims: [usize; 3], class: u8) {
    let [nx, ny, nz] = dims;
    let mut comp = vec![0u32; frame.len()];
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for start in 0..frame.len() {
        if frame[start] != class || comp[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32;
        sizes.push(0);
        comp[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            sizes[id as usize] += 1;
            let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
            let mut visit = |j: usize| {
                if frame[j] == class && comp[j] == 0 {
                    comp[j] = id;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < nx {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - nx);
            }
            if y + 1 < ny {
                visit(i + nx);
            }
            if z > 0 {
                visit(i - nx * ny);
            }
            if z + 1 < nz {
                visit(i + nx * ny);
            }
        }
    }
    if sizes.len() <= 2 {
        return;
    }
    let keep = (1..sizes.len()).max_by_key(|&i| sizes[i]).unwrap_or(1) as u32;
    for (v, &c) in frame.iter_mut().zip(&comp) {
        if c != 0 && c != keep {
            *v = 0;
        }
    }
}

/// Reads `input` (a 4D NIfTI file or a DICOM cine series folder / file list), analyses it and,
/// with `out_dir`, writes `report.json`, `masks.nii.gz` (labels in the input geometry),
/// `ed_es.png` (mid-ventricular slice at ED and ES, image | overlay) and `volumes.svg`.
pub fn run(
    input: &std::path::Path,
    session: &Session,
    model: ModelId,
    out_dir: Option<&std::path::Path>,
) -> Result<CardiacResult, PipelineError> {
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
        let json = serde_json::to_string_pretty(&res.report)
            .map_err(|e| PipelineError::Input(e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| medinfer_io::IoError::Os {
            path: path.display().to_string(),
            source: e,
        })?;
    } else {
        res.report.timings.total_ms = ms(t_all);
    }
    Ok(res)
}

/// Writes the masks, the ED / ES overlay and the volume curves into `dir`.
pub fn write_outputs(
    dir: &std::path::Path,
    vol: &Volume,
    res: &CardiacResult,
) -> Result<(), PipelineError> {
    let os = |p: &std::path::Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| medinfer_io::IoError::Os { path: p, source: e }
    };
    std::fs::create_dir_all(dir).map_err(os(dir))?;
    let mask = Volume {
        data: res.labels.iter().map(|&v| v as f32).collect(),
        window: None,
        ..vol.clone()
    };
    medinfer_io::nifti::write(
        dir.join("masks.nii.gz"),
        &mask,
        medinfer_io::nifti::NiftiDtype::U8,
    )?;
    let r = &res.report;
    let z = mid_ventricular_slice(&res.labels, vol.dims, [r.ed_phase, r.es_phase]);
    write_overlay_pair(
        &dir.join("ed_es.png"),
        vol,
        &res.labels,
        z,
        [r.ed_phase, r.es_phase],
    )?;
    let svg = volume_curves_svg(&r.curves, vol.spacing[3], r.ed_phase, r.es_phase);
    let p = dir.join("volumes.svg");
    std::fs::write(&p, svg).map_err(os(&p))?;
    Ok(())
}

/// The mid-ventricular slice shown in overlays: the one whose smaller LV cavity area over the
/// two `phases` (ED, ES) is largest, so the ventricle is in the slice at both.
pub fn mid_ventricular_slice(labels: &[u8], dims: [usize; 4], phases: [usize; 2]) -> usize {
    let [nx, ny, nz, _] = dims;
    let plane = nx * ny;
    let area = |t: usize, z: usize| {
        let s = (t * nz + z) * plane;
        labels[s..s + plane].iter().filter(|&&v| v == 1).count()
    };
    (0..nz)
        .max_by_key(|&z| area(phases[0], z).min(area(phases[1], z)))
        .unwrap_or(nz / 2)
}

/// Slice `z` at two phases side by side, each as image | image with the label overlay.
pub fn write_overlay_pair(
    path: &std::path::Path,
    vol: &Volume,
    labels: &[u8],
    z: usize,
    phases: [usize; 2],
) -> Result<(), PipelineError> {
    let [nx, ny, nz, _] = vol.dims;
    let w = nx * 4;
    let mut rgb = vec![0u8; w * ny * 3];
    // One window for the whole stack: 0 .. 99.5th percentile.
    let mut sample: Vec<f32> = vol.data.iter().step_by(7).copied().collect();
    sample.sort_by(|a, b| a.total_cmp(b));
    let hi = sample
        .get(sample.len() * 995 / 1000)
        .copied()
        .unwrap_or(1.0)
        .max(1.0) as f64;
    for (k, &t) in phases.iter().enumerate() {
        let img = vol
            .slice(z, t)
            .map_err(|e| PipelineError::Input(e.to_string()))?;
        let gray = medinfer_io::raster::to_u8_view(&img, Some((hi / 2.0, hi)))?;
        let off = (t * nz + z) * nx * ny;
        let over = medinfer_io::raster::overlay(&gray, &labels[off..off + nx * ny], 0.45);
        for y in 0..ny {
            for x in 0..nx {
                let g = gray[y * nx + x];
                let a = ((y * w) + k * 2 * nx + x) * 3;
                rgb[a..a + 3].copy_from_slice(&[g, g, g]);
                let b = ((y * w) + k * 2 * nx + nx + x) * 3;
                rgb[b..b + 3].copy_from_slice(&over[(y * nx + x) * 3..(y * nx + x) * 3 + 3]);
            }
        }
    }
    medinfer_io::raster::write_png8(path, w, ny, 3, &rgb)?;
    Ok(())
}

/// An SVG line chart of the LV, RV and myocardial volumes over the cycle, ED and ES marked.
pub fn volume_curves_svg(c: &Curves, dt_ms: f64, ed: usize, es: usize) -> String {
    let (w, h, m) = (640.0, 360.0, 50.0);
    let n = c.lv_ml.len().max(2);
    let vmax = c
        .lv_ml
        .iter()
        .chain(&c.rv_ml)
        .chain(&c.myo_ml)
        .cloned()
        .fold(1.0, f64::max)
        * 1.1;
    let x = |i: usize| m + (w - 2.0 * m) * i as f64 / (n - 1) as f64;
    let y = |v: f64| h - m - (h - 2.0 * m) * v / vmax;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{cx}\" y=\"{t}\" text-anchor=\"middle\">phase (time step {dt_ms:.1} ms)</text>\n\
         <text x=\"12\" y=\"{cy}\" transform=\"rotate(-90 12 {cy})\" text-anchor=\"middle\">volume (ml)</text>\n",
        b = h - m,
        r = w - m,
        cx = w / 2.0,
        t = h - 12.0,
        cy = h / 2.0
    );
    for k in 0..=4 {
        let v = vmax * k as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            m - 4.0,
            y(v) + 4.0
        );
    }
    for (i, label) in [(ed, "ED"), (es, "ES")] {
        s += &format!(
            "<line x1=\"{0:.1}\" y1=\"{m}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#999\" stroke-dasharray=\"4\"/>\
             <text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{label}</text>\n",
            x(i),
            h - m,
            m - 6.0
        );
    }
    for (vals, colour, name) in [
        (&c.lv_ml, "#e63c3c", "LV cavity"),
        (&c.myo_ml, "#3cc85a", "LV myocardium"),
        (&c.rv_ml, "#4682f0", "RV cavity"),
    ] {
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            pts.join(" ")
        );
        let last = vals.last().copied().unwrap_or(0.0);
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{name}</text>\n",
            w - m + 4.0 - 45.0,
            y(last) - 6.0
        );
    }
    s += "</svg>\n";
    s
}

/// Dice of `class` between two label volumes (1 when neither has it).
pub fn dice(a: &[u8], b: &[u8], class: u8) -> f64 {
    let (mut inter, mut na, mut nb) = (0usize, 0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let (p, q) = (x == class, y == class);
        inter += (p && q) as usize;
        na += p as usize;
        nb += q as usize;
    }
    if na + nb == 0 {
        1.0
    } else {
        2.0 * inter as f64 / (na + nb) as f64
    }
}

/// How the pipeline did on one phantom exam.
#[derive(Clone, Debug, Serialize)]
pub struct ExamScore {
    /// Phantom seed.
    pub seed: u64,
    /// Dice over every slice and phase: LV cavity, LV myocardium, RV cavity.
    pub dice: [f64; 3],
    /// LV EF measured and true, %.
    pub lv_ef: [f64; 2],
    /// LV EDV measured and true, ml.
    pub lv_edv: [f64; 2],
    /// RV EF measured and true, %.
    pub rv_ef: [f64; 2],
    /// LV mass measured and true, g.
    pub lv_mass: [f64; 2],
}

/// Accuracy over a set of phantom exams.
#[derive(Clone, Debug, Serialize)]
pub struct EvalSummary {
    /// Per exam.
    pub exams: Vec<ExamScore>,
    /// Mean Dice: LV cavity, LV myocardium, RV cavity.
    pub mean_dice: [f64; 3],
    /// Mean absolute LV EF error, points.
    pub lv_ef_mae: f64,
    /// Largest absolute LV EF error, points.
    pub lv_ef_max_error: f64,
    /// Mean absolute RV EF error, points.
    pub rv_ef_mae: f64,
    /// Mean absolute LV mass error, %.
    pub lv_mass_mape: f64,
    /// Largest absolute LV mass error, %.
    pub lv_mass_max_error_pct: f64,
    /// Mean absolute LV EDV error, %.
    pub lv_edv_mape: f64,
}

/// Runs the pipeline on phantom exams `seeds` and compares with their truth.
pub fn evaluate(
    seeds: &[u64],
    session: &Session,
    model: &ModelId,
    mut progress: impl FnMut(&ExamScore),
) -> Result<EvalSummary, PipelineError> {
    let mut exams = Vec::new();
    for &seed in seeds {
        let ph = crate::phantom::cardiac(seed);
        let res = analyse(
            &ph.image,
            &format!("phantom {seed}"),
            session,
            model.clone(),
        )?;
        let r = &res.report;
        let t = &ph.truth;
        let score = ExamScore {
            seed,
            dice: [1, 2, 3].map(|c| dice(&res.labels, &ph.labels, c)),
            lv_ef: [r.lv.ef_pct, t.lv_ef_pct],
            lv_edv: [r.lv.edv_ml, t.lv_edv_ml],
            rv_ef: [r.rv.ef_pct, t.rv_ef_pct],
            lv_mass: [r.lv_mass_g, t.lv_mass_g],
        };
        progress(&score);
        exams.push(score);
    }
    let n = exams.len().max(1) as f64;
    let mean = |f: &dyn Fn(&ExamScore) -> f64| exams.iter().map(f).sum::<f64>() / n;
    let max = |f: &dyn Fn(&ExamScore) -> f64| exams.iter().map(f).fold(0.0, f64::max);
    Ok(EvalSummary {
        mean_dice: [0, 1, 2].map(|c| mean(&|e| e.dice[c])),
        lv_ef_mae: mean(&|e| (e.lv_ef[0] - e.lv_ef[1]).abs()),
        lv_ef_max_error: max(&|e| (e.lv_ef[0] - e.lv_ef[1]).abs()),
        rv_ef_mae: mean(&|e| (e.rv_ef[0] - e.rv_ef[1]).abs()),
        lv_mass_mape: mean(&|e| 100.0 * (e.lv_mass[0] / e.lv_mass[1] - 1.0).abs()),
        lv_mass_max_error_pct: max(&|e| 100.0 * (e.lv_mass[0] / e.lv_mass[1] - 1.0).abs()),
        lv_edv_mape: mean(&|e| 100.0 * (e.lv_edv[0] / e.lv_edv[1] - 1.0).abs()),
        exams,
    })
}
