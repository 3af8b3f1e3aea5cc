//! `medinfer tune`: picks engine x precision x INT8 layout x kernel ISA x streams x batch for a
//! model under an accuracy budget, by measurement on this machine.
//!
//! The steps, each bounded so that a whole tune fits its time budget:
//! 1. **Variants.** The FP32 model and its INT8 versions (portable and openvino layouts),
//!    quantized by `medinfer quantize` in child processes with accuracy control against the
//!    same budget ([`quantize_variant`]).
//! 2. **Accuracy.** Every (variant, engine, precision, ISA) runs the validation set in its own
//!    process ([`worker`]); its outputs are scored against the FP32 model's with the metric.
//!    Over the budget: out, with the measured drop as the reason. A crash: out, as a crash.
//! 3. **Screening** in paired rounds anchored on OpenVINO's INT8 defaults (5 rounds of short
//!    slices): every engine configuration at the defaults' layout (and, for throughput, at its
//!    widest layout: most streams, largest batch), then every layout (streams x threads x
//!    batch) of the best few by their best probe; the best `keep` go on.
//! 4. **Paired rounds with successive halving.** The best few stay loaded side by side; each
//!    round times every one of them once, in a shuffled order, so a change in the host's load
//!    hits all of them alike. After each stage the slower half (by the median of each one's
//!    per-round speed over OpenVINO's INT8 defaults, which ride along; else by median speed)
//!    is dropped and the next stage has twice the rounds, down to two; the last stage runs as
//!    many rounds as the budget has left (up to 60). The winner's per-round ratios over the
//!    runner-up are the confidence.
//!
//! [`deploy`] writes the choice as a model-repository entry that `run`, `bench` and `serve`
//! take with `--deploy`.

pub mod deploy;
mod report;
pub mod worker;

pub use report::{pareto_front, render_markdown, render_svg};

use medinfer_core::Tensor;
use medinfer_engine::calibrate::Metric;
use medinfer_engine::{BackendKind, CpuIsa, EngineError, Precision};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use worker::{Failure, Worker, WorkerSpec};

/// What can stop a tune.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// An engine error in this process.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// An ONNX file that cannot be read.
    #[error(transparent)]
    Onnx(#[from] medinfer_onnx::OnnxError),
    /// Sample files that cannot be read.
    #[error(transparent)]
    Pipeline(#[from] medinfer_pipelines::PipelineError),
    /// An array file that cannot be read or written.
    #[error(transparent)]
    Io(#[from] medinfer_io::IoError),
    /// A file or folder that cannot be read or written.
    #[error("{path}: {error}")]
    File {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The worker's own stdin / stdout.
    #[error("worker pipe: {0}")]
    Pipe(#[from] std::io::Error),
    /// A candidate that cannot run.
    #[error("{0}")]
    Candidate(String),
    /// A request that cannot be tuned (empty validation set, no reference).
    #[error("{0}")]
    Bad(String),
    /// Every candidate is over the accuracy budget.
    #[error("no candidate meets the accuracy budget: {0} (widen --max-drop, or --force to deploy the most accurate anyway)")]
    NothingMeetsBudget(String),
    /// A deployment that cannot be used here.
    #[error("{0}")]
    Deploy(String),
}

impl TuneError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> TuneError {
        TuneError::File {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// What the tune optimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Median time of one request at the model's nominal batch, all cores on it.
    Latency,
    /// Items per second with several requests in flight.
    Throughput,
}

impl Objective {
    /// Parses `latency` / `throughput`.
    pub fn parse(s: &str) -> Option<Objective> {
        match s.to_ascii_lowercase().as_str() {
            "latency" => Some(Objective::Latency),
            "throughput" => Some(Objective::Throughput),
            _ => None,
        }
    }
}

/// One model file a candidate can run.
#[derive(Clone, Debug, Serialize)]
pub struct Variant {
    /// `fp32`, `int8-portable` or `int8-openvino`.
    pub label: String,
    /// The file.
    pub path: PathBuf,
}

/// Everything a tune needs.
#[derive(Clone, Debug)]
pub struct TunePlan {
    /// The `medinfer` executable that runs the candidate processes.
    pub exe: PathBuf,
    /// A scratch folder (validation outputs, worker logs).
    pub work: PathBuf,
    /// The FP32 model first (the reference), then the INT8 variants.
    pub variants: Vec<Variant>,
    /// Variants that could not be made, with the reason (reported, not tuned).
    pub missing_variants: Vec<(String, String)>,
    /// Validation data (the `arrays` formats).
    pub validate: PathBuf,
    /// Validation samples used (the first ones, in file-name order).
    pub validate_samples: usize,
    /// Accuracy metric against the FP32 reference.
    pub metric: Metric,
    /// Ground-truth labels for [`Metric::Auc`] (one row per validation sample).
    pub labels: Option<Vec<Vec<f32>>>,
    /// Largest allowed drop of the metric.
    pub max_drop: f64,
    /// What to optimise.
    pub objective: Objective,
    /// Wall-clock budget of the whole tune (quantization included; `started` is its start).
    pub budget: Duration,
    /// When the tune started.
    pub started: Instant,
    /// Engines to try.
    pub backends: Vec<BackendKind>,
    /// Whether the FP32 model runs at FP32 as a candidate (INT8 variants always run as they
    /// are).
    pub fp32: bool,
    /// Whether BF16 candidates are tried (OpenVINO on a CPU with BF16 instructions).
    pub bf16: bool,
    /// OpenVINO instruction-set caps to try for INT8 candidates.
    pub isas_int8: Vec<CpuIsa>,
    /// OpenVINO instruction-set caps to try for BF16 candidates.
    pub isas_bf16: Vec<CpuIsa>,
    /// Cores this process may use.
    pub cores: usize,
    /// Batch sizes tried in throughput mode (when the model's batch is dynamic).
    pub batches: Vec<usize>,
    /// Shapes of inputs with dynamic dimensions other than the batch.
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Time every candidate that meets the budget in paired rounds, without pruning (the
    /// exhaustive search the tune is checked against).
    pub exhaustive: bool,
    /// Rounds of the exhaustive search.
    pub exhaustive_rounds: usize,
    /// With `exhaustive`: rounds of the final wave (the best of all waves timed together
    /// again, which ranks the top); 0 = `exhaustive_rounds`. The top configurations are often
    /// within a few percent of each other, which only many paired rounds tell apart.
    pub final_rounds: usize,
    /// With `exhaustive`: how many of the best of the waves run the final wave (0 = a wave's
    /// worth, `wave` - 1).
    pub finalists: usize,
    /// With `exhaustive`: labels of candidates that join the final wave whatever their rank in
    /// the waves (the exhaustive check puts the tune's own choice there, so that the choice and
    /// the best are timed in the same rounds).
    pub final_with: Vec<String>,
    /// Fresh loads the final rounds are split over (the halving's final stage, and with
    /// `exhaustive` the final wave): every contender is loaded again in a new process
    /// between them. A configuration's speed moves 2-4 % from one process load to the next
    /// (resnet50-fmri on Zen 4, `benchmarks/tune/loads.sh`), as much as the top four differed,
    /// so rounds in one load ranked the load as much as the configuration. 1 = no reload.
    pub final_loads: usize,
    /// Deploy the most accurate candidates when none meets the budget.
    pub force: bool,
    /// Candidates kept after screening for the paired rounds.
    pub keep: usize,
    /// With `exhaustive`: most candidates loaded at once (a wave), the anchor included.
    pub wave: usize,
    /// Seed of the round orders.
    pub seed: u64,
}

/// Where a candidate ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The choice.
    Chosen,
    /// Second after the final rounds.
    RunnerUp,
    /// Dropped by successive halving after paired rounds.
    Halved,
    /// Dropped by the paired screening (not among the best to enter the halving), or not
    /// timed at all because its engine configuration ranked low at its probe layouts.
    Screened,
    /// Over the accuracy budget.
    OverBudget,
    /// Its engine crashed in the candidate's process.
    Crashed,
    /// It failed with an error.
    Failed,
    /// Not tried (the reason says why).
    Skipped,
    /// Timed in the exhaustive search (not the choice).
    Measured,
}

impl Status {
    /// Whether a candidate in this state may still be the anchor of paired rounds: any that
    /// loaded, including one dropped from the choice (the defaults' engine configuration
    /// screened out of the best few still anchors the rounds of the others' layouts).
    fn can_anchor(&self) -> bool {
        !matches!(
            self,
            Status::Crashed | Status::Failed | Status::Skipped | Status::OverBudget
        )
    }
}

/// One candidate and what was measured of it.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    /// Short label, e.g. `openvino int8-openvino bf16 [avx512-vnni] 2x1 b4`.
    pub label: String,
    /// Which model file.
    pub variant: String,
    /// Engine.
    pub backend: BackendKind,
    /// Precision asked of the engine.
    pub precision: Precision,
    /// Precision the engine reported.
    pub effective_precision: String,
    /// OpenVINO instruction-set cap (`auto` elsewhere).
    pub isa: String,
    /// Streams.
    pub streams: usize,
    /// Threads per stream.
    pub threads: usize,
    /// Items per request.
    pub batch: usize,
    /// Where it ended.
    pub status: Status,
    /// Why it is out, where it is.
    pub reason: Option<String>,
    /// The metric against the FP32 reference.
    pub metric: Option<f64>,
    /// The drop of the metric (the budget applies to it).
    pub drop: Option<f64>,
    /// Load and compile time.
    pub load_ms: Option<f64>,
    /// Speed alone in the warm-up after its first load (requests / s for latency, items / s
    /// for throughput); it sizes the candidate's timed slices.
    pub screen_speed: Option<f64>,
    /// Speed in each paired round it took part in.
    pub rounds: Vec<f64>,
    /// Processes it was loaded in for the paired rounds (the final rounds reload their
    /// contenders, [`TunePlan::final_loads`]).
    pub loads: usize,
    /// Median request latency over its timed slices in paired rounds.
    pub latency_ms: Option<f64>,
    /// Items per second (same).
    pub throughput_per_s: Option<f64>,
    /// With `--exhaustive`: median over rounds of its speed divided by the anchor's in the same
    /// round.
    pub vs_anchor: Option<f64>,
    #[serde(skip)]
    anchor_ratios: Vec<f64>,
    #[serde(skip)]
    p50s: Vec<f64>,
    #[serde(skip)]
    tputs: Vec<f64>,
    #[serde(skip)]
    isa_cap: CpuIsa,
    #[serde(skip)]
    path: PathBuf,
    #[serde(skip)]
    key: usize,
}

impl Candidate {
    /// A candidate not measured yet: `variant` in the file `path` on `backend` at `precision`
    /// under the kernel cap `isa`, `layout` = (streams, threads per stream, batch), `key` its
    /// engine configuration's number. Its label is made from these.
    fn new(
        variant: &str,
        path: &Path,
        backend: BackendKind,
        precision: Precision,
        isa: CpuIsa,
        (streams, threads, batch): (usize, usize, usize),
        key: usize,
    ) -> Candidate {
        let mut c = Candidate {
            label: String::new(),
            variant: variant.to_string(),
            backend,
            precision,
            effective_precision: String::new(),
            isa: isa.name().to_string(),
            streams,
            threads,
            batch,
            status: Status::Measured,
            reason: None,
            metric: None,
            drop: None,
            load_ms: None,
            screen_speed: None,
            rounds: vec![],
            loads: 0,
            latency_ms: None,
            throughput_per_s: None,
            vs_anchor: None,
            anchor_ratios: vec![],
            p50s: vec![],
            tputs: vec![],
            isa_cap: isa,
            path: path.to_path_buf(),
            key,
        };
        c.label = label(&c);
        c
    }

    /// Median speed over the paired rounds, else the warm-up speed.
    pub fn speed(&self) -> Option<f64> {
        median(&self.rounds).or(self.screen_speed)
    }

    /// The model file it runs.
    pub fn model_path(&self) -> &Path {
        &self.path
    }

    /// The instruction-set cap it runs under.
    pub fn isa_cap(&self) -> CpuIsa {
        self.isa_cap
    }

    fn spec(&self, input_shapes: &HashMap<String, Vec<usize>>) -> WorkerSpec {
        WorkerSpec {
            model: self.path.clone(),
            backend: self.backend,
            precision: self.precision,
            streams: self.streams,
            threads: self.threads,
            batch: self.batch,
            input_shapes: input_shapes.clone(),
        }
    }

    /// (streams, threads per stream, batch).
    fn layout(&self) -> (usize, usize, usize) {
        (self.streams, self.threads, self.batch)
    }

    fn out(&mut self, status: Status, reason: String) {
        self.status = status;
        self.reason = Some(reason);
    }
}

/// The result of a tune.
#[derive(Clone, Debug, Serialize)]
pub struct TuneOutcome {
    /// Every candidate, the chosen one included.
    pub candidates: Vec<Candidate>,
    /// Index of the choice in `candidates`.
    pub chosen: usize,
    /// Index of the runner-up, where there was one.
    pub runner_up: Option<usize>,
    /// Lowest and highest per-round speed ratio of the choice over the runner-up.
    pub confidence: Option<[f64; 2]>,
    /// Median of those per-round ratios (with `--exhaustive`: the ratio of their medians
    /// against the anchor).
    pub ratio_median: Option<f64>,
    /// With `--exhaustive`: the candidate timed in every round as the common reference
    /// (OpenVINO's INT8 defaults where present), so that candidates loaded in different waves
    /// compare through it.
    pub anchor: Option<usize>,
    /// Paired rounds the choice took part in.
    pub rounds: usize,
    /// Engine that computed the FP32 reference outputs.
    pub reference_backend: BackendKind,
    /// Validation samples scored.
    pub validation_samples: usize,
    /// The metric's name.
    pub metric: String,
    /// The budget.
    pub max_drop: f64,
    /// The objective.
    pub objective: Objective,
    /// True when nothing met the budget and `--force` deployed the most accurate.
    pub over_budget: bool,
    /// CPU model.
    pub cpu: String,
    /// Cores used.
    pub cores: usize,
    /// Wall time of the tune.
    pub elapsed_s: f64,
    /// Things the user should know (engines missing, budget overrun).
    pub notes: Vec<String>,
}

impl TuneOutcome {
    /// The chosen candidate.
    pub fn choice(&self) -> &Candidate {
        &self.candidates[self.chosen]
    }
}

/// Progress: `(stage, done, total)`.
pub type Progress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

/// Quantizes `model` with `medinfer quantize` in a child process (`target` = portable or
/// openvino) with accuracy control against the tune's budget; `extra` are further arguments
/// (`--labels`, `--input-shape`). Returns the reason when no file was written.
#[allow(clippy::too_many_arguments)]
pub fn quantize_variant(
    exe: &Path,
    model: &Path,
    target: &str,
    calib: &Path,
    calib_samples: usize,
    validate: &Path,
    validate_samples: usize,
    metric: &str,
    max_drop: f64,
    extra: &[String],
    out: &Path,
) -> Result<Variant, String> {
    let o = std::process::Command::new(exe)
        .arg("quantize")
        .arg(model)
        .arg("-o")
        .arg(out)
        .arg("--calib")
        .arg(calib)
        .args(["--samples", &calib_samples.to_string(), "--target", target])
        .arg("--validate")
        .arg(validate)
        .args([
            "--validate-samples",
            &validate_samples.to_string(),
            "--metric",
            metric,
            "--max-drop",
            &max_drop.to_string(),
            "--ranking",
            "heuristic",
            "--json",
        ])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("could not start {}: {e}", exe.display()))?;
    if o.status.success() && out.is_file() {
        return Ok(Variant {
            label: format!("int8-{target}"),
            path: out.to_path_buf(),
        });
    }
    let mut last = medinfer_core::last_error_line(&String::from_utf8_lossy(&o.stderr));
    if last.is_empty() {
        last = "no message".into();
    }
    Err(match o.status.code() {
        Some(_) => format!("quantization failed: {last}"),
        None => format!("quantization crashed: {last}"),
    })
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Splits `cores` into (streams, threads) pairs that use them all.
fn layouts(cores: usize) -> Vec<(usize, usize)> {
    (1..=cores)
        .filter(|s| cores.is_multiple_of(*s))
        .map(|s| (s, cores / s))
        .collect()
}

/// Every candidate of the plan (skipped ones included, with their reason).
/// The model's batch dimension.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Batch {
    /// Fixed at this size.
    Fixed(usize),
    /// Dynamic, with this nominal size.
    Dynamic(usize),
}

impl Batch {
    fn nominal(self) -> usize {
        match self {
            Batch::Fixed(n) | Batch::Dynamic(n) => n,
        }
    }
}

fn enumerate(plan: &TunePlan, batch: Batch) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut key = 0;
    let configs: Vec<(usize, usize, usize)> = match plan.objective {
        Objective::Latency => vec![(1, plan.cores, batch.nominal())],
        Objective::Throughput => {
            let batches = match batch {
                Batch::Dynamic(_) => plan.batches.clone(),
                Batch::Fixed(n) => vec![n],
            };
            layouts(plan.cores)
                .into_iter()
                .flat_map(|(s, t)| batches.iter().map(move |&b| (s, t, b)))
                .collect()
        }
    };
    for v in &plan.variants {
        for &b in &plan.backends {
            let mut precisions = vec![];
            if plan.fp32 || v.label != "fp32" {
                precisions.push(Precision::Fp32);
            }
            if b == BackendKind::OpenVino && plan.bf16 {
                precisions.push(Precision::Bf16);
            }
            for p in precisions {
                let isas: Vec<CpuIsa> = match (b, p) {
                    (BackendKind::OpenVino, Precision::Bf16) => plan.isas_bf16.clone(),
                    (BackendKind::OpenVino, _) if v.label != "fp32" => plan.isas_int8.clone(),
                    _ => vec![CpuIsa::Auto],
                };
                for isa in isas {
                    key += 1;
                    for &layout in &configs {
                        let mut c = Candidate::new(&v.label, &v.path, b, p, isa, layout, key);
                        if b == BackendKind::Tract && v.label != "fp32" {
                            c.out(
                                Status::Skipped,
                                "tract runs QDQ INT8 graphs slower than its own FP32 \
                                 (../shared/docs/runtimes.md)"
                                    .into(),
                            );
                        }
                        out.push(c);
                    }
                }
            }
        }
    }
    out
}

fn label(c: &Candidate) -> String {
    let isa = if c.isa == "auto" {
        String::new()
    } else {
        format!(" [{}]", c.isa)
    };
    let prec = if c.precision == Precision::Bf16 {
        " bf16"
    } else {
        ""
    };
    format!(
        "{} {}{prec}{isa} {}x{} b{}",
        c.backend, c.variant, c.streams, c.threads, c.batch
    )
}

/// A small deterministic generator for round orders (SplitMix64).
struct Order(u64);

impl Order {
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            v.swap(i, (z % (i as u64 + 1)) as usize);
        }
    }
}

/// Reads `dir/NNNNN.npy` in order.
fn read_outputs(dir: &Path, n: usize) -> Result<Vec<Tensor>, TuneError> {
    (0..n)
        .map(|i| Ok(medinfer_io::npy::read(&dir.join(format!("{i:05}.npy")))?))
        .collect()
}

/// The metric of `outputs` (1 = identical to the reference for the comparison metrics; the
/// mean AUC against labels for `auc`).
fn metric_of(
    metric: Metric,
    reference: &[Tensor],
    outputs: &[Tensor],
    labels: Option<&[Vec<f32>]>,
) -> Result<f64, TuneError> {
    if metric == Metric::Auc {
        let labels = labels.ok_or_else(|| TuneError::Bad("--metric auc needs --labels".into()))?;
        return medinfer_engine::calibrate::mean_auc(outputs, labels)?
            .ok_or_else(|| TuneError::Bad("auc: no label column has both classes".into()));
    }
    Ok(medinfer_engine::calibrate::score(
        metric, reference, outputs,
    )?)
}

/// The speed of a slice: requests per second for latency (from the median request, robust to
/// a stray slow one), items per second for throughput.
fn speed_of(objective: Objective, s: &worker::Slice) -> f64 {
    match objective {
        Objective::Latency => 1e3 / s.p50_ms.max(1e-6),
        Objective::Throughput => s.items as f64 / s.wall_s.max(1e-9),
    }
}

/// Paired rounds per screening stage, and the seconds of each timed slice there. Five, not
/// three: on a shared 2-core host one round's speeds move by up to 2x, and with three rounds
/// the exhaustive search's best throughput configuration missed the cut (1.05x the anchor
/// against the eighth's 1.06x) on two of three models (docs/benchmarks.md, 2026-12-05).
const SCREEN_ROUNDS: usize = 5;
const SCREEN_SLICE_S: f64 = 0.3;
/// Seconds of the warm-up right after a load (which also sizes the timed slices).
const WARM_UP_S: f64 = 0.2;
/// How much faster (median of paired rounds) a challenger must be to replace OpenVINO's INT8
/// defaults.
const DEFAULT_MARGIN: f64 = 0.01;
/// Most rounds the halving's final stage may run when the budget leaves room for more than the
/// schedule's.
const FINAL_ROUNDS_MAX: usize = 60;

/// What the paired rounds picked.
struct Picked {
    chosen: usize,
    runner_up: Option<usize>,
    /// Per-round speed ratios of the choice over the runner-up.
    ratios: Vec<f64>,
    anchor: Option<usize>,
}

/// Loads `members` side by side, each warmed up (its first requests, which also give its speed
/// alone where none is known yet); a failure takes that candidate out.
fn load_workers(
    plan: &TunePlan,
    cands: &mut [Candidate],
    members: &[usize],
    progress: Progress,
) -> HashMap<usize, Worker> {
    let mut workers = HashMap::new();
    for (done, &i) in members.iter().enumerate() {
        progress("loading", done, members.len());
        let log = plan.work.join(format!("rounds-{i}.log"));
        let warmed = Worker::spawn(
            &plan.exe,
            cands[i].isa_cap,
            &cands[i].spec(&plan.input_shapes),
            &log,
        )
        .and_then(|mut w| {
            let probe = w.time(1)?;
            let n = ((WARM_UP_S / probe.wall_s.max(1e-4)).ceil() as usize).clamp(2, 500);
            let s = w.time(n)?;
            Ok((w, s))
        });
        match warmed {
            Ok((w, s)) => {
                let c = &mut cands[i];
                c.load_ms.get_or_insert(w.ready.load_ms);
                c.loads += 1;
                c.effective_precision = w.ready.effective_precision.clone();
                c.screen_speed.get_or_insert(speed_of(plan.objective, &s));
                workers.insert(i, w);
            }
            Err(Failure::Crashed(m)) => cands[i].out(Status::Crashed, m),
            Err(Failure::Error(m)) => cands[i].out(Status::Failed, m),
        }
    }
    workers
}

/// Stops `members`' processes in `workers`, then loads them again in new ones (a failure takes
/// that candidate out, as at its first load).
fn reload(
    plan: &TunePlan,
    cands: &mut [Candidate],
    workers: &mut HashMap<usize, Worker>,
    members: &[usize],
    progress: Progress,
) {
    workers.clear();
    *workers = load_workers(plan, cands, members, progress);
}

/// Rounds of each of `loads` fresh loads that share `rounds` (the first ones take the
/// remainder); never an empty load.
fn load_segments(rounds: usize, loads: usize) -> Vec<usize> {
    let loads = loads.clamp(1, rounds.max(1));
    (0..loads)
        .map(|k| rounds * (k + 1) / loads - rounds * k / loads)
        .rev()
        .collect()
}

/// Seconds a fresh load of `members` costs, from their first loads (plus the warm-up).
fn reload_seconds(cands: &[Candidate], members: &[usize]) -> f64 {
    members
        .iter()
        .map(|&i| cands[i].load_ms.unwrap_or(1000.0) / 1e3 + 2.0 * WARM_UP_S)
        .sum()
}

/// Seconds per timed slice so that `total_slices` fit 80% of what is left of the budget
/// (0.1 to 1.5 s).
fn slice_seconds(plan: &TunePlan, total_slices: usize, notes: &mut Vec<String>) -> f64 {
    let left = plan
        .budget
        .saturating_sub(plan.started.elapsed())
        .as_secs_f64();
    if left <= 0.0 {
        notes.push(format!(
            "the budget was spent before the paired rounds ({:.0} s of {:.0} s); they ran with \
             the shortest slices",
            plan.started.elapsed().as_secs_f64(),
            plan.budget.as_secs_f64()
        ));
    }
    (0.8 * left / total_slices.max(1) as f64).clamp(0.1, 1.5)
}

/// One paired round: every member timed once, in a shuffled order; their speeds.
fn one_round(
    plan: &TunePlan,
    cands: &mut [Candidate],
    workers: &mut HashMap<usize, Worker>,
    members: &[usize],
    slice_s: f64,
    order: &mut Order,
) -> HashMap<usize, f64> {
    let mut seq = members.to_vec();
    order.shuffle(&mut seq);
    let mut speeds = HashMap::new();
    for i in seq {
        let Some(w) = workers.get_mut(&i) else {
            continue;
        };
        let per_request = match plan.objective {
            Objective::Latency => 1.0 / cands[i].screen_speed.unwrap_or(1.0),
            Objective::Throughput => cands[i].batch as f64 / cands[i].screen_speed.unwrap_or(1.0),
        };
        let n = ((slice_s / per_request.max(1e-6)).round() as usize).clamp(3, 2000);
        match w.time(n) {
            Ok(s) => {
                let v = speed_of(plan.objective, &s);
                let c = &mut cands[i];
                c.rounds.push(v);
                c.p50s.push(s.p50_ms);
                c.tputs.push(s.items as f64 / s.wall_s.max(1e-9));
                speeds.insert(i, v);
            }
            Err(Failure::Crashed(m)) => cands[i].out(Status::Crashed, m),
            Err(Failure::Error(m)) => cands[i].out(Status::Failed, m),
        }
    }
    workers.retain(|i, _| speeds.contains_key(i));
    speeds
}

/// Orders `v` by the median of each candidate's per-round speed over the anchor's, best first.
fn by_anchor_ratio(cands: &[Candidate], v: &mut [usize]) {
    v.sort_by(|&a, &b| {
        median(&cands[b].anchor_ratios)
            .unwrap_or(0.0)
            .total_cmp(&median(&cands[a].anchor_ratios).unwrap_or(0.0))
    });
}

/// Orders the halving's `v` best first: by the median of each one's per-round speed over the
/// defaults' in the same round when the defaults ride along (a busy spell on the host slows a
/// whole round, and the ratio cancels it), else by median speed.
fn rank(cands: &[Candidate], default: Option<usize>, v: &mut [usize]) {
    if default.is_some() {
        by_anchor_ratio(cands, v);
    } else {
        by_speed(cands, v);
    }
}

fn by_speed(cands: &[Candidate], v: &mut [usize]) {
    v.sort_by(|&a, &b| {
        cands[b]
            .speed()
            .unwrap_or(0.0)
            .total_cmp(&cands[a].speed().unwrap_or(0.0))
    });
}

/// OpenVINO's INT8 defaults among `pool`: the openvino INT8 layout, FP32 hint, no kernel cap,
/// the engine's default streams (latency: one stream on every core; throughput: one stream per
/// core) at the smallest batch there.
fn default_candidate(plan: &TunePlan, cands: &[Candidate], pool: &[usize]) -> Option<usize> {
    let layout = default_layout(plan, cands, pool);
    pool.iter().copied().find(|&i| {
        let c = &cands[i];
        c.backend == BackendKind::OpenVino
            && c.variant == "int8-openvino"
            && c.precision == Precision::Fp32
            && c.isa == "auto"
            && c.layout() == layout
    })
}

/// The engine's default layout (streams, threads, batch) among `pool`: latency one stream on
/// every core, throughput one stream per core, at the smallest batch there.
fn default_layout(plan: &TunePlan, cands: &[Candidate], pool: &[usize]) -> (usize, usize, usize) {
    let smallest = pool.iter().map(|&i| cands[i].batch).min().unwrap_or(1);
    match plan.objective {
        Objective::Latency => (1, plan.cores, smallest),
        Objective::Throughput => (plan.cores, 1, smallest),
    }
}

/// The screening's probes: each engine configuration (variant x engine x precision x ISA) at
/// the defaults' `layout` and, for throughput, at its widest layout too (most streams, then the
/// largest batch). One layout alone misranks configurations whose speed grows differently with
/// the batch: resnet50-fmri on Zen 4 ranked ONNX Runtime's INT8 first at batch 1, and OpenVINO's
/// INT8 layout with the BF16 hint, the exhaustive search's best at batch 8, fourth, so it was
/// never timed at batch 8 (2026-12-06).
fn probe_set(
    objective: Objective,
    cands: &[Candidate],
    live: &[usize],
    layout: (usize, usize, usize),
) -> Vec<usize> {
    let mut probes = Vec::new();
    let mut keys = Vec::new();
    for &i in live {
        let k = cands[i].key;
        if keys.contains(&k) {
            continue;
        }
        keys.push(k);
        let of_key: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&j| cands[j].key == k)
            .collect();
        let at = of_key
            .iter()
            .copied()
            .find(|&j| cands[j].layout() == layout)
            .unwrap_or(i);
        probes.push(at);
        if objective == Objective::Throughput {
            let widest = of_key
                .iter()
                .copied()
                .max_by_key(|&j| (cands[j].streams, cands[j].batch));
            if let Some(w) = widest.filter(|&w| w != at) {
                probes.push(w);
            }
        }
    }
    probes
}

/// Engine configurations best first, each with the best median ratio over the anchor among its
/// measured probes.
fn ranked_keys(cands: &[Candidate], probes: &[usize]) -> Vec<(usize, f64)> {
    let mut best: Vec<(usize, f64)> = Vec::new();
    for &i in probes {
        if cands[i].status != Status::Measured {
            continue;
        }
        let Some(r) = median(&cands[i].anchor_ratios) else {
            continue;
        };
        match best.iter_mut().find(|(k, _)| *k == cands[i].key) {
            Some(e) => e.1 = e.1.max(r),
            None => best.push((cands[i].key, r)),
        }
    }
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    best
}

/// Successive halving over the survivors of screening, all loaded side by side. OpenVINO's
/// INT8 defaults (when among them) ride along in every round and are never halved: the best
/// of the others becomes the choice only if it beats them in the median of their per-round
/// ratios, so a tune never deploys something slower than the default a user would pick.
/// Without that default, the last two are ordered the same way.
fn halving_rounds(
    plan: &TunePlan,
    cands: &mut [Candidate],
    alive: Vec<usize>,
    default: Option<usize>,
    order: &mut Order,
    notes: &mut Vec<String>,
    progress: Progress,
) -> Result<Picked, TuneError> {
    let mut workers = load_workers(plan, cands, &alive, progress);
    let default = default.filter(|d| workers.contains_key(d));
    let mut others: Vec<usize> = alive
        .into_iter()
        .filter(|i| workers.contains_key(i) && Some(*i) != default)
        .collect();
    let extra = usize::from(default.is_some());
    // Down to two challengers (the defaults ride along): the closest contest, between the two
    // best, gets the final stage's many rounds. With one challenger left, the final stage was
    // spent on its lead over the defaults (1.7x for resnet50-fmri throughput) while the two
    // best, 3 % apart, had been split after 21 rounds (2026-12-06).
    let stages = schedule(others.len(), 2);
    let total_slices: usize = stages.iter().map(|(n, r)| (n + extra) * r).sum();
    let slice_s = slice_seconds(plan, total_slices, notes);
    let total_rounds: usize = stages.iter().map(|(_, r)| r).sum::<usize>().max(6);
    let mut round_no = 0;
    let members =
        |others: &[usize]| -> Vec<usize> { others.iter().copied().chain(default).collect() };
    let stage_list = if stages.is_empty() {
        vec![(0, 6)]
    } else {
        stages.clone()
    };
    let mut total_rounds = total_rounds;
    for (stage, &(_, rounds)) in stage_list.iter().enumerate() {
        let mut rounds = rounds;
        let mut loads = 1;
        if stage + 1 == stage_list.len() {
            // The final stage takes what the budget has left (the near-equal configurations at
            // the top are told apart only by many paired rounds), up to FINAL_ROUNDS_MAX, over
            // `final_loads` fresh loads when the budget has room for the reloads.
            let mut left = plan
                .budget
                .saturating_sub(plan.started.elapsed())
                .as_secs_f64();
            let reload = reload_seconds(cands, &members(&others));
            loads = plan.final_loads.max(1);
            while loads > 1 && (loads - 1) as f64 * reload > 0.3 * left {
                loads -= 1;
            }
            if loads < plan.final_loads {
                notes.push(format!(
                    "the final rounds ran over {loads} load(s), not {}: the budget left no \
                     room for more reloads",
                    plan.final_loads
                ));
            }
            left -= (loads - 1) as f64 * reload;
            let per_round = members(&others).len() as f64 * slice_s * 1.15;
            let fit = (0.85 * left / per_round.max(1e-3)) as usize;
            let extra = fit.clamp(rounds, FINAL_ROUNDS_MAX.max(rounds)) - rounds;
            rounds += extra;
            total_rounds += extra;
        }
        for (load, segment) in load_segments(rounds, loads).into_iter().enumerate() {
            if load > 0 {
                // Every contender in a new process, so that no one load's luck decides.
                reload(plan, cands, &mut workers, &members(&others), progress);
                others.retain(|i| workers.contains_key(i));
            }
            for _ in 0..segment {
                progress("rounds", round_no, total_rounds);
                round_no += 1;
                let speeds =
                    one_round(plan, cands, &mut workers, &members(&others), slice_s, order);
                if let Some(&d) = default.and_then(|d| speeds.get(&d)) {
                    record_ratios(cands, &speeds, d);
                }
                others.retain(|i| workers.contains_key(i));
            }
        }
        if stage + 1 < stage_list.len() {
            let keep = stage_list[stage + 1].0.min(others.len());
            rank(cands, default, &mut others);
            for &i in &others[keep..] {
                let r = cands[i].rounds.len();
                cands[i].out(
                    Status::Halved,
                    format!("slower half after {r} paired rounds"),
                );
            }
            others.truncate(keep);
            workers.retain(|i, _| others.contains(i) || Some(*i) == default);
        }
    }
    progress("rounds", total_rounds, total_rounds);
    let default = default.filter(|d| workers.contains_key(d));
    drop(workers);
    rank(cands, default, &mut others);
    let (chosen, runner_up, ratios) = final_pick(cands, default, &mut others)?;
    Ok(Picked {
        chosen,
        runner_up,
        ratios,
        anchor: None,
    })
}

/// The halving's outcome from its survivors (`others`, ranked best first by their ratios over
/// the defaults, and the defaults): the choice, the runner-up and the choice's per-round speed
/// ratios over it (their shared last rounds).
fn final_pick(
    cands: &[Candidate],
    default: Option<usize>,
    others: &mut [usize],
) -> Result<(usize, Option<usize>, Vec<f64>), TuneError> {
    let pair = |a: usize, b: usize| -> Vec<f64> {
        // Both took part in the same (last) rounds, so their speeds pair up from the end.
        cands[a]
            .rounds
            .iter()
            .rev()
            .zip(cands[b].rounds.iter().rev())
            .map(|(x, y)| x / y.max(1e-12))
            .collect()
    };
    // The two best challengers: the faster median of their own paired rounds leads.
    if let (Some(&a), Some(&b)) = (others.first(), others.get(1)) {
        if median(&pair(a, b)).unwrap_or(1.0) < 1.0 {
            others.swap(0, 1);
        }
    }
    let (chosen, runner_up) = match (default, others.first().copied(), others.get(1).copied()) {
        // Against the defaults a challenger must be faster by DEFAULT_MARGIN in the median of
        // the paired rounds: a near-tie keeps the defaults (the simpler deployment, and the
        // exhaustive check measured a 1.002x tune winner at 0.987x). The runner-up is then the
        // closest contender: the second challenger, or the defaults when they win or are all.
        (Some(d), Some(best), second) => {
            if median(&pair(best, d)).unwrap_or(1.0) < 1.0 + DEFAULT_MARGIN {
                (d, Some(best))
            } else {
                (best, second.or(Some(d)))
            }
        }
        (Some(d), None, _) => (d, None),
        (None, Some(a), b) => (a, b),
        (None, None, _) => {
            return Err(TuneError::Bad(
                "every candidate failed during the timing rounds (see tune.json)".into(),
            ))
        }
    };
    let ratios = runner_up.map(|r| pair(chosen, r)).unwrap_or_default();
    Ok((chosen, runner_up, ratios))
}

/// Every candidate in paired rounds, in waves of at most `plan.wave` loaded side by side; the
/// anchor (OpenVINO's INT8 defaults where present) runs in every round of every wave, and each
/// candidate is ranked by the median of its per-round speed over the anchor's.
fn exhaustive_rounds(
    plan: &TunePlan,
    cands: &mut [Candidate],
    alive: &[usize],
    order: &mut Order,
    notes: &mut Vec<String>,
    progress: Progress,
) -> Result<Picked, TuneError> {
    let preference: Vec<usize> = default_candidate(plan, cands, alive)
        .into_iter()
        .chain(alive.iter().copied())
        .collect();
    let per_wave = plan.wave.max(2) - 1;
    let waves = alive.len().saturating_sub(1).div_ceil(per_wave).max(1);
    let rounds = plan.exhaustive_rounds.max(1);
    let final_rounds = if plan.final_rounds == 0 {
        rounds
    } else {
        plan.final_rounds
    };
    // Waves, then (when there was more than one, or the final is to run longer) a final wave of
    // the best of all waves, so the top of the ranking is not decided across waves (the host
    // drifts between them) nor by a few rounds.
    let finalists = if waves > 1 || final_rounds > rounds || !plan.final_with.is_empty() {
        if plan.finalists == 0 {
            per_wave
        } else {
            plan.finalists
        }
    } else {
        0
    };
    let joining = plan.final_with.len();
    let total_slices = (alive.len() + waves) * rounds + (finalists + joining + 1) * final_rounds;
    let slice_s = slice_seconds(plan, total_slices, notes);
    let anchor = anchored_rounds(
        plan,
        cands,
        &preference,
        alive,
        rounds,
        1,
        slice_s,
        order,
        progress,
    )?;
    let mut ranked: Vec<usize> = alive
        .iter()
        .copied()
        .filter(|&i| cands[i].status == Status::Measured && !cands[i].anchor_ratios.is_empty())
        .collect();
    if ranked.is_empty() {
        return Err(TuneError::Bad(
            "every candidate failed during the timing rounds (see tune.json)".into(),
        ));
    }
    by_anchor_ratio(cands, &mut ranked);
    if finalists > 0 {
        let mut last: Vec<usize> = ranked
            .iter()
            .copied()
            .filter(|&i| i != anchor)
            .take(finalists)
            .collect();
        let mut unknown = Vec::new();
        for l in &plan.final_with {
            match ranked.iter().find(|&&i| cands[i].label == *l) {
                Some(&i) if i != anchor && !last.contains(&i) => last.push(i),
                Some(_) => {}
                None => unknown.push(l.as_str()),
            }
        }
        if !unknown.is_empty() {
            notes.push(format!(
                "not among the timed candidates, so not in the final wave: {}",
                unknown.join(", ")
            ));
        }
        for &i in last.iter().chain([&anchor]) {
            let c = &mut cands[i];
            c.anchor_ratios.clear();
        }
        anchored_rounds(
            plan,
            cands,
            &[anchor],
            &last,
            final_rounds,
            plan.final_loads,
            slice_s,
            order,
            progress,
        )?;
        let mut top: Vec<usize> = last
            .iter()
            .copied()
            .chain([anchor])
            .filter(|&i| cands[i].status == Status::Measured)
            .collect();
        by_anchor_ratio(cands, &mut top);
        ranked.retain(|i| !top.contains(i));
        ranked.splice(0..0, top);
        notes.push(format!(
            "the best {} of the {waves} wave(s){} (and the anchor) ran a final wave of \
             {final_rounds} rounds over {} fresh load(s), which ranks them",
            last.len().min(finalists),
            if last.len() > finalists {
                format!(" and {} named with --final-with", last.len() - finalists)
            } else {
                String::new()
            },
            load_segments(final_rounds, plan.final_loads).len()
        ));
    }
    let chosen = ranked[0];
    let runner_up = ranked.get(1).copied();
    let ratios = runner_up
        .map(|r| {
            vec![
                median(&cands[chosen].anchor_ratios).unwrap_or(1.0)
                    / median(&cands[r].anchor_ratios).unwrap_or(1.0),
            ]
        })
        .unwrap_or_default();
    Ok(Picked {
        chosen,
        runner_up,
        ratios,
        anchor: Some(anchor),
    })
}

/// Paired rounds of `members` against an anchor, in waves of at most `plan.wave` loaded side
/// by side (the anchor stays loaded and runs in every round); each one's per-round speed over
/// the anchor's goes to its `anchor_ratios` (the anchor's own, 1, too). The anchor is the first
/// of `anchors` that loads (one that fails is out, with its reason); returns it. Each wave's
/// rounds are split over `loads` fresh loads of its members and the anchor.
#[allow(clippy::too_many_arguments)]
fn anchored_rounds(
    plan: &TunePlan,
    cands: &mut [Candidate],
    anchors: &[usize],
    members: &[usize],
    rounds: usize,
    loads: usize,
    slice_s: f64,
    order: &mut Order,
    progress: Progress,
) -> Result<usize, TuneError> {
    let mut anchor_worker = HashMap::new();
    let mut anchor = None;
    for &a in anchors {
        if !cands[a].status.can_anchor() {
            continue;
        }
        anchor_worker = load_workers(plan, cands, &[a], progress);
        if !anchor_worker.is_empty() {
            anchor = Some(a);
            break;
        }
    }
    let anchor = anchor.ok_or_else(|| {
        let tried: Vec<String> = anchors
            .iter()
            .map(|&a| {
                let c = &cands[a];
                format!(
                    "{}: {}",
                    c.label,
                    c.reason.as_deref().unwrap_or("not tried")
                )
            })
            .collect();
        TuneError::Bad(format!(
            "no candidate could be loaded as the anchor of the paired rounds ({})",
            tried.join("; ")
        ))
    })?;
    let others: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| i != anchor && cands[i].status == Status::Measured)
        .collect();
    let waves: Vec<&[usize]> = others.chunks(plan.wave.max(2) - 1).collect();
    let total_rounds = rounds * waves.len().max(1);
    let mut round_no = 0;
    let empty: [usize; 0] = [];
    let wave_list: Vec<&[usize]> = if waves.is_empty() {
        vec![&empty]
    } else {
        waves
    };
    for wave in wave_list {
        let mut workers = load_workers(plan, cands, wave, progress);
        if let Some(w) = anchor_worker.remove(&anchor) {
            workers.insert(anchor, w);
        }
        let mut members: Vec<usize> = wave
            .iter()
            .copied()
            .filter(|i| workers.contains_key(i))
            .collect();
        members.push(anchor);
        for (load, segment) in load_segments(rounds, loads).into_iter().enumerate() {
            if load > 0 {
                reload(plan, cands, &mut workers, &members, progress);
                members.retain(|i| workers.contains_key(i));
            }
            for _ in 0..segment {
                progress("rounds", round_no, total_rounds);
                round_no += 1;
                let speeds = one_round(plan, cands, &mut workers, &members, slice_s, order);
                let Some(&a) = speeds.get(&anchor) else {
                    return Err(TuneError::Bad(format!(
                        "the anchor candidate {} failed: {}",
                        cands[anchor].label,
                        cands[anchor].reason.clone().unwrap_or_default()
                    )));
                };
                record_ratios(cands, &speeds, a);
                members.retain(|i| workers.contains_key(i));
            }
        }
        if let Some(w) = workers.remove(&anchor) {
            anchor_worker.insert(anchor, w);
        }
    }
    progress("rounds", total_rounds, total_rounds);
    Ok(anchor)
}

/// Adds one round's speed of each candidate over the anchor's speed `anchor` (in the same round)
/// to its `anchor_ratios`.
fn record_ratios(cands: &mut [Candidate], speeds: &HashMap<usize, f64>, anchor: f64) {
    for (&i, &v) in speeds {
        cands[i].anchor_ratios.push(v / anchor.max(1e-12));
    }
}

/// Runs the tune: accuracy, screening, paired rounds. Nothing is written.
pub fn run(plan: &TunePlan, progress: Progress) -> Result<TuneOutcome, TuneError> {
    std::fs::create_dir_all(&plan.work).map_err(|e| TuneError::io(&plan.work, e))?;
    let fp32 = plan
        .variants
        .first()
        .ok_or_else(|| TuneError::Bad("no model to tune".into()))?;
    let info = medinfer_onnx::analyze(&medinfer_onnx::load_model(&fp32.path)?, Some(&[]));
    // A dynamic batch: latency requests at the model's nominal batch (`medinfer.default_batch`,
    // the size its pipeline sends, e.g. 8 component slices for the fMRI classifier), else 1;
    // throughput tries --batches. A fixed batch is what every request has.
    let batch = match info.inputs.first().and_then(|i| i.shape.first()) {
        Some(medinfer_onnx::Dim::Fixed(n)) => Batch::Fixed(*n),
        _ => Batch::Dynamic(
            info.metadata
                .get("medinfer.default_batch")
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .unwrap_or(1),
        ),
    };
    let mut notes = Vec::new();
    for (v, why) in &plan.missing_variants {
        notes.push(format!("{v}: {why}"));
    }
    let mut cands = enumerate(plan, batch);

    // 1. The FP32 reference: ONNX Runtime where present (exact FP32, fast), else OpenVINO in
    //    FP32, else tract.
    let reference_backend = [BackendKind::Ort, BackendKind::OpenVino, BackendKind::Tract]
        .into_iter()
        .find(|b| plan.backends.contains(b))
        .ok_or_else(|| TuneError::Bad("no engine to tune on".into()))?;
    let ref_spec = WorkerSpec {
        model: fp32.path.clone(),
        backend: reference_backend,
        precision: Precision::Fp32,
        streams: 1,
        threads: plan.cores,
        batch: 1,
        input_shapes: plan.input_shapes.clone(),
    };
    let ref_dir = plan.work.join("reference");
    let n_valid = Worker::spawn(
        &plan.exe,
        CpuIsa::Auto,
        &ref_spec,
        &plan.work.join("reference.log"),
    )
    .and_then(|mut w| w.validate(&plan.validate, plan.validate_samples, &ref_dir))
    .map_err(|f| {
        TuneError::Bad(format!(
            "the FP32 reference on {reference_backend} failed: {f}"
        ))
    })?;
    if n_valid == 0 {
        return Err(TuneError::Bad(format!(
            "{}: the validation set is empty",
            plan.validate.display()
        )));
    }
    let reference = read_outputs(&ref_dir, n_valid)?;
    let labels = plan.labels.as_deref().map(|l| &l[..l.len().min(n_valid)]);
    let ref_metric = metric_of(plan.metric, &reference, &reference, labels)?;

    // 2. Accuracy, once per (variant, engine, precision, ISA), in the candidate's process.
    let mut keys: Vec<usize> = cands
        .iter()
        .filter(|c| c.status != Status::Skipped)
        .map(|c| c.key)
        .collect();
    keys.dedup();
    for (done, &key) in keys.iter().enumerate() {
        progress("accuracy", done, keys.len());
        let first = cands.iter().position(|c| c.key == key).expect("key exists");
        let mut spec = cands[first].spec(&plan.input_shapes);
        (spec.streams, spec.threads, spec.batch) = (1, plan.cores, 1);
        let out_dir = plan.work.join(format!("valid-{key}"));
        let log = plan.work.join(format!("valid-{key}.log"));
        let result =
            Worker::spawn(&plan.exe, cands[first].isa_cap, &spec, &log).and_then(|mut w| {
                let n = w.validate(&plan.validate, n_valid, &out_dir)?;
                Ok((w.ready.clone(), n))
            });
        let verdict: Result<(worker::Ready, f64), (Status, String)> = match result {
            Ok((ready, n)) if n == n_valid => read_outputs(&out_dir, n)
                .and_then(|o| metric_of(plan.metric, &reference, &o, labels))
                .map(|m| (ready, m))
                .map_err(|e| (Status::Failed, e.to_string())),
            Ok((_, n)) => Err((
                Status::Failed,
                format!("ran {n} of {n_valid} validation samples"),
            )),
            Err(Failure::Crashed(m)) => Err((Status::Crashed, m)),
            Err(Failure::Error(m)) => Err((Status::Failed, m)),
        };
        for c in cands.iter_mut().filter(|c| c.key == key) {
            match &verdict {
                Ok((ready, m)) => {
                    c.metric = Some(*m);
                    c.drop = Some(ref_metric - m);
                    c.effective_precision = ready.effective_precision.clone();
                }
                Err((s, why)) => c.out(s.clone(), why.clone()),
            }
        }
    }
    progress("accuracy", keys.len(), keys.len());

    // The budget, or with --force the most accurate when nothing meets it.
    let measured: Vec<f64> = cands.iter().filter_map(|c| c.drop).collect();
    let within = |d: f64, limit: f64| d <= limit + 1e-12;
    let mut limit = plan.max_drop;
    let mut over_budget = false;
    if !measured.iter().any(|&d| within(d, limit)) {
        let best = measured.iter().copied().fold(f64::INFINITY, f64::min);
        let summary = if measured.is_empty() {
            "no candidate ran (see the reasons per candidate)".to_string()
        } else {
            format!(
                "the smallest {} drop measured is {best:.4}, the budget {:.4}",
                metric_name(plan.metric),
                plan.max_drop
            )
        };
        if !plan.force || measured.is_empty() {
            let reasons: Vec<String> = cands
                .iter()
                .filter(|c| c.reason.is_some() && c.status != Status::Skipped)
                .map(|c| format!("{}: {}", c.label, c.reason.clone().unwrap_or_default()))
                .take(4)
                .collect();
            let tail = if measured.is_empty() && !reasons.is_empty() {
                format!(" ({})", reasons.join("; "))
            } else {
                String::new()
            };
            return Err(TuneError::NothingMeetsBudget(format!("{summary}{tail}")));
        }
        notes.push(format!(
            "{summary}; --force: deploying among the most accurate candidates"
        ));
        limit = best;
        over_budget = true;
    }
    for c in cands.iter_mut() {
        if let Some(d) = c.drop {
            if !within(d, limit) {
                c.out(
                    Status::OverBudget,
                    format!(
                        "{} drop {d:.4} > budget {:.4}",
                        metric_name(plan.metric),
                        plan.max_drop
                    ),
                );
            }
        }
    }

    // 3. Paired screening. Every engine configuration (variant x engine x precision x ISA) at
    //    the defaults' layout and, for throughput, its widest layout ([`probe_set`]), in rounds
    //    anchored on OpenVINO's INT8 defaults; then every layout
    //    (streams x threads x batch) of the best few configurations, the same way. Loads are the
    //    cost (seconds each for an INT8 model on OpenVINO), so the layouts of a configuration
    //    that is slow at the defaults' layout are not loaded at all.
    let live: Vec<usize> = (0..cands.len())
        .filter(|&i| cands[i].status == Status::Measured)
        .collect();
    if live.is_empty() {
        return Err(TuneError::Bad(
            "every candidate within the budget failed to run (see tune.json for each reason)"
                .into(),
        ));
    }
    let mut order = Order(plan.seed ^ 0x5EED);
    // OpenVINO's INT8 defaults: the anchor of screening and the bar a choice must clear.
    let default = default_candidate(plan, &cands, &live);
    let alive: Vec<usize>;
    if plan.exhaustive {
        alive = live;
    } else {
        let layout = default_layout(plan, &cands, &live);
        let probes = probe_set(plan.objective, &cands, &live, layout);
        let preference: Vec<usize> = default.into_iter().chain(probes.clone()).collect();
        let anchor = anchored_rounds(
            plan,
            &mut cands,
            &preference,
            &probes,
            SCREEN_ROUNDS,
            1,
            SCREEN_SLICE_S,
            &mut order,
            progress,
        )?;
        let ranked = ranked_keys(&cands, &probes);
        let per_key = live
            .iter()
            .filter(|&&j| cands[j].key == cands[anchor].key)
            .count();
        let top_keys = (3 * plan.keep).div_ceil(per_key.max(1)).max(1);
        // The defaults' own engine configuration always has its other layouts screened: they
        // are a user's first alternatives, and a ranking at one layout within the host's noise
        // does not carry over to the others (the exhaustive search's best unet-cardiac
        // throughput configuration was the defaults' at batch 4, cut with its configuration).
        // It also keeps the defaults themselves in: before, a tune whose defaults' configuration
        // ranked fourth screened them out, and the halving ran without the bar a choice must
        // clear, so it could deploy something slower than them.
        let mut keys: Vec<usize> = ranked.iter().take(top_keys).map(|&(k, _)| k).collect();
        if let Some(d) = default.filter(|&d| !keys.contains(&cands[d].key)) {
            keys.push(cands[d].key);
        }
        let layouts_b: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| keys.contains(&cands[i].key) && !probes.contains(&i) && i != anchor)
            .collect();
        for &i in &live {
            if keys.contains(&cands[i].key) || cands[i].status != Status::Measured {
                continue;
            }
            let best = ranked
                .iter()
                .find(|&&(k, _)| k == cands[i].key)
                .map(|&(_, r)| r);
            let why = match (median(&cands[i].anchor_ratios), best) {
                (Some(r), Some(b)) => format!(
                    "paired screening: {r:.3}x the anchor; its engine configuration (best probe \
                     {b:.3}x) not among the best {top_keys}"
                ),
                _ => format!(
                    "not timed: its engine configuration was not among the best {top_keys} at \
                     the probe layouts"
                ),
            };
            cands[i].out(Status::Screened, why);
        }
        if !layouts_b.is_empty() {
            anchored_rounds(
                plan,
                &mut cands,
                &[anchor],
                &layouts_b,
                SCREEN_ROUNDS,
                1,
                SCREEN_SLICE_S,
                &mut order,
                progress,
            )?;
        }
        let mut contenders: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| cands[i].status == Status::Measured && Some(i) != default)
            .collect();
        by_anchor_ratio(&cands, &mut contenders);
        let default = default.filter(|&d| cands[d].status == Status::Measured);
        let slots = if default.is_some() {
            plan.keep - 1
        } else {
            plan.keep
        };
        let anchor_label = cands[anchor].label.clone();
        for &i in contenders.iter().skip(slots) {
            let r = median(&cands[i].anchor_ratios).unwrap_or(0.0);
            cands[i].out(
                Status::Screened,
                format!(
                    "paired screening: {r:.3}x the anchor ({anchor_label}), not in the top {}",
                    plan.keep
                ),
            );
        }
        contenders.truncate(slots);
        alive = default.into_iter().chain(contenders).collect();
        for &i in &alive {
            // The halving pairs its rounds from the end and ranks by its own ratios over the
            // defaults: screening rounds must not join them.
            cands[i].rounds.clear();
            cands[i].anchor_ratios.clear();
        }
    }

    // 4. Paired rounds: successive halving, or with --exhaustive every candidate.
    let picked = if plan.exhaustive {
        exhaustive_rounds(plan, &mut cands, &alive, &mut order, &mut notes, progress)?
    } else {
        let default = default.filter(|&d| cands[d].status == Status::Measured);
        halving_rounds(
            plan, &mut cands, alive, default, &mut order, &mut notes, progress,
        )?
    };
    let Picked {
        chosen,
        runner_up,
        ratios,
        anchor,
    } = picked;
    for c in cands.iter_mut() {
        if !c.p50s.is_empty() {
            c.latency_ms = median(&c.p50s);
            c.throughput_per_s = median(&c.tputs);
        }
        c.vs_anchor = median(&c.anchor_ratios);
    }
    // Per-round ratios exist only for the halving's final pair (an exhaustive search compares
    // through the anchor: one ratio of medians).
    let confidence = (anchor.is_none() && !ratios.is_empty()).then(|| {
        [
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        ]
    });
    let ratio_median = median(&ratios);
    cands[chosen].status = Status::Chosen;
    if let Some(r) = runner_up {
        cands[r].status = Status::RunnerUp;
    }
    let rounds = cands[chosen].rounds.len();
    if !plan.backends.contains(&BackendKind::Ort) || !plan.backends.contains(&BackendKind::OpenVino)
    {
        let missing: Vec<&str> = [BackendKind::Ort, BackendKind::OpenVino]
            .into_iter()
            .filter(|b| !plan.backends.contains(b))
            .map(|b| b.name())
            .collect();
        notes.push(format!(
            "not tuned on {} (not available here or not asked for; `medinfer runtimes install` \
             fetches the native engines)",
            missing.join(", ")
        ));
    }
    if plan.started.elapsed() > plan.budget {
        notes.push(format!(
            "the tune took {:.0} s, over its budget of {:.0} s",
            plan.started.elapsed().as_secs_f64(),
            plan.budget.as_secs_f64()
        ));
    }
    Ok(TuneOutcome {
        candidates: cands,
        chosen,
        runner_up,
        confidence,
        ratio_median,
        anchor,
        rounds,
        reference_backend,
        validation_samples: n_valid,
        metric: metric_name(plan.metric),
        max_drop: plan.max_drop,
        objective: plan.objective,
        over_budget,
        cpu: crate::cpu_model(),
        cores: plan.cores,
        elapsed_s: plan.started.elapsed().as_secs_f64(),
        notes,
    })
}

/// Stages of successive halving: (candidates, rounds) each. 3 rounds with all, then twice the
/// rounds with half as many, down to `floor` (2, or 1 when the default rides along), which get
/// at least 6.
fn schedule(n: usize, floor: usize) -> Vec<(usize, usize)> {
    if n == 0 {
        return vec![];
    }
    let floor = floor.max(1);
    if n <= floor {
        return vec![(n, 6)];
    }
    let mut out = vec![];
    let (mut k, mut r) = (n, 3);
    while k > floor {
        out.push((k, r));
        k = k.div_ceil(2);
        r *= 2;
    }
    out.push((k, r.max(6)));
    out
}

/// The metric's name as the command line writes it.
pub fn metric_name(m: Metric) -> String {
    match m {
        Metric::Top1 => "top1".into(),
        Metric::Cosine => "cosine".into(),
        Metric::Nmse => "nmse".into(),
        Metric::Dice => "dice".into(),
        Metric::Auc => "auc".into(),
        Metric::Iou(t) => format!("iou:{t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_schedule_ends_with_two_and_more_rounds() {
        assert_eq!(schedule(8, 2), vec![(8, 3), (4, 6), (2, 12)]);
        assert_eq!(schedule(5, 2), vec![(5, 3), (3, 6), (2, 12)]);
        assert_eq!(schedule(2, 2), vec![(2, 6)]);
        assert_eq!(schedule(1, 2), vec![(1, 6)]);
        assert_eq!(schedule(3, 1), vec![(3, 3), (2, 6), (1, 12)]);
        assert!(schedule(0, 2).is_empty());
    }

    /// resnet18-ct's throughput tune failed when the defaults' engine configuration was
    /// screened out of the best three: the rounds of the other layouts then had no anchor.
    #[test]
    fn a_screened_out_default_still_anchors_the_rounds() {
        for st in [
            Status::Screened,
            Status::Halved,
            Status::Measured,
            Status::RunnerUp,
        ] {
            assert!(st.can_anchor(), "{st:?}");
        }
        for st in [
            Status::Crashed,
            Status::Failed,
            Status::Skipped,
            Status::OverBudget,
        ] {
            assert!(!st.can_anchor(), "{st:?}");
        }
    }

    fn cand(key: usize, streams: usize, batch: usize, ratios: &[f64]) -> Candidate {
        let mut c = Candidate::new(
            "int8-portable",
            Path::new("m.onnx"),
            BackendKind::OpenVino,
            Precision::Fp32,
            CpuIsa::Auto,
            (streams, 2 / streams, batch),
            key,
        );
        c.anchor_ratios = ratios.to_vec();
        c
    }

    /// Throughput probes each engine configuration at the defaults' layout and at its widest,
    /// and a configuration that only wins at the large batch ranks by that (resnet50-fmri on
    /// Zen 4: fourth at batch 1, the best at batch 8).
    #[test]
    fn screening_probes_the_widest_layout_and_ranks_by_the_best_probe() {
        let mut cands = Vec::new();
        for key in [1, 2, 3] {
            for streams in [1, 2] {
                for batch in [1, 8] {
                    cands.push(cand(key, streams, batch, &[]));
                }
            }
        }
        let live: Vec<usize> = (0..cands.len()).collect();
        let at = |c: &Candidate| (c.key, c.streams, c.batch);
        let probes = probe_set(Objective::Throughput, &cands, &live, (2, 1, 1));
        let got: Vec<_> = probes.iter().map(|&i| at(&cands[i])).collect();
        assert_eq!(
            got,
            [
                (1, 2, 1),
                (1, 2, 8),
                (2, 2, 1),
                (2, 2, 8),
                (3, 2, 1),
                (3, 2, 8)
            ]
        );
        let lat = probe_set(Objective::Latency, &cands, &live, (1, 2, 1));
        let got: Vec<_> = lat.iter().map(|&i| at(&cands[i])).collect();
        assert_eq!(got, [(1, 1, 1), (2, 1, 1), (3, 1, 1)]);
        // Key 1 leads at batch 1, key 2 at batch 8; key 3's wide probe crashed.
        let ratios: [(usize, &[f64]); 6] = [
            (0, &[1.0, 1.0]),
            (1, &[1.3, 1.4, 1.35]),
            (2, &[0.9, 1.1, 1.0]),
            (3, &[2.3, 2.2, 2.4]),
            (4, &[1.2]),
            (5, &[9.0]),
        ];
        for (p, r) in ratios {
            cands[probes[p]].anchor_ratios = r.to_vec();
        }
        cands[probes[5]].status = Status::Crashed;
        let ranked = ranked_keys(&cands, &probes);
        assert_eq!(ranked, [(2, 2.3), (1, 1.35), (3, 1.2)]);
    }

    /// The final stage holds two challengers and the defaults: the faster of the two in their
    /// own paired rounds is chosen if it clears the defaults by the margin, and the other is
    /// the runner-up; a near-tie with the defaults keeps them.
    #[test]
    fn the_final_pick_orders_the_two_challengers_then_clears_the_defaults() {
        let mut cands = vec![cand(1, 2, 1, &[]), cand(2, 2, 8, &[]), cand(3, 2, 4, &[])];
        let (d, a, b) = (0, 1, 2);
        cands[d].rounds = vec![100.0; 9];
        // a leads b in 5 of the last 9 rounds though b has the faster single rounds.
        cands[a].rounds = vec![
            150.0, 150.0, 150.0, 150.0, 150.0, 149.0, 149.0, 149.0, 149.0,
        ];
        cands[b].rounds = vec![
            149.0, 149.0, 149.0, 149.0, 149.0, 190.0, 190.0, 190.0, 190.0,
        ];
        let mut others = vec![b, a];
        let (chosen, runner_up, ratios) = final_pick(&cands, Some(d), &mut others).unwrap();
        assert_eq!((chosen, runner_up), (a, Some(b)));
        assert_eq!(ratios.len(), 9);
        // Only 0.5 % over the defaults: they stay, the best challenger is the runner-up.
        cands[a].rounds = vec![100.5; 9];
        cands[b].rounds = vec![100.2; 9];
        let mut others = vec![a, b];
        let (chosen, runner_up, _) = final_pick(&cands, Some(d), &mut others).unwrap();
        assert_eq!((chosen, runner_up), (d, Some(a)));
        // One challenger, well ahead: the defaults are the runner-up.
        let mut others = vec![b];
        cands[b].rounds = vec![120.0; 9];
        let (chosen, runner_up, ratios) = final_pick(&cands, Some(d), &mut others).unwrap();
        assert_eq!((chosen, runner_up), (b, Some(d)));
        assert!(ratios.iter().all(|&r| (r - 1.2).abs() < 1e-12));
        // No defaults: the faster of the pair.
        let mut others = vec![a, b];
        let (chosen, runner_up, _) = final_pick(&cands, None, &mut others).unwrap();
        assert_eq!((chosen, runner_up), (b, Some(a)));
        assert!(final_pick(&cands, None, &mut []).is_err());
    }

    #[test]
    fn final_rounds_split_over_fresh_loads_without_an_empty_one() {
        assert_eq!(load_segments(40, 4), [10, 10, 10, 10]);
        assert_eq!(load_segments(10, 3), [4, 3, 3]);
        assert_eq!(load_segments(2, 3), [1, 1], "no load without rounds");
        assert_eq!(load_segments(7, 1), [7]);
        assert_eq!(load_segments(5, 0), [5]);
        assert_eq!(load_segments(0, 3), [0]);
    }

    #[test]
    fn layouts_use_every_core() {
        assert_eq!(layouts(2), vec![(1, 2), (2, 1)]);
        assert_eq!(layouts(4), vec![(1, 4), (2, 2), (4, 1)]);
        assert_eq!(layouts(1), vec![(1, 1)]);
    }

    #[test]
    fn median_and_shuffle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let mut v: Vec<usize> = (0..20).collect();
        Order(7).shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..20).collect::<Vec<_>>());
        assert_ne!(v, s, "a seeded shuffle of 20 items moves some");
    }
}
