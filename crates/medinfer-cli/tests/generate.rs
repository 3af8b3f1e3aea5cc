//! `medinfer generate` / `run report` / `bench-generate` from the command line, on the
//! token-parity fixture of crates/medinfer-generate (tokens made by `transformers`).
mod common;
use common::{assert_clean_failure, json, run};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../medinfer-generate/tests/fixtures/tiny-ved")
}

fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn reference_tokens(input: &str, setting: &str) -> Vec<u64> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
            .unwrap();
    let c = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["input"] == input && c["setting"] == setting)
        .unwrap();
    u64s(&c["tokens"])
}

#[test]
fn generate_and_run_report_give_transformers_tokens() {
    let backends = medinfer_engine::native_backends_for_tests().unwrap();
    let Some(b) = backends.first() else {
        return;
    };
    let dir = fixture();
    let d = dir.to_str().unwrap();
    let px = dir.join("pixels2.npy");
    let o = run(&[
        "generate",
        d,
        px.to_str().unwrap(),
        "--num-beams",
        "4",
        "--max-new-tokens",
        "24",
        "-b",
        &b.to_string(),
        "--json",
    ]);
    let j = json(&o);
    let got: Vec<u64> = u64s(&j["reports"][0]["tokens"]);
    assert_eq!(got, reference_tokens("pixels2.npy", "beam4"));
    assert_eq!(j["backend"], b.to_string());
    // `run report` is the same command; greedy from generation_config.json's defaults.
    let o = run(&["run", "report", d, px.to_str().unwrap(), "--json"]);
    let j = json(&o);
    let got: Vec<u64> = u64s(&j["reports"][0]["tokens"]);
    assert_eq!(got, reference_tokens("pixels2.npy", "greedy"));
    let t = &j["reports"][0]["timings"];
    assert!(t["first_token_ms"].as_f64().unwrap() > 0.0);
    assert!(t["total_ms"].as_f64().unwrap() >= t["first_token_ms"].as_f64().unwrap());
}

#[test]
fn bench_generate_reports_every_engine() {
    let backends = medinfer_engine::native_backends_for_tests().unwrap();
    if backends.is_empty() {
        return;
    }
    let names: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
    let list = names.join(",");
    let o = run(&[
        "bench-generate",
        fixture().to_str().unwrap(),
        "-B",
        &list,
        "--runs",
        "3",
        "--max-new-tokens",
        "16",
        "--ignore-eos",
        "--json",
    ]);
    let j = json(&o);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), backends.len());
    for r in rows {
        assert_eq!(r["new_tokens"], 16);
        assert_eq!(r["runs"], 3);
        assert!(r["total_ms"]["mean"].as_f64().unwrap() > 0.0);
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn generate_refuses_bad_requests_cleanly() {
    let dir = fixture();
    let d = dir.to_str().unwrap();
    let img = dir.join("image.png");
    let o = run(&["generate", d, img.to_str().unwrap(), "-b", "tract"]);
    assert_clean_failure(&o, &["tract cannot run a decoder"]);
    if medinfer_engine::native_backends_for_tests()
        .unwrap()
        .is_empty()
    {
        return;
    }
    let o = run(&[
        "generate",
        d,
        img.to_str().unwrap(),
        "--max-new-tokens",
        "80",
    ]);
    assert_clean_failure(&o, &["max_new_tokens 80", "at most 39"]);
    let o = run(&["generate", d, "/nonexistent.png"]);
    assert_clean_failure(&o, &["/nonexistent.png"]);
    let o = run(&["generate", "/nonexistent-model", img.to_str().unwrap()]);
    assert_clean_failure(&o, &["/nonexistent-model", "is not a folder"]);
}

#[test]
fn quantize_weights_writes_an_export_that_generates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8");
    let o = run(&[
        "quantize-weights",
        fixture().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--block",
        "16",
        "--json",
    ]);
    let j = json(&o);
    let files = j["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    for f in files {
        assert!(f[1]["replaced"].as_u64().unwrap() >= 5, "{f}");
    }
    let o = run(&[
        "quantize-weights",
        fixture().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &["not empty"]);
    // 4 bits: the report names them; a width other than 8 or 4 is refused.
    let q4 = dir.path().join("q4");
    let o = run(&[
        "quantize-weights",
        fixture().to_str().unwrap(),
        "-o",
        q4.to_str().unwrap(),
        "--bits",
        "4",
        "--block",
        "16",
        "--json",
    ]);
    let j4 = json(&o);
    for (f4, f8) in j4["files"].as_array().unwrap().iter().zip(files) {
        assert_eq!(f4[1]["bits"], 4, "{f4}");
        assert!(
            f4[1]["quantized_bytes"].as_u64().unwrap() < f8[1]["quantized_bytes"].as_u64().unwrap(),
            "{f4} vs {f8}"
        );
    }
    let o = run(&[
        "quantize-weights",
        fixture().to_str().unwrap(),
        "-o",
        dir.path().join("q3").to_str().unwrap(),
        "--bits",
        "3",
    ]);
    assert_clean_failure(&o, &["--bits 3", "8 or 4"]);
    let backends = medinfer_engine::native_backends_for_tests().unwrap();
    let Some(b) = backends.first() else {
        return;
    };
    let px = fixture().join("pixels1.npy");
    let o = run(&[
        "generate",
        out.to_str().unwrap(),
        px.to_str().unwrap(),
        "-b",
        &b.to_string(),
        "--max-new-tokens",
        "8",
        "--ignore-eos",
        "--json",
    ]);
    let j = json(&o);
    assert_eq!(j["reports"][0]["new_tokens"], 8);
}

/// `--encoder-int8`: the encoder's products calibrated on radiographs (their truth JSONs
/// beside them are passed over) in INT8, and its output close to the float encoder's on an
/// image it was not calibrated on; a folder without images is refused by name.
#[test]
fn quantize_weights_makes_an_int8_encoder_from_images() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("calib");
    let o = run(&[
        "phantom",
        "cxr",
        "-o",
        imgs.to_str().unwrap(),
        "--count",
        "8",
        "--first-seed",
        "70",
    ]);
    assert!(o.status.success());
    let out = dir.path().join("q");
    let o = run(&[
        "quantize-weights",
        fixture().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--block",
        "16",
        "--encoder-int8",
        imgs.to_str().unwrap(),
        "--encoder-samples",
        "6",
        "--json",
    ]);
    let j = json(&o);
    let e = &j["encoder_int8"];
    assert_eq!(e["written"], true, "{e}");
    assert_eq!(e["calibration_samples"], 6, "{e}");
    let layers = e["report"]["layers"].as_array().unwrap();
    let int8: Vec<&str> = layers
        .iter()
        .filter(|l| l["quantized"] == true)
        .map(|l| l["op"].as_str().unwrap_or(""))
        .collect();
    assert!(int8.len() >= 4, "{layers:?}");
    assert!(
        !int8.contains(&"Add") && !int8.contains(&"Conv"),
        "{int8:?}"
    );
    let enc = medinfer_onnx::load_model(&out.join("encoder_model.onnx")).unwrap();
    let q = enc
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("QuantizeLinear"))
        .count();
    assert!(q >= 4, "{q} QuantizeLinear nodes");
    let text = dir.path().join("notes");
    std::fs::create_dir(&text).unwrap();
    std::fs::write(text.join("readme.txt"), "not an image").unwrap();
    let o = run(&[
        "quantize-weights",
        fixture().to_str().unwrap(),
        "-o",
        dir.path().join("q2").to_str().unwrap(),
        "--encoder-int8",
        text.to_str().unwrap(),
    ]);
    assert_clean_failure(
        &o,
        &["--encoder-int8", "no usable image", "nothing written"],
    );
    assert!(!dir.path().join("q2").exists());
    for b in medinfer_engine::native_backends_for_tests().unwrap() {
        let px = medinfer_io::npy::read(&fixture().join("pixels1.npy")).unwrap();
        let states = |p: PathBuf| {
            let s = medinfer_engine::load_dynamic(b, &p, &Default::default()).unwrap();
            let name = s.inputs()[0].name.clone();
            let out = s
                .run(vec![(name, medinfer_engine::Value::from(px.clone()))])
                .unwrap();
            out[0].to_tensor().unwrap().as_f32().unwrap().to_vec()
        };
        let f = states(fixture().join("encoder_model.onnx"));
        let q = states(out.join("encoder_model.onnx"));
        let dot: f64 = f
            .iter()
            .zip(&q)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let cosine = dot / (norm(&f) * norm(&q));
        assert!(cosine > 0.98, "{b}: cosine {cosine}");
        assert!(
            cosine < 1.0 - 1e-7,
            "{b}: the INT8 encoder gives the float one's output"
        );
    }
}

#[test]
fn phantom_cxr_writes_radiographs_truth_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cxr");
    let o = run(&[
        "phantom",
        "cxr",
        "-o",
        d.to_str().unwrap(),
        "--count",
        "3",
        "--first-seed",
        "5",
        "--json",
    ]);
    let j = json(&o);
    let truths = j.as_array().unwrap();
    assert_eq!(truths.len(), 3);
    let lines = std::fs::read_to_string(d.join("reports.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    for (t, line) in truths.iter().zip(lines.lines()) {
        let seed = t["seed"].as_u64().unwrap();
        let img = &medinfer_io::read_images(d.join(format!("cxr-{seed}.png"))).unwrap()[0];
        assert_eq!((img.width, img.height, img.channels), (512, 512, 1));
        assert_eq!(img.value_range.1, 65535.0);
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["text"], t["text"]);
        assert_eq!(r["labels"], t["labels"]);
        let f: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join(format!("cxr-{seed}.json"))).unwrap())
                .unwrap();
        assert_eq!(f["text"], t["text"]);
    }
    let o = run(&["phantom", "cxr", "-o", d.to_str().unwrap(), "--count", "0"]);
    assert_clean_failure(&o, &["--count"]);
}

/// The shipped phantom report model on held-out phantoms: its texts state the drawn findings
/// (macro F1 0.933 on 200 studies, models/report/README.md; here 60, so the floors leave room
/// for the smaller sample), and its label head, scored as a CXR classifier on the same
/// phantoms, ranks every label's positives above its negatives.
#[test]
fn the_shipped_report_model_names_held_out_findings() {
    let backends = medinfer_engine::native_backends_for_tests().unwrap();
    let Some(b) = backends.first() else {
        return;
    };
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/report");
    let o = run(&[
        "phantom",
        "cxr-eval",
        "--model",
        model.to_str().unwrap(),
        "--count",
        "60",
        "-b",
        &b.to_string(),
        "--json",
    ]);
    let j = json(&o);
    assert!(j["macro_f1"].as_f64().unwrap() > 0.85, "{j}");
    for (l, v) in j["f1"].as_object().unwrap() {
        assert!(v.as_f64().unwrap() > 0.7, "{l}: {j}");
    }
    let c = &j["classifier"];
    assert!(c["macro_auc"].as_f64().unwrap() > 0.95, "{j}");
    for (l, v) in c["auc"].as_object().unwrap() {
        assert!(v.as_f64().unwrap() > AUC_FLOOR, "{l}: {j}");
    }
}

/// Each label's ROC AUC floor for the phantom classifier on seeds 100000-100059 (there 0.963
/// at the lowest; the card's 200 studies: 0.905 for pneumothorax, at least 0.968 for the rest).
const AUC_FLOOR: f64 = 0.85;

/// ROC AUC of scores against 0 / 1 truth (ties counted half); written out here so that the
/// test does not reuse the code it checks.
fn auc(pairs: &[(f64, bool)]) -> f64 {
    let pos: Vec<f64> = pairs.iter().filter(|p| p.1).map(|p| p.0).collect();
    let neg: Vec<f64> = pairs.iter().filter(|p| !p.1).map(|p| p.0).collect();
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

/// The report model's label head, shipped as a `run cxr` model (classifier.onnx + its config):
/// run as a user runs it, on held-out phantom radiographs written as 16-bit PNGs, on tract
/// (no native runtime needed), its scores separate the drawn findings.
#[test]
fn the_report_models_label_head_classifies_held_out_phantoms_with_run_cxr() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("held-out");
    let o = run(&[
        "phantom",
        "cxr",
        "-o",
        d.to_str().unwrap(),
        "--count",
        "80",
        "--first-seed",
        "200000",
        "--json",
    ]);
    let truths = json(&o);
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/report/classifier.onnx");
    let o = run(&[
        "run",
        "cxr",
        d.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "-b",
        "tract",
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let rows: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 80);
    let mut per_label: std::collections::BTreeMap<String, Vec<(f64, bool)>> = Default::default();
    for r in &rows {
        assert_eq!(r["status"], "ok", "{r}");
        let file = r["file"].as_str().unwrap();
        let seed: u64 = file
            .rsplit("cxr-")
            .next()
            .unwrap()
            .trim_end_matches(".png")
            .parse()
            .unwrap();
        let t = truths
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["seed"] == seed)
            .unwrap();
        for (l, s) in r["scores"].as_object().unwrap() {
            per_label
                .entry(l.clone())
                .or_default()
                .push((s.as_f64().unwrap(), t["labels"][l].as_bool().unwrap()));
        }
    }
    assert_eq!(per_label.len(), 8, "{per_label:?}");
    // These 80 phantoms give 0.735 on pneumothorax (17 positives, 7 of them scored low; 0.905
    // on the card's 200), 0.955-1.000 on the rest.
    let aucs: Vec<(String, f64)> = per_label.iter().map(|(l, p)| (l.clone(), auc(p))).collect();
    let mean = aucs.iter().map(|a| a.1).sum::<f64>() / aucs.len() as f64;
    assert!(mean > 0.9, "macro AUC {mean:.3}: {aucs:?}");
    for (l, a) in &aucs {
        assert!(
            *a > 0.7,
            "{l}: AUC {a:.3} over 80 held-out phantoms: {aucs:?}"
        );
    }
}
