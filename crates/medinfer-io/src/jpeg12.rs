//! A decoder for 12-bit lossy JPEG (ISO 10918-1 extended sequential DCT, Huffman coded: DICOM's
//! "JPEG Extended (Process 2 & 4)", 1.2.840.10008.1.2.4.51, with 12-bit samples), grayscale.
//!
//! Written here because no crate on crates.io decodes it: `jpeg-decoder` and `zune-jpeg` refuse
//! 12-bit DCT data, and the C libraries that do (libjpeg-turbo's 12-bit build, IJG libjpeg 9)
//! come with no Rust binding that exposes it. The process is small: marker parsing, 16-bit
//! quantisation tables, Huffman decoding with the extended magnitude categories, a separable
//! float IDCT (the exact transform; integer IDCTs of other decoders differ from it by a grey
//! level or two), the 2048 level shift and clamping to 12 bits. Progressive and arithmetic
//! 12-bit files, and colour ones, are refused with a clear error (none were seen in DICOM).
//!
//! Every length and count comes from untrusted bytes: each is checked against the data present
//! and against the image size the DICOM header declared before anything is allocated.

/// A decoded frame: samples in raster order, 0..4095 (or 0..255 for 8-bit data).
#[derive(Debug)]
pub struct Frame {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Sample precision in bits (8 or 12).
    pub precision: u8,
    /// Samples.
    pub data: Vec<u16>,
    /// Bytes consumed from the input, up to and including EOI.
    pub consumed: usize,
}

const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// A Huffman table in the form of ISO 10918-1 F.2.2.3 (codes of each length are consecutive).
#[derive(Clone)]
struct Huffman {
    /// Largest code of each length 1..=16 (-1 when none).
    maxcode: [i32; 17],
    /// Index into `values` of the first code of each length, minus that code.
    valptr: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, String> {
        let mut maxcode = [-1i32; 17];
        let mut valptr = [0i32; 17];
        let mut code = 0i32;
        let mut k = 0i32;
        for len in 1..=16 {
            let n = counts[len - 1] as i32;
            if n > 0 {
                valptr[len] = k - code;
                code += n;
                k += n;
                maxcode[len] = code - 1;
                if code > (1 << len) {
                    return Err("invalid Huffman table (too many codes)".into());
                }
            }
            code <<= 1;
        }
        if k as usize != values.len() {
            return Err("Huffman table counts do not match its values".into());
        }
        Ok(Huffman {
            maxcode,
            valptr,
            values,
        })
    }
}

/// Reads entropy-coded bits, removing stuffed zero bytes; stops at a marker.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u32,
    n: u32,
    /// A marker was reached: only zero bits follow until the caller handles it.
    marker: Option<u8>,
}

impl<'a> Bits<'a> {
    fn fill(&mut self) {
        while self.n <= 24 {
            let mut byte = 0u8;
            if self.marker.is_none() && self.pos < self.data.len() {
                byte = self.data[self.pos];
                if byte == 0xFF {
                    match self.data.get(self.pos + 1) {
                        Some(0x00) => self.pos += 2,
                        Some(&m) => {
                            self.marker = Some(m);
                            byte = 0;
                        }
                        None => {
                            self.pos += 1;
                            self.marker = Some(0xD9);
                            byte = 0;
                        }
                    }
                } else {
                    self.pos += 1;
                }
            }
            self.acc |= (byte as u32) << (24 - self.n);
            self.n += 8;
        }
    }
    fn bit(&mut self) -> u32 {
        if self.n == 0 {
            self.fill();
        }
        let b = self.acc >> 31;
        self.acc <<= 1;
        self.n -= 1;
        b
    }
    fn bits(&mut self, count: u32) -> u32 {
        if count == 0 {
            return 0;
        }
        if self.n < count {
            self.fill();
        }
        let v = self.acc >> (32 - count);
        self.acc <<= count;
        self.n -= count;
        v
    }
    fn decode(&mut self, h: &Huffman) -> Result<u8, String> {
        let mut code = 0i32;
        for len in 1..=16 {
            code = (code << 1) | self.bit() as i32;
            if code <= h.maxcode[len] {
                let i = (h.valptr[len] + code) as usize;
                return h
                    .values
                    .get(i)
                    .copied()
                    .ok_or_else(|| "corrupt Huffman code".to_string());
            }
        }
        Err("corrupt JPEG data: no Huffman code matches".into())
    }
    /// Drops buffered bits and moves past the restart marker that must follow.
    fn restart(&mut self) -> Result<(), String> {
        self.acc = 0;
        self.n = 0;
        match self.marker.take() {
            Some(0xD0..=0xD7) => {
                self.pos += 2;
                Ok(())
            }
            Some(m) => Err(format!("expected a restart marker, found FF{m:02X}")),
            None => {
                // The marker may not have been read into the buffer yet.
                while self.pos + 1 < self.data.len() && self.data[self.pos] != 0xFF {
                    self.pos += 1;
                }
                match self.data.get(self.pos + 1) {
                    Some(0xD0..=0xD7) => {
                        self.pos += 2;
                        Ok(())
                    }
                    _ => Err("missing restart marker".into()),
                }
            }
        }
    }
}

fn extend(v: u32, s: u32) -> i32 {
    if s == 0 {
        0
    } else if v < (1 << (s - 1)) {
        v as i32 - (1 << s) + 1
    } else {
        v as i32
    }
}

fn u16_at(d: &[u8], i: usize) -> Result<usize, String> {
    match d.get(i..i + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]]) as usize),
        None => Err("truncated JPEG header".into()),
    }
}

/// `cos[x][u] = C(u) cos((2x + 1) u pi / 16) / 2`, the 1-D IDCT basis (C(0) = 1/sqrt 2, else 1).
fn idct_table() -> [[f32; 8]; 8] {
    let mut cos = [[0f32; 8]; 8];
    for (x, row) in cos.iter_mut().enumerate() {
        for (u, c) in row.iter_mut().enumerate() {
            let cu = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            *c = (cu * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos() / 2.0)
                as f32;
        }
    }
    cos
}

/// The exact 8x8 inverse DCT, separable, in f32; then level shift and clamp.
fn idct_block(coef: &[f32; 64], cos: &[[f32; 8]; 8], shift: f32, max: f32, out: &mut [f32; 64]) {
    let mut tmp = [0f32; 64];
    // Rows: tmp[y][x] = sum_u C(u) F[y][u] cos((2x+1)u pi/16) / 2.
    for y in 0..8 {
        for x in 0..8 {
            let mut s = 0f32;
            for u in 0..8 {
                s += coef[y * 8 + u] * cos[x][u];
            }
            tmp[y * 8 + x] = s;
        }
    }
    for x in 0..8 {
        for y in 0..8 {
            let mut s = 0f32;
            for v in 0..8 {
                s += tmp[v * 8 + x] * cos[y][v];
            }
            out[y * 8 + x] = (s + shift).round().clamp(0.0, max);
        }
    }
}

/// Decodes one JPEG stream starting at `data[0]` (SOI). `expect` is the image size the DICOM
/// header declared (columns, rows); any other size is an error, so nothing larger is allocated.
pub fn decode(data: &[u8], expect: (usize, usize)) -> Result<Frame, Jpeg12Error> {
    decode_stream(data, expect).map_err(Jpeg12Error)
}

/// Why a 12-bit JPEG stream could not be decoded.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct Jpeg12Error(pub String);

fn decode_stream(data: &[u8], expect: (usize, usize)) -> Result<Frame, String> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err("not a JPEG stream (no SOI marker)".into());
    }
    let mut qt: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac: [Option<Huffman>; 4] = [None, None, None, None];
    let mut frame: Option<(u8, usize, usize, usize)> = None; // precision, width, height, Tq
    let mut restart_interval = 0usize;
    let mut out: Option<Vec<u16>> = None;
    let mut pos = 2usize;
    loop {
        // Next marker (fill bytes allowed).
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1;
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        let Some(&m) = data.get(pos) else {
            return Err("truncated JPEG stream (no EOI)".into());
        };
        pos += 1;
        match m {
            0xD9 => break,
            // Restart markers, TEM, and a stuffed zero left after a scan are not segments.
            0xD0..=0xD7 | 0x01 | 0x00 => continue,
            _ => {}
        }
        let len = u16_at(data, pos)?;
        if len < 2 || pos + len > data.len() {
            return Err(format!(
                "JPEG segment FF{m:02X} runs past the end of the data"
            ));
        }
        let seg = &data[pos + 2..pos + len];
        match m {
            0xDB => {
                let mut i = 0;
                while i < seg.len() {
                    let (pq, tq) = (seg[i] >> 4, (seg[i] & 15) as usize);
                    i += 1;
                    if tq > 3 || pq > 1 {
                        return Err("invalid quantisation table".into());
                    }
                    let mut t = [0u16; 64];
                    for v in t.iter_mut() {
                        *v = if pq == 0 {
                            let b = *seg.get(i).ok_or("truncated quantisation table")?;
                            i += 1;
                            b as u16
                        } else {
                            let v = u16_at(seg, i).map_err(|_| "truncated quantisation table")?;
                            i += 2;
                            v as u16
                        };
                    }
                    qt[tq] = Some(t);
                }
            }
            0xC4 => {
                let mut i = 0;
                while i < seg.len() {
                    let (tc, th) = (seg[i] >> 4, (seg[i] & 15) as usize);
                    let counts: [u8; 16] = seg
                        .get(i + 1..i + 17)
                        .and_then(|c| c.try_into().ok())
                        .ok_or("truncated Huffman table")?;
                    let n: usize = counts.iter().map(|&c| c as usize).sum();
                    let values = seg
                        .get(i + 17..i + 17 + n)
                        .ok_or("truncated Huffman table")?
                        .to_vec();
                    i += 17 + n;
                    if th > 3 || tc > 1 {
                        return Err("invalid Huffman table class or id".into());
                    }
                    let h = Huffman::new(&counts, values)?;
                    if tc == 0 {
                        dc[th] = Some(h);
                    } else {
                        ac[th] = Some(h);
                    }
                }
            }
            0xC0 | 0xC1 => {
                if seg.len() < 6 {
                    return Err("truncated frame header".into());
                }
                let p = seg[0];
                let (h, w) = (u16_at(seg, 1)?, u16_at(seg, 3)?);
                let nf = seg[5] as usize;
                if nf != 1 {
                    return Err(format!(
                        "{nf}-component {p}-bit lossy JPEG is not supported (grayscale only)"
                    ));
                }
                if seg.len() < 9 {
                    return Err("truncated frame header".into());
                }
                if p != 8 && p != 12 {
                    return Err(format!("sample precision {p} is not 8 or 12"));
                }
                if (w, h) != expect {
                    return Err(format!(
                        "the JPEG frame is {w}x{h}, the DICOM header declares {}x{}",
                        expect.0, expect.1
                    ));
                }
                // One component: its sampling factors (seg[7]) do not change the block layout.
                frame = Some((p, w, h, (seg[8] & 3) as usize));
            }
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(format!(
                    "JPEG process FF{m:02X} (progressive, lossless or arithmetic) is not supported by the 12-bit decoder"
                ));
            }
            0xDD => {
                restart_interval = u16_at(seg, 0)?;
            }
            0xDA => {
                let (p, w, h, tq) = frame.ok_or("scan before frame header")?;
                if seg.is_empty() || seg[0] != 1 || seg.len() < 6 {
                    return Err("unsupported scan header (one component expected)".into());
                }
                let (td, ta) = ((seg[2] >> 4) as usize, (seg[2] & 15) as usize);
                let dct = dc
                    .get(td)
                    .and_then(|t| t.clone())
                    .ok_or("missing DC table")?;
                let act = ac
                    .get(ta)
                    .and_then(|t| t.clone())
                    .ok_or("missing AC table")?;
                let q = qt[tq].ok_or("missing quantisation table")?;
                let (bw, bh) = (w.div_ceil(8), h.div_ceil(8));
                let mut img = vec![0u16; w * h];
                let cos = idct_table();
                let shift = (1u32 << (p - 1)) as f32;
                let max = ((1u32 << p) - 1) as f32;
                let mut bits = Bits {
                    data: &data[pos + len..],
                    pos: 0,
                    acc: 0,
                    n: 0,
                    marker: None,
                };
                let mut pred = 0i32;
                let mut coef = [0f32; 64];
                let mut block = [0f32; 64];
                for mcu in 0..bw * bh {
                    if restart_interval > 0 && mcu > 0 && mcu % restart_interval == 0 {
                        bits.restart()?;
                        pred = 0;
                    }
                    coef.fill(0.0);
                    let s = bits.decode(&dct)? as u32;
                    if s > 16 {
                        return Err("corrupt DC coefficient".into());
                    }
                    pred = pred.wrapping_add(extend(bits.bits(s), s));
                    coef[0] = pred as f32 * q[0] as f32;
                    let mut k = 1;
                    while k < 64 {
                        let rs = bits.decode(&act)?;
                        let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
                        if s == 0 {
                            if r == 15 {
                                k += 16;
                                continue;
                            }
                            break;
                        }
                        k += r;
                        if k > 63 {
                            return Err("corrupt AC coefficients (index past 63)".into());
                        }
                        coef[ZIGZAG[k]] = extend(bits.bits(s), s) as f32 * q[k] as f32;
                        k += 1;
                    }
                    idct_block(&coef, &cos, shift, max, &mut block);
                    let (bx, by) = (mcu % bw, mcu / bw);
                    for y in 0..8 {
                        let yy = by * 8 + y;
                        if yy >= h {
                            break;
                        }
                        for x in 0..8 {
                            let xx = bx * 8 + x;
                            if xx < w {
                                img[yy * w + xx] = block[y * 8 + x] as u16;
                            }
                        }
                    }
                }
                out = Some(img);
                // Continue after the entropy-coded data, at the next marker.
                pos = pos + len + bits.pos;
                continue;
            }
            _ => {} // APPn, COM, DNL and others: skipped
        }
        pos += len;
    }
    let (p, w, h, _) = frame.ok_or("no frame header")?;
    let data_out = out.ok_or("no scan in the JPEG stream")?;
    Ok(Frame {
        width: w,
        height: h,
        precision: p,
        data: data_out,
        consumed: pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_streams_are_errors() {
        assert!(decode(b"", (8, 8)).is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF], (8, 8)).is_err());
        // A frame header declaring another size than the DICOM header.
        let sof = [
            0xFF, 0xD8, 0xFF, 0xC1, 0, 11, 12, 0x10, 0, 0x10, 0, 1, 1, 0x11, 0, 0xFF, 0xD9,
        ];
        let e = decode(&sof, (8, 8)).unwrap_err().to_string();
        assert!(e.contains("4096x4096") && e.contains("8x8"), "{e}");
        // A segment length beyond the data.
        let e = decode(&[0xFF, 0xD8, 0xFF, 0xDB, 0xFF, 0xFF, 0], (8, 8))
            .unwrap_err()
            .to_string();
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn the_idct_inverts_a_dc_only_block() {
        // A DC coefficient of 8 * v gives a flat block of v (plus the level shift).
        let cos = idct_table();
        let mut coef = [0f32; 64];
        coef[0] = 8.0 * 100.0;
        let mut out = [0f32; 64];
        idct_block(&coef, &cos, 2048.0, 4095.0, &mut out);
        assert!(out.iter().all(|&v| v == 2148.0), "{out:?}");
    }
}
