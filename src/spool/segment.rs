//! The spool's on-disk format, and nothing else: segment files, their header, the framing of
//! each record, and a reader that recovers from whatever bytes it finds. Pure functions over
//! bytes and files; the writer thread and the forwarder live in `spool/mod.rs` and
//! `spool/forward.rs`.
//!
//! A segment is `<first position, 20 digits>.seg`:
//!
//! ```text
//! header  (24 bytes): magic "EGSPOOL\0" | version u16 LE = 1 | reserved u16 = 0
//!                     | first position u64 LE | CRC32C of the preceding 20 bytes, u32 LE
//! record  (repeated): payload length u32 LE (1..=MAX_RECORD) | CRC32C of the payload u32 LE
//!                     | payload
//! ```
//!
//! Record `i` of a segment (counting from 0) has position `first + i`. The payload itself is
//! [`crate::spool::record`]'s business. A length of 0 is never written, so zeroes after the
//! last record (a preallocated or zero-filled tail) read as the end.
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"EGSPOOL\0";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: u64 = 24;
pub const FRAME_HEADER_LEN: u64 = 8;
/// No record is longer than this (an event is at most `limits.max_event_size`, 512 KiB by
/// default, plus a small envelope); a longer length field can only be damage.
pub const MAX_RECORD: u32 = 64 << 20;
pub const EXTENSION: &str = "seg";

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

pub fn encode_header(first: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first position a header names, or why the header is not one.
pub fn decode_header(h: &[u8]) -> Result<u64, String> {
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
    if version != VERSION {
        return Err(format!("unknown segment version {version}"));
    }
    Ok(u64::from_le_bytes(h[12..20].try_into().expect("8 bytes")))
}

/// Appends one framed record to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!payload.is_empty() && payload.len() <= MAX_RECORD as usize);
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
    /// A frame with a plausible length whose payload does not match its checksum: skipped,
    /// its position is not reused, and reading goes on after it.
    Corrupt { position: u64, at: u64, next: u64 },
}

/// How a scan of a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// At the end of the valid data (`at`), with nothing but zeroes or nothing after it.
    Clean { at: u64 },
    /// A frame that runs past the end of the file, or the last frame, failing its checksum
    /// with only zeroes after it: an interrupted write, never acknowledged.
    Torn { at: u64, len: u64 },
    /// A length field no writer would write: the rest of the segment from `at` is unreadable.
    Unreadable { at: u64, len: u64 },
}

impl End {
    pub fn valid_len(&self) -> u64 {
        match self {
            End::Clean { at } | End::Torn { at, .. } | End::Unreadable { at, .. } => *at,
        }
    }
}

/// Reads frames of one segment from byte offset `from` (the position `first_position` of the
/// frame there), never past `limit` bytes (the writer's committed length; `None`: the file's).
pub struct Reader {
    file: io::BufReader<File>,
    pub path: PathBuf,
    pub first: u64,
    at: u64,
    position: u64,
    limit: u64,
    end: Option<End>,
}

impl Reader {
    /// Opens a segment and checks its header. `Err` when the file cannot be read or its header
    /// is damaged (the whole segment is then unreadable).
    pub fn open(path: &Path) -> io::Result<Result<Self, String>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut h = [0u8; HEADER_LEN as usize];
        let got = read_up_to(&mut file, &mut h)?;
        let first = match decode_header(&h[..got]) {
            Ok(f) => f,
            Err(why) => return Ok(Err(why)),
        };
        Ok(Ok(Self {
            file: io::BufReader::with_capacity(1 << 16, file),
            path: path.to_path_buf(),
            first,
            at: HEADER_LEN,
            position: first,
            limit: len,
            end: None,
        }))
    }

    /// Moves to byte offset `at`, which holds the frame of `position` (a place an earlier
    /// [`Frame`] named as `next`).
    pub fn seek(&mut self, at: u64, position: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(at))?;
        self.at = at;
        self.position = position;
        self.end = None;
        Ok(())
    }

    /// Reads no further than `limit` bytes into the file. Raising it (the writer committed
    /// more) lets a reader that reached the old limit go on. The read buffer is dropped then:
    /// it may hold bytes past the old limit from before they were committed (a write the
    /// writer later cut back and wrote again).
    pub fn set_limit(&mut self, limit: u64) -> io::Result<()> {
        if limit != self.limit {
            self.end = None;
            self.file.seek(SeekFrom::Start(self.at))?;
        }
        self.limit = limit;
        Ok(())
    }

    /// The position the next record read will have.
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

    /// The next frame, or `None` at the end of what can be read (see [`Reader::end`]).
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let at = self.at;
        let remaining = self.limit.saturating_sub(at);
        if remaining == 0 {
            self.end = Some(End::Clean { at });
            return Ok(None);
        }
        let mut fh = [0u8; FRAME_HEADER_LEN as usize];
        let got = read_up_to(&mut self.file, &mut fh[..remaining.min(8) as usize])?;
        if (got as u64) < FRAME_HEADER_LEN {
            self.end = Some(if fh[..got].iter().all(|b| *b == 0) {
                End::Clean { at }
            } else {
                End::Torn { at, len: remaining }
            });
            return Ok(None);
        }
        let len = u32::from_le_bytes(fh[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(fh[4..].try_into().expect("4 bytes"));
        if len == 0 {
            // Zeroes: the end of what was written (a zero-filled tail), unless more than
            // zeroes follow, which is damage.
            let rest_zero = crc == 0 && self.rest_is_zero(at + FRAME_HEADER_LEN)?;
            self.end = Some(if rest_zero {
                End::Clean { at }
            } else {
                End::Unreadable { at, len: remaining }
            });
            return Ok(None);
        }
        if len > MAX_RECORD {
            self.end = Some(End::Unreadable { at, len: remaining });
            return Ok(None);
        }
        let next = at + FRAME_HEADER_LEN + u64::from(len);
        if next > self.limit {
            self.end = Some(End::Torn { at, len: remaining });
            return Ok(None);
        }
        let mut payload = vec![0u8; len as usize];
        self.file.read_exact(&mut payload)?;
        let intact = crc32c::crc32c(&payload) == crc;
        self.at = next;
        if !intact && self.rest_is_zero(next)? {
            // A frame that does not match its checksum with nothing but zeroes after it: the
            // last write, interrupted (a preallocated segment is zeroes past it, so such a
            // write does not run past the end of the file).
            self.at = at;
            self.file.seek(SeekFrom::Start(at))?;
            self.end = Some(End::Torn { at, len: remaining });
            return Ok(None);
        }
        let position = self.position;
        self.position += 1;
        if intact {
            Ok(Some(Frame::Record {
                position,
                at,
                next,
                payload,
            }))
        } else {
            Ok(Some(Frame::Corrupt { position, at, next }))
        }
    }

    /// True when every byte from `from` to the limit is zero (restores the read position).
    fn rest_is_zero(&mut self, from: u64) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        let mut pos = from;
        self.file.seek(SeekFrom::Start(from))?;
        let mut zero = true;
        while pos < self.limit {
            let want = (self.limit - pos).min(buf.len() as u64) as usize;
            let got = read_up_to(&mut self.file, &mut buf[..want])?;
            if got == 0 {
                break;
            }
            if buf[..got].iter().any(|b| *b != 0) {
                zero = false;
                break;
            }
            pos += got as u64;
        }
        self.file.seek(SeekFrom::Start(self.at))?;
        Ok(zero)
    }
}

/// `read` until `buf` is full or the file ends; the count read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn segment(dir: &Path, first: u64, payloads: &[&[u8]]) -> PathBuf {
        let path = dir.join(file_name(first));
        let mut bytes = encode_header(first).to_vec();
        for p in payloads {
            encode_frame(p, &mut bytes);
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read_all(path: &Path) -> (Vec<Frame>, End) {
        let mut r = Reader::open(path).unwrap().unwrap();
        let mut frames = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            frames.push(f);
        }
        (frames, r.end().cloned().unwrap())
    }

    fn positions(frames: &[Frame]) -> Vec<(u64, bool)> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Record { position, .. } => (*position, true),
                Frame::Corrupt { position, .. } => (*position, false),
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
    fn a_torn_tail_ends_the_segment_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 0, &[b"one", b"two"]);
        let good = std::fs::metadata(&path).unwrap().len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut torn = Vec::new();
        encode_frame(b"three-and-more", &mut torn);
        f.write_all(&torn[..torn.len() - 4]).unwrap();
        let (frames, end) = read_all(&path);
        assert_eq!(frames.len(), 2);
        assert!(matches!(end, End::Torn { at, .. } if at == good), "{end:?}");
    }

    #[test]
    fn a_torn_write_inside_preallocated_zeroes_is_a_torn_tail_not_damage() {
        // The frame's length landed but only part of its payload did; zeroes follow (the
        // segment was preallocated), so it does not run past the end of the file.
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 0, &[b"one", b"two"]);
        let good = std::fs::metadata(&path).unwrap().len();
        let mut bytes = std::fs::read(&path).unwrap();
        let mut torn = Vec::new();
        encode_frame(b"three-and-more", &mut torn);
        let half = torn.len() - 6;
        torn[half..].fill(0);
        bytes.extend_from_slice(&torn);
        bytes.resize(bytes.len() + 4096, 0);
        std::fs::write(&path, bytes).unwrap();
        let (frames, end) = read_all(&path);
        assert_eq!(positions(&frames), vec![(0, true), (1, true)]);
        assert!(matches!(end, End::Torn { at, .. } if at == good), "{end:?}");
        // The same frame with a record after it is damage in the middle: reported, skipped.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(good as usize + torn.len());
        encode_frame(b"four", &mut bytes);
        std::fs::write(&path, bytes).unwrap();
        let (frames, end) = read_all(&path);
        assert_eq!(
            positions(&frames),
            vec![(0, true), (1, true), (2, false), (3, true)]
        );
        assert!(matches!(end, End::Clean { .. }), "{end:?}");
    }

    #[test]
    fn a_flipped_payload_byte_skips_one_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 10, &[b"first", b"second", b"third"]);
        let mut bytes = std::fs::read(&path).unwrap();
        // The second record's payload starts after the header, frame 1 (8 + 5) and its own
        // frame header.
        let at = HEADER_LEN as usize + 13 + 8;
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (frames, end) = read_all(&path);
        assert_eq!(
            positions(&frames),
            vec![(10, true), (11, false), (12, true)]
        );
        assert!(matches!(end, End::Clean { .. }));
    }

    #[test]
    fn a_damaged_length_makes_the_rest_unreadable_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 0, &[b"first", b"second"]);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = HEADER_LEN as usize + 13;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        let (frames, end) = read_all(&path);
        assert_eq!(positions(&frames), vec![(0, true)]);
        assert!(
            matches!(end, End::Unreadable { at: a, .. } if a == at as u64),
            "{end:?}"
        );
    }

    #[test]
    fn zeroes_after_the_last_record_are_the_end_but_garbage_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 0, &[b"x"]);
        let good = std::fs::metadata(&path).unwrap().len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        assert_eq!(read_all(&path).1, End::Clean { at: good });
        f.write_all(&[1u8]).unwrap();
        assert!(matches!(read_all(&path).1, End::Unreadable { .. }));
    }

    #[test]
    fn a_damaged_header_is_an_error_naming_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 5, &[b"x"]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[13] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let why = Reader::open(&path).unwrap().err().unwrap();
        assert!(why.contains("checksum"), "{why}");
        std::fs::write(&path, b"short").unwrap();
        assert!(Reader::open(&path).unwrap().is_err());
    }

    #[test]
    fn a_raised_limit_reads_what_was_committed_not_a_stale_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 0, &[b"a", b"b"]);
        let committed = std::fs::metadata(&path).unwrap().len();
        // An uncommitted write after b (its group will fail and be cut back).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut stale = Vec::new();
        encode_frame(b"never-acknowledged", &mut stale);
        f.write_all(&stale).unwrap();
        let mut r = Reader::open(&path).unwrap().unwrap();
        r.set_limit(committed).unwrap();
        // The reader takes one record and stops (a full window), its buffer holding the rest.
        assert!(matches!(
            r.next_frame().unwrap(),
            Some(Frame::Record { position: 0, .. })
        ));
        // The writer cuts the failed write back and commits another record in its place.
        f.set_len(committed).unwrap();
        let mut good = Vec::new();
        encode_frame(b"c", &mut good);
        f.write_all(&good).unwrap();
        r.set_limit(committed + good.len() as u64).unwrap();
        let mut payloads = Vec::new();
        while let Some(frame) = r.next_frame().unwrap() {
            match frame {
                Frame::Record { payload, .. } => payloads.push(payload),
                Frame::Corrupt { position, .. } => {
                    panic!("record {position} read from a stale buffer")
                }
            }
        }
        assert_eq!(payloads, [b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic sweep in place of the fuzzer: every prefix of a valid segment,
        // and the same with each byte flipped, reads to some end without panicking.
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
                if let Ok(Ok(mut r)) = Reader::open(&path) {
                    while r.next_frame().unwrap().is_some() {}
                    assert!(r.end().is_some());
                }
            }
        }
    }
}
