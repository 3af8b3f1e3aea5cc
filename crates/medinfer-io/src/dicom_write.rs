//! Writing a [`Volume`] as a DICOM series: one single-frame file per slice and phase, explicit
//! VR little endian, 16-bit unsigned pixels, with the geometry (Image Position / Orientation
//! Patient, Pixel Spacing, Slice Thickness, Spacing Between Slices) and timing (Trigger Time,
//! Temporal Position Identifier) that scanners write, so that the series reader, pydicom and
//! dcm2niix reassemble it into the same volume.
//!
//! medinfer uses it for phantom exams and test fixtures; identity fields get fixed phantom
//! values, never anything from a real patient.

use crate::{fmt_err, os_err, IoError, Volume};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use std::path::{Path, PathBuf};

/// What to put in the series' descriptive fields, and how to lay the files out.
#[derive(Clone, Debug, Default)]
pub struct SeriesInfo {
    /// Modality (`MR`, `CT`, ...).
    pub modality: String,
    /// Series description.
    pub description: String,
    /// Root of the generated UIDs (`2.25.<number>` style): study, series and instance UIDs are
    /// derived from it deterministically.
    pub uid_seed: u64,
    /// Slice thickness in mm (the slice spacing minus any gap); the spacing comes from the
    /// volume.
    pub slice_thickness: f64,
    /// Rescale Intercept written with slope 1 (CT: -1024, so HU -1024.. are stored from 0);
    /// stored values are `value - intercept`. 0 writes no rescale.
    pub rescale_intercept: f64,
    /// Cine timing per slice, `(first trigger time, step)` in ms, as when each slice is
    /// acquired in its own breath-hold (none: every slice `t x spacing[3]`).
    pub slice_timing: Option<Vec<[f64; 2]>>,
    /// Each slice its own series (its own Series Instance UID and Series Number, in folder
    /// `sax_<slice + 1>/`), as public short-axis archives and many PACS exports store cines.
    pub series_per_slice: bool,
}

/// Writes `vol` (values minus the rescale intercept, rounded and clamped to 0..=65535) as one
/// file per (slice, phase) named `IM_<slice>_<phase>.dcm` in `dir` (or
/// `sax_<slice + 1>/IM_<phase>.dcm` with [`SeriesInfo::series_per_slice`]); returns the paths.
pub fn write_series(dir: &Path, vol: &Volume, info: &SeriesInfo) -> Result<Vec<PathBuf>, IoError> {
    let d = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(os_err(dir))?;
    let [nx, ny, nz, nt] = vol.dims;
    if nx > u16::MAX as usize || ny > u16::MAX as usize {
        return Err(fmt_err(
            &d,
            format!("{nx}x{ny} is too large for DICOM rows / columns"),
        ));
    }
    // RAS+ affine -> LPS+ direction cosines and positions.
    let a = &vol.affine;
    let col = |j: usize| -> [f64; 3] {
        let v = [-a[0][j], -a[1][j], a[2][j]];
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12);
        [v[0] / n, v[1] / n, v[2] / n]
    };
    let (row_dir, col_dir) = (col(0), col(1));
    let iop = [row_dir, col_dir].concat();
    if let Some(t) = &info.slice_timing {
        if t.len() != nz {
            return Err(fmt_err(
                &d,
                format!("slice timing for {} slices, the volume has {nz}", t.len()),
            ));
        }
    }
    let study = format!("2.25.{}", info.uid_seed as u128 * 1000 + 1);
    let series_of = |z: usize| {
        if info.series_per_slice {
            format!("2.25.{}{:04}", info.uid_seed as u128 * 1000 + 2, z + 1)
        } else {
            format!("2.25.{}", info.uid_seed as u128 * 1000 + 2)
        }
    };
    let frame_of_ref = format!("2.25.{}", info.uid_seed as u128 * 1000 + 3);
    let trigger = |z: usize, t: usize| match &info.slice_timing {
        Some(v) => v[z][0] + v[z][1] * t as f64,
        None => t as f64 * vol.spacing[3],
    };
    let mut paths = Vec::with_capacity(nz * nt);
    let plane = nx * ny;
    for t in 0..nt {
        for z in 0..nz {
            let pos = [
                -(a[0][2] * z as f64 + a[0][3]),
                -(a[1][2] * z as f64 + a[1][3]),
                a[2][2] * z as f64 + a[2][3],
            ];
            let off = (t * nz + z) * plane;
            let pixels: Vec<u16> = vol.data[off..off + plane]
                .iter()
                .map(|&v| {
                    (v as f64 - info.rescale_intercept)
                        .round()
                        .clamp(0.0, 65535.0) as u16
                })
                .collect();
            let number = t * nz + z + 1;
            let sop = format!("2.25.{}{:06}", info.uid_seed as u128 * 1000 + 4, number);
            let ds =
                |v: &[f64]| PrimitiveValue::Strs(v.iter().map(|x| format!("{x:.6}")).collect());
            let s = |v: &str| PrimitiveValue::from(v);
            let sop_class = if info.modality == "CT" {
                uids::CT_IMAGE_STORAGE
            } else {
                uids::MR_IMAGE_STORAGE
            };
            let mut obj = InMemDicomObject::from_element_iter([
                DataElement::new(tags::SOP_CLASS_UID, VR::UI, s(sop_class)),
                DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, s(&sop)),
                DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, s(&study)),
                DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, s(&series_of(z))),
                DataElement::new(tags::FRAME_OF_REFERENCE_UID, VR::UI, s(&frame_of_ref)),
                DataElement::new(tags::MODALITY, VR::CS, s(&info.modality)),
                DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, s(&info.description)),
                DataElement::new(tags::PATIENT_NAME, VR::PN, s("PHANTOM^MEDINFER")),
                DataElement::new(tags::PATIENT_ID, VR::LO, s("PHANTOM")),
                DataElement::new(
                    tags::SERIES_NUMBER,
                    VR::IS,
                    s(&if info.series_per_slice { z + 1 } else { 1 }.to_string()),
                ),
                DataElement::new(tags::INSTANCE_NUMBER, VR::IS, s(&number.to_string())),
                DataElement::new(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&pos)),
                DataElement::new(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&iop)),
                DataElement::new(
                    tags::PIXEL_SPACING,
                    VR::DS,
                    ds(&[vol.spacing[1], vol.spacing[0]]),
                ),
                DataElement::new(tags::SLICE_THICKNESS, VR::DS, ds(&[info.slice_thickness])),
                DataElement::new(tags::SPACING_BETWEEN_SLICES, VR::DS, ds(&[vol.spacing[2]])),
                DataElement::new(tags::TRIGGER_TIME, VR::DS, ds(&[trigger(z, t)])),
                DataElement::new(
                    tags::TEMPORAL_POSITION_IDENTIFIER,
                    VR::IS,
                    s(&(t + 1).to_string()),
                ),
                DataElement::new(tags::CARDIAC_NUMBER_OF_IMAGES, VR::IS, s(&nt.to_string())),
                DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
                DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, s("MONOCHROME2")),
                DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(ny as u16)),
                DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(nx as u16)),
                DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
                DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16)),
                DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16)),
                DataElement::new(
                    tags::PIXEL_REPRESENTATION,
                    VR::US,
                    PrimitiveValue::from(0u16),
                ),
                DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into())),
            ]);
            if info.slice_timing.is_some() {
                // As retrospectively gated cines come off many scanners: Trigger Time only.
                obj.remove_element(tags::TEMPORAL_POSITION_IDENTIFIER);
            }
            if info.rescale_intercept != 0.0 {
                obj.put(DataElement::new(
                    tags::RESCALE_INTERCEPT,
                    VR::DS,
                    ds(&[info.rescale_intercept]),
                ));
                obj.put(DataElement::new(tags::RESCALE_SLOPE, VR::DS, ds(&[1.0])));
            }
            let file = obj
                .with_meta(
                    FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN),
                )
                .map_err(|e| fmt_err(&d, format!("DICOM meta table: {e}")))?;
            let path = if info.series_per_slice {
                let sub = dir.join(format!("sax_{}", z + 1));
                std::fs::create_dir_all(&sub).map_err(os_err(&sub))?;
                sub.join(format!("IM_{t:03}.dcm"))
            } else {
                dir.join(format!("IM_{z:03}_{t:03}.dcm"))
            };
            file.write_to_file(&path)
                .map_err(|e| fmt_err(&path.display().to_string(), e.to_string()))?;
            paths.push(path);
        }
    }
    Ok(paths)
}
