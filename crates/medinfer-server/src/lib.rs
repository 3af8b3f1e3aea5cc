//! # medinfer-server
//!
//! `medinfer serve`: the Open Inference Protocol (KServe v2) REST API over a model repository,
//! with dynamic batching, bounded queues, request limits and graceful shutdown.
//!
//! - [`app`] builds the axum `Router` (testable without a socket); [`serve`] runs it on a
//!   listener until a shutdown signal, then drains in-flight requests.
//! - [`repo`]: the model repository (`DIR/{name}/{version}/model.onnx` + `config.json`),
//!   models checked in a child process before loading.
//! - [`batcher`]: per-model dynamic batching on a worker thread.
//! - [`v2`]: the protocol's JSON and binary tensor messages.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod batcher;
pub mod jobs;
pub mod observe;
pub mod repo;
pub mod upload;
pub mod v2;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use batcher::{Job, Rejected};
use repo::Repository;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use v2::ProtocolError;

/// Limits of the HTTP side.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request body (bytes); larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest tensor (elements) a request may carry.
    pub max_elements: usize,
    /// Longest a request may wait for its result (queue + inference); then 503.
    pub request_timeout: Duration,
    /// What one study upload may unpack to (files, bytes after unzipping).
    pub upload: upload::UploadLimits,
    /// How long a finished pipeline job and its outputs are kept.
    pub job_ttl: Duration,
    /// Most jobs kept at once (queued, running and finished); when all are unfinished, 429.
    pub max_jobs: usize,
    /// Folder for uploads and job outputs (default: a fresh folder under the system temp
    /// folder); removed when the server stops.
    pub work_dir: Option<std::path::PathBuf>,
    /// When set, every request but the probes, `/metrics` and the viewer's page must carry
    /// `Authorization: Bearer <token>` (else 401).
    pub token: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 64 << 20,
            max_elements: 64 << 20,
            request_timeout: Duration::from_secs(30),
            upload: Default::default(),
            job_ttl: Duration::from_secs(3600),
            max_jobs: 256,
            work_dir: None,
            token: None,
        }
    }
}

/// Everything the handlers share.
pub struct AppState {
    /// The model repository.
    pub repo: RwLock<Repository>,
    /// Limits.
    pub config: ServerConfig,
    /// Set when shutdown begins: readiness turns false so balancers stop sending.
    pub draining: AtomicBool,
    /// Pipeline jobs.
    pub jobs: Arc<jobs::JobStore>,
    /// HTTP counters for `/metrics`.
    pub http: observe::HttpStats,
}

impl AppState {
    /// State over a repository (load its models first with [`Repository::load_all`]).
    pub fn new(repo: Repository, config: ServerConfig) -> Arc<AppState> {
        let root = config.work_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "medinfer-serve-{}-{}",
                std::process::id(),
                NEXT_UPLOAD.fetch_add(1, Ordering::Relaxed)
            ))
        });
        let jobs = Arc::new(jobs::JobStore::new(root, config.job_ttl, config.max_jobs));
        Arc::new(AppState {
            repo: RwLock::new(repo),
            config,
            draining: AtomicBool::new(false),
            jobs,
            http: Default::default(),
        })
    }

    fn repo(&self) -> std::sync::RwLockReadGuard<'_, Repository> {
        // A panic while holding the lock cannot leave the map half-written (inserts are
        // single calls), so a poisoned lock is still usable.
        self.repo.read().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn error(status: u16, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl IntoResponse for ProtocolError {
    /// `{"error": message}` with the status; a 429 also says when to retry.
    fn into_response(self) -> Response {
        let mut r = error(self.status, self.message);
        if self.status == 429 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// Queues `inputs` on the model's batcher and waits for its outputs (429 when the queue is
/// full, 503 on timeout or unload, 400 for inputs the engine refuses, 500 otherwise).
async fn submit_and_wait(
    s: &AppState,
    m: &repo::LoadedModel,
    inputs: Vec<medinfer_core::Tensor>,
) -> Result<Vec<medinfer_core::Tensor>, ProtocolError> {
    let fail = |status: u16, message: String| ProtocolError { status, message };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        inputs,
        reply: tx,
        queued: Instant::now(),
    };
    match m.batcher.submit(job) {
        Ok(()) => {}
        Err(Rejected::QueueFull) => {
            return Err(fail(
                429,
                format!(
                    "model '{}' has {} requests waiting (its max_queue); retry later",
                    m.name, m.config.max_queue
                ),
            ))
        }
        Err(Rejected::Stopped) => {
            return Err(fail(503, format!("model '{}' is being unloaded", m.name)))
        }
    }
    match tokio::time::timeout(s.config.request_timeout, rx).await {
        Err(_) => Err(fail(
            503,
            format!(
                "no result within {:.0} s (queue and inference)",
                s.config.request_timeout.as_secs_f64()
            ),
        )),
        Ok(Err(_)) => Err(fail(500, "the model's worker stopped".into())),
        Ok(Ok(Err(medinfer_engine::EngineError::BadInput(msg)))) => Err(fail(400, msg)),
        Ok(Ok(Err(e))) => Err(fail(500, e.to_string())),
        Ok(Ok(Ok(o))) => Ok(o),
    }
}

/// The router of the whole API.
pub fn app(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(viewer))
        .route("/metrics", get(observe::metrics))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({ "live": true })) }),
        )
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route("/v1/pipelines", get(pipelines))
        .route("/v1/pipelines/{pipeline}/{name}", post(pipeline))
        // DICOMweb STOW-RS: a client whose base URL is /v1/pipelines/{pipeline}/{name} stores
        // a study at {base}/studies (multipart/related; type="application/dicom").
        .route("/v1/pipelines/{pipeline}/{name}/studies", post(pipeline))
        .route("/v1/jobs/{id}", get(job_status).delete(job_delete))
        .route("/v1/jobs/{id}/files/{file}", get(job_file))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(repository_load))
        .route(
            "/v2/repository/models/{name}/unload",
            post(repository_unload),
        )
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::layer,
        ))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish, and unloads the models (their queues drain first).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let st = state.clone();
    let signal = async move {
        shutdown.await;
        st.draining.store(true, Ordering::SeqCst);
    };
    axum::serve(listener, app(state.clone()))
        .with_graceful_shutdown(signal)
        .await?;
    let repo = std::mem::replace(
        &mut *state.repo.write().unwrap_or_else(|p| p.into_inner()),
        Repository::new(Default::default(), None),
    );
    tokio::task::spawn_blocking(move || drop(repo))
        .await
        .map_err(std::io::Error::other)?;
    Ok(())
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let draining = s.draining.load(Ordering::SeqCst);
    let repo = s.repo();
    let any = !repo.loaded.is_empty();
    if any && !draining {
        Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({ "ready": false, "draining": draining, "models_loaded": repo.loaded.len() }),
            ),
        )
            .into_response()
    }
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "medinfer",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository", "statistics"],
    }))
}

fn find(
    s: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<repo::LoadedModel>, ProtocolError> {
    let repo = s.repo();
    repo.get(name, version).ok_or_else(|| {
        let why = repo
            .failures
            .get(name)
            .map(|r| format!(": it failed to load: {r}"))
            .unwrap_or_default();
        ProtocolError {
            status: 404,
            message: match version {
                Some(v) => format!("model '{name}' version '{v}' is not loaded{why}"),
                None => format!("model '{name}' is not loaded{why}"),
            },
        }
    })
}

fn metadata(s: &AppState, name: &str, version: Option<&str>) -> Response {
    let m = match find(s, name, version) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let versions: Vec<String> = s
        .repo()
        .loaded
        .get(name)
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    let tensors = |v: &[(String, medinfer_core::DType, Vec<i64>)]| {
        v.iter()
            .map(|(n, t, d)| json!({ "name": n, "datatype": v2::datatype_name(*t), "shape": d }))
            .collect::<Vec<_>>()
    };
    Json(json!({
        "name": m.name,
        "versions": versions,
        "platform": format!("medinfer_{}", m.backend.name()),
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
        "parameters": {
            "max_batch_size": m.config.max_batch,
            "max_queue_delay_microseconds": m.config.max_queue_delay_us,
            "max_queue_size": m.config.max_queue,
        }
    }))
    .into_response()
}

async fn model_metadata(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    metadata(&s, &name, None)
}

async fn model_metadata_v(
    State(s): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata(&s, &name, Some(&version))
}

fn readiness(s: &AppState, name: &str, version: Option<&str>) -> Response {
    match find(s, name, version) {
        Ok(_) => Json(json!({ "name": name, "ready": true })).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn model_ready(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    readiness(&s, &name, None)
}

async fn model_ready_v(
    State(s): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    readiness(&s, &name, Some(&version))
}

async fn model_stats(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let m = match find(&s, &name, None) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let st = &m.batcher.stats;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Json(json!({
        "model_stats": [{
            "name": m.name,
            "version": m.version,
            "inference_stats": {
                "success": { "count": g(&st.success) },
                "fail": { "count": g(&st.failed) },
                "rejected": { "count": g(&st.rejected) },
                "queue": { "ns": g(&st.queue_ns) },
                "compute_infer": { "ns": g(&st.compute_ns) },
            },
            "execution_count": g(&st.batches),
            "inference_count": g(&st.items),
            "largest_batch": g(&st.largest_batch),
            "queued_now": g(&st.queued_now),
        }]
    }))
    .into_response()
}

async fn infer(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_infer(s, name, None, headers, body).await
}

async fn infer_v(
    State(s): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_infer(s, name, Some(version), headers, body).await
}

async fn run_infer(
    s: Arc<AppState>,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let m = match find(&s, &name, version.as_deref()) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let header_len = match headers.get(v2::HEADER_LENGTH).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return error(400, format!("{}: not text", v2::HEADER_LENGTH)),
    };
    let (req, tail) = match v2::split_body(&body, header_len) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let decoded = match v2::decode_inputs(&req, tail, s.config.max_elements) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let inputs = match order_inputs(&m, decoded) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let outs = match submit_and_wait(&s, &m, inputs).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let named: Vec<(String, medinfer_core::Tensor)> = m
        .outputs
        .iter()
        .map(|(n, _, _)| n.clone())
        .zip(outs)
        .collect();
    match v2::encode_response(&m.name, &m.version, &req, named) {
        Ok((body, None)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Ok((body, Some(n))) => Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(v2::HEADER_LENGTH, n.to_string())
            .body(Body::from(body))
            .unwrap_or_else(|e| error(500, e.to_string())),
        Err(e) => e.into_response(),
    }
}

/// Puts the request's inputs in the model's order and checks names, types and shapes.
fn order_inputs(
    m: &repo::LoadedModel,
    mut given: Vec<(String, medinfer_core::Tensor)>,
) -> Result<Vec<medinfer_core::Tensor>, ProtocolError> {
    if given.len() != m.inputs.len() {
        return Err(ProtocolError::bad(format!(
            "model '{}' takes {} input(s) ({}), the request has {}",
            m.name,
            m.inputs.len(),
            m.inputs
                .iter()
                .map(|(n, _, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            given.len()
        )));
    }
    let mut out = Vec::with_capacity(m.inputs.len());
    let mut batch = None;
    for (name, dtype, dims) in &m.inputs {
        let k = given
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| ProtocolError::bad(format!("input '{name}' is missing")))?;
        let (_, t) = given.swap_remove(k);
        if t.dtype() != *dtype {
            return Err(ProtocolError::bad(format!(
                "input '{name}' is {}, the model takes {}",
                v2::datatype_name(t.dtype()),
                v2::datatype_name(*dtype)
            )));
        }
        if !repo::spec_matches(dims, t.shape()) {
            return Err(ProtocolError::bad(format!(
                "input '{name}' has shape {:?}, the model takes {:?} (-1 = any)",
                t.shape(),
                dims
            )));
        }
        let b = t.shape().first().copied();
        if batch.is_some() && batch != b {
            return Err(ProtocolError::bad(
                "inputs disagree on the batch size (first dimension)",
            ));
        }
        if b == Some(0) {
            return Err(ProtocolError::bad(format!(
                "input '{name}' has an empty batch"
            )));
        }
        batch = b;
        out.push(t);
    }
    Ok(out)
}

async fn repository_index(State(s): State<Arc<AppState>>) -> Response {
    let idx = s.repo().index();
    Json(idx).into_response()
}

async fn repository_load(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    if !repo::valid_name(&name) {
        return error(400, format!("'{name}' is not a model name"));
    }
    let (dir, checker) = s.repo().source();
    let n = name.clone();
    let prepared =
        tokio::task::spawn_blocking(move || repo::prepare(&dir, checker.as_deref(), &n)).await;
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return error(500, e.to_string()),
    };
    let r = s
        .repo
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .install(&name, prepared);
    match r {
        Ok(()) => Json(json!({ "name": name, "loaded": true })).into_response(),
        Err(repo::RepoError::NotFound(n)) => {
            error(404, format!("model '{n}' is not in the repository"))
        }
        Err(e) => error(400, e.to_string()),
    }
}

async fn repository_unload(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let removed = s
        .repo
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .unload(&name);
    match removed {
        Some(v) => {
            // Dropping a batcher joins its worker after the queue drains: not on the runtime.
            let _ = tokio::task::spawn_blocking(move || drop(v)).await;
            Json(json!({ "name": name, "unloaded": true })).into_response()
        }
        None => error(404, format!("model '{name}' is not loaded")),
    }
}

/// `POST /v1/pipelines/cxr/{model}`: a radiograph (PNG 8 / 16-bit, JPEG or DICOM) as the body;
/// the answer is the same JSON record as `medinfer run cxr --json` gives for a file (scores by
/// label, TorchXRayVision-exact preprocessing), computed through the model's batcher, so
/// pipeline requests and tensor requests share its batches.
async fn pipeline_cxr(s: Arc<AppState>, m: Arc<repo::LoadedModel>, body: Bytes) -> Response {
    let Some(cxr) = m.cxr.clone() else {
        return not_served(&m.name, "cxr");
    };
    if body.is_empty() {
        return error(400, "the body must be the radiograph's file");
    }
    let prep = cxr.prep;
    let pre = tokio::task::spawn_blocking(move || -> Result<Vec<f32>, String> {
        // The readers take a path (they recognise the format by content).
        let dir = std::env::temp_dir().join(format!(
            "medinfer-serve-{}-{}",
            std::process::id(),
            NEXT_UPLOAD.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file = dir.join("upload");
        let r = std::fs::write(&file, &body)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                medinfer_pipelines::cxr::preprocess_file_with(&file, prep).map_err(|e| {
                    e.to_string()
                        .replace(&file.display().to_string(), "the uploaded file")
                })
            });
        let _ = std::fs::remove_dir_all(&dir);
        r
    })
    .await;
    let x = match pre {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return error(400, e),
        Err(e) => return error(500, e.to_string()),
    };
    let [rows, cols] = prep.size;
    let t = match medinfer_core::Tensor::from_f32(vec![1, 1, rows, cols], x) {
        Ok(t) => t,
        Err(e) => return error(500, e.to_string()),
    };
    let logits = match submit_and_wait(&s, &m, vec![t]).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let Some(Ok(z)) = logits.first().map(|t| t.as_f32()) else {
        return error(500, "the model gave no float output");
    };
    let record = medinfer_pipelines::cxr::CxrRecord {
        file: "upload".into(),
        scores: Ok(medinfer_pipelines::cxr::scores(
            z,
            cxr.thresholds.as_deref(),
        )),
    };
    let mut v = record.to_json(&cxr.labels, "");
    v["model"] = json!(m.name);
    v["model_version"] = json!(m.version);
    Json(v).into_response()
}

fn not_served(model: &str, pipeline: &str) -> Response {
    error(
        400,
        format!(
            "model '{model}' does not serve the {pipeline} pipeline (config.json: \"pipeline\": \"{pipeline}\")"
        ),
    )
}

/// `POST /v1/pipelines/{cxr|cardiac|ct}/{model}`. cxr answers at once (see `pipeline_cxr`);
/// cardiac and ct take a study (a DICOM series as a zip or as multipart parts, a NIfTI file,
/// or one DICOM file) and answer `202 Accepted` with the job's status and a `Location` to poll.
async fn pipeline(
    State(s): State<Arc<AppState>>,
    Path((pipeline, name)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<PipelineQuery>,
    request: axum::extract::Request,
) -> Response {
    let m = match find(&s, &name, None) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    if !matches!(pipeline.as_str(), "cxr" | "cardiac" | "ct") {
        return error(
            404,
            format!("no pipeline '{pipeline}' (cxr, cardiac or ct)"),
        );
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let media = content_type.to_ascii_lowercase();
    let multipart = media.starts_with("multipart/form-data");
    let stow = media.starts_with("multipart/related");
    // Parts as (file name, bytes); the body limit bounds them together.
    let mut parts: Vec<(Option<String>, Bytes)> = Vec::new();
    if stow || multipart {
        match multipart_parts(&content_type, request, s.config.max_body_bytes, stow).await {
            Ok(p) => parts = p,
            Err(r) => return r,
        }
    } else {
        match axum::body::to_bytes(request.into_body(), s.config.max_body_bytes).await {
            Ok(b) => parts.push((None, b)),
            Err(e) => {
                return error(
                    413,
                    format!(
                        "the body is over {} MiB or was cut short ({e})",
                        s.config.max_body_bytes >> 20
                    ),
                )
            }
        }
    }
    if pipeline == "cxr" {
        let body = parts.into_iter().next().map(|(_, b)| b).unwrap_or_default();
        return pipeline_cxr(s, m, body).await;
    }
    let Some(runner) = m.jobs.as_ref().filter(|r| r.kind.name() == pipeline) else {
        return not_served(&m.name, &pipeline);
    };
    if query.phantom.is_some() && pipeline != "cardiac" {
        return error(400, "phantom studies are cardiac cine exams");
    }
    let store = s.jobs.clone();
    let (id, dir) = match store.create(runner.kind.name(), &m.name) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let limits = s.config.upload;
    let d = dir.clone();
    let phantom = query.phantom;
    let (staged, instances) = tokio::task::spawn_blocking(move || {
        // STOW-RS answers with the instances it stored: each part must be a DICOM instance.
        let mut instances = Vec::new();
        if stow {
            for (i, (_, b)) in parts.iter().enumerate() {
                match medinfer_io::dicom::DicomFile::from_bytes(&format!("part {}", i + 1), b) {
                    Ok(f) => instances.push((f.header.sop_class_uid, f.header.sop_instance_uid)),
                    Err(e) => return (Err(format!("not a DICOM instance: {e}")), instances),
                }
            }
        }
        if let Some(seed) = phantom {
            return (phantom_study(&d.join("in"), seed), instances);
        }
        let staged = upload::Staging::new(d.join("in"), limits).and_then(|mut st| {
            for (n, b) in &parts {
                st.add(b, n.as_deref())?;
            }
            st.finish().map(|input| (input, None))
        });
        (staged, instances)
    })
    .await
    .unwrap_or_else(|e| (Err(e.to_string()), Vec::new()));
    let queued = staged
        .map_err(ProtocolError::bad)
        .and_then(|(input, truth)| {
            if let Some(t) = truth {
                store.attach_truth(&id, t);
            }
            runner.submit(&store, &id, &dir, input)
        });
    if let Err(e) = queued {
        store.fail(&id, e.message.clone());
        let _ = store.remove(&id);
        return e.into_response();
    }
    let job_url = format!("/v1/jobs/{id}");
    let mut r = if stow {
        stow_response(&job_url, &instances)
    } else {
        let status = store.status(&id).unwrap_or_default();
        (StatusCode::ACCEPTED, Json(status)).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&job_url) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The parts of a multipart body, as (file name, bytes), at most `limit` bytes together: an
/// upload form (`multipart/form-data; boundary=...`), or with `stow` a STOW-RS body
/// (`multipart/related; type="application/dicom"; boundary=...`, every part a DICOM instance).
/// An error answer for a wrong media type (415), a missing boundary or a malformed body (400),
/// or too large a body (413).
async fn multipart_parts(
    content_type: &str,
    request: axum::extract::Request,
    limit: usize,
    stow: bool,
) -> Result<Vec<(Option<String>, Bytes)>, Response> {
    let what = if stow {
        "multipart/related"
    } else {
        "multipart/form-data"
    };
    let mut boundary = None;
    let mut kind = None;
    for param in content_type.split(';').skip(1) {
        if let Some((k, v)) = param.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            // Parameter names and the type are case-insensitive; the boundary is not.
            match k.trim().to_ascii_lowercase().as_str() {
                "boundary" => boundary = Some(v),
                "type" => kind = Some(v.to_ascii_lowercase()),
                _ => {}
            }
        }
    }
    if let Some(k) = kind
        .as_deref()
        .filter(|k| stow && *k != "application/dicom")
    {
        return Err(error(
            415,
            format!("STOW-RS: only application/dicom instances are accepted, not {k}"),
        ));
    }
    let boundary = boundary
        .filter(|b| !b.is_empty())
        .ok_or_else(|| error(400, format!("{what} without a boundary")))?;
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit as u64));
    let mut mp = multer::Multipart::with_constraints(
        request.into_body().into_data_stream(),
        boundary,
        constraints,
    );
    let bad = |e: multer::Error| match e {
        multer::Error::StreamSizeExceeded { .. } => {
            error(413, format!("the body is over {} MiB", limit >> 20))
        }
        e => error(400, format!("{what} body: {e}")),
    };
    let mut parts = Vec::new();
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        let n = parts.len() + 1;
        if let Some(ct) = field.content_type().filter(|_| stow) {
            if ct.essence_str() != "application/dicom" {
                return Err(error(
                    415,
                    format!("STOW-RS part {n} is {ct}, not application/dicom"),
                ));
            }
        }
        let name = field.file_name().map(str::to_string);
        parts.push((name, field.bytes().await.map_err(bad)?));
    }
    // A form may come without a file (a phantom study is asked for in the query).
    if stow && parts.is_empty() {
        return Err(error(400, "the STOW-RS body holds no instances"));
    }
    Ok(parts)
}

/// The STOW-RS answer (PS3.18 10.5.3, `application/dicom+json`): every instance stored, the
/// study's analysis as the Retrieve URL (the job; also in `Location`).
fn stow_response(job_url: &str, instances: &[(String, String)]) -> Response {
    let ui = |v: &str| json!({ "vr": "UI", "Value": [v] });
    let refs: Vec<serde_json::Value> = instances
        .iter()
        .map(|(class, instance)| json!({ "00081150": ui(class), "00081155": ui(instance) }))
        .collect();
    let body = json!({
        "00081190": { "vr": "UR", "Value": [job_url] },
        "00081199": { "vr": "SQ", "Value": refs },
    });
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/dicom+json"),
    );
    r
}

/// Query of the pipeline endpoint.
#[derive(serde::Deserialize)]
struct PipelineQuery {
    /// Analyse cardiac phantom exam SEED (made by the server, with its truth) instead of an
    /// upload: the viewer's "phantom exam" button.
    phantom: Option<u64>,
}

/// Writes cardiac phantom `seed` as a NIfTI into `dir`: the input and its truth.
fn phantom_study(
    dir: &std::path::Path,
    seed: u64,
) -> Result<(std::path::PathBuf, Option<serde_json::Value>), String> {
    if !(1..=1_000_000).contains(&seed) {
        return Err("phantom seeds run from 1 to 1000000".into());
    }
    let ph = medinfer_pipelines::phantom::write_cardiac(
        dir,
        seed,
        medinfer_pipelines::phantom::Format::Nifti,
    )
    .map_err(|e| e.to_string())?;
    let truth = serde_json::to_value(&ph.truth).map_err(|e| e.to_string())?;
    Ok((dir.join("cine.nii.gz"), Some(truth)))
}

/// `GET /v1/pipelines`: the loaded models that serve a pipeline (newest versions).
async fn pipelines(State(s): State<Arc<AppState>>) -> Response {
    let repo = s.repo();
    let list: Vec<serde_json::Value> = repo
        .loaded
        .keys()
        .filter_map(|name| repo.get(name, None))
        .filter_map(|m| {
            m.config
                .pipeline
                .as_ref()
                .map(|p| json!({ "model": m.name, "version": m.version, "pipeline": p }))
        })
        .collect();
    Json(list).into_response()
}

async fn job_status(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match s.jobs.status(&id) {
        Some(v) => Json(v).into_response(),
        None => error(404, format!("no job '{id}' (unknown, or expired)")),
    }
}

async fn job_delete(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match s.jobs.remove(&id) {
        Ok(()) => Json(json!({ "id": id, "deleted": true })).into_response(),
        Err(why) => error(if why == "no such job" { 404 } else { 409 }, why),
    }
}

async fn job_file(
    State(s): State<Arc<AppState>>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let Some((path, ctype)) = s.jobs.file(&id, &file) else {
        return error(404, format!("job '{id}' has no file '{file}' (yet)"));
    };
    match tokio::fs::read(&path).await {
        Ok(b) => ([(header::CONTENT_TYPE, ctype)], b).into_response(),
        Err(_) => error(404, format!("job '{id}' has no file '{file}'")),
    }
}

/// `GET /`: the viewer page (one file, no framework; it calls the API above).
async fn viewer() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("viewer.html"),
    )
        .into_response()
}

static NEXT_UPLOAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
