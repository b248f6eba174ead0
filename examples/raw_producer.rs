//! Benchmark ceiling: rdkafka producing seed-sized CloudEvents (binary mode, the gateway's
//! headers) straight to the broker with the gateway's own producer settings, as fast as the
//! broker acknowledges them. Prints events/s. `raw_producer BROKERS TOPIC SECONDS [WINDOW] [LINGER_MS]`:
//! WINDOW deliveries are kept outstanding (20,000 by default: the broker's throughput
//! ceiling; 50 mimics 50 clients each waiting for its ack).
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use event_gateway::config::KafkaConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brokers = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:19092".into());
    let topic = args.get(2).cloned().unwrap_or_else(|| "bench".into());
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let window: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let mut config = KafkaConfig {
        brokers: vec![brokers],
        topic: topic.clone(),
        ..KafkaConfig::default()
    };
    if let Some(ms) = args.get(5).and_then(|s| s.parse().ok()) {
        config.linger = Duration::from_millis(ms);
    }
    let producer: FutureProducer = event_gateway::sink::kafka::client_config(&config)
        .create()
        .expect("producer");
    let data = br#"{"user_id":"123","email":"user@example.com"}"#;
    let mut pending = VecDeque::with_capacity(window);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut failed = 0u64;
    while Instant::now() < deadline {
        while pending.len() < window {
            let id = format!("raw-{sent}");
            let subject = format!("user-{}", sent % 1000);
            let headers = OwnedHeaders::new_with_capacity(7)
                .insert(Header {
                    key: "ce_specversion",
                    value: Some("1.0"),
                })
                .insert(Header {
                    key: "ce_id",
                    value: Some(id.as_str()),
                })
                .insert(Header {
                    key: "ce_source",
                    value: Some("user-service"),
                })
                .insert(Header {
                    key: "ce_type",
                    value: Some("user.created"),
                })
                .insert(Header {
                    key: "ce_time",
                    value: Some("2026-01-01T00:00:00Z"),
                })
                .insert(Header {
                    key: "ce_subject",
                    value: Some(subject.as_str()),
                })
                .insert(Header {
                    key: "content-type",
                    value: Some("application/json"),
                });
            let record = FutureRecord::to(&topic)
                .payload(&data[..])
                .key(subject.as_str())
                .headers(headers);
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push_back(f);
                    sent += 1;
                }
                Err(_) => break, // queue full: wait for acks below
            }
        }
        if let Some(f) = pending.pop_front() {
            match f.await {
                Ok(Ok(_)) => acked += 1,
                _ => failed += 1,
            }
        }
    }
    while let Some(f) = pending.pop_front() {
        match f.await {
            Ok(Ok(_)) => acked += 1,
            _ => failed += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "raw_producer window={window} events={acked} failed={failed} seconds={elapsed:.2} events_per_sec={:.0}",
        acked as f64 / elapsed
    );
}
