//! Raft certificates of a cluster's pods (issue 16; docs/decisions.md D45,
//! docs/security.md): the operator is the cluster's CA.
//!
//! - `<cluster>-raft-ca` holds the CA (`ca.crt`, `ca.key`): created once,
//!   never rewritten, kept with the other keys under `deletionPolicy: Retain`.
//! - `<cluster>-<region>-raft-certs` holds `ca.crt` and, for every node id the
//!   identity map gives a pod of that region, `node-<id>.crt` and
//!   `node-<id>.key`. The region's pods mount it at `--raft-tls-dir`; a node
//!   loads the pair of its own id (order-store `raft_tls::node_pair_paths`).
//!
//! The pure part (what the region Secret should hold, given the CA, the
//! Secret as it is and the ids wanted) is here and unit-tested; the controller
//! and the evacuation call [`ensure_node_certs`] whenever the identity map may
//! have given an id, before any pod that needs it can start.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use roomkeeper_api::raft_identity::{CertError, ClusterCa};

use crate::controller::{Context, Error, MANAGER};
use crate::crd::LiveRoomCluster;
use crate::resources::{self, cluster_name, Identities, Names, CLUSTER_LABEL, NODE_CLUSTER_ID};

/// Keys of the CA Secret.
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// Why the cluster's Raft certificates cannot be read or issued.
#[derive(Debug, thiserror::Error)]
pub enum RaftCertsError {
    #[error(
        "Secret {secret} has no {key}: the cluster's Raft CA is unreadable; restore it from a backup \
         (deleting it makes a new CA, which the running pods do not trust until they restart)"
    )]
    MissingKey { secret: String, key: String },
    #[error(
        "Secret {secret} belongs to cluster {owner:?}, not {cluster}: its keys are left alone"
    )]
    Foreign {
        secret: String,
        owner: Option<String>,
        cluster: String,
    },
    #[error("issuing a Raft certificate: {0}")]
    Cert(#[from] CertError),
    #[error("the operator's TLS client to the cluster's nodes: {0}")]
    ClientTls(String),
}

/// The CA Secret's data for a new CA.
pub fn new_ca_data() -> Result<BTreeMap<String, String>, CertError> {
    let ca = ClusterCa::generate(NODE_CLUSTER_ID)?;
    Ok(BTreeMap::from([
        (CA_CRT.to_string(), ca.cert_pem),
        (CA_KEY.to_string(), ca.key_pem),
    ]))
}

fn text(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// The CA a `<cluster>-raft-ca` Secret holds.
pub fn ca_from_secret(s: &Secret) -> Result<ClusterCa, RaftCertsError> {
    let get = |key: &str| {
        text(s, key).ok_or_else(|| RaftCertsError::MissingKey {
            secret: s.name_any(),
            key: key.to_string(),
        })
    };
    Ok(ClusterCa {
        cluster: NODE_CLUSTER_ID.to_string(),
        cert_pem: get(CA_CRT)?,
        key_pem: get(CA_KEY)?,
    })
}

/// The node ids the identity map gives pods of `region`'s StatefulSet
/// (`<cluster>-<region>-<ordinal>`), including pods no longer in the spec
/// that still run (they leave the group before they go).
pub fn region_ids(ids: &Identities, cluster: &str, region: &str) -> BTreeSet<u64> {
    let prefix = format!("{}-", Names { cluster }.statefulset(region));
    ids.by_pod
        .iter()
        .filter(|(pod, _)| {
            pod.strip_prefix(&prefix)
                .is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|(_, (id, _))| *id)
        .collect()
}

/// `node-<id>.crt` or `node-<id>.key`.
fn is_pair_key(k: &str) -> bool {
    k.strip_prefix("node-")
        .and_then(|r| r.strip_suffix(".crt").or_else(|| r.strip_suffix(".key")))
        .is_some_and(|id| id.parse::<u64>().is_ok())
}

fn crt_key(id: u64) -> String {
    format!("node-{id}.crt")
}

fn key_key(id: u64) -> String {
    format!("node-{id}.key")
}

/// What a region Secret must become.
#[derive(Debug)]
pub struct RegionCerts {
    pub data: BTreeMap<String, String>,
    /// Ids given a new certificate now.
    pub issued: Vec<u64>,
    /// Ids whose pair was dropped (they left the region's pods).
    pub dropped: Vec<u64>,
    /// The Secret held another CA's certificate: every pair was issued anew.
    pub new_ca: bool,
}

/// The data the region Secret needs for the ids in `want`, from `existing`
/// (its data as the API server holds it): pairs already there are kept (a
/// running node has loaded them), missing ones issued, those of ids not
/// wanted dropped. `None` when `existing` is already right. A Secret whose
/// `ca.crt` is not this CA's is issued anew entirely.
pub fn plan_region(
    ca: &ClusterCa,
    existing: &BTreeMap<String, String>,
    want: &BTreeSet<u64>,
) -> Result<Option<RegionCerts>, CertError> {
    let new_ca = existing.get(CA_CRT) != Some(&ca.cert_pem);
    let mut data = BTreeMap::from([(CA_CRT.to_string(), ca.cert_pem.clone())]);
    let mut issued = Vec::new();
    for &id in want {
        let kept = (!new_ca)
            .then(|| Some((existing.get(&crt_key(id))?, existing.get(&key_key(id))?)))
            .flatten();
        match kept {
            Some((crt, key)) => {
                data.insert(crt_key(id), crt.clone());
                data.insert(key_key(id), key.clone());
            }
            None => {
                let cert = ca.node_cert(id)?;
                data.insert(crt_key(id), cert.cert_pem);
                data.insert(key_key(id), cert.key_pem);
                issued.push(id);
            }
        }
    }
    let dropped: Vec<u64> = existing
        .keys()
        .filter_map(|k| k.strip_prefix("node-")?.strip_suffix(".crt")?.parse().ok())
        .filter(|id| !want.contains(id))
        .collect();
    // Keys someone else put there are not ours to judge (server-side apply
    // leaves them alone): comparing them would rewrite on every reconcile.
    let ours: BTreeMap<String, String> = existing
        .iter()
        .filter(|(k, _)| *k == CA_CRT || is_pair_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !new_ca && data == ours {
        return Ok(None);
    }
    Ok(Some(RegionCerts {
        data,
        issued,
        dropped,
        new_ca,
    }))
}

/// The region Secret with `data`: labelled like the cluster's other Secrets,
/// no owner reference (kept under `deletionPolicy: Retain`, as the CA is).
pub fn region_secret(
    lrc: &LiveRoomCluster,
    region: &str,
    data: BTreeMap<String, String>,
) -> Secret {
    let name = Names {
        cluster: &cluster_name(lrc),
    }
    .raft_certs(region);
    certificate_secret(lrc, name, region, "Opaque", data)
}

/// A certificate Secret of one region of `lrc` (`type_`, `data` as text):
/// labelled like the cluster's other Secrets, no owner reference (kept under
/// `deletionPolicy: Retain`, as the CA is). The Raft certificates and the
/// API certificate (crate::api_tls) are both written so.
pub(crate) fn certificate_secret(
    lrc: &LiveRoomCluster,
    name: String,
    region: &str,
    type_: &str,
    data: BTreeMap<String, String>,
) -> Secret {
    let cluster = cluster_name(lrc);
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            namespace: lrc.metadata.namespace.clone(),
            labels: Some(resources::labels(&cluster, Some(region))),
            ..Default::default()
        },
        type_: Some(type_.to_string()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The certificate Secret `name` as the API server holds it (if it exists)
/// and its data as text; refused, with its keys left alone, when another
/// cluster's label is on it.
pub(crate) async fn read_certificate_secret(
    api: &Api<Secret>,
    name: &str,
    cluster: &str,
) -> Result<(Option<Secret>, BTreeMap<String, String>), Error> {
    let live = api.get_opt(name).await?;
    if let Some(s) = &live {
        let owner = s.labels().get(CLUSTER_LABEL);
        if owner.map(String::as_str) != Some(cluster) {
            return Err(RaftCertsError::Foreign {
                secret: name.to_string(),
                owner: owner.cloned(),
                cluster: cluster.to_string(),
            }
            .into());
        }
    }
    let data = live
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .map(|d| {
            d.iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                .collect()
        })
        .unwrap_or_default();
    Ok((live, data))
}

/// Every region Secret of `lrc` holds a pair for each node id its pods have in
/// `ids` (and no other): issued now where missing, written by server-side
/// apply, with an event naming the ids. One read per region when nothing
/// changed.
pub async fn ensure_node_certs(
    ctx: &Context,
    apis: &crate::regions::RegionApis,
    lrc: &LiveRoomCluster,
    ns: &str,
    ca: &ClusterCa,
    ids: &Identities,
) -> Result<(), Error> {
    let cluster = cluster_name(lrc);
    let names = Names { cluster: &cluster };
    for region in &lrc.spec.regions {
        // In the region's own cluster, where its pods mount it.
        let api: Api<Secret> = Api::namespaced(apis.of(&region.name).clone(), ns);
        let name = names.raft_certs(&region.name);
        let (live, existing) = match read_certificate_secret(&api, &name, &cluster).await {
            Ok(read) => read,
            Err(e) if apis.is_remote(&region.name) && crate::controller::unreachable(&e) => {
                tracing::warn!(region = %region.name, error = %e, "region's cluster unreachable: its Raft certificates are not checked");
                continue;
            }
            Err(e) => return Err(e),
        };
        let want = region_ids(ids, &cluster, &region.name);
        let Some(plan) = plan_region(ca, &existing, &want).map_err(RaftCertsError::from)? else {
            continue;
        };
        if plan.new_ca && live.is_some() {
            tracing::warn!(secret = %name, "the region's Raft certificates are not from the cluster's CA: issuing every one anew");
        }
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crate::controller::for_region(
                apis,
                &region.name,
                region_secret(lrc, &region.name, plan.data),
            )),
        )
        .await?;
        ctx.metrics.writes.with_label_values(&["Secret"]).inc();
        tracing::info!(secret = %name, issued = ?plan.issued, dropped = ?plan.dropped, "raft certificates written");
        let mut note = format!(
            "Raft certificates in Secret {name}: issued for nodes {:?}",
            plan.issued
        );
        if !plan.dropped.is_empty() {
            note.push_str(&format!(
                ", dropped nodes {:?} (no longer in the region)",
                plan.dropped
            ));
        }
        ctx.event_for(lrc, false, "RaftCertificatesIssued", note)
            .await;
    }
    Ok(())
}

/// The cluster's CA as its Secret holds it (for callers outside a
/// reconcile's secrets phase: the evacuation).
pub async fn read_ca(ctx: &Context, lrc: &LiveRoomCluster, ns: &str) -> Result<ClusterCa, Error> {
    let cluster = cluster_name(lrc);
    let name = Names { cluster: &cluster }.raft_ca();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let s = api.get(&name).await?;
    Ok(ca_from_secret(&s)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_order_store::raft_tls::RaftTls;

    fn ids(pods: &[(&str, u64)]) -> Identities {
        let mut ids = Identities::parse(None).expect("empty map");
        for (pod, id) in pods {
            ids.by_pod.insert(pod.to_string(), (*id, None));
        }
        ids
    }

    #[test]
    fn region_ids_are_the_ids_of_that_regions_pods_only() {
        let ids = ids(&[
            ("shop-eu-0", 1),
            ("shop-eu-1", 2),
            ("shop-eu-west-0", 3),
            ("shop-us-0", 4),
            ("shopx-eu-0", 5),
        ]);
        assert_eq!(region_ids(&ids, "shop", "eu"), BTreeSet::from([1, 2]));
        assert_eq!(region_ids(&ids, "shop", "eu-west"), BTreeSet::from([3]));
        assert_eq!(region_ids(&ids, "shop", "us"), BTreeSet::from([4]));
        assert!(region_ids(&ids, "shop", "ap").is_empty());
    }

    #[test]
    fn a_region_secret_gets_pairs_for_new_ids_keeps_old_ones_and_drops_departed() {
        let ca = ClusterCa::generate(NODE_CLUSTER_ID).expect("ca");
        let first = plan_region(&ca, &BTreeMap::new(), &BTreeSet::from([1, 2]))
            .expect("plan")
            .expect("a new Secret is written");
        assert_eq!(first.issued, vec![1, 2]);
        assert!(first.dropped.is_empty());
        assert_eq!(
            first.data.keys().cloned().collect::<Vec<_>>(),
            [
                "ca.crt",
                "node-1.crt",
                "node-1.key",
                "node-2.crt",
                "node-2.key"
            ]
        );
        assert_eq!(first.data["ca.crt"], ca.cert_pem);
        // Nothing to do when it already holds what is wanted.
        assert!(plan_region(&ca, &first.data, &BTreeSet::from([1, 2]))
            .expect("plan")
            .is_none());
        // Node 2's volume was wiped: it is node 3 now. Node 1's pair is kept
        // byte for byte (its running node loaded it), 3 is issued, 2 dropped.
        let next = plan_region(&ca, &first.data, &BTreeSet::from([1, 3]))
            .expect("plan")
            .expect("changed");
        assert_eq!(next.issued, vec![3]);
        assert_eq!(next.dropped, vec![2]);
        assert_eq!(next.data["node-1.key"], first.data["node-1.key"]);
        assert!(!next.data.contains_key("node-2.crt"));
        assert!(!next.new_ca);
        // A key someone else added is left alone, and does not make every
        // reconcile write.
        let mut extra = next.data.clone();
        extra.insert("README".into(), "hands off".into());
        assert!(plan_region(&ca, &extra, &BTreeSet::from([1, 3]))
            .expect("plan")
            .is_none());
        // A pair missing its key is issued again.
        let mut torn = next.data.clone();
        torn.remove("node-3.key");
        let fixed = plan_region(&ca, &torn, &BTreeSet::from([1, 3]))
            .expect("plan")
            .expect("changed");
        assert_eq!(fixed.issued, vec![3]);
    }

    #[test]
    fn issued_pairs_chain_to_the_ca_and_name_their_node_of_the_nodes_cluster_id() {
        let data = new_ca_data().expect("ca data");
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("shop-raft-ca".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let ca = ca_from_secret(&secret).expect("ca back from its Secret");
        let plan = plan_region(&ca, &BTreeMap::new(), &BTreeSet::from([7]))
            .expect("plan")
            .expect("new");
        // The Secret, as a volume, is a directory the node loads its own pair
        // from, under the cluster id the pods run with.
        let dir = tempfile::tempdir().expect("tempdir");
        for (k, v) in &plan.data {
            std::fs::write(dir.path().join(k), v).expect("write");
        }
        let tls = RaftTls::load(dir.path(), NODE_CLUSTER_ID, 7).expect("node 7 loads");
        assert_eq!(tls.node_id, 7);
        assert!(RaftTls::load(dir.path(), NODE_CLUSTER_ID, 8).is_err());
        // A Secret without the key is refused with its name.
        let mut broken = secret.clone();
        broken.data.as_mut().expect("data").remove(CA_KEY);
        let err = ca_from_secret(&broken).expect_err("no key");
        assert!(err.to_string().contains("shop-raft-ca") && err.to_string().contains("ca.key"));
        // Another CA's region Secret is issued anew, all of it.
        let other = ClusterCa::generate(NODE_CLUSTER_ID).expect("other ca");
        let again = plan_region(&other, &plan.data, &BTreeSet::from([7]))
            .expect("plan")
            .expect("changed");
        assert!(again.new_ca);
        assert_eq!(again.issued, vec![7]);
        assert_eq!(again.data["ca.crt"], other.cert_pem);
    }
}
