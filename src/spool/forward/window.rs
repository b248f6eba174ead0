//! The forwarder's decisions, without I/O or clocks of its own: which records of a window to
//! send, what each result means, when a record is given up on (to the dead-letter topic, else
//! parked), and when the window is done. The async shell (`forward/mod.rs`) and the simulator
//! both make their decisions here (the simulator re-enacts the shell's loop of reads, sends,
//! dead letters, parks and releases step by step), so the rules it checks are the ones that run.
//!
//! Order per key: a window's records are sent in position order (the destination keeps the
//! order of one call per key, as Kafka's idempotent producer does per partition). A record
//! that failed while a later record of its key was stored can no longer reach its topic in
//! order, so it is given up on at once instead of being sent behind it: nothing of a key is
//! ever sent past an unacknowledged earlier record of that key.
use std::collections::HashMap;

use super::super::segment::{Frame, Reader};
use super::super::{Record, Spool};
use crate::core::delivery::Stored;
use crate::core::error::Error;

/// Records read and sent together: at most this many, and no more payload bytes than
/// `WINDOW_BYTES` past the first record (events may be up to `limits.max_event_size` each, so
/// the count alone would let one window hold hundreds of MiB).
pub const WINDOW: usize = 512;
pub const WINDOW_BYTES: usize = 8 << 20;

/// Where one record of a window stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// To be sent to its topic.
    Send,
    /// Given up on, with why: to be sent to the dead-letter topic (or parked, without one).
    DeadLetter(String),
    /// To be kept in `parked/`, with why.
    Park(String),
    Stored,
    DeadLettered,
    Parked,
}

impl State {
    fn done(&self) -> bool {
        matches!(self, State::Stored | State::DeadLettered | State::Parked)
    }
}

pub struct Entry {
    pub position: u64,
    /// The record's bytes as spooled (what parking keeps).
    pub payload: Vec<u8>,
    /// None: the payload could not be decoded.
    pub record: Option<Record>,
    key: Option<String>,
    pub state: State,
    /// When this record first failed in its current state (ms), for `give_up_after`.
    failing_since: Option<u64>,
}

/// A window of records and the position after it.
pub struct Window {
    pub entries: Vec<Entry>,
    pub next: u64,
    /// It stopped at a bound (count or bytes), not at the end of what was written.
    pub full: bool,
}

/// How long a record may keep failing before it is given up on (ms): refused for good, and
/// failing for a reason that passes.
#[derive(Debug, Clone, Copy)]
pub struct GiveUp {
    pub refused_ms: u64,
    pub transient_ms: u64,
}

/// What one round of sends did, for metrics.
#[derive(Debug, Default)]
pub struct Sent {
    pub stored: u64,
    pub failures: Vec<&'static str>,
}

impl Window {
    /// Decodes the records read; `key_of` names the ones whose order must be kept together.
    pub fn new(
        raw: Vec<(u64, Vec<u8>)>,
        next: u64,
        full: bool,
        key_of: impl Fn(&Record) -> Option<String>,
    ) -> Self {
        let entries = raw
            .into_iter()
            .map(|(position, payload)| match Record::decode(&payload) {
                Ok(record) => Entry {
                    position,
                    key: key_of(&record),
                    record: Some(record),
                    payload,
                    state: State::Send,
                    failing_since: None,
                },
                Err(why) => Entry {
                    position,
                    key: None,
                    record: None,
                    payload,
                    state: State::Park(format!("the record cannot be decoded: {why}")),
                    failing_since: None,
                },
            })
            .collect();
        Self {
            entries,
            next,
            full,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn done(&self) -> bool {
        self.entries.iter().all(|e| e.state.done())
    }

    /// When the window's first readable record was spooled.
    pub fn first_spooled_at(&self) -> Option<u64> {
        self.entries
            .iter()
            .find_map(|e| e.record.as_ref().map(|r| r.spooled_at_ms))
    }

    fn with_state(&self, pick: impl Fn(&State) -> bool) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| pick(&self.entries[i].state))
            .collect()
    }

    pub fn to_send(&self) -> Vec<usize> {
        self.with_state(|s| *s == State::Send)
    }

    pub fn to_dead_letter(&self) -> Vec<usize> {
        self.with_state(|s| matches!(s, State::DeadLetter(_)))
    }

    pub fn to_park(&self) -> Vec<usize> {
        self.with_state(|s| matches!(s, State::Park(_)))
    }

    pub fn records(&self, idx: &[usize]) -> Vec<Record> {
        idx.iter()
            .map(|&i| {
                self.entries[i]
                    .record
                    .clone()
                    .expect("only decoded records are sent")
            })
            .collect()
    }

    /// Failures while Kafka was unreachable say nothing about the records: their clocks start
    /// again.
    pub fn restart_clocks(&mut self) {
        for e in &mut self.entries {
            e.failing_since = None;
        }
    }

    fn give_up(&mut self, i: usize, why: String) {
        let e = &mut self.entries[i];
        e.state = State::DeadLetter(why);
        e.failing_since = None;
    }

    /// Takes the results of sending `idx` (in that order). A failure is retried until it has
    /// failed for as long as `limits` allows its kind of error, whatever the error; a record
    /// overtaken by a later record of its key gets no more time.
    pub fn sent(
        &mut self,
        idx: &[usize],
        results: Vec<Result<Stored, Error>>,
        now_ms: u64,
        limits: GiveUp,
    ) -> Sent {
        let mut sent = Sent::default();
        let mut failed = false;
        for (&i, result) in idx.iter().zip(results) {
            let e = &mut self.entries[i];
            match result {
                Ok(_) => {
                    e.state = State::Stored;
                    e.failing_since = None;
                    sent.stored += 1;
                }
                Err(err) => {
                    failed = true;
                    sent.failures.push(err.reason());
                    let since = *e.failing_since.get_or_insert(now_ms);
                    let limit = if err.is_retryable() {
                        limits.transient_ms
                    } else {
                        limits.refused_ms
                    };
                    if now_ms.saturating_sub(since) >= limit {
                        let kind = if err.is_retryable() {
                            "kept failing"
                        } else {
                            "was refused for good"
                        };
                        let why = format!(
                            "{kind} for {} s: {err}",
                            now_ms.saturating_sub(since) / 1000
                        );
                        self.give_up(i, why);
                    }
                }
            }
        }
        if failed {
            self.give_up_overtaken();
        }
        sent
    }

    /// Records still to send whose key has a later record already stored.
    fn give_up_overtaken(&mut self) {
        let mut last_stored: HashMap<&str, u64> = HashMap::new();
        for e in &self.entries {
            if let (Some(k), State::Stored) = (&e.key, &e.state) {
                last_stored.insert(k, e.position);
            }
        }
        let overtaken: Vec<usize> = (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                e.state == State::Send
                    && e.key
                        .as_deref()
                        .and_then(|k| last_stored.get(k))
                        .is_some_and(|&p| p > e.position)
            })
            .collect();
        for i in overtaken {
            self.give_up(
                i,
                "a later record of its key reached Kafka first; sending it now would break the key's order".into(),
            );
        }
    }

    /// The dead-letter topic's answer for entry `i`: None when there is none (parked then).
    /// One that keeps failing past `give_up_after_ms` is parked too.
    pub fn dead_lettered(
        &mut self,
        i: usize,
        result: Option<Result<Stored, Error>>,
        now_ms: u64,
        give_up_after_ms: u64,
    ) {
        let e = &mut self.entries[i];
        let State::DeadLetter(why) = &e.state else {
            return;
        };
        e.state = match result {
            Some(Ok(_)) => State::DeadLettered,
            None => State::Park(why.clone()),
            Some(Err(err)) => {
                let since = *e.failing_since.get_or_insert(now_ms);
                if err.is_retryable() && now_ms.saturating_sub(since) < give_up_after_ms {
                    return;
                }
                State::Park(format!("{why}; the dead-letter topic refused it: {err}"))
            }
        };
    }

    /// Whether parking entry `i` worked; a failure keeps it to park (the window stays
    /// unfinished: nothing is released past a record that is nowhere).
    pub fn parked(&mut self, i: usize, ok: bool) {
        if ok && matches!(self.entries[i].state, State::Park(_)) {
            self.entries[i].state = State::Parked;
        }
    }
}

/// What one read found: (position, payload) of each record, the position after them, and
/// whether it stopped at a bound.
pub type Read = (Vec<(u64, Vec<u8>)>, u64, bool);

/// The forwarder's place in the segment files, kept between windows so reading is
/// sequential.
#[derive(Default)]
pub struct ReadCursor {
    reader: Option<Reader>,
}

impl ReadCursor {
    /// Up to `max` records from `position` on, never past what the writer committed, as
    /// (position, payload); and the position after them.
    pub fn read(&mut self, spool: &Spool, position: u64, max: usize) -> std::io::Result<Read> {
        let read = self.read_from(spool, position, max);
        if read.is_err() {
            // The reader may have moved past records this failed read never returned: the
            // next read opens the segment again (found by the simulator, SEED=15).
            self.reader = None;
        }
        read
    }

    fn read_from(&mut self, spool: &Spool, position: u64, max: usize) -> std::io::Result<Read> {
        // Read before the segments are looked at: every commit it counts has its segment on
        // the list by then, so positions below it that no segment holds are skipped ones.
        let written = spool.next_position();
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut next = position;
        while records.len() < max && bytes < WINDOW_BYTES {
            let Some(seg) = spool.segment_at(next) else {
                if records.is_empty() {
                    next = next.max(written);
                }
                break;
            };
            if self.reader.as_ref().is_none_or(|r| r.path != seg.path) {
                self.reader = Some(Reader::open(spool.fs().as_ref(), &seg.path)?);
            }
            let reader = self.reader.as_mut().expect("opened above");
            reader.set_limit(seg.committed);
            // A gap (positions a failed write skipped, or a segment set aside): numbering goes
            // on here.
            next = next.max(seg.first);
            let mut at_end = false;
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
                        records.push((position, payload));
                    }
                    Some(Frame::Damaged { at, lost, .. }) => {
                        if lost.end > next {
                            tracing::error!(path = %seg.path.display(), offset = at, first_lost = lost.start, lost = lost.end - lost.start, "damaged spool records skipped");
                        }
                    }
                    None => {
                        at_end = true;
                        break;
                    }
                }
            }
            if at_end {
                // Every position below the segment's end was committed to it: any the reader
                // did not find there were lost to damage (in the open segment too, where
                // waiting for them would wait for ever; found by the simulator, SEED=645).
                next = next.max(seg.end);
            }
            if records.len() >= max || bytes >= WINDOW_BYTES || seg.active {
                break; // a full window, or caught up with the writer
            }
            // A sealed segment read to its end (or to damage): on with the next one.
            next = next.max(seg.end);
            self.reader = None;
        }
        let full = records.len() >= max || bytes >= WINDOW_BYTES;
        Ok((records, next, full))
    }
}
