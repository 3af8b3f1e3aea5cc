//! Zoo models: parameter counts (torchvision's counts for the same configurations), shapes,
//! determinism and structural validity.
use medinfer_onnx::{analyze, decode_model, encode_model, zoo, Dim};

fn count(name: &str) -> u64 {
    analyze(&zoo::build(name).unwrap(), None).trainable_parameters
}

#[test]
fn densenet121_cxr_has_torchvisions_parameter_count() {
    // torchvision densenet121(num_classes=18) with conv0 taking 1 channel.
    assert_eq!(count("densenet121-cxr"), 6_966_034);
}

#[test]
fn resnet50_fmri_has_torchvisions_parameter_count() {
    assert_eq!(count("resnet50-fmri"), 23_528_522);
    // The trained classifier's graph: three more outputs, each 2048 weights and a bias.
    assert_eq!(count("fmri-resnet50"), 23_528_522 + 3 * 2049);
}

#[test]
fn resnet18_ct_has_torchvisions_parameter_count() {
    assert_eq!(count("resnet18-ct"), 11_173_318);
}

#[test]
fn unet_cardiac_parameter_count_is_pinned() {
    // Independent count: enc 1-16-32-64-128, bottleneck 256, up-convs, decoders, 1x1 head.
    fn conv_bn(cin: u64, cout: u64, k: u64) -> u64 {
        cin * cout * k * k + 2 * cout
    }
    let mut total = 0;
    let mut c = 1;
    for out in [16, 32, 64, 128, 256] {
        total += conv_bn(c, out, 3) + conv_bn(out, out, 3);
        c = out;
    }
    for sc in [128, 64, 32, 16] {
        total += conv_bn(c, sc, 3) + conv_bn(2 * sc, sc, 3) + conv_bn(sc, sc, 3);
        c = sc;
    }
    total += 16 * 4 + 4;
    assert_eq!(count("unet-cardiac"), total);
}

#[test]
fn unet_convt_parameter_count_is_pinned() {
    // Independent count: the same encoder as unet-cardiac; each decoder level up-samples with a
    // 2x2 transposed convolution with bias that halves the channels, then two conv-BN-ReLU.
    fn conv_bn(cin: u64, cout: u64) -> u64 {
        cin * cout * 9 + 2 * cout
    }
    let mut total = 0;
    let mut c = 1;
    for out in [16, 32, 64, 128, 256] {
        total += conv_bn(c, out) + conv_bn(out, out);
        c = out;
    }
    for sc in [128, 64, 32, 16] {
        total += c * sc * 4 + sc + conv_bn(2 * sc, sc) + conv_bn(sc, sc);
        c = sc;
    }
    total += 16 * 4 + 4;
    assert_eq!(total, 1_942_340);
    assert_eq!(count("unet-convt"), total);
}

#[test]
fn zoo_models_are_byte_identical_across_builds_and_round_trip() {
    for e in zoo::ENTRIES {
        let a = encode_model(&zoo::build(e.name).unwrap());
        let b = encode_model(&zoo::build(e.name).unwrap());
        assert!(a == b, "{} is not deterministic", e.name);
        let decoded = decode_model(&a, e.name).unwrap();
        assert!(
            encode_model(&decoded) == a,
            "{} does not round-trip",
            e.name
        );
    }
}

#[test]
fn zoo_shapes_and_macs_are_inferred() {
    for e in zoo::ENTRIES {
        let info = analyze(&zoo::build(e.name).unwrap(), None);
        assert_eq!(info.inputs.len(), 1);
        assert_eq!(info.inputs[0].shape[0], Dim::Dynamic("batch".into()));
        assert!(
            info.shape_inference_unknown_ops.is_empty(),
            "{:?}",
            info.shape_inference_unknown_ops
        );
        let macs = info.macs.expect("all shapes known");
        assert!(macs > 10_000_000, "{}: {macs}", e.name);
        assert!(info.opset >= 13);
    }
    // DenseNet-121 at 224x224 with 3 channels is ~2.87 GMACs; with 1 channel slightly less.
    let d = analyze(&zoo::build("densenet121-cxr").unwrap(), None)
        .macs
        .unwrap();
    assert!((2_700_000_000..2_900_000_000).contains(&d), "{d}");
}

#[test]
fn corrupt_bytes_are_rejected_with_a_reason() {
    let bytes = encode_model(&zoo::build("resnet18-ct").unwrap());
    let err = decode_model(&bytes[..bytes.len() / 2], "half.onnx")
        .unwrap_err()
        .to_string();
    assert!(err.contains("half.onnx"), "{err}");
    let err = decode_model(b"\x89PNG\r\n\x1a\n not a model", "x.png")
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.png"), "{err}");
    let err = decode_model(b"", "empty.onnx").unwrap_err().to_string();
    assert!(err.contains("no graph"), "{err}");
}

#[test]
fn cardiac_unet_parameter_count_and_trained_weights() {
    // Independent count for 3 levels: enc 1-16-32-64, bottleneck 128, up-convs, decoders, head.
    fn conv_bn(cin: u64, cout: u64) -> u64 {
        cin * cout * 9 + 2 * cout
    }
    let mut total = 0;
    let mut c = 1;
    for out in [16, 32, 64, 128] {
        total += conv_bn(c, out) + conv_bn(out, out);
        c = out;
    }
    for sc in [64, 32, 16] {
        total += conv_bn(c, sc) + conv_bn(2 * sc, sc) + conv_bn(sc, sc);
        c = sc;
    }
    total += 16 * 4 + 4;
    assert_eq!(count("cardiac-unet"), total);
    assert_eq!(total, 536_372);

    // Trained weights replace the seeded ones by initializer name, exactly.
    let seeded = zoo::build("cardiac-unet").unwrap();
    let g = seeded.graph.as_ref().unwrap();
    let mut weights = std::collections::HashMap::new();
    for t in &g.initializer {
        let name = t.name.clone().unwrap();
        if name.ends_with(".scales") {
            continue; // Resize scales are structure, not parameters
        }
        let v = medinfer_onnx::tensor_to_f32(t).unwrap();
        weights.insert(name, v.iter().map(|x| x * 2.0).collect::<Vec<f32>>());
    }
    let trained = zoo::build_trained("cardiac-unet", weights.clone(), "test").unwrap();
    let tg = trained.graph.as_ref().unwrap();
    let head = |g: &medinfer_onnx::proto::GraphProto| {
        let t = g
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some("head.bias"))
            .unwrap();
        medinfer_onnx::tensor_to_f32(t).unwrap()
    };
    let (a, b) = (head(g), head(tg));
    assert!(a.iter().zip(&b).all(|(x, y)| (2.0 * x - y).abs() < 1e-6));
    // Missing, extra and wrongly sized parameters are named.
    let mut w = weights.clone();
    w.remove("head.bias");
    w.insert("nonsense".into(), vec![1.0]);
    w.insert("enc1.0.conv.weight".into(), vec![0.0; 3]);
    let err = zoo::build_trained("cardiac-unet", w, "test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("head.bias: missing"), "{err}");
    assert!(err.contains("nonsense: not a parameter"), "{err}");
    assert!(err.contains("enc1.0.conv.weight: 3 values"), "{err}");
}
