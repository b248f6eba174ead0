//! The embedded default sink: the local log, a spool (`crate::spool`: segment files with
//! per-record checksums, group-committed fsync, rotation by size, bounded by
//! `spool.max_bytes`) in `storage.data_dir` that is never forwarded. A request is answered
//! only after its records are written and fsynced; an event's offset is its position in the
//! log. `event-gateway log` prints it as CloudEvents JSON lines. Its gauges (`local_log_events`,
//! `local_log_size_bytes`) are registered on the meter it is given.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use opentelemetry::metrics::Meter;

use super::OpenError;
use crate::core::delivery::{EventSink, FlushReport, Stored};
use crate::core::error::Error;
use crate::core::event::Event;
use crate::spool::record::Entry;
use crate::spool::{self, Spool};

pub struct FileSink {
    spool: Arc<Spool>,
}

impl FileSink {
    /// Opens (creating) the log in `settings.dir`. A record cut short by a crash mid-write is
    /// cut off (it was never acknowledged); damage is reported and skipped.
    pub fn open(settings: spool::Settings, meter: &Meter) -> Result<Self, OpenError> {
        let dir = settings.dir.clone();
        // The local log's own instruments: the spool's `spool_*` gauges would read as
        // "waiting to be forwarded", which nothing here ever is.
        let quiet = opentelemetry::metrics::noop::NoopMeterProvider::new();
        let spool = Spool::open(
            settings,
            &opentelemetry::metrics::MeterProvider::meter(&quiet, "local-log"),
        )
        .map_err(|source| OpenError::LocalLog {
            action: "open the local log in",
            path: dir,
            source,
        })?;
        let sink = Self { spool };
        sink.register_instruments(meter);
        Ok(sink)
    }

    fn register_instruments(&self, meter: &Meter) {
        let s = self.spool.clone();
        meter
            .i64_observable_gauge("local_log_events")
            .with_description("Events in the local log")
            .with_callback(move |o| o.observe(s.next_position() as i64, &[]))
            .build();
        let s = self.spool.clone();
        meter
            .i64_observable_gauge("local_log_size")
            .with_unit("By")
            .with_description("Committed size of the local log")
            .with_callback(move |o| o.observe(s.bytes() as i64, &[]))
            .build();
    }

    pub fn path(&self) -> &Path {
        self.spool.dir()
    }
}

impl EventSink for FileSink {
    fn name(&self) -> &'static str {
        "local-log"
    }

    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Vec<Result<Stored, Error>>> {
        async move {
            let now = spool::now_ms();
            let entries = events.iter().map(|e| Entry {
                spooled_at_ms: now,
                topic: e.topic.as_deref(),
                trace: &[],
                event: e,
            });
            match self.spool.append_entries(entries).await {
                Ok(first) => (0..events.len())
                    .map(|i| {
                        Ok(Stored {
                            partition: 0,
                            offset: (first + i as u64) as i64,
                        })
                    })
                    .collect(),
                Err(refused) => {
                    let e = refused.into_error();
                    events.iter().map(|_| Err(e.clone())).collect()
                }
            }
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        self.spool.writable() && self.spool.has_room()
    }

    fn not_ready_reason(&self) -> String {
        if !self.spool.writable() {
            "the local log is not writable (see the error log)".into()
        } else {
            "the local log is full (spool.max_bytes)".into()
        }
    }

    fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "sink": "local-log",
            "path": self.spool.dir().display().to_string(),
            "lines": self.spool.next_position(),
            "size_bytes": self.spool.bytes(),
            "writable": self.spool.writable(),
            "log": self.spool.details(),
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

    fn meter() -> Meter {
        opentelemetry::global::meter("test")
    }

    fn settings(dir: &Path) -> spool::Settings {
        spool::Settings {
            dir: dir.to_path_buf(),
            segment_bytes: 4096,
            max_bytes: 1 << 30,
            max_age: None,
            min_room: 0,
        }
    }

    #[tokio::test]
    async fn concurrent_publishes_get_distinct_consecutive_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FileSink::open(settings(dir.path()), &meter()).unwrap());
        let mut tasks = Vec::new();
        for t in 0..20 {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move {
                let events: Vec<Event> = (0..5)
                    .map(|i| Event::for_test(&format!("{t}-{i}")))
                    .collect();
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
        let log = spool::read_events(dir.path()).unwrap();
        assert_eq!(log.len(), 100);
        for (_, json) in &log {
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            assert_eq!(v["specversion"], "1.0");
        }
    }

    #[tokio::test]
    async fn the_log_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(settings(dir.path()), &meter()).unwrap();
        for i in 0..100 {
            sink.publish(&[Event::for_test(&i.to_string())]).await[0]
                .as_ref()
                .unwrap();
        }
        // 100 records of ~150 bytes in 4 KiB segments.
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(segments > 2, "{segments} files");
        let ids: Vec<String> = spool::read_events(dir.path())
            .unwrap()
            .into_iter()
            .map(|(_, j)| Event::from_structured_json(&j).unwrap().id)
            .collect();
        assert_eq!(ids, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn reopening_continues_numbering() {
        let dir = tempfile::tempdir().unwrap();
        {
            let sink = FileSink::open(settings(dir.path()), &meter()).unwrap();
            let r = sink
                .publish(&[Event::for_test("a"), Event::for_test("b")])
                .await;
            assert_eq!(r[1].as_ref().unwrap().offset, 1);
        }
        let sink = FileSink::open(settings(dir.path()), &meter()).unwrap();
        let r = sink.publish(&[Event::for_test("c")]).await;
        assert_eq!(r[0].as_ref().unwrap().offset, 2);
        assert_eq!(spool::read_events(dir.path()).unwrap().len(), 3);
    }
}
