//! Conformance: every zoo model on every available backend, same seeded input, outputs compared
//! with tract (pure Rust, always present) as the reference.
//!
//! Backends whose native library is missing are skipped with a note, unless
//! `MEDINFER_REQUIRE_BACKENDS` (comma-separated, e.g. `ort,openvino`) names them: CI sets it so
//! that a missing runtime fails the suite instead of silently shrinking it.

use medinfer_core::SeededRng;
use medinfer_core::Tensor;
use medinfer_engine::{
    load_on, BackendKind, EngineError, Mode, Precision, Session, SessionOptions,
};
use medinfer_onnx::{save_model, zoo};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Native backends to test here, failing if a required one is missing.
fn native_backends() -> Vec<BackendKind> {
    medinfer_engine::native_backends_for_tests().unwrap()
}

fn zoo_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under the target directory, emptied at the start of each run: one copy of the zoo
        // (~180 MB) however many times the suite runs, instead of one per process in /tmp.
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance-zoo");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn zoo_file(name: &str) -> PathBuf {
    let p = zoo_dir().join(format!("{name}.onnx"));
    if !p.exists() {
        save_model(&zoo::build(name).unwrap(), &p).unwrap();
    }
    p
}

fn seeded_input(s: &Session, seed: u64) -> Tensor {
    let spec = &s.inputs()[0];
    let n: usize = spec.shape.iter().product();
    let mut r = SeededRng::new(seed);
    Tensor::from_f32(
        spec.shape.clone(),
        (0..n).map(|_| r.normal() as f32).collect(),
    )
    .unwrap()
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let scale = v.iter().fold(0f64, |m, x| m.max(x.abs()));
    (mean, std, scale)
}

fn check_model(name: &str) {
    let path = zoo_file(name);
    let opts = SessionOptions::default();
    let reference = load_on(BackendKind::Tract, &path, &opts).unwrap();
    let x = seeded_input(&reference, 1);
    let want = reference.run(std::slice::from_ref(&x)).unwrap();
    assert_eq!(want.len(), 1);
    assert_eq!(
        want[0].shape(),
        reference.outputs()[0].shape.as_slice(),
        "{name}: output shape"
    );
    let w = want[0].to_f64_vec();
    let (_, std, scale) = stats(&w);
    // Seeded weights must keep activations finite and informative through the whole network.
    assert!(w.iter().all(|v| v.is_finite()), "{name}: non-finite output");
    assert!(
        std > 1e-3 && scale < 1e4,
        "{name}: degenerate output (std {std}, max {scale})"
    );
    let other = reference.run(&[seeded_input(&reference, 2)]).unwrap()[0].to_f64_vec();
    let diff = w
        .iter()
        .zip(&other)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    assert!(
        diff > 1e-3 * scale,
        "{name}: output does not depend on the input"
    );

    for k in native_backends() {
        let s = load_on(k, &path, &opts).unwrap_or_else(|e| panic!("{name} on {k}: {e}"));
        assert_eq!(
            s.info().effective_precision,
            "fp32",
            "{name} on {k}: {:?}",
            s.info()
        );
        let got = s.run(std::slice::from_ref(&x)).unwrap()[0].to_f64_vec();
        assert_eq!(got.len(), w.len());
        let err = w
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        eprintln!("{name}: {k} max |diff| {err:.3e} (output scale {scale:.3e})");
        assert!(
            err <= 1e-3 * scale,
            "{name} on {k}: max |diff| {err} > 1e-3 x scale {scale}"
        );
    }
}

#[test]
fn densenet121_cxr_agrees_across_backends() {
    check_model("densenet121-cxr");
}

#[test]
fn resnet50_fmri_agrees_across_backends() {
    check_model("resnet50-fmri");
}

#[test]
fn resnet18_ct_agrees_across_backends() {
    check_model("resnet18-ct");
}

#[test]
fn unet_cardiac_agrees_across_backends() {
    check_model("unet-cardiac");
}

#[test]
fn throughput_sessions_serve_concurrent_callers_identically() {
    let path = zoo_file("resnet18-ct");
    let mut kinds = vec![BackendKind::Tract];
    kinds.extend(native_backends());
    for k in kinds {
        let opts = SessionOptions {
            mode: Mode::Throughput,
            streams: Some(2),
            threads: Some(1),
            ..Default::default()
        };
        let s = load_on(k, &path, &opts).unwrap();
        assert_eq!((s.info().streams, s.info().threads), (2, 1));
        let x = seeded_input(&s, 3);
        let want = s.run(std::slice::from_ref(&x)).unwrap()[0].to_f64_vec();
        std::thread::scope(|scope| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..3)
                            .map(|_| s.run(std::slice::from_ref(&x)).unwrap()[0].to_f64_vec())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in hs {
                for got in h.join().unwrap() {
                    assert_eq!(got, want, "{k}: concurrent results differ");
                }
            }
        });
    }
}

#[test]
fn wrong_shape_and_dtype_are_clear_errors() {
    let path = zoo_file("resnet18-ct");
    let mut kinds = vec![BackendKind::Tract];
    kinds.extend(native_backends());
    for k in kinds {
        let s = load_on(k, &path, &SessionOptions::default()).unwrap();
        let bad = Tensor::from_f32(vec![1, 3, 128, 128], vec![0.0; 3 * 128 * 128]).unwrap();
        let e = s.run(&[bad]).unwrap_err().to_string();
        assert!(
            e.contains("input 'input'")
                && e.contains("[1, 1, 128, 128]")
                && e.contains("[1, 3, 128, 128]"),
            "{e}"
        );
        let ints = Tensor::zeros(medinfer_core::DType::I64, vec![1, 1, 128, 128]).unwrap();
        let e = s.run(&[ints]).unwrap_err().to_string();
        assert!(e.contains("must be f32") && e.contains("got i64"), "{e}");
        let e = s.run(&[]).unwrap_err().to_string();
        assert!(e.contains("takes 1 input(s)"), "{e}");
    }
}

#[test]
fn batch_option_fixes_the_dynamic_dimension() {
    let path = zoo_file("resnet18-ct");
    let opts = SessionOptions {
        batch: Some(3),
        ..Default::default()
    };
    let s = load_on(BackendKind::Tract, &path, &opts).unwrap();
    assert_eq!(s.inputs()[0].shape, vec![3, 1, 128, 128]);
    let out = s.run(&[seeded_input(&s, 4)]).unwrap();
    assert_eq!(out[0].shape(), &[3, 6]);
    // The fMRI model's nominal batch (8) comes from its metadata.
    let s = load_on(
        BackendKind::Tract,
        &zoo_file("resnet50-fmri"),
        &SessionOptions::default(),
    )
    .unwrap();
    assert_eq!(s.inputs()[0].shape, vec![8, 3, 45, 45]);
}

#[test]
fn unsupported_precisions_say_so() {
    let path = zoo_file("resnet18-ct");
    let opts = SessionOptions {
        precision: Precision::Bf16,
        ..Default::default()
    };
    match load_on(BackendKind::Tract, &path, &opts) {
        Err(EngineError::Unsupported { .. }) => {}
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn bf16_on_openvino_is_reported_and_close() {
    if !native_backends().contains(&BackendKind::OpenVino) {
        return;
    }
    let path = zoo_file("resnet18-ct");
    let opts = SessionOptions {
        precision: Precision::Bf16,
        ..Default::default()
    };
    let s = load_on(BackendKind::OpenVino, &path, &opts).unwrap();
    // OpenVINO computes in bf16 only where the CPU has BF16 instructions (its capabilities
    // list BF16); elsewhere (e.g. AVX2-only CPUs) it runs fp32, and medinfer must say so.
    let caps = s
        .info()
        .notes
        .iter()
        .find_map(|n| n.strip_prefix("CPU OPTIMIZATION_CAPABILITIES="))
        .expect("capabilities noted")
        .to_string();
    if caps.split_whitespace().any(|c| c == "BF16") {
        assert_eq!(s.info().effective_precision, "bf16", "{:?}", s.info());
    } else {
        assert_eq!(s.info().effective_precision, "fp32", "{:?}", s.info());
        assert!(
            s.info()
                .notes
                .iter()
                .any(|n| n.contains("no BF16 instructions")),
            "{:?}",
            s.info()
        );
    }
}

#[test]
fn non_onnx_and_truncated_files_are_rejected_before_any_engine() {
    let dir = zoo_dir();
    let junk = dir.join("junk.onnx");
    std::fs::write(&junk, b"this is not a model at all, just text\n").unwrap();
    let full = std::fs::read(zoo_file("resnet18-ct")).unwrap();
    let cut = dir.join("cut.onnx");
    std::fs::write(&cut, &full[..full.len() / 3]).unwrap();
    for p in [&junk, &cut] {
        for k in [BackendKind::Tract, BackendKind::Ort, BackendKind::OpenVino] {
            let e = load_on(k, p, &SessionOptions::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
    }
}
