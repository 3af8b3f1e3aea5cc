//! A model with two inputs (an image and a clinical vector) through the command line as a user
//! runs it: `quantize` on NPZ files and on folders of INPUT_NAME.npy, with accuracy control;
//! the INT8 model against FP32 with `infer` on every engine; `bench` with synthetic data per
//! input; and clear errors for samples that do not fit.

mod common;
use common::{assert_clean_failure, json, run, s, stderr};
use medinfer_core::Tensor;
use medinfer_onnx::fixtures::{two_input_classifier, two_input_sample, TWO_INPUTS};
use std::path::Path;

/// Samples `first..first + n` stacked: (n x 1 x 32 x 32, n x 3).
fn stacked(first: u64, n: usize) -> (Tensor, Tensor) {
    let (mut img, mut clin) = (Vec::new(), Vec::new());
    for k in 0..n as u64 {
        let (i, c) = two_input_sample(first + k);
        img.extend(i);
        clin.extend(c);
    }
    (
        Tensor::from_f32(vec![n, 1, 32, 32], img).unwrap(),
        Tensor::from_f32(vec![n, 3], clin).unwrap(),
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn a_two_input_model_is_quantized_run_and_benchmarked() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let model = root.join("two.onnx");
    medinfer_onnx::save_model(&two_input_classifier(), &model).unwrap();
    // Calibration: three NPZ files of 8 stacked samples, keyed by the exact input names or by
    // their file-name-safe forms ("clinical_0").
    let calib = root.join("calib");
    std::fs::create_dir(&calib).unwrap();
    for f in 0..3u64 {
        let (img, clin) = stacked(100 + 8 * f, 8);
        let key = if f == 0 { "clinical_0" } else { TWO_INPUTS[1] };
        let bytes = medinfer_io::npy::encode_npz(&[(TWO_INPUTS[0], &img), (key, &clin)]).unwrap();
        std::fs::write(calib.join(format!("part{f}.npz")), bytes).unwrap();
    }
    // Validation: one folder per sample holding image.npy and clinical_0.npy, one sample each
    // (no batch axis).
    let val = root.join("val");
    for k in 0..12u64 {
        let dir = val.join(format!("s{k:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (i, c) = two_input_sample(900 + k);
        medinfer_io::npy::write(
            &dir.join("image.npy"),
            &Tensor::from_f32(vec![1, 32, 32], i).unwrap(),
        )
        .unwrap();
        medinfer_io::npy::write(
            &dir.join("clinical_0.npy"),
            &Tensor::from_f32(vec![3], c).unwrap(),
        )
        .unwrap();
    }
    let q = root.join("int8.onnx");
    let v = json(&run(&[
        "quantize",
        s(&model),
        "-o",
        s(&q),
        "--calib",
        s(&calib),
        "--validate",
        s(&val),
        "--metric",
        "cosine",
        "--max-drop",
        "0.01",
        "--backend",
        "tract",
        "--json",
    ]));
    assert_eq!(v["calibration_samples"], 24, "{v}");
    assert_eq!(v["written"], true);
    assert!(v["accuracy"]["int8"].as_f64().unwrap() >= 0.99, "{v}");
    let layers = v["report"]["layers"].as_array().unwrap();
    let layer = |name: &str| {
        layers
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no layer {name}: {v}"))
    };
    // Both inputs were calibrated from the data: the image's range (about -0.3 to 1.3) and the
    // clinical vector's (0 to 9, the age in decades) set their first layers' input scales.
    for (name, lo, hi) in [("c1", 0.004, 0.009), ("clin", 0.025, 0.05)] {
        let l = layer(name);
        assert_eq!(l["quantized"], true, "{l}");
        let scale = l["input_scales"][0]["scale"].as_f64().unwrap();
        assert!((lo..hi).contains(&scale), "{name}: input scale {scale}");
    }
    assert!(medinfer_onnx::analyze(&medinfer_onnx::load_model(&q).unwrap(), None).quantized);

    // FP32 and INT8 agree through `infer` on every engine, both inputs given by name.
    let x = root.join("x");
    std::fs::create_dir(&x).unwrap();
    let (img, clin) = stacked(5000, 6);
    medinfer_io::npy::write(&x.join("img.npy"), &img).unwrap();
    medinfer_io::npy::write(&x.join("clin.npy"), &clin).unwrap();
    let img_arg = format!("{}={}", TWO_INPUTS[0], s(&x.join("img.npy")));
    let clin_arg = format!("{}={}", TWO_INPUTS[1], s(&x.join("clin.npy")));
    let mut backends = vec!["tract"];
    for k in medinfer_engine::native_backends_for_tests().unwrap() {
        backends.push(k.name());
    }
    let infer = |m: &Path, b: &str, tag: &str| -> Vec<f32> {
        let out = root.join(format!("out-{b}-{tag}"));
        let o = run(&[
            "infer",
            s(m),
            "-i",
            &img_arg,
            "-i",
            &clin_arg,
            "-b",
            b,
            "-o",
            s(&out),
        ]);
        assert!(o.status.success(), "{b}: {}", stderr(&o));
        let t = medinfer_io::npy::read(&out.join("head.npy")).unwrap();
        assert_eq!(t.shape(), &[6, 4]);
        t.as_f32().unwrap().to_vec()
    };
    let reference = infer(&model, "tract", "fp32");
    for b in &backends {
        let fp32 = infer(&model, b, "fp32");
        let int8 = infer(&q, b, "int8");
        let c = cosine(&fp32, &int8);
        assert!(c > 0.99, "{b}: INT8 vs FP32 cosine {c}");
        let max = fp32
            .iter()
            .zip(&reference)
            .map(|(a, r)| (a - r).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-4, "{b}: FP32 differs from tract by {max}");
    }

    // bench makes synthetic data for each input.
    let rows = json(&run(&[
        "bench",
        s(&q),
        "-b",
        "tract",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
    ]));
    assert!(
        rows[0]["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{rows}"
    );

    // What does not fit is named: a plain .npy for a two-input model, a pipeline's one-input
    // samples.
    let plain = root.join("plain");
    std::fs::create_dir(&plain).unwrap();
    medinfer_io::npy::write(&plain.join("a.npy"), &img).unwrap();
    let o = run(&[
        "quantize",
        s(&model),
        "-o",
        s(&root.join("no.onnx")),
        "--calib",
        s(&plain),
    ]);
    assert_clean_failure(&o, &["a.npy", "2 inputs", ".npz"]);
    let o = run(&[
        "quantize",
        s(&model),
        "-o",
        s(&root.join("no.onnx")),
        "--calib",
        s(&calib),
        "--pipeline",
        "cxr",
    ]);
    assert_clean_failure(&o, &["--pipeline cxr", "2 inputs"]);
}
