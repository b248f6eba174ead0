//! A simulated disk for the spool: files are inodes with the bytes reads see and, apart, the
//! bytes a crash keeps; names likewise (a directory's names are durable after `sync_dir`).
//! A crash keeps what was synced plus, by the seed, some of the writes since (each whole or
//! torn), in order. Faults come from the seed: ENOSPC and EIO at any call, short writes, a
//! capacity that fills, and bit flips in stored bytes (done by the driver). After a failed
//! sync the unsynced writes stay readable but never become durable (Linux's behaviour).
//! A directory's name is durable once its parent is synced, like a file's; a crash takes
//! every name below a directory that was not.
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Rng;
use crate::spool::fs::{Fs, FsFile};

/// One change since the last sync, for a crash to keep or not.
#[derive(Clone)]
enum Op {
    Write { at: u64, bytes: Vec<u8> },
    SetLen(u64),
}

/// Applies one change to `data`; a write only its first `take` bytes when given.
fn apply(data: &mut Vec<u8>, op: &Op, take: Option<usize>) {
    match op {
        Op::SetLen(n) => data.resize(*n as usize, 0),
        Op::Write { at, bytes } => {
            let take = take.unwrap_or(bytes.len());
            let at = *at as usize;
            if data.len() < at + take {
                data.resize(at + take, 0);
            }
            data[at..at + take].copy_from_slice(&bytes[..take]);
        }
    }
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Op>,
}

/// Which failures to inject, and how often (per call, out of 10,000).
#[derive(Clone, Copy, Default, Debug)]
pub struct Faults {
    pub rate: u32,
    /// Bytes all files may hold; writes past it fail with ENOSPC.
    pub capacity: Option<u64>,
}

struct Inner {
    rng: Rng,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    /// Directories whose own name is durable (their parent was synced since they were made).
    durable_dirs: BTreeSet<PathBuf>,
    faults: Faults,
    /// Files removed (path, their bytes then), for the driver's checks.
    removed: Vec<(PathBuf, Vec<u8>)>,
    /// Calls left before the machine dies mid-step (a crash inside a commit, a release, a
    /// recovery); once dead, every call fails and changes nothing until `crash`.
    crash_in: Option<u64>,
    dead: bool,
    pub injected: FaultCounts,
}

/// What was injected, for the report.
#[derive(Clone, Copy, Default, Debug)]
pub struct FaultCounts {
    pub enospc: u64,
    pub eio: u64,
    pub short_writes: u64,
    pub torn_writes: u64,
    pub lost_writes: u64,
}

impl std::ops::AddAssign for FaultCounts {
    fn add_assign(&mut self, o: Self) {
        self.enospc += o.enospc;
        self.eio += o.eio;
        self.short_writes += o.short_writes;
        self.torn_writes += o.torn_writes;
        self.lost_writes += o.lost_writes;
    }
}

pub struct SimFs {
    inner: Mutex<Inner>,
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

impl Inner {
    /// Bytes held by files that have a name (an unlinked file's space is not counted).
    fn used(&self) -> u64 {
        self.names
            .values()
            .map(|i| self.inodes[i].data.len() as u64)
            .sum()
    }

    /// An injected failure for this call, by the seed (or the machine died).
    fn fault(&mut self, space: bool) -> Option<io::Error> {
        if let Some(n) = self.crash_in {
            if n == 0 {
                self.crash_in = None;
                self.dead = true;
            } else {
                self.crash_in = Some(n - 1);
            }
        }
        if self.dead {
            return Some(eio());
        }
        if self.faults.rate == 0 || self.rng.below(10_000) >= u64::from(self.faults.rate) {
            return None;
        }
        if space && self.rng.chance(2) {
            self.injected.enospc += 1;
            Some(enospc())
        } else {
            self.injected.eio += 1;
            Some(eio())
        }
    }

    fn room_for(&mut self, growth: u64) -> io::Result<()> {
        match self.faults.capacity {
            Some(cap) if growth > 0 && self.used() + growth > cap => {
                self.injected.enospc += 1;
                Err(enospc())
            }
            _ => Ok(()),
        }
    }

    fn inode(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::other("stale handle"))
    }

    fn new_file(&mut self, path: &Path) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::default());
        self.names.insert(path.to_path_buf(), ino);
        ino
    }

    fn check_dir(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        if self.dirs.contains(parent) {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::NotFound))
        }
    }
}

impl SimFs {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                rng: Rng::new(seed ^ 0x005e_edf5),
                inodes: BTreeMap::new(),
                next_ino: 1,
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dirs: BTreeSet::from([PathBuf::from("/")]),
                durable_dirs: BTreeSet::from([PathBuf::from("/")]),
                faults: Faults::default(),
                removed: Vec::new(),
                crash_in: None,
                dead: false,
                injected: FaultCounts::default(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("sim fs lock")
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn used(&self) -> u64 {
        self.lock().used()
    }

    /// The machine dies after `calls` more file-system calls.
    pub fn crash_in(&self, calls: u64) {
        self.lock().crash_in = Some(calls);
    }

    /// Disarms a `crash_in` the step did not reach.
    pub fn set_crash_in_none(&self) {
        self.lock().crash_in = None;
    }

    /// Runs `f` with no faults and no crash countdown (the driver's own reads), then restores
    /// them.
    pub fn quietly<T>(&self, f: impl FnOnce() -> T) -> T {
        let (faults, crash_in, dead) = {
            let mut inner = self.lock();
            let saved = (inner.faults, inner.crash_in.take(), inner.dead);
            inner.faults = Faults::default();
            inner.dead = false;
            saved
        };
        let out = f();
        let mut inner = self.lock();
        inner.faults = faults;
        inner.crash_in = crash_in;
        inner.dead = dead;
        out
    }

    /// Whether the machine died during the last step (the driver then crashes it).
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    pub fn injected(&self) -> FaultCounts {
        self.lock().injected
    }

    pub fn take_removed(&self) -> Vec<(PathBuf, Vec<u8>)> {
        std::mem::take(&mut self.lock().removed)
    }

    /// Files whose names are in `dir` now.
    pub fn files_in(&self, dir: &Path) -> Vec<PathBuf> {
        self.lock()
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }

    pub fn len_of(&self, path: &Path) -> Option<u64> {
        let inner = self.lock();
        let ino = inner.names.get(path)?;
        Some(inner.inodes[ino].data.len() as u64)
    }

    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let inner = self.lock();
        let ino = inner.names.get(path)?;
        Some(inner.inodes[ino].data.clone())
    }

    /// Flips one bit of the byte at `at` of `path`, on the medium (what reads see and what a
    /// crash keeps).
    pub fn flip(&self, path: &Path, at: u64, bit: u8) {
        let mut inner = self.lock();
        let Some(&ino) = inner.names.get(path) else {
            return;
        };
        let node = inner.inodes.get_mut(&ino).expect("named inode");
        let at = at as usize;
        if at < node.data.len() {
            node.data[at] ^= 1 << bit;
        }
        if at < node.durable.len() {
            node.durable[at] ^= 1 << bit;
        }
    }

    /// A power cut: every name and byte not synced is gone, except what the seed keeps of
    /// the writes since the last sync (in order, each whole, torn or lost).
    pub fn crash(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.dead = false;
        inner.crash_in = None;
        let dirs = inner.durable_dirs.clone();
        // A directory survives only if every directory above it does.
        inner.dirs = dirs
            .iter()
            .filter(|d| d.ancestors().all(|a| dirs.contains(a)))
            .cloned()
            .collect();
        inner.durable_dirs = inner.dirs.clone();
        let live_dirs = inner.dirs.clone();
        inner
            .durable_names
            .retain(|p, _| p.parent().is_some_and(|d| live_dirs.contains(d)));
        inner.names = inner.durable_names.clone();
        let live: BTreeSet<u64> = inner.names.values().copied().collect();
        inner.inodes.retain(|ino, _| live.contains(ino));
        for node in inner.inodes.values_mut() {
            let mut data = node.durable.clone();
            let keep_from = inner.rng.below(3);
            for op in std::mem::take(&mut node.pending) {
                // Each change since the sync: kept, lost, or (a write) torn.
                match (&op, inner.rng.below(4)) {
                    (_, 0) if keep_from > 0 => inner.injected.lost_writes += 1,
                    (Op::Write { at, bytes }, 1) if !bytes.is_empty() => {
                        // Torn: each 512-byte sector of the write landed or not, any of
                        // them, not only a prefix.
                        inner.injected.torn_writes += 1;
                        let end = *at as usize + bytes.len();
                        let mut from = *at as usize;
                        while from < end {
                            let to = ((from / 512 + 1) * 512).min(end);
                            if inner.rng.chance(2) {
                                let piece = Op::Write {
                                    at: from as u64,
                                    bytes: bytes[from - *at as usize..to - *at as usize].to_vec(),
                                };
                                apply(&mut data, &piece, None);
                            }
                            from = to;
                        }
                    }
                    _ => apply(&mut data, &op, None),
                }
            }
            node.data = data.clone();
            node.durable = data;
        }
    }
}

struct SimFile {
    fs: Arc<SimFs>,
    ino: u64,
}

impl FsFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        let mut inner = self.fs.lock();
        if let Some(e) = inner.fault(false) {
            return Err(e);
        }
        Ok(inner.inode(self.ino)?.data.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut inner = self.fs.lock();
        if let Some(e) = inner.fault(false) {
            return Err(e);
        }
        let node = inner.inode(self.ino)?;
        let at = (offset as usize).min(node.data.len());
        let n = buf.len().min(node.data.len() - at);
        buf[..n].copy_from_slice(&node.data[at..at + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut inner = self.fs.lock();
        let fault = inner.fault(true);
        let len = inner.inode(self.ino)?.data.len() as u64;
        let growth = (offset + buf.len() as u64).saturating_sub(len);
        let room = inner.room_for(growth);
        // A failure may leave part of the write (a short write), as a real one can.
        let (take, result) = match (fault, room) {
            (Some(e), _) if inner.dead => (0, Err(e)),
            (None, Ok(())) => (buf.len(), Ok(())),
            (Some(e), _) | (None, Err(e)) => {
                let part = if buf.is_empty() || !inner.rng.chance(2) {
                    0
                } else {
                    inner.injected.short_writes += 1;
                    inner.rng.below(buf.len() as u64) as usize
                };
                let part = match inner.faults.capacity {
                    Some(cap) => part.min(cap.saturating_sub(inner.used()) as usize),
                    None => part,
                };
                (part, Err(e))
            }
        };
        if take > 0 {
            let node = inner.inode(self.ino)?;
            let at = offset as usize;
            if node.data.len() < at + take {
                node.data.resize(at + take, 0);
            }
            node.data[at..at + take].copy_from_slice(&buf[..take]);
            node.pending.push(Op::Write {
                at: offset,
                bytes: buf[..take].to_vec(),
            });
        }
        result
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut inner = self.fs.lock();
        let inner = &mut *inner;
        let fault = inner.fault(false);
        let dead = inner.dead;
        let node = inner.inode(self.ino)?;
        match fault {
            None => {
                // What reaches the disk is what changed since the last sync, applied to what
                // was there: bytes a failed sync dropped stay readable but never land.
                for op in std::mem::take(&mut node.pending) {
                    apply(&mut node.durable, &op, None);
                }
                Ok(())
            }
            Some(e) if dead => Err(e),
            Some(e) => {
                // Linux marks the pages clean after a failed writeback: they stay readable,
                // and some may have reached the disk while others never will.
                for op in std::mem::take(&mut node.pending) {
                    if inner.rng.chance(2) {
                        let node = inner.inodes.get_mut(&self.ino).expect("checked above");
                        apply(&mut node.durable, &op, None);
                    }
                }
                Err(e)
            }
        }
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut inner = self.fs.lock();
        if let Some(e) = inner.fault(false) {
            return Err(e);
        }
        let cur = inner.inode(self.ino)?.data.len() as u64;
        inner.room_for(len.saturating_sub(cur))?;
        let node = inner.inode(self.ino)?;
        node.data.resize(len as usize, 0);
        node.pending.push(Op::SetLen(len));
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut inner = self.fs.lock();
        if let Some(e) = inner.fault(true) {
            return Err(e);
        }
        let cur = inner.inode(self.ino)?.data.len() as u64;
        if len <= cur {
            return Ok(());
        }
        inner.room_for(len - cur)?;
        let node = inner.inode(self.ino)?;
        node.data.resize(len as usize, 0);
        node.pending.push(Op::SetLen(len));
        Ok(())
    }
}

/// The file system seam, implemented on the shared `Arc` so handles can reach the disk.
pub struct SimFsHandle(pub Arc<SimFs>);

impl SimFsHandle {
    fn file(&self, ino: u64) -> Box<dyn FsFile> {
        Box::new(SimFile {
            fs: self.0.clone(),
            ino,
        })
    }
}

impl Fs for SimFsHandle {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut inner = self.0.lock();
        inner.check_dir(path)?;
        if inner.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        if let Some(e) = inner.fault(true) {
            return Err(e);
        }
        let ino = inner.new_file(path);
        drop(inner);
        Ok(self.file(ino))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut inner = self.0.lock();
        inner.check_dir(path)?;
        if let Some(e) = inner.fault(true) {
            return Err(e);
        }
        let ino = match inner.names.get(path) {
            Some(&ino) => {
                let node = inner.inode(ino)?;
                node.data.clear();
                node.pending.push(Op::SetLen(0));
                ino
            }
            None => inner.new_file(path),
        };
        drop(inner);
        Ok(self.file(ino))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let ino = *self
            .0
            .lock()
            .names
            .get(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(self.file(ino))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = self.0.lock();
        inner.check_dir(to)?;
        if let Some(e) = inner.fault(false) {
            return Err(e);
        }
        let ino = inner
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        inner.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.0.lock();
        if let Some(e) = inner.fault(false) {
            return Err(e);
        }
        let ino = inner
            .names
            .remove(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let bytes = inner.inodes[&ino].data.clone();
        inner.removed.push((path.to_path_buf(), bytes));
        // The inode lives on while a durable name or a handle may still reach it.
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut inner = self.0.lock();
        if !inner.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        if let Some(e) = inner.fault(false) {
            return Err(e);
        }
        let mut out: Vec<PathBuf> = inner
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        out.extend(
            inner
                .dirs
                .iter()
                .filter(|d| d.parent() == Some(dir))
                .cloned(),
        );
        Ok(out)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.0.lock();
        if inner.names.contains_key(dir) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        if !inner.dirs.contains(dir)
            && let Some(e) = inner.fault(true)
        {
            return Err(e);
        }
        for a in dir.ancestors() {
            inner.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.0.lock();
        if let Some(e) = inner.fault(false) {
            return Err(e);
        }
        let inner = &mut *inner;
        inner.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, ino) in &inner.names {
            if p.parent() == Some(dir) {
                inner.durable_names.insert(p.clone(), *ino);
            }
        }
        let children: Vec<PathBuf> = inner
            .dirs
            .iter()
            .filter(|d| d.parent() == Some(dir))
            .cloned()
            .collect();
        inner.durable_dirs.extend(children);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let inner = self.0.lock();
        inner.names.contains_key(path) || inner.dirs.contains(path)
    }

    fn available(&self, _dir: &Path) -> io::Result<u64> {
        let inner = self.0.lock();
        Ok(match inner.faults.capacity {
            Some(cap) => cap.saturating_sub(inner.used()),
            None => u64::MAX,
        })
    }
}
