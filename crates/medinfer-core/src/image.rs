//! The image model: [`Image2d`] (one frame, one or three channels) and [`Volume`] (3D or 4D
//! voxels with spacing and orientation), with the small map of non-identifying [`Tags`] that
//! pipelines need. Pixel values are `f32` in *modality units* (Hounsfield units for CT, the
//! stored value after rescale otherwise): every reader applies the modality transform, none
//! applies a display (VOI) transform unless asked.

use crate::{CoreError, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Non-identifying attributes carried along with an image (modality, series UID, window ...).
///
/// Only keys from [`Tags::ALLOWED`] are accepted: names, IDs and birth dates can never enter
/// this map, so nothing that prints it can leak them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tags(BTreeMap<String, String>);

impl Tags {
    /// Keys a [`Tags`] map may hold. All of them describe the acquisition, none the patient.
    pub const ALLOWED: &'static [&'static str] = &[
        "modality",
        "transfer_syntax",
        "transfer_syntax_uid",
        "sop_class_uid",
        "series_instance_uid",
        "study_instance_uid",
        "series_number",
        "series_description",
        "instance_number",
        "photometric",
        "bits_allocated",
        "bits_stored",
        "pixel_representation",
        "window_center",
        "window_width",
        "trigger_time",
        "temporal_position",
        "body_part",
        "manufacturer",
        "slice_thickness",
        "source_format",
        "description",
        "number_of_frames",
        "cine_timing",
        "geometry",
        "stack",
    ];

    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (must be one of [`Tags::ALLOWED`]; other keys are ignored and `false` returned).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> bool {
        if Self::ALLOWED.contains(&key) {
            self.0.insert(key.to_string(), value.into());
            true
        } else {
            false
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Iterates over `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// How stored values map to brightness, as the source file declared it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Photometric {
    /// Grayscale, higher is brighter.
    Monochrome2,
    /// Grayscale, higher is darker (some radiographs); see [`Image2d::to_monochrome2`].
    Monochrome1,
    /// Three channels, red green blue (YBR encodings are converted to this when read).
    Rgb,
    /// A palette image already expanded to RGB.
    PaletteColor,
}

/// A display window (DICOM VOI window centre / width), in modality units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Window centre.
    pub center: f64,
    /// Window width (> 0).
    pub width: f64,
}

/// A VOI LUT (DICOM VOI LUT Sequence, PS3.3 C.11.2.1.1): a table from modality values to display
/// values, the non-linear alternative to a window.
#[derive(Clone, Debug, PartialEq)]
pub struct VoiLut {
    /// The input value mapped to the first entry (LUT Descriptor, second value).
    pub first: f64,
    /// The entries (LUT Data), as unsigned display values.
    pub table: Vec<f32>,
    /// Bits per entry (LUT Descriptor, third value): entries run over 0..2^bits - 1.
    pub bits: u32,
}

impl VoiLut {
    /// Maps values through the table: inputs below the first mapped value take the first
    /// entry, inputs beyond the last take the last (PS3.3 C.11.2.1.1). Output in 0..2^bits - 1.
    pub fn apply(&self, data: &mut [f32]) {
        let last = self.table.len().saturating_sub(1) as f64;
        if self.table.is_empty() {
            return;
        }
        for v in data.iter_mut() {
            let i = (*v as f64 - self.first).floor().clamp(0.0, last) as usize;
            *v = self.table[i];
        }
    }

    /// The largest display value the table's bit depth allows.
    pub fn max_value(&self) -> f32 {
        ((1u64 << self.bits.min(32)) - 1) as f32
    }
}

/// One 2D image: `height x width x channels` values, row-major, channels interleaved.
#[derive(Clone, Debug, PartialEq)]
pub struct Image2d {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Values in modality units, `(y * width + x) * channels + c`.
    pub data: Vec<f32>,
    /// Pixel spacing in mm as (row spacing = y, column spacing = x); (1, 1) when unknown.
    pub spacing: [f64; 2],
    /// How values map to brightness.
    pub photometric: Photometric,
    /// The smallest and largest value the encoding can represent, in modality units (from
    /// bits stored and the rescale); used by normalizations that need the image's real range.
    pub value_range: (f32, f32),
    /// The file's first VOI window, if it declared one.
    pub window: Option<Window>,
    /// The file's first VOI LUT (VOI LUT Sequence), if it declared one; shared between the
    /// frames of a file.
    pub voi_lut: Option<std::sync::Arc<VoiLut>>,
    /// Non-identifying attributes.
    pub tags: Tags,
}

impl Image2d {
    /// A grayscale MONOCHROME2 image from row-major data.
    pub fn gray(width: usize, height: usize, data: Vec<f32>) -> Result<Self, CoreError> {
        let expected = width
            .checked_mul(height)
            .ok_or(CoreError::ShapeOverflow(vec![height, width]))?;
        if data.len() != expected {
            return Err(CoreError::ShapeMismatch {
                shape: vec![height, width],
                expected,
                got: data.len(),
            });
        }
        let (lo, hi) = min_max(&data);
        Ok(Self {
            width,
            height,
            channels: 1,
            data,
            spacing: [1.0, 1.0],
            photometric: Photometric::Monochrome2,
            value_range: (lo, hi),
            window: None,
            voi_lut: None,
            tags: Tags::new(),
        })
    }

    /// The value at row `y`, column `x`, channel `c` (panics out of range, like slice indexing).
    pub fn at(&self, y: usize, x: usize, c: usize) -> f32 {
        self.data[(y * self.width + x) * self.channels + c]
    }

    /// The mean of the channels as one gray channel (NumPy's `img.mean(2)`, which
    /// TorchXRayVision's loading recipe uses instead of luma weights); grayscale images are
    /// returned unchanged.
    pub fn mean_channels(self) -> Self {
        // In f32, summed left to right, as NumPy reduces a short float32 axis.
        let n = self.channels as f32;
        self.gray_from_pixels(|p| p.iter().sum::<f32>() / n)
    }

    /// One gray channel computed from each pixel's channels (unchanged when already gray).
    fn gray_from_pixels(self, f: impl Fn(&[f32]) -> f32) -> Self {
        if self.channels == 1 {
            return self;
        }
        let data = self.data.chunks_exact(self.channels).map(f).collect();
        Self {
            channels: 1,
            data,
            photometric: Photometric::Monochrome2,
            ..self
        }
    }

    /// Converts RGB to one gray channel (ITU-R BT.601 luma: 0.299 R + 0.587 G + 0.114 B, the
    /// weights Pillow's `convert("L")` uses); grayscale images are returned unchanged.
    pub fn to_gray(self) -> Self {
        self.gray_from_pixels(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
    }

    /// Inverts a MONOCHROME1 image within its value range so that higher means brighter, as
    /// models trained on MONOCHROME2 data expect: `v' = lo + hi - v`. Other images unchanged.
    pub fn to_monochrome2(mut self) -> Self {
        if self.photometric == Photometric::Monochrome1 {
            let (lo, hi) = self.value_range;
            let s = lo + hi;
            self.data.iter_mut().for_each(|v| *v = s - *v);
            if let Some(w) = &mut self.window {
                w.center = s as f64 - w.center;
            }
            self.photometric = Photometric::Monochrome2;
        }
        self
    }

    /// The image as an engine tensor `(1, channels, height, width)` (planar, NCHW).
    pub fn to_tensor(&self) -> Tensor {
        let (h, w, c) = (self.height, self.width, self.channels);
        let mut out = vec![0f32; h * w * c];
        if c == 1 {
            out.copy_from_slice(&self.data);
        } else {
            for (i, px) in self.data.chunks_exact(c).enumerate() {
                for (k, v) in px.iter().enumerate() {
                    out[k * h * w + i] = *v;
                }
            }
        }
        Tensor::from_f32(vec![1, c, h, w], out).expect("length matches by construction")
    }
}

/// A 3D or 4D grayscale volume: `dims = [nx, ny, nz, nt]` with x fastest (NIfTI order):
/// index `((t * nz + z) * ny + y) * nx + x`. A 3D volume has `nt = 1`.
///
/// Geometry follows NIfTI: `affine` maps voxel indices `(i, j, k, 1)` to RAS+ millimetres
/// (DICOM's LPS+ is converted on reading by negating the first two rows).
#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    /// `[nx, ny, nz, nt]`.
    pub dims: [usize; 4],
    /// Voxel values in modality units.
    pub data: Vec<f32>,
    /// Voxel size in mm along x, y, z, and the time step in ms (0 when unknown).
    pub spacing: [f64; 4],
    /// Voxel index to RAS+ mm, row-major 4x4.
    pub affine: [[f64; 4]; 4],
    /// The file's first VOI window, if it declared one.
    pub window: Option<Window>,
    /// Non-identifying attributes.
    pub tags: Tags,
}

impl Volume {
    /// A volume with an axis-aligned affine built from `spacing` (origin at 0).
    pub fn new(dims: [usize; 4], data: Vec<f32>, spacing: [f64; 4]) -> Result<Self, CoreError> {
        let expected = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| CoreError::ShapeOverflow(dims.to_vec()))?;
        if data.len() != expected {
            return Err(CoreError::ShapeMismatch {
                shape: dims.to_vec(),
                expected,
                got: data.len(),
            });
        }
        let mut affine = [[0.0; 4]; 4];
        for (i, row) in affine.iter_mut().enumerate().take(3) {
            row[i] = spacing[i];
        }
        affine[3][3] = 1.0;
        Ok(Self {
            dims,
            data,
            spacing,
            affine,
            window: None,
            tags: Tags::new(),
        })
    }

    /// Voxels in one 3D frame (`nx * ny * nz`).
    pub fn frame_len(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// The value at `(x, y, z, t)` (panics out of range, like slice indexing).
    pub fn at(&self, x: usize, y: usize, z: usize, t: usize) -> f32 {
        let [nx, ny, nz, _] = self.dims;
        self.data[((t * nz + z) * ny + y) * nx + x]
    }

    /// Axial slice `z` of time point `t` as an image (rows = y, columns = x).
    pub fn slice(&self, z: usize, t: usize) -> Result<Image2d, CoreError> {
        let [nx, ny, nz, nt] = self.dims;
        if z >= nz || t >= nt {
            return Err(CoreError::OutOfRange {
                what: "slice (z, t)",
                index: vec![z, t],
                len: vec![nz, nt],
            });
        }
        let start = (t * nz + z) * nx * ny;
        let mut img = Image2d::gray(nx, ny, self.data[start..start + nx * ny].to_vec())?;
        img.spacing = [self.spacing[1], self.spacing[0]];
        img.window = self.window;
        img.tags = self.tags.clone();
        Ok(img)
    }

    /// The unit normal of the slices (direction of increasing k) in RAS+.
    pub fn slice_normal(&self) -> [f64; 3] {
        let c = [self.affine[0][2], self.affine[1][2], self.affine[2][2]];
        let n = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        if n > 0.0 {
            [c[0] / n, c[1] / n, c[2] / n]
        } else {
            [0.0, 0.0, 1.0]
        }
    }
}

/// A 3-D array of `dims` (row-major: the last index fastest) with its axes reversed, i.e. the
/// row-major array of `[dims[2], dims[1], dims[0]]`. Read the other way, it turns an array
/// stored first index fastest (NIfTI's order) into row-major, and back.
pub fn reverse_axes<T: Copy + Default>(src: &[T], dims: [usize; 3]) -> Vec<T> {
    let [a, b, c] = dims;
    let mut out = vec![T::default(); src.len()];
    let mut k = 0;
    for i in 0..a {
        for j in 0..b {
            for l in 0..c {
                out[i + a * (j + b * l)] = src[k];
                k += 1;
            }
        }
    }
    out
}

/// Smallest and largest finite value (0, 0 for an empty or all-NaN slice).
pub fn min_max(data: &[f32]) -> (f32, f32) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in data {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_refuse_identifying_keys() {
        let mut t = Tags::new();
        assert!(t.set("modality", "CT"));
        assert!(!t.set("patient_name", "Doe^John"));
        assert_eq!(t.iter().count(), 1);
    }

    #[test]
    fn monochrome1_inverts_within_range() {
        let mut img = Image2d::gray(2, 1, vec![0.0, 4095.0]).unwrap();
        img.photometric = Photometric::Monochrome1;
        img.value_range = (0.0, 4095.0);
        let img = img.to_monochrome2();
        assert_eq!(img.data, vec![4095.0, 0.0]);
    }

    #[test]
    fn rgb_to_tensor_is_planar_and_gray_uses_bt601() {
        let img = Image2d {
            channels: 3,
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            photometric: Photometric::Rgb,
            ..Image2d::gray(2, 1, vec![0.0, 0.0]).unwrap()
        };
        let t = img.to_tensor();
        assert_eq!(t.shape(), &[1, 3, 1, 2]);
        assert_eq!(t.as_f32().unwrap(), &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let g = img.to_gray();
        assert!((g.data[0] - (0.299 + 0.587 * 2.0 + 0.114 * 3.0)).abs() < 1e-6);
    }

    #[test]
    fn volume_indexing_is_x_fastest() {
        let v = Volume::new([2, 3, 4, 1], (0..24).map(|i| i as f32).collect(), [1.0; 4]).unwrap();
        assert_eq!(v.at(1, 2, 3, 0), (3 * 6 + 2 * 2 + 1) as f32);
        let s = v.slice(3, 0).unwrap();
        assert_eq!((s.width, s.height), (2, 3));
        assert_eq!(s.at(2, 1, 0), v.at(1, 2, 3, 0));
        assert!(Volume::new([2, 2, 2, 2], vec![0.0; 15], [1.0; 4]).is_err());
    }
}
