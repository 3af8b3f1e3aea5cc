//! The image processor of a ViT-style encoder (`preprocessor_config.json`, Hugging Face's
//! `ViTImageProcessor` semantics): RGB, resize, rescale, normalise, channels first.
use crate::model::read_json;
use crate::GenerateError;
use medinfer_core::preprocess::{resize, Filter};
use medinfer_core::{Image2d, Tensor};
use serde_json::Value as Json;
use std::path::Path;

/// The preprocessing an encoder expects.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ImageProcessor {
    /// Output height and width.
    pub size: (usize, usize),
    /// Resize at all.
    pub do_resize: bool,
    /// Pillow filter code (0 nearest, 2 bilinear, 3 bicubic, 4 box); medinfer runs 0 as
    /// nearest, 4 as box and every other as its antialiased bilinear.
    pub resample: u64,
    /// Multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f32,
    /// Subtract the mean and divide by the std per channel.
    pub do_normalize: bool,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel std.
    pub std: [f32; 3],
}

fn triple(j: Option<&Json>, default: f32) -> [f32; 3] {
    match j {
        Some(Json::Array(a)) if a.len() == 3 => {
            let v: Vec<f32> = a
                .iter()
                .map(|x| x.as_f64().unwrap_or(default as f64) as f32)
                .collect();
            [v[0], v[1], v[2]]
        }
        Some(Json::Number(n)) => [n.as_f64().unwrap_or(default as f64) as f32; 3],
        _ => [default; 3],
    }
}

impl ImageProcessor {
    /// From preprocessor_config.json, or (without one) the encoder's own input size with
    /// ViT's defaults (bilinear, 1/255, mean = std = 0.5).
    pub fn read(
        path: Option<&Path>,
        input_hw: (usize, usize),
    ) -> Result<ImageProcessor, GenerateError> {
        let j = match path {
            Some(p) => read_json(p)?,
            None => Json::Object(Default::default()),
        };
        let size = j.get("size");
        let h = size
            .and_then(|s| s.get("height").or_else(|| s.get("shortest_edge")))
            .and_then(Json::as_u64)
            .or_else(|| size.and_then(Json::as_u64))
            .map(|v| v as usize)
            .unwrap_or(input_hw.0);
        let w = size
            .and_then(|s| s.get("width").or_else(|| s.get("shortest_edge")))
            .and_then(Json::as_u64)
            .or_else(|| size.and_then(Json::as_u64))
            .map(|v| v as usize)
            .unwrap_or(input_hw.1);
        let flag = |k: &str| j.get(k).and_then(Json::as_bool).unwrap_or(true);
        Ok(ImageProcessor {
            size: (h, w),
            do_resize: flag("do_resize"),
            resample: j.get("resample").and_then(Json::as_u64).unwrap_or(2),
            do_rescale: flag("do_rescale"),
            rescale_factor: j
                .get("rescale_factor")
                .and_then(Json::as_f64)
                .unwrap_or(1.0 / 255.0) as f32,
            do_normalize: flag("do_normalize"),
            mean: triple(j.get("image_mean"), 0.5),
            std: triple(j.get("image_std"), 0.5),
        })
    }

    /// `[1, 3, H, W]` pixel values from an image. Values are taken as 8-bit display levels:
    /// an image whose range is wider (16-bit PNG, DICOM) is first mapped to 0..255 through its
    /// VOI window, else its own min..max, as a viewer would show it.
    pub fn pixels(&self, img: &Image2d) -> Result<Tensor, GenerateError> {
        let bad = |e: medinfer_core::CoreError| GenerateError::Input(e.to_string());
        let mut img = img.clone();
        if img.channels != 1 && img.channels != 3 {
            return Err(GenerateError::Input(format!(
                "an image with {} channels (1 or 3 expected)",
                img.channels
            )));
        }
        let (lo, hi) = img.value_range;
        if lo < 0.0 || hi > 255.0 {
            let (a, b) = match img.window {
                Some(w) => (w.center - w.width / 2.0, w.center + w.width / 2.0),
                None => {
                    let (mn, mx) = img
                        .data
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                            (a.min(v), b.max(v))
                        });
                    (mn as f64, mx as f64)
                }
            };
            let span = (b - a).max(1e-6);
            for v in img.data.iter_mut() {
                *v = (((*v as f64 - a) / span).clamp(0.0, 1.0) * 255.0) as f32;
            }
        }
        if img.photometric == medinfer_core::Photometric::Monochrome1 {
            for v in img.data.iter_mut() {
                *v = 255.0 - *v;
            }
        }
        let (h, w) = self.size;
        if self.do_resize && (img.height != h || img.width != w) {
            let filter = match self.resample {
                0 => Filter::Nearest,
                4 => Filter::Area,
                _ => Filter::Bilinear,
            };
            img = resize(&img, w, h, filter).map_err(bad)?;
        }
        let (ih, iw, c) = (img.height, img.width, img.channels);
        let mut out = vec![0f32; 3 * ih * iw];
        for ch in 0..3 {
            let src_c = if c == 1 { 0 } else { ch };
            let plane = &mut out[ch * ih * iw..(ch + 1) * ih * iw];
            for (i, v) in plane.iter_mut().enumerate() {
                let mut x = img.data[i * c + src_c];
                if self.do_rescale {
                    x *= self.rescale_factor;
                }
                if self.do_normalize {
                    x = (x - self.mean[ch]) / self.std[ch];
                }
                *v = x;
            }
        }
        Tensor::from_f32(vec![1, 3, ih, iw], out).map_err(bad)
    }
}
