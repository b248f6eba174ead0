//! The one error type the core returns. It says what went wrong in terms of the domain;
//! `transport/status.rs` is the only place that turns it into a gRPC status or an HTTP reply.
//! Failures only one transport can produce (an unknown REST route, a wrong media type) are
//! that transport's own rejections; failures to start are `server::StartupError`.
use std::time::Duration;

/// One broken rule, located by its field path in the request (`events[3].type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is well-formed but breaks one or more rules; all are listed.
    #[error("{}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The request could not be decoded at all (malformed JSON, wrong types).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A size limit was exceeded: which one, its value, and what was seen if known.
    #[error("{what} exceeds the limit of {limit} bytes{}", .size.map(|s| format!(" ({s} bytes)")).unwrap_or_default())]
    TooLarge {
        what: String,
        limit: u64,
        size: Option<u64>,
    },
    /// No credentials where they are required, or credentials that do not prove who is
    /// calling (unknown key, bad signature, expired token). Never names the secret.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        reason: AuthFailure,
        message: String,
    },
    /// The caller is known but may not send this: each violation names the field (the
    /// event's `type` or `source`) and the principal.
    #[error("permission denied: {}", summarize(.0))]
    PermissionDenied(Vec<FieldViolation>),
    /// A rate limit or quota was hit; try again after `retry_after`.
    #[error("rate limit exceeded: {limit}; retry after {}s", .retry_after.as_secs().max(1))]
    RateLimited {
        limit: String,
        retry_after: Duration,
    },
    /// The sink cannot take the event now (broker unreachable, queue full, shutting down);
    /// nothing was stored, so sending again is safe.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// The request's deadline passed before the outcome was known.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A fault on our side or in our configuration (unknown topic, authorization towards the
    /// broker). Logged with what to fix; the client cannot fix it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why credentials were refused: the `reason` label of `auth_failures_total` (with
/// `forbidden_type` and `forbidden_source` for authorization).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Expired,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
        }
    }
}

/// Violations a message names; the rest are in the error's details. The message is a gRPC
/// header (`grpc-message`), so it stays short whatever the request held.
const SUMMARIZED: usize = 10;

fn summarize(v: &[FieldViolation]) -> String {
    let parts: Vec<String> = v
        .iter()
        .take(SUMMARIZED)
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect();
    let more = if v.len() > SUMMARIZED {
        format!("; and {} more (see the details)", v.len() - SUMMARIZED)
    } else {
        String::new()
    };
    format!(
        "{} invalid field{}: {}{more}",
        v.len(),
        if v.len() == 1 { "" } else { "s" },
        parts.join("; ")
    )
}

impl Error {
    /// Every value [`Error::reason`] can return, so metrics can start each at zero.
    pub const REASONS: &'static [&'static str] = &[
        "invalid",
        "malformed",
        "too_large",
        "unauthenticated",
        "permission_denied",
        "rate_limited",
        "unavailable",
        "deadline_exceeded",
        "internal",
    ];

    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable {
            message: message.into(),
            retry_after: Duration::from_secs(1),
        }
    }

    /// A short machine-readable reason, the `reason` label of `events_ingested_failed_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid",
            Error::Malformed(_) => "malformed",
            Error::TooLarge { .. } => "too_large",
            Error::Unauthenticated { .. } => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable { .. } => "unavailable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::Internal(_) => "internal",
        }
    }

    /// True when the same request may succeed if sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited { .. } | Error::Unavailable { .. } | Error::DeadlineExceeded(_) => {
                true
            }
            Error::InvalidArgument(_)
            | Error::Malformed(_)
            | Error::TooLarge { .. }
            | Error::Unauthenticated { .. }
            | Error::PermissionDenied(_)
            | Error::Internal(_) => false,
        }
    }
}
