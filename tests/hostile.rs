//! Hostile and broken input that must get a client error naming what was wrong, never a
//! server error, and must cost bounded work: protobuf messages that do not decode, requests
//! full of violations, made-up methods inflating the metrics, batches refused by their count
//! before decoding, poison `data` (deep, long numbers, lone surrogates), half-open HTTP/2
//! connections, bodies slower than the deadline, connection caps, one client holding every
//! slot, HTTP/1 and HTTP/2 limits from the configuration, rapid-reset and CONTINUATION floods
//! while a normal client is served.
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
    // 100 custom HTTP methods of 48 KiB each (within server.http1.max_head_size), over HTTP/1.
    for i in 0..100 {
        let method = format!("X{i}{}", "M".repeat(48 * 1024));
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
    let value = |data: &str| -> event_gateway::proto::WireValue {
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        serde_json::from_value(v).unwrap()
    };
    for (what, data) in [
        ("32 arrays deep", nested(32)),
        ("32 objects deep", deep_objects),
        // Past what prost decodes (about 33 objects): the direct reader takes it, and the
        // limit refuses it by name rather than the message failing to decode.
        (
            "40 objects deep",
            format!("{}1{}", r#"{"a":"#.repeat(40), "}".repeat(40)),
        ),
        ("60 arrays deep", nested(60)),
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

/// A REST ingest request from `client` (an X-Forwarded-For address, trusted from the
/// loopback) that promises a body and sends none: it holds its slot until the deadline.
async fn bodiless_from(gw: &TestGateway, client: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Forwarded-For: {client}\r\nContent-Length: 100\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s
}

async fn post_from(gw: &TestGateway, client: &str) -> (u16, serde_json::Value) {
    let r = http()
        .post(gw.url("/api/v1/events"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", client)
        .body(SEED_EVENT)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_slot() {
    use event_gateway::proto::{CloudEvent, IngestEventRequest};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.performance.max_concurrent_requests = 20;
    config.performance.max_concurrent_requests_per_client = 3;
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    let gw = TestGateway::start(config).await;
    // Documentation addresses (RFC 5737), in a header only: nothing is sent to them.
    let (greedy, other) = ("203.0.113.7", "198.51.100.9");

    // The greedy client's requests bring headers and no body, as many as it likes: three
    // take its share and wait for their bodies, the other seven are refused at once.
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = bodiless_from(&gw, greedy).await;
        let refused = refused.clone();
        held.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut reply = [0u8; 12];
            if s.read_exact(&mut reply).await.is_ok() && reply.ends_with(b"429") {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // Held open (unanswered or not) until the test lets go.
            std::future::pending::<()>().await;
            drop(s);
        }));
    }
    wait_until(
        std::time::Duration::from_secs(10),
        "seven of ten refused",
        || async { refused.load(std::sync::atomic::Ordering::Relaxed) == 7 },
    )
    .await;
    // Its share is taken: its next request is refused, naming the limit...
    let (status, body) = post_from(&gw, greedy).await;
    assert_eq!(status, 429);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("max_concurrent_requests_per_client"),
        "{message}"
    );
    // ...over gRPC too (its address is the same client)...
    let mut req = tonic::Request::new(IngestEventRequest {
        event: Some(serde_json::from_str::<CloudEvent>(SEED_EVENT).unwrap()),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-forwarded-for", greedy.parse().unwrap());
    let err = gw.grpc().await.ingest_event(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // ...while every other client is served: 17 of the 20 slots are still free.
    for _ in 0..5 {
        assert_eq!(post_from(&gw, other).await.0, 200);
    }
    // Its slots come back when its requests end.
    for h in held {
        h.abort();
    }
    wait_until(
        std::time::Duration::from_secs(10),
        "the greedy client served again",
        || async { post_from(&gw, greedy).await.0 == 200 },
    )
    .await;
}

/// Raw HTTP/2, for what no well-behaved client sends: frames written as they are.
mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HPACK for `POST <path>` to authority `x`, static-table names, no Huffman.
    pub fn request_block(path: &str) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x04); // :path, literal without indexing
        b.push(path.len() as u8);
        b.extend_from_slice(path.as_bytes());
        b.extend_from_slice(&[0x01, 0x01, b'x']); // :authority x
        b
    }

    /// Every frame the server sends until it closes or `limit` passes: (type, payload).
    pub async fn frames_until_closed(
        s: &mut tokio::net::tcp::OwnedReadHalf,
        limit: std::time::Duration,
    ) -> Vec<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt as _;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(limit, async {
            loop {
                let mut head = [0u8; 9];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                if s.read_exact(&mut payload).await.is_err() {
                    return;
                }
                out.push((head[3], payload));
            }
        })
        .await;
        out
    }

    /// The error code of the first GOAWAY among `frames`.
    pub fn goaway(frames: &[(u8, Vec<u8>)]) -> Option<u32> {
        frames
            .iter()
            .find(|(t, _)| *t == GOAWAY)
            .map(|(_, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_limits_come_from_the_configuration() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.http2.max_concurrent_streams = 77;
    config.server.http2.max_frame_size = bytesize::ByteSize::kib(32);
    config.server.http2.max_header_list_size = bytesize::ByteSize::kib(8);
    let gw = TestGateway::start(config).await;
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(&[h2raw::PREFACE, &h2raw::frame(h2raw::SETTINGS, 0, 0, &[])].concat())
        .await
        .unwrap();
    let frames = h2raw::frames_until_closed(&mut r, std::time::Duration::from_secs(2)).await;
    let (_, settings) = frames
        .iter()
        .find(|(t, p)| *t == h2raw::SETTINGS && !p.is_empty())
        .expect("the server's SETTINGS");
    let values: std::collections::HashMap<u16, u32> = settings
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE
    assert_eq!(values.get(&0x3), Some(&77), "{values:?}");
    assert_eq!(values.get(&0x5), Some(&32768), "{values:?}");
    assert_eq!(values.get(&0x6), Some(&8192), "{values:?}");

    // Headers over the list size: the request is refused, the connection keeps serving.
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let big = c
        .post(gw.url("/api/v1/events"))
        .header("content-type", "application/json")
        .header("x-padding", "a".repeat(9000))
        .body(SEED_EVENT)
        .send()
        .await;
    match big {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(format!("{e:?}").contains("REFUSED_STREAM"), "{e:?}"),
    }
    let (status, _) = post_json(&c, &gw.url("/api/v1/events"), SEED_EVENT).await;
    assert_eq!(status, 200);
}

/// Requests from a well-behaved client while `flood` runs: every one must succeed. Returns
/// the slowest (printed: speed is the benchmarks' business, success is this test's).
async fn served_during(
    gw: &TestGateway,
    flood: tokio::task::JoinHandle<Vec<(u8, Vec<u8>)>>,
) -> (Vec<(u8, Vec<u8>)>, std::time::Duration) {
    let c = http();
    let mut slowest = std::time::Duration::ZERO;
    let mut served = 0;
    while !flood.is_finished() || served < 20 {
        let t = std::time::Instant::now();
        let (status, _) = post_json(&c, &gw.url("/api/v1/events"), SEED_EVENT).await;
        assert_eq!(status, 200, "a normal client during the flood");
        slowest = slowest.max(t.elapsed());
        served += 1;
    }
    (flood.await.unwrap(), slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_ends_in_goaway_and_others_are_served() {
    use tokio::io::AsyncWriteExt as _;
    let gw = TestGateway::local().await;
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let flood = tokio::spawn(async move {
        let mut bytes = [h2raw::PREFACE, &h2raw::frame(h2raw::SETTINGS, 0, 0, &[])].concat();
        let block = h2raw::request_block("/api/v1/events");
        for i in 0..20_000u32 {
            let id = 2 * i + 1;
            bytes.extend(h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, id, &block));
            bytes.extend(h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        let writing = tokio::spawn(async move {
            let _ = w.write_all(&bytes).await;
            w
        });
        let frames = h2raw::frames_until_closed(&mut r, std::time::Duration::from_secs(20)).await;
        drop(writing.await);
        frames
    });
    let (frames, slowest) = served_during(&gw, flood).await;
    println!("rapid reset: slowest normal request during the flood {slowest:?}");
    // ENHANCE_YOUR_CALM (0xb): h2's answer past max_pending_accept_reset_streams.
    assert_eq!(
        h2raw::goaway(&frames),
        Some(0xb),
        "{:?}",
        frames.iter().map(|f| f.0).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_others_are_served() {
    use tokio::io::AsyncWriteExt as _;
    let gw = TestGateway::local().await;
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sent.clone();
    let flood = tokio::spawn(async move {
        let head = [h2raw::PREFACE, &h2raw::frame(h2raw::SETTINGS, 0, 0, &[])].concat();
        let writing = tokio::spawn(async move {
            let _ = w.write_all(&head).await;
            // A header block that never ends: HEADERS without END_HEADERS, then 16 KiB
            // CONTINUATION frames of 100-byte headers, up to 64 MiB.
            let first = h2raw::frame(
                h2raw::HEADERS,
                0,
                1,
                &h2raw::request_block("/api/v1/events"),
            );
            if w.write_all(&first).await.is_err() {
                return;
            }
            let mut field = vec![0x00, 0x05];
            field.extend_from_slice(b"x-pad");
            field.push(100);
            field.extend_from_slice(&[b'a'; 100]);
            let payload: Vec<u8> = field
                .iter()
                .copied()
                .cycle()
                .take(field.len() * 150)
                .collect();
            let cont = h2raw::frame(h2raw::CONTINUATION, 0, 1, &payload);
            for _ in 0..(64 << 20) / cont.len() {
                if w.write_all(&cont).await.is_err() {
                    return;
                }
                counted.fetch_add(cont.len(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        let frames = h2raw::frames_until_closed(&mut r, std::time::Duration::from_secs(20)).await;
        writing.abort();
        frames
    });
    let (frames, slowest) = served_during(&gw, flood).await;
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    let goaway = h2raw::goaway(&frames);
    println!(
        "continuation flood: GOAWAY {goaway:?} after {sent} bytes of CONTINUATION written (socket buffers included); slowest normal request {slowest:?}"
    );
    assert!(goaway.is_some(), "the connection ends with GOAWAY");
    // The block is never held whole: the server hung up while the writer still had most
    // of its 64 MiB to go (what was written includes both sockets' buffers).
    assert!(sent < 32 << 20, "cut off: {sent} bytes taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_header_limits_come_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.http1.max_headers = 10;
    config.server.http1.max_head_size = bytesize::ByteSize::kib(16);
    let gw = TestGateway::start(config).await;
    let c = http();
    let post = |extra: Vec<(String, String)>| {
        let mut r = c
            .post(gw.url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(SEED_EVENT);
        for (k, v) in extra {
            r = r.header(k, v);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    // reqwest sends content-type, content-length, accept and host: 4 of the 10.
    let headers = |n: usize| {
        (0..n)
            .map(|i| (format!("x-h{i}"), "v".to_owned()))
            .collect()
    };
    assert_eq!(post(headers(5)).await, 200);
    assert_eq!(post(headers(20)).await, 431);
    assert_eq!(post(vec![("x-big".into(), "a".repeat(20_000))]).await, 431);
    // A URL over the head size: refused whole (hyper says 414 only for URLs that fit it).
    let long = c
        .get(gw.url(&format!("/health/live?{}", "q".repeat(20_000))))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(long == 414 || long == 431, "a 20 KB URL: {long}");
    assert_eq!(post(headers(1)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed_at_the_read_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.read_timeout = std::time::Duration::from_secs(1);
    let gw = TestGateway::start(config).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // Two requests on one kept-alive connection, each answered...
    for _ in 0..2 {
        s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        let mut rest = [0u8; 256];
        let _ = s.read(&mut rest).await.unwrap();
    }
    // ...then nothing: the server waits for the next request's headers `read_timeout`
    // long, and closes (a keep-alive connection is not held for ever).
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an idle keep-alive connection is closed")
        .unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "closed after {:?}, before the read timeout",
        started.elapsed()
    );
}
