//! Folding shape arithmetic whose result the graph fixes, although the model's inputs have
//! dynamic dimensions.
//!
//! Exporters compute attention's scale and every reshape target from run-time shapes: the
//! scale from the query's last dim (`Shape -> Slice -> Cast -> Sqrt -> Div`), even where a
//! reshape fixes it to the head size; the 2-D `[-1, K]` around each projection and its way
//! back to `[batch, seq, N]` from `Shape -> Gather -> Unsqueeze -> Concat`. To an engine, and to
//! [`crate::hoist::split`], such values depend on a varying input, so:
//! - GPT-2's cross attention multiplies the cached keys of every encoder position by the
//!   scale at every generated token (785 positions, 12 layers: 58 MB read and written per
//!   token);
//! - a GPT-2-base decoder step runs ~1,300 small shape nodes around ~75 products, each a
//!   dispatch of its own.
//!
//! [`fold_static_dims`] tracks every tensor's dims as known numbers or symbols (a declared
//! `dim_param`, or a fresh symbol for a dim computed at run time), and the values of small
//! integer vectors the same way. It then:
//! 1. replaces every shape computation whose value is fully known with a `Constant`;
//! 2. feeds a projection's input to `MatMul` / `MatMulNBits` directly where it was flattened
//!    to `[-1, K]` for it and is reshaped back right after (those operators take N-D inputs;
//!    a reshape of the same elements gives the same result either way);
//! 3. turns a reshape whose target equals its input's dims, symbol for symbol, into
//!    `Identity`, and gives a constant target to a reshape whose run-time entries are each its
//!    input's dim at the same position (`[batch, seq, 12, 64]` read from `x [batch, seq, 768]`
//!    becomes `[0, 0, 12, 64]`, ONNX's "keep this dim");
//! 4. drops the nodes left unused.
//!
//! The values are exact: a dimension is only known, or two dims only equal, where the graph
//! itself makes them so.
use crate::model::{attr_i, attr_ints};
use crate::proto::{data_type, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// One dimension: a number, or a symbol standing for a run-time value (two dims with the same
/// symbol are equal at every run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    Known(i64),
    Sym(u32),
}

type Dims = Vec<Dim>;

/// Value of a small integer tensor (scalar or 1-D), element by element.
#[derive(Clone, Debug, PartialEq)]
struct PVal {
    scalar: bool,
    dtype: i32,
    v: Vec<Dim>,
}

impl PVal {
    fn known(&self) -> Option<Vec<i64>> {
        self.v
            .iter()
            .map(|d| match d {
                Dim::Known(k) => Some(*k),
                Dim::Sym(_) => None,
            })
            .collect()
    }
}

/// What [`fold_static_dims`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoldReport {
    /// Shape computations replaced by constants.
    pub folded: usize,
    /// Projections fed their N-D input directly instead of a `[-1, K]` flattening.
    pub unflattened: usize,
    /// Reshapes to their input's own dims, made `Identity`.
    pub identities: usize,
    /// Reshapes whose target was computed at run time from the input's own dims, given a
    /// constant target instead (`0` = keep that dim).
    pub relative_targets: usize,
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
            v: v.into_iter().map(Dim::Known).collect(),
        }),
        _ => None,
    }
}

fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

/// Symbols for run-time dims.
struct Syms {
    next: u32,
    named: HashMap<String, u32>,
}

impl Syms {
    fn fresh(&mut self) -> Dim {
        self.next += 1;
        Dim::Sym(self.next)
    }
    fn named(&mut self, name: &str) -> Dim {
        if let Some(&s) = self.named.get(name) {
            return Dim::Sym(s);
        }
        self.next += 1;
        self.named.insert(name.to_string(), self.next);
        Dim::Sym(self.next)
    }
}

/// Broadcast of two shapes (numpy rules): equal dims stay, a 1 gives way, a known dim other
/// than 1 decides; two different symbols give a fresh one.
fn broadcast(a: &[Dim], b: &[Dim], syms: &mut Syms) -> Dims {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = (i + a.len())
                .checked_sub(r)
                .map(|j| a[j])
                .unwrap_or(Dim::Known(1));
            let y = (i + b.len())
                .checked_sub(r)
                .map(|j| b[j])
                .unwrap_or(Dim::Known(1));
            match (x, y) {
                (p, q) if p == q => p,
                (Dim::Known(1), y) => y,
                (x, Dim::Known(1)) => x,
                (Dim::Known(p), _) | (_, Dim::Known(p)) => Dim::Known(p),
                _ => syms.fresh(),
            }
        })
        .collect()
}

/// Dims and small values of every tensor, from one walk over the graph in order.
struct Facts {
    dims: HashMap<String, Dims>,
    vals: HashMap<String, PVal>,
    /// Tensors that depend on no graph input.
    constant: HashSet<String>,
    /// Shape computations whose value is fully known, by node index.
    foldable: Vec<(usize, PVal)>,
    /// Reshapes to their input's own dims, by node index.
    identity_reshapes: Vec<usize>,
    /// Reshapes whose run-time target can be written as a constant: each entry not known
    /// is the input's own dim at the same position, so `0` ("copy that dim") says it.
    relative_targets: Vec<(usize, Vec<i64>)>,
}

fn analyse(g: &GraphProto) -> Facts {
    let mut syms = Syms {
        next: 0,
        named: HashMap::new(),
    };
    let mut dims: HashMap<String, Dims> = HashMap::new();
    let mut vals: HashMap<String, PVal> = HashMap::new();
    let mut constant: HashSet<String> = HashSet::new();
    // Tensors known to be 1-D integer vectors (shape vectors) even where their length is not.
    let mut vec1d: HashSet<String> = HashSet::new();
    let mut foldable = Vec::new();
    let mut identity_reshapes = Vec::new();
    let mut relative_targets = Vec::new();
    for t in &g.initializer {
        let Some(n) = t.name.clone() else { continue };
        dims.insert(n.clone(), t.dims.iter().map(|&d| Dim::Known(d)).collect());
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
                    .map(|d| match &d.value {
                        Some(Value::DimValue(v)) if *v > 0 => Dim::Known(*v),
                        Some(Value::DimParam(p)) if !p.is_empty() => syms.named(p),
                        _ => syms.fresh(),
                    })
                    .collect();
                dims.insert(n, d);
            }
        }
    }
    for (idx, n) in g.node.iter().enumerate() {
        let op = n.op_type.as_deref().unwrap_or("");
        let domain = n.domain.as_deref().unwrap_or("");
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
        match (domain, op) {
            ("com.microsoft", "MatMulNBits") => {
                if let (Some(a), Some(nn)) = (d_in(0), attr_i(n, "N")) {
                    if !a.is_empty() {
                        let mut o = a[..a.len() - 1].to_vec();
                        o.push(Dim::Known(nn));
                        out_dims = Some(o);
                    }
                }
            }
            ("" | "ai.onnx", _) => match op {
                "Constant" => {
                    if let Some(t) = n
                        .attribute
                        .iter()
                        .find(|a| a.name.as_deref() == Some("value"))
                        .and_then(|a| a.t.as_ref())
                    {
                        out_dims = Some(t.dims.iter().map(|&d| Dim::Known(d)).collect());
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
                        let v: Dims = if s < e { d[s..e].to_vec() } else { vec![] };
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
                    let idx = v_in(1).and_then(|p| Some((p.scalar, p.known()?)));
                    let data = v_in(0).or_else(|| {
                        (axis == 0 && inp(0).is_some_and(|s| vec1d.contains(s))).then(|| PVal {
                            scalar: false,
                            dtype: data_type::INT64,
                            v: vec![],
                        })
                    });
                    if let (Some(data), Some((scalar, idx))) = (data.filter(|_| axis == 0), idx) {
                        if !data.scalar && data.v.is_empty() {
                            // An element of a shape vector whose length is unknown.
                            out_val = Some(PVal {
                                scalar,
                                dtype: data.dtype,
                                v: idx.iter().map(|_| syms.fresh()).collect(),
                            });
                        } else if !data.scalar {
                            let len = data.v.len() as i64;
                            let picked: Option<Dims> = idx
                                .iter()
                                .map(|&i| {
                                    let i = if i < 0 { i + len } else { i };
                                    (0..len).contains(&i).then(|| data.v[i as usize])
                                })
                                .collect();
                            if let Some(v) = picked {
                                out_val = Some(PVal {
                                    scalar,
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
                    if let (None, Some(d)) = (v_in(0), d_in(0)) {
                        // A slice of a tensor: the sliced axes get fresh dims.
                        let r = d.len();
                        let axes: Option<Vec<i64>> = match inp(3) {
                            Some(_) => v_in(3).and_then(|p| p.known()),
                            None => v_in(1).map(|p| (0..p.v.len() as i64).collect()),
                        };
                        if let Some(ax) = axes.and_then(|a| {
                            a.iter()
                                .map(|&x| norm_axis(x, r))
                                .collect::<Option<Vec<_>>>()
                        }) {
                            let mut o = d.clone();
                            for a in ax {
                                o[a] = syms.fresh();
                            }
                            out_dims = Some(o);
                        }
                    }
                    if let (Some(data), Some(st), Some(en)) = (v_in(0), one(1), one(2)) {
                        let axis_ok = inp(3).is_none() || matches!(one(3), Some(0) | Some(-1));
                        let step = if inp(4).is_some() { one(4) } else { Some(1) };
                        if !data.scalar && axis_ok && step == Some(1) {
                            let len = data.v.len() as i64;
                            let c =
                                |x: i64| (if x < 0 { x + len } else { x }).clamp(0, len) as usize;
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
                    } else if let (Some(mut d), Some(axes)) = (d_in(0), axes) {
                        let r = d.len() + axes.len();
                        let ax: Option<Vec<usize>> =
                            axes.iter().map(|&a| norm_axis(a, r)).collect();
                        if let Some(mut ax) = ax {
                            ax.sort_unstable();
                            for &a in &ax {
                                if a <= d.len() {
                                    d.insert(a, Dim::Known(1));
                                }
                            }
                            if d.len() == r {
                                out_dims = Some(d);
                            }
                        }
                    }
                }
                "Range" => out_dims = Some(vec![syms.fresh()]),
                "ConstantOfShape" => {
                    out_dims = v_in(0).filter(|p| !p.scalar).map(|p| p.v);
                }
                "Squeeze" => {
                    let axes = v_in(1)
                        .and_then(|p| p.known())
                        .or_else(|| attr_ints(n, "axes"));
                    if let Some(p) = v_in(0).filter(|p| !p.scalar && p.v.len() == 1) {
                        out_val = Some(PVal { scalar: true, ..p });
                    } else if let (Some(d), Some(axes)) = (d_in(0), axes) {
                        let ax: Option<HashSet<usize>> =
                            axes.iter().map(|&a| norm_axis(a, d.len())).collect();
                        if let Some(ax) = ax.filter(|ax| ax.iter().all(|&a| d[a] == Dim::Known(1)))
                        {
                            out_dims = Some(
                                d.iter()
                                    .enumerate()
                                    .filter(|(i, _)| !ax.contains(i))
                                    .map(|(_, d)| *d)
                                    .collect(),
                            );
                        }
                    }
                }
                "Concat" => {
                    let parts: Option<Vec<PVal>> = (0..n.input.len()).map(v_in).collect();
                    let shape_axis = matches!(attr_i(n, "axis"), Some(0) | Some(-1));
                    let ins: Option<Vec<Dims>> = (0..n.input.len()).map(d_in).collect();
                    if let (Some(ins), Some(axis)) = (ins.as_ref(), attr_i(n, "axis")) {
                        let r = ins.first().map_or(0, |d| d.len());
                        if let (Some(a), true) =
                            (norm_axis(axis, r), ins.iter().all(|d| d.len() == r))
                        {
                            let mut o = ins[0].clone();
                            let total: Option<i64> = ins.iter().try_fold(0i64, |t, d| match d[a] {
                                Dim::Known(v) => Some(t.saturating_add(v)),
                                Dim::Sym(_) => None,
                            });
                            o[a] = total.map_or_else(|| syms.fresh(), Dim::Known);
                            out_dims = Some(o);
                        }
                    }
                    if let Some(parts) = parts.filter(|p| shape_axis && p.iter().all(|x| !x.scalar))
                    {
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
                        // An entry not resolved gets a fresh symbol, which no dim of the input
                        // has: the identity check below then fails by itself.
                        let mut o: Dims = target
                            .v
                            .iter()
                            .enumerate()
                            .map(|(i, t)| match *t {
                                Dim::Known(v) if v > 0 => Dim::Known(v),
                                Dim::Known(0) if !allowzero => {
                                    match x.as_ref().and_then(|x| x.get(i)) {
                                        Some(d) => *d,
                                        None => syms.fresh(),
                                    }
                                }
                                Dim::Sym(s) => Dim::Sym(s),
                                _ => syms.fresh(),
                            })
                            .collect();
                        // A -1 is the input's element count over the other dims: known
                        // where the symbols cancel and the rest are numbers.
                        let minus = target.v.iter().position(|t| *t == Dim::Known(-1));
                        if let (Some(m), Some(xd)) = (minus, x.as_ref()) {
                            let mut rest: Vec<Dim> = xd.clone();
                            let mut known_out = 1i64;
                            let mut ok = true;
                            for (i, d) in o.iter().enumerate() {
                                if i == m {
                                    continue;
                                }
                                match d {
                                    Dim::Known(v) => known_out = known_out.saturating_mul(*v),
                                    Dim::Sym(_) => match rest.iter().position(|r| r == d) {
                                        Some(p) => {
                                            rest.remove(p);
                                        }
                                        None => ok = false,
                                    },
                                }
                            }
                            let known_in: Option<i64> =
                                rest.iter().try_fold(1i64, |a, d| match d {
                                    Dim::Known(v) => Some(a.saturating_mul(*v)),
                                    Dim::Sym(_) => None,
                                });
                            if let (true, Some(k)) = (ok, known_in) {
                                if known_out > 0 && k % known_out == 0 {
                                    o[m] = Dim::Known(k / known_out);
                                }
                            }
                        }
                        if x.as_ref() == Some(&o) {
                            identity_reshapes.push(idx);
                        } else if let (false, None, Some(xd)) =
                            (allowzero, target.known(), x.as_ref())
                        {
                            let rel: Option<Vec<i64>> = target
                                .v
                                .iter()
                                .enumerate()
                                .map(|(i, t)| match *t {
                                    Dim::Known(v) => Some(v),
                                    Dim::Sym(_) if xd.get(i) == Some(t) => Some(0),
                                    Dim::Sym(_) => None,
                                })
                                .collect();
                            if let Some(rel) = rel.filter(|r| !r.is_empty()) {
                                relative_targets.push((idx, rel));
                            }
                        }
                        out_dims = Some(o);
                    }
                }
                "Transpose" => {
                    if let Some(d) = d_in(0) {
                        let perm = attr_ints(n, "perm")
                            .unwrap_or_else(|| (0..d.len() as i64).rev().collect());
                        let p: Option<Dims> = perm
                            .iter()
                            .map(|&a| norm_axis(a, d.len()).map(|a| d[a]))
                            .collect();
                        out_dims = p.filter(|p| p.len() == d.len());
                    }
                }
                "Expand" => {
                    let target = v_in(1).filter(|p| !p.scalar).map(|p| p.v).or_else(|| {
                        // A shape vector of known length, values unknown.
                        match d_in(1).as_deref() {
                            Some([Dim::Known(r)]) if (0..=16).contains(r) => {
                                Some((0..*r).map(|_| syms.fresh()).collect())
                            }
                            _ => None,
                        }
                    });
                    if let (Some(x), Some(t)) = (d_in(0), target) {
                        out_dims = Some(broadcast(&x, &t, &mut syms));
                    }
                }
                "Split" => {
                    if let Some(d) = d_in(0) {
                        let axis = norm_axis(attr_i(n, "axis").unwrap_or(0), d.len());
                        let sizes = v_in(1)
                            .and_then(|p| p.known())
                            .or_else(|| attr_ints(n, "split"));
                        if let Some(a) = axis {
                            let k = n.output.len() as i64;
                            for (j, o) in n.output.iter().enumerate() {
                                let mut od = d.clone();
                                od[a] = match (&sizes, d[a]) {
                                    (Some(sz), _) if sz.len() == n.output.len() => {
                                        Dim::Known(sz[j])
                                    }
                                    (None, Dim::Known(v)) if k > 0 && v % k == 0 => {
                                        Dim::Known(v / k)
                                    }
                                    _ => syms.fresh(),
                                };
                                dims.insert(o.clone(), od);
                            }
                        }
                    }
                }
                "Identity" | "IsNaN" | "Not" | "Sqrt" | "Relu" | "Gelu" | "Erf" | "Tanh"
                | "Sigmoid" | "Neg" | "Softmax" | "LayerNormalization" | "Dropout" | "Exp"
                | "Reciprocal" => {
                    out_dims = d_in(0);
                }
                "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Equal" | "Less" | "Greater"
                | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" => {
                    if let (Some(a), Some(b)) = (d_in(0), d_in(1)) {
                        out_dims = Some(broadcast(&a, &b, &mut syms));
                    }
                }
                "Where" => {
                    if let (Some(c), Some(a), Some(b)) = (d_in(0), d_in(1), d_in(2)) {
                        let ab = broadcast(&a, &b, &mut syms);
                        out_dims = Some(broadcast(&c, &ab, &mut syms));
                    }
                }
                "MatMul" => {
                    if let (Some(a), Some(b)) = (d_in(0), d_in(1)) {
                        if a.len() >= 2 && b.len() >= 2 {
                            let mut d = broadcast(&a[..a.len() - 2], &b[..b.len() - 2], &mut syms);
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
            },
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
                    foldable.push((idx, p.clone()));
                    constant.insert(o.clone());
                }
                let len = p.v.len() as i64;
                dims.insert(
                    o.clone(),
                    if p.scalar {
                        vec![]
                    } else {
                        vec![Dim::Known(len)]
                    },
                );
                vals.insert(o.clone(), p);
            }
            if all_const {
                constant.insert(o.clone());
            }
        }
    }
    Facts {
        dims,
        vals,
        constant,
        foldable,
        identity_reshapes,
        relative_targets,
    }
}

fn constant_node(name: Option<String>, out: String, p: &PVal) -> NodeProto {
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
    NodeProto {
        input: vec![],
        output: vec![out],
        name: name.map(|s| format!("{s}_folded")),
        op_type: Some("Constant".into()),
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(crate::proto::attribute_type::TENSOR),
            t: Some(t),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Step 2 of the module doc: `Reshape(x, [-1, K]) -> MatMul(Nbits)` whose result reaches only
/// reshapes (directly or through an Add of a 1-D constant bias) reads `x` itself.
fn unflatten_projections(g: &mut GraphProto, f: &Facts) -> usize {
    let mut consumers: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for (k, inp) in n.input.iter().enumerate() {
            consumers.entry(inp.as_str()).or_default().push((i, k));
        }
    }
    let graph_outputs: HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let op = |i: usize| g.node[i].op_type.as_deref().unwrap_or("");
    let only_reshapes = |t: &str| {
        !graph_outputs.contains(t)
            && consumers
                .get(t)
                .is_some_and(|c| c.iter().all(|&(j, k)| op(j) == "Reshape" && k == 0))
    };
    let mut rewires: Vec<(usize, String)> = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        if op(i) != "Reshape" {
            continue;
        }
        let (Some(x), Some(target), Some(y)) = (n.input.first(), n.input.get(1), n.output.first())
        else {
            continue;
        };
        let Some(t) = f.vals.get(target).and_then(|p| p.known()) else {
            continue;
        };
        let Some(xd) = f.dims.get(x) else { continue };
        if t.len() != 2 || t[0] != -1 || xd.last() != Some(&Dim::Known(t[1])) || xd.len() < 2 {
            continue;
        }
        let (Some(c), false) = (
            consumers.get(y.as_str()),
            graph_outputs.contains(y.as_str()),
        ) else {
            continue;
        };
        let [(m, 0)] = c.as_slice() else { continue };
        let mn = &g.node[*m];
        let is_nbits = mn.op_type.as_deref() == Some("MatMulNBits")
            && mn.domain.as_deref() == Some("com.microsoft");
        let is_matmul = op(*m) == "MatMul"
            && mn.domain.as_deref().unwrap_or("").is_empty()
            && mn.input.get(1).is_some_and(|w| {
                f.constant.contains(w) && f.dims.get(w).is_some_and(|d| d.len() == 2)
            });
        if !(is_nbits || is_matmul) {
            continue;
        }
        let Some(z) = mn.output.first() else { continue };
        let ok = !graph_outputs.contains(z.as_str())
            && consumers.get(z.as_str()).is_some_and(|c| {
                c.iter().all(|&(j, _)| {
                    let nj = &g.node[j];
                    if op(j) == "Reshape" {
                        return nj.input.first() == Some(z);
                    }
                    op(j) == "Add"
                        && nj.input.len() == 2
                        && nj.input.iter().any(|b| {
                            b != z
                                && f.constant.contains(b)
                                && f.dims.get(b).is_some_and(|d| d.len() == 1)
                        })
                        && nj.output.first().is_some_and(|w| only_reshapes(w))
                })
            });
        if ok {
            rewires.push((*m, x.clone()));
        }
    }
    for (m, x) in &rewires {
        g.node[*m].input[0] = x.clone();
    }
    rewires.len()
}

/// Replaces shape computations whose values the graph fixes with constants, feeds projections
/// their N-D inputs, makes reshapes to a tensor's own dims `Identity`, then removes the nodes
/// nothing reads any more. Graphs with subgraphs (If / Loop / Scan) are left alone.
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
    let fold = |g: &mut GraphProto, f: &Facts| {
        for (idx, p) in &f.foldable {
            let n = &g.node[*idx];
            g.node[*idx] = constant_node(n.name.clone(), n.output[0].clone(), p);
        }
        f.foldable.len()
    };
    let f = analyse(g);
    report.folded += fold(g, &f);
    report.unflattened = unflatten_projections(g, &f);
    let f = analyse(g);
    report.folded += fold(g, &f);
    for &i in &f.identity_reshapes {
        let n = &mut g.node[i];
        n.input.truncate(1);
        n.op_type = Some("Identity".into());
        n.attribute.clear();
        report.identities += 1;
    }
    for (i, target) in &f.relative_targets {
        let name = format!("{}_target_folded", g.node[*i].output[0]);
        g.initializer
            .push(crate::builder::i64_tensor(&name, &[target.len()], target));
        g.node[*i].input[1] = name;
        report.relative_targets += 1;
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

    /// A model of `nodes` over one input x [batch, seq, `width`] with output y.
    fn model(
        nodes: Vec<NodeProto>,
        initializer: Vec<crate::proto::TensorProto>,
        width: usize,
    ) -> ModelProto {
        let g = GraphProto {
            node: nodes,
            initializer,
            input: vec![f32_value_info(
                "x",
                &[
                    DimSpec::Named("batch".into()),
                    DimSpec::Named("seq".into()),
                    DimSpec::Fixed(width),
                ],
            )],
            output: vec![f32_value_info("y", &[])],
            ..Default::default()
        };
        ModelProto {
            graph: Some(g),
            ..Default::default()
        }
    }

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
    /// goes; the reshape's target, read from x's own batch dim at run time, becomes the
    /// constant [0, -1, 12, 64] and its Shape -> Gather -> Unsqueeze -> Concat go too.
    #[test]
    fn head_size_read_back_through_shape_folds() {
        let mut m = model(
            vec![
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
            vec![
                i64_tensor("zero", &[], &[0]),
                i64_tensor("axes0", &[1], &[0]),
                i64_tensor("minus1", &[1], &[-1]),
                i64_tensor("heads", &[2], &[12, 64]),
                i64_tensor("big", &[1], &[i64::MAX]),
            ],
            768,
        );
        let r = fold_static_dims(&mut m);
        assert_eq!(
            r,
            FoldReport {
                folded: 1,
                relative_targets: 1,
                removed: 5,
                ..Default::default()
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
        let r = g.node.iter().find(|n| n.output[0] == "r").unwrap();
        let target = g
            .initializer
            .iter()
            .find(|t| t.name.as_ref() == Some(&r.input[1]))
            .unwrap();
        assert_eq!(
            crate::optimize::Const::from_proto(target),
            Some(crate::optimize::Const::I64(vec![4], vec![0, -1, 12, 64]))
        );
        let ops: Vec<&str> = g
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap())
            .collect();
        assert_eq!(ops, ["Reshape", "Transpose", "Constant", "Cast", "Mul"]);
    }

    /// A projection as exporters write it: x [batch, seq, 64] flattened to [-1, 64], the
    /// product, a bias, and back to [batch, seq, 32] through Shape -> Gather -> Concat. The
    /// product takes x itself, the way back becomes Identity, and the shape nodes go.
    #[test]
    fn projection_flattening_is_undone() {
        let axis0 = || vec![crate::opset::int_attr("axis", 0)];
        let mut m = model(
            vec![
                node("Reshape", &["x", "flat"], "x2", vec![]),
                node("MatMul", &["x2", "w"], "y2", vec![]),
                node("Add", &["y2", "bias"], "z2", vec![]),
                node("Shape", &["x"], "s", vec![]),
                node("Gather", &["s", "zero"], "b", axis0()),
                node("Gather", &["s", "one"], "q", axis0()),
                node("Unsqueeze", &["b", "axes0"], "bu", vec![]),
                node("Unsqueeze", &["q", "axes0"], "qu", vec![]),
                node("Concat", &["bu", "qu", "n"], "back", axis0()),
                node("Reshape", &["z2", "back"], "y", vec![]),
            ],
            vec![
                i64_tensor("flat", &[2], &[-1, 64]),
                crate::builder::f32_tensor("w", &[64, 32], &[0.5; 64 * 32]),
                crate::builder::f32_tensor("bias", &[32], &[1.0; 32]),
                i64_tensor("zero", &[], &[0]),
                i64_tensor("one", &[], &[1]),
                i64_tensor("axes0", &[1], &[0]),
                i64_tensor("n", &[1], &[32]),
            ],
            64,
        );
        let r = fold_static_dims(&mut m);
        assert_eq!((r.unflattened, r.identities), (1, 1), "{r:?}");
        let g = m.graph.unwrap();
        let ops: Vec<&str> = g
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap())
            .collect();
        // The flattening reshape, the shape arithmetic and its inputs are gone.
        assert_eq!(ops, ["MatMul", "Add", "Identity"], "{ops:?}");
        assert_eq!(g.node[0].input[0], "x");
        assert!(!g
            .initializer
            .iter()
            .any(|t| t.name.as_deref() == Some("flat")));
    }

    /// A reshape whose target reads a dim the graph does not fix, at a position where the
    /// input has another dim, stays, and so does what feeds it: x [batch, seq, 64] to
    /// [seq, -1] (no constant says "seq" in front).
    #[test]
    fn dynamic_targets_stay() {
        let axis0 = || vec![crate::opset::int_attr("axis", 0)];
        let mut m = model(
            vec![
                node("Shape", &["x"], "s", vec![]),
                node("Gather", &["s", "one"], "b", axis0()),
                node("Unsqueeze", &["b", "axes0"], "bu", vec![]),
                node("Concat", &["bu", "minus1"], "t", axis0()),
                node("Reshape", &["x", "t"], "y", vec![]),
            ],
            vec![
                i64_tensor("one", &[], &[1]),
                i64_tensor("axes0", &[1], &[0]),
                i64_tensor("minus1", &[1], &[-1]),
            ],
            64,
        );
        let before = m.clone();
        assert_eq!(fold_static_dims(&mut m), FoldReport::default());
        assert_eq!(m, before);
    }
}
