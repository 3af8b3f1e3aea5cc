//! Voxel-grid operations of the segmentation pipeline: exact reorientation (axis permutation
//! and flips, as nibabel's `apply_orientation`), separable linear resampling (half-voxel
//! centres, the field of view kept, as `skimage.transform.resize(order=1)` and
//! `torch.nn.functional.interpolate(align_corners=False)` place samples), the streaming
//! resampler that brings model-grid probabilities back to the input grid plane by plane, and
//! the largest connected component in place.
//!
//! Arrays here are `[n0, n1, n2]` with the first index fastest (NIfTI's order) unless a
//! function says "tensor order" (the last index fastest, as the model's tensor).

use super::config::GridOrientation;
use std::collections::VecDeque;

/// A permutation with flips taking a stored grid to an oriented one.
#[derive(Clone, Debug, PartialEq)]
pub struct Reorientation {
    /// Oriented axis `t` is stored axis `perm[t]`.
    pub perm: [usize; 3],
    /// Oriented axis `t` runs opposite to stored axis `perm[t]`.
    pub flip: [bool; 3],
    /// Stored grid size.
    pub stored: [usize; 3],
    /// Oriented grid size.
    pub oriented: [usize; 3],
}

/// For each voxel axis of `affine`, its dominant world axis and direction (nibabel's
/// `io_orientation` for near-axis-aligned grids: the largest direction cosine, each world axis
/// taken once, largest first).
pub fn axis_codes(affine: &[[f64; 4]; 4]) -> [(usize, i8); 3] {
    let mut out = [(0usize, 1i8); 3];
    let mut used_w = [false; 3];
    let mut used_v = [false; 3];
    for _ in 0..3 {
        let mut best = (0usize, 0usize, -1.0f64);
        for (v, used) in used_v.iter().enumerate() {
            if *used {
                continue;
            }
            let norm = (0..3)
                .map(|w| affine[w][v].powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            for (w, uw) in used_w.iter().enumerate() {
                let c = (affine[w][v] / norm).abs();
                if !uw && c > best.2 {
                    best = (v, w, c);
                }
            }
        }
        let (v, w, _) = best;
        used_v[v] = true;
        used_w[w] = true;
        out[v] = (w, if affine[w][v] >= 0.0 { 1 } else { -1 });
    }
    out
}

impl Reorientation {
    /// The reorientation of a grid of `dims` with `affine` to `target`.
    pub fn new(dims: [usize; 3], affine: &[[f64; 4]; 4], target: GridOrientation) -> Self {
        let codes = axis_codes(affine);
        let (perm, flip) = match target {
            GridOrientation::Stored => ([0, 1, 2], [false; 3]),
            GridOrientation::Codes(want) => {
                let mut perm = [0; 3];
                let mut flip = [false; 3];
                for t in 0..3 {
                    let v = (0..3).find(|&v| codes[v].0 == want[t].0).unwrap_or(t);
                    perm[t] = v;
                    flip[t] = codes[v].1 != want[t].1;
                }
                (perm, flip)
            }
        };
        Reorientation {
            perm,
            flip,
            stored: dims,
            oriented: [dims[perm[0]], dims[perm[1]], dims[perm[2]]],
        }
    }

    /// Nothing moves.
    pub fn is_identity(&self) -> bool {
        self.perm == [0, 1, 2] && self.flip == [false; 3]
    }

    /// The stored index of oriented voxel `o`.
    pub fn stored_index(&self, o: [usize; 3]) -> usize {
        let mut s = [0usize; 3];
        for (t, &ot) in o.iter().enumerate() {
            let v = self.perm[t];
            s[v] = if self.flip[t] {
                self.stored[v] - 1 - ot
            } else {
                ot
            };
        }
        s[0] + self.stored[0] * (s[1] + self.stored[1] * s[2])
    }

    /// The oriented grid's affine from the stored one.
    pub fn affine(&self, a: &[[f64; 4]; 4]) -> [[f64; 4]; 4] {
        let mut out = *a;
        for (row, o) in a.iter().zip(out.iter_mut()).take(3) {
            let mut origin = row[3];
            for (t, ot) in o.iter_mut().take(3).enumerate() {
                let v = self.perm[t];
                if self.flip[t] {
                    origin += row[v] * (self.stored[v] - 1) as f64;
                    *ot = -row[v];
                } else {
                    *ot = row[v];
                }
            }
            o[3] = origin;
        }
        out
    }

    /// `src` (stored grid) on the oriented grid.
    pub fn apply<T: Copy + Default>(&self, src: &[T]) -> Vec<T> {
        let [a, b, c] = self.oriented;
        let mut out = vec![T::default(); a * b * c];
        let mut k = 0;
        for z in 0..c {
            for y in 0..b {
                for x in 0..a {
                    out[k] = src[self.stored_index([x, y, z])];
                    k += 1;
                }
            }
        }
        out
    }

    /// `src` (oriented grid) back on the stored grid.
    pub fn invert<T: Copy + Default>(&self, src: &[T]) -> Vec<T> {
        let [a, b, c] = self.oriented;
        let mut out = vec![T::default(); src.len()];
        let mut k = 0;
        for z in 0..c {
            for y in 0..b {
                for x in 0..a {
                    out[self.stored_index([x, y, z])] = src[k];
                    k += 1;
                }
            }
        }
        out
    }
}

/// Linear interpolation taps from `n` samples to `m`: for each output, (lower index, upper
/// index, weight of the upper). Half-voxel centres: output `j` sits at input
/// `(j + 0.5) n / m - 0.5`, clamped to the first and last sample.
pub fn taps(n: usize, m: usize) -> Vec<(usize, usize, f32)> {
    let f = n as f64 / m as f64;
    (0..m)
        .map(|j| {
            let u = ((j as f64 + 0.5) * f - 0.5).clamp(0.0, (n - 1) as f64);
            let lo = u.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            (lo, hi, (u - lo as f64) as f32)
        })
        .collect()
}

/// Resamples one axis of a `dims` array (first index fastest) to `m` samples.
pub fn resample_axis(src: &[f32], dims: [usize; 3], axis: usize, m: usize) -> Vec<f32> {
    let n = dims[axis];
    let mut od = dims;
    od[axis] = m;
    let t = taps(n, m);
    let stride = match axis {
        0 => 1,
        1 => dims[0],
        _ => dims[0] * dims[1],
    };
    let mut out = vec![0f32; od.iter().product()];
    let mut k = 0;
    for z in 0..od[2] {
        for y in 0..od[1] {
            for x in 0..od[0] {
                let o = [x, y, z];
                let mut base = [x, y, z];
                base[axis] = 0;
                let b = base[0] + dims[0] * (base[1] + dims[1] * base[2]);
                let (lo, hi, w) = t[o[axis]];
                let (a, c) = (src[b + lo * stride], src[b + hi * stride]);
                out[k] = a + (c - a) * w;
                k += 1;
            }
        }
    }
    out
}

/// Resamples a `dims` array to `to`, axis by axis (the axes that shrink most first, so the
/// intermediates stay small).
pub fn resample(src: Vec<f32>, dims: [usize; 3], to: [usize; 3]) -> Vec<f32> {
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| {
        (to[a] as f64 / dims[a] as f64).total_cmp(&(to[b] as f64 / dims[b] as f64))
    });
    let mut cur = src;
    let mut d = dims;
    for a in order {
        if d[a] != to[a] {
            cur = resample_axis(&cur, d, a, to[a]);
            d[a] = to[a];
        }
    }
    cur
}

/// Labels in tensor order for `axis_order` `xyz` (the grid's first index slowest) on the grid
/// (`dims`, first index fastest); `zyx` is the same memory and is returned as is.
pub fn from_tensor_order(src: Vec<u8>, dims: [usize; 3], xyz: bool) -> Vec<u8> {
    if xyz {
        medinfer_core::reverse_axes(&src, dims)
    } else {
        src
    }
}

/// Brings K-channel probability planes on the model grid (tensor order, arriving in order
/// along the first dimension) back to the input grid by trilinear interpolation, and turns
/// each voxel's K values into a label with `decide`, plane by plane: two model planes are
/// held at a time.
pub struct BackResampler<F: Fn(&[f32]) -> u8> {
    k: usize,
    src: [usize; 3],
    dst: [usize; 3],
    t0: Vec<(usize, usize, f32)>,
    t1: Vec<(usize, usize, f32)>,
    t2: Vec<(usize, usize, f32)>,
    planes: VecDeque<(usize, Vec<f32>)>,
    next: usize,
    decide: F,
    /// The labels on the input grid, tensor order.
    pub labels: Vec<u8>,
}

impl<F: Fn(&[f32]) -> u8> BackResampler<F> {
    /// From a model grid of `src` to an input grid of `dst` (both tensor order), K channels.
    pub fn new(k: usize, src: [usize; 3], dst: [usize; 3], decide: F) -> Self {
        BackResampler {
            k,
            src,
            dst,
            t0: taps(src[0], dst[0]),
            t1: taps(src[1], dst[1]),
            t2: taps(src[2], dst[2]),
            planes: VecDeque::new(),
            next: 0,
            decide,
            labels: vec![0u8; dst.iter().product()],
        }
    }

    /// Model plane `idx` (K x src[1] x src[2]), in order.
    pub fn push(&mut self, idx: usize, plane: Vec<f32>) {
        self.planes.push_back((idx, plane));
        let (n1, n2) = (self.dst[1], self.dst[2]);
        let sp = self.src[1] * self.src[2];
        let mut vals = vec![0f32; self.k];
        while self.next < self.dst[0] {
            let (lo, hi, w0) = self.t0[self.next];
            if hi > idx {
                break;
            }
            while self.planes.front().is_some_and(|p| p.0 < lo) {
                self.planes.pop_front();
            }
            let find = |i: usize| &self.planes.iter().find(|p| p.0 == i).expect("held").1;
            let (pa, pb) = (find(lo), find(hi));
            let out = &mut self.labels[self.next * n1 * n2..(self.next + 1) * n1 * n2];
            for (y, &(y0, y1, wy)) in self.t1.iter().enumerate() {
                for (x, &(x0, x1, wx)) in self.t2.iter().enumerate() {
                    let (a, b, c, d) = (
                        y0 * self.src[2] + x0,
                        y0 * self.src[2] + x1,
                        y1 * self.src[2] + x0,
                        y1 * self.src[2] + x1,
                    );
                    for (k, v) in vals.iter_mut().enumerate() {
                        let bil = |p: &[f32]| {
                            let p = &p[k * sp..];
                            let top = p[a] + (p[b] - p[a]) * wx;
                            let bot = p[c] + (p[d] - p[c]) * wx;
                            top + (bot - top) * wy
                        };
                        let (u, l) = (bil(pa), bil(pb));
                        *v = u + (l - u) * w0;
                    }
                    out[y * n2 + x] = (self.decide)(&vals);
                }
            }
            self.next += 1;
        }
    }

    /// Every input plane was made.
    pub fn is_complete(&self) -> bool {
        self.next == self.dst[0]
    }
}

/// Keeps, for label `class`, only its largest 6-connected component (others set to 0), in
/// place; `dims` first index fastest. Uses the value 255 as a mark (labels must be below it).
/// Returns the voxels removed.
pub fn keep_largest(mask: &mut [u8], dims: [usize; 3], class: u8) -> usize {
    const MARK: u8 = 255;
    let [nx, ny, nz] = dims;
    let mut stack: Vec<usize> = Vec::new();
    let fill = |mask: &mut [u8], stack: &mut Vec<usize>, seed: usize, from: u8, to: u8| {
        let mut size = 0usize;
        mask[seed] = to;
        stack.push(seed);
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
            let mut visit = |j: usize| {
                if mask[j] == from {
                    mask[j] = to;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < nx {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - nx);
            }
            if y + 1 < ny {
                visit(i + nx);
            }
            if z > 0 {
                visit(i - nx * ny);
            }
            if z + 1 < nz {
                visit(i + nx * ny);
            }
        }
        size
    };
    let (mut best, mut best_size, mut total) = (None, 0usize, 0usize);
    for i in 0..mask.len() {
        if mask[i] == class {
            let n = fill(mask, &mut stack, i, class, MARK);
            total += n;
            // The last of equal sizes, as the cardiac pipeline always chose.
            if n >= best_size {
                best = Some(i);
                best_size = n;
            }
        }
    }
    if let Some(seed) = best {
        fill(mask, &mut stack, seed, MARK, class);
    }
    for v in mask.iter_mut() {
        if *v == MARK {
            *v = 0;
        }
    }
    total - best_size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorientation_round_trips_and_moves_the_affine() {
        // An LPS-stored grid (DICOM's patient axes) to RAS: x and y flip.
        let dims = [3, 4, 5];
        let mut a = [[0.0; 4]; 4];
        a[0][0] = -1.0;
        a[1][1] = -2.0;
        a[2][2] = 3.0;
        a[3][3] = 1.0;
        let r = Reorientation::new(dims, &a, GridOrientation::parse("RAS").unwrap());
        assert_eq!((r.perm, r.flip), ([0, 1, 2], [true, true, false]));
        let data: Vec<f32> = (0..60).map(|v| v as f32).collect();
        let o = r.apply(&data);
        assert_eq!(o[0], data[2 + 3 * 3]);
        assert_eq!(r.invert(&o), data);
        let b = r.affine(&a);
        // The oriented voxel 0 is the stored voxel (2, 3, 0): the same world point.
        assert_eq!([b[0][3], b[1][3], b[2][3]], [-2.0, -6.0, 0.0]);
        assert_eq!([b[0][0], b[1][1]], [1.0, 2.0]);
        // A permuted grid (stored axes S, R, A) to RAS.
        let mut p = [[0.0; 4]; 4];
        p[2][0] = 1.0;
        p[0][1] = 1.0;
        p[1][2] = 1.0;
        p[3][3] = 1.0;
        let r = Reorientation::new(dims, &p, GridOrientation::parse("RAS").unwrap());
        assert_eq!(r.perm, [1, 2, 0]);
        assert_eq!(r.oriented, [4, 5, 3]);
        assert_eq!(r.invert(&r.apply(&data)), data);
    }

    #[test]
    fn resampling_is_exact_on_linear_ramps_and_keeps_the_field_of_view() {
        // Half-voxel centres: 4 -> 8 samples of 0, 1, 2, 3 give 0, .25, .75, 1.25, ... clamped.
        let r = resample_axis(&[0.0, 1.0, 2.0, 3.0], [4, 1, 1], 0, 8);
        assert_eq!(r, vec![0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]);
        let same = resample((0..24).map(|v| v as f32).collect(), [2, 3, 4], [2, 3, 4]);
        assert_eq!(same, (0..24).map(|v| v as f32).collect::<Vec<_>>());
        // Tensor order (x slowest): element 1 is (x 0, y 0, z 1) = grid index 0 + 2 x (0 + 3 x 1).
        let mut t = vec![0u8; 24];
        t[1] = 9;
        let grid = from_tensor_order(t, [2, 3, 4], true);
        assert_eq!(grid[6], 9);
        assert_eq!(grid.iter().map(|&v| v as usize).sum::<usize>(), 9);
    }

    #[test]
    fn the_back_resampler_matches_whole_volume_interpolation() {
        // One channel, 3 x 4 x 5 model grid to 5 x 6 x 9: labels = value > 0.5 after
        // trilinear interpolation, planes pushed one at a time.
        let src = [3, 4, 5];
        let dst = [5, 6, 9];
        let p: Vec<f32> = (0..60).map(|i| ((i * 37) % 11) as f32 / 10.0).collect();
        let mut br = BackResampler::new(1, src, dst, |v: &[f32]| (v[0] > 0.5) as u8);
        for z in 0..3 {
            br.push(z, p[z * 20..(z + 1) * 20].to_vec());
        }
        assert!(br.is_complete());
        // The same through resample() on the reversed axis order (tensor order is the
        // last index fastest).
        let whole = resample(p, [src[2], src[1], src[0]], [dst[2], dst[1], dst[0]]);
        let want: Vec<u8> = whole.iter().map(|&v| (v > 0.5) as u8).collect();
        assert_eq!(br.labels, want);
    }

    #[test]
    fn the_largest_component_stays() {
        let dims = [5, 3, 2];
        let mut m = vec![0u8; 30];
        for i in [0, 1, 5, 6, 15] {
            m[i] = 1; // a 5-voxel blob (0,1 / 5,6 / 15 under 0)
        }
        m[4] = 1; // a single voxel far away
        m[29] = 2;
        let removed = keep_largest(&mut m, dims, 1);
        assert_eq!(removed, 1);
        assert_eq!(m.iter().filter(|&&v| v == 1).count(), 5);
        assert_eq!(m[4], 0);
        assert_eq!(m[29], 2);
    }
}
