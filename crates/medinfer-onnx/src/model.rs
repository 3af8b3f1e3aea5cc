use crate::proto::{attribute_type, data_type, AttributeProto, ModelProto, NodeProto, TensorProto};
use prost::Message;
use std::path::{Path, PathBuf};

/// Why an ONNX file or model could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, not chained again as a source).
        error: std::io::Error,
    },
    /// The bytes are not a protobuf-encoded ONNX model (wrong file type or truncated).
    #[error("{path}: not a valid ONNX model (protobuf decoding failed: {reason}); is the file truncated or of another type?")]
    Decode {
        /// The file (or `<memory>`).
        path: String,
        /// The decoder's message.
        reason: String,
    },
    /// The protobuf decoded but does not describe a usable model.
    #[error("{path}: invalid ONNX model: {reason}")]
    Invalid {
        /// The file (or `<memory>`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A zoo model name that does not exist.
    #[error("unknown zoo model '{0}' (see `medinfer zoo list`)")]
    UnknownZooModel(String),
}

/// Decodes and validates a model held in memory. `origin` names it in errors.
pub fn decode_model(bytes: &[u8], origin: &str) -> Result<ModelProto, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        path: origin.to_string(),
        reason: e.to_string(),
    })?;
    validate(&model, origin)?;
    Ok(model)
}

/// Reads, decodes and validates an ONNX file. Initializers stored as external data (the ONNX
/// convention for models over 2 GB: `location` / `offset` / `length` entries naming a file next
/// to the model) are read into the model, so that it can be transformed and saved again.
pub fn load_model(path: &Path) -> Result<ModelProto, OnnxError> {
    let bytes = std::fs::read(path).map_err(|error| OnnxError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut model = decode_model(&bytes, &path.display().to_string())?;
    resolve_external_data(&mut model, path)?;
    Ok(model)
}

/// Reads every external initializer of `model` (loaded from `model_path`) into `raw_data`.
/// Locations must be relative paths inside the model's folder, as the ONNX checker requires.
pub fn resolve_external_data(model: &mut ModelProto, model_path: &Path) -> Result<(), OnnxError> {
    let origin = model_path.display().to_string();
    let dir = model_path.parent().unwrap_or(Path::new("."));
    let bad = |reason: String| OnnxError::Invalid {
        path: origin.clone(),
        reason,
    };
    let Some(g) = model.graph.as_mut() else {
        return Ok(());
    };
    let mut files: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for t in g
        .initializer
        .iter_mut()
        .filter(|t| t.data_location == Some(1))
    {
        let name = t.name.clone().unwrap_or_default();
        let entry = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
        };
        let location = entry("location").ok_or_else(|| {
            bad(format!(
                "initializer '{name}' is external but names no location"
            ))
        })?;
        let rel = Path::new(&location);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(format!(
                "initializer '{name}': external data location '{location}' must be a relative path inside the model's folder"
            )));
        }
        let num = |k: &str| -> Result<Option<usize>, OnnxError> {
            entry(k)
                .map(|v| {
                    v.parse::<usize>().map_err(|_| {
                        bad(format!(
                            "initializer '{name}': external data {k} '{v}' is not a number"
                        ))
                    })
                })
                .transpose()
        };
        let (offset, length) = (num("offset")?.unwrap_or(0), num("length")?);
        if !files.contains_key(&location) {
            let full = dir.join(rel);
            let data = std::fs::read(&full).map_err(|error| OnnxError::Io { path: full, error })?;
            files.insert(location.clone(), data);
        }
        let data = &files[&location];
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(data.len()),
        };
        let slice = end
            .filter(|&e| e <= data.len() && offset <= e)
            .map(|e| &data[offset..e])
            .ok_or_else(|| {
                bad(format!(
                    "initializer '{name}': external data {location} [{offset}, +{length:?}) lies beyond the file's {} bytes",
                    data.len()
                ))
            })?;
        t.raw_data = Some(slice.to_vec());
        t.data_location = None;
        t.external_data.clear();
        check_tensor_size(t).map_err(&bad)?;
    }
    Ok(())
}

/// Writes a model with every initializer of at least `threshold` bytes stored as external data
/// in `<file name>.data` next to it (the ONNX convention; needed above protobuf's 2 GB limit).
/// [`save_model`] does this by itself for models whose initializers exceed 1.5 GiB.
pub fn save_model_external(
    model: &ModelProto,
    path: &Path,
    threshold: usize,
) -> Result<(), OnnxError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |error| OnnxError::Io { path: p, error }
    };
    let file_name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let data_name = format!("{file_name}.data");
    let data_path = path.with_file_name(&data_name);
    let mut m = model.clone();
    let mut data: Vec<u8> = Vec::new();
    if let Some(g) = m.graph.as_mut() {
        for t in g.initializer.iter_mut() {
            let Some(raw) = t.raw_data.take() else {
                continue;
            };
            if raw.len() < threshold {
                t.raw_data = Some(raw);
                continue;
            }
            // 4 KiB alignment, as onnx's own writer does, so the data can be memory-mapped.
            while !data.len().is_multiple_of(4096) {
                data.push(0);
            }
            let kv = |k: &str, v: String| crate::proto::StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            };
            t.external_data = vec![
                kv("location", data_name.clone()),
                kv("offset", data.len().to_string()),
                kv("length", raw.len().to_string()),
            ];
            t.data_location = Some(1);
            data.extend_from_slice(&raw);
        }
    }
    std::fs::write(&data_path, &data).map_err(io(&data_path))?;
    std::fs::write(path, encode_model(&m)).map_err(io(path))
}

/// Encodes a model to bytes.
pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a model to a file (atomically: a temporary file renamed into place). Models whose
/// initializers exceed 1.5 GiB are written with external data ([`save_model_external`]).
pub fn save_model(model: &ModelProto, path: &Path) -> Result<(), OnnxError> {
    let bytes: usize = model
        .graph
        .as_ref()
        .map(|g| {
            g.initializer
                .iter()
                .map(|t| t.raw_data.as_ref().map_or(0, |r| r.len()))
                .sum()
        })
        .unwrap_or(0);
    if bytes > 3 << 29 {
        return save_model_external(model, path, 1024);
    }
    let io = |error| OnnxError::Io {
        path: path.to_path_buf(),
        error,
    };
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, encode_model(model)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Structural checks that catch non-ONNX and truncated files which still happen to decode as
/// protobuf: a graph with outputs and nodes, an opset, initializers whose data matches their dims.
fn validate(model: &ModelProto, origin: &str) -> Result<(), OnnxError> {
    let bad = |reason: String| OnnxError::Invalid {
        path: origin.to_string(),
        reason,
    };
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| bad("no graph (is this an ONNX file?)".into()))?;
    if model.ir_version.unwrap_or(0) <= 0 {
        return Err(bad("missing ir_version (is this an ONNX file?)".into()));
    }
    if model.opset_import.is_empty() {
        return Err(bad("no opset_import".into()));
    }
    if graph.output.is_empty() {
        return Err(bad("the graph declares no output".into()));
    }
    if graph.node.is_empty() {
        return Err(bad("the graph has no node".into()));
    }
    for t in &graph.initializer {
        check_tensor_size(t).map_err(bad)?;
    }
    Ok(())
}

fn check_tensor_size(t: &TensorProto) -> Result<(), String> {
    let name = t.name.clone().unwrap_or_default();
    if t.data_location == Some(1) {
        return Ok(()); // external data: checked when resolved
    }
    let mut numel: u128 = 1;
    for &d in &t.dims {
        if d < 0 {
            return Err(format!("initializer '{name}' has a negative dimension {d}"));
        }
        numel = numel.saturating_mul(d as u128);
    }
    let elem = match t.data_type.unwrap_or(0) {
        data_type::FLOAT | data_type::INT32 | data_type::UINT32 => 4,
        data_type::DOUBLE | data_type::INT64 | data_type::UINT64 => 8,
        data_type::UINT8 | data_type::INT8 | data_type::BOOL => 1,
        data_type::FLOAT16 | data_type::BFLOAT16 | data_type::INT16 | data_type::UINT16 => 2,
        _ => return Ok(()),
    };
    if let Some(raw) = &t.raw_data {
        if raw.len() as u128 != numel * elem {
            return Err(format!(
                "initializer '{name}' holds {} bytes but its dims {:?} need {} (truncated file?)",
                raw.len(),
                t.dims,
                numel * elem
            ));
        }
    } else {
        let stored = t.float_data.len()
            + t.int32_data.len()
            + t.int64_data.len()
            + t.double_data.len()
            + t.uint64_data.len();
        if stored as u128 != numel {
            return Err(format!(
                "initializer '{name}' holds {stored} values but its dims {:?} need {numel}",
                t.dims
            ));
        }
    }
    Ok(())
}

/// The version of the default (`ai.onnx`) opset a model imports, 0 if none.
pub(crate) fn default_opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version)
        .unwrap_or(0)
}

/// The dims of a tensor as `usize` (negative dims, already rejected by validation, become 0).
pub fn tensor_dims(t: &TensorProto) -> Vec<usize> {
    t.dims.iter().map(|&d| d.max(0) as usize).collect()
}

/// The values of a float, double, int32 or int64 tensor as f32 (`None` for other types or
/// external data).
pub fn tensor_to_f32(t: &TensorProto) -> Option<Vec<f32>> {
    let dt = t.data_type.unwrap_or(0);
    if let Some(raw) = &t.raw_data {
        return match dt {
            data_type::FLOAT => Some(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            data_type::INT64 => Some(
                raw.chunks_exact(8)
                    .map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        i64::from_le_bytes(a) as f32
                    })
                    .collect(),
            ),
            data_type::INT32 => Some(
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                    .collect(),
            ),
            _ => None,
        };
    }
    match dt {
        data_type::FLOAT => Some(t.float_data.clone()),
        data_type::INT64 => Some(t.int64_data.iter().map(|&x| x as f32).collect()),
        data_type::INT32 => Some(t.int32_data.iter().map(|&x| x as f32).collect()),
        data_type::DOUBLE => Some(t.double_data.iter().map(|&x| x as f32).collect()),
        _ => None,
    }
}

fn find_attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}

/// An INT attribute.
pub fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    find_attr(node, name).and_then(|a| a.i)
}

/// A FLOAT attribute.
pub fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    find_attr(node, name).and_then(|a| a.f)
}

/// An INTS attribute.
pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    find_attr(node, name)
        .filter(|a| a.r#type == Some(attribute_type::INTS) || !a.ints.is_empty())
        .map(|a| a.ints.clone())
}

/// A STRING attribute.
pub fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
    find_attr(node, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// The name ONNX gives an element type (`float`, `int64`, ...).
pub fn elem_type_name(t: i32) -> &'static str {
    match t {
        data_type::FLOAT => "float32",
        data_type::UINT8 => "uint8",
        data_type::INT8 => "int8",
        data_type::UINT16 => "uint16",
        data_type::INT16 => "int16",
        data_type::INT32 => "int32",
        data_type::INT64 => "int64",
        data_type::STRING => "string",
        data_type::BOOL => "bool",
        data_type::FLOAT16 => "float16",
        data_type::DOUBLE => "float64",
        data_type::UINT32 => "uint32",
        data_type::UINT64 => "uint64",
        data_type::BFLOAT16 => "bfloat16",
        _ => "unknown",
    }
}
