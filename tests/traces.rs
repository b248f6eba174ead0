//! Traces, end to end, on the real binary with OTLP export on: an OTLP receiver the test runs
//! (the collector's `TraceService` over gRPC, and `POST /v1/traces` over HTTP/protobuf)
//! collects what the gateway exports. A REST and a gRPC request carrying a W3C `traceparent`
//! give server spans in the caller's trace with the semantic conventions' attributes, a child
//! `send` span covers the produce to Kafka (tansu), and the record's `traceparent` names that
//! span; the spooled path's `send` links to the span that spooled the event; the resource, the
//! sampler, JSON log lines that carry the trace; and a collector that is absent or stalls
//! never holds up ingestion, its dropped spans counted.
mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use event_gateway::proto::{CloudEvent, IngestEventRequest, IngestStreamRequest};
use event_gateway::transport::grpc::event_gateway_service_client::EventGatewayServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};

const TOPIC: &str = "events";

/// One exported span, flattened: ids in hex, attributes as text.
#[derive(Debug, Clone)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    /// The span's status code: 0 unset, 1 ok, 2 error.
    status: i32,
    /// When the span ended (Unix nanoseconds).
    end: u64,
    attrs: HashMap<String, String>,
    /// How many attributes were sent: more than `attrs` holds when a key was sent twice.
    sent_attrs: usize,
    /// The attributes sent as integers (the conventions' status codes are ints).
    int_attrs: Vec<String>,
    links: Vec<(String, String)>,
    resource: HashMap<String, String>,
}

fn text_of(kv: &[KeyValue]) -> HashMap<String, String> {
    kv.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// What a receiver got.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Exported>>>);

impl Received {
    fn take(&self, req: ExportTraceServiceRequest) {
        let mut out = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let resource = rs
                .resource
                .map(|r| text_of(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Exported {
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent: hex::encode(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        status: s.status.as_ref().map_or(0, |st| st.code),
                        end: s.end_time_unix_nano,
                        attrs: text_of(&s.attributes),
                        sent_attrs: s.attributes.len(),
                        int_attrs: s
                            .attributes
                            .iter()
                            .filter(|kv| {
                                matches!(
                                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                                    Some(AnyValue::IntValue(_))
                                )
                            })
                            .map(|kv| kv.key.clone())
                            .collect(),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                            .collect(),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Exported> {
        self.0.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, pick: impl Fn(&Exported) -> bool) -> Exported {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.spans().into_iter().find(&pick) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no span: {what}; got {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The collector's gRPC trace service; `stall`: it never answers.
struct Receiver {
    got: Received,
    stall: bool,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.stall {
            std::future::pending::<()>().await;
        }
        self.got.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A gRPC OTLP receiver on a free port: (its port, what it got).
async fn grpc_receiver(stall: bool) -> (u16, Received) {
    let got = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let svc = TraceServiceServer::new(Receiver {
        got: got.clone(),
        stall,
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (port, got)
}

/// An HTTP/protobuf OTLP receiver (`POST /v1/traces`) on a free port.
async fn http_receiver() -> (u16, Received) {
    let got = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                g.take(ExportTraceServiceRequest::decode(body).expect("OTLP protobuf"));
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

/// The real binary with `env` (OTLP settings) and `yaml`; stdout captured when asked.
/// The variable that sends the gateway's spans to the receiver on `port` (OTLP over gRPC).
fn otlp_endpoint(port: u16) -> (&'static str, String) {
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    )
}

async fn gateway(
    dir: &std::path::Path,
    yaml: &str,
    env: &[(&str, String)],
    stdout: Stdio,
) -> (tokio::process::Child, u16) {
    let port = free_port();
    std::fs::write(
        dir.join("config.yaml"),
        format!("server:\n  address: 127.0.0.1:{port}\nrate_limit:\n  enabled: false\n{yaml}"),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(GATEWAY_BIN);
    cmd.args(["--config", "config.yaml"])
        .current_dir(dir)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let c = http();
    let url = format!("http://127.0.0.1:{port}/health/live");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if c.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
            return (child, port);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use tokio::io::AsyncReadExt as _;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err).await;
            panic!("the gateway did not start with OTLP export on ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "the gateway never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Until the gateway on `port` says it is ready (its broker reached).
async fn wait_ready(port: u16) {
    let c = http();
    let ready = format!("http://127.0.0.1:{port}/health/ready");
    wait_until(Duration::from_secs(30), "ready", || {
        let r = c.get(&ready).send();
        async move { r.await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
}

fn traceparent(trace: &str, parent: &str, sampled: bool) -> String {
    format!("00-{trace}-{parent}-{}", if sampled { "01" } else { "00" })
}

fn random_hex(bytes: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..bytes * 2].to_owned()
}

async fn post(port: u16, path: &str, tp: Option<&str>, id: &str) -> u16 {
    let mut r = http()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(
            json!({"id": id, "type": "user.created", "source": "traces", "data": {}}).to_string(),
        );
    if let Some(tp) = tp {
        r = r.header("traceparent", tp);
    }
    r.send().await.unwrap().status().as_u16()
}

/// #29: export on (gRPC): the binary starts (it panicked at start: "there is no reactor
/// running"), REST and gRPC requests give server spans in the callers' traces with the
/// conventions' attributes, a child `send` span covers the produce, the Kafka record's
/// `traceparent` names it, the resource says who sent it, and JSON log lines carry the ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_requests_are_traced_through_kafka() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let (otlp, got) = grpc_receiver(false).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "kafka:\n  brokers: [\"{}\"]\n  topic: {TOPIC}\nlogging:\n  format: json\n  level: debug\n",
        broker.bootstrap()
    );
    let (mut child, port) =
        gateway(dir.path(), &yaml, &[otlp_endpoint(otlp)], Stdio::piped()).await;
    // The log lines are read as they come (a pipe left unread would fill and stall the
    // gateway's logging).
    let stdout = child.stdout.take().unwrap();
    let log = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt as _;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut out = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            out.push(l);
        }
        out
    });
    wait_ready(port).await;

    // REST.
    let (t1, p1) = (random_hex(16), random_hex(8));
    let tp1 = traceparent(&t1, &p1, true);
    assert_eq!(
        post(port, "/api/v1/events", Some(&tp1), "rest-1").await,
        200
    );
    let server = got
        .wait_for("the REST server span", |s| s.trace_id == t1 && s.kind == 2)
        .await;
    assert_eq!(server.parent, p1, "a child of the caller's span");
    assert_eq!(server.name, "POST /api/v1/events");
    assert_eq!(server.attrs["http.request.method"], "POST");
    assert_eq!(server.attrs["http.route"], "/api/v1/events");
    assert_eq!(server.attrs["http.response.status_code"], "200");
    assert_eq!(server.attrs["url.path"], "/api/v1/events");
    assert!(server.attrs["request_id"].len() >= 16, "{:?}", server.attrs);
    assert_eq!(server.status, 0, "a 200 leaves the status unset");
    assert!(
        server
            .int_attrs
            .contains(&"http.response.status_code".to_owned()),
        "an int, as the conventions say"
    );
    assert_eq!(server.resource["service.name"], "event-gateway");
    assert_eq!(
        server.resource["service.version"],
        env!("CARGO_PKG_VERSION")
    );
    let send = got
        .wait_for("the send span", |s| {
            s.trace_id == t1 && s.parent == server.span_id && s.kind == 4
        })
        .await;
    assert_eq!(send.name, format!("send {TOPIC}"));
    assert_eq!(send.attrs["messaging.system"], "kafka");
    assert_eq!(send.attrs["messaging.destination.name"], TOPIC);
    assert_eq!(send.attrs["messaging.operation.type"], "send");

    // gRPC.
    let (t2, p2) = (random_hex(16), random_hex(8));
    let mut grpc = EventGatewayServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let ev: CloudEvent =
        serde_json::from_value(json!({"id": "grpc-1", "type": "user.created", "source": "traces"}))
            .unwrap();
    let mut req = tonic::Request::new(IngestEventRequest {
        event: Some(ev),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("traceparent", traceparent(&t2, &p2, true).parse().unwrap());
    grpc.ingest_event(req).await.unwrap();
    let rpc = got
        .wait_for("the gRPC server span", |s| s.trace_id == t2 && s.kind == 2)
        .await;
    assert_eq!(rpc.parent, p2);
    assert_eq!(rpc.name, "eventgateway.v1.EventGatewayService/IngestEvent");
    assert_eq!(rpc.attrs["rpc.system"], "grpc");
    assert_eq!(
        rpc.attrs["rpc.service"],
        "eventgateway.v1.EventGatewayService"
    );
    assert_eq!(rpc.attrs["rpc.method"], "IngestEvent");
    assert_eq!(rpc.attrs["rpc.grpc.status_code"], "0");
    assert!(rpc.int_attrs.contains(&"rpc.grpc.status_code".to_owned()));
    assert_eq!(rpc.status, 0);
    got.wait_for("the gRPC send span", |s| {
        s.trace_id == t2 && s.parent == rpc.span_id && s.kind == 4
    })
    .await;

    // A code the server is at fault for (UNIMPLEMENTED, a method nobody serves) marks the
    // server span's status as an error, as the conventions say; such a span is named `grpc`,
    // its method `_OTHER` (the conventions' value for a method the server does not know), the
    // client's kept beside it, so that made-up methods make no span name each. Both ways a
    // method goes unserved: a service that is served (its route's wildcard), and one that is
    // not (the fallback). A served method keeps its name whatever the outcome, UNIMPLEMENTED
    // included (tonic's answer to a `grpc-encoding` it does not take), and so do the health
    // service's.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (path, encoding, name, method) in [
        (
            "/eventgateway.v1.EventGatewayService/NoSuchMethod",
            "identity",
            "grpc",
            "_OTHER",
        ),
        (
            "/no.such.Service/NoSuchMethod",
            "identity",
            "grpc",
            "_OTHER",
        ),
        (
            "/eventgateway.v1.EventGatewayService/IngestEvent",
            "deflate",
            "eventgateway.v1.EventGatewayService/IngestEvent",
            "IngestEvent",
        ),
        (
            "/grpc.health.v1.Health/Check",
            "deflate",
            "grpc.health.v1.Health/Check",
            "Check",
        ),
    ] {
        let t3 = random_hex(16);
        let r = h2
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-encoding", encoding)
            .header("traceparent", traceparent(&t3, &random_hex(8), true))
            .body(vec![0u8; 5])
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["grpc-status"], "12", "{path}: UNIMPLEMENTED");
        let failed = got
            .wait_for("the failed call's server span", |s| {
                s.trace_id == t3 && s.kind == 2
            })
            .await;
        assert_eq!(failed.attrs["rpc.grpc.status_code"], "12", "{path}");
        assert_eq!(failed.status, 2, "{path}: an error");
        assert_eq!(failed.name, name, "{path}");
        assert_eq!(failed.attrs["rpc.method"], method, "{path}");
        assert_eq!(
            failed.attrs.get("rpc.method_original").map(String::as_str),
            (method == "_OTHER").then_some("NoSuchMethod"),
            "{path}"
        );
        assert_eq!(
            failed.sent_attrs,
            failed.attrs.len(),
            "{path}: an attribute sent twice"
        );
    }

    // A path no route serves: named by the method alone, no `http.route` (a client's paths
    // would each make a span name).
    let t4 = random_hex(16);
    assert_eq!(
        post(
            port,
            "/no/such/route",
            Some(&traceparent(&t4, &random_hex(8), true)),
            "x"
        )
        .await,
        404
    );
    let unmatched = got
        .wait_for("the unmatched request's server span", |s| {
            s.trace_id == t4 && s.kind == 2
        })
        .await;
    assert_eq!(unmatched.name, "POST");
    assert!(
        !unmatched.attrs.contains_key("http.route"),
        "{:?}",
        unmatched.attrs
    );
    assert_eq!(unmatched.attrs["url.path"], "/no/such/route");

    // IngestStream: the call's server span is the parent of the send spans of events sent
    // on it, and it ends when the stream does (the loop carries the request's trace).
    let t5 = random_hex(16);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "traceparent",
        traceparent(&t5, &random_hex(8), true).parse().unwrap(),
    );
    let mut replies = grpc.ingest_stream(req).await.unwrap().into_inner();
    for id in ["stream-1", "stream-2"] {
        let ev: CloudEvent =
            serde_json::from_value(json!({"id": id, "type": "user.created", "source": "traces"}))
                .unwrap();
        tx.send(IngestStreamRequest {
            sequence: None,
            events: vec![ev],
        })
        .await
        .unwrap();
        replies
            .message()
            .await
            .unwrap()
            .expect("a report per message");
    }
    drop(tx);
    while replies.message().await.unwrap().is_some() {}
    let stream = got
        .wait_for("the stream's server span", |s| {
            s.trace_id == t5 && s.kind == 2
        })
        .await;
    assert_eq!(
        stream.name,
        "eventgateway.v1.EventGatewayService/IngestStream"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let sends: Vec<Exported> = loop {
        assert!(
            Instant::now() < deadline,
            "no two send spans in the stream's trace: {:#?}",
            got.spans()
        );
        let sends: Vec<Exported> = got
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == t5 && s.kind == 4)
            .collect();
        if sends.len() >= 2 {
            break sends;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for send in &sends {
        assert_eq!(send.parent, stream.span_id, "a child of the stream's span");
        assert!(
            stream.end >= send.end,
            "the stream's span ended before the send of an event sent on it"
        );
    }

    // The WebSocket: the same, through the session the upgrade starts.
    {
        use futures::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let t6 = random_hex(16);
        let mut req = format!("ws://127.0.0.1:{port}/api/v1/events/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "traceparent",
            traceparent(&t6, &random_hex(8), true).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::text(
            json!({"specversion": "1.0", "id": "ws-1", "type": "user.created", "source": "traces"})
                .to_string(),
        ))
        .await
        .unwrap();
        let report = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a report within 20 s");
        assert!(matches!(report, Some(Ok(Message::Text(_)))), "{report:?}");
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        let session = got
            .wait_for("the WebSocket's server span", |s| {
                s.trace_id == t6 && s.kind == 2
            })
            .await;
        assert_eq!(session.name, "GET /api/v1/events/ws");
        let send = got
            .wait_for("the WebSocket event's send span", |s| {
                s.trace_id == t6 && s.kind == 4
            })
            .await;
        assert_eq!(
            send.parent, session.span_id,
            "a child of the WebSocket's span"
        );
        assert!(
            session.end >= send.end,
            "the session's span ended before its send"
        );
    }

    // The records carry their send span's context: a consumer continues the trace.
    let records = broker.read_all(TOPIC, 2, Duration::from_secs(30));
    let rest = records
        .iter()
        .find(|r| r.headers["ce_id"] == "rest-1")
        .unwrap();
    assert_eq!(
        rest.headers["traceparent"],
        traceparent(&t1, &send.span_id, true)
    );

    // JSON log lines written inside the request carry its trace and span ids.
    child.kill().await.unwrap();
    let lines: Vec<Value> = log
        .await
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.iter().any(|l| l["span"]["trace_id"] == t1.as_str()
            && l["span"]["span_id"] == server.span_id.as_str()),
        "no log line with the request's trace_id and span_id"
    );
    // At DEBUG, the request's own line: its status and latency, inside its span.
    let done = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "finished processing request"
                && l["span"]["trace_id"] == t1.as_str()
        })
        .expect("the request's 'finished processing request' line");
    assert_eq!(done["fields"]["status"], 200);
    assert!(
        done["fields"]["latency_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= 0.0)
    );
}

/// With `dedup.window` on, the first of an id is written from a task of its own (so that a
/// client giving up cannot leave its claim open): that task carries the request's span, so
/// the record still continues the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dedup_on_the_record_continues_the_requests_trace() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let (otlp, got) = grpc_receiver(false).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "kafka:\n  brokers: [\"{}\"]\n  topic: {TOPIC}\ndedup:\n  window: 10m\n",
        broker.bootstrap()
    );
    let (_child, port) = gateway(dir.path(), &yaml, &[otlp_endpoint(otlp)], Stdio::null()).await;
    wait_ready(port).await;
    let (t, p) = (random_hex(16), random_hex(8));
    let tp = traceparent(&t, &p, true);
    assert_eq!(
        post(port, "/api/v1/events", Some(&tp), "dedup-1").await,
        200
    );
    let server = got
        .wait_for("the server span", |s| s.trace_id == t && s.kind == 2)
        .await;
    let send = got
        .wait_for("the send span, a child of the server span", |s| {
            s.trace_id == t && s.parent == server.span_id && s.kind == 4
        })
        .await;
    let records = broker.read_all(TOPIC, 1, Duration::from_secs(30));
    assert_eq!(
        records[0].headers["traceparent"],
        traceparent(&t, &send.span_id, true)
    );
}

/// #29: the spooled path: a `create` span (child of the request's) whose context the record
/// keeps, and the forwarder's `send` span linked to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spooled_path_links_the_forwarders_send_to_the_spooling_request() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let (otlp, got) = grpc_receiver(false).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "kafka:\n  brokers: [\"{}\"]\n  topic: {TOPIC}\n",
        broker.bootstrap()
    );
    let (_child, port) = gateway(dir.path(), &yaml, &[otlp_endpoint(otlp)], Stdio::null()).await;
    let (t, p) = (random_hex(16), random_hex(8));
    let tp = traceparent(&t, &p, true);
    assert_eq!(
        post(port, "/api/v1/events?ack=spooled", Some(&tp), "spooled-1").await,
        202
    );
    let server = got
        .wait_for("the server span", |s| s.trace_id == t && s.kind == 2)
        .await;
    let create = got
        .wait_for("the create span", |s| {
            s.trace_id == t && s.parent == server.span_id && s.name.starts_with("create")
        })
        .await;
    assert_eq!(create.attrs["messaging.operation.type"], "create");
    let send = got
        .wait_for("the forwarder's send span", |s| {
            s.kind == 4 && s.links.contains(&(t.clone(), create.span_id.clone()))
        })
        .await;
    assert_eq!(send.attrs["messaging.destination.name"], TOPIC);
    let records = broker.read_all(TOPIC, 1, Duration::from_secs(30));
    assert_eq!(
        records[0].headers["traceparent"],
        traceparent(&t, &create.span_id, true)
    );
}

/// #29: HTTP/protobuf export, and the resource from OTEL_SERVICE_NAME and
/// OTEL_RESOURCE_ATTRIBUTES.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_and_the_resource_from_the_environment() {
    let (otlp, got) = http_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let (_child, port) = gateway(
        dir.path(),
        "storage:\n  data_dir: data\n",
        &[
            otlp_endpoint(otlp),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_SERVICE_NAME", "ingest-edge".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test,service.version=9.9.9".into(),
            ),
        ],
        Stdio::null(),
    )
    .await;
    let (t, p) = (random_hex(16), random_hex(8));
    assert_eq!(
        post(
            port,
            "/api/v1/events",
            Some(&traceparent(&t, &p, true)),
            "http-1"
        )
        .await,
        200
    );
    let s = got.wait_for("a span over HTTP", |s| s.trace_id == t).await;
    assert_eq!(s.resource["service.name"], "ingest-edge");
    assert_eq!(s.resource["deployment.environment"], "test");
    assert_eq!(s.resource["service.version"], "9.9.9");
}

/// #29: OTEL_TRACES_SAMPLER is the SDK's: parentbased_traceidratio at 0 exports what a
/// sampled parent asked for and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_from_the_environment_is_respected() {
    let (otlp, got) = grpc_receiver(false).await;
    let dir = tempfile::tempdir().unwrap();
    let (_child, port) = gateway(
        dir.path(),
        "storage:\n  data_dir: data\n",
        &[
            otlp_endpoint(otlp),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
            ("OTEL_TRACES_SAMPLER_ARG", "0".into()),
        ],
        Stdio::null(),
    )
    .await;
    let unsampled = random_hex(16);
    assert_eq!(
        post(
            port,
            "/api/v1/events",
            Some(&traceparent(&unsampled, &random_hex(8), false)),
            "u"
        )
        .await,
        200
    );
    assert_eq!(post(port, "/api/v1/events", None, "root").await, 200);
    // A sampled request after them: once it is exported, the others would have been.
    let sampled = random_hex(16);
    assert_eq!(
        post(
            port,
            "/api/v1/events",
            Some(&traceparent(&sampled, &random_hex(8), true)),
            "s"
        )
        .await,
        200
    );
    got.wait_for("the sampled request", |s| s.trace_id == sampled)
        .await;
    let spans = got.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == sampled),
        "only the sampled parent's trace is exported: {spans:#?}"
    );
}

/// The gateway's `otel_spans_dropped_total{reason}`.
async fn dropped(port: u16, reason: &str) -> u64 {
    let text = get_text(&http(), format!("http://127.0.0.1:{port}/metrics")).await;
    text.lines()
        .find(|l| {
            l.starts_with("otel_spans_dropped_total") && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

/// Sends `n` events one after the other: the slowest request's time.
async fn load(port: u16, n: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let started = Instant::now();
        let tp = traceparent(&random_hex(16), &random_hex(8), true);
        assert_eq!(
            post(port, "/api/v1/events", Some(&tp), &format!("e{i}")).await,
            200
        );
        worst = worst.max(started.elapsed());
    }
    worst
}

/// #29: a collector that is absent, or that takes spans and never answers, holds up no
/// request; the spans that cannot go are dropped and counted, and memory stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_absent_or_stalled_never_holds_up_ingestion() {
    // Absent: nothing listens on its port.
    let dir = tempfile::tempdir().unwrap();
    let (_absent, port) = gateway(
        dir.path(),
        "storage:\n  data_dir: data\n",
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", free_port()),
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "200".into()),
        ],
        Stdio::null(),
    )
    .await;
    let worst = load(port, 200).await;
    assert!(worst < Duration::from_secs(1), "a request took {worst:?}");
    let c = http();
    wait_until(Duration::from_secs(30), "spans counted as dropped", || {
        let d = dropped(port, "export_failed");
        async move { d.await > 0 }
    })
    .await;
    drop(c);

    // Stalled: it accepts the export and never answers; the queue (64 spans) fills.
    let (otlp, _got) = grpc_receiver(true).await;
    let dir = tempfile::tempdir().unwrap();
    let (stalled, port) = gateway(
        dir.path(),
        "storage:\n  data_dir: data\n",
        &[
            otlp_endpoint(otlp),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64".into()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16".into()),
        ],
        Stdio::null(),
    )
    .await;
    let pid = stalled.id().unwrap();
    load(port, 100).await;
    let before = rss_kib(pid);
    let worst = load(port, 1000).await;
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(worst < Duration::from_secs(1), "a request took {worst:?}");
    assert!(
        dropped(port, "queue_full").await > 500,
        "the full queue drops spans"
    );
    assert!(
        grown < 32 * 1024,
        "RSS grew by {grown} KiB while the collector stalled"
    );
}
