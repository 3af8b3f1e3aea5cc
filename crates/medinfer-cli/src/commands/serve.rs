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
    /// "instances": 1, "max_batch": 8, "max_queue_delay_us": 2000, "max_queue": 64,
    /// "pad_batches": true, "input_shapes": {...}, "pipeline": "cxr" | "cardiac" | "ct"}).
    /// Every model is checked in a child process first; one that fails is reported in
    /// /v2/repository/index and the others serve.
    #[arg(long, required_unless_present = "deploy")]
    pub models: Option<PathBuf>,
    /// Serve one deployment written by `medinfer tune` (its folder is a model-repository
    /// entry) instead of a repository, under --deploy-name; its kernel ISA is applied to the
    /// server process.
    #[arg(long, value_name = "DIR", conflicts_with = "models")]
    pub deploy: Option<PathBuf>,
    /// The model name a --deploy folder is served under.
    #[arg(long, default_value = "model")]
    pub deploy_name: String,
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
    /// Largest study upload after unzipping, MiB (zip bombs stop here), for the cardiac and
    /// CT pipeline endpoints.
    #[arg(long, default_value_t = 2048)]
    pub max_upload_mb: u64,
    /// Most files in one study upload.
    #[arg(long, default_value_t = 10_000)]
    pub max_upload_files: usize,
    /// How long a finished pipeline job's report and outputs are kept, seconds.
    #[arg(long, default_value_t = 3600.0)]
    pub job_ttl_s: f64,
    /// Most pipeline jobs kept at once (when all are still running, new ones get 429).
    #[arg(long, default_value_t = 256)]
    pub max_jobs: usize,
    /// Folder for uploads and job outputs (default: a new folder in the system temp folder).
    /// Removed when the server stops.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// File holding a bearer token: every request but the health probes, /metrics and the
    /// viewer page must then send 'Authorization: Bearer TOKEN'. The MEDINFER_TOKEN
    /// environment variable does the same (a file or a secret keeps it out of `ps`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Logs as JSON lines (one per request: id, method, path, status, ms) instead of text.
    #[arg(long)]
    pub log_json: bool,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false);
    if a.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let token = match &a.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("MEDINFER_TOKEN").ok(),
    };
    if token.as_deref().is_some_and(str::is_empty) {
        anyhow::bail!("the bearer token is empty");
    }
    if !(a.job_ttl_s > 0.0 && a.job_ttl_s.is_finite()) {
        anyhow::bail!("--job-ttl-s must be positive");
    }
    // --deploy: a one-entry repository in a scratch folder, linking to the deployment.
    let mut _scratch = None;
    let models = match (&a.models, &a.deploy) {
        (Some(m), _) => m.clone(),
        (None, Some(d)) => {
            if !medinfer_server::repo::valid_name(&a.deploy_name) {
                anyhow::bail!(
                    "--deploy-name {}: use letters, digits, '-', '_' and '.'",
                    a.deploy_name
                );
            }
            let target =
                std::fs::canonicalize(d).with_context(|| format!("--deploy {}", d.display()))?;
            let t = tempfile::Builder::new()
                .prefix("medinfer-serve-")
                .tempdir()
                .context("creating a scratch folder")?;
            std::os::unix::fs::symlink(&target, t.path().join(&a.deploy_name))
                .context("linking the deployment")?;
            let dir = t.path().to_path_buf();
            _scratch = Some(t);
            dir
        }
        (None, None) => anyhow::bail!("give --models DIR or --deploy DIR"),
    };
    if !models.is_dir() {
        anyhow::bail!("--models {}: not a folder", models.display());
    }
    let exe = std::env::current_exe().context("finding the medinfer executable")?;
    let mut repo = Repository::new(models, Some(exe));
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
        upload: medinfer_server::upload::UploadLimits {
            max_files: a.max_upload_files.max(1),
            max_bytes: a.max_upload_mb.max(1) << 20,
        },
        job_ttl: Duration::from_secs_f64(a.job_ttl_s),
        max_jobs: a.max_jobs.max(1),
        work_dir: a.work_dir.clone(),
        token,
        ..Default::default()
    };
    let config_has_token = config.token.is_some();
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
        eprintln!(
            "serving on http://{addr} (viewer at /, metrics at /metrics{}; Ctrl-C or SIGTERM to stop)",
            if config_has_token { ", bearer token required" } else { "" }
        );
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
