//! Not the clinical pipeline: training patches from phantoms, and the pipeline's accuracy on
//! held-out phantom exams (the model card's figures).

use super::preprocess::{locate_heart, sample_label_patch, sample_patch, PatchGeometry};
use super::{analyse, CardiacSpec, ModelId};
use crate::PipelineError;
use medinfer_engine::Session;
use serde::Serialize;

/// Training patches from phantom exams `seeds`: for each exam, every slice at ED, ES and
/// `extra_phases` random phases, centred on the located heart plus a random shift of up to
/// `jitter_mm` (so the model tolerates an imperfect locator). Returns (images, labels, count)
/// with images `count x rows x columns` at the shipped model's patch geometry, normalised like
/// the pipeline's input.
pub fn training_set(
    seeds: &[u64],
    extra_phases: usize,
    jitter_mm: f64,
) -> (Vec<f32>, Vec<u8>, usize) {
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    let spec = CardiacSpec::shipped();
    let plen = spec.patch_len();
    let per_exam = crate::phantom::parallel(seeds, threads, |&seed| {
        let ph = crate::phantom::cardiac(seed);
        let vol = &ph.image;
        let [nx, ny, nz, nt] = vol.dims;
        let loc = locate_heart(vol);
        let mut rng = medinfer_core::SeededRng::new(seed ^ 0x7a1e);
        let mut phases = vec![ph.truth.ed_phase, ph.truth.es_phase];
        for _ in 0..extra_phases {
            phases.push((rng.uniform() * nt as f64) as usize % nt);
        }
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for &t in &phases {
            for z in 0..nz {
                let jx = rng.range(-jitter_mm, jitter_mm) / vol.spacing[0];
                let jy = rng.range(-jitter_mm, jitter_mm) / vol.spacing[1];
                let centre = [loc.centre_px[0] + jx, loc.centre_px[1] + jy];
                let g = PatchGeometry::new(vol, centre, &spec);
                let off = (t * nz + z) * nx * ny;
                let mut x = vec![0f32; plen];
                let mut y = vec![0u8; plen];
                let norm = &spec.normalization;
                sample_patch(&vol.data[off..off + nx * ny], nx, ny, &g, norm, &mut x);
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
    let n = ys.len() / plen;
    (xs, ys, n)
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
    spec: &CardiacSpec,
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
            spec,
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
