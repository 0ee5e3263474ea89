//! TLS on the pods' client and admin APIs (issue 16; docs/decisions.md D46).
//!
//! - `<cluster>-<region>-api-tls` holds the region's API server certificate
//!   in the cert-manager layout (`ca.crt`, `tls.crt`, `tls.key`), issued from
//!   the cluster's CA (`<cluster>-raft-ca`, D45). It names the cluster's API
//!   name (`local.api.roomkeeper`, what the operator expects when it dials a
//!   pod by IP) and the DNS names of the region's Services, as clients and
//!   gateways dial them. The region's pods mount it at `--http-tls-dir`.
//! - The operator's node client is [`JsonClient::routed`]: plain HTTP to a
//!   pod whose spec says `--insecure-plaintext-http`, TLS through the
//!   cluster's pool to a pod whose spec says `--http-tls-dir`, learnt from
//!   the pods each time they are listed ([`NodeRoutes::learn`]). A cluster rolling
//!   from one to the other is reached at every step.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use roomkeeper_api::raft_identity::{api_server_name, CertError, ClusterCa};
use roomkeeper_control::http::{JsonClient, TlsPool, TlsSetupError};

use crate::controller::{Context, Error, MANAGER};
use crate::crd::LiveRoomCluster;
use crate::raft_certs::{certificate_secret, read_certificate_secret, RaftCertsError, CA_CRT};
use crate::resources::{self, cluster_name, Names, NODE_CLUSTER_ID};

/// Keys of the API certificate Secret (the cert-manager layout).
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// The annotation on the Secret listing the names its certificate carries:
/// a Service renamed or a namespace moved issues it anew.
pub const NAMES_ANNOTATION: &str = "roomkeeper.dev/api-tls-names";

/// The names a region's API server certificate carries: the cluster's API
/// name, and each Service of the region the way clients resolve it (short,
/// namespaced, `.svc`, `.svc.cluster.local`), with a wildcard under the
/// headless Service for each pod's own name.
pub fn api_names(cluster: &str, region: &str, ns: &str) -> Vec<String> {
    let names = Names { cluster };
    let mut out = vec![api_server_name(NODE_CLUSTER_ID)];
    for svc in [names.client_service(region), names.peers_service(region)] {
        out.push(svc.clone());
        out.push(format!("{svc}.{ns}"));
        out.push(format!("{svc}.{ns}.svc"));
        out.push(format!("{svc}.{ns}.svc.cluster.local"));
    }
    let peers = names.peers_service(region);
    out.push(format!("*.{peers}.{ns}.svc"));
    out.push(format!("*.{peers}.{ns}.svc.cluster.local"));
    out
}

/// The data the region's API Secret must hold, or `None` when `existing` (its
/// data) already holds a pair from this CA for exactly `names`
/// (`existing_names`, from the annotation). A pair is reissued whole, never
/// patched: the node reloads the directory (D41) and takes the new one.
pub fn plan_api_secret(
    ca: &ClusterCa,
    existing: &BTreeMap<String, String>,
    existing_names: Option<&str>,
    names: &[String],
) -> Result<Option<BTreeMap<String, String>>, CertError> {
    let current = existing.get(CA_CRT) == Some(&ca.cert_pem)
        && existing.contains_key(TLS_CRT)
        && existing.contains_key(TLS_KEY)
        && existing_names == Some(names.join(",").as_str());
    if current {
        return Ok(None);
    }
    let cert = ca.server_cert(names)?;
    Ok(Some(BTreeMap::from([
        (CA_CRT.to_string(), ca.cert_pem.clone()),
        (TLS_CRT.to_string(), cert.cert_pem),
        (TLS_KEY.to_string(), cert.key_pem),
    ])))
}

/// The region's API Secret with `data`, labelled like the cluster's other
/// Secrets and, like the Raft certificates, without an owner reference.
pub fn api_secret(
    lrc: &LiveRoomCluster,
    region: &str,
    names: &[String],
    data: BTreeMap<String, String>,
) -> Secret {
    let name = Names {
        cluster: &cluster_name(lrc),
    }
    .api_certs(region);
    let mut secret = certificate_secret(lrc, name, region, "kubernetes.io/tls", data);
    secret.metadata.annotations = Some(BTreeMap::from([(
        NAMES_ANNOTATION.to_string(),
        names.join(","),
    )]));
    secret
}

/// Every region of `lrc` has its API server certificate from `ca`, before a
/// pod that mounts it is created, and the CA's certificate is published in
/// the ConfigMap `<cluster>-api-ca`: one read each when nothing changed.
pub async fn ensure_api_certs(
    ctx: &Context,
    apis: &crate::regions::RegionApis,
    lrc: &LiveRoomCluster,
    ns: &str,
    ca: &ClusterCa,
) -> Result<(), Error> {
    let cluster = cluster_name(lrc);
    // The CA's certificate where a gateway's BackendTLSPolicy can name it.
    crate::controller::apply_if_changed(ctx, ns, resources::api_ca_configmap(lrc, &ca.cert_pem))
        .await?;
    for region in &lrc.spec.regions {
        // In the region's own cluster, where its pods mount it.
        let api: Api<Secret> = Api::namespaced(apis.of(&region.name).clone(), ns);
        let name = Names { cluster: &cluster }.api_certs(&region.name);
        let (live, existing) = match read_certificate_secret(&api, &name, &cluster).await {
            Ok(read) => read,
            Err(e) if apis.is_remote(&region.name) && crate::controller::unreachable(&e) => {
                tracing::warn!(region = %region.name, error = %e, "region's cluster unreachable: its API certificate is not checked");
                continue;
            }
            Err(e) => return Err(e),
        };
        let existing_names = live
            .as_ref()
            .and_then(|s| s.annotations().get(NAMES_ANNOTATION).cloned());
        let names = api_names(&cluster, &region.name, ns);
        let Some(data) = plan_api_secret(ca, &existing, existing_names.as_deref(), &names)
            .map_err(RaftCertsError::from)?
        else {
            continue;
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crate::controller::for_region(
                apis,
                &region.name,
                api_secret(lrc, &region.name, &names, data),
            )),
        )
        .await?;
        ctx.metrics.writes.with_label_values(&["Secret"]).inc();
        tracing::info!(secret = %name, "API server certificate written");
        ctx.event_for(
            lrc,
            false,
            "ApiCertificateIssued",
            format!(
                "API server certificate in Secret {name} for {}",
                names.join(", ")
            ),
        )
        .await;
    }
    Ok(())
}

/// Whether a pod's node serves its client and admin APIs over TLS, by its
/// own spec: `Some(true)` with `--http-tls-dir`, `Some(false)` with
/// `--insecure-plaintext-http`, `None` for a pod running neither (not a node).
pub fn pod_serves_tls(pod: &Pod) -> Option<bool> {
    let spec = pod.spec.as_ref()?;
    spec.containers.iter().find_map(|c| {
        let args = c.args.as_ref()?;
        if args.iter().any(|a| a == "--http-tls-dir") {
            Some(true)
        } else if args.iter().any(|a| a == "--insecure-plaintext-http") {
            Some(false)
        } else {
            None
        }
    })
}

/// The operator's client to its clusters' nodes: one routed [`JsonClient`]
/// (clones share its routes) and a TLS pool per cluster, rebuilt when the
/// cluster's CA changes. Shared by the cluster controller, the drill runner
/// and the schedules.
#[derive(Clone)]
pub struct NodeRoutes {
    pub http: JsonClient,
    pools: Arc<Mutex<HashMap<String, (String, TlsPool)>>>,
}

impl Default for NodeRoutes {
    fn default() -> Self {
        Self {
            http: JsonClient::routed(),
            pools: Arc::default(),
        }
    }
}

/// Why the operator cannot learn how to reach a cluster's pods.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("reading the cluster's CA: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Ca(#[from] RaftCertsError),
    #[error("the TLS client to the cluster's nodes: {0}")]
    Tls(#[from] TlsSetupError),
}

impl NodeRoutes {
    /// The pool for the cluster `ns/cluster` under `ca`: trusts only that CA,
    /// presents the operator's certificate from it, expects the cluster's
    /// API name from every node.
    pub fn pool(&self, ns: &str, cluster: &str, ca: &ClusterCa) -> Result<TlsPool, TlsSetupError> {
        let key = format!("{ns}/{cluster}");
        if let Ok(m) = self.pools.lock() {
            if let Some((pem, pool)) = m.get(&key) {
                if *pem == ca.cert_pem {
                    return Ok(pool.clone());
                }
            }
        }
        let op = ca
            .operator_cert()
            .map_err(|e| TlsSetupError::Config(format!("the operator's certificate: {e}")))?;
        let pool = TlsPool::from_pem(
            ca.cert_pem.as_bytes(),
            Some((op.cert_pem.as_bytes(), op.key_pem.as_bytes())),
            Some(&api_server_name(&ca.cluster)),
        )?;
        if let Ok(mut m) = self.pools.lock() {
            m.insert(key, (ca.cert_pem.clone(), pool.clone()));
        }
        Ok(pool)
    }

    /// Routes each of `pods` (of the cluster `ns/cluster`) the way its spec
    /// says it serves: TLS through the cluster's pool under `ca`, or plain.
    pub fn learn_with(
        &self,
        ns: &str,
        cluster: &str,
        ca: &ClusterCa,
        pods: &[Pod],
    ) -> Result<(), TlsSetupError> {
        let pool = self.pool(ns, cluster, ca)?;
        for pod in pods {
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) else {
                continue;
            };
            match pod_serves_tls(pod) {
                Some(true) => {
                    self.http.route_tls(ip, &pool);
                }
                Some(false) => {
                    self.http.route_plain(ip);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// [`Self::learn_with`], reading the cluster's CA Secret (one read) only
    /// when a pod serves TLS.
    pub async fn learn(
        &self,
        client: &Client,
        ns: &str,
        cluster: &str,
        pods: &[Pod],
    ) -> Result<(), LearnError> {
        if !pods.iter().any(|p| pod_serves_tls(p) == Some(true)) {
            for ip in pods
                .iter()
                .filter(|p| pod_serves_tls(p) == Some(false))
                .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref())
            {
                self.http.route_plain(ip);
            }
            return Ok(());
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let ca = api.get(&Names { cluster }.raft_ca()).await?;
        let ca = crate::raft_certs::ca_from_secret(&ca)?;
        self.learn_with(ns, cluster, &ca, pods)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_cover_the_operators_name_and_every_way_to_dial_a_service() {
        let names = api_names("shop", "east", "live");
        assert_eq!(names[0], "local.api.roomkeeper");
        for n in [
            "shop-east",
            "shop-east.live",
            "shop-east.live.svc",
            "shop-east.live.svc.cluster.local",
            "shop-east-peers.live.svc.cluster.local",
            "*.shop-east-peers.live.svc",
            "*.shop-east-peers.live.svc.cluster.local",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn a_pair_is_kept_while_ca_and_names_hold_and_reissued_when_either_changes() {
        let ca = ClusterCa::generate(NODE_CLUSTER_ID).expect("ca");
        let names = api_names("shop", "east", "live");
        let first = plan_api_secret(&ca, &BTreeMap::new(), None, &names)
            .expect("issue")
            .expect("a new Secret needs data");
        assert_eq!(first[CA_CRT], ca.cert_pem);
        let joined = names.join(",");
        assert!(plan_api_secret(&ca, &first, Some(&joined), &names)
            .expect("plan")
            .is_none());
        // Another namespace: new names, a new pair.
        let moved = api_names("shop", "east", "staging");
        let again = plan_api_secret(&ca, &first, Some(&joined), &moved)
            .expect("plan")
            .expect("reissued for new names");
        assert_ne!(again[TLS_CRT], first[TLS_CRT]);
        // Another CA: a new pair under it.
        let other = ClusterCa::generate(NODE_CLUSTER_ID).expect("ca");
        let under_other = plan_api_secret(&other, &first, Some(&joined), &names)
            .expect("plan")
            .expect("reissued under the new CA");
        assert_eq!(under_other[CA_CRT], other.cert_pem);
    }

    #[test]
    fn a_pods_scheme_is_read_from_its_own_args() {
        let pod = |args: &[&str]| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "node", "args": args}]}
            }))
            .expect("pod")
        };
        assert_eq!(
            pod_serves_tls(&pod(&["node", "--http-tls-dir", "/x"])),
            Some(true)
        );
        assert_eq!(
            pod_serves_tls(&pod(&["node", "--insecure-plaintext-http"])),
            Some(false)
        );
        assert_eq!(pod_serves_tls(&pod(&["sleep"])), None);
    }
}
