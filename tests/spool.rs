//! Store and forward, against tansu over TCP and read back with a consumer: `ack: spooled`
//! (202 over REST, `ACK_MODE_SPOOLED` over gRPC) reaches Kafka as the same record a direct
//! produce writes; the fallback spools while the broker is absent or paused and delivers
//! everything once it is back; a full spool is 503 and keeps what it has; torn and corrupt
//! segments recover; a full disk is 503 and recovers; duplicates within the window are
//! written once. `spool_crash.rs` kills the real binary under load.
mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use event_gateway::Config;
use event_gateway::proto::{AckMode, CloudEvent, IngestBatchRequest, IngestEventRequest, Outcome};
use serde_json::{Value, json};

const TOPIC: &str = "events";

fn spool_config(bootstrap: &str) -> Config {
    let dir = std::env::temp_dir();
    let mut c = test_config(&dir);
    c.kafka.brokers = vec![bootstrap.to_owned()];
    c.kafka.topic = TOPIC.into();
    c
}

fn event(id: &str) -> Value {
    json!({"id": id, "type": "order.placed", "source": "shop", "subject": "cust-1", "data": {"n": id}})
}

fn grpc_event(id: &str) -> CloudEvent {
    serde_json::from_value(event(id)).unwrap()
}

/// POSTs one event with an optional query string and headers: (status, headers, body).
async fn post_event(
    gw: &TestGateway,
    path_and_query: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http()
        .post(gw.url(path_and_query))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn ids_in(records: &[Record]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in records {
        *m.entry(r.headers["ce_id"].clone()).or_insert(0) += 1;
    }
    m
}

/// Reads the topic until every id in `want` is there; returns the count of each id.
fn read_ids(broker: &Broker, want: &HashSet<String>, timeout: Duration) -> HashMap<String, usize> {
    let records = broker.read_all(TOPIC, want.len(), timeout);
    ids_in(&records)
}

async fn spool_detail(gw: &TestGateway) -> Value {
    gw.get_json("/health/detailed").await["spool"].clone()
}

async fn wait_spool_empty(gw: &TestGateway) {
    wait_until(
        Duration::from_secs(30),
        "the spool forwarded everything",
        || async { spool_detail(gw).await["records"] == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_events_get_202_and_reach_kafka_as_direct_records_do() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 3).await;
    let gw = TestGateway::start(spool_config(&broker.bootstrap())).await;
    gw.wait_ready().await;

    // REST: the query parameter, RFC 7240's Prefer, and the batch body's own field.
    let (status, headers, reply) =
        post_event(&gw, "/api/v1/events?ack=spooled", &event("q-1"), &[]).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["ack"], "ACK_MODE_SPOOLED");
    assert!(reply["spoolPosition"].as_str().is_some(), "{reply}");
    assert!(headers.get("preference-applied").is_none());
    let (status, headers, reply) = post_event(
        &gw,
        "/api/v1/events",
        &event("p-1"),
        &[("prefer", "wait=5, respond-async")],
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["ack"], "ACK_MODE_SPOOLED");
    assert_eq!(headers["preference-applied"], "respond-async");
    let batch = json!({"ack": "ACK_MODE_SPOOLED", "events": [event("b-1"), event("b-2")]});
    let (status, _, reply) = post_event(&gw, "/api/v1/events/batch", &batch, &[]).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["ack"], "ACK_MODE_SPOOLED");
    assert_eq!(reply["spooledCount"], 2);
    assert_eq!(reply["results"][1]["outcome"], "OUTCOME_SPOOLED");
    // A stored request still gets 200 with its offset; an unknown level is a 400 naming it.
    let (status, _, reply) =
        post_event(&gw, "/api/v1/events?ack=stored", &event("direct"), &[]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ack"], "ACK_MODE_STORED");
    // Position 0 is a real spool position: a stored reply has none at all.
    assert!(reply.get("spoolPosition").is_none(), "{reply}");
    let (status, _, reply) = post_event(&gw, "/api/v1/events?ack=maybe", &event("x"), &[]).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.to_string().contains("ack"), "{reply}");

    // gRPC: the request field; the reply says which guarantee it got.
    let mut client = gw.grpc().await;
    let r = client
        .ingest_event(IngestEventRequest {
            event: Some(grpc_event("g-1")),
            ack: AckMode::Spooled as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ack, AckMode::Spooled as i32);
    assert!(r.spool_position.is_some(), "{r:?}");
    let stored = client
        .ingest_event(IngestEventRequest {
            event: Some(grpc_event("g-stored")),
            ack: AckMode::Stored as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.ack, AckMode::Stored as i32);
    assert_eq!(stored.spool_position, None, "{stored:?}");
    let b = client
        .ingest_batch(IngestBatchRequest {
            events: vec![grpc_event("g-2"), grpc_event("g-3")],
            ack: AckMode::Spooled as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.ack, AckMode::Spooled as i32);
    assert_eq!(b.spooled_count, 2);
    assert_eq!(b.results[0].outcome, Outcome::Spooled as i32);
    let positions: HashSet<Option<u64>> = b.results.iter().map(|r| r.spool_position).collect();
    assert_eq!(positions.len(), 2, "distinct spool positions");
    assert!(
        !positions.contains(&None),
        "every spooled result has one: {positions:?}"
    );

    let want: HashSet<String> = [
        "q-1", "p-1", "b-1", "b-2", "direct", "g-1", "g-stored", "g-2", "g-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    wait_spool_empty(&gw).await;
    let records = broker.read_all(TOPIC, want.len(), Duration::from_secs(30));
    let counts = ids_in(&records);
    for id in &want {
        assert_eq!(counts.get(id), Some(&1), "{id} exactly once in {counts:?}");
    }
    // A spooled record is the record a direct produce writes: same key, value and headers
    // (but its id, and the trace context of its own request).
    let by_id: HashMap<&str, &Record> = records
        .iter()
        .map(|r| (r.headers["ce_id"].as_str(), r))
        .collect();
    let (direct, spooled) = (by_id["direct"], by_id["q-1"]);
    assert_eq!(direct.key, spooled.key);
    assert_eq!(direct.value_json()["n"], "direct");
    assert_eq!(spooled.value_json()["n"], "q-1");
    let names = |r: &Record| {
        let mut k: Vec<String> = r.headers.keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(names(direct), names(spooled));
    for h in [
        "ce_type",
        "ce_source",
        "ce_subject",
        "ce_specversion",
        "content-type",
    ] {
        assert_eq!(direct.headers[h], spooled.headers[h], "{h}");
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains("spool_forwarded_total 7"), "{metrics}");
    assert!(metrics.contains("events_spooled_total 7"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fallback_a_broker_absent_at_start_gets_everything_once_it_is_up() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let port = free_port();
    let mut config = spool_config(&format!("127.0.0.1:{port}"));
    config.spool.fallback_when_unavailable = true;
    let gw = TestGateway::start(config).await;
    // Ready without a broker: the spool has room.
    gw.wait_ready().await;
    let ready = gw.get_json("/health/ready").await;
    assert!(
        ready["reason"].as_str().unwrap().contains("spooling"),
        "{ready}"
    );

    let mut acked = HashSet::new();
    let mut client = gw.grpc().await;
    for i in 0..20 {
        let id = format!("rest-{i}");
        let (status, _, reply) = post_event(&gw, "/api/v1/events", &event(&id), &[]).await;
        assert_eq!(
            status, 202,
            "a stored request is spooled, never 200: {reply}"
        );
        assert_eq!(reply["ack"], "ACK_MODE_SPOOLED");
        acked.insert(id);
        let id = format!("grpc-{i}");
        let r = client
            .ingest_event(IngestEventRequest {
                event: Some(grpc_event(&id)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.ack, AckMode::Spooled as i32, "same answer over gRPC");
        acked.insert(id);
    }
    let detail = spool_detail(&gw).await;
    assert_eq!(detail["records"], 40, "{detail}");
    assert_ne!(detail["forwarder"]["state"], "idle", "{detail}");

    let broker = Broker::spawn_on(port);
    broker.create_topic(TOPIC, 3).await;
    wait_spool_empty(&gw).await;
    let counts = read_ids(&broker, &acked, Duration::from_secs(30));
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    // With the broker up, a stored request is stored again.
    wait_until(
        Duration::from_secs(20),
        "a 200 once the broker is up",
        || async {
            post_event(&gw, "/api/v1/events", &event("after"), &[])
                .await
                .0
                == 200
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fallback_a_broker_paused_past_message_timeout_costs_no_503() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let mut config = spool_config(&broker.bootstrap());
    config.spool.fallback_when_unavailable = true;
    config.kafka.message_timeout = Duration::from_secs(2);
    config.performance.request_timeout = Duration::from_secs(5);
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;

    // Steady requests through a pause twice as long as message_timeout.
    let url = gw.url("/api/v1/events");
    let sender = tokio::spawn(async move {
        let c = http();
        let mut replies: Vec<(String, u16)> = Vec::new();
        let started = std::time::Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(9) {
            let id = format!("e-{i}");
            i += 1;
            let r = c
                .post(&url)
                .header("content-type", "application/json")
                .body(event(&id).to_string())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            replies.push((id, r));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replies
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.pause();
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.resume();
    let replies = sender.await.unwrap();
    let statuses: HashMap<u16, usize> = replies.iter().fold(HashMap::new(), |mut m, (_, s)| {
        *m.entry(*s).or_insert(0) += 1;
        m
    });
    assert_eq!(
        statuses.keys().filter(|s| ![200, 202].contains(*s)).count(),
        0,
        "only 200 and 202 while the spool has room: {statuses:?}"
    );
    assert!(statuses.get(&202).copied().unwrap_or(0) > 0, "{statuses:?}");
    let acked: HashSet<String> = replies.iter().map(|(id, _)| id.clone()).collect();
    let spooled: HashSet<&String> = replies
        .iter()
        .filter(|(_, s)| *s == 202)
        .map(|(id, _)| id)
        .collect();
    wait_spool_empty(&gw).await;
    let counts = read_ids(&broker, &acked, Duration::from_secs(30));
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicated: Vec<&String> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    eprintln!(
        "paused broker with fallback: {statuses:?}; lost {}, duplicated {}",
        lost.len(),
        duplicated.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    // A duplicate can only be an event whose produce timed out (its record may still have
    // been written when the broker woke) and that was then spooled.
    for id in duplicated {
        assert!(spooled.contains(id), "{id} duplicated but never spooled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_with_503_and_keeps_what_it_took() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let port = free_port();
    let mut config = spool_config(&format!("127.0.0.1:{port}"));
    config.spool.segment_bytes = bytesize::ByteSize::kib(4);
    config.spool.max_bytes = bytesize::ByteSize::kib(8);
    let gw = TestGateway::start(config).await;
    let mut acked = HashSet::new();
    let refusal = loop {
        let id = format!("e-{}", acked.len());
        let (status, headers, reply) =
            post_event(&gw, "/api/v1/events?ack=spooled", &event(&id), &[]).await;
        match status {
            202 => {
                acked.insert(id);
            }
            _ => break (status, headers, reply),
        }
        assert!(acked.len() < 1000, "the spool never filled");
    };
    let (status, headers, reply) = refusal;
    assert_eq!(status, 503, "{reply}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("spool.max_bytes"),
        "{reply}"
    );
    let err = gw
        .grpc()
        .await
        .ingest_event(IngestEventRequest {
            event: Some(grpc_event("over")),
            ack: AckMode::Spooled as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        gw.metrics()
            .await
            .contains(r#"spool_refused_total{reason="full"}"#)
    );

    // Nothing it took was dropped to make room: all of it arrives once a broker does.
    let broker = Broker::spawn_on(port);
    broker.create_topic(TOPIC, 1).await;
    wait_spool_empty(&gw).await;
    let counts = read_ids(&broker, &acked, Duration::from_secs(30));
    for id in &acked {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    let (status, _, _) = post_event(&gw, "/api/v1/events?ack=spooled", &event("later"), &[]).await;
    assert_eq!(status, 202, "room again once forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_and_a_corrupt_record_are_recovered_and_reported() {
    use event_gateway::spool::segment::{Frame, Reader};
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let port = free_port();
    let spool_dir = tempfile::tempdir().unwrap();
    let mut config = spool_config(&format!("127.0.0.1:{port}"));
    config.spool.dir = Some(spool_dir.path().to_path_buf());
    config.shutdown.drain_timeout = Duration::from_secs(1);
    let gw = TestGateway::start(config.clone()).await;
    for i in 0..10 {
        let (status, _, reply) = post_event(
            &gw,
            "/api/v1/events?ack=spooled",
            &event(&format!("e-{i}")),
            &[],
        )
        .await;
        assert_eq!(status, 202, "{reply}");
    }
    let report = gw.stop().await;
    assert_eq!(
        report.spool_left, 10,
        "no broker: all of it stays for the next start"
    );

    // Flip a byte inside record 3's payload, and leave half a record at the end.
    let seg = std::fs::read_dir(spool_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut reader = Reader::open(&event_gateway::spool::RealFs, &seg).unwrap();
    let mut third = None;
    while let Some(f) = reader.next_frame().unwrap() {
        if let Frame::Record {
            position: 3, at, ..
        } = f
        {
            third = Some(at);
        }
    }
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[third.unwrap() as usize + 20] ^= 0x40;
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']);
    std::fs::write(&seg, bytes).unwrap();

    let broker = Broker::spawn_on(port);
    broker.create_topic(TOPIC, 1).await;
    let gw = TestGateway::start(config).await;
    let detail = spool_detail(&gw).await;
    assert_eq!(detail["recovered"]["torn_tails"], 1, "{detail}");
    assert_eq!(detail["recovered"]["corrupt_records"], 1, "{detail}");
    wait_spool_empty(&gw).await;
    let want: HashSet<String> = (0..10)
        .filter(|i| *i != 3)
        .map(|i| format!("e-{i}"))
        .collect();
    let counts = read_ids(&broker, &want, Duration::from_secs(30));
    for id in &want {
        assert_eq!(counts.get(id), Some(&1), "{id}: {counts:?}");
    }
    assert!(
        !counts.contains_key("e-3"),
        "the corrupt record is not sent"
    );
    // Forwarded past, the damaged segment is kept aside for inspection, not deleted.
    assert!(
        spool_dir
            .path()
            .join("damaged")
            .join(seg.file_name().unwrap())
            .exists()
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("spool_corrupt_records_at_start 1"),
        "the corrupt record is reported: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_within_the_window_are_written_once_over_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.dedup.window = Duration::from_secs(600);
    let gw = TestGateway::start(config).await;
    let (status, _, first) = post_event(&gw, "/api/v1/events", &event("d-1"), &[]).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    let (status, _, again) = post_event(&gw, "/api/v1/events", &event("d-1"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["offset"], first["offset"], "the first one's outcome");
    let r = gw.grpc_ingest(grpc_event("d-1")).await.unwrap();
    assert!(r.duplicate);
    assert_eq!(r.offset.to_string(), first["offset"].as_str().unwrap());
    // Within one batch too; another source with the same id is another event.
    let mut other = event("d-1");
    other["source"] = json!("elsewhere");
    let batch = json!({"events": [event("d-2"), event("d-2"), other]});
    let (status, _, reply) = post_event(&gw, "/api/v1/events/batch", &batch, &[]).await;
    assert_eq!(status, 200, "{reply}");
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results[0]["duplicate"], false);
    assert_eq!(results[1]["duplicate"], true);
    assert_eq!(results[1]["offset"], results[0]["offset"]);
    assert_eq!(results[2]["duplicate"], false);
    let ids: Vec<String> = gw
        .log_lines()
        .iter()
        .map(|l| {
            format!(
                "{}/{}",
                l["source"].as_str().unwrap(),
                l["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(ids, ["shop/d-1", "shop/d-2", "elsewhere/d-1"]);
    assert!(
        gw.metrics()
            .await
            .contains("events_duplicates_suppressed_total 3")
    );
}

/// A full disk: a tmpfs of 256 KiB that the test mounts (root only; scripts/test runs as
/// root, a plain `cargo test` as another user skips).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Some(SmallDisk { dir });
        }
        if std::env::var_os("EVENT_GATEWAY_REQUIRE_ALL").is_some_and(|v| v == "1") {
            panic!("cannot mount a tmpfs (needs root): the full-disk test cannot run");
        }
        eprintln!("SKIPPED a_full_disk: cannot mount a tmpfs (needs root)");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_503_corrupts_nothing_and_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let data = disk.dir.path().join("log");
    let mut config = test_config(&data);
    config.spool.segment_bytes = bytesize::ByteSize::kib(64);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(event_gateway::serve(config.clone(), listener, async move {
        let _ = stopped.await;
    }));
    // Leave little room: a ballast file takes the rest.
    let ballast = disk.dir.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 200 * 1024]).unwrap();
    let url = format!("http://{addr}/api/v1/events");
    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let id = format!("e-{i}");
        let r = post_raw(&http(), &url, &event(&id).to_string()).await;
        match r.status().as_u16() {
            200 => stored.push(id),
            s => {
                refused = Some((
                    s,
                    r.headers().contains_key("retry-after"),
                    r.text().await.unwrap(),
                ));
                break;
            }
        }
    }
    let (status, retry_after, body) = refused.expect("the disk filled up");
    assert_eq!(status, 503, "{body}");
    assert!(retry_after);
    assert!(body.contains("could not write to disk"), "{body}");
    // Space returns: the next write succeeds without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let r = post_raw(&http(), &url, &event("after").to_string()).await;
    assert_eq!(r.status(), 200);
    stored.push("after".into());
    let _ = stop.send(());
    served.await.unwrap().unwrap();
    // Every acknowledged event is readable, nothing else, and reopening finds no damage.
    let ids: Vec<String> = log_text(&data)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, stored);
    let spool = event_gateway::spool::Spool::open(
        event_gateway::spool::Settings {
            dir: data.clone(),
            segment_bytes: 1 << 20,
            max_bytes: 1 << 30,
            max_age: None,
            min_room: 0,
        },
        &opentelemetry::global::meter("test"),
    )
    .unwrap();
    let r = spool.recovery();
    assert_eq!(
        (r.torn_tails, r.corrupt_records, r.unreadable_segments),
        (0, 0, 0),
        "{r:?}"
    );
}

/// Routes `gone.*` events to a topic that does not exist: Kafka refuses them for good.
fn with_a_missing_topic(mut c: Config) -> Config {
    c.types.entries = vec![event_gateway::config::TypeEntryConfig {
        r#type: "gone.*".into(),
        schema: None,
        topic: Some("gone".into()),
        datacontenttype: None,
        dataschema: None,
    }];
    c.spool.give_up_after = Duration::from_secs(1);
    c
}

fn gone_event(id: &str) -> Value {
    json!({"id": id, "type": "gone.away", "source": "shop", "data": {"n": id}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kafka_refuses_for_good_goes_to_the_dead_letter_topic_and_blocks_nothing() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    broker.create_topic("dead", 1).await;
    let mut config = with_a_missing_topic(spool_config(&broker.bootstrap()));
    config.kafka.dead_letter_topic = Some("dead".into());
    let gw = TestGateway::start(config).await;
    let (status, _, reply) =
        post_event(&gw, "/api/v1/events?ack=spooled", &event("before"), &[]).await;
    assert_eq!(status, 202, "{reply}");
    let (status, _, reply) = post_event(
        &gw,
        "/api/v1/events?ack=spooled",
        &gone_event("poison"),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let (status, _, _) = post_event(&gw, "/api/v1/events?ack=spooled", &event("after"), &[]).await;
    assert_eq!(status, 202);
    wait_spool_empty(&gw).await;
    let dead = broker.read_all("dead", 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].headers["ce_id"], "poison");
    assert_eq!(dead[0].headers["eventgateway-topic"], "gone");
    assert!(
        dead[0].headers["eventgateway-error"].contains("gone"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(dead[0].value_json()["n"], "poison", "the original value");
    let want: HashSet<String> = ["before", "after"].iter().map(|s| s.to_string()).collect();
    let counts = read_ids(&broker, &want, Duration::from_secs(20));
    assert_eq!(
        (counts.get("before"), counts.get("after")),
        (Some(&1), Some(&1))
    );
    assert!(gw.metrics().await.contains("spool_dead_lettered_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_a_refused_record_is_parked_and_alerted_on() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let spool_dir = tempfile::tempdir().unwrap();
    let mut config = with_a_missing_topic(spool_config(&broker.bootstrap()));
    config.spool.dir = Some(spool_dir.path().to_path_buf());
    let gw = TestGateway::start(config).await;
    for e in [gone_event("poison"), event("after")] {
        let (status, _, reply) = post_event(&gw, "/api/v1/events?ack=spooled", &e, &[]).await;
        assert_eq!(status, 202, "{reply}");
    }
    wait_spool_empty(&gw).await;
    let counts = read_ids(
        &broker,
        &HashSet::from(["after".to_string()]),
        Duration::from_secs(20),
    );
    assert_eq!(
        counts.get("after"),
        Some(&1),
        "the record behind it went on"
    );
    // Kept, readable with `event-gateway log`, counted for the alert.
    let parked = log_text(&spool_dir.path().join("parked"));
    assert!(parked.contains(r#""id":"poison""#), "{parked}");
    assert!(gw.metrics().await.contains("spool_parked_records 1"));
    assert_eq!(spool_detail(&gw).await["forwarder"]["parked_records"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_spooled_requests_are_refused_and_the_rest_is_forwarded() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let mut config = spool_config(&broker.bootstrap());
    config.shutdown.drain_delay = Duration::from_secs(2);
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let (status, _, _) = post_event(&gw, "/api/v1/events?ack=spooled", &event("kept"), &[]).await;
    assert_eq!(status, 202);
    let url = gw.url("/api/v1/events?ack=spooled");
    let ready = gw.url("/health/ready");
    let stopping = tokio::spawn(gw.stop());
    wait_until(Duration::from_secs(2), "draining", || {
        let r = http().get(&ready).send();
        async move { r.await.map(|r| r.status() == 503).unwrap_or(false) }
    })
    .await;
    let r = post_raw(&http(), &url, &event("late").to_string()).await;
    assert_eq!(r.status(), 503, "no spooled events while draining");
    assert!(r.text().await.unwrap().contains("shutting down"));
    let report = stopping.await.unwrap();
    assert_eq!(report.spool_left, 0, "forwarded within the drain");
    let counts = read_ids(
        &broker,
        &HashSet::from(["kept".to_string()]),
        Duration::from_secs(20),
    );
    assert_eq!(counts.get("kept"), Some(&1));
    assert!(!counts.contains_key("late"));
}
