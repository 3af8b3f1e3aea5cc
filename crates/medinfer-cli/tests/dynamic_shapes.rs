//! A model with dynamic height and width (an opset-12 text-detector-shaped network) through
//! the command line as a user runs it: `quantize` on NPY samples of several sizes with the
//! IoU metric, `--input-shape`, and `bench` / `infer` at a chosen shape.

mod common;
use common::{assert_clean_failure, json, run, s, stderr};
use medinfer_core::Tensor;
use medinfer_onnx::fixtures::{detector, page_pixels, PAGE_SIZES};
use std::path::{Path, PathBuf};

/// `n` pages of mixed sizes as NPY files (3 x H x W each) in `dir`.
fn write_pages(dir: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let (h, w) = PAGE_SIZES[i % PAGE_SIZES.len()];
        let t = Tensor::from_f32(vec![3, h, w], page_pixels(h, w, seed + i as u64)).unwrap();
        medinfer_io::npy::write(&dir.join(format!("page{i:03}.npy")), &t).unwrap();
    }
}

fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model = dir.join("detector.onnx");
    medinfer_onnx::save_model(&detector(), &model).unwrap();
    let (calib, val) = (dir.join("calib"), dir.join("val"));
    write_pages(&calib, 12, 100);
    write_pages(&val, 8, 900);
    (model, calib, val)
}

#[test]
fn quantize_takes_samples_of_several_sizes_and_judges_by_iou() {
    let d = tempfile::tempdir().unwrap();
    let (model, calib, val) = setup(d.path());
    let q = d.path().join("int8.onnx");
    let o = run(&[
        "quantize",
        s(&model),
        "-o",
        s(&q),
        "--calib",
        s(&calib),
        "--validate",
        s(&val),
        "--metric",
        "iou:0.5",
        "--max-drop",
        "0.02",
        "--backend",
        "tract",
        "--json",
    ]);
    let v = json(&o);
    assert_eq!(v["opset_upgrade"]["from"], 12, "{v}");
    assert_eq!(v["calibration_samples"], 12);
    let acc = &v["accuracy"];
    assert_eq!(acc["metric"]["iou"], 0.5, "{acc}");
    assert!(acc["int8"].as_f64().unwrap() >= 0.98, "{acc}");
    assert_eq!(v["written"], true);
    let seven: Vec<&str> = v["report"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["seven_bit_weights"] == true)
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(seven, ["box", "c1"], "{v}");
    assert!(medinfer_onnx::analyze(&medinfer_onnx::load_model(&q).unwrap(), None).quantized);

    // --input-shape fixes the size: samples of other sizes are named and refused.
    let o = run(&[
        "quantize",
        s(&model),
        "-o",
        s(&d.path().join("x.onnx")),
        "--calib",
        s(&calib),
        "--input-shape",
        "x=1x3x64x64",
    ]);
    assert_clean_failure(&o, &["page000.npy", "3 x 64 x 64"]);
    for (bad, needle) in [
        ("y=1x3x64x64", "'x'"),
        ("1x3x64", "does not fit"),
        ("1x4x64x64", "does not fit"),
        ("x=1x3x0x64", "positive whole numbers"),
    ] {
        let o = run(&[
            "quantize",
            s(&model),
            "-o",
            s(&d.path().join("x.onnx")),
            "--calib",
            s(&calib),
            "--input-shape",
            bad,
        ]);
        assert_clean_failure(&o, &[needle]);
    }
}

#[test]
fn bench_and_infer_run_at_the_shape_given() {
    let d = tempfile::tempdir().unwrap();
    let (model, _, _) = setup(d.path());
    let base = ["bench", s(&model), "--runs", "2", "--warmup", "0"];
    // Without a shape: one line that says how to give it.
    let o = run(&[&base[..], &["--backend", "tract"]].concat());
    assert_clean_failure(&o, &["dynamic dimension", "--input-shape x="]);
    let o = run(&[&base[..], &["--input-shape", "x=1x3x48x80", "--json"]].concat());
    let v = json(&o);
    let rows = v.as_array().unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        assert_eq!(
            r["input_shapes"]["x"],
            serde_json::json!([1, 3, 48, 80]),
            "{r}"
        );
        assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    }
    // infer takes the shape from the input file and gives the map at that size.
    let x = d.path().join("x.npy");
    let t = Tensor::from_f32(vec![1, 3, 40, 56], page_pixels(40, 56, 7)).unwrap();
    medinfer_io::npy::write(&x, &t).unwrap();
    let out = d.path().join("out");
    let o = run(&[
        "infer",
        s(&model),
        "-i",
        s(&x),
        "-o",
        s(&out),
        "--backend",
        "tract",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let y = medinfer_io::npy::read(&out.join("y.npy")).unwrap();
    assert_eq!(y.shape(), &[1, 1, 40, 56]);
}
