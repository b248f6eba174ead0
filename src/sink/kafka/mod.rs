//! The Kafka sink (rdkafka): turns events into records per the CloudEvents Kafka protocol
//! binding, answers only after each delivery report, classifies Kafka errors as retryable
//! (UNAVAILABLE) or permanent, derives readiness from librdkafka statistics, rebuilds the
//! producer after fatal or fencing errors so the gateway recovers without a restart, and
//! registers the `kafka_*` instruments (fed by those statistics) on the meter it is given.
//! Each record goes to its event's topic (the registry's routing) or `kafka.topic`; every
//! topic the gateway may write to is checked in the background, and a missing one keeps the
//! gateway not ready, named in the reason.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::FutureExt;
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use std::sync::Mutex;

use super::OpenError;
use crate::config::{KafkaConfig, KeyStrategy, RecordMode, RequiredAcks};
use crate::core::delivery::{EventSink, FlushReport, Stored};
use crate::core::error::Error;
use crate::core::event::Event;

/// Statistics older than this no longer prove a broker is reachable.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
const STATS_STALE_AFTER: Duration = Duration::from_secs(10);
/// Consecutive fencing errors after which the producer is replaced (a new producer id).
const FENCED_REBUILD_THRESHOLD: u32 = 3;
/// How often the topics are checked while one is missing or unknown, and once all exist.
const TOPIC_CHECK_PENDING: Duration = Duration::from_secs(1);
const TOPIC_CHECK_SETTLED: Duration = Duration::from_secs(30);

/// Every topic the gateway may write to right now (the registry's topics and `kafka.topic`);
/// asked again on each check, so a reloaded registry's new topics are checked too.
pub type TopicSource = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

#[derive(Debug, Clone, serde::Serialize)]
struct BrokerState {
    name: String,
    state: String,
    rtt_avg_ms: Option<f64>,
    rtt_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default)]
struct StatsSnapshot {
    at: Option<Instant>,
    brokers: Vec<BrokerState>,
    queue_depth: u64,
}

/// What librdkafka's statistics callback leaves for the request path and for health.
#[derive(Default)]
struct Stats {
    /// For `/health/detailed` and metrics, read on those requests only.
    snapshot: Mutex<StatsSnapshot>,
    /// When the latest statistics last showed a broker UP, in ms since `epoch()` (0: none).
    /// An atomic, so the per-request readiness check shares no lock across requests.
    up_at_ms: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that a reading taken at the epoch itself is not mistaken for "never".
    epoch().elapsed().as_millis() as u64 + 1
}

/// librdkafka callbacks: statistics feed readiness and `/health/detailed`; errors are logged.
pub struct GatewayContext {
    stats: Arc<Stats>,
}

impl ClientContext for GatewayContext {
    fn stats(&self, s: Statistics) {
        let mut brokers: Vec<BrokerState> = s
            .brokers
            .values()
            // nodeid -1 entries are bootstrap placeholders, not brokers of the cluster.
            .filter(|b| b.nodeid >= 0)
            .map(|b| BrokerState {
                name: b.name.clone(),
                state: b.state.clone(),
                rtt_avg_ms: b.rtt.as_ref().map(|w| w.avg as f64 / 1000.0),
                rtt_p99_ms: b.rtt.as_ref().map(|w| w.p99 as f64 / 1000.0),
            })
            .collect();
        brokers.sort_by(|a, b| a.name.cmp(&b.name));
        let up = brokers.iter().any(|b| b.state == "UP");
        *self.stats.snapshot.lock().expect("stats lock") = StatsSnapshot {
            at: Some(Instant::now()),
            brokers,
            queue_depth: s.msg_cnt,
        };
        self.stats
            .up_at_ms
            .store(if up { now_ms() } else { 0 }, Ordering::Relaxed);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // Expected while a broker is away; readiness already reflects it.
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
                tracing::warn!(target: "event_gateway::kafka", %error, reason, "kafka broker unreachable")
            }
            _ => {
                tracing::error!(target: "event_gateway::kafka", %error, reason, "kafka client error")
            }
        }
    }
}

type GatewayProducer = FutureProducer<GatewayContext>;

/// Where the records of a produce call come from, for their trace: a request being served
/// (the send span is a child of its span, and the records carry the send span's context), or
/// the spool (the send span starts a trace of its own, linked to the `create` span each record
/// was spooled under, whose context the record keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Request,
    Spool,
}

/// A destination topic's send span, and its context as record headers.
type SendSpan = (String, tracing::Span, Vec<(String, String)>);

/// Links a send span keeps at most (a window of spooled records may name many).
const MAX_LINKS: usize = 128;

/// One `send {topic}` span per destination topic of a call, with the messaging conventions'
/// attributes: (topic, span, the span's context as record headers).
fn send_spans(
    items: &[(&Event, &[(String, String)])],
    destination: &dyn Fn(&Event) -> String,
    origin: Origin,
) -> Vec<SendSpan> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut out: Vec<SendSpan> = Vec::new();
    let mut linked: Vec<opentelemetry::trace::SpanContext> = Vec::new();
    for (e, trace) in items {
        let topic = destination(e);
        let i = match out.iter().position(|s| s.0 == topic) {
            Some(i) => i,
            None => {
                let count = items
                    .iter()
                    .filter(|(x, _)| destination(x) == topic)
                    .count();
                let span = match origin {
                    Origin::Request => tracing::info_span!(
                        "send",
                        otel.name = %format!("send {topic}"),
                        otel.kind = "producer",
                        otel.status_code = tracing::field::Empty,
                        messaging.system = "kafka",
                        messaging.destination.name = %topic,
                        messaging.operation.type = "send",
                        messaging.operation.name = "send",
                        messaging.batch.message_count = count,
                    ),
                    Origin::Spool => tracing::info_span!(
                        parent: None,
                        "send",
                        otel.name = %format!("send {topic}"),
                        otel.kind = "producer",
                        otel.status_code = tracing::field::Empty,
                        messaging.system = "kafka",
                        messaging.destination.name = %topic,
                        messaging.operation.type = "send",
                        messaging.operation.name = "send",
                        messaging.batch.message_count = count,
                    ),
                };
                let headers = crate::telemetry::trace_headers_of(&span);
                out.push((topic, span, headers));
                out.len() - 1
            }
        };
        if origin == Origin::Spool
            && let Some(sc) = crate::telemetry::span_context_of(trace)
            && linked.len() < MAX_LINKS
            && !linked.contains(&sc)
        {
            out[i].1.add_link(sc.clone());
            linked.push(sc);
        }
    }
    out
}

/// Why a record of a produce call was not queued.
enum Held {
    /// librdkafka refused to queue it.
    Failed(KafkaError),
    /// Not tried: an earlier record of the call could not be queued (this error).
    Back(KafkaError),
}

pub struct KafkaSink {
    /// Shared with the metrics callbacks, which read the current producer's in-flight count.
    producer: Arc<ArcSwap<GatewayProducer>>,
    /// Filled by the statistics callback of whichever producer is current.
    rd_stats: Arc<Stats>,
    config: KafkaConfig,
    fenced_in_a_row: AtomicU32,
    rebuilds: Arc<AtomicU32>,
    /// Held while a rebuild runs, so concurrent failures replace the producer once.
    rebuilding: Mutex<()>,
    /// Topics found missing by the last check; until a check completed, not known.
    missing_topics: RwLock<Vec<String>>,
    topics_checked: AtomicBool,
    /// Records acknowledged, by topic (topics come from configuration: a bounded set).
    produced: opentelemetry::metrics::Counter<u64>,
}

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

/// What the sink must do about a failed produce, besides answering the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Nothing: a later attempt may succeed as things are.
    None,
    /// Our configuration or permissions are wrong; an operator must act on this hint.
    FixConfig(&'static str),
    /// The broker refused the producer's id, epoch or sequence: rebuild after
    /// `FENCED_REBUILD_THRESHOLD` of these in a row.
    Fenced,
    /// The producer is unusable: rebuild it now.
    Rebuild,
}

/// What a librdkafka error code means for a produce, in words the rest of the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// May succeed if sent again as it is (a broker away, a leader moving, a full queue).
    Retryable,
    /// The record can never be stored as it is (too large, invalid, refused by a policy).
    TooLarge,
    Refused,
    /// Every record fails alike until the configuration changes (a codec or version the
    /// broker does not support): retried, never given up on record by record sooner than a
    /// passing error would be.
    Misconfigured,
    /// The topic is not there (auto-creation is off): the configuration must change.
    MissingTopic,
    /// Credentials or ACLs: the configuration must change.
    NotAuthorized,
    /// The broker refused the producer's id, epoch or sequence.
    Fenced,
    /// The producer is unusable.
    Fatal,
}

/// The kind of each code. librdkafka answers `is_retriable` / `is_fatal` only on the
/// `rd_kafka_error_t` objects of its newer APIs; a delivery report carries a bare code, so
/// this table follows the classification librdkafka applies to produce errors and Kafka's
/// protocol (the `RetriableException` codes). A code not named here is retryable: the
/// forwarder still gives it up after `spool.give_up_after`, so nothing waits on it for ever.
fn kind_of(code: RDKafkaErrorCode) -> Kind {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize => Kind::TooLarge,
        C::InvalidRequiredAcks
        | C::UnsupportedVersion
        | C::UnsupportedCompressionType
        | C::InvalidConfig => Kind::Misconfigured,
        C::InvalidRecord
        | C::PolicyViolation
        | C::InvalidTopic
        | C::InvalidTimestamp
        | C::UnsupportedForMessageFormat
        | C::InvalidRequest
        | C::BadMessage
        | C::BadCompression
        | C::InvalidArgument
        | C::InvalidType
        | C::InvalidDifferentRecord
        | C::KeySerialization
        | C::ValueSerialization => Kind::Refused,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => {
            Kind::MissingTopic
        }
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::Authentication => Kind::NotAuthorized,
        C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::OutOfOrderSequenceNumber
        | C::UnknownProducerId
        | C::InvalidProducerIdMapping
        | C::Fenced => Kind::Fenced,
        C::Fatal | C::GaplessGuarantee => Kind::Fatal,
        _ => Kind::Retryable,
    }
}

/// The client's answer to a Kafka error and what the sink must do about it. Pure: it reads
/// and changes no state, so every mapping is testable on its own; [`KafkaSink::failed`] acts.
fn classify(err: &KafkaError, topic: &str, config: &KafkaConfig) -> (Error, Recovery) {
    let Some(code) = err.rdkafka_error_code() else {
        return (Error::unavailable(format!("kafka: {err}")), Recovery::None);
    };
    match kind_of(code) {
        Kind::Retryable if code == RDKafkaErrorCode::QueueFull => (
            Error::unavailable(
                "the Kafka producer queue is full (kafka.queue_max_messages); retry shortly",
            ),
            Recovery::None,
        ),
        Kind::Retryable => (
            Error::unavailable(format!("Kafka did not store the event: {code}")),
            Recovery::None,
        ),
        Kind::TooLarge => (
            Error::TooLarge {
                what: "the event as a Kafka record".into(),
                limit: u64::from(config.message_max_bytes),
                size: None,
            },
            Recovery::None,
        ),
        Kind::Refused => (
            Error::Internal(format!("Kafka refused the record for good: {code}")),
            Recovery::FixConfig(
                "Kafka refuses these records for good: check the topic's configuration (policies, compaction needs a key) and kafka.* settings",
            ),
        ),
        Kind::Misconfigured => (
            Error::unavailable(format!("Kafka refused the producer's settings: {code}")),
            Recovery::FixConfig(
                "Kafka refuses every record with these settings: check kafka.compression, kafka.required_acks and kafka.librdkafka against the brokers",
            ),
        ),
        Kind::MissingTopic => (
            Error::Internal(format!("Kafka topic `{topic}` does not exist")),
            Recovery::FixConfig(
                "Kafka topic does not exist: create it (auto-creation is off) or fix kafka.topic / types.entries[].topic",
            ),
        ),
        Kind::NotAuthorized => (
            Error::Internal(format!("not authorized to write to Kafka: {code}")),
            Recovery::FixConfig(
                "the gateway is not allowed to write to Kafka: fix the credentials or ACLs",
            ),
        ),
        Kind::Fenced => (
            Error::unavailable(format!(
                "the Kafka producer is being reset after {code}; retry"
            )),
            Recovery::Fenced,
        ),
        Kind::Fatal => (
            Error::unavailable(format!(
                "the Kafka producer is being reset after {code}; retry"
            )),
            Recovery::Rebuild,
        ),
    }
}

impl KafkaSink {
    /// Builds the producer and starts checking the topics `topics` names.
    pub fn new(
        config: &KafkaConfig,
        topics: TopicSource,
        meter: &Meter,
    ) -> Result<Arc<Self>, OpenError> {
        let stats = Arc::new(Stats::default());
        let producer = Self::build(config, stats.clone())?;
        let sink = Arc::new(Self {
            producer: Arc::new(ArcSwap::from_pointee(producer)),
            rd_stats: stats,
            config: config.clone(),
            fenced_in_a_row: AtomicU32::new(0),
            rebuilds: Arc::new(AtomicU32::new(0)),
            rebuilding: Mutex::new(()),
            missing_topics: RwLock::new(Vec::new()),
            topics_checked: AtomicBool::new(false),
            produced: meter
                .u64_counter("kafka_events_produced")
                .with_description("Records the brokers acknowledged, by topic")
                .build(),
        });
        sink.register_instruments(meter);
        let weak = Arc::downgrade(&sink);
        std::thread::Builder::new()
            .name("kafka-topic-check".into())
            .spawn(move || check_topics(weak, topics))
            .map_err(|e| OpenError::Thread(e.to_string()))?;
        Ok(sink)
    }

    /// Asks the brokers about each topic; None when they could not be asked.
    fn missing_now(&self, topics: &[String]) -> Option<Vec<String>> {
        let producer = self.producer.load_full();
        let mut missing = Vec::new();
        for topic in topics {
            let md = producer
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()?;
            let known = md
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            if !known {
                missing.push(topic.clone());
            }
        }
        Some(missing)
    }

    fn build(config: &KafkaConfig, stats: Arc<Stats>) -> Result<GatewayProducer, KafkaError> {
        client_config(config).create_with_context(GatewayContext { stats })
    }

    /// The `kafka_*` gauges, read from librdkafka's latest statistics at scrape time.
    fn register_instruments(&self, meter: &Meter) {
        let stats = self.rd_stats.clone();
        meter
            .i64_observable_gauge("kafka_producer_queue_depth")
            .with_description("Messages waiting in the producer queue")
            .with_callback(move |o| {
                let depth = stats.snapshot.lock().expect("stats lock").queue_depth;
                o.observe(depth as i64, &[]);
            })
            .build();
        let producer = self.producer.clone();
        meter
            .i64_observable_gauge("kafka_producer_in_flight")
            .with_description("Messages produced but not yet acknowledged")
            .with_callback(move |o| o.observe(i64::from(producer.load().in_flight_count()), &[]))
            .build();
        let stats = self.rd_stats.clone();
        meter
            .f64_observable_gauge("kafka_broker_rtt")
            .with_unit("s")
            .with_description("Average broker round-trip time from librdkafka statistics")
            .with_callback(move |o| {
                let snap = stats.snapshot.lock().expect("stats lock");
                for b in &snap.brokers {
                    if let Some(rtt_ms) = b.rtt_avg_ms {
                        o.observe(rtt_ms / 1000.0, &[KeyValue::new("broker", b.name.clone())]);
                    }
                }
            })
            .build();
        let stats = self.rd_stats.clone();
        meter
            .i64_observable_gauge("kafka_brokers_up")
            .with_description("Brokers in state UP in librdkafka statistics")
            .with_callback(move |o| {
                let snap = stats.snapshot.lock().expect("stats lock");
                o.observe(
                    snap.brokers.iter().filter(|b| b.state == "UP").count() as i64,
                    &[],
                );
            })
            .build();
        let rebuilds = self.rebuilds.clone();
        meter
            .u64_observable_counter("kafka_producer_rebuilds")
            .with_description("Times the producer was replaced after a fatal or fencing error")
            .with_callback(move |o| o.observe(u64::from(rebuilds.load(Ordering::Relaxed)), &[]))
            .build();
    }

    /// True when statistics no older than `STATS_STALE_AFTER` showed at least one broker UP.
    fn broker_reachable(&self) -> bool {
        let up_at = self.rd_stats.up_at_ms.load(Ordering::Relaxed);
        up_at != 0 && now_ms().saturating_sub(up_at) < STATS_STALE_AFTER.as_millis() as u64
    }

    fn record_key<'e>(&self, e: &'e Event) -> Option<&'e str> {
        let pk = e.extensions.get("partitionkey").map(String::as_str);
        let subject = e.subject.as_deref();
        let key = match self.config.key_strategy {
            KeyStrategy::PartitionkeyOrSubject => pk.or(subject),
            KeyStrategy::Partitionkey => pk,
            KeyStrategy::Subject => subject,
            KeyStrategy::None => None,
        };
        // An empty key would hash every record onto one partition; no key means sticky
        // partitioning instead. Validation already refuses empty values; this keeps it so.
        key.filter(|k| !k.is_empty())
    }

    /// Replaces the producer after a fatal error or repeated fencing; the old one is flushed in
    /// the background so whatever it still holds is delivered or reported.
    fn rebuild(&self, why: &str) {
        let Ok(_guard) = self.rebuilding.try_lock() else {
            return; // another request is replacing it right now
        };
        match Self::build(&self.config, self.rd_stats.clone()) {
            Ok(p) => {
                let old = self.producer.swap(Arc::new(p));
                self.fenced_in_a_row.store(0, Ordering::Relaxed);
                let n = self.rebuilds.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(why, rebuilds = n, "rebuilt the Kafka producer");
                let timeout = self.config.message_timeout;
                tokio::task::spawn_blocking(move || {
                    let _ = old.flush(timeout);
                });
            }
            Err(e) => tracing::error!(error = %e, "could not rebuild the Kafka producer"),
        }
    }

    /// Answers a failed produce and acts on its classification: the one place where a
    /// failure changes the sink's state.
    fn failed(&self, err: &KafkaError, topic: &str) -> Error {
        let (error, recovery) = classify(err, topic, &self.config);
        match recovery {
            Recovery::None => {}
            Recovery::FixConfig(hint) => {
                tracing::error!(topic, error = %err, "{hint}");
            }
            Recovery::Fenced => {
                let n = self.fenced_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= FENCED_REBUILD_THRESHOLD {
                    self.rebuild(&format!("{err} ({n} in a row)"));
                }
            }
            Recovery::Rebuild => self.rebuild(&err.to_string()),
        }
        error
    }

    /// Produces each event with its trace headers, enqueuing all before awaiting any report,
    /// so one batch shares produce requests. `dead_letter` = (topic, why): every event goes
    /// there instead, with headers naming the error and the topic it was meant for.
    async fn produce(
        &self,
        items: &[(&Event, &[(String, String)])],
        dead_letter: Option<(&str, &str)>,
        origin: Origin,
    ) -> Vec<Result<Stored, Error>> {
        {
            let events = items;
            if let Some((code, reason)) = self.producer.load().client().fatal_error() {
                self.rebuild(&format!("fatal error {code}: {reason}"));
            }
            if !self.broker_reachable() {
                return events
                    .iter()
                    .map(|_| {
                        Err(Error::unavailable(
                            "no Kafka broker is reachable; retry shortly",
                        ))
                    })
                    .collect();
            }
            let producer = self.producer.load_full();
            // Enqueue every event before awaiting any report, so one batch shares produce
            // requests; a full queue fails only the events that did not fit, at once.
            let structured: Vec<Option<Vec<u8>>> = events
                .iter()
                .map(|(e, _)| match self.config.record_mode {
                    RecordMode::Structured => Some(e.to_structured_json()),
                    RecordMode::Binary => None,
                })
                .collect();
            let mut pending = Vec::with_capacity(events.len());
            // After a record that could not be queued for a reason that passes (a full queue),
            // the rest of the call is not queued either: a later record of the same key must
            // not reach Kafka before it (the forwarder's order per key, a batch's order).
            let mut held_back: Option<KafkaError> = None;
            let destination = |e: &Event| -> String {
                match dead_letter {
                    Some((dlq, _)) => dlq.to_owned(),
                    None => e.topic.as_deref().unwrap_or(&self.config.topic).to_owned(),
                }
            };
            let spans = send_spans(events, &destination, origin);
            for ((e, trace), body) in events.iter().zip(&structured) {
                let meant = e.topic.as_deref().unwrap_or(&self.config.topic);
                let trace = match origin {
                    // The send span's context, so a consumer continues the request's trace.
                    Origin::Request => {
                        let to = destination(e);
                        spans
                            .iter()
                            .find(|s| s.0 == to)
                            .map(|s| s.2.as_slice())
                            .unwrap_or(trace)
                    }
                    // The context stored when it was spooled (its `create` span).
                    Origin::Spool => trace,
                };
                let mut headers = self.record_headers(e, trace);
                let topic = match dead_letter {
                    None => meant,
                    Some((dlq, why)) => {
                        headers = headers
                            .insert(Header {
                                key: "eventgateway-error",
                                value: Some(why.as_bytes()),
                            })
                            .insert(Header {
                                key: "eventgateway-topic",
                                value: Some(meant.as_bytes()),
                            });
                        dlq
                    }
                };
                let mut record: FutureRecord<'_, str, [u8]> =
                    FutureRecord::to(topic).headers(headers);
                let value = match body {
                    Some(b) => Some(b.as_slice()),
                    None => e.data_bytes(),
                };
                if let Some(v) = value {
                    record = record.payload(v);
                }
                if let Some(k) = self.record_key(e) {
                    record = record.key(k);
                }
                if let Some(first) = &held_back {
                    // Queued after a record that could not be: it would overtake it.
                    pending.push(Err(Held::Back(first.clone())));
                    continue;
                }
                match producer.send_result(record) {
                    Ok(f) => pending.push(Ok(f)),
                    Err((err, _)) => {
                        if err
                            .rdkafka_error_code()
                            .is_none_or(|c| kind_of(c) == Kind::Retryable)
                        {
                            held_back = Some(err.clone());
                        }
                        pending.push(Err(Held::Failed(err)));
                    }
                }
            }
            let mut out = Vec::with_capacity(events.len());
            // Acknowledged records per topic, added to the counter once per topic rather than
            // once per event (a batch names few topics).
            let mut produced: Vec<(&str, u64)> = Vec::new();
            for (p, (e, _)) in pending.into_iter().zip(events) {
                let topic = dead_letter
                    .map(|(dlq, _)| dlq)
                    .unwrap_or_else(|| e.topic.as_deref().unwrap_or(&self.config.topic));
                let r = match p {
                    Err(Held::Failed(err)) => Err(self.failed(&err, topic)),
                    Err(Held::Back(first)) => Err(Error::unavailable(format!(
                        "not sent: an earlier event of the request could not be queued ({first}); retry"
                    ))),
                    Ok(fut) => match fut.await {
                        Ok(Ok(d)) => {
                            self.fenced_in_a_row.store(0, Ordering::Relaxed);
                            match produced.iter_mut().find(|(t, _)| *t == topic) {
                                Some((_, n)) => *n += 1,
                                None => produced.push((topic, 1)),
                            }
                            Ok(Stored {
                                partition: d.partition,
                                offset: d.offset,
                            })
                        }
                        Ok(Err((err, _msg))) => Err(self.failed(&err, topic)),
                        Err(_canceled) => Err(Error::unavailable(
                            "the Kafka producer was replaced before reporting; retry",
                        )),
                    },
                };
                if r.is_err()
                    && let Some(s) = spans.iter().find(|s| s.0 == topic)
                {
                    s.1.record("otel.status_code", "error");
                }
                out.push(r);
            }
            for (topic, n) in produced {
                self.produced
                    .add(n, &[KeyValue::new("topic", topic.to_owned())]);
            }
            out
        }
    }

    fn record_headers(&self, e: &Event, trace: &[(String, String)]) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(10 + e.extensions.len());
        // The gateway's own span context (a child of the client's traceparent, if any), so
        // consumers continue the request's trace. The event's own `traceparent` extension, if
        // any, travels unchanged as `ce_traceparent`.
        for (k, v) in trace {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        match self.config.record_mode {
            RecordMode::Binary => {
                for (name, value) in e.binary_attributes() {
                    let key = format!("ce_{name}");
                    h = h.insert(Header {
                        key: &key,
                        value: Some(value.as_bytes()),
                    });
                }
                if let Some(ct) = e.effective_content_type() {
                    h = h.insert(Header {
                        key: "content-type",
                        value: Some(ct.as_bytes()),
                    });
                }
            }
            RecordMode::Structured => {
                h = h.insert(Header {
                    key: "content-type",
                    value: Some(b"application/cloudevents+json; charset=utf-8".as_slice()),
                });
            }
        }
        h
    }
}

impl EventSink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Vec<Result<Stored, Error>>> {
        async move {
            let trace = crate::telemetry::current_trace_headers();
            let items: Vec<(&Event, &[(String, String)])> =
                events.iter().map(|e| (e, trace.as_slice())).collect();
            self.produce(&items, None, Origin::Request).await
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        self.broker_reachable()
            && self.producer.load().client().fatal_error().is_none()
            && self.topics_checked.load(Ordering::Relaxed)
            && self.missing_topics.read().expect("topics lock").is_empty()
    }

    fn not_ready_reason(&self) -> String {
        let missing = self.missing_topics.read().expect("topics lock");
        if !self.broker_reachable() {
            "no Kafka broker is reachable".into()
        } else if let Some((code, reason)) = self.producer.load().client().fatal_error() {
            format!("the Kafka producer failed ({code}: {reason}) and is being rebuilt")
        } else if !missing.is_empty() {
            format!(
                "Kafka topics do not exist: {} (create them: auto-creation is off)",
                missing.join(", ")
            )
        } else if !self.topics_checked.load(Ordering::Relaxed) {
            "checking that the Kafka topics exist".into()
        } else {
            "ready".into()
        }
    }

    fn details(&self) -> serde_json::Value {
        let snap = self.rd_stats.snapshot.lock().expect("stats lock").clone();
        serde_json::json!({
            "sink": "kafka",
            "topic": self.config.topic,
            "brokers_configured": self.config.brokers,
            "brokers": snap.brokers,
            "stats_age_ms": snap.at.map(|a| a.elapsed().as_millis() as u64),
            "queue_depth": snap.queue_depth,
            "in_flight": self.producer.load().in_flight_count(),
            "producer_rebuilds": self.rebuilds.load(Ordering::Relaxed),
            "missing_topics": *self.missing_topics.read().expect("topics lock"),
            "required_acks": self.config.required_acks.as_librdkafka(),
            "record_mode": self.config.record_mode,
        })
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, FlushReport> {
        let producer = self.producer.load_full();
        async move {
            // rdkafka's Drop purges the queue and flushes for only 500 ms: flush explicitly.
            let p = producer.clone();
            let _ = tokio::task::spawn_blocking(move || p.flush(timeout)).await;
            let undelivered = producer.in_flight_count().max(0) as usize;
            if undelivered > 0 {
                tracing::error!(
                    undelivered,
                    "shutdown flush ended with events still undelivered"
                );
            }
            FlushReport { undelivered }
        }
        .boxed()
    }
}

/// The forwarder's destination: spooled records go out exactly as a direct produce would
/// send them (same record, key and headers; the trace headers of the request that spooled
/// them), and to `kafka.dead_letter_topic` when Kafka refuses them for good.
impl crate::spool::forward::Destination for KafkaSink {
    fn send<'a>(
        &'a self,
        records: &'a [crate::spool::Record],
    ) -> BoxFuture<'a, Vec<Result<Stored, Error>>> {
        async move {
            let items: Vec<(&Event, &[(String, String)])> = records
                .iter()
                .map(|r| (&r.event, r.trace.as_slice()))
                .collect();
            self.produce(&items, None, Origin::Spool).await
        }
        .boxed()
    }

    fn dead_letter<'a>(
        &'a self,
        record: &'a crate::spool::Record,
        why: &'a str,
    ) -> Option<BoxFuture<'a, Result<Stored, Error>>> {
        let dlq = self.config.dead_letter_topic.as_deref()?;
        Some(
            async move {
                self.produce(
                    &[(&record.event, record.trace.as_slice())],
                    Some((dlq, why)),
                    Origin::Spool,
                )
                .await
                .pop()
                .expect("one result per record")
            }
            .boxed(),
        )
    }

    /// The topic and the record's key as `kafka.key_strategy` picks it: the partition, and so
    /// the order Kafka keeps.
    fn ordering_key(&self, record: &crate::spool::Record) -> Option<String> {
        let key = self.record_key(&record.event)?;
        let topic = record.topic.as_deref().unwrap_or(&self.config.topic);
        Some(format!("{topic}\u{0}{key}"))
    }

    /// A broker is reachable and the topics were checked once (records for a topic found
    /// missing are then refused, retried and finally dead-lettered or parked, not waited
    /// for with the whole spool).
    fn ready(&self) -> bool {
        self.broker_reachable() && self.topics_checked.load(Ordering::Relaxed)
    }
}

/// The topic check loop: every `TOPIC_CHECK_PENDING` until all topics exist, then every
/// `TOPIC_CHECK_SETTLED`; ends when the sink is gone. A thread, not a task: librdkafka's
/// metadata call blocks.
fn check_topics(sink: Weak<KafkaSink>, topics: TopicSource) {
    loop {
        let Some(s) = sink.upgrade() else { return };
        let wanted = topics();
        let settled = match s.missing_now(&wanted) {
            Some(missing) => {
                if !missing.is_empty() {
                    tracing::error!(topics = %missing.join(","), "Kafka topics do not exist: create them (auto-creation is off) or fix the configuration");
                }
                let settled = missing.is_empty();
                *s.missing_topics.write().expect("topics lock") = missing;
                s.topics_checked.store(true, Ordering::Relaxed);
                settled
            }
            None => false,
        };
        drop(s);
        std::thread::sleep(if settled {
            TOPIC_CHECK_SETTLED
        } else {
            TOPIC_CHECK_PENDING
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: a librdkafka error code, the client's gRPC-level answer and the recovery.
    #[test]
    fn classification_is_a_pure_table() {
        use RDKafkaErrorCode as C;
        let config = KafkaConfig::default();
        let rows: &[(C, &str, Recovery)] = &[
            (C::QueueFull, "unavailable", Recovery::None),
            (C::MessageSizeTooLarge, "too_large", Recovery::None),
            (C::MessageTimedOut, "unavailable", Recovery::None),
            (C::BrokerTransportFailure, "unavailable", Recovery::None),
            (C::ProducerFenced, "unavailable", Recovery::Fenced),
            (C::InvalidProducerEpoch, "unavailable", Recovery::Fenced),
            (C::OutOfOrderSequenceNumber, "unavailable", Recovery::Fenced),
            (C::Fatal, "unavailable", Recovery::Rebuild),
        ];
        for (code, reason, recovery) in rows {
            let err = KafkaError::MessageProduction(*code);
            let (e, r) = classify(&err, "t", &config);
            assert_eq!((e.reason(), r), (*reason, *recovery), "{code:?}");
        }
        for code in [
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
            C::SaslAuthenticationFailed,
        ] {
            let (e, r) = classify(&KafkaError::MessageProduction(code), "t", &config);
            assert_eq!(e.reason(), "internal", "{code:?}");
            assert!(matches!(r, Recovery::FixConfig(_)), "{code:?}");
        }
        // Classifying twice gives the same answer: nothing was counted in between.
        let fenced = KafkaError::MessageProduction(C::ProducerFenced);
        assert_eq!(
            classify(&fenced, "t", &config).1,
            classify(&fenced, "t", &config).1
        );
    }

    /// Errors that can never succeed as they are must not be retryable: they were, so one
    /// such record stalled the spool until `max_age` refused everything.
    #[test]
    fn permanent_kafka_errors_are_not_retryable() {
        use RDKafkaErrorCode as C;
        let config = KafkaConfig::default();
        for code in [
            C::InvalidRecord,
            C::PolicyViolation,
            C::MessageBatchTooLarge,
            C::MessageSizeTooLarge,
            C::InvalidTopic,
            C::UnknownTopic,
            C::UnknownTopicOrPartition,
            C::InvalidTimestamp,
            C::UnsupportedForMessageFormat,
            C::TopicAuthorizationFailed,
        ] {
            let (e, _) = classify(&KafkaError::MessageProduction(code), "t", &config);
            assert!(!e.is_retryable(), "{code:?} must not be retried for ever");
        }
        for code in [
            C::QueueFull,
            C::MessageTimedOut,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::RequestTimedOut,
            C::NetworkException,
            C::KafkaStorageError,
            C::AllBrokersDown,
        ] {
            let (e, _) = classify(&KafkaError::MessageProduction(code), "t", &config);
            assert!(e.is_retryable(), "{code:?} passes and is retried");
        }
    }
}
