//! `medinfer serve`: the Open Inference Protocol (KServe v2) server over a model repository.

use anyhow::{Context, Result};
use clap::Args;
use medinfer_server::repo::Repository;
use medinfer_server::{AppState, ServerConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Model repository: DIR/{name}/{version}/model.onnx, with an optional
    /// DIR/{name}/config.json ({"backend": "ort", "precision": "fp32", "threads": 2,
    /// "max_batch": 8, "max_queue_delay_us": 2000, "max_queue": 64, "input_shapes": {...}}).
    /// Every model is checked in a child process first; one that fails is reported in
    /// /v2/repository/index and the others serve.
    #[arg(long)]
    pub models: PathBuf,
    /// Address to listen on (0.0.0.0 for every interface, e.g. in a container).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Largest request body in MiB; larger ones get 413.
    #[arg(long, default_value_t = 64)]
    pub max_body_mb: usize,
    /// Longest a request may wait for its result (queue and inference) before a 503, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout_s: f64,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if !a.models.is_dir() {
        anyhow::bail!("--models {}: not a folder", a.models.display());
    }
    let exe = std::env::current_exe().context("finding the medinfer executable")?;
    let mut repo = Repository::new(a.models.clone(), Some(exe));
    repo.load_all();
    for e in repo.index() {
        eprintln!(
            "model {} version {}: {:?}{}",
            e.name,
            e.version,
            e.state,
            if e.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.reason)
            }
        );
    }
    if !(a.timeout_s > 0.0 && a.timeout_s.is_finite()) {
        anyhow::bail!("--timeout-s must be positive");
    }
    let config = ServerConfig {
        max_body_bytes: a.max_body_mb.max(1) << 20,
        request_timeout: Duration::from_secs_f64(a.timeout_s),
        ..Default::default()
    };
    let state = AppState::new(repo, config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        eprintln!("serving on http://{addr} (Ctrl-C or SIGTERM to stop)");
        medinfer_server::serve(listener, state, shutdown_signal())
            .await
            .context("serving")
    })
}

/// Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: draining in-flight requests");
}
