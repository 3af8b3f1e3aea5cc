//! The engine half of INT8 quantization: calibration (the FP32 model run on calibration data
//! with its intermediate tensors exposed), evaluation of FP32 and INT8 models on validation
//! data, accuracy metrics, and accuracy control (layers reverted to floating point, most
//! sensitive first, until the metric's drop is within budget).
//!
//! The graph half (placement, statistics, QDQ rewrite) is `medinfer_onnx::quant`.

use crate::{load_on, BackendKind, EngineError, SessionOptions};
use medinfer_core::Tensor;
use medinfer_onnx::proto::ModelProto;
use medinfer_onnx::quant::{self, CalibMethod, Calibration, Plan, QuantConfig, QuantReport};
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;

/// A model written to a temporary file for the engines (which load from paths), removed on
/// drop.
struct TempModel(PathBuf);

impl TempModel {
    fn write(model: &ModelProto, tag: &str) -> Result<TempModel, EngineError> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("medinfer-{tag}-{}-{n}.onnx", std::process::id()));
        medinfer_onnx::save_model(model, &p)?;
        Ok(TempModel(p))
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn batch_of(samples: &[Tensor]) -> Result<usize, EngineError> {
    let first = samples
        .first()
        .ok_or_else(|| EngineError::BadInput("no calibration / validation samples".into()))?;
    if let Some(bad) = samples
        .iter()
        .find(|s| s.shape() != first.shape() || s.dtype() != first.dtype())
    {
        return Err(EngineError::BadInput(format!(
            "samples differ in shape: {:?} and {:?}",
            first.shape(),
            bad.shape()
        )));
    }
    Ok(first.shape().first().copied().unwrap_or(1))
}

fn session_options(batch: usize) -> SessionOptions {
    SessionOptions {
        batch: Some(batch),
        ..Default::default()
    }
}

/// Runs the FP32 model on every sample with the plan's tensors exposed and gathers their
/// statistics. `progress` is called after each sample with the number done.
pub fn calibrate(
    model: &ModelProto,
    plan: &Plan,
    method: CalibMethod,
    samples: &[Tensor],
    backend: BackendKind,
    progress: &mut dyn FnMut(usize),
) -> Result<Calibration, EngineError> {
    let batch = batch_of(samples)?;
    let cmodel = quant::calibration_model(model, plan);
    let n_orig = model.graph.as_ref().map(|g| g.output.len()).unwrap_or(0);
    let tmp = TempModel::write(&cmodel, "calibration")?;
    let session = load_on(backend, &tmp.0, &session_options(batch))?;
    let mut calib = Calibration::default();
    for (i, s) in samples.iter().enumerate() {
        let outs = session.run(std::slice::from_ref(s))?;
        let values: Vec<(Vec<usize>, &[f32])> = outs[n_orig.min(outs.len())..]
            .iter()
            .map(|t| {
                Ok((
                    t.shape().to_vec(),
                    t.as_f32()
                        .map_err(|e| EngineError::BadInput(e.to_string()))?,
                ))
            })
            .collect::<Result<_, EngineError>>()?;
        if values.len() != plan.tensors.len() {
            return Err(EngineError::Run {
                backend,
                message: format!(
                    "calibration model returned {} intermediate tensors, {} were asked for",
                    values.len(),
                    plan.tensors.len()
                ),
            });
        }
        calib.add(plan, method, &values);
        progress(i + 1);
    }
    Ok(calib)
}

/// Runs `model` on every sample; returns the first output of each run.
pub fn evaluate(
    model: &ModelProto,
    samples: &[Tensor],
    backend: BackendKind,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Tensor>, EngineError> {
    let batch = batch_of(samples)?;
    let tmp = TempModel::write(model, "evaluate")?;
    let session = load_on(backend, &tmp.0, &session_options(batch))?;
    let mut out = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let mut o = session.run(std::slice::from_ref(s))?;
        if o.is_empty() {
            return Err(EngineError::Run {
                backend,
                message: "the model returned no output".into(),
            });
        }
        out.push(o.swap_remove(0));
        progress(i + 1);
    }
    Ok(out)
}

/// How INT8 outputs are judged against FP32 ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Share of rows (last axis = classes) whose arg-max agrees with FP32.
    Top1,
    /// Mean cosine similarity of each sample's output with FP32's.
    Cosine,
    /// 1 - normalised mean squared error (||a-b||^2 / ||b||^2), so higher is better like the
    /// others.
    Nmse,
    /// Mean Dice, over the foreground classes (axis 1, class 0 = background), of the arg-max
    /// label maps of INT8 against FP32.
    Dice,
    /// Mean ROC AUC over output columns against ground-truth labels (multi-label classifiers);
    /// the score is 1 - (AUC of FP32 - AUC of INT8).
    Auc,
}

impl Metric {
    /// Parses `top1`, `cosine`, `nmse`, `dice`, `auc`.
    pub fn parse(s: &str) -> Option<Metric> {
        match s.to_ascii_lowercase().as_str() {
            "top1" | "top-1" | "accuracy" => Some(Metric::Top1),
            "cosine" | "cos" => Some(Metric::Cosine),
            "nmse" | "mse" => Some(Metric::Nmse),
            "dice" => Some(Metric::Dice),
            "auc" | "mean-auc" => Some(Metric::Auc),
            _ => None,
        }
    }
}

/// The metric (1 = identical) of `test` outputs against `reference` outputs.
pub fn score(metric: Metric, reference: &[Tensor], test: &[Tensor]) -> Result<f64, EngineError> {
    if reference.len() != test.len() || reference.is_empty() {
        return Err(EngineError::BadInput(
            "metric: output counts differ or are empty".into(),
        ));
    }
    fn f(t: &Tensor) -> Result<&[f32], EngineError> {
        t.as_f32().map_err(|e| EngineError::BadInput(e.to_string()))
    }
    let mut total = 0.0;
    let mut n = 0.0;
    for (r, t) in reference.iter().zip(test) {
        if r.shape() != t.shape() {
            return Err(EngineError::BadInput(format!(
                "metric: output shapes differ ({:?} vs {:?})",
                r.shape(),
                t.shape()
            )));
        }
        let (a, b) = (f(r)?, f(t)?);
        match metric {
            Metric::Auc => return Err(EngineError::BadInput(
                "metric auc compares with ground-truth labels, not with FP32 outputs: use mean_auc"
                    .into(),
            )),
            Metric::Top1 => {
                let c = *r.shape().last().unwrap_or(&1);
                for (ra, rb) in a.chunks(c.max(1)).zip(b.chunks(c.max(1))) {
                    total += (argmax(ra) == argmax(rb)) as u8 as f64;
                    n += 1.0;
                }
            }
            Metric::Cosine => {
                let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
                let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                total += if na * nb > 0.0 {
                    dot / (na * nb)
                } else {
                    (na == nb) as u8 as f64
                };
                n += 1.0;
            }
            Metric::Nmse => {
                let err: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
                let pow: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
                total += 1.0 - if pow > 0.0 { err / pow } else { err };
                n += 1.0;
            }
            Metric::Dice => {
                let s = r.shape();
                if s.len() < 3 {
                    return Err(EngineError::BadInput(format!(
                        "metric dice needs (batch, classes, ...) outputs, got {s:?}"
                    )));
                }
                let (nb, c) = (s[0], s[1]);
                let px: usize = s[2..].iter().product();
                for bi in 0..nb {
                    let lab = |v: &[f32]| -> Vec<usize> {
                        (0..px)
                            .map(|p| {
                                (0..c)
                                    .max_by(|&i, &j| {
                                        v[(bi * c + i) * px + p]
                                            .total_cmp(&v[(bi * c + j) * px + p])
                                    })
                                    .unwrap_or(0)
                            })
                            .collect()
                    };
                    let (la, lb) = (lab(a), lab(b));
                    for k in 1..c {
                        let (mut inter, mut sa, mut sb) = (0usize, 0usize, 0usize);
                        for (x, y) in la.iter().zip(&lb) {
                            inter += (*x == k && *y == k) as usize;
                            sa += (*x == k) as usize;
                            sb += (*y == k) as usize;
                        }
                        if sa + sb > 0 {
                            total += 2.0 * inter as f64 / (sa + sb) as f64;
                            n += 1.0;
                        }
                    }
                }
            }
        }
    }
    Ok(if n > 0.0 { total / n } else { 1.0 })
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&i, &j| v[i].total_cmp(&v[j]))
        .unwrap_or(0)
}

/// Accuracy control settings.
#[derive(Clone, Debug)]
pub struct AccuracyControl {
    /// Validation inputs.
    pub samples: Vec<Tensor>,
    /// The metric.
    pub metric: Metric,
    /// Largest allowed drop of the metric (FP32 scores 1 against itself).
    pub max_drop: f64,
    /// Ground-truth labels for [`Metric::Auc`]: one row of 0 / 1 per sample (one entry per
    /// output column; NaN = unknown, skipped as in TorchXRayVision's datasets).
    pub labels: Option<Vec<Vec<f32>>>,
}

/// Mean, over output columns, of the ROC AUC of scores `outputs` (one row per sample) against
/// `labels`; columns where only one class occurs are skipped. `None` when no column counts.
pub fn mean_auc(outputs: &[Tensor], labels: &[Vec<f32>]) -> Result<Option<f64>, EngineError> {
    if outputs.len() != labels.len() {
        return Err(EngineError::BadInput(format!(
            "metric auc: {} label rows for {} samples",
            labels.len(),
            outputs.len()
        )));
    }
    let rows: Vec<&[f32]> = outputs
        .iter()
        .map(|t| t.as_f32().map_err(|e| EngineError::BadInput(e.to_string())))
        .collect::<Result<_, _>>()?;
    let cols = labels.first().map_or(0, |l| l.len());
    if let Some(r) = rows.iter().find(|r| r.len() != cols) {
        return Err(EngineError::BadInput(format!(
            "metric auc: outputs have {} values per sample, labels {cols}",
            r.len()
        )));
    }
    let mut aucs = Vec::new();
    for c in 0..cols {
        let mut pairs: Vec<(f32, bool)> = rows
            .iter()
            .zip(labels)
            .filter(|(_, l)| !l[c].is_nan())
            .map(|(r, l)| (r[c], l[c] > 0.5))
            .collect();
        let pos = pairs.iter().filter(|p| p.1).count();
        let neg = pairs.len() - pos;
        if pos == 0 || neg == 0 {
            continue;
        }
        // Mann-Whitney U with average ranks for ties.
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut rank_sum = 0f64;
        let mut i = 0;
        while i < pairs.len() {
            let mut j = i;
            while j + 1 < pairs.len() && pairs[j + 1].0 == pairs[i].0 {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0 + 1.0;
            rank_sum += avg * pairs[i..=j].iter().filter(|p| p.1).count() as f64;
            i = j + 1;
        }
        let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
        aucs.push(u / (pos as f64 * neg as f64));
    }
    Ok((!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64))
}

/// Result of [`quantize_with_control`].
#[derive(Clone, Debug, Serialize)]
pub struct ControlReport {
    /// The metric.
    pub metric: Metric,
    /// FP32 against itself (1 by definition).
    pub fp32: f64,
    /// For `auc`: the FP32 model's mean AUC against the labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp32_auc: Option<f64>,
    /// The written INT8 model's score.
    pub int8: f64,
    /// Score with every layer quantized, before any revert.
    pub int8_all_layers: f64,
    /// The budget.
    pub max_drop: f64,
    /// Whether the written model is within budget.
    pub within_budget: bool,
    /// Layers reverted to floating point, in revert order.
    pub reverted: Vec<String>,
    /// Evaluations run.
    pub evaluations: usize,
}

/// Quantizes with accuracy control: evaluates, and while the drop exceeds the budget reverts
/// the most sensitive quantized layers (by the report's sensitivity score; first one, then
/// doubling steps) and evaluates again. Returns the last model, which the caller refuses to
/// write when `within_budget` is false unless told otherwise.
#[allow(clippy::too_many_arguments)]
pub fn quantize_with_control(
    model: &ModelProto,
    plan: &Plan,
    calib: &Calibration,
    config: &QuantConfig,
    control: &AccuracyControl,
    backend: BackendKind,
    log: &mut dyn FnMut(&str),
) -> Result<(ModelProto, QuantReport, ControlReport), EngineError> {
    let reference = evaluate(model, &control.samples, backend, &mut |_| {})?;
    let fp32_auc = match (control.metric, &control.labels) {
        (Metric::Auc, Some(l)) => Some(mean_auc(&reference, l)?.ok_or_else(|| {
            EngineError::BadInput("metric auc: no label column has both classes".into())
        })?),
        (Metric::Auc, None) => return Err(EngineError::BadInput("metric auc needs labels".into())),
        _ => None,
    };
    let score =
        |metric: Metric, reference: &[Tensor], out: &[Tensor]| -> Result<f64, EngineError> {
            match (fp32_auc, &control.labels) {
                (Some(a), Some(l)) => Ok(1.0 - (a - mean_auc(out, l)?.unwrap_or(0.0))),
                _ => score(metric, reference, out),
            }
        };
    let mut keep: HashSet<String> = HashSet::new();
    let (mut qm, mut rep) = quant::quantize(model, plan, calib, config, &keep)?;
    let out = evaluate(&qm, &control.samples, backend, &mut |_| {})?;
    let first = score(control.metric, &reference, &out)?;
    let mut current = first;
    let mut evaluations = 2;
    let mut reverted = Vec::new();
    log(&format!(
        "int8 {:?} = {first:.5} (drop {:.5})",
        control.metric,
        1.0 - first
    ));
    let mut ranked: Vec<(String, f32)> = rep
        .layers
        .iter()
        .filter(|l| l.quantized)
        .map(|l| (l.name.clone(), l.sensitivity))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut step = 1;
    let mut next = 0;
    while 1.0 - current > control.max_drop && next < ranked.len() {
        for (name, _) in ranked.iter().skip(next).take(step) {
            keep.insert(name.clone());
            reverted.push(name.clone());
        }
        next += step;
        step *= 2;
        let (m, r) = quant::quantize(model, plan, calib, config, &keep)?;
        let o = evaluate(&m, &control.samples, backend, &mut |_| {})?;
        evaluations += 1;
        current = score(control.metric, &reference, &o)?;
        log(&format!(
            "{} layer(s) in floating point: {:?} = {current:.5} (drop {:.5})",
            keep.len(),
            control.metric,
            1.0 - current
        ));
        qm = m;
        rep = r;
    }
    let control_rep = ControlReport {
        metric: control.metric,
        fp32: 1.0,
        fp32_auc,
        int8: current,
        int8_all_layers: first,
        max_drop: control.max_drop,
        within_budget: 1.0 - current <= control.max_drop,
        reverted,
        evaluations,
    };
    Ok((qm, rep, control_rep))
}
