//! The deployment a tune writes, and reading it back.
//!
//! `deploy/` is laid out as one entry of `medinfer serve`'s model repository, so it can be
//! copied (or linked) to `models/NAME/` as it is:
//! - `deploy/config.json`: the server's model config (backend, precision, threads,
//!   instances = streams, max_batch = batch) plus `cpu_isa` (the OpenVINO kernel cap) and
//!   `tuned` (what was measured, on which CPU, and what the CPU must have);
//! - `deploy/1/model.onnx`: the chosen model file;
//! - `deploy/tune.json`, `tune.md`, `tune.svg`: every candidate, the table, the chart.

use super::{Objective, TuneError, TuneOutcome};
use medinfer_engine::{BackendKind, CpuIsa, Precision};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `deploy/config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeployConfig {
    /// Engine.
    pub backend: String,
    /// fp32 or bf16 (INT8 is in the model file).
    pub precision: String,
    /// Threads per stream.
    pub threads: Option<usize>,
    /// Streams (the server's engine instances).
    pub instances: usize,
    /// Items per request (the server's largest dynamic batch).
    pub max_batch: usize,
    /// Shapes of inputs with dynamic dimensions other than the batch.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// OpenVINO's kernel instruction-set cap (`auto` = none).
    #[serde(default)]
    pub cpu_isa: Option<String>,
    /// What the tune measured.
    #[serde(default)]
    pub tuned: Option<TunedRecord>,
}

/// The measured facts behind a deployment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TunedRecord {
    /// latency or throughput.
    pub objective: Objective,
    /// The chosen candidate's label.
    pub candidate: String,
    /// fp32, int8-portable or int8-openvino.
    pub variant: String,
    /// Accuracy metric and budget.
    pub metric: String,
    /// Largest allowed drop.
    pub max_drop: f64,
    /// Measured drop of the choice.
    pub accuracy_drop: f64,
    /// True when nothing met the budget and the tune was forced.
    pub over_budget: bool,
    /// Median request latency in the final rounds.
    pub latency_ms: Option<f64>,
    /// Items per second in the final rounds.
    pub throughput_per_s: Option<f64>,
    /// Runner-up and the per-round speed ratio range of the choice over it.
    pub runner_up: Option<String>,
    /// Lowest and highest per-round ratio.
    pub confidence: Option<[f64; 2]>,
    /// CPU the figures hold for.
    pub cpu: String,
    /// Cores the tune used.
    pub cores: usize,
    /// CPU flags the deployment needs (`/proc/cpuinfo` names).
    pub cpu_flags_required: Vec<String>,
    /// medinfer version that tuned it.
    pub medinfer_version: String,
}

/// A deployment read back and checked against this machine.
#[derive(Clone, Debug)]
pub struct Deployment {
    /// The folder.
    pub dir: PathBuf,
    /// `dir/1/model.onnx`.
    pub model: PathBuf,
    /// Its config.
    pub config: DeployConfig,
    /// Engine.
    pub backend: BackendKind,
    /// Precision.
    pub precision: Precision,
    /// Kernel cap.
    pub isa: CpuIsa,
}

impl Deployment {
    /// Reads `dir/config.json` and checks that this machine can run it: the engine is
    /// available, the CPU has every flag it was tuned for (AMX, BF16, VNNI), the model exists.
    pub fn load(dir: &Path) -> Result<Deployment, TuneError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| TuneError::io(&cfg_path, e))?;
        let config: DeployConfig = serde_json::from_str(&text)
            .map_err(|e| TuneError::Deploy(format!("{}: {e}", cfg_path.display())))?;
        let bad = |what: String| TuneError::Deploy(format!("{}: {what}", cfg_path.display()));
        let backend = BackendKind::parse(&config.backend)
            .ok_or_else(|| bad(format!("unknown backend '{}'", config.backend)))?;
        let precision = Precision::parse(&config.precision)
            .ok_or_else(|| bad(format!("unknown precision '{}'", config.precision)))?;
        let isa = match &config.cpu_isa {
            Some(s) => CpuIsa::parse(s).ok_or_else(|| bad(format!("unknown cpu_isa '{s}'")))?,
            None => CpuIsa::Auto,
        };
        let model = dir.join("1").join("model.onnx");
        if !model.is_file() {
            return Err(bad(format!("{} is missing", model.display())));
        }
        let have = medinfer_engine::cpu_flags();
        let mut needed: Vec<String> = isa.required_flags().iter().map(|s| s.to_string()).collect();
        if let Some(t) = &config.tuned {
            needed.extend(t.cpu_flags_required.iter().cloned());
        }
        needed.sort();
        needed.dedup();
        let missing: Vec<&String> = needed.iter().filter(|f| !have.contains(*f)).collect();
        if !missing.is_empty() {
            let tuned_on = config
                .tuned
                .as_ref()
                .map(|t| format!(" (tuned on {})", t.cpu))
                .unwrap_or_default();
            return Err(bad(format!(
                "this deployment needs CPU features this CPU ({}) lacks: {}{tuned_on}; run \
                 `medinfer tune` on this machine",
                crate::cpu_model(),
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let avail = medinfer_engine::backend(backend).availability();
        if !avail.available {
            return Err(bad(format!(
                "it runs on {backend}, which is not available here ({}); `medinfer runtimes \
                 install` fetches it",
                avail.reason.unwrap_or_default()
            )));
        }
        Ok(Deployment {
            dir: dir.to_path_buf(),
            model,
            config,
            backend,
            precision,
            isa,
        })
    }

    /// Streams.
    pub fn streams(&self) -> usize {
        self.config.instances.max(1)
    }

    /// Batch.
    pub fn batch(&self) -> usize {
        self.config.max_batch.max(1)
    }
}

/// The CPU flags a candidate needs beyond its ISA cap: BF16 arithmetic for bf16, and the
/// instruction sets of the cap the CPU ran it under when it was `auto` on a CPU with AMX.
fn flags_for(precision: Precision, isa: CpuIsa, backend: BackendKind) -> Vec<String> {
    let mut f: Vec<String> = isa.required_flags().iter().map(|s| s.to_string()).collect();
    if precision == Precision::Bf16 {
        f.push("avx512_bf16".into());
    }
    if backend == BackendKind::OpenVino && isa == CpuIsa::Auto {
        // "auto" means everything this CPU has; the figures hold for that tier, so record it.
        for tier in [
            CpuIsa::Amx,
            CpuIsa::Avx512Bf16,
            CpuIsa::Avx512Vnni,
            CpuIsa::Avx2,
        ] {
            if tier.missing_here().is_empty() {
                f.extend(tier.required_flags().iter().map(|s| s.to_string()));
                break;
            }
        }
    }
    f.sort();
    f.dedup();
    f
}

/// Writes the deployment: the chosen model, `config.json`, `tune.json`, `tune.md`, `tune.svg`.
pub fn write(
    o: &TuneOutcome,
    input_shapes: &HashMap<String, Vec<usize>>,
    dir: &Path,
) -> Result<DeployConfig, TuneError> {
    let c = o.choice();
    let vdir = dir.join("1");
    std::fs::create_dir_all(&vdir).map_err(|e| TuneError::io(&vdir, e))?;
    let model = vdir.join("model.onnx");
    std::fs::copy(c.model_path(), &model).map_err(|e| TuneError::io(&model, e))?;
    let config = DeployConfig {
        backend: c.backend.name().into(),
        precision: c.precision.to_string(),
        threads: Some(c.threads),
        instances: c.streams,
        max_batch: c.batch,
        input_shapes: input_shapes.clone(),
        cpu_isa: (c.backend == BackendKind::OpenVino).then(|| c.isa.clone()),
        tuned: Some(TunedRecord {
            objective: o.objective,
            candidate: c.label.clone(),
            variant: c.variant.clone(),
            metric: o.metric.clone(),
            max_drop: o.max_drop,
            accuracy_drop: c.drop.unwrap_or(0.0),
            over_budget: o.over_budget,
            latency_ms: c.latency_ms,
            throughput_per_s: c.throughput_per_s,
            runner_up: o.runner_up.map(|r| o.candidates[r].label.clone()),
            confidence: o.confidence,
            cpu: o.cpu.clone(),
            cores: o.cores,
            cpu_flags_required: flags_for(c.precision, c.isa_cap(), c.backend),
            medinfer_version: env!("CARGO_PKG_VERSION").into(),
        }),
    };
    let put = |name: &str, text: String| -> Result<(), TuneError> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| TuneError::io(&p, e))
    };
    put(
        "config.json",
        serde_json::to_string_pretty(&config).expect("plain data serialises"),
    )?;
    put(
        "tune.json",
        serde_json::to_string_pretty(o).expect("plain data serialises"),
    )?;
    put("tune.md", super::render_markdown(o))?;
    put("tune.svg", super::render_svg(o))?;
    Ok(config)
}
