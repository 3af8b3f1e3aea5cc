//! Reading, checking and preprocessing one subject's 4D fMRI: the grid and TR checks, the EPI
//! brain mask, spatial smoothing, linear detrending, band-pass filtering and voxel-wise
//! variance normalisation, ending in a time x voxel matrix over the mask.

use crate::PipelineError;
use faer::Mat;
use medinfer_core::Volume;
use std::path::Path;

/// Preprocessing settings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrepOptions {
    /// Band-pass in Hz (`None`: detrend only).
    pub band_hz: Option<(f64, f64)>,
    /// Spatial smoothing FWHM in mm (0: none).
    pub fwhm_mm: f64,
    /// Fewest volumes accepted.
    pub min_volumes: usize,
}

impl Default for PrepOptions {
    fn default() -> Self {
        PrepOptions {
            band_hz: Some((0.01, 0.1)),
            fwhm_mm: 6.0,
            min_volumes: 50,
        }
    }
}

/// The common grid of a cohort: every subject must match the first.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Grid {
    /// Voxels along x, y, z.
    pub dims: [usize; 3],
    /// Voxel size, mm.
    pub spacing_mm: [f64; 3],
    /// Voxel to world (RAS+ mm).
    pub affine: [[f64; 4]; 4],
    /// Repetition time, s.
    pub tr_s: f64,
}

impl Grid {
    /// Voxels in one volume.
    pub fn voxels(&self) -> usize {
        self.dims.iter().product()
    }

    /// The grid of a volume.
    pub fn of(v: &Volume) -> Grid {
        Grid {
            dims: [v.dims[0], v.dims[1], v.dims[2]],
            spacing_mm: [v.spacing[0], v.spacing[1], v.spacing[2]],
            affine: v.affine,
            tr_s: v.spacing[3] / 1000.0,
        }
    }

    /// `frames` volumes of `data` (x fastest, `frames x voxels()` values) on this grid, with
    /// its affine and spacing.
    pub fn volume(&self, frames: usize, data: Vec<f32>) -> Volume {
        let [nx, ny, nz] = self.dims;
        let [sx, sy, sz] = self.spacing_mm;
        let mut v = Volume::new([nx, ny, nz, frames], data, [sx, sy, sz, 0.0])
            .expect("callers give frames x voxels() values");
        v.affine = self.affine;
        v
    }

    /// Refuses `other` (read from `path`) unless it lies on this grid with this TR.
    pub fn check(&self, path: &Path, other: &Grid) -> Result<(), PipelineError> {
        let bad = |why: String| Err(PipelineError::input(path.display().to_string(), why));
        if other.dims != self.dims {
            return bad(format!(
                "grid {:?} differs from the first subject's {:?}; resample every subject to one grid first",
                other.dims, self.dims
            ));
        }
        let far =
            (0..3).any(|r| (0..4).any(|c| (other.affine[r][c] - self.affine[r][c]).abs() > 1e-3));
        if far {
            return bad(
                "its affine (voxel to world) differs from the first subject's: not on a common grid"
                    .into(),
            );
        }
        if (other.tr_s - self.tr_s).abs() > 1e-3 {
            return bad(format!(
                "TR {:.3} s differs from the first subject's {:.3} s",
                other.tr_s, self.tr_s
            ));
        }
        Ok(())
    }
}

/// Reads one subject's 4D NIfTI and refuses what the pipeline cannot analyse: 3D files, fewer
/// than `min_volumes` volumes, no TR, non-finite values.
pub fn load(path: &Path, min_volumes: usize) -> Result<Volume, PipelineError> {
    let vol = medinfer_io::nifti::read(path)?;
    let bad = |why: String| Err(PipelineError::input(path.display().to_string(), why));
    let t = vol.dims[3];
    if t <= 1 {
        return bad(format!(
            "a 3D volume {:?}: resting-state fMRI needs a 4D series (x, y, z, time)",
            &vol.dims[..3]
        ));
    }
    if t < min_volumes {
        return bad(format!(
            "{t} volumes: at least {min_volumes} are needed for ICA (about 5 minutes at TR 2 s is usual)"
        ));
    }
    if vol.spacing[3] <= 0.0 || !vol.spacing[3].is_finite() {
        return bad("no repetition time (pixdim[4] is 0)".into());
    }
    if let Some(at) = vol.data.iter().position(|v| !v.is_finite()) {
        let nv = vol.dims[0] * vol.dims[1] * vol.dims[2];
        return bad(format!(
            "non-finite value (NaN or infinity) at voxel {} of volume {}",
            at % nv,
            at / nv
        ));
    }
    Ok(vol)
}

/// The temporal mean of every voxel.
pub fn mean_image(vol: &Volume) -> Vec<f64> {
    let nv = vol.dims[0] * vol.dims[1] * vol.dims[2];
    let mut m = vec![0f64; nv];
    for frame in vol.data.chunks_exact(nv) {
        m.iter_mut().zip(frame).for_each(|(a, &x)| *a += x as f64);
    }
    let t = vol.dims[3] as f64;
    m.iter_mut().for_each(|a| *a /= t);
    m
}

/// A brain mask from a mean EPI image, after nilearn's `compute_epi_mask`: the threshold is
/// the middle of the largest gap between consecutive sorted intensities between the 20th and
/// 85th percentiles, then the largest 6-connected component is kept.
pub fn epi_mask(mean: &[f64], dims: [usize; 3]) -> Vec<bool> {
    let mut sorted: Vec<f64> = mean.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    let (lo, hi) = (
        (n as f64 * 0.2) as usize,
        ((n as f64 * 0.85) as usize).min(n - 1),
    );
    let mut best = (0.0, sorted[lo]);
    for i in lo..hi {
        let gap = sorted[i + 1] - sorted[i];
        if gap > best.0 {
            best = (gap, 0.5 * (sorted[i] + sorted[i + 1]));
        }
    }
    let above: Vec<bool> = mean.iter().map(|&v| v >= best.1).collect();
    largest_component(&above, dims)
}

/// The largest 6-connected component of a mask (the cardiac pipeline's component filter).
pub fn largest_component(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let mut frame: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
    crate::cardiac::keep_largest_component(&mut frame, dims, 1);
    frame.iter().map(|&v| v == 1).collect()
}

/// Separable Gaussian smoothing inside a mask (normalised convolution: values outside the
/// mask neither leak in nor dilute the edge), the kernels fixed by the voxel sigmas.
struct MaskedSmoother {
    dims: [usize; 3],
    kernels: [Vec<f64>; 3],
    mask: Vec<f64>,
    /// The smoothed mask (the normaliser), 0 outside the mask.
    inv_den: Vec<f64>,
    tmp: Vec<f64>,
}

impl MaskedSmoother {
    fn new(mask: &[bool], dims: [usize; 3], sigma_vox: [f64; 3]) -> MaskedSmoother {
        let kernels = sigma_vox.map(|s| {
            if s <= 0.0 {
                return vec![1.0];
            }
            let r = (3.0 * s).ceil() as isize;
            (-r..=r)
                .map(|d| (-0.5 * (d as f64 / s).powi(2)).exp())
                .collect()
        });
        let mf: Vec<f64> = mask.iter().map(|&m| m as u8 as f64).collect();
        let mut s = MaskedSmoother {
            dims,
            kernels,
            mask: mf.clone(),
            inv_den: vec![0.0; mask.len()],
            tmp: vec![0.0; mask.len()],
        };
        let mut den = mf;
        s.convolve(&mut den);
        s.inv_den = den
            .iter()
            .zip(mask)
            .map(|(&d, &m)| if m && d > 1e-12 { 1.0 / d } else { 0.0 })
            .collect();
        s
    }

    /// Smooths `frame` in place (0 outside the mask afterwards).
    fn smooth(&mut self, frame: &mut [f64]) {
        frame.iter_mut().zip(&self.mask).for_each(|(a, m)| *a *= m);
        self.convolve(frame);
        frame
            .iter_mut()
            .zip(&self.inv_den)
            .for_each(|(a, d)| *a *= d);
    }

    /// Convolves `buf` along x, y and z with zero padding: every tap is an axpy over the
    /// contiguous runs that the shift keeps inside the grid.
    fn convolve(&mut self, buf: &mut [f64]) {
        let [nx, ny, nz] = self.dims;
        for axis in 0..3 {
            let k = &self.kernels[axis];
            if k.len() == 1 {
                continue;
            }
            let r = (k.len() / 2) as isize;
            let tmp = &mut self.tmp;
            tmp.iter_mut().for_each(|x| *x = 0.0);
            // (outer count, axis length, stride along the axis, run length, outer stride)
            let (outer, n, stride, run, ostride) = match axis {
                0 => (ny * nz, nx, 1, 1, nx),
                1 => (nz, ny, nx, nx, nx * ny),
                _ => (1, nz, nx * ny, nx * ny, 0),
            };
            for o in 0..outer {
                let base = o * ostride;
                for (ki, &w) in k.iter().enumerate() {
                    let d = ki as isize - r;
                    let lo = (-d).max(0) as usize;
                    let hi = (n as isize - d.max(0)) as usize;
                    if lo >= hi {
                        continue;
                    }
                    if axis == 0 {
                        let dst = &mut tmp[base + lo..base + hi];
                        let src = &buf[(base as isize + lo as isize + d) as usize..][..hi - lo];
                        dst.iter_mut().zip(src).for_each(|(a, b)| *a += w * b);
                    } else {
                        for p in lo..hi {
                            let at = base + p * stride;
                            let from = (at as isize + d * stride as isize) as usize;
                            let (dst, src) = (&mut tmp[at..at + run], &buf[from..from + run]);
                            dst.iter_mut().zip(src).for_each(|(a, b)| *a += w * b);
                        }
                    }
                }
            }
            buf.copy_from_slice(tmp);
        }
    }
}

/// An orthonormal basis (t x k, column-major) of the real Fourier components of a `t`-point
/// series whose frequency lies in `band` Hz: projecting onto it is a zero-phase ideal
/// band-pass of the (periodically extended) series; the constant is never in it.
pub fn band_basis(t: usize, tr_s: f64, band: (f64, f64)) -> Mat<f64> {
    let span = t as f64 * tr_s;
    let mut cols: Vec<Vec<f64>> = Vec::new();
    for f in 1..=t / 2 {
        let hz = f as f64 / span;
        if hz < band.0 || hz > band.1 {
            continue;
        }
        let w = 2.0 * std::f64::consts::PI * f as f64 / t as f64;
        let nyquist = 2 * f == t;
        let c: Vec<f64> = (0..t).map(|n| (w * n as f64).cos()).collect();
        cols.push(c);
        if !nyquist {
            cols.push((0..t).map(|n| (w * n as f64).sin()).collect());
        }
    }
    for c in &mut cols {
        let norm = c.iter().map(|x| x * x).sum::<f64>().sqrt();
        c.iter_mut().for_each(|x| *x /= norm);
    }
    Mat::from_fn(t, cols.len(), |i, j| cols[j][i])
}

/// One subject's preprocessed data over the mask: a T x V matrix (time x mask voxel, voxels
/// in the order of `mask_idx`), smoothed, detrended, band-passed and variance-normalised as
/// `opts` says, and the subject's own dimension ([`estimate_dimension`], capped at `cap`),
/// measured before the variance normalisation, which removes that many components (the
/// Laplace estimate) to find each voxel's noise level.
pub fn preprocess(
    vol: &Volume,
    mask: &[bool],
    mask_idx: &[usize],
    opts: &PrepOptions,
    cap: usize,
) -> (Mat<f64>, SubjectDimension) {
    let dims = [vol.dims[0], vol.dims[1], vol.dims[2]];
    let nv = dims.iter().product::<usize>();
    let t = vol.dims[3];
    let nm = mask_idx.len();
    // Masked frames, time-major (t x V, voxels contiguous), then one blocked transpose into
    // faer's column-major T x V.
    let mut frames = vec![0f64; t * nm];
    if opts.fwhm_mm > 0.0 {
        let fwhm_to_sigma = 1.0 / (2.0 * (2.0 * 2f64.ln()).sqrt());
        let sig: [f64; 3] =
            std::array::from_fn(|a| opts.fwhm_mm * fwhm_to_sigma / vol.spacing[a].max(1e-6));
        let mut sm = MaskedSmoother::new(mask, dims, sig);
        let mut frame = vec![0f64; nv];
        for n in 0..t {
            frame
                .iter_mut()
                .zip(&vol.data[n * nv..(n + 1) * nv])
                .for_each(|(a, &b)| *a = b as f64);
            sm.smooth(&mut frame);
            let out = &mut frames[n * nm..(n + 1) * nm];
            out.iter_mut()
                .zip(mask_idx)
                .for_each(|(o, &v)| *o = frame[v]);
        }
    } else {
        for n in 0..t {
            let frame = &vol.data[n * nv..(n + 1) * nv];
            let out = &mut frames[n * nm..(n + 1) * nm];
            out.iter_mut()
                .zip(mask_idx)
                .for_each(|(o, &v)| *o = frame[v] as f64);
        }
    }
    let mut x = Mat::<f64>::zeros(t, nm);
    const BLOCK: usize = 64;
    for c0 in (0..nm).step_by(BLOCK) {
        let c1 = (c0 + BLOCK).min(nm);
        for c in c0..c1 {
            let col = x.col_as_slice_mut(c);
            for (n, xv) in col.iter_mut().enumerate() {
                *xv = frames[n * nm + c];
            }
        }
    }
    drop(frames);
    // Linear detrend per voxel (least squares on a centred time axis).
    let tc: Vec<f64> = (0..t).map(|n| n as f64 - (t as f64 - 1.0) / 2.0).collect();
    let tss: f64 = tc.iter().map(|v| v * v).sum();
    for c in 0..x.ncols() {
        let col = x.col_as_slice_mut(c);
        let mean = col.iter().sum::<f64>() / t as f64;
        let slope = col.iter().zip(&tc).map(|(y, u)| y * u).sum::<f64>() / tss;
        col.iter_mut()
            .zip(&tc)
            .for_each(|(y, u)| *y -= mean + slope * u);
    }
    if let Some(band) = opts.band_hz {
        let tr_s = vol.spacing[3] / 1000.0;
        let b = band_basis(t, tr_s, band);
        let coef = b.transpose() * &x;
        x = &b * &coef;
    }
    let mut unit = x.clone();
    scale_columns(&mut unit, |_, col| {
        (col.iter().map(|v| v * v).sum::<f64>() / col.len() as f64).sqrt()
    });
    let dim = estimate_dimension(&unit, mask, mask_idx, dims, cap);
    drop(unit);
    variance_normalise(&mut x, dim.laplace);
    (x, dim)
}

/// Divides every column by `sd(column index, column)` (columns with no spread become 0).
fn scale_columns(x: &mut Mat<f64>, mut sd: impl FnMut(usize, &[f64]) -> f64) {
    for c in 0..x.ncols() {
        let col = x.col_as_slice_mut(c);
        let s = sd(c, col);
        let k = if s > 1e-12 { 1.0 / s } else { 0.0 };
        col.iter_mut().for_each(|v| *v *= k);
    }
}

/// MELODIC's voxel-wise variance normalisation (Beckmann & Smith 2004): every voxel is divided
/// by the standard deviation of its residual after the data's `k` leading principal components
/// (its signal subspace) are removed, so that noise has unit variance everywhere while signal
/// stays proportional to its strength. (Dividing by the total standard deviation instead
/// would flatten every network's peak, where signal dominates the variance.)
pub fn variance_normalise(x: &mut Mat<f64>, k: usize) {
    let t = x.nrows();
    let k = k.min(t / 2);
    let mut scale = vec![0f64; x.ncols()];
    if k > 0 {
        let g = &*x * x.transpose();
        if let Ok((_, u)) = super::ica::eigh_desc(g.as_ref()) {
            let uk = u.as_ref().subcols(0, k);
            let resid = &*x - uk * (uk.transpose() * &*x);
            for (c, s) in scale.iter_mut().enumerate() {
                let col = resid.col_as_slice(c);
                *s = (col.iter().map(|v| v * v).sum::<f64>() / (t - k) as f64).sqrt();
            }
        }
    }
    scale_columns(x, |c, col| {
        if scale[c] > 0.0 {
            scale[c]
        } else {
            (col.iter().map(|v| v * v).sum::<f64>() / t as f64).sqrt()
        }
    });
}

/// The dimension of one subject's preprocessed data (T x V over the mask): Minka's Laplace and BIC
/// evidence on the eigenvalues of its temporal covariance, counting as samples the voxels
/// divided by the resel volume (the product of the noise FWHM in voxels along x, y and z,
/// measured from the lag-1 correlation of neighbouring voxels' residuals, as FSL's `smoothest`
/// does for Gaussian noise), and as features only the dimensions the band-pass left.
pub fn estimate_dimension(
    x: &Mat<f64>,
    mask: &[bool],
    mask_idx: &[usize],
    dims: [usize; 3],
    cap: usize,
) -> SubjectDimension {
    let v = x.ncols();
    let g = (x * x.transpose()) * faer::Scale(1.0 / v as f64);
    let Ok((vals, u)) = super::ica::eigh_desc(g.as_ref()) else {
        return SubjectDimension { laplace: 1, bic: 1 };
    };
    let rank = vals.iter().take_while(|&&l| l > vals[0] * 1e-8).count();
    // Residual after the leading components (a quarter of the rank), for the smoothness.
    let k = (rank / 4).max(1);
    let uk = u.as_ref().subcols(0, k);
    let resid = x - uk * (uk.transpose() * x);
    let mut pos = vec![usize::MAX; mask.len()];
    for (c, &vi) in mask_idx.iter().enumerate() {
        pos[vi] = c;
    }
    let strides = [1, dims[0], dims[0] * dims[1]];
    let mut fwhm = [1f64; 3];
    for a in 0..3 {
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (c, &vi) in mask_idx.iter().enumerate() {
            let along = (vi / strides[a]) % dims[a];
            if along + 1 >= dims[a] {
                continue;
            }
            let d = pos[vi + strides[a]];
            if d == usize::MAX {
                continue;
            }
            let (ra, rb) = (resid.col_as_slice(c), resid.col_as_slice(d));
            for (p, q) in ra.iter().zip(rb) {
                sab += p * q;
                saa += p * p;
                sbb += q * q;
            }
        }
        let rho = if saa > 0.0 && sbb > 0.0 {
            sab / (saa * sbb).sqrt()
        } else {
            0.0
        };
        if rho > 0.0 && rho < 1.0 {
            let sigma = (-1.0 / (4.0 * rho.ln())).sqrt();
            fwhm[a] = (sigma * 2.0 * (2.0 * 2f64.ln()).sqrt()).max(1.0);
        }
    }
    let resel: f64 = fwhm.iter().product();
    let samples = (v as f64 / resel).max(2.0);
    let max_rank = cap.min(rank.saturating_sub(2)).max(1);
    SubjectDimension {
        laplace: super::ica::laplace_dimension(&vals[..rank], samples, max_rank),
        bic: super::ica::bic_dimension(&vals[..rank], samples, max_rank),
    }
}

/// One subject's own dimension estimates ([`estimate_dimension`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubjectDimension {
    /// Minka's Laplace evidence (what the variance normalisation uses).
    pub laplace: usize,
    /// Minka's BIC.
    pub bic: usize,
}
