//! Project chores, run as `cargo xtask <task>`.
//!
//! - `test`: the whole suite on a fresh machine: build the CLI, fetch the native runtimes
//!   (`medinfer runtimes install`, pip + PyPI wheels), check formatting and clippy, then run
//!   every test with both native backends required, so a missing runtime fails instead of
//!   silently shrinking the suite.
//! - `lint`: formatting and clippy only.
//!
//! Both build with the optional codecs on (`medinfer-io/jpegls`: JPEG-LS through CharLS, which
//! needs cmake and a C++ compiler); `test` installs cmake from PyPI into
//! `~/.cache/medinfer/cmake` when the machine has none.

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

/// Optional features the suite builds with (the same in every step, so nothing is compiled
/// twice).
const FEATURES: &str = "medinfer-io/jpegls";

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if let Some(dir) = CMAKE_DIR.get() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.clone()];
        paths.extend(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(paths).expect("valid PATH"));
    }
    c
}

static CMAKE_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// CharLS builds with cmake: use the machine's, or install the PyPI `cmake` wheel (pip reaches
/// the package registry even where nothing else is reachable).
fn ensure_cmake() -> Result<(), String> {
    let works = |cmd: &mut Command| {
        cmd.arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&mut Command::new("cmake")) {
        return Ok(());
    }
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let target = std::path::Path::new(&home).join(".cache/medinfer/cmake");
    // The wheel ships the real binary under cmake/data/bin (its bin/ scripts need PYTHONPATH).
    let real = target.join("cmake/data/bin");
    if !works(&mut Command::new(real.join("cmake"))) {
        step(
            "cmake (PyPI wheel, for CharLS)",
            Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--upgrade",
                "--target",
                &target.display().to_string(),
                "cmake",
            ]),
        )?;
        if !works(&mut Command::new(real.join("cmake"))) {
            return Err("cmake is missing and the PyPI wheel did not provide one".into());
        }
    }
    CMAKE_DIR.set(real).ok();
    Ok(())
}

fn lint() -> Result<(), String> {
    ensure_cmake()?;
    step("format", cargo().args(["fmt", "--all", "--", "--check"]))?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--features",
            FEATURES,
            "--",
            "-D",
            "warnings",
        ]),
    )
}

fn test() -> Result<(), String> {
    ensure_cmake()?;
    step(
        "build",
        cargo().args([
            "build",
            "--release",
            "-p",
            "medinfer-cli",
            "--features",
            FEATURES,
        ]),
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
            .args(["test", "--release", "--workspace", "--features", FEATURES])
            .env("MEDINFER_REQUIRE_BACKENDS", "ort,openvino")
            .env("RUST_BACKTRACE", "1"),
    )
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let t = Instant::now();
    let r = match task.as_str() {
        "test" => test(),
        "lint" => lint(),
        _ => {
            eprintln!("usage: cargo xtask <test|lint>\n  test  the whole suite with its own set-up (runtimes included)\n  lint  cargo fmt --check and clippy -D warnings");
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
