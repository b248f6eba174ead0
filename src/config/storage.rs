//! Where events rest: `storage.*` (the local log's directory), `spool.*`, `ack.*` and
//! `dedup.*`.
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

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

impl SpoolConfig {
    /// The `spool.*` rules of this section alone, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        if self.segment_bytes.as_u64() < 4096 {
            errors.push("spool.segment_bytes must be at least 4KiB".into());
        }
        if self.max_bytes < self.segment_bytes {
            errors.push("spool.max_bytes must be at least spool.segment_bytes".into());
        }
        if self.max_age.is_zero() {
            errors.push("spool.max_age must be above 0".into());
        }
    }
}

impl DedupConfig {
    /// The `dedup.*` rules, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        if !self.window.is_zero() && self.max_entries == 0 {
            errors.push("dedup.max_entries must be above 0 when dedup.window is set".into());
        }
    }
}
