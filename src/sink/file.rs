//! The embedded default sink: a local append-only log, `events.jsonl` in `storage.data_dir`,
//! one CloudEvents structured-mode JSON event per line. A request is answered only after its
//! lines are written and fsynced. One writer thread does group commit: it takes every request
//! waiting at that moment, writes them all, and pays one `fdatasync` for the lot. Its gauges
//! (`local_log_events`, `local_log_size_bytes`) are registered on the meter it is given.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use opentelemetry::metrics::Meter;
use tokio::sync::{mpsc, oneshot};

use super::{EventSink, FlushReport, OpenError, Stored};
use crate::error::Error;
use crate::event::Event;

/// File name of the log inside the data directory.
pub const LOG_FILE: &str = "events.jsonl";

/// Requests waiting for the writer; past this, `publish` waits (backpressure).
const QUEUE_DEPTH: usize = 4096;

struct Job {
    bytes: Vec<u8>,
    lines: u64,
    reply: oneshot::Sender<Result<u64, String>>,
}

pub struct FileSink {
    path: PathBuf,
    tx: mpsc::Sender<Job>,
    healthy: Arc<AtomicBool>,
    next_line: Arc<AtomicU64>,
    /// Committed length of the log, kept by the writer.
    len: Arc<AtomicU64>,
}

impl FileSink {
    /// Opens (creating) the log. A last line without its newline, left by a crash mid-write,
    /// is cut off: it was never acknowledged.
    pub fn open(dir: &Path, meter: &Meter) -> Result<Self, OpenError> {
        let fail = |action: &'static str, source: std::io::Error| OpenError::LocalLog {
            action,
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail("create the data directory", e))?;
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| fail("open the log in", e))?;
        let (lines, complete_len) =
            count_lines(&mut file).map_err(|e| fail("read the log in", e))?;
        let len = file
            .metadata()
            .map_err(|e| fail("stat the log in", e))?
            .len();
        if complete_len != len {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = len - complete_len,
                "cutting an incomplete last line left by an interrupted write"
            );
            file.set_len(complete_len)
                .map_err(|e| fail("repair the log in", e))?;
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let healthy = Arc::new(AtomicBool::new(true));
        let next_line = Arc::new(AtomicU64::new(lines));
        let len = Arc::new(AtomicU64::new(complete_len));
        let writer = Writer {
            file,
            len: len.clone(),
            next_line: next_line.clone(),
            healthy: healthy.clone(),
        };
        std::thread::Builder::new()
            .name("local-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| fail("start the log writer for", e))?;
        let sink = Self {
            path,
            tx,
            healthy,
            next_line,
            len,
        };
        sink.register_instruments(meter);
        Ok(sink)
    }

    fn register_instruments(&self, meter: &Meter) {
        let lines = self.next_line.clone();
        meter
            .i64_observable_gauge("local_log_events")
            .with_description("Events in the local log")
            .with_callback(move |o| o.observe(lines.load(Ordering::Relaxed) as i64, &[]))
            .build();
        let len = self.len.clone();
        meter
            .i64_observable_gauge("local_log_size")
            .with_unit("By")
            .with_description("Committed size of the local log")
            .with_callback(move |o| o.observe(len.load(Ordering::Relaxed) as i64, &[]))
            .build();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Counts complete lines and returns the length up to the last newline.
fn count_lines(file: &mut File) -> std::io::Result<(u64, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut lines, mut pos, mut complete) = (0u64, 0u64, 0u64);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' {
                lines += 1;
                complete = pos + i as u64 + 1;
            }
        }
        pos += n as u64;
    }
    Ok((lines, complete))
}

struct Writer {
    file: File,
    len: Arc<AtomicU64>,
    next_line: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
}

impl Writer {
    /// A plain thread rather than a tokio task: every iteration blocks in write and fsync, and
    /// a dedicated thread keeps that off the runtime's two worker threads.
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            jobs.push(first);
            while let Ok(more) = rx.try_recv() {
                jobs.push(more);
            }
            let result = self.commit(&jobs);
            match result {
                Ok(()) => {
                    for job in jobs.drain(..) {
                        let first_line = self.next_line.fetch_add(job.lines, Ordering::SeqCst);
                        let _ = job.reply.send(Ok(first_line));
                    }
                }
                Err(e) => {
                    let msg = format!("local log write failed: {e}");
                    tracing::error!(error = %e, "local log write failed; rolled back the uncommitted lines");
                    for job in jobs.drain(..) {
                        let _ = job.reply.send(Err(msg.clone()));
                    }
                }
            }
        }
    }

    /// Writes every job and syncs once. On failure the file is cut back to its last committed
    /// length, so no half-written group stays behind.
    fn commit(&mut self, jobs: &[Job]) -> std::io::Result<()> {
        let attempt = (|| {
            for job in jobs {
                self.file.write_all(&job.bytes)?;
            }
            self.file.sync_data()
        })();
        match attempt {
            Ok(()) => {
                let written = jobs.iter().map(|j| j.bytes.len() as u64).sum::<u64>();
                self.len.fetch_add(written, Ordering::Relaxed);
                self.healthy.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                let _ = self.file.set_len(self.len.load(Ordering::Relaxed));
                Err(e)
            }
        }
    }
}

impl EventSink for FileSink {
    fn name(&self) -> &'static str {
        "local-log"
    }

    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Vec<Result<Stored, Error>>> {
        async move {
            let mut bytes = Vec::with_capacity(events.len() * 256);
            for e in events {
                serde_json::to_writer(&mut bytes, e).expect("an Event always serializes");
                bytes.push(b'\n');
            }
            let (reply, rx) = oneshot::channel();
            let job = Job {
                bytes,
                lines: events.len() as u64,
                reply,
            };
            let outcome = match self.tx.send(job).await {
                Ok(()) => rx
                    .await
                    .unwrap_or_else(|_| Err("local log writer stopped".into())),
                Err(_) => Err("local log writer stopped".into()),
            };
            match outcome {
                Ok(first) => (0..events.len())
                    .map(|i| {
                        Ok(Stored {
                            partition: 0,
                            offset: (first + i as u64) as i64,
                        })
                    })
                    .collect(),
                Err(msg) => events
                    .iter()
                    .map(|_| Err(Error::unavailable(msg.clone())))
                    .collect(),
            }
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    fn not_ready_reason(&self) -> String {
        "the local log is not writable (see the error log)".into()
    }

    fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "sink": "local-log",
            "path": self.path.display().to_string(),
            "lines": self.next_line.load(Ordering::Relaxed),
            "size_bytes": self.len.load(Ordering::Relaxed),
            "writable": self.is_ready(),
        })
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'_, FlushReport> {
        // Every publish already waited for its fsync: nothing is ever buffered here.
        async { FlushReport::default() }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Data;

    fn meter() -> Meter {
        opentelemetry::global::meter("test")
    }

    fn ev(id: &str) -> Event {
        Event {
            id: id.into(),
            source: "s".into(),
            ty: "t".into(),
            subject: None,
            time: chrono::Utc::now(),
            datacontenttype: None,
            dataschema: None,
            data: Data::None,
            extensions: Default::default(),
            topic: None,
        }
    }

    #[tokio::test]
    async fn concurrent_publishes_get_distinct_consecutive_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FileSink::open(dir.path(), &meter()).unwrap());
        let mut tasks = Vec::new();
        for t in 0..20 {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move {
                let events: Vec<Event> = (0..5).map(|i| ev(&format!("{t}-{i}"))).collect();
                let r = sink.publish(&events).await;
                r.into_iter().map(|r| r.unwrap().offset).collect::<Vec<_>>()
            }));
        }
        let mut offsets = Vec::new();
        for t in tasks {
            let o = t.await.unwrap();
            assert!(o.windows(2).all(|w| w[1] == w[0] + 1), "{o:?}");
            offsets.extend(o);
        }
        offsets.sort();
        assert_eq!(offsets, (0..100).collect::<Vec<i64>>());
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(text.lines().count(), 100);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["specversion"], "1.0");
        }
    }

    #[tokio::test]
    async fn reopening_continues_numbering_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let sink = FileSink::open(dir.path(), &meter()).unwrap();
            let r = sink.publish(&[ev("a"), ev("b")]).await;
            assert_eq!(r[1].as_ref().unwrap().offset, 1);
        }
        let path = dir.path().join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"torn\":").unwrap();
        drop(f);
        let sink = FileSink::open(dir.path(), &meter()).unwrap();
        let r = sink.publish(&[ev("c")]).await;
        assert_eq!(r[0].as_ref().unwrap().offset, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(!text.contains("torn"));
    }
}
