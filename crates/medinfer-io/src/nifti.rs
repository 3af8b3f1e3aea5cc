//! NIfTI-1 and NIfTI-2: `.nii`, `.nii.gz`, `.hdr` + `.img` (also gzipped), 3D and 4D.
//!
//! Written here rather than taken from the `nifti` crate: that crate reads NIfTI-1 only, pulls
//! in `ndarray`, and allocates from header fields before checking them. This reader knows both
//! header layouts and either byte order, honours `vox_offset`, applies `scl_slope` /
//! `scl_inter` as nibabel does (no scaling when the slope is 0 or not finite), chooses the affine
//! as nibabel's `get_best_affine` (sform, then qform, then the centred base affine), and checks
//! every dimension against hard limits and the bytes really present before allocating.

use crate::{fmt_err, os_err, IoError};
use flate2::read::GzDecoder;
use medinfer_core::{Tags, Volume};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest voxel count accepted (2^31: 8 GiB of f32).
pub const MAX_VOXELS: u64 = 1 << 31;

/// The header fields medinfer uses, from either NIfTI version.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct NiftiHeader {
    /// 1 or 2.
    pub version: u8,
    /// True when the file is big-endian.
    pub big_endian: bool,
    /// `dim[0..8]`.
    pub dim: [i64; 8],
    /// NIfTI datatype code.
    pub datatype: i16,
    /// `pixdim[0..8]` (pixdim[0] is qfac).
    pub pixdim: [f64; 8],
    /// Byte offset of the data.
    pub vox_offset: u64,
    /// Scale slope and intercept.
    pub scl_slope: f64,
    /// Scale intercept.
    pub scl_inter: f64,
    /// qform code.
    pub qform_code: i32,
    /// sform code.
    pub sform_code: i32,
    /// Quaternion b, c, d and offsets x, y, z.
    pub quatern: [f64; 6],
    /// sform rows x, y, z.
    pub srow: [[f64; 4]; 3],
    /// Units of space and time.
    pub xyzt_units: u8,
    /// Description string.
    pub descrip: String,
}

/// Datatype code -> (bytes per voxel, name).
fn dtype_info(code: i16) -> Option<(usize, &'static str)> {
    Some(match code {
        2 => (1, "uint8"),
        4 => (2, "int16"),
        8 => (4, "int32"),
        16 => (4, "float32"),
        64 => (8, "float64"),
        256 => (1, "int8"),
        512 => (2, "uint16"),
        768 => (4, "uint32"),
        1024 => (8, "int64"),
        1280 => (8, "uint64"),
        _ => return None,
    })
}

struct Rd<'a> {
    b: &'a [u8],
    be: bool,
}
impl Rd<'_> {
    fn arr<const N: usize>(&self, o: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[o..o + N]);
        if self.be {
            a.reverse();
        }
        a
    }
    fn i16(&self, o: usize) -> i16 {
        i16::from_le_bytes(self.arr(o))
    }
    fn i32(&self, o: usize) -> i32 {
        i32::from_le_bytes(self.arr(o))
    }
    fn i64(&self, o: usize) -> i64 {
        i64::from_le_bytes(self.arr(o))
    }
    fn f32(&self, o: usize) -> f64 {
        f32::from_le_bytes(self.arr(o)) as f64
    }
    fn f64(&self, o: usize) -> f64 {
        f64::from_le_bytes(self.arr(o))
    }
}

/// Parses a NIfTI-1 (348 bytes) or NIfTI-2 (540 bytes) header.
pub fn parse_header(path: &str, b: &[u8]) -> Result<NiftiHeader, IoError> {
    if b.len() < 348 {
        return Err(fmt_err(
            path,
            format!("too short for a NIfTI header ({} bytes)", b.len()),
        ));
    }
    let le = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let be_v = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let (version, be) = match (le, be_v) {
        (348, _) => (1, false),
        (_, 348) => (1, true),
        (540, _) => (2, false),
        (_, 540) => (2, true),
        _ => {
            return Err(fmt_err(
                path,
                format!("not a NIfTI file (sizeof_hdr is {le}, expected 348 or 540)"),
            ))
        }
    };
    let r = Rd { b, be };
    let h = if version == 1 {
        let magic = &b[344..348];
        if magic != b"n+1\0" && magic != b"ni1\0" {
            return Err(fmt_err(path, format!("NIfTI-1 magic is {magic:?}, expected \"n+1\" or \"ni1\" (plain Analyze 7.5 is not supported)")));
        }
        let mut dim = [0i64; 8];
        let mut pixdim = [0f64; 8];
        for i in 0..8 {
            dim[i] = r.i16(40 + 2 * i) as i64;
            pixdim[i] = r.f32(76 + 4 * i);
        }
        let mut srow = [[0f64; 4]; 3];
        for (k, row) in srow.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = r.f32(280 + 16 * k + 4 * j);
            }
        }
        NiftiHeader {
            version,
            big_endian: be,
            dim,
            datatype: r.i16(70),
            pixdim,
            vox_offset: r.f32(108).max(0.0) as u64,
            scl_slope: r.f32(112),
            scl_inter: r.f32(116),
            qform_code: r.i16(252) as i32,
            sform_code: r.i16(254) as i32,
            quatern: [
                r.f32(256),
                r.f32(260),
                r.f32(264),
                r.f32(268),
                r.f32(272),
                r.f32(276),
            ],
            srow,
            xyzt_units: b[123],
            descrip: cstr(&b[148..228]),
        }
    } else {
        if b.len() < 540 {
            return Err(fmt_err(
                path,
                format!("too short for a NIfTI-2 header ({} bytes)", b.len()),
            ));
        }
        if &b[4..7] != b"n+2" && &b[4..7] != b"ni2" {
            return Err(fmt_err(path, "NIfTI-2 magic missing"));
        }
        let mut dim = [0i64; 8];
        let mut pixdim = [0f64; 8];
        for i in 0..8 {
            dim[i] = r.i64(16 + 8 * i);
            pixdim[i] = r.f64(104 + 8 * i);
        }
        let mut srow = [[0f64; 4]; 3];
        for (k, row) in srow.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = r.f64(400 + 32 * k + 8 * j);
            }
        }
        NiftiHeader {
            version,
            big_endian: be,
            dim,
            datatype: r.i16(12),
            pixdim,
            vox_offset: r.i64(168).max(0) as u64,
            scl_slope: r.f64(176),
            scl_inter: r.f64(184),
            qform_code: r.i32(344),
            sform_code: r.i32(348),
            quatern: [
                r.f64(352),
                r.f64(360),
                r.f64(368),
                r.f64(376),
                r.f64(384),
                r.f64(392),
            ],
            srow,
            xyzt_units: r.i32(500) as u8,
            descrip: cstr(&b[240..320]),
        }
    };
    let nd = h.dim[0];
    if !(1..=7).contains(&nd) {
        return Err(fmt_err(path, format!("dim[0] = {nd}, expected 1 to 7")));
    }
    if h.dim[1..=nd as usize].iter().any(|&d| d < 1) {
        return Err(fmt_err(
            path,
            format!("non-positive dimension in {:?}", &h.dim[..=nd as usize]),
        ));
    }
    if nd > 4 && h.dim[5..=nd as usize].iter().any(|&d| d > 1) {
        return Err(fmt_err(
            path,
            format!(
                "{nd}D images with dims {:?} are not supported (3D and 4D only)",
                &h.dim[1..=nd as usize]
            ),
        ));
    }
    if dtype_info(h.datatype).is_none() {
        return Err(fmt_err(
            path,
            format!(
                "datatype code {} is not supported (complex, RGB and float128 are not)",
                h.datatype
            ),
        ));
    }
    Ok(h)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim().to_string()
}

impl NiftiHeader {
    /// `[nx, ny, nz, nt]` (missing dimensions are 1).
    pub fn dims4(&self) -> [usize; 4] {
        let nd = self.dim[0] as usize;
        let mut d = [1usize; 4];
        for (i, v) in d.iter_mut().enumerate() {
            if i < nd {
                *v = self.dim[i + 1] as usize;
            }
        }
        d
    }

    /// Voxel count, checked against [`MAX_VOXELS`].
    pub fn voxels(&self, path: &str) -> Result<usize, IoError> {
        let mut n: u64 = 1;
        for &d in &self.dims4() {
            n = n.saturating_mul(d as u64);
        }
        if n > MAX_VOXELS {
            return Err(fmt_err(
                path,
                format!(
                    "{:?} = {n} voxels, more than the {MAX_VOXELS} accepted",
                    self.dims4()
                ),
            ));
        }
        Ok(n as usize)
    }

    /// nibabel's `get_best_affine`: sform if its code is set, else qform, else the base affine.
    pub fn affine(&self) -> [[f64; 4]; 4] {
        let mut a = [[0.0; 4]; 4];
        a[3][3] = 1.0;
        if self.sform_code > 0 {
            a[..3].copy_from_slice(&self.srow);
            return a;
        }
        let zooms =
            [self.pixdim[1], self.pixdim[2], self.pixdim[3]]
                .map(|z| if z == 0.0 { 1.0 } else { z });
        if self.qform_code > 0 {
            let [b, c, d, qx, qy, qz] = self.quatern;
            let s = 1.0 - (b * b + c * c + d * d);
            let a0 = if s < 0.0 { 0.0 } else { s.sqrt() };
            let r = [
                [
                    a0 * a0 + b * b - c * c - d * d,
                    2.0 * (b * c - a0 * d),
                    2.0 * (b * d + a0 * c),
                ],
                [
                    2.0 * (b * c + a0 * d),
                    a0 * a0 + c * c - b * b - d * d,
                    2.0 * (c * d - a0 * b),
                ],
                [
                    2.0 * (b * d - a0 * c),
                    2.0 * (c * d + a0 * b),
                    a0 * a0 + d * d - c * c - b * b,
                ],
            ];
            let qfac = if self.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
            let z = [zooms[0].abs(), zooms[1].abs(), zooms[2].abs() * qfac];
            for i in 0..3 {
                for j in 0..3 {
                    a[i][j] = r[i][j] * z[j];
                }
            }
            a[0][3] = qx;
            a[1][3] = qy;
            a[2][3] = qz;
            return a;
        }
        // Base affine: x flipped, origin at the volume centre (nibabel's shape_zoom_affine).
        let d = self.dims4();
        let z = [-zooms[0].abs(), zooms[1].abs(), zooms[2].abs()];
        for i in 0..3 {
            a[i][i] = z[i];
            a[i][3] = -((d[i] as f64 - 1.0) / 2.0) * z[i];
        }
        a
    }
}

/// Largest decompressed size [`open_maybe_gz`] inflates in one piece (with libdeflate); larger
/// files stream through flate2, so a big CT never holds its raw bytes whole beside the floats.
const WHOLE_GUNZIP_MAX: u64 = 128 << 20;

/// Opens a file, transparently gunzipping it; also returns the most bytes it can yield
/// (its size, or deflate's maximum ratio of 1032:1 times its size when gzipped), so a header
/// that declares more data than that is refused before anything is allocated.
///
/// With `whole`, a gzip file of one member whose footer declares at most
/// [`WHOLE_GUNZIP_MAX`] bytes is inflated at once by libdeflate (2-3x faster than a streaming
/// inflate: a 42 MB cine exam's read is most of the cardiac pipeline's input stage); anything
/// else (several members, a footer that lies, corrupt data) goes through the streaming
/// decoder, whose errors name what is wrong.
fn open_maybe_gz(path: &Path, whole: bool) -> Result<Opened, IoError> {
    let os = os_err(path);
    let f = std::fs::File::open(path).map_err(os)?;
    let len = f.metadata().map_err(os)?.len();
    let mut r = std::io::BufReader::new(f);
    let mut magic = [0u8; 2];
    let n = r.read(&mut magic).unwrap_or(0);
    if !(n == 2 && magic == [0x1f, 0x8b]) {
        let head = std::io::Cursor::new(magic[..n].to_vec()).chain(r);
        return Ok((Box::new(head), len, None));
    }
    let most = len.saturating_mul(1032);
    if whole && (18..=WHOLE_GUNZIP_MAX).contains(&len) {
        let mut gz = Vec::with_capacity(len as usize);
        gz.extend_from_slice(&magic);
        r.read_to_end(&mut gz).map_err(os_err(path))?;
        if let Some(raw) = gunzip_whole(&gz) {
            let n = raw.len() as u64;
            let head = raw[..raw.len().min(540)].to_vec();
            return Ok((Box::new(std::io::Cursor::new(head)), n, Some(raw)));
        }
        let r = GzDecoder::new(std::io::Cursor::new(gz));
        return Ok((Box::new(r), most, None));
    }
    let head = std::io::Cursor::new(magic.to_vec()).chain(r);
    Ok((Box::new(GzDecoder::new(head)), most, None))
}

/// What [`open_maybe_gz`] opened: a reader, the most bytes the file can yield, and, when it
/// was inflated whole, all of its bytes (the reader then yields only the first 540, for the
/// header).
type Opened = (Box<dyn Read>, u64, Option<Vec<u8>>);

/// One gzip member inflated by libdeflate into a buffer of the size its footer declares
/// (ISIZE, the size mod 2^32; at most [`WHOLE_GUNZIP_MAX`] and 1032 times the input), or
/// `None` when that does not hold exactly: libdeflate checks the CRC and the size, and
/// refuses trailing members.
fn gunzip_whole(gz: &[u8]) -> Option<Vec<u8>> {
    let isize_le: [u8; 4] = gz.get(gz.len().checked_sub(4)?..)?.try_into().ok()?;
    let size = u32::from_le_bytes(isize_le) as u64;
    if size > WHOLE_GUNZIP_MAX || size > (gz.len() as u64).saturating_mul(1032) {
        return None;
    }
    let mut out = vec![0u8; size as usize];
    let got = libdeflater::Decompressor::new()
        .gzip_decompress(gz, &mut out)
        .ok()?;
    (got == out.len()).then_some(out)
}

/// Reads up to `n` bytes (fewer at end of stream) without allocating them up front.
fn read_upto(r: &mut dyn Read, n: u64, path: &str) -> Result<Vec<u8>, IoError> {
    let mut v = Vec::new();
    r.take(n)
        .read_to_end(&mut v)
        .map_err(|e| fmt_err(path, format!("cannot read: {e}")))?;
    Ok(v)
}

fn img_path_for(hdr: &Path) -> PathBuf {
    let s = hdr.to_string_lossy();
    if let Some(stem) = s.strip_suffix(".hdr.gz") {
        PathBuf::from(format!("{stem}.img.gz"))
    } else if let Some(stem) = s.strip_suffix(".hdr") {
        PathBuf::from(format!("{stem}.img"))
    } else {
        hdr.with_extension("img")
    }
}

/// Reads a NIfTI file (`.nii`, `.nii.gz`, `.hdr` with its `.img`) into a [`Volume`] in
/// modality units (scaling applied), with nibabel's best affine.
pub fn read(path: impl AsRef<Path>) -> Result<Volume, IoError> {
    let path = path.as_ref();
    let p = path.display().to_string();
    let (mut r, most, whole) = open_maybe_gz(path, true)?;
    let head = read_upto(&mut *r, 540, &p)?;
    let h = parse_header(&p, &head)?;
    let n = h.voxels(&p)?;
    let (bpv, _) = dtype_info(h.datatype).expect("checked in parse_header");
    let need = (n as u64) * bpv as u64;
    let name = p.to_ascii_lowercase();
    let pair = name.ends_with(".hdr") || name.ends_with(".hdr.gz");
    let (data_src, mut rest, most, whole) = if pair {
        let img = img_path_for(path);
        let (r2, most, whole) = open_maybe_gz(&img, true)?;
        (img.display().to_string(), r2, most, whole)
    } else {
        (p.clone(), r, most, whole)
    };
    if need.saturating_add(h.vox_offset) > most {
        return Err(fmt_err(
            &data_src,
            format!("truncated: {:?} voxels of {bpv} bytes need {need} bytes of data, the file can hold at most {most}", h.dims4()),
        ));
    }
    let consumed = if pair { 0 } else { head.len() as u64 };
    let min_off = if pair {
        0
    } else if h.version == 1 {
        348
    } else {
        540
    };
    if h.vox_offset < min_off {
        return Err(fmt_err(
            &p,
            format!("vox_offset {} lies inside the header", h.vox_offset),
        ));
    }
    let truncated = |found: u64| {
        fmt_err(
            &data_src,
            format!(
                "truncated: {:?} voxels of {} bytes need {need} bytes of data, found {found}",
                h.dims4(),
                bpv
            ),
        )
    };
    let ends_before_data = || {
        fmt_err(
            &data_src,
            format!("file ends before vox_offset {}", h.vox_offset),
        )
    };
    let mut data = if let Some(bytes) = whole {
        // Inflated whole: convert the voxels straight from memory.
        if (bytes.len() as u64) < h.vox_offset {
            return Err(ends_before_data());
        }
        let start = h.vox_offset as usize;
        let avail = (bytes.len() - start) as u64;
        if avail < need {
            return Err(truncated(avail));
        }
        let mut out = Vec::with_capacity(n);
        extend_f32(
            &mut out,
            &bytes[start..start + need as usize],
            h.datatype,
            h.big_endian,
        );
        out
    } else if h.vox_offset >= consumed {
        let skip = h.vox_offset - consumed;
        let skipped = std::io::copy(&mut (&mut rest).take(skip), &mut std::io::sink())
            .map_err(|e| fmt_err(&data_src, format!("cannot read: {e}")))?;
        if skipped < skip {
            return Err(ends_before_data());
        }
        // Converted in 8 MiB chunks: the file's bytes are never held whole beside the floats
        // (a 512 x 512 x 600 int16 CT would need 315 MB more at its peak).
        // Capacity grows with the data read (a gzip header may claim far more than the file
        // holds), doubling but never past the voxel count; large blocks grow by mremap.
        let mut data: Vec<f32> = Vec::with_capacity(n.min(16 << 20));
        let chunk = ((8usize << 20) / bpv).max(1) * bpv;
        let mut buf = Vec::with_capacity(chunk);
        let mut got = 0u64;
        while got < need {
            buf.clear();
            let want = chunk.min((need - got) as usize) as u64;
            (&mut rest)
                .take(want)
                .read_to_end(&mut buf)
                .map_err(|e| fmt_err(&data_src, format!("cannot read: {e}")))?;
            got += buf.len() as u64;
            // read_to_end stops short of `want` only at the end of the file.
            if (buf.len() as u64) < want {
                return Err(truncated(got));
            }
            let add = buf.len() / bpv;
            if data.capacity() < data.len() + add {
                let to = n.min((2 * data.capacity()).max(data.len() + add));
                data.reserve_exact(to - data.len());
            }
            extend_f32(&mut data, &buf, h.datatype, h.big_endian);
        }
        data
    } else {
        // Data begins inside the bytes already read (vox_offset < 540 in a NIfTI-1 file).
        let mut v = head[h.vox_offset as usize..].to_vec();
        v.extend(read_upto(
            &mut *rest,
            need.saturating_sub(v.len() as u64),
            &data_src,
        )?);
        v.truncate(need as usize);
        if (v.len() as u64) < need {
            return Err(truncated(v.len() as u64));
        }
        let mut out = Vec::with_capacity(n);
        extend_f32(&mut out, &v, h.datatype, h.big_endian);
        out
    };
    if h.scl_slope != 0.0 && h.scl_slope.is_finite() && h.scl_inter.is_finite() {
        let (s, i) = (h.scl_slope, h.scl_inter);
        if s != 1.0 || i != 0.0 {
            data.iter_mut()
                .for_each(|v| *v = (*v as f64 * s + i) as f32);
        }
    }
    let dims = h.dims4();
    let mut vol = Volume::new(
        dims,
        data,
        [
            h.pixdim[1].abs(),
            h.pixdim[2].abs(),
            h.pixdim[3].abs(),
            time_ms(&h),
        ],
    )
    .map_err(|e| fmt_err(&p, e.to_string()))?;
    vol.affine = h.affine();
    let mut tags = Tags::new();
    tags.set("source_format", format!("nifti{}", h.version));
    if h.sform_code <= 0 && h.qform_code <= 0 {
        // nibabel's base affine: voxel sizes only, no orientation in patient space.
        tags.set("geometry", "unknown");
    }
    if !h.descrip.is_empty() {
        tags.set("description", h.descrip.clone());
    }
    vol.tags = tags;
    Ok(vol)
}

/// pixdim[4] in ms, from the time units in `xyzt_units` (seconds unless stated).
fn time_ms(h: &NiftiHeader) -> f64 {
    let dt = h.pixdim[4].abs();
    match h.xyzt_units & 0x38 {
        16 => dt,         // ms
        24 => dt / 1000., // us
        _ => dt * 1000.,  // s or unknown
    }
}

/// Appends the voxels of `b` (NIfTI datatype `code`, big- or little-endian) to `out` as f32,
/// straight into its buffer (no temporary vector per chunk; the byte order is chosen once).
fn extend_f32(out: &mut Vec<f32>, b: &[u8], code: i16, be: bool) {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            let bytes = |c: &[u8]| -> [u8; $n] { c.try_into().expect("chunk size") };
            if be {
                out.extend(
                    b.chunks_exact($n)
                        .map(|c| <$t>::from_be_bytes(bytes(c)) as f32),
                )
            } else {
                out.extend(
                    b.chunks_exact($n)
                        .map(|c| <$t>::from_le_bytes(bytes(c)) as f32),
                )
            }
        }};
    }
    match code {
        2 => out.extend(b.iter().map(|&v| v as f32)),
        256 => out.extend(b.iter().map(|&v| v as i8 as f32)),
        4 => conv!(i16, 2),
        512 => conv!(u16, 2),
        8 => conv!(i32, 4),
        768 => conv!(u32, 4),
        16 => conv!(f32, 4),
        64 => conv!(f64, 8),
        1024 => conv!(i64, 8),
        _ => conv!(u64, 8),
    }
}

/// Voxel type for [`write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NiftiDtype {
    /// uint8 (label masks).
    U8,
    /// int16 (CT in HU).
    I16,
    /// float32.
    F32,
}

/// Rotation matrix to quaternion (b, c, d) with qfac, for the qform (NIfTI-1 reference method).
fn affine_to_quatern(a: &[[f64; 4]; 4]) -> ([f64; 3], [f64; 3], f64) {
    let mut r = [[0.0; 3]; 3];
    let mut zooms = [0.0; 3];
    for j in 0..3 {
        let n = (a[0][j] * a[0][j] + a[1][j] * a[1][j] + a[2][j] * a[2][j]).sqrt();
        zooms[j] = if n > 0.0 { n } else { 1.0 };
        for i in 0..3 {
            r[i][j] = if n > 0.0 {
                a[i][j] / n
            } else if i == j {
                1.0
            } else {
                0.0
            };
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    let t = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (qa, qb, qc, qd);
    if t > 0.5 {
        qa = 0.5 * t.sqrt();
        qb = 0.25 * (r[2][1] - r[1][2]) / qa;
        qc = 0.25 * (r[0][2] - r[2][0]) / qa;
        qd = 0.25 * (r[1][0] - r[0][1]) / qa;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            let b = 0.5 * xd.sqrt();
            (qb, qc, qd, qa) = (
                b,
                0.25 * (r[0][1] + r[1][0]) / b,
                0.25 * (r[0][2] + r[2][0]) / b,
                0.25 * (r[2][1] - r[1][2]) / b,
            );
        } else if yd > 1.0 {
            let c = 0.5 * yd.sqrt();
            (qc, qb, qd, qa) = (
                c,
                0.25 * (r[0][1] + r[1][0]) / c,
                0.25 * (r[1][2] + r[2][1]) / c,
                0.25 * (r[0][2] - r[2][0]) / c,
            );
        } else {
            let d = 0.5 * zd.sqrt();
            (qd, qb, qc, qa) = (
                d,
                0.25 * (r[0][2] + r[2][0]) / d,
                0.25 * (r[1][2] + r[2][1]) / d,
                0.25 * (r[1][0] - r[0][1]) / d,
            );
        }
    }
    let s = if qa < 0.0 { -1.0 } else { 1.0 };
    ([s * qb, s * qc, s * qd], zooms, qfac)
}

/// Writes `vol` as NIfTI-1 (`.nii`, or gzipped when the name ends in `.gz`), keeping its affine
/// in both sform and qform (code 1, scanner) and its spacing in pixdim.
pub fn write(path: impl AsRef<Path>, vol: &Volume, dtype: NiftiDtype) -> Result<(), IoError> {
    let (code, bpv): (i16, i16) = match dtype {
        NiftiDtype::U8 => (2, 8),
        NiftiDtype::I16 => (4, 16),
        NiftiDtype::F32 => (16, 32),
    };
    let mut body = Vec::with_capacity(vol.data.len() * (bpv as usize / 8));
    match dtype {
        NiftiDtype::U8 => body.extend(vol.data.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8)),
        NiftiDtype::I16 => vol.data.iter().for_each(|&v| {
            body.extend_from_slice(&(v.round().clamp(-32768.0, 32767.0) as i16).to_le_bytes())
        }),
        NiftiDtype::F32 => vol
            .data
            .iter()
            .for_each(|v| body.extend_from_slice(&v.to_le_bytes())),
    }
    write_raw(
        path.as_ref(),
        vol.dims,
        &vol.affine,
        vol.spacing[3],
        (code, bpv),
        &body,
    )
}

/// Writes a uint8 label volume of `dims` (first index fastest) with `affine`, without the
/// float copy [`write`] makes.
pub fn write_labels(
    path: impl AsRef<Path>,
    dims: [usize; 3],
    affine: &[[f64; 4]; 4],
    labels: &[u8],
) -> Result<(), IoError> {
    write_labels_4d(path, [dims[0], dims[1], dims[2], 1], affine, 0.0, labels)
}

/// Writes a uint8 label series of `dims` (x, y, z, t; first index fastest) with `affine` and
/// the time step `dt` in pixdim, without the float copy [`write`] makes.
pub fn write_labels_4d(
    path: impl AsRef<Path>,
    dims: [usize; 4],
    affine: &[[f64; 4]; 4],
    dt: f64,
    labels: &[u8],
) -> Result<(), IoError> {
    let path = path.as_ref();
    if labels.len() != dims.iter().product::<usize>() {
        return Err(fmt_err(
            &path.display().to_string(),
            format!("{} labels for a {dims:?} grid", labels.len()),
        ));
    }
    write_raw(path, dims, affine, dt, (2, 8), labels)
}

/// Writes colour frames as NIfTI RGB24 (datatype 128: three bytes per voxel, nibabel reads it
/// as a structured `(R, G, B)` array): `rgb` holds `dims[0] x dims[1] x dims[2]` interleaved
/// triplets with values 0..255 (rounded and clamped).
pub fn write_rgb24(
    path: impl AsRef<Path>,
    dims: [usize; 3],
    affine: &[[f64; 4]; 4],
    rgb: &[f32],
) -> Result<(), IoError> {
    let path = path.as_ref();
    let n = dims.iter().product::<usize>() * 3;
    if rgb.len() != n {
        return Err(fmt_err(
            &path.display().to_string(),
            format!("{} RGB values for {dims:?} voxels", rgb.len()),
        ));
    }
    let body: Vec<u8> = rgb
        .iter()
        .map(|&v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    write_raw(
        path,
        [dims[0], dims[1], dims[2], 1],
        affine,
        0.0,
        (128, 24),
        &body,
    )
}

/// A NIfTI-1 single file: the header for `dims`, `affine`, datatype `(code, bitpix)`, then `body`.
fn write_raw(
    path: &Path,
    dims4: [usize; 4],
    affine: &[[f64; 4]; 4],
    dt: f64,
    (code, bpv): (i16, i16),
    body: &[u8],
) -> Result<(), IoError> {
    let p = path.display().to_string();
    let [nx, ny, nz, nt] = dims4;
    if dims4.iter().any(|&d| d > i16::MAX as usize) {
        return Err(fmt_err(
            &p,
            format!("dims {dims4:?} exceed NIfTI-1's 32767 limit"),
        ));
    }
    let mut h = vec![0u8; 352];
    let put_i16 = |h: &mut [u8], o: usize, v: i16| h[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 =
        |h: &mut [u8], o: usize, v: f64| h[o..o + 4].copy_from_slice(&(v as f32).to_le_bytes());
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let nd: i16 = if nt > 1 { 4 } else { 3 };
    let dims = [nd, nx as i16, ny as i16, nz as i16, nt as i16, 1, 1, 1];
    for (i, d) in dims.iter().enumerate() {
        put_i16(&mut h, 40 + 2 * i, *d);
    }
    put_i16(&mut h, 70, code);
    put_i16(&mut h, 72, bpv);
    let (quat, zooms, qfac) = affine_to_quatern(affine);
    let pixdim = [qfac, zooms[0], zooms[1], zooms[2], dt, 1.0, 1.0, 1.0];
    for (i, v) in pixdim.iter().enumerate() {
        put_f32(&mut h, 76 + 4 * i, *v);
    }
    put_f32(&mut h, 108, 352.0);
    put_f32(&mut h, 112, 1.0);
    put_f32(&mut h, 116, 0.0);
    h[123] = 2 | 16; // mm, ms
    let desc = b"medinfer";
    h[148..148 + desc.len()].copy_from_slice(desc);
    put_i16(&mut h, 252, 1);
    put_i16(&mut h, 254, 1);
    for (i, v) in quat
        .iter()
        .chain(&[affine[0][3], affine[1][3], affine[2][3]])
        .enumerate()
    {
        put_f32(&mut h, 256 + 4 * i, *v);
    }
    for (k, row) in affine.iter().take(3).enumerate() {
        for (j, v) in row.iter().enumerate() {
            put_f32(&mut h, 280 + 16 * k + 4 * j, *v);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    let os = os_err(path);
    let f = std::fs::File::create(path).map_err(os)?;
    let mut w: Box<dyn Write> = if p.to_ascii_lowercase().ends_with(".gz") {
        Box::new(flate2::write::GzEncoder::new(
            std::io::BufWriter::new(f),
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(std::io::BufWriter::new(f))
    };
    w.write_all(&h).map_err(os)?;
    w.write_all(body).map_err(os)?;
    w.flush().map_err(os)?;
    Ok(())
}

/// Reads only the header of a NIfTI file (gzipped or not).
pub fn read_header_file(path: &Path) -> Result<NiftiHeader, IoError> {
    let p = path.display().to_string();
    let (mut r, _, _) = open_maybe_gz(path, false)?;
    let head = read_upto(&mut *r, 540, &p)?;
    let h = parse_header(&p, &head)?;
    h.voxels(&p)?;
    Ok(h)
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    #[test]
    fn write_read_round_trip_keeps_affine_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Volume::new(
            [3, 4, 5, 2],
            (0..120).map(|i| i as f32 - 7.0).collect(),
            [0.8, 0.9, 3.0, 40.0],
        )
        .unwrap();
        // An oblique affine with a reflection (det < 0), as DICOM LPS -> RAS produces.
        let (c, s) = (0.8f64, 0.6f64);
        v.affine = [
            [-0.8 * c, 0.9 * s, 0.0, 10.0],
            [0.8 * s, 0.9 * c, 0.0, -20.0],
            [0.0, 0.0, 3.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        for name in ["a.nii", "a.nii.gz"] {
            let path = dir.path().join(name);
            write(&path, &v, NiftiDtype::F32).unwrap();
            let r = read(&path).unwrap();
            assert_eq!(r.dims, v.dims);
            assert_eq!(r.data, v.data);
            for i in 0..4 {
                for j in 0..4 {
                    assert!(
                        (r.affine[i][j] - v.affine[i][j]).abs() < 1e-5,
                        "{name} {i}{j}"
                    );
                }
            }
            // The qform alone gives the same affine.
            let bytes = std::fs::read(&path).unwrap();
            let bytes = if name.ends_with(".gz") {
                let mut d = Vec::new();
                GzDecoder::new(&bytes[..]).read_to_end(&mut d).unwrap();
                d
            } else {
                bytes
            };
            let mut h = parse_header("x", &bytes).unwrap();
            h.sform_code = 0;
            let q = h.affine();
            for i in 0..3 {
                for j in 0..4 {
                    assert!(
                        (q[i][j] - v.affine[i][j]).abs() < 1e-5,
                        "qform {i}{j}: {} vs {}",
                        q[i][j],
                        v.affine[i][j]
                    );
                }
            }
        }
    }

    #[test]
    fn hostile_headers_are_errors() {
        let mut h = vec![0u8; 352];
        h[0..4].copy_from_slice(&348i32.to_le_bytes());
        h[344..348].copy_from_slice(b"n+1\0");
        for (i, d) in [3i16, 32767, 32767, 32767].iter().enumerate() {
            h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
        }
        h[70..72].copy_from_slice(&64i16.to_le_bytes());
        let hd = parse_header("h.nii", &h).unwrap();
        let e = hd.voxels("h.nii").unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trunc.nii");
        h[42..44].copy_from_slice(&4i16.to_le_bytes());
        h[44..46].copy_from_slice(&4i16.to_le_bytes());
        h[46..48].copy_from_slice(&4i16.to_le_bytes());
        h[108..112].copy_from_slice(&352f32.to_le_bytes());
        std::fs::write(&p, &h).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("trunc.nii") && e.contains("truncated"), "{e}");
        assert!(parse_header("x", b"short").is_err());
    }
}
