//! The real binary: `--help`, configuration errors that name the key (file and environment),
//! `--config` taking effect, SIGTERM ending a loaded gateway with exit code 0, and exit code 3
//! when the shutdown flush left events undelivered.
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_event-gateway");

#[test]
fn help_lists_the_config_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--config"), "{text}");
    assert!(text.contains("GATEWAY_"), "{text}");
}

#[test]
fn configuration_errors_name_the_key_and_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "rate_limit:\n  burst: 5\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("burst") && err.contains("rate_limit"), "{err}");

    let out = Command::new(BIN)
        .args(["--config", bad.to_str().unwrap()])
        .env("GATEWAY_CONFIG", "/ignored/when/the/flag/is/given.yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "server:\n  address: 127.0.0.1:0\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", good.to_str().unwrap()])
        .env("GATEWAY_KAFKA_REQUIRED_ACKS", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("required_acks"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start_binary(
        dir.path(),
        "storage:\n  data_dir: data\nlogging:\n  level: warn\n",
        Stdio::null(),
    )
    .await;
    let c = http();
    // Acknowledged events under concurrent load, then SIGTERM while requests are flowing.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (c, base) = (c.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200 {
                let id = format!("t{t}-{i}");
                let body = format!(r#"{{"id":"{id}","type":"t","source":"s"}}"#);
                let sent = c
                    .post(format!("{base}/api/v1/events"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => acked.push(id),
                    _ => {}
                }
            }
            acked
        }));
    }
    let log = dir.path().join("data");
    wait_until(Duration::from_secs(20), "some events stored", || {
        let log = log.clone();
        async move { log_text(&log).lines().count() > 50 }
    })
    .await;
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the gateway exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // Read back the way a user would: `event-gateway log <dir>`.
    let out = Command::new(BIN)
        .args(["log", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stored = String::from_utf8(out.stdout).unwrap();
    let ids: std::collections::HashSet<String> = stored
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(ids.contains(&id), "acknowledged event {id} is in the log");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_left_undelivered_at_exit_make_exit_code_3() {
    if require(Tool::Tansu).is_none() {
        return;
    }
    let broker = Broker::start("events", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "kafka:\n  brokers: [\"{}\"]\n  topic: events\nspool:\n  enabled: false\nshutdown:\n  drain_timeout: 1s\nlogging:\n  level: error\n",
        broker.bootstrap()
    );
    let (child, base) = start_binary(dir.path(), &yaml, Stdio::piped()).await;
    let c = http();
    let event = r#"{"type":"t","source":"s"}"#;
    let r = post_raw(&c, &format!("{base}/api/v1/events"), event).await;
    assert_eq!(r.status(), 200, "stored while the broker answers");
    // The broker stops answering: these reach the producer and are never acknowledged (the
    // clients give up waiting; their events stay queued in the producer).
    broker.pause();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = impatient
            .post(format!("{base}/api/v1/events"))
            .header("content-type", "application/json")
            .body(event)
            .send()
            .await;
        assert!(
            r.is_err_and(|e| e.is_timeout()),
            "no answer while the broker is paused"
        );
    }
    sigterm(&child);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the gateway exits after SIGTERM")
        .unwrap();
    broker.resume();
    // The log (stdout) says how many.
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("3 events were not delivered before exit"),
        "{log}"
    );
}

/// What Kubernetes sends at the end of a pod's life.
fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
}
