//! Half-precision storage of a float model's weights, for models shipped inside the binary.
//!
//! [`compact`] stores every large float initializer as FLOAT16 followed by a `Cast` to
//! FLOAT, which is a valid ONNX model that every engine runs (the same layout as
//! onnxconverter-common's `keep_io_types` FP16 models) at half the size. [`expand`] undoes it
//! exactly: each FLOAT16 initializer read by such a Cast becomes a FLOAT initializer under the
//! Cast's output name and the Cast goes, so the expanded model is an ordinary FP32 model
//! whose weights are the FP16-rounded ones (relative rounding error at most 2^-11).
//!
//! Written here (with the `half` crate for the conversions) because ONNX tooling that does
//! this lives in Python, and medinfer materialises its shipped models at run time.

use crate::model::tensor_to_f32;
use crate::proto::{data_type, AttributeProto, ModelProto, NodeProto, TensorProto};
use half::f16;
use std::collections::HashMap;

/// Initializers smaller than this stay FLOAT (biases, norms: a rounding there buys nothing).
pub const MIN_ELEMENTS: usize = 1024;
const SUFFIX: &str = "::f16";

/// Stores float initializers of at least [`MIN_ELEMENTS`] values as FLOAT16 + Cast. Returns
/// how many were converted.
pub fn compact(model: &mut ModelProto) -> usize {
    let Some(g) = model.graph.as_mut() else {
        return 0;
    };
    let mut casts = Vec::new();
    for t in g.initializer.iter_mut() {
        if t.data_type != Some(data_type::FLOAT) {
            continue;
        }
        let Some(v) = tensor_to_f32(t) else { continue };
        if v.len() < MIN_ELEMENTS {
            continue;
        }
        let name = t.name.clone().unwrap_or_default();
        let stored = format!("{name}{SUFFIX}");
        let raw: Vec<u8> = v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        *t = TensorProto {
            dims: t.dims.clone(),
            data_type: Some(data_type::FLOAT16),
            name: Some(stored.clone()),
            raw_data: Some(raw),
            ..Default::default()
        };
        casts.push(NodeProto {
            input: vec![stored],
            output: vec![name.clone()],
            name: Some(format!("{name}.cast")),
            op_type: Some("Cast".into()),
            attribute: vec![AttributeProto {
                name: Some("to".into()),
                r#type: Some(2), // INT
                i: Some(data_type::FLOAT as i64),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let n = casts.len();
    casts.append(&mut g.node);
    g.node = casts;
    n
}

/// Turns FLOAT16 initializers read by a Cast-to-FLOAT back into FLOAT initializers and
/// removes those Casts (whatever wrote the model). Returns how many were expanded.
pub fn expand(model: &mut ModelProto) -> usize {
    let Some(g) = model.graph.as_mut() else {
        return 0;
    };
    let outputs: std::collections::HashSet<String> =
        g.output.iter().filter_map(|o| o.name.clone()).collect();
    let halves: HashMap<String, usize> = g
        .initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| t.data_type == Some(data_type::FLOAT16) && t.raw_data.is_some())
        .filter_map(|(i, t)| t.name.clone().map(|n| (n, i)))
        .collect();
    // How many nodes read each half initializer: only one read by nothing but its Cast goes.
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            if halves.contains_key(i) {
                *readers.entry(i.as_str()).or_default() += 1;
            }
        }
    }
    let mut replace: Vec<(usize, String)> = Vec::new();
    let mut drop_nodes = std::collections::HashSet::new();
    for (k, n) in g.node.iter().enumerate() {
        let is_cast = n.op_type.as_deref() == Some("Cast")
            && n.input.len() == 1
            && n.output.len() == 1
            && crate::model::attr_i(n, "to") == Some(data_type::FLOAT as i64);
        if !is_cast || outputs.contains(&n.output[0]) {
            continue;
        }
        if let Some(&ti) = halves.get(&n.input[0]) {
            if readers.get(n.input[0].as_str()) == Some(&1) {
                replace.push((ti, n.output[0].clone()));
                drop_nodes.insert(k);
            }
        }
    }
    for (ti, name) in &replace {
        let t = &mut g.initializer[*ti];
        let raw = t.raw_data.take().unwrap_or_default();
        let v: Vec<u8> = raw
            .chunks_exact(2)
            .flat_map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes())
            .collect();
        *t = TensorProto {
            dims: t.dims.clone(),
            data_type: Some(data_type::FLOAT),
            name: Some(name.clone()),
            raw_data: Some(v),
            ..Default::default()
        };
    }
    let mut k = 0;
    g.node.retain(|_| {
        let keep = !drop_nodes.contains(&k);
        k += 1;
        keep
    });
    replace.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_halves_the_weights_and_expand_restores_them_to_fp16_rounding() {
        let original = crate::zoo::build("resnet18-ct").unwrap();
        let mut m = original.clone();
        let n = compact(&mut m);
        let g0 = original.graph.as_ref().unwrap();
        let g = m.graph.as_ref().unwrap();
        assert!(n > 10, "{n} initializers compacted");
        assert_eq!(g.node.len(), g0.node.len() + n);
        let size = |m: &ModelProto| crate::encode_model(m).len();
        assert!(
            (size(&m) as f64) < 0.52 * size(&original) as f64,
            "{} -> {}",
            size(&original),
            size(&m)
        );
        let mut back = m.clone();
        assert_eq!(expand(&mut back), n);
        let gb = back.graph.as_ref().unwrap();
        assert_eq!(gb.node.len(), g0.node.len());
        let by_name: HashMap<_, _> = gb.initializer.iter().map(|t| (t.name.clone(), t)).collect();
        for t in &g0.initializer {
            let b = by_name[&t.name];
            assert_eq!(b.data_type, Some(data_type::FLOAT), "{:?}", t.name);
            assert_eq!(b.dims, t.dims);
            let (x, y) = (tensor_to_f32(t).unwrap(), tensor_to_f32(b).unwrap());
            for (a, c) in x.iter().zip(&y) {
                assert!(
                    (a - c).abs() <= a.abs() * 4.9e-4 + 6.1e-5,
                    "{:?}: {a} -> {c}",
                    t.name
                );
            }
        }
        // Expanding a model without FP16 storage changes nothing.
        let mut plain = original.clone();
        assert_eq!(expand(&mut plain), 0);
        assert!(plain == original);
    }
}
