//! A deterministic simulator for the spool, its recovery and the forwarder, in the manner of
//! FoundationDB's simulation and TigerBeetle's VOPR: one seed draws a schedule of appends from
//! several clients (each acknowledgement recorded), group commits, forwarding rounds against
//! a simulated Kafka (`dest.rs`), crashes that keep only what was synced plus torn parts of
//! the rest, clean restarts, disk faults (ENOSPC, EIO, short writes, a disk that fills and
//! empties), bit flips in stored bytes, and time. The disk is `fs.rs`'s. Everything derives
//! from the seed: the clock is the simulator's, nothing runs on another thread, so a failure
//! prints `SEED=…` and `SIM_SEED=… cargo test --lib spool::sim` replays it exactly.
//!
//! Invariants, checked after every step and at the end of each schedule (after the faults
//! stop and the broker heals):
//! - every acknowledged record ends in the topic, the dead-letter topic or `parked/` (those
//!   hit by an injected bit flip excepted: they are reported as damage);
//! - records of one key reach the topic in position order (first occurrences);
//! - a position acknowledged is never handed out again;
//! - no segment file is removed while a record in it is acknowledged and undelivered;
//! - the spool's byte count is its listed segments', which are exactly the segment files on
//!   disk (nothing leaks, nothing listed is missing);
//! - after space returns, appends succeed again without a restart;
//! - duplicates in the topic are bounded: one window per crash or restart, plus what the cursor
//!   had not yet made durable, plus acknowledgements the broker lost;
//! - the local log (no forwarding) keeps every acknowledged record readable.
//!
//! The PRNG is a SplitMix64 of a few lines rather than `proptest`: a schedule is a long
//! interleaving whose steps depend on the state so far, which shrinking cannot preserve, and
//! a failing seed already replays exactly.
mod dest;
mod fs;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use self::dest::{Mood, SimDest};
use self::fs::{FaultCounts, Faults, SimFs, SimFsHandle};
use super::forward::window::{ReadCursor, Window};
use super::forward::{PARKED_DIR, park};
use super::writer::{Batch, Writer};
use super::{Clock, Fs, Record, Settings, Spool, segment};
use crate::core::event::{Data, Event};

/// Records the simulated forwarder reads at a time (small, so windows turn over often).
const SIM_WINDOW: usize = 8;
const KEYS: &[&str] = &["k0", "k1", "k2"];

/// SplitMix64: small, fast, and every draw derives from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True one time in `n`.
    pub fn chance(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

#[derive(Default, Clone, Copy, Debug)]
struct Counts {
    steps: u64,
    acked: u64,
    refused: u64,
    crashes: u64,
    restarts: u64,
    failed_opens: u64,
    flips: u64,
    disk_full: u64,
    windows: u64,
    parked: u64,
    dead_lettered: u64,
    duplicates: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.steps += o.steps;
        self.acked += o.acked;
        self.refused += o.refused;
        self.crashes += o.crashes;
        self.restarts += o.restarts;
        self.failed_opens += o.failed_opens;
        self.flips += o.flips;
        self.disk_full += o.disk_full;
        self.windows += o.windows;
        self.parked += o.parked;
        self.dead_lettered += o.dead_lettered;
        self.duplicates += o.duplicates;
    }
}

struct Acked {
    id: String,
    position: u64,
}

/// A send whose results the forwarder has not heard yet: (indices, results, when).
type InFlight = (
    Vec<usize>,
    Vec<Result<crate::core::delivery::Stored, crate::core::error::Error>>,
    u64,
);

/// The simulated forwarder's state: what `Forwarder::run` keeps between its awaits.
#[derive(Default)]
struct Fwd {
    cursor: ReadCursor,
    position: u64,
    window: Option<Window>,
    inflight: Option<InFlight>,
    unreleased: bool,
}

struct Sim {
    rng: Rng,
    disk: Arc<SimFs>,
    fs: Arc<dyn Fs>,
    clock: Arc<AtomicU64>,
    settings: Settings,
    give_up_ms: u64,
    forwarding: bool,
    spool: Option<(Arc<Spool>, Writer)>,
    fwd: Fwd,
    dest: SimDest,
    acked: Vec<Acked>,
    acked_ids: HashMap<String, u64>,
    exempt: HashSet<String>,
    next_id: u64,
    last_position: Option<u64>,
    /// Duplicates the schedule may cause (see the module's invariants).
    duplicate_budget: u64,
    counts: Counts,
    trace: Vec<String>,
}

fn record(id: String, key: Option<&str>, at_ms: u64) -> Record {
    Record {
        spooled_at_ms: at_ms,
        topic: Some("t".into()),
        trace: Vec::new(),
        event: Event {
            id,
            source: "sim".into(),
            ty: "sim.event".into(),
            subject: key.map(str::to_owned),
            time: chrono::DateTime::from_timestamp_millis(at_ms as i64).expect("a valid time"),
            datacontenttype: None,
            dataschema: None,
            data: Data::None,
            extensions: Default::default(),
            topic: Some(Arc::from("t")),
            forwarded: None,
            auth: None,
        },
    }
}

/// The records in a segment's bytes (read on a scratch disk).
fn records_in(bytes: &[u8]) -> Vec<Record> {
    let disk = SimFs::new(0);
    let fs = SimFsHandle(disk);
    let dir = Path::new("/scratch");
    fs.create_dir_all(dir).expect("scratch dir");
    let path = dir.join(segment::file_name(0));
    let f = fs.create(&path).expect("scratch file");
    f.write_all_at(bytes, 0).expect("scratch write");
    let mut out = Vec::new();
    if let Ok(mut r) = segment::Reader::open(&fs, &path) {
        while let Ok(Some(frame)) = r.next_frame() {
            if let segment::Frame::Record { payload, .. } = frame
                && let Ok(rec) = Record::decode(&payload)
            {
                out.push(rec);
            }
        }
    }
    out
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let disk = SimFs::new(seed);
        let fs: Arc<dyn Fs> = Arc::new(SimFsHandle(disk.clone()));
        let forwarding = !rng.chance(5);
        let settings = Settings {
            dir: PathBuf::from("/spool"),
            segment_bytes: 300 + rng.below(3000),
            max_bytes: 4_000 + rng.below(60_000),
            max_age: forwarding.then(|| Duration::from_millis(5_000 + rng.below(60_000))),
            min_room: 0,
        };
        let give_up_ms = 500 + rng.below(20_000);
        let mut sim = Sim {
            rng,
            disk,
            fs,
            clock: Arc::new(AtomicU64::new(1_700_000_000_000)),
            settings,
            give_up_ms,
            forwarding,
            spool: None,
            fwd: Fwd::default(),
            dest: SimDest::default(),
            acked: Vec::new(),
            acked_ids: HashMap::new(),
            exempt: HashSet::new(),
            next_id: 0,
            last_position: None,
            duplicate_budget: 0,
            counts: Counts::default(),
            trace: Vec::new(),
        };
        sim.dest.mood.dead_letter = sim.rng.chance(2);
        sim.open();
        sim
    }

    fn now(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    fn note(&mut self, what: String) {
        if self.trace.len() >= 200 {
            self.trace.remove(0);
        }
        self.trace.push(format!("t={} {what}", self.now()));
    }

    fn open(&mut self) {
        let clock = self.clock.clone();
        let clock: Clock = Arc::new(move || clock.load(Ordering::Relaxed));
        let meter = opentelemetry::metrics::MeterProvider::meter(
            &opentelemetry::metrics::noop::NoopMeterProvider::new(),
            "sim",
        );
        match Spool::open_with(self.fs.clone(), clock, self.settings.clone(), &meter) {
            Ok((spool, writer)) => {
                self.fwd = Fwd {
                    position: spool.forwarded(),
                    ..Fwd::default()
                };
                let r = spool.recovery().clone();
                let segs: Vec<String> = spool
                    .segments()
                    .iter()
                    .map(|s| format!("{}..{}{}", s.first, s.end, if s.damaged { "!" } else { "" }))
                    .collect();
                if std::env::var("SIM_DEBUG").is_ok() {
                    for p in self.disk.files_in(&self.settings.dir) {
                        if let Some(b) = self.disk.contents(&p) {
                            let ids: Vec<String> =
                                records_in(&b).into_iter().map(|r| r.event.id).collect();
                            self.trace.push(format!(
                                "   {} len {} ids {ids:?}",
                                p.display(),
                                b.len()
                            ));
                        }
                    }
                }
                self.note(format!(
                    "opened: next {} forwarded {} torn {} corrupt {} floor {} segments {}",
                    spool.next_position(),
                    spool.forwarded(),
                    r.torn_tails,
                    r.corrupt_records,
                    spool.shared.cursor.lock().expect("cursor").floor(),
                    segs.join(" ")
                ));
                self.spool = Some((spool, writer));
            }
            Err(e) => {
                self.counts.failed_opens += 1;
                self.note(format!("open failed: {e}"));
            }
        }
    }

    /// The simulator's own reads: without injected faults or the crash countdown.
    fn quietly<T>(&self, f: impl FnOnce() -> T) -> T {
        self.disk.quietly(f)
    }

    fn step(&mut self) {
        self.counts.steps += 1;
        // Now and then the machine dies inside the step, between two file-system calls.
        let dies = self.rng.chance(12);
        if dies {
            self.disk.crash_in(self.rng.below(12));
        }
        self.step_inner();
        if self.disk.is_dead() {
            self.counts.crashes += 1;
            self.budget_resend();
            self.spool = None;
            self.fwd = Fwd::default();
            self.disk.crash();
            self.note("died mid-step".into());
            self.open();
        } else if dies {
            self.disk.set_crash_in_none();
        }
    }

    fn step_inner(&mut self) {
        let roll = self.rng.below(100);
        match roll {
            0..=29 => self.append(),
            30..=64 => self.forward_step(),
            65..=74 => {
                let dt = 1 + self.rng.below(3_000);
                self.clock.fetch_add(dt, Ordering::Relaxed);
            }
            75..=77 => self.crash(),
            78 => self.restart(),
            79..=84 => self.faults(),
            85..=87 => self.flip(),
            88..=93 => self.mood(),
            94..=96 => {
                if let Some((_, w)) = &mut self.spool {
                    w.probe();
                }
            }
            _ => {
                if self.spool.is_none() {
                    self.open();
                }
            }
        }
    }

    fn append(&mut self) {
        let Some((_, writer)) = &mut self.spool else {
            return;
        };
        let now = self.clock.load(Ordering::Relaxed);
        let mut groups: Vec<Vec<Record>> = Vec::new();
        for _ in 0..1 + self.rng.below(3) {
            let n = 1 + self.rng.below(3);
            let mut recs = Vec::new();
            for _ in 0..n {
                let key =
                    (!self.rng.chance(4)).then(|| KEYS[self.rng.below(KEYS.len() as u64) as usize]);
                recs.push(record(format!("r{}", self.next_id), key, now));
                self.next_id += 1;
            }
            groups.push(recs);
        }
        let mut batches: Vec<Batch> = groups
            .iter()
            .map(|g| Batch::of(g.iter().map(Record::entry)))
            .collect();
        let results = writer.commit(&mut batches);
        let mut line = String::from("append");
        for (g, r) in groups.iter().zip(results) {
            match r {
                Ok(first) => {
                    for (j, rec) in g.iter().enumerate() {
                        let position = first + j as u64;
                        assert!(
                            self.last_position.is_none_or(|l| position > l),
                            "position {position} handed out again (last acknowledged {:?})",
                            self.last_position
                        );
                        self.last_position = Some(position);
                        self.acked_ids.insert(rec.event.id.clone(), position);
                        self.acked.push(Acked {
                            id: rec.event.id.clone(),
                            position,
                        });
                        self.counts.acked += 1;
                    }
                    line.push_str(&format!(" ok@{first}x{}", g.len()));
                }
                Err(e) => {
                    self.counts.refused += g.len() as u64;
                    line.push_str(&format!(" refused({})", e.reason()));
                }
            }
        }
        self.note(line);
    }

    /// One move of the forwarder, as `Forwarder::run` makes them between its awaits. One
    /// piece, like the loop it mirrors: a step is the unit the seeded schedule interleaves.
    fn forward_step(&mut self) {
        if !self.forwarding {
            return;
        }
        let Some((spool, _)) = &self.spool else {
            return;
        };
        let spool = spool.clone();
        let now = self.now();
        if let Some((_, _, at)) = &self.fwd.inflight {
            if now < *at {
                return; // stalled: the broker has not answered yet
            }
            let (idx, results, _) = self.fwd.inflight.take().expect("in flight");
            let w = self.fwd.window.as_mut().expect("a window in flight");
            let limits = super::forward::window::GiveUp {
                refused_ms: self.give_up_ms,
                transient_ms: self.give_up_ms * 3,
            };
            w.sent(&idx, results, now, limits);
            return;
        }
        if self.fwd.window.is_none() {
            let read = self.fwd.cursor.read(&spool, self.fwd.position, SIM_WINDOW);
            let Ok((raw, next, full)) = read else {
                self.note("window read failed".into());
                return;
            };
            let w = Window::new(raw, next, full, |r| {
                r.event.subject.as_ref().map(|k| format!("t\u{0}{k}"))
            });
            if w.is_empty() {
                if w.next > self.fwd.position || self.fwd.unreleased {
                    self.fwd.position = self.fwd.position.max(w.next);
                    self.release(&spool);
                }
                return;
            }
            if let Some(at) = w.first_spooled_at() {
                spool.set_head(at);
            }
            self.counts.windows += 1;
            self.fwd.window = Some(w);
            return;
        }
        let w = self.fwd.window.as_mut().expect("a window");
        let send = w.to_send();
        if !send.is_empty() {
            if self.dest.mood.down {
                w.restart_clocks();
                return;
            }
            let records = w.records(&send);
            let keys: Vec<Option<String>> = records
                .iter()
                .map(|r| r.event.subject.as_ref().map(|k| format!("t\u{0}{k}")))
                .collect();
            let results = self.dest.send(&mut self.rng, &records, &keys);
            let stall = if self.dest.mood.stall_ms > 0 {
                self.rng.below(self.dest.mood.stall_ms)
            } else {
                0
            };
            self.fwd.inflight = Some((send, results, now + stall));
            return;
        }
        for i in w.to_dead_letter() {
            let rec = w.entries[i].record.clone().expect("decoded");
            let r = self.dest.dead_letter(&mut self.rng, &rec);
            if let Some(Ok(_)) = r {
                self.counts.dead_lettered += 1;
            }
            w.dead_lettered(i, r, now, self.give_up_ms);
        }
        for i in w.to_park() {
            let e = &w.entries[i];
            let ok = park(self.fs.as_ref(), spool.dir(), e.position, &e.payload).is_ok();
            if ok {
                self.counts.parked += 1;
            }
            w.parked(i, ok);
        }
        if w.done() {
            let next = w.next;
            let states: Vec<String> = w
                .entries
                .iter()
                .map(|e| {
                    format!("{}:{:?}", e.position, e.state)
                        .chars()
                        .take(24)
                        .collect()
                })
                .collect();
            self.fwd.window = None;
            self.fwd.position = next;
            self.note(format!("window done to {next}: {}", states.join(" ")));
            self.release(&spool);
        }
    }

    fn release(&mut self, spool: &Spool) {
        let r = spool.release(self.fwd.position);
        self.fwd.unreleased = r.is_err();
        if let Err(e) = r {
            self.note(format!("release to {} failed: {e}", self.fwd.position));
        }
    }

    /// What a crash or restart may send again: the window in flight, and what the cursor had
    /// not made durable.
    fn budget_resend(&mut self) {
        if let Some((spool, _)) = &self.spool {
            let durable = spool.shared.cursor.lock().expect("cursor lock").position();
            self.duplicate_budget += spool.forwarded().saturating_sub(durable) + SIM_WINDOW as u64;
        } else {
            self.duplicate_budget += SIM_WINDOW as u64;
        }
    }

    fn crash(&mut self) {
        self.counts.crashes += 1;
        self.budget_resend();
        self.spool = None;
        self.fwd = Fwd::default();
        self.disk.crash();
        self.note("crash".into());
        self.open();
    }

    fn restart(&mut self) {
        self.counts.restarts += 1;
        self.budget_resend();
        if let Some((_, mut w)) = self.spool.take() {
            w.seal_active();
        }
        self.fwd = Fwd::default();
        self.note("restart".into());
        self.open();
    }

    fn faults(&mut self) {
        let rate = [0, 0, 0, 20, 100, 400][self.rng.below(6) as usize];
        let capacity = if self.rng.chance(3) {
            self.counts.disk_full += 1;
            Some(self.disk.used() + self.rng.below(3_000))
        } else {
            None
        };
        self.disk.set_faults(Faults { rate, capacity });
        self.note(format!("faults: rate {rate}/10000, capacity {capacity:?}"));
    }

    fn mood(&mut self) {
        let dead_letter = self.dest.mood.dead_letter;
        self.dest.mood = Mood {
            down: self.rng.chance(5),
            fail: [0, 0, 5, 30][self.rng.below(4) as usize],
            refuse: [0, 0, 2, 10][self.rng.below(4) as usize],
            ambiguous: [0, 0, 2][self.rng.below(3) as usize],
            stall_ms: [0, 0, 500, 5_000][self.rng.below(4) as usize],
            dead_letter,
            dead_letter_fail: [0, 10, 50][self.rng.below(3) as usize],
        };
        self.note(format!("broker: {:?}", self.dest.mood));
    }

    /// A flipped bit somewhere in a segment file (the record it lands in is lost to damage),
    /// or now and then in the cursor's newest slot (which falls back one update: one more
    /// window may be sent twice).
    fn flip(&mut self) {
        let dir = self.settings.dir.clone();
        if self.rng.chance(8) {
            let cursor = dir.join(super::cursor::FILE);
            if let Some(bytes) = self.disk.contents(&cursor)
                && bytes.len() >= 8192
            {
                let slot = self.rng.below(2) * 4096;
                let at = slot + self.rng.below(40);
                self.disk.flip(&cursor, at, self.rng.below(8) as u8);
                self.duplicate_budget += SIM_WINDOW as u64;
                self.counts.flips += 1;
                self.note(format!("flip the cursor at {at}"));
            }
            return;
        }
        let files: Vec<PathBuf> = self
            .disk
            .files_in(&dir)
            .into_iter()
            .filter(|p| segment::parse_file_name(p).is_some())
            .collect();
        if files.is_empty() {
            return;
        }
        let path = files[self.rng.below(files.len() as u64) as usize].clone();
        let len = self.disk.len_of(&path).unwrap_or(0);
        if len == 0 {
            return;
        }
        let at = self.rng.below(len);
        let bit = self.rng.below(8) as u8;
        // Which record's frame holds that byte (read before the flip).
        let hit: Vec<String> = self.quietly(|| {
            let mut hit = Vec::new();
            if let Ok(mut r) = segment::Reader::open(self.fs.as_ref(), &path) {
                while let Ok(Some(f)) = r.next_frame() {
                    if let segment::Frame::Record {
                        at: from,
                        next,
                        payload,
                        ..
                    } = f
                        && (from..next).contains(&at)
                        && let Ok(rec) = Record::decode(&payload)
                    {
                        hit.push(rec.event.id);
                    }
                }
            }
            hit
        });
        self.disk.flip(&path, at, bit);
        self.counts.flips += 1;
        self.note(format!("flip {} at {at} (records {hit:?})", path.display()));
        self.exempt.extend(hit);
    }

    fn delivered(&self) -> HashSet<String> {
        let mut d: HashSet<String> = self.dest.log.iter().map(|(id, _)| id.clone()).collect();
        d.extend(self.dest.dead_letters.iter().cloned());
        d.extend(self.parked_ids());
        d
    }

    fn parked_ids(&self) -> Vec<String> {
        let dir = self.settings.dir.join(PARKED_DIR);
        self.disk
            .files_in(&dir)
            .into_iter()
            .filter_map(|p| self.disk.contents(&p))
            .flat_map(|b| records_in(&b))
            .map(|r| r.event.id)
            .collect()
    }

    /// The invariants that hold after every step.
    fn check_step(&mut self) {
        for (path, bytes) in self.disk.take_removed() {
            if segment::parse_file_name(&path).is_none()
                || path.parent() != Some(&self.settings.dir)
            {
                continue;
            }
            let delivered = self.delivered();
            for rec in records_in(&bytes) {
                let id = rec.event.id;
                if self.acked_ids.contains_key(&id) && !self.exempt.contains(&id) {
                    assert!(
                        delivered.contains(&id),
                        "{} removed while acknowledged record {id} (position {}) in it was not delivered",
                        path.display(),
                        self.acked_ids[&id]
                    );
                }
            }
        }
        let Some((spool, _)) = &self.spool else {
            return;
        };
        let segs = spool.segments();
        let listed: u64 = segs.iter().map(|s| s.committed).sum();
        assert_eq!(
            spool.bytes(),
            listed,
            "byte count and listed segments disagree"
        );
        let mut paths: Vec<&PathBuf> = segs.iter().map(|s| &s.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(
            paths.len(),
            segs.len(),
            "two list entries for one file: {segs:?}"
        );
        for s in &segs {
            let len = self.disk.len_of(&s.path);
            assert!(
                len.is_some_and(|l| l >= s.committed),
                "listed segment {} is {len:?} bytes on disk, {} counted",
                s.path.display(),
                s.committed
            );
        }
        let on_disk: Vec<PathBuf> = self
            .disk
            .files_in(&self.settings.dir)
            .into_iter()
            .filter(|p| segment::parse_file_name(p).is_some())
            .collect();
        for p in &on_disk {
            assert!(
                paths.contains(&p),
                "segment file {} is on disk but not listed (leaked)",
                p.display()
            );
        }
    }

    /// Faults stop, the broker heals, the forwarder drains; then the end-state invariants. A
    /// list of checks, each naming the invariant it holds.
    fn heal_and_check(&mut self) {
        self.disk.set_faults(Faults::default());
        self.dest.mood = Mood {
            dead_letter: self.dest.mood.dead_letter,
            ..Mood::default()
        };
        self.note("heal".into());
        if self.spool.is_none() {
            self.open();
        }
        assert!(
            self.spool.is_some(),
            "the spool does not open on a healthy disk"
        );
        // Readiness comes back by itself once the disk has room: the writer's idle probe.
        if let Some((spool, w)) = &mut self.spool {
            w.probe();
            assert!(
                spool.writable(),
                "the spool stays unwritable on a healthy disk"
            );
        }
        self.drain();
        // Space is back: an append is taken without a restart.
        let before = self.counts.acked;
        self.append();
        if self.forwarding || self.counts.acked == before {
            let (spool, _) = self.spool.as_ref().expect("open");
            let full = spool.bytes() + 2_000 > self.settings.max_bytes;
            assert!(
                self.counts.acked > before || full,
                "an append was refused after the disk healed (bytes {} of {})",
                spool.bytes(),
                self.settings.max_bytes
            );
        }
        self.drain();
        self.check_step();
        let delivered: HashSet<String> = if self.forwarding {
            self.delivered()
        } else {
            super::read_records_on(self.fs.as_ref(), &self.settings.dir)
                .expect("the log reads")
                .into_iter()
                .filter_map(|(_, p)| Record::decode(&p).ok())
                .map(|r| r.event.id)
                .collect()
        };
        for a in &self.acked {
            assert!(
                delivered.contains(&a.id) || self.exempt.contains(&a.id),
                "acknowledged record {} (position {}) was lost",
                a.id,
                a.position
            );
        }
        if !self.forwarding {
            return;
        }
        // Order per key: first occurrences in the topic follow the positions.
        let mut seen = HashSet::new();
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (id, key) in &self.dest.log {
            if !seen.insert(id.clone()) {
                continue;
            }
            // A record hit by a bit flip may come back (a second flip of the same bit): its
            // delivery, and so its order, is not promised.
            let (Some(key), Some(&p)) = (key, self.acked_ids.get(id)) else {
                continue;
            };
            if self.exempt.contains(id) {
                continue;
            }
            if let Some(&before) = last.get(key.as_str()) {
                assert!(
                    p > before,
                    "key {key:?}: position {p} ({id}) reached the topic after position {before}"
                );
            }
            last.insert(key, p);
        }
        let duplicates = (self.dest.log.len() - seen.len()) as u64;
        self.counts.duplicates = duplicates;
        assert!(
            duplicates <= self.duplicate_budget + self.dest.ambiguous,
            "{duplicates} duplicates, more than the {} crashes and restarts and {} lost acknowledgements allow",
            self.duplicate_budget,
            self.dest.ambiguous
        );
    }

    fn drain(&mut self) {
        if !self.forwarding {
            return;
        }
        for _ in 0..5_000 {
            let (spool, _) = self.spool.as_ref().expect("open");
            if self.fwd.window.is_none()
                && self.fwd.inflight.is_none()
                && !self.fwd.unreleased
                && spool.forwarded() >= spool.next_position()
            {
                return;
            }
            self.forward_step();
            self.clock.fetch_add(100, Ordering::Relaxed);
        }
        let (spool, _) = self.spool.as_ref().expect("open");
        panic!(
            "the forwarder did not drain a healthy spool (forwarded {}, next {}, window {}, unreleased {}, segments {:?})",
            spool.forwarded(),
            spool.next_position(),
            self.fwd.window.is_some(),
            self.fwd.unreleased,
            spool.segments()
        );
    }
}

/// Runs one schedule; the counts and the faults drawn, or the failure with its trace.
fn run(seed: u64) -> Result<(Counts, FaultCounts), String> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed);
        let steps = 30 + sim.rng.below(70);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..steps {
                sim.step();
                sim.check_step();
            }
            sim.heal_and_check();
        }));
        match result {
            Ok(()) => Ok((sim.counts, sim.disk.injected())),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("{msg}\nlast steps:\n  {}", sim.trace.join("\n  ")))
            }
        }
    }));
    outcome.unwrap_or_else(|_| Err("the simulator itself panicked".into()))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Seeds that found a bug while the simulator was written; they run first, always.
const REGRESSIONS: &[u64] = &[
    5, 9, 12, 15, 23, 209, 410, 645, 14718, 71271, 90138, 99980, 125165, 235820, 293759, 429147,
];

#[test]
fn simulated_schedules_keep_every_acknowledged_record() {
    // Quiet: the spool logs every fault it meets.
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let n = env_u64("SIM_SCHEDULES").unwrap_or(10_000);
            let base = env_u64("SIM_BASE").unwrap_or(0);
            REGRESSIONS.iter().copied().chain(base..base + n).collect()
        }
    };
    let started = Instant::now();
    // A failing schedule's panic is caught and reported with its seed; the default hook would
    // print a backtrace for each. Other threads' panics (other tests) still print.
    let me = std::thread::current().id();
    let hook: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> =
        Arc::from(std::panic::take_hook());
    let others = hook.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            others(info)
        }
    }));
    let mut counts = Counts::default();
    let mut faults = FaultCounts::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        match run(seed) {
            Ok((c, f)) => {
                counts += c;
                faults += f;
            }
            Err(why) => {
                failures.push(seed);
                if failures.len() == 1 {
                    eprintln!("SEED={seed} failed: {why}");
                }
            }
        }
    }
    std::panic::set_hook(Box::new(move |info| hook(info)));
    eprintln!(
        "spool simulator: {} schedules in {:.1} s; {counts:?}; injected {faults:?}",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} schedules failed, first SEED={} (replay: SIM_SEED={} cargo test --lib spool::sim); all: {:?}",
        failures.len(),
        failures[0],
        failures[0],
        &failures[..failures.len().min(20)]
    );
}
