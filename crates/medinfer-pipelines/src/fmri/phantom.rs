//! A resting-state fMRI cohort phantom with exact ground truth, in the spirit of SimTB
//! (Erhardt et al. 2012): every subject's data is a sum of spatially smooth sources, each with
//! its own band-limited time course, on a tissue baseline, plus thermal noise.
//!
//! - **Grid.** 4 mm isotropic voxels, 40 x 48 x 38, in an MNI-like RAS+ frame (x -78..78,
//!   y -112..76, z -70..78 mm). TR 2 s, 150-300 volumes (default 150).
//! - **Brain.** A procedural mask: a cerebrum ellipsoid (centre (0, -18, 10) mm, semi-axes
//!   68 x 88 x 62) and a cerebellum ellipsoid (centre (0, -60, -34), 48 x 32 x 22). Baseline
//!   800 in the brain with a smooth +-10 % shading, 40 outside.
//! - **Networks** ([`SOURCES`]): ten resting-state networks made of Gaussian blobs at the
//!   places the literature names (for example default mode = posterior cingulate + medial
//!   prefrontal + both angular gyri), each with its own time course band-limited to
//!   0.01-0.1 Hz and a peak signal change of 2 %.
//! - **Noise sources**: motion (a rim at the brain's edge, a drifting random walk with spikes),
//!   CSF (the lateral ventricles, 0.01-0.24 Hz: respiration and cardiac aliasing) and vascular
//!   (a tube along the superior sagittal sinus, 0.01-0.24 Hz), 3 % each.
//! - **Subject variability.** Every network of every subject is shifted by N(0, 2 mm) per axis
//!   and scaled by U(0.7, 1.3); time courses are drawn per subject (resting state: no shared
//!   timing).
//! - **Thermal noise** Gaussian with sigma = 800 / tSNR (default tSNR 60).
//!
//! Where SimTB differs: SimTB works on a 2D slice with 30 fixed source shapes and a
//! hemodynamic model driving event or block designs; this phantom is 3D in an anatomical frame
//! (so the classifier's three orthogonal slices mean something), has no task events, and adds
//! the artefact sources an ICA of real data finds. The truth is written beside the data for
//! evaluation only; the pipeline never reads it.

use medinfer_core::{SeededRng, Volume};
use serde::Serialize;

/// Grid size (voxels).
pub const DIMS: [usize; 3] = [40, 48, 38];
/// Voxel size, mm.
pub const VOXEL_MM: f64 = 4.0;
/// World position of voxel (0, 0, 0), mm.
pub const ORIGIN_MM: [f64; 3] = [-78.0, -112.0, -70.0];
/// Repetition time, s.
pub const TR_S: f64 = 2.0;
/// Baseline intensity in the brain.
pub const BRAIN_BASELINE: f64 = 800.0;

/// What a source is, for the classifier's label set ([`super::CLASSES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A resting-state network.
    Network,
    /// Head motion: a rim at the brain's edge.
    Motion,
    /// Cerebrospinal fluid pulsation.
    Csf,
    /// Large vessels.
    Vascular,
}

/// One Gaussian blob of a source's map: centre and sigma in mm (world frame), weight.
pub type Blob = ([f64; 3], [f64; 3], f64);

/// A source of the phantom.
#[derive(Clone, Debug, Serialize)]
pub struct Source {
    /// Its name (also its label, [`super::CLASSES`]).
    pub label: &'static str,
    /// What it is.
    pub kind: SourceKind,
    /// Where it is, in words.
    pub anatomy: &'static str,
    /// Its blobs (empty for the motion rim).
    pub blobs: &'static [Blob],
    /// Its time course's band, Hz.
    pub band_hz: (f64, f64),
    /// Peak signal change, percent of the baseline.
    pub peak_pct: f64,
}

const S6: [f64; 3] = [6.0, 6.0, 6.0];
const S8: [f64; 3] = [8.0, 8.0, 8.0];
const NET_BAND: (f64, f64) = (0.01, 0.1);
const NOISE_BAND: (f64, f64) = (0.01, 0.24);

/// The phantom's sources: ten networks, then the three noise sources.
pub const SOURCES: [Source; 13] = [
    Source {
        label: "default_mode",
        kind: SourceKind::Network,
        anatomy: "posterior cingulate, medial prefrontal, left and right angular gyri",
        blobs: &[
            ([0.0, -54.0, 28.0], [8.0, 9.0, 9.0], 1.0),
            ([0.0, 50.0, -4.0], [8.0, 9.0, 9.0], 0.9),
            ([-46.0, -66.0, 32.0], S6, 0.8),
            ([46.0, -66.0, 32.0], S6, 0.8),
        ],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "visual_medial",
        kind: SourceKind::Network,
        anatomy: "calcarine cortex, lingual gyri",
        blobs: &[([0.0, -86.0, 6.0], [9.0, 8.0, 9.0], 1.0)],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "visual_lateral",
        kind: SourceKind::Network,
        anatomy: "left and right lateral occipital cortex",
        blobs: &[
            ([-44.0, -76.0, 0.0], S8, 1.0),
            ([44.0, -76.0, 0.0], S8, 1.0),
        ],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "sensorimotor",
        kind: SourceKind::Network,
        anatomy: "left and right pre/postcentral gyri, supplementary motor area",
        blobs: &[
            ([-38.0, -24.0, 58.0], S8, 1.0),
            ([38.0, -24.0, 58.0], S8, 1.0),
            ([0.0, -12.0, 62.0], S6, 0.8),
        ],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "auditory",
        kind: SourceKind::Network,
        anatomy: "left and right superior temporal gyri (Heschl's gyri)",
        blobs: &[
            ([-54.0, -20.0, 6.0], [7.0, 9.0, 6.0], 1.0),
            ([54.0, -20.0, 6.0], [7.0, 9.0, 6.0], 1.0),
        ],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "executive_control",
        kind: SourceKind::Network,
        anatomy: "dorsomedial prefrontal / paracingulate, left and right superior frontal gyri",
        blobs: &[
            ([0.0, 30.0, 50.0], S8, 1.0),
            ([-24.0, 54.0, 22.0], S6, 0.8),
            ([24.0, 54.0, 22.0], S6, 0.8),
        ],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "frontoparietal_left",
        kind: SourceKind::Network,
        anatomy: "left dorsolateral prefrontal cortex, left inferior parietal lobule",
        blobs: &[
            ([-46.0, 22.0, 34.0], S8, 1.0),
            ([-42.0, -54.0, 48.0], S8, 0.9),
        ],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "frontoparietal_right",
        kind: SourceKind::Network,
        anatomy: "right dorsolateral prefrontal cortex, right inferior parietal lobule",
        blobs: &[
            ([46.0, 22.0, 34.0], S8, 1.0),
            ([42.0, -54.0, 48.0], S8, 0.9),
        ],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "cerebellar",
        kind: SourceKind::Network,
        anatomy: "left and right cerebellar hemispheres",
        blobs: &[
            ([-24.0, -64.0, -34.0], S8, 1.0),
            ([24.0, -64.0, -34.0], S8, 1.0),
        ],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "salience",
        kind: SourceKind::Network,
        anatomy: "left and right anterior insula, dorsal anterior cingulate",
        blobs: &[
            ([-38.0, 16.0, -4.0], S6, 1.0),
            ([38.0, 16.0, -4.0], S6, 1.0),
            ([0.0, 22.0, 30.0], S6, 0.8),
        ],
        band_hz: NET_BAND,
        peak_pct: 2.0,
    },
    Source {
        label: "noise_motion",
        kind: SourceKind::Motion,
        anatomy: "rim of the brain",
        blobs: &[],
        band_hz: NOISE_BAND,
        peak_pct: 3.0,
    },
    Source {
        label: "noise_csf",
        kind: SourceKind::Csf,
        anatomy: "lateral ventricles",
        blobs: &[
            ([-10.0, -6.0, 16.0], [4.0, 14.0, 6.0], 1.0),
            ([10.0, -6.0, 16.0], [4.0, 14.0, 6.0], 1.0),
        ],
        band_hz: NOISE_BAND,
        peak_pct: 3.0,
    },
    Source {
        label: "noise_vascular",
        kind: SourceKind::Vascular,
        anatomy: "superior sagittal sinus",
        blobs: &[
            ([0.0, 50.0, 52.0], [3.0, 8.0, 4.0], 1.0),
            ([0.0, 24.0, 66.0], [3.0, 8.0, 4.0], 1.0),
            ([0.0, -6.0, 70.0], [3.0, 8.0, 4.0], 1.0),
            ([0.0, -38.0, 66.0], [3.0, 8.0, 4.0], 1.0),
            ([0.0, -66.0, 54.0], [3.0, 8.0, 4.0], 1.0),
            ([0.0, -88.0, 34.0], [3.0, 6.0, 6.0], 1.0),
        ],
        band_hz: NOISE_BAND,
        peak_pct: 3.0,
    },
];

/// How a cohort is drawn.
#[derive(Clone, Debug, Serialize)]
pub struct CohortSpec {
    /// Number of subjects.
    pub subjects: usize,
    /// Volumes per subject.
    pub volumes: usize,
    /// Temporal SNR of the thermal noise (baseline / sigma).
    pub tsnr: f64,
    /// Seed: everything follows from it.
    pub seed: u64,
}

impl Default for CohortSpec {
    fn default() -> Self {
        CohortSpec {
            subjects: 20,
            volumes: 150,
            tsnr: 60.0,
            seed: 1,
        }
    }
}

/// One phantom subject: the data and its exact truth.
pub struct PhantomSubject {
    /// The 4D data (x, y, z, t), TR in `spacing[3]` (ms).
    pub data: Volume,
    /// This subject's source maps (shifted), one per [`SOURCES`] entry, on the grid.
    pub maps: Vec<Vec<f32>>,
    /// This subject's source time courses (unit variance), one per [`SOURCES`] entry.
    pub timecourses: Vec<Vec<f64>>,
    /// The shift of every source, mm.
    pub shifts_mm: Vec<[f64; 3]>,
    /// The amplitude factor of every source.
    pub amplitudes: Vec<f64>,
}

/// World position (mm) of a voxel.
pub fn world(i: usize, j: usize, k: usize) -> [f64; 3] {
    [
        ORIGIN_MM[0] + VOXEL_MM * i as f64,
        ORIGIN_MM[1] + VOXEL_MM * j as f64,
        ORIGIN_MM[2] + VOXEL_MM * k as f64,
    ]
}

/// The voxel-to-world affine of the grid.
pub fn affine() -> [[f64; 4]; 4] {
    [
        [VOXEL_MM, 0.0, 0.0, ORIGIN_MM[0]],
        [0.0, VOXEL_MM, 0.0, ORIGIN_MM[1]],
        [0.0, 0.0, VOXEL_MM, ORIGIN_MM[2]],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

fn in_ellipsoid(p: [f64; 3], c: [f64; 3], r: [f64; 3]) -> bool {
    (0..3).map(|a| ((p[a] - c[a]) / r[a]).powi(2)).sum::<f64>() <= 1.0
}

/// The brain mask on the grid (x fastest).
pub fn brain_mask() -> Vec<bool> {
    let [nx, ny, nz] = DIMS;
    let mut m = Vec::with_capacity(nx * ny * nz);
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let p = world(i, j, k);
                m.push(
                    in_ellipsoid(p, [0.0, -18.0, 10.0], [68.0, 88.0, 62.0])
                        || in_ellipsoid(p, [0.0, -60.0, -34.0], [48.0, 32.0, 22.0]),
                );
            }
        }
    }
    m
}

/// The motion source's map: the outer 8 mm of the mask, rising from back to front.
fn motion_rim(mask: &[bool]) -> Vec<f32> {
    let [nx, ny, nz] = DIMS;
    let mut inner = mask.to_vec();
    for _ in 0..2 {
        let prev = inner.clone();
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let v = i + nx * (j + ny * k);
                    if !prev[v] {
                        continue;
                    }
                    let edge = i == 0
                        || j == 0
                        || k == 0
                        || i + 1 == nx
                        || j + 1 == ny
                        || k + 1 == nz
                        || !prev[v - 1]
                        || !prev[v + 1]
                        || !prev[v - nx]
                        || !prev[v + nx]
                        || !prev[v - nx * ny]
                        || !prev[v + nx * ny];
                    if edge {
                        inner[v] = false;
                    }
                }
            }
        }
    }
    let mut out = vec![0f32; mask.len()];
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let v = i + nx * (j + ny * k);
                if mask[v] && !inner[v] {
                    out[v] = (0.4 + 0.6 * j as f64 / (ny - 1) as f64) as f32;
                }
            }
        }
    }
    out
}

/// A source's map with its blobs shifted by `shift` mm, zero outside the mask, peak 1.
pub fn source_map(src: &Source, shift: [f64; 3], mask: &[bool]) -> Vec<f32> {
    if src.kind == SourceKind::Motion {
        return motion_rim(mask);
    }
    let [nx, ny, nz] = DIMS;
    let mut out = vec![0f32; mask.len()];
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let v = i + nx * (j + ny * k);
                if !mask[v] {
                    continue;
                }
                let p = world(i, j, k);
                let s: f64 = src
                    .blobs
                    .iter()
                    .map(|(c, sg, w)| {
                        let d2: f64 = (0..3)
                            .map(|a| ((p[a] - c[a] - shift[a]) / sg[a]).powi(2))
                            .sum();
                        w * (-0.5 * d2).exp()
                    })
                    .sum();
                out[v] = s as f32;
            }
        }
    }
    let peak = out.iter().cloned().fold(0f32, f32::max);
    if peak > 0.0 {
        out.iter_mut().for_each(|x| *x /= peak);
    }
    out
}

/// A unit-variance time course band-limited to `band` Hz: random Fourier coefficients on the
/// frequencies of a `t`-point series at `tr` seconds that lie in the band.
pub fn band_limited(rng: &mut SeededRng, t: usize, tr: f64, band: (f64, f64)) -> Vec<f64> {
    let mut x = vec![0f64; t];
    let span = t as f64 * tr;
    for f in 1..=t / 2 {
        let hz = f as f64 / span;
        if hz < band.0 || hz > band.1 {
            continue;
        }
        let (a, b) = (rng.normal(), rng.normal());
        let w = 2.0 * std::f64::consts::PI * f as f64 / t as f64;
        for (n, xn) in x.iter_mut().enumerate() {
            *xn += a * (w * n as f64).cos() + b * (w * n as f64).sin();
        }
    }
    unit_variance(&mut x);
    x
}

fn unit_variance(x: &mut [f64]) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let sd = (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
    x.iter_mut()
        .for_each(|v| *v = if sd > 0.0 { (*v - m) / sd } else { 0.0 });
}

/// The motion time course: a random walk (slow drift) with three to five spikes.
fn motion_course(rng: &mut SeededRng, t: usize) -> Vec<f64> {
    let mut x = Vec::with_capacity(t);
    let mut acc = 0.0;
    for _ in 0..t {
        acc += rng.normal() * 0.3;
        x.push(acc);
    }
    let spikes = 3 + (rng.next_u64() % 3) as usize;
    for _ in 0..spikes {
        let at = (rng.next_u64() % t as u64) as usize;
        x[at] += rng.range(2.0, 4.0) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
    }
    unit_variance(&mut x);
    x
}

/// Subject `index` of the cohort drawn by `spec`.
pub fn subject(spec: &CohortSpec, index: usize) -> PhantomSubject {
    let mut rng = SeededRng::new(
        spec.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(index as u64 + 1),
    );
    let mask = brain_mask();
    let [nx, ny, nz] = DIMS;
    let nv = nx * ny * nz;
    let t = spec.volumes;
    let mut maps = Vec::new();
    let mut courses = Vec::new();
    let mut shifts = Vec::new();
    let mut amps = Vec::new();
    for src in &SOURCES {
        let shift = if src.kind == SourceKind::Network {
            [rng.normal() * 2.0, rng.normal() * 2.0, rng.normal() * 2.0]
        } else {
            [0.0; 3]
        };
        let amp = rng.range(0.7, 1.3);
        maps.push(source_map(src, shift, &mask));
        courses.push(match src.kind {
            SourceKind::Motion => motion_course(&mut rng, t),
            _ => band_limited(&mut rng, t, TR_S, src.band_hz),
        });
        shifts.push(shift);
        amps.push(amp);
    }
    // Baseline: brain with a smooth shading, dim background.
    let base: Vec<f64> = (0..nv)
        .map(|v| {
            if mask[v] {
                let (i, j, k) = (v % nx, (v / nx) % ny, v / (nx * ny));
                let p = world(i, j, k);
                BRAIN_BASELINE * (1.0 + 0.1 * (p[0] / 40.0).sin() * (p[1] / 55.0).cos())
            } else {
                40.0
            }
        })
        .collect();
    let sigma = BRAIN_BASELINE / spec.tsnr;
    // Per voxel, the sources that touch it (their weight in signal units).
    let mut data = vec![0f32; nv * t];
    let mut active: Vec<(usize, f64)> = Vec::new();
    for v in 0..nv {
        active.clear();
        for (s, src) in SOURCES.iter().enumerate() {
            let w = maps[s][v] as f64;
            if w > 1e-4 {
                active.push((s, base[v] * w * amps[s] * src.peak_pct / 100.0));
            }
        }
        for n in 0..t {
            let signal: f64 = active.iter().map(|&(s, w)| w * courses[s][n]).sum();
            let x = base[v] + signal + sigma * rng.normal();
            data[v + nv * n] = x.max(0.0) as f32;
        }
    }
    let mut vol = Volume::new(
        [nx, ny, nz, t],
        data,
        [VOXEL_MM, VOXEL_MM, VOXEL_MM, TR_S * 1000.0],
    )
    .expect("dims match the data");
    vol.affine = affine();
    PhantomSubject {
        data: vol,
        maps,
        timecourses: courses,
        shifts_mm: shifts,
        amplitudes: amps,
    }
}
