//! The listener over TLS with certificates made here (rcgen): REST (reqwest, HTTP/2 and
//! HTTP/1.1 by ALPN) and gRPC (a tonic TLS channel, and Python's grpcio) on one port; mutual
//! TLS refusing a client without a certificate and naming the principal by its SAN; a
//! rotated certificate served to new connections while an open one keeps working.
mod common;

use std::time::Duration;

use common::*;
use event_gateway::proto::{CloudEvent, IngestEventRequest};
use event_gateway::transport::grpc::event_gateway_service_client::EventGatewayServiceClient;
use futures::FutureExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn tls_gateway(pki: &TestPki, mtls: bool) -> TestGateway {
    tls_gateway_with(pki, mtls, |_| {}).await
}

async fn tls_gateway_with(
    pki: &TestPki,
    mtls: bool,
    edit: impl FnOnce(&mut event_gateway::Config),
) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.tls.cert_file = Some(pki.path("server.pem"));
    config.tls.key_file = Some(pki.path("server.key"));
    if mtls {
        config.tls.client_ca_file = Some(pki.path("ca.pem"));
        write_certificates(pki, &["spiffe://test/orders"]);
        config.auth.certificates_file = Some(pki.path("certs.yaml"));
    }
    edit(&mut config);
    TestGateway::start(config).await
}

/// `auth.certificates_file` in the PKI's folder: each of `sans` may send `user.*` events.
fn write_certificates(pki: &TestPki, sans: &[&str]) {
    let yaml: String = sans
        .iter()
        .map(|san| format!("- san: \"{san}\"\n  allowed_types: [\"user.*\"]\n"))
        .collect();
    let yaml = if yaml.is_empty() { "[]\n".into() } else { yaml };
    std::fs::write(pki.path("certs.yaml"), yaml).unwrap();
}

fn https(pki: &TestPki, client: Option<&str>, http1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap());
    if let Some(name) = client {
        let mut pem = std::fs::read(pki.path(&format!("{name}.pem"))).unwrap();
        pem.extend(std::fs::read(pki.path(&format!("{name}.key"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

async fn tls_channel(
    gw: &TestGateway,
    pki: &TestPki,
    client: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some(name) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(pki.path(&format!("{name}.pem"))).unwrap(),
            std::fs::read(pki.path(&format!("{name}.key"))).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://localhost:{}", gw.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

fn seed() -> IngestEventRequest {
    IngestEventRequest {
        event: Some(serde_json::from_str::<CloudEvent>(SEED_EVENT).unwrap()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_share_one_tls_port() {
    let pki = TestPki::new();
    let gw = tls_gateway(&pki, false).await;
    let url = format!("https://localhost:{}/api/v1/events", gw.addr.port());
    for (http1, want) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let r = post_raw(&https(&pki, None, http1), &url, SEED_EVENT).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), want, "ALPN picked the protocol");
    }
    let ch = tls_channel(&gw, &pki, None).await.unwrap();
    EventGatewayServiceClient::new(ch)
        .ingest_event(seed())
        .await
        .unwrap();
    // Plaintext on the TLS port gets nowhere.
    let plain = http()
        .post(gw.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body(SEED_EVENT)
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    // Python's grpcio over TLS, trusting only the test CA.
    if let Some(py) = require(Tool::Python) {
        let script = r#"
import sys, grpc
creds = grpc.ssl_channel_credentials(root_certificates=open(sys.argv[2], "rb").read())
ch = grpc.secure_channel(sys.argv[1], creds)
# grpc.health.v1.Health/Check with an empty request (service ""), bytes in and out: the
# reply {status: SERVING} is field 1 = 1, b"\x08\x01".
check = ch.unary_unary("/grpc.health.v1.Health/Check")
print(check(b"", timeout=10).hex())
"#;
        let out = tokio::process::Command::new(py)
            .args(["-c", script, &format!("localhost:{}", gw.addr.port())])
            .arg(pki.path("ca.pem"))
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), "0801", "SERVING over TLS");
    }
    assert_eq!(gw.log_lines().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_names_the_one_with() {
    let pki = TestPki::new();
    pki.write_client("client", "spiffe://test/orders");
    let gw = tls_gateway(&pki, true).await;
    let url = format!("https://localhost:{}/api/v1/events", gw.addr.port());
    let refused = https(&pki, None, false)
        .post(&url)
        .header("content-type", "application/json")
        .body(SEED_EVENT)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got {refused:?}"
    );
    let refused = match tls_channel(&gw, &pki, None).await {
        Err(_) => true,
        Ok(ch) => EventGatewayServiceClient::new(ch)
            .ingest_event(seed())
            .await
            .is_err(),
    };
    assert!(refused, "a gRPC client without a certificate was served");

    let r = post_raw(&https(&pki, Some("client"), false), &url, SEED_EVENT).await;
    assert_eq!(r.status(), 200);
    let ch = tls_channel(&gw, &pki, Some("client")).await.unwrap();
    EventGatewayServiceClient::new(ch)
        .ingest_event(seed())
        .await
        .unwrap();
    let lines = gw.log_lines();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["authtype"], "service_account");
        assert_eq!(l["authid"], "spiffe://test/orders");
    }

    // tls.client_auth: optional lets a client without a certificate in (a kubelet probe),
    // as unauthenticated; one with a certificate is still named by it.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.tls.cert_file = Some(pki.path("server.pem"));
    config.tls.key_file = Some(pki.path("server.key"));
    config.tls.client_ca_file = Some(pki.path("ca.pem"));
    config.tls.client_auth = event_gateway::config::ClientAuth::Optional;
    config.auth.certificates_file = Some(pki.path("certs.yaml"));
    let gw = TestGateway::start(config).await;
    let url = format!("https://localhost:{}/api/v1/events", gw.addr.port());
    for client in [None, Some("client")] {
        let r = post_raw(&https(&pki, client, false), &url, SEED_EVENT).await;
        assert_eq!(r.status(), 200);
    }
    let who: Vec<_> = gw
        .log_lines()
        .iter()
        .map(|l| l["authtype"].clone())
        .collect();
    assert_eq!(who, ["unauthenticated", "service_account"]);
}

/// A client certificate's principal gets its entry's grants in `auth.certificates_file`; a
/// certificate the CA signed but the file does not list may send nothing (403 naming the
/// setting), on both protocols; an entry added to the file lets it in without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_principals_send_only_what_their_entry_grants() {
    let pki = TestPki::new();
    pki.write_client("orders", "spiffe://test/orders");
    pki.write_client("stranger", "spiffe://test/stranger");
    // Details and metrics for credentials only: a certificate must be listed to see them.
    let gw = tls_gateway_with(&pki, true, |c| {
        c.auth.health_details_from = Some(Vec::new());
        c.auth.protect_metrics = true;
    })
    .await;
    let url = format!("https://localhost:{}/api/v1/events", gw.addr.port());
    let post = |client: &'static str, body: String| {
        let c = https(&pki, Some(client), false);
        let url = url.clone();
        async move {
            let r = post_raw(&c, &url, &body).await;
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    // Listed: its own types only.
    assert_eq!(post("orders", SEED_EVENT.into()).await.0, 200);
    let other = SEED_EVENT.replace("user.created", "billing.charged");
    let (status, body) = post("orders", other).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("event.type") && body.contains("spiffe://test/orders"),
        "{body}"
    );
    // Not listed: nothing, on both protocols, and the reply says why.
    let (status, body) = post("stranger", SEED_EVENT.into()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("auth.certificates_file"), "{body}");
    let ch = tls_channel(&gw, &pki, Some("stranger")).await.unwrap();
    let refused = EventGatewayServiceClient::new(ch)
        .ingest_event(seed())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Signed by the CA but not listed: not known to /metrics or /health/detailed either.
    let get = |client: &'static str, path: &'static str| {
        let c = https(&pki, Some(client), false);
        let url = format!("https://localhost:{}{path}", gw.addr.port());
        async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("stranger", "/metrics").await.0, 401);
    assert_eq!(get("orders", "/metrics").await.0, 200);
    let details = |body: String| {
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["config"].is_object()
    };
    assert!(!details(get("stranger", "/health/detailed").await.1));
    assert!(details(get("orders", "/health/detailed").await.1));
    // Listed later: let in once the file is reloaded.
    write_certificates(&pki, &["spiffe://test/orders", "spiffe://test/stranger"]);
    wait_until(Duration::from_secs(5), "the new entry to be read", || {
        post("stranger", SEED_EVENT.into()).map(|(s, _)| s == 200)
    })
    .await;
    let who: Vec<_> = gw.log_lines().iter().map(|l| l["authid"].clone()).collect();
    assert_eq!(who, ["spiffe://test/orders", "spiffe://test/stranger"]);
}

/// The certificate a fresh TLS connection is shown.
async fn served_certificate(gw: &TestGateway, pki: &TestPki) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_connections_and_open_ones_stay() {
    let pki = TestPki::new();
    let gw = tls_gateway(&pki, false).await;
    let first = served_certificate(&gw, &pki).await;
    // An open HTTP/2 connection from before the rotation.
    let mut open = EventGatewayServiceClient::new(tls_channel(&gw, &pki, None).await.unwrap());
    open.ingest_event(seed()).await.unwrap();

    let rotated = pki.write_server("server");
    assert_ne!(first, rotated);
    let gw_ref = &gw;
    let pki_ref = &pki;
    let rotated_ref = &rotated;
    wait_until(
        Duration::from_secs(10),
        "the rotated certificate served",
        || async move { served_certificate(gw_ref, pki_ref).await == *rotated_ref },
    )
    .await;
    // The connection opened before the rotation still works.
    open.ingest_event(seed()).await.unwrap();
    // A file that does not parse keeps the certificate in force.
    std::fs::write(pki.path("server.pem"), "not a certificate").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the broken reload counted",
        || async move {
            gw_ref
                .metrics_https(pki_ref)
                .await
                .contains("tls_reload_failures_total 1")
        },
    )
    .await;
    assert_eq!(served_certificate(&gw, &pki).await, rotated);
}

trait MetricsOverTls {
    async fn metrics_https(&self, pki: &TestPki) -> String;
}

impl MetricsOverTls for TestGateway {
    async fn metrics_https(&self, pki: &TestPki) -> String {
        get_text(
            &https(pki, None, false),
            format!("https://localhost:{}/metrics", self.addr.port()),
        )
        .await
    }
}
