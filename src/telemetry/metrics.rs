//! The metrics registry wiring: an OpenTelemetry meter provider read by a Prometheus exporter
//! into a registry of this gateway's own (so several gateways in one test process stay apart),
//! plus the process collector. It owns no instruments: each part of the gateway (the core, each
//! sink, the stack) builds its own from the [`Meter`] handed to it, so nothing here knows what
//! a sink is. Only `server` builds one of these.
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};

pub struct MetricsRegistry {
    registry: Registry,
    provider: SdkMeterProvider,
}

impl MetricsRegistry {
    pub fn new() -> Self {
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
        Self { registry, provider }
    }

    /// The meter every part of the gateway builds its instruments from. The exporter appends
    /// `_total` to counters and `_seconds` to unit "s".
    pub fn meter(&self) -> Meter {
        self.provider.meter("event_gateway")
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

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}
