//! Values that stay in the engine between calls of a dynamic-shape session (a decoder's
//! key/value cache): chained calls, values held across later calls, rows reordered in place.
//! Every native backend available; CI requires both (`MEDINFER_REQUIRE_BACKENDS`).

use medinfer_core::Tensor;
use medinfer_engine::{load_dynamic, BackendKind, DynSession, SessionOptions, Value};
use medinfer_onnx::builder::{f32_value_info, Attr, DimSpec, GraphBuilder};
use medinfer_onnx::save_model;
use std::path::Path;

const HEADS: usize = 2;
const WIDTH: usize = 3;

/// present = Concat(past, x) on the sequence axis, doubled = 2 x: a cache that grows by one
/// position per call, and a second output made afresh each call.
fn cache_model(dir: &Path) -> std::path::PathBuf {
    let mut g = GraphBuilder::new(1);
    g.node(
        "Concat",
        "present",
        &["past", "x"],
        &[("axis", Attr::Int(2))],
    );
    let two = g.initializer(medinfer_onnx::builder::f32_tensor("two", &[], &[2.0]));
    g.node("Mul", "doubled", &["x", &two], &[]);
    let dims = |seq: DimSpec| {
        vec![
            DimSpec::Named("batch".into()),
            DimSpec::Fixed(HEADS),
            seq,
            DimSpec::Fixed(WIDTH),
        ]
    };
    let m = g.finish(
        "cache",
        vec![
            f32_value_info("past", &dims(DimSpec::Named("past".into()))),
            f32_value_info("x", &dims(DimSpec::Fixed(1))),
        ],
        vec![
            f32_value_info("present", &dims(DimSpec::Named("total".into()))),
            f32_value_info("doubled", &dims(DimSpec::Fixed(1))),
        ],
        &[],
    );
    let p = dir.join("cache.onnx");
    save_model(&m, &p).unwrap();
    p
}

/// One position for `rows` rows: element (r, h, w) = base + 100 r + 10 h + w.
fn step_input(rows: usize, base: f32) -> Tensor {
    let mut v = Vec::new();
    for r in 0..rows {
        for h in 0..HEADS {
            for w in 0..WIDTH {
                v.push(base + 100.0 * r as f32 + 10.0 * h as f32 + w as f32);
            }
        }
    }
    Tensor::from_f32(vec![rows, HEADS, 1, WIDTH], v).unwrap()
}

/// The host concatenation of `parts` ([rows, heads, len_i, width] each) on axis 2.
fn concat(parts: &[Tensor]) -> Vec<f32> {
    let rows = parts[0].shape()[0];
    let mut out = Vec::new();
    for r in 0..rows {
        for h in 0..HEADS {
            for p in parts {
                let len = p.shape()[2];
                let d = p.as_f32().unwrap();
                let start = ((r * HEADS + h) * len) * WIDTH;
                out.extend_from_slice(&d[start..start + len * WIDTH]);
            }
        }
    }
    out
}

fn run(s: &DynSession, past: Value, x: &Tensor) -> Vec<Value> {
    s.run(vec![
        ("past".into(), past),
        ("x".into(), Value::from(x.clone())),
    ])
    .unwrap()
}

fn sessions(dir: &Path) -> Vec<(BackendKind, DynSession)> {
    let model = cache_model(dir);
    medinfer_engine::native_backends_for_tests()
        .unwrap()
        .into_iter()
        .map(|k| {
            let s = load_dynamic(k, &model, &SessionOptions::default()).unwrap();
            (k, s)
        })
        .collect()
}

/// A cache fed from each call to the next, as a decoder does, with a beam-style reorder of its
/// rows midway: the last present is the concatenation of every position in the reordered row
/// order, and on OpenVINO no value was copied out of the engine on the way.
#[test]
fn a_cache_chained_through_calls_stays_in_the_engine_and_stays_right() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, s) in sessions(dir.path()) {
        let rows = 2;
        let first = step_input(rows, 0.0);
        let mut parts = vec![first.clone()];
        let mut past = Value::from(first);
        for t in 1..=6 {
            let x = step_input(rows, 1000.0 * t as f32);
            let mut out = run(&s, past, &x);
            parts.push(x);
            past = out.swap_remove(0);
            assert_eq!(past.shape(), vec![rows, HEADS, t + 1, WIDTH], "{kind}");
            if t == 3 {
                // The beams swap: the cache's rows follow, in place.
                past.gather_rows(&[1, 0]).unwrap();
                let swapped: Vec<Tensor> = parts
                    .iter()
                    .map(|p| {
                        let d = p.as_f32().unwrap();
                        let n = d.len() / rows;
                        let mut v = d[n..].to_vec();
                        v.extend_from_slice(&d[..n]);
                        Tensor::from_f32(p.shape().to_vec(), v).unwrap()
                    })
                    .collect();
                parts = swapped;
            }
        }
        let got = past.to_tensor().unwrap();
        assert_eq!(got.as_f32().unwrap(), concat(&parts).as_slice(), "{kind}");
        assert_eq!(s.copied_out(), 0, "{kind}: a chained cache was copied out");
    }
}

/// Outputs held while the session runs again on the requests that made them keep their
/// elements, and can still be fed back in: the engine copies them out of a request's memory
/// before that memory is written again.
#[test]
fn outputs_held_across_later_calls_keep_their_elements() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, s) in sessions(dir.path()) {
        // Two calls' outputs held: with one stream, OpenVINO's two requests both hold some.
        let inputs: Vec<(Tensor, Tensor)> = (0..2)
            .map(|i| {
                (
                    step_input(1, 1.0 + i as f32),
                    step_input(1, 10.0 + i as f32),
                )
            })
            .collect();
        let mut held: Vec<Vec<Value>> = inputs
            .iter()
            .map(|(a, b)| run(&s, Value::from(a.clone()), b))
            .collect();
        for t in 0..4 {
            let x = step_input(1, 50.0 + t as f32);
            drop(run(&s, Value::from(x.clone()), &x));
        }
        for ((a, b), out) in inputs.iter().zip(&held) {
            let present = out[0].to_tensor().unwrap();
            let want = concat(&[a.clone(), b.clone()]);
            assert_eq!(present.as_f32().unwrap(), want.as_slice(), "{kind}");
            let doubled = out[1].to_tensor().unwrap();
            let want: Vec<f32> = b.as_f32().unwrap().iter().map(|v| 2.0 * v).collect();
            assert_eq!(doubled.as_f32().unwrap(), want.as_slice(), "{kind}");
        }
        // Fed back in after all that.
        let c = step_input(1, 3.0);
        let out = run(&s, held[0].swap_remove(0), &c);
        let got = out[0].to_tensor().unwrap();
        let (a, b) = &inputs[0];
        let want = concat(&[a.clone(), b.clone(), c]);
        assert_eq!(got.as_f32().unwrap(), want.as_slice(), "{kind}");
        if kind == BackendKind::OpenVino {
            assert!(s.copied_out() >= 2, "{kind}: {} copied out", s.copied_out());
        }
        // A value outlives its session.
        let last = run(&s, out.into_iter().next().unwrap(), &step_input(1, 4.0));
        drop(s);
        let got = last[0].to_tensor().unwrap();
        let want = concat(&[a.clone(), b.clone(), step_input(1, 3.0), step_input(1, 4.0)]);
        assert_eq!(got.as_f32().unwrap(), want.as_slice(), "{kind}");
    }
}
