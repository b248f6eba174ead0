//! What opening a spool finds: every segment read through, oldest first, and the list the
//! writer and the forwarder go on from. The rules, each one a loss the simulator or a reader
//! found in an earlier version:
//!
//! - Damage is skipped, never cut: a stretch that holds no readable frame with frames after
//!   it (a flipped bit anywhere, a damaged length included) is reported and skipped, the
//!   records after it kept; the segment goes to `damaged/` once forwarded past.
//! - Only the segment that was being written (the last one) may lose bytes, and only after
//!   its last readable frame: an interrupted write there was never acknowledged (its group's
//!   `fdatasync` had not returned). They are copied to `damaged/` first, and the cursor's
//!   floor rises past every position they could have held. Zeroes after the last frame
//!   (preallocation) are cut from any segment: they hold nothing.
//! - A segment with a header that does not check out is never cut; its version 2 frames are
//!   still read (they carry their positions).
//! - A segment left with no record and no damage (a crash between creating a segment and its
//!   first commit) is deleted, so no stale, empty segment shares a name or a position range
//!   with the next one.
use std::io;
use std::path::{Path, PathBuf};

use super::cursor::Cursor;
use super::fs::Fs;
use super::segment::{self, End, Frame, Reader};
use super::{Recovery, Segment};

/// Every segment in `dir`, read through, oldest first; the stray empty ones deleted.
pub(super) fn recover(
    fs: &dyn Fs,
    dir: &Path,
    cursor: &mut Cursor,
) -> io::Result<(Vec<Segment>, Recovery)> {
    let mut paths: Vec<(u64, PathBuf)> = fs
        .list(dir)?
        .into_iter()
        .filter_map(|p| segment::parse_file_name(&p).map(|first| (first, p)))
        .collect();
    paths.sort();
    let mut stats = Recovery::default();
    let mut segments = Vec::with_capacity(paths.len());
    let mut names_changed = false;
    let next_firsts: Vec<Option<u64>> = (0..paths.len())
        .map(|i| paths.get(i + 1).map(|(f, _)| *f))
        .collect();
    for ((named_first, path), next_first) in paths.into_iter().zip(next_firsts) {
        stats.segments += 1;
        let (segment, changed) =
            recover_one(fs, &path, named_first, next_first, cursor, &mut stats)?;
        names_changed |= changed;
        segments.extend(segment);
    }
    if names_changed {
        fs.sync_dir(dir)?;
    }
    // A later segment never starts before an earlier one ends (damage cannot make positions
    // go backwards).
    for i in 1..segments.len() {
        if segments[i].first < segments[i - 1].end {
            tracing::error!(path = %segments[i].path.display(), "spool segment overlaps the one before it");
        }
    }
    Ok((segments, stats))
}

/// One segment read through: what the spool keeps of it (None: deleted, it held nothing),
/// and whether a name in the directory changed. One piece: what is cut, kept or copied to
/// `damaged/` depends on the whole read of the segment, and the order of those steps is what
/// makes a crash between them safe.
fn recover_one(
    fs: &dyn Fs,
    path: &Path,
    named_first: u64,
    next_first: Option<u64>,
    cursor: &mut Cursor,
    stats: &mut Recovery,
) -> io::Result<(Option<Segment>, bool)> {
    let is_last = next_first.is_none();
    let mut reader = Reader::open(fs, path)?;
    let header_damage = reader.header_damage().map(str::to_owned);
    if let Some(why) = &header_damage {
        tracing::error!(path = %path.display(), why, "spool segment header damaged: its records are read from their own frames");
    } else if reader.first != named_first {
        tracing::warn!(path = %path.display(), header = reader.first, "segment name and header disagree; the header wins");
    }
    let mut damaged = false;
    let mut records = 0u64;
    let mut end_position = reader.first;
    while let Some(frame) = reader.next_frame()? {
        match frame {
            Frame::Record { position, .. } => {
                records += 1;
                end_position = position + 1;
            }
            Frame::Damaged { at, next, lost } => {
                let count = (lost.end - lost.start).max(1);
                tracing::error!(path = %path.display(), offset = at, bytes = next - at, records = count, first_lost = lost.start, "damaged spool records skipped");
                stats.corrupt_records += count;
                damaged = true;
            }
        }
    }
    let end = reader.end().cloned().expect("read to the end");
    let file = fs.open(path)?;
    let mut len = file.len()?;
    // Bytes after the last readable frame cannot say which positions they held (a torn
    // write, or records damaged on the disk): positions go on past as many frames as they
    // could have held, so none is handed out twice.
    if let End::Garbage { at, .. } = &end {
        let written = last_nonzero(file.as_ref(), *at, len)?.map_or(0, |e| e - at);
        end_position += written.div_ceil(segment::FRAME_HEADER_LEN + 1);
        // Never into the next segment's positions.
        if let Some(next) = next_first {
            end_position = end_position.min(next.max(reader.position()));
        }
    }
    let cut_to = match &end {
        End::Clean { at } => (len > *at).then_some(*at),
        End::Garbage { at, len: bytes } if is_last && header_damage.is_none() => {
            tracing::warn!(path = %path.display(), offset = at, bytes, "cut an interrupted write off the end of the spool's last segment (never acknowledged)");
            stats.torn_tails += 1;
            // Durable before the cut: after it, nothing on disk tells of those positions.
            cursor.raise_floor(end_position)?;
            stats.position_floor = stats.position_floor.max(end_position);
            // The bytes are kept aside first: an interrupted write is the likely reading, but
            // damage to the last record would read the same.
            keep_tail(fs, path, file.as_ref(), *at, len)?;
            Some(*at)
        }
        End::Garbage { at, len: bytes } => {
            tracing::error!(path = %path.display(), offset = at, bytes, "spool segment has unreadable bytes at its end: kept for inspection");
            damaged = true;
            None
        }
    };
    if header_damage.is_some() && (records > 0 || !matches!(end, End::Clean { .. })) {
        damaged = true;
    }
    if let Some(to) = cut_to.filter(|_| header_damage.is_none()) {
        file.set_len(to)?;
        file.sync_data()?;
        len = to;
    }
    if damaged {
        stats.unreadable_segments += usize::from(header_damage.is_some());
    }
    let empty = records == 0 && !damaged;
    if empty {
        // A segment created but never committed to (or nothing but zeroes after a damaged
        // header): it holds nothing.
        match fs.remove_file(path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed an empty spool segment");
                return Ok((None, true));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an empty spool segment; it is skipped")
            }
        }
    }
    Ok((
        Some(Segment {
            first: reader.first,
            path: path.to_path_buf(),
            committed: len,
            end: end_position,
            damaged,
            active: false,
        }),
        false,
    ))
}

/// The offset after the last byte in `from..to` of `file` that is not zero.
fn last_nonzero(file: &dyn super::fs::FsFile, from: u64, to: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 64 << 10];
    let mut end = to;
    while end > from {
        let start = end.saturating_sub(buf.len() as u64).max(from);
        let n = (end - start) as usize;
        let got = file.read_at(&mut buf[..n], start)?;
        if let Some(i) = buf[..got].iter().rposition(|b| *b != 0) {
            return Ok(Some(start + i as u64 + 1));
        }
        end = start;
    }
    Ok(None)
}

/// Copies the non-zero bytes from `at` of a segment's tail to `damaged/<name>.tail-<at>`,
/// durably, before recovery cuts them.
fn keep_tail(
    fs: &dyn Fs,
    path: &Path,
    file: &dyn super::fs::FsFile,
    at: u64,
    len: u64,
) -> io::Result<()> {
    let Some(end) = last_nonzero(file, at, len)? else {
        return Ok(());
    };
    let mut bytes = vec![0u8; (end - at) as usize];
    let got = file.read_at(&mut bytes, at)?;
    bytes.truncate(got);
    let dir = path.with_file_name(super::DAMAGED_DIR);
    let name = format!(
        "{}.tail-{at}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("segment")
    );
    super::fs::ensure_dir(fs, &dir)?;
    super::fs::write_synced(fs, &dir, &dir.join(name), &bytes)
}
