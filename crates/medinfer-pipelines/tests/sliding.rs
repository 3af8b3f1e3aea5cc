//! medinfer's sliding-window inference against MONAI's (`monai.inferers.sliding_window_inference`,
//! MONAI 1.5.1, reference outputs made once by `tests/fixtures/sliding/make_reference.py` with
//! onnxruntime as MONAI's predictor): the same model, volumes and settings (constant and
//! gaussian blending, per-dimension overlap and sigma, batches of windows, a batch of two
//! images, volumes smaller than the ROI padded by replicate, reflect and constant), max abs
//! difference <= 1e-4 on every engine.

use medinfer_engine::{BackendKind, Mode, SessionOptions};
use medinfer_pipelines::sliding::{Blend, Padding, SlidingWindow};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sliding")
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
        x => vec![x.as_f64().unwrap()],
    }
}

/// `MEDINFER_WRITE_FIXTURES=1` writes the model file (before running make_reference.py).
#[test]
fn the_model_file_is_the_fixture() {
    if std::env::var_os("MEDINFER_WRITE_FIXTURES").is_some() {
        medinfer_onnx::save_model(
            &medinfer_onnx::fixtures::unet3d_channels_first(),
            &dir().join("model.onnx"),
        )
        .unwrap();
    }
    let committed = medinfer_onnx::load_model(&dir().join("model.onnx")).unwrap();
    assert_eq!(committed, medinfer_onnx::fixtures::unet3d_channels_first());
}

#[test]
fn sliding_window_matches_monai() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    let mut backends = vec![BackendKind::Tract];
    backends.extend(medinfer_engine::native_backends_for_tests().unwrap());
    let model = dir().join("model.onnx");
    let mut checked = 0;
    for (name, c) in cases["cases"].as_object().unwrap() {
        let arrays = medinfer_io::npy::read_npz(&dir().join(format!("{name}.npz"))).unwrap();
        let get = |k: &str| arrays.iter().find(|(n, _)| n == k).unwrap().1.clone();
        let (input, want) = (get("input"), get("output"));
        let sw = SlidingWindow {
            roi: vec![16, 16, 16],
            overlap: f64s(&c["overlap"]),
            blend: match c["mode"].as_str().unwrap() {
                "gaussian" => Blend::Gaussian,
                _ => Blend::Constant,
            },
            sigma_scale: c.get("sigma_scale").map_or(vec![0.125], f64s),
            padding: match c.get("padding_mode").and_then(|v| v.as_str()) {
                Some("replicate") => Padding::Replicate,
                Some("reflect") => Padding::Reflect,
                Some("circular") => Padding::Circular,
                _ => Padding::Constant(c.get("cval").map_or(0.0, |v| v.as_f64().unwrap() as f32)),
            },
            sw_batch: c["sw_batch_size"].as_u64().unwrap() as usize,
            streams: 1,
        };
        for (&k, streams) in backends.iter().zip([1, 2, 2]) {
            // One call at a time on tract; two streams of one throughput session on the
            // native engines (the same result whatever the streams).
            let sw = SlidingWindow {
                streams,
                ..sw.clone()
            };
            let opts = SessionOptions {
                batch: Some(sw.sw_batch),
                mode: Mode::Throughput,
                streams: Some(streams),
                threads: Some(1),
                ..Default::default()
            };
            let session = medinfer_engine::load_on(k, &model, &opts).unwrap();
            let got = sw
                .run(&input, &|t| Ok(session.run(&[t])?.swap_remove(0)))
                .unwrap();
            assert_eq!(got.shape(), want.shape(), "{name} on {k}");
            let d = got
                .as_f32()
                .unwrap()
                .iter()
                .zip(want.as_f32().unwrap())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!("{name:18} {k:9} {streams} stream(s) max |medinfer - MONAI| = {d:.2e}");
            assert!(d <= 1e-4, "{name} on {k}: max abs difference {d}");
            checked += 1;
        }
    }
    assert!(checked >= 6, "cases checked: {checked}");
}
