//! The shared stack, seen from real clients: rate limits over both protocols, load shedding,
//! metrics after known traffic (and promtool's verdict), the label cardinality cap, trace
//! context into Kafka headers, the header-read timeout, and readiness during a drain.
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use event_gateway::proto::{CloudEvent, IngestEventRequest};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_types::StatusExt;

fn limited(rps: u32, burst: u32) -> event_gateway::Config {
    let dir = std::env::temp_dir();
    let mut c = test_config(&dir);
    c.rate_limit.enabled = true;
    c.rate_limit.requests_per_second = rps;
    c.rate_limit.burst_size = burst;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_rate_limit_answers_429_with_retry_after_and_refills() {
    let gw = TestGateway::start(limited(1, 3)).await;
    let c = http();
    let url = gw.url("/api/v1/events");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (s, _) = post_json(&c, &url, SEED_EVENT).await;
        statuses.push(s);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert_eq!(statuses[3], 429);
    let r = post_raw(&c, &url, SEED_EVENT).await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(r.headers()["ratelimit-policy"], "\"per-client\";q=3;w=3");
    assert!(
        r.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"per-client\";r=0;t=")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 8, "RESOURCE_EXHAUSTED");
    assert!(body["message"].as_str().unwrap().contains("rate_limit"));
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );

    // Health and metrics are not rate limited.
    assert_eq!(
        c.get(gw.url("/health/live")).send().await.unwrap().status(),
        200
    );
    // A header the client makes up selects no bucket of its own: without authentication
    // the key is the client's address (tests/auth.rs: authenticated keys do get their own).
    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .header("x-api-key", "team-a")
        .body(SEED_EVENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    // The bucket refills at 1/s: within a few seconds a request passes again.
    wait_until(Duration::from_secs(5), "the bucket to refill", || {
        let req = c
            .post(&url)
            .header("content-type", "application/json")
            .body(SEED_EVENT)
            .send();
        async move { req.await.unwrap().status() == 200 }
    })
    .await;
    // Only the accepted requests wrote events: the burst of 3 and the one after the refill.
    let accepted = gw.log_lines().len();
    assert!(accepted >= 4, "{accepted}");
}

/// With `server.cors`, a page on a listed origin can read a refusal from below the browsers'
/// step (a 429 of the rate limit): the CORS layer is outside admission, so the reply carries
/// the origin and the headers it exposes (docs/security.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_page_can_read_the_rate_limits_refusal() {
    const ORIGIN: &str = "https://app.example.com";
    let mut config = limited(1, 1);
    config.server.cors.allowed_origins = vec![ORIGIN.into()];
    let gw = TestGateway::start(config).await;
    let c = http();
    let send = || {
        c.post(gw.url("/api/v1/events"))
            .header("content-type", "application/json")
            .header("origin", ORIGIN)
            .body(SEED_EVENT)
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    let r = send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for name in ["retry-after", "ratelimit", "x-request-id"] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_rate_limit_is_resource_exhausted_with_retry_info() {
    let gw = TestGateway::start(limited(1, 2)).await;
    let mut client = gw.grpc().await;
    let ev: CloudEvent = serde_json::from_str(SEED_EVENT).unwrap();
    let mut codes = Vec::new();
    let mut last_err = None;
    for _ in 0..4 {
        match client
            .ingest_event(IngestEventRequest {
                event: Some(ev.clone()),
                ..Default::default()
            })
            .await
        {
            Ok(_) => codes.push(Code::Ok),
            Err(s) => {
                codes.push(s.code());
                last_err = Some(s);
            }
        }
    }
    assert_eq!(
        codes,
        vec![
            Code::Ok,
            Code::Ok,
            Code::ResourceExhausted,
            Code::ResourceExhausted
        ]
    );
    let err = last_err.unwrap();
    let retry = err.get_details_retry_info().expect("RetryInfo detail");
    let delay = retry.retry_delay.unwrap();
    assert!(
        delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_concurrent_requests_is_shed_with_503_over_both_protocols() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start("events", 1).await;
    let mut config = limited(1000, 1000);
    config.rate_limit.enabled = false;
    config.performance.max_concurrent_requests = 1;
    config.kafka.brokers = vec![broker.bootstrap()];
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    // Hold the one slot: the broker is paused, so this request waits for its ack.
    broker.pause();
    let c = http();
    let url = gw.url("/api/v1/events");
    let held = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { post_json(&c, &url, SEED_EVENT).await.0 }
    });
    let metrics_url = gw.url("/metrics");
    wait_until(Duration::from_secs(10), "one request in flight", || {
        let r = c.get(&metrics_url).send();
        async move {
            let text = r.await.unwrap().text().await.unwrap();
            text.lines()
                .any(|l| l.starts_with("kafka_producer_in_flight") && !l.ends_with(" 0"))
        }
    })
    .await;
    let (_, body) = assert_unavailable_over_both_protocols(&gw).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_requests")
    );

    broker.resume();
    assert_eq!(held.await.unwrap(), 200, "the held request completes");
}

/// Parses Prometheus text into (name{labels} -> value), labels sorted as exported.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn sum_matching(s: &HashMap<String, f64>, name: &str, parts: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && parts.iter().all(|p| k.contains(p)))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reflect_known_traffic_and_pass_promtool() {
    let gw = TestGateway::local().await;
    let c = http();
    for _ in 0..3 {
        let (s, _) = post_json(&c, &gw.url("/api/v1/events"), SEED_EVENT).await;
        assert_eq!(s, 200);
    }
    let (s, _) = post_json(&c, &gw.url("/api/v1/events"), r#"{"type":"","source":"s"}"#).await;
    assert_eq!(s, 400);
    let batch = json!({"events": [{"type":"order.placed","source":"shop"},{"type":"order.placed","source":"shop"}]});
    let (s, _) = post_json(&c, &gw.url("/api/v1/events/batch"), &batch.to_string()).await;
    assert_eq!(s, 200);
    gw.grpc_ingest_seed().await;
    let _ = c.get(gw.url("/nope")).send().await.unwrap();

    let text = gw.metrics().await;
    let s = samples(&text);
    let req = |endpoint: &str, status: &str| {
        sum_matching(
            &s,
            "http_requests_total",
            &[
                &format!("endpoint=\"{endpoint}\""),
                &format!("status=\"{status}\""),
                "method=\"POST\"",
            ],
        )
    };
    assert_eq!(req("/api/v1/events", "200"), 3.0, "{text}");
    assert_eq!(req("/api/v1/events", "400"), 1.0);
    assert_eq!(req("/api/v1/events/batch", "200"), 1.0);
    assert_eq!(
        sum_matching(
            &s,
            "http_requests_total",
            &["endpoint=\"unmatched\"", "status=\"404\""]
        ),
        1.0
    );
    assert_eq!(
        sum_matching(
            &s,
            "events_ingested_total",
            &["type=\"user.created\"", "source=\"user-service\""]
        ),
        4.0
    );
    assert_eq!(
        sum_matching(&s, "events_ingested_total", &["type=\"order.placed\""]),
        2.0
    );
    assert_eq!(
        sum_matching(&s, "events_ingested_failed_total", &["reason=\"invalid\""]),
        1.0
    );
    assert_eq!(
        sum_matching(
            &s,
            "grpc_server_requests_total",
            &[
                "method=\"/eventgateway.v1.EventGatewayService/IngestEvent\"",
                "code=\"OK\""
            ]
        ),
        1.0
    );
    // A contract route's success goes into series bound at start (#26); every other
    // outcome into the same instruments unbound: both must count, over both protocols.
    assert_eq!(
        sum_matching(
            &s,
            "http_requests_total",
            &[
                "endpoint=\"/eventgateway.v1.EventGatewayService/IngestEvent\"",
                "status=\"200\"",
                "protocol=\"grpc\"",
            ]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum_matching(
            &s,
            "http_request_duration_seconds_count",
            &[
                "endpoint=\"/api/v1/events\"",
                "status=\"200\"",
                "protocol=\"rest\""
            ]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        sum_matching(
            &s,
            "http_request_duration_seconds_count",
            &["endpoint=\"/api/v1/events\"", "status=\"400\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum_matching(
            &s,
            "sink_publish_duration_seconds_count",
            &["sink=\"local-log\""]
        ),
        5.0,
        "{text}"
    );
    // Sub-millisecond buckets exist and the histogram counted every request.
    assert!(
        text.contains("http_request_duration_seconds_bucket{") && text.contains("le=\"0.0001\"")
    );
    assert!(sum_matching(&s, "http_request_duration_seconds_count", &[]) >= 6.0);
    assert!(sum_matching(&s, "http_active_connections", &[]) >= 1.0);
    // The sink's own gauges: the local log's here (Kafka's are checked in tests/deploy.rs);
    // a sink exports only instruments that mean something for it.
    assert_eq!(sum_matching(&s, "local_log_events", &[]), 6.0, "{text}");
    assert!(sum_matching(&s, "local_log_size_bytes", &[]) > 0.0);
    assert!(!s.keys().any(|k| k.starts_with("kafka_")), "{text}");
    assert!(
        s.keys()
            .any(|k| k.starts_with("sink_publish_duration_seconds_bucket"))
    );

    // promtool (Debian's prometheus package; scripts/test installs it) accepts the output.
    let Some(promtool) = require(Tool::Promtool) else {
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_labels_are_capped() {
    let gw = TestGateway::local().await;
    let events: Vec<Value> = (0..150)
        .map(|i| json!({"type": format!("t.{i}"), "source": "s"}))
        .collect();
    let (s, _) = gw.post_batch(&events).await;
    assert_eq!(s, 200);
    let text = gw.metrics().await;
    let s = samples(&text);
    let series: Vec<_> = s
        .keys()
        .filter(|k| k.starts_with("events_ingested_total{"))
        .collect();
    assert_eq!(series.len(), 101, "100 distinct types plus `other`");
    assert_eq!(
        sum_matching(&s, "events_ingested_total", &["type=\"other\""]),
        50.0
    );
    assert_eq!(sum_matching(&s, "events_ingested_total", &[]), 150.0);
}

/// #26 counts a batch's stored events once per run of events with the same labels: runs
/// that end, resume and differ in one label only must still add up per series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_counted_per_type_and_source() {
    let gw = TestGateway::local().await;
    let events: Vec<Value> = [("a", "s"), ("a", "s"), ("b", "s"), ("a", "s"), ("a", "t")]
        .iter()
        .map(|(ty, source)| json!({"type": format!("runs.{ty}"), "source": source}))
        .collect();
    let (status, _) = gw.post_batch(&events).await;
    assert_eq!(status, 200);
    let s = samples(&gw.metrics().await);
    let count = |ty: &str, source: &str| {
        sum_matching(
            &s,
            "events_ingested_total",
            &[
                &format!("type=\"runs.{ty}\""),
                &format!("source=\"{source}\""),
            ],
        )
    };
    assert_eq!(count("a", "s"), 3.0);
    assert_eq!(count("b", "s"), 1.0);
    assert_eq!(count("a", "t"), 1.0);
    assert_eq!(count("b", "t"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_reaches_the_kafka_record_headers() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    event_gateway::telemetry::init(&event_gateway::config::LoggingConfig {
        level: "warn,event_gateway=info".into(),
        format: event_gateway::config::LogFormat::Text,
    });
    let broker = Broker::start("events", 1).await;
    let mut config = limited(1000, 1000);
    config.kafka.brokers = vec![broker.bootstrap()];
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http()
        .post(gw.url("/api/v1/events"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(SEED_EVENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));

    // gRPC metadata carries traceparent the same way.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut client = gw.grpc().await;
    let mut req = tonic::Request::new(IngestEventRequest {
        event: Some(serde_json::from_str(SEED_EVENT).unwrap()),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    client.ingest_event(req).await.unwrap();

    let records = broker.read_all("events", 2, Duration::from_secs(20));
    assert_eq!(records.len(), 2);
    let parents: Vec<&str> = records
        .iter()
        .map(|r| r.headers["traceparent"].as_str())
        .collect();
    for (tp, id, client_span) in [
        (parents[0], trace_id, "00f067aa0ba902b7"),
        (parents[1], grpc_trace, "b7ad6b7169203331"),
    ] {
        let parts: Vec<_> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[1], id, "same trace continues into Kafka");
        assert_ne!(
            parts[2], client_span,
            "the gateway's own span is the parent"
        );
    }
}

/// Every reply carries the request's `x-request-id`: the client's own when it sent one, else
/// one the gateway made (a UUID), over REST and over gRPC, call after call on one HTTP/2
/// connection (where the gateway writes it as a never-indexed literal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_is_echoed_over_both_protocols() {
    let gw = TestGateway::start(limited(1000, 1000)).await;
    let post = |id: Option<&str>| {
        let mut req = http()
            .post(gw.url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(SEED_EVENT);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        req.send()
    };
    let r = post(Some("client-id-1")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), 200);
    let made = r.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");

    let mut client = gw.grpc().await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        let mut req = tonic::Request::new(IngestEventRequest {
            event: Some(serde_json::from_str(SEED_EVENT).unwrap()),
            ..Default::default()
        });
        if i % 2 == 0 {
            req.metadata_mut()
                .insert("x-request-id", format!("grpc-{i}").parse().unwrap());
        }
        let reply = client.ingest_event(req).await.unwrap();
        let id = reply
            .metadata()
            .get("x-request-id")
            .expect("the reply's x-request-id")
            .to_str()
            .unwrap()
            .to_owned();
        if i % 2 == 0 {
            assert_eq!(id, format!("grpc-{i}"));
        } else {
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        assert!(seen.insert(id), "ids repeat");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_by_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.read_timeout = Duration::from_millis(300);
    let gw = TestGateway::start(config).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-")
        .await
        .unwrap();
    // The server closes the connection; bounded so a missing timeout fails instead of hanging.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let read = read.expect("the server must close a connection that stalls in its headers");
    assert!(read.is_err() || buf.is_empty() || String::from_utf8_lossy(&buf).contains("408"));
    // A client that connects and sends nothing is cut off too.
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf))
        .await
        .expect("the server must close a connection that never sends a byte")
        .unwrap();
    assert!(buf.is_empty());
    // A normal client on a new connection is unaffected.
    let (status, _) = post_json(&http(), &gw.url("/api/v1/events"), SEED_EVENT).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_readiness_off_first_then_drains() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.shutdown.drain_delay = Duration::from_secs(2);
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let c = http();
    let ready_url = gw.url("/health/ready");
    let channel = gw.channel().await;
    let addr = gw.addr;
    let stopping = tokio::spawn(gw.stop());
    // During the delay: still answering, but not ready, over both protocols.
    wait_until(Duration::from_secs(2), "readiness off", || {
        let r = c.get(&ready_url).send();
        async move { r.await.map(|r| r.status() == 503).unwrap_or(false) }
    })
    .await;
    // gRPC health says NOT_SERVING the moment REST says 503: one check, no waiting.
    assert_eq!(
        grpc_health_now(channel, "").await,
        ServingStatus::NotServing
    );
    let live = c
        .get(format!("http://{addr}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let report = stopping.await.unwrap();
    assert!(!report.drain_timed_out);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after the drain"
    );
}

/// The number of open client connections the gateway reports, scraped over `c`'s one
/// HTTP/2 connection (see `scraper`), so the scrape itself counts the same each time.
async fn open_connections(c: &reqwest::Client, gw: &TestGateway) -> f64 {
    let text = get_text(c, gw.url("/metrics")).await;
    sum_matching(&samples(&text), "http_active_connections", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_by_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.write_timeout = Duration::from_millis(500);
    let gw = TestGateway::start(config).await;
    // HTTP/2, so every scrape shares one connection. An HTTP/1 pool sometimes opens a second
    // one when a request starts before the last connection is back in the pool, and the
    // count then never returns to `before` (this test flaked on that, 1 run in 10 under load).
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let before = open_connections(&c, &gw).await;

    // A client with a small receive window pipelines requests for the OpenAPI document
    // (tens of KiB each) and never reads a byte: the gateway's writes stall.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gw.addr).await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "the connection to be counted",
        || async { open_connections(&c, &gw).await == before + 1.0 },
    )
    .await;
    let request = b"GET /api/docs/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    // The gateway stops reading once its writes stall, so this write may never finish.
    let _ = tokio::time::timeout(Duration::from_secs(1), stalled.write_all(&request)).await;

    // Without a write timeout the connection would stay open for as long as the client.
    wait_until(
        Duration::from_secs(10),
        "the stalled connection to be closed",
        || async { open_connections(&c, &gw).await == before },
    )
    .await;
    // Other clients are unaffected.
    let (status, _) = post_json(&http(), &gw.url("/api/v1/events"), SEED_EVENT).await;
    assert_eq!(status, 200);
    drop(stalled);
}
