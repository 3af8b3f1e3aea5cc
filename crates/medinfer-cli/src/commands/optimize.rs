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
    medinfer_onnx::save_model(&model, &a.output)?;
    if a.json {
        return crate::args::print_json(&report);
    }
    print_optimize(&a.output.display().to_string(), &report);
    Ok(())
}
