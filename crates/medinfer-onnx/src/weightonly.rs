//! Weight-only INT8 / INT4 for the matrix products of a decoder: each MatMul / Gemm whose weight
//! is a float initializer becomes ONNX Runtime's `MatMulNBits` (domain `com.microsoft`, 8 or 4
//! bits, blocks of `block` along K, symmetric: one scale per block, the implicit zero point
//! 2^(bits-1), i.e. 128 or 8).
//!
//! Why weight-only: generating one token multiplies a single row by every weight matrix, so
//! the time goes into reading the weights; storing them in 8 bits reads a quarter of the bytes
//! (4 bits an eighth) and keeps activations in float (no calibration, small accuracy cost).
//! `MatMulNBits` is the operator ONNX Runtime's own tooling writes for this (its
//! `matmul_nbits_quantizer`), with blocked kernels in MLAS; OpenVINO's ONNX reader converts it
//! to its compressed-weight MatMul.
use crate::model::{attr_f, attr_i, tensor_to_f32};
use crate::opset::int_attr;
use crate::proto::{data_type, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
use std::collections::HashMap;

/// What [`quantize_weights`] changed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WeightOnlyReport {
    /// Bits per weight (8 or 4).
    pub bits: u8,
    /// MatMul / Gemm nodes rewritten.
    pub replaced: usize,
    /// Float weight bytes before.
    pub float_bytes: u64,
    /// Quantized bytes after (weights + scales).
    pub quantized_bytes: u64,
    /// Largest relative error of a dequantized weight block (|w - w'| / max |w| of the block).
    pub max_block_error: f32,
    /// Products left float, with why.
    pub skipped: Vec<String>,
}

/// How [`quantize_weights`] stores the weights.
#[derive(Clone, Copy, Debug)]
pub struct WeightOnlyOptions {
    /// Bits per weight: 8 (zero point 128) or 4 (zero point 8, two weights per byte).
    pub bits: u8,
    /// Weights per scale along K: a power of two, at least 16.
    pub block: usize,
    /// Products with fewer weight elements stay float.
    pub min_elements: usize,
    /// MatMulNBits' compute type (0 = unset, 1 fp32, 4 int8 activations).
    pub accuracy_level: i64,
}

impl WeightOnlyOptions {
    /// Whether the layout has these bits and block: the reason when it does not, worded as the
    /// CLI's flags.
    pub fn check(&self) -> Result<(), String> {
        if self.bits != 8 && self.bits != 4 {
            return Err(format!("--bits {}: 8 or 4", self.bits));
        }
        if !self.block.is_power_of_two() || self.block < 16 {
            return Err(format!(
                "--block {}: a power of two, at least 16",
                self.block
            ));
        }
        Ok(())
    }
}

impl Default for WeightOnlyOptions {
    fn default() -> Self {
        WeightOnlyOptions {
            bits: 8,
            block: 32,
            min_elements: 4096,
            accuracy_level: 4,
        }
    }
}

/// Blockwise symmetric quantization of `w` ([K, N], row-major) along K to `bits` (8 or 4), in
/// MatMulNBits layout: `q` [N, blocks, block * bits / 8] (unsigned, zero point 2^(bits-1); at 4
/// bits element 2i in the low nibble of a byte and 2i + 1 in the high one) and `scales`
/// [N * blocks]. At 8 bits the scale is the block's largest magnitude / 127 (levels -127..127,
/// every weight within half a step). At 4 bits, where a level matters more, the block's
/// largest-magnitude weight maps to -8 through a scale of its own sign, so all 16 levels are
/// used (as ONNX Runtime's own 4-bit quantizer does); a weight of the opposite sign that large
/// is clamped one step short. Returns also the largest error relative to the block's largest
/// magnitude. A `bits` other than 4 is taken as 8; `block` is at least 2 (a multiple of 2 at 4
/// bits), which [`quantize_weights`] checks.
pub fn quantize_blocks(
    w: &[f32],
    k: usize,
    n: usize,
    block: usize,
    bits: u8,
) -> (Vec<u8>, Vec<f32>, f32) {
    let bits: u8 = if bits == 4 { 4 } else { 8 };
    let blocks = k.div_ceil(block);
    let zero: i32 = 1 << (bits - 1);
    let (lo, hi) = (-(zero as f32), (zero - 1) as f32);
    let blob = block * bits as usize / 8;
    let per_byte = 8 / bits as usize;
    let mut q = vec![0u8; n * blocks * blob];
    let mut scales = vec![0f32; n * blocks];
    let mut worst = 0f32;
    for col in 0..n {
        for b in 0..blocks {
            let k0 = b * block;
            let k1 = (k0 + block).min(k);
            let extreme =
                (k0..k1)
                    .map(|r| w[r * n + col])
                    .fold(0f32, |a, v| if v.abs() > a.abs() { v } else { a });
            let amax = extreme.abs();
            let scale = match (amax > 0.0, bits) {
                (false, _) => 1.0,
                (true, 4) => extreme / lo,
                (true, _) => amax / hi,
            };
            scales[col * blocks + b] = scale;
            let base = (col * blocks + b) * blob;
            for i in 0..block {
                let r = k0 + i;
                // Padding past K holds the zero point.
                let qi = if r < k1 {
                    let v = w[r * n + col];
                    let qi = (v / scale).round().clamp(lo, hi);
                    if amax > 0.0 {
                        worst = worst.max((v - qi * scale).abs() / amax);
                    }
                    qi as i32
                } else {
                    0
                };
                let u = (qi + zero) as u8;
                q[base + i / per_byte] |= u << ((i % per_byte) * bits as usize);
            }
        }
    }
    (q, scales, worst)
}

/// Rewrites every MatMul / Gemm with a float initializer weight of at least
/// `opts.min_elements` elements to `MatMulNBits` of `opts.bits` bits (blocks of `opts.block`).
/// Options that [`WeightOnlyOptions::check`] refuses rewrite nothing (the report says why).
/// Gemm is taken when it is a plain product (alpha = beta = 1, A not transposed); its bias
/// becomes an Add.
pub fn quantize_weights(model: &mut ModelProto, opts: WeightOnlyOptions) -> WeightOnlyReport {
    let WeightOnlyOptions {
        bits,
        block,
        min_elements,
        accuracy_level,
    } = opts;
    let mut report = WeightOnlyReport {
        bits,
        ..Default::default()
    };
    if let Err(why) = opts.check() {
        report
            .skipped
            .push(format!("every product: not supported ({why})"));
        return report;
    }
    let Some(g) = model.graph.as_mut() else {
        return report;
    };
    let inits: HashMap<String, usize> = g
        .initializer
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.name.clone().map(|n| (n, i)))
        .collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let uses: HashMap<String, usize> = uses.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut drop_inits: Vec<String> = Vec::new();
    let mut nodes = Vec::with_capacity(g.node.len());
    for (idx, n) in std::mem::take(&mut g.node).into_iter().enumerate() {
        let op = n.op_type.as_deref().unwrap_or("");
        if op != "MatMul" && op != "Gemm" {
            nodes.push(n);
            continue;
        }
        let Some(&wi) = n.input.get(1).and_then(|b| inits.get(b)) else {
            nodes.push(n);
            continue;
        };
        let name = n.name.clone().unwrap_or_else(|| format!("matmul_{idx}"));
        let w = &g.initializer[wi];
        if w.data_type != Some(data_type::FLOAT) || w.dims.len() != 2 {
            nodes.push(n);
            continue;
        }
        let trans_b = op == "Gemm" && attr_i(&n, "transB").unwrap_or(0) == 1;
        if op == "Gemm"
            && (attr_i(&n, "transA").unwrap_or(0) != 0
                || attr_f(&n, "alpha").unwrap_or(1.0) != 1.0
                || attr_f(&n, "beta").unwrap_or(1.0) != 1.0)
        {
            report
                .skipped
                .push(format!("{name}: Gemm with transA / alpha / beta"));
            nodes.push(n);
            continue;
        }
        let (d0, d1) = (w.dims[0] as usize, w.dims[1] as usize);
        if d0 * d1 < min_elements {
            nodes.push(n);
            continue;
        }
        let Some(data) = tensor_to_f32(w) else {
            nodes.push(n);
            continue;
        };
        // [K, N] row-major.
        let (k, nn, kn) = if trans_b {
            let mut t = vec![0f32; d0 * d1];
            for r in 0..d0 {
                for c in 0..d1 {
                    t[c * d0 + r] = data[r * d1 + c];
                }
            }
            (d1, d0, t)
        } else {
            (d0, d1, data)
        };
        let (q, scales, worst) = quantize_blocks(&kn, k, nn, block, bits);
        report.max_block_error = report.max_block_error.max(worst);
        report.float_bytes += (k * nn * 4) as u64;
        report.quantized_bytes += (q.len() + scales.len() * 4) as u64;
        let wname = n.input[1].clone();
        if uses.get(&wname).copied().unwrap_or(0) <= 1 {
            drop_inits.push(wname.clone());
        }
        let qname = format!("{wname}_q{bits}_{idx}");
        let sname = format!("{wname}_scales_{idx}");
        let blocks = k.div_ceil(block);
        new_inits.push(TensorProto {
            name: Some(qname.clone()),
            dims: vec![nn as i64, blocks as i64, (block * bits as usize / 8) as i64],
            data_type: Some(data_type::UINT8),
            raw_data: Some(q),
            ..Default::default()
        });
        new_inits.push(crate::builder::f32_tensor(&sname, &[nn * blocks], &scales));
        let out = n.output[0].clone();
        let bias = if op == "Gemm" {
            n.input.get(2).filter(|s| !s.is_empty()).cloned()
        } else {
            None
        };
        let mm_out = if bias.is_some() {
            format!("{out}_nobias")
        } else {
            out.clone()
        };
        nodes.push(NodeProto {
            input: vec![n.input[0].clone(), qname, sname],
            output: vec![mm_out.clone()],
            name: Some(format!("{name}_q{bits}")),
            op_type: Some("MatMulNBits".into()),
            domain: Some("com.microsoft".into()),
            attribute: vec![
                int_attr("K", k as i64),
                int_attr("N", nn as i64),
                int_attr("bits", bits as i64),
                int_attr("block_size", block as i64),
                int_attr("accuracy_level", accuracy_level),
            ],
            ..Default::default()
        });
        if let Some(b) = bias {
            nodes.push(NodeProto {
                input: vec![mm_out, b],
                output: vec![out],
                name: Some(format!("{name}_bias")),
                op_type: Some("Add".into()),
                ..Default::default()
            });
        }
        report.replaced += 1;
    }
    g.node = nodes;
    g.initializer
        .retain(|t| t.name.as_ref().is_none_or(|n| !drop_inits.contains(n)));
    g.initializer.extend(new_inits);
    if report.replaced > 0
        && !model
            .opset_import
            .iter()
            .any(|o| o.domain.as_deref() == Some("com.microsoft"))
    {
        model.opset_import.push(OperatorSetIdProto {
            domain: Some("com.microsoft".into()),
            version: Some(1),
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_within_half_a_step() {
        let (k, n, block) = (40, 3, 16);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let (q, scales, worst) = quantize_blocks(&w, k, n, block, 8);
        let blocks = k.div_ceil(block);
        assert_eq!(q.len(), n * blocks * block);
        for col in 0..n {
            for r in 0..k {
                let (b, i) = (r / block, r % block);
                let s = scales[col * blocks + b];
                let back = (q[(col * blocks + b) * block + i] as f32 - 128.0) * s;
                assert!((back - w[r * n + col]).abs() <= s / 2.0 + 1e-6);
            }
        }
        // Padding of the last block holds the zero point.
        assert_eq!(q[(blocks - 1) * block + (k % block)], 128);
        assert!(worst <= 0.5 / 127.0 + 1e-6, "{worst}");
    }

    #[test]
    fn four_bit_blocks_unpack_to_the_weights() {
        let (k, n, block) = (40, 3, 16);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let (q, scales, worst) = quantize_blocks(&w, k, n, block, 4);
        let blocks = k.div_ceil(block);
        let blob = block / 2;
        assert_eq!(q.len(), n * blocks * blob);
        let level = |col: usize, b: usize, i: usize| {
            let byte = q[(col * blocks + b) * blob + i / 2];
            (if i.is_multiple_of(2) {
                byte & 15
            } else {
                byte >> 4
            }) as i32
                - 8
        };
        for col in 0..n {
            for b in 0..blocks {
                let s = scales[col * blocks + b];
                let amax = (b * block..((b + 1) * block).min(k))
                    .map(|r| w[r * n + col].abs())
                    .fold(0f32, f32::max);
                // The block's extreme is exactly level -8.
                assert!((s.abs() * 8.0 - amax).abs() <= 1e-5 * amax);
                for i in 0..block {
                    let r = b * block + i;
                    if r >= k {
                        // Padding holds the zero point.
                        assert_eq!(level(col, b, i), 0);
                        continue;
                    }
                    let back = level(col, b, i) as f32 * s;
                    let v = w[r * n + col];
                    // Half a step, or one step where +8 is clamped to +7.
                    let tol = if (v / s).round() > 7.0 {
                        s.abs()
                    } else {
                        s.abs() / 2.0
                    };
                    assert!((back - v).abs() <= tol + 1e-6, "{back} vs {v}");
                }
            }
        }
        assert!(worst <= 1.0 / 8.0 + 1e-6, "{worst}");
    }

    /// Called as a library with a width or block the layout does not have, nothing is
    /// rewritten and the report says why (the CLI refuses these before).
    #[test]
    fn unsupported_widths_and_blocks_rewrite_nothing() {
        let graph = crate::proto::GraphProto {
            node: vec![NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                op_type: Some("MatMul".into()),
                ..Default::default()
            }],
            initializer: vec![crate::builder::f32_tensor("w", &[64, 64], &[0.25; 64 * 64])],
            ..Default::default()
        };
        let m = ModelProto {
            graph: Some(graph),
            ..Default::default()
        };
        for (bits, block) in [(3, 32), (0, 32), (4, 24), (8, 8)] {
            let mut q = m.clone();
            let r = quantize_weights(
                &mut q,
                WeightOnlyOptions {
                    bits,
                    block,
                    ..Default::default()
                },
            );
            assert_eq!(r.replaced, 0, "{bits} bits, block {block}");
            assert!(r.skipped[0].contains("not supported"), "{:?}", r.skipped);
            assert_eq!(q, m);
        }
        let mut q = m.clone();
        let r = quantize_weights(
            &mut q,
            WeightOnlyOptions {
                bits: 4,
                ..Default::default()
            },
        );
        assert_eq!(r.replaced, 1);
    }
}
