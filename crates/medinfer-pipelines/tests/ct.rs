//! CT slice tagging on a synthetic series written as DICOM (HU with rescale intercept -1024):
//! windowing against its definition, slice order and positions, batch results against a
//! direct run of the model, the summary.

use medinfer_core::{Tensor, Volume};
use medinfer_engine::{load_on, BackendKind, Mode, SessionOptions};
use medinfer_pipelines::ct;

fn synthetic_ct(nz: usize) -> Volume {
    let n = 256;
    let mut data = vec![-1000f32; n * n * nz];
    for z in 0..nz {
        for y in 0..n {
            for x in 0..n {
                let (dx, dy) = (x as f32 - 128.0, y as f32 - 128.0);
                let r = (dx * dx / (100.0f32 * 100.0) + dy * dy / (80.0f32 * 80.0)).sqrt();
                let v = if r < 0.2 {
                    700.0 + z as f32 * 10.0
                } else if r < 1.0 {
                    40.0 + ((x as i32 - 128) / 2) as f32
                } else {
                    -1000.0
                };
                data[(z * n + y) * n + x] = v;
            }
        }
    }
    let mut v = Volume::new([n, n, nz, 1], data, [0.8, 0.8, 5.0, 0.0]).unwrap();
    v.affine[2][3] = -300.0;
    v
}

#[test]
fn a_ct_series_is_windowed_ordered_and_tagged_slice_by_slice() {
    let d = tempfile::tempdir().unwrap();
    let vol = synthetic_ct(12);
    let info = medinfer_io::dicom_write::SeriesInfo {
        modality: "CT".into(),
        description: "synthetic".into(),
        uid_seed: 5,
        slice_thickness: 5.0,
        rescale_intercept: -1024.0,
        ..Default::default()
    };
    let files = medinfer_io::dicom_write::write_series(d.path(), &vol, &info).unwrap();
    // File names no longer follow the slice order: the reader must order by position.
    for (k, f) in files.iter().enumerate() {
        std::fs::rename(f, d.path().join(format!("z{}.dcm", (k * 7) % 12))).unwrap();
    }
    let back = medinfer_io::series::read_series(d.path()).unwrap();
    let worst = back
        .data
        .iter()
        .zip(&vol.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert_eq!(back.dims, vol.dims);
    assert!(
        worst == 0.0,
        "HU through rescale intercept: max difference {worst}"
    );

    // Windowing + 256 -> 128 area resize against the definition.
    let (c, w) = (40.0, 400.0);
    let got = ct::preprocess_slice(&back, 3, (c, w)).unwrap();
    let win = |v: f64| ((v - (c - 0.5 - (w - 1.0) / 2.0)) / (w - 1.0)).clamp(0.0, 1.0);
    for (y, x) in [(0, 0), (64, 64), (64, 20), (70, 100), (127, 127)] {
        let mut s = 0.0;
        for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            s += win(vol.at(2 * x + dx, 2 * y + dy, 3, 0) as f64);
        }
        let want = s / 4.0;
        assert!((got[y * 128 + x] as f64 - want).abs() < 1e-4, "({y},{x})");
    }

    let model = d.path().join("resnet18-ct.onnx");
    medinfer_onnx::save_model(&medinfer_onnx::zoo::build("resnet18-ct").unwrap(), &model).unwrap();
    let opts = SessionOptions {
        mode: Mode::Throughput,
        batch: Some(4),
        ..Default::default()
    };
    let s = load_on(BackendKind::Tract, &model, &opts).unwrap();
    let regions: Vec<String> = ct::default_regions();
    let r = ct::run(d.path(), &s, (c, w), &regions, 2).unwrap();
    assert_eq!(r.slices.len(), 12);
    for (k, sl) in r.slices.iter().enumerate() {
        assert_eq!(sl.index, k);
        let sum: f32 = sl.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4);
        if k > 0 {
            assert!((sl.position_mm - r.slices[k - 1].position_mm - 5.0).abs() < 1e-3);
        }
    }
    // The batched result of slice 7 equals a direct run of the model on it.
    let one = load_on(BackendKind::Tract, &model, &SessionOptions::default()).unwrap();
    let x = ct::preprocess_slice(&back, 7, (c, w)).unwrap();
    let out = one
        .run(&[Tensor::from_f32(vec![1, 1, 128, 128], x).unwrap()])
        .unwrap();
    let p = ct::softmax(out[0].as_f32().unwrap());
    for (a, b) in p.iter().zip(&r.slices[7].probabilities) {
        assert!(
            (a - b).abs() < 1e-4,
            "{p:?} vs {:?}",
            r.slices[7].probabilities
        );
    }
    // The summary covers every slice once, in order, with the per-slice regions.
    let mut next = 0;
    for run in &r.summary {
        assert_eq!(run.slices[0], next);
        for k in run.slices[0]..=run.slices[1] {
            assert_eq!(r.slices[k].region, run.region);
        }
        next = run.slices[1] + 1;
    }
    assert_eq!(next, 12);

    // A wrong label count is a clear error.
    let two = vec!["a".to_string(), "b".to_string()];
    let e = ct::run(d.path(), &s, (c, w), &two, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("6 scores") && e.contains("2 regions"), "{e}");
}

#[test]
fn a_multi_frame_series_is_tagged_like_its_assembled_volume() {
    let d = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../medinfer-io/tests/fixtures/dicom/mr_enhanced_multiframe.dcm");
    let model = d.path().join("resnet18-ct.onnx");
    medinfer_onnx::save_model(&medinfer_onnx::zoo::build("resnet18-ct").unwrap(), &model).unwrap();
    let opts = SessionOptions {
        mode: Mode::Throughput,
        batch: Some(3),
        ..Default::default()
    };
    let s = load_on(BackendKind::Tract, &model, &opts).unwrap();
    let regions: Vec<String> = ct::default_regions();
    let win = (500.0, 1000.0);
    let r = ct::run(&fixture, &s, win, &regions, 2).unwrap();
    let vol = medinfer_io::series::read_series(&fixture).unwrap();
    assert_eq!(r.dims, [vol.dims[0], vol.dims[1], vol.dims[2]]);
    assert_eq!(r.slices.len(), 4);
    let one = load_on(BackendKind::Tract, &model, &SessionOptions::default()).unwrap();
    for z in 0..4 {
        let x = ct::preprocess_slice(&vol, z, win).unwrap();
        let out = one
            .run(&[Tensor::from_f32(vec![1, 1, 128, 128], x).unwrap()])
            .unwrap();
        let p = ct::softmax(out[0].as_f32().unwrap());
        for (a, b) in p.iter().zip(&r.slices[z].probabilities) {
            assert!((a - b).abs() < 1e-4, "slice {z}");
        }
    }
}
