//! The listener's TLS (rustls with the ring provider, no OpenSSL): the certificate and key
//! from `tls.cert_file` / `tls.key_file`, ALPN offering `h2` and `http/1.1` so gRPC and REST
//! keep sharing one port, and with `tls.client_ca_file` mutual TLS: a client without a
//! certificate that chains to that CA fails the handshake (with `tls.client_auth: optional`
//! it is let in and `auth.*` decides), and the verified certificate's subject (its first URI
//! or DNS SAN, else its CN) is the connection's [`PeerIdentity`].
//!
//! The server configuration is swapped whole when any of the files changes (cert-manager
//! rotates them in place): each new connection takes the configuration in force, open
//! connections keep the session they have. A change that does not load keeps the old one.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, TlsConfig};
use crate::transport::stack::PeerIdentity;

/// Why TLS could not be set up at startup; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The TLS configuration in force, and how many reloads were refused.
pub struct Tls {
    current: ArcSwap<rustls::ServerConfig>,
    files: TlsConfig,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

fn server_config(files: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let (Some(cert), Some(key)) = (&files.cert_file, &files.key_file) else {
        return Err("tls.cert_file and tls.key_file go together".into());
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tls.cert_file {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls.key_file {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?;
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if files.client_auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert_file / tls.key_file: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl Tls {
    /// TLS per `tls.*`, or None for plaintext (h2c and HTTP/1).
    pub fn load(files: &TlsConfig) -> Result<Option<Arc<Self>>, TlsError> {
        if files.cert_file.is_none() {
            return Ok(None);
        }
        let config = server_config(files).map_err(TlsError)?;
        Ok(Some(Arc::new(Self {
            current: ArcSwap::from_pointee(config),
            files: files.clone(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })))
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    fn reload(&self) {
        match server_config(&self.files) {
            Ok(c) => {
                self.current.store(Arc::new(c));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays");
            }
        }
    }

    /// `tls_reloads_total` and `tls_reload_failures_total`.
    pub fn register_instruments(self: &Arc<Self>, meter: &opentelemetry::metrics::Meter) {
        let this = self.clone();
        meter
            .u64_observable_counter("tls_reloads")
            .with_description("TLS certificate reloads that took effect")
            .with_callback(move |o| o.observe(this.reloads.load(Ordering::Relaxed), &[]))
            .build();
        let this = self.clone();
        meter
            .u64_observable_counter("tls_reload_failures")
            .with_description("TLS certificate reloads refused (the previous certificate stays)")
            .with_callback(move |o| o.observe(this.reload_failures.load(Ordering::Relaxed), &[]))
            .build();
    }

    /// Watches the certificate, key and CA files (`watch::poll`) and reloads on change.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> Option<notify::PollWatcher> {
        let files: Vec<PathBuf> = [
            &self.files.cert_file,
            &self.files.key_file,
            &self.files.client_ca_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let this = Arc::downgrade(self);
        crate::config::watch::poll(&files, interval, "TLS files", move || {
            if let Some(t) = this.upgrade() {
                t.reload();
            }
        })
    }
}

/// The principal of a verified client certificate: its first URI SAN (a SPIFFE id, say),
/// else its first DNS SAN, else its subject's CN. x509-parser (already in the tree through
/// rcgen) reads the certificate; rustls has verified it.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<PeerIdentity> {
    use x509_parser::extensions::GeneralName;
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok().flatten();
    let names = san
        .map(|s| s.value.general_names.clone())
        .unwrap_or_default();
    let uri = names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    });
    let dns = names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    });
    let cn = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    };
    uri.or(dns).or_else(cn).map(PeerIdentity)
}
