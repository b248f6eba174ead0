//! The forwarder: one task that drains the spool to Kafka in position order, releases what
//! Kafka acknowledged (the cursor moves, forwarded segments are deleted), and resumes from
//! the cursor after a restart.
//!
//! It reads a window of records, sends them together (librdkafka's idempotent producer keeps
//! them in order per partition), and re-sends only the ones that failed, with backoff, until
//! every record of the window is done; only then does the cursor move past the window. A
//! record Kafka refuses for good (too large, topic gone, not authorized) is retried for
//! `spool.give_up_after` (a topic may be being created), then written to `kafka.dead_letter_topic` when one is set,
//! else parked in `parked/` (kept, counted by `spool_parked_records`, which alerts) so that it
//! never blocks the records behind it. A retry loop by hand: the backoff spans whole windows
//! and waits on the broker's readiness, which no retry crate models.
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};
use tokio_util::sync::CancellationToken;

use super::segment::{self, Frame, Reader};
use super::{Record, Spool};
use crate::error::Error;
use crate::sink::Stored;

/// Records read and sent together: at most this many, and no more payload bytes than
/// `WINDOW_BYTES` past the first record (events may be up to `limits.max_event_size` each, so
/// the count alone would let one window hold hundreds of MiB).
const WINDOW: usize = 512;
const WINDOW_BYTES: usize = 8 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle forwarder looks for records it was not told about.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// After a window that was not full, the forwarder lets records gather this long before it
/// reads again (like librdkafka's linger): at a steady 5,000 spooled events/s that is ~100
/// reads and produce rounds a second instead of one per group commit, which left the spooled
/// acknowledgements competing with the forwarder for the same cores.
const LINGER: Duration = Duration::from_millis(10);
const PARKED_DIR: &str = "parked";

/// Where spooled records go: the Kafka sink.
pub trait Destination: Send + Sync + 'static {
    /// Produces each record to its topic with its own trace headers; one result per record.
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
}

/// What `/health/detailed` and the metrics show about the forwarder.
#[derive(Default)]
pub struct Status {
    state: Mutex<&'static str>,
    last_error: Mutex<Option<String>>,
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

    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.state(),
            "last_error": *self.last_error.lock().expect("status lock"),
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

impl Forwarder {
    pub fn new(
        spool: Arc<Spool>,
        dest: Arc<dyn Destination>,
        give_up_after: Duration,
        meter: &Meter,
    ) -> Self {
        let status = Arc::new(Status::default());
        status.set("starting");
        let parked = count_parked(&spool.dir().join(PARKED_DIR));
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
            status,
            metrics: Metrics {
                forwarded,
                failures,
            },
        }
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Runs until `control` says stop (or, draining, until nothing is left).
    pub async fn run(self, control: Control) {
        let mut cursor = ReadCursor::default();
        let mut position = self.spool.forwarded();
        loop {
            if control.stop.is_cancelled() {
                break;
            }
            let appended = self.spool.appended();
            let spool = self.spool.clone();
            let (back, window) = tokio::task::spawn_blocking(move || {
                let w = cursor.read(&spool, position, WINDOW);
                (cursor, w)
            })
            .await
            .expect("the window read does not panic");
            cursor = back;
            let window = match window {
                Ok(w) => w,
                Err(e) => {
                    self.error(format!("reading the spool failed: {e}"));
                    tokio::select! {
                        _ = control.stop.cancelled() => break,
                        _ = tokio::time::sleep(BACKOFF_MAX) => continue,
                    }
                }
            };
            if window.records.is_empty() {
                if window.next > position {
                    // Only damaged records were in the way: move past them.
                    position = window.next;
                    self.release(position, 0);
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
            let first_ms = window
                .records
                .iter()
                .find_map(|(_, r)| r.as_ref().ok().map(|r| r.spooled_at_ms))
                .unwrap_or(0);
            if first_ms != 0 {
                self.spool.shared.head_ms.store(first_ms, Ordering::Relaxed);
            }
            let done = self.forward(&window.records, &control).await;
            match done {
                Some(()) => {
                    position = window.next;
                    self.release(position, 0);
                }
                None => break,
            }
            if !window.full && !control.drain.is_cancelled() {
                tokio::select! {
                    _ = control.stop.cancelled() => break,
                    _ = tokio::time::sleep(LINGER) => {}
                }
            }
        }
        self.status.set("stopped");
    }

    fn release(&self, position: u64, head: u64) {
        if let Err(e) = self.spool.release(position, head) {
            self.error(format!("could not release forwarded segments: {e}"));
        }
    }

    fn error(&self, why: String) {
        tracing::error!(error = %why, "spool forwarder");
        *self.status.last_error.lock().expect("status lock") = Some(why);
    }

    /// Sends every record of a window until each is in Kafka, dead-lettered or parked. None
    /// when told to stop first (nothing is released then; the window is sent again later).
    async fn forward(
        &self,
        window: &[(u64, Result<Record, String>)],
        control: &Control,
    ) -> Option<()> {
        let mut pending: Vec<usize> = Vec::with_capacity(window.len());
        for (i, (position, r)) in window.iter().enumerate() {
            match r {
                Ok(_) => pending.push(i),
                Err(why) => {
                    // Checksummed but not a record this version can read: keep it, move on.
                    self.park_raw(*position, why).await;
                }
            }
        }
        // When Kafka first refused each record for good.
        let mut refused_since: Vec<Option<tokio::time::Instant>> = vec![None; window.len()];
        let mut backoff = BACKOFF_MIN;
        while !pending.is_empty() {
            while !self.dest.ready() {
                self.status.set("waiting for Kafka");
                tokio::select! {
                    _ = control.stop.cancelled() => return None,
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
            }
            let batch: Vec<Record> = pending
                .iter()
                .map(|&i| window[i].1.clone().expect("pending records decoded"))
                .collect();
            let results = tokio::select! {
                _ = control.stop.cancelled() => return None,
                r = self.dest.send(&batch) => r,
            };
            let mut still = Vec::new();
            let mut acked = 0;
            for ((&i, result), record) in pending.iter().zip(results).zip(&batch) {
                match result {
                    Ok(_) => acked += 1,
                    Err(e) => {
                        self.metrics
                            .failures
                            .add(1, &[KeyValue::new("reason", e.reason())]);
                        if e.is_retryable() {
                            still.push(i);
                            continue;
                        }
                        let since = *refused_since[i].get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() < self.give_up_after {
                            still.push(i);
                        } else {
                            self.give_up(window[i].0, record, &e, control).await?;
                        }
                    }
                }
            }
            self.metrics.forwarded.add(acked, &[]);
            if !still.is_empty() {
                *self.status.last_error.lock().expect("status lock") = Some(format!(
                    "{} records of a window not yet acknowledged",
                    still.len()
                ));
                tokio::select! {
                    _ = control.stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            pending = still;
        }
        Some(())
    }

    /// A record Kafka will not take: to the dead-letter topic (retried while that is merely
    /// unavailable), else parked.
    async fn give_up(
        &self,
        position: u64,
        record: &Record,
        e: &Error,
        control: &Control,
    ) -> Option<()> {
        let why = e.to_string();
        let mut backoff = BACKOFF_MIN;
        loop {
            let Some(send) = self.dest.dead_letter(record, &why) else {
                break;
            };
            match send.await {
                Ok(_) => {
                    self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(position, id = %record.event.id, error = %why, "spooled record sent to the dead-letter topic");
                    return Some(());
                }
                Err(dl) if dl.is_retryable() => {
                    tokio::select! {
                        _ = control.stop.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(dl) => {
                    self.error(format!(
                        "the dead-letter topic refused record {position}: {dl}"
                    ));
                    break;
                }
            }
        }
        self.park(position, &record.encode(), &why).await;
        Some(())
    }

    async fn park_raw(&self, position: u64, why: &str) {
        tracing::error!(position, why, "spooled record cannot be decoded");
        // The raw payload is still in its segment; parking records the position only.
        self.park(position, why.as_bytes(), why).await;
    }

    /// Keeps a record in `parked/<position>.seg` (fsynced), counted and alerted on.
    async fn park(&self, position: u64, payload: &[u8], why: &str) {
        let dir = self.spool.dir().join(PARKED_DIR);
        let mut bytes = segment::encode_header(position).to_vec();
        segment::encode_frame(payload, &mut bytes);
        let path = dir.join(segment::file_name(position));
        let written = tokio::task::spawn_blocking(move || write_synced(&dir, &path, &bytes))
            .await
            .expect("parking does not panic");
        match written {
            Ok(()) => {
                self.status.parked.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    position,
                    error = why,
                    "spooled record parked: Kafka refused it for good and no dead-letter topic is set; see spool_parked_records"
                );
            }
            Err(e) => self.error(format!("could not park record {position}: {e}")),
        }
    }
}

fn write_synced(
    dir: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

fn count_parked(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter(|e| e.is_ok()).count() as u64)
        .unwrap_or(0)
}

/// A window of records and the position after it.
struct Window {
    records: Vec<(u64, Result<Record, String>)>,
    next: u64,
    /// It stopped at a bound (count or bytes), not at the end of what was written.
    full: bool,
}

/// The forwarder's place in the segment files, kept between windows so reading is
/// sequential.
#[derive(Default)]
struct ReadCursor {
    reader: Option<Reader>,
}

impl ReadCursor {
    /// Up to `max` records from `position` on, never past what the writer committed.
    fn read(&mut self, spool: &Spool, position: u64, max: usize) -> std::io::Result<Window> {
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut next = position;
        while records.len() < max && bytes < WINDOW_BYTES {
            let Some(seg) = spool.segment_at(next) else {
                break;
            };
            if self.reader.as_ref().is_none_or(|r| r.first != seg.first) {
                self.reader = match Reader::open(&seg.path)? {
                    Ok(r) => Some(r),
                    Err(why) => {
                        tracing::error!(path = %seg.path.display(), why, "spool segment became unreadable");
                        None
                    }
                };
            }
            let Some(reader) = self.reader.as_mut() else {
                break;
            };
            reader.set_limit(seg.committed)?;
            // A gap (an unreadable segment set aside): numbering goes on here.
            next = next.max(seg.first);
            while records.len() < max && bytes < WINDOW_BYTES {
                match reader.next_frame()? {
                    Some(Frame::Record {
                        position, payload, ..
                    }) => {
                        if position < next {
                            continue; // forwarded before a restart
                        }
                        next = position + 1;
                        bytes += payload.len();
                        records.push((position, Record::decode(&payload)));
                    }
                    Some(Frame::Corrupt { position, at, .. }) => {
                        tracing::error!(path = %seg.path.display(), position, offset = at, "corrupt spool record (checksum mismatch): skipped");
                        next = next.max(position + 1);
                    }
                    None => break,
                }
            }
            if records.len() >= max || bytes >= WINDOW_BYTES || seg.active {
                break; // a full window, or caught up with the writer
            }
            // A sealed segment read to its end (or to damage): on with the next one.
            next = next.max(seg.end);
            self.reader = None;
        }
        let full = records.len() >= max || bytes >= WINDOW_BYTES;
        Ok(Window {
            records,
            next,
            full,
        })
    }
}
