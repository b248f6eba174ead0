//! Configuration: the typed settings, their defaults, and how they are layered. Defaults are
//! overridden by `config.yaml` (or `--config PATH`), which is overridden by `GATEWAY_*`
//! environment variables. Unknown keys and bad values stop startup with a message naming the key.
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use serde::{Deserialize, Deserializer, Serialize};

/// Every section as (variable prefix, key path); `GATEWAY_<SECTION>_<KEY>` maps to
/// `<section>.<key>`. Listed because section names themselves contain underscores
/// (`rate_limit`), so splitting on `_` cannot work; a nested section (`auth.jwt`) comes
/// before its parent so that `GATEWAY_AUTH_JWT_ISSUER` finds it.
const SECTIONS: &[(&str, &str)] = &[
    ("server_http1", "server.http1"),
    ("server_http2", "server.http2"),
    ("server", "server"),
    ("kafka_security", "kafka.security"),
    ("kafka", "kafka"),
    ("rate_limit", "rate_limit"),
    ("metrics", "metrics"),
    ("performance", "performance"),
    ("limits", "limits"),
    ("storage", "storage"),
    ("shutdown", "shutdown"),
    ("logging", "logging"),
    ("types", "types"),
    ("auth_jwt", "auth.jwt"),
    ("auth", "auth"),
    ("tls", "tls"),
    ("spool", "spool"),
    ("ack", "ack"),
    ("dedup", "dedup"),
];

/// The environment variable prefix.
pub const ENV_PREFIX: &str = "GATEWAY_";

/// Settings whose value is text. A `GATEWAY_*` variable for one of them is taken byte for byte:
/// figment would read `123456` as a number, `true` as a boolean and `[abc]` as a list, and a
/// generated password or a numeric topic name would be refused. Every other variable is parsed
/// (numbers, booleans, lists; durations and sizes are text to their own parsers anyway). The
/// settings matrix (`tests/settings.rs`) sets each of these to text that looks like a number.
pub const TEXT_KEYS: &[&str] = &[
    "server.address",
    "kafka.topic",
    "kafka.compression",
    "kafka.dead_letter_topic",
    "kafka.security.ca_file",
    "kafka.security.cert_file",
    "kafka.security.key_file",
    "kafka.security.username",
    "kafka.security.password",
    "kafka.security.password_file",
    "metrics.path",
    "storage.data_dir",
    "spool.dir",
    "logging.level",
    "types.file",
    "auth.api_keys_file",
    "auth.certificates_file",
    "auth.jwt.jwks_file",
    "auth.jwt.issuer",
    "auth.jwt.audience",
    "auth.jwt.types_claim",
    "tls.cert_file",
    "tls.key_file",
    "tls.client_ca_file",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub kafka: KafkaConfig,
    pub rate_limit: RateLimitConfig,
    pub metrics: MetricsConfig,
    pub performance: PerformanceConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub shutdown: ShutdownConfig,
    pub logging: LoggingConfig,
    pub types: TypesConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub spool: SpoolConfig,
    pub ack: AckConfig,
    pub dedup: DedupConfig,
}

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
        }
    }
}

/// `kafka.required_acks`: how many replicas must have the record before it counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RequiredAcks {
    /// `0`: no acknowledgement (fire and forget; a reply then only means "enqueued").
    None,
    /// `1`: the partition leader has it.
    Leader,
    /// `-1` / `all`: every in-sync replica has it.
    All,
}

impl RequiredAcks {
    /// The librdkafka `acks` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            RequiredAcks::None => "0",
            RequiredAcks::Leader => "1",
            RequiredAcks::All => "all",
        }
    }
}

impl<'de> Deserialize<'de> for RequiredAcks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let s = match Raw::deserialize(d)? {
            Raw::Int(i) => i.to_string(),
            Raw::Str(s) => s.to_ascii_lowercase(),
        };
        match s.as_str() {
            "0" | "none" => Ok(RequiredAcks::None),
            "1" | "leader" => Ok(RequiredAcks::Leader),
            "-1" | "all" => Ok(RequiredAcks::All),
            other => Err(serde::de::Error::custom(format!(
                "invalid required_acks `{other}`: expected 0, 1, -1 or all"
            ))),
        }
    }
}

/// How a CloudEvent is laid out in a Kafka record (CloudEvents Kafka protocol binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordMode {
    /// Value = `data`, attributes as `ce_*` headers.
    Binary,
    /// Value = the whole event as `application/cloudevents+json`.
    Structured,
}

/// Which attribute becomes the Kafka record key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStrategy {
    /// The `partitionkey` extension, else `subject`, else no key.
    PartitionkeyOrSubject,
    /// The `partitionkey` extension, else no key.
    Partitionkey,
    /// `subject`, else no key.
    Subject,
    /// Never a key: sticky partitioning spreads records.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers; empty means the embedded local log is the sink.
    #[serde(deserialize_with = "list_or_csv")]
    pub brokers: Vec<String>,
    pub topic: String,
    /// librdkafka `retries` (attempts to resend a failed produce request).
    pub retries: u32,
    /// librdkafka `batch.num.messages`: records per produce batch.
    pub batch_size: u32,
    pub required_acks: RequiredAcks,
    /// librdkafka `enable.idempotence` (forced off with required_acks other than all).
    pub idempotence: bool,
    /// librdkafka `linger.ms`.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// librdkafka `compression.type`: none, gzip, snappy, lz4, zstd.
    pub compression: String,
    /// librdkafka `message.timeout.ms`: the upper bound on one delivery, retries included.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// librdkafka `queue.buffering.max.messages`: a full queue answers 503 at once.
    pub queue_max_messages: u32,
    /// librdkafka `message.max.bytes`.
    pub message_max_bytes: u32,
    pub record_mode: RecordMode,
    pub key_strategy: KeyStrategy,
    /// Spooled records Kafka refuses for good (too large, topic gone, not authorized) go
    /// here after a bounded retry, with headers naming the error; unset: they are parked.
    pub dead_letter_topic: Option<String>,
    /// TLS and SASL towards the brokers.
    pub security: KafkaSecurity,
    /// Any other librdkafka property, passed through verbatim (set last, so it wins). Values
    /// may be strings, numbers or booleans, as librdkafka's CONFIGURATION.md writes them.
    #[serde(deserialize_with = "scalar_map")]
    pub librdkafka: BTreeMap<String, String>,
}

/// `kafka.security.protocol`: librdkafka's `security.protocol`. Read in any case (`SSL`,
/// `SASL_SSL`, as Kafka's documentation and every managed provider's snippet write them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn is_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn is_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// Deserializes an enum from a name matched without regard to case or `-`/`_`.
fn named<'de, D: Deserializer<'de>, T: Copy>(
    d: D,
    names: &'static [&'static str],
    values: &[T],
) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    names
        .iter()
        .position(|n| norm(n) == norm(&text))
        .map(|i| values[i])
        .ok_or_else(|| serde::de::Error::unknown_variant(&text, names))
}

impl<'de> Deserialize<'de> for SecurityProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use SecurityProtocol as P;
        named(
            d,
            &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"],
            &[P::Plaintext, P::Ssl, P::SaslPlaintext, P::SaslSsl],
        )
    }
}

impl<'de> Deserialize<'de> for SaslMechanism {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use SaslMechanism as M;
        named(
            d,
            &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            &[M::Plain, M::ScramSha256, M::ScramSha512],
        )
    }
}

/// `kafka.security.sasl_mechanism`, in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A secret setting: read like a string, never shown (`Debug` and the redacted
/// configuration print `***`).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// `kafka.security`: TLS (`ssl`, `sasl_ssl`: the CA to trust, a client certificate for mTLS)
/// and SASL (`sasl_*`: PLAIN or SCRAM with a username and a password, from
/// `GATEWAY_KAFKA_SECURITY_PASSWORD` or `password_file`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub sasl_mechanism: Option<SaslMechanism>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the password (a mounted Kubernetes secret); read at startup.
    pub password_file: Option<PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            topic: "events".into(),
            retries: 10,
            batch_size: 10_000,
            required_acks: RequiredAcks::All,
            idempotence: true,
            linger: Duration::from_millis(1),
            compression: "lz4".into(),
            message_timeout: Duration::from_secs(20),
            queue_max_messages: 100_000,
            message_max_bytes: 1_000_000,
            record_mode: RecordMode::Binary,
            key_strategy: KeyStrategy::PartitionkeyOrSubject,
            dead_letter_topic: None,
            security: KafkaSecurity::default(),
            librdkafka: BTreeMap::new(),
        }
    }
}

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
pub struct MetricsConfig {
    pub enabled: bool,
    pub path: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/metrics".into(),
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
/// Struct, the map entry), so a gRPC request with objects 33 deep does not decode at all; with
/// 31, data one level too deep still decodes and is refused by name, as over REST.
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the embedded local log (used when kafka.brokers is empty).
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
        }
    }
}

/// The write-ahead spool (ack: spooled, and the fallback while Kafka is away) and the local
/// log, which is the same format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// With brokers: keep a spool and forward it (needed for ack: spooled and the fallback).
    pub enabled: bool,
    /// Where the spool's segments live; default `<storage.data_dir>/spool`.
    pub dir: Option<PathBuf>,
    /// A segment is closed and a new one started past this size (the local log too).
    pub segment_bytes: ByteSize,
    /// Appends past this many bytes on disk are refused with 503 (the local log too).
    pub max_bytes: ByteSize,
    /// While the oldest record not yet forwarded is older than this, appends are refused.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// A `stored` request whose broker is unreachable is spooled (202, `ack: spooled`)
    /// instead of refused; readiness then follows the spool's room, not the broker.
    pub fallback_when_unavailable: bool,
    /// A spooled record Kafka keeps refusing for good (too large, topic missing, not
    /// authorized) this long goes to kafka.dead_letter_topic, or is parked.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// A spooled record that keeps failing for a reason that passes (a timeout, not enough
    /// replicas) while a broker is reachable this long goes the same way, so that no record
    /// holds up the spool for ever.
    #[serde(with = "humantime_serde")]
    pub give_up_transient_after: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            segment_bytes: ByteSize::mib(64),
            max_bytes: ByteSize::gib(1),
            max_age: Duration::from_secs(24 * 3600),
            fallback_when_unavailable: false,
            give_up_after: Duration::from_secs(30),
            give_up_transient_after: Duration::from_secs(600),
        }
    }
}

impl SpoolConfig {
    pub fn dir_in(&self, storage: &StorageConfig) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| storage.data_dir.join("spool"))
    }
}

/// The acknowledgement a request gets when it names none.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AckLevel {
    /// The broker acknowledged it per `kafka.required_acks`.
    #[default]
    Stored,
    /// It is fsynced to the local spool and will be forwarded.
    Spooled,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AckConfig {
    pub default: AckLevel,
}

/// Duplicate suppression by CloudEvents `(source, id)` on this instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// How long an event's outcome is remembered; 0 turns suppression off.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// At most this many remembered events (the oldest go first).
    pub max_entries: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            window: Duration::ZERO,
            max_entries: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long to report not-ready before refusing new connections, so load
    /// balancers notice.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How long in-flight requests get to finish, then how long the sink gets to flush.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(25),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// tracing-subscriber filter, for example `info,event_gateway=debug`. RUST_LOG wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `types.policy`: what happens to an event whose type matches no registry entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypesPolicy {
    /// Accepted, with the envelope checks only.
    #[default]
    Open,
    /// Refused: `event.type: not a registered event type`.
    Registered,
}

/// An entry's JSON Schema: a file path (relative to the file that declares the entry: the
/// types file, or the working directory for `types.entries`), or the schema itself, inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SchemaSource {
    File(PathBuf),
    Inline(serde_json::Value),
}

/// One registry entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeEntryConfig {
    /// An exact event type, or a glob (`billing.*`); the most specific entry wins.
    pub r#type: String,
    /// The JSON Schema (draft 2020-12 or draft-07, by `$schema`) that `data` must match.
    #[serde(default)]
    pub schema: Option<SchemaSource>,
    /// The Kafka topic for these events (default: `kafka.topic`).
    #[serde(default)]
    pub topic: Option<String>,
    /// The `datacontenttype` these events must carry.
    #[serde(default)]
    pub datacontenttype: Option<String>,
    /// The `dataschema` URI these events must carry; filled in when an event has none.
    #[serde(default)]
    pub dataschema: Option<String>,
}

/// `types`: the event-type registry (data contracts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TypesConfig {
    pub policy: TypesPolicy,
    /// A YAML file `{entries: [...]}` of more entries, reloaded (with the schema files) when
    /// it changes; a reload that fails keeps the registry in force.
    pub file: Option<PathBuf>,
    pub entries: Vec<TypeEntryConfig>,
}

/// `auth`: who may send, and what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Refuse ingest requests without valid credentials (401 / UNAUTHENTICATED). Off by
    /// default: anyone who can reach the port may send any event.
    pub required: bool,
    /// A YAML list of API keys (`id`, `sha256`, `allowed_types`, `allowed_sources`,
    /// `rate_limit`), reloaded when it changes.
    pub api_keys_file: Option<PathBuf>,
    /// A YAML list of client certificates (`san`, `allowed_types`, `allowed_sources`,
    /// `rate_limit`), reloaded when it changes. A certificate with no entry may send nothing.
    pub certificates_file: Option<PathBuf>,
    pub jwt: JwtConfig,
    /// Put `metrics.path` behind the same authentication.
    pub protect_metrics: bool,
    /// Who sees all of `/health/detailed` (broker addresses, the configuration, internal
    /// errors); everyone else gets its status lines only.
    pub health_details: HealthDetails,
    /// With `health_details: local_or_authenticated`, the client addresses (CIDR blocks or
    /// addresses) that see the details without credentials; the client's address is the
    /// rate limiter's (through `server.trusted_proxies`, the forwarded client). Unset:
    /// loopback when `server.trusted_proxies` is empty, no address otherwise (a local proxy
    /// or sidecar would make every remote caller look local). `[]`: credentials only.
    #[serde(default, deserialize_with = "some_list_or_csv")]
    pub health_details_from: Option<Vec<String>>,
}

/// `auth.health_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthDetails {
    /// A caller whose address is in `auth.health_details_from` (a request relayed by a proxy
    /// outside `server.trusted_proxies` counts as from no address), or one presenting valid
    /// credentials (API key, token, a client certificate listed in `auth.certificates_file`).
    #[default]
    LocalOrAuthenticated,
    /// Anyone who reaches the port.
    Everyone,
}

/// `auth.jwt`: bearer tokens signed by a key of a JWKS file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The signing keys (a JWK Set), reloaded when the file changes.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// A claim holding the event types (glob patterns) the token may send.
    pub types_claim: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            types_claim: None,
        }
    }
}

/// `tls`: the listener's certificate (reloaded when the files change) and, for mTLS, the CA
/// client certificates must chain to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (a client without a valid certificate fails the
    /// handshake) or `optional` (one without a certificate is let in, and `auth.*` decides;
    /// one with an invalid certificate still fails). Kubernetes probes present no
    /// certificate: `optional` lets them reach the health endpoints.
    pub client_auth: ClientAuth,
}

/// `tls.client_auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// A map of librdkafka properties whose values may be any scalar (`linger.ms: 5`,
/// `enable.ssl.certificate.verification: false`), kept as their text.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Text(String);
    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Text;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a string, a number or a boolean")
                }
                fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                    Ok(Text(v.to_owned()))
                }
                fn visit_bool<E>(self, v: bool) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
                fn visit_char<E>(self, v: char) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }
    Ok(BTreeMap::<String, Text>::deserialize(d)?
        .into_iter()
        .map(|(k, Text(v))| (k, v))
        .collect())
}

/// `GATEWAY_KAFKA_BROKERS=a:9092,b:9092` or a YAML list.
fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    ListOrCsv::deserialize(d).map(ListOrCsv::items)
}

/// A list as YAML writes it, or as one comma-separated string (how a variable carries it).
#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrCsv {
    List(Vec<String>),
    Csv(String),
}

impl ListOrCsv {
    fn items(self) -> Vec<String> {
        let items = match self {
            ListOrCsv::List(v) => v,
            ListOrCsv::Csv(s) => s.split(',').map(str::to_owned).collect(),
        };
        items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// [`list_or_csv`] for a list whose absence means something else than an empty list; unset
/// (null, as the defaults serialize it) stays `None`.
fn some_list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Option::<ListOrCsv>::deserialize(d)?.map(ListOrCsv::items))
}

/// Why the configuration was refused; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Maps `RATE_LIMIT_REQUESTS_PER_SECOND` to `rate_limit.requests_per_second`; keys of no known
/// section pass through unchanged so that `deny_unknown_fields` names them in the error.
fn env_key_to_path(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    for (prefix, path) in SECTIONS {
        if let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) {
            return format!("{path}.{rest}");
        }
    }
    key
}

/// figment's `Env` provider under metadata that names the variable a user actually sets:
/// `Env` itself would report a bad value as key "RATE_LIMIT.REQUESTS_PER_SECOND".
struct GatewayEnv(Env);

impl GatewayEnv {
    fn new() -> Self {
        // GATEWAY_CONFIG names the file; it is not a setting.
        Self(
            Env::prefixed(ENV_PREFIX)
                .ignore(&["CONFIG"])
                .map(|key| env_key_to_path(key.as_str()).into()),
        )
    }
}

impl figment::Provider for GatewayEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("the environment")
            .interpolater(|_, keys| format!("{ENV_PREFIX}{}", keys.join("_").to_ascii_uppercase()))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        /// Puts `value` at the dotted `path` in `dict`, making the dictionaries on the way.
        fn insert(dict: &mut Dict, path: &str, value: Value) {
            match path.split_once('.') {
                None => {
                    dict.insert(path.to_owned(), value);
                }
                Some((head, rest)) => {
                    let entry = dict
                        .entry(head.to_owned())
                        .or_insert_with(|| Value::from(Dict::new()));
                    if let Value::Dict(_, inner) = entry {
                        insert(inner, rest, value);
                    }
                }
            }
        }
        let mut dict = Dict::new();
        for (key, raw) in self.0.iter() {
            let path = key.as_str();
            let value = if TEXT_KEYS.contains(&path) {
                Value::from(raw)
            } else {
                raw.parse().expect("parsing a value is infallible")
            };
            insert(&mut dict, path, value);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Every key of the configuration, as its dotted path (`kafka.security.password`): the leaves
/// of the defaults, maps and lists counted as one key each.
pub fn keys() -> Vec<String> {
    fn walk(path: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&p, x, out);
                }
            }
            _ => out.push(path.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(Config::default()).expect("config serializes"),
        &mut out,
    );
    out
}

impl Config {
    /// The addresses that see `/health/detailed` in full without credentials: as set, else
    /// loopback when no proxy is trusted and none otherwise (see `auth.health_details_from`).
    pub fn health_details_from(&self) -> Vec<ipnet::IpNet> {
        match &self.auth.health_details_from {
            Some(list) => list.iter().filter_map(|c| parse_cidr(c)).collect(),
            None if self.server.trusted_proxies.is_empty() => ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|c| parse_cidr(c))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Layers defaults < the YAML file (when given; it must exist) < `GATEWAY_*` variables,
    /// then checks the values that types alone cannot.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Yaml::file_exact(path));
        }
        let mut config: Config = figment.merge(GatewayEnv::new()).extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            ConfigError(msgs.join("; "))
        })?;
        config.check()?;
        let sec = &mut config.kafka.security;
        if let Some(path) = &sec.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "kafka.security.password_file {}: {e}",
                    path.display()
                ))
            })?;
            sec.password = Some(Secret(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        Ok(config)
    }

    /// Rules that cross fields or ranges, each naming its key.
    fn check(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.server.address.parse::<std::net::SocketAddr>().is_err() {
            errors.push(format!(
                "server.address `{}` is not a socket address like 0.0.0.0:8090",
                self.server.address
            ));
        }
        for (i, e) in self.types.entries.iter().enumerate() {
            if e.topic.as_ref().is_some_and(|t| t.trim().is_empty()) {
                errors.push(format!("types.entries[{i}].topic must not be empty"));
            }
        }
        if self.server.write_timeout.is_zero() {
            errors.push("server.write_timeout must be above 0".into());
        }
        // Half of it is the HTTP/2 and WebSocket ping interval, which must not be zero.
        if self.server.idle_timeout < Duration::from_secs(1) {
            errors.push("server.idle_timeout must be at least 1s".into());
        }
        let h2 = &self.server.http2;
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
        if self.server.http1.max_head_size.as_u64() < 8192 {
            errors.push("server.http1.max_head_size must be at least 8KiB".into());
        }
        if self.server.http1.max_headers == 0 {
            errors.push("server.http1.max_headers must be above 0".into());
        }
        if self.server.max_connections == 0 {
            errors.push("server.max_connections must be above 0".into());
        }
        if self.kafka.topic.trim().is_empty() {
            errors.push("kafka.topic must not be empty".into());
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.kafka.compression.as_str()) {
            errors.push(format!(
                "kafka.compression `{}` must be one of none, gzip, snappy, lz4, zstd",
                self.kafka.compression
            ));
        }
        if self.kafka.idempotence && self.kafka.required_acks != RequiredAcks::All {
            errors.push(
                "kafka.idempotence requires kafka.required_acks = all; set kafka.idempotence: false to use 0 or 1"
                    .into(),
            );
        }
        // The gateway must never give up on a request while librdkafka may still deliver it:
        // the client's retry would then duplicate the event.
        if self.performance.request_timeout < self.kafka.message_timeout + Duration::from_secs(2) {
            errors.push(format!(
                "performance.request_timeout ({:?}) must be at least kafka.message_timeout ({:?}) + 2s",
                self.performance.request_timeout, self.kafka.message_timeout
            ));
        }
        if !self.spool.enabled && !self.kafka.brokers.is_empty() {
            if self.ack.default == AckLevel::Spooled {
                errors.push("ack.default: spooled needs spool.enabled: true".into());
            }
            if self.spool.fallback_when_unavailable {
                errors.push("spool.fallback_when_unavailable needs spool.enabled: true".into());
            }
        }
        if self.spool.segment_bytes.as_u64() < 4096 {
            errors.push("spool.segment_bytes must be at least 4KiB".into());
        }
        if self.spool.max_bytes < self.spool.segment_bytes {
            errors.push("spool.max_bytes must be at least spool.segment_bytes".into());
        }
        if self.spool.max_age.is_zero() {
            errors.push("spool.max_age must be above 0".into());
        }
        if self
            .kafka
            .dead_letter_topic
            .as_ref()
            .is_some_and(|t| t.trim().is_empty())
        {
            errors
                .push("kafka.dead_letter_topic must not be empty (leave it unset for none)".into());
        }
        if !self.dedup.window.is_zero() && self.dedup.max_entries == 0 {
            errors.push("dedup.max_entries must be above 0 when dedup.window is set".into());
        }
        let event_limit = self.limits.max_event_size.as_u64();
        if event_limit == 0 {
            errors.push("limits.max_event_size must be above 0".into());
        }
        // Room for the Kafka record's headers and framing above the largest event.
        if event_limit + 64 * 1024 > u64::from(self.kafka.message_max_bytes) {
            errors.push(format!(
                "limits.max_event_size ({event_limit} bytes) must be at least 64 KiB below kafka.message_max_bytes ({})",
                self.kafka.message_max_bytes
            ));
        }
        if self.limits.max_batch_events == 0 {
            errors.push("limits.max_batch_events must be above 0".into());
        }
        if !(1..=MAX_DATA_DEPTH_CEILING).contains(&self.limits.max_data_depth) {
            errors.push(format!(
                "limits.max_data_depth must be from 1 to {MAX_DATA_DEPTH_CEILING} (protobuf decoding stops deeper than that)"
            ));
        }
        if self.limits.max_number_length < 24 {
            errors.push(
                "limits.max_number_length must be at least 24 (the longest double gRPC data can carry)"
                    .into(),
            );
        }
        if self.performance.max_request_size.as_u64() == 0 {
            errors.push("performance.max_request_size must be above 0".into());
        }
        if self.performance.max_concurrent_requests == 0 {
            errors.push("performance.max_concurrent_requests must be above 0".into());
        }
        if self.auth.required
            && self.auth.api_keys_file.is_none()
            && self.auth.jwt.jwks_file.is_none()
            && self.tls.client_ca_file.is_none()
        {
            errors.push(
                "auth.required needs a way to authenticate: auth.api_keys_file, auth.jwt.jwks_file or tls.client_ca_file"
                    .into(),
            );
        }
        if self.auth.jwt.jwks_file.is_some()
            && (self.auth.jwt.issuer.is_none() || self.auth.jwt.audience.is_none())
        {
            errors.push(
                "auth.jwt.jwks_file needs auth.jwt.issuer and auth.jwt.audience (tokens are checked against both)"
                    .into(),
            );
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            errors.push("tls.cert_file and tls.key_file go together".into());
        }
        if self.tls.client_ca_file.is_some() && self.tls.cert_file.is_none() {
            errors.push("tls.client_ca_file (mTLS) needs tls.cert_file and tls.key_file".into());
        }
        for (i, cidr) in self.server.trusted_proxies.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                errors.push(format!(
                    "server.trusted_proxies[{i}] `{cidr}` is not a CIDR block or an address"
                ));
            }
        }
        for (i, cidr) in self.auth.health_details_from.iter().flatten().enumerate() {
            if parse_cidr(cidr).is_none() {
                errors.push(format!(
                    "auth.health_details_from[{i}] `{cidr}` is not a CIDR block or an address"
                ));
            }
        }
        if self.auth.certificates_file.is_some() && self.tls.client_ca_file.is_none() {
            errors.push(
                "auth.certificates_file grants client certificates, which need tls.client_ca_file (mTLS)"
                    .into(),
            );
        }
        if self.auth.protect_metrics
            && self.auth.api_keys_file.is_none()
            && self.auth.jwt.jwks_file.is_none()
            && self.tls.client_ca_file.is_none()
        {
            errors.push(
                "auth.protect_metrics needs a way to authenticate a scrape: auth.api_keys_file, auth.jwt.jwks_file or tls.client_ca_file"
                    .into(),
            );
        }
        let sec = &self.kafka.security;
        if sec.protocol.is_sasl() {
            if sec.sasl_mechanism.is_none() || sec.username.is_none() {
                errors.push(format!(
                    "kafka.security.protocol {} needs kafka.security.sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and kafka.security.username",
                    sec.protocol.as_librdkafka()
                ));
            }
            if sec.password.is_none() == sec.password_file.is_none() {
                errors.push(
                    "SASL needs exactly one of kafka.security.password (GATEWAY_KAFKA_SECURITY_PASSWORD) and kafka.security.password_file"
                        .into(),
                );
            }
        } else if sec.sasl_mechanism.is_some() || sec.username.is_some() || sec.password.is_some() {
            errors.push(format!(
                "kafka.security SASL settings need protocol sasl_plaintext or sasl_ssl (it is {})",
                sec.protocol.as_librdkafka()
            ));
        }
        if !sec.protocol.is_tls() && (sec.ca_file.is_some() || sec.cert_file.is_some()) {
            errors.push(format!(
                "kafka.security.ca_file / cert_file need protocol ssl or sasl_ssl (it is {})",
                sec.protocol.as_librdkafka()
            ));
        }
        if sec.cert_file.is_some() != sec.key_file.is_some() {
            errors.push("kafka.security.cert_file and kafka.security.key_file go together".into());
        }
        if self.performance.max_streams == 0 {
            errors.push("performance.max_streams must be above 0".into());
        }
        if self.limits.max_stream_in_flight == 0 {
            errors.push("limits.max_stream_in_flight must be above 0".into());
        }
        if self.rate_limit.enabled
            && (self.rate_limit.requests_per_second == 0 || self.rate_limit.burst_size == 0)
        {
            errors.push(
                "rate_limit.requests_per_second and rate_limit.burst_size must be above 0 (or set rate_limit.enabled: false)"
                    .into(),
            );
        }
        if !self.metrics.path.starts_with('/') {
            errors.push(format!(
                "metrics.path `{}` must start with /",
                self.metrics.path
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors.join("; ")))
        }
    }

    /// The effective configuration without secrets (librdkafka passthrough values that look
    /// like credentials are masked), for `/health/detailed` and the startup log.
    pub fn redacted(&self) -> serde_json::Value {
        let mut c = self.clone();
        for (k, v) in c.kafka.librdkafka.iter_mut() {
            if k.contains("password") || k.contains("secret") || k.contains("key") {
                *v = "***".into();
            }
        }
        serde_json::to_value(&c).expect("config serializes")
    }
}

/// A CIDR block, or one address as a block of one (`192.0.2.7`, `::1`).
pub fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    /// Loads with exactly `env` as the environment, inside a jail (its own working directory,
    /// variables restored afterwards, one jail at a time).
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn load_with(file: Option<(&str, &str)>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut out = None;
        Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in env {
                jail.set_env(k, v);
            }
            let path = file.map(|(name, text)| {
                jail.create_file(name, text).unwrap();
                PathBuf::from(name)
            });
            out = Some(Config::load(path.as_deref()));
            Ok(())
        });
        out.unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let c = load_with(None, &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.address, "0.0.0.0:8090");
    }

    #[test]
    fn env_names_with_underscored_sections_work() {
        let c = load_with(
            None,
            &[
                ("GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND", "42"),
                ("GATEWAY_RATE_LIMIT_BURST_SIZE", "84"),
                ("GATEWAY_KAFKA_BROKERS", "127.0.0.1:9092, 127.0.0.2:9092"),
                ("GATEWAY_KAFKA_TOPIC", "t1"),
                ("GATEWAY_SERVER_ADDRESS", "127.0.0.1:9000"),
                ("GATEWAY_PERFORMANCE_MAX_REQUEST_SIZE", "1MiB"),
                ("GATEWAY_KAFKA_REQUIRED_ACKS", "-1"),
                ("GATEWAY_SERVER_HTTP2_MAX_FRAME_SIZE", "32KiB"),
                ("GATEWAY_SERVER_HTTP1_MAX_HEADERS", "50"),
                ("GATEWAY_CONFIG", "names-the-file.yaml"),
                ("OTHER_VAR", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.rate_limit.requests_per_second, 42);
        assert_eq!(c.rate_limit.burst_size, 84);
        assert_eq!(c.kafka.brokers, vec!["127.0.0.1:9092", "127.0.0.2:9092"]);
        assert_eq!(c.kafka.topic, "t1");
        assert_eq!(c.server.address, "127.0.0.1:9000");
        assert_eq!(c.performance.max_request_size, ByteSize::mib(1));
        assert_eq!(c.kafka.required_acks, RequiredAcks::All);
        assert_eq!(c.server.http2.max_frame_size, ByteSize::kib(32));
        assert_eq!(c.server.http1.max_headers, 50);
    }

    /// Nested sections take their variables too; the Kafka password comes from the
    /// environment or a file and is never shown.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn security_settings_come_from_the_environment_and_secrets_stay_hidden() {
        let c = load_with(
            None,
            &[
                ("GATEWAY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("GATEWAY_KAFKA_SECURITY_SASL_MECHANISM", "SCRAM-SHA-512"),
                ("GATEWAY_KAFKA_SECURITY_USERNAME", "gateway"),
                ("GATEWAY_KAFKA_SECURITY_PASSWORD", "s3cret-pw"),
                ("GATEWAY_AUTH_JWT_ISSUER", "https://idp.example"),
                ("GATEWAY_AUTH_PROTECT_METRICS", "true"),
                ("GATEWAY_AUTH_API_KEYS_FILE", "keys.yaml"),
                ("GATEWAY_SERVER_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7"),
            ],
        )
        .unwrap();
        let sec = &c.kafka.security;
        assert_eq!(sec.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(sec.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        assert_eq!(sec.password.as_ref().unwrap().0, "s3cret-pw");
        assert_eq!(c.auth.jwt.issuer.as_deref(), Some("https://idp.example"));
        assert!(c.auth.protect_metrics);
        assert_eq!(c.server.trusted_proxies, ["10.0.0.0/8", "192.0.2.7"]);
        assert!(!format!("{c:?}").contains("s3cret-pw"));
        let shown = c.redacted().to_string();
        assert!(
            !shown.contains("s3cret-pw") && shown.contains("***"),
            "{shown}"
        );

        let mut from_file = None;
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("pw", "from-a-file\n")?;
            jail.set_env("GATEWAY_KAFKA_SECURITY_PROTOCOL", "sasl_plaintext");
            jail.set_env("GATEWAY_KAFKA_SECURITY_SASL_MECHANISM", "PLAIN");
            jail.set_env("GATEWAY_KAFKA_SECURITY_USERNAME", "u");
            jail.set_env("GATEWAY_KAFKA_SECURITY_PASSWORD_FILE", "pw");
            from_file = Some(Config::load(None).unwrap());
            Ok(())
        });
        let c = from_file.unwrap();
        assert_eq!(c.kafka.security.password.unwrap().0, "from-a-file");

        // SASL without its settings, a bad CIDR: refused, naming the key.
        let err = load_with(None, &[("GATEWAY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.security.sasl_mechanism"), "{err}");
        let err = load_with(None, &[("GATEWAY_SERVER_TRUSTED_PROXIES", "10.0.0.0/33")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.trusted_proxies[0]"), "{err}");
        let err = load_with(None, &[("GATEWAY_AUTH_REQUIRED", "true")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.required needs"), "{err}");
        let err = load_with(None, &[("GATEWAY_SERVER_IDLE_TIMEOUT", "0s")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.idle_timeout"), "{err}");
    }

    #[test]
    fn file_then_env_layering() {
        let c = load_with(
            Some((
                "c.yaml",
                "server:\n  address: 127.0.0.1:7000\n  read_timeout: 5s\nkafka:\n  topic: from-file\n  brokers: [a:1, b:2]\n",
            )),
            &[("GATEWAY_KAFKA_TOPIC", "from-env")],
        )
        .unwrap();
        assert_eq!(c.server.address, "127.0.0.1:7000");
        assert_eq!(c.server.read_timeout, Duration::from_secs(5));
        assert_eq!(c.kafka.topic, "from-env");
        assert_eq!(c.kafka.brokers, vec!["a:1", "b:2"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_with(Some(("c.yaml", "server:\n  adress: 127.0.0.1:7000\n")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("adress"), "{err}");
        assert!(err.contains("server"), "{err}");

        let err = load_with(None, &[("GATEWAY_KAFKA_TOPICS", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("topics"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = load_with(None, &[("GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND", "fast")])
            .unwrap_err()
            .to_string();
        // Named as the variable the user set.
        assert!(
            err.contains("GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND"),
            "{err}"
        );

        let err = load_with(None, &[("GATEWAY_KAFKA_REQUIRED_ACKS", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("GATEWAY_KAFKA_REQUIRED_ACKS"), "{err}");
        // A bad value in the file is named by its key path in the file.
        let err = load_with(Some(("c.yaml", "kafka:\n  required_acks: 2\n")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.required_acks"), "{err}");

        // Settings that would do nothing, or lock everyone out, name what they need.
        let err = load_with(None, &[("GATEWAY_AUTH_CERTIFICATES_FILE", "c.yaml")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.client_ca_file"), "{err}");
        let err = load_with(None, &[("GATEWAY_AUTH_PROTECT_METRICS", "true")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.protect_metrics") && err.contains("auth.api_keys_file"),
            "{err}"
        );

        let err = load_with(None, &[("GATEWAY_SERVER_ADDRESS", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.address"), "{err}");

        let err = load_with(None, &[("GATEWAY_PERFORMANCE_REQUEST_TIMEOUT", "5s")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("performance.request_timeout"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/c.yaml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/c.yaml"), "{err}");
    }

    /// #30: text settings take a variable's text byte for byte, whatever it looks like
    /// (`123456` was read as a number and refused: "found unsigned int, expected a string").
    #[test]
    fn text_settings_take_the_variables_text_as_it_is() {
        let c = load_with(
            None,
            &[
                ("GATEWAY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("GATEWAY_KAFKA_SECURITY_SASL_MECHANISM", "plain"),
                ("GATEWAY_KAFKA_SECURITY_PASSWORD", "007123456"),
                ("GATEWAY_KAFKA_SECURITY_USERNAME", "1234"),
                ("GATEWAY_KAFKA_TOPIC", "2024"),
                ("GATEWAY_AUTH_JWT_AUDIENCE", "12345"),
                ("GATEWAY_AUTH_JWT_ISSUER", "true"),
                ("GATEWAY_KAFKA_DEAD_LETTER_TOPIC", "[abc]"),
                ("GATEWAY_LOGGING_LEVEL", "1e3"),
            ],
        )
        .unwrap();
        let sec = &c.kafka.security;
        assert_eq!(sec.password.as_ref().unwrap().0, "007123456");
        assert_eq!(sec.username.as_deref(), Some("1234"));
        assert_eq!(c.kafka.topic, "2024");
        assert_eq!(c.auth.jwt.audience.as_deref(), Some("12345"));
        assert_eq!(c.auth.jwt.issuer.as_deref(), Some("true"));
        assert_eq!(c.kafka.dead_letter_topic.as_deref(), Some("[abc]"));
        assert_eq!(c.logging.level, "1e3");
        // Every text key names a real key.
        let keys = keys();
        for k in TEXT_KEYS {
            assert!(keys.iter().any(|x| x == k), "{k} is not a key");
        }
    }

    /// #30: librdkafka properties as librdkafka's CONFIGURATION.md writes them, unquoted.
    #[test]
    fn librdkafka_properties_take_numbers_and_booleans() {
        let c = load_with(
            Some((
                "c.yaml",
                "kafka:\n  librdkafka:\n    linger.ms: 5\n    enable.ssl.certificate.verification: false\n    batch.size: 1000000\n    sticky.partitioning.linger.ms: 0.5\n    client.id: gw\n",
            )),
            &[],
        )
        .unwrap();
        let l = &c.kafka.librdkafka;
        assert_eq!(l["linger.ms"], "5");
        assert_eq!(l["enable.ssl.certificate.verification"], "false");
        assert_eq!(l["batch.size"], "1000000");
        assert_eq!(l["sticky.partitioning.linger.ms"], "0.5");
        assert_eq!(l["client.id"], "gw");
        let e = load_with(
            Some(("c.yaml", "kafka:\n  librdkafka:\n    linger.ms: [1, 2]\n")),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a string, a number or a boolean"), "{e}");
    }

    /// #24: Kafka's own spelling of the protocol and mechanism names, in any case.
    #[test]
    fn kafka_security_names_are_read_in_any_case() {
        for (proto, mech, want) in [
            ("SSL", "PLAIN", SecurityProtocol::Ssl),
            ("SASL_SSL", "scram-sha-512", SecurityProtocol::SaslSsl),
            (
                "sasl_plaintext",
                "SCRAM_SHA_256",
                SecurityProtocol::SaslPlaintext,
            ),
            ("PLAINTEXT", "Plain", SecurityProtocol::Plaintext),
        ] {
            let c = load_with(
                None,
                &[
                    ("GATEWAY_KAFKA_SECURITY_PROTOCOL", proto),
                    ("GATEWAY_KAFKA_SECURITY_SASL_MECHANISM", mech),
                    ("GATEWAY_KAFKA_SECURITY_USERNAME", "u"),
                    ("GATEWAY_KAFKA_SECURITY_PASSWORD", "p"),
                ],
            );
            // A mechanism with a protocol that has no SASL is refused by the checks, which
            // is not about spelling; the protocol was read either way.
            match c {
                Ok(c) => assert_eq!(c.kafka.security.protocol, want, "{proto}"),
                Err(e) => assert!(!e.to_string().contains("unknown variant"), "{proto}: {e}"),
            }
        }
        let e = load_with(None, &[("GATEWAY_KAFKA_SECURITY_PROTOCOL", "tls")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls") && e.contains("sasl_ssl"), "{e}");
    }
}
