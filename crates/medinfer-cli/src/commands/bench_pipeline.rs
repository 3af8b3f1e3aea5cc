//! `medinfer bench-pipeline`: a clinical pipeline timed end to end, every stage (the
//! measurement itself is `medinfer_bench::pipeline`).

use crate::args::{at_least_one, bar, print_json};
use anyhow::{bail, Context, Result};
use clap::Args;
use medinfer_bench::pipeline::{self, ShippedPrecision};
use medinfer_pipelines::{models, Pipeline};
use std::path::PathBuf;

/// The pipelines `bench-pipeline` measures: the image pipelines, and fmri.
#[derive(Clone, Copy)]
pub enum Benched {
    /// cardiac, cxr or ct.
    Image(Pipeline),
    /// Resting-state fMRI.
    Fmri,
}

/// clap parser for a benched pipeline: the image pipelines' names come from
/// [`Pipeline::ALL`], the one list.
fn benched_parser() -> impl clap::builder::TypedValueParser<Value = Benched> {
    use clap::builder::TypedValueParser;
    let mut names: Vec<&'static str> = Pipeline::ALL.iter().map(|p| p.name()).collect();
    names.push("fmri");
    clap::builder::PossibleValuesParser::new(names).try_map(|s| match s.as_str() {
        "fmri" => Ok(Benched::Fmri),
        other => Pipeline::parse(other)
            .map(Benched::Image)
            .ok_or("unknown pipeline"),
    })
}

#[derive(Args)]
pub struct BenchPipelineArgs {
    /// Pipeline: cardiac (a phantom exam: read a 4D NIfTI, preprocess, segment, quantify, write
    /// every output), cxr (a folder of radiographs: decode, preprocess, infer, scores), ct (a
    /// DICOM series: read + assemble, window + resize, infer, summary) or fmri (a phantom
    /// cohort through every stage, then the network classifier alone per backend and
    /// precision, with its label accuracy).
    #[arg(value_parser = benched_parser())]
    pub pipeline: Benched,
    /// Input for cxr (folder of PNG / JPEG / DICOM radiographs) and ct (series folder).
    pub input: Option<PathBuf>,
    /// Cores for cxr / ct (streams x 1 thread, and as many decode workers); default all.
    #[arg(long)]
    pub cores: Option<usize>,
    /// Backends, comma-separated (tract, ort, openvino) or `all` available.
    #[arg(short, long, default_value = "all")]
    pub backend: String,
    /// Precisions of the shipped model, comma-separated: fp32, int8 (int8 is skipped on tract).
    #[arg(long, default_value = "fp32,int8")]
    pub precision: String,
    /// Timed runs per configuration (configurations are interleaved round by round). Default
    /// 10; for fmri 3 whole-pipeline runs (with the first configuration) and as many
    /// classifier rounds per configuration.
    #[arg(long, value_parser = at_least_one())]
    pub runs: Option<usize>,
    /// fmri: subjects in the phantom cohort.
    #[arg(long, default_value_t = 20)]
    pub subjects: usize,
    /// fmri: group components (default: 13, the phantom's sources; 0: estimated).
    #[arg(long, default_value_t = 13)]
    pub components: usize,
    /// Slices x phases of the phantom exam (the published figure is for 10 x 25).
    #[arg(long, default_value = "10x25")]
    pub exam: String,
    /// Phantom seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Images per inference request.
    #[arg(long, value_parser = at_least_one(), default_value_t = 8)]
    pub batch: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchPipelineArgs) -> Result<()> {
    match a.pipeline {
        Benched::Image(Pipeline::Cardiac) => cardiac(&a),
        Benched::Image(Pipeline::Cxr | Pipeline::Ct) => folder(&a),
        Benched::Fmri => fmri(&a),
    }
}

/// The (backend, shipped model) configurations of --backend x --precision.
fn configs(a: &BenchPipelineArgs) -> Result<Vec<(medinfer_engine::BackendKind, ShippedPrecision)>> {
    let kinds: Vec<medinfer_engine::BackendKind> = if a.backend == "all" {
        medinfer_engine::availability_all()
            .into_iter()
            .filter(|v| v.available)
            .map(|v| v.backend)
            .collect()
    } else {
        a.backend
            .split(',')
            .map(|b| Ok(medinfer_engine::resolve_backend(b.trim())?))
            .collect::<Result<_>>()?
    };
    let mut configs = Vec::new();
    for k in kinds {
        for p in a.precision.split(',') {
            let prec = match p.trim() {
                "fp32" => ShippedPrecision::Fp32,
                "int8" if k == medinfer_engine::BackendKind::Tract => continue,
                "int8" => ShippedPrecision::Int8,
                other => bail!("unknown precision '{other}' (fp32, int8)"),
            };
            configs.push((k, prec));
        }
    }
    Ok(configs)
}

fn fmri(a: &BenchPipelineArgs) -> Result<()> {
    let runs = a.runs.unwrap_or(3);
    let req = pipeline::FmriBenchRequest {
        configs: configs(a)?,
        runs,
        subjects: a.subjects.max(1),
        seed: a.seed,
        components: (a.components > 0).then_some(a.components),
    };
    let pb = bar(runs + runs + 1, "runs", a.json);
    let b = pipeline::fmri(&req, || pb.inc(1))?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&b);
    }
    let t = &b.median_stage_s;
    println!(
        "fmri pipeline, phantom cohort of {} subjects x {} volumes, {} components, {} core(s); {} whole runs on {}, medians in s",
        b.subjects, b.volumes, b.components, b.cores, b.pipeline_runs, b.pipeline_config
    );
    println!(
        "  check {:.2}, MIGP {:.2}, ICA {:.2}, dual regression {:.2}, classify {:.2}, write {:.2}, total {:.2}; peak RSS {:.0} MB",
        t.check, t.migp, t.ica, t.dual_regression, t.classify, t.write, t.total, b.peak_rss_mb
    );
    println!(
        "classifier alone ({} components per round, {} rounds interleaved):",
        b.classifier.first().map_or(0, |c| c.samples),
        runs
    );
    println!(
        "{:<9} {:<12} {:>9} {:>10} {:>9} {:>9} {:>11}",
        "backend", "precision", "load ms", "round ms", "comp/s", "accuracy", "= fp32"
    );
    for r in &b.classifier {
        println!(
            "{:<9} {:<12} {:>9.0} {:>10.1} {:>9.1} {:>8.2}% {:>11}",
            r.backend,
            r.precision,
            r.model_load_ms,
            r.median_ms,
            r.samples_per_s,
            100.0 * r.accuracy,
            r.agreement_with_fp32
                .map_or("-".into(), |x| format!("{:.2}%", 100.0 * x))
        );
    }
    Ok(())
}

fn cardiac(a: &BenchPipelineArgs) -> Result<()> {
    let (slices, phases) = a
        .exam
        .split_once('x')
        .and_then(|(s, p)| {
            Some((
                s.trim().parse::<usize>().ok()?,
                p.trim().parse::<usize>().ok()?,
            ))
        })
        .ok_or_else(|| anyhow::anyhow!("--exam must be SLICESxPHASES, e.g. 10x25"))?;
    let configs = configs(a)?;
    let req = pipeline::CardiacBenchRequest {
        configs,
        runs: a.runs.unwrap_or(10),
        exam: (slices, phases),
        seed: a.seed,
        batch: a.batch,
    };
    let pb = bar(req.configs.len() * (req.runs + 1), "runs", a.json);
    let b = pipeline::cardiac(&req, || pb.inc(1))?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&b);
    }
    let rows = &b.results;
    let images = slices * phases;
    let matrix = b.matrix;
    println!(
        "cardiac pipeline, phantom exam {slices} slices x {phases} phases ({images} images, {}x{} px), {} runs each, medians in ms",
        matrix, matrix, req.runs
    );
    println!(
        "{:<9} {:<10} {:>7} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8} {:>10} {:>10}",
        "backend",
        "precision",
        "read",
        "prep",
        "segment",
        "post",
        "write",
        "total",
        "best",
        "img/s e2e",
        "img/s seg"
    );
    for r in rows {
        let m = &r.median;
        println!(
            "{:<9} {:<10} {:>7.1} {:>7.1} {:>8.1} {:>8.1} {:>7.1} {:>8.1} {:>8.1} {:>10.0} {:>10.0}",
            r.backend, r.precision, m.read_ms, m.preprocess_ms, m.segment_ms, m.postprocess_ms,
            m.write_ms, m.total_ms, r.best_total_ms, r.end_to_end_images_per_s, r.segment_images_per_s
        );
    }
    Ok(())
}

fn folder(a: &BenchPipelineArgs) -> Result<()> {
    let input = a
        .input
        .clone()
        .context("bench-pipeline cxr / ct needs an input folder")?;
    let Benched::Image(pl) = a.pipeline else {
        bail!("fmri is not a folder pipeline");
    };
    let zoo = pl
        .default_zoo_model()
        .context("a folder pipeline has a zoo model")?;
    let prec = a
        .precision
        .split(',')
        .next()
        .unwrap_or("fp32")
        .trim()
        .to_string();
    let model = match prec.as_str() {
        "fp32" => models::resolve(zoo)?,
        "int8" => models::zoo_int8(zoo, &|note| eprintln!("{note}"))?,
        p => bail!("unknown precision '{p}' (fp32, int8)"),
    };
    let backend = if a.backend == "all" {
        "auto".to_string()
    } else {
        a.backend.clone()
    };
    let r = pipeline::batch(&pipeline::BatchBenchRequest {
        pipeline: pl,
        input,
        model,
        backend,
        cores: a.cores.unwrap_or_else(medinfer_core::usable_cores).max(1),
        batch: a.batch,
        runs: a.runs.unwrap_or(10),
    })?;
    if a.json {
        return print_json(&r);
    }
    let ms = |k: &str| r.per_image_ms[k].as_f64().unwrap_or(f64::NAN);
    let (decode_ms, prep_ms, infer_ms, post_ms) = (
        ms("decode"),
        ms("preprocess"),
        ms("inference"),
        ms("postprocess"),
    );
    println!(
        "{} {} ({} images) on {} core(s), {} {}, batch {}, {} runs",
        r.pipeline, r.input, r.images, r.cores, r.backend, r.precision, r.batch, r.runs
    );
    println!(
        "  per image, one core: decode {decode_ms:.2} ms, preprocess {prep_ms:.2} ms, inference {infer_ms:.2} ms, postprocess {post_ms:.4} ms"
    );
    println!(
        "  ideal {:.1} images/s, end to end {:.1} images/s ({:.0} % of ideal), engine alone {:.1} images/s",
        r.ideal_images_per_s,
        r.end_to_end_images_per_s,
        100.0 * r.efficiency,
        r.engine_only_images_per_s
    );
    Ok(())
}
