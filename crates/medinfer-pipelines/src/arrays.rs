//! Sample sets stored as NumPy arrays, for any model, one input or several: the calibration and
//! validation data of `medinfer quantize` (and of `tune`) when they are not made by a
//! pipeline.
//!
//! A sample is one tensor per model input, each shaped like the input with a batch axis of 1.
//! Where they come from, under the path given:
//! - `.npy` files (one-input models only): one sample each, or several stacked along a first
//!   axis;
//! - `.npz` files (`np.savez` / `np.savez_compressed`), one array per input, keyed by the
//!   input's name: one sample per file, or several stacked along a first axis (every array the
//!   same count);
//! - folders holding `INPUT_NAME.npy` for every input, one sample or a stack each (a
//!   sub-folder of the path given, or the path itself).
//!
//! An input's name is looked up as written and in its file-name-safe form
//! ([`medinfer_io::npy::safe_name`]: `input:0` is `input_0.npy`). Order is by file name (a
//! labels file for `--metric auc` lists samples in that order). Every sample is checked
//! against the model: element type, rank, fixed dimensions; errors name the file and the input.

use crate::PipelineError;
use medinfer_core::{DType, Tensor};
use medinfer_onnx::{Dim, ModelInfo};
use std::path::{Path, PathBuf};

/// What one model input takes per sample.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSlot {
    /// The input's name in the model.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its shape without the batch axis; `None` = a dynamic dimension (any size).
    pub per_sample: Vec<Option<usize>>,
}

impl InputSlot {
    /// The slots of a model's data inputs, in the model's order. An input whose element type
    /// medinfer cannot hold (float16, strings) is an error naming it.
    pub fn of_model(info: &ModelInfo, model: &str) -> Result<Vec<InputSlot>, PipelineError> {
        info.inputs
            .iter()
            .map(|i| {
                let dtype = DType::parse(&i.dtype).ok_or_else(|| PipelineError::Model {
                    model: model.to_string(),
                    reason: format!(
                        "input '{}' is {}: samples can be float32/64, int64/32/8, uint8 or bool",
                        i.name, i.dtype
                    ),
                })?;
                Ok(InputSlot {
                    name: i.name.clone(),
                    dtype,
                    per_sample: i
                        .shape
                        .iter()
                        .skip(1)
                        .map(|d| match d {
                            Dim::Fixed(n) => Some(*n),
                            Dim::Dynamic(_) => None,
                        })
                        .collect(),
                })
            })
            .collect()
    }

    fn fits(&self, s: &[usize]) -> bool {
        s.len() == self.per_sample.len()
            && s.iter()
                .zip(&self.per_sample)
                .all(|(a, b)| b.is_none_or(|b| b == *a))
    }

    /// The per-sample shape as people write it (`3 x ? x ?`).
    pub fn shown(&self) -> String {
        if self.per_sample.is_empty() {
            return "a scalar".into();
        }
        self.per_sample
            .iter()
            .map(|d| d.map_or("?".to_string(), |n| n.to_string()))
            .collect::<Vec<_>>()
            .join(" x ")
    }

    /// `t` cut into samples of this input: `t` is one sample (the per-sample rank) or a stack
    /// of them (one more axis first).
    fn split(&self, t: Tensor, origin: &str) -> Result<Vec<Tensor>, PipelineError> {
        let bad = |reason: String| PipelineError::Input {
            input: origin.to_string(),
            reason,
        };
        if t.dtype() != self.dtype {
            let hint = match (t.dtype(), self.dtype) {
                (DType::F64, DType::F32) => " (save with .astype(np.float32))",
                (DType::I32, DType::I64) => " (save with .astype(np.int64))",
                _ => "",
            };
            return Err(bad(format!(
                "input '{}' takes {}, the array is {}{hint}",
                self.name,
                self.dtype,
                t.dtype()
            )));
        }
        let s = t.shape().to_vec();
        if self.fits(&s) {
            let mut shape = vec![1];
            shape.extend_from_slice(&s);
            let (_, data) = t.into_parts();
            return Tensor::new(shape, data)
                .map(|t| vec![t])
                .map_err(|e| bad(e.to_string()));
        }
        if !s.is_empty() && self.fits(&s[1..]) {
            return Ok(t.unstack());
        }
        Err(bad(format!(
            "shape {s:?} does not fit input '{}' ({} per sample, or n x that; ? = any size)",
            self.name,
            self.shown()
        )))
    }
}

/// Where an input's array lives among `names` (file names or NPZ keys, `.npy` stripped): the
/// name as written, else its file-name-safe form.
fn find<'a>(slot: &InputSlot, names: &'a [String]) -> Option<&'a String> {
    let safe = medinfer_io::npy::safe_name(&slot.name);
    names
        .iter()
        .find(|n| **n == slot.name)
        .or_else(|| names.iter().find(|n| **n == safe))
}

/// Samples from one group of arrays (an NPZ's or a folder's), keyed by input name.
fn group(
    arrays: Vec<(String, Tensor)>,
    inputs: &[InputSlot],
    origin: &str,
) -> Result<Vec<Vec<Tensor>>, PipelineError> {
    let names: Vec<String> = arrays.iter().map(|(k, _)| k.clone()).collect();
    let mut slots: Vec<Option<Tensor>> = arrays.into_iter().map(|(_, t)| Some(t)).collect();
    let mut per_input: Vec<Vec<Tensor>> = Vec::with_capacity(inputs.len());
    for slot in inputs {
        let k = find(slot, &names)
            .and_then(|n| names.iter().position(|m| m == n))
            .ok_or_else(|| PipelineError::Input {
                input: origin.to_string(),
                reason: format!(
                    "no array for input '{}' (has: {}; inputs: {})",
                    slot.name,
                    if names.is_empty() {
                        "nothing".to_string()
                    } else {
                        names.join(", ")
                    },
                    inputs
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let t = slots[k].take().expect("each name is found once");
        per_input.push(slot.split(t, origin)?);
    }
    let count = per_input[0].len();
    if let Some((i, v)) = per_input.iter().enumerate().find(|(_, v)| v.len() != count) {
        return Err(PipelineError::Input {
            input: origin.to_string(),
            reason: format!(
                "input '{}' has {count} sample(s), input '{}' has {}",
                inputs[0].name,
                inputs[i].name,
                v.len()
            ),
        });
    }
    // Transpose: per input -> per sample.
    let mut iters: Vec<_> = per_input.into_iter().map(|v| v.into_iter()).collect();
    Ok((0..count)
        .map(|_| {
            iters
                .iter_mut()
                .map(|it| it.next().expect("counts checked"))
                .collect()
        })
        .collect())
}

fn extension_is(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|x| x.eq_ignore_ascii_case(ext))
}

/// The `.npy` files of a folder, keyed by stem.
fn npy_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, PipelineError> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_file() && extension_is(p, "npy"))
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_string();
            Some((stem, p))
        })
        .collect())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, PipelineError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| PipelineError::Input {
            input: dir.display().to_string(),
            reason: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Does `dir` hold an array for every input (a sample folder)? For some but not all inputs it
/// is an error naming what is missing.
fn sample_folder(dir: &Path, inputs: &[InputSlot]) -> Result<bool, PipelineError> {
    let files = npy_files(dir)?;
    let names: Vec<String> = files.iter().map(|(k, _)| k.clone()).collect();
    let found: Vec<&InputSlot> = inputs
        .iter()
        .filter(|s| find(s, &names).is_some())
        .collect();
    if found.is_empty() {
        return Ok(false);
    }
    if found.len() < inputs.len() {
        let missing: Vec<&str> = inputs
            .iter()
            .filter(|s| find(s, &names).is_none())
            .map(|s| s.name.as_str())
            .collect();
        return Err(PipelineError::Input {
            input: dir.display().to_string(),
            reason: format!(
                "a sample folder needs INPUT_NAME.npy for every input; missing: {}",
                missing.join(", ")
            ),
        });
    }
    Ok(true)
}

fn from_folder(dir: &Path, inputs: &[InputSlot]) -> Result<Vec<Vec<Tensor>>, PipelineError> {
    let mut arrays = Vec::new();
    for (stem, p) in npy_files(dir)? {
        let relevant = inputs
            .iter()
            .any(|s| find(s, std::slice::from_ref(&stem)).is_some());
        if relevant {
            arrays.push((stem, medinfer_io::npy::read(&p)?));
        }
    }
    group(arrays, inputs, &dir.display().to_string())
}

fn from_npz(file: &Path, inputs: &[InputSlot]) -> Result<Vec<Vec<Tensor>>, PipelineError> {
    let arrays = medinfer_io::npy::read_npz(file)?;
    group(arrays, inputs, &file.display().to_string())
}

fn from_npy(file: &Path, inputs: &[InputSlot]) -> Result<Vec<Vec<Tensor>>, PipelineError> {
    if inputs.len() != 1 {
        return Err(PipelineError::Input {
            input: file.display().to_string(),
            reason: format!(
                "the model has {} inputs ({}): give each sample as an .npz keyed by input name or as a folder of INPUT_NAME.npy files",
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let t = medinfer_io::npy::read(file)?;
    Ok(inputs[0]
        .split(t, &file.display().to_string())?
        .into_iter()
        .map(|t| vec![t])
        .collect())
}

/// Ground-truth labels for `--metric auc`: an NPY of shape (samples, labels), any numeric
/// element type, one row per sample in file-name order; `samples` rows are required.
pub fn read_labels(path: &Path, samples: usize) -> Result<Vec<Vec<f32>>, PipelineError> {
    let t = medinfer_io::npy::read(path)?;
    let s = t.shape().to_vec();
    if s.len() != 2 || s[0] != samples {
        return Err(PipelineError::Input {
            input: path.display().to_string(),
            reason: format!(
                "labels must be (samples, labels) with one row per validation sample \
                 ({samples}), got {s:?}"
            ),
        });
    }
    let v: Vec<f32> = t.to_f64_vec().into_iter().map(|x| x as f32).collect();
    Ok(v.chunks(s[1].max(1)).map(|c| c.to_vec()).collect())
}

/// Every sample under `path` for a model with `inputs`; see the module documentation.
pub fn load(path: &Path, inputs: &[InputSlot]) -> Result<Vec<Vec<Tensor>>, PipelineError> {
    let err = |reason: String| PipelineError::Input {
        input: path.display().to_string(),
        reason,
    };
    if inputs.is_empty() {
        return Err(err("the model has no data input".into()));
    }
    let mut out = Vec::new();
    if path.is_file() {
        if extension_is(path, "npz") {
            out = from_npz(path, inputs)?;
        } else {
            out = from_npy(path, inputs)?;
        }
    } else if path.is_dir() {
        if inputs.len() > 1 && sample_folder(path, inputs)? {
            return from_folder(path, inputs);
        }
        for p in sorted_entries(path)? {
            if p.is_dir() {
                if sample_folder(&p, inputs)? {
                    out.extend(from_folder(&p, inputs)?);
                }
            } else if extension_is(&p, "npz") {
                out.extend(from_npz(&p, inputs)?);
            } else if extension_is(&p, "npy") {
                out.extend(from_npy(&p, inputs)?);
            }
        }
    } else {
        return Err(err("no such file or folder".into()));
    }
    if out.is_empty() {
        return Err(err(
            "no samples (.npy files, .npz files keyed by input name, or folders of INPUT_NAME.npy)"
                .into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> Vec<InputSlot> {
        vec![
            InputSlot {
                name: "image:0".into(),
                dtype: DType::F32,
                per_sample: vec![Some(1), None, None],
            },
            InputSlot {
                name: "meta".into(),
                dtype: DType::F32,
                per_sample: vec![Some(3)],
            },
        ]
    }

    fn f32s(shape: Vec<usize>, seed: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32(shape, (0..n).map(|i| seed + i as f32).collect()).unwrap()
    }

    #[test]
    fn npz_folders_and_stacks_give_the_same_samples() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Two samples stacked in one NPZ (the safe form of "image:0" as key) ...
        let img = f32s(vec![2, 1, 4, 5], 0.0);
        let meta = f32s(vec![2, 3], 100.0);
        std::fs::write(
            root.join("a.npz"),
            medinfer_io::npy::encode_npz(&[("image_0", &img), ("meta", &meta)]).unwrap(),
        )
        .unwrap();
        // ... and a third as a folder of one-sample arrays, under its exact name.
        let s = root.join("b");
        std::fs::create_dir(&s).unwrap();
        medinfer_io::npy::write(&s.join("image_0.npy"), &f32s(vec![1, 6, 2], 7.0)).unwrap();
        medinfer_io::npy::write(&s.join("meta.npy"), &f32s(vec![3], 9.0)).unwrap();
        let got = load(root, &slots()).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1][0].shape(), &[1, 1, 4, 5]);
        assert_eq!(got[1][0].as_f32().unwrap()[0], 20.0);
        assert_eq!(got[1][1].as_f32().unwrap(), &[103.0, 104.0, 105.0]);
        assert_eq!(got[2][0].shape(), &[1, 1, 6, 2]);
        assert_eq!(got[2][1].shape(), &[1, 3]);
        // The sample folder itself as the path.
        assert_eq!(load(&s, &slots()).unwrap().len(), 1);
    }

    #[test]
    fn what_does_not_fit_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let e = |p: &Path| load(p, &slots()).unwrap_err().to_string();
        // A plain .npy for a two-input model.
        medinfer_io::npy::write(&root.join("x.npy"), &f32s(vec![1, 4, 4], 0.0)).unwrap();
        let m = e(root);
        assert!(m.contains("x.npy") && m.contains("2 inputs"), "{m}");
        std::fs::remove_file(root.join("x.npy")).unwrap();
        // An NPZ missing one input, with another count, with float64.
        let img = f32s(vec![2, 1, 4, 4], 0.0);
        let bad = root.join("m.npz");
        std::fs::write(
            &bad,
            medinfer_io::npy::encode_npz(&[("image:0", &img)]).unwrap(),
        )
        .unwrap();
        let m = e(&bad);
        assert!(
            m.contains("m.npz") && m.contains("no array for input 'meta'"),
            "{m}"
        );
        std::fs::write(
            &bad,
            medinfer_io::npy::encode_npz(&[("image:0", &img), ("meta", &f32s(vec![3, 3], 0.0))])
                .unwrap(),
        )
        .unwrap();
        let m = e(&bad);
        assert!(m.contains("has 2 sample(s)") && m.contains("has 3"), "{m}");
        let f64s =
            Tensor::new(vec![3], medinfer_core::TensorData::F64(vec![1.0, 2.0, 3.0])).unwrap();
        std::fs::write(
            &bad,
            medinfer_io::npy::encode_npz(&[
                ("image:0", &f32s(vec![1, 4, 4], 0.0)),
                ("meta", &f64s),
            ])
            .unwrap(),
        )
        .unwrap();
        let m = e(&bad);
        assert!(m.contains("astype(np.float32)"), "{m}");
        // Wrong fixed dimension.
        std::fs::write(
            &bad,
            medinfer_io::npy::encode_npz(&[
                ("image:0", &f32s(vec![2, 4, 4], 0.0)),
                ("meta", &f32s(vec![3], 0.0)),
            ])
            .unwrap(),
        )
        .unwrap();
        let m = e(&bad);
        assert!(
            m.contains("does not fit input 'image:0'") && m.contains("1 x ? x ?"),
            "{m}"
        );
        std::fs::remove_file(&bad).unwrap();
        // A folder with one input's file only.
        let s = root.join("s");
        std::fs::create_dir(&s).unwrap();
        medinfer_io::npy::write(&s.join("meta.npy"), &f32s(vec![3], 0.0)).unwrap();
        let m = e(root);
        assert!(m.contains("missing: image:0"), "{m}");
        // Nothing at all.
        std::fs::remove_dir_all(&s).unwrap();
        assert!(e(root).contains("no samples"));
        // A hostile NPZ is an error, not a panic.
        std::fs::write(&bad, b"PK\x03\x04 not really").unwrap();
        assert!(e(&bad).contains("m.npz"));
    }
}
