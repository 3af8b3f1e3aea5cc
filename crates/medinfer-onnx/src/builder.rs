//! A small ONNX graph builder with seeded weight initialisation, used by the [`crate::zoo`].
//!
//! Weights follow PyTorch's defaults so that activations keep a sane scale through deep
//! networks: Kaiming-normal (fan-in, gain sqrt 2) for convolutions, uniform +-1/sqrt(fan_in) for
//! fully connected layers. BatchNorm layers get random (not identity) statistics so that graph
//! passes such as BN folding are really exercised.

use crate::proto::{
    attribute_type, data_type, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use medinfer_core::SeededRng;

/// The opset every zoo model is written with.
pub const OPSET: i64 = 17;
/// Version of the zoo's construction recipe, written as producer_version: bumped whenever a
/// change alters any zoo model's bytes (not tied to the crate version, so builds stay identical).
pub const ZOO_FORMAT: &str = "zoo-1";
/// The IR version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// An attribute value for [`GraphBuilder::node`].
#[derive(Clone, Debug)]
pub enum Attr {
    /// INT.
    Int(i64),
    /// INTS.
    Ints(Vec<i64>),
    /// FLOAT.
    Float(f32),
    /// STRING.
    Str(String),
}

pub(crate) fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = Some(attribute_type::INT);
            a.i = Some(*i);
        }
        Attr::Ints(v) => {
            a.r#type = Some(attribute_type::INTS);
            a.ints = v.clone();
        }
        Attr::Float(f) => {
            a.r#type = Some(attribute_type::FLOAT);
            a.f = Some(*f);
        }
        Attr::Str(s) => {
            a.r#type = Some(attribute_type::STRING);
            a.s = Some(s.as_bytes().to_vec());
        }
    }
    a
}

/// A float tensor stored as little-endian raw data.
pub fn f32_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 4);
    for x in data {
        raw.extend_from_slice(&x.to_le_bytes());
    }
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::FLOAT),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// An int64 tensor stored as little-endian raw data.
pub fn i64_tensor(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 8);
    for x in data {
        raw.extend_from_slice(&x.to_le_bytes());
    }
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::INT64),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// One dimension of a declared graph input or output.
#[derive(Clone, Debug)]
pub enum DimSpec {
    /// A fixed size.
    Fixed(usize),
    /// A named dynamic dimension.
    Named(String),
}

/// A float tensor value-info with the given dims.
pub fn f32_value_info(name: &str, dims: &[DimSpec]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                DimSpec::Fixed(n) => Value::DimValue(*n as i64),
                DimSpec::Named(s) => Value::DimParam(s.clone()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// Builds a graph node by node, creating seeded initializers as it goes.
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    rng: SeededRng,
    /// Trained parameters by initializer name; when set, they replace the seeded values.
    pretrained: Option<std::collections::HashMap<String, Vec<f32>>>,
    /// Parameters that `pretrained` lacked or had with the wrong size.
    problems: Vec<String>,
}

impl GraphBuilder {
    /// A builder whose weights come from `seed`.
    pub fn new(seed: u64) -> GraphBuilder {
        GraphBuilder {
            nodes: Vec::new(),
            initializers: Vec::new(),
            rng: SeededRng::new(seed),
            pretrained: None,
            problems: Vec::new(),
        }
    }

    /// A builder whose parameters come from `weights` (initializer name -> values, row-major),
    /// for trained models: every parameter the graph needs must be there with the right size,
    /// which [`GraphBuilder::weight_problems`] reports after building.
    pub fn with_weights(weights: std::collections::HashMap<String, Vec<f32>>) -> GraphBuilder {
        let mut b = GraphBuilder::new(0);
        b.pretrained = Some(weights);
        b
    }

    /// Parameters that were missing or of the wrong size, and trained weights that the graph
    /// did not use (empty when the weights fit exactly, or when the weights are seeded).
    pub fn weight_problems(&self) -> Vec<String> {
        let mut p = self.problems.clone();
        if let Some(w) = &self.pretrained {
            let mut unused: Vec<&String> = w.keys().collect();
            unused.sort();
            p.extend(
                unused
                    .into_iter()
                    .map(|k| format!("{k}: not a parameter of this graph")),
            );
        }
        p
    }

    /// Parameter `name` of `len` values: the trained values when the builder has them, else
    /// `seeded()` for each element.
    fn param(
        &mut self,
        name: &str,
        len: usize,
        mut seeded: impl FnMut(&mut SeededRng) -> f64,
    ) -> Vec<f32> {
        if let Some(w) = self.pretrained.as_mut() {
            return match w.remove(name) {
                Some(v) if v.len() == len => v,
                Some(v) => {
                    self.problems
                        .push(format!("{name}: {} values, the graph needs {len}", v.len()));
                    vec![0.0; len]
                }
                None => {
                    self.problems.push(format!("{name}: missing"));
                    vec![0.0; len]
                }
            };
        }
        (0..len).map(|_| seeded(&mut self.rng) as f32).collect()
    }

    /// Adds an initializer and returns its name.
    pub fn initializer(&mut self, t: TensorProto) -> String {
        let name = t.name.clone().unwrap_or_default();
        self.initializers.push(t);
        name
    }

    /// Adds a node named `name` whose single output is also called `name`; returns it.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            name: Some(name.to_string()),
            op_type: Some(op.to_string()),
            attribute: attrs.iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a node with several outputs (Split, say), named `name`.
    pub fn node_outputs(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: &[(&str, Attr)],
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(name.to_string()),
            op_type: Some(op.to_string()),
            attribute: attrs.iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
    }

    /// A 2-D convolution with Kaiming-normal weights (no bias unless `bias`).
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    ) -> String {
        let fan_in = (cin * k * k) as f64;
        let std = (2.0 / fan_in).sqrt();
        let w = self.param(&format!("{name}.weight"), cout * cin * k * k, |r| {
            r.normal() * std
        });
        let wn = self.initializer(f32_tensor(
            &format!("{name}.weight"),
            &[cout, cin, k, k],
            &w,
        ));
        let mut inputs = vec![x.to_string(), wn];
        if bias {
            let bound = 1.0 / fan_in.sqrt();
            let b = self.param(&format!("{name}.bias"), cout, |r| r.range(-bound, bound));
            inputs.push(self.initializer(f32_tensor(&format!("{name}.bias"), &[cout], &b)));
        }
        let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        let p = pad as i64;
        self.node(
            "Conv",
            name,
            &refs,
            &[
                ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
            ],
        )
    }

    /// A 2-D transposed convolution (kernel `k`, stride `k`: the learned 2x up-sampling of U-Net
    /// decoders) with He-normal weights over the `cin * k * k / stride^2` inputs each output
    /// pixel receives, and a bias.
    pub fn conv_transpose(
        &mut self,
        name: &str,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
    ) -> String {
        let fan_in = cin as f64;
        let std = (2.0 / fan_in).sqrt();
        let w = self.param(&format!("{name}.weight"), cin * cout * k * k, |r| {
            r.normal() * std
        });
        let wn = self.initializer(f32_tensor(
            &format!("{name}.weight"),
            &[cin, cout, k, k],
            &w,
        ));
        let bound = 1.0 / fan_in.sqrt();
        let b = self.param(&format!("{name}.bias"), cout, |r| r.range(-bound, bound));
        let bn = self.initializer(f32_tensor(&format!("{name}.bias"), &[cout], &b));
        self.node(
            "ConvTranspose",
            name,
            &[x, &wn, &bn],
            &[
                ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                ("strides", Attr::Ints(vec![k as i64, k as i64])),
            ],
        )
    }

    /// BatchNormalization with random statistics; `gamma` is the range of the scale.
    pub fn batch_norm(&mut self, name: &str, x: &str, c: usize, gamma: (f64, f64)) -> String {
        let scale = self.param(&format!("{name}.weight"), c, |r| r.range(gamma.0, gamma.1));
        let shift = self.param(&format!("{name}.bias"), c, |r| r.normal() * 0.05);
        let mean = self.param(&format!("{name}.running_mean"), c, |r| r.normal() * 0.05);
        let var = self.param(&format!("{name}.running_var"), c, |r| r.range(0.8, 1.2));
        let s = self.initializer(f32_tensor(&format!("{name}.weight"), &[c], &scale));
        let b = self.initializer(f32_tensor(&format!("{name}.bias"), &[c], &shift));
        let m = self.initializer(f32_tensor(&format!("{name}.running_mean"), &[c], &mean));
        let v = self.initializer(f32_tensor(&format!("{name}.running_var"), &[c], &var));
        self.node(
            "BatchNormalization",
            name,
            &[x, &s, &b, &m, &v],
            &[("epsilon", Attr::Float(1e-5))],
        )
    }

    /// ReLU.
    pub fn relu(&mut self, name: &str, x: &str) -> String {
        self.node("Relu", name, &[x], &[])
    }

    /// Max pooling with a square kernel.
    pub fn max_pool(&mut self, name: &str, x: &str, k: usize, stride: usize, pad: usize) -> String {
        let p = pad as i64;
        self.node(
            "MaxPool",
            name,
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
            ],
        )
    }

    /// Average pooling with a square kernel and no padding.
    pub fn avg_pool(&mut self, name: &str, x: &str, k: usize, stride: usize) -> String {
        self.node(
            "AveragePool",
            name,
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
            ],
        )
    }

    /// Global average pooling followed by flattening to (N, C).
    pub fn global_pool_flatten(&mut self, name: &str, x: &str) -> String {
        let g = self.node("GlobalAveragePool", &format!("{name}.pool"), &[x], &[]);
        self.node(
            "Flatten",
            &format!("{name}.flatten"),
            &[&g],
            &[("axis", Attr::Int(1))],
        )
    }

    /// A fully connected layer (Gemm with transposed weight, PyTorch's `Linear`).
    pub fn linear(&mut self, name: &str, x: &str, cin: usize, cout: usize) -> String {
        let bound = 1.0 / (cin as f64).sqrt();
        let w = self.param(&format!("{name}.weight"), cout * cin, |r| {
            r.range(-bound, bound)
        });
        let b = self.param(&format!("{name}.bias"), cout, |r| r.range(-bound, bound));
        let wn = self.initializer(f32_tensor(&format!("{name}.weight"), &[cout, cin], &w));
        let bn = self.initializer(f32_tensor(&format!("{name}.bias"), &[cout], &b));
        self.node("Gemm", name, &[x, &wn, &bn], &[("transB", Attr::Int(1))])
    }

    /// Nearest-neighbour 2x spatial up-sampling (Resize, asymmetric / floor: exact on every engine).
    pub fn upsample2x(&mut self, name: &str, x: &str) -> String {
        let scales = self.initializer(f32_tensor(
            &format!("{name}.scales"),
            &[4],
            &[1.0, 1.0, 2.0, 2.0],
        ));
        self.node(
            "Resize",
            name,
            &[x, "", &scales],
            &[
                ("mode", Attr::Str("nearest".into())),
                (
                    "coordinate_transformation_mode",
                    Attr::Str("asymmetric".into()),
                ),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        )
    }

    /// Finishes the model.
    pub fn finish(
        self,
        graph_name: &str,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
        metadata: &[(&str, String)],
    ) -> ModelProto {
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("medinfer".into()),
            producer_version: Some(ZOO_FORMAT.into()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(graph_name.to_string()),
                initializer: self.initializers,
                input: inputs,
                output: outputs,
                ..Default::default()
            }),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.to_string()),
                    value: Some(v.clone()),
                })
                .collect(),
            ..Default::default()
        }
    }
}
