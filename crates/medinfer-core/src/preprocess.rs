//! Preprocessing on [`Image2d`]: resize, crop / pad, window / level, the normalizations models
//! are trained with, and resampling to a pixel spacing.
//!
//! ## Resampling
//! Written here rather than taken from `fast_image_resize`: medical values are `f32` with
//! negative numbers (Hounsfield units), for which that crate has no SIMD kernels, and pipelines
//! need to know exactly which filter they get. [`resize`] is a separable convolution resampler
//! with the semantics of Pillow's `Image.resize` (pixel centres aligned, the filter widened by
//! the scale factor when shrinking, so downscaling is anti-aliased): [`Filter::Area`] is Pillow's
//! `BOX` (exact area averaging), [`Filter::Bilinear`] its `BILINEAR` (triangle). The vertical pass
//! runs first on whole rows (a multiply-add over contiguous rows, which the compiler vectorises)
//! so the expensive pass over a 2000 x 2000 radiograph is SIMD and the horizontal pass only sees
//! the already reduced rows.

use crate::{CoreError, Image2d};

/// Resampling filter for [`resize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Nearest neighbour (labels and masks).
    Nearest,
    /// Area averaging (Pillow `BOX`): each output pixel is the mean of the input area it covers.
    Area,
    /// Triangle filter (Pillow `BILINEAR`), anti-aliased when shrinking.
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Nearest | Filter::Area => 0.5,
            Filter::Bilinear => 1.0,
        }
    }
    fn kernel(self, x: f64) -> f64 {
        match self {
            Filter::Nearest | Filter::Area => {
                if (-0.5..0.5).contains(&x) {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
        }
    }
}

/// Per output index: first input index and normalized weights.
struct Taps {
    start: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

fn taps(n_in: usize, n_out: usize, filter: Filter) -> Taps {
    let scale = n_in as f64 / n_out as f64;
    let mut start = Vec::with_capacity(n_out);
    let mut weights = Vec::with_capacity(n_out);
    if filter == Filter::Nearest {
        for o in 0..n_out {
            let i = (((o as f64 + 0.5) * scale) as usize).min(n_in - 1);
            start.push(i);
            weights.push(vec![1.0]);
        }
        return Taps { start, weights };
    }
    let fscale = scale.max(1.0);
    let support = filter.support() * fscale;
    for o in 0..n_out {
        let center = (o as f64 + 0.5) * scale;
        let lo = ((center - support).floor().max(0.0)) as usize;
        let hi = ((center + support).ceil() as usize).min(n_in);
        let mut w: Vec<f64> = (lo..hi)
            .map(|i| filter.kernel((i as f64 + 0.5 - center) / fscale))
            .collect();
        let sum: f64 = w.iter().sum();
        if sum > 0.0 {
            w.iter_mut().for_each(|v| *v /= sum);
        }
        // Trim zero weights at both ends so loops stay short.
        let first = w.iter().position(|&v| v != 0.0).unwrap_or(0);
        let last = w.iter().rposition(|&v| v != 0.0).map_or(1, |p| p + 1);
        start.push(lo + first);
        weights.push(
            w[first..last.max(first + 1)]
                .iter()
                .map(|&v| v as f32)
                .collect(),
        );
    }
    Taps { start, weights }
}

/// Resizes `img` to `width x height` with `filter` (spacing is scaled accordingly).
pub fn resize(
    img: &Image2d,
    width: usize,
    height: usize,
    filter: Filter,
) -> Result<Image2d, CoreError> {
    if width == 0 || height == 0 || img.width == 0 || img.height == 0 {
        return Err(CoreError::Invalid(format!(
            "cannot resize a {}x{} image to {width}x{height}",
            img.width, img.height
        )));
    }
    let c = img.channels;
    let row_in = img.width * c;
    // Vertical pass: height rows out, each a weighted sum of whole input rows.
    let tv = taps(img.height, height, filter);
    let mut mid = vec![0f32; height * row_in];
    for (o, out_row) in mid.chunks_exact_mut(row_in).enumerate() {
        for (k, &w) in tv.weights[o].iter().enumerate() {
            let src = &img.data[(tv.start[o] + k) * row_in..][..row_in];
            for (d, s) in out_row.iter_mut().zip(src) {
                *d += w * s;
            }
        }
    }
    // Horizontal pass on the reduced rows.
    let th = taps(img.width, width, filter);
    let mut out = vec![0f32; height * width * c];
    for (src_row, dst_row) in mid
        .chunks_exact(row_in)
        .zip(out.chunks_exact_mut(width * c))
    {
        for o in 0..width {
            let s0 = th.start[o];
            for ch in 0..c {
                let mut acc = 0f32;
                for (k, &w) in th.weights[o].iter().enumerate() {
                    acc += w * src_row[(s0 + k) * c + ch];
                }
                dst_row[o * c + ch] = acc;
            }
        }
    }
    Ok(Image2d {
        width,
        height,
        data: out,
        spacing: [
            img.spacing[0] * img.height as f64 / height as f64,
            img.spacing[1] * img.width as f64 / width as f64,
        ],
        ..img.clone_meta()
    })
}

/// Gaussian kernel of scipy.ndimage (`truncate = 4`): radius `int(4 sigma + 0.5)`, weights
/// `exp(-x^2 / (2 sigma^2))` normalised to sum 1.
fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let r = (4.0 * sigma + 0.5) as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
        .collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

/// Linear interpolation taps of scipy.ndimage.zoom with `grid_mode=True`, mode
/// `grid-constant` (cval 0): output `o` samples input coordinate `(o + 0.5) n_in / n_out - 0.5`;
/// neighbours outside the input contribute zero. Per output: (index, weight) pairs in range.
fn zoom_taps(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let c = (o as f64 + 0.5) * scale - 0.5;
            let i0 = c.floor();
            let t = c - i0;
            [(i0, 1.0 - t), (i0 + 1.0, t)]
                .into_iter()
                .filter(|&(i, w)| i >= 0.0 && (i as usize) < n_in && w != 0.0)
                .map(|(i, w)| (i as usize, w))
                .collect()
        })
        .collect()
}

/// Resizes like scikit-image's `transform.resize(img, shape, mode="constant",
/// preserve_range=True)` with its defaults (order 1, anti-aliasing when shrinking, clipping),
/// which TorchXRayVision's `XRayResizer` calls: when any side shrinks, a Gaussian of
/// `sigma = max(0, (n_in / n_out - 1) / 2)` per axis (scipy's kernel, zeros beyond the
/// edges), each pass rounded to f32 as scipy does for f32 images; then bilinear sampling at
/// pixel centres with zeros beyond the edges; then the result clipped to the input's range
/// (widened to 0 when 0 lies outside it but inside the result, as skimage does). Checked
/// against scikit-image to float32 rounding. The Gaussian is computed only at the rows and
/// columns the sampling reads, so a 2000 x 2000 radiograph costs a few million operations.
pub fn resize_skimage(img: &Image2d, width: usize, height: usize) -> Result<Image2d, CoreError> {
    if width == 0 || height == 0 || img.width == 0 || img.height == 0 {
        return Err(CoreError::Invalid(format!(
            "cannot resize a {}x{} image to {width}x{height}",
            img.width, img.height
        )));
    }
    let (w_in, h_in, c) = (img.width, img.height, img.channels);
    let shrink = height < h_in || width < w_in;
    let sigma = |n_in: usize, n_out: usize| {
        let s = ((n_in as f64 / n_out as f64) - 1.0) / 2.0;
        (shrink && s > 1e-15).then(|| gaussian_kernel(s))
    };
    let (ky, kx) = (sigma(h_in, height), sigma(w_in, width));
    let ty = zoom_taps(h_in, height);
    let tx = zoom_taps(w_in, width);
    // The rows and columns the sampling reads, and where each sits in the reduced arrays.
    let mut rows: Vec<usize> = ty.iter().flatten().map(|&(i, _)| i).collect();
    rows.sort_unstable();
    rows.dedup();
    let mut cols: Vec<usize> = tx.iter().flatten().map(|&(i, _)| i).collect();
    cols.sort_unstable();
    cols.dedup();
    let mut row_at = vec![usize::MAX; h_in];
    rows.iter().enumerate().for_each(|(k, &r)| row_at[r] = k);
    let mut col_at = vec![usize::MAX; w_in];
    cols.iter().enumerate().for_each(|(k, &x)| col_at[x] = k);
    let (lo, hi) = img
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let mut out = vec![0f32; width * height * c];
    let mut acc = vec![0f64; w_in];
    let mut plane = Vec::new();
    for ch in 0..c {
        // One channel, contiguous (the image itself when gray).
        let src: &[f32] = if c == 1 {
            &img.data
        } else {
            plane.clear();
            plane.extend(img.data.iter().skip(ch).step_by(c));
            &plane
        };
        let row = |y: usize| &src[y * w_in..][..w_in];
        // Vertical Gaussian at the needed rows, every column, rounded to f32.
        let mut vy = vec![0f32; rows.len() * w_in];
        for (k, &r) in rows.iter().enumerate() {
            let dst = &mut vy[k * w_in..][..w_in];
            match &ky {
                None => dst.copy_from_slice(row(r)),
                Some(kern) => {
                    let rad = kern.len() / 2;
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    for (j, &wk) in kern.iter().enumerate() {
                        let Some(y) = (r + j).checked_sub(rad).filter(|&y| y < h_in) else {
                            continue;
                        };
                        for (a, &v) in acc.iter_mut().zip(row(y)) {
                            *a += wk * v as f64;
                        }
                    }
                    dst.iter_mut().zip(&acc).for_each(|(d, &a)| *d = a as f32);
                }
            }
        }
        // Horizontal Gaussian at the needed columns of those rows, rounded to f32.
        let mut v = vec![0f32; rows.len() * cols.len()];
        for k in 0..rows.len() {
            let src = &vy[k * w_in..][..w_in];
            for (q, &x) in cols.iter().enumerate() {
                v[k * cols.len() + q] = match &kx {
                    None => src[x],
                    Some(kern) => {
                        let rad = kern.len() / 2;
                        let lo = x.saturating_sub(rad);
                        let hi = (x + rad + 1).min(w_in);
                        let k0 = lo + rad - x;
                        let mut a = 0f64;
                        for (wk, &sv) in kern[k0..].iter().zip(&src[lo..hi]) {
                            a += wk * sv as f64;
                        }
                        a as f32
                    }
                };
            }
        }
        // Bilinear sampling.
        for (oy, wy) in ty.iter().enumerate() {
            for (ox, wx) in tx.iter().enumerate() {
                let mut a = 0f64;
                for &(y, wyk) in wy {
                    let base = row_at[y] * cols.len();
                    for &(x, wxk) in wx {
                        a += wyk * wxk * v[base + col_at[x]] as f64;
                    }
                }
                out[(oy * width + ox) * c + ch] = a as f32;
            }
        }
    }
    // skimage's clip: to the input's range, widened to the constant 0 when 0 lies outside the
    // input's range but inside the output's.
    let (olo, ohi) = out
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (mut lo, mut hi) = (lo, hi);
    if !(lo <= 0.0 && 0.0 <= hi) && olo <= 0.0 && 0.0 <= ohi {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    out.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
    Ok(Image2d {
        width,
        height,
        data: out,
        spacing: [
            img.spacing[0] * h_in as f64 / height as f64,
            img.spacing[1] * w_in as f64 / width as f64,
        ],
        ..img.clone_meta()
    })
}

impl Image2d {
    /// A copy of everything but the pixels (data empty); used by the operations below.
    fn clone_meta(&self) -> Image2d {
        Image2d {
            width: self.width,
            height: self.height,
            channels: self.channels,
            data: Vec::new(),
            spacing: self.spacing,
            photometric: self.photometric,
            value_range: self.value_range,
            window: self.window,
            voi_lut: self.voi_lut.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// Crops (or pads with `fill`) symmetrically around the centre to `width x height`.
/// When the difference is odd, the extra pixel is taken from (or added at) the end, as
/// NumPy-style `img[(h - s) // 2 : ...]` centre crops do.
pub fn crop_or_pad(img: &Image2d, width: usize, height: usize, fill: f32) -> Image2d {
    let c = img.channels;
    let mut out = vec![fill; width * height * c];
    // Offset of the output's origin in input coordinates (may be negative when padding).
    let ox = (img.width as i64 - width as i64).div_euclid(2);
    let oy = (img.height as i64 - height as i64).div_euclid(2);
    for y in 0..height {
        let sy = y as i64 + oy;
        if sy < 0 || sy >= img.height as i64 {
            continue;
        }
        let x0 = (-ox).max(0) as usize;
        let x1 = ((img.width as i64 - ox).min(width as i64)).max(0) as usize;
        if x0 >= x1 {
            continue;
        }
        let sx0 = (x0 as i64 + ox) as usize;
        let src = &img.data[(sy as usize * img.width + sx0) * c..][..(x1 - x0) * c];
        out[(y * width + x0) * c..][..(x1 - x0) * c].copy_from_slice(src);
    }
    Image2d {
        width,
        height,
        data: out,
        ..img.clone_meta()
    }
}

/// The largest centred square, at TorchXRayVision's `XRayCenterCrop` offsets:
/// `start = n // 2 - s // 2` on each axis (one pixel later than `(n - s) // 2` when `n` is even
/// and `s` odd).
pub fn center_crop_square(img: &Image2d) -> Image2d {
    let s = img.width.min(img.height);
    let (x0, y0) = (img.width / 2 - s / 2, img.height / 2 - s / 2);
    let c = img.channels;
    let mut data = Vec::with_capacity(s * s * c);
    for y in y0..y0 + s {
        data.extend_from_slice(&img.data[(y * img.width + x0) * c..][..s * c]);
    }
    Image2d {
        width: s,
        height: s,
        data,
        ..img.clone_meta()
    }
}

/// DICOM linear VOI window (PS3.3 C.11.2.1.2.1) mapped to `[out_lo, out_hi]`:
/// values below `c - 0.5 - (w - 1) / 2` go to `out_lo`, above `c - 0.5 + (w - 1) / 2` to `out_hi`,
/// linear in between. `width` must be >= 1.
pub fn window(
    data: &mut [f32],
    center: f64,
    width: f64,
    out_lo: f32,
    out_hi: f32,
) -> Result<(), CoreError> {
    if width.is_nan() || width < 1.0 || !center.is_finite() {
        return Err(CoreError::Invalid(format!(
            "window width must be >= 1 and centre finite (got centre {center}, width {width})"
        )));
    }
    let lo = center - 0.5 - (width - 1.0) / 2.0;
    let hi = center - 0.5 + (width - 1.0) / 2.0;
    let span = (out_hi - out_lo) as f64;
    let a = span / (width - 1.0).max(f64::MIN_POSITIVE);
    let b = out_lo as f64 - ((center - 0.5) / (width - 1.0).max(f64::MIN_POSITIVE) - 0.5) * span;
    let (a, b) = (a as f32, b as f32);
    let (lo, hi) = (lo as f32, hi as f32);
    for v in data.iter_mut() {
        *v = if *v <= lo {
            out_lo
        } else if *v > hi {
            out_hi
        } else {
            a * *v + b
        };
    }
    Ok(())
}

/// TorchXRayVision's normalization: `(2 * v / maxval - 1) * 1024`, mapping `[0, maxval]` to
/// `[-1024, 1024]`. `maxval` is the largest value of the image's *encoding* (255 for 8-bit,
/// 65535 for 16-bit PNG, `2^bits_stored - 1` for DICOM), not the image's own maximum.
pub fn xrv_normalize(data: &mut [f32], maxval: f32) -> Result<(), CoreError> {
    if maxval.is_nan() || maxval <= 0.0 {
        return Err(CoreError::Invalid(format!(
            "maxval must be > 0, got {maxval}"
        )));
    }
    // In f32 and in TorchXRayVision's order of operations, so values match it bit for bit.
    data.iter_mut()
        .for_each(|v| *v = (2.0 * (*v / maxval) - 1.0) * 1024.0);
    Ok(())
}

/// Z-score: `(v - mean) / std` (population std; a constant image becomes all zeros).
pub fn zscore(data: &mut [f32]) {
    if data.is_empty() {
        return;
    }
    let n = data.len() as f64;
    let mean = data.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
    data.iter_mut()
        .for_each(|v| *v = ((*v as f64 - mean) * inv) as f32);
}

/// Min-max to `[0, 1]` (a constant image becomes all zeros).
pub fn min_max_normalize(data: &mut [f32]) {
    let (lo, hi) = crate::min_max(data);
    let inv = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
    data.iter_mut().for_each(|v| *v = (*v - lo) * inv);
}

/// The `p`-th percentile (0..=100) with linear interpolation between order statistics
/// (NumPy's default `np.percentile` method).
pub fn percentile(data: &[f32], p: f64) -> Result<f32, CoreError> {
    if data.is_empty() || !(0.0..=100.0).contains(&p) {
        return Err(CoreError::Invalid(format!(
            "percentile {p} of {} values",
            data.len()
        )));
    }
    let mut v: Vec<f32> = data.to_vec();
    let pos = p / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = (pos - lo as f64) as f32;
    let (_, a, rest) = v.select_nth_unstable_by(lo, f32::total_cmp);
    let a = *a;
    if frac == 0.0 || rest.is_empty() {
        return Ok(a);
    }
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min);
    Ok(a + (b - a) * frac)
}

/// Clips to the `[lo_p, hi_p]` percentiles, then min-max normalizes to `[0, 1]`.
pub fn percentile_clip(data: &mut [f32], lo_p: f64, hi_p: f64) -> Result<(), CoreError> {
    let lo = percentile(data, lo_p)?;
    let hi = percentile(data, hi_p)?;
    let inv = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
    data.iter_mut()
        .for_each(|v| *v = (v.clamp(lo, hi) - lo) * inv);
    Ok(())
}

/// Resamples to the pixel spacing `target` (row, column) in mm, keeping the field of view.
pub fn resample_spacing(
    img: &Image2d,
    target: [f64; 2],
    filter: Filter,
) -> Result<Image2d, CoreError> {
    if !(target[0] > 0.0 && target[1] > 0.0 && img.spacing[0] > 0.0 && img.spacing[1] > 0.0) {
        return Err(CoreError::Invalid(format!(
            "cannot resample spacing {:?} mm to {target:?} mm",
            img.spacing
        )));
    }
    let h = ((img.height as f64 * img.spacing[0] / target[0]).round() as usize).max(1);
    let w = ((img.width as f64 * img.spacing[1] / target[1]).round() as usize).max(1);
    if h > 1 << 15 || w > 1 << 15 {
        return Err(CoreError::Invalid(format!(
            "resampling {}x{} at {:?} mm to {target:?} mm would give {w}x{h} pixels",
            img.width, img.height, img.spacing
        )));
    }
    let mut out = resize(img, w, h, filter)?;
    out.spacing = target;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Image2d {
        Image2d::gray(
            w,
            h,
            (0..w * h)
                .map(|i| (i % w) as f32 + 10.0 * (i / w) as f32)
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn area_downscale_is_block_mean() {
        let img = ramp(4, 4);
        let out = resize(&img, 2, 2, Filter::Area).unwrap();
        // Top-left block: (0 + 1 + 10 + 11) / 4.
        assert!((out.at(0, 0, 0) - 5.5).abs() < 1e-5);
        assert!((out.at(1, 1, 0) - (22.0 + 23.0 + 32.0 + 33.0) / 4.0).abs() < 1e-5);
        assert_eq!(out.spacing, [2.0, 2.0]);
    }

    #[test]
    fn bilinear_keeps_linear_ramps_in_the_interior_and_identity_is_exact() {
        let img = ramp(8, 8);
        let same = resize(&img, 8, 8, Filter::Bilinear).unwrap();
        assert_eq!(same.data, img.data);
        let up = resize(&img, 16, 16, Filter::Bilinear).unwrap();
        // Output pixel centre x_o maps to input coordinate (x_o + 0.5) / 2 - 0.5.
        for y in 2..14 {
            for x in 2..14 {
                let xi = (x as f32 + 0.5) / 2.0 - 0.5;
                let yi = (y as f32 + 0.5) / 2.0 - 0.5;
                assert!((up.at(y, x, 0) - (xi + 10.0 * yi)).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn crop_and_pad_are_centred() {
        let img = ramp(5, 3);
        let c = crop_or_pad(&img, 3, 3, -1.0);
        assert_eq!(c.data[0], 1.0);
        let p = crop_or_pad(&img, 7, 5, -1.0);
        assert_eq!(p.at(0, 0, 0), -1.0);
        assert_eq!(p.at(1, 1, 0), 0.0);
        assert_eq!(p.at(3, 5, 0), 24.0);
        assert_eq!(center_crop_square(&img).width, 3);
    }

    #[test]
    fn window_follows_dicom_linear_formula() {
        let mut v = vec![-1000.0, 39.5, 40.0, 1000.0];
        window(&mut v, 40.0, 400.0, 0.0, 1.0).unwrap();
        assert_eq!(v[0], 0.0);
        assert_eq!(v[3], 1.0);
        // ((x - (c - 0.5)) / (w - 1) + 0.5): at x = c - 0.5 the output is the midpoint.
        assert!((v[1] - 0.5).abs() < 1e-6);
        assert!(window(&mut v, 0.0, 0.5, 0.0, 1.0).is_err());
    }

    #[test]
    fn normalizations() {
        let mut v = vec![0.0, 65535.0, 32767.5];
        xrv_normalize(&mut v, 65535.0).unwrap();
        assert_eq!(v, vec![-1024.0, 1024.0, 0.0]);
        let mut z = vec![1.0, 2.0, 3.0];
        zscore(&mut z);
        assert!((z[0] + 1.224_744_9).abs() < 1e-5);
        let d: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(percentile(&d, 25.0).unwrap(), 25.0);
        assert!((percentile(&[1.0, 2.0], 50.0).unwrap() - 1.5).abs() < 1e-6);
        let mut c = d.clone();
        percentile_clip(&mut c, 10.0, 90.0).unwrap();
        assert_eq!(c[0], 0.0);
        assert_eq!(c[100], 1.0);
        assert!((c[50] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn resample_to_spacing_keeps_field_of_view() {
        let mut img = ramp(100, 50);
        img.spacing = [2.0, 1.0];
        let out = resample_spacing(&img, [1.0, 1.0], Filter::Bilinear).unwrap();
        assert_eq!((out.width, out.height), (100, 100));
        assert!(resample_spacing(&img, [0.0, 1.0], Filter::Area).is_err());
    }
}
