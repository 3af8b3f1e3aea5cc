//! `medinfer`: run trained medical-imaging models on ordinary x86 CPUs, as fast as the
//! hardware allows. See `medinfer --help`.
//!
//! The binary is thin: this file holds the command tree and its dispatch; each subcommand lives
//! in `commands/<name>.rs` and only parses its arguments and prints what the library crates
//! return (the pipelines in `medinfer-pipelines`, benchmarks in `medinfer-bench`).

use anyhow::Result;
use clap::{Parser, Subcommand};
use medinfer_engine::CpuIsa;
use std::process::ExitCode;

mod args;
mod commands;

use commands::*;

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
    Runtimes(runtimes::RuntimesArgs),
    /// List or build the seeded reference models (untrained weights, for speed work).
    Zoo {
        #[command(subcommand)]
        command: zoo::ZooCommand,
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
    Infer(infer::InferArgs),
    /// Benchmark a model on one or more engine configurations, side by side.
    Bench(bench::BenchArgs),
    /// Describe image files or folders: DICOM series (how they assemble, which encodings),
    /// NIfTI, PNG, JPEG. Never prints patient-identifying attributes.
    Inspect(inspect::InspectArgs),
    /// Convert a DICOM series (or any supported image) to NIfTI, NPY or a PNG view.
    Convert(convert::ConvertArgs),
    /// Time image decoding and preprocessing (chest X-ray PNG to model input, CT series to a
    /// windowed volume), for docs/benchmarks.md and benchmarks/io.
    BenchIo(bench_io::BenchIoArgs),
    /// Optimise a model's graph: constant folding, batch-norm folding, identity / dropout
    /// removal, transpose and reshape merging, dead code. Prints node counts before and after.
    Optimize(optimize::OptimizeArgs),
    /// Quantize a model to INT8 (QDQ ONNX) with calibration data, bias correction and optional
    /// accuracy control.
    Quantize(quantize::QuantizeArgs),
    /// Synthetic exams with exact ground truth (the cardiac cine-MRI phantom) and the training
    /// patches made from them.
    Phantom {
        #[command(subcommand)]
        command: phantom::PhantomCommand,
    },
    /// Run a clinical pipeline end to end: files in, clinical numbers out.
    Run {
        #[command(subcommand)]
        command: RunCommand,
    },
    /// Generate a cardiac cine-MRI phantom exam, analyse it on the fastest available backend,
    /// and print the clinical numbers next to the exact ground truth.
    Demo(demo::DemoArgs),
    /// Benchmark a clinical pipeline end to end (read, preprocess, segment, quantify, write) on
    /// a phantom exam, per backend and precision, with the time of every stage.
    BenchPipeline(bench_pipeline::BenchPipelineArgs),
    /// Generate findings text from images with an encoder-decoder model (a Hugging Face
    /// VisionEncoderDecoder ONNX export): greedy or beam search, KV cache kept in the engine.
    Generate(generate::GenerateArgs),
    /// Time whole generations per engine (mean +- std over --runs, time to first token,
    /// ms per later token, tokens/s, peak RSS), as the published report-generation benchmark.
    BenchGenerate(generate::BenchGenerateArgs),
    /// Write a copy of a report-generation export with its decoders' matrix products in 8-bit
    /// weight-only form (MatMulNBits): a quarter of the bytes read per token.
    QuantizeWeights(generate::QuantizeWeightsArgs),
    /// Serve the models of a repository over HTTP: the Open Inference Protocol (KServe v2,
    /// JSON and binary tensors), dynamic batching, bounded queues (429 when full).
    Serve(serve::ServeArgs),
    /// Choose engine x precision (FP32 / BF16 / INT8 layouts) x kernel ISA x streams x batch
    /// for a model under an accuracy budget, by measurement on this machine (paired rounds,
    /// successive halving), and write the deployment that `run`, `bench` and `serve` take with
    /// --deploy.
    Tune(tune::TuneArgs),
    /// One tune candidate in its own process (internal; `medinfer tune` starts it).
    #[command(hide = true)]
    TuneWorker {
        /// The candidate as JSON.
        spec: String,
    },
}

/// The `--deploy` folder of a command that takes one.
fn deploy_dir(c: &Command) -> Option<&std::path::Path> {
    match c {
        Command::Bench(a) => a.deploy.as_deref(),
        Command::Serve(a) => a.deploy.as_deref(),
        Command::Run { command } => match command {
            RunCommand::Cardiac(a) => a.engine.deploy.as_deref(),
            RunCommand::Cxr(a) => a.engine.deploy.as_deref(),
            RunCommand::Ct(a) => a.engine.deploy.as_deref(),
            RunCommand::Fmri(a) => a.engine.deploy.as_deref(),
            RunCommand::Segment(a) => a.engine.deploy.as_deref(),
            RunCommand::Report(_) => None,
        },
        _ => None,
    }
}

/// The clinical pipelines (`medinfer run <pipeline>`); a new one is one variant here and one
/// `commands/run_<pipeline>.rs`.
#[derive(Subcommand)]
enum RunCommand {
    /// Cardiac cine-MRI: LV / RV volumes, ejection fractions and LV mass from a short-axis cine
    /// stack (4D NIfTI, or a DICOM cine series folder).
    Cardiac(run_cardiac::RunCardiacArgs),
    /// Chest X-ray multi-label classification (TorchXRayVision conventions) over files and
    /// folders, in batch: results in input order, per-file errors, resumable CSV.
    Cxr(run_cxr::RunCxrArgs),
    /// CT slice anatomy tagging: a body-region label per slice of a DICOM series and a
    /// per-series summary of the regions over slice ranges.
    Ct(run_ct::RunCtArgs),
    /// Resting-state fMRI: group ICA (MIGP + FastICA) and dual regression over a cohort of 4D
    /// NIfTI files: group z maps, every subject's t maps and time courses.
    Fmri(run_fmri::RunFmriArgs),
    /// 3-D segmentation of a CT / MRI volume (NIfTI or DICOM series) with your model:
    /// reorient, resample, normalise as its config says, MONAI-style sliding window, back to
    /// the input grid; a NIfTI mask, label volumes in ml and an overlay PNG.
    Segment(run_segment::RunSegmentArgs),
    /// Chest X-ray report generation: findings text from a radiograph with an encoder-decoder
    /// model (same as `medinfer generate`).
    Report(generate::GenerateArgs),
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

/// Hands freed heap memory back to the system. The tuned allocator keeps freed blocks for
/// reuse, and with work whose block sizes drift (the fMRI passes: one subject's volume and
/// matrices after another) that retained memory grew with the cohort while the live heap
/// stayed flat (heaptrack: 0.4 GB live at 16 subjects, RSS 0.6 -> 1.5 GB from 20 to 50
/// subjects with `--cache-mb 0`; 0.29 GB at both with this call between subjects). It costs
/// time (freed pages are faulted in again: 20 subjects cached 15 -> 20 s), so `run fmri` calls
/// it between subjects only when the cache is capped below its default.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_freed_memory() {
    // SAFETY: `malloc_trim` (malloc_trim(3)) only returns free heap pages to the kernel; it
    // takes an integer, touches no live allocation and is thread-safe (glibc locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// See the glibc version: nothing to do elsewhere.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed_memory() {}

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
    if let Some(dir) = deploy_dir(&cli.command) {
        // The deployment's kernel cap, like --cpu-isa (which wins when given), before any
        // engine loads; a CPU that lacks what it was tuned for is refused here.
        match medinfer_bench::tune::deploy::Deployment::load(dir) {
            Ok(d) if cli.cpu_isa.is_none() => {
                if let Err(e) = medinfer_engine::set_cpu_isa(d.isa) {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: --deploy {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
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
        Command::Runtimes(a) => runtimes::run(a),
        Command::Zoo { command } => zoo::run(command),
        Command::Info { model, json } => info::run(&model, json),
        Command::Infer(a) => infer::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::BenchIo(a) => bench_io::run(a),
        Command::Optimize(a) => optimize::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Phantom { command } => phantom::run(command),
        Command::Run { command } => match command {
            RunCommand::Cardiac(mut a) => {
                a.engine.apply_deploy()?;
                run_cardiac::run(a)
            }
            RunCommand::Cxr(mut a) => {
                a.engine.apply_deploy()?;
                run_cxr::run(a)
            }
            RunCommand::Ct(mut a) => {
                a.engine.apply_deploy()?;
                run_ct::run(a)
            }
            RunCommand::Fmri(mut a) => {
                a.engine.apply_deploy()?;
                run_fmri::run(a)
            }
            RunCommand::Segment(mut a) => {
                a.engine.apply_deploy()?;
                run_segment::run(a)
            }
            RunCommand::Report(a) => generate::run(a),
        },
        Command::Demo(a) => demo::run(a),
        Command::BenchPipeline(a) => bench_pipeline::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Generate(a) => generate::run(a),
        Command::BenchGenerate(a) => generate::bench(a),
        Command::QuantizeWeights(a) => generate::quantize_weights(a),
        Command::Tune(a) => tune::run(a),
        Command::TuneWorker { spec } => tune::worker(&spec),
    }
}
