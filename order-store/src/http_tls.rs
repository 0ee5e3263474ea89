//! TLS on the client and admin HTTP listeners (docs/decisions.md, "TLS on the
//! client and admin APIs"; docs/security.md).
//!
//! Both listeners read one directory in the cert-manager layout: `tls.crt`
//! (the node's server certificate chain), `tls.key` and `ca.crt` (the
//! cluster's CA). The client listener asks for no client certificate
//! (clients present bearer tokens); the admin listener requires one from
//! `ca.crt` that names the cluster's operator
//! (`roomkeeper_api::raft_identity::operator_name`) and refuses any other in
//! the handshake.
//!
//! The directory is polled (`reload_every`): when the bytes of the three files
//! change, the new pair is loaded and used for every connection accepted
//! afterwards (open connections keep theirs). A pair that does not load (a key
//! that does not match, a half-written file, an unreadable CA) is refused
//! with a logged error and counted; the old one stays in use until a good one
//! appears. Kubernetes updates a mounted Secret by swapping a symlink, so the
//! three files change together; a tool that writes them one by one passes
//! through a refused state and is picked up at the next poll.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

pub use roomkeeper_api::raft_identity::operator_name;

/// How the client and admin listeners are secured.
#[derive(Debug, Clone)]
pub enum HttpSecurity {
    /// TLS with `tls.crt`, `tls.key`, `ca.crt` from `dir`, polled for changes
    /// every `reload_every`.
    Tls {
        dir: PathBuf,
        reload_every: Duration,
    },
    /// Plain HTTP: tokens and contacts cross the network readable. Only
    /// behind `--insecure-plaintext-http`.
    InsecurePlaintext,
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Client,
    Admin,
}

/// Errors loading the HTTP listeners' TLS material.
#[derive(Debug, thiserror::Error)]
pub enum HttpTlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("TLS configuration from {dir}: {reason}")]
    Config { dir: String, reason: String },
}

/// The three files' bytes, as read in one pass.
struct Material {
    ca: Vec<u8>,
    crt: Vec<u8>,
    key: Vec<u8>,
}

impl Material {
    fn read(dir: &Path) -> Result<Self, HttpTlsError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| HttpTlsError::Read {
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            ca: read("ca.crt")?,
            crt: read("tls.crt")?,
            key: read("tls.key")?,
        })
    }

    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [&self.ca, &self.crt, &self.key] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }
}

/// The server configurations of both listeners, built from one `Material`.
struct Configs {
    client: Arc<rustls::ServerConfig>,
    admin: Arc<rustls::ServerConfig>,
}

fn certs(dir: &Path, name: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, HttpTlsError> {
    let path = dir.join(name).display().to_string();
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpTlsError::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(HttpTlsError::NoCertificate { path });
    }
    Ok(certs)
}

fn build(dir: &Path, cluster: &str, m: &Material) -> Result<Configs, HttpTlsError> {
    let config = |reason: String| HttpTlsError::Config {
        dir: dir.display().to_string(),
        reason,
    };
    let cas = certs(dir, "ca.crt", &m.ca)?;
    let chain = certs(dir, "tls.crt", &m.crt)?;
    let key = PrivateKeyDer::from_pem_slice(&m.key).map_err(|e| HttpTlsError::Read {
        path: dir.join("tls.key").display().to_string(),
        reason: e.to_string(),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| config(format!("ca.crt: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let http1 = vec![b"http/1.1".to_vec()];
    // `with_single_cert` refuses a key that does not match the certificate.
    let mut client = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| config(format!("tls.crt/tls.key: {e}")))?;
    client.alpn_protocols = http1.clone();
    let webpki = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| config(e.to_string()))?;
    let verifier = Arc::new(OperatorOnly {
        inner: webpki,
        name: operator_name(cluster),
    });
    let mut admin = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| config(format!("tls.crt/tls.key: {e}")))?;
    admin.alpn_protocols = http1;
    Ok(Configs {
        client: Arc::new(client),
        admin: Arc::new(admin),
    })
}

/// Result of one look at the directory.
#[derive(Debug)]
pub enum Reload {
    /// The files are as last seen.
    Unchanged,
    /// A new pair is in use for new connections.
    Reloaded,
    /// The files changed but do not load; the previous pair stays in use.
    Refused(HttpTlsError),
}

struct Inner {
    dir: PathBuf,
    cluster: String,
    current: RwLock<Arc<Configs>>,
    /// Fingerprint of the files last looked at (loaded or refused), so a bad
    /// pair is reported once, not at every poll.
    seen: Mutex<[u8; 32]>,
}

/// The listeners' TLS material, swapped in place when the files change.
#[derive(Clone)]
pub struct HttpTls {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTls")
            .field("dir", &self.inner.dir)
            .field("cluster", &self.inner.cluster)
            .finish()
    }
}

impl HttpTls {
    /// Loads `dir` for the listeners of a node of `cluster`. A node does not
    /// start without a pair that loads.
    pub fn load(dir: &Path, cluster: &str) -> Result<Self, HttpTlsError> {
        let m = Material::read(dir)?;
        let configs = build(dir, cluster, &m)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                cluster: cluster.to_string(),
                current: RwLock::new(Arc::new(configs)),
                seen: Mutex::new(m.fingerprint()),
            }),
        })
    }

    /// The acceptor for a new connection on `edge`, with the pair in use now.
    pub fn acceptor(&self, edge: Edge) -> tokio_rustls::TlsAcceptor {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let config = match edge {
            Edge::Client => current.client.clone(),
            Edge::Admin => current.admin.clone(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the directory once; loads a changed pair or refuses it.
    pub fn reload_once(&self) -> Reload {
        let m = match Material::read(&self.inner.dir) {
            Ok(m) => m,
            Err(e) => return self.refused_once([0; 32], e),
        };
        let fp = m.fingerprint();
        if *self.inner.seen.lock().unwrap_or_else(|e| e.into_inner()) == fp {
            return Reload::Unchanged;
        }
        match build(&self.inner.dir, &self.inner.cluster, &m) {
            Ok(configs) => {
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Arc::new(configs);
                *self.inner.seen.lock().unwrap_or_else(|e| e.into_inner()) = fp;
                Reload::Reloaded
            }
            Err(e) => self.refused_once(fp, e),
        }
    }

    fn refused_once(&self, fp: [u8; 32], e: HttpTlsError) -> Reload {
        let mut seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == fp {
            return Reload::Unchanged;
        }
        *seen = fp;
        Reload::Refused(e)
    }

    /// Polls the directory every `every` until the process ends, logging and
    /// counting (`roomkeeper_http_tls_reloads_total{result}`) each change.
    pub fn spawn_reloader(&self, every: Duration, reloads: IntCounterVec) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let t = tls.clone();
                let outcome = match tokio::task::spawn_blocking(move || t.reload_once()).await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(error = %e, "HTTP TLS reload task failed");
                        continue;
                    }
                };
                match outcome {
                    Reload::Unchanged => {}
                    Reload::Reloaded => {
                        reloads.with_label_values(&["loaded"]).inc();
                        tracing::info!(
                            dir = %tls.inner.dir.display(),
                            "HTTP TLS certificate reloaded"
                        );
                    }
                    Reload::Refused(e) => {
                        reloads.with_label_values(&["refused"]).inc();
                        tracing::error!(
                            dir = %tls.inner.dir.display(),
                            error = %e,
                            "new HTTP TLS certificate refused; the previous one stays in use"
                        );
                    }
                }
            }
        });
    }
}

/// The admin listener's client verifier: the chain must verify to `ca.crt`
/// (rustls's WebPKI verifier) and the certificate must name the operator.
#[derive(Debug)]
struct OperatorOnly {
    inner: Arc<dyn ClientCertVerifier>,
    name: String,
}

/// Whether a verified end-entity certificate carries `name` as a DNS SAN.
pub fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .map(|ee| ee.valid_dns_names().any(|n| n == name))
        .unwrap_or(false)
}

impl ClientCertVerifier for OperatorOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !names(end_entity, &self.name) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_api::raft_identity::ClusterCa;

    fn server_dir(ca: &ClusterCa, dir: &Path) {
        let cert = ca
            .server_cert(&["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server cert");
        ca.write_dir(&cert, dir).expect("write");
    }

    #[test]
    fn a_changed_pair_is_loaded_and_a_bad_one_refused_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("http");
        let ca = ClusterCa::generate("shop").expect("ca");
        server_dir(&ca, &dir);
        let tls = HttpTls::load(&dir, "shop").expect("load");
        assert!(matches!(tls.reload_once(), Reload::Unchanged));
        // A key of another pair: refused once, then unchanged, old pair kept.
        let other = ca.server_cert(&["localhost".to_string()]).expect("other");
        std::fs::write(dir.join("tls.key"), &other.key_pem).expect("key");
        assert!(matches!(
            tls.reload_once(),
            Reload::Refused(HttpTlsError::Config { .. })
        ));
        assert!(matches!(tls.reload_once(), Reload::Unchanged));
        // Its certificate completes the pair: loaded.
        std::fs::write(dir.join("tls.crt"), &other.cert_pem).expect("crt");
        assert!(matches!(tls.reload_once(), Reload::Reloaded));
        // A missing file is refused too.
        std::fs::remove_file(dir.join("ca.crt")).expect("rm");
        assert!(matches!(
            tls.reload_once(),
            Reload::Refused(HttpTlsError::Read { .. })
        ));
    }

    #[test]
    fn a_node_does_not_start_with_a_pair_that_does_not_match() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("shop").expect("ca");
        server_dir(&ca, tmp.path());
        let other = ca.server_cert(&["localhost".to_string()]).expect("other");
        std::fs::write(tmp.path().join("tls.key"), &other.key_pem).expect("key");
        assert!(HttpTls::load(tmp.path(), "shop").is_err());
    }

    #[test]
    fn only_the_operator_name_passes_the_admin_identity_check() {
        let ca = ClusterCa::generate("shop").expect("ca");
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).expect("der");
        let op = ca.operator_cert().expect("operator");
        assert!(names(&der(&op.cert_pem), &operator_name("shop")));
        let other = ca.operator_cert_named("other").expect("other");
        assert!(!names(&der(&other.cert_pem), &operator_name("shop")));
        let node = ca.node_cert(1).expect("node");
        assert!(!names(&der(&node.cert_pem), &operator_name("shop")));
    }
}
