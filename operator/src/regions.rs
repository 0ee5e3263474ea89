//! Where each region of a cluster runs: in the operator's own Kubernetes
//! cluster, or in the one a kubeconfig Secret names
//! (`spec.regions[].kubeconfigSecretRef`, D57).
//!
//! The cluster object, its Events, its node-id map, its keys and its CA, and
//! every command object (approvals, switchovers, drills) live in the
//! operator's cluster. A region's StatefulSet, Services, budget, pods,
//! volumes, NetworkPolicy and certificate Secrets live in the region's own
//! cluster, and so do copies of what its pods mount (the node-id map, the
//! tokens and the contact keys): a pod mounts only objects of its namespace in
//! its cluster. Objects in another cluster carry no owner reference (an owner
//! must be in the same cluster); the finalizer deletes them.
//!
//! A region whose API server cannot be reached (the region is lost) does not
//! stop the others: its objects are left as they are, its pods are the ones
//! it listed last (not ready; a node's silence is then seen by probing
//! their addresses), or those of its slots when the operator has not
//! listed it since it started.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, ResourceExt};
use tokio::sync::mpsc;

use crate::crd::LiveRoomCluster;

/// Why a region's cluster cannot be addressed.
#[derive(Debug, thiserror::Error)]
pub enum RegionApiError {
    #[error("spec.regions[{index}].kubeconfigSecretRef: Secret {secret:?} not found in namespace {namespace:?}")]
    NoSecret {
        index: usize,
        secret: String,
        namespace: String,
    },
    #[error("spec.regions[{index}].kubeconfigSecretRef: Secret {secret:?} has no key {key:?}")]
    NoKey {
        index: usize,
        secret: String,
        key: String,
    },
    #[error("spec.regions[{index}].kubeconfigSecretRef: Secret {secret:?} key {key:?} is not a usable kubeconfig: {reason}")]
    BadKubeconfig {
        index: usize,
        secret: String,
        key: String,
        reason: String,
    },
    #[error("reading Secret {secret:?}: {source}")]
    Read {
        secret: String,
        #[source]
        source: kube::Error,
    },
}

impl RegionApiError {
    /// A problem the spec's author must fix (as opposed to an API error).
    pub fn is_spec_problem(&self) -> bool {
        !matches!(self, RegionApiError::Read { .. })
    }
}

/// Clients built from kubeconfig Secrets, kept while the Secret's
/// resourceVersion holds (a rotated credential builds a new one); and the
/// pods each region's cluster listed last, for when it cannot be reached.
pub struct KubeconfigClients {
    built: Mutex<BTreeMap<SecretKey, (String, Client)>>,
    last_pods: LastPods,
    /// A pod watch per region in another cluster, by namespace, cluster and
    /// region, with the Secret version its client came from.
    watches: Mutex<BTreeMap<RegionKey, (String, tokio::task::JoinHandle<()>)>>,
    /// Where those watches ask for a reconcile of their cluster.
    wake: mpsc::UnboundedSender<ObjectRef<LiveRoomCluster>>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<LiveRoomCluster>>>>,
}

impl Default for KubeconfigClients {
    fn default() -> Self {
        let (wake, woken) = mpsc::unbounded_channel();
        KubeconfigClients {
            built: Mutex::default(),
            last_pods: LastPods::default(),
            watches: Mutex::default(),
            wake,
            woken: Mutex::new(Some(woken)),
        }
    }
}

/// A kubeconfig's place: namespace, Secret name, key.
type SecretKey = (String, String, String);

/// A region of a cluster: namespace, cluster, region.
type RegionKey = (String, String, String);

/// The pods last listed in each region's own cluster, by namespace,
/// cluster and region.
pub type LastPods = Arc<Mutex<BTreeMap<RegionKey, Vec<Pod>>>>;

impl KubeconfigClients {
    /// The API client of every region of `lrc`: its own cluster's for
    /// regions without a kubeconfig Secret.
    pub async fn resolve(
        &self,
        own: &Client,
        lrc: &LiveRoomCluster,
        ns: &str,
    ) -> Result<RegionApis, RegionApiError> {
        let mut remote = BTreeMap::new();
        let secrets: Api<Secret> = Api::namespaced(own.clone(), ns);
        for (index, region) in lrc.spec.regions.iter().enumerate() {
            let Some(r) = &region.kubeconfig_secret_ref else {
                continue;
            };
            match self.client_of(&secrets, index, r, ns).await {
                Ok((client, version)) => {
                    self.watch_pods(&client, &version, lrc, ns, &region.name);
                    remote.insert(region.name.clone(), client);
                }
                Err(e @ RegionApiError::Read { .. }) => return Err(e),
                // A running cluster is not stopped by one region's
                // credentials (a Secret deleted or badly rotated): the
                // region counts as unreachable, saying why, until it is
                // fixed. Before the group exists it is the spec's problem.
                Err(e) if bootstrapped(lrc) => {
                    tracing::warn!(region = %region.name, error = %e, "region's kubeconfig unusable: the region counts as unreachable");
                    remote.insert(region.name.clone(), unreachable_client(e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(RegionApis {
            own: own.clone(),
            remote,
            last_pods: self.last_pods.clone(),
        })
    }
}

impl KubeconfigClients {
    /// The client the Secret `r` names, built now or kept from before (while
    /// the Secret's resourceVersion holds), with that version.
    async fn client_of(
        &self,
        secrets: &Api<Secret>,
        index: usize,
        r: &crate::crd::SecretKeyRef,
        ns: &str,
    ) -> Result<(Client, String), RegionApiError> {
        let secret = secrets
            .get_opt(&r.name)
            .await
            .map_err(|source| RegionApiError::Read {
                secret: r.name.clone(),
                source,
            })?
            .ok_or_else(|| RegionApiError::NoSecret {
                index,
                secret: r.name.clone(),
                namespace: ns.to_string(),
            })?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        let cache_key = (ns.to_string(), r.name.clone(), r.key.clone());
        let cached = self
            .built
            .lock()
            .ok()
            .and_then(|b| b.get(&cache_key).cloned())
            .filter(|(v, _)| *v == version)
            .map(|(_, c)| c);
        if let Some(c) = cached {
            return Ok((c, version));
        }
        let text = crate::controller::secret_value(&secret, &r.key).ok_or_else(|| {
            RegionApiError::NoKey {
                index,
                secret: r.name.clone(),
                key: r.key.clone(),
            }
        })?;
        let client = client_from_kubeconfig(&text).await.map_err(|reason| {
            RegionApiError::BadKubeconfig {
                index,
                secret: r.name.clone(),
                key: r.key.clone(),
                reason,
            }
        })?;
        if let Ok(mut b) = self.built.lock() {
            b.insert(cache_key, (version.clone(), client.clone()));
        }
        tracing::info!(secret = %r.name, "client for a region's Kubernetes cluster built from its kubeconfig");
        Ok((client, version))
    }

    /// The reconciles that pod changes in regions' own clusters ask for
    /// (taken once, by the controller).
    pub fn take_wakeups(
        &self,
    ) -> Option<impl futures::Stream<Item = ObjectRef<LiveRoomCluster>> + Send + 'static> {
        let rx = self.woken.lock().ok()?.take()?;
        Some(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|r| (r, rx))
        }))
    }

    /// Watches the cluster's pods in a region's own cluster (the
    /// controller's pod watch sees only its own cluster): any change, and
    /// any watch error (its API server gone), asks for a reconcile at once,
    /// so a lost region is noticed within a second, not at the periodic
    /// requeue. One watch per region, replaced when its client is.
    fn watch_pods(
        &self,
        client: &Client,
        version: &str,
        lrc: &LiveRoomCluster,
        ns: &str,
        region: &str,
    ) {
        let cluster = lrc.name_any();
        let key = (ns.to_string(), cluster.clone(), region.to_string());
        let Ok(mut watches) = self.watches.lock() else {
            return;
        };
        if watches
            .get(&key)
            .is_some_and(|(v, task)| v == version && !task.is_finished())
        {
            return;
        }
        let target = ObjectRef::<LiveRoomCluster>::new(&cluster).within(ns);
        let wake = self.wake.clone();
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let selector = format!(
            "{}={cluster},{}={region}",
            crate::resources::CLUSTER_LABEL,
            crate::resources::REGION_LABEL
        );
        let task = tokio::spawn(async move {
            let events =
                watcher(pods, watcher::Config::default().labels(&selector)).default_backoff();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match &event {
                    // Answered with a refusal: the region's RBAC lacks a verb
                    // (deploy/region-rbac.yaml); changes there are then seen
                    // at the periodic reconcile only.
                    Err(
                        watcher::Error::InitialListFailed(kube::Error::Api(e))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(e)),
                    ) => {
                        tracing::warn!(error = %e, "the pods of a region's cluster cannot be watched");
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "pod watch of a region's cluster failed");
                    }
                    Ok(_) => {}
                }
                if wake.send(target.clone()).is_err() {
                    return;
                }
            }
        });
        if let Some((_, old)) = watches.insert(key, (version.to_string(), task)) {
            old.abort();
        }
    }

    /// Stops the pod watches of a deleted cluster.
    pub fn forget(&self, ns: &str, cluster: &str) {
        if let Ok(mut watches) = self.watches.lock() {
            watches.retain(|(n, c, _), (_, task)| {
                let keep = !(n == ns && c == cluster);
                if !keep {
                    task.abort();
                }
                keep
            });
        }
    }
}

/// Whether the cluster's Raft group exists (its status says so).
fn bootstrapped(lrc: &LiveRoomCluster) -> bool {
    lrc.status.as_ref().is_some_and(|s| s.bootstrapped)
}

/// A client whose every call fails at once with `why`, as a connection
/// would: the paths for an unreachable region then apply.
fn unreachable_client(why: String) -> Client {
    let service = tower::service_fn(move |_req: http::Request<kube::client::Body>| {
        let why = why.clone();
        async move {
            Err::<http::Response<kube::client::Body>, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                why,
            ))
        }
    });
    Client::new(service, "default")
}

async fn client_from_kubeconfig(text: &str) -> Result<Client, String> {
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| e.to_string())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Client::try_from(config).map_err(|e| e.to_string())
}

/// The API client of each region of one cluster (see the module docs).
#[derive(Clone)]
pub struct RegionApis {
    own: Client,
    remote: BTreeMap<String, Client>,
    last_pods: LastPods,
}

/// One Kubernetes cluster that hosts regions of a LiveRoomCluster.
pub struct Site<'a> {
    pub client: &'a Client,
    /// The one region it hosts, for a region's own cluster; `None` for the
    /// operator's cluster, which hosts every other region (and those that
    /// left the spec).
    pub region: Option<&'a str>,
}

impl RegionApis {
    /// Every region in the operator's own cluster (unit tests, and clusters
    /// without kubeconfig Secrets).
    pub fn local(own: Client) -> RegionApis {
        RegionApis {
            own,
            remote: BTreeMap::new(),
            last_pods: LastPods::default(),
        }
    }

    /// Remembers the pods a region's cluster listed.
    pub fn remember_pods(&self, ns: &str, cluster: &str, region: &str, pods: &[Pod]) {
        if let Ok(mut m) = self.last_pods.lock() {
            m.insert(
                (ns.to_string(), cluster.to_string(), region.to_string()),
                pods.to_vec(),
            );
        }
    }

    /// The pods a region's cluster listed last (none before its first list),
    /// as they stand when it cannot be reached: not ready (nobody can tell).
    pub fn last_pods(&self, ns: &str, cluster: &str, region: &str) -> Vec<Pod> {
        let mut pods = self
            .last_pods
            .lock()
            .ok()
            .and_then(|m| {
                m.get(&(ns.to_string(), cluster.to_string(), region.to_string()))
                    .cloned()
            })
            .unwrap_or_default();
        for p in &mut pods {
            if let Some(s) = p.status.as_mut() {
                s.conditions = None;
            }
        }
        pods
    }

    /// The client of `region`'s cluster; the operator's own for a region
    /// without a Secret or one no longer in the spec.
    pub fn of(&self, region: &str) -> &Client {
        self.remote.get(region).unwrap_or(&self.own)
    }

    /// The operator's own cluster's client.
    pub fn own(&self) -> &Client {
        &self.own
    }

    /// Whether `region` runs in another Kubernetes cluster.
    pub fn is_remote(&self, region: &str) -> bool {
        self.remote.contains_key(region)
    }

    /// Whether any region runs in another Kubernetes cluster.
    pub fn any_remote(&self) -> bool {
        !self.remote.is_empty()
    }

    /// The operator's cluster first, then each region's own cluster.
    pub fn sites(&self) -> Vec<Site<'_>> {
        std::iter::once(Site {
            client: &self.own,
            region: None,
        })
        .chain(self.remote.iter().map(|(r, c)| Site {
            client: c,
            region: Some(r.as_str()),
        }))
        .collect()
    }

    /// The label selector that lists the objects of `cluster` a site holds:
    /// in a region's own cluster, that region's only.
    pub fn selector(site: &Site<'_>, cluster: &str) -> String {
        match site.region {
            None => format!("{}={cluster}", crate::resources::CLUSTER_LABEL),
            Some(r) => format!(
                "{}={cluster},{}={r}",
                crate::resources::CLUSTER_LABEL,
                crate::resources::REGION_LABEL
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_region_with_broken_credentials_fails_like_an_unreachable_one_and_says_why() {
        let client = unreachable_client("kubeconfig unusable: no CA".into());
        let pods: Api<Pod> = Api::namespaced(client, "shop");
        let e = pods
            .list(&Default::default())
            .await
            .expect_err("every call fails");
        assert!(!matches!(e, kube::Error::Api(_)), "not an answer: {e:?}");
        assert!(
            crate::controller::unreachable(&crate::controller::Error::Kube(e)),
            "the unreachable paths apply"
        );
        let e = Api::<Pod>::namespaced(unreachable_client("no CA".into()), "shop")
            .list(&Default::default())
            .await
            .expect_err("fails");
        assert!(e.to_string().contains("no CA"), "{e}");
    }
}
