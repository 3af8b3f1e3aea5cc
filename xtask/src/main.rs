//! Project chores, run as `cargo xtask <task>`.
//!
//! - `test`: the whole suite on a fresh machine: build the CLI, fetch the native runtimes
//!   (`medinfer runtimes install`, pip + PyPI wheels), check formatting and clippy, then run
//!   every test with both native backends required, so a missing runtime fails instead of
//!   silently shrinking the suite.
//!   Then the DICOM corpus check (`benchmarks/dicom_corpus/coverage.py --strict`) against
//!   pydicom in its own venv (`~/.cache/medinfer/venv-dicom`, pinned PyPI packages).
//!   Then `medinfer serve` against Triton's and KServe's own Python clients (`tests/clients/`,
//!   `~/.cache/medinfer/venv-clients`, pinned tritonclient, kserve + onnxruntime as the
//!   reference), and the viewer page in headless chromium (Debian's, apt-installed when
//!   missing) driven by selenium, with a screenshot in `target/artifacts/`.
//!   Then the deployment manifests (`deploy/validate.py`: Kubernetes schemas, KServe fields).
//! - `lint`: formatting and clippy only.
//! - `corpus`: the DICOM corpus check alone (on an existing `target/release/medinfer`).

use std::process::{Command, ExitCode};
use std::time::Instant;

fn step(name: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("\n=== {name}: {cmd:?}");
    let t = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{name}: cannot start: {e}"))?;
    eprintln!(
        "=== {name}: {} in {:.0} s",
        if status.success() { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn lint() -> Result<(), String> {
    step("format", cargo().args(["fmt", "--all", "--", "--check"]))?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )
}

fn test() -> Result<(), String> {
    step(
        "build",
        cargo().args(["build", "--release", "-p", "medinfer-cli"]),
    )?;
    step(
        "runtimes",
        Command::new("target/release/medinfer").args(["runtimes", "install"]),
    )?;
    step(
        "runtimes check",
        Command::new("target/release/medinfer").args(["runtimes"]),
    )?;
    lint()?;
    step(
        "tests",
        cargo()
            .args(["test", "--release", "--workspace"])
            .env("MEDINFER_REQUIRE_BACKENDS", "ort,openvino")
            .env("RUST_BACKTRACE", "1"),
    )?;
    dicom_corpus()?;
    server_clients()?;
    deploy_manifests()
}

/// The Kubernetes / KServe manifests against the Kubernetes schemas (no cluster needed).
fn deploy_manifests() -> Result<(), String> {
    let python = venv(
        "venv-deploy",
        &["kubernetes-validate==1.37.0", "PyYAML==6.0.4"],
    )?;
    step(
        "deploy manifests",
        Command::new(python).arg("deploy/validate.py"),
    )
}

/// Python packages of the server client check, pinned.
const CLIENT_PACKAGES: &[&str] = &[
    "numpy==2.4.6",
    "tritonclient[http]==2.73.0",
    "kserve==0.21.0",
    "onnxruntime==1.31.1",
    "selenium==4.51.0",
    "dicomweb-client==0.61.2",
];

/// A venv under ~/.cache/medinfer with `packages` installed (re-made when the list changes);
/// returns its python.
fn venv(name: &str, packages: &[&str]) -> Result<std::path::PathBuf, String> {
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let venv = std::path::Path::new(&home)
        .join(".cache/medinfer")
        .join(name);
    let python = venv.join("bin/python");
    let stamp = venv.join("medinfer-packages.txt");
    let want = packages.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        step(
            &format!("{name}: venv"),
            Command::new("python3").args(["-m", "venv", "--clear", &venv.display().to_string()]),
        )?;
        step(
            &format!("{name}: packages (PyPI)"),
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(packages),
        )?;
        std::fs::write(&stamp, &want).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(python)
}

/// `medinfer serve` driven by Triton's Python HTTP client, unchanged.
fn server_clients() -> Result<(), String> {
    let python = venv("venv-clients", CLIENT_PACKAGES)?;
    for (name, script) in [
        (
            "server vs tritonclient.http",
            "tests/clients/triton_http_check.py",
        ),
        (
            "server vs kserve.InferenceRESTClient",
            "tests/clients/kserve_check.py",
        ),
        (
            "server vs dicomweb-client (STOW-RS)",
            "tests/clients/stow_check.py",
        ),
    ] {
        step(
            name,
            Command::new(&python).args([script, "target/release/medinfer"]),
        )?;
    }
    browser()?;
    step(
        "viewer page in headless chromium",
        Command::new(&python).args(["tests/clients/viewer_check.py", "target/release/medinfer"]),
    )
}

/// Debian's chromium and chromedriver for the viewer check, installed with apt when missing
/// (CI runs as root on a fresh machine).
fn browser() -> Result<(), String> {
    let have = |p: &str| std::path::Path::new(p).exists();
    if have("/usr/bin/chromium") && have("/usr/bin/chromedriver") {
        return Ok(());
    }
    step(
        "browser: apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    step(
        "browser: chromium + chromedriver (Debian)",
        Command::new("apt-get")
            .args(["install", "-y", "-q", "chromium", "chromium-driver"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The reference Python packages of the DICOM corpus check, pinned (the versions the committed
/// figures in docs/benchmarks.md were measured with).
const CORPUS_PACKAGES: &[&str] = &[
    "numpy==2.4.6",
    "pydicom==3.0.2",
    "pydicom-data==1.0.0",
    "pylibjpeg==2.1.0",
    "pylibjpeg-libjpeg==2.5.0",
    "pylibjpeg-openjpeg==2.6.0",
    "pylibjpeg-rle==2.2.0",
    "pyjpegls==1.5.1",
    "nibabel==5.4.2",
    "highdicom==0.28.2",
];

/// Every public DICOM test file shipped in pydicom, pydicom-data, nibabel and highdicom (plus
/// dcmtk / GDCM re-encodings when those tools are installed) through `medinfer convert`,
/// against pydicom + pylibjpeg + pyjpegls in their own venv: any wrong value, lost frame or
/// colour, panic text, or refusal of a file pydicom decodes fails the suite.
fn dicom_corpus() -> Result<(), String> {
    let python = venv("venv-dicom", CORPUS_PACKAGES)?;
    let mut cov = Command::new(&python);
    cov.args([
        "benchmarks/dicom_corpus/coverage.py",
        "target/release/medinfer",
        "--strict",
    ]);
    let has = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has("dcmconv") && has("gdcmconv") {
        let out = "target/dicom-variants";
        step(
            "DICOM corpus: dcmtk / GDCM re-encodings",
            Command::new("bash").args([
                "benchmarks/dicom_corpus/make_variants.sh",
                &python.display().to_string(),
                out,
            ]),
        )?;
        cov.args(["--extra", out]);
    } else {
        eprintln!(
            "note: dcmtk / GDCM not installed: the corpus check runs without their re-encodings"
        );
    }
    step("DICOM corpus vs pydicom", &mut cov)
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let t = Instant::now();
    let r = match task.as_str() {
        "test" => test(),
        "lint" => lint(),
        "corpus" => dicom_corpus(),
        "clients" => server_clients(),
        "deploy" => deploy_manifests(),
        _ => {
            eprintln!("usage: cargo xtask <test|lint|corpus|clients|deploy>\n  test  the whole suite with its own set-up (runtimes included)\n  lint  cargo fmt --check and clippy -D warnings\n  corpus  the DICOM corpus check alone (needs target/release/medinfer)\n  clients  medinfer serve against tritonclient, kserve, dicomweb-client and a browser alone (needs target/release/medinfer)\n  deploy  validate deploy/ manifests");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => {
            eprintln!(
                "\ncargo xtask {task}: all steps passed in {:.0} s",
                t.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ncargo xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}
