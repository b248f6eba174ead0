//! Authentication and authorization over real sockets, both protocols: missing, valid,
//! revoked and unknown API keys; JWTs (ES256 and EdDSA keys made here with rcgen) valid,
//! expired, for another audience or issuer, or badly signed; grants by type and source
//! (403 / PERMISSION_DENIED naming the field and the principal, all-or-nothing in batches,
//! the same in Validate and on streams); buckets per principal; trusted proxies; provenance
//! (`authtype`/`authid`) replacing what the client sent; no secret in errors or metrics.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use event_gateway::proto::{CloudEvent, IngestEventRequest};
use futures::FutureExt as _;
use sha2::Digest as _;
use tonic::Code;

const KEY_A: &str = "ka_3f9d2c7e1b8a4f6d";
const KEY_B: &str = "kb_9a1e7c3d5b2f8e4a";
const KEY_BILLING: &str = "kbill_1c2d3e4f5a6b7c8d";

fn sha256_hex(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// Writes the API keys file: team-a and team-b (no limits), billing (billing.* types from
/// https://billing.example/* sources only).
fn write_keys(path: &Path, keys: &[&str]) {
    let mut yaml = String::new();
    for k in keys {
        let (id, extra) = match *k {
            KEY_A => ("team-a", ""),
            KEY_B => (
                "team-b",
                "  rate_limit: {requests_per_second: 1, burst_size: 4}\n",
            ),
            KEY_BILLING => (
                "billing",
                "  allowed_types: [\"billing.*\"]\n  allowed_sources: [\"https://billing.example/*\"]\n",
            ),
            _ => unreachable!("a test key"),
        };
        yaml.push_str(&format!("- id: {id}\n  sha256: {}\n{extra}", sha256_hex(k)));
    }
    if yaml.is_empty() {
        yaml.push_str("[]\n");
    }
    std::fs::write(path, yaml).unwrap();
}

struct Secured {
    gw: TestGateway,
    keys: PathBuf,
    _dir: tempfile::TempDir,
}

async fn secured(edit: impl FnOnce(&mut event_gateway::Config, &Path)) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    write_keys(&keys, &[KEY_A, KEY_B, KEY_BILLING]);
    let mut config = test_config(dir.path());
    config.auth.required = true;
    config.auth.api_keys_file = Some(keys.clone());
    edit(&mut config, dir.path());
    Secured {
        gw: TestGateway::start(config).await,
        keys,
        _dir: dir,
    }
}

async fn post_with(
    gw: &TestGateway,
    path: &str,
    auth: Option<(&str, &str)>,
    body: &str,
) -> reqwest::Response {
    let mut r = http()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some((name, value)) = auth {
        r = r.header(name, value);
    }
    r.send().await.unwrap()
}

/// The HTTP status of one event posted to `/api/v1/events` with the API key `key`.
async fn event_status(gw: &TestGateway, key: &str, body: &str) -> u16 {
    post_with(gw, "/api/v1/events", Some(("x-api-key", key)), body)
        .await
        .status()
        .as_u16()
}

async fn grpc_ingest(
    gw: &TestGateway,
    auth: Option<(&'static str, &str)>,
    body: &str,
) -> Result<(), tonic::Status> {
    let ev: CloudEvent = serde_json::from_str(body).unwrap();
    let mut req = tonic::Request::new(IngestEventRequest {
        event: Some(ev),
        ..Default::default()
    });
    if let Some((name, value)) = auth {
        req.metadata_mut().insert(name, value.parse().unwrap());
    }
    gw.grpc().await.ingest_event(req).await.map(|_| ())
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_is_401_or_unauthenticated_and_health_stays_open() {
    let s = secured(|_, _| {}).await;
    let r = post_with(&s.gw, "/api/v1/events", None, SEED_EVENT).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"event-gateway\""
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], 16, "UNAUTHENTICATED");
    assert!(
        body["message"].as_str().unwrap().contains("x-api-key"),
        "{body}"
    );
    let err = grpc_ingest(&s.gw, None, SEED_EVENT).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Every ingest route, streams included, is behind it; health and docs are not.
    for path in ["/api/v1/events/batch", "/api/v1/events/validate"] {
        assert_eq!(
            post_with(&s.gw, path, None, "{}").await.status(),
            401,
            "{path}"
        );
    }
    let ws = http()
        .get(s.gw.url("/api/v1/events/ws"))
        .send()
        .await
        .unwrap();
    assert_eq!(ws.status(), 401);
    let types = http().get(s.gw.url("/api/v1/types")).send().await.unwrap();
    assert_eq!(types.status(), 401, "ListEventTypes");
    let mut grpc = s.gw.grpc().await;
    let err = grpc
        .list_event_types(event_gateway::proto::ListEventTypesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "gRPC ListEventTypes");
    let err = grpc
        .ingest_stream(tokio_stream::iter(Vec::<
            event_gateway::proto::IngestStreamRequest,
        >::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "IngestStream");
    // Every method of an ingest route is behind it, one the route does not take too (its 405
    // comes after authentication).
    let wrong = http().get(s.gw.url("/api/v1/events")).send().await.unwrap();
    assert_eq!(wrong.status(), 401, "a wrong method, without credentials");
    s.gw.wait_ready().await;
    assert_eq!(
        http()
            .get(s.gw.url("/api/docs"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(s.gw.log_lines().is_empty());
    let m = s.gw.metrics().await;
    assert_eq!(
        metric(&m, "auth_failures_total", "reason=\"missing\""),
        9.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_stores_with_provenance_and_a_revoked_key_is_refused_within_5_s() {
    let s = secured(|_, _| {}).await;
    // The client tries to claim someone else's identity: the gateway's stamp replaces it.
    let forged = r#"{"type":"user.created","source":"s","authtype":"system","authid":"root"}"#;
    let r = post_with(&s.gw, "/api/v1/events", Some(("authorization", &format!("Bearer {KEY_A}"))), r#"{"type":"user.created","source":"s","extensions":{"authid":"root","authtype":"system"}}"#).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = http()
        .post(s.gw.url("/api/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .header("x-api-key", KEY_A)
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    grpc_ingest(&s.gw, Some(("x-api-key", KEY_B)), SEED_EVENT)
        .await
        .unwrap();
    grpc_ingest(
        &s.gw,
        Some(("authorization", &format!("Bearer {KEY_B}"))),
        SEED_EVENT,
    )
    .await
    .unwrap();
    let lines = s.gw.log_lines();
    let who: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l["authtype"].as_str().unwrap(),
                l["authid"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("api_key", "team-a"),
            ("api_key", "team-a"),
            ("api_key", "team-b"),
            ("api_key", "team-b")
        ]
    );

    // Revoke team-a by rewriting the file: refused within 5 s, team-b unaffected.
    write_keys(&s.keys, &[KEY_B, KEY_BILLING]);
    let gw = &s.gw;
    wait_until(
        Duration::from_secs(5),
        "the revoked key refused",
        || async move { event_status(gw, KEY_A, SEED_EVENT).await == 401 },
    )
    .await;
    let err = grpc_ingest(gw, Some(("x-api-key", KEY_A)), SEED_EVENT)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(!err.message().contains(KEY_A), "the secret leaked: {err:?}");
    assert_eq!(event_status(gw, KEY_B, SEED_EVENT).await, 200);
    // A broken file keeps the keys in force.
    std::fs::write(&s.keys, "- id: [not, a, string\n").unwrap();
    wait_until(
        Duration::from_secs(5),
        "the broken reload counted",
        || async move { metric(&gw.metrics().await, "auth_reload_failures_total", "") >= 1.0 },
    )
    .await;
    assert_eq!(event_status(gw, KEY_B, SEED_EVENT).await, 200);
    let m = gw.metrics().await;
    assert!(
        !m.contains(KEY_A) && !m.contains(KEY_B),
        "a secret in the metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_or_source_the_principal_may_not_send_is_403_everywhere() {
    let s = secured(|_, _| {}).await;
    let bill = Some(("x-api-key", KEY_BILLING));
    let ok = r#"{"type":"billing.invoiced","source":"https://billing.example/eu"}"#;
    let wrong_type = r#"{"type":"orders.placed","source":"https://billing.example/eu"}"#;
    let wrong_source = r#"{"type":"billing.invoiced","source":"https://shop.example/"}"#;
    assert_eq!(
        post_with(&s.gw, "/api/v1/events", bill, ok).await.status(),
        200
    );

    let r = post_with(&s.gw, "/api/v1/events", bill, wrong_type).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], 7, "PERMISSION_DENIED");
    let v = &body["details"][0]["fieldViolations"][0];
    assert_eq!(v["field"], "event.type");
    let d = v["description"].as_str().unwrap();
    assert!(
        d.contains("`billing`") && d.contains("orders.placed") && d.contains("billing.*"),
        "{d}"
    );
    assert!(!body.to_string().contains(KEY_BILLING));

    let r = post_with(&s.gw, "/api/v1/events", bill, wrong_source).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["details"][0]["fieldViolations"][0]["field"],
        "event.source"
    );

    let err = grpc_ingest(&s.gw, bill, wrong_type).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("event.type"), "{err:?}");

    // Validate says the same; a batch with one refused event stores none of them.
    assert_eq!(
        post_with(&s.gw, "/api/v1/events/validate", bill, wrong_type)
            .await
            .status(),
        403
    );
    let batch = format!(r#"{{"events":[{ok},{wrong_type}]}}"#);
    let r = post_with(&s.gw, "/api/v1/events/batch", bill, &batch).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["details"][0]["fieldViolations"][0]["field"],
        "events[1].type"
    );
    // Other keys have no such grant.
    assert_eq!(event_status(&s.gw, KEY_A, wrong_type).await, 200);
    let lines = s.gw.log_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");

    // On a stream the refused event fails alone.
    use event_gateway::proto::{IngestStreamRequest, Outcome};
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("x-api-key", KEY_BILLING.parse().unwrap());
    let mut results =
        s.gw.grpc()
            .await
            .ingest_stream(req)
            .await
            .unwrap()
            .into_inner();
    let events = [ok, wrong_type].map(|e| serde_json::from_str::<CloudEvent>(e).unwrap());
    tx.send(IngestStreamRequest {
        sequence: Some(0),
        events: events.to_vec(),
    })
    .await
    .unwrap();
    drop(tx);
    let mut got = Vec::new();
    while let Some(r) = results.message().await.unwrap() {
        got.push(r);
    }
    got.sort_by_key(|r| r.sequence);
    assert_eq!(got[0].outcome, Outcome::Stored as i32);
    assert_eq!(got[1].error.as_ref().unwrap().code, "PERMISSION_DENIED");
    assert_eq!(s.gw.log_lines()[2]["authid"], "billing");
    let m = s.gw.metrics().await;
    assert_eq!(
        metric(&m, "auth_failures_total", "reason=\"forbidden_type\""),
        5.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "auth_failures_total", "reason=\"forbidden_source\""),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_have_their_own_buckets_and_unknown_keys_get_401_never_a_bucket() {
    let s = secured(|c, _| {
        c.rate_limit.enabled = true;
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst_size = 2;
    })
    .await;
    let a = Some(("x-api-key", KEY_A));
    let b = Some(("x-api-key", KEY_B));
    let statuses = |auth| {
        let gw = &s.gw;
        async move {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(
                    post_with(gw, "/api/v1/events", auth, SEED_EVENT)
                        .await
                        .status()
                        .as_u16(),
                );
            }
            v
        }
    };
    assert_eq!(statuses(a).await, [200, 200, 429]);
    // team-b's bucket is its own, and of its own size (its key's rate_limit: burst 4).
    let mut b_statuses = statuses(b).await;
    b_statuses.extend(statuses(b).await);
    assert_eq!(b_statuses, [200, 200, 200, 200, 429, 429]);
    // Rotating made-up keys: each is refused as unknown, none is served from a fresh bucket.
    for i in 0..20 {
        let r = post_with(
            &s.gw,
            "/api/v1/events",
            Some(("x-api-key", &format!("made-up-{i}"))),
            SEED_EVENT,
        )
        .await;
        assert_eq!(r.status(), 401);
    }
    assert_eq!(s.gw.log_lines().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let limited = |trusted: Vec<String>| {
        let mut c = test_config(dir.path());
        c.rate_limit.enabled = true;
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst_size = 1;
        c.server.trusted_proxies = trusted;
        c
    };
    let send = |gw: &TestGateway, xff: &'static str| {
        let url = gw.url("/api/v1/events");
        async move {
            http()
                .post(url)
                .header("content-type", "application/json")
                .header("x-forwarded-for", xff)
                .body(SEED_EVENT)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Untrusted peer: the header is ignored, both share the peer's bucket of one.
    let gw = TestGateway::start(limited(vec![])).await;
    assert_eq!(send(&gw, "192.0.2.1").await, 200);
    assert_eq!(send(&gw, "192.0.2.2").await, 429);
    // Loopback trusted: each forwarded client has its own bucket; a spoofed entry the
    // client put in front of the proxy's does not count (the rightmost untrusted does).
    let gw = TestGateway::start(limited(vec!["127.0.0.0/8".into()])).await;
    assert_eq!(send(&gw, "192.0.2.1").await, 200);
    assert_eq!(send(&gw, "192.0.2.2").await, 200);
    assert_eq!(send(&gw, "198.51.100.7, 192.0.2.1").await, 429);
}

// --- JWT -------------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its JWK: ES256 (P-256) or EdDSA (Ed25519), made with rcgen.
struct Signer {
    key: jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
    kid: &'static str,
    jwk: serde_json::Value,
}

fn signer(alg: jsonwebtoken::Algorithm, kid: &'static str) -> Signer {
    let (pair, jwk) = match alg {
        jsonwebtoken::Algorithm::ES256 => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let raw = pair.public_key_raw().to_vec();
            let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]),
                "y": b64(&raw[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
            (pair, jwk)
        }
        _ => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
                "x": b64(pair.public_key_raw()), "kid": kid, "alg": "EdDSA", "use": "sig"});
            (pair, jwk)
        }
    };
    // PKCS#8 DER, which jsonwebtoken reads without its PEM feature.
    let der = pair.serialize_der();
    let key = match alg {
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_der(&der),
        _ => jsonwebtoken::EncodingKey::from_ed_der(&der),
    };
    Signer { key, alg, kid, jwk }
}

impl Signer {
    fn token(&self, claims: serde_json::Value) -> String {
        let mut h = jsonwebtoken::Header::new(self.alg);
        h.kid = Some(self.kid.into());
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }

    /// A token whose header names no key: verified against a JWKS of exactly one key.
    fn token_without_kid(&self, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.alg), &claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_tokens_are_verified_for_signature_time_issuer_and_audience() {
    let es = signer(jsonwebtoken::Algorithm::ES256, "es-1");
    let ed = signer(jsonwebtoken::Algorithm::EdDSA, "ed-1");
    let stranger = signer(jsonwebtoken::Algorithm::ES256, "es-1");
    let jwks = serde_json::json!({"keys": [es.jwk, ed.jwk]});
    let s = secured(|c, dir| {
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        c.auth.jwt.jwks_file = Some(path);
        c.auth.jwt.issuer = Some("https://idp.example".into());
        c.auth.jwt.audience = Some("event-gateway".into());
        c.auth.jwt.leeway = Duration::from_secs(5);
        c.auth.jwt.types_claim = Some("event_types".into());
    })
    .await;
    let claims = |sub: &str, exp: i64, iss: &str, aud: &str| {
        serde_json::json!({"sub": sub, "exp": exp, "iss": iss, "aud": aud,
            "event_types": ["user.*"]})
    };
    let good = claims(
        "svc-orders",
        now() + 300,
        "https://idp.example",
        "event-gateway",
    );
    let bearer = |t: &str| format!("Bearer {t}");
    for (name, token, want) in [
        ("ES256", es.token(good.clone()), 200),
        ("EdDSA", ed.token(good.clone()), 200),
        (
            "expired",
            es.token(claims(
                "svc",
                now() - 60,
                "https://idp.example",
                "event-gateway",
            )),
            401,
        ),
        (
            "wrong audience",
            es.token(claims("svc", now() + 300, "https://idp.example", "other")),
            401,
        ),
        (
            "wrong issuer",
            es.token(claims(
                "svc",
                now() + 300,
                "https://evil.example",
                "event-gateway",
            )),
            401,
        ),
        ("bad signature", stranger.token(good.clone()), 401),
    ] {
        let r = post_with(
            &s.gw,
            "/api/v1/events",
            Some(("authorization", &bearer(&token))),
            SEED_EVENT,
        )
        .await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{name}: {text}");
        assert!(!text.contains(&token), "{name}: the token echoed back");
    }
    // The same over gRPC metadata.
    let token = ed.token(good.clone());
    grpc_ingest(&s.gw, Some(("authorization", &bearer(&token))), SEED_EVENT)
        .await
        .unwrap();
    let expired = es.token(claims(
        "svc",
        now() - 60,
        "https://idp.example",
        "event-gateway",
    ));
    let err = grpc_ingest(
        &s.gw,
        Some(("authorization", &bearer(&expired))),
        SEED_EVENT,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{err:?}");
    // The types claim grants user.* only.
    let token = es.token(good);
    let r = post_with(
        &s.gw,
        "/api/v1/events",
        Some(("authorization", &bearer(&token))),
        r#"{"type":"orders.placed","source":"s"}"#,
    )
    .await;
    assert_eq!(r.status(), 403);
    let lines = s.gw.log_lines();
    assert_eq!(lines.len(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l["authtype"] == "service_account" && l["authid"] == "svc-orders")
    );
    let m = s.gw.metrics().await;
    assert_eq!(
        metric(&m, "auth_failures_total", "reason=\"expired\""),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "auth_failures_total", "reason=\"invalid\""),
        3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_put_behind_authentication() {
    let s = secured(|c, _| c.auth.protect_metrics = true).await;
    let r = http().get(s.gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(s.gw.url("/metrics"))
        .header("x-api-key", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("auth_failures_total"));
    assert_eq!(
        http()
            .get(s.gw.url("/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_authentication_serves_anonymous_clients_but_refuses_bad_keys() {
    let s = secured(|c, _| c.auth.required = false).await;
    assert_eq!(
        post_with(&s.gw, "/api/v1/events", None, SEED_EVENT)
            .await
            .status(),
        200
    );
    assert_eq!(
        post_with(
            &s.gw,
            "/api/v1/events",
            Some(("x-api-key", "wrong")),
            SEED_EVENT
        )
        .await
        .status(),
        401
    );
    assert_eq!(event_status(&s.gw, KEY_A, SEED_EVENT).await, 200);
    let lines = s.gw.log_lines();
    assert_eq!(lines[0]["authtype"], "unauthenticated");
    assert!(lines[0].get("authid").is_none());
    assert_eq!(lines[1]["authid"], "team-a");
}

/// A verified token is remembered (its signature is not checked again on every request),
/// but never past its `exp`, and not once its key left the JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_tokens_still_expire_and_still_follow_the_jwks() {
    let es = signer(jsonwebtoken::Algorithm::ES256, "es-1");
    let other = signer(jsonwebtoken::Algorithm::ES256, "es-2");
    let jwks_path = std::sync::Arc::new(std::sync::Mutex::new(None));
    let jwks = serde_json::json!({"keys": [es.jwk]});
    let s = secured(|c, dir| {
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        *jwks_path.lock().unwrap() = Some(path.clone());
        c.auth.jwt.jwks_file = Some(path);
        c.auth.jwt.issuer = Some("https://idp.example".into());
        c.auth.jwt.audience = Some("event-gateway".into());
        c.auth.jwt.leeway = Duration::ZERO;
    })
    .await;
    let token = |exp: i64| {
        es.token(serde_json::json!({"sub": "svc", "exp": exp,
            "iss": "https://idp.example", "aud": "event-gateway"}))
    };
    let send = |t: String| {
        let gw = &s.gw;
        async move {
            post_with(
                gw,
                "/api/v1/events",
                Some(("authorization", &format!("Bearer {t}"))),
                SEED_EVENT,
            )
            .await
            .status()
            .as_u16()
        }
    };
    // Valid for two more seconds: accepted (and remembered), then refused once expired.
    let short = token(now() + 2);
    assert_eq!(send(short.clone()).await, 200);
    assert_eq!(send(short.clone()).await, 200);
    wait_until(
        Duration::from_secs(10),
        "the remembered token to expire",
        || send(short.clone()).map(|s| s == 401),
    )
    .await;
    // A long-lived token stops working once its key is gone from the JWKS.
    let long = token(now() + 600);
    assert_eq!(send(long.clone()).await, 200);
    let path = jwks_path.lock().unwrap().clone().unwrap();
    std::fs::write(&path, serde_json::json!({"keys": [other.jwk]}).to_string()).unwrap();
    wait_until(
        Duration::from_secs(5),
        "the removed key to stop working",
        || send(long.clone()).map(|s| s == 401),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_details_are_for_local_or_authenticated_callers_only() {
    let s = secured(|c, _| {
        c.kafka
            .librdkafka
            .insert("client.id".into(), "gw-secret-host".into());
    })
    .await;
    let get = |headers: &[(&str, &str)]| {
        let mut r = http().get(s.gw.url("/health/detailed"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    // A caller on loopback sees everything.
    let full = get(&[]).await;
    assert!(
        full["config"].is_object() && full["sink"].is_object(),
        "{full}"
    );
    // Relayed by a proxy on this host, anonymous: status lines only.
    for relayed in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
    ] {
        let brief = get(&[relayed]).await;
        assert_eq!(brief["ready"], full["ready"]);
        for hidden in ["config", "sink", "reason", "spool", "rate_limit", "version"] {
            assert!(
                brief.get(hidden).is_none(),
                "{hidden} shown to {relayed:?}: {brief}"
            );
        }
        assert!(!brief.to_string().contains("gw-secret-host"), "{brief}");
        // Bad credentials change nothing.
        let bad = get(&[relayed, ("x-api-key", "not-a-key")]).await;
        assert!(bad.get("config").is_none(), "{bad}");
        // Valid credentials see everything again.
        let authed = get(&[relayed, ("x-api-key", KEY_A)]).await;
        assert!(authed["config"].is_object(), "{authed}");
    }
}

// --- The edge: forwarded lines, open streams, /metrics, health details ------------------

/// Twelve requests through a trusted proxy that adds its own `X-Forwarded-For` line (as
/// HAProxy's `option forwardfor` does) after the client's forged, rotating one: all twelve
/// are the same client and share its bucket of five. An entry that does not parse ends the
/// walk at the proxy, so a client cannot hide behind garbage either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forwarded_line_does_not_choose_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.rate_limit.enabled = true;
    c.rate_limit.requests_per_second = 5;
    c.rate_limit.burst_size = 5;
    c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    let gw = TestGateway::start(c).await;
    let send = |lines: Vec<String>| {
        let mut r = http()
            .post(gw.url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(SEED_EVENT);
        for l in lines {
            r = r.header("x-forwarded-for", l);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    for (what, lines) in [
        (
            "a forged line before the proxy's",
            (0..12)
                .map(|i| vec![format!("198.51.100.{i}"), "203.0.113.7".into()])
                .collect::<Vec<_>>(),
        ),
        (
            "an unreadable entry after a forged one",
            (0..12)
                .map(|i| vec![format!("198.51.100.{i}, 203.0.113.8:5555")])
                .collect(),
        ),
    ] {
        let started = std::time::Instant::now();
        let mut ok = 0;
        for l in lines {
            ok += u32::from(send(l).await == 200);
        }
        // A bucket of five refilled at 5/s: what the time taken lets through, plus one.
        let most = 5 + (started.elapsed().as_secs_f64() * 5.0).ceil() as u32 + 1;
        assert!(ok <= most.min(11), "{what}: {ok} of 12 let through");
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket and a gRPC stream, opened with `credential` (an API key, or `Bearer <token>`).
async fn streams_with_key(
    gw: &TestGateway,
    key: &str,
) -> (
    Ws,
    tokio::sync::mpsc::Sender<event_gateway::proto::IngestStreamRequest>,
    tonic::Streaming<event_gateway::proto::IngestStreamResponse>,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = format!("ws://{}/api/v1/events/ws", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert(credential_header(key), key.parse().unwrap());
    let ws = tokio_tungstenite::connect_async(req).await.unwrap().0;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert(credential_header(key), key.parse().unwrap());
    let results = gw
        .grpc()
        .await
        .ingest_stream(req)
        .await
        .unwrap()
        .into_inner();
    (ws, tx, results)
}

/// `authorization` for a `Bearer …` credential, else `x-api-key`.
fn credential_header(credential: &str) -> &'static str {
    if credential.starts_with("Bearer ") {
        "authorization"
    } else {
        "x-api-key"
    }
}

/// What became of an open stream fed one event every 200 ms until it ends: the events it
/// reported stored, and how it ended (the WebSocket's close code and reason, the gRPC final
/// status), with the time from `since`.
struct StreamEnd {
    stored: usize,
    how: String,
    after: Duration,
}

async fn feed_ws_until_closed(mut ws: Ws, since: std::time::Instant) -> StreamEnd {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let mut stored = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Once the gateway has closed, sending fails; the close frame is still read.
                let _ = ws.send(Message::Text(WS_EVENT.into())).await;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    stored += usize::from(v["outcome"] == "OUTCOME_STORED");
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    return StreamEnd { stored, how: format!("{} {}", u16::from(f.code), f.reason), after: since.elapsed() };
                }
                Some(Ok(_)) => {}
                other => panic!("the WebSocket ended without a close frame: {other:?}"),
            },
            () = tokio::time::sleep_until(deadline) => panic!("still open after 20 s"),
        }
    }
}

async fn feed_grpc_until_closed(
    tx: tokio::sync::mpsc::Sender<event_gateway::proto::IngestStreamRequest>,
    mut results: tonic::Streaming<event_gateway::proto::IngestStreamResponse>,
    since: std::time::Instant,
) -> StreamEnd {
    use event_gateway::proto::{IngestStreamRequest, Outcome};
    let event: CloudEvent = serde_json::from_str(WS_EVENT).unwrap();
    let mut stored = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = tx.try_send(IngestStreamRequest { sequence: None, events: vec![event.clone()] });
            }
            r = results.message() => match r {
                Ok(Some(r)) => stored += usize::from(r.outcome == Outcome::Stored as i32),
                Ok(None) => panic!("the stream ended OK"),
                Err(status) => {
                    return StreamEnd { stored, how: format!("{:?} {}", status.code(), status.message()), after: since.elapsed() };
                }
            },
            () = tokio::time::sleep_until(deadline) => panic!("still open after 20 s"),
        }
    }
}

const WS_EVENT: &str = r#"{"specversion":"1.0","id":"s1","type":"user.created","source":"stream-test","data":{"user_id":"1"}}"#;

/// An API key removed from the keys file ends the streams opened with it within 5 s (the
/// WebSocket with close 1008, gRPC with UNAUTHENTICATED), and nothing it sends after that
/// is stored: every stored event is one the stream reported stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_end_within_5_s_of_their_key_being_revoked() {
    let s = secured(|_, _| {}).await;
    let (ws, tx, results) = streams_with_key(&s.gw, KEY_A).await;
    let (ws_b, tx_b, results_b) = streams_with_key(&s.gw, KEY_B).await;
    // Both stream for a while, then team-a's key is revoked.
    let start = std::time::Instant::now();
    let ws_end = tokio::spawn(feed_ws_until_closed(ws, start));
    let grpc_end = tokio::spawn(feed_grpc_until_closed(tx, results, start));
    wait_until(Duration::from_secs(10), "events stored on both", || async {
        s.gw.log_lines().len() >= 4
    })
    .await;
    write_keys(&s.keys, &[KEY_B, KEY_BILLING]);
    let revoked = std::time::Instant::now();
    let (ws_end, grpc_end) = (ws_end.await.unwrap(), grpc_end.await.unwrap());
    for (what, end, want) in [
        (
            "WebSocket",
            &ws_end,
            "1008 unauthenticated: the API key was revoked",
        ),
        (
            "gRPC",
            &grpc_end,
            "Unauthenticated unauthenticated: the API key was revoked",
        ),
    ] {
        assert_eq!(end.how, want, "{what}");
        assert!(
            end.after < revoked - start + Duration::from_secs(5),
            "{what} ended {:?} after the revocation",
            end.after - (revoked - start)
        );
        assert!(end.stored >= 1, "{what}");
    }
    // Nothing was stored that was not reported: the stream took nothing after it ended.
    let stored = s.gw.log_lines().len();
    assert_eq!(stored, ws_end.stored + grpc_end.stored);
    // team-b's streams are untouched.
    let b = tokio::spawn(feed_ws_until_closed(ws_b, start));
    drop((tx_b, results_b));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!b.is_finished(), "team-b's WebSocket was closed");
    b.abort();
}

/// A token that expires while its stream is open ends the stream (leeway 0 here), so does one
/// whose signing key leaves the JWKS, and `performance.max_stream_lifetime` ends any stream, credentials or not, asking the client to
/// reconnect (1001 / UNAVAILABLE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_their_token_expires_or_their_lifetime_is_up() {
    let es = signer(jsonwebtoken::Algorithm::ES256, "es-1");
    let jwks = serde_json::json!({"keys": [es.jwk]});
    let s = secured(|c, dir| {
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        c.auth.jwt.jwks_file = Some(path);
        c.auth.jwt.issuer = Some("https://idp.example".into());
        c.auth.jwt.audience = Some("event-gateway".into());
        c.auth.jwt.leeway = Duration::ZERO;
        c.performance.max_stream_lifetime = Duration::from_secs(6);
    })
    .await;
    let exp = now() + 3;
    let token = es.token(serde_json::json!({"sub": "svc", "exp": exp,
        "iss": "https://idp.example", "aud": "event-gateway"}));
    let start = std::time::Instant::now();
    let (ws, tx, results) = streams_with_key(&s.gw, &format!("Bearer {token}")).await;
    let ws_end = tokio::spawn(feed_ws_until_closed(ws, start));
    let grpc_end = tokio::spawn(feed_grpc_until_closed(tx, results, start));
    let (ws_end, grpc_end) = (ws_end.await.unwrap(), grpc_end.await.unwrap());
    assert_eq!(ws_end.how, "1008 unauthenticated: token expired");
    assert_eq!(
        grpc_end.how,
        "Unauthenticated unauthenticated: token expired"
    );
    for end in [&ws_end, &grpc_end] {
        assert!(end.stored >= 1);
        assert!(end.after < Duration::from_secs(6), "{:?}", end.after);
    }
    // The key that signed a token leaves the JWKS: its streams end though the token is valid,
    // also when the token names no key (it was verified against the JWKS's only key).
    let token = es.token_without_kid(serde_json::json!({"sub": "svc", "exp": now() + 3600,
        "iss": "https://idp.example", "aud": "event-gateway"}));
    let before = s.gw.log_lines().len();
    let start = std::time::Instant::now();
    let (ws, tx, results) = streams_with_key(&s.gw, &format!("Bearer {token}")).await;
    let ws_end = tokio::spawn(feed_ws_until_closed(ws, start));
    let grpc_end = tokio::spawn(feed_grpc_until_closed(tx, results, start));
    wait_until(Duration::from_secs(5), "events stored on both", || async {
        s.gw.log_lines().len() >= before + 2
    })
    .await;
    let other = signer(jsonwebtoken::Algorithm::EdDSA, "ed-1");
    let jwks_file = s.keys.with_file_name("jwks.json");
    let tmp = s.keys.with_file_name("jwks.json.tmp");
    std::fs::write(&tmp, serde_json::json!({"keys": [other.jwk]}).to_string()).unwrap();
    std::fs::rename(&tmp, &jwks_file).unwrap();
    let withdrawn = start.elapsed();
    let (ws_end, grpc_end) = (ws_end.await.unwrap(), grpc_end.await.unwrap());
    let why = "unauthenticated: the token's signing key was withdrawn from the key set (auth.jwt)";
    assert_eq!(ws_end.how, format!("1008 {why}"));
    assert_eq!(grpc_end.how, format!("Unauthenticated {why}"));
    for end in [&ws_end, &grpc_end] {
        assert!(end.stored >= 1);
        assert!(
            end.after < withdrawn + Duration::from_secs(5),
            "{:?}",
            end.after - withdrawn
        );
    }
    // The lifetime: a key that stays valid, streams that end anyway.
    let (ws, tx, results) = streams_with_key(&s.gw, KEY_A).await;
    let start = std::time::Instant::now();
    let ws_end = tokio::spawn(feed_ws_until_closed(ws, start));
    let grpc_end = tokio::spawn(feed_grpc_until_closed(tx, results, start));
    let (ws_end, grpc_end) = (ws_end.await.unwrap(), grpc_end.await.unwrap());
    assert!(ws_end.how.starts_with("1001 "), "{}", ws_end.how);
    assert!(grpc_end.how.starts_with("Unavailable "), "{}", grpc_end.how);
    for end in [&ws_end, &grpc_end] {
        assert!(
            end.how.contains("performance.max_stream_lifetime (6s)"),
            "{}",
            end.how
        );
        assert!(
            end.after >= Duration::from_secs(5) && end.after < Duration::from_secs(9),
            "{:?}",
            end.after
        );
        assert!(end.stored >= 10, "{}", end.stored);
    }
}

/// `auth.protect_metrics` refuses an anonymous scrape even where anonymous events are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_metrics_refuse_anonymous_scrapes_even_when_auth_is_optional() {
    let s = secured(|c, _| {
        c.auth.required = false;
        c.auth.protect_metrics = true;
    })
    .await;
    assert_eq!(
        post_with(&s.gw, "/api/v1/events", None, SEED_EVENT)
            .await
            .status(),
        200
    );
    let r = http().get(s.gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("auth.protect_metrics"));
    let r = http()
        .get(s.gw.url("/metrics"))
        .header("x-api-key", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Who sees `/health/detailed` in full is `auth.health_details_from` (through trusted
/// proxies, the forwarded client), or a credential checked behind the rate limit. With a
/// proxy trusted, loopback is not listed by default: a local sidecar is not the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_details_follow_the_listed_addresses_and_credentials_pay_the_rate_limit() {
    let full = |v: &serde_json::Value| v.get("config").is_some();
    let get = |gw: &TestGateway, headers: &[(&str, &str)]| {
        let mut r = http().get(gw.url("/health/detailed"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // A local proxy trusted, nothing listed: neither it nor whom it forwards sees details.
    let s = secured(|c, _| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.rate_limit.enabled = true;
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst_size = 3;
    })
    .await;
    let (status, body) = get(&s.gw, &[]).await;
    assert!(status == 200 && !full(&body), "{body}");
    let (_, body) = get(&s.gw, &[("x-forwarded-for", "203.0.113.9")]).await;
    assert!(!full(&body), "{body}");
    // A credential shows them; each check takes a token of the caller's bucket, so bad
    // ones run out: the fourth try is 429, not a fourth signature check.
    let (_, body) = get(&s.gw, &[("x-api-key", KEY_A)]).await;
    assert!(full(&body), "{body}");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&s.gw, &[("x-api-key", "not-a-key")]).await.0);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // Listed: the forwarded client counts, the proxy does not.
    let s = secured(|c, _| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.auth.health_details_from = Some(vec!["203.0.113.0/24".into()]);
    })
    .await;
    let (_, body) = get(&s.gw, &[("x-forwarded-for", "203.0.113.9")]).await;
    assert!(full(&body), "{body}");
    let (_, body) = get(&s.gw, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert!(!full(&body), "{body}");
    let (_, body) = get(&s.gw, &[]).await;
    assert!(!full(&body), "{body}");
}
