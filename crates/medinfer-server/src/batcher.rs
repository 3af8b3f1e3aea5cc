//! Dynamic batching (Triton's idea): requests for one model wait in a bounded queue; one worker
//! thread takes the oldest, gathers compatible requests (same per-item shapes) up to the
//! model's max batch or until the oldest has waited the max queue delay, runs them as one
//! batch and hands each request its rows. A full queue refuses at once (the caller answers 429),
//! so memory stays bounded however fast clients send.
//!
//! The worker is a plain thread, not a tokio task: engine calls block for milliseconds to
//! seconds and must not stall the HTTP runtime.

use medinfer_core::{DType, Tensor};
use medinfer_engine::{EngineError, Session};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How a model's requests are batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most batch items run together (1 = no batching).
    pub max_batch: usize,
    /// Longest the oldest request waits for others to join it.
    pub max_delay: Duration,
    /// Requests that may wait at once; more are refused.
    pub max_queue: usize,
    /// Worker threads, each with its own sessions, taking batches from the one queue (Triton's
    /// instance count; 1 = one batch in the engine at a time).
    pub instances: usize,
}

/// One inference request: inputs in the model's input order, each with the batch axis first.
pub struct Job {
    /// Inputs, batch axis first.
    pub inputs: Vec<Tensor>,
    /// Where the outputs (this request's rows) go.
    pub reply: oneshot::Sender<Result<Vec<Tensor>, EngineError>>,
    /// When it was queued.
    pub queued: Instant,
}

impl Job {
    fn items(&self) -> usize {
        self.inputs
            .first()
            .and_then(|t| t.shape().first().copied())
            .unwrap_or(1)
    }
    /// Requests can share a batch when every input has the same type and per-item shape.
    fn key(&self) -> Vec<(DType, Vec<usize>)> {
        self.inputs
            .iter()
            .map(|t| (t.dtype(), t.shape().get(1..).unwrap_or(&[]).to_vec()))
            .collect()
    }
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The queue is full: try again later (HTTP 429).
    QueueFull,
    /// The model is being unloaded.
    Stopped,
}

/// Counters of one model, for the statistics endpoint.
#[derive(Default, Debug)]
pub struct Stats {
    /// Requests answered with outputs.
    pub success: AtomicU64,
    /// Requests whose inference failed.
    pub failed: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Engine runs (batches).
    pub batches: AtomicU64,
    /// Batch items run.
    pub items: AtomicU64,
    /// Largest batch run, in items.
    pub largest_batch: AtomicU64,
    /// Time requests spent queued, summed (ns).
    pub queue_ns: AtomicU64,
    /// Time spent in the engine, summed (ns).
    pub compute_ns: AtomicU64,
    /// Requests waiting now.
    pub queued_now: AtomicU64,
    /// Batches run, by size: at most 1, 2, 4, 8, 16, 32, 64 items, and more.
    pub batch_sizes: [AtomicU64; 8],
}

/// Upper bounds of [`Stats::batch_sizes`]' buckets (the last one is unbounded).
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Loads a session for the given full input shapes (batch included).
pub type Loader = Arc<dyn Fn(&[Vec<usize>]) -> Result<Session, EngineError> + Send + Sync>;

/// The handle on one model's queue and worker.
pub struct Batcher {
    tx: Option<SyncSender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Settings it runs with.
    pub settings: BatchSettings,
}

/// Sessions kept per model (one per distinct batch and input shape met).
const SESSIONS_KEPT: usize = 8;

impl Batcher {
    /// Starts the worker. `loader` builds a session for a given set of input shapes; sessions
    /// are cached per shape set.
    pub fn start(name: &str, loader: Loader, settings: BatchSettings) -> Batcher {
        let (tx, rx) = sync_channel::<Job>(settings.max_queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(Stats::default());
        let workers = (0..settings.instances.max(1))
            .map(|i| {
                let (rx, loader, st) = (rx.clone(), loader.clone(), stats.clone());
                std::thread::Builder::new()
                    .name(format!("batcher-{name}-{i}"))
                    .spawn(move || work(rx, loader, settings, st))
                    .expect("spawning a batcher thread")
            })
            .collect();
        Batcher {
            tx: Some(tx),
            workers,
            stats,
            settings,
        }
    }

    /// Queues a request, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Rejected> {
        let tx = self.tx.as_ref().ok_or(Rejected::Stopped)?;
        self.stats.queued_now.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.queued_now.fetch_sub(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => {
                        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        Err(Rejected::QueueFull)
                    }
                    TrySendError::Disconnected(_) => Err(Rejected::Stopped),
                }
            }
        }
    }
}

impl Drop for Batcher {
    /// Closes the queue; the worker finishes what was queued, then exits.
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One worker: gathers a batch while holding the queue (so instances never split one batch),
/// then releases it and runs the batch on its own sessions.
fn work(rx: Arc<Mutex<Receiver<Job>>>, loader: Loader, s: BatchSettings, stats: Arc<Stats>) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut sessions: HashMap<Vec<Vec<usize>>, Session> = HashMap::new();
    let mut order: VecDeque<Vec<Vec<usize>>> = VecDeque::new();
    let mut open = true;
    loop {
        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
        let first = match pending.pop_front() {
            Some(j) => j,
            None if open => match rx.recv() {
                Ok(j) => j,
                Err(_) => break,
            },
            None => break,
        };
        let key = first.key();
        let mut items = first.items();
        let deadline = first.queued + s.max_delay;
        let mut group = vec![first];
        // Compatible requests that already wait, oldest first.
        let mut i = 0;
        while i < pending.len() && items < s.max_batch {
            if pending[i].key() == key && items + pending[i].items() <= s.max_batch {
                let j = pending.remove(i).expect("index checked");
                items += j.items();
                group.push(j);
            } else {
                i += 1;
            }
        }
        // Then new arrivals until the batch is full or the oldest has waited long enough. The
        // side queue is bounded too: when it is full, the channel fills and clients get 429.
        while open && items < s.max_batch && pending.len() < s.max_queue {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(j) if j.key() == key && items + j.items() <= s.max_batch => {
                    items += j.items();
                    group.push(j);
                }
                Ok(j) => pending.push_back(j),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        drop(rx);
        stats
            .queued_now
            .fetch_sub(group.len() as u64, Ordering::Relaxed);
        run_group(group, items, &loader, &mut sessions, &mut order, &stats);
    }
}

fn run_group(
    group: Vec<Job>,
    items: usize,
    loader: &Loader,
    sessions: &mut HashMap<Vec<Vec<usize>>, Session>,
    order: &mut VecDeque<Vec<Vec<usize>>>,
    stats: &Stats,
) {
    let start = Instant::now();
    for j in &group {
        stats.queue_ns.fetch_add(
            start.duration_since(j.queued).as_nanos() as u64,
            Ordering::Relaxed,
        );
    }
    let counts: Vec<usize> = group.iter().map(Job::items).collect();
    let (inputs, replies): (Vec<Vec<Tensor>>, Vec<_>) =
        group.into_iter().map(|j| (j.inputs, j.reply)).unzip();
    let result = medinfer_core::panic::catch(|| -> Result<Vec<Vec<Tensor>>, EngineError> {
        let batch = concat(inputs)?;
        let shapes: Vec<Vec<usize>> = batch.iter().map(|t| t.shape().to_vec()).collect();
        if !sessions.contains_key(&shapes) {
            let s = loader(&shapes)?;
            if order.len() >= SESSIONS_KEPT {
                if let Some(old) = order.pop_front() {
                    sessions.remove(&old);
                }
            }
            order.push_back(shapes.clone());
            sessions.insert(shapes.clone(), s);
        }
        let t = Instant::now();
        let out = sessions[&shapes].run(&batch)?;
        stats
            .compute_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        split(out, &counts)
    })
    .unwrap_or_else(|p| {
        Err(EngineError::Run {
            backend: medinfer_engine::BackendKind::Tract,
            message: format!("the engine panicked: {}", p.message),
        })
    });
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.items.fetch_add(items as u64, Ordering::Relaxed);
    let bucket = BATCH_BUCKETS
        .iter()
        .position(|&b| items as u64 <= b)
        .unwrap_or(BATCH_BUCKETS.len());
    stats.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
    stats
        .largest_batch
        .fetch_max(items as u64, Ordering::Relaxed);
    match result {
        Ok(parts) => {
            for (reply, part) in replies.into_iter().zip(parts) {
                stats.success.fetch_add(1, Ordering::Relaxed);
                // A client that went away has dropped its receiver: nothing to do.
                let _ = reply.send(Ok(part));
            }
        }
        Err(e) => {
            for reply in replies {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(clone_error(&e)));
            }
        }
    }
}

/// The same error for every request of a failed batch (EngineError holds no Clone sources).
fn clone_error(e: &EngineError) -> EngineError {
    match e {
        EngineError::BadInput(m) => EngineError::BadInput(m.clone()),
        EngineError::Run { backend, message } => EngineError::Run {
            backend: *backend,
            message: message.clone(),
        },
        other => EngineError::Run {
            backend: medinfer_engine::BackendKind::Tract,
            message: other.to_string(),
        },
    }
}

/// Concatenates the requests' inputs along the batch axis (input by input).
fn concat(mut requests: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>, EngineError> {
    if requests.len() == 1 {
        return Ok(requests.pop().expect("one request"));
    }
    let n_inputs = requests[0].len();
    let mut out = Vec::with_capacity(n_inputs);
    for i in 0..n_inputs {
        let first = &requests[0][i];
        let mut shape = first.shape().to_vec();
        let mut bytes = Vec::new();
        let mut total = 0;
        for r in &requests {
            total += r[i].shape().first().copied().unwrap_or(1);
            bytes.extend_from_slice(&r[i].to_le_bytes());
        }
        if shape.is_empty() {
            return Err(EngineError::BadInput(
                "a scalar input cannot be batched".into(),
            ));
        }
        shape[0] = total;
        out.push(
            Tensor::from_le_bytes(first.dtype(), shape, &bytes)
                .map_err(|e| EngineError::BadInput(e.to_string()))?,
        );
    }
    Ok(out)
}

/// Splits every output along the batch axis into the requests' rows.
fn split(outputs: Vec<Tensor>, counts: &[usize]) -> Result<Vec<Vec<Tensor>>, EngineError> {
    if counts.len() == 1 {
        return Ok(vec![outputs]);
    }
    let total: usize = counts.iter().sum();
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); counts.len()];
    for o in outputs {
        if o.shape().first() != Some(&total) {
            return Err(EngineError::BadInput(format!(
                "output of shape {:?} has no batch axis of {total} to split between requests",
                o.shape()
            )));
        }
        let bytes = o.to_le_bytes();
        let per_item = bytes.len() / total.max(1);
        let mut at = 0;
        for (k, &c) in counts.iter().enumerate() {
            let mut shape = o.shape().to_vec();
            shape[0] = c;
            let piece = &bytes[at * per_item..(at + c) * per_item];
            parts[k].push(
                Tensor::from_le_bytes(o.dtype(), shape, piece)
                    .map_err(|e| EngineError::BadInput(e.to_string()))?,
            );
            at += c;
        }
    }
    Ok(parts)
}
