//! Assembles the gateway and runs it: builds the sink and the core service, puts the gRPC
//! services (gateway, health, reflection v1 and v1alpha) and the REST routes on one axum
//! router behind the shared stack, serves HTTP/1 and h2c on one port with hyper (so header
//! read timeouts and HTTP/2 keep-alive are ours to set), and owns the shutdown sequence: not
//! ready first, optional delay, stop accepting, drain in-flight requests within a deadline,
//! flush the sink, return. It is the one module that wires everything together: it builds the
//! metrics registry and hands each part a `Meter`.
//!
//! `build` wires the parts, `listener` accepts and serves connections; this file runs them
//! and owns the shutdown sequence.
mod build;
mod linger;
mod listener;

use std::future::Future;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::auth::Authenticator;
use crate::core::contracts::{ContractError, Contracts};
use crate::core::delivery::FlushReport;
use crate::sink;
use crate::spool::forward::{self};
use crate::transport::http::health;
use crate::transport::tls;

use build::{App, build};

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
    /// The identity provider's keys could not be fetched at start (a network or provider
    /// fault, not the configuration's: exit code 1, and a restart may succeed).
    #[error(transparent)]
    IdentityProvider(#[from] crate::idp::FetchError),
}

impl StartupError {
    /// Whether the configuration (or a file it names) is at fault: exit code 2, as for a
    /// setting that does not parse, and what `event-gateway check` finds.
    pub fn is_configuration(&self) -> bool {
        match self {
            StartupError::Contracts(_) | StartupError::Auth(_) | StartupError::Tls(_) => true,
            StartupError::Sink(e) => matches!(e, sink::OpenError::Kafka(_)),
            StartupError::Reflection(_)
            | StartupError::Listener(_)
            | StartupError::IdentityProvider(_) => false,
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

/// Runs the gateway on `listener` until `shutdown` resolves, then drains and flushes.
/// Tests call this on port 0; `main` calls it with the signal handler. One piece: the
/// shutdown phases are numbered in order here, and their order is the contract.
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
    let graceful = GracefulShutdown::new();
    listener::accept_loop(&listener, &accepting, &app, &config, &graceful).await;
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
