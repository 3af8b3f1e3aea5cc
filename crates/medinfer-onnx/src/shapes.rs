//! Static shape inference over the operators that imaging networks use.
//!
//! Given concrete input shapes, walks the graph in order and computes every tensor's shape,
//! plus the multiply-accumulate count of Conv / ConvTranspose / Gemm / MatMul nodes. Operators
//! it does not know stop inference for what depends on them (reported, never guessed).

use crate::model::{attr_i, attr_ints, tensor_dims, tensor_to_f32};
use crate::proto::{GraphProto, NodeProto};
use std::collections::HashMap;

/// Result of [`infer`].
#[derive(Clone, Debug, Default)]
pub struct ShapeReport {
    /// Known tensor shapes, by tensor name.
    pub shapes: HashMap<String, Vec<usize>>,
    /// Multiply-accumulates of the nodes whose shapes were known.
    pub macs: u64,
    /// Op types whose output shape could not be inferred (sorted, unique).
    pub unknown_ops: Vec<String>,
}

/// Product of dims, saturating instead of overflowing (hostile models declare absurd shapes).
fn prod(v: &[usize]) -> usize {
    v.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

fn conv_out(
    inp: usize,
    k: usize,
    s: usize,
    d: usize,
    pb: usize,
    pe: usize,
    ceil: bool,
) -> Option<usize> {
    let eff = d.saturating_mul(k.max(1) - 1).saturating_add(1);
    let span = inp.saturating_add(pb).saturating_add(pe).checked_sub(eff)?;
    let s = s.max(1);
    Some(if ceil { span.div_ceil(s) } else { span / s }.saturating_add(1))
}

/// An INTS attribute as exactly `n` values (missing entries take `default`).
fn ints_or(node: &NodeProto, name: &str, n: usize, default: usize) -> Vec<usize> {
    let v = attr_ints(node, name).unwrap_or_default();
    (0..n)
        .map(|i| v.get(i).map(|&x| x.max(0) as usize).unwrap_or(default))
        .collect()
}

/// Pads for `n` spatial dims, honouring `auto_pad` (SAME_UPPER / SAME_LOWER / VALID).
fn spatial_pads(
    node: &NodeProto,
    inp: &[usize],
    k: &[usize],
    s: &[usize],
    d: &[usize],
) -> Vec<(usize, usize)> {
    let n = inp.len();
    let auto = crate::model::attr_s(node, "auto_pad").unwrap_or_default();
    if auto == "SAME_UPPER" || auto == "SAME_LOWER" {
        return (0..n)
            .map(|i| {
                let out = inp[i].div_ceil(s[i].max(1));
                let total = out
                    .saturating_sub(1)
                    .saturating_mul(s[i])
                    .saturating_add(d[i].saturating_mul(k[i].saturating_sub(1)))
                    .saturating_add(1)
                    .saturating_sub(inp[i]);
                let small = total / 2;
                if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            })
            .collect();
    }
    let p = ints_or(node, "pads", 2 * n, 0);
    (0..n)
        .map(|i| {
            (
                p.get(i).copied().unwrap_or(0),
                p.get(i + n).copied().unwrap_or(0),
            )
        })
        .collect()
}

/// NumPy broadcasting of two shapes (`None` when incompatible).
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let y = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return None;
        };
    }
    Some(out)
}

/// Infers shapes through `graph` given the shapes of its non-initializer inputs.
pub fn infer(graph: &GraphProto, inputs: &HashMap<String, Vec<usize>>) -> ShapeReport {
    let mut shapes: HashMap<String, Vec<usize>> = inputs.clone();
    let mut consts: HashMap<String, Vec<f32>> = HashMap::new();
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        shapes.insert(name.clone(), tensor_dims(t));
        if let Some(v) = tensor_to_f32(t) {
            if v.len() <= 64 {
                consts.insert(name, v);
            }
        }
    }
    let mut report = ShapeReport::default();
    let mut unknown = std::collections::BTreeSet::new();
    for node in &graph.node {
        let op = node.op_type.as_deref().unwrap_or("");
        let ins: Vec<Option<&Vec<usize>>> = node
            .input
            .iter()
            .map(|n| if n.is_empty() { None } else { shapes.get(n) })
            .collect();
        let x = ins.first().copied().flatten();
        let all_known = !ins.is_empty() && ins.iter().all(|s| s.is_some());
        let mut out: Option<Vec<usize>> = None;
        match op {
            "Conv" | "ConvTranspose" => {
                if let (Some(x), Some(Some(w))) = (x, ins.get(1)) {
                    if x.len() >= 3 && w.len() == x.len() {
                        let n = x.len() - 2;
                        let k = w[2..].to_vec();
                        let s = ints_or(node, "strides", n, 1);
                        let d = ints_or(node, "dilations", n, 1);
                        let g = attr_i(node, "group").unwrap_or(1).max(1) as usize;
                        let pads = spatial_pads(node, &x[2..], &k, &s, &d);
                        let kprod = prod(&k);
                        if op == "Conv" {
                            let sp: Option<Vec<usize>> = (0..n)
                                .map(|i| {
                                    conv_out(
                                        x[2 + i],
                                        k[i],
                                        s[i],
                                        d[i],
                                        pads[i].0,
                                        pads[i].1,
                                        false,
                                    )
                                })
                                .collect();
                            if let Some(sp) = sp {
                                let o: Vec<usize> = [x[0], w[0]].into_iter().chain(sp).collect();
                                let m = prod(&o).saturating_mul(x[1] / g).saturating_mul(kprod);
                                report.macs = report.macs.saturating_add(m as u64);
                                out = Some(o);
                            }
                        } else {
                            let op_pad = ints_or(node, "output_padding", n, 0);
                            let sp: Vec<usize> = (0..n)
                                .map(|i| {
                                    s[i].saturating_mul(x[2 + i].max(1) - 1)
                                        .saturating_add(op_pad[i])
                                        .saturating_add(k[i].saturating_sub(1).saturating_mul(d[i]))
                                        .saturating_add(1)
                                        .saturating_sub(pads[i].0.saturating_add(pads[i].1))
                                })
                                .collect();
                            let o: Vec<usize> = [x[0], w[1].saturating_mul(g)]
                                .into_iter()
                                .chain(sp)
                                .collect();
                            let m = prod(x).saturating_mul(w[1]).saturating_mul(kprod);
                            report.macs = report.macs.saturating_add(m as u64);
                            out = Some(o);
                        }
                    }
                }
            }
            "MaxPool" | "AveragePool" | "LpPool" => {
                if let Some(x) = x.filter(|x| x.len() >= 3) {
                    let n = x.len() - 2;
                    let k = ints_or(node, "kernel_shape", n, 1);
                    let s = ints_or(node, "strides", n, 1);
                    let d = ints_or(node, "dilations", n, 1);
                    let ceil = attr_i(node, "ceil_mode").unwrap_or(0) != 0;
                    let pads = spatial_pads(node, &x[2..], &k, &s, &d);
                    let sp: Option<Vec<usize>> = (0..n)
                        .map(|i| conv_out(x[2 + i], k[i], s[i], d[i], pads[i].0, pads[i].1, ceil))
                        .collect();
                    out = sp.map(|sp| [x[0], x[1]].into_iter().chain(sp).collect());
                }
            }
            "GlobalAveragePool" | "GlobalMaxPool" => {
                out = x.map(|x| {
                    x.iter()
                        .enumerate()
                        .map(|(i, &d)| if i < 2 { d } else { 1 })
                        .collect()
                });
            }
            "Relu"
            | "Sigmoid"
            | "Tanh"
            | "LeakyRelu"
            | "Elu"
            | "Selu"
            | "Softmax"
            | "LogSoftmax"
            | "BatchNormalization"
            | "Identity"
            | "Dropout"
            | "Clip"
            | "Cast"
            | "Exp"
            | "Log"
            | "Sqrt"
            | "Neg"
            | "Abs"
            | "Erf"
            | "HardSigmoid"
            | "HardSwish"
            | "Gelu"
            | "QuantizeLinear"
            | "DequantizeLinear"
            | "InstanceNormalization"
            | "LayerNormalization"
            | "Reciprocal"
            | "Floor"
            | "Ceil"
            | "Round"
            | "Sign" => {
                out = x.cloned();
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "PRelu" | "Where"
            | "Equal" | "Greater" | "Less" | "And" | "Or"
                if all_known =>
            {
                out = ins
                    .iter()
                    .skip(1)
                    .try_fold(ins[0].cloned().unwrap_or_default(), |acc, s| {
                        s.and_then(|s| broadcast(&acc, s))
                    });
            }
            "Concat" if all_known => {
                let first = ins[0].cloned().unwrap_or_default();
                let r = first.len() as i64;
                let axis = attr_i(node, "axis").unwrap_or(0);
                let axis = if axis < 0 { axis + r } else { axis };
                if (0..r).contains(&axis) {
                    let a = axis as usize;
                    let mut o = first;
                    o[a] = ins
                        .iter()
                        .map(|s| s.map(|s| s.get(a).copied().unwrap_or(0)).unwrap_or(0))
                        .sum();
                    out = Some(o);
                }
            }
            "Flatten" => {
                if let Some(x) = x {
                    let r = x.len() as i64;
                    let axis = attr_i(node, "axis").unwrap_or(1);
                    let axis = if axis < 0 { axis + r } else { axis }.clamp(0, r) as usize;
                    out = Some(vec![prod(&x[..axis]), prod(&x[axis..])]);
                }
            }
            "Gemm" => {
                if let (Some(a), Some(Some(bm))) = (x, ins.get(1)) {
                    if a.len() == 2 && bm.len() == 2 {
                        let ta = attr_i(node, "transA").unwrap_or(0) != 0;
                        let tb = attr_i(node, "transB").unwrap_or(0) != 0;
                        let (m, k) = if ta { (a[1], a[0]) } else { (a[0], a[1]) };
                        let n = if tb { bm[0] } else { bm[1] };
                        report.macs = report.macs.saturating_add(prod(&[m, n, k]) as u64);
                        out = Some(vec![m, n]);
                    }
                }
            }
            "MatMul" => {
                if let (Some(a), Some(Some(bm))) = (x, ins.get(1)) {
                    if a.len() >= 2 && bm.len() >= 2 {
                        let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
                        let n = bm[bm.len() - 1];
                        if let Some(mut batch) = broadcast(&a[..a.len() - 2], &bm[..bm.len() - 2]) {
                            report.macs = report.macs.saturating_add(
                                prod(&batch).saturating_mul(prod(&[m, n, k])) as u64,
                            );
                            batch.extend([m, n]);
                            out = Some(batch);
                        }
                    }
                }
            }
            "Reshape" => {
                if let (Some(x), Some(target)) = (x, node.input.get(1).and_then(|n| consts.get(n)))
                {
                    let total = prod(x);
                    let mut o: Vec<usize> = Vec::new();
                    let mut infer_at = None;
                    for (i, &t) in target.iter().enumerate() {
                        let t = t as i64;
                        if t == 0 {
                            o.push(x.get(i).copied().unwrap_or(0));
                        } else if t == -1 {
                            infer_at = Some(i);
                            o.push(1);
                        } else {
                            o.push(t.max(0) as usize);
                        }
                    }
                    let known = prod(&o);
                    if let Some(i) = infer_at {
                        if let Some(v) = total.checked_div(known) {
                            o[i] = v;
                        }
                    }
                    out = Some(o);
                }
            }
            "Resize" | "Upsample" => {
                if let Some(x) = x {
                    let sizes = node.input.get(3).and_then(|n| consts.get(n));
                    let scales = node
                        .input
                        .get(if op == "Upsample" { 1 } else { 2 })
                        .and_then(|n| consts.get(n));
                    if let Some(s) = sizes.filter(|s| s.len() == x.len()) {
                        out = Some(s.iter().map(|&v| v as usize).collect());
                    } else if let Some(s) = scales.filter(|s| s.len() == x.len()) {
                        out = Some(
                            x.iter()
                                .zip(s)
                                .map(|(&d, &f)| (d as f32 * f).floor() as usize)
                                .collect(),
                        );
                    }
                }
            }
            "Transpose" => {
                if let Some(x) = x {
                    let perm = attr_ints(node, "perm")
                        .map(|p| p.iter().map(|&i| i as usize).collect::<Vec<_>>())
                        .unwrap_or_else(|| (0..x.len()).rev().collect());
                    if perm.iter().all(|&i| i < x.len()) {
                        out = Some(perm.iter().map(|&i| x[i]).collect());
                    }
                }
            }
            _ => {}
        }
        match out {
            Some(o) => {
                if let Some(name) = node.output.first() {
                    shapes.insert(name.clone(), o);
                }
            }
            None => {
                unknown.insert(op.to_string());
            }
        }
    }
    report.unknown_ops = unknown.into_iter().collect();
    report.shapes = shapes;
    report
}
