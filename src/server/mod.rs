//! Assembles the gateway and runs it: builds the sink and the core service, puts the gRPC
//! services (gateway, health, reflection v1 and v1alpha) and the REST routes on one axum
//! router behind the shared stack, serves HTTP/1 and h2c on one port with hyper (so header
//! read timeouts and HTTP/2 keep-alive are ours to set), and owns the shutdown sequence: not
//! ready first, optional delay, stop accepting, drain in-flight requests within a deadline,
//! flush the sink, return. It is the one module that wires everything together: it builds the
//! metrics registry and hands each part a `Meter`.
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tower::{Service, ServiceExt};

use crate::config::Config;
use crate::core::auth::Authenticator;
use crate::core::contracts::{ContractError, Contracts};
use crate::core::dedup::Dedup;
use crate::core::delivery::{FlushReport, Journal};
use crate::core::service::{Durability, Gateway};
use crate::core::validate::Limits;
use crate::proto;
use crate::sink;
use crate::spool::Spool;
use crate::spool::forward::{self, Forwarder};
use crate::telemetry::metrics::MetricsRegistry;
use crate::telemetry::throttle::LogThrottle;
use crate::transport::http::health::Readiness;
use crate::transport::http::{docs, health, rest, ws};
use crate::transport::stack::HttpMetrics;
use crate::transport::{grpc, stack, tls};
use tokio_util::either::Either;

/// Why the gateway could not start; the underlying error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Sink(#[from] sink::OpenError),
    #[error(transparent)]
    Contracts(#[from] ContractError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    #[error(transparent)]
    Auth(#[from] crate::core::auth::AuthError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl StartupError {
    /// Whether the configuration (or a file it names) is at fault: exit code 2, as for a
    /// setting that does not parse, and what `event-gateway check` finds.
    pub fn is_configuration(&self) -> bool {
        match self {
            StartupError::Contracts(_) | StartupError::Auth(_) | StartupError::Tls(_) => true,
            StartupError::Sink(e) => matches!(e, sink::OpenError::Kafka(_)),
            StartupError::Reflection(_) | StartupError::Listener(_) => false,
        }
    }
}

/// What a finished `serve` reports.
#[derive(Debug, Default)]
pub struct ServeReport {
    /// Events the sink still held when the flush deadline passed (never acknowledged).
    pub undelivered: usize,
    /// True when in-flight requests did not finish within `shutdown.drain_timeout`.
    pub drain_timed_out: bool,
    /// Spooled records not yet forwarded (kept on disk for the next start).
    pub spool_left: u64,
}

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
struct App {
    router: Router,
    gateway: Arc<Gateway>,
    /// Drains the spool to Kafka once started.
    forwarder: Option<Forwarder>,
    readiness: Arc<Readiness>,
    http_metrics: Arc<HttpMetrics>,
    /// Reloads the event types while it lives.
    _types_watcher: Option<notify::PollWatcher>,
    /// Reloads the API keys and the JWKS while it lives.
    _keys_watcher: Option<notify::PollWatcher>,
    /// The listener's TLS, when configured, and its file watcher.
    tls: Option<Arc<tls::Tls>>,
    _tls_watcher: Option<notify::PollWatcher>,
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

/// What `event-gateway check` verifies beyond the configuration's own checks (which
/// `Config::load` ran): every file the configuration names is read and checked as start-up
/// reads it (types and their schemas, API keys, the JWKS, certificates and keys), and the
/// Kafka settings are handed to librdkafka's own validation. Nothing is bound, nothing
/// connected, nothing created on disk.
pub fn check(config: &Config) -> Result<(), StartupError> {
    let quiet = opentelemetry::metrics::noop::NoopMeterProvider::new();
    let meter = opentelemetry::metrics::MeterProvider::meter(&quiet, "check");
    Contracts::load(&config.types)?;
    tls::Tls::load(&config.tls)?;
    Authenticator::new(&config.auth, &meter)?;
    if !config.kafka.brokers.is_empty() {
        sink::kafka::client_config(&config.kafka)
            .create_native_config()
            .map_err(sink::OpenError::Kafka)?;
    }
    Ok(())
}

/// Builds the sink, the core service and the router, wrapped in the shared stack.
fn build(config: &Config) -> Result<App, StartupError> {
    let registry = Arc::new(MetricsRegistry::new());
    let meter = registry.meter();
    let contracts = Contracts::load(&config.types)?;
    contracts.register_instruments(&meter);
    crate::telemetry::register_instruments(&meter);
    let types_watcher = contracts.watch(FILE_POLL);
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
    let sink::Built { sink, kafka } = sink::from_config(config, topics, &meter)?;
    // With brokers, the spool and its forwarder (ack: spooled, the fallback).
    let (spool, forwarder) = match kafka.filter(|_| config.spool.enabled) {
        Some(kafka) => {
            let dir = config.spool.dir_in(&config.storage);
            let settings = sink::spool_settings(config, dir.clone(), true);
            let spool = Spool::open(settings, &meter)
                .map_err(|source| sink::OpenError::Spool { path: dir, source })?;
            let r = spool.recovery();
            tracing::info!(dir = %spool.dir().display(), pending = r.pending, torn_tails = r.torn_tails, corrupt_records = r.corrupt_records, unreadable_segments = r.unreadable_segments, "spool opened; records not yet forwarded are sent first");
            let forwarder =
                Forwarder::new(spool.clone(), kafka, config.spool.give_up_after, &meter)
                    .give_up_transient_after(config.spool.give_up_transient_after);
            (Some(spool), Some(forwarder))
        }
        None => (None, None),
    };
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
    let max_request = config.performance.max_request_size.as_u64() as usize;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(gateway.clone(), health_reporter, forwarder_status.clone());
    let (reflection_v1, reflection_v1alpha) = reflection_services()?;

    // Ingest routes, both protocols, behind admission (rate limit, load shed, deadline).
    let in_flight = config.limits.max_stream_in_flight;
    let grpc_gateway = grpc::server(gateway.clone(), max_request, in_flight);
    let admission = stack::Admission::new(
        &config.rate_limit,
        &config.performance,
        &config.server.trusted_proxies,
        auth.clone(),
    );
    let ingest = admission.unary(grpc_route(
        rest::router(gateway.clone(), max_request),
        grpc_gateway.clone(),
    ));
    // Streams, both protocols: a stream slot when they open, then each event is admitted on
    // its own. IngestStream's exact path takes precedence over the service's wildcard route.
    let streams = ws::router(
        gateway.clone(),
        max_request,
        in_flight,
        config.server.idle_timeout,
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
    let ingest = ingest.merge(admission.streaming(streams));

    // Operational routes stay reachable when ingest is saturated.
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
    ops = grpc_route(ops, reflection_v1);
    ops = grpc_route(ops, reflection_v1alpha);
    if config.metrics.enabled {
        let mut metrics = Router::new().route(
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
            metrics = stack::authenticated(metrics, auth.clone());
        }
        ops = ops.merge(metrics);
    }

    let router = stack::observed(
        ingest.merge(ops).fallback(rest::fallback),
        http_metrics.clone(),
    );
    Ok(App {
        router,
        gateway,
        forwarder,
        readiness,
        http_metrics,
        _types_watcher: types_watcher,
        _keys_watcher: keys_watcher,
        tls,
        _tls_watcher: tls_watcher,
    })
}

/// `server.max_connections` and `server.max_connections_per_peer`: open connections in all
/// and by peer address. A map of counts under a mutex, touched twice per connection (accept
/// and close); entries leave the map at zero, so it holds at most one entry per open
/// connection, whatever number of addresses a flood comes from.
struct ConnectionLimits {
    max: usize,
    per_peer: usize,
    open: Arc<std::sync::Mutex<(usize, HashMap<IpAddr, usize>)>>,
    /// Refusals are logged once per 10 s at most, with the count since the last line.
    logged: LogThrottle,
}

/// A connection's place in [`ConnectionLimits`], given back on drop.
struct ConnectionSlot {
    ip: IpAddr,
    open: Arc<std::sync::Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    fn new(max: usize, per_peer: usize) -> Self {
        Self {
            max,
            per_peer,
            open: Arc::default(),
            logged: LogThrottle::new(Duration::from_secs(10)),
        }
    }

    /// A slot for a connection from `ip`, or the limit it is over (`total`, `per_peer`).
    fn admit(&self, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.max {
            return Err("total");
        }
        let from_peer = open.1.get(&ip).copied().unwrap_or(0);
        if self.per_peer > 0 && from_peer >= self.per_peer {
            return Err("per_peer");
        }
        open.0 += 1;
        *open.1.entry(ip).or_insert(0) += 1;
        Ok(ConnectionSlot {
            ip,
            open: self.open.clone(),
        })
    }

    fn log_refusal(&self, peer: SocketAddr) {
        if let Some(refused) = self.logged.due() {
            tracing::warn!(
                %peer,
                refused,
                max_connections = self.max,
                max_connections_per_peer = self.per_peer,
                "connections refused at server.max_connections / server.max_connections_per_peer (count since the last such line)"
            );
        }
    }
}

/// hyper's connection settings from `server.*`.
fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // A client gets `read_timeout` to send a request's headers, so slow clients cannot hold
    // connections (hyper needs the timer for this to take effect at all).
    let (h1, h2) = (&config.server.http1, &config.server.http2);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.read_timeout)
        .keep_alive(true)
        .max_headers(h1.max_headers)
        .max_buf_size(h1.max_head_size.as_u64() as usize);
    // HTTP/2 (gRPC): pings find dead peers; an idle connection is closed after idle_timeout
    // without an answered ping. The limits are checked by the config (u32 fits).
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.server.idle_timeout / 2))
        .keep_alive_timeout(config.server.idle_timeout / 2)
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.max_header_list_size.as_u64() as u32)
        .max_frame_size(h2.max_frame_size.as_u64() as u32)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams);
    b
}

/// Runs the gateway on `listener` until `shutdown` resolves, then drains and flushes.
/// Tests call this on port 0; `main` calls it with the signal handler.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServeReport, StartupError> {
    // Building opens the spool and the local log, which read every segment through: off the
    // runtime's workers.
    let mut app = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || build(&config))
            .await
            .expect("building the gateway does not panic")?
    };
    let gateway = app.gateway.clone();
    let forwarding = forward::Control::default();
    let forwarder_task = app
        .forwarder
        .take()
        .map(|f| tokio::spawn(f.run(forwarding.clone())));
    let addr = listener.local_addr().map_err(StartupError::Listener)?;

    // Readiness is evaluated once before the first connection, so no probe sees "starting".
    app.readiness.refresh().await;
    let health_stop = CancellationToken::new();
    let health_task = health::spawn_readiness_poll(app.readiness.clone(), health_stop.clone());

    // Phase 1 (on the signal): readiness false at once, then the configured delay so load
    // balancers notice, then `accepting` is cancelled and the listener closes.
    let accepting = CancellationToken::new();
    {
        let readiness = app.readiness.clone();
        let accepting = accepting.clone();
        let delay = config.shutdown.drain_delay;
        let gateway = gateway.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(?delay, "shutdown requested: reporting not ready");
            readiness.drain().await;
            tokio::time::sleep(delay).await;
            accepting.cancel();
            // Streams end with the listener: they report what they took, then close.
            gateway.stop_streams();
        });
    }

    tracing::info!(%addr, tls = app.tls.is_some(), "event gateway listening (gRPC and REST)");
    let builder = connection_builder(&config);
    let graceful = GracefulShutdown::new();
    let connections = app.http_metrics.active_connections.clone();
    let limits = ConnectionLimits::new(
        config.server.max_connections,
        config.server.max_connections_per_peer,
    );
    loop {
        let (stream, peer) = tokio::select! {
            _ = accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: log, and keep serving the
                    // connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                // Closed at once: the connections already open keep their share.
                app.http_metrics
                    .refused_connections
                    .add(1, &[opentelemetry::KeyValue::new("reason", reason)]);
                limits.log_refusal(peer);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = app.router.clone();
        let tls = app.tls.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let connections = connections.clone();
        let read_timeout = config.server.read_timeout;
        let write_timeout = config.server.write_timeout;
        connections.add(1, &[]);
        tokio::spawn(async move {
            let _slot = slot;
            // hyper's header timer starts with the first byte; a client that connects and
            // never sends one would hold the connection for ever (hyperium/hyper#3962).
            // peek, not readable(): readiness can be reported spuriously, a byte cannot.
            let connected = tokio::time::Instant::now();
            let mut first = [0u8; 1];
            if let Ok(Ok(n)) = tokio::time::timeout(read_timeout, stream.peek(&mut first)).await
                && n > 0
            {
                // hyper has no write timeout: a write that makes no progress for
                // `write_timeout` (a client that stopped reading its replies) fails, and the
                // connection with it, instead of holding its buffers for ever.
                let mut io = tokio_io_timeout::TimeoutStream::new(stream);
                io.set_write_timeout(Some(write_timeout));
                let io = Box::pin(io);
                // TLS: the handshake gets `read_timeout`, like request headers do.
                let (io, identity) = match tls {
                    None => (Either::Left(io), None),
                    Some(tls) => {
                        match tokio::time::timeout(read_timeout, tls.acceptor().accept(io)).await {
                            Ok(Ok(s)) => {
                                let identity = tls::peer_identity(s.get_ref().1);
                                (Either::Right(s), identity)
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                connections.add(-1, &[]);
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                connections.add(-1, &[]);
                                return;
                            }
                        }
                    }
                };
                // A connection must bring its first request within `read_timeout` of being
                // accepted. hyper's header timer is HTTP/1's; an HTTP/2 connection that
                // sends part of the preface, or the preface and SETTINGS and no request,
                // would otherwise stay open until keep-alive pings time out (or for ever).
                let first_request = Arc::new(tokio::sync::Notify::new());
                let arrived = first_request.clone();
                let svc =
                    router.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                        arrived.notify_one();
                        req.extensions_mut().insert(ConnectInfo(peer));
                        if let Some(id) = &identity {
                            req.extensions_mut().insert(id.clone());
                        }
                        req.map(axum::body::Body::new)
                    });
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
                    .into_owned();
                let conn = watcher.watch(conn);
                tokio::pin!(conn);
                let ended = tokio::select! {
                    ended = &mut conn => Some(ended),
                    () = first_request.notified() => Some(conn.await),
                    () = tokio::time::sleep_until(connected + read_timeout) => None,
                };
                match ended {
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, %peer, "connection ended with an error")
                    }
                    Some(Ok(())) => {}
                    None => tracing::debug!(
                        %peer,
                        "closed a connection that sent no request within server.read_timeout"
                    ),
                }
            } else {
                tracing::debug!(%peer, "closed a connection that sent nothing");
            }
            connections.add(-1, &[]);
        });
    }
    drop(listener);

    // Phase 2: open connections finish their in-flight requests within the deadline.
    let mut report = ServeReport::default();
    let drain_timeout = config.shutdown.drain_timeout;
    match tokio::time::timeout(drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all in-flight requests finished"),
        Err(_) => {
            report.drain_timed_out = true;
            tracing::warn!(
                ?drain_timeout,
                "drain deadline passed; remaining connections are dropped"
            );
        }
    }
    health_stop.cancel();
    let _ = health_task.await;

    // Phase 3: the forwarder sends what it can of the spool within the deadline; what is
    // left stays on disk for the next start (never deleted unforwarded).
    if let Some(task) = forwarder_task {
        forwarding.drain.cancel();
        let mut task = task;
        if tokio::time::timeout(drain_timeout, &mut task)
            .await
            .is_err()
        {
            forwarding.stop.cancel();
            let _ = task.await;
        }
        if let Some(spool) = gateway.spool() {
            report.spool_left = spool.pending();
            tracing::info!(
                left = report.spool_left,
                "spool forwarder stopped; what is left is forwarded at the next start"
            );
        }
    }

    // Phase 4: the sink delivers what it still holds.
    let FlushReport { undelivered } = gateway.sink().flush(drain_timeout).await;
    report.undelivered = undelivered;
    tracing::info!(undelivered, "sink flushed; shutdown complete");
    Ok(report)
}
