//! API keys: `auth.api_keys_file` loaded into a ring keyed by SHA-256 digest (keys are never
//! stored), and the constant-time check of a presented key.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::core::error::AuthFailure;

use super::grants::{KeyRate, grants_of};
use super::{AUTHTYPE_API_KEY, Authenticator, Credential, Principal};

/// One entry of `auth.api_keys_file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyEntry {
    id: String,
    /// Hex SHA-256 of the key.
    sha256: String,
    #[serde(default)]
    allowed_types: Vec<String>,
    #[serde(default)]
    allowed_sources: Vec<String>,
    rate_limit: Option<KeyRate>,
}

pub(super) type KeyRing = HashMap<[u8; 32], Principal>;

/// Reads and checks an API keys file: every entry valid, ids and keys unique.
pub(super) fn load_keys(path: &Path) -> Result<KeyRing, String> {
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
            id: e.id.as_str().into(),
            authtype: AUTHTYPE_API_KEY,
            grants: Arc::new(grants),
            credential: Credential::ApiKey(digest),
            forwarded: None,
        };
        if ring.insert(digest, principal).is_some() {
            return Err(at("the same key (sha256) is listed twice".into()));
        }
    }
    Ok(ring)
}

impl Authenticator {
    pub(super) fn check_key(&self, key: &str) -> Result<Principal, (AuthFailure, String)> {
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
}
