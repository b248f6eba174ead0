//! The environment layer: `GATEWAY_<SECTION>_<KEY>` mapped to `<section>.<key>` (section names
//! contain underscores, so the sections are listed), text settings taken byte for byte, and
//! the list of every key (`keys`) that the settings matrix walks.
use figment::providers::Env;

use super::Config;

/// Every section as (variable prefix, key path); `GATEWAY_<SECTION>_<KEY>` maps to
/// `<section>.<key>`. Listed because section names themselves contain underscores
/// (`rate_limit`), so splitting on `_` cannot work; a nested section (`auth.jwt`) comes
/// before its parent so that `GATEWAY_AUTH_JWT_ISSUER` finds it.
const SECTIONS: &[(&str, &str)] = &[
    ("server_http1", "server.http1"),
    ("server_http2", "server.http2"),
    ("server_cors", "server.cors"),
    ("server", "server"),
    ("kafka_security", "kafka.security"),
    ("kafka", "kafka"),
    ("rate_limit", "rate_limit"),
    ("metrics", "metrics"),
    ("performance", "performance"),
    ("limits", "limits"),
    ("storage", "storage"),
    ("shutdown", "shutdown"),
    ("logging", "logging"),
    ("types", "types"),
    ("auth_jwt", "auth.jwt"),
    ("auth", "auth"),
    ("tls", "tls"),
    ("spool", "spool"),
    ("ack", "ack"),
    ("dedup", "dedup"),
];

/// The environment variable prefix.
pub const ENV_PREFIX: &str = "GATEWAY_";

/// Settings whose value is text. A `GATEWAY_*` variable for one of them is taken byte for byte:
/// figment would read `123456` as a number, `true` as a boolean and `[abc]` as a list, and a
/// generated password or a numeric topic name would be refused. Every other variable is parsed
/// (numbers, booleans, lists; durations and sizes are text to their own parsers anyway). The
/// settings matrix (`tests/settings.rs`) sets each of these to text that looks like a number.
pub const TEXT_KEYS: &[&str] = &[
    "server.address",
    "kafka.topic",
    "kafka.compression",
    "kafka.dead_letter_topic",
    "kafka.security.ca_file",
    "kafka.security.cert_file",
    "kafka.security.key_file",
    "kafka.security.username",
    "kafka.security.password",
    "kafka.security.password_file",
    "metrics.path",
    "storage.data_dir",
    "spool.dir",
    "logging.level",
    "types.file",
    "auth.api_keys_file",
    "auth.certificates_file",
    "auth.jwt.jwks_file",
    "auth.jwt.jwks_url",
    "auth.jwt.ca_file",
    "auth.jwt.issuer",
    "auth.jwt.audience",
    "auth.jwt.types_claim",
    "tls.cert_file",
    "tls.key_file",
    "tls.client_ca_file",
];

/// Maps `RATE_LIMIT_REQUESTS_PER_SECOND` to `rate_limit.requests_per_second`; keys of no known
/// section pass through unchanged so that `deny_unknown_fields` names them in the error.
pub(super) fn env_key_to_path(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    for (prefix, path) in SECTIONS {
        if let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) {
            return format!("{path}.{rest}");
        }
    }
    key
}

/// figment's `Env` provider under metadata that names the variable a user actually sets:
/// `Env` itself would report a bad value as key "RATE_LIMIT.REQUESTS_PER_SECOND".
pub(super) struct GatewayEnv(Env);

impl GatewayEnv {
    pub(super) fn new() -> Self {
        // GATEWAY_CONFIG names the file; it is not a setting.
        Self(
            Env::prefixed(ENV_PREFIX)
                .ignore(&["CONFIG"])
                .map(|key| env_key_to_path(key.as_str()).into()),
        )
    }
}

impl figment::Provider for GatewayEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("the environment")
            .interpolater(|_, keys| format!("{ENV_PREFIX}{}", keys.join("_").to_ascii_uppercase()))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        /// Puts `value` at the dotted `path` in `dict`, making the dictionaries on the way.
        fn insert(dict: &mut Dict, path: &str, value: Value) {
            match path.split_once('.') {
                None => {
                    dict.insert(path.to_owned(), value);
                }
                Some((head, rest)) => {
                    let entry = dict
                        .entry(head.to_owned())
                        .or_insert_with(|| Value::from(Dict::new()));
                    if let Value::Dict(_, inner) = entry {
                        insert(inner, rest, value);
                    }
                }
            }
        }
        let mut dict = Dict::new();
        for (key, raw) in self.0.iter() {
            let path = key.as_str();
            let value = if TEXT_KEYS.contains(&path) {
                Value::from(raw)
            } else {
                raw.parse().expect("parsing a value is infallible")
            };
            insert(&mut dict, path, value);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Every key of the configuration, as its dotted path (`kafka.security.password`): the leaves
/// of the defaults, maps and lists counted as one key each.
pub fn keys() -> Vec<String> {
    fn walk(path: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&p, x, out);
                }
            }
            _ => out.push(path.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(Config::default()).expect("config serializes"),
        &mut out,
    );
    out
}
