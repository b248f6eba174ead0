//! The core ingest service: the one implementation of `IngestEvent`, `IngestBatch` and
//! `Validate` behind both gRPC and REST (and of each event of a stream: `stream.rs` drives
//! those through [`Gateway::ingest_item`]). It validates, hands events to the sink and returns
//! domain outcomes ([`Ingested`], [`ItemOutcome`], [`Validated`]); the transports encode the
//! replies. It imports nothing from tonic, axum or http, and no registry wiring: its
//! instruments are built from the OpenTelemetry `Meter` it is given.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Meter};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::{AckLevel, TypesPolicy};
use crate::core::auth::{self, Authenticator, Principal};
use crate::core::contracts::{Contracts, TypeListing};
use crate::core::dedup::{Claim, Dedup};
use crate::core::delivery::{Delivery, EventSink, Journal, Receipt, Stored};
use crate::core::error::{Error, FieldViolation};
use crate::core::event::Event;
use crate::core::validate::{self, Checked, Context, Incoming, Limits};
use crate::telemetry::instruments::{LATENCY_BUCKETS, LabelCap};

/// One event taken: its id (assigned when the client sent none), what it got, and its time.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub id: String,
    pub receipt: Receipt,
    pub time: DateTime<Utc>,
}

/// The acknowledgement a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckRequest {
    /// `ack.default`.
    #[default]
    Default,
    Stored,
    Spooled,
}

/// What one event of a batch got, in request order.
#[derive(Debug)]
pub struct BatchItem {
    pub id: String,
    pub result: Result<Receipt, Error>,
}

/// The spool side of acknowledgements: the spool (with brokers and `spool.enabled`), the
/// default level, the fallback, and duplicate suppression.
pub struct Durability {
    pub spool: Option<Arc<dyn Journal>>,
    pub default: AckLevel,
    pub fallback: bool,
    pub dedup: Option<Dedup>,
}

impl Durability {
    /// Nothing beyond the sink: the local log, and tests.
    pub fn none() -> Self {
        Self {
            spool: None,
            default: AckLevel::Stored,
            fallback: false,
            dedup: None,
        }
    }
}

/// What happened to one event of a batch, in request order.
#[derive(Debug)]
pub struct ItemOutcome {
    pub id: String,
    pub result: Result<Stored, Error>,
}

/// A dry run that passed: the event's size in the CloudEvents JSON format and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validated {
    pub size: usize,
    pub max_event_size: usize,
}

/// The core's instruments: outcomes per event, schema violations, time spent in the sink.
struct IngestMetrics {
    ingested: Counter<u64>,
    failed: Counter<u64>,
    schema_violations: Counter<u64>,
    spooled: BoundCounter<u64>,
    /// Bound to the sink's name: one series for the gateway's life (#26).
    sink_publish: BoundHistogram<f64>,
    types: LabelCap,
    sources: LabelCap,
    /// `events_ingested`'s series by (type, source) as sent, bound on first use (#26): an
    /// unbound `add` spent about 1.3K instructions per call sorting, hashing and looking up
    /// its labels, and each label's cap lookup more. Only pairs whose type and source both
    /// have a place of their own under the caps are kept (others go the unbound way, into the
    /// `other` series), so it holds at most LABEL_CARDINALITY_CAP² entries. A map behind a
    /// lock rather than a crate: the SDK offers the bound handle, not a keyed cache of them.
    stored_series: std::sync::RwLock<SeriesByPair>,
}

/// Bound `events_ingested` series by (type, source).
type SeriesByPair = hashbrown::HashMap<(Box<str>, Box<str>), BoundCounter<u64>>;

/// A (type, source) key borrowed from the event, to look a series up without allocating.
#[derive(Hash)]
struct Pair<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(Box<str>, Box<str>)> for Pair<'_> {
    fn equivalent(&self, key: &(Box<str>, Box<str>)) -> bool {
        *key.0 == *self.0 && *key.1 == *self.1
    }
}

impl IngestMetrics {
    fn new(meter: &Meter, sink: &'static str) -> Self {
        let failed = meter
            .u64_counter("events_ingested_failed")
            .with_description("Events not stored, by reason")
            .build();
        // Every reason exists from the start at 0, so `rate()` and dashboards can tell "none
        // failed" from "no data".
        for reason in Error::REASONS {
            failed.add(0, &[KeyValue::new("reason", *reason)]);
        }
        Self {
            ingested: meter
                .u64_counter("events_ingested")
                .with_description("Events stored, by type and source (capped label sets)")
                .build(),
            failed,
            spooled: {
                let c = meter
                    .u64_counter("events_spooled")
                    .with_description("Events acknowledged as spooled (asked for, or the fallback)")
                    .build();
                c.add(0, &[]);
                c.bind(&[])
            },
            schema_violations: meter
                .u64_counter("schema_violations")
                .with_description("Events whose data broke their type's JSON Schema, by type")
                .build(),
            sink_publish: meter
                .f64_histogram("sink_publish_duration")
                .with_unit("s")
                .with_description(
                    "Time from handing events to the sink to the last acknowledgement",
                )
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
                .bind(&[KeyValue::new("sink", sink)]),
            types: LabelCap::default(),
            sources: LabelCap::default(),
            stored_series: Default::default(),
        }
    }

    fn stored(&self, ty: &str, source: &str, n: u64) {
        if let Some(c) = self
            .stored_series
            .read()
            .expect("series lock")
            .get(&Pair(ty, source))
        {
            c.add(n);
            return;
        }
        let (t, s) = (self.types.label(ty), self.sources.label(source));
        let labels = [
            KeyValue::new("type", t.clone()),
            KeyValue::new("source", s.clone()),
        ];
        // Within both caps, as sent: this pair keeps a series of its own, bound from now on.
        if t.as_str() == ty && s.as_str() == source {
            let bound = self.ingested.bind(&labels);
            bound.add(n);
            self.stored_series
                .write()
                .expect("series lock")
                .entry((ty.into(), source.into()))
                .or_insert(bound);
        } else {
            self.ingested.add(n, &labels);
        }
    }

    /// Counts what the sink did with `events`, one `add` per run of events that share their
    /// labels (a batch is mostly one type from one source): labels and the SDK's lookup of
    /// the series cost about 2K instructions per `add` (#26).
    fn outcomes(&self, events: &[Event], outcomes: &[Result<Stored, Error>]) {
        enum Run<'e> {
            Stored(&'e str, &'e str),
            Failed(&'static str),
        }
        let mut current: Option<(Run<'_>, u64)> = None;
        let flush = |run: Option<(Run<'_>, u64)>| match run {
            Some((Run::Stored(ty, source), n)) => self.stored(ty, source, n),
            Some((Run::Failed(reason), n)) => self.failed(n, reason),
            None => {}
        };
        for (e, r) in events.iter().zip(outcomes) {
            let next = match r {
                Ok(_) => Run::Stored(&e.ty, &e.source),
                Err(err) => Run::Failed(err.reason()),
            };
            match (&mut current, &next) {
                (Some((Run::Stored(t, s), n)), Run::Stored(t2, s2)) if t == t2 && s == s2 => {
                    *n += 1
                }
                (Some((Run::Failed(a), n)), Run::Failed(b)) if a == b => *n += 1,
                _ => flush(current.replace((next, 1))),
            }
        }
        flush(current);
    }

    fn schema_violation(&self, ty: &str) {
        self.schema_violations
            .add(1, &[KeyValue::new("type", self.types.label(ty))]);
    }

    fn failed(&self, n: u64, reason: &'static str) {
        self.failed.add(n, &[KeyValue::new("reason", reason)]);
    }

    fn published(&self, took: Duration) {
        self.sink_publish.record(took.as_secs_f64());
    }
}

pub struct Gateway {
    sink: Arc<dyn EventSink>,
    limits: Limits,
    contracts: Arc<Contracts>,
    auth: Arc<Authenticator>,
    metrics: IngestMetrics,
    durability: Durability,
    draining: AtomicBool,
    /// Cancelled when the server stops accepting connections: open streams stop taking
    /// events, report the ones they took, and end.
    streams: CancellationToken,
}

impl Gateway {
    pub fn new(
        sink: Arc<dyn EventSink>,
        limits: Limits,
        contracts: Arc<Contracts>,
        auth: Arc<Authenticator>,
        durability: Durability,
        meter: &Meter,
    ) -> Self {
        let metrics = IngestMetrics::new(meter, sink.name());
        Self {
            sink,
            limits,
            contracts,
            auth,
            metrics,
            durability,
            draining: AtomicBool::new(false),
            streams: CancellationToken::new(),
        }
    }

    /// The registry in force: its policy and every entry, most specific first.
    pub fn list_types(&self) -> (TypesPolicy, Vec<TypeListing>) {
        let registry = self.contracts.current();
        (registry.policy, registry.listing())
    }

    /// Hands events to the sink and counts the outcomes.
    async fn publish(&self, events: &[Event]) -> Vec<Result<Stored, Error>> {
        let started = Instant::now();
        let outcomes = self.sink.publish(events).await;
        self.metrics.published(started.elapsed());
        self.metrics.outcomes(events, &outcomes);
        outcomes
    }

    pub fn sink(&self) -> &Arc<dyn EventSink> {
        &self.sink
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// From now on readiness is false; requests already admitted still complete.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Open streams stop taking events from now on; new ones are refused. Called when the
    /// server stops accepting connections (after `shutdown.drain_delay`), the moment unary
    /// requests stop arriving too.
    pub fn stop_streams(&self) {
        self.streams.cancel();
    }

    pub fn streams_stopped(&self) -> bool {
        self.streams.is_cancelled()
    }

    /// Resolves once [`Gateway::stop_streams`] was called.
    pub fn streams_stopping(&self) -> WaitForCancellationFutureOwned {
        self.streams.clone().cancelled_owned()
    }

    /// Counts an event refused before validation (a stream's per-event admission).
    pub fn count_refused(&self, e: &Error) {
        self.metrics.failed(1, e.reason());
    }

    pub async fn ingest_event(
        self: &Arc<Self>,
        principal: &Principal,
        event: Option<Incoming>,
        ack: AckRequest,
    ) -> Result<Ingested, Error> {
        let event = self.check_for_ingest(principal, event)?;
        let receipt = self
            .deliver(std::slice::from_ref(&event), ack)
            .await
            .pop()
            .expect("one result per event")?;
        Ok(Ingested {
            id: event.id,
            receipt,
            time: event.time,
        })
    }

    pub fn spool(&self) -> Option<&Arc<dyn Journal>> {
        self.durability.spool.as_ref()
    }

    /// Whether a `stored` request can be answered now (for readiness): the sink can store,
    /// or the fallback can spool.
    pub fn can_take_events(&self) -> (bool, String) {
        if self.sink.is_ready() {
            return (true, "ready".into());
        }
        match (&self.durability.spool, self.durability.fallback) {
            (Some(spool), true) if spool.has_room() => (
                true,
                format!("ready (spooling: {})", self.sink.not_ready_reason()),
            ),
            (Some(_), true) => (
                false,
                format!(
                    "{}, and the spool has no room (spool.max_bytes / spool.max_age)",
                    self.sink.not_ready_reason()
                ),
            ),
            _ => (false, self.sink.not_ready_reason()),
        }
    }

    /// Duplicates answered from the window, the rest delivered at the level asked for; one
    /// result per event, in order.
    async fn deliver(
        self: &Arc<Self>,
        events: &[Event],
        ack: AckRequest,
    ) -> Vec<Result<Receipt, Error>> {
        let Some(dedup) = &self.durability.dedup else {
            return self.deliver_new(events, ack).await;
        };
        let mut results: Vec<Option<Result<Receipt, Error>>> = vec![None; events.len()];
        let mut firsts = Vec::new();
        // A repeat inside this request waits for its earlier copy here, not in the window
        // (where it would wait for itself).
        let mut seen: std::collections::HashMap<(&str, &str), usize> = Default::default();
        let mut repeats = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if let Some(&earlier) = seen.get(&(e.source.as_str(), e.id.as_str())) {
                repeats.push((i, earlier));
                continue;
            }
            seen.insert((&e.source, &e.id), i);
            match dedup.claim(&e.source, &e.id).await {
                Claim::Duplicate(r) => results[i] = Some(Ok(r)),
                Claim::First(guard) => firsts.push((i, guard)),
            }
        }
        if !firsts.is_empty() {
            let (indices, guards): (Vec<usize>, Vec<_>) = firsts.into_iter().unzip();
            let new: Vec<Event> = indices.iter().map(|&i| events[i].clone()).collect();
            // The writes and their guards run in a task of their own. A client that gives up
            // (its deadline, a reset) cancels this request, but the sink still delivers what
            // it was handed; the guards must learn that outcome, or the client's retry of the
            // same id would be written a second time (the chaos suite's timeout-and-retry).
            // The task carries the request's trace, so the records' trace context (and the
            // `send`/`create` spans) stay in the request's trace.
            let this = Arc::clone(self);
            let task = tokio::spawn(crate::telemetry::CurrentTrace::capture().carry(async move {
                let delivered = this.deliver_new(&new, ack).await;
                for (guard, r) in guards.into_iter().zip(&delivered) {
                    guard.complete(r.as_ref().ok());
                }
                delivered
            }));
            let delivered = match task.await {
                Ok(d) => d,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            for (i, r) in indices.into_iter().zip(delivered) {
                results[i] = Some(r);
            }
        }
        for (i, earlier) in repeats {
            results[i] = Some(match &results[earlier] {
                Some(Ok(r)) => {
                    dedup.counted_duplicate();
                    Ok(Receipt {
                        duplicate: true,
                        ..*r
                    })
                }
                Some(Err(e)) => Err(e.clone()),
                None => unreachable!("earlier events have their results"),
            });
        }
        results
            .into_iter()
            .map(|r| r.expect("every event has a result"))
            .collect()
    }

    /// Spooled when asked (and a spool exists), else to the sink; with the fallback, what the
    /// sink could not take because Kafka is unavailable is spooled instead.
    async fn deliver_new(&self, events: &[Event], ack: AckRequest) -> Vec<Result<Receipt, Error>> {
        let level = match ack {
            AckRequest::Default => self.durability.default,
            AckRequest::Stored => AckLevel::Stored,
            AckRequest::Spooled => AckLevel::Spooled,
        };
        let spool = self.durability.spool.as_ref();
        if let (AckLevel::Spooled, Some(spool)) = (level, spool) {
            return self.spool_events(spool.as_ref(), events).await;
        }
        let stored = self.publish(events).await;
        let fallback = spool.filter(|_| self.durability.fallback);
        let unavailable: Vec<usize> = stored
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(Error::Unavailable { .. })))
            .map(|(i, _)| i)
            .collect();
        let mut out: Vec<Result<Receipt, Error>> = stored
            .into_iter()
            .map(|r| r.map(|s| Receipt::new(Delivery::Stored(s))))
            .collect();
        if let Some(spool) = fallback
            && !unavailable.is_empty()
        {
            let retry: Vec<Event> = unavailable.iter().map(|&i| events[i].clone()).collect();
            for (i, r) in unavailable
                .into_iter()
                .zip(self.spool_events(spool.as_ref(), &retry).await)
            {
                if r.is_ok() {
                    out[i] = r;
                }
            }
        }
        out
    }

    /// Appends to the spool; refused while draining (the next start would forward them, but
    /// a client should send to an instance that stays).
    async fn spool_events(
        &self,
        spool: &dyn Journal,
        events: &[Event],
    ) -> Vec<Result<Receipt, Error>> {
        let refuse = |e: Error| events.iter().map(|_| Err(e.clone())).collect();
        if self.is_draining() {
            return refuse(Error::unavailable(
                "the gateway is shutting down and takes no spooled events; send to another instance",
            ));
        }
        // The `create` span of the messaging conventions, a child of the request's span: the
        // records keep its context, so a consumer continues the request's trace, and the
        // forwarder's `send` span links to it (one span per request, not per event).
        let topic = events.first().and_then(|e| e.topic.as_deref());
        let create = tracing::info_span!(
            "create",
            otel.name = %topic.map_or_else(|| "create".to_owned(), |t| format!("create {t}")),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.destination.name = topic,
            messaging.operation.type = "create",
            messaging.operation.name = "create",
            messaging.batch.message_count = events.len(),
        );
        let trace = crate::telemetry::trace_headers_of(&create);
        match spool.append(events, &trace).await {
            Ok(first) => {
                self.metrics.spooled.add(events.len() as u64);
                (0..events.len() as u64)
                    .map(|i| {
                        Ok(Receipt::new(Delivery::Spooled {
                            position: first + i,
                        }))
                    })
                    .collect()
            }
            Err(e) => {
                self.metrics.failed(events.len() as u64, e.reason());
                refuse(e)
            }
        }
    }

    /// One event of a stream: the checks and the storing of `ingest_event`, reported with the
    /// id it was stored under (assigned when the client sent none) even when storing failed.
    pub async fn ingest_item(&self, principal: &Principal, incoming: Incoming) -> ItemOutcome {
        let sent_id = incoming.event.id.clone();
        match self.check_for_ingest(principal, Some(incoming)) {
            Ok(event) => ItemOutcome {
                result: self.publish_one(&event).await,
                id: event.id,
            },
            Err(e) => ItemOutcome {
                id: sent_id,
                result: Err(e),
            },
        }
    }

    /// Validation and authorization for storing (schema violations and refusals counted),
    /// then the principal's provenance stamped on the event.
    fn check_for_ingest(
        &self,
        principal: &Principal,
        event: Option<Incoming>,
    ) -> Result<Event, Error> {
        let checked = self
            .check_single(event, &|ty| self.metrics.schema_violation(ty))
            .inspect_err(|_| {
                self.metrics.failed(1, "invalid");
            })?;
        let mut event = checked.event;
        self.auth
            .authorize(principal, std::slice::from_ref(&event), |_| "event".into())
            .inspect_err(|e| self.metrics.failed(1, e.reason()))?;
        auth::stamp(principal, &mut event);
        Ok(event)
    }

    async fn publish_one(&self, event: &Event) -> Result<Stored, Error> {
        self.publish(std::slice::from_ref(event))
            .await
            .pop()
            .expect("one result per event")
    }

    /// Batch semantics: validation is all-or-nothing (one invalid event rejects the batch,
    /// nothing is written, all violations are listed). Delivery is reported per event: if at
    /// least one event was stored the reply is OK with each event's outcome; if none was, the
    /// reply is the error itself (UNAVAILABLE when every failure is retryable).
    pub async fn ingest_batch(
        self: &Arc<Self>,
        principal: &Principal,
        events: Vec<Incoming>,
        ack: AckRequest,
    ) -> Result<Vec<BatchItem>, Error> {
        let count = events.len() as u64;
        let registry = self.contracts.current();
        let ctx = Context {
            limits: &self.limits,
            types: &registry,
            on_schema_violation: &|ty| self.metrics.schema_violation(ty),
        };
        let checked = validate::check_batch(events, &ctx, Utc::now()).map_err(|v| {
            self.metrics.failed(count, "invalid");
            Error::InvalidArgument(v)
        })?;
        let mut events: Vec<_> = checked.into_iter().map(|c| c.event).collect();
        // All-or-nothing, like validation: one event the principal may not send refuses all.
        self.auth
            .authorize(principal, &events, |i| format!("events[{i}]"))
            .inspect_err(|e| self.metrics.failed(count, e.reason()))?;
        for e in &mut events {
            auth::stamp(principal, e);
        }
        let outcomes = self.deliver(&events, ack).await;
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
            .map(|(event, result)| BatchItem {
                id: event.id,
                result,
            })
            .collect())
    }

    /// The checks of `ingest_event`, and nothing else: no sink is touched.
    /// A dry run does not count schema violations: `schema_violations_total` is about what
    /// was sent for storage.
    pub fn validate(
        &self,
        principal: &Principal,
        event: Option<Incoming>,
    ) -> Result<Validated, Error> {
        let checked = self.check_single(event, &|_| {})?;
        self.auth
            .authorize(principal, std::slice::from_ref(&checked.event), |_| {
                "event".into()
            })?;
        Ok(Validated {
            size: checked.size(),
            max_event_size: self.limits.max_event_size,
        })
    }

    fn check_single(
        &self,
        event: Option<Incoming>,
        on_schema_violation: &(dyn Fn(&str) + Sync),
    ) -> Result<Checked, Error> {
        let Some(event) = event else {
            return Err(Error::InvalidArgument(vec![FieldViolation::new(
                "event",
                "is required",
            )]));
        };
        let registry = self.contracts.current();
        let ctx = Context {
            limits: &self.limits,
            types: &registry,
            on_schema_violation,
        };
        validate::check_event(event, "event", &ctx, Utc::now()).map_err(Error::InvalidArgument)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowed pair must hash as the owned key does, or every event would take the slow
    /// way (counting right, but binding again each time).
    #[test]
    fn a_bound_series_is_found_by_its_borrowed_pair() {
        let m = IngestMetrics::new(&opentelemetry::global::meter("test"), "local-log");
        m.stored("user.created", "user-service", 1);
        let series = m.stored_series.read().unwrap();
        assert!(series.get(&Pair("user.created", "user-service")).is_some());
        assert!(series.get(&Pair("user.created", "other-service")).is_none());
        assert_eq!(series.len(), 1);
    }
}
