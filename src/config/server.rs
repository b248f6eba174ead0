//! `server.*`: the listener (address, timeouts, connection limits, HTTP/1 and HTTP/2
//! settings, trusted proxies, cross-origin requests from browsers).
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::de::list_or_csv;
use super::parse_cidr;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address gRPC and REST listen on (one port for both).
    pub address: String,
    /// Time a client has to send a request's headers.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// A write to a client that makes no progress for this long (the client stopped reading
    /// its replies) closes the connection.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// HTTP/2 connections are pinged every half of this and closed when a ping goes
    /// unanswered as long (an idle HTTP/1 keep-alive connection: `read_timeout`).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Peers (CIDR blocks) whose `Forwarded` / `X-Forwarded-For` headers name the client's
    /// address (for rate limits without authentication). From any other peer they are ignored.
    #[serde(deserialize_with = "list_or_csv")]
    pub trusted_proxies: Vec<String>,
    /// Open connections at most; past it new ones are closed at once (the open ones keep
    /// being served).
    pub max_connections: usize,
    /// Open connections from one peer address at most (a load balancer in front counts as
    /// one peer: raise it, or set 0 for no per-peer cap).
    pub max_connections_per_peer: usize,
    pub http1: Http1Config,
    pub http2: Http2Config,
    /// Cross-origin requests from browsers; off (no origin listed) by default.
    pub cors: CorsConfig,
}

/// `server.cors`: which web origins' pages may call the gateway from a browser. With none
/// listed (the default) the gateway answers no preflight and checks no `Origin`; with some, a
/// preflight is answered by the stack before admission and authentication, and a request
/// whose `Origin` is not listed is refused (403) and logged (list the gateway's own origin too
/// if a page it serves calls it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins as browsers send them (`https://app.example.com`, `http://localhost:5173`:
    /// scheme, host, port if not the default; no path), or `*` for any origin. Empty: off.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_origins: Vec<String>,
    /// Methods a preflight allows.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight allows (`*`: whatever the preflight asks for).
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_headers: Vec<String>,
    /// How long a browser may keep a preflight's answer (at most 24h; browsers cap it lower).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: vec!["GET".into(), "POST".into()],
            // What the gateway reads: JSON and CloudEvents content types, credentials, the
            // request id, trace context, idempotent retries' preferences, and the CloudEvents
            // HTTP binary mode's `ce-*` attributes the JavaScript SDK sends.
            allowed_headers: [
                "content-type",
                "content-encoding",
                "authorization",
                "x-api-key",
                "x-request-id",
                "traceparent",
                "tracestate",
                "prefer",
                "ce-specversion",
                "ce-id",
                "ce-source",
                "ce-type",
                "ce-subject",
                "ce-time",
                "ce-dataschema",
                "ce-partitionkey",
            ]
            .map(String::from)
            .to_vec(),
            max_age: Duration::from_secs(600),
        }
    }
}

impl CorsConfig {
    pub fn enabled(&self) -> bool {
        !self.allowed_origins.is_empty()
    }

    fn check(&self, errors: &mut Vec<String>) {
        for origin in &self.allowed_origins {
            if origin != "*" && !is_origin(origin) {
                errors.push(format!(
                    "server.cors.allowed_origins: `{origin}` is not an origin like https://app.example.com (scheme://host[:port], no path, no trailing slash) or *"
                ));
            }
        }
        for m in &self.allowed_methods {
            if http_token(m).is_none() {
                errors.push(format!(
                    "server.cors.allowed_methods: `{m}` is not a method"
                ));
            }
        }
        for h in &self.allowed_headers {
            if h != "*" && http_token(h).is_none() {
                errors.push(format!(
                    "server.cors.allowed_headers: `{h}` is not a header name"
                ));
            }
        }
        if self.max_age > Duration::from_secs(24 * 3600) {
            errors.push("server.cors.max_age must be at most 24h".into());
        }
    }
}

/// An RFC 6454 serialized origin of an http(s) URL: `scheme://host[:port]`, nothing after.
fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && rest.bytes().any(|b| b.is_ascii_alphanumeric())
}

/// `s` if it is an RFC 9110 token (a method or a header name). Here rather than http's
/// `HeaderName`/`Method` parsers: the configuration depends on no HTTP crate.
pub(super) fn http_token(s: &str) -> Option<&str> {
    (!s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
    .then_some(s)
}

/// HTTP/1 limits (hyper's settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http1Config {
    /// Request headers at most; more get 431.
    pub max_headers: usize,
    /// The request line and headers together at most (hyper's read buffer, so also the most
    /// one connection buffers); more get 431. At least 8 KiB.
    pub max_head_size: ByteSize,
}

impl Default for Http1Config {
    fn default() -> Self {
        Self {
            max_headers: 100,
            max_head_size: ByteSize::kib(64),
        }
    }
}

/// HTTP/2 limits (hyper's and h2's settings), sent to the client in SETTINGS where HTTP/2
/// has one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Streams open at once on one connection; more are refused (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// Decoded request headers at most; more: the stream is refused (431 for REST), and a
    /// header block that keeps growing (CONTINUATION flood) ends the connection.
    pub max_header_list_size: ByteSize,
    /// The largest frame the gateway accepts: 16 KiB to 16 MiB - 1.
    pub max_frame_size: ByteSize,
    /// Streams a client opened and reset before the gateway took them up (rapid reset,
    /// CVE-2023-44487); more and the connection ends with GOAWAY ENHANCE_YOUR_CALM.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the gateway had to reset for the client's protocol errors; more and the
    /// connection ends with GOAWAY ENHANCE_YOUR_CALM.
    pub max_local_error_reset_streams: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1024,
            max_header_list_size: ByteSize::kib(16),
            max_frame_size: ByteSize::kib(16),
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: "0.0.0.0:8090".into(),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
            http1: Http1Config::default(),
            http2: Http2Config::default(),
            cors: CorsConfig::default(),
        }
    }
}

impl ServerConfig {
    /// The `server.*` rules that types alone cannot hold, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            errors.push(format!(
                "server.address `{}` is not a socket address like 0.0.0.0:8090",
                self.address
            ));
        }
        if self.write_timeout.is_zero() {
            errors.push("server.write_timeout must be above 0".into());
        }
        // Half of it is the HTTP/2 and WebSocket ping interval, which must not be zero.
        if self.idle_timeout < Duration::from_secs(1) {
            errors.push("server.idle_timeout must be at least 1s".into());
        }
        let h2 = &self.http2;
        if !(16_384..16_777_216).contains(&h2.max_frame_size.as_u64()) {
            errors.push(format!(
                "server.http2.max_frame_size ({}) must be from 16KiB to 16MiB - 1 (RFC 9113)",
                h2.max_frame_size
            ));
        }
        if h2.max_concurrent_streams == 0 {
            errors.push("server.http2.max_concurrent_streams must be above 0".into());
        }
        if h2.max_header_list_size.as_u64() < 1024
            || h2.max_header_list_size.as_u64() > u64::from(u32::MAX)
        {
            errors.push("server.http2.max_header_list_size must be from 1KiB to 4GiB".into());
        }
        if self.http1.max_head_size.as_u64() < 8192 {
            errors.push("server.http1.max_head_size must be at least 8KiB".into());
        }
        if self.http1.max_headers == 0 {
            errors.push("server.http1.max_headers must be above 0".into());
        }
        if self.max_connections == 0 {
            errors.push("server.max_connections must be above 0".into());
        }
        self.cors.check(errors);
        for (i, cidr) in self.trusted_proxies.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                errors.push(format!(
                    "server.trusted_proxies[{i}] `{cidr}` is not a CIDR block or an address"
                ));
            }
        }
    }
}
