//! `medinfer run cxr`: chest X-ray classification over files and folders, in batch.

use crate::args::{bar, EngineArgs, PipelinePrecision};
use anyhow::{bail, Result};
use clap::Args;
use medinfer_pipelines::resume::Shard;
use medinfer_pipelines::{cxr, Pipeline};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunCxrArgs {
    /// Radiographs (PNG 8 / 16-bit, JPEG, DICOM) or folders of them (searched recursively,
    /// files recognised by content; processed in sorted order).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Classifier: ONNX taking (batch, 1, rows, columns) images and giving one logit per label.
    /// Its config (--config, else MODEL.json beside it, else a MONAI bundle's
    /// configs/metadata.json) gives size, normalisation, labels and thresholds; without one,
    /// TorchXRayVision's (224 x 224, xrv normalisation, its 18 labels). Default: the zoo
    /// densenet121-cxr, whose weights are UNTRAINED (every output says so).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model's config (a medinfer model config JSON or a MONAI bundle's metadata.json).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Label names in output order: xrv (TorchXRayVision's 18), padchest (its 28), or a file
    /// with one label per line (default: the model config's).
    #[arg(long)]
    pub labels: Option<String>,
    /// Operating thresholds, one per label in label order (TorchXRayVision's op_threshs: each
    /// threshold is mapped to a score of 0.5; nan = none). Default: the model config's.
    #[arg(long)]
    pub thresholds: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Decode / preprocess workers (default: one per core).
    #[arg(long)]
    pub decoders: Option<usize>,
    /// Print one JSON object per image (JSON lines) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Append results to this CSV (created with a header). Files already in it are skipped, so
    /// an interrupted run resumes where it stopped.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Only this part of the inputs: K/N (0 <= K < N), a deterministic split by file path for
    /// Kubernetes Indexed Jobs and Slurm arrays; `env/N` reads K from JOB_COMPLETION_INDEX or
    /// SLURM_ARRAY_TASK_ID. The N shards together cover every file exactly once.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Resize of the centred square to 224 x 224: xrv (TorchXRayVision's XRayResizer, i.e.
    /// scikit-image's anti-aliased resize, exact) or area (area averaging: faster on large
    /// radiographs; scores differ from TorchXRayVision's by up to ~0.01, see
    /// docs/benchmarks.md).
    #[arg(long, default_value = "xrv", value_parser = ["xrv", "area"])]
    pub resize: String,
}

pub fn run(a: RunCxrArgs) -> Result<()> {
    let chosen = a
        .engine
        .model(Pipeline::Cxr, a.model.as_deref(), PipelinePrecision::Fp32)?;
    let spec = a
        .engine
        .model_spec(Pipeline::Cxr, &chosen.path, a.config.as_deref(), 4)?;
    let labels = match &a.labels {
        Some(l) => cxr::read_labels(l)?,
        None => spec.labels.clone(),
    };
    let thresholds = match &a.thresholds {
        Some(p) => Some(cxr::read_thresholds(p, labels.len())?),
        None => spec.thresholds_f32(),
    };
    if let Some(t) = thresholds.as_ref().filter(|t| t.len() != labels.len()) {
        bail!(
            "{} thresholds (config {}) for {} labels",
            t.len(),
            spec.source,
            labels.len()
        );
    }
    let untrained = chosen.untrained_zoo.is_some();
    let note = if untrained {
        "UNTRAINED zoo weights (densenet121-cxr): the scores are meaningless; pass --model"
    } else {
        ""
    };
    let session = a.engine.session_for(&chosen.path, &spec, 4, None, None)?;
    let out_len = session
        .outputs()
        .first()
        .map(|o| o.shape.get(1).copied().unwrap_or(0));
    if let Some(n) = out_len.filter(|&n| n != 0 && n != labels.len()) {
        bail!(
            "{}: the model gives {n} scores, the label set has {}",
            chosen.path.display(),
            labels.len()
        );
    }
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let batch = cxr::CxrBatch::open(cxr::CxrBatchRequest {
        inputs: a.inputs.clone(),
        labels: labels.clone(),
        thresholds,
        decoders: a.decoders.unwrap_or_else(medinfer_core::usable_cores),
        note: note.to_string(),
        csv: a.csv.clone(),
        shard,
        prep: cxr::CxrPrep::of(&spec, cxr::Resize::parse(&a.resize).unwrap_or_default()),
    })?;
    if let (Some(path), true) = (&a.csv, batch.already_done > 0) {
        eprintln!(
            "{}: {} file(s) already done, {} to go",
            path.display(),
            batch.already_done,
            batch.files.len()
        );
    }
    if untrained && !a.json && a.csv.is_none() {
        eprintln!("note: {note}");
    }
    let n = batch.files.len();
    let pb = bar(n, "images", a.json || n < 2);
    let mut io_error: Option<std::io::Error> = None;
    let sum = batch.run(&session, |rec| {
        pb.inc(1);
        let res = if a.csv.is_some() {
            Ok(())
        } else if a.json {
            writeln!(std::io::stdout(), "{}", rec.to_json(&labels, note))
        } else {
            pb.suspend(|| writeln!(std::io::stdout(), "{}", rec.summary_line(&labels)))
        };
        if let Err(e) = res {
            io_error.get_or_insert(e);
        }
    })?;
    pb.finish_and_clear();
    if let Some(e) = io_error {
        return Err(anyhow::Error::from(e).context("writing results"));
    }
    eprintln!(
        "{} image(s) classified, {} failed, in {:.1} s ({:.1} images/s) on {} ({}){}",
        sum.ok,
        sum.failed,
        sum.seconds,
        (sum.ok + sum.failed) as f64 / sum.seconds.max(1e-9),
        session.info().backend,
        session.info().effective_precision,
        if untrained { "; weights UNTRAINED" } else { "" }
    );
    Ok(())
}
