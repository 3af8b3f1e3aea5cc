//! Project chores, run as `cargo xtask <task>`.
//!
//! - `test`: the whole suite on a fresh machine: build the CLI, fetch the native runtimes
//!   (`medinfer runtimes install`, pip + PyPI wheels), check formatting and clippy, then run
//!   every test with both native backends required, so a missing runtime fails instead of
//!   silently shrinking the suite.
//! - `lint`: formatting and clippy only.

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
