//! Refusals are logged with the principal and the reason, one line per kind per 10 s at most
//! (a flood of bad keys is one line, with its count), and no key or token ever reaches the
//! log. Its own test binary: the log is captured by the process-wide
//! subscriber, which only this test installs, so every line is this test's.
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use sha2::Digest as _;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const KEY: &str = "kbill_77a1c0de5e1f9b2a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_without_secrets_and_a_flood_is_one_line() {
    let log = Captured::default();
    let writer = log.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let digest = hex::encode(sha2::Sha256::digest(KEY.as_bytes()));
    std::fs::write(
        &keys,
        format!("- id: billing\n  sha256: {digest}\n  allowed_types: [\"billing.*\"]\n"),
    )
    .unwrap();
    let mut config = test_config(dir.path());
    config.auth.required = true;
    config.auth.api_keys_file = Some(keys);
    let gw = TestGateway::start(config).await;
    let send = |name: &'static str, value: String, body: &'static str| {
        let url = gw.url("/api/v1/events");
        async move {
            http()
                .post(url)
                .header("content-type", "application/json")
                .header(name, value)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let forbidden = r#"{"type":"orders.placed","source":"s"}"#;
    assert_eq!(send("x-api-key", KEY.into(), forbidden).await, 403);
    assert_eq!(
        send("x-api-key", "not-a-key-5e1f".into(), SEED_EVENT).await,
        401
    );
    assert_eq!(
        send("authorization", format!("Bearer {KEY}x"), SEED_EVENT).await,
        401
    );
    // A client cycling through keys: refused every time, logged no more.
    for i in 0..200 {
        assert_eq!(
            send("x-api-key", format!("rotating-{i}"), SEED_EVENT).await,
            401
        );
    }
    let ok = r#"{"type":"billing.paid","source":"s"}"#;
    assert_eq!(send("x-api-key", KEY.into(), ok).await, 200);
    drop(gw);

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    for secret in [KEY, "not-a-key-5e1f", "rotating-1"] {
        assert!(!text.contains(secret), "a secret in the log:\n{text}");
    }
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    // One line per kind: the 403, and the first of the 202 401s.
    assert_eq!(refusals.len(), 2, "{text}");
    assert!(
        refusals.iter().any(|l| l.contains("principal=\"billing\"")
            && l.contains("forbidden_type")
            && l.contains("refused=1")),
        "{text}"
    );
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("not authenticated") && l.contains("reason=\"invalid\"")),
        "{text}"
    );
}
