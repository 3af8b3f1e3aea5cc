//! medinfer-io against independent references: every fixture under `tests/fixtures` was written
//! by pydicom / dcmtk / nibabel / Pillow, and FILE.npy holds what pydicom (+ pylibjpeg), nibabel
//! or Pillow decode from it (see `tests/fixtures/README.md`). Plus series assembly, hostile
//! input and writers.
#![allow(clippy::needless_range_loop)]

use medinfer_core::{Photometric, Tensor};
use medinfer_io::{dicom, nifti, npy, raster, series};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let t: Tensor = npy::read(&PathBuf::from(format!("{}.npy", path.display()))).unwrap();
    (t.shape().to_vec(), t.to_f64_vec())
}

/// Decodes a DICOM fixture and compares every frame with pydicom's values: max |diff| <= tol.
fn check_dicom(name: &str, tol: f64) -> dicom::DicomFile {
    check_dicom_mean(name, tol, tol)
}

/// As [`check_dicom`], with a separate bound on the mean |diff|.
fn check_dicom_mean(name: &str, tol: f64, mean_tol: f64) -> dicom::DicomFile {
    let path = fixtures().join("dicom").join(name);
    let f = dicom::DicomFile::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let imgs = f.images().unwrap_or_else(|e| panic!("{name}: {e}"));
    let (shape, want) = reference(&path);
    assert_eq!(shape[0], imgs.len(), "{name}: frames");
    let mut got = Vec::new();
    for img in &imgs {
        assert_eq!(
            [img.height, img.width, img.channels],
            [shape[1], shape[2], shape[3]],
            "{name}: shape"
        );
        got.extend(img.data.iter().map(|&v| v as f64));
    }
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let mean = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / got.len() as f64;
    assert!(
        worst <= tol && mean <= mean_tol,
        "{name}: max |medinfer - pydicom| = {worst} (bound {tol}), mean {mean} (bound {mean_tol})"
    );
    f
}

#[test]
fn lossless_dicom_encodings_match_pydicom_exactly() {
    for name in [
        "ct_explicit_le.dcm",
        "ct_implicit_le.dcm",
        "ct_explicit_be.dcm",
        "ct_deflated.dcm",
        "ct_rle.dcm",
        "ct_jpeg_lossless_sv1.dcm",
        "ct_jpeg_lossless_sv4.dcm",
        "ct_no_preamble.dcm",
        "ct_no_meta_implicit.dcm",
        "ct_raw_dataset.dcm",
        "mr_u12.dcm",
        "mr_j2k_lossless.dcm",
        "pt_u16_rescale_un.dcm",
        "pt_s32.dcm",
        "cr_mono1_u8.dcm",
        "rgb_planar0.dcm",
        "rgb_planar1.dcm",
        "rgb_rle.dcm",
        "seg_1bit.dcm",
        "us_multiframe_u8.dcm",
        "cr_modality_lut.dcm",
        "mr_enhanced_multiframe.dcm",
    ] {
        check_dicom(name, 0.0);
    }
}

/// JPEG XL (DICOM 2024), decoded by dicom-rs's jxl-oxide adapter: the lossless file gives the
/// encoded pixels back exactly; the lossy one is compared with libjxl's decode (imagecodecs).
/// Both are 12-bit, which dicom-rs's own adapter decodes wrongly (scaled by 16, then masked).
#[test]
fn jpeg_xl_matches_the_reference() {
    check_dicom("mr_jpegxl_lossless.dcm", 0.0);
    // jxl-oxide and libjxl round differently: measured max 1 grey level of 4096, mean 0.0015.
    check_dicom_mean("mr_jpegxl_lossy.dcm", 1.0, 0.01);
}

#[test]
fn lossy_dicom_encodings_match_pydicom_within_tolerance() {
    // Different IDCT implementations (libjpeg vs jpeg-decoder, OpenJPEG vs its Rust port) may
    // round differently: one grey level for 8-bit, a few for 12-bit; colour conversion of
    // YBR_FULL adds one more. Chroma-subsampled (4:2:2) JPEG differs more at sharp colour
    // edges, because libjpeg and jpeg-decoder upsample chroma with different filters: the
    // fixture's corner pixels jump from 0 to 255, so the bound is on the mean (measured 0.38)
    // with a loose maximum (measured 16).
    check_dicom("cr_jpeg_baseline.dcm", 1.0);
    check_dicom("mr_j2k_lossy.dcm", 2.0);
    check_dicom("ybr_full.dcm", 1.0);
    check_dicom_mean("rgb_jpeg_baseline_ybr422.dcm", 24.0, 1.0);
}

#[test]
fn dicom_header_and_modality_semantics() {
    let ct = check_dicom("ct_explicit_le.dcm", 0.0);
    let h = &ct.header;
    assert_eq!(
        (h.rows, h.columns, h.bits_stored, h.signed),
        (40, 34, 12, true)
    );
    assert_eq!(h.pixel_spacing, Some([0.7, 0.6]));
    assert_eq!(h.rescale, (1.0, -1024.0));
    let img = &ct.images().unwrap()[0];
    // 12-bit signed stored range through the rescale.
    assert_eq!(img.value_range, (-2048.0 - 1024.0, 2047.0 - 1024.0));
    assert_eq!(img.window.map(|w| (w.center, w.width)), Some((40.0, 400.0)));
    assert_eq!(img.spacing, [0.7, 0.6]);
    // Rescale stored with VR UN.
    let pt = check_dicom("pt_u16_rescale_un.dcm", 0.0);
    assert_eq!(pt.header.rescale, (2.5, -10.0));
    // MONOCHROME1 is reported as such and inverts within the encoding's range.
    let cr = check_dicom("cr_mono1_u8.dcm", 0.0);
    let img = cr.images().unwrap().remove(0);
    assert_eq!(img.photometric, Photometric::Monochrome1);
    assert_eq!(
        cr.header.pixel_spacing,
        Some([0.15, 0.15]),
        "Imager Pixel Spacing fallback"
    );
    let raw0 = img.data[0];
    let inv = img.to_monochrome2();
    assert_eq!(inv.data[0], 255.0 - raw0);
    // Enhanced multi-frame: per-frame positions.
    let enh = check_dicom("mr_enhanced_multiframe.dcm", 0.0);
    assert_eq!(enh.header.frame_positions.len(), 4);
    assert_eq!(enh.header.frame_positions[3], [-50.0, -60.0, 25.0]);
    assert_eq!(enh.header.pixel_spacing, Some([1.25, 1.25]));
}

/// The VOI LUT Sequence: a gamma table of 3000 entries starting at input 100 (values below and
/// above it clamp), against pydicom's `apply_voi_lut`; the 8-bit view uses it in preference to
/// the file's window, scaled from the LUT's 12 bits.
#[test]
fn voi_lut_sequence_matches_pydicom() {
    let f = check_dicom("cr_voi_lut.dcm", 0.0);
    let img = f.images().unwrap().remove(0);
    let lut = img.voi_lut.clone().expect("the VOI LUT is read");
    assert_eq!((lut.first, lut.table.len(), lut.bits), (100.0, 3000, 12));
    let mut got = img.data.clone();
    lut.apply(&mut got);
    let (shape, want) = reference(&fixtures().join("dicom/cr_voi_lut.dcm.voi"));
    assert_eq!(shape, vec![1, 40, 34, 1]);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(*g as f64, *w, "pixel {k}");
    }
    let view = raster::to_u8_view(&img, None).unwrap();
    for (v, w) in view.iter().zip(&want) {
        assert_eq!(*v, (w * 255.0 / 4095.0).round() as u8);
    }
    // An explicit window still wins over the LUT.
    let windowed = raster::to_u8_view(&img, Some((2048.0, 4096.0))).unwrap();
    assert_ne!(windowed, view);
}

/// 12-bit lossy JPEG (JPEG Extended), decoded by medinfer's own decoder, against pydicom +
/// pylibjpeg's libjpeg: their IDCTs differ (exact float here, integer there), by at most two grey
/// levels out of 4096 (measured: max 1 and 2, mean 0.08).
#[test]
fn twelve_bit_lossy_jpeg_matches_pydicom_within_tolerance() {
    check_dicom_mean("mr_jpeg_extended12.dcm", 2.0, 0.5);
    // Three signed frames of 90 x 77 (edge blocks cropped), each spread over several fragments.
    check_dicom_mean("mr_jpeg_extended12_multiframe.dcm", 2.0, 0.5);
}

/// JPEG-LS through medinfer's own decoder, against CharLS (pydicom + pylibjpeg or pyjpegls
/// decoded every reference): lossless and near-lossless, 8 to 16 bits, signed, colour in line
/// and sample interleave, several frames. Exact everywhere (near-lossless too: the decoder
/// reproduces the encoder's reconstruction, not the original).
#[test]
fn jpeg_ls_matches_charls_exactly() {
    for name in [
        "ct_jpegls_lossless.dcm",
        "jls_near2_u16.dcm",
        "jls_rgb_line.dcm",
        "jls_rgb_sample_near3.dcm",
        "jls_s12_signed.dcm",
        "jls_multiframe_u8.dcm",
    ] {
        check_dicom(name, 0.0);
    }
}

/// The decoders the real-DICOM issue added, each against pydicom: RLE with 32 bits allocated
/// (medinfer's RLE decoder), palette colour with plain 16-bit and segmented 8-bit LUTs (to RGB,
/// as `apply_color_lut`), uncompressed YBR_FULL_422 (two samples stored per pixel) over two
/// frames, and 32-bit signed samples in explicit VR big endian. Every frame and channel kept.
#[test]
fn rle32_palette_ybr422_and_big_endian_match_pydicom() {
    for name in [
        "rle_u32_2frame.dcm",
        "palette_u8_lut16.dcm",
        "palette_segmented.dcm",
        "ybr422_uncompressed_2frame.dcm",
        "be_s32_2frame.dcm",
    ] {
        check_dicom(name, 0.0);
    }
}

/// Regression (real-DICOM issue): `convert` on multi-frame colour files wrote ONE gray frame
/// and exited 0. A single file now converts to every frame, colour kept, and a volume read
/// refuses colour instead of turning it gray.
#[test]
fn every_frame_and_colour_survive_and_volumes_refuse_colour() {
    let p = fixtures().join("dicom/ybr422_uncompressed_2frame.dcm");
    let f = medinfer_io::read_frames(&p).unwrap();
    assert_eq!(f.shape, [2, 40, 34, 3]);
    let (shape, want) = reference(&p);
    assert_eq!(shape, vec![2, 40, 34, 3]);
    assert_eq!(f.data.iter().map(|&v| v as f64).collect::<Vec<_>>(), want);
    let e = medinfer_io::read_volume(&p).unwrap_err().to_string();
    assert!(e.contains("colour image is not a volume"), "{e}");
    let rgb_png = fixtures().join("images/rgb8.png");
    let e = medinfer_io::read_volume(&rgb_png).unwrap_err().to_string();
    assert!(e.contains("colour"), "{e}");
    let f = medinfer_io::read_frames(&rgb_png).unwrap();
    assert_eq!(f.shape[3], 3);
}

/// pydicom's RT Dose test file: 15 frames with one Image Position, placed by the Grid Frame
/// Offset Vector, values in Gy through Dose Grid Scaling. Round 1 refused it as a volume ("no
/// Image Position"); now every frame sits where the standard puts it and the values match
/// pydicom x DoseGridScaling.
#[test]
fn rt_dose_frames_are_placed_by_the_grid_frame_offset_vector() {
    let p = fixtures().join("dicom/rtdose_gfov.dcm");
    check_dicom("rtdose_gfov.dcm", 1e-6);
    let h = dicom::DicomFile::open_header(&p).unwrap().header;
    let (_, want) = reference(&PathBuf::from(format!("{}.pos", p.display())));
    let got: Vec<f64> = h.frame_positions.iter().flatten().copied().collect();
    assert_eq!(got.len(), 45);
    assert!(
        got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-9),
        "{got:?}"
    );
    let v = medinfer_io::read_volume(&p).unwrap();
    assert_eq!(v.dims, [10, 10, 15, 1]);
    assert_eq!(v.spacing[..3], [10.0, 10.0, 5.0]);
    // Voxel (0, 0, k) is frame k's first pixel, in RAS (LPS with x and y negated).
    for k in [0usize, 7, 14] {
        let ras = [
            v.affine[0][2] * k as f64 + v.affine[0][3],
            v.affine[1][2] * k as f64 + v.affine[1][3],
            v.affine[2][2] * k as f64 + v.affine[2][3],
        ];
        let lps = &want[3 * k..3 * k + 3];
        assert!(
            (ras[0] + lps[0]).abs() < 1e-3
                && (ras[1] + lps[1]).abs() < 1e-3
                && (ras[2] - lps[2]).abs() < 1e-3,
            "{k}: {ras:?} vs {lps:?}"
        );
    }
    let (_, gy) = reference(&p);
    let got: Vec<f64> = v.data.iter().map(|&x| x as f64).collect();
    assert!(got.iter().zip(&gy).all(|(a, b)| (a - b).abs() < 1e-6));
}

/// Fuzz finds (round 2): codestreams whose own size disagrees with the header. dicom-rs sizes
/// its output from the header and copies what the codec returns (a panic), and openjp2
/// allocates what SIZ declares (40 GB). Refused before decoding, naming both sizes.
#[test]
fn codestream_sizes_must_match_the_header() {
    for (name, got) in [
        ("fuzz_jpeg_sof_size.bin", "15650 x 40"),
        ("fuzz_j2k_siz_oom.bin", "268435490 x 40"),
    ] {
        let p = fixtures().join("dicom").join(name);
        let f = dicom::DicomFile::open(&p).unwrap();
        let e = f.images().unwrap_err().to_string();
        assert!(
            e.contains(name) && e.contains(got) && e.contains("header declares 34 x 40 x 1"),
            "{e}"
        );
        assert!(!e.contains("inside the DICOM library"), "{e}");
    }
}

#[test]
fn no_patient_identity_in_headers_or_tags() {
    for entry in std::fs::read_dir(fixtures().join("dicom")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "dcm") {
            let f = dicom::DicomFile::open_header(&p).unwrap();
            let text =
                serde_json::to_string(&f.header).unwrap() + &format!("{:?}", f.header.tags());
            for secret in ["Fixture", "Secret", "SECRET-ID-0042", "19700101"] {
                assert!(!text.contains(secret), "{}: leaked {secret}", p.display());
            }
        }
    }
}

#[test]
fn nifti_matches_nibabel() {
    let dir = fixtures().join("nifti");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let s = p.to_string_lossy().to_string();
        if !(s.ends_with(".nii") || s.ends_with(".nii.gz") || s.ends_with(".hdr")) {
            continue;
        }
        n += 1;
        let v = nifti::read(&p).unwrap_or_else(|e| panic!("{s}: {e}"));
        let (shape, want) = reference(&p);
        // Reference is (t, z, y, x).
        assert_eq!([shape[3], shape[2], shape[1], shape[0]], v.dims, "{s}");
        for (i, (a, b)) in v.data.iter().zip(&want).enumerate() {
            // f32 holds integers up to 2^24 exactly; beyond that relative 2^-24.
            assert!(
                (*a as f64 - b).abs() <= b.abs() * 6e-8,
                "{s}: voxel {i}: {a} vs {b}"
            );
        }
        let aff = npy::read(&PathBuf::from(format!("{s}.affine.npy")))
            .unwrap()
            .to_f64_vec();
        for i in 0..4 {
            for j in 0..4 {
                assert!(
                    (v.affine[i][j] - aff[i * 4 + j]).abs() < 1e-4,
                    "{s}: affine[{i}][{j}] {} vs {}",
                    v.affine[i][j],
                    aff[i * 4 + j]
                );
            }
        }
    }
    assert!(n >= 15, "only {n} NIfTI fixtures found");
}

#[test]
fn png_and_jpeg_match_pillow() {
    for (name, tol) in [
        ("gray16.png", 0.0),
        ("gray8.png", 0.0),
        ("rgb8.png", 0.0),
        ("rgba8.png", 0.0),
        ("palette.png", 0.0),
        ("gray.jpg", 1.0),
        ("rgb.jpg", 2.0),
    ] {
        let p = fixtures().join("images").join(name);
        let img = medinfer_io::read_images(&p).unwrap().remove(0);
        let (shape, want) = reference(&p);
        assert_eq!(
            [img.height, img.width, img.channels],
            [shape[1], shape[2], shape[3]],
            "{name}"
        );
        let worst = img
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst <= tol, "{name}: max diff {worst}");
    }
    let g16 = raster::read_png(fixtures().join("images/gray16.png")).unwrap();
    assert_eq!(g16.value_range, (0.0, 65535.0));
}

// ---- series assembly, with series written by dicom-rs ------------------------------------------

mod writer {
    use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    use std::path::Path;

    pub struct Slice {
        pub pos: [f64; 3],
        pub iop: [f64; 6],
        pub instance: i32,
        pub trigger: Option<f64>,
        pub value: u16,
    }

    /// Puts one element.
    pub fn put(o: &mut InMemDicomObject, tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) {
        o.put(DataElement::new(tag, vr, v.into()));
    }

    /// Writes `o` as explicit VR little endian with a file meta group.
    pub fn save(o: InMemDicomObject, path: &Path, sop_class: &str, sop_instance: &str) {
        o.with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2.1")
                .media_storage_sop_class_uid(sop_class)
                .media_storage_sop_instance_uid(sop_instance),
        )
        .unwrap()
        .write_to_file(path)
        .unwrap();
    }

    pub fn write(path: &Path, series_uid: &str, s: &Slice) {
        let mut o = InMemDicomObject::new_empty();
        let ds = |v: &[f64]| PrimitiveValue::Strs(v.iter().map(|x| format!("{x}")).collect());
        let mr = "1.2.840.10008.5.1.4.1.1.4";
        let instance = format!("2.25.{}", s.instance);
        put(&mut o, tags::SOP_CLASS_UID, VR::UI, mr);
        put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, instance.as_str());
        put(&mut o, tags::MODALITY, VR::CS, "MR");
        put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
        put(
            &mut o,
            tags::INSTANCE_NUMBER,
            VR::IS,
            s.instance.to_string(),
        );
        put(&mut o, tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&s.pos));
        put(&mut o, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&s.iop));
        put(&mut o, tags::PIXEL_SPACING, VR::DS, ds(&[1.5, 1.25]));
        if let Some(t) = s.trigger {
            put(&mut o, tags::TRIGGER_TIME, VR::DS, ds(&[t]));
        }
        put(&mut o, tags::ROWS, VR::US, 3u16);
        put(&mut o, tags::COLUMNS, VR::US, 4u16);
        put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
        put(
            &mut o,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        put(&mut o, tags::BITS_ALLOCATED, VR::US, 16u16);
        put(&mut o, tags::BITS_STORED, VR::US, 16u16);
        put(&mut o, tags::HIGH_BIT, VR::US, 15u16);
        put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
        let px: Vec<u16> = (0..12).map(|i| s.value + i).collect();
        put(
            &mut o,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(px.into()),
        );
        save(o, path, mr, &instance);
    }
}

/// Writes a stack of `n` slices along `normal` spaced `dz`, file names shuffled, instance numbers
/// reversed; `value` of slice k is 100 * k so order is visible in the pixels.
fn stack(
    dir: &Path,
    iop: [f64; 6],
    n: usize,
    dz: f64,
    skip: Option<usize>,
    dup: Option<usize>,
    phases: usize,
) {
    let row = [iop[0], iop[1], iop[2]];
    let col = [iop[3], iop[4], iop[5]];
    let normal = [
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    ];
    let origin = [-20.0, 35.0, 12.5];
    let mut k_files = 0;
    for k in 0..n {
        if Some(k) == skip {
            continue;
        }
        let copies = if Some(k) == dup { 2 } else { 1 };
        for p in 0..phases {
            for c in 0..copies {
                let pos = [0, 1, 2].map(|a| origin[a] + normal[a] * dz * k as f64);
                let s = writer::Slice {
                    pos,
                    iop,
                    instance: (n * phases - k * phases - p) as i32,
                    trigger: if phases > 1 {
                        Some(40.0 * p as f64)
                    } else {
                        None
                    },
                    value: (100 * k + 10 * p) as u16,
                };
                // Names scrambled so that sorting by name is wrong.
                let name = format!("{:03}_{c}.dcm", (k_files * 7919) % 1000);
                k_files += 1;
                writer::write(&dir.join(name), "1.2.3.4.5", &s);
            }
        }
    }
}

#[test]
fn series_shuffled_files_are_ordered_by_position() {
    let dir = tempfile::tempdir().unwrap();
    stack(
        dir.path(),
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        6,
        2.5,
        None,
        None,
        1,
    );
    let v = series::read_series(dir.path()).unwrap();
    assert_eq!(v.dims, [4, 3, 6, 1]);
    assert_eq!(v.spacing[..3], [1.25, 1.5, 2.5]);
    for z in 0..6 {
        assert_eq!(v.at(0, 0, z, 0), 100.0 * z as f32, "slice {z}");
    }
    // RAS affine: LPS x and y negated; origin of the first slice.
    assert_eq!(v.affine[0], [-1.25, 0.0, 0.0, 20.0]);
    assert_eq!(v.affine[1], [0.0, -1.5, 0.0, -35.0]);
    assert_eq!(v.affine[2], [0.0, 0.0, 2.5, 12.5]);
}

#[test]
fn series_oblique_orientation() {
    let dir = tempfile::tempdir().unwrap();
    let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let iop = [c, s, 0.0, 0.0, 0.0, -1.0];
    stack(dir.path(), iop, 5, 3.0, None, None, 1);
    let v = series::read_series(dir.path()).unwrap();
    assert_eq!(v.dims, [4, 3, 5, 1]);
    assert!((v.spacing[2] - 3.0).abs() < 1e-9);
    for z in 0..5 {
        assert_eq!(v.at(0, 0, z, 0), 100.0 * z as f32);
    }
    // The slice direction is row x column, scaled by the spacing.
    let n = [-s, c, 0.0];
    for a in 0..3 {
        let flip = if a < 2 { -1.0 } else { 1.0 };
        assert!(
            (v.affine[a][2] - flip * n[a] * 3.0).abs() < 1e-9,
            "affine col 2 row {a}"
        );
    }
}

#[test]
fn series_missing_and_duplicated_slices_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    stack(
        dir.path(),
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        6,
        2.5,
        Some(3),
        None,
        1,
    );
    let e = series::read_series(dir.path()).unwrap_err().to_string();
    assert!(e.contains("missing slice") && e.contains("5.00 mm"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    stack(
        dir.path(),
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        6,
        2.5,
        None,
        Some(2),
        1,
    );
    let e = series::read_series(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("duplicated slice") || e.contains("missing or duplicated"),
        "{e}"
    );
}

#[test]
fn series_cine_becomes_4d() {
    let dir = tempfile::tempdir().unwrap();
    stack(
        dir.path(),
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        4,
        8.0,
        None,
        None,
        5,
    );
    let v = series::read_series(dir.path()).unwrap();
    assert_eq!(v.dims, [4, 3, 4, 5]);
    assert_eq!(v.spacing[3], 40.0);
    for z in 0..4 {
        for t in 0..5 {
            assert_eq!(v.at(0, 0, z, t), (100 * z + 10 * t) as f32, "z {z} t {t}");
        }
    }
    // A cine series with one phase image missing is rejected.
    let first = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(first).unwrap();
    let e = series::read_series(dir.path()).unwrap_err().to_string();
    assert!(e.contains("missing or duplicated"), "{e}");
}

#[test]
fn series_with_two_uids_is_an_error_that_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    stack(
        dir.path(),
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        3,
        2.0,
        None,
        None,
        1,
    );
    writer::write(
        &dir.path().join("other.dcm"),
        "9.9.9",
        &writer::Slice {
            pos: [0.0; 3],
            iop: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            instance: 1,
            trigger: None,
            value: 0,
        },
    );
    let e = series::read_series(dir.path()).unwrap_err().to_string();
    assert!(e.contains("2 series") && e.contains("9.9.9"), "{e}");
}

// ---- hostile input ------------------------------------------------------------------------------

#[test]
fn truncated_and_corrupted_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for sub in ["dicom", "nifti", "images"] {
        for entry in std::fs::read_dir(fixtures().join(sub)).unwrap() {
            let p = entry.unwrap().path();
            if p.extension()
                .is_some_and(|e| e == "npy" || e == "py" || e == "md" || e == "img")
            {
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            // Truncations at several points, and byte flips in the header and the data.
            let mut variants: Vec<Vec<u8>> = [0.1, 0.5, 0.9, 0.99]
                .iter()
                .map(|f| bytes[..(bytes.len() as f64 * f) as usize].to_vec())
                .collect();
            for (i, at) in [0.05, 0.2, 0.5, 0.8].iter().enumerate() {
                let mut b = bytes.clone();
                let k = (b.len() as f64 * at) as usize;
                for j in k..(k + 16).min(b.len()) {
                    b[j] ^= 0x5a + i as u8;
                }
                variants.push(b);
            }
            for (i, v) in variants.iter().enumerate() {
                let q = dir.path().join(format!("{i}_{name}"));
                std::fs::write(&q, v).unwrap();
                // Any outcome but a panic is acceptable for a flipped byte (it may still be
                // valid); truncations of uncompressed pixel data must be errors.
                let r = std::panic::catch_unwind(|| {
                    let _ = medinfer_io::read_images(&q);
                    let _ = medinfer_io::read_volume(&q);
                });
                assert!(r.is_ok(), "{name} variant {i} panicked");
                checked += 1;
            }
            if sub == "dicom" && name.starts_with("ct_explicit_le") {
                let q = dir.path().join("trunc.dcm");
                std::fs::write(&q, &bytes[..bytes.len() - 100]).unwrap();
                let e = medinfer_io::read_images(&q).unwrap_err().to_string();
                assert!(e.contains("trunc.dcm"), "{e}");
            }
        }
    }
    assert!(checked > 300, "{checked}");
}

/// Gzipped NIfTI is inflated whole (libdeflate) when it is one member whose footer tells its
/// size; a footer that lies, a second member, a truncation or a corrupt stream take the
/// streaming decoder, and each ends in the same voxels or a one-line error naming the file.
#[test]
fn gzip_nifti_is_read_whole_or_streamed_with_the_same_result() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<f32> = (0..24 * 20 * 6 * 3)
        .map(|i| ((i * 37) % 1001) as f32 - 500.0)
        .collect();
    let vol =
        medinfer_core::Volume::new([24, 20, 6, 3], data.clone(), [1.0, 1.2, 3.0, 40.0]).unwrap();
    let plain = dir.path().join("v.nii");
    nifti::write(&plain, &vol, nifti::NiftiDtype::I16).unwrap();
    let raw = std::fs::read(&plain).unwrap();
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let put = |name: &str, b: &[u8]| {
        let q = dir.path().join(name);
        std::fs::write(&q, b).unwrap();
        q
    };
    // One member: read whole, the same voxels as the plain file.
    let whole = nifti::read(put("whole.nii.gz", &gz(&raw))).unwrap();
    assert!(whole.data == data);
    assert_eq!(whole.affine, nifti::read(&plain).unwrap().affine);
    // A footer declaring another size: libdeflate refuses it, the streaming decoder reads the
    // voxels the header declares (it stops before the footer): the same volume.
    let mut lying = gz(&raw);
    let n = lying.len();
    lying[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
    let v = nifti::read(put("lying.nii.gz", &lying)).map(|v| v.data);
    assert!(v.as_ref().is_ok_and(|d| *d == data), "{:?}", v.err());
    // Two members (as `cat a.gz b.gz` makes): the streaming decoder reads the first, so the
    // data are short, and the error says so.
    let mut two = gz(&raw[..raw.len() / 2]);
    two.extend(gz(&raw[raw.len() / 2..]));
    let e = nifti::read(put("two.nii.gz", &two))
        .unwrap_err()
        .to_string();
    assert!(e.contains("two.nii.gz") && e.contains("truncated"), "{e}");
    // The data short of what the header declares, in one good member.
    let e = nifti::read(put("short.nii.gz", &gz(&raw[..raw.len() - 100])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("short.nii.gz") && e.contains("truncated"), "{e}");
    // The compressed stream cut short.
    let full = gz(&raw);
    let e = nifti::read(put("cut.nii.gz", &full[..full.len() * 2 / 3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.nii.gz"), "{e}");
}

#[test]
fn absurd_dimensions_are_refused_before_allocating() {
    // A DICOM header declaring 65535 x 65535 x 1,000,000 frames with 4 bytes of pixel data.
    use dicom_core::{PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use writer::{put, save};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.dcm");
    let header = |rows: u16, frames: &str| {
        let mut o = dicom_object::InMemDicomObject::new_empty();
        put(&mut o, tags::ROWS, VR::US, rows);
        put(&mut o, tags::COLUMNS, VR::US, 65535u16);
        put(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, frames);
        put(&mut o, tags::BITS_ALLOCATED, VR::US, 16u16);
        put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
        put(
            &mut o,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        put(
            &mut o,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![1u16, 2].into()),
        );
        o
    };
    save(header(65535, "1000000"), &p, "1.2.3", "1.2.3.4");
    let e = dicom::DicomFile::open(&p).err().unwrap().to_string();
    assert!(e.contains("huge.dcm") && e.contains("more than"), "{e}");
    // Within limits but with too few bytes: refused before decoding, from the header and the
    // file size alone.
    save(header(4000, "1"), &p, "1.2.3", "1.2.3.4");
    let e = dicom::read_images(&p).unwrap_err().to_string();
    assert!(
        e.contains("need at least 524280000 bytes, the file has"),
        "{e}"
    );
}

/// A small monochrome image header (explicit VR little endian), pixels as given.
fn mono_header(
    rows: u16,
    cols: u16,
    frames: &str,
    bits: (u16, u16, u16),
) -> dicom_object::InMemDicomObject {
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    use writer::put;
    let mut o = dicom_object::InMemDicomObject::new_empty();
    put(
        &mut o,
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.7",
    );
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4.5");
    put(&mut o, tags::ROWS, VR::US, rows);
    put(&mut o, tags::COLUMNS, VR::US, cols);
    put(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, frames);
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put(&mut o, tags::BITS_ALLOCATED, VR::US, bits.0);
    put(&mut o, tags::BITS_STORED, VR::US, bits.1);
    put(&mut o, tags::HIGH_BIT, VR::US, bits.2);
    put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    o
}

/// Regression (hardening review): the sample cap let 1 x 1 pixel x 2^31 frames through, and
/// series layout then pushed one entry per frame (about 120 GB) from a header of a few hundred
/// bytes. Frames are capped, and a header whose image cannot fit in its file is refused.
#[test]
fn frame_count_from_a_tiny_header_is_capped_before_series_layout() {
    use dicom_core::{PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use writer::{put, save};
    let dir = tempfile::tempdir().unwrap();
    for (k, frames) in ["2147483647", "100000"].iter().enumerate() {
        let mut o = mono_header(1, 1, frames, (16, 16, 15));
        put(
            &mut o,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![7u16].into()),
        );
        save(
            o,
            &dir.path().join(format!("f{k}.dcm")),
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.3",
        );
    }
    let files = series::list_files(dir.path()).unwrap();
    let scan = series::scan(&files);
    assert!(
        scan.series.is_empty(),
        "a hostile header reached series layout"
    );
    assert_eq!(scan.rejected.len(), 2);
    let (a, b) = (&scan.rejected[0].1, &scan.rejected[1].1);
    assert!(
        a.contains("f0.dcm") && a.contains("Number of Frames 2147483647 is more than"),
        "{a}"
    );
    assert!(b.contains("f1.dcm") && b.contains("the file has"), "{b}");
    // inspect / convert / run reach the same refusal through read_series.
    let e = series::read_series(dir.path()).unwrap_err().to_string();
    assert!(e.contains("no DICOM series found"), "{e}");
}

/// Regression (hardening review): `rows * columns * frames * samples` was an unchecked u64
/// product: 65504 x 65535 x 3 x 1,432,377,014 wraps to about 2.07e9, under the sample cap.
#[test]
fn size_products_that_wrap_are_refused() {
    use dicom_core::{PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use writer::{put, save};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wrap.dcm");
    let mut o = mono_header(65504, 65535, "1432377014", (8, 8, 7));
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 3u16);
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put(
        &mut o,
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(vec![0u8; 6].into()),
    );
    save(o, &p, "1.2.840.10008.5.1.4.1.1.7", "1.2.3");
    for r in [
        dicom::DicomFile::open_header(&p).map(|_| ()),
        dicom::read_images(&p).map(|_| ()),
    ] {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("wrap.dcm") && e.contains("more than"), "{e}");
    }
}

/// Regression (hardening review): the declared-length walk had no depth limit and dicom-rs
/// builds nested items recursively; tens of thousands of nested undefined-length sequences
/// (20 bytes a level) overflowed the stack, which aborts the process. Run on a thread with a
/// small stack, as a server's worker might be.
#[test]
fn deeply_nested_sequences_are_refused_without_overflowing_the_stack() {
    // A bare explicit-VR data set: (0008,0016) UI, then 70,000 levels of
    // (0008,1140) SQ undefined length > item of undefined length.
    let mut b = Vec::new();
    b.extend_from_slice(&[0x08, 0x00, 0x16, 0x00, b'U', b'I', 4, 0]);
    b.extend_from_slice(b"1.2\0");
    for _ in 0..70_000 {
        b.extend_from_slice(&[
            0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        b.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]);
    }
    let e = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            dicom::DicomFile::from_bytes("nested.dcm", &b)
                .err()
                .map(|e| e.to_string())
        })
        .unwrap()
        .join()
        .expect("no panic")
        .expect("refused");
    assert!(
        e.contains("nested.dcm") && e.contains("nested more than 64 levels"),
        "{e}"
    );
    // A real depth (3 levels) still parses.
    let mut b = Vec::new();
    b.extend_from_slice(&[0x08, 0x00, 0x16, 0x00, b'U', b'I', 4, 0]);
    b.extend_from_slice(b"1.2\0");
    for _ in 0..3 {
        b.extend_from_slice(&[
            0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        b.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]);
    }
    for _ in 0..3 {
        b.extend_from_slice(&[0xfe, 0xff, 0x0d, 0xe0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
    }
    dicom::DicomFile::from_bytes("nested3.dcm", &b).unwrap();
}

/// Regression (hardening review): a Modality LUT Descriptor with an entry count of -1 (SS)
/// gave an empty table, and applying it underflowed `len() - 1`.
#[test]
fn modality_lut_descriptors_without_entries_are_refused() {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use writer::{put, save};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lut.dcm");
    for (count, want) in [
        (
            PrimitiveValue::I16(vec![-1, 0, 16].into()),
            "Modality LUT Descriptor declares -1 entries",
        ),
        (
            PrimitiveValue::U16(vec![0, 0, 16].into()),
            "declares 65536 entries but holds 4",
        ),
    ] {
        let mut o = mono_header(2, 2, "1", (16, 16, 15));
        let mut item = dicom_object::InMemDicomObject::new_empty();
        let vr = if matches!(count, PrimitiveValue::I16(_)) {
            VR::SS
        } else {
            VR::US
        };
        item.put(DataElement::new(tags::LUT_DESCRIPTOR, vr, count));
        put(
            &mut item,
            tags::LUT_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![5u16, 6, 7, 8].into()),
        );
        o.put(DataElement::new(
            tags::MODALITY_LUT_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![item]),
        ));
        put(
            &mut o,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![0u16, 1, 2, 3].into()),
        );
        save(o, &p, "1.2.840.10008.5.1.4.1.1.7", "1.2.3");
        let e = dicom::read_images(&p).unwrap_err().to_string();
        assert!(e.contains("lut.dcm") && e.contains(want), "{e}");
        assert!(
            !e.contains("panic") && !e.contains("inside the DICOM library"),
            "{e}"
        );
    }
}

/// Regression (hardening review): High Bit was ignored. Samples stored high in their word
/// (High Bit 15 with 12 bits stored, as older writers did) are shifted down, as dcmtk does; a
/// High Bit that contradicts Bits Stored / Allocated is refused.
#[test]
fn high_bit_is_honoured_or_refused() {
    use dicom_core::{PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use writer::{put, save};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hb.dcm");
    let vals = [0u16, 1, 2047, 4095];
    let mut o = mono_header(2, 2, "1", (16, 12, 15));
    let stored: Vec<u16> = vals.iter().map(|v| (v << 4) | 0x5).collect();
    put(
        &mut o,
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(stored.into()),
    );
    save(o, &p, "1.2.840.10008.5.1.4.1.1.7", "1.2.3");
    let img = dicom::read_images(&p).unwrap().remove(0);
    assert_eq!(img.data, vals.iter().map(|&v| v as f32).collect::<Vec<_>>());
    for (bits, what) in [((16, 12, 16), "High Bit 16"), ((16, 12, 10), "High Bit 10")] {
        let mut o = mono_header(2, 2, "1", bits);
        put(
            &mut o,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![1u16; 4].into()),
        );
        save(o, &p, "1.2.840.10008.5.1.4.1.1.7", "1.2.3");
        let e = dicom::read_images(&p).unwrap_err().to_string();
        assert!(
            e.contains("hb.dcm") && e.contains(what) && e.contains("contradicts"),
            "{e}"
        );
    }
}

/// Regression (cargo-fuzz, dicom_decode): a 5 KB file whose header declares a 4 GB element made
/// dicom-rs allocate 4 GB before reading it. Declared lengths are now checked against the bytes
/// present first, in every encoding, nested sequences and pixel fragments included.
#[test]
fn declared_lengths_beyond_the_file_are_refused_before_allocating() {
    let e = dicom::DicomFile::from_bytes(
        "fuzz_declared_4gb.bin",
        &std::fs::read(fixtures().join("dicom/fuzz_declared_4gb.bin")).unwrap(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("fuzz_declared_4gb.bin") && e.contains("declares") && e.contains("remain"),
        "{e}"
    );
    // The same inside a deflated data set (found next): checked on the inflated bytes.
    let e = dicom::DicomFile::from_bytes(
        "fuzz_deflated_oom.bin",
        &std::fs::read(fixtures().join("dicom/fuzz_deflated_oom.bin")).unwrap(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("fuzz_deflated_oom.bin") && e.contains("deflated"),
        "{e}"
    );
    // And where dicom-rs would lose its place (found third: an FD element of length 2, of which
    // dicom-rs reads 0 bytes but counts 2, so later bytes become a 4 GB element).
    let e = dicom::DicomFile::from_bytes(
        "fuzz_fd_length_oom.bin",
        &std::fs::read(fixtures().join("dicom/fuzz_fd_length_oom.bin")).unwrap(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("fuzz_fd_length_oom.bin") && e.contains("FD has length 2, not a multiple of 8"),
        "{e}"
    );
    // An element header that crosses the end of its item (found fourth): dicom-rs reads on
    // past item ends, so the check may not stop there.
    let e = dicom::DicomFile::from_bytes(
        "fuzz_item_straddle_oom.bin",
        &std::fs::read(fixtures().join("dicom/fuzz_item_straddle_oom.bin")).unwrap(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("fuzz_item_straddle_oom.bin") && e.contains("runs past the end of its item"),
        "{e}"
    );
    // A deflated file whose file meta group length disagrees with its elements (found fifth):
    // the data set starts where dicom-rs starts it, by the group length.
    let r = dicom::DicomFile::from_bytes(
        "fuzz_meta_length_oom.bin",
        &std::fs::read(fixtures().join("dicom/fuzz_meta_length_oom.bin")).unwrap(),
    );
    let e = r.err().unwrap().to_string();
    assert!(
        e.contains("fuzz_meta_length_oom.bin") && e.contains("declares 2566849280"),
        "{e}"
    );
    // The same desynchronisation in implicit VR (found sixth): (0000,0000) is UL by the
    // dictionary, and a length of 5 makes dicom-rs read one number and count five bytes.
    let r = dicom::DicomFile::from_bytes(
        "fuzz_implicit_ul_length_oom.bin",
        &std::fs::read(fixtures().join("dicom/fuzz_implicit_ul_length_oom.bin")).unwrap(),
    );
    let e = r.err().unwrap().to_string();
    assert!(e.contains("UL has length 5, not a multiple of 4"), "{e}");
    // An undefined-length item left open at the end of the defined-length sequence around it
    // (found last): dicom-rs reads on into the following bytes.
    let r = dicom::DicomFile::from_bytes(
        "fuzz_open_item_oom.bin",
        &std::fs::read(fixtures().join("dicom/fuzz_open_item_oom.bin")).unwrap(),
    );
    let e = r.err().unwrap().to_string();
    assert!(e.contains("an open item runs past the end"), "{e}");
    // Each encoding: the Pixel Data length of a valid file raised to almost 4 GiB.
    for name in [
        "ct_explicit_le.dcm",
        "ct_implicit_le.dcm",
        "ct_explicit_be.dcm",
        "ct_no_meta_implicit.dcm",
    ] {
        let mut bytes = std::fs::read(fixtures().join("dicom").join(name)).unwrap();
        let big = name.contains("_be");
        let tag: [u8; 4] = if big {
            [0x7f, 0xe0, 0x00, 0x10]
        } else {
            [0xe0, 0x7f, 0x10, 0x00]
        };
        let at = bytes.windows(4).rposition(|w| w == tag).unwrap();
        let len_at = if name.contains("implicit") {
            at + 4
        } else {
            at + 8
        };
        let huge: u32 = 0xFFFF_FFF0;
        bytes[len_at..len_at + 4].copy_from_slice(&if big {
            huge.to_be_bytes()
        } else {
            huge.to_le_bytes()
        });
        let e = dicom::DicomFile::from_bytes(name, &bytes)
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"))
            .to_string();
        assert!(
            e.contains(name) && e.contains("(7FE0,0010) declares 4294967280"),
            "{name}: {e}"
        );
    }
}

/// Regression (cargo-fuzz, series_assemble): a data set without file meta whose elements after
/// Pixel Data declared 4 GB. The header-only read (series scan, inspect) checked lengths up to
/// Pixel Data but then let dicom-rs parse the whole buffer, which allocated the 4 GB. Now the
/// header read parses exactly the checked part, and the full read checks everything.
#[test]
fn header_reads_parse_only_what_was_checked() {
    let p = fixtures().join("dicom/fuzz_series_header_oom.bin");
    let h = dicom::DicomFile::open_header(&p).expect("the header before Pixel Data is sound");
    assert_eq!(h.header.modality, "CT");
    let e = dicom::DicomFile::open(&p).err().unwrap().to_string();
    assert!(
        e.contains("fuzz_series_header_oom.bin") && e.contains("declares"),
        "{e}"
    );
}

/// Regressions (cargo-fuzz, dicom_decode): an RLE file whose segment offsets run past its data
/// made dicom-rs's RLE decoder index out of bounds (a panic, which medinfer's guard already
/// turned into an error), and one declaring billions of segments made it allocate 5.6 GB. The
/// RLE headers are now checked before dicom-rs decodes.
#[test]
fn hostile_rle_fragments_are_errors() {
    let bytes = std::fs::read(fixtures().join("dicom/fuzz_rle_panic.bin")).unwrap();
    let r = dicom::DicomFile::from_bytes("fuzz_rle_panic.bin", &bytes).and_then(|f| f.images());
    let Err(e) = r.map(|_| ()) else {
        panic!("the broken RLE file was accepted")
    };
    let e = e.to_string();
    assert!(e.contains("fuzz_rle_panic.bin"), "{e}");
    // An RLE header declaring billions of segments (found later): dicom-rs allocates the
    // segment table from it, so medinfer checks the headers first.
    let bytes = std::fs::read(fixtures().join("dicom/fuzz_rle_segments_oom.bin")).unwrap();
    let r =
        dicom::DicomFile::from_bytes("fuzz_rle_segments_oom.bin", &bytes).and_then(|f| f.images());
    let Err(e) = r.map(|_| ()) else {
        panic!("the hostile RLE file was accepted")
    };
    assert!(e.to_string().contains("segments (1 to 15 allowed)"), "{e}");
}

// ---- writers -----------------------------------------------------------------------------------

#[test]
fn dicom_series_to_nifti_round_trip_keeps_geometry() {
    let dir = tempfile::tempdir().unwrap();
    stack(
        dir.path(),
        [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
        5,
        4.0,
        None,
        None,
        1,
    );
    let v = series::read_series(dir.path()).unwrap();
    let out = dir.path().join("out.nii.gz");
    nifti::write(&out, &v, nifti::NiftiDtype::F32).unwrap();
    let r = nifti::read(&out).unwrap();
    assert_eq!(r.dims, v.dims);
    assert_eq!(r.data, v.data);
    for i in 0..4 {
        for j in 0..4 {
            assert!((r.affine[i][j] - v.affine[i][j]).abs() < 1e-5);
        }
    }
}

#[test]
fn png_views_and_overlays() {
    let dir = tempfile::tempdir().unwrap();
    let ct = dicom::read_images(fixtures().join("dicom/ct_explicit_le.dcm"))
        .unwrap()
        .remove(0);
    let view = raster::to_u8_view(&ct, None).unwrap();
    assert_eq!(view.len(), ct.width * ct.height);
    // The file's window (40, 400) in HU: below -160 is black, above 240 white.
    for (v, hu) in view.iter().zip(&ct.data) {
        if *hu < -161.0 {
            assert_eq!(*v, 0);
        }
        if *hu > 240.0 {
            assert_eq!(*v, 255);
        }
    }
    let labels: Vec<u8> = (0..view.len()).map(|i| (i % 4) as u8).collect();
    let rgb = raster::overlay(&view, &labels, 0.5);
    let p = dir.path().join("o.png");
    raster::write_png8(&p, ct.width, ct.height, 3, &rgb).unwrap();
    let back = raster::read_png(&p).unwrap();
    assert_eq!(back.channels, 3);
    assert_eq!(back.data[..3], [view[0] as f32; 3]);
    assert!(raster::write_png8(&p, 3, 3, 1, &[0; 8]).is_err());
}

/// Rewrites the cine timing of every file of a written series: no Temporal Position Identifier,
/// Trigger Time = `time(slice, phase)`.
fn retime(files: &[PathBuf], nt: usize, time: impl Fn(usize, usize) -> f64) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    for (k, f) in files.iter().enumerate() {
        // write_series writes slice-major: IM_<slice>_<phase>.
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let parts: Vec<usize> = name
            .trim_start_matches("IM_")
            .trim_end_matches(".dcm")
            .split('_')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(parts.len(), 2, "{name} ({k} of {nt})");
        let mut obj = dicom_object::open_file(f).unwrap();
        obj.remove_element(tags::TEMPORAL_POSITION_IDENTIFIER);
        obj.put(DataElement::new(
            tags::TRIGGER_TIME,
            VR::DS,
            PrimitiveValue::from(format!("{:.2}", time(parts[0], parts[1]))),
        ));
        obj.write_to_file(f).unwrap();
    }
}

#[test]
fn separate_breath_holds_are_matched_by_phase_index_and_reported() {
    let (nx, ny, nz, nt) = (12, 10, 4, 6);
    let data: Vec<f32> = (0..nx * ny * nz * nt).map(|i| (i % 997) as f32).collect();
    let vol = medinfer_core::Volume::new([nx, ny, nz, nt], data, [1.5, 1.5, 8.0, 40.0]).unwrap();
    let info = medinfer_io::dicom_write::SeriesInfo {
        modality: "MR".into(),
        description: "cine".into(),
        uid_seed: 7,
        slice_thickness: 8.0,
        rescale_intercept: 0.0,
        ..Default::default()
    };
    let d = tempfile::tempdir().unwrap();
    let files = medinfer_io::dicom_write::write_series(d.path(), &vol, &info).unwrap();
    // Each slice its own breath-hold: first phase at 23-29 ms, RR (step) 38-44 ms.
    let first = |z: usize| 23.0 + 2.0 * z as f64;
    let step = |z: usize| 38.0 + 2.0 * z as f64;
    retime(&files, nt, |z, t| first(z) + step(z) * t as f64);
    let got = medinfer_io::read_volume(d.path()).unwrap();
    assert_eq!(got.dims, vol.dims);
    assert_eq!(
        got.data, vol.data,
        "every image in its (slice, phase) place"
    );
    let mean_step = (0..nz).map(step).sum::<f64>() / nz as f64;
    assert!(
        (got.spacing[3] - mean_step).abs() < 0.01,
        "{:?}",
        got.spacing
    );
    let note = got
        .tags
        .get("cine_timing")
        .expect("the timing spread is reported");
    assert!(
        note.contains("23.0-29.0 ms") && note.contains("breath-holds"),
        "{note}"
    );

    // A slice whose phases are not where the others' are in the cycle is refused, by name.
    retime(&files, nt, |z, t| {
        let t = t as f64;
        if z == 2 {
            first(z) + step(z) * t * t / (nt - 1) as f64
        } else {
            first(z) + step(z) * t
        }
    });
    let e = medinfer_io::read_volume(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("cine phases do not line up") && e.contains("phase"),
        "{e}"
    );

    // Identical timings (one breath-hold for the stack): no note.
    retime(&files, nt, |_, t| 25.0 + 40.0 * t as f64);
    let got = medinfer_io::read_volume(d.path()).unwrap();
    assert!(got.tags.get("cine_timing").is_none());
    assert!((got.spacing[3] - 40.0).abs() < 0.01);
}

/// Sets the Series Instance UID and Series Number of every DICOM file under `dir`.
fn reseries(dir: &std::path::Path, uid: &str, number: u32) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        let mut obj = dicom_object::open_file(f.path()).unwrap();
        obj.put(DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(uid),
        ));
        obj.put(DataElement::new(
            tags::SERIES_NUMBER,
            VR::IS,
            PrimitiveValue::from(number.to_string()),
        ));
        obj.write_to_file(f.path()).unwrap();
    }
}

#[test]
fn single_slice_series_are_assembled_into_one_stack() {
    let (nx, ny, nz, nt) = (12, 10, 5, 6);
    let data: Vec<f32> = (0..nx * ny * nz * nt).map(|i| (i % 991) as f32).collect();
    let mut vol =
        medinfer_core::Volume::new([nx, ny, nz, nt], data, [1.5, 1.5, 8.0, 40.0]).unwrap();
    // An oblique plane, as a short-axis stack is planned.
    let (a, b) = (0.7f64, -0.4f64);
    let r = [
        [b.cos(), -b.sin() * a.cos(), b.sin() * a.sin()],
        [b.sin(), b.cos() * a.cos(), -b.cos() * a.sin()],
        [0.0, a.sin(), a.cos()],
    ];
    for i in 0..3 {
        vol.affine[i] = [
            r[i][0] * 1.5,
            r[i][1] * 1.5,
            r[i][2] * 8.0,
            [10.0, -20.0, 30.0][i],
        ];
    }
    let info = medinfer_io::dicom_write::SeriesInfo {
        modality: "MR".into(),
        description: "sax".into(),
        uid_seed: 11,
        slice_thickness: 8.0,
        series_per_slice: true,
        // Each slice its own breath-hold, as such exports are.
        slice_timing: Some(
            (0..nz)
                .map(|z| [20.0 + 3.0 * z as f64, 38.0 + z as f64])
                .collect(),
        ),
        ..Default::default()
    };
    let d = tempfile::tempdir().unwrap();
    medinfer_io::dicom_write::write_series(d.path(), &vol, &info).unwrap();
    assert!(d.path().join("sax_1").is_dir() && d.path().join("sax_5").is_dir());
    let got = medinfer_io::read_volume(d.path()).unwrap();
    assert_eq!(got.dims, vol.dims);
    assert_eq!(
        got.data, vol.data,
        "every image in its (slice, phase) place"
    );
    for i in 0..3 {
        for j in 0..4 {
            assert!(
                (got.affine[i][j] - vol.affine[i][j]).abs() < 1e-3,
                "{:?}",
                got.affine
            );
        }
    }
    assert_eq!(
        got.tags.get("stack"),
        Some("assembled from 5 single-slice series")
    );
    assert!(got
        .tags
        .get("cine_timing")
        .unwrap()
        .contains("breath-holds"));
    // One slice's folder alone is one slice (the pipelines say to point at the parent).
    let one = medinfer_io::read_volume(d.path().join("sax_3")).unwrap();
    assert_eq!(one.dims, [nx, ny, 1, nt]);

    // A long-axis view in the same study is left out, by name.
    let mut la = vol.clone();
    la.dims = [nx, ny, 1, nt];
    la.data = (0..nx * ny * nt).map(|i| (i % 13) as f32).collect();
    for i in 0..3 {
        // The plane turned 60 degrees about its row axis.
        let (c, s) = (60f64.to_radians().cos(), 60f64.to_radians().sin());
        la.affine[i][1] = (r[i][1] * c + r[i][2] * s) * 1.5;
        la.affine[i][2] = (-r[i][1] * s + r[i][2] * c) * 8.0;
    }
    let la_info = medinfer_io::dicom_write::SeriesInfo {
        uid_seed: 12,
        series_per_slice: true,
        slice_timing: None,
        ..info.clone()
    };
    medinfer_io::dicom_write::write_series(&d.path().join("la"), &la, &la_info).unwrap();
    let got = medinfer_io::read_volume(d.path()).unwrap();
    assert_eq!(got.dims, vol.dims);
    let note = got.tags.get("stack").unwrap();
    assert!(
        note.contains("left out: sax_1") && note.contains("60 degrees"),
        "{note}"
    );

    // A repeated slice: the later series (higher Series Number) is kept, the other named.
    let rep = d.path().join("sax_2_repeat");
    std::fs::create_dir(&rep).unwrap();
    let mut bright = vol.clone();
    bright.data.iter_mut().for_each(|v| *v += 1000.0);
    let tmp = tempfile::tempdir().unwrap();
    medinfer_io::dicom_write::write_series(tmp.path(), &bright, &info).unwrap();
    for f in std::fs::read_dir(tmp.path().join("sax_2"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(f.path(), rep.join(f.file_name())).unwrap();
    }
    reseries(&rep, "2.25.77", 40);
    let got = medinfer_io::read_volume(d.path()).unwrap();
    let note = got.tags.get("stack").unwrap();
    assert!(
        note.contains("repeated") && note.contains("sax_2_repeat"),
        "{note}"
    );
    let plane = nx * ny;
    // Slice 1 (sax_2) at phase 0 now holds the repeat's brighter pixels.
    assert_eq!(got.data[plane], vol.data[plane] + 1000.0);
    std::fs::remove_dir_all(&rep).unwrap();

    // A slice with another phase count is refused by name.
    let gone = d.path().join("sax_4").join("IM_005.dcm");
    std::fs::remove_file(gone).unwrap();
    let e = medinfer_io::read_volume(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("sax_4") && e.contains("5 phases") && e.contains("same number of phases"),
        "{e}"
    );
}

#[test]
fn npz_archives_written_by_numpy_read_back_exactly() {
    let dir = fixtures().join("arrays");
    // np.savez_compressed: deflated members, a colon in a key.
    let a = medinfer_io::npy::read_npz(&dir.join("compressed.npz")).unwrap();
    let keys: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["image", "clinical:0"]);
    assert_eq!(a[0].1.shape(), &[2, 1, 3, 4]);
    let want: Vec<f32> = (0..24).map(|i| i as f32 / 8.0).collect();
    assert_eq!(a[0].1.as_f32().unwrap(), want.as_slice());
    assert_eq!(a[1].1.shape(), &[2, 3]);
    assert_eq!(a[1].1.as_f32().unwrap(), &[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]);
    // np.savez: stored members, bool, int64 beyond 32 bits, a 0-d float64.
    let b = medinfer_io::npy::read_npz(&dir.join("stored.npz")).unwrap();
    let get = |k: &str| &b.iter().find(|(n, _)| n == k).unwrap().1;
    assert_eq!(
        get("mask").data(),
        &medinfer_core::TensorData::Bool(vec![true, false, true, true, false])
    );
    assert_eq!(
        get("ids").data(),
        &medinfer_core::TensorData::I64(vec![1, -2, 3, 1 << 40])
    );
    assert_eq!(get("ids").shape(), &[2, 2]);
    assert!(get("x").shape().is_empty());
    assert_eq!(get("x").to_f64_vec(), vec![0.1]);
    // Truncated: an error that names the file, never a panic.
    let bytes = std::fs::read(dir.join("compressed.npz")).unwrap();
    for cut in [10, 100, bytes.len() - 30] {
        let e = medinfer_io::npy::decode_npz(&bytes[..cut], "cut.npz").unwrap_err();
        assert!(e.to_string().contains("cut.npz"), "{e}");
    }
}
