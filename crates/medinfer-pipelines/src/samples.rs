//! Model inputs made from a pipeline's own input files, preprocessed exactly as the pipeline
//! does before inference: the calibration and validation data for quantizing a pipeline's model
//! on real images (`medinfer quantize --pipeline cxr|ct|cardiac`), so that the INT8 ranges are
//! measured on what the model will really see.
//!
//! - `cxr`: every radiograph (PNG, JPEG, DICOM) under the folder is one sample, 1 x 224 x 224.
//! - `ct`: every slice of every DICOM series under the folder is one sample, windowed with the
//!   pipeline's default window, 1 x 128 x 128.
//! - `cardiac`: every cine exam under the folder (each 4D NIfTI file, and each folder holding a
//!   DICOM cine series) gives one patch per slice and phase, located and z-scored as
//!   `medinfer run cardiac` does, 1 x 96 x 96.
//!
//! A file that cannot be read or preprocessed is skipped and reported; no sample at all is an
//! error. With `pick = Some((n, seed))` a seeded shuffled subset of `n` samples is chosen before
//! anything is decoded (for `cxr` and `ct`), so a 160,000-image archive costs `n` decodes.

pub use crate::Pipeline;
use crate::{cardiac, ct, cxr, PipelineError};
use medinfer_io::Format;
use std::path::{Path, PathBuf};

/// Samples and the inputs that were skipped.
#[derive(Debug, Default)]
pub struct Samples {
    /// One model input per sample, `sample_shape` values each, in a stable order (file order,
    /// then slice / phase order) or the picked subset's order.
    pub inputs: Vec<Vec<f32>>,
    /// Inputs that could not be used, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// A seeded shuffle of `0..len` cut to `n` (the same shuffle as the NPY route of quantize).
pub fn shuffled_indices(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..len).collect();
    let mut rng = medinfer_core::SeededRng::new(seed);
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v.truncate(n);
    v
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>, PipelineError> {
    Ok(medinfer_io::series::list_files(dir)?
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect())
}

/// The samples of `pipeline` from the files under `dir`; see the module documentation.
pub fn samples(
    pipeline: Pipeline,
    dir: &Path,
    pick: Option<(usize, u64)>,
) -> Result<Samples, PipelineError> {
    let name = dir.display().to_string();
    let mut out = Samples::default();
    match pipeline {
        Pipeline::Cxr => {
            let files: Vec<PathBuf> = walk(dir)?
                .into_iter()
                .filter(|p| {
                    matches!(
                        medinfer_io::detect(p),
                        Ok(Some(Format::Png | Format::Jpeg | Format::Dicom))
                    )
                })
                .collect();
            let chosen: Vec<PathBuf> = match pick {
                Some((n, seed)) => shuffled_indices(files.len(), n, seed)
                    .into_iter()
                    .map(|i| files[i].clone())
                    .collect(),
                None => files,
            };
            let done = medinfer_io::series::parallel_map(&chosen, |f| cxr::preprocess_file(f));
            for (f, r) in chosen.iter().zip(done) {
                match r {
                    Ok(x) => out.inputs.push(x),
                    Err(e) => out.skipped.push((f.display().to_string(), e.to_string())),
                }
            }
        }
        Pipeline::Ct => {
            let (plans, rejected) = ct::plan(&walk(dir)?);
            for (f, e) in rejected {
                out.skipped.push((f.display().to_string(), e));
            }
            let mut items = Vec::new();
            for (p, plan) in plans.iter().enumerate() {
                match plan {
                    Ok(plan) => items.extend((0..plan.dims[2]).map(|z| (p, z))),
                    Err(e) => out.skipped.push((name.clone(), e.clone())),
                }
            }
            let chosen: Vec<(usize, usize)> = match pick {
                Some((n, seed)) => shuffled_indices(items.len(), n, seed)
                    .into_iter()
                    .map(|i| items[i])
                    .collect(),
                None => items,
            };
            let done = ct::slice_inputs(&plans, &chosen, ct::CtPrep::default());
            for (&(p, z), r) in chosen.iter().zip(done) {
                match r {
                    Ok(x) => out.inputs.push(x),
                    Err(e) => {
                        let input = plans[p]
                            .as_ref()
                            .map(|s| s.input.clone())
                            .unwrap_or_default();
                        out.skipped.push((format!("{input} slice {z}"), e))
                    }
                }
            }
        }
        Pipeline::Cardiac => {
            // Exams: each NIfTI file, and each folder that holds DICOM files.
            let mut exams = std::collections::BTreeSet::new();
            for p in walk(dir)? {
                match medinfer_io::detect(&p) {
                    Ok(Some(Format::Nifti)) => {
                        exams.insert(p);
                    }
                    Ok(Some(Format::Dicom)) => {
                        exams.insert(p.parent().unwrap_or(dir).to_path_buf());
                    }
                    _ => {}
                }
            }
            for exam in exams {
                let label = exam.display().to_string();
                let vol = match medinfer_io::read_volume(&exam) {
                    Ok(v) => v,
                    Err(e) => {
                        out.skipped.push((label, e.to_string()));
                        continue;
                    }
                };
                let spec = cardiac::CardiacSpec::shipped();
                match cardiac::exam_patches(&vol, &label, &spec) {
                    Ok((_, _, _, patches)) => out
                        .inputs
                        .extend(patches.chunks(spec.patch_len()).map(|c| c.to_vec())),
                    Err(e) => out.skipped.push((label, e.to_string())),
                }
            }
            if let Some((n, seed)) = pick {
                let mut slots: Vec<Option<Vec<f32>>> = std::mem::take(&mut out.inputs)
                    .into_iter()
                    .map(Some)
                    .collect();
                out.inputs = shuffled_indices(slots.len(), n, seed)
                    .into_iter()
                    .filter_map(|i| slots[i].take())
                    .collect();
            }
        }
    }
    if out.inputs.is_empty() {
        return Err(PipelineError::input(
            name,
            match out.skipped.first() {
                Some((f, e)) => format!(
                    "no usable {} input ({} skipped; first: {f}: {e})",
                    pipeline.name(),
                    out.skipped.len()
                ),
                None => format!("no {} input found", pipeline.name()),
            },
        ));
    }
    Ok(out)
}
