//! The HTTP face's table: every REST route with the RPC it transcodes (a test holds it to the
//! contract's `google.api.http` annotations), and [`Rejection`], what the edge refuses before
//! the core sees a request. It sits below the stack and the handlers, which both read it, so
//! neither imports the other for it; `status.rs` maps every [`Rejection`] to the wire.
use axum::extract::Request;

use crate::core::error::Error;

pub const ROUTE_INGEST_EVENT: &str = "/api/v1/events";
pub const ROUTE_INGEST_BATCH: &str = "/api/v1/events/batch";
pub const ROUTE_VALIDATE: &str = "/api/v1/events/validate";
pub const ROUTE_TYPES: &str = "/api/v1/types";
pub const ROUTE_EVENTS_WS: &str = "/api/v1/events/ws";

/// What the REST adapter and the router's fallback refuse before the core sees a request, or
/// anything the core says. `status.rs` maps every variant.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// No route has this path.
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    /// The route exists; `allowed` lists the methods it takes.
    #[error("method {method} not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    /// The body's media type is not one we decode.
    #[error("unsupported media type `{found}`: send {expected}")]
    UnsupportedMediaType {
        found: String,
        expected: &'static str,
    },
    /// The body's `Content-Encoding` is not one we decompress.
    #[error("unsupported Content-Encoding `{found}`: send one of {supported}, or none")]
    UnsupportedEncoding {
        found: String,
        supported: &'static str,
    },
    /// A plain request on the WebSocket route: it only answers a WebSocket handshake.
    #[error(
        "{path} is a WebSocket: send a WebSocket handshake (GET with Upgrade: websocket): {reason}"
    )]
    UpgradeRequired { path: &'static str, reason: String },
    /// `performance.request_timeout` passed while the body was still arriving.
    #[error(
        "the request body did not arrive within performance.request_timeout; send it faster, or in smaller requests"
    )]
    SlowBody,
    #[error(transparent)]
    Core(#[from] Error),
}

/// Every REST route: its method, path, the RPC it transcodes and the request field its body
/// fills (`*` for the whole request, empty for none), exactly as in the contract; a test holds
/// the two together.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("POST", ROUTE_INGEST_EVENT, "IngestEvent", "event"),
    ("POST", ROUTE_INGEST_BATCH, "IngestBatch", "*"),
    ("POST", ROUTE_VALIDATE, "Validate", "event"),
    ("GET", ROUTE_TYPES, "ListEventTypes", ""),
    ("GET", ROUTE_EVENTS_WS, "IngestStream", ""),
];

/// The answer of a known path asked with the wrong method, naming the one it takes.
pub async fn method_not_allowed(req: Request) -> Rejection {
    let path = req.uri().path().to_owned();
    let allowed = ROUTES
        .iter()
        .find(|(_, p, _, _)| *p == path)
        .map_or("POST", |(m, _, _, _)| *m);
    Rejection::MethodNotAllowed {
        method: req.method().to_string(),
        path,
        allowed,
    }
}
