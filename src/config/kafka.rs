//! `kafka.*`: brokers, topic, acknowledgements, batching, compression, record mode and key,
//! the dead-letter topic, security (TLS, SASL) and the librdkafka passthrough.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer, Serialize};

use super::de::{list_or_csv, scalar_map};

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
    /// librdkafka `compression.type`: none, gzip, snappy, lz4, zstd. snappy by default: per
    /// single event it costs 1.06-1.1x no compression, lz4 1.5x, zstd 3.9-4.6x (librdkafka
    /// sets up its compression state per message set, and a single event is a set of one),
    /// and on batches it saves about what lz4 does on the wire (docs/benchmarks.md, "The
    /// Kafka path").
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
    /// Request headers (gRPC metadata alike) copied onto each of the request's records as
    /// Kafka headers, under the same (lowercase) name, in this list's order (a repeated
    /// header in the order sent); a stream's are those it opened with. Credentials and names
    /// the gateway writes itself are refused at load ([`forward_header_refused`]).
    #[serde(deserialize_with = "list_or_csv")]
    pub forward_headers: Vec<String>,
    /// The most bytes (names and values) of forwarded headers one request may carry; a
    /// request over it is refused (413 / INVALID_ARGUMENT naming this key), never cut.
    pub forward_headers_max_bytes: ByteSize,
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
pub(super) fn named<'de, D: Deserializer<'de>, T: Copy>(
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
            compression: "snappy".into(),
            message_timeout: Duration::from_secs(20),
            queue_max_messages: 100_000,
            message_max_bytes: 1_000_000,
            record_mode: RecordMode::Binary,
            key_strategy: KeyStrategy::PartitionkeyOrSubject,
            dead_letter_topic: None,
            forward_headers: Vec::new(),
            forward_headers_max_bytes: ByteSize::kib(1),
            security: KafkaSecurity::default(),
            librdkafka: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The `kafka.*` rules that types alone cannot hold, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        if self.topic.trim().is_empty() {
            errors.push("kafka.topic must not be empty".into());
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            errors.push(format!(
                "kafka.compression `{}` must be one of none, gzip, snappy, lz4, zstd",
                self.compression
            ));
        }
        if self.idempotence && self.required_acks != RequiredAcks::All {
            errors.push(
                "kafka.idempotence requires kafka.required_acks = all; set kafka.idempotence: false to use 0 or 1"
                    .into(),
            );
        }
        if self
            .dead_letter_topic
            .as_ref()
            .is_some_and(|t| t.trim().is_empty())
        {
            errors
                .push("kafka.dead_letter_topic must not be empty (leave it unset for none)".into());
        }
        self.check_forward_headers(errors);
        self.security.check(errors);
    }

    fn check_forward_headers(&self, errors: &mut Vec<String>) {
        for name in &self.forward_headers {
            let lower = name.trim().to_ascii_lowercase();
            if super::server::http_token(&lower).is_none() {
                errors.push(format!(
                    "kafka.forward_headers: `{name}` is not an HTTP header name"
                ));
            } else if let Some(why) = forward_header_refused(&lower) {
                errors.push(format!("kafka.forward_headers: `{name}` is refused: {why}"));
            }
        }
        let max = self.forward_headers_max_bytes.as_u64();
        if !self.forward_headers.is_empty()
            && !(1..=FORWARD_HEADERS_MAX_BYTES_CEILING).contains(&max)
        {
            errors.push(format!(
                "kafka.forward_headers_max_bytes ({max} bytes) must be between 1 and {FORWARD_HEADERS_MAX_BYTES_CEILING} (the records' header room above limits.max_event_size is 64 KiB)"
            ));
        }
    }
}

/// The API-key request header (`transport::stack::authn` looks it up by this name).
pub const API_KEY_HEADER: &str = "x-api-key";

/// The ceiling of `kafka.forward_headers_max_bytes`: a quarter of the 64 KiB that
/// `limits.max_event_size` must leave below `kafka.message_max_bytes` for a record's
/// headers, so forwarded headers cannot push a record over the broker's limit.
pub const FORWARD_HEADERS_MAX_BYTES_CEILING: u64 = 16 * 1024;

/// Header names `kafka.forward_headers` refuses, and why: credentials (a topic's readers
/// are not meant to see them), and what the gateway writes on records itself (a forwarded
/// copy would be taken for the gateway's own).
pub const FORWARD_HEADERS_REFUSED: &[(&str, &str)] = &[
    ("authorization", "a credential"),
    ("proxy-authorization", "a credential"),
    ("cookie", "a credential"),
    ("set-cookie", "a credential"),
    (API_KEY_HEADER, "a credential (the API-key header)"),
    (
        "x-forwarded-access-token",
        "a credential (set by authenticating proxies)",
    ),
    (
        "cf-access-jwt-assertion",
        "a credential (set by authenticating proxies)",
    ),
    ("content-type", "the gateway writes it on every record"),
    (
        "traceparent",
        "the gateway writes the trace context on every record",
    ),
    (
        "tracestate",
        "the gateway writes the trace context on every record",
    ),
];

/// Why `name` (lowercase) may not be forwarded, or `None` if it may.
pub fn forward_header_refused(name: &str) -> Option<&'static str> {
    if let Some((_, why)) = FORWARD_HEADERS_REFUSED.iter().find(|(n, _)| *n == name) {
        return Some(why);
    }
    if name.starts_with("ce_") || name.starts_with("ce-") {
        return Some("CloudEvents attributes travel as the gateway's own ce_* headers");
    }
    if name.starts_with("sec-") {
        // `sec-websocket-protocol` carries a browser's token (`bearer.<token>`).
        return Some("sec-* headers are the browser's (the WebSocket's may carry a token)");
    }
    if name.starts_with("x-amzn-oidc-") {
        return Some("a credential (set by authenticating proxies)");
    }
    if name.starts_with("grpc-") || name.starts_with(':') {
        return Some("reserved by gRPC / HTTP/2");
    }
    if name.ends_with("-bin") {
        return Some("binary gRPC metadata is not forwarded");
    }
    if name.starts_with("eventgateway-") {
        return Some("the gateway writes eventgateway-* headers on dead-lettered records");
    }
    None
}

impl KafkaSecurity {
    fn check(&self, errors: &mut Vec<String>) {
        if self.protocol.is_sasl() {
            if self.sasl_mechanism.is_none() || self.username.is_none() {
                errors.push(format!(
                    "kafka.security.protocol {} needs kafka.security.sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and kafka.security.username",
                    self.protocol.as_librdkafka()
                ));
            }
            if self.password.is_none() == self.password_file.is_none() {
                errors.push(
                    "SASL needs exactly one of kafka.security.password (GATEWAY_KAFKA_SECURITY_PASSWORD) and kafka.security.password_file"
                        .into(),
                );
            }
        } else if self.sasl_mechanism.is_some()
            || self.username.is_some()
            || self.password.is_some()
        {
            errors.push(format!(
                "kafka.security SASL settings need protocol sasl_plaintext or sasl_ssl (it is {})",
                self.protocol.as_librdkafka()
            ));
        }
        if !self.protocol.is_tls() && (self.ca_file.is_some() || self.cert_file.is_some()) {
            errors.push(format!(
                "kafka.security.ca_file / cert_file need protocol ssl or sasl_ssl (it is {})",
                self.protocol.as_librdkafka()
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            errors.push("kafka.security.cert_file and kafka.security.key_file go together".into());
        }
    }
}
