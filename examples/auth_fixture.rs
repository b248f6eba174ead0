//! The benchmark's credentials and certificates, made fresh for each run: writes into DIR an
//! API keys file with one key, a JWKS with one ES256 key, and a CA with a server certificate
//! for localhost / 127.0.0.1; prints `API_KEY=...` and `JWT=...` (valid for two hours) for the
//! load generators. `auth_fixture DIR`
use std::path::Path;

use base64::Engine as _;
use sha2::Digest as _;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: auth_fixture DIR");
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();

    let key = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    std::fs::write(
        dir.join("keys.yaml"),
        format!("- id: bench-client\n  sha256: {digest}\n"),
    )
    .unwrap();

    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench",
        "alg": "ES256", "use": "sig", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub": "bench-service", "iss": "https://bench.example",
        "aud": "event-gateway", "exp": now + 7200});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench".into());
    let signing = jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der());
    let token = jsonwebtoken::encode(&header, &claims, &signing).unwrap();

    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();

    println!("API_KEY={key}");
    println!("JWT={token}");
}
