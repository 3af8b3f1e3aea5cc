//! `medinfer inspect`: what a file or folder holds and whether medinfer can read it, without
//! ever reporting patient-identifying attributes (only [`DicomHeader`] fields, which hold none).

use crate::dicom::DicomHeader;
use crate::series::{layout, list_files, scan};
use crate::{detect, nifti, raster, Format, IoError};
use serde::Serialize;
use std::path::Path;

/// One DICOM series.
#[derive(Debug, Serialize)]
pub struct SeriesReport {
    /// Series Instance UID.
    pub uid: String,
    /// Modality.
    pub modality: String,
    /// Series description.
    pub description: String,
    /// Files in the series.
    pub files: usize,
    /// Transfer syntaxes seen, with whether medinfer decodes them.
    pub transfer_syntaxes: Vec<(String, bool)>,
    /// Header of the first file (geometry, encoding).
    pub first: DicomHeader,
    /// How it assembles: `[columns, rows, slices, phases]` and spacing, or why it does not.
    pub volume: Result<([usize; 4], [f64; 4]), String>,
}

/// One non-DICOM file.
#[derive(Debug, Serialize)]
pub struct FileReport {
    /// The file.
    pub path: String,
    /// Its format.
    pub format: Format,
    /// Dimensions (`[x, y, z, t]` for NIfTI, `[columns, rows, channels, 1]` for images).
    pub dims: [usize; 4],
    /// Spacing (mm, ms).
    pub spacing: [f64; 4],
    /// Format details (datatype, bit depth ...).
    pub detail: String,
}

/// What `inspect` found.
#[derive(Debug, Serialize, Default)]
pub struct Report {
    /// DICOM series.
    pub series: Vec<SeriesReport>,
    /// NIfTI / PNG / JPEG / NPY files.
    pub files: Vec<FileReport>,
    /// Files that could not be read, with the reason.
    pub rejected: Vec<(String, String)>,
}

/// Inspects a file or a folder (recursively).
pub fn inspect(path: &Path) -> Result<Report, IoError> {
    let all = list_files(path)?;
    let mut report = Report::default();
    let mut dicoms = Vec::new();
    for f in all {
        let p = f.display().to_string();
        match detect(&f) {
            Ok(Some(Format::Dicom)) => dicoms.push(f),
            Ok(Some(Format::Nifti)) => match nifti::read_header_file(&f) {
                Ok(h) => report.files.push(FileReport {
                    path: p,
                    format: Format::Nifti,
                    dims: h.dims4(),
                    spacing: [
                        h.pixdim[1].abs(),
                        h.pixdim[2].abs(),
                        h.pixdim[3].abs(),
                        h.pixdim[4].abs(),
                    ],
                    detail: format!(
                        "NIfTI-{}, datatype {}, scl {} / {}, qform {} sform {}",
                        h.version, h.datatype, h.scl_slope, h.scl_inter, h.qform_code, h.sform_code
                    ),
                }),
                Err(e) => report.rejected.push((p, e.to_string())),
            },
            Ok(Some(fmt @ (Format::Png | Format::Jpeg))) => {
                let r = if fmt == Format::Png {
                    raster::read_png(&f)
                } else {
                    raster::read_jpeg(&f)
                };
                match r {
                    Ok(img) => report.files.push(FileReport {
                        path: p,
                        format: fmt,
                        dims: [img.width, img.height, img.channels, 1],
                        spacing: [1.0, 1.0, 0.0, 0.0],
                        detail: format!(
                            "{}-bit, {} channel(s)",
                            img.tags.get("bits_stored").unwrap_or("?"),
                            img.channels
                        ),
                    }),
                    Err(e) => report.rejected.push((p, e.to_string())),
                }
            }
            Ok(Some(Format::Npy)) => match crate::npy::read(&f) {
                Ok(t) => {
                    let mut dims = [1usize; 4];
                    for (d, s) in dims.iter_mut().zip(t.shape().iter().rev()) {
                        *d = *s;
                    }
                    report.files.push(FileReport {
                        path: p,
                        format: Format::Npy,
                        dims,
                        spacing: [0.0; 4],
                        detail: format!("{} {:?}", t.dtype(), t.shape()),
                    })
                }
                Err(e) => report.rejected.push((p, e.to_string())),
            },
            Ok(None) => report
                .rejected
                .push((p, "not a DICOM, NIfTI, PNG, JPEG or NPY file".into())),
            Err(e) => report.rejected.push((p, e.to_string())),
        }
    }
    let s = scan(&dicoms);
    for (p, e) in s.rejected {
        report.rejected.push((p.display().to_string(), e));
    }
    for series in s.series {
        let mut ts: Vec<(String, bool)> = Vec::new();
        for f in &series.files {
            let t = (f.header.transfer_syntax.clone(), f.header.decodable);
            if !ts.contains(&t) {
                ts.push(t);
            }
        }
        let volume = if series
            .files
            .iter()
            .all(|f| f.header.samples_per_pixel == 1 && f.header.rows > 0)
        {
            layout(&series)
                .map(|l| (l.dims, l.spacing))
                .map_err(|e| e.to_string())
        } else {
            Err("not a grayscale image series".into())
        };
        let first = series.files[0].header.clone();
        report.series.push(SeriesReport {
            uid: series.uid,
            modality: first.modality.clone(),
            description: first.series_description.clone(),
            files: series.files.len(),
            transfer_syntaxes: ts,
            first,
            volume,
        });
    }
    Ok(report)
}
