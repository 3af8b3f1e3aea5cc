//! Graph optimisation and INT8 quantization, checked through the engines: optimised models give
//! the original's outputs, quantized models run as INT8 on ONNX Runtime and OpenVINO close to
//! FP32, accuracy control reverts layers under a tight budget, bad inputs are clear errors.

use medinfer_core::Tensor;
use medinfer_engine::quantize::{self as q, AccuracyControl, Metric};
use medinfer_engine::{backend, load_on, BackendKind, SessionOptions};
use medinfer_onnx::quant::{self, CalibMethod, QuantConfig};
use medinfer_onnx::{optimize, save_model, zoo};
use std::collections::HashSet;

fn native_backends() -> Vec<BackendKind> {
    let required: Vec<BackendKind> = std::env::var("MEDINFER_REQUIRE_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| BackendKind::parse(s.trim()))
        .collect();
    let mut out = Vec::new();
    for k in [BackendKind::Ort, BackendKind::OpenVino] {
        let a = backend(k).availability();
        if a.available {
            out.push(k);
        } else if required.contains(&k) {
            panic!("{k} is required but unavailable: {:?}", a.reason);
        } else {
            eprintln!("note: skipping {k}: {}", a.reason.unwrap_or_default());
        }
    }
    out
}

fn samples(name: &str, n: usize, seed: u64) -> Vec<Tensor> {
    let e = zoo::entry(name).unwrap();
    let mut shape = e.input_shape.to_vec();
    shape[0] = 1;
    zoo::sample_inputs(name, n, seed)
        .unwrap()
        .into_iter()
        .map(|v| Tensor::from_f32(shape.clone(), v).unwrap())
        .collect()
}

fn run(model: &medinfer_onnx::proto::ModelProto, k: BackendKind, x: &[Tensor]) -> Vec<Tensor> {
    q::evaluate(model, x, k, &mut |_| {}).unwrap()
}

#[test]
fn optimized_zoo_models_give_the_original_outputs_with_fewer_nodes() {
    for e in zoo::ENTRIES {
        let original = zoo::build(e.name).unwrap();
        let mut opt = original.clone();
        let rep = optimize(&mut opt).unwrap();
        assert!(rep.nodes_after < rep.nodes_before, "{}: {rep:?}", e.name);
        let x = samples(e.name, 1, 7);
        let a = run(&original, BackendKind::Tract, &x);
        let b = run(&opt, BackendKind::Tract, &x);
        let (a, b) = (a[0].as_f32().unwrap(), b[0].as_f32().unwrap());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        eprintln!(
            "{}: {} -> {} nodes, max |diff| / max |out| = {:.2e}",
            e.name,
            rep.nodes_before,
            rep.nodes_after,
            worst / scale
        );
        assert!(
            worst <= 1e-5 * scale,
            "{}: max diff {worst} vs output scale {scale}",
            e.name
        );
    }
}

fn quantized_resnet18(
    config: &QuantConfig,
) -> (
    medinfer_onnx::proto::ModelProto,
    quant::Plan,
    quant::Calibration,
) {
    let mut m = zoo::build("resnet18-ct").unwrap();
    optimize(&mut m).unwrap();
    let plan = quant::plan(&m, config).unwrap();
    let calib = q::calibrate(
        &m,
        &plan,
        config.method,
        &samples("resnet18-ct", 24, 1),
        BackendKind::Tract,
        &mut |_| {},
    )
    .unwrap();
    (m, plan, calib)
}

#[test]
fn quantized_model_runs_int8_on_native_engines_close_to_fp32() {
    let config = QuantConfig::default();
    let (m, plan, calib) = quantized_resnet18(&config);
    assert_eq!(calib.samples, 24);
    let (qm, rep) = quant::quantize(&m, &plan, &calib, &config, &HashSet::new()).unwrap();
    assert!(rep.layers.iter().all(|l| l.quantized));
    assert!(rep.quantize_nodes > 20 && rep.dequantize_nodes > rep.quantize_nodes);
    // Every weight is stored as INT8 now, none as float.
    let g = qm.graph.as_ref().unwrap();
    let float_weights = g
        .initializer
        .iter()
        .filter(|t| {
            t.dims.len() == 4 && t.data_type == Some(medinfer_onnx::proto::data_type::FLOAT)
        })
        .count();
    assert_eq!(float_weights, 0);
    let x = samples("resnet18-ct", 8, 99);
    let dir = tempfile::tempdir().unwrap();
    let qpath = dir.path().join("int8.onnx");
    save_model(&qm, &qpath).unwrap();
    for k in native_backends() {
        let s = load_on(k, &qpath, &SessionOptions::default()).unwrap();
        assert!(
            s.info().effective_precision.contains("int8"),
            "{k}: {:?}",
            s.info()
        );
        let reference = run(&m, k, &x);
        let out = run(&qm, k, &x);
        let cos = q::score(Metric::Cosine, &reference, &out).unwrap();
        let nmse = q::score(Metric::Nmse, &reference, &out).unwrap();
        eprintln!("{k}: cosine {cos:.6}, 1-nmse {nmse:.6}");
        assert!(cos > 0.995, "{k}: cosine {cos}");
        assert!(nmse > 0.99, "{k}: 1-nmse {nmse}");
    }
}

#[test]
fn accuracy_control_reverts_layers_when_the_budget_is_tight() {
    let config = QuantConfig::default();
    let (m, plan, calib) = quantized_resnet18(&config);
    let control = AccuracyControl {
        samples: samples("resnet18-ct", 6, 5),
        metric: Metric::Nmse,
        max_drop: 1e-9,
    };
    let (qm, rep, c) = q::quantize_with_control(
        &m,
        &plan,
        &calib,
        &config,
        &control,
        BackendKind::Tract,
        &mut |s| eprintln!("{s}"),
    )
    .unwrap();
    assert!(!c.reverted.is_empty());
    assert!(c.int8 >= c.int8_all_layers, "{c:?}");
    let kept: Vec<&str> = rep
        .layers
        .iter()
        .filter(|l| !l.quantized)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(kept.len(), c.reverted.len());
    // With every layer reverted the model computes in FP32 and the budget is met.
    if c.reverted.len() == plan.layers.len() {
        assert!(c.within_budget);
    }
    // A generous budget reverts nothing.
    let loose = AccuracyControl {
        max_drop: 0.5,
        ..control
    };
    let (_, _, c2) = q::quantize_with_control(
        &m,
        &plan,
        &calib,
        &config,
        &loose,
        BackendKind::Tract,
        &mut |_| {},
    )
    .unwrap();
    assert!(c2.reverted.is_empty() && c2.within_budget);
    drop(qm);
}

#[test]
fn excluded_layers_and_methods() {
    let config = QuantConfig {
        method: CalibMethod::Percentile(99.99),
        exclude: vec!["Gemm".into(), "layer4\\..*".into()],
        bias_correction: false,
        ..Default::default()
    };
    let (m, plan, calib) = quantized_resnet18(&config);
    assert!(plan.excluded.iter().any(|n| n == "fc"));
    assert!(plan.excluded.iter().any(|n| n.starts_with("layer4.")));
    assert!(plan
        .layers
        .iter()
        .all(|l| l.op != "Gemm" && !l.name.starts_with("layer4.")));
    let (_, rep) = quant::quantize(&m, &plan, &calib, &config, &HashSet::new()).unwrap();
    assert!(rep.layers.iter().all(|l| l.bias_correction.is_none()));
    // A bad regular expression is a clear error.
    let bad = QuantConfig {
        exclude: vec!["layer(".into()],
        ..Default::default()
    };
    let e = quant::plan(&m, &bad).unwrap_err().to_string();
    assert!(e.contains("regular expression"), "{e}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let config = QuantConfig::default();
    let (m, plan, calib) = quantized_resnet18(&config);
    // An already quantized model.
    let (qm, _) = quant::quantize(&m, &plan, &calib, &config, &HashSet::new()).unwrap();
    let e = quant::plan(&qm, &config).unwrap_err().to_string();
    assert!(e.contains("already quantized"), "{e}");
    // No samples; samples of the wrong shape.
    let e = q::calibrate(
        &m,
        &plan,
        config.method,
        &[],
        BackendKind::Tract,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no calibration"), "{e}");
    let wrong = vec![Tensor::from_f32(vec![1, 1, 64, 64], vec![0.0; 64 * 64]).unwrap()];
    let e = q::calibrate(
        &m,
        &plan,
        config.method,
        &wrong,
        BackendKind::Tract,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("64"), "{e}");
    // Statistics missing for a planned tensor.
    let empty = quant::Calibration::default();
    let e = quant::quantize(&m, &plan, &empty, &config, &HashSet::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no calibration statistics"), "{e}");
}
