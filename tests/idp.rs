//! Identity providers (#28): JWTs from a real OpenID provider that nobody here wrote (npm's
//! oidc-provider, `tests/js/oidc_provider.mjs`), found by OpenID Connect discovery. A token
//! fetched from its token endpoint with an ordinary HTTP client is accepted over REST and
//! gRPC; the provider rotates its key and a token signed with the new one is accepted without
//! a restart (the unknown `kid` asks for a refetch), the old one no longer; the provider goes
//! away and the last good keys stay in force with readiness up, a fetch failure counted, and
//! made-up `kid`s cannot make the gateway fetch more than once per `jwks_refresh_min`.
mod common;

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use event_gateway::proto::{CloudEvent, IngestEventRequest};
use tokio::io::AsyncBufReadExt as _;

const AUDIENCE: &str = "urn:event-gateway";

/// Starts the provider on `port` with one fresh key named `kid`; returns once it listens.
async fn start_provider(port: u16, kid: &str) -> tokio::process::Child {
    let mut child = tokio::process::Command::new("node")
        .args(["tests/js/oidc_provider.mjs", &port.to_string(), kid])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "ready" {
                return;
            }
        }
        panic!("the provider exited before it was ready");
    })
    .await
    .expect("the provider listens within 30 s");
    child
}

/// A client-credentials access token from the provider's token endpoint.
async fn token(port: u16) -> String {
    let reply: serde_json::Value = http()
        .post(format!("http://127.0.0.1:{port}/token"))
        .basic_auth("ingest-service", Some("ingest-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&resource={AUDIENCE}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {reply}"))
        .to_owned()
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

async fn post(gw: &TestGateway, token: &str, id: &str) -> u16 {
    http()
        .post(gw.url("/api/v1/events"))
        .bearer_auth(token)
        .json(&serde_json::json!({"id": id, "type": "t", "source": "s"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `auth_jwks_fetches_total{outcome}` now.
async fn fetches(gw: &TestGateway, outcome: &str) -> f64 {
    let text = gw.metrics().await;
    let prefix = format!("auth_jwks_fetches_total{{outcome=\"{outcome}\"");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_a_real_openid_provider_work_and_follow_its_key_rotation() {
    let Some(_) = require(Tool::OidcProvider) else {
        return;
    };
    let port = free_port();
    let provider = start_provider(port, "k1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.required = true;
    config.auth.jwt.discovery = true;
    config.auth.jwt.issuer = Some(format!("http://127.0.0.1:{port}"));
    config.auth.jwt.audience = Some(AUDIENCE.into());
    // Only an unknown `kid` makes it fetch again within this test (the provider sends no
    // max-age, so the periodic refresh would be an hour away).
    config.auth.jwt.jwks_refresh_min = Duration::from_secs(1);
    config.auth.jwt.jwks_refresh_max = Duration::from_secs(3600);
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;

    // REST and gRPC with the provider's token; the sender is the client it was issued to.
    let t1 = token(port).await;
    assert_eq!(kid_of(&t1), "k1");
    assert_eq!(post(&gw, &t1, "rest-1").await, 200);
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
        .insert("authorization", format!("Bearer {t1}").parse().unwrap());
    client.ingest_event(req).await.unwrap();
    let stored = gw.log_lines();
    assert_eq!(stored.len(), 2);
    for e in &stored {
        assert_eq!(e["authid"], "ingest-service", "{e}");
    }

    // The provider rotates: restarted with a new key only. Its new token is accepted without
    // restarting the gateway; the old key left the set, so the old token no longer is.
    let mut provider = provider;
    provider.kill().await.unwrap();
    let mut provider = start_provider(port, "k2").await;
    let t2 = token(port).await;
    assert_eq!(kid_of(&t2), "k2");
    wait_until(
        Duration::from_secs(15),
        "a token signed with the provider's new key is accepted",
        || async { post(&gw, &t2, "after-rotation").await == 200 },
    )
    .await;
    assert_eq!(post(&gw, &t1, "old-key").await, 401);

    // The provider goes away: tokens naming unknown keys ask for fetches, which fail; the
    // keys in force stay, and so does readiness. Fifty made-up `kid`s fetch at most once per
    // jwks_refresh_min (1 s here).
    provider.kill().await.unwrap();
    let before = fetches(&gw, "ok").await + fetches(&gw, "error").await;
    let started = std::time::Instant::now();
    let forged = |kid: usize| {
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.c2ln",
            b64(&format!(r#"{{"alg":"RS256","kid":"made-up-{kid}"}}"#)),
            b64(r#"{"sub":"x"}"#)
        )
    };
    for i in 0..50 {
        assert_eq!(post(&gw, &forged(i), "forged").await, 401);
    }
    wait_until(
        Duration::from_secs(15),
        "a failed fetch is counted",
        || async { fetches(&gw, "error").await >= 1.0 },
    )
    .await;
    let after = fetches(&gw, "ok").await + fetches(&gw, "error").await;
    let allowed = started.elapsed().as_secs_f64().ceil() + 1.0;
    assert!(
        after - before <= allowed,
        "{} fetches for 50 unknown kids in {:?}",
        after - before,
        started.elapsed()
    );
    let ready = http().get(gw.url("/health/ready")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "readiness stays up on the last good keys"
    );
    assert_eq!(post(&gw, &t2, "provider-down").await, 200);
}

/// A hostile provider: every kind of bad answer ends in a bounded refusal at start that names
/// the URL and what was wrong (slow: the 10 s bound; huge: 1 MiB, declared or streamed;
/// malformed; a set without a usable signing key; a redirect loop; a redirect to plain HTTP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_provider_gets_bounded_refusals_naming_what_was_wrong() {
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;
    let huge = || "x".repeat(2 * 1024 * 1024);
    let app = axum::Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(120)).await;
                "{}"
            }),
        )
        .route("/huge-declared", get(move || async move { huge() }))
        .route(
            "/huge-streamed",
            get(|| async {
                let chunks = futures::stream::iter(
                    (0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024])),
                );
                axum::body::Body::from_stream(chunks).into_response()
            }),
        )
        .route("/malformed", get(|| async { "<html>not keys</html>" }))
        .route(
            "/no-signing-key",
            get(|| async { r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"# }),
        )
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route(
            "/to-plain-http",
            get(|| async { Redirect::temporary("http://provider.example/jwks") }),
        )
        .route(
            "/two-hops",
            get(|| async { Redirect::temporary("/one-hop") }),
        )
        .route(
            "/one-hop",
            get(|| async { Redirect::temporary("/no-signing-key") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cases = [
        ("/slow", "timed out"),
        ("/huge-declared", "larger than 1048576 bytes"),
        ("/huge-streamed", "larger than 1048576 bytes"),
        ("/malformed", "not a JWK Set"),
        ("/no-signing-key", "no usable signing key"),
        ("/loop", "more than 3 redirects"),
        (
            "/to-plain-http",
            "plain HTTP is allowed only to a loopback address",
        ),
    ];
    let started = std::time::Instant::now();
    let outcomes = futures::future::join_all(cases.iter().map(|(path, _)| {
        let url = format!("{base}{path}");
        let path = *path;
        async move {
            let dir = tempfile::tempdir().unwrap();
            let mut config = test_config(dir.path());
            config.auth.jwt.jwks_url = Some(url);
            config.auth.jwt.issuer = Some("https://idp.example".into());
            config.auth.jwt.audience = Some(AUDIENCE.into());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let serving = event_gateway::serve(config, listener, std::future::pending());
            tokio::time::timeout(Duration::from_secs(30), serving)
                .await
                .unwrap_or_else(|_| panic!("{path}: still starting after 30 s"))
                .expect_err("the gateway does not start without the provider's keys")
        }
    }))
    .await;
    for ((path, want), e) in cases.iter().zip(outcomes) {
        let text = format!("{e}");
        assert!(
            text.contains(path) && text.to_lowercase().contains(&want.to_lowercase()),
            "{path}: {text}"
        );
        assert!(
            !e.is_configuration(),
            "a provider's fault is not the configuration's"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
}
