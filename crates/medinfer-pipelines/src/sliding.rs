//! Sliding-window inference with MONAI's semantics (`monai.inferers.sliding_window_inference`,
//! checked against MONAI 1.5.1 in `tests/sliding.rs`): a model that takes a fixed region of
//! interest runs over a larger 2-D or 3-D image, window by window, and the overlapping window
//! outputs are blended into one output of the image's size.
//!
//! As MONAI does it:
//! - an image smaller than the ROI along a dimension is padded to it (half before, the rest
//!   after; constant, reflect, replicate or circular, as `torch.nn.functional.pad`), and the
//!   output cropped back;
//! - windows start every `int(roi * (1 - overlap))` voxels (the whole dimension when the ROI
//!   covers it), the last one moved back to end at the border; their order is the first
//!   spatial dimension slowest, image by image;
//! - each window's output is weighted by an importance map (constant: ones; gaussian: a
//!   separable Gaussian with sigma = `sigma_scale` x ROI, clamped below at its smallest value
//!   or 1e-3), summed, and divided by the summed weights;
//! - `sw_batch` windows run per model call. Here every call gets exactly `sw_batch` windows
//!   (the last group is filled with zeros and their outputs dropped), so a fixed-shape engine
//!   session serves every call; windows are independent, so the results are the same.
//!
//! Only outputs of the window's spatial size are taken (MONAI also allows zoomed outputs).

use crate::PipelineError;
use medinfer_core::Tensor;

/// Receives the blended output plane by plane: `(index, K, plane)`, see
/// [`SlidingWindow::run_planes`].
pub type PlaneSink<'a> = dyn FnMut(usize, usize, &[f32]) -> Result<(), PipelineError> + 'a;

/// How overlapping window outputs are weighted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Blend {
    /// Every voxel of every window weighs the same.
    Constant,
    /// A Gaussian centred on the window, sigma = `sigma_scale` x ROI size per dimension.
    Gaussian,
}

/// How an image smaller than the ROI is padded (`torch.nn.functional.pad` modes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Padding {
    /// A constant value.
    Constant(f32),
    /// Mirrored without repeating the edge voxel.
    Reflect,
    /// The edge voxel repeated.
    Replicate,
    /// Wrapped around.
    Circular,
}

/// Sliding-window settings, MONAI's names and defaults ([`SlidingWindow::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Window size per spatial dimension; 0 takes the image's size there.
    pub roi: Vec<usize>,
    /// Overlap of neighbouring windows per spatial dimension (one value serves all), in [0, 1).
    pub overlap: Vec<f64>,
    /// Blending of overlapping outputs.
    pub blend: Blend,
    /// Gaussian sigma as a fraction of the ROI, per dimension or one for all.
    pub sigma_scale: Vec<f64>,
    /// Padding of images smaller than the ROI.
    pub padding: Padding,
    /// Windows per model call.
    pub sw_batch: usize,
    /// Model calls in flight at once (the engine's streams); the result is the same for any
    /// number.
    pub streams: usize,
}

/// Where the windows of one image lie.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowPlan {
    /// The ROI, with 0s resolved, as three dimensions (leading 1s for 2-D images).
    pub roi: [usize; 3],
    /// The padded image size (three dimensions).
    pub padded: [usize; 3],
    /// Padding before each dimension.
    pub pad_before: [usize; 3],
    /// Window starts in the padded image, first dimension slowest.
    pub starts: Vec<[usize; 3]>,
}

impl SlidingWindow {
    /// MONAI's defaults for a ROI: overlap 0.25, constant blending, sigma scale 0.125,
    /// constant padding with 0, one window per call.
    pub fn new(roi: Vec<usize>) -> SlidingWindow {
        SlidingWindow {
            roi,
            overlap: vec![0.25],
            blend: Blend::Constant,
            sigma_scale: vec![0.125],
            padding: Padding::Constant(0.0),
            sw_batch: 1,
            streams: 1,
        }
    }

    fn per_dim(v: &[f64], n: usize, what: &str) -> Result<Vec<f64>, PipelineError> {
        match v.len() {
            1 => Ok(vec![v[0]; n]),
            k if k == n => Ok(v.to_vec()),
            k => Err(config(
                what,
                format!("{k} values for {n} spatial dimensions"),
            )),
        }
    }

    /// The windows over an image of spatial size `spatial` (2 or 3 dimensions).
    pub fn plan(&self, spatial: &[usize]) -> Result<WindowPlan, PipelineError> {
        let n = spatial.len();
        if !(1..=3).contains(&n) {
            return Err(config(
                "sliding window",
                format!("images of 1 to 3 spatial dimensions, not {n}"),
            ));
        }
        if self.roi.len() != n {
            return Err(config(
                "roi",
                format!(
                    "{} dimensions for an image of {n} ({spatial:?})",
                    self.roi.len()
                ),
            ));
        }
        if spatial.contains(&0) {
            return Err(config("sliding window", format!("empty image {spatial:?}")));
        }
        if self.sw_batch == 0 {
            return Err(config("sw_batch_size", "must be at least 1".into()));
        }
        let overlap = Self::per_dim(&self.overlap, n, "overlap")?;
        if let Some(o) = overlap.iter().find(|o| !(0.0..1.0).contains(*o)) {
            return Err(config("overlap", format!("{o} is not in [0, 1)")));
        }
        let lead = 3 - n;
        let mut roi = [1usize; 3];
        let mut padded = [1usize; 3];
        let mut pad_before = [0usize; 3];
        let mut interval = [1usize; 3];
        for d in 0..n {
            let r = if self.roi[d] == 0 {
                spatial[d]
            } else {
                self.roi[d]
            };
            let size = spatial[d].max(r);
            let diff = r.saturating_sub(spatial[d]);
            roi[lead + d] = r;
            padded[lead + d] = size;
            pad_before[lead + d] = diff / 2;
            interval[lead + d] = if r == size {
                r
            } else {
                // Python's int() of the same double: truncation toward zero.
                ((r as f64 * (1.0 - overlap[d])) as usize).max(1)
            };
        }
        // dense_patch_slices: how many windows, the last one moved back to end at the border.
        let mut per_dim: Vec<Vec<usize>> = Vec::with_capacity(3);
        for d in 0..3 {
            let (size, r, step) = (padded[d], roi[d], interval[d]);
            let num = size.div_ceil(step);
            let count = (0..num).find(|k| k * step + r >= size).map_or(1, |k| k + 1);
            per_dim.push(
                (0..count)
                    .map(|k| {
                        let s = k * step;
                        s - (s + r).saturating_sub(size)
                    })
                    .collect(),
            );
        }
        let mut starts = Vec::new();
        for &a in &per_dim[0] {
            for &b in &per_dim[1] {
                for &c in &per_dim[2] {
                    starts.push([a, b, c]);
                }
            }
        }
        Ok(WindowPlan {
            roi,
            padded,
            pad_before,
            starts,
        })
    }

    /// The importance map of a window of size `roi` (three dimensions), row-major.
    pub fn importance_map(&self, roi: [usize; 3], spatial_dims: usize) -> Vec<f32> {
        let len: usize = roi.iter().product();
        let mut map = vec![1f32; len];
        if self.blend == Blend::Gaussian {
            let lead = 3 - spatial_dims;
            let sigma_scale = Self::per_dim(&self.sigma_scale, spatial_dims, "sigma_scale")
                .unwrap_or_else(|_| vec![0.125; spatial_dims]);
            // MONAI: x = arange(-(r-1)/2, (r-1)/2 + 1) in float32, exp(x^2 / (-2 sigma^2)),
            // and the map the running product dim by dim.
            let axes: Vec<Vec<f32>> = (0..3)
                .map(|d| {
                    if d < lead {
                        return vec![1f32];
                    }
                    let r = roi[d];
                    let sigma = (r as f64 * sigma_scale[d - lead]) as f32;
                    (0..r)
                        .map(|i| {
                            let x = -((r as f32 - 1.0) / 2.0) + i as f32;
                            (x * x / (-2.0 * sigma * sigma)).exp()
                        })
                        .collect()
                })
                .collect();
            let mut k = 0;
            for a in &axes[0] {
                for b in &axes[1] {
                    for c in &axes[2] {
                        map[k] = if lead >= 2 {
                            *c
                        } else if lead == 1 {
                            b * c
                        } else {
                            a * b * c
                        };
                        k += 1;
                    }
                }
            }
        }
        let min = map.iter().copied().fold(f32::INFINITY, f32::min);
        let floor = min.max(1e-3);
        for v in &mut map {
            *v = v.max(floor);
        }
        map
    }

    /// Runs `predict` over `input` (`N x C x spatial...`, float32) window by window and blends
    /// the outputs into `N x K x spatial...`. `predict` gets `sw_batch x C x roi...` and must
    /// return `sw_batch x K x roi...`; up to `streams` calls run at once (an engine session in
    /// throughput mode serves them in parallel).
    pub fn run(
        &self,
        input: &Tensor,
        predict: &(dyn Fn(Tensor) -> Result<Tensor, PipelineError> + Sync),
    ) -> Result<Tensor, PipelineError> {
        let shape = input.shape().to_vec();
        if shape.len() < 3 {
            return Err(config(
                "sliding window",
                format!("input {shape:?}: expected N x C x spatial dimensions"),
            ));
        }
        let x = input
            .as_f32()
            .map_err(|e| config("sliding window input", e.to_string()))?;
        let (batch, chans, spatial) = (shape[0], shape[1], &shape[2..]);
        let image_len = chans * spatial.iter().product::<usize>();
        let mut result = Vec::new();
        let mut k_out = 0;
        for b in 0..batch {
            let image = &x[b * image_len..(b + 1) * image_len];
            let mut planes: Vec<f32> = Vec::new();
            let mut plane_len = 0;
            k_out =
                self.run_planes(image, chans, spatial, false, predict, &mut |_, k, plane| {
                    plane_len = plane.len() / k;
                    planes.extend_from_slice(plane);
                    Ok(())
                })?;
            // The planes are K x (the rest) each, along the first dimension: to K x spatial.
            let n0 = planes.len() / (k_out * plane_len).max(1);
            for k in 0..k_out {
                for z in 0..n0 {
                    let at = (z * k_out + k) * plane_len;
                    result.extend_from_slice(&planes[at..at + plane_len]);
                }
            }
        }
        let mut oshape = vec![batch, k_out];
        oshape.extend_from_slice(spatial);
        Tensor::from_f32(oshape, result).map_err(|e| config("output", e.to_string()))
    }

    /// [`Self::run`] over one image (`chans x spatial`, row-major), handing the blended output
    /// to `sink` plane by plane along the first spatial dimension as soon as no later window
    /// touches it: `sink(index, K, plane)` with `plane` = `K x` the other spatial dimensions.
    /// Memory is a window's depth of output planes, whatever the image's depth (only an image
    /// smaller than the ROI is copied, to pad it). Returns K.
    ///
    /// `first_fastest`: each channel of `image` is stored with the first spatial index
    /// fastest (NIfTI's order) instead of the last (row-major): windows are gathered from it
    /// as they are, so a volume in NIfTI order needs no transposed copy.
    pub fn run_planes(
        &self,
        image: &[f32],
        chans: usize,
        spatial: &[usize],
        first_fastest: bool,
        predict: &(dyn Fn(Tensor) -> Result<Tensor, PipelineError> + Sync),
        sink: &mut PlaneSink<'_>,
    ) -> Result<usize, PipelineError> {
        let nd = spatial.len();
        let plan = self.plan(spatial)?;
        let mut orig = [1usize; 3];
        orig[3 - nd..].copy_from_slice(spatial);
        if image.len() != chans * orig.iter().product::<usize>() {
            return Err(config(
                "sliding window input",
                format!("{} values for {chans} x {spatial:?}", image.len()),
            ));
        }
        let mut first_fastest = first_fastest && nd > 1;
        let row_major;
        let image = if first_fastest && plan.padded != orig {
            // Padding works on row-major planes: transpose this (small) image first.
            let vol: usize = orig.iter().product();
            first_fastest = false;
            row_major = image
                .chunks(vol)
                .flat_map(|c| medinfer_core::reverse_axes(c, [orig[2], orig[1], orig[0]]))
                .collect::<Vec<f32>>();
            &row_major[..]
        } else {
            image
        };
        let padded = pad(image, chans, orig, &plan, self.padding)?;
        let [pd, ph, pw] = plan.padded;
        let [rd, rh, rw] = plan.roi;
        let win_len = rd * rh * rw;
        let vol = pd * ph * pw;
        let plane = ph * pw;
        let weights = self.importance_map(plan.roi, nd);
        let total = plan.starts.len();
        // The windows of one model call.
        let window_batch = |first: usize| -> Result<(Vec<usize>, Tensor), PipelineError> {
            let group: Vec<usize> = (first..(first + self.sw_batch).min(total)).collect();
            let mut data = vec![0f32; self.sw_batch * chans * win_len];
            for (slot, &idx) in group.iter().enumerate() {
                let s = plan.starts[idx];
                for c in 0..chans {
                    let src = &padded[c * vol..(c + 1) * vol];
                    let dst = &mut data[(slot * chans + c) * win_len..][..win_len];
                    if first_fastest {
                        copy_window_first_fastest(src, dst, plan.padded, s, plan.roi);
                    } else {
                        copy_window(src, dst, plan.padded, s, plan.roi);
                    }
                }
            }
            let mut wshape = vec![self.sw_batch, chans];
            wshape.extend_from_slice(&plan.roi[3 - nd..]);
            let t = Tensor::from_f32(wshape, data).map_err(|e| config("window", e.to_string()))?;
            Ok((group, t))
        };
        let call = |first: usize| -> Result<(Vec<usize>, Tensor), PipelineError> {
            let (group, t) = window_batch(first)?;
            Ok((group, predict(t)?))
        };
        // Output and summed weights of planes base.. (padded indices), each K x plane.
        let mut acc: std::collections::VecDeque<(Vec<f32>, Vec<f32>)> = Default::default();
        let mut base = 0usize;
        let mut k_out = 0;
        let mut emitted = 0usize;
        let mut emit = |acc: &mut std::collections::VecDeque<(Vec<f32>, Vec<f32>)>,
                        base: &mut usize,
                        upto: usize,
                        k_out: usize|
         -> Result<(), PipelineError> {
            while *base < upto {
                let (out, count) = acc
                    .pop_front()
                    .unwrap_or_else(|| (vec![0f32; k_out * plane], vec![0f32; plane]));
                let z = *base;
                *base += 1;
                let before = plan.pad_before[0];
                if z < before || z >= before + orig[0] {
                    continue;
                }
                // Divide by the summed weights, then crop the padding away.
                let mut cropped = Vec::with_capacity(k_out * orig[1] * orig[2]);
                for k in 0..k_out {
                    let o = &out[k * plane..(k + 1) * plane];
                    for y in plan.pad_before[1]..plan.pad_before[1] + orig[1] {
                        let row = y * pw + plan.pad_before[2];
                        for x in row..row + orig[2] {
                            cropped.push(o[x] / count[x]);
                        }
                    }
                }
                sink(z - before, k_out, &cropped)?;
                emitted += 1;
            }
            Ok(())
        };
        let firsts: Vec<usize> = (0..total).step_by(self.sw_batch).collect();
        let streams = self.streams.max(1);
        let mut done = 0usize;
        for round in firsts.chunks(streams) {
            // Up to `streams` calls at once; their outputs are added in window order, so the
            // result does not depend on the number of streams.
            let outputs: Vec<Result<(Vec<usize>, Tensor), PipelineError>> = if round.len() == 1 {
                vec![call(round[0])]
            } else {
                std::thread::scope(|sc| {
                    let handles: Vec<_> = round
                        .iter()
                        .map(|&f| {
                            let call = &call;
                            sc.spawn(move || call(f))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(config("sliding window", "a window batch panicked".into()))
                            })
                        })
                        .collect()
                })
            };
            for o in outputs {
                let (group, y) = o?;
                let ys = y.shape().to_vec();
                let fits =
                    ys.len() == nd + 2 && ys[0] == self.sw_batch && ys[2..] == plan.roi[3 - nd..];
                if !fits {
                    return Err(config(
                        "model output",
                        format!(
                            "{ys:?} for windows of {:?}: expected {} x K x the window's size",
                            &plan.roi[3 - nd..],
                            self.sw_batch
                        ),
                    ));
                }
                let yv = y
                    .as_f32()
                    .map_err(|e| config("model output", e.to_string()))?;
                if k_out == 0 {
                    k_out = ys[1];
                } else if ys[1] != k_out {
                    return Err(config(
                        "model output",
                        format!("{} channels, then {}", k_out, ys[1]),
                    ));
                }
                for (slot, &idx) in group.iter().enumerate() {
                    let s = plan.starts[idx];
                    while base + acc.len() < s[0] + rd {
                        acc.push_back((vec![0f32; k_out * plane], vec![0f32; plane]));
                    }
                    // Per voxel, weights and weighted outputs are added in window order, as
                    // MONAI adds them (its count map first, then the outputs; the same sums).
                    for dz in 0..rd {
                        let (out, count) = &mut acc[s[0] + dz - base];
                        let wz = &weights[dz * rh * rw..(dz + 1) * rh * rw];
                        add_window(count, [1, ph, pw], [0, s[1], s[2]], [1, rh, rw], wz, None);
                        for k in 0..k_out {
                            let p = &yv[(slot * k_out + k) * win_len + dz * rh * rw..][..rh * rw];
                            let dst = &mut out[k * plane..(k + 1) * plane];
                            add_window(dst, [1, ph, pw], [0, s[1], s[2]], [1, rh, rw], wz, Some(p));
                        }
                    }
                }
                done += group.len();
            }
            // Planes below every later window's start are final.
            let upto = plan.starts.get(done).map_or(pd, |s| s[0]);
            emit(&mut acc, &mut base, upto, k_out)?;
        }
        emit(&mut acc, &mut base, pd, k_out)?;
        debug_assert_eq!(emitted, orig[0]);
        Ok(k_out)
    }
}

fn config(what: &str, reason: String) -> PipelineError {
    PipelineError::Config {
        what: what.to_string(),
        reason,
    }
}

/// Copies the window at `start` of size `roi` out of a volume of size `size` into `dst`.
fn copy_window(src: &[f32], dst: &mut [f32], size: [usize; 3], start: [usize; 3], roi: [usize; 3]) {
    let [_, h, w] = size;
    let mut k = 0;
    for z in start[0]..start[0] + roi[0] {
        for y in start[1]..start[1] + roi[1] {
            let row = (z * h + y) * w + start[2];
            dst[k..k + roi[2]].copy_from_slice(&src[row..row + roi[2]]);
            k += roi[2];
        }
    }
}

/// [`copy_window`] from a volume stored with the first index fastest; `dst` row-major.
fn copy_window_first_fastest(
    src: &[f32],
    dst: &mut [f32],
    size: [usize; 3],
    start: [usize; 3],
    roi: [usize; 3],
) {
    let [d, h, _] = size;
    let mut k = 0;
    for z in start[0]..start[0] + roi[0] {
        for y in start[1]..start[1] + roi[1] {
            for x in start[2]..start[2] + roi[2] {
                dst[k] = src[z + d * (y + h * x)];
                k += 1;
            }
        }
    }
}

/// Adds `weights` (or `pred x weights`) into the window at `start` of a volume of size `size`.
fn add_window(
    dst: &mut [f32],
    size: [usize; 3],
    start: [usize; 3],
    roi: [usize; 3],
    weights: &[f32],
    pred: Option<&[f32]>,
) {
    let [_, h, w] = size;
    let mut k = 0;
    for z in start[0]..start[0] + roi[0] {
        for y in start[1]..start[1] + roi[1] {
            let row = (z * h + y) * w + start[2];
            let d = &mut dst[row..row + roi[2]];
            let wt = &weights[k..k + roi[2]];
            match pred {
                Some(p) => {
                    for ((o, p), wv) in d.iter_mut().zip(&p[k..k + roi[2]]).zip(wt) {
                        *o += p * wv;
                    }
                }
                None => {
                    for (o, wv) in d.iter_mut().zip(wt) {
                        *o += wv;
                    }
                }
            }
            k += roi[2];
        }
    }
}

/// Index into a dimension of size `n` for padded position `i - before` (may be outside).
fn source_index(i: isize, n: usize, mode: Padding) -> Option<usize> {
    let n = n as isize;
    if (0..n).contains(&i) {
        return Some(i as usize);
    }
    match mode {
        Padding::Constant(_) => None,
        Padding::Replicate => Some(i.clamp(0, n - 1) as usize),
        Padding::Circular => Some(i.rem_euclid(n) as usize),
        Padding::Reflect => {
            let j = if i < 0 { -i } else { 2 * (n - 1) - i };
            Some(j.clamp(0, n - 1) as usize)
        }
    }
}

/// The `planes` volumes of size `orig` padded to the plan's size.
fn pad<'a>(
    x: &'a [f32],
    planes: usize,
    orig: [usize; 3],
    plan: &WindowPlan,
    mode: Padding,
) -> Result<std::borrow::Cow<'a, [f32]>, PipelineError> {
    if plan.padded == orig {
        return Ok(std::borrow::Cow::Borrowed(x));
    }
    if mode == Padding::Reflect {
        for ((&size, &padded), &before) in orig.iter().zip(&plan.padded).zip(&plan.pad_before) {
            let most = before.max(padded - size - before);
            if most >= size {
                return Err(config(
                    "padding",
                    format!(
                        "reflect padding of {most} voxels needs a dimension larger than that (it has {size}); use replicate or constant"
                    ),
                ));
            }
        }
    }
    let fill = match mode {
        Padding::Constant(v) => v,
        _ => 0.0,
    };
    let [pd, ph, pw] = plan.padded;
    let ovol: usize = orig.iter().product();
    let mut out = vec![fill; planes * pd * ph * pw];
    let idx =
        |d: usize, i: usize| source_index(i as isize - plan.pad_before[d] as isize, orig[d], mode);
    for p in 0..planes {
        let src = &x[p * ovol..(p + 1) * ovol];
        let dst = &mut out[p * pd * ph * pw..(p + 1) * pd * ph * pw];
        for z in 0..pd {
            let Some(sz) = idx(0, z) else { continue };
            for y in 0..ph {
                let Some(sy) = idx(1, y) else { continue };
                for xx in 0..pw {
                    let Some(sx) = idx(2, xx) else { continue };
                    dst[(z * ph + y) * pw + xx] = src[(sz * orig[1] + sy) * orig[2] + sx];
                }
            }
        }
    }
    Ok(std::borrow::Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_monai_dense_patch_slices() {
        // MONAI (dense_patch_slices): image 30, roi 16, overlap 0.25 -> interval 12, starts 0,
        // 12 and 24 moved back to 14.
        let sw = SlidingWindow::new(vec![16, 16]);
        let p = sw.plan(&[30, 16]).unwrap();
        assert_eq!(p.starts, vec![[0, 0, 0], [0, 12, 0], [0, 14, 0]]);
        // Smaller than the ROI: padded 3 before, 4 after; one window.
        let p = sw.plan(&[9, 40]).unwrap();
        assert_eq!(p.padded, [1, 16, 40]);
        assert_eq!(p.pad_before, [0, 3, 0]);
        assert_eq!(p.starts.len(), 3);
        assert_eq!(
            p.starts.iter().map(|s| s[2]).collect::<Vec<_>>(),
            [0, 12, 24]
        );
        assert!(sw.plan(&[4, 4, 4]).is_err());
        let bad = SlidingWindow {
            overlap: vec![1.0],
            ..SlidingWindow::new(vec![8])
        };
        assert!(bad.plan(&[20]).unwrap_err().to_string().contains("[0, 1)"));
    }

    #[test]
    fn a_model_that_echoes_its_window_gives_the_image_back() {
        // Whatever the blending, the weighted mean of identical copies is the value itself.
        let input = Tensor::from_f32(
            vec![2, 1, 11, 7, 13],
            (0..2 * 11 * 7 * 13).map(|i| (i % 17) as f32).collect(),
        )
        .unwrap();
        for blend in [Blend::Constant, Blend::Gaussian] {
            let sw = SlidingWindow {
                roi: vec![4, 8, 5],
                overlap: vec![0.5],
                blend,
                sw_batch: 3,
                streams: 2,
                padding: Padding::Replicate,
                ..SlidingWindow::new(vec![])
            };
            let out = sw.run(&input, &Ok).unwrap();
            assert_eq!(out.shape(), input.shape());
            let d = out
                .as_f32()
                .unwrap()
                .iter()
                .zip(input.as_f32().unwrap())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "{blend:?}: {d}");
        }
        // The same image stored first index fastest: the same output, padded or not.
        let (d, h, w) = (11, 7, 13);
        let x = input.as_f32().unwrap()[..d * h * w].to_vec();
        let mut ff = vec![0f32; x.len()];
        for z in 0..d {
            for y in 0..h {
                for xx in 0..w {
                    ff[z + d * (y + h * xx)] = x[(z * h + y) * w + xx];
                }
            }
        }
        let sq = |v: &[f32]| v.iter().map(|a| a * a).collect::<Vec<f32>>();
        for roi in [vec![4, 8, 5], vec![16, 4, 4]] {
            let sw = SlidingWindow {
                overlap: vec![0.5],
                blend: Blend::Gaussian,
                sw_batch: 2,
                padding: Padding::Replicate,
                ..SlidingWindow::new(roi)
            };
            let square = |t: Tensor| -> Result<Tensor, PipelineError> {
                Ok(Tensor::from_f32(t.shape().to_vec(), sq(t.as_f32().unwrap())).unwrap())
            };
            let mut a = Vec::new();
            sw.run_planes(&x, 1, &[d, h, w], false, &square, &mut |_, _, p| {
                a.extend_from_slice(p);
                Ok(())
            })
            .unwrap();
            let mut b = Vec::new();
            sw.run_planes(&ff, 1, &[d, h, w], true, &square, &mut |_, _, p| {
                b.extend_from_slice(p);
                Ok(())
            })
            .unwrap();
            assert_eq!(a, b);
            assert_eq!(a.len(), d * h * w);
        }
        // Reflect padding deeper than the image is refused, as torch refuses it.
        let tiny = Tensor::from_f32(vec![1, 1, 3, 20], vec![0.5; 60]).unwrap();
        let sw = SlidingWindow {
            padding: Padding::Reflect,
            ..SlidingWindow::new(vec![16, 16])
        };
        let e = sw.run(&tiny, &Ok).unwrap_err().to_string();
        assert!(e.contains("reflect padding of 7 voxels"), "{e}");
        // A model whose output is not window-sized is named.
        let sw = SlidingWindow::new(vec![2, 4]);
        let e = sw
            .run(&tiny, &|_| {
                Ok(Tensor::from_f32(vec![1, 1, 1, 1], vec![0.0]).unwrap())
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("model output"), "{e}");
    }
}
