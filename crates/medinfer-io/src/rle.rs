//! DICOM RLE Lossless (PS3.5 Annex G), decoded by medinfer.
//!
//! Written here rather than taken from dicom-rs because its RLE decoder stops at 16 bits
//! allocated (RT Dose and secondary captures use 32), and because mutated files made it panic
//! (caught, but the panic text still reached stderr). The format is small: per frame one
//! fragment, a 64-byte header (segment count, 15 offsets), then one PackBits-coded segment per
//! byte plane, most significant byte of each sample first. Every offset and length is checked
//! against the fragment; a segment that decodes to fewer bytes than the frame needs is an error
//! and a longer one is cut, as pydicom does.

/// Decodes one frame into interleaved samples, `bytes` per sample in native (little-endian)
/// byte order: `rows x columns x samples x bytes` values.
pub(crate) fn decode_frame(
    fragment: &[u8],
    rows: usize,
    columns: usize,
    samples: usize,
    bytes: usize,
) -> Result<Vec<u8>, String> {
    if fragment.len() < 64 {
        return Err(format!(
            "RLE fragment of {} bytes is shorter than its 64-byte header",
            fragment.len()
        ));
    }
    let word = |k: usize| {
        u32::from_le_bytes([
            fragment[4 * k],
            fragment[4 * k + 1],
            fragment[4 * k + 2],
            fragment[4 * k + 3],
        ]) as usize
    };
    let nseg = word(0);
    let want = samples
        .checked_mul(bytes)
        .ok_or("RLE segment count overflows")?;
    if nseg != want {
        return Err(format!(
            "RLE fragment has {nseg} segments, {samples} sample(s) x {bytes} byte(s) need {want}"
        ));
    }
    if !(1..=15).contains(&nseg) {
        return Err(format!(
            "RLE fragment declares {nseg} segments (1 to 15 allowed)"
        ));
    }
    let offsets: Vec<usize> = (1..=nseg).map(word).collect();
    let pixels = rows
        .checked_mul(columns)
        .ok_or("RLE frame size overflows")?;
    let total = pixels.checked_mul(want).ok_or("RLE frame size overflows")?;
    let mut out = vec![0u8; total];
    let mut plane = vec![0u8; pixels];
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(fragment.len());
        if start < 64 || start > end || end > fragment.len() {
            return Err(format!(
                "RLE segment {} spans bytes {start}..{end} of a {}-byte fragment",
                i + 1,
                fragment.len()
            ));
        }
        let produced = packbits(&fragment[start..end], &mut plane);
        if produced < pixels {
            return Err(format!(
                "RLE segment {} decodes to {produced} bytes, {pixels} expected",
                i + 1
            ));
        }
        // Segment i is byte i % bytes (0 = most significant) of sample i / bytes.
        let (s, k) = (i / bytes, i % bytes);
        let pos = s * bytes + (bytes - 1 - k);
        for (px, &v) in plane.iter().enumerate() {
            out[px * want + pos] = v;
        }
    }
    Ok(out)
}

/// PackBits into `out`; returns how many bytes the data decodes to (it may be more than `out`
/// holds: the rest is dropped; where it is less, `out` is zero-filled).
fn packbits(data: &[u8], out: &mut [u8]) -> usize {
    let (mut i, mut o, mut produced) = (0usize, 0usize, 0usize);
    while i < data.len() {
        let n = data[i] as i8;
        i += 1;
        if n >= 0 {
            let avail = (n as usize + 1).min(data.len() - i);
            let len = avail.min(out.len() - o);
            out[o..o + len].copy_from_slice(&data[i..i + len]);
            i += n as usize + 1;
            o += len;
            produced += avail;
        } else if n != -128 {
            if i >= data.len() {
                break;
            }
            let run = (1 - n as isize) as usize;
            let len = run.min(out.len() - o);
            out[o..o + len].fill(data[i]);
            i += 1;
            o += len;
            produced += run;
        }
    }
    out[o..].fill(0);
    produced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(offsets: &[u32]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&(offsets.len() as u32).to_le_bytes());
        for (k, o) in offsets.iter().enumerate() {
            h[4 + 4 * k..8 + 4 * k].copy_from_slice(&o.to_le_bytes());
        }
        h
    }

    #[test]
    fn packbits_literals_runs_and_no_ops() {
        let mut out = [0u8; 9];
        // 3 literals, a run of 4 x 7, a no-op, 2 literals.
        assert_eq!(packbits(&[2, 1, 2, 3, 0xFD, 7, 0x80, 1, 9, 8], &mut out), 9);
        assert_eq!(out, [1, 2, 3, 7, 7, 7, 7, 9, 8]);
        // A run past the end is cut (and counted); short data is zero-filled (and counted short).
        let mut out = [5u8; 4];
        assert_eq!(packbits(&[0xFB, 1], &mut out), 6);
        assert_eq!(out, [1, 1, 1, 1]);
        let mut out = [5u8; 4];
        assert_eq!(packbits(&[0, 3], &mut out), 1);
        assert_eq!(out, [3, 0, 0, 0]);
    }

    #[test]
    fn a_32_bit_frame_puts_each_byte_plane_in_place() {
        // One 2-pixel grayscale frame of 32-bit samples 0x01020304 and 0x0A0B0C0D.
        let planes = [[1u8, 0x0A], [2, 0x0B], [3, 0x0C], [4, 0x0D]];
        let mut segs = Vec::new();
        let mut offsets = Vec::new();
        for p in planes {
            offsets.push(64 + segs.len() as u32);
            segs.extend_from_slice(&[1, p[0], p[1]]);
        }
        let mut frag = header(&offsets);
        frag.extend(segs);
        let out = decode_frame(&frag, 1, 2, 1, 4).unwrap();
        assert_eq!(
            out,
            [0x01020304u32.to_le_bytes(), 0x0A0B0C0Du32.to_le_bytes()].concat()
        );
    }

    #[test]
    fn hostile_headers_are_errors() {
        assert!(decode_frame(&[0; 10], 1, 1, 1, 1).is_err());
        // Wrong segment count for the samples.
        let frag = header(&[64, 64]);
        assert!(decode_frame(&frag, 1, 1, 1, 1)
            .unwrap_err()
            .contains("2 segments"));
        // Offset past the fragment.
        let frag = header(&[900]);
        assert!(decode_frame(&frag, 1, 1, 1, 1)
            .unwrap_err()
            .contains("spans"));
        // Offsets going backwards.
        let mut frag = header(&[70, 66, 68]);
        frag.extend([0u8; 10]);
        assert!(decode_frame(&frag, 1, 1, 3, 1).is_err());
    }
}
