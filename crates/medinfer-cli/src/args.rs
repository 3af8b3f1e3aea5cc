//! What several commands share: the engine arguments, JSON and progress output, small parsers.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use medinfer_engine::{BackendKind, Session};
use medinfer_pipelines::config::{ModelConfig, ModelSpec};
use medinfer_pipelines::models::{self, ChosenModel};
use medinfer_pipelines::Pipeline;
use serde::Serialize;
use std::path::Path;

/// Which of a pipeline's own models to run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PipelinePrecision {
    /// INT8 model where the backend runs INT8 (ONNX Runtime, OpenVINO), else FP32.
    Auto,
    /// The FP32 model.
    Fp32,
    /// The INT8 (QDQ) model.
    Int8,
}

impl From<PipelinePrecision> for models::Precision {
    fn from(p: PipelinePrecision) -> Self {
        match p {
            PipelinePrecision::Auto => models::Precision::Auto,
            PipelinePrecision::Fp32 => models::Precision::Fp32,
            PipelinePrecision::Int8 => models::Precision::Int8,
        }
    }
}

/// The engine arguments every pipeline command takes (flattened into it).
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Backend: tract, ort, openvino or auto (the fastest available).
    #[arg(short, long, default_value = "auto")]
    pub backend: String,
    /// Which of the pipeline's own models to run (ignored with --model): auto, fp32 or int8.
    /// Default: auto for cardiac (the shipped INT8 model on ONNX Runtime / OpenVINO), fp32 for
    /// cxr and ct.
    #[arg(long, value_enum)]
    pub precision: Option<PipelinePrecision>,
    /// Images per inference request (default: 8 for cardiac and ct, 4 for cxr).
    #[arg(long, value_parser = at_least_one())]
    pub batch: Option<usize>,
    /// Parallel inference streams (default: one per usable core, one thread each; fewer
    /// streams share the cores between them).
    #[arg(long, value_parser = at_least_one())]
    pub streams: Option<usize>,
    /// A deployment written by `medinfer tune` (its folder): the model (unless --model is
    /// given), engine, precision, kernel ISA, streams, threads and batch it chose; --batch and
    /// --streams still override. Refused, with what is missing, on a CPU that lacks what it was
    /// tuned for (AMX, BF16, VNNI) or without its engine.
    #[arg(long, value_name = "DIR")]
    pub deploy: Option<std::path::PathBuf>,
    /// What --deploy chose (set by [`EngineArgs::apply_deploy`]).
    #[arg(skip)]
    pub deployed: Option<Deployed>,
}

/// The parts of a deployment a pipeline's session takes.
#[derive(Clone, Debug)]
pub struct Deployed {
    /// The chosen model file.
    pub model: std::path::PathBuf,
    /// Engine precision.
    pub precision: medinfer_engine::Precision,
    /// Threads per stream.
    pub threads: Option<usize>,
}

impl EngineArgs {
    /// Reads `--deploy` (when given) into these arguments: its engine, and its batch and
    /// streams where the command line gave none.
    pub fn apply_deploy(&mut self) -> Result<()> {
        let Some(dir) = &self.deploy else {
            return Ok(());
        };
        let d = medinfer_bench::tune::deploy::Deployment::load(dir)
            .with_context(|| format!("--deploy {}", dir.display()))?;
        self.backend = d.backend.name().to_string();
        self.batch.get_or_insert(d.batch());
        self.streams.get_or_insert(d.streams());
        self.deployed = Some(Deployed {
            model: d.model.clone(),
            precision: d.precision,
            threads: d.config.threads,
        });
        Ok(())
    }

    /// The backend these arguments name.
    pub fn backend(&self) -> Result<BackendKind> {
        Ok(medinfer_engine::resolve_backend(&self.backend)?)
    }

    /// The model for `pipeline` (the user's `model`, else the pipeline's own by precision,
    /// `default` when none was given).
    pub fn model(
        &self,
        pipeline: Pipeline,
        model: Option<&Path>,
        default: PipelinePrecision,
    ) -> Result<ChosenModel> {
        if let (None, Some(d)) = (model, &self.deployed) {
            return Ok(ChosenModel {
                path: d.model.clone(),
                untrained_zoo: None,
            });
        }
        let precision = self.precision.unwrap_or(default);
        Ok(models::choose(
            pipeline,
            self.backend()?,
            precision.into(),
            model,
            &|note| eprintln!("{note}"),
        )?)
    }

    /// A throughput-mode session of `model`: `--batch` (else the pipeline's `default_batch`),
    /// `--streams` (else `streams`, else one per core) and `threads` per stream (`None`: the
    /// cores shared out between the streams).
    pub fn session(
        &self,
        model: &Path,
        default_batch: usize,
        streams: Option<usize>,
        threads: Option<usize>,
    ) -> Result<Session> {
        self.session_shaped(model, default_batch, streams, threads, Default::default())
    }

    /// The model's config for `pipeline` (`--config`, `MODEL.json`, a MONAI bundle's
    /// metadata, or the pipeline's built-in config), checked against the model file before
    /// anything runs.
    pub fn model_spec(
        &self,
        pipeline: Pipeline,
        model: &Path,
        config: Option<&Path>,
        default_batch: usize,
    ) -> Result<ModelSpec> {
        let cfg = ModelConfig::for_model(pipeline, model, config)?;
        Ok(cfg.resolve(model, self.batch.unwrap_or(default_batch).max(1))?)
    }

    /// [`Self::session`] for a model checked against its config: dynamic input dimensions
    /// are fixed to the config's size.
    pub fn session_for(
        &self,
        model: &Path,
        spec: &ModelSpec,
        default_batch: usize,
        streams: Option<usize>,
        threads: Option<usize>,
    ) -> Result<Session> {
        self.session_shaped(
            model,
            default_batch,
            streams,
            threads,
            spec.input_shapes.clone(),
        )
    }

    /// [`Self::session`] with the given input shapes for a model's dynamic dimensions.
    pub fn session_shaped(
        &self,
        model: &Path,
        default_batch: usize,
        streams: Option<usize>,
        threads: Option<usize>,
        input_shapes: std::collections::HashMap<String, Vec<usize>>,
    ) -> Result<Session> {
        let kind = self.backend()?;
        let opts = medinfer_engine::SessionOptions {
            mode: medinfer_engine::Mode::Throughput,
            batch: Some(self.batch.unwrap_or(default_batch).max(1)),
            streams: self.streams.or(streams),
            threads: self.deployed.as_ref().and_then(|d| d.threads).or(threads),
            precision: self
                .deployed
                .as_ref()
                .map(|d| d.precision)
                .unwrap_or_default(),
            input_shapes,
            ..Default::default()
        };
        medinfer_engine::load_on(kind, model, &opts)
            .with_context(|| format!("loading {} on {kind}", model.display()))
    }
}

/// The backends a comma-separated list names, each checked to be available here (an
/// unavailable one is an error saying how to fix it).
pub fn available_backends(list: &str) -> Result<Vec<BackendKind>> {
    let v = parse_list(list, "backend", BackendKind::parse)?;
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
    Ok(v)
}

/// clap parser for counts that must be at least 1 (runs, batch sizes): 0 is refused with a
/// usage error before any work starts.
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A progress bar over `len` items of `what` (hidden for JSON output and tiny jobs).
pub fn bar(len: usize, what: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A comma-separated list, each item parsed by `parse`.
pub fn parse_list<T>(s: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| parse(x).ok_or_else(|| anyhow!("unknown {what} '{x}'")))
        .collect()
}

/// `CENTER,WIDTH` in modality units (width >= 1).
pub fn parse_window(s: &str) -> Result<(f64, f64)> {
    let (c, w) = s.split_once(',').context("--window takes CENTER,WIDTH")?;
    let c: f64 = c
        .trim()
        .parse()
        .context("--window centre is not a number")?;
    let w: f64 = w.trim().parse().context("--window width is not a number")?;
    if w.is_nan() || w < 1.0 {
        bail!("--window width must be >= 1, got {w}");
    }
    Ok((c, w))
}

/// Parses `--input-shape`: `NAME=1x3x640x640` or `1x3x640x640`, returning the name (if given)
/// and the dimensions.
pub fn parse_input_shape(s: &str) -> Result<(Option<String>, Vec<usize>)> {
    let (name, dims) = match s.rsplit_once('=') {
        Some((n, d)) => (Some(n.to_string()), d),
        None => (None, s),
    };
    let dims: Vec<usize> = dims
        .split(['x', 'X', ','])
        .map(|d| d.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()
        .with_context(|| {
            format!("--input-shape {s}: expected [NAME=]D1xD2x... with positive whole numbers")
        })?;
    if dims.is_empty() {
        bail!("--input-shape {s}: no dimensions");
    }
    Ok((name, dims))
}

/// Resolves `--input-shape` values (`NAME=DIMS`, or `DIMS` alone for a one-input model) against
/// the model's inputs: every name must exist, every fixed dimension must match.
pub fn input_shapes(
    model: &medinfer_onnx::ModelInfo,
    specs: &[String],
) -> Result<std::collections::HashMap<String, Vec<usize>>> {
    let mut out = std::collections::HashMap::new();
    for spec in specs {
        let (name, dims) = parse_input_shape(spec)?;
        let input = match name {
            Some(n) => model.inputs.iter().find(|i| i.name == n).ok_or_else(|| {
                anyhow!(
                    "--input-shape names '{n}'; the model's inputs are {}",
                    model
                        .inputs
                        .iter()
                        .map(|i| format!("'{}'", i.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
            None if model.inputs.len() == 1 => &model.inputs[0],
            None => bail!(
                "--input-shape {spec}: the model has {} inputs; write NAME=DIMS",
                model.inputs.len()
            ),
        };
        let fits = dims.len() == input.shape.len()
            && dims.iter().zip(&input.shape).all(|(d, m)| match m {
                medinfer_onnx::Dim::Fixed(n) => n == d,
                medinfer_onnx::Dim::Dynamic(_) => true,
            });
        if !fits {
            bail!(
                "--input-shape {spec} does not fit the model's input '{}' [{}]",
                input.name,
                input
                    .shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out.insert(input.name.clone(), dims);
    }
    Ok(out)
}
