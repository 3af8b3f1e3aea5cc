//! Which layers and tensors to quantize, and the calibration graph that exposes them.

use super::*;
use crate::model::{attr_f, attr_i};
use crate::optimize::Const;
use crate::proto::{data_type, ModelProto, TensorProto};
use crate::OnnxError;
use std::collections::{BTreeMap, HashMap};

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

pub(super) struct Index<'a> {
    pub(super) nodes: &'a [NodeProto],
    pub(super) inits: HashMap<&'a str, &'a TensorProto>,
    pub(super) producer: HashMap<&'a str, usize>,
    pub(super) consumers: HashMap<&'a str, Vec<usize>>,
    pub(super) outputs: HashSet<&'a str>,
}

impl<'a> Index<'a> {
    pub(super) fn new(model: &'a ModelProto) -> Result<Index<'a>, OnnxError> {
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
    pub(super) fn is_const(&self, name: &str) -> bool {
        self.inits.contains_key(name)
    }
    pub(super) fn float_weight(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let t = self.inits.get(name)?;
        if t.data_type != Some(data_type::FLOAT) {
            return None;
        }
        match Const::from_proto(t)? {
            Const::F32(d, v) => Some((d, v)),
            Const::I64(..) => None,
        }
    }
    pub(super) fn single_consumer(&self, t: &str) -> Option<usize> {
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
    // Layers the target's engines have no fast integer kernel for stay float (see
    // `Plan::kept_float_for_target`).
    let slow_on_target = |n: &NodeProto| -> bool {
        config.target == Target::Portable
            && matches!(n.op_type.as_deref(), Some("Conv" | "ConvTranspose"))
            && n.input
                .get(1)
                .and_then(|w| ix.inits.get(w.as_str()))
                .is_some_and(|t| t.dims.len() == 5)
    };
    let mut layers = Vec::new();
    let mut excluded = Vec::new();
    let mut kept_float_for_target = Vec::new();
    for (i, n) in ix.nodes.iter().enumerate() {
        let op = n.op_type.as_deref().unwrap_or("");
        if !n.domain.as_deref().unwrap_or("").is_empty() {
            continue;
        }
        let name = node_name(n, i);
        if slow_on_target(n) {
            kept_float_for_target.push(name);
            continue;
        }
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
                            (matches!(op, "Conv" | "ConvTranspose" | "Gemm" | "MatMul")
                                && !slow_on_target(&ix.nodes[c]))
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
    let mut warnings: Vec<String> = unknown
        .into_iter()
        .map(|(op, n)| {
            format!(
                "{n} node(s) of op {op} are not quantized by medinfer: they stay in floating point"
            )
        })
        .collect();
    if !kept_float_for_target.is_empty() {
        warnings.push(format!(
            "{} 3-D convolution(s) stay in floating point for --target portable: ONNX Runtime has no fast integer 3-D convolution (its QLinearConv ran a 3-D U-Net 3x slower than float) nor integer ConvTranspose; for an OpenVINO deployment use --target openvino, which quantizes them",
            kept_float_for_target.len()
        ));
    }
    Ok(Plan {
        layers,
        excluded,
        kept_float_for_target,
        tensors,
        channel_mean_tensors,
        warnings,
    })
}

/// The activation tensors to quantize, each with the `(node, input slot)` reads that take its
/// dequantized value. `float_nodes` are layers kept in floating point by accuracy control: they
/// read their inputs unquantized (a full revert), even where the producer is quantized and its
/// other readers take the INT8 value.
pub(super) fn activation_tensors(
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

/// The weighted layers (Conv / ConvTranspose / Gemm / MatMul) that read the model's inputs with
/// no other weighted layer on the way: the "first layers" of NNCF's overflow fix. Graph order
/// is topological (ONNX requires it), so one pass marks every tensor downstream of a weighted
/// layer.
pub(super) fn first_weighted_layers(ix: &Index, plan: &Plan) -> HashSet<usize> {
    let weighted: HashSet<usize> = plan
        .layers
        .iter()
        .filter(|l| l.weight.is_some())
        .map(|l| l.index)
        .collect();
    let mut downstream: HashSet<&str> = HashSet::new();
    let mut first = HashSet::new();
    for (i, n) in ix.nodes.iter().enumerate() {
        let after = n.input.iter().any(|x| downstream.contains(x.as_str()));
        if weighted.contains(&i) && !after {
            first.insert(i);
        }
        if after || weighted.contains(&i) {
            downstream.extend(n.output.iter().map(|o| o.as_str()));
        }
    }
    first
}
