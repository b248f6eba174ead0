//! Who may call: `auth.*` (API keys, JWT, certificate grants, protected metrics, health
//! details) and `tls.*` (the listener's certificate and client CA).
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::de::some_list_or_csv;
use super::parse_cidr;

/// `auth`: who may send, and what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Refuse ingest requests without valid credentials (401 / UNAUTHENTICATED). Off by
    /// default: anyone who can reach the port may send any event.
    pub required: bool,
    /// A YAML list of API keys (`id`, `sha256`, `allowed_types`, `allowed_sources`,
    /// `rate_limit`), reloaded when it changes.
    pub api_keys_file: Option<PathBuf>,
    /// A YAML list of client certificates (`san`, `allowed_types`, `allowed_sources`,
    /// `rate_limit`), reloaded when it changes. A certificate with no entry may send nothing.
    pub certificates_file: Option<PathBuf>,
    pub jwt: JwtConfig,
    /// Put `metrics.path` behind the same authentication.
    pub protect_metrics: bool,
    /// Who sees all of `/health/detailed` (broker addresses, the configuration, internal
    /// errors); everyone else gets its status lines only.
    pub health_details: HealthDetails,
    /// With `health_details: local_or_authenticated`, the client addresses (CIDR blocks or
    /// addresses) that see the details without credentials; the client's address is the
    /// rate limiter's (through `server.trusted_proxies`, the forwarded client). Unset:
    /// loopback when `server.trusted_proxies` is empty, no address otherwise (a local proxy
    /// or sidecar would make every remote caller look local). `[]`: credentials only.
    #[serde(default, deserialize_with = "some_list_or_csv")]
    pub health_details_from: Option<Vec<String>>,
}

/// `auth.health_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthDetails {
    /// A caller whose address is in `auth.health_details_from` (a request relayed by a proxy
    /// outside `server.trusted_proxies` counts as from no address), or one presenting valid
    /// credentials (API key, token, a client certificate listed in `auth.certificates_file`).
    #[default]
    LocalOrAuthenticated,
    /// Anyone who reaches the port.
    Everyone,
}

/// `auth.jwt`: bearer tokens signed by a key of a JWK Set: a file, or an identity provider's
/// (`jwks_url`, or found by OpenID Connect discovery from `issuer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The signing keys (a JWK Set), reloaded when the file changes.
    pub jwks_file: Option<PathBuf>,
    /// The signing keys at a URL (a provider's `jwks_uri`): HTTPS, or plain HTTP to a
    /// loopback address only. Fetched at start (the gateway does not start without them)
    /// and refreshed as the provider's `Cache-Control: max-age` says, within
    /// `jwks_refresh_min`..`jwks_refresh_max`.
    pub jwks_url: Option<String>,
    /// Find `jwks_uri` by OpenID Connect discovery: `<issuer>/.well-known/openid-configuration`,
    /// whose `issuer` must be `issuer` exactly.
    pub discovery: bool,
    /// A PEM bundle of CAs to trust for the provider, besides the system's roots (a private
    /// Keycloak, say).
    pub ca_file: Option<PathBuf>,
    /// The least time between two fetches of the provider's keys: the floor of the refresh
    /// interval, the wait after a failed fetch, and the rate limit on fetches asked by
    /// tokens naming an unknown `kid`.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_min: Duration,
    /// The longest the provider's keys go unrefreshed (also the interval when it sends no
    /// `max-age`).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_max: Duration,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// A claim holding the event types (glob patterns) the token may send.
    pub types_claim: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            jwks_file: None,
            jwks_url: None,
            discovery: false,
            ca_file: None,
            jwks_refresh_min: Duration::from_secs(30),
            jwks_refresh_max: Duration::from_secs(15 * 60),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            types_claim: None,
        }
    }
}

/// `tls`: the listener's certificate (reloaded when the files change) and, for mTLS, the CA
/// client certificates must chain to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (a client without a valid certificate fails the
    /// handshake) or `optional` (one without a certificate is let in, and `auth.*` decides;
    /// one with an invalid certificate still fails). Kubernetes probes present no
    /// certificate: `optional` lets them reach the health endpoints.
    pub client_auth: ClientAuth,
}

/// `tls.client_auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

impl JwtConfig {
    /// Whether the keys come from an identity provider (`jwks_url` or `discovery`).
    pub fn fetches_keys(&self) -> bool {
        self.jwks_url.is_some() || self.discovery
    }

    /// Whether any source of keys is configured.
    pub fn enabled(&self) -> bool {
        self.jwks_file.is_some() || self.fetches_keys()
    }

    fn check(&self, errors: &mut Vec<String>) {
        let sources = [
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
            self.discovery,
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            errors.push(
                "auth.jwt: set one of jwks_file, jwks_url and discovery (each is a whole source of keys)"
                    .into(),
            );
        }
        if self.enabled() && (self.issuer.is_none() || self.audience.is_none()) {
            errors.push(
                "auth.jwt.jwks_file, jwks_url or discovery needs auth.jwt.issuer and auth.jwt.audience (tokens are checked against both)"
                    .into(),
            );
        }
        if let Some(url) = &self.jwks_url
            && let Err(why) = provider_url(url)
        {
            errors.push(format!("auth.jwt.jwks_url `{url}`: {why}"));
        }
        if self.discovery
            && let Some(issuer) = &self.issuer
            && let Err(why) = provider_url(issuer)
        {
            errors.push(format!(
                "auth.jwt.issuer `{issuer}` (with auth.jwt.discovery): {why}"
            ));
        }
        if self.ca_file.is_some() && !self.fetches_keys() {
            errors.push("auth.jwt.ca_file needs auth.jwt.jwks_url or auth.jwt.discovery".into());
        }
        if self.jwks_refresh_min < Duration::from_secs(1)
            || self.jwks_refresh_min > self.jwks_refresh_max
            || self.jwks_refresh_max > Duration::from_secs(24 * 3600)
        {
            errors.push(format!(
                "auth.jwt.jwks_refresh_min ({:?}) must be at least 1s and at most auth.jwt.jwks_refresh_max ({:?}), itself at most 24h",
                self.jwks_refresh_min, self.jwks_refresh_max
            ));
        }
    }
}

/// Whether `url` may be fetched for keys: HTTPS, or plain HTTP to a loopback host only (a
/// provider in the same pod, a test); the reason otherwise. Redirects are held to the same
/// rule (`crate::idp`).
pub fn provider_url(url: &str) -> Result<(), String> {
    let parsed = fluent_uri::Uri::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.authority().is_some_and(|a| a.userinfo().is_some()) {
        // It would be sent as Basic credentials and shown wherever the URL is.
        return Err("no user name or password in the URL".into());
    }
    let host = parsed
        .authority()
        .map(|a| a.host().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .ok_or("no host")?;
    match parsed.scheme().as_str().to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if is_loopback_host(&host) => Ok(()),
        "http" => Err("plain HTTP is allowed only to a loopback address; use https".into()),
        other => Err(format!("scheme `{other}` is not https")),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl AuthConfig {
    /// The `auth.*` rules of this section alone, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        self.jwt.check(errors);
        for (i, cidr) in self.health_details_from.iter().flatten().enumerate() {
            if parse_cidr(cidr).is_none() {
                errors.push(format!(
                    "auth.health_details_from[{i}] `{cidr}` is not a CIDR block or an address"
                ));
            }
        }
    }
}

impl TlsConfig {
    /// The `tls.*` rules, each naming its key.
    pub(super) fn check(&self, errors: &mut Vec<String>) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            errors.push("tls.cert_file and tls.key_file go together".into());
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() {
            errors.push("tls.client_ca_file (mTLS) needs tls.cert_file and tls.key_file".into());
        }
    }
}
