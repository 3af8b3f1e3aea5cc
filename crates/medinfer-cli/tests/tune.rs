//! `medinfer tune` end to end on a zoo model: the choice meets the accuracy budget (checked
//! here independently of the tune), candidates over it are out with their measured drop, an
//! engine crash takes one candidate out and not the tune, tract alone without native runtimes,
//! bad requests refused; and the deployment it writes is taken (or refused) by `bench` and
//! `run`.

mod common;
use common::*;
use medinfer_core::Tensor;
use medinfer_engine::{load_on, BackendKind, Precision, SessionOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The zoo's resnet18-ct (seeded weights) as `d/model.onnx`.
fn zoo_model(d: &Path) -> PathBuf {
    let model = d.join("model.onnx");
    let o = run(&["zoo", "build", "resnet18-ct", "-o", s(&model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    model
}

/// The model (resnet18-ct, seeded weights) and calibration / validation samples of it.
fn setup(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model = zoo_model(d);
    let calib = d.join("calib");
    let valid = d.join("valid");
    for (dir, n, seed) in [(&calib, "16", "1"), (&valid, "10", "2")] {
        let o = run(&[
            "zoo",
            "samples",
            "resnet18-ct",
            "-o",
            s(dir),
            "-n",
            n,
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    (model, calib, valid)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn outputs(model: &Path, backend: BackendKind, precision: Precision, valid: &Path) -> Vec<Tensor> {
    let session = load_on(
        backend,
        model,
        &SessionOptions {
            precision,
            ..Default::default()
        },
    )
    .unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(valid)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let t = medinfer_io::npy::read(f).unwrap();
            let mut shape = vec![1];
            shape.extend_from_slice(t.shape());
            let t = Tensor::from_f32(shape, t.as_f32().unwrap().to_vec()).unwrap();
            session.run(&[t]).unwrap().remove(0)
        })
        .collect()
}

#[test]
fn tune_chooses_within_the_budget_and_writes_a_deployment_bench_takes() {
    let d = tmp();
    let (model, calib, valid) = setup(d.path());
    let deploy = d.path().join("deploy");
    let max_drop = 0.01;
    let o = run(&[
        "tune",
        s(&model),
        "--calib",
        s(&calib),
        "--validate",
        s(&valid),
        "--calib-samples",
        "16",
        "--max-drop",
        &max_drop.to_string(),
        "--budget",
        "30s",
        "-o",
        s(&deploy),
        "--json",
    ]);
    let out = json(&o);
    let cands = out["candidates"].as_array().unwrap();
    let chosen = &cands[out["chosen"].as_u64().unwrap() as usize];
    assert_eq!(chosen["status"], "chosen");
    assert!(chosen["drop"].as_f64().unwrap() <= max_drop);
    assert!(!chosen["rounds"].as_array().unwrap().is_empty());
    // The final rounds ran over fresh loads (3 by default) unless the budget had no room.
    let fewer = out["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("the final rounds ran over"));
    assert!(fewer || chosen["loads"].as_u64().unwrap() >= 3, "{chosen}");
    let native = medinfer_engine::native_backends_for_tests().unwrap();
    if !native.is_empty() {
        // INT8 variants were made and measured, and some candidate lost in paired rounds.
        assert!(cands.iter().any(|c| c["variant"] == "int8-portable"));
        assert!(cands.iter().any(|c| c["status"] == "runner_up"));
        let [lo, hi] = [
            out["confidence"][0].as_f64().unwrap(),
            out["confidence"][1].as_f64().unwrap(),
        ];
        assert!(lo > 0.0 && lo <= hi, "{lo} {hi}");
    }
    // Every candidate is accounted for: measured, or out with a reason.
    for c in cands {
        let st = c["status"].as_str().unwrap();
        assert!(
            ["chosen", "runner_up", "measured"].contains(&st) || c["reason"].is_string(),
            "{c}"
        );
    }
    // The deployment: a model-repository entry with the choice and its figures.
    let cfg = read_json(&deploy.join("config.json"));
    assert_eq!(cfg["backend"], chosen["backend"]);
    assert_eq!(cfg["instances"], chosen["streams"]);
    assert_eq!(cfg["tuned"]["candidate"], chosen["label"]);
    assert!(deploy.join("1/model.onnx").is_file());
    let svg = std::fs::read_to_string(deploy.join("tune.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Pareto front"));
    let md = std::fs::read_to_string(deploy.join("tune.md")).unwrap();
    assert!(md.contains("**chosen**"));

    // The budget holds, checked here without the tune: the deployed file on its engine
    // against the FP32 model on tract (another engine than the tune's reference).
    let backend = BackendKind::parse(cfg["backend"].as_str().unwrap()).unwrap();
    let precision = Precision::parse(cfg["precision"].as_str().unwrap()).unwrap();
    let reference = outputs(&model, BackendKind::Tract, Precision::Fp32, &valid);
    let deployed = outputs(&deploy.join("1/model.onnx"), backend, precision, &valid);
    let cos = medinfer_engine::calibrate::score(
        medinfer_engine::calibrate::Metric::Cosine,
        &reference,
        &deployed,
    )
    .unwrap();
    assert!(1.0 - cos <= max_drop + 1e-4, "cosine {cos}");

    // bench --deploy runs exactly the chosen configuration.
    let o = run(&[
        "bench",
        "--deploy",
        s(&deploy),
        "--runs",
        "3",
        "--warmup",
        "1",
        "--json",
    ]);
    let rows = json(&o);
    assert_eq!(rows[0]["backend"], cfg["backend"]);
    assert_eq!(rows[0]["streams"], cfg["instances"]);
    assert_eq!(rows[0]["model"], "model.onnx");
}

#[test]
fn candidates_over_the_budget_are_out_and_a_budget_nothing_meets_writes_nothing() {
    let native = medinfer_engine::native_backends_for_tests().unwrap();
    if !native.contains(&BackendKind::OpenVino)
        || !medinfer_engine::cpu_flags().contains("avx512_bf16")
    {
        eprintln!("note: needs OpenVINO on a CPU with BF16; skipped");
        return;
    }
    let d = tmp();
    let (model, _calib, valid) = setup(d.path());
    let deploy = d.path().join("deploy");
    // BF16 moves outputs by ~1e-3 relative: over a budget of 1e-6, FP32 within it.
    let base = [
        "tune",
        s(&model),
        "--validate",
        s(&valid),
        "--backends",
        "openvino",
        "--max-drop",
        "0.000001",
        "--budget",
        "30s",
        "-o",
        s(&deploy),
    ];
    let mut args = base.to_vec();
    args.extend(["--precisions", "fp32,bf16", "--json"]);
    let out = json(&run(&args));
    let cands = out["candidates"].as_array().unwrap();
    let bf16: Vec<&Value> = cands.iter().filter(|c| c["precision"] == "bf16").collect();
    assert!(!bf16.is_empty());
    for c in &bf16 {
        assert_eq!(c["status"], "over_budget", "{c}");
        let drop = c["drop"].as_f64().unwrap();
        assert!(drop > 1e-6, "{c}");
        assert!(c["reason"].as_str().unwrap().contains("drop"), "{c}");
    }
    let chosen = &cands[out["chosen"].as_u64().unwrap() as usize];
    assert_eq!(chosen["precision"], "fp32");
    std::fs::remove_dir_all(&deploy).unwrap();

    // BF16 alone: nothing meets the budget; a clear error and nothing written.
    let mut args = base.to_vec();
    args.extend(["--precisions", "bf16"]);
    let o = run(&args);
    assert_clean_failure(&o, &["no candidate meets the accuracy budget", "--force"]);
    assert!(!deploy.exists());
    // --force deploys the most accurate, marked over budget.
    args.push("--force");
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = read_json(&deploy.join("config.json"));
    assert_eq!(cfg["tuned"]["over_budget"], true);
    assert_eq!(cfg["precision"], "bf16");
}

#[test]
fn an_engine_crash_takes_out_its_candidates_not_the_tune() {
    victim_is_taken_out("abort", "signal");
}

#[test]
fn a_hung_engine_is_killed_and_reported_not_waited_for() {
    victim_is_taken_out("hang", "hung: the engine gave no answer within 12 s");
}

/// Injects `fault` (the worker's `MEDINFER_TUNE_FAULT`) into one engine's candidates: they are
/// reported as crashed with `why` in their reason, and the tune deploys ONNX Runtime.
fn victim_is_taken_out(fault: &str, why: &str) {
    let native = medinfer_engine::native_backends_for_tests().unwrap();
    if !native.contains(&BackendKind::Ort) {
        eprintln!("note: needs ONNX Runtime for the reference; skipped");
        return;
    }
    let victim = if native.contains(&BackendKind::OpenVino) {
        "openvino"
    } else {
        "tract"
    };
    let d = tmp();
    let (model, _calib, valid) = setup(d.path());
    let o = medinfer()
        .env("MEDINFER_TUNE_FAULT", format!("{fault}:{victim}"))
        // Generous for the healthy candidates on a loaded 2-core test host.
        .env("MEDINFER_TUNE_HANG_S", "12")
        .args([
            "tune",
            s(&model),
            "--validate",
            s(&valid),
            "--backends",
            &format!("ort,{victim}"),
            "--precisions",
            "fp32",
            "--budget",
            "30s",
            "-o",
            s(&d.path().join("deploy")),
            "--json",
        ])
        .output()
        .unwrap();
    let out = json(&o);
    let cands = out["candidates"].as_array().unwrap();
    let crashed: Vec<&Value> = cands.iter().filter(|c| c["backend"] == victim).collect();
    assert!(!crashed.is_empty());
    for c in crashed {
        assert_eq!(c["status"], "crashed", "{c}");
        assert!(c["reason"].as_str().unwrap().contains(why), "{c}");
    }
    assert_eq!(
        cands[out["chosen"].as_u64().unwrap() as usize]["backend"],
        "ort"
    );
}

#[test]
fn without_native_runtimes_tract_alone_is_tuned_and_said_so() {
    let d = tmp();
    let (model, calib, valid) = setup(d.path());
    let home = d.path().join("home");
    let o = medinfer()
        .env("MEDINFER_HOME", &home)
        .env("MEDINFER_PYTHON", "/nonexistent/python")
        .env_remove("MEDINFER_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("MEDINFER_OPENVINO_LIB")
        .args([
            "tune",
            s(&model),
            "--calib",
            s(&calib),
            "--validate",
            s(&valid),
            "--budget",
            "30s",
            "-o",
            s(&d.path().join("deploy")),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("only tract is tuned"), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Chosen: tract fp32"), "{text}");
    let cfg = read_json(&d.path().join("deploy/config.json"));
    assert_eq!(cfg["backend"], "tract");
}

#[test]
fn bad_tune_requests_are_refused_before_any_work() {
    let d = tmp();
    let (model, _calib, _valid) = setup(d.path());
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = d.path().join("deploy");
    let o = run(&["tune", s(&model), "--validate", s(&empty), "-o", s(&out)]);
    assert_clean_failure(&o, &["--validate", "empty"]);
    let o = run(&[
        "tune",
        s(&model),
        "--validate",
        s(&empty),
        "--budget",
        "soon",
        "-o",
        s(&out),
    ]);
    assert_clean_failure(&o, &["--budget soon"]);
    assert!(!out.exists());
}

/// A deployment folder by hand: tract, with extra CPU flags required.
fn hand_deploy(d: &Path, model: &Path, flags: &[&str]) -> PathBuf {
    let dir = d.join(format!("deploy-{}", flags.len()));
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(model, dir.join("1/model.onnx")).unwrap();
    let cfg = serde_json::json!({
        "backend": "tract", "precision": "fp32", "threads": 1, "instances": 2, "max_batch": 2,
        "tuned": {
            "objective": "throughput", "candidate": "tract fp32 2x1 b2", "variant": "fp32",
            "metric": "cosine", "max_drop": 0.005, "accuracy_drop": 0.0, "over_budget": false,
            "latency_ms": 5.0, "throughput_per_s": 300.0, "runner_up": null, "confidence": null,
            "cpu": "a CPU from the future", "cores": 2, "cpu_flags_required": flags,
            "medinfer_version": "0.1.0"
        }
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn a_deployment_is_refused_on_a_cpu_that_lacks_what_it_was_tuned_for() {
    let d = tmp();
    let model = zoo_model(d.path());
    let bad = hand_deploy(d.path(), &model, &["amx_future_tile"]);
    let o = run(&["bench", "--deploy", s(&bad), "--runs", "1"]);
    assert_clean_failure(
        &o,
        &["amx_future_tile", "a CPU from the future", "medinfer tune"],
    );
    let png = d.path().join("x.png");
    std::fs::write(&png, b"not used").unwrap();
    let o = run(&["run", "cxr", s(&png), "--deploy", s(&bad)]);
    assert_clean_failure(&o, &["amx_future_tile"]);
    // The same deployment without the impossible flag runs as configured: 2 streams x 1
    // thread, batch 2.
    let good = hand_deploy(d.path(), &model, &[]);
    let rows = json(&run(&[
        "bench",
        "--deploy",
        s(&good),
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
    ]));
    assert_eq!(rows[0]["backend"], "tract");
    assert_eq!(rows[0]["streams"], 2);
    assert_eq!(rows[0]["threads"], 1);
    assert_eq!(rows[0]["batch"], 2);
}

/// `GET path` over a plain socket; the status and the body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

#[test]
fn serve_takes_a_deployment_as_a_one_model_repository() {
    let d = tmp();
    let model = zoo_model(d.path());
    let deploy = hand_deploy(d.path(), &model, &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = medinfer()
        .args(["serve", "--deploy", s(&deploy), "--deploy-name", "ct"])
        .args(["--port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = None;
    for _ in 0..240 {
        if let Some(r) = http_get(port, "/v2/models/ct/ready") {
            ready = Some(r);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let meta = http_get(port, "/v2/models/ct");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ready.map(|r| r.0), Some(200));
    let (status, body) = meta.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["name"], "ct");
    assert_eq!(v["platform"], "medinfer_tract");
}

#[test]
fn run_cardiac_takes_its_model_engine_and_batch_from_a_deployment() {
    let d = tmp();
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/cardiac/cardiac-unet.onnx");
    let deploy = hand_deploy(d.path(), &shipped, &["fpu"]);
    let exam = d.path().join("exam");
    let o = run(&["phantom", "cardiac", "-o", s(&exam), "--seed", "12"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let input = exam.join("cine.nii.gz");
    let deployed = json(&run(&[
        "run",
        "cardiac",
        s(&input),
        "--deploy",
        s(&deploy),
        "--json",
    ]));
    let plain = json(&run(&[
        "run",
        "cardiac",
        s(&input),
        "--model",
        s(&shipped),
        "--backend",
        "tract",
        "--json",
    ]));
    assert_eq!(deployed["backend"], "tract");
    let ef = |v: &Value| v["lv"]["ef_pct"].as_f64().unwrap();
    assert!(
        (ef(&deployed) - ef(&plain)).abs() < 0.01,
        "{deployed} {plain}"
    );
}

/// `--exhaustive --final-with LABEL`: the named candidate runs the final wave whatever its rank
/// in the waves, with the best `--finalists` and the anchor, for `--final-rounds` rounds; a
/// label that names no candidate is said so; the final-wave flags without `--exhaustive` are
/// refused.
#[test]
fn the_exhaustive_final_wave_takes_the_named_candidate_and_its_rounds() {
    let d = tmp();
    let (model, _calib, valid) = setup(d.path());
    let named = "tract fp32 1x2 b1";
    let base = |out: &str| -> Vec<String> {
        [
            "tune",
            s(&model),
            "--validate",
            s(&valid),
            "--backends",
            "tract",
            "--precisions",
            "fp32",
            "--objective",
            "throughput",
            "--batches",
            "1,2,4",
            "--budget",
            "40s",
            "-o",
            s(&d.path().join(out)),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let mut args = base("exh");
    args.extend(
        [
            "--exhaustive",
            "--rounds",
            "2",
            "--finalists",
            "1",
            "--final-rounds",
            "4",
            "--final-loads",
            "2",
            "--final-with",
            named,
            "--final-with",
            "no such candidate",
            "--json",
        ]
        .map(String::from),
    );
    let o = medinfer().args(&args).output().unwrap();
    let out = json(&o);
    let notes: Vec<&str> = out["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("final wave of 4 rounds over 2 fresh load(s)")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("not in the final wave: no such candidate")),
        "{notes:?}"
    );
    let cands = out["candidates"].as_array().unwrap();
    let rounds = |c: &Value| c["rounds"].as_array().unwrap().len();
    let anchor = out["anchor"].as_u64().unwrap() as usize;
    let timed: Vec<&Value> = cands.iter().filter(|c| rounds(c) > 0).collect();
    assert_eq!(timed.len(), 6, "tract x 2 layouts x 3 batches");
    let named_c = cands.iter().find(|c| c["label"] == named).unwrap();
    // One wave (6 candidates): the anchor and every other candidate run its 2 rounds, the
    // anchor and the finalists 4 more in the final.
    let finalists: Vec<&str> = cands
        .iter()
        .enumerate()
        .filter(|(i, c)| *i != anchor && rounds(c) > 2)
        .map(|(_, c)| c["label"].as_str().unwrap())
        .collect();
    if cands[anchor]["label"] != named {
        assert_eq!(rounds(named_c), 2 + 4, "{named_c}");
        assert!(finalists.contains(&named), "{finalists:?}");
    }
    // The final wave's rounds ran over two fresh loads of its members (the anchor's first
    // load served the first wave): loaded once for the wave, twice for the final.
    for (i, c) in cands.iter().enumerate() {
        let want = if i == anchor || finalists.contains(&c["label"].as_str().unwrap()) {
            3
        } else if rounds(c) > 0 {
            1
        } else {
            0
        };
        assert_eq!(c["loads"], want, "{c}");
    }
    assert!(
        finalists.len() <= 2,
        "one finalist plus the named: {finalists:?}"
    );
    for c in &timed {
        assert!(rounds(c) == 2 || rounds(c) == 6, "{c}");
    }
    // Without --exhaustive the final-wave flags mean nothing: refused.
    let mut args = base("plain");
    args.extend(["--final-rounds", "4"].map(String::from));
    let o = medinfer().args(&args).output().unwrap();
    assert_clean_failure(&o, &["--final-rounds", "--exhaustive"]);
}
