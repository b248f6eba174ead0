//! Admission, the stack's sixth layer, on the ingest routes: the rate limit, the client's share
//! of the concurrency slots, load shedding at `performance.max_concurrent_requests`, the
//! `performance.request_timeout` deadline; and for streams a `performance.max_streams` slot
//! when they open, then the same checks per event through the [`Admit`] put on the request.
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use http::HeaderValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{BoxError, ServiceBuilder};

use super::authn::{ForwardHeaders, authenticate_request, principal, principal_of};
use super::client::{ClientKey, X_FORWARDED_FOR, client_ip, client_key};
use super::rate::{LIMITER_GC_INTERVAL, RateLimit, take_token};
use crate::config::{PerformanceConfig, RateLimitConfig};
use crate::core::auth::{Authenticator, Principal};
use crate::core::error::Error;
use crate::core::stream::{Admit, Permit, StreamAdmission};
use crate::transport::routes::Rejection;
use crate::transport::status::{self, is_grpc};

/// A unary request's admission, first part: authentication, then the token bucket (the
/// tower layers below shed and time out).
async fn admit_unary(State(a): State<Arc<Admission>>, mut req: Request, next: Next) -> Response {
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

/// Runs the rest of the stack holding one of the client's share of the slots, or refuses.
async fn within_share(a: &Admission, key: ClientKey, req: Request, next: Next) -> Response {
    match a.share.take(key) {
        Ok(_held) => next.run(req).await,
        Err(e) => status::respond(is_grpc(req.headers()), e),
    }
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

/// What tower's load-shed and timeout layers refused a request with, carried on an empty
/// response out of the error handler for [`rendered`] to answer in the caller's protocol.
/// The handler answered itself before, taking the request's headers and `BodyRead` as
/// extractors: axum runs an error handler's extractors on every request, so every admitted
/// request cloned its header map for an error it did not have (about 1.5K instructions of
/// a REST request, #26).
#[derive(Clone)]
enum Refusal {
    Overloaded,
    Elapsed,
    Other(String),
}

/// The error handler of the unary admission layers: the refusal, for [`rendered`].
async fn admission_error(err: BoxError) -> Response {
    let refusal = if err.is::<tower::load_shed::error::Overloaded>() {
        Refusal::Overloaded
    } else if err.is::<tower::timeout::error::Elapsed>() {
        Refusal::Elapsed
    } else {
        Refusal::Other(err.to_string())
    };
    let mut resp = Response::default();
    resp.extensions_mut().insert(refusal);
    resp
}

/// `resp`, or the answer to the [`Refusal`] it carries, for the caller's protocol.
fn rendered(mut resp: Response, grpc: bool, body: &BodyRead) -> Response {
    let Some(refusal) = resp.extensions_mut().remove::<Refusal>() else {
        return resp;
    };
    let e = match refusal {
        Refusal::Overloaded => overloaded(),
        Refusal::Elapsed => {
            if !grpc && !body.0.load(Ordering::Relaxed) {
                return status::respond(false, Rejection::SlowBody);
            }
            Error::DeadlineExceeded("performance.request_timeout passed".into())
        }
        Refusal::Other(e) => Error::Internal(format!("request stack: {e}")),
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

    /// Wraps the unary ingest routes (REST ingest routes and the gRPC gateway service):
    /// authentication and the per-client token bucket, then load shedding at
    /// `max_concurrent_requests`, then the `request_timeout` deadline.
    pub fn unary(self: &Arc<Self>, router: Router) -> Router {
        router
            .route_layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(admission_error))
                    .load_shed()
                    .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
                        self.slots.clone(),
                    ))
                    .timeout(self.timeout),
            )
            .route_layer(from_fn_with_state(self.clone(), admit_unary))
    }

    /// Wraps the streaming routes (IngestStream, the WebSocket route): a stream is
    /// authenticated once and takes a `max_streams` slot and no token; each of its events is admitted on its own by the
    /// [`Admit`] this puts on the request (rate limits count events, not streams).
    pub fn streaming(self: &Arc<Self>, router: Router) -> Router {
        router.route_layer(from_fn_with_state(self.clone(), open_stream))
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

async fn open_stream(State(a): State<Arc<Admission>>, mut req: Request, next: Next) -> Response {
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
