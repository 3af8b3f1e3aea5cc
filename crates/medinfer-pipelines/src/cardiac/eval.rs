//! Not the clinical pipeline: training patches from phantoms, and the pipeline's accuracy on
//! held-out phantom exams (the model card's figures).

use super::preprocess::{locate_heart, sample_label_patch, sample_patch, PatchGeometry, View};
use super::{analyse, CardiacSpec, ModelId};
use crate::phantom::Conditions;
use crate::PipelineError;
use medinfer_engine::Session;
use serde::Serialize;

/// Training patches from phantom exams `seeds`, each stored under `set`'s conditions (the
/// pipeline's view undoes rotation and mirroring, as it does for real exams): for each exam,
/// every slice at ED, ES and `extra_phases` random phases, centred on the located heart plus a
/// random shift of up to `jitter_mm` (so the model tolerates an imperfect locator). Returns
/// (images, labels, exam index of each patch) with images `count x rows x columns` at the
/// shipped model's patch geometry, normalised like the pipeline's input.
pub fn training_set(
    seeds: &[u64],
    extra_phases: usize,
    jitter_mm: f64,
    set: ConditionSet,
) -> (Vec<f32>, Vec<u8>, Vec<u64>) {
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    let spec = CardiacSpec::shipped();
    let plen = spec.patch_len();
    let per_exam = crate::phantom::parallel(seeds, threads, |&seed| {
        let ph = crate::phantom::cardiac_with(seed, None, None, &set.conditions(seed));
        let vol = &ph.image;
        let [nx, ny, nz, nt] = vol.dims;
        let loc = locate_heart(vol);
        let view = View::of(vol, spec.orientation);
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
                let g = PatchGeometry::new(centre, &view, &spec);
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
    let (mut xs, mut ys, mut exam) = (Vec::new(), Vec::new(), Vec::new());
    for ((x, y), &seed) in per_exam.into_iter().zip(seeds) {
        exam.extend(std::iter::repeat_n(seed, y.len() / plen));
        xs.extend(x);
        ys.extend(y);
    }
    (xs, ys, exam)
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

/// Which acquisition conditions the held-out exams are stored under (each exam's own draw
/// from [`Conditions::random`] for the varied one; the others keep the canonical exam but one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConditionSet {
    /// Anterior up, left on the right, base first, ED at phase 0, no tilt.
    Canonical,
    /// The stored grid turned by a random angle.
    Rotated,
    /// The stored columns mirrored and the grid turned by a random angle.
    Mirrored,
    /// Slices stored apex first.
    ApexFirst,
    /// ED at a random phase of the cycle.
    EdShifted,
    /// The heart's long axis tilted against the slice normal (it moves slice to slice).
    Tilted,
    /// Everything above drawn at random per exam.
    Random,
}

impl ConditionSet {
    /// Every set, canonical first (the model card's table).
    pub const ALL: [ConditionSet; 7] = [
        ConditionSet::Canonical,
        ConditionSet::Rotated,
        ConditionSet::Mirrored,
        ConditionSet::ApexFirst,
        ConditionSet::EdShifted,
        ConditionSet::Tilted,
        ConditionSet::Random,
    ];

    /// The set's name (as `--conditions` takes it).
    pub fn name(self) -> &'static str {
        match self {
            ConditionSet::Canonical => "canonical",
            ConditionSet::Rotated => "rotated",
            ConditionSet::Mirrored => "mirrored",
            ConditionSet::ApexFirst => "apex-first",
            ConditionSet::EdShifted => "ed-shifted",
            ConditionSet::Tilted => "tilted",
            ConditionSet::Random => "random",
        }
    }

    /// The set named `name`.
    pub fn from_name(name: &str) -> Option<ConditionSet> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The conditions of exam `seed`.
    pub fn conditions(self, seed: u64) -> Conditions {
        let r = Conditions::random(seed);
        let c = Conditions::default();
        match self {
            ConditionSet::Canonical => c,
            ConditionSet::Rotated => Conditions {
                rotation_deg: r.rotation_deg,
                ..c
            },
            ConditionSet::Mirrored => Conditions {
                rotation_deg: r.rotation_deg,
                mirror: true,
                ..c
            },
            ConditionSet::ApexFirst => Conditions {
                apex_first: true,
                ..c
            },
            ConditionSet::EdShifted => Conditions {
                ed_phase: r.ed_phase.max(1),
                ..c
            },
            ConditionSet::Tilted => Conditions { tilt: r.tilt, ..c },
            ConditionSet::Random => r,
        }
    }
}

/// Runs the pipeline on phantom exams `seeds` stored under `set` and compares with their
/// truth.
pub fn evaluate(
    seeds: &[u64],
    session: &Session,
    model: &ModelId,
    spec: &CardiacSpec,
    set: ConditionSet,
    mut progress: impl FnMut(&ExamScore),
) -> Result<EvalSummary, PipelineError> {
    let mut exams = Vec::new();
    for &seed in seeds {
        let ph = crate::phantom::cardiac_with(seed, None, None, &set.conditions(seed));
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
