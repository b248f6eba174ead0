//! The spool's on-disk format, and nothing else: segment files, their header, the framing of
//! each record, and a reader that recovers what it can from whatever bytes it finds. Pure
//! functions over bytes and a reader over an [`FsFile`]; the writer thread, recovery and the
//! forwarder live in their own modules.
//!
//! A segment is `<first position, 20 digits>.seg`:
//!
//! ```text
//! header (24 bytes):  magic "EGSPOOL\0" | version u16 LE | reserved u16 = 0
//!                     | first position u64 LE | CRC32C of the preceding 20 bytes, u32 LE
//! record, version 2:  payload length u32 LE (1..=MAX_RECORD) | position u64 LE
//!                     | CRC32C of (payload, length, position) u32 LE | payload
//! record, version 1:  payload length u32 LE | CRC32C of the payload u32 LE | payload
//! ```
//!
//! Version 2 (written since the simulator found that version 1 cannot tell a flipped length
//! bit from a torn write) checksums the length and carries each record's position, so damage
//! anywhere is skipped by scanning for the next frame that checks out (a resync), with the
//! positions lost in between known exactly; records after damage are never given up. Version
//! 1 segments are still read (positions count up from the header's first). The checksum
//! covers the payload first, so a client thread can checksum its payload before the writer
//! knows its position ([`frame_payload`], or [`begin_frame`] and [`end_frame`] around a
//! payload encoded in place; then [`set_position`]). A length of 0 is never written, so zeroes
//! after the last record (a preallocated tail) read as the end. The payload itself is
//! [`crate::spool::record`]'s business.
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::fs::{Fs, FsFile};

pub const MAGIC: &[u8; 8] = b"EGSPOOL\0";
/// The version new segments are written in.
pub const VERSION: u16 = 2;
pub const HEADER_LEN: u64 = 24;
pub const FRAME_HEADER_LEN: u64 = 16;
const FRAME_HEADER_LEN_V1: u64 = 8;
/// No record is longer than this (an event is at most `limits.max_event_size`, 512 KiB by
/// default, plus a small envelope); a longer length field can only be damage.
pub const MAX_RECORD: u32 = 64 << 20;
pub const EXTENSION: &str = "seg";
const READ_AHEAD: usize = 64 << 10;

/// The file name of the segment whose first record has `first` as its position.
pub fn file_name(first: u64) -> String {
    format!("{first:020}.{EXTENSION}")
}

/// The first position a segment file's name claims, if it is a segment's name at all.
pub fn parse_file_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".seg")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// A header of the current version.
pub fn encode_header(first: u64) -> [u8; HEADER_LEN as usize] {
    encode_header_version(first, VERSION)
}

/// A header of any version (tests write version 1 segments with it).
pub fn encode_header_version(first: u64, version: u16) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&version.to_le_bytes());
    h[12..20].copy_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first position and version a header names, or why the header is not one.
pub fn decode_header(h: &[u8]) -> Result<(u64, u16), String> {
    if h.len() < HEADER_LEN as usize {
        return Err(format!("header is {} bytes, not {HEADER_LEN}", h.len()));
    }
    if &h[..8] != MAGIC {
        return Err("not a spool segment (bad magic)".into());
    }
    let crc = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes"));
    if crc32c::crc32c(&h[..20]) != crc {
        return Err("header checksum mismatch".into());
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != 1 && version != VERSION {
        return Err(format!("unknown segment version {version}"));
    }
    Ok((
        u64::from_le_bytes(h[12..20].try_into().expect("8 bytes")),
        version,
    ))
}

/// Appends a version 2 frame for `payload` to `out` whose position is not known yet: its
/// checksum field holds the payload's own checksum until [`set_position`] finishes it.
pub fn frame_payload(payload: &[u8], out: &mut Vec<u8>) {
    let at = begin_frame(out);
    out.extend_from_slice(payload);
    end_frame(out, at);
}

/// Starts a version 2 frame at the end of `out` whose payload the caller appends next;
/// [`end_frame`] fills in its length and checksum. Returns where the frame starts.
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN as usize]);
    at
}

/// Finishes the frame [`begin_frame`] started at `at` for the bytes appended since: their
/// length, position 0 and their own checksum until [`set_position`].
pub fn end_frame(out: &mut [u8], at: usize) {
    let start = at + FRAME_HEADER_LEN as usize;
    let len = out.len() - start;
    debug_assert!(len > 0 && len <= MAX_RECORD as usize);
    let crc = crc32c::crc32c(&out[start..]);
    out[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
}

/// Gives the frame [`frame_payload`] put at `at` in `buf` its position and final checksum;
/// returns where the next frame starts.
pub fn set_position(buf: &mut [u8], at: usize, position: u64) -> usize {
    let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
    buf[at + 4..at + 12].copy_from_slice(&position.to_le_bytes());
    let payload_crc = u32::from_le_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes"));
    let crc = crc32c::crc32c_append(payload_crc, &buf[at..at + 12]);
    buf[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
    at + FRAME_HEADER_LEN as usize + len
}

/// Appends one complete version 2 frame.
pub fn encode_frame(payload: &[u8], position: u64, out: &mut Vec<u8>) {
    let at = out.len();
    frame_payload(payload, out);
    set_position(out, at, position);
}

/// Appends one version 1 frame (what earlier releases wrote; tests build legacy segments).
pub fn encode_frame_v1(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the reader found at one place in a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole record whose checksum matches.
    Record {
        position: u64,
        /// Byte offset of the frame's start, and of the next frame.
        at: u64,
        next: u64,
        payload: Vec<u8>,
    },
    /// Bytes from `at` to `next` that hold no readable frame, with readable frames after
    /// them: damage, skipped. `lost` are the positions that were in it, where known (empty
    /// when nothing tells: a damaged version 1 length).
    Damaged {
        at: u64,
        next: u64,
        lost: Range<u64>,
    },
}

/// How a scan of a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// At `at`, with nothing or only zeroes after it.
    Clean { at: u64 },
    /// At `at`, after the last readable frame, with `len` bytes that are not all zeroes and
    /// hold no readable frame: in the segment that was being written, an interrupted write
    /// (never acknowledged); anywhere else, damage.
    Garbage { at: u64, len: u64 },
}

impl End {
    /// Where the readable data ends.
    pub fn valid_len(&self) -> u64 {
        match self {
            End::Clean { at } | End::Garbage { at, .. } => *at,
        }
    }
}

/// What one attempt to read a frame at an offset found.
enum Parsed {
    Valid {
        position: u64,
        next: u64,
        payload: Vec<u8>,
    },
    /// A frame header of zeroes (or fewer bytes than a header, all zero).
    Zero,
    Bad,
}

/// Reads the frames of one segment, never past `limit` bytes (the writer's committed length;
/// at open, the file's).
pub struct Reader {
    file: Box<dyn FsFile>,
    pub path: PathBuf,
    pub first: u64,
    version: u16,
    header_damage: Option<String>,
    at: u64,
    /// The lowest position the next record may have: the last record's + 1.
    position: u64,
    limit: u64,
    buf: Vec<u8>,
    buf_start: u64,
    end: Option<End>,
}

impl Reader {
    /// Opens a segment for reading. A header that does not check out is not an error: the
    /// frames are read as version 2 from the header's end (they carry their positions), the
    /// segment's first position taken from its name; [`Reader::header_damage`] says why.
    pub fn open(fs: &dyn Fs, path: &Path) -> io::Result<Self> {
        let file = fs.open_read(path)?;
        let len = file.len()?;
        let mut h = [0u8; HEADER_LEN as usize];
        let got = file.read_at(&mut h, 0)?;
        let (first, version, header_damage) = match decode_header(&h[..got]) {
            Ok((first, version)) => (first, version, None),
            Err(why) => (parse_file_name(path).unwrap_or(0), VERSION, Some(why)),
        };
        Ok(Self {
            file,
            path: path.to_path_buf(),
            first,
            version,
            header_damage,
            at: HEADER_LEN.min(len),
            position: first,
            limit: len,
            buf: Vec::new(),
            buf_start: 0,
            end: None,
        })
    }

    /// Why the header did not check out, if it did not.
    pub fn header_damage(&self) -> Option<&str> {
        self.header_damage.as_deref()
    }

    pub fn version(&self) -> u16 {
        self.version
    }

    /// Moves to byte offset `at`, which holds the frame of `position` (a place an earlier
    /// [`Frame`] named as `next`).
    pub fn seek(&mut self, at: u64, position: u64) {
        self.at = at;
        self.position = position;
        self.end = None;
    }

    /// Reads no further than `limit` bytes into the file. Raising it (the writer committed
    /// more) lets a reader that reached the old limit go on. The read buffer never holds bytes
    /// past the limit it was filled under, and committed bytes never change, so it stays good.
    pub fn set_limit(&mut self, limit: u64) {
        if limit != self.limit {
            self.end = None;
            if limit < self.limit {
                self.buf.clear();
            }
        }
        self.limit = limit;
    }

    /// The lowest position the next record read can have.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn offset(&self) -> u64 {
        self.at
    }

    /// How the data ended, once [`Reader::next_frame`] returned `None`.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// `len` bytes at `at` (fewer at the limit), through the read buffer.
    fn bytes(&mut self, at: u64, len: usize) -> io::Result<&[u8]> {
        let len = len.min(self.limit.saturating_sub(at) as usize);
        let have =
            at >= self.buf_start && at + len as u64 <= self.buf_start + self.buf.len() as u64;
        if !have {
            let want = len
                .max(READ_AHEAD)
                .min(self.limit.saturating_sub(at) as usize);
            self.buf.resize(want, 0);
            let got = self.file.read_at(&mut self.buf, at)?;
            self.buf.truncate(got);
            self.buf_start = at;
        }
        let from = (at - self.buf_start) as usize;
        let to = (from + len).min(self.buf.len());
        Ok(&self.buf[from..to])
    }

    /// The next frame, or `None` at the end of what can be read (see [`Reader::end`]).
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let at = self.at;
        if at >= self.limit {
            self.end = Some(End::Clean { at });
            return Ok(None);
        }
        if self.version == 1 {
            return self.next_frame_v1(at);
        }
        match self.parse_v2(at)? {
            Parsed::Valid {
                position,
                next,
                payload,
            } => Ok(Some(self.take(position, at, next, payload))),
            Parsed::Zero if self.rest_is_zero(at)? => {
                self.end = Some(End::Clean { at });
                Ok(None)
            }
            Parsed::Zero | Parsed::Bad => self.resync(at),
        }
    }

    fn take(&mut self, position: u64, at: u64, next: u64, payload: Vec<u8>) -> Frame {
        self.at = next;
        self.position = position + 1;
        Frame::Record {
            position,
            at,
            next,
            payload,
        }
    }

    fn parse_v2(&mut self, at: u64) -> io::Result<Parsed> {
        let lowest = self.position;
        let limit = self.limit;
        let h: [u8; FRAME_HEADER_LEN as usize] =
            match self.bytes(at, FRAME_HEADER_LEN as usize)?.try_into() {
                Ok(h) => h,
                Err(_) => {
                    let rest = self.bytes(at, FRAME_HEADER_LEN as usize)?;
                    return Ok(if rest.iter().all(|b| *b == 0) {
                        Parsed::Zero
                    } else {
                        Parsed::Bad
                    });
                }
            };
        if h.iter().all(|b| *b == 0) {
            return Ok(Parsed::Zero);
        }
        match check_header_v2(&h, at, limit, lowest) {
            None => Ok(Parsed::Bad),
            Some((len, position)) => {
                let payload = self.bytes(at + FRAME_HEADER_LEN, len as usize)?.to_vec();
                if payload.len() != len as usize || !crc_matches(&h, &payload) {
                    return Ok(Parsed::Bad);
                }
                Ok(Parsed::Valid {
                    position,
                    next: at + FRAME_HEADER_LEN + u64::from(len),
                    payload,
                })
            }
        }
    }

    /// Looks for the next frame that checks out after damage at `at`: a Damaged frame up to
    /// it, or the end (garbage) when there is none. Scans through the read buffer, so a
    /// segment of any size is searched to its end in bounded memory.
    fn resync(&mut self, at: u64) -> io::Result<Option<Frame>> {
        let lowest = self.position;
        let limit = self.limit;
        let mut found = None;
        let mut o = at + 1;
        while o + FRAME_HEADER_LEN < limit {
            let h: [u8; FRAME_HEADER_LEN as usize] =
                match self.bytes(o, FRAME_HEADER_LEN as usize)?.try_into() {
                    Ok(h) => h,
                    Err(_) => break,
                };
            if let Some((len, position)) = check_header_v2(&h, o, limit, lowest) {
                let payload = self.bytes(o + FRAME_HEADER_LEN, len as usize)?;
                if payload.len() == len as usize && crc_matches(&h, payload) {
                    found = Some((o, position));
                    break;
                }
            }
            o += 1;
        }
        match found {
            Some((next, position)) => {
                let lost = self.position..position;
                self.at = next;
                Ok(Some(Frame::Damaged { at, next, lost }))
            }
            None => {
                self.end = Some(if self.rest_is_zero(at)? {
                    End::Clean { at }
                } else {
                    End::Garbage {
                        at,
                        len: limit - at,
                    }
                });
                Ok(None)
            }
        }
    }

    /// Version 1: no positions in frames, so damage to a length cannot be skipped; a frame
    /// whose payload fails its checksum with frames after it is skipped, one position.
    fn next_frame_v1(&mut self, at: u64) -> io::Result<Option<Frame>> {
        let remaining = self.limit - at;
        let fh = self.bytes(at, FRAME_HEADER_LEN_V1 as usize)?.to_vec();
        let garbage = End::Garbage { at, len: remaining };
        if (fh.len() as u64) < FRAME_HEADER_LEN_V1 {
            self.end = Some(if fh.iter().all(|b| *b == 0) {
                End::Clean { at }
            } else {
                garbage
            });
            return Ok(None);
        }
        let len = u32::from_le_bytes(fh[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(fh[4..].try_into().expect("4 bytes"));
        let next = at + FRAME_HEADER_LEN_V1 + u64::from(len);
        if len == 0 {
            self.end = Some(if crc == 0 && self.rest_is_zero(at)? {
                End::Clean { at }
            } else {
                garbage
            });
            return Ok(None);
        }
        if len > MAX_RECORD || next > self.limit {
            self.end = Some(garbage);
            return Ok(None);
        }
        let payload = self.bytes(at + FRAME_HEADER_LEN_V1, len as usize)?.to_vec();
        if crc32c::crc32c(&payload) == crc {
            let position = self.position;
            return Ok(Some(self.take(position, at, next, payload)));
        }
        if self.rest_is_zero(next)? {
            // The last frame, failing its checksum: an interrupted write.
            self.end = Some(garbage);
            return Ok(None);
        }
        let lost = self.position..self.position + 1;
        self.position += 1;
        self.at = next;
        Ok(Some(Frame::Damaged { at, next, lost }))
    }

    /// True when every byte from `from` to the limit is zero.
    fn rest_is_zero(&mut self, from: u64) -> io::Result<bool> {
        let mut pos = from;
        while pos < self.limit {
            let chunk = self.bytes(pos, READ_AHEAD)?;
            if chunk.is_empty() {
                break;
            }
            if chunk.iter().any(|b| *b != 0) {
                return Ok(false);
            }
            pos += chunk.len() as u64;
        }
        Ok(true)
    }
}

/// The length and position of a version 2 frame header at `at` if they are plausible: a length
/// a writer writes, a frame that ends by `limit`, a position not below `lowest`.
fn check_header_v2(
    h: &[u8; FRAME_HEADER_LEN as usize],
    at: u64,
    limit: u64,
    lowest: u64,
) -> Option<(u32, u64)> {
    let len = u32::from_le_bytes(h[..4].try_into().expect("4 bytes"));
    let position = u64::from_le_bytes(h[4..12].try_into().expect("8 bytes"));
    let plausible = len != 0
        && len <= MAX_RECORD
        && at + FRAME_HEADER_LEN + u64::from(len) <= limit
        && position >= lowest;
    plausible.then_some((len, position))
}

fn crc_matches(h: &[u8; FRAME_HEADER_LEN as usize], payload: &[u8]) -> bool {
    let crc = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    crc32c::crc32c_append(crc32c::crc32c(payload), &h[..12]) == crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::fs::RealFs;

    fn segment(dir: &Path, first: u64, payloads: &[&[u8]]) -> PathBuf {
        let path = dir.join(file_name(first));
        let mut bytes = encode_header(first).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            encode_frame(p, first + i as u64, &mut bytes);
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read_all(path: &Path) -> (Vec<Frame>, End) {
        let mut r = Reader::open(&RealFs, path).unwrap();
        let mut frames = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            frames.push(f);
        }
        (frames, r.end().cloned().unwrap())
    }

    fn positions(frames: &[Frame]) -> Vec<(u64, bool)> {
        frames
            .iter()
            .flat_map(|f| match f {
                Frame::Record { position, .. } => vec![(*position, true)],
                Frame::Damaged { lost, .. } => lost.clone().map(|p| (p, false)).collect(),
            })
            .collect()
    }

    #[test]
    fn names_round_trip_and_refuse_strangers() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_file_name(Path::new("x/00000000000000000042.seg")),
            Some(42)
        );
        for bad in [
            "42.seg",
            "0000000000000000004x.seg",
            "00000000000000000042.tmp",
        ] {
            assert_eq!(parse_file_name(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn records_read_back_with_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 7, &[b"a", b"bb", b"ccc"]);
        let (frames, end) = read_all(&path);
        assert_eq!(positions(&frames), vec![(7, true), (8, true), (9, true)]);
        let Frame::Record { payload, .. } = &frames[1] else {
            panic!()
        };
        assert_eq!(payload, b"bb");
        assert_eq!(
            end,
            End::Clean {
                at: std::fs::metadata(&path).unwrap().len()
            }
        );
    }

    #[test]
    fn a_torn_tail_ends_the_segment_as_garbage_after_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 0, &[b"one", b"two"]);
        let good = std::fs::metadata(&path).unwrap().len();
        let mut bytes = std::fs::read(&path).unwrap();
        let mut torn = Vec::new();
        encode_frame(b"three-and-more", 2, &mut torn);
        bytes.extend_from_slice(&torn[..torn.len() - 4]);
        std::fs::write(&path, &bytes).unwrap();
        let two_then_garbage_at_good = || {
            let (frames, end) = read_all(&path);
            assert_eq!(frames.len(), 2);
            assert!(
                matches!(end, End::Garbage { at, .. } if at == good),
                "{end:?}"
            );
        };
        two_then_garbage_at_good();
        // The same torn frame inside preallocated zeroes: the same end.
        bytes.resize(bytes.len() + 4096, 0);
        std::fs::write(&path, &bytes).unwrap();
        two_then_garbage_at_good();
    }

    #[test]
    fn a_flipped_length_bit_skips_one_record_and_keeps_the_rest() {
        // Version 1 took this for a frame running past the end: a torn tail, cut off with
        // every record after it. The length is checksummed now, and positions resync.
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 10, &[b"first", b"second", b"third", b"fourth"]);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = HEADER_LEN as usize + FRAME_HEADER_LEN as usize + 5;
        bytes[second + 2] ^= 0x10; // the length's third byte: a frame of a megabyte
        std::fs::write(&path, &bytes).unwrap();
        let (frames, end) = read_all(&path);
        assert_eq!(
            positions(&frames),
            vec![(10, true), (11, false), (12, true), (13, true)]
        );
        assert!(matches!(end, End::Clean { .. }), "{end:?}");
    }

    #[test]
    fn a_flipped_payload_or_position_bit_skips_that_record_only() {
        let dir = tempfile::tempdir().unwrap();
        for offset in [FRAME_HEADER_LEN as usize, 5, 13] {
            let path = segment(dir.path(), 10, &[b"first", b"second", b"third"]);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = HEADER_LEN as usize + FRAME_HEADER_LEN as usize + 5 + offset;
            bytes[at] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            let (frames, end) = read_all(&path);
            assert_eq!(
                positions(&frames),
                vec![(10, true), (11, false), (12, true)],
                "flip at {offset}"
            );
            assert!(matches!(end, End::Clean { .. }));
        }
    }

    #[test]
    fn a_damaged_header_still_reads_version_2_frames_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 5, &[b"x", b"y"]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[13] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let r = Reader::open(&RealFs, &path).unwrap();
        assert!(r.header_damage().unwrap().contains("checksum"));
        let (frames, _) = read_all(&path);
        assert_eq!(positions(&frames), vec![(5, true), (6, true)]);
    }

    #[test]
    fn version_1_segments_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(3));
        let mut bytes = encode_header_version(3, 1).to_vec();
        for p in [b"a".as_slice(), b"bb", b"ccc"] {
            encode_frame_v1(p, &mut bytes);
        }
        // The middle payload damaged: skipped, its position not reused.
        bytes[HEADER_LEN as usize + 9 + 8] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (frames, end) = read_all(&path);
        assert_eq!(positions(&frames), vec![(3, true), (4, false), (5, true)]);
        assert!(matches!(end, End::Clean { .. }));
    }

    #[test]
    fn zeroes_after_the_last_record_are_the_end_but_garbage_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 0, &[b"x"]);
        let good = std::fs::metadata(&path).unwrap().len();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_all(&path).1, End::Clean { at: good });
        bytes.push(1);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_all(&path).1, End::Garbage { at, .. } if at == good));
    }

    #[test]
    fn a_raised_limit_reads_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 0, &[b"a", b"b"]);
        let committed = std::fs::metadata(&path).unwrap().len();
        let mut r = Reader::open(&RealFs, &path).unwrap();
        assert!(matches!(
            r.next_frame().unwrap(),
            Some(Frame::Record { position: 0, .. })
        ));
        let mut more = std::fs::read(&path).unwrap();
        encode_frame(b"c", 2, &mut more);
        std::fs::write(&path, &more).unwrap();
        r.set_limit(committed);
        assert!(matches!(
            r.next_frame().unwrap(),
            Some(Frame::Record { position: 1, .. })
        ));
        assert!(r.next_frame().unwrap().is_none());
        r.set_limit(more.len() as u64);
        assert!(matches!(
            r.next_frame().unwrap(),
            Some(Frame::Record { position: 2, .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic sweep beside the fuzzer: every prefix of a valid segment, and
        // the same with each byte flipped, reads to some end without panicking.
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 3, &[b"alpha", b"beta", b"gamma"]);
        let good = std::fs::read(&path).unwrap();
        for cut in 0..good.len() {
            for flip in [None, Some(cut)] {
                let mut bytes = good[..cut].to_vec();
                if let Some(i) = flip
                    && i < bytes.len()
                {
                    bytes[i] ^= 0x5a;
                }
                std::fs::write(&path, &bytes).unwrap();
                let mut r = Reader::open(&RealFs, &path).unwrap();
                while r.next_frame().unwrap().is_some() {}
                assert!(r.end().is_some());
            }
        }
    }
}
