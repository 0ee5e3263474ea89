//! Who a node is on the Raft transport: the DNS name its certificate carries,
//! `node-<id>.<cluster-id>.raft.roomkeeper` (docs/decisions.md, "Raft peers
//! are authenticated by mutual TLS"). The node checks it (order-store
//! `raft_tls`); the local binding and the operator issue certificates with it
//! (the `raft-certs` feature: a CA per cluster, one certificate per node).

use crate::admin::NodeId;

/// Suffix of every node name, after the cluster id.
pub const NAME_SUFFIX: &str = "raft.roomkeeper";

/// Suffix of the operator's client identity on the admin API, after the cluster id.
pub const OPERATOR_SUFFIX: &str = "operator.roomkeeper";

/// The DNS name in the client certificate of the operator (and the control
/// loops and drill runners acting for it) of cluster `cluster`: the only
/// identity the admin API accepts when it runs TLS.
pub fn operator_name(cluster: &str) -> String {
    format!("{cluster}.{OPERATOR_SUFFIX}")
}

/// Suffix of the name every API server certificate the operator issues
/// carries, after the cluster id.
pub const API_SUFFIX: &str = "api.roomkeeper";

/// The DNS name the operator expects from a node's client and admin APIs
/// when it dials a pod by IP: every region's API server certificate of the
/// cluster carries it (with the Service names clients dial), and only a
/// certificate from the cluster's own CA is trusted for it.
pub fn api_server_name(cluster: &str) -> String {
    format!("{cluster}.{API_SUFFIX}")
}

/// A cluster id that cannot be part of a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster id {0:?} is not a DNS name (lowercase letters, digits, '-' and '.')")]
pub struct BadClusterId(pub String);

/// The DNS name that identifies node `id` of cluster `cluster`.
pub fn node_name(cluster: &str, id: NodeId) -> String {
    format!("node-{id}.{cluster}.{NAME_SUFFIX}")
}

/// Checks a cluster id can be part of a DNS name.
pub fn check_cluster_id(cluster: &str) -> Result<(), BadClusterId> {
    let ok = !cluster.is_empty()
        && cluster.len() <= 200
        && cluster.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(BadClusterId(cluster.to_string()))
    }
}

/// The node id a DNS name gives for `cluster`, if it is a node name of it.
pub fn node_of(name: &str, cluster: &str) -> Option<NodeId> {
    let rest = name.strip_prefix("node-")?;
    let id = rest.strip_suffix(NAME_SUFFIX)?.strip_suffix('.')?;
    let id = id.strip_suffix(cluster)?.strip_suffix('.')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// Errors issuing or storing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    BadClusterId(#[from] BadClusterId),
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[cfg(feature = "raft-certs")]
pub use issue::{ClusterCa, NodeCert};

/// Issuing certificates (`rcgen` on ring): a CA per cluster and one
/// certificate per node. Behind the `raft-certs` feature.
#[cfg(feature = "raft-certs")]
mod issue {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::{check_cluster_id, node_name, operator_name, CertError};
    use crate::admin::NodeId;

    fn issue_err(e: rcgen::Error) -> CertError {
        CertError::Issue(e.to_string())
    }

    /// A cluster's CA: its certificate and key, PEM.
    #[derive(Clone)]
    pub struct ClusterCa {
        pub cluster: String,
        pub cert_pem: String,
        pub key_pem: String,
    }

    impl std::fmt::Debug for ClusterCa {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ClusterCa")
                .field("cluster", &self.cluster)
                .finish()
        }
    }

    /// A node's certificate and key, PEM.
    #[derive(Clone)]
    pub struct NodeCert {
        pub cert_pem: String,
        pub key_pem: String,
    }

    impl std::fmt::Debug for NodeCert {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NodeCert").finish_non_exhaustive()
        }
    }

    /// The CA's parameters: rebuilt the same from the cluster id, so a stored
    /// CA key signs certificates that chain to the stored CA certificate.
    fn ca_params(cluster: &str) -> Result<CertificateParams, CertError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(issue_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "roomkeeper");
        dn.push(DnType::CommonName, format!("roomkeeper raft CA {cluster}"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2124, 1, 1);
        Ok(p)
    }

    impl ClusterCa {
        /// A new CA for `cluster`.
        pub fn generate(cluster: &str) -> Result<Self, CertError> {
            check_cluster_id(cluster)?;
            let key = KeyPair::generate().map_err(issue_err)?;
            let cert = ca_params(cluster)?.self_signed(&key).map_err(issue_err)?;
            Ok(Self {
                cluster: cluster.to_string(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }

        /// A certificate for node `id` of this CA's cluster, usable both to
        /// accept and to dial.
        pub fn node_cert(&self, id: NodeId) -> Result<NodeCert, CertError> {
            self.node_cert_named(&self.cluster, id)
        }

        /// A certificate from this CA naming node `id` of `cluster`, which
        /// may be another cluster than the CA's: for tests of the refusal.
        pub fn node_cert_named(&self, cluster: &str, id: NodeId) -> Result<NodeCert, CertError> {
            let ca_key = KeyPair::from_pem(&self.key_pem).map_err(issue_err)?;
            let issuer = Issuer::new(ca_params(&self.cluster)?, ca_key);
            let key = KeyPair::generate().map_err(issue_err)?;
            let name = node_name(cluster, id);
            let mut p = CertificateParams::new(vec![name.clone()]).map_err(issue_err)?;
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.not_before = rcgen::date_time_ymd(2024, 1, 1);
            p.not_after = rcgen::date_time_ymd(2124, 1, 1);
            let cert = p.signed_by(&key, &issuer).map_err(issue_err)?;
            Ok(NodeCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }

        /// A server certificate for a node's client and admin HTTP listeners,
        /// naming `names` (DNS names or IP addresses, as clients dial them).
        pub fn server_cert(&self, names: &[String]) -> Result<NodeCert, CertError> {
            self.leaf(names.to_vec(), vec![ExtendedKeyUsagePurpose::ServerAuth])
        }

        /// The client certificate of the operator of this CA's cluster
        /// (`operator_name`): the identity the admin API accepts.
        pub fn operator_cert(&self) -> Result<NodeCert, CertError> {
            self.operator_cert_named(&self.cluster)
        }

        /// An operator certificate naming the operator of `cluster`, which
        /// may be another cluster than the CA's: for tests of the refusal.
        pub fn operator_cert_named(&self, cluster: &str) -> Result<NodeCert, CertError> {
            self.leaf(
                vec![operator_name(cluster)],
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            )
        }

        fn leaf(
            &self,
            names: Vec<String>,
            usages: Vec<ExtendedKeyUsagePurpose>,
        ) -> Result<NodeCert, CertError> {
            let ca_key = KeyPair::from_pem(&self.key_pem).map_err(issue_err)?;
            let issuer = Issuer::new(ca_params(&self.cluster)?, ca_key);
            let key = KeyPair::generate().map_err(issue_err)?;
            let first = names
                .first()
                .cloned()
                .ok_or_else(|| CertError::Issue("a certificate needs a name".into()))?;
            let mut p = CertificateParams::new(names).map_err(issue_err)?;
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, first);
            p.extended_key_usages = usages;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.not_before = rcgen::date_time_ymd(2024, 1, 1);
            p.not_after = rcgen::date_time_ymd(2124, 1, 1);
            let cert = p.signed_by(&key, &issuer).map_err(issue_err)?;
            Ok(NodeCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }

        /// Writes `cert` with this CA into `dir` in the cert-manager layout
        /// (`ca.crt`, `tls.crt`, `tls.key`).
        pub fn write_dir(&self, cert: &NodeCert, dir: &Path) -> Result<(), CertError> {
            write_file(dir, "ca.crt", &self.cert_pem, false)?;
            write_file(dir, "tls.crt", &cert.cert_pem, false)?;
            write_file(dir, "tls.key", &cert.key_pem, true)
        }

        /// Loads a CA written by `write` (or `generate`d and kept elsewhere).
        pub fn read(dir: &Path, cluster: &str) -> Result<Self, CertError> {
            let read = |name: &str| {
                let p = dir.join(name);
                std::fs::read_to_string(&p).map_err(|source| CertError::Read {
                    path: p.display().to_string(),
                    source,
                })
            };
            Ok(Self {
                cluster: cluster.to_string(),
                cert_pem: read("ca.crt")?,
                key_pem: read("ca.key")?,
            })
        }

        /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`.
        pub fn write(&self, dir: &Path) -> Result<(), CertError> {
            write_file(dir, "ca.crt", &self.cert_pem, false)?;
            write_file(dir, "ca.key", &self.key_pem, true)
        }

        /// Writes a node's directory in the cert-manager layout.
        pub fn write_node_dir(&self, id: NodeId, dir: &Path) -> Result<(), CertError> {
            self.write_node_dir_named(&self.cluster, id, dir)
        }

        /// `write_node_dir` with a certificate naming a node of `cluster`.
        pub fn write_node_dir_named(
            &self,
            cluster: &str,
            id: NodeId,
            dir: &Path,
        ) -> Result<(), CertError> {
            let node = self.node_cert_named(cluster, id)?;
            write_file(dir, "ca.crt", &self.cert_pem, false)?;
            write_file(dir, "tls.crt", &node.cert_pem, false)?;
            write_file(dir, "tls.key", &node.key_pem, true)
        }
    }

    fn write_file(dir: &Path, name: &str, text: &str, secret: bool) -> Result<(), CertError> {
        let path = dir.join(name);
        let err = |source| CertError::Write {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&path).map_err(err)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_parse_only_for_their_cluster() {
        assert_eq!(node_of("node-7.shop.raft.roomkeeper", "shop"), Some(7));
        assert_eq!(node_of("node-7.shop.raft.roomkeeper", "shop2"), None);
        assert_eq!(node_of("node-7.ashop.raft.roomkeeper", "shop"), None);
        assert_eq!(node_of("node-x.shop.raft.roomkeeper", "shop"), None);
        assert_eq!(node_of("node-.shop.raft.roomkeeper", "shop"), None);
        assert_eq!(node_of("node-7.shop.raft.example", "shop"), None);
        assert!(check_cluster_id("eu-1.shop").is_ok());
        assert!(check_cluster_id("Shop").is_err());
        assert!(check_cluster_id("a..b").is_err());
    }

    #[test]
    fn the_operator_name_is_not_a_node_name() {
        assert_eq!(operator_name("shop"), "shop.operator.roomkeeper");
        assert_eq!(node_of(&operator_name("shop"), "shop"), None);
    }
}
