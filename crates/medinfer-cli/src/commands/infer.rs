//! `medinfer infer`: a model on NPY tensors, outputs written as NPY files.

use crate::args::print_json;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use medinfer_core::Tensor;
use medinfer_engine::{Precision, SessionOptions};
use medinfer_pipelines::models;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct InferArgs {
    /// ONNX file, or the name of a zoo model.
    pub model: String,
    /// An input as NAME=FILE.npy (repeat for several inputs); a model with one input also
    /// takes plain FILE.npy. The batch size is taken from the file's shape.
    #[arg(short, long = "input", required = true)]
    pub inputs: Vec<String>,
    /// Backend: tract, ort, openvino or auto (the fastest available).
    #[arg(short, long, default_value = "auto")]
    pub backend: String,
    /// Precision: fp32 or bf16 (bf16 on OpenVINO only).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Threads (default: every core this process may use).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Folder for the outputs, one OUTPUT_NAME.npy per model output.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InferArgs) -> Result<()> {
    let path = models::resolve(&a.model)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let m = medinfer_onnx::decode_model(&bytes, &path.display().to_string())?;
    let info = medinfer_onnx::analyze(&m, Some(&bytes));
    let mut given: HashMap<String, Tensor> = HashMap::new();
    for spec in &a.inputs {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) => (n.to_string(), f.to_string()),
            None if info.inputs.len() == 1 => (info.inputs[0].name.clone(), spec.clone()),
            None => bail!(
                "{spec}: the model has {} inputs; write NAME=FILE.npy",
                info.inputs.len()
            ),
        };
        if !info.inputs.iter().any(|i| i.name == name) {
            bail!(
                "the model has no input '{name}' (inputs: {})",
                info.inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        given.insert(name, medinfer_io::npy::read(Path::new(&file))?);
    }
    let mut ordered = Vec::new();
    let mut input_shapes = HashMap::new();
    for i in &info.inputs {
        let t = given.remove(&i.name).ok_or_else(|| {
            anyhow!(
                "missing input '{}' (give --input {}=FILE.npy)",
                i.name,
                i.name
            )
        })?;
        input_shapes.insert(i.name.clone(), t.shape().to_vec());
        ordered.push(t);
    }
    let opts = SessionOptions {
        precision: Precision::parse(&a.precision)
            .ok_or_else(|| anyhow!("unknown precision '{}' (fp32 or bf16)", a.precision))?,
        threads: a.threads,
        input_shapes,
        ..Default::default()
    };
    let session = medinfer_engine::load(&a.backend, &path, &opts)?;
    let t = std::time::Instant::now();
    let outputs = session.run(&ordered)?;
    let elapsed_ms = t.elapsed().as_secs_f64() * 1e3;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    #[derive(Serialize)]
    struct Out {
        name: String,
        file: PathBuf,
        dtype: String,
        shape: Vec<usize>,
        min: f64,
        max: f64,
        mean: f64,
    }
    let mut written = Vec::new();
    for (spec, t) in session.outputs().iter().zip(&outputs) {
        let file = a
            .output
            .join(format!("{}.npy", medinfer_io::npy::safe_name(&spec.name)));
        medinfer_io::npy::write(&file, t)?;
        let v = t.to_f64_vec();
        let (min, max) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        written.push(Out {
            name: spec.name.clone(),
            file,
            dtype: t.dtype().to_string(),
            shape: t.shape().to_vec(),
            min,
            max,
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
        });
    }
    if a.json {
        #[derive(Serialize)]
        struct Summary<'a> {
            model: String,
            model_sha256: String,
            session: &'a medinfer_engine::SessionInfo,
            inference_ms: f64,
            outputs: Vec<Out>,
        }
        return print_json(&Summary {
            model: path.display().to_string(),
            model_sha256: info.sha256,
            session: session.info(),
            inference_ms: elapsed_ms,
            outputs: written,
        });
    }
    let si = session.info();
    println!(
        "{} on {} {} ({}, {} thread(s)) in {elapsed_ms:.1} ms",
        path.display(),
        si.backend,
        si.backend_version,
        si.effective_precision,
        si.threads
    );
    for o in written {
        println!(
            "  {} {} {:?} -> {} (min {:.4}, max {:.4}, mean {:.4})",
            o.name,
            o.dtype,
            o.shape,
            o.file.display(),
            o.min,
            o.max,
            o.mean
        );
    }
    Ok(())
}
