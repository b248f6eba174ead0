//! The librdkafka client settings `kafka.*` make: acks, idempotence, batching, compression,
//! timeouts, the statistics interval that readiness reads, then the passthrough map. The
//! benchmark's raw producer (examples/raw_producer.rs) builds its client from the same
//! function, so the floor it measures is the gateway's own configuration.
use rdkafka::config::ClientConfig;

use super::stats::STATS_INTERVAL;
use crate::config::{KafkaConfig, RequiredAcks};

/// The librdkafka settings derived from `kafka.*`, before the passthrough map.
pub fn client_config(c: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    let idempotent = c.idempotence && c.required_acks == RequiredAcks::All;
    cc.set("bootstrap.servers", c.brokers.join(","))
        .set("acks", c.required_acks.as_librdkafka())
        .set("enable.idempotence", idempotent.to_string())
        // With idempotence, an error that would leave a gap in a partition (a record failed,
        // a later one stored) is a fatal error instead, and the producer is rebuilt: records
        // of one key are never stored past an earlier one that failed, which the spool's
        // order per key relies on. Only a record that timed out (message.timeout.ms) can still
        // leave a gap; the forwarder gives that one up rather than send it late, unless the
        // gateway restarts before it has.
        .set("enable.gapless.guarantee", idempotent.to_string())
        .set("message.send.max.retries", c.retries.to_string())
        .set("batch.num.messages", c.batch_size.to_string())
        .set("linger.ms", c.linger.as_millis().to_string())
        .set("compression.type", &c.compression)
        .set(
            "message.timeout.ms",
            c.message_timeout.as_millis().to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            c.queue_max_messages.to_string(),
        )
        .set("message.max.bytes", c.message_max_bytes.to_string())
        .set("request.timeout.ms", "10000")
        .set("socket.timeout.ms", "10000")
        .set("retry.backoff.ms", "100")
        .set("retry.backoff.max.ms", "1000")
        .set("reconnect.backoff.max.ms", "1000")
        .set("allow.auto.create.topics", "false")
        .set("topic.metadata.propagation.max.ms", "5000")
        .set(
            "statistics.interval.ms",
            STATS_INTERVAL.as_millis().to_string(),
        );
    let sec = &c.security;
    cc.set("security.protocol", sec.protocol.as_librdkafka());
    let path = |p: &std::path::PathBuf| p.display().to_string();
    match &sec.ca_file {
        Some(p) => {
            cc.set("ssl.ca.location", path(p));
        }
        // The vendored OpenSSL's default CA directory is its build prefix, which no machine
        // has: librdkafka's `probe` looks in the usual system locations instead.
        None if sec.protocol.is_tls() => {
            cc.set("ssl.ca.location", "probe");
        }
        None => {}
    }
    if let (Some(cert), Some(key)) = (&sec.cert_file, &sec.key_file) {
        cc.set("ssl.certificate.location", path(cert))
            .set("ssl.key.location", path(key));
    }
    if let Some(m) = sec.sasl_mechanism {
        cc.set("sasl.mechanism", m.as_librdkafka());
    }
    if let Some(u) = &sec.username {
        cc.set("sasl.username", u);
    }
    if let Some(p) = &sec.password {
        cc.set("sasl.password", &p.0);
    }
    for (k, v) in &c.librdkafka {
        cc.set(k, v);
    }
    cc
}
