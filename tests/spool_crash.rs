//! The real binary killed with SIGKILL under `ack: spooled` load, restarted on the same
//! spool, and every event that got a 202 counted in Kafka (tansu over TCP), Jepsen-style:
//! acknowledged, lost, duplicated, and requests that never got an answer.
mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

const TOPIC: &str = "events";
/// The forwarder's window: at most this many records can be in flight to Kafka, so at most
/// this many can be sent again after a crash.
const FORWARD_WINDOW: usize = 512;

/// The real binary on `port`, acknowledging `spooled` by default, its data in `dir`.
async fn start(dir: &std::path::Path, port: u16, bootstrap: &str) -> tokio::process::Child {
    let yaml = format!(
        "kafka:\n  brokers: [\"{bootstrap}\"]\n  topic: {TOPIC}\nstorage:\n  data_dir: {}\nack:\n  default: spooled\nrate_limit:\n  enabled: false\nlogging:\n  level: warn\n",
        dir.join("data").display()
    );
    start_binary_on(port, dir, &yaml, Stdio::null()).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_spooled_load_loses_no_acknowledged_event() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port, &broker.bootstrap()).await;

    let acked_total = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..6 {
        let acked_total = acked_total.clone();
        tasks.push(tokio::spawn(async move {
            let c = http();
            let url = format!("http://127.0.0.1:{port}/api/v1/events");
            let (mut acked, mut unanswered) = (Vec::new(), 0usize);
            for i in 0.. {
                let id = format!("t{t}-{i}");
                let body = format!(
                    r#"{{"id":"{id}","type":"crash.test","source":"s","subject":"k{}","data":{{"i":{i}}}}}"#,
                    i % 7
                );
                match c
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => {
                        acked.push(id);
                        acked_total.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!(
                        "unexpected status {} before the crash: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    ),
                    Err(_) => {
                        unanswered += 1;
                        break; // the gateway is gone
                    }
                }
            }
            (acked, unanswered)
        }));
    }
    wait_until(Duration::from_secs(60), "1500 events acknowledged", || {
        let n = acked_total.load(Ordering::Relaxed);
        async move { n >= 1500 }
    })
    .await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let mut acked = HashSet::new();
    let mut unanswered = 0;
    for t in tasks {
        let (a, u) = t.await.unwrap();
        acked.extend(a);
        unanswered += u;
    }

    // The same spool, a new process: what was not yet forwarded goes out first.
    let mut child = start(dir.path(), port, &broker.bootstrap()).await;
    let records = broker.read_all(TOPIC, acked.len(), Duration::from_secs(60));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *counts.entry(r.headers["ce_id"].clone()).or_insert(0) += 1;
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicated = counts.values().filter(|n| **n > 1).count();
    let metrics = http()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let replayed = metrics
        .lines()
        .find(|l| l.starts_with("spool_replayed_at_start"))
        .unwrap_or("spool_replayed_at_start ?")
        .to_owned();
    eprintln!(
        "SIGKILL under spooled load: acknowledged {}, unanswered {unanswered}, lost {}, duplicated {duplicated}, records read {}, {replayed}",
        acked.len(),
        lost.len(),
        records.len()
    );
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    // Only records in flight to Kafka at the crash can be sent twice.
    assert!(duplicated <= FORWARD_WINDOW, "{duplicated} duplicated");
    // Nothing arrives that nobody was told was taken (requests without an answer aside).
    let strangers = counts.keys().filter(|id| !acked.contains(*id)).count();
    assert!(
        strangers <= unanswered,
        "{strangers} records nobody acknowledged"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
