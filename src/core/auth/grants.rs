//! What a principal may send: its grants (event types and sources as glob patterns, its own
//! rate limit) as the API keys file and the certificates file state them, and loading
//! `auth.certificates_file` (grants by certificate subject).
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use super::{AUTHTYPE_SERVICE, Credential, Principal};

/// Glob patterns with the text they were written as, for messages.
pub(super) struct Patterns {
    pub(super) set: GlobSet,
    pub(super) listed: String,
}

impl Patterns {
    pub(super) fn new(patterns: &[String], what: &str) -> Result<Option<Self>, String> {
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
    pub(super) types: Option<Patterns>,
    pub(super) sources: Option<Patterns>,
    pub rate_limit: Option<OwnLimit>,
    /// May send nothing, and why (a client certificate with no entry).
    pub(super) nothing: Option<String>,
}

/// The grants an entry of the keys or certificates file describes.
pub(super) fn grants_of(
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
pub(super) struct CertificateEntry {
    san: String,
    #[serde(default)]
    allowed_types: Vec<String>,
    #[serde(default)]
    allowed_sources: Vec<String>,
    rate_limit: Option<KeyRate>,
}

/// Certificate principals by identity.
pub(super) type CertificateGrants = HashMap<String, Principal>;

/// Reads and checks a certificates file: every entry valid, identities unique.
pub(super) fn load_certificates(path: &Path) -> Result<CertificateGrants, String> {
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
            id: e.san.as_str().into(),
            authtype: AUTHTYPE_SERVICE,
            grants: Arc::new(grants),
            credential: Credential::None,
            forwarded: None,
        };
        out.insert(e.san, principal);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyRate {
    requests_per_second: u32,
    burst_size: u32,
}
