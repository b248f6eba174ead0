//! Telemetry setup: logs (text or JSON lines, RUST_LOG or `logging.level`), traces through
//! tracing-opentelemetry with W3C trace context propagation (exported over OTLP when the
//! standard `OTEL_*` variables ask for it), the metrics registry in [`metrics`] and the shared
//! instrument conventions in [`instruments`], and [`throttle`] for log lines a flood could
//! multiply. The core and the sinks may use [`instruments`], [`throttle`],
//! [`current_trace_headers`] and an OpenTelemetry `Meter` handed to them; only `server.rs`
//! touches [`metrics`].
pub mod instruments;
pub mod metrics;
pub mod throttle;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, LoggingConfig};

/// True when the environment asks for OTLP trace export.
fn otlp_requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
    set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "otlp")
}

/// Installs the global subscriber and tracer provider; a second call (tests) changes nothing.
/// Spans get real trace ids even without an exporter, so trace context still reaches Kafka
/// record headers. Returns the provider so `main` can flush it at exit.
pub fn init(config: &LoggingConfig) -> SdkTracerProvider {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let mut builder = SdkTracerProvider::builder();
    if otlp_requested() {
        // The exporter reads OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout) itself.
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => eprintln!("event-gateway: OTLP trace export disabled: {e}"),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer("event-gateway");
    global::set_tracer_provider(provider.clone());

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let fmt = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    provider
}

/// The W3C trace context of the current span as `traceparent` (and `tracestate`) pairs, for
/// the Kafka record headers, so consumers continue the request's trace.
pub fn current_trace_headers() -> Vec<(String, String)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    let mut out = std::collections::HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut out));
    out.into_iter().collect()
}
