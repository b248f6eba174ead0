//! The one tower stack, built here and wrapped around gRPC and REST alike (nothing
//! cross-cutting lives in a tonic interceptor, which REST would skip): one tower layer over
//! every route and the fallback (`layer`), whose steps are, outermost first:
//!
//! 1. request id (`x-request-id`, a random UUID set when absent, by `observe` as it starts):
//!    every later step and log line can name the request;
//! 2. the trace span, the metrics and the id echoed on the reply (one step with 1, `observe`; the
//!    echo marked never to be indexed by HTTP/2's header compression): the span is parented on an
//!    incoming W3C `traceparent` (HTTP header or gRPC metadata, which travel the same way)
//!    and current while the handler and the sink run, so trace context reaches the Kafka
//!    record headers; the metrics are outside admission so that rejections (401, 403, 429,
//!    503, 504) are counted too;
//! 3. browsers (`server.cors`, only when an origin is listed): preflights answered here,
//!    before authentication and admission; a request from an `Origin` not listed refused;
//! 4. authentication, on the ingest routes (and `/metrics` with `auth.protect_metrics`):
//!    credentials (API key, JWT, client certificate) become the request's [`Principal`], or a
//!    401 / UNAUTHENTICATED; before admission, so that the rate-limit bucket is the
//!    principal's and nothing an unauthenticated client sends selects one; the headers
//!    `kafka.forward_headers` names are captured beside the principal (refused here when
//!    over `kafka.forward_headers_max_bytes`), for the core to put on each record;
//! 5. admission, on the ingest routes only, told by the route a request matched (health,
//!    metrics and reflection stay reachable under overload): per-client token bucket, then the client's share of the slots
//!    (`performance.max_concurrent_requests_per_client`), then load shedding at
//!    `performance.max_concurrent_requests`, then the `performance.request_timeout` deadline.
//!    Rate limiting comes first so a flooding client cannot take concurrency slots, and the
//!    share so that one slow client (headers, no body) cannot take them all. Streams
//!    (IngestStream, the WebSocket route) take a `performance.max_streams` slot (and one of
//!    their client's `performance.max_streams_per_client`) when they open, and each of
//!    their events then passes the same bucket, the same share, the same slots and the
//!    same deadline, through the [`Admit`] this step puts on the request.
//!
//! Rejections are rendered for the caller's protocol: a gRPC client gets a gRPC status
//! (RESOURCE_EXHAUSTED with RetryInfo, UNAVAILABLE, DEADLINE_EXCEEDED), never a bare HTTP
//! status that gRPC would read as UNAVAILABLE.
//!
//! One file per concern: `observe` (spans and metrics), `cors`, `authn`, `client` (the
//! client's address), `rate` (the token buckets) and `admission`; `layer` calls the steps in
//! order from one function, made a tower layer by `middleware` (a layer per step cost a
//! boxed service level per request, #26).
mod admission;
mod authn;
mod client;
mod cors;
mod layer;
mod middleware;
mod observe;
mod rate;

pub use admission::{Admission, BodyRead};
pub use authn::{API_KEY_HEADER, ForwardHeaders, PeerIdentity, authenticated, principal};
pub use cors::{Browsers, origin_refused};
pub use layer::{Stack, stacked};
pub use observe::HttpMetrics;
