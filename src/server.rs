//! Assembles the gateway and runs it: builds the sink and the core service, puts the gRPC
//! services (gateway, health, reflection v1 and v1alpha) and the REST routes on one axum
//! router and one port, and owns the shutdown sequence: not ready first, optional delay, stop
//! accepting, drain in-flight requests within a deadline, flush the sink, return.
use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tower::{Service, ServiceExt};

use crate::config::Config;
use crate::error::Error;
use crate::proto;
use crate::service::Gateway;
use crate::sink::{self, FlushReport};
use crate::transport::{grpc, health, rest};
use crate::validate::Limits;

/// What a finished `serve` reports.
#[derive(Debug, Default)]
pub struct ServeReport {
    /// Events the sink still held when the flush deadline passed (never acknowledged).
    pub undelivered: usize,
    /// True when in-flight requests did not finish within `shutdown.drain_timeout`.
    pub drain_timed_out: bool,
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

/// Everything a running gateway is made of, before it is bound to a listener.
pub struct App {
    pub router: Router,
    pub gateway: Arc<Gateway>,
    health_reporter: tonic_health::server::HealthReporter,
}

/// Builds the sink, the core service and the router for `config`.
pub async fn build(config: &Config) -> Result<App, Error> {
    let sink = sink::from_config(config).await?;
    let limits = Limits {
        max_event_size: config.limits.max_event_size.as_u64() as usize,
        max_batch_events: config.limits.max_batch_events,
    };
    let gateway = Arc::new(Gateway::new(sink, limits));
    let max_request = config.performance.max_request_size.as_u64() as usize;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection v1: {e}")))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection v1alpha: {e}")))?;

    let mut router = rest::router(gateway.clone(), max_request)
        .merge(health::router(gateway.clone(), config.redacted()));
    router = grpc_route(router, grpc::server(gateway.clone(), max_request));
    router = grpc_route(router, health_service);
    router = grpc_route(router, reflection_v1);
    router = grpc_route(router, reflection_v1alpha);
    let router = router.fallback(rest::fallback);

    Ok(App {
        router,
        gateway,
        health_reporter,
    })
}

/// Runs the gateway on `listener` until `shutdown` resolves, then drains and flushes.
/// Tests call this on port 0; `main` calls it with the signal handler.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServeReport, Error> {
    let app = build(&config).await?;
    let gateway = app.gateway.clone();
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;

    let health_stop = CancellationToken::new();
    let health_task =
        health::spawn_grpc_health_sync(gateway.clone(), app.health_reporter, health_stop.clone());

    // Phase 1 (on the signal): readiness false at once, then the configured delay so load
    // balancers notice, then `accepting` is cancelled and the listener closes.
    let accepting = CancellationToken::new();
    {
        let gateway = gateway.clone();
        let accepting = accepting.clone();
        let delay = config.shutdown.drain_delay;
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(?delay, "shutdown requested: reporting not ready");
            gateway.start_draining();
            tokio::time::sleep(delay).await;
            accepting.cancel();
        });
    }

    tracing::info!(%addr, "event gateway listening (gRPC and REST)");
    let server = axum::serve(
        listener,
        app.router
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(accepting.clone().cancelled_owned())
    .into_future();
    let mut server = tokio::spawn(server);

    let mut report = ServeReport::default();
    tokio::select! {
        r = &mut server => {
            health_stop.cancel();
            let _ = health_task.await;
            return match r {
                Ok(Ok(())) => Ok(report),
                Ok(Err(e)) => Err(Error::Internal(format!("server failed: {e}"))),
                Err(e) => Err(Error::Internal(format!("server task failed: {e}"))),
            };
        }
        _ = accepting.cancelled() => {}
    }

    // Phase 2: in-flight requests finish within the deadline.
    let drain_timeout = config.shutdown.drain_timeout;
    match tokio::time::timeout(drain_timeout, &mut server).await {
        Ok(_) => tracing::info!("all in-flight requests finished"),
        Err(_) => {
            report.drain_timed_out = true;
            tracing::warn!(
                ?drain_timeout,
                "drain deadline passed; closing the remaining connections"
            );
            server.abort();
        }
    }
    health_stop.cancel();
    let _ = health_task.await;

    // Phase 3: the sink delivers what it still holds.
    let FlushReport { undelivered } = gateway.sink().flush(drain_timeout).await;
    report.undelivered = undelivered;
    tracing::info!(undelivered, "sink flushed; shutdown complete");
    Ok(report)
}
