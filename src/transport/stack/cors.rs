//! Browsers, the stack's third step, right inside observation and before all the ingest
//! routes add (authentication, admission): `server.cors`. A preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered here by tower-http's CORS layer, so it needs no
//! credentials and takes no rate-limit token; a request carrying an `Origin` that is not listed
//! is refused with 403 (in the caller's protocol) and logged at
//! most once per 10 s with the count held back. Browsers apply CORS to `fetch` but not to
//! WebSockets, which any page may open: the `Origin` check is what keeps a page of an
//! unlisted origin from using a token it holds over the WebSocket. With no origin listed
//! (the default) this step is skipped: no preflight is answered, and the WebSocket
//! route itself refuses an upgrade whose `Origin` (every browser sends one) is another site
//! than the `Host` it was sent to, with [`origin_refused`]: else any page a user opens could
//! push events through the user's browser into a gateway that has no credentials to ask for.
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use futures::FutureExt as _;
use http::{HeaderName, HeaderValue, Method, header};
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::config::CorsConfig;
use crate::core::error::{Error, FieldViolation};
use crate::telemetry::throttle::LogThrottle;
use crate::transport::status::{self, is_grpc};

/// Headers a page's script may read from a reply: the request id (to quote in a support
/// request), the retry delay and rate-limit state, and which preference was applied.
const EXPOSED: [HeaderName; 5] = [
    HeaderName::from_static("x-request-id"),
    header::RETRY_AFTER,
    HeaderName::from_static("ratelimit"),
    HeaderName::from_static("ratelimit-policy"),
    HeaderName::from_static("preference-applied"),
];

/// The longest part of a refused `Origin` quoted in the reply and the log (a header can be
/// tens of KiB; a real origin is short).
const QUOTED_ORIGIN_MAX: usize = 200;

/// Which origins may call, for the `Origin` check.
struct Origins {
    /// `*` listed: every origin.
    any: bool,
    listed: Vec<HeaderValue>,
    refused_log: LogThrottle,
}

impl Origins {
    /// Listed, or `*` listed. The gateway's own origin is not guessed from `Host` (a plain-HTTP
    /// page under the same name, DNS rebinding): list it if a page it serves calls it.
    fn allow(&self, origin: &HeaderValue) -> bool {
        self.any || self.listed.iter().any(|o| o == origin)
    }
}

/// `server.cors` when it lists origins: the `Origin` check, then tower-http's CORS layer.
pub struct Browsers {
    origins: Origins,
    layer: CorsLayer,
}

impl Browsers {
    /// The stack's browser step as `config` sets it; none when no origin is listed.
    pub fn new(config: &CorsConfig) -> Option<Self> {
        if !config.enabled() {
            return None;
        }
        let any = config.allowed_origins.iter().any(|o| o == "*");
        // Browsers send scheme and host in lowercase: so is the list, whatever the config says.
        let listed: Vec<HeaderValue> = config
            .allowed_origins
            .iter()
            .filter(|o| *o != "*")
            .filter_map(|o| HeaderValue::from_str(&o.to_ascii_lowercase()).ok())
            .collect();
        let methods: Vec<Method> = config
            .allowed_methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .collect();
        let headers = if config.allowed_headers.iter().any(|h| h == "*") {
            AllowHeaders::mirror_request()
        } else {
            AllowHeaders::list(
                config
                    .allowed_headers
                    .iter()
                    .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()),
            )
        };
        // Never `Access-Control-Allow-Credentials`: the gateway reads no cookies, and a page
        // sends its token in `Authorization` (or the WebSocket's subprotocol offer) explicitly.
        let layer = CorsLayer::new()
            .allow_origin(if any {
                AllowOrigin::any()
            } else {
                AllowOrigin::list(listed.clone())
            })
            .allow_methods(methods)
            .allow_headers(headers)
            .expose_headers(EXPOSED)
            .max_age(config.max_age);
        Some(Self {
            origins: Origins {
                any,
                listed,
                refused_log: LogThrottle::new(Duration::from_secs(10)),
            },
            layer,
        })
    }

    /// Refuses a request whose `Origin` may not call (see the module's paragraph); else runs
    /// `rest` (the stack below and the route) inside tower-http's CORS layer, which answers a
    /// preflight itself and puts the CORS headers on every other reply, refusals of the
    /// steps below included.
    pub(super) async fn run<F, Fut>(&self, req: Request, rest: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: Future<Output = Response>,
    {
        if let Some(origin) = req.headers().get(header::ORIGIN)
            && !self.origins.allow(origin)
        {
            let e = origin_refused(origin, req.uri().path(), &self.origins.refused_log);
            return status::respond(is_grpc(req.headers()), e);
        }
        // The layer wraps a service; `rest` is the one call it makes (none for a preflight).
        let mut rest = Some(rest);
        let below = tower::service_fn(move |req| {
            let rest = rest
                .take()
                .expect("tower-http's CORS service calls its inner once");
            rest(req).map(Ok::<_, Infallible>)
        });
        let Ok(resp) = self.layer.layer(below).oneshot(req).await;
        resp
    }
}

/// The refusal of a request from a browser origin that may not call (403 naming the header
/// and the origin, cut to [`QUOTED_ORIGIN_MAX`]), logged at most once per `log`'s period
/// with the count held back.
pub fn origin_refused(origin: &HeaderValue, path: &str, log: &LogThrottle) -> Error {
    let shown: String = String::from_utf8_lossy(origin.as_bytes())
        .chars()
        .take(QUOTED_ORIGIN_MAX)
        .collect();
    if let Some(n) = log.due() {
        tracing::warn!(
            origin = %shown,
            path,
            refused = n,
            "request from a browser origin not in server.cors.allowed_origins refused (403); `refused` counts those since the last such line"
        );
    }
    Error::PermissionDenied(vec![FieldViolation::new(
        "header Origin",
        format!("origin `{shown}` is not in server.cors.allowed_origins"),
    )])
}
