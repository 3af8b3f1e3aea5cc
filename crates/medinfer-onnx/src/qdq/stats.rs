//! Activation statistics gathered on calibration data, and the ranges chosen from them.

use super::*;
use std::collections::HashMap;

/// Running statistics of one tensor.
#[derive(Clone, Debug, Default)]
pub struct TensorStats {
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Values seen.
    pub count: u64,
    /// Sum of squares (for the signal power in SQNR estimates).
    pub sum_sq: f64,
    /// Histogram of values over `[-hist_range, hist_range]` (empty unless the method needs it).
    pub hist: Vec<u64>,
    /// Half-width of the histogram.
    pub hist_range: f32,
    /// Per-channel (axis 1) sums, when requested.
    pub channel_sum: Vec<f64>,
    /// Values per channel.
    pub channel_count: u64,
    /// Sum over calibration runs of each run's smallest value (for [`CalibMethod::MeanMinMax`]).
    pub sum_run_min: f64,
    /// Sum over calibration runs of each run's largest value.
    pub sum_run_max: f64,
    /// Calibration runs seen.
    pub runs: u64,
}

const BINS: usize = 4096;

impl TensorStats {
    /// Adds one tensor's values. `channels`: collect per-channel (axis 1) means.
    pub fn update(&mut self, dims: &[usize], data: &[f32], histogram: bool, channels: bool) {
        if data.is_empty() {
            return;
        }
        let (mut lo, mut hi, mut sq) = (f32::INFINITY, f32::NEG_INFINITY, 0f64);
        for &x in data {
            if x.is_finite() {
                lo = lo.min(x);
                hi = hi.max(x);
                sq += (x as f64) * (x as f64);
            }
        }
        if lo > hi {
            return; // nothing finite
        }
        if self.count == 0 {
            self.min = lo;
            self.max = hi;
        } else {
            self.min = self.min.min(lo);
            self.max = self.max.max(hi);
        }
        self.count += data.len() as u64;
        self.sum_sq += sq;
        self.sum_run_min += lo as f64;
        self.sum_run_max += hi as f64;
        self.runs += 1;
        if histogram {
            let m = lo.abs().max(hi.abs()).max(1e-12);
            if self.hist.is_empty() {
                self.hist = vec![0; BINS];
                self.hist_range = m;
            }
            while m > self.hist_range {
                // Double the range: old bins pair up into the middle half.
                let mut h = vec![0u64; BINS];
                for (i, &c) in self.hist.iter().enumerate() {
                    h[BINS / 4 + i / 2] += c;
                }
                self.hist = h;
                self.hist_range *= 2.0;
            }
            let scale = BINS as f32 / (2.0 * self.hist_range);
            for &x in data {
                if x.is_finite() {
                    let b = ((x + self.hist_range) * scale) as usize;
                    self.hist[b.min(BINS - 1)] += 1;
                }
            }
        }
        if channels && dims.len() >= 2 {
            let c = dims[1];
            let inner: usize = dims[2..].iter().product();
            if self.channel_sum.len() != c {
                self.channel_sum = vec![0.0; c];
                self.channel_count = 0;
            }
            for (k, chunk) in data.chunks(inner.max(1)).enumerate() {
                let s: f64 = chunk.iter().map(|&x| x as f64).sum();
                self.channel_sum[k % c] += s;
            }
            self.channel_count += (data.len() / c.max(1)) as u64;
        }
    }

    /// Per-channel means (empty when not collected).
    pub fn channel_means(&self) -> Vec<f32> {
        if self.channel_count == 0 {
            return vec![];
        }
        self.channel_sum
            .iter()
            .map(|&s| (s / self.channel_count as f64) as f32)
            .collect()
    }

    /// The value below which `q` (0..1) of the histogram lies.
    fn quantile(&self, q: f64) -> f32 {
        let total: u64 = self.hist.iter().sum();
        let target = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        let w = 2.0 * self.hist_range / BINS as f32;
        for (i, &c) in self.hist.iter().enumerate() {
            acc += c;
            if acc >= target.max(1) {
                return -self.hist_range + (i + 1) as f32 * w;
            }
        }
        self.hist_range
    }

    /// The range chosen by `method`.
    pub fn range(&self, method: CalibMethod) -> (f32, f32) {
        match method {
            CalibMethod::Percentile(_) | CalibMethod::Entropy if self.hist.is_empty() => {
                (self.min, self.max)
            }
            CalibMethod::MinMax => (self.min, self.max),
            CalibMethod::MeanMinMax if self.runs > 0 => (
                (self.sum_run_min / self.runs as f64) as f32,
                (self.sum_run_max / self.runs as f64) as f32,
            ),
            CalibMethod::MeanMinMax => (self.min, self.max),
            CalibMethod::Percentile(p) => {
                let hi = self.quantile(p / 100.0).min(self.max);
                let lo = if self.min < 0.0 {
                    self.quantile(1.0 - p / 100.0).max(self.min)
                } else {
                    self.min
                };
                (lo.min(hi), hi)
            }
            CalibMethod::Entropy => {
                // Fold into a histogram of |x| and find the KL-optimal threshold.
                let half = BINS / 2;
                let mut abs = vec![0u64; half];
                for (i, &c) in self.hist.iter().enumerate() {
                    let j = if i >= half { i - half } else { half - 1 - i };
                    abs[j] += c;
                }
                let levels = if self.min >= 0.0 { 255 } else { 128 };
                let w = self.hist_range / half as f32;
                let t = kl_threshold(&abs, levels) as f32 * w;
                (self.min.max(-t), self.max.min(t))
            }
        }
    }
}

/// TensorRT's entropy calibration: the number of histogram bins to keep so that the clipped
/// distribution quantized to `levels` buckets stays closest (KL divergence) to the original.
pub(super) fn kl_threshold(hist: &[u64], levels: usize) -> usize {
    let n = hist.len();
    let last_nonzero = hist
        .iter()
        .rposition(|&c| c > 0)
        .map(|i| i + 1)
        .unwrap_or(n);
    if last_nonzero <= levels {
        return last_nonzero.max(1);
    }
    let mut best = (f64::INFINITY, last_nonzero);
    let step = (last_nonzero - levels).div_ceil(256).max(1);
    let mut i = levels;
    while i <= last_nonzero {
        let mut p: Vec<f64> = hist[..i].iter().map(|&c| c as f64).collect();
        let outliers: f64 = hist[i..].iter().map(|&c| c as f64).sum();
        p[i - 1] += outliers;
        // Quantize the first i bins into `levels` buckets, spreading each bucket's mass over
        // its non-empty bins.
        let mut q = vec![0f64; i];
        for b in 0..levels {
            let s = b * i / levels;
            let e = ((b + 1) * i / levels).max(s + 1);
            let mass: f64 = hist[s..e].iter().map(|&c| c as f64).sum();
            let nonzero = hist[s..e].iter().filter(|&&c| c > 0).count();
            if nonzero > 0 {
                for k in s..e {
                    if hist[k] > 0 {
                        q[k] = mass / nonzero as f64;
                    }
                }
            }
        }
        let ps: f64 = p.iter().sum();
        let qs: f64 = q.iter().sum();
        let mut kl = 0.0;
        for k in 0..i {
            if p[k] > 0.0 {
                let pk = p[k] / ps;
                let qk = if q[k] > 0.0 { q[k] / qs } else { 1e-12 };
                kl += pk * (pk / qk).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i);
        }
        i += step;
    }
    best.1
}

/// Statistics of every planned tensor, gathered by running the FP32 model on calibration data.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// By tensor name.
    pub stats: HashMap<String, TensorStats>,
    /// Samples seen.
    pub samples: usize,
}

impl Calibration {
    /// Adds one run's values of the planned tensors (`values` in the order of `plan.tensors`).
    pub fn add(&mut self, plan: &Plan, method: CalibMethod, values: &[(Vec<usize>, &[f32])]) {
        let channel: HashSet<&str> = plan
            .channel_mean_tensors
            .iter()
            .map(|s| s.as_str())
            .collect();
        // Tensors are independent: scan them on every core (the engine is idle meanwhile).
        type Job<'v, 'd> = (TensorStats, &'v (Vec<usize>, &'d [f32]), bool);
        let mut work: Vec<Job> = plan
            .tensors
            .iter()
            .zip(values)
            .map(|(name, v)| {
                (
                    self.stats.remove(name).unwrap_or_default(),
                    v,
                    channel.contains(name.as_str()),
                )
            })
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(work.len().max(1));
        let per = work.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            for chunk in work.chunks_mut(per) {
                scope.spawn(move || {
                    for (st, (dims, data), ch) in chunk.iter_mut() {
                        st.update(dims, data, method.needs_histogram(), *ch);
                    }
                });
            }
        });
        for (name, (st, _, _)) in plan.tensors.iter().zip(work) {
            self.stats.insert(name.clone(), st);
        }
        self.samples += 1;
    }
}
