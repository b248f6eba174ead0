//! The gateway's metrics: OpenTelemetry instruments read by a Prometheus exporter into a
//! registry of this gateway's own (so several gateways in one test process stay apart), and
//! the cap that keeps client-chosen label values (`type`, `source`) to a bounded set.
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _, UpDownCounter};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::sink::EventSink;

/// Latency buckets in seconds, fine enough to tell 100 µs from 250 µs.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Distinct values one client-chosen label may take before further values read `other`.
pub const LABEL_CARDINALITY_CAP: usize = 100;

/// Remembers the first `cap` values seen; later new values map to `other`. A read lock on the
/// hot path; the write lock only while the set is still filling.
pub struct LabelCap {
    cap: usize,
    seen: RwLock<HashSet<String>>,
}

impl LabelCap {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: RwLock::new(HashSet::new()),
        }
    }

    pub fn label(&self, value: &str) -> String {
        if self.seen.read().expect("label lock").contains(value) {
            return value.to_owned();
        }
        let mut seen = self.seen.write().expect("label lock");
        if seen.contains(value) || seen.len() < self.cap {
            seen.insert(value.to_owned());
            value.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

pub struct Metrics {
    registry: Registry,
    _provider: SdkMeterProvider,
    pub http_requests: Counter<u64>,
    pub http_duration: Histogram<f64>,
    pub active_connections: UpDownCounter<i64>,
    pub grpc_requests: Counter<u64>,
    pub events_ingested: Counter<u64>,
    pub events_failed: Counter<u64>,
    pub sink_publish_duration: Histogram<f64>,
    types: LabelCap,
    sources: LabelCap,
}

impl Metrics {
    /// Builds the instruments; `sink` feeds the producer gauges at scrape time.
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        let registry = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds: for dashboards.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("a fresh registry takes the process collector");
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .expect("the prometheus exporter builds with a fresh registry");
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter: Meter = provider.meter("event_gateway");

        // The exporter appends `_total` to counters and `_seconds` to unit "s".
        let http_requests = meter
            .u64_counter("http_requests")
            .with_description("HTTP requests by method, endpoint (route) and status")
            .build();
        let http_duration = meter
            .f64_histogram("http_request_duration")
            .with_unit("s")
            .with_description("Time from request to response headers")
            .with_boundaries(LATENCY_BUCKETS.to_vec())
            .build();
        let active_connections = meter
            .i64_up_down_counter("http_active_connections")
            .with_description("Open client connections (HTTP/1 and HTTP/2)")
            .build();
        let grpc_requests = meter
            .u64_counter("grpc_server_requests")
            .with_description("gRPC calls by method and status code")
            .build();
        let events_ingested = meter
            .u64_counter("events_ingested")
            .with_description("Events stored, by type and source (capped label sets)")
            .build();
        let events_failed = meter
            .u64_counter("events_ingested_failed")
            .with_description("Events not stored, by reason")
            .build();
        let sink_publish_duration = meter
            .f64_histogram("sink_publish_duration")
            .with_unit("s")
            .with_description("Time from handing events to the sink to the last acknowledgement")
            .with_boundaries(LATENCY_BUCKETS.to_vec())
            .build();

        let s = sink.clone();
        let _queue = meter
            .i64_observable_gauge("kafka_producer_queue_depth")
            .with_description("Messages waiting in the producer queue (0 for the local log)")
            .with_callback(move |o| o.observe(s.stats().queue_depth as i64, &[]))
            .build();
        let s = sink.clone();
        let _in_flight = meter
            .i64_observable_gauge("kafka_producer_in_flight")
            .with_description("Messages produced but not yet acknowledged")
            .with_callback(move |o| o.observe(s.stats().in_flight, &[]))
            .build();
        let s = sink.clone();
        let _rtt = meter
            .f64_observable_gauge("kafka_broker_rtt")
            .with_unit("s")
            .with_description("Average broker round-trip time from librdkafka statistics")
            .with_callback(move |o| {
                for (broker, rtt_ms) in s.stats().broker_rtt_ms {
                    o.observe(rtt_ms / 1000.0, &[KeyValue::new("broker", broker)]);
                }
            })
            .build();
        let s = sink;
        let _up = meter
            .i64_observable_gauge("kafka_brokers_up")
            .with_description("Brokers in state UP (the local log reports 1 when writable)")
            .with_callback(move |o| o.observe(s.stats().brokers_up as i64, &[]))
            .build();

        Self {
            registry,
            _provider: provider,
            http_requests,
            http_duration,
            active_connections,
            grpc_requests,
            events_ingested,
            events_failed,
            sink_publish_duration,
            types: LabelCap::new(LABEL_CARDINALITY_CAP),
            sources: LabelCap::new(LABEL_CARDINALITY_CAP),
        }
    }

    pub fn event_stored(&self, ty: &str, source: &str) {
        self.events_ingested.add(
            1,
            &[
                KeyValue::new("type", self.types.label(ty)),
                KeyValue::new("source", self.sources.label(source)),
            ],
        );
    }

    pub fn events_failed(&self, n: u64, reason: &'static str) {
        self.events_failed
            .add(n, &[KeyValue::new("reason", reason)]);
    }

    pub fn sink_published(&self, sink: &'static str, took: Duration) {
        self.sink_publish_duration
            .record(took.as_secs_f64(), &[KeyValue::new("sink", sink)]);
    }

    /// The Prometheus text exposition of every instrument.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_cap_bounds_distinct_values() {
        let cap = LabelCap::new(3);
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("b"), "b");
        assert_eq!(cap.label("c"), "c");
        assert_eq!(cap.label("d"), "other");
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("e"), "other");
    }
}
