//! Who is calling and what they may send. The [`Authenticator`] turns what a request presents
//! (an API key, a JWT bearer token, the subject of a verified client certificate) into a
//! [`Principal`], or into `Error::Unauthenticated`; it holds the API keys (from
//! `auth.api_keys_file`) and the JWT signing keys (from `auth.jwt.jwks_file`), each swapped
//! whole when its file changes. The core asks it whether a principal may send an event
//! ([`Authenticator::authorize`]) and stamps the CloudEvents Auth Context extension
//! (`authtype`, `authid`) on every event ([`stamp`]). It imports nothing from tonic, axum or
//! http: the shared stack reads the credentials off the request and calls it.
//!
//! API keys are never stored: the file holds their SHA-256. A presented key is hashed and
//! looked up by digest, then the digests are compared with `subtle`'s constant-time
//! equality; the lookup's timing depends only on the digest of what the client sent, which
//! tells it nothing about any real key.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use globset::{Glob, GlobSet, GlobSetBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::{AuthConfig, JwtConfig};
use crate::core::error::{AuthFailure, Error, FieldViolation};
use crate::core::event::Event;
use crate::telemetry::throttle::LogThrottle;

/// The CloudEvents Auth Context `authtype` of an API key.
pub const AUTHTYPE_API_KEY: &str = "api_key";
/// The `authtype` of a JWT's subject or a client certificate's: a service identity.
pub const AUTHTYPE_SERVICE: &str = "service_account";
/// The `authtype` of a request without credentials (`auth.required: false`).
pub const AUTHTYPE_NONE: &str = "unauthenticated";

/// Every `reason` of `auth_failures_total`.
pub const FAILURE_REASONS: &[&str] = &[
    "missing",
    "invalid",
    "expired",
    "forbidden_type",
    "forbidden_source",
];

/// Who sent a request: an id (empty when unauthenticated), its Auth Context type, and what
/// it may send.
#[derive(Clone)]
pub struct Principal {
    pub id: String,
    pub authtype: &'static str,
    pub grants: Arc<Grants>,
    /// What the principal was proven by, to check again later (an open stream).
    pub credential: Credential,
}

/// The credential a principal was proven by, as far as it can go stale: an API key can be
/// revoked, a token expires or its signing key is withdrawn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credential {
    /// Nothing that can go stale (anonymous, a client certificate).
    #[default]
    None,
    /// The SHA-256 of the API key.
    ApiKey([u8; 32]),
    /// A token's `exp` and the key that verified it (the whole JWK, not its `kid`: a token
    /// without `kid`, or new key material under an old `kid`, must not outlive the key).
    Jwt {
        exp: u64,
        key: Arc<jsonwebtoken::jwk::Jwk>,
    },
}

impl Principal {
    /// True for the principal of a request that brought no credentials.
    pub fn is_anonymous(&self) -> bool {
        self.id.is_empty()
    }

    pub fn anonymous() -> Self {
        // One shared "may send anything" for every anonymous request: no allocation each.
        static ANY: std::sync::LazyLock<Arc<Grants>> =
            std::sync::LazyLock::new(|| Arc::new(Grants::default()));
        Self {
            id: String::new(),
            authtype: AUTHTYPE_NONE,
            grants: ANY.clone(),
            credential: Credential::None,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authtype != AUTHTYPE_NONE
    }

    /// Authenticated and granted something: what `/metrics` (with `auth.protect_metrics`) and
    /// the details of `/health/detailed` ask. A client certificate with no entry in
    /// `auth.certificates_file` is authenticated (the CA signed it) but not known: a mesh CA
    /// signs every workload.
    pub fn is_known(&self) -> bool {
        self.is_authenticated() && self.grants.nothing.is_none()
    }
}

/// Glob patterns with the text they were written as, for messages.
struct Patterns {
    set: GlobSet,
    listed: String,
}

impl Patterns {
    fn new(patterns: &[String], what: &str) -> Result<Option<Self>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p).map_err(|e| format!("{what} `{p}`: {e}"))?);
        }
        Ok(Some(Self {
            set: b.build().map_err(|e| format!("{what}: {e}"))?,
            listed: patterns.join(", "),
        }))
    }
}

/// A principal's own token bucket (`rate_limit` of its API key entry).
pub struct OwnLimit {
    pub limiter: DefaultDirectRateLimiter,
    pub requests_per_second: u32,
    pub burst_size: u32,
}

/// What a principal may send: event types and sources (glob patterns; none = any), and its
/// own rate limit, if it has one (else the default per-client bucket applies).
#[derive(Default)]
pub struct Grants {
    types: Option<Patterns>,
    sources: Option<Patterns>,
    pub rate_limit: Option<OwnLimit>,
    /// May send nothing, and why (a client certificate with no entry).
    nothing: Option<String>,
}

/// One entry of `auth.api_keys_file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    /// Hex SHA-256 of the key.
    sha256: String,
    #[serde(default)]
    allowed_types: Vec<String>,
    #[serde(default)]
    allowed_sources: Vec<String>,
    rate_limit: Option<KeyRate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRate {
    requests_per_second: u32,
    burst_size: u32,
}

type KeyRing = HashMap<[u8; 32], Principal>;

/// The grants an entry of the keys or certificates file describes.
fn grants_of(
    types: &[String],
    sources: &[String],
    rate: Option<KeyRate>,
) -> Result<Grants, String> {
    let rate_limit = match rate {
        None => None,
        Some(r) => {
            let (Some(rps), Some(burst)) = (
                std::num::NonZeroU32::new(r.requests_per_second),
                std::num::NonZeroU32::new(r.burst_size),
            ) else {
                return Err("rate_limit values must be above 0".into());
            };
            Some(OwnLimit {
                limiter: RateLimiter::direct(Quota::per_second(rps).allow_burst(burst)),
                requests_per_second: rps.get(),
                burst_size: burst.get(),
            })
        }
    };
    Ok(Grants {
        types: Patterns::new(types, "allowed_types")?,
        sources: Patterns::new(sources, "allowed_sources")?,
        rate_limit,
        nothing: None,
    })
}

/// One entry of `auth.certificates_file`: what the client certificate whose identity (its
/// URI SAN, else DNS SAN, else CN, as the TLS layer reads it) is `san` may send.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    san: String,
    #[serde(default)]
    allowed_types: Vec<String>,
    #[serde(default)]
    allowed_sources: Vec<String>,
    rate_limit: Option<KeyRate>,
}

/// Certificate principals by identity.
type CertificateGrants = HashMap<String, Principal>;

/// Reads and checks a certificates file: every entry valid, identities unique.
fn load_certificates(path: &Path) -> Result<CertificateGrants, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read auth.certificates_file {}: {e}", path.display()))?;
    let entries: Vec<CertificateEntry> = serde_yaml::from_str(&text)
        .map_err(|e| format!("auth.certificates_file {}: {e}", path.display()))?;
    let mut out = CertificateGrants::new();
    for (i, e) in entries.into_iter().enumerate() {
        let at = |what: String| {
            format!(
                "auth.certificates_file {} [{i}] ({}): {what}",
                path.display(),
                e.san
            )
        };
        if e.san.is_empty() || out.contains_key(&e.san) {
            return Err(at("`san` must be present and unique".into()));
        }
        let grants = grants_of(&e.allowed_types, &e.allowed_sources, e.rate_limit).map_err(at)?;
        let principal = Principal {
            id: e.san.clone(),
            authtype: AUTHTYPE_SERVICE,
            grants: Arc::new(grants),
            credential: Credential::None,
        };
        out.insert(e.san, principal);
    }
    Ok(out)
}

/// Reads and checks an API keys file: every entry valid, ids and keys unique.
fn load_keys(path: &Path) -> Result<KeyRing, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read auth.api_keys_file {}: {e}", path.display()))?;
    // serde_yaml (already in the tree through figment) because the file is a top-level list,
    // which figment's providers cannot hold.
    let entries: Vec<KeyEntry> = serde_yaml::from_str(&text)
        .map_err(|e| format!("auth.api_keys_file {}: {e}", path.display()))?;
    let mut ring = KeyRing::new();
    let mut ids = std::collections::HashSet::new();
    for (i, e) in entries.into_iter().enumerate() {
        let at = |what: String| {
            format!(
                "auth.api_keys_file {} [{i}] ({}): {what}",
                path.display(),
                e.id
            )
        };
        if e.id.is_empty() || !ids.insert(e.id.clone()) {
            return Err(at("`id` must be present and unique".into()));
        }
        let digest: [u8; 32] = hex::decode(e.sha256.trim())
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| at("`sha256` must be 64 hex digits (the SHA-256 of the key)".into()))?;
        let grants = grants_of(&e.allowed_types, &e.allowed_sources, e.rate_limit).map_err(at)?;
        let principal = Principal {
            id: e.id.clone(),
            authtype: AUTHTYPE_API_KEY,
            grants: Arc::new(grants),
            credential: Credential::ApiKey(digest),
        };
        if ring.insert(digest, principal).is_some() {
            return Err(at("the same key (sha256) is listed twice".into()));
        }
    }
    Ok(ring)
}

/// JWT verification: the JWK Set in force and the claims every token must carry.
struct Jwt {
    keys: ArcSwap<jsonwebtoken::jwk::JwkSet>,
    file: PathBuf,
    config: JwtConfig,
    verified: Verified,
    /// Bumped (before the cache is cleared) whenever the key set is replaced: a verification
    /// that began under an older key set must not be remembered under the new one.
    generation: AtomicU64,
}

/// Tokens already verified, by SHA-256 of the token, with the principal and the token's
/// `exp`: a client sends the same token on every request until it expires, and an ES256
/// signature check costs more than the rest of the request (measured: single-event
/// throughput 0.34-0.41 of the same without auth when every request verified its token).
/// A hit is used only before `exp` (plus leeway); the whole map is dropped when the JWKS
/// reloads (a removed key must stop working at once) and when it reaches
/// [`VERIFIED_MAX`] entries. A plain map under a mutex rather than a cache crate: the one
/// eviction rule that matters, per-entry expiry at `exp`, is a comparison on read, and
/// clearing at a size cap bounds memory (only tokens that verified get in, so the size is
/// set by legitimate clients, not by a flood).
#[derive(Default)]
struct Verified(std::sync::Mutex<HashMap<[u8; 32], (Principal, u64, u64)>>);

const VERIFIED_MAX: usize = 10_000;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Caches a verification that began under key set `generation`, unless the key set was
/// replaced meanwhile: a verification racing a reload must not outlive it (the cache was
/// cleared at the reload, and an insert after the clear would bring the old key set's word
/// back until the token's `exp`).
fn remember(jwt: &Jwt, digest: [u8; 32], principal: &Principal, exp: u64, generation: u64) {
    let mut verified = jwt.verified.0.lock().expect("not poisoned");
    if jwt.generation.load(Ordering::Acquire) != generation {
        return;
    }
    if verified.len() >= VERIFIED_MAX {
        verified.clear();
    }
    verified.insert(digest, (principal.clone(), exp, generation));
}

/// Signature algorithms accepted: RSA, ECDSA P-256 and Ed25519; never `none` or HMAC (a
/// shared secret in a JWKS file would be a key anyone reading it could sign with).
const JWT_ALGORITHMS: &[jsonwebtoken::Algorithm] = &[
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::EdDSA,
];

fn load_jwks(path: &Path) -> Result<jsonwebtoken::jwk::JwkSet, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read auth.jwt.jwks_file {}: {e}", path.display()))?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("auth.jwt.jwks_file {}: not a JWK Set: {e}", path.display()))?;
    for k in &set.keys {
        jsonwebtoken::DecodingKey::from_jwk(k).map_err(|e| {
            format!(
                "auth.jwt.jwks_file {}: key {:?} is not usable: {e}",
                path.display(),
                k.common.key_id
            )
        })?;
    }
    Ok(set)
}

/// Why the authenticator could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(String);

/// Turns credentials into principals and decides what they may send.
/// One log line per kind of refusal per this period at most.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Authenticator {
    required: bool,
    keys: Option<(ArcSwap<KeyRing>, PathBuf)>,
    /// `auth.certificates_file`: what each client certificate may send.
    certificates: Option<(ArcSwap<CertificateGrants>, PathBuf)>,
    jwt: Option<Jwt>,
    failures: Counter<u64>,
    reload_failures: AtomicU64,
    /// Refusals are logged once per 10 s at most (per kind), with the count since the last
    /// line: a client cycling through bad keys must not fill the disk. `auth_failures`
    /// counts every one.
    unauthenticated_log: LogThrottle,
    forbidden_log: LogThrottle,
}

/// What a request presented. Secrets are borrowed, never kept.
#[derive(Default)]
pub struct Credentials<'a> {
    /// `Authorization: Bearer <token>`: an API key or a JWT.
    pub bearer: Option<&'a str>,
    /// `x-api-key: <key>`.
    pub api_key: Option<&'a str>,
    /// The subject (SAN, else CN) of the client certificate the TLS handshake verified.
    pub certificate: Option<&'a str>,
}

/// A JWT has three base64url parts; an API key need not look like one.
fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

impl Authenticator {
    pub fn new(config: &AuthConfig, meter: &Meter) -> Result<Arc<Self>, AuthError> {
        let keys = match &config.api_keys_file {
            Some(p) => Some((
                ArcSwap::from_pointee(load_keys(p).map_err(AuthError)?),
                p.clone(),
            )),
            None => None,
        };
        let jwt = match &config.jwt.jwks_file {
            Some(p) => Some(Jwt {
                keys: ArcSwap::from_pointee(load_jwks(p).map_err(AuthError)?),
                file: p.clone(),
                config: config.jwt.clone(),
                verified: Verified::default(),
                generation: AtomicU64::new(0),
            }),
            None => None,
        };
        let certificates = match &config.certificates_file {
            Some(p) => Some((
                ArcSwap::from_pointee(load_certificates(p).map_err(AuthError)?),
                p.clone(),
            )),
            None => None,
        };
        let failures = meter
            .u64_counter("auth_failures")
            .with_description("Requests refused by authentication or authorization, by reason")
            .build();
        for r in FAILURE_REASONS {
            failures.add(0, &[KeyValue::new("reason", *r)]);
        }
        let this = Arc::new(Self {
            required: config.required,
            keys,
            certificates,
            jwt,
            failures,
            reload_failures: AtomicU64::new(0),
            unauthenticated_log: LogThrottle::new(REFUSAL_LOG_EVERY),
            forbidden_log: LogThrottle::new(REFUSAL_LOG_EVERY),
        });
        let weak = Arc::downgrade(&this);
        meter
            .u64_observable_counter("auth_reload_failures")
            .with_description("API key or JWKS file reloads refused (the previous keys stay)")
            .with_callback(move |o| {
                if let Some(a) = weak.upgrade() {
                    o.observe(a.reload_failures.load(Ordering::Relaxed), &[]);
                }
            })
            .build();
        Ok(this)
    }

    /// Watches the key files (`watch::poll`) and swaps in what they hold when they change;
    /// a file that no longer loads keeps the keys in force.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> Option<notify::PollWatcher> {
        let files: Vec<PathBuf> = self
            .keys
            .iter()
            .map(|(_, p)| p.clone())
            .chain(self.certificates.iter().map(|(_, p)| p.clone()))
            .chain(self.jwt.iter().map(|j| j.file.clone()))
            .collect();
        let this = Arc::downgrade(self);
        crate::config::watch::poll(&files, interval, "API key and JWKS files", move || {
            if let Some(a) = this.upgrade() {
                a.reload();
            }
        })
    }

    fn reload(&self) {
        if let Some((ring, path)) = &self.keys {
            match load_keys(path) {
                Ok(new) => {
                    tracing::info!(keys = new.len(), file = %path.display(), "API keys reloaded");
                    ring.store(Arc::new(new));
                }
                Err(e) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "API keys not reloaded; the previous keys stay");
                }
            }
        }
        if let Some((grants, path)) = &self.certificates {
            match load_certificates(path) {
                Ok(new) => {
                    tracing::info!(certificates = new.len(), file = %path.display(), "certificate grants reloaded");
                    grants.store(Arc::new(new));
                }
                Err(e) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "certificate grants not reloaded; the previous ones stay");
                }
            }
        }
        if let Some(jwt) = &self.jwt {
            match load_jwks(&jwt.file) {
                Ok(new) => {
                    jwt.keys.store(Arc::new(new));
                    jwt.generation.fetch_add(1, Ordering::AcqRel);
                    jwt.verified.0.lock().expect("not poisoned").clear();
                }
                Err(e) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "JWKS not reloaded; the previous keys stay");
                }
            }
        }
    }

    /// Whether any way to authenticate is configured (else credentials are not looked at).
    pub fn enabled(&self) -> bool {
        self.keys.is_some() || self.jwt.is_some()
    }

    /// Who presented `c`. Credentials that do not check out are refused even when
    /// authentication is optional: a client with a wrong key should hear so, not be served
    /// as anonymous. An API key or token wins over a client certificate (it carries grants).
    pub fn authenticate(&self, c: &Credentials<'_>) -> Result<Principal, Error> {
        // With no keys configured, tokens mean nothing here (and are not an error).
        let token = if self.enabled() {
            c.api_key.or(c.bearer)
        } else {
            None
        };
        let result = match (token, c.certificate) {
            (Some(t), _) if self.jwt.is_some() && c.api_key.is_none() && looks_like_jwt(t) => {
                self.verify_jwt(t)
            }
            (Some(t), _) => self.check_key(t),
            (None, Some(subject)) => Ok(self.certificate_principal(subject)),
            (None, None) if self.required => Err((
                AuthFailure::Missing,
                "credentials are required: send `Authorization: Bearer <API key or token>` or `x-api-key: <key>`"
                    .to_owned(),
            )),
            (None, None) => Ok(Principal::anonymous()),
        };
        result.map_err(|(reason, message)| {
            self.failures
                .add(1, &[KeyValue::new("reason", reason.as_str())]);
            if let Some(refused) = self.unauthenticated_log.due() {
                tracing::info!(reason = reason.as_str(), %message, refused, "request refused: not authenticated (refused: how many since the last such line)");
            }
            Error::Unauthenticated { reason, message }
        })
    }

    /// The principal of a client certificate: its entry's grants in `auth.certificates_file`,
    /// or, with no entry (or no file), none at all: a certificate the CA signed proves who is
    /// calling, not what it may send.
    fn certificate_principal(&self, subject: &str) -> Principal {
        if let Some(p) = self
            .certificates
            .as_ref()
            .and_then(|(g, _)| g.load().get(subject).cloned())
        {
            return p;
        }
        Principal {
            id: subject.to_owned(),
            authtype: AUTHTYPE_SERVICE,
            grants: Arc::new(Grants {
                nothing: Some(format!(
                    "client certificate `{subject}` has no entry in auth.certificates_file: it may send nothing"
                )),
                ..Grants::default()
            }),
            credential: Credential::None,
        }
    }

    /// Whether the credential `p` was proven by still holds: its API key is still listed, its
    /// token has not expired and its signing key is still in the key set. For open streams,
    /// which authenticate once.
    pub fn still_valid(&self, p: &Principal) -> Result<(), Error> {
        let refused = |reason, message: &str| {
            self.failures
                .add(1, &[KeyValue::new("reason", AuthFailure::as_str(reason))]);
            Err(Error::Unauthenticated {
                reason,
                message: message.to_owned(),
            })
        };
        match &p.credential {
            Credential::None => Ok(()),
            Credential::ApiKey(digest) => {
                let listed = self
                    .keys
                    .as_ref()
                    .is_some_and(|(ring, _)| ring.load().contains_key(digest));
                if listed {
                    Ok(())
                } else {
                    refused(AuthFailure::Invalid, "the API key was revoked")
                }
            }
            Credential::Jwt { exp, key } => {
                let Some(jwt) = &self.jwt else {
                    return refused(AuthFailure::Invalid, "tokens are no longer accepted");
                };
                if unix_now() > exp.saturating_add(jwt.config.leeway.as_secs()) {
                    return refused(AuthFailure::Expired, "token expired");
                }
                if !jwt.keys.load().keys.iter().any(|k| k == key.as_ref()) {
                    return refused(
                        AuthFailure::Invalid,
                        "the token's signing key was withdrawn from auth.jwt.jwks_file",
                    );
                }
                Ok(())
            }
        }
    }

    fn check_key(&self, key: &str) -> Result<Principal, (AuthFailure, String)> {
        let Some((ring, _)) = &self.keys else {
            return Err((
                AuthFailure::Invalid,
                "API keys are not configured on this gateway (auth.api_keys_file)".into(),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let ring = ring.load();
        match ring.get_key_value(&digest) {
            Some((stored, p)) if bool::from(stored.ct_eq(&digest)) => Ok(p.clone()),
            _ => Err((AuthFailure::Invalid, "unknown API key".into())),
        }
    }

    fn verify_jwt(&self, token: &str) -> Result<Principal, (AuthFailure, String)> {
        let jwt = self.jwt.as_ref().expect("checked by the caller");
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        let generation = jwt.generation.load(Ordering::Acquire);
        if let Some((p, exp, g)) = jwt.verified.0.lock().expect("not poisoned").get(&digest)
            && *g == generation
            && now <= exp.saturating_add(jwt.config.leeway.as_secs())
        {
            return Ok(p.clone());
        }
        let (principal, exp) = self.verify_jwt_signature(jwt, token)?;
        remember(jwt, digest, &principal, exp, generation);
        Ok(principal)
    }

    /// The full check: signature, algorithm, `exp`, `nbf`, `iss`, `aud`, `sub`; returns the
    /// principal and the token's `exp`.
    fn verify_jwt_signature(
        &self,
        jwt: &Jwt,
        token: &str,
    ) -> Result<(Principal, u64), (AuthFailure, String)> {
        use jsonwebtoken::errors::ErrorKind;
        let invalid = |m: String| (AuthFailure::Invalid, m);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(format!("malformed token: {e}")))?;
        if !JWT_ALGORITHMS.contains(&header.alg) {
            return Err(invalid(format!(
                "token algorithm {:?} is not accepted (RS256, ES256, EdDSA)",
                header.alg
            )));
        }
        let keys = jwt.keys.load();
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| invalid("no key of auth.jwt.jwks_file matches the token's `kid`".into()))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
            .map_err(|e| invalid(format!("signing key unusable: {e}")))?;
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.leeway = jwt.config.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        if let Some(iss) = &jwt.config.issuer {
            v.set_issuer(&[iss]);
        }
        if let Some(aud) = &jwt.config.audience {
            v.set_audience(&[aud]);
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => {
                        (AuthFailure::Expired, "token expired".to_owned())
                    }
                    ErrorKind::ImmatureSignature => invalid("token not yet valid (nbf)".into()),
                    ErrorKind::InvalidAudience => {
                        invalid("token audience is not this gateway's".into())
                    }
                    ErrorKind::InvalidIssuer => invalid("token issuer is not trusted".into()),
                    ErrorKind::InvalidSignature => {
                        invalid("token signature does not verify".into())
                    }
                    _ => invalid(format!("token refused: {e}")),
                })?;
        let sub = data
            .claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("token has no `sub`".into()))?;
        let types = match &jwt.config.types_claim {
            None => None,
            Some(claim) => {
                let listed: Vec<String> = match data.claims.get(claim) {
                    Some(serde_json::Value::Array(a)) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    Some(serde_json::Value::String(s)) => {
                        s.split_whitespace().map(str::to_owned).collect()
                    }
                    _ => Vec::new(),
                };
                // A token without the claim may send nothing rather than everything.
                let listed = if listed.is_empty() {
                    vec![String::new()]
                } else {
                    listed
                };
                Patterns::new(&listed, claim).map_err(invalid)?
            }
        };
        let exp = data
            .claims
            .get("exp")
            .and_then(|e| e.as_u64())
            .ok_or_else(|| invalid("token `exp` is not a number of seconds".into()))?;
        let principal = Principal {
            id: sub.to_owned(),
            authtype: AUTHTYPE_SERVICE,
            grants: Arc::new(Grants {
                types,
                ..Grants::default()
            }),
            credential: Credential::Jwt {
                exp,
                key: Arc::new(jwk.clone()),
            },
        };
        Ok((principal, exp))
    }

    /// Whether `principal` may send every one of `events` (named `prefix(i)` in the
    /// violations): all-or-nothing, like validation. Refusals are counted and logged.
    pub fn authorize(
        &self,
        principal: &Principal,
        events: &[Event],
        name: impl Fn(usize) -> String,
    ) -> Result<(), Error> {
        let g = &principal.grants;
        if let Some(why) = &g.nothing {
            self.failures
                .add(1, &[KeyValue::new("reason", "forbidden_type")]);
            return Err(Error::PermissionDenied(
                (0..events.len())
                    .map(|i| FieldViolation::new(name(i), why.clone()))
                    .collect(),
            ));
        }
        if g.types.is_none() && g.sources.is_none() {
            return Ok(());
        }
        let who = if principal.id.is_empty() {
            "anonymous"
        } else {
            &principal.id
        };
        let mut violations = Vec::new();
        let mut reason = "forbidden_type";
        for (i, e) in events.iter().enumerate() {
            if let Some(t) = &g.types
                && !t.set.is_match(&e.ty)
            {
                violations.push(FieldViolation::new(
                    format!("{}.type", name(i)),
                    format!(
                        "principal `{who}` may not send type `{}`; it may send {}",
                        e.ty, t.listed
                    ),
                ));
            }
            if let Some(s) = &g.sources
                && !s.set.is_match(&e.source)
            {
                if violations.is_empty() {
                    reason = "forbidden_source";
                }
                violations.push(FieldViolation::new(
                    format!("{}.source", name(i)),
                    format!(
                        "principal `{who}` may not send source `{}`; it may send {}",
                        e.source, s.listed
                    ),
                ));
            }
        }
        if violations.is_empty() {
            return Ok(());
        }
        self.failures.add(1, &[KeyValue::new("reason", reason)]);
        if let Some(refused) = self.forbidden_log.due() {
            tracing::info!(
                principal = who,
                reason,
                refused,
                "request refused: not authorized (refused: how many since the last such line)"
            );
        }
        Err(Error::PermissionDenied(violations))
    }
}

/// Sets the CloudEvents Auth Context extension from `principal`, replacing whatever the
/// client sent under those names: provenance is the gateway's word, never the client's.
pub fn stamp(principal: &Principal, event: &mut Event) {
    event
        .extensions
        .insert("authtype".into(), principal.authtype.into());
    if principal.id.is_empty() {
        event.extensions.remove("authid");
    } else {
        event
            .extensions
            .insert("authid".into(), principal.id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> Jwt {
        Jwt {
            keys: ArcSwap::from_pointee(jsonwebtoken::jwk::JwkSet { keys: Vec::new() }),
            file: PathBuf::from("unused.json"),
            config: JwtConfig::default(),
            verified: Verified::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// Issue #24 item 6, the interleaving forced: a verification reads the generation, the
    /// key set is replaced (generation bumped, cache cleared) while its signature check
    /// runs, then it tries to remember its result. It must not land in the cleared cache.
    #[test]
    fn a_verification_that_raced_a_reload_is_not_remembered() {
        let jwt = jwt();
        let digest = [7u8; 32];
        let exp = unix_now() + 3600;
        let began_under = jwt.generation.load(Ordering::Acquire);
        // The reload, exactly as `Authenticator::reload` does it.
        jwt.generation.fetch_add(1, Ordering::AcqRel);
        jwt.verified.0.lock().unwrap().clear();
        remember(&jwt, digest, &Principal::anonymous(), exp, began_under);
        assert!(
            jwt.verified.0.lock().unwrap().get(&digest).is_none(),
            "a verification under the old key set was cached after the reload"
        );
        // A verification that began under the current key set is remembered.
        let now_under = jwt.generation.load(Ordering::Acquire);
        remember(&jwt, digest, &Principal::anonymous(), exp, now_under);
        let cached = jwt.verified.0.lock().unwrap().get(&digest).map(|e| e.2);
        assert_eq!(cached, Some(now_under));
    }
}
