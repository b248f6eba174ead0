//! The write-ahead spool: a directory of segment files (`segment.rs` has the format) that
//! events are appended to and fsynced before they are acknowledged as `ack: spooled`, and
//! that the forwarder (`forward/`) drains to Kafka. The embedded local log (no brokers) is the
//! same spool, never forwarded. This module is the handle everyone holds ([`Spool`]): appends,
//! bounds, release of what Kafka acknowledged, and the state the writer, forwarder, health
//! and metrics share.
//!
//! Its parts: `writer.rs` (the thread that group-commits appends), `recover.rs` (what opening
//! finds), `cursor.rs` (the forwarded position, durable), `record.rs` (a record's payload),
//! `fs.rs` (the file-system seam every file operation goes through, so the simulator in
//! `sim/` can crash, tear and fault it deterministically).
//!
//! Positions number records across segments from 0. A position that was acknowledged is
//! never handed out again, across crashes and restarts; positions may skip (a group whose
//! failed write could not be cut back, damage), never go back. `release` moves the cursor past
//! what Kafka acknowledged and deletes fully forwarded segments; a segment leaves the spool's
//! list only once its file is gone, so a failed delete is retried and never leaks space.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tokio::sync::{Notify, mpsc, oneshot};

use futures::future::BoxFuture;

use crate::core::delivery::Journal;
use crate::core::error::Error;
use crate::core::event::Event;

pub mod cursor;
pub mod forward;
pub mod fs;
pub mod record;
mod recover;
pub mod segment;
#[cfg(test)]
mod sim;
mod writer;

pub use fs::{Fs, RealFs};
pub use record::Record;
use segment::{Frame, Reader};
use writer::{Job, Writer};

/// Where segments with damage go once forwarded past, for an operator to look at.
pub const DAMAGED_DIR: &str = "damaged";

/// Milliseconds since the Unix epoch, as the spool reads time (the simulator's own clock in
/// its runs).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn system_clock() -> Clock {
    Arc::new(now_ms)
}

/// What bounds a spool.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_bytes: u64,
    /// None: records may wait for ever (the local log, which is never forwarded).
    pub max_age: Option<Duration>,
    /// The room readiness asks for: with less than this left under `max_bytes`, the spool
    /// says it has no room (an event of `limits.max_event_size` would not fit).
    pub min_room: u64,
}

/// Why an append was refused. Nothing of a refused append is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `max_bytes` would be exceeded.
    Full { max_bytes: u64 },
    /// The oldest unforwarded record is older than `max_age`.
    TooOld { max_age: Duration },
    /// The disk refused the write (ENOSPC and the like); the group was cut back off.
    Io(String),
    /// The writer is gone (shutting down).
    Stopped,
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Full { .. } => "full",
            Refused::TooOld { .. } => "too_old",
            Refused::Io(_) => "io",
            Refused::Stopped => "stopped",
        }
    }

    /// The client's answer: 503 with Retry-After, nothing stored.
    pub fn into_error(self) -> Error {
        let message = match &self {
            Refused::Full { max_bytes } => {
                format!("the spool is full (spool.max_bytes = {max_bytes} bytes); retry later")
            }
            Refused::TooOld { max_age } => format!(
                "the spool holds events older than spool.max_age ({}s) that are not yet forwarded; retry later",
                max_age.as_secs()
            ),
            Refused::Io(e) => format!("the spool could not write to disk: {e}; retry later"),
            Refused::Stopped => "the spool is closed: the gateway is shutting down".into(),
        };
        Error::Unavailable {
            message,
            retry_after: Duration::from_secs(5),
        }
    }
}

/// One segment as the spool knows it.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub first: u64,
    pub path: PathBuf,
    /// Bytes counted against `max_bytes` and readable: the writer's committed length, or the
    /// file's length after recovery.
    pub committed: u64,
    /// The position after its last record (`first` when it holds none).
    pub end: u64,
    /// Damage was found in it: it goes to `damaged/` once forwarded past, not deleted.
    pub damaged: bool,
    /// Still being written to.
    pub active: bool,
}

/// State the writer, the forwarder, health and metrics share.
pub(crate) struct Shared {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    clock: Clock,
    segments: Mutex<Vec<Segment>>,
    next_position: AtomicU64,
    forwarded: AtomicU64,
    bytes: AtomicU64,
    /// When the oldest unforwarded record was spooled (ms since the Unix epoch; 0: none).
    head_ms: AtomicU64,
    writable: AtomicBool,
    appended: Notify,
    /// The durable forwarded position; its lock also serializes releases.
    cursor: Mutex<cursor::Cursor>,
    refused: Counter<u64>,
    /// One group commit: its writes and the fdatasync that makes them durable.
    commit: Histogram<f64>,
}

impl Shared {
    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn oldest_age(&self) -> Duration {
        match self.head_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            at => Duration::from_millis(self.now().saturating_sub(at)),
        }
    }

    fn pending(&self) -> u64 {
        self.next_position
            .load(Ordering::Acquire)
            .saturating_sub(self.forwarded.load(Ordering::Acquire))
    }
}

/// What opening found.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub segments: usize,
    /// Positions not yet forwarded (all records, for the local log).
    pub pending: u64,
    /// Interrupted writes cut off the end of the segment that was being written.
    pub torn_tails: usize,
    /// Records lost to damage (skipped; each damaged stretch whose records cannot be counted
    /// counts one).
    pub corrupt_records: u64,
    /// Segments with a damaged header or unreadable bytes that were kept for inspection.
    pub unreadable_segments: usize,
    /// The lowest position the spool may hand out after what recovery cut (0: no cut).
    pub position_floor: u64,
}

pub struct Spool {
    settings: Settings,
    /// Unbounded: what waits here is bounded by admission (every append is a request's or a
    /// stream event's, which holds its slot until the reply), and an append takes its place
    /// in the queue synchronously, in its first poll. A bounded queue's `send` could take a
    /// permit, then yield to tokio's cooperative budget before queueing the job: appends
    /// polled in one order were queued in another, and the events of a stream, polled many
    /// in one turn, were stored out of the order they arrived (tests/streaming.rs).
    tx: mpsc::UnboundedSender<Job>,
    shared: Arc<Shared>,
    recovery: Recovery,
}

impl Spool {
    /// Opens (creating) the spool in `settings.dir`, reads every segment through, and starts
    /// the writer. Damage is reported in [`Spool::recovery`] and the log, never fatal. Blocks on
    /// the disk: call it off the async runtime's workers.
    pub fn open(settings: Settings, meter: &Meter) -> std::io::Result<Arc<Spool>> {
        let (spool, writer) = Self::open_with(RealFs::shared(), system_clock(), settings, meter)?;
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run())?;
        Ok(spool)
    }

    /// Opens the spool on `fs` with `clock` and returns the writer undriven: the simulator
    /// commits groups itself, on its own schedule. One piece: recovery's results, the cursor
    /// and the first new segment must be set up in this order before anything is appended.
    pub(crate) fn open_with(
        fs: Arc<dyn Fs>,
        clock: Clock,
        settings: Settings,
        meter: &Meter,
    ) -> std::io::Result<(Arc<Spool>, Writer)> {
        fs::ensure_dir(fs.as_ref(), &settings.dir)?;
        let (mut cursor, found) = cursor::Cursor::open(fs.as_ref(), &settings.dir)?;
        // Positions a cut tail may have held stay skipped, across any later crash too: the
        // cursor's floor rises (durably) before recovery cuts.
        let (segments, stats) = recover::recover(fs.as_ref(), &settings.dir, &mut cursor)?;
        if !cursor.intact() {
            // The floor went with the cursor: every position a file still names is skipped.
            // Positions of records forwarded and deleted before the damage may be handed out
            // again (the one case where they can).
            let named = [DAMAGED_DIR, forward::PARKED_DIR]
                .iter()
                .flat_map(|d| fs.list(&settings.dir.join(d)).unwrap_or_default())
                .filter_map(|p| segment::parse_file_name(&p));
            let floor = segments
                .iter()
                .map(|s| s.end.max(s.first + 1))
                .chain(named.map(|first| first + 1))
                .max()
                .unwrap_or(0);
            cursor.raise_floor(floor)?;
        }
        // Every segment on disk claims at least its first position, so a new segment's name
        // never collides with one that is there; the cursor counts too, so positions go on
        // after everything was forwarded and deleted.
        let next_position = segments
            .iter()
            .map(|s| s.end.max(s.first + 1))
            .chain(found)
            .chain([cursor.floor()])
            .max()
            .unwrap_or(0);
        let first = segments.first().map(|s| s.first).unwrap_or(next_position);
        let forwarded = found.unwrap_or(first).clamp(first, next_position);
        let bytes = segments.iter().map(|s| s.committed).sum::<u64>();
        let now = clock();
        let recovery = Recovery {
            pending: next_position - forwarded,
            ..stats
        };
        let shared = Arc::new(Shared {
            fs,
            dir: settings.dir.clone(),
            clock,
            segments: Mutex::new(segments),
            next_position: AtomicU64::new(next_position),
            forwarded: AtomicU64::new(forwarded),
            bytes: AtomicU64::new(bytes),
            // Not known without reading: counted from now, so max_age runs from the restart.
            head_ms: AtomicU64::new(if forwarded < next_position { now } else { 0 }),
            writable: AtomicBool::new(true),
            appended: Notify::new(),
            cursor: Mutex::new(cursor),
            refused: meter
                .u64_counter("spool_refused")
                .with_description("Appends the spool refused, by reason (full, too_old, io)")
                .build(),
            commit: meter
                .f64_histogram("spool_commit_duration")
                .with_unit("s")
                .with_description(
                    "One group commit: writing the appends waiting at that moment and the fdatasync after them",
                )
                .with_boundaries(crate::telemetry::instruments::LATENCY_BUCKETS.to_vec())
                .build(),
        });
        for reason in ["full", "too_old", "io"] {
            shared.refused.add(0, &[KeyValue::new("reason", reason)]);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer::new(settings.clone(), shared.clone(), rx);
        let spool = Arc::new(Spool {
            settings,
            tx,
            shared,
            recovery,
        });
        spool.register_instruments(meter);
        Ok((spool, writer))
    }

    fn register_instruments(&self, meter: &Meter) {
        let s = self.shared.clone();
        meter
            .u64_observable_gauge("spool_size")
            .with_unit("By")
            .with_description("Bytes of spool segments on disk")
            .with_callback(move |o| o.observe(s.bytes.load(Ordering::Relaxed), &[]))
            .build();
        let s = self.shared.clone();
        meter
            .u64_observable_gauge("spool_records")
            .with_description("Spooled records not yet forwarded (the local log: all records)")
            .with_callback(move |o| o.observe(s.pending(), &[]))
            .build();
        let s = self.shared.clone();
        meter
            .f64_observable_gauge("spool_oldest_record_age")
            .with_unit("s")
            .with_description("Age of the oldest spooled record not yet forwarded (0: none)")
            .with_callback(move |o| o.observe(s.oldest_age().as_secs_f64(), &[]))
            .build();
        let replayed = self.recovery.pending;
        meter
            .u64_observable_gauge("spool_replayed_at_start")
            .with_description("Records found not yet forwarded when the spool was opened")
            .with_callback(move |o| o.observe(replayed, &[]))
            .build();
        let corrupt = self.recovery.corrupt_records + self.recovery.unreadable_segments as u64;
        meter
            .u64_observable_gauge("spool_corrupt_records_at_start")
            .with_description(
                "Corrupt records and unreadable segments found when the spool was opened",
            )
            .with_callback(move |o| o.observe(corrupt, &[]))
            .build();
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    pub(crate) fn fs(&self) -> &Arc<dyn Fs> {
        &self.shared.fs
    }

    pub(crate) fn now(&self) -> u64 {
        self.shared.now()
    }

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Appends `records` and resolves once they are fsynced, with the first one's position
    /// (the rest follow in order), or why nothing of them was kept.
    pub async fn append(&self, records: &[Record]) -> Result<u64, Refused> {
        self.append_entries(records.iter().map(Record::entry)).await
    }

    /// [`Self::append`] for records borrowed rather than owned.
    pub async fn append_entries<'a>(
        &self,
        entries: impl ExactSizeIterator<Item = record::Entry<'a>>,
    ) -> Result<u64, Refused> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            batch: writer::Batch::of(entries),
            reply,
        };
        let result = match self.tx.send(job) {
            Ok(()) => rx.await.unwrap_or(Err(Refused::Stopped)),
            Err(_) => Err(Refused::Stopped),
        };
        if let Err(r) = &result
            && *r != Refused::Stopped
        {
            self.shared
                .refused
                .add(1, &[KeyValue::new("reason", r.reason())]);
        }
        result
    }

    /// Whether an ordinary append would be taken now as far as the bounds go (room for
    /// `min_room` bytes, age), and the disk took the last write.
    pub fn has_room(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed)
            && self
                .shared
                .bytes
                .load(Ordering::Relaxed)
                .saturating_add(self.settings.min_room.max(1))
                <= self.settings.max_bytes
            && self
                .settings
                .max_age
                .is_none_or(|max| self.shared.oldest_age() <= max)
    }

    pub fn writable(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Positions not yet forwarded (records, and positions a failed write skipped until the
    /// forwarder passes them).
    pub fn pending(&self) -> u64 {
        self.shared.pending()
    }

    /// The position the next record will get (the local log's size in events, gaps counted).
    pub fn next_position(&self) -> u64 {
        self.shared.next_position.load(Ordering::Acquire)
    }

    pub fn oldest_age(&self) -> Duration {
        self.shared.oldest_age()
    }

    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "dir": self.settings.dir.display().to_string(),
            "size_bytes": self.bytes(),
            "max_bytes": self.settings.max_bytes,
            "records": self.pending(),
            "next_position": self.next_position(),
            "oldest_record_age_seconds": self.oldest_age().as_secs_f64(),
            "max_age_seconds": self.settings.max_age.map(|d| d.as_secs()),
            "segments": self.shared.segments.lock().expect("segments lock").len(),
            "writable": self.writable(),
            "has_room": self.has_room(),
            "recovered": {
                "pending": self.recovery.pending,
                "torn_tails": self.recovery.torn_tails,
                "corrupt_records": self.recovery.corrupt_records,
                "unreadable_segments": self.recovery.unreadable_segments,
            },
        })
    }

    /// Where reading for forwarding starts: the first position not yet forwarded.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Acquire)
    }

    /// Resolves when something was appended after the call began (or spuriously).
    pub async fn appended(&self) {
        self.shared.appended.notified().await
    }

    /// The forwarder read the next window; its first record was spooled at `at_ms`.
    pub(crate) fn set_head(&self, at_ms: u64) {
        self.shared.head_ms.store(at_ms, Ordering::Relaxed);
    }

    /// The segment holding `position`, or the first one after it.
    pub(crate) fn segment_at(&self, position: u64) -> Option<Segment> {
        let segs = self.shared.segments.lock().expect("segments lock");
        segs.iter()
            .find(|s| s.end > position || (s.active && s.first <= position))
            .cloned()
    }

    /// The segments as the spool lists them (for the simulator's checks).
    #[cfg(test)]
    pub(crate) fn segments(&self) -> Vec<Segment> {
        self.shared.segments.lock().expect("segments lock").clone()
    }

    /// Positions below `position` are in Kafka: the cursor moves there durably, and fully
    /// forwarded segments are deleted (moved to `damaged/` when damage was found in them),
    /// oldest first, each leaving the list only once its file is gone. An error leaves the
    /// rest listed for the next release to retry. Blocks on the disk: call it off the async
    /// runtime's workers.
    pub fn release(&self, position: u64) -> std::io::Result<()> {
        let shared = &self.shared;
        let mut cursor = shared.cursor.lock().expect("cursor lock");
        let head_before = shared.head_ms.load(Ordering::Relaxed);
        let position = position.min(self.next_position());
        shared.forwarded.fetch_max(position, Ordering::AcqRel);
        let position = self.forwarded();
        let head = if position >= self.next_position() {
            0
        } else {
            // Unknown until the forwarder reads the next record's own time: from now.
            shared.now()
        };
        // Unless the writer set it meanwhile (a record appended after the check above).
        let _ = shared.head_ms.compare_exchange(
            head_before,
            head,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        // The cursor first: it also tells a restart which positions were handed out once
        // every segment is gone, so nothing is deleted past a cursor that did not land.
        cursor.store(position)?;
        let aside = shared.dir.join(DAMAGED_DIR);
        let mut removed = Ok(false);
        loop {
            let done = {
                let segs = shared.segments.lock().expect("segments lock");
                segs.first()
                    .filter(|s| !s.active && s.end <= position)
                    .cloned()
            };
            let Some(s) = done else { break };
            let gone = if s.damaged {
                let to = aside.join(s.path.file_name().expect("a segment has a file name"));
                fs::ensure_dir(shared.fs.as_ref(), &aside)
                    .and_then(|()| shared.fs.rename(&s.path, &to))
                    .inspect(|()| tracing::warn!(from = %s.path.display(), to = %to.display(), "kept a damaged, fully forwarded segment for inspection"))
            } else {
                shared.fs.remove_file(&s.path)
            };
            if let Err(e) = gone {
                removed = Err(e);
                break;
            }
            // Its file is gone from the spool's directory: off the list.
            let mut segs = shared.segments.lock().expect("segments lock");
            debug_assert_eq!(segs.first().map(|f| &f.path), Some(&s.path));
            segs.remove(0);
            shared.bytes.fetch_sub(s.committed, Ordering::Relaxed);
            removed = Ok(true);
        }
        if matches!(removed, Ok(false)) {
            return Ok(());
        }
        // Names made durable: `damaged/` before the spool's own directory, so a segment set
        // aside is in one of the two after a crash, never in neither. Until then a crash may
        // bring a deleted segment back, which is only forwarded past again.
        if shared.fs.exists(&aside) {
            shared.fs.sync_dir(&aside)?;
        }
        shared.fs.sync_dir(&shared.dir)?;
        removed.map(|_| ())
    }
}

/// The core's port: the service appends events without knowing records or segments.
impl Journal for Spool {
    fn append<'a>(
        &'a self,
        events: &'a [Event],
        trace: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            let now = now_ms();
            let entries = events.iter().map(|e| record::Entry {
                spooled_at_ms: now,
                topic: e.topic.as_deref(),
                trace,
                event: e,
            });
            self.append_entries(entries)
                .await
                .map_err(Refused::into_error)
        })
    }

    fn has_room(&self) -> bool {
        Spool::has_room(self)
    }

    fn pending(&self) -> u64 {
        Spool::pending(self)
    }

    fn details(&self) -> serde_json::Value {
        Spool::details(self)
    }
}

/// Every record of the spool (or local log) in `dir`, as (position, the event's CloudEvents
/// JSON), oldest first; damaged parts are skipped. For `event-gateway log` and tests.
pub fn read_events(dir: &Path) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    read_events_on(&RealFs, dir)
}

pub(crate) fn read_events_on(fs: &dyn Fs, dir: &Path) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    Ok(read_records_on(fs, dir)?
        .into_iter()
        .filter_map(|(p, payload)| Record::event_json(&payload).ok().map(|j| (p, j.to_vec())))
        .collect())
}

/// Every record payload in `dir`'s segments, as (position, payload), oldest first.
pub(crate) fn read_records_on(fs: &dyn Fs, dir: &Path) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut paths: Vec<(u64, PathBuf)> = match fs.list(dir) {
        Ok(entries) => entries
            .into_iter()
            .filter_map(|p| segment::parse_file_name(&p).map(|f| (f, p)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    paths.sort();
    let mut out = Vec::new();
    for (_, path) in paths {
        let mut reader = Reader::open(fs, &path)?;
        while let Some(frame) = reader.next_frame()? {
            if let Frame::Record {
                position, payload, ..
            } = frame
            {
                out.push((position, payload));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
