//! The `send` spans of the messaging conventions around each produce call, and the trace
//! headers the records carry: a request's records continue its trace; the spool's records
//! start one of their own, linked to the `create` span each was spooled under.
use crate::core::event::Event;

/// Where the records of a produce call come from, for their trace: a request being served
/// (the send span is a child of its span, and the records carry the send span's context), or
/// the spool (the send span starts a trace of its own, linked to the `create` span each record
/// was spooled under, whose context the record keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Request,
    Spool,
}

/// A destination topic's send span, and its context as record headers.
pub(super) type SendSpan = (String, tracing::Span, Vec<(String, String)>);

/// Links a send span keeps at most (a window of spooled records may name many).
pub(super) const MAX_LINKS: usize = 128;

/// One `send {topic}` span per destination topic of a call, with the messaging conventions'
/// attributes: (topic, span, the span's context as record headers).
pub(super) fn send_spans(
    items: &[(&Event, &[(String, String)])],
    destination: &dyn Fn(&Event) -> String,
    origin: Origin,
) -> Vec<SendSpan> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut out: Vec<SendSpan> = Vec::new();
    let mut linked: Vec<opentelemetry::trace::SpanContext> = Vec::new();
    for (e, trace) in items {
        let topic = destination(e);
        let i = match out.iter().position(|s| s.0 == topic) {
            Some(i) => i,
            None => {
                let count = items
                    .iter()
                    .filter(|(x, _)| destination(x) == topic)
                    .count();
                // A request's send span is a child of the request's span (made outside
                // tracing, `transport::stack::observe`: the layer finds it as the current
                // OpenTelemetry context, so the span is contextual); the spool's starts a
                // trace of its own (linked below).
                macro_rules! send_span {
                    ($($parent:tt)*) => {
                        tracing::info_span!(
                            $($parent)*
                            "send",
                            otel.name = %format!("send {topic}"),
                            otel.kind = "producer",
                            otel.status_code = tracing::field::Empty,
                            messaging.system = "kafka",
                            messaging.destination.name = %topic,
                            messaging.operation.type = "send",
                            messaging.operation.name = "send",
                            messaging.batch.message_count = count,
                        )
                    };
                }
                let span = match origin {
                    Origin::Request => send_span!(),
                    Origin::Spool => send_span!(parent: None,),
                };
                let headers = crate::telemetry::trace_headers_of(&span);
                out.push((topic, span, headers));
                out.len() - 1
            }
        };
        if origin == Origin::Spool
            && let Some(sc) = crate::telemetry::span_context_of(trace)
            && linked.len() < MAX_LINKS
            && !linked.contains(&sc)
        {
            out[i].1.add_link(sc.clone());
            linked.push(sc);
        }
    }
    out
}
