//! # medinfer-io
//!
//! Readers and writers for the files medinfer consumes and produces. Today: NumPy `.npy`
//! tensors ([`npy`]), the exchange format of `medinfer infer`.
#![warn(missing_docs)]

pub mod npy;

/// I/O errors: always name the file and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The OS could not read or write the file.
    #[error("{path}: {source}")]
    Os {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's content is malformed or unsupported.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}
