//! Identity providers: the JWT signing keys of `auth.jwt.jwks_url`, or of the `jwks_uri` that
//! OpenID Connect discovery finds from `auth.jwt.issuer`. Fetched once before the gateway
//! serves (it does not start without them), then refreshed in a task of its own: when the
//! provider's `Cache-Control: max-age` says (clamped to `jwks_refresh_min`..`jwks_refresh_max`;
//! no `max-age`: the max), and again when a token names a `kid` the set lacks, at most once per
//! `jwks_refresh_min` so that made-up `kid`s cannot make the gateway hammer the provider. A
//! failed fetch keeps the last good set (readiness is not touched), is counted in
//! `auth_jwks_fetches_total{outcome="error"}` and logged, and is retried after
//! `jwks_refresh_min`, doubling to `jwks_refresh_max`. Every fetch is bounded: 10 s, 1 MiB,
//! three redirects, each held to the HTTPS-or-loopback rule.
//!
//! Above the core: it hands the set over through `Authenticator::replace_provider_keys`;
//! the core never does I/O towards a provider.
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter};
use tokio::time::Instant;

use crate::config::{JwtConfig, provider_url};
use crate::core::auth::Authenticator;
use crate::telemetry::throttle::LogThrottle;

/// The most bytes a discovery document or a key set may have: real ones are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// The bound on one fetch, connecting included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed at most (each to an HTTPS or loopback URL).
pub const MAX_REDIRECTS: usize = 3;

/// Why the provider's keys could not be fetched.
#[derive(Debug, thiserror::Error)]
#[error("identity provider: {0}")]
pub struct FetchError(String);

/// The provider's keys, kept fresh while it lives (the refresh task is aborted on drop).
pub struct KeyFetcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyFetcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One source of keys and how to reach it.
struct Source {
    client: reqwest::Client,
    config: JwtConfig,
    fetches: Counter<u64>,
}

impl KeyFetcher {
    /// With `auth.jwt.jwks_url` or `discovery`: fetches the keys, puts them in force in
    /// `auth`, and starts refreshing them on the current runtime. `None` without either.
    pub async fn start(
        config: &JwtConfig,
        auth: Arc<Authenticator>,
        meter: &Meter,
    ) -> Result<Option<Self>, FetchError> {
        if !config.fetches_keys() {
            return Ok(None);
        }
        let fetches = meter
            .u64_counter("auth_jwks_fetches")
            .with_description(
                "Fetches of the identity provider's signing keys (auth.jwt), by outcome: ok, error",
            )
            .build();
        for outcome in ["ok", "error"] {
            fetches.add(0, &[KeyValue::new("outcome", outcome)]);
        }
        let source = Source {
            client: client(config)?,
            config: config.clone(),
            fetches,
        };
        let (keys, ttl) = source.fetch().await?;
        tracing::info!(keys = keys.keys.len(), refresh_in = ?ttl, "identity provider's signing keys fetched");
        auth.replace_provider_keys(keys);
        let task = tokio::spawn(source.refresh(auth, ttl));
        Ok(Some(Self { task }))
    }
}

/// The HTTP client: bounded in time, redirects held to the URL rule, the extra CAs trusted.
fn client(config: &JwtConfig) -> Result<reqwest::Client, FetchError> {
    let plain = plain_http_allowed(config);
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        // `previous()` holds the URL first asked for, then each redirect followed.
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if let Err(why) = followable(attempt.url().as_str(), plain) {
            let to = attempt.url().to_string();
            attempt.error(format!("redirected to {to}: {why}"))
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(policy)
        .user_agent(concat!("event-gateway/", env!("CARGO_PKG_VERSION")));
    if plain {
        // A loopback provider is reached directly: a proxy from HTTP_PROXY / ALL_PROXY would
        // see the plain-HTTP request and reach its own loopback, not ours.
        builder = builder.no_proxy();
    }
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| FetchError(format!("auth.jwt.ca_file {}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| FetchError(format!("auth.jwt.ca_file {}: {e}", path.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| FetchError(format!("cannot build the HTTP client: {e}")))
}

/// Whether plain HTTP may be followed at all: only when the configured URL (`jwks_url`, else
/// the issuer) is itself plain HTTP to loopback. A provider reached over HTTPS can never send
/// the gateway to plain HTTP, not even on the loopback (a sidecar's admin port).
fn plain_http_allowed(config: &JwtConfig) -> bool {
    let configured = config
        .jwks_url
        .as_deref()
        .or(config.issuer.as_deref())
        .unwrap_or_default();
    configured
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        && provider_url(configured).is_ok()
}

/// A URL the provider sends the gateway to (a redirect, discovery's `jwks_uri`): the
/// configuration's rule ([`provider_url`]), and plain HTTP only where it began so.
fn followable(url: &str, plain: bool) -> Result<(), String> {
    provider_url(url)?;
    if !plain
        && !url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        return Err("a provider reached over HTTPS may not send the gateway to plain HTTP".into());
    }
    Ok(())
}

impl Source {
    /// The keys and how long they may be kept.
    async fn fetch(&self) -> Result<(jsonwebtoken::jwk::JwkSet, Duration), FetchError> {
        let outcome = self.fetch_once().await;
        let label = if outcome.is_ok() { "ok" } else { "error" };
        self.fetches.add(1, &[KeyValue::new("outcome", label)]);
        outcome
    }

    async fn fetch_once(&self) -> Result<(jsonwebtoken::jwk::JwkSet, Duration), FetchError> {
        let jwks_url = match &self.config.jwks_url {
            Some(url) => url.clone(),
            None => self.discover().await?,
        };
        let (body, max_age) = self.get(&jwks_url).await?;
        let keys = signing_keys(&body).map_err(|e| FetchError(format!("{jwks_url}: {e}")))?;
        let ttl = max_age
            .unwrap_or(self.config.jwks_refresh_max)
            .clamp(self.config.jwks_refresh_min, self.config.jwks_refresh_max);
        Ok((keys, ttl))
    }

    /// OpenID Connect Discovery 1.0: the `jwks_uri` of `issuer`'s configuration, whose own
    /// `issuer` must be the configured one exactly (section 4.3).
    async fn discover(&self) -> Result<String, FetchError> {
        #[derive(serde::Deserialize)]
        struct Configuration {
            issuer: String,
            jwks_uri: String,
        }
        let issuer = self.config.issuer.as_deref().unwrap_or_default();
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let (body, _) = self.get(&url).await?;
        let c: Configuration = serde_json::from_slice(&body)
            .map_err(|e| FetchError(format!("{url}: not an OpenID provider configuration: {e}")))?;
        if c.issuer != issuer {
            return Err(FetchError(format!(
                "{url} names issuer `{}`, not auth.jwt.issuer `{issuer}`",
                c.issuer
            )));
        }
        followable(&c.jwks_uri, plain_http_allowed(&self.config))
            .map_err(|why| FetchError(format!("{url}: jwks_uri `{}`: {why}", c.jwks_uri)))?;
        Ok(c.jwks_uri)
    }

    /// GETs `url`: the body (at most [`MAX_DOCUMENT_BYTES`], read no further) and the
    /// reply's `max-age`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let fail = |e: String| FetchError(format!("{url}: {e}"));
        let mut resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(fail(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(fail(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    /// Refreshes until aborted: after `ttl`, or when a token names an unknown `kid` (no
    /// sooner than `jwks_refresh_min` after the last fetch); after a failure, again after
    /// `jwks_refresh_min`, doubling up to `jwks_refresh_max`.
    async fn refresh(self, auth: Arc<Authenticator>, ttl: Duration) {
        let Some(unknown_kid) = auth.unknown_kid() else {
            return;
        };
        let (min, max) = (self.config.jwks_refresh_min, self.config.jwks_refresh_max);
        let failed_log = LogThrottle::new(min);
        let mut last = Instant::now();
        let mut wait = ttl;
        let mut backoff = min;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(last + wait) => {}
                _ = unknown_kid.notified() => {
                    tokio::time::sleep_until(last + min).await;
                }
            }
            last = Instant::now();
            match self.fetch().await {
                Ok((keys, ttl)) => {
                    let before = auth.jwt_key_ids();
                    if auth.replace_provider_keys(keys) {
                        tracing::info!(was = ?before, now = ?auth.jwt_key_ids(), "identity provider's signing keys changed");
                    }
                    wait = ttl;
                    backoff = min;
                }
                Err(e) => {
                    if let Some(n) = failed_log.due() {
                        tracing::warn!(error = %e, failures = n, retry_in = ?backoff, "identity provider's keys not refreshed; the last good set stays in force");
                    }
                    wait = backoff;
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    }
}

/// The usable signing keys of a JWK Set: keys for encryption (`use: enc`) and keys of a type
/// the gateway cannot verify with are skipped (providers publish both); none left is an
/// error, so a broken set never replaces a good one.
fn signing_keys(body: &[u8]) -> Result<jsonwebtoken::jwk::JwkSet, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a JWK Set: {e}"))?;
    let keys: Vec<Jwk> = raw
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter(|k| !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption)))
        // Public keys only: a shared secret (`oct`) is never a provider's signing key here
        // (HMAC is not accepted, `core::auth::jwt::JWT_ALGORITHMS`).
        .filter(|k| {
            matches!(
                k.algorithm,
                AlgorithmParameters::RSA(_)
                    | AlgorithmParameters::EllipticCurve(_)
                    | AlgorithmParameters::OctetKeyPair(_)
            )
        })
        .filter(|k| jsonwebtoken::DecodingKey::from_jwk(k).is_ok())
        .collect();
    if keys.is_empty() {
        return Err("no usable signing key (RSA, EC P-256 or Ed25519) in the set".into());
    }
    Ok(jsonwebtoken::jwk::JwkSet { keys })
}

/// `max-age` of a `Cache-Control` value (`no-cache` and `no-store` count as 0). Read by hand:
/// one directive of one header, where a caching crate would bring a whole cache policy.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| {
        let d = d.to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return Some(Duration::ZERO);
        }
        d.strip_prefix("max-age=")?
            .trim_matches('"')
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}

/// An error with its causes, as one line (reqwest's own display stops at the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider reached over HTTPS cannot send the gateway to plain HTTP, not even on the
    /// loopback; one configured on plain loopback HTTP may stay there.
    #[test]
    fn https_providers_cannot_send_the_gateway_to_plain_http() {
        let mut c = JwtConfig {
            jwks_url: Some("https://idp.example/keys".into()),
            ..JwtConfig::default()
        };
        assert!(!plain_http_allowed(&c));
        assert!(followable("http://127.0.0.1:9/keys", false).is_err());
        assert!(followable("https://idp.example/other", false).is_ok());
        c.jwks_url = Some("http://127.0.0.1:8080/keys".into());
        assert!(plain_http_allowed(&c));
        assert!(followable("http://127.0.0.1:9/keys", true).is_ok());
        assert!(followable("http://idp.example/keys", true).is_err());
        let discovery = JwtConfig {
            discovery: true,
            issuer: Some("https://idp.example".into()),
            ..JwtConfig::default()
        };
        assert!(!plain_http_allowed(&discovery));
    }

    #[test]
    fn max_age_reads_the_directive_and_no_cache_is_zero() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn encryption_and_unusable_keys_are_skipped_and_none_left_is_an_error() {
        let set = br#"{"keys":[
            {"kty":"RSA","use":"enc","kid":"e","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"RSA","use":"sig","kid":"s","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"weird"}
        ]}"#;
        let keys = signing_keys(set).unwrap();
        let kids: Vec<_> = keys.keys.iter().map(|k| k.common.key_id.clone()).collect();
        assert_eq!(kids, [Some("s".to_owned())]);
        assert!(signing_keys(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(signing_keys(b"<html>").is_err());
    }
}
