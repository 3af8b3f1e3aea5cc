//! Volumetric segmentation (`medinfer run segment`): an nnU-Net / MONAI-style 3-D model over a
//! CT or MRI volume, end to end.
//!
//! 1. **read** a NIfTI file or a DICOM series (a 4-D file gives one input channel per volume,
//!    and must have as many volumes as the model has channels);
//! 2. **reorient** to the model's axis codes (exact: axes permuted and flipped, as nibabel's
//!    `apply_orientation` / MONAI's `Orientationd`), **resample** to the model's voxel size
//!    (separable linear, half-voxel centres, the field of view kept), **normalise** per channel
//!    as the config says ([`config::SegmentConfig`]);
//! 3. **sliding-window inference** with MONAI's semantics ([`crate::sliding`]), windows
//!    batched and spread over the engine's streams; the blended output is taken plane by plane
//!    as soon as no later window touches it;
//! 4. each plane's scores become probabilities (softmax / sigmoid), which are **resampled back**
//!    to the input grid (trilinear, two model planes held at a time) and turned into labels
//!    (arg-max, or thresholds per channel); the labels go back to the stored orientation;
//! 5. optionally the **largest connected component** of each label is kept;
//! 6. **outputs**: `mask.nii.gz` (uint8 labels on the input's own grid and affine), the volume
//!    of each label in ml, `overlay.png` (axial, coronal and sagittal views through the
//!    segmentation's centroid, radiological display), `report.json`.
//!
//! Memory is bounded by the volume, not by the model's output: the input (float32), a uint8
//! display copy, the model-grid input, a window's depth of output planes and the uint8 labels;
//! never the K-channel output volume MONAI's `sliding_window_inference` allocates (figures in
//! docs/benchmarks.md).

pub mod config;
pub mod grid;

use crate::config::{Activation, Normalization};
use crate::models::ModelId;
use crate::PipelineError;
use config::{GridOrientation, SegmentConfig};
use grid::{BackResampler, Reorientation};
use medinfer_core::Tensor;
use medinfer_engine::Session;
use medinfer_onnx::Dim;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A model checked against its config: everything the pipeline needs, concrete.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentModel {
    /// Where the config came from.
    pub config_source: String,
    /// Input channels.
    pub channels: usize,
    /// Output channels (K).
    pub classes: usize,
    /// Window size, tensor order.
    pub roi: [usize; 3],
    /// Windows per model call.
    pub sw_batch: usize,
    /// Model grid orientation (`stored` or codes).
    pub orientation: String,
    /// Tensor axis order (`xyz` or `zyx`).
    pub axis_order: String,
    /// Model voxel size, mm (grid axes), when the pipeline resamples.
    pub spacing_mm: Option<[f64; 3]>,
    /// `channels_first` or `channels_last`.
    pub layout: String,
    /// Largest input voxel anisotropy resampled.
    pub max_anisotropy: f64,
    /// Intensity normalisation.
    pub normalization: Normalization,
    /// Output activation.
    pub activation: Activation,
    /// Label names by output channel.
    pub labels: Vec<String>,
    /// Threshold per channel (sigmoid / one-channel outputs).
    pub thresholds: Vec<f32>,
    /// Keep each label's largest component.
    pub largest_component: bool,
    /// Session input shapes for a model with dynamic dimensions.
    #[serde(skip)]
    pub input_shapes: HashMap<String, Vec<usize>>,
    #[serde(skip)]
    grid: GridOrientation,
    #[serde(skip)]
    window: crate::sliding::SlidingWindow,
    #[serde(skip)]
    pad_smaller: bool,
}

impl SegmentModel {
    /// Checks `cfg` against the model file: one `N x C x D0 x D1 x D2` input, an output of
    /// K channels on the window's grid; dynamic dimensions taken from the config.
    /// `sw_batch` overrides the config's `sw_batch_size`.
    pub fn resolve(
        model: &Path,
        cfg: &SegmentConfig,
        sw_batch: Option<usize>,
    ) -> Result<SegmentModel, PipelineError> {
        let m = medinfer_onnx::load_model(model).map_err(medinfer_engine::EngineError::from)?;
        let info = medinfer_onnx::analyze(&m, None);
        let bad = |reason: String| PipelineError::Model {
            model: model.display().to_string(),
            reason: format!("{reason} (config: {})", cfg.source),
        };
        let fixed = |d: &Dim| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Dynamic(_) => None,
        };
        let last = match cfg.input.layout.as_deref().unwrap_or("channels_first") {
            "channels_first" => false,
            "channels_last" => true,
            other => {
                return Err(bad(format!(
                    "input.layout '{other}': channels_first or channels_last"
                )))
            }
        };
        let (c_axis, sp_axes) = if last { (4, [1, 2, 3]) } else { (1, [2, 3, 4]) };
        if info.inputs.len() != 1 || info.inputs[0].shape.len() != 5 {
            let shapes: Vec<Vec<String>> = info
                .inputs
                .iter()
                .map(|i| i.shape.iter().map(|d| d.to_string()).collect())
                .collect();
            return Err(bad(format!(
                "takes {} input(s) of shape {shapes:?}; run segment feeds one (batch, channels, D0, D1, D2) volume (2-D models: run cardiac / ct, or give the slices yourself to infer)",
                info.inputs.len()
            )));
        }
        let inp = &info.inputs[0];
        let channels = match (fixed(&inp.shape[c_axis]), cfg.input.channels) {
            (Some(m), Some(c)) if m != c => {
                return Err(bad(format!(
                    "the config says {c} channels, the model's input has {m}"
                )))
            }
            (Some(m), _) => m,
            (None, Some(c)) => c,
            (None, None) => 1,
        };
        let mut roi = [0usize; 3];
        for d in 0..3 {
            roi[d] = match (
                fixed(&inp.shape[sp_axes[d]]),
                cfg.sliding_window.roi.map(|r| r[d]),
            ) {
                (Some(m), Some(c)) if m != c => {
                    return Err(bad(format!(
                        "the config's roi {:?} differs from the model's fixed input {:?}",
                        cfg.sliding_window.roi.unwrap_or_default(),
                        sp_axes.map(|a| inp.shape[a].to_string())
                    )))
                }
                (Some(m), _) => m,
                (None, Some(c)) if c > 0 => c,
                _ => return Err(bad(
                    "the model's spatial input is dynamic: give sliding_window.roi in the config"
                        .into(),
                )),
            };
        }
        let window = cfg.window(roi)?;
        let sw_batch = match (fixed(&inp.shape[0]), sw_batch) {
            (Some(m), Some(b)) if m != b => {
                return Err(bad(format!(
                    "the model's batch is fixed at {m}; --batch {b} cannot be used"
                )))
            }
            (Some(m), _) => m,
            (None, Some(b)) => b,
            (None, None) => window.sw_batch,
        };
        let out = info
            .outputs
            .first()
            .ok_or_else(|| bad("has no output".into()))?;
        if out.shape.len() != 5 {
            return Err(bad(format!(
                "its output has rank {}; run segment needs (batch, classes, D0, D1, D2)",
                out.shape.len()
            )));
        }
        let classes = match (fixed(&out.shape[c_axis]), cfg.labels.len()) {
            (Some(n), l) if l > 0 && n != l => {
                return Err(bad(format!(
                    "the model gives {n} output channels, the config names {l} labels"
                )))
            }
            (Some(n), _) => n,
            (None, l) if l > 0 => l,
            (None, _) => {
                return Err(bad(
                    "the model's output channels are dynamic: name the labels in the config".into(),
                ))
            }
        };
        let activation = match (cfg.output.activation, classes) {
            (Some(Activation::Softmax), 1) => {
                return Err(bad(
                    "softmax over one output channel is always 1: use sigmoid (logits) or logits (probabilities)".into(),
                ))
            }
            (Some(a), _) => a,
            (None, 1) => {
                return Err(bad(
                    "one output channel: say output.activation in the config, sigmoid (the model gives logits) or logits (it gives probabilities)".into(),
                ))
            }
            (None, _) => Activation::Softmax,
        };
        if classes > 254 {
            return Err(bad(format!(
                "{classes} output channels: at most 254 labels"
            )));
        }
        let thresholds: Vec<f32> = match &cfg.output.thresholds {
            Some(t) if t.len() != classes => {
                return Err(bad(format!(
                    "{} thresholds for {classes} output channels",
                    t.len()
                )))
            }
            Some(t) => t.iter().map(|v| v.unwrap_or(0.5)).collect(),
            None => vec![0.5; classes],
        };
        let labels = if cfg.labels.is_empty() {
            (0..classes).map(|k| format!("label_{k}")).collect()
        } else {
            cfg.labels.clone()
        };
        let grid = GridOrientation::parse(cfg.input.orientation.as_deref().unwrap_or("stored"))
            .map_err(bad)?;
        let axis_order = cfg.input.axis_order.clone().unwrap_or_else(|| "xyz".into());
        if axis_order != "xyz" && axis_order != "zyx" {
            return Err(bad(format!("input.axis_order '{axis_order}': xyz or zyx")));
        }
        if let Some(s) = cfg.input.spacing_mm {
            if !s.iter().all(|v| *v > 0.0 && *v < 1000.0) {
                return Err(bad(format!("spacing_mm {s:?} is not plausible")));
            }
        }
        let max_anisotropy = cfg.input.max_anisotropy.unwrap_or(3.0);
        if max_anisotropy.is_nan() || max_anisotropy < 1.0 {
            return Err(bad(format!("max_anisotropy {max_anisotropy} must be >= 1")));
        }
        let normalization = cfg.normalization.unwrap_or(Normalization::None);
        match normalization {
            Normalization::Range { min, max, .. }
                if min.partial_cmp(&max) != Some(std::cmp::Ordering::Less) =>
            {
                return Err(bad(format!("range [{min}, {max}] must have min < max")));
            }
            Normalization::Window { width, .. } if width.is_nan() || width < 1.0 => {
                return Err(bad(format!("window width {width} must be >= 1")));
            }
            _ => {}
        }
        if normalization == Normalization::Xrv {
            return Err(bad("the xrv normalisation is for chest X-rays".into()));
        }
        let mut input_shapes = HashMap::new();
        if inp.shape.iter().any(|d| fixed(d).is_none()) {
            let shape = if last {
                vec![sw_batch, roi[0], roi[1], roi[2], channels]
            } else {
                vec![sw_batch, channels, roi[0], roi[1], roi[2]]
            };
            input_shapes.insert(inp.name.clone(), shape);
        }
        Ok(SegmentModel {
            config_source: cfg.source.clone(),
            channels,
            classes,
            roi,
            sw_batch,
            orientation: grid.name(),
            axis_order,
            spacing_mm: cfg.input.spacing_mm,
            layout: if last {
                "channels_last"
            } else {
                "channels_first"
            }
            .into(),
            max_anisotropy,
            normalization,
            activation,
            labels,
            thresholds,
            largest_component: cfg.postprocess.largest_component.unwrap_or(false),
            input_shapes,
            grid,
            window: crate::sliding::SlidingWindow { sw_batch, ..window },
            pad_smaller: cfg.sliding_window.pad_smaller.unwrap_or(false),
        })
    }

    /// The label value and name of each label: softmax / multi-channel logits give channel k
    /// the value k (channel 0 background); sigmoid / one-channel outputs give channel k the
    /// value k + 1 (0 is background).
    pub fn label_values(&self) -> Vec<(u8, String)> {
        let shift = u8::from(self.thresholded());
        self.labels
            .iter()
            .enumerate()
            .map(|(k, n)| (k as u8 + shift, n.clone()))
            .filter(|(v, _)| *v > 0)
            .collect()
    }

    fn thresholded(&self) -> bool {
        self.activation == Activation::Sigmoid || self.classes == 1
    }
}

/// One run.
#[derive(Clone, Debug)]
pub struct SegmentRequest {
    /// A NIfTI file or a DICOM series (file or folder).
    pub input: PathBuf,
    /// Output folder (created).
    pub output: PathBuf,
    /// Model calls in flight at once (the session's streams).
    pub streams: usize,
}

/// The volume of one label.
#[derive(Clone, Debug, Serialize)]
pub struct LabelVolume {
    /// Name.
    pub name: String,
    /// Value in the mask.
    pub value: u8,
    /// Voxels on the input grid.
    pub voxels: usize,
    /// Volume, ml.
    pub volume_ml: f64,
    /// Voxels removed by the largest-component step.
    pub removed_voxels: usize,
}

/// Geometry of a grid.
#[derive(Clone, Debug, Serialize)]
pub struct GridInfo {
    /// Voxels per axis.
    pub dims: [usize; 3],
    /// Voxel size, mm.
    pub spacing_mm: [f64; 3],
    /// Axis codes.
    pub orientation: String,
}

/// Seconds per stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Reading the input.
    pub read_s: f64,
    /// Reorientation, resampling, normalisation.
    pub preprocess_s: f64,
    /// Sliding-window inference with the back-resampling done as planes complete.
    pub inference_s: f64,
    /// Labels back to the stored grid, components, volumes.
    pub postprocess_s: f64,
    /// Writing the mask, overlay and report.
    pub write_s: f64,
    /// All of it.
    pub total_s: f64,
}

/// What `run segment` reports (also `report.json`).
#[derive(Clone, Debug, Serialize)]
pub struct SegmentReport {
    /// The input.
    pub input: String,
    /// The input grid as stored.
    pub input_grid: GridInfo,
    /// The grid the model saw.
    pub model_grid: GridInfo,
    /// The model file.
    pub model: ModelId,
    /// The settings used.
    pub settings: SegmentModel,
    /// The engine.
    pub backend: String,
    /// Windows run.
    pub windows: usize,
    /// Label volumes.
    pub labels: Vec<LabelVolume>,
    /// Written files.
    pub mask: String,
    /// The overlay PNG.
    pub overlay: String,
    /// Seconds per stage.
    pub timings: Timings,
}

fn input_err(input: &Path, reason: impl Into<String>) -> PipelineError {
    PipelineError::input(input.display().to_string(), reason)
}

/// Runs the pipeline. `progress(done, total)` is called after every model call.
pub fn run(
    req: &SegmentRequest,
    session: &Session,
    model: &SegmentModel,
    model_id: ModelId,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<SegmentReport, PipelineError> {
    let t_all = Instant::now();
    let mut timings = Timings::default();
    let t = Instant::now();
    let vol = medinfer_io::read_volume(&req.input)?;
    timings.read_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let [nx, ny, nz, nt] = vol.dims;
    let stored = [nx, ny, nz];
    if nt != model.channels {
        return Err(input_err(
            &req.input,
            if nt > 1 {
                format!(
                    "is 4-D ({nx} x {ny} x {nz} x {nt} volumes); the model takes {} channel(s) of one 3-D volume: extract the volume to segment (e.g. fslroi / nibabel's slicer) or give a model with {nt} input channels",
                    model.channels
                )
            } else {
                format!(
                    "is one 3-D volume; the model takes {} channels (give a 4-D file with one volume per channel)",
                    model.channels
                )
            },
        ));
    }
    if stored.iter().filter(|&&d| d > 1).count() < 3 {
        return Err(input_err(
            &req.input,
            format!("is {nx} x {ny} x {nz}: not a 3-D volume (a 2-D image cannot be segmented by a 3-D model)"),
        ));
    }
    let sp = [vol.spacing[0], vol.spacing[1], vol.spacing[2]];
    let reo = Reorientation::new(stored, &vol.affine, model.grid);
    let oriented_sp = [sp[reo.perm[0]], sp[reo.perm[1]], sp[reo.perm[2]]];
    let model_dims = match model.spacing_mm {
        None => reo.oriented,
        Some(want) => {
            let (lo, hi) = sp
                .iter()
                .fold((f64::INFINITY, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
            if lo.is_nan() || lo <= 0.0 || hi / lo > model.max_anisotropy {
                return Err(input_err(
                    &req.input,
                    format!(
                        "voxels of {:.2} x {:.2} x {:.2} mm are {:.1}x anisotropic; resampling to the model's {:?} mm would invent what the thick slices do not hold (the config allows {:.1}x: input.max_anisotropy)",
                        sp[0], sp[1], sp[2], hi / lo.max(1e-9), want, model.max_anisotropy
                    ),
                ));
            }
            let mut d = [0usize; 3];
            for a in 0..3 {
                d[a] =
                    ((reo.oriented[a] as f64 * oriented_sp[a] / want[a]).round() as usize).max(1);
            }
            d
        }
    };
    let xyz = model.axis_order == "xyz";
    let tensor_dims = |d: [usize; 3]| if xyz { d } else { [d[2], d[1], d[0]] };
    let spatial = tensor_dims(model_dims);
    if let Some(a) = (0..3).find(|&a| spatial[a] < model.roi[a]) {
        if !model.pad_smaller {
            return Err(input_err(
                &req.input,
                format!(
                    "on the model's grid ({} mm) the volume is {spatial:?} voxels, smaller than the model's window {:?} along dimension {a}: it is not the anatomy this model was made for; set sliding_window.pad_smaller in the config to pad it as MONAI does",
                    model
                        .spacing_mm
                        .map_or("as stored".to_string(), |s| format!("{s:?}")),
                    model.roi
                ),
            ));
        }
    }
    // Display copy (uint8, first channel) for the overlay: 0.5 - 99.5th percentile window.
    let vox = nx * ny * nz;
    let (lo, hi) = {
        let s: Vec<f32> = vol.data[..vox]
            .iter()
            .step_by((vox / 200_000).max(1))
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let q = |p: f64| medinfer_core::preprocess::percentile(&s, p).unwrap_or(0.0);
        (q(0.5), q(99.5))
    };
    let scale = 255.0 / (hi - lo).max(1e-6);
    let display: Vec<u8> = vol.data[..vox]
        .iter()
        .map(|v| ((v - lo) * scale).clamp(0.0, 255.0) as u8)
        .collect();
    let affine = vol.affine;
    // Per channel: resample, reorient, normalise. Resampled on the stored axes first (the
    // flips commute with half-voxel-centre resampling), then reoriented: the copy that moves
    // the axes is of the smaller grid.
    let mut on_stored = [0usize; 3];
    for t in 0..3 {
        on_stored[reo.perm[t]] = model_dims[t];
    }
    let reo_resampled = Reorientation {
        stored: on_stored,
        oriented: model_dims,
        ..reo.clone()
    };
    let mut data = vol.data;
    let model_vox: usize = model_dims.iter().product();
    let mut x: Vec<f32> = Vec::with_capacity(model.channels * model_vox);
    for c in 0..model.channels {
        let chan: Vec<f32> = if model.channels == 1 {
            std::mem::take(&mut data)
        } else {
            data[c * vox..(c + 1) * vox].to_vec()
        };
        let chan = grid::resample(chan, stored, on_stored);
        let mut chan = if reo.is_identity() {
            chan
        } else {
            reo_resampled.apply(&chan)
        };
        if chan.iter().any(|v| !v.is_finite()) {
            return Err(input_err(&req.input, "holds NaN or infinite values"));
        }
        model
            .normalization
            .apply(&mut chan)
            .map_err(|e| input_err(&req.input, e.to_string()))?;
        // xyz: the tensor's first dimension is the grid's first (fastest) axis; the windows
        // are gathered from this order as it is (no transposed copy).
        if model.channels == 1 {
            x = chan;
        } else {
            x.extend_from_slice(&chan);
        }
    }
    drop(data);
    timings.preprocess_s = t.elapsed().as_secs_f64();

    // Sliding windows; each finished plane to probabilities, back to the input grid, labels.
    let t = Instant::now();
    let sw = crate::sliding::SlidingWindow {
        streams: req.streams.max(1),
        ..model.window.clone()
    };
    let windows = sw.plan(&spatial)?.starts.len();
    let calls = windows.div_ceil(model.sw_batch);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let last = model.layout == "channels_last";
    let predict = |t: Tensor| -> Result<Tensor, PipelineError> {
        let t = if last { move_channels(t, true)? } else { t };
        let mut out = session.run(&[t])?;
        if out.is_empty() {
            return Err(PipelineError::Batch("the model returned no output".into()));
        }
        if last {
            let y = out.swap_remove(0);
            out = vec![move_channels(y, false)?];
        }
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(n, calls);
        Ok(out.swap_remove(0))
    };
    let k = model.classes;
    let (activation, thresholds) = (model.activation, model.thresholds.clone());
    let thresholded = model.thresholded();
    let decide = move |v: &[f32]| -> u8 {
        if thresholded {
            let mut best = (0u8, f32::NEG_INFINITY);
            for (c, (&p, &t)) in v.iter().zip(&thresholds).enumerate() {
                if p > t && p > best.1 {
                    best = (c as u8 + 1, p);
                }
            }
            best.0
        } else {
            let mut best = 0;
            for c in 1..v.len() {
                if v[c] > v[best] {
                    best = c;
                }
            }
            best as u8
        }
    };
    let input_tensor_dims = tensor_dims(reo.oriented);
    let mut back = BackResampler::new(k, spatial, input_tensor_dims, decide);
    let plane_len = spatial[1] * spatial[2];
    let mut sink = |z: usize, kk: usize, plane: &[f32]| -> Result<(), PipelineError> {
        if kk != k {
            return Err(PipelineError::Model {
                model: model_id.path.clone(),
                reason: format!("gives {kk} output channels; the config says {k}"),
            });
        }
        let mut p = plane.to_vec();
        activate(&mut p, k, plane_len, activation);
        back.push(z, p);
        Ok(())
    };
    sw.run_planes(&x, model.channels, &spatial, xyz, &predict, &mut sink)?;
    drop(x);
    if !back.is_complete() {
        return Err(PipelineError::Batch(
            "the sliding window did not cover the volume".into(),
        ));
    }
    timings.inference_s = t.elapsed().as_secs_f64();

    // Back to the stored grid; components; volumes.
    let t = Instant::now();
    let labels = grid::from_tensor_order(std::mem::take(&mut back.labels), reo.oriented, xyz);
    let mut labels = if reo.is_identity() {
        labels
    } else {
        reo.invert(&labels)
    };
    let voxel_ml = det3(&affine).abs() / 1000.0;
    let label_values = model.label_values();
    let removed: Vec<usize> = label_values
        .iter()
        .map(|&(value, _)| {
            if model.largest_component {
                grid::keep_largest(&mut labels, stored, value)
            } else {
                0
            }
        })
        .collect();
    // Every label's voxels in one pass.
    let mut histogram = [0usize; 256];
    for &v in &labels {
        histogram[v as usize] += 1;
    }
    let volumes: Vec<LabelVolume> = label_values
        .into_iter()
        .zip(removed)
        .map(|((value, name), removed_voxels)| {
            let voxels = histogram[value as usize];
            LabelVolume {
                name,
                value,
                voxels,
                volume_ml: voxels as f64 * voxel_ml,
                removed_voxels,
            }
        })
        .collect();
    timings.postprocess_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    std::fs::create_dir_all(&req.output).map_err(|e| PipelineError::output(&req.output, e))?;
    let mask_path = req.output.join("mask.nii.gz");
    medinfer_io::nifti::write_labels(&mask_path, stored, &affine, &labels)?;
    let overlay_path = req.output.join("overlay.png");
    write_overlay(&overlay_path, &display, &labels, stored, &affine)?;
    timings.write_s = t.elapsed().as_secs_f64();
    timings.total_s = t_all.elapsed().as_secs_f64();
    let input_orientation = GridOrientation::Codes(grid::axis_codes(&affine));
    let report = SegmentReport {
        input: req.input.display().to_string(),
        input_grid: GridInfo {
            dims: stored,
            spacing_mm: sp,
            orientation: input_orientation.name(),
        },
        model_grid: GridInfo {
            dims: model_dims,
            spacing_mm: model.spacing_mm.unwrap_or(oriented_sp),
            orientation: match model.grid {
                GridOrientation::Stored => input_orientation.name(),
                g => g.name(),
            },
        },
        model: model_id,
        settings: model.clone(),
        backend: session.info().backend.to_string(),
        windows,
        labels: volumes,
        mask: mask_path.display().to_string(),
        overlay: overlay_path.display().to_string(),
        timings,
    };
    let json =
        serde_json::to_string_pretty(&report).map_err(|e| PipelineError::Batch(e.to_string()))?;
    let report_path = req.output.join("report.json");
    std::fs::write(&report_path, json).map_err(|e| PipelineError::output(&report_path, e))?;
    Ok(report)
}

/// `B x C x spatial` to `B x spatial x C` (`to_last`), or back.
fn move_channels(t: Tensor, to_last: bool) -> Result<Tensor, PipelineError> {
    let shape = t.shape().to_vec();
    let bad = |e: String| PipelineError::Batch(format!("channels-last window {shape:?}: {e}"));
    if shape.len() < 3 {
        return Err(bad("too few dimensions".into()));
    }
    let (b, c_axis) = (shape[0], if to_last { 1 } else { shape.len() - 1 });
    let c = shape[c_axis];
    let n: usize = shape[1..].iter().product::<usize>() / c.max(1);
    let mut new_shape = vec![b];
    if to_last {
        new_shape.extend_from_slice(&shape[2..]);
        new_shape.push(c);
    } else {
        new_shape.push(c);
        new_shape.extend_from_slice(&shape[1..shape.len() - 1]);
    }
    let x = t.as_f32().map_err(|e| bad(e.to_string()))?;
    let data = if c == 1 {
        x.to_vec()
    } else {
        let mut out = vec![0f32; x.len()];
        for bi in 0..b {
            let (src, dst) = (&x[bi * c * n..][..c * n], &mut out[bi * c * n..][..c * n]);
            for ci in 0..c {
                for i in 0..n {
                    if to_last {
                        dst[i * c + ci] = src[ci * n + i];
                    } else {
                        dst[ci * n + i] = src[i * c + ci];
                    }
                }
            }
        }
        out
    };
    Tensor::from_f32(new_shape, data).map_err(|e| bad(e.to_string()))
}

/// Scores of one plane (`k` channels of `n` voxels) to probabilities in place.
fn activate(p: &mut [f32], k: usize, n: usize, a: Activation) {
    match a {
        Activation::Logits => {}
        Activation::Sigmoid => p.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Softmax => {
            for i in 0..n {
                let m = (0..k)
                    .map(|c| p[c * n + i])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for c in 0..k {
                    let e = (p[c * n + i] - m).exp();
                    p[c * n + i] = e;
                    sum += e;
                }
                for c in 0..k {
                    p[c * n + i] /= sum;
                }
            }
        }
    }
}

fn det3(a: &[[f64; 4]; 4]) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

/// Axial, coronal and sagittal views through the labelled voxels' centroid (the volume's
/// centre when nothing is labelled), radiological display (patient right on the image's left,
/// anterior / superior up), square pixels, labels blended over the windowed image.
fn write_overlay(
    path: &Path,
    display: &[u8],
    labels: &[u8],
    stored: [usize; 3],
    affine: &[[f64; 4]; 4],
) -> Result<(), PipelineError> {
    // On an LPS grid: x to the patient's left, y to posterior, z to superior.
    let reo = Reorientation::new(
        stored,
        affine,
        GridOrientation::Codes([(0, -1), (1, -1), (2, 1)]),
    );
    // The three slices are sampled through the reorientation; the volumes are not copied.
    let d = reo.oriented;
    let a2 = reo.affine(affine);
    let sp: Vec<f64> = (0..3)
        .map(|c| {
            (0..3)
                .map(|r| a2[r][c].powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-6)
        })
        .collect();
    // The labelled voxels' centroid, on the stored grid, then on the display grid.
    let (mut sum, mut n) = ([0f64; 3], 0usize);
    for (i, &v) in labels.iter().enumerate() {
        if v != 0 {
            sum[0] += (i % stored[0]) as f64;
            sum[1] += ((i / stored[0]) % stored[1]) as f64;
            sum[2] += (i / (stored[0] * stored[1])) as f64;
            n += 1;
        }
    }
    let c: Vec<usize> = (0..3)
        .map(|t| {
            if n == 0 {
                return d[t] / 2;
            }
            let v = reo.perm[t];
            let m = sum[v] / n as f64;
            let m = if reo.flip[t] {
                (stored[v] - 1) as f64 - m
            } else {
                m
            };
            m.round() as usize
        })
        .collect();
    // (columns axis, rows axis, rows flipped (superior up), fixed axis)
    let views = [
        (0usize, 1usize, false, 2usize),
        (0, 2, true, 1),
        (1, 2, true, 0),
    ];
    let mut panels: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for (ca, ra, flip, fa) in views {
        let px = sp[ca].min(sp[ra]);
        let w = ((d[ca] as f64 * sp[ca] / px).round() as usize).clamp(1, 2048);
        let h = ((d[ra] as f64 * sp[ra] / px).round() as usize).clamp(1, 2048);
        let mut gray = vec![0u8; w * h];
        let mut lab = vec![0u8; w * h];
        for yy in 0..h {
            let r = ((yy as f64 + 0.5) * d[ra] as f64 / h as f64) as usize;
            let r = r.min(d[ra] - 1);
            let r = if flip { d[ra] - 1 - r } else { r };
            for xx in 0..w {
                let cc = (((xx as f64 + 0.5) * d[ca] as f64 / w as f64) as usize).min(d[ca] - 1);
                let mut idx = [0usize; 3];
                idx[ca] = cc;
                idx[ra] = r;
                idx[fa] = c[fa];
                let i = reo.stored_index(idx);
                gray[yy * w + xx] = display[i];
                lab[yy * w + xx] = labels[i];
            }
        }
        panels.push((w, h, medinfer_io::raster::overlay(&gray, &lab, 0.45)));
    }
    let width: usize = panels.iter().map(|p| p.0).sum::<usize>() + 2 * (panels.len() - 1);
    let height = panels.iter().map(|p| p.1).max().unwrap_or(1);
    let mut rgb = vec![0u8; width * height * 3];
    let mut x0 = 0;
    for (w, h, px) in &panels {
        for y in 0..*h {
            let dst = (y * width + x0) * 3;
            rgb[dst..dst + w * 3].copy_from_slice(&px[y * w * 3..(y + 1) * w * 3]);
        }
        x0 += w + 2;
    }
    medinfer_io::raster::write_png8(path, width, height, 3, &rgb)?;
    Ok(())
}
