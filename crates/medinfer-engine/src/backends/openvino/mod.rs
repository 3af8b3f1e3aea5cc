//! OpenVINO through the `openvino` crate, its C library loaded at run time.
use super::{Availability, Backend, Loaded};
use crate::dynamic::{DynBackend, DynLoaded, DynPrepared, NativeValue, Value, ValueInner};
use crate::options::Prepared;
use crate::pool::Pool;
use crate::runtimes::{locate_openvino, INSTALL_HINT};
use crate::{guard, BackendKind, BackendSession, EngineError, Mode, Precision, SessionInfo};
use medinfer_core::{DType, Tensor, TensorData};
use openvino::{
    Core, DeviceType, ElementType, InferRequest, PartialShape, PropertyKey, RwPropertyKey, Shape,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};

pub mod isa;

const KIND: BackendKind = BackendKind::OpenVino;

pub(crate) struct OpenVino;

type Runtime = super::NativeLib;

static RUNTIME: OnceLock<super::LoadOutcome<Runtime>> = OnceLock::new();

/// Whether the library has been loaded (or a load tried) in this process.
pub(crate) fn loaded() -> bool {
    RUNTIME.get().is_some()
}

fn runtime() -> &'static super::LoadOutcome<Runtime> {
    RUNTIME.get_or_init(|| {
        let found = locate_openvino().map_err(|r| (r.to_string(), INSTALL_HINT))?;
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

/// Guards OpenVINO's last-error message. The C API keeps ONE process-wide copy of the message
/// of the last failed call (not one per thread), written only when a call fails. Calls made
/// while loading a model hold this lock exclusively from the call until its message is read,
/// so a load error always carries its own message; inference calls hold it shared (requests
/// run in parallel), so when two requests fail at the same moment one may read the other's
/// message, which [`ov_err`] then says.
static LAST_ERROR: RwLock<()> = RwLock::new(());

/// Inference calls in flight (to say when a run error's message may not be its own).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The library's process-wide last error message, taken and released.
fn last_error_message() -> String {
    // SAFETY: `ov_get_last_err_msg` takes no arguments and returns either null or a fresh heap
    // copy (C++ `new char[]`) of the library's last error message, NUL-terminated and owned by
    // the caller, who must release it with `ov_free` (OpenVINO's C API contract: the string is
    // copied out of a process-global `std::string`, not lent). The pointer is read once as a
    // C string while it is valid, then given to `ov_free` exactly once and never used again.
    unsafe {
        let p = openvino_sys::ov_get_last_err_msg();
        if p.is_null() {
            return String::new();
        }
        let msg = std::ffi::CStr::from_ptr(p)
            .to_string_lossy()
            .trim()
            .to_string();
        openvino_sys::ov_free(p);
        msg
    }
}

/// Runs one OpenVINO call that loads or configures a model, with the last-error message held
/// for it alone: on failure the message read is this call's.
fn ov_load<T>(f: impl FnOnce() -> Result<T, openvino::InferenceError>) -> Result<T, String> {
    let _only_us = LAST_ERROR.write().unwrap_or_else(PoisonError::into_inner);
    f().map_err(|e| ov_err(e, false))
}

/// Runs one inference-time OpenVINO call (requests run in parallel: the message is shared).
fn ov_run<T>(f: impl FnOnce() -> Result<T, openvino::InferenceError>) -> Result<T, String> {
    let _shared = LAST_ERROR.read().unwrap_or_else(PoisonError::into_inner);
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let r = f();
    let others = IN_FLIGHT.load(Ordering::SeqCst) > 1;
    let r = r.map_err(|e| ov_err(e, others));
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    r
}

/// The binding's error code with OpenVINO's message; `maybe_not_ours` when other requests were
/// in flight and could have written the process-wide message.
fn ov_err(e: openvino::InferenceError, maybe_not_ours: bool) -> String {
    let msg = last_error_message();
    match (msg.is_empty(), maybe_not_ours) {
        (true, _) => format!("{e:?}"),
        (false, false) => format!("{e:?}: {msg}"),
        (false, true) => format!(
            "{e:?}: {msg} (OpenVINO keeps one last-error message per process and other requests were running: it may be theirs)"
        ),
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
        super::native_availability(KIND, runtime().as_ref())
    }

    fn load(&self, p: &Prepared) -> Result<Loaded, EngineError> {
        let rt = super::native_ready(KIND, runtime())?;
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
            let (mut core, capabilities) =
                configured_core(p.mode, p.precision, p.streams, p.threads).map_err(load_err)?;
            let cpu = DeviceType::CPU;
            let mut model =
                ov_load(|| core.read_model_from_file(path_str, "")).map_err(load_err)?;
            let shapes: Vec<(String, PartialShape)> = p
                .inputs
                .iter()
                .map(|i| {
                    let dims: Vec<i64> = i.shape.iter().map(|&d| d as i64).collect();
                    PartialShape::new_static(dims.len() as i64, &dims).map(|s| (i.name.clone(), s))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| load_err(ov_err(e, false)))?;
            let refs: Vec<(&str, &PartialShape)> =
                shapes.iter().map(|(n, s)| (n.as_str(), s)).collect();
            ov_load(|| model.reshape(&refs))
                .map_err(|e| load_err(format!("fixing input shapes: {e}")))?;
            let mut compiled = ov_load(|| core.compile_model(&model, cpu)).map_err(load_err)?;
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
                let mut req = ov_load(|| compiled.create_infer_request()).map_err(load_err)?;
                let mut bufs = Vec::new();
                for i in &p.inputs {
                    let dims: Vec<i64> = i.shape.iter().map(|&d| d as i64).collect();
                    let shape = ov_load(|| Shape::new(&dims)).map_err(load_err)?;
                    let t = ov_load(|| openvino::Tensor::new(element_type(i.dtype), &shape))
                        .map_err(load_err)?;
                    ov_load(|| req.set_tensor(&i.name, &t))
                        .map_err(|e| load_err(format!("input '{}': {e}", i.name)))?;
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
            if p.precision == Precision::Bf16
                && !capabilities.split_whitespace().any(|c| c == "BF16")
            {
                info.notes.push(
                    "bf16 was asked for, but this CPU has no BF16 instructions (AVX-512 BF16 or AMX): OpenVINO computes in fp32".into(),
                );
            }
            if let Some(cap) = isa::cpu_isa_cap() {
                info.notes.push(format!(
                    "kernels capped at {cap} ({}, medinfer --cpu-isa)",
                    isa::ONEDNN_ISA_ENV
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

/// A core with the CPU plugin configured for a session (performance hint, precision, streams,
/// threads), and the plugin's OPTIMIZATION_CAPABILITIES.
fn configured_core(
    mode: Mode,
    precision: Precision,
    streams: usize,
    threads: usize,
) -> Result<(Core, String), String> {
    let mut core = {
        let _only_us = LAST_ERROR.write().unwrap_or_else(PoisonError::into_inner);
        Core::new().map_err(|e| format!("cannot start OpenVINO: {e} {}", last_error_message()))?
    };
    let cpu = DeviceType::CPU;
    let hint = match mode {
        Mode::Latency => "LATENCY",
        Mode::Throughput => "THROUGHPUT",
    };
    let precision = match precision {
        Precision::Fp32 => "f32",
        Precision::Bf16 => "bf16",
    };
    let n_streams = streams.to_string();
    let n_threads = (streams * threads).to_string();
    for (key, value) in [
        (RwPropertyKey::HintPerformanceMode, hint),
        (RwPropertyKey::HintInferencePrecision, precision),
        (RwPropertyKey::NumStreams, n_streams.as_str()),
        (RwPropertyKey::InferenceNumThreads, n_threads.as_str()),
    ] {
        ov_load(|| core.set_property(&cpu, &key, value))
            .map_err(|e| format!("setting {}={value}: {e}", key.as_ref()))?;
    }
    // What the CPU plugin's kernels may use here (oneDNN's dispatcher, after any --cpu-isa
    // cap): reported so a cap is visible, e.g. FP16 goes below AVX-512 FP16.
    let capabilities = core
        .get_property(
            &cpu,
            &PropertyKey::Other("OPTIMIZATION_CAPABILITIES".into()),
        )
        .unwrap_or_else(|_| "?".into());
    Ok((core, capabilities))
}

/// Loads a session with its dynamic dimensions open (see [`crate::dynamic`]). Outputs stay in
/// OpenVINO's memory: each call hands back the request's own output tensors, and the session
/// keeps one request more than its streams, so that a decoder's next call runs on a request
/// other than the one whose outputs it reads (see [`Slot`]).
pub(crate) fn load_dyn(p: &DynPrepared) -> Result<DynLoaded, EngineError> {
    let rt = super::native_ready(KIND, runtime())?;
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
        let (mut core, _) =
            configured_core(p.mode, p.precision, p.streams, p.threads).map_err(load_err)?;
        let model = ov_load(|| core.read_model_from_file(path_str, "")).map_err(load_err)?;
        let mut compiled =
            ov_load(|| core.compile_model(&model, DeviceType::CPU)).map_err(load_err)?;
        let real_precision = compiled
            .get_property(&PropertyKey::Rw(RwPropertyKey::HintInferencePrecision))
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "?".into());
        let mut requests = Vec::with_capacity(p.streams + 1);
        for _ in 0..=p.streams {
            requests.push(Slot {
                req: ov_load(|| compiled.create_infer_request()).map_err(load_err)?,
                lent: Vec::new(),
            });
        }
        let info = SessionInfo {
            backend: KIND,
            backend_version: rt.version.clone(),
            library: Some(rt.path.clone()),
            precision: p.precision,
            effective_precision: match real_precision.to_ascii_lowercase().as_str() {
                "f32" => "fp32".to_string(),
                other => other.to_string(),
            },
            mode: p.mode,
            streams: p.streams,
            threads: p.threads,
            notes: vec![format!(
                "dynamic shapes; INFERENCE_PRECISION_HINT={real_precision}; outputs stay in OpenVINO's memory between calls"
            )],
        };
        let run: Box<dyn DynBackend> = Box::new(OvDyn {
            _compiled: Mutex::new(compiled),
            requests: Pool::new(requests),
            inputs: p.inputs.clone(),
            outputs: p.outputs.iter().map(|o| o.name.clone()).collect(),
            copied: AtomicUsize::new(0),
        });
        Ok((run, info))
    })
}

struct OvDyn {
    _compiled: Mutex<openvino::CompiledModel>,
    requests: Pool<Slot>,
    inputs: Vec<crate::dynamic::DynSpec>,
    outputs: Vec<String>,
    /// Outputs copied out of a request's memory so far ([`Slot::detach`]).
    copied: AtomicUsize,
}

/// One infer request and the outputs it handed out. OpenVINO writes a request's outputs into
/// the same memory at its next call, so an output still alive then is first copied into a
/// tensor of its own ([`Slot::detach`]). A decoder never pays that copy: its cache from call
/// t feeds call t + 1, which runs on the other request (the pool takes the free request with
/// the fewest live outputs), and is dropped before call t + 2 reuses the first request.
struct Slot {
    req: InferRequest,
    lent: Vec<Weak<Mutex<openvino::Tensor>>>,
}

impl Slot {
    /// How many of the last call's outputs are still held.
    fn live(&self) -> usize {
        self.lent.iter().filter(|w| w.strong_count() > 0).count()
    }

    /// Copies each output still held out of the request's memory; returns how many.
    fn detach(&mut self) -> Result<usize, String> {
        let mut n = 0;
        for w in self.lent.drain(..) {
            if let Some(held) = w.upgrade() {
                let mut t = held.lock().unwrap_or_else(PoisonError::into_inner);
                *t = copy_tensor(&t)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

impl Drop for Slot {
    /// Outputs still held when their session goes keep their elements: they may live in the
    /// request's memory, which goes with it.
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// A tensor of OpenVINO's with the same type, shape and elements as `t`, in memory of its own.
fn copy_tensor(t: &openvino::Tensor) -> Result<openvino::Tensor, String> {
    let shape = ov_run(|| t.get_shape())?;
    let et = ov_run(|| t.get_element_type())?;
    let mut own = ov_run(|| openvino::Tensor::new(et, &shape))?;
    ov_run(|| own.get_raw_data_mut())?.copy_from_slice(ov_run(|| t.get_raw_data())?);
    Ok(own)
}

/// A tensor in OpenVINO's memory, bound to requests as it is: a request's output (until that
/// request runs again, when it is copied out; see [`Slot`]) or a tensor of its own.
struct OvValue {
    tensor: Arc<Mutex<openvino::Tensor>>,
    shape: Vec<usize>,
    dtype: DType,
}

impl NativeValue for OvValue {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn to_tensor(&self) -> Result<Tensor, String> {
        let t = self.tensor.lock().unwrap_or_else(PoisonError::into_inner);
        read_typed(&t, self.dtype, self.shape.clone())
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
        if self.dtype != DType::F32 {
            return Err(format!("{} values are not f32", self.dtype));
        }
        // CPU plugin: the tensor's buffer is host memory.
        let mut t = self.tensor.lock().unwrap_or_else(PoisonError::into_inner);
        f(ov_run(|| t.get_data_mut::<f32>())?);
        Ok(())
    }
}

fn ov_tensor(t: &Tensor) -> Result<openvino::Tensor, String> {
    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    let shape = ov_run(|| Shape::new(&dims))?;
    let mut buf = ov_run(|| openvino::Tensor::new(element_type(t.dtype()), &shape))?;
    write_input(t, &mut buf)?;
    Ok(buf)
}

/// `v`'s OpenVINO tensor, when it holds one.
fn ov_held(v: &Value) -> Option<Arc<Mutex<openvino::Tensor>>> {
    match &v.0 {
        ValueInner::Native(nv) => nv
            .as_any()
            .downcast_ref::<OvValue>()
            .map(|ov| ov.tensor.clone()),
        ValueInner::Host(_) => None,
    }
}

impl DynBackend for OvDyn {
    fn keep(&self, v: Value) -> Result<Value, EngineError> {
        let ValueInner::Host(t) = &v.0 else {
            return Ok(v);
        };
        let tensor = guard(KIND, "keeping a value", || {
            ov_tensor(t).map_err(|m| EngineError::Run {
                backend: KIND,
                message: m,
            })
        })?;
        Ok(Value(ValueInner::Native(Box::new(OvValue {
            tensor: Arc::new(Mutex::new(tensor)),
            shape: t.shape().to_vec(),
            dtype: t.dtype(),
        }))))
    }

    fn copied_out(&self) -> usize {
        self.copied.load(Ordering::Relaxed)
    }

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
            // OpenVINO's own values are bound as they are; host values are copied in.
            let mut held = Vec::new();
            let mut copied = Vec::new();
            for (name, v) in inputs {
                match ov_held(&v) {
                    Some(t) => held.push((name, t)),
                    None => copied.push((name, ov_tensor(&v.into_tensor()?).map_err(run_err)?)),
                }
            }
            for (name, v) in shared {
                match ov_held(v) {
                    Some(t) => held.push((name.to_string(), t)),
                    None => copied.push((
                        name.to_string(),
                        ov_tensor(&v.to_tensor()?).map_err(run_err)?,
                    )),
                }
            }
            debug_assert_eq!(held.len() + copied.len(), self.inputs.len());
            self.requests.with_least(Slot::live, |slot| {
                // Before this request's memory is written again (an input may be in it).
                let n = slot.detach().map_err(run_err)?;
                self.copied.fetch_add(n, Ordering::Relaxed);
                let mut locked: Vec<(&Arc<Mutex<openvino::Tensor>>, MutexGuard<'_, _>)> =
                    Vec::new();
                for (name, t) in &held {
                    let i = match locked.iter().position(|(a, _)| Arc::ptr_eq(a, t)) {
                        Some(i) => i,
                        None => {
                            locked.push((t, t.lock().unwrap_or_else(PoisonError::into_inner)));
                            locked.len() - 1
                        }
                    };
                    ov_run(|| slot.req.set_tensor(name, &locked[i].1))
                        .map_err(|e| run_err(format!("input '{name}': {e}")))?;
                }
                for (name, t) in &copied {
                    ov_run(|| slot.req.set_tensor(name, t))
                        .map_err(|e| run_err(format!("input '{name}': {e}")))?;
                }
                ov_run(|| slot.req.infer()).map_err(run_err)?;
                drop(locked);
                let mut out = Vec::with_capacity(self.outputs.len());
                for name in &self.outputs {
                    let t = ov_run(|| slot.req.get_tensor(name))
                        .map_err(|e| run_err(format!("output '{name}': {e}")))?;
                    let (dtype, shape) =
                        described(&t).map_err(|e| run_err(format!("output '{name}': {e}")))?;
                    let tensor = Arc::new(Mutex::new(t));
                    slot.lent.push(Arc::downgrade(&tensor));
                    out.push(Value(ValueInner::Native(Box::new(OvValue {
                        tensor,
                        shape,
                        dtype,
                    }))));
                }
                Ok(out)
            })
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
                // Inputs are written straight from the tensor's typed storage into the
                // request's own buffers (one copy, no intermediate byte vector). The binding
                // (0.11) offers no tensor over caller memory: `Tensor::from_ptr` is private, see
                // openvino-rs #125, so one copy is the least it allows.
                for (buf, t) in r.inputs.iter_mut().zip(inputs) {
                    write_input(t, buf).map_err(run_err)?;
                }
                ov_run(|| r.req.infer()).map_err(run_err)?;
                self.outputs
                    .iter()
                    .map(|name| read_output(&r.req, name).map_err(run_err))
                    .collect()
            })
        })
    }
}

/// Copies a tensor's elements into the request's input buffer of the same type and size.
fn write_input(t: &Tensor, dst: &mut openvino::Tensor) -> Result<(), String> {
    fn put<T: Copy>(src: &[T], dst: &mut openvino::Tensor) -> Result<(), String> {
        let d = ov_run(|| dst.get_data_mut::<T>())?;
        if d.len() != src.len() {
            return Err(format!(
                "input buffer holds {} elements, tensor has {}",
                d.len(),
                src.len()
            ));
        }
        d.copy_from_slice(src);
        Ok(())
    }
    match t.data() {
        TensorData::F32(v) => put(v, dst),
        TensorData::F64(v) => put(v, dst),
        TensorData::I64(v) => put(v, dst),
        TensorData::I32(v) => put(v, dst),
        TensorData::I8(v) => put(v, dst),
        TensorData::U8(v) => put(v, dst),
        TensorData::Bool(v) => {
            let bytes: Vec<u8> = v.iter().map(|&b| b as u8).collect();
            put(&bytes, dst)
        }
    }
}

/// The request's output `name` as a host tensor.
fn read_output(req: &InferRequest, name: &str) -> Result<Tensor, String> {
    let t = ov_run(|| req.get_tensor(name)).map_err(|e| format!("output '{name}': {e}"))?;
    let (dt, dims) = described(&t).map_err(|e| format!("output '{name}' {e}"))?;
    read_typed(&t, dt, dims)
}

/// A tensor's element type and dims.
fn described(t: &openvino::Tensor) -> Result<(DType, Vec<usize>), String> {
    let et = ov_run(|| t.get_element_type())?;
    let dt = dtype(et).ok_or_else(|| format!("has unsupported type {et:?}"))?;
    let shape = ov_run(|| t.get_shape())?;
    let dims = shape
        .get_dimensions()
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    Ok((dt, dims))
}

/// An engine output read as typed elements (one copy, straight into the result's storage).
fn read_typed(t: &openvino::Tensor, dt: DType, dims: Vec<usize>) -> Result<Tensor, String> {
    let data = match dt {
        DType::F32 => TensorData::F32(ov_run(|| t.get_data::<f32>())?.to_vec()),
        DType::F64 => TensorData::F64(ov_run(|| t.get_data::<f64>())?.to_vec()),
        DType::I64 => TensorData::I64(ov_run(|| t.get_data::<i64>())?.to_vec()),
        DType::I32 => TensorData::I32(ov_run(|| t.get_data::<i32>())?.to_vec()),
        DType::I8 => TensorData::I8(ov_run(|| t.get_data::<i8>())?.to_vec()),
        DType::U8 => TensorData::U8(ov_run(|| t.get_data::<u8>())?.to_vec()),
        DType::Bool => TensorData::Bool(
            ov_run(|| t.get_data::<u8>())?
                .iter()
                .map(|&b| b != 0)
                .collect(),
        ),
    };
    Tensor::new(dims, data).map_err(|e| e.to_string())
}
