//! The classifier's view of one component map: three orthogonal slices through its peak.
//!
//! Geometry (fixed, so that the classifier sees every cohort the same way):
//! - each slice is [`SIZE`] x [`SIZE`] pixels covering [`FOV_MM`] mm (4.44 mm per pixel),
//!   sampled in world (RAS+) millimetres through the grid's affine, so a flipped or
//!   re-ordered voxel layout gives the same image;
//! - the slice planes pass through the map's peak; within each plane the field of view is
//!   centred on the brain mask's bounding-box centre, not on the peak, so that where the peak
//!   lies in the brain (left or right, front or back) stays visible to the classifier;
//! - channel 0 sagittal (x = peak): rows superior to inferior, columns posterior to anterior;
//!   channel 1 coronal (y = peak): rows superior to inferior, columns left to right;
//!   channel 2 axial (z = peak): rows anterior to posterior, columns left to right (the
//!   patient's left on the image's left: neurological convention);
//! - trilinear interpolation, zero outside the grid; values divided by the peak value and
//!   clamped to [-3, 3].

use super::prep::Grid;
use crate::PipelineError;
use medinfer_io::nifti;
use std::path::Path;

/// Pixels per slice side.
pub const SIZE: usize = 45;
/// Field of view of every slice, mm.
pub const FOV_MM: f64 = 200.0;
/// Values per sample (3 x SIZE x SIZE).
pub const SAMPLE_LEN: usize = 3 * SIZE * SIZE;

/// World (mm) to continuous voxel coordinates: the inverse of the affine's 3 x 3 part and
/// offset. `None` when the affine is singular.
fn world_to_voxel(grid: &Grid) -> Option<[[f64; 4]; 3]> {
    let a = &grid.affine;
    let m = [
        [a[0][0], a[0][1], a[0][2]],
        [a[1][0], a[1][1], a[1][2]],
        [a[2][0], a[2][1], a[2][2]],
    ];
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-12 || !det.is_finite() {
        return None;
    }
    let inv = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        // Cofactor of (c, r) over the determinant: the adjugate's (r, c) entry.
        (m[c1][r1] * m[c2][r2] - m[c1][r2] * m[c2][r1]) / det
    };
    let mut out = [[0.0; 4]; 3];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().take(3).enumerate() {
            *v = inv(r, c);
        }
        row[3] = -(0..3).map(|c| row[c] * a[c][3]).sum::<f64>();
    }
    Some(out)
}

/// The world-mm centre of the bounding box of the voxels where `mask` is true.
pub fn mask_centre(grid: &Grid, mask: &[bool]) -> [f64; 3] {
    let [nx, ny, _] = grid.dims;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for (v, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let ijk = [v % nx, (v / nx) % ny, v / (nx * ny)];
        for a in 0..3 {
            lo[a] = lo[a].min(ijk[a]);
            hi[a] = hi[a].max(ijk[a]);
        }
    }
    if lo[0] == usize::MAX {
        lo = [0; 3];
        hi = grid.dims.map(|d| d.saturating_sub(1));
    }
    let c: [f64; 3] = std::array::from_fn(|a| (lo[a] + hi[a]) as f64 / 2.0);
    std::array::from_fn(|r| {
        (0..3).map(|k| grid.affine[r][k] * c[k]).sum::<f64>() + grid.affine[r][3]
    })
}

fn trilinear(map: &[f32], dims: [usize; 3], p: [f64; 3]) -> f32 {
    let [nx, ny, nz] = dims;
    let f = p.map(f64::floor);
    let (i0, j0, k0) = (f[0] as i64, f[1] as i64, f[2] as i64);
    let (dx, dy, dz) = (p[0] - f[0], p[1] - f[1], p[2] - f[2]);
    let at = |i: i64, j: i64, k: i64| -> f64 {
        if i < 0 || j < 0 || k < 0 || i >= nx as i64 || j >= ny as i64 || k >= nz as i64 {
            0.0
        } else {
            map[i as usize + nx * (j as usize + ny * k as usize)] as f64
        }
    };
    let mut s = 0.0;
    for (di, wi) in [(0, 1.0 - dx), (1, dx)] {
        for (dj, wj) in [(0, 1.0 - dy), (1, dy)] {
            for (dk, wk) in [(0, 1.0 - dz), (1, dz)] {
                let w = wi * wj * wk;
                if w > 0.0 {
                    s += w * at(i0 + di, j0 + dj, k0 + dk);
                }
            }
        }
    }
    s as f32
}

/// The three slices of one component map (`map`: one volume on `grid`, x fastest) through
/// `peak_mm`, the in-plane field of view centred on `centre_mm` (see the module docs):
/// [`SAMPLE_LEN`] values, channel-major. `peak_value` scales the map (the value at the peak);
/// a non-positive or non-finite one leaves the map unscaled.
pub fn component_slices(
    map: &[f32],
    grid: &Grid,
    peak_mm: [f64; 3],
    centre_mm: [f64; 3],
    peak_value: f64,
) -> Vec<f32> {
    let mut out = vec![0f32; SAMPLE_LEN];
    let Some(w2v) = world_to_voxel(grid) else {
        return out;
    };
    let step = FOV_MM / SIZE as f64;
    let half = (SIZE as f64 - 1.0) / 2.0;
    let scale = if peak_value > 0.0 && peak_value.is_finite() {
        1.0 / peak_value
    } else {
        1.0
    };
    let to_voxel = |w: [f64; 3]| -> [f64; 3] {
        std::array::from_fn(|r| (0..3).map(|c| w2v[r][c] * w[c]).sum::<f64>() + w2v[r][3])
    };
    for ch in 0..3 {
        for r in 0..SIZE {
            for c in 0..SIZE {
                let down = (r as f64 - half) * step; // rows run down the image
                let across = (c as f64 - half) * step;
                let world = match ch {
                    // sagittal: x fixed; rows superior -> inferior, columns posterior -> anterior
                    0 => [peak_mm[0], centre_mm[1] + across, centre_mm[2] - down],
                    // coronal: y fixed; rows superior -> inferior, columns left -> right
                    1 => [centre_mm[0] + across, peak_mm[1], centre_mm[2] - down],
                    // axial: z fixed; rows anterior -> posterior, columns left -> right
                    _ => [centre_mm[0] + across, centre_mm[1] - down, peak_mm[2]],
                };
                let v = trilinear(map, grid.dims, to_voxel(world)) as f64 * scale;
                out[ch * SIZE * SIZE + r * SIZE + c] = v.clamp(-3.0, 3.0) as f32;
            }
        }
    }
    out
}

/// One classifier sample read back from a run's outputs.
pub struct OutputSample {
    /// `None` for a group map, else the subject's index in the report.
    pub subject: Option<usize>,
    /// Component index.
    pub component: usize,
    /// The slices ([`SAMPLE_LEN`] values).
    pub x: Vec<f32>,
}

/// The classifier's samples of a finished run, read back from its output folder (the mask,
/// group maps and every subject's maps): group components first, then each subject's, in
/// the order `run` classifies them. A run that wrote z maps is refused.
pub fn from_outputs(
    out: &Path,
    report: &super::FmriReport,
) -> Result<Vec<OutputSample>, PipelineError> {
    if report.map_statistic != super::MapStatistic::T {
        return Err(PipelineError::input(
            out.display().to_string(),
            "the subject maps hold z statistics; the classifier's samples are cut from t maps (run without --stat z)",
        ));
    }
    let mask = nifti::read(out.join("mask.nii.gz"))?;
    let grid = Grid::of(&mask);
    let m: Vec<bool> = mask.data.iter().map(|&v| v != 0.0).collect();
    let centre = mask_centre(&grid, &m);
    let nv = grid.voxels();
    let mut samples = Vec::new();
    let g = nifti::read(out.join("group_maps.nii.gz"))?;
    for c in &report.group {
        let map = g
            .data
            .get(c.index * nv..(c.index + 1) * nv)
            .ok_or_else(|| {
                PipelineError::input(
                    out.display().to_string(),
                    "group_maps.nii.gz has too few maps",
                )
            })?;
        samples.push(OutputSample {
            subject: None,
            component: c.index,
            x: component_slices(map, &grid, c.peak_mm, centre, c.peak_z),
        });
    }
    for (i, s) in report.subjects.iter().enumerate() {
        let path = out.join(&s.id).join("maps.nii.gz");
        let maps = nifti::read(&path)?;
        for c in &s.components {
            let map = maps
                .data
                .get(c.index * nv..(c.index + 1) * nv)
                .ok_or_else(|| PipelineError::input(path.display().to_string(), "too few maps"))?;
            samples.push(OutputSample {
                subject: Some(i),
                component: c.index,
                x: component_slices(map, &grid, c.peak_mm, centre, c.peak_t),
            });
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(affine: [[f64; 4]; 4]) -> Grid {
        Grid {
            dims: [20, 24, 18],
            spacing_mm: [4.0; 3],
            affine,
            tr_s: 2.0,
        }
    }

    fn blob(g: &Grid, at_mm: [f64; 3]) -> Vec<f32> {
        let [nx, ny, nz] = g.dims;
        let mut m = vec![0f32; nx * ny * nz];
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let w: [f64; 3] = std::array::from_fn(|r| {
                        g.affine[r][0] * i as f64
                            + g.affine[r][1] * j as f64
                            + g.affine[r][2] * k as f64
                            + g.affine[r][3]
                    });
                    let d2: f64 = (0..3).map(|a| (w[a] - at_mm[a]).powi(2)).sum();
                    m[i + nx * (j + ny * k)] = (5.0 * (-d2 / (2.0 * 64.0)).exp()) as f32;
                }
            }
        }
        m
    }

    #[test]
    fn slices_are_the_same_whichever_way_the_voxels_are_stored() {
        let ras = [
            [4.0, 0.0, 0.0, -40.0],
            [0.0, 4.0, 0.0, -48.0],
            [0.0, 0.0, 4.0, -36.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        // x stored right-to-left (as LAS files are): the same world, voxels mirrored.
        let las = [
            [-4.0, 0.0, 0.0, 36.0],
            [0.0, 4.0, 0.0, -48.0],
            [0.0, 0.0, 4.0, -36.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let peak = [12.0, -8.0, 4.0];
        let (ga, gb) = (grid(ras), grid(las));
        let (ma, mb) = (blob(&ga, peak), blob(&gb, peak));
        let centre = mask_centre(&ga, &vec![true; ga.voxels()]);
        let cb = mask_centre(&gb, &vec![true; gb.voxels()]);
        for a in 0..3 {
            assert!((centre[a] - cb[a]).abs() < 1e-9, "{centre:?} {cb:?}");
        }
        let sa = component_slices(&ma, &ga, peak, centre, 5.0);
        let sb = component_slices(&mb, &gb, peak, centre, 5.0);
        let diff = sa
            .iter()
            .zip(&sb)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "max difference {diff}");
        // The peak is at the right pixel in each plane, scaled to 1.
        let step = FOV_MM / SIZE as f64;
        let px = |world: f64, c: f64| ((world - c) / step + 22.0).round() as usize;
        let (row_z, col_y, col_x) = (
            (22.0 - (peak[2] - centre[2]) / step).round() as usize,
            px(peak[1], centre[1]),
            px(peak[0], centre[0]),
        );
        let sag = sa[row_z * SIZE + col_y];
        let cor = sa[SIZE * SIZE + row_z * SIZE + col_x];
        assert!(sag > 0.9 && cor > 0.9, "sagittal {sag} coronal {cor}");
        let max = sa.iter().copied().fold(f32::MIN, f32::max);
        assert!(max <= 1.0 + 1e-4, "scaled to the peak: {max}");
    }

    #[test]
    fn a_singular_affine_gives_zeros_not_a_panic() {
        let g = grid([[0.0; 4]; 4]);
        let m = vec![1f32; g.voxels()];
        let s = component_slices(&m, &g, [0.0; 3], [0.0; 3], 1.0);
        assert!(s.iter().all(|&v| v == 0.0));
    }
}
