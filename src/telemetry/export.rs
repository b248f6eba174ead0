//! Getting spans out: the OTLP exporter the standard `OTEL_*` variables ask for (gRPC or
//! HTTP/protobuf), behind a bounded queue that one task on the gateway's runtime drains.
//!
//! Why not the SDK's `BatchSpanProcessor`: it runs a thread of its own and blocks on the
//! exporter there, where neither the tonic nor the hyper client has the tokio runtime they
//! spawn their connections on, and it does not say how many spans it dropped. This processor
//! never makes a request wait: a sampled span that ends goes into a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, 2,048), and when the queue is full (a collector down or slow)
//! the span is dropped and counted (`otel_spans_dropped_total{reason}`); one export runs at
//! a time, of at most `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512) spans, every
//! `OTEL_BSP_SCHEDULE_DELAY` (5 s) or sooner when a batch is full, cut off after
//! `OTEL_BSP_EXPORT_TIMEOUT` (30 s). Memory is bounded by the queue, whatever the collector does.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;

/// What the pipeline did, for the `otel_spans_*` counters.
#[derive(Default)]
pub struct Stats {
    pub exported: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_export_failed: AtomicU64,
    pub dropped_export_timeout: AtomicU64,
}

/// The process's one pipeline's counts (the binary runs one).
pub static STATS: Stats = Stats {
    exported: AtomicU64::new(0),
    dropped_queue_full: AtomicU64::new(0),
    dropped_export_failed: AtomicU64::new(0),
    dropped_export_timeout: AtomicU64::new(0),
};

/// The `OTEL_BSP_*` settings.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
    pub timeout: Duration,
}

impl QueueConfig {
    /// From the standard variables, with the specification's defaults.
    pub fn from_env() -> Self {
        let num = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
                .unwrap_or(d)
        };
        let max_queue = num("OTEL_BSP_MAX_QUEUE_SIZE", 2048) as usize;
        Self {
            max_queue,
            max_batch: (num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) as usize).min(max_queue),
            delay: Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            timeout: Duration::from_millis(num("OTEL_BSP_EXPORT_TIMEOUT", 30000)),
        }
    }
}

enum Control {
    Flush(std::sync::mpsc::Sender<()>),
    Shutdown(std::sync::mpsc::Sender<()>),
}

#[derive(Debug)]
pub struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Flush(_) => "Flush",
            Control::Shutdown(_) => "Shutdown",
        })
    }
}

impl QueueProcessor {
    /// Starts the draining task on the current tokio runtime.
    pub fn start<E: SpanExporter + 'static>(exporter: E, config: QueueConfig) -> Self {
        let (spans, rx) = mpsc::channel(config.max_queue);
        let (control, ctl) = mpsc::unbounded_channel();
        tokio::spawn(drain(exporter, rx, ctl, config));
        Self { spans, control }
    }

    fn ask(
        &self,
        make: impl FnOnce(std::sync::mpsc::Sender<()>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done, wait) = std::sync::mpsc::channel();
        self.control
            .send(make(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        wait.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.spans.try_send(span).is_err() {
            STATS.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }
}

/// Exports one batch, counting how it went.
async fn export<E: SpanExporter>(exporter: &E, batch: Vec<SpanData>, timeout: Duration) {
    let n = batch.len() as u64;
    if n == 0 {
        return;
    }
    match tokio::time::timeout(timeout, exporter.export(batch)).await {
        Ok(Ok(())) => STATS.exported.fetch_add(n, Ordering::Relaxed),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, spans = n, "span export failed; the spans are dropped");
            STATS.dropped_export_failed.fetch_add(n, Ordering::Relaxed)
        }
        Err(_) => STATS.dropped_export_timeout.fetch_add(n, Ordering::Relaxed),
    };
}

/// The draining task: batches by size or by time, one export at a time.
async fn drain<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<SpanData>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
    config: QueueConfig,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(config.max_batch);
    let mut deadline = None;
    loop {
        let due = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            c = ctl.recv() => {
                // Everything queued goes out first, then the answer.
                while let Ok(span) = rx.try_recv() {
                    batch.push(span);
                    if batch.len() >= config.max_batch {
                        export(&exporter, std::mem::take(&mut batch), config.timeout).await;
                    }
                }
                export(&exporter, std::mem::take(&mut batch), config.timeout).await;
                deadline = None;
                match c {
                    Some(Control::Flush(done)) => {
                        let _ = done.send(());
                    }
                    Some(Control::Shutdown(done)) => {
                        let _ = exporter.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                }
            }
            span = rx.recv() => {
                let Some(span) = span else { return };
                batch.push(span);
                if batch.len() >= config.max_batch {
                    export(&exporter, std::mem::take(&mut batch), config.timeout).await;
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + config.delay);
                }
            }
            () = due => {
                export(&exporter, std::mem::take(&mut batch), config.timeout).await;
                deadline = None;
            }
        }
    }
}
