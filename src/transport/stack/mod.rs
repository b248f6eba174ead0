//! The one tower stack, built here and wrapped around gRPC and REST alike (nothing
//! cross-cutting lives in a tonic interceptor, which REST would skip). Outermost first:
//!
//! 1. request id (`x-request-id`, set when absent, echoed on the reply): every later layer and
//!    log line can name the request;
//! 2. trace span, parented on an incoming W3C `traceparent` (HTTP header or gRPC metadata,
//!    which travel the same way): the span is current while the sink runs, so trace context
//!    reaches the Kafka record headers;
//! 3. metrics: outside admission so that rejections (401, 403, 429, 503, 504) are counted too;
//! 4. authentication, on the ingest routes (and `/metrics` with `auth.protect_metrics`):
//!    credentials (API key, JWT, client certificate) become the request's [`Principal`], or a
//!    401 / UNAUTHENTICATED; before admission, so that the rate-limit bucket is the
//!    principal's and nothing an unauthenticated client sends selects one;
//! 5. admission, on the ingest routes only (health, metrics and reflection stay reachable
//!    under overload): per-client token bucket, then the client's share of the slots
//!    (`performance.max_concurrent_requests_per_client`), then load shedding at
//!    `performance.max_concurrent_requests`, then the `performance.request_timeout` deadline.
//!    Rate limiting comes first so a flooding client cannot take concurrency slots, and the
//!    share so that one slow client (headers, no body) cannot take them all. Streams
//!    (IngestStream, the WebSocket route) take a `performance.max_streams` slot (and one of
//!    their client's `performance.max_streams_per_client`) when they open, and each of
//!    their events then passes the same bucket, the same share, the same slots and the
//!    same deadline, through the [`Admit`] this layer puts on the request.
//!
//! Rejections are rendered for the caller's protocol: a gRPC client gets a gRPC status
//! (RESOURCE_EXHAUSTED with RetryInfo, UNAVAILABLE, DEADLINE_EXCEEDED), never a bare HTTP
//! status that gRPC would read as UNAVAILABLE.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, UpDownCounter};
use opentelemetry_http::HeaderExtractor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{BoxError, ServiceBuilder};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::{PerformanceConfig, RateLimitConfig};
use crate::core::auth::{Authenticator, Credentials, Principal};
use crate::core::error::Error;
use crate::core::stream::{Admit, Permit, StreamAdmission};
use crate::proto::SERVICE_NAME;
use crate::telemetry::instruments::{LATENCY_BUCKETS, LabelCap};
use crate::transport::routes::{ROUTES, Rejection};
use crate::transport::status::{self, is_grpc};

/// Header carrying an API key (the other way is `Authorization: Bearer <key>`). Headers are
/// looked up by `HeaderName`, never by `&str`: a string name is parsed on every lookup (and
/// http's parser trips valgrind's uninitialised-read check in the release smoke run).
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// The de-facto header proxies append the client's address to.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The verified subject (SAN, else CN) of the client's certificate, put on every request of
/// an mTLS connection by the accept loop.
#[derive(Clone, Debug)]
pub struct PeerIdentity(pub String);

/// The principal the stack authenticated, for the adapters to hand to the core. Its absence
/// is a wiring fault (a route outside the stack), never a reason to serve anonymously.
pub fn principal(p: Option<&Principal>) -> Result<Principal, Error> {
    p.cloned().ok_or_else(|| {
        Error::Internal("ingest route served outside the authentication layer".into())
    })
}

/// The request's credentials (headers or gRPC metadata, which travel the same way, and the
/// connection's client certificate), as `a` judges them: its principal (anonymous when it
/// brought none and none are required), or the refusal.
pub fn principal_of(a: &Authenticator, req: &Request) -> Result<Principal, Error> {
    let header = |name: &HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    let bearer = header(&http::header::AUTHORIZATION).and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let credentials = Credentials {
        bearer,
        api_key: header(&API_KEY_HEADER),
        certificate: req.extensions().get::<PeerIdentity>().map(|p| p.0.as_str()),
    };
    a.authenticate(&credentials)
}

/// Puts the request's [`Principal`] on it; or returns the refusal to send instead, 401 /
/// UNAUTHENTICATED for the caller's protocol.
fn authenticate_request(a: &Authenticator, req: &mut Request) -> Option<Response> {
    let outcome = principal_of(a, req);
    match outcome {
        Ok(p) => {
            req.extensions_mut().insert(p);
            None
        }
        Err(e) => Some(status::respond(is_grpc(req.headers()), e)),
    }
}

/// Lets through only requests with credentials that check out, whatever `auth.required`
/// says: `auth.protect_metrics` means an anonymous scrape is refused even on a gateway that
/// takes anonymous events.
async fn authenticate(
    State(a): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(refused) = authenticate_request(&a, &mut req) {
        return refused;
    }
    if req
        .extensions()
        .get::<Principal>()
        .is_some_and(Principal::is_known)
    {
        return next.run(req).await;
    }
    let missing = Error::Unauthenticated {
        reason: crate::core::error::AuthFailure::Missing,
        message: "credentials are required here (auth.protect_metrics): send `Authorization: Bearer <API key or token>` or `x-api-key: <key>`, or a client certificate listed in auth.certificates_file".into(),
    };
    status::respond(is_grpc(req.headers()), missing)
}

/// Wraps `router` in authentication that must succeed (an anonymous caller is refused even
/// when `auth.required` is false): `/metrics` with `auth.protect_metrics`. The
/// ingest routes authenticate in their admission middleware ([`Admission::unary`],
/// [`Admission::streaming`]): one middleware rather than two, since each axum `from_fn`
/// layer clones and boxes the service below it on every request (measured: two extra
/// layers cost about 4 µs of CPU per request).
pub fn authenticated(router: Router, auth: Arc<Authenticator>) -> Router {
    router.route_layer(from_fn_with_state(auth, authenticate))
}

/// How often idle rate-limit buckets are forgotten, bounding the limiter's memory.
const LIMITER_GC_INTERVAL: Duration = Duration::from_secs(60);

/// How many buckets the limiter holds before it forgets the full ones at once, instead of
/// waiting for the next minute's sweep. A full bucket is the same as no bucket, so
/// forgetting it changes no answer; a bucket is not full only for `burst / rate` seconds
/// after its last request, so what stays is bounded by the request rate the gateway can
/// take times that refill time, whatever number of distinct keys a flood brings.
const LIMITER_MAX_KEYS: usize = 100_000;

/// Requests between two checks of the limiter's size (`len()` visits every shard).
const LIMITER_SIZE_CHECK_EVERY: u64 = 1024;

struct RateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    rps: u32,
    burst: u32,
    checks: std::sync::atomic::AtomicU64,
}

impl RateLimit {
    fn new(rps: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::dashmap(Quota::per_second(rps).allow_burst(burst)),
            rps: rps.get(),
            burst: burst.get(),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Keeps the number of buckets bounded (see [`LIMITER_MAX_KEYS`]).
    fn bound(&self) {
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(LIMITER_SIZE_CHECK_EVERY) && self.limiter.len() > LIMITER_MAX_KEYS {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is there.
    fn check(&self, key: &String) -> Result<(), Error> {
        self.bound();
        self.limiter
            .check_key(key)
            .map_err(|not_until| Error::RateLimited {
                limit: format!(
                    "{} requests/s, burst {} per client (rate_limit.*)",
                    self.rps, self.burst
                ),
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, what the chain of
/// trusted proxies says. Every `X-Forwarded-For` line is read, joined in order (proxies such
/// as HAProxy append a line of their own rather than extend the client's), else every
/// `Forwarded` line's `for=`; the list is walked from the right, since only what our own
/// proxies appended can be believed: a trusted address is one more of ours (keep walking), the
/// first untrusted one is the client. An entry that does not parse (a port, `unknown`, an
/// obfuscated name, garbage) ends the walk at the last trusted hop: skipping it would let
/// whatever the client wrote to its left choose the answer.
fn client_ip(req: &Request, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    // Canonical (an IPv4-mapped IPv6 address as IPv4), so one client has one bucket and one
    // form to match against `server.trusted_proxies` and `auth.health_details_from`.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()?
        .0
        .ip()
        .to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let headers = req.headers();
    let hops: Vec<Option<IpAddr>> = if headers.contains_key(&X_FORWARDED_FOR) {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .flat_map(|line| match line.to_str() {
                Ok(line) => line.split(',').map(|e| e.trim().parse().ok()).collect(),
                Err(_) => vec![None],
            })
            .collect()
    } else {
        // RFC 7239: `for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"`. A small reader
        // rather than a crate: only `for` is used, and an element without a readable
        // address ends the walk like any unreadable entry.
        headers
            .get_all(http::header::FORWARDED)
            .iter()
            .flat_map(|line| match line.to_str() {
                Ok(line) => line.split(',').map(forwarded_for).collect(),
                Err(_) => vec![None],
            })
            .collect()
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop.map(|ip| ip.to_canonical()) {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return Some(ip),
            None => return Some(client),
        }
    }
    Some(client)
}

/// The address in one `Forwarded` element's `for=` (a port after it is allowed there), or
/// `None` when it has none or it is not an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })?;
    let host = match value.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => value.split(':').next()?,
    };
    host.parse().ok()
}

/// The bucket's key: the authenticated principal, else the client's address. Nothing an
/// unauthenticated client sends (a header, an unknown key) selects a bucket.
fn client_key(req: &Request, trusted: &[ipnet::IpNet]) -> String {
    if let Some(p) = req.extensions().get::<Principal>()
        && p.is_authenticated()
    {
        return format!("{}:{}", p.authtype, p.id);
    }
    match client_ip(req, trusted) {
        Some(ip) => format!("ip:{ip}"),
        None => "ip:unknown".into(),
    }
}

/// A token for `key` from the principal's own bucket when its API key has one, else from
/// the shared per-client limiter.
fn take_token(rl: &RateLimit, principal: Option<&Principal>, key: &String) -> Result<(), Error> {
    match principal.and_then(|p| p.grants.rate_limit.as_ref()) {
        Some(own) => own.limiter.check().map_err(|not_until| Error::RateLimited {
            limit: format!(
                "{} requests/s, burst {} for this API key (its rate_limit)",
                own.requests_per_second, own.burst_size
            ),
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        }),
        None => rl.check(key),
    }
}

/// A unary request's admission, first part: authentication, then the token bucket (the
/// tower layers below shed and time out).
async fn admit_unary(State(a): State<Arc<Admission>>, mut req: Request, next: Next) -> Response {
    if let Some(refused) = authenticate_request(&a.auth, &mut req) {
        return refused;
    }
    req.extensions_mut().insert(BodyRead::default());
    let key = client_key(&req, &a.trusted_proxies);
    let Some(rl) = &a.rate else {
        return within_share(&a, key, req, next).await;
    };
    match take_token(rl, req.extensions().get::<Principal>(), &key) {
        Ok(()) => within_share(&a, key, req, next).await,
        Err(e) => {
            let wait = match &e {
                Error::RateLimited { retry_after, .. } => *retry_after,
                _ => Duration::ZERO,
            };
            let grpc = is_grpc(req.headers());
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
async fn within_share(a: &Admission, key: String, req: Request, next: Next) -> Response {
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
    in_flight: Mutex<HashMap<String, usize>>,
}

/// One slot of a client's share, given back on drop.
struct ShareSlot {
    share: Arc<Share>,
    key: String,
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

    fn take(self: &Arc<Self>, key: String) -> Result<Option<ShareSlot>, Error> {
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

/// Renders what tower's load-shed and timeout layers return, for the caller's protocol.
async fn admission_error(
    headers: HeaderMap,
    body: Option<axum::Extension<BodyRead>>,
    err: BoxError,
) -> Response {
    let grpc = is_grpc(&headers);
    let e = if err.is::<tower::load_shed::error::Overloaded>() {
        overloaded()
    } else if err.is::<tower::timeout::error::Elapsed>() {
        let waiting_for_body = body.is_some_and(|b| !b.0.0.load(Ordering::Relaxed));
        if waiting_for_body && !grpc {
            return status::respond(false, Rejection::SlowBody);
        }
        Error::DeadlineExceeded("performance.request_timeout passed".into())
    } else {
        Error::Internal(format!("request stack: {err}"))
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
}

impl Admission {
    pub fn new(
        rate: &RateLimitConfig,
        perf: &PerformanceConfig,
        trusted_proxies: &[String],
        auth: Arc<Authenticator>,
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
        });
        if a.rate.is_some() {
            let weak = Arc::downgrade(&a);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LIMITER_GC_INTERVAL);
                loop {
                    tick.tick().await;
                    let Some(a) = weak.upgrade() else { break };
                    if let Some(rl) = &a.rate {
                        rl.limiter.retain_recent();
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
            let key = match client_ip(req, &self.trusted_proxies) {
                Some(ip) => format!("ip:{ip}"),
                None => "ip:unknown".into(),
            };
            rl.check(&key)?;
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
    key: String,
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
    if let Some(refused) = authenticate_request(&a.auth, &mut req) {
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

/// The stack's instruments: every request by route and status, gRPC calls by method and code,
/// open connections.
pub struct HttpMetrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    grpc_requests: Counter<u64>,
    /// Counted by the accept loop in `server`.
    pub active_connections: UpDownCounter<i64>,
    /// Connections closed at accept: over `server.max_connections` (reason `total`) or
    /// `server.max_connections_per_peer` (`per_peer`).
    pub refused_connections: Counter<u64>,
    grpc_methods: LabelCap,
}

impl HttpMetrics {
    pub fn new(meter: &Meter) -> Self {
        let m = Self {
            requests: meter
                .u64_counter("http_requests")
                .with_description("HTTP requests by method, endpoint (route) and status")
                .build(),
            duration: meter
                .f64_histogram("http_request_duration")
                .with_unit("s")
                .with_description("Time from request to response headers")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            grpc_requests: meter
                .u64_counter("grpc_server_requests")
                .with_description("gRPC calls by method and status code")
                .build(),
            active_connections: meter
                .i64_up_down_counter("http_active_connections")
                .with_description("Open client connections (HTTP/1 and HTTP/2)")
                .build(),
            refused_connections: meter
                .u64_counter("http_refused_connections")
                .with_description(
                    "Connections closed at accept: over server.max_connections (total) or server.max_connections_per_peer (per_peer)",
                )
                .build(),
            grpc_methods: LabelCap::default(),
        };
        // Each RPC's successful series exists from the start at 0, over both protocols, so
        // a fresh gateway's dashboards and `rate()` alerts read 0 rather than "no data".
        for (method, route, rpc, _) in ROUTES {
            // The WebSocket route's success is the handshake's 101.
            let ok = if *route == crate::transport::routes::ROUTE_EVENTS_WS {
                101
            } else {
                200
            };
            m.requests.add(0, &request_labels(method, route, ok, false));
            let method = m.grpc_methods.label(&format!("/{SERVICE_NAME}/{rpc}"));
            m.grpc_requests.add(
                0,
                &[
                    KeyValue::new("method", method),
                    KeyValue::new("code", status::code_name(tonic::Code::Ok)),
                ],
            );
        }
        m
    }
}

fn request_labels(method: &str, endpoint: &str, status: u16, grpc: bool) -> [KeyValue; 4] {
    [
        KeyValue::new("method", method.to_owned()),
        KeyValue::new("endpoint", endpoint.to_owned()),
        KeyValue::new("status", i64::from(status)),
        KeyValue::new("protocol", if grpc { "grpc" } else { "rest" }),
    ]
}

async fn observe(State(o): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = crate::telemetry::instruments::method_label(req.method());
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let grpc_path = is_grpc(req.headers()).then(|| req.uri().path().to_owned());
    let resp = next.run(req).await;
    let elapsed = started.elapsed().as_secs_f64();
    // A unary reply carries grpc-status in its headers when it failed before any message
    // (every error here); a success carries it in the trailers: OK.
    let grpc_code = grpc_path.as_ref().map(|_| {
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(tonic::Code::from)
            .unwrap_or(tonic::Code::Ok)
    });
    // gRPC routes match `/{service}/{*rest}`: the method path (capped) is the endpoint, and
    // methods nobody serves (UNIMPLEMENTED) are one value, so made-up paths take no place in
    // the cap.
    record_outcome(resp.status(), grpc_code);
    let grpc = grpc_path.map(|path| match grpc_code {
        Some(tonic::Code::Unimplemented) => "unmatched".to_owned(),
        _ => o.grpc_methods.label(&path),
    });
    let labels = request_labels(
        method,
        grpc.as_deref().unwrap_or(&endpoint),
        resp.status().as_u16(),
        grpc.is_some(),
    );
    o.requests.add(1, &labels);
    o.duration.record(elapsed, &labels);
    if let (Some(path), Some(code)) = (grpc, grpc_code) {
        // An IngestStream call is counted when it opens (OK, or the code that refused it);
        // how each of its events went is in events_ingested_total /
        // events_ingested_failed_total.
        o.grpc_requests.add(
            1,
            &[
                KeyValue::new("method", path),
                KeyValue::new("code", status::code_name(code)),
            ],
        );
    }
    resp
}

/// The server span of a request, named and attributed by OpenTelemetry's semantic
/// conventions (HTTP: `{method} {route}`, `http.request.method`, `http.route`, `url.path`,
/// `http.response.status_code`; gRPC: `{service}/{method}`, `rpc.system`, `rpc.service`,
/// `rpc.method`, `rpc.grpc.status_code`), parented on the caller's W3C `traceparent`, and
/// carrying its own `trace_id` and `span_id` for the log lines written inside it.
fn make_span(req: &http::Request<axum::body::Body>) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt as _;
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = req.uri().path();
    let empty = tracing::field::Empty;
    let span = if is_grpc(req.headers()) {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        tracing::info_span!(
            "request",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = empty,
            request_id,
            trace_id = empty,
            span_id = empty,
        )
    } else {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str())
            .unwrap_or(path);
        tracing::info_span!(
            "request",
            otel.name = %format!("{} {route}", req.method()),
            otel.kind = "server",
            otel.status_code = empty,
            http.request.method = %req.method(),
            http.route = route,
            url.path = path,
            http.response.status_code = empty,
            request_id,
            trace_id = empty,
            span_id = empty,
        )
    };
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(req.headers()))
    });
    let _ = span.set_parent(parent);
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
    span
}

/// The outcome on the request's server span: the status code, and the span's status set to
/// error where the conventions say so (HTTP 5xx; the gRPC codes a server is at fault for).
fn record_outcome(status: http::StatusCode, grpc: Option<tonic::Code>) {
    let span = tracing::Span::current();
    use tonic::Code as C;
    let failed = match grpc {
        Some(code) => {
            span.record("rpc.grpc.status_code", code as i32);
            matches!(
                code,
                C::Unknown
                    | C::DeadlineExceeded
                    | C::Unimplemented
                    | C::Internal
                    | C::Unavailable
                    | C::DataLoss
            )
        }
        None => {
            span.record("http.response.status_code", status.as_u16());
            status.is_server_error()
        }
    };
    if failed {
        span.record("otel.status_code", "error");
    }
}

/// Wraps every route (ingest, health, metrics, reflection) in id, trace and metrics layers.
pub fn observed(router: Router, metrics: Arc<HttpMetrics>) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(make_span)
                    // 5xx answers (503 while not ready, for one) are expected states here,
                    // each already logged where it arises: no second ERROR line per request.
                    .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
            )
            .layer(from_fn_with_state(metrics, observe)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `client_ip` for a request from `peer` carrying `headers` (name, value; a name may come
    /// several times), with 127.0.0.0/8 and 10.0.0.0/8 trusted.
    fn client_of(peer: &str, headers: &[(&str, &str)]) -> IpAddr {
        let mut req = Request::new(axum::body::Body::empty());
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let peer: SocketAddr = format!("{peer}:4000").parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let trusted = [
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        client_ip(&req, &trusted).unwrap()
    }

    #[test]
    fn the_forwarded_walk_believes_only_trusted_hops() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = "x-forwarded-for";
        // An untrusted peer's headers say nothing.
        assert_eq!(
            client_of("192.0.2.1", &[(xff, "198.51.100.1")]),
            ip("192.0.2.1")
        );
        // Every line, in order: the proxy's own line is the last one.
        let lines = [(xff, "198.51.100.1"), (xff, "203.0.113.7")];
        assert_eq!(client_of("127.0.0.1", &lines), ip("203.0.113.7"));
        // Trusted hops are walked past; the first untrusted one is the client.
        let chain = [
            (xff, "198.51.100.1, 203.0.113.7, 10.1.1.1"),
            (xff, "10.2.2.2"),
        ];
        assert_eq!(client_of("127.0.0.1", &chain), ip("203.0.113.7"));
        // An unreadable entry ends the walk at the last trusted hop, never skipped.
        for bad in ["203.0.113.7:5555", "unknown", "", "not an address"] {
            let h = [(xff, format!("198.51.100.1, {bad}, 10.1.1.1"))];
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(client_of("127.0.0.1", &h), ip("10.1.1.1"), "{bad:?}");
        }
        // All trusted: the leftmost.
        assert_eq!(client_of("127.0.0.1", &[(xff, "10.9.9.9")]), ip("10.9.9.9"));
        // No header: the peer.
        assert_eq!(client_of("127.0.0.1", &[]), ip("127.0.0.1"));
        // Forwarded, every line, ports allowed there; an element with no address stops.
        let fwd = [
            ("forwarded", "for=198.51.100.1"),
            ("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"),
        ];
        assert_eq!(client_of("127.0.0.1", &fwd), ip("2001:db8::1"));
        let fwd = [(
            "forwarded",
            "for=198.51.100.1, for=_hidden, for=10.1.1.1:80",
        )];
        assert_eq!(client_of("127.0.0.1", &fwd), ip("10.1.1.1"));
        // X-Forwarded-For wins when both are there.
        let both = [("forwarded", "for=198.51.100.1"), (xff, "203.0.113.7")];
        assert_eq!(client_of("127.0.0.1", &both), ip("203.0.113.7"));
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    }

    /// A flood of 1,000,000 distinct client keys (one request each, as rotating forwarded
    /// addresses would bring) leaves at most LIMITER_MAX_KEYS buckets plus one check
    /// interval, and the process grows by less than 64 MiB for it (unbounded, the same flood
    /// holds a million buckets).
    #[test]
    fn a_million_distinct_keys_keep_the_limiter_bounded() {
        let rl = RateLimit::new(
            NonZeroU32::new(10_000).unwrap(),
            NonZeroU32::new(20_000).unwrap(),
        );
        let before = rss_kib();
        let mut most = 0;
        for i in 0..1_000_000u32 {
            let key = format!("ip:{}", std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(rl.check(&key).is_ok());
            if i % 4096 == 0 {
                most = most.max(rl.limiter.len());
            }
        }
        most = most.max(rl.limiter.len());
        let grown_mib = rss_kib().saturating_sub(before) / 1024;
        assert!(
            most <= LIMITER_MAX_KEYS + LIMITER_SIZE_CHECK_EVERY as usize,
            "{most} buckets"
        );
        assert!(grown_mib < 64, "RSS grew by {grown_mib} MiB");
    }
}
