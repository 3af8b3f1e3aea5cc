//! Token-exact parity with `transformers`' `model.generate` on a random VisionEncoderDecoder
//! (ViT + GPT-2) exported by optimum, on every native engine and both decoder layouts, and the
//! clear errors for broken exports. The fixture and its reference tokens are made by
//! training/report/tiny_fixture.py with torch and transformers (versions in reference.json).
use medinfer_engine::{native_backends_for_tests, BackendKind, SessionOptions};
use medinfer_generate::decode::EarlyStopping;
use medinfer_generate::model::DecoderChoice;
use medinfer_generate::{GenerateError, Generator, LoadOptions, Overrides};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-ved")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
        .unwrap()
}

/// Token ids from a JSON array.
fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn opts(backend: BackendKind, decoder: DecoderChoice) -> LoadOptions {
    LoadOptions {
        backend,
        session: SessionOptions {
            threads: Some(1),
            ..Default::default()
        },
        decoder,
        hoist: true,
        encoder: None,
    }
}

fn overrides(kw: &Value) -> Overrides {
    Overrides {
        max_new_tokens: kw["max_new_tokens"].as_u64().map(|v| v as usize),
        num_beams: kw["num_beams"].as_u64().map(|v| v as usize),
        length_penalty: kw["length_penalty"].as_f64().map(|v| v as f32),
        repetition_penalty: kw["repetition_penalty"].as_f64().map(|v| v as f32),
        no_repeat_ngram_size: kw["no_repeat_ngram_size"].as_u64().map(|v| v as usize),
        early_stopping: Some(EarlyStopping::False),
        ..Default::default()
    }
}

#[test]
fn greedy_and_beam_tokens_match_transformers_generate() {
    let r = reference();
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "reference has {} cases", cases.len());
    let mut compared = 0;
    for backend in native_backends_for_tests().unwrap() {
        for (choice, hoist) in [
            (DecoderChoice::Merged, false),
            (DecoderChoice::Split, false),
            (DecoderChoice::Split, true),
        ] {
            let g = Generator::load(
                &fixture(),
                &LoadOptions {
                    hoist,
                    ..opts(backend, choice)
                },
            )
            .unwrap();
            // GPT-2's cross-attention keys and values (and their shape arithmetic) leave the
            // per-token decoder.
            assert_eq!(g.hoisted_nodes() > 0, hoist, "{backend} {choice:?}");
            for c in cases {
                let input = c["input"].as_str().unwrap();
                let npy = if input == "image.png" {
                    "image_pixels.npy"
                } else {
                    input
                };
                let px = medinfer_io::npy::read(&fixture().join(npy)).unwrap();
                let got = g
                    .generate_pixels(&px, &overrides(&c["generate_kwargs"]))
                    .unwrap();
                let want: Vec<u32> = ids(&c["tokens"]);
                assert_eq!(
                    got.tokens, want,
                    "{backend} {choice:?} hoist {hoist} {input} {}",
                    c["setting"]
                );
                assert_eq!(got.text, c["text"].as_str().unwrap(), "{backend} {input}");
                assert_eq!(
                    got.stopped_by == "eos",
                    c["ends_with_eos"].as_bool().unwrap(),
                    "{backend} {input} {}",
                    c["setting"]
                );
                compared += 1;
            }
        }
    }
    eprintln!("{compared} generations compared token for token");
}

#[test]
fn the_tokenizer_encodes_as_transformers_does() {
    let g = match native_backends_for_tests().unwrap().first() {
        Some(&b) => Generator::load(&fixture(), &opts(b, DecoderChoice::Auto)).unwrap(),
        None => return,
    };
    for c in reference()["tokenizer_checks"].as_array().unwrap() {
        let enc = g
            .tokenizer()
            .encode(c["text"].as_str().unwrap(), false)
            .unwrap();
        let want: Vec<u32> = ids(&c["ids"]);
        assert_eq!(enc.get_ids(), want.as_slice());
        assert_eq!(
            g.tokenizer().decode(&want, true).unwrap(),
            c["text"].as_str().unwrap()
        );
    }
}

#[test]
fn the_image_processor_matches_vit_image_processor() {
    let Some(&b) = native_backends_for_tests().unwrap().first() else {
        return;
    };
    let g = Generator::load(&fixture(), &opts(b, DecoderChoice::Auto)).unwrap();
    let img = &medinfer_io::read_images(fixture().join("image.png")).unwrap()[0];
    let ours = g.processor().pixels(img).unwrap();
    let theirs = medinfer_io::npy::read(&fixture().join("image_pixels.npy")).unwrap();
    assert_eq!(ours.shape(), theirs.shape());
    let max = ours
        .as_f32()
        .unwrap()
        .iter()
        .zip(theirs.as_f32().unwrap())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // Pillow rounds its resized 8-bit image to integers (half a level = 0.004 after 1/255 and
    // std 0.5); medinfer resizes in float.
    assert!(max <= 2.0 * 1.0 / 255.0 / 0.5 + 1e-6, "max diff {max}");
    eprintln!("pixel values: max |medinfer - ViTImageProcessor| = {max}");
}

/// A copy of the fixture in a temp folder, `edit` applied.
fn broken(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    edit(dir.path());
    dir
}

fn load_err(dir: &Path) -> String {
    let b = native_backends_for_tests()
        .unwrap()
        .first()
        .copied()
        .unwrap_or(BackendKind::Ort);
    match Generator::load(dir, &opts(b, DecoderChoice::Auto)) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_exports_are_refused_by_name() {
    if native_backends_for_tests().unwrap().is_empty() {
        return;
    }
    // No tokenizer.
    let d = broken(|p| std::fs::remove_file(p.join("tokenizer.json")).unwrap());
    let e = load_err(d.path());
    assert!(e.contains("has no tokenizer.json"), "{e}");
    // An encoder from another model.
    let d = broken(|p| {
        std::fs::copy(
            p.join("other_encoder_hidden48.onnx"),
            p.join("encoder_model.onnx"),
        )
        .unwrap();
    });
    let e = load_err(d.path());
    assert!(
        e.contains("hidden states of size 48") && e.contains("size 32"),
        "{e}"
    );
    // A cache layout medinfer does not know: past inputs renamed.
    let d = broken(|p| {
        for f in ["decoder_model_merged.onnx", "decoder_with_past_model.onnx"] {
            let mut m = medinfer_onnx::load_model(&p.join(f)).unwrap();
            let g = m.graph.as_mut().unwrap();
            let rename = |s: &mut String| {
                if let Some(rest) = s.strip_prefix("past_key_values.") {
                    *s = format!("kv_cache_in.{rest}");
                }
            };
            for i in g.input.iter_mut() {
                if let Some(n) = i.name.as_mut() {
                    rename(n);
                }
            }
            for n in g.node.iter_mut() {
                n.input.iter_mut().for_each(rename);
            }
            for sub in g.node.iter_mut().flat_map(|n| n.attribute.iter_mut()) {
                if let Some(sg) = sub.g.as_mut() {
                    for n in sg.node.iter_mut() {
                        n.input.iter_mut().for_each(rename);
                    }
                }
            }
            medinfer_onnx::save_model(&m, &p.join(f)).unwrap();
        }
    });
    let e = load_err(d.path());
    assert!(
        e.contains("kv_cache_in.0.key") && e.contains("not one medinfer knows"),
        "{e}"
    );
    // A folder that is not an export.
    let e = load_err(Path::new("/nonexistent-report-model"));
    assert!(e.contains("is not a folder"), "{e}");
}

#[test]
fn a_length_beyond_the_decoder_positions_is_refused() {
    let Some(&b) = native_backends_for_tests().unwrap().first() else {
        return;
    };
    let g = Generator::load(&fixture(), &opts(b, DecoderChoice::Auto)).unwrap();
    let px = medinfer_io::npy::read(&fixture().join("pixels0.npy")).unwrap();
    let too_long = Overrides {
        max_new_tokens: Some(40),
        ..Default::default()
    };
    let e = g.generate_pixels(&px, &too_long).unwrap_err();
    assert!(matches!(e, GenerateError::TooLong(_)), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("max_new_tokens 40") && e.contains("has 40") && e.contains("at most 39"),
        "{e}"
    );
    // 39 is the most it holds, and it runs to the end with the end token ignored.
    let fits = Overrides {
        max_new_tokens: Some(39),
        ignore_eos: true,
        ..Default::default()
    };
    let g39 = g.generate_pixels(&px, &fits).unwrap();
    assert_eq!(g39.new_tokens, 39);
    assert_eq!(g39.stopped_by, "max_new_tokens");
}

#[test]
fn wrong_pixel_shapes_are_refused() {
    let Some(&b) = native_backends_for_tests().unwrap().first() else {
        return;
    };
    let g = Generator::load(&fixture(), &opts(b, DecoderChoice::Auto)).unwrap();
    let px = medinfer_core::Tensor::zeros(medinfer_core::DType::F32, vec![1, 3, 30, 32]).unwrap();
    let e = g
        .generate_pixels(&px, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("pixel values must be"), "{e}");
}

/// Engines mixed: the encoder on one, the decoder on the other, same tokens.
#[test]
fn encoder_and_decoder_on_different_engines_give_the_same_tokens() {
    let backends = native_backends_for_tests().unwrap();
    if backends.len() < 2 {
        return;
    }
    let r = reference();
    let c = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["input"] == "pixels3.npy" && c["setting"] == "beam4")
        .unwrap();
    let px = medinfer_io::npy::read(&fixture().join("pixels3.npy")).unwrap();
    for (enc, dec) in [(backends[0], backends[1]), (backends[1], backends[0])] {
        let g = Generator::load(
            &fixture(),
            &LoadOptions {
                encoder: Some((enc, SessionOptions::default())),
                ..opts(dec, DecoderChoice::Auto)
            },
        )
        .unwrap();
        let got = g
            .generate_pixels(&px, &overrides(&c["generate_kwargs"]))
            .unwrap();
        let want: Vec<u32> = ids(&c["tokens"]);
        assert_eq!(got.tokens, want, "encoder {enc}, decoder {dec}");
    }
}

/// The 8- and 4-bit weight-only exports compute what the float one does, up to the weights'
/// rounding: the first-step logits of both decoders on the same encoder states, every engine.
#[test]
fn weight_only_int8_decoders_stay_close_to_float() {
    let out = tempfile::tempdir().unwrap();
    let q8 = out.path().join("q8");
    let r = medinfer_generate::quantize_export(&fixture(), &q8, 8, 16, 4, false).unwrap();
    assert_eq!(r.files.len(), 2);
    for (name, f) in &r.files {
        assert!(f.replaced >= 5, "{name}: {f:?}");
        assert!(f.quantized_bytes * 3 < f.float_bytes, "{name}: {f:?}");
        assert!(f.max_block_error <= 0.5 / 127.0 + 1e-6, "{name}: {f:?}");
    }
    assert!(!q8.join("decoder_model_merged.onnx").exists());
    // Refusals: an existing, non-empty output folder; a bad block size.
    let e = medinfer_generate::quantize_export(&fixture(), &q8, 8, 16, 4, false).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    let e = medinfer_generate::quantize_export(&fixture(), &out.path().join("b"), 8, 24, 4, false)
        .unwrap_err();
    assert!(e.to_string().contains("power of two"), "{e}");
    let e = medinfer_generate::quantize_export(&fixture(), &out.path().join("c"), 3, 16, 4, false)
        .unwrap_err();
    assert!(e.to_string().contains("8 or 4"), "{e}");
    // The 4-bit export: half the bytes of the 8-bit one again.
    let q4 = out.path().join("q4");
    let r4 = medinfer_generate::quantize_export(&fixture(), &q4, 4, 16, 4, false).unwrap();
    for ((name, f8), (_, f4)) in r.files.iter().zip(&r4.files) {
        assert_eq!((f4.bits, f4.replaced), (4, f8.replaced), "{name}");
        assert!(
            f4.quantized_bytes * 10 < f8.quantized_bytes * 7,
            "{name}: {f4:?}"
        );
        assert!(f4.max_block_error <= 1.0 / 8.0 + 1e-6, "{name}: {f4:?}");
    }
    let states = medinfer_core::Tensor::from_f32(
        vec![1, 17, 32],
        (0..17 * 32)
            .map(|i| ((i * 7919 % 211) as f32 / 105.0) - 1.0)
            .collect(),
    )
    .unwrap();
    let ids =
        medinfer_core::Tensor::new(vec![1, 3], medinfer_core::TensorData::I64(vec![1, 47, 81]))
            .unwrap();
    for backend in native_backends_for_tests().unwrap() {
        let logits = |dir: &Path| {
            let s = medinfer_engine::load_dynamic(
                backend,
                &dir.join("decoder_model.onnx"),
                &SessionOptions::default(),
            )
            .unwrap();
            let out = s
                .run(vec![
                    ("input_ids".into(), ids.clone().into()),
                    ("encoder_hidden_states".into(), states.clone().into()),
                ])
                .unwrap();
            out.into_iter()
                .next()
                .unwrap()
                .into_tensor()
                .unwrap()
                .as_f32()
                .unwrap()
                .to_vec()
        };
        let f = logits(&fixture());
        let range = f.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max_diff = |q: &[f32]| {
            assert_eq!(f.len(), q.len());
            f.iter()
                .zip(q)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let (d8, d4) = (max_diff(&logits(&q8)), max_diff(&logits(&q4)));
        eprintln!("{backend}: weight-only logits max diff int8 {d8}, int4 {d4} (range {range})");
        // Weights rounded to 1/254 of their block's range and (level 4) activations to 8
        // bits: a few per cent of the logits' range at most; a wrong zero point or layout
        // gives errors of the order of the range itself.
        assert!(
            d8 < 0.05 * range,
            "{backend}: int8 max diff {d8}, logits up to {range}"
        );
        // 4 bits: steps of 1/16 of the block's range, so several times int8's error but
        // still well inside the range (a swapped nibble order is of the order of the range).
        assert!(
            d4 < 0.25 * range,
            "{backend}: int4 max diff {d4}, logits up to {range}"
        );
        assert!(d4 > d8, "{backend}: int4 {d4} not coarser than int8 {d8}");
        // The quantized decoders' projections are where the shape folding undoes the
        // exporter's [-1, K] flattening (MatMulNBits takes N-D inputs): beam search with it
        // (hoist on) gives the tokens and score of the graph as exported (hoist off).
        let px = medinfer_io::npy::read(&fixture().join("pixels3.npy")).unwrap();
        for dir in [&q8, &q4] {
            let run = |hoist: bool| {
                let g = Generator::load(
                    dir,
                    &LoadOptions {
                        hoist,
                        ..opts(backend, DecoderChoice::Split)
                    },
                )
                .unwrap();
                let folded = g.folded_away_nodes();
                let r = g
                    .generate_pixels(
                        &px,
                        &Overrides {
                            max_new_tokens: Some(12),
                            num_beams: Some(3),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                (folded, r.tokens, r.score.unwrap())
            };
            let ((folded, on, s_on), (_, off, s_off)) = (run(true), run(false));
            assert!(
                folded >= 20,
                "{backend} {}: {folded} nodes folded",
                dir.display()
            );
            assert_eq!(on, off, "{backend} {}", dir.display());
            assert!(
                (s_on - s_off).abs() <= 1e-4 * s_off.abs().max(1.0),
                "{backend} {}: score {s_on} vs {s_off}",
                dir.display()
            );
        }
    }
}

/// The export computes attention's scale from the query's run-time shape; folding the head
/// size it reads back (fixed by a reshape) lets the hoist move the cross-attention keys'
/// scaling out of the per-token step too (the tokens above are checked with the fold on).
#[test]
fn folding_the_head_size_hoists_the_cross_attention_key_scaling() {
    let m = medinfer_onnx::load_model(&fixture().join("decoder_with_past_model.onnx")).unwrap();
    let invariant = ["encoder_hidden_states", "encoder_attention_mask"];
    let plain = medinfer_onnx::hoist::split(&m, &invariant).unwrap();
    let mut folded = m.clone();
    let r = medinfer_onnx::symdims::fold_static_dims(&mut folded);
    assert!(r.folded >= 2 && r.removed >= r.folded, "{r:?}");
    let h = medinfer_onnx::hoist::split(&folded, &invariant).unwrap();
    // One key scaling per cross-attention layer (the fixture has 2) moves out.
    assert!(
        h.hoisted_nodes >= plain.hoisted_nodes + 2,
        "{} -> {}",
        plain.hoisted_nodes,
        h.hoisted_nodes
    );
    let muls = |m: &medinfer_onnx::proto::ModelProto| {
        m.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("Mul"))
            .count()
    };
    assert!(
        muls(&h.step) + 2 <= muls(&plain.step),
        "{} vs {}",
        muls(&h.step),
        muls(&plain.step)
    );
}
