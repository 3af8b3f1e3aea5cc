//! # medinfer-io
//!
//! Readers and writers for the files medinfer consumes and produces, all into the image model of
//! `medinfer-core` ([`Image2d`], [`Volume`]) with values in modality units.
//!
//! ```no_run
//! // One DICOM file (every frame), a DICOM series folder, a NIfTI volume, a PNG.
//! let frames = medinfer_io::dicom::read_images("slice.dcm")?;
//! let ct = medinfer_io::series::read_series("ct_series/")?;
//! let cine = medinfer_io::nifti::read("cine.nii.gz")?;
//! let cxr = medinfer_io::raster::read_png("cxr.png")?;
//! # Ok::<(), medinfer_io::IoError>(())
//! ```
//!
//! | format | module | read | write |
//! |---|---|---|---|
//! | DICOM (see [`dicom`] for transfer syntaxes), series, cine, multi-frame | [`dicom`], [`series`], [`dicom_write`] | yes | series (explicit VR LE, 16-bit) |
//! | NIfTI-1 / NIfTI-2, `.nii`, `.nii.gz`, `.hdr`/`.img` | [`nifti`] | yes | NIfTI-1 |
//! | PNG 1-16 bit, JPEG 8/12 bit | [`raster`] | yes | 8-bit PNG, overlays |
//! | NumPy `.npy` | [`npy`] | yes | yes |
//!
//! Every reader checks declared sizes against hard limits and the bytes present before
//! allocating, and every error names the file and what was wrong with it.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod dicom;
pub mod dicom_write;
pub mod inspect;
pub mod jpeg12;
pub mod jpegls;
pub mod nifti;
pub mod npy;
mod palette;
pub mod raster;
mod rle;
pub mod series;

pub use medinfer_core::{Image2d, Volume};
use std::path::Path;

/// I/O errors: always name the file and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The OS could not read or write the file.
    #[error("{path}: {source}")]
    Os {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's content is malformed or unsupported.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A format error about `path` (every reader's errors go through here).
pub(crate) fn fmt_err(path: &str, reason: impl Into<String>) -> IoError {
    IoError::Format {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// For `map_err`: an OS error on `path`.
pub(crate) fn os_err(path: &Path) -> impl Fn(std::io::Error) -> IoError + Copy + '_ {
    move |source| IoError::Os {
        path: path.display().to_string(),
        source,
    }
}

/// File formats medinfer recognises by content (not by extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// DICOM (with or without preamble / file meta).
    Dicom,
    /// NIfTI-1 or NIfTI-2 (also gzipped, also `.hdr`).
    Nifti,
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// NumPy array.
    Npy,
}

/// Detects the format from the first bytes (and, for gzip, the name).
pub fn detect(path: &Path) -> Result<Option<Format>, IoError> {
    use std::io::Read;
    let mut head = [0u8; 348];
    let mut f = std::fs::File::open(path).map_err(os_err(path))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(os_err(path)(e)),
        }
    }
    let b = &head[..n];
    let lower = path.to_string_lossy().to_ascii_lowercase();
    // NIfTI needs its size field AND its magic: a DICOM preamble may begin with the bytes of 348
    // (seen in nibabel's Siemens test files), so DICM is looked for first.
    let size = |be: bool| {
        (b.len() >= 4).then(|| {
            let w = [b[0], b[1], b[2], b[3]];
            if be {
                i32::from_be_bytes(w)
            } else {
                i32::from_le_bytes(w)
            }
        })
    };
    let nifti1 = b.len() >= 348
        && matches!(&b[344..348], b"n+1\0" | b"ni1\0")
        && (size(false) == Some(348) || size(true) == Some(348));
    let nifti2 = b.len() >= 12
        && matches!(&b[4..8], b"n+2\0" | b"ni2\0")
        && (size(false) == Some(540) || size(true) == Some(540));
    Ok(if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if b.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(Format::Jpeg)
    } else if b.starts_with(b"\x93NUMPY") {
        Some(Format::Npy)
    } else if b.len() >= 132 && &b[128..132] == b"DICM" {
        Some(Format::Dicom)
    } else if nifti1
        || nifti2
        || (b.starts_with(&[0x1f, 0x8b])
            && (lower.ends_with(".nii.gz") || lower.ends_with(".hdr.gz")))
    {
        Some(Format::Nifti)
    } else if dicom::looks_like_dicom(b) {
        Some(Format::Dicom)
    } else {
        None
    })
}

/// Reads any supported file as a volume: a DICOM file or series folder, NIfTI, or a 2D image
/// (PNG / JPEG / single-frame DICOM become a volume of one slice, colour converted to gray).
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume, IoError> {
    let path = path.as_ref();
    if path.is_dir() {
        return series::read_series(path);
    }
    let img = match detect(path)? {
        Some(Format::Nifti) => return nifti::read(path),
        Some(Format::Dicom) => {
            let f = dicom::DicomFile::open_header(path)?;
            if f.header.samples_per_pixel == 1 && f.header.photometric != "PALETTE COLOR" {
                return series::read_series(path);
            }
            return Err(colour_is_not_a_volume(path));
        }
        Some(Format::Png) => raster::read_png(path)?,
        Some(Format::Jpeg) => raster::read_jpeg(path)?,
        Some(Format::Npy) | None => return Err(not_an_image(path)),
    };
    if img.channels != 1 {
        return Err(colour_is_not_a_volume(path));
    }
    image_to_volume(img)
}

/// A volume holds one value per voxel: colour is refused rather than silently turned to gray.
fn colour_is_not_a_volume(path: &Path) -> IoError {
    fmt_err(
        &path.display().to_string(),
        "a colour image is not a volume; `medinfer convert` keeps its colour and every frame \
         (.npy as (frames, rows, columns, 3), .png, or NIfTI RGB24), and a pipeline that takes \
         gray images converts it explicitly",
    )
}

/// Every frame of one image file as stored, in file order.
#[derive(Clone, Debug)]
pub struct Frames {
    /// `[frames, rows, columns, channels]` (channels 1 or 3).
    pub shape: [usize; 4],
    /// Values in modality units (colour: RGB), frame after frame, row-major, channels last.
    pub data: Vec<f32>,
    /// Pixel spacing (row, column), mm.
    pub spacing: [f64; 2],
    /// The value range of the encoding (e.g. 0..255 for 8-bit colour).
    pub value_range: (f32, f32),
}

/// Every frame of a DICOM, PNG or JPEG file as stored (frames in file order, colour kept), for
/// `medinfer convert FILE`: nothing dropped, nothing converted.
pub fn read_frames(path: impl AsRef<Path>) -> Result<Frames, IoError> {
    let path = path.as_ref();
    let p = path.display().to_string();
    let images = match detect(path)? {
        Some(Format::Dicom | Format::Png | Format::Jpeg) => read_images(path)?,
        _ => return Err(fmt_err(&p, "not a DICOM, PNG or JPEG file")),
    };
    let first = images
        .first()
        .ok_or_else(|| fmt_err(&p, "no image in the file"))?;
    let (w, h, c) = (first.width, first.height, first.channels);
    let mut data = Vec::with_capacity(images.len() * w * h * c);
    let mut range = first.value_range;
    for (i, img) in images.iter().enumerate() {
        if (img.width, img.height, img.channels) != (w, h, c) {
            return Err(fmt_err(
                &p,
                format!(
                    "frame {i} is {}x{}x{}, frame 0 {w}x{h}x{c}",
                    img.width, img.height, img.channels
                ),
            ));
        }
        range = (
            range.0.min(img.value_range.0),
            range.1.max(img.value_range.1),
        );
        data.extend_from_slice(&img.data);
    }
    Ok(Frames {
        shape: [images.len(), h, w, c],
        data,
        spacing: first.spacing,
        value_range: range,
    })
}

/// A 2D image as a one-slice volume (rows = y, columns = x).
pub fn image_to_volume(img: Image2d) -> Result<Volume, IoError> {
    let g = img.to_gray();
    let mut v = Volume::new(
        [g.width, g.height, 1, 1],
        g.data,
        [g.spacing[1], g.spacing[0], 1.0, 0.0],
    )
    .map_err(|e| fmt_err("image", e.to_string()))?;
    v.window = g.window;
    v.tags = g.tags;
    Ok(v)
}

/// Reads any supported file as 2D images (every frame of a DICOM file; the one PNG / JPEG).
pub fn read_images(path: impl AsRef<Path>) -> Result<Vec<Image2d>, IoError> {
    let path = path.as_ref();
    match detect(path)? {
        Some(Format::Dicom) => dicom::read_images(path),
        Some(Format::Png) => Ok(vec![raster::read_png(path)?]),
        Some(Format::Jpeg) => Ok(vec![raster::read_jpeg(path)?]),
        Some(Format::Nifti) => {
            let v = nifti::read(path)?;
            let mut out = Vec::new();
            for t in 0..v.dims[3] {
                for z in 0..v.dims[2] {
                    out.push(
                        v.slice(z, t)
                            .map_err(|e| fmt_err(&path.display().to_string(), e.to_string()))?,
                    );
                }
            }
            Ok(out)
        }
        _ => Err(not_an_image(path)),
    }
}

fn not_an_image(path: &Path) -> IoError {
    fmt_err(
        &path.display().to_string(),
        "not a DICOM, NIfTI, PNG or JPEG file",
    )
}
