//! INT8 post-training quantization: which tensors to quantize ([`plan`]), the activation
//! statistics gathered on calibration data ([`Calibration`]), and the rewrite of the FP32 graph
//! into standard QDQ ONNX ([`quantize`]) that ONNX Runtime and OpenVINO both run with integer
//! kernels.
//!
//! Running the FP32 model on calibration data needs an engine, so it lives in
//! `medinfer-engine` (`medinfer_engine::calibrate`); everything here is pure graph and
//! arithmetic, testable without an engine.
//!
//! ## Placement
//! - Weights of `Conv`, `Gemm` and `MatMul` (constant, 2-D for the latter two): signed INT8,
//!   symmetric, one scale per output channel (`[-127, 127]`, so u8 x s8 products never saturate
//!   on CPUs without VNNI either). Biases become INT32 with scale = input scale x weight scale,
//!   which is what ONNX Runtime's QLinearConv expects.
//! - Activations: unsigned INT8 with a zero point (asymmetric), one scale per tensor. Quantized
//!   are the activation inputs of those layers and of residual `Add`s, and the output of every
//!   quantized layer (after its `Relu` when the `Relu` is its only consumer: a Q with zero point 0
//!   makes the `Relu` redundant, and ONNX Runtime removes it), so that each layer sits between a
//!   DequantizeLinear and a QuantizeLinear and the engines fuse it into an integer kernel.
//!   With [`Target::OpenVino`], activations with negative values are symmetric INT8 instead
//!   (NNCF's scheme; OpenVINO folds zero-point-free dequantization into the next op, and ONNX
//!   Runtime leaves a UINT8-input Conv with an INT8 output in float).
//! - Data-movement ops (`MaxPool`, `Resize`, `Reshape`, `Flatten`, `Transpose`, `Squeeze`,
//!   `Unsqueeze`, average pooling) whose input is quantized pass the input's scale and zero
//!   point on to their output, so the engines drop the Q/DQ pair around them and run them on
//!   INT8 data (pooling and resampling in INT8, as in the published cardiac model).
//! - `Concat` runs on INT8 data with one scale shared by its inputs and output when every reader
//!   of its output is integer-capable (U-Net skips feeding a Conv) and its inputs agree in sign;
//!   otherwise each producer's output is quantized on its own: a DenseNet concatenation feeds
//!   BatchNormalizations that stay float, and a U-Net concatenation of a ReLU output with a
//!   transposed convolution's signed output is requantized by the engines. (OpenVINO was seen to
//!   crash on onnxruntime.quantization's DenseNet, which quantizes those BatchNormalizations;
//!   medinfer's graphs never have that shape.)
//! - `ConvTranspose` (one group) is quantized like `Conv`, its weights per output channel
//!   (axis 1): OpenVINO then runs an INT8 deconvolution (the 4 up-sampling layers of a U-Net
//!   decoder: 0.28 instead of 0.52 ms plus 0.06 ms of requantization). ONNX Runtime's CPU
//!   provider has no integer kernel for it and computes it in float between the Q/DQ nodes.

use crate::model::{attr_f, attr_i};
use crate::optimize::Const;
use crate::proto::{data_type, ModelProto, NodeProto, TensorProto};
use crate::OnnxError;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// How activation ranges are chosen from the calibration statistics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibMethod {
    /// The smallest and largest value seen.
    MinMax,
    /// The given percentile of |values| on each side (e.g. 99.99), which ignores rare outliers.
    Percentile(f64),
    /// The clipping threshold that minimises the KL divergence between the FP32 histogram and
    /// its 8-bit version (the TensorRT method).
    Entropy,
}

impl CalibMethod {
    /// Parses `minmax`, `percentile`, `percentile:99.9` or `entropy`.
    pub fn parse(s: &str) -> Option<CalibMethod> {
        let s = s.to_ascii_lowercase();
        match s.as_str() {
            "minmax" | "min-max" => Some(CalibMethod::MinMax),
            "percentile" => Some(CalibMethod::Percentile(99.99)),
            "entropy" | "kl" => Some(CalibMethod::Entropy),
            _ => {
                let p: f64 = s.strip_prefix("percentile:")?.parse().ok()?;
                (p > 50.0 && p <= 100.0).then_some(CalibMethod::Percentile(p))
            }
        }
    }
    fn needs_histogram(self) -> bool {
        !matches!(self, CalibMethod::MinMax)
    }
}

/// Options of [`plan`] and [`quantize`].
#[derive(Clone, Debug)]
pub struct QuantConfig {
    /// Range method.
    pub method: CalibMethod,
    /// Layers never to quantize: a node name, an op type, or a regular expression matched
    /// against node names.
    pub exclude: Vec<String>,
    /// Correct each layer's bias for the mean shift its weight rounding causes.
    pub bias_correction: bool,
    /// The engines the QDQ model is laid out for (see [`Target`]).
    pub target: Target,
    /// Whether [`Target::OpenVino`] writes negative-valued activations as symmetric INT8:
    /// `None` (the default) when the CPU running the quantizer has VNNI ([`cpu_has_vnni`]),
    /// else UINT8 with a zero point as the portable layout does. Measured on a 2-core AVX2
    /// Zen 3 (no VNNI): OpenVINO ran the ConvTranspose U-Net's INT8-input decoder Convs with
    /// large errors (cosine 0.86 against FP32, 0.996 with UINT8 inputs; 7-bit weights, NNCF's
    /// overflow fix, did not help), while the same model was accurate on AVX-512 VNNI CPUs.
    pub signed_activations: Option<bool>,
}

/// Whether this CPU has VNNI INT8 dot products (AVX-512 VNNI or AVX-VNNI).
pub fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// The engines a quantized model is laid out for. Both layouts are standard QDQ ONNX that every
/// engine runs correctly; they differ in speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Fast on ONNX Runtime and OpenVINO alike: activations with negative values are UINT8
    /// with a zero point, because ONNX Runtime fuses a Conv into QLinearConv only when its
    /// input and output have one type, and UINT8 is its fast path on x86.
    #[default]
    Portable,
    /// Fastest on OpenVINO (NNCF's scheme): activations with negative values are INT8,
    /// symmetric (zero point 0), so OpenVINO folds their dequantization into the ops that read
    /// them; and a pooling / data-movement output that feeds a Concat is quantized too, so a
    /// DenseNet block concatenates INT8 data only (measured in docs/benchmarks.md). Still
    /// correct on ONNX Runtime, but possibly slower there: DenseNet-121 runs 2x slower (54 of
    /// its Convs, UINT8 in and INT8 out, stay float), ResNets and U-Nets as fast.
    OpenVino,
}

impl Target {
    /// Parses `portable` or `openvino`.
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "portable" => Some(Target::Portable),
            "openvino" => Some(Target::OpenVino),
            _ => None,
        }
    }
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            method: CalibMethod::MinMax,
            exclude: vec![],
            bias_correction: true,
            target: Target::Portable,
            signed_activations: None,
        }
    }
}

/// A quantizable layer found by [`plan`].
#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    /// Node name (a name is made up as `<op>_<index>` when the node has none).
    pub name: String,
    /// Op type.
    pub op: String,
    /// Index of the node in the graph.
    #[serde(skip)]
    pub index: usize,
    /// Activation inputs that get quantized.
    pub inputs: Vec<String>,
    /// Weight initializer, for Conv / Gemm / MatMul.
    pub weight: Option<String>,
    /// Axis of the weight's output channels.
    #[serde(skip)]
    pub weight_axis: usize,
}

/// What to quantize in a model, and which tensors calibration must observe.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Quantizable layers in graph order.
    pub layers: Vec<Layer>,
    /// Layers left in floating point by `exclude`, by name.
    pub excluded: Vec<String>,
    /// Every tensor whose range calibration must measure.
    pub tensors: Vec<String>,
    /// Tensors whose per-channel mean is needed (inputs of weighted layers, for bias
    /// correction).
    pub channel_mean_tensors: Vec<String>,
    /// Warnings about ops medinfer does not know (custom domains, op types outside its tables):
    /// they stay in floating point between dequantized inputs and quantized outputs.
    pub warnings: Vec<String>,
}

/// Float ops medinfer knows and leaves in floating point on purpose (cheap element-wise or
/// shape work, or not worth INT8); anything else not quantized draws a warning.
const KNOWN_FLOAT: &[&str] = &[
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "LogSoftmax",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "Erf",
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "Mul",
    "Sub",
    "Div",
    "Add",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Identity",
    "Dropout",
    "Constant",
    "Shape",
    "Gather",
    "Slice",
    "Split",
    "Pad",
    "Cast",
    "Expand",
    "Tile",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ArgMax",
    "Concat",
    "ConvTranspose",
    "Conv",
    "Gemm",
    "MatMul",
];

/// Ops that only move or select values: their output may reuse their input's quantization.
const PASS_THROUGH: &[&str] = &[
    "MaxPool",
    "Resize",
    "Upsample",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
];

fn node_name(n: &NodeProto, i: usize) -> String {
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => format!("{}_{i}", n.op_type.as_deref().unwrap_or("node")),
    }
}

struct Matcher {
    exact: HashSet<String>,
    regexes: Vec<regex::Regex>,
}

impl Matcher {
    fn new(patterns: &[String]) -> Result<Matcher, OnnxError> {
        let mut regexes = Vec::new();
        for p in patterns {
            let anchored = format!("^(?:{p})$");
            regexes.push(
                regex::Regex::new(&anchored).map_err(|e| OnnxError::Invalid {
                    path: "--exclude".into(),
                    reason: format!("'{p}' is neither a name nor a valid regular expression: {e}"),
                })?,
            );
        }
        Ok(Matcher {
            exact: patterns.iter().cloned().collect(),
            regexes,
        })
    }
    fn matches(&self, name: &str, op: &str) -> bool {
        self.exact.contains(name)
            || self.exact.contains(op)
            || self.regexes.iter().any(|r| r.is_match(name))
    }
}

struct Index<'a> {
    nodes: &'a [NodeProto],
    inits: HashMap<&'a str, &'a TensorProto>,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    outputs: HashSet<&'a str>,
}

impl<'a> Index<'a> {
    fn new(model: &'a ModelProto) -> Result<Index<'a>, OnnxError> {
        let g = model.graph.as_ref().ok_or_else(|| OnnxError::Invalid {
            path: "<model>".into(),
            reason: "no graph".into(),
        })?;
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for x in &n.input {
                if !x.is_empty() {
                    consumers.entry(x.as_str()).or_default().push(i);
                }
            }
        }
        Ok(Index {
            nodes: &g.node,
            inits: g
                .initializer
                .iter()
                .filter_map(|t| Some((t.name.as_deref()?, t)))
                .collect(),
            producer,
            consumers,
            outputs: g.output.iter().filter_map(|o| o.name.as_deref()).collect(),
        })
    }
    fn is_const(&self, name: &str) -> bool {
        self.inits.contains_key(name)
    }
    fn float_weight(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let t = self.inits.get(name)?;
        if t.data_type != Some(data_type::FLOAT) {
            return None;
        }
        match Const::from_proto(t)? {
            Const::F32(d, v) => Some((d, v)),
            Const::I64(..) => None,
        }
    }
    fn single_consumer(&self, t: &str) -> Option<usize> {
        match self.consumers.get(t).map(|v| v.as_slice()) {
            Some([c]) => Some(*c),
            _ => None,
        }
    }
}

/// Finds the quantizable layers of a model and the tensors to calibrate.
pub fn plan(model: &ModelProto, config: &QuantConfig) -> Result<Plan, OnnxError> {
    let ix = Index::new(model)?;
    let v = crate::model::default_opset(model);
    if v < 13 {
        return Err(OnnxError::Invalid {
            path: "<model>".into(),
            reason: format!(
                "opset {v}: per-channel QuantizeLinear / DequantizeLinear need opset 13 or later; re-export the model with a newer opset"
            ),
        });
    }
    if ix.nodes.iter().any(|n| {
        matches!(
            n.op_type.as_deref(),
            Some("QuantizeLinear" | "DequantizeLinear")
        )
    }) {
        return Err(OnnxError::Invalid {
            path: "<model>".into(),
            reason: "the model is already quantized (it has QuantizeLinear / DequantizeLinear nodes); quantize its FP32 original".into(),
        });
    }
    let matcher = Matcher::new(&config.exclude)?;
    let mut layers = Vec::new();
    let mut excluded = Vec::new();
    for (i, n) in ix.nodes.iter().enumerate() {
        let op = n.op_type.as_deref().unwrap_or("");
        if !n.domain.as_deref().unwrap_or("").is_empty() {
            continue;
        }
        let name = node_name(n, i);
        let layer = match op {
            // ConvTranspose weights are (in, out / group, k...): per output channel is axis 1,
            // which one scale per channel can only describe with a single group.
            "Conv" | "ConvTranspose" if op == "Conv" || attr_i(n, "group").unwrap_or(1) == 1 => {
                let w = n.input.get(1).filter(|w| ix.is_const(w));
                match (w.and_then(|w| ix.float_weight(w)), n.input.first()) {
                    (Some((wd, _)), Some(x)) if wd.len() >= 3 && !ix.is_const(x) => Some(Layer {
                        name: name.clone(),
                        op: op.into(),
                        index: i,
                        inputs: vec![x.clone()],
                        weight: w.cloned(),
                        weight_axis: usize::from(op == "ConvTranspose"),
                    }),
                    _ => None,
                }
            }
            "Gemm" | "MatMul" => {
                let ok_attrs = op == "MatMul"
                    || (attr_i(n, "transA").unwrap_or(0) == 0
                        && attr_f(n, "alpha").unwrap_or(1.0) == 1.0
                        && attr_f(n, "beta").unwrap_or(1.0) == 1.0);
                let w = n.input.get(1).filter(|w| ix.is_const(w));
                match (w.and_then(|w| ix.float_weight(w)), n.input.first()) {
                    (Some((wd, _)), Some(x)) if ok_attrs && wd.len() == 2 && !ix.is_const(x) => {
                        let trans_b = op == "Gemm" && attr_i(n, "transB").unwrap_or(0) != 0;
                        Some(Layer {
                            name: name.clone(),
                            op: op.into(),
                            index: i,
                            inputs: vec![x.clone()],
                            weight: w.cloned(),
                            weight_axis: if trans_b { 0 } else { 1 },
                        })
                    }
                    _ => None,
                }
            }
            // A Concat whose output only feeds integer-capable ops runs on INT8 data with one
            // scale shared by its inputs and output (see `quantize`).
            "Concat"
                if n.input.iter().all(|x| !ix.is_const(x))
                    && n.output.len() == 1
                    && !ix.outputs.contains(n.output[0].as_str())
                    && ix.consumers.get(n.output[0].as_str()).is_some_and(|cs| {
                        cs.iter().all(|&c| {
                            let op = ix.nodes[c].op_type.as_deref().unwrap_or("");
                            matches!(op, "Conv" | "ConvTranspose" | "Gemm" | "MatMul")
                                || PASS_THROUGH.contains(&op)
                        })
                    }) =>
            {
                Some(Layer {
                    name: name.clone(),
                    op: op.into(),
                    index: i,
                    inputs: n.input.clone(),
                    weight: None,
                    weight_axis: 0,
                })
            }
            "Add" if n.input.len() == 2 && n.input.iter().all(|x| !ix.is_const(x)) => Some(Layer {
                name: name.clone(),
                op: op.into(),
                index: i,
                inputs: n.input.clone(),
                weight: None,
                weight_axis: 0,
            }),
            _ => None,
        };
        if let Some(l) = layer {
            if matcher.matches(&l.name, op) {
                excluded.push(l.name);
            } else {
                layers.push(l);
            }
        }
    }
    let act = activation_tensors(&ix, &layers, config.target, &HashSet::new());
    let mut tensors: Vec<String> = act.keys().cloned().collect();
    tensors.sort_by_key(|t| {
        ix.producer
            .get(t.as_str())
            .copied()
            .map(|p| p + 1)
            .unwrap_or(0)
    });
    let channel_mean_tensors = layers
        .iter()
        .filter(|l| l.weight.is_some())
        .map(|l| l.inputs[0].clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut unknown: BTreeMap<String, usize> = BTreeMap::new();
    for n in ix.nodes {
        let op = n.op_type.as_deref().unwrap_or("");
        let domain = n.domain.as_deref().unwrap_or("");
        let custom = !(domain.is_empty() || domain == "ai.onnx");
        if custom || !(KNOWN_FLOAT.contains(&op) || PASS_THROUGH.contains(&op)) {
            let key = if custom {
                format!("{domain}::{op}")
            } else {
                op.to_string()
            };
            *unknown.entry(key).or_default() += 1;
        }
    }
    let warnings = unknown
        .into_iter()
        .map(|(op, n)| {
            format!(
                "{n} node(s) of op {op} are not quantized by medinfer: they stay in floating point"
            )
        })
        .collect();
    Ok(Plan {
        layers,
        excluded,
        tensors,
        channel_mean_tensors,
        warnings,
    })
}

/// Every tensor to quantize, with the consumers (node index, input slot) that read its
/// dequantized version.
/// The activation tensors to quantize, each with the `(node, input slot)` reads that take its
/// dequantized value. `float_nodes` are layers kept in floating point by accuracy control: they
/// read their inputs unquantized (a full revert), even where the producer is quantized and its
/// other readers take the INT8 value.
fn activation_tensors(
    ix: &Index,
    layers: &[Layer],
    target: Target,
    float_nodes: &HashSet<usize>,
) -> BTreeMap<String, Vec<(usize, usize)>> {
    let mut act: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    let add_use =
        |act: &mut BTreeMap<String, Vec<(usize, usize)>>, t: &str, node: usize, slot: usize| {
            let e = act.entry(t.to_string()).or_default();
            if !e.contains(&(node, slot)) {
                e.push((node, slot));
            }
        };
    // Every reader of `t` but the float-kept layers reads its dequantized value.
    let add_readers = |act: &mut BTreeMap<String, Vec<(usize, usize)>>, t: &str| {
        for &c in ix.consumers.get(t).map(|v| v.as_slice()).unwrap_or(&[]) {
            if float_nodes.contains(&c) {
                continue;
            }
            for (slot, x) in ix.nodes[c].input.iter().enumerate() {
                if x == t {
                    add_use(act, t, c, slot);
                }
            }
        }
    };
    for l in layers {
        let n = &ix.nodes[l.index];
        for (slot, x) in n.input.iter().enumerate() {
            if l.inputs.contains(x) {
                add_use(&mut act, x, l.index, slot);
            }
        }
    }
    // Outputs of quantized layers (after a lone Relu): every consumer reads the dequantized
    // value. Not for graph outputs: their values are the model's answer.
    for l in layers {
        let n = &ix.nodes[l.index];
        let Some(mut out) = n.output.first().map(|s| s.as_str()) else {
            continue;
        };
        if let Some(c) = ix.single_consumer(out) {
            if ix.nodes[c].op_type.as_deref() == Some("Relu") && !ix.outputs.contains(out) {
                out = ix.nodes[c].output[0].as_str();
            }
        }
        if ix.outputs.contains(out) {
            continue;
        }
        add_readers(&mut act, out);
    }
    // For OpenVINO: a data-movement op (a DenseNet transition's AveragePool) between a quantized
    // tensor and a Concat gets its output quantized with its input's parameters, so every input
    // of the Concat is INT8 and OpenVINO keeps the whole block in INT8.
    if target == Target::OpenVino {
        for n in ix.nodes {
            let op = n.op_type.as_deref().unwrap_or("");
            let (Some(src), Some(out)) = (n.input.first(), n.output.first()) else {
                continue;
            };
            let feeds_concat = ix.consumers.get(out.as_str()).is_some_and(|cs| {
                cs.iter()
                    .any(|&c| ix.nodes[c].op_type.as_deref() == Some("Concat"))
            });
            if PASS_THROUGH.contains(&op)
                && act.contains_key(src)
                && !ix.outputs.contains(out.as_str())
                && feeds_concat
            {
                add_readers(&mut act, out);
            }
        }
    }
    act
}

/// Running statistics of one tensor.
#[derive(Clone, Debug, Default)]
pub struct TensorStats {
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Values seen.
    pub count: u64,
    /// Sum of squares (for the signal power in SQNR estimates).
    pub sum_sq: f64,
    /// Histogram of values over `[-hist_range, hist_range]` (empty unless the method needs it).
    pub hist: Vec<u64>,
    /// Half-width of the histogram.
    pub hist_range: f32,
    /// Per-channel (axis 1) sums, when requested.
    pub channel_sum: Vec<f64>,
    /// Values per channel.
    pub channel_count: u64,
}

const BINS: usize = 4096;

impl TensorStats {
    /// Adds one tensor's values. `channels`: collect per-channel (axis 1) means.
    pub fn update(&mut self, dims: &[usize], data: &[f32], histogram: bool, channels: bool) {
        if data.is_empty() {
            return;
        }
        let (mut lo, mut hi, mut sq) = (f32::INFINITY, f32::NEG_INFINITY, 0f64);
        for &x in data {
            if x.is_finite() {
                lo = lo.min(x);
                hi = hi.max(x);
                sq += (x as f64) * (x as f64);
            }
        }
        if lo > hi {
            return; // nothing finite
        }
        if self.count == 0 {
            self.min = lo;
            self.max = hi;
        } else {
            self.min = self.min.min(lo);
            self.max = self.max.max(hi);
        }
        self.count += data.len() as u64;
        self.sum_sq += sq;
        if histogram {
            let m = lo.abs().max(hi.abs()).max(1e-12);
            if self.hist.is_empty() {
                self.hist = vec![0; BINS];
                self.hist_range = m;
            }
            while m > self.hist_range {
                // Double the range: old bins pair up into the middle half.
                let mut h = vec![0u64; BINS];
                for (i, &c) in self.hist.iter().enumerate() {
                    h[BINS / 4 + i / 2] += c;
                }
                self.hist = h;
                self.hist_range *= 2.0;
            }
            let scale = BINS as f32 / (2.0 * self.hist_range);
            for &x in data {
                if x.is_finite() {
                    let b = ((x + self.hist_range) * scale) as usize;
                    self.hist[b.min(BINS - 1)] += 1;
                }
            }
        }
        if channels && dims.len() >= 2 {
            let c = dims[1];
            let inner: usize = dims[2..].iter().product();
            if self.channel_sum.len() != c {
                self.channel_sum = vec![0.0; c];
                self.channel_count = 0;
            }
            for (k, chunk) in data.chunks(inner.max(1)).enumerate() {
                let s: f64 = chunk.iter().map(|&x| x as f64).sum();
                self.channel_sum[k % c] += s;
            }
            self.channel_count += (data.len() / c.max(1)) as u64;
        }
    }

    /// Per-channel means (empty when not collected).
    pub fn channel_means(&self) -> Vec<f32> {
        if self.channel_count == 0 {
            return vec![];
        }
        self.channel_sum
            .iter()
            .map(|&s| (s / self.channel_count as f64) as f32)
            .collect()
    }

    /// The value below which `q` (0..1) of the histogram lies.
    fn quantile(&self, q: f64) -> f32 {
        let total: u64 = self.hist.iter().sum();
        let target = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        let w = 2.0 * self.hist_range / BINS as f32;
        for (i, &c) in self.hist.iter().enumerate() {
            acc += c;
            if acc >= target.max(1) {
                return -self.hist_range + (i + 1) as f32 * w;
            }
        }
        self.hist_range
    }

    /// The range chosen by `method`.
    pub fn range(&self, method: CalibMethod) -> (f32, f32) {
        match method {
            _ if self.hist.is_empty() => (self.min, self.max),
            CalibMethod::MinMax => (self.min, self.max),
            CalibMethod::Percentile(p) => {
                let hi = self.quantile(p / 100.0).min(self.max);
                let lo = if self.min < 0.0 {
                    self.quantile(1.0 - p / 100.0).max(self.min)
                } else {
                    self.min
                };
                (lo.min(hi), hi)
            }
            CalibMethod::Entropy => {
                // Fold into a histogram of |x| and find the KL-optimal threshold.
                let half = BINS / 2;
                let mut abs = vec![0u64; half];
                for (i, &c) in self.hist.iter().enumerate() {
                    let j = if i >= half { i - half } else { half - 1 - i };
                    abs[j] += c;
                }
                let levels = if self.min >= 0.0 { 255 } else { 128 };
                let w = self.hist_range / half as f32;
                let t = kl_threshold(&abs, levels) as f32 * w;
                (self.min.max(-t), self.max.min(t))
            }
        }
    }
}

/// TensorRT's entropy calibration: the number of histogram bins to keep so that the clipped
/// distribution quantized to `levels` buckets stays closest (KL divergence) to the original.
fn kl_threshold(hist: &[u64], levels: usize) -> usize {
    let n = hist.len();
    let last_nonzero = hist
        .iter()
        .rposition(|&c| c > 0)
        .map(|i| i + 1)
        .unwrap_or(n);
    if last_nonzero <= levels {
        return last_nonzero.max(1);
    }
    let mut best = (f64::INFINITY, last_nonzero);
    let step = (last_nonzero - levels).div_ceil(256).max(1);
    let mut i = levels;
    while i <= last_nonzero {
        let mut p: Vec<f64> = hist[..i].iter().map(|&c| c as f64).collect();
        let outliers: f64 = hist[i..].iter().map(|&c| c as f64).sum();
        p[i - 1] += outliers;
        // Quantize the first i bins into `levels` buckets, spreading each bucket's mass over
        // its non-empty bins.
        let mut q = vec![0f64; i];
        for b in 0..levels {
            let s = b * i / levels;
            let e = ((b + 1) * i / levels).max(s + 1);
            let mass: f64 = hist[s..e].iter().map(|&c| c as f64).sum();
            let nonzero = hist[s..e].iter().filter(|&&c| c > 0).count();
            if nonzero > 0 {
                for k in s..e {
                    if hist[k] > 0 {
                        q[k] = mass / nonzero as f64;
                    }
                }
            }
        }
        let ps: f64 = p.iter().sum();
        let qs: f64 = q.iter().sum();
        let mut kl = 0.0;
        for k in 0..i {
            if p[k] > 0.0 {
                let pk = p[k] / ps;
                let qk = if q[k] > 0.0 { q[k] / qs } else { 1e-12 };
                kl += pk * (pk / qk).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i);
        }
        i += step;
    }
    best.1
}

/// Statistics of every planned tensor, gathered by running the FP32 model on calibration data.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// By tensor name.
    pub stats: HashMap<String, TensorStats>,
    /// Samples seen.
    pub samples: usize,
}

impl Calibration {
    /// Adds one run's values of the planned tensors (`values` in the order of `plan.tensors`).
    pub fn add(&mut self, plan: &Plan, method: CalibMethod, values: &[(Vec<usize>, &[f32])]) {
        let channel: HashSet<&str> = plan
            .channel_mean_tensors
            .iter()
            .map(|s| s.as_str())
            .collect();
        // Tensors are independent: scan them on every core (the engine is idle meanwhile).
        type Job<'v, 'd> = (TensorStats, &'v (Vec<usize>, &'d [f32]), bool);
        let mut work: Vec<Job> = plan
            .tensors
            .iter()
            .zip(values)
            .map(|(name, v)| {
                (
                    self.stats.remove(name).unwrap_or_default(),
                    v,
                    channel.contains(name.as_str()),
                )
            })
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(work.len().max(1));
        let per = work.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            for chunk in work.chunks_mut(per) {
                scope.spawn(move || {
                    for (st, (dims, data), ch) in chunk.iter_mut() {
                        st.update(dims, data, method.needs_histogram(), *ch);
                    }
                });
            }
        });
        for (name, (st, _, _)) in plan.tensors.iter().zip(work) {
            self.stats.insert(name.clone(), st);
        }
        self.samples += 1;
    }
}

/// The FP32 model with every planned tensor added as a graph output (after the original
/// outputs), for calibration.
pub fn calibration_model(model: &ModelProto, plan: &Plan) -> ModelProto {
    let mut m = model.clone();
    if let Some(g) = m.graph.as_mut() {
        let existing: HashSet<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
        for t in &plan.tensors {
            if !existing.contains(t) {
                g.output.push(crate::proto::ValueInfoProto {
                    name: Some(t.clone()),
                    r#type: Some(crate::proto::TypeProto {
                        value: Some(crate::proto::type_proto::Value::TensorType(
                            crate::proto::type_proto::Tensor {
                                elem_type: Some(data_type::FLOAT),
                                shape: None,
                            },
                        )),
                        denotation: None,
                    }),
                    ..Default::default()
                });
            }
        }
    }
    m
}

/// Per-layer outcome in a [`QuantReport`].
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Node name.
    pub name: String,
    /// Op type.
    pub op: String,
    /// Whether it runs in INT8 (false: kept in floating point).
    pub quantized: bool,
    /// Why it was kept in floating point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_float_because: Option<String>,
    /// Scale and zero point of each quantized activation input.
    pub input_scales: Vec<QParams>,
    /// Smallest and largest per-channel weight scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_scale_range: Option<(f32, f32)>,
    /// Relative L2 error of the INT8 weights, ||Wq - W|| / ||W||.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_error: Option<f32>,
    /// Estimated signal-to-quantization-noise ratio of the worst activation input, in dB
    /// (rounding noise scale^2/12 against the calibration signal power; clipping not counted).
    pub activation_sqnr_db: f32,
    /// Largest bias change made by bias correction, relative to the bias' own scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias_correction: Option<f32>,
    /// A sensitivity score (higher = more error expected), used to rank layers for accuracy
    /// control.
    pub sensitivity: f32,
}

/// What [`quantize`] did.
#[derive(Clone, Debug, Serialize)]
pub struct QuantReport {
    /// Range method.
    pub method: CalibMethod,
    /// The engines the model is laid out for.
    pub target: Target,
    /// Whether negative-valued activations were written as symmetric INT8 (the `openvino`
    /// layout on a CPU with VNNI) rather than UINT8 with a zero point.
    pub signed_activations: bool,
    /// Calibration samples.
    pub samples: usize,
    /// Per layer, in graph order.
    pub layers: Vec<LayerReport>,
    /// Activation tensors quantized.
    pub activations_quantized: usize,
    /// QuantizeLinear nodes written.
    pub quantize_nodes: usize,
    /// DequantizeLinear nodes written.
    pub dequantize_nodes: usize,
}

/// Scale and zero point of one activation tensor; `signed`: INT8 (symmetric, zero point 0)
/// instead of UINT8.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct QParams {
    /// Scale.
    pub scale: f32,
    /// Zero point.
    pub zero_point: i32,
    /// INT8 rather than UINT8.
    pub signed: bool,
}

/// Activation parameters for the range `[lo, hi]` (widened to include 0): UINT8 with zero point
/// 0 for non-negative tensors (post-ReLU); for tensors with negative values, UINT8 with a zero
/// point (asymmetric) or, when `signed_symmetric` ([`Target::OpenVino`]), INT8 symmetric.
fn act_params(lo: f32, hi: f32, signed_symmetric: bool) -> QParams {
    let lo = lo.min(0.0);
    let hi = hi.max(0.0);
    if signed_symmetric && lo < 0.0 {
        let scale = lo.abs().max(hi) / 127.0;
        if scale.is_finite() && scale > 0.0 {
            return QParams {
                scale,
                zero_point: 0,
                signed: true,
            };
        }
    }
    let scale = (hi - lo) / 255.0;
    if !(scale.is_finite() && scale > 0.0) {
        return QParams {
            scale: 1.0,
            zero_point: 0,
            signed: false,
        };
    }
    let zp = (-lo / scale).round().clamp(0.0, 255.0) as i32;
    QParams {
        scale,
        zero_point: zp,
        signed: false,
    }
}

fn scalar_f32(name: &str, v: f32) -> TensorProto {
    crate::builder::f32_tensor(name, &[], &[v])
}

/// An integer tensor of element type `dtype` from its little-endian bytes.
fn int_tensor(name: &str, dims: &[usize], dtype: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn u8_tensor(name: &str, dims: &[usize], v: &[u8]) -> TensorProto {
    int_tensor(name, dims, data_type::UINT8, v.to_vec())
}

fn i8_tensor(name: &str, dims: &[usize], v: &[i8]) -> TensorProto {
    int_tensor(
        name,
        dims,
        data_type::INT8,
        v.iter().map(|&x| x as u8).collect(),
    )
}

fn i32_tensor(name: &str, dims: &[usize], v: &[i32]) -> TensorProto {
    int_tensor(
        name,
        dims,
        data_type::INT32,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    output: String,
    axis: Option<i64>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name),
        input: inputs,
        output: vec![output],
        attribute: axis
            .map(|a| {
                vec![crate::proto::AttributeProto {
                    name: Some("axis".into()),
                    r#type: Some(crate::proto::attribute_type::INT),
                    i: Some(a),
                    ..Default::default()
                }]
            })
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// What [`quantize`] adds to the graph: initializers, the constant DequantizeLinear nodes that
/// go first, and their count; `used` holds every name already taken.
struct Emitted<'a> {
    used: HashSet<&'a str>,
    inits: Vec<TensorProto>,
    front: Vec<NodeProto>,
    dequantize_nodes: usize,
}

impl Emitted<'_> {
    /// `base`, or `base_1`, `base_2`, ... if the graph already has that name.
    fn unique(&self, base: String) -> String {
        let mut n = base.clone();
        let mut k = 1;
        while self.used.contains(n.as_str()) {
            n = format!("{base}_{k}");
            k += 1;
        }
        n
    }
}

/// Adds a constant DequantizeLinear of `values` (INT8 or INT32, its name is set here) with
/// per-channel `scales` along `axis` and zero points 0, for node `index`; returns its output.
fn const_dequantize(
    emit: &mut Emitted,
    base: &str,
    index: usize,
    mut values: TensorProto,
    scales: &[f32],
    axis: usize,
) -> String {
    let c = scales.len();
    let q = emit.unique(format!("{base}_quantized"));
    let s = emit.unique(format!("{base}_scale"));
    let z = emit.unique(format!("{base}_zero_point"));
    let dq = emit.unique(format!("{base}_dequantized"));
    let dtype = values.data_type.unwrap_or(data_type::INT8);
    let elem = if dtype == data_type::INT32 { 4 } else { 1 };
    values.name = Some(q.clone());
    emit.inits.push(values);
    emit.inits
        .push(crate::builder::f32_tensor(&s, &[c], scales));
    emit.inits
        .push(int_tensor(&z, &[c], dtype, vec![0; c * elem]));
    emit.front.push(node(
        "DequantizeLinear",
        format!("{base}_DequantizeLinear_{index}"),
        vec![q, s, z],
        dq.clone(),
        Some(axis as i64),
    ));
    emit.dequantize_nodes += 1;
    dq
}

/// Per-output-channel symmetric INT8 weights: (values, scales).
fn quantize_weight(dims: &[usize], w: &[f32], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let c = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let mut absmax = vec![0f32; c];
    for (i, &x) in w.iter().enumerate() {
        let ch = (i / inner) % c;
        absmax[ch] = absmax[ch].max(x.abs());
    }
    let scales: Vec<f32> = absmax
        .iter()
        .map(|&m| {
            if m > 0.0 && m.is_finite() {
                m / 127.0
            } else {
                1.0
            }
        })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &x)| (x / scales[(i / inner) % c]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

/// Writes the QDQ model. `keep_float` names layers to leave in floating point (accuracy
/// control); `calib` must hold statistics for every tensor of `plan`.
pub fn quantize(
    model: &ModelProto,
    plan: &Plan,
    calib: &Calibration,
    config: &QuantConfig,
    keep_float: &HashSet<String>,
) -> Result<(ModelProto, QuantReport), OnnxError> {
    let ix = Index::new(model)?;
    let signed_activations =
        config.target == Target::OpenVino && config.signed_activations.unwrap_or_else(cpu_has_vnni);
    let layers: Vec<Layer> = plan
        .layers
        .iter()
        .filter(|l| !keep_float.contains(&l.name))
        .cloned()
        .collect();
    let float_nodes: HashSet<usize> = plan
        .layers
        .iter()
        .filter(|l| keep_float.contains(&l.name))
        .map(|l| l.index)
        .collect();
    let act = activation_tensors(&ix, &layers, config.target, &float_nodes);
    // One set of parameters per group of tensors that must share them: a data-movement op's
    // output with its input (so engines can drop the Q/DQ pair around it), and a quantized
    // Concat's inputs with its output (so it concatenates INT8 data). Each group's range is the
    // union of its members' ranges.
    let names: Vec<&String> = act.keys().collect();
    let pos: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut parent: Vec<usize> = (0..names.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let union = |a: &str, b: &str, parent: &mut Vec<usize>| {
        if let (Some(&x), Some(&y)) = (pos.get(a), pos.get(b)) {
            let (rx, ry) = (find(parent, x), find(parent, y));
            parent[rx] = ry;
        }
    };
    for t in &names {
        if let Some(&p) = ix.producer.get(t.as_str()) {
            let n = &ix.nodes[p];
            if PASS_THROUGH.contains(&n.op_type.as_deref().unwrap_or("")) {
                if let Some(src) = n.input.first() {
                    union(t, src, &mut parent);
                }
            }
        }
    }
    for l in layers.iter().filter(|l| l.op == "Concat") {
        // One shared scale only for inputs of one sign. A non-negative input (a ReLU output)
        // joined with a signed one (a transposed convolution's output, in U-Net decoders)
        // would get a zero point, so its ReLU could not be dropped and ONNX Runtime would run
        // the producing Conv in float (seen: 4 of 23 Convs, 1.7x slower). Mixed inputs keep
        // their own parameters and the engines requantize them in the Concat.
        let signed: HashSet<bool> = l
            .inputs
            .iter()
            .filter_map(|x| calib.stats.get(x))
            .map(|s| s.range(config.method).0 < 0.0)
            .collect();
        if signed.len() > 1 {
            continue;
        }
        let out_name = &ix.nodes[l.index].output[0];
        for x in &l.inputs {
            union(x, out_name, &mut parent);
        }
    }
    let mut group_range: HashMap<usize, (f32, f32)> = HashMap::new();
    for (i, t) in names.iter().enumerate() {
        let s = calib.stats.get(*t).ok_or_else(|| OnnxError::Invalid {
            path: "<calibration>".into(),
            reason: format!("no calibration statistics for tensor '{t}'"),
        })?;
        let (lo, hi) = s.range(config.method);
        let r = find(&mut parent, i);
        let e = group_range.entry(r).or_insert((lo, hi));
        e.0 = e.0.min(lo);
        e.1 = e.1.max(hi);
    }
    let mut params: HashMap<String, QParams> = HashMap::new();
    for (i, t) in names.iter().enumerate() {
        let r = find(&mut parent, i);
        let (lo, hi) = group_range[&r];
        params.insert((*t).clone(), act_params(lo, hi, signed_activations));
    }

    let g = model.graph.as_ref().ok_or_else(|| OnnxError::Invalid {
        path: "<model>".into(),
        reason: "no graph".into(),
    })?;
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("cloned graph");
    let mut removed_inits: HashSet<String> = HashSet::new();
    let mut after: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut rewired: Vec<NodeProto> = g.node.clone();
    let mut nq = 0;
    let mut emit = Emitted {
        used: g
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(|s| s.as_str()))
            .chain(g.initializer.iter().filter_map(|t| t.name.as_deref()))
            .chain(g.input.iter().filter_map(|t| t.name.as_deref()))
            .collect(),
        inits: Vec::new(),
        front: Vec::new(),
        dequantize_nodes: 0,
    };

    // Activation Q/DQ pairs.
    let mut dropped: HashSet<usize> = HashSet::new();
    for (t, uses) in &act {
        let qp = params[t];
        let s_name = emit.unique(format!("{t}_scale"));
        let z_name = emit.unique(format!("{t}_zero_point"));
        let q_name = emit.unique(format!("{t}_quantized"));
        let dq_name = emit.unique(format!("{t}_dequantized"));
        emit.inits.push(scalar_f32(&s_name, qp.scale));
        if qp.signed {
            emit.inits
                .push(i8_tensor(&z_name, &[], &[qp.zero_point as i8]));
        } else {
            emit.inits
                .push(u8_tensor(&z_name, &[], &[qp.zero_point as u8]));
        }
        // A Relu whose only reader is this UINT8 quantizer with zero point 0 is redundant: the
        // quantizer clamps at 0 itself. Dropping it lets the engines fuse the producer straight
        // into its integer kernel (ONNX Runtime does not always do this itself).
        let mut q_input = t.clone();
        if let Some(&p) = ix.producer.get(t.as_str()) {
            let relu = &ix.nodes[p];
            let all_uses_here = ix.consumers.get(t.as_str()).map(|c| c.len()) == Some(uses.len());
            if relu.op_type.as_deref() == Some("Relu")
                && !qp.signed
                && qp.zero_point == 0
                && all_uses_here
                && relu.input.len() == 1
            {
                q_input = relu.input[0].clone();
                dropped.insert(p);
            }
        }
        let q = node(
            "QuantizeLinear",
            format!("{t}_QuantizeLinear"),
            vec![q_input, s_name.clone(), z_name.clone()],
            q_name.clone(),
            None,
        );
        let dq = node(
            "DequantizeLinear",
            format!("{t}_DequantizeLinear"),
            vec![q_name, s_name, z_name],
            dq_name.clone(),
            None,
        );
        nq += 1;
        emit.dequantize_nodes += 1;
        match ix.producer.get(t.as_str()) {
            Some(&p) => after.entry(p).or_default().extend([q, dq]),
            None => emit.front.extend([q, dq]),
        }
        for &(n, slot) in uses {
            rewired[n].input[slot] = dq_name.clone();
        }
    }

    // Weights and biases.
    let mut reports = Vec::new();
    let by_name: HashMap<&str, &Layer> = layers.iter().map(|l| (l.name.as_str(), l)).collect();
    for l in &plan.layers {
        let stats_of = |t: &str| calib.stats.get(t);
        let sqnr = |t: &str| -> f32 {
            let s = params.get(t).map(|p| p.scale).unwrap_or(1.0);
            let power = stats_of(t)
                .map(|st| st.sum_sq / st.count.max(1) as f64)
                .unwrap_or(0.0);
            let noise = (s as f64).powi(2) / 12.0;
            if power > 0.0 {
                (10.0 * (power / noise).log10()) as f32
            } else {
                f32::INFINITY
            }
        };
        let Some(layer) = by_name.get(l.name.as_str()) else {
            let why = if keep_float.contains(&l.name) {
                "accuracy control"
            } else {
                "excluded"
            };
            reports.push(LayerReport {
                name: l.name.clone(),
                op: l.op.clone(),
                quantized: false,
                kept_float_because: Some(why.into()),
                input_scales: vec![],
                weight_scale_range: None,
                weight_error: None,
                activation_sqnr_db: f32::INFINITY,
                bias_correction: None,
                sensitivity: 0.0,
            });
            continue;
        };
        let input_scales: Vec<QParams> = layer
            .inputs
            .iter()
            .filter_map(|t| params.get(t).copied())
            .collect();
        let worst_sqnr = layer
            .inputs
            .iter()
            .map(|t| sqnr(t))
            .fold(f32::INFINITY, f32::min);
        let mut rep = LayerReport {
            name: layer.name.clone(),
            op: layer.op.clone(),
            quantized: true,
            kept_float_because: None,
            input_scales,
            weight_scale_range: None,
            weight_error: None,
            activation_sqnr_db: worst_sqnr,
            bias_correction: None,
            sensitivity: 0.0,
        };
        if let Some(wname) = &layer.weight {
            let Some((wd, w)) = ix.float_weight(wname) else {
                return Err(OnnxError::Invalid {
                    path: "<model>".into(),
                    reason: format!(
                        "weight '{wname}' of {} is not a float initializer",
                        layer.name
                    ),
                });
            };
            let axis = layer.weight_axis;
            let (qw, ws) = quantize_weight(&wd, &w, axis);
            let c = wd[axis];
            let inner: usize = wd[axis + 1..].iter().product();
            let (mut num, mut den) = (0f64, 0f64);
            let deq: Vec<f32> = qw
                .iter()
                .enumerate()
                .map(|(i, &q)| q as f32 * ws[(i / inner) % c])
                .collect();
            for (a, b) in deq.iter().zip(&w) {
                num += ((a - b) as f64).powi(2);
                den += (*b as f64).powi(2);
            }
            let werr = if den > 0.0 {
                (num / den).sqrt() as f32
            } else {
                0.0
            };
            rep.weight_error = Some(werr);
            rep.weight_scale_range = Some((
                ws.iter().copied().fold(f32::INFINITY, f32::min),
                ws.iter().copied().fold(0.0, f32::max),
            ));
            let node_ref = &ix.nodes[layer.index];
            let dqn = const_dequantize(
                &mut emit,
                wname,
                layer.index,
                i8_tensor("", &wd, &qw),
                &ws,
                axis,
            );
            rewired[layer.index].input[1] = dqn;
            if ix.consumers.get(wname.as_str()).map(|v| v.len()) == Some(1) {
                removed_inits.insert(wname.clone());
            }
            // Bias: corrected for the weight rounding's mean effect, then INT32.
            let x_scale = params.get(&layer.inputs[0]).map(|p| p.scale).unwrap_or(1.0);
            let bias_name = node_ref.input.get(2).filter(|b| !b.is_empty()).cloned();
            let mut bias: Vec<f32> = match &bias_name {
                Some(b) => match ix.float_weight(b) {
                    Some((bd, bv)) if bd.iter().product::<usize>() == c => bv,
                    _ => {
                        reports.push(rep);
                        continue; // a broadcast bias stays float
                    }
                },
                None => vec![0.0; c],
            };
            let bias_scales: Vec<f32> = ws.iter().map(|s| s * x_scale).collect();
            if config.bias_correction {
                let means = stats_of(&layer.inputs[0])
                    .map(|s| s.channel_means())
                    .unwrap_or_default();
                if let Some(delta) = weight_mean_shift(node_ref, &wd, &w, &deq, &means, axis) {
                    let mut worst = 0f32;
                    for k in 0..c {
                        bias[k] -= delta[k];
                        worst = worst.max((delta[k] / bias_scales[k]).abs());
                    }
                    rep.bias_correction = Some(worst);
                }
            }
            if bias_name.is_some() || rep.bias_correction.is_some_and(|w| w > 0.0) {
                let qb: Vec<i32> = bias
                    .iter()
                    .zip(&bias_scales)
                    .map(|(b, s)| (b / s).round().clamp(-2147483647.0, 2147483647.0) as i32)
                    .collect();
                let base = bias_name
                    .clone()
                    .unwrap_or_else(|| format!("{}.bias", layer.name));
                let dqn = const_dequantize(
                    &mut emit,
                    &base,
                    layer.index,
                    i32_tensor("", &[c], &qb),
                    &bias_scales,
                    0,
                );
                // (MatMul never gets here: it has no bias and no bias correction.)
                if rewired[layer.index].input.len() > 2 {
                    rewired[layer.index].input[2] = dqn;
                } else {
                    rewired[layer.index].input.push(dqn);
                }
                if let Some(b) = &bias_name {
                    if ix.consumers.get(b.as_str()).map(|v| v.len()) == Some(1) {
                        removed_inits.insert(b.clone());
                    }
                }
            }
            rep.sensitivity = werr * 100.0 + (60.0 - worst_sqnr).max(0.0);
        } else {
            rep.sensitivity = (60.0 - worst_sqnr).max(0.0);
        }
        reports.push(rep);
    }

    let mut nodes = std::mem::take(&mut emit.front);
    for (i, n) in rewired.into_iter().enumerate() {
        if !dropped.contains(&i) {
            nodes.push(n);
        }
        if let Some(extra) = after.remove(&i) {
            nodes.extend(extra);
        }
    }
    og.node = nodes;
    og.initializer
        .retain(|t| !removed_inits.contains(t.name.as_deref().unwrap_or("")));
    og.initializer.extend(emit.inits);
    out.metadata_props
        .retain(|p| p.key.as_deref() != Some("medinfer.quantization"));
    out.metadata_props.push(crate::proto::StringStringEntryProto {
        key: Some("medinfer.quantization".into()),
        value: Some(format!(
            "int8 QDQ, weights per-channel symmetric s8, activations per-tensor {}, method {:?}, {} calibration samples, {} of {} layers quantized",
            match config.target {
                Target::Portable => "asymmetric u8 (target portable)",
                Target::OpenVino => "u8, or symmetric s8 where negative (target openvino)",
            },
            config.method,
            calib.samples,
            layers.len(),
            plan.layers.len() + plan.excluded.len()
        )),
    });
    let report = QuantReport {
        method: config.method,
        target: config.target,
        signed_activations,
        samples: calib.samples,
        layers: reports,
        activations_quantized: act.len(),
        quantize_nodes: nq,
        dequantize_nodes: emit.dequantize_nodes,
    };
    Ok((out, report))
}

/// The mean change of each output channel of `node` caused by replacing weights `w` by `deq`,
/// given the input's per-channel means (padding borders ignored). `None` when the means are
/// missing.
fn weight_mean_shift(
    node: &NodeProto,
    wd: &[usize],
    w: &[f32],
    deq: &[f32],
    means: &[f32],
    axis: usize,
) -> Option<Vec<f32>> {
    let group = attr_i(node, "group").unwrap_or(1).max(1) as usize;
    match node.op_type.as_deref().unwrap_or("") {
        "ConvTranspose" => {
            // Weights (in, out, k...), one group. Each output pixel receives on average
            // prod(k) / prod(stride) taps of every input channel.
            let (cin, m) = (wd[0], wd[1]);
            let k: usize = wd[2..].iter().product();
            if means.len() != cin || group != 1 {
                return None;
            }
            let strides: usize = crate::model::attr_ints(node, "strides")
                .map(|s| s.iter().map(|&v| v.max(1) as usize).product())
                .unwrap_or(1);
            Some(
                (0..m)
                    .map(|o| {
                        let mut s = 0f64;
                        for (ci, &mu) in means.iter().enumerate() {
                            let base = (ci * m + o) * k;
                            for j in 0..k {
                                s += (deq[base + j] - w[base + j]) as f64 * mu as f64;
                            }
                        }
                        (s / strides as f64) as f32
                    })
                    .collect(),
            )
        }
        "Conv" => {
            let (m, cg) = (wd[0], wd[1]);
            let k: usize = wd[2..].iter().product();
            if means.len() != cg * group || m % group != 0 {
                return None;
            }
            let per_group = m / group;
            Some(
                (0..m)
                    .map(|o| {
                        let g = o / per_group;
                        let mut s = 0f64;
                        for ci in 0..cg {
                            let mu = means[g * cg + ci] as f64;
                            let base = (o * cg + ci) * k;
                            for j in 0..k {
                                s += (deq[base + j] - w[base + j]) as f64 * mu;
                            }
                        }
                        s as f32
                    })
                    .collect(),
            )
        }
        "Gemm" => {
            let (rows, cols) = (wd[0], wd[1]);
            let (c, kdim) = if axis == 0 {
                (rows, cols)
            } else {
                (cols, rows)
            };
            if means.len() != kdim {
                return None;
            }
            Some(
                (0..c)
                    .map(|o| {
                        (0..kdim)
                            .map(|k| {
                                let i = if axis == 0 {
                                    o * cols + k
                                } else {
                                    k * cols + o
                                };
                                (deq[i] - w[i]) as f64 * means[k] as f64
                            })
                            .sum::<f64>() as f32
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_parameters_represent_zero_exactly() {
        let p = act_params(0.0, 6.0, true);
        assert_eq!((p.zero_point, p.signed), (0, false));
        assert!((p.scale - 6.0 / 255.0).abs() < 1e-9);
        let p = act_params(-1.0, 3.0, false);
        assert_eq!(p.zero_point, 64);
        assert!((p.scale * 255.0 - 4.0).abs() < 1e-6);
        let p = act_params(-1.0, 3.0, true);
        assert_eq!((p.zero_point, p.signed), (0, true));
        assert!((p.scale * 127.0 - 3.0).abs() < 1e-6);
        // A range that excludes zero is widened to include it.
        assert_eq!(act_params(2.0, 4.0, false).zero_point, 0);
        assert_eq!(act_params(0.0, 0.0, false).scale, 1.0);
    }

    #[test]
    fn openvino_target_quantizes_pool_outputs_that_feed_a_concat() {
        let mut m = crate::zoo::build("densenet121-cxr").unwrap();
        crate::optimize::optimize(&mut m).unwrap();
        let g = m.graph.as_ref().unwrap();
        let pools: Vec<&str> = g
            .node
            .iter()
            .filter(|n| {
                matches!(n.op_type.as_deref(), Some("AveragePool" | "MaxPool"))
                    && g.node.iter().any(|c| {
                        c.op_type.as_deref() == Some("Concat") && c.input.contains(&n.output[0])
                    })
            })
            .map(|n| n.output[0].as_str())
            .collect();
        // pool0 (MaxPool) and the three transition AveragePools open the four dense blocks.
        assert_eq!(pools.len(), 4, "{pools:?}");
        let portable = plan(&m, &QuantConfig::default()).unwrap();
        let ov = plan(
            &m,
            &QuantConfig {
                target: Target::OpenVino,
                ..QuantConfig::default()
            },
        )
        .unwrap();
        for p in &pools {
            assert!(!portable.tensors.iter().any(|t| t == p), "{p}");
            assert!(ov.tensors.iter().any(|t| t == p), "{p}");
        }
        assert_eq!(ov.tensors.len(), portable.tensors.len() + pools.len());
        assert_eq!(Target::parse("openvino"), Some(Target::OpenVino));
        assert_eq!(Target::parse("portable"), Some(Target::Portable));
        assert_eq!(Target::parse("tensorrt"), None);
    }

    #[test]
    fn weights_quantize_per_output_channel() {
        // 2 output channels with very different magnitudes: each keeps full resolution.
        let w = [1.0, -0.5, 0.25, 0.001, -0.002, 0.0005];
        let (q, s) = quantize_weight(&[2, 3], &w, 0);
        assert_eq!(q[0], 127);
        assert_eq!(q[4], -127);
        assert!((s[0] - 1.0 / 127.0).abs() < 1e-9 && (s[1] - 0.002 / 127.0).abs() < 1e-9);
        // Axis 1 (Gemm without transB): channels are columns.
        let (_, s) = quantize_weight(&[3, 2], &w, 1);
        assert!((s[0] - 1.0 / 127.0).abs() < 1e-9 && (s[1] - 0.5 / 127.0).abs() < 1e-9);
    }

    #[test]
    fn histogram_percentiles_and_growth() {
        let mut st = TensorStats::default();
        let v: Vec<f32> = (0..10000).map(|i| i as f32 / 10000.0).collect();
        st.update(&[10000], &v, true, false);
        // A later batch with a larger range doubles the histogram without losing counts.
        st.update(&[1], &[3.5], true, false);
        assert_eq!(st.hist.iter().sum::<u64>(), 10001);
        assert!(st.hist_range >= 3.5);
        let (lo, hi) = st.range(CalibMethod::Percentile(99.0));
        assert_eq!(lo, 0.0);
        assert!((hi - 0.99).abs() < 0.01, "{hi}");
        assert_eq!(st.range(CalibMethod::MinMax), (0.0, 3.5));
        // Entropy clips the lone outlier.
        let (_, e) = st.range(CalibMethod::Entropy);
        assert!(e < 3.5 && e > 0.5, "{e}");
    }

    #[test]
    fn channel_means_are_per_axis_1() {
        let mut st = TensorStats::default();
        // (N=2, C=2, 2) : channel 0 = 1,2 and 5,6 ; channel 1 = 3,4 and 7,8
        st.update(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.], false, true);
        assert_eq!(st.channel_means(), vec![3.5, 5.5]);
    }

    #[test]
    fn bias_correction_cancels_the_mean_shift_of_rounding() {
        // One 1x1 conv, 1 output, 2 inputs with means 2 and -1.
        let w = [0.3, 0.7];
        let deq = [0.31, 0.69];
        let conv = NodeProto {
            op_type: Some("Conv".into()),
            ..Default::default()
        };
        let d = weight_mean_shift(&conv, &[1, 2, 1, 1], &w, &deq, &[2.0, -1.0], 0).unwrap();
        assert!((d[0] - (0.01 * 2.0 + (-0.01) * -1.0)).abs() < 1e-6);
    }

    #[test]
    fn transposed_conv_bias_correction_averages_over_the_taps_each_pixel_receives() {
        // ConvTranspose 2x2, stride 2, 2 inputs (means 1 and 3) -> 1 output channel: every
        // output pixel gets exactly one of the 4 taps of each input channel.
        let node = NodeProto {
            op_type: Some("ConvTranspose".into()),
            attribute: vec![crate::proto::AttributeProto {
                name: Some("strides".into()),
                r#type: Some(crate::proto::attribute_type::INTS),
                ints: vec![2, 2],
                ..Default::default()
            }],
            ..Default::default()
        };
        let w = [0.0f32; 8];
        let deq = [0.04, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.08];
        let d = weight_mean_shift(&node, &[2, 1, 2, 2], &w, &deq, &[1.0, 3.0], 1).unwrap();
        // Mean over the 4 pixel phases: (0.04 * 1 + (-0.08) * 3) / 4.
        assert!((d[0] - (0.04 - 0.24) / 4.0).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn method_names_parse() {
        assert_eq!(CalibMethod::parse("minmax"), Some(CalibMethod::MinMax));
        assert_eq!(
            CalibMethod::parse("percentile:99.9"),
            Some(CalibMethod::Percentile(99.9))
        );
        assert_eq!(CalibMethod::parse("entropy"), Some(CalibMethod::Entropy));
        assert_eq!(CalibMethod::parse("percentile:20"), None);
        assert_eq!(CalibMethod::parse("nope"), None);
    }

    #[test]
    fn unknown_ops_stay_float_between_quantized_neighbours_with_a_warning() {
        use crate::builder::{f32_value_info, DimSpec, GraphBuilder};
        let mut b = GraphBuilder::new(3);
        let c1 = b.conv("c1", "input", 1, 4, 3, 1, 1, true);
        let odd = b.node("FancyActivation", "odd", &[&c1], &[]);
        let c2 = b.conv("c2", &odd, 4, 2, 1, 1, 0, true);
        let x = f32_value_info(
            "input",
            &[
                DimSpec::Fixed(1),
                DimSpec::Fixed(1),
                DimSpec::Fixed(8),
                DimSpec::Fixed(8),
            ],
        );
        let mut m = b.finish("t", vec![x], vec![f32_value_info(&c2, &[])], &[]);
        m.graph.as_mut().unwrap().node[1].domain = Some("com.example".into());
        let config = QuantConfig::default();
        let plan = plan(&m, &config).unwrap();
        assert_eq!(plan.layers.len(), 2);
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("com.example::FancyActivation"),
            "{:?}",
            plan.warnings
        );
        let mut calib = Calibration::default();
        let vals: Vec<f32> = (0..64).map(|i| i as f32 / 32.0 - 1.0).collect();
        let values: Vec<(Vec<usize>, &[f32])> = plan
            .tensors
            .iter()
            .map(|_| (vec![1, 1, 8, 8], &vals[..]))
            .collect();
        calib.add(&plan, config.method, &values);
        let (q, _) = quantize(&m, &plan, &calib, &config, &HashSet::new()).unwrap();
        let g = q.graph.unwrap();
        let odd = g
            .node
            .iter()
            .find(|n| n.op_type.as_deref() == Some("FancyActivation"))
            .unwrap();
        let producer = g
            .node
            .iter()
            .find(|n| n.output.contains(&odd.input[0]))
            .unwrap();
        assert_eq!(producer.op_type.as_deref(), Some("DequantizeLinear"));
        let reader = g
            .node
            .iter()
            .find(|n| n.input.contains(&odd.output[0]))
            .unwrap();
        assert_eq!(reader.op_type.as_deref(), Some("QuantizeLinear"));
    }
}
