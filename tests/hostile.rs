//! Hostile and broken input that must get a client error naming what was wrong, never a
//! server error, and must cost bounded work: protobuf messages that do not decode, requests
//! full of violations, made-up methods inflating the metrics, batches refused by their count
//! before decoding, poison `data` (deep, long numbers, lone surrogates), half-open HTTP/2
//! connections, bodies slower than the deadline.
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_that_does_not_decode_is_invalid_argument_not_internal() {
    let gw = TestGateway::local().await;
    let cases: &[(&str, Vec<u8>, &str)] = &[
        // event (field 1) says 5 bytes follow; 3 do.
        (
            "truncated",
            vec![0x0a, 0x05, 0x12, 0x03, b'a'],
            "buffer underflow",
        ),
        // field 1 with wire type 7, which does not exist.
        ("bad wire type", vec![0x0f], "wire type"),
        // event.source (field 2 of CloudEvent) holding bytes that are not UTF-8.
        (
            "invalid UTF-8",
            vec![0x0a, 0x04, 0x12, 0x02, 0xff, 0xfe],
            "UTF-8",
        ),
        // a length that is an 11-byte varint.
        (
            "varint overflow",
            [vec![0x0a], vec![0xff; 11]].concat(),
            "varint",
        ),
    ];
    for method in ["IngestEvent", "IngestBatch", "Validate"] {
        for (what, bytes, says) in cases {
            let mut grpc = tonic::client::Grpc::new(gw.channel().await);
            grpc.ready().await.unwrap();
            let path = format!("/eventgateway.v1.EventGatewayService/{method}")
                .parse()
                .unwrap();
            let err = grpc
                .unary(tonic::Request::new(bytes.clone()), path, RawCodec)
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{method}, {what}: {err:?}"
            );
            assert!(
                err.message().contains("does not decode"),
                "{method}, {what}: {err:?}"
            );
            assert!(
                err.message().to_lowercase().contains(&says.to_lowercase()),
                "{method}, {what}: the message says what was wrong: {err:?}"
            );
        }
    }
    // Nothing was stored, and the gateway answers normally afterwards.
    assert!(gw.log_lines().is_empty());
    gw.grpc_ingest_seed().await;
    assert_eq!(gw.log_lines().len(), 1);
}

/// An event with `n` extensions whose names break the rules (upper case).
fn many_bad_extensions(n: usize) -> serde_json::Value {
    let ext: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (format!("Bad{i}"), serde_json::Value::from("v")))
        .collect();
    serde_json::json!({"type": "t", "source": "s", "extensions": ext})
}

/// The status IngestEvent refuses `ev` with (a test failure if it is stored).
async fn refused_over_grpc(
    gw: &TestGateway,
    ev: event_gateway::proto::CloudEvent,
) -> tonic::Status {
    gw.grpc()
        .await
        .ingest_event(event_gateway::proto::IngestEventRequest {
            event: Some(ev),
            ..Default::default()
        })
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violation_lists_are_capped_in_both_renderings() {
    use tonic_types::StatusExt as _;
    let gw = TestGateway::local().await;
    // REST: the first 100 violations and one entry counting the rest; a short message.
    let body = many_bad_extensions(5000).to_string();
    let r = post_raw(&http(), &gw.url("/api/v1/events"), &body).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.len() < 64 * 1024,
        "a {} byte error for a {} byte request",
        text.len(),
        body.len()
    );
    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fv = reply["details"][0]["fieldViolations"].as_array().unwrap();
    assert_eq!(fv.len(), 101);
    assert_eq!(fv[100]["field"], "event");
    assert!(
        fv[100]["description"]
            .as_str()
            .unwrap()
            .starts_with("and 4900 more violations"),
        "{}",
        fv[100]
    );
    assert!(
        reply["message"].as_str().unwrap().len() < 2048,
        "{}",
        reply["message"]
    );

    // gRPC: the status fits a client's 8 KiB metadata limit, and still says how many.
    let ev: event_gateway::proto::CloudEvent =
        serde_json::from_value(many_bad_extensions(5000)).unwrap();
    let err = refused_over_grpc(&gw, ev).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let trailer_bytes = err.message().len() + err.details().len().div_ceil(3) * 4;
    assert!(
        trailer_bytes < 8 * 1024,
        "{trailer_bytes} bytes of grpc-message and details"
    );
    let bad = err.get_details_bad_request().expect("BadRequest details");
    let last = bad.field_violations.last().unwrap();
    let listed = bad.field_violations.len() - 1;
    assert!(listed >= 20, "{listed} listed");
    assert_eq!(
        last.description,
        format!(
            "and {} more violations, not listed here (REST replies list up to 100)",
            5000 - listed
        )
    );

    // A batch shares one cap, counted under `events`.
    let events: Vec<serde_json::Value> = (0..50).map(|_| many_bad_extensions(10)).collect();
    let (status, reply) = gw.post_batch(&events).await;
    assert_eq!(status, 400);
    let fv = reply["details"][0]["fieldViolations"].as_array().unwrap();
    assert_eq!(fv.len(), 101);
    assert_eq!(fv[100]["field"], "events");
    assert!(
        fv[100]["description"]
            .as_str()
            .unwrap()
            .starts_with("and 400 more")
    );
    assert!(gw.log_lines().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_inflate_the_metrics_with_methods_or_paths() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let gw = TestGateway::local().await;
    let before = gw.metrics().await.len();
    // 100 custom HTTP methods of 64 KiB each, over plain HTTP/1.
    for i in 0..100 {
        let method = format!("X{i}{}", "M".repeat(64 * 1024));
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            format!("{method} /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply).await;
    }
    // 300 distinct gRPC method paths, some long.
    let mut grpc = tonic::client::Grpc::new(gw.channel().await);
    for i in 0..300 {
        grpc.ready().await.unwrap();
        let path = format!(
            "/eventgateway.v1.EventGatewayService/M{i}{}",
            "x".repeat(i % 3 * 100)
        )
        .parse()
        .unwrap();
        let err = grpc
            .unary(tonic::Request::new(vec![]), path, RawCodec)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }
    let text = gw.metrics().await;
    assert!(
        text.len() < before + 256 * 1024,
        "the scrape grew from {before} to {} bytes",
        text.len()
    );
    assert!(
        text.contains(r#"method="other""#),
        "unknown methods collapse into one value"
    );
    assert!(
        !text.contains("MMMMMMMM"),
        "no method's text is a label value"
    );
    let longest = text
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest <= 128, "a label value of {longest} bytes");
}

/// `n` empty events framed as an `IngestBatchRequest`: field 1, length 0, `n` times.
fn grpc_batch_of_empty_events(n: usize) -> Vec<u8> {
    [0x0a, 0x00].repeat(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_refused_by_its_count_before_its_events_are_decoded() {
    let gw = TestGateway::local().await;
    let n = 1_000_000;
    let says =
        format!("has {n} events, over the limit of 1000 per batch (limits.max_batch_events)");
    // REST, the contract's JSON: `{"events":[{},{},...]}`.
    let body = format!(r#"{{"events":[{}]}}"#, vec!["{}"; n].join(","));
    let r = post_raw(&http(), &gw.url("/api/v1/events/batch"), &body).await;
    assert_eq!(r.status(), 400);
    let reply: serde_json::Value = r.json().await.unwrap();
    assert_eq!(reply["details"][0]["fieldViolations"][0]["field"], "events");
    assert_eq!(
        reply["details"][0]["fieldViolations"][0]["description"],
        says.as_str()
    );
    // REST, the CloudEvents batch format: a bare array.
    let r = http()
        .post(gw.url("/api/v1/events/batch"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(format!("[{}]", vec!["{}"; n].join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let reply: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        reply["details"][0]["fieldViolations"][0]["description"],
        says.as_str()
    );
    // gRPC: counted on the wire, before prost decodes a single event.
    let mut grpc = tonic::client::Grpc::new(gw.channel().await);
    grpc.ready().await.unwrap();
    let path = "/eventgateway.v1.EventGatewayService/IngestBatch"
        .parse()
        .unwrap();
    let err = grpc
        .unary(
            tonic::Request::new(grpc_batch_of_empty_events(n)),
            path,
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains(&says), "{}", err.message());
    // At the limit, the same shapes are decoded and judged event by event.
    let body = format!(r#"{{"events":[{}]}}"#, vec!["{}"; 1000].join(","));
    let r = post_raw(&http(), &gw.url("/api/v1/events/batch"), &body).await;
    assert_eq!(r.status(), 400);
    let reply: serde_json::Value = r.json().await.unwrap();
    let first = &reply["details"][0]["fieldViolations"][0];
    assert_eq!(first["field"], "events[0].source", "{reply}");
    assert!(gw.log_lines().is_empty());
}

/// `data` nested `depth` arrays deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_data_is_refused_over_both_protocols_and_never_stored() {
    let gw = TestGateway::local().await;
    let event = |data: &str| format!(r#"{{"type":"t.x","source":"s","data":{data}}}"#);
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(32), "}".repeat(32));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "200,000 arrays deep",
            nested(200_000),
            "nesting deeper than 31 (limits.max_data_depth)",
        ),
        (
            "32 arrays deep",
            nested(32),
            "nesting deeper than 31 (limits.max_data_depth)",
        ),
        (
            "32 objects deep",
            deep_objects.clone(),
            "nesting deeper than 31 (limits.max_data_depth)",
        ),
        (
            "a 400,000-digit integer",
            "9".repeat(400_000),
            "number of 400000 characters, over the limit of 100",
        ),
        (
            "a lone surrogate",
            r#"{"name":"\ud800"}"#.into(),
            "lone surrogate escape (\\ud800)",
        ),
        (
            "a lone low surrogate in a key",
            r#"{"\udfff":1}"#.into(),
            "lone surrogate escape (\\udfff)",
        ),
    ];
    for (what, data, says) in &cases {
        for route in ["/api/v1/events", "/api/v1/events/validate"] {
            let r = post_raw(&http(), &gw.url(route), &event(data)).await;
            assert_eq!(r.status(), 400, "{what} on {route}");
            let reply: serde_json::Value = r.json().await.unwrap();
            let v = &reply["details"][0]["fieldViolations"][0];
            assert_eq!(v["field"], "event.data", "{what}: {reply}");
            assert!(
                v["description"].as_str().unwrap().contains(says),
                "{what}: {v}"
            );
        }
    }
    // At the limits, data is stored as sent.
    let fine = [
        nested(31),
        "9".repeat(100),
        r#"{"smile":"\ud83d\ude00"}"#.into(),
    ];
    for data in &fine {
        let r = post_raw(&http(), &gw.url("/api/v1/events"), &event(data)).await;
        assert_eq!(r.status(), 200, "{data:.60}");
    }
    assert_eq!(gw.log_lines().len(), fine.len());

    // gRPC carries data as a google.protobuf.Value: the same depth limit, the same words.
    let value = |data: &str| -> pbjson_types::Value {
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        serde_json::from_value(v).unwrap()
    };
    for (what, data) in [
        ("32 arrays deep", nested(32)),
        ("32 objects deep", deep_objects),
    ] {
        let ev = event_gateway::proto::CloudEvent {
            r#type: "t.x".into(),
            source: "s".into(),
            payload: Some(event_gateway::proto::cloud_event::Payload::Data(value(
                &data,
            ))),
            ..Default::default()
        };
        let err = refused_over_grpc(&gw, ev).await;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}");
        assert!(
            err.message()
                .contains("event.data: nesting deeper than 31 (limits.max_data_depth)"),
            "{what}: {}",
            err.message()
        );
    }
    assert_eq!(gw.log_lines().len(), fine.len());
}

/// How long the server takes to close a connection that sent `bytes` and then nothing more
/// (reading and dropping whatever it sends, acknowledging nothing); None past `limit`.
async fn closed_after(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let start = std::time::Instant::now();
    s.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()?;
    Some(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_http2_connections_are_closed_within_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.read_timeout = std::time::Duration::from_secs(1);
    let gw = TestGateway::start(config).await;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let shapes: [(&str, Vec<u8>); 4] = [
        ("one byte", b"P".to_vec()),
        ("part of the preface", PREFACE[..10].to_vec()),
        (
            "the preface and SETTINGS, no ping acks",
            [PREFACE, SETTINGS].concat(),
        ),
        (
            "an HTTP/1 request line and no headers",
            b"POST /api/v1/events HTTP/1.1\r\n".to_vec(),
        ),
    ];
    let limit = std::time::Duration::from_secs(20);
    for (what, bytes) in shapes {
        let after = closed_after(gw.addr, &bytes, limit).await;
        let after = after.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        assert!(
            after >= std::time::Duration::from_millis(900),
            "{what}: closed after {after:?}"
        );
    }
    // A connection that brings its request is served, and stays open past the timeout.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = client.get(gw.url("/health/live")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_deadline_is_the_clients_408_not_a_504() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.performance.request_timeout = std::time::Duration::from_secs(1);
    let gw = TestGateway::start(config).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /api/v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        s.read_to_end(&mut reply),
    )
    .await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("performance.request_timeout"), "{reply}");
    let text = gw.metrics().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("http_requests_total") && l.contains("\"408\"")),
        "the 408 is counted as what it is"
    );
    assert!(gw.log_lines().is_empty());
}

/// A GET on an open connection, HTTP/1.1 keep-alive; the status code of the reply.
async fn get_on(s: &mut tokio::net::TcpStream, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    head.split(' ').nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_caps_are_closed_at_once_and_the_rest_keep_being_served() {
    for (total, per_peer, reason) in [(10_000, 5, "per_peer"), (5, 0, "total")] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.server.max_connections = total;
        config.server.max_connections_per_peer = per_peer;
        let gw = TestGateway::start(config).await;
        let mut open = Vec::new();
        for _ in 0..5 {
            let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            assert_eq!(get_on(&mut s, "/health/live").await, Some(200), "{reason}");
            open.push(s);
        }
        // The sixth is closed without an answer, promptly.
        let limit = std::time::Duration::from_secs(5);
        let closed = closed_after(
            gw.addr,
            b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n",
            limit,
        )
        .await;
        assert!(
            closed.is_some(),
            "{reason}: the connection over the cap stayed open"
        );
        // The open ones are served as before.
        for s in &mut open {
            assert_eq!(get_on(s, "/health/live").await, Some(200), "{reason}");
        }
        // One closes: a new connection is taken again.
        let mut first = open.remove(0);
        use tokio::io::AsyncWriteExt as _;
        let _ = first.shutdown().await;
        drop(first);
        let c = http();
        let live = gw.url("/health/live");
        wait_until(std::time::Duration::from_secs(10), "a freed slot", || {
            let r = c.get(&live).send();
            async move { r.await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        drop(open);
        let metrics = gw.url("/metrics");
        wait_until(
            std::time::Duration::from_secs(10),
            "the refusal counted",
            || {
                let r = c.get(&metrics).send();
                async move {
                    let Ok(r) = r.await else { return false };
                    let text = r.text().await.unwrap_or_default();
                    text.lines().any(|l| {
                        l.starts_with("http_refused_connections_total")
                            && l.contains(&format!("reason=\"{reason}\""))
                    })
                }
            },
        )
        .await;
    }
}
