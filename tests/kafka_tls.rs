//! The gateway towards a broker over TLS: tansu 0.6's own TLS does not work, so a rustls
//! terminator (tests/common `TlsProxy`) sits in front of a plaintext tansu that advertises
//! the terminator's address; the gateway trusts the test CA and presents a client
//! certificate, and the record is read back over TLS. SASL cannot be provisioned on tansu
//! with in-memory storage: what is tested is that librdkafka was built with every mechanism
//! the configuration offers (and without GSSAPI, which it refuses).
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use event_gateway::config::{SaslMechanism, SecurityProtocol};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_broker_over_tls_with_a_client_certificate() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let pki = TestPki::new();
    pki.write_client("gateway", "spiffe://test/gateway");
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = proxy_listener.local_addr().unwrap().port();
    let broker_port = free_port();
    let mut broker = Broker::spawn_advertising(broker_port, proxy_port);
    let proxy = TlsProxy::serve(proxy_listener, &pki, broker_port, true);
    let path = |n: &str| pki.path(n).display().to_string();
    broker.client = vec![
        ("security.protocol".into(), "ssl".into()),
        ("ssl.ca.location".into(), path("ca.pem")),
        ("ssl.certificate.location".into(), path("gateway.pem")),
        ("ssl.key.location".into(), path("gateway.key")),
    ];
    broker.create_topic("secure", 1).await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.kafka.brokers = vec![broker.bootstrap()];
    config.kafka.topic = "secure".into();
    // zstd is built in now too.
    config.kafka.compression = "zstd".into();
    config.kafka.security.protocol = SecurityProtocol::Ssl;
    config.kafka.security.ca_file = Some(pki.path("ca.pem"));
    config.kafka.security.cert_file = Some(pki.path("gateway.pem"));
    config.kafka.security.key_file = Some(pki.path("gateway.key"));
    // And the sender is authenticated: its id travels as the record's ce_authid.
    let keys = dir.path().join("keys.yaml");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"orders-key-0001"));
    std::fs::write(&keys, format!("- id: orders\n  sha256: {digest}\n")).unwrap();
    config.auth.required = true;
    config.auth.api_keys_file = Some(keys);
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let before = proxy.with_client_cert.load(Ordering::SeqCst);
    let r = http()
        .post(gw.url("/api/v1/events"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer orders-key-0001")
        .body(SEED_EVENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let records = broker.read_all("secure", 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].headers["ce_type"], "user.created");
    assert_eq!(records[0].headers["ce_authtype"], "api_key");
    assert_eq!(records[0].headers["ce_authid"], "orders");
    // Every connection through the terminator was TLS with a client certificate.
    assert!(before >= 1, "the gateway never connected through TLS");
    assert_eq!(
        proxy.handshakes.load(Ordering::SeqCst),
        proxy.with_client_cert.load(Ordering::SeqCst)
    );
}

#[test]
fn librdkafka_has_every_sasl_mechanism_the_configuration_offers() {
    use rdkafka::producer::BaseProducer;
    let mut kafka = event_gateway::config::KafkaConfig {
        brokers: vec!["127.0.0.1:1".into()],
        ..Default::default()
    };
    kafka.security.protocol = SecurityProtocol::SaslSsl;
    kafka.security.username = Some("gateway".into());
    kafka.security.password = Some(event_gateway::config::Secret("pw".into()));
    for m in [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ] {
        kafka.security.sasl_mechanism = Some(m);
        let cc = event_gateway::sink::kafka::client_config(&kafka);
        assert_eq!(cc.get("sasl.mechanism"), Some(m.as_librdkafka()));
        assert_eq!(cc.get("security.protocol"), Some("sasl_ssl"));
        if let Err(e) = cc.create::<BaseProducer>() {
            panic!("{m:?}: {e}");
        }
    }
    // Without a CA file, librdkafka probes the system's CA store (the vendored OpenSSL's
    // own default directory exists on no machine).
    assert_eq!(
        event_gateway::sink::kafka::client_config(&kafka).get("ssl.ca.location"),
        Some("probe")
    );
    // The control: a mechanism this build does not have is refused at creation, so the
    // check above can fail.
    let mut cc = event_gateway::sink::kafka::client_config(&kafka);
    cc.set("sasl.mechanism", "GSSAPI");
    assert!(cc.create::<BaseProducer>().is_err());
}
