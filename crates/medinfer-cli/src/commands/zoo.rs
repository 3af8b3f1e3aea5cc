//! `medinfer zoo`: the seeded reference models (untrained weights, for speed work).

use crate::args::print_json;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use medinfer_core::Tensor;
use medinfer_onnx::zoo;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ZooCommand {
    /// List the zoo models.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a zoo model into an ONNX file (byte-identical on every build).
    Build {
        /// Zoo model name (see `medinfer zoo list`).
        name: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Trained parameters instead of seeded ones: a folder with one NAME.npy (float32) per
        /// initializer of the graph (e.g. enc1.0.conv.weight.npy), as training/cardiac/train.py
        /// writes them. Missing, extra or wrongly sized parameters are an error.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// What the trained weights are (stored in the model's medinfer.weights metadata).
        #[arg(long, requires = "weights", default_value = "trained")]
        weights_note: String,
    },
    /// Write synthetic image-like input samples for a zoo model (calibration / validation data
    /// for speed work): one .npy per sample.
    Samples(SamplesArgs),
}

#[derive(Args)]
pub struct SamplesArgs {
    /// Zoo model name.
    pub name: String,
    /// Output folder (one sample_NNNN.npy per sample).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 300)]
    pub count: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn samples(a: SamplesArgs) -> Result<()> {
    let e = medinfer_onnx::zoo::entry(&a.name)?;
    let samples = medinfer_onnx::zoo::sample_inputs(&a.name, a.count, a.seed)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let shape = e.input_shape[1..].to_vec();
    for (i, s) in samples.into_iter().enumerate() {
        let t = Tensor::from_f32(shape.clone(), s)?;
        medinfer_io::npy::write(&a.output.join(format!("sample_{i:04}.npy")), &t)?;
    }
    eprintln!(
        "wrote {} samples {:?} to {}",
        a.count,
        shape,
        a.output.display()
    );
    Ok(())
}

pub fn run(c: ZooCommand) -> Result<()> {
    match c {
        ZooCommand::List { json } => {
            #[derive(Serialize)]
            struct Row<'a> {
                name: &'a str,
                description: &'a str,
                stands_for: &'a str,
                input_shape: [usize; 4],
            }
            let rows: Vec<Row> = zoo::ENTRIES
                .iter()
                .map(|e| Row {
                    name: e.name,
                    description: e.description,
                    stands_for: e.stands_for,
                    input_shape: e.input_shape,
                })
                .collect();
            if json {
                return print_json(&rows);
            }
            for r in rows {
                println!(
                    "{:<16} {:<18} {}",
                    r.name,
                    format!("{:?}", r.input_shape),
                    r.description
                );
            }
            println!("(batch is a dynamic dimension; the shape shows the nominal batch. Weights are seeded and untrained.)");
            Ok(())
        }
        ZooCommand::Samples(a) => samples(a),
        ZooCommand::Build {
            name,
            output,
            weights,
            weights_note,
        } => {
            let m = match weights {
                None => zoo::build(&name)?,
                Some(dir) => zoo::build_trained(&name, read_weights(&dir)?, &weights_note)?,
            };
            medinfer_onnx::save_model(&m, &output)?;
            let info = medinfer_onnx::analyze(&m, None);
            eprintln!(
                "wrote {} ({:.1} MB, {} trainable parameters, sha256 {})",
                output.display(),
                info.file_size as f64 / 1e6,
                info.trainable_parameters,
                info.sha256
            );
            Ok(())
        }
    }
}

/// Reads every NAME.npy in `dir` as float32 parameters keyed by NAME.
fn read_weights(dir: &Path) -> Result<HashMap<String, Vec<f32>>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".npy"))
        else {
            continue;
        };
        let t = medinfer_io::npy::read(&path)?;
        let v = t
            .as_f32()
            .with_context(|| format!("{}: parameters must be float32", path.display()))?
            .to_vec();
        out.insert(name.to_string(), v);
    }
    if out.is_empty() {
        bail!("{}: no .npy parameter files", dir.display());
    }
    Ok(out)
}
