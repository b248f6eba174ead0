//! Browsers (#28): headless Chromium (Debian's, driven by playwright-core) loads a page served
//! from another origin than the gateway's. The page builds events with the CloudEvents
//! JavaScript SDK's browser bundle and sends them with `fetch` (structured mode, binary mode,
//! a batch: each preflighted, since they carry `Authorization` and a non-simple content type)
//! and over the WebSocket with its API key offered as a `bearer.<key>` subprotocol. The test
//! reads the events back from the broker. The same page from an origin the gateway does not
//! list gets nothing through: its fetches fail in the browser, its WebSocket is refused, the
//! gateway logs the refusal, and none of its events reaches the topic.
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use sha2::Digest as _;

const TOPIC: &str = "events";
const KEY: &str = "kweb_5e1f0c9d2b7a4e3f";

/// Serves the page, its script and the SDK's bundle (as the npm package ships it) on a free
/// port of 127.0.0.1; returns the port.
async fn serve_page() -> u16 {
    use axum::routing::get;
    let file = |path: &'static str, ty: &'static str| {
        get(move || async move {
            (
                [(http::header::CONTENT_TYPE, ty)],
                std::fs::read(path).unwrap(),
            )
        })
    };
    let app = axum::Router::new()
        .route("/", file("tests/js/browser/page.html", "text/html"))
        .route(
            "/page.js",
            file("tests/js/browser/page.js", "text/javascript"),
        )
        .route(
            "/cloudevents.js",
            file(
                "tests/js/node_modules/cloudevents/bundles/cloudevents.js",
                "text/javascript",
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Loads `url` in headless Chromium; the page's results.
async fn run_page(url: &str) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .args(["tests/js/browser.mjs", url])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser finished within 90 s")
    .expect("node runs");
    assert!(
        out.status.success(),
        "browser run failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["results"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_a_listed_origin_sends_events_and_an_unlisted_one_gets_nothing_through() {
    let (Some(_), Some(_), Some(_)) = (
        require(Tool::Tansu),
        require(Tool::JsSdk),
        require(Tool::Browser),
    ) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let page_port = serve_page().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.yaml"),
        format!(
            "- id: web-frontend\n  sha256: {}\n",
            hex::encode(sha2::Sha256::digest(KEY))
        ),
    )
    .unwrap();
    // start_binary writes `server:` and its address first: the indented lines continue it.
    let yaml = format!(
        "  cors:\n    allowed_origins: [\"http://127.0.0.1:{page_port}\"]\n\
         kafka:\n  brokers: [\"{}\"]\n  topic: {TOPIC}\n\
         auth:\n  required: true\n  api_keys_file: keys.yaml\n\
         types:\n  file: {}/scripts/bench/types.yaml\n\
         rate_limit:\n  enabled: false\n\
         logging:\n  level: info\n",
        broker.bootstrap(),
        env!("CARGO_MANIFEST_DIR"),
    );
    let log = dir.path().join("gateway.log");
    let (_child, base) = start_binary(
        dir.path(),
        &yaml,
        Stdio::from(std::fs::File::create(&log).unwrap()),
    )
    .await;

    // The page from `localhost`: another origin than the listed 127.0.0.1 one.
    let hostile = run_page(&format!(
        "http://localhost:{page_port}/?gw={base}&token={KEY}&tag=unlisted"
    ))
    .await;
    for name in ["structured", "binary", "batch"] {
        let error = hostile[name]["error"].as_str().unwrap_or_default();
        assert!(error.contains("Failed to fetch"), "{name}: {hostile}");
    }
    assert!(
        hostile["ws"]["replies"]
            .as_array()
            .is_some_and(|r| r.is_empty())
            && hostile["ws"]["closeCode"] == 1006,
        "the WebSocket is refused: {hostile}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("not in server.cors.allowed_origins") && text.contains("http://localhost"),
        "the refusal is logged with the origin: {text}"
    );

    let listed = run_page(&format!(
        "http://127.0.0.1:{page_port}/?gw={base}&token={KEY}&tag=listed"
    ))
    .await;
    for name in ["structured", "binary", "batch"] {
        assert_eq!(listed[name]["status"], 200, "{name}: {listed}");
        // An exposed header: the page's script can read it.
        assert!(listed[name]["requestId"].is_string(), "{name}: {listed}");
    }
    assert_eq!(listed["batch"]["reply"]["storedCount"], 2, "{listed}");
    let ws = &listed["ws"];
    assert_eq!(ws["protocol"], "eventgateway.v1", "{listed}");
    assert_eq!(ws["replies"][0]["outcome"], "OUTCOME_STORED", "{listed}");
    assert_eq!(ws["closeCode"], 1000, "{listed}");

    let records = broker.read_all(TOPIC, 5, Duration::from_secs(30));
    let mut ids: Vec<String> = records.iter().map(|r| r.headers["ce_id"].clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "listed-batch-1",
            "listed-batch-2",
            "listed-binary",
            "listed-structured",
            "listed-ws"
        ],
        "every listed-origin event stored once, no unlisted one"
    );
    for r in &records {
        assert_eq!(r.headers["ce_authid"], "web-frontend", "{r:?}");
        assert_eq!(r.headers["ce_source"], "browser-page");
    }
}
