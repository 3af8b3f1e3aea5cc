//! A channels-last 3-D U-Net (as TensorFlow exports are) through optimize and quantize:
//! outputs unchanged by optimize on every engine, 3-D convolutions kept float for the portable
//! target (ONNX Runtime has no fast integer 3-D convolution) and quantized for OpenVINO, with
//! the INT8 mask agreeing with FP32 on every engine.

use medinfer_core::Tensor;
use medinfer_engine::calibrate as q;
use medinfer_engine::BackendKind;
use medinfer_onnx::fixtures::{head_volume, unet3d_channels_last, unet3d_transpose_wrapped};
use medinfer_onnx::qdq::{self as quant, QuantConfig, Target};
use std::collections::HashSet;

fn volumes(first: u64, n: u64) -> Vec<Tensor> {
    (first..first + n)
        .map(|s| Tensor::from_f32(vec![1, 16, 16, 16, 1], head_volume(s)).unwrap())
        .collect()
}

fn flat(v: &[Tensor]) -> Vec<f32> {
    v.iter()
        .flat_map(|t| t.as_f32().unwrap().to_vec())
        .collect()
}

/// IoU of the two outputs thresholded at 0.5, pooled over every volume.
fn iou(a: &[f32], b: &[f32]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        let (p, q) = (*x > 0.5, *y > 0.5);
        inter += usize::from(p && q);
        union += usize::from(p || q);
    }
    inter as f64 / union.max(1) as f64
}

#[test]
fn a_channels_last_3d_unet_is_optimized_and_quantized_per_target() {
    let model = unet3d_channels_last();
    let mut opt = model.clone();
    medinfer_onnx::optimize(&mut opt).unwrap();
    let val = volumes(500, 6);
    let mut backends = vec![BackendKind::Tract];
    backends.extend(medinfer_engine::native_backends_for_tests().unwrap());
    let reference = flat(&q::evaluate(&model, &val, BackendKind::Tract, &mut |_| {}).unwrap());
    let fg = reference.iter().filter(|&&p| p > 0.5).count();
    assert!(
        fg > reference.len() / 20 && fg < reference.len() * 19 / 20,
        "the seeded net's mask should be neither empty nor full: {fg} of {}",
        reference.len()
    );
    for &k in &backends {
        let a = flat(&q::evaluate(&model, &val, k, &mut |_| {}).unwrap());
        let b = flat(&q::evaluate(&opt, &val, k, &mut |_| {}).unwrap());
        let d = a
            .iter()
            .zip(&b)
            .chain(a.iter().zip(&reference))
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-4,
            "{k}: optimize or engine changed the output by {d}"
        );
    }

    // Portable: the 3-D convolutions stay float, named, and nothing else is left to quantize.
    let portable = quant::plan(&opt, &QuantConfig::default()).unwrap();
    assert!(portable.layers.is_empty(), "{:?}", portable.layers);
    assert_eq!(
        portable.kept_float_for_target,
        ["c1", "c2", "up", "c3", "head"],
        "{portable:?}"
    );
    assert!(portable
        .warnings
        .iter()
        .any(|w| w.contains("--target openvino")));

    // OpenVINO: every convolution in INT8, and the INT8 mask agrees with FP32 on every engine.
    let config = QuantConfig {
        target: Target::OpenVino,
        ..QuantConfig::default()
    };
    let plan = quant::plan(&opt, &config).unwrap();
    let names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
    for want in ["c1", "c2", "up", "c3", "head"] {
        assert!(names.contains(&want), "{want} not planned: {names:?}");
    }
    let calib = q::calibrate(
        &opt,
        &plan,
        config.method,
        &volumes(100, 16),
        BackendKind::Tract,
        &mut |_| {},
    )
    .unwrap();
    let (qm, report) = quant::quantize(&opt, &plan, &calib, &config, &HashSet::new()).unwrap();
    assert!(report.layers.iter().all(|l| l.quantized), "{report:?}");
    for &k in &backends {
        let int8 = flat(&q::evaluate(&qm, &val, k, &mut |_| {}).unwrap());
        let agree = iou(&reference, &int8);
        eprintln!(
            "{k}: INT8 mask IoU {agree:.4}, foreground {fg} of {}",
            reference.len()
        );
        assert!(agree >= 0.9, "{k}: INT8 mask IoU against FP32 {agree}");
    }
}

#[test]
fn transposes_around_every_3d_op_are_pushed_together_and_cancelled() {
    let wrapped = unet3d_transpose_wrapped();
    let count = |m: &medinfer_onnx::proto::ModelProto, op: &str| {
        m.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some(op))
            .count()
    };
    assert_eq!(count(&wrapped, "Transpose"), 12);
    let mut opt = wrapped.clone();
    let report = medinfer_onnx::optimize(&mut opt).unwrap();
    // One Transpose in (channels-first for the first Conv), one out (after the sigmoid).
    assert_eq!(count(&opt, "Transpose"), 2, "{report:?}");
    let val = volumes(700, 3);
    let compact = q::evaluate(
        &unet3d_channels_last(),
        &val,
        BackendKind::Tract,
        &mut |_| {},
    )
    .unwrap();
    let mut backends = vec![BackendKind::Tract];
    backends.extend(medinfer_engine::native_backends_for_tests().unwrap());
    for &k in &backends {
        for m in [&wrapped, &opt] {
            let out = q::evaluate(m, &val, k, &mut |_| {}).unwrap();
            let d = flat(&out)
                .iter()
                .zip(flat(&compact))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "{k}: differs from the compact layout by {d}");
        }
    }
    // And the quantizer then sees the same layers as in the compact layout.
    let config = QuantConfig {
        target: Target::OpenVino,
        ..QuantConfig::default()
    };
    let plan = quant::plan(&opt, &config).unwrap();
    assert_eq!(plan.layers.len(), 6, "{:?}", plan.layers);
}

#[test]
fn a_conv_reading_a_concat_of_unlike_ranges_is_split_exactly() {
    let mut model = unet3d_channels_last();
    medinfer_onnx::optimize(&mut model).unwrap();
    let config = QuantConfig {
        target: Target::OpenVino,
        ..QuantConfig::default()
    };
    let plan = quant::plan(&model, &config).unwrap();
    let calib_set = volumes(100, 8);
    let calib = q::calibrate(
        &model,
        &plan,
        config.method,
        &calib_set,
        BackendKind::Tract,
        &mut |_| {},
    )
    .unwrap();
    let shapes = [("x".to_string(), vec![1, 16, 16, 16, 1])].into();
    // A ratio no pair of ranges exceeds: nothing split.
    let (same, none) =
        quant::split_concat_convs(&model, &calib, config.method, &shapes, 1e9).unwrap();
    assert!(none.is_empty());
    assert_eq!(same, model);
    // Any difference at all: c3 (reading cat = [up, r1]) becomes two convolutions and an Add.
    let (split, done) =
        quant::split_concat_convs(&model, &calib, config.method, &shapes, 1.0).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].conv, "c3");
    assert_eq!(done[0].input_ranges.len(), 2);
    let ops: Vec<&str> = split
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter_map(|n| n.name.as_deref())
        .collect();
    for want in ["c3.part0", "c3.part1", "c3.sum1"] {
        assert!(ops.contains(&want), "{want}: {ops:?}");
    }
    assert!(!ops.contains(&"cat"), "{ops:?}");
    // Exact in float, on every engine.
    let val = volumes(900, 3);
    let mut backends = vec![BackendKind::Tract];
    backends.extend(medinfer_engine::native_backends_for_tests().unwrap());
    let reference = flat(&q::evaluate(&model, &val, BackendKind::Tract, &mut |_| {}).unwrap());
    for &k in &backends {
        let out = flat(&q::evaluate(&split, &val, k, &mut |_| {}).unwrap());
        let d = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "{k}: the split model differs by {d}");
    }
    // And it quantizes: every layer, the parts and their sum included, in INT8.
    let plan = quant::plan(&split, &config).unwrap();
    let calib = q::calibrate(
        &split,
        &plan,
        config.method,
        &calib_set,
        BackendKind::Tract,
        &mut |_| {},
    )
    .unwrap();
    let (qm, report) = quant::quantize(&split, &plan, &calib, &config, &HashSet::new()).unwrap();
    assert!(report.layers.iter().all(|l| l.quantized), "{report:?}");
    for &k in &backends {
        let int8 = flat(&q::evaluate(&qm, &val, k, &mut |_| {}).unwrap());
        let agree = iou(&reference, &int8);
        eprintln!("{k}: split INT8 mask IoU {agree:.4}");
        assert!(agree >= 0.9, "{k}: split INT8 mask IoU {agree}");
    }
}
