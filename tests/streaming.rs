//! Streaming ingest over both of its faces, IngestStream (tonic client) and the WebSocket
//! route (tokio-tungstenite client): every event stored and reported once, in the order it
//! arrived; an invalid or unreadable event fails alone; per-event rate limits; the stream cap;
//! client cancel; the drain; frame limits and close codes; compressed gRPC messages and the
//! bomb they allow; and equal Kafka records whichever way an event arrived.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use event_gateway::proto::{CloudEvent, IngestStreamRequest, IngestStreamResponse, Outcome};
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

fn event(id: &str) -> CloudEvent {
    serde_json::from_value(serde_json::json!({
        "id": id, "type": "user.created", "source": "stream-test",
        "data": {"user_id": id}
    }))
    .unwrap()
}

fn request(sequence: Option<u64>, events: Vec<CloudEvent>) -> IngestStreamRequest {
    IngestStreamRequest { sequence, events }
}

/// An open IngestStream: a sender for requests and the stream of results.
struct GrpcStream {
    tx: mpsc::Sender<IngestStreamRequest>,
    results: tonic::Streaming<IngestStreamResponse>,
    /// Held while the stream is read, as a real client holds its channel: dropped, its
    /// connection closes once the call's frames are in, and a status not yet read is lost to
    /// "broken pipe".
    _client:
        event_gateway::transport::grpc::event_gateway_service_client::EventGatewayServiceClient<
            tonic::transport::Channel,
        >,
}

async fn open_stream(gw: &TestGateway) -> Result<GrpcStream, tonic::Status> {
    open_stream_from(gw, None).await
}

/// A stream from the client `forwarded_for` names (an X-Forwarded-For address, for a gateway
/// that trusts the loopback as a proxy), or from the loopback itself.
async fn open_stream_from(
    gw: &TestGateway,
    forwarded_for: Option<&str>,
) -> Result<GrpcStream, tonic::Status> {
    let (tx, rx) = mpsc::channel(64);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(ip) = forwarded_for {
        req.metadata_mut()
            .insert("x-forwarded-for", ip.parse().unwrap());
    }
    let mut client = gw.grpc().await;
    let results = client.ingest_stream(req).await?.into_inner();
    Ok(GrpcStream {
        tx,
        results,
        _client: client,
    })
}

impl GrpcStream {
    async fn send(&self, r: IngestStreamRequest) {
        self.tx.send(r).await.unwrap();
    }

    /// The next `n` results.
    async fn take(&mut self, n: usize) -> Vec<IngestStreamResponse> {
        let mut out = Vec::new();
        while out.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(20), self.results.next())
                .await
                .expect("a result within 20 s");
            out.push(
                next.expect("the stream ended early")
                    .expect("a result, not a status"),
            );
        }
        out
    }

    /// Closes our side and reads to the end: the remaining results and the final status.
    async fn finish(mut self) -> (Vec<IngestStreamResponse>, Result<(), tonic::Status>) {
        drop(self.tx);
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.results.next())
                .await
                .expect("the stream ends within 20 s")
            {
                Some(Ok(r)) => out.push(r),
                Some(Err(status)) => return (out, Err(status)),
                None => return (out, Ok(())),
            }
        }
    }
}

fn by_sequence(results: Vec<IngestStreamResponse>) -> BTreeMap<u64, IngestStreamResponse> {
    let n = results.len();
    let map: BTreeMap<_, _> = results.into_iter().map(|r| (r.sequence, r)).collect();
    assert_eq!(map.len(), n, "a sequence number was reported twice");
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_stores_every_event_once_in_the_order_it_arrived() {
    let gw = TestGateway::local().await;
    let s = open_stream(&gw).await.unwrap();
    // Numbered by the client (100, then 101-103 in one request), then numbered by the server
    // from where the last request left off.
    s.send(request(Some(100), vec![event("e100")])).await;
    s.send(request(
        None,
        vec![event("e101"), event("e102"), event("e103")],
    ))
    .await;
    for i in 104..300 {
        s.send(request(None, vec![event(&format!("e{i}"))])).await;
    }
    let (results, end) = s.finish().await;
    end.expect("a stream the client closed ends with OK");
    let results = by_sequence(results);
    assert_eq!(
        results.keys().copied().collect::<Vec<_>>(),
        (100..300).collect::<Vec<_>>()
    );
    let lines = gw.log_lines();
    assert_eq!(lines.len(), 200);
    for (seq, r) in &results {
        assert_eq!(r.outcome, Outcome::Stored as i32, "{r:?}");
        assert_eq!(r.id, format!("e{seq}"));
        // The local log's offset is the line: events were stored in the order sent.
        assert_eq!(r.offset, (*seq - 100) as i64, "{r:?}");
        assert_eq!(lines[r.offset as usize]["id"], r.id);
    }
}

/// Many events taken at once (whole requests of 100): the stream's loop polls hundreds of
/// them in one turn, past tokio's cooperative budget, and still stores them in the order
/// they arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_taken_many_at_a_time_are_stored_in_the_order_they_arrived() {
    let gw = TestGateway::local().await;
    let s = open_stream(&gw).await.unwrap();
    for r in 0..5 {
        let events = (0..100)
            .map(|i| event(&format!("e{}", r * 100 + i)))
            .collect();
        s.send(request(None, events)).await;
    }
    let (results, end) = s.finish().await;
    end.expect("a stream the client closed ends with OK");
    let results = by_sequence(results);
    assert_eq!(results.len(), 500);
    for r in results.values() {
        assert_eq!(r.outcome, Outcome::Stored as i32, "{r:?}");
    }
    let lines = gw.log_lines();
    assert_eq!(lines.len(), 500);
    let out_of_order: Vec<_> = results
        .iter()
        .filter(|(seq, r)| r.offset != **seq as i64)
        .map(|(seq, r)| (*seq, r.offset))
        .take(5)
        .collect();
    assert!(
        out_of_order.is_empty(),
        "(sequence, offset) stored out of order: {out_of_order:?}"
    );
    for (seq, line) in lines.iter().enumerate() {
        assert_eq!(line["id"], format!("e{seq}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_event_in_the_middle_of_a_stream_fails_alone() {
    let gw = TestGateway::local().await;
    let mut s = open_stream(&gw).await.unwrap();
    let mut bad = event("bad");
    bad.r#type.clear();
    s.send(request(Some(1), vec![event("a"), bad, event("b")]))
        .await;
    // An empty request is one failed result, not the end of the stream.
    s.send(request(Some(10), vec![])).await;
    let first = by_sequence(s.take(4).await);
    s.send(request(Some(20), vec![event("c")])).await;
    let (rest, end) = s.finish().await;
    end.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].outcome, Outcome::Stored as i32);

    assert_eq!(first[&1].outcome, Outcome::Stored as i32);
    assert_eq!(first[&3].outcome, Outcome::Stored as i32);
    let failed = &first[&2];
    assert_eq!(failed.outcome, Outcome::Failed as i32);
    assert_eq!(failed.id, "bad");
    let err = failed.error.as_ref().unwrap();
    assert_eq!(err.code, "INVALID_ARGUMENT");
    assert!(!err.retryable);
    assert_eq!(err.field_violations[0].field, "event.type");
    let empty = &first[&10].error.as_ref().unwrap();
    assert_eq!(empty.field_violations[0].field, "events");
    // a, b and c were stored; nothing of the invalid event.
    let ids: Vec<_> = gw.log_lines().iter().map(|l| l["id"].clone()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_events_pass_the_rate_limit_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rate_limit.enabled = true;
    config.rate_limit.requests_per_second = 1;
    config.rate_limit.burst_size = 5;
    let gw = TestGateway::start(config).await;
    let s = open_stream(&gw).await.unwrap();
    s.send(request(
        Some(0),
        (0..10).map(|i| event(&format!("r{i}"))).collect(),
    ))
    .await;
    let (results, end) = s.finish().await;
    end.unwrap();
    let stored = results
        .iter()
        .filter(|r| r.outcome == Outcome::Stored as i32)
        .count();
    // The bucket holds 5 and refills one a second: 5 or 6 pass, never all 10.
    assert!((5..=6).contains(&stored), "{results:?}");
    for r in results
        .iter()
        .filter(|r| r.outcome == Outcome::Failed as i32)
    {
        let e = r.error.as_ref().unwrap();
        assert_eq!(e.code, "RESOURCE_EXHAUSTED", "{r:?}");
        assert!(e.retryable);
        assert!(e.message.contains("rate_limit"), "{}", e.message);
    }
    assert_eq!(gw.log_lines().len(), stored);
    let metrics = gw.metrics().await;
    let refused: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("events_ingested_failed_total{") && l.contains("reason=\"rate_limited\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused as usize, 10 - stored, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_cap_refuses_a_second_stream_until_the_first_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.performance.max_streams = 1;
    let gw = TestGateway::start(config).await;
    let mut first = open_stream(&gw).await.unwrap();
    first.send(request(None, vec![event("one")])).await;
    first.take(1).await;

    let refused = open_stream(&gw).await.err().expect("over max_streams");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("performance.max_streams"));
    let (_ws, close) = ws_connect_refused(&gw).await;
    assert_eq!(close.0, CloseCode::Again, "{close:?}");
    assert!(close.1.contains("performance.max_streams"), "{close:?}");

    // The client cancels (drops the call): its slot comes back and the gateway serves on.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        if let Ok(s) = open_stream(&gw).await {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stream slot after cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    again.send(request(None, vec![event("two")])).await;
    let (results, end) = again.finish().await;
    end.unwrap();
    assert_eq!(results[0].outcome, Outcome::Stored as i32);
    assert_eq!(gw.log_lines().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_open_every_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.performance.max_streams = 10;
    config.performance.max_streams_per_client = 1;
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    let gw = TestGateway::start(config).await;
    let mut first = open_stream(&gw).await.unwrap();
    first.send(request(None, vec![event("one")])).await;
    first.take(1).await;

    // The same client (the loopback) has its one stream: refused, naming the share...
    let refused = open_stream(&gw)
        .await
        .err()
        .expect("over max_streams_per_client");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("performance.max_streams_per_client"),
        "{refused:?}"
    );
    let (_ws, close) = ws_connect_refused(&gw).await;
    assert_eq!(close.0, CloseCode::Again, "{close:?}");
    assert!(close.1.contains("max_streams_per_client"), "{close:?}");
    // ...while another client (RFC 5737 address, in a header only) opens one.
    let mut other = open_stream_from(&gw, Some("198.51.100.9")).await.unwrap();
    other.send(request(None, vec![event("other")])).await;
    assert_eq!(other.take(1).await[0].outcome, Outcome::Stored as i32);

    // Cancelled, the first stream gives its client's share back.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_stream(&gw).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no stream for the client after cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway with a half-second `shutdown.drain_delay`: streams go on through it (unary
/// requests do too) and stop with the listener, so events keep arriving while it shuts down.
async fn gateway_with_a_drain_delay() -> (tempfile::TempDir, TestGateway) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.shutdown.drain_delay = Duration::from_millis(500);
    let gw = TestGateway::start(config).await;
    (dir, gw)
}

/// The client writes as fast as it can through the drain, so the server closes a connection
/// with the client's bytes still unread: closed at once, the socket sent a TCP reset that
/// could overtake the final status, and the client saw "broken pipe" (about one full run of
/// this file in 13 before `server::linger`; hyper, h2 and tonic are optimized in the test
/// profile, as in a release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_a_stream_after_reporting_every_event_it_took() {
    let (_dir, gw) = gateway_with_a_drain_delay().await;
    let mut s = open_stream(&gw).await.unwrap();
    let mut ws = ws_connect(&gw).await;
    s.send(request(Some(0), vec![event("before")])).await;
    assert_eq!(s.take(1).await[0].outcome, Outcome::Stored as i32);
    // Keep sending while the gateway shuts down.
    let GrpcStream {
        tx,
        mut results,
        _client,
    } = s;
    let sender = tokio::spawn(async move {
        for i in 1..100_000u64 {
            if tx
                .send(request(Some(i), vec![event(&format!("d{i}"))]))
                .await
                .is_err()
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    });
    let stop = tokio::spawn(gw.stop_keeping_data());
    let mut stored = 1;
    let end = loop {
        match results.next().await {
            Some(Ok(r)) => {
                assert_eq!(r.outcome, Outcome::Stored as i32, "{r:?}");
                stored += 1;
            }
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");
    assert!(
        stored > 10,
        "only {stored} events stored during the drain delay"
    );
    // The WebSocket is told the gateway is going away.
    let close = ws_read_close(&mut ws).await;
    assert_eq!(close.0, CloseCode::Away, "{close:?}");
    let (report, data) = stop.await.unwrap();
    sender.abort();
    assert_eq!(report.undelivered, 0);
    // Every event with a result is stored, and no event without one.
    let lines = common::log_text(data.path()).lines().count();
    assert_eq!(lines, stored);
}

/// A WebSocket client that keeps sending through the drain gets the close frame (1001), not
/// a reset: the server reads on until the client's close (RFC 6455 §7.1.1). Without that
/// the socket closed with the client's frames unread, and the reset it sent could overtake
/// the close frame ("socket error before the close frame").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_keeps_sending_through_a_drain_gets_its_close_frame() {
    let (_dir, gw) = gateway_with_a_drain_delay().await;
    let (mut tx, mut rx) = ws_connect(&gw).await.split();
    tx.send(Message::text(WS_EVENT)).await.unwrap();
    assert_eq!(ws_results(&mut rx, 1).await[0]["outcome"], "OUTCOME_STORED");
    let sender = tokio::spawn(async move {
        while tx.send(Message::text(WS_EVENT)).await.is_ok() {
            tokio::task::yield_now().await;
        }
    });
    let stop = tokio::spawn(gw.stop_keeping_data());
    let close = ws_read_close(&mut rx).await;
    assert_eq!(close.0, CloseCode::Away, "{close:?}");
    sender.abort();
    let (report, _data) = stop.await.unwrap();
    assert_eq!(report.undelivered, 0);
}

// --- WebSocket ---------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(gw: &TestGateway) -> Ws {
    let url = format!("ws://{}/api/v1/events/ws", gw.addr);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Connects and expects the server to close at once; returns its close code and reason.
async fn ws_connect_refused(gw: &TestGateway) -> (Ws, (CloseCode, String)) {
    let mut ws = ws_connect(gw).await;
    let close = ws_read_close(&mut ws).await;
    (ws, close)
}

/// Reads until the server's close frame; results before it are ignored.
async fn ws_read_close(
    ws: &mut (impl futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin),
) -> (CloseCode, String) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a close frame within 20 s");
        match msg {
            Some(Ok(Message::Close(Some(f)))) => return (f.code, f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before the close frame: {e}"),
        }
    }
}

/// The next `n` result frames, parsed.
async fn ws_results(
    ws: &mut (impl futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin),
    n: usize,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a result frame within 20 s")
            .expect("the socket ended early")
            .unwrap();
        match msg {
            Message::Text(t) => out.push(serde_json::from_str(t.as_str()).unwrap()),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    out
}

const WS_EVENT: &str = r#"{"specversion":"1.0","id":"w1","type":"user.created","source":"ws-test","partitionkey":"k1","data":{"user_id":"1"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_stores_events_and_request_frames_and_reports_bad_frames() {
    let gw = TestGateway::local().await;
    let mut ws = ws_connect(&gw).await;
    ws.send(Message::text(WS_EVENT)).await.unwrap();
    let request = r#"{"sequence":"10","events":[
        {"id":"w10","type":"user.created","source":"ws-test"},
        {"id":"w11","source":"ws-test"},
        {"id":"w12","type":"user.created","source":"ws-test","bad":{"x":1}}]}"#;
    ws.send(Message::text(request)).await.unwrap();
    ws.send(Message::text("{not json")).await.unwrap();
    let mut results = ws_results(&mut ws, 5).await;
    results.sort_by_key(|r| r["sequence"].as_str().unwrap().parse::<u64>().unwrap());
    let seqs: Vec<_> = results.iter().map(|r| r["sequence"].clone()).collect();
    // Server-numbered from 0; the request frame numbered 10-12; the unreadable frame after it.
    assert_eq!(seqs, ["0", "10", "11", "12", "13"]);
    assert_eq!(results[0]["outcome"], "OUTCOME_STORED");
    assert_eq!(results[0]["id"], "w1");
    assert_eq!(results[1]["outcome"], "OUTCOME_STORED");
    assert_eq!(
        results[2]["error"]["fieldViolations"][0]["field"],
        "event.type"
    );
    assert_eq!(
        results[3]["error"]["fieldViolations"][0]["field"],
        "event.extensions[bad]"
    );
    assert_eq!(results[4]["error"]["code"], "INVALID_ARGUMENT");
    assert!(
        results[4]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a frame is one event"),
        "{}",
        results[4]
    );
    let lines = gw.log_lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["partitionkey"], "k1");

    // A binary frame breaks the protocol: close 1008, saying what to send.
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let close = ws_read_close(&mut ws).await;
    assert_eq!(close.0, CloseCode::Policy, "{close:?}");
    assert!(close.1.contains("text frames only"), "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_closes_the_websocket_with_1009_and_the_gateway_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.performance.max_request_size = bytesize::ByteSize::kib(64);
    let gw = TestGateway::start(config).await;
    let mut ws = ws_connect(&gw).await;
    let big = format!(
        r#"{{"type":"t","source":"s","data":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    ws.send(Message::text(big)).await.unwrap();
    let close = ws_read_close(&mut ws).await;
    assert_eq!(close.0, CloseCode::Size, "{close:?}");
    assert!(close.1.contains("65536 bytes"), "{close:?}");
    assert!(gw.log_lines().is_empty());
    // A new socket works.
    let mut ws = ws_connect(&gw).await;
    ws.send(Message::text(WS_EVENT)).await.unwrap();
    assert_eq!(ws_results(&mut ws, 1).await[0]["outcome"], "OUTCOME_STORED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_get_on_the_websocket_route_is_told_to_upgrade() {
    let gw = TestGateway::local().await;
    let r = http()
        .get(gw.url("/api/v1/events/ws"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    assert_eq!(r.headers()["upgrade"], "websocket");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("WebSocket handshake"),
        "{body}"
    );
    let r = post_raw(&http(), &gw.url("/api/v1/events/ws"), "{}").await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
}

/// Every browser sends an `Origin` on a WebSocket upgrade, and CORS does not apply to
/// WebSockets: without `server.cors` an upgrade from another site's page is refused (403
/// naming the header), so a page the user opens cannot push events through the user's
/// browser; clients that send no `Origin`, or their own `Host` as one (Python's
/// websocket-client), connect. With the origin listed, the page connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_websocket_needs_its_origin_listed() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    async fn upgrade(gw: &TestGateway, origin: &str) -> Result<(), (u16, String)> {
        let mut req = format!("ws://{}/api/v1/events/ws", gw.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => Ok(()),
            Err(tungstenite::Error::Http(r)) => Err((
                r.status().as_u16(),
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
            )),
            Err(e) => panic!("{e}"),
        }
    }
    let gw = TestGateway::local().await;
    let (status, body) = upgrade(&gw, "https://page.example").await.unwrap_err();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("header Origin") && body.contains("server.cors.allowed_origins"),
        "{body}"
    );
    let mut ws = ws_connect(&gw).await;
    ws.send(Message::text(WS_EVENT)).await.unwrap();
    assert_eq!(ws_results(&mut ws, 1).await[0]["outcome"], "OUTCOME_STORED");
    upgrade(&gw, &format!("http://{}", gw.addr)).await.unwrap();
    assert_eq!(upgrade(&gw, "null").await.unwrap_err().0, 403);

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.cors.allowed_origins = vec!["https://page.example".into()];
    let gw = TestGateway::start(config).await;
    upgrade(&gw, "https://page.example").await.unwrap();
    assert_eq!(
        upgrade(&gw, "https://other.example").await.unwrap_err().0,
        403
    );
}

/// The server pings; a client that answers nothing is closed after `server.idle_timeout`,
/// one that answers (tungstenite does, while it reads) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_pings_and_closes_a_silent_peer() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.idle_timeout = Duration::from_secs(2);
    let gw = TestGateway::start(config).await;
    // A reading client, in the background for 5 s: it sees pings and answers them.
    let mut live = ws_connect(&gw).await;
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(msg)) = tokio::time::timeout_at(until, live.next()).await {
            match msg.unwrap() {
                Message::Ping(_) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        (live, pings)
    });
    // A raw client that completes the handshake and then only reads bytes: it never answers
    // a ping, so after idle_timeout the server closes it with 1001.
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    silent
        .write_all(
            b"GET /api/v1/events/ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut bytes))
        .await
        .expect("the silent peer is closed within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // A close frame (0x88), its length, then code 1001 (0x03E9) and the reason.
    let close = bytes
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xE9);
    assert!(close.is_some(), "no 1001 close frame in {text}");
    assert!(text.contains("idle_timeout"), "{text}");

    let (mut live, pings) = reader.await.unwrap();
    assert!(pings >= 2, "{pings} pings in 5 s with idle_timeout 2 s");
    live.send(Message::text(WS_EVENT)).await.unwrap();
    assert_eq!(
        ws_results(&mut live, 1).await[0]["outcome"],
        "OUTCOME_STORED"
    );
}

// --- compressed gRPC ---------------------------------------------------------------------

/// Sends one gRPC message to `method` as a client that accepts gzip (as grpcio and grpc-java
/// do), over h2c; returns the reply's first message's compressed flag and length.
async fn reply_flag(gw: &TestGateway, method: &str, message: Vec<u8>) -> (u8, usize) {
    let mut body = vec![0u8];
    body.extend((message.len() as u32).to_be_bytes());
    body.extend(message);
    let r = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .post(gw.url(&format!("/eventgateway.v1.EventGatewayService/{method}")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-accept-encoding", "gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert!(bytes.len() >= 5, "no reply message: {bytes:?}");
    let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    (bytes[0], len)
}

/// A tiny unary reply is not compressed for a client that accepts gzip (a deflate state for
/// 80 bytes cost more instructions than the rest of the request, and made it bigger); a
/// batch's reply of at least `COMPRESS_REPLIES_FROM` bytes is; a stream's reports never are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_replies_are_compressed_only_when_that_pays() {
    use event_gateway::proto::{IngestBatchRequest, IngestEventRequest};
    use event_gateway::transport::grpc::COMPRESS_REPLIES_FROM;
    use prost::Message as _;
    let gw = TestGateway::local().await;
    let single = IngestEventRequest {
        event: Some(event("small")),
        ..Default::default()
    };
    let (flag, len) = reply_flag(&gw, "IngestEvent", single.encode_to_vec()).await;
    assert_eq!(flag, 0, "a {len}-byte reply was compressed");
    assert!(len < COMPRESS_REPLIES_FROM);
    let batch = IngestBatchRequest {
        events: (0..100).map(|i| event(&format!("b{i}"))).collect(),
        ..Default::default()
    };
    let (flag, len) = reply_flag(&gw, "IngestBatch", batch.encode_to_vec()).await;
    assert_eq!(flag, 1, "a batch reply ({len} bytes) was not compressed");
    // A stream's per-event reports: never compressed.
    let stream = request(None, vec![event("streamed")]);
    let (flag, len) = reply_flag(&gw, "IngestStream", stream.encode_to_vec()).await;
    assert_eq!(flag, 0, "a {len}-byte stream report was compressed");
    assert_eq!(gw.log_lines().len(), 102);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_may_be_compressed_and_a_bomb_stops_at_the_limit() {
    use event_gateway::proto::IngestEventRequest;
    use event_gateway::transport::grpc::event_gateway_service_client::EventGatewayServiceClient;
    use tonic::codec::CompressionEncoding;
    let gw = TestGateway::local().await;
    for enc in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut client = EventGatewayServiceClient::new(gw.channel().await)
            .send_compressed(enc)
            .accept_compressed(enc)
            .max_encoding_message_size(64 << 20);
        let reply = client
            .ingest_event(IngestEventRequest {
                event: Some(event("z")),
                ..Default::default()
            })
            .await
            .unwrap();
        // The reply names the client's encoding (this small reply's message itself goes
        // uncompressed: `grpc_replies_are_compressed_only_when_that_pays`).
        let got = reply
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            got.as_deref(),
            Some(if enc == CompressionEncoding::Gzip {
                "gzip"
            } else {
                "zstd"
            })
        );

        // 32 MiB of one letter compresses to a few KiB: the frame passes the declared-length
        // check, and decompression stops at performance.max_request_size (10 MiB).
        let mut bomb = event("bomb");
        bomb.payload = Some(event_gateway::proto::cloud_event::Payload::DataBase64(
            vec![b'a'; 32 << 20],
        ));
        let err = client
            .ingest_event(IngestEventRequest {
                event: Some(bomb),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("size limit"), "{err:?}");
    }
    let ids: Vec<_> = gw.log_lines().iter().map(|l| l["id"].clone()).collect();
    assert_eq!(ids, ["z", "z"]);
    // Still serving.
    gw.grpc_ingest_seed().await;
}

// --- equal records ----------------------------------------------------------------------

/// A gateway producing to `topic` (of `partitions`) on a tansu broker of its own, ready;
/// its data directory is the last part, held as long as the test runs.
async fn kafka_gateway(topic: &str, partitions: i32) -> (Broker, TestGateway, tempfile::TempDir) {
    let broker = Broker::start(topic, partitions).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.kafka.brokers = vec![broker.bootstrap()];
    config.kafka.topic = topic.into();
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    (broker, gw, dir)
}

/// The same event sent six ways (REST binary mode, structured mode, batch mode, gRPC unary,
/// IngestStream, WebSocket) becomes six equal Kafka records: same key, value and headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_in_gives_the_same_kafka_record() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let (broker, gw, _dir) = kafka_gateway("ways", 1).await;

    let structured = serde_json::json!({
        "specversion": "1.0", "id": "same-1", "type": "user.created",
        "source": "https://example.com/ways", "subject": "user 1",
        "time": "2026-01-02T03:04:05Z", "datacontenttype": "application/json",
        "partitionkey": "k-1", "data": {"user_id": "1", "n": 2}
    });
    let client = http();
    let url = gw.url("/api/v1/events");
    // Binary mode.
    let r = client
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "same-1")
        .header("ce-type", "user.created")
        .header("ce-source", "https://example.com/ways")
        .header("ce-subject", "user%201")
        .header("ce-time", "2026-01-02T03:04:05Z")
        .header("ce-partitionkey", "k-1")
        .header("content-type", "application/json")
        .body(r#"{"user_id":"1","n":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Structured mode.
    let r = client
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Batch mode.
    let r = client
        .post(gw.url("/api/v1/events/batch"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(format!("[{structured}]"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // gRPC unary and IngestStream: the contract's message (extensions in the map).
    let proto: CloudEvent = serde_json::from_value(serde_json::json!({
        "specversion": "1.0", "id": "same-1", "type": "user.created",
        "source": "https://example.com/ways", "subject": "user 1",
        "time": "2026-01-02T03:04:05Z", "datacontenttype": "application/json",
        "extensions": {"partitionkey": "k-1"}, "data": {"user_id": "1", "n": 2}
    }))
    .unwrap();
    gw.grpc()
        .await
        .ingest_event(event_gateway::proto::IngestEventRequest {
            event: Some(proto.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let s = open_stream(&gw).await.unwrap();
    s.send(request(None, vec![proto])).await;
    let (results, end) = s.finish().await;
    end.unwrap();
    assert_eq!(results[0].outcome, Outcome::Stored as i32, "{results:?}");
    // WebSocket: the CloudEvents JSON format.
    let mut ws = ws_connect(&gw).await;
    ws.send(Message::text(structured.to_string()))
        .await
        .unwrap();
    assert_eq!(ws_results(&mut ws, 1).await[0]["outcome"], "OUTCOME_STORED");

    let records = broker.read_all("ways", 6, Duration::from_secs(30));
    assert_eq!(records.len(), 6, "{records:?}");
    let strip = |r: &Record| {
        let mut h = r.headers.clone();
        // Each request has its own trace.
        h.remove("traceparent");
        h.remove("tracestate");
        (r.key.clone(), r.value_json(), h)
    };
    let first = strip(&records[0]);
    assert_eq!(first.0.as_deref(), Some("k-1"));
    assert_eq!(first.2["ce_id"], "same-1");
    for r in &records[1..] {
        assert_eq!(strip(r), first, "record at offset {}", r.offset);
    }
}

/// docs/api.md's "Events of one stream reach the sink in the order they arrived", with Kafka
/// as the sink (a direct produce, `ack: stored`): 200 events of one key over one stream,
/// singly and several to a request, are records in that order, each reported with its
/// record's offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_reaches_kafka_in_the_order_it_arrived() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let (broker, gw, _dir) = kafka_gateway("stream-order", 3).await;
    let keyed = |i: u64| -> CloudEvent {
        serde_json::from_value(serde_json::json!({
            "id": format!("o{i}"), "type": "user.created", "source": "stream-test",
            "extensions": {"partitionkey": "one-key"}, "data": {"n": i}
        }))
        .unwrap()
    };
    let s = open_stream(&gw).await.unwrap();
    for i in 0..100 {
        s.send(request(Some(i), vec![keyed(i)])).await;
    }
    for first in (100..200).step_by(4) {
        s.send(request(
            Some(first),
            (first..first + 4).map(keyed).collect(),
        ))
        .await;
    }
    let (results, end) = s.finish().await;
    end.unwrap();
    let results = by_sequence(results);
    assert_eq!(results.len(), 200);
    let mut records = broker.read_all("stream-order", 200, Duration::from_secs(60));
    records.sort_by_key(|r| (r.partition, r.offset));
    assert_eq!(records.len(), 200, "each event once");
    assert!(records.iter().all(|r| r.partition == records[0].partition));
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.headers["ce_id"].as_str())
        .collect();
    let sent: Vec<String> = (0..200).map(|i| format!("o{i}")).collect();
    assert_eq!(ids, sent, "records in the order the stream sent them");
    for (seq, r) in &results {
        assert_eq!(r.outcome, Outcome::Stored as i32, "{r:?}");
        assert_eq!(r.offset, records[*seq as usize].offset, "{r:?}");
    }
}

/// IngestStream and its WebSocket give the same result for the same event, valid or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_stream_and_the_websocket_give_the_same_results() {
    // The names an extension may not take are the context attributes and the data.
    const ATTRIBUTES: &[&str] = event_gateway::core::validate::RESERVED;
    let fixtures = [
        r#"{"id":"p1","type":"user.created","source":"parity","time":"2026-01-02T03:04:05Z","partitionkey":"k","data":{"a":1}}"#,
        r#"{"id":"p2","source":"parity"}"#,
        r#"{"id":"p3","type":"user.created","source":""}"#,
        r#"{"id":"p4","type":"user.created","source":"parity","specversion":"0.3"}"#,
        r#"{"id":"p5","type":"user.created","source":"parity","BadName":"x"}"#,
        r#"{"id":"p6","type":"user.created","source":"parity","time":"2026-01-02T03:04:05Z","dataschema":"not a uri"}"#,
    ];
    let gw = TestGateway::local().await;
    let mut ws = ws_connect(&gw).await;
    let s = open_stream(&gw).await.unwrap();
    for (i, f) in fixtures.iter().enumerate() {
        ws.send(Message::text(*f)).await.unwrap();
        // The contract's message: what is not a context attribute goes under `extensions`.
        let mut members: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(f).unwrap();
        let extensions: serde_json::Map<_, _> = members
            .iter()
            .filter(|(k, _)| !ATTRIBUTES.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        members.retain(|k, _| ATTRIBUTES.contains(&k.as_str()));
        members.insert("extensions".into(), extensions.into());
        let ev: CloudEvent = serde_json::from_value(members.into()).unwrap();
        s.send(request(Some(i as u64), vec![ev])).await;
    }
    let (grpc, end) = s.finish().await;
    end.unwrap();
    let grpc: BTreeMap<u64, serde_json::Value> = by_sequence(grpc)
        .into_iter()
        .map(|(k, r)| (k, serde_json::to_value(r).unwrap()))
        .collect();
    let websocket: BTreeMap<u64, serde_json::Value> = ws_results(&mut ws, fixtures.len())
        .await
        .into_iter()
        .map(|r| (r["sequence"].as_str().unwrap().parse().unwrap(), r))
        .collect();
    assert_eq!(grpc.len(), fixtures.len());
    let failed = grpc
        .values()
        .filter(|r| r["outcome"] == "OUTCOME_FAILED")
        .count();
    assert_eq!(failed, fixtures.len() - 1, "{grpc:?}");
    for (seq, g) in &grpc {
        let w = &websocket[seq];
        for field in ["id", "outcome", "error"] {
            assert_eq!(g[field], w[field], "{field} of fixture {seq}: {g} vs {w}");
        }
    }
    // The stored events are equal too (the local log's lines, without offsets).
    let lines = gw.log_lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], lines[1]);
}
