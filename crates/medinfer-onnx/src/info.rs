use crate::model::{elem_type_name, encode_model, tensor_dims};
use crate::proto::{
    tensor_shape_proto::dimension::Value as DimValue, type_proto, GraphProto, ModelProto,
    ValueInfoProto,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One dimension of a declared input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A dynamic dimension, with its symbolic name if it has one.
    Dynamic(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic(s) if s.is_empty() => write!(f, "?"),
            Dim::Dynamic(s) => write!(f, "{s}"),
        }
    }
}

/// A declared graph input or output.
#[derive(Clone, Debug, Serialize)]
pub struct ValueInfo {
    /// Tensor name.
    pub name: String,
    /// ONNX element type name (`float32`, `int64`, ...).
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<Dim>,
}

/// Everything `medinfer info` reports about a model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// Graph inputs that are not initializers.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
    /// Default-domain opset version.
    pub opset: i64,
    /// IR version.
    pub ir_version: i64,
    /// Who wrote the file.
    pub producer: String,
    /// Number of nodes.
    pub nodes: usize,
    /// Op type -> count.
    pub op_histogram: BTreeMap<String, usize>,
    /// Trainable parameters (weights and biases; BatchNorm running statistics, quantization
    /// scales / zero points and shape constants excluded), torchvision's convention.
    pub trainable_parameters: u64,
    /// All elements of all initializers.
    pub initializer_elements: u64,
    /// Multiply-accumulates of one inference at the shape used (dynamic dims set to 1 unless
    /// the model's metadata gives a default batch), over Conv / ConvTranspose / Gemm / MatMul.
    pub macs: Option<u64>,
    /// The input shapes the MAC count was computed for.
    pub macs_input_shapes: BTreeMap<String, Vec<usize>>,
    /// Op types whose shapes could not be inferred (MACs after them are missing).
    pub shape_inference_unknown_ops: Vec<String>,
    /// True when the graph holds QuantizeLinear / DequantizeLinear nodes.
    pub quantized: bool,
    /// Model metadata properties.
    pub metadata: BTreeMap<String, String>,
    /// Encoded size in bytes.
    pub file_size: u64,
    /// SHA-256 of the file bytes.
    pub sha256: String,
}

/// The rank a value info declares, if it declares a tensor shape.
pub(crate) fn declared_rank(v: &ValueInfoProto) -> Option<usize> {
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t.shape.as_ref().map(|s| s.dim.len()),
        _ => None,
    }
}

/// A value info's name, element type and dims as [`ModelInfo`] reports them.
pub fn value_info(v: &ValueInfoProto) -> ValueInfo {
    let (dtype, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => (
            elem_type_name(t.elem_type.unwrap_or(0)).to_string(),
            t.shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(DimValue::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                            Some(DimValue::DimParam(p)) => Dim::Dynamic(p.clone()),
                            _ => Dim::Dynamic(String::new()),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ("non-tensor".to_string(), vec![]),
    };
    ValueInfo {
        name: v.name.clone().unwrap_or_default(),
        dtype,
        shape,
    }
}

/// The input positions of an op that never hold trainable parameters.
fn non_trainable_input(op: &str, idx: usize) -> bool {
    match op {
        "BatchNormalization" => idx >= 3,
        "QuantizeLinear" | "DequantizeLinear" => idx >= 1,
        "Resize" | "Upsample" | "Reshape" | "Pad" | "Slice" | "Clip" | "Expand" | "Tile"
        | "Unsqueeze" | "Squeeze" | "ReduceMean" | "ReduceSum" | "Gather" | "ConstantOfShape" => {
            idx >= 1
        }
        _ => false,
    }
}

/// The graph inputs that are fed at run time: declared inputs that are not initializers (older
/// exporters list every weight as an input too).
pub fn data_inputs(graph: &GraphProto) -> impl Iterator<Item = &ValueInfoProto> {
    let init_names: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    graph
        .input
        .iter()
        .filter(move |v| !init_names.contains(v.name.as_deref().unwrap_or("")))
}

/// Analyses a model. `file_bytes` are the bytes it was loaded from (for size and sha256); when
/// absent the model is encoded to compute them.
pub fn analyze(model: &ModelProto, file_bytes: Option<&[u8]>) -> ModelInfo {
    let encoded;
    let bytes = match file_bytes {
        Some(b) => b,
        None => {
            encoded = encode_model(model);
            &encoded
        }
    };
    let default_graph = Default::default();
    let graph = model.graph.as_ref().unwrap_or(&default_graph);
    let inputs: Vec<ValueInfo> = data_inputs(graph).map(value_info).collect();
    let init_names: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let outputs = graph.output.iter().map(value_info).collect();

    let mut op_histogram = BTreeMap::new();
    for n in &graph.node {
        *op_histogram
            .entry(n.op_type.clone().unwrap_or_default())
            .or_insert(0usize) += 1;
    }

    // Trainable parameters: initializer elements consumed at a weight position at least once.
    let mut trainable_use: HashMap<&str, bool> = HashMap::new();
    for n in &graph.node {
        let op = n.op_type.as_deref().unwrap_or("");
        for (i, inp) in n.input.iter().enumerate() {
            if init_names.contains(inp.as_str()) {
                let e = trainable_use.entry(inp.as_str()).or_insert(false);
                *e |= !non_trainable_input(op, i);
            }
        }
    }
    let mut trainable = 0u64;
    let mut all = 0u64;
    for t in &graph.initializer {
        let numel = tensor_dims(t)
            .iter()
            .fold(1u64, |a, &d| a.saturating_mul(d as u64));
        all = all.saturating_add(numel);
        let float_or_q = matches!(t.data_type.unwrap_or(0), 1 | 2 | 3 | 10 | 11 | 16);
        if float_or_q && trainable_use.get(t.name.as_deref().unwrap_or("")) == Some(&true) {
            trainable = trainable.saturating_add(numel);
        }
    }

    let metadata: BTreeMap<String, String> = model
        .metadata_props
        .iter()
        .map(|p| {
            (
                p.key.clone().unwrap_or_default(),
                p.value.clone().unwrap_or_default(),
            )
        })
        .collect();
    let default_batch = metadata
        .get("medinfer.default_batch")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1);
    let mut macs_input_shapes = BTreeMap::new();
    for (i, v) in inputs.iter().enumerate() {
        let shape: Vec<usize> = v
            .shape
            .iter()
            .enumerate()
            .map(|(d, dim)| match dim {
                Dim::Fixed(n) => *n,
                Dim::Dynamic(_) if d == 0 && i == 0 => default_batch,
                Dim::Dynamic(_) => 1,
            })
            .collect();
        macs_input_shapes.insert(v.name.clone(), shape);
    }
    let report = crate::shapes::infer(graph, &macs_input_shapes.clone().into_iter().collect());
    let outputs_known = graph
        .output
        .iter()
        .all(|o| report.shapes.contains_key(o.name.as_deref().unwrap_or("")));

    ModelInfo {
        inputs,
        outputs,
        opset: crate::model::default_opset(model),
        ir_version: model.ir_version.unwrap_or(0),
        producer: format!(
            "{} {}",
            model.producer_name.clone().unwrap_or_default(),
            model.producer_version.clone().unwrap_or_default()
        )
        .trim()
        .to_string(),
        nodes: graph.node.len(),
        quantized: op_histogram.contains_key("QuantizeLinear")
            || op_histogram.contains_key("DequantizeLinear"),
        op_histogram,
        trainable_parameters: trainable,
        initializer_elements: all,
        macs: outputs_known.then_some(report.macs),
        macs_input_shapes,
        shape_inference_unknown_ops: report.unknown_ops,
        metadata,
        file_size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    }
}

/// The dims of a declared tensor when every one is a fixed size (`None` if any is dynamic or
/// the type is not a tensor).
pub(crate) fn static_dims(v: &ValueInfoProto) -> Option<Vec<usize>> {
    value_info(v)
        .shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Dynamic(_) => None,
        })
        .collect::<Option<Vec<_>>>()
        .filter(|_| {
            matches!(
                v.r#type.as_ref().and_then(|t| t.value.as_ref()),
                Some(type_proto::Value::TensorType(_))
            )
        })
}
