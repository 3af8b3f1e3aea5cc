//! `medinfer run cardiac`: LV / RV volumes, ejection fractions and LV mass from a cine stack.

use crate::args::{print_json, EngineArgs, PipelinePrecision};
use anyhow::Result;
use clap::Args;
use medinfer_pipelines::cardiac;
use medinfer_pipelines::models::ModelId;
use medinfer_pipelines::{phantom, Pipeline};
use std::path::PathBuf;

#[derive(Args)]
pub struct RunCardiacArgs {
    /// A 4D NIfTI file (x, y, slices, phases), or a folder / file of a DICOM cine series.
    pub input: PathBuf,
    /// Segmentation model: ONNX taking (batch, 1, rows, columns) patches and giving (batch,
    /// classes, rows, columns) scores. Its config (--config, else MODEL.json beside it, else a
    /// MONAI bundle's configs/metadata.json) gives the patch size, pixel spacing,
    /// normalisation and which output is LV, MYO and RV; without one, the shipped model's
    /// (96 x 96 at 1.6 mm, z-score, background / LV / MYO / RV). Default: medinfer's trained
    /// model, FP32 or INT8 by --precision.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model's config (a medinfer model config JSON or a MONAI bundle's metadata.json);
    /// see docs/architecture.md, "Model configs".
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Output folder: report.json, masks.nii.gz, ed_es.png, volumes.svg.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RunCardiacArgs) -> Result<()> {
    let chosen = a.engine.model(
        Pipeline::Cardiac,
        a.model.as_deref(),
        PipelinePrecision::Auto,
    )?;
    let model_spec =
        a.engine
            .model_spec(Pipeline::Cardiac, &chosen.path, a.config.as_deref(), 8)?;
    let spec = cardiac::CardiacSpec::from_model(&model_spec, &chosen.path.display().to_string())?;
    // The exam is read (gunzip, conversion: one core) while the engine loads and compiles the
    // model: on 2 cores this takes ~0.15 s off a 0.7 s exam. The read time in the report is
    // then the read's own wall time, which overlaps the model load.
    let started = std::time::Instant::now();
    let input = a.input.clone();
    let reader = std::thread::spawn(move || medinfer_io::read_volume(&input));
    let t0 = std::time::Instant::now();
    let session = a
        .engine
        .session_for(&chosen.path, &model_spec, 8, None, None)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let request = cardiac::CardiacRequest {
        input: a.input.clone(),
        model: ModelId::of(&chosen.path)?,
        output: a.output.clone(),
        spec,
    };
    let vol = match reader.join() {
        Ok(v) => v?,
        Err(p) => std::panic::resume_unwind(p),
    };
    let res = cardiac::run_volume(&session, &request, &vol, started)?;
    if a.json {
        print_json(&res.report)?;
    } else {
        print_report(&res.report, None, load_ms);
        if let Some(o) = &a.output {
            println!("outputs: {}", o.display());
        }
    }
    Ok(())
}

/// The report for people, with the truth beside each number when there is one (phantoms).
pub fn print_report(r: &cardiac::CardiacReport, truth: Option<&phantom::Truth>, load_ms: f64) {
    let weights = r.model.weights.as_deref().unwrap_or("unknown weights");
    println!(
        "model {} (sha256 {}..., {weights}) on {} ({})",
        r.model.path,
        &r.model.sha256[..12],
        r.backend,
        r.precision
    );
    let row = |name: &str, unit: &str, v: f64, t: Option<f64>| match t {
        Some(t) => println!(
            "  {name:<16} {v:>8.1} {unit:<3}   truth {t:>8.1}   error {:>+7.1}",
            v - t
        ),
        None => println!("  {name:<16} {v:>8.1} {unit}"),
    };
    let t = truth;
    row("LV EDV", "ml", r.lv.edv_ml, t.map(|t| t.lv_edv_ml));
    row("LV ESV", "ml", r.lv.esv_ml, t.map(|t| t.lv_esv_ml));
    row(
        "LV SV",
        "ml",
        r.lv.sv_ml,
        t.map(|t| t.lv_edv_ml - t.lv_esv_ml),
    );
    row("LV EF", "%", r.lv.ef_pct, t.map(|t| t.lv_ef_pct));
    row("RV EDV", "ml", r.rv.edv_ml, t.map(|t| t.rv_edv_ml));
    row("RV ESV", "ml", r.rv.esv_ml, t.map(|t| t.rv_esv_ml));
    row("RV EF", "%", r.rv.ef_pct, t.map(|t| t.rv_ef_pct));
    row("LV mass", "g", r.lv_mass_g, t.map(|t| t.lv_mass_g));
    match t {
        Some(t) => println!(
            "  ED / ES phase    {:>4} / {:<4}        truth {:>4} / {}",
            r.ed_phase, r.es_phase, t.ed_phase, t.es_phase
        ),
        None => println!("  ED / ES phase    {} / {}", r.ed_phase, r.es_phase),
    }
    for f in &r.flags {
        println!("  flag: {f}");
    }
    let tm = &r.timings;
    println!(
        "time: {:.0} ms for {} images (read {:.0}, preprocess {:.0}, segment {:.0} = {:.0} images/s, postprocess {:.0}, write {:.0}); model load {:.0} ms",
        tm.total_ms, r.images, tm.read_ms, tm.preprocess_ms, tm.segment_ms, r.images_per_s,
        tm.postprocess_ms, tm.write_ms, load_ms
    );
}
