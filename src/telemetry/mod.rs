//! Telemetry setup: logs (text or JSON lines, RUST_LOG or `logging.level`), traces (a
//! request's server span made with [`tracer`], the spans inside it through
//! tracing-opentelemetry) with W3C trace context propagation (exported over OTLP when the
//! standard `OTEL_*` variables ask for it), the metrics registry in [`metrics`] and the shared
//! instrument conventions in [`instruments`], and [`throttle`] for log lines a flood could
//! multiply. The core and the sinks may use [`instruments`], [`throttle`],
//! [`trace_headers_of`], [`span_context_of`], [`CurrentTrace`] and an OpenTelemetry `Meter`
//! handed to them;
//! only `server` touches [`metrics`].
pub mod export;
pub mod instruments;
pub mod metrics;
pub mod throttle;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

/// `service.name` unless the environment names another.
pub const SERVICE_NAME: &str = "event-gateway";
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, LoggingConfig};

/// True when the environment asks for OTLP trace export.
fn otlp_requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
    (set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "otlp"))
        && !std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none")
        && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The resource spans are reported under: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
/// as the specification says, `service.name` defaulting to `event-gateway` (not the SDK's
/// `unknown_service`) and `service.version` to this build's version.
fn resource() -> Resource {
    let from_env = Resource::builder().build();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    let mut b = Resource::builder();
    if !named {
        b = b.with_service_name(SERVICE_NAME);
    }
    if from_env.get(&Key::new("service.version")).is_none() {
        b = b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    b.build()
}

/// The OTLP exporter `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` asks for (`grpc`, the default,
/// or `http/protobuf`); it reads the endpoint, headers and timeout variables itself.
fn exporter(resource: &Resource) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::SpanExporter as _;
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "grpc".into());
    let built = match protocol.trim() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: use grpc or http/protobuf"
            ));
        }
    };
    let mut exporter = built.map_err(|e| e.to_string())?;
    exporter.set_resource(resource);
    Ok(exporter)
}

/// Installs the global subscriber and tracer provider; a second call (tests) changes nothing.
/// Spans get real trace ids even without an exporter, so trace context still reaches Kafka
/// record headers and log lines. Must run inside the tokio runtime: the OTLP exporters and
/// the export queue (`export.rs`) live on it. Returns the provider so `main` can flush it at
/// exit.
pub fn init(config: &LoggingConfig) -> SdkTracerProvider {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = resource();
    // The sampler: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, read by the SDK's builder.
    let mut builder = SdkTracerProvider::builder().with_resource(resource.clone());
    if otlp_requested() {
        match exporter(&resource) {
            Ok(exporter) => {
                builder = builder.with_span_processor(export::QueueProcessor::start(
                    exporter,
                    export::QueueConfig::from_env(),
                ));
            }
            Err(e) => eprintln!("event-gateway: OTLP trace export disabled: {e}"),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(SERVICE_NAME);
    let request_tracer = tracer.clone();
    global::set_tracer_provider(provider.clone());

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    // A request's span is at INFO: below that level no log line shows its fields.
    let logs_show_spans = filter
        .max_level_hint()
        .is_none_or(|max| max >= tracing::level_filters::LevelFilter::INFO);
    let fmt = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    // Filters per layer: the log level chooses log lines only; spans for traces are the
    // gateway's own at INFO and above whatever the log level says.
    // The request spans made for log lines only (`LOG_SPANS`) are left out: a request's
    // server span is made with the tracer directly (`transport::stack::observe`).
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("event_gateway", tracing::Level::INFO)
        .with_target(LOG_SPANS, tracing::level_filters::LevelFilter::OFF);
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // What the layer would add to every span by default and nobody here reads,
                // each a cost per span (#26): source locations (three attributes), the
                // thread's id and name (a String each), the target, busy/idle times (two
                // clock reads per enter and exit), and the OpenTelemetry context attached on
                // every enter (trace headers come from the span itself, `trace_headers_of`;
                // the one OpenTelemetry context a span here is made in is a request's,
                // attached by `transport::stack::observe` and `CurrentTrace`, which the layer
                // falls back to for a span with no tracing parent it sees).
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_filter(spans),
        )
        .try_init();
    // Only the filter that was installed decides (a second call's does not).
    if installed.is_ok() {
        LOGS_SHOW_SPANS.store(logs_show_spans, std::sync::atomic::Ordering::Relaxed);
        let _ = TRACER.set(request_tracer);
    }
    provider
}

/// The tracer of the spans made without tracing (a request's server span), the one the
/// installed layer makes the others with; set by [`init`].
static TRACER: std::sync::OnceLock<SdkTracer> = std::sync::OnceLock::new();

/// The tracer for spans made directly with OpenTelemetry's API, if [`init`] installed one.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// The target of spans made for log lines only: the OpenTelemetry layer leaves them out.
/// Under the module path of `transport::stack::observe`, which makes them, so that a log
/// filter naming that module or one above it (`RUST_LOG=warn,event_gateway::transport=debug`)
/// shows them, as it showed the request span before it was made outside tracing.
pub const LOG_SPANS: &str = "event_gateway::transport::stack::observe::request";

/// The trace a piece of a request's work runs in: its log span (tracing's current span) and
/// its OpenTelemetry context (the server span, `transport::stack::observe`). Captured where
/// the request is being served and carried into a task it starts (a stream's loop, a
/// WebSocket session, a write that must finish if the client goes), so the spans made there
/// (`send`, `create`) stay in the request's trace and its log lines in its span.
pub struct CurrentTrace {
    log: tracing::Span,
    cx: opentelemetry::Context,
}

impl CurrentTrace {
    /// The trace current here.
    pub fn capture() -> Self {
        Self {
            log: tracing::Span::current(),
            cx: opentelemetry::Context::current(),
        }
    }

    /// `fut`, run in this trace: the context attached and the log span entered on each poll.
    pub fn carry<F: std::future::Future>(
        self,
        fut: F,
    ) -> opentelemetry::context::WithContext<tracing::instrument::Instrumented<F>> {
        use opentelemetry::context::FutureExt as _;
        use tracing::Instrument as _;
        fut.instrument(self.log).with_context(self.cx)
    }
}

/// Whether log lines can show the fields of the gateway's INFO spans (the log filter lets
/// INFO through somewhere, by its most verbose directive); set by [`init`], true until then.
/// A request's log span is made only when it is.
static LOGS_SHOW_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// True when a request's log span (its fields, `trace_id` and `span_id`) can appear in a log
/// line: making it and formatting its fields cost about a tenth of a REST request's
/// instructions, for nothing when the log level is WARN or above (#26).
pub fn logs_show_spans() -> bool {
    LOGS_SHOW_SPANS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Registers the `otel_spans_*` counters of the export pipeline on `meter`.
pub fn register_instruments(meter: &opentelemetry::metrics::Meter) {
    use std::sync::atomic::Ordering;
    let s = &export::STATS;
    meter
        .u64_observable_counter("otel_spans_exported")
        .with_description("Sampled spans the OTLP exporter delivered")
        .with_callback(move |o| o.observe(s.exported.load(Ordering::Relaxed), &[]))
        .build();
    meter
        .u64_observable_counter("otel_spans_dropped")
        .with_description(
            "Sampled spans dropped, by reason: queue_full (the collector is slow or away), export_failed, export_timeout",
        )
        .with_callback(move |o| {
            for (reason, n) in [
                ("queue_full", &s.dropped_queue_full),
                ("export_failed", &s.dropped_export_failed),
                ("export_timeout", &s.dropped_export_timeout),
            ] {
                o.observe(n.load(Ordering::Relaxed), &[KeyValue::new("reason", reason)]);
            }
        })
        .build();
}

/// The W3C trace context of `span` as `traceparent` (and `tracestate`) pairs.
pub fn trace_headers_of(span: &tracing::Span) -> Vec<(String, String)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = span.context();
    let mut out = Pairs(Vec::with_capacity(2));
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut out));
    // Sorted, so records and the spool store the pairs in one order whatever the propagator.
    out.0.sort_unstable();
    out.0
}

/// An `Injector` into a plain list: the propagator sets one or two headers per record, and a
/// `HashMap` (the injector opentelemetry provides) hashed each name with SipHash and was then
/// copied into a sorted list anyway (#31).
struct Pairs(Vec<(String, String)>);

impl opentelemetry::propagation::Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }
}

/// The span context a `traceparent` (as stored with a spooled record) names, for a link.
pub fn span_context_of(headers: &[(String, String)]) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::TraceContextExt as _;
    let map: std::collections::HashMap<String, String> = headers.iter().cloned().collect();
    let cx = global::get_text_map_propagator(|p| p.extract(&map));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}
