//! One module per subcommand: each parses its arguments, calls the library crates and prints
//! what they return.

pub mod bench;
pub mod bench_io;
pub mod bench_pipeline;
pub mod convert;
pub mod demo;
pub mod generate;
pub mod infer;
pub mod info;
pub mod inspect;
pub mod optimize;
pub mod phantom;
pub mod quantize;
pub mod run_cardiac;
pub mod run_ct;
pub mod run_cxr;
pub mod run_fmri;
pub mod run_segment;
pub mod runtimes;
pub mod serve;
pub mod tune;
pub mod zoo;
