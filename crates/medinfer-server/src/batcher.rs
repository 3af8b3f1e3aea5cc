//! Dynamic batching (Triton's idea): requests for one model wait in a bounded queue; one worker
//! thread takes the oldest, gathers compatible requests (same per-item shapes) up to the
//! model's max batch or until the oldest has waited the max queue delay, runs them as one
//! batch and hands each request its rows. A full queue refuses at once (the caller answers 429),
//! so memory stays bounded however fast clients send.
//!
//! The worker is a plain thread, not a tokio task: engine calls block for milliseconds to
//! seconds and must not stall the HTTP runtime.
//!
//! With several instances, the workers share one session per input shape set, loaded with one
//! stream per instance (the [`Loader`] is told how many), so that the engine places the
//! instances' streams on distinct cores. Separately compiled single-stream sessions did not:
//! OpenVINO pinned each one's thread to the first core, and two instances on 2 cores ran on
//! one (`medinfer serve` at 0.46 of `medinfer bench` for the same deployment; docs/benchmarks.md).

use medinfer_core::{DType, Tensor};
use medinfer_engine::{EngineError, Session};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
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
    /// Worker threads taking batches from the one queue, sharing sessions of one stream each
    /// (Triton's instance count; 1 = one batch in the engine at a time).
    pub instances: usize,
    /// Pad each batch with zero rows to the next power of two (or `max_batch`), so that at most
    /// log2(max_batch) + 2 sessions are compiled per input shape, instead of one per batch size
    /// met: less memory, and no compile stall in the middle of serving.
    pub pad: bool,
}

impl BatchSettings {
    /// The batch size `items` runs at: itself, or padded as [`BatchSettings::pad`] says.
    pub fn padded(&self, items: usize) -> usize {
        if !self.pad || items >= self.max_batch {
            return items;
        }
        items.next_power_of_two().min(self.max_batch)
    }
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

/// Loads a session for the given full input shapes (batch included) with the given number of
/// streams (the model's instances: that many batches run in it at once, one per worker).
pub type Loader = Arc<dyn Fn(&[Vec<usize>], usize) -> Result<Session, EngineError> + Send + Sync>;

/// Sessions of one model by input shape set, shared by its workers; the oldest goes first when
/// more than [`SESSIONS_KEPT`] are met (a worker still running it keeps it alive until done).
#[derive(Default)]
struct Sessions {
    by_shapes: HashMap<Vec<Vec<usize>>, Slot>,
    order: VecDeque<Vec<Vec<usize>>>,
}

/// One shape set's session, loaded by the first worker that needs it.
type Slot = Arc<Mutex<Option<Arc<Session>>>>;

impl Sessions {
    /// The session for `shapes`, loaded if not kept. Loading holds that shape set's slot only:
    /// a worker that needs the same shapes waits for this load rather than compiling a second
    /// copy, and workers on other shapes go on running.
    fn get(
        cache: &Mutex<Sessions>,
        shapes: &[Vec<usize>],
        loader: &Loader,
        streams: usize,
    ) -> Result<Arc<Session>, EngineError> {
        let slot = {
            let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
            match c.by_shapes.get(shapes) {
                Some(slot) => slot.clone(),
                None => {
                    if c.order.len() >= SESSIONS_KEPT {
                        if let Some(old) = c.order.pop_front() {
                            c.by_shapes.remove(&old);
                        }
                    }
                    let slot = Slot::default();
                    c.order.push_back(shapes.to_vec());
                    c.by_shapes.insert(shapes.to_vec(), slot.clone());
                    slot
                }
            }
        };
        let mut held = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = held.as_ref() {
            return Ok(s.clone());
        }
        // A failed load leaves the slot empty: the next batch of these shapes tries again.
        let s = Arc::new(loader(shapes, streams)?);
        *held = Some(s.clone());
        Ok(s)
    }
}

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
        let sessions = Arc::new(Mutex::new(Sessions::default()));
        let running = Arc::new(Running::default());
        let workers = (0..settings.instances.max(1))
            .map(|i| {
                let (rx, loader, st) = (rx.clone(), loader.clone(), stats.clone());
                let (sessions, running) = (sessions.clone(), running.clone());
                std::thread::Builder::new()
                    .name(format!("batcher-{name}-{i}"))
                    .spawn(move || work(rx, loader, sessions, running, settings, st))
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

/// What the model's instances are running now, for the gathering worker's choice of when to
/// stop waiting for more requests.
#[derive(Default)]
struct Running {
    /// Instances running a batch.
    batches: AtomicUsize,
    /// Items in those batches.
    items: AtomicUsize,
}

impl Running {
    fn start(&self, items: usize) {
        self.items.fetch_add(items, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
    fn end(&self, items: usize) {
        self.batches.fetch_sub(1, Ordering::Relaxed);
        self.items.fetch_sub(items, Ordering::Relaxed);
    }
    /// The largest batch a worker should gather now, with `queued` requests waiting: the
    /// model's max batch with one instance (the delay alone decides, as in Triton). With
    /// several, a share that leaves requests queued for the others: the requests in the
    /// server (queued plus running) over one more than the instances, rounded down to a
    /// batch size that padding does not fill with zeros. In a closed loop of clients the
    /// queue then never runs dry while replies travel back, and no worker takes every
    /// waiting request while another stands idle. Measured on 2 cores (resnet18-ct, OpenVINO
    /// INT8, 2 instances x 1 thread, max batch 8): 8 clients got 398 req/s when each worker
    /// waited to fill its batch (two batches of 4, nothing queued, an idle core while replies
    /// travelled) and 679 at batches of 2; 32 clients do best at batches of 8
    /// (docs/benchmarks.md).
    fn limit(&self, queued: usize, s: &BatchSettings) -> usize {
        if s.instances < 2 {
            return s.max_batch;
        }
        let in_server = queued + self.items.load(Ordering::Relaxed);
        let share = in_server.div_ceil(s.instances + 1).max(1);
        if share >= s.max_batch {
            s.max_batch
        } else if s.pad {
            1 << share.ilog2()
        } else {
            share
        }
    }

    /// Whether another instance stands idle: then a worker runs what it has rather than
    /// wait out the delay for requests not sent yet (the idle one takes those).
    fn idle_other(&self, instances: usize) -> bool {
        self.batches.load(Ordering::Relaxed) + 1 < instances
    }
}

/// One worker: gathers a batch while holding the queue (so instances never split one batch),
/// then releases it and runs the batch on the shared sessions.
fn work(
    rx: Arc<Mutex<Receiver<Job>>>,
    loader: Loader,
    sessions: Arc<Mutex<Sessions>>,
    running: Arc<Running>,
    s: BatchSettings,
    stats: Arc<Stats>,
) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut open = true;
    let instances = s.instances.max(1);
    let engine = Engine {
        loader: &loader,
        sessions: &sessions,
        streams: instances,
    };
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
        let limit = running.limit(stats.queued_now.load(Ordering::Relaxed) as usize, &s);
        let deadline = first.queued + s.max_delay;
        let mut group = vec![first];
        // Compatible requests that already wait, oldest first.
        let mut i = 0;
        while i < pending.len() && items < limit {
            if pending[i].key() == key && items + pending[i].items() <= s.max_batch {
                let j = pending.remove(i).expect("index checked");
                items += j.items();
                group.push(j);
            } else {
                i += 1;
            }
        }
        // Then new arrivals until the batch is full (up to the worker's share, see
        // `Running::limit`), the oldest has waited long enough or another instance is idle. The
        // side queue is bounded too: when it is full, the channel fills and clients get 429.
        // Requests already queued join at once, whatever the oldest has waited: the delay only
        // bounds waiting for requests not sent yet. (Under load the oldest is always past its
        // deadline, and batches must still fill from the queue.)
        while open && items < limit && pending.len() < s.max_queue {
            let now = Instant::now();
            let got = match rx.try_recv() {
                Ok(j) => Ok(j),
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) if now >= deadline => break,
                Err(TryRecvError::Empty) if running.idle_other(instances) => break,
                Err(TryRecvError::Empty) => rx.recv_timeout(deadline - now),
            };
            match got {
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
        running.start(items);
        run_group(group, items, s.padded(items), &engine, &stats);
        running.end(items);
    }
}

/// Where a worker's batches run: the shared sessions, and how to load a missing one.
struct Engine<'a> {
    loader: &'a Loader,
    sessions: &'a Mutex<Sessions>,
    streams: usize,
}

fn run_group(group: Vec<Job>, items: usize, rows: usize, engine: &Engine, stats: &Stats) {
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
        let batch = pad(concat(inputs)?, rows)?;
        let shapes: Vec<Vec<usize>> = batch.iter().map(|t| t.shape().to_vec()).collect();
        let session = Sessions::get(engine.sessions, &shapes, engine.loader, engine.streams)?;
        let t = Instant::now();
        let out = session.run(&batch)?;
        stats
            .compute_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        split(out, &counts, rows)
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

/// Appends zero rows to every input until the batch axis holds `rows`.
fn pad(inputs: Vec<Tensor>, rows: usize) -> Result<Vec<Tensor>, EngineError> {
    inputs
        .into_iter()
        .map(|t| {
            let n = t.shape().first().copied().unwrap_or(rows);
            if n >= rows {
                return Ok(t);
            }
            let mut bytes = t.to_le_bytes();
            bytes.resize(bytes.len() / n.max(1) * rows, 0);
            let mut shape = t.shape().to_vec();
            shape[0] = rows;
            Tensor::from_le_bytes(t.dtype(), shape, &bytes)
                .map_err(|e| EngineError::BadInput(e.to_string()))
        })
        .collect()
}

/// Splits every output along the batch axis (`rows`, padding included) into the requests'
/// rows; padding rows are dropped.
fn split(
    outputs: Vec<Tensor>,
    counts: &[usize],
    rows: usize,
) -> Result<Vec<Vec<Tensor>>, EngineError> {
    let total: usize = counts.iter().sum();
    if counts.len() == 1 && rows == total {
        return Ok(vec![outputs]);
    }
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); counts.len()];
    for o in outputs {
        if o.shape().first() != Some(&rows) {
            return Err(EngineError::BadInput(format!(
                "output of shape {:?} has no batch axis of {rows} to split between requests",
                o.shape()
            )));
        }
        let bytes = o.to_le_bytes();
        let per_item = bytes.len() / rows.max(1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use medinfer_onnx::builder::{f32_value_info, DimSpec, GraphBuilder};

    fn relu_model(dir: &std::path::Path) -> std::path::PathBuf {
        let mut g = GraphBuilder::new(1);
        let y = g.relu("y", "x");
        let dims = [DimSpec::Named("n".into()), DimSpec::Fixed(4)];
        let m = g.finish(
            "relu",
            vec![f32_value_info("x", &dims)],
            vec![f32_value_info(&y, &dims)],
            &[],
        );
        let p = dir.join("relu.onnx");
        medinfer_onnx::save_model(&m, &p).unwrap();
        p
    }

    #[test]
    fn queued_requests_fill_a_batch_even_past_the_delay_and_batches_are_padded() {
        let d = tempfile::tempdir().unwrap();
        let model = relu_model(d.path());
        // The first engine load waits until the test has queued six more requests.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go = Mutex::new(Some(go_rx));
        let shapes_seen = Arc::new(Mutex::new(Vec::new()));
        let seen = shapes_seen.clone();
        let loader: Loader = Arc::new(move |shapes: &[Vec<usize>], _streams| {
            seen.lock().unwrap().push(shapes[0][0]);
            if let Some(rx) = go.lock().unwrap().take() {
                let _ = rx.recv_timeout(Duration::from_secs(30));
            }
            medinfer_engine::load_on(
                medinfer_engine::BackendKind::Tract,
                &model,
                &medinfer_engine::SessionOptions {
                    batch: Some(shapes[0][0]),
                    ..Default::default()
                },
            )
        });
        let settings = BatchSettings {
            max_batch: 8,
            max_delay: Duration::ZERO,
            max_queue: 16,
            instances: 1,
            pad: true,
        };
        let b = Batcher::start("t", loader, settings);
        let mut replies = Vec::new();
        for k in 0..7 {
            let (tx, rx) = oneshot::channel();
            let x =
                Tensor::from_f32(vec![1, 4], vec![k as f32 - 3.0, 1.0, -1.0, k as f32]).unwrap();
            b.submit(Job {
                inputs: vec![x],
                reply: tx,
                queued: Instant::now(),
            })
            .unwrap();
            replies.push(rx);
            if k == 0 {
                // Let the worker take the first one alone and block in the loader.
                while shapes_seen.lock().unwrap().is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        go_tx.send(()).unwrap();
        for (k, rx) in replies.into_iter().enumerate() {
            let out = rx.blocking_recv().unwrap().unwrap();
            let want = [(k as f32 - 3.0).max(0.0), 1.0, 0.0, k as f32];
            assert_eq!(out[0].shape(), &[1, 4]);
            assert_eq!(out[0].as_f32().unwrap(), &want, "request {k}");
        }
        // One batch of 1, then the six that queued meanwhile as one batch padded to 8.
        assert_eq!(*shapes_seen.lock().unwrap(), vec![1, 8]);
        assert_eq!(b.stats.largest_batch.load(Ordering::Relaxed), 6);
        assert_eq!(b.stats.batches.load(Ordering::Relaxed), 2);
        assert_eq!(b.stats.items.load(Ordering::Relaxed), 7);
        let padded: Vec<usize> = (1..=9).map(|n| settings.padded(n)).collect();
        assert_eq!(padded, [1, 2, 4, 4, 8, 8, 8, 8, 9]);
    }

    #[test]
    fn several_instances_leave_requests_queued_for_each_other() {
        let s = |instances, pad| BatchSettings {
            max_batch: 8,
            max_delay: Duration::from_millis(2),
            max_queue: 64,
            instances,
            pad,
        };
        let r = Running::default();
        // One instance: the max batch, however few wait.
        assert_eq!(r.limit(1, &s(1, true)), 8);
        // Two: the requests in the server over three, down to a size padding leaves whole.
        let limits: Vec<usize> = [1, 2, 3, 4, 8, 12, 16, 24, 32, 64]
            .iter()
            .map(|&q| r.limit(q, &s(2, true)))
            .collect();
        assert_eq!(limits, [1, 1, 1, 2, 2, 4, 4, 8, 8, 8]);
        assert_eq!(r.limit(16, &s(2, false)), 6);
        // Requests running count as in the server: 4 running and 4 queued share like 8.
        r.start(4);
        assert_eq!(r.limit(4, &s(2, true)), 2);
        assert!(!r.idle_other(2), "the other instance is busy");
        r.end(4);
        assert!(r.idle_other(2));
        assert!(!r.idle_other(1), "one instance has no other");
    }

    #[test]
    fn instances_share_one_session_per_shape_loaded_with_a_stream_each() {
        let d = tempfile::tempdir().unwrap();
        let model = relu_model(d.path());
        let loads = Arc::new(Mutex::new(Vec::new()));
        let seen = loads.clone();
        let loader: Loader = Arc::new(move |shapes: &[Vec<usize>], streams| {
            seen.lock().unwrap().push((shapes[0][0], streams));
            medinfer_engine::load_on(
                medinfer_engine::BackendKind::Tract,
                &model,
                &medinfer_engine::SessionOptions {
                    batch: Some(shapes[0][0]),
                    streams: Some(streams),
                    mode: medinfer_engine::Mode::Throughput,
                    ..Default::default()
                },
            )
        });
        let b = Batcher::start(
            "t",
            loader,
            BatchSettings {
                max_batch: 1,
                max_delay: Duration::ZERO,
                max_queue: 64,
                instances: 3,
                pad: true,
            },
        );
        let replies: Vec<_> = (0..40)
            .map(|k| {
                let (tx, rx) = oneshot::channel();
                let x = Tensor::from_f32(vec![1, 4], vec![k as f32, -1.0, 2.0, -3.0]).unwrap();
                b.submit(Job {
                    inputs: vec![x],
                    reply: tx,
                    queued: Instant::now(),
                })
                .unwrap();
                rx
            })
            .collect();
        for (k, rx) in replies.into_iter().enumerate() {
            let out = rx.blocking_recv().unwrap().unwrap();
            assert_eq!(out[0].as_f32().unwrap(), &[k as f32, 0.0, 2.0, 0.0]);
        }
        // Three workers, one shape: one session, with three streams.
        assert_eq!(*loads.lock().unwrap(), vec![(1, 3)]);
        assert_eq!(b.stats.success.load(Ordering::Relaxed), 40);
    }
}
