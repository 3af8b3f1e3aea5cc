//! `medinfer run segment`: 3-D segmentation of a volume with the user's model (sliding window
//! with MONAI's semantics), a NIfTI mask on the input's grid, label volumes and an overlay.

use crate::args::{bar, print_json, EngineArgs};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use medinfer_pipelines::models::ModelId;
use medinfer_pipelines::segment::{self, config::SegmentConfig, SegmentModel, SegmentRequest};
use std::path::PathBuf;

/// Blending of overlapping windows.
#[derive(Clone, Copy, ValueEnum)]
pub enum BlendArg {
    /// Every voxel of a window weighs the same (MONAI's default).
    Constant,
    /// A Gaussian centred on the window (sigma = sigma_scale x ROI).
    Gaussian,
}

#[derive(Args)]
pub struct RunSegmentArgs {
    /// The volume: a NIfTI file (.nii / .nii.gz; 4-D = one volume per model input channel),
    /// or a DICOM series (a folder, or one of its files).
    pub volume: PathBuf,
    /// The segmentation model: ONNX taking (batch, channels, D0, D1, D2) and giving (batch,
    /// classes, D0, D1, D2) on the same window.
    #[arg(short, long)]
    pub model: PathBuf,
    /// The model's config (medinfer JSON, or a MONAI bundle's metadata.json); default
    /// MODEL.json beside the model, then a bundle's configs/metadata.json. It gives the
    /// orientation (axis codes such as RAS), voxel size, axis order, normalisation, labels,
    /// activation and sliding-window settings: see docs/segment.md.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Output folder (created): mask.nii.gz, overlay.png, report.json.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Keep only the largest connected component of each label (default: the config's
    /// postprocess.largest_component, else off).
    #[arg(long)]
    pub largest_component: bool,
    /// Window overlap in [0, 1) (default: the config's, else MONAI's 0.25).
    #[arg(long)]
    pub overlap: Option<f64>,
    /// Window blending (default: the config's, else constant).
    #[arg(long, value_enum)]
    pub blend: Option<BlendArg>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RunSegmentArgs) -> Result<()> {
    let mut cfg = SegmentConfig::for_model(&a.model, a.config.as_deref())?;
    if a.largest_component {
        cfg.postprocess.largest_component = Some(true);
    }
    if let Some(o) = a.overlap {
        if !(0.0..1.0).contains(&o) {
            bail!("--overlap {o}: must be in [0, 1)");
        }
        cfg.sliding_window.overlap = Some(serde_json::json!(o));
    }
    if let Some(b) = a.blend {
        cfg.sliding_window.mode = Some(
            match b {
                BlendArg::Constant => "constant",
                BlendArg::Gaussian => "gaussian",
            }
            .into(),
        );
    }
    let model = SegmentModel::resolve(&a.model, &cfg, a.engine.batch)?;
    let session = a.engine.session_shaped(
        &a.model,
        model.sw_batch,
        None,
        None,
        model.input_shapes.clone(),
    )?;
    let streams = session.info().streams.max(1);
    let req = SegmentRequest {
        input: a.volume.clone(),
        output: a.output.clone(),
        streams,
    };
    let pb = bar(0, "windows", a.json);
    let progress = |done: usize, total: usize| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    };
    let report = segment::run(&req, &session, &model, ModelId::of(&a.model)?, &progress)?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&report);
    }
    let g = &report.input_grid;
    let m = &report.model_grid;
    println!(
        "{}: {} x {} x {} voxels of {:.2} x {:.2} x {:.2} mm ({})",
        report.input,
        g.dims[0],
        g.dims[1],
        g.dims[2],
        g.spacing_mm[0],
        g.spacing_mm[1],
        g.spacing_mm[2],
        g.orientation
    );
    println!(
        "model grid {} x {} x {} of {:.2} x {:.2} x {:.2} mm ({}); {} windows of {:?} on {} ({} streams)",
        m.dims[0],
        m.dims[1],
        m.dims[2],
        m.spacing_mm[0],
        m.spacing_mm[1],
        m.spacing_mm[2],
        m.orientation,
        report.windows,
        report.settings.roi,
        report.backend,
        streams
    );
    println!(
        "{:<24} {:>6} {:>12} {:>12}",
        "label", "value", "voxels", "volume ml"
    );
    for l in &report.labels {
        println!(
            "{:<24} {:>6} {:>12} {:>12.2}{}",
            l.name,
            l.value,
            l.voxels,
            l.volume_ml,
            if l.removed_voxels > 0 {
                format!(
                    "  ({} voxels outside the largest component removed)",
                    l.removed_voxels
                )
            } else {
                String::new()
            }
        );
    }
    let t = &report.timings;
    println!(
        "time {:.2} s: read {:.2}, preprocess {:.2}, inference {:.2}, postprocess {:.2}, write {:.2}",
        t.total_s, t.read_s, t.preprocess_s, t.inference_s, t.postprocess_s, t.write_s
    );
    println!("written to {}", a.output.display());
    Ok(())
}
