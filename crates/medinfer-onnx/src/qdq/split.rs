//! A convolution that reads a `Concat` of inputs with very different ranges, split into one
//! convolution per concatenated input plus `Add`s: `Conv(concat(a, b), [Wa Wb]) = Conv(a, Wa) +
//! Conv(b, Wb)`, exact in float. With one per-tensor INT8 scale on the concatenation, the
//! input with the small range is quantized at the large one's step and lost (a U-Net decoder
//! concatenating a ReLU skip of range ~1 with a transposed convolution's output of range
//! ~400); split, each part has its own scale.

use super::*;
use crate::model::attr_i;
use crate::proto::{ModelProto, NodeProto, TensorProto};
use crate::OnnxError;
use std::collections::HashMap;

/// One convolution split by [`split_concat_convs`].
#[derive(Clone, Debug, Serialize)]
pub struct SplitConv {
    /// The convolution.
    pub conv: String,
    /// The Concat it read.
    pub concat: String,
    /// The calibrated range (low, high) of each concatenated input, in order.
    pub input_ranges: Vec<(f32, f32)>,
}

/// Splits every convolution (one group, constant weights) whose input is a channel `Concat`
/// read by nothing else, when the calibrated ranges of the concatenated inputs differ by more
/// than `ratio` (widest over narrowest). `input_shapes` (the model's inputs, batch included)
/// give the channel count of each concatenated input. Returns the model and what was split;
/// the model is unchanged when nothing qualifies.
pub fn split_concat_convs(
    model: &ModelProto,
    calib: &Calibration,
    method: CalibMethod,
    input_shapes: &HashMap<String, Vec<usize>>,
    ratio: f32,
) -> Result<(ModelProto, Vec<SplitConv>), OnnxError> {
    let g = model.graph.as_ref().ok_or_else(|| OnnxError::Invalid {
        path: "<model>".into(),
        reason: "no graph".into(),
    })?;
    let shapes = crate::shapes::infer(g, input_shapes).shapes;
    // The quantizer's own graph index: initializers, producers, consumers, graph outputs.
    let ix = super::plan::Index::new(model)?;
    let mut splits = Vec::new();
    // conv index -> (concat index, replacement nodes, new initializers)
    let mut plan: HashMap<usize, (usize, Vec<NodeProto>, Vec<TensorProto>)> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        if n.op_type.as_deref() != Some("Conv") || attr_i(n, "group").unwrap_or(1) != 1 {
            continue;
        }
        let (Some(x), Some(w)) = (n.input.first(), n.input.get(1)) else {
            continue;
        };
        let Some((wd, wv)) = ix.float_weight(w) else {
            continue;
        };
        let Some(&c) = ix.producer.get(x.as_str()) else {
            continue;
        };
        let cat = &g.node[c];
        let rank = wd.len() as i64;
        let axis = attr_i(cat, "axis").unwrap_or(0);
        if cat.op_type.as_deref() != Some("Concat")
            || !(axis == 1 || axis == 1 - rank)
            || ix.single_consumer(x).is_none()
            || ix.outputs.contains(x.as_str())
            || cat.input.len() < 2
        {
            continue;
        }
        let mut ranges = Vec::new();
        let mut chans = Vec::new();
        for a in &cat.input {
            let (Some(s), Some(shape)) = (calib.stats.get(a), shapes.get(a)) else {
                break;
            };
            if shape.len() < 2 || ix.is_const(a) {
                break;
            }
            ranges.push(s.range(method));
            chans.push(shape[1]);
        }
        if ranges.len() != cat.input.len() || chans.iter().sum::<usize>() != wd[1] {
            continue;
        }
        let widths: Vec<f32> = ranges.iter().map(|(lo, hi)| (hi - lo).max(1e-12)).collect();
        let widest = widths.iter().copied().fold(0f32, f32::max);
        let narrowest = widths.iter().copied().fold(f32::INFINITY, f32::min);
        if widest / narrowest <= ratio {
            continue;
        }
        let name = n.name.clone().unwrap_or_else(|| format!("conv{i}"));
        let (cout, cin) = (wd[0], wd[1]);
        let k: usize = wd[2..].iter().product();
        let mut nodes = Vec::new();
        let mut new_inits = Vec::new();
        let mut parts = Vec::new();
        let mut off = 0;
        for (j, (a, &cj)) in cat.input.iter().zip(&chans).enumerate() {
            let mut part = Vec::with_capacity(cout * cj * k);
            for o in 0..cout {
                part.extend_from_slice(&wv[(o * cin + off) * k..(o * cin + off + cj) * k]);
            }
            off += cj;
            let mut dims = wd.clone();
            dims[1] = cj;
            let wname = format!("{name}.part{j}.weight");
            new_inits.push(crate::builder::f32_tensor(&wname, &dims, &part));
            let mut inputs = vec![a.clone(), wname];
            if j == 0 {
                if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                    inputs.push(b.clone());
                }
            }
            let out = format!("{name}.part{j}");
            nodes.push(NodeProto {
                input: inputs,
                output: vec![out.clone()],
                name: Some(out.clone()),
                op_type: Some("Conv".into()),
                attribute: n.attribute.clone(),
                ..Default::default()
            });
            parts.push(out);
        }
        let mut acc = parts[0].clone();
        for (j, p) in parts.iter().enumerate().skip(1) {
            let out = if j + 1 == parts.len() {
                n.output[0].clone()
            } else {
                format!("{name}.sum{j}")
            };
            nodes.push(NodeProto {
                input: vec![acc.clone(), p.clone()],
                output: vec![out.clone()],
                name: Some(format!("{name}.sum{j}")),
                op_type: Some("Add".into()),
                ..Default::default()
            });
            acc = out;
        }
        splits.push(SplitConv {
            conv: name,
            concat: cat.name.clone().unwrap_or_default(),
            input_ranges: ranges,
        });
        plan.insert(i, (c, nodes, new_inits));
    }
    if plan.is_empty() {
        return Ok((model.clone(), splits));
    }
    let old_weights: Vec<String> = plan
        .keys()
        .filter_map(|&i| g.node[i].input.get(1).cloned())
        .collect();
    let mut m = model.clone();
    let graph = m.graph.as_mut().expect("checked above");
    let dropped: Vec<usize> = plan.values().map(|(c, _, _)| *c).collect();
    let mut nodes = Vec::with_capacity(graph.node.len() + plan.len() * 3);
    for (i, n) in graph.node.iter().enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        match plan.get_mut(&i) {
            Some((_, new, _)) => nodes.append(new),
            None => nodes.push(n.clone()),
        }
    }
    graph.node = nodes;
    for (_, _, inits) in plan.into_values() {
        graph.initializer.extend(inits);
    }
    // The split convolutions' original weights go, unless something else reads them.
    let used: std::collections::HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    graph.initializer.retain(|t| {
        t.name
            .as_ref()
            .is_none_or(|n| used.contains(n) || !old_weights.contains(n))
    });
    Ok((m, splits))
}
