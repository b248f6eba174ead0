//! The forwarder's cursor: the first position not yet acknowledged by Kafka, kept in the file
//! `cursor` so a restart resumes there, durable after every window (one `fdatasync`).
//!
//! The file is two 40-byte slots 4 KiB apart (so one torn or misdirected block write cannot
//! take both), written in turn, in place:
//! `magic "EGCURSOR" | sequence u64 LE | position u64 LE | floor u64 LE | reserved u32 | CRC32C
//! of the first 36 bytes, u32 LE`. The floor is the lowest position the spool may hand out
//! next: recovery raises it when it cuts bytes whose positions it cannot read (a torn tail),
//! so those positions are never handed out again, even after another crash. The slot with the higher sequence that checks out wins, so a write torn by a
//! power cut costs at most that one update (the other slot holds the one before). A small
//! format of our own for a reason: replacing a file atomically (write, fsync, rename, fsync the
//! directory) costs two flushes per window, overwriting a slot one, and the file's length
//! never changes, so `fdatasync` writes no metadata.
//!
//! Losing the cursor never loses a record, only sends some again: it moves only past records
//! Kafka acknowledged. Releases before this format wrote a text file `forwarded` (`<position>
//! <crc>`), read once when `cursor` is absent and then replaced.
use std::io;
use std::path::{Path, PathBuf};

use super::fs::{Fs, FsFile};

pub const FILE: &str = "cursor";
const LEGACY_FILE: &str = "forwarded";
const MAGIC: &[u8; 8] = b"EGCURSOR";
const SLOT: usize = 40;
/// Where each slot starts: a block apart.
const STRIDE: u64 = 4096;

pub struct Cursor {
    file: Box<dyn FsFile>,
    sequence: u64,
    position: u64,
    floor: u64,
    /// A slot checked out when it was opened (or it was made new).
    intact: bool,
}

fn encode(sequence: u64, position: u64, floor: u64) -> [u8; SLOT] {
    let mut s = [0u8; SLOT];
    s[..8].copy_from_slice(MAGIC);
    s[8..16].copy_from_slice(&sequence.to_le_bytes());
    s[16..24].copy_from_slice(&position.to_le_bytes());
    s[24..32].copy_from_slice(&floor.to_le_bytes());
    let crc = crc32c::crc32c(&s[..36]);
    s[36..].copy_from_slice(&crc.to_le_bytes());
    s
}

/// (sequence, position, floor) of a slot that checks out.
fn decode(s: &[u8]) -> Option<(u64, u64, u64)> {
    let s: &[u8; SLOT] = s.try_into().ok()?;
    let crc = u32::from_le_bytes(s[36..].try_into().expect("4 bytes"));
    let u = |r: std::ops::Range<usize>| u64::from_le_bytes(s[r].try_into().expect("8 bytes"));
    (&s[..8] == MAGIC && crc32c::crc32c(&s[..36]) == crc).then(|| (u(8..16), u(16..24), u(24..32)))
}

/// The newest slot of a cursor file, if either checks out.
fn read_slots(file: &dyn FsFile) -> io::Result<Option<(u64, u64, u64)>> {
    let mut found = None;
    for i in 0..2 {
        let mut b = [0u8; SLOT];
        let got = file.read_at(&mut b, i * STRIDE)?;
        if let Some(slot) = decode(&b[..got])
            && found.is_none_or(|(seq, _, _)| slot.0 > seq)
        {
            found = Some(slot);
        }
    }
    Ok(found)
}

/// The position the legacy text file holds.
fn read_legacy(fs: &dyn Fs, path: &Path) -> Option<u64> {
    let text = super::fs::read_all(fs, path).ok()?;
    let text = String::from_utf8(text).ok()?;
    let (pos, crc) = text.trim().split_once(' ')?;
    (crc32c::crc32c(pos.as_bytes()).to_string() == crc)
        .then(|| pos.parse().ok())
        .flatten()
}

impl Cursor {
    /// Opens the cursor in `dir`, creating it (durably) if it is absent; `None` as the position
    /// when no cursor was found or none checks out (forwarding then starts from the oldest
    /// record: duplicates possible, nothing lost; [`Cursor::intact`] says which, and the
    /// caller raises the floor from what is on disk).
    pub fn open(fs: &dyn Fs, dir: &Path) -> io::Result<(Cursor, Option<u64>)> {
        let path = dir.join(FILE);
        match fs.open(&path) {
            Ok(file) => {
                let found = read_slots(file.as_ref())?;
                if found.is_none() {
                    tracing::error!(
                        "the spool's cursor file is damaged: forwarding starts from the oldest record (duplicates possible)"
                    );
                }
                let (sequence, position, floor) = found.unwrap_or((0, 0, 0));
                let mut cursor = Cursor {
                    file,
                    sequence,
                    position,
                    floor,
                    intact: found.is_some(),
                };
                // What was read may be a write whose fsync failed (Linux then keeps the page
                // readable but may never write it): written again, both slots, it is durable
                // before recovery relies on it (found by the simulator, SEED=90138).
                cursor.write_both(position, floor)?;
                return Ok((cursor, found.map(|(_, p, _)| p)));
            }
            // Any other error (a stat that failed) is not "absent": a new cursor must not
            // replace one that is there.
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        let legacy_path = dir.join(LEGACY_FILE);
        let legacy = match fs.open_read(&legacy_path) {
            Ok(_) => Some(read_legacy(fs, &legacy_path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if legacy == Some(None) {
            tracing::error!(
                "the spool's cursor file is damaged: forwarding starts from the oldest record (duplicates possible)"
            );
        }
        let position = legacy.flatten();
        // Made whole under a temporary name, then renamed: a cursor file that exists is whole.
        let tmp: PathBuf = dir.join(format!("{FILE}.tmp"));
        let file = fs.create(&tmp)?;
        for i in 0..2 {
            file.write_all_at(&encode(i, position.unwrap_or(0), 0), i * STRIDE)?;
        }
        file.sync_all()?;
        fs.rename(&tmp, &path)?;
        if legacy.is_some() {
            fs.remove_file(&legacy_path)?;
        }
        fs.sync_dir(dir)?;
        let cursor = Cursor {
            file,
            sequence: 1,
            position: position.unwrap_or(0),
            floor: 0,
            intact: legacy != Some(None),
        };
        Ok((cursor, position))
    }

    /// Whether the cursor read back (or was made new); false when it was there but damaged.
    pub fn intact(&self) -> bool {
        self.intact
    }

    /// The position last made durable.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// No position below this may be handed out.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Moves the cursor to `position`, durably. Nothing changes when it is already there.
    pub fn store(&mut self, position: u64) -> io::Result<()> {
        if position == self.position {
            return Ok(());
        }
        self.write(position, self.floor)
    }

    /// Raises the floor to `floor`, durably, in both slots: a slot damaged later must not take
    /// the floor down with it.
    pub fn raise_floor(&mut self, floor: u64) -> io::Result<()> {
        if floor <= self.floor {
            return Ok(());
        }
        self.write_both(self.position, floor)
    }

    fn write_both(&mut self, position: u64, floor: u64) -> io::Result<()> {
        self.write(position, floor)?;
        self.write(position, floor)
    }

    fn write(&mut self, position: u64, floor: u64) -> io::Result<()> {
        let sequence = self.sequence + 1;
        let slot = (sequence % 2) * STRIDE;
        self.file
            .write_all_at(&encode(sequence, position, floor), slot)?;
        self.file.sync_data()?;
        self.sequence = sequence;
        self.position = position;
        self.floor = floor;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::fs::RealFs;

    #[test]
    fn the_cursor_survives_reopening_and_a_torn_slot_falls_back_one_update() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, found) = Cursor::open(&RealFs, dir.path()).unwrap();
        assert_eq!(found, None);
        c.store(10).unwrap();
        c.store(20).unwrap();
        drop(c);
        let (mut c, found) = Cursor::open(&RealFs, dir.path()).unwrap();
        assert_eq!(found, Some(20));
        c.store(30).unwrap();
        drop(c);
        // Tear the slot the last update wrote: the one before it wins.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = |i: usize| i * STRIDE as usize;
        let newest = (0..2)
            .max_by_key(|&i| decode(&bytes[at(i)..at(i) + SLOT]).unwrap().0)
            .unwrap();
        bytes[at(newest) + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Cursor::open(&RealFs, dir.path()).unwrap().1, Some(20));
    }

    #[test]
    fn the_legacy_text_cursor_is_read_once_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join(LEGACY_FILE);
        std::fs::write(&legacy, format!("42 {}\n", crc32c::crc32c(b"42"))).unwrap();
        let (_, found) = Cursor::open(&RealFs, dir.path()).unwrap();
        assert_eq!(found, Some(42));
        assert!(!legacy.exists());
        assert_eq!(Cursor::open(&RealFs, dir.path()).unwrap().1, Some(42));
    }
}
