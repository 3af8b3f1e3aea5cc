//! Pipeline jobs: whole studies (a cardiac cine stack, a CT series) take seconds, so they run
//! off the request path. `POST /v1/pipelines/{cardiac|ct}/{model}` stages the upload and
//! answers `202` with the job's URL; `GET /v1/jobs/{id}` says queued / running / done (with
//! the same report as the CLI) / failed, and the outputs (masks, overlays, curves, and the
//! viewer's 8-bit image and labels) are served under `/v1/jobs/{id}/files/{name}`.
//!
//! Bounded everywhere: each model's job queue has `max_queue` places (more get 429), the store
//! keeps at most `max_jobs` jobs and a finished one for `ttl` (then it and its folder go).

use crate::v2::ProtocolError;
use medinfer_engine::{EngineError, Session};
use medinfer_pipelines::{cardiac, ct, models::ModelId};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Files a job may serve, and their content types.
pub const FILES: [(&str, &str); 6] = [
    ("report.json", "application/json"),
    ("masks.nii.gz", "application/gzip"),
    ("ed_es.png", "image/png"),
    ("volumes.svg", "image/svg+xml"),
    ("image.u8", "application/octet-stream"),
    ("labels.u8", "application/octet-stream"),
];

/// Where a job stands.
#[derive(Clone, Debug)]
pub enum JobState {
    /// Waiting for the model's job worker.
    Queued,
    /// Running.
    Running,
    /// Finished: the report.
    Done(Value),
    /// Refused or failed: why.
    Failed(String),
}

struct Entry {
    pipeline: &'static str,
    model: String,
    state: JobState,
    created: Instant,
    finished: Option<Instant>,
    dir: PathBuf,
    /// `[nx, ny, nz, nt]` of the viewer's image, when it has one.
    viewer: Option<[usize; 4]>,
    /// Known truth of a phantom study, shown beside the measured numbers.
    truth: Option<Value>,
}

/// The jobs of the server, by id.
pub struct JobStore {
    jobs: Mutex<HashMap<String, Entry>>,
    root: PathBuf,
    ttl: Duration,
    max_jobs: usize,
    keys: std::collections::hash_map::RandomState,
}

impl JobStore {
    /// A store whose job folders live under `root` (created on first use, removed on drop).
    pub fn new(root: PathBuf, ttl: Duration, max_jobs: usize) -> JobStore {
        JobStore {
            jobs: Mutex::new(HashMap::new()),
            root,
            ttl,
            max_jobs: max_jobs.max(1),
            keys: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Entries are replaced by single assignments: a poisoned map is still whole.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new queued job and its (empty, created) folder. Expired jobs go first; when the store
    /// is still full the oldest finished job goes; when every kept job is unfinished, 429.
    pub fn create(
        &self,
        pipeline: &'static str,
        model: &str,
    ) -> Result<(String, PathBuf), ProtocolError> {
        let mut gone = Vec::new();
        let id = {
            let mut jobs = self.lock();
            let now = Instant::now();
            let ttl = self.ttl;
            jobs.retain(|_, e| {
                let keep = e.finished.is_none_or(|f| now.duration_since(f) < ttl);
                if !keep {
                    gone.push(e.dir.clone());
                }
                keep
            });
            if jobs.len() >= self.max_jobs {
                let oldest = jobs
                    .iter()
                    .filter_map(|(id, e)| e.finished.map(|f| (f, id.clone())))
                    .min();
                match oldest {
                    Some((_, id)) => {
                        if let Some(e) = jobs.remove(&id) {
                            gone.push(e.dir);
                        }
                    }
                    None => {
                        return Err(ProtocolError {
                            status: 429,
                            message: format!(
                                "{} jobs are queued or running (the server's limit); retry later",
                                jobs.len()
                            ),
                        })
                    }
                }
            }
            // A counter (unique) through a hash with random keys (unguessable).
            let mut h = self.keys.build_hasher();
            h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let a = h.finish();
            h.write_u64(a);
            let id = format!("{a:016x}{:016x}", h.finish());
            jobs.insert(
                id.clone(),
                Entry {
                    pipeline,
                    model: model.to_string(),
                    state: JobState::Queued,
                    created: now,
                    finished: None,
                    dir: self.root.join(&id),
                    viewer: None,
                    truth: None,
                },
            );
            id
        };
        for d in gone {
            let _ = std::fs::remove_dir_all(d);
        }
        let dir = self.root.join(&id);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.lock().remove(&id);
            return Err(ProtocolError {
                status: 500,
                message: format!("cannot create the job's folder: {e}"),
            });
        }
        Ok((id, dir))
    }

    fn set(&self, id: &str, state: JobState, viewer: Option<[usize; 4]>) {
        if let Some(e) = self.lock().get_mut(id) {
            if matches!(state, JobState::Done(_) | JobState::Failed(_)) {
                e.finished = Some(Instant::now());
            }
            e.state = state;
            e.viewer = viewer.or(e.viewer);
        }
    }

    /// Attaches the known truth of a phantom study to its job.
    pub fn attach_truth(&self, id: &str, truth: Value) {
        if let Some(e) = self.lock().get_mut(id) {
            e.truth = Some(truth);
        }
    }

    /// Marks a job failed before it ran (a refused upload).
    pub fn fail(&self, id: &str, why: String) {
        self.set(id, JobState::Failed(why), None);
    }

    /// The job's status document, with URLs of its files once done.
    pub fn status(&self, id: &str) -> Option<Value> {
        let jobs = self.lock();
        let e = jobs.get(id)?;
        let (state, report, error) = match &e.state {
            JobState::Queued => ("queued", None, None),
            JobState::Running => ("running", None, None),
            JobState::Done(r) => ("done", Some(r.clone()), None),
            JobState::Failed(m) => ("failed", None, Some(m.clone())),
        };
        let mut v = json!({
            "id": id,
            "pipeline": e.pipeline,
            "model": e.model,
            "status": state,
            "age_s": e.created.elapsed().as_secs_f64(),
        });
        if let Some(r) = report {
            v["report"] = r;
            let files: serde_json::Map<String, Value> = FILES
                .iter()
                .filter(|(n, _)| e.dir.join("out").join(n).is_file())
                .map(|(n, _)| (n.to_string(), json!(format!("/v1/jobs/{id}/files/{n}"))))
                .collect();
            v["files"] = Value::Object(files);
            if let Some(d) = e.viewer {
                v["viewer"] = json!({ "dims": d });
            }
        }
        if let Some(m) = error {
            v["error"] = json!(m);
        }
        if let Some(t) = &e.truth {
            v["truth"] = t.clone();
        }
        Some(v)
    }

    /// Jobs kept, by state (queued, running, done, failed).
    pub fn counts(&self) -> [(&'static str, usize); 4] {
        let mut c = [("queued", 0), ("running", 0), ("done", 0), ("failed", 0)];
        for e in self.lock().values() {
            let k = match e.state {
                JobState::Queued => 0,
                JobState::Running => 1,
                JobState::Done(_) => 2,
                JobState::Failed(_) => 3,
            };
            c[k].1 += 1;
        }
        c
    }

    /// A finished job's output file, with its content type (only names in [`FILES`]).
    pub fn file(&self, id: &str, name: &str) -> Option<(PathBuf, &'static str)> {
        let (_, ctype) = FILES.iter().find(|(n, _)| *n == name)?;
        let jobs = self.lock();
        let e = jobs.get(id)?;
        matches!(e.state, JobState::Done(_)).then(|| (e.dir.join("out").join(name), *ctype))
    }

    /// Forgets a finished job and removes its folder; false when unknown or still running.
    pub fn remove(&self, id: &str) -> Result<(), &'static str> {
        let mut jobs = self.lock();
        match jobs.get(id).map(|e| e.finished.is_some()) {
            None => Err("no such job"),
            Some(false) => Err("the job has not finished"),
            Some(true) => {
                if let Some(e) = jobs.remove(id) {
                    drop(jobs);
                    let _ = std::fs::remove_dir_all(e.dir);
                }
                Ok(())
            }
        }
    }
}

impl Drop for JobStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a model's job worker runs.
#[derive(Clone, Debug)]
pub enum JobKind {
    /// The cardiac pipeline with the model's patch geometry and labels.
    Cardiac(Box<cardiac::CardiacSpec>),
    /// CT slice tagging with the model's preprocessing and region names.
    Ct {
        /// Window and size.
        prep: ct::CtPrep,
        /// Region name by output index.
        regions: Vec<String>,
    },
}

impl JobKind {
    /// The pipeline's name in URLs.
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Cardiac(_) => "cardiac",
            JobKind::Ct { .. } => "ct",
        }
    }
}

/// Opens the engine session a job worker runs (once, on its first job).
pub type SessionLoader = Arc<dyn Fn() -> Result<Session, EngineError> + Send + Sync>;

struct Task {
    id: String,
    input: PathBuf,
    out: PathBuf,
    store: Arc<JobStore>,
}

/// One model's job queue and its worker thread.
pub struct JobRunner {
    tx: Option<SyncSender<Task>>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// What it runs.
    pub kind: JobKind,
}

impl JobRunner {
    /// Starts the worker; its session is opened on the first job.
    pub fn start(
        model: &str,
        kind: JobKind,
        id: ModelId,
        loader: SessionLoader,
        max_queue: usize,
    ) -> JobRunner {
        let (tx, rx) = sync_channel::<Task>(max_queue.max(1));
        let k = kind.clone();
        let worker = std::thread::Builder::new()
            .name(format!("jobs-{model}"))
            .spawn(move || {
                let mut session: Option<Session> = None;
                for t in rx {
                    t.store.set(&t.id, JobState::Running, None);
                    if session.is_none() {
                        match loader() {
                            Ok(s) => session = Some(s),
                            Err(e) => {
                                t.store
                                    .fail(&t.id, format!("the model could not be opened: {e}"));
                                continue;
                            }
                        }
                    }
                    let Some(s) = session.as_ref() else { continue };
                    match run(&k, &id, s, &t.input, &t.out) {
                        Ok((report, viewer)) => t.store.set(&t.id, JobState::Done(report), viewer),
                        Err(e) => t.store.fail(&t.id, e),
                    }
                    // The staged upload is no longer needed; the outputs stay until expiry.
                    let _ = std::fs::remove_dir_all(t.out.with_file_name("in"));
                }
            })
            .expect("spawning a job worker");
        JobRunner {
            tx: Some(tx),
            worker: Some(worker),
            kind,
        }
    }

    /// Queues a staged job (its upload under `DIR/in`, outputs to `DIR/out`); 429 when the
    /// queue is full.
    pub fn submit(
        &self,
        store: &Arc<JobStore>,
        id: &str,
        dir: &Path,
        input: PathBuf,
    ) -> Result<(), ProtocolError> {
        let task = Task {
            id: id.to_string(),
            input,
            out: dir.join("out"),
            store: store.clone(),
        };
        let tx = self.tx.as_ref().ok_or(ProtocolError {
            status: 503,
            message: "the model is being unloaded".into(),
        })?;
        tx.try_send(task).map_err(|e| match e {
            TrySendError::Full(_) => ProtocolError {
                status: 429,
                message: "the model's job queue is full; retry later".into(),
            },
            TrySendError::Disconnected(_) => ProtocolError {
                status: 503,
                message: "the model's job worker stopped".into(),
            },
        })
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Runs one job: the report (input paths replaced by "upload": the server's folders are not
/// the client's business) and the viewer's dims.
fn run(
    kind: &JobKind,
    model: &ModelId,
    session: &Session,
    input: &Path,
    out: &Path,
) -> Result<(Value, Option<[usize; 4]>), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot write the outputs: {e}"))?;
    let hide = |e: String| {
        e.replace(&format!("{}/", input.display()), "upload: ")
            .replace(&input.display().to_string(), "upload")
    };
    match kind {
        JobKind::Cardiac(spec) => {
            let t0 = Instant::now();
            let vol = medinfer_io::read_volume(input).map_err(|e| hide(e.to_string()))?;
            let request = cardiac::CardiacRequest {
                input: input.to_path_buf(),
                model: model.clone(),
                output: Some(out.to_path_buf()),
                spec: (**spec).clone(),
            };
            let res = cardiac::run_volume(session, &request, &vol, t0)
                .map_err(|e| hide(e.to_string()))?;
            let mut report = serde_json::to_value(&res.report).map_err(|e| e.to_string())?;
            report["input"] = json!("upload");
            write_viewer(out, &vol, Some(&res.labels))?;
            Ok((report, Some(vol.dims)))
        }
        JobKind::Ct { prep, regions } => {
            let r = ct::run(input, session, *prep, regions, 1).map_err(|e| hide(e.to_string()))?;
            let mut report = serde_json::to_value(&r).map_err(|e| e.to_string())?;
            report["input"] = json!("upload");
            // The viewer's slices in the report's order (best effort: a series the volume
            // reader refuses still has its report).
            let viewer = match medinfer_io::read_volume(input) {
                Ok(vol) if vol.dims[2] == r.slices.len() => {
                    write_viewer(out, &vol, None)?;
                    Some(vol.dims)
                }
                _ => None,
            };
            std::fs::write(out.join("report.json"), report.to_string())
                .map_err(|e| format!("cannot write the report: {e}"))?;
            Ok((report, viewer))
        }
    }
}

/// The viewer's data: the image as 8 bits (1st-99th percentile of the study, or its declared
/// window), slice after slice in the volume's own layout, and the labels likewise.
fn write_viewer(
    out: &Path,
    vol: &medinfer_core::Volume,
    labels: Option<&[u8]>,
) -> Result<(), String> {
    let (lo, hi) = match vol.window {
        Some(w) => (w.center - w.width / 2.0, w.center + w.width / 2.0),
        None => {
            let step = (vol.data.len() / 100_000).max(1);
            let mut s: Vec<f32> = vol
                .data
                .iter()
                .step_by(step)
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            s.sort_by(f32::total_cmp);
            let q = |p: f64| {
                s.get(((s.len().max(1) - 1) as f64 * p) as usize)
                    .copied()
                    .unwrap_or(0.0) as f64
            };
            (q(0.01), q(0.99))
        }
    };
    let scale = 255.0 / (hi - lo).max(1e-6);
    let img: Vec<u8> = vol
        .data
        .iter()
        .map(|&v| ((v as f64 - lo) * scale).clamp(0.0, 255.0) as u8)
        .collect();
    let w = |name: &str, b: &[u8]| {
        std::fs::write(out.join(name), b).map_err(|e| format!("cannot write {name}: {e}"))
    };
    w("image.u8", &img)?;
    if let Some(l) = labels {
        w("labels.u8", l)?;
    }
    Ok(())
}
