//! The seam between the core service and where accepted events go. A sink answers only once
//! each event is durably stored (or definitely not), and says whether it can take events now.
//! Two implementations: the embedded local log (`file`) and Kafka (`kafka`).
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::config::Config;
use crate::error::Error;
use crate::event::Event;

pub mod file;
pub mod kafka;

/// Where one event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
}

/// Numbers a sink reports for metrics.
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    pub queue_depth: u64,
    pub in_flight: i64,
    pub brokers_up: usize,
    /// (broker, average round-trip time in ms)
    pub broker_rtt_ms: Vec<(String, f64)>,
}

/// What a sink reports about itself for readiness, `/health/detailed` and metrics.
#[derive(Debug, Clone)]
pub struct SinkHealth {
    pub ready: bool,
    pub details: serde_json::Value,
    pub stats: SinkStats,
}

/// What a shutdown flush left undelivered.
#[derive(Debug, Clone, Default)]
pub struct FlushReport {
    pub undelivered: usize,
}

pub trait EventSink: Send + Sync + 'static {
    /// A short name for logs and health, `kafka` or `local-log`.
    fn name(&self) -> &'static str;

    /// Stores every event; the future resolves once each event's outcome is known, with one
    /// result per event, in order. `Ok` means durably stored.
    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Vec<Result<Stored, Error>>>;

    /// Whether the sink can take events now. Cheap: readiness checks call it often.
    fn is_ready(&self) -> bool;

    /// Numbers for metrics. Cheap enough for every scrape.
    fn stats(&self) -> SinkStats;

    /// Readiness, stats and details for `/health/detailed`.
    fn health(&self) -> SinkHealth;

    /// Delivers everything still queued, waiting at most `timeout`.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, FlushReport>;
}

/// Builds the sink the configuration asks for: Kafka when brokers are set, else the local log.
pub async fn from_config(config: &Config) -> Result<Arc<dyn EventSink>, Error> {
    if config.kafka.brokers.is_empty() {
        let sink = file::FileSink::open(&config.storage.data_dir)?;
        tracing::info!(
            sink = "local-log",
            path = %sink.path().display(),
            "no kafka.brokers configured: events are appended to the local log"
        );
        Ok(Arc::new(sink))
    } else {
        let sink = kafka::KafkaSink::new(&config.kafka)?;
        tracing::info!(
            sink = "kafka",
            brokers = %config.kafka.brokers.join(","),
            topic = %config.kafka.topic,
            acks = config.kafka.required_acks.as_librdkafka(),
            "events are produced to Kafka"
        );
        Ok(Arc::new(sink))
    }
}
