//! The spool against the real file system: appends, rotation, bounds, release, recovery, and
//! one test per loss path the simulator's issue named (each failed on the spool before it).
use super::*;
use crate::core::event::Event;
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
            topic: Some(Arc::from("orders")),
            forwarded: None,
            auth: None,
            ..Event::for_test(id)
        },
    }
}

pub(crate) fn settings(dir: &Path) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        max_bytes: 1 << 30,
        max_age: None,
        min_room: 0,
    }
}

/// A spool in `dir` with 600-byte segments and 20 records `e0`..`e19` in them.
async fn twenty_in_small_segments(dir: &Path) -> Arc<Spool> {
    let mut s = settings(dir);
    s.segment_bytes = 600;
    let spool = Spool::open(s, &meter()).unwrap();
    for i in 0..20 {
        spool.append(&[record(&format!("e{i}"))]).await.unwrap();
    }
    spool
}

fn ids(dir: &Path) -> Vec<String> {
    read_events(dir)
        .unwrap()
        .into_iter()
        .map(|(_, j)| Event::from_structured_json(&j).unwrap().id)
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| segment::parse_file_name(p).is_some())
        .collect();
    v.sort();
    v
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

/// #28: a record keeps its event's forwarded request headers (`kafka.forward_headers`), in
/// order, repeats included, so a spooled event reaches Kafka with them as a direct one does;
/// a record written without them (before they existed) reads back with none.
#[test]
fn a_record_keeps_its_forwarded_headers_in_order() {
    let mut r = record("f");
    let forwarded: crate::core::event::Forwarded = Arc::from(vec![
        ("x-tenant-id".to_owned(), "acme".to_owned()),
        ("x-request-source".to_owned(), "web".to_owned()),
        ("x-tenant-id".to_owned(), "acme-eu".to_owned()),
    ]);
    r.event.forwarded = Some(forwarded.clone());
    let back = Record::decode(&r.encode()).unwrap();
    assert_eq!(back.event.forwarded.as_deref(), Some(&forwarded[..]));
    assert_eq!(back.trace, r.trace);
    assert_eq!(back.topic.as_deref(), Some("orders"));
    let without = Record::decode(&record("g").encode()).unwrap();
    assert!(without.event.forwarded.is_none());
}

/// #26 encodes records straight into their frames: the bytes on disk must be those of the
/// payload framed after the fact (the layout recovery and older readers know), with and
/// without topic and trace headers.
#[test]
fn a_frame_encoded_in_place_is_the_framed_payload() {
    let bare = Record {
        topic: None,
        trace: Vec::new(),
        ..record("b")
    };
    for r in [record("a"), bare] {
        let mut framed = Vec::new();
        segment::frame_payload(&r.encode(), &mut framed);
        let mut in_place = vec![7u8; 3];
        let at = segment::begin_frame(&mut in_place);
        r.entry().encode_into(&mut in_place);
        segment::end_frame(&mut in_place, at);
        assert_eq!(&in_place[3..], &framed[..]);
        // The header by hand too: frame_payload is begin_frame/end_frame around a copy.
        let header = &in_place[3..3 + segment::FRAME_HEADER_LEN as usize];
        let payload = &in_place[3 + segment::FRAME_HEADER_LEN as usize..];
        assert_eq!(header[0..4], (payload.len() as u32).to_le_bytes());
        assert_eq!(header[4..12], [0; 8], "no position yet");
        assert_eq!(header[12..16], crc32c::crc32c(payload).to_le_bytes());
        // The payload built by hand from its documented layout, independently of the encoder.
        let meta: &[u8] = match &r.topic {
            Some(_) => br#"{"topic":"orders","trace":[["traceparent","00-abc-def-01"]]}"#,
            None => b"{}",
        };
        let mut expected = vec![1u8];
        expected.extend_from_slice(&r.spooled_at_ms.to_le_bytes());
        expected.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        expected.extend_from_slice(meta);
        expected.extend_from_slice(&serde_json::to_vec(&r.event).unwrap());
        assert_eq!(payload, &expected[..]);
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
    assert_eq!(ids(dir.path()), ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn segments_rotate_by_size_and_go_once_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let spool = twenty_in_small_segments(dir.path()).await;
    let before = segment_files(dir.path()).len();
    assert!(before > 3, "{before} segments");
    spool.release(20).unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the open segment is left"
    );
    assert_eq!(spool.pending(), 0);
    drop(spool);
    let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
    assert_eq!(spool.forwarded(), 20, "the cursor survived");
    assert_eq!(
        spool.bytes(),
        std::fs::metadata(&segment_files(dir.path())[0])
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
        spool.release(3).unwrap();
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
    spool.release(1).unwrap();
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
    spool.release(spool.next_position()).unwrap();
    assert_eq!(spool.oldest_age(), Duration::ZERO);
    assert!(spool.append(&[record("e")]).await.is_ok());
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
async fn reopening_cuts_a_torn_tail_of_the_last_segment_and_writes_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
        spool.append(&[record("a"), record("b")]).await.unwrap();
    }
    let seg = dir.path().join(segment::file_name(0));
    let good = sealed_len(&seg).await;
    assert!(good < settings(dir.path()).segment_bytes);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
    assert_eq!(spool.recovery().torn_tails, 1);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good);
    // The cut bytes' positions are not handed out again (they could have held one).
    let c = spool.append(&[record("c")]).await.unwrap();
    assert!(c > 2, "{c}");
    assert!(dir.path().join(segment::file_name(c)).exists());
    assert_eq!(ids(dir.path()), ["a", "b", "c"]);
}

/// Defect 1: a crash between a segment's header sync and its first commit leaves a
/// header-only last segment. Recovery gave it `end == first`, the writer's `create_new` of
/// the same name failed and removed the file, the list held two entries for one path, and
/// the next release deleted the live segment under the writer.
#[tokio::test]
async fn a_header_only_last_segment_after_a_crash_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
        spool
            .append(&[record("a"), record("b"), record("c")])
            .await
            .unwrap();
    }
    let seg0 = dir.path().join(segment::file_name(0));
    sealed_len(&seg0).await;
    // The crash: a new segment whose header was synced, nothing after it.
    std::fs::write(
        dir.path().join(segment::file_name(3)),
        segment::encode_header(3),
    )
    .unwrap();
    let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
    let mut acked = Vec::new();
    for id in ["d", "e", "f"] {
        if spool.append(&[record(id)]).await.is_ok() {
            acked.push(id);
        }
    }
    assert_eq!(acked, ["d", "e", "f"], "every append is taken");
    // The first segment is forwarded: only it may go.
    spool.release(3).unwrap();
    for id in ["d", "e", "f"] {
        assert!(spool.append(&[record(&format!("{id}2"))]).await.is_ok());
    }
    drop(spool);
    let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
    assert_eq!(spool.forwarded(), 3);
    assert_eq!(ids(dir.path()), ["d", "e", "f", "d2", "e2", "f2"]);
}

/// Defect 2: a flipped bit in a length field made the frame "run past the end", taken for a
/// torn tail and cut off with every record after it, in a sealed segment where no write can
/// be torn.
#[tokio::test]
async fn a_flipped_length_bit_in_a_sealed_segment_keeps_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.segment_bytes = 2000;
    {
        let spool = Spool::open(s.clone(), &meter()).unwrap();
        for i in 0..30 {
            spool.append(&[record(&format!("e{i}"))]).await.unwrap();
        }
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 2, "{files:?}");
    let first = &files[0];
    let len_before = sealed_len(first).await;
    // The second record's length field, in the first (sealed) segment.
    let mut bytes = std::fs::read(first).unwrap();
    let first_len = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
    let header = 24;
    let frame_header = if bytes[8] == 1 { 8 } else { 16 };
    let second = header + frame_header + first_len;
    bytes[second + 2] ^= 0x01;
    std::fs::write(first, &bytes).unwrap();
    let spool = Spool::open(s, &meter()).unwrap();
    assert_eq!(
        std::fs::metadata(first).unwrap().len(),
        len_before,
        "nothing of a sealed segment is cut"
    );
    assert!(spool.recovery().corrupt_records >= 1);
    let got = ids(dir.path());
    assert_eq!(got.len(), 29, "only the damaged record is lost: {got:?}");
    assert!(!got.contains(&"e1".to_string()));
}

/// Defect 3: release wrote the cursor, took the segments off the list, then deleted them;
/// one failed delete returned early, leaving files on disk that were no longer tracked and a
/// byte count that never fell.
#[tokio::test]
async fn a_failed_delete_is_retried_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = twenty_in_small_segments(dir.path()).await;
    let files = segment_files(dir.path());
    assert!(files.len() > 3);
    // The oldest segment cannot be deleted for now: a directory sits in its place.
    let aside = dir.path().join("aside");
    std::fs::rename(&files[0], &aside).unwrap();
    std::fs::create_dir(&files[0]).unwrap();
    std::fs::write(files[0].join("x"), b"x").unwrap();
    assert!(spool.release(20).is_err());
    // The fault clears; the next release deletes everything forwarded.
    std::fs::remove_dir_all(&files[0]).unwrap();
    std::fs::rename(&aside, &files[0]).unwrap();
    spool.release(20).unwrap();
    let left = segment_files(dir.path());
    assert_eq!(left.len(), 1, "only the open segment: {left:?}");
    assert_eq!(
        spool.bytes(),
        spool.segments().iter().map(|s| s.committed).sum::<u64>()
    );
    assert_eq!(spool.segments().len(), 1);
}
