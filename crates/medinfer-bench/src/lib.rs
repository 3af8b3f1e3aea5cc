//! # medinfer-bench
//!
//! Measures a model on one engine configuration the way the published deployments were judged:
//! load (compile) time, first inference, warm-up, then `runs` timed requests, either one after
//! another on all threads (latency mode) or with a request in flight on every stream
//! (throughput mode). Reports latency mean / std / min / p50 / p90 / p99 / max, items per second
//! and peak resident memory. [`render_table`] and [`render_svg`] present several configurations
//! side by side with speed-ups against the first.
#![warn(missing_docs)]
#![deny(unsafe_code)]

mod chart;
pub mod pipeline;
mod rss;
pub mod tune;

pub use chart::render_svg;
pub use rss::{peak_rss_mb, reset_peak_rss};

use medinfer_core::SeededRng;
use medinfer_core::Tensor;
use medinfer_engine::{load_on, BackendKind, EngineError, Mode, Precision, SessionOptions};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// One configuration to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Backend.
    pub backend: BackendKind,
    /// Precision.
    pub precision: Precision,
    /// Mode.
    pub mode: Mode,
    /// Streams (throughput mode), automatic when `None`.
    pub streams: Option<usize>,
    /// Threads per stream, automatic when `None`.
    pub threads: Option<usize>,
    /// Batch size for a dynamic batch dimension, the model's default when `None`.
    pub batch: Option<usize>,
    /// Full shapes of inputs by name, for models with dynamic dimensions other than the batch
    /// (a detector's height and width); they override `batch` for those inputs.
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Timed requests.
    pub runs: usize,
    /// Untimed warm-up requests (after the first inference).
    pub warmup: usize,
}

/// Latency statistics in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LatencyStats {
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Minimum.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// Result of one configuration; the JSON keys are part of medinfer's interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    /// Model file name.
    pub model: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// Backend.
    pub backend: BackendKind,
    /// Backend version.
    pub backend_version: String,
    /// Precision requested.
    pub precision: Precision,
    /// Precision the engine reports it ran with.
    pub effective_precision: String,
    /// Mode.
    pub mode: Mode,
    /// Batch size (items per request).
    pub batch: usize,
    /// The shape of every input as run, by name.
    #[serde(default)]
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Streams.
    pub streams: usize,
    /// Threads per stream.
    pub threads: usize,
    /// Timed requests.
    pub runs: usize,
    /// Warm-up requests.
    pub warmup: usize,
    /// Load + compile time.
    pub load_ms: f64,
    /// First inference after loading.
    pub first_inference_ms: f64,
    /// Per-request latency.
    pub latency_ms: LatencyStats,
    /// Items per second (batch x requests per second).
    pub throughput_per_s: f64,
    /// Peak resident memory of the process during this configuration.
    pub peak_rss_mb: f64,
    /// OpenVINO rows: the instruction-set cap its kernels ran under (`auto` = none, else
    /// oneDNN's name, e.g. `AVX512_CORE_VNNI`; see `medinfer --cpu-isa`). Other engines: null.
    pub cpu_isa: Option<String>,
    /// Engine facts read back after compilation.
    pub notes: Vec<String>,
}

impl BenchResult {
    /// ` [CAP]` for a row that ran under an instruction-set cap, else empty (table and chart).
    pub fn isa_label(&self) -> String {
        match self.cpu_isa.as_deref() {
            Some(cap) if cap != "auto" => format!(" [{cap}]"),
            _ => String::new(),
        }
    }
}

/// Latency statistics of samples in milliseconds (nearest-rank percentiles).
pub fn latency_stats(samples: &[f64]) -> LatencyStats {
    if samples.is_empty() {
        return LatencyStats {
            mean: 0.0,
            std: 0.0,
            min: 0.0,
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            max: 0.0,
        };
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len() as f64;
    let mean = s.iter().sum::<f64>() / n;
    let std = (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let pct = |p: f64| s[(((p / 100.0) * n).ceil() as usize).clamp(1, s.len()) - 1];
    LatencyStats {
        mean,
        std,
        min: s[0],
        p50: pct(50.0),
        p90: pct(90.0),
        p99: pct(99.0),
        max: s[s.len() - 1],
    }
}

/// Seeded standard-normal inputs matching a session's inputs (integer inputs get zeros).
pub fn seeded_inputs(specs: &[medinfer_engine::TensorSpec], seed: u64) -> Vec<Tensor> {
    let mut r = SeededRng::new(seed);
    specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            if s.dtype == medinfer_core::DType::F32 {
                Tensor::from_f32(s.shape.clone(), (0..n).map(|_| r.normal() as f32).collect())
            } else {
                Tensor::zeros(s.dtype, s.shape.clone())
            }
            .expect("shape from a loaded session")
        })
        .collect()
}

/// Runs `count` requests on `session`, handed out from one counter to its `streams` client
/// threads (1 in latency mode) so every stream always has a request in flight; `tick` after
/// each. Returns each request's milliseconds (when `record`) and the wall seconds of all.
pub(crate) fn drive_requests(
    session: &medinfer_engine::Session,
    inputs: &[Tensor],
    count: usize,
    record: bool,
    tick: &(dyn Fn() + Sync),
) -> Result<(Vec<f64>, f64), EngineError> {
    let streams = session.info().streams.max(1);
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(count));
    let failure: Mutex<Option<EngineError>> = Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..streams {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let t = Instant::now();
                    if let Err(e) = session.run(inputs) {
                        failure
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        next.store(count, Ordering::Relaxed);
                        return;
                    }
                    if record {
                        samples
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(ms(t));
                    }
                    tick();
                }
            });
        }
    });
    let wall = start.elapsed().as_secs_f64();
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok((
        samples.into_inner().unwrap_or_else(|p| p.into_inner()),
        wall,
    ))
}

/// Measures one configuration. `tick` is called once per finished request (warm-up included),
/// for progress bars.
pub fn run(
    model: &Path,
    model_sha256: &str,
    cfg: &BenchConfig,
    tick: &(dyn Fn() + Sync),
) -> Result<BenchResult, EngineError> {
    reset_peak_rss();
    let opts = SessionOptions {
        precision: cfg.precision,
        mode: cfg.mode,
        streams: cfg.streams,
        threads: cfg.threads,
        batch: cfg.batch,
        input_shapes: cfg.input_shapes.clone(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let session = load_on(cfg.backend, model, &opts)?;
    let load_ms = ms(t0);
    let inputs = seeded_inputs(session.inputs(), 1);
    let input_shapes: BTreeMap<String, Vec<usize>> = session
        .inputs()
        .iter()
        .map(|i| (i.name.clone(), i.shape.clone()))
        .collect();
    let t1 = Instant::now();
    session.run(&inputs)?;
    let first_inference_ms = ms(t1);
    tick();
    let info = session.info().clone();
    let drive = |count: usize, record: bool| drive_requests(&session, &inputs, count, record, tick);
    drive(cfg.warmup, false)?;
    // Timed runs are a multiple of the streams: with an odd count on two streams the last
    // request runs alone while the other stream idles, and throughput reads low by about
    // 1 / (runs + 1) (the bias the tune's slices had, 2026-12-06). The rows report the runs made.
    let runs = timed_runs(cfg.runs, info.streams);
    let (samples, wall) = drive(runs, true)?;
    let batch = session
        .inputs()
        .first()
        .and_then(|s| s.shape.first().copied())
        .unwrap_or(1);
    let model_name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(BenchResult {
        model: model_name,
        model_sha256: model_sha256.to_string(),
        backend: info.backend,
        backend_version: info.backend_version,
        precision: info.precision,
        effective_precision: info.effective_precision,
        mode: info.mode,
        batch,
        input_shapes,
        streams: info.streams,
        threads: info.threads,
        runs,
        warmup: cfg.warmup,
        load_ms,
        first_inference_ms,
        latency_ms: latency_stats(&samples),
        throughput_per_s: if wall > 0.0 {
            (batch * runs) as f64 / wall
        } else {
            0.0
        },
        peak_rss_mb: peak_rss_mb(),
        cpu_isa: (info.backend == BackendKind::OpenVino)
            .then(|| medinfer_engine::cpu_isa_cap().unwrap_or_else(|| "auto".into())),
        notes: info.notes,
    })
}

/// The timed request count for `asked` runs over `streams` streams: rounded up to a multiple of
/// the streams, so that every stream is busy until the end of the timed window.
pub fn timed_runs(asked: usize, streams: usize) -> usize {
    asked.max(1).div_ceil(streams.max(1)) * streams.max(1)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A plain-text table of results, with speed-ups against the first row.
pub fn render_table(results: &[BenchResult]) -> String {
    let header = [
        "backend",
        "precision",
        "mode",
        "batch",
        "streams x thr",
        "load ms",
        "first ms",
        "mean ms",
        "std",
        "p50",
        "p90",
        "p99",
        "items/s",
        "speed-up",
        "RSS MB",
    ];
    let base = results.first().map(|r| r.throughput_per_s).unwrap_or(1.0);
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                format!("{} {}{}", r.backend, r.backend_version, r.isa_label()),
                r.effective_precision.clone(),
                r.mode.to_string(),
                r.batch.to_string(),
                format!("{} x {}", r.streams, r.threads),
                format!("{:.0}", r.load_ms),
                format!("{:.1}", r.first_inference_ms),
                format!("{:.2}", r.latency_ms.mean),
                format!("{:.2}", r.latency_ms.std),
                format!("{:.2}", r.latency_ms.p50),
                format!("{:.2}", r.latency_ms.p90),
                format!("{:.2}", r.latency_ms.p99),
                format!("{:.1}", r.throughput_per_s),
                format!("{:.2}x", r.throughput_per_s / base.max(f64::MIN_POSITIVE)),
                format!("{:.0}", r.peak_rss_mb),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < 3 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// The CPU this process runs on, as `/proc/cpuinfo` names it (model name, family / model
/// numbers, the SIMD extensions that matter to the engines), for every figure's caption.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|n| n.trim() == k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let ext: Vec<&str> = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    format!(
        "{} (family {} model {}; {}; {} usable cores)",
        field("model name"),
        field("cpu family"),
        field("model"),
        ext.join(" "),
        medinfer_core::usable_cores()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(|i| i as f64).collect();
        let st = latency_stats(&s);
        assert_eq!(
            (st.min, st.p50, st.p90, st.p99, st.max),
            (1.0, 50.0, 90.0, 99.0, 100.0)
        );
        assert!((st.mean - 50.5).abs() < 1e-12);
        // Population std of 1..=100 is sqrt((100^2 - 1) / 12).
        assert!((st.std - (9999.0f64 / 12.0).sqrt()).abs() < 1e-9);
        let one = latency_stats(&[3.0]);
        assert_eq!((one.p50, one.p99, one.std), (3.0, 3.0, 0.0));
    }

    #[test]
    fn timed_runs_fill_every_stream() {
        assert_eq!(timed_runs(100, 1), 100);
        assert_eq!(timed_runs(5, 2), 6);
        assert_eq!(timed_runs(4, 3), 6);
        assert_eq!(timed_runs(0, 2), 2);
        assert_eq!(timed_runs(7, 0), 7);
    }

    /// A throughput run on 3 streams asked for 4 runs makes 6 and says so; its throughput counts
    /// the 6 (tract, the zoo's ResNet-18).
    #[test]
    fn a_throughput_run_reports_the_runs_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        medinfer_onnx::save_model(&medinfer_onnx::zoo::build("resnet18-ct").unwrap(), &model)
            .unwrap();
        let cfg = BenchConfig {
            backend: BackendKind::Tract,
            precision: Precision::Fp32,
            mode: Mode::Throughput,
            streams: Some(3),
            threads: Some(1),
            batch: None,
            input_shapes: Default::default(),
            runs: 4,
            warmup: 1,
        };
        let ticks = AtomicUsize::new(0);
        let r = run(&model, "", &cfg, &|| {
            ticks.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(r.streams, 3);
        assert_eq!(r.runs, 6);
        assert_eq!(ticks.load(Ordering::Relaxed), 1 + 1 + 6);
    }
}
