//! The engine half of INT8 quantization: calibration (the FP32 model run on calibration data
//! with its intermediate tensors exposed), evaluation of FP32 and INT8 models on validation
//! data, accuracy metrics, and accuracy control (layers reverted to floating point, most
//! sensitive first, until the metric's drop is within budget).
//!
//! The graph half (placement, statistics, QDQ rewrite) is `medinfer_onnx::qdq`.

use crate::{load_on, BackendKind, EngineError, SessionOptions};
use medinfer_core::Tensor;
use medinfer_onnx::proto::ModelProto;
use medinfer_onnx::qdq::{self as quant, CalibMethod, Calibration, Plan, QuantConfig, QuantReport};
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

/// What a calibration or validation sample is: one tensor per data input of the model, in the
/// model's input order. A plain [`Tensor`] is the sample of a one-input model; a `Vec<Tensor>`
/// serves models with several inputs (an image and a metadata vector, say).
pub trait ModelInputs {
    /// The sample's tensors, in the model's input order.
    fn tensors(&self) -> &[Tensor];
    /// The sample's tensors, moved out.
    fn into_tensors(self) -> Vec<Tensor>;
}

impl ModelInputs for Tensor {
    fn tensors(&self) -> &[Tensor] {
        std::slice::from_ref(self)
    }
    fn into_tensors(self) -> Vec<Tensor> {
        vec![self]
    }
}

impl ModelInputs for Vec<Tensor> {
    fn tensors(&self) -> &[Tensor] {
        self
    }
    fn into_tensors(self) -> Vec<Tensor> {
        self
    }
}

/// Checks that there are samples and that they agree in input count, and per input in element
/// type and rank (their sizes may differ: a model with dynamic dimensions takes each at its
/// own size).
fn check_samples<S: ModelInputs>(samples: &[S]) -> Result<(), EngineError> {
    let first = samples
        .first()
        .ok_or_else(|| EngineError::BadInput("no calibration / validation samples".into()))?
        .tensors();
    if first.is_empty() {
        return Err(EngineError::BadInput(
            "a sample holds no input tensor".into(),
        ));
    }
    for (k, s) in samples.iter().enumerate() {
        let s = s.tensors();
        if s.len() != first.len() {
            return Err(EngineError::BadInput(format!(
                "sample {k} holds {} input tensor(s), sample 0 holds {}",
                s.len(),
                first.len()
            )));
        }
        if let Some((i, (a, b))) = first
            .iter()
            .zip(s)
            .enumerate()
            .find(|(_, (a, b))| a.shape().len() != b.shape().len() || a.dtype() != b.dtype())
        {
            return Err(EngineError::BadInput(format!(
                "samples differ in rank or type at input {i}: {:?} {} (sample 0) and {:?} {} (sample {k})",
                a.shape(),
                a.dtype(),
                b.shape(),
                b.dtype()
            )));
        }
    }
    Ok(())
}

/// Sessions of one model file, one per set of input shapes met: a model with dynamic
/// dimensions (detectors, encoder-decoders run at any size) is loaded once per sample size,
/// since the engines fix shapes at load time. The most recent few are kept.
struct ShapedSessions<'a> {
    path: &'a std::path::Path,
    backend: BackendKind,
    inputs: Vec<String>,
    loaded: Vec<(Vec<Vec<usize>>, crate::Session)>,
}

impl<'a> ShapedSessions<'a> {
    /// Sessions kept at once (each holds the model's compiled kernels).
    const KEEP: usize = 4;

    fn new(model: &ModelProto, path: &'a std::path::Path, backend: BackendKind) -> Self {
        let inputs = model
            .graph
            .as_ref()
            .map(|g| {
                medinfer_onnx::data_inputs(g)
                    .filter_map(|v| v.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        ShapedSessions {
            path,
            backend,
            inputs,
            loaded: Vec::new(),
        }
    }

    fn get(&mut self, sample: &[Tensor]) -> Result<&crate::Session, EngineError> {
        let shapes: Vec<Vec<usize>> = sample.iter().map(|t| t.shape().to_vec()).collect();
        if let Some(i) = self.loaded.iter().position(|(s, _)| *s == shapes) {
            return Ok(&self.loaded[i].1);
        }
        if !self.inputs.is_empty() && self.inputs.len() != shapes.len() {
            return Err(EngineError::BadInput(format!(
                "the model takes {} input(s) ({}), a sample holds {}",
                self.inputs.len(),
                self.inputs.join(", "),
                shapes.len()
            )));
        }
        let mut opts = SessionOptions {
            batch: Some(shapes[0].first().copied().unwrap_or(1)),
            ..Default::default()
        };
        for (name, shape) in self.inputs.iter().zip(&shapes) {
            opts.input_shapes.insert(name.clone(), shape.clone());
        }
        let session = load_on(self.backend, self.path, &opts)?;
        if self.loaded.len() >= Self::KEEP {
            self.loaded.remove(0);
        }
        self.loaded.push((shapes, session));
        Ok(&self.loaded.last().expect("just pushed").1)
    }
}

/// Runs the FP32 model on every sample with the plan's tensors exposed and gathers their
/// statistics. `progress` is called after each sample with the number done.
pub fn calibrate<S: ModelInputs>(
    model: &ModelProto,
    plan: &Plan,
    method: CalibMethod,
    samples: &[S],
    backend: BackendKind,
    progress: &mut dyn FnMut(usize),
) -> Result<Calibration, EngineError> {
    check_samples(samples)?;
    let cmodel = quant::calibration_model(model, plan);
    let n_orig = model.graph.as_ref().map(|g| g.output.len()).unwrap_or(0);
    let tmp = TempModel::write(&cmodel, "calibration")?;
    let mut sessions = ShapedSessions::new(&cmodel, &tmp.0, backend);
    let mut calib = Calibration::default();
    for (i, &k) in by_shape(samples).iter().enumerate() {
        let s = samples[k].tensors();
        let outs = sessions.get(s)?.run(s)?;
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
pub fn evaluate<S: ModelInputs>(
    model: &ModelProto,
    samples: &[S],
    backend: BackendKind,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Tensor>, EngineError> {
    check_samples(samples)?;
    let tmp = TempModel::write(model, "evaluate")?;
    let mut sessions = ShapedSessions::new(model, &tmp.0, backend);
    let mut out: Vec<Option<Tensor>> = vec![None; samples.len()];
    for (i, &k) in by_shape(samples).iter().enumerate() {
        let s = samples[k].tensors();
        let mut o = sessions.get(s)?.run(s)?;
        if o.is_empty() {
            return Err(EngineError::Run {
                backend,
                message: "the model returned no output".into(),
            });
        }
        out[k] = Some(o.swap_remove(0));
        progress(i + 1);
    }
    Ok(out
        .into_iter()
        .map(|t| t.expect("every sample ran"))
        .collect())
}

/// Sample positions grouped by input shapes (first appearance order, stable within a group), so
/// that each group's session is loaded once per pass however the sizes are mixed.
fn by_shape<S: ModelInputs>(samples: &[S]) -> Vec<usize> {
    let shapes =
        |s: &S| -> Vec<Vec<usize>> { s.tensors().iter().map(|t| t.shape().to_vec()).collect() };
    let mut first: Vec<Vec<Vec<usize>>> = Vec::new();
    let mut key = Vec::with_capacity(samples.len());
    for s in samples {
        let sh = shapes(s);
        let g = match first.iter().position(|f| *f == sh) {
            Some(g) => g,
            None => {
                first.push(sh);
                first.len() - 1
            }
        };
        key.push(g);
    }
    let mut idx: Vec<usize> = (0..samples.len()).collect();
    idx.sort_by_key(|&i| key[i]);
    idx
}

/// How INT8 outputs are judged against FP32 ones.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
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
    /// Pooled intersection over union of the outputs thresholded at this value (dense
    /// probability maps: detectors, segmenters with a sigmoid): every element above the
    /// threshold in INT8 and FP32 counted over the whole validation set, then intersection /
    /// union.
    Iou(f32),
}

impl Metric {
    /// Parses `top1`, `cosine`, `nmse`, `dice`, `auc`, `iou` (threshold 0.5) or `iou:T`.
    pub fn parse(s: &str) -> Option<Metric> {
        let s = s.to_ascii_lowercase();
        if let Some(t) = s.strip_prefix("iou") {
            let t = match t.strip_prefix(':') {
                Some(v) => v.parse::<f32>().ok()?,
                None if t.is_empty() => 0.5,
                None => return None,
            };
            return t.is_finite().then_some(Metric::Iou(t));
        }
        match s.as_str() {
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
    let (mut inter, mut union) = (0u64, 0u64);
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
            Metric::Iou(th) => {
                for (x, y) in a.iter().zip(b) {
                    let (p, q) = (*x > th, *y > th);
                    inter += (p && q) as u64;
                    union += (p || q) as u64;
                }
            }
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
    if let Metric::Iou(_) = metric {
        // Nothing above the threshold in either: they agree.
        return Ok(if union > 0 {
            inter as f64 / union as f64
        } else {
            1.0
        });
    }
    Ok(if n > 0.0 { total / n } else { 1.0 })
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&i, &j| v[i].total_cmp(&v[j]))
        .unwrap_or(0)
}

/// How accuracy control orders the layers it may revert to floating point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ranking {
    /// By measured effect (as NNCF's accuracy control does): each quantized layer is reverted
    /// alone and the metric measured on a ranking subset of the validation samples; the layers
    /// whose revert gains most come first. Costs one evaluation of the subset per layer.
    #[default]
    Measured,
    /// By the quantizer's own sensitivity estimate (weight error and input SQNR): no extra
    /// evaluations, but it can put harmless layers first.
    Heuristic,
}

impl Ranking {
    /// Parses `measured` / `heuristic`.
    pub fn parse(s: &str) -> Option<Ranking> {
        match s.to_ascii_lowercase().as_str() {
            "measured" => Some(Ranking::Measured),
            "heuristic" => Some(Ranking::Heuristic),
            _ => None,
        }
    }
}

/// Accuracy control settings.
#[derive(Clone, Debug)]
pub struct AccuracyControl {
    /// Validation samples: one tensor per model input each, in the model's input order.
    pub samples: Vec<Vec<Tensor>>,
    /// The metric.
    pub metric: Metric,
    /// Largest allowed drop of the metric (FP32 scores 1 against itself).
    pub max_drop: f64,
    /// Ground-truth labels for [`Metric::Auc`]: one row of 0 / 1 per sample (one entry per
    /// output column; NaN = unknown, skipped as in TorchXRayVision's datasets).
    pub labels: Option<Vec<Vec<f32>>>,
    /// How layers are ranked for reverting.
    pub ranking: Ranking,
    /// Validation samples used to rank layers ([`Ranking::Measured`]); the first ones are
    /// taken (0 = all).
    pub ranking_samples: usize,
}

impl AccuracyControl {
    /// Settings with the defaults: measured ranking on the first 64 samples.
    /// Samples are [`ModelInputs`]: plain tensors for a one-input model, `Vec<Tensor>` for
    /// several inputs.
    pub fn new<S: ModelInputs>(samples: Vec<S>, metric: Metric, max_drop: f64) -> AccuracyControl {
        AccuracyControl {
            samples: samples.into_iter().map(ModelInputs::into_tensors).collect(),
            metric,
            max_drop,
            labels: None,
            ranking: Ranking::Measured,
            ranking_samples: 64,
        }
    }
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
        let pairs: Vec<(f32, bool)> = rows
            .iter()
            .zip(labels)
            .filter(|(_, l)| !l[c].is_nan())
            .map(|(r, l)| (r[c], l[c] > 0.5))
            .collect();
        aucs.extend(roc_auc(pairs));
    }
    Ok((!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64))
}

/// ROC AUC of (score, positive) pairs: the Mann-Whitney U with average ranks for ties, over
/// positives x negatives. `None` when only one class occurs.
pub fn roc_auc(mut pairs: Vec<(f32, bool)>) -> Option<f64> {
    let pos = pairs.iter().filter(|p| p.1).count();
    let neg = pairs.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
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
    Some(u / (pos as f64 * neg as f64))
}

/// A layer's measured effect: the metric with that layer alone in floating point, on the ranking
/// subset.
#[derive(Clone, Debug, Serialize)]
pub struct LayerEffect {
    /// The layer.
    pub name: String,
    /// The metric on the ranking subset with this layer reverted alone.
    pub score: f64,
    /// Its gain over the all-INT8 model on the same subset.
    pub gain: f64,
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
    /// How layers were ranked.
    pub ranking: Ranking,
    /// Layers reverted to floating point (inputs included), in rank order.
    pub reverted: Vec<String>,
    /// With [`Ranking::Measured`]: every quantized layer's measured effect, best first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layer_effects: Vec<LayerEffect>,
    /// Evaluations of the whole validation set run (FP32 and INT8 models).
    pub evaluations: usize,
    /// Evaluations of the ranking subset run.
    pub ranking_evaluations: usize,
}

/// Quantizes with accuracy control. Reverting a layer is a full revert: its weights and its
/// inputs stay in floating point, even where the layer producing an input stays INT8.
///
/// 1. Evaluate the all-INT8 model; within budget, done.
/// 2. Rank the quantized layers: by measured effect ([`Ranking::Measured`]: each layer
///    reverted alone, the metric on a subset of the validation samples) or by the quantizer's
///    sensitivity estimate ([`Ranking::Heuristic`]).
/// 3. Find the shortest prefix of the ranking whose revert meets the budget: doubling the
///    count (1, 2, 4, ...) until the budget holds, then backing off by bisection between the
///    last count that missed and the first that met it (the metric is taken as monotone in the
///    prefix, which is what the ranking aims for).
///
/// Returns the model of that prefix (or of every layer reverted when nothing meets the
/// budget); the caller refuses to write it when `within_budget` is false unless told otherwise.
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
    // The metric of `out` (outputs of the first `n` samples) against FP32.
    let score_of = |out: &[Tensor]| -> Result<f64, EngineError> {
        let n = out.len();
        match (fp32_auc, &control.labels) {
            (Some(_), Some(l)) => {
                let base = mean_auc(&reference[..n], &l[..n])?.unwrap_or(0.0);
                Ok(1.0 - (base - mean_auc(out, &l[..n])?.unwrap_or(0.0)))
            }
            _ => score(control.metric, &reference[..n], out),
        }
    };
    let within = |s: f64| 1.0 - s <= control.max_drop;
    let mut evaluations = 1;
    let mut ranking_evaluations = 0;
    // Quantizes with `keep` in float and scores it on the first `n` samples.
    let trial =
        |keep: &HashSet<String>, n: usize| -> Result<(ModelProto, QuantReport, f64), EngineError> {
            let (m, r) = quant::quantize(model, plan, calib, config, keep)?;
            let out = evaluate(&m, &control.samples[..n], backend, &mut |_| {})?;
            let s = score_of(&out)?;
            Ok((m, r, s))
        };
    let all = control.samples.len();
    let (first_model, first_rep, first) = trial(&HashSet::new(), all)?;
    evaluations += 1;
    log(&format!(
        "int8 {:?} = {first:.5} (drop {:.5})",
        control.metric,
        1.0 - first
    ));
    let report = |int8: f64,
                  reverted: Vec<String>,
                  layer_effects: Vec<LayerEffect>,
                  evaluations: usize,
                  ranking_evaluations: usize| ControlReport {
        metric: control.metric,
        fp32: 1.0,
        fp32_auc,
        int8,
        int8_all_layers: first,
        max_drop: control.max_drop,
        within_budget: within(int8),
        ranking: control.ranking,
        reverted,
        layer_effects,
        evaluations,
        ranking_evaluations,
    };
    if within(first) {
        let r = report(first, vec![], vec![], evaluations, 0);
        return Ok((first_model, first_rep, r));
    }
    // Rank.
    let quantized: Vec<&quant::LayerReport> =
        first_rep.layers.iter().filter(|l| l.quantized).collect();
    let mut effects = Vec::new();
    let ranked: Vec<String> = match control.ranking {
        Ranking::Heuristic => {
            let mut v: Vec<(String, f32)> = quantized
                .iter()
                .map(|l| (l.name.clone(), l.sensitivity))
                .collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v.into_iter().map(|(n, _)| n).collect()
        }
        Ranking::Measured => {
            let n = match control.ranking_samples {
                0 => all,
                k => k.min(all),
            };
            let base = if n == all {
                first
            } else {
                ranking_evaluations += 1;
                trial(&HashSet::new(), n)?.2
            };
            for (i, l) in quantized.iter().enumerate() {
                let keep: HashSet<String> = [l.name.clone()].into();
                let (_, _, s) = trial(&keep, n)?;
                ranking_evaluations += 1;
                effects.push(LayerEffect {
                    name: l.name.clone(),
                    score: s,
                    gain: s - base,
                });
                log(&format!(
                    "ranking {}/{}: {} alone in float: {:?} {s:.5} (gain {:+.5})",
                    i + 1,
                    quantized.len(),
                    l.name,
                    control.metric,
                    s - base
                ));
            }
            // Largest gain first; ties keep the plan's order.
            effects.sort_by(|a, b| b.gain.total_cmp(&a.gain));
            effects.iter().map(|e| e.name.clone()).collect()
        }
    };
    // Doubling, then bisection, over the prefix length.
    let mut tried: std::collections::BTreeMap<usize, (ModelProto, QuantReport, f64)> =
        std::collections::BTreeMap::new();
    let mut eval_prefix = |k: usize, log: &mut dyn FnMut(&str)| -> Result<f64, EngineError> {
        let keep: HashSet<String> = ranked[..k].iter().cloned().collect();
        let (m, r, s) = trial(&keep, all)?;
        evaluations += 1;
        log(&format!(
            "{k} layer(s) in floating point: {:?} = {s:.5} (drop {:.5})",
            control.metric,
            1.0 - s
        ));
        tried.insert(k, (m, r, s));
        Ok(s)
    };
    let mut lo = 0; // misses the budget
    let mut hi = None; // meets it
    let mut k = 1;
    while k < ranked.len() {
        if within(eval_prefix(k, log)?) {
            hi = Some(k);
            break;
        }
        lo = k;
        k *= 2;
    }
    let (mut hi, meets) = match hi {
        Some(h) => (h, true),
        None => {
            let n = ranked.len();
            (n, within(eval_prefix(n, log)?))
        }
    };
    while meets && hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if within(eval_prefix(mid, log)?) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let (m, r, s) = tried.remove(&hi).ok_or_else(|| EngineError::Run {
        backend,
        message: "accuracy control lost its best model".into(),
    })?;
    let rep = report(
        s,
        ranked[..hi].to_vec(),
        effects,
        evaluations,
        ranking_evaluations,
    );
    Ok((m, r, rep))
}
