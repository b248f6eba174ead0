//! The delivery ports: what the core asks of the places an event can be stored, and what it
//! answers about where an event went. The core defines them and the lower rooms implement
//! them (`sink::local_log` and `sink::kafka` the [`EventSink`], `spool::Spool` the
//! [`Journal`]); the server hands the core the implementations. So the core names neither a
//! sink nor the spool, and storage depends on the core's types, never the reverse.
use std::time::Duration;

use futures::future::BoxFuture;

use crate::core::error::Error;
use crate::core::event::Event;

/// Where one event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
}

/// What a shutdown flush left undelivered.
#[derive(Debug, Clone, Default)]
pub struct FlushReport {
    pub undelivered: usize,
}

pub trait EventSink: Send + Sync + 'static {
    /// A short name for logs and health, `kafka` or `local-log`.
    fn name(&self) -> &'static str;

    /// Stores every event; the future resolves once each event's outcome is known, with one
    /// result per event, in order. `Ok` means durably stored.
    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Vec<Result<Stored, Error>>>;

    /// Whether the sink can take events now. Cheap: readiness checks call it often.
    fn is_ready(&self) -> bool;

    /// Why it cannot, for `/health/ready` and `/health/detailed`.
    fn not_ready_reason(&self) -> String;

    /// What `/health/detailed` shows about this sink (for people, not probes).
    fn details(&self) -> serde_json::Value;

    /// Delivers everything still queued, waiting at most `timeout`.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, FlushReport>;
}

/// Where an event is now, which is the guarantee it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The broker acknowledged it (per `kafka.required_acks`), or the local log fsynced it.
    Stored(Stored),
    /// Fsynced to the spool at this position; the forwarder will send it to Kafka.
    Spooled { position: u64 },
}

/// What one event got: its delivery, and whether it was a duplicate within `dedup.window`
/// (then the delivery is the first one's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub delivery: Delivery,
    pub duplicate: bool,
}

impl Receipt {
    pub fn new(delivery: Delivery) -> Self {
        Self {
            delivery,
            duplicate: false,
        }
    }

    pub fn is_spooled(&self) -> bool {
        matches!(self.delivery, Delivery::Spooled { .. })
    }
}

/// The spool as the core sees it: a local write-ahead log whose records a forwarder sends on
/// later. An append answers only once every record is fsynced (or definitely refused).
pub trait Journal: Send + Sync + 'static {
    /// Appends `events`, in order, each with the request's trace headers; resolves to the
    /// position of the first. Refusals (full, too old, a disk error, stopping) are
    /// `Error::Unavailable`, and nothing of a refused append is acknowledged.
    fn append<'a>(
        &'a self,
        events: &'a [Event],
        trace: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<u64, Error>>;

    /// Whether an event of the largest size taken would fit now (readiness asks).
    fn has_room(&self) -> bool;

    /// Records appended and not yet forwarded.
    fn pending(&self) -> u64;

    /// What `/health/detailed` shows about it.
    fn details(&self) -> serde_json::Value;
}
