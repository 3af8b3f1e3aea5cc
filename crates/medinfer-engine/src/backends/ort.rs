//! ONNX Runtime through the `ort` crate, its shared library loaded at run time.
use super::{Availability, Backend, Loaded};
use crate::dynamic::{DynBackend, DynLoaded, DynPrepared, NativeValue, Value, ValueInner};
use crate::options::Prepared;
use crate::pool::Pool;
use crate::runtimes::{locate_ort, INSTALL_HINT};
use crate::{guard, BackendKind, BackendSession, EngineError, Precision, SessionInfo};
use medinfer_core::{DType, Tensor, TensorData};
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
            let sessions =
                streams(rt, &p.path, p.streams, p.threads, p.shared_cpu).map_err(&load_err)?;
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

/// One ONNX Runtime session of `path` with `threads` intra-op threads; `quiet` turns intra-op
/// spinning off (several streams, or a CPU shared with other work).
fn build(
    rt: &Runtime,
    path: &std::path::Path,
    threads: usize,
    quiet: bool,
) -> Result<OrtSession, String> {
    let mut b = OrtSession::builder(&rt.env)
        .map_err(s)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(s)?
        .with_intra_threads(threads)
        .map_err(s)?
        .with_inter_threads(1)
        .map_err(s)?;
    if quiet {
        // Spinning intra-op threads of one stream steal cycles from the others, and from
        // whatever else shares the CPU (a server's request handling).
        b = b.with_intra_op_spinning(false).map_err(s)?;
    }
    if let Some(prefix) = std::env::var_os("MEDINFER_ORT_PROFILE") {
        // ONNX Runtime's own per-operator profile (a Chrome trace JSON named after the prefix,
        // written when the session ends): where a model's time goes, for tuning work.
        b = b.with_profiling(prefix).map_err(s)?;
    }
    b.commit_from_file(path).map_err(s)
}

/// One session per stream; spinning is off when streams share the cores or the CPU is shared.
fn streams(
    rt: &Runtime,
    path: &std::path::Path,
    streams: usize,
    threads: usize,
    shared_cpu: bool,
) -> Result<Vec<OrtSession>, String> {
    (0..streams)
        .map(|_| build(rt, path, threads, streams > 1 || shared_cpu))
        .collect()
}

/// Loads a session with its dynamic dimensions open (see [`crate::dynamic`]).
pub(crate) fn load_dyn(p: &DynPrepared) -> Result<DynLoaded, EngineError> {
    if p.precision == Precision::Bf16 {
        return Err(EngineError::Unsupported {
            backend: KIND,
            what: "bf16 on CPU (use --backend openvino for bf16)".into(),
        });
    }
    let rt = super::native_ready(KIND, runtime())?;
    guard(KIND, "loading", || {
        let sessions = streams(rt, &p.path, p.streams, p.threads, p.shared_cpu).map_err(|m| {
            EngineError::Load {
                backend: KIND,
                path: p.path.clone(),
                message: m,
            }
        })?;
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
                "{} session(s) x {} intra-op thread(s), dynamic shapes, outputs kept in ONNX Runtime between calls",
                p.streams, p.threads
            )],
        };
        let run: Box<dyn DynBackend> = Box::new(OrtDyn {
            sessions: Pool::new(sessions),
            outputs: p.outputs.iter().map(|o| o.name.clone()).collect(),
        });
        Ok((run, info))
    })
}

struct OrtDyn {
    sessions: Pool<OrtSession>,
    outputs: Vec<String>,
}

/// A value ONNX Runtime allocated, kept on its side.
struct OrtValue(DynValue);

impl NativeValue for OrtValue {
    fn shape(&self) -> Vec<usize> {
        match self.0.dtype() {
            ValueType::Tensor { shape, .. } => shape.iter().map(|&d| d.max(0) as usize).collect(),
            _ => Vec::new(),
        }
    }
    fn dtype(&self) -> DType {
        match self.0.dtype() {
            ValueType::Tensor { ty, .. } => match ty {
                TensorElementType::Float32 => DType::F32,
                TensorElementType::Float64 => DType::F64,
                TensorElementType::Int64 => DType::I64,
                TensorElementType::Int32 => DType::I32,
                TensorElementType::Int8 => DType::I8,
                TensorElementType::Uint8 => DType::U8,
                TensorElementType::Bool => DType::Bool,
                // Unhandled element types fail in `to_tensor` with their name.
                _ => DType::F32,
            },
            _ => DType::F32,
        }
    }
    fn to_tensor(&self) -> Result<Tensor, String> {
        output_tensor(&self.0)
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn backend(&self) -> BackendKind {
        KIND
    }
    fn with_f32_mut(&mut self, f: &mut dyn FnMut(&mut [f32])) -> Result<(), String> {
        // CPU execution provider: the value's buffer is host memory ONNX Runtime allocated.
        let (_, data) = self.0.try_extract_tensor_mut::<f32>().map_err(s)?;
        f(data);
        Ok(())
    }
}

impl DynBackend for OrtDyn {
    fn run(
        &self,
        inputs: Vec<(String, Value)>,
        shared: &[(&str, &Value)],
    ) -> Result<Vec<Value>, EngineError> {
        let run_err = |m: String| EngineError::Run {
            backend: KIND,
            message: m,
        };
        guard(KIND, "running", || {
            let mut lent: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
            for (name, v) in shared {
                let value = match &v.0 {
                    ValueInner::Host(t) => input_value(t).map_err(run_err)?,
                    ValueInner::Native(n) => {
                        let v = n.as_any().downcast_ref::<OrtValue>().ok_or_else(|| {
                            run_err(format!("input '{name}' is a value of {}", n.backend()))
                        })?;
                        SessionInputValue::from(&v.0)
                    }
                };
                lent.push((Cow::Borrowed(*name), value));
            }
            let mut host: Vec<(String, Tensor)> = Vec::new();
            let mut owned: Vec<(String, DynValue)> = Vec::new();
            for (name, v) in inputs {
                match v.0 {
                    ValueInner::Host(t) => host.push((name, t)),
                    ValueInner::Native(n) => {
                        if n.backend() != KIND {
                            return Err(run_err(format!(
                                "input '{name}' is a value of {}, not of {KIND}",
                                n.backend()
                            )));
                        }
                        let v = n
                            .into_any()
                            .downcast::<OrtValue>()
                            .map_err(|_| run_err(format!("input '{name}': foreign value")))?;
                        owned.push((name, v.0));
                    }
                }
            }
            let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                Vec::with_capacity(host.len() + owned.len());
            for (name, t) in &host {
                feed.push((
                    Cow::Borrowed(name.as_str()),
                    input_value(t).map_err(run_err)?,
                ));
            }
            for (name, v) in owned {
                feed.push((Cow::Owned(name), SessionInputValue::Owned(v)));
            }
            feed.extend(lent);
            self.sessions.with(|sess| {
                let mut outs = sess.run(feed).map_err(|e| run_err(s(e)))?;
                self.outputs
                    .iter()
                    .map(|name| {
                        let v = outs
                            .remove(name)
                            .ok_or_else(|| run_err(format!("no output '{name}'")))?;
                        Ok(Value(ValueInner::Native(Box::new(OrtValue(v)))))
                    })
                    .collect()
            })
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
