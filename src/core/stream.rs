//! Streaming ingest, the core of `IngestStream` (gRPC) and of the WebSocket route: reads a
//! client's stream of submissions (one or more events each), admits, validates and stores
//! every event on its own through [`Gateway::ingest_item`], and reports one [`Report`] per
//! event as soon as its outcome is known. Both transports adapt their wire to this one loop,
//! so a stream behaves the same whichever way it arrives. It imports nothing from tonic, axum
//! or http: admission is the shared stack's, reached through the [`Admit`] seam.
//!
//! Why a loop over `FuturesUnordered` in one task rather than a task per event: the loop is
//! where the in-flight bound lives (it simply stops polling the input, so the transport's own
//! flow control holds the client back), and futures pushed in arrival order are first polled
//! in that order, so events reach the sink in the order the client sent them.
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::mpsc;

use crate::core::auth::Principal;
use crate::core::delivery::Stored;
use crate::core::error::{Error, FieldViolation};
use crate::core::service::Gateway;
use crate::core::validate::Incoming;

/// Admission for the events of one stream, the same as a unary request gets: a token from the
/// client's rate-limit bucket and a `performance.max_concurrent_requests` slot per event, and
/// the `performance.request_timeout` deadline. Implemented by the shared stack, which also
/// holds the stream's `performance.max_streams` slot for as long as this lives.
pub trait Admit: Send + Sync {
    /// Admits one event, or says why not (rate limited, overloaded, the client's share of
    /// the slots taken). The slots are held until the permit is dropped, when the event's
    /// outcome is known.
    fn admit(&self) -> Result<Permit, Error>;
    /// How long one event may take, delivery included.
    fn deadline(&self) -> Duration;
    /// Who opened the stream: authenticated once, when it opened.
    fn principal(&self) -> &Principal;
    /// Whether the stream may still take events: the credential it opened with still holds
    /// (the API key is still listed, the token has not expired) and it has not outlived
    /// `performance.max_stream_lifetime`. Asked before every submission and every
    /// [`RECHECK_EVERY`], so one connection cannot outlive a revocation or a rotation.
    fn still_admitted(&self) -> Result<(), Error>;
}

/// How often an open stream's admission is checked again while no submission arrives: the
/// key files' own poll interval, so a revoked key ends a quiet stream within two of them.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The slots one event holds (the shared pool's, the client's share), released on drop.
pub type Permit = Box<dyn Send + Sync>;

/// What the shared stack put on a stream's request: its admission, or why the stream may not
/// open (`performance.max_streams` reached).
#[derive(Clone)]
pub struct StreamAdmission(pub Result<Arc<dyn Admit>, Error>);

/// One message of a stream: events numbered from `sequence` (or from where the previous one
/// left off). An event the transport could not decode is its error, reported as that event's
/// failure; a message that could not be read at all is one such event.
pub struct Submission {
    pub sequence: Option<u64>,
    pub events: Vec<Result<Incoming, Error>>,
}

impl Submission {
    /// A message that could not be read: it counts as one failed event.
    pub fn unreadable(e: Error) -> Self {
        Self {
            sequence: None,
            events: vec![Err(e)],
        }
    }
}

/// The outcome of one event of a stream.
#[derive(Debug)]
pub struct Report {
    pub sequence: u64,
    pub id: String,
    pub result: Result<Stored, Error>,
}

/// How a stream ended. Every event taken was reported, except with `Gone`.
#[derive(Debug)]
pub enum End<E> {
    /// The client closed its side.
    Closed,
    /// The gateway is shutting down: the stream took no more events.
    Draining,
    /// The input failed (undecodable message, over the size limit, connection error).
    Broken(E),
    /// The client stopped taking results (cancelled, disconnected).
    Gone,
    /// The stream may take no more events ([`Admit::still_admitted`] said why: its
    /// credential was revoked or expired, or it reached `performance.max_stream_lifetime`).
    /// The submission that found this was refused event by event with the same error.
    Refused(Error),
}

/// Runs one stream to its end: reads `input` while fewer than `max_in_flight` events are
/// outstanding, sends each event's [`Report`] to `results`, and returns how it ended. A
/// submission of several events is taken whole, so up to `max_in_flight - 1 +
/// limits.max_batch_events` events can be in flight at once.
pub async fn run<S, E>(
    gateway: Arc<Gateway>,
    admit: Arc<dyn Admit>,
    input: S,
    results: mpsc::Sender<Report>,
    max_in_flight: usize,
) -> End<E>
where
    S: Stream<Item = Result<Submission, E>> + Send,
{
    let mut input = std::pin::pin!(input);
    let mut stopping = std::pin::pin!(gateway.streams_stopping());
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Report>> = FuturesUnordered::new();
    let mut next_sequence = 0u64;
    let mut end = None;
    loop {
        if in_flight.is_empty()
            && let Some(end) = end.take()
        {
            return end;
        }
        tokio::select! {
            // Results first: they free in-flight room and the client is waiting for them.
            biased;
            Some(report) = in_flight.next(), if !in_flight.is_empty() => {
                if results.send(report).await.is_err() {
                    return End::Gone;
                }
            }
            () = &mut stopping, if end.is_none() => end = Some(End::Draining),
            _ = recheck.tick(), if end.is_none() => {
                if let Err(e) = admit.still_admitted() {
                    end = Some(End::Refused(e));
                }
            }
            item = input.next(), if end.is_none() && in_flight.len() < max_in_flight => {
                match item {
                    None => end = Some(End::Closed),
                    Some(Err(e)) => end = Some(End::Broken(e)),
                    Some(Ok(submission)) => {
                        let first = submission.sequence.unwrap_or(next_sequence);
                        let taken = match admit.still_admitted() {
                            Ok(()) => take(&gateway, &admit, first, submission.events),
                            Err(e) => {
                                let refused = refuse(&gateway, first, submission.events, &e);
                                end = Some(End::Refused(e));
                                refused
                            }
                        };
                        next_sequence = first.saturating_add(taken.len().max(1) as u64);
                        in_flight.extend(taken);
                    }
                }
            }
        }
    }
}

/// One failed report per event of a submission the stream may no longer take (one when it
/// carried none).
fn refuse(
    gateway: &Gateway,
    first: u64,
    events: Vec<Result<Incoming, Error>>,
    e: &Error,
) -> Vec<BoxFuture<'static, Report>> {
    let n = events.len().max(1);
    let mut ids = events
        .into_iter()
        .map(|i| i.map(|i| i.event.id).unwrap_or_default());
    (first..first.saturating_add(n as u64))
        .map(|sequence| {
            gateway.count_refused(e);
            futures::future::ready(Report {
                sequence,
                id: ids.next().unwrap_or_default(),
                result: Err(e.clone()),
            })
            .boxed()
        })
        .collect()
}

/// The futures of one submission's events, numbered from `first`. An empty or oversized
/// submission is failed as a whole: one failed report per event it carried (one when it
/// carried none). One piece: the size checks, the per-event admission and the numbering
/// share one counter of what the submission carried, which every report must agree with.
fn take(
    gateway: &Arc<Gateway>,
    admit: &Arc<dyn Admit>,
    first: u64,
    events: Vec<Result<Incoming, Error>>,
) -> Vec<BoxFuture<'static, Report>> {
    let max = gateway.limits().max_batch_events;
    let refused = |sequence: u64, id: String, e: Error| {
        gateway.count_refused(&e);
        futures::future::ready(Report {
            sequence,
            id,
            result: Err(e),
        })
        .boxed()
    };
    if events.is_empty() {
        return vec![refused(
            first,
            String::new(),
            Error::InvalidArgument(vec![FieldViolation::new(
                "events",
                "at least one event is required",
            )]),
        )];
    }
    let n = events.len();
    // Into a list of its own size: `collect` would reuse the events' (far larger) allocation
    // in place and then shrink it, a realloc per submission (about 340 instructions, #26).
    let mut futures = Vec::with_capacity(n);
    futures.extend(events.into_iter().zip(first..).map(|(incoming, sequence)| {
        let incoming = match incoming {
            Ok(incoming) if n <= max => incoming,
            Ok(incoming) => {
                let too_many = FieldViolation::new(
                    "events",
                    format!("{n} events in one request; at most {max} (limits.max_batch_events)"),
                );
                let e = Error::InvalidArgument(vec![too_many]);
                return refused(sequence, incoming.event.id, e);
            }
            Err(e) => return refused(sequence, String::new(), e),
        };
        let gateway = gateway.clone();
        let admit = admit.clone();
        async move {
            let permit = match admit.admit() {
                Ok(p) => p,
                Err(e) => {
                    gateway.count_refused(&e);
                    return Report {
                        sequence,
                        id: incoming.event.id,
                        result: Err(e),
                    };
                }
            };
            let sent_id = incoming.event.id.clone();
            let report = match tokio::time::timeout(
                admit.deadline(),
                gateway.ingest_item(admit.principal(), incoming),
            )
            .await
            {
                Ok(item) => Report {
                    sequence,
                    id: item.id,
                    result: item.result,
                },
                Err(_) => {
                    let e = Error::DeadlineExceeded("performance.request_timeout passed".into());
                    gateway.count_refused(&e);
                    Report {
                        sequence,
                        id: sent_id,
                        result: Err(e),
                    }
                }
            };
            drop(permit);
            report
        }
        .boxed()
    }));
    futures
}
