//! Admission, the stack's fifth step, on the ingest routes ([`Kind`]): the rate limit, the client's share
//! of the concurrency slots, load shedding at `performance.max_concurrent_requests`, the
//! `performance.request_timeout` deadline; and for streams a `performance.max_streams` slot
//! when they open, then the same checks per event through the [`Admit`] put on the request.
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use http::HeaderValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::authn::{ForwardHeaders, authenticate_request, principal, principal_of};
use super::client::{ClientKey, X_FORWARDED_FOR, client_ip, client_key};
use super::middleware::Next;
use super::rate::{LIMITER_GC_INTERVAL, RateLimit, take_token};
use crate::config::{PerformanceConfig, RateLimitConfig};
use crate::core::auth::{Authenticator, Principal};
use crate::core::error::Error;
use crate::core::stream::{Admit, Permit, StreamAdmission};
use crate::proto::SERVICE_NAME;
use crate::transport::routes::{
    ROUTE_EVENTS_WS, ROUTE_INGEST_BATCH, ROUTE_INGEST_EVENT, ROUTE_TYPES, ROUTE_VALIDATE, Rejection,
};
use crate::transport::status::{self, is_grpc};

/// A unary request's admission, all of it: authentication, the token bucket, the client's
/// share, a slot of the pool (load shedding), the deadline. One middleware, not tower's
/// load-shed, concurrency-limit and timeout layers under an error handler: each layer of a
/// route is a boxed service cloned per request, and those four with their error handler cost
/// about 2K instructions of a REST request (#26). A stream's events are admitted the same
/// way, by the same slots and deadline ([`StreamAdmit::admit`]).
async fn admit_unary(a: Arc<Admission>, mut req: Request, next: Next) -> Response {
    if let Some(refused) = authenticate_request(&a.auth, a.forward.as_ref(), &mut req) {
        return refused;
    }
    let body_read = BodyRead::default();
    req.extensions_mut().insert(body_read.clone());
    let grpc = is_grpc(req.headers());
    let key = client_key(&req, &a.trusted_proxies);
    let Some(rl) = &a.rate else {
        return rendered(within_share(&a, key, req, next).await, grpc, &body_read);
    };
    match take_token(rl, req.extensions().get::<Principal>(), &key) {
        Ok(()) => rendered(within_share(&a, key, req, next).await, grpc, &body_read),
        Err(e) => {
            let wait = match &e {
                Error::RateLimited { retry_after, .. } => *retry_after,
                _ => Duration::ZERO,
            };
            let mut resp = status::respond(grpc, e);
            if !grpc {
                // IETF draft-ietf-httpapi-ratelimit-headers: quota q per window w seconds,
                // r remaining now, t seconds until a request is allowed again.
                let window = rl.burst.div_ceil(rl.rps).max(1);
                let t = wait.as_secs_f64().ceil().max(1.0) as u64;
                let h = resp.headers_mut();
                if let Ok(v) =
                    HeaderValue::from_str(&format!("\"per-client\";q={};w={window}", rl.burst))
                {
                    h.insert("ratelimit-policy", v);
                }
                if let Ok(v) = HeaderValue::from_str(&format!("\"per-client\";r=0;t={t}")) {
                    h.insert("ratelimit", v);
                }
            }
            resp
        }
    }
}

/// Runs the rest of the stack holding one of the client's share of the slots and one of the
/// pool's (`performance.max_concurrent_requests`: none free is overload, refused at once),
/// within `performance.request_timeout`; or says why not. Both slots are held until the
/// handler's reply is ready.
async fn within_share(
    a: &Admission,
    key: ClientKey,
    req: Request,
    next: Next,
) -> Result<Response, Refusal> {
    let _held = match a.share.take(key) {
        Ok(held) => held,
        Err(e) => return Ok(status::respond(is_grpc(req.headers()), e)),
    };
    let Ok(_slot) = a.slots.try_acquire() else {
        return Err(Refusal::Overloaded);
    };
    tokio::time::timeout(a.timeout, next.run(req))
        .await
        .map_err(|_| Refusal::Elapsed)
}

/// One client's share of a pool: `performance.max_concurrent_requests_per_client` (requests
/// and stream events in flight) or `performance.max_streams_per_client` (open streams), per
/// client key. A map of counts behind a mutex rather than a crate: tower's and governor's
/// limits are not keyed by client, and an entry lives only while its client holds something,
/// so the map never holds more keys than the pool has slots.
struct Share {
    max: usize,
    /// What is counted and the setting that caps it, for the refusal's message.
    what: &'static str,
    setting: &'static str,
    /// hashbrown's default hasher (foldhash) rather than std's SipHash: the map is hashed
    /// twice per request and per stream event (take, give back), and its keys are held
    /// only while in flight, at most the pool's slots (#26).
    in_flight: Mutex<hashbrown::HashMap<ClientKey, usize>>,
}

/// One slot of a client's share, given back on drop.
struct ShareSlot {
    share: Arc<Share>,
    key: ClientKey,
}

impl Share {
    fn new(max: usize, what: &'static str, setting: &'static str) -> Arc<Self> {
        Arc::new(Self {
            max,
            what,
            setting,
            in_flight: Mutex::default(),
        })
    }

    fn take(self: &Arc<Self>, key: ClientKey) -> Result<Option<ShareSlot>, Error> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut in_flight = self.in_flight.lock().expect("share lock");
        let n = in_flight.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return Err(Error::RateLimited {
                limit: format!(
                    "{} {} for one client ({})",
                    self.max, self.what, self.setting
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        *n += 1;
        Ok(Some(ShareSlot {
            share: self.clone(),
            key,
        }))
    }
}

impl Drop for ShareSlot {
    fn drop(&mut self) {
        let mut in_flight = self.share.in_flight.lock().expect("share lock");
        if let Some(n) = in_flight.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

fn overloaded() -> Error {
    Error::unavailable("the gateway is at performance.max_concurrent_requests; retry shortly")
}

/// Set by the REST adapter once a request's body has been read (or refused). The deadline
/// that passes before then was spent waiting for the client: its mistake (408), not ours
/// (504). gRPC bodies are read by tonic as the call goes, so a gRPC deadline stays
/// DEADLINE_EXCEEDED whatever it was spent on.
#[derive(Clone, Default)]
pub struct BodyRead(Arc<AtomicBool>);

impl BodyRead {
    pub fn done(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Why a unary request was refused after its share was taken: answered by [`rendered`] in
/// the caller's protocol.
enum Refusal {
    /// No slot of `performance.max_concurrent_requests` free.
    Overloaded,
    /// `performance.request_timeout` passed.
    Elapsed,
}

/// The handler's reply, or the answer to the [`Refusal`], for the caller's protocol.
fn rendered(result: Result<Response, Refusal>, grpc: bool, body: &BodyRead) -> Response {
    let refusal = match result {
        Ok(resp) => return resp,
        Err(refusal) => refusal,
    };
    let e = match refusal {
        Refusal::Overloaded => overloaded(),
        Refusal::Elapsed => {
            if !grpc && !body.0.load(Ordering::Relaxed) {
                return status::respond(false, Rejection::SlowBody);
            }
            Error::DeadlineExceeded("performance.request_timeout passed".into())
        }
    };
    status::respond(grpc, e)
}

/// Admission's shared state: one rate limiter and one pool of `max_concurrent_requests`
/// slots for unary requests and streamed events alike, so a client cannot escape either by
/// switching from requests to a stream; and the `max_streams` slots.
pub struct Admission {
    rate: Option<RateLimit>,
    /// `performance.max_concurrent_requests`: a unary request holds one for its whole life,
    /// a stream one per event in flight.
    slots: Arc<Semaphore>,
    /// `performance.max_streams`: one per open stream.
    streams: Arc<Semaphore>,
    /// `performance.max_concurrent_requests_per_client`, taken before `slots`.
    share: Arc<Share>,
    /// `performance.max_streams_per_client`, taken before `streams`.
    stream_share: Arc<Share>,
    timeout: Duration,
    /// `performance.max_stream_lifetime`; `None` for no limit.
    stream_lifetime: Option<Duration>,
    trusted_proxies: Vec<ipnet::IpNet>,
    auth: Arc<Authenticator>,
    /// `kafka.forward_headers`, captured with the principal; `None` when none are.
    forward: Option<ForwardHeaders>,
}

impl Admission {
    pub fn new(
        rate: &RateLimitConfig,
        perf: &PerformanceConfig,
        trusted_proxies: &[String],
        auth: Arc<Authenticator>,
        forward: Option<ForwardHeaders>,
    ) -> Arc<Self> {
        let trusted_proxies = trusted_proxies
            .iter()
            .filter_map(|c| crate::config::parse_cidr(c))
            .collect();
        let rate = rate.enabled.then(|| {
            let rps = NonZeroU32::new(rate.requests_per_second).expect("checked by config");
            let burst = NonZeroU32::new(rate.burst_size).expect("checked by config");
            RateLimit::new(rps, burst)
        });
        let a = Arc::new(Self {
            rate,
            slots: Arc::new(Semaphore::new(perf.max_concurrent_requests)),
            streams: Arc::new(Semaphore::new(perf.max_streams)),
            share: Share::new(
                perf.max_concurrent_requests_per_client,
                "requests in flight",
                "performance.max_concurrent_requests_per_client",
            ),
            stream_share: Share::new(
                perf.max_streams_per_client,
                "streams open",
                "performance.max_streams_per_client",
            ),
            timeout: perf.request_timeout,
            stream_lifetime: (!perf.max_stream_lifetime.is_zero())
                .then_some(perf.max_stream_lifetime),
            trusted_proxies,
            auth,
            forward,
        });
        if a.rate.is_some() {
            let weak = Arc::downgrade(&a);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LIMITER_GC_INTERVAL);
                loop {
                    tick.tick().await;
                    let Some(a) = weak.upgrade() else { break };
                    if let Some(rl) = &a.rate {
                        rl.forget_idle();
                    }
                }
            });
        }
        a
    }

    /// The caller's address when it can be believed: [`client_ip`]'s answer, except for a
    /// request relayed (it carries `X-Forwarded-For` or `Forwarded`) by a peer that is not
    /// a trusted proxy: that peer is a proxy whose word is not taken, so neither its own
    /// address nor the one it names is the caller's.
    pub fn caller_ip(&self, req: &Request) -> Option<IpAddr> {
        let ip = client_ip(req, &self.trusted_proxies)?;
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
        let relayed = req.headers().contains_key(&X_FORWARDED_FOR)
            || req.headers().contains_key(http::header::FORWARDED);
        let peer_trusted = self
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer.to_canonical()));
        (!relayed || peer_trusted).then_some(ip.to_canonical())
    }

    /// Checks a request's credentials for a route outside the ingest admission
    /// (`/health/detailed`) the way ingest routes are: a token from the client address's
    /// bucket first, so a caller cannot spend the gateway's CPU on signature checks faster
    /// than the rate limit lets it send.
    pub fn authenticate_limited(&self, req: &Request) -> Result<Principal, Error> {
        if let Some(rl) = &self.rate {
            rl.check(&ClientKey::of_ip(client_ip(req, &self.trusted_proxies)))?;
        }
        principal_of(&self.auth, req)
    }
}

/// What admission a request takes, by the route it matched: every method of an ingest route
/// of either protocol is unary (a slot each) or a stream (a stream slot when it opens), as
/// when admission was a layer of those routes (a method a route does not take is answered 405
/// after authentication and admission, as before); health, metrics, docs, reflection and the
/// fallback take none, so that they stay reachable when ingest is saturated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Unary,
    Stream,
    Outside,
}

pub(super) fn kind(matched: Option<&str>) -> Kind {
    let Some(matched) = matched else {
        return Kind::Outside;
    };
    // The gRPC gateway service's routes, as `server::build` mounts them: IngestStream's exact
    // path, and the service's wildcard for its unary RPCs.
    let grpc = matched
        .strip_prefix('/')
        .and_then(|m| m.strip_prefix(SERVICE_NAME));
    match (grpc, matched) {
        (Some("/IngestStream"), _) | (_, ROUTE_EVENTS_WS) => Kind::Stream,
        (Some("/{*rest}"), _)
        | (_, ROUTE_INGEST_EVENT | ROUTE_INGEST_BATCH | ROUTE_VALIDATE | ROUTE_TYPES) => {
            Kind::Unary
        }
        _ => Kind::Outside,
    }
}

/// Admission as `kind` says (see [`Kind`]), then the route. Not an `async fn`, and a
/// stream's opening boxed (streams open seldom): the request's future is the unary path's
/// alone, not one that also holds a stream's and its own copy of the request.
pub(super) fn admit(
    a: Arc<Admission>,
    kind: Kind,
    req: Request,
    next: Next,
) -> impl Future<Output = Response> + Send {
    use futures::future::Either;
    match kind {
        Kind::Unary => Either::Left(admit_unary(a, req, next)),
        Kind::Stream => Either::Right(Either::Left(Box::pin(open_stream(a, req, next)))),
        Kind::Outside => Either::Right(Either::Right(next.run(req))),
    }
}

/// One stream's admission: its principal and client key, decided once when it opens.
struct StreamAdmit {
    admission: Arc<Admission>,
    principal: Principal,
    key: ClientKey,
    /// When `performance.max_stream_lifetime` runs out, if it is set.
    closes_at: Option<std::time::Instant>,
    /// The stream's `max_streams` slot and its client's `max_streams_per_client` one.
    _slots: (OwnedSemaphorePermit, Option<ShareSlot>),
}

impl Admit for StreamAdmit {
    fn principal(&self) -> &Principal {
        &self.principal
    }

    fn admit(&self) -> Result<Permit, Error> {
        if let Some(rl) = &self.admission.rate {
            take_token(rl, Some(&self.principal), &self.key)?;
        }
        let share = self.admission.share.take(self.key.clone())?;
        let slot = self
            .admission
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| overloaded())?;
        Ok(Box::new((share, slot)))
    }

    fn deadline(&self) -> Duration {
        self.admission.timeout
    }

    fn still_admitted(&self) -> Result<(), Error> {
        self.admission.auth.still_valid(&self.principal)?;
        match self.closes_at {
            Some(at) if std::time::Instant::now() >= at => Err(Error::unavailable(format!(
                "the stream reached performance.max_stream_lifetime ({}); open a new one",
                humantime_serde::re::humantime::format_duration(
                    self.admission.stream_lifetime.unwrap_or_default()
                )
            ))),
            _ => Ok(()),
        }
    }
}

async fn open_stream(a: Arc<Admission>, mut req: Request, next: Next) -> Response {
    if let Some(refused) = authenticate_request(&a.auth, a.forward.as_ref(), &mut req) {
        return refused;
    }
    let key = client_key(&req, &a.trusted_proxies);
    let opened = (|| {
        let principal = principal(req.extensions().get::<Principal>())?;
        let client_slot = a.stream_share.take(key.clone())?;
        let slot = a.streams.clone().try_acquire_owned().map_err(|_| {
            Error::unavailable(
                "the gateway is at performance.max_streams open streams; retry shortly",
            )
        })?;
        Ok(Arc::new(StreamAdmit {
            key,
            principal,
            closes_at: a.stream_lifetime.map(|l| std::time::Instant::now() + l),
            admission: a.clone(),
            _slots: (slot, client_slot),
        }) as Arc<dyn Admit>)
    })();
    req.extensions_mut().insert(StreamAdmission(opened));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::super::middleware::from_fn;
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt as _;

    /// A route behind the unary admission whose handler has read its body and then takes
    /// ten seconds: what a sink slower than the deadline looks like to admission.
    fn slow_route(
        max_concurrent_requests: usize,
        request_timeout: Duration,
    ) -> (Router, Arc<Admission>) {
        let perf = PerformanceConfig {
            max_concurrent_requests,
            request_timeout,
            ..PerformanceConfig::default()
        };
        let rate = RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        };
        let auth = Authenticator::new(
            &crate::config::AuthConfig::default(),
            &opentelemetry::global::meter("test"),
        )
        .unwrap();
        let admission = Admission::new(&rate, &perf, &[], auth, None);
        let slow = |req: Request| async move {
            req.extensions().get::<BodyRead>().unwrap().done();
            tokio::time::sleep(Duration::from_secs(10)).await;
            "done"
        };
        let router = Router::new()
            .route("/x", post(slow))
            .route_layer(from_fn(admission.clone(), admit_unary));
        (router, admission)
    }

    fn request(grpc: bool) -> Request {
        let mut b = http::Request::post("/x");
        if grpc {
            b = b.header("content-type", "application/grpc");
        }
        b.body(Body::empty()).unwrap()
    }

    fn grpc_status(r: &Response) -> Option<&str> {
        r.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    /// Every route of the contract, over both protocols, is admitted, and nothing else is: a
    /// route added to `ROUTES` without a place here would otherwise be served without
    /// authentication.
    #[test]
    fn the_ingest_routes_and_only_they_are_admitted() {
        use crate::transport::routes::ROUTES;
        for (_, route, rpc, _) in ROUTES {
            let expected = if *rpc == "IngestStream" {
                Kind::Stream
            } else {
                Kind::Unary
            };
            assert_eq!(kind(Some(route)), expected, "{route}");
        }
        let grpc = |rest: &str| format!("/{SERVICE_NAME}/{rest}");
        assert_eq!(kind(Some(&grpc("{*rest}"))), Kind::Unary);
        assert_eq!(kind(Some(&grpc("IngestStream"))), Kind::Stream);
        for outside in [
            "/health/live",
            "/health/ready",
            "/metrics",
            "/api/docs",
            "/grpc.health.v1.Health/{*rest}",
            "/grpc.reflection.v1.ServerReflection/{*rest}",
        ] {
            assert_eq!(kind(Some(outside)), Kind::Outside, "{outside}");
        }
        assert_eq!(kind(None), Kind::Outside, "the fallback");
    }

    #[tokio::test]
    async fn past_the_request_timeout_is_504_or_deadline_exceeded() {
        let (router, _) = slow_route(10, Duration::from_millis(50));
        let r = router.clone().oneshot(request(false)).await.unwrap();
        assert_eq!(r.status(), 504);
        let r = router.oneshot(request(true)).await.unwrap();
        assert_eq!(grpc_status(&r), Some("4"), "DEADLINE_EXCEEDED");
    }

    #[tokio::test]
    async fn with_every_slot_taken_a_request_is_shed_at_once_and_the_slot_comes_back() {
        let (router, admission) = slow_route(1, Duration::from_secs(30));
        let held = tokio::spawn(router.clone().oneshot(request(false)));
        while admission.slots.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let r = router.clone().oneshot(request(false)).await.unwrap();
        assert_eq!(r.status(), 503);
        let r = router.clone().oneshot(request(true)).await.unwrap();
        assert_eq!(grpc_status(&r), Some("14"), "UNAVAILABLE");
        held.abort();
        assert!(held.await.unwrap_err().is_cancelled());
        assert_eq!(
            admission.slots.available_permits(),
            1,
            "an ended request's slot is free"
        );
    }
}
