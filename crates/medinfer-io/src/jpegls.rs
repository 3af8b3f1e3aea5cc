//! JPEG-LS (ITU-T T.87 / ISO 14495-1) decoding, written for medinfer: lossless and
//! near-lossless, 2 to 16 bits, one or three components, every interleave mode (none, line,
//! sample), preset coding parameters (LSE id 1).
//!
//! Written here rather than taken from a crate because the decoders that exist do not fit:
//! CharLS (through dicom-rs's `charls` feature) needs cmake and a C++ compiler at build time,
//! which the README's first command cannot assume; the pure-Rust crates found decode one
//! component only (pure_jpegls) or come with a whole second DICOM toolkit
//! (dicom-toolkit-codec). The algorithm follows T.87 Annex A (context modelling, the median
//! edge detector, limited-length Golomb codes, run mode with its interruption samples) in the
//! arrangement CharLS uses, and is checked against CharLS (pyjpegls) on the DICOM corpus.
//! Not supported, each a clear error: mapping tables (palettised JPEG-LS), restart markers,
//! point transforms, sub-sampled components.

/// A decoded JPEG-LS image: samples interleaved by pixel (`components` per pixel).
#[derive(Debug)]
pub struct Image {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Components per pixel.
    pub components: usize,
    /// Bits per sample.
    pub precision: u8,
    /// `width x height x components` samples, row-major, components last.
    pub samples: Vec<u16>,
}

/// Why a JPEG-LS stream could not be decoded.
#[derive(Clone, Debug, thiserror::Error)]
#[error("JPEG-LS: {0}")]
pub struct JpegLsError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, JpegLsError> {
    Err(JpegLsError(m.into()))
}

/// Largest image decoded (samples).
const MAX_SAMPLES: usize = 1 << 31;

const J: [u32; 32] = [
    0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12, 13,
    14, 15,
];

/// The coding parameters of a scan (T.87 C.2.4.1).
#[derive(Clone, Copy, Debug)]
struct Params {
    maxval: i32,
    near: i32,
    t1: i32,
    t2: i32,
    t3: i32,
    reset: i32,
    range: i32,
    qbpp: u32,
    limit: i32,
}

fn clamp_t(i: i32, j: i32, maxval: i32) -> i32 {
    if i > maxval || i < j {
        j
    } else {
        i
    }
}

fn ceil_log2(v: i32) -> u32 {
    let mut n = 0;
    while (1i64 << n) < v as i64 {
        n += 1;
    }
    n
}

impl Params {
    fn new(precision: u8, near: i32, preset: Preset) -> Result<Params, JpegLsError> {
        let maxval = if preset.maxval > 0 {
            preset.maxval
        } else {
            (1i32 << precision) - 1
        };
        if near < 0 || near > (maxval / 2).min(255) {
            return err(format!("NEAR {near} for MAXVAL {maxval}"));
        }
        let (b1, b2, b3) = (3, 7, 21);
        let (d1, d2, d3) = if maxval >= 128 {
            let f = (maxval.min(4095) + 128) / 256;
            let t1 = clamp_t(f * (b1 - 2) + 2 + 3 * near, near + 1, maxval);
            let t2 = clamp_t(f * (b2 - 3) + 3 + 5 * near, t1, maxval);
            let t3 = clamp_t(f * (b3 - 4) + 4 + 7 * near, t2, maxval);
            (t1, t2, t3)
        } else {
            let f = 256 / (maxval + 1);
            let t1 = clamp_t((b1 / f).max(2) + 3 * near, near + 1, maxval);
            let t2 = clamp_t((b2 / f).max(3) + 5 * near, t1, maxval);
            let t3 = clamp_t((b3 / f).max(4) + 7 * near, t2, maxval);
            (t1, t2, t3)
        };
        let t1 = if preset.t1 > 0 { preset.t1 } else { d1 };
        let t2 = if preset.t2 > 0 { preset.t2 } else { d2 };
        let t3 = if preset.t3 > 0 { preset.t3 } else { d3 };
        let reset = if preset.reset > 0 { preset.reset } else { 64 };
        if !(t1 <= t2 && t2 <= t3 && t3 <= maxval.max(1) && reset >= 3) {
            return err(format!(
                "invalid coding parameters T1 {t1} T2 {t2} T3 {t3} RESET {reset}"
            ));
        }
        let range = (maxval + 2 * near) / (2 * near + 1) + 1;
        let qbpp = ceil_log2(range);
        let bpp = ceil_log2(maxval + 1).max(2);
        let limit = 2 * (bpp as i32 + (bpp as i32).max(8));
        Ok(Params {
            maxval,
            near,
            t1,
            t2,
            t3,
            reset,
            range,
            qbpp,
            limit,
        })
    }

    fn quantize(&self, d: i32) -> i32 {
        if d <= -self.t3 {
            -4
        } else if d <= -self.t2 {
            -3
        } else if d <= -self.t1 {
            -2
        } else if d < -self.near {
            -1
        } else if d <= self.near {
            0
        } else if d < self.t1 {
            1
        } else if d < self.t2 {
            2
        } else if d < self.t3 {
            3
        } else {
            4
        }
    }

    fn context(&self, a: i32, b: i32, c: i32, d: i32) -> i32 {
        (self.quantize(d - b) * 9 + self.quantize(b - c)) * 9 + self.quantize(c - a)
    }

    /// Prediction error scaled back, taken modulo the range, clamped (T.87 A.4.4 / A.5.2).
    fn reconstruct(&self, px: i32, errval: i32) -> i32 {
        let mut v = px + errval * (2 * self.near + 1);
        if v < -self.near {
            v += self.range * (2 * self.near + 1);
        } else if v > self.maxval + self.near {
            v -= self.range * (2 * self.near + 1);
        }
        v.clamp(0, self.maxval)
    }
}

/// Preset coding parameters from an LSE marker (0 = default).
#[derive(Clone, Copy, Debug, Default)]
struct Preset {
    maxval: i32,
    t1: i32,
    t2: i32,
    t3: i32,
    reset: i32,
}

/// Reads entropy-coded bits, undoing JPEG-LS's bit stuffing (after 0xFF, one 0 bit is inserted).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
    last_ff: bool,
    ended: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            pos: 0,
            acc: 0,
            n: 0,
            last_ff: false,
            ended: false,
        }
    }

    fn fill(&mut self) {
        while self.n <= 48 {
            if self.ended || self.pos >= self.data.len() {
                // Past the end of the scan: zeros (a valid stream never reads them).
                self.ended = true;
                self.acc <<= 8;
                self.n += 8;
                continue;
            }
            let b = self.data[self.pos];
            if self.last_ff {
                if b & 0x80 != 0 {
                    // A marker: the scan data ends here.
                    self.ended = true;
                    continue;
                }
                self.acc = (self.acc << 7) | b as u64;
                self.n += 7;
            } else {
                self.acc = (self.acc << 8) | b as u64;
                self.n += 8;
            }
            self.last_ff = b == 0xFF;
            self.pos += 1;
        }
    }

    fn read(&mut self, k: u32) -> i32 {
        if k == 0 {
            return 0;
        }
        if self.n < k {
            self.fill();
        }
        self.n -= k;
        ((self.acc >> self.n) & ((1u64 << k) - 1)) as i32
    }

    fn bit(&mut self) -> bool {
        self.read(1) == 1
    }

    /// Zeros before the next 1 (at most `cap`; more is a corrupt stream).
    fn zeros(&mut self, cap: i32) -> Result<i32, JpegLsError> {
        let mut z = 0;
        while !self.bit() {
            z += 1;
            if z > cap {
                return err("corrupt scan data (unary code too long)");
            }
        }
        Ok(z)
    }

    /// Bytes of the data consumed so far (whole bytes).
    fn consumed(&self) -> usize {
        self.pos
    }
}

/// A regular-mode context (T.87 A.2).
#[derive(Clone, Copy)]
struct Ctx {
    a: i32,
    b: i32,
    c: i32,
    n: i32,
}

/// A run-interruption context (T.87 A.7.2).
#[derive(Clone, Copy)]
struct RunCtx {
    a: i32,
    n: i32,
    nn: i32,
    ritype: i32,
}

struct Coder<'p, 'd> {
    p: &'p Params,
    bits: Bits<'d>,
    ctx: Vec<Ctx>,
    run: [RunCtx; 2],
    run_index: usize,
}

impl<'p, 'd> Coder<'p, 'd> {
    fn new(p: &'p Params, data: &'d [u8]) -> Self {
        let a = ((p.range + 32) / 64).max(2);
        Coder {
            p,
            bits: Bits::new(data),
            ctx: vec![
                Ctx {
                    a,
                    b: 0,
                    c: 0,
                    n: 1
                };
                365
            ],
            run: [
                RunCtx {
                    a,
                    n: 1,
                    nn: 0,
                    ritype: 0,
                },
                RunCtx {
                    a,
                    n: 1,
                    nn: 0,
                    ritype: 1,
                },
            ],
            run_index: 0,
        }
    }

    fn golomb(&mut self, k: u32, limit: i32) -> Result<i32, JpegLsError> {
        let q = self.p.qbpp as i32;
        let high = self.bits.zeros(limit)?;
        if high >= limit - (q + 1) {
            return Ok(self.bits.read(self.p.qbpp) + 1);
        }
        if k == 0 {
            return Ok(high);
        }
        Ok((high << k) + self.bits.read(k))
    }

    /// One regular-mode sample with context `qs` (signed) and neighbours' prediction.
    fn regular(&mut self, qs: i32, a: i32, b: i32, c: i32) -> Result<i32, JpegLsError> {
        let p = *self.p;
        let sign = if qs < 0 { -1 } else { 1 };
        let q = (qs * sign) as usize;
        let px = if c >= a.max(b) {
            a.min(b)
        } else if c <= a.min(b) {
            a.max(b)
        } else {
            a + b - c
        };
        let cx = self.ctx[q];
        let px = (px + sign * cx.c).clamp(0, p.maxval);
        let mut k = 0u32;
        while (cx.n << k) < cx.a {
            k += 1;
            if k > 24 {
                return err("corrupt context state");
            }
        }
        let m = self.golomb(k, p.limit)?;
        // Inverse error mapping (T.87 A.5.2), with the special mapping of A.5.2 note when
        // NEAR = 0, k = 0 and 2B <= -N: the sign flip applies to the unmapped value.
        let mut errval = (m >> 1) ^ -(m & 1);
        if k == 0 && p.near == 0 && 2 * cx.b + cx.n - 1 < 0 {
            errval ^= -1;
        }
        if errval.abs() > 65535 {
            return err("corrupt scan data (error value out of range)");
        }
        // Context update (T.87 A.6).
        let x = &mut self.ctx[q];
        x.a += errval.abs();
        x.b += errval * (2 * p.near + 1);
        if x.n == p.reset {
            x.a >>= 1;
            x.b >>= 1;
            x.n >>= 1;
        }
        x.n += 1;
        if x.b + x.n <= 0 {
            x.b += x.n;
            if x.b <= -x.n {
                x.b = -x.n + 1;
            }
            if x.c > -128 {
                x.c -= 1;
            }
        } else if x.b > 0 {
            x.b -= x.n;
            if x.b > 0 {
                x.b = 0;
            }
            if x.c < 127 {
                x.c += 1;
            }
        }
        Ok(p.reconstruct(px, errval * sign))
    }

    /// The length of a run of `left` at most `remaining` samples (T.87 A.7.1).
    fn run_length(&mut self, remaining: usize) -> Result<usize, JpegLsError> {
        let mut index = 0usize;
        while self.bits.bit() {
            let full = 1usize << J[self.run_index];
            let count = full.min(remaining - index);
            index += count;
            if count == full {
                self.run_index = (self.run_index + 1).min(31);
            }
            if index == remaining {
                break;
            }
        }
        if index != remaining {
            let j = J[self.run_index];
            index += self.bits.read(j) as usize;
        }
        if index > remaining {
            return err("corrupt scan data (run past the end of the line)");
        }
        Ok(index)
    }

    /// One run-interruption error (T.87 A.7.2).
    fn ri_error(&mut self, which: usize) -> Result<i32, JpegLsError> {
        let limit = self.p.limit - J[self.run_index] as i32 - 1;
        let rc = self.run[which];
        let temp = rc.a + (rc.n >> 1) * rc.ritype;
        let (mut k, mut ntest) = (0u32, rc.n);
        while ntest < temp {
            ntest <<= 1;
            k += 1;
            if k > 24 {
                return err("corrupt run context");
            }
        }
        let em = self.golomb(k, limit)?;
        let t = em + rc.ritype;
        let map = t & 1;
        let abs = (t + map) / 2;
        let negative = (k != 0 || 2 * rc.nn >= rc.n) == (map == 1);
        let errval = if negative { -abs } else { abs };
        let r = &mut self.run[which];
        if errval < 0 {
            r.nn += 1;
        }
        r.a += (em + 1 - r.ritype) >> 1;
        if r.n == self.p.reset {
            r.a >>= 1;
            r.n >>= 1;
            r.nn >>= 1;
        }
        r.n += 1;
        Ok(errval)
    }

    /// The run-interruption sample after a run of `ra` above `rb`.
    fn ri_sample(&mut self, ra: i32, rb: i32) -> Result<i32, JpegLsError> {
        if (ra - rb).abs() <= self.p.near {
            let e = self.ri_error(1)?;
            Ok(self.p.reconstruct(ra, e))
        } else {
            let e = self.ri_error(0)?;
            let s = if rb - ra < 0 { -1 } else { 1 };
            Ok(self.p.reconstruct(rb, e * s))
        }
    }

    /// Decodes one line of `cs` interleaved components into `cur` from `prev` (both with one
    /// sample of padding at each end: index 1 is the first pixel).
    fn line(
        &mut self,
        prev: &[Vec<i32>],
        cur: &mut [Vec<i32>],
        w: usize,
    ) -> Result<(), JpegLsError> {
        let cs = cur.len();
        let mut x = 1usize;
        while x <= w {
            let (mut qs, mut flat) = ([0i32; 3], true);
            for c in 0..cs {
                let (a, b, cc, d) = (cur[c][x - 1], prev[c][x], prev[c][x - 1], prev[c][x + 1]);
                qs[c] = self.p.context(a, b, cc, d);
                flat &= qs[c] == 0;
            }
            if !flat {
                for c in 0..cs {
                    let (a, b, cc) = (cur[c][x - 1], prev[c][x], prev[c][x - 1]);
                    cur[c][x] = self.regular(qs[c], a, b, cc)?;
                }
                x += 1;
                continue;
            }
            // Run mode: pixels equal (within NEAR) to the one on the left.
            let ra: Vec<i32> = (0..cs).map(|c| cur[c][x - 1]).collect();
            let n = self.run_length(w - x + 1)?;
            for i in 0..n {
                for (c, &v) in ra.iter().enumerate() {
                    cur[c][x + i] = v;
                }
            }
            x += n;
            if x > w {
                break;
            }
            // Interruption sample.
            if cs == 1 {
                let rb = prev[0][x];
                cur[0][x] = self.ri_sample(ra[0], rb)?;
            } else {
                for c in 0..cs {
                    let e = self.ri_error(0)?;
                    let rb = prev[c][x];
                    let s = if rb - ra[c] < 0 { -1 } else { 1 };
                    cur[c][x] = self.p.reconstruct(rb, e * s);
                }
            }
            self.run_index = self.run_index.saturating_sub(1);
            x += 1;
        }
        Ok(())
    }
}

/// Decodes a JPEG-LS stream (SOI ... EOI). `expect` is `(columns, rows, components)`.
pub fn decode(data: &[u8], expect: (usize, usize, usize)) -> Result<Image, JpegLsError> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return err("not a JPEG-LS stream (no SOI marker)");
    }
    let u16_at = |i: usize| -> Result<usize, JpegLsError> {
        match data.get(i..i + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]]) as usize),
            None => err("truncated marker segment"),
        }
    };
    let mut pos = 2;
    let mut frame: Option<(usize, usize, u8, Vec<u8>)> = None;
    let mut preset = Preset::default();
    let mut planes: Vec<Vec<u16>> = Vec::new();
    let mut done_components = 0usize;
    loop {
        // Skip fill bytes.
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if pos + 1 >= data.len() || data[pos] != 0xFF {
            return err(format!("expected a marker at byte {pos}"));
        }
        let marker = data[pos + 1];
        pos += 2;
        match marker {
            0xD9 => break,
            0xF7 => {
                let len = u16_at(pos)?;
                let seg = data
                    .get(pos + 2..pos + len)
                    .ok_or_else(|| JpegLsError("truncated frame header".into()))?;
                if seg.len() < 6 {
                    return err("truncated frame header");
                }
                let precision = seg[0];
                let rows = u16::from_be_bytes([seg[1], seg[2]]) as usize;
                let cols = u16::from_be_bytes([seg[3], seg[4]]) as usize;
                let nf = seg[5] as usize;
                if !(2..=16).contains(&precision) {
                    return err(format!("precision {precision} (2 to 16 supported)"));
                }
                if nf == 0 || nf > 4 || seg.len() < 6 + 3 * nf {
                    return err(format!("{nf} components"));
                }
                let ids: Vec<u8> = (0..nf).map(|i| seg[6 + 3 * i]).collect();
                for i in 0..nf {
                    if seg[7 + 3 * i] != 0x11 {
                        return err("sub-sampled components are not supported");
                    }
                }
                if (cols, rows, nf) != expect {
                    return err(format!(
                        "the stream is {cols}x{rows}x{nf}, the DICOM header declares {}x{}x{}",
                        expect.0, expect.1, expect.2
                    ));
                }
                if cols * rows * nf > MAX_SAMPLES || cols == 0 || rows == 0 {
                    return err(format!("{cols}x{rows}x{nf} samples"));
                }
                planes = vec![vec![0u16; cols * rows]; nf];
                frame = Some((cols, rows, precision, ids));
                pos += len;
            }
            0xF8 => {
                let len = u16_at(pos)?;
                let seg = data
                    .get(pos + 2..pos + len)
                    .ok_or_else(|| JpegLsError("truncated LSE segment".into()))?;
                match seg.first() {
                    Some(1) if seg.len() >= 11 => {
                        let v = |i: usize| u16::from_be_bytes([seg[i], seg[i + 1]]) as i32;
                        preset = Preset {
                            maxval: v(1),
                            t1: v(3),
                            t2: v(5),
                            t3: v(7),
                            reset: v(9),
                        };
                    }
                    Some(id) => {
                        return err(format!(
                            "LSE segment type {id} (mapping tables) is not supported"
                        ))
                    }
                    None => return err("empty LSE segment"),
                }
                pos += len;
            }
            0xDD => return err("restart intervals (DRI) are not supported"),
            0xDA => {
                let (cols, rows, precision, ids) = frame
                    .clone()
                    .ok_or_else(|| JpegLsError("scan before the frame header".into()))?;
                let len = u16_at(pos)?;
                let seg = data
                    .get(pos + 2..pos + len)
                    .ok_or_else(|| JpegLsError("truncated scan header".into()))?;
                let ns = *seg.first().unwrap_or(&0) as usize;
                if ns == 0 || seg.len() < 1 + 2 * ns + 3 {
                    return err("invalid scan header");
                }
                let mut comps = Vec::new();
                for i in 0..ns {
                    let id = seg[1 + 2 * i];
                    if seg[2 + 2 * i] != 0 {
                        return err("mapping tables are not supported");
                    }
                    let c = ids
                        .iter()
                        .position(|&x| x == id)
                        .ok_or_else(|| JpegLsError(format!("scan names unknown component {id}")))?;
                    comps.push(c);
                }
                let near = seg[1 + 2 * ns] as i32;
                let ilv = seg[2 + 2 * ns];
                if seg[3 + 2 * ns] & 0x0F != 0 {
                    return err("point transforms are not supported");
                }
                let p = Params::new(precision, near, preset)?;
                pos += len;
                let scan = &data[pos..];
                let used = decode_scan(scan, &p, ilv, &comps, cols, rows, &mut planes)?;
                done_components += comps.len();
                // The bit reader may have stopped just past the FF of the next marker.
                pos += used.saturating_sub(2);
                // Find the next marker (skip any trailing bits / padding).
                while pos + 1 < data.len() && !(data[pos] == 0xFF && data[pos + 1] >= 0x80) {
                    pos += 1;
                }
            }
            0xD0..=0xD7 => return err("restart markers are not supported"),
            0xE0..=0xEF | 0xFE | 0xF9..=0xFD => {
                pos += u16_at(pos)?;
            }
            other => return err(format!("unexpected marker FF{other:02X}")),
        }
    }
    let (cols, rows, precision, ids) =
        frame.ok_or_else(|| JpegLsError("no frame header".into()))?;
    if done_components < ids.len() {
        return err(format!(
            "{done_components} of {} components decoded before EOI",
            ids.len()
        ));
    }
    let nf = ids.len();
    let mut samples = vec![0u16; cols * rows * nf];
    for (c, plane) in planes.iter().enumerate() {
        for (i, &v) in plane.iter().enumerate() {
            samples[i * nf + c] = v;
        }
    }
    Ok(Image {
        width: cols,
        height: rows,
        components: nf,
        precision,
        samples,
    })
}

/// Decodes one scan into `planes`; returns the bytes of `data` it used.
fn decode_scan(
    data: &[u8],
    p: &Params,
    ilv: u8,
    comps: &[usize],
    cols: usize,
    rows: usize,
    planes: &mut [Vec<u16>],
) -> Result<usize, JpegLsError> {
    let mut coder = Coder::new(p, data);
    match ilv {
        // One component per scan, or lines of each component in turn, each with its own run
        // index (T.87 A.8.2), contexts shared.
        0 | 1 => {
            if ilv == 0 && comps.len() != 1 {
                return err("a non-interleaved scan with several components");
            }
            let n = comps.len();
            let mut prev: Vec<Vec<Vec<i32>>> = vec![vec![vec![0; cols + 2]]; n];
            let mut cur: Vec<Vec<Vec<i32>>> = vec![vec![vec![0; cols + 2]]; n];
            let mut run_index = vec![0usize; n];
            for y in 0..rows {
                for k in 0..n {
                    let pv = &mut prev[k][0];
                    pv[cols + 1] = pv[cols];
                    cur[k][0][0] = pv[1];
                    coder.run_index = run_index[k];
                    coder.line(&prev[k], &mut cur[k], cols)?;
                    run_index[k] = coder.run_index;
                    let plane = &mut planes[comps[k]];
                    for x in 0..cols {
                        plane[y * cols + x] = cur[k][0][x + 1] as u16;
                    }
                    std::mem::swap(&mut prev[k], &mut cur[k]);
                }
            }
        }
        // Samples interleaved: components of one pixel together, runs over whole pixels.
        2 => {
            let n = comps.len();
            if !(2..=3).contains(&n) {
                return err(format!("sample interleave with {n} components"));
            }
            let mut prev: Vec<Vec<i32>> = vec![vec![0; cols + 2]; n];
            let mut cur: Vec<Vec<i32>> = vec![vec![0; cols + 2]; n];
            for y in 0..rows {
                for c in 0..n {
                    prev[c][cols + 1] = prev[c][cols];
                    cur[c][0] = prev[c][1];
                }
                coder.line(&prev, &mut cur, cols)?;
                for (k, &c) in comps.iter().enumerate() {
                    for x in 0..cols {
                        planes[c][y * cols + x] = cur[k][x + 1] as u16;
                    }
                }
                std::mem::swap(&mut prev, &mut cur);
            }
        }
        other => return err(format!("interleave mode {other}")),
    }
    Ok(coder.bits.consumed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_thresholds_follow_the_standard() {
        // T.87 Table C.3 for 8-bit lossless: T1 3, T2 7, T3 21; 16-bit: 18, 67, 276.
        let p = Params::new(8, 0, Preset::default()).unwrap();
        assert_eq!((p.t1, p.t2, p.t3, p.reset, p.range), (3, 7, 21, 64, 256));
        assert_eq!((p.qbpp, p.limit), (8, 32));
        let p = Params::new(16, 0, Preset::default()).unwrap();
        assert_eq!((p.t1, p.t2, p.t3), (18, 67, 276));
        let p = Params::new(8, 3, Preset::default()).unwrap();
        assert_eq!((p.t1, p.t2, p.t3), (12, 22, 42));
    }

    #[test]
    fn hostile_streams_are_errors() {
        assert!(decode(b"", (1, 1, 1)).is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF], (1, 1, 1)).is_err());
        // A frame of another size than the DICOM header's.
        let sof = [
            0xFF, 0xD8, 0xFF, 0xF7, 0, 11, 8, 0, 4, 0, 4, 1, 1, 0x11, 0, 0xFF, 0xD9,
        ];
        assert!(decode(&sof, (8, 8, 1))
            .unwrap_err()
            .to_string()
            .contains("4x4x1"));
        // A scan before any frame header.
        let sos = [0xFF, 0xD8, 0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0, 0, 0xFF, 0xD9];
        assert!(decode(&sos, (1, 1, 1)).is_err());
    }
}
