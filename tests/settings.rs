//! Every documented switch works: each configuration key set on the real binary through its
//! `GATEWAY_*` variable (or the file, for the two that take a map or a list of entries) to a
//! representative value that is not its default, text that looks like a number included; the
//! binary must start and `/health/detailed` show the value taken, and where the docs promise an
//! effect no other test covers, the effect is checked here. The matrix must name every key of
//! the configuration (`event_gateway::config::keys`), so a new key cannot skip it. Also: the
//! four other switches of #30 (readiness of a full log, a batch body's `"ack": "spooled"`,
//! `event-gateway check`), each over the wire.
mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// One key: its value (`{dir}` is the row's directory, `{port}` its port), other settings it
/// needs, and the effective value `/health/detailed` must show (JSON; `None`: the value as a
/// JSON string).
struct Row {
    key: &'static str,
    value: &'static str,
    with: &'static [(&'static str, &'static str)],
    shows: Option<&'static str>,
}

const fn row(key: &'static str, value: &'static str, shows: &'static str) -> Row {
    Row {
        key,
        value,
        with: &[],
        shows: Some(shows),
    }
}

const fn text(key: &'static str, value: &'static str) -> Row {
    Row {
        key,
        value,
        with: &[],
        shows: None,
    }
}

const CORS_ORIGIN: &[(&str, &str)] = &[("server.cors.allowed_origins", "https://app.example.com")];
const SASL: &[(&str, &str)] = &[
    ("kafka.security.protocol", "sasl_plaintext"),
    ("kafka.security.sasl_mechanism", "PLAIN"),
    ("kafka.security.username", "u"),
    ("kafka.security.password", "p"),
];
const SASL_BUT_MECHANISM: &[(&str, &str)] = &[SASL[0], SASL[2], SASL[3]];
const SASL_BUT_USERNAME: &[(&str, &str)] = &[SASL[0], SASL[1], SASL[3]];
const JWT_BUT_ISSUER: &[(&str, &str)] = &[
    ("auth.jwt.jwks_file", "{dir}/jwks.json"),
    ("auth.jwt.audience", "event-gateway"),
];
const TLS_AND_CA: &[(&str, &str)] = &[
    ("tls.cert_file", "{dir}/server.pem"),
    ("tls.key_file", "{dir}/server.key"),
    ("tls.client_ca_file", "{dir}/ca.pem"),
];
const TLS_OPTIONAL: &[(&str, &str)] = &[
    ("tls.cert_file", "{dir}/server.pem"),
    ("tls.key_file", "{dir}/server.key"),
    ("tls.client_auth", "optional"),
];
const JWT_URL: &[(&str, &str)] = &[
    ("auth.jwt.jwks_url", "{idp}/jwks"),
    ("auth.jwt.issuer", "https://issuer.example"),
    ("auth.jwt.audience", "event-gateway"),
];
const JWT: &[(&str, &str)] = &[
    ("auth.jwt.jwks_file", "{dir}/jwks.json"),
    ("auth.jwt.issuer", "https://issuer.example"),
    ("auth.jwt.audience", "event-gateway"),
];
const MTLS: &[(&str, &str)] = &[
    ("tls.cert_file", "{dir}/server.pem"),
    ("tls.key_file", "{dir}/server.key"),
    ("tls.client_ca_file", "{dir}/ca.pem"),
    ("tls.client_auth", "optional"),
];
const TLS: &[(&str, &str)] = &[
    ("tls.cert_file", "{dir}/server.pem"),
    ("tls.key_file", "{dir}/server.key"),
];

/// Keys set through the config file: `(key, YAML under the key, shows)`.
const FILE_ROWS: &[(&str, &str, &str)] = &[
    (
        "kafka.librdkafka",
        "kafka:\n  librdkafka:\n    linger.ms: 5\n    enable.ssl.certificate.verification: false\n",
        r#"{"enable.ssl.certificate.verification": "false", "linger.ms": "5"}"#,
    ),
    (
        "types.entries",
        "types:\n  entries:\n    - type: order.placed\n      topic: \"2024\"\n",
        r#"[{"type": "order.placed", "schema": null, "topic": "2024", "datacontenttype": null, "dataschema": null}]"#,
    ),
];

fn matrix() -> Vec<Row> {
    vec![
        text("server.address", "127.0.0.1:{port}"),
        row("server.http1.max_head_size", "128KiB", r#""128.0 KiB""#),
        row("server.http1.max_headers", "50", "50"),
        row("server.http2.max_concurrent_streams", "64", "64"),
        row("server.http2.max_frame_size", "32KiB", r#""32.0 KiB""#),
        row(
            "server.http2.max_header_list_size",
            "32KiB",
            r#""32.0 KiB""#,
        ),
        row("server.http2.max_local_error_reset_streams", "512", "512"),
        row("server.http2.max_pending_accept_reset_streams", "10", "10"),
        row("server.idle_timeout", "45s", r#""45s""#),
        row("server.max_connections", "500", "500"),
        row("server.max_connections_per_peer", "50", "50"),
        row("server.read_timeout", "20s", r#""20s""#),
        // With a proxy trusted, loopback sees the details only when listed.
        Row {
            key: "server.trusted_proxies",
            value: "10.0.0.0/8,127.0.0.1/32",
            with: &[("auth.health_details_from", "127.0.0.1/32")],
            shows: Some(r#"["10.0.0.0/8", "127.0.0.1/32"]"#),
        },
        row("server.write_timeout", "20s", r#""20s""#),
        row(
            "server.cors.allowed_origins",
            "https://app.example.com,http://localhost:5173",
            r#"["https://app.example.com", "http://localhost:5173"]"#,
        ),
        Row {
            key: "server.cors.allowed_methods",
            value: "POST",
            with: CORS_ORIGIN,
            shows: Some(r#"["POST"]"#),
        },
        Row {
            key: "server.cors.allowed_headers",
            value: "content-type,x-tenant-id",
            with: CORS_ORIGIN,
            shows: Some(r#"["content-type", "x-tenant-id"]"#),
        },
        Row {
            key: "server.cors.max_age",
            value: "1h",
            with: CORS_ORIGIN,
            shows: Some(r#""1h""#),
        },
        row("kafka.batch_size", "500", "500"),
        row(
            "kafka.brokers",
            "127.0.0.1:9,127.0.0.2:9",
            r#"["127.0.0.1:9", "127.0.0.2:9"]"#,
        ),
        text("kafka.compression", "zstd"),
        text("kafka.dead_letter_topic", "2025"),
        row(
            "kafka.forward_headers",
            "x-tenant-id,x-request-source",
            r#"["x-tenant-id", "x-request-source"]"#,
        ),
        Row {
            key: "kafka.forward_headers_max_bytes",
            value: "64B",
            with: &[("kafka.forward_headers", "x-tenant-id")],
            shows: Some(r#""64 B""#),
        },
        row("kafka.idempotence", "false", "false"),
        text("kafka.key_strategy", "subject"),
        row("kafka.linger", "5ms", r#""5ms""#),
        row("kafka.message_max_bytes", "2000000", "2000000"),
        row("kafka.message_timeout", "10s", r#""10s""#),
        row("kafka.queue_max_messages", "5000", "5000"),
        text("kafka.record_mode", "structured"),
        Row {
            key: "kafka.required_acks",
            value: "1",
            with: &[("kafka.idempotence", "false")],
            shows: Some(r#""Leader""#),
        },
        row("kafka.retries", "3", "3"),
        Row {
            key: "kafka.security.ca_file",
            value: "{dir}/ca.pem",
            with: &[("kafka.security.protocol", "ssl")],
            shows: None,
        },
        Row {
            key: "kafka.security.cert_file",
            value: "{dir}/server.pem",
            with: &[
                ("kafka.security.protocol", "ssl"),
                ("kafka.security.key_file", "{dir}/server.key"),
            ],
            shows: None,
        },
        Row {
            key: "kafka.security.key_file",
            value: "{dir}/server.key",
            with: &[
                ("kafka.security.protocol", "ssl"),
                ("kafka.security.cert_file", "{dir}/server.pem"),
            ],
            shows: None,
        },
        Row {
            key: "kafka.security.password",
            value: "123456",
            with: &SASL[..3],
            shows: Some(r#""***""#),
        },
        Row {
            key: "kafka.security.password_file",
            value: "{dir}/password",
            with: &SASL[..3],
            shows: None,
        },
        Row {
            key: "kafka.security.protocol",
            value: "SSL",
            with: &[],
            shows: Some(r#""ssl""#),
        },
        Row {
            key: "kafka.security.sasl_mechanism",
            value: "scram-sha-256",
            with: SASL_BUT_MECHANISM,
            shows: Some(r#""SCRAM-SHA-256""#),
        },
        Row {
            key: "kafka.security.username",
            value: "1234",
            with: SASL_BUT_USERNAME,
            shows: None,
        },
        text("kafka.topic", "2024"),
        row("limits.max_batch_events", "50", "50"),
        row("limits.max_data_depth", "10", "10"),
        row("limits.max_event_size", "64KiB", r#""64.0 KiB""#),
        row("limits.max_number_length", "40", "40"),
        row("limits.max_stream_in_flight", "100", "100"),
        text("logging.format", "json"),
        text("logging.level", "debug"),
        row("metrics.enabled", "false", "false"),
        text("metrics.path", "/prom"),
        row("performance.max_concurrent_requests", "100", "100"),
        row("performance.max_concurrent_requests_per_client", "10", "10"),
        row("performance.max_request_size", "1MiB", r#""1.0 MiB""#),
        row("performance.max_streams", "10", "10"),
        row("performance.max_streams_per_client", "5", "5"),
        row("performance.max_stream_lifetime", "10m", r#""10m""#),
        row("performance.request_timeout", "40s", r#""40s""#),
        row("rate_limit.burst_size", "40", "40"),
        row("rate_limit.enabled", "false", "false"),
        row("rate_limit.requests_per_second", "20", "20"),
        row("shutdown.drain_delay", "1s", r#""1s""#),
        row("shutdown.drain_timeout", "5s", r#""5s""#),
        text("spool.dir", "{dir}/2024"),
        row("spool.enabled", "false", "false"),
        row("spool.fallback_when_unavailable", "true", "true"),
        row("spool.give_up_after", "10s", r#""10s""#),
        row("spool.give_up_transient_after", "5m", r#""5m""#),
        row("spool.max_age", "1h", r#""1h""#),
        row("spool.max_bytes", "512MiB", r#""512.0 MiB""#),
        row("spool.segment_bytes", "1MiB", r#""1.0 MiB""#),
        text("storage.data_dir", "2024"),
        Row {
            key: "tls.cert_file",
            value: "{dir}/server.pem",
            with: &TLS[1..],
            shows: None,
        },
        Row {
            key: "tls.client_auth",
            value: "optional",
            with: TLS_AND_CA,
            shows: None,
        },
        Row {
            key: "tls.client_ca_file",
            value: "{dir}/ca.pem",
            with: TLS_OPTIONAL,
            shows: None,
        },
        Row {
            key: "tls.key_file",
            value: "{dir}/server.key",
            with: &TLS[..1],
            shows: None,
        },
        text("types.file", "{dir}/types.yaml"),
        text("types.policy", "registered"),
        text("ack.default", "spooled"),
        text("auth.api_keys_file", "{dir}/keys.yaml"),
        Row {
            key: "auth.certificates_file",
            value: "{dir}/certs.yaml",
            with: MTLS,
            shows: None,
        },
        text("auth.health_details", "everyone"),
        row(
            "auth.health_details_from",
            "127.0.0.0/8,192.0.2.0/24",
            r#"["127.0.0.0/8", "192.0.2.0/24"]"#,
        ),
        Row {
            key: "auth.jwt.audience",
            value: "12345",
            with: &JWT[..2],
            shows: None,
        },
        Row {
            key: "auth.jwt.issuer",
            value: "true",
            with: JWT_BUT_ISSUER,
            shows: None,
        },
        Row {
            key: "auth.jwt.jwks_file",
            value: "{dir}/jwks.json",
            with: &JWT[1..],
            shows: None,
        },
        row("auth.jwt.leeway", "10s", r#""10s""#),
        Row {
            key: "auth.jwt.jwks_url",
            value: "{idp}/jwks",
            with: &[
                ("auth.jwt.issuer", "https://issuer.example"),
                ("auth.jwt.audience", "event-gateway"),
            ],
            shows: None,
        },
        Row {
            key: "auth.jwt.discovery",
            value: "true",
            with: &[
                ("auth.jwt.issuer", "{idp}"),
                ("auth.jwt.audience", "event-gateway"),
            ],
            shows: Some("true"),
        },
        Row {
            key: "auth.jwt.ca_file",
            value: "{dir}/ca.pem",
            with: JWT_URL,
            shows: None,
        },
        Row {
            key: "auth.jwt.jwks_refresh_min",
            value: "5s",
            with: JWT_URL,
            shows: Some(r#""5s""#),
        },
        Row {
            key: "auth.jwt.jwks_refresh_max",
            value: "10m",
            with: JWT_URL,
            shows: Some(r#""10m""#),
        },
        Row {
            key: "auth.jwt.types_claim",
            value: "999",
            with: JWT,
            shows: None,
        },
        Row {
            key: "auth.protect_metrics",
            value: "true",
            with: &[("auth.api_keys_file", "{dir}/keys.yaml")],
            shows: Some("true"),
        },
        Row {
            key: "auth.required",
            value: "true",
            with: &[("auth.api_keys_file", "{dir}/keys.yaml")],
            shows: Some("true"),
        },
        row("dedup.max_entries", "1000", "1000"),
        row("dedup.window", "5m", r#""5m""#),
    ]
}

fn env_name(key: &str) -> String {
    format!("GATEWAY_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The files the rows name, in `dir`.
fn fixtures(dir: &std::path::Path) {
    let pki = TestPki::new();
    for f in ["server.pem", "server.key", "ca.pem"] {
        std::fs::copy(pki.path(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("password"), "s3cret\n").unwrap();
    std::fs::write(dir.join("types.yaml"), "entries:\n  - type: user.created\n").unwrap();
    std::fs::write(
        dir.join("certs.yaml"),
        "- san: spiffe://matrix/client\n  allowed_types: [\"user.*\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("keys.yaml"),
        format!("- id: matrix\n  sha256: {}\n", "00".repeat(32)),
    )
    .unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "alg": "ES256",
        "use": "sig", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
}

/// A stand-in identity provider for the `auth.jwt.jwks_url` and `discovery` rows (a real one
/// is tests/idp.rs's): `{dir}/jwks.json` at `/jwks`, and discovery naming it. Its base URL.
async fn serve_provider(dir: &std::path::Path) -> String {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let jwks = std::fs::read_to_string(dir.join("jwks.json")).unwrap();
    let discovery = json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string();
    let app = axum::Router::new()
        .route("/jwks", get(move || async move { jwks }))
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { discovery }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The real binary with `env` (and a config file of `yaml`) in `dir` on `port`, until its
/// `/health/detailed` answers: (the child, the base URL, the detailed body).
async fn start(
    dir: &std::path::Path,
    port: u16,
    env: &[(String, String)],
    yaml: &str,
    tls: bool,
) -> (tokio::process::Child, String, Value) {
    let config = dir.join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut cmd = tokio::process::Command::new(GATEWAY_BIN);
    cmd.args(["--config", config.to_str().unwrap()])
        .current_dir(dir)
        .env_clear()
        .env("GATEWAY_SERVER_ADDRESS", format!("127.0.0.1:{port}"))
        .env("GATEWAY_STORAGE_DATA_DIR", dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let base = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
    let c = client();
    let url = format!("{base}/health/detailed");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = c.get(&url).send().await
            && let Ok(body) = r.json::<Value>().await
            && body.get("config").is_some()
        {
            return (child, base, body);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "the gateway exited ({status}) with {env:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /health/detailed with {env:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// Posts an event of type `ty` from source `matrix` to the gateway at `base`.
async fn matrix_event(c: &reqwest::Client, base: &str, ty: &str) -> reqwest::Response {
    c.post(format!("{base}/api/v1/events"))
        .json(&json!({"type": ty, "source": "matrix"}))
        .send()
        .await
        .unwrap()
}

/// #30: the matrix, one start per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_set_on_the_real_binary_takes_effect() {
    let rows = matrix();
    // Every key of the configuration, and nothing else, is in the matrix.
    let mut named: Vec<&str> = rows.iter().map(|r| r.key).collect();
    named.extend(FILE_ROWS.iter().map(|r| r.0));
    let named: BTreeSet<&str> = named.into_iter().collect();
    let keys: BTreeSet<String> = event_gateway::config::keys().into_iter().collect();
    let keys: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(
        keys.difference(&named).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "keys missing from the settings matrix"
    );
    assert_eq!(
        named.difference(&keys).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "the matrix names keys that do not exist"
    );
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let d = dir.path().display().to_string();
    let idp = serve_provider(dir.path()).await;
    let mut checked = 0;
    for r in &rows {
        let port = free_port();
        let fill = |v: &str| {
            v.replace("{dir}", &d)
                .replace("{port}", &port.to_string())
                .replace("{idp}", &idp)
        };
        let value = fill(r.value);
        let mut env = vec![(env_name(r.key), value.clone())];
        env.extend(r.with.iter().map(|(k, v)| (env_name(k), fill(v))));
        let tls = env.iter().any(|(k, _)| k == "GATEWAY_TLS_CERT_FILE");
        let (mut child, base, detailed) = start(dir.path(), port, &env, "", tls).await;
        let want: Value = match r.shows {
            Some(json) => serde_json::from_str(&fill(json)).unwrap(),
            None => Value::String(value.clone()),
        };
        assert_eq!(
            at(&detailed["config"], r.key),
            &want,
            "{} = {value}: /health/detailed shows the effective value",
            env_name(r.key)
        );
        effect(r.key, &value, &base, dir.path(), &mut child).await;
        child.kill().await.unwrap();
        checked += 1;
    }
    for (key, yaml, shows) in FILE_ROWS {
        let port = free_port();
        let (mut child, _, detailed) = start(dir.path(), port, &[], yaml, false).await;
        let want: Value = serde_json::from_str(shows).unwrap();
        assert_eq!(at(&detailed["config"], key), &want, "{key} from the file");
        child.kill().await.unwrap();
        checked += 1;
    }
    eprintln!("settings matrix: {checked} keys, each on the real binary");
}

/// What the docs promise of a key, where no other test checks it over the wire.
async fn effect(
    key: &str,
    value: &str,
    base: &str,
    dir: &std::path::Path,
    child: &mut tokio::process::Child,
) {
    let c = client();
    match key {
        "metrics.path" => {
            let body = c.get(format!("{base}{value}")).send().await.unwrap();
            assert_eq!(body.status(), 200, "metrics served at {value}");
            assert!(body.text().await.unwrap().contains("# HELP"));
        }
        "metrics.enabled" => {
            let r = c.get(format!("{base}/metrics")).send().await.unwrap();
            assert_eq!(r.status(), 404, "no /metrics when disabled");
        }
        "storage.data_dir" => {
            // A path that looks like a number is a path: the local log is written there.
            let r = matrix_event(&c, base, "user.created").await;
            assert_eq!(r.status(), 200);
            assert!(log_text(&dir.join(value)).contains("matrix"));
        }
        "logging.format" => {
            use tokio::io::AsyncBufReadExt as _;
            let out = child.stdout.take().unwrap();
            let mut lines = tokio::io::BufReader::new(out).lines();
            let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .expect("a log line");
            let line: Value = serde_json::from_str(&first).expect("a JSON log line");
            assert!(line.get("level").is_some(), "{first}");
        }
        "kafka.forward_headers" | "kafka.forward_headers_max_bytes" => {
            // Over the limit (1 KiB by default, 64 B in its own row): refused by name.
            let send = |n: usize| {
                c.post(format!("{base}/api/v1/events"))
                    .header("x-tenant-id", "t".repeat(n))
                    .json(&json!({"type": "user.created", "source": "matrix", "data": {"user_id": "1", "email": "e"}}))
                    .send()
            };
            let r = send(40).await.unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            let r = send(if key == "kafka.forward_headers" {
                2000
            } else {
                100
            })
            .await
            .unwrap();
            assert_eq!(r.status(), 413);
            let body = r.text().await.unwrap();
            assert!(body.contains("kafka.forward_headers_max_bytes"), "{body}");
        }
        k if k.starts_with("server.cors.") => {
            // A browser's preflight from the listed origin is answered (no credentials, no
            // route of its own); one from any other origin is refused.
            let preflight = |origin: &'static str| {
                c.request(reqwest::Method::OPTIONS, format!("{base}/api/v1/events"))
                    .header("origin", origin)
                    .header("access-control-request-method", "POST")
                    .header("access-control-request-headers", "content-type,x-tenant-id")
                    .send()
            };
            let r = preflight("https://app.example.com").await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            let h = |name: &str| {
                r.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            assert_eq!(h("access-control-allow-origin"), "https://app.example.com");
            match k {
                "server.cors.allowed_methods" => {
                    assert_eq!(h("access-control-allow-methods"), "POST")
                }
                "server.cors.allowed_headers" => {
                    assert!(h("access-control-allow-headers").contains("x-tenant-id"))
                }
                "server.cors.max_age" => assert_eq!(h("access-control-max-age"), "3600"),
                _ => {}
            }
            let r = preflight("https://evil.example").await.unwrap();
            assert_eq!(r.status(), 403);
            assert!(
                r.text()
                    .await
                    .unwrap()
                    .contains("server.cors.allowed_origins")
            );
        }
        "auth.jwt.jwks_url"
        | "auth.jwt.discovery"
        | "auth.jwt.ca_file"
        | "auth.jwt.jwks_refresh_min"
        | "auth.jwt.jwks_refresh_max" => {
            // The provider's keys were fetched before the gateway served.
            let text = c
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                text.lines()
                    .any(|l| l.starts_with("auth_jwks_fetches_total{outcome=\"ok\"")
                        && l.ends_with(" 1")),
                "{text}"
            );
        }
        "auth.required" => {
            let r = matrix_event(&c, base, "user.created").await;
            assert_eq!(r.status(), 401, "no credentials, refused");
        }
        "types.policy" => {
            let r = matrix_event(&c, base, "not.registered").await;
            assert_eq!(r.status(), 400, "an unregistered type is refused");
        }
        "limits.max_event_size" => {
            let big = "x".repeat(70 * 1024);
            let r = c
                .post(format!("{base}/api/v1/events"))
                .json(&json!({"type": "user.created", "source": "matrix", "data": {"b": big}}))
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_client_error(),
                "an event over 64 KiB is refused"
            );
            let body = r.text().await.unwrap();
            assert!(body.contains("max_event_size"), "{body}");
        }
        _ => {}
    }
}

/// #30: readiness said 200 while the local log refused every event: with less room than one
/// event left, `/health/ready` is 503 and gRPC health NOT_SERVING, across a restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_without_room_for_one_more_event_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "storage:\n  data_dir: data\nspool:\n  segment_bytes: 16KiB\n  max_bytes: 48KiB\nlimits:\n  max_event_size: 4KiB\nrate_limit:\n  enabled: false\n";
    let (mut child, base) = start_binary(dir.path(), yaml, Stdio::null()).await;
    let c = http();
    let mut taken = 0;
    loop {
        let r = c
            .post(format!("{base}/api/v1/events"))
            .json(&json!({"type": "user.created", "source": "fill", "data": {"pad": "y".repeat(600)}}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => taken += 1,
            503 => break,
            s => panic!("unexpected {s}"),
        }
        assert!(taken < 1000, "the log never filled");
    }
    // Readiness is evaluated every 250 ms: within a few polls it must say so.
    let url = format!("{base}/health/ready");
    wait_until(
        Duration::from_secs(5),
        "readiness to fall while every event is refused",
        || {
            let r = c.get(&url).send();
            async move { r.await.is_ok_and(|r| r.status() == 503) }
        },
    )
    .await;
    let ready = c.get(&url).send().await.unwrap();
    let reason = ready.json::<Value>().await.unwrap()["reason"].to_string();
    assert!(reason.contains("full"), "{reason}");
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        grpc_health_now(channel, "").await,
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    // Killed and reaped before the restart binds the same port: dropping the child only sent
    // the signal, and a restart that found the port still held exited at once (a CI run
    // timed out waiting for it).
    child.kill().await.unwrap();
    // A restart finds the same log: still not ready.
    let config = dir.path().join("config.yaml");
    let mut again = tokio::process::Command::new(GATEWAY_BIN)
        .args(["--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the restarted gateway to answer",
        || {
            let r = c.get(&url).send();
            async move { r.await.is_ok() }
        },
    )
    .await;
    let ready = c.get(&url).send().await.unwrap();
    assert_eq!(
        ready.status(),
        503,
        "ready again after a restart, still full"
    );
    again.kill().await.unwrap();
}

/// #30: a batch body's `"ack": "spooled"` was refused (`unknown variant`) while
/// `ACK_MODE_SPOOLED` and `?ack=spooled` worked: the body takes the query's short forms too.
#[tokio::test]
async fn a_batch_body_takes_the_short_ack_forms() {
    // With brokers configured (none listening) the spool takes spooled events; the local log
    // stores the rest.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.kafka.brokers = vec![format!("127.0.0.1:{}", free_port())];
    let spool = TestGateway::start(config).await;
    let local = TestGateway::local().await;
    let c = http();
    for (ack, want, gw) in [
        (json!("spooled"), "ACK_MODE_SPOOLED", &spool),
        (json!("SPOOLED"), "ACK_MODE_SPOOLED", &spool),
        (json!("ACK_MODE_SPOOLED"), "ACK_MODE_SPOOLED", &spool),
        (json!(2), "ACK_MODE_SPOOLED", &spool),
        (json!("stored"), "ACK_MODE_STORED", &local),
        (json!("Stored"), "ACK_MODE_STORED", &local),
        (json!("default"), "ACK_MODE_STORED", &local),
    ] {
        let r = c
            .post(gw.url("/api/v1/events/batch"))
            .json(&json!({"events": [{"type": "user.created", "source": "s"}], "ack": ack}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{ack}: {status} {body}");
        assert_eq!(body["ack"], want, "{ack}: {body}");
    }
    let r = c
        .post(local.url("/api/v1/events/batch"))
        .json(&json!({"events": [{"type": "user.created", "source": "s"}], "ack": "eventually"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("`ack`") && body.contains("eventually"),
        "{body}"
    );
}

/// #30: `event-gateway check`: 0 and the effective configuration without secrets, or 2 and
/// start-up's message; the files the configuration names are read.
#[test]
fn check_validates_the_whole_configuration_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let run = |env: &[(&str, String)]| {
        let mut cmd = std::process::Command::new(GATEWAY_BIN);
        cmd.arg("check").current_dir(dir.path()).env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let d = dir.path().display().to_string();
    let out = run(&[
        ("GATEWAY_KAFKA_BROKERS", "127.0.0.1:9".into()),
        ("GATEWAY_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
        ("GATEWAY_KAFKA_SECURITY_SASL_MECHANISM", "plain".into()),
        ("GATEWAY_KAFKA_SECURITY_USERNAME", "1234".into()),
        ("GATEWAY_KAFKA_SECURITY_PASSWORD", "123456".into()),
        ("GATEWAY_TYPES_FILE", format!("{d}/types.yaml")),
        ("GATEWAY_TLS_CERT_FILE", format!("{d}/server.pem")),
        ("GATEWAY_TLS_KEY_FILE", format!("{d}/server.key")),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_yaml::from_str(&stdout).unwrap();
    assert_eq!(printed["kafka"]["security"]["password"], "***");
    assert_eq!(printed["kafka"]["security"]["username"], "1234");
    assert!(!stdout.contains("123456"), "a secret was printed");
    // Nothing was created: no data directory.
    assert!(!dir.path().join("data").exists());
    // A file the configuration names that does not read: 2, with start-up's words.
    for (k, v, says) in [
        ("GATEWAY_TYPES_FILE", format!("{d}/nope.yaml"), "types.file"),
        (
            "GATEWAY_AUTH_API_KEYS_FILE",
            format!("{d}/server.pem"),
            "api_keys_file",
        ),
        (
            "GATEWAY_TLS_CERT_FILE",
            format!("{d}/password"),
            "certificate",
        ),
        ("GATEWAY_SERVER_ADDRESS", "nowhere".into(), "server.address"),
    ] {
        let mut env = vec![(k, v)];
        if k == "GATEWAY_TLS_CERT_FILE" {
            env.push(("GATEWAY_TLS_KEY_FILE", format!("{d}/server.key")));
        }
        let out = run(&env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{k}: {err}");
        assert!(err.to_lowercase().contains(says), "{k}: {err}");
    }
    // librdkafka's own validation: an unknown property.
    let yaml = dir.path().join("bad-kafka.yaml");
    std::fs::write(
        &yaml,
        "kafka:\n  brokers: [\"127.0.0.1:9\"]\n  librdkafka:\n    no.such.property: 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(GATEWAY_BIN)
        .args(["--config", yaml.to_str().unwrap(), "check"])
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no.such.property"), "{err}");
}
