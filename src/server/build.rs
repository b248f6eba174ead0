//! The wiring: builds the sink, the spool and its forwarder, the core service, the gRPC
//! services and the REST routes, and wraps them in the shared stack; the one place that knows
//! every part (it builds the metrics registry and hands each part a `Meter`).
use std::convert::Infallible;
use std::sync::Arc;

use opentelemetry::metrics::Meter;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use tonic::server::NamedService;
use tower::{Service, ServiceExt};

use crate::config::Config;
use crate::core::auth::Authenticator;
use crate::core::contracts::Contracts;
use crate::core::dedup::Dedup;
use crate::core::delivery::{EventSink, Journal};
use crate::core::service::{Durability, Gateway};
use crate::core::validate::Limits;
use crate::idp::KeyFetcher;
use crate::proto;
use crate::sink;
use crate::spool::Spool;
use crate::spool::forward::Forwarder;
use crate::telemetry::metrics::MetricsRegistry;
use crate::transport::http::health::Readiness;
use crate::transport::http::{docs, health, rest, ws};
use crate::transport::stack::HttpMetrics;
use crate::transport::{grpc, stack, tls};

use super::StartupError;

/// Mounts a tonic service under `/{package.Service}/*`, as tonic's own router does.
fn grpc_route<S>(router: Router, svc: S) -> Router
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let svc = svc.map_request(|req: Request| req.map(tonic::body::Body::new));
    router.route_service(&format!("/{}/{{*rest}}", S::NAME), svc)
}

/// How often the files reloaded while running (event types and schemas, API keys and JWKS,
/// TLS certificate and key) are checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);

/// Everything a running gateway is made of, before it is bound to a listener.
pub(super) struct App {
    pub(super) router: Router,
    pub(super) gateway: Arc<Gateway>,
    /// Drains the spool to Kafka once started.
    pub(super) forwarder: Option<Forwarder>,
    pub(super) readiness: Arc<Readiness>,
    pub(super) http_metrics: Arc<HttpMetrics>,
    /// Reloads the event types while it lives.
    pub(super) _types_watcher: Option<notify::PollWatcher>,
    /// Reloads the API keys and the JWKS while it lives.
    pub(super) _keys_watcher: Option<notify::PollWatcher>,
    /// Refreshes the identity provider's keys while it lives.
    pub(super) _key_fetcher: Option<KeyFetcher>,
    /// The listener's TLS, when configured, and its file watcher.
    pub(super) tls: Option<Arc<tls::Tls>>,
    pub(super) _tls_watcher: Option<notify::PollWatcher>,
}

/// Server reflection, v1 and v1alpha, over the contract's descriptors, gRPC health's, and the
/// `google.rpc` error-detail types our errors carry (`BadRequest`, `RetryInfo`), so that
/// reflection clients such as grpcurl decode error details instead of printing raw bytes.
///
/// Its own function, with a builder per version written out: in release builds (thin LTO,
/// rustc 1.95) the same two builders made by one closure inside `build` were miscompiled
/// into a use-after-free (the second builder pushed into the first one's freed buffer;
/// valgrind saw it, the gateway crashed at startup). `scripts/test` runs the release binary
/// under valgrind to keep it that way.
fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    StartupError,
> {
    use tonic_reflection::server::Builder;
    let v1 = Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// Builds the sink, the core service and the router, wrapped in the shared stack. One piece:
/// it is the wiring diagram, read top to bottom in the order parts depend on each other.
pub(super) fn build(config: &Config) -> Result<App, StartupError> {
    let registry = Arc::new(MetricsRegistry::new());
    let meter = registry.meter();
    let contracts = Contracts::load(&config.types)?;
    contracts.register_instruments(&meter);
    crate::telemetry::register_instruments(&meter);
    let types_watcher = contracts.watch(FILE_POLL);
    let (sink, spool, forwarder) = storage(config, &contracts, &meter)?;
    let dedup = (!config.dedup.window.is_zero())
        .then(|| Dedup::new(config.dedup.window, config.dedup.max_entries, &meter));
    let durability = Durability {
        spool: spool.map(|s| s as Arc<dyn Journal>),
        default: config.ack.default,
        fallback: config.spool.fallback_when_unavailable,
        dedup,
    };
    let limits = Limits {
        max_event_size: config.limits.max_event_size.as_u64() as usize,
        max_batch_events: config.limits.max_batch_events,
        max_data_depth: config.limits.max_data_depth,
        max_number_length: config.limits.max_number_length,
    };
    crate::transport::grpc::codec::admit_batches_of(limits.max_batch_events);
    let tls = tls::Tls::load(&config.tls)?;
    let tls_watcher = tls.as_ref().and_then(|t| {
        t.register_instruments(&meter);
        t.watch(FILE_POLL)
    });
    let auth = Authenticator::new(&config.auth, &meter)?;
    let keys_watcher = auth.watch(FILE_POLL);
    // The identity provider's keys before the first request (build runs on a blocking
    // thread, off the runtime's workers: waiting here holds no worker).
    let key_fetcher = tokio::runtime::Handle::current().block_on(KeyFetcher::start(
        &config.auth.jwt,
        auth.clone(),
        &meter,
    ))?;
    let gateway = Arc::new(Gateway::new(
        sink,
        limits,
        contracts,
        auth.clone(),
        durability,
        &meter,
    ));
    let forwarder_status = forwarder.as_ref().map(Forwarder::status);
    let http_metrics = Arc::new(HttpMetrics::new(&meter));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(gateway.clone(), health_reporter, forwarder_status.clone());
    let admission = stack::Admission::new(
        &config.rate_limit,
        &config.performance,
        &config.server.trusted_proxies,
        auth.clone(),
        stack::ForwardHeaders::new(&config.kafka),
    );
    let ingest = ingest_routes(config, &gateway);
    let mut ops = health::router(
        gateway.clone(),
        readiness.clone(),
        forwarder_status,
        config.redacted(),
        config.auth.health_details,
        config.health_details_from(),
        admission.clone(),
    )
    .merge(docs::router());
    ops = grpc_route(ops, health_service);
    let (reflection_v1, reflection_v1alpha) = reflection_services()?;
    ops = grpc_route(ops, reflection_v1);
    ops = grpc_route(ops, reflection_v1alpha);
    if config.metrics.enabled {
        ops = ops.merge(metrics_route(config, registry, &auth));
    }
    // Operational routes are outside admission: they stay reachable when ingest is saturated.
    let router = stack::stacked(
        ingest.merge(ops).fallback(rest::fallback),
        stack::Stack {
            metrics: http_metrics.clone(),
            browsers: stack::Browsers::new(&config.server.cors),
            admission: admission.clone(),
        },
    );
    Ok(App {
        router,
        gateway,
        forwarder,
        readiness,
        http_metrics,
        _types_watcher: types_watcher,
        _keys_watcher: keys_watcher,
        _key_fetcher: key_fetcher,
        tls,
        _tls_watcher: tls_watcher,
    })
}

/// The sink `kafka.brokers` asks for (Kafka, else the local log) and, with brokers and
/// `spool.enabled`, the spool and its forwarder (`ack: spooled`, the fallback).
#[allow(clippy::type_complexity)] // three parts, named at the one call
fn storage(
    config: &Config,
    contracts: &Arc<Contracts>,
    meter: &Meter,
) -> Result<(Arc<dyn EventSink>, Option<Arc<Spool>>, Option<Forwarder>), StartupError> {
    // Every topic events may be routed to, asked again on each check (a reload adds some).
    let topics: sink::kafka::TopicSource = {
        let contracts = contracts.clone();
        let default = config.kafka.topic.clone();
        Arc::new(move || {
            let mut t: Vec<String> = contracts.current().topics().map(str::to_owned).collect();
            t.push(default.clone());
            t.sort();
            t.dedup();
            t
        })
    };
    let sink::Built { sink, kafka } = sink::from_config(config, topics, meter)?;
    let Some(kafka) = kafka.filter(|_| config.spool.enabled) else {
        return Ok((sink, None, None));
    };
    let dir = config.spool.dir_in(&config.storage);
    let settings = sink::spool_settings(config, dir.clone(), true);
    let spool = Spool::open(settings, meter)
        .map_err(|source| sink::OpenError::Spool { path: dir, source })?;
    let r = spool.recovery();
    tracing::info!(dir = %spool.dir().display(), pending = r.pending, torn_tails = r.torn_tails, corrupt_records = r.corrupt_records, unreadable_segments = r.unreadable_segments, "spool opened; records not yet forwarded are sent first");
    let forwarder = Forwarder::new(spool.clone(), kafka, config.spool.give_up_after, meter)
        .give_up_transient_after(config.spool.give_up_transient_after);
    Ok((sink, Some(spool), Some(forwarder)))
}

/// The ingest routes of both protocols, which the stack admits by the route they match
/// (`stack::admission`'s `Kind`): unary calls take a slot each (rate limit, share, load shed,
/// deadline); streams take a stream slot when they open, then each event is admitted on its
/// own.
fn ingest_routes(config: &Config, gateway: &Arc<Gateway>) -> Router {
    let max_request = config.performance.max_request_size.as_u64() as usize;
    let in_flight = config.limits.max_stream_in_flight;
    let grpc_gateway = grpc::server(gateway.clone(), max_request, in_flight);
    let unary = grpc_route(
        rest::router(gateway.clone(), max_request),
        grpc_gateway.clone(),
    );
    // IngestStream's exact path takes precedence over the service's wildcard route.
    let streams = ws::router(
        gateway.clone(),
        max_request,
        in_flight,
        config.server.idle_timeout,
        config.server.cors.enabled(),
    )
    .route_service(
        &format!("/{}/IngestStream", proto::SERVICE_NAME),
        grpc_gateway.map_request(|mut req: Request| {
            // A stream's replies are per-event reports of a few dozen bytes, and tonic
            // compresses every item of a stream once the client accepts an encoding (it has
            // no per-item override): answered uncompressed, which gRPC always allows.
            req.headers_mut().remove("grpc-accept-encoding");
            req.map(tonic::body::Body::new)
        }),
    );
    unary.merge(streams)
}

/// `metrics.path`: the registry in the Prometheus text format, behind authentication with
/// `auth.protect_metrics`.
fn metrics_route(
    config: &Config,
    registry: Arc<MetricsRegistry>,
    auth: &Arc<Authenticator>,
) -> Router {
    let metrics = Router::new().route(
        &config.metrics.path,
        get(move || {
            let m = registry.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    if config.auth.protect_metrics {
        stack::authenticated(metrics, auth.clone())
    } else {
        metrics
    }
}
