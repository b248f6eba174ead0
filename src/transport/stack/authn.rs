//! Authentication, the stack's fourth layer: the request's credentials (API key, JWT, client
//! certificate) become its [`Principal`], or the request ends in 401 / UNAUTHENTICATED. On the
//! ingest routes (and `/metrics` under `auth.protect_metrics`), before admission, so the
//! rate-limit bucket is the principal's.
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use http::HeaderName;

use crate::core::auth::{Authenticator, Credentials, Principal};
use crate::core::error::Error;
use crate::transport::status::{self, is_grpc};

/// Header carrying an API key (the other way is `Authorization: Bearer <key>`). Headers are
/// looked up by `HeaderName`, never by `&str`: a string name is parsed on every lookup (and
/// http's parser trips valgrind's uninitialised-read check in the release smoke run).
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

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
pub(super) fn authenticate_request(a: &Authenticator, req: &mut Request) -> Option<Response> {
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
