//! Folding shape arithmetic whose result is the same at every call, although the model's inputs
//! have dynamic dimensions.
//!
//! Exporters compute attention's scale and head reshapes from the run-time shape of the
//! query (`Shape -> Slice -> Cast -> Sqrt -> Div`), even where that dimension is fixed by a
//! reshape to a constant head size. To an engine, and to [`crate::hoist::split`], such a value
//! depends on a varying input: GPT-2's cross attention then multiplies the cached keys of every
//! encoder position by the scale at every generated token (for 785 positions and 12 layers,
//! 58 MB read and written per token). [`fold_static_dims`] tracks partially known dimensions
//! (declared input dims, constant reshape targets, transposes, elementwise and matrix
//! products) and the partially known values of small shape vectors, replaces every shape
//! computation whose value is fully known with a `Constant`, and drops the nodes left unused.
//! The values are exact: a dimension is only known where the graph itself fixes it.
use crate::model::{attr_i, attr_ints};
use crate::proto::{data_type, type_proto, AttributeProto, ModelProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// Partially known dims of a tensor (its rank known).
type Dims = Vec<Option<i64>>;

/// Partially known value of a small integer tensor (scalar or 1-D).
#[derive(Clone, Debug, PartialEq)]
struct PVal {
    scalar: bool,
    dtype: i32,
    v: Vec<Option<i64>>,
}

impl PVal {
    fn known(&self) -> Option<Vec<i64>> {
        self.v.iter().copied().collect()
    }
}

/// What [`fold_static_dims`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoldReport {
    /// Shape computations replaced by constants.
    pub folded: usize,
    /// Nodes removed because nothing read their outputs any more.
    pub removed: usize,
}

fn const_pval(t: &crate::proto::TensorProto) -> Option<PVal> {
    let dt = t.data_type?;
    if dt != data_type::INT64 && dt != data_type::INT32 {
        return None;
    }
    if t.dims.len() > 1 {
        return None;
    }
    match crate::optimize::Const::from_proto(t)? {
        crate::optimize::Const::I64(_, v) if v.len() <= 64 => Some(PVal {
            scalar: t.dims.is_empty(),
            dtype: dt,
            v: v.into_iter().map(Some).collect(),
        }),
        _ => None,
    }
}

fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

/// Broadcast of two partially known shapes (numpy rules): a known dim other than 1 decides.
fn broadcast(a: &[Option<i64>], b: &[Option<i64>]) -> Dims {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = (i + a.len())
                .checked_sub(r)
                .map(|j| a[j])
                .unwrap_or(Some(1));
            let y = (i + b.len())
                .checked_sub(r)
                .map(|j| b[j])
                .unwrap_or(Some(1));
            match (x, y) {
                (Some(p), Some(q)) if p == q => Some(p),
                (Some(1), y) => y,
                (x, Some(1)) => x,
                (Some(p), _) | (_, Some(p)) => Some(p),
                _ => None,
            }
        })
        .collect()
}

/// Replaces shape computations whose values the graph fixes with constants, then removes the
/// nodes nothing reads any more. Graphs with subgraphs (If / Loop / Scan) are left alone.
pub fn fold_static_dims(model: &mut ModelProto) -> FoldReport {
    let mut report = FoldReport::default();
    let Some(g) = model.graph.as_mut() else {
        return report;
    };
    if g.node.iter().any(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    }) {
        return report;
    }
    let mut dims: HashMap<String, Dims> = HashMap::new();
    let mut vals: HashMap<String, PVal> = HashMap::new();
    let mut constant: HashSet<String> = HashSet::new();
    // Tensors known to be 1-D integer vectors (shape vectors) even where their length is not.
    let mut vec1d: HashSet<String> = HashSet::new();
    for t in &g.initializer {
        let Some(n) = t.name.clone() else { continue };
        dims.insert(n.clone(), t.dims.iter().map(|&d| Some(d)).collect());
        if let Some(p) = const_pval(t) {
            vals.insert(n.clone(), p);
        }
        constant.insert(n);
    }
    for i in &g.input {
        let Some(n) = i.name.clone() else { continue };
        if constant.contains(&n) {
            continue;
        }
        if let Some(type_proto::Value::TensorType(t)) =
            i.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            if let Some(s) = &t.shape {
                use crate::proto::tensor_shape_proto::dimension::Value;
                let d: Dims = s
                    .dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(v)) if v > 0 => Some(v),
                        _ => None,
                    })
                    .collect();
                dims.insert(n, d);
            }
        }
    }
    let mut replace: Vec<(usize, PVal)> = Vec::new();
    for (idx, n) in g.node.iter().enumerate() {
        let op = n.op_type.as_deref().unwrap_or("");
        let domain = n.domain.as_deref().unwrap_or("");
        if !(domain.is_empty() || domain == "ai.onnx") {
            continue;
        }
        let inp = |i: usize| n.input.get(i).filter(|s| !s.is_empty());
        let d_in = |i: usize| inp(i).and_then(|s| dims.get(s)).cloned();
        let v_in = |i: usize| inp(i).and_then(|s| vals.get(s)).cloned();
        let all_const = n
            .input
            .iter()
            .filter(|s| !s.is_empty())
            .all(|s| constant.contains(s));
        let mut out_dims: Option<Dims> = None;
        let mut out_val: Option<PVal> = None;
        match op {
            "Constant" => {
                if let Some(t) = n
                    .attribute
                    .iter()
                    .find(|a| a.name.as_deref() == Some("value"))
                    .and_then(|a| a.t.as_ref())
                {
                    out_dims = Some(t.dims.iter().map(|&d| Some(d)).collect());
                    out_val = const_pval(t);
                }
            }
            "Shape" => {
                if let Some(o) = n.output.first() {
                    vec1d.insert(o.clone());
                }
                if let Some(d) = d_in(0) {
                    let r = d.len() as i64;
                    let clamp = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
                    let s = clamp(attr_i(n, "start").unwrap_or(0));
                    let e = clamp(attr_i(n, "end").unwrap_or(r));
                    let v: Vec<Option<i64>> = if s < e { d[s..e].to_vec() } else { vec![] };
                    out_dims = Some(vec![Some(v.len() as i64)]);
                    out_val = Some(PVal {
                        scalar: false,
                        dtype: data_type::INT64,
                        v,
                    });
                }
            }
            "Gather" => {
                let axis = attr_i(n, "axis").unwrap_or(0);
                if let (Some(d), Some(i)) = (d_in(0), d_in(1)) {
                    if let Some(a) = norm_axis(axis, d.len()) {
                        let mut o = d[..a].to_vec();
                        o.extend(i);
                        o.extend_from_slice(&d[a + 1..]);
                        out_dims = Some(o);
                    }
                }
                let idx = v_in(1).and_then(|p| {
                    let k = p.known()?;
                    Some((p.scalar, k))
                });
                // An element of a shape vector whose length is unknown: a scalar (or a
                // vector of as many elements as indices) of unknown value.
                let data = v_in(0).or_else(|| {
                    (axis == 0 && inp(0).is_some_and(|s| vec1d.contains(s))).then(|| PVal {
                        scalar: false,
                        dtype: data_type::INT64,
                        v: vec![],
                    })
                });
                if let (Some(data), Some(idx)) = (data.filter(|_| axis == 0), idx) {
                    if !data.scalar && data.v.is_empty() {
                        out_val = Some(PVal {
                            scalar: idx.0,
                            dtype: data.dtype,
                            v: vec![None; idx.1.len()],
                        });
                    } else if !data.scalar {
                        let len = data.v.len() as i64;
                        let picked: Option<Vec<Option<i64>>> = idx
                            .1
                            .iter()
                            .map(|&i| {
                                let i = if i < 0 { i + len } else { i };
                                (0..len).contains(&i).then(|| data.v[i as usize])
                            })
                            .collect();
                        if let Some(v) = picked {
                            out_val = Some(PVal {
                                scalar: idx.0,
                                dtype: data.dtype,
                                v,
                            });
                        }
                    }
                }
            }
            "Slice" => {
                let one = |i: usize| -> Option<i64> {
                    let k = v_in(i)?.known()?;
                    (k.len() == 1).then(|| k[0])
                };
                if let (Some(data), Some(st), Some(en)) = (v_in(0), one(1), one(2)) {
                    let axis_ok = inp(3).is_none() || matches!(one(3), Some(0) | Some(-1));
                    let step = if inp(4).is_some() { one(4) } else { Some(1) };
                    if !data.scalar && axis_ok && step == Some(1) {
                        let len = data.v.len() as i64;
                        let c = |x: i64| (if x < 0 { x + len } else { x }).clamp(0, len) as usize;
                        let (s, e) = (c(st), c(en));
                        out_val = Some(PVal {
                            scalar: false,
                            dtype: data.dtype,
                            v: if s < e { data.v[s..e].to_vec() } else { vec![] },
                        });
                    }
                }
            }
            "Unsqueeze" => {
                let axes = v_in(1)
                    .and_then(|p| p.known())
                    .or_else(|| attr_ints(n, "axes"));
                let one_axis = matches!(axes.as_deref(), Some([0]) | Some([-1]));
                if let Some(p) = v_in(0).filter(|p| p.scalar && one_axis) {
                    out_val = Some(PVal { scalar: false, ..p });
                }
            }
            "Squeeze" => {
                if let Some(p) = v_in(0).filter(|p| !p.scalar && p.v.len() == 1) {
                    out_val = Some(PVal { scalar: true, ..p });
                }
            }
            "Concat" if matches!(attr_i(n, "axis"), Some(0) | Some(-1)) => {
                let parts: Option<Vec<PVal>> = (0..n.input.len()).map(v_in).collect();
                if let Some(parts) = parts.filter(|p| p.iter().all(|x| !x.scalar)) {
                    if let Some(first) = parts.first() {
                        let dtype = first.dtype;
                        out_val = Some(PVal {
                            scalar: false,
                            dtype,
                            v: parts.into_iter().flat_map(|p| p.v).collect(),
                        });
                    }
                }
            }
            "Cast" => {
                let to = attr_i(n, "to").unwrap_or(0) as i32;
                if to == data_type::INT64 || to == data_type::INT32 {
                    out_val = v_in(0).map(|p| PVal { dtype: to, ..p });
                }
                out_dims = d_in(0);
            }
            "Reshape" => {
                if let Some(target) = v_in(1).filter(|p| !p.scalar) {
                    let x = d_in(0);
                    let allowzero = attr_i(n, "allowzero").unwrap_or(0) == 1;
                    out_dims = Some(
                        target
                            .v
                            .iter()
                            .enumerate()
                            .map(|(i, t)| match *t {
                                Some(v) if v > 0 => Some(v),
                                Some(0) if !allowzero => {
                                    x.as_ref().and_then(|x| x.get(i).copied().flatten())
                                }
                                _ => None,
                            })
                            .collect(),
                    );
                }
            }
            "Transpose" => {
                if let Some(d) = d_in(0) {
                    let perm =
                        attr_ints(n, "perm").unwrap_or_else(|| (0..d.len() as i64).rev().collect());
                    let p: Option<Dims> = perm
                        .iter()
                        .map(|&a| norm_axis(a, d.len()).map(|a| d[a]))
                        .collect();
                    out_dims = p.filter(|p| p.len() == d.len());
                }
            }
            "Identity" | "Sqrt" | "Relu" | "Gelu" | "Erf" | "Tanh" | "Sigmoid" | "Neg"
            | "Softmax" | "LayerNormalization" | "Dropout" | "Exp" | "Reciprocal" => {
                out_dims = d_in(0);
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" => {
                if let (Some(a), Some(b)) = (d_in(0), d_in(1)) {
                    out_dims = Some(broadcast(&a, &b));
                }
            }
            "MatMul" => {
                if let (Some(a), Some(b)) = (d_in(0), d_in(1)) {
                    if a.len() >= 2 && b.len() >= 2 {
                        let mut d = broadcast(&a[..a.len() - 2], &b[..b.len() - 2]);
                        d.push(a[a.len() - 2]);
                        d.push(b[b.len() - 1]);
                        out_dims = Some(d);
                    }
                }
            }
            "Gemm" => {
                if let (Some(a), Some(b)) = (d_in(0), d_in(1)) {
                    if a.len() == 2 && b.len() == 2 {
                        let ta = attr_i(n, "transA").unwrap_or(0) == 1;
                        let tb = attr_i(n, "transB").unwrap_or(0) == 1;
                        out_dims = Some(vec![
                            if ta { a[1] } else { a[0] },
                            if tb { b[0] } else { b[1] },
                        ]);
                    }
                }
            }
            _ => {}
        }
        if let Some(o) = n.output.first() {
            if let Some(d) = out_dims {
                dims.insert(o.clone(), d);
            }
            if let Some(p) = out_val {
                if op != "Constant"
                    && !all_const
                    && p.known().is_some()
                    && matches!(
                        op,
                        "Shape" | "Gather" | "Slice" | "Unsqueeze" | "Squeeze" | "Concat" | "Cast"
                    )
                {
                    replace.push((idx, p.clone()));
                    constant.insert(o.clone());
                }
                if p.scalar {
                    dims.insert(o.clone(), vec![]);
                } else {
                    dims.insert(o.clone(), vec![Some(p.v.len() as i64)]);
                }
                vals.insert(o.clone(), p);
            }
            if all_const {
                constant.insert(o.clone());
            }
        }
    }
    for (idx, p) in replace {
        let n = &mut g.node[idx];
        let out = n.output[0].clone();
        let v = p.known().unwrap_or_default();
        let shape: Vec<usize> = if p.scalar { vec![] } else { vec![v.len()] };
        let mut t = crate::builder::i64_tensor(&out, &shape, &v);
        if p.dtype == data_type::INT32 {
            let mut raw = Vec::with_capacity(v.len() * 4);
            for x in &v {
                raw.extend_from_slice(&(*x as i32).to_le_bytes());
            }
            t.data_type = Some(data_type::INT32);
            t.raw_data = Some(raw);
        }
        *n = NodeProto {
            input: vec![],
            output: vec![out],
            name: n.name.clone().map(|s| format!("{s}_folded")),
            op_type: Some("Constant".into()),
            attribute: vec![AttributeProto {
                name: Some("value".into()),
                r#type: Some(crate::proto::attribute_type::TENSOR),
                t: Some(t),
                ..Default::default()
            }],
            ..Default::default()
        };
        report.folded += 1;
    }
    // Drop what nothing reads now (walking back from the graph's outputs).
    let mut needed: HashSet<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut live = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            live[i] = true;
            needed.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let before = g.node.len();
    let mut keep = live.into_iter();
    g.node.retain(|_| keep.next().unwrap_or(true));
    report.removed = before - g.node.len();
    if report.removed > 0 {
        g.initializer
            .retain(|t| t.name.as_ref().is_none_or(|n| needed.contains(n)));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{f32_value_info, i64_tensor, DimSpec};
    use crate::proto::GraphProto;

    fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(output.to_string()),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        }
    }

    /// The sdpa scale of an exported attention: x [batch, seq, 768] reshaped to
    /// [batch, seq, 12, 64], transposed, and its last dim read back through Shape -> Slice.
    /// The head size is fixed by the reshape, so the slice folds to [64] and the Shape node
    /// goes; the batch and sequence dims stay dynamic and what reads them stays.
    #[test]
    fn head_size_read_back_through_shape_folds() {
        let g = GraphProto {
            node: vec![
                node("Shape", &["x"], "s", vec![]),
                node(
                    "Gather",
                    &["s", "zero"],
                    "b",
                    vec![crate::opset::int_attr("axis", 0)],
                ),
                node("Unsqueeze", &["b", "axes0"], "bu", vec![]),
                node(
                    "Concat",
                    &["bu", "minus1", "heads"],
                    "target",
                    vec![crate::opset::int_attr("axis", 0)],
                ),
                node("Reshape", &["x", "target"], "r", vec![]),
                node(
                    "Transpose",
                    &["r"],
                    "t",
                    vec![crate::opset::ints_attr("perm", &[0, 2, 1, 3])],
                ),
                node("Shape", &["t"], "ts", vec![]),
                node("Slice", &["ts", "minus1", "big"], "last", vec![]),
                node(
                    "Cast",
                    &["last"],
                    "lastf",
                    vec![crate::opset::int_attr("to", data_type::FLOAT as i64)],
                ),
                node("Mul", &["t", "lastf"], "y", vec![]),
            ],
            initializer: vec![
                i64_tensor("zero", &[], &[0]),
                i64_tensor("axes0", &[1], &[0]),
                i64_tensor("minus1", &[1], &[-1]),
                i64_tensor("heads", &[2], &[12, 64]),
                i64_tensor("big", &[1], &[i64::MAX]),
            ],
            input: vec![f32_value_info(
                "x",
                &[
                    DimSpec::Named("batch".into()),
                    DimSpec::Named("seq".into()),
                    DimSpec::Fixed(768),
                ],
            )],
            output: vec![f32_value_info("y", &[])],
            ..Default::default()
        };
        let mut m = ModelProto {
            graph: Some(g),
            ..Default::default()
        };
        let r = fold_static_dims(&mut m);
        assert_eq!(
            r,
            FoldReport {
                folded: 1,
                removed: 1
            }
        );
        let g = m.graph.unwrap();
        let last = g.node.iter().find(|n| n.output[0] == "last").unwrap();
        assert_eq!(last.op_type.as_deref(), Some("Constant"));
        let t = last.attribute[0].t.as_ref().unwrap();
        assert_eq!(
            crate::optimize::Const::from_proto(t),
            Some(crate::optimize::Const::I64(vec![1], vec![64]))
        );
        // The batch dim is dynamic: its Shape / Gather stay.
        assert!(g
            .node
            .iter()
            .any(|n| n.output[0] == "b" && n.op_type.as_deref() == Some("Gather")));
        assert!(!g.node.iter().any(|n| n.output[0] == "ts"));
    }
}
