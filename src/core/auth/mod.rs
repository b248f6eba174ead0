//! Who is calling and what they may send. The [`Authenticator`] turns what a request presents
//! (an API key, a JWT bearer token, the subject of a verified client certificate) into a
//! [`Principal`], or into `Error::Unauthenticated`; it holds the API keys (from
//! `auth.api_keys_file`) and the JWT signing keys (from `auth.jwt.jwks_file`), each swapped
//! whole when its file changes. The core asks it whether a principal may send an event
//! ([`Authenticator::authorize`]) and stamps the CloudEvents Auth Context extension
//! (`authtype`, `authid`) on every event ([`stamp`]). It imports nothing from tonic, axum or
//! http: the shared stack reads the credentials off the request and calls it. `keys` holds the
//! API keys, `jwt` the token checks and their memory, `grants` what a principal may send.
//!
//! API keys are never stored: the file holds their SHA-256. A presented key is hashed and
//! looked up by digest, then the digests are compared with `subtle`'s constant-time
//! equality; the lookup's timing depends only on the digest of what the client sent, which
//! tells it nothing about any real key.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};

use crate::config::AuthConfig;
use crate::core::error::{AuthFailure, Error, FieldViolation};
use crate::core::event::{AuthContext, Event};
use crate::telemetry::throttle::LogThrottle;

mod grants;
mod jwt;
mod keys;

use grants::{CertificateGrants, load_certificates};
pub use grants::{Grants, OwnLimit};
use jwt::{Jwt, Verified, load_jwks, looks_like_jwt, unix_now};
use keys::{KeyRing, load_keys};

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
    /// Shared: every event of a request (of a stream) carries it as `authid`.
    pub id: Arc<str>,
    pub authtype: &'static str,
    pub grants: Arc<Grants>,
    /// What the principal was proven by, to check again later (an open stream).
    pub credential: Credential,
    /// The request's headers named by `kafka.forward_headers`, put here by the stack beside
    /// who sent them: [`stamp`] copies them onto every event the request brings (a stream's
    /// are those it opened with).
    pub forwarded: Option<crate::core::event::Forwarded>,
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
        // One shared principal (its "may send anything", its empty id) for every anonymous
        // request: no allocation each.
        static ANONYMOUS: std::sync::LazyLock<Principal> = std::sync::LazyLock::new(|| Principal {
            id: "".into(),
            authtype: AUTHTYPE_NONE,
            grants: Arc::new(Grants::default()),
            credential: Credential::None,
            forwarded: None,
        });
        ANONYMOUS.clone()
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
                file: Some(p.clone()),
                config: config.jwt.clone(),
                verified: Verified::default(),
                generation: AtomicU64::new(0),
                unknown_kid: tokio::sync::Notify::new(),
            }),
            // The identity provider's keys (`jwks_url`, `discovery`): none until the fetcher
            // (`crate::idp`) hands over the first set, which it does before serving.
            None if config.jwt.fetches_keys() => Some(Jwt {
                keys: ArcSwap::from_pointee(jsonwebtoken::jwk::JwkSet { keys: Vec::new() }),
                file: None,
                config: config.jwt.clone(),
                verified: Verified::default(),
                generation: AtomicU64::new(0),
                unknown_kid: tokio::sync::Notify::new(),
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
            .chain(self.jwt.iter().filter_map(|j| j.file.clone()))
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
        if let Some((jwt, file)) = self.jwt.as_ref().and_then(|j| Some((j, j.file.as_ref()?))) {
            match load_jwks(file) {
                Ok(new) => {
                    jwt.replace_keys(new);
                }
                Err(e) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "JWKS not reloaded; the previous keys stay");
                }
            }
        }
    }

    /// Puts the identity provider's freshly fetched key set in force (`crate::idp`); false
    /// when it is the set already in force (then remembered tokens stay remembered).
    pub fn replace_provider_keys(&self, keys: jsonwebtoken::jwk::JwkSet) -> bool {
        match &self.jwt {
            Some(jwt) if *jwt.keys.load_full() != keys => {
                jwt.replace_keys(keys);
                true
            }
            _ => false,
        }
    }

    /// Signalled when a token names a `kid` the key set in force lacks: the fetcher's cue to
    /// fetch the provider's keys again (at most once per `auth.jwt.jwks_refresh_min`).
    pub fn unknown_kid(&self) -> Option<&tokio::sync::Notify> {
        self.jwt.as_ref().map(|j| &j.unknown_kid)
    }

    /// The `kid`s of the key set in force (for the fetcher's log lines).
    pub fn jwt_key_ids(&self) -> Vec<String> {
        self.jwt
            .as_ref()
            .map(|j| {
                j.keys
                    .load()
                    .keys
                    .iter()
                    .map(|k| k.common.key_id.clone().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
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
            id: subject.into(),
            authtype: AUTHTYPE_SERVICE,
            grants: Arc::new(Grants {
                nothing: Some(format!(
                    "client certificate `{subject}` has no entry in auth.certificates_file: it may send nothing"
                )),
                ..Grants::default()
            }),
            credential: Credential::None,
            forwarded: None,
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
                        "the token's signing key was withdrawn from the key set (auth.jwt)",
                    );
                }
                Ok(())
            }
        }
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
/// client sent under those names: provenance is the gateway's word, never the client's. And
/// the request's forwarded headers (`kafka.forward_headers`), which travel with the event.
pub fn stamp(principal: &Principal, event: &mut Event) {
    event.forwarded.clone_from(&principal.forwarded);
    if !event.extensions.is_empty() {
        event.extensions.remove("authtype");
        event.extensions.remove("authid");
    }
    event.auth = Some(AuthContext {
        authtype: principal.authtype,
        authid: (!principal.id.is_empty()).then(|| principal.id.clone()),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Data;

    fn event_claiming(authtype: &str, authid: &str) -> Event {
        Event {
            id: "1".into(),
            source: "s".into(),
            ty: "t".into(),
            subject: None,
            time: chrono::DateTime::UNIX_EPOCH,
            datacontenttype: None,
            dataschema: None,
            data: Data::None,
            extensions: [
                ("authid".to_owned(), authid.to_owned()),
                ("authtype".to_owned(), authtype.to_owned()),
                ("x".to_owned(), "y".to_owned()),
            ]
            .into(),
            topic: None,
            forwarded: None,
            auth: None,
        }
    }

    /// Provenance is the gateway's word: what the client claimed under the Auth Context's
    /// names is replaced (an anonymous request's `authid` dropped), other extensions kept.
    #[test]
    fn stamp_replaces_a_claimed_auth_context() {
        let mut e = event_claiming("system", "root");
        stamp(&Principal::anonymous(), &mut e);
        let all: Vec<_> = e.extensions_all().collect();
        assert_eq!(all, [("authtype", AUTHTYPE_NONE), ("x", "y")]);

        let mut e = event_claiming("system", "root");
        let mut p = Principal::anonymous();
        p.id = "team-a".into();
        p.authtype = AUTHTYPE_API_KEY;
        stamp(&p, &mut e);
        let all: Vec<_> = e.extensions_all().collect();
        assert_eq!(
            all,
            [
                ("authid", "team-a"),
                ("authtype", AUTHTYPE_API_KEY),
                ("x", "y")
            ]
        );
    }
}
