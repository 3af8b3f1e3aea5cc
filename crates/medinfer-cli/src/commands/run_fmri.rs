//! `medinfer run fmri`: resting-state group ICA and dual regression over a cohort of 4D NIfTI
//! files.

use crate::args::{bar, print_json};
use anyhow::{bail, Result};
use clap::Args;
use indicatif::ProgressBar;
use medinfer_pipelines::fmri::{self, FmriRequest, Stage};
use std::path::PathBuf;

#[derive(Args)]
pub struct RunFmriArgs {
    /// One 4D NIfTI per subject (.nii / .nii.gz), all on one grid with one TR.
    #[arg(required = true)]
    pub subjects: Vec<PathBuf>,
    /// Output folder (created): report.json, mask.nii.gz, group_maps.nii.gz (z maps),
    /// <subject>/maps.nii.gz (dual-regression t maps) and <subject>/timecourses.tsv.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Brain mask on the same grid (non-zero = brain). Default: computed from the cohort's mean
    /// image (the threshold at the largest intensity gap, then the largest connected component).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Number of group components. Default: the median of the subjects' own dimensions
    /// (Minka's Laplace estimate, smoothness-corrected), capped by --max-components.
    #[arg(long)]
    pub components: Option<usize>,
    /// Cap on the estimated number of components.
    #[arg(long, default_value_t = 40)]
    pub max_components: usize,
    /// Band-pass LOW,HIGH in Hz, or "off" (linear detrending only).
    #[arg(long, default_value = "0.01,0.1")]
    pub band: String,
    /// Spatial smoothing FWHM in mm, inside the mask (0: none).
    #[arg(long, default_value_t = 6.0)]
    pub fwhm: f64,
    /// Fewest volumes a subject may have.
    #[arg(long, default_value_t = 50)]
    pub min_volumes: usize,
    /// MIGP's internal dimension (default: the larger of one subject's volumes and 4 x the
    /// component cap).
    #[arg(long)]
    pub migp_dim: Option<usize>,
    /// FastICA convergence tolerance.
    #[arg(long, default_value_t = 1e-6)]
    pub tol: f64,
    /// FastICA iteration cap.
    #[arg(long, default_value_t = 500)]
    pub max_iter: usize,
    /// Seed of FastICA's initial unmixing matrix (same seed, same maps).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// FastICA runs from different random starts (seed, seed + 1, ...); the one with the
    /// largest total negentropy is kept.
    #[arg(long, default_value_t = 5)]
    pub restarts: usize,
    /// Subject data kept in memory between the passes, MiB (the rest is read again).
    #[arg(long, default_value_t = 4096)]
    pub cache_mb: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_band(s: &str) -> Result<Option<(f64, f64)>> {
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let parts: Vec<&str> = s.split(',').collect();
    let (Some(lo), Some(hi), 2) = (parts.first(), parts.get(1), parts.len()) else {
        bail!("--band {s}: give LOW,HIGH in Hz (e.g. 0.01,0.1) or off");
    };
    let (lo, hi): (f64, f64) = (lo.trim().parse()?, hi.trim().parse()?);
    if lo.is_nan() || hi.is_nan() || lo < 0.0 || hi <= lo {
        bail!("--band {s}: need 0 <= LOW < HIGH");
    }
    Ok(Some((lo, hi)))
}

pub fn run(a: RunFmriArgs) -> Result<()> {
    let mut req = FmriRequest::new(a.subjects.clone(), a.output.clone());
    req.mask = a.mask.clone();
    req.components = a.components;
    req.max_components = a.max_components;
    req.migp_dim = a.migp_dim;
    req.prep.band_hz = parse_band(&a.band)?;
    if a.fwhm.is_nan() || a.fwhm < 0.0 || a.fwhm.is_infinite() {
        bail!("--fwhm {}: must be 0 or more", a.fwhm);
    }
    req.prep.fwhm_mm = a.fwhm;
    req.prep.min_volumes = a.min_volumes;
    req.ica.tol = a.tol;
    req.ica.max_iter = a.max_iter;
    req.ica.seed = a.seed;
    req.ica.restarts = a.restarts;
    req.cache_bytes = a.cache_mb << 20;
    let mut current: Option<(Stage, ProgressBar)> = None;
    let report = fmri::run(&req, &mut |stage, done, total| {
        if current.as_ref().map(|c| c.0) != Some(stage) {
            if let Some((_, pb)) = current.take() {
                pb.finish();
            }
            current = Some((stage, bar(total, stage.name(), a.json)));
        }
        if let Some((_, pb)) = &current {
            pb.set_position(done as u64);
        }
    })?;
    if let Some((_, pb)) = current.take() {
        pb.finish();
    }
    if a.json {
        return print_json(&report);
    }
    println!(
        "{} subjects, {} mask voxels, {} components ({}), FastICA {} iterations{}",
        report.subjects.len(),
        report.mask_voxels,
        report.components,
        report.dimension_source,
        report.ica_iterations,
        if report.ica_converged {
            ""
        } else {
            " (NOT converged)"
        }
    );
    println!(
        "{:>4} {:>8} {:>22} {:>7}",
        "ic", "var %", "peak (mm)", "peak z"
    );
    for g in &report.group {
        println!(
            "{:>4} {:>8.2} {:>22} {:>7.2}",
            g.index,
            g.explained_variance * 100.0,
            format!(
                "({:.0}, {:.0}, {:.0})",
                g.peak_mm[0], g.peak_mm[1], g.peak_mm[2]
            ),
            g.peak_z
        );
    }
    let t = &report.times_s;
    println!(
        "time: check {:.2} s, MIGP {:.2} s, ICA {:.2} s, dual regression {:.2} s, write {:.2} s, total {:.2} s",
        t.check, t.migp, t.ica, t.dual_regression, t.write, t.total
    );
    println!("written to {}", a.output.display());
    Ok(())
}
