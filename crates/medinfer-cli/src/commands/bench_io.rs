//! `medinfer bench-io`: decode and preprocessing timings (chest X-ray PNG to model input, CT
//! series to a windowed volume), for docs/benchmarks.md and benchmarks/io.

use crate::args::parse_window;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchIoArgs {
    /// What to measure: `cxr` (PATH = a PNG / DICOM radiograph: decode, to gray, MONOCHROME2,
    /// TorchXRayVision-exact preprocessing to the 1 x 224 x 224 model input) or
    /// `ct` (PATH = a series folder: scan headers, order, decode and assemble every slice on all
    /// usable cores, window to [0, 1]).
    pub task: String,
    /// The file or folder.
    pub path: PathBuf,
    /// Timed repetitions (after one untimed warm-up).
    #[arg(long, value_parser = crate::args::at_least_one(), default_value_t = 20)]
    pub runs: usize,
    /// Window for `ct` as CENTER,WIDTH in HU.
    #[arg(long, default_value = "40,400")]
    pub window: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct IoBench {
    task: String,
    path: String,
    cores: usize,
    runs: usize,
    /// Mean milliseconds per stage.
    stages_ms: Vec<(String, f64)>,
    total_ms: StatsMs,
}

#[derive(serde::Serialize)]
struct StatsMs {
    mean: f64,
    std: f64,
    min: f64,
    p50: f64,
}

fn stats(v: &[f64]) -> StatsMs {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    StatsMs {
        mean,
        std,
        min: s[0],
        p50: s[s.len() / 2],
    }
}

pub fn run(a: BenchIoArgs) -> Result<()> {
    use medinfer_core::preprocess;
    use std::time::Instant;
    let (wc, ww) = parse_window(&a.window)?;
    let mut stage_sum: Vec<(String, f64)> = Vec::new();
    let mut totals = Vec::new();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for rep in 0..=a.runs {
        let mut stages: Vec<(&str, f64)> = Vec::new();
        let t0 = Instant::now();
        match a.task.as_str() {
            "cxr" => {
                let t = Instant::now();
                let img = medinfer_io::read_images(&a.path)?.remove(0);
                stages.push(("decode", ms(t)));
                let t = Instant::now();
                let tensor = medinfer_pipelines::cxr::preprocess_image(img)?;
                stages.push(("preprocess", ms(t)));
                std::hint::black_box(tensor);
            }
            "ct" => {
                let t = Instant::now();
                let mut vol = medinfer_io::series::read_series(&a.path)?;
                stages.push(("read + assemble", ms(t)));
                let t = Instant::now();
                preprocess::window(&mut vol.data, wc, ww, 0.0, 1.0)?;
                stages.push(("window", ms(t)));
                std::hint::black_box(vol);
            }
            other => bail!("bench-io task {other}: expected cxr or ct"),
        }
        let total = ms(t0);
        if rep == 0 {
            stage_sum = stages.iter().map(|(n, _)| (n.to_string(), 0.0)).collect();
            continue; // warm-up (page cache, allocator)
        }
        totals.push(total);
        for (acc, (_, v)) in stage_sum.iter_mut().zip(&stages) {
            acc.1 += v / a.runs as f64;
        }
    }
    let r = IoBench {
        task: a.task.clone(),
        path: a.path.display().to_string(),
        cores: medinfer_core::usable_cores(),
        runs: a.runs,
        stages_ms: stage_sum,
        total_ms: stats(&totals),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} {} on {} core(s), {} runs",
            r.task, r.path, r.cores, r.runs
        );
        for (n, v) in &r.stages_ms {
            println!("  {n:<16} {v:>9.2} ms");
        }
        println!(
            "  {:<16} {:>9.2} ms (std {:.2}, min {:.2})",
            "total", r.total_ms.mean, r.total_ms.std, r.total_ms.min
        );
    }
    Ok(())
}
