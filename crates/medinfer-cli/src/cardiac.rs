//! `medinfer phantom`, `medinfer run cardiac` and `medinfer demo`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use medinfer_core::{Tensor, Volume};
use medinfer_io::nifti::{self, NiftiDtype};
use medinfer_pipelines::cardiac::{self, CROP};
use medinfer_pipelines::phantom::{self, CardiacPhantom};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum PhantomCommand {
    /// A beating-heart SSFP cine short-axis exam with exact ground truth: the images, the truth
    /// masks (truth_labels.nii.gz: 1 LV cavity, 2 LV myocardium, 3 RV cavity), truth.json
    /// (EDV, ESV, EF, mass, per-phase volumes, the drawn parameters) and preview.png.
    Cardiac(PhantomCardiacArgs),
    /// Training patches for the cardiac segmentation model (x.npy: N x 1 x 96 x 96 z-scored
    /// patches at 1.6 mm, y.npy: N x 96 x 96 labels), from phantom exams with consecutive seeds.
    CardiacTraining(TrainingArgs),
    /// Accuracy of the cardiac pipeline on held-out phantom exams: Dice per structure, LV / RV
    /// EF error, LV mass error (the model card's figures).
    CardiacEval(EvalArgs),
}

#[derive(Args)]
pub struct EvalArgs {
    /// Seed of the first exam (training used seeds from 100000 up; keep below that).
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Number of exams.
    #[arg(long, default_value_t = 20)]
    pub exams: u64,
    /// Segmentation model (default: the shipped one, by --precision).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Backend: tract, ort, openvino or auto.
    #[arg(short, long, default_value = "auto")]
    pub backend: String,
    /// Which shipped model (ignored with --model).
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PipelinePrecision,
    /// Print JSON (every exam and the summary).
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PhantomFormat {
    /// One 4D NIfTI (cine.nii.gz, int16).
    Nifti,
    /// A DICOM cine series (dicom/IM_<slice>_<phase>.dcm, explicit VR little endian).
    Dicom,
}

#[derive(Args)]
pub struct PhantomCardiacArgs {
    /// Output folder (created).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Seed: everything (size, position, EF, noise, geometry) follows from it.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How the images are written.
    #[arg(long, value_enum, default_value = "nifti")]
    pub format: PhantomFormat,
    /// Print the truth as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct TrainingArgs {
    /// Output folder for x.npy and y.npy.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Number of phantom exams.
    #[arg(long, default_value_t = 200)]
    pub exams: u64,
    /// Seed of the first exam (the others follow consecutively).
    #[arg(long, default_value_t = 100_000)]
    pub first_seed: u64,
    /// Random phases per exam in addition to ED and ES.
    #[arg(long, default_value_t = 3)]
    pub extra_phases: usize,
    /// Largest random shift of the patch centre from the located heart, mm.
    #[arg(long, default_value_t = 12.0)]
    pub jitter_mm: f64,
}

pub fn cmd_phantom(cmd: PhantomCommand) -> Result<()> {
    match cmd {
        PhantomCommand::CardiacEval(a) => {
            let (kind, model) = pick_model(&a.backend, a.precision, a.model)?;
            let session = load_session(kind, &model, 8, None)?;
            let id = cardiac::ModelId::of(&model)?;
            let seeds: Vec<u64> = (a.first_seed..a.first_seed + a.exams).collect();
            let bar = crate::quant::bar(seeds.len(), "exams", a.json);
            let sum = cardiac::evaluate(&seeds, &session, &id, |e| {
                bar.inc(1);
                if !a.json {
                    bar.println(format!(
                        "seed {:>4}: Dice LV {:.3} myo {:.3} RV {:.3}; LV EF {:.1} vs {:.1}; mass {:.1} vs {:.1} g",
                        e.seed, e.dice[0], e.dice[1], e.dice[2], e.lv_ef[0], e.lv_ef[1],
                        e.lv_mass[0], e.lv_mass[1]
                    ));
                }
            })?;
            bar.finish_and_clear();
            if a.json {
                return crate::print_json(&serde_json::json!({
                    "model": id, "backend": session.info().backend.name(),
                    "precision": session.info().effective_precision, "summary": sum,
                }));
            }
            println!(
                "{} exams on {} ({}), model {} ({}...)",
                seeds.len(),
                session.info().backend,
                session.info().effective_precision,
                id.path,
                &id.sha256[..12]
            );
            println!(
                "mean Dice: LV cavity {:.4}, LV myocardium {:.4}, RV cavity {:.4}",
                sum.mean_dice[0], sum.mean_dice[1], sum.mean_dice[2]
            );
            println!(
                "LV EF error: mean {:.2} points, max {:.2}; RV EF mean error {:.2} points",
                sum.lv_ef_mae, sum.lv_ef_max_error, sum.rv_ef_mae
            );
            println!(
                "LV mass error: mean {:.2} %, max {:.2} %; LV EDV error: mean {:.2} %",
                sum.lv_mass_mape, sum.lv_mass_max_error_pct, sum.lv_edv_mape
            );
            Ok(())
        }
        PhantomCommand::Cardiac(a) => {
            let ph = write_phantom(&a.output, a.seed, a.format)?;
            if a.json {
                crate::print_json(&serde_json::json!({"truth": ph.truth, "params": ph.params}))?;
            } else {
                let t = &ph.truth;
                let p = &ph.params;
                println!(
                    "phantom seed {}: {} slices x {} phases, {}x{} at {:.2} mm, slices {:.1} mm + {:.1} mm gap",
                    p.seed, p.slices, p.phases, p.matrix, p.matrix, p.pixel_spacing_mm,
                    p.slice_thickness_mm, p.slice_gap_mm
                );
                println!(
                    "truth: LV EDV {:.1} ml, ESV {:.1} ml, EF {:.1} %; RV EDV {:.1} ml, ESV {:.1} ml, EF {:.1} %; LV mass {:.1} g (ED phase {}, ES phase {})",
                    t.lv_edv_ml, t.lv_esv_ml, t.lv_ef_pct, t.rv_edv_ml, t.rv_esv_ml, t.rv_ef_pct,
                    t.lv_mass_g, t.ed_phase, t.es_phase
                );
                println!("written to {}", a.output.display());
            }
            Ok(())
        }
        PhantomCommand::CardiacTraining(a) => {
            std::fs::create_dir_all(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))?;
            let seeds: Vec<u64> = (a.first_seed..a.first_seed + a.exams).collect();
            let bar = crate::quant::bar(seeds.len(), "exams", false);
            let mut xs = Vec::new();
            let mut ys = Vec::new();
            for chunk in seeds.chunks(8) {
                let (x, y, _) = cardiac::training_set(chunk, a.extra_phases, a.jitter_mm);
                xs.extend(x);
                ys.extend(y);
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            let n = ys.len() / (CROP * CROP);
            medinfer_io::npy::write(
                &a.output.join("x.npy"),
                &Tensor::from_f32(vec![n, 1, CROP, CROP], xs)?,
            )?;
            medinfer_io::npy::write(
                &a.output.join("y.npy"),
                &Tensor::new(vec![n, CROP, CROP], medinfer_core::TensorData::U8(ys))?,
            )?;
            println!(
                "{n} patches from {} exams in {}",
                a.exams,
                a.output.display()
            );
            Ok(())
        }
    }
}

/// Generates phantom `seed` and writes it into `dir`.
pub fn write_phantom(dir: &Path, seed: u64, format: PhantomFormat) -> Result<CardiacPhantom> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ph = phantom::cardiac(seed);
    match format {
        PhantomFormat::Nifti => nifti::write(dir.join("cine.nii.gz"), &ph.image, NiftiDtype::I16)?,
        PhantomFormat::Dicom => {
            let info = medinfer_io::dicom_write::SeriesInfo {
                modality: "MR".into(),
                description: "medinfer cardiac phantom, SSFP cine short axis".into(),
                uid_seed: seed + 1,
                slice_thickness: ph.params.slice_thickness_mm,
                rescale_intercept: 0.0,
            };
            medinfer_io::dicom_write::write_series(&dir.join("dicom"), &ph.image, &info)?;
        }
    }
    let mut lab = Volume {
        data: ph.labels.iter().map(|&v| v as f32).collect(),
        ..ph.image.clone()
    };
    lab.window = None;
    nifti::write(dir.join("truth_labels.nii.gz"), &lab, NiftiDtype::U8)?;
    std::fs::write(
        dir.join("truth.json"),
        serde_json::to_string_pretty(&serde_json::json!({"truth": ph.truth, "params": ph.params}))?,
    )?;
    let mid = cardiac::mid_ventricular_slice(
        &ph.labels,
        ph.image.dims,
        [ph.truth.ed_phase, ph.truth.es_phase],
    );
    cardiac::write_overlay_pair(
        &dir.join("preview.png"),
        &ph.image,
        &ph.labels,
        mid,
        [ph.truth.ed_phase, ph.truth.es_phase],
    )?;
    Ok(ph)
}

/// The trained cardiac model shipped with medinfer (see models/cardiac/README.md).
const CARDIAC_FP32: &[u8] = include_bytes!("../../../models/cardiac/cardiac-unet.onnx");
/// Its INT8 version (medinfer quantize with accuracy control, see the model card).
const CARDIAC_INT8: &[u8] = include_bytes!("../../../models/cardiac/cardiac-unet-int8.onnx");

#[derive(Subcommand)]
pub enum RunCommand {
    /// Cardiac cine-MRI: LV / RV volumes, ejection fractions and LV mass from a short-axis cine
    /// stack (4D NIfTI, or a DICOM cine series folder).
    Cardiac(RunCardiacArgs),
    /// Chest X-ray multi-label classification (TorchXRayVision conventions) over files and
    /// folders, in batch: results in input order, per-file errors, resumable CSV.
    Cxr(crate::cxr::RunCxrArgs),
    /// CT slice anatomy tagging: a body-region label per slice of a DICOM series and a
    /// per-series summary of the regions over slice ranges.
    Ct(crate::cxr::RunCtArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PipelinePrecision {
    /// INT8 model where the backend runs INT8 (ONNX Runtime, OpenVINO), else FP32.
    Auto,
    /// The FP32 model.
    Fp32,
    /// The INT8 (QDQ) model.
    Int8,
}

#[derive(Args)]
pub struct RunCardiacArgs {
    /// A 4D NIfTI file (x, y, slices, phases), or a folder / file of a DICOM cine series.
    pub input: PathBuf,
    /// Segmentation model (ONNX taking (batch, 1, 96, 96) z-scored patches at 1.6 mm and giving
    /// (batch, 4, 96, 96) class scores: background, LV cavity, LV myocardium, RV cavity).
    /// Default: medinfer's trained model, FP32 or INT8 by --precision.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Backend: tract, ort, openvino or auto (the fastest available).
    #[arg(short, long, default_value = "auto")]
    pub backend: String,
    /// Which shipped model to run (ignored with --model).
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PipelinePrecision,
    /// Images per inference request.
    #[arg(long, value_parser = crate::at_least_one(), default_value_t = 8)]
    pub batch: usize,
    /// Parallel inference streams (default: one per core, one thread each).
    #[arg(long)]
    pub streams: Option<usize>,
    /// Output folder: report.json, masks.nii.gz, ed_es.png, volumes.svg.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Phantom seed (held-out seeds below 100000 were never used in training).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Backend: tract, ort, openvino or auto (the fastest available).
    #[arg(short, long, default_value = "auto")]
    pub backend: String,
    /// Where the phantom and the results go (default: a folder under the system temp dir).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print the report and the truth as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Resolves the backend name, the precision and the model file to run.
fn pick_model(
    backend: &str,
    precision: PipelinePrecision,
    model: Option<PathBuf>,
) -> Result<(medinfer_engine::BackendKind, PathBuf)> {
    let kind = if backend.eq_ignore_ascii_case("auto") {
        medinfer_engine::BackendKind::auto()
    } else {
        medinfer_engine::BackendKind::parse(backend).ok_or_else(|| {
            anyhow::anyhow!("unknown backend '{backend}' (tract, ort, openvino, auto)")
        })?
    };
    if let Some(m) = model {
        return Ok((kind, m));
    }
    let int8 = match precision {
        PipelinePrecision::Int8 => true,
        PipelinePrecision::Fp32 => false,
        PipelinePrecision::Auto => kind != medinfer_engine::BackendKind::Tract,
    };
    let (bytes, name) = if int8 {
        (CARDIAC_INT8, "cardiac-unet-int8")
    } else {
        (CARDIAC_FP32, "cardiac-unet")
    };
    Ok((kind, materialize(bytes, name)?))
}

/// Writes an embedded model into the cache (once per content) and returns its path.
fn materialize(bytes: &[u8], name: &str) -> Result<PathBuf> {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    let dir = medinfer_engine::runtimes::home().join("models");
    let path = dir.join(format!("{name}-{}.onnx", &sha[..12]));
    if std::fs::metadata(&path)
        .map(|m| m.len() == bytes.len() as u64)
        .unwrap_or(false)
    {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}-{}.{}.tmp", &sha[..12], std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn load_session(
    kind: medinfer_engine::BackendKind,
    model: &Path,
    batch: usize,
    streams: Option<usize>,
) -> Result<medinfer_engine::Session> {
    let opts = medinfer_engine::SessionOptions {
        mode: medinfer_engine::Mode::Throughput,
        batch: Some(batch.max(1)),
        streams,
        ..Default::default()
    };
    medinfer_engine::load_on(kind, model, &opts)
        .with_context(|| format!("loading {} on {kind}", model.display()))
}

pub fn cmd_run(cmd: RunCommand) -> Result<()> {
    match cmd {
        RunCommand::Cxr(a) => crate::cxr::cmd_run_cxr(a),
        RunCommand::Ct(a) => crate::cxr::cmd_run_ct(a),
        RunCommand::Cardiac(a) => {
            let (kind, model) = pick_model(&a.backend, a.precision, a.model)?;
            let t0 = std::time::Instant::now();
            let session = load_session(kind, &model, a.batch, a.streams)?;
            let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
            let id = cardiac::ModelId::of(&model)?;
            let res = cardiac::run(&a.input, &session, id, a.output.as_deref())?;
            if a.json {
                crate::print_json(&res.report)?;
            } else {
                print_report(&res.report, None, load_ms);
                if let Some(o) = &a.output {
                    println!("outputs: {}", o.display());
                }
            }
            Ok(())
        }
    }
}

pub fn cmd_demo(a: DemoArgs) -> Result<()> {
    let dir = a
        .output
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("medinfer-demo-{}", a.seed)));
    let t0 = std::time::Instant::now();
    let ph = write_phantom(&dir.join("exam"), a.seed, PhantomFormat::Nifti)?;
    let gen_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let (kind, model) = pick_model(&a.backend, PipelinePrecision::Auto, None)?;
    let t0 = std::time::Instant::now();
    let session = load_session(kind, &model, 8, None)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let id = cardiac::ModelId::of(&model)?;
    let input = dir.join("exam").join("cine.nii.gz");
    let res = cardiac::run(&input, &session, id, Some(&dir.join("results")))?;
    if a.json {
        return crate::print_json(&serde_json::json!({
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

fn print_report(r: &cardiac::CardiacReport, truth: Option<&phantom::Truth>, load_ms: f64) {
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

#[derive(Args)]
pub struct BenchPipelineArgs {
    /// Pipeline: cardiac (a phantom exam), cxr (a folder of radiographs) or ct (a DICOM series).
    #[arg(value_enum)]
    pub pipeline: BenchPipeline,
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
    /// Timed runs per configuration (configurations are interleaved round by round).
    #[arg(long, value_parser = crate::at_least_one(), default_value_t = 10)]
    pub runs: usize,
    /// Slices x phases of the phantom exam (the published figure is for 10 x 25).
    #[arg(long, default_value = "10x25")]
    pub exam: String,
    /// Phantom seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Images per inference request.
    #[arg(long, value_parser = crate::at_least_one(), default_value_t = 8)]
    pub batch: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BenchPipeline {
    /// Cardiac cine-MRI: read a 4D NIfTI, preprocess, segment, quantify, write every output.
    Cardiac,
    /// Chest X-ray classification over a folder (decode, preprocess, infer, scores).
    Cxr,
    /// CT slice tagging of a series (read + assemble, window + resize, infer, summary).
    Ct,
}

#[derive(serde::Serialize)]
struct PipelineBench {
    backend: String,
    precision: String,
    model_load_ms: f64,
    runs: usize,
    images: usize,
    /// Median of each stage over the runs, ms.
    median: cardiac::Timings,
    /// Fastest end-to-end run, ms.
    best_total_ms: f64,
    /// Images per second end to end (median total).
    end_to_end_images_per_s: f64,
    /// Images per second of the segment stage (median).
    segment_images_per_s: f64,
}

pub fn cmd_bench_pipeline(a: BenchPipelineArgs) -> Result<()> {
    match a.pipeline {
        BenchPipeline::Cardiac => {}
        BenchPipeline::Cxr | BenchPipeline::Ct => return crate::cxr::bench_batch_pipeline(&a),
    }
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
    let dir = tempfile_dir("medinfer-bench-cardiac")?;
    let ph = phantom::cardiac_sized(a.seed, Some(slices), Some(phases));
    let input = dir.join("cine.nii.gz");
    nifti::write(&input, &ph.image, NiftiDtype::I16)?;
    let kinds: Vec<medinfer_engine::BackendKind> = if a.backend == "all" {
        medinfer_engine::availability_all()
            .into_iter()
            .filter(|v| v.available)
            .map(|v| v.backend)
            .collect()
    } else {
        a.backend
            .split(',')
            .map(|b| {
                medinfer_engine::BackendKind::parse(b.trim())
                    .ok_or_else(|| anyhow::anyhow!("unknown backend '{b}'"))
            })
            .collect::<Result<_>>()?
    };
    let mut configs = Vec::new();
    for k in kinds {
        for p in a.precision.split(',') {
            let prec = match p.trim() {
                "fp32" => PipelinePrecision::Fp32,
                "int8" if k == medinfer_engine::BackendKind::Tract => continue,
                "int8" => PipelinePrecision::Int8,
                other => anyhow::bail!("unknown precision '{other}' (fp32, int8)"),
            };
            let (_, model) = pick_model(k.name(), prec, None)?;
            let t0 = std::time::Instant::now();
            let session = load_session(k, &model, a.batch, None)?;
            let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
            let id = cardiac::ModelId::of(&model)?;
            configs.push((session, id, load_ms, Vec::<cardiac::Timings>::new()));
        }
    }
    if configs.is_empty() {
        anyhow::bail!("no configuration to run");
    }
    let bar = crate::quant::bar(configs.len() * (a.runs + 1), "runs", a.json);
    for round in 0..=a.runs {
        for (i, (session, id, _, times)) in configs.iter_mut().enumerate() {
            let out = dir.join(format!("out{i}"));
            let res = cardiac::run(&input, session, id.clone(), Some(&out))?;
            if round > 0 {
                times.push(res.report.timings);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let images = slices * phases;
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let rows: Vec<PipelineBench> = configs
        .iter()
        .map(|(s, _, load_ms, times)| {
            let col = |f: fn(&cardiac::Timings) -> f64| med(&mut times.iter().map(f).collect());
            let median = cardiac::Timings {
                read_ms: col(|t| t.read_ms),
                preprocess_ms: col(|t| t.preprocess_ms),
                segment_ms: col(|t| t.segment_ms),
                postprocess_ms: col(|t| t.postprocess_ms),
                write_ms: col(|t| t.write_ms),
                total_ms: col(|t| t.total_ms),
            };
            PipelineBench {
                backend: s.info().backend.name().into(),
                precision: s.info().effective_precision.clone(),
                model_load_ms: *load_ms,
                runs: times.len(),
                images,
                best_total_ms: times.iter().map(|t| t.total_ms).fold(f64::MAX, f64::min),
                end_to_end_images_per_s: images as f64 / (median.total_ms / 1000.0),
                segment_images_per_s: images as f64 / (median.segment_ms / 1000.0),
                median,
            }
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    if a.json {
        return crate::print_json(&serde_json::json!({
            "pipeline": "cardiac", "exam": format!("{slices}x{phases}"),
            "matrix": ph.params.matrix, "cores": medinfer_core::usable_cores(), "results": rows,
        }));
    }
    println!(
        "cardiac pipeline, phantom exam {slices} slices x {phases} phases ({images} images, {}x{} px), {} runs each, medians in ms",
        ph.params.matrix, ph.params.matrix, a.runs
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
    for r in &rows {
        let m = &r.median;
        println!(
            "{:<9} {:<10} {:>7.1} {:>7.1} {:>8.1} {:>8.1} {:>7.1} {:>8.1} {:>8.1} {:>10.0} {:>10.0}",
            r.backend, r.precision, m.read_ms, m.preprocess_ms, m.segment_ms, m.postprocess_ms,
            m.write_ms, m.total_ms, r.best_total_ms, r.end_to_end_images_per_s, r.segment_images_per_s
        );
    }
    Ok(())
}

fn tempfile_dir(prefix: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}
