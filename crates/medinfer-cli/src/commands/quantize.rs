//! `medinfer quantize`: INT8 (QDQ ONNX) with calibration data, bias correction and optional
//! accuracy control.

use crate::args::{bar, print_json};
use anyhow::{bail, Context, Result};
use clap::Args;
use medinfer_core::Tensor;
use medinfer_engine::calibrate::{self as q, AccuracyControl, Metric, Ranking};
use medinfer_engine::BackendKind;
use medinfer_onnx::qdq::{self as quant, CalibMethod, QuantConfig};
use medinfer_onnx::OptimizeReport;
use medinfer_pipelines::arrays::{self, InputSlot};
use medinfer_pipelines::models;
use medinfer_pipelines::samples::shuffled_indices;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct QuantizeArgs {
    /// FP32 ONNX file, or the name of a zoo model.
    pub model: String,
    /// Output ONNX file (QDQ INT8).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Calibration data. One-input models: a folder of .npy files (or one file), each one
    /// sample shaped like the model input without the batch axis, or several stacked along a
    /// first axis. Any model, several inputs included: .npz files keyed by input name
    /// (np.savez), or folders holding INPUT_NAME.npy for every input; each array one sample
    /// or a stack. Element types as the model's inputs. A model with dynamic dimensions
    /// (height and width of a detector, say) takes samples of any size, each run at its own.
    /// With --pipeline: a folder of that pipeline's input files (radiographs, CT series,
    /// cine exams).
    #[arg(long)]
    pub calib: PathBuf,
    /// Fix an input's shape, batch included, as NAME=1x3x640x640 (or just 1x3x640x640 for a
    /// one-input model); repeat for several inputs. Calibration and validation samples must
    /// then have it. Without it, dynamic dimensions take each sample's own size.
    #[arg(long, value_name = "[NAME=]DIMS")]
    pub input_shape: Vec<String>,
    /// Make the calibration and validation samples from images with this pipeline's own
    /// preprocessing: cxr (radiographs -> 1x224x224), ct (every slice of every DICOM series,
    /// window 40,400 -> 1x128x128) or cardiac (4D NIfTI / DICOM cine exams -> one 1x96x96 heart
    /// patch per slice and phase). Unreadable files are skipped with a warning.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Calibration samples to use: a shuffled subset of this size (all if fewer).
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// Range method of activations: percentile (the 99.99th percentile of each side, the
    /// default), percentile:P, minmax (smallest and largest value seen), mean-minmax (the mean
    /// of each sample's extremes, NNCF's default) or entropy (KL divergence, TensorRT's).
    /// Measured in docs/benchmarks.md: percentile is as good as minmax on classifiers and better
    /// on dense outputs (PP-OCRv4 detector IoU 0.971 vs 0.943, U-Net Dice 0.769 vs 0.758).
    #[arg(long, default_value = "percentile")]
    pub method: String,
    /// Keep layers in floating point: a node name, an op type (e.g. Gemm) or a regular
    /// expression matched against node names. Repeat for several.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Engines to lay the model out for: portable (never slower than FP32 on ONNX Runtime and
    /// OpenVINO: 3-D convolutions stay float, since ONNX Runtime's integer 3-D convolution is
    /// slower than its float one) or openvino (3-D convolutions in INT8, and negative-valued
    /// activations as symmetric INT8, NNCF's scheme: faster on OpenVINO for DenseNets,
    /// transposed-convolution and 3-D U-Nets, but slower on ONNX Runtime). Both are standard
    /// QDQ models that every engine runs correctly.
    #[arg(long, default_value = "portable")]
    pub target: String,
    /// With --target openvino: write negative-valued activations as symmetric INT8 (on) or as
    /// UINT8 with a zero point (off). Default: on when this CPU has AMX; without it OpenVINO
    /// computes INT8-input convolutions inaccurately (measured on AVX2 Zen 3 and AVX-512 VNNI
    /// Zen 4: cosine 0.85-0.86), so quantize on the CPU you deploy on, or say on.
    #[arg(long, value_parser = ["on", "off"])]
    pub signed_activations: Option<String>,
    /// 7-bit weights against the 16-bit saturation of INT8 kernels on CPUs without VNNI
    /// (AVX2): first-layer (the layers reading the model's inputs; NNCF's default), all, or
    /// none (8-bit everywhere: only for VNNI deployments). Measured on AVX2: a detector's IoU
    /// against FP32 0.31 on ONNX Runtime without the fix, 0.999 with it.
    #[arg(long, default_value = "first-layer", value_name = "WHICH")]
    pub overflow_fix: String,
    /// Do not correct biases for the mean shift that weight rounding causes.
    #[arg(long)]
    pub no_bias_correction: bool,
    /// Do not run `optimize` first (batch-norm folding matters for INT8 speed and accuracy).
    #[arg(long)]
    pub no_optimize: bool,
    /// Validation data (same format as --calib): enables accuracy control.
    #[arg(long)]
    pub validate: Option<PathBuf>,
    /// Validation samples to use (a shuffled subset).
    #[arg(long, default_value_t = 100)]
    pub validate_samples: usize,
    /// Accuracy metric of INT8 against FP32 outputs: top1 (arg-max agreement), cosine, nmse
    /// (1 - normalised MSE), dice (arg-max label maps, foreground classes), iou:T (pooled IoU
    /// of the outputs thresholded at T, e.g. iou:0.3 for a text detector's probability map;
    /// iou = iou:0.5), or auc (mean ROC AUC against --labels; the drop is FP32's AUC minus
    /// INT8's).
    #[arg(long, default_value = "cosine")]
    pub metric: String,
    /// Ground-truth labels for `--metric auc`: an NPY of shape (samples, labels), one row per
    /// validation sample in file-name order (values 0 / 1, NaN = unknown).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Largest allowed drop of the metric (FP32 scores 1): layers are reverted to floating
    /// point (weights and inputs), the most harmful first, until the drop is within it; the
    /// shortest such list is searched for (doubling, then bisection).
    #[arg(long, default_value_t = 0.005)]
    pub max_drop: f64,
    /// How accuracy control ranks layers: measured (each layer reverted alone and scored on
    /// --ranking-samples validation samples; one evaluation per layer) or heuristic (the
    /// quantizer's sensitivity estimate; no extra evaluations).
    #[arg(long, default_value = "measured")]
    pub ranking: String,
    /// Validation samples used to rank layers with --ranking measured (the first ones; 0 = all).
    #[arg(long, default_value_t = 64)]
    pub ranking_samples: usize,
    /// Write the model even when accuracy control could not meet --max-drop.
    #[arg(long)]
    pub force: bool,
    /// Split a convolution that reads a Concat into one convolution per concatenated input
    /// (plus Adds; exact in float) when the inputs' calibrated ranges differ by more than this
    /// factor, so each gets its own INT8 scale: a U-Net decoder's ReLU skip (range ~1) is
    /// otherwise quantized at the step of the transposed convolution's output beside it
    /// (range ~400). Measured on deepbrain's 3-D U-Net in docs/benchmarks.md. Off by default.
    #[arg(long, value_name = "RATIO")]
    pub split_concat: Option<f32>,
    /// Engine that runs calibration and validation: tract, ort, openvino or auto. Auto
    /// calibrates on ONNX Runtime (then OpenVINO, then tract: ONNX Runtime is the fastest with
    /// many exposed tensors) and validates on the target's engine: OpenVINO for --target
    /// openvino (the accuracy of the engine deployed on, and its fast INT8 3-D kernels), else
    /// the calibration engine.
    #[arg(short, long, default_value = "auto")]
    pub backend: String,
    /// Seed of the shuffle that picks the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The engine `auto` picks for calibration and validation: ONNX Runtime first, because with a
/// model's intermediate tensors exposed as outputs it ran DenseNet-121's calibration 1.5x faster
/// than OpenVINO (8.9 vs 13.4 s for 100 samples); then OpenVINO, then tract.
fn calibration_backend() -> BackendKind {
    [BackendKind::Ort, BackendKind::OpenVino]
        .into_iter()
        .find(|k| medinfer_engine::backend(*k).availability().available)
        .unwrap_or(BackendKind::Tract)
}

/// Samples made by a pipeline's preprocessing from the files under `dir` (see
/// `medinfer_pipelines::samples`), as one-input samples of shape `(1, per...)`; skipped files
/// are warned about on stderr.
fn pipeline_samples(
    pl: medinfer_pipelines::samples::Pipeline,
    dir: &Path,
    pick: Option<(usize, u64)>,
    quiet: bool,
) -> Result<Vec<Vec<Tensor>>> {
    let s = medinfer_pipelines::samples::samples(pl, dir, pick)?;
    if !s.skipped.is_empty() && !quiet {
        let (what, why) = &s.skipped[0];
        let example = if why.starts_with(what.as_str()) {
            why.clone()
        } else {
            format!("{what}: {why}")
        };
        eprintln!(
            "warning: {}: {} input(s) skipped, e.g. {example}",
            dir.display(),
            s.skipped.len(),
        );
    }
    let mut shape = vec![1];
    shape.extend_from_slice(&pl.sample_shape());
    s.inputs
        .into_iter()
        .map(|x| {
            Tensor::from_f32(shape.clone(), x)
                .map(|t| vec![t])
                .map_err(anyhow::Error::from)
        })
        .collect()
}

/// The elements of `v` at the (distinct) positions `idx`, in that order, moved out.
fn pick<T>(v: Vec<T>, idx: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = v.into_iter().map(Some).collect();
    idx.iter().filter_map(|&i| slots[i].take()).collect()
}

fn shuffled_subset<T>(v: Vec<T>, n: usize, seed: u64) -> Vec<T> {
    let idx = shuffled_indices(v.len(), n, seed);
    pick(v, &idx)
}

/// What a quantization did (the `--json` report).
#[derive(Serialize)]
pub(crate) struct QuantizeOutput {
    model: String,
    output: String,
    backend: BackendKind,
    /// The engine that ran validation (accuracy control), when there was some.
    validation_backend: Option<BackendKind>,
    /// Set when the model's opset (11 or 12) was raised to 13 for per-channel INT8.
    opset_upgrade: Option<medinfer_onnx::opset::OpsetUpgrade>,
    optimize: Option<OptimizeReport>,
    calibration_samples: usize,
    calibration_seconds: f64,
    report: quant::QuantReport,
    /// Layers left float because the target's engines have no fast integer kernel for them.
    kept_float_for_target: Vec<String>,
    /// Convolutions split per concatenated input (`--split-concat`).
    split_convs: Vec<quant::SplitConv>,
    accuracy: Option<q::ControlReport>,
    pub(crate) written: bool,
}

impl QuantizeOutput {
    /// Calibration samples used.
    pub(crate) fn calibration_samples(&self) -> usize {
        self.calibration_samples
    }

    /// Layers in INT8, and all quantizable layers.
    pub(crate) fn layers(&self) -> (usize, usize) {
        let all = self.report.layers.len();
        (
            self.report.layers.iter().filter(|l| l.quantized).count(),
            all,
        )
    }
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let json = a.json;
    let max_drop = a.max_drop;
    let out = execute(a)?;
    if json {
        print_json(&out)?;
    } else {
        print_quantize(&out);
    }
    if !out.written {
        let (metric, int8) = out.accuracy.as_ref().map_or((String::new(), 0.0), |c| {
            (format!("{:?} ", c.metric), c.int8)
        });
        bail!(
            "not written: the INT8 model misses the accuracy budget ({metric}drop {:.5} > {max_drop}); raise --max-drop, exclude layers, or pass --force",
            1.0 - int8,
        );
    }
    Ok(())
}

/// Quantizes as `medinfer quantize` does and writes the model (unless accuracy control
/// refused it: `written` says); prints nothing but progress.
pub(crate) fn execute(a: QuantizeArgs) -> Result<QuantizeOutput> {
    let path = models::resolve(&a.model)?;
    let mut model = medinfer_onnx::load_model(&path)?;
    let method = CalibMethod::parse(&a.method).with_context(|| {
        format!(
            "--method {}: choose minmax, percentile, percentile:P or entropy",
            a.method
        )
    })?;
    let metric = Metric::parse(&a.metric).with_context(|| {
        format!(
            "--metric {}: choose top1, cosine, nmse, dice, iou[:T] or auc",
            a.metric
        )
    })?;
    if !(0.0..1.0).contains(&a.max_drop) {
        bail!("--max-drop {} must be in [0, 1)", a.max_drop);
    }
    let backend = if a.backend.eq_ignore_ascii_case("auto") {
        calibration_backend()
    } else {
        medinfer_engine::resolve_backend(&a.backend)?
    };
    // Per-channel QuantizeLinear needs opset 13; older exports are converted exactly.
    let opset_upgrade = medinfer_onnx::opset::upgrade_to_13(&mut model)
        .with_context(|| format!("{}", path.display()))?;
    let opt = if a.no_optimize {
        None
    } else {
        Some(medinfer_onnx::optimize(&mut model)?)
    };
    let info = medinfer_onnx::analyze(&model, None);
    // Per-sample shapes: fixed dimensions from the model, dynamic ones from --input-shape or
    // from each sample.
    let mut slots = InputSlot::of_model(&info, &path.display().to_string())?;
    if !a.input_shape.is_empty() {
        let shapes = crate::args::input_shapes(&info, &a.input_shape)?;
        for slot in &mut slots {
            if let Some(dims) = shapes.get(&slot.name) {
                slot.per_sample = dims[1..].iter().map(|&d| Some(d)).collect();
            }
        }
    }
    let target = quant::Target::parse(&a.target)
        .with_context(|| format!("--target {}: choose portable or openvino", a.target))?;
    let openvino_here = medinfer_engine::backend(BackendKind::OpenVino)
        .availability()
        .available;
    let validation_backend = if a.backend.eq_ignore_ascii_case("auto")
        && target == quant::Target::OpenVino
        && openvino_here
    {
        BackendKind::OpenVino
    } else {
        backend
    };
    let config = QuantConfig {
        method,
        exclude: a.exclude.clone(),
        bias_correction: !a.no_bias_correction,
        target,
        signed_activations: a.signed_activations.as_deref().map(|s| s == "on"),
        overflow_fix: quant::OverflowFix::parse(&a.overflow_fix).with_context(|| {
            format!(
                "--overflow-fix {}: choose first-layer, all or none",
                a.overflow_fix
            )
        })?,
    };
    let plan = quant::plan(&model, &config)?;
    if plan.layers.is_empty() {
        bail!(
            "{}: nothing to quantize{}",
            path.display(),
            if plan.kept_float_for_target.is_empty() {
                " (no Conv, ConvTranspose, Gemm or MatMul with constant weights left after --exclude)".to_string()
            } else {
                format!(
                    " for --target {}: its {} 3-D convolution(s) stay float there, because ONNX Runtime runs them slower in INT8; --target openvino quantizes them for OpenVINO",
                    a.target,
                    plan.kept_float_for_target.len()
                )
            }
        );
    }
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let pipeline = match &a.pipeline {
        Some(p) if slots.len() != 1 => bail!(
            "--pipeline {p}: {} has {} inputs; pipelines make one-input samples (give .npz samples instead)",
            path.display(),
            slots.len()
        ),
        Some(p) => {
            let per = &slots[0].per_sample;
            let pl = medinfer_pipelines::samples::Pipeline::parse(p)
                .with_context(|| format!("--pipeline {p}: choose cxr, ct or cardiac"))?;
            let made = pl.sample_shape();
            let fits = made.len() == per.len()
                && made
                    .iter()
                    .zip(per)
                    .all(|(m, p)| p.is_none_or(|p| p == *m));
            if !fits {
                bail!(
                    "{}: the model takes {} per sample, the {} pipeline makes {:?}",
                    path.display(),
                    slots[0].shown(),
                    pl.name(),
                    made
                );
            }
            Some(pl)
        }
        None => None,
    };
    let calib_samples = match pipeline {
        Some(pl) => pipeline_samples(pl, &a.calib, Some((a.samples, a.seed)), a.json)?,
        None => shuffled_subset(arrays::load(&a.calib, &slots)?, a.samples, a.seed),
    };
    let pb = bar(calib_samples.len(), "calibrating", a.json);
    let t0 = std::time::Instant::now();
    let mut calib = q::calibrate(&model, &plan, method, &calib_samples, backend, &mut |i| {
        pb.set_position(i as u64)
    })
    .context("calibration")?;
    pb.finish_and_clear();
    let mut plan = plan;
    let mut split_convs = Vec::new();
    if let Some(ratio) = a.split_concat {
        // Input shapes of the first sample, for the channel counts of the Concat inputs.
        let shapes = slots
            .iter()
            .zip(&calib_samples[0])
            .map(|(s, t)| (s.name.clone(), t.shape().to_vec()))
            .collect();
        let (split, done) = quant::split_concat_convs(&model, &calib, method, &shapes, ratio)?;
        if !done.is_empty() {
            model = split;
            plan = quant::plan(&model, &config)?;
            let pb = bar(calib_samples.len(), "calibrating the split model", a.json);
            calib = q::calibrate(&model, &plan, method, &calib_samples, backend, &mut |i| {
                pb.set_position(i as u64)
            })
            .context("calibration of the split model")?;
            pb.finish_and_clear();
            split_convs = done;
        }
    }
    let calib_secs = t0.elapsed().as_secs_f64();

    let (qmodel, report, accuracy) = match &a.validate {
        Some(v) => {
            let all = match pipeline {
                Some(pl) => pipeline_samples(pl, v, None, a.json)?,
                None => arrays::load(v, &slots)?,
            };
            let idx = shuffled_indices(all.len(), a.validate_samples, a.seed ^ 1);
            let labels = match &a.labels {
                Some(f) => {
                    let rows = arrays::read_labels(f, all.len())?;
                    Some(idx.iter().map(|&i| rows[i].clone()).collect())
                }
                None if metric == Metric::Auc => bail!("--metric auc needs --labels FILE.npy"),
                None => None,
            };
            let samples = pick(all, &idx);
            let ranking = Ranking::parse(&a.ranking).with_context(|| {
                format!("--ranking {}: choose measured or heuristic", a.ranking)
            })?;
            let control = AccuracyControl {
                labels,
                ranking,
                ranking_samples: a.ranking_samples,
                ..AccuracyControl::new(samples, metric, a.max_drop)
            };
            let quiet = a.json;
            let (m, r, c) = q::quantize_with_control(
                &model,
                &plan,
                &calib,
                &config,
                &control,
                validation_backend,
                &mut |s| {
                    if !quiet {
                        eprintln!("accuracy control: {s}");
                    }
                },
            )
            .context("accuracy control")?;
            (m, r, Some(c))
        }
        None => {
            let (m, r) = quant::quantize(&model, &plan, &calib, &config, &HashSet::new())?;
            (m, r, None)
        }
    };
    let within = accuracy.as_ref().map(|c| c.within_budget).unwrap_or(true);
    let write = within || a.force;
    if write {
        medinfer_onnx::save_model(&qmodel, &a.output)?;
    }
    let out = QuantizeOutput {
        model: path.display().to_string(),
        output: a.output.display().to_string(),
        backend,
        validation_backend: a.validate.as_ref().map(|_| validation_backend),
        opset_upgrade,
        optimize: opt,
        calibration_samples: calib_samples.len(),
        calibration_seconds: calib_secs,
        report,
        kept_float_for_target: plan.kept_float_for_target.clone(),
        split_convs,
        accuracy,
        written: write,
    };
    Ok(out)
}

fn print_quantize(o: &QuantizeOutput) {
    if let Some(u) = &o.opset_upgrade {
        println!(
            "opset {} -> 13 (per-channel INT8 needs 13); rewritten: {}",
            u.from,
            if u.rewritten.is_empty() {
                "nothing".to_string()
            } else {
                u.rewritten
                    .iter()
                    .map(|(op, n)| format!("{n} {op}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    if let Some(r) = &o.optimize {
        super::optimize::print_optimize("optimize", r);
    }
    for sc in &o.split_convs {
        println!(
            "split {} per input of {} (input ranges {})",
            sc.conv,
            sc.concat,
            sc.input_ranges
                .iter()
                .map(|(lo, hi)| format!("{lo:.3}..{hi:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "calibration: {} samples on {} in {:.1} s, method {:?}",
        o.calibration_samples, o.backend, o.calibration_seconds, o.report.method
    );
    println!(
        "{:<40} {:<6} {:>5} {:>11} {:>4} {:>9} {:>8} {:>7}",
        "layer", "op", "int8", "in scale", "zp", "w error", "sqnr dB", "bias c."
    );
    for l in &o.report.layers {
        let (s, z) = l
            .input_scales
            .first()
            .map(|p| (p.scale, p.zero_point))
            .unwrap_or((f32::NAN, 0));
        println!(
            "{:<40} {:<6} {:>5} {:>11.4e} {:>4} {:>9} {:>8.1} {:>7}",
            truncate(&l.name, 40),
            l.op,
            if l.quantized { "yes" } else { "no" },
            s,
            z,
            l.weight_error
                .map(|e| format!("{:.2}%", e * 100.0))
                .unwrap_or_default(),
            l.activation_sqnr_db,
            l.bias_correction
                .map(|b| format!("{b:.2}"))
                .unwrap_or_default()
        );
    }
    let kept: Vec<&str> = o
        .report
        .layers
        .iter()
        .filter(|l| !l.quantized)
        .map(|l| l.name.as_str())
        .collect();
    let (int8, all) = o.layers();
    println!(
        "{int8} of {all} layers in INT8; {} activation tensors quantized ({} Q, {} DQ nodes)",
        o.report.activations_quantized, o.report.quantize_nodes, o.report.dequantize_nodes
    );
    if !kept.is_empty() {
        println!("kept in floating point: {}", kept.join(", "));
    }
    if !o.kept_float_for_target.is_empty() {
        println!(
            "kept in floating point for the target's engines: {}",
            o.kept_float_for_target.join(", ")
        );
    }
    if let Some(c) = &o.accuracy {
        if let Some(a) = c.fp32_auc {
            println!("FP32 mean AUC against the labels: {a:.5} (score = 1 - AUC drop)");
        }
        println!(
            "accuracy ({:?} vs FP32): FP32 {:.5}, INT8 {:.5} (all layers {:.5}), drop {:.5}, budget {} -> {}",
            c.metric,
            c.fp32,
            c.int8,
            c.int8_all_layers,
            1.0 - c.int8,
            c.max_drop,
            if c.within_budget { "within" } else { "MISSED" }
        );
        println!(
            "accuracy control on {}: {:?} ranking, {} layer(s) reverted, {} validation evaluation(s), {} ranking evaluation(s)",
            o.validation_backend.unwrap_or(o.backend),
            c.ranking,
            c.reverted.len(),
            c.evaluations,
            c.ranking_evaluations
        );
    }
    if o.written {
        println!("wrote {}", o.output);
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(n - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}
