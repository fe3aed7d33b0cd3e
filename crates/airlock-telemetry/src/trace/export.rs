//! The exporter: spans go into a bounded queue and leave it in batches, encoded and
//! posted to the collector from a thread of their own, so that a slow, refusing or dead collector
//! never holds up a request or a tunnel. When the queue is full or an export fails, the
//! spans are dropped and counted ([`stats`]), with at most one warning a minute.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use super::client::Collector;
use super::otlp::{self, Spans};

/// Spans in one export at most.
const MAX_BATCH: usize = 512;
/// How long a span may wait for more to fill its batch.
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Spans counted since the process started, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Accepted by the collector.
    pub exported: u64,
    /// Dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because their export failed (refused, timed out, unreachable).
    pub dropped_export_failed: u64,
}

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);

/// What every exporter of the process has done with its spans.
pub fn stats() -> Stats {
    Stats {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped_queue_full: DROPPED_QUEUE_FULL.load(Ordering::Relaxed),
        dropped_export_failed: DROPPED_EXPORT_FAILED.load(Ordering::Relaxed),
    }
}

/// How the exporter sends.
pub struct Settings {
    pub endpoint: String,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub encoder: otlp::Encoder,
    pub max_queue: usize,
    pub timeout: Duration,
}

/// The sending end; the thread exports what is left and ends when it is dropped.
pub struct Exporter {
    queue: Arc<Queue>,
    max_queue: usize,
}

/// Spans waiting for the export thread. A request adds its spans under the lock without
/// waking the thread, unless they are the first of a batch (the thread then starts the
/// batch's clock) or they fill one: a busy proxy wakes it once a batch, not once a span.
struct Queue {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Batches of at most [`MAX_BATCH`] spans, the last one filling.
    batches: VecDeque<Batch>,
    /// Spans in `batches`, and in the export under way.
    queued: usize,
    exporting: usize,
    /// Callers of [`Exporter::flush`] waiting.
    flushes: Vec<mpsc::SyncSender<()>>,
    closed: bool,
}

#[derive(Default)]
struct Batch {
    parts: Vec<Spans>,
    spans: usize,
}

impl State {
    fn full_batches(&self) -> usize {
        match self.batches.back() {
            Some(last) if last.spans < MAX_BATCH => self.batches.len() - 1,
            _ => self.batches.len(),
        }
    }
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.queue.lock();
        f.debug_struct("Exporter")
            .field("queued", &state.queued)
            .field("exporting", &state.exporting)
            .field("max_queue", &self.max_queue)
            .finish()
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (plain counters and
        // whole batches): carry on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Exporter {
    /// Start the export thread. Fails only when the endpoint is unusable or the thread
    /// cannot start; the collector is not contacted until the first batch.
    pub fn start(settings: Settings) -> Result<Self, String> {
        let collector = Collector::new(&settings.endpoint, settings.headers)?;
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let worker = Worker {
            queue: queue.clone(),
            collector,
            encoder: settings.encoder,
            timeout: settings.timeout,
            endpoint: settings.endpoint,
        };
        std::thread::Builder::new()
            .name("airlock-otlp".into())
            .spawn(move || worker.run())
            .map_err(|e| format!("cannot start the span exporter thread: {e}"))?;
        Ok(Self {
            queue,
            max_queue: settings.max_queue,
        })
    }

    /// Queue a request's spans, or drop and count them when the queue is full.
    pub fn send(&self, spans: Spans) {
        let n = spans.len();
        if n == 0 {
            return;
        }
        let mut state = self.queue.lock();
        if state.closed || state.queued + state.exporting + n > self.max_queue {
            drop(state);
            DROPPED_QUEUE_FULL.fetch_add(n as u64, Ordering::Relaxed);
            warn_dropped(&QUEUE_FULL_WARNING, n, || {
                format!(
                    "span export queue full ({} spans); spans dropped",
                    self.max_queue
                )
            });
            return;
        }
        let first = state.queued == 0;
        state.queued += n;
        let batch = match state.batches.back_mut() {
            Some(last) if last.spans < MAX_BATCH => last,
            _ => {
                state.batches.push_back(Batch::default());
                state.batches.back_mut().expect("just pushed")
            }
        };
        batch.spans += n;
        batch.parts.push(spans);
        let filled = batch.spans >= MAX_BATCH;
        drop(state);
        if first || filled {
            self.queue.wake.notify_one();
        }
    }

    /// Export what is queued, waiting at most `within`. Whether it finished in time.
    pub fn flush(&self, within: Duration) -> bool {
        let (done, finished) = mpsc::sync_channel(1);
        {
            let mut state = self.queue.lock();
            if state.closed {
                return true;
            }
            state.flushes.push(done);
        }
        self.queue.wake.notify_one();
        finished.recv_timeout(within).is_ok()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.wake.notify_one();
    }
}

struct Worker {
    queue: Arc<Queue>,
    collector: Collector,
    encoder: otlp::Encoder,
    timeout: Duration,
    endpoint: String,
}

impl Worker {
    fn run(mut self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "span exporter cannot start; spans will be dropped");
                self.queue.lock().closed = true;
                return;
            }
        };
        // When the oldest queued span has waited long enough for its batch to fill.
        let mut due: Option<Instant> = None;
        loop {
            let (batches, flushes, closed) = {
                let mut state = self.queue.lock();
                // Whether to export everything queued (closing, flushing, or the oldest
                // span has waited long enough), or only the full batches.
                let all = loop {
                    if state.queued == 0 {
                        due = None;
                    } else if due.is_none() {
                        due = Some(Instant::now() + BATCH_DELAY);
                    }
                    let late = due.is_some_and(|due| Instant::now() >= due);
                    if state.closed || late || !state.flushes.is_empty() {
                        break true;
                    }
                    if state.full_batches() > 0 {
                        break false;
                    }
                    let wake = &self.queue.wake;
                    state = match due {
                        None => wake.wait(state).unwrap_or_else(|e| e.into_inner()),
                        Some(due) => {
                            let wait = due.saturating_duration_since(Instant::now());
                            let woken = wake.wait_timeout(state, wait);
                            woken.unwrap_or_else(|e| e.into_inner()).0
                        }
                    };
                };
                let take = if all {
                    state.batches.len()
                } else {
                    state.full_batches()
                };
                let batches: Vec<Batch> = state.batches.drain(..take).collect();
                let n: usize = batches.iter().map(|b| b.spans).sum();
                state.queued -= n;
                state.exporting += n;
                if all {
                    due = None;
                }
                (batches, std::mem::take(&mut state.flushes), state.closed)
            };
            for batch in batches {
                self.export(&runtime, batch);
            }
            for done in flushes {
                let _ = done.try_send(());
            }
            if closed && self.queue.lock().queued == 0 {
                return;
            }
        }
    }

    fn export(&mut self, runtime: &tokio::runtime::Runtime, batch: Batch) {
        let n = batch.spans;
        let body = self.encoder.encode(&batch.parts);
        drop(batch);
        // The timer is made inside the runtime: it needs the runtime's clock.
        let (timeout, collector) = (self.timeout, &mut self.collector);
        let sent =
            runtime.block_on(async { tokio::time::timeout(timeout, collector.post(body)).await });
        self.queue.lock().exporting -= n;
        let failure = match sent {
            Ok(Ok(status)) if status.is_success() => {
                EXPORTED.fetch_add(n as u64, Ordering::Relaxed);
                return;
            }
            Ok(Ok(status)) => format!("the collector answered {status}"),
            Ok(Err(why)) => why,
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        DROPPED_EXPORT_FAILED.fetch_add(n as u64, Ordering::Relaxed);
        warn_dropped(&EXPORT_FAILED_WARNING, n, || {
            format!(
                "span export to {} failed: {failure}; spans dropped",
                self.endpoint
            )
        });
    }
}

/// A warning given at most once a minute, counting what it stood for meanwhile.
struct Warning {
    /// Seconds since [`epoch`] at the last warning, plus one (0: never).
    last: AtomicU64,
    dropped: AtomicU64,
}

static QUEUE_FULL_WARNING: Warning = Warning::new();
static EXPORT_FAILED_WARNING: Warning = Warning::new();

impl Warning {
    const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

fn warn_dropped(warning: &Warning, n: usize, message: impl FnOnce() -> String) {
    let dropped = warning.dropped.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
    let now = epoch().elapsed().as_secs() + 1;
    let last = warning.last.load(Ordering::Relaxed);
    if last != 0 && now < last + 60 {
        return;
    }
    if warning
        .last
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        warning.dropped.fetch_sub(dropped, Ordering::Relaxed);
        tracing::warn!(
            spans_dropped = dropped,
            "{} (at most one such warning a minute; airlock_trace_spans_dropped_total counts them all)",
            message()
        );
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}
