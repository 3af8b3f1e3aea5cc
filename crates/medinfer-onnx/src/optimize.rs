//! Graph optimisation: the passes that make a model cheaper to run and easier to quantize, with
//! the numbers unchanged (to float rounding).
//!
//! | pass | what it does |
//! |---|---|
//! | constants | `Constant` nodes become initializers |
//! | identities | `Identity` and inference-mode `Dropout` removed, their consumers rewired |
//! | folding | nodes whose inputs are all constant are evaluated once (shape arithmetic, `Transpose`, `Reshape`, element-wise maths, `Cast`, `Concat`, `Gather`, ...) |
//! | batch-norm | `BatchNormalization` after a `Conv` or `Gemm` folded into its weights and bias |
//! | affine | a per-channel constant `Mul` / `Add` after a `Conv` folded into its weights / bias |
//! | transposes | two `Transpose`s in a row composed (removed when they cancel); a `Transpose` pushed below the element-wise op or `Concat` that reads it (all inputs of binary ops and `Concat` transposed alike), so that the pairs a channels-last export writes around every convolution meet and cancel |
//! | reshapes | a `Reshape` of a `Reshape` becomes one `Reshape` |
//! | dead code | nodes and initializers that reach no graph output removed |
//!
//! `Conv` + `Add` + `Relu` chains are left as separate nodes on purpose: ONNX Runtime and OpenVINO
//! fuse exactly that pattern themselves (and into their INT8 kernels once the model is quantized),
//! so merging them into a non-standard op would only hide them from the engines.
//!
//! Names referenced from inside sub-graphs (`If`, `Loop`, `Scan` bodies) and every graph output are
//! pinned: no pass renames or removes them.

use crate::model::{attr_f, attr_i, attr_ints, tensor_dims, tensor_to_f32};
use crate::proto::{data_type, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::OnnxError;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What [`optimize`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OptimizeReport {
    /// Nodes before.
    pub nodes_before: usize,
    /// Nodes after.
    pub nodes_after: usize,
    /// Initializers before.
    pub initializers_before: usize,
    /// Initializers after.
    pub initializers_after: usize,
    /// How many times each pass changed the graph, by pass name.
    pub passes: Vec<(String, usize)>,
    /// Op histogram before (op, count), most frequent first.
    pub ops_before: Vec<(String, usize)>,
    /// Op histogram after.
    pub ops_after: Vec<(String, usize)>,
}

/// Runs every pass to a fixed point. The model's inputs, outputs and their names are unchanged.
pub fn optimize(model: &mut ModelProto) -> Result<OptimizeReport, OnnxError> {
    // FP16-stored weights (FLOAT16 initializer + Cast) become FP32 initializers first, so that
    // the passes below (and the quantizer after them) see ordinary weights.
    let nodes_before = model.graph.as_ref().map_or(0, |g| g.node.len());
    let expanded = crate::f16store::expand(model);
    let graph = model.graph.as_mut().ok_or_else(|| OnnxError::Invalid {
        path: "<model>".into(),
        reason: "no graph".into(),
    })?;
    let mut report = OptimizeReport {
        nodes_before,
        initializers_before: graph.initializer.len(),
        ops_before: op_histogram(graph),
        ..Default::default()
    };
    let mut counts: Vec<(String, usize)> = [
        "fp16 weights",
        "constants",
        "identities",
        "folding",
        "batch-norm",
        "affine",
        "transposes",
        "reshapes",
        "dead code",
    ]
    .iter()
    .map(|s| (s.to_string(), 0))
    .collect();
    counts[0].1 = expanded;
    for _round in 0..20 {
        let mut changed = 0;
        let mut g = Graph::new(graph);
        let n = [
            g.constants_to_initializers(),
            g.remove_identities(),
            g.fold_constants(),
            g.fold_batch_norm(),
            g.fold_affine(),
            g.compose_transposes() + g.push_transposes(),
            g.merge_reshapes(),
            g.dead_code(),
        ];
        g.store(graph);
        for (i, k) in n.iter().enumerate() {
            counts[i + 1].1 += k;
            changed += k;
        }
        if changed == 0 {
            break;
        }
    }
    report.nodes_after = graph.node.len();
    report.initializers_after = graph.initializer.len();
    report.ops_after = op_histogram(graph);
    report.passes = counts;
    Ok(report)
}

fn op_histogram(g: &GraphProto) -> Vec<(String, usize)> {
    let mut h: HashMap<String, usize> = HashMap::new();
    for n in &g.node {
        *h.entry(n.op_type.clone().unwrap_or_default()).or_default() += 1;
    }
    let mut v: Vec<_> = h.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// A constant tensor small enough to evaluate: f32 or i64 values with dims.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Const {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

impl Const {
    pub(crate) fn from_proto(t: &TensorProto) -> Option<Const> {
        if t.data_location == Some(1) {
            return None;
        }
        let dims = tensor_dims(t);
        match t.data_type.unwrap_or(0) {
            data_type::FLOAT | data_type::DOUBLE => Some(Const::F32(dims, tensor_to_f32(t)?)),
            data_type::INT64 | data_type::INT32 => {
                let v: Vec<i64> = if let Some(raw) = &t.raw_data {
                    if t.data_type == Some(data_type::INT64) {
                        raw.chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                            .collect()
                    } else {
                        raw.chunks_exact(4)
                            .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64)
                            .collect()
                    }
                } else if t.data_type == Some(data_type::INT64) {
                    t.int64_data.clone()
                } else {
                    t.int32_data.iter().map(|&x| x as i64).collect()
                };
                Some(Const::I64(dims, v))
            }
            _ => None,
        }
    }
    pub(crate) fn to_proto(&self, name: &str) -> TensorProto {
        match self {
            Const::F32(d, v) => crate::builder::f32_tensor(name, d, v),
            Const::I64(d, v) => crate::builder::i64_tensor(name, d, v),
        }
    }
    fn dims(&self) -> &[usize] {
        match self {
            Const::F32(d, _) | Const::I64(d, _) => d,
        }
    }
    fn len(&self) -> usize {
        match self {
            Const::F32(_, v) => v.len(),
            Const::I64(_, v) => v.len(),
        }
    }
    fn with_dims(self, nd: Vec<usize>) -> Option<Const> {
        if nd.iter().product::<usize>() != self.len() {
            return None;
        }
        Some(match self {
            Const::F32(_, v) => Const::F32(nd, v),
            Const::I64(_, v) => Const::I64(nd, v),
        })
    }
    fn as_i64(&self) -> Vec<i64> {
        match self {
            Const::F32(_, v) => v.iter().map(|&x| x as i64).collect(),
            Const::I64(_, v) => v.clone(),
        }
    }
    fn as_f32(&self) -> Vec<f32> {
        match self {
            Const::F32(_, v) => v.clone(),
            Const::I64(_, v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// Gathers elements by flat source index into a new tensor of dims `nd`.
    fn gather_flat(&self, idx: &[usize], nd: Vec<usize>) -> Const {
        match self {
            Const::F32(_, v) => Const::F32(nd, idx.iter().map(|&i| v[i]).collect()),
            Const::I64(_, v) => Const::I64(nd, idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// Largest constant the folder will materialise (elements), so that folding never blows a model
/// up (e.g. a `ConstantOfShape` or `Expand` to a huge tensor stays a node).
const FOLD_LIMIT: usize = 1 << 24;

fn strides(d: &[usize]) -> Vec<usize> {
    let mut s = vec![1; d.len()];
    for i in (0..d.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * d[i + 1];
    }
    s
}

/// Flat source index into a tensor of dims `d` for each element of the broadcast shape `out`.
fn broadcast_index(d: &[usize], out: &[usize]) -> Vec<usize> {
    let n = out.len();
    let st = strides(d);
    let total: usize = out.iter().product();
    let mut idx = Vec::with_capacity(total);
    let mut pos = vec![0usize; n];
    for _ in 0..total {
        let mut k = 0;
        for (i, &p) in pos.iter().enumerate() {
            if i + d.len() >= n {
                let j = i + d.len() - n;
                if d[j] != 1 {
                    k += p * st[j];
                }
            }
        }
        idx.push(k);
        for i in (0..n).rev() {
            pos[i] += 1;
            if pos[i] < out[i] {
                break;
            }
            pos[i] = 0;
        }
    }
    idx
}

fn binary(op: &str, a: &Const, b: &Const) -> Option<Const> {
    let out = crate::shapes::broadcast(a.dims(), b.dims())?;
    if out.iter().product::<usize>() > FOLD_LIMIT {
        return None;
    }
    let ia = broadcast_index(a.dims(), &out);
    let ib = broadcast_index(b.dims(), &out);
    match (a, b) {
        (Const::I64(..), Const::I64(..)) => {
            let (x, y) = (a.as_i64(), b.as_i64());
            let f = |p: i64, q: i64| -> Option<i64> {
                Some(match op {
                    "Add" => p.checked_add(q)?,
                    "Sub" => p.checked_sub(q)?,
                    "Mul" => p.checked_mul(q)?,
                    "Div" => p.checked_div(q)?,
                    _ => return None,
                })
            };
            let v: Option<Vec<i64>> = ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect();
            Some(Const::I64(out, v?))
        }
        (Const::F32(..), Const::F32(..)) => {
            let (x, y) = (a.as_f32(), b.as_f32());
            let f = |p: f32, q: f32| -> Option<f32> {
                Some(match op {
                    "Add" => p + q,
                    "Sub" => p - q,
                    "Mul" => p * q,
                    "Div" => p / q,
                    "Pow" => p.powf(q),
                    _ => return None,
                })
            };
            let v: Option<Vec<f32>> = ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect();
            Some(Const::F32(out, v?))
        }
        _ => None,
    }
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// Evaluates one node on constant inputs; `None` when the op or case is not handled (the node
/// then stays in the graph, which is always correct).
fn evaluate(
    node: &NodeProto,
    ins: &[Option<Const>],
    shapes: &HashMap<String, Vec<usize>>,
) -> Option<Vec<Const>> {
    let op = node.op_type.as_deref().unwrap_or("");
    let get = |i: usize| ins.get(i).and_then(|x| x.as_ref());
    let out = match op {
        "Shape" => {
            // Needs only the input's static shape, not its values.
            let d = shapes.get(node.input.first()?)?;
            let r = d.len() as i64;
            let clamp = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
            let s = clamp(attr_i(node, "start").unwrap_or(0));
            let e = clamp(attr_i(node, "end").unwrap_or(r));
            let v: Vec<i64> = d[s..e.max(s)].iter().map(|&x| x as i64).collect();
            Const::I64(vec![v.len()], v)
        }
        "Identity" => get(0)?.clone(),
        "Cast" => {
            let x = get(0)?;
            match attr_i(node, "to")? as i32 {
                data_type::FLOAT => Const::F32(x.dims().to_vec(), x.as_f32()),
                data_type::INT64 => Const::I64(x.dims().to_vec(), x.as_i64()),
                _ => return None,
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" => binary(op, get(0)?, get(1)?)?,
        "Sqrt" | "Reciprocal" | "Neg" | "Relu" | "Exp" => match get(0)? {
            Const::F32(d, v) => Const::F32(
                d.clone(),
                v.iter()
                    .map(|&x| match op {
                        "Sqrt" => x.sqrt(),
                        "Reciprocal" => 1.0 / x,
                        "Neg" => -x,
                        "Relu" => x.max(0.0),
                        _ => x.exp(),
                    })
                    .collect(),
            ),
            Const::I64(d, v) if op == "Neg" => {
                Const::I64(d.clone(), v.iter().map(|x| -x).collect())
            }
            _ => return None,
        },
        "Reshape" => {
            let x = get(0)?.clone();
            let spec = get(1)?.as_i64();
            let allowzero = attr_i(node, "allowzero").unwrap_or(0) != 0;
            let mut nd: Vec<i64> = spec
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    if s == 0 && !allowzero {
                        x.dims().get(i).map(|&d| d as i64).unwrap_or(-2)
                    } else {
                        s
                    }
                })
                .collect();
            if nd.iter().any(|&s| s < -1) || nd.iter().filter(|&&s| s == -1).count() > 1 {
                return None;
            }
            if let Some(p) = nd.iter().position(|&s| s == -1) {
                let known: i64 = nd.iter().filter(|&&s| s != -1).product();
                if known == 0 || x.len() as i64 % known != 0 {
                    return None;
                }
                nd[p] = x.len() as i64 / known;
            }
            x.with_dims(nd.iter().map(|&s| s as usize).collect())?
        }
        "Flatten" => {
            let x = get(0)?.clone();
            let r = x.dims().len();
            let a = attr_i(node, "axis").unwrap_or(1);
            let a = if a < 0 { a + r as i64 } else { a }.clamp(0, r as i64) as usize;
            let d0: usize = x.dims()[..a].iter().product();
            let d1: usize = x.dims()[a..].iter().product();
            x.with_dims(vec![d0, d1])?
        }
        "Unsqueeze" | "Squeeze" => {
            let x = get(0)?.clone();
            let axes = match get(1) {
                Some(c) => c.as_i64(),
                None => attr_ints(node, "axes").unwrap_or_default(),
            };
            let mut d = x.dims().to_vec();
            if op == "Unsqueeze" {
                let r = d.len() + axes.len();
                let mut ax: Vec<usize> = axes
                    .iter()
                    .map(|&a| norm_axis(a, r))
                    .collect::<Option<_>>()?;
                ax.sort_unstable();
                for a in ax {
                    d.insert(a.min(d.len()), 1);
                }
            } else if axes.is_empty() {
                d.retain(|&s| s != 1);
            } else {
                let r = d.len();
                let mut ax: Vec<usize> = axes
                    .iter()
                    .map(|&a| norm_axis(a, r))
                    .collect::<Option<_>>()?;
                ax.sort_unstable();
                for a in ax.into_iter().rev() {
                    if d[a] != 1 {
                        return None;
                    }
                    d.remove(a);
                }
            }
            x.with_dims(d)?
        }
        "Transpose" => {
            let x = get(0)?;
            let d = x.dims();
            let r = d.len();
            let perm: Vec<usize> = match attr_ints(node, "perm") {
                Some(p) => p.iter().map(|&a| norm_axis(a, r)).collect::<Option<_>>()?,
                None => (0..r).rev().collect(),
            };
            if perm.len() != r {
                return None;
            }
            let nd: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
            let st = strides(d);
            let total = x.len();
            let mut idx = Vec::with_capacity(total);
            let mut pos = vec![0usize; r];
            for _ in 0..total {
                idx.push((0..r).map(|i| pos[i] * st[perm[i]]).sum());
                for i in (0..r).rev() {
                    pos[i] += 1;
                    if pos[i] < nd[i] {
                        break;
                    }
                    pos[i] = 0;
                }
            }
            x.gather_flat(&idx, nd)
        }
        "Concat" => {
            let parts: Vec<&Const> = (0..node.input.len()).map(get).collect::<Option<_>>()?;
            let first = parts.first()?;
            let r = first.dims().len();
            let axis = norm_axis(attr_i(node, "axis")?, r)?;
            let is_f = matches!(first, Const::F32(..));
            if parts
                .iter()
                .any(|p| p.dims().len() != r || matches!(p, Const::F32(..)) != is_f)
            {
                return None;
            }
            let outer: usize = first.dims()[..axis].iter().product();
            let mut nd = first.dims().to_vec();
            nd[axis] = parts.iter().map(|p| p.dims()[axis]).sum();
            let mut f = Vec::new();
            let mut i = Vec::new();
            for o in 0..outer {
                for p in &parts {
                    let inner: usize = p.dims()[axis..].iter().product();
                    match p {
                        Const::F32(_, v) => f.extend_from_slice(&v[o * inner..(o + 1) * inner]),
                        Const::I64(_, v) => i.extend_from_slice(&v[o * inner..(o + 1) * inner]),
                    }
                }
            }
            if is_f {
                Const::F32(nd, f)
            } else {
                Const::I64(nd, i)
            }
        }
        "Gather" => {
            let x = get(0)?;
            let ind = get(1)?;
            let d = x.dims();
            let axis = norm_axis(attr_i(node, "axis").unwrap_or(0), d.len())?;
            let outer: usize = d[..axis].iter().product();
            let inner: usize = d[axis + 1..].iter().product();
            let mut nd = d[..axis].to_vec();
            nd.extend_from_slice(ind.dims());
            nd.extend_from_slice(&d[axis + 1..]);
            let mut idx = Vec::new();
            for o in 0..outer {
                for &k in &ind.as_i64() {
                    let k = if k < 0 { k + d[axis] as i64 } else { k };
                    if !(0..d[axis] as i64).contains(&k) {
                        return None;
                    }
                    for j in 0..inner {
                        idx.push((o * d[axis] + k as usize) * inner + j);
                    }
                }
            }
            x.gather_flat(&idx, nd)
        }
        "ConstantOfShape" => {
            let d: Vec<usize> = get(0)?
                .as_i64()
                .iter()
                .map(|&x| x.max(0) as usize)
                .collect();
            let n: usize = d.iter().product();
            if n > FOLD_LIMIT {
                return None;
            }
            let value = node
                .attribute
                .iter()
                .find(|a| a.name.as_deref() == Some("value"))
                .and_then(|a| a.t.as_ref())
                .and_then(Const::from_proto)
                .unwrap_or(Const::F32(vec![1], vec![0.0]));
            match value {
                Const::F32(_, v) => Const::F32(d, vec![*v.first()?; n]),
                Const::I64(_, v) => Const::I64(d, vec![*v.first()?; n]),
            }
        }
        _ => return None,
    };
    if out.len() > FOLD_LIMIT {
        return None;
    }
    Some(vec![out])
}

/// A working view of a graph: nodes (removed ones become `None`), initializers by name, the
/// producer and consumers of every tensor.
struct Graph {
    nodes: Vec<Option<NodeProto>>,
    inits: HashMap<String, TensorProto>,
    init_order: Vec<String>,
    pinned: HashSet<String>,
    graph_inputs: HashSet<String>,
    shapes: HashMap<String, Vec<usize>>,
    counter: usize,
}

fn subgraph_names(g: &GraphProto, out: &mut HashSet<String>) {
    for n in &g.node {
        out.extend(n.input.iter().cloned());
        for a in &n.attribute {
            if let Some(sg) = &a.g {
                subgraph_names(sg, out);
            }
            for sg in &a.graphs {
                subgraph_names(sg, out);
            }
        }
    }
}

impl Graph {
    fn new(g: &GraphProto) -> Graph {
        let mut pinned: HashSet<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
        for n in &g.node {
            for a in &n.attribute {
                if let Some(sg) = &a.g {
                    subgraph_names(sg, &mut pinned);
                }
                for sg in &a.graphs {
                    subgraph_names(sg, &mut pinned);
                }
            }
        }
        let graph_inputs = g.input.iter().filter_map(|i| i.name.clone()).collect();
        // Static input shapes (dynamic dims unknown) feed `Shape` folding only where the dims
        // it reads are all fixed.
        let mut inputs = HashMap::new();
        let mut fully_static = true;
        for i in &g.input {
            let Some(name) = &i.name else { continue };
            if g.initializer.iter().any(|t| t.name.as_ref() == Some(name)) {
                continue;
            }
            match crate::info::static_dims(i) {
                Some(d) => {
                    inputs.insert(name.clone(), d);
                }
                None => fully_static = false,
            }
        }
        let shapes = if fully_static {
            crate::shapes::infer(g, &inputs).shapes
        } else {
            HashMap::new()
        };
        let init_order = g
            .initializer
            .iter()
            .filter_map(|t| t.name.clone())
            .collect();
        Graph {
            nodes: g.node.iter().cloned().map(Some).collect(),
            inits: g
                .initializer
                .iter()
                .filter_map(|t| Some((t.name.clone()?, t.clone())))
                .collect(),
            init_order,
            pinned,
            graph_inputs,
            shapes,
            counter: 0,
        }
    }

    fn store(self, g: &mut GraphProto) {
        g.node = self.nodes.into_iter().flatten().collect();
        let mut inits = self.inits;
        let mut out = Vec::new();
        for name in &self.init_order {
            if let Some(t) = inits.remove(name) {
                out.push(t);
            }
        }
        let mut rest: Vec<_> = inits.into_values().collect();
        rest.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(rest);
        g.initializer = out;
    }

    fn fresh(&mut self, base: &str) -> String {
        loop {
            self.counter += 1;
            let n = format!("{base}_opt{}", self.counter);
            if !self.inits.contains_key(&n) && !self.pinned.contains(&n) && !self.produced(&n) {
                return n;
            }
        }
    }

    fn produced(&self, name: &str) -> bool {
        self.nodes
            .iter()
            .flatten()
            .any(|n| n.output.iter().any(|o| o == name))
    }

    fn add_init(&mut self, name: String, t: TensorProto) {
        if !self.inits.contains_key(&name) {
            self.init_order.push(name.clone());
        }
        self.inits.insert(name, t);
    }

    fn consumers(&self) -> HashMap<String, Vec<usize>> {
        let mut c: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                for x in &n.input {
                    if !x.is_empty() {
                        c.entry(x.clone()).or_default().push(i);
                    }
                }
            }
        }
        c
    }

    fn producers(&self) -> HashMap<String, usize> {
        let mut p = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                for o in &n.output {
                    p.insert(o.clone(), i);
                }
            }
        }
        p
    }

    fn konst(&self, name: &str) -> Option<Const> {
        if self.graph_inputs.contains(name) && !self.inits.contains_key(name) {
            return None;
        }
        self.inits.get(name).and_then(Const::from_proto)
    }

    /// Replaces every use of `old` by `new` in node inputs.
    fn rename_uses(&mut self, old: &str, new: &str) {
        for n in self.nodes.iter_mut().flatten() {
            for x in n.input.iter_mut() {
                if x == old {
                    *x = new.to_string();
                }
            }
        }
    }

    /// Removes node `i` whose single meaningful output `out` equals its input `inp`.
    fn bypass(&mut self, i: usize, inp: &str, out: &str) -> bool {
        if !self.pinned.contains(out) {
            self.nodes[i] = None;
            self.rename_uses(out, inp);
            return true;
        }
        // The output is a graph output: let the producer of `inp` write it directly, if `inp`
        // is an intermediate tensor nobody else needs.
        let cons = self.consumers();
        let only_here = cons.get(inp).map(|v| v.len() == 1).unwrap_or(false);
        if self.pinned.contains(inp) || !only_here || self.graph_inputs.contains(inp) {
            return false;
        }
        let Some(&p) = self.producers().get(inp) else {
            return false;
        };
        self.nodes[i] = None;
        if let Some(pn) = self.nodes[p].as_mut() {
            for o in pn.output.iter_mut() {
                if o == inp {
                    *o = out.to_string();
                }
            }
        }
        true
    }

    fn constants_to_initializers(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.nodes.len() {
            let Some(node) = &self.nodes[i] else { continue };
            if node.op_type.as_deref() != Some("Constant") || node.output.len() != 1 {
                continue;
            }
            let out = node.output[0].clone();
            let a = node.attribute.first();
            let t = match a.map(|a| (a.name.as_deref().unwrap_or(""), a)) {
                Some(("value", a)) => a.t.clone(),
                Some(("value_float", a)) => a.f.map(|f| crate::builder::f32_tensor("", &[], &[f])),
                Some(("value_floats", a)) => {
                    Some(crate::builder::f32_tensor("", &[a.floats.len()], &a.floats))
                }
                Some(("value_int", a)) => a.i.map(|v| crate::builder::i64_tensor("", &[], &[v])),
                Some(("value_ints", a)) => {
                    Some(crate::builder::i64_tensor("", &[a.ints.len()], &a.ints))
                }
                _ => None,
            };
            let Some(mut t) = t else { continue };
            if self.pinned.contains(&out) {
                continue;
            }
            t.name = Some(out.clone());
            self.nodes[i] = None;
            self.add_init(out, t);
            n += 1;
        }
        n
    }

    fn remove_identities(&mut self) -> usize {
        let mut n = 0;
        let cons = self.consumers();
        for i in 0..self.nodes.len() {
            let Some(node) = &self.nodes[i] else { continue };
            let op = node.op_type.as_deref().unwrap_or("");
            let removable = match op {
                "Identity" => true,
                // Inference-mode Dropout: no training_mode input set, mask unused.
                "Dropout" => {
                    node.input.len() < 3
                        && node
                            .output
                            .get(1)
                            .map(|m| {
                                m.is_empty() || (!cons.contains_key(m) && !self.pinned.contains(m))
                            })
                            .unwrap_or(true)
                }
                _ => false,
            };
            if !removable || node.input.is_empty() || node.output.is_empty() {
                continue;
            }
            let (inp, out) = (node.input[0].clone(), node.output[0].clone());
            if self.bypass(i, &inp, &out) {
                n += 1;
            }
        }
        n
    }

    fn fold_constants(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.nodes.len() {
            let Some(node) = &self.nodes[i] else { continue };
            let op = node.op_type.as_deref().unwrap_or("");
            if node.output.len() != 1 || self.pinned.contains(&node.output[0]) {
                continue;
            }
            if !node.domain.as_deref().unwrap_or("").is_empty() {
                continue;
            }
            let ins: Vec<Option<Const>> = node
                .input
                .iter()
                .map(|x| if x.is_empty() { None } else { self.konst(x) })
                .collect();
            let all_const = node
                .input
                .iter()
                .zip(&ins)
                .all(|(name, c)| name.is_empty() || c.is_some());
            if !(all_const || op == "Shape") {
                continue;
            }
            if let Some(mut outs) = evaluate(node, &ins, &self.shapes) {
                let out = node.output[0].clone();
                let c = outs.remove(0);
                self.nodes[i] = None;
                self.add_init(out.clone(), c.to_proto(&out));
                n += 1;
            }
        }
        n
    }

    /// Conv -> BatchNormalization and Gemm -> BatchNormalization folding.
    fn fold_batch_norm(&mut self) -> usize {
        let mut n = 0;
        let cons = self.consumers();
        let prods = self.producers();
        for i in 0..self.nodes.len() {
            let Some(bn) = &self.nodes[i] else { continue };
            if bn.op_type.as_deref() != Some("BatchNormalization") || bn.input.len() < 5 {
                continue;
            }
            if bn.output.iter().skip(1).any(|o| !o.is_empty()) {
                continue; // training-mode outputs requested
            }
            let x = bn.input[0].clone();
            let Some(&p) = prods.get(&x) else { continue };
            if self.pinned.contains(&x) || cons.get(&x).map(|v| v.len()) != Some(1) {
                continue;
            }
            let params: Option<Vec<Vec<f32>>> = bn.input[1..5]
                .iter()
                .map(|s| self.konst(s).map(|c| c.as_f32()))
                .collect();
            let Some(params) = params else { continue };
            let eps = attr_f(bn, "epsilon").unwrap_or(1e-5);
            let c = params[0].len();
            if params.iter().any(|v| v.len() != c) {
                continue;
            }
            let factor: Vec<f32> = (0..c)
                .map(|k| params[0][k] / (params[3][k] + eps).sqrt())
                .collect();
            let shift: Vec<f32> = (0..c)
                .map(|k| params[1][k] - params[2][k] * factor[k])
                .collect();
            let bn_out = bn.output[0].clone();
            n += self.absorb(p, i, &factor, &shift, bn_out) as usize;
        }
        n
    }

    /// Folds node `i` (a per-channel `y = f * x + s` on node `p`'s output) into `p`, which then
    /// writes `out` itself; false (nothing changed) when `p` cannot take it.
    fn absorb(&mut self, p: usize, i: usize, factor: &[f32], shift: &[f32], out: String) -> bool {
        if !self.scale_shift_into(p, factor, shift) {
            return false;
        }
        if let Some(pn) = self.nodes[p].as_mut() {
            pn.output[0] = out;
        }
        self.nodes[i] = None;
        true
    }

    /// `y = f * producer(x) + s` per output channel: rewrites node `p`'s weights and bias.
    /// Returns false (changing nothing) when the producer is not a Conv / Gemm whose weights are
    /// constant with a matching channel count.
    fn scale_shift_into(&mut self, p: usize, factor: &[f32], shift: &[f32]) -> bool {
        let Some(node) = self.nodes[p].clone() else {
            return false;
        };
        let op = node.op_type.as_deref().unwrap_or("");
        let c = factor.len();
        let Some(Const::F32(wd, w)) = node.input.get(1).and_then(|s| self.konst(s)) else {
            return false;
        };
        let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => match self.konst(b) {
                Some(bc) if bc.len() == c => Some(bc.as_f32()),
                _ => return false,
            },
            None => None,
        };
        let mut w = w;
        let (mut new_bias, mut attrs) = (vec![0f32; c], node.attribute.clone());
        match op {
            "Conv" => {
                if wd.first() != Some(&c) {
                    return false;
                }
                let per = w.len() / c;
                for (k, chunk) in w.chunks_mut(per).enumerate() {
                    chunk.iter_mut().for_each(|v| *v *= factor[k]);
                }
                for k in 0..c {
                    new_bias[k] = bias.as_ref().map(|b| b[k]).unwrap_or(0.0) * factor[k] + shift[k];
                }
            }
            "Gemm" => {
                if wd.len() != 2 || attr_i(&node, "transA").unwrap_or(0) != 0 {
                    return false;
                }
                let trans_b = attr_i(&node, "transB").unwrap_or(0) != 0;
                let alpha = attr_f(&node, "alpha").unwrap_or(1.0);
                let beta = attr_f(&node, "beta").unwrap_or(1.0);
                let (rows, cols) = (wd[0], wd[1]);
                if (trans_b && rows != c) || (!trans_b && cols != c) {
                    return false;
                }
                for r in 0..rows {
                    for q in 0..cols {
                        let k = if trans_b { r } else { q };
                        w[r * cols + q] *= factor[k] * alpha;
                    }
                }
                for k in 0..c {
                    new_bias[k] =
                        beta * bias.as_ref().map(|b| b[k]).unwrap_or(0.0) * factor[k] + shift[k];
                }
                attrs.retain(|a| !matches!(a.name.as_deref(), Some("alpha") | Some("beta")));
            }
            _ => return false,
        }
        let wname = self.fresh(&node.input[1]);
        let bname = self.fresh(&format!("{}.bias", node.name.clone().unwrap_or_default()));
        self.add_init(wname.clone(), Const::F32(wd, w).to_proto(&wname));
        let bd = vec![c];
        self.add_init(bname.clone(), Const::F32(bd, new_bias).to_proto(&bname));
        let Some(pn) = self.nodes[p].as_mut() else {
            return false;
        };
        pn.input[1] = wname;
        if pn.input.len() < 3 {
            pn.input.push(bname);
        } else {
            pn.input[2] = bname;
        }
        pn.attribute = attrs;
        true
    }

    /// A per-channel constant Mul or Add right after a Conv (as exporters write decomposed
    /// batch norms or separate biases) folded into the Conv.
    fn fold_affine(&mut self) -> usize {
        let mut n = 0;
        let cons = self.consumers();
        let prods = self.producers();
        for i in 0..self.nodes.len() {
            let Some(node) = &self.nodes[i] else { continue };
            let op = node.op_type.clone().unwrap_or_default();
            if (op != "Mul" && op != "Add") || node.input.len() != 2 {
                continue;
            }
            let (x, k) = match (self.konst(&node.input[0]), self.konst(&node.input[1])) {
                (None, Some(k)) => (node.input[0].clone(), k),
                (Some(k), None) => (node.input[1].clone(), k),
                _ => continue,
            };
            let Some(&p) = prods.get(&x) else { continue };
            let Some(pn) = &self.nodes[p] else { continue };
            if pn.op_type.as_deref() != Some("Conv") || pn.output.len() != 1 {
                continue;
            }
            if self.pinned.contains(&x) || cons.get(&x).map(|v| v.len()) != Some(1) {
                continue;
            }
            let Some(Const::F32(wd, _)) = pn.input.get(1).and_then(|s| self.konst(s)) else {
                continue;
            };
            let c = wd[0];
            // Accept shapes (C,1,1), (1,C,1,1), scalars: a per-output-channel constant.
            let kd = k.dims().to_vec();
            let per_channel = {
                let nontrivial: Vec<(usize, usize)> = kd
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|&(_, d)| d != 1)
                    .collect();
                let rank = wd.len();
                match nontrivial.as_slice() {
                    [] => kd.len() <= rank,
                    [(ax, d)] => *d == c && kd.len() <= rank && kd.len() - ax == rank - 1,
                    _ => false,
                }
            };
            if !per_channel {
                continue;
            }
            let kv = k.as_f32();
            let val = |ch: usize| if kv.len() == 1 { kv[0] } else { kv[ch] };
            let (factor, shift): (Vec<f32>, Vec<f32>) = if op == "Mul" {
                ((0..c).map(val).collect(), vec![0.0; c])
            } else {
                (vec![1.0; c], (0..c).map(val).collect())
            };
            let out = node.output[0].clone();
            n += self.absorb(p, i, &factor, &shift, out) as usize;
        }
        n
    }

    fn compose_transposes(&mut self) -> usize {
        let mut n = 0;
        let cons = self.consumers();
        let prods = self.producers();
        for i in 0..self.nodes.len() {
            let Some(t2) = &self.nodes[i] else { continue };
            if t2.op_type.as_deref() != Some("Transpose") || t2.input.is_empty() {
                continue;
            }
            let mid = t2.input[0].clone();
            let Some(&p) = prods.get(&mid) else { continue };
            let Some(t1) = &self.nodes[p] else { continue };
            if t1.op_type.as_deref() != Some("Transpose") {
                continue;
            }
            // A first Transpose that others read too stays for them; the second then reads its
            // input directly.
            let shared = self.pinned.contains(&mid) || cons.get(&mid).map(|v| v.len()) != Some(1);
            let (Some(p1), Some(p2)) = (attr_ints(t1, "perm"), attr_ints(t2, "perm")) else {
                continue;
            };
            if p1.len() != p2.len() || p2.iter().any(|&a| a < 0 || a as usize >= p1.len()) {
                continue;
            }
            let q: Vec<i64> = p2.iter().map(|&a| p1[a as usize]).collect();
            let src = t1.input[0].clone();
            let out = t2.output[0].clone();
            if !shared {
                self.nodes[p] = None;
            }
            if q.iter().enumerate().all(|(k, &a)| a == k as i64) {
                if self.bypass(i, &src, &out) {
                    n += 1;
                } else {
                    // Keep an explicit identity transpose for the pinned output.
                    if let Some(t2) = self.nodes[i].as_mut() {
                        t2.input[0] = src;
                        set_ints(t2, "perm", q);
                    }
                    n += 1;
                }
            } else {
                if let Some(t2) = self.nodes[i].as_mut() {
                    t2.input[0] = src;
                    set_ints(t2, "perm", q);
                }
                n += 1;
            }
        }
        n
    }

    /// Moves a `Transpose` below the op that reads it when the op does not care about layout:
    /// a unary element-wise op (other inputs constant), a binary element-wise op or a `Concat`
    /// whose data inputs are all `Transpose`s with one permutation (the `Concat` axis is mapped
    /// through it). `op(T(x)) = T(op(x))` exactly, and the moved `Transpose` can then meet the
    /// next one and cancel ([`Graph::compose_transposes`]).
    fn push_transposes(&mut self) -> usize {
        const UNARY: &[&str] = &[
            "Relu",
            "Sigmoid",
            "Tanh",
            "LeakyRelu",
            "Elu",
            "Selu",
            "Abs",
            "Neg",
            "Exp",
            "Log",
            "Sqrt",
            "Softplus",
            "Erf",
            "HardSigmoid",
            "HardSwish",
            "Clip",
            "Cast",
            "Not",
        ];
        const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"];
        let mut n = 0;
        // Recomputed only after a rewrite (rare), not per node: the pass stays linear on
        // models with nothing to push.
        let mut cons = self.consumers();
        let mut prods = self.producers();
        for j in 0..self.nodes.len() {
            let Some(u) = &self.nodes[j] else { continue };
            let op = u.op_type.as_deref().unwrap_or("");
            if !u.domain.as_deref().unwrap_or("").is_empty() || u.output.len() != 1 {
                continue;
            }
            // Data inputs that must all be transposed alike; the rest must be initializers.
            let data: Vec<usize> = if UNARY.contains(&op) {
                vec![0]
            } else if BINARY.contains(&op) && u.input.len() == 2 || op == "Concat" {
                (0..u.input.len()).collect()
            } else {
                continue;
            };
            if u.input.is_empty()
                || u.input.iter().enumerate().any(|(k, x)| {
                    !data.contains(&k) && !x.is_empty() && !self.inits.contains_key(x)
                })
            {
                continue;
            }
            let mut perm: Option<Vec<i64>> = None;
            let mut ts = Vec::new();
            let ok = data.iter().all(|&k| {
                let x = &u.input[k];
                let Some(&p) = prods.get(x) else { return false };
                let Some(t) = &self.nodes[p] else {
                    return false;
                };
                let q = attr_ints(t, "perm");
                let single = cons.get(x).map(|v| v.len()) == Some(1);
                let fine = t.op_type.as_deref() == Some("Transpose")
                    && !self.pinned.contains(x)
                    && single
                    && q.is_some()
                    && perm.as_ref().is_none_or(|pp| Some(pp) == q.as_ref());
                if fine {
                    perm = q;
                    ts.push(p);
                }
                fine
            });
            let Some(perm) = perm.filter(|_| ok) else {
                continue;
            };
            let rank = perm.len() as i64;
            let mut new_u = u.clone();
            if op == "Concat" {
                let a = attr_i(u, "axis").unwrap_or(0);
                let a = if a < 0 { a + rank } else { a };
                if !(0..rank).contains(&a) {
                    continue;
                }
                set_int(&mut new_u, "axis", perm[a as usize]);
            }
            let sources: Vec<String> = ts
                .iter()
                .map(|&p| self.nodes[p].as_ref().expect("checked").input[0].clone())
                .collect();
            for (&k, src) in data.iter().zip(&sources) {
                new_u.input[k] = src.clone();
            }
            let out = u.output[0].clone();
            let mid = self.fresh(&out);
            new_u.output[0] = mid.clone();
            let mut t = self.nodes[ts[0]].clone().expect("checked");
            t.input = vec![mid];
            t.output = vec![out];
            // The op takes the place of its last transposed input's Transpose (every source is
            // ready there); the Transpose takes the op's place; the other Transposes go.
            let at = *ts.iter().max().expect("one at least");
            for &p in &ts {
                self.nodes[p] = None;
            }
            self.nodes[at] = Some(new_u);
            self.nodes[j] = Some(t);
            n += 1;
            cons = self.consumers();
            prods = self.producers();
        }
        n
    }

    fn merge_reshapes(&mut self) -> usize {
        let mut n = 0;
        let cons = self.consumers();
        let prods = self.producers();
        for i in 0..self.nodes.len() {
            let Some(r2) = &self.nodes[i] else { continue };
            if r2.op_type.as_deref() != Some("Reshape") || r2.input.len() != 2 {
                continue;
            }
            // The second reshape must not copy dims from its input (0 entries).
            let Some(spec) = self.konst(&r2.input[1]) else {
                continue;
            };
            if spec.as_i64().contains(&0) {
                continue;
            }
            let mid = r2.input[0].clone();
            let Some(&p) = prods.get(&mid) else { continue };
            let Some(r1) = &self.nodes[p] else { continue };
            let op1 = r1.op_type.as_deref().unwrap_or("");
            if !matches!(op1, "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze") {
                continue;
            }
            if self.pinned.contains(&mid) || cons.get(&mid).map(|v| v.len()) != Some(1) {
                continue;
            }
            let src = r1.input[0].clone();
            self.nodes[p] = None;
            if let Some(r2) = self.nodes[i].as_mut() {
                r2.input[0] = src;
            }
            n += 1;
        }
        n
    }

    fn dead_code(&mut self) -> usize {
        let mut live: HashSet<String> = self.pinned.clone();
        let mut removed = 0;
        // Nodes are topologically ordered in valid ONNX; walk backwards.
        let mut keep = vec![false; self.nodes.len()];
        for i in (0..self.nodes.len()).rev() {
            let Some(n) = &self.nodes[i] else { continue };
            if n.output.iter().any(|o| live.contains(o)) {
                keep[i] = true;
                live.extend(n.input.iter().cloned());
            }
        }
        for (i, k) in keep.iter().enumerate() {
            if !k && self.nodes[i].is_some() {
                self.nodes[i] = None;
                removed += 1;
            }
        }
        let before = self.inits.len();
        self.inits.retain(|name, _| live.contains(name));
        removed + (before - self.inits.len())
    }
}

fn set_int(node: &mut NodeProto, name: &str, v: i64) {
    match node
        .attribute
        .iter_mut()
        .find(|a| a.name.as_deref() == Some(name))
    {
        Some(a) => a.i = Some(v),
        None => node.attribute.push(crate::builder::attribute(
            name,
            &crate::builder::Attr::Int(v),
        )),
    }
}

fn set_ints(node: &mut NodeProto, name: &str, v: Vec<i64>) {
    if let Some(a) = node
        .attribute
        .iter_mut()
        .find(|a| a.name.as_deref() == Some(name))
    {
        a.ints = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{f32_tensor, f32_value_info, i64_tensor, Attr, DimSpec, GraphBuilder};

    fn model(build: impl FnOnce(&mut GraphBuilder) -> String) -> ModelProto {
        let mut b = GraphBuilder::new(1);
        let out = build(&mut b);
        let x = f32_value_info(
            "input",
            &[
                DimSpec::Fixed(1),
                DimSpec::Fixed(2),
                DimSpec::Fixed(4),
                DimSpec::Fixed(4),
            ],
        );
        let y = f32_value_info(&out, &[]);
        b.finish("t", vec![x], vec![y], &[])
    }

    #[test]
    fn identity_before_output_is_absorbed_by_its_producer() {
        let mut m = model(|b| {
            let r = b.relu("r", "input");
            b.node("Identity", "out", &[&r], &[])
        });
        let rep = optimize(&mut m).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(rep.nodes_before, 2);
        assert_eq!(g.node.len(), 1);
        assert_eq!(g.node[0].output[0], "out");
    }

    #[test]
    fn transposes_that_cancel_disappear_and_others_compose() {
        let mut m = model(|b| {
            let t1 = b.node(
                "Transpose",
                "t1",
                &["input"],
                &[("perm", Attr::Ints(vec![0, 2, 3, 1]))],
            );
            let t2 = b.node(
                "Transpose",
                "t2",
                &[&t1],
                &[("perm", Attr::Ints(vec![0, 3, 1, 2]))],
            );
            b.relu("out", &t2)
        });
        optimize(&mut m).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(g.node.len(), 1);
        assert_eq!(g.node[0].input[0], "input");

        let mut m = model(|b| {
            let t1 = b.node(
                "Transpose",
                "t1",
                &["input"],
                &[("perm", Attr::Ints(vec![0, 2, 3, 1]))],
            );
            b.node(
                "Transpose",
                "out",
                &[&t1],
                &[("perm", Attr::Ints(vec![0, 2, 3, 1]))],
            )
        });
        optimize(&mut m).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(g.node.len(), 1);
        // (0,2,3,1) twice = (0,3,1,2)
        assert_eq!(attr_ints(&g.node[0], "perm").unwrap(), vec![0, 3, 1, 2]);
    }

    #[test]
    fn shape_arithmetic_folds_to_one_reshape_constant() {
        // Shape -> Gather(0) -> Unsqueeze -> Concat(-1) -> Reshape: the PyTorch flatten idiom.
        let mut m = model(|b| {
            let s = b.node("Shape", "s", &["input"], &[]);
            let i0 = b.initializer(i64_tensor("i0", &[], &[0]));
            let g = b.node("Gather", "g", &[&s, &i0], &[("axis", Attr::Int(0))]);
            let ax = b.initializer(i64_tensor("ax", &[1], &[0]));
            let u = b.node("Unsqueeze", "u", &[&g, &ax], &[]);
            let m1 = b.initializer(i64_tensor("m1", &[1], &[-1]));
            let c = b.node("Concat", "c", &[&u, &m1], &[("axis", Attr::Int(0))]);
            b.node("Reshape", "out", &["input", &c], &[])
        });
        let rep = optimize(&mut m).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(rep.nodes_after, 1, "{:?}", rep.ops_after);
        let spec = g
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(&g.node[0].input[1]))
            .unwrap();
        assert_eq!(
            Const::from_proto(spec).unwrap(),
            Const::I64(vec![2], vec![1, -1])
        );
    }

    #[test]
    fn transpose_folding_matches_a_hand_computed_result() {
        let x = Const::F32(vec![2, 3], vec![0., 1., 2., 3., 4., 5.]);
        let mut node = NodeProto {
            op_type: Some("Transpose".into()),
            ..Default::default()
        };
        node.input = vec!["x".into()];
        node.output = vec!["y".into()];
        let out = evaluate(&node, &[Some(x)], &HashMap::new()).unwrap();
        assert_eq!(out[0], Const::F32(vec![3, 2], vec![0., 3., 1., 4., 2., 5.]));
    }

    #[test]
    fn broadcast_arithmetic_matches_numpy() {
        let a = Const::F32(vec![2, 1], vec![1., 2.]);
        let b = Const::F32(vec![3], vec![10., 20., 30.]);
        let out = binary("Add", &a, &b).unwrap();
        assert_eq!(
            out,
            Const::F32(vec![2, 3], vec![11., 21., 31., 12., 22., 32.])
        );
        assert!(binary(
            "Add",
            &Const::F32(vec![2], vec![0.; 2]),
            &Const::F32(vec![3], vec![0.; 3])
        )
        .is_none());
    }

    #[test]
    fn per_channel_mul_and_add_fold_into_the_conv() {
        let mut m = model(|b| {
            let c = b.conv("c", "input", 2, 3, 3, 1, 1, false);
            let k = b.initializer(f32_tensor("k", &[3, 1, 1], &[2.0, 3.0, 4.0]));
            let mul = b.node("Mul", "mul", &[&c, &k], &[]);
            let a = b.initializer(f32_tensor("a", &[1, 3, 1, 1], &[0.5, 0.25, -1.0]));
            b.node("Add", "out", &[&mul, &a], &[])
        });
        optimize(&mut m).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(g.node.len(), 1);
        assert_eq!(g.node[0].op_type.as_deref(), Some("Conv"));
        assert_eq!(g.node[0].output[0], "out");
        let bias = g
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(&g.node[0].input[2]))
            .unwrap();
        assert_eq!(tensor_to_f32(bias).unwrap(), vec![0.5, 0.25, -1.0]);
    }
}
