//! Resting-state fMRI network labelling: a cohort of 4D NIfTI files in, group ICA networks,
//! every subject's own maps and time courses out.
//!
//! Stages (each timed in the report):
//! 1. **check**: every subject is read once; 4D, enough volumes, finite values, one grid and
//!    one TR across the cohort. The brain mask is `--mask` or computed from the cohort's mean
//!    image ([`prep::epi_mask`], nilearn's `compute_epi_mask` idea).
//! 2. **migp**: each subject is preprocessed ([`prep::preprocess`]: optional smoothing inside
//!    the mask, linear detrend, band-pass, variance normalisation) and pushed through MIGP
//!    ([`ica::Migp`]), so memory holds at one subject plus a `dim x V` matrix.
//! 3. **ica**: group PCA to the dimension (given, or estimated: [`ica::profile_dimension`] of
//!    the group eigenspectrum), symmetric
//!    log-cosh FastICA, maps flipped to a positive tail and z-scored, ordered by the share of
//!    the group data's variance they explain.
//! 4. **dual regression** ([`dualreg`]): every subject's time courses and t maps.
//! 5. **classify** (when a classifier is given): three orthogonal slices through the peak of
//!    every group and subject map ([`slices`]), batched through the network classifier on
//!    all its streams; a label from [`CLASSES`] and its probability per component.
//! 6. **write**: `group_maps.nii.gz`, `mask.nii.gz`, per subject `<id>/maps.nii.gz` and
//!    `<id>/timecourses.tsv`, `components.png` (the labelled mosaic) and `report.json`.
//!
//! | file | what |
//! |---|---|
//! | `prep.rs` | input checks, mask, preprocessing |
//! | `ica.rs` | MIGP, group PCA and dimension, FastICA |
//! | `dualreg.rs` | FSL's dual regression, both stages |
//! | `stats.rs` | t to z (Student's t tail and the normal quantile, in log space) |
//! | `phantom.rs` | the resting-state cohort phantom with exact truth |
//! | `slices.rs` | the classifier's input: three slices through a map's peak |
//! | `mosaic.rs` | the labelled mosaic PNG |
//! | `eval.rs` | recovery of the phantom's networks (not the clinical pipeline) |
//! | `training.rs` | labelled classifier samples from phantom cohorts |

pub mod dualreg;
pub mod eval;
pub mod ica;
mod mosaic;
pub mod phantom;
pub mod prep;
pub mod slices;
pub mod stats;
pub mod training;

use crate::models::ModelId;
use crate::PipelineError;
use faer::Mat;
use ica::{FastIcaOptions, IcaError, Migp};
use medinfer_core::Volume;
use medinfer_engine::Session;
use medinfer_io::nifti::{self, NiftiDtype};
use prep::{Grid, PrepOptions};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The classifier's classes, in the order of its outputs: ten resting-state networks and
/// three artefact kinds.
pub const CLASSES: [&str; 13] = [
    "default_mode",
    "visual_medial",
    "visual_lateral",
    "sensorimotor",
    "auditory",
    "executive_control",
    "frontoparietal_left",
    "frontoparietal_right",
    "cerebellar",
    "salience",
    "noise_motion",
    "noise_csf",
    "noise_vascular",
];

/// The truth label of a component that matches no phantom source (thermal noise, a split
/// fragment); never a classifier output.
pub const UNMATCHED: &str = "noise_other";

/// How the number of group components is estimated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DimensionEstimate {
    /// The profile likelihood of the group (MIGP) eigenspectrum's log-eigenvalues
    /// ([`ica::profile_dimension`]): where the signal ends in a gap (the default: right on
    /// every phantom cohort tried, where the evidence estimates over-count).
    Profile,
    /// The median of the subjects' own Laplace estimates (MELODIC's default `lap`).
    Laplace,
    /// The median of the subjects' own BIC estimates (MELODIC's `bic`).
    Bic,
    /// The fewest group components that explain this fraction of the variance MIGP kept
    /// (within the cap).
    Variance(f64),
}

impl std::str::FromStr for DimensionEstimate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let l = s.trim().to_ascii_lowercase();
        match l.as_str() {
            "profile" => Ok(DimensionEstimate::Profile),
            "laplace" | "lap" => Ok(DimensionEstimate::Laplace),
            "bic" => Ok(DimensionEstimate::Bic),
            _ => match l.strip_prefix("variance:").map(str::parse::<f64>) {
                Some(Ok(f)) if f > 0.0 && f <= 1.0 => Ok(DimensionEstimate::Variance(f)),
                _ => Err(format!(
                    "{s}: give profile, laplace, bic or variance:FRACTION (0 < FRACTION <= 1)"
                )),
            },
        }
    }
}

/// The statistic of the dual-regression subject maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MapStatistic {
    /// t statistics with T - n degrees of freedom (FSL's `--out_t`).
    #[default]
    T,
    /// z statistics: the normal quantile of each t's tail probability (FSL's `--out_z`,
    /// [`stats::t_to_z`]).
    Z,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct FmriRequest {
    /// One 4D NIfTI per subject, on a common grid.
    pub subjects: Vec<PathBuf>,
    /// A brain mask on the same grid (non-zero = brain); `None`: computed.
    pub mask: Option<PathBuf>,
    /// Number of group components; `None`: estimated by `dimension`, at most
    /// `max_components`.
    pub components: Option<usize>,
    /// How the number of components is estimated when not given.
    pub dimension: DimensionEstimate,
    /// Cap on the estimated dimension.
    pub max_components: usize,
    /// The statistic written into every subject's `maps.nii.gz`.
    pub stat: MapStatistic,
    /// MIGP's internal dimension; `None`: the larger of one subject's volumes and
    /// 4 x components (cap), at most the cohort's total volumes.
    pub migp_dim: Option<usize>,
    /// Preprocessing.
    pub prep: PrepOptions,
    /// FastICA settings.
    pub ica: FastIcaOptions,
    /// Output folder (created).
    pub output: PathBuf,
    /// Raw subject data kept in memory between passes up to this many bytes; subjects past it
    /// are read again.
    pub cache_bytes: usize,
}

impl FmriRequest {
    /// A request with the defaults for these subjects and output folder.
    pub fn new(subjects: Vec<PathBuf>, output: PathBuf) -> FmriRequest {
        FmriRequest {
            subjects,
            mask: None,
            components: None,
            dimension: DimensionEstimate::Profile,
            max_components: 40,
            stat: MapStatistic::T,
            migp_dim: None,
            prep: PrepOptions::default(),
            ica: FastIcaOptions::default(),
            output,
            cache_bytes: 4 << 30,
        }
    }
}

/// The stages, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading and checking every subject.
    Check,
    /// Preprocessing and MIGP.
    Migp,
    /// Group PCA and FastICA.
    Ica,
    /// Dual regression.
    DualRegression,
    /// The network classifier on every component.
    Classify,
    /// Writing the outputs.
    Write,
}

impl Stage {
    /// Its name in progress bars.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Check => "check",
            Stage::Migp => "migp",
            Stage::Ica => "ica",
            Stage::DualRegression => "dual regression",
            Stage::Classify => "classify",
            Stage::Write => "write",
        }
    }
}

/// One group component.
#[derive(Clone, Debug, Serialize)]
pub struct GroupComponent {
    /// 0-based index (the volume in group_maps.nii.gz).
    pub index: usize,
    /// Share of the group data's variance it explains.
    pub explained_variance: f64,
    /// Peak of the z map, world mm (RAS+).
    pub peak_mm: [f64; 3],
    /// The z value at the peak.
    pub peak_z: f64,
    /// The classifier's label (when a classifier ran).
    pub label: Option<&'static str>,
    /// Its probability.
    pub probability: Option<f64>,
}

/// One component of one subject.
#[derive(Clone, Debug, Serialize)]
pub struct SubjectComponent {
    /// Component index.
    pub index: usize,
    /// Peak of the subject's t map, world mm.
    pub peak_mm: [f64; 3],
    /// The t value at the peak.
    pub peak_t: f64,
    /// Spatial correlation of the subject's map with the group map over the mask.
    pub group_correlation: f64,
    /// The classifier's label for the subject's map (when a classifier ran).
    pub label: Option<&'static str>,
    /// Its probability.
    pub probability: Option<f64>,
}

/// One subject's results.
#[derive(Clone, Debug, Serialize)]
pub struct SubjectReport {
    /// Its id (the file name without .nii / .nii.gz; made unique).
    pub id: String,
    /// The input file.
    pub input: String,
    /// Volumes.
    pub volumes: usize,
    /// Its own dimension (Laplace estimate), which its variance normalisation used.
    pub dimension: usize,
    /// Its own dimension by Minka's BIC.
    pub dimension_bic: usize,
    /// Per component.
    pub components: Vec<SubjectComponent>,
}

/// Seconds per stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageTimes {
    /// Reading and checking.
    pub check: f64,
    /// Preprocessing and MIGP.
    pub migp: f64,
    /// Group PCA, dimension and FastICA.
    pub ica: f64,
    /// Dual regression (preprocessing again where the cache did not hold the subject).
    pub dual_regression: f64,
    /// The classifier on every component (the slices are cut during dual regression, while
    /// each subject's maps are in memory, and timed there).
    pub classify: f64,
    /// Writing maps and tables.
    pub write: f64,
    /// All of it.
    pub total: f64,
}

/// The pipeline's report (report.json).
#[derive(Clone, Debug, Serialize)]
pub struct FmriReport {
    /// "fmri".
    pub pipeline: &'static str,
    /// The cohort's grid.
    pub grid: Grid,
    /// Voxels in the mask.
    pub mask_voxels: usize,
    /// Where the mask came from.
    pub mask_source: String,
    /// Preprocessing applied.
    pub preprocessing: PrepOptions,
    /// MIGP's internal dimension.
    pub migp_dim: usize,
    /// Components estimated.
    pub components: usize,
    /// How the dimension was chosen.
    pub dimension_source: String,
    /// What the subjects' `maps.nii.gz` hold: `t` or `z` statistics (the classifier and the
    /// report's peaks and correlations always use the t maps).
    pub map_statistic: MapStatistic,
    /// FastICA settings.
    pub ica: FastIcaOptions,
    /// FastICA iterations run.
    pub ica_iterations: usize,
    /// Whether FastICA converged within its cap.
    pub ica_converged: bool,
    /// The FastICA restart kept (largest total negentropy).
    pub ica_restart: usize,
    /// The classifier that labelled the components (`None`: not run).
    pub classifier: Option<ClassifierInfo>,
    /// The group components.
    pub group: Vec<GroupComponent>,
    /// Every subject.
    pub subjects: Vec<SubjectReport>,
    /// Seconds per stage.
    pub times_s: StageTimes,
    /// Files written, relative to the output folder.
    pub outputs: Vec<String>,
}

/// The network classifier a run uses: an engine session on a model taking (batch, 3, 45, 45)
/// slices ([`slices`]) and giving one score per class of [`CLASSES`].
pub struct Classifier<'a> {
    /// The session.
    pub session: &'a Session,
    /// The model's identity, for the report.
    pub model: ModelId,
}

/// What the report says of the classifier.
#[derive(Clone, Debug, Serialize)]
pub struct ClassifierInfo {
    /// Model file, sha256 and what its metadata says of its weights.
    pub model: ModelId,
    /// Backend that ran it.
    pub backend: String,
    /// Precision the engine ran with.
    pub precision: String,
    /// Samples per request.
    pub batch: usize,
    /// Requests in flight at once.
    pub streams: usize,
    /// Slice field of view, mm ([`slices::FOV_MM`]) and pixels ([`slices::SIZE`]).
    pub fov_mm: f64,
    /// Pixels per slice side.
    pub size: usize,
    /// Components classified (group and subject maps).
    pub samples: usize,
    /// Components per second of the classify stage.
    pub samples_per_s: f64,
    /// The classes, in the model's output order.
    pub classes: Vec<&'static str>,
    /// A caution for every reader.
    pub note: String,
}

/// The caution every output of the shipped classifier carries.
pub const PHANTOM_NOTE: &str = "the network labels come from a classifier trained on synthetic phantom cohorts (medinfer phantom fmri), not on real fMRI: check them by eye";

fn ica_err(stage: &str, e: IcaError) -> PipelineError {
    PipelineError::Batch(format!("{stage}: {e}"))
}

/// Subject ids from file names: the name without `.nii` / `.nii.gz`, with `-2`, `-3` ...
/// added to repeats.
pub fn subject_ids(paths: &[PathBuf]) -> Vec<String> {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    paths
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "subject".into());
            let stem = name
                .strip_suffix(".nii.gz")
                .or_else(|| name.strip_suffix(".nii"))
                .unwrap_or(&name);
            let clean: String = stem
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let n = seen.entry(clean.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                clean
            } else {
                format!("{clean}-{n}")
            }
        })
        .collect()
}

/// Subjects kept in memory between passes, within a byte budget: raw after the check pass,
/// preprocessed after MIGP; the others are read (and preprocessed) again.
struct Cache {
    slots: Vec<Option<Cached>>,
    left: usize,
}

enum Cached {
    Raw(Box<Volume>),
    Prep(Mat<f64>),
}

impl Cached {
    fn bytes(&self) -> usize {
        match self {
            Cached::Raw(v) => v.data.len() * 4,
            Cached::Prep(m) => m.nrows() * m.ncols() * 8,
        }
    }
}

impl Cache {
    fn keep(&mut self, i: usize, c: Cached) {
        let bytes = c.bytes();
        if bytes <= self.left {
            self.left -= bytes;
            self.slots[i] = Some(c);
        }
    }

    /// Subject `i` preprocessed: from the cache, or read and preprocessed now.
    fn preprocessed(
        &mut self,
        i: usize,
        path: &Path,
        mask: &[bool],
        mask_idx: &[usize],
        opts: &PrepOptions,
        cap: usize,
    ) -> Result<(Mat<f64>, Option<prep::SubjectDimension>), PipelineError> {
        let c = self.slots[i].take();
        if let Some(c) = &c {
            self.left += c.bytes();
        }
        Ok(match c {
            Some(Cached::Prep(m)) => (m, None),
            Some(Cached::Raw(v)) => {
                let (m, d) = prep::preprocess(&v, mask, mask_idx, opts, cap);
                (m, Some(d))
            }
            None => {
                let v = prep::load(path, opts.min_volumes)?;
                let (m, d) = prep::preprocess(&v, mask, mask_idx, opts, cap);
                (m, Some(d))
            }
        })
    }
}

fn voxel_world(grid: &Grid, v: usize) -> [f64; 3] {
    let [nx, ny, _] = grid.dims;
    let ijk = [
        (v % nx) as f64,
        ((v / nx) % ny) as f64,
        (v / (nx * ny)) as f64,
    ];
    std::array::from_fn(|r| {
        (0..3).map(|c| grid.affine[r][c] * ijk[c]).sum::<f64>() + grid.affine[r][3]
    })
}

fn peak(row: &[f64]) -> (usize, f64) {
    row.iter().copied().enumerate().fold(
        (0, f64::NEG_INFINITY),
        |b, (i, x)| if x > b.1 { (i, x) } else { b },
    )
}

/// Pearson correlation of two equally long series.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

fn row(m: &Mat<f64>, r: usize) -> Vec<f64> {
    (0..m.ncols()).map(|c| m[(r, c)]).collect()
}

/// Writes an n x V matrix (mask order) as a 4D float NIfTI on the grid, zero outside the mask.
pub fn write_maps(
    path: &Path,
    m: &Mat<f64>,
    grid: &Grid,
    mask_idx: &[usize],
) -> Result<(), PipelineError> {
    let nv = grid.voxels();
    let data: Vec<f32> = (0..m.nrows())
        .flat_map(|k| full_volume(m, k, nv, mask_idx))
        .collect();
    nifti::write(path, &grid.volume(m.nrows(), data), NiftiDtype::F32)?;
    Ok(())
}

/// The z statistics of an n x V matrix of t statistics, its columns split over two threads
/// (~0.5 us per value).
fn z_maps(t: &Mat<f64>, dof: f64) -> Mat<f64> {
    let dist = stats::StudentT::new(dof);
    let mut z = Mat::<f64>::zeros(t.nrows(), t.ncols());
    let cols: Vec<_> = z.col_iter_mut().enumerate().collect();
    crate::cardiac::for_each_split(cols, 2, |(c, mut col)| {
        for k in 0..col.nrows() {
            col[k] = dist.z(t[(k, c)]);
        }
    });
    z
}

fn write_tsv(path: &Path, tc: &Mat<f64>) -> Result<(), PipelineError> {
    let mut s = String::new();
    let head: Vec<String> = (0..tc.ncols()).map(|k| format!("ic{k:02}")).collect();
    s.push_str(&head.join("\t"));
    s.push('\n');
    for r in 0..tc.nrows() {
        let line: Vec<String> = (0..tc.ncols())
            .map(|c| format!("{:.6}", tc[(r, c)]))
            .collect();
        s.push_str(&line.join("\t"));
        s.push('\n');
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(s.as_bytes()))
        .map_err(|e| PipelineError::output(path, e))
}

/// Reads a mask file (non-zero = brain) and checks it lies on the grid.
fn read_mask(path: &Path, grid: &Grid) -> Result<Vec<bool>, PipelineError> {
    let m = nifti::read(path)?;
    let g = Grid {
        tr_s: grid.tr_s,
        ..Grid::of(&m)
    };
    g.check(path, grid)?;
    let nv = grid.voxels();
    Ok(m.data[..nv].iter().map(|&x| x != 0.0).collect())
}

/// Scatters row `k` of an n x V matrix (mask order) into a full volume on the grid.
pub(crate) fn full_volume(m: &Mat<f64>, k: usize, nv: usize, mask_idx: &[usize]) -> Vec<f32> {
    let mut v = vec![0f32; nv];
    for (c, &i) in mask_idx.iter().enumerate() {
        v[i] = m[(k, c)] as f32;
    }
    v
}

/// Runs the pipeline, writing into `req.output`; with a `classifier`, every group and subject
/// component is labelled. `progress(stage, done, total)` is called as work advances.
pub fn run(
    req: &FmriRequest,
    classifier: Option<&Classifier>,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<FmriReport, PipelineError> {
    let t_all = Instant::now();
    let mut times = StageTimes::default();
    let ns = req.subjects.len();
    if ns == 0 {
        return Err(PipelineError::input("fmri", "no subjects given"));
    }
    std::fs::create_dir_all(&req.output).map_err(|e| PipelineError::output(&req.output, e))?;
    // 1. check
    let t0 = Instant::now();
    let mut cache = Cache {
        slots: (0..ns).map(|_| None).collect(),
        left: req.cache_bytes,
    };
    let mut grid: Option<Grid> = None;
    let mut mean_sum: Vec<f64> = Vec::new();
    let mut volumes = Vec::with_capacity(ns);
    for (i, p) in req.subjects.iter().enumerate() {
        progress(Stage::Check, i, ns);
        let v = prep::load(p, req.prep.min_volumes)?;
        let g = Grid::of(&v);
        match &grid {
            None => {
                mean_sum = vec![0.0; g.voxels()];
                grid = Some(g);
            }
            Some(first) => first.check(p, &g)?,
        }
        if req.mask.is_none() {
            mean_sum
                .iter_mut()
                .zip(prep::mean_image(&v))
                .for_each(|(a, b)| *a += b);
        }
        volumes.push(v.dims[3]);
        cache.keep(i, Cached::Raw(Box::new(v)));
    }
    let grid = grid.expect("at least one subject");
    let (mask, mask_source) = match &req.mask {
        Some(m) => (read_mask(m, &grid)?, m.display().to_string()),
        None => (
            prep::epi_mask(&mean_sum, grid.dims),
            "computed from the cohort's mean image".to_string(),
        ),
    };
    let mask_idx: Vec<usize> = (0..mask.len()).filter(|&v| mask[v]).collect();
    let min_t = *volumes.iter().min().expect("subjects");
    if mask_idx.len() < 100 {
        let what = req
            .mask
            .as_ref()
            .map(|m| m.display().to_string())
            .unwrap_or_else(|| "computed mask".into());
        return Err(PipelineError::input(
            what,
            format!(
                "the brain mask holds {} voxels: empty or nearly so (is this brain data?)",
                mask_idx.len()
            ),
        ));
    }
    if let Some(band) = req.prep.band_hz {
        let k = prep::band_basis(min_t, grid.tr_s, band).ncols();
        if k < 4 {
            return Err(PipelineError::Config {
                what: "band-pass".into(),
                reason: format!(
                    "{:.3}-{:.3} Hz keeps {k} frequencies of a {min_t}-volume series at TR {:.2} s; widen the band or turn it off",
                    band.0, band.1, grid.tr_s
                ),
            });
        }
    }
    times.check = t0.elapsed().as_secs_f64();
    progress(Stage::Check, ns, ns);

    // 2. preprocess + MIGP
    let t0 = Instant::now();
    let cap = req.components.unwrap_or(req.max_components);
    let total_t: usize = volumes.iter().sum();
    let migp_dim = req
        .migp_dim
        .unwrap_or_else(|| volumes[0].max(4 * cap))
        .min(total_t)
        .max(cap + 1);
    let mut migp = Migp::new(migp_dim);
    let mut dims_est = Vec::new();
    for (i, p) in req.subjects.iter().enumerate() {
        progress(Stage::Migp, i, ns);
        let (x, d) = cache.preprocessed(i, p, &mask, &mask_idx, &req.prep, cap)?;
        dims_est.push(d.unwrap_or_default());
        migp.push(x.as_ref()).map_err(|e| ica_err("MIGP", e))?;
        cache.keep(i, Cached::Prep(x));
    }
    let w = migp.finish().expect("at least one subject");
    times.migp = t0.elapsed().as_secs_f64();
    progress(Stage::Migp, ns, ns);

    // 3. group PCA + ICA
    let t0 = Instant::now();
    progress(Stage::Ica, 0, 1);
    let (n, dimension_source) = match req.components {
        Some(n) => (n, "given".to_string()),
        None => {
            let median = |f: fn(&prep::SubjectDimension) -> usize| {
                let mut v: Vec<usize> = dims_est.iter().map(f).collect();
                v.sort_unstable();
                v[v.len() / 2]
            };
            let (lap, bic) = (median(|d| d.laplace), median(|d| d.bic));
            let subjects =
                format!("the subjects' own estimates: Laplace median {lap}, BIC median {bic}");
            let group_spectrum = || {
                let g = (&w * w.transpose()) * faer::Scale(1.0 / w.ncols() as f64);
                ica::eigh_desc(g.as_ref())
                    .map(|(vals, _)| vals)
                    .map_err(|e| ica_err("group PCA", e))
            };
            let (d, how) = match req.dimension {
                DimensionEstimate::Profile => {
                    let vals = group_spectrum()?;
                    (
                        ica::profile_dimension(&vals, cap),
                        format!(
                            "profile likelihood of the group eigenspectrum's first {} log-eigenvalues",
                            cap.min(vals.len())
                        ),
                    )
                }
                DimensionEstimate::Laplace => (
                    lap.min(cap),
                    "median of the subjects' Laplace estimates".into(),
                ),
                DimensionEstimate::Bic => {
                    (bic.min(cap), "median of the subjects' BIC estimates".into())
                }
                DimensionEstimate::Variance(f) => {
                    let vals = group_spectrum()?;
                    (
                        ica::variance_dimension(&vals, f, cap.min(vals.len())),
                        format!("{:.1} % of the variance MIGP kept", f * 100.0),
                    )
                }
            };
            (d.max(2), format!("{how} ({subjects})"))
        }
    };
    let pca = ica::group_pca(&w, n).map_err(|e| ica_err("group PCA", e))?;
    let fit = ica::fastica_restarts(&pca, &req.ica).map_err(|e| ica_err("FastICA", e))?;
    let mut maps = fit.sources;
    ica::orient_and_zscore(&mut maps);
    let ev = ica::explained_variance(&w, &maps).map_err(|e| ica_err("explained variance", e))?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| ev[b].total_cmp(&ev[a]));
    let maps = Mat::from_fn(n, maps.ncols(), |r, c| maps[(order[r], c)]);
    let mut group: Vec<GroupComponent> = (0..n)
        .map(|k| {
            let (pv, pz) = peak(&row(&maps, k));
            GroupComponent {
                index: k,
                explained_variance: ev[order[k]],
                peak_mm: voxel_world(&grid, mask_idx[pv]),
                peak_z: pz,
                label: None,
                probability: None,
            }
        })
        .collect();
    // The classifier's samples: group maps first (always cut: the mosaic shows them), then,
    // with a classifier, every subject's, component by component.
    let nv = grid.voxels();
    let centre = slices::mask_centre(&grid, &mask);
    let mut samples: Vec<Vec<f32>> = group
        .iter()
        .map(|g| {
            let vol = full_volume(&maps, g.index, nv, &mask_idx);
            slices::component_slices(&vol, &grid, g.peak_mm, centre, g.peak_z)
        })
        .collect();
    drop(w);
    times.ica = t0.elapsed().as_secs_f64();
    progress(Stage::Ica, 1, 1);

    // 4. dual regression, written subject by subject
    let t0 = Instant::now();
    let ids = subject_ids(&req.subjects);
    let mut subjects = Vec::with_capacity(ns);
    let mut outputs = vec![
        "report.json".to_string(),
        "mask.nii.gz".to_string(),
        "group_maps.nii.gz".to_string(),
    ];
    let mut write_s = 0.0;
    for (i, p) in req.subjects.iter().enumerate() {
        progress(Stage::DualRegression, i, ns);
        let (x, _) = cache.preprocessed(i, p, &mask, &mask_idx, &req.prep, cap)?;
        let dr = dualreg::dual_regression(x.as_ref(), maps.as_ref())
            .map_err(|e| ica_err(&format!("dual regression of {}", p.display()), e))?;
        let comps: Vec<SubjectComponent> = (0..n)
            .map(|k| {
                let r = row(&dr.tstats, k);
                let (pv, pt) = peak(&r);
                SubjectComponent {
                    index: k,
                    peak_mm: voxel_world(&grid, mask_idx[pv]),
                    peak_t: pt,
                    group_correlation: correlation(&r, &row(&maps, k)),
                    label: None,
                    probability: None,
                }
            })
            .collect();
        if classifier.is_some() {
            for c in &comps {
                let vol = full_volume(&dr.tstats, c.index, nv, &mask_idx);
                samples.push(slices::component_slices(
                    &vol, &grid, c.peak_mm, centre, c.peak_t,
                ));
            }
        }
        let tw = Instant::now();
        let dir = req.output.join(&ids[i]);
        std::fs::create_dir_all(&dir).map_err(|e| PipelineError::output(&dir, e))?;
        let z;
        let written = match req.stat {
            MapStatistic::T => &dr.tstats,
            MapStatistic::Z => {
                z = z_maps(&dr.tstats, dr.dof);
                &z
            }
        };
        write_maps(&dir.join("maps.nii.gz"), written, &grid, &mask_idx)?;
        write_tsv(&dir.join("timecourses.tsv"), &dr.timecourses)?;
        outputs.push(format!("{}/maps.nii.gz", ids[i]));
        outputs.push(format!("{}/timecourses.tsv", ids[i]));
        write_s += tw.elapsed().as_secs_f64();
        subjects.push(SubjectReport {
            id: ids[i].clone(),
            input: p.display().to_string(),
            volumes: volumes[i],
            dimension: dims_est[i].laplace,
            dimension_bic: dims_est[i].bic,
            components: comps,
        });
    }
    times.dual_regression = t0.elapsed().as_secs_f64() - write_s;
    progress(Stage::DualRegression, ns, ns);

    // 5. classify
    let t0 = Instant::now();
    let classifier_info = match classifier {
        None => None,
        Some(c) => {
            let labels = classify(c, &samples, &mut |d, t| progress(Stage::Classify, d, t))?;
            let (mut g_it, mut rest) = (group.iter_mut(), labels.iter());
            for (g, l) in g_it.by_ref().zip(rest.by_ref()) {
                (g.label, g.probability) = (Some(l.0), Some(l.1));
            }
            for s in subjects.iter_mut() {
                for (comp, l) in s.components.iter_mut().zip(rest.by_ref()) {
                    (comp.label, comp.probability) = (Some(l.0), Some(l.1));
                }
            }
            times.classify = t0.elapsed().as_secs_f64();
            let info = c.session.info();
            let phantom = c
                .model
                .weights
                .as_deref()
                .is_some_and(|w| w.contains("phantom"));
            Some(ClassifierInfo {
                model: c.model.clone(),
                backend: info.backend.name().to_string(),
                precision: info.effective_precision.clone(),
                batch: c.session.inputs().first().map_or(1, |i| i.shape[0]),
                streams: info.streams,
                fov_mm: slices::FOV_MM,
                size: slices::SIZE,
                samples: samples.len(),
                samples_per_s: samples.len() as f64 / times.classify.max(1e-9),
                classes: CLASSES.to_vec(),
                note: if phantom {
                    PHANTOM_NOTE.to_string()
                } else {
                    "a classifier given by the user; medinfer did not validate its labels".into()
                },
            })
        }
    };
    // Only the group slices are needed from here on (the mosaic).
    samples.truncate(n);

    // 5. write
    let t0 = Instant::now();
    progress(Stage::Write, 0, 1);
    write_maps(
        &req.output.join("group_maps.nii.gz"),
        &maps,
        &grid,
        &mask_idx,
    )?;
    let mvol = grid.volume(1, mask.iter().map(|&m| m as u8 as f32).collect());
    nifti::write(req.output.join("mask.nii.gz"), &mvol, NiftiDtype::U8)?;
    let mosaic_path = req.output.join("components.png");
    let header = classifier_info.as_ref().map(|c| {
        if c.note == PHANTOM_NOTE {
            "LABELS FROM A CLASSIFIER TRAINED ON PHANTOMS ONLY - CHECK BY EYE"
        } else {
            "LABELS FROM A USER CLASSIFIER"
        }
    });
    mosaic::write(&mosaic_path, header, &samples, &group, &grid, &mask, centre)?;
    outputs.push("components.png".into());
    times.write = t0.elapsed().as_secs_f64() + write_s;
    times.total = t_all.elapsed().as_secs_f64();
    let report = FmriReport {
        pipeline: "fmri",
        grid,
        mask_voxels: mask_idx.len(),
        mask_source,
        preprocessing: req.prep.clone(),
        migp_dim,
        components: n,
        dimension_source,
        map_statistic: req.stat,
        ica: req.ica.clone(),
        ica_iterations: fit.iterations,
        ica_converged: fit.converged,
        ica_restart: fit.restart,
        classifier: classifier_info,
        group,
        subjects,
        times_s: times,
        outputs,
    };
    let rp = req.output.join("report.json");
    let js = serde_json::to_string_pretty(&report).map_err(|e| PipelineError::output(&rp, e))?;
    std::fs::write(&rp, js).map_err(|e| PipelineError::output(&rp, e))?;
    progress(Stage::Write, 1, 1);
    Ok(report)
}

/// Runs the classifier on every sample ([`slices::SAMPLE_LEN`] values each; batched, on all
/// the session's streams): the label and its softmax probability per sample, in order.
pub fn classify(
    c: &Classifier,
    samples: &[Vec<f32>],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<(&'static str, f64)>, PipelineError> {
    let model_err = |reason: String| PipelineError::Model {
        model: c.model.path.clone(),
        reason,
    };
    let want = [3, slices::SIZE, slices::SIZE];
    let shape = c.session.inputs().first().map(|i| i.shape.clone());
    if shape.as_deref().map(|s| s.get(1..)) != Some(Some(&want[..])) {
        return Err(model_err(format!(
            "takes input {shape:?}; the fMRI classifier takes (batch, 3, {0}, {0}) slices",
            slices::SIZE
        )));
    }
    let total = samples.len();
    let mut out: Vec<(&'static str, f64)> = Vec::with_capacity(total);
    let mut failure: Option<PipelineError> = None;
    let idx: Vec<usize> = (0..total).collect();
    crate::batch::run_ordered(
        &idx,
        c.session,
        1,
        |&i| Ok(samples[i].as_slice()),
        |i, r| {
            if failure.is_some() {
                return;
            }
            match r {
                Ok(logits) if logits.len() == CLASSES.len() => {
                    let m = logits.iter().copied().fold(f32::MIN, f32::max) as f64;
                    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - m).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let (k, p) =
                        e.iter()
                            .enumerate()
                            .fold((0, 0.0), |b, (k, &v)| if v > b.1 { (k, v) } else { b });
                    out.push((CLASSES[k], p / sum));
                }
                Ok(logits) => {
                    failure = Some(model_err(format!(
                        "gives {} scores per sample; the fMRI classifier gives one per class ({})",
                        logits.len(),
                        CLASSES.len()
                    )))
                }
                Err(e) => failure = Some(PipelineError::Batch(format!("component {i}: {e}"))),
            }
            progress(i + 1, total);
        },
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(out)
}
