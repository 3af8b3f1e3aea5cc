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
use std::sync::{mpsc, Arc, Mutex};

/// One file's outcome: the model's output row for it, or what went wrong.
pub type Outcome = Result<Vec<f32>, String>;

/// What the batch executor needs of a model. [`Session`] is the real one; tests put in models
/// that fail in ways a real engine rarely does (panics, wrong output sizes).
pub trait BatchModel: Sync {
    /// The shape of the (first) input, batch axis first.
    fn input_shape(&self) -> &[usize];
    /// Requests the model takes at once.
    fn streams(&self) -> usize;
    /// Runs one batch and returns the (first) output as f32 values.
    fn run_batch(&self, x: Tensor) -> Result<Vec<f32>, PipelineError>;
}

impl BatchModel for Session {
    fn input_shape(&self) -> &[usize] {
        self.inputs().first().map_or(&[], |s| &s.shape[..])
    }

    fn streams(&self) -> usize {
        self.info().streams
    }

    fn run_batch(&self, x: Tensor) -> Result<Vec<f32>, PipelineError> {
        let t = self
            .run(&[x])?
            .into_iter()
            .next()
            .ok_or_else(|| PipelineError::Batch("the model gave no output".into()))?;
        let dtype = t.dtype();
        match t.into_parts().1 {
            medinfer_core::TensorData::F32(v) => Ok(v),
            _ => Err(PipelineError::Batch(format!(
                "the model's first output is {dtype}, f32 expected"
            ))),
        }
    }
}

/// Runs `preprocess` on every item and the model on the results; calls `on_result(index,
/// outcome)` in input order as results become available. `preprocess` must return exactly
/// one sample (the model input without the batch axis): an owned `Vec<f32>`, or a slice of
/// samples prepared beforehand (no copy until the batch is assembled). Returns the first engine failure (a
/// broken model stops the batch; a broken file does not).
///
/// No exit path can hang: a panic in `preprocess` becomes that item's error, a panic in an
/// inference worker stops the batch with an error, and the queue's receiving end is dropped
/// when the last inference worker ends however it ends, so decoders blocked on a full queue
/// wake up and stop.
pub fn run_ordered<T: Sync, M: BatchModel + ?Sized, S: AsRef<[f32]> + Send>(
    items: &[T],
    model: &M,
    decoders: usize,
    preprocess: impl Fn(&T) -> Result<S, String> + Sync,
    mut on_result: impl FnMut(usize, Outcome),
) -> Result<(), PipelineError> {
    let shape = model.input_shape().to_vec();
    if shape.len() < 2 {
        return Err(PipelineError::Model {
            model: "session".into(),
            reason: format!(
                "the input has shape {shape:?}; batch inference needs (batch, ...) with at least one axis after the batch"
            ),
        });
    }
    let batch = shape[0].max(1);
    let sample: usize = shape[1..].iter().product();
    let streams = model.streams().max(1);
    let (tx, rx) = mpsc::sync_channel::<(usize, Result<S, String>)>(2 * batch * streams);
    // Each inference worker holds a handle on the receiving end; when the last one ends (a
    // panic included) the receiver is dropped and blocked senders get an error.
    let rx = Arc::new(Mutex::new(rx));
    let (out_tx, out_rx) = mpsc::channel::<(usize, Outcome)>();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let engine_error: Mutex<Option<PipelineError>> = Mutex::new(None);
    let fail = |e: PipelineError| {
        failed.store(true, Ordering::Relaxed);
        let mut slot = engine_error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..decoders.max(1) {
            let tx = tx.clone();
            let (next, failed, preprocess) = (&next, &failed, &preprocess);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let r = medinfer_core::panic::catch(|| preprocess(&items[i]))
                    .unwrap_or_else(|p| Err(format!("preprocessing panicked: {p}")))
                    .and_then(|v| {
                        let n = v.as_ref().len();
                        if n == sample {
                            Ok(v)
                        } else {
                            Err(format!(
                                "preprocessing gave {n} values, the model takes {sample}"
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
            let rx = Arc::clone(&rx);
            let (failed, fail, shape) = (&failed, &fail, &shape);
            s.spawn(move || {
                let worker = || loop {
                    // Fill one request: blocking for each sample until the batch is full or
                    // the producers are done.
                    let mut ok: Vec<(usize, S)> = Vec::with_capacity(batch);
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
                            x[k * sample..(k + 1) * sample].copy_from_slice(v.as_ref());
                        }
                        let res = Tensor::from_f32(shape.clone(), x)
                            .map_err(|e| PipelineError::Batch(e.to_string()))
                            .and_then(|t| model.run_batch(t));
                        match res {
                            Ok(y) if !y.is_empty() && y.len() % batch == 0 => {
                                let per = y.len() / batch;
                                for (k, (i, _)) in ok.iter().enumerate() {
                                    let _ =
                                        out_tx.send((*i, Ok(y[k * per..(k + 1) * per].to_vec())));
                                }
                            }
                            Ok(y) => fail(PipelineError::Batch(format!(
                                "the model gave {} values for a batch of {batch}",
                                y.len()
                            ))),
                            Err(e) => fail(e),
                        }
                    }
                    if done {
                        break;
                    }
                };
                if let Err(p) = medinfer_core::panic::catch(worker) {
                    fail(PipelineError::Batch(format!(
                        "an inference worker panicked: {p}"
                    )));
                    // Keep draining so no decoder stays blocked on the full queue; the items
                    // are not reported (the batch has failed).
                    let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                    while rx.recv().is_ok() {}
                }
            });
        }
        drop(rx);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A model that doubles its input, or panics on every call with `panics`.
    struct Fake {
        shape: Vec<usize>,
        streams: usize,
        panics: bool,
    }

    impl BatchModel for Fake {
        fn input_shape(&self) -> &[usize] {
            &self.shape
        }
        fn streams(&self) -> usize {
            self.streams
        }
        fn run_batch(&self, x: Tensor) -> Result<Vec<f32>, PipelineError> {
            if self.panics {
                panic!("simulated engine panic");
            }
            Ok(x.as_f32().unwrap().iter().map(|v| v * 2.0).collect())
        }
    }

    /// Runs `f` on a thread and fails the test if it has not finished within 30 s.
    fn within_30s<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the batch executor hung")
    }

    /// Regression (hardening review): inference workers that panicked while the bounded queue
    /// was full left the decoders blocked on `send` for ever.
    #[test]
    fn inference_worker_panics_with_a_full_queue_do_not_hang_the_batch() {
        let r = within_30s(|| {
            let items: Vec<usize> = (0..500).collect();
            let model = Fake {
                shape: vec![2, 3],
                streams: 2,
                panics: true,
            };
            let mut seen = 0;
            let t = Instant::now();
            let r = run_ordered(
                &items,
                &model,
                4,
                |&i| Ok(vec![i as f32; 3]),
                |_, _| seen += 1,
            );
            (r.map_err(|e| e.to_string()), seen, t.elapsed())
        });
        let e = r.0.unwrap_err();
        assert!(e.contains("inference worker panicked"), "{e}");
        assert!(r.1 < 500, "a failed batch reported {} results", r.1);
    }

    /// Regression (hardening review): a scalar model input made `shape[1..]` panic.
    #[test]
    fn a_scalar_input_is_an_error_not_a_panic() {
        let model = Fake {
            shape: vec![],
            streams: 1,
            panics: false,
        };
        let e = run_ordered(&[1, 2], &model, 1, |_| Ok(Vec::<f32>::new()), |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("needs (batch, ...)"), "{e}");
    }

    /// A panic in one item's preprocessing is that item's error; the batch goes on and every
    /// index is reported once, in order.
    #[test]
    fn a_preprocessing_panic_is_reported_for_its_item_only() {
        let out = within_30s(|| {
            let items: Vec<usize> = (0..40).collect();
            let model = Fake {
                shape: vec![4, 2],
                streams: 2,
                panics: false,
            };
            let mut out = Vec::new();
            run_ordered(
                &items,
                &model,
                3,
                |&i| {
                    if i % 7 == 3 {
                        panic!("bad file {i}");
                    }
                    Ok(vec![i as f32, 1.0])
                },
                |i, r| out.push((i, r)),
            )
            .unwrap();
            out
        });
        assert_eq!(out.len(), 40);
        for (k, (i, r)) in out.iter().enumerate() {
            assert_eq!(k, *i);
            if i % 7 == 3 {
                assert!(r.as_ref().unwrap_err().contains(&format!("bad file {i}")));
            } else {
                assert_eq!(r.as_ref().unwrap(), &vec![2.0 * *i as f32, 2.0]);
            }
        }
    }
}
