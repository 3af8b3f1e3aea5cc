//! Whole-pipeline benchmarks (`medinfer bench-pipeline`): every stage of a clinical pipeline
//! timed end to end, not only the engine.
//!
//! - [`cardiac`]: a phantom exam through read, preprocess, segment, postprocess and write, per
//!   backend and precision, configurations interleaved round by round (a noisy host slows them
//!   all alike), medians per stage.
//! - [`batch`]: chest X-ray or CT over a folder: each stage's CPU time per image measured one
//!   image at a time on one core, the ideal rate that implies (cores / sum of stage times), and
//!   the real streaming pipeline and the engine alone, interleaved.

use medinfer_engine::{BackendKind, Session};
use medinfer_io::nifti::{self, NiftiDtype};
use medinfer_pipelines::cardiac::{self, Timings};
use medinfer_pipelines::{batch as executor, ct, cxr, models, phantom, Pipeline, PipelineError};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// The shipped model a cardiac configuration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShippedPrecision {
    /// The FP32 model.
    Fp32,
    /// The INT8 model.
    Int8,
}

/// A cardiac pipeline benchmark.
#[derive(Clone, Debug)]
pub struct CardiacBenchRequest {
    /// (backend, model) configurations, in table order.
    pub configs: Vec<(BackendKind, ShippedPrecision)>,
    /// Timed runs per configuration (after one untimed run each).
    pub runs: usize,
    /// Slices x phases of the phantom exam.
    pub exam: (usize, usize),
    /// Phantom seed.
    pub seed: u64,
    /// Images per inference request.
    pub batch: usize,
}

/// One configuration's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineBench {
    /// Backend.
    pub backend: String,
    /// Precision the engine ran with.
    pub precision: String,
    /// Model load (compile) time, ms.
    pub model_load_ms: f64,
    /// Timed runs.
    pub runs: usize,
    /// Images (slices x phases) per exam.
    pub images: usize,
    /// Median of each stage over the runs, ms.
    pub median: Timings,
    /// Fastest end-to-end run, ms.
    pub best_total_ms: f64,
    /// Images per second end to end (median total).
    pub end_to_end_images_per_s: f64,
    /// Images per second of the segment stage (median).
    pub segment_images_per_s: f64,
}

/// The cardiac benchmark's result (fields in the order `medinfer bench-pipeline --json` has
/// always printed them).
#[derive(Clone, Debug, Serialize)]
pub struct CardiacBench {
    /// Cores this process may use.
    pub cores: usize,
    /// `SLICESxPHASES`.
    pub exam: String,
    /// In-plane matrix of the phantom.
    pub matrix: usize,
    /// Always `cardiac`.
    pub pipeline: &'static str,
    /// One row per configuration.
    pub results: Vec<PipelineBench>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn load(
    kind: BackendKind,
    model: &std::path::Path,
    batch: usize,
) -> Result<Session, PipelineError> {
    let opts = medinfer_engine::SessionOptions {
        mode: medinfer_engine::Mode::Throughput,
        batch: Some(batch.max(1)),
        ..Default::default()
    };
    Ok(medinfer_engine::load_on(kind, model, &opts)?)
}

/// Runs the cardiac benchmark; `progress` is called after every run.
pub fn cardiac(
    req: &CardiacBenchRequest,
    mut progress: impl FnMut(),
) -> Result<CardiacBench, PipelineError> {
    let (slices, phases) = req.exam;
    let dir = std::env::temp_dir().join(format!("medinfer-bench-cardiac-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| PipelineError::Output {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let ph = phantom::cardiac_sized(req.seed, Some(slices), Some(phases));
    let input = dir.join("cine.nii.gz");
    nifti::write(&input, &ph.image, NiftiDtype::I16)?;
    let mut configs = Vec::new();
    for &(kind, prec) in &req.configs {
        let model = models::shipped_cardiac(prec == ShippedPrecision::Int8)?;
        let t0 = Instant::now();
        let session = load(kind, &model, req.batch)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let id = models::ModelId::of(&model)?;
        configs.push((session, id, load_ms, Vec::<Timings>::new()));
    }
    if configs.is_empty() {
        return Err(PipelineError::Config {
            what: "bench-pipeline".into(),
            reason: "no configuration to run".into(),
        });
    }
    for round in 0..=req.runs {
        for (i, (session, id, _, times)) in configs.iter_mut().enumerate() {
            let request = cardiac::CardiacRequest {
                input: input.clone(),
                model: id.clone(),
                output: Some(dir.join(format!("out{i}"))),
                spec: cardiac::CardiacSpec::shipped(),
            };
            let res = cardiac::run(session, &request)?;
            if round > 0 {
                times.push(res.report.timings);
            }
            progress();
        }
    }
    let images = slices * phases;
    let results = configs
        .iter()
        .map(|(s, _, load_ms, times)| {
            let col = |f: fn(&Timings) -> f64| median(&mut times.iter().map(f).collect::<Vec<_>>());
            let median = Timings {
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
    Ok(CardiacBench {
        pipeline: "cardiac",
        exam: format!("{slices}x{phases}"),
        matrix: ph.params.matrix,
        cores: medinfer_core::usable_cores(),
        results,
    })
}

/// A chest X-ray or CT folder benchmark.
#[derive(Clone, Debug)]
pub struct BatchBenchRequest {
    /// [`Pipeline::Cxr`] or [`Pipeline::Ct`].
    pub pipeline: Pipeline,
    /// Folder of radiographs, or of one CT series.
    pub input: PathBuf,
    /// The model file.
    pub model: PathBuf,
    /// Backend name (`auto`, `tract`, `ort`, `openvino`).
    pub backend: String,
    /// Cores: inference streams (one thread each) and decode workers.
    pub cores: usize,
    /// Images per inference request.
    pub batch: usize,
    /// Timed rounds.
    pub runs: usize,
}

/// The folder benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct StageBench {
    /// `cxr` or `ct`.
    pub pipeline: &'static str,
    /// The folder.
    pub input: String,
    /// Images in it.
    pub images: usize,
    /// Cores used.
    pub cores: usize,
    /// Backend.
    pub backend: String,
    /// Precision the engine ran with.
    pub precision: String,
    /// Images per request.
    pub batch: usize,
    /// CPU time per image of each stage, measured one image at a time on one core, ms.
    pub per_image_ms: serde_json::Value,
    /// cores / (sum of the per-image stage times): perfect overlap, no idle core.
    pub ideal_images_per_s: f64,
    /// The real pipeline (decoders + streams, bounded queue), median of the runs.
    pub end_to_end_images_per_s: f64,
    /// end to end / ideal.
    pub efficiency: f64,
    /// The engine alone on already preprocessed inputs, same session and batch.
    pub engine_only_images_per_s: f64,
    /// Timed rounds.
    pub runs: usize,
}

/// Runs the folder benchmark.
pub fn batch(req: &BatchBenchRequest) -> Result<StageBench, PipelineError> {
    let cores = req.cores.max(1);
    let name = req.pipeline.name();
    let load = |streams: usize| -> Result<Session, PipelineError> {
        Ok(medinfer_engine::load(
            &req.backend,
            &req.model,
            &medinfer_engine::SessionOptions {
                mode: medinfer_engine::Mode::Throughput,
                batch: Some(req.batch.max(1)),
                streams: Some(streams),
                threads: Some(1),
                ..Default::default()
            },
        )?)
    };
    let one = load(1)?;
    let all = load(cores)?;
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let input = &req.input;
    let no_input = |what: &str| PipelineError::input(input.display().to_string(), what.to_string());

    // 1. One by one, one core: decode and preprocess per image, then inference per image. Two
    //    passes over the files; the second is kept, so that first-touch costs (page cache,
    //    allocator growth), which the steady-state pipeline does not pay, are not counted.
    let one_by_one = || -> Result<(f64, f64, Vec<Vec<f32>>), PipelineError> {
        Ok(match req.pipeline {
            Pipeline::Cxr => {
                let files = cxr::collect_inputs(std::slice::from_ref(input))?;
                if files.is_empty() {
                    return Err(no_input("no radiographs"));
                }
                let (mut d, mut p, mut xs) = (0.0, 0.0, Vec::new());
                medinfer_io::read_images(&files[0])?; // warm the page cache
                for f in &files {
                    let t = Instant::now();
                    let img = medinfer_io::read_images(f)?.swap_remove(0);
                    d += ms(t);
                    let t = Instant::now();
                    xs.push(cxr::preprocess_image(img).map_err(|e| {
                        PipelineError::input(f.display().to_string(), e.to_string())
                    })?);
                    p += ms(t);
                }
                let n = files.len() as f64;
                (d / n, p / n, xs)
            }
            _ => {
                // One file at a time on this core: decode, then window + resize.
                let files = medinfer_io::series::list_files(input)?;
                let (mut d, mut p, mut xs) = (0.0, 0.0, Vec::new());
                for f in &files {
                    let bytes = std::fs::read(f).map_err(|e| medinfer_io::IoError::Os {
                        path: f.display().to_string(),
                        source: e,
                    })?;
                    std::hint::black_box(bytes); // warm the page cache
                }
                for f in &files {
                    let t = Instant::now();
                    let Ok(dcm) = medinfer_io::dicom::DicomFile::open(f) else {
                        continue; // not DICOM: the pipeline ignores it too
                    };
                    let img = dcm.images()?.swap_remove(0);
                    d += ms(t);
                    let t = Instant::now();
                    xs.push(
                        ct::preprocess_image(img, ct::CtPrep::default())
                            .map_err(|e| PipelineError::input(f.display().to_string(), e))?,
                    );
                    p += ms(t);
                }
                if xs.is_empty() {
                    return Err(no_input("no DICOM slices"));
                }
                let n = xs.len() as f64;
                (d / n, p / n, xs)
            }
        })
    };
    one_by_one()?;
    let (decode_ms, prep_ms, inputs) = one_by_one()?;
    let images = inputs.len();
    let idx: Vec<usize> = (0..images).collect();
    let sample = |&i: &usize| Ok(&inputs[i][..]);
    let engine = |s: &Session, decoders: usize| -> Result<f64, PipelineError> {
        let t = Instant::now();
        executor::run_ordered(&idx, s, decoders, sample, |_, _| {})?;
        Ok(t.elapsed().as_secs_f64())
    };
    engine(&one, 1)?; // warm-up
    let infer_ms = engine(&one, 1)? * 1e3 / images as f64;
    // Post-processing of the model outputs: sigmoid + thresholds (CXR), softmax + arg-max (CT).
    let mut outputs = Vec::with_capacity(images);
    executor::run_ordered(&idx, &one, 1, sample, |_, r| outputs.extend(r.ok()))?;
    let t = Instant::now();
    for o in &outputs {
        match req.pipeline {
            Pipeline::Cxr => {
                std::hint::black_box(cxr::scores(o, None));
            }
            _ => {
                let p = ct::softmax(o);
                std::hint::black_box(p.iter().cloned().fold(f32::MIN, f32::max));
            }
        }
    }
    let post_ms = ms(t) / outputs.len().max(1) as f64;
    let ideal = cores as f64 / ((decode_ms + prep_ms + infer_ms + post_ms) / 1e3);

    // 2. The real pipeline and the engine alone, interleaved.
    let mut e2e = Vec::new();
    let mut eng = Vec::new();
    for round in 0..=req.runs {
        let t = Instant::now();
        match req.pipeline {
            Pipeline::Cxr => {
                let files = cxr::collect_inputs(std::slice::from_ref(input))?;
                let mut failed = 0;
                executor::run_ordered(
                    &files,
                    &all,
                    cores,
                    |f: &PathBuf| cxr::preprocess_file(f).map_err(|e| e.to_string()),
                    |_, r| {
                        if let Ok(l) = r {
                            std::hint::black_box(cxr::scores(&l, None));
                        } else {
                            failed += 1;
                        }
                    },
                )?;
                if failed > 0 {
                    return Err(no_input(&format!("{failed} file(s) failed")));
                }
            }
            _ => {
                let regions: Vec<String> = ct::default_regions();
                ct::run(input, &all, ct::CtPrep::default(), &regions, cores)?;
            }
        }
        let e = t.elapsed().as_secs_f64();
        let g = engine(&all, cores)?;
        if round > 0 {
            e2e.push(images as f64 / e);
            eng.push(images as f64 / g);
        }
    }
    let e2e = median(&mut e2e);
    Ok(StageBench {
        pipeline: name,
        input: input.display().to_string(),
        images,
        cores,
        backend: all.info().backend.name().into(),
        precision: all.info().effective_precision.clone(),
        batch: req.batch,
        per_image_ms: serde_json::json!({
            "decode": decode_ms, "preprocess": prep_ms, "inference": infer_ms,
            "postprocess": post_ms,
        }),
        ideal_images_per_s: ideal,
        end_to_end_images_per_s: e2e,
        efficiency: e2e / ideal,
        engine_only_images_per_s: median(&mut eng),
        runs: req.runs,
    })
}

/// An fMRI pipeline benchmark: a phantom cohort through every stage, then the classifier
/// alone per configuration.
#[derive(Clone, Debug)]
pub struct FmriBenchRequest {
    /// (backend, classifier model) configurations, in table order; the first also runs the
    /// whole pipeline for the stage times.
    pub configs: Vec<(BackendKind, ShippedPrecision)>,
    /// Whole-pipeline runs for the stage medians, and classifier rounds per configuration.
    pub runs: usize,
    /// Subjects in the phantom cohort.
    pub subjects: usize,
    /// Phantom seed (held out from training: below 100000).
    pub seed: u64,
    /// Group components (`None`: estimated).
    pub components: Option<usize>,
}

/// One classifier configuration's figures.
#[derive(Clone, Debug, Serialize)]
pub struct FmriClassifierBench {
    /// Backend.
    pub backend: String,
    /// Precision the engine ran with.
    pub precision: String,
    /// Model load (compile) time, ms.
    pub model_load_ms: f64,
    /// Components classified per round (group and subject maps).
    pub samples: usize,
    /// Median time of a round, ms.
    pub median_ms: f64,
    /// Components per second (median round).
    pub samples_per_s: f64,
    /// Share of the labels equal to the truth (components whose group map matches a source).
    pub accuracy: f64,
    /// Share of the labels equal to the first FP32 configuration's.
    pub agreement_with_fp32: Option<f64>,
}

/// The fMRI benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct FmriBench {
    /// Always `fmri`.
    pub pipeline: &'static str,
    /// Cores this process may use.
    pub cores: usize,
    /// Subjects and volumes per subject of the phantom cohort.
    pub subjects: usize,
    /// Volumes per subject.
    pub volumes: usize,
    /// Group components.
    pub components: usize,
    /// Whole-pipeline runs behind the stage medians.
    pub pipeline_runs: usize,
    /// The configuration the whole pipeline ran with.
    pub pipeline_config: String,
    /// Median of each stage over the runs, s.
    pub median_stage_s: medinfer_pipelines::fmri::StageTimes,
    /// Peak resident memory of the process, MB.
    pub peak_rss_mb: f64,
    /// The classifier alone, one row per configuration (rounds interleaved).
    pub classifier: Vec<FmriClassifierBench>,
}

/// Runs the fMRI benchmark; `progress` is called after every run or round.
pub fn fmri(
    req: &FmriBenchRequest,
    mut progress: impl FnMut(),
) -> Result<FmriBench, PipelineError> {
    use medinfer_pipelines::fmri::{self, eval, slices, Classifier, FmriRequest, StageTimes};
    let Some(&(first_kind, first_prec)) = req.configs.first() else {
        return Err(PipelineError::Config {
            what: "configurations".into(),
            reason: "none to run".into(),
        });
    };
    let dir = std::env::temp_dir().join(format!("medinfer-bench-fmri-{}", std::process::id()));
    let out_err = |e: std::io::Error| PipelineError::output(&dir, e);
    std::fs::create_dir_all(&dir).map_err(out_err)?;
    let spec = fmri::phantom::CohortSpec {
        subjects: req.subjects,
        seed: req.seed,
        ..Default::default()
    };
    let cohort = dir.join("cohort");
    let out = dir.join("out");
    let files = eval::write_cohort(&cohort, &spec, &mut |_, _| {})?;
    let model_of = |p: ShippedPrecision| models::shipped_fmri(p == ShippedPrecision::Int8);
    // The whole pipeline, `runs` times, with the first configuration.
    crate::reset_peak_rss();
    let path = model_of(first_prec)?;
    let session = load(first_kind, &path, 8)?;
    let classifier = Classifier {
        session: &session,
        model: models::ModelId::of(&path)?,
    };
    let mut times: Vec<StageTimes> = Vec::new();
    let mut report = None;
    for _ in 0..req.runs.max(1) {
        let mut r = FmriRequest::new(files.clone(), out.clone());
        r.components = req.components;
        let rep = fmri::run(&r, Some(&classifier), &mut |_, _, _| {})?;
        times.push(rep.times_s.clone());
        report = Some(rep);
        progress();
    }
    let peak_rss_mb = crate::peak_rss_mb();
    let report = report.expect("at least one run");
    let pipeline_config = format!(
        "{} {}",
        session.info().backend.name(),
        session.info().effective_precision
    );
    drop(session);
    let med = |f: fn(&StageTimes) -> f64| median(&mut times.iter().map(f).collect::<Vec<_>>());
    let median_stage_s = StageTimes {
        check: med(|t| t.check),
        migp: med(|t| t.migp),
        ica: med(|t| t.ica),
        dual_regression: med(|t| t.dual_regression),
        classify: med(|t| t.classify),
        write: med(|t| t.write),
        total: med(|t| t.total),
    };
    // The classifier alone on the last run's components, configurations interleaved.
    let rec = eval::recovery(&cohort, &out.join("group_maps.nii.gz"), &[])?;
    let samples = slices::from_outputs(&out, &report)?;
    let truth: Vec<&str> = samples
        .iter()
        .map(|s| rec.component_labels[s.component].as_str())
        .collect();
    let xs: Vec<Vec<f32>> = samples.into_iter().map(|s| s.x).collect();
    let mut loaded = Vec::new();
    for &(kind, prec) in &req.configs {
        let path = model_of(prec)?;
        let t0 = Instant::now();
        let s = load(kind, &path, 8)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let id = models::ModelId::of(&path)?;
        loaded.push((s, id, load_ms, Vec::<f64>::new(), Vec::new()));
    }
    for round in 0..=req.runs.max(1) {
        for (s, id, _, ms, labels) in loaded.iter_mut() {
            let c = Classifier {
                session: s,
                model: id.clone(),
            };
            let t0 = Instant::now();
            let l = fmri::classify(&c, &xs, &mut |_, _| {})?;
            if round > 0 {
                ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            *labels = l.into_iter().map(|(l, _)| l).collect();
        }
        progress();
    }
    let scored: Vec<usize> = (0..truth.len())
        .filter(|&i| truth[i] != fmri::UNMATCHED)
        .collect();
    let fp32_labels = req
        .configs
        .iter()
        .position(|c| c.1 == ShippedPrecision::Fp32)
        .map(|i| loaded[i].4.clone());
    let classifier = loaded
        .into_iter()
        .map(|(s, _, model_load_ms, mut ms, labels)| {
            let median_ms = median(&mut ms);
            let share = |f: &dyn Fn(usize) -> bool, idx: &[usize]| {
                idx.iter().filter(|&&i| f(i)).count() as f64 / idx.len().max(1) as f64
            };
            let all: Vec<usize> = (0..labels.len()).collect();
            FmriClassifierBench {
                backend: s.info().backend.name().to_string(),
                precision: s.info().effective_precision.clone(),
                model_load_ms,
                samples: xs.len(),
                median_ms,
                samples_per_s: xs.len() as f64 / (median_ms / 1000.0),
                accuracy: share(&|i| labels[i] == truth[i], &scored),
                agreement_with_fp32: fp32_labels
                    .as_ref()
                    .map(|f| share(&|i| labels[i] == f[i], &all)),
            }
        })
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    Ok(FmriBench {
        pipeline: "fmri",
        cores: medinfer_core::usable_cores(),
        subjects: req.subjects,
        volumes: spec.volumes,
        components: report.components,
        pipeline_runs: times.len(),
        pipeline_config,
        median_stage_s,
        peak_rss_mb,
        classifier,
    })
}
