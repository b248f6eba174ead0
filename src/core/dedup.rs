//! Duplicate suppression by CloudEvents `(source, id)`, which the spec defines as an event's
//! identity: within `dedup.window`, a second event with the same pair on this instance is not
//! written again; its reply repeats the first one's receipt, marked as a duplicate. Only
//! events that were stored or spooled are remembered: a failed first attempt leaves nothing
//! behind, so the retry is written. A duplicate that arrives while the first is still being
//! written waits for its outcome rather than writing a second copy.
//!
//! The window is moka's (time to live, bounded entry count, oldest evicted first): a bounded
//! concurrent cache is exactly what it is for.
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Meter};
use tokio::sync::watch;

use crate::core::delivery::Receipt;

type Key = (String, String);

#[derive(Debug, Clone)]
enum Slot {
    Pending,
    Done(Receipt),
    Failed,
}

pub struct Dedup {
    cache: moka::sync::Cache<Key, Arc<watch::Sender<Slot>>>,
    duplicates: Counter<u64>,
}

/// What a claim on an event's identity gives.
pub enum Claim {
    /// This is the first: write it, then report how it went with [`Guard::complete`].
    First(Guard),
    /// Seen within the window: this was its receipt.
    Duplicate(Receipt),
}

/// The first claimant's duty to report. Dropped without [`Guard::complete`] (a cancelled
/// request), it counts as a failure and the next claimant writes the event.
pub struct Guard {
    key: Option<Key>,
    cache: moka::sync::Cache<Key, Arc<watch::Sender<Slot>>>,
    tx: Arc<watch::Sender<Slot>>,
}

impl Guard {
    pub fn complete(mut self, receipt: Option<&Receipt>) {
        match receipt {
            Some(r) => {
                self.tx.send_replace(Slot::Done(*r));
                self.key = None;
            }
            None => self.fail(),
        }
    }

    fn fail(&mut self) {
        if let Some(key) = self.key.take() {
            // Only our own entry: a newer claimant's must stay.
            let mine = self.tx.clone();
            self.cache.entry(key).and_compute_with(|e| match e {
                Some(e) if Arc::ptr_eq(e.value(), &mine) => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
            self.tx.send_replace(Slot::Failed);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.fail();
    }
}

impl Dedup {
    pub fn new(window: Duration, max_entries: u64, meter: &Meter) -> Self {
        let duplicates = meter
            .u64_counter("events_duplicates_suppressed")
            .with_description("Events not written again: same (source, id) within dedup.window")
            .build();
        duplicates.add(0, &[]);
        Self {
            cache: moka::sync::Cache::builder()
                .time_to_live(window)
                .max_capacity(max_entries)
                .build(),
            duplicates,
        }
    }

    /// Counts a duplicate found without the window (a repeat within one request).
    pub fn counted_duplicate(&self) {
        self.duplicates.add(1, &[]);
    }

    pub async fn claim(&self, source: &str, id: &str) -> Claim {
        let key = (source.to_owned(), id.to_owned());
        loop {
            let tx = Arc::new(watch::channel(Slot::Pending).0);
            let entry = self.cache.entry(key.clone()).or_insert_with(|| tx.clone());
            if entry.is_fresh() {
                return Claim::First(Guard {
                    key: Some(key),
                    cache: self.cache.clone(),
                    tx,
                });
            }
            let mut rx = entry.into_value().subscribe();
            let outcome = rx
                .wait_for(|s| !matches!(s, Slot::Pending))
                .await
                .map(|s| s.clone());
            match outcome {
                Ok(Slot::Done(receipt)) => {
                    self.duplicates.add(1, &[]);
                    return Claim::Duplicate(Receipt {
                        duplicate: true,
                        ..receipt
                    });
                }
                // The first attempt failed (or was abandoned): try to be the first again.
                Ok(Slot::Failed | Slot::Pending) | Err(_) => {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::delivery::Delivery;
    use crate::core::delivery::Stored;

    fn receipt(offset: i64) -> Receipt {
        Receipt {
            delivery: Delivery::Stored(Stored {
                partition: 0,
                offset,
            }),
            duplicate: false,
        }
    }

    fn dedup() -> Dedup {
        Dedup::new(
            Duration::from_secs(60),
            1000,
            &opentelemetry::global::meter("test"),
        )
    }

    #[tokio::test]
    async fn a_second_claim_repeats_the_first_receipt() {
        let d = dedup();
        let Claim::First(g) = d.claim("s", "1").await else {
            panic!("first")
        };
        g.complete(Some(&receipt(7)));
        let Claim::Duplicate(r) = d.claim("s", "1").await else {
            panic!("duplicate")
        };
        assert!(r.duplicate);
        assert_eq!(r.delivery, receipt(7).delivery);
        assert!(matches!(d.claim("other", "1").await, Claim::First(_)));
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_first_leaves_nothing_behind() {
        let d = dedup();
        let Claim::First(g) = d.claim("s", "1").await else {
            panic!()
        };
        g.complete(None);
        let Claim::First(g) = d.claim("s", "1").await else {
            panic!("retry after failure is a first")
        };
        drop(g);
        assert!(matches!(d.claim("s", "1").await, Claim::First(_)));
    }

    #[tokio::test]
    async fn a_concurrent_duplicate_waits_for_the_first() {
        let d = Arc::new(dedup());
        let Claim::First(g) = d.claim("s", "1").await else {
            panic!()
        };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            match d2.claim("s", "1").await {
                Claim::Duplicate(r) => Some(r),
                Claim::First(_) => None,
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        g.complete(Some(&receipt(3)));
        let r = waiter.await.unwrap().expect("a duplicate");
        assert_eq!(r.delivery, receipt(3).delivery);
    }
}
