use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Element type of a [`Tensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean (one byte each).
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Parses the names used on the command line and in JSON (`f32`, `float32`, `int64`, ...).
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" | "float" | "float32" => DType::F32,
            "f64" | "double" | "float64" => DType::F64,
            "i64" | "int64" => DType::I64,
            "i32" | "int32" => DType::I32,
            "i8" | "int8" => DType::I8,
            "u8" | "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// Owned, typed element storage of a [`Tensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// f32 elements.
    F32(Vec<f32>),
    /// f64 elements.
    F64(Vec<f64>),
    /// i64 elements.
    I64(Vec<i64>),
    /// i32 elements.
    I32(Vec<i32>),
    /// i8 elements.
    I8(Vec<i8>),
    /// u8 elements.
    U8(Vec<u8>),
    /// bool elements.
    Bool(Vec<bool>),
}

impl TensorData {
    fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::I8(_) => DType::I8,
            TensorData::U8(_) => DType::U8,
            TensorData::Bool(_) => DType::Bool,
        }
    }
}

/// A dense, row-major (C order) tensor with owned data.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// Number of elements of `shape`, or an error if it overflows.
pub(crate) fn checked_numel(shape: &[usize]) -> Result<usize, CoreError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| CoreError::ShapeOverflow(shape.to_vec()))
}

impl Tensor {
    /// Builds a tensor, checking that `data` holds exactly as many elements as `shape` needs.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, CoreError> {
        let expected = checked_numel(&shape)?;
        if expected != data.len() {
            return Err(CoreError::ShapeMismatch {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// Builds an f32 tensor.
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, CoreError> {
        Tensor::new(shape, TensorData::F32(data))
    }

    /// A zero-filled tensor of the given type and shape.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Tensor, CoreError> {
        let n = checked_numel(&shape)?;
        let data = match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::F64 => TensorData::F64(vec![0.0; n]),
            DType::I64 => TensorData::I64(vec![0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::I8 => TensorData::I8(vec![0; n]),
            DType::U8 => TensorData::U8(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
        };
        Ok(Tensor { shape, data })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The typed data.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Consumes the tensor into its shape and data.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// The tensor cut along its first axis into that many tensors of shape `[1, rest...]`
    /// (a stack of samples into single samples). A rank-0 tensor gives itself.
    pub fn unstack(&self) -> Vec<Tensor> {
        let Some((&n, rest)) = self.shape.split_first() else {
            return vec![self.clone()];
        };
        let len: usize = rest.iter().product();
        let mut shape = vec![1];
        shape.extend_from_slice(rest);
        fn cut<T: Clone>(v: &[T], n: usize, len: usize) -> Vec<Vec<T>> {
            (0..n).map(|k| v[k * len..(k + 1) * len].to_vec()).collect()
        }
        let parts: Vec<TensorData> = match &self.data {
            TensorData::F32(v) => cut(v, n, len).into_iter().map(TensorData::F32).collect(),
            TensorData::F64(v) => cut(v, n, len).into_iter().map(TensorData::F64).collect(),
            TensorData::I64(v) => cut(v, n, len).into_iter().map(TensorData::I64).collect(),
            TensorData::I32(v) => cut(v, n, len).into_iter().map(TensorData::I32).collect(),
            TensorData::I8(v) => cut(v, n, len).into_iter().map(TensorData::I8).collect(),
            TensorData::U8(v) => cut(v, n, len).into_iter().map(TensorData::U8).collect(),
            TensorData::Bool(v) => cut(v, n, len).into_iter().map(TensorData::Bool).collect(),
        };
        parts
            .into_iter()
            .map(|data| Tensor {
                shape: shape.clone(),
                data,
            })
            .collect()
    }

    /// The f32 elements, or an error naming the real type.
    pub fn as_f32(&self) -> Result<&[f32], CoreError> {
        match &self.data {
            TensorData::F32(v) => Ok(v),
            other => Err(CoreError::WrongDType {
                expected: DType::F32,
                found: other.dtype(),
            }),
        }
    }

    /// The elements as f32, writable in place (errors for other element types).
    pub fn as_f32_mut(&mut self) -> Result<&mut [f32], CoreError> {
        match &mut self.data {
            TensorData::F32(v) => Ok(v),
            other => Err(CoreError::WrongDType {
                expected: DType::F32,
                found: other.dtype(),
            }),
        }
    }

    /// All elements converted to f64 (for statistics and comparisons across backends).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }

    /// Raw little-endian bytes of the elements (the layout every engine and NPY expect).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        fn flat<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            let mut out = Vec::with_capacity(v.len() * N);
            for &x in v {
                out.extend_from_slice(&f(x));
            }
            out
        }
        match &self.data {
            TensorData::F32(v) => flat(v, f32::to_le_bytes),
            TensorData::F64(v) => flat(v, f64::to_le_bytes),
            TensorData::I64(v) => flat(v, i64::to_le_bytes),
            TensorData::I32(v) => flat(v, i32::to_le_bytes),
            TensorData::I8(v) => flat(v, i8::to_le_bytes),
            TensorData::U8(v) => v.clone(),
            TensorData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        }
    }

    /// Builds a tensor from little-endian bytes.
    pub fn from_le_bytes(
        dtype: DType,
        shape: Vec<usize>,
        bytes: &[u8],
    ) -> Result<Tensor, CoreError> {
        let n = checked_numel(&shape)?;
        let need = n
            .checked_mul(dtype.size())
            .ok_or_else(|| CoreError::ShapeOverflow(shape.clone()))?;
        if bytes.len() != need {
            return Err(CoreError::ShapeMismatch {
                shape,
                expected: n,
                got: bytes.len() / dtype.size(),
            });
        }
        fn parse<T, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        let data = match dtype {
            DType::F32 => TensorData::F32(parse(bytes, f32::from_le_bytes)),
            DType::F64 => TensorData::F64(parse(bytes, f64::from_le_bytes)),
            DType::I64 => TensorData::I64(parse(bytes, i64::from_le_bytes)),
            DType::I32 => TensorData::I32(parse(bytes, i32::from_le_bytes)),
            DType::I8 => TensorData::I8(parse(bytes, i8::from_le_bytes)),
            DType::U8 => TensorData::U8(bytes.to_vec()),
            DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        };
        Tensor::new(shape, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_mismatch_is_an_error() {
        let e = Tensor::from_f32(vec![2, 2], vec![1.0; 3]).unwrap_err();
        assert!(e.to_string().contains("3 elements"), "{e}");
    }

    #[test]
    fn unstack_cuts_along_the_first_axis() {
        let t = Tensor::new(vec![3, 2], TensorData::I64(vec![1, 2, 3, 4, 5, 6])).unwrap();
        let parts = t.unstack();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].shape(), &[1, 2]);
        assert_eq!(parts[2].data(), &TensorData::I64(vec![5, 6]));
        let empty = Tensor::zeros(DType::F32, vec![0, 4]).unwrap();
        assert!(empty.unstack().is_empty());
    }

    #[test]
    fn overflowing_shape_is_an_error() {
        assert!(matches!(
            Tensor::zeros(DType::F32, vec![usize::MAX, 2]),
            Err(CoreError::ShapeOverflow(_))
        ));
    }

    #[test]
    fn bytes_round_trip_every_dtype() {
        for dtype in [
            DType::F32,
            DType::F64,
            DType::I64,
            DType::I32,
            DType::I8,
            DType::U8,
            DType::Bool,
        ] {
            let shape = vec![3, 2];
            let bytes: Vec<u8> = (0..6 * dtype.size())
                .map(|i| {
                    if dtype == DType::Bool {
                        (i % 2) as u8
                    } else {
                        (i * 7 % 251) as u8
                    }
                })
                .collect();
            let t = Tensor::from_le_bytes(dtype, shape.clone(), &bytes).unwrap();
            assert_eq!(t.shape(), &shape[..]);
            assert_eq!(t.to_le_bytes(), bytes, "{dtype}");
        }
    }
}
