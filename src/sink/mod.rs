//! Where accepted events go: the two implementations of the core's [`EventSink`] port (defined
//! in `core::delivery`, so the core never imports a sink), the embedded local log
//! (`local_log`) and Kafka (`kafka/`), and the choice between them by configuration. Each sink builds
//! and registers its own instruments from the `Meter` it is given (Kafka's broker gauges mean
//! nothing for a local file), so the trait carries only what every sink means.
use std::path::PathBuf;
use std::sync::Arc;

use opentelemetry::metrics::Meter;

use crate::config::Config;
use crate::core::delivery::EventSink;

pub mod kafka;
pub mod local_log;

/// Why a sink could not be opened at startup; the underlying error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot {action} {}: {source}", .path.display())]
    LocalLog {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot start a sink thread: {0}")]
    Thread(String),
    #[error("cannot open the spool in {}: {source}", .path.display())]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The sink the configuration asks for, and the Kafka sink itself when that is it (the
/// spool's forwarder needs it).
pub struct Built {
    pub sink: Arc<dyn EventSink>,
    pub kafka: Option<Arc<kafka::KafkaSink>>,
}

/// What a spooled record holds besides the event itself, at most (frame header, payload
/// header, topic, trace headers), for readiness's room check.
const ENVELOPE_ROOM: u64 = 4096;

/// The spool settings of `spool.*`, in `dir`.
pub fn spool_settings(config: &Config, dir: PathBuf, max_age: bool) -> crate::spool::Settings {
    crate::spool::Settings {
        dir,
        segment_bytes: config.spool.segment_bytes.as_u64(),
        max_bytes: config.spool.max_bytes.as_u64(),
        max_age: max_age.then_some(config.spool.max_age),
        // Ready means an event of the largest size taken would fit, with room for what the
        // spool keeps beside it (framing, topic, trace headers).
        min_room: config.limits.max_event_size.as_u64() + ENVELOPE_ROOM,
    }
}

/// Builds the sink the configuration asks for: Kafka when brokers are set, else the local log.
/// `topics` names every topic events may be routed to (Kafka checks they exist). Its
/// instruments are registered on `meter`.
pub fn from_config(
    config: &Config,
    topics: kafka::TopicSource,
    meter: &Meter,
) -> Result<Built, OpenError> {
    if config.kafka.brokers.is_empty() {
        let settings = spool_settings(config, config.storage.data_dir.clone(), false);
        let sink = local_log::FileSink::open(settings, meter)?;
        tracing::info!(
            sink = "local-log",
            path = %sink.path().display(),
            "no kafka.brokers configured: events are appended to the local log"
        );
        Ok(Built {
            sink: Arc::new(sink),
            kafka: None,
        })
    } else {
        let sink = kafka::KafkaSink::new(&config.kafka, topics, meter)?;
        tracing::info!(
            sink = "kafka",
            brokers = %config.kafka.brokers.join(","),
            topic = %config.kafka.topic,
            acks = config.kafka.required_acks.as_librdkafka(),
            "events are produced to Kafka"
        );
        Ok(Built {
            sink: sink.clone(),
            kafka: Some(sink),
        })
    }
}
