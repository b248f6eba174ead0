//! JWT bearer tokens: the JWKS from `auth.jwt.jwks_file` (or an identity provider's, fetched
//! by `crate::idp`), the full check (signature,
//! algorithm, `exp`, `nbf`, `iss`, `aud`, `sub`), and a bounded memory of verified tokens tied
//! to the key set's generation, so a token is verified once and forgotten when the keys change.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};

use crate::config::JwtConfig;
use crate::core::error::AuthFailure;

use super::grants::{Grants, Patterns};
use super::{AUTHTYPE_SERVICE, Authenticator, Credential, Principal};

/// JWT verification: the JWK Set in force and the claims every token must carry.
pub(super) struct Jwt {
    pub(super) keys: ArcSwap<jsonwebtoken::jwk::JwkSet>,
    /// `auth.jwt.jwks_file`, reloaded when it changes; `None` for a provider's keys, which
    /// `crate::idp` fetches and hands over.
    pub(super) file: Option<PathBuf>,
    pub(super) config: JwtConfig,
    pub(super) verified: Verified,
    /// Bumped (before the cache is cleared) whenever the key set is replaced: a verification
    /// that began under an older key set must not be remembered under the new one.
    pub(super) generation: AtomicU64,
    /// Notified when a token names a `kid` the set lacks (see `Authenticator::unknown_kid`).
    pub(super) unknown_kid: tokio::sync::Notify,
}

impl Jwt {
    /// Puts `keys` in force: the generation bumped before the memory of verified tokens is
    /// cleared, so a verification racing the swap is not remembered ([`remember`]).
    pub(super) fn replace_keys(&self, keys: jsonwebtoken::jwk::JwkSet) {
        self.keys.store(Arc::new(keys));
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.verified.0.lock().expect("not poisoned").clear();
    }
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
pub(super) struct Verified(pub(super) std::sync::Mutex<HashMap<[u8; 32], (Principal, u64, u64)>>);

pub(super) const VERIFIED_MAX: usize = 10_000;

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Caches a verification that began under key set `generation`, unless the key set was
/// replaced meanwhile: a verification racing a reload must not outlive it (the cache was
/// cleared at the reload, and an insert after the clear would bring the old key set's word
/// back until the token's `exp`).
pub(super) fn remember(
    jwt: &Jwt,
    digest: [u8; 32],
    principal: &Principal,
    exp: u64,
    generation: u64,
) {
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
pub(super) const JWT_ALGORITHMS: &[jsonwebtoken::Algorithm] = &[
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::EdDSA,
];

pub(super) fn load_jwks(path: &Path) -> Result<jsonwebtoken::jwk::JwkSet, String> {
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

/// A JWT has three base64url parts; an API key need not look like one.
pub(super) fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

impl Authenticator {
    pub(super) fn verify_jwt(&self, token: &str) -> Result<Principal, (AuthFailure, String)> {
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
    /// principal and the token's `exp`. One piece on purpose: each check names its own
    /// refusal, in the order a reader of RFC 7519 expects, and splitting it would scatter them.
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
        .ok_or_else(|| {
            if jwt.file.is_none() && header.kid.is_some() {
                // Perhaps the provider rotated: the fetcher looks again (rate-limited).
                jwt.unknown_kid.notify_one();
                invalid("no key of the identity provider's key set matches the token's `kid` (the keys are being fetched again; retry shortly)".into())
            } else {
                invalid("no key of auth.jwt.jwks_file matches the token's `kid`".into())
            }
        })?;
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
            id: sub.into(),
            authtype: AUTHTYPE_SERVICE,
            grants: Arc::new(Grants {
                types,
                ..Grants::default()
            }),
            credential: Credential::Jwt {
                exp,
                key: Arc::new(jwk.clone()),
            },
            forwarded: None,
        };
        Ok((principal, exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> Jwt {
        Jwt {
            keys: ArcSwap::from_pointee(jsonwebtoken::jwk::JwkSet { keys: Vec::new() }),
            file: Some(PathBuf::from("unused.json")),
            config: JwtConfig::default(),
            verified: Verified::default(),
            generation: AtomicU64::new(0),
            unknown_kid: tokio::sync::Notify::new(),
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
        // The reload, exactly as `Authenticator::reload` and the provider's fetcher do it.
        jwt.replace_keys(jsonwebtoken::jwk::JwkSet { keys: Vec::new() });
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
