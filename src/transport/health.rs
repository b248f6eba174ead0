//! Health over both protocols. REST: `/health` (summary), `/health/live` (the process answers),
//! `/health/ready` (can store events now: not draining and the sink is ready),
//! `/health/detailed` (everything an operator wants at a glance). gRPC: `grpc.health.v1.Health`
//! for "" and for the service name, kept in step with readiness by a watcher task, plus
//! `liveness`, which is SERVING while the process answers.
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::proto::SERVICE_NAME;
use crate::service::Gateway;

pub const ROUTE_HEALTH: &str = "/health";
pub const ROUTE_LIVE: &str = "/health/live";
pub const ROUTE_READY: &str = "/health/ready";
pub const ROUTE_DETAILED: &str = "/health/detailed";

/// gRPC health service name that reports liveness: SERVING while the process answers,
/// whatever Kafka does, for Kubernetes' native `grpc:` liveness probe.
pub const GRPC_LIVENESS_SERVICE: &str = "liveness";

/// How often gRPC health is brought in step with readiness.
const GRPC_HEALTH_POLL: Duration = Duration::from_millis(250);

#[derive(Clone)]
struct HealthState {
    gateway: Arc<Gateway>,
    started: Instant,
    config: Arc<serde_json::Value>,
}

pub fn router(gateway: Arc<Gateway>, redacted_config: serde_json::Value) -> Router {
    Router::new()
        .route(ROUTE_HEALTH, get(summary))
        .route(ROUTE_LIVE, get(live))
        .route(ROUTE_READY, get(ready))
        .route(ROUTE_DETAILED, get(detailed))
        .with_state(HealthState {
            gateway,
            started: Instant::now(),
            config: Arc::new(redacted_config),
        })
}

/// Ready to take events: not draining and the sink can store; with the reason when not.
fn readiness(g: &Gateway) -> (bool, &'static str) {
    if g.is_draining() {
        (false, "draining: the gateway is shutting down")
    } else if !g.sink().is_ready() {
        (
            false,
            "the sink cannot store events (no Kafka broker reachable or log not writable)",
        )
    } else {
        (true, "ready")
    }
}

fn status_of(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn summary(State(s): State<HealthState>) -> Response {
    let (ready, reason) = readiness(&s.gateway);
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "unavailable" },
        "reason": reason,
        "sink": s.gateway.sink().name(),
    });
    (status_of(ready), Json(body)).into_response()
}

async fn live() -> Response {
    Json(serde_json::json!({"status": "alive"})).into_response()
}

async fn ready(State(s): State<HealthState>) -> Response {
    let (ready, reason) = readiness(&s.gateway);
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "reason": reason,
    });
    (status_of(ready), Json(body)).into_response()
}

async fn detailed(State(s): State<HealthState>) -> Response {
    let (ready, reason) = readiness(&s.gateway);
    let sink = s.gateway.sink_health();
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "unavailable" },
        "ready": ready,
        "reason": reason,
        "draining": s.gateway.is_draining(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "sink": sink.details,
        "rate_limit": s.config.get("rate_limit"),
        "limits": {
            "max_event_size_bytes": s.gateway.limits().max_event_size,
            "max_batch_events": s.gateway.limits().max_batch_events,
        },
        "config": *s.config,
    });
    // Always 200: this is for people and dashboards; probes use /health/ready.
    Json(body).into_response()
}

/// Keeps gRPC health for "" and the service in step with readiness until `stop` fires; the
/// final state is NOT_SERVING.
pub fn spawn_grpc_health_sync(
    gateway: Arc<Gateway>,
    reporter: HealthReporter,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        reporter
            .set_service_status(GRPC_LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let mut last = None;
        loop {
            let (ready, _) = readiness(&gateway);
            if last != Some(ready) {
                let status = if ready {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status("", status).await;
                reporter.set_service_status(SERVICE_NAME, status).await;
                last = Some(ready);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(GRPC_HEALTH_POLL) => {}
            }
        }
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
    })
}
