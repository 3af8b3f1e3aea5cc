//! `medinfer tune`: choose engine x precision x INT8 layout x kernel ISA x streams x batch for a
//! model under an accuracy budget, by measurement here, and write the deployment.
//! The work is in `medinfer_bench::tune`; this file parses arguments, makes the INT8 variants
//! (by `medinfer quantize` in child processes) and prints.

use crate::args::{parse_list, print_json};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use medinfer_bench::tune::{self, Objective, TunePlan, Variant};
use medinfer_engine::calibrate::Metric;
use medinfer_engine::{BackendKind, CpuIsa};
use medinfer_pipelines::models;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct TuneArgs {
    /// FP32 ONNX file, or the name of a zoo model.
    pub model: String,
    /// Calibration data for the INT8 candidates (as for `medinfer quantize --calib`: .npy /
    /// .npz files or folders of INPUT_NAME.npy). Without it no INT8 candidate is made.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Validation data (same formats): every candidate's outputs on it are scored against the
    /// FP32 model's.
    #[arg(long)]
    pub validate: PathBuf,
    /// Validation samples used (the first ones in file-name order).
    #[arg(long, default_value_t = 100)]
    pub validate_samples: usize,
    /// Calibration samples for quantization (a shuffled subset).
    #[arg(long, default_value_t = 100)]
    pub calib_samples: usize,
    /// Accuracy metric against the FP32 outputs: top1, cosine, nmse, dice, iou[:T], or auc
    /// (with --labels). As for `medinfer quantize`.
    #[arg(long, default_value = "cosine")]
    pub metric: String,
    /// Ground-truth labels for --metric auc: an NPY (samples x labels), rows in validation
    /// file-name order.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Largest allowed drop of the metric against FP32 (FP32 scores 1; for auc, FP32's AUC
    /// minus the candidate's). Candidates over it are out, with their measured drop.
    #[arg(long, default_value_t = 0.005)]
    pub max_drop: f64,
    /// What to optimise: latency (median time of one request on every usable core, at the
    /// model's nominal batch: its `medinfer.default_batch` metadata, else 1) or throughput
    /// (items per second, streams x threads x batch).
    #[arg(long, default_value = "latency")]
    pub objective: String,
    /// Time budget of the whole tune, e.g. 90s, 10m, 1h (quantization included). The rounds
    /// of the final successive halving are sized to fit what is left after accuracy and the
    /// paired screening.
    #[arg(long, default_value = "10m")]
    pub budget: String,
    /// Output folder: the chosen model (1/model.onnx), config.json (a `medinfer serve` model
    /// config with the kernel ISA and the measured figures), tune.json, tune.md, tune.svg.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Engines to consider, comma-separated (default: every one available here).
    #[arg(long)]
    pub backends: Option<String>,
    /// Precisions to consider, comma-separated: fp32, bf16 (OpenVINO, on CPUs with BF16
    /// instructions), int8 (portable and openvino layouts, quantized here with accuracy
    /// control against the budget).
    #[arg(long, default_value = "fp32,bf16,int8")]
    pub precisions: String,
    /// OpenVINO kernel instruction-set caps to try for INT8 and BF16 candidates,
    /// comma-separated (as for --cpu-isa). Default: `auto` plus the next lower tier that
    /// changes the kernels: on an AMX CPU avx512-vnni for INT8 and avx512-bf16 for BF16; on
    /// an AVX-VNNI CPU without AVX-512, avx2 for INT8.
    #[arg(long)]
    pub isas: Option<String>,
    /// Batch sizes tried with --objective throughput (when the model's batch is dynamic).
    #[arg(long, default_value = "1,2,4,8")]
    pub batches: String,
    /// Full shape of an input with dynamic dimensions besides the batch, NAME=1x3x640x640;
    /// repeatable. Timing uses it; validation samples run at their own size.
    #[arg(long, value_name = "[NAME=]DIMS")]
    pub input_shape: Vec<String>,
    /// Candidates kept after the paired screening for the successive halving (OpenVINO's INT8
    /// defaults included); the layouts of the best ceil(3 x keep / layouts) engine
    /// configurations are screened.
    #[arg(long, default_value_t = 8)]
    pub keep: usize,
    /// Time every candidate within the budget in paired rounds, without pruning (the
    /// exhaustive search a tune is checked against; slow).
    #[arg(long)]
    pub exhaustive: bool,
    /// Paired rounds of --exhaustive.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Candidates loaded side by side at once, the anchor included (memory: a few hundred MB
    /// each for a DenseNet-121 on OpenVINO): in the paired screening, and with --exhaustive,
    /// whose best wave - 1 then run a final wave together. The anchor, OpenVINO's INT8
    /// defaults, runs in every round of every wave so that waves compare through it.
    #[arg(long, default_value_t = 12)]
    pub wave: usize,
    /// With --exhaustive: rounds of the final wave, where the best of all waves run together
    /// again and are ranked (default: --rounds). Near-equal configurations at the top are told
    /// apart only by many paired rounds on a noisy host.
    #[arg(long)]
    pub final_rounds: Option<usize>,
    /// With --exhaustive: how many of the best of the waves run the final wave (default:
    /// --wave - 1).
    #[arg(long)]
    pub finalists: Option<usize>,
    /// With --exhaustive: a candidate (its label as in tune.md, e.g. "openvino int8-openvino
    /// 2x1 b4") that joins the final wave whatever its rank in the waves; repeatable. The
    /// exhaustive check names the tune's own choice here, so the choice and the best are timed
    /// in the same rounds.
    #[arg(long, value_name = "LABEL")]
    pub final_with: Vec<String>,
    /// Fresh loads the final rounds are split over (the halving's final stage; with
    /// --exhaustive, the final wave): the contenders are started again in new processes
    /// between them. A configuration's speed moves a few percent from one process load to the
    /// next, as much as the top few differ, so rounds in one load alone rank the load too.
    /// 1 = no reload (fewer reloads run when the budget has no room for them).
    #[arg(long, default_value_t = 3)]
    pub final_loads: usize,
    /// When no candidate meets the budget, deploy among the most accurate anyway (marked
    /// over_budget in config.json). Without it nothing is written.
    #[arg(long)]
    pub force: bool,
    /// Seed of the round orders and the calibration subset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the outcome as JSON (every candidate) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `90s`, `10m`, `1h`, or plain seconds.
fn parse_budget(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1.0),
        Some('m') => (&s[..s.len() - 1], 60.0),
        Some('h') => (&s[..s.len() - 1], 3600.0),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .with_context(|| format!("--budget {s}: expected e.g. 90s, 10m or 1h"))?;
    Ok(Duration::from_secs_f64(v * mult))
}

pub fn run(a: TuneArgs) -> Result<()> {
    let started = Instant::now();
    if !a.exhaustive
        && (a.final_rounds.is_some() || a.finalists.is_some() || !a.final_with.is_empty())
    {
        bail!("--final-rounds, --finalists and --final-with shape the final wave of --exhaustive");
    }
    let path = models::resolve(&a.model)?;
    let onnx = medinfer_onnx::load_model(&path)?;
    let info = medinfer_onnx::analyze(&onnx, None);
    drop(onnx);
    if info.quantized {
        bail!(
            "{}: tune starts from the FP32 model (this one is already INT8); it makes the INT8 \
             versions itself",
            path.display()
        );
    }
    let input_shapes = crate::args::input_shapes(&info, &a.input_shape)?;
    let metric = Metric::parse(&a.metric).with_context(|| {
        format!(
            "--metric {}: choose top1, cosine, nmse, dice, iou[:T] or auc",
            a.metric
        )
    })?;
    if !(0.0..1.0).contains(&a.max_drop) {
        bail!("--max-drop {} must be in [0, 1)", a.max_drop);
    }

    let objective = Objective::parse(&a.objective)
        .with_context(|| format!("--objective {}: latency or throughput", a.objective))?;
    let budget = parse_budget(&a.budget)?;
    // The validation set is read here first, so an empty or unreadable one is refused before
    // anything is quantized.
    let slots =
        medinfer_pipelines::arrays::InputSlot::of_model(&info, &path.display().to_string())?;
    let n_valid = medinfer_pipelines::arrays::load(&a.validate, &slots)
        .with_context(|| format!("--validate {}", a.validate.display()))?
        .len();
    if n_valid == 0 || a.validate_samples == 0 {
        bail!(
            "--validate {}: the validation set is empty",
            a.validate.display()
        );
    }
    let labels = match (&a.labels, metric) {
        (Some(p), _) => Some(medinfer_pipelines::arrays::read_labels(p, n_valid)?),
        (None, Metric::Auc) => bail!("--metric auc needs --labels FILE.npy"),
        _ => None,
    };

    // Engines: those asked for, each available, else every available one.
    let mut notes = Vec::new();
    let backends: Vec<BackendKind> = match &a.backends {
        Some(list) => crate::args::available_backends(list)?,
        None => {
            let mut v = Vec::new();
            for av in medinfer_engine::availability_all() {
                if av.available {
                    v.push(av.backend);
                } else {
                    notes.push(format!(
                        "{} is not available ({}), so it is not tuned",
                        av.backend,
                        av.reason.unwrap_or_default()
                    ));
                }
            }
            v
        }
    };
    if backends == [BackendKind::Tract] && !a.json {
        eprintln!(
            "note: no native engine is available here, so only tract is tuned (`medinfer \
             runtimes install` fetches ONNX Runtime and OpenVINO)"
        );
    }
    let precisions: Vec<String> = a
        .precisions
        .split(',')
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    for p in &precisions {
        if !["fp32", "bf16", "int8"].contains(&p.as_str()) {
            bail!("--precisions: unknown precision '{p}' (fp32, bf16, int8)");
        }
    }
    let has_bf16 = medinfer_engine::cpu_flags().contains("avx512_bf16");
    let bf16 = precisions.iter().any(|p| p == "bf16")
        && backends.contains(&BackendKind::OpenVino)
        && has_bf16;
    if precisions.iter().any(|p| p == "bf16") && !has_bf16 {
        notes.push("bf16: this CPU has no BF16 instructions, so no bf16 candidate".into());
    }
    let (isas_int8, isas_bf16) = match &a.isas {
        Some(list) => {
            let v = parse_list(list, "instruction set", CpuIsa::parse)?;
            for i in &v {
                let missing = i.missing_here();
                if !missing.is_empty() {
                    bail!("--isas {i}: this CPU lacks {}", missing.join(", "));
                }
            }
            (v.clone(), v)
        }
        None => (CpuIsa::tiers_here(false), CpuIsa::tiers_here(true)),
    };
    let batches = parse_list(&a.batches, "batch size", |s| {
        s.parse::<usize>().ok().filter(|&b| b >= 1)
    })?;

    let work = tempfile::Builder::new()
        .prefix("medinfer-tune-")
        .tempdir()
        .context("creating a scratch folder")?;
    let exe = std::env::current_exe().context("finding the medinfer executable")?;
    let spinner = |msg: String| {
        let pb = if a.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        pb.set_message(msg);
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    };

    // INT8 variants, by `medinfer quantize` in child processes.
    let mut variants = vec![Variant {
        label: "fp32".into(),
        path: path.clone(),
    }];
    let mut missing = Vec::new();
    let int8_engines = backends.iter().any(|b| *b != BackendKind::Tract);
    if precisions.iter().any(|p| p == "int8") {
        match (&a.calib, int8_engines) {
            (None, _) => missing.push(("int8".to_string(), "no --calib data given".to_string())),
            (Some(_), false) => missing.push((
                "int8".to_string(),
                "only tract is available, and it runs INT8 graphs slower than FP32".to_string(),
            )),
            (Some(calib), true) => {
                let mut extra = Vec::new();
                if let Some(l) = &a.labels {
                    extra.push("--labels".to_string());
                    extra.push(l.display().to_string());
                }
                for s in &a.input_shape {
                    extra.push("--input-shape".to_string());
                    extra.push(s.clone());
                }
                extra.push("--seed".to_string());
                extra.push(a.seed.to_string());
                let mut targets = vec!["portable"];
                if backends.contains(&BackendKind::OpenVino) {
                    targets.push("openvino");
                }
                for target in targets {
                    let pb = spinner(format!("quantizing ({target} layout)"));
                    let out = work.path().join(format!("int8-{target}.onnx"));
                    match tune::quantize_variant(
                        &exe,
                        &path,
                        target,
                        calib,
                        a.calib_samples,
                        &a.validate,
                        a.validate_samples.min(n_valid),
                        &a.metric,
                        a.max_drop,
                        &extra,
                        &out,
                    ) {
                        Ok(v) => variants.push(v),
                        Err(why) => missing.push((format!("int8-{target}"), why)),
                    }
                    pb.finish_and_clear();
                }
            }
        }
    }
    let plan = TunePlan {
        exe,
        work: work.path().join("run"),
        variants,
        missing_variants: missing,
        validate: a.validate.clone(),
        validate_samples: a.validate_samples.min(n_valid),
        metric,
        labels,
        max_drop: a.max_drop,
        objective,
        budget,
        started,
        backends,
        fp32: precisions.iter().any(|p| p == "fp32"),
        bf16,
        isas_int8,
        isas_bf16,
        cores: medinfer_core::usable_cores(),
        batches,
        input_shapes: input_shapes.clone(),
        exhaustive: a.exhaustive,
        exhaustive_rounds: a.rounds.max(1),
        final_rounds: a.final_rounds.unwrap_or(0),
        finalists: a.finalists.unwrap_or(0),
        final_with: a.final_with.clone(),
        final_loads: a.final_loads.max(1),
        force: a.force,
        keep: a.keep.max(2),
        wave: a.wave.max(2),
        seed: a.seed,
    };
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(1);
        pb.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} [{elapsed_precise}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb
    };
    let progress = |stage: &str, done: usize, total: usize| {
        bar.set_message(stage.to_string());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let mut outcome = tune::run(&plan, &progress)?;
    bar.finish_and_clear();
    notes.append(&mut outcome.notes);
    outcome.notes = notes;
    tune::deploy::write(&outcome, &input_shapes, &a.output)
        .with_context(|| format!("writing the deployment to {}", a.output.display()))?;
    if a.json {
        return print_json(&outcome);
    }
    print!("{}", tune::render_markdown(&outcome));
    println!(
        "\nDeployment written to {} (config.json, 1/model.onnx, tune.md, tune.svg); use it with \
         `medinfer bench --deploy {0}`, `medinfer run ... --deploy {0}` or `medinfer serve \
         --deploy {0}`.",
        a.output.display()
    );
    Ok(())
}

/// `medinfer tune-worker SPEC` (internal): one candidate in its own process.
pub fn worker(spec: &str) -> Result<()> {
    let spec: tune::worker::WorkerSpec =
        serde_json::from_str(spec).context("tune-worker: the spec is not valid JSON")?;
    tune::worker::serve_worker(&spec)?;
    Ok(())
}
