//! A beating-heart cine-MRI phantom with exact ground truth.
//!
//! One seed gives one short-axis exam: a stack of 9-15 slices x 20-30 phases, as an SSFP cine
//! looks: bright blood, dark myocardium, chest wall with subcutaneous fat, lungs, spine, a
//! descending aorta, the liver under the apex, a smooth coil bias field and Rician noise. The
//! heart has a left ventricle (cavity, myocardium that thickens in systole because its
//! cross-section area is conserved, two papillary muscles inside the cavity), a crescent right
//! ventricle with a thin free wall, base-to-apex tapering, through-plane motion of the base, a
//! random size, position, in-plane rotation and ejection fraction (15-75 %), and an oblique
//! short-axis orientation in patient space. Above the atrioventricular plane (the base) sit the
//! two atria, bright blood in thin walls that fill while the ventricles empty, labelled
//! background as in ACDC.
//!
//! **Planning.** The stack is planned as SCMR's protocol asks, from above the base through the
//! apex: the first slice lies 0-12 mm above the base at end diastole (atria only), the second
//! 2-6 mm below it, and the last within 4 mm of the apex. With the base's through-plane motion
//! the second slice may show atrium at end systole too.
//!
//! **Ground truth.** Every pixel is rendered from 4 x 4 sub-samples (the heart) or 2 x 2 (the
//! static anatomy), which gives partial-volume edges in the image and, for the labels, the
//! fraction of each pixel covered by each structure. The truth masks are the per-pixel majority
//! label. The truth volumes are the method the pipeline uses applied to the exact
//! cross-sections: per slice, the covered area (sum of fractions x pixel area) times the slice
//! spacing (thickness + gap), summed over slices. Papillary muscles count as LV cavity (they
//! are blood-pool volume in this convention, as in ACDC and most clinical software). ED is the
//! phase with the largest LV volume, ES the smallest; myocardial mass is the LV myocardial
//! volume at ED x 1.05 g/ml.

use medinfer_core::SeededRng;
use medinfer_core::{Tags, Volume};
use serde::Serialize;

/// Labels in the truth masks and in the segmentation output.
pub const LABELS: [&str; 4] = ["background", "lv_cavity", "lv_myocardium", "rv_cavity"];

/// Density of myocardium used for the mass, g/ml.
pub const MYOCARDIAL_DENSITY: f64 = 1.05;

/// Exact clinical numbers of a phantom exam.
#[derive(Clone, Debug, Serialize)]
pub struct Truth {
    /// Phase index of end diastole (largest LV volume).
    pub ed_phase: usize,
    /// Phase index of end systole (smallest LV volume).
    pub es_phase: usize,
    /// LV end-diastolic volume, ml.
    pub lv_edv_ml: f64,
    /// LV end-systolic volume, ml.
    pub lv_esv_ml: f64,
    /// LV ejection fraction, %.
    pub lv_ef_pct: f64,
    /// RV end-diastolic volume, ml (at the LV's ED phase).
    pub rv_edv_ml: f64,
    /// RV end-systolic volume, ml (at the LV's ES phase).
    pub rv_esv_ml: f64,
    /// RV ejection fraction, %.
    pub rv_ef_pct: f64,
    /// LV myocardial mass at ED, g.
    pub lv_mass_g: f64,
    /// LV cavity volume per phase, ml.
    pub lv_volume_ml: Vec<f64>,
    /// RV cavity volume per phase, ml.
    pub rv_volume_ml: Vec<f64>,
    /// LV myocardial volume per phase, ml.
    pub myo_volume_ml: Vec<f64>,
}

/// The random parameters drawn from the seed (recorded so that a result can be explained).
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// The seed.
    pub seed: u64,
    /// In-plane pixel spacing, mm.
    pub pixel_spacing_mm: f64,
    /// Slice thickness, mm.
    pub slice_thickness_mm: f64,
    /// Gap between slices, mm.
    pub slice_gap_mm: f64,
    /// Matrix size (square).
    pub matrix: usize,
    /// Number of slices.
    pub slices: usize,
    /// Number of phases.
    pub phases: usize,
    /// Heart centre in the image plane, mm from the image centre (x right, y down).
    pub heart_centre_mm: [f64; 2],
    /// Direction of the RV from the LV centre, degrees in the image plane.
    pub rv_angle_deg: f64,
    /// LV endocardial radius at the base at ED, mm.
    pub lv_radius_mm: f64,
    /// LV wall thickness at the base at ED, mm.
    pub wall_mm: f64,
    /// LV long-axis length at ED, mm.
    pub lv_length_mm: f64,
    /// The ejection fraction the geometry was designed for (the exact one is in [`Truth`]).
    pub design_ef: f64,
    /// Cardiac cycle length, ms.
    pub rr_ms: f64,
    /// How the exam was acquired and stored.
    pub conditions: Conditions,
}

/// One phantom exam: the image, the exact masks and the exact numbers.
#[derive(Clone, Debug)]
pub struct CardiacPhantom {
    /// The cine stack `[nx, ny, slices, phases]`, scanner-like integer intensities, with an
    /// oblique short-axis affine and the time step in `spacing[3]`.
    pub image: Volume,
    /// Truth labels (see [`LABELS`]) in the same layout as `image`.
    pub labels: Vec<u8>,
    /// Exact numbers.
    pub truth: Truth,
    /// What was drawn.
    pub params: Params,
}

/// How an exam is acquired and stored, beyond the anatomy the seed draws: the ways real
/// exports differ from the canonical phantom (issue 26). The default is the canonical exam:
/// anterior up, the patient's left on the image's right, base first, ED at phase 0, the heart's
/// long axis along the slice normal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Conditions {
    /// In-plane rotation of the stored pixel grid from the canonical view, degrees.
    pub rotation_deg: f64,
    /// Stored columns in mirrored order (as some converters write them).
    pub mirror: bool,
    /// Slices stored apex first (the slice normal then points from apex to base).
    pub apex_first: bool,
    /// Phase index of end diastole: the recording starts this many phases before the R wave
    /// (a cycle recorded from the R wave minus an offset).
    pub ed_phase: usize,
    /// Tilt of the heart's long axis against the slice normal: in-plane shift of the heart
    /// centre per mm of depth (x, y in the canonical view), so the heart moves slice to slice.
    pub tilt: [f64; 2],
}

impl Conditions {
    /// Conditions drawn at random from `seed` (its own stream: the anatomy of the exam is the
    /// seed's canonical one): any rotation, mirroring and slice order with probability 1/2,
    /// ED at phase 0-19 (anywhere in the default phantom's 20-30 phase cycle; taken modulo the
    /// phase count), a tilt of up to 0.12 mm per mm.
    pub fn random(seed: u64) -> Conditions {
        let mut r = SeededRng::new(seed ^ 0x0c0d_1710_5000_0000);
        Conditions {
            rotation_deg: r.range(-180.0, 180.0),
            mirror: r.uniform() < 0.5,
            apex_first: r.uniform() < 0.5,
            ed_phase: (r.uniform() * 20.0) as usize % 20,
            tilt: [r.range(-0.12, 0.12), r.range(-0.12, 0.12)],
        }
    }

    /// The canonical view's coordinates of a stored pixel's in-plane offset (mm): the stored
    /// grid mirrored, then rotated.
    fn canonical_of(&self, u: f64, v: f64) -> (f64, f64) {
        let u = if self.mirror { -u } else { u };
        let (s, c) = self.rotation_deg.to_radians().sin_cos();
        (c * u - s * v, s * u + c * v)
    }

    /// The inverse of [`Conditions::canonical_of`].
    fn stored_of(&self, x: f64, y: f64) -> (f64, f64) {
        let (s, c) = self.rotation_deg.to_radians().sin_cos();
        let (u, v) = (c * x + s * y, -s * x + c * y);
        (if self.mirror { -u } else { u }, v)
    }
}

#[derive(Clone, Copy)]
struct Heart {
    cx: f64,
    cy: f64,
    r_ed: f64,
    wall_area: f64, // (R+w)^2 - R^2
    k_lv: f64,      // endo radius ratio ES/ED
    length: f64,
    base_offset: f64,
    base_motion: f64,
    harm: [(f64, f64, f64); 2], // (order, amplitude, phase)
    pap: [(f64, f64); 2],       // (angle, radius fraction)
    e: [f64; 2],                // RV direction
    rv_dist: f64,
    rv_a: f64,
    rv_b: f64,
    k_rv: f64,
    rv_wall: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Tissue {
    LvBlood,
    Papillary,
    Myo,
    RvBlood,
    RvWall,
    AtrialBlood,
    AtrialWall,
}

/// Per-frame geometry of the heart (one slice, one phase).
struct Frame {
    /// Scale of the atria (0 below the base, where there are none).
    atria: f64,
    present: bool,
    r_en: f64,
    r_ep: f64,
    pap_r: f64,
    rv_present: bool,
    rv_a: f64,
    rv_b: f64,
}

impl Heart {
    fn contraction(phase: f64, es: f64) -> f64 {
        use std::f64::consts::PI;
        if phase <= es {
            0.5 * (1.0 - (PI * phase / es).cos())
        } else {
            0.5 * (1.0 + (PI * (phase - es) / (1.0 - es)).cos())
        }
    }

    fn frame(&self, depth_from_base_ed: f64, c: f64) -> Frame {
        let shift = self.base_motion * c;
        let d = depth_from_base_ed - shift;
        let len = self.length - shift;
        let u = d / len;
        let g = |u: f64, scale: f64| {
            if !(0.0..1.0).contains(&(u / scale)) {
                0.0
            } else {
                (1.0 - (u / scale).powf(2.2)).max(0.0).sqrt()
            }
        };
        let gl = g(u, 1.0);
        let gr = g(u, 0.85);
        // The atria above the base: full size just above it, tapering over 40 mm, and filling
        // (larger) while the ventricles contract.
        let atria = if d < 0.0 && d > -40.0 {
            (1.0 - (-d / 40.0).powi(2)).sqrt() * (0.85 + 0.2 * c)
        } else {
            0.0
        };
        let r_en = self.r_ed * (1.0 - (1.0 - self.k_lv) * c) * gl;
        let r_ep = (r_en * r_en + self.wall_area * gl * gl).sqrt();
        let s_rv = 1.0 - (1.0 - self.k_rv) * c;
        Frame {
            atria,
            present: gl > 0.0,
            r_en,
            r_ep,
            pap_r: if (0.2..0.8).contains(&u) {
                0.14 * r_en
            } else {
                0.0
            },
            rv_present: gr > 0.0,
            rv_a: self.rv_a * gr * s_rv,
            rv_b: self.rv_b * gr * s_rv.sqrt(),
        }
    }

    /// What the point (x, y) mm is, if it belongs to the heart.
    fn tissue(&self, f: &Frame, x: f64, y: f64) -> Option<Tissue> {
        if !f.present && !f.rv_present && f.atria <= 0.0 {
            return None;
        }
        let (dx, dy) = (x - self.cx, y - self.cy);
        if f.atria > 0.0 {
            return self.atrium(f.atria, dx, dy);
        }
        let r2 = dx * dx + dy * dy;
        let r = r2.sqrt();
        // Shape modulation m(theta) = 1 + sum a_n cos(n (theta - phi_n)), without atan2.
        let (ct, st) = if r > 1e-9 {
            (dx / r, dy / r)
        } else {
            (1.0, 0.0)
        };
        let mut m = 1.0;
        for &(n, a, ph) in &self.harm {
            let (cn, sn) = if n == 2.0 {
                (ct * ct - st * st, 2.0 * st * ct)
            } else {
                (4.0 * ct * ct * ct - 3.0 * ct, 3.0 * st - 4.0 * st * st * st)
            };
            m += a * (cn * ph.cos() + sn * ph.sin());
        }
        if f.present {
            if r < f.r_en * m {
                for &(ang, frac) in &self.pap {
                    let px = self.cx + ang.cos() * f.r_en * frac;
                    let py = self.cy + ang.sin() * f.r_en * frac;
                    if f.pap_r > 0.0 && (x - px).powi(2) + (y - py).powi(2) < f.pap_r * f.pap_r {
                        return Some(Tissue::Papillary);
                    }
                }
                return Some(Tissue::LvBlood);
            }
            if r < f.r_ep * m {
                return Some(Tissue::Myo);
            }
        }
        if f.rv_present && f.rv_a > 0.0 {
            let (ex, ey) = (self.e[0], self.e[1]);
            let (qx, qy) = (dx - ex * self.rv_dist, dy - ey * self.rv_dist);
            let a = qx * ex + qy * ey;
            let b = -qx * ey + qy * ex;
            let inside = |ra: f64, rb: f64| (a / ra).powi(2) + (b / rb).powi(2) < 1.0;
            if inside(f.rv_a, f.rv_b) {
                return Some(Tissue::RvBlood);
            }
            if inside(f.rv_a + self.rv_wall, f.rv_b + self.rv_wall) {
                return Some(Tissue::RvWall);
            }
        }
        None
    }

    /// The atria at (dx, dy) mm from the LV axis, `scale` their size: the left one a disc
    /// behind the LV's axis, the right one an ellipse on the RV's side; blood in a 2 mm wall.
    fn atrium(&self, scale: f64, dx: f64, dy: f64) -> Option<Tissue> {
        let wall = 2.0;
        let r_la = 0.8 * self.r_ed * scale;
        let (lx, ly) = (dx, dy - 0.35 * self.r_ed);
        let d_la = (lx * lx + ly * ly).sqrt();
        if d_la < r_la {
            return Some(Tissue::AtrialBlood);
        }
        let (ex, ey) = (self.e[0], self.e[1]);
        let (qx, qy) = (dx - ex * self.rv_dist, dy - ey * self.rv_dist);
        let a = qx * ex + qy * ey;
        let b = -qx * ey + qy * ex;
        let (ra, rb) = (0.7 * self.rv_a * scale, 0.8 * self.rv_b * scale);
        let inside = |ra: f64, rb: f64| (a / ra).powi(2) + (b / rb).powi(2) < 1.0;
        if inside(ra, rb) {
            return Some(Tissue::AtrialBlood);
        }
        if d_la < r_la + wall || inside(ra + wall, rb + wall) {
            return Some(Tissue::AtrialWall);
        }
        None
    }
}

/// Static anatomy around the heart (constant over the cycle).
struct Body {
    a: f64,
    b: f64,
    fat: f64,
    lungs: [(f64, f64, f64, f64); 2],
    spine: (f64, f64, f64),
    aorta: (f64, f64, f64),
    liver: (f64, f64, f64, f64),
    liver_from: f64, // depth (mm from the base) where the liver starts
}

impl Body {
    fn intensity(&self, x: f64, y: f64, depth: f64, rv: &Contrast) -> f64 {
        let e = (x / self.a).powi(2) + (y / self.b).powi(2);
        if e >= 1.0 {
            return 0.0;
        }
        let ei = (x / (self.a - self.fat)).powi(2) + (y / (self.b - self.fat)).powi(2);
        if ei >= 1.0 {
            return rv.fat;
        }
        let inc = |c: (f64, f64, f64)| (x - c.0).powi(2) + (y - c.1).powi(2) < c.2 * c.2;
        if inc(self.aorta) {
            return rv.blood * 0.95;
        }
        if inc(self.spine) {
            return rv.muscle * 0.8;
        }
        if depth > self.liver_from {
            let (lx, ly, la, lb) = self.liver;
            let grow = ((depth - self.liver_from) / 30.0).min(1.0);
            if ((x - lx) / (la * grow.max(0.3))).powi(2) + ((y - ly) / lb).powi(2) < 1.0 {
                return rv.liver;
            }
        }
        for &(lx, ly, la, lb) in &self.lungs {
            if ((x - lx) / la).powi(2) + ((y - ly) / lb).powi(2) < 1.0 {
                return rv.lung;
            }
        }
        rv.muscle
    }
}

/// Tissue signal levels (blood = about 1).
struct Contrast {
    blood: f64,
    myo: f64,
    fat: f64,
    muscle: f64,
    lung: f64,
    liver: f64,
}

/// Generates the phantom exam of `seed` (deterministic: same seed, same bytes).
pub fn cardiac(seed: u64) -> CardiacPhantom {
    cardiac_sized(seed, None, None)
}

/// [`cardiac`] with the number of slices and / or phases fixed (for benchmarks that need a
/// standard exam size, e.g. 10 x 25); everything else still follows the seed. Slices are
/// clamped to 2..=40 and phases to 2..=100.
// The harmonic phases are drawn from [0, 6.283), not TAU: the shipped model's training data and
// the recorded accuracy figures were made with this bound, and changing it changes every exam.
#[allow(clippy::approx_constant)]
pub fn cardiac_sized(seed: u64, slices: Option<usize>, phases: Option<usize>) -> CardiacPhantom {
    cardiac_with(seed, slices, phases, &Conditions::default())
}

/// [`cardiac_sized`] acquired and stored under `conditions` (rotated, mirrored, apex first, ED
/// later in the cycle, a tilted heart). The anatomy and the truth volumes are the seed's; the
/// affine stays anatomically right, so a reader that follows it sees the canonical exam.
/// `ed_phase` is taken modulo the number of phases.
#[allow(clippy::approx_constant)]
pub fn cardiac_with(
    seed: u64,
    slices: Option<usize>,
    phases: Option<usize>,
    conditions: &Conditions,
) -> CardiacPhantom {
    let cond = conditions;
    let mut rng = SeededRng::new(seed ^ 0xca7d_1ac0_0000_0000);
    let sp = rng.range(1.2, 2.0);
    let fov = rng.range(320.0, 380.0);
    let n = ((fov / sp / 2.0).round() as usize) * 2;
    let thick = rng.range(6.0, 10.0);
    let gap = rng.range(0.0, 4.0);
    let spacing = thick + gap;
    let drawn_phases = 20 + (rng.uniform() * 11.0) as usize % 11;
    let phases = phases.map_or(drawn_phases, |p| p.clamp(2, 100));
    let design_ef = rng.range(0.15, 0.75);
    let r_ed = rng.range(20.0, 30.0) * (1.0 + 0.5 * (0.55 - design_ef).max(0.0));
    let wall = rng.range(6.0, 11.0);
    let length = rng.range(80.0, 100.0);
    let base_motion = 0.1 * length * (design_ef / 0.6).min(1.0);
    // Volume ~ r^2 L: choose the radial ratio so the design EF is met with the base motion.
    let len_ratio = (length - base_motion) / length;
    let k_lv = ((1.0 - design_ef) / len_ratio).max(0.05).sqrt();
    let rv_ef = (design_ef * rng.range(0.8, 1.1)).clamp(0.2, 0.7);
    let k_rv = 1.0 - rv_ef.min(0.65);
    let r_ep = (r_ed * r_ed + (r_ed + wall).powi(2) - r_ed * r_ed).sqrt();
    let rv_angle = (200.0 + rng.range(-25.0, 25.0)).to_radians();
    // One slice above the base, then from 2-6 mm below it to within 4 mm of the apex.
    let drawn_slices = (((length - 4.0) / spacing).ceil() as usize + 2).clamp(9, 15);
    let slices = slices.map_or(drawn_slices, |s| s.clamp(2, 40));
    let heart = Heart {
        cx: rng.range(5.0, 40.0),
        cy: rng.range(-30.0, 10.0),
        r_ed,
        wall_area: (r_ed + wall).powi(2) - r_ed * r_ed,
        k_lv,
        length,
        base_offset: rng.range(2.0, 6.0),
        base_motion,
        harm: [
            (2.0, rng.range(0.0, 0.06), rng.range(0.0, 6.283)),
            (3.0, rng.range(0.0, 0.04), rng.range(0.0, 6.283)),
        ],
        pap: [
            (
                rv_angle + std::f64::consts::PI + rng.range(0.5, 0.9),
                rng.range(0.6, 0.75),
            ),
            (
                rv_angle + std::f64::consts::PI - rng.range(0.5, 0.9),
                rng.range(0.6, 0.75),
            ),
        ],
        e: [rv_angle.cos(), rv_angle.sin()],
        rv_dist: r_ep * rng.range(0.55, 0.75),
        rv_a: r_ep * rng.range(0.9, 1.15),
        rv_b: r_ep * rng.range(1.2, 1.45),
        k_rv,
        rv_wall: rng.range(2.5, 4.0),
    };
    let ba = fov * rng.range(0.40, 0.45);
    let bb = ba * rng.range(0.66, 0.76);
    let body = Body {
        a: ba,
        b: bb,
        fat: rng.range(8.0, 16.0),
        lungs: [
            (-0.45 * ba, -0.05 * bb, 0.3 * ba, 0.55 * bb),
            (0.5 * ba, 0.0, 0.28 * ba, 0.55 * bb),
        ],
        spine: (0.0, 0.72 * bb, 18.0),
        aorta: (
            rng.range(-10.0, 10.0) + 22.0,
            0.5 * bb,
            rng.range(9.0, 13.0),
        ),
        liver: (-0.3 * ba, 0.2 * bb, 0.5 * ba, 0.45 * bb),
        liver_from: length * rng.range(0.5, 0.8),
    };
    let blood = rng.range(0.9, 1.1);
    let contrast = Contrast {
        blood,
        myo: rng.range(0.22, 0.32),
        fat: rng.range(0.8, 0.95),
        muscle: rng.range(0.28, 0.38),
        lung: rng.range(0.03, 0.07),
        liver: rng.range(0.38, 0.48),
    };
    let scale = rng.range(700.0, 1400.0);
    let sigma = rng.range(0.025, 0.05);
    let bias = [
        rng.range(-0.3, 0.3),
        rng.range(-0.3, 0.3),
        rng.range(-0.3, 0.1),
        rng.range(-0.3, 0.3),
    ];
    let es_frac = rng.range(0.3, 0.4);
    let rr = rng.range(800.0, 1100.0);
    let noise_seed = rng.next_u64();

    // Pixel centre coordinates in mm (x right, y down, origin at the image centre).
    let coord = |i: usize| (i as f64 + 0.5 - n as f64 / 2.0) * sp;
    let plane = n * n;
    // Stored slice s images the anatomical slice k (0 = the most basal).
    let anat = |s: usize| if cond.apex_first { slices - 1 - s } else { s };
    let depth_of = |s: usize| heart.base_offset + (anat(s) as f64 - 1.0) * spacing;
    // Canonical-view (mm) point of a stored in-plane position (mm).
    let canon = |u: f64, v: f64| cond.canonical_of(u, v);
    // The heart's centre moves with depth when its long axis is tilted.
    let heart_shift = |s: usize| {
        let d = depth_of(s);
        (cond.tilt[0] * d, cond.tilt[1] * d)
    };

    // Static anatomy per slice, 2x2 sub-samples.
    let statics: Vec<Vec<f32>> = (0..slices)
        .map(|k| {
            let depth = depth_of(k);
            let mut s = vec![0f32; plane];
            for j in 0..n {
                for i in 0..n {
                    let mut acc = 0.0;
                    for (sx, sy) in [(-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)] {
                        let (x, y) = canon(coord(i) + sx * sp, coord(j) + sy * sp);
                        acc += body.intensity(x, y, depth, &contrast);
                    }
                    s[j * n + i] = (acc / 4.0) as f32;
                }
            }
            s
        })
        .collect();

    // Heart bounding box (largest extent over the cycle), in pixels.
    let reach = heart.rv_dist + heart.rv_b.max(heart.rv_a) + heart.rv_wall + 4.0;
    let reach = reach.max(r_ep * 1.2);
    let to_px = |mm: f64| ((mm / sp) + n as f64 / 2.0 - 0.5).floor();
    let clampi = |v: f64| v.clamp(0.0, (n - 1) as f64) as usize;
    // In the stored grid, around where the (shifted) heart centre lands.
    let heart_box = |s: usize| {
        let (dx, dy) = heart_shift(s);
        let (u, v) = cond.stored_of(heart.cx + dx, heart.cy + dy);
        (
            clampi(to_px(u - reach)),
            clampi(to_px(u + reach) + 1.0),
            clampi(to_px(v - reach)),
            clampi(to_px(v + reach) + 1.0),
        )
    };

    let frames: Vec<(usize, usize)> = (0..phases)
        .flat_map(|t| (0..slices).map(move |k| (k, t)))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    let ss = 4usize;
    let render = |&(k, t): &(usize, usize)| -> (Vec<f32>, Vec<u8>, [f64; 3]) {
        // Stored phase t is this far into the cycle that starts at ED (the R wave).
        let cycle = (t + phases - cond.ed_phase % phases) % phases;
        let c = Heart::contraction(cycle as f64 / phases as f64, es_frac);
        let f = heart.frame(depth_of(k), c);
        let (x0, x1, y0, y1) = heart_box(k);
        let (hx, hy) = heart_shift(k);
        let mut img = statics[k].clone();
        let mut lab = vec![0u8; plane];
        let mut area = [0f64; 3];
        for j in y0..=y1 {
            for i in x0..=x1 {
                let mut frac = [0u32; 4];
                let mut acc = 0.0;
                let mut any = false;
                for sy in 0..ss {
                    for sx in 0..ss {
                        let (x, y) = canon(
                            coord(i) + ((sx as f64 + 0.5) / ss as f64 - 0.5) * sp,
                            coord(j) + ((sy as f64 + 0.5) / ss as f64 - 0.5) * sp,
                        );
                        let tissue = heart.tissue(&f, x - hx, y - hy);
                        any |= tissue.is_some();
                        let (label, v) = match tissue {
                            Some(Tissue::LvBlood) => (1, contrast.blood),
                            Some(Tissue::Papillary) => (1, contrast.myo),
                            Some(Tissue::Myo) => (2, contrast.myo),
                            Some(Tissue::RvBlood) => (3, contrast.blood),
                            Some(Tissue::RvWall) => (0, contrast.myo),
                            Some(Tissue::AtrialBlood) => (0, contrast.blood),
                            Some(Tissue::AtrialWall) => (0, contrast.myo),
                            None => (0, body.intensity(x, y, depth_of(k), &contrast)),
                        };
                        frac[label] += 1;
                        acc += v;
                    }
                }
                if any {
                    let idx = j * n + i;
                    img[idx] = (acc / (ss * ss) as f64) as f32;
                    let total = (ss * ss) as f64;
                    for l in 1..4 {
                        area[l - 1] += frac[l] as f64 / total;
                    }
                    // Majority label; ties go to the heart structure.
                    let mut best = 0;
                    for l in 1..4 {
                        if frac[l] >= frac[best] {
                            best = l;
                        }
                    }
                    lab[idx] = best as u8;
                }
            }
        }
        // Bias field, Rician noise, integer scanner values.
        let mut rng = SeededRng::new(noise_seed ^ ((k as u64) << 32) ^ t as u64);
        for j in 0..n {
            for i in 0..n {
                let (u, v) = (coord(i) / fov, coord(j) / fov);
                let b = (bias[0] * u
                    + bias[1] * v
                    + bias[2] * (u * u + v * v) * 4.0
                    + bias[3] * u * v * 4.0)
                    .exp();
                let s = img[j * n + i] as f64 * b;
                let re = s + sigma * rng.normal();
                let im = sigma * rng.normal();
                img[j * n + i] = ((re * re + im * im).sqrt() * scale).round().min(4095.0) as f32;
            }
        }
        (img, lab, area)
    };
    let rendered: Vec<(Vec<f32>, Vec<u8>, [f64; 3])> = parallel(&frames, threads, render);

    let mut data = vec![0f32; plane * slices * phases];
    let mut labels = vec![0u8; plane * slices * phases];
    let mut vols = vec![[0f64; 3]; phases];
    let px_ml = sp * sp * spacing / 1000.0;
    for ((k, t), (img, lab, area)) in frames.iter().zip(rendered) {
        let off = (t * slices + k) * plane;
        data[off..off + plane].copy_from_slice(&img);
        labels[off..off + plane].copy_from_slice(&lab);
        for s in 0..3 {
            vols[*t][s] += area[s] * px_ml;
        }
    }
    let lv: Vec<f64> = vols.iter().map(|v| v[0]).collect();
    let myo: Vec<f64> = vols.iter().map(|v| v[1]).collect();
    let rvv: Vec<f64> = vols.iter().map(|v| v[2]).collect();
    let (ed, es) = ed_es(&lv);
    let ef = |d: f64, s: f64| if d > 0.0 { 100.0 * (d - s) / d } else { 0.0 };
    let truth = Truth {
        ed_phase: ed,
        es_phase: es,
        lv_edv_ml: lv[ed],
        lv_esv_ml: lv[es],
        lv_ef_pct: ef(lv[ed], lv[es]),
        rv_edv_ml: rvv[ed],
        rv_esv_ml: rvv[es],
        rv_ef_pct: ef(rvv[ed], rvv[es]),
        lv_mass_g: myo[ed] * MYOCARDIAL_DENSITY,
        lv_volume_ml: lv,
        rv_volume_ml: rvv,
        myo_volume_ml: myo,
    };

    let mut image = Volume::new(
        [n, n, slices, phases],
        data,
        [sp, sp, spacing, rr / phases as f64],
    )
    .expect("dims match the data by construction");
    image.affine = anatomical_affine(
        &mut rng,
        n,
        sp,
        [
            depth_of(0),
            if cond.apex_first { -spacing } else { spacing },
        ],
        cond,
    );
    let mut tags = Tags::new();
    tags.set("modality", "MR");
    tags.set(
        "series_description",
        "medinfer cardiac phantom, SSFP cine short axis",
    );
    tags.set("slice_thickness", format!("{thick:.3}"));
    image.tags = tags;
    CardiacPhantom {
        image,
        labels,
        truth,
        params: Params {
            seed,
            pixel_spacing_mm: sp,
            slice_thickness_mm: thick,
            slice_gap_mm: gap,
            matrix: n,
            slices,
            phases,
            heart_centre_mm: [heart.cx, heart.cy],
            rv_angle_deg: rv_angle.to_degrees(),
            lv_radius_mm: r_ed,
            wall_mm: wall,
            lv_length_mm: length,
            design_ef,
            rr_ms: rr,
            conditions: *cond,
        },
    }
}

/// ED = the phase of the largest volume, ES = the smallest (first on ties).
pub fn ed_es(lv: &[f64]) -> (usize, usize) {
    let mut ed = 0;
    let mut es = 0;
    for (i, &v) in lv.iter().enumerate() {
        if v > lv[ed] {
            ed = i;
        }
        if v < lv[es] {
            es = i;
        }
    }
    (ed, es)
}

/// The affine of the stored grid, anatomically right: the heart's long axis (base to apex,
/// the canonical slice normal) points to the patient's left, anterior and inferior (RAS+
/// roughly (-0.6, 0.55, -0.58), tilted at random by up to ~0.3 rad), the canonical image's
/// downward axis is the posterior direction projected on the slice plane, its rightward axis
/// the patient's left. The stored grid is the canonical one seen through `cond` (rotated,
/// mirrored, slices in either order): `depth` is the first stored slice's depth below the base
/// and the depth step per stored slice (negative apex first).
fn anatomical_affine(
    rng: &mut SeededRng,
    n: usize,
    sp: f64,
    depth: [f64; 2],
    cond: &Conditions,
) -> [[f64; 4]; 4] {
    let [ax, ay, az] = crate::cardiac::APEX_DIRECTION;
    let axis =
        medinfer_core::geom::unit([ax + rng.range(-0.3, 0.3), ay + rng.range(-0.3, 0.3), az]);
    let (right, down) = crate::cardiac::anatomical_axes(axis)
        .expect("the drawn long axis is never within 45 degrees of the anterior-posterior axis");
    // Stored pixel (i, j) sits at canonical (x, y) = canonical_of(u, v), u and v the pixel
    // centre's offsets from the image centre: linear in (i, j).
    let (m00, m10) = cond.canonical_of(1.0, 0.0);
    let (m01, m11) = cond.canonical_of(0.0, 1.0);
    let u0 = (0.5 - n as f64 / 2.0) * sp;
    let (x0, y0) = cond.canonical_of(u0, u0);
    let centre = [0.0, 0.0, 20.0];
    let mut m = [[0.0; 4]; 4];
    for a in 0..3 {
        m[a][0] = sp * (m00 * right[a] + m10 * down[a]);
        m[a][1] = sp * (m01 * right[a] + m11 * down[a]);
        m[a][2] = depth[1] * axis[a];
        m[a][3] = centre[a] + depth[0] * axis[a] + x0 * right[a] + y0 * down[a];
    }
    m[3][3] = 1.0;
    m
}

/// Maps `f` over `items` on `threads` scoped threads, keeping the order.
pub(crate) fn parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    let chunk = items.len().div_ceil(threads);
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk.max(1))
            .map(|c| {
                let f = &f;
                s.spawn(move || c.iter().map(f).collect::<Vec<R>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_within_the_specified_ranges() {
        let a = cardiac(7);
        let b = cardiac(7);
        assert_eq!(a.image.data, b.image.data);
        assert_eq!(a.labels, b.labels);
        let p = &a.params;
        assert!((1.2..=2.0).contains(&p.pixel_spacing_mm));
        assert!((9..=15).contains(&p.slices));
        assert!((20..=30).contains(&p.phases));
        let t = &a.truth;
        assert!(t.lv_edv_ml > t.lv_esv_ml && t.lv_esv_ml > 0.0);
        assert_eq!(t.ed_phase, 0, "ED is the first phase by design");
        // The truth volumes are the label fractions summed: the majority masks agree to ~2 %.
        let [nx, ny, nz, _] = a.image.dims;
        let count = |l: u8, t: usize| {
            a.labels[t * nx * ny * nz..(t + 1) * nx * ny * nz]
                .iter()
                .filter(|&&v| v == l)
                .count() as f64
        };
        let px_ml = p.pixel_spacing_mm.powi(2) * a.image.spacing[2] / 1000.0;
        let lv_mask = count(1, t.ed_phase) * px_ml;
        assert!(
            (lv_mask / t.lv_edv_ml - 1.0).abs() < 0.02,
            "{lv_mask} vs {}",
            t.lv_edv_ml
        );
        let myo_mask = count(2, t.ed_phase) * px_ml;
        assert!((myo_mask / t.myo_volume_ml[t.ed_phase] - 1.0).abs() < 0.04);
    }

    /// World (RAS+ mm) centroid of `label` at phase `t`.
    fn world_centroid(ph: &CardiacPhantom, label: u8, t: usize) -> [f64; 3] {
        let [nx, ny, nz, _] = ph.image.dims;
        let (mut acc, mut n) = ([0.0; 3], 0.0);
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    if ph.labels[((t * nz + z) * ny + y) * nx + x] == label {
                        let a = &ph.image.affine;
                        for (r, v) in acc.iter_mut().enumerate() {
                            *v += a[r][0] * x as f64
                                + a[r][1] * y as f64
                                + a[r][2] * z as f64
                                + a[r][3];
                        }
                        n += 1.0;
                    }
                }
            }
        }
        acc.map(|v| v / n)
    }

    #[test]
    fn conditions_change_the_storage_not_the_anatomy() {
        let canon = cardiac_sized(9, Some(8), Some(20));
        let cond = Conditions {
            rotation_deg: 110.0,
            mirror: true,
            apex_first: true,
            ed_phase: 5,
            tilt: [0.0, 0.0],
        };
        let other = cardiac_with(9, Some(8), Some(20), &cond);
        let (a, b) = (&canon.truth, &other.truth);
        assert_eq!(b.ed_phase, 5);
        assert!(
            (a.lv_edv_ml / b.lv_edv_ml - 1.0).abs() < 0.005,
            "{a:?} {b:?}"
        );
        assert!((a.lv_ef_pct - b.lv_ef_pct).abs() < 0.2);
        assert!((a.lv_mass_g / b.lv_mass_g - 1.0).abs() < 0.01);
        // The affine stays anatomically right: each structure lands at the same place in
        // the patient (to a fraction of a pixel).
        for label in 1..=3 {
            let p = world_centroid(&canon, label, 0);
            let q = world_centroid(&other, label, 5);
            let d = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt();
            assert!(d < 0.5, "label {label}: {p:?} vs {q:?}");
        }
        // The canonical view's down axis is posterior, its right axis the patient's left.
        let a = &canon.image.affine;
        assert!(a[1][1] < 0.0 && a[0][0] < 0.0, "{a:?}");
    }

    #[test]
    fn ejection_fractions_span_the_clinical_range() {
        let efs: Vec<f64> = (0..12).map(|s| cardiac(1000 + s).truth.lv_ef_pct).collect();
        let lo = efs.iter().cloned().fold(f64::MAX, f64::min);
        let hi = efs.iter().cloned().fold(f64::MIN, f64::max);
        assert!(lo < 35.0 && hi > 55.0, "{efs:?}");
        assert!(efs.iter().all(|&e| (10.0..=80.0).contains(&e)), "{efs:?}");
    }
}

/// How [`write_cardiac`] writes the phantom's images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One 4D NIfTI (`cine.nii.gz`, int16).
    Nifti,
    /// A DICOM cine series (`dicom/IM_<slice>_<phase>.dcm`, explicit VR little endian).
    Dicom,
}

/// How [`write_cardiac_with`] acquires and stores a phantom exam.
#[derive(Clone, Copy, Debug, Default)]
pub struct Export {
    /// Rotation, mirroring, slice order, ED phase, tilt.
    pub conditions: Conditions,
    /// DICOM: each slice its own series (`dicom/sax_<slice + 1>/`).
    pub series_per_slice: bool,
    /// DICOM: each slice acquired in its own breath-hold: its first trigger time 15-35 ms and
    /// its RR within +-6 % of the exam's (drawn from the seed), Trigger Time only.
    pub breath_holds: bool,
}

/// Per-slice `(first trigger time, step)` in ms of an exam acquired in separate breath-holds.
pub fn breath_hold_timing(seed: u64, slices: usize, phases: usize, rr_ms: f64) -> Vec<[f64; 2]> {
    let mut r = SeededRng::new(seed ^ 0xb7ea_7400_0000_0000);
    (0..slices)
        .map(|_| {
            let rr = rr_ms * r.range(0.94, 1.06);
            [r.range(15.0, 35.0), rr / phases as f64]
        })
        .collect()
}

/// Generates cardiac phantom `seed` and writes it into `dir`: the images, the truth masks
/// (`truth_labels.nii.gz`: 1 LV cavity, 2 LV myocardium, 3 RV cavity), `truth.json` (the
/// numbers and the drawn parameters) and `preview.png`.
pub fn write_cardiac(
    dir: &std::path::Path,
    seed: u64,
    format: Format,
) -> Result<CardiacPhantom, crate::PipelineError> {
    write_cardiac_with(dir, seed, format, &Export::default())
}

/// [`write_cardiac`] acquired and stored as `export` says.
pub fn write_cardiac_with(
    dir: &std::path::Path,
    seed: u64,
    format: Format,
    export: &Export,
) -> Result<CardiacPhantom, crate::PipelineError> {
    use medinfer_io::nifti::{self, NiftiDtype};
    let out_err = |p: &std::path::Path, e: String| crate::PipelineError::Output {
        path: p.display().to_string(),
        reason: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| out_err(dir, e.to_string()))?;
    let ph = cardiac_with(seed, None, None, &export.conditions);
    let [_, _, nz, nt] = ph.image.dims;
    match format {
        Format::Nifti => nifti::write(dir.join("cine.nii.gz"), &ph.image, NiftiDtype::I16)?,
        Format::Dicom => {
            let info = medinfer_io::dicom_write::SeriesInfo {
                modality: "MR".into(),
                description: "medinfer cardiac phantom, SSFP cine short axis".into(),
                uid_seed: seed + 1,
                slice_thickness: ph.params.slice_thickness_mm,
                rescale_intercept: 0.0,
                slice_timing: export
                    .breath_holds
                    .then(|| breath_hold_timing(seed, nz, nt, ph.params.rr_ms)),
                series_per_slice: export.series_per_slice,
            };
            medinfer_io::dicom_write::write_series(&dir.join("dicom"), &ph.image, &info)?;
        }
    }
    let mut lab = medinfer_core::Volume {
        data: ph.labels.iter().map(|&v| v as f32).collect(),
        ..ph.image.clone()
    };
    lab.window = None;
    nifti::write(dir.join("truth_labels.nii.gz"), &lab, NiftiDtype::U8)?;
    let truth = dir.join("truth.json");
    let json =
        serde_json::to_string_pretty(&serde_json::json!({"truth": ph.truth, "params": ph.params}))
            .map_err(|e| out_err(&truth, e.to_string()))?;
    std::fs::write(&truth, json).map_err(|e| out_err(&truth, e.to_string()))?;
    let mid = crate::cardiac::mid_ventricular_slice(
        &ph.labels,
        ph.image.dims,
        [ph.truth.ed_phase, ph.truth.es_phase],
    );
    crate::cardiac::write_overlay_pair(
        &dir.join("preview.png"),
        &ph.image,
        &ph.labels,
        mid,
        [ph.truth.ed_phase, ph.truth.es_phase],
    )?;
    Ok(ph)
}
