//! Authentication, the stack's fourth step: the request's credentials (API key, JWT, client
//! certificate) become its [`Principal`], or the request ends in 401 / UNAUTHENTICATED. On the
//! ingest routes (and `/metrics` under `auth.protect_metrics`), before admission, so the
//! rate-limit bucket is the principal's.
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, HeaderName};

use super::middleware::{Next, from_fn};
use crate::core::auth::{Authenticator, Credentials, Principal};
use crate::core::error::{Error, FieldViolation};
use crate::core::event::Forwarded;
use crate::transport::status::{self, is_grpc};

/// Header carrying an API key (the other way is `Authorization: Bearer <key>`). Headers are
/// looked up by `HeaderName`, never by `&str`: a string name is parsed on every lookup (and
/// http's parser trips valgrind's uninitialised-read check in the release smoke run).
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static(crate::config::API_KEY_HEADER);

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
    // A browser cannot set headers on a WebSocket: its token may come as a subprotocol it
    // offers instead (`bearer.<token>`, beside `eventgateway.v1`, the one the gateway
    // selects, so the token is never echoed). Never a query parameter: URLs end up in
    // access logs and browser history. Only on an upgrade, and only without a header.
    let bearer = bearer.or_else(|| {
        req.headers()
            .get(http::header::UPGRADE)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
            .then(|| websocket_bearer(req.headers()))
            .flatten()
    });
    let credentials = Credentials {
        bearer,
        api_key: header(&API_KEY_HEADER),
        certificate: req.extensions().get::<PeerIdentity>().map(|p| p.0.as_str()),
    };
    a.authenticate(&credentials)
}

/// The prefix of a WebSocket subprotocol offer that carries a bearer token.
pub const WEBSOCKET_BEARER_PREFIX: &str = "bearer.";

/// The token of the first `bearer.<token>` among the `Sec-WebSocket-Protocol` offers.
fn websocket_bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WEBSOCKET_BEARER_PREFIX))
        .filter(|t| !t.is_empty())
}

/// Puts the request's [`Principal`] on it, with the headers `forward` names; or returns the
/// refusal to send instead: 401 / UNAUTHENTICATED for the caller's protocol, or the
/// forwarded headers' own refusal (after authentication, so an anonymous caller learns
/// nothing of the policy).
pub(super) fn authenticate_request(
    a: &Authenticator,
    forward: Option<&ForwardHeaders>,
    req: &mut Request,
) -> Option<Response> {
    let outcome = principal_of(a, req).and_then(|mut p| {
        if let Some(f) = forward {
            p.forwarded = f.capture(req.headers())?;
        }
        Ok(p)
    });
    match outcome {
        Ok(p) => {
            req.extensions_mut().insert(p);
            None
        }
        Err(e) => Some(status::respond(is_grpc(req.headers()), e)),
    }
}

/// `kafka.forward_headers`: the request headers (gRPC metadata alike) that travel onto each
/// of its records as Kafka headers, and how many bytes of them one request may bring.
pub struct ForwardHeaders {
    names: Vec<HeaderName>,
    max_bytes: u64,
}

impl ForwardHeaders {
    /// `None` when no header is forwarded: then the stack does nothing per request. The names
    /// were checked at config load.
    pub fn new(kafka: &crate::config::KafkaConfig) -> Option<Self> {
        let names: Vec<HeaderName> = kafka
            .forward_headers
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
            .collect();
        (!names.is_empty()).then(|| Self {
            names,
            max_bytes: kafka.forward_headers_max_bytes.as_u64(),
        })
    }

    /// The named headers `headers` holds, in the order of `kafka.forward_headers` (a repeated
    /// header in the order sent), or `None` when it holds none of them. A value that is not
    /// visible ASCII is refused rather than altered, and so is more than `max_bytes` of them
    /// (names and values): neither is cut, since a consumer routing on a half header would
    /// route wrong.
    pub fn capture(&self, headers: &HeaderMap) -> Result<Option<Forwarded>, Error> {
        let mut out = Vec::new();
        let mut size = 0u64;
        for name in &self.names {
            for value in headers.get_all(name) {
                let value = value.to_str().map_err(|_| {
                    Error::InvalidArgument(vec![FieldViolation::new(
                        format!("header {name}"),
                        "a header kafka.forward_headers forwards must be visible ASCII",
                    )])
                })?;
                size += (name.as_str().len() + value.len()) as u64;
                out.push((name.as_str().to_owned(), value.to_owned()));
            }
        }
        if size > self.max_bytes {
            return Err(Error::TooLarge {
                what: "forwarded headers (kafka.forward_headers_max_bytes)".into(),
                limit: self.max_bytes,
                size: Some(size),
            });
        }
        Ok((!out.is_empty()).then(|| Forwarded::from(out)))
    }
}

/// Lets through only requests with credentials that check out, whatever `auth.required`
/// says: `auth.protect_metrics` means an anonymous scrape is refused even on a gateway that
/// takes anonymous events.
async fn authenticate(a: Arc<Authenticator>, mut req: Request, next: Next) -> Response {
    if let Some(refused) = authenticate_request(&a, None, &mut req) {
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
/// ingest routes authenticate in admission (`admission::admit`), a step of the one stack
/// layer rather than a layer of its own, since each layer clones and boxes the route below
/// it on every request (`stack::layer`).
pub fn authenticated(router: Router, auth: Arc<Authenticator>) -> Router {
    router.route_layer(from_fn(auth, authenticate))
}
