//! Batch inference over many files with every core busy: a bounded producer / consumer
//! pipeline.
//!
//! ```text
//! file indices -> [decode + preprocess workers, one per core] -> bounded queue
//!              -> [inference workers, one per engine stream, `batch` samples per request]
//!              -> results, re-ordered -> `on_result` in input order
//! ```
//!
//! The queue holds at most `2 x batch x streams` samples, so decoding never runs far ahead of
//! inference (back-pressure: memory stays bounded on a 160,000-image archive) and inference
//! never waits while a decoder has work. A file that fails to decode or preprocess is reported
//! through `on_result` with its error and the batch goes on.

use crate::PipelineError;
use medinfer_core::Tensor;
use medinfer_engine::Session;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

/// One file's outcome: the model's output row for it, or what went wrong.
pub type Outcome = Result<Vec<f32>, String>;

/// Runs `preprocess` on every item and the model on the results; calls `on_result(index,
/// outcome)` in input order as results become available. `preprocess` must return exactly
/// one sample (the model input without the batch axis). Returns the first engine failure (a
/// broken model stops the batch; a broken file does not). `stop` is polled between items.
pub fn run_ordered<T: Sync>(
    items: &[T],
    session: &Session,
    decoders: usize,
    preprocess: impl Fn(&T) -> Result<Vec<f32>, String> + Sync,
    mut on_result: impl FnMut(usize, Outcome),
) -> Result<(), PipelineError> {
    let spec = session
        .inputs()
        .first()
        .ok_or_else(|| PipelineError::Model {
            model: "session".into(),
            reason: "the model has no input".into(),
        })?;
    let batch = spec.shape.first().copied().unwrap_or(1).max(1);
    let sample: usize = spec.shape[1..].iter().product();
    let streams = session.info().streams.max(1);
    let (tx, rx) = mpsc::sync_channel::<(usize, Outcome)>(2 * batch * streams);
    let rx = Mutex::new(rx);
    let (out_tx, out_rx) = mpsc::channel::<(usize, Outcome)>();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let engine_error: Mutex<Option<PipelineError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..decoders.max(1) {
            let tx = tx.clone();
            let (next, failed, preprocess) = (&next, &failed, &preprocess);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let r = preprocess(&items[i]).and_then(|v| {
                    if v.len() == sample {
                        Ok(v)
                    } else {
                        Err(format!(
                            "preprocessing gave {} values, the model takes {sample}",
                            v.len()
                        ))
                    }
                });
                if tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for _ in 0..streams {
            let out_tx = out_tx.clone();
            let (rx, failed, engine_error) = (&rx, &failed, &engine_error);
            s.spawn(move || loop {
                // Fill one request: blocking for each sample until the batch is full or the
                // producers are done.
                let mut ok: Vec<(usize, Vec<f32>)> = Vec::with_capacity(batch);
                let mut done = false;
                {
                    let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                    while ok.len() < batch {
                        match rx.recv() {
                            Ok((i, Ok(v))) => ok.push((i, v)),
                            Ok((i, Err(e))) => {
                                let _ = out_tx.send((i, Err(e)));
                            }
                            Err(_) => {
                                done = true;
                                break;
                            }
                        }
                    }
                }
                if !ok.is_empty() && !failed.load(Ordering::Relaxed) {
                    let mut x = vec![0f32; batch * sample];
                    for (k, (_, v)) in ok.iter().enumerate() {
                        x[k * sample..(k + 1) * sample].copy_from_slice(v);
                    }
                    let mut shape = spec.shape.clone();
                    shape[0] = batch;
                    let res = Tensor::from_f32(shape, x)
                        .map_err(|e| PipelineError::Input(e.to_string()))
                        .and_then(|t| session.run(&[t]).map_err(PipelineError::from))
                        .and_then(|o| {
                            let t = o.into_iter().next().ok_or_else(|| {
                                PipelineError::Input("the model gave no output".into())
                            })?;
                            t.as_f32()
                                .map(|v| v.to_vec())
                                .map_err(|e| PipelineError::Input(e.to_string()))
                        });
                    match res {
                        Ok(y) if y.len() % batch == 0 => {
                            let per = y.len() / batch;
                            for (k, (i, _)) in ok.iter().enumerate() {
                                let _ = out_tx.send((*i, Ok(y[k * per..(k + 1) * per].to_vec())));
                            }
                        }
                        Ok(y) => {
                            failed.store(true, Ordering::Relaxed);
                            *engine_error.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(PipelineError::Input(format!(
                                    "the model gave {} values for a batch of {batch}",
                                    y.len()
                                )));
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            *engine_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        }
                    }
                }
                if done {
                    break;
                }
            });
        }
        drop(out_tx);
        // Re-order: deliver index k only after 0..k.
        let mut pending = BTreeMap::new();
        let mut want = 0usize;
        for (i, r) in out_rx {
            pending.insert(i, r);
            while let Some(r) = pending.remove(&want) {
                on_result(want, r);
                want += 1;
            }
        }
    });
    match engine_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
