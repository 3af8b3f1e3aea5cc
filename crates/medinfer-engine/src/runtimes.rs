//! Native runtimes: where the ONNX Runtime and OpenVINO shared libraries come from.
//!
//! They are never downloaded at build time. `medinfer runtimes install` fetches the pinned PyPI
//! wheels with pip (`pip download --no-deps`, nothing is installed into Python), extracts their
//! shared libraries into `$MEDINFER_HOME/runtimes` (default `~/.cache/medinfer/runtimes`) and
//! records versions and SHA-256 checksums in `manifest.json` there.
//!
//! Discovery order for each library: an explicit environment variable (`MEDINFER_ORT_LIB` or
//! ort's own `ORT_DYLIB_PATH`; `MEDINFER_OPENVINO_LIB`, a file or the wheel's `libs` folder),
//! then the medinfer cache, then an installed Python package (`onnxruntime`, `openvino`).
//! An environment variable that points to nothing is an error, not a reason to look elsewhere.

use crate::EngineError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ONNX Runtime release medinfer is built and tested against (`ort` 2.0.0-rc.15, API 31).
pub const ORT_VERSION: &str = "1.31.1";
/// The OpenVINO release medinfer is tested against.
pub const OPENVINO_VERSION: &str = "2026.4.1";
/// The command that installs both.
pub const INSTALL_HINT: &str = "medinfer runtimes install";

/// medinfer's cache directory: `$MEDINFER_HOME`, else `$XDG_CACHE_HOME/medinfer`, else
/// `~/.cache/medinfer`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("MEDINFER_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(x).join("medinfer");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("medinfer")
}

/// Where the extracted runtimes live.
pub fn runtimes_dir() -> PathBuf {
    home().join("runtimes")
}

/// A located shared library.
#[derive(Clone, Debug, Serialize)]
pub struct Located {
    /// The file to load.
    pub path: PathBuf,
    /// How it was found (`env MEDINFER_ORT_LIB`, `cache`, `python package`).
    pub source: String,
    /// Version, when the file name or manifest tells.
    pub version: Option<String>,
}

/// One runtime's record in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RuntimeRecord {
    /// Release version.
    pub version: String,
    /// The wheel it came from.
    pub wheel: String,
    /// SHA-256 of that wheel.
    pub wheel_sha256: String,
    /// The library to load, relative to the runtimes directory.
    pub library: String,
    /// SHA-256 of the library.
    pub library_sha256: String,
    /// Files extracted.
    pub files: usize,
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct Manifest {
    /// ONNX Runtime.
    pub onnxruntime: Option<RuntimeRecord>,
    /// OpenVINO.
    pub openvino: Option<RuntimeRecord>,
}

/// Reads the manifest (absent or unreadable: empty).
pub fn read_manifest() -> Manifest {
    std::fs::read(runtimes_dir().join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn env_path(vars: &[&str]) -> Option<(String, PathBuf)> {
    vars.iter().find_map(|v| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(|p| (v.to_string(), PathBuf::from(p)))
    })
}

/// Finds `prefix*` (a versioned shared library) in `dir`.
fn find_lib(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

fn python_package_dir(package: &str) -> Option<PathBuf> {
    let python = std::env::var("MEDINFER_PYTHON").unwrap_or_else(|_| "python3".into());
    let code = format!(
        "import importlib.util as u; s = u.find_spec('{package}'); \
         print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')"
    );
    let out = Command::new(python).args(["-c", &code]).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn version_from_name(path: &Path, prefix: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(prefix)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// Why a native library was not found: where medinfer looked.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// Where one native library is looked for, in order: environment variables, the project
/// cache (its install manifest), an installed Python package.
struct Lookup {
    /// The library's file name (for messages).
    file: &'static str,
    /// File-name prefix of the versioned library.
    prefix: &'static str,
    /// Prefix before the version in the file name.
    version_prefix: &'static str,
    /// Environment variables naming the library (or, with `env_dir`, its folder).
    env: &'static [&'static str],
    /// Whether an environment variable may name a folder.
    env_dir: bool,
    /// The install manifest's record.
    manifest: fn(Manifest) -> Option<RuntimeRecord>,
    /// Python package and the folder inside it that holds the library.
    python: (&'static str, &'static str),
}

fn locate(l: &Lookup) -> Result<Located, NotFound> {
    let version = |p: &Path| version_from_name(p, l.version_prefix);
    if let Some((var, p)) = env_path(l.env) {
        let file = if l.env_dir && p.is_dir() {
            find_lib(&p, l.prefix)
        } else {
            Some(p.clone()).filter(|p| p.is_file())
        };
        return match file {
            Some(f) => Ok(Located {
                version: version(&f),
                path: f,
                source: format!("env {var}"),
            }),
            None => Err(NotFound(format!(
                "{var} points to {}, which {}",
                p.display(),
                if l.env_dir {
                    format!("holds no {}", l.file)
                } else {
                    "is not a file".into()
                }
            ))),
        };
    }
    if let Some(rec) = (l.manifest)(read_manifest()) {
        let p = runtimes_dir().join(&rec.library);
        if p.is_file() {
            return Ok(Located {
                path: p,
                source: "cache".into(),
                version: Some(rec.version),
            });
        }
    }
    if let Some(dir) = python_package_dir(l.python.0) {
        if let Some(p) = find_lib(&dir.join(l.python.1), l.prefix) {
            return Ok(Located {
                version: version(&p),
                path: p,
                source: "python package".into(),
            });
        }
    }
    Err(NotFound(format!(
        "{} not found (looked at {}, {}, and the Python package {})",
        l.file,
        l.env.join(" / "),
        runtimes_dir().display(),
        l.python.0
    )))
}

/// Finds the ONNX Runtime library. `Err` says where it looked.
pub fn locate_ort() -> Result<Located, NotFound> {
    locate(&Lookup {
        file: "libonnxruntime.so",
        prefix: "libonnxruntime.so.",
        version_prefix: "libonnxruntime.so.",
        env: &["MEDINFER_ORT_LIB", "ORT_DYLIB_PATH"],
        env_dir: false,
        manifest: |m| m.onnxruntime,
        python: ("onnxruntime", "capi"),
    })
}

/// Finds the OpenVINO C library. `Err` says where it looked.
pub fn locate_openvino() -> Result<Located, NotFound> {
    locate(&Lookup {
        file: "libopenvino_c.so",
        prefix: "libopenvino_c.so",
        version_prefix: "libopenvino_c.so.",
        env: &["MEDINFER_OPENVINO_LIB"],
        env_dir: true,
        manifest: |m| m.openvino,
        python: ("openvino", "libs"),
    })
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// How to install.
#[derive(Clone, Debug, Default)]
pub struct InstallOptions {
    /// Use wheels already in this folder instead of running pip (offline install).
    pub wheel_dir: Option<PathBuf>,
    /// Re-install even when the manifest says the pinned versions are present and intact.
    pub force: bool,
}

struct WheelSpec {
    package: &'static str,
    version: &'static str,
    /// Prefix inside the wheel of the files to extract.
    member_prefix: &'static str,
    /// File name prefix of the library to load.
    library_prefix: &'static str,
    /// Skip members whose file name contains any of these (Python bindings).
    skip: &'static [&'static str],
}

const WHEELS: [WheelSpec; 2] = [
    WheelSpec {
        package: "onnxruntime",
        version: ORT_VERSION,
        member_prefix: "onnxruntime/capi/",
        library_prefix: "libonnxruntime.so.",
        skip: &["pybind11", ".py"],
    },
    WheelSpec {
        package: "openvino",
        version: OPENVINO_VERSION,
        member_prefix: "openvino/libs/",
        library_prefix: "libopenvino_c.so",
        skip: &[],
    },
];

fn record_intact(rec: &RuntimeRecord) -> bool {
    let p = runtimes_dir().join(&rec.library);
    sha256_file(&p)
        .map(|h| h == rec.library_sha256)
        .unwrap_or(false)
}

/// Installs (or verifies) both pinned runtimes; `progress` receives one line per step.
pub fn install(opts: &InstallOptions, progress: &dyn Fn(&str)) -> Result<Manifest, EngineError> {
    let err = |m: String| EngineError::Runtime(m);
    let dir = runtimes_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let mut manifest = read_manifest();
    let current = |m: &Manifest, package: &str| -> Option<RuntimeRecord> {
        match package {
            "onnxruntime" => m.onnxruntime.clone(),
            _ => m.openvino.clone(),
        }
    };
    for spec in &WHEELS {
        if !opts.force {
            if let Some(rec) = current(&manifest, spec.package) {
                if rec.version == spec.version && record_intact(&rec) {
                    progress(&format!(
                        "{} {} already installed and intact",
                        spec.package, spec.version
                    ));
                    continue;
                }
            }
        }
        let wheel_dir = match &opts.wheel_dir {
            Some(d) => d.clone(),
            None => {
                let d = dir.join("wheels");
                std::fs::create_dir_all(&d)
                    .map_err(|e| err(format!("cannot create {}: {e}", d.display())))?;
                progress(&format!(
                    "downloading {}=={} with pip",
                    spec.package, spec.version
                ));
                let python = std::env::var("MEDINFER_PYTHON").unwrap_or_else(|_| "python3".into());
                let out = Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "download",
                        "--no-deps",
                        "--only-binary=:all:",
                        "--disable-pip-version-check",
                        "-q",
                        "-d",
                    ])
                    .arg(&d)
                    .arg(format!("{}=={}", spec.package, spec.version))
                    .output()
                    .map_err(|e| {
                        err(format!(
                            "cannot run {python} -m pip (is Python 3 with pip installed?): {e}"
                        ))
                    })?;
                if !out.status.success() {
                    return Err(err(format!(
                        "pip download {}=={} failed: {}",
                        spec.package,
                        spec.version,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                d
            }
        };
        let wheel = find_lib(&wheel_dir, &format!("{}-{}", spec.package, spec.version))
            .filter(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| {
                err(format!(
                    "no {}-{} wheel in {}",
                    spec.package,
                    spec.version,
                    wheel_dir.display()
                ))
            })?;
        progress(&format!("extracting {}", wheel.display()));
        let rec = extract(spec, &wheel, &dir)?;
        match spec.package {
            "onnxruntime" => manifest.onnxruntime = Some(rec),
            _ => manifest.openvino = Some(rec),
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| err(e.to_string()))?;
        std::fs::write(dir.join("manifest.json"), json)
            .map_err(|e| err(format!("cannot write manifest: {e}")))?;
    }
    Ok(manifest)
}

fn extract(spec: &WheelSpec, wheel: &Path, dir: &Path) -> Result<RuntimeRecord, EngineError> {
    let err = |m: String| EngineError::Runtime(format!("{}: {m}", wheel.display()));
    let wheel_sha256 = sha256_file(wheel).map_err(|e| err(e.to_string()))?;
    let file = std::fs::File::open(wheel).map_err(|e| err(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| err(format!("not a wheel (zip): {e}")))?;
    let sub = format!("{}-{}", spec.package, spec.version);
    let target = dir.join(&sub);
    let staging = dir.join(format!(".{sub}.partial"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| err(e.to_string()))?;
    let mut files = 0;
    let mut library = None;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| err(e.to_string()))?;
        let name = entry.name().to_string();
        let Some(rest) = name.strip_prefix(spec.member_prefix) else {
            continue;
        };
        if rest.is_empty()
            || rest.contains('/')
            || rest.contains("..")
            || spec.skip.iter().any(|s| rest.contains(s))
        {
            continue;
        }
        let out_path = staging.join(rest);
        let mut out = std::fs::File::create(&out_path).map_err(|e| err(e.to_string()))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| err(format!("extracting {name}: {e}")))?;
        files += 1;
        if rest.starts_with(spec.library_prefix) && library.is_none() {
            library = Some(rest.to_string());
        }
    }
    let library = library.ok_or_else(|| err(format!("holds no {}*", spec.library_prefix)))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target).map_err(|e| err(e.to_string()))?;
    let library_sha256 = sha256_file(&target.join(&library)).map_err(|e| err(e.to_string()))?;
    Ok(RuntimeRecord {
        version: spec.version.to_string(),
        wheel: wheel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        wheel_sha256,
        library: format!("{sub}/{library}"),
        library_sha256,
        files,
    })
}

/// Re-hashes the installed libraries against the manifest; returns one line per runtime.
pub fn verify() -> Vec<(String, Result<(), RuntimeProblem>)> {
    let m = read_manifest();
    [("onnxruntime", m.onnxruntime), ("openvino", m.openvino)]
        .into_iter()
        .map(|(name, rec)| {
            let r = match rec {
                None => Err(RuntimeProblem::Missing),
                Some(rec) if record_intact(&rec) => Ok(()),
                Some(rec) => Err(RuntimeProblem::Altered(rec.library)),
            };
            (name.to_string(), r)
        })
        .collect()
}

/// What is wrong with an installed runtime.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RuntimeProblem {
    /// Not installed.
    #[error("not installed (medinfer runtimes install)")]
    Missing,
    /// A file no longer matches the checksum recorded at install time.
    #[error("{0} does not match its recorded checksum; reinstall with `medinfer runtimes install --force`")]
    Altered(String),
}
