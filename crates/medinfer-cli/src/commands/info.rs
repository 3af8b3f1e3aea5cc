//! `medinfer info`: a model's inputs, outputs, opset, op histogram, parameters, MACs, sha256.

use crate::args::print_json;
use anyhow::{Context, Result};
use medinfer_pipelines::models;

pub fn run(model: &str, json: bool) -> Result<()> {
    let path = models::resolve(model)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let m = medinfer_onnx::decode_model(&bytes, &path.display().to_string())?;
    let info = medinfer_onnx::analyze(&m, Some(&bytes));
    if json {
        return print_json(&info);
    }
    let shape = |v: &medinfer_onnx::ValueInfo| {
        format!(
            "{} {} [{}]",
            v.name,
            v.dtype,
            v.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    println!("model       {}", path.display());
    println!("sha256      {}", info.sha256);
    println!("size        {:.2} MB", info.file_size as f64 / 1e6);
    println!(
        "producer    {} (IR {}, opset {})",
        info.producer, info.ir_version, info.opset
    );
    for i in &info.inputs {
        println!("input       {}", shape(i));
    }
    for o in &info.outputs {
        println!("output      {}", shape(o));
    }
    println!(
        "parameters  {} trainable ({} initializer elements)",
        info.trainable_parameters, info.initializer_elements
    );
    match info.macs {
        Some(m) => println!(
            "MACs        {:.3} G at {:?}",
            m as f64 / 1e9,
            info.macs_input_shapes
        ),
        None => println!(
            "MACs        unknown (shapes not inferred past: {})",
            info.shape_inference_unknown_ops.join(", ")
        ),
    }
    println!(
        "quantized   {}",
        if info.quantized { "yes (QDQ)" } else { "no" }
    );
    println!("nodes       {}", info.nodes);
    for (op, n) in &info.op_histogram {
        println!("  {op:<24} {n}");
    }
    for (k, v) in &info.metadata {
        println!("meta        {k} = {v}");
    }
    Ok(())
}
