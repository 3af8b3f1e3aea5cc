//! Observability and access: the request id, one structured log line per request, the
//! Prometheus `/metrics` page (names as Triton's, so its dashboards fit), and the optional
//! bearer token.
//!
//! Logs carry the method, the path, the status, the time and the request id: never bodies or
//! headers, so no DICOM attribute (patient name, ID, birth date) can reach them.

use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The request id header: taken from the client when it sends a sane one, else made here;
/// echoed on the answer either way.
pub const REQUEST_ID: &str = "x-request-id";

/// Counters of the HTTP side (the per-model ones live in each batcher).
#[derive(Default)]
pub struct HttpStats {
    /// Answers by status code.
    pub by_status: Mutex<BTreeMap<u16, u64>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn sane_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.into())
}

/// Paths that answer without the token: the probes (Kubernetes sends no token), the metrics
/// page (Prometheus scrapes without one) and the viewer's static page (it asks for the token
/// and sends it on its API calls).
fn open_path(path: &str) -> bool {
    path.starts_with("/v2/health/") || path == "/metrics" || path == "/"
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: request id, token check, counting and the log line.
pub async fn layer(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(sane_id)
        .unwrap_or_else(|| {
            format!(
                "req-{:x}-{}",
                std::process::id(),
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            )
        });
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let mut resp = match &s.config.token {
        Some(token) if !open_path(&path) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
                if let Ok(v) = HeaderValue::from_str(&id) {
                    req.headers_mut().insert(REQUEST_ID, v);
                }
                next.run(req).await
            } else {
                let mut r = crate::error(401, "this server needs 'Authorization: Bearer <token>'");
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
        }
        _ => next.run(req).await,
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    *s.http
        .by_status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(status)
        .or_default() += 1;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(request_id = %id, %method, %path, status, ms, "request");
    } else {
        tracing::info!(request_id = %id, %method, %path, status, ms, "request");
    }
    resp
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let models: Vec<_> = {
        let repo = s.repo();
        repo.loaded
            .values()
            .flat_map(|v| v.values().cloned())
            .collect()
    };
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut o = String::new();
    type Get = fn(&crate::batcher::Stats) -> u64;
    let per_model: [(&str, &str, &str, Get); 8] = [
        (
            "nv_inference_request_success",
            "counter",
            "Requests answered with outputs",
            |st| st.success.load(Ordering::Relaxed),
        ),
        (
            "nv_inference_count",
            "counter",
            "Batch items run (inferences)",
            |st| st.items.load(Ordering::Relaxed),
        ),
        (
            "nv_inference_exec_count",
            "counter",
            "Engine runs (batches)",
            |st| st.batches.load(Ordering::Relaxed),
        ),
        (
            "nv_inference_queue_duration_us",
            "counter",
            "Time requests waited in the queue, summed, microseconds",
            |st| st.queue_ns.load(Ordering::Relaxed) / 1000,
        ),
        (
            "nv_inference_compute_infer_duration_us",
            "counter",
            "Time in the engine, summed, microseconds",
            |st| st.compute_ns.load(Ordering::Relaxed) / 1000,
        ),
        (
            "nv_inference_pending_request_count",
            "gauge",
            "Requests waiting in the queue now",
            |st| st.queued_now.load(Ordering::Relaxed),
        ),
        (
            "medinfer_inference_request_rejected",
            "counter",
            "Requests refused because the queue was full (429)",
            |st| st.rejected.load(Ordering::Relaxed),
        ),
        (
            "medinfer_largest_batch",
            "gauge",
            "Largest batch run, items",
            |st| st.largest_batch.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, get) in per_model {
        metric(&mut o, name, kind, help);
        for m in &models {
            let _ = writeln!(
                o,
                "{name}{{model=\"{}\",version=\"{}\"}} {}",
                m.name,
                m.version,
                get(&m.batcher.stats)
            );
        }
    }
    metric(
        &mut o,
        "nv_inference_request_failure",
        "counter",
        "Requests whose inference failed, by reason",
    );
    for m in &models {
        let st = &m.batcher.stats;
        let _ = writeln!(
            o,
            "nv_inference_request_failure{{model=\"{}\",version=\"{}\",reason=\"BACKEND\"}} {}",
            m.name,
            m.version,
            g(&st.failed)
        );
        let _ = writeln!(
            o,
            "nv_inference_request_failure{{model=\"{}\",version=\"{}\",reason=\"REJECTED\"}} {}",
            m.name,
            m.version,
            g(&st.rejected)
        );
    }
    metric(
        &mut o,
        "medinfer_batch_size",
        "histogram",
        "Items per engine run (dynamic batching)",
    );
    for m in &models {
        let st = &m.batcher.stats;
        let mut cum = 0;
        for (k, c) in st.batch_sizes.iter().enumerate() {
            cum += g(c);
            let le = crate::batcher::BATCH_BUCKETS
                .get(k)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                o,
                "medinfer_batch_size_bucket{{model=\"{}\",version=\"{}\",le=\"{le}\"}} {cum}",
                m.name, m.version
            );
        }
        let _ = writeln!(
            o,
            "medinfer_batch_size_sum{{model=\"{}\",version=\"{}\"}} {}",
            m.name,
            m.version,
            g(&st.items)
        );
        let _ = writeln!(
            o,
            "medinfer_batch_size_count{{model=\"{}\",version=\"{}\"}} {}",
            m.name,
            m.version,
            g(&st.batches)
        );
    }
    metric(
        &mut o,
        "medinfer_http_responses",
        "counter",
        "HTTP answers by status code",
    );
    for (code, n) in s
        .http
        .by_status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(o, "medinfer_http_responses{{code=\"{code}\"}} {n}");
    }
    metric(
        &mut o,
        "medinfer_jobs",
        "gauge",
        "Pipeline jobs kept, by state",
    );
    for (state, n) in s.jobs.counts() {
        let _ = writeln!(o, "medinfer_jobs{{state=\"{state}\"}} {n}");
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        o,
    )
        .into_response()
}
