//! `medinfer serve` over a real socket (loopback): the Open Inference Protocol's endpoints,
//! JSON and binary tensors checked against the engine run directly, dynamic batching, a full
//! queue answered with 429, and faults (malformed and truncated bodies, wrong shapes and types,
//! a client that disconnects mid-body, a corrupt model in the repository) answered with clear
//! 4xx while the server keeps serving.

use medinfer_core::Tensor;
use medinfer_engine::{load_on, BackendKind, SessionOptions};
use medinfer_onnx::builder::{f32_value_info, DimSpec, GraphBuilder};
use medinfer_server::repo::Repository;
use medinfer_server::{AppState, ServerConfig};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A small classifier: [N, 2, 8, 8] -> conv -> relu -> global pool -> linear -> [N, 3].
fn classifier() -> medinfer_onnx::proto::ModelProto {
    let mut g = GraphBuilder::new(3);
    let c = g.conv("c", "x", 2, 4, 3, 1, 1, true);
    let r = g.relu("r", &c);
    let p = g.global_pool_flatten("p", &r);
    g.linear("y", &p, 4, 3);
    g.finish(
        "classifier",
        vec![f32_value_info(
            "x",
            &[
                DimSpec::Named("n".into()),
                DimSpec::Fixed(2),
                DimSpec::Fixed(8),
                DimSpec::Fixed(8),
            ],
        )],
        vec![f32_value_info(
            "y",
            &[DimSpec::Named("n".into()), DimSpec::Fixed(3)],
        )],
        &[],
    )
}

fn input(seed: u64, batch: usize) -> Vec<f32> {
    let mut r = medinfer_core::SeededRng::new(seed);
    (0..batch * 128).map(|_| r.normal() as f32).collect()
}

/// The reference: the same model run directly on tract.
fn reference(model: &Path, x: &[f32], batch: usize) -> Vec<f32> {
    let s = load_on(
        BackendKind::Tract,
        model,
        &SessionOptions {
            batch: Some(batch),
            ..Default::default()
        },
    )
    .unwrap();
    let t = Tensor::from_f32(vec![batch, 2, 8, 8], x.to_vec()).unwrap();
    s.run(&[t]).unwrap()[0].as_f32().unwrap().to_vec()
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the server on 127.0.0.1:0 over `dir`, checking models with the medinfer binary.
fn start(dir: &Path, config: ServerConfig) -> Server {
    let mut repo = Repository::new(
        dir.to_path_buf(),
        Some(env!("CARGO_BIN_EXE_medinfer").into()),
    );
    repo.load_all();
    let state = AppState::new(repo, config);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (atx, arx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            atx.send(l.local_addr().unwrap()).unwrap();
            medinfer_server::serve(l, state, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
    });
    Server {
        addr: arx.recv_timeout(Duration::from_secs(60)).unwrap(),
        stop: Some(tx),
        thread: Some(thread),
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection, bounded in time.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], b"")
}

fn post_json(addr: SocketAddr, path: &str, v: &Value) -> Reply {
    http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json".into())],
        v.to_string().as_bytes(),
    )
}

fn infer_json(x: &[f32], batch: usize) -> Value {
    json!({
        "id": "r1",
        "inputs": [{ "name": "x", "shape": [batch, 2, 8, 8], "datatype": "FP32", "data": x }]
    })
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(p, q)| (p - q).abs() <= 1e-5 * (1.0 + q.abs()))
}

fn repo_with(dir: &Path, name: &str, config: Value) -> std::path::PathBuf {
    let d = dir.join(name).join("1");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("model.onnx");
    medinfer_onnx::save_model(&classifier(), &p).unwrap();
    std::fs::write(dir.join(name).join("config.json"), config.to_string()).unwrap();
    p
}

#[test]
fn v2_protocol_json_and_binary_tensors_match_the_engine() {
    let d = tempfile::tempdir().unwrap();
    let model = repo_with(
        d.path(),
        "cls",
        json!({ "backend": "tract", "max_batch": 4, "instances": 2 }),
    );
    let srv = start(d.path(), ServerConfig::default());
    let a = srv.addr;

    assert_eq!(get(a, "/v2/health/live").status, 200);
    let r = get(a, "/v2/health/ready");
    assert_eq!((r.status, r.json()["ready"].clone()), (200, json!(true)));
    let r = get(a, "/v2");
    assert_eq!(r.json()["name"], "medinfer");
    assert!(r.json()["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    let meta = get(a, "/v2/models/cls").json();
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "x", "datatype": "FP32", "shape": [-1, 2, 8, 8]})
    );
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 3]));
    assert_eq!(get(a, "/v2/models/cls/versions/1").status, 200);
    assert_eq!(get(a, "/v2/models/cls/ready").status, 200);
    assert_eq!(get(a, "/v2/models/nope/ready").status, 404);
    assert_eq!(get(a, "/v2/models/cls/versions/7").status, 404);

    // JSON in, JSON out, batch 3.
    let x = input(1, 3);
    let want = reference(&model, &x, 3);
    let r = post_json(a, "/v2/models/cls/infer", &infer_json(&x, 3));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["id"], "r1");
    assert_eq!(v["model_name"], "cls");
    assert_eq!(v["outputs"][0]["shape"], json!([3, 3]));
    let got: Vec<f32> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert!(close(&got, &want), "{got:?} vs {want:?}");

    // Nested JSON data is read row-major too.
    let nested: Vec<Vec<f32>> = x.chunks(64).map(|c| c.to_vec()).collect();
    let r = post_json(
        a,
        "/v2/models/cls/versions/1/infer",
        &json!({"inputs": [{"name": "x", "shape": [3, 2, 8, 8], "datatype": "FP32", "data": nested}]}),
    );
    assert_eq!(r.status, 200);

    // Binary in, binary out (the binary tensor extension, as tritonclient sends it).
    let header = json!({
        "inputs": [{ "name": "x", "shape": [3, 2, 8, 8], "datatype": "FP32",
                     "parameters": { "binary_data_size": x.len() * 4 } }],
        "outputs": [{ "name": "y", "parameters": { "binary_data": true } }]
    })
    .to_string();
    let mut body = header.as_bytes().to_vec();
    for f in &x {
        body.extend_from_slice(&f.to_le_bytes());
    }
    let r = http(
        a,
        "POST",
        "/v2/models/cls/infer",
        &[("Inference-Header-Content-Length", header.len().to_string())],
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let n: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 36);
    let got: Vec<f32> = r.body[n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(close(&got, &want));
}

#[test]
fn dynamic_batching_merges_concurrent_requests_and_a_full_queue_gets_429() {
    let d = tempfile::tempdir().unwrap();
    let model = repo_with(
        d.path(),
        "cls",
        json!({ "backend": "tract", "max_batch": 8, "max_queue_delay_us": 50000, "max_queue": 64 }),
    );
    let srv = start(d.path(), ServerConfig::default());
    let a = srv.addr;
    // 16 concurrent single-item requests, each checked against its own reference.
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let m = model.clone();
            std::thread::spawn(move || {
                let x = input(100 + i, 1);
                let r = post_json(a, "/v2/models/cls/infer", &infer_json(&x, 1));
                assert_eq!(r.status, 200);
                let got: Vec<f32> = r.json()["outputs"][0]["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                assert!(close(&got, &reference(&m, &x, 1)), "request {i}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let st = get(a, "/v2/models/cls/stats").json();
    let s = &st["model_stats"][0];
    eprintln!("stats: {s}");
    assert_eq!(s["inference_count"], 16);
    assert!(s["largest_batch"].as_u64().unwrap() > 1, "{s}");
    assert!(s["execution_count"].as_u64().unwrap() < 16, "{s}");

    // A model with a queue of 1 and no batching, flooded: some 429 (with Retry-After), the rest
    // answered, never a 5xx.
    drop(srv);
    repo_with(
        d.path(),
        "tiny",
        json!({ "backend": "tract", "max_batch": 1, "max_queue_delay_us": 0, "max_queue": 1 }),
    );
    let srv = start(d.path(), ServerConfig::default());
    let a = srv.addr;
    let big = input(5, 64);
    let handles: Vec<_> = (0..24)
        .map(|_| {
            let body = infer_json(&big, 64);
            std::thread::spawn(move || {
                let r = post_json(a, "/v2/models/tiny/infer", &body);
                (r.status, r.header("retry-after").map(str::to_string))
            })
        })
        .collect();
    let res: Vec<(u16, Option<String>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = res.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = res.iter().filter(|r| r.0 == 429).collect();
    eprintln!("flood: {ok} answered, {} refused with 429", busy.len());
    assert!(res.iter().all(|r| r.0 == 200 || r.0 == 429), "{res:?}");
    assert!(ok >= 1 && !busy.is_empty(), "{res:?}");
    assert!(busy.iter().all(|r| r.1.as_deref() == Some("1")));
    // The other model kept serving throughout.
    assert_eq!(
        post_json(a, "/v2/models/cls/infer", &infer_json(&input(9, 1), 1)).status,
        200
    );
}

/// A bad request: what it is, body, extra headers, expected status, text the answer names.
type Case = (
    &'static str,
    Vec<u8>,
    Vec<(&'static str, String)>,
    u16,
    &'static str,
);

#[test]
fn bad_requests_get_clear_4xx_and_the_server_stays_up() {
    let d = tempfile::tempdir().unwrap();
    repo_with(d.path(), "cls", json!({ "backend": "tract" }));
    // A corrupt model and a model with a config that is not valid: both reported, not fatal.
    let bad = d.path().join("corrupt").join("1");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("model.onnx"),
        b"\x08\x07this is not an onnx model at all",
    )
    .unwrap();
    let odd = d.path().join("odd").join("1");
    std::fs::create_dir_all(&odd).unwrap();
    medinfer_onnx::save_model(&classifier(), &odd.join("model.onnx")).unwrap();
    std::fs::write(
        d.path().join("odd").join("config.json"),
        r#"{"max_btach": 4}"#,
    )
    .unwrap();
    let srv = start(
        d.path(),
        ServerConfig {
            max_body_bytes: 1 << 20,
            ..Default::default()
        },
    );
    let a = srv.addr;
    let idx = post_json(a, "/v2/repository/index", &json!({})).json();
    eprintln!("index: {idx}");
    let state = |n: &str| {
        idx.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(state("cls")["state"], "READY");
    assert_eq!(state("corrupt")["state"], "UNAVAILABLE");
    assert!(state("corrupt")["reason"]
        .as_str()
        .unwrap()
        .contains("model.onnx"));
    assert!(state("odd")["reason"]
        .as_str()
        .unwrap()
        .contains("max_btach"));
    let r = post_json(a, "/v2/models/corrupt/infer", &infer_json(&input(1, 1), 1));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("failed to load"));

    let path = "/v2/models/cls/infer";
    let x = input(2, 1);
    let cases: Vec<Case> = vec![
        ("malformed JSON", b"{\"inputs\": [".to_vec(), vec![], 400, "request JSON"),
        (
            "wrong shape",
            json!({"inputs": [{"name": "x", "shape": [1, 2, 8, 9], "datatype": "FP32", "data": vec![0.0; 144]}]}).to_string().into_bytes(),
            vec![], 400, "shape",
        ),
        (
            "too few values",
            json!({"inputs": [{"name": "x", "shape": [1, 2, 8, 8], "datatype": "FP32", "data": [1.0, 2.0]}]}).to_string().into_bytes(),
            vec![], 400, "2 values",
        ),
        (
            "wrong datatype",
            json!({"inputs": [{"name": "x", "shape": [1, 2, 8, 8], "datatype": "INT64", "data": vec![0; 128]}]}).to_string().into_bytes(),
            vec![], 400, "INT64",
        ),
        (
            "unknown datatype",
            json!({"inputs": [{"name": "x", "shape": [1, 2, 8, 8], "datatype": "BYTES", "data": vec![0; 128]}]}).to_string().into_bytes(),
            vec![], 400, "BYTES",
        ),
        (
            "wrong input name",
            json!({"inputs": [{"name": "image", "shape": [1, 2, 8, 8], "datatype": "FP32", "data": x}]}).to_string().into_bytes(),
            vec![], 400, "'x' is missing",
        ),
        (
            "string where a number goes",
            json!({"inputs": [{"name": "x", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": ["a", 1]}]}).to_string().into_bytes(),
            vec![], 400, "not FP32",
        ),
        {
            let h = json!({"inputs": [{"name": "x", "shape": [1, 2, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": 512}}]}).to_string();
            let n = h.len();
            let mut b = h.into_bytes();
            b.extend_from_slice(&[0u8; 100]);
            (
                "truncated binary body",
                b,
                vec![("Inference-Header-Content-Length", n.to_string())],
                400,
                "ends after 100 of its 512",
            )
        },
        (
            "header length beyond the body",
            b"{}".to_vec(),
            vec![("Inference-Header-Content-Length", "999".into())],
            400, "only 2 bytes",
        ),
        (
            "huge claimed shape",
            json!({"inputs": [{"name": "x", "shape": [100000, 2, 100000, 100000], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}).to_string().into_bytes(),
            vec![], 413, "elements",
        ),
        ("body over the limit", vec![b' '; 2 << 20], vec![], 413, ""),
    ];
    for (what, body, headers, status, needle) in cases {
        let r = http(a, "POST", path, &headers, &body);
        let text = String::from_utf8_lossy(&r.body).to_string();
        eprintln!("{what}: {} {text}", r.status);
        assert_eq!(r.status, status, "{what}: {text}");
        assert!(
            text.contains(needle),
            "{what}: '{needle}' missing from {text}"
        );
    }

    // A client that sends half its body and goes away.
    {
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(b"POST /v2/models/cls/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"inputs\": [")
            .unwrap();
    }
    // A client that disconnects while its request is queued or running.
    {
        let mut s = TcpStream::connect(a).unwrap();
        let b = infer_json(&input(4, 256), 256).to_string();
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )
            .as_bytes(),
        )
        .unwrap();
    }
    // Still serving, every model that loaded.
    let r = post_json(a, path, &infer_json(&x, 1));
    assert_eq!(r.status, 200);
    assert_eq!(get(a, "/v2/health/ready").status, 200);
    // Unload and reload through the repository API.
    assert_eq!(
        post_json(a, "/v2/repository/models/cls/unload", &json!({})).status,
        200
    );
    assert_eq!(post_json(a, path, &infer_json(&x, 1)).status, 404);
    assert_eq!(
        post_json(a, "/v2/repository/models/cls/load", &json!({})).status,
        200
    );
    assert_eq!(post_json(a, path, &infer_json(&x, 1)).status, 200);
    assert_eq!(
        post_json(a, "/v2/repository/models/corrupt/load", &json!({})).status,
        400
    );
    assert_eq!(
        post_json(a, "/v2/repository/models/..%2Fetc/load", &json!({})).status,
        400
    );
}

#[test]
fn cxr_pipeline_endpoint_gives_the_command_line_scores() {
    let d = tempfile::tempdir().unwrap();
    let mdir = d.path().join("chest").join("1");
    std::fs::create_dir_all(&mdir).unwrap();
    let model = mdir.join("model.onnx");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_medinfer"))
        .args([
            "zoo",
            "build",
            "densenet121-cxr",
            "-o",
            model.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::write(
        d.path().join("chest").join("config.json"),
        json!({"backend": "tract", "pipeline": "cxr"}).to_string(),
    )
    .unwrap();
    repo_with(d.path(), "cls", json!({ "backend": "tract" }));
    let srv = start(d.path(), ServerConfig::default());
    let a = srv.addr;
    let images = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../medinfer-pipelines/tests/fixtures/xrv/images");
    for name in ["cr_u16_640x520.png", "chelsea_rgb_300x451.png"] {
        let png = images.join(name);
        let r = http(
            a,
            "POST",
            "/v1/pipelines/cxr/chest",
            &[("Content-Type", "image/png".into())],
            &std::fs::read(&png).unwrap(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let got = r.json();
        // The same file through `medinfer run cxr --json` with the same model.
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_medinfer"))
            .args([
                "run",
                "cxr",
                "--model",
                model.to_str().unwrap(),
                "-b",
                "tract",
                "--json",
            ])
            .arg(&png)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line = String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap()
            .to_string();
        let want: Value = serde_json::from_str(&line).unwrap();
        let (g, w) = (
            got["scores"].as_object().unwrap(),
            want["scores"].as_object().unwrap(),
        );
        assert_eq!(g.len(), 18);
        assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
        for (k, v) in w {
            let (x, y) = (g[k].as_f64().unwrap(), v.as_f64().unwrap());
            assert!(
                (x - y).abs() < 1e-5,
                "{name} {k}: served {x}, command line {y}"
            );
        }
    }
    // Not an image; a model without the pipeline; an empty body.
    let r = http(
        a,
        "POST",
        "/v1/pipelines/cxr/chest",
        &[],
        b"not an image at all",
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(!String::from_utf8_lossy(&r.body).contains("medinfer-serve-"));
    assert_eq!(
        http(a, "POST", "/v1/pipelines/cxr/cls", &[], b"x").status,
        400
    );
    assert_eq!(
        http(a, "POST", "/v1/pipelines/cxr/chest", &[], b"").status,
        400
    );
    assert_eq!(
        http(a, "POST", "/v1/pipelines/cxr/none", &[], b"x").status,
        404
    );
}

fn zip_dir(dir: &Path, prefix: &str) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let name = format!("{prefix}{}", f.file_name().unwrap().to_string_lossy());
        z.start_file(name, opts).unwrap();
        z.write_all(&std::fs::read(&f).unwrap()).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

/// A multipart/form-data body with one file part per entry.
fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "medinfer-test-boundary-7d1f";
    let mut b = Vec::new();
    for (name, data) in files {
        b.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

/// A DICOMweb STOW-RS body: `multipart/related; type="application/dicom"`, one part per
/// instance (no file names, as STOW-RS clients send them).
fn multipart_related(instances: &[Vec<u8>]) -> (String, Vec<u8>) {
    let boundary = "Stow-Boundary-0f3c";
    let mut b = Vec::new();
    for data in instances {
        b.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/related; type=\"application/dicom\"; boundary=\"{boundary}\""),
        b,
    )
}

/// Polls a job until it is done or failed (at most two minutes).
fn wait_job(addr: SocketAddr, location: &str) -> Value {
    let t0 = std::time::Instant::now();
    loop {
        let r = get(addr, location);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        if v["status"] == "done" || v["status"] == "failed" {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "job still {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli_json(args: &[&str]) -> Value {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_medinfer"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    serde_json::from_str(text.trim())
        .or_else(|_| serde_json::from_str(text.lines().find(|l| l.starts_with('{')).unwrap()))
        .unwrap()
}

fn assert_same_numbers(got: &Value, want: &Value, what: &str) {
    for key in ["edv_ml", "esv_ml", "ef_pct"] {
        for chamber in ["lv", "rv"] {
            let (g, w) = (
                got[chamber][key].as_f64().unwrap(),
                want[chamber][key].as_f64().unwrap(),
            );
            assert!(
                (g - w).abs() < 1e-6,
                "{what} {chamber}.{key}: served {g}, command line {w}"
            );
        }
    }
    assert_eq!(got["ed_phase"], want["ed_phase"], "{what}");
    assert_eq!(got["es_phase"], want["es_phase"], "{what}");
    assert_eq!(got["curves"], want["curves"], "{what}");
}

#[test]
fn cardiac_jobs_from_a_dicom_zip_and_a_multipart_nifti_match_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let mdir = d.path().join("heart").join("1");
    std::fs::create_dir_all(&mdir).unwrap();
    let model = mdir.join("model.onnx");
    std::fs::copy(
        medinfer_pipelines::models::shipped_cardiac(false).unwrap(),
        &model,
    )
    .unwrap();
    std::fs::write(
        d.path().join("heart").join("config.json"),
        json!({"backend": "tract", "pipeline": "cardiac", "max_queue": 2}).to_string(),
    )
    .unwrap();
    repo_with(d.path(), "cls", json!({ "backend": "tract" }));
    let upload = medinfer_server::upload::UploadLimits {
        max_files: 1000,
        max_bytes: 48 << 20,
    };
    let srv = start(
        d.path(),
        ServerConfig {
            upload,
            ..Default::default()
        },
    );
    let a = srv.addr;
    let exam = d.path().join("exam");
    for format in ["dicom", "nifti"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_medinfer"))
            .args([
                "phantom", "cardiac", "--seed", "5", "--format", format, "-o",
            ])
            .arg(exam.join(format))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let m = model.to_str().unwrap();
    let dicom = exam.join("dicom/dicom");
    let nifti = exam.join("nifti/cine.nii.gz");

    // A DICOM series as a zip (in a sub-folder of the archive, as exports come).
    let r = http(
        a,
        "POST",
        "/v1/pipelines/cardiac/heart",
        &[("Content-Type", "application/zip".into())],
        &zip_dir(&dicom, "study/series 1/"),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").unwrap().to_string();
    let job = wait_job(a, &location);
    assert_eq!(job["status"], "done", "{job}");
    let want = cli_json(&[
        "run",
        "cardiac",
        dicom.to_str().unwrap(),
        "--model",
        m,
        "-b",
        "tract",
        "--json",
    ]);
    assert_same_numbers(&job["report"], &want, "dicom zip");
    assert_eq!(job["report"]["input"], "upload");
    // Its files: the overlay is a PNG, the viewer's labels match the masks' geometry.
    let files = job["files"].as_object().unwrap();
    for f in [
        "report.json",
        "masks.nii.gz",
        "ed_es.png",
        "volumes.svg",
        "image.u8",
        "labels.u8",
    ] {
        assert!(files.contains_key(f), "{f} missing: {job}");
    }
    let png = get(a, files["ed_es.png"].as_str().unwrap());
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert!(png.body.starts_with(b"\x89PNG"));
    let dims: Vec<usize> = job["viewer"]["dims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let labels = get(a, files["labels.u8"].as_str().unwrap()).body;
    assert_eq!(labels.len(), dims.iter().product::<usize>());
    assert!(labels.contains(&1) && labels.iter().all(|&l| l <= 3));

    // The same series stored over DICOMweb STOW-RS: every instance acknowledged by its SOP
    // instance UID (read here with dicom-rs's own object reader), the analysis the same.
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dicom)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let instances: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let stow_post = |ctype: &str, body: &[u8]| {
        http(
            a,
            "POST",
            "/v1/pipelines/cardiac/heart/studies",
            &[("Content-Type", ctype.to_string())],
            body,
        )
    };
    let (ctype, body) = multipart_related(&instances);
    let r = stow_post(&ctype, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/dicom+json"));
    let stow = r.json();
    let refs = stow["00081199"]["Value"].as_array().unwrap();
    assert_eq!(refs.len(), files.len());
    for (f, item) in files.iter().zip(refs) {
        let obj = dicom_object::open_file(f).unwrap();
        let uid = obj
            .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string();
        assert_eq!(item["00081155"]["Value"][0], uid.as_str());
    }
    let job_url = stow["00081190"]["Value"][0].as_str().unwrap();
    assert_eq!(r.header("location"), Some(job_url));
    let job3 = wait_job(a, job_url);
    assert_eq!(job3["status"], "done", "{job3}");
    assert_same_numbers(&job3["report"], &want, "dicom over STOW-RS");
    // STOW-RS refusals: another media type, a part that is not DICOM, no boundary. (Refusals
    // by header come before the body is read, so those requests carry a small one.)
    let small = multipart_related(&[b"x".to_vec()]).1;
    let wrong = ctype.replace("application/dicom", "application/dicom+json");
    let r = stow_post(&wrong, &small);
    assert_eq!(r.status, 415, "{}", String::from_utf8_lossy(&r.body));
    let (ctype2, junk) = multipart_related(&[instances[0].clone(), b"not dicom".to_vec()]);
    let r = stow_post(&ctype2, &junk);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("part 2"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = stow_post("multipart/related; type=application/dicom", &small);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    // A NIfTI as a multipart part.
    let (ctype, body) = multipart(&[("cine.nii.gz", &std::fs::read(&nifti).unwrap())]);
    let r = http(
        a,
        "POST",
        "/v1/pipelines/cardiac/heart",
        &[("Content-Type", ctype)],
        &body,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let job2 = wait_job(a, r.header("location").unwrap());
    assert_eq!(job2["status"], "done", "{job2}");
    let want = cli_json(&[
        "run",
        "cardiac",
        nifti.to_str().unwrap(),
        "--model",
        m,
        "-b",
        "tract",
        "--json",
    ]);
    assert_same_numbers(&job2["report"], &want, "multipart nifti");

    // Hostile zips: a climbing entry name, a bomb (128 MiB of zeros in ~128 kB), a zip of junk.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            zip_of(&[("ok/1.dcm", b"x"), ("../../etc/cron.d/evil", b"x")]),
            "outside the archive",
        ),
        (zip_of(&[("/abs.dcm", b"x")]), "outside the archive"),
        (zip_of(&[("bomb.dcm", &vec![0u8; 128 << 20])]), "zip bomb"),
        (
            b"PK\x03\x04 this is not really a zip".to_vec(),
            "not a readable zip",
        ),
    ];
    for (body, why) in &cases {
        let r = http(
            a,
            "POST",
            "/v1/pipelines/cardiac/heart",
            &[("Content-Type", "application/zip".into())],
            body,
        );
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!((400..500).contains(&r.status), "{why}: {} {text}", r.status);
        assert!(text.contains(why), "{why}: {text}");
    }
    assert!(!d.path().join("etc").exists());
    // A study the pipeline refuses runs as a job that fails with the reason.
    let r = http(
        a,
        "POST",
        "/v1/pipelines/cardiac/heart",
        &[],
        b"neither DICOM nor NIfTI",
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let failed = wait_job(a, r.header("location").unwrap());
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("upload"),
        "{failed}"
    );
    assert!(!failed
        .to_string()
        .contains(&std::env::temp_dir().display().to_string()));
    // Wrong pipeline for the model, unknown pipeline, unknown job.
    assert_eq!(
        http(a, "POST", "/v1/pipelines/ct/heart", &[], b"x").status,
        400
    );
    assert_eq!(
        http(a, "POST", "/v1/pipelines/liver/heart", &[], b"x").status,
        404
    );
    assert_eq!(get(a, "/v1/jobs/nope").status, 404);
    assert_eq!(
        get(a, &format!("{location}/files/../../etc/passwd")).status,
        404
    );
    // A finished job can be deleted; its files go with it.
    assert_eq!(http(a, "DELETE", &location, &[], b"").status, 200);
    assert_eq!(get(a, &location).status, 404);
    // The other model still serves, and the counters say what happened.
    let x = input(3, 1);
    let r = post_json(a, "/v2/models/cls/infer", &infer_json(&x, 1));
    assert_eq!(r.status, 200);
    let metrics = String::from_utf8_lossy(&get(a, "/metrics").body).to_string();
    assert!(
        metrics.contains("nv_inference_request_success{model=\"cls\",version=\"1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("medinfer_batch_size_bucket{model=\"cls\",version=\"1\",le=\"1\"} 1"),
        "{metrics}"
    );
    assert!(
        // The multipart NIfTI's and the STOW-RS study's (the zip's was deleted).
        metrics.contains("medinfer_jobs{state=\"done\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("medinfer_http_responses{code=\"202\"}"),
        "{metrics}"
    );
}

#[test]
fn ct_job_tags_an_uploaded_series_like_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let mdir = d.path().join("ct").join("1");
    std::fs::create_dir_all(&mdir).unwrap();
    let model = mdir.join("model.onnx");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_medinfer"))
        .args(["zoo", "build", "resnet18-ct", "-o", model.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::write(
        d.path().join("ct").join("config.json"),
        json!({"backend": "tract", "pipeline": "ct"}).to_string(),
    )
    .unwrap();
    let series = d.path().join("series");
    std::fs::create_dir_all(&series).unwrap();
    let n = 48;
    let data: Vec<f32> = (0..n * n * 5)
        .map(|i| {
            let (x, y, z) = (
                (i % n) as f32 - 24.0,
                ((i / n) % n) as f32 - 24.0,
                (i / n / n) as f32,
            );
            if x * x + y * y < 300.0 + 40.0 * z {
                40.0 + 10.0 * z
            } else {
                -1000.0
            }
        })
        .collect();
    let v = medinfer_core::Volume::new([n, n, 5, 1], data, [0.7, 0.7, 3.0, 0.0]).unwrap();
    let info = medinfer_io::dicom_write::SeriesInfo {
        modality: "CT".into(),
        description: "synthetic".into(),
        uid_seed: 9,
        slice_thickness: 3.0,
        rescale_intercept: -1024.0,
        ..Default::default()
    };
    let files = medinfer_io::dicom_write::write_series(&series, &v, &info).unwrap();
    let srv = start(d.path(), ServerConfig::default());
    let a = srv.addr;
    // The slices as multipart parts, in reverse order: the pipeline orders them by position.
    let parts: Vec<(String, Vec<u8>)> = files
        .iter()
        .rev()
        .map(|f| {
            (
                f.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(f).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = parts
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let (ctype, body) = multipart(&refs);
    let r = http(
        a,
        "POST",
        "/v1/pipelines/ct/ct",
        &[("Content-Type", ctype)],
        &body,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let job = wait_job(a, r.header("location").unwrap());
    assert_eq!(job["status"], "done", "{job}");
    let want = cli_json(&[
        "run",
        "ct",
        series.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "-b",
        "tract",
        "--json",
    ]);
    let (g, w) = (
        job["report"]["slices"].as_array().unwrap(),
        want["report"]["slices"].as_array().unwrap(),
    );
    assert_eq!(g.len(), 5);
    assert_eq!(g.len(), w.len());
    for (s, t) in g.iter().zip(w) {
        assert_eq!(s["region"], t["region"]);
        let (p, q) = (
            s["probabilities"].as_array().unwrap(),
            t["probabilities"].as_array().unwrap(),
        );
        for (x, y) in p.iter().zip(q) {
            assert!(
                (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5,
                "{s} vs {t}"
            );
        }
    }
    assert_eq!(job["viewer"]["dims"], json!([n, n, 5, 1]));
}

#[test]
fn a_bearer_token_guards_everything_but_the_probes_and_requests_carry_an_id() {
    let d = tempfile::tempdir().unwrap();
    repo_with(d.path(), "cls", json!({ "backend": "tract" }));
    let srv = start(
        d.path(),
        ServerConfig {
            token: Some("s3cret-token".into()),
            ..Default::default()
        },
    );
    let a = srv.addr;
    assert_eq!(get(a, "/v2/health/ready").status, 200);
    assert_eq!(get(a, "/v2/health/live").status, 200);
    let r = get(a, "/v2/models/cls");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert!(r.header("x-request-id").is_some());
    let wrong = http(
        a,
        "GET",
        "/v2/models/cls",
        &[("Authorization", "Bearer s3cret-tokeN".into())],
        b"",
    );
    assert_eq!(wrong.status, 401);
    let x = input(1, 1);
    let r = http(
        a,
        "POST",
        "/v2/models/cls/infer",
        &[
            ("Authorization", "Bearer s3cret-token".into()),
            ("X-Request-Id", "trace-42".into()),
            ("Content-Type", "application/json".into()),
        ],
        infer_json(&x, 1).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    let m = String::from_utf8_lossy(&get(a, "/metrics").body).to_string();
    assert!(m.contains("medinfer_http_responses{code=\"401\"} 2"), "{m}");
}
