//! Certificates made by the test ([`TestPki`]) and a TLS terminator in front of a broker
//! ([`TlsProxy`]).
use std::path::PathBuf;

/// A certificate authority made for one test (rcgen), with a server certificate for
/// `localhost` and 127.0.0.1 and a client certificate whose URI SAN is `client_uri`; all
/// written as PEM files into `dir`.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "event-gateway test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let ca_pem = issuer.pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let pki = Self {
            dir,
            issuer,
            ca_pem,
        };
        pki.write_server("server");
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new server certificate and key as `<name>.pem` / `<name>.key`; returns its DER.
    pub fn write_server(&self, name: &str) -> Vec<u8> {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        self.write(name, params)
    }

    /// A client certificate with `uri` as its URI SAN, as `<name>.pem` / `<name>.key`.
    pub fn write_client(&self, name: &str, uri: &str) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a test client");
        self.write(name, params);
    }

    fn write(&self, name: &str, params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Written whole to a temporary name and renamed, as cert-manager's atomic update does.
        for (ext, text) in [("pem", cert.pem()), ("key", key.serialize_pem())] {
            let tmp = self.path(&format!(".{name}.{ext}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(tmp, self.path(&format!("{name}.{ext}"))).unwrap();
        }
        cert.der().to_vec()
    }
}

/// A TLS terminator in front of a plaintext broker (tansu 0.6's own TLS does not work):
/// accepts TLS on `listener` with the PKI's server certificate (requiring a client
/// certificate from the PKI's CA when `mtls`) and pipes each connection to 127.0.0.1:`target`.
pub struct TlsProxy {
    pub port: u16,
    /// Handshakes completed, and of those, with a client certificate.
    pub handshakes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub with_client_cert: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    pub fn serve(
        listener: tokio::net::TcpListener,
        pki: &TestPki,
        target: u16,
        mtls: bool,
    ) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use std::sync::atomic::Ordering;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(pki.path("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if mtls {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = std::sync::Arc::new(builder.with_single_cert(certs, key).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let port = listener.local_addr().unwrap().port();
        let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let with_client_cert = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, w) = (handshakes.clone(), with_client_cert.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (h, w) = (h.clone(), w.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.peer_certificates().is_some() {
                        w.fetch_add(1, Ordering::SeqCst);
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        Self {
            port,
            handshakes,
            with_client_cert,
            task,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
