//! `medinfer run ct`: CT slice anatomy tagging of every series under the inputs.

use crate::args::{bar, parse_window, EngineArgs, PipelinePrecision};
use anyhow::{bail, Result};
use clap::Args;
use medinfer_pipelines::config::Normalization;
use medinfer_pipelines::resume::Shard;
use medinfer_pipelines::{ct, cxr, Pipeline};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunCtArgs {
    /// DICOM CT series: folders (searched recursively; every series found is tagged, in the
    /// order of its first file's path) or files. Non-DICOM files are ignored.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Slice classifier: ONNX taking (batch, 1, rows, columns) slices and giving one logit per
    /// region. Its config (--config, else MODEL.json beside it, else a MONAI bundle's
    /// configs/metadata.json) gives size, normalisation and region names; without one, the
    /// pipeline's (128 x 128, window 40,400 to [0, 1], head / neck / chest / abdomen / pelvis /
    /// legs). Default: the zoo resnet18-ct, whose weights are UNTRAINED.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model's config (a medinfer model config JSON or a MONAI bundle's metadata.json).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Region names in output order: a file with one per line (default: the model config's).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// HU window CENTRE,WIDTH applied to every slice (default: the model config's, 40,400 for
    /// the pipeline's own model).
    #[arg(long)]
    pub window: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Cores to use: inference streams (one thread each) and decode workers (default: all
    /// usable cores).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Print one JSON object per series (JSON lines: the report with every slice and the
    /// summary, or the error) instead of a table.
    #[arg(long, conflicts_with = "jsonl")]
    pub json: bool,
    /// Append one JSON object per series to this file (JSON lines). Series already in it (by
    /// Series Instance UID; unreadable files by path) are skipped, so an interrupted batch
    /// resumes where it stopped. A summary table is printed as well.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Only this part of the series: K/N (0 <= K < N), a deterministic split by Series Instance
    /// UID for Kubernetes Indexed Jobs and Slurm arrays; `env/N` reads K from
    /// JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
}

pub fn run(a: RunCtArgs) -> Result<()> {
    let chosen = a
        .engine
        .model(Pipeline::Ct, a.model.as_deref(), PipelinePrecision::Fp32)?;
    let spec = a
        .engine
        .model_spec(Pipeline::Ct, &chosen.path, a.config.as_deref(), 8)?;
    let mut prep = ct::CtPrep::of(&spec);
    if let Some(w) = &a.window {
        let (center, width) = parse_window(w)?;
        prep.normalization = Normalization::Window { center, width };
    }
    let regions: Vec<String> = match &a.labels {
        Some(p) => cxr::read_labels(&p.display().to_string())?,
        None => spec.labels.clone(),
    };
    let untrained = chosen.untrained_zoo.is_some();
    let note = if untrained {
        "UNTRAINED zoo weights (resnet18-ct): the regions are meaningless; pass --model"
    } else {
        ""
    };
    let cores = a.cores.unwrap_or_else(medinfer_core::usable_cores).max(1);
    let session = a
        .engine
        .session_for(&chosen.path, &spec, 8, Some(cores), Some(1))?;
    if let Some(n) = session
        .outputs()
        .first()
        .and_then(|o| o.shape.get(1).copied())
        .filter(|&n| n != 0 && n != regions.len())
    {
        bail!(
            "{}: the model gives {n} scores, there are {} regions",
            chosen.path.display(),
            regions.len()
        );
    }
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let batch = ct::CtBatch::open(ct::CtBatchRequest {
        inputs: a.inputs.clone(),
        prep,
        regions,
        decoders: cores,
        note: note.to_string(),
        jsonl: a.jsonl.clone(),
        shard,
    })?;
    if let (Some(path), true) = (&a.jsonl, batch.already_done > 0) {
        eprintln!(
            "{}: {} series / file(s) already done, {} to go",
            path.display(),
            batch.already_done,
            batch.remaining()
        );
    }
    if untrained && !a.json {
        println!("note: {note}");
    }
    let total = batch.slices();
    let pb = bar(total, "slices", a.json || total < 2);
    let mut io_error: Option<std::io::Error> = None;
    let jsonl = a.jsonl.is_some();
    let sum = batch.run(
        &session,
        || pb.inc(1),
        |rec| {
            let res = pb.suspend(|| {
                if jsonl {
                    println!("{}", rec.summary_text());
                    Ok(())
                } else if a.json {
                    writeln!(std::io::stdout(), "{}", rec.json)
                } else {
                    writeln!(std::io::stdout(), "{}", rec.summary_text())
                }
            });
            if let Err(e) = res {
                io_error.get_or_insert(e);
            }
        },
    )?;
    pb.finish_and_clear();
    if let Some(e) = io_error {
        return Err(anyhow::Error::from(e).context("writing results"));
    }
    eprintln!(
        "{} series tagged ({} slices), {} failed, in {:.1} s ({:.0} slices/s) on {} ({}){}",
        sum.ok,
        sum.slices,
        sum.failed,
        sum.seconds,
        sum.slices as f64 / sum.seconds.max(1e-9),
        session.info().backend,
        session.info().effective_precision,
        if untrained { "; weights UNTRAINED" } else { "" }
    );
    if sum.ok == 0 && sum.failed > 0 {
        bail!("no series could be tagged ({} failed)", sum.failed);
    }
    Ok(())
}
