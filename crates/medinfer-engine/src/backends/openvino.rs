//! OpenVINO through the `openvino` crate, its C library loaded at run time.
use super::{Availability, Backend, Loaded};
use crate::options::Prepared;
use crate::pool::Pool;
use crate::runtimes::{locate_openvino, INSTALL_HINT};
use crate::{guard, BackendKind, BackendSession, EngineError, Mode, Precision, SessionInfo};
use medinfer_core::{DType, Tensor};
use openvino::{
    Core, DeviceType, ElementType, InferRequest, PartialShape, PropertyKey, RwPropertyKey, Shape,
};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

const KIND: BackendKind = BackendKind::OpenVino;

pub(crate) struct OpenVino;

struct Runtime {
    path: PathBuf,
    source: String,
    version: String,
}

static RUNTIME: OnceLock<Result<Runtime, (String, &'static str)>> = OnceLock::new();

/// Whether the library has been loaded (or a load tried) in this process.
pub(crate) fn loaded() -> bool {
    RUNTIME.get().is_some()
}

fn runtime() -> &'static Result<Runtime, (String, &'static str)> {
    RUNTIME.get_or_init(|| {
        let found = locate_openvino().map_err(|r| (r, INSTALL_HINT))?;
        let fix = "medinfer runtimes install --force";
        openvino_sys::library::load_from(&found.path)
            .map_err(|e| (format!("cannot load {}: {e}", found.path.display()), fix))?;
        let version = guard(KIND, "reading the version", || {
            Ok(openvino::version().build_number)
        })
        .map(|v| v.split('-').next().unwrap_or(&v).to_string())
        .map_err(|e| {
            (
                format!("{} loaded but does not answer: {e}", found.path.display()),
                fix,
            )
        })?;
        Ok(Runtime {
            path: found.path,
            source: found.source,
            version,
        })
    })
}

/// OpenVINO's own message for the last failed call on this thread, with the binding's code.
fn ov_err(e: openvino::InferenceError) -> String {
    // SAFETY: `ov_get_last_err_msg` returns a pointer to a NUL-terminated string owned by the
    // library (thread-local, valid until the next failing call on this thread) or null; it is
    // copied immediately, on the same thread, before any other OpenVINO call.
    let msg = unsafe {
        let p = openvino_sys::ov_get_last_err_msg();
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p)
                .to_string_lossy()
                .trim()
                .to_string()
        }
    };
    if msg.is_empty() {
        format!("{e:?}")
    } else {
        format!("{e:?}: {msg}")
    }
}

fn element_type(dt: DType) -> ElementType {
    match dt {
        DType::F32 => ElementType::F32,
        DType::F64 => ElementType::F64,
        DType::I64 => ElementType::I64,
        DType::I32 => ElementType::I32,
        DType::I8 => ElementType::I8,
        DType::U8 => ElementType::U8,
        DType::Bool => ElementType::Boolean,
    }
}

fn dtype(et: ElementType) -> Option<DType> {
    Some(match et {
        ElementType::F32 => DType::F32,
        ElementType::F64 => DType::F64,
        ElementType::I64 => DType::I64,
        ElementType::I32 => DType::I32,
        ElementType::I8 => DType::I8,
        ElementType::U8 => DType::U8,
        ElementType::Boolean => DType::Bool,
        _ => return None,
    })
}

impl Backend for OpenVino {
    fn availability(&self) -> Availability {
        match runtime() {
            Ok(rt) => Availability {
                backend: KIND,
                available: true,
                version: Some(rt.version.clone()),
                library: Some(rt.path.clone()),
                source: Some(rt.source.clone()),
                reason: None,
                fix: None,
            },
            Err((reason, fix)) => Availability::missing(KIND, reason.clone(), fix),
        }
    }

    fn load(&self, p: &Prepared) -> Result<Loaded, EngineError> {
        let rt = runtime()
            .as_ref()
            .map_err(|(reason, fix)| EngineError::Unavailable {
                backend: KIND,
                reason: reason.clone(),
                fix: Some(fix.to_string()),
            })?;
        let load_err = |m: String| EngineError::Load {
            backend: KIND,
            path: p.path.clone(),
            message: m,
        };
        let path_str = p
            .path
            .to_str()
            .ok_or_else(|| load_err("the model path is not valid UTF-8".into()))?;
        guard(KIND, "loading", || {
            let mut core =
                Core::new().map_err(|e| load_err(format!("cannot start OpenVINO: {e}")))?;
            let cpu = DeviceType::CPU;
            let hint = match p.mode {
                Mode::Latency => "LATENCY",
                Mode::Throughput => "THROUGHPUT",
            };
            let precision = match p.precision {
                Precision::Fp32 => "f32",
                Precision::Bf16 => "bf16",
            };
            let streams = p.streams.to_string();
            let threads = (p.streams * p.threads).to_string();
            for (key, value) in [
                (RwPropertyKey::HintPerformanceMode, hint),
                (RwPropertyKey::HintInferencePrecision, precision),
                (RwPropertyKey::NumStreams, streams.as_str()),
                (RwPropertyKey::InferenceNumThreads, threads.as_str()),
            ] {
                core.set_property(&cpu, &key, value).map_err(|e| {
                    load_err(format!("setting {}={value}: {}", key.as_ref(), ov_err(e)))
                })?;
            }
            // What the CPU plugin's kernels may use here (oneDNN's dispatcher, after any
            // --cpu-isa cap): reported so a cap is visible, e.g. FP16 goes below AVX-512 FP16.
            let capabilities = core
                .get_property(
                    &cpu,
                    &PropertyKey::Other("OPTIMIZATION_CAPABILITIES".into()),
                )
                .unwrap_or_else(|_| "?".into());
            let mut model = core
                .read_model_from_file(path_str, "")
                .map_err(|e| load_err(ov_err(e)))?;
            let shapes: Vec<(String, PartialShape)> = p
                .inputs
                .iter()
                .map(|i| {
                    let dims: Vec<i64> = i.shape.iter().map(|&d| d as i64).collect();
                    PartialShape::new_static(dims.len() as i64, &dims).map(|s| (i.name.clone(), s))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| load_err(ov_err(e)))?;
            let refs: Vec<(&str, &PartialShape)> =
                shapes.iter().map(|(n, s)| (n.as_str(), s)).collect();
            model
                .reshape(&refs)
                .map_err(|e| load_err(format!("fixing input shapes: {}", ov_err(e))))?;
            let mut compiled = core
                .compile_model(&model, cpu)
                .map_err(|e| load_err(ov_err(e)))?;
            let prop = |k: PropertyKey| {
                compiled
                    .get_property(&k)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|_| "?".into())
            };
            let real_streams = prop(PropertyKey::Rw(RwPropertyKey::NumStreams));
            let real_threads = prop(PropertyKey::Rw(RwPropertyKey::InferenceNumThreads));
            let real_precision = prop(PropertyKey::Rw(RwPropertyKey::HintInferencePrecision));
            let optimal = prop(PropertyKey::OptimalNumberOfInferRequests);
            let mut requests = Vec::with_capacity(p.streams);
            for _ in 0..p.streams {
                let mut req = compiled
                    .create_infer_request()
                    .map_err(|e| load_err(ov_err(e)))?;
                let mut bufs = Vec::new();
                for i in &p.inputs {
                    let dims: Vec<i64> = i.shape.iter().map(|&d| d as i64).collect();
                    let shape = Shape::new(&dims).map_err(|e| load_err(ov_err(e)))?;
                    let t = openvino::Tensor::new(element_type(i.dtype), &shape)
                        .map_err(|e| load_err(ov_err(e)))?;
                    req.set_tensor(&i.name, &t)
                        .map_err(|e| load_err(format!("input '{}': {}", i.name, ov_err(e))))?;
                    bufs.push(t);
                }
                requests.push(Request { req, inputs: bufs });
            }
            let effective = match real_precision.to_ascii_lowercase().as_str() {
                "f32" => "fp32".to_string(),
                other => other.to_string(),
            };
            let mut info = SessionInfo {
                backend: KIND,
                backend_version: rt.version.clone(),
                library: Some(rt.path.clone()),
                precision: p.precision,
                effective_precision: effective,
                mode: p.mode,
                streams: p.streams,
                threads: p.threads,
                notes: vec![format!(
                    "compiled: NUM_STREAMS={real_streams} INFERENCE_NUM_THREADS={real_threads} INFERENCE_PRECISION_HINT={real_precision} OPTIMAL_NUMBER_OF_INFER_REQUESTS={optimal}"
                )],
            };
            info.notes
                .push(format!("CPU OPTIMIZATION_CAPABILITIES={capabilities}"));
            if let Some(cap) = crate::cpu_isa_cap() {
                info.notes.push(format!(
                    "kernels capped at {cap} ({}, medinfer --cpu-isa)",
                    crate::isa::ONEDNN_ISA_ENV
                ));
            }
            let outputs = p.outputs.iter().map(|o| o.name.clone()).collect();
            let sess: Box<dyn BackendSession> = Box::new(OvRun {
                _compiled: Mutex::new(compiled),
                requests: Pool::new(requests),
                outputs,
            });
            Ok((sess, info, p.outputs.clone()))
        })
    }
}

struct Request {
    req: InferRequest,
    inputs: Vec<openvino::Tensor>,
}

struct OvRun {
    /// Keeps the compiled model alive for its requests (`CompiledModel` is `Send`, not `Sync`).
    _compiled: Mutex<openvino::CompiledModel>,
    requests: Pool<Request>,
    outputs: Vec<String>,
}

impl BackendSession for OvRun {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let run_err = |m: String| EngineError::Run {
            backend: KIND,
            message: m,
        };
        guard(KIND, "running", || {
            self.requests.with(|r| {
                for (buf, t) in r.inputs.iter_mut().zip(inputs) {
                    let dst = buf.get_raw_data_mut().map_err(|e| run_err(ov_err(e)))?;
                    let src = t.to_le_bytes();
                    if dst.len() != src.len() {
                        return Err(run_err(format!(
                            "input buffer holds {} bytes, tensor has {}",
                            dst.len(),
                            src.len()
                        )));
                    }
                    dst.copy_from_slice(&src);
                }
                r.req.infer().map_err(|e| run_err(ov_err(e)))?;
                self.outputs
                    .iter()
                    .map(|name| {
                        let t = r
                            .req
                            .get_tensor(name)
                            .map_err(|e| run_err(format!("output '{name}': {}", ov_err(e))))?;
                        let et = t.get_element_type().map_err(|e| run_err(ov_err(e)))?;
                        let dt = dtype(et).ok_or_else(|| {
                            run_err(format!("output '{name}' has unsupported type {et:?}"))
                        })?;
                        let shape = t.get_shape().map_err(|e| run_err(ov_err(e)))?;
                        let dims: Vec<usize> = shape
                            .get_dimensions()
                            .iter()
                            .map(|&d| d.max(0) as usize)
                            .collect();
                        let raw = t.get_raw_data().map_err(|e| run_err(ov_err(e)))?;
                        Tensor::from_le_bytes(dt, dims, raw).map_err(|e| run_err(e.to_string()))
                    })
                    .collect()
            })
        })
    }
}
