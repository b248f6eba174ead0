//! JSON REST transcoding: one POST route per RPC, as the contract's `google.api.http`
//! annotations declare. Bodies are decoded with the proto3 JSON mapping (pbjson: lowerCamelCase
//! and original field names), passed to the same core [`Gateway`] the gRPC service calls, and
//! the replies are encoded the same way. Content type, body size and decoding errors are
//! reported here, as [`Error`]s like every other failure.
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::proto::{CloudEvent, IngestBatchRequest, IngestEventRequest, ValidateRequest};
use crate::service::Gateway;
use crate::status::batch_reply;

pub const ROUTE_INGEST_EVENT: &str = "/api/v1/events";
pub const ROUTE_INGEST_BATCH: &str = "/api/v1/events/batch";
pub const ROUTE_VALIDATE: &str = "/api/v1/events/validate";

/// Every REST route with the RPC it transcodes and the request field its body fills (`*` for
/// the whole request), exactly as in the contract; a test holds the two together.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (ROUTE_INGEST_EVENT, "IngestEvent", "event"),
    (ROUTE_INGEST_BATCH, "IngestBatch", "*"),
    (ROUTE_VALIDATE, "Validate", "event"),
];

#[derive(Clone)]
struct RestState {
    gateway: Arc<Gateway>,
    max_body: usize,
}

/// The REST routes; requests with a body over `max_body` bytes get 413.
pub fn router(gateway: Arc<Gateway>, max_body: usize) -> Router {
    Router::new()
        .route(ROUTE_INGEST_EVENT, post(ingest_event))
        .route(ROUTE_INGEST_BATCH, post(ingest_batch))
        .route(ROUTE_VALIDATE, post(validate))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(RestState { gateway, max_body })
}

async fn ingest_event(State(s): State<RestState>, req: Request) -> Result<Response, Error> {
    let event: CloudEvent = decode(req, s.max_body).await?;
    let reply = s
        .gateway
        .ingest_event(IngestEventRequest { event: Some(event) })
        .await?;
    Ok(json(&reply))
}

async fn ingest_batch(State(s): State<RestState>, req: Request) -> Result<Response, Error> {
    let batch: IngestBatchRequest = decode(req, s.max_body).await?;
    let items = s.gateway.ingest_batch(batch).await?;
    Ok(json(&batch_reply(items)))
}

async fn validate(State(s): State<RestState>, req: Request) -> Result<Response, Error> {
    let event: CloudEvent = decode(req, s.max_body).await?;
    let reply = s.gateway.validate(ValidateRequest { event: Some(event) })?;
    Ok(json(&reply))
}

async fn method_not_allowed(req: Request) -> Error {
    Error::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
}

/// Unknown paths: a JSON 404 for HTTP clients; gRPC clients get UNIMPLEMENTED as gRPC expects.
pub async fn fallback(req: Request) -> Response {
    let err = Error::NotFound(format!("{} {}", req.method(), req.uri().path()));
    crate::status::respond(crate::status::is_grpc(req.headers()), err)
}

fn json<T: Serialize>(value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("replies always serialize");
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `application/json`, or any `+json` type such as `application/cloudevents+json`.
fn check_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let expected = "Content-Type: application/json";
    let Some(raw) = headers.get(header::CONTENT_TYPE) else {
        return Err(Error::UnsupportedMediaType {
            found: "(none)".into(),
            expected: expected.into(),
        });
    };
    let text = raw.to_str().unwrap_or("(not text)");
    let ok = text.parse::<mime::Mime>().is_ok_and(|m| {
        m.type_() == mime::APPLICATION
            && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType {
            found: text.to_owned(),
            expected: expected.into(),
        })
    }
}

async fn read_body(req: Request, max_body: usize) -> Result<Bytes, Error> {
    let too_large = |size| Error::TooLarge {
        what: "request body".into(),
        limit: max_body as u64,
        size,
    };
    // Refuse by the declared length before reading anything.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > max_body as u64
    {
        return Err(too_large(Some(len)));
    }
    // Without a length (chunked), read at most the limit and stop there.
    match Limited::new(req.into_body(), max_body).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(None)),
        Err(e) => Err(Error::Malformed(format!(
            "could not read the request body: {e}"
        ))),
    }
}

async fn decode<T: DeserializeOwned>(req: Request, max_body: usize) -> Result<T, Error> {
    check_content_type(req.headers())?;
    let bytes = read_body(req, max_body).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Malformed(format!("invalid JSON body: {e}")))
}
