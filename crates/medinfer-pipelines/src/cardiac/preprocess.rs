//! Preprocessing: input checks, locating the heart by its motion, and the model's patches.

use super::CardiacSpec;
use crate::config::{Normalization, Orientation};
use crate::PipelineError;
use medinfer_core::geom::{cross, dot, length, unit};
use medinfer_core::Volume;
use serde::Serialize;

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
    let bad = |why: String| Err(PipelineError::input(name, why));
    if nt < 2 {
        return bad(format!(
            "a cine short-axis stack has slices x phases (4D); this is {nx}x{ny}x{nz} with {nt} \
             time point(s)"
        ));
    }
    if nz < 2 {
        return bad(format!(
            "{nz} slice: volumes need a stack of at least 2 slices (when each slice is its own \
             series, as in sax_N folders, point at the folder that holds them all)"
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

/// How the model's view lies in the stored pixel grid: input pixels per mm along the view's
/// x (rightward) and y (downward) axes.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    /// `px_per_mm[a][b]`: input pixels moved along input axis `a` (0 = x, 1 = y) per mm along
    /// the view's axis `b`.
    pub px_per_mm: [[f64; 2]; 2],
    /// The view is the stored grid (mirrored left-right first when [`View::mirrored`]) turned
    /// by this many degrees (counter-clockwise on screen, rows running down); 0 for the stored
    /// view.
    pub rotation_deg: f64,
    /// Whether the view mirrors the stored grid.
    pub mirrored: bool,
    /// What was done, for the report.
    pub note: String,
    /// Set when the model wants the anatomical view and it could not be made (then the
    /// stored view is used): the reason, for the report's flags.
    pub fallback: Option<String>,
}

impl View {
    /// The grid as stored.
    pub fn stored(vol: &Volume, note: &str) -> View {
        View {
            px_per_mm: [[1.0 / vol.spacing[0], 0.0], [0.0, 1.0 / vol.spacing[1]]],
            rotation_deg: 0.0,
            mirrored: false,
            note: note.to_string(),
            fallback: None,
        }
    }

    /// The view `orientation` asks for, from the volume's affine. The anatomical view: the
    /// slice plane's projection of the patient's posterior direction is the view's downward
    /// axis, the in-plane direction at right angles to it toward the patient's left its
    /// rightward axis (RAS+ affine: left is -x, posterior -y).
    pub fn of(vol: &Volume, orientation: Orientation) -> View {
        if orientation == Orientation::Stored {
            return View::stored(
                vol,
                "stored (the model's config asks for the grid as stored)",
            );
        }
        let fallback = |why: &str| View {
            fallback: Some(format!(
                "anatomical view not made: {why}; the stored grid was used"
            )),
            ..View::stored(vol, "stored")
        };
        if vol.tags.get("geometry") == Some("unknown") {
            return fallback("the file gives no orientation in patient space");
        }
        let col = |k: usize| [vol.affine[0][k], vol.affine[1][k], vol.affine[2][k]];
        let (a0, a1) = (col(0), col(1));
        let n = cross(a0, a1);
        let nl = length(n);
        if !(nl.is_finite() && nl > 1e-9) {
            return fallback("the affine's in-plane axes are degenerate");
        }
        let Some((right, down)) = anatomical_axes(n.map(|v| v / nl)) else {
            return fallback("the slice plane is nearly coronal, so anterior is not in it");
        };
        // Input pixel offsets (du, dv) of a world offset w: least squares on the two axes.
        let g = [[dot(a0, a0), dot(a0, a1)], [dot(a0, a1), dot(a1, a1)]];
        let det = g[0][0] * g[1][1] - g[0][1] * g[1][0];
        let solve = |w: [f64; 3]| {
            let (r0, r1) = (dot(a0, w), dot(a1, w));
            (
                (g[1][1] * r0 - g[0][1] * r1) / det,
                (g[0][0] * r1 - g[1][0] * r0) / det,
            )
        };
        let (xu, xv) = solve(right);
        let (yu, yv) = solve(down);
        let mirrored = xu * yv - xv * yu < 0.0;
        // The view is the stored grid (mirrored left-right when `mirrored`) turned by the
        // rotation: its x axis lies at -rotation in the (mirrored) stored grid.
        let rotation_deg = if mirrored {
            (-xv).atan2(-xu)
        } else {
            (-xv).atan2(xu)
        }
        .to_degrees()
            + 0.0;
        let note = if rotation_deg.abs() < 0.05 && !mirrored {
            "anatomical (anterior up, patient's left on the right): the stored grid is already that view".to_string()
        } else {
            format!(
                "anatomical (anterior up, patient's left on the right): the stored grid{} turned by {rotation_deg:.1} degrees",
                if mirrored { " mirrored left-right and" } else { "" }
            )
        };
        View {
            px_per_mm: [[xu, yu], [xv, yv]],
            rotation_deg,
            mirrored,
            note,
            fallback: None,
        }
    }
}

/// The anatomical view's rightward and downward axes (RAS+) in the plane with unit normal
/// `n`: down is the patient's posterior (-y) projected on the plane, right the in-plane
/// direction at right angles to it toward the patient's left (-x). `None` when the plane is
/// nearly coronal (posterior projects to less than 0.3). The phantom builds its affine with
/// the same axes, so the pipeline's view of a phantom is the view it was drawn in.
pub(crate) fn anatomical_axes(n: [f64; 3]) -> Option<([f64; 3], [f64; 3])> {
    let post = [0.0, -1.0, 0.0];
    let k = dot(post, n);
    let down = [post[0] - k * n[0], post[1] - k * n[1], post[2] - k * n[2]];
    if length(down) < 0.3 {
        return None;
    }
    let down = unit(down);
    let mut right = cross(n, down);
    if right[0] > 0.0 {
        right = right.map(|v| -v);
    }
    Some((right, down))
}

/// Geometry of the patch in the input slice: input pixel `(x, y) = centre + m . (i + 0.5 -
/// size[0] / 2, j + 0.5 - size[1] / 2)` for patch pixel `(i, j)`.
#[derive(Clone, Copy, Debug)]
pub struct PatchGeometry {
    /// Centre in input pixel coordinates (x, y).
    pub centre: [f64; 2],
    /// `m[a][b]`: input pixels moved along input axis `a` per patch pixel along patch axis `b`.
    pub m: [[f64; 2]; 2],
    /// Patch columns and rows.
    pub size: [usize; 2],
}

impl PatchGeometry {
    /// The patch centred at `centre` (input pixels), at the spec's size and spacing, in `view`.
    pub fn new(centre: [f64; 2], view: &View, spec: &CardiacSpec) -> Self {
        let (sx, sy) = (spec.spacing_mm[1], spec.spacing_mm[0]);
        let v = &view.px_per_mm;
        PatchGeometry {
            centre,
            m: [[v[0][0] * sx, v[0][1] * sy], [v[1][0] * sx, v[1][1] * sy]],
            size: [spec.size[1], spec.size[0]],
        }
    }

    /// Input coordinates of patch pixel `(i, j)` (its centre).
    fn input_at(&self, i: usize, j: usize) -> (f64, f64) {
        let oi = i as f64 + 0.5 - self.size[0] as f64 / 2.0;
        let oj = j as f64 + 0.5 - self.size[1] as f64 / 2.0;
        (
            self.centre[0] + self.m[0][0] * oi + self.m[0][1] * oj,
            self.centre[1] + self.m[1][0] * oi + self.m[1][1] * oj,
        )
    }

    /// The input pixels the patch covers: `[x0, x1, y0, y1]` (ends exclusive), clipped to an
    /// `nx x ny` slice.
    pub(crate) fn footprint(&self, nx: usize, ny: usize) -> [usize; 4] {
        let (hx, hy) = (self.size[0] as f64 / 2.0, self.size[1] as f64 / 2.0);
        let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
        for (a, b) in [(-hx, -hy), (hx, -hy), (-hx, hy), (hx, hy)] {
            let p = [
                self.centre[0] + self.m[0][0] * a + self.m[0][1] * b,
                self.centre[1] + self.m[1][0] * a + self.m[1][1] * b,
            ];
            for k in 0..2 {
                lo[k] = lo[k].min(p[k]);
                hi[k] = hi[k].max(p[k]);
            }
        }
        let clip = |v: f64, n: usize| (v.max(0.0) as usize).min(n);
        [
            clip(lo[0].floor(), nx),
            clip(hi[0].ceil(), nx),
            clip(lo[1].floor(), ny),
            clip(hi[1].ceil(), ny),
        ]
    }
}

/// Samples the patch of one slice (`nx * ny` values) bilinearly (0 outside) and normalises it,
/// writing `columns x rows` values into `out`.
pub fn sample_patch(
    slice: &[f32],
    nx: usize,
    ny: usize,
    g: &PatchGeometry,
    norm: &Normalization,
    out: &mut [f32],
) {
    let at = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= nx as isize || y >= ny as isize {
            0.0
        } else {
            slice[y as usize * nx + x as usize]
        }
    };
    let [pw, ph] = g.size;
    for j in 0..ph {
        for i in 0..pw {
            let (sx, sy) = g.input_at(i, j);
            let y0 = sy.floor();
            let fy = (sy - y0) as f32;
            let x0 = sx.floor();
            let fx = (sx - x0) as f32;
            let (x0, y0) = (x0 as isize, y0 as isize);
            let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
            let bot = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
            out[j * pw + i] = top * (1.0 - fy) + bot * fy;
        }
    }
    match norm {
        // The shipped model's z-score, in f64 as it was trained.
        Normalization::Zscore => {
            let n = (pw * ph) as f64;
            let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = out.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / var.sqrt().max(1e-6);
            for v in out.iter_mut() {
                *v = ((*v as f64 - mean) * inv) as f32;
            }
        }
        other => {
            // Validated when the config was resolved (window width >= 1, min < max).
            let _ = other.apply(out);
        }
    }
}

/// Nearest-neighbour sample of a label patch (for training targets) at the same geometry.
pub fn sample_label_patch(labels: &[u8], nx: usize, ny: usize, g: &PatchGeometry, out: &mut [u8]) {
    let [pw, ph] = g.size;
    for j in 0..ph {
        for i in 0..pw {
            let (sx, sy) = g.input_at(i, j);
            let (sx, sy) = (sx.round(), sy.round());
            out[j * pw + i] = if sx < 0.0 || sy < 0.0 || sx >= nx as f64 || sy >= ny as f64 {
                0
            } else {
                labels[sy as usize * nx + sx as usize]
            };
        }
    }
}

/// The model inputs of an exam, as [`analyse`] makes them: the heart located by its motion, then
/// one normalised patch per slice and phase (image index `t * nz + z`) at the spec's size and
/// spacing, sampled on every core. Errors: input [`check_input`] refuses, or no beating heart.
pub fn exam_patches(
    vol: &Volume,
    input_name: &str,
    spec: &CardiacSpec,
) -> Result<(HeartLocation, PatchGeometry, View, Vec<f32>), PipelineError> {
    check_input(vol, input_name)?;
    let [nx, ny, nz, nt] = vol.dims;
    let plane = nx * ny;
    let heart = locate_heart(vol);
    if heart.motion_contrast < MIN_MOTION_CONTRAST {
        return Err(PipelineError::input(
            input_name,
            format!(
                "no beating heart found (motion contrast {:.2}, a cine heart gives > {MIN_MOTION_CONTRAST}); \
                 is this a cine short-axis stack?",
                heart.motion_contrast
            ),
        ));
    }
    let view = View::of(vol, spec.orientation);
    let geo = PatchGeometry::new(heart.centre_px, &view, spec);
    let images = nz * nt;
    let plen = spec.patch_len();
    let norm = &spec.normalization;
    let mut patches = vec![0f32; images * plen];
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    let items: Vec<(usize, &mut [f32])> = patches.chunks_mut(plen).enumerate().collect();
    super::for_each_split(items, threads, |(img, out)| {
        // Patch order: image index = t * nz + z, the volume's own order.
        let off = img * plane;
        sample_patch(&vol.data[off..off + plane], nx, ny, &geo, norm, out);
    });
    Ok((heart, geo, view, patches))
}
