//! Where errors become status codes, and the only place: one exhaustive table from the core's
//! [`Error`] and one from the REST adapter's [`Rejection`] to a gRPC code and an HTTP status
//! (grpc-gateway's mapping, plus 405/413/415 where HTTP has a sharper answer). Both are
//! rendered two ways: as a `tonic::Status` with rich error details, and as an HTTP reply whose
//! JSON body has the shape of `google.rpc.Status`. Batch item errors come from the same table.
use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::core::error::{Error, FieldViolation};
use crate::proto::{self, EventError};
use crate::transport::routes::Rejection;

/// A failure laid out for rendering: codes for both protocols plus the details both carry.
#[derive(Debug)]
struct Mapped {
    grpc: Code,
    http: StatusCode,
    message: String,
    violations: Vec<FieldViolation>,
    retry_after: Option<Duration>,
    /// The methods a route takes, for 405's `Allow` header.
    allow: Option<&'static str>,
    /// The content encodings accepted, for 415's `Accept-Encoding` header.
    accept_encoding: Option<&'static str>,
    /// The protocol to upgrade to, for 426's `Upgrade` header.
    upgrade: Option<&'static str>,
    /// 401's `WWW-Authenticate` challenge.
    challenge: Option<&'static str>,
}

impl Mapped {
    fn new(grpc: Code, http: StatusCode, message: String) -> Self {
        Self {
            grpc,
            http,
            message,
            violations: Vec::new(),
            retry_after: None,
            allow: None,
            accept_encoding: None,
            upgrade: None,
            challenge: None,
        }
    }
}

/// RFC 6750's challenge: API keys and JWTs are both presented as bearer tokens.
const CHALLENGE: &str = "Bearer realm=\"event-gateway\"";

fn map(e: Error) -> Mapped {
    let message = e.to_string();
    match e {
        Error::InvalidArgument(violations) => Mapped {
            violations,
            ..Mapped::new(Code::InvalidArgument, StatusCode::BAD_REQUEST, message)
        },
        Error::Malformed(_) => Mapped::new(Code::InvalidArgument, StatusCode::BAD_REQUEST, message),
        Error::TooLarge { ref what, .. } => Mapped {
            violations: vec![FieldViolation::new(what.clone(), message.clone())],
            ..Mapped::new(
                Code::InvalidArgument,
                StatusCode::PAYLOAD_TOO_LARGE,
                message,
            )
        },
        Error::Unauthenticated { .. } => Mapped {
            challenge: Some(CHALLENGE),
            ..Mapped::new(Code::Unauthenticated, StatusCode::UNAUTHORIZED, message)
        },
        Error::PermissionDenied(violations) => Mapped {
            violations,
            ..Mapped::new(Code::PermissionDenied, StatusCode::FORBIDDEN, message)
        },
        Error::RateLimited { retry_after, .. } => Mapped {
            retry_after: Some(retry_after),
            ..Mapped::new(
                Code::ResourceExhausted,
                StatusCode::TOO_MANY_REQUESTS,
                message,
            )
        },
        Error::Unavailable { retry_after, .. } => Mapped {
            retry_after: Some(retry_after),
            ..Mapped::new(Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE, message)
        },
        Error::DeadlineExceeded(_) => {
            Mapped::new(Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT, message)
        }
        Error::Internal(_) => {
            Mapped::new(Code::Internal, StatusCode::INTERNAL_SERVER_ERROR, message)
        }
    }
}

fn map_rejection(r: Rejection) -> Mapped {
    let message = r.to_string();
    match r {
        Rejection::Core(e) => map(e),
        // No such route: gRPC's word for an unknown method is UNIMPLEMENTED.
        Rejection::NotFound { .. } => {
            Mapped::new(Code::Unimplemented, StatusCode::NOT_FOUND, message)
        }
        Rejection::MethodNotAllowed { allowed, .. } => Mapped {
            allow: Some(allowed),
            ..Mapped::new(Code::Unimplemented, StatusCode::METHOD_NOT_ALLOWED, message)
        },
        Rejection::UnsupportedMediaType { .. } => Mapped::new(
            Code::InvalidArgument,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message,
        ),
        Rejection::UnsupportedEncoding { supported, .. } => Mapped {
            accept_encoding: Some(supported),
            ..Mapped::new(
                Code::InvalidArgument,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message,
            )
        },
        Rejection::SlowBody => {
            Mapped::new(Code::DeadlineExceeded, StatusCode::REQUEST_TIMEOUT, message)
        }
        Rejection::UpgradeRequired { .. } => Mapped {
            upgrade: Some("websocket"),
            ..Mapped::new(
                Code::FailedPrecondition,
                StatusCode::UPGRADE_REQUIRED,
                message,
            )
        },
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

/// Bytes of field violations a gRPC status carries in `grpc-status-details-bin` (a trailer,
/// base64 on the wire). grpc-core's clients (grpcio, grpc-java's netty default is 8 KiB too)
/// refuse metadata past 8 KiB; the message is short (`Error`'s summary), so the details keep
/// the whole trailer block well under that. REST bodies carry every violation.
const GRPC_VIOLATION_BYTES: usize = 4096;

/// The violations that fit in [`GRPC_VIOLATION_BYTES`], and a last entry counting the rest.
fn violations_for_grpc(mut violations: Vec<FieldViolation>) -> Vec<tonic_types::FieldViolation> {
    // Validation's own "and N more" entry is recounted with what is cut here.
    let counted = match violations
        .last()
        .and_then(crate::core::validate::omitted_count)
    {
        Some(n) => {
            violations.pop();
            n
        }
        None => 0,
    };
    let listed = violations.len();
    let mut used = 0;
    let mut out = Vec::new();
    for v in violations {
        // Field and description, plus protobuf framing.
        let size = v.field.len() + v.description.len() + 8;
        if used + size > GRPC_VIOLATION_BYTES {
            break;
        }
        used += size;
        out.push(tonic_types::FieldViolation::new(v.field, v.description));
    }
    let left = listed - out.len() + counted;
    if left > 0 {
        out.push(tonic_types::FieldViolation::new(
            "",
            format!(
                "and {left} more violations, not listed here (REST replies list up to {})",
                crate::core::validate::MAX_VIOLATIONS
            ),
        ));
    }
    out
}

fn to_status(m: Mapped) -> tonic::Status {
    let mut details = ErrorDetails::new();
    if !m.violations.is_empty() {
        details.set_bad_request(violations_for_grpc(m.violations));
    }
    if let Some(d) = m.retry_after {
        details.set_retry_info(Some(Duration::from_secs(retry_after_secs(d))));
    }
    tonic::Status::with_error_details(m.grpc, m.message, details)
}

fn to_http(m: Mapped) -> Response {
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
    if let Some(allow) = m.allow {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(enc) = m.accept_encoding {
        resp.headers_mut()
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static(enc));
    }
    if let Some(c) = m.challenge {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
    }
    if let Some(proto) = m.upgrade {
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static(proto));
    }
    resp
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        to_status(map(e))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        to_http(map(self))
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        to_http(map_rejection(self))
    }
}

/// True for gRPC requests (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A failure rendered for the caller's protocol: for gRPC a complete reply (HTTP 200 with
/// `grpc-status`), for routes and layers that no tonic service answers.
pub fn respond(grpc: bool, r: impl Into<Rejection>) -> Response {
    let m = map_rejection(r.into());
    if grpc {
        to_status(m).into_http::<axum::body::Body>().into_response()
    } else {
        to_http(m)
    }
}

/// A failed event of a batch or a stream, as its result reports it.
pub fn item_error(e: Error) -> EventError {
    let retryable = e.is_retryable();
    let m = map(e);
    EventError {
        code: code_name(m.grpc).into(),
        message: m.message,
        retryable,
        field_violations: m
            .violations
            .into_iter()
            .map(|v| proto::FieldViolation {
                field: v.field,
                description: v.description,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One value of every `Error` and `Rejection` variant with the codes it must map to. The
    /// `match` has no wildcard arm, so a new variant does not compile until it is listed here.
    fn table() -> Vec<(Rejection, Code, u16)> {
        let samples = vec![
            Rejection::Core(Error::InvalidArgument(vec![FieldViolation::new(
                "event.type",
                "is required",
            )])),
            Rejection::Core(Error::Malformed("invalid JSON body".into())),
            Rejection::Core(Error::TooLarge {
                what: "request body".into(),
                limit: 10,
                size: Some(11),
            }),
            Rejection::Core(Error::Unauthenticated {
                reason: crate::core::error::AuthFailure::Invalid,
                message: "unknown API key".into(),
            }),
            Rejection::Core(Error::PermissionDenied(vec![FieldViolation::new(
                "event.type",
                "principal `billing` may not send type `orders.placed`",
            )])),
            Rejection::Core(Error::RateLimited {
                limit: "1 requests/s".into(),
                retry_after: Duration::from_millis(1500),
            }),
            Rejection::Core(Error::unavailable("broker away")),
            Rejection::Core(Error::DeadlineExceeded("request_timeout".into())),
            Rejection::Core(Error::Internal("topic missing".into())),
            Rejection::NotFound {
                method: "GET".into(),
                path: "/nope".into(),
            },
            Rejection::MethodNotAllowed {
                method: "GET".into(),
                path: "/api/v1/events".into(),
                allowed: "POST",
            },
            Rejection::UnsupportedMediaType {
                found: "text/plain".into(),
                expected: "Content-Type: application/json",
            },
            Rejection::UnsupportedEncoding {
                found: "br".into(),
                supported: "gzip",
            },
            Rejection::UpgradeRequired {
                path: "/api/v1/events/ws",
                reason: "no Upgrade header".into(),
            },
            Rejection::SlowBody,
        ];
        samples
            .into_iter()
            .map(|r| {
                let (grpc, http) = match &r {
                    Rejection::Core(e) => match e {
                        Error::InvalidArgument(_) => (Code::InvalidArgument, 400),
                        Error::Malformed(_) => (Code::InvalidArgument, 400),
                        Error::TooLarge { .. } => (Code::InvalidArgument, 413),
                        Error::Unauthenticated { .. } => (Code::Unauthenticated, 401),
                        Error::PermissionDenied(_) => (Code::PermissionDenied, 403),
                        Error::RateLimited { .. } => (Code::ResourceExhausted, 429),
                        Error::Unavailable { .. } => (Code::Unavailable, 503),
                        Error::DeadlineExceeded(_) => (Code::DeadlineExceeded, 504),
                        Error::Internal(_) => (Code::Internal, 500),
                    },
                    Rejection::NotFound { .. } => (Code::Unimplemented, 404),
                    Rejection::MethodNotAllowed { .. } => (Code::Unimplemented, 405),
                    Rejection::UnsupportedMediaType { .. } => (Code::InvalidArgument, 415),
                    Rejection::UnsupportedEncoding { .. } => (Code::InvalidArgument, 415),
                    Rejection::UpgradeRequired { .. } => (Code::FailedPrecondition, 426),
                    Rejection::SlowBody => (Code::DeadlineExceeded, 408),
                };
                (r, grpc, http)
            })
            .collect()
    }

    fn clone(r: &Rejection) -> Rejection {
        match r {
            Rejection::Core(e) => Rejection::Core(e.clone()),
            Rejection::NotFound { method, path } => Rejection::NotFound {
                method: method.clone(),
                path: path.clone(),
            },
            Rejection::MethodNotAllowed {
                method,
                path,
                allowed,
            } => Rejection::MethodNotAllowed {
                method: method.clone(),
                path: path.clone(),
                allowed,
            },
            Rejection::UnsupportedMediaType { found, expected } => {
                Rejection::UnsupportedMediaType {
                    found: found.clone(),
                    expected,
                }
            }
            Rejection::UnsupportedEncoding { found, supported } => Rejection::UnsupportedEncoding {
                found: found.clone(),
                supported,
            },
            Rejection::UpgradeRequired { path, reason } => Rejection::UpgradeRequired {
                path,
                reason: reason.clone(),
            },
            Rejection::SlowBody => Rejection::SlowBody,
        }
    }

    async fn http_body(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Every variant through both renderings: the codes of the table, the same message, the
    /// same field violations and retry delay in the gRPC details and the JSON body. A table
    /// walked once: long because every variant has a row.
    #[tokio::test]
    async fn every_variant_renders_the_same_over_both_protocols() {
        let mut reasons = std::collections::BTreeSet::new();
        for (r, grpc, http) in table() {
            let name = r.to_string();
            if let Rejection::Core(e) = &r {
                reasons.insert(e.reason());
            }
            // gRPC rendering.
            let status = match &r {
                Rejection::Core(e) => tonic::Status::from(e.clone()),
                other => to_status(map_rejection(clone(other))),
            };
            assert_eq!(status.code(), grpc, "{name}");
            assert_eq!(status.message(), name);
            let details = status.get_error_details();
            // HTTP rendering.
            let resp = clone(&r).into_response();
            assert_eq!(resp.status().as_u16(), http, "{name}");
            let retry_header = resp
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().to_owned());
            let allow = resp.headers().get(header::ALLOW).cloned();
            let accept_encoding = resp.headers().get(header::ACCEPT_ENCODING).cloned();
            let upgrade = resp.headers().get(header::UPGRADE).cloned();
            let challenge = resp.headers().get(header::WWW_AUTHENTICATE).cloned();
            let body = http_body(resp).await;
            assert_eq!(body["code"], grpc as i32, "{name}");
            assert_eq!(body["message"], name);
            // Field violations: identical lists in both.
            let grpc_fields: Vec<(String, String)> = details
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| (v.field.clone(), v.description.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let json_fields: Vec<(String, String)> = body["details"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
                .flat_map(|d| d["fieldViolations"].as_array().unwrap().clone())
                .map(|v| {
                    (
                        v["field"].as_str().unwrap().to_owned(),
                        v["description"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            assert_eq!(grpc_fields, json_fields, "{name}");
            let wants_fields = matches!(
                &r,
                Rejection::Core(
                    Error::InvalidArgument(_) | Error::TooLarge { .. } | Error::PermissionDenied(_)
                )
            );
            assert_eq!(!grpc_fields.is_empty(), wants_fields, "{name}");
            // Retry delay: RetryInfo, the JSON detail and Retry-After agree, whole seconds.
            let grpc_retry = details
                .retry_info()
                .and_then(|ri| ri.retry_delay)
                .map(|d| d.as_secs());
            let wants_retry = matches!(
                &r,
                Rejection::Core(Error::RateLimited { .. } | Error::Unavailable { .. })
            );
            assert_eq!(grpc_retry.is_some(), wants_retry, "{name}");
            assert_eq!(retry_header, grpc_retry.map(|s| s.to_string()), "{name}");
            // 405 names what the route takes; 415 for an encoding names the accepted ones.
            assert_eq!(allow.is_some(), http == 405, "{name}");
            assert_eq!(
                accept_encoding.is_some(),
                matches!(r, Rejection::UnsupportedEncoding { .. }),
                "{name}"
            );
            // 401 challenges for a bearer token.
            assert_eq!(
                challenge.as_ref().map(|v| v.to_str().unwrap()),
                (http == 401).then_some(CHALLENGE),
                "{name}"
            );
            // 426 says what to upgrade to.
            assert_eq!(
                upgrade.as_ref().map(|v| v.to_str().unwrap()),
                (http == 426).then_some("websocket"),
                "{name}"
            );
        }
        // Every reason the metrics know is produced by some variant, and no other.
        assert_eq!(
            reasons,
            Error::REASONS.iter().copied().collect(),
            "Error::REASONS and Error::reason disagree"
        );
        // A rate limit of 1.5 s is announced as 2 s, never 1.
        let rl = tonic::Status::from(Error::RateLimited {
            limit: "x".into(),
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(
            rl.get_error_details()
                .retry_info()
                .and_then(|r| r.retry_delay)
                .map(|d| d.as_secs()),
            Some(2)
        );
    }
}
