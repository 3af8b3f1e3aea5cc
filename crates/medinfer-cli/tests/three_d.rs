//! A channels-last 3-D U-Net through `quantize` as a user runs it: the portable target refuses
//! with the reason and the way out; `--target openvino` writes an INT8 model that names no
//! layer kept float.

use medinfer_core::Tensor;
use medinfer_onnx::fixtures::{head_volume, unet3d_channels_last};
use std::process::Command;

#[test]
fn a_3d_unet_is_refused_for_portable_and_quantized_for_openvino() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("unet3d.onnx");
    medinfer_onnx::save_model(&unet3d_channels_last(), &model).unwrap();
    let calib = d.path().join("calib");
    std::fs::create_dir(&calib).unwrap();
    for s in 0..8 {
        let t = Tensor::from_f32(vec![16, 16, 16, 1], head_volume(s)).unwrap();
        medinfer_io::npy::write(&calib.join(format!("v{s}.npy")), &t).unwrap();
    }
    let run = |target: &str| {
        Command::new(env!("CARGO_BIN_EXE_medinfer"))
            .args(["quantize", model.to_str().unwrap(), "-o"])
            .arg(d.path().join(format!("{target}.onnx")))
            .arg("--calib")
            .arg(&calib)
            .args(["--backend", "tract", "--target", target, "--json"])
            .output()
            .unwrap()
    };
    let o = run("portable");
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("nothing to quantize for --target portable")
            && e.contains("5 3-D convolution(s)")
            && e.contains("--target openvino"),
        "{e}"
    );
    assert!(!d.path().join("portable.onnx").exists());
    let o = run("openvino");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kept_float_for_target"], serde_json::json!([]), "{v}");
    assert_eq!(v["report"]["layers"].as_array().unwrap().len(), 6, "{v}");
    let q = medinfer_onnx::load_model(&d.path().join("openvino.onnx")).unwrap();
    assert!(medinfer_onnx::analyze(&q, None).quantized);
    assert_eq!(v["split_convs"], serde_json::json!([]));
    // --split-concat: the decoder Conv reading the skip Concat is split, and says so.
    let o = Command::new(env!("CARGO_BIN_EXE_medinfer"))
        .args(["quantize", model.to_str().unwrap(), "-o"])
        .arg(d.path().join("split.onnx"))
        .arg("--calib")
        .arg(&calib)
        .args(["--backend", "tract", "--target", "openvino"])
        .args(["--split-concat", "1", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["split_convs"][0]["conv"], "c3", "{v}");
    let q = medinfer_onnx::load_model(&d.path().join("split.onnx")).unwrap();
    let names: Vec<&str> = q
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter_map(|n| n.name.as_deref())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("c3.part1")), "{names:?}");
}
