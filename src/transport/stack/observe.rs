//! Metrics and spans, the stack's first steps: one span per request (parented on an
//! incoming W3C `traceparent`, current while the handler runs), the `http_*` instruments,
//! counted outside admission so that rejections are counted too, and the request's id
//! echoed on its reply.
use std::future::Future;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Histogram, Meter, UpDownCounter,
};
use opentelemetry::{KeyValue, StringValue};
use opentelemetry_http::HeaderExtractor;

use crate::proto::SERVICE_NAME;
use crate::telemetry::instruments::{LATENCY_BUCKETS, LabelCap};
use crate::transport::routes::{
    ROUTE_EVENTS_WS, ROUTE_INGEST_BATCH, ROUTE_INGEST_EVENT, ROUTE_TYPES, ROUTE_VALIDATE, ROUTES,
};
use crate::transport::status::{self, is_grpc};

/// The stack's instruments: every request by route and status, gRPC calls by method and code,
/// open connections.
pub struct HttpMetrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    grpc_requests: Counter<u64>,
    /// Counted by the accept loop in `server`.
    pub active_connections: UpDownCounter<i64>,
    /// Connections closed at accept: over `server.max_connections` (reason `total`) or
    /// `server.max_connections_per_peer` (`per_peer`).
    pub refused_connections: Counter<u64>,
    grpc_methods: LabelCap,
    /// The series a successful call of each contract route lands in, bound once at start
    /// (#26): an unbound `add` sorts and hashes its four labels and looks the series up,
    /// about 1.3K instructions per instrument per request; a bound one is an atomic add. In
    /// `ROUTES` order. Every other outcome goes the unbound way, into the same series.
    rest_ok: Vec<BoundSeries>,
    /// The same for each RPC over gRPC, with the method's path and its `grpc_server_requests`
    /// series for OK.
    grpc_ok: Vec<(String, BoundSeries, BoundCounter<u64>)>,
}

/// One bound `http_requests` and `http_request_duration` series.
struct BoundSeries {
    requests: BoundCounter<u64>,
    duration: BoundHistogram<f64>,
}

impl BoundSeries {
    fn new(requests: &Counter<u64>, duration: &Histogram<f64>, labels: &[KeyValue]) -> Self {
        Self {
            requests: requests.bind(labels),
            duration: duration.bind(labels),
        }
    }

    fn record(&self, elapsed: f64) {
        self.requests.add(1);
        self.duration.record(elapsed);
    }
}

impl HttpMetrics {
    pub fn new(meter: &Meter) -> Self {
        let mut m = Self {
            requests: meter
                .u64_counter("http_requests")
                .with_description("HTTP requests by method, endpoint (route) and status")
                .build(),
            duration: meter
                .f64_histogram("http_request_duration")
                .with_unit("s")
                .with_description("Time from request to response headers")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            grpc_requests: meter
                .u64_counter("grpc_server_requests")
                .with_description("gRPC calls by method and status code")
                .build(),
            active_connections: meter
                .i64_up_down_counter("http_active_connections")
                .with_description("Open client connections (HTTP/1 and HTTP/2)")
                .build(),
            refused_connections: meter
                .u64_counter("http_refused_connections")
                .with_description(
                    "Connections closed at accept: over server.max_connections (total) or server.max_connections_per_peer (per_peer)",
                )
                .build(),
            grpc_methods: LabelCap::default(),
            rest_ok: Vec::with_capacity(ROUTES.len()),
            grpc_ok: Vec::with_capacity(ROUTES.len()),
        };
        // Each RPC's successful series exists from the start at 0, over both protocols, so
        // a fresh gateway's dashboards and `rate()` alerts read 0 rather than "no data".
        for (method, route, rpc, _) in ROUTES {
            let labels = request_labels(method, *route, ok_status(route).as_u16(), false);
            m.requests.add(0, &labels);
            m.rest_ok
                .push(BoundSeries::new(&m.requests, &m.duration, &labels));
            let path = format!("/{SERVICE_NAME}/{rpc}");
            let method = m.grpc_methods.label(&path);
            let grpc_labels = [
                KeyValue::new("method", method.clone()),
                KeyValue::new("code", status::code_name(tonic::Code::Ok)),
            ];
            m.grpc_requests.add(0, &grpc_labels);
            let series = BoundSeries::new(
                &m.requests,
                &m.duration,
                &request_labels("POST", method, 200, true),
            );
            let calls = m.grpc_requests.bind(&grpc_labels);
            m.grpc_ok.push((path, series, calls));
        }
        m
    }

    /// The bound series of a successful call of a contract route or RPC, if this is one.
    fn bound_ok(
        &self,
        method: &str,
        route: Option<usize>,
        status: http::StatusCode,
        grpc: Option<(&str, Option<tonic::Code>)>,
    ) -> Option<(&BoundSeries, Option<&BoundCounter<u64>>)> {
        match grpc {
            Some((path, Some(tonic::Code::Ok))) if status == http::StatusCode::OK => {
                if method != "POST" {
                    return None;
                }
                let (_, series, calls) = self.grpc_ok.iter().find(|(p, _, _)| p == path)?;
                Some((series, Some(calls)))
            }
            Some(_) => None,
            None => {
                let i = route?;
                let (m, r, _, _) = ROUTES[i];
                (status == ok_status(r) && method == m).then(|| (&self.rest_ok[i], None))
            }
        }
    }
}

/// A contract route's status on success: the WebSocket route's is the handshake's 101.
fn ok_status(route: &str) -> http::StatusCode {
    if route == ROUTE_EVENTS_WS {
        http::StatusCode::SWITCHING_PROTOCOLS
    } else {
        http::StatusCode::OK
    }
}

fn request_labels(
    method: &'static str,
    endpoint: impl Into<StringValue>,
    status: u16,
    grpc: bool,
) -> [KeyValue; 4] {
    [
        KeyValue::new("method", method),
        KeyValue::new("endpoint", endpoint.into()),
        KeyValue::new("status", i64::from(status)),
        KeyValue::new("protocol", if grpc { "grpc" } else { "rest" }),
    ]
}

/// A `HeaderName`, not text: a name given as text is parsed and checked on every lookup (#26).
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The stack's first step, around `rest` (the steps below and the route): the request id,
/// the span, the metrics, the id echoed on the reply. `matched` is the route the request
/// matched, as the stack found it.
pub(super) async fn observe<F, Fut>(
    o: &HttpMetrics,
    mut req: Request,
    matched: Option<MatchedPath>,
    rest: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    let request_id = match req.headers().get(X_REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    let method = crate::telemetry::instruments::method_label(req.method());
    let route = matched.as_ref().map(|p| route_index(p.as_str()));
    let grpc = is_grpc(req.headers());
    let RequestSpan { cx, log } = make_span(
        &req,
        &request_id,
        grpc,
        matched.as_ref().map(MatchedPath::as_str),
    );
    let grpc_path = grpc.then(|| req.uri().path().to_owned());
    // The span's context is current (and the log span entered) on each poll of the handler,
    // not of the reply's body, which the handlers here fill before answering: a stream's
    // loop and a WebSocket session carry the trace themselves (`telemetry::CurrentTrace`).
    // tower-http's TraceLayer entered its span on every poll of the body too, and ran DEBUG
    // events and a failure classifier per request: about 4K instructions of a REST request
    // for lines nobody logs (#26). Polled here rather than wrapped in `Instrumented`, which
    // entered its span to drop what it wraps (about 700 instructions for a future with
    // nothing left in it): the spent future is dropped at the end of the block, outside the
    // span. A request cut off midway is dropped with this function's future, outside both.
    let mut resp = {
        let mut run = std::pin::pin!(rest(req));
        std::future::poll_fn(|task| {
            let _cx = cx.clone().attach();
            let _log = log.enter();
            run.as_mut().poll(task)
        })
        .await
    };
    echo_request_id(&mut resp, request_id);
    let elapsed = started.elapsed().as_secs_f64();
    // A unary reply carries grpc-status in its headers when it failed before any message
    // (every error here); a success carries it in the trailers: OK.
    let grpc_code = grpc_path.as_ref().map(|_| {
        resp.headers()
            .get(GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(tonic::Code::from)
            .unwrap_or(tonic::Code::Ok)
    });
    record_outcome(&cx, resp.status(), grpc_code);
    // One DEBUG line per request, inside its span (tower-http's TraceLayer wrote two).
    tracing::debug!(
        parent: &log,
        status = resp.status().as_u16(),
        latency_ms = elapsed * 1e3,
        "finished processing request"
    );
    // The request's handles on the span go here (a stream's loop and a WebSocket session
    // hold their own): the span ends when the last one does.
    drop((cx, log));
    if let Some((series, calls)) = o.bound_ok(
        method,
        route.flatten(),
        resp.status(),
        grpc_path.as_deref().map(|p| (p, grpc_code)),
    ) {
        series.record(elapsed);
        if let Some(calls) = calls {
            calls.add(1);
        }
        return resp;
    }
    let endpoint = match (route.flatten(), matched) {
        (Some(i), _) => StringValue::from(ROUTES[i].1),
        (None, Some(other)) => StringValue::from(other.as_str().to_owned()),
        (None, None) => StringValue::from("unmatched"),
    };
    // gRPC routes match `/{service}/{*rest}`: the method path (capped) is the endpoint, and
    // methods nobody serves (UNIMPLEMENTED) are one value, so made-up paths take no place in
    // the cap.
    let grpc = grpc_path.map(|path| match grpc_code {
        Some(tonic::Code::Unimplemented) => StringValue::from("unmatched"),
        _ => o.grpc_methods.label(&path),
    });
    let labels = request_labels(
        method,
        grpc.clone().unwrap_or(endpoint),
        resp.status().as_u16(),
        grpc.is_some(),
    );
    o.requests.add(1, &labels);
    o.duration.record(elapsed, &labels);
    if let (Some(path), Some(code)) = (grpc, grpc_code) {
        // An IngestStream call is counted when it opens (OK, or the code that refused it);
        // how each of its events went is in events_ingested_total /
        // events_ingested_failed_total.
        o.grpc_requests.add(
            1,
            &[
                KeyValue::new("method", path),
                KeyValue::new("code", status::code_name(code)),
            ],
        );
    }
    resp
}

/// A request id for a request that came without one: a random UUID, set on the request
/// (every layer, handler and log line after this one sees it) and echoed on the reply.
/// Here rather than in tower-http's SetRequestIdLayer, which did the same as a layer of its
/// own: a route's layer is a boxed service cloned per request (#26).
fn new_request_id() -> http::HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    http::HeaderValue::from_str(text).expect("a UUID's text is a header value")
}

/// The request's id on its reply, marked sensitive: HTTP/2's header compression (HPACK) then
/// writes it as a literal that is never indexed. Each reply's id is new: indexed, every one
/// went into the connection's table, pushing out the headers that do repeat, and each was
/// compared with all the ids already there (about 2K instructions a gRPC call, #26). On
/// HTTP/1 the mark changes nothing. tower-http's `PropagateRequestIdLayer` did the echo
/// before, as a layer of its own, without the mark.
fn echo_request_id(resp: &mut Response, mut id: http::HeaderValue) {
    if !resp.headers().contains_key(X_REQUEST_ID) {
        id.set_sensitive(true);
        resp.headers_mut().insert(X_REQUEST_ID, id);
    }
}

/// A matched route's place in the contract's `ROUTES`, if it is one of them (the others:
/// health, metrics, docs, gRPC's catch-all).
fn route_index(route: &str) -> Option<usize> {
    ROUTES.iter().position(|(_, r, _, _)| *r == route)
}

/// The server span's name of each contract route, `{method} {route}`.
const SPAN_NAMES: &[(&str, &str, &str)] = &[
    ("POST", ROUTE_INGEST_EVENT, "POST /api/v1/events"),
    ("POST", ROUTE_INGEST_BATCH, "POST /api/v1/events/batch"),
    ("POST", ROUTE_VALIDATE, "POST /api/v1/events/validate"),
    ("GET", ROUTE_TYPES, "GET /api/v1/types"),
    ("GET", ROUTE_EVENTS_WS, "GET /api/v1/events/ws"),
];

/// A request's server span, as the OpenTelemetry context it is current in, and the span its
/// log lines are written in (`Span::none()` when no log line can show one).
struct RequestSpan {
    cx: opentelemetry::Context,
    log: tracing::Span,
}

/// The server span of a request, named and attributed by OpenTelemetry's semantic
/// conventions (HTTP: `{method} {route}`, `http.request.method`, `http.route`, `url.path`,
/// `http.response.status_code`; gRPC: `{service}/{method}`, `rpc.system`, `rpc.service`,
/// `rpc.method`, `rpc.grpc.status_code`; both `request_id`), parented on the caller's W3C
/// `traceparent`.
///
/// Made with the SDK's tracer directly, not as a tracing span turned into one by
/// tracing-opentelemetry's layer: that path kept the span in tracing's registry, ran both
/// layers' filters on its every enter, exit and record, built a span builder, then the span at
/// its close: 6.7K instructions more per REST request than this (#26). The spans made inside a
/// request (`send`, `create`) still go through the layer, which parents them on this one
/// while its context is current (`observe` attaches it on every poll; `CurrentTrace` carries
/// it into the tasks a request starts). Log lines need a tracing span: one with the request's
/// method, route and path (gRPC: service and method), its id and the span's `trace_id` and
/// `span_id` is made when a log line can show it (`logs_show_spans`), under the target the
/// layer leaves out (`telemetry::LOG_SPANS`).
/// `grpc` and `route` (the matched route, if any) are the request's, as `observe` found them.
fn make_span(
    req: &http::Request<axum::body::Body>,
    request_id: &http::HeaderValue,
    grpc: bool,
    route: Option<&str>,
) -> RequestSpan {
    use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
    let Some(tracer) = crate::telemetry::tracer() else {
        // No telemetry installed (a router in a test): no spans, as tracing without a
        // subscriber.
        return RequestSpan {
            cx: opentelemetry::Context::new(),
            log: tracing::Span::none(),
        };
    };
    let request_id = request_id.to_str().unwrap_or("");
    let path = req.uri().path();
    let full = path.trim_start_matches('/');
    // A gRPC call's service and method, from its path.
    let (service, rpc) = full.split_once('/').unwrap_or((full, ""));
    let mut attributes = Vec::with_capacity(6);
    let name = if grpc {
        attributes.extend([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_owned()),
        ]);
        if grpc_served(service, rpc) {
            attributes.push(KeyValue::new("rpc.method", rpc.to_owned()));
            std::borrow::Cow::Owned(full.to_owned())
        } else {
            // A method nobody here serves (the path is the client's to choose): named `grpc`
            // and its method `_OTHER`, the client's kept beside it, as the conventions say,
            // so that made-up methods do not make a span name each, whatever the call's
            // outcome (refused by authentication first, or UNIMPLEMENTED).
            attributes.extend([
                KeyValue::new("rpc.method", "_OTHER"),
                KeyValue::new("rpc.method_original", rpc.to_owned()),
            ]);
            std::borrow::Cow::Borrowed("grpc")
        }
    } else {
        // The contract's routes have their names and routes written once (#26).
        let known = route.and_then(|r| {
            SPAN_NAMES
                .iter()
                .find(|(m, rt, _)| *rt == r && req.method() == m)
        });
        // The conventions' names: a method outside HTTP's set is `_OTHER` as an attribute
        // and `HTTP` in the span's name; a request no route matched is named by its method
        // alone (its path, which any client chooses, would make a span name per path).
        let method = match crate::telemetry::instruments::method_label(req.method()) {
            "other" => "_OTHER",
            m => m,
        };
        attributes.push(KeyValue::new("http.request.method", method));
        let named = if method == "_OTHER" { "HTTP" } else { method };
        match (known, route) {
            (Some((_, r, name)), _) => {
                attributes.push(KeyValue::new("http.route", *r));
                std::borrow::Cow::Borrowed(*name)
            }
            (None, Some(route)) => {
                attributes.push(KeyValue::new("http.route", route.to_owned()));
                std::borrow::Cow::Owned(format!("{named} {route}"))
            }
            (None, None) => std::borrow::Cow::Borrowed(named),
        }
    };
    if !grpc {
        attributes.push(KeyValue::new("url.path", path.to_owned()));
    }
    attributes.push(KeyValue::new("request_id", request_id.to_owned()));
    // The propagator installed is W3C trace context's (`telemetry::init`), which reads
    // nothing without a `traceparent`: such a request starts a trace of its own, without the
    // global propagator's lock and a lookup by a name given as text (about 900 instructions,
    // #26).
    let parent = if req.headers().contains_key(TRACEPARENT) {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(req.headers()))
        })
    } else {
        opentelemetry::Context::new()
    };
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(span);
    let log = if crate::telemetry::logs_show_spans() {
        let otel = cx.span();
        let sc = otel.span_context();
        // None (the fields left out) when the span is not a real one (the provider shut down).
        let valid = sc.is_valid();
        let trace_id = valid.then(|| tracing::field::display(sc.trace_id()));
        let span_id = valid.then(|| tracing::field::display(sc.span_id()));
        if grpc {
            tracing::info_span!(
                target: crate::telemetry::LOG_SPANS,
                "request",
                rpc.service = service,
                rpc.method = rpc,
                request_id,
                trace_id,
                span_id,
            )
        } else {
            tracing::info_span!(
                target: crate::telemetry::LOG_SPANS,
                "request",
                http.request.method = req.method().as_str(),
                http.route = route.unwrap_or(path),
                url.path = path,
                request_id,
                trace_id,
                span_id,
            )
        }
    } else {
        tracing::Span::none()
    };
    RequestSpan { cx, log }
}

/// Whether the gateway serves this gRPC method: the contract's RPCs, health's and
/// reflection's (`server::build` mounts those three services, by the names their crates
/// give them; tests/traces.rs holds a health check's span to its name).
fn grpc_served(service: &str, method: &str) -> bool {
    use tonic_health::pb::health_server::SERVICE_NAME as HEALTH;
    use tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME as REFLECTION;
    use tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME as REFLECTION_ALPHA;
    match service {
        SERVICE_NAME => ROUTES.iter().any(|(_, _, rpc, _)| *rpc == method),
        HEALTH => matches!(method, "Check" | "Watch"),
        REFLECTION | REFLECTION_ALPHA => method == "ServerReflectionInfo",
        _ => false,
    }
}

/// The outcome on the request's server span: the status code (an integer, as the
/// conventions say), and the span's status set to error where they say so (HTTP 5xx; the
/// gRPC codes a server is at fault for).
fn record_outcome(
    cx: &opentelemetry::Context,
    status: http::StatusCode,
    grpc: Option<tonic::Code>,
) {
    use opentelemetry::trace::TraceContextExt as _;
    use tonic::Code as C;
    let span = cx.span();
    let failed = match grpc {
        Some(code) => {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            matches!(
                code,
                C::Unknown
                    | C::DeadlineExceeded
                    | C::Unimplemented
                    | C::Internal
                    | C::Unavailable
                    | C::DataLoss
            )
        }
        None => {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            status.is_server_error()
        }
    };
    if failed {
        span.set_status(opentelemetry::trace::Status::error(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_route_has_its_span_name() {
        for (method, route, _, _) in ROUTES {
            assert!(
                SPAN_NAMES
                    .iter()
                    .any(|(m, r, name)| m == method && r == route && *name == format!("{m} {r}")),
                "{method} {route}"
            );
        }
    }
}
