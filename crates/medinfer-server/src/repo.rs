//! The model repository: `DIR/{name}/{version}/model.onnx`, with an optional
//! `DIR/{name}/config.json` (engine, precision, batching). Every model is checked in a child
//! process before the server loads it, because a hostile or corrupt graph can crash a native
//! engine (OpenVINO has segfaulted on a bad QDQ graph): the child dies, the server does not.

use crate::batcher::{BatchSettings, Batcher, Loader};
use medinfer_engine::{load_on, BackendKind, Mode, Precision, SessionOptions};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `DIR/{name}/config.json`. Every field is optional.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelRepoConfig {
    /// Engine: tract, ort, openvino or auto (the fastest available).
    pub backend: String,
    /// fp32 or bf16.
    pub precision: String,
    /// Threads per inference (default: the usable cores divided among the instances).
    pub threads: Option<usize>,
    /// Engine instances taking batches from the model's queue at once (Triton's instance
    /// count): 2 on 2 cores runs two batches side by side at 1 thread each, as `medinfer bench
    /// --mode throughput` does.
    pub instances: usize,
    /// Most batch items run together by dynamic batching (1 = off).
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch, in microseconds.
    pub max_queue_delay_us: u64,
    /// Requests that may wait at once; more get 429.
    pub max_queue: usize,
    /// Pad batches with zero rows to powers of two (1, 2, 4, ... max_batch), so a few engine
    /// sessions serve every batch size (default true; false compiles one per size met).
    pub pad_batches: bool,
    /// Full input shapes for dimensions other than the batch that the model leaves dynamic,
    /// used by the load check (requests may still come at other sizes).
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// A clinical pipeline this model also serves under `/v1/pipelines/{pipeline}/{name}`:
    /// `cxr` (answered at once), `cardiac` or `ct` (run as jobs). Its size, normalisation,
    /// labels and thresholds come from the model's own config (`model.json` beside
    /// `model.onnx`), else the pipeline's built-in one.
    pub pipeline: Option<String>,
    /// OpenVINO kernel instruction-set cap the model was tuned for (`medinfer tune`): the
    /// model is refused on a CPU that lacks it. The cap is per process: `medinfer serve
    /// --deploy` (or `--cpu-isa`) sets it.
    pub cpu_isa: Option<String>,
    /// What `medinfer tune` measured (kept as written, for the people reading the config).
    pub tuned: Option<serde_json::Value>,
}

/// What a model needs to serve the chest X-ray pipeline: the preprocessing and the labels.
#[derive(Clone, Debug)]
pub struct CxrServing {
    /// Preprocessing (size, normalisation, TorchXRayVision-exact resize).
    pub prep: medinfer_pipelines::cxr::CxrPrep,
    /// Label names by output index.
    pub labels: Vec<String>,
    /// Operating thresholds, when the config gives them.
    pub thresholds: Option<Vec<f32>>,
}

impl Default for ModelRepoConfig {
    fn default() -> Self {
        ModelRepoConfig {
            backend: "auto".into(),
            precision: "fp32".into(),
            threads: None,
            instances: 1,
            max_batch: 8,
            max_queue_delay_us: 2000,
            max_queue: 64,
            pad_batches: true,
            input_shapes: HashMap::new(),
            pipeline: None,
            cpu_isa: None,
            tuned: None,
        }
    }
}

/// State of one model version in the repository index.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    /// Loaded and serving.
    Ready,
    /// Present on disk, not loaded.
    Unavailable,
}

/// A loaded model version.
pub struct LoadedModel {
    /// Name.
    pub name: String,
    /// Version (a folder name).
    pub version: String,
    /// Engine.
    pub backend: BackendKind,
    /// Inputs as the model declares them (-1 = dynamic).
    pub inputs: Vec<(String, medinfer_core::DType, Vec<i64>)>,
    /// Outputs as the model declares them (-1 = dynamic or unknown).
    pub outputs: Vec<(String, medinfer_core::DType, Vec<i64>)>,
    /// The queue and worker.
    pub batcher: Batcher,
    /// The config it was loaded with.
    pub config: ModelRepoConfig,
    /// Set when the model serves the chest X-ray pipeline.
    pub cxr: Option<CxrServing>,
    /// Set when the model serves the cardiac or CT pipeline (as jobs).
    pub jobs: Option<crate::jobs::JobRunner>,
}

/// One row of the repository index.
#[derive(Clone, Debug, Serialize)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// READY or UNAVAILABLE.
    pub state: ModelState,
    /// Why it is unavailable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Errors of repository operations.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// No such model in the repository folder.
    #[error("model '{0}' is not in the repository")]
    NotFound(String),
    /// The model could not be loaded.
    #[error("model '{name}' could not be loaded: {reason}")]
    Load {
        /// Model name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// The repository folder and what is loaded from it.
pub struct Repository {
    dir: PathBuf,
    /// An executable that checks a model in a child process (`medinfer`), or none (tests of
    /// the library without the binary; models are then loaded unchecked).
    checker: Option<PathBuf>,
    /// Loaded models by name, then version.
    pub loaded: BTreeMap<String, BTreeMap<String, Arc<LoadedModel>>>,
    /// Why models failed to load, by name.
    pub failures: BTreeMap<String, String>,
}

fn version_key(v: &str) -> (u64, String) {
    (v.parse::<u64>().unwrap_or(0), v.to_string())
}

impl Repository {
    /// Opens a repository folder (nothing loaded yet).
    pub fn new(dir: PathBuf, checker: Option<PathBuf>) -> Repository {
        Repository {
            dir,
            checker,
            loaded: BTreeMap::new(),
            failures: BTreeMap::new(),
        }
    }

    /// Model names in the folder (sub-folders holding at least one `VERSION/model.onnx`).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !self.versions(n).is_empty())
            .collect();
        v.sort();
        v
    }

    /// Versions of a model on disk, oldest first (numeric order where numeric).
    pub fn versions(&self, name: &str) -> Vec<String> {
        versions_in(&self.dir, name)
    }

    /// The index: every model version on disk with its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        for name in self.names() {
            for version in self.versions(&name) {
                let ready = self
                    .loaded
                    .get(&name)
                    .is_some_and(|m| m.contains_key(&version));
                out.push(IndexEntry {
                    reason: if ready {
                        String::new()
                    } else {
                        self.failures.get(&name).cloned().unwrap_or_default()
                    },
                    name: name.clone(),
                    version,
                    state: if ready {
                        ModelState::Ready
                    } else {
                        ModelState::Unavailable
                    },
                });
            }
        }
        out
    }

    /// Loads every model in the folder; failures are recorded, not fatal.
    pub fn load_all(&mut self) {
        for name in self.names() {
            let r = prepare(&self.dir, self.checker.as_deref(), &name);
            if let Err(e) = self.install(&name, r) {
                eprintln!("warning: {e}");
            }
        }
    }

    /// The folder and checker, for [`prepare`] outside a lock.
    pub fn source(&self) -> (PathBuf, Option<PathBuf>) {
        (self.dir.clone(), self.checker.clone())
    }

    /// Installs the result of [`prepare`]: the versions replace any loaded ones, or the
    /// failure is recorded (a model that was serving keeps serving its old versions).
    pub fn install(
        &mut self,
        name: &str,
        prepared: Result<Versions, RepoError>,
    ) -> Result<(), RepoError> {
        match prepared {
            Ok(v) => {
                self.failures.remove(name);
                self.loaded.insert(name.to_string(), v);
                Ok(())
            }
            Err(e) => {
                if let RepoError::Load { reason, .. } = &e {
                    self.failures.insert(name.to_string(), reason.clone());
                }
                Err(e)
            }
        }
    }

    /// Takes a model out of service and hands its versions back: dropping them closes their
    /// queues and joins their workers once queued requests have run, which can take a while,
    /// so the caller drops them outside any lock and off the async runtime.
    pub fn unload(&mut self, name: &str) -> Option<Versions> {
        self.loaded.remove(name)
    }

    /// A loaded model: the version asked for, or the newest.
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<Arc<LoadedModel>> {
        let versions = self.loaded.get(name)?;
        match version {
            Some(v) => versions.get(v).cloned(),
            None => versions
                .iter()
                .max_by_key(|(v, _)| version_key(v))
                .map(|(_, m)| m.clone()),
        }
    }
}

/// Loaded versions of one model, by version.
pub type Versions = BTreeMap<String, Arc<LoadedModel>>;

/// Loads every version of one model (the slow part: engine compilation and the child check),
/// without touching the repository, so the server keeps serving meanwhile.
pub fn prepare(dir: &Path, checker: Option<&Path>, name: &str) -> Result<Versions, RepoError> {
    let versions = versions_in(dir, name);
    if versions.is_empty() {
        return Err(RepoError::NotFound(name.to_string()));
    }
    let fail = |reason: String| RepoError::Load {
        name: name.to_string(),
        reason,
    };
    let config = read_config(&dir.join(name).join("config.json")).map_err(fail)?;
    let mut loaded = BTreeMap::new();
    for version in versions {
        let path = dir.join(name).join(&version).join("model.onnx");
        let m = load_version(name, &version, &path, &config, checker)
            .map_err(|r| fail(format!("version {version}: {r}")))?;
        loaded.insert(version, Arc::new(m));
    }
    Ok(loaded)
}

/// Versions of model `name` under `dir` (folders holding a `model.onnx`), oldest first
/// (numeric order where numeric).
fn versions_in(dir: &Path, name: &str) -> Vec<String> {
    if !valid_name(name) {
        return vec![];
    }
    let mut v: Vec<String> = std::fs::read_dir(dir.join(name))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("model.onnx").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| valid_name(n))
        .collect();
    v.sort_by_key(|a| version_key(a));
    v
}

/// Names and versions are single path components of letters, digits, `-`, `_` and `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn read_config(path: &Path) -> Result<ModelRepoConfig, String> {
    if !path.exists() {
        return Ok(ModelRepoConfig::default());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c: ModelRepoConfig =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if c.max_batch == 0 || c.max_queue == 0 || c.instances == 0 {
        return Err(format!(
            "{}: max_batch, max_queue and instances must be at least 1",
            path.display()
        ));
    }
    Ok(c)
}

fn dims_of(shape: &[medinfer_onnx::Dim]) -> Vec<i64> {
    shape
        .iter()
        .map(|d| match d {
            medinfer_onnx::Dim::Fixed(n) => *n as i64,
            medinfer_onnx::Dim::Dynamic(_) => -1,
        })
        .collect()
}

/// Checks a model in a child process: `CHECKER bench MODEL --backend B --runs 1` loads it on
/// the engine and runs one inference on seeded inputs. A crash or error there is reported here.
fn check_in_child(
    checker: &Path,
    model: &Path,
    backend: BackendKind,
    config: &ModelRepoConfig,
) -> Result<(), String> {
    let mut cmd = std::process::Command::new(checker);
    cmd.args(["bench"])
        .arg(model)
        .args([
            "--backend",
            backend.name(),
            "--runs",
            "1",
            "--warmup",
            "0",
            "--json",
        ])
        .stdin(std::process::Stdio::null());
    for (name, dims) in &config.input_shapes {
        let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        cmd.arg("--input-shape")
            .arg(format!("{name}={}", d.join("x")));
    }
    let out = cmd
        .output()
        .map_err(|e| format!("could not start the model check: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let last = medinfer_core::last_error_line(&String::from_utf8_lossy(&out.stderr));
    Err(match out.status.code() {
        Some(_) => format!("the load check failed: {last}"),
        None => {
            "the engine crashed while loading it in the check process (a corrupt or hostile model)"
                .into()
        }
    })
}

fn load_version(
    name: &str,
    version: &str,
    path: &Path,
    config: &ModelRepoConfig,
    checker: Option<&Path>,
) -> Result<LoadedModel, String> {
    let backend = if config.backend.eq_ignore_ascii_case("auto") {
        medinfer_engine::resolve_backend("auto").map_err(|e| e.to_string())?
    } else {
        BackendKind::parse(&config.backend)
            .ok_or_else(|| format!("unknown backend '{}'", config.backend))?
    };
    let precision = Precision::parse(&config.precision)
        .ok_or_else(|| format!("unknown precision '{}'", config.precision))?;
    if let Some(isa) = &config.cpu_isa {
        let isa = medinfer_engine::CpuIsa::parse(isa)
            .ok_or_else(|| format!("unknown cpu_isa '{isa}'"))?;
        let missing = isa.missing_here();
        if !missing.is_empty() {
            return Err(format!(
                "it was tuned for {isa} kernels and this CPU lacks {}",
                missing.join(", ")
            ));
        }
        if backend == BackendKind::OpenVino
            && medinfer_engine::cpu_isa_cap().as_deref() != isa.onednn_name()
        {
            tracing::warn!(
                model = name,
                "tuned for the {isa} kernel cap; this server runs under {} (start it with \
                 --cpu-isa {isa} or --deploy)",
                medinfer_engine::cpu_isa_cap().unwrap_or_else(|| "auto".into())
            );
        }
    }
    // Parse and validate the ONNX file here (pure Rust, cannot crash the process), then let
    // the child try the native engine.
    let model = medinfer_onnx::load_model(path).map_err(|e| e.to_string())?;
    let info = medinfer_onnx::analyze(&model, None);
    drop(model);
    if let Some(c) = checker {
        check_in_child(c, path, backend, config)?;
    }
    let conv = |v: &medinfer_onnx::ValueInfo| {
        medinfer_core::DType::parse(&v.dtype)
            .map(|t| (v.name.clone(), t, dims_of(&v.shape)))
            .ok_or_else(|| format!("{} has element type {}, not served", v.name, v.dtype))
    };
    let inputs = info
        .inputs
        .iter()
        .map(conv)
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = info
        .outputs
        .iter()
        .map(conv)
        .collect::<Result<Vec<_>, _>>()?;
    let threads = config.threads.or_else(|| {
        (config.instances > 1).then(|| (medinfer_core::usable_cores() / config.instances).max(1))
    });
    let (mut cxr, mut jobs) = (None, None);
    if let Some(p) = config.pipeline.as_deref() {
        let pipeline = match p {
            "cxr" => medinfer_pipelines::Pipeline::Cxr,
            "cardiac" => medinfer_pipelines::Pipeline::Cardiac,
            "ct" => medinfer_pipelines::Pipeline::Ct,
            other => return Err(format!("unknown pipeline '{other}' (cxr, cardiac or ct)")),
        };
        let spec = medinfer_pipelines::config::ModelConfig::for_model(pipeline, path, None)
            .and_then(|c| c.resolve(path, 8))
            .map_err(|e| e.to_string())?;
        let kind = match pipeline {
            medinfer_pipelines::Pipeline::Cxr => {
                if spec.channels != 1 {
                    return Err(format!(
                        "the cxr pipeline feeds one channel; the model takes {}",
                        spec.channels
                    ));
                }
                cxr = Some(CxrServing {
                    prep: medinfer_pipelines::cxr::CxrPrep::of(
                        &spec,
                        medinfer_pipelines::cxr::Resize::Xrv,
                    ),
                    thresholds: spec.thresholds_f32(),
                    labels: spec.labels.clone(),
                });
                None
            }
            medinfer_pipelines::Pipeline::Cardiac => Some(crate::jobs::JobKind::Cardiac(Box::new(
                medinfer_pipelines::cardiac::CardiacSpec::from_model(&spec, name)
                    .map_err(|e| e.to_string())?,
            ))),
            medinfer_pipelines::Pipeline::Ct => Some(crate::jobs::JobKind::Ct {
                prep: medinfer_pipelines::ct::CtPrep::of(&spec),
                regions: spec.labels.clone(),
            }),
        };
        if let Some(kind) = kind {
            let id = medinfer_pipelines::models::ModelId::of(path).map_err(|e| e.to_string())?;
            let (file, shapes) = (path.to_path_buf(), spec.input_shapes.clone());
            let loader: crate::jobs::SessionLoader = Arc::new(move || {
                let opts = SessionOptions {
                    precision,
                    mode: Mode::Throughput,
                    threads,
                    batch: Some(8),
                    input_shapes: shapes.clone(),
                    shared_cpu: true,
                    ..Default::default()
                };
                load_on(backend, &file, &opts)
            });
            jobs = Some(crate::jobs::JobRunner::start(
                name,
                kind,
                id,
                loader,
                config.max_queue,
            ));
        }
    }
    let names: Vec<String> = inputs.iter().map(|(n, _, _)| n.clone()).collect();
    let file = path.to_path_buf();
    // One session per shape set serves every instance, one stream each (see crate::batcher).
    let loader: Loader = std::sync::Arc::new(move |shapes: &[Vec<usize>], streams: usize| {
        let opts = SessionOptions {
            precision,
            mode: Mode::for_streams(streams),
            streams: Some(streams),
            threads,
            batch: shapes.first().and_then(|s| s.first().copied()),
            input_shapes: names.iter().cloned().zip(shapes.iter().cloned()).collect(),
            shared_cpu: true,
        };
        load_on(backend, &file, &opts)
    });
    let settings = BatchSettings {
        max_batch: config.max_batch,
        max_delay: Duration::from_micros(config.max_queue_delay_us),
        max_queue: config.max_queue,
        instances: config.instances,
        pad: config.pad_batches,
    };
    Ok(LoadedModel {
        name: name.to_string(),
        version: version.to_string(),
        backend,
        inputs,
        outputs,
        batcher: Batcher::start(name, loader, settings),
        config: config.clone(),
        cxr,
        jobs,
    })
}

/// The engine-facing spec of a loaded model's inputs for one request (unused dims resolved).
pub fn spec_matches(declared: &[i64], given: &[usize]) -> bool {
    declared.len() == given.len()
        && declared
            .iter()
            .zip(given)
            .all(|(d, g)| *d < 0 || *d as usize == *g)
}
