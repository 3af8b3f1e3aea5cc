//! Hoisting loop-invariant work out of a model that is called many times with some inputs
//! unchanged: the decoder of an encoder-decoder model is called once per generated token with
//! the same `encoder_hidden_states`, and an export such as GPT-2's with cross attention
//! recomputes the cross-attention keys and values from them at every call (for a ViT-B encoder
//! at 448 px and a GPT-2-base decoder: 11 G multiply-adds per token, several times the rest of
//! the step).
//!
//! [`split`] cuts a graph in two: a *precompute* model holding every node that depends on the
//! invariant inputs and on nothing that changes between calls, and a *step* model holding the
//! rest, which takes the precompute model's results (the *frontier* tensors) as extra inputs.
//! Run the precompute model once, then the step model each call: the results are identical
//! (the same nodes run on the same values), the repeated work is gone.
use crate::proto::{type_proto, GraphProto, ModelProto, TypeProto, ValueInfoProto};
use std::collections::{HashMap, HashSet};

/// The two models of a split, and the tensors that pass between them.
#[derive(Clone, Debug)]
pub struct Hoisted {
    /// Takes the invariant inputs, gives the frontier tensors (element types declared, shapes
    /// left to the engine).
    pub precompute: ModelProto,
    /// The original model with the hoisted nodes removed and the frontier tensors as inputs.
    /// Their declarations carry element types and no shape until [`declare_ranks`] gives them
    /// ranks (the caller learns them by running the precompute model once).
    pub step: ModelProto,
    /// Frontier tensor names, in the precompute model's output order.
    pub frontier: Vec<String>,
    /// Nodes moved out of the step model.
    pub hoisted_nodes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Depends on no graph input (initializers, constants).
    Const,
    /// Depends on invariant inputs (and constants) only.
    Invariant,
    /// Depends on an input that changes between calls.
    Varying,
}

/// Element type of a node's output from its op and inputs (the ops an exporter puts on the
/// invariant side: projections, reshapes, shape arithmetic); None when unknown.
fn out_type(
    op: &str,
    node: &crate::proto::NodeProto,
    input_types: &[Option<i32>],
    out_idx: usize,
) -> Option<i32> {
    use crate::proto::data_type::*;
    let first = input_types.first().copied().flatten();
    match op {
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(INT64),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or"
        | "Xor" | "IsNaN" | "IsInf" => Some(BOOL),
        "Cast" => crate::model::attr_i(node, "to").map(|v| v as i32),
        "Where" => input_types.get(1).copied().flatten(),
        "Constant" | "ConstantOfShape" => node
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some("value"))
            .and_then(|a| a.t.as_ref())
            .and_then(|t| t.data_type)
            .or(Some(FLOAT)),
        "TopK" if out_idx == 1 => Some(INT64),
        _ => first,
    }
}

/// Splits `model` so that everything computable from `invariant` inputs alone runs once.
/// Returns None when nothing depends on them alone, or when the graph has subgraphs (If /
/// Loop / Scan bodies may read outer tensors implicitly, which this pass does not follow).
pub fn split(model: &ModelProto, invariant: &[&str]) -> Option<Hoisted> {
    let g = model.graph.as_ref()?;
    if g.node.iter().any(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    }) {
        return None;
    }
    let mut kind: HashMap<&str, Kind> = HashMap::new();
    let mut types: HashMap<&str, Option<i32>> = HashMap::new();
    for t in &g.initializer {
        if let Some(n) = t.name.as_deref() {
            kind.insert(n, Kind::Const);
            types.insert(n, t.data_type);
        }
    }
    for i in &g.input {
        let Some(n) = i.name.as_deref() else { continue };
        if kind.contains_key(n) {
            continue; // an initializer also listed as an input (old exporters)
        }
        kind.insert(
            n,
            if invariant.contains(&n) {
                Kind::Invariant
            } else {
                Kind::Varying
            },
        );
        let et = match i.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t.elem_type,
            _ => None,
        };
        types.insert(n, et);
    }
    let mut node_kind = Vec::with_capacity(g.node.len());
    for n in &g.node {
        let k = n
            .input
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| kind.get(s.as_str()).copied().unwrap_or(Kind::Varying))
            .max()
            .unwrap_or(Kind::Const);
        let in_types: Vec<Option<i32>> = n
            .input
            .iter()
            .map(|s| types.get(s.as_str()).copied().flatten())
            .collect();
        let op = n.op_type.as_deref().unwrap_or("");
        for (oi, o) in n.output.iter().enumerate() {
            kind.insert(o.as_str(), k);
            types.insert(o.as_str(), out_type(op, n, &in_types, oi));
        }
        node_kind.push(k);
    }
    // Invariant nodes with float outputs move; the shape arithmetic (integer / boolean
    // outputs) is cheap and is kept on both sides, so that the step model's shapes stay
    // derivable from its own inputs (OpenVINO needs static ranks, which an integer shape
    // vector fed from outside would hide).
    let is_float = |t: &str| {
        use crate::proto::data_type::*;
        matches!(
            types.get(t).copied().flatten(),
            Some(FLOAT) | Some(FLOAT16) | Some(BFLOAT16) | Some(DOUBLE)
        )
    };
    let moves: Vec<bool> = g
        .node
        .iter()
        .zip(&node_kind)
        .map(|(n, k)| *k == Kind::Invariant && n.output.iter().all(|o| is_float(o)))
        .collect();
    let in_step: Vec<bool> = node_kind
        .iter()
        .zip(&moves)
        .map(|(k, m)| *k == Kind::Varying || (*k == Kind::Invariant && !m))
        .collect();
    let moved_out: HashSet<&str> = g
        .node
        .iter()
        .zip(&moves)
        .filter(|(_, m)| **m)
        .flat_map(|(n, _)| n.output.iter().map(|o| o.as_str()))
        .collect();
    // Frontier: moved tensors read by step nodes or returned by the graph.
    let graph_outputs: HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let mut frontier: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut note = |t: &str, frontier: &mut Vec<String>| {
        if moved_out.contains(t) && seen.insert(t.to_string()) {
            frontier.push(t.to_string());
        }
    };
    for (n, step) in g.node.iter().zip(&in_step) {
        if *step {
            for i in &n.input {
                note(i, &mut frontier);
            }
        }
    }
    for o in &graph_outputs {
        note(o, &mut frontier);
    }
    if frontier.is_empty() {
        return None;
    }
    // Constant nodes each side needs (walking back from the nodes it keeps).
    let producer: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let needed_consts = |roots: &[usize]| -> HashSet<usize> {
        let mut need = HashSet::new();
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(i) = stack.pop() {
            for inp in &g.node[i].input {
                if let Some(&p) = producer.get(inp.as_str()) {
                    if node_kind[p] == Kind::Const && need.insert(p) {
                        stack.push(p);
                    }
                }
            }
        }
        need
    };
    let inv_nodes: Vec<usize> = (0..g.node.len())
        .filter(|&i| node_kind[i] == Kind::Invariant)
        .collect();
    let var_nodes: Vec<usize> = (0..g.node.len()).filter(|&i| in_step[i]).collect();
    let pre_consts = needed_consts(&inv_nodes);
    let mut step_roots = var_nodes.clone();
    // Constant nodes whose outputs the graph returns stay in the step model.
    for (i, n) in g.node.iter().enumerate() {
        if node_kind[i] == Kind::Const
            && n.output.iter().any(|o| graph_outputs.contains(o.as_str()))
        {
            step_roots.push(i);
        }
    }
    let mut step_consts = needed_consts(&step_roots);
    for &r in &step_roots {
        if node_kind[r] == Kind::Const {
            step_consts.insert(r);
        }
    }
    let pick = |keep: &dyn Fn(usize) -> bool| -> Vec<crate::proto::NodeProto> {
        (0..g.node.len())
            .filter(|&i| keep(i))
            .map(|i| g.node[i].clone())
            .collect()
    };
    let pre_nodes = pick(&|i| node_kind[i] == Kind::Invariant || pre_consts.contains(&i));
    let step_nodes = pick(&|i| in_step[i] || step_consts.contains(&i));
    let used = |nodes: &[crate::proto::NodeProto], outs: &[String]| -> HashSet<String> {
        nodes
            .iter()
            .flat_map(|n| n.input.iter().cloned())
            .chain(outs.iter().cloned())
            .collect()
    };
    let typed = |name: &str| ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(
                    types
                        .get(name)
                        .copied()
                        .flatten()
                        .unwrap_or(crate::proto::data_type::FLOAT),
                ),
                shape: None,
            })),
            denotation: None,
        }),
        ..Default::default()
    };
    // Precompute model.
    let pre_used = used(&pre_nodes, &frontier);
    let pre_graph = GraphProto {
        node: pre_nodes,
        name: Some(format!(
            "{}_precompute",
            g.name.as_deref().unwrap_or("graph")
        )),
        initializer: g
            .initializer
            .iter()
            .filter(|t| t.name.as_deref().is_some_and(|n| pre_used.contains(n)))
            .cloned()
            .collect(),
        input: g
            .input
            .iter()
            .filter(|i| i.name.as_deref().is_some_and(|n| invariant.contains(&n)))
            .cloned()
            .collect(),
        output: frontier.iter().map(|f| typed(f)).collect(),
        ..Default::default()
    };
    // Step model.
    let step_outputs: Vec<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
    let step_used = used(&step_nodes, &step_outputs);
    let mut step_inputs: Vec<ValueInfoProto> = g
        .input
        .iter()
        .filter(|i| {
            i.name
                .as_deref()
                .is_some_and(|n| !invariant.contains(&n) || step_used.contains(n))
        })
        .cloned()
        .collect();
    step_inputs.extend(frontier.iter().map(|f| typed(f)));
    let step_graph = GraphProto {
        node: step_nodes,
        name: g.name.clone(),
        initializer: g
            .initializer
            .iter()
            .filter(|t| t.name.as_deref().is_some_and(|n| step_used.contains(n)))
            .cloned()
            .collect(),
        input: step_inputs,
        output: g.output.clone(),
        value_info: Vec::new(),
        ..Default::default()
    };
    let hoisted_nodes = moves.iter().filter(|m| **m).count();
    let mut precompute = model.clone();
    precompute.graph = Some(pre_graph);
    let mut step = model.clone();
    step.graph = Some(step_graph);
    Some(Hoisted {
        precompute,
        step,
        frontier,
        hoisted_nodes,
    })
}

/// Gives the step model's frontier inputs their ranks (every dimension dynamic, named
/// `NAME_dI`), learnt by running the precompute model once.
pub fn declare_ranks(step: &mut ModelProto, ranks: &[(String, usize)]) {
    use crate::proto::tensor_shape_proto::{dimension::Value, Dimension};
    use crate::proto::TensorShapeProto;
    let Some(g) = step.graph.as_mut() else { return };
    for i in g.input.iter_mut() {
        let Some(name) = i.name.clone() else { continue };
        let Some((_, rank)) = ranks.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        if let Some(TypeProto {
            value: Some(type_proto::Value::TensorType(t)),
            ..
        }) = i.r#type.as_mut()
        {
            t.shape = Some(TensorShapeProto {
                dim: (0..*rank)
                    .map(|d| Dimension {
                        value: Some(Value::DimParam(format!("{name}_d{d}"))),
                        denotation: None,
                    })
                    .collect(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{f32_tensor, f32_value_info, DimSpec};
    use crate::proto::NodeProto;

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            op_type: Some(op.into()),
            ..Default::default()
        }
    }

    /// y = x @ W + (enc @ V): the enc @ V projection moves out, the rest stays.
    #[test]
    fn the_invariant_projection_moves_out() {
        let d = [DimSpec::Named("n".into()), DimSpec::Fixed(2)];
        let g = GraphProto {
            node: vec![
                node("MatMul", &["enc", "V"], &["kv"]),
                node("MatMul", &["x", "W"], &["q"]),
                node("Add", &["q", "kv"], &["y"]),
            ],
            initializer: vec![
                f32_tensor("V", &[2, 2], &[1., 0., 0., 1.]),
                f32_tensor("W", &[2, 2], &[2., 0., 0., 2.]),
            ],
            input: vec![f32_value_info("x", &d), f32_value_info("enc", &d)],
            output: vec![f32_value_info("y", &d)],
            ..Default::default()
        };
        let m = ModelProto {
            graph: Some(g),
            ..Default::default()
        };
        let h = split(&m, &["enc"]).unwrap();
        assert_eq!(h.frontier, vec!["kv".to_string()]);
        assert_eq!(h.hoisted_nodes, 1);
        let pre = h.precompute.graph.unwrap();
        assert_eq!(pre.node.len(), 1);
        assert_eq!(pre.initializer.len(), 1);
        let step = h.step.graph.unwrap();
        assert_eq!(step.node.len(), 2);
        let inputs: Vec<_> = step.input.iter().filter_map(|i| i.name.clone()).collect();
        assert_eq!(inputs, vec!["x".to_string(), "kv".to_string()]);
        assert_eq!(step.initializer.len(), 1);
        // Nothing to hoist: None.
        assert!(split(&m, &["nothing"]).is_none());
    }
}
