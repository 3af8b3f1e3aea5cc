//! Models with dynamic height and width (detectors, fully convolutional segmenters) through the
//! INT8 recipe: calibration and validation on samples of several sizes, the pooled-IoU metric,
//! and the exact opset 11/12 -> 13 upgrade that per-channel INT8 needs.

use medinfer_core::Tensor;
use medinfer_engine::calibrate::{self as q, Metric};
use medinfer_engine::BackendKind;
use medinfer_onnx::builder::{f32_value_info, Attr, GraphBuilder};
use medinfer_onnx::fixtures::{detector, dyn_dims, page_pixels, PAGE_SIZES};
use medinfer_onnx::proto::ModelProto;
use medinfer_onnx::qdq::{self as quant, QuantConfig};
use medinfer_onnx::{opset, optimize};
use std::collections::HashSet;

fn backends() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Tract];
    v.extend(medinfer_engine::native_backends_for_tests().unwrap());
    v
}

fn page(h: usize, w: usize, seed: u64) -> Tensor {
    Tensor::from_f32(vec![1, 3, h, w], page_pixels(h, w, seed)).unwrap()
}

fn pages(n: usize, seed: u64) -> Vec<Tensor> {
    (0..n)
        .map(|i| {
            let (h, w) = PAGE_SIZES[i % PAGE_SIZES.len()];
            page(h, w, seed + i as u64)
        })
        .collect()
}

#[test]
fn calibration_and_validation_take_samples_of_several_sizes() {
    let mut m = detector();
    let up = opset::upgrade_to_13(&mut m)
        .unwrap()
        .expect("opset 12 is upgraded");
    assert_eq!(up.from, 12);
    optimize(&mut m).unwrap();
    let config = QuantConfig::default();
    let plan = quant::plan(&m, &config).unwrap();
    let calib_set = pages(16, 100);
    let val = pages(12, 900);
    for k in backends().into_iter().rev() {
        let calib = q::calibrate(&m, &plan, config.method, &calib_set, k, &mut |_| {}).unwrap();
        assert_eq!(calib.samples, calib_set.len());
        let (qm, rep) = quant::quantize(&m, &plan, &calib, &config, &HashSet::new()).unwrap();
        assert!(rep.layers.iter().all(|l| l.quantized), "{k}: {rep:?}");
        // The overflow fix (default: first layers) gives 7-bit weights to the two convolutions
        // that read the image, 8-bit to the rest.
        let seven: Vec<&str> = rep
            .layers
            .iter()
            .filter(|l| l.seven_bit_weights)
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(seven, ["box", "c1"], "{k}");
        let fp = q::evaluate(&m, &val, k, &mut |_| {}).unwrap();
        let i8 = q::evaluate(&qm, &val, k, &mut |_| {}).unwrap();
        // Each output has its own sample's height and width, in the samples' order.
        for ((x, a), b) in val.iter().zip(&fp).zip(&i8) {
            assert_eq!(a.shape(), &[1, 1, x.shape()[2], x.shape()[3]], "{k}");
            assert_eq!(a.shape(), b.shape(), "{k}");
        }
        let all: Vec<f32> = fp
            .iter()
            .flat_map(|t| t.as_f32().unwrap().to_vec())
            .collect();
        let fg = all.iter().filter(|&&p| p > 0.5).count() as f64 / all.len() as f64;
        let iou = q::score(Metric::Iou(0.5), &fp, &i8).unwrap();
        eprintln!(
            "{k}: pooled IoU@0.5 INT8 vs FP32 {iou:.4} ({:.1} % of pixels above 0.5), cosine {:.6}",
            100.0 * fg,
            q::score(Metric::Cosine, &fp, &i8).unwrap()
        );
        assert!((0.15..0.6).contains(&fg), "{k}: degenerate map ({fg})");
        assert!(iou > 0.97, "{k}: IoU {iou}");
        // And the metric is not blind: the maps with their top halves erased agree much less.
        let erased: Vec<Tensor> = fp
            .iter()
            .map(|t| {
                let mut v = t.as_f32().unwrap().to_vec();
                let half = v.len() / 2;
                v[..half].iter_mut().for_each(|p| *p = 0.0);
                Tensor::from_f32(t.shape().to_vec(), v).unwrap()
            })
            .collect();
        let part = q::score(Metric::Iou(0.5), &fp, &erased).unwrap();
        assert!(part < 0.7, "{k}: half-erased maps score {part}");
        // Without the fix: on CPUs without VNNI, ONNX Runtime and OpenVINO saturate on the
        // bright pixels times the box filter (measured on AVX2: IoU 0.31 and 0.94).
        let none = QuantConfig {
            overflow_fix: quant::OverflowFix::None,
            ..config.clone()
        };
        let (qn, _) = quant::quantize(&m, &plan, &calib, &none, &HashSet::new()).unwrap();
        let i8n = q::evaluate(&qn, &val, k, &mut |_| {}).unwrap();
        eprintln!(
            "{k}: without the overflow fix IoU {:.4} (this CPU has VNNI: {})",
            q::score(Metric::Iou(0.5), &fp, &i8n).unwrap(),
            quant::cpu_has_vnni()
        );
    }
}

#[test]
fn iou_metric_parses_and_pools_over_samples() {
    assert_eq!(Metric::parse("iou"), Some(Metric::Iou(0.5)));
    assert_eq!(Metric::parse("IoU:0.3"), Some(Metric::Iou(0.3)));
    assert_eq!(Metric::parse("iou:x"), None);
    assert_eq!(Metric::parse("iouu"), None);
    let t = |v: Vec<f32>| Tensor::from_f32(vec![1, v.len()], v).unwrap();
    // Sample 1: 2 of 3 positives shared; sample 2 (another size): 1 shared, 1 only in test.
    let r = [t(vec![0.9, 0.8, 0.7, 0.1]), t(vec![0.9, 0.1])];
    let s = [t(vec![0.9, 0.8, 0.1, 0.1]), t(vec![0.9, 0.6])];
    let iou = q::score(Metric::Iou(0.5), &r, &s).unwrap();
    assert!((iou - 3.0 / 5.0).abs() < 1e-12, "{iou}");
    // Nothing above the threshold anywhere: full agreement.
    assert_eq!(q::score(Metric::Iou(0.95), &r, &s).unwrap(), 1.0);
}

/// Opset 11 model whose operators changed meaning or signature at 13: Softmax over axis 1 of a
/// 4-D tensor (old meaning: over everything after axis 1), Split with a `split` attribute,
/// ReduceSum / Unsqueeze with `axes` attributes.
fn old_opset_model() -> ModelProto {
    let mut g = GraphBuilder::new(9);
    let c = g.conv("c", "x", 2, 4, 3, 1, 1, true);
    let sm = g.node("Softmax", "sm", &[&c], &[("axis", Attr::Int(1))]);
    g.node_outputs(
        "Split",
        "split",
        &[&sm],
        &["s0", "s1"],
        &[("split", Attr::Ints(vec![1, 3])), ("axis", Attr::Int(1))],
    );
    let rs = g.node(
        "ReduceSum",
        "rs",
        &["s1"],
        &[("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))],
    );
    let un = g.node("Unsqueeze", "un", &[&rs], &[("axes", Attr::Ints(vec![1]))]);
    let lsm = g.node("LogSoftmax", "lsm", &["s0"], &[("axis", Attr::Int(-1))]);
    g.node("Concat", "y", &[&un, &lsm], &[("axis", Attr::Int(1))]);
    let mut m = g.finish(
        "old",
        vec![f32_value_info("x", &dyn_dims(2))],
        vec![f32_value_info("y", &dyn_dims(2))],
        &[],
    );
    m.opset_import[0].version = Some(11);
    m
}

#[test]
fn opset_upgrade_to_13_gives_the_same_outputs() {
    let old = old_opset_model();
    let mut new = old.clone();
    let up = opset::upgrade_to_13(&mut new).unwrap().unwrap();
    assert_eq!(up.from, 11);
    let ops: Vec<&str> = up.rewritten.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        ops,
        ["ReduceSum", "Softmax", "Split", "Unsqueeze"],
        "{up:?}"
    );
    let x = vec![page(12, 20, 3), page(16, 8, 4)]
        .into_iter()
        .map(|t| {
            // two channels of the page
            let v = t.as_f32().unwrap()[..2 * t.shape()[2] * t.shape()[3]].to_vec();
            Tensor::from_f32(vec![1, 2, t.shape()[2], t.shape()[3]], v).unwrap()
        })
        .collect::<Vec<_>>();
    let diff = |a: &[Tensor], b: &[Tensor]| {
        a.iter().zip(b).fold(0f32, |m, (a, b)| {
            a.as_f32()
                .unwrap()
                .iter()
                .zip(b.as_f32().unwrap())
                .fold(m, |m, (p, q)| m.max((p - q).abs()))
        })
    };
    // The opset-11 model on tract (and ONNX Runtime) is the old meaning; the upgraded model
    // must give it on every engine. OpenVINO 2026.4 runs the opset-11 Softmax over one axis
    // (measured: max diff 0.97), so on OpenVINO the upgrade also repairs the model.
    let reference = q::evaluate(&old, &x, BackendKind::Tract, &mut |_| {}).unwrap();
    for k in backends() {
        let a = q::evaluate(&old, &x, k, &mut |_| {}).unwrap();
        let b = q::evaluate(&new, &x, k, &mut |_| {}).unwrap();
        for (r, b) in reference.iter().zip(&b) {
            assert_eq!(r.shape(), b.shape(), "{k}");
        }
        let (da, db) = (diff(&a, &reference), diff(&b, &reference));
        eprintln!(
            "{k}: opset 11 model {da:.2e}, upgraded model {db:.2e} from tract's opset-11 outputs"
        );
        assert!(db < 1e-5, "{k}: upgraded model differs by {db}");
        if k != BackendKind::OpenVino {
            assert!(da < 1e-5, "{k}: opset-11 model differs by {da}");
        }
    }
}
