//! The forwarder: one task that drains the spool to Kafka in position order, releases what
//! Kafka acknowledged (the cursor moves, forwarded segments are deleted), and resumes from
//! the cursor after a restart. Its decisions are `window.rs`'s; this shell does the waiting,
//! the sending and the disk work (off the runtime's workers), and reports.
//!
//! It reads a window of records, sends them together, and re-sends the ones that failed,
//! with backoff, until every record of the window is done; only then does the cursor move
//! past the window. A record that keeps failing, for any reason, is given up on: refused for
//! good (too large, topic missing) for `spool.give_up_after`, or failing for a reason that
//! passes while a broker is reachable for `spool.give_up_transient_after`. It is written to
//! `kafka.dead_letter_topic` when one is set, else parked in
//! `parked/` with its bytes (counted by `spool_parked_records`, which alerts), so that it
//! never blocks the records behind it. A park that fails stops the forwarder at that record
//! (`/health/ready` and `/health/detailed` say why) instead of releasing past a record that
//! is nowhere. A retry loop by hand: the backoff spans whole windows and waits on the
//! broker's readiness, which no retry crate models.
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};
use tokio_util::sync::CancellationToken;

use super::fs::{self, Fs};
use super::segment;
use super::{Record, Spool};
use crate::core::delivery::Stored;
use crate::core::error::Error;

pub mod window;

use window::{ReadCursor, WINDOW, Window};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle forwarder looks for records it was not told about.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// After a window that was not full, the forwarder lets records gather this long before it
/// reads again (like librdkafka's linger): at a steady 5,000 spooled events/s that is ~100
/// reads and produce rounds a second instead of one per group commit, which left the spooled
/// acknowledgements competing with the forwarder for the same cores.
const LINGER: Duration = Duration::from_millis(10);
pub const PARKED_DIR: &str = "parked";
/// `spool.give_up_transient_after`'s default.
const DEFAULT_GIVE_UP_TRANSIENT: Duration = Duration::from_secs(600);

/// Where spooled records go: the Kafka sink.
pub trait Destination: Send + Sync + 'static {
    /// Produces each record to its topic with its own trace headers; one result per record.
    /// Records of one ordering key are stored in the order given, and none after an earlier
    /// one of its key that failed retryably (Kafka's idempotent producer keeps a partition's
    /// order, and a key picks the partition).
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Vec<Result<Stored, Error>>>;
    /// Produces a record that can never reach its topic to the dead-letter topic, with headers
    /// naming the error; `None` when no dead-letter topic is configured.
    fn dead_letter<'a>(
        &'a self,
        record: &'a Record,
        why: &'a str,
    ) -> Option<BoxFuture<'a, Result<Stored, Error>>>;
    /// Whether sending can succeed now (a broker is reachable).
    fn ready(&self) -> bool;
    /// Records with the same key must reach their topic in spool order; None: no order to
    /// keep. The default is the Kafka sink's default key: the topic with the `partitionkey`
    /// extension, else the subject.
    fn ordering_key(&self, record: &Record) -> Option<String> {
        let e = &record.event;
        let key = e
            .extensions
            .get("partitionkey")
            .map(String::as_str)
            .or(e.subject.as_deref())?;
        Some(format!(
            "{}\u{0}{key}",
            record.topic.as_deref().unwrap_or("")
        ))
    }
}

/// What `/health/detailed`, readiness and the metrics show about the forwarder.
#[derive(Default)]
pub struct Status {
    state: Mutex<&'static str>,
    last_error: Mutex<Option<String>>,
    /// Why the forwarder cannot go past a record (a park that failed); None while it can.
    stalled: Mutex<Option<String>>,
    parked: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Status {
    fn set(&self, state: &'static str) {
        *self.state.lock().expect("status lock") = state;
    }

    pub fn state(&self) -> &'static str {
        *self.state.lock().expect("status lock")
    }

    pub fn stalled(&self) -> Option<String> {
        self.stalled.lock().expect("status lock").clone()
    }

    fn set_stalled(&self, why: Option<String>) {
        *self.stalled.lock().expect("status lock") = why;
    }

    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }

    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.state(),
            "last_error": *self.last_error.lock().expect("status lock"),
            "stalled": self.stalled(),
            "parked_records": self.parked.load(Ordering::Relaxed),
            "dead_lettered": self.dead_lettered.load(Ordering::Relaxed),
        })
    }
}

struct Metrics {
    forwarded: Counter<u64>,
    failures: Counter<u64>,
}

pub struct Forwarder {
    spool: Arc<Spool>,
    dest: Arc<dyn Destination>,
    give_up_after: Duration,
    give_up_transient_after: Duration,
    status: Arc<Status>,
    metrics: Metrics,
}

/// Stops the forwarder: `drain` lets it finish what is spooled (until `stop`), `stop` ends it
/// at once (what Kafka acknowledged so far is released; the rest stays for the next start).
#[derive(Clone, Default)]
pub struct Control {
    pub drain: CancellationToken,
    pub stop: CancellationToken,
}

/// Keeps a record in `parked/<position>.seg`: a segment holding that one record, its bytes as
/// spooled, durable before this returns.
pub fn park(fs: &dyn Fs, spool_dir: &Path, position: u64, payload: &[u8]) -> std::io::Result<()> {
    let dir = spool_dir.join(PARKED_DIR);
    let mut bytes = segment::encode_header(position).to_vec();
    segment::encode_frame(payload, position, &mut bytes);
    let path = dir.join(segment::file_name(position));
    fs::write_synced(fs, &dir, &path, &bytes)
}

fn count_parked(fs: &dyn Fs, dir: &Path) -> u64 {
    fs.list(dir).map(|l| l.len() as u64).unwrap_or(0)
}

impl Forwarder {
    pub fn new(
        spool: Arc<Spool>,
        dest: Arc<dyn Destination>,
        give_up_after: Duration,
        meter: &Meter,
    ) -> Self {
        let status = Arc::new(Status::default());
        status.set("starting");
        let parked = count_parked(spool.fs().as_ref(), &spool.dir().join(PARKED_DIR));
        status.parked.store(parked, Ordering::Relaxed);
        let s = status.clone();
        meter
            .u64_observable_gauge("spool_parked_records")
            .with_description(
                "Spooled records Kafka refused for good and no dead-letter topic took (an operator must act)",
            )
            .with_callback(move |o| o.observe(s.parked.load(Ordering::Relaxed), &[]))
            .build();
        let s = status.clone();
        meter
            .u64_observable_gauge("spool_forwarder_stalled")
            .with_description(
                "1 while the forwarder cannot go past a record (parking it failed; see /health/detailed)",
            )
            .with_callback(move |o| o.observe(u64::from(s.stalled().is_some()), &[]))
            .build();
        let s = status.clone();
        meter
            .u64_observable_counter("spool_dead_lettered")
            .with_description("Spooled records written to kafka.dead_letter_topic")
            .with_callback(move |o| o.observe(s.dead_lettered.load(Ordering::Relaxed), &[]))
            .build();
        let failures = meter
            .u64_counter("spool_forward_failures")
            .with_description("Failed sends of spooled records, by reason")
            .build();
        for reason in Error::REASONS {
            failures.add(0, &[KeyValue::new("reason", *reason)]);
        }
        let forwarded = meter
            .u64_counter("spool_forwarded")
            .with_description("Spooled records Kafka acknowledged")
            .build();
        forwarded.add(0, &[]);
        Self {
            spool,
            dest,
            give_up_after,
            give_up_transient_after: DEFAULT_GIVE_UP_TRANSIENT,
            status,
            metrics: Metrics {
                forwarded,
                failures,
            },
        }
    }

    /// How long a record may keep failing for a reason that passes (`spool.give_up_transient_after`).
    pub fn give_up_transient_after(mut self, after: Duration) -> Self {
        self.give_up_transient_after = after;
        self
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Runs until `control` says stop (or, draining, until nothing is left).
    pub async fn run(self, control: Control) {
        let mut cursor = ReadCursor::default();
        let mut position = self.spool.forwarded();
        // A release that failed (a segment that could not be deleted): tried again.
        let mut unreleased = false;
        loop {
            if control.stop.is_cancelled() {
                break;
            }
            let appended = self.spool.appended();
            let spool = self.spool.clone();
            let (back, read) = tokio::task::spawn_blocking(move || {
                let r = cursor.read(&spool, position, WINDOW);
                (cursor, r)
            })
            .await
            .expect("the window read does not panic");
            cursor = back;
            let (raw, next, full) = match read {
                Ok(r) => r,
                Err(e) => {
                    self.error(format!("reading the spool failed: {e}"));
                    tokio::select! {
                        _ = control.stop.cancelled() => break,
                        _ = tokio::time::sleep(BACKOFF_MAX) => continue,
                    }
                }
            };
            let mut window = Window::new(raw, next, full, |r| self.dest.ordering_key(r));
            if window.is_empty() {
                if window.next > position || unreleased {
                    // Only damaged records or skipped positions were in the way: move past.
                    position = position.max(window.next);
                    unreleased = !self.release(position).await;
                    if unreleased {
                        tokio::select! {
                            _ = control.stop.cancelled() => break,
                            _ = tokio::time::sleep(BACKOFF_MAX) => {}
                        }
                    }
                    continue;
                }
                if control.drain.is_cancelled() {
                    break;
                }
                self.status.set("idle");
                tokio::select! {
                    _ = control.stop.cancelled() => break,
                    _ = control.drain.cancelled() => {}
                    _ = appended => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            self.status.set("forwarding");
            if let Some(at) = window.first_spooled_at() {
                self.spool.set_head(at);
            }
            if self.forward(&mut window, &control).await.is_none() {
                break;
            }
            position = window.next;
            unreleased = !self.release(position).await;
            if !window.full && !control.drain.is_cancelled() {
                tokio::select! {
                    _ = control.stop.cancelled() => break,
                    _ = tokio::time::sleep(LINGER) => {}
                }
            }
        }
        self.status.set("stopped");
    }

    /// Releases up to `position` off the runtime's workers; whether it all worked.
    async fn release(&self, position: u64) -> bool {
        let spool = self.spool.clone();
        let released = tokio::task::spawn_blocking(move || spool.release(position))
            .await
            .expect("releasing does not panic");
        match released {
            Ok(()) => true,
            Err(e) => {
                self.error(format!(
                    "could not release forwarded segments (retried): {e}"
                ));
                false
            }
        }
    }

    fn error(&self, why: String) {
        tracing::error!(error = %why, "spool forwarder");
        *self.status.last_error.lock().expect("status lock") = Some(why);
    }

    /// Sends every record of a window until each is in Kafka, dead-lettered or parked. None
    /// when told to stop first (nothing is released then; the window is sent again later).
    async fn forward(&self, window: &mut Window, control: &Control) -> Option<()> {
        let limits = window::GiveUp {
            refused_ms: self.give_up_after.as_millis() as u64,
            transient_ms: self.give_up_transient_after.as_millis() as u64,
        };
        let give_up_ms = limits.refused_ms.max(limits.transient_ms);
        let mut backoff = BACKOFF_MIN;
        loop {
            let send = window.to_send();
            if !send.is_empty() {
                if !self.dest.ready() {
                    self.status.set("waiting for Kafka");
                    while !self.dest.ready() {
                        tokio::select! {
                            _ = control.stop.cancelled() => return None,
                            _ = tokio::time::sleep(IDLE_POLL) => {}
                        }
                    }
                    window.restart_clocks();
                    self.status.set("forwarding");
                }
                let batch = window.records(&send);
                let results = tokio::select! {
                    _ = control.stop.cancelled() => return None,
                    r = self.dest.send(&batch) => r,
                };
                let sent = window.sent(&send, results, self.spool.now(), limits);
                self.metrics.forwarded.add(sent.stored, &[]);
                for reason in &sent.failures {
                    self.metrics
                        .failures
                        .add(1, &[KeyValue::new("reason", *reason)]);
                }
            }
            for i in window.to_dead_letter() {
                let e = &window.entries[i];
                let window::State::DeadLetter(why) = &e.state else {
                    continue;
                };
                let record = e
                    .record
                    .as_ref()
                    .expect("only decoded records are given up");
                let result = match self.dest.dead_letter(record, why) {
                    None => None,
                    Some(send) => Some(tokio::select! {
                        _ = control.stop.cancelled() => return None,
                        r = send => r,
                    }),
                };
                if let Some(Ok(_)) = &result {
                    self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(position = e.position, id = %record.event.id, error = %why, "spooled record sent to the dead-letter topic");
                }
                window.dead_lettered(i, result, self.spool.now(), give_up_ms);
            }
            for i in window.to_park() {
                self.park(window, i).await;
            }
            if window.done() {
                self.status.set_stalled(None);
                return Some(());
            }
            let left = window
                .entries
                .iter()
                .filter(|e| e.state != window::State::Stored)
                .count();
            *self.status.last_error.lock().expect("status lock") =
                Some(format!("{left} records of a window not yet done"));
            tokio::select! {
                _ = control.stop.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Parks entry `i` off the runtime's workers; a failure stalls the forwarder there.
    async fn park(&self, window: &mut Window, i: usize) {
        let e = &window.entries[i];
        let window::State::Park(why) = &e.state else {
            return;
        };
        let why = why.clone();
        let position = e.position;
        let payload = e.payload.clone();
        let spool = self.spool.clone();
        let parked = tokio::task::spawn_blocking(move || {
            park(spool.fs().as_ref(), spool.dir(), position, &payload)
        })
        .await
        .expect("parking does not panic");
        match parked {
            Ok(()) => {
                self.status.parked.fetch_add(1, Ordering::Relaxed);
                self.status.set_stalled(None);
                tracing::error!(
                    position,
                    error = %why,
                    "spooled record parked: no dead-letter topic took it; see spool_parked_records"
                );
                window.parked(i, true);
            }
            Err(e) => {
                let stalled =
                    format!("could not park record {position} ({why}): {e}; forwarding waits here");
                self.error(stalled.clone());
                self.status.set_stalled(Some(stalled));
                window.parked(i, false);
            }
        }
    }
}

#[cfg(test)]
mod tests;
