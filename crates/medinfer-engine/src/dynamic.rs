//! Sessions whose shapes change from call to call: named inputs and outputs, dynamic
//! dimensions, and values that can stay inside the engine between calls.
//!
//! [`crate::Session`] fixes every input shape at load time, which is what the imaging pipelines
//! want (one compiled plan, checked inputs). An autoregressive decoder is the opposite case: the
//! sequence and the key/value cache grow by one position per call, and the cache must go back
//! into the next call without a trip through host memory. A [`DynSession`] takes and returns
//! [`Value`]s: a host [`Tensor`], or a value the engine made and still owns (ONNX Runtime keeps
//! the `present.*` outputs it allocated, and they are fed back as the next call's `past_*`
//! inputs by moving the handle, not the data).
//!
//! Available on ONNX Runtime and OpenVINO (whose CPU plugins compile dynamic shapes); tract,
//! whose fast path wants concrete shapes, answers [`EngineError::Unsupported`].
use crate::options::{onnx_dtype, resolve_parallelism};
use crate::{BackendKind, EngineError, Mode, SessionInfo, SessionOptions};
use medinfer_core::usable_cores;
use medinfer_core::{DType, Tensor};
use medinfer_onnx::Dim;
use std::any::Any;
use std::path::{Path, PathBuf};

/// An input or output as the model declares it: `None` for a dynamic dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions; `None` where the model leaves the size open.
    pub dims: Vec<Option<usize>>,
}

impl DynSpec {
    /// Whether a concrete shape fits this declaration.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        shape.len() == self.dims.len()
            && self
                .dims
                .iter()
                .zip(shape)
                .all(|(d, &s)| d.is_none_or(|d| d == s))
    }
}

/// An engine-owned value, kept on the engine's side between calls.
pub(crate) trait NativeValue: Send + Sync {
    fn shape(&self) -> Vec<usize>;
    fn dtype(&self) -> DType;
    fn to_tensor(&self) -> Result<Tensor, String>;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn as_any(&self) -> &dyn Any;
    fn backend(&self) -> BackendKind;
    /// Calls `f` with the elements, writable in place, when the value holds f32 in
    /// host-visible memory.
    fn with_f32_mut(&mut self, f: &mut dyn FnMut(&mut [f32])) -> Result<(), String>;
}

pub(crate) enum ValueInner {
    Host(Tensor),
    Native(Box<dyn NativeValue>),
}

/// A tensor for or from a [`DynSession`]: either host memory or a value the engine owns.
pub struct Value(pub(crate) ValueInner);

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            ValueInner::Host(t) => write!(f, "Value::Host({} {:?})", t.dtype(), t.shape()),
            ValueInner::Native(v) => {
                write!(f, "Value::{}({} {:?})", v.backend(), v.dtype(), v.shape())
            }
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value(ValueInner::Host(t))
    }
}

impl Value {
    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        match &self.0 {
            ValueInner::Host(t) => t.shape().to_vec(),
            ValueInner::Native(v) => v.shape(),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.0 {
            ValueInner::Host(t) => t.dtype(),
            ValueInner::Native(v) => v.dtype(),
        }
    }

    /// Whether the data lives in the engine (not yet copied to the host).
    pub fn is_native(&self) -> bool {
        matches!(self.0, ValueInner::Native(_))
    }

    /// The data as a host tensor (a copy for engine-owned values).
    pub fn to_tensor(&self) -> Result<Tensor, EngineError> {
        match &self.0 {
            ValueInner::Host(t) => Ok(t.clone()),
            ValueInner::Native(v) => v.to_tensor().map_err(|message| EngineError::Run {
                backend: v.backend(),
                message: format!("reading an output back: {message}"),
            }),
        }
    }

    /// Reorders the first (batch) axis in place: row `i` becomes the old row `rows[i]`
    /// (`rows` has one entry per row; entries may repeat). Beam search uses it to make each
    /// beam's key/value cache follow the beam it continues, without leaving the engine's
    /// memory. f32 values only.
    pub fn gather_rows(&mut self, rows: &[usize]) -> Result<(), EngineError> {
        let shape = self.shape();
        let n = shape.first().copied().unwrap_or(0);
        if rows.len() != n || rows.iter().any(|&r| r >= n) {
            return Err(EngineError::BadInput(format!(
                "cannot reorder {n} rows by {rows:?}"
            )));
        }
        if self.dtype() != DType::F32 {
            return Err(EngineError::BadInput(format!(
                "only f32 values can be reordered, not {}",
                self.dtype()
            )));
        }
        if rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        match &mut self.0 {
            ValueInner::Host(t) => reorder(
                t.as_f32_mut()
                    .map_err(|e| EngineError::BadInput(e.to_string()))?,
                rows,
            ),
            ValueInner::Native(v) => {
                let backend = v.backend();
                v.with_f32_mut(&mut |data| reorder(data, rows))
                    .map_err(|message| EngineError::Run { backend, message })?
            }
        }
        Ok(())
    }

    /// The data as a host tensor, without a copy when it is one already.
    pub fn into_tensor(self) -> Result<Tensor, EngineError> {
        match self.0 {
            ValueInner::Host(t) => Ok(t),
            ValueInner::Native(_) => self.to_tensor(),
        }
    }
}

/// Backend half of a [`DynSession`].
pub(crate) trait DynBackend: Send + Sync {
    /// The value in the engine's own memory, for values fed to many calls (default: as is).
    fn keep(&self, v: Value) -> Result<Value, EngineError> {
        Ok(v)
    }
    /// How many held outputs were copied out of the engine's memory so far, because the call
    /// that made them was followed by another that needed that memory (default: none).
    fn copied_out(&self) -> usize {
        0
    }
    /// Runs with named, already checked inputs (`shared` ones lent, not consumed); returns
    /// every output, in declared order.
    fn run(
        &self,
        inputs: Vec<(String, Value)>,
        shared: &[(&str, &Value)],
    ) -> Result<Vec<Value>, EngineError>;
}

/// A model loaded with its dynamic dimensions left open. `Send + Sync`; calls from several
/// threads take the session's streams in turn as [`crate::Session`] does.
pub struct DynSession {
    inner: Box<dyn DynBackend>,
    inputs: Vec<DynSpec>,
    outputs: Vec<DynSpec>,
    info: SessionInfo,
    path: PathBuf,
}

impl std::fmt::Debug for DynSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynSession")
            .field("model", &self.path)
            .field("info", &self.info)
            .finish()
    }
}

impl DynSession {
    /// The declared inputs.
    pub fn inputs(&self) -> &[DynSpec] {
        &self.inputs
    }

    /// The declared outputs, in the order [`DynSession::run`] returns them.
    pub fn outputs(&self) -> &[DynSpec] {
        &self.outputs
    }

    /// How the session runs.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `v` moved into the engine's own memory once, for a value that many calls will be lent
    /// (see [`DynSession::run_shared`]): OpenVINO then binds it to each call without copying
    /// it again. Engine-owned values and ONNX Runtime (which reads host memory in place) keep
    /// it as it is.
    pub fn keep(&self, v: Value) -> Result<Value, EngineError> {
        self.inner.keep(v)
    }

    /// How many outputs this session has copied out of the engine's memory so far: on
    /// OpenVINO, outputs still held when the request that made them runs again (a decoder
    /// that feeds each call's cache to the next call causes none).
    pub fn copied_out(&self) -> usize {
        self.inner.copied_out()
    }

    /// The position of the output called `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }

    /// Runs one call. Every declared input must be given once, by name, with the declared
    /// element type and a shape that fits the declared dimensions; the outputs come back in
    /// the declared order, engine-owned where the engine allows.
    pub fn run(&self, inputs: Vec<(String, Value)>) -> Result<Vec<Value>, EngineError> {
        self.run_shared(inputs, &[])
    }

    /// As [`DynSession::run`], with some inputs lent instead of given: values computed once
    /// and fed to every call (a decoder's precomputed cross-attention keys and values). On
    /// ONNX Runtime an engine-owned value is lent without a copy.
    pub fn run_shared(
        &self,
        inputs: Vec<(String, Value)>,
        shared: &[(&str, &Value)],
    ) -> Result<Vec<Value>, EngineError> {
        let file = self.path.display();
        for spec in &self.inputs {
            let given = inputs
                .iter()
                .find(|(n, _)| *n == spec.name)
                .map(|(_, v)| v)
                .or_else(|| {
                    shared
                        .iter()
                        .find(|(n, _)| *n == spec.name)
                        .map(|(_, v)| *v)
                });
            let Some(v) = given else {
                return Err(EngineError::BadInput(format!(
                    "{file}: input '{}' was not given",
                    spec.name
                )));
            };
            let shape = v.shape();
            if v.dtype() != spec.dtype || !spec.accepts(&shape) {
                return Err(EngineError::BadInput(format!(
                    "input '{}' of {file} must be {} {}, got {} {shape:?}",
                    spec.name,
                    spec.dtype,
                    dims_text(&spec.dims),
                    v.dtype()
                )));
            }
        }
        let names: Vec<&str> = inputs
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(shared.iter().map(|(n, _)| *n))
            .collect();
        if let Some(n) = names
            .iter()
            .find(|n| !self.inputs.iter().any(|s| s.name == **n))
        {
            return Err(EngineError::BadInput(format!(
                "{file} has no input '{n}' (it takes {})",
                self.inputs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if names.len() != self.inputs.len() {
            return Err(EngineError::BadInput(format!(
                "{file}: an input was given twice"
            )));
        }
        self.inner.run(inputs, shared)
    }
}

/// `[1, ?, 64]` for a declaration.
pub fn dims_text(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// What a backend needs to load a dynamic session.
pub(crate) struct DynPrepared {
    pub path: PathBuf,
    pub inputs: Vec<DynSpec>,
    pub outputs: Vec<DynSpec>,
    pub precision: crate::Precision,
    pub streams: usize,
    pub threads: usize,
    pub mode: Mode,
    pub shared_cpu: bool,
}

pub(crate) type DynLoaded = (Box<dyn DynBackend>, SessionInfo);

fn specs(
    values: &[medinfer_onnx::ValueInfo],
    path: &Path,
    what: &str,
) -> Result<Vec<DynSpec>, EngineError> {
    values
        .iter()
        .map(|v| {
            let dtype = onnx_dtype(&v.dtype).ok_or_else(|| {
                EngineError::BadInput(format!(
                    "{}: {what} '{}' has element type {}, which medinfer does not handle yet",
                    path.display(),
                    v.name,
                    v.dtype
                ))
            })?;
            Ok(DynSpec {
                name: v.name.clone(),
                dtype,
                dims: v
                    .shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => Some(*n),
                        Dim::Dynamic(_) => None,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Loads `model` with its dynamic dimensions open on backend `kind`. `opts.batch` and
/// `opts.input_shapes` do not apply (shapes come with each call).
pub fn load_dynamic(
    kind: BackendKind,
    model: &Path,
    opts: &SessionOptions,
) -> Result<DynSession, EngineError> {
    let bytes = std::fs::read(model).map_err(|error| medinfer_onnx::OnnxError::Io {
        path: model.to_path_buf(),
        error,
    })?;
    let proto = medinfer_onnx::decode_model(&bytes, &model.display().to_string())?;
    drop(bytes);
    // Analysis without hashing the file: only the declared inputs and outputs are read.
    let info = medinfer_onnx::analyze(&proto, Some(&[]));
    drop(proto);
    let inputs = specs(&info.inputs, model, "input")?;
    let outputs = specs(&info.outputs, model, "output")?;
    let (streams, threads) =
        resolve_parallelism(opts.mode, opts.streams, opts.threads, usable_cores());
    let prepared = DynPrepared {
        path: model.to_path_buf(),
        inputs: inputs.clone(),
        outputs: outputs.clone(),
        precision: opts.precision,
        streams,
        threads,
        mode: opts.mode,
        shared_cpu: opts.shared_cpu,
    };
    let avail = crate::backend(kind).availability();
    if !avail.available {
        return Err(EngineError::Unavailable {
            backend: kind,
            reason: avail.reason.unwrap_or_default(),
            fix: avail.fix,
        });
    }
    let (inner, info) = match kind {
        BackendKind::Ort => crate::backends::ort_dyn(&prepared)?,
        BackendKind::OpenVino => crate::backends::openvino_dyn(&prepared)?,
        BackendKind::Tract => {
            return Err(EngineError::Unsupported {
                backend: kind,
                what: "models with shapes that change call to call (an autoregressive decoder); use --backend ort or openvino".into(),
            })
        }
    };
    Ok(DynSession {
        inner,
        inputs,
        outputs,
        info,
        path: model.to_path_buf(),
    })
}

/// Row `i` of `data` (rows of equal length) becomes old row `rows[i]`.
fn reorder(data: &mut [f32], rows: &[usize]) {
    let n = rows.len();
    if n == 0 || data.is_empty() {
        return;
    }
    let len = data.len() / n;
    let old = data.to_vec();
    for (i, &r) in rows.iter().enumerate() {
        data[i * len..(i + 1) * len].copy_from_slice(&old[r * len..(r + 1) * len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_rows_reorders_the_first_axis() {
        let t = Tensor::from_f32(vec![3, 2], vec![0., 1., 10., 11., 20., 21.]).unwrap();
        let mut v = Value::from(t);
        v.gather_rows(&[2, 0, 0]).unwrap();
        assert_eq!(
            v.to_tensor().unwrap().as_f32().unwrap(),
            &[20., 21., 0., 1., 0., 1.]
        );
        assert!(v.gather_rows(&[3, 0, 0]).is_err());
    }

    #[test]
    fn specs_accept_fitting_shapes_only() {
        let s = DynSpec {
            name: "x".into(),
            dtype: DType::F32,
            dims: vec![None, Some(4)],
        };
        assert!(s.accepts(&[7, 4]));
        assert!(!s.accepts(&[7, 5]));
        assert!(!s.accepts(&[4]));
        assert_eq!(dims_text(&s.dims), "[?, 4]");
    }
}
