//! `medinfer`: run trained medical-imaging models on ordinary x86 CPUs, as fast as the
//! hardware allows. See `medinfer --help`.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use medinfer_bench::{BenchConfig, BenchResult};
use medinfer_core::Tensor;
use medinfer_engine::{
    availability_all, runtimes, BackendKind, CpuIsa, Mode, Precision, SessionOptions,
};
use medinfer_onnx::zoo;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod cardiac;
mod cxr;
mod imaging;
mod quant;

#[derive(Parser)]
#[command(name = "medinfer", version, about = "Run trained medical-imaging models (ONNX) on CPUs through tract, ONNX Runtime or OpenVINO", long_about = None)]
struct Cli {
    /// Newest CPU instruction set OpenVINO's kernels may use, for every command: auto (all the
    /// CPU has), avx2, avx2-vnni, avx512, avx512-vnni, avx512-bf16, amx. On CPUs with AMX some
    /// INT8 models run faster on AVX-512 VNNI kernels (ResNet-50 at batch 8: 1.2x) and others
    /// slower (U-Nets); compare with `medinfer bench --isa auto,avx512-vnni`. Sets oneDNN's
    /// ONEDNN_MAX_CPU_ISA for this process; ONNX Runtime and tract ignore it. Default: leave the
    /// environment as it is.
    #[arg(long, global = true, value_name = "ISA", value_parser = parse_cpu_isa)]
    cpu_isa: Option<CpuIsa>,
    #[command(subcommand)]
    command: Command,
}

fn parse_cpu_isa(s: &str) -> std::result::Result<CpuIsa, String> {
    CpuIsa::parse(s).ok_or_else(|| {
        let names: Vec<&str> = CpuIsa::ALL.iter().map(|i| i.name()).collect();
        format!(
            "unknown instruction set '{s}' (one of {})",
            names.join(", ")
        )
    })
}

#[derive(Subcommand)]
enum Command {
    /// Show, install or verify the native engine libraries (ONNX Runtime, OpenVINO).
    Runtimes(RuntimesArgs),
    /// List or build the seeded reference models (untrained weights, for speed work).
    Zoo {
        #[command(subcommand)]
        command: ZooCommand,
    },
    /// Describe a model: inputs, outputs, opset, op histogram, parameters, MACs, size, sha256.
    Info {
        /// ONNX file, or the name of a zoo model.
        model: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a model on NPY tensors and write its outputs as NPY files.
    Infer(InferArgs),
    /// Benchmark a model on one or more engine configurations, side by side.
    Bench(BenchArgs),
    /// Describe image files or folders: DICOM series (how they assemble, which encodings),
    /// NIfTI, PNG, JPEG. Never prints patient-identifying attributes.
    Inspect(imaging::InspectArgs),
    /// Convert a DICOM series (or any supported image) to NIfTI, NPY or a PNG view.
    Convert(imaging::ConvertArgs),
    /// Time image decoding and preprocessing (chest X-ray PNG to model input, CT series to a
    /// windowed volume), for docs/benchmarks.md and benchmarks/io.
    BenchIo(imaging::BenchIoArgs),
    /// Optimise a model's graph: constant folding, batch-norm folding, identity / dropout
    /// removal, transpose and reshape merging, dead code. Prints node counts before and after.
    Optimize(quant::OptimizeArgs),
    /// Quantize a model to INT8 (QDQ ONNX) with calibration data, bias correction and optional
    /// accuracy control.
    Quantize(quant::QuantizeArgs),
    /// Synthetic exams with exact ground truth (the cardiac cine-MRI phantom) and the training
    /// patches made from them.
    Phantom {
        #[command(subcommand)]
        command: cardiac::PhantomCommand,
    },
    /// Run a clinical pipeline end to end: files in, clinical numbers out.
    Run {
        #[command(subcommand)]
        command: cardiac::RunCommand,
    },
    /// Generate a cardiac cine-MRI phantom exam, analyse it on the fastest available backend,
    /// and print the clinical numbers next to the exact ground truth.
    Demo(cardiac::DemoArgs),
    /// Benchmark a clinical pipeline end to end (read, preprocess, segment, quantify, write) on
    /// a phantom exam, per backend and precision, with the time of every stage.
    BenchPipeline(cardiac::BenchPipelineArgs),
}

#[derive(Args)]
struct RuntimesArgs {
    #[command(subcommand)]
    action: Option<RuntimesAction>,
    /// Print JSON instead of a table (when listing).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum RuntimesAction {
    /// Fetch the pinned onnxruntime and openvino wheels with pip and extract their libraries into
    /// $MEDINFER_HOME/runtimes (default ~/.cache/medinfer/runtimes).
    Install {
        /// Use wheels already downloaded into this folder instead of running pip.
        #[arg(long)]
        wheel_dir: Option<PathBuf>,
        /// Reinstall even if the pinned versions are present and intact.
        #[arg(long)]
        force: bool,
    },
    /// Re-hash the installed libraries against the checksums recorded at install time.
    Verify,
}

#[derive(Subcommand)]
enum ZooCommand {
    /// List the zoo models.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a zoo model into an ONNX file (byte-identical on every build).
    Build {
        /// Zoo model name (see `medinfer zoo list`).
        name: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Trained parameters instead of seeded ones: a folder with one NAME.npy (float32) per
        /// initializer of the graph (e.g. enc1.0.conv.weight.npy), as training/cardiac/train.py
        /// writes them. Missing, extra or wrongly sized parameters are an error.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// What the trained weights are (stored in the model's medinfer.weights metadata).
        #[arg(long, requires = "weights", default_value = "trained")]
        weights_note: String,
    },
    /// Write synthetic image-like input samples for a zoo model (calibration / validation data
    /// for speed work): one .npy per sample.
    Samples(quant::SamplesArgs),
}

#[derive(Args)]
struct InferArgs {
    /// ONNX file, or the name of a zoo model.
    model: String,
    /// An input as NAME=FILE.npy (repeat for several inputs); a model with one input also
    /// takes plain FILE.npy. The batch size is taken from the file's shape.
    #[arg(short, long = "input", required = true)]
    inputs: Vec<String>,
    /// Backend: tract, ort, openvino or auto (the fastest available).
    #[arg(short, long, default_value = "auto")]
    backend: String,
    /// Precision: fp32 or bf16 (bf16 on OpenVINO only).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Threads (default: every core this process may use).
    #[arg(long)]
    threads: Option<usize>,
    /// Folder for the outputs, one OUTPUT_NAME.npy per model output.
    #[arg(short, long)]
    output: PathBuf,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// ONNX file, or the name of a zoo model (built on the fly, e.g. densenet121-cxr).
    model: String,
    /// Backends, comma-separated (tract, ort, openvino), or `all` for every available one.
    #[arg(short, long, default_value = "all")]
    backend: String,
    /// Precisions, comma-separated: fp32 (true FP32), bf16 (OpenVINO on CPUs with AVX-512 BF16),
    /// int8 (the INT8 QDQ model given by --int8; for a zoo model without --int8, one quantized
    /// on the fly from 100 synthetic samples and cached). Combinations a backend cannot run are
    /// skipped with a note.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// The INT8 (QDQ) version of the model, written by `medinfer quantize`, for `--precision int8`.
    #[arg(long)]
    int8: Option<PathBuf>,
    /// Modes, comma-separated: latency (one request on all threads) and/or throughput
    /// (N streams x T threads, a request in flight on every stream).
    #[arg(long, default_value = "latency")]
    mode: String,
    /// Streams in throughput mode (default: usable cores / threads).
    #[arg(long)]
    streams: Option<usize>,
    /// Threads per stream (default: all usable cores in latency mode, 1 in throughput mode).
    #[arg(long)]
    threads: Option<usize>,
    /// Batch size for a dynamic batch dimension (default: the model's nominal batch, else 1).
    #[arg(long)]
    batch: Option<usize>,
    /// Timed requests per configuration.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Untimed warm-up requests per configuration (after the first inference).
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Print a JSON array (one object per configuration) instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the comparison as an SVG bar chart to this file.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Compare CPU instruction-set caps side by side (comma-separated, as for --cpu-isa, e.g.
    /// auto,avx512-vnni): every configuration runs once per cap, each cap in its own medinfer
    /// process (oneDNN reads its cap once per process). Only OpenVINO's kernels change.
    #[arg(long, value_name = "LIST")]
    isa: Option<String>,
}

/// Keeps freed image-sized blocks in the process instead of handing them back to the kernel.
///
/// glibc serves blocks above its mmap threshold (dynamic, 128 KiB to 32 MiB) with fresh `mmap`
/// pages and trims freed heap tops at once, so every decoded slice or radiograph was written
/// into newly faulted, kernel-zeroed pages: perf showed half of a CT series read in page faults
/// and `munmap`. Measured with `bench-io` (docs/benchmarks.md): a 300-slice CT read 575 -> 332
/// ms on one core, a 2000 x 2000 16-bit PNG decode + preprocess 59 -> 33 ms. Blocks up to 64 MiB
/// now come from the heap and up to 512 MiB of free heap top is kept for reuse.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: `mallopt` only sets glibc malloc parameters (M_MMAP_THRESHOLD = -3,
    // M_TRIM_THRESHOLD = -1, both documented in mallopt(3)); it takes plain integers, touches no
    // Rust-visible memory, and runs once at the start of `main` before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    // Output piped into `head` or `tail -0` must end the program quietly, as for any Unix tool,
    // instead of `println!` panicking on EPIPE: restore the default SIGPIPE action that the Rust
    // runtime replaces with "ignore".
    // SAFETY: `signal` with SIG_DFL installs no Rust handler and touches no Rust state; it runs
    // first thing in `main`, before any thread is spawned.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tune_allocator();
    let cli = Cli::parse();
    if let Some(isa) = cli.cpu_isa {
        // Still single-threaded here (clap spawns no threads), as set_cpu_isa requires.
        if let Err(e) = medinfer_engine::set_cpu_isa(isa) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole chain, outermost context first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Runtimes(a) => cmd_runtimes(a),
        Command::Zoo { command } => cmd_zoo(command),
        Command::Info { model, json } => cmd_info(&model, json),
        Command::Infer(a) => cmd_infer(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Inspect(a) => imaging::cmd_inspect(a),
        Command::Convert(a) => imaging::cmd_convert(a),
        Command::BenchIo(a) => imaging::cmd_bench_io(a),
        Command::Optimize(a) => quant::cmd_optimize(a),
        Command::Quantize(a) => quant::cmd_quantize(a),
        Command::Phantom { command } => cardiac::cmd_phantom(command),
        Command::Run { command } => cardiac::cmd_run(command),
        Command::Demo(a) => cardiac::cmd_demo(a),
        Command::BenchPipeline(a) => cardiac::cmd_bench_pipeline(a),
    }
}

/// Reads every NAME.npy in `dir` as float32 parameters keyed by NAME.
fn read_weights(dir: &Path) -> Result<HashMap<String, Vec<f32>>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".npy"))
        else {
            continue;
        };
        let t = medinfer_io::npy::read(&path)?;
        let v = t
            .as_f32()
            .with_context(|| format!("{}: parameters must be float32", path.display()))?
            .to_vec();
        out.insert(name.to_string(), v);
    }
    if out.is_empty() {
        bail!("{}: no .npy parameter files", dir.display());
    }
    Ok(out)
}

/// clap parser for counts that must be at least 1 (runs, batch sizes): 0 is refused with a
/// usage error before any work starts.
pub(crate) fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A model argument: an existing file, or a zoo name built (once) into the cache.
fn resolve_model(arg: &str) -> Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.exists() {
        return Ok(p);
    }
    if zoo::entry(arg).is_ok() {
        let dir = runtimes::home()
            .join("zoo")
            .join(medinfer_onnx::builder::ZOO_FORMAT);
        let file = dir.join(format!("{arg}.onnx"));
        if !file.exists() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            medinfer_onnx::save_model(&zoo::build(arg)?, &file)?;
        }
        return Ok(file);
    }
    bail!("{arg}: no such file, and no zoo model of that name (see `medinfer zoo list`)")
}

fn file_sha256(path: &Path) -> Result<String> {
    runtimes::sha256_file(path).with_context(|| format!("reading {}", path.display()))
}

fn cmd_runtimes(a: RuntimesArgs) -> Result<()> {
    match a.action {
        Some(RuntimesAction::Install { wheel_dir, force }) => {
            let opts = runtimes::InstallOptions { wheel_dir, force };
            let m = runtimes::install(&opts, &|line| eprintln!("{line}"))?;
            eprintln!("installed into {}", runtimes::runtimes_dir().display());
            for (name, rec) in [("onnxruntime", &m.onnxruntime), ("openvino", &m.openvino)] {
                if let Some(r) = rec {
                    eprintln!(
                        "  {name} {}: {} ({} files, sha256 {})",
                        r.version,
                        r.library,
                        r.files,
                        &r.library_sha256[..16]
                    );
                }
            }
            // Prove the libraries load.
            for av in availability_all() {
                if !av.available {
                    bail!(
                        "{} was installed but does not load: {}",
                        av.backend,
                        av.reason.unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        Some(RuntimesAction::Verify) => {
            let mut bad = 0;
            for (name, r) in runtimes::verify() {
                match r {
                    Ok(()) => println!("{name}: ok"),
                    Err(e) => {
                        bad += 1;
                        println!("{name}: {e}");
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} runtime(s) missing or altered");
            }
            Ok(())
        }
        None => {
            let all = availability_all();
            if a.json {
                return print_json(&all);
            }
            println!(
                "{:<9} {:<10} {:<12} {:<16} library / reason",
                "backend", "status", "version", "found via"
            );
            for av in all {
                let status = if av.available { "available" } else { "missing" };
                let detail = if av.available {
                    av.library
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(built in)".into())
                } else {
                    format!(
                        "{} (fix: {})",
                        av.reason.unwrap_or_default(),
                        av.fix.unwrap_or_default()
                    )
                };
                println!(
                    "{:<9} {:<10} {:<12} {:<16} {}",
                    av.backend.name(),
                    status,
                    av.version.unwrap_or_else(|| "-".into()),
                    av.source.unwrap_or_else(|| "-".into()),
                    detail
                );
            }
            println!("cache: {}", runtimes::runtimes_dir().display());
            Ok(())
        }
    }
}

fn cmd_zoo(c: ZooCommand) -> Result<()> {
    match c {
        ZooCommand::List { json } => {
            #[derive(Serialize)]
            struct Row<'a> {
                name: &'a str,
                description: &'a str,
                stands_for: &'a str,
                input_shape: [usize; 4],
            }
            let rows: Vec<Row> = zoo::ENTRIES
                .iter()
                .map(|e| Row {
                    name: e.name,
                    description: e.description,
                    stands_for: e.stands_for,
                    input_shape: e.input_shape,
                })
                .collect();
            if json {
                return print_json(&rows);
            }
            for r in rows {
                println!(
                    "{:<16} {:<18} {}",
                    r.name,
                    format!("{:?}", r.input_shape),
                    r.description
                );
            }
            println!("(batch is a dynamic dimension; the shape shows the nominal batch. Weights are seeded and untrained.)");
            Ok(())
        }
        ZooCommand::Samples(a) => quant::cmd_samples(a),
        ZooCommand::Build {
            name,
            output,
            weights,
            weights_note,
        } => {
            let m = match weights {
                None => zoo::build(&name)?,
                Some(dir) => zoo::build_trained(&name, read_weights(&dir)?, &weights_note)?,
            };
            medinfer_onnx::save_model(&m, &output)?;
            let info = medinfer_onnx::analyze(&m, None);
            eprintln!(
                "wrote {} ({:.1} MB, {} trainable parameters, sha256 {})",
                output.display(),
                info.file_size as f64 / 1e6,
                info.trainable_parameters,
                info.sha256
            );
            Ok(())
        }
    }
}

fn cmd_info(model: &str, json: bool) -> Result<()> {
    let path = resolve_model(model)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let m = medinfer_onnx::decode_model(&bytes, &path.display().to_string())?;
    let info = medinfer_onnx::analyze(&m, Some(&bytes));
    if json {
        return print_json(&info);
    }
    let shape = |v: &medinfer_onnx::ValueInfo| {
        format!(
            "{} {} [{}]",
            v.name,
            v.dtype,
            v.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    println!("model       {}", path.display());
    println!("sha256      {}", info.sha256);
    println!("size        {:.2} MB", info.file_size as f64 / 1e6);
    println!(
        "producer    {} (IR {}, opset {})",
        info.producer, info.ir_version, info.opset
    );
    for i in &info.inputs {
        println!("input       {}", shape(i));
    }
    for o in &info.outputs {
        println!("output      {}", shape(o));
    }
    println!(
        "parameters  {} trainable ({} initializer elements)",
        info.trainable_parameters, info.initializer_elements
    );
    match info.macs {
        Some(m) => println!(
            "MACs        {:.3} G at {:?}",
            m as f64 / 1e9,
            info.macs_input_shapes
        ),
        None => println!(
            "MACs        unknown (shapes not inferred past: {})",
            info.shape_inference_unknown_ops.join(", ")
        ),
    }
    println!(
        "quantized   {}",
        if info.quantized { "yes (QDQ)" } else { "no" }
    );
    println!("nodes       {}", info.nodes);
    for (op, n) in &info.op_histogram {
        println!("  {op:<24} {n}");
    }
    for (k, v) in &info.metadata {
        println!("meta        {k} = {v}");
    }
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn cmd_infer(a: InferArgs) -> Result<()> {
    let path = resolve_model(&a.model)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let m = medinfer_onnx::decode_model(&bytes, &path.display().to_string())?;
    let info = medinfer_onnx::analyze(&m, Some(&bytes));
    let mut given: HashMap<String, Tensor> = HashMap::new();
    for spec in &a.inputs {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) => (n.to_string(), f.to_string()),
            None if info.inputs.len() == 1 => (info.inputs[0].name.clone(), spec.clone()),
            None => bail!(
                "{spec}: the model has {} inputs; write NAME=FILE.npy",
                info.inputs.len()
            ),
        };
        if !info.inputs.iter().any(|i| i.name == name) {
            bail!(
                "the model has no input '{name}' (inputs: {})",
                info.inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        given.insert(name, medinfer_io::npy::read(Path::new(&file))?);
    }
    let mut ordered = Vec::new();
    let mut input_shapes = HashMap::new();
    for i in &info.inputs {
        let t = given.remove(&i.name).ok_or_else(|| {
            anyhow!(
                "missing input '{}' (give --input {}=FILE.npy)",
                i.name,
                i.name
            )
        })?;
        input_shapes.insert(i.name.clone(), t.shape().to_vec());
        ordered.push(t);
    }
    let opts = SessionOptions {
        precision: Precision::parse(&a.precision)
            .ok_or_else(|| anyhow!("unknown precision '{}' (fp32 or bf16)", a.precision))?,
        threads: a.threads,
        input_shapes,
        ..Default::default()
    };
    let session = medinfer_engine::load(&a.backend, &path, &opts)?;
    let t = std::time::Instant::now();
    let outputs = session.run(&ordered)?;
    let elapsed_ms = t.elapsed().as_secs_f64() * 1e3;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    #[derive(Serialize)]
    struct Out {
        name: String,
        file: PathBuf,
        dtype: String,
        shape: Vec<usize>,
        min: f64,
        max: f64,
        mean: f64,
    }
    let mut written = Vec::new();
    for (spec, t) in session.outputs().iter().zip(&outputs) {
        let file = a.output.join(format!("{}.npy", sanitize(&spec.name)));
        medinfer_io::npy::write(&file, t)?;
        let v = t.to_f64_vec();
        let (min, max) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        written.push(Out {
            name: spec.name.clone(),
            file,
            dtype: t.dtype().to_string(),
            shape: t.shape().to_vec(),
            min,
            max,
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
        });
    }
    if a.json {
        #[derive(Serialize)]
        struct Summary<'a> {
            model: String,
            model_sha256: String,
            session: &'a medinfer_engine::SessionInfo,
            inference_ms: f64,
            outputs: Vec<Out>,
        }
        return print_json(&Summary {
            model: path.display().to_string(),
            model_sha256: info.sha256,
            session: session.info(),
            inference_ms: elapsed_ms,
            outputs: written,
        });
    }
    let si = session.info();
    println!(
        "{} on {} {} ({}, {} thread(s)) in {elapsed_ms:.1} ms",
        path.display(),
        si.backend,
        si.backend_version,
        si.effective_precision,
        si.threads
    );
    for o in written {
        println!(
            "  {} {} {:?} -> {} (min {:.4}, max {:.4}, mean {:.4})",
            o.name,
            o.dtype,
            o.shape,
            o.file.display(),
            o.min,
            o.max,
            o.mean
        );
    }
    Ok(())
}

fn parse_list<T>(s: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| parse(x).ok_or_else(|| anyhow!("unknown {what} '{x}'")))
        .collect()
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

fn cmd_bench(a: BenchArgs) -> Result<()> {
    if let Some(list) = &a.isa {
        let results = bench_per_isa(list)?;
        return report_bench(&a, &results, None);
    }
    let path = resolve_model(&a.model)?;
    let sha = file_sha256(&path)?;
    // Validate the model before touching any engine: a clear error for non-ONNX files.
    medinfer_onnx::load_model(&path)?;
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
        let v = parse_list(&a.backend, "backend", BackendKind::parse)?;
        for k in &v {
            let av = medinfer_engine::backend(*k).availability();
            if !av.available {
                bail!(
                    "backend {k} is unavailable: {} (fix: {})",
                    av.reason.unwrap_or_default(),
                    av.fix.unwrap_or_default()
                );
            }
        }
        v
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
            None if zoo::entry(&a.model).is_ok() => quant::cached_zoo_int8(&a.model)?,
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
        "model {shown} (sha256 {}), {} usable core(s), {} runs after {} warm-up",
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
