//! Health over both protocols. REST: `/health` (summary), `/health/live` (the process answers),
//! `/health/ready` (can store events now: not draining and the sink is ready),
//! `/health/detailed` (everything an operator wants at a glance). gRPC: `grpc.health.v1.Health`
//! for "" and for the service name, plus `liveness`, which is SERVING while the process answers.
//!
//! Readiness is evaluated in one place, [`Readiness::refresh`], and published in one step:
//! gRPC health first, then the state the REST endpoints read. So once `/health/ready` says 200
//! a gRPC check already says SERVING, and once it says 503 gRPC already says NOT_SERVING.
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::HealthDetails;
use crate::core::error::Error;
use crate::core::service::Gateway;
use crate::proto::SERVICE_NAME;
use crate::spool::forward;
use crate::transport::stack::{self, Admission};
use crate::transport::status;

pub const ROUTE_HEALTH: &str = "/health";
pub const ROUTE_LIVE: &str = "/health/live";
pub const ROUTE_READY: &str = "/health/ready";
pub const ROUTE_DETAILED: &str = "/health/detailed";

/// gRPC health service name that reports liveness: SERVING while the process answers,
/// whatever Kafka does, for Kubernetes' native `grpc:` liveness probe.
pub const GRPC_LIVENESS_SERVICE: &str = "liveness";

/// How often readiness is re-evaluated (the sink's state changes on its own: a broker goes
/// away, statistics go stale). Draining is published at once, not on the next poll.
const READINESS_POLL: Duration = Duration::from_millis(250);

/// Readiness as last published, with the reason when not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ready {
    ready: bool,
    reason: String,
}

/// The one readiness state both protocols report.
pub struct Readiness {
    gateway: Arc<Gateway>,
    /// The spool forwarder's status: a stalled forwarder is named in the reason.
    forwarder: Option<Arc<forward::Status>>,
    reporter: HealthReporter,
    published: watch::Sender<Ready>,
    /// What gRPC health last said (None: nothing yet). Held from evaluation to publication, so
    /// a poll that evaluated before the drain began cannot publish after it.
    grpc_serving: Mutex<Option<bool>>,
}

impl Readiness {
    /// Not ready ("starting") until the first [`Readiness::refresh`].
    pub fn new(
        gateway: Arc<Gateway>,
        reporter: HealthReporter,
        forwarder: Option<Arc<forward::Status>>,
    ) -> Arc<Self> {
        let (published, _) = watch::channel(Ready {
            ready: false,
            reason: "starting".into(),
        });
        Arc::new(Self {
            gateway,
            forwarder,
            reporter,
            published,
            grpc_serving: Mutex::new(None),
        })
    }

    fn current(&self) -> Ready {
        self.published.borrow().clone()
    }

    /// Evaluates readiness and publishes a change: gRPC health first, then the REST state.
    pub async fn refresh(&self) {
        let mut grpc_serving = self.grpc_serving.lock().await;
        let (ready, mut reason) = readiness(&self.gateway);
        if let Some(why) = self.forwarder.as_ref().and_then(|f| f.stalled()) {
            // Events are still taken (and kept); what waits is their way to Kafka.
            reason = format!("{reason} (the spool's forwarder is stalled: {why})");
        }
        if *grpc_serving != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in ["", SERVICE_NAME] {
                self.reporter.set_service_status(service, status).await;
            }
            *grpc_serving = Some(ready);
        }
        self.published.send_if_modified(|current| {
            let next = Ready { ready, reason };
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    /// Marks the gateway draining and publishes not-ready at once.
    pub async fn drain(&self) {
        self.gateway.start_draining();
        self.refresh().await;
    }
}

#[derive(Clone)]
struct HealthState {
    gateway: Arc<Gateway>,
    readiness: Arc<Readiness>,
    started: Instant,
    forwarder: Option<Arc<forward::Status>>,
    config: Arc<serde_json::Value>,
    access: HealthDetails,
    /// `auth.health_details_from`, as [`crate::Config::health_details_from`] resolved it.
    details_from: Arc<Vec<ipnet::IpNet>>,
    admission: Arc<Admission>,
}

pub fn router(
    gateway: Arc<Gateway>,
    readiness: Arc<Readiness>,
    forwarder: Option<Arc<forward::Status>>,
    redacted_config: serde_json::Value,
    access: HealthDetails,
    details_from: Vec<ipnet::IpNet>,
    admission: Arc<Admission>,
) -> Router {
    Router::new()
        .route(ROUTE_HEALTH, get(summary))
        .route(ROUTE_LIVE, get(live))
        .route(ROUTE_READY, get(ready))
        .route(ROUTE_DETAILED, get(detailed))
        .with_state(HealthState {
            gateway,
            readiness,
            started: Instant::now(),
            forwarder,
            config: Arc::new(redacted_config),
            access,
            details_from: Arc::new(details_from),
            admission,
        })
}

/// Ready to take events: not draining and the sink can store; with the reason when not.
/// With `spool.fallback_when_unavailable`, a spool with room keeps the gateway ready while
/// the sink is not (requests are spooled instead).
fn readiness(g: &Gateway) -> (bool, String) {
    if g.is_draining() {
        (false, "draining: the gateway is shutting down".into())
    } else {
        g.can_take_events()
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
    let Ready { ready, reason } = s.readiness.current();
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
    let Ready { ready, reason } = s.readiness.current();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "reason": reason,
    });
    (status_of(ready), Json(body)).into_response()
}

/// May this caller see everything? See `auth.health_details` and
/// `auth.health_details_from`. Credentials are checked behind the rate limit, like an ingest
/// request's: a refusal there is the answer (429).
fn sees_details(s: &HealthState, req: &axum::extract::Request) -> Result<bool, Error> {
    if s.access == HealthDetails::Everyone {
        return Ok(true);
    }
    let from_listed = s
        .admission
        .caller_ip(req)
        .is_some_and(|ip| s.details_from.iter().any(|n| n.contains(&ip)));
    if from_listed {
        return Ok(true);
    }
    let h = req.headers();
    let has_credentials = h.contains_key(http::header::AUTHORIZATION)
        || h.contains_key(&stack::API_KEY_HEADER)
        || req.extensions().get::<stack::PeerIdentity>().is_some();
    if !has_credentials {
        return Ok(false);
    }
    match s.admission.authenticate_limited(req) {
        Ok(p) => Ok(p.is_known()),
        Err(e @ Error::RateLimited { .. }) => Err(e),
        // Credentials that do not check out see what anyone sees.
        Err(_) => Ok(false),
    }
}

async fn detailed(State(s): State<HealthState>, req: axum::extract::Request) -> Response {
    let Ready { ready, reason } = s.readiness.current();
    let sees = match sees_details(&s, &req) {
        Ok(sees) => sees,
        Err(e) => return status::respond(false, e),
    };
    if !sees {
        // Nothing that names a host, a file or an internal error.
        return Json(serde_json::json!({
            "status": if ready { "ok" } else { "unavailable" },
            "ready": ready,
            "draining": s.gateway.is_draining(),
            "uptime_seconds": s.started.elapsed().as_secs(),
            "details": "shown to callers from auth.health_details_from and to callers with valid credentials (auth.health_details)",
        }))
        .into_response();
    }
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "unavailable" },
        "ready": ready,
        "reason": reason,
        "draining": s.gateway.is_draining(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "sink": s.gateway.sink().details(),
        "spool": s.gateway.spool().map(|spool| {
            let mut d = spool.details();
            d["forwarder"] = s.forwarder.as_ref().map(|f| f.details()).unwrap_or_default();
            d
        }),
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

/// Sets the `liveness` service SERVING, then re-evaluates readiness every `READINESS_POLL`
/// until `stop` fires; the final gRPC state is NOT_SERVING.
pub fn spawn_readiness_poll(
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        readiness
            .reporter
            .set_service_status(GRPC_LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        loop {
            readiness.refresh().await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(READINESS_POLL) => {}
            }
        }
        let mut grpc_serving = readiness.grpc_serving.lock().await;
        *grpc_serving = Some(false);
        for service in ["", SERVICE_NAME] {
            readiness
                .reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
    })
}
