//! The FP32 graph rewritten into standard QDQ ONNX.

use super::plan::{activation_tensors, Index};
use super::*;
use crate::model::attr_i;
use crate::proto::{data_type, ModelProto, TensorProto};
use crate::OnnxError;
use std::collections::HashMap;

/// Activation parameters for the range `[lo, hi]` (widened to include 0): UINT8 with zero point
/// 0 for non-negative tensors (post-ReLU); for tensors with negative values, UINT8 with a zero
/// point (asymmetric) or, when `signed_symmetric` ([`Target::OpenVino`]), INT8 symmetric.
pub(super) fn act_params(lo: f32, hi: f32, signed_symmetric: bool) -> QParams {
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

/// Per-output-channel symmetric INT8 weights in `[-levels, levels]` (127, or 63 for 7-bit
/// weights): (values, scales).
pub(super) fn quantize_weight(
    dims: &[usize],
    w: &[f32],
    axis: usize,
    levels: f32,
) -> (Vec<i8>, Vec<f32>) {
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
                m / levels
            } else {
                1.0
            }
        })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &x)| (x / scales[(i / inner) % c]).round().clamp(-levels, levels) as i8)
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
    let first_layers = super::plan::first_weighted_layers(&ix, plan);
    let signed_activations = config.target == Target::OpenVino
        && config.signed_activations.unwrap_or_else(cpu_has_amx_int8);
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
                seven_bit_weights: false,
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
            seven_bit_weights: false,
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
            let seven = match config.overflow_fix {
                OverflowFix::None => false,
                OverflowFix::FirstLayer => first_layers.contains(&layer.index),
                OverflowFix::All => true,
            };
            rep.seven_bit_weights = seven;
            let (qw, ws) = quantize_weight(&wd, &w, axis, if seven { 63.0 } else { 127.0 });
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
        overflow_fix: config.overflow_fix,
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
pub(super) fn weight_mean_shift(
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
