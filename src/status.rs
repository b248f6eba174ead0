//! Where errors become status codes, and the only place: one exhaustive table from [`Error`]
//! to a gRPC code and an HTTP status (grpc-gateway's mapping, plus 405/413/415 where HTTP has a
//! sharper answer), rendered two ways: as a `tonic::Status` with rich error details, and as an
//! HTTP reply whose JSON body has the shape of `google.rpc.Status`. Batch item codes come from
//! the same table.
use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, FieldViolation};
use crate::proto::{EventError, EventResult, IngestBatchResponse, Outcome};
use crate::service::ItemOutcome;

/// An error laid out for rendering: codes for both protocols plus the details both carry.
struct Mapped {
    grpc: Code,
    http: StatusCode,
    message: String,
    violations: Vec<FieldViolation>,
    retry_after: Option<Duration>,
}

fn map(e: Error) -> Mapped {
    let message = e.to_string();
    let m = |grpc, http| Mapped {
        grpc,
        http,
        message: message.clone(),
        violations: Vec::new(),
        retry_after: None,
    };
    match e {
        Error::InvalidArgument(violations) => Mapped {
            violations,
            ..m(Code::InvalidArgument, StatusCode::BAD_REQUEST)
        },
        Error::Malformed(_) => m(Code::InvalidArgument, StatusCode::BAD_REQUEST),
        Error::TooLarge { ref what, .. } => Mapped {
            violations: vec![FieldViolation::new(what.clone(), message.clone())],
            ..m(Code::InvalidArgument, StatusCode::PAYLOAD_TOO_LARGE)
        },
        Error::UnsupportedMediaType { .. } => {
            m(Code::InvalidArgument, StatusCode::UNSUPPORTED_MEDIA_TYPE)
        }
        // No such route: gRPC's word for an unknown method is UNIMPLEMENTED.
        Error::NotFound(_) => m(Code::Unimplemented, StatusCode::NOT_FOUND),
        Error::MethodNotAllowed { .. } => m(Code::Unimplemented, StatusCode::METHOD_NOT_ALLOWED),
        Error::RateLimited { retry_after, .. } => Mapped {
            retry_after: Some(retry_after),
            ..m(Code::ResourceExhausted, StatusCode::TOO_MANY_REQUESTS)
        },
        Error::Unavailable { retry_after, .. } => Mapped {
            retry_after: Some(retry_after),
            ..m(Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
        },
        Error::DeadlineExceeded(_) => m(Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT),
        Error::Internal(_) => m(Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// The canonical upper-case name of a gRPC code, as `google.rpc.Code` spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let m = map(e);
        let mut details = ErrorDetails::new();
        if !m.violations.is_empty() {
            details.set_bad_request(
                m.violations
                    .into_iter()
                    .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(d) = m.retry_after {
            details.set_retry_info(Some(Duration::from_secs(retry_after_secs(d))));
        }
        tonic::Status::with_error_details(m.grpc, m.message, details)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let m = map(self);
        let mut details = Vec::new();
        if !m.violations.is_empty() {
            let fv: Vec<_> = m
                .violations
                .iter()
                .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
                .collect();
            details.push(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": fv,
            }));
        }
        if let Some(d) = m.retry_after {
            details.push(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{}s", retry_after_secs(d)),
            }));
        }
        let body = serde_json::json!({
            "code": m.grpc as i32,
            "message": m.message,
            "details": details,
        });
        let mut resp = (m.http, Json(body)).into_response();
        if let Some(d) = m.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
        }
        if m.http == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        resp
    }
}

/// True for gRPC requests (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An error rendered for the caller's protocol.
pub fn respond(grpc: bool, e: Error) -> Response {
    if grpc {
        grpc_response(e)
    } else {
        e.into_response()
    }
}

/// An error as a complete gRPC reply (HTTP 200 with `grpc-status`), for routes that no tonic
/// service answers.
pub fn grpc_response(e: Error) -> Response {
    tonic::Status::from(e)
        .into_http::<axum::body::Body>()
        .into_response()
}

/// The `IngestBatch` reply both transports send, built from the per-event outcomes.
pub fn batch_reply(items: Vec<ItemOutcome>) -> IngestBatchResponse {
    let mut stored = 0;
    let results: Vec<EventResult> = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item.result {
            Ok(s) => {
                stored += 1;
                EventResult {
                    index: index as i32,
                    id: item.id,
                    outcome: Outcome::Stored as i32,
                    partition: s.partition,
                    offset: s.offset,
                    error: None,
                }
            }
            Err(e) => {
                let retryable = e.is_retryable();
                let m = map(e);
                EventResult {
                    index: index as i32,
                    id: item.id,
                    outcome: Outcome::Failed as i32,
                    partition: 0,
                    offset: 0,
                    error: Some(EventError {
                        code: code_name(m.grpc).into(),
                        message: m.message,
                        retryable,
                    }),
                }
            }
        })
        .collect();
    let failed = results.len() as i32 - stored;
    IngestBatchResponse {
        results,
        stored_count: stored,
        failed_count: failed,
    }
}
