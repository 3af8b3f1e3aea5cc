//! `medinfer demo`: a cardiac phantom exam analysed on the fastest backend, next to its truth.

use super::run_cardiac::print_report;
use crate::args::{print_json, EngineArgs, PipelinePrecision};
use anyhow::Result;
use clap::Args;
use medinfer_pipelines::models::ModelId;
use medinfer_pipelines::{cardiac, phantom, Pipeline};
use std::path::PathBuf;

#[derive(Args)]
pub struct DemoArgs {
    /// Phantom seed (held-out seeds below 100000 were never used in training).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Where the phantom and the results go (default: a folder under the system temp dir).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print the report and the truth as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let dir = a
        .output
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("medinfer-demo-{}", a.seed)));
    let t0 = std::time::Instant::now();
    let ph = phantom::write_cardiac(&dir.join("exam"), a.seed, phantom::Format::Nifti)?;
    let gen_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let model = a
        .engine
        .model(Pipeline::Cardiac, None, PipelinePrecision::Auto)?
        .path;
    let t0 = std::time::Instant::now();
    let session = a.engine.session(&model, 8, None, None)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let id = ModelId::of(&model)?;
    let input = dir.join("exam").join("cine.nii.gz");
    let request = cardiac::CardiacRequest {
        input,
        model: id,
        output: Some(dir.join("results")),
        spec: cardiac::CardiacSpec::shipped(),
    };
    let res = cardiac::run(&session, &request)?;
    if a.json {
        return print_json(&serde_json::json!({
            "report": res.report, "truth": ph.truth, "phantom": ph.params,
            "phantom_ms": gen_ms, "model_load_ms": load_ms,
        }));
    }
    println!(
        "medinfer demo: cardiac cine-MRI phantom (seed {}), {} slices x {} phases, {}x{} px at {:.2} mm, generated in {:.0} ms",
        a.seed, ph.params.slices, ph.params.phases, ph.params.matrix, ph.params.matrix,
        ph.params.pixel_spacing_mm, gen_ms
    );
    print_report(&res.report, Some(&ph.truth), load_ms);
    println!("phantom + truth: {}", dir.join("exam").display());
    println!(
        "results: {} (report.json, masks.nii.gz, ed_es.png, volumes.svg)",
        dir.join("results").display()
    );
    Ok(())
}
