//! The core ingest service: the one implementation of `IngestEvent`, `IngestBatch` and
//! `Validate` behind both gRPC and REST. It validates, hands events to the sink and builds the
//! replies. It imports nothing from tonic, axum or http: transports adapt to it.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;

use crate::error::Error;
use crate::event::Event;
use crate::proto::{IngestEventResponse, ValidateResponse};
use crate::sink::{EventSink, SinkHealth, Stored};
use crate::telemetry::metrics::Metrics;
use crate::validate::{self, Checked, Incoming, Limits};

/// What happened to one event of a batch. Transports turn a list of these into the
/// `IngestBatchResponse` with `status::batch_reply`, where errors become codes.
#[derive(Debug)]
pub struct ItemOutcome {
    pub id: String,
    pub result: Result<Stored, Error>,
}

pub struct Gateway {
    sink: Arc<dyn EventSink>,
    limits: Limits,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Gateway {
    pub fn new(sink: Arc<dyn EventSink>, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            sink,
            limits,
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    /// Hands events to the sink and counts the outcomes.
    async fn publish(&self, events: &[Event]) -> Vec<Result<Stored, Error>> {
        let started = std::time::Instant::now();
        let outcomes = self.sink.publish(events).await;
        self.metrics
            .sink_published(self.sink.name(), started.elapsed());
        for (e, r) in events.iter().zip(&outcomes) {
            match r {
                Ok(_) => self.metrics.event_stored(&e.ty, &e.source),
                Err(err) => self.metrics.events_failed(1, err.reason()),
            }
        }
        outcomes
    }

    pub fn sink(&self) -> &Arc<dyn EventSink> {
        &self.sink
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn sink_health(&self) -> SinkHealth {
        self.sink.health()
    }

    /// From now on readiness is false; requests already admitted still complete.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub async fn ingest_event(
        &self,
        event: Option<Incoming>,
    ) -> Result<IngestEventResponse, Error> {
        let checked = self.check_single(event).inspect_err(|_| {
            self.metrics.events_failed(1, "invalid");
        })?;
        let event = checked.event;
        let stored = self
            .publish(std::slice::from_ref(&event))
            .await
            .pop()
            .expect("one result per event")?;
        Ok(IngestEventResponse {
            id: event.id,
            partition: stored.partition,
            offset: stored.offset,
            time: Some(event.time.into()),
        })
    }

    /// Batch semantics: validation is all-or-nothing (one invalid event rejects the batch,
    /// nothing is written, all violations are listed). Delivery is reported per event: if at
    /// least one event was stored the reply is OK with each event's outcome; if none was, the
    /// reply is the error itself (UNAVAILABLE when every failure is retryable).
    pub async fn ingest_batch(&self, events: Vec<Incoming>) -> Result<Vec<ItemOutcome>, Error> {
        let count = events.len() as u64;
        let checked = validate::check_batch(events, &self.limits, Utc::now()).map_err(|v| {
            self.metrics.events_failed(count, "invalid");
            Error::InvalidArgument(v)
        })?;
        let events: Vec<_> = checked.into_iter().map(|c| c.event).collect();
        let outcomes = self.publish(&events).await;
        let stored_count = outcomes.iter().filter(|r| r.is_ok()).count();
        if stored_count == 0 {
            // Prefer a permanent error: retrying would not help.
            let mut errors = outcomes.into_iter().filter_map(Result::err);
            let first = errors.next().expect("a non-empty batch has outcomes");
            return Err(if first.is_retryable() {
                errors.find(|e| !e.is_retryable()).unwrap_or(first)
            } else {
                first
            });
        }
        Ok(events
            .into_iter()
            .zip(outcomes)
            .map(|(event, result)| ItemOutcome {
                id: event.id,
                result,
            })
            .collect())
    }

    /// The checks of `ingest_event`, and nothing else: no sink is touched.
    pub fn validate(&self, event: Option<Incoming>) -> Result<ValidateResponse, Error> {
        let checked = self.check_single(event)?;
        Ok(ValidateResponse {
            valid: true,
            size_bytes: checked.size as u32,
            max_event_size_bytes: self.limits.max_event_size as u32,
        })
    }

    fn check_single(&self, event: Option<Incoming>) -> Result<Checked, Error> {
        let Some(event) = event else {
            return Err(Error::InvalidArgument(vec![
                crate::error::FieldViolation::new("event", "is required"),
            ]));
        };
        validate::check_event(event, "event", &self.limits, Utc::now())
            .map_err(Error::InvalidArgument)
    }
}
