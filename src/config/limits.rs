//! What one client or request may take: `rate_limit.*`, `performance.*` (request size,
//! concurrency, streams, deadlines) and `limits.*` (event size, batch, nesting, numbers).
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Token refill rate per client key.
    pub requests_per_second: u32,
    /// Bucket size per client key.
    pub burst_size: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            requests_per_second: 10_000,
            burst_size: 20_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceConfig {
    /// Largest request body accepted (REST body or gRPC message).
    pub max_request_size: ByteSize,
    /// Deadline for one request, delivery included. Must exceed kafka.message_timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests handled at once; more are shed with 503 / UNAVAILABLE. Each event in flight
    /// on a stream (IngestStream, the WebSocket route) takes one of these slots too.
    pub max_concurrent_requests: usize,
    /// How many of those slots one client (its principal, else its address: the rate
    /// limiter's key) may hold at once; more get 429 / RESOURCE_EXHAUSTED. Requests that
    /// send headers and no body hold their slot until `request_timeout`: without a share,
    /// one client could take every slot. 0: no share (one client may take them all).
    pub max_concurrent_requests_per_client: usize,
    /// Streams (IngestStream calls and WebSockets) open at once; more are refused with
    /// UNAVAILABLE (WebSocket close code 1013).
    pub max_streams: usize,
    /// Of those, open at once by one client (principal, else address); more get
    /// RESOURCE_EXHAUSTED (WebSocket close code 1013). 0: no share.
    pub max_streams_per_client: usize,
    /// How long one stream (IngestStream call or WebSocket) may stay open; then it is closed
    /// (UNAVAILABLE / close code 1001) and the client opens a new one, authenticating again,
    /// so no credential outlives its rotation through one connection. 0: no limit.
    #[serde(with = "humantime_serde")]
    pub max_stream_lifetime: Duration,
}

impl Default for PerformanceConfig {
    fn default() -> Self {
        Self {
            max_request_size: ByteSize::mib(10),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 10_000,
            max_concurrent_requests_per_client: 1000,
            max_streams: 1000,
            max_streams_per_client: 100,
            max_stream_lifetime: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest event, measured in the CloudEvents JSON format.
    pub max_event_size: ByteSize,
    /// Most events in one IngestBatch (and in one request of a stream).
    pub max_batch_events: usize,
    /// Events of one stream in flight at once (taken, not yet reported); the server stops
    /// reading the stream while this many are outstanding.
    pub max_stream_in_flight: usize,
    /// Deepest nesting of arrays and objects in `data` (`{"a":1}` is 1 deep).
    pub max_data_depth: usize,
    /// Longest number literal in `data`, in characters.
    pub max_number_length: usize,
}

/// The deepest `limits.max_data_depth` can be: protobuf decoding (prost) stops at 100 nested
/// messages, and each object level of a `google.protobuf.Value` is three of them (Value,
/// Struct, the map entry), so gRPC data about 33 objects deep that prost has to decode
/// (irregular data, which the direct reader of `core::event::wire` leaves to prost) does not
/// decode at all; with 31, data one level too deep still decodes and is refused by name.
pub const MAX_DATA_DEPTH_CEILING: usize = 31;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_event_size: ByteSize::kib(512),
            max_batch_events: 1000,
            max_stream_in_flight: 1000,
            max_data_depth: MAX_DATA_DEPTH_CEILING,
            max_number_length: 100,
        }
    }
}

impl RateLimitConfig {
    /// The `rate_limit.*` rules, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        if self.enabled && (self.requests_per_second == 0 || self.burst_size == 0) {
            errors.push(
                "rate_limit.requests_per_second and rate_limit.burst_size must be above 0 (or set rate_limit.enabled: false)"
                    .into(),
            );
        }
    }
}

impl PerformanceConfig {
    /// The `performance.*` rules of this section alone, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        if self.max_request_size.as_u64() == 0 {
            errors.push("performance.max_request_size must be above 0".into());
        }
        if self.max_concurrent_requests == 0 {
            errors.push("performance.max_concurrent_requests must be above 0".into());
        }
        if self.max_streams == 0 {
            errors.push("performance.max_streams must be above 0".into());
        }
    }
}

impl LimitsConfig {
    /// The `limits.*` rules of this section alone, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        if self.max_event_size.as_u64() == 0 {
            errors.push("limits.max_event_size must be above 0".into());
        }
        if self.max_batch_events == 0 {
            errors.push("limits.max_batch_events must be above 0".into());
        }
        if !(1..=MAX_DATA_DEPTH_CEILING).contains(&self.max_data_depth) {
            errors.push(format!(
                "limits.max_data_depth must be from 1 to {MAX_DATA_DEPTH_CEILING} (protobuf decoding stops deeper than that)"
            ));
        }
        if self.max_number_length < 24 {
            errors.push(
                "limits.max_number_length must be at least 24 (the longest double gRPC data can carry)"
                    .into(),
            );
        }
        if self.max_stream_in_flight == 0 {
            errors.push("limits.max_stream_in_flight must be above 0".into());
        }
    }
}
