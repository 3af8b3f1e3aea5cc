//! Group ICA: MIGP (MELODIC's incremental group PCA), the group PCA and its dimension, and
//! symmetric FastICA with the log-cosh contrast.
//!
//! The linear algebra (products, symmetric eigendecompositions) is faer's; FastICA itself is
//! written here because no maintained Rust crate offers it (linfa-ica exists but depends on
//! ndarray-linalg's LAPACK bindings, which would bring a Fortran toolchain into the build, and
//! is not maintained for current ndarray), and it is twenty lines on top of faer.

use faer::{Mat, MatRef, Side};
use medinfer_core::SeededRng;

/// Errors of the decompositions (numerically degenerate data).
#[derive(Debug, thiserror::Error)]
pub enum IcaError {
    /// An eigendecomposition did not converge.
    #[error("eigendecomposition failed: {0}")]
    Eigen(String),
    /// The data has fewer independent dimensions than asked for.
    #[error("the data has rank {rank} over the mask; {asked} components cannot be estimated")]
    Rank {
        /// The numerical rank found.
        rank: usize,
        /// Components asked for.
        asked: usize,
    },
}

/// Eigenpairs of a symmetric matrix, largest first: (values, vectors as columns).
pub fn eigh_desc(a: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>), IcaError> {
    let e = a
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| IcaError::Eigen(format!("{e:?}")))?;
    let n = a.nrows();
    let s = e.S();
    let u = e.U();
    let vals: Vec<f64> = (0..n).rev().map(|i| s[i]).collect();
    let vecs = Mat::from_fn(n, n, |i, j| u[(i, n - 1 - j)]);
    Ok((vals, vecs))
}

/// MIGP: the data of every subject (time x voxel) is appended in turn to a running matrix
/// that is cut back to its `dim` strongest eigen-time-series whenever it grows past them, so
/// memory holds at `(dim + T) x V` whatever the cohort size (Smith et al. 2014).
pub struct Migp {
    dim: usize,
    w: Option<Mat<f64>>,
    rows_seen: usize,
}

impl Migp {
    /// A MIGP keeping `dim` internal components.
    pub fn new(dim: usize) -> Migp {
        Migp {
            dim,
            w: None,
            rows_seen: 0,
        }
    }

    /// Appends one subject's T x V data.
    pub fn push(&mut self, x: MatRef<'_, f64>) -> Result<(), IcaError> {
        self.rows_seen += x.nrows();
        let w = match self.w.take() {
            None => x.to_owned(),
            Some(w) => {
                let mut s = Mat::<f64>::zeros(w.nrows() + x.nrows(), w.ncols());
                s.as_mut().subrows_mut(0, w.nrows()).copy_from(&w);
                s.as_mut().subrows_mut(w.nrows(), x.nrows()).copy_from(x);
                s
            }
        };
        self.w = Some(if w.nrows() > self.dim {
            reduce_rows(&w, self.dim)?
        } else {
            w
        });
        Ok(())
    }

    /// The reduced group matrix (at most `dim` x V), rows the strongest eigen-time-series
    /// scaled by their singular values.
    pub fn finish(self) -> Option<Mat<f64>> {
        self.w
    }

    /// Rows of data pushed so far.
    pub fn rows_seen(&self) -> usize {
        self.rows_seen
    }
}

/// `U_kᵀ W` for the `k` leading eigenvectors `U_k` of `W Wᵀ`: W's best rank-k row space with
/// its energy kept.
fn reduce_rows(w: &Mat<f64>, k: usize) -> Result<Mat<f64>, IcaError> {
    let g = w * w.transpose();
    let (_, u) = eigh_desc(g.as_ref())?;
    let uk = u.as_ref().subcols(0, k);
    Ok(uk.transpose() * w)
}

/// Subtracts every row's mean from it.
pub fn centre_rows(m: &mut Mat<f64>) {
    let v = m.ncols() as f64;
    for r in 0..m.nrows() {
        let mean = (0..m.ncols()).map(|c| m[(r, c)]).sum::<f64>() / v;
        for c in 0..m.ncols() {
            m[(r, c)] -= mean;
        }
    }
}

/// The group PCA of the MIGP matrix `w`: its `n` leading spatial eigenmaps, whitened (each
/// row zero-mean with unit variance over voxels, rows uncorrelated), n x V.
pub fn group_pca(w: &Mat<f64>, n: usize) -> Result<Mat<f64>, IcaError> {
    let v = w.ncols() as f64;
    let mut wc = w.clone();
    centre_rows(&mut wc);
    let cov = (&wc * wc.transpose()) * faer::Scale(1.0 / v);
    let (vals, u) = eigh_desc(cov.as_ref())?;
    let rank = vals
        .iter()
        .take_while(|&&l| l > vals[0].max(0.0) * 1e-10)
        .count();
    if n > rank || n == 0 {
        return Err(IcaError::Rank { rank, asked: n });
    }
    let un = u.as_ref().subcols(0, n);
    let mut z = un.transpose() * &wc;
    for (r, lam) in vals.iter().take(n).enumerate() {
        let k = 1.0 / lam.sqrt();
        for c in 0..z.ncols() {
            z[(r, c)] *= k;
        }
    }
    Ok(z)
}

/// Minka's Laplace approximation of the PCA model evidence for each rank 1..=max_rank, given
/// the covariance eigenvalues (largest first) and the number of samples: the rank with the
/// highest evidence is the estimated dimension (as MELODIC's `--dim` estimation and
/// scikit-learn's `n_components='mle'`).
pub fn laplace_dimension(spectrum: &[f64], n_samples: f64, max_rank: usize) -> usize {
    best_rank(spectrum, n_samples, max_rank, Evidence::Laplace)
}

/// Minka's BIC approximation of the same evidence (MELODIC's `--dimest=bic`): the Laplace
/// evidence without its prior and Hessian terms, which penalises rank harder.
pub fn bic_dimension(spectrum: &[f64], n_samples: f64, max_rank: usize) -> usize {
    best_rank(spectrum, n_samples, max_rank, Evidence::Bic)
}

#[derive(Clone, Copy, PartialEq)]
enum Evidence {
    Laplace,
    Bic,
}

fn best_rank(spectrum: &[f64], n_samples: f64, max_rank: usize, how: Evidence) -> usize {
    let d = spectrum.len();
    let mut best = (f64::NEG_INFINITY, 1);
    let (ln2, pi) = (std::f64::consts::LN_2, std::f64::consts::PI);
    for rank in 1..max_rank.min(d - 1) + 1 {
        let pl = -spectrum[..rank].iter().map(|l| l.ln()).sum::<f64>() * n_samples / 2.0;
        let v = (spectrum[rank..].iter().sum::<f64>() / (d - rank) as f64).max(1e-300);
        let pv = -v.ln() * n_samples * (d - rank) as f64 / 2.0;
        let m = (d * rank) as f64 - (rank * (rank + 1)) as f64 / 2.0;
        let ll = match how {
            Evidence::Bic => pl + pv - (m + rank as f64) * n_samples.ln() / 2.0,
            Evidence::Laplace => {
                let pu = -(rank as f64) * ln2
                    + (0..rank)
                        .map(|i| {
                            super::stats::ln_gamma((d - i) as f64 / 2.0)
                                - pi.ln() * (d - i) as f64 / 2.0
                        })
                        .sum::<f64>();
                let pp = (2.0 * pi).ln() * (m + rank as f64) / 2.0;
                let mut pa = 0.0;
                for i in 0..rank {
                    for j in i + 1..d {
                        let sj = if j >= rank { v } else { spectrum[j] };
                        pa += ((spectrum[i] - spectrum[j]) * (1.0 / sj - 1.0 / spectrum[i]))
                            .abs()
                            .max(1e-300)
                            .ln()
                            + n_samples.ln();
                    }
                }
                pu + pl + pv + pp - pa / 2.0 - rank as f64 * n_samples.ln() / 2.0
            }
        };
        if ll > best.0 {
            best = (ll, rank);
        }
    }
    best.1
}

/// The fewest leading eigenvalues (descending) whose sum reaches `fraction` of the sum of
/// the first `cap` (at least 1, at most `cap`).
pub fn variance_dimension(eigenvalues: &[f64], fraction: f64, cap: usize) -> usize {
    let l: Vec<f64> = eigenvalues.iter().take(cap).map(|x| x.max(0.0)).collect();
    let total: f64 = l.iter().sum();
    let mut acc = 0.0;
    for (k, x) in l.iter().enumerate() {
        acc += x;
        if acc >= fraction * total {
            return k + 1;
        }
    }
    l.len().max(1)
}

/// The number of components as the split of the first `cap` eigenvalues (descending) that
/// best fits two groups of log-eigenvalues, each with its own mean and a common variance: the
/// profile likelihood of Zhu & Ghodsi (2006), on the log scale so that the strongest
/// component does not stand alone. Where the signal ends in a gap (the phantom: 69.7 -> 16.9
/// at 13 sources) this finds it; Minka's Laplace evidence, whose noise model is a flat tail,
/// over-counts on a MIGP spectrum whose noise tail decays (16-17 for 13).
pub fn profile_dimension(eigenvalues: &[f64], cap: usize) -> usize {
    let l: Vec<f64> = eigenvalues
        .iter()
        .take(cap)
        .take_while(|&&x| x > 0.0 && x.is_finite())
        .map(|x| x.ln())
        .collect();
    let n = l.len();
    if n < 3 {
        return n.max(1);
    }
    let mut best = (f64::NEG_INFINITY, 1);
    for q in 1..n {
        let (a, b) = l.split_at(q);
        let ss = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            v.iter().map(|x| (x - m).powi(2)).sum::<f64>()
        };
        let var = (ss(a) + ss(b)) / n as f64;
        let ll = -(n as f64) / 2.0 * var.max(1e-300).ln();
        if ll > best.0 {
            best = (ll, q);
        }
    }
    best.1
}

/// FastICA settings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FastIcaOptions {
    /// Stop when no unmixing vector turns by more than this (1 - |cos|).
    pub tol: f64,
    /// Iteration cap.
    pub max_iter: usize,
    /// Seed of the random initial unmixing matrix (restart `r` uses `seed + r`).
    pub seed: u64,
    /// Runs from different random starts; the one with the largest total negentropy wins
    /// (FastICA finds local optima: two networks merged into one map is the typical one).
    pub restarts: usize,
}

impl Default for FastIcaOptions {
    fn default() -> Self {
        FastIcaOptions {
            tol: 1e-6,
            max_iter: 500,
            seed: 0,
            restarts: 5,
        }
    }
}

/// What FastICA found.
pub struct FastIcaResult {
    /// The sources, n x V (rows unit variance).
    pub sources: Mat<f64>,
    /// Iterations run.
    pub iterations: usize,
    /// Whether it met the tolerance before the cap.
    pub converged: bool,
    /// Total negentropy of the sources (sum over sources of (E[log cosh y] - E[log cosh ν])²,
    /// ν standard normal): the contrast the restarts are ranked by.
    pub negentropy: f64,
    /// The restart that won.
    pub restart: usize,
}

/// E[log cosh ν] for a standard normal ν.
const LOGCOSH_GAUSS: f64 = 0.374_567_207_491_823_9;

fn negentropy(s: &Mat<f64>) -> f64 {
    let v = s.ncols() as f64;
    (0..s.nrows())
        .map(|r| {
            let e = (0..s.ncols())
                .map(|c| {
                    let y = s[(r, c)].abs();
                    // log cosh y = y + log(1 + e^-2y) - log 2, stable for large y.
                    y + (-2.0 * y).exp().ln_1p() - std::f64::consts::LN_2
                })
                .sum::<f64>()
                / v;
            (e - LOGCOSH_GAUSS).powi(2)
        })
        .sum()
}

/// FastICA from `opts.restarts` random starts, keeping the run with the largest total
/// negentropy.
pub fn fastica_restarts(z: &Mat<f64>, opts: &FastIcaOptions) -> Result<FastIcaResult, IcaError> {
    let mut best: Option<FastIcaResult> = None;
    for r in 0..opts.restarts.max(1) {
        let o = FastIcaOptions {
            seed: opts.seed.wrapping_add(r as u64),
            ..opts.clone()
        };
        let mut fit = fastica(z, &o)?;
        fit.restart = r;
        if best.as_ref().is_none_or(|b| fit.negentropy > b.negentropy) {
            best = Some(fit);
        }
    }
    Ok(best.expect("at least one run"))
}

/// `(W Wᵀ)^(-1/2) W`: the symmetric decorrelation of FastICA's parallel update.
fn sym_decorrelate(w: &Mat<f64>) -> Result<Mat<f64>, IcaError> {
    let (vals, u) = eigh_desc((w * w.transpose()).as_ref())?;
    let n = vals.len();
    let d = Mat::from_fn(n, n, |i, j| {
        if i == j {
            1.0 / vals[i].max(1e-300).sqrt()
        } else {
            0.0
        }
    });
    Ok(&u * &d * u.transpose() * w)
}

/// Symmetric (parallel) FastICA with the log-cosh contrast (G(u) = log cosh u, g = tanh) on
/// whitened data `z` (n x V: the V columns are the samples; for spatial ICA, the voxels).
pub fn fastica(z: &Mat<f64>, opts: &FastIcaOptions) -> Result<FastIcaResult, IcaError> {
    let n = z.nrows();
    let v = z.ncols() as f64;
    let mut rng = SeededRng::new(opts.seed);
    let mut w = sym_decorrelate(&Mat::from_fn(n, n, |_, _| rng.normal()))?;
    let mut iterations = 0;
    let mut converged = false;
    while iterations < opts.max_iter {
        iterations += 1;
        let mut g = &w * z;
        let mut gp = vec![0f64; n];
        for c in 0..g.ncols() {
            for (r, acc) in gp.iter_mut().enumerate() {
                let t = g[(r, c)].tanh();
                g[(r, c)] = t;
                *acc += 1.0 - t * t;
            }
        }
        let mut w1 = (&g * z.transpose()) * faer::Scale(1.0 / v);
        for (r, gr) in gp.iter().enumerate() {
            for c in 0..n {
                w1[(r, c)] -= gr / v * w[(r, c)];
            }
        }
        let w1 = sym_decorrelate(&w1)?;
        let lim = (0..n)
            .map(|r| {
                let d: f64 = (0..n).map(|c| w1[(r, c)] * w[(r, c)]).sum();
                (d.abs() - 1.0).abs()
            })
            .fold(0.0, f64::max);
        w = w1;
        if lim < opts.tol {
            converged = true;
            break;
        }
    }
    let sources = &w * z;
    Ok(FastIcaResult {
        negentropy: negentropy(&sources),
        sources,
        iterations,
        converged,
        restart: 0,
    })
}

/// Puts the maps in MELODIC's convention: each row flipped so its larger tail (by skewness)
/// is positive, then z-scored over the voxels.
pub fn orient_and_zscore(s: &mut Mat<f64>) {
    let v = s.ncols() as f64;
    for r in 0..s.nrows() {
        let m = (0..s.ncols()).map(|c| s[(r, c)]).sum::<f64>() / v;
        let sd = ((0..s.ncols()).map(|c| (s[(r, c)] - m).powi(2)).sum::<f64>() / v).sqrt();
        let skew: f64 = (0..s.ncols()).map(|c| (s[(r, c)] - m).powi(3)).sum();
        let sign = if skew < 0.0 { -1.0 } else { 1.0 };
        let k = if sd > 0.0 { sign / sd } else { 0.0 };
        for c in 0..s.ncols() {
            s[(r, c)] = (s[(r, c)] - m) * k;
        }
    }
}

/// The share of the group data's variance each map explains: the least-squares fit of the
/// MIGP matrix `w` (rows x V) on the maps `s` (n x V), column norms of the mixing matrix
/// times the maps' norms, normalised to sum to 1.
pub fn explained_variance(w: &Mat<f64>, s: &Mat<f64>) -> Result<Vec<f64>, IcaError> {
    let sst = s * s.transpose();
    let inv = sym_inverse(&sst)?;
    let a = w * s.transpose() * &inv;
    let e: Vec<f64> = (0..s.nrows())
        .map(|k| {
            let an: f64 = (0..a.nrows()).map(|r| a[(r, k)].powi(2)).sum();
            an * sst[(k, k)]
        })
        .collect();
    let tot: f64 = e.iter().sum();
    Ok(e.iter().map(|x| x / tot.max(1e-300)).collect())
}

/// The inverse of a symmetric positive definite matrix through its eigenpairs; refuses a
/// (numerically) singular one.
pub fn sym_inverse(a: &Mat<f64>) -> Result<Mat<f64>, IcaError> {
    let (vals, u) = eigh_desc(a.as_ref())?;
    let n = vals.len();
    let rank = vals.iter().filter(|&&l| l > vals[0] * 1e-12).count();
    if rank < n {
        return Err(IcaError::Rank { rank, asked: n });
    }
    let d = Mat::from_fn(n, n, |i, j| if i == j { 1.0 / vals[i] } else { 0.0 });
    Ok(&u * &d * u.transpose())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spectrum with a gap after `k` signal values and a slowly decaying noise tail (as MIGP
    /// leaves it): the profile estimate finds `k`; a smooth spectrum gives a split, not a panic.
    #[test]
    fn evidence_estimates_find_a_planted_rank() {
        // Five strong directions over a flat noise floor of 20 dimensions, 4000 samples.
        let mut spec = vec![40.0, 25.0, 12.0, 6.0, 3.0];
        spec.extend((0..15).map(|i| 1.0 - 0.01 * i as f64));
        assert_eq!(laplace_dimension(&spec, 4000.0, 15), 5);
        assert_eq!(bic_dimension(&spec, 4000.0, 15), 5);
        // With few samples BIC's heavier penalty drops the weakest direction first.
        assert!(bic_dimension(&spec, 12.0, 15) <= laplace_dimension(&spec, 12.0, 15));
        assert_eq!(variance_dimension(&[5.0, 3.0, 1.0, 1.0], 0.8, 4), 2);
        assert_eq!(variance_dimension(&[5.0, 3.0, 1.0, 1.0], 0.81, 4), 3);
        assert_eq!(variance_dimension(&[5.0, 3.0, 1.0, 1.0], 1.0, 3), 3);
    }

    #[test]
    fn profile_dimension_finds_the_gap() {
        for k in [3usize, 13, 25] {
            let spec: Vec<f64> = (0..60)
                .map(|i| {
                    if i < k {
                        300.0 - 8.0 * i as f64
                    } else {
                        17.0 * 0.97f64.powi((i - k) as i32)
                    }
                })
                .collect();
            assert_eq!(profile_dimension(&spec, 40), k);
        }
        let smooth: Vec<f64> = (0..40).map(|i| 100.0 * 0.9f64.powi(i)).collect();
        let d = profile_dimension(&smooth, 40);
        assert!((1..40).contains(&d));
        assert_eq!(profile_dimension(&[5.0, 1.0], 40), 2);
        assert_eq!(profile_dimension(&[], 40), 1);
    }
}
