//! The write-ahead spool: a directory of segment files (`segment.rs` has the format) that
//! events are appended to and fsynced before they are acknowledged as `ack: spooled`, and
//! that the forwarder (`forward.rs`) drains to Kafka. The embedded local log (no brokers) is
//! the same spool, never forwarded.
//!
//! One writer thread owns the open segment and does group commit: it takes every append
//! waiting at that moment, writes them, and pays one `fdatasync` for the lot. It rotates to a
//! new segment past `segment_bytes`, refuses appends past `max_bytes` (or while the oldest
//! unforwarded record is older than `max_age`) instead of dropping old records, and cuts a
//! failed group back off the file (a full disk is a refused append, not a torn segment). On
//! open every segment is read through: a torn tail (an interrupted, never acknowledged write)
//! is cut off the reading, a corrupt record is reported and skipped, and writing always
//! continues in a new segment, so nothing is ever appended after damage.
//!
//! Positions number records across segments from 0 and are never reused while their
//! segment exists; `forwarded` (a small file, replaced atomically) holds the first position
//! not yet acknowledged by Kafka, so a restart resumes there.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::Error;
use crate::event::Event;

pub mod forward;
pub mod segment;

use segment::{End, Frame, Reader};

/// Appends waiting for the writer; past this, `append` waits (backpressure).
const QUEUE_DEPTH: usize = 4096;
/// The cursor file: the first position not yet forwarded.
const CURSOR_FILE: &str = "forwarded";
/// Where segments with damage go once forwarded past, for an operator to look at.
const DAMAGED_DIR: &str = "damaged";

/// What bounds a spool.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_bytes: u64,
    /// None: records may wait for ever (the local log, which is never forwarded).
    pub max_age: Option<Duration>,
}

/// One spooled event with what forwarding needs besides the event: its topic (decided by
/// validation) and the trace headers of the request that brought it.
#[derive(Debug, Clone)]
pub struct Record {
    pub spooled_at_ms: u64,
    pub topic: Option<String>,
    pub trace: Vec<(String, String)>,
    pub event: Event,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trace: Vec<(String, String)>,
}

/// Payload layout: version u8 = 1 | spooled-at ms u64 LE | meta length u32 LE | meta (JSON:
/// topic, trace headers) | the event in the CloudEvents JSON format.
const PAYLOAD_VERSION: u8 = 1;

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&Meta {
            topic: self.topic.clone(),
            trace: self.trace.clone(),
        })
        .expect("meta serializes");
        let event = self.event.to_structured_json();
        let mut out = Vec::with_capacity(13 + meta.len() + event.len());
        out.push(PAYLOAD_VERSION);
        out.extend_from_slice(&self.spooled_at_ms.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&event);
        out
    }

    /// The event's CloudEvents JSON inside a payload, without decoding the rest.
    pub fn event_json(payload: &[u8]) -> Result<&[u8], String> {
        Self::split(payload).map(|(_, _, e)| e)
    }

    fn split(payload: &[u8]) -> Result<(u64, &[u8], &[u8]), String> {
        if payload.len() < 13 || payload[0] != PAYLOAD_VERSION {
            return Err("unknown record version".into());
        }
        let at = u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"));
        let meta_len = u32::from_le_bytes(payload[9..13].try_into().expect("4 bytes")) as usize;
        let rest = &payload[13..];
        if meta_len > rest.len() {
            return Err("record metadata runs past the record".into());
        }
        Ok((at, &rest[..meta_len], &rest[meta_len..]))
    }

    pub fn decode(payload: &[u8]) -> Result<Record, String> {
        let (spooled_at_ms, meta, event) = Self::split(payload)?;
        let meta: Meta =
            serde_json::from_slice(meta).map_err(|e| format!("record metadata: {e}"))?;
        let mut event = Event::from_structured_json(event)?;
        event.topic = meta.topic.as_deref().map(Arc::from);
        Ok(Record {
            spooled_at_ms,
            topic: meta.topic,
            trace: meta.trace,
            event,
        })
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why an append was refused. Nothing of a refused append is in the spool.
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
struct Segment {
    first: u64,
    path: PathBuf,
    /// Bytes known good: the writer's committed length, or the recovered valid length.
    committed: u64,
    /// The position after its last record.
    end: u64,
    /// A torn tail, a corrupt record or an unreadable rest was found in it.
    damaged: bool,
    /// Still being written to.
    active: bool,
}

/// State the writer, the forwarder, health and metrics share.
struct Shared {
    dir: PathBuf,
    segments: Mutex<Vec<Segment>>,
    next_position: AtomicU64,
    forwarded: AtomicU64,
    bytes: AtomicU64,
    /// When the oldest unforwarded record was spooled (ms since the Unix epoch; 0: none).
    head_ms: AtomicU64,
    writable: AtomicBool,
    appended: Notify,
    refused: Counter<u64>,
    /// One group commit: its writes and the fdatasync that makes them durable.
    commit: Histogram<f64>,
}

/// What opening found.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub segments: usize,
    /// Records not yet forwarded (all records, for the local log).
    pub pending: u64,
    pub torn_tails: usize,
    pub corrupt_records: u64,
    pub unreadable_segments: usize,
}

struct Job {
    frames: Vec<u8>,
    count: u64,
    reply: oneshot::Sender<Result<u64, Refused>>,
}

pub struct Spool {
    settings: Settings,
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    recovery: Recovery,
}

impl Spool {
    /// Opens (creating) the spool in `settings.dir`, reads every segment through, and starts
    /// the writer. Damage is reported in [`Spool::recovery`] and the log, never fatal.
    pub fn open(settings: Settings, meter: &Meter) -> std::io::Result<Arc<Spool>> {
        std::fs::create_dir_all(&settings.dir)?;
        let (segments, recovery_stats) = recover(&settings.dir)?;
        let cursor = read_cursor(&settings.dir);
        // Positions go on from the cursor when every segment was forwarded and deleted, so a
        // position is not handed out twice across restarts.
        let next_position =
            segments
                .last()
                .map(|s| s.end)
                .unwrap_or(0)
                .max(if segments.is_empty() {
                    cursor.unwrap_or(0)
                } else {
                    0
                });
        let first = segments.first().map(|s| s.first).unwrap_or(next_position);
        let forwarded = cursor.unwrap_or(first).clamp(first, next_position);
        let bytes = segments.iter().map(|s| s.committed).sum::<u64>();
        let head_ms = if forwarded < next_position {
            // Not known without reading: counted from now, so max_age runs from the restart.
            now_ms()
        } else {
            0
        };
        let recovery = Recovery {
            pending: next_position - forwarded,
            ..recovery_stats
        };
        let shared = Arc::new(Shared {
            dir: settings.dir.clone(),
            segments: Mutex::new(segments),
            next_position: AtomicU64::new(next_position),
            forwarded: AtomicU64::new(forwarded),
            bytes: AtomicU64::new(bytes),
            head_ms: AtomicU64::new(head_ms),
            writable: AtomicBool::new(true),
            appended: Notify::new(),
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
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            settings: settings.clone(),
            shared: shared.clone(),
            file: None,
        };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))?;
        let spool = Arc::new(Spool {
            settings,
            tx,
            shared,
            recovery,
        });
        spool.register_instruments(meter);
        Ok(spool)
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
            .with_callback(move |o| o.observe(pending(&s), &[]))
            .build();
        let s = self.shared.clone();
        meter
            .f64_observable_gauge("spool_oldest_record_age")
            .with_unit("s")
            .with_description("Age of the oldest spooled record not yet forwarded (0: none)")
            .with_callback(move |o| o.observe(oldest_age(&s).as_secs_f64(), &[]))
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

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Appends `records` and resolves once they are fsynced, with the first one's position
    /// (the rest follow in order), or why nothing of them was kept.
    pub async fn append(&self, records: &[Record]) -> Result<u64, Refused> {
        let mut frames = Vec::with_capacity(records.len() * 512);
        for r in records {
            segment::encode_frame(&r.encode(), &mut frames);
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            frames,
            count: records.len() as u64,
            reply,
        };
        let result = match self.tx.send(job).await {
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

    /// Whether an append would be taken now as far as the bounds go (room and age), and the
    /// disk took the last write.
    pub fn has_room(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed)
            && self.shared.bytes.load(Ordering::Relaxed) < self.settings.max_bytes
            && self
                .settings
                .max_age
                .is_none_or(|max| oldest_age(&self.shared) <= max)
    }

    pub fn writable(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Records not yet forwarded.
    pub fn pending(&self) -> u64 {
        pending(&self.shared)
    }

    /// Every record ever appended and still on disk (the local log's size in events).
    pub fn next_position(&self) -> u64 {
        self.shared.next_position.load(Ordering::Acquire)
    }

    pub fn oldest_age(&self) -> Duration {
        oldest_age(&self.shared)
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

    /// The segment holding `position`, or the first one after it.
    fn segment_at(&self, position: u64) -> Option<Segment> {
        let segs = self.shared.segments.lock().expect("segments lock");
        segs.iter()
            .find(|s| s.end > position || (s.active && s.first <= position))
            .cloned()
    }

    /// Positions below `position` are in Kafka: the cursor file records it, fully forwarded
    /// segments are deleted (moved to `damaged/` when damage was found in them), and the
    /// oldest-record age moves on to `next_head_ms` (0: not known).
    pub fn release(&self, position: u64, next_head_ms: u64) -> std::io::Result<()> {
        write_cursor(&self.shared.dir, position)?;
        self.shared.forwarded.store(position, Ordering::Release);
        // Unknown (0): from now, until the forwarder reads the next record's own time.
        let head = match (position >= self.next_position(), next_head_ms) {
            (true, _) => 0,
            (false, 0) => now_ms(),
            (false, at) => at,
        };
        self.shared.head_ms.store(head, Ordering::Relaxed);
        let done: Vec<Segment> = {
            let mut segs = self.shared.segments.lock().expect("segments lock");
            let (done, keep): (Vec<_>, Vec<_>) =
                segs.drain(..).partition(|s| !s.active && s.end <= position);
            *segs = keep;
            done
        };
        for s in done {
            if s.damaged {
                let dir = self.shared.dir.join(DAMAGED_DIR);
                std::fs::create_dir_all(&dir)?;
                let to = dir.join(s.path.file_name().expect("a segment has a file name"));
                std::fs::rename(&s.path, &to)?;
                tracing::warn!(from = %s.path.display(), to = %to.display(), "kept a damaged, fully forwarded segment for inspection");
            } else {
                std::fs::remove_file(&s.path)?;
            }
            self.shared.bytes.fetch_sub(s.committed, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn pending(s: &Shared) -> u64 {
    s.next_position
        .load(Ordering::Acquire)
        .saturating_sub(s.forwarded.load(Ordering::Acquire))
}

fn oldest_age(s: &Shared) -> Duration {
    match s.head_ms.load(Ordering::Relaxed) {
        0 => Duration::ZERO,
        at => Duration::from_millis(now_ms().saturating_sub(at)),
    }
}

/// Every segment in `dir`, read through, oldest first.
fn recover(dir: &Path) -> std::io::Result<(Vec<Segment>, Recovery)> {
    let mut paths: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter_map(|p| segment::parse_file_name(&p).map(|first| (first, p)))
        .collect();
    paths.sort();
    let mut stats = Recovery::default();
    let mut segments = Vec::with_capacity(paths.len());
    for (named_first, path) in paths {
        stats.segments += 1;
        let len = std::fs::metadata(&path)?.len();
        let mut reader = match Reader::open(&path)? {
            Ok(r) => r,
            Err(why) => {
                // The whole segment is unreadable. Its positions are unknown; the next
                // segment's header says where numbering goes on.
                tracing::error!(path = %path.display(), why, "spool segment unreadable: kept aside, its records cannot be forwarded");
                stats.unreadable_segments += 1;
                let aside = dir.join(DAMAGED_DIR);
                std::fs::create_dir_all(&aside)?;
                std::fs::rename(&path, aside.join(path.file_name().expect("file name")))?;
                continue;
            }
        };
        if reader.first != named_first {
            tracing::warn!(path = %path.display(), header = reader.first, "segment name and header disagree; the header wins");
        }
        let mut damaged = false;
        while let Some(frame) = reader.next_frame()? {
            if let Frame::Corrupt { position, at, .. } = frame {
                tracing::error!(path = %path.display(), position, offset = at, "corrupt spool record (checksum mismatch): skipped");
                stats.corrupt_records += 1;
                damaged = true;
            }
        }
        let end = reader.end().cloned().expect("read to the end");
        match &end {
            End::Clean { .. } => {}
            End::Torn { at, len } => {
                tracing::warn!(path = %path.display(), offset = at, bytes = len, "cut an interrupted write off the end of a spool segment (never acknowledged)");
                stats.torn_tails += 1;
                damaged = true;
            }
            End::Unreadable { at, len } => {
                tracing::error!(path = %path.display(), offset = at, bytes = len, "spool segment unreadable from here on: its remaining records cannot be forwarded");
                stats.unreadable_segments += 1;
                damaged = true;
            }
        }
        let valid = end.valid_len();
        let cut = match end {
            // Only an unacknowledged write is cut; damage is kept for inspection.
            End::Torn { .. } => true,
            // The zeroes of a preallocated segment that was not sealed (a crash).
            End::Clean { .. } => len > valid,
            End::Unreadable { .. } => false,
        };
        if cut {
            OpenOptions::new().write(true).open(&path)?.set_len(valid)?;
        }
        segments.push(Segment {
            first: reader.first,
            path,
            committed: if cut { valid } else { len },
            end: reader.position(),
            damaged,
            active: false,
        });
    }
    // A later segment never starts before an earlier one ends (damage cannot make
    // positions go backwards).
    for i in 1..segments.len() {
        if segments[i].first < segments[i - 1].end {
            tracing::error!(path = %segments[i].path.display(), "spool segment overlaps the one before it");
        }
    }
    Ok((segments, stats))
}

fn read_cursor(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(CURSOR_FILE)).ok()?;
    let (pos, crc) = text.trim().split_once(' ')?;
    (crc32c::crc32c(pos.as_bytes()).to_string() == crc)
        .then(|| pos.parse().ok())
        .flatten()
        .or_else(|| {
            tracing::error!("the spool's cursor file is damaged: forwarding starts from the oldest record (duplicates possible)");
            None
        })
}

/// Replaces the cursor atomically (write, rename). Not fsynced: it survives a killed process
/// (the page cache), and a cursor lost to a power cut only means records forwarded again.
fn write_cursor(dir: &Path, position: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{CURSOR_FILE}.tmp"));
    let pos = position.to_string();
    std::fs::write(&tmp, format!("{pos} {}\n", crc32c::crc32c(pos.as_bytes())))?;
    std::fs::rename(&tmp, dir.join(CURSOR_FILE))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Open {
    file: File,
    first: u64,
    committed: u64,
}

struct Writer {
    settings: Settings,
    shared: Arc<Shared>,
    file: Option<Open>,
}

impl Writer {
    /// A plain thread rather than a tokio task: every iteration blocks in write and fsync, and
    /// a dedicated thread keeps that off the runtime's worker threads.
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            jobs.push(first);
            while let Ok(more) = rx.try_recv() {
                jobs.push(more);
            }
            self.commit(&mut jobs);
        }
        if let Some(open) = &self.file {
            let _ = open.file.sync_data();
        }
        self.seal_active();
    }

    /// Refuses what the bounds do not allow, writes the rest and syncs once; answers every job.
    fn commit(&mut self, jobs: &mut Vec<Job>) {
        let mut taken = Vec::with_capacity(jobs.len());
        let mut room = self
            .settings
            .max_bytes
            .saturating_sub(self.shared.bytes.load(Ordering::Relaxed));
        let too_old = self.settings.max_age.filter(|max| {
            self.shared.forwarded.load(Ordering::Acquire)
                < self.shared.next_position.load(Ordering::Acquire)
                && oldest_age(&self.shared) > *max
        });
        for job in jobs.drain(..) {
            let size = job.frames.len() as u64;
            if let Some(max_age) = too_old {
                let _ = job.reply.send(Err(Refused::TooOld { max_age }));
            } else if size > room {
                let _ = job.reply.send(Err(Refused::Full {
                    max_bytes: self.settings.max_bytes,
                }));
            } else {
                room -= size;
                taken.push(job);
            }
        }
        if taken.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let written = self.write(&taken);
        self.shared
            .commit
            .record(started.elapsed().as_secs_f64(), &[]);
        match written {
            Ok(first) => {
                self.shared.writable.store(true, Ordering::Relaxed);
                let mut position = first;
                for job in taken {
                    let _ = job.reply.send(Ok(position));
                    position += job.count;
                }
                self.shared.appended.notify_waiters();
            }
            Err(e) => {
                self.shared.writable.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "spool write failed; the group was refused and cut back off");
                let why = e.to_string();
                for job in taken {
                    let _ = job.reply.send(Err(Refused::Io(why.clone())));
                }
            }
        }
    }

    /// Writes every job to the open segment (opening or rotating first) and syncs; the first
    /// job's position. On failure nothing of the group stays: the file is cut back to its
    /// committed length, or, if even that fails, abandoned (the next write starts a new
    /// segment, so the torn bytes stay at the end of a segment, where reading stops).
    fn write(&mut self, jobs: &[Job]) -> std::io::Result<u64> {
        let rotate = self
            .file
            .as_ref()
            .is_some_and(|f| f.committed >= self.settings.segment_bytes);
        if rotate {
            self.seal_active();
        }
        if self.file.is_none() {
            self.file = Some(self.create()?);
        }
        let open = self.file.as_mut().expect("opened above");
        let attempt = (|| {
            let mut at = open.committed;
            for job in jobs {
                open.file.write_all_at(&job.frames, at)?;
                at += job.frames.len() as u64;
            }
            open.file.sync_data()
        })();
        if let Err(e) = attempt {
            if open.file.set_len(open.committed).is_err() || open.file.sync_data().is_err() {
                tracing::error!(
                    "could not cut a failed write off the spool segment: starting a new one"
                );
                self.seal_active();
            }
            return Err(e);
        }
        let written: u64 = jobs.iter().map(|j| j.frames.len() as u64).sum();
        let count: u64 = jobs.iter().map(|j| j.count).sum();
        open.committed += written;
        let first = self.shared.next_position.load(Ordering::Acquire);
        {
            let mut segs = self.shared.segments.lock().expect("segments lock");
            if let Some(s) = segs.last_mut().filter(|s| s.active) {
                s.committed = open.committed;
                s.end = first + count;
            }
        }
        if self.shared.forwarded.load(Ordering::Acquire) >= first {
            self.shared.head_ms.store(now_ms(), Ordering::Relaxed);
        }
        self.shared.bytes.fetch_add(written, Ordering::Relaxed);
        self.shared
            .next_position
            .store(first + count, Ordering::Release);
        Ok(first)
    }

    /// A new segment starting at the next position, its header synced and the directory entry
    /// too (so the file survives a crash). A half-created file is removed.
    ///
    /// The segment is preallocated (`fallocate`) to `segment_bytes`: appending to a file
    /// changes its size, and ext4 then writes the inode in the same `fdatasync`, a second I/O
    /// round trip per commit (seen in a profile of the spooled path at 5,000/s: the inode
    /// writes fell to an eighth). Best effort: a full disk or a file system without it leaves
    /// the segment growing by appends. Writes are positional, so they land after the records,
    /// not after the preallocated zeroes, which the reader takes as the end.
    fn create(&mut self) -> std::io::Result<Open> {
        let first = self.shared.next_position.load(Ordering::Acquire);
        let path = self.settings.dir.join(segment::file_name(first));
        let made = (|| {
            let file = OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)?;
            file.write_all_at(&segment::encode_header(first), 0)?;
            if let Err(e) = rustix::fs::fallocate(
                &file,
                rustix::fs::FallocateFlags::empty(),
                0,
                self.settings.segment_bytes,
            ) {
                tracing::debug!(error = %e, "spool segment not preallocated; it grows by appends");
            }
            file.sync_all()?;
            sync_dir(&self.settings.dir)?;
            Ok::<_, std::io::Error>(file)
        })();
        match made {
            Ok(file) => {
                self.shared
                    .bytes
                    .fetch_add(segment::HEADER_LEN, Ordering::Relaxed);
                self.shared
                    .segments
                    .lock()
                    .expect("segments lock")
                    .push(Segment {
                        first,
                        path,
                        committed: segment::HEADER_LEN,
                        end: first,
                        damaged: false,
                        active: true,
                    });
                Ok(Open {
                    file,
                    first,
                    committed: segment::HEADER_LEN,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// The open segment takes no more writes; the preallocated zeroes past its committed
    /// bytes are cut off (a failure leaves them, which reading takes as the end).
    fn seal_active(&mut self) {
        let closed = self.file.take();
        if let Some(open) = &closed
            && open.file.set_len(open.committed).is_err()
        {
            tracing::warn!("could not cut the preallocated rest off a sealed spool segment");
        }
        let mut segs = self.shared.segments.lock().expect("segments lock");
        if let Some(s) = segs.last_mut().filter(|s| s.active) {
            debug_assert!(closed.as_ref().is_none_or(|o| o.first == s.first));
            s.active = false;
        }
    }
}

/// Every record of the spool (or local log) in `dir`, as (position, the event's CloudEvents
/// JSON), oldest first; damaged parts are skipped. For `event-gateway log` and tests.
pub fn read_events(dir: &Path) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut paths: Vec<(u64, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter_map(|p| segment::parse_file_name(&p).map(|f| (f, p)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    paths.sort();
    let mut out = Vec::new();
    for (_, path) in paths {
        let Ok(mut reader) = Reader::open(&path)? else {
            continue;
        };
        while let Some(frame) = reader.next_frame()? {
            if let Frame::Record {
                position, payload, ..
            } = frame
                && let Ok(json) = Record::event_json(&payload)
            {
                out.push((position, json.to_vec()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Data;
    use std::io::Write;

    fn meter() -> Meter {
        opentelemetry::global::meter("test")
    }

    pub(crate) fn record(id: &str) -> Record {
        Record {
            spooled_at_ms: now_ms(),
            topic: Some("orders".into()),
            trace: vec![("traceparent".into(), "00-abc-def-01".into())],
            event: Event {
                id: id.into(),
                source: "s".into(),
                ty: "t".into(),
                subject: None,
                time: chrono::Utc::now(),
                datacontenttype: None,
                dataschema: None,
                data: Data::None,
                extensions: Default::default(),
                topic: Some(Arc::from("orders")),
            },
        }
    }

    fn settings(dir: &Path) -> Settings {
        Settings {
            dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
            max_bytes: 1 << 30,
            max_age: None,
        }
    }

    #[test]
    fn a_record_round_trips() {
        let r = record("a");
        let back = Record::decode(&r.encode()).unwrap();
        assert_eq!(back.topic.as_deref(), Some("orders"));
        assert_eq!(back.event.topic.as_deref(), Some("orders"));
        assert_eq!(back.trace, r.trace);
        assert_eq!(
            back.event.to_structured_json(),
            r.event.to_structured_json()
        );
        assert!(Record::decode(b"\x02garbage-garbage").is_err());
    }

    #[tokio::test]
    async fn positions_are_consecutive_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
            assert_eq!(spool.append(&[record("a"), record("b")]).await, Ok(0));
            assert_eq!(spool.append(&[record("c")]).await, Ok(2));
        }
        let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
        assert_eq!(spool.recovery().pending, 3);
        assert_eq!(spool.append(&[record("d")]).await, Ok(3));
        let ids: Vec<String> = read_events(dir.path())
            .unwrap()
            .into_iter()
            .map(|(_, j)| Event::from_structured_json(&j).unwrap().id)
            .collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
    }

    #[tokio::test]
    async fn segments_rotate_by_size_and_go_once_forwarded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.segment_bytes = 600;
        let spool = Spool::open(s, &meter()).unwrap();
        for i in 0..20 {
            spool.append(&[record(&format!("e{i}"))]).await.unwrap();
        }
        let count = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
                .count()
        };
        let before = count();
        assert!(before > 3, "{before} segments");
        spool.release(20, 0).unwrap();
        assert_eq!(count(), 1, "only the open segment is left");
        assert_eq!(spool.pending(), 0);
        assert_eq!(read_cursor(dir.path()), Some(20));
        assert_eq!(
            spool.bytes(),
            std::fs::metadata(dir.path().join(segment::file_name(
                spool.shared.segments.lock().unwrap()[0].first
            )))
            .unwrap()
            .len()
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.max_bytes = 2000;
        let spool = Spool::open(s, &meter()).unwrap();
        let mut taken = 0;
        let refused = loop {
            match spool.append(&[record("x")]).await {
                Ok(_) => taken += 1,
                Err(r) => break r,
            }
        };
        assert_eq!(refused, Refused::Full { max_bytes: 2000 });
        assert!(!spool.has_room() || spool.bytes() > 1500);
        assert_eq!(read_events(dir.path()).unwrap().len(), taken);
        let e = refused.into_error();
        assert_eq!(e.reason(), "unavailable");
        assert!(e.to_string().contains("spool.max_bytes"), "{e}");
    }

    #[tokio::test]
    async fn positions_are_not_handed_out_twice_after_everything_was_forwarded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
            assert_eq!(
                spool.append(&[record("a"), record("b"), record("c")]).await,
                Ok(0)
            );
        }
        {
            // Reopened, the old segment is sealed: forwarding it through deletes it.
            let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
            spool.release(3, 0).unwrap();
            assert!(read_events(dir.path()).unwrap().is_empty());
        }
        let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
        assert_eq!(spool.pending(), 0);
        assert_eq!(spool.append(&[record("d")]).await, Ok(3));
    }

    #[tokio::test]
    async fn max_age_counts_from_the_oldest_record_not_yet_forwarded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        let max_age = Duration::from_millis(200);
        s.max_age = Some(max_age);
        let spool = Spool::open(s, &meter()).unwrap();
        spool.append(&[record("a"), record("b")]).await.unwrap();
        // Half forwarded, the next record's time unknown: it is not taken for ancient.
        spool.release(1, 0).unwrap();
        assert!(spool.oldest_age() < max_age, "{:?}", spool.oldest_age());
        assert!(spool.append(&[record("c")]).await.is_ok());
        while spool.oldest_age() <= max_age {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            spool.append(&[record("d")]).await,
            Err(Refused::TooOld { max_age })
        );
        assert!(!spool.has_room());
        // Everything forwarded: nothing is old any more.
        spool.release(spool.next_position(), 0).unwrap();
        assert_eq!(spool.oldest_age(), Duration::ZERO);
        assert!(spool.append(&[record("e")]).await.is_ok());
    }

    /// The length of a segment once the writer has sealed it (its preallocation cut off).
    async fn sealed_len(path: &Path) -> u64 {
        let full = settings(Path::new(".")).segment_bytes;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let len = std::fs::metadata(path).unwrap().len();
            if len < full || std::time::Instant::now() > deadline {
                return len;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_segment_is_preallocated_while_open_and_cut_to_its_records_when_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(segment::file_name(0));
        let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
        spool.append(&[record("a")]).await.unwrap();
        // Open: as long as a whole segment, zeroes after the record; where the file system
        // cannot preallocate, as long as its records (the writer falls back to appending).
        let probe = tempfile::tempfile_in(dir.path()).unwrap();
        let preallocates =
            rustix::fs::fallocate(&probe, rustix::fs::FallocateFlags::empty(), 0, 4096).is_ok();
        let open_len = std::fs::metadata(&seg).unwrap().len();
        if preallocates {
            assert_eq!(open_len, settings(dir.path()).segment_bytes);
        } else {
            assert_eq!(open_len, spool.bytes());
        }
        assert_eq!(read_events(dir.path()).unwrap().len(), 1);
        let committed = spool.bytes();
        drop(spool);
        assert_eq!(sealed_len(&seg).await, committed);
        // A crash leaves the zeroes: reopening reads them as the end and cuts them off.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(settings(dir.path()).segment_bytes)
            .unwrap();
        let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
        assert_eq!(spool.recovery().torn_tails, 0);
        assert_eq!(spool.recovery().corrupt_records, 0);
        assert_eq!(spool.bytes(), committed);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), committed);
        assert_eq!(spool.append(&[record("b")]).await, Ok(1));
    }

    #[tokio::test]
    async fn reopening_cuts_a_torn_tail_and_writes_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
            spool.append(&[record("a"), record("b")]).await.unwrap();
        }
        let seg = dir.path().join(segment::file_name(0));
        // The writer seals the segment once the spool is dropped, cutting off the zeroes it
        // was preallocated with.
        let good = sealed_len(&seg).await;
        assert!(good < settings(dir.path()).segment_bytes);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
        assert_eq!(spool.recovery().torn_tails, 1);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), good);
        assert_eq!(spool.append(&[record("c")]).await, Ok(2));
        assert!(dir.path().join(segment::file_name(2)).exists());
        assert_eq!(read_events(dir.path()).unwrap().len(), 3);
    }
}
