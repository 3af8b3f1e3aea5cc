//! Helpers shared by the command-line test files: run the binary, read its output, and judge
//! a failure (one clear line, exit code 1, never a panic).
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// The `medinfer` binary under test.
pub fn medinfer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medinfer"))
}

/// Runs `medinfer ARGS...` to completion.
pub fn run(args: &[&str]) -> Output {
    medinfer().args(args).output().expect("medinfer runs")
}

/// Its standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Its standard output parsed as JSON, after checking that it succeeded.
pub fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

/// A failure must be one clear line naming every needle, exit code 1, and never a panic.
pub fn assert_clean_failure(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {e}");
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "panic: {e}"
    );
    let lines: Vec<&str> = e.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {e}");
    assert!(lines[0].starts_with("error: "), "{e}");
    for n in needles {
        assert!(e.contains(n), "'{n}' missing from: {e}");
    }
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
