//! Bring-your-own-model: a model config beside the model (or a MONAI bundle's metadata.json)
//! drives `run cardiac`, and configs that contradict their model are refused before any
//! inference. The foreign model is built here from the shipped one: another input size and
//! pixel spacing (a Resize inside the graph), outputs permuted to ACDC's order (background,
//! RV, MYO, LV), and a Resize back to its own grid.

use medinfer_onnx::builder::{f32_tensor, f32_value_info, i64_tensor, DimSpec};
use medinfer_onnx::proto::{AttributeProto, NodeProto};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn medinfer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medinfer"))
}

fn shipped_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/cardiac/cardiac-unet.onnx")
}

fn str_attr(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(medinfer_onnx::proto::attribute_type::STRING),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(medinfer_onnx::proto::attribute_type::INT),
        i: Some(v),
        ..Default::default()
    }
}

fn resize(name: &str, x: &str, scales: &str) -> NodeProto {
    NodeProto {
        input: vec![x.into(), String::new(), scales.into()],
        output: vec![name.into()],
        name: Some(name.into()),
        op_type: Some("Resize".into()),
        attribute: vec![
            str_attr("mode", "linear"),
            str_attr("coordinate_transformation_mode", "half_pixel"),
        ],
        ..Default::default()
    }
}

/// The shipped model behind a `side x side` input (resized to 96 inside) whose outputs come
/// out in ACDC's order and on the `side x side` grid.
fn foreign_model(path: &Path, side: usize) {
    let mut m = medinfer_onnx::load_model(&shipped_model()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let (inner_in, inner_out) = (
        g.input[0].name.clone().unwrap(),
        g.output[0].name.clone().unwrap(),
    );
    let down = 96.0 / side as f32;
    let up = side as f32 / 96.0;
    g.initializer
        .push(f32_tensor("foreign.down", &[4], &[1.0, 1.0, down, down]));
    g.initializer
        .push(f32_tensor("foreign.up", &[4], &[1.0, 1.0, up, up]));
    g.initializer
        .push(i64_tensor("foreign.order", &[4], &[0, 3, 2, 1]));
    let mut nodes = vec![resize(&inner_in, "image", "foreign.down")];
    nodes.append(&mut g.node);
    nodes.push(NodeProto {
        input: vec![inner_out.clone(), "foreign.order".into()],
        output: vec!["acdc_order".into()],
        name: Some("acdc_order".into()),
        op_type: Some("Gather".into()),
        attribute: vec![int_attr("axis", 1)],
        ..Default::default()
    });
    nodes.push(resize("scores", "acdc_order", "foreign.up"));
    g.node = nodes;
    let batch = || DimSpec::Named("batch".into());
    g.input = vec![f32_value_info(
        "image",
        &[
            batch(),
            DimSpec::Fixed(1),
            DimSpec::Fixed(side),
            DimSpec::Fixed(side),
        ],
    )];
    g.output = vec![f32_value_info(
        "scores",
        &[
            batch(),
            DimSpec::Fixed(4),
            DimSpec::Fixed(side),
            DimSpec::Fixed(side),
        ],
    )];
    g.value_info.clear();
    medinfer_onnx::save_model(&m, path).unwrap();
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn run_cardiac(exam: &Path, extra: &[&str]) -> Output {
    medinfer()
        .args([
            "run",
            "cardiac",
            exam.to_str().unwrap(),
            "--json",
            "--backend",
            "tract",
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn phantom(dir: &Path, seed: u64) -> PathBuf {
    let out = dir.join(format!("exam{seed}"));
    let o = medinfer()
        .args(["phantom", "cardiac", "-o", out.to_str().unwrap()])
        .args(["--seed", &seed.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("cine.nii.gz")
}

/// A cardiac model with ACDC's label order (RV = 1, MYO = 2, LV = 3), a 128 x 128 input at
/// 1.2 mm (the same field of view as the shipped 96 x 96 at 1.6 mm) and a Resize inside, run
/// with the config beside it, gives the shipped model's clinical numbers; the same model
/// without a config (the pipeline's default: 96 x 96, LV = 1) is refused before inference.
#[test]
fn a_foreign_label_order_size_and_spacing_give_the_shipped_numbers() {
    let d = tempfile::tempdir().unwrap();
    let foreign = d.path().join("acdc_unet.onnx");
    foreign_model(&foreign, 128);
    let exams = [phantom(d.path(), 3), phantom(d.path(), 11)];
    // No config: the built-in one (96 x 96) contradicts the model's 128 x 128 input.
    let o = run_cardiac(&exams[0], &["--model", foreign.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("rows 96") && e.contains("128"), "{e}");
    std::fs::write(
        d.path().join("acdc_unet.json"),
        r#"{"pipeline": "cardiac",
            "input": {"size": [128, 128], "channels": 1, "spacing_mm": [1.2, 1.2]},
            "normalization": {"kind": "zscore"},
            "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
            "output": {"activation": "softmax"}}"#,
    )
    .unwrap();
    let shipped = shipped_model();
    for exam in &exams {
        let a = json_of(&run_cardiac(exam, &["--model", shipped.to_str().unwrap()]));
        let b = json_of(&run_cardiac(exam, &["--model", foreign.to_str().unwrap()]));
        assert_eq!(b["model_config"]["size"], serde_json::json!([128, 128]));
        assert_eq!(b["model_config"]["classes"], serde_json::json!([3, 2, 1]));
        let num =
            |r: &serde_json::Value, k: &[&str]| k.iter().fold(r, |v, k| &v[*k]).as_f64().unwrap();
        for (key, tol) in [
            (&["lv", "edv_ml"][..], 0.015),
            (&["lv", "esv_ml"][..], 0.02),
            (&["rv", "edv_ml"][..], 0.015),
            (&["rv", "esv_ml"][..], 0.02),
            (&["lv_mass_g"][..], 0.015),
        ] {
            let (x, y) = (num(&a, key), num(&b, key));
            eprintln!("{}: {key:?} shipped {x:.2}, foreign {y:.2}", exam.display());
            assert!(
                (x - y).abs() <= tol * x.abs().max(1.0),
                "{}: {key:?} shipped {x:.2}, foreign {y:.2}",
                exam.display()
            );
        }
        for key in [&["lv", "ef_pct"][..], &["rv", "ef_pct"][..]] {
            let (x, y) = (num(&a, key), num(&b, key));
            eprintln!("{}: {key:?} shipped {x:.2}, foreign {y:.2}", exam.display());
            assert!(
                (x - y).abs() <= 1.0,
                "{}: {key:?} shipped {x:.2}, foreign {y:.2} points",
                exam.display()
            );
        }
        // ED = the largest LV volume: two adjacent phases of a cine (the last and the first
        // are neighbours) can swap on a sub-percent difference.
        let nt = a["dims"][3].as_i64().unwrap();
        for k in ["ed_phase", "es_phase"] {
            let d = (a[k].as_i64().unwrap() - b[k].as_i64().unwrap()).rem_euclid(nt);
            assert!(d <= 1 || d == nt - 1, "{k}: {} vs {}", a[k], b[k]);
        }
    }
}

/// A MONAI bundle (models/model.onnx + configs/metadata.json) is read: channel_def gives the
/// label order and spatial_shape the size; the pixel spacing, which MONAI's metadata has no
/// field for, comes from a medinfer config given with --config, or is an error. Configs that
/// contradict the model are refused before inference, naming both sides.
#[test]
fn a_monai_bundle_is_read_and_contradicting_configs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let bundle = d.path().join("bundle");
    std::fs::create_dir_all(bundle.join("models")).unwrap();
    std::fs::create_dir_all(bundle.join("configs")).unwrap();
    let model = bundle.join("models/model.onnx");
    foreign_model(&model, 128);
    let meta = |labels: &str, channels: usize| {
        format!(
            r#"{{"version": "0.1.0", "network_data_format": {{
                "inputs": {{"image": {{"type": "image", "format": "magnitude", "num_channels": 1,
                    "spatial_shape": [128, 128], "dtype": "float32"}}}},
                "outputs": {{"pred": {{"type": "image", "format": "segmentation",
                    "num_channels": {channels}, "spatial_shape": [128, 128],
                    "channel_def": {labels}}}}}}}}}"#
        )
    };
    std::fs::write(
        bundle.join("configs/metadata.json"),
        meta(
            r#"{"0": "background", "1": "RV", "2": "MYO", "3": "LV"}"#,
            4,
        ),
    )
    .unwrap();
    let exam = phantom(d.path(), 5);
    // The bundle alone: its metadata has no pixel spacing, which decides every volume, so
    // medinfer refuses to guess it.
    let o = run_cardiac(&exam, &["--model", model.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("spacing_mm"), "{e}");
    // A small medinfer config completes it (labels and size still from the bundle).
    let spacing = d.path().join("spacing.json");
    std::fs::write(&spacing, r#"{"input": {"spacing_mm": [1.2, 1.2]}}"#).unwrap();
    let o = run_cardiac(
        &exam,
        &[
            "--model",
            model.to_str().unwrap(),
            "--config",
            spacing.to_str().unwrap(),
        ],
    );
    let r = json_of(&o);
    assert_eq!(r["model_config"]["classes"], serde_json::json!([3, 2, 1]));
    assert_eq!(r["model_config"]["size"], serde_json::json!([128, 128]));
    let source = r["model_config"]["config"].as_str().unwrap();
    assert!(
        source.contains("spacing.json") && source.ends_with("metadata.json"),
        "{source}"
    );
    let shipped = json_of(&run_cardiac(
        &exam,
        &["--model", shipped_model().to_str().unwrap()],
    ));
    let ef = |r: &serde_json::Value| r["lv"]["ef_pct"].as_f64().unwrap();
    assert!(
        (ef(&r) - ef(&shipped)).abs() <= 2.0,
        "{} vs {}",
        ef(&r),
        ef(&shipped)
    );
    // Contradictions, each refused before inference with both numbers named.
    let cases = [
        (
            meta(r#"{"0": "background", "1": "RV", "2": "MYO"}"#, 3),
            "3",
        ),
        (
            r#"{"input": {"size": [96, 96]}}"#.to_string(),
            "the config says rows 96",
        ),
        (r#"{"input": {"channels": 3}}"#.to_string(), "channels 3"),
        (
            r#"{"labels": ["background", "RV", "MYO", "LV", "extra"]}"#.to_string(),
            "5 labels",
        ),
        (
            r#"{"labels": ["background", "a", "b", "c"]}"#.to_string(),
            "LV cavity",
        ),
        (r#"{"pipeline": "ct"}"#.to_string(), "ct pipeline"),
        (
            r#"{"input": {"size": 3}}"#.to_string(),
            "not a medinfer model config",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let cfg = d.path().join(format!("bad{i}.json"));
        std::fs::write(&cfg, text).unwrap();
        let o = run_cardiac(
            &exam,
            &[
                "--model",
                model.to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
            ],
        );
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "case {i} accepted: {text}");
        assert!(e.contains(needle), "case {i}: '{needle}' not in: {e}");
        assert!(!e.contains("panicked"), "{e}");
        assert_eq!(
            e.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{e}"
        );
    }
}
