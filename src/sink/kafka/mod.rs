//! The Kafka sink (rdkafka): turns events into records per the CloudEvents Kafka protocol
//! binding, answers only after each delivery report, classifies Kafka errors as retryable
//! (UNAVAILABLE) or permanent, derives readiness from librdkafka statistics, rebuilds the
//! producer after fatal or fencing errors so the gateway recovers without a restart, and
//! registers the `kafka_*` instruments (fed by those statistics) on the meter it is given.
//! `config` makes the client settings, `classify` sorts errors, `stats` keeps librdkafka's
//! statistics, `spans` traces each produce call.
//! Each record goes to its event's topic (the registry's routing) or `kafka.topic`; every
//! topic the gateway may write to is checked in the background, and a missing one keeps the
//! gateway not ready, named in the reason.
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::sync::Mutex;

mod classify;
mod config;
mod spans;
mod stats;

pub use config::client_config;
pub use stats::GatewayContext;

use classify::{Kind, Recovery, classify, kind_of};
use spans::{Origin, SendSpan, send_spans};
use stats::{STATS_STALE_AFTER, Stats, now_ms};

use super::OpenError;
use crate::config::{KafkaConfig, KeyStrategy, RecordMode};
use crate::core::delivery::{EventSink, FlushReport, Stored};
use crate::core::error::Error;
use crate::core::event::Event;

/// Consecutive fencing errors after which the producer is replaced (a new producer id).
const FENCED_REBUILD_THRESHOLD: u32 = 3;
/// How often the topics are checked while one is missing or unknown, and once all exist.
const TOPIC_CHECK_PENDING: Duration = Duration::from_secs(1);
const TOPIC_CHECK_SETTLED: Duration = Duration::from_secs(30);

/// Every topic the gateway may write to right now (the registry's topics and `kafka.topic`);
/// asked again on each check, so a reloaded registry's new topics are checked too.
pub type TopicSource = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

type GatewayProducer = FutureProducer<GatewayContext>;

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
        events: &[(&Event, &[(String, String)])],
        dead_letter: Option<(&str, &str)>,
        origin: Origin,
    ) -> Vec<Result<Stored, Error>> {
        if let Some((code, reason)) = self.producer.load().client().fatal_error() {
            self.rebuild(&format!("fatal error {code}: {reason}"));
        }
        if !self.broker_reachable() {
            let down = Error::unavailable("no Kafka broker is reachable; retry shortly");
            return events.iter().map(|_| Err(down.clone())).collect();
        }
        let spans = send_spans(
            events,
            &|e| self.destination(e, dead_letter).to_owned(),
            origin,
        );
        let pending = self.enqueue(events, dead_letter, origin, &spans);
        self.await_reports(pending, events, dead_letter, &spans)
            .await
    }

    /// Where `e` goes: the dead-letter topic when given, else its routed topic or `kafka.topic`.
    fn destination<'a>(&'a self, e: &'a Event, dead_letter: Option<(&'a str, &str)>) -> &'a str {
        match dead_letter {
            Some((dlq, _)) => dlq,
            None => e.topic.as_deref().unwrap_or(&self.config.topic),
        }
    }

    /// Queues every event's record with librdkafka, without waiting; a full queue fails only
    /// the events that did not fit, at once.
    fn enqueue(
        &self,
        events: &[(&Event, &[(String, String)])],
        dead_letter: Option<(&str, &str)>,
        origin: Origin,
        spans: &[SendSpan],
    ) -> Vec<Result<DeliveryFuture, Held>> {
        let producer = self.producer.load_full();
        let mut pending = Vec::with_capacity(events.len());
        // After a record that could not be queued for a reason that passes (a full queue),
        // the rest of the call is not queued either: a later record of the same key must not
        // reach Kafka before it (the forwarder's order per key, a batch's order).
        let mut held_back: Option<KafkaError> = None;
        for (e, trace) in events {
            let body = match self.config.record_mode {
                RecordMode::Structured => Some(e.to_structured_json()),
                RecordMode::Binary => None,
            };
            let meant = e.topic.as_deref().unwrap_or(&self.config.topic);
            let trace = match origin {
                // The send span's context, so a consumer continues the request's trace.
                Origin::Request => {
                    let to = self.destination(e, dead_letter);
                    spans
                        .iter()
                        .find(|s| s.0 == to)
                        .map(|s| s.2.as_slice())
                        // send_spans makes one per destination with this same `destination`.
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
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).headers(headers);
            let value = match &body {
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
        pending
    }

    /// Each event's outcome, in order, once its delivery report is in; errors mark their
    /// topic's send span, and acknowledged records are counted once per topic.
    async fn await_reports(
        &self,
        pending: Vec<Result<DeliveryFuture, Held>>,
        events: &[(&Event, &[(String, String)])],
        dead_letter: Option<(&str, &str)>,
        spans: &[SendSpan],
    ) -> Vec<Result<Stored, Error>> {
        let mut out = Vec::with_capacity(events.len());
        // Acknowledged records per topic, added to the counter once per topic rather than
        // once per event (a batch names few topics).
        let mut produced: Vec<(&str, u64)> = Vec::new();
        for (p, (e, _)) in pending.into_iter().zip(events) {
            let topic = self.destination(e, dead_letter);
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

    fn record_headers(&self, e: &Event, trace: &[(String, String)]) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(
            10 + e.extensions_len() + e.forwarded.as_ref().map_or(0, |f| f.len()),
        );
        // The gateway's own span context (a child of the client's traceparent, if any), so
        // consumers continue the request's trace. The event's own `traceparent` extension, if
        // any, travels unchanged as `ce_traceparent`.
        for (k, v) in trace {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        // `kafka.forward_headers`: the request's chosen headers, as it sent them.
        for (k, v) in e.forwarded.iter().flat_map(|f| f.iter()) {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        match self.config.record_mode {
            RecordMode::Binary => {
                // One buffer for every `ce_*` name: librdkafka copies the key, and a format!
                // per attribute was 5K instructions per record (#31).
                let mut key = String::with_capacity(32);
                for (name, value) in e.binary_attributes() {
                    key.clear();
                    key.push_str("ce_");
                    key.push_str(name);
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
            // No trace of their own: a request's records carry the context of their topic's
            // `send` span (made in `produce`, one per destination), not the request span's, so
            // computing the request span's headers here was spent for nothing (#31).
            let items: Vec<(&Event, &[(String, String)])> =
                events.iter().map(|e| (e, [].as_slice())).collect();
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
