//! The spool's writer: one thread owns the open segment and does group commit. It takes every
//! append waiting at that moment, gives each record its position, writes them, and pays one
//! `fdatasync` for the lot; only then are they acknowledged. It rotates to a new segment past
//! `segment_bytes`, refuses appends past `max_bytes` (or while the oldest unforwarded record
//! is older than `max_age`) instead of dropping old records, and cuts a failed group back off
//! the file (a full disk is a refused append, not a torn segment). If even the cut fails, the
//! segment is abandoned and the group's positions are skipped, so bytes it may have left can
//! never be mistaken for records written later at the same positions.
//!
//! After a failed write the spool is not writable (readiness falls); while idle the writer
//! probes the disk every second and is writable again once there is room, so space that
//! returns is used without a restart.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::fs::FsFile;
use super::record::Entry;
use super::segment;
use super::{Refused, Segment, Settings, Shared};

/// How often an idle writer that failed checks whether the disk has room again.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The room a probe wants before the spool counts as writable again.
const PROBE_ROOM: u64 = 1 << 20;

/// The framed records of one append, positions not yet given.
pub(crate) struct Batch {
    frames: Vec<u8>,
    count: u64,
}

impl Batch {
    /// Encodes and checksums `records` on the caller's thread, so the writer thread only adds
    /// positions.
    pub fn of<'a>(entries: impl ExactSizeIterator<Item = Entry<'a>>) -> Batch {
        let mut frames = Vec::with_capacity(entries.len() * 512);
        // Counted as framed, not taken from `len()`: positions handed out must match the
        // frames written whatever an iterator reports.
        let mut count = 0;
        for e in entries {
            // Encoded straight into the frame: no payload buffer per record to copy (#26).
            let at = segment::begin_frame(&mut frames);
            e.encode_into(&mut frames);
            segment::end_frame(&mut frames, at);
            count += 1;
        }
        Batch { frames, count }
    }
}

pub(crate) struct Job {
    pub batch: Batch,
    pub reply: oneshot::Sender<Result<u64, Refused>>,
}

struct Open {
    file: Box<dyn FsFile>,
    first: u64,
    committed: u64,
}

pub(crate) struct Writer {
    settings: Settings,
    shared: Arc<Shared>,
    open: Option<Open>,
    rx: mpsc::UnboundedReceiver<Job>,
    /// Positions skipped after a write that could not be cut back, not yet durable in the
    /// cursor's floor: nothing is written until they are (a restart could hand them out
    /// again while the abandoned bytes may still come back; found by the simulator,
    /// SEED=293759).
    unrecorded_skip: Option<u64>,
}

impl Writer {
    pub fn new(settings: Settings, shared: Arc<Shared>, rx: mpsc::UnboundedReceiver<Job>) -> Self {
        Self {
            settings,
            shared,
            open: None,
            rx,
            unrecorded_skip: None,
        }
    }

    /// The writer thread's loop. A plain thread rather than a tokio task: every iteration
    /// blocks in write and fsync, and a dedicated thread keeps that off the runtime's workers.
    /// Its small runtime only lets the wait for appends time out, for the probe.
    pub fn run(mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds");
        let mut jobs = Vec::new();
        loop {
            let rx = &mut self.rx;
            // Only while not writable is there anything to probe: the writer alone turns
            // `writable` off (in `commit`), so while it is on, the writer waits for a job
            // without a deadline. Waiting through the runtime with a timer took about 3K
            // instructions per wake, a REST request's worth of them for nothing (#26).
            let next = if self.shared.writable.load(Ordering::Relaxed) {
                Ok(rx.blocking_recv())
            } else {
                rt.block_on(async { tokio::time::timeout(PROBE_EVERY, rx.recv()).await })
            };
            match next {
                Ok(Some(first)) => {
                    jobs.push(first);
                    while let Ok(more) = self.rx.try_recv() {
                        jobs.push(more);
                    }
                    let (mut batches, replies): (Vec<Batch>, Vec<_>) =
                        jobs.drain(..).map(|j| (j.batch, j.reply)).unzip();
                    let results = self.commit(&mut batches);
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Ok(None) => break,
                Err(_idle) => self.probe(),
            }
        }
        if let Some(open) = &self.open {
            let _ = open.file.sync_data();
        }
        self.seal_active();
    }

    /// Makes skipped positions durable in the cursor's floor, if any wait.
    fn record_skip(&mut self) -> std::io::Result<()> {
        if let Some(floor) = self.unrecorded_skip {
            self.shared
                .cursor
                .lock()
                .expect("cursor lock")
                .raise_floor(floor)?;
            self.unrecorded_skip = None;
        }
        Ok(())
    }

    /// While not writable: writable again once the disk has room.
    pub fn probe(&mut self) {
        if self.shared.writable.load(Ordering::Relaxed) || self.record_skip().is_err() {
            return;
        }
        match self.shared.fs.available(&self.settings.dir) {
            Ok(room) if room >= PROBE_ROOM => {
                tracing::info!(room, "the spool's disk has room again: appends are taken");
                self.shared.writable.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "probing the spool's disk"),
        }
    }

    /// Refuses what the bounds do not allow, writes the rest and syncs once; one answer per
    /// batch, the first record's position when it was taken.
    pub fn commit(&mut self, batches: &mut [Batch]) -> Vec<Result<u64, Refused>> {
        let shared = &self.shared;
        let mut results: Vec<Result<u64, Refused>> = vec![Err(Refused::Stopped); batches.len()];
        let mut room = self
            .settings
            .max_bytes
            .saturating_sub(shared.bytes.load(Ordering::Relaxed));
        let too_old = self.settings.max_age.filter(|max| {
            shared.forwarded.load(Ordering::Acquire) < shared.next_position.load(Ordering::Acquire)
                && shared.oldest_age() > *max
        });
        let mut taken = Vec::with_capacity(batches.len());
        for (i, b) in batches.iter().enumerate() {
            let size = b.frames.len() as u64;
            if let Some(max_age) = too_old {
                results[i] = Err(Refused::TooOld { max_age });
            } else if size > room {
                results[i] = Err(Refused::Full {
                    max_bytes: self.settings.max_bytes,
                });
            } else {
                room -= size;
                taken.push(i);
            }
        }
        if taken.is_empty() {
            return results;
        }
        let started = std::time::Instant::now();
        let written = self
            .record_skip()
            .and_then(|()| self.write(batches, &taken));
        self.shared
            .commit
            .record(started.elapsed().as_secs_f64(), &[]);
        match written {
            Ok(first) => {
                self.shared.writable.store(true, Ordering::Relaxed);
                let mut position = first;
                for i in taken {
                    results[i] = Ok(position);
                    position += batches[i].count;
                }
                self.shared.appended.notify_waiters();
            }
            Err(e) => {
                self.shared.writable.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "spool write failed; the group was refused and cut back off");
                let why = e.to_string();
                for i in taken {
                    results[i] = Err(Refused::Io(why.clone()));
                }
            }
        }
        results
    }

    /// Writes the taken batches to the open segment (opening or rotating first) and syncs;
    /// the first record's position. On failure nothing of the group is acknowledged: the file
    /// is cut back to its committed length, or, if even that fails, abandoned and the group's
    /// positions skipped (the next write starts a new segment after them).
    fn write(&mut self, batches: &mut [Batch], taken: &[usize]) -> std::io::Result<u64> {
        let rotate = self
            .open
            .as_ref()
            .is_some_and(|f| f.committed >= self.settings.segment_bytes);
        if rotate {
            self.seal_active();
        }
        if self.open.is_none() {
            self.open = Some(self.create()?);
        }
        let first = self.shared.next_position.load(Ordering::Acquire);
        let mut position = first;
        for &i in taken {
            let frames = &mut batches[i].frames;
            let mut at = 0;
            while at < frames.len() {
                at = segment::set_position(frames, at, position);
                position += 1;
            }
        }
        let count = position - first;
        let open = self.open.as_mut().expect("opened above");
        let attempt = (|| {
            let mut at = open.committed;
            for &i in taken {
                open.file.write_all_at(&batches[i].frames, at)?;
                at += batches[i].frames.len() as u64;
            }
            open.file.sync_data()
        })();
        if let Err(e) = attempt {
            if open.file.set_len(open.committed).is_err() || open.file.sync_data().is_err() {
                tracing::error!(
                    "could not cut a failed write off the spool segment: starting a new one after its positions"
                );
                self.seal_active();
                self.shared
                    .next_position
                    .store(first + count, Ordering::Release);
                self.unrecorded_skip = Some(first + count);
                let _ = self.record_skip();
            }
            return Err(e);
        }
        let written: u64 = taken.iter().map(|&i| batches[i].frames.len() as u64).sum();
        open.committed += written;
        {
            let mut segs = self.shared.segments.lock().expect("segments lock");
            if let Some(s) = segs.last_mut().filter(|s| s.active) {
                s.committed = open.committed;
                s.end = first + count;
            }
        }
        if self.shared.forwarded.load(Ordering::Acquire) >= first {
            self.shared
                .head_ms
                .store(self.shared.now(), Ordering::Relaxed);
        }
        self.shared.bytes.fetch_add(written, Ordering::Relaxed);
        self.shared
            .next_position
            .store(first + count, Ordering::Release);
        Ok(first)
    }

    /// A new segment starting at the next position, its header synced and the directory entry
    /// too (so the file survives a crash). Only a file this call created is removed when a
    /// later step fails; one that cannot be removed is kept on the list (counted, deleted once
    /// forwarded past) and its name skipped.
    ///
    /// The segment is preallocated (`fallocate`) to `segment_bytes`: appending to a file
    /// changes its size, and ext4 then writes the inode in the same `fdatasync`, a second I/O
    /// round trip per commit (seen in a profile of the spooled path at 5,000/s: the inode
    /// writes fell to an eighth). Best effort: a full disk or a file system without it leaves
    /// the segment growing by appends. Writes are positional, so they land after the records,
    /// not after the preallocated zeroes, which the reader takes as the end.
    fn create(&mut self) -> std::io::Result<Open> {
        let shared = &self.shared;
        let first = shared.next_position.load(Ordering::Acquire);
        let path = self.settings.dir.join(segment::file_name(first));
        let file = shared.fs.create_new(&path)?;
        let made = (|| {
            file.write_all_at(&segment::encode_header(first), 0)?;
            if let Err(e) = file.allocate(self.settings.segment_bytes) {
                tracing::debug!(error = %e, "spool segment not preallocated; it grows by appends");
            }
            file.sync_all()?;
            shared.fs.sync_dir(&self.settings.dir)
        })();
        if let Err(e) = made {
            // If the removal is not made durable, a crash may bring the file back: recovery
            // deletes a segment that holds nothing.
            let removed = shared.fs.remove_file(&path);
            let _ = shared.fs.sync_dir(&self.settings.dir);
            let mut segs = shared.segments.lock().expect("segments lock");
            if removed.is_err() {
                let committed = file.len().unwrap_or(0);
                segs.push(Segment {
                    first,
                    path,
                    committed,
                    end: first,
                    damaged: false,
                    active: false,
                });
                shared.bytes.fetch_add(committed, Ordering::Relaxed);
                shared.next_position.store(first + 1, Ordering::Release);
            }
            return Err(e);
        }
        shared
            .bytes
            .fetch_add(segment::HEADER_LEN, Ordering::Relaxed);
        shared
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

    /// The open segment takes no more writes; the preallocated zeroes past its committed
    /// bytes are cut off (a failure leaves them, which reading takes as the end).
    pub fn seal_active(&mut self) {
        let closed = self.open.take();
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
