//! The exporter: spans go into a bounded queue and leave it in batches, posted to the
//! collector from a thread of their own, so that a slow, refusing or dead collector
//! never holds up a request or a tunnel. When the queue is full or an export fails, the
//! spans are dropped and counted ([`stats`]), with at most one warning a minute.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::client::Collector;
use super::otlp;
use super::span::SpanRecord;

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

enum Message {
    Spans(Vec<SpanRecord>),
    /// Export what is queued now, then answer.
    Flush(mpsc::SyncSender<()>),
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
    queue: mpsc::Sender<Message>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("max_queue", &self.max_queue)
            .finish()
    }
}

impl Exporter {
    /// Start the export thread. Fails only when the endpoint is unusable or the thread
    /// cannot start; the collector is not contacted until the first batch.
    pub fn start(settings: Settings) -> Result<Self, String> {
        let collector = Collector::new(&settings.endpoint, settings.headers)?;
        let (queue, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            rx,
            queued: queued.clone(),
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
            queued,
            max_queue: settings.max_queue,
        })
    }

    /// Queue a request's spans, or drop and count them when the queue is full.
    pub fn send(&self, spans: Vec<SpanRecord>) {
        let n = spans.len();
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before + n > self.max_queue || self.queue.send(Message::Spans(spans)).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            DROPPED_QUEUE_FULL.fetch_add(n as u64, Ordering::Relaxed);
            warn_dropped(&QUEUE_FULL_WARNING, n, || {
                format!(
                    "span export queue full ({} spans); spans dropped",
                    self.max_queue
                )
            });
        }
    }

    /// Export what is queued, waiting at most `within`. Whether it finished in time.
    pub fn flush(&self, within: Duration) -> bool {
        let (done, finished) = mpsc::sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_err() {
            return true;
        }
        finished.recv_timeout(within).is_ok()
    }
}

struct Worker {
    rx: mpsc::Receiver<Message>,
    queued: Arc<AtomicUsize>,
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
                return;
            }
        };
        let mut batch: Vec<SpanRecord> = Vec::new();
        let mut due: Option<Instant> = None;
        loop {
            let message = match due {
                None => self
                    .rx
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(due) => self
                    .rx
                    .recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            match message {
                Ok(Message::Spans(spans)) => {
                    batch.extend(spans);
                    due.get_or_insert_with(|| Instant::now() + BATCH_DELAY);
                    while batch.len() >= MAX_BATCH {
                        let rest = batch.split_off(MAX_BATCH);
                        self.export(&runtime, std::mem::replace(&mut batch, rest));
                    }
                    if batch.is_empty() {
                        due = None;
                    }
                }
                Ok(Message::Flush(done)) => {
                    self.export(&runtime, std::mem::take(&mut batch));
                    due = None;
                    let _ = done.try_send(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.export(&runtime, std::mem::take(&mut batch));
                    due = None;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.export(&runtime, std::mem::take(&mut batch));
                    return;
                }
            }
        }
    }

    fn export(&mut self, runtime: &tokio::runtime::Runtime, batch: Vec<SpanRecord>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let body = self.encoder.encode(&batch);
        drop(batch);
        // The timer is made inside the runtime: it needs the runtime's clock.
        let (timeout, collector) = (self.timeout, &mut self.collector);
        let sent =
            runtime.block_on(async { tokio::time::timeout(timeout, collector.post(body)).await });
        self.queued.fetch_sub(n, Ordering::Relaxed);
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
