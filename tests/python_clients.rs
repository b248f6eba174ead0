//! Clients from other ecosystems: Python's grpcio driven only by server reflection (as
//! grpcurl is) lists the services and calls the RPCs; the CloudEvents Python SDK sends in
//! every HTTP content mode, and the CloudEvents JavaScript SDK's HTTP emitter in binary and
//! structured mode; PyPI's `websockets` streams over the WebSocket route and grpcio calls
//! IngestStream from reflection. The interpreter comes from `$EVENT_GATEWAY_PYTHON` (the virtualenv
//! scripts/test prepares from PyPI); the JavaScript SDK from `tests/js` (npm ci).
mod common;

use std::path::Path;

use common::*;

/// Runs `tests/py/<script> <gateway address>` and returns what it printed; it must succeed.
async fn run_script(py: &Path, script: &str, gw: &TestGateway) -> String {
    let out = tokio::process::Command::new(py)
        .args([&format!("tests/py/{script}"), &gw.addr.to_string()])
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflection_driven_python_client_calls_every_rpc() {
    let Some(py) = require(Tool::Python) else {
        return;
    };
    let gw = TestGateway::local().await;
    let stdout = run_script(&py, "reflection_client.py", &gw).await;
    assert!(stdout.contains("\"storedCount\": 2"), "{stdout}");
    // Two calls stored three events, read back from the local log.
    let lines = gw.log_lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["subject"], "user-456");
}

/// The CloudEvents Python SDK's own HTTP encodings (binary and structured mode, and a batch
/// of its structured events) are accepted and stored as the same event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_python_sdk_is_understood_in_every_mode() {
    let Some(py) = require(Tool::Python) else {
        return;
    };
    let gw = TestGateway::local().await;
    let stdout = run_script(&py, "cloudevents_sdk.py", &gw).await;
    let cases: std::collections::HashMap<String, serde_json::Value> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["case"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    for case in ["binary", "structured", "batch"] {
        assert_eq!(cases[case]["status"], 200, "{case}: {}", cases[case]);
    }
    assert_eq!(cases["batch"]["reply"]["storedCount"], 2);
    let missing = &cases["binary-without-type"];
    assert_eq!(missing["status"], 400);
    assert_eq!(
        missing["reply"]["details"][0]["fieldViolations"][0]["field"],
        "ce-type"
    );

    // Four events stored, equal but for their ids.
    let mut lines = gw.log_lines();
    assert_eq!(lines.len(), 4);
    for l in &mut lines {
        assert!(l["id"].as_str().unwrap().starts_with("sdk-"));
        l.as_object_mut().unwrap().remove("id");
    }
    assert!(lines.windows(2).all(|w| w[0] == w[1]), "{lines:?}");
    assert_eq!(lines[0]["subject"], "user 1");
    assert_eq!(lines[0]["partitionkey"], "k-1");
    assert_eq!(
        lines[0]["data"],
        serde_json::json!({"user_id": "1", "email": "a@example.com"})
    );
}

/// The CloudEvents JavaScript SDK's own HTTP emitter (binary mode, its default, and
/// structured mode) is understood, and both store the same event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_javascript_emitter_is_understood() {
    let Some(_) = require(Tool::JsSdk) else {
        return;
    };
    let gw = TestGateway::local().await;
    let out = tokio::process::Command::new("node")
        .args(["tests/js/cloudevents_emitter.mjs", &gw.addr.to_string()])
        .output()
        .await
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 2, "{stdout}");
    for (r, id) in replies.iter().zip(["js-binary", "js-structured"]) {
        // A stored reply (an error reply has `code` and no `id`).
        assert_eq!(r["reply"]["id"], id, "{stdout}");
        assert!(r["reply"]["offset"].is_string(), "{stdout}");
    }
    let mut lines = gw.log_lines();
    assert_eq!(lines.len(), 2);
    for l in &mut lines {
        l.as_object_mut().unwrap().remove("id");
    }
    assert_eq!(lines[0], lines[1]);
    assert_eq!(lines[0]["subject"], "user 1");
    assert_eq!(lines[0]["partitionkey"], "k-1");
}

/// Streaming clients from PyPI: `websockets` on the WebSocket route (single-event frames, a
/// request frame, its own ping) and grpcio calling IngestStream from reflection alone. The
/// invalid event in the middle fails alone, with the field named; the others are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_streaming_clients_store_events_and_see_each_result() {
    let Some(py) = require(Tool::Python) else {
        return;
    };
    let gw = TestGateway::local().await;
    let stdout = run_script(&py, "stream_clients.py", &gw).await;
    let mut by_client: std::collections::HashMap<String, Vec<serde_json::Value>> =
        Default::default();
    for l in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        by_client
            .entry(v["client"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["result"].clone());
    }
    assert_eq!(by_client["websocket"].len(), 6, "{stdout}");
    assert_eq!(by_client["grpc"].len(), 3, "{stdout}");
    for results in by_client.values() {
        for r in results {
            let id = r["id"].as_str().unwrap();
            if id.ends_with("-bad") {
                assert_eq!(r["outcome"], "OUTCOME_FAILED", "{r}");
                assert_eq!(r["error"]["code"], "INVALID_ARGUMENT", "{r}");
                assert_eq!(
                    r["error"]["fieldViolations"][0]["field"], "event.type",
                    "{r}"
                );
            } else {
                assert_eq!(r["outcome"], "OUTCOME_STORED", "{r}");
            }
        }
    }
    // The request frame was numbered from 100; the single frames from 0.
    let mut ws_seq: Vec<u64> = by_client["websocket"]
        .iter()
        .map(|r| r["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    ws_seq.sort();
    assert_eq!(ws_seq, [0, 1, 2, 100, 101, 102]);
    let mut ids: Vec<String> = gw
        .log_lines()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["grpc-1", "grpc-2", "ws-1", "ws-2", "wsreq-1", "wsreq-2"]
    );
}
