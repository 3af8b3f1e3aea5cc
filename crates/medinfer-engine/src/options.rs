use crate::{EngineError, TensorSpec};
use medinfer_core::DType;
use medinfer_onnx::Dim;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The engines medinfer drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract: pure Rust, always available.
    Tract,
    /// ONNX Runtime.
    Ort,
    /// OpenVINO.
    #[serde(rename = "openvino")]
    OpenVino,
}

impl BackendKind {
    /// Every backend, fastest first (the order `auto` tries).
    pub const ALL_FASTEST_FIRST: [BackendKind; 3] =
        [BackendKind::OpenVino, BackendKind::Ort, BackendKind::Tract];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
            BackendKind::OpenVino => "openvino",
        }
    }

    /// Parses a command-line name (`onnxruntime` and `ov` are accepted too).
    pub fn parse(s: &str) -> Option<BackendKind> {
        match s.to_ascii_lowercase().as_str() {
            "tract" => Some(BackendKind::Tract),
            "ort" | "onnxruntime" => Some(BackendKind::Ort),
            "openvino" | "ov" => Some(BackendKind::OpenVino),
            _ => None,
        }
    }

    /// The fastest backend available here.
    pub fn auto() -> BackendKind {
        Self::ALL_FASTEST_FIRST
            .into_iter()
            .find(|k| crate::backend(*k).availability().available)
            .unwrap_or(BackendKind::Tract)
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Numeric precision the engine computes in. INT8 is a property of the model (QDQ nodes written
/// by `medinfer quantize`) and is reported in [`crate::SessionInfo::effective_precision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// True IEEE FP32 (OpenVINO's BF16 default on AVX-512 BF16 CPUs is switched off).
    #[default]
    Fp32,
    /// BF16 where the CPU has it (OpenVINO only).
    Bf16,
}

impl Precision {
    /// Parses `fp32` / `f32` / `bf16`.
    pub fn parse(s: &str) -> Option<Precision> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Some(Precision::Fp32),
            "bf16" => Some(Precision::Bf16),
            _ => None,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Latency (one request on all threads) or throughput (many streams in parallel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One stream using every thread.
    #[default]
    Latency,
    /// N streams x T threads, a request in flight on every stream.
    Throughput,
}

impl Mode {
    /// Parses `latency` / `throughput`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "latency" => Some(Mode::Latency),
            "throughput" => Some(Mode::Throughput),
            _ => None,
        }
    }

    /// The mode a session of `streams` streams runs in: throughput with several, latency with
    /// one.
    pub fn for_streams(streams: usize) -> Mode {
        if streams > 1 {
            Mode::Throughput
        } else {
            Mode::Latency
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
        })
    }
}

/// How to load a session. Every field has an automatic default.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Precision (default fp32).
    pub precision: Precision,
    /// Latency or throughput (default latency).
    pub mode: Mode,
    /// Streams (throughput mode); default: usable cores / threads.
    pub streams: Option<usize>,
    /// Threads per stream; default: all usable cores in latency mode, 1 in throughput mode.
    pub threads: Option<usize>,
    /// Size of a dynamic first (batch) dimension; default: the model's `medinfer.default_batch`
    /// metadata, else 1.
    pub batch: Option<usize>,
    /// Full shapes for inputs whose other dimensions are dynamic, by input name.
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Other work shares the CPU with the engine (a server parsing requests): engine threads
    /// sleep instead of spin-waiting between operators (ONNX Runtime's intra-op spinning off;
    /// OpenVINO and tract do not spin). Measured in `medinfer serve` on 2 cores: JSON requests
    /// at concurrency 8, 64 -> 95 req/s (docs/benchmarks.md).
    pub shared_cpu: bool,
}

/// Options resolved against the model and the machine.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub path: PathBuf,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub quantized: bool,
    pub precision: Precision,
    pub mode: Mode,
    pub streams: usize,
    pub threads: usize,
    pub shared_cpu: bool,
}

/// Resolves streams x threads from the mode and the cores this process may use.
pub fn resolve_parallelism(
    mode: Mode,
    streams: Option<usize>,
    threads: Option<usize>,
    cores: usize,
) -> (usize, usize) {
    let cores = cores.max(1);
    match mode {
        Mode::Latency => (1, threads.unwrap_or(cores).max(1)),
        Mode::Throughput => match (streams, threads) {
            (Some(s), Some(t)) => (s.max(1), t.max(1)),
            (Some(s), None) => (s.max(1), (cores / s.max(1)).max(1)),
            (None, Some(t)) => ((cores / t.max(1)).max(1), t.max(1)),
            (None, None) => (cores, 1),
        },
    }
}

pub(crate) fn onnx_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "float32" => DType::F32,
        "float64" => DType::F64,
        "int64" => DType::I64,
        "int32" => DType::I32,
        "int8" => DType::I8,
        "uint8" => DType::U8,
        "bool" => DType::Bool,
        _ => return None,
    })
}

pub(crate) fn prepare(path: &Path, opts: &SessionOptions) -> Result<Prepared, EngineError> {
    let bytes = std::fs::read(path).map_err(|error| medinfer_onnx::OnnxError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let model = medinfer_onnx::decode_model(&bytes, &path.display().to_string())?;
    // Analysis without hashing the whole file again: size/sha are not needed here.
    let info = medinfer_onnx::analyze(&model, Some(&[]));
    let default_batch = info
        .metadata
        .get("medinfer.default_batch")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1);
    let batch = opts.batch.unwrap_or(default_batch);
    if batch == 0 || batch > 1 << 16 {
        return Err(EngineError::BadInput(format!(
            "batch {batch} is out of range (1..=65536)"
        )));
    }
    let mut inputs = Vec::new();
    let mut concrete = BTreeMap::new();
    for v in &info.inputs {
        let dtype = onnx_dtype(&v.dtype).ok_or_else(|| {
            EngineError::BadInput(format!(
                "{}: input '{}' has element type {}, which medinfer does not feed yet",
                path.display(),
                v.name,
                v.dtype
            ))
        })?;
        let shape: Vec<usize> = if let Some(s) = opts.input_shapes.get(&v.name) {
            let compatible = s.len() == v.shape.len()
                && s.iter()
                    .zip(&v.shape)
                    .all(|(a, d)| matches!(d, Dim::Dynamic(_)) || *d == Dim::Fixed(*a));
            if !compatible {
                return Err(EngineError::BadInput(format!(
                    "shape {s:?} given for input '{}' does not fit the model's [{}]",
                    v.name,
                    v.shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            s.clone()
        } else {
            v.shape
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Fixed(n) => Ok(*n),
                    Dim::Dynamic(_) if i == 0 => Ok(batch),
                    Dim::Dynamic(name) => Err(EngineError::BadInput(format!(
                        "input '{}' of {} has a dynamic dimension '{}' at position {i}; give its full shape (--input-shape {}=1x...)",
                        v.name,
                        path.display(),
                        name,
                        v.name
                    ))),
                })
                .collect::<Result<_, _>>()?
        };
        concrete.insert(v.name.clone(), shape.clone());
        inputs.push(TensorSpec {
            name: v.name.clone(),
            dtype,
            shape,
        });
    }
    let graph = model.graph.as_ref().expect("validated: has a graph");
    let report = medinfer_onnx::shapes::infer(graph, &concrete.into_iter().collect());
    let outputs = info
        .outputs
        .iter()
        .map(|o| TensorSpec {
            name: o.name.clone(),
            dtype: onnx_dtype(&o.dtype).unwrap_or(DType::F32),
            shape: report.shapes.get(&o.name).cloned().unwrap_or_default(),
        })
        .collect();
    let (streams, threads) = resolve_parallelism(
        opts.mode,
        opts.streams,
        opts.threads,
        medinfer_core::usable_cores(),
    );
    Ok(Prepared {
        path: path.to_path_buf(),
        inputs,
        outputs,
        quantized: info.quantized,
        precision: opts.precision,
        mode: opts.mode,
        streams,
        threads,
        shared_cpu: opts.shared_cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallelism_defaults_follow_the_usable_cores() {
        assert_eq!(resolve_parallelism(Mode::Latency, None, None, 8), (1, 8));
        assert_eq!(
            resolve_parallelism(Mode::Latency, Some(4), Some(2), 8),
            (1, 2)
        );
        assert_eq!(resolve_parallelism(Mode::Throughput, None, None, 8), (8, 1));
        assert_eq!(
            resolve_parallelism(Mode::Throughput, Some(2), None, 8),
            (2, 4)
        );
        assert_eq!(
            resolve_parallelism(Mode::Throughput, None, Some(2), 8),
            (4, 2)
        );
        assert_eq!(
            resolve_parallelism(Mode::Throughput, None, Some(16), 8),
            (1, 16)
        );
        assert_eq!(resolve_parallelism(Mode::Throughput, None, None, 0), (1, 1));
    }
}
