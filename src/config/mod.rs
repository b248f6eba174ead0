//! Configuration: the typed settings, their defaults, and how they are layered. Defaults are
//! overridden by `config.yaml` (or `--config PATH`), which is overridden by `GATEWAY_*`
//! environment variables. Unknown keys and bad values stop startup with a message naming the key.
//!
//! A file per group of sections, each with its own checks beside its fields (`server`, `kafka`,
//! `limits`, `storage`, `ops`, `types`, `auth`); `env` maps the variables; `de` holds the shared
//! deserializers; this file holds [`Config`] itself, loading, and the rules across sections.
mod auth;
mod de;
mod env;
mod kafka;
mod limits;
mod ops;
mod server;
mod storage;
mod types;
pub mod watch;

pub use auth::{AuthConfig, ClientAuth, HealthDetails, JwtConfig, TlsConfig, provider_url};
pub use env::{ENV_PREFIX, TEXT_KEYS, keys};
pub use kafka::{
    API_KEY_HEADER, FORWARD_HEADERS_MAX_BYTES_CEILING, FORWARD_HEADERS_REFUSED, KafkaConfig,
    KafkaSecurity, KeyStrategy, RecordMode, RequiredAcks, SaslMechanism, Secret, SecurityProtocol,
    forward_header_refused,
};
pub use limits::{LimitsConfig, MAX_DATA_DEPTH_CEILING, PerformanceConfig, RateLimitConfig};
pub use ops::{LogFormat, LoggingConfig, MetricsConfig, ShutdownConfig};
pub use server::{CorsConfig, Http1Config, Http2Config, ServerConfig};
pub use storage::{AckConfig, AckLevel, DedupConfig, SpoolConfig, StorageConfig};
pub use types::{SchemaSource, TypeEntryConfig, TypesConfig, TypesPolicy};

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Yaml};
use serde::{Deserialize, Serialize};

use env::GatewayEnv;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub kafka: KafkaConfig,
    pub rate_limit: RateLimitConfig,
    pub metrics: MetricsConfig,
    pub performance: PerformanceConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub shutdown: ShutdownConfig,
    pub logging: LoggingConfig,
    pub types: TypesConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub spool: SpoolConfig,
    pub ack: AckConfig,
    pub dedup: DedupConfig,
}

/// Why the configuration was refused; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The addresses that see `/health/detailed` in full without credentials: as set, else
    /// loopback when no proxy is trusted and none otherwise (see `auth.health_details_from`).
    pub fn health_details_from(&self) -> Vec<ipnet::IpNet> {
        match &self.auth.health_details_from {
            Some(list) => list.iter().filter_map(|c| parse_cidr(c)).collect(),
            None if self.server.trusted_proxies.is_empty() => ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|c| parse_cidr(c))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Layers defaults < the YAML file (when given; it must exist) < `GATEWAY_*` variables,
    /// then checks the values that types alone cannot.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Yaml::file_exact(path));
        }
        let mut config: Config = figment.merge(GatewayEnv::new()).extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            ConfigError(msgs.join("; "))
        })?;
        config.check()?;
        let sec = &mut config.kafka.security;
        if let Some(path) = &sec.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "kafka.security.password_file {}: {e}",
                    path.display()
                ))
            })?;
            sec.password = Some(Secret(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        Ok(config)
    }

    /// Every rule types alone cannot hold, each naming its key: each section checks its own
    /// (next to its fields), then the rules that cross sections.
    fn check(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.server.check(&mut errors);
        self.kafka.check(&mut errors);
        self.rate_limit.check(&mut errors);
        self.metrics.check(&mut errors);
        self.performance.check(&mut errors);
        self.limits.check(&mut errors);
        self.types.check(&mut errors);
        self.auth.check(&mut errors);
        self.tls.check(&mut errors);
        self.spool.check(&mut errors);
        self.dedup.check(&mut errors);
        self.check_across(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors.join("; ")))
        }
    }

    /// The rules between sections.
    fn check_across(&self, errors: &mut Vec<String>) {
        // The gateway must never give up on a request while librdkafka may still deliver it:
        // the client's retry would then duplicate the event.
        if self.performance.request_timeout < self.kafka.message_timeout + Duration::from_secs(2) {
            errors.push(format!(
                "performance.request_timeout ({:?}) must be at least kafka.message_timeout ({:?}) + 2s",
                self.performance.request_timeout, self.kafka.message_timeout
            ));
        }
        if !self.spool.enabled && !self.kafka.brokers.is_empty() {
            if self.ack.default == AckLevel::Spooled {
                errors.push("ack.default: spooled needs spool.enabled: true".into());
            }
            if self.spool.fallback_when_unavailable {
                errors.push("spool.fallback_when_unavailable needs spool.enabled: true".into());
            }
        }
        // Room for the Kafka record's headers and framing above the largest event.
        let event_limit = self.limits.max_event_size.as_u64();
        if event_limit + 64 * 1024 > u64::from(self.kafka.message_max_bytes) {
            errors.push(format!(
                "limits.max_event_size ({event_limit} bytes) must be at least 64 KiB below kafka.message_max_bytes ({})",
                self.kafka.message_max_bytes
            ));
        }
        let can_authenticate = self.auth.api_keys_file.is_some()
            || self.auth.jwt.enabled()
            || self.tls.client_ca_file.is_some();
        if self.auth.required && !can_authenticate {
            errors.push(
                "auth.required needs a way to authenticate: auth.api_keys_file, auth.jwt (jwks_file, jwks_url or discovery) or tls.client_ca_file"
                    .into(),
            );
        }
        if self.auth.certificates_file.is_some() && self.tls.client_ca_file.is_none() {
            errors.push(
                "auth.certificates_file grants client certificates, which need tls.client_ca_file (mTLS)"
                    .into(),
            );
        }
        if self.auth.protect_metrics && !can_authenticate {
            errors.push(
                "auth.protect_metrics needs a way to authenticate a scrape: auth.api_keys_file, auth.jwt (jwks_file, jwks_url or discovery) or tls.client_ca_file"
                    .into(),
            );
        }
    }

    /// The effective configuration without secrets (librdkafka passthrough values that look
    /// like credentials are masked), for `/health/detailed` and the startup log.
    pub fn redacted(&self) -> serde_json::Value {
        let mut c = self.clone();
        for (k, v) in c.kafka.librdkafka.iter_mut() {
            if k.contains("password") || k.contains("secret") || k.contains("key") {
                *v = "***".into();
            }
        }
        serde_json::to_value(&c).expect("config serializes")
    }
}

/// A CIDR block, or one address as a block of one (`192.0.2.7`, `::1`).
pub fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;
    use figment::Jail;
    use std::path::PathBuf;

    /// Loads with exactly `env` as the environment, inside a jail (its own working directory,
    /// variables restored afterwards, one jail at a time).
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn load_with(file: Option<(&str, &str)>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut out = None;
        Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in env {
                jail.set_env(k, v);
            }
            let path = file.map(|(name, text)| {
                jail.create_file(name, text).unwrap();
                PathBuf::from(name)
            });
            out = Some(Config::load(path.as_deref()));
            Ok(())
        });
        out.unwrap()
    }

    /// The codec docs/benchmarks.md's "The Kafka path" measures as the default is the
    /// default in code and in the shipped config.yaml.
    #[test]
    fn snappy_is_the_default_codec_in_code_and_in_config_yaml() {
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml")).unwrap();
        let c = load_with(Some(("config.yaml", &shipped)), &[]).unwrap();
        assert_eq!(c.kafka.compression, "snappy");
        assert_eq!(Config::default().kafka.compression, "snappy");
    }

    #[test]
    fn defaults_are_valid() {
        let c = load_with(None, &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.address, "0.0.0.0:8090");
    }

    #[test]
    fn env_names_with_underscored_sections_work() {
        let c = load_with(
            None,
            &[
                ("GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND", "42"),
                ("GATEWAY_RATE_LIMIT_BURST_SIZE", "84"),
                ("GATEWAY_KAFKA_BROKERS", "127.0.0.1:9092, 127.0.0.2:9092"),
                ("GATEWAY_KAFKA_TOPIC", "t1"),
                ("GATEWAY_SERVER_ADDRESS", "127.0.0.1:9000"),
                ("GATEWAY_PERFORMANCE_MAX_REQUEST_SIZE", "1MiB"),
                ("GATEWAY_KAFKA_REQUIRED_ACKS", "-1"),
                ("GATEWAY_SERVER_HTTP2_MAX_FRAME_SIZE", "32KiB"),
                ("GATEWAY_SERVER_HTTP1_MAX_HEADERS", "50"),
                ("GATEWAY_CONFIG", "names-the-file.yaml"),
                ("OTHER_VAR", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.rate_limit.requests_per_second, 42);
        assert_eq!(c.rate_limit.burst_size, 84);
        assert_eq!(c.kafka.brokers, vec!["127.0.0.1:9092", "127.0.0.2:9092"]);
        assert_eq!(c.kafka.topic, "t1");
        assert_eq!(c.server.address, "127.0.0.1:9000");
        assert_eq!(c.performance.max_request_size, ByteSize::mib(1));
        assert_eq!(c.kafka.required_acks, RequiredAcks::All);
        assert_eq!(c.server.http2.max_frame_size, ByteSize::kib(32));
        assert_eq!(c.server.http1.max_headers, 50);
    }

    /// Nested sections take their variables too; the Kafka password comes from the
    /// environment or a file and is never shown.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn security_settings_come_from_the_environment_and_secrets_stay_hidden() {
        let c = load_with(
            None,
            &[
                ("GATEWAY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("GATEWAY_KAFKA_SECURITY_SASL_MECHANISM", "SCRAM-SHA-512"),
                ("GATEWAY_KAFKA_SECURITY_USERNAME", "gateway"),
                ("GATEWAY_KAFKA_SECURITY_PASSWORD", "s3cret-pw"),
                ("GATEWAY_AUTH_JWT_ISSUER", "https://idp.example"),
                ("GATEWAY_AUTH_PROTECT_METRICS", "true"),
                ("GATEWAY_AUTH_API_KEYS_FILE", "keys.yaml"),
                ("GATEWAY_SERVER_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7"),
            ],
        )
        .unwrap();
        let sec = &c.kafka.security;
        assert_eq!(sec.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(sec.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        assert_eq!(sec.password.as_ref().unwrap().0, "s3cret-pw");
        assert_eq!(c.auth.jwt.issuer.as_deref(), Some("https://idp.example"));
        assert!(c.auth.protect_metrics);
        assert_eq!(c.server.trusted_proxies, ["10.0.0.0/8", "192.0.2.7"]);
        assert!(!format!("{c:?}").contains("s3cret-pw"));
        let shown = c.redacted().to_string();
        assert!(
            !shown.contains("s3cret-pw") && shown.contains("***"),
            "{shown}"
        );

        let mut from_file = None;
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("pw", "from-a-file\n")?;
            jail.set_env("GATEWAY_KAFKA_SECURITY_PROTOCOL", "sasl_plaintext");
            jail.set_env("GATEWAY_KAFKA_SECURITY_SASL_MECHANISM", "PLAIN");
            jail.set_env("GATEWAY_KAFKA_SECURITY_USERNAME", "u");
            jail.set_env("GATEWAY_KAFKA_SECURITY_PASSWORD_FILE", "pw");
            from_file = Some(Config::load(None).unwrap());
            Ok(())
        });
        let c = from_file.unwrap();
        assert_eq!(c.kafka.security.password.unwrap().0, "from-a-file");

        // SASL without its settings, a bad CIDR: refused, naming the key.
        let err = load_with(None, &[("GATEWAY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.security.sasl_mechanism"), "{err}");
        let err = load_with(None, &[("GATEWAY_SERVER_TRUSTED_PROXIES", "10.0.0.0/33")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.trusted_proxies[0]"), "{err}");
        let err = load_with(None, &[("GATEWAY_AUTH_REQUIRED", "true")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.required needs"), "{err}");
        let err = load_with(None, &[("GATEWAY_SERVER_IDLE_TIMEOUT", "0s")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.idle_timeout"), "{err}");
    }

    #[test]
    fn file_then_env_layering() {
        let c = load_with(
            Some((
                "c.yaml",
                "server:\n  address: 127.0.0.1:7000\n  read_timeout: 5s\nkafka:\n  topic: from-file\n  brokers: [a:1, b:2]\n",
            )),
            &[("GATEWAY_KAFKA_TOPIC", "from-env")],
        )
        .unwrap();
        assert_eq!(c.server.address, "127.0.0.1:7000");
        assert_eq!(c.server.read_timeout, Duration::from_secs(5));
        assert_eq!(c.kafka.topic, "from-env");
        assert_eq!(c.kafka.brokers, vec!["a:1", "b:2"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_with(Some(("c.yaml", "server:\n  adress: 127.0.0.1:7000\n")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("adress"), "{err}");
        assert!(err.contains("server"), "{err}");

        let err = load_with(None, &[("GATEWAY_KAFKA_TOPICS", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("topics"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = load_with(None, &[("GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND", "fast")])
            .unwrap_err()
            .to_string();
        // Named as the variable the user set.
        assert!(
            err.contains("GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND"),
            "{err}"
        );

        let err = load_with(None, &[("GATEWAY_KAFKA_REQUIRED_ACKS", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("GATEWAY_KAFKA_REQUIRED_ACKS"), "{err}");
        // A bad value in the file is named by its key path in the file.
        let err = load_with(Some(("c.yaml", "kafka:\n  required_acks: 2\n")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.required_acks"), "{err}");

        // Settings that would do nothing, or lock everyone out, name what they need.
        let err = load_with(None, &[("GATEWAY_AUTH_CERTIFICATES_FILE", "c.yaml")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.client_ca_file"), "{err}");
        let err = load_with(None, &[("GATEWAY_AUTH_PROTECT_METRICS", "true")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.protect_metrics") && err.contains("auth.api_keys_file"),
            "{err}"
        );

        let err = load_with(None, &[("GATEWAY_SERVER_ADDRESS", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.address"), "{err}");

        let err = load_with(None, &[("GATEWAY_PERFORMANCE_REQUEST_TIMEOUT", "5s")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("performance.request_timeout"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/c.yaml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/c.yaml"), "{err}");
    }

    /// #30: text settings take a variable's text byte for byte, whatever it looks like
    /// (`123456` was read as a number and refused: "found unsigned int, expected a string").
    #[test]
    fn text_settings_take_the_variables_text_as_it_is() {
        let c = load_with(
            None,
            &[
                ("GATEWAY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("GATEWAY_KAFKA_SECURITY_SASL_MECHANISM", "plain"),
                ("GATEWAY_KAFKA_SECURITY_PASSWORD", "007123456"),
                ("GATEWAY_KAFKA_SECURITY_USERNAME", "1234"),
                ("GATEWAY_KAFKA_TOPIC", "2024"),
                ("GATEWAY_AUTH_JWT_AUDIENCE", "12345"),
                ("GATEWAY_AUTH_JWT_ISSUER", "true"),
                ("GATEWAY_KAFKA_DEAD_LETTER_TOPIC", "[abc]"),
                ("GATEWAY_LOGGING_LEVEL", "1e3"),
            ],
        )
        .unwrap();
        let sec = &c.kafka.security;
        assert_eq!(sec.password.as_ref().unwrap().0, "007123456");
        assert_eq!(sec.username.as_deref(), Some("1234"));
        assert_eq!(c.kafka.topic, "2024");
        assert_eq!(c.auth.jwt.audience.as_deref(), Some("12345"));
        assert_eq!(c.auth.jwt.issuer.as_deref(), Some("true"));
        assert_eq!(c.kafka.dead_letter_topic.as_deref(), Some("[abc]"));
        assert_eq!(c.logging.level, "1e3");
        // Every text key names a real key.
        let keys = keys();
        for k in TEXT_KEYS {
            assert!(keys.iter().any(|x| x == k), "{k} is not a key");
        }
    }

    /// #30: librdkafka properties as librdkafka's CONFIGURATION.md writes them, unquoted.
    #[test]
    fn librdkafka_properties_take_numbers_and_booleans() {
        let c = load_with(
            Some((
                "c.yaml",
                "kafka:\n  librdkafka:\n    linger.ms: 5\n    enable.ssl.certificate.verification: false\n    batch.size: 1000000\n    sticky.partitioning.linger.ms: 0.5\n    client.id: gw\n",
            )),
            &[],
        )
        .unwrap();
        let l = &c.kafka.librdkafka;
        assert_eq!(l["linger.ms"], "5");
        assert_eq!(l["enable.ssl.certificate.verification"], "false");
        assert_eq!(l["batch.size"], "1000000");
        assert_eq!(l["sticky.partitioning.linger.ms"], "0.5");
        assert_eq!(l["client.id"], "gw");
        let e = load_with(
            Some(("c.yaml", "kafka:\n  librdkafka:\n    linger.ms: [1, 2]\n")),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a string, a number or a boolean"), "{e}");
    }

    /// #28: `kafka.forward_headers` takes header names (from the variable as a list too) and
    /// refuses, at load and by name, every credential header and what the gateway writes on
    /// records itself.
    #[test]
    fn forward_headers_refuse_credentials_and_the_gateways_own_names() {
        let c = load_with(
            None,
            &[(
                "GATEWAY_KAFKA_FORWARD_HEADERS",
                "X-Tenant-Id,x-request-source",
            )],
        )
        .unwrap();
        assert_eq!(c.kafka.forward_headers, ["X-Tenant-Id", "x-request-source"]);
        for name in [
            "authorization",
            "Authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "x-api-key",
            "X-API-KEY",
            "traceparent",
            "content-type",
            "ce_type",
            "ce-id",
            "grpc-timeout",
            "trace-bin",
            "eventgateway-error",
            "sec-websocket-protocol",
            "x-amzn-oidc-accesstoken",
        ] {
            let e = load_with(None, &[("GATEWAY_KAFKA_FORWARD_HEADERS", name)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("kafka.forward_headers") && e.contains(name) && e.contains("refused"),
                "{name}: {e}"
            );
        }
        let e = load_with(None, &[("GATEWAY_KAFKA_FORWARD_HEADERS", "x tenant")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an HTTP header name"), "{e}");
        let e = load_with(
            None,
            &[
                ("GATEWAY_KAFKA_FORWARD_HEADERS", "x-tenant-id"),
                ("GATEWAY_KAFKA_FORWARD_HEADERS_MAX_BYTES", "1MiB"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kafka.forward_headers_max_bytes"), "{e}");
    }

    /// #28: `server.cors` takes origins as browsers send them and refuses anything else
    /// (a path, a trailing slash, no scheme), naming the key.
    #[test]
    fn cors_origins_are_origins() {
        let c = load_with(
            None,
            &[(
                "GATEWAY_SERVER_CORS_ALLOWED_ORIGINS",
                "https://app.example.com,http://localhost:5173,http://[::1]:8080",
            )],
        )
        .unwrap();
        assert_eq!(c.server.cors.allowed_origins.len(), 3);
        assert!(c.server.cors.enabled());
        assert!(!Config::default().server.cors.enabled(), "off by default");
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/page",
            "app.example.com",
            "ftp://app.example.com",
            "https://",
        ] {
            let e = load_with(None, &[("GATEWAY_SERVER_CORS_ALLOWED_ORIGINS", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("server.cors.allowed_origins") && e.contains(bad),
                "{bad}: {e}"
            );
        }
        let e = load_with(
            None,
            &[
                ("GATEWAY_SERVER_CORS_ALLOWED_ORIGINS", "*"),
                ("GATEWAY_SERVER_CORS_MAX_AGE", "2d"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("server.cors.max_age"), "{e}");
    }

    /// #28: the provider's keys come over HTTPS (plain HTTP to loopback only), from one
    /// source, with an issuer and an audience.
    #[test]
    fn provider_keys_need_https_one_source_and_an_issuer() {
        let jwt = |extra: &[(&'static str, &'static str)]| {
            let mut env = vec![
                (
                    "GATEWAY_AUTH_JWT_ISSUER",
                    "https://idp.example/realms/events",
                ),
                ("GATEWAY_AUTH_JWT_AUDIENCE", "event-gateway"),
            ];
            env.extend_from_slice(extra);
            load_with(None, &env)
        };
        for ok in [
            "https://idp.example/keys",
            "http://127.0.0.1:8080/keys",
            "http://[::1]:8080/keys",
            "http://localhost:8080/keys",
        ] {
            let c = jwt(&[("GATEWAY_AUTH_JWT_JWKS_URL", ok)]).unwrap();
            assert!(c.auth.jwt.fetches_keys(), "{ok}");
        }
        for (bad, why) in [
            (
                "http://idp.example/keys",
                "plain HTTP is allowed only to a loopback",
            ),
            ("ftp://idp.example/keys", "not https"),
            ("not a url", "auth.jwt.jwks_url"),
            (
                "https://user:secret@idp.example/keys",
                "no user name or password",
            ),
        ] {
            let e = jwt(&[("GATEWAY_AUTH_JWT_JWKS_URL", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = jwt(&[
            ("GATEWAY_AUTH_JWT_DISCOVERY", "true"),
            ("GATEWAY_AUTH_JWT_JWKS_URL", "https://idp.example/keys"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("set one of jwks_file, jwks_url and discovery"),
            "{e}"
        );
        let e = load_with(
            None,
            &[
                ("GATEWAY_AUTH_JWT_DISCOVERY", "true"),
                ("GATEWAY_AUTH_JWT_ISSUER", "http://idp.example"),
                ("GATEWAY_AUTH_JWT_AUDIENCE", "a"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("auth.jwt.issuer") && e.contains("https"), "{e}");
        let e = load_with(None, &[("GATEWAY_AUTH_JWT_DISCOVERY", "true")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs auth.jwt.issuer and auth.jwt.audience"),
            "{e}"
        );
    }

    /// #24: Kafka's own spelling of the protocol and mechanism names, in any case.
    #[test]
    fn kafka_security_names_are_read_in_any_case() {
        for (proto, mech, want) in [
            ("SSL", "PLAIN", SecurityProtocol::Ssl),
            ("SASL_SSL", "scram-sha-512", SecurityProtocol::SaslSsl),
            (
                "sasl_plaintext",
                "SCRAM_SHA_256",
                SecurityProtocol::SaslPlaintext,
            ),
            ("PLAINTEXT", "Plain", SecurityProtocol::Plaintext),
        ] {
            let c = load_with(
                None,
                &[
                    ("GATEWAY_KAFKA_SECURITY_PROTOCOL", proto),
                    ("GATEWAY_KAFKA_SECURITY_SASL_MECHANISM", mech),
                    ("GATEWAY_KAFKA_SECURITY_USERNAME", "u"),
                    ("GATEWAY_KAFKA_SECURITY_PASSWORD", "p"),
                ],
            );
            // A mechanism with a protocol that has no SASL is refused by the checks, which
            // is not about spelling; the protocol was read either way.
            match c {
                Ok(c) => assert_eq!(c.kafka.security.protocol, want, "{proto}"),
                Err(e) => assert!(!e.to_string().contains("unknown variant"), "{proto}: {e}"),
            }
        }
        let e = load_with(None, &[("GATEWAY_KAFKA_SECURITY_PROTOCOL", "tls")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls") && e.contains("sasl_ssl"), "{e}");
    }
}
