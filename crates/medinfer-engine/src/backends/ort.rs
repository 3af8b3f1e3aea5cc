//! ONNX Runtime through the `ort` crate, its shared library loaded at run time.
use super::{Availability, Backend, Loaded};
use crate::options::Prepared;
use crate::pool::Pool;
use crate::runtimes::{locate_ort, INSTALL_HINT};
use crate::{guard, BackendKind, BackendSession, EngineError, Precision, SessionInfo};
use medinfer_core::{Tensor, TensorData};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session as OrtSession, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use std::borrow::Cow;
use std::sync::OnceLock;

const KIND: BackendKind = BackendKind::Ort;

pub(crate) struct Ort;

struct Runtime {
    env: ort::environment::Environment,
    lib: super::NativeLib,
}

/// ONNX Runtime can be loaded once per process; the outcome is remembered.
static RUNTIME: OnceLock<super::LoadOutcome<Runtime>> = OnceLock::new();

fn runtime() -> &'static super::LoadOutcome<Runtime> {
    RUNTIME.get_or_init(|| {
        let found = locate_ort().map_err(|r| (r.to_string(), INSTALL_HINT))?;
        let path = found.path.clone();
        let fix = "medinfer runtimes install --force";
        let env = guard(KIND, "loading the library", || {
            let builder = ort::init_from(&path).map_err(|e| {
                EngineError::Runtime(format!("cannot load {}: {e}", path.display()))
            })?;
            builder.with_name("medinfer").build().map_err(|e| {
                EngineError::Runtime(format!(
                    "{} loaded but failed to start: {e}",
                    path.display()
                ))
            })
        })
        .map_err(|e| (e.to_string(), fix))?;
        Ok(Runtime {
            env,
            lib: super::NativeLib {
                version: found.version.unwrap_or_else(|| "unknown".into()),
                path,
                source: found.source,
            },
        })
    })
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl Backend for Ort {
    fn availability(&self) -> Availability {
        super::native_availability(KIND, runtime().as_ref().map(|r| &r.lib))
    }

    fn load(&self, p: &Prepared) -> Result<Loaded, EngineError> {
        if p.precision == Precision::Bf16 {
            return Err(EngineError::Unsupported {
                backend: KIND,
                what: "bf16 on CPU (ONNX Runtime's CPU provider computes fp32 or quantized int8; use --backend openvino for bf16)".into(),
            });
        }
        let rt = super::native_ready(KIND, runtime())?;
        let load_err = |m: String| EngineError::Load {
            backend: KIND,
            path: p.path.clone(),
            message: m,
        };
        guard(KIND, "loading", || {
            let mut sessions = Vec::with_capacity(p.streams);
            for _ in 0..p.streams {
                let mut b = OrtSession::builder(&rt.env)
                    .map_err(s)
                    .and_then(|b| {
                        b.with_optimization_level(GraphOptimizationLevel::All)
                            .map_err(s)
                    })
                    .and_then(|b| b.with_intra_threads(p.threads).map_err(s))
                    .and_then(|b| b.with_inter_threads(1).map_err(s))
                    .map_err(&load_err)?;
                if p.streams > 1 || p.shared_cpu {
                    // Spinning intra-op threads of one stream steal cycles from the others,
                    // and from whatever else shares the CPU (a server's request handling).
                    b = b
                        .with_intra_op_spinning(false)
                        .map_err(|e| load_err(s(e)))?;
                }
                sessions.push(b.commit_from_file(&p.path).map_err(|e| load_err(s(e)))?);
            }
            let info = SessionInfo {
                backend: KIND,
                backend_version: rt.lib.version.clone(),
                library: Some(rt.lib.path.clone()),
                precision: p.precision,
                effective_precision: "fp32".into(),
                mode: p.mode,
                streams: p.streams,
                threads: p.threads,
                notes: vec![format!(
                    "{} session(s) x {} intra-op thread(s), graph optimization level all",
                    p.streams, p.threads
                )],
            };
            let names = p.inputs.iter().map(|i| i.name.clone()).collect();
            let outputs = p.outputs.iter().map(|o| o.name.clone()).collect();
            let sess: Box<dyn BackendSession> = Box::new(OrtRun {
                sessions: Pool::new(sessions),
                names,
                outputs,
            });
            Ok((sess, info, p.outputs.clone()))
        })
    }
}

struct OrtRun {
    sessions: Pool<OrtSession>,
    names: Vec<String>,
    outputs: Vec<String>,
}

fn input_value(t: &Tensor) -> Result<SessionInputValue<'_>, String> {
    let shape = t.shape().to_vec();
    Ok(match t.data() {
        TensorData::F32(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(s)?
            .into(),
        TensorData::F64(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(s)?
            .into(),
        TensorData::I64(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(s)?
            .into(),
        TensorData::I32(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(s)?
            .into(),
        TensorData::I8(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(s)?
            .into(),
        TensorData::U8(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(s)?
            .into(),
        TensorData::Bool(v) => TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(s)?
            .into(),
    })
}

fn output_tensor(v: &DynValue) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err("non-tensor output".into());
    };
    macro_rules! ext {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = v.try_extract_tensor::<$t>().map_err(s)?;
            (
                shape.iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => ext!(f32, F32),
        TensorElementType::Float64 => ext!(f64, F64),
        TensorElementType::Int64 => ext!(i64, I64),
        TensorElementType::Int32 => ext!(i32, I32),
        TensorElementType::Int8 => ext!(i8, I8),
        TensorElementType::Uint8 => ext!(u8, U8),
        TensorElementType::Bool => ext!(bool, Bool),
        other => return Err(format!("output element type {other:?} is not supported")),
    };
    Tensor::new(shape, data).map_err(s)
}

impl BackendSession for OrtRun {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let run_err = |m: String| EngineError::Run {
            backend: KIND,
            message: m,
        };
        guard(KIND, "running", || {
            let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                Vec::with_capacity(inputs.len());
            for (name, t) in self.names.iter().zip(inputs) {
                feed.push((
                    Cow::Borrowed(name.as_str()),
                    input_value(t).map_err(run_err)?,
                ));
            }
            self.sessions.with(|sess| {
                let outs = sess.run(feed).map_err(|e| run_err(s(e)))?;
                self.outputs
                    .iter()
                    .map(|name| {
                        let v = outs
                            .get(name)
                            .ok_or_else(|| run_err(format!("no output '{name}'")))?;
                        output_tensor(v).map_err(run_err)
                    })
                    .collect()
            })
        })
    }
}
