//! `medinfer optimize`: graph optimisation (constant folding, batch-norm folding, identity /
//! dropout removal, transpose and reshape merging, dead code).

use anyhow::Result;
use clap::Args;
use medinfer_onnx::OptimizeReport;
use medinfer_pipelines::models;
use std::path::PathBuf;

#[derive(Args)]
pub struct OptimizeArgs {
    /// ONNX file, or the name of a zoo model.
    pub model: String,
    /// Output ONNX file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// After optimising, store every weight of 1024 values or more as FP16 followed by a Cast
    /// to FP32: a valid ONNX model at about half the size, with FP16-rounded weights. This is
    /// how medinfer ships its large trained models; it is expanded back to FP32 when loaded.
    #[arg(long)]
    pub store_fp16: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn print_optimize(path: &str, r: &OptimizeReport) {
    println!(
        "{path}: {} -> {} nodes, {} -> {} initializers",
        r.nodes_before, r.nodes_after, r.initializers_before, r.initializers_after
    );
    for (pass, n) in &r.passes {
        if *n > 0 {
            println!("  {pass:<12} {n}");
        }
    }
    let after: std::collections::HashMap<&str, usize> =
        r.ops_after.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let changed: Vec<String> = r
        .ops_before
        .iter()
        .filter(|(op, n)| after.get(op.as_str()).copied().unwrap_or(0) != *n)
        .map(|(op, n)| format!("{op} {n}->{}", after.get(op.as_str()).copied().unwrap_or(0)))
        .collect();
    if !changed.is_empty() {
        println!("  ops: {}", changed.join(", "));
    }
}

pub fn run(a: OptimizeArgs) -> Result<()> {
    let path = models::resolve(&a.model)?;
    let mut model = medinfer_onnx::load_model(&path)?;
    let report = medinfer_onnx::optimize(&mut model)?;
    let halved = if a.store_fp16 {
        medinfer_onnx::f16store::compact(&mut model)
    } else {
        0
    };
    medinfer_onnx::save_model(&model, &a.output)?;
    if halved > 0 && !a.json {
        println!("{halved} weights stored as FP16 + Cast");
    }
    if a.json {
        return crate::args::print_json(&report);
    }
    print_optimize(&a.output.display().to_string(), &report);
    Ok(())
}
