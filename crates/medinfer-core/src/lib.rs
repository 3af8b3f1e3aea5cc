//! # medinfer-core
//!
//! The data model every other medinfer crate speaks: [`Tensor`] (shape + typed, owned data) and
//! the shared [`CoreError`]. Images and volumes join here as the I/O layer grows.
//!
//! ```
//! use medinfer_core::{Tensor, DType};
//! let t = Tensor::from_f32(vec![2, 3], vec![0.0; 6]).unwrap();
//! assert_eq!(t.dtype(), DType::F32);
//! assert_eq!(t.len(), 6);
//! ```
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod geom;
mod image;
pub mod panic;
pub mod preprocess;
mod rng;
mod tensor;

pub use image::{min_max, reverse_axes, Image2d, Photometric, Tags, VoiLut, Volume, Window};

pub use rng::SeededRng;
pub use tensor::{DType, Tensor, TensorData};

/// Errors raised by the core data model.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The number of elements does not match the product of the shape.
    #[error("tensor data has {got} elements but shape {shape:?} needs {expected}")]
    ShapeMismatch {
        /// The requested shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements provided.
        got: usize,
    },
    /// A shape whose element count overflows `usize`.
    #[error("shape {0:?} is too large")]
    ShapeOverflow(Vec<usize>),
    /// An index outside the object's extent.
    #[error("{what} {index:?} is out of range {len:?}")]
    OutOfRange {
        /// What was indexed.
        what: &'static str,
        /// The index asked for.
        index: Vec<usize>,
        /// The extent.
        len: Vec<usize>,
    },
    /// An argument outside what the operation accepts.
    #[error("{0}")]
    Invalid(String),
    /// A typed accessor was used on a tensor of another element type.
    #[error("expected a {expected} tensor, found {found}")]
    WrongDType {
        /// The element type the caller asked for.
        expected: DType,
        /// The element type the tensor holds.
        found: DType,
    },
}

/// The last non-empty line of a child `medinfer` process's stderr, without its `error: `
/// prefix: what it said when it failed (empty when it said nothing).
pub fn last_error_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

/// The number of logical CPUs this process may really use.
///
/// Rust's `available_parallelism` honours the process's CPU affinity mask and cgroup v1/v2 CPU
/// quotas (Linux), so a container limited to 2 CPUs on a 64-core host answers 2. Never below 1.
pub fn usable_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
