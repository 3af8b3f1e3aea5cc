//! NumPy `.npy` files (format versions 1.0, 2.0 and 3.0), little-endian, C order, and `.npz`
//! archives of them (`np.savez` and `np.savez_compressed`: a zip of `KEY.npy` members).
//!
//! Written here rather than taken from a crate: the format is one small header, and owning the
//! parser lets every malformed header produce an error that names the file and the problem,
//! with hard limits so a hostile header cannot make medinfer allocate unbounded memory.

use crate::{fmt_err, os_err, IoError};
use medinfer_core::{DType, Tensor};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";
/// Largest header accepted (NumPy itself writes well under 1 KiB).
const MAX_HEADER: usize = 1 << 16;

fn descr(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
    }
}

fn parse_descr(d: &str) -> Option<DType> {
    Some(match d {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "|i1" | "<i1" => DType::I8,
        "|u1" | "<u1" => DType::U8,
        "|b1" | "<b1" => DType::Bool,
        _ => return None,
    })
}

/// Encodes a tensor as `.npy` bytes (format 1.0).
pub fn encode(t: &Tensor) -> Vec<u8> {
    let shape = match t.shape() {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr(t.dtype())
    );
    // Pad so that the data starts on a 64-byte boundary; the header ends with '\n'.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(unpadded + 64 + t.len() * t.dtype().size());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.to_le_bytes());
    out
}

/// Writes a tensor to a `.npy` file.
pub fn write(path: &Path, t: &Tensor) -> Result<(), IoError> {
    let mut f = std::fs::File::create(path).map_err(os_err(path))?;
    f.write_all(&encode(t)).map_err(os_err(path))
}

/// Largest total of inflated member bytes an `.npz` archive may hold: counted while inflating
/// (sizes declared in the zip are not trusted), so a zip bomb is refused, not allocated.
pub const MAX_NPZ_BYTES: u64 = 8 << 30;

/// A file-name-safe form of a tensor name (`infer` writes outputs as `SAFE.npy`, samples are
/// looked up by it): characters other than ASCII letters, digits, `-`, `_` and `.` become `_`.
pub fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads an `.npz` archive: its arrays keyed by member name without `.npy`, in archive order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, IoError> {
    let bytes = std::fs::read(path).map_err(os_err(path))?;
    decode_npz(&bytes, &path.display().to_string())
}

/// Decodes `.npz` bytes (stored or deflated members); `origin` names the file in errors.
pub fn decode_npz(bytes: &[u8], origin: &str) -> Result<Vec<(String, Tensor)>, IoError> {
    use std::io::Read;
    let bad = |reason: String| fmt_err(origin, reason);
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("not a NumPy .npz archive (zip: {e})")))?;
    let mut out: Vec<(String, Tensor)> = Vec::with_capacity(z.len());
    let mut budget = MAX_NPZ_BYTES;
    for i in 0..z.len() {
        let mut f = z.by_index(i).map_err(|e| bad(format!("member {i}: {e}")))?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().to_string();
        let key = name
            .strip_suffix(".npy")
            .ok_or_else(|| bad(format!("member '{name}' is not an .npy array")))?
            .to_string();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(bad(format!("array '{key}' appears twice")));
        }
        let mut buf = Vec::new();
        (&mut f)
            .take(budget + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("member '{name}': {e}")))?;
        if buf.len() as u64 > budget {
            return Err(bad(format!(
                "inflates to more than {} GiB (a zip bomb?)",
                MAX_NPZ_BYTES >> 30
            )));
        }
        budget -= buf.len() as u64;
        let t = decode(&buf, &format!("{origin}: {name}"))?;
        out.push((key, t));
    }
    Ok(out)
}

/// Encodes arrays as `.npz` bytes (deflated, as `np.savez_compressed`).
pub fn encode_npz(arrays: &[(&str, &Tensor)]) -> Result<Vec<u8>, IoError> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    let err = |e: String| fmt_err("npz", e);
    for (k, t) in arrays {
        w.start_file(format!("{k}.npy"), opts)
            .map_err(|e| err(e.to_string()))?;
        w.write_all(&encode(t)).map_err(|e| err(e.to_string()))?;
    }
    w.finish().map_err(|e| err(e.to_string()))?;
    Ok(buf.into_inner())
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<Tensor, IoError> {
    let bytes = std::fs::read(path).map_err(os_err(path))?;
    decode(&bytes, &path.display().to_string())
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let k = header.find(&format!("'{key}'"))?;
    let rest = header[k + key.len() + 2..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

/// Decodes `.npy` bytes; `origin` names the file in errors.
pub fn decode(bytes: &[u8], origin: &str) -> Result<Tensor, IoError> {
    let bad = |reason: String| fmt_err(origin, reason);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("not a NumPy .npy file (bad magic)".into()));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad(format!("unsupported .npy format version {major}"))),
    };
    if hlen > MAX_HEADER || start + hlen > bytes.len() {
        return Err(bad(format!(
            "header length {hlen} exceeds the file (truncated?)"
        )));
    }
    let header = std::str::from_utf8(&bytes[start..start + hlen])
        .map_err(|_| bad("header is not text".into()))?;
    let d = header_value(header, "descr").ok_or_else(|| bad("header has no 'descr'".into()))?;
    let d = d.trim_start_matches(['\'', '"']);
    let d = &d[..d
        .find(['\'', '"'])
        .ok_or_else(|| bad("malformed 'descr'".into()))?];
    let dtype = parse_descr(d).ok_or_else(|| {
        bad(format!(
            "element type '{d}' is not supported (use little-endian f4, f8, i8, i4, i1, u1 or b1)"
        ))
    })?;
    let fortran = header_value(header, "fortran_order")
        .ok_or_else(|| bad("header has no 'fortran_order'".into()))?;
    if fortran.starts_with("True") {
        return Err(bad(
            "Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into(),
        ));
    }
    let s = header_value(header, "shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("malformed 'shape'".into()))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("malformed shape '({inner})'")))?;
    let data = &bytes[start + hlen..];
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let need = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if data.len() != need {
        return Err(bad(format!(
            "shape {shape:?} of {dtype} needs {need} data bytes, the file has {} (truncated?)",
            data.len()
        )));
    }
    Tensor::from_le_bytes(dtype, shape, data).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype_and_scalar_shapes() {
        for (dt, shape) in [
            (DType::F32, vec![2, 3]),
            (DType::I64, vec![4]),
            (DType::U8, vec![]),
            (DType::Bool, vec![1, 2, 2]),
            (DType::F64, vec![0, 3]),
        ] {
            let n: usize = shape.iter().product();
            let bytes: Vec<u8> = (0..n * dt.size())
                .map(|i| {
                    if dt == DType::Bool {
                        (i % 2) as u8
                    } else {
                        (i % 200) as u8
                    }
                })
                .collect();
            let t = Tensor::from_le_bytes(dt, shape.clone(), &bytes).unwrap();
            let enc = encode(&t);
            assert_eq!((enc.len() - bytes.len()) % 64, 0, "data is 64-byte aligned");
            assert_eq!(decode(&enc, "x.npy").unwrap(), t);
        }
    }

    #[test]
    fn reads_what_numpy_writes() {
        // np.save(f, np.arange(6, dtype='<f4').reshape(2, 3)): format 1.0, header padded with
        // spaces so that magic + version + length + header is 128 bytes, ending in '\n'.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let hl = 128 - 10;
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(hl as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.extend(std::iter::repeat_n(b' ', hl - dict.len() - 1));
        b.push(b'\n');
        for i in 0..6 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        let t = decode(&b, "np.npy").unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.as_f32().unwrap(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(encode(&t), b, "medinfer writes the same bytes");
    }

    #[test]
    fn hostile_headers_are_errors() {
        let good = encode(&Tensor::from_f32(vec![2, 2], vec![1.0; 4]).unwrap());
        let swap = |from: &str, to: &str| -> Vec<u8> {
            let i = good
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            let mut b = good[..i].to_vec();
            b.extend_from_slice(to.as_bytes());
            b.extend_from_slice(&good[i + from.len()..]);
            b
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"PK\x03\x04".to_vec(), "bad magic"),
            (good[..good.len() - 3].to_vec(), "truncated"),
            (
                swap("(2, 2)", "(99999999999, 99999999999, 99999999999)"),
                "overflows",
            ),
            (swap("<f4", ">f4"), "not supported"),
            (swap("False", "True "), "Fortran"),
        ];
        for (bytes, want) in cases {
            let e = decode(&bytes, "evil.npy").unwrap_err().to_string();
            assert!(e.contains("evil.npy") && e.contains(want), "{want}: {e}");
        }
    }
}
