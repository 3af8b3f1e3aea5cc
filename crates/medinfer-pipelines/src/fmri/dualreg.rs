//! Dual regression, as FSL's `dual_regression` runs it (Nickerson et al. 2017).
//!
//! - **Stage 1** (`fsl_glm -d group_maps --demean`): the group maps, each centred over the
//!   mask, are regressed against every volume, centred over the mask too: one time course per
//!   map.
//! - **Stage 2** (`fsl_glm -d timecourses --demean --des_norm --out_t`): the time courses,
//!   centred and scaled to unit variance, are regressed against every voxel's (centred) time
//!   series: one map of t statistics per component, with `T - n` degrees of freedom
//!   (`--out_z`: [`super::stats::t_to_z`] of them).

use super::ica::{centre_rows, sym_inverse, IcaError};
use faer::{Mat, MatRef};

/// One subject's dual regression.
pub struct DualRegression {
    /// Degrees of freedom of the t statistics (T - n, at least 1).
    pub dof: f64,
    /// Stage 1 time courses, T x n.
    pub timecourses: Mat<f64>,
    /// Stage 2 parameter estimates, n x V.
    pub betas: Mat<f64>,
    /// Stage 2 t statistics, n x V.
    pub tstats: Mat<f64>,
}

/// Runs both stages: `x` is the subject's preprocessed T x V data, `maps` the n x V group maps.
pub fn dual_regression(
    x: MatRef<'_, f64>,
    maps: MatRef<'_, f64>,
) -> Result<DualRegression, IcaError> {
    let (t, n) = (x.nrows(), maps.nrows());
    // Stage 1: spatial regression.
    let mut g = maps.to_owned();
    centre_rows(&mut g);
    let mut xs = x.to_owned();
    centre_rows(&mut xs);
    let ggt = &g * g.transpose();
    let timecourses = &xs * g.transpose() * sym_inverse(&ggt)?;
    // Stage 2: temporal regression on the normalised time courses.
    let mut d = timecourses.clone();
    for c in 0..n {
        let col = d.col_as_slice_mut(c);
        let m = col.iter().sum::<f64>() / t as f64;
        let sd = (col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (t as f64 - 1.0)).sqrt();
        let k = if sd > 0.0 { 1.0 / sd } else { 0.0 };
        col.iter_mut().for_each(|v| *v = (*v - m) * k);
    }
    let mut xt = x.to_owned();
    for c in 0..xt.ncols() {
        let col = xt.col_as_slice_mut(c);
        let m = col.iter().sum::<f64>() / t as f64;
        col.iter_mut().for_each(|v| *v -= m);
    }
    let inv = sym_inverse(&(d.transpose() * &d))?;
    let betas = &inv * d.transpose() * &xt;
    let resid = &xt - &d * &betas;
    let dof = (t as f64 - n as f64).max(1.0);
    let mut tstats = Mat::<f64>::zeros(n, xt.ncols());
    for c in 0..xt.ncols() {
        let rss: f64 = resid.col_as_slice(c).iter().map(|v| v * v).sum();
        let s2 = rss / dof;
        for k in 0..n {
            let se = (s2 * inv[(k, k)]).sqrt();
            tstats[(k, c)] = if se > 0.0 { betas[(k, c)] / se } else { 0.0 };
        }
    }
    Ok(DualRegression {
        dof,
        timecourses,
        betas,
        tstats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use medinfer_core::SeededRng;

    /// Data made exactly as time courses x maps: stage 1 returns the time courses (up to the
    /// spatial centring, which the maps' zero mean makes exact) and stage 2 the maps' shapes.
    #[test]
    fn noiseless_data_gives_back_its_time_courses_and_maps() {
        let (t, n, v) = (60, 3, 500);
        let mut rng = SeededRng::new(3);
        let mut maps = Mat::from_fn(n, v, |_, _| rng.normal());
        centre_rows(&mut maps);
        let tc = Mat::from_fn(t, n, |_, _| rng.normal());
        let mut x = &tc * &maps;
        // a little noise so the t statistics are finite
        for c in 0..v {
            for r in 0..t {
                x[(r, c)] += 1e-3 * rng.normal();
            }
        }
        let dr = dual_regression(x.as_ref(), maps.as_ref()).unwrap();
        for r in 0..t {
            for k in 0..n {
                assert!((dr.timecourses[(r, k)] - tc[(r, k)]).abs() < 1e-3);
            }
        }
        // Stage 2 maps correlate perfectly with the true maps; t grows with the fit.
        for k in 0..n {
            let a: Vec<f64> = (0..v).map(|c| dr.betas[(k, c)]).collect();
            let b: Vec<f64> = (0..v).map(|c| maps[(k, c)]).collect();
            assert!(crate::fmri::correlation(&a, &b) > 0.9999);
            assert!(dr.tstats[(k, 0)].abs() > 10.0 || maps[(k, 0)].abs() < 0.01);
        }
    }
}
