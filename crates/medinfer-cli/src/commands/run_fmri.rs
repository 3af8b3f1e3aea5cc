//! `medinfer run fmri`: resting-state group ICA and dual regression over a cohort of 4D NIfTI
//! files.

use crate::args::{bar, print_json, EngineArgs, PipelinePrecision};
use anyhow::{bail, Result};
use clap::Args;
use indicatif::ProgressBar;
use medinfer_pipelines::fmri::{self, Classifier, FmriRequest, Stage};
use medinfer_pipelines::models::{self, ModelId};
use std::path::PathBuf;

/// `--cache-mb` default.
const DEFAULT_CACHE_MB: usize = 4096;

#[derive(Args)]
pub struct RunFmriArgs {
    /// One 4D NIfTI per subject (.nii / .nii.gz), all on one grid with one TR.
    #[arg(required = true)]
    pub subjects: Vec<PathBuf>,
    /// Output folder (created): report.json, mask.nii.gz, group_maps.nii.gz (z maps),
    /// components.png (the labelled mosaic), <subject>/maps.nii.gz (dual-regression t or z maps)
    /// and <subject>/timecourses.tsv.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Brain mask on the same grid (non-zero = brain). Default: computed from the cohort's mean
    /// image (the threshold at the largest intensity gap, then the largest connected component).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Number of group components. Default: estimated as --dimension says.
    #[arg(long)]
    pub components: Option<usize>,
    /// How the number of components is estimated when --components is not given: profile
    /// (the profile likelihood of the group (MIGP) eigenspectrum's first --max-components
    /// log-eigenvalues, where the signal ends), laplace or bic (the median of the subjects'
    /// own Minka Laplace / BIC estimates, as MELODIC's lap / bic), or variance:FRACTION (the
    /// fewest components explaining that fraction of the variance MIGP kept, e.g.
    /// variance:0.7). On the phantom cohorts profile finds the true 13 sources where laplace
    /// finds 15-17 and splits networks.
    #[arg(long, default_value = "profile")]
    pub dimension: fmri::DimensionEstimate,
    /// Statistic of the subject maps (<subject>/maps.nii.gz): t (FSL dual regression's
    /// --out_t, T - n degrees of freedom) or z (--out_z: the normal quantile of each t's tail
    /// probability). Labels, peaks and correlations in the report use the t maps either way.
    #[arg(long, default_value = "t", value_parser = ["t", "z"])]
    pub stat: String,
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
    /// Subject data kept in memory between the passes, MiB (the rest is read again). Below the
    /// default, memory is also handed back to the system between subjects, so that peak
    /// memory stays flat however many subjects (0: about 0.3 GB for 4 mm data, at some cost
    /// in time).
    #[arg(long, default_value_t = DEFAULT_CACHE_MB)]
    pub cache_mb: usize,
    /// Network classifier: ONNX taking (batch, 3, 45, 45) slices (sagittal, coronal, axial
    /// through the map's peak, 200 mm field of view, scaled to the peak) and giving 13 scores
    /// in this order: default_mode, visual_medial, visual_lateral, sensorimotor, auditory,
    /// executive_control, frontoparietal_left, frontoparietal_right, cerebellar, salience,
    /// noise_motion, noise_csf, noise_vascular. Default: medinfer's ResNet-50 trained on
    /// phantom cohorts (not on real fMRI), FP32 or INT8 by --precision.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Skip the classifier (no labels).
    #[arg(long)]
    pub no_classify: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The classifier model: the user's, else the shipped one by precision (INT8 by default on
/// ONNX Runtime / OpenVINO, FP32 on tract).
pub fn classifier_model(engine: &EngineArgs, user: Option<&std::path::Path>) -> Result<PathBuf> {
    if let Some(p) = user {
        return Ok(p.to_path_buf());
    }
    let precision: models::Precision = engine.precision.unwrap_or(PipelinePrecision::Auto).into();
    Ok(models::shipped_fmri(precision.int8_on(engine.backend()?))?)
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
    req.dimension = a.dimension;
    req.stat = if a.stat == "z" {
        fmri::MapStatistic::Z
    } else {
        fmri::MapStatistic::T
    };
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
    let session_model = if a.no_classify {
        None
    } else {
        let path = classifier_model(&a.engine, a.model.as_deref())?;
        let session = a.engine.session(&path, 8, None, None)?;
        Some((session, ModelId::of(&path)?))
    };
    let classifier = session_model.as_ref().map(|(session, model)| Classifier {
        session,
        model: model.clone(),
    });
    // A cache capped below the default asks for bounded memory: freed blocks go back to the
    // system between subjects (see `release_freed_memory`).
    let bounded = a.cache_mb < DEFAULT_CACHE_MB;
    let mut current: Option<(Stage, ProgressBar)> = None;
    let report = fmri::run(&req, classifier.as_ref(), &mut |stage, done, total| {
        if bounded && matches!(stage, Stage::Check | Stage::Migp | Stage::DualRegression) {
            crate::release_freed_memory();
        }
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
        "{:>4} {:>8} {:>22} {:>7}  {:<22} {:>5}  subjects agreeing",
        "ic", "var %", "peak (mm)", "peak z", "label", "p"
    );
    for g in &report.group {
        let agree = report
            .subjects
            .iter()
            .filter(|s| s.components[g.index].label == g.label && g.label.is_some())
            .count();
        println!(
            "{:>4} {:>8.2} {:>22} {:>7.2}  {:<22} {:>5}  {}",
            g.index,
            g.explained_variance * 100.0,
            format!(
                "({:.0}, {:.0}, {:.0})",
                g.peak_mm[0], g.peak_mm[1], g.peak_mm[2]
            ),
            g.peak_z,
            g.label.unwrap_or("-"),
            g.probability.map_or("-".into(), |p| format!("{p:.2}")),
            if g.label.is_some() {
                format!("{agree}/{}", report.subjects.len())
            } else {
                "-".into()
            }
        );
    }
    if let Some(c) = &report.classifier {
        println!(
            "classifier: {} on {} ({}), {} components at {:.0} / s; {}",
            c.model.path, c.backend, c.precision, c.samples, c.samples_per_s, c.note
        );
    }
    let t = &report.times_s;
    println!(
        "time: check {:.2} s, MIGP {:.2} s, ICA {:.2} s, dual regression {:.2} s, classify {:.2} s, write {:.2} s, total {:.2} s",
        t.check, t.migp, t.ica, t.dual_regression, t.classify, t.write, t.total
    );
    println!("written to {}", a.output.display());
    Ok(())
}
