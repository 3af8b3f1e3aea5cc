//! The cardiac pipeline end to end on held-out phantom exams (seeds never used in training),
//! with the shipped trained model: accuracy against the phantom's exact truth on tract (FP32)
//! and, where installed, INT8 on ONNX Runtime / OpenVINO; the DICOM route against the NIfTI
//! route; bad inputs.
//!
//! Native backends that are missing are skipped with a note unless `MEDINFER_REQUIRE_BACKENDS`
//! names them (CI does).

use medinfer_core::Volume;
use medinfer_engine::{load_on, BackendKind, Mode, Session, SessionOptions};
use medinfer_pipelines::cardiac::{self, ModelId};
use medinfer_pipelines::phantom;
use medinfer_pipelines::PipelineError;
use std::path::PathBuf;

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/cardiac")
        .join(name)
}

fn session(kind: BackendKind, name: &str) -> (Session, ModelId) {
    let path = model(name);
    let opts = SessionOptions {
        mode: Mode::Throughput,
        batch: Some(8),
        ..Default::default()
    };
    let s = load_on(kind, &path, &opts).expect("the shipped model loads");
    (s, ModelId::of(&path).expect("model readable"))
}

fn native() -> Vec<BackendKind> {
    medinfer_engine::native_backends_for_tests().unwrap()
}

fn check_accuracy(s: &cardiac::EvalSummary, what: &str) {
    eprintln!("{what}: {s:#?}");
    let [lv, myo, rv] = s.mean_dice;
    assert!(lv >= 0.92, "{what}: LV cavity Dice {lv}");
    assert!(myo >= 0.85, "{what}: myocardium Dice {myo}");
    assert!(rv >= 0.88, "{what}: RV cavity Dice {rv}");
    assert!(s.lv_ef_mae <= 3.0, "{what}: LV EF error {}", s.lv_ef_mae);
    assert!(
        s.lv_mass_mape <= 5.0,
        "{what}: LV mass error {} %",
        s.lv_mass_mape
    );
}

/// Held-out exams with a spread of EF (seed 1: 59 %, 2, 3 drawn independently).
const SEEDS: [u64; 3] = [1, 2, 3];

#[test]
fn fp32_on_tract_meets_the_accuracy_targets_on_held_out_phantoms() {
    let (s, id) = session(BackendKind::Tract, "cardiac-unet.onnx");
    let sum = cardiac::evaluate(
        &SEEDS,
        &s,
        &id,
        &cardiac::CardiacSpec::shipped(),
        cardiac::ConditionSet::Canonical,
        |_| {},
    )
    .unwrap();
    check_accuracy(&sum, "tract fp32");
}

#[test]
fn int8_on_native_backends_keeps_the_accuracy_of_fp32() {
    let kinds = native();
    if kinds.is_empty() {
        return;
    }
    // The FP32 reference on the first native backend.
    let (s32, id32) = session(kinds[0], "cardiac-unet.onnx");
    let fp32 = cardiac::evaluate(
        &SEEDS,
        &s32,
        &id32,
        &cardiac::CardiacSpec::shipped(),
        cardiac::ConditionSet::Canonical,
        |_| {},
    )
    .unwrap();
    for k in kinds {
        let (s8, id8) = session(k, "cardiac-unet-int8.onnx");
        assert!(
            s8.info().effective_precision.contains("int8"),
            "{k}: {}",
            s8.info().effective_precision
        );
        let int8 = cardiac::evaluate(
            &SEEDS,
            &s8,
            &id8,
            &cardiac::CardiacSpec::shipped(),
            cardiac::ConditionSet::Canonical,
            |_| {},
        )
        .unwrap();
        check_accuracy(&int8, &format!("{k} int8"));
        let mean = |d: [f64; 3]| d.iter().sum::<f64>() / 3.0;
        let drop = mean(fp32.mean_dice) - mean(int8.mean_dice);
        assert!(drop <= 0.005, "{k}: INT8 lowers mean Dice by {drop}");
    }
}

#[test]
fn a_dicom_cine_series_gives_the_same_result_as_the_nifti_file() {
    let ph = phantom::cardiac(4);
    let dir = tempfile::tempdir().unwrap();
    let nii = dir.path().join("cine.nii.gz");
    medinfer_io::nifti::write(&nii, &ph.image, medinfer_io::nifti::NiftiDtype::I16).unwrap();
    let info = medinfer_io::dicom_write::SeriesInfo {
        modality: "MR".into(),
        description: "test".into(),
        uid_seed: 99,
        slice_thickness: ph.params.slice_thickness_mm,
        rescale_intercept: 0.0,
        ..Default::default()
    };
    let dcm = dir.path().join("dicom");
    medinfer_io::dicom_write::write_series(&dcm, &ph.image, &info).unwrap();
    // The series assembles to the same voxels, spacing and geometry. The reader orders slices
    // along the image plane's normal (row x column direction), as dcm2niix does; the phantom's
    // anatomical view with slices base to apex is a left-handed grid, so its slices come back
    // in the other order, each at the same place in the patient.
    let back = medinfer_io::read_volume(&dcm).unwrap();
    assert_eq!(back.dims, ph.image.dims);
    let [nx, ny, nz, nt] = back.dims;
    let a = &ph.image.affine;
    let det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    let reversed = det < 0.0;
    let stored_slice = |z: usize| if reversed { nz - 1 - z } else { z };
    let plane = nx * ny;
    for t in 0..nt {
        for z in 0..nz {
            let got = &back.data[(t * nz + z) * plane..(t * nz + z + 1) * plane];
            let k = stored_slice(z);
            let want = &ph.image.data[(t * nz + k) * plane..(t * nz + k + 1) * plane];
            assert_eq!(got, want, "phase {t} slice {z}");
        }
    }
    let mut expected = ph.image.affine;
    if reversed {
        for (i, row) in expected.iter_mut().enumerate().take(3) {
            row[3] = a[i][3] + a[i][2] * (nz - 1) as f64;
            row[2] = -a[i][2];
        }
    }
    for i in 0..3 {
        assert!((back.spacing[i] - ph.image.spacing[i]).abs() < 1e-4);
        for j in 0..4 {
            assert!(
                (back.affine[i][j] - expected[i][j]).abs() < 1e-3,
                "affine {:?} vs {:?}",
                back.affine,
                expected
            );
        }
    }
    let (s, id) = session(BackendKind::Tract, "cardiac-unet.onnx");
    let out = dir.path().join("out");
    let req =
        |input: &std::path::Path, output: Option<std::path::PathBuf>| cardiac::CardiacRequest {
            input: input.to_path_buf(),
            model: id.clone(),
            output,
            spec: cardiac::CardiacSpec::shipped(),
        };
    let a = cardiac::run(&s, &req(&nii, Some(out.clone()))).unwrap();
    let b = cardiac::run(&s, &req(&dcm, None)).unwrap();
    // The same masks, slice for slice at the same places.
    for t in 0..nt {
        for z in 0..nz {
            let k = stored_slice(z);
            assert_eq!(
                &b.labels[(t * nz + z) * plane..(t * nz + z + 1) * plane],
                &a.labels[(t * nz + k) * plane..(t * nz + k + 1) * plane],
                "phase {t} slice {z}"
            );
        }
    }
    // ED is a phase whose true LV volume is the end-diastolic one (late diastole and ED differ
    // by a fraction of a ml, so the measured maximum may be the neighbouring phase).
    let ed = a.report.ed_phase;
    assert!(
        ph.truth.lv_volume_ml[ed] >= 0.99 * ph.truth.lv_edv_ml,
        "ED {ed}: {} ml vs EDV {} ml",
        ph.truth.lv_volume_ml[ed],
        ph.truth.lv_edv_ml
    );
    assert!((a.report.lv.ef_pct - ph.truth.lv_ef_pct).abs() < 4.0);
    // The outputs exist and the mask keeps the input geometry.
    let mask = medinfer_io::nifti::read(out.join("masks.nii.gz")).unwrap();
    assert_eq!(mask.dims, ph.image.dims);
    for i in 0..3 {
        for j in 0..4 {
            assert!((mask.affine[i][j] - ph.image.affine[i][j]).abs() < 1e-3);
        }
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["model"]["sha256"].as_str().unwrap().len(), 64);
    assert!(report["timings"]["segment_ms"].as_f64().unwrap() > 0.0);
    assert!(out.join("ed_es.png").exists() && out.join("volumes.svg").exists());
}

fn expect_input_error(r: Result<cardiac::CardiacResult, PipelineError>, needle: &str) {
    match r {
        Err(e @ PipelineError::Input { .. }) => {
            let m = e.to_string();
            assert!(m.contains(needle), "{m}")
        }
        Err(e) => panic!("expected an input error about {needle}, got {e}"),
        Ok(_) => panic!("expected an input error about {needle}"),
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let (s, id) = session(BackendKind::Tract, "cardiac-unet.onnx");
    let ph = phantom::cardiac(5);
    let [nx, ny, nz, _] = ph.image.dims;
    // 3D instead of 4D: the first phase only.
    let mut v3 = Volume::new(
        [nx, ny, nz, 1],
        ph.image.data[..nx * ny * nz].to_vec(),
        ph.image.spacing,
    )
    .unwrap();
    v3.affine = ph.image.affine;
    expect_input_error(
        cardiac::analyse(
            &v3,
            "3d.nii",
            &s,
            id.clone(),
            &cardiac::CardiacSpec::shipped(),
        ),
        "4D",
    );
    // No heart: every phase a copy of the first one (nothing moves).
    let still: Vec<f32> = (0..ph.image.dims[3])
        .flat_map(|_| ph.image.data[..nx * ny * nz].iter().copied())
        .collect();
    let v = Volume::new(ph.image.dims, still, ph.image.spacing).unwrap();
    expect_input_error(
        cardiac::analyse(
            &v,
            "still.nii",
            &s,
            id.clone(),
            &cardiac::CardiacSpec::shipped(),
        ),
        "no beating heart",
    );
    // Absurd spacings.
    let mut v = ph.image.clone();
    v.spacing[0] = 40.0;
    expect_input_error(
        cardiac::analyse(
            &v,
            "big.nii",
            &s,
            id.clone(),
            &cardiac::CardiacSpec::shipped(),
        ),
        "pixel spacing",
    );
    let mut v = ph.image.clone();
    v.spacing[2] = 0.0;
    expect_input_error(
        cardiac::analyse(
            &v,
            "flat.nii",
            &s,
            id.clone(),
            &cardiac::CardiacSpec::shipped(),
        ),
        "slice spacing",
    );
    // Non-finite voxels.
    let mut v = ph.image.clone();
    v.data[17] = f32::NAN;
    expect_input_error(
        cardiac::analyse(
            &v,
            "nan.nii",
            &s,
            id.clone(),
            &cardiac::CardiacSpec::shipped(),
        ),
        "non-finite",
    );
    // A DICOM series with a missing slice: the series reader names the gap.
    let dir = tempfile::tempdir().unwrap();
    let info = medinfer_io::dicom_write::SeriesInfo {
        modality: "MR".into(),
        description: "test".into(),
        uid_seed: 7,
        slice_thickness: 8.0,
        rescale_intercept: 0.0,
        ..Default::default()
    };
    let files = medinfer_io::dicom_write::write_series(dir.path(), &ph.image, &info).unwrap();
    for f in files.iter().filter(|f| {
        f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("IM_003_"))
    }) {
        std::fs::remove_file(f).unwrap();
    }
    let req = cardiac::CardiacRequest {
        input: dir.path().to_path_buf(),
        model: id.clone(),
        output: None,
        spec: cardiac::CardiacSpec::shipped(),
    };
    match cardiac::run(&s, &req) {
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("missing") || m.contains("gap"), "{m}");
        }
        Ok(_) => panic!("a series with a missing slice was accepted"),
    }
    // A model that does not fit the pipeline.
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("resnet.onnx");
    medinfer_onnx::save_model(&medinfer_onnx::zoo::build("resnet18-ct").unwrap(), &other).unwrap();
    let s2 = load_on(BackendKind::Tract, &other, &SessionOptions::default()).unwrap();
    match cardiac::analyse(
        &ph.image,
        "x",
        &s2,
        ModelId::of(&other).unwrap(),
        &cardiac::CardiacSpec::shipped(),
    ) {
        Err(PipelineError::Model { reason, .. }) => assert!(reason.contains("96"), "{reason}"),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a classifier was accepted as a segmentation model"),
    }
}

#[test]
fn the_locator_finds_the_heart_and_components_are_cleaned() {
    for seed in [1, 6, 9] {
        let ph = phantom::cardiac(seed);
        let loc = cardiac::locate_heart(&ph.image);
        let n = ph.params.matrix as f64;
        let sp = ph.params.pixel_spacing_mm;
        let truth = [
            ph.params.heart_centre_mm[0] / sp + n / 2.0 - 0.5,
            ph.params.heart_centre_mm[1] / sp + n / 2.0 - 0.5,
        ];
        let err_mm = (loc.centre_px[0] - truth[0]).hypot(loc.centre_px[1] - truth[1]) * sp;
        // The locator aims at the moving region (LV + RV), so it lands between the two.
        assert!(err_mm < 40.0, "seed {seed}: {err_mm} mm off");
        assert!(loc.motion_contrast > cardiac::MIN_MOTION_CONTRAST);
    }
    // Two blobs of class 1: only the larger one stays.
    let mut f = vec![0u8; 10 * 10 * 2];
    for i in [11, 12, 13, 21, 22, 23, 111, 112] {
        f[i] = 1;
    }
    f[88] = 1;
    cardiac::keep_largest_component(&mut f, [10, 10, 2], 1);
    let kept: Vec<usize> = (0..f.len()).filter(|&i| f[i] == 1).collect();
    assert_eq!(kept, vec![11, 12, 13, 21, 22, 23, 111, 112]);
}

/// The fastest backend here for the end-to-end checks (ONNX Runtime or OpenVINO when
/// installed, tract otherwise).
fn fast_session() -> (Session, ModelId) {
    let kind = native().first().copied().unwrap_or(BackendKind::Tract);
    session(kind, "cardiac-unet.onnx")
}

/// Issue 26's must-show: one exam written the ways real exports come, each giving the clinical
/// numbers of the canonical exam within 1 EF point (and ED / ES where the storage puts them).
#[test]
fn real_export_layouts_give_the_numbers_of_the_canonical_exam() {
    let seed = 6;
    let dir = tempfile::tempdir().unwrap();
    let (s, id) = fast_session();
    let run = |name: &str, export: phantom::Export| {
        let d = dir.path().join(name);
        let ph = phantom::write_cardiac_with(&d, seed, phantom::Format::Dicom, &export).unwrap();
        let req = cardiac::CardiacRequest {
            input: d.join("dicom"),
            model: id.clone(),
            output: None,
            spec: cardiac::CardiacSpec::shipped(),
        };
        let r = cardiac::run(&s, &req).unwrap().report;
        eprintln!(
            "{name}: LV EF {:.2} (truth {:.2}), RV EF {:.2}, mass {:.1}, ED {} ES {}, view: {}; flags {:?}",
            r.lv.ef_pct, ph.truth.lv_ef_pct, r.rv.ef_pct, r.lv_mass_g, r.ed_phase, r.es_phase,
            r.view.note, r.flags
        );
        (r, ph)
    };
    let (canon, ph) = run("canonical", phantom::Export::default());
    assert!(canon.flags.is_empty(), "{:?}", canon.flags);
    assert!(canon.view.rotation_deg.abs() < 1e-6 && !canon.view.mirrored);
    let c = |conditions: phantom::Conditions| phantom::Export {
        conditions,
        ..Default::default()
    };
    let cases = [
        (
            "breath-holds",
            phantom::Export {
                breath_holds: true,
                ..Default::default()
            },
        ),
        (
            "series-per-slice",
            phantom::Export {
                series_per_slice: true,
                breath_holds: true,
                ..Default::default()
            },
        ),
        (
            "rotated",
            c(phantom::Conditions {
                rotation_deg: 63.0,
                ..Default::default()
            }),
        ),
        (
            "mirrored",
            c(phantom::Conditions {
                rotation_deg: -150.0,
                mirror: true,
                ..Default::default()
            }),
        ),
        (
            "apex-first",
            c(phantom::Conditions {
                apex_first: true,
                ..Default::default()
            }),
        ),
        (
            "ed-late-and-tilted",
            c(phantom::Conditions {
                ed_phase: 9,
                tilt: [0.1, -0.08],
                ..Default::default()
            }),
        ),
    ];
    for (name, export) in cases {
        let (r, truth) = run(name, export);
        assert!(
            (r.lv.ef_pct - canon.lv.ef_pct).abs() < 1.0,
            "{name}: LV EF {} vs canonical {}",
            r.lv.ef_pct,
            canon.lv.ef_pct
        );
        assert!((r.rv.ef_pct - canon.rv.ef_pct).abs() < 2.0, "{name}: RV EF");
        assert!(
            (r.lv_mass_g / canon.lv_mass_g - 1.0).abs() < 0.03,
            "{name}: mass"
        );
        // ED where the storage put it: the truth's ED phase, or its neighbour in the cycle
        // (late diastole and ED differ by a fraction of a ml, so the measured maximum can fall
        // one phase either side).
        let phases = ph.params.phases;
        let cyclic = |a: usize, b: usize| (a + phases - b) % phases;
        let near = |a: usize, b: usize| cyclic(a, b).min(cyclic(b, a)) <= 1;
        assert!(
            near(r.ed_phase, truth.truth.ed_phase),
            "{name}: ED phase {} vs truth {}",
            r.ed_phase,
            truth.truth.ed_phase
        );
        let shift = export.conditions.ed_phase;
        assert!(
            near(r.ed_phase, (canon.ed_phase + shift) % phases),
            "{name}: ED phase {} vs canonical {} + {shift}",
            r.ed_phase,
            canon.ed_phase
        );
        let rotated = export.conditions.rotation_deg != 0.0 || export.conditions.mirror;
        assert_eq!(r.view.mirrored, export.conditions.mirror, "{name}");
        if rotated {
            // The view undoes exactly the turn the export made.
            let d = (r.view.rotation_deg - export.conditions.rotation_deg).rem_euclid(360.0);
            assert!(d.min(360.0 - d) < 0.01, "{name}: {}", r.view.note);
        }
        if export.breath_holds {
            assert!(
                r.flags.iter().any(|f| f.contains("breath-holds")),
                "{name}: {:?}",
                r.flags
            );
        }
        if export.series_per_slice {
            assert!(
                r.flags
                    .iter()
                    .any(|f| f.contains(&format!("{} single-slice series", ph.params.slices))),
                "{name}: {:?}",
                r.flags
            );
        }
    }
}

/// `vol` without the `k` stored slices at the start (`from_start`) or the end, its affine
/// moved so the rest keep their world positions.
fn drop_slices(vol: &Volume, k: usize, from_start: bool) -> Volume {
    let [nx, ny, nz, nt] = vol.dims;
    let plane = nx * ny;
    let keep = if from_start { k..nz } else { 0..nz - k };
    let mut data = Vec::with_capacity(plane * keep.len() * nt);
    for t in 0..nt {
        let off = t * nz * plane;
        data.extend_from_slice(&vol.data[off + keep.start * plane..off + keep.end * plane]);
    }
    let mut out = Volume::new([nx, ny, keep.len(), nt], data, vol.spacing).unwrap();
    out.affine = vol.affine;
    for a in 0..3 {
        out.affine[a][3] += vol.affine[a][2] * keep.start as f64;
    }
    out.tags = vol.tags.clone();
    out
}

/// The base end: a stack planned from above the base (the phantom's, whose first anatomical
/// slice shows the atria) is not flagged; the same stack without its atrial slice starts inside
/// the ventricle and is, in either slice order, with the affine and without it.
#[test]
fn the_coverage_flag_finds_a_stack_that_starts_below_the_base() {
    let (s, id) = fast_session();
    let spec = cardiac::CardiacSpec::shipped();
    for apex_first in [false, true] {
        let cond = phantom::Conditions {
            apex_first,
            ..Default::default()
        };
        let full = phantom::cardiac_with(8, None, None, &cond);
        let nz = full.image.dims[2];
        let r = cardiac::analyse(&full.image, "full", &s, id.clone(), &spec)
            .unwrap()
            .report;
        assert!(
            !r.flags.iter().any(|f| f.contains("may not reach the base")),
            "apex first {apex_first}: {:?}",
            r.flags
        );
        // The atrial slice is stored first base-first, last apex-first.
        let cut = drop_slices(&full.image, 1, !apex_first);
        let base = if apex_first { nz - 2 } else { 0 };
        for affine in [true, false] {
            let mut v = cut.clone();
            if !affine {
                v.tags.set("geometry", "unknown");
            }
            let r = cardiac::analyse(&v, "cut", &s, id.clone(), &spec)
                .unwrap()
                .report;
            assert!(
                r.flags.iter().any(|f| f.contains("may not reach the base")
                    && f.contains(&format!("slice {base},"))),
                "apex first {apex_first}, affine {affine}: {:?}",
                r.flags
            );
            assert!(
                !r.flags
                    .iter()
                    .any(|f| f.contains("still large on the most apical")),
                "apex first {apex_first}, affine {affine}: {:?}",
                r.flags
            );
        }
    }
}

/// The coverage flag looks at the apical end, wherever the slice order puts it.
#[test]
fn the_coverage_flag_finds_the_apex_in_either_slice_order() {
    let (s, id) = fast_session();
    for apex_first in [false, true] {
        let cond = phantom::Conditions {
            apex_first,
            ..Default::default()
        };
        // Three slices from the base: the apex is cut off.
        let ph = phantom::cardiac_with(8, Some(3), None, &cond);
        let r = cardiac::analyse(
            &ph.image,
            "short",
            &s,
            id.clone(),
            &cardiac::CardiacSpec::shipped(),
        )
        .unwrap()
        .report;
        let want = if apex_first { "slice 0" } else { "slice 2" };
        assert!(
            r.flags
                .iter()
                .any(|f| f.contains("LV is still large") && f.contains(want)),
            "apex first {apex_first}: {:?}",
            r.flags
        );
        // The whole heart: no coverage flag in either order.
        let full = phantom::cardiac_with(8, None, None, &cond);
        let r = cardiac::analyse(
            &full.image,
            "full",
            &s,
            id.clone(),
            &cardiac::CardiacSpec::shipped(),
        )
        .unwrap()
        .report;
        assert!(
            !r.flags.iter().any(|f| f.contains("still large")),
            "apex first {apex_first}: {:?}",
            r.flags
        );
    }
}
