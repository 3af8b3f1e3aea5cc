//! tract: the pure-Rust engine, always available.
use super::{Availability, Backend, Loaded};
use crate::options::Prepared;
use crate::pool::Pool;
use crate::{guard, BackendKind, BackendSession, EngineError, Precision, SessionInfo};
use medinfer_core::{DType, Tensor, TensorData};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

/// tract's version (tract-linalg is pinned to this exact release in the workspace).
pub(crate) const TRACT_VERSION: &str = "0.23.9";
const KIND: BackendKind = BackendKind::Tract;

pub(crate) struct Tract;

fn err(path: &std::path::Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Load {
        backend: KIND,
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    }
}

fn datum(dt: DType) -> DatumType {
    match dt {
        DType::F32 => f32::datum_type(),
        DType::F64 => f64::datum_type(),
        DType::I64 => i64::datum_type(),
        DType::I32 => i32::datum_type(),
        DType::I8 => i8::datum_type(),
        DType::U8 => u8::datum_type(),
        DType::Bool => bool::datum_type(),
    }
}

impl Backend for Tract {
    fn availability(&self) -> Availability {
        Availability {
            backend: KIND,
            available: true,
            version: Some(TRACT_VERSION.into()),
            library: None,
            source: Some("built in".into()),
            reason: None,
            fix: None,
        }
    }

    fn load(&self, p: &Prepared) -> Result<Loaded, EngineError> {
        if p.precision == Precision::Bf16 {
            return Err(EngineError::Unsupported {
                backend: KIND,
                what: "bf16 (tract computes in fp32; use --backend openvino for bf16)".into(),
            });
        }
        guard(KIND, "loading", || {
            let mut model = tract_onnx::onnx()
                .model_for_path(&p.path)
                .map_err(|e| err(&p.path, e))?;
            for (i, spec) in p.inputs.iter().enumerate() {
                model
                    .set_input_fact(
                        i,
                        InferenceFact::dt_shape(datum(spec.dtype), spec.shape.clone()),
                    )
                    .map_err(|e| err(&p.path, e))?;
            }
            let plan = model
                .into_optimized()
                .and_then(|m| m.into_runnable())
                .map_err(|e| err(&p.path, e))?;
            let mut states = Vec::with_capacity(p.streams);
            for _ in 0..p.streams {
                let exec = if p.threads > 1 {
                    Executor::multithread(p.threads)
                } else {
                    Executor::SingleThread
                };
                states.push((plan.spawn().map_err(|e| err(&p.path, e))?, exec));
            }
            let info = SessionInfo {
                backend: KIND,
                backend_version: TRACT_VERSION.into(),
                library: None,
                precision: p.precision,
                effective_precision: "fp32".into(),
                mode: p.mode,
                streams: p.streams,
                threads: p.threads,
                notes: vec![format!(
                    "{} stream(s), each its own execution state",
                    p.streams
                )],
            };
            let sess: Box<dyn BackendSession> = Box::new(TractSession {
                states: Pool::new(states),
            });
            Ok((sess, info, p.outputs.clone()))
        })
    }
}

struct TractSession {
    states: Pool<(TypedSimpleState, Executor)>,
}

fn to_tract(t: &Tensor) -> TractResult<TValue> {
    let shape = t.shape();
    let tensor = match t.data() {
        TensorData::F32(v) => tract_onnx::prelude::Tensor::from_shape(shape, v)?,
        TensorData::F64(v) => tract_onnx::prelude::Tensor::from_shape(shape, v)?,
        TensorData::I64(v) => tract_onnx::prelude::Tensor::from_shape(shape, v)?,
        TensorData::I32(v) => tract_onnx::prelude::Tensor::from_shape(shape, v)?,
        TensorData::I8(v) => tract_onnx::prelude::Tensor::from_shape(shape, v)?,
        TensorData::U8(v) => tract_onnx::prelude::Tensor::from_shape(shape, v)?,
        TensorData::Bool(v) => tract_onnx::prelude::Tensor::from_shape(shape, v)?,
    };
    Ok(tensor.into_tvalue())
}

/// An engine output as a medinfer tensor: one contiguous copy of tract's storage (tract keeps
/// its own aligned buffers, so one copy each way is the least its API allows).
fn from_tract(t: &tract_onnx::prelude::Tensor) -> Result<Tensor, String> {
    fn copy<T: Datum + Copy>(t: &tract_onnx::prelude::Tensor) -> Result<Vec<T>, String> {
        t.try_as_plain_ram()
            .and_then(|v| v.as_slice::<T>().map(|s| s.to_vec()))
            .map_err(|e| e.to_string())
    }
    let shape = t.shape().to_vec();
    let data = match t.datum_type() {
        dt if dt == f32::datum_type() => TensorData::F32(copy(t)?),
        dt if dt == f64::datum_type() => TensorData::F64(copy(t)?),
        dt if dt == i64::datum_type() => TensorData::I64(copy(t)?),
        dt if dt == i32::datum_type() => TensorData::I32(copy(t)?),
        dt if dt == i8::datum_type() => TensorData::I8(copy(t)?),
        dt if dt == u8::datum_type() => TensorData::U8(copy(t)?),
        dt if dt == bool::datum_type() => TensorData::Bool(copy(t)?),
        other => return Err(format!("output of type {other:?} is not supported")),
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

impl BackendSession for TractSession {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let run_err = |m: String| EngineError::Run {
            backend: KIND,
            message: m,
        };
        let values: TVec<TValue> = inputs
            .iter()
            .map(to_tract)
            .collect::<TractResult<_>>()
            .map_err(|e| run_err(format!("{e:#}")))?;
        guard(KIND, "running", || {
            let outs = self
                .states
                .with(|(state, exec)| multithread_tract_scope(exec.clone(), || state.run(values)))
                .map_err(|e| run_err(format!("{e:#}")))?;
            outs.iter()
                .map(|v| from_tract(v).map_err(run_err))
                .collect()
        })
    }
}
