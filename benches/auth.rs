//! What authentication costs per request, the part a load test cannot separate from its
//! noise: `Authenticator::authenticate` with no credentials (auth optional), an API key, a
//! JWT already verified (remembered), and a JWT seen for the first time (ES256 signature
//! check). `cargo bench --bench auth` prints the figures; the README quotes them.
use base64::Engine as _;
use divan::Bencher;
use event_gateway::config::AuthConfig;
use event_gateway::core::auth::{Authenticator, Credentials};
use sha2::Digest as _;

fn main() {
    divan::main();
}

const KEY: &str = "bench_0123456789abcdef0123456789abcdef";

struct Fixture {
    auth: std::sync::Arc<Authenticator>,
    _dir: tempfile::TempDir,
    signer: jsonwebtoken::EncodingKey,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let digest = hex::encode(sha2::Sha256::digest(KEY.as_bytes()));
    std::fs::write(&keys, format!("- id: bench\n  sha256: {digest}\n")).unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
        "alg": "ES256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    let mut config = AuthConfig {
        api_keys_file: Some(keys),
        ..Default::default()
    };
    config.jwt.jwks_file = Some(jwks_file);
    config.jwt.issuer = Some("https://bench.example".into());
    config.jwt.audience = Some("event-gateway".into());
    let meter = opentelemetry::global::meter("bench");
    Fixture {
        auth: Authenticator::new(&config, &meter).unwrap(),
        _dir: dir,
        signer: jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
    }
}

fn token(f: &Fixture, sub: &str) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("k".into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": sub, "exp": exp, "iss": "https://bench.example",
        "aud": "event-gateway"});
    jsonwebtoken::encode(&h, &claims, &f.signer).unwrap()
}

#[divan::bench]
fn no_credentials(b: Bencher) {
    let f = fixture();
    b.bench(|| f.auth.authenticate(&Credentials::default()).unwrap());
}

#[divan::bench]
fn api_key(b: Bencher) {
    let f = fixture();
    let c = Credentials {
        api_key: Some(KEY),
        ..Default::default()
    };
    b.bench(|| f.auth.authenticate(&c).unwrap());
}

#[divan::bench]
fn jwt_remembered(b: Bencher) {
    let f = fixture();
    let t = token(&f, "svc");
    let c = Credentials {
        bearer: Some(&t),
        ..Default::default()
    };
    f.auth.authenticate(&c).unwrap();
    b.bench(|| f.auth.authenticate(&c).unwrap());
}

#[divan::bench(sample_count = 20, sample_size = 10)]
fn jwt_first_seen(b: Bencher) {
    let f = fixture();
    let mut n = 0u64;
    b.with_inputs(|| {
        n += 1;
        token(&f, &format!("svc-{n}"))
    })
    .bench_local_refs(|t| {
        let c = Credentials {
            bearer: Some(t),
            ..Default::default()
        };
        f.auth.authenticate(&c).unwrap()
    });
}
