//! # medinfer-onnx
//!
//! ONNX models as data: loading and saving ([`load_model`], [`save_model`]), analysis
//! ([`analyze`]: inputs, outputs, op histogram, trainable parameters, MACs), static shape
//! inference ([`shapes`]), a graph builder ([`builder`]) and the seeded reference models that
//! medinfer uses for speed work ([`zoo`]).
//!
//! ```
//! use medinfer_onnx::{zoo, analyze};
//! let model = zoo::build("resnet18-ct").unwrap();
//! let info = analyze(&model, None);
//! assert_eq!(info.trainable_parameters, 11_173_318);
//! ```
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod builder;
pub mod f16store;
pub mod fixtures;
pub mod hoist;
mod info;
mod model;
pub mod opset;
pub mod optimize;
pub mod proto;
pub mod qdq;
pub mod shapes;
pub mod symdims;
pub mod weightonly;
pub mod zoo;

pub use info::{analyze, data_inputs, value_info, Dim, ModelInfo, ValueInfo};
pub use model::{
    attr_f, attr_i, attr_ints, attr_s, decode_model, elem_type_name, encode_model, load_model,
    resolve_external_data, save_model, save_model_external, tensor_dims, tensor_to_f32, OnnxError,
};
pub use optimize::{optimize, OptimizeReport};
