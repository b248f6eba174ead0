//! The Kafka sink against a real Kafka-compatible broker (tansu, in memory, over TCP), read
//! back with a consumer: records follow the CloudEvents Kafka binding, every acknowledged event
//! is in the topic exactly once (under concurrency, across a broker pause, across shutdown),
//! readiness follows the broker, and rdkafka's MockCluster injects retriable errors.
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use event_gateway::Config;
use event_gateway::config::RecordMode;
use event_gateway::proto::{
    CloudEvent, IngestBatchRequest, IngestEventRequest, IngestStreamRequest,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const TOPIC: &str = "events";

fn kafka_config(bootstrap: &str) -> Config {
    let dir = std::env::temp_dir();
    let mut c = test_config(&dir);
    c.kafka.brokers = vec![bootstrap.to_owned()];
    c.kafka.topic = TOPIC.into();
    c
}

async fn gateway_for(broker: &Broker) -> TestGateway {
    let gw = TestGateway::start(kafka_config(&broker.bootstrap())).await;
    gw.wait_ready().await;
    gw
}

/// Reads the topic back and asserts every acknowledged id is in it exactly once.
fn assert_each_stored_once(broker: &Broker, acked: &[String]) -> Vec<Record> {
    let records = broker.read_all(TOPIC, acked.len(), Duration::from_secs(30));
    let counts = ids_in(&records);
    for id in acked {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "acknowledged event {id} must be stored exactly once"
        );
    }
    records
}

/// Counts records per `ce_id` header.
fn ids_in(records: &[Record]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in records {
        *m.entry(r.headers["ce_id"].clone()).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_both_protocols_become_cloudevents_records() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 3).await;
    let gw = gateway_for(&broker).await;

    let (status, rest) = post_json(&http(), &gw.url("/api/v1/events"), SEED_EVENT).await;
    assert_eq!(status, 200, "{rest}");

    let mut client = gw.grpc().await;
    let mut event: CloudEvent = serde_json::from_str(
        r#"{"id":"grpc-1","type":"order.placed","source":"https://shop.example/orders","time":"2026-03-04T05:06:07.5Z","datacontenttype":"application/json","dataschema":"https://shop.example/schemas/order.json","data":[1,"two",{"three":3}],"extensions":{"partitionkey":"customer-9","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}"#,
    )
    .unwrap();
    let grpc = client
        .ingest_event(IngestEventRequest {
            event: Some(event.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // No subject, no partitionkey: no key at all (never an empty key).
    event.id = "grpc-2".into();
    event.extensions.clear();
    event.payload = None;
    event.datacontenttype.clear();
    let keyless = client
        .ingest_event(IngestEventRequest {
            event: Some(event),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let records = broker.read_all(TOPIC, 3, Duration::from_secs(20));
    assert_eq!(records.len(), 3);
    let by_id: HashMap<_, _> = records
        .iter()
        .map(|r| (r.headers["ce_id"].clone(), r))
        .collect();

    let r = by_id[rest["id"].as_str().unwrap()];
    assert_eq!(r.partition, rest["partition"].as_i64().unwrap() as i32);
    assert_eq!(r.offset.to_string(), rest["offset"].as_str().unwrap());
    assert_eq!(r.key.as_deref(), Some("user-123"), "subject is the key");
    assert_eq!(r.headers["ce_specversion"], "1.0");
    assert_eq!(r.headers["ce_type"], "user.created");
    assert_eq!(r.headers["ce_source"], "user-service");
    assert_eq!(r.headers["ce_subject"], "user-123");
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(r.headers["ce_time"].ends_with('Z'));
    assert_eq!(
        r.value_json(),
        json!({"user_id":"123","email":"user@example.com"})
    );

    let r = by_id["grpc-1"];
    assert_eq!((r.partition, r.offset), (grpc.partition, grpc.offset));
    assert_eq!(r.key.as_deref(), Some("customer-9"), "partitionkey wins");
    assert_eq!(r.headers["ce_time"], "2026-03-04T05:06:07.500Z");
    assert_eq!(
        r.headers["ce_dataschema"],
        "https://shop.example/schemas/order.json"
    );
    assert_eq!(r.headers["ce_partitionkey"], "customer-9");
    assert_eq!(
        r.headers["ce_traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(r.value_json(), json!([1, "two", {"three": 3}]));

    let r = by_id["grpc-2"];
    assert_eq!((r.partition, r.offset), (keyless.partition, keyless.offset));
    assert_eq!(r.key, None);
    assert_eq!(r.value, None);
    assert!(!r.headers.contains_key("content-type"));

    // A consumer can rebuild the exact event from the binary-mode record.
    let rebuilt = json!({
        "specversion": r.headers["ce_specversion"],
        "id": r.headers["ce_id"],
        "type": r.headers["ce_type"],
        "source": r.headers["ce_source"],
    });
    assert_eq!(rebuilt["source"], "https://shop.example/orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_writes_the_whole_event_as_json() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let mut config = kafka_config(&broker.bootstrap());
    config.kafka.record_mode = RecordMode::Structured;
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let body = r#"{"id":"s-1","time":"2026-01-01T00:00:00Z","type":"t","source":"s","subject":"sub","data":{"a":1}}"#;
    let (status, _) = post_json(&http(), &gw.url("/api/v1/events"), body).await;
    assert_eq!(status, 200);
    let records = broker.read_all(TOPIC, 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    assert!(records[0].headers["content-type"].starts_with("application/cloudevents+json"));
    assert_eq!(
        records[0].value_json(),
        // `authtype` is the gateway's provenance stamp (CloudEvents Auth Context): no
        // authentication is configured here, so the sender is `unauthenticated`.
        json!({"specversion":"1.0","id":"s-1","source":"s","type":"t","subject":"sub","time":"2026-01-01T00:00:00Z","authtype":"unauthenticated","data":{"a":1}})
    );
}

/// Fires `n` single events over REST (`grpc == false`) or gRPC from one task; returns the ids
/// acknowledged and the failure codes seen.
async fn single_sender(
    gw_addr: String,
    prefix: String,
    n: usize,
    grpc: bool,
) -> (Vec<String>, Vec<String>) {
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    let http = http();
    let mut client = None;
    if grpc {
        use event_gateway::transport::grpc::event_gateway_service_client::EventGatewayServiceClient;
        match EventGatewayServiceClient::connect(format!("http://{gw_addr}")).await {
            Ok(c) => client = Some(c),
            // The gateway is gone (shutdown tests): a failure, never an ack.
            Err(_) => return (acked, vec!["connect".into()]),
        }
    }
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let body = json!({"id": id, "type": "load.test", "source": "tests", "subject": format!("s{}", i % 7), "data": {"i": i}});
        match &mut client {
            Some(c) => {
                let ev: CloudEvent = serde_json::from_value(body).unwrap();
                match c
                    .ingest_event(IngestEventRequest {
                        event: Some(ev),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => acked.push(id),
                    Err(s) => failed.push(format!("{:?}", s.code())),
                }
            }
            None => {
                let sent = http
                    .post(format!("http://{gw_addr}/api/v1/events"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => acked.push(id),
                    Ok(r) => failed.push(r.status().as_u16().to_string()),
                    Err(_) => failed.push("connect".into()),
                }
            }
        }
    }
    (acked, failed)
}

/// Shared state of a background load: ids acknowledged, failure codes seen, a stop flag.
#[derive(Clone, Default)]
struct Load {
    acked: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// `tasks` senders, alternating gRPC and REST, one event per request, at most 2,000
    /// requests each, until `stop`.
    fn spawn(&self, addr: &str, tasks: usize, tag: &str) -> Vec<tokio::task::JoinHandle<()>> {
        (0..tasks)
            .map(|t| {
                let (load, addr, tag) = (self.clone(), addr.to_owned(), tag.to_owned());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !load.stop.load(Ordering::Relaxed) && i < 2000 {
                        let (ids, failed) =
                            single_sender(addr.clone(), format!("{tag}{t}-{i}"), 1, t % 2 == 0)
                                .await;
                        load.acked.lock().await.extend(ids);
                        load.failures.lock().await.extend(failed);
                        i += 1;
                    }
                })
            })
            .collect()
    }

    async fn wait_acked(&self, n: usize, what: &str) {
        wait_until(Duration::from_secs(60), what, || {
            let acked = self.acked.clone();
            async move { acked.lock().await.len() >= n }
        })
        .await;
    }

    async fn finish(&self, tasks: Vec<tokio::task::JoinHandle<()>>) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        (
            self.acked.lock().await.clone(),
            self.failures.lock().await.clone(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_event_is_stored_exactly_once_under_concurrent_load() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 4).await;
    let gw = gateway_for(&broker).await;
    let addr = gw.addr.to_string();
    let mut tasks = Vec::new();
    for t in 0..8 {
        tasks.push(tokio::spawn(single_sender(
            addr.clone(),
            format!("c{t}"),
            40,
            t % 2 == 0,
        )));
    }
    // Batches over both protocols alongside.
    let mut batch_ids = Vec::new();
    let mut client = gw.grpc().await;
    for b in 0..4 {
        let events: Vec<Value> = (0..50)
            .map(|i| json!({"id": format!("b{b}-{i}"), "type": "load.batch", "source": "tests"}))
            .collect();
        let body = json!({ "events": events });
        let reply = if b % 2 == 0 {
            let req: IngestBatchRequest = serde_json::from_value(body).unwrap();
            serde_json::to_value(client.ingest_batch(req).await.unwrap().into_inner()).unwrap()
        } else {
            let (s, r) =
                post_json(&http(), &gw.url("/api/v1/events/batch"), &body.to_string()).await;
            assert_eq!(s, 200, "{r}");
            r
        };
        assert_eq!(reply["storedCount"], 50);
        for r in reply["results"].as_array().unwrap() {
            assert_eq!(r["outcome"], "OUTCOME_STORED");
            batch_ids.push(r["id"].as_str().unwrap().to_owned());
        }
    }
    let mut acked = batch_ids;
    for t in tasks {
        let (ids, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        acked.extend(ids);
    }
    assert_eq!(acked.len(), 8 * 40 + 4 * 50);
    let records = assert_each_stored_once(&broker, &acked);
    assert_eq!(
        records.len(),
        acked.len(),
        "nothing stored that was not acked"
    );
    // Right key, headers and data for every single event: `c<t>-<i>` carries {"i": i} and
    // subject `s<i % 7>`, which is its key.
    for r in records
        .iter()
        .filter(|r| r.headers["ce_type"] == "load.test")
    {
        let i: u64 = r.headers["ce_id"]
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(r.value_json(), json!({ "i": i }));
        assert_eq!(r.key.as_deref(), Some(format!("s{}", i % 7).as_str()));
        assert_eq!(r.headers["ce_subject"], format!("s{}", i % 7));
        assert_eq!(r.headers["ce_source"], "tests");
    }
    // Same subject, same partition (the key decides).
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    for r in records.iter().filter(|r| r.key.is_some()) {
        let p = *partition_of_key
            .entry(r.key.clone().unwrap())
            .or_insert(r.partition);
        assert_eq!(p, r.partition);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_pause_under_load_loses_nothing_acknowledged() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 2).await;
    let gw = gateway_for(&broker).await;
    let load = Load::default();
    let tasks = load.spawn(&gw.addr.to_string(), 4, "p");
    load.wait_acked(50, "some events acked before the pause")
        .await;
    broker.pause();
    let before_pause = load.acked.lock().await.len();
    // Keep the broker stopped while requests pile up (well under message_timeout = 20s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.resume();
    load.wait_acked(before_pause + 100, "more events acked after the pause")
        .await;
    let (acked, failures) = load.finish(tasks).await;
    assert!(
        failures.iter().all(|f| f == "503" || f == "Unavailable"),
        "only 503 / UNAVAILABLE may be seen during a pause: {failures:?}"
    );
    assert_each_stored_once(&broker, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_absent_at_start_then_ready_once_it_appears() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = TestGateway::start(kafka_config(&format!("127.0.0.1:{port}"))).await;
    let c = http();
    // Let the producer try and fail to connect, then look.
    wait_until(Duration::from_secs(10), "gateway answering", || {
        let r = c.get(gw.url("/health/live")).send();
        async move { r.await.is_ok() }
    })
    .await;
    let ready = c.get(gw.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let live = c.get(gw.url("/health/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    // gRPC: readiness NOT_SERVING, liveness SERVING (what the Kubernetes probes ask).
    {
        use tonic_health::pb::health_check_response::ServingStatus;
        for (service, want) in [
            ("", ServingStatus::NotServing),
            (
                "eventgateway.v1.EventGatewayService",
                ServingStatus::NotServing,
            ),
            ("liveness", ServingStatus::Serving),
        ] {
            wait_grpc_health(gw.channel().await, service, want).await;
        }
    }

    // Ingest is refused at once with 503 + Retry-After over both protocols.
    let (headers, _) = assert_unavailable_over_both_protocols(&gw).await;
    assert_eq!(headers["retry-after"], "1");

    let broker = Broker::spawn_on(port);
    broker.create_topic(TOPIC, 1).await;
    gw.wait_ready().await;
    // gRPC health agrees the moment REST does: one check, no waiting.
    for service in ["", "eventgateway.v1.EventGatewayService"] {
        assert_eq!(
            grpc_health_now(gw.channel().await, service).await,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?} right after /health/ready turned 200"
        );
    }
    let (s, r) = post_json(&c, &gw.url("/api/v1/events"), SEED_EVENT).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(broker.read_all(TOPIC, 1, Duration::from_secs(20)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_events_are_rejected_without_touching_the_broker() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let gw = gateway_for(&broker).await;
    let big = json!({"type":"t","source":"s","data": "z".repeat(600 * 1024)}).to_string();
    let (s, r) = post_json(&http(), &gw.url("/api/v1/events"), &big).await;
    assert_eq!(s, 400, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_event_size")
    );
    // A marker event proves the topic is readable; it must be the only record.
    let (s, _) = post_json(&http(), &gw.url("/api/v1/events"), SEED_EVENT).await;
    assert_eq!(s, 200);
    let records = broker.read_all(TOPIC, 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].headers["ce_type"], "user.created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_and_keeps_every_acknowledged_event() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 2).await;
    let gw = gateway_for(&broker).await;
    let load = Load::default();
    let tasks = load.spawn(&gw.addr.to_string(), 6, "d");
    // Stop while requests are in flight.
    load.wait_acked(100, "load under way").await;
    let report = gw.stop().await;
    assert_eq!(report.undelivered, 0);
    assert!(!report.drain_timed_out);
    let (acked, _failures) = load.finish(tasks).await;
    assert_each_stored_once(&broker, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_broker_errors_end_in_success_without_duplicates() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let mut errors = Vec::new();
    for _ in 0..3 {
        errors.push(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS);
        errors.push(RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE);
    }
    cluster.request_errors(RDKafkaApiKey::Produce, &errors);

    let gw = TestGateway::start(kafka_config(&cluster.bootstrap_servers())).await;
    gw.wait_ready().await;
    let events: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("m-{i}"), "type": "mock.test", "source": "tests"}))
        .collect();
    let (s, r) = gw.post_batch(&events).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["storedCount"], 20);

    // Read back from the mock cluster: each event once.
    let records = read_topic(
        &cluster.bootstrap_servers(),
        TOPIC,
        20,
        Duration::from_secs(20),
    );
    let seen = ids_in(&records);
    assert_eq!(seen.len(), 20);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_is_rebuilt_and_the_gateway_recovers() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    let gw = TestGateway::start(kafka_config(&cluster.bootstrap_servers())).await;
    gw.wait_ready().await;
    let (s, _) = post_json(&http(), &gw.url("/api/v1/events"), SEED_EVENT).await;
    assert_eq!(s, 200);

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 3],
    );
    // Requests fail with 503 (never 500) until the producer is replaced, then succeed.
    let c = http();
    let url = gw.url("/api/v1/events");
    let statuses = Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    wait_until(Duration::from_secs(60), "a success after fencing", || {
        let req = c
            .post(&url)
            .header("content-type", "application/json")
            .body(SEED_EVENT)
            .send();
        let statuses = statuses.clone();
        async move {
            let s = req.await.map(|r| r.status().as_u16()).unwrap_or(0);
            statuses.lock().unwrap().push(s);
            s == 200
        }
    })
    .await;
    let statuses = statuses.lock().unwrap().clone();
    let detailed = gw.get_json("/health/detailed").await;
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "fencing was seen: {statuses:?}");
    assert!(
        detailed["sink"]["producer_rebuilds"].as_u64().unwrap() >= 1,
        "fencing led to a rebuild: {detailed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_500_that_names_it() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start("some-other-topic", 1).await;
    let mut config = kafka_config(&broker.bootstrap());
    config.kafka.topic = "no-such-topic".into();
    let gw = TestGateway::start(config).await;
    // Readiness says so first, naming the topic (the topics are checked at startup)...
    gw.wait_not_ready_naming("no-such-topic").await;
    // ...and a request sent anyway gets a 500 naming it, once librdkafka gives up on the
    // topic after topic.metadata.propagation.max.ms (5 s).
    let r = post_seed_within(&gw.url("/api/v1/events"), 15).await;
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 13);
    assert!(
        body["message"].as_str().unwrap().contains("no-such-topic"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_answers_503_at_once() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let mut config = kafka_config(&broker.bootstrap());
    config.kafka.queue_max_messages = 1;
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    // With the broker stopped, the first event sits in the one-message queue.
    broker.pause();
    let held = tokio::spawn({
        let url = gw.url("/api/v1/events");
        async move { post_json(&http(), &url, SEED_EVENT).await.0 }
    });
    let detailed = gw.url("/health/detailed");
    wait_until(Duration::from_secs(10), "one event queued", || {
        let r = http().get(&detailed).send();
        async move {
            let v: Value = r.await.unwrap().json().await.unwrap();
            v["sink"]["in_flight"].as_i64() == Some(1)
        }
    })
    .await;
    // The next one cannot be queued: 503 with Retry-After, without waiting for the broker
    // (the client's bound is far below kafka.message_timeout).
    let r = post_seed_within(&gw.url("/api/v1/events"), 5).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("queue is full"),
        "{body}"
    );
    broker.resume();
    assert_eq!(held.await.unwrap(), 200);
}

/// #28: `kafka.forward_headers` copies the named request headers (gRPC metadata alike) onto
/// each record as Kafka headers, in the list's order with repeats kept, over REST single and
/// batch, gRPC, and through the spool (`?ack=spooled`); an unlisted header never travels,
/// and a request over `kafka.forward_headers_max_bytes` or with a non-ASCII value is refused
/// by name with nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_request_headers_become_kafka_headers_over_both_protocols() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let mut config = kafka_config(&broker.bootstrap());
    config.kafka.forward_headers = vec!["X-Tenant-Id".into(), "x-request-source".into()];
    config.kafka.forward_headers_max_bytes = bytesize::ByteSize::b(64);
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let c = http();
    let event = |id: &str| json!({"id": id, "type": "t", "source": "s"});
    let post = |path: &str, body: Value, headers: &[(&'static str, &[u8])]| {
        let mut req = c.post(gw.url(path)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    // Sent in another order than the list's, with an unlisted header and a repeat.
    let (status, reply) = post(
        "/api/v1/events",
        event("rest-1"),
        &[
            ("x-request-source", b"web"),
            ("x-tenant-id", b"acme"),
            ("x-unlisted", b"private"),
            ("x-tenant-id", b"acme-eu"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let batch = json!({"events": [event("batch-1"), event("batch-2")]});
    let (status, reply) = post("/api/v1/events/batch", batch, &[("x-tenant-id", b"beta")]).await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = post(
        "/api/v1/events?ack=spooled",
        event("spooled-1"),
        &[("x-tenant-id", b"delta")],
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let (status, reply) = post("/api/v1/events", event("none-1"), &[]).await;
    assert_eq!(status, 200, "{reply}");

    let mut client = gw.grpc().await;
    let mut req = tonic::Request::new(IngestEventRequest {
        event: Some(CloudEvent {
            id: "grpc-1".into(),
            r#type: "t".into(),
            source: "s".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-tenant-id", "gamma".parse().unwrap());
    client.ingest_event(req).await.unwrap();
    // A stream: the metadata it opened with, on each of its events.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("x-request-source", "stream".parse().unwrap());
    let mut results = client.ingest_stream(req).await.unwrap().into_inner();
    let stream_event = |id: &str| CloudEvent {
        id: id.into(),
        r#type: "t".into(),
        source: "s".into(),
        ..Default::default()
    };
    tx.send(IngestStreamRequest {
        sequence: Some(1),
        events: vec![stream_event("stream-1"), stream_event("stream-2")],
    })
    .await
    .unwrap();
    for _ in 0..2 {
        let reply = results
            .message()
            .await
            .unwrap()
            .expect("a result per event");
        assert!(reply.error.is_none(), "{reply:?}");
    }
    drop(tx);

    // Refused, naming the limit or the header, and nothing of either stored.
    let long = "x".repeat(60);
    let (status, reply) = post(
        "/api/v1/events",
        event("too-big"),
        &[("x-tenant-id", long.as_bytes())],
    )
    .await;
    assert_eq!(status, 413, "{reply}");
    assert!(
        reply
            .to_string()
            .contains("kafka.forward_headers_max_bytes"),
        "{reply}"
    );
    let (status, reply) = post(
        "/api/v1/events",
        event("not-ascii"),
        &[("x-tenant-id", b"caf\xe9")],
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.to_string().contains("x-tenant-id"), "{reply}");
    let mut req = tonic::Request::new(IngestEventRequest {
        event: Some(CloudEvent {
            id: "grpc-too-big".into(),
            r#type: "t".into(),
            source: "s".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-source", long.parse().unwrap());
    let refused = client.ingest_event(req).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("kafka.forward_headers_max_bytes"),
        "{refused:?}"
    );

    let records = broker.read_all(TOPIC, 8, Duration::from_secs(30));
    let forwarded: HashMap<String, Vec<(String, String)>> = records
        .iter()
        .map(|r| {
            let chosen = r
                .header_list
                .iter()
                .filter(|(k, _)| k.starts_with("x-"))
                .cloned()
                .collect();
            (r.headers["ce_id"].clone(), chosen)
        })
        .collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(forwarded.len(), 8, "{forwarded:?}");
    assert_eq!(
        forwarded["rest-1"],
        pairs(&[
            ("x-tenant-id", "acme"),
            ("x-tenant-id", "acme-eu"),
            ("x-request-source", "web")
        ])
    );
    assert_eq!(forwarded["batch-1"], pairs(&[("x-tenant-id", "beta")]));
    assert_eq!(forwarded["batch-2"], pairs(&[("x-tenant-id", "beta")]));
    assert_eq!(forwarded["spooled-1"], pairs(&[("x-tenant-id", "delta")]));
    assert_eq!(forwarded["grpc-1"], pairs(&[("x-tenant-id", "gamma")]));
    assert_eq!(forwarded["none-1"], pairs(&[]));
    for id in ["stream-1", "stream-2"] {
        assert_eq!(forwarded[id], pairs(&[("x-request-source", "stream")]));
    }
}
