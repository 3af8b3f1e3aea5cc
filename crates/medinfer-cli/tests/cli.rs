//! The `medinfer` binary as a user runs it: real processes, real files, exit codes, stderr.
mod common;
use common::{assert_clean_failure, medinfer, run, stderr};
use medinfer_core::SeededRng;
use medinfer_core::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn build_zoo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.onnx"));
    let o = run(&["zoo", "build", name, "-o", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    p
}

fn native_available(name: &str) -> bool {
    let o = run(&["runtimes", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .any(|b| b["backend"] == name && b["available"] == true)
}

#[test]
fn zoo_list_and_info_report_the_models() {
    let o = run(&["zoo", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), zoo_len());
    let d = tmp();
    let p = build_zoo(d.path(), "resnet18-ct");
    let o = run(&["info", p.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["trainable_parameters"], 11_173_318);
    assert_eq!(
        v["inputs"][0]["shape"],
        serde_json::json!(["batch", 1, 128, 128])
    );
    assert_eq!(v["op_histogram"]["Conv"], 20);
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert!(v["macs"].as_u64().unwrap() > 500_000_000);
}

#[test]
fn non_onnx_and_truncated_models_are_one_line_errors() {
    let d = tmp();
    let junk = d.path().join("scan.onnx");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\n....definitely an image").unwrap();
    let full = std::fs::read(build_zoo(d.path(), "resnet18-ct")).unwrap();
    let cut = d.path().join("cut.onnx");
    std::fs::write(&cut, &full[..full.len() * 2 / 3]).unwrap();
    for f in [&junk, &cut] {
        let f = f.to_str().unwrap();
        assert_clean_failure(&run(&["info", f]), &[f]);
        assert_clean_failure(
            &run(&["bench", f, "--backend", "tract", "--runs", "1"]),
            &[f],
        );
    }
    assert_clean_failure(
        &run(&["info", "/no/such/model.onnx"]),
        &["/no/such/model.onnx", "no such file"],
    );
}

#[test]
fn infer_writes_outputs_that_agree_across_backends() {
    let d = tmp();
    let model = build_zoo(d.path(), "resnet18-ct");
    let mut r = SeededRng::new(9);
    // Batch 2: the dynamic batch dimension is taken from the file.
    let x = Tensor::from_f32(
        vec![2, 1, 128, 128],
        (0..2 * 128 * 128).map(|_| r.normal() as f32).collect(),
    )
    .unwrap();
    let input = d.path().join("x.npy");
    medinfer_io::npy::write(&input, &x).unwrap();
    let mut outs = Vec::new();
    let mut backends = vec!["tract"];
    backends.extend(
        ["ort", "openvino"]
            .into_iter()
            .filter(|b| native_available(b)),
    );
    for b in &backends {
        let out = d.path().join(format!("out-{b}"));
        let o = run(&[
            "infer",
            model.to_str().unwrap(),
            "-i",
            &format!("input={}", input.display()),
            "-b",
            b,
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{b}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["session"]["backend"], *b);
        let t = medinfer_io::npy::read(&out.join("output.npy")).unwrap();
        assert_eq!(t.shape(), &[2, 6]);
        outs.push(t.to_f64_vec());
    }
    let scale = outs[0].iter().fold(0f64, |m, v| m.max(v.abs()));
    for (b, o) in backends.iter().zip(&outs).skip(1) {
        let err = outs[0]
            .iter()
            .zip(o)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        assert!(err <= 1e-3 * scale, "{b}: {err} vs scale {scale}");
    }
}

#[test]
fn wrong_input_shape_and_dtype_are_one_line_errors() {
    let d = tmp();
    let model = build_zoo(d.path(), "resnet18-ct");
    let m = model.to_str().unwrap();
    let out = d.path().join("o");
    let o = out.to_str().unwrap();
    let wrong_shape = d.path().join("rgb.npy");
    medinfer_io::npy::write(
        &wrong_shape,
        &Tensor::zeros(medinfer_core::DType::F32, vec![1, 3, 128, 128]).unwrap(),
    )
    .unwrap();
    assert_clean_failure(
        &run(&[
            "infer",
            m,
            "-i",
            wrong_shape.to_str().unwrap(),
            "-b",
            "tract",
            "-o",
            o,
        ]),
        &["input", "[1, 3, 128, 128]"],
    );
    let wrong_type = d.path().join("ints.npy");
    medinfer_io::npy::write(
        &wrong_type,
        &Tensor::zeros(medinfer_core::DType::I64, vec![1, 1, 128, 128]).unwrap(),
    )
    .unwrap();
    assert_clean_failure(
        &run(&[
            "infer",
            m,
            "-i",
            wrong_type.to_str().unwrap(),
            "-b",
            "tract",
            "-o",
            o,
        ]),
        &["input 'input'", "f32", "i64"],
    );
    let not_npy = d.path().join("fake.npy");
    std::fs::write(&not_npy, b"hello").unwrap();
    assert_clean_failure(
        &run(&["infer", m, "-i", not_npy.to_str().unwrap(), "-o", o]),
        &["fake.npy", "magic"],
    );
    assert_clean_failure(
        &run(&[
            "infer",
            m,
            "-i",
            &format!("nope={}", not_npy.display()),
            "-o",
            o,
        ]),
        &["no input 'nope'"],
    );
}

#[test]
fn broken_runtime_libraries_are_one_line_errors() {
    let d = tmp();
    let garbage = d.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&garbage, b"\x7fELF but not really a library").unwrap();
    let o = medinfer()
        .env("MEDINFER_ORT_LIB", &garbage)
        .args(["bench", "resnet18-ct", "--backend", "ort", "--runs", "1"])
        .output()
        .unwrap();
    assert_clean_failure(&o, &["ort", "cannot load", garbage.to_str().unwrap()]);
    let o = medinfer()
        .env("MEDINFER_OPENVINO_LIB", &garbage)
        .args([
            "bench",
            "resnet18-ct",
            "--backend",
            "openvino",
            "--runs",
            "1",
        ])
        .output()
        .unwrap();
    assert_clean_failure(&o, &["openvino", "cannot load", garbage.to_str().unwrap()]);
    let o = medinfer()
        .env("MEDINFER_ORT_LIB", d.path().join("absent.so"))
        .args(["bench", "resnet18-ct", "--backend", "ort"])
        .output()
        .unwrap();
    assert_clean_failure(&o, &["MEDINFER_ORT_LIB", "absent.so", "not a file"]);
}

#[test]
fn missing_runtimes_say_which_command_fixes_them() {
    let d = tmp();
    let o = medinfer()
        .env("MEDINFER_HOME", d.path())
        .env("MEDINFER_PYTHON", "/nonexistent/python")
        .env_remove("MEDINFER_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("MEDINFER_OPENVINO_LIB")
        .args(["bench", "resnet18-ct", "--backend", "ort", "--runs", "1"])
        .output()
        .unwrap();
    assert_clean_failure(&o, &["ort is unavailable", "medinfer runtimes install"]);
    // `all` falls back to what is available and says what it skipped.
    let o = medinfer()
        .env("MEDINFER_HOME", d.path())
        .env("MEDINFER_PYTHON", "/nonexistent/python")
        .env_remove("MEDINFER_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("MEDINFER_OPENVINO_LIB")
        .args([
            "bench",
            "resnet18-ct",
            "--backend",
            "all",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipping ort"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["backend"], "tract");
}

#[test]
fn bench_json_has_the_documented_keys_for_every_configuration() {
    let d = tmp();
    let chart = d.path().join("c.svg");
    let o = run(&[
        "bench",
        "resnet18-ct",
        "--backend",
        "all",
        "--mode",
        "latency,throughput",
        "--runs",
        "4",
        "--warmup",
        "1",
        "--json",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert!(rows.len() >= 2);
    for r in rows {
        for k in [
            "model",
            "model_sha256",
            "backend",
            "backend_version",
            "precision",
            "mode",
            "batch",
            "streams",
            "threads",
            "runs",
            "warmup",
            "load_ms",
            "first_inference_ms",
            "throughput_per_s",
            "peak_rss_mb",
        ] {
            assert!(!r[k].is_null(), "missing {k} in {r}");
        }
        for k in ["mean", "std", "min", "p50", "p90", "p99", "max"] {
            assert!(r["latency_ms"][k].as_f64().unwrap() > 0.0, "{k} in {r}");
        }
        let l = &r["latency_ms"];
        assert!(
            l["min"].as_f64() <= l["p50"].as_f64()
                && l["p50"].as_f64() <= l["p99"].as_f64()
                && l["p99"].as_f64() <= l["max"].as_f64()
        );
        // 4 asked, rounded up to a multiple of the row's streams.
        let streams = r["streams"].as_u64().unwrap().max(1);
        assert_eq!(
            r["runs"].as_u64().unwrap(),
            4u64.div_ceil(streams) * streams,
            "{r}"
        );
        assert!(r["peak_rss_mb"].as_f64().unwrap() > 10.0);
    }
    assert!(rows
        .iter()
        .any(|r| r["mode"] == "throughput" && r["streams"].as_u64().unwrap() >= 1));
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<rect").count() > rows.len(),
        "{svg}"
    );
}

/// `--cpu-isa` reaches OpenVINO's kernel dispatcher (its optimization capabilities change under
/// the cap), and `bench --isa` runs each cap in its own process and labels the rows.
#[test]
fn cpu_isa_cap_reaches_openvino_and_bench_compares_caps() {
    let o = run(&["--cpu-isa", "sse9", "zoo", "list"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("sse9") && e.contains("avx512-vnni"), "{e}");
    let native = medinfer_engine::native_backends_for_tests().unwrap();
    if !native.contains(&medinfer_engine::BackendKind::OpenVino) {
        eprintln!("note: openvino unavailable, --cpu-isa not exercised");
        return;
    }
    let d = tmp();
    let chart = d.path().join("isa.svg");
    let o = run(&[
        "bench",
        "resnet18-ct",
        "--backend",
        "openvino",
        "--isa",
        "auto,avx512-vnni",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["cpu_isa"], "auto", "{}", rows[0]);
    assert_eq!(rows[1]["cpu_isa"], "AVX512_CORE_VNNI", "{}", rows[1]);
    assert!(
        rows[1]["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("capped at AVX512_CORE_VNNI")),
        "{}",
        rows[1]
    );
    // oneDNN's dispatcher inside OpenVINO honours the cap: FP16 compute needs AVX-512 FP16,
    // so on a CPU that has it the capability is listed uncapped and gone under the cap.
    let capabilities = |r: &serde_json::Value| -> Vec<String> {
        let notes = r["notes"].as_array().unwrap();
        let line = notes
            .iter()
            .filter_map(|n| n.as_str())
            .find_map(|n| n.strip_prefix("CPU OPTIMIZATION_CAPABILITIES="))
            .unwrap_or_else(|| panic!("no capabilities note in {r}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    let (uncapped, capped) = (capabilities(&rows[0]), capabilities(&rows[1]));
    assert!(uncapped.iter().any(|c| c == "INT8") && capped.iter().any(|c| c == "INT8"));
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpu.contains("avx512_fp16") {
        assert!(uncapped.iter().any(|c| c == "FP16"), "{uncapped:?}");
        assert!(!capped.iter().any(|c| c == "FP16"), "{capped:?}");
    } else {
        eprintln!("note: no AVX-512 FP16 on this CPU; the capability change is not observable");
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.contains("[AVX512_CORE_VNNI]"), "{svg}");
    // The table labels the capped row too.
    let o = run(&[
        "bench",
        "resnet18-ct",
        "--backend",
        "openvino",
        "--isa",
        "avx512-vnni",
        "--runs",
        "2",
        "--warmup",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("[AVX512_CORE_VNNI]"), "{table}");
}

fn io_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../medinfer-io/tests/fixtures")
        .join(rel)
}

#[test]
fn inspect_reports_series_without_patient_identity() {
    let o = run(&["inspect", io_fixture("dicom").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["series"].as_array().unwrap().len() >= 10);
    for secret in ["Fixture", "Secret", "SECRET-ID-0042", "19700101"] {
        assert!(!text.contains(secret), "inspect leaked {secret}");
    }
    assert!(text.contains("JPEG-LS"), "{text}");
    // A file in a transfer syntax medinfer cannot decode is listed as such.
    let d = tmp();
    let jpip = undecodable_copy(d.path());
    let o = run(&["inspect", d.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("NOT decodable") && text.contains("JPIP") && !text.contains("Secret"),
        "{text}"
    );
    assert!(jpip.exists());
}

/// The JPEG-LS fixture with its transfer syntax changed to JPIP Referenced (same UID length),
/// which no decoder handles: pixels medinfer cannot decode, whatever features it was built with.
fn undecodable_copy(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(io_fixture("dicom/ct_jpegls_lossless.dcm")).unwrap();
    let (from, to) = (b"1.2.840.10008.1.2.4.80", b"1.2.840.10008.1.2.4.94");
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the transfer syntax UID");
    bytes[at..at + to.len()].copy_from_slice(to);
    let p = dir.join("jpip.dcm");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn convert_dicom_to_nifti_npy_png_and_back() {
    let d = tmp();
    let src = io_fixture("dicom/ct_explicit_le.dcm");
    let nii = d.path().join("ct.nii.gz");
    let o = run(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        nii.to_str().unwrap(),
        "--dtype",
        "i16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = medinfer_io::nifti::read(&nii).unwrap();
    let img = medinfer_io::dicom::read_images(&src).unwrap().remove(0);
    assert_eq!(v.dims, [34, 40, 1, 1]);
    // HU survive the int16 round trip exactly; rows of the volume are the image's rows.
    assert_eq!(v.data, img.data);
    let npy = d.path().join("ct.npy");
    assert!(run(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        npy.to_str().unwrap()
    ])
    .status
    .success());
    // One file converts to its frames: (frames, rows, cols).
    let t = medinfer_io::npy::read(&npy).unwrap();
    assert_eq!(t.shape(), &[1, 40, 34]);
    // Every frame and the colour survive: a 2-frame YBR_FULL_422 file against pydicom's array.
    let colour = io_fixture("dicom/ybr422_uncompressed_2frame.dcm");
    let cnpy = d.path().join("colour.npy");
    let o = run(&[
        "convert",
        colour.to_str().unwrap(),
        "-o",
        cnpy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = medinfer_io::npy::read(&cnpy).unwrap();
    let want =
        medinfer_io::npy::read(&io_fixture("dicom/ybr422_uncompressed_2frame.dcm.npy")).unwrap();
    assert_eq!(got.shape(), want.shape());
    assert_eq!(got.shape()[0], 2);
    assert_eq!(got.shape()[3], 3);
    assert_eq!(
        got.to_f64_vec(),
        want.to_f64_vec(),
        "colour frames differ from pydicom"
    );
    let png = d.path().join("ct.png");
    assert!(run(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--window",
        "40,400"
    ])
    .status
    .success());
    assert_eq!(medinfer_io::raster::read_png(&png).unwrap().width, 34);
    let o = run(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        d.path().join("x.bmp").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &["x.bmp", "unknown output format"]);
    let jpip = undecodable_copy(d.path());
    let o = run(&[
        "convert",
        jpip.to_str().unwrap(),
        "-o",
        nii.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &["jpip.dcm", "JPIP"]);
}

#[test]
fn optimize_and_quantize_from_the_command_line() {
    let d = tmp();
    let p = |s: &str| d.path().join(s).display().to_string();
    // optimize: fewer nodes, JSON report.
    let o = run(&["optimize", "resnet18-ct", "-o", &p("opt.onnx"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["nodes_after"].as_u64().unwrap() < r["nodes_before"].as_u64().unwrap());
    // Samples, then a quantized model with a JSON report (tract calibrates: always present).
    let o = run(&[
        "zoo",
        "samples",
        "resnet18-ct",
        "-o",
        &p("calib"),
        "-n",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "quantize",
        &p("opt.onnx"),
        "-o",
        &p("int8.onnx"),
        "--calib",
        &p("calib"),
        "--samples",
        "6",
        "--backend",
        "tract",
        "--method",
        "percentile",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["calibration_samples"], 6);
    assert!(r["report"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["quantized"] == true));
    let o = run(&["info", &p("int8.onnx"), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["quantized"], true);
    // FP32 and INT8 side by side in one bench table.
    let o = run(&[
        "bench",
        &p("opt.onnx"),
        "--backend",
        "tract",
        "--precision",
        "fp32,int8",
        "--int8",
        &p("int8.onnx"),
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows[1]["effective_precision"]
            .as_str()
            .unwrap()
            .contains("int8"),
        "{rows:?}"
    );
    let o = run(&[
        "bench",
        &p("opt.onnx"),
        "--backend",
        "tract",
        "--precision",
        "int8",
        "--int8",
        &p("opt.onnx"),
    ]);
    assert_clean_failure(&o, &["must be a quantized"]);

    // Already quantized.
    let o = run(&[
        "quantize",
        &p("int8.onnx"),
        "-o",
        &p("x.onnx"),
        "--calib",
        &p("calib"),
        "--backend",
        "tract",
    ]);
    assert_clean_failure(&o, &["already quantized"]);
    // Empty calibration folder; data of the wrong shape (named).
    std::fs::create_dir_all(d.path().join("empty")).unwrap();
    let o = run(&[
        "quantize",
        "resnet18-ct",
        "-o",
        &p("x.onnx"),
        "--calib",
        &p("empty"),
        "--backend",
        "tract",
    ]);
    assert_clean_failure(&o, &["empty", "no samples"]);
    std::fs::create_dir_all(d.path().join("wrong")).unwrap();
    medinfer_io::npy::write(
        &d.path().join("wrong/a.npy"),
        &Tensor::from_f32(vec![1, 64, 64], vec![0.0; 4096]).unwrap(),
    )
    .unwrap();
    let o = run(&[
        "quantize",
        "resnet18-ct",
        "-o",
        &p("x.onnx"),
        "--calib",
        &p("wrong"),
        "--backend",
        "tract",
    ]);
    assert_clean_failure(&o, &["a.npy", "does not fit"]);
    // A zero budget: accuracy control reverts layers until the model matches FP32 exactly.
    let o = run(&[
        "quantize",
        "resnet18-ct",
        "-o",
        &p("tight.onnx"),
        "--calib",
        &p("calib"),
        "--samples",
        "4",
        "--validate",
        &p("calib"),
        "--validate-samples",
        "2",
        "--metric",
        "nmse",
        "--max-drop",
        "0",
        "--exclude",
        "layer[1-3].*",
        "--backend",
        "tract",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        !r["accuracy"]["reverted"].as_array().unwrap().is_empty(),
        "{r}"
    );
    assert_eq!(r["accuracy"]["within_budget"], true);
}

fn zoo_len() -> usize {
    medinfer_onnx::zoo::ENTRIES.len()
}

#[test]
fn cardiac_phantom_run_and_demo_from_the_command_line() {
    let d = tmp();
    let exam = d.path().join("exam");
    let o = run(&[
        "phantom",
        "cardiac",
        "-o",
        exam.to_str().unwrap(),
        "--seed",
        "12",
        "--format",
        "dicom",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exam.join("truth.json")).unwrap()).unwrap();
    let out = d.path().join("out");
    let o = run(&[
        "run",
        "cardiac",
        exam.join("dicom").to_str().unwrap(),
        "--backend",
        "tract",
        "--json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ef = r["lv"]["ef_pct"].as_f64().unwrap();
    let true_ef = truth["truth"]["lv_ef_pct"].as_f64().unwrap();
    assert!((ef - true_ef).abs() < 3.0, "EF {ef} vs {true_ef}");
    let mass = r["lv_mass_g"].as_f64().unwrap();
    let true_mass = truth["truth"]["lv_mass_g"].as_f64().unwrap();
    assert!(
        (mass / true_mass - 1.0).abs() < 0.08,
        "mass {mass} vs {true_mass}"
    );
    assert_eq!(r["backend"], "tract");
    for f in ["report.json", "masks.nii.gz", "ed_es.png", "volumes.svg"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // The phantom's fake identity never reaches the report.
    assert!(!String::from_utf8_lossy(&o.stdout).contains("PHANTOM^"));

    // The same exam as real exports come: a series per slice, a breath-hold per slice, the
    // grid mirrored and turned, ED late in the cycle. Same numbers; the report says what it
    // undid and how the stack was put together.
    let real = d.path().join("real");
    let o = run(&[
        "phantom",
        "cardiac",
        "-o",
        real.to_str().unwrap(),
        "--seed",
        "12",
        "--format",
        "dicom",
        "--series-per-slice",
        "--breath-holds",
        "--rotate",
        "-45",
        "--mirror",
        "--ed-phase",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(real.join("dicom").join("sax_1").is_dir());
    let o = run(&[
        "run",
        "cardiac",
        real.join("dicom").to_str().unwrap(),
        "--backend",
        "tract",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ef2 = v["lv"]["ef_pct"].as_f64().unwrap();
    assert!((ef2 - ef).abs() < 1.0, "EF {ef2} vs {ef} canonical");
    let real_truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(real.join("truth.json")).unwrap()).unwrap();
    assert_eq!(real_truth["truth"]["ed_phase"], 4);
    // ED where the export put it (or the neighbouring phase: late diastole is within a
    // fraction of a ml of ED).
    let ed = v["ed_phase"].as_u64().unwrap();
    assert!((3..=5).contains(&ed), "ED phase {ed}");
    assert_eq!(v["view"]["mirrored"], true);
    assert!(
        (v["view"]["rotation_deg"].as_f64().unwrap() + 45.0).abs() < 0.01,
        "{}",
        v["view"]
    );
    let flags = v["flags"].to_string();
    assert!(
        flags.contains("single-slice series") && flags.contains("breath-holds"),
        "{flags}"
    );
    // One slice's folder: refused, saying where to point instead.
    let o = run(&[
        "run",
        "cardiac",
        real.join("dicom").join("sax_1").to_str().unwrap(),
        "--backend",
        "tract",
    ]);
    assert_clean_failure(&o, &["sax_1", "1 slice", "point at the folder"]);

    // The demo: numbers next to the truth, on the requested backend.
    let o = run(&[
        "demo",
        "--backend",
        "tract",
        "--seed",
        "13",
        "--json",
        "-o",
        d.path().join("demo").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ef = v["report"]["lv"]["ef_pct"].as_f64().unwrap();
    let true_ef = v["truth"]["lv_ef_pct"].as_f64().unwrap();
    assert!((ef - true_ef).abs() < 3.0, "demo EF {ef} vs {true_ef}");

    // Not a cine stack: one clear line.
    let png = d.path().join("x.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let o = run(&[
        "run",
        "cardiac",
        png.to_str().unwrap(),
        "--backend",
        "tract",
    ]);
    assert_clean_failure(&o, &["x.png"]);
    let one = exam.join("dicom").join("IM_000_000.dcm");
    let o = run(&[
        "run",
        "cardiac",
        one.to_str().unwrap(),
        "--backend",
        "tract",
    ]);
    assert_clean_failure(&o, &["IM_000_000.dcm", "4D"]);
    let labels = exam.join("truth_labels.nii.gz");
    let o = run(&[
        "run",
        "cardiac",
        labels.to_str().unwrap(),
        "--backend",
        "tract",
    ]);
    assert_clean_failure(&o, &["truth_labels.nii.gz", "label map"]);
}

#[test]
fn cxr_batch_reports_corrupt_files_and_resumes_without_duplicates() {
    let d = tmp();
    let imgs = d.path().join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    for k in 0..5u8 {
        let dir = if k % 2 == 0 {
            imgs.clone()
        } else {
            imgs.join("sub")
        };
        let px: Vec<u8> = (0..64 * 80)
            .map(|i| ((i as u32 * (k as u32 + 3)) % 251) as u8)
            .collect();
        medinfer_io::raster::write_png8(dir.join(format!("x{k}.png")), 64, 80, 1, &px).unwrap();
    }
    // Recognised as PNG by content, but truncated: an error row, the batch goes on.
    std::fs::write(imgs.join("broken.png"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0").unwrap();
    std::fs::write(
        imgs.join("notes.txt"),
        b"not an image, skipped by the folder scan",
    )
    .unwrap();
    let csv = d.path().join("out.csv");
    let args = |extra: &[&str]| {
        let mut v = vec!["run", "cxr", imgs.to_str().unwrap(), "--backend", "tract"];
        v.extend_from_slice(extra);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let a = args(&["--csv", csv.to_str().unwrap()]);
    let o = run(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines[0].starts_with("file,status,Atelectasis,Consolidation,"));
    assert!(lines[0].contains(",Enlarged Cardiomediastinum,error,note"));
    let broken: Vec<&&str> = lines.iter().filter(|l| l.contains("broken.png")).collect();
    assert_eq!(broken.len(), 1);
    assert!(broken[0].contains(",error,"));
    assert!(lines[1..].iter().all(|l| l.contains("UNTRAINED")));

    // Interrupt: keep the header, two rows and half of the third; the re-run completes the
    // rest exactly once.
    let cut: usize = lines[..3].iter().map(|l| l.len() + 1).sum::<usize>() + lines[3].len() / 2;
    std::fs::write(&csv, &text.as_bytes()[..cut]).unwrap();
    let o = run(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("2 file(s) already done"),
        "{}",
        stderr(&o)
    );
    let again = std::fs::read_to_string(&csv).unwrap();
    let mut files: Vec<&str> = again
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(files.len(), 6, "{again}");
    files.sort();
    files.dedup();
    assert_eq!(files.len(), 6, "duplicates after resume: {again}");
    // The same scores as the uninterrupted run for the rows it wrote again.
    for l in &lines[3..] {
        assert!(again.contains(l), "{l} not reproduced");
    }

    // JSON lines, label order from a label file, thresholds of the wrong length refused.
    let labels = d.path().join("labels.txt");
    std::fs::write(&labels, "# padchest subset\nA\nB\n").unwrap();
    let a = args(&["--labels", labels.to_str().unwrap()]);
    let o = run(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_clean_failure(&o, &["18 scores", "2"]);
    let th = d.path().join("th.txt");
    std::fs::write(&th, "0.5, 0.5").unwrap();
    let a = args(&["--thresholds", th.to_str().unwrap()]);
    let o = run(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_clean_failure(&o, &["th.txt", "2 thresholds for 18 labels"]);
    let a = args(&["--json"]);
    let o = run(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    let ok = rows.iter().find(|r| r["status"] == "ok").unwrap();
    assert_eq!(ok["scores"].as_object().unwrap().len(), 18);
    assert!(ok["note"].as_str().unwrap().contains("UNTRAINED"));
}

/// Writes a small synthetic CT series (HU through a -1024 intercept) into `dir`.
fn write_ct_series(dir: &Path, nz: usize, seed: u64) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let n = 64;
    let mut r = SeededRng::new(seed);
    let data: Vec<f32> = (0..n * n * nz)
        .map(|i| {
            let (x, y) = ((i % n) as f32 - 32.0, ((i / n) % n) as f32 - 32.0);
            if x * x + y * y < 600.0 {
                (40.0 + 30.0 * r.normal()).round() as f32
            } else {
                -1000.0
            }
        })
        .collect();
    let mut v = medinfer_core::Volume::new([n, n, nz, 1], data, [0.7, 0.7, 3.0, 0.0]).unwrap();
    v.affine[2][3] = -100.0 * seed as f64;
    let info = medinfer_io::dicom_write::SeriesInfo {
        modality: "CT".into(),
        description: "synthetic".into(),
        uid_seed: seed,
        slice_thickness: 3.0,
        rescale_intercept: -1024.0,
        ..Default::default()
    };
    medinfer_io::dicom_write::write_series(dir, &v, &info).unwrap()
}

#[test]
fn ct_batch_tags_every_series_reports_broken_ones_and_resumes_without_duplicates() {
    let d = tmp();
    let root = d.path().join("archive");
    write_ct_series(&root.join("a"), 7, 1);
    write_ct_series(&root.join("b/inner"), 5, 2);
    let gap = write_ct_series(&root.join("c"), 6, 3);
    std::fs::remove_file(&gap[2]).unwrap(); // a missing slice: that series fails, alone
    std::fs::create_dir_all(root.join("d")).unwrap();
    let whole = std::fs::read(&gap[0]).unwrap();
    // DICOM by its preamble, cut inside the header: a per-file error.
    std::fs::write(root.join("d/cut.dcm"), &whole[..200]).unwrap();
    std::fs::write(root.join("d/README.txt"), b"not DICOM, ignored").unwrap();

    let out = d.path().join("tags.jsonl");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "run".to_string(),
            "ct".into(),
            root.display().to_string(),
            "--backend".into(),
            "tract".into(),
            "--batch".into(),
            "4".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let go = |a: &[String]| run(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let a = args(&["--jsonl", out.to_str().unwrap()]);
    let o = go(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    let ok: Vec<&serde_json::Value> = rows.iter().filter(|r| r["status"] == "ok").collect();
    assert_eq!(ok.len(), 2, "{text}");
    // In the order of the folders, every slice tagged once, in position order.
    assert!(ok[0]["input"].as_str().unwrap().ends_with("a"));
    assert!(ok[1]["input"].as_str().unwrap().ends_with("inner"));
    for (r, nz) in ok.iter().zip([7, 5]) {
        let slices = r["report"]["slices"].as_array().unwrap();
        assert_eq!(slices.len(), nz);
        for (k, s) in slices.iter().enumerate() {
            assert_eq!(s["index"], k);
            let p: f64 = s["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum();
            assert!((p - 1.0).abs() < 1e-4);
        }
        let pos: Vec<f64> = slices
            .iter()
            .map(|s| s["position_mm"].as_f64().unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| (w[1] - w[0] - 3.0).abs() < 1e-3));
        assert!(r["note"].as_str().unwrap().contains("UNTRAINED"));
    }
    let errors: Vec<String> = rows
        .iter()
        .filter(|r| r["status"] == "error")
        .map(|r| r["error"].as_str().unwrap().to_string())
        .collect();
    assert!(errors.iter().any(|e| e.contains("cut.dcm")), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("missing") || e.contains("gap")),
        "{errors:?}"
    );

    // Interrupted after the first record and half of the second: the re-run repairs the file
    // and completes it, each series exactly once, with the same numbers.
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines[0].len() + 1 + lines[1].len() / 2;
    std::fs::write(&out, &text.as_bytes()[..cut]).unwrap();
    let o = go(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 series / file(s) already done"),
        "{}",
        stderr(&o)
    );
    let again = std::fs::read_to_string(&out).unwrap();
    let mut keys: Vec<String> = again
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys.len(), 4, "{again}");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4, "duplicates after resume: {again}");
    let probs = |text: &str, uid: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["series_uid"] == uid)
            .map(|r| {
                r["report"]["slices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["probabilities"].clone())
                    .collect()
            })
            .unwrap()
    };
    for r in &ok {
        let uid = r["series_uid"].as_str().unwrap();
        assert_eq!(probs(&text, uid), probs(&again, uid));
    }

    // One series named directly: the same numbers as in the batch; --json gives its report.
    let o = run(&[
        "run",
        "ct",
        root.join("a").to_str().unwrap(),
        "--backend",
        "tract",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<serde_json::Value> = v["report"]["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["probabilities"].clone())
        .collect();
    let want = probs(&text, ok[0]["series_uid"].as_str().unwrap());
    for (g, w) in got.iter().zip(&want) {
        for (x, y) in g.as_array().unwrap().iter().zip(w.as_array().unwrap()) {
            assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5);
        }
    }
    // The broken series alone: a clear failure naming it.
    let o = run(&[
        "run",
        "ct",
        root.join("c").to_str().unwrap(),
        "--backend",
        "tract",
    ]);
    assert!(!o.status.success());
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(
        all.contains("no series could be tagged") && !all.contains("panicked"),
        "{all}"
    );
}

#[test]
fn quantize_calibrates_on_images_through_a_pipelines_preprocessing() {
    let d = tmp();
    // Cardiac: two phantom exams to calibrate on, a third to validate on. Each phantom folder
    // also holds its truth label map, which the pipeline refuses: skipped with a warning.
    for (dir, seed) in [("calib/e1", "101"), ("calib/e2", "102"), ("val/e3", "103")] {
        let o = run(&[
            "phantom",
            "cardiac",
            "-o",
            d.path().join(dir).to_str().unwrap(),
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let fp32 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/cardiac/cardiac-unet.onnx");
    let out = d.path().join("unet-int8.onnx");
    let o = run(&[
        "quantize",
        fp32.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--pipeline",
        "cardiac",
        "--calib",
        d.path().join("calib").to_str().unwrap(),
        "--samples",
        "120",
        "--validate",
        d.path().join("val").to_str().unwrap(),
        "--validate-samples",
        "60",
        "--metric",
        "dice",
        "--max-drop",
        "0.005",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["calibration_samples"], 120, "{v}");
    let acc = &v["accuracy"];
    let drop = acc["fp32"].as_f64().unwrap() - acc["int8"].as_f64().unwrap();
    assert!(drop <= 0.005, "Dice drop {drop}: {acc}");
    assert!(out.exists());

    // CT: every slice of the series under the folder; a model / pipeline mismatch is refused.
    write_ct_series(&d.path().join("ct/a"), 6, 4);
    write_ct_series(&d.path().join("ct/b"), 5, 5);
    let ct = build_zoo(d.path(), "resnet18-ct");
    let o = run(&[
        "quantize",
        ct.to_str().unwrap(),
        "-o",
        d.path().join("ct-int8.onnx").to_str().unwrap(),
        "--pipeline",
        "ct",
        "--calib",
        d.path().join("ct").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["calibration_samples"], 11,
        "every slice of both series: {v}"
    );
    let o = run(&[
        "quantize",
        ct.to_str().unwrap(),
        "-o",
        d.path().join("x.onnx").to_str().unwrap(),
        "--pipeline",
        "cxr",
        "--calib",
        d.path().join("ct").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &["cxr pipeline", "[1, 224, 224]", "1 x 128 x 128"]);
    let o = run(&[
        "quantize",
        fp32.to_str().unwrap(),
        "-o",
        d.path().join("x.onnx").to_str().unwrap(),
        "--pipeline",
        "cardiac",
        "--calib",
        d.path().join("ct").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &["no usable cardiac input"]);
}

/// Regression (hardening review): `bench-pipeline --runs 0` panicked taking the median of no
/// runs; counts of zero are now usage errors before any work starts.
#[test]
fn bench_pipeline_runs_0_is_a_usage_error_not_a_panic() {
    for args in [
        &[
            "bench-pipeline",
            "cardiac",
            "--runs",
            "0",
            "--backend",
            "tract",
        ][..],
        &[
            "bench-pipeline",
            "cardiac",
            "--batch",
            "0",
            "--backend",
            "tract",
        ][..],
        &["bench-io", "cxr", "x.png", "--runs", "0"][..],
    ] {
        let o = run(args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
        assert!(e.contains("invalid value '0'"), "{args:?}: {e}");
    }
}

/// Codestreams whose own size disagrees with the header, found by the dicom_decode fuzzer:
/// a JPEG larger than the header made dicom-rs's adapter slice past its buffer (a panic,
/// caught, but printed with a backtrace), a JPEG 2000 SIZ of 268 million columns made openjp2
/// allocate 40 GB. Both are now one error line naming the file and both sizes, before any
/// decoder runs, and nothing is printed about panics, even with RUST_BACKTRACE=1.
#[test]
fn codestreams_larger_than_the_header_are_one_quiet_error_line() {
    let d = tmp();
    for (fixture, size) in [
        ("fuzz_jpeg_sof_size.bin", "15650 x 40"),
        ("fuzz_j2k_siz_oom.bin", "268435490 x 40"),
    ] {
        let src = d.path().join("hostile.dcm");
        std::fs::copy(io_fixture(&format!("dicom/{fixture}")), &src).unwrap();
        for out in ["o.npy", "o.nii.gz"] {
            let out = d.path().join(out);
            let args = [
                "convert",
                src.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ];
            let o = medinfer()
                .args(args)
                .env("RUST_BACKTRACE", "1")
                .output()
                .unwrap();
            assert_clean_failure(&o, &["hostile.dcm", size, "header declares 34 x 40 x 1"]);
            assert!(!stderr(&o).contains("backtrace"), "{}", stderr(&o));
        }
    }
}

#[test]
fn shards_from_indexed_job_env_cover_every_file_once_and_resume_after_interruption() {
    let d = tmp();
    let imgs = d.path().join("archive");
    for k in 0..11u32 {
        let dir = imgs.join(format!("p{}", k % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let px: Vec<u8> = (0..48 * 40)
            .map(|i| ((i as u32 * (k + 5)) % 241) as u8)
            .collect();
        medinfer_io::raster::write_png8(dir.join(format!("img{k:02}.png")), 48, 40, 1, &px)
            .unwrap();
    }
    let n = 3;
    // One Kubernetes Indexed Job pod per shard: K comes from JOB_COMPLETION_INDEX. The archive
    // is given relative to the working folder, so the shard keys (the paths as listed) do not
    // depend on the random temporary folder's name and the split is the same on every run.
    let shard = |k: usize, csv: &Path| {
        Command::new(env!("CARGO_BIN_EXE_medinfer"))
            .current_dir(d.path())
            .args(["run", "cxr", "archive", "-b", "tract", "--shard"])
            .arg(format!("env/{n}"))
            .arg("--csv")
            .arg(csv)
            .env("JOB_COMPLETION_INDEX", k.to_string())
            .env_remove("SLURM_ARRAY_TASK_ID")
            .output()
            .unwrap()
    };
    let rows = |csv: &Path| -> Vec<String> {
        std::fs::read_to_string(csv)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().to_string())
            .collect()
    };
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    for k in 0..n {
        let csv = d.path().join(format!("shard{k}.csv"));
        let o = shard(k, &csv);
        assert!(o.status.success(), "{}", stderr(&o));
        let r = rows(&csv);
        sizes.push(r.len());
        all.extend(r);
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a file in two shards: {all:?}");
    assert_eq!(all.len(), 11, "{all:?}");
    assert!(sizes.iter().all(|&s| s >= 2), "unbalanced shards {sizes:?}");
    // Same split on a second run (deterministic), and the interrupted shard 1 resumes: cut its
    // CSV inside a row, run again, every file of the shard exactly once.
    let csv = d.path().join("shard1.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let whole = rows(&csv);
    let cut = text.lines().next().unwrap().len() + 1 + text.lines().nth(1).unwrap().len() + 10;
    std::fs::write(&csv, &text.as_bytes()[..cut]).unwrap();
    let o = shard(1, &csv);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut again = rows(&csv);
    again.sort();
    let mut want = whole.clone();
    want.sort();
    assert_eq!(again, want);
    // Out-of-range or missing index: a clear refusal.
    let o = shard(3, &d.path().join("x.csv"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("3"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_medinfer"))
        .args([
            "run",
            "cxr",
            imgs.to_str().unwrap(),
            "-b",
            "tract",
            "--shard",
            "env/3",
        ])
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("JOB_COMPLETION_INDEX"),
        "{}",
        stderr(&o)
    );
}

/// `phantom fmri` -> `run fmri --json` -> `phantom fmri-eval --json` end to end: a small
/// cohort, the report on stdout (labels from the shipped classifier, which says it was trained
/// on phantoms), the recovery figures computed from the written files; `bench-pipeline fmri`
/// gives stage times and the classifier's accuracy.
#[test]
fn fmri_phantom_run_and_eval_from_the_command_line() {
    let d = tmp();
    let cohort = d.path().join("cohort");
    let c = cohort.to_str().unwrap();
    let o = run(&[
        "phantom",
        "fmri",
        "-o",
        c,
        "--subjects",
        "4",
        "--seed",
        "21",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let subjects: Vec<String> = (1..=4)
        .map(|i| {
            cohort
                .join(format!("sub-{i:02}.nii.gz"))
                .display()
                .to_string()
        })
        .collect();
    let out = d.path().join("out");
    let mut args = vec!["run", "fmri", "-o", out.to_str().unwrap(), "--json"];
    args.extend(subjects.iter().map(|s| s.as_str()));
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The dimension is estimated (profile likelihood of the group spectrum): the 13 sources.
    assert_eq!(rep["components"], 13, "{}", rep["dimension_source"]);
    assert_eq!(rep["subjects"].as_array().unwrap().len(), 4);
    assert!(rep["times_s"]["total"].as_f64().unwrap() > 0.0);
    assert!(rep["times_s"]["classify"].as_f64().unwrap() > 0.0);
    assert!(
        rep["classifier"]["note"]
            .as_str()
            .unwrap()
            .contains("phantom"),
        "{}",
        rep["classifier"]
    );
    assert_eq!(rep["classifier"]["samples"], 13 * 5);
    for g in rep["group"].as_array().unwrap() {
        assert!(
            g["label"].is_string() && g["probability"].as_f64().unwrap() > 0.0,
            "{g}"
        );
    }
    assert!(out.join("components.png").is_file());
    let o = run(&[
        "phantom",
        "fmri-eval",
        "--cohort",
        c,
        "--maps",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Four subjects only: a looser bar than the library test's eight.
    assert!(r["mean_network_group_r"].as_f64().unwrap() > 0.85, "{r}");
    // A bad band is a one-line error.
    let o = run(&[
        "run",
        "fmri",
        "-o",
        out.to_str().unwrap(),
        "--band",
        "0.2,0.1",
        &subjects[0],
    ]);
    assert_clean_failure(&o, &["--band"]);
    // z maps (FSL's --out_z): the same regression, each t turned into the z of its tail
    // probability with T - n degrees of freedom.
    let out_z = d.path().join("out_z");
    let mut args = vec!["run", "fmri", "-o", out_z.to_str().unwrap(), "--json"];
    args.extend(["--stat", "z", "--no-classify"]);
    args.extend(subjects.iter().map(|s| s.as_str()));
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let rz: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rz["map_statistic"], "z");
    assert_eq!(rz["components"], 13);
    let t = medinfer_io::nifti::read(out.join("sub-01/maps.nii.gz")).unwrap();
    let z = medinfer_io::nifti::read(out_z.join("sub-01/maps.nii.gz")).unwrap();
    assert_eq!(t.dims, z.dims);
    let volumes = rep["subjects"][0]["volumes"].as_f64().unwrap();
    let dist = medinfer_pipelines::fmri::stats::StudentT::new(volumes - 13.0);
    let mut worst = 0f64;
    for (&tv, &zv) in t.data.iter().zip(&z.data) {
        let want = dist.z(tv as f64);
        worst = worst.max((want - zv as f64).abs() / want.abs().max(1.0));
        assert!(zv.abs() <= tv.abs() + 1e-4, "z {zv} beyond t {tv}");
    }
    assert!(
        worst < 1e-5,
        "z maps differ from t -> z of the t maps by {worst}"
    );
    // Bad values are clap usage errors (exit 2) naming the flag.
    for bad in ["--dimension=variance:2", "--stat=f"] {
        let o = run(&[
            "run",
            "fmri",
            "-o",
            out_z.to_str().unwrap(),
            bad,
            &subjects[0],
        ]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.starts_with("error: ") && !e.contains("panicked"), "{e}");
        assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
    }
    // bench-pipeline fmri, kept small: one whole run, the FP32 classifier on tract.
    let o = run(&[
        "bench-pipeline",
        "fmri",
        "--subjects",
        "4",
        "--runs",
        "1",
        "-b",
        "tract",
        "--precision",
        "fp32",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(b["median_stage_s"]["ica"].as_f64().unwrap() > 0.0, "{b}");
    let c = &b["classifier"][0];
    assert_eq!(c["samples"], 13 * 5);
    assert!(c["accuracy"].as_f64().unwrap() >= 0.9, "{b}");
    assert_eq!(c["agreement_with_fp32"], 1.0);
}
