//! The fMRI pipeline on phantom cohorts with exact truth, and its refusals of bad input.

use medinfer_core::Volume;
use medinfer_engine::{BackendKind, Session};
use medinfer_io::nifti::{self, NiftiDtype};
use medinfer_pipelines::fmri::{self, eval, phantom::CohortSpec, Classifier, FmriRequest};
use medinfer_pipelines::models::{self, ModelId};
use std::path::{Path, PathBuf};

fn session(kind: BackendKind, model: &Path) -> Session {
    let opts = medinfer_engine::SessionOptions {
        mode: medinfer_engine::Mode::Throughput,
        batch: Some(8),
        ..Default::default()
    };
    medinfer_engine::load_on(kind, model, &opts).unwrap()
}

/// A held-out cohort (seed 11, never used elsewhere): with the number of sources given, every
/// network's best group map correlates >= 0.9 with its truth and subject maps >= 0.8 on
/// average; the automatic dimension lands near the 13 sources. The shipped classifier (FP32,
/// tract) labels >= 95 % of the group and subject components right, noise included; the
/// INT8 model on every native engine agrees with it on >= 99 % of them.
#[test]
fn group_ica_recovers_the_phantom_networks() {
    let dir = tempfile::tempdir().unwrap();
    let cohort = dir.path().join("cohort");
    let spec = CohortSpec {
        subjects: 8,
        volumes: 150,
        seed: 11,
        ..CohortSpec::default()
    };
    let files = eval::write_cohort(&cohort, &spec, &mut |_, _| {}).unwrap();
    let out = dir.path().join("out");
    let mut req = FmriRequest::new(files.clone(), out.clone());
    req.components = Some(13);
    let fp32 = models::shipped_fmri(false).unwrap();
    let s = session(BackendKind::Tract, &fp32);
    let classifier = Classifier {
        session: &s,
        model: ModelId::of(&fp32).unwrap(),
    };
    let rep = fmri::run(&req, Some(&classifier), &mut |_, _, _| {}).unwrap();
    assert_eq!(rep.components, 13);
    assert!(rep.ica_converged);
    let subj: Vec<PathBuf> = rep
        .subjects
        .iter()
        .map(|s| out.join(&s.id).join("maps.nii.gz"))
        .collect();
    let r = eval::recovery(&cohort, &out.join("group_maps.nii.gz"), &subj).unwrap();
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert!(r.min_network_group_r >= 0.9, "{r:?}");
    assert!(r.mean_network_subject_r.unwrap() >= 0.8, "{r:?}");
    // Every source has a component of its own.
    let mut comps: Vec<usize> = r.sources.iter().map(|s| s.component).collect();
    comps.sort_unstable();
    comps.dedup();
    assert_eq!(comps.len(), 13, "{r:?}");
    // The subjects' own dimension estimates (what the automatic choice takes the median of).
    for s in &rep.subjects {
        assert!(
            (11..=19).contains(&s.dimension),
            "{}: {}",
            s.id,
            s.dimension
        );
    }
    // Outputs in the input geometry.
    let g = nifti::read(out.join("group_maps.nii.gz")).unwrap();
    assert_eq!(g.dims, [40, 48, 38, 13]);
    assert_eq!(g.affine, fmri::phantom::affine());
    let tc = std::fs::read_to_string(out.join("sub-01/timecourses.tsv")).unwrap();
    assert_eq!(tc.lines().count(), 151);

    // Labels against the truth.
    let score = eval::label_score(&r, &rep);
    eprintln!("labels: {}", serde_json::to_string(&score).unwrap());
    assert_eq!(score.total + score.unmatched, 13 * 9);
    assert_eq!(score.unmatched, 0, "{score:?}");
    assert!(score.accuracy() >= 0.95, "{score:?}");
    let info = rep.classifier.as_ref().unwrap();
    assert_eq!(info.samples, 13 * 9);
    assert!(info.note.contains("phantom"), "{}", info.note);
    assert!(rep.group.iter().all(|g| g.probability.unwrap() > 0.0));
    // The mosaic: one row per group component, three 135-pixel tiles and the text.
    let png = std::fs::read(out.join("components.png")).unwrap();
    let dec = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let (w, h) = (dec.info().width, dec.info().height);
    // A header band (26 px) carries the caution that the classifier saw phantoms only.
    assert_eq!(h, 26 + 13 * (45 * 3 + 4), "{w}x{h}");

    // The INT8 model on the native engines agrees with FP32 on the same components.
    let samples: Vec<Vec<f32>> = fmri::slices::from_outputs(&out, &rep)
        .unwrap()
        .into_iter()
        .map(|s| s.x)
        .collect();
    let fp32_labels: Vec<&str> = rep
        .group
        .iter()
        .map(|g| g.label.unwrap())
        .chain(
            rep.subjects
                .iter()
                .flat_map(|s| s.components.iter().map(|c| c.label.unwrap())),
        )
        .collect();
    // Read back from the outputs, the samples give the labels the run gave.
    let again = fmri::classify(&classifier, &samples, &mut |_, _| {}).unwrap();
    assert!(again.iter().zip(&fp32_labels).all(|(a, b)| a.0 == *b));
    let int8 = models::shipped_fmri(true).unwrap();
    for kind in medinfer_engine::native_backends_for_tests().unwrap() {
        let s8 = session(kind, &int8);
        let c8 = Classifier {
            session: &s8,
            model: ModelId::of(&int8).unwrap(),
        };
        let l8 = fmri::classify(&c8, &samples, &mut |_, _| {}).unwrap();
        let same = l8
            .iter()
            .zip(&fp32_labels)
            .filter(|(a, b)| a.0 == **b)
            .count();
        assert!(
            same as f64 >= 0.99 * samples.len() as f64,
            "{kind}: INT8 agrees with FP32 on {same} of {}",
            samples.len()
        );
    }
}

/// A classifier that does not fit (wrong input, wrong number of classes) is refused with the
/// model's name and what does not fit, before anything is labelled.
#[test]
fn a_classifier_that_does_not_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let samples = vec![vec![0f32; fmri::slices::SAMPLE_LEN]; 3];
    for (zoo, want) in [
        ("resnet18-ct", "takes input"),
        ("resnet50-fmri", "gives 10 scores"),
    ] {
        let path = dir.path().join(format!("{zoo}.onnx"));
        medinfer_onnx::save_model(&medinfer_onnx::zoo::build(zoo).unwrap(), &path).unwrap();
        let s = session(BackendKind::Tract, &path);
        let c = Classifier {
            session: &s,
            model: ModelId::of(&path).unwrap(),
        };
        let e = fmri::classify(&c, &samples, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains(zoo) && e.contains(want), "{e}");
    }
}

fn write(path: &Path, dims: [usize; 4], tr_ms: f64, f: impl Fn(usize) -> f32) {
    let n: usize = dims.iter().product();
    let v = Volume::new(dims, (0..n).map(f).collect(), [3.0, 3.0, 3.0, tr_ms]).unwrap();
    nifti::write(path, &v, NiftiDtype::F32).unwrap();
}

fn noise(i: usize) -> f32 {
    // A brain-like block (bright centre) with deterministic fluctuation.
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    100.0 + (h % 1000) as f32 / 100.0
}

fn error_of(subjects: Vec<PathBuf>, out: &Path, mask: Option<PathBuf>) -> String {
    let mut req = FmriRequest::new(subjects, out.to_path_buf());
    req.mask = mask;
    match fmri::run(&req, None, &mut |_, _, _| {}) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_cohorts_are_refused_with_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    let good = d.join("good.nii");
    write(&good, [12, 12, 10, 60], 2000.0, noise);
    // 3D
    let flat = d.join("flat.nii");
    write(&flat, [12, 12, 10, 1], 0.0, noise);
    let e = error_of(vec![flat.clone()], &out, None);
    assert!(e.contains("flat.nii") && e.contains("3D"), "{e}");
    // too few volumes
    let short = d.join("short.nii");
    write(&short, [12, 12, 10, 20], 2000.0, noise);
    let e = error_of(vec![short], &out, None);
    assert!(e.contains("short.nii") && e.contains("20 volumes"), "{e}");
    // NaN
    let nan = d.join("nan.nii");
    write(&nan, [12, 12, 10, 60], 2000.0, |i| {
        if i == 5000 {
            f32::NAN
        } else {
            noise(i)
        }
    });
    let e = error_of(vec![good.clone(), nan], &out, None);
    assert!(e.contains("nan.nii") && e.contains("NaN"), "{e}");
    // grid mismatch
    let other = d.join("other.nii");
    write(&other, [12, 12, 11, 60], 2000.0, noise);
    let e = error_of(vec![good.clone(), other], &out, None);
    assert!(e.contains("other.nii") && e.contains("grid"), "{e}");
    // TR mismatch
    let slow = d.join("slow.nii");
    write(&slow, [12, 12, 10, 60], 3000.0, noise);
    let e = error_of(vec![good.clone(), slow], &out, None);
    assert!(e.contains("slow.nii") && e.contains("TR"), "{e}");
    // empty mask
    let empty = d.join("mask.nii");
    write(&empty, [12, 12, 10, 1], 0.0, |_| 0.0);
    let e = error_of(vec![good.clone()], &out, Some(empty.clone()));
    assert!(e.contains("mask.nii") && e.contains("empty"), "{e}");
    // a mask on another grid
    let wrong = d.join("mask2.nii");
    write(&wrong, [10, 12, 10, 1], 0.0, |_| 1.0);
    let e = error_of(vec![good.clone()], &out, Some(wrong));
    assert!(e.contains("mask2.nii") && e.contains("grid"), "{e}");
    // truncated file
    let trunc = d.join("trunc.nii");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let e = error_of(vec![trunc], &out, None);
    assert!(e.contains("trunc.nii") && e.contains("truncated"), "{e}");
    // no subjects
    let e = error_of(vec![], &out, None);
    assert!(e.contains("no subjects"), "{e}");
}
