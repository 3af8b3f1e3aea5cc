//! `medinfer bench`: a model on engine configurations side by side (backends, precisions,
//! modes, kernel ISAs).

use crate::args::{parse_list, print_json};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use medinfer_bench::{BenchConfig, BenchResult};
use medinfer_engine::{availability_all, runtimes, BackendKind, CpuIsa, Mode, Precision};
use medinfer_onnx::zoo;
use medinfer_pipelines::models;
use std::path::Path;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// ONNX file, or the name of a zoo model (built on the fly, e.g. densenet121-cxr).
    /// Not needed with --deploy.
    #[arg(required_unless_present = "deploy", default_value = "")]
    pub model: String,
    /// A deployment written by `medinfer tune` (its folder): benchmark exactly what it chose
    /// (model, engine, precision, kernel ISA, streams x threads, batch) and print it next to
    /// the figures the tune measured. Refused on a CPU that lacks what it was tuned for.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["isa", "int8"])]
    pub deploy: Option<PathBuf>,
    /// Backends, comma-separated (tract, ort, openvino), or `all` for every available one.
    #[arg(short, long, default_value = "all")]
    pub backend: String,
    /// Precisions, comma-separated: fp32 (true FP32), bf16 (OpenVINO on CPUs with AVX-512 BF16),
    /// int8 (the INT8 QDQ model given by --int8; for a zoo model without --int8, one quantized
    /// on the fly from 100 synthetic samples and cached). Combinations a backend cannot run are
    /// skipped with a note.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// The INT8 (QDQ) version of the model, written by `medinfer quantize`, for `--precision int8`.
    #[arg(long)]
    int8: Option<PathBuf>,
    /// Modes, comma-separated: latency (one request on all threads) and/or throughput
    /// (N streams x T threads, a request in flight on every stream).
    #[arg(long, default_value = "latency")]
    pub mode: String,
    /// Streams in throughput mode (default: usable cores / threads).
    #[arg(long)]
    pub streams: Option<usize>,
    /// Threads per stream (default: all usable cores in latency mode, 1 in throughput mode).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Batch size for a dynamic batch dimension (default: the model's nominal batch, else 1).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Full shape of an input with dynamic dimensions besides the batch, as NAME=1x3x640x640
    /// (or 1x3x640x640 for a one-input model); repeat for several inputs. Inputs are seeded
    /// random data of that shape.
    #[arg(long, value_name = "[NAME=]DIMS")]
    pub input_shape: Vec<String>,
    /// Timed requests per configuration, rounded up to a multiple of its streams so that no
    /// stream idles at the end of the timed window (the rows report the runs made).
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Untimed warm-up requests per configuration (after the first inference).
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Print a JSON array (one object per configuration) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the comparison as an SVG bar chart to this file.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Compare CPU instruction-set caps side by side (comma-separated, as for --cpu-isa, e.g.
    /// auto,avx512-vnni): every configuration runs once per cap, each cap in its own medinfer
    /// process (oneDNN reads its cap once per process). Only OpenVINO's kernels change.
    #[arg(long, value_name = "LIST")]
    pub isa: Option<String>,
}

fn file_sha256(path: &Path) -> Result<String> {
    runtimes::sha256_file(path).with_context(|| format!("reading {}", path.display()))
}

/// `bench --isa`: the same benchmark re-run by child processes of this binary, one per cap,
/// their JSON rows merged in order.
fn bench_per_isa(list: &str) -> Result<Vec<BenchResult>> {
    let isas = parse_list(list, "instruction set", CpuIsa::parse)?;
    if isas.is_empty() {
        bail!("--isa needs at least one instruction set");
    }
    // This invocation's own arguments minus the ones the parent handles.
    let mut forward = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let s = arg.to_string_lossy();
        let takes_value = ["--isa", "--cpu-isa", "--chart"].contains(&s.as_ref());
        if takes_value {
            args.next();
            continue;
        }
        if s == "--json"
            || ["--isa=", "--cpu-isa=", "--chart="]
                .iter()
                .any(|p| s.starts_with(p))
        {
            continue;
        }
        forward.push(arg);
    }
    let exe = std::env::current_exe().context("finding the medinfer executable")?;
    let mut results = Vec::new();
    for isa in isas {
        eprintln!("instruction set {isa}:");
        let out = std::process::Command::new(&exe)
            .arg("--cpu-isa")
            .arg(isa.name())
            .args(&forward)
            .arg("--json")
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!("the benchmark with --cpu-isa {isa} failed (its error is above)");
        }
        let rows: Vec<BenchResult> = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("reading the JSON of the --cpu-isa {isa} run"))?;
        results.extend(rows);
    }
    Ok(results)
}

/// `bench --deploy`: the deployment's one configuration.
fn bench_deploy(a: &BenchArgs, dir: &Path) -> Result<()> {
    let d = medinfer_bench::tune::deploy::Deployment::load(dir)
        .with_context(|| format!("--deploy {}", dir.display()))?;
    let sha = file_sha256(&d.model)?;
    let streams = a.streams.unwrap_or(d.streams());
    let cfg = BenchConfig {
        backend: d.backend,
        precision: d.precision,
        mode: Mode::for_streams(streams),
        streams: Some(streams),
        threads: a.threads.or(d.config.threads),
        batch: Some(a.batch.unwrap_or(d.batch())),
        input_shapes: d.config.input_shapes.clone(),
        runs: a.runs,
        warmup: a.warmup,
    };
    let bar = ProgressBar::new((1 + a.warmup + a.runs) as u64);
    let r = medinfer_bench::run(&d.model, &sha, &cfg, &|| bar.inc(1))
        .with_context(|| format!("benchmarking the deployment {}", dir.display()))?;
    bar.finish_and_clear();
    if let (false, Some(t)) = (a.json, &d.config.tuned) {
        println!(
            "deployment {}: {} (tuned on {}: {}{})",
            dir.display(),
            t.candidate,
            t.cpu,
            t.latency_ms
                .map(|m| format!("{m:.2} ms median"))
                .unwrap_or_default(),
            t.throughput_per_s
                .map(|v| format!(", {v:.1} items/s"))
                .unwrap_or_default(),
        );
    }
    report_bench(a, &[r], Some((&d.model, &sha)))
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(dir) = &a.deploy {
        return bench_deploy(&a, dir);
    }
    if let Some(list) = &a.isa {
        let results = bench_per_isa(list)?;
        return report_bench(&a, &results, None);
    }
    let path = models::resolve(&a.model)?;
    let sha = file_sha256(&path)?;
    // Validate the model before touching any engine: a clear error for non-ONNX files.
    let onnx = medinfer_onnx::load_model(&path)?;
    // analyze() re-encodes the model for its hash: only when there are shapes to check.
    let input_shapes = if a.input_shape.is_empty() {
        Default::default()
    } else {
        crate::args::input_shapes(&medinfer_onnx::analyze(&onnx, None), &a.input_shape)?
    };
    drop(onnx);
    let backends: Vec<BackendKind> = if a.backend.trim().eq_ignore_ascii_case("all") {
        let mut v = Vec::new();
        for av in availability_all() {
            if av.available {
                v.push(av.backend);
            } else {
                eprintln!(
                    "note: skipping {}: {} (fix: {})",
                    av.backend,
                    av.reason.unwrap_or_default(),
                    av.fix.unwrap_or_default()
                );
            }
        }
        v.reverse(); // tract (the embedded default) first: the speed-up baseline
        v
    } else {
        crate::args::available_backends(&a.backend)?
    };
    let (int8_items, float_list): (Vec<&str>, Vec<&str>) = a
        .precision
        .split(',')
        .partition(|p| p.trim().eq_ignore_ascii_case("int8"));
    let want_int8 = !int8_items.is_empty();
    let precisions = if float_list.is_empty() {
        vec![]
    } else {
        parse_list(&float_list.join(","), "precision", Precision::parse)?
    };
    let int8_path = if want_int8 {
        Some(match &a.int8 {
            Some(p) => {
                let m = medinfer_onnx::load_model(p)?;
                if !medinfer_onnx::analyze(&m, None).quantized {
                    bail!("{}: --int8 must be a quantized (QDQ) model; write one with `medinfer quantize`", p.display());
                }
                p.clone()
            }
            None if zoo::entry(&a.model).is_ok() => {
                models::zoo_int8(&a.model, &|note| eprintln!("{note}"))?
            }
            None => bail!(
                "--precision int8 needs --int8 FILE (the model quantized by `medinfer quantize`)"
            ),
        })
    } else {
        None
    };
    let modes = parse_list(&a.mode, "mode", Mode::parse)?;
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let config = |backend, precision, mode| BenchConfig {
        backend,
        precision,
        mode,
        streams: a.streams,
        threads: a.threads,
        batch: a.batch,
        input_shapes: input_shapes.clone(),
        runs: a.runs,
        warmup: a.warmup,
    };
    let mut configs = Vec::new();
    for &backend in &backends {
        for &precision in &precisions {
            if precision == Precision::Bf16 && backend != BackendKind::OpenVino {
                eprintln!("note: skipping {backend} bf16 (only OpenVINO computes in bf16 on CPU)");
                continue;
            }
            for &mode in &modes {
                configs.push(config(backend, precision, mode));
            }
        }
    }
    // INT8 rows run the quantized file (in FP32 mode for the parts left in floating point).
    let int8_start = configs.len();
    if int8_path.is_some() {
        for &backend in &backends {
            for &mode in &modes {
                configs.push(config(backend, Precision::Fp32, mode));
            }
        }
    }
    if configs.is_empty() {
        bail!("no configuration to run");
    }
    let int8_sha = match &int8_path {
        Some(p) => file_sha256(p)?,
        None => String::new(),
    };
    let bar = ProgressBar::new((configs.len() * (1 + a.warmup + a.runs)) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} requests  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results: Vec<BenchResult> = Vec::new();
    for (i, cfg) in configs.iter().enumerate() {
        let (file, file_sha) = match (&int8_path, i >= int8_start) {
            (Some(p), true) => (p, &int8_sha),
            _ => (&path, &sha),
        };
        bar.set_message(format!("{} {} {}", cfg.backend, cfg.precision, cfg.mode));
        let r = medinfer_bench::run(file, file_sha, cfg, &|| bar.inc(1)).with_context(|| {
            format!(
                "benchmarking {} on {} {} {}",
                file.display(),
                cfg.backend,
                cfg.precision,
                cfg.mode
            )
        })?;
        results.push(r);
    }
    bar.finish_and_clear();
    report_bench(&a, &results, Some((&path, &sha)))
}

/// The chart, JSON or table of a finished benchmark (`model`: the file and its sha256, when this
/// process ran it).
fn report_bench(
    a: &BenchArgs,
    results: &[BenchResult],
    model: Option<(&Path, &str)>,
) -> Result<()> {
    if let Some(chart) = &a.chart {
        let name = results.first().map(|r| r.model.clone()).unwrap_or_default();
        let title = format!("{name} on {} core(s)", medinfer_core::usable_cores());
        std::fs::write(chart, medinfer_bench::render_svg(&title, results))
            .with_context(|| format!("writing {}", chart.display()))?;
        eprintln!("chart written to {}", chart.display());
    }
    if a.json {
        return print_json(&results);
    }
    let (shown, sha) = match (model, results.first()) {
        (Some((p, sha)), _) => (p.display().to_string(), sha.to_string()),
        (None, Some(r)) => (r.model.clone(), r.model_sha256.clone()),
        (None, None) => (a.model.clone(), String::new()),
    };
    println!(
        "model {shown} (sha256 {}), {} usable core(s), {} runs asked (each row rounds them up to a multiple of its streams) after {} warm-up",
        &sha[..sha.len().min(16)],
        medinfer_core::usable_cores(),
        a.runs,
        a.warmup
    );
    print!("{}", medinfer_bench::render_table(results));
    for r in results {
        for n in &r.notes {
            println!("  {} {} {}: {n}", r.backend, r.effective_precision, r.mode);
        }
    }
    Ok(())
}
