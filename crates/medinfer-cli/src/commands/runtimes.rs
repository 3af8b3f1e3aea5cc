//! `medinfer runtimes`: show, install or verify the native engine libraries.

use crate::args::print_json;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use medinfer_engine::{availability_all, runtimes};
use std::path::PathBuf;

#[derive(Args)]
pub struct RuntimesArgs {
    #[command(subcommand)]
    pub action: Option<RuntimesAction>,
    /// Print JSON instead of a table (when listing).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum RuntimesAction {
    /// Fetch the pinned onnxruntime and openvino wheels with pip and extract their libraries into
    /// $MEDINFER_HOME/runtimes (default ~/.cache/medinfer/runtimes).
    Install {
        /// Use wheels already downloaded into this folder instead of running pip.
        #[arg(long)]
        wheel_dir: Option<PathBuf>,
        /// Reinstall even if the pinned versions are present and intact.
        #[arg(long)]
        force: bool,
    },
    /// Re-hash the installed libraries against the checksums recorded at install time.
    Verify,
}

pub fn run(a: RuntimesArgs) -> Result<()> {
    match a.action {
        Some(RuntimesAction::Install { wheel_dir, force }) => {
            let opts = runtimes::InstallOptions { wheel_dir, force };
            let m = runtimes::install(&opts, &|line| eprintln!("{line}"))?;
            eprintln!("installed into {}", runtimes::runtimes_dir().display());
            for (name, rec) in [("onnxruntime", &m.onnxruntime), ("openvino", &m.openvino)] {
                if let Some(r) = rec {
                    eprintln!(
                        "  {name} {}: {} ({} files, sha256 {})",
                        r.version,
                        r.library,
                        r.files,
                        &r.library_sha256[..16]
                    );
                }
            }
            // Prove the libraries load.
            for av in availability_all() {
                if !av.available {
                    bail!(
                        "{} was installed but does not load: {}",
                        av.backend,
                        av.reason.unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        Some(RuntimesAction::Verify) => {
            let mut bad = 0;
            for (name, r) in runtimes::verify() {
                match r {
                    Ok(()) => println!("{name}: ok"),
                    Err(e) => {
                        bad += 1;
                        println!("{name}: {e}");
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} runtime(s) missing or altered");
            }
            Ok(())
        }
        None => {
            let all = availability_all();
            if a.json {
                return print_json(&all);
            }
            println!(
                "{:<9} {:<10} {:<12} {:<16} library / reason",
                "backend", "status", "version", "found via"
            );
            for av in all {
                let status = if av.available { "available" } else { "missing" };
                let detail = if av.available {
                    av.library
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(built in)".into())
                } else {
                    format!(
                        "{} (fix: {})",
                        av.reason.unwrap_or_default(),
                        av.fix.unwrap_or_default()
                    )
                };
                println!(
                    "{:<9} {:<10} {:<12} {:<16} {}",
                    av.backend.name(),
                    status,
                    av.version.unwrap_or_else(|| "-".into()),
                    av.source.unwrap_or_else(|| "-".into()),
                    detail
                );
            }
            println!("cache: {}", runtimes::runtimes_dir().display());
            Ok(())
        }
    }
}
