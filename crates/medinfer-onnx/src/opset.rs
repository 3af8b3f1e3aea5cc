//! Upgrading a model's default opset to 13, the first with per-channel QuantizeLinear /
//! DequantizeLinear.
//!
//! Real pretrained models are often exported at opset 11 or 12 (PaddlePaddle's and older
//! PyTorch exports). Quantizing them per channel needs opset 13, and weights quantized per
//! tensor instead lose accuracy on depthwise convolutions, so medinfer converts the few
//! operators whose signature or meaning changed between opsets 11 and 13, exactly:
//!
//! - `Split`, `Squeeze`, `Unsqueeze`, `ReduceSum` (13): the `split` / `axes` attribute becomes
//!   an int64 input;
//! - `Softmax`, `LogSoftmax`, `Hardmax` (13): before 13 they flatten the input to 2-D at `axis`
//!   (default 1) and normalise each row; from 13 they normalise along the one axis (default
//!   -1). Identical when the axis is the last one (known from the declared rank, or written as
//!   -1); otherwise rewritten as Flatten -> op(axis 1) -> Reshape to the input's shape, which is
//!   the old meaning exactly;
//! - `Dropout` (12): `ratio` becomes an input; an inference graph ignores it, so it is dropped.
//!
//! Every other operator of opsets 11 / 12 means the same at 13. Subgraphs (If / Loop / Scan
//! bodies) are converted too. Models below opset 11 are refused: too much changed before it
//! (Upsample, Pad, Clip, Slice) to convert with confidence; re-export them.
//!
//! Written here rather than taken from ONNX's Python version converter because medinfer is a
//! Rust binary without Python; the converter's own adapters for these ops were the checklist.

use std::collections::{HashMap, HashSet};

use crate::builder::i64_tensor;
use crate::model::{attr_i, attr_ints, default_opset, OnnxError};
use crate::proto::{attribute_type, AttributeProto, GraphProto, ModelProto, NodeProto};

/// What [`upgrade_to_13`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpsetUpgrade {
    /// The default opset before (the model is now at 13).
    pub from: i64,
    /// Nodes rewritten, by op type.
    pub rewritten: Vec<(String, usize)>,
}

/// Upgrades the default (`ai.onnx`) opset of `model` to 13 when it is 11 or 12. Returns `None`
/// when it already is 13 or later (nothing changed), an error below 11.
pub fn upgrade_to_13(model: &mut ModelProto) -> Result<Option<OpsetUpgrade>, OnnxError> {
    let from = default_opset(model);
    if from >= 13 {
        return Ok(None);
    }
    if from < 11 {
        return Err(OnnxError::Invalid {
            path: "<model>".into(),
            reason: format!(
                "opset {from}: medinfer upgrades opsets 11 and 12 to 13 (needed for per-channel INT8); re-export this model at opset 13 or later"
            ),
        });
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut fresh = Fresh::default();
    if let Some(g) = model.graph.as_mut() {
        fresh.collect(g);
        upgrade_graph(g, from, &mut fresh, &mut counts)?;
    }
    for o in model.opset_import.iter_mut() {
        let d = o.domain.as_deref().unwrap_or("");
        if d.is_empty() || d == "ai.onnx" {
            o.version = Some(13);
        }
    }
    let mut rewritten: Vec<(String, usize)> = counts.into_iter().collect();
    rewritten.sort();
    Ok(Some(OpsetUpgrade { from, rewritten }))
}

/// Unique names for the tensors and nodes the conversion adds.
#[derive(Default)]
struct Fresh {
    used: HashSet<String>,
    next: usize,
}

impl Fresh {
    fn collect(&mut self, g: &GraphProto) {
        for n in &g.node {
            self.used.extend(n.input.iter().cloned());
            self.used.extend(n.output.iter().cloned());
            if let Some(name) = &n.name {
                self.used.insert(name.clone());
            }
            for a in &n.attribute {
                if let Some(sub) = &a.g {
                    self.collect(sub);
                }
                for sub in &a.graphs {
                    self.collect(sub);
                }
            }
        }
        for t in &g.initializer {
            self.used.extend(t.name.clone());
        }
        for v in g.input.iter().chain(&g.output) {
            self.used.extend(v.name.clone());
        }
    }

    fn name(&mut self, base: &str) -> String {
        loop {
            let n = format!("{base}__op13_{}", self.next);
            self.next += 1;
            if self.used.insert(n.clone()) {
                return n;
            }
        }
    }
}

fn is_default_domain(n: &NodeProto) -> bool {
    matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"))
}

/// Declared ranks of the graph's tensors (inputs, outputs, value_info, initializers).
fn declared_ranks(g: &GraphProto) -> HashMap<String, usize> {
    let mut r = HashMap::new();
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let (Some(name), Some(dims)) = (&v.name, crate::info::declared_rank(v)) {
            r.insert(name.clone(), dims);
        }
    }
    for t in &g.initializer {
        if let Some(name) = &t.name {
            r.insert(name.clone(), t.dims.len());
        }
    }
    r
}

/// An INT attribute.
pub(crate) fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INT),
        i: Some(v),
        ..Default::default()
    }
}

/// An INTS attribute.
#[cfg(test)]
pub(crate) fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, name: String, inputs: Vec<String>, outputs: Vec<String>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name),
        input: inputs,
        output: outputs,
        ..Default::default()
    }
}

fn upgrade_graph(
    g: &mut GraphProto,
    from: i64,
    fresh: &mut Fresh,
    counts: &mut HashMap<String, usize>,
) -> Result<(), OnnxError> {
    let ranks = declared_ranks(g);
    let old = std::mem::take(&mut g.node);
    let mut nodes = Vec::with_capacity(old.len());
    for mut n in old {
        for a in n.attribute.iter_mut() {
            if let Some(sub) = a.g.as_mut() {
                upgrade_graph(sub, from, fresh, counts)?;
            }
            for sub in a.graphs.iter_mut() {
                upgrade_graph(sub, from, fresh, counts)?;
            }
        }
        if !is_default_domain(&n) {
            nodes.push(n);
            continue;
        }
        let op = n.op_type.clone().unwrap_or_default();
        let label = n.name.clone().unwrap_or_else(|| op.clone());
        let attr_to_input = match op.as_str() {
            "Split" => Some("split"),
            "Squeeze" | "Unsqueeze" | "ReduceSum" => Some("axes"),
            _ => None,
        };
        if let Some(attr) = attr_to_input {
            if let Some(values) = attr_ints(&n, attr) {
                n.attribute.retain(|a| a.name.as_deref() != Some(attr));
                let t = fresh.name(&format!("{label}_{attr}"));
                g.initializer.push(i64_tensor(&t, &[values.len()], &values));
                // Split's `split` is its second input; the others' `axes` too.
                n.input.truncate(1);
                n.input.push(t);
                *counts.entry(op.clone()).or_default() += 1;
            }
            nodes.push(n);
            continue;
        }
        match op.as_str() {
            "Dropout" if from < 12 => {
                if n.attribute
                    .iter()
                    .any(|a| a.name.as_deref() == Some("ratio"))
                {
                    n.attribute.retain(|a| a.name.as_deref() != Some("ratio"));
                    *counts.entry(op.clone()).or_default() += 1;
                }
                nodes.push(n);
            }
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let axis = attr_i(&n, "axis").unwrap_or(1);
                let x = n.input.first().cloned().unwrap_or_default();
                let last = axis == -1
                    || ranks
                        .get(&x)
                        .is_some_and(|&r| r > 0 && (axis == r as i64 - 1));
                if last {
                    // Same meaning at 13; write the axis out (13's default is -1, not 1).
                    n.attribute.retain(|a| a.name.as_deref() != Some("axis"));
                    n.attribute.push(int_attr("axis", axis));
                    nodes.push(n);
                    continue;
                }
                let y = n
                    .output
                    .first()
                    .cloned()
                    .ok_or_else(|| OnnxError::Invalid {
                        path: "<model>".into(),
                        reason: format!("{op} node '{label}' has no output"),
                    })?;
                let shape = fresh.name(&format!("{label}_shape"));
                let flat = fresh.name(&format!("{label}_flat"));
                let flat_y = fresh.name(&format!("{label}_flat_out"));
                nodes.push(node(
                    "Shape",
                    fresh.name(&format!("{label}_Shape")),
                    vec![x.clone()],
                    vec![shape.clone()],
                ));
                let mut f = node(
                    "Flatten",
                    fresh.name(&format!("{label}_Flatten")),
                    vec![x],
                    vec![flat.clone()],
                );
                f.attribute.push(int_attr("axis", axis));
                nodes.push(f);
                n.input = vec![flat];
                n.output = vec![flat_y.clone()];
                n.attribute.retain(|a| a.name.as_deref() != Some("axis"));
                n.attribute.push(int_attr("axis", 1));
                nodes.push(n);
                nodes.push(node(
                    "Reshape",
                    fresh.name(&format!("{label}_Reshape")),
                    vec![flat_y, shape],
                    vec![y],
                ));
                *counts.entry(op.clone()).or_default() += 1;
            }
            _ => nodes.push(n),
        }
    }
    g.node = nodes;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::OperatorSetIdProto;

    fn model_with(nodes: Vec<NodeProto>, opset: i64) -> ModelProto {
        ModelProto {
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            graph: Some(GraphProto {
                node: nodes,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_ints(mut n: NodeProto, name: &str, v: &[i64]) -> NodeProto {
        n.attribute.push(AttributeProto {
            name: Some(name.into()),
            r#type: Some(attribute_type::INTS),
            ints: v.to_vec(),
            ..Default::default()
        });
        n
    }

    #[test]
    fn axes_attributes_become_inputs() {
        let sq = with_ints(
            node("Squeeze", "sq".into(), vec!["x".into()], vec!["y".into()]),
            "axes",
            &[0, 2],
        );
        let mut m = model_with(vec![sq], 12);
        let up = upgrade_to_13(&mut m).unwrap().unwrap();
        assert_eq!(up.from, 12);
        assert_eq!(up.rewritten, vec![("Squeeze".to_string(), 1)]);
        let g = m.graph.as_ref().unwrap();
        assert!(g.node[0].attribute.is_empty());
        assert_eq!(g.node[0].input.len(), 2);
        let t = &g.initializer[0];
        assert_eq!(t.name.as_deref(), Some(g.node[0].input[1].as_str()));
        assert_eq!(crate::tensor_to_f32(t).unwrap(), vec![0.0, 2.0]);
        assert_eq!(default_opset(&m), 13);
    }

    #[test]
    fn softmax_not_on_the_last_axis_keeps_its_old_meaning() {
        let mut s = node("Softmax", "sm".into(), vec!["x".into()], vec!["y".into()]);
        s.attribute.push(int_attr("axis", 1));
        let mut m = model_with(vec![s], 11);
        upgrade_to_13(&mut m).unwrap().unwrap();
        let ops: Vec<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap())
            .collect();
        assert_eq!(ops, ["Shape", "Flatten", "Softmax", "Reshape"]);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node[3].output, vec!["y".to_string()]);
    }

    #[test]
    fn already_13_is_left_alone_and_old_opsets_are_refused() {
        let mut m = model_with(vec![], 13);
        assert_eq!(upgrade_to_13(&mut m).unwrap(), None);
        let mut m = model_with(vec![], 9);
        let e = upgrade_to_13(&mut m).unwrap_err().to_string();
        assert!(e.contains("opset 9"), "{e}");
    }
}
