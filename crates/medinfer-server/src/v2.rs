//! The Open Inference Protocol (KServe v2) REST messages: JSON tensors and the binary tensor
//! data extension (`Inference-Header-Content-Length`), as Triton's and KServe's clients send
//! and read them.

use medinfer_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The header that carries the length of the JSON part of a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A protocol error: HTTP status and message (sent as `{"error": message}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// HTTP status code.
    pub status: u16,
    /// Message for the client.
    pub message: String,
}

impl ProtocolError {
    /// 400 Bad Request.
    pub fn bad(message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            status: 400,
            message: message.into(),
        }
    }
}

/// The v2 datatype name of an element type.
pub fn datatype_name(t: DType) -> &'static str {
    match t {
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::I64 => "INT64",
        DType::I32 => "INT32",
        DType::I8 => "INT8",
        DType::U8 => "UINT8",
        DType::Bool => "BOOL",
    }
}

/// The element type of a v2 datatype name (the ones medinfer's engines take).
pub fn parse_datatype(s: &str) -> Option<DType> {
    Some(match s {
        "FP32" => DType::F32,
        "FP64" => DType::F64,
        "INT64" => DType::I64,
        "INT32" => DType::I32,
        "INT8" => DType::I8,
        "UINT8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// One input of an inference request.
#[derive(Debug, Deserialize)]
pub struct RequestInput {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// v2 datatype.
    pub datatype: String,
    /// Parameters (`binary_data_size` for the binary extension).
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// JSON data: flat or nested, row-major. Absent when the data is binary.
    #[serde(default)]
    pub data: Option<Value>,
}

/// A requested output.
#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    /// Tensor name.
    pub name: String,
    /// Parameters (`binary_data`).
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// An inference request (JSON part).
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Request id, echoed back.
    #[serde(default)]
    pub id: Option<String>,
    /// Parameters (`binary_data_output`).
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Inputs.
    pub inputs: Vec<RequestInput>,
    /// Outputs wanted (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One output tensor of a response.
#[derive(Debug, Serialize)]
pub struct ResponseOutput {
    /// Tensor name.
    pub name: String,
    /// v2 datatype.
    pub datatype: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    /// Parameters (`binary_data_size` when the data follows the JSON).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    /// JSON data (flat, row-major), absent when binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// An inference response (JSON part).
#[derive(Debug, Serialize)]
pub struct InferResponse {
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// The request's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Outputs.
    pub outputs: Vec<ResponseOutput>,
}

/// Splits a request body into its JSON header and binary tail, by the
/// `Inference-Header-Content-Length` header (absent: all JSON).
pub fn split_body<'b>(
    body: &'b [u8],
    header_len: Option<&str>,
) -> Result<(InferRequest, &'b [u8]), ProtocolError> {
    let n = match header_len {
        None => body.len(),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| ProtocolError::bad(format!("{HEADER_LENGTH}: '{v}' is not a length")))?,
    };
    if n > body.len() {
        return Err(ProtocolError::bad(format!(
            "{HEADER_LENGTH} is {n} but the body has only {} bytes",
            body.len()
        )));
    }
    let req: InferRequest = serde_json::from_slice(&body[..n])
        .map_err(|e| ProtocolError::bad(format!("request JSON: {e}")))?;
    Ok((req, &body[n..]))
}

fn flatten(v: &Value, out: &mut Vec<Value>, depth: usize) -> Result<(), ProtocolError> {
    if depth > 32 {
        return Err(ProtocolError::bad("data is nested too deeply"));
    }
    match v {
        Value::Array(a) => {
            for x in a {
                flatten(x, out, depth + 1)?;
            }
            Ok(())
        }
        other => {
            out.push(other.clone());
            Ok(())
        }
    }
}

/// Decodes the inputs of a request: JSON data or binary data (taken from `tail` in input
/// order). Shapes must be non-negative and match the element count; at most `max_elems`
/// elements per tensor.
pub fn decode_inputs(
    req: &InferRequest,
    mut tail: &[u8],
    max_elems: usize,
) -> Result<Vec<(String, Tensor)>, ProtocolError> {
    let mut out = Vec::with_capacity(req.inputs.len());
    for inp in &req.inputs {
        let dtype = parse_datatype(&inp.datatype).ok_or_else(|| {
            ProtocolError::bad(format!(
                "input '{}': datatype '{}' is not one of FP32, FP64, INT64, INT32, INT8, UINT8, BOOL",
                inp.name, inp.datatype
            ))
        })?;
        if inp.shape.iter().any(|&d| d < 0) {
            return Err(ProtocolError::bad(format!(
                "input '{}': negative dimension in shape {:?}",
                inp.name, inp.shape
            )));
        }
        let shape: Vec<usize> = inp.shape.iter().map(|&d| d as usize).collect();
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= max_elems)
            .ok_or_else(|| ProtocolError {
                status: 413,
                message: format!(
                    "input '{}': shape {:?} has more than {max_elems} elements",
                    inp.name, inp.shape
                ),
            })?;
        let binary = inp.parameters.get("binary_data_size");
        let t = match (binary, &inp.data) {
            (Some(size), _) => {
                let size = size.as_u64().ok_or_else(|| {
                    ProtocolError::bad(format!(
                        "input '{}': binary_data_size is not a number",
                        inp.name
                    ))
                })? as usize;
                if size != n * dtype.size() {
                    return Err(ProtocolError::bad(format!(
                        "input '{}': binary_data_size {size} but shape {:?} of {} needs {} bytes",
                        inp.name,
                        inp.shape,
                        inp.datatype,
                        n * dtype.size()
                    )));
                }
                if tail.len() < size {
                    return Err(ProtocolError::bad(format!(
                        "input '{}': the body ends after {} of its {size} binary bytes",
                        inp.name,
                        tail.len()
                    )));
                }
                let (bytes, rest) = tail.split_at(size);
                tail = rest;
                Tensor::from_le_bytes(dtype, shape, bytes)
                    .map_err(|e| ProtocolError::bad(format!("input '{}': {e}", inp.name)))?
            }
            (None, Some(data)) => {
                let mut flat = Vec::with_capacity(n);
                flatten(data, &mut flat, 0)?;
                if flat.len() != n {
                    return Err(ProtocolError::bad(format!(
                        "input '{}': {} values for shape {:?} ({n} expected)",
                        inp.name,
                        flat.len(),
                        inp.shape
                    )));
                }
                json_tensor(&inp.name, dtype, shape, &flat)?
            }
            (None, None) => {
                return Err(ProtocolError::bad(format!(
                    "input '{}' has neither data nor binary_data_size",
                    inp.name
                )))
            }
        };
        out.push((inp.name.clone(), t));
    }
    if !tail.is_empty() {
        return Err(ProtocolError::bad(format!(
            "{} bytes of binary data after the last input",
            tail.len()
        )));
    }
    Ok(out)
}

fn json_tensor(
    name: &str,
    dtype: DType,
    shape: Vec<usize>,
    flat: &[Value],
) -> Result<Tensor, ProtocolError> {
    let bad = |i: usize| {
        ProtocolError::bad(format!(
            "input '{name}': value {i} ({}) is not {}",
            flat[i],
            datatype_name(dtype)
        ))
    };
    let mut bytes = Vec::with_capacity(flat.len() * dtype.size());
    for (i, v) in flat.iter().enumerate() {
        match dtype {
            DType::F32 => {
                bytes.extend_from_slice(&(v.as_f64().ok_or_else(|| bad(i))? as f32).to_le_bytes())
            }
            DType::F64 => bytes.extend_from_slice(&v.as_f64().ok_or_else(|| bad(i))?.to_le_bytes()),
            DType::I64 => bytes.extend_from_slice(&v.as_i64().ok_or_else(|| bad(i))?.to_le_bytes()),
            DType::I32 => {
                let x = i32::try_from(v.as_i64().ok_or_else(|| bad(i))?).map_err(|_| bad(i))?;
                bytes.extend_from_slice(&x.to_le_bytes())
            }
            DType::I8 => {
                let x = i8::try_from(v.as_i64().ok_or_else(|| bad(i))?).map_err(|_| bad(i))?;
                bytes.extend_from_slice(&x.to_le_bytes())
            }
            DType::U8 => {
                let x = u8::try_from(v.as_i64().ok_or_else(|| bad(i))?).map_err(|_| bad(i))?;
                bytes.push(x)
            }
            DType::Bool => bytes.push(v.as_bool().ok_or_else(|| bad(i))? as u8),
        }
    }
    Tensor::from_le_bytes(dtype, shape, &bytes)
        .map_err(|e| ProtocolError::bad(format!("input '{name}': {e}")))
}

/// JSON values of a tensor (flat, row-major).
pub fn tensor_json(t: &Tensor) -> Value {
    use medinfer_core::TensorData as D;
    match t.data() {
        D::F32(v) => Value::from(
            v.iter()
                .map(|&x| {
                    serde_json::Number::from_f64(x as f64)
                        .map(Value::Number)
                        .unwrap_or(Value::Null)
                })
                .collect::<Vec<_>>(),
        ),
        D::F64(v) => Value::from(
            v.iter()
                .map(|&x| {
                    serde_json::Number::from_f64(x)
                        .map(Value::Number)
                        .unwrap_or(Value::Null)
                })
                .collect::<Vec<_>>(),
        ),
        D::I64(v) => Value::from(v.clone()),
        D::I32(v) => Value::from(v.clone()),
        D::I8(v) => Value::from(v.iter().map(|&x| x as i64).collect::<Vec<_>>()),
        D::U8(v) => Value::from(v.iter().map(|&x| x as i64).collect::<Vec<_>>()),
        D::Bool(v) => Value::from(v.clone()),
    }
}

/// Builds the response body: plain JSON, or JSON header + binary tensors (returns the header
/// length for `Inference-Header-Content-Length`).
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    req: &InferRequest,
    outputs: Vec<(String, Tensor)>,
) -> Result<(Vec<u8>, Option<usize>), ProtocolError> {
    let all_binary = req
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let wanted: Option<Vec<(&str, bool)>> = req.outputs.as_ref().map(|o| {
        o.iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.parameters
                        .get("binary_data")
                        .and_then(Value::as_bool)
                        .unwrap_or(all_binary),
                )
            })
            .collect()
    });
    let mut chosen: Vec<(String, Tensor, bool)> = Vec::new();
    match &wanted {
        None => {
            for (n, t) in outputs {
                chosen.push((n, t, all_binary));
            }
        }
        Some(w) => {
            let mut by_name: std::collections::HashMap<String, Tensor> =
                outputs.into_iter().collect();
            for (name, binary) in w {
                let t = by_name.remove(*name).ok_or_else(|| {
                    ProtocolError::bad(format!("output '{name}' is not an output of the model"))
                })?;
                chosen.push((name.to_string(), t, *binary));
            }
        }
    }
    let mut tail = Vec::new();
    let mut outs = Vec::with_capacity(chosen.len());
    for (name, t, binary) in chosen {
        let mut parameters = Map::new();
        let data = if binary {
            let b = t.to_le_bytes();
            parameters.insert("binary_data_size".into(), Value::from(b.len()));
            tail.extend_from_slice(&b);
            None
        } else {
            Some(tensor_json(&t))
        };
        outs.push(ResponseOutput {
            name,
            datatype: datatype_name(t.dtype()),
            shape: t.shape().to_vec(),
            parameters,
            data,
        });
    }
    let resp = InferResponse {
        model_name: model_name.to_string(),
        model_version: model_version.to_string(),
        id: req.id.clone(),
        outputs: outs,
    };
    let mut body = serde_json::to_vec(&resp).expect("serializable");
    if tail.is_empty() {
        return Ok((body, None));
    }
    let n = body.len();
    body.extend_from_slice(&tail);
    Ok((body, Some(n)))
}
