//! Mutual TLS on the Raft transport (docs/decisions.md, "Raft peers are
//! authenticated by mutual TLS"; docs/security.md).
//!
//! Every node holds, in one directory, `ca.crt` (its cluster's CA) and its
//! own certificate and key in one of two layouts: `node-<id>.crt` and
//! `node-<id>.key` (the operator's per-region Secret, which holds the pair of
//! every node of the region), else `tls.crt` and `tls.key` (the cert-manager
//! layout, one node per directory).
//! A node's identity is one DNS subject-alternative name,
//! `node-<id>.<cluster-id>.raft.roomkeeper`: the dialing side asks for exactly
//! that name (rustls checks it), the accepting side reads the node id from the
//! client certificate after rustls verified its chain to the CA. A certificate
//! from another CA, for another cluster, or without such a name is refused.
//!
//! Names and issuing (a CA per cluster, node certificates) live in
//! `roomkeeper_api::raft_identity`, shared with the operator.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use roomkeeper_api::raft_identity::{check_cluster_id, node_name, node_of, BadClusterId};

use crate::raft_types::NodeId;

/// Errors loading or issuing Raft certificates.
#[derive(Debug, thiserror::Error)]
pub enum RaftTlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error(transparent)]
    BadClusterId(#[from] BadClusterId),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error(
        "{dir} holds no certificate for node {node_id}: expected {per_node}.crt and {per_node}.key (one pair per node, as the operator writes them) or tls.crt and tls.key (the cert-manager layout), beside ca.crt"
    )]
    NoNodeCertificate {
        dir: String,
        node_id: NodeId,
        per_node: String,
    },
    #[error("certificate {path} names no node of cluster {cluster}: want {want}")]
    WrongIdentity {
        path: String,
        cluster: String,
        want: String,
    },
}

/// The node id named by a certificate rustls already verified, for `cluster`.
/// A certificate naming two different nodes names none.
pub fn identity_of(cert: &CertificateDer<'_>, cluster: &str) -> Option<NodeId> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = ee.valid_dns_names().filter_map(|n| node_of(n, cluster));
    let first = ids.next()?;
    if ids.any(|other| other != first) {
        return None;
    }
    Some(first)
}

/// This node's TLS material for the Raft transport.
pub struct RaftTls {
    pub cluster: String,
    pub node_id: NodeId,
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for RaftTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftTls")
            .field("cluster", &self.cluster)
            .field("node_id", &self.node_id)
            .finish()
    }
}

fn read_err(path: &Path, reason: impl std::fmt::Display) -> RaftTlsError {
    RaftTlsError::Read {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, RaftTlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(path, e))?;
    if certs.is_empty() {
        return Err(RaftTlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The base name of node `id`'s pair in the per-node layout: `node-<id>`.
pub fn per_node_stem(id: NodeId) -> String {
    format!("node-{id}")
}

/// Where node `node_id`'s certificate and key are in `dir`: `node-<id>.crt`
/// and `node-<id>.key` when that certificate is there, else `tls.crt` and
/// `tls.key`; neither is an error naming both layouts.
pub fn node_pair_paths(
    dir: &Path,
    node_id: NodeId,
) -> Result<(std::path::PathBuf, std::path::PathBuf), RaftTlsError> {
    let stem = per_node_stem(node_id);
    let per_node = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    if per_node.0.exists() {
        return Ok(per_node);
    }
    let single = (dir.join("tls.crt"), dir.join("tls.key"));
    if single.0.exists() {
        return Ok(single);
    }
    Err(RaftTlsError::NoNodeCertificate {
        dir: dir.display().to_string(),
        node_id,
        per_node: stem,
    })
}

impl RaftTls {
    /// Loads `ca.crt` and this node's pair (`node-<id>.crt`/`.key`, else
    /// `tls.crt`/`tls.key`: [`node_pair_paths`]) from `dir` for node
    /// `node_id` of `cluster`. Refuses a certificate that does not name this
    /// node.
    pub fn load(dir: &Path, cluster: &str, node_id: NodeId) -> Result<Self, RaftTlsError> {
        check_cluster_id(cluster)?;
        let ca_path = dir.join("ca.crt");
        let (crt_path, key_path) = node_pair_paths(dir, node_id)?;
        let cas = load_certs(&ca_path)?;
        let chain = load_certs(&crt_path)?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| read_err(&key_path, e))?;
        if identity_of(&chain[0], cluster) != Some(node_id) {
            return Err(RaftTlsError::WrongIdentity {
                path: crt_path.display().to_string(),
                cluster: cluster.to_string(),
                want: node_name(cluster, node_id),
            });
        }
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| RaftTlsError::Config(format!("{}: {e}", ca_path.display())))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = |e: rustls::Error| RaftTlsError::Config(e.to_string());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| RaftTlsError::Config(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cfg)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(cfg)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cfg)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(cfg)?;
        Ok(Self {
            cluster: cluster.to_string(),
            node_id,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }

    /// The name to ask for when dialing node `target`.
    pub fn server_name(&self, target: NodeId) -> Option<ServerName<'static>> {
        ServerName::try_from(node_name(&self.cluster, target)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_api::raft_identity::ClusterCa;

    #[test]
    fn issued_certificates_load_and_name_their_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("shop").expect("ca");
        ca.write_node_dir(3, &dir.path().join("n3"))
            .expect("node dir");
        let tls = RaftTls::load(&dir.path().join("n3"), "shop", 3).expect("load");
        assert_eq!(tls.node_id, 3);
        // The same directory does not pass for another node or cluster.
        assert!(matches!(
            RaftTls::load(&dir.path().join("n3"), "shop", 4),
            Err(RaftTlsError::WrongIdentity { .. })
        ));
        assert!(RaftTls::load(&dir.path().join("n3"), "other", 3).is_err());
        // A CA read back from disk still signs certificates that chain to it.
        ca.write(&dir.path().join("ca")).expect("write ca");
        let again = ClusterCa::read(&dir.path().join("ca"), "shop").expect("read ca");
        again
            .write_node_dir(5, &dir.path().join("n5"))
            .expect("node 5");
        let cert = load_certs(&dir.path().join("n5/tls.crt")).expect("cert");
        assert_eq!(identity_of(&cert[0], "shop"), Some(5));
    }

    /// The operator's layout: one directory with `ca.crt` and a pair per node
    /// of the region, `node-<id>.crt` and `node-<id>.key`.
    fn write_per_node(ca: &ClusterCa, dir: &Path, ids: &[NodeId]) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).expect("ca.crt");
        for id in ids {
            let cert = ca.node_cert(*id).expect("node cert");
            std::fs::write(dir.join(format!("node-{id}.crt")), &cert.cert_pem).expect("crt");
            std::fs::write(dir.join(format!("node-{id}.key")), &cert.key_pem).expect("key");
        }
    }

    #[test]
    fn a_directory_of_per_node_pairs_gives_each_node_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("local").expect("ca");
        write_per_node(&ca, dir.path(), &[3, 4, 7]);
        for id in [3, 4, 7] {
            let tls = RaftTls::load(dir.path(), "local", id).expect("load");
            assert_eq!(tls.node_id, id);
            let (crt, key) = node_pair_paths(dir.path(), id).expect("paths");
            assert_eq!(crt, dir.path().join(format!("node-{id}.crt")));
            assert_eq!(key, dir.path().join(format!("node-{id}.key")));
        }
        // A node whose pair is not (yet) there is told so, with both layouts.
        let err = RaftTls::load(dir.path(), "local", 5).expect_err("no pair for node 5");
        assert!(
            matches!(&err, RaftTlsError::NoNodeCertificate { node_id: 5, .. }),
            "{err}"
        );
        let msg = err.to_string();
        for name in ["node-5.crt", "node-5.key", "tls.crt", "tls.key", "ca.crt"] {
            assert!(msg.contains(name), "{msg} names {name}");
        }
        // Another node's pair under this node's name is refused on its name.
        std::fs::copy(dir.path().join("node-3.crt"), dir.path().join("node-5.crt")).expect("cp");
        std::fs::copy(dir.path().join("node-3.key"), dir.path().join("node-5.key")).expect("cp");
        assert!(matches!(
            RaftTls::load(dir.path(), "local", 5),
            Err(RaftTlsError::WrongIdentity { .. })
        ));
    }

    #[test]
    fn a_per_node_pair_wins_over_tls_crt_and_a_missing_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("local").expect("ca");
        // tls.crt names node 2; node-3.crt names node 3: node 3 takes its own.
        ca.write_node_dir(2, dir.path()).expect("node dir");
        write_per_node(&ca, dir.path(), &[3]);
        assert_eq!(RaftTls::load(dir.path(), "local", 3).expect("3").node_id, 3);
        assert_eq!(RaftTls::load(dir.path(), "local", 2).expect("2").node_id, 2);
        // A certificate without its key is a read error on the key file.
        std::fs::remove_file(dir.path().join("node-3.key")).expect("rm");
        match RaftTls::load(dir.path(), "local", 3) {
            Err(RaftTlsError::Read { path, .. }) => assert!(path.ends_with("node-3.key"), "{path}"),
            other => panic!("want a read error on node-3.key, got {other:?}"),
        }
    }
}
