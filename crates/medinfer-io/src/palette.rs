//! PALETTE COLOR: stored indices through the Red / Green / Blue Palette Color LUTs to RGB, as
//! pydicom's `apply_color_lut` does (tested against it): plain LUT Data (8 or 16 bits per
//! entry, by its length) or Segmented LUT Data (PS3.3 C.7.9.2: discrete, linear and indirect
//! segments); indices below the first mapped value take the first entry, above the last the
//! last.

use dicom_core::value::Value;
use dicom_core::Tag;
use dicom_object::InMemDicomObject;

/// Largest LUT accepted (the descriptor's maximum).
const MAX_ENTRIES: usize = 65536;

/// The three colour tables of a PALETTE COLOR image.
#[derive(Clone, Debug)]
pub(crate) struct Palette {
    /// The stored value that maps to entry 0.
    first: i64,
    /// Red, green, blue tables of equal length.
    luts: [Vec<u16>; 3],
    /// Largest value an entry can take (255 or 65535).
    pub max: f32,
}

impl Palette {
    /// The RGB of stored value `v`.
    pub fn rgb(&self, v: i64) -> [f32; 3] {
        let n = self.luts[0].len() as i64;
        let i = (v - self.first).clamp(0, n - 1) as usize;
        [
            self.luts[0][i] as f32,
            self.luts[1][i] as f32,
            self.luts[2][i] as f32,
        ]
    }
}

fn words(obj: &InMemDicomObject, tag: Tag) -> Option<(Vec<u16>, usize)> {
    let e = obj.get(tag)?;
    match e.value() {
        Value::Primitive(p) => {
            let bytes = p.to_bytes();
            let v = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            Some((v, bytes.len()))
        }
        _ => None,
    }
}

/// Reads the palette of `obj`; `signed` pixels read the first mapped value as signed.
pub(crate) fn read(obj: &InMemDicomObject, signed: bool) -> Result<Palette, String> {
    let desc_tags = [
        Tag(0x0028, 0x1101),
        Tag(0x0028, 0x1102),
        Tag(0x0028, 0x1103),
    ];
    let data_tags = [
        Tag(0x0028, 0x1201),
        Tag(0x0028, 0x1202),
        Tag(0x0028, 0x1203),
    ];
    let seg_tags = [
        Tag(0x0028, 0x1221),
        Tag(0x0028, 0x1222),
        Tag(0x0028, 0x1223),
    ];
    let (desc, _) = words(obj, desc_tags[0])
        .filter(|(d, _)| d.len() >= 3)
        .ok_or("PALETTE COLOR image without a valid Red Palette Color LUT Descriptor")?;
    let n = if desc[0] == 0 {
        MAX_ENTRIES
    } else {
        desc[0] as usize
    };
    let first = if signed {
        desc[1] as i16 as i64
    } else {
        desc[1] as i64
    };
    let nominal = desc[2];
    if !matches!(nominal, 8 | 16) {
        return Err(format!(
            "Palette Color LUT with {nominal} bits per entry (8 or 16 expected)"
        ));
    }
    let mut luts: [Vec<u16>; 3] = Default::default();
    let mut depth = nominal;
    for c in 0..3 {
        luts[c] = if let Some((w, bytes)) = words(obj, data_tags[c]) {
            // 8-bit entries may be packed two to a word (LUT Data of n bytes) or one per word.
            if bytes == n {
                depth = 8;
                let raw: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
                raw[..n].iter().map(|&b| b as u16).collect()
            } else if bytes >= 2 * n {
                depth = 16;
                w[..n].to_vec()
            } else {
                return Err(format!(
                    "Palette Color LUT Data holds {bytes} bytes for {n} entries"
                ));
            }
        } else if let Some((w, bytes)) = words(obj, seg_tags[c]) {
            let entries: Vec<u16> = if nominal == 8 {
                let raw: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
                raw[..bytes.min(raw.len())]
                    .iter()
                    .map(|&b| b as u16)
                    .collect()
            } else {
                w
            };
            let mut out = Vec::new();
            expand_segmented(&entries, nominal == 8, None, None, 0, &mut out)?;
            out
        } else {
            return Err("PALETTE COLOR image without Palette Color LUT Data".into());
        };
        if luts[c].is_empty() {
            return Err("empty Palette Color LUT".into());
        }
    }
    if luts[1].len() != luts[0].len() || luts[2].len() != luts[0].len() {
        return Err("Palette Color LUTs of different lengths".into());
    }
    Ok(Palette {
        first,
        luts,
        max: if depth == 8 { 255.0 } else { 65535.0 },
    })
}

/// Expands Segmented Palette Color LUT Data (PS3.3 C.7.9.2) into `out`, as pydicom does;
/// `limit` segments at most (indirect segments), `last` the value before them. Lengths and
/// recursion are bounded so that hostile data cannot loop or exhaust memory.
fn expand_segmented(
    data: &[u16],
    eight_bit: bool,
    limit: Option<usize>,
    last: Option<u16>,
    depth: usize,
    out: &mut Vec<u16>,
) -> Result<(), String> {
    if depth > 8 {
        return Err("segmented palette LUT: indirect segments nested too deep".into());
    }
    let mut off = 0usize;
    let mut segments = 0usize;
    // What this call produced (pydicom expands each indirect level into a list of its own).
    let start = out.len();
    while off + 1 < data.len() {
        let (op, len) = (data[off], data[off + 1] as usize);
        off += 2;
        if out.len() + len > MAX_ENTRIES {
            return Err("segmented palette LUT expands beyond 65536 entries".into());
        }
        match op {
            0 => {
                let end = (off + len).min(data.len());
                out.extend_from_slice(&data[off..end]);
                off += len;
            }
            1 => {
                let here = out.len() > start;
                let y0 = match (out.last().filter(|_| here), last) {
                    (Some(&v), _) => v as f64,
                    (None, Some(v)) if v != 0 => v as f64,
                    _ => return Err("segmented palette LUT starts with a linear segment".into()),
                };
                let y1 = *data.get(off).ok_or("segmented palette LUT truncated")? as f64;
                off += 1;
                if len > 0 {
                    let step = (y1 - y0) / len as f64;
                    let a = y0 + step;
                    // numpy.linspace(a, y1, len) computed as numpy does (i * step + a, the last
                    // value exactly y1), then numpy.around (half to even).
                    let step = if len > 1 {
                        (y1 - a) / (len - 1) as f64
                    } else {
                        0.0
                    };
                    for i in 0..len {
                        let v = if len > 1 && i == len - 1 {
                            y1
                        } else {
                            i as f64 * step + a
                        };
                        out.push(v.round_ties_even().clamp(0.0, 65535.0) as u16);
                    }
                }
            }
            2 => {
                let prev = *out
                    .last()
                    .filter(|_| out.len() > start)
                    .ok_or("segmented palette LUT starts with an indirect segment")?;
                let byte_offset = if eight_bit {
                    // Four 8-bit entries hold the 32-bit byte offset (little endian order).
                    let b = |k: usize| data.get(off + k).copied().unwrap_or(0) as usize;
                    let v = (((b(3) << 8) | b(2)) << 16) | ((b(1) << 8) | b(0));
                    off += 4;
                    v
                } else {
                    let v = ((*data.get(off + 1).unwrap_or(&0) as usize) << 16)
                        | *data.get(off).unwrap_or(&0) as usize;
                    off += 2;
                    v
                };
                if byte_offset >= data.len() {
                    return Err("segmented palette LUT: indirect offset past the data".into());
                }
                expand_segmented(
                    &data[byte_offset..],
                    eight_bit,
                    Some(len),
                    Some(prev),
                    depth + 1,
                    out,
                )?;
            }
            other => {
                return Err(format!(
                    "segmented palette LUT: unknown segment type {other}"
                ))
            }
        }
        segments += 1;
        if Some(segments) == limit {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_expand_like_pydicom() {
        // Discrete 0, 64; linear to 192 over 4; discrete 255.
        let mut out = Vec::new();
        expand_segmented(
            &[0, 2, 0, 64, 1, 4, 192, 0, 1, 255],
            false,
            None,
            None,
            0,
            &mut out,
        )
        .unwrap();
        // numpy.around(linspace(64 + 32, 192, 4)) = [96, 128, 160, 192].
        assert_eq!(out, vec![0, 64, 96, 128, 160, 192, 255]);
        // Indirect: repeat the first two segments (offset 0) once more.
        let mut out = Vec::new();
        let data = [0, 2, 10, 20, 1, 2, 40, 2, 2, 0, 0];
        expand_segmented(&data, false, None, None, 0, &mut out).unwrap();
        assert_eq!(out, vec![10, 20, 30, 40, 10, 20, 30, 40]);
    }

    #[test]
    fn hostile_segments_are_errors() {
        let mut out = Vec::new();
        assert!(expand_segmented(&[1, 4, 9], false, None, None, 0, &mut out).is_err());
        let mut out = Vec::new();
        // An indirect segment that re-reads itself recurses until the depth limit.
        let data = [0, 1, 5, 2, 2, 0, 0];
        assert!(expand_segmented(&data, false, None, None, 0, &mut out).is_err());
        let mut out = Vec::new();
        assert!(expand_segmented(
            &[0, 255, 0, 255, 0, 255, 0, 255],
            false,
            None,
            None,
            0,
            &mut out
        )
        .is_ok());
        let mut out = Vec::new();
        assert!(expand_segmented(&[7, 1, 1], false, None, None, 0, &mut out)
            .unwrap_err()
            .contains("unknown segment type 7"));
    }
}
