//! The forwarder against the real file system and a scripted destination: order per key
//! after a partial failure, giving up on records that keep failing whatever the error, and
//! parking that keeps a record's bytes or stops the forwarder there (each failed before).
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use super::*;
use crate::spool::segment;
use crate::spool::tests::settings;

/// What the scripted destination answers for a record, by its id and how often it was sent.
type Script = Box<dyn Fn(&str, usize) -> Result<Stored, Error> + Send + Sync>;

struct Scripted {
    script: Script,
    sent: Mutex<HashMap<String, usize>>,
    /// Stored records, in the order the destination took them: (id, ordering key).
    log: Mutex<Vec<(String, Option<String>)>>,
    dead_letters: Mutex<Vec<String>>,
    with_dead_letter: bool,
}

impl Scripted {
    fn new(with_dead_letter: bool, script: Script) -> Arc<Self> {
        Arc::new(Self {
            script,
            sent: Mutex::default(),
            log: Mutex::default(),
            dead_letters: Mutex::default(),
            with_dead_letter,
        })
    }

    fn stored(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl Destination for Scripted {
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Vec<Result<Stored, Error>>> {
        let results = records
            .iter()
            .map(|r| {
                let id = r.event.id.clone();
                let n = {
                    let mut sent = self.sent.lock().unwrap();
                    let n = sent.entry(id.clone()).or_default();
                    *n += 1;
                    *n
                };
                let result = (self.script)(&id, n);
                if result.is_ok() {
                    self.log.lock().unwrap().push((id, self.ordering_key(r)));
                }
                result
            })
            .collect();
        Box::pin(async move { results })
    }

    fn dead_letter<'a>(
        &'a self,
        record: &'a Record,
        _why: &'a str,
    ) -> Option<BoxFuture<'a, Result<Stored, Error>>> {
        self.with_dead_letter.then(|| {
            self.dead_letters
                .lock()
                .unwrap()
                .push(record.event.id.clone());
            Box::pin(async {
                Ok(Stored {
                    partition: 0,
                    offset: 0,
                })
            }) as BoxFuture<'a, _>
        })
    }

    fn ready(&self) -> bool {
        true
    }
}

fn ok() -> Result<Stored, Error> {
    Ok(Stored {
        partition: 0,
        offset: 0,
    })
}

fn keyed(id: &str, key: &str) -> Record {
    let mut r = crate::spool::tests::record(id);
    r.event.subject = Some(key.into());
    r
}

fn meter() -> Meter {
    opentelemetry::global::meter("test")
}

/// Awaits `cond`, polling; panics naming `what` after 20 s.
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn start(
    spool: &Arc<Spool>,
    dest: Arc<Scripted>,
    give_up_after: Duration,
) -> (Control, Arc<Status>) {
    let f = Forwarder::new(spool.clone(), dest, give_up_after, &meter())
        .give_up_transient_after(give_up_after);
    let status = f.status();
    let control = Control::default();
    tokio::spawn(f.run(control.clone()));
    (control, status)
}

/// Defect 4: record i of a key failed (a full queue, a timeout) while a later record of the
/// same key was stored; the forwarder re-sent only i, so Kafka had them out of order.
#[tokio::test]
async fn a_record_overtaken_by_a_later_one_of_its_key_is_never_sent_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
    spool
        .append(&[keyed("a1", "k"), keyed("a2", "k"), keyed("b1", "j")])
        .await
        .unwrap();
    // The first send of a1 fails for a reason that passes; a2 and b1 are stored.
    let dest = Scripted::new(
        true,
        Box::new(|id, n| {
            if id == "a1" && n == 1 {
                Err(Error::unavailable("queue full"))
            } else {
                ok()
            }
        }),
    );
    let (control, _) = start(&spool, dest.clone(), Duration::from_secs(30));
    wait_for("the window is released", || spool.forwarded() == 3).await;
    control.stop.cancel();
    let stored = dest.stored();
    let a1 = stored.iter().position(|id| id == "a1");
    let a2 = stored.iter().position(|id| id == "a2").expect("a2 stored");
    assert!(
        a1.is_none_or(|a1| a1 < a2),
        "k's records reached the topic out of order: {stored:?}"
    );
    assert_eq!(
        *dest.dead_letters.lock().unwrap(),
        ["a1"],
        "a1 is kept: in the dead-letter topic"
    );
}

/// Defect 5: a record that failed with an error classified retryable was retried for ever,
/// so `give_up_after` never applied and it stalled the spool.
#[tokio::test]
async fn a_record_that_keeps_failing_for_any_reason_is_given_up_after_give_up_after() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
    spool
        .append(&[keyed("stuck", "k"), keyed("next", "j")])
        .await
        .unwrap();
    let dest = Scripted::new(
        false,
        Box::new(|id, _| {
            if id == "stuck" {
                Err(Error::unavailable("NOT_ENOUGH_REPLICAS"))
            } else {
                ok()
            }
        }),
    );
    let (control, status) = start(&spool, dest.clone(), Duration::from_millis(300));
    wait_for("the stuck record is parked and the spool drained", || {
        spool.forwarded() == 2
    })
    .await;
    control.stop.cancel();
    assert_eq!(status.parked(), 1);
    assert_eq!(dest.stored(), ["next"]);
    let parked = crate::spool::read_events(&dir.path().join(PARKED_DIR)).unwrap();
    assert_eq!(parked.len(), 1);
    assert!(String::from_utf8_lossy(&parked[0].1).contains("\"stuck\""));
}

/// A version 1 segment (what every release so far wrote) holding a record this version cannot
/// decode between two good ones.
fn segment_with_an_undecodable_record(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let bad = b"\x09 a payload of a version from the future".to_vec();
    let mut bytes = segment::encode_header_version(0, 1).to_vec();
    segment::encode_frame_v1(&crate::spool::tests::record("before").encode(), &mut bytes);
    segment::encode_frame_v1(&bad, &mut bytes);
    segment::encode_frame_v1(&crate::spool::tests::record("after").encode(), &mut bytes);
    std::fs::write(dir.join(segment::file_name(0)), bytes).unwrap();
    bad
}

/// Defect 6: a record that could not be decoded was parked as a reason string only, and its
/// segment deleted: the record's bytes were gone.
#[tokio::test]
async fn an_undecodable_record_is_parked_with_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = segment_with_an_undecodable_record(dir.path());
    let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
    let dest = Scripted::new(false, Box::new(|_, _| ok()));
    let (control, _) = start(&spool, dest.clone(), Duration::from_secs(30));
    wait_for("the segment is forwarded", || spool.forwarded() == 3).await;
    control.stop.cancel();
    assert_eq!(dest.stored(), ["before", "after"]);
    let parked = dir.path().join(PARKED_DIR).join(segment::file_name(1));
    let mut reader = segment::Reader::open(&crate::spool::RealFs, &parked).unwrap();
    match reader.next_frame().unwrap() {
        Some(segment::Frame::Record { payload, .. }) => assert_eq!(payload, bad),
        other => panic!("parked record unreadable: {other:?}"),
    }
}

/// Defect 6: a park that failed was logged and treated as done: the forwarder released past
/// a record that was then nowhere.
#[tokio::test]
async fn a_park_that_fails_stops_the_forwarder_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    segment_with_an_undecodable_record(dir.path());
    // `parked` cannot be a directory: a file is in its place.
    let blocker = dir.path().join(PARKED_DIR);
    std::fs::write(&blocker, b"in the way").unwrap();
    let spool = Spool::open(settings(dir.path()), &meter()).unwrap();
    let dest = Scripted::new(false, Box::new(|_, _| ok()));
    let (control, status) = start(&spool, dest.clone(), Duration::from_secs(30));
    wait_for("the forwarder reports the stall", || {
        status.stalled().is_some()
    })
    .await;
    assert!(spool.forwarded() <= 1, "released past an unparked record");
    assert!(dir.path().join(segment::file_name(0)).exists());
    // The way clears: the record is parked and forwarding goes on.
    std::fs::remove_file(&blocker).unwrap();
    wait_for("the segment is forwarded", || spool.forwarded() == 3).await;
    control.stop.cancel();
    assert!(status.stalled().is_none());
    assert!(blocker.join(segment::file_name(1)).exists());
}

/// The real file system, with directory syncs and deletes that take `delay` (a disk busy
/// with other flushes).
struct SlowFs {
    delay: Duration,
}

impl crate::spool::Fs for SlowFs {
    fn create_new(&self, p: &Path) -> std::io::Result<Box<dyn crate::spool::fs::FsFile>> {
        crate::spool::RealFs.create_new(p)
    }
    fn create(&self, p: &Path) -> std::io::Result<Box<dyn crate::spool::fs::FsFile>> {
        crate::spool::RealFs.create(p)
    }
    fn open(&self, p: &Path) -> std::io::Result<Box<dyn crate::spool::fs::FsFile>> {
        crate::spool::RealFs.open(p)
    }
    fn open_read(&self, p: &Path) -> std::io::Result<Box<dyn crate::spool::fs::FsFile>> {
        crate::spool::RealFs.open_read(p)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        crate::spool::RealFs.rename(from, to)
    }
    fn remove_file(&self, p: &Path) -> std::io::Result<()> {
        std::thread::sleep(self.delay);
        crate::spool::RealFs.remove_file(p)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        crate::spool::RealFs.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        crate::spool::RealFs.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::thread::sleep(self.delay);
        crate::spool::RealFs.sync_dir(dir)
    }
    fn exists(&self, p: &Path) -> bool {
        crate::spool::RealFs.exists(p)
    }
    fn available(&self, dir: &Path) -> std::io::Result<u64> {
        crate::spool::RealFs.available(dir)
    }
}

/// Defect 8: `release` (the cursor, deletes, directory syncs) ran on a tokio worker once per
/// window, stalling every request on that worker behind the disk. On a runtime with a single
/// worker, a ticker beside the forwarder stays on time while releases take 300 ms each.
#[test]
fn releasing_forwarded_segments_does_not_block_the_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.segment_bytes = 600;
        let fs: Arc<dyn crate::spool::Fs> = Arc::new(SlowFs {
            delay: Duration::from_millis(300),
        });
        let (spool, writer) =
            Spool::open_with(fs, Arc::new(crate::spool::now_ms), s, &meter()).unwrap();
        std::thread::spawn(move || writer.run());
        for i in 0..12 {
            spool.append(&[keyed(&format!("e{i}"), "k")]).await.unwrap();
        }
        let dest = Scripted::new(false, Box::new(|_, _| ok()));
        let (control, _) = start(&spool, dest.clone(), Duration::from_secs(30));
        let mut worst = Duration::ZERO;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = std::time::Instant::now();
        while spool.forwarded() < 12 || spool.segments().len() > 1 {
            tick.tick().await;
            worst = worst.max(last.elapsed());
            last = std::time::Instant::now();
        }
        control.stop.cancel();
        assert_eq!(dest.stored().len(), 12);
        assert!(
            worst < Duration::from_millis(200),
            "the runtime's only worker stalled for {worst:?}"
        );
    });
}
