//! Reconciles `LiveRoomCluster`s: owned objects by server-side apply, node ids,
//! Raft bootstrap and membership one safe step at a time, rolling restarts,
//! status with conditions, events, and the cleanup finalizer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use roomkeeper_control::http::JsonClient;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::crd::{
    DeletionPolicy, FailoverPlaybook, LiveRoomCluster, LiveRoomClusterStatus, MemberStatus,
    RegionStatus, FINALIZER,
};
use crate::metrics::OperatorMetrics;
use crate::nodes::{NodeAdmin, NodeError};
use crate::plan::{self, PodView, Step};
use crate::regions::RegionApis;
use crate::resources::{
    self, cluster_name, Identities, Names, CLUSTER_LABEL, HASH_ANNOTATION, REGION_LABEL,
};
use crate::validate::validate_spec;
use roomkeeper_api::raft_identity::ClusterCa;

pub const MANAGER: &str = "roomkeeper-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("order-store node: {0}")]
    Node(#[from] crate::nodes::NodeError),
    #[error("identity map: {0}")]
    Identity(#[from] crate::resources::IdentityError),
    #[error("no randomness for a new key: {0}")]
    Randomness(getrandom::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("object has no namespace")]
    NoNamespace,
    #[error("playbook: {0}")]
    Playbook(#[from] roomkeeper_control::ControlError),
    #[error("voter moves: {0}")]
    Moves(#[from] crate::evacuate::MovesError),
    #[error("Raft certificates: {0}")]
    RaftCerts(#[from] crate::raft_certs::RaftCertsError),
    #[error("region's Kubernetes cluster: {0}")]
    RegionApi(#[from] crate::regions::RegionApiError),
}

impl Error {
    /// A short label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "kube",
            Error::Node(_) => "node",
            Error::Identity(_) => "identity",
            Error::Randomness(_) => "randomness",
            Error::Finalizer(_) => "finalizer",
            Error::NoNamespace => "shape",
            Error::Playbook(_) => "playbook",
            Error::Moves(_) => "moves",
            Error::RaftCerts(_) => "raft_certs",
            Error::RegionApi(_) => "region_api",
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// The client to the nodes: `nodes.http` in the operator, routed per pod
    /// (TLS to pods that serve it); the scenario tests give a plain one for
    /// their plain-HTTP fake nodes.
    pub http: JsonClient,
    /// The routes `http` follows and the TLS pool per cluster (crate::api_tls).
    pub nodes: crate::api_tls::NodeRoutes,
    pub metrics: OperatorMetrics,
    /// Events are published through a fresh Recorder each time: the Recorder's
    /// series cache keys on reason and action, not the note, and would fold
    /// "added node 7" into the "added node 6" event.
    pub reporter: kube::runtime::events::Reporter,
    pub playbooks: crate::tier::PlaybookStates,
    /// Clients of the Kubernetes clusters regions run in (crate::regions).
    pub kubeconfigs: crate::regions::KubeconfigClients,
    /// This operator's pod IP, admitted to the admin port of regions in
    /// other Kubernetes clusters.
    pub operator_ip: Option<std::net::IpAddr>,
    /// Retry delays of clusters whose reconcile failed, per `namespace/name`.
    pub backoff: crate::backoff::Backoff,
}

impl Context {
    /// Publishes an event about the cluster; failures are logged, not fatal.
    pub async fn event_for(
        &self,
        lrc: &LiveRoomCluster,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(crate::runbooks::annotate(reason, warning, note)),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(&ev, &lrc.object_ref(&()))
            .await
        {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// What a reconcile should react to: spec (generation), finalizers, deletion.
fn spec_or_lifecycle(lrc: &LiveRoomCluster) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lrc.metadata.generation.hash(&mut h);
    lrc.metadata.finalizers.hash(&mut h);
    lrc.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Runs the controllers until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let lrcs: Api<LiveRoomCluster> = Api::all(client.clone());
    // Reconcile on spec and lifecycle changes, not on our own status writes
    // (status carries the commit index, which moves under load: reacting to
    // it would be a hot loop). Node changes arrive through the pod watch and
    // the periodic requeue.
    let (reader, writer) = kube::runtime::reflector::store();
    let trigger = kube::runtime::reflector(writer, watcher(lrcs, watcher::Config::default()))
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, Default::default());
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=roomkeeper-operator");
    // Pods in regions' own clusters are watched by crate::regions.
    let remote_pods = ctx
        .kubeconfigs
        .take_wakeups()
        .map(futures::StreamExt::boxed)
        .unwrap_or_else(|| futures::stream::empty().boxed());
    Controller::for_stream(trigger, reader)
        .reconcile_on(remote_pods)
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/name=roomkeeper-node"),
            |pod: Pod| {
                let cluster = pod.labels().get(CLUSTER_LABEL)?.clone();
                let ns = pod.namespace()?;
                Some(
                    kube::runtime::reflector::ObjectRef::<LiveRoomCluster>::new(&cluster)
                        .within(&ns),
                )
            },
        )
        // A person's answer or command is acted on at once, not at the
        // next periodic reconcile.
        .watches(
            Api::<crate::approval::FailoverApproval>::all(client.clone()),
            watcher::Config::default(),
            |o| cluster_of(&o, &o.spec.cluster),
        )
        .watches(
            Api::<crate::switchover::Switchover>::all(client.clone()),
            watcher::Config::default(),
            |o| cluster_of(&o, &o.spec.cluster),
        )
        .watches(
            Api::<crate::switchover::Failover>::all(client.clone()),
            watcher::Config::default(),
            |o| cluster_of(&o, &o.spec.cluster),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile stream error"),
            }
        })
        .await;
}

/// The LiveRoomCluster `cluster` in the namespace of `obj`.
fn cluster_of<K: Resource>(
    obj: &K,
    cluster: &str,
) -> Option<kube::runtime::reflector::ObjectRef<LiveRoomCluster>> {
    Some(
        kube::runtime::reflector::ObjectRef::<LiveRoomCluster>::new(cluster)
            .within(&obj.namespace()?),
    )
}

/// A failed reconcile retries after a delay that doubles with each failure of
/// the same cluster in a row (1 s up to 5 min), so a cluster whose API calls
/// or nodes keep failing does not hammer them; a success starts it over.
fn error_policy(lrc: Arc<LiveRoomCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = crate::backoff::key(lrc.namespace().as_deref(), &lrc.name_any());
    let delay = ctx.backoff.failed(&key);
    tracing::warn!(cluster = %key, error = %err, retry_in = ?delay, "reconcile failed");
    ctx.metrics.errors.with_label_values(&[err.kind()]).inc();
    Action::requeue(delay)
}

async fn reconcile(lrc: Arc<LiveRoomCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = lrc.namespace().ok_or(Error::NoNamespace)?;
    let key = crate::backoff::key(Some(&ns), &lrc.name_any());
    let api: Api<LiveRoomCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, lrc, |event| async {
        match event {
            Finalizer::Apply(lrc) => apply(&lrc, &ctx).await,
            Finalizer::Cleanup(lrc) => cleanup(&lrc, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    ctx.metrics.reconciles.inc();
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Applies `obj` by server-side apply unless the live object already carries
/// the same desired-state hash: a reconcile that changes nothing writes nothing.
pub(crate) async fn apply_if_changed<K>(ctx: &Context, ns: &str, obj: K) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    apply_in(ctx, &ctx.client, ns, obj).await
}

/// [`apply_if_changed`] in the cluster `client` reaches (a region's own).
pub(crate) async fn apply_in<K>(
    ctx: &Context,
    client: &Client,
    ns: &str,
    obj: K,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let (obj, hash) = resources::with_hash(obj);
    let name = obj.meta().name.clone().unwrap_or_default();
    if let Some(live) = api.get_opt(&name).await? {
        if live.annotations().get(HASH_ANNOTATION) == Some(&hash) {
            return Ok(false);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await?;
    ctx.metrics
        .writes
        .with_label_values(&[K::kind(&()).as_ref()])
        .inc();
    Ok(true)
}

/// Whether an API error means the cluster could not be reached (as when its
/// region is lost), rather than an answer from its API server.
pub(crate) fn unreachable(e: &Error) -> bool {
    matches!(e, Error::Kube(k) if !matches!(k, kube::Error::Api(_)))
}

/// `obj` as it goes to `region`'s cluster: without owner references there
/// when that is another cluster (an owner must be in the same one).
pub(crate) fn for_region<K: Resource>(apis: &RegionApis, region: &str, mut obj: K) -> K {
    if apis.is_remote(region) {
        obj.meta_mut().owner_references = None;
    }
    obj
}

/// Applies a region's object in the region's cluster ([`apply_if_changed`]).
pub(crate) async fn apply_for_region<K>(
    ctx: &Context,
    apis: &RegionApis,
    ns: &str,
    region: &str,
    obj: K,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    apply_in(ctx, apis.of(region), ns, for_region(apis, region, obj)).await
}

/// A copy of a Secret the operator keeps in its own cluster, for the
/// clusters of other regions: data, type and labels only.
fn mounted_copy(original: &Secret) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: original.metadata.name.clone(),
            namespace: original.metadata.namespace.clone(),
            labels: original.metadata.labels.clone(),
            ..Default::default()
        },
        data: original.data.clone(),
        type_: original.type_.clone(),
        ..Secret::default()
    }
}

/// Applies `obj` (with no owner reference) in the cluster of every region
/// that runs in another Kubernetes cluster. A cluster that cannot be reached
/// is skipped with a warning: a lost region must not stop the others.
async fn copy_to_regions<K>(ctx: &Context, apis: &RegionApis, ns: &str, obj: K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    for site in apis.sites() {
        let Some(region) = site.region else { continue };
        let mut copy = obj.clone();
        copy.meta_mut().owner_references = None;
        match apply_in(ctx, site.client, ns, copy).await {
            Ok(_) => {}
            Err(e) if unreachable(&e) => {
                tracing::warn!(%region, kind = %K::kind(&()), error = %e, "region's cluster unreachable: copy not written");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The node-id map: written in the operator's cluster (the original, which
/// every decision reads) and copied where other regions' pods mount it.
pub(crate) async fn write_identities(
    ctx: &Context,
    apis: &RegionApis,
    lrc: &LiveRoomCluster,
    ns: &str,
    ids: &Identities,
) -> Result<(), Error> {
    let cm = resources::identities_configmap(lrc, ids);
    apply_if_changed(ctx, ns, cm.clone()).await?;
    copy_to_regions(ctx, apis, ns, cm).await
}

/// The cluster's pods in every region's Kubernetes cluster. A region's
/// cluster that cannot be reached contributes the pods it listed last, not
/// ready, or (none listed since this operator started) one address-less pod
/// per slot of the region: its nodes then count as silent (regions.rs).
pub(crate) async fn list_pods(
    apis: &RegionApis,
    lrc: &LiveRoomCluster,
    ns: &str,
) -> Result<Vec<Pod>, Error> {
    Ok(list_pods_and_unreachable(apis, lrc, ns).await?.0)
}

/// [`list_pods`], and the regions whose cluster could not be reached, with
/// why.
async fn list_pods_and_unreachable(
    apis: &RegionApis,
    lrc: &LiveRoomCluster,
    ns: &str,
) -> Result<(Vec<Pod>, BTreeMap<String, String>), Error> {
    let cluster = cluster_name(lrc);
    let cluster = cluster.as_str();
    let lists = apis.sites().into_iter().map(|site| async move {
        let api: Api<Pod> = Api::namespaced(site.client.clone(), ns);
        let lp = ListParams::default().labels(&RegionApis::selector(&site, cluster));
        (site.region, api.list(&lp).await)
    });
    let mut pods: Vec<Pod> = Vec::new();
    let mut unreachable = BTreeMap::new();
    for (region, listed) in futures::future::join_all(lists).await {
        match (region, listed) {
            (Some(region), Ok(list)) => {
                apis.remember_pods(ns, cluster, region, &list.items);
                pods.extend(list.items);
            }
            (None, Ok(list)) => pods.extend(list.items),
            (Some(region), Err(e)) if !matches!(e, kube::Error::Api(_)) => {
                let mut last = apis.last_pods(ns, cluster, region);
                if last.is_empty() {
                    last = resources::slots(lrc)
                        .into_iter()
                        .filter(|s| s.region == region)
                        .map(|s| Pod {
                            metadata: kube::api::ObjectMeta {
                                name: Some(s.pod),
                                namespace: Some(ns.to_string()),
                                labels: Some(resources::labels(cluster, Some(region))),
                                ..Default::default()
                            },
                            ..Pod::default()
                        })
                        .collect();
                }
                tracing::warn!(%region, error = %e, pods = last.len(), "region's cluster unreachable: its pods as last seen, not ready");
                pods.extend(last);
                unreachable.insert(region.to_string(), e.to_string());
            }
            (_, Err(e)) => return Err(e.into()),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    pods.retain(|p| seen.insert(p.name_any()));
    Ok((pods, unreachable))
}

/// `status.regions[].kubernetesApi` of a region in its own Kubernetes
/// cluster: `Reachable` or `Unreachable`; absent for the operator's own.
fn show_api_reachability(
    apis: &RegionApis,
    unreachable: &BTreeMap<String, String>,
    status: &mut LiveRoomClusterStatus,
) {
    for r in &mut status.regions {
        r.kubernetes_api = apis.is_remote(&r.name).then(|| {
            if unreachable.contains_key(&r.name) {
                // Its pods are only as last seen: none is known to run.
                r.running_pods = 0;
                "Unreachable".to_string()
            } else {
                "Reachable".to_string()
            }
        });
    }
}

/// An Event when a region's own cluster stops or starts answering (its
/// status said otherwise last time).
async fn report_api_reachability(
    ctx: &Context,
    apis: &RegionApis,
    lrc: &LiveRoomCluster,
    base: &LiveRoomClusterStatus,
    unreachable: &BTreeMap<String, String>,
) {
    for region in lrc.spec.regions.iter().filter(|r| apis.is_remote(&r.name)) {
        let before = base
            .regions
            .iter()
            .find(|r| r.name == region.name)
            .and_then(|r| r.kubernetes_api.as_deref());
        match (unreachable.get(&region.name), before) {
            (Some(why), Some("Reachable") | None) => {
                ctx.event_for(
                    lrc,
                    true,
                    "RegionApiUnreachable",
                    format!(
                        "the Kubernetes API server of region {} cannot be reached ({why}): its nodes count as silent and its objects are left as they are until it answers",
                        region.name
                    ),
                )
                .await;
            }
            (None, Some("Unreachable")) => {
                ctx.event_for(
                    lrc,
                    false,
                    "RegionApiReachable",
                    format!(
                        "the Kubernetes API server of region {} answers again",
                        region.name
                    ),
                )
                .await;
            }
            _ => {}
        }
    }
}

/// The cluster's NetworkPolicy in every Kubernetes cluster that runs a
/// region: with the addresses of the nodes elsewhere when regions run in
/// several (resources::network_policy_across_clusters).
async fn apply_network_policies(
    ctx: &Context,
    apis: &RegionApis,
    lrc: &LiveRoomCluster,
    ns: &str,
    pods: &[Pod],
) -> Result<(), Error> {
    if !apis.any_remote() {
        apply_if_changed(ctx, ns, resources::network_policy(lrc)).await?;
        return Ok(());
    }
    for site in apis.sites() {
        // The pods another cluster holds: a region of its own there, or
        // (from a region's cluster) every region not in it.
        let elsewhere: Vec<String> = pods
            .iter()
            .filter(|p| {
                let region = p.labels().get(REGION_LABEL).map(String::as_str);
                match site.region {
                    Some(r) => region != Some(r),
                    None => region.is_some_and(|r| apis.is_remote(r)),
                }
            })
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        let operator = site.region.and(ctx.operator_ip);
        let mut policy = resources::network_policy_across_clusters(lrc, &elsewhere, operator);
        if site.region.is_some() {
            policy.metadata.owner_references = None;
        }
        match apply_in(ctx, site.client, ns, policy).await {
            Ok(_) => {}
            Err(e) if site.region.is_some() && unreachable(&e) => {
                tracing::warn!(region = ?site.region, error = %e, "region's cluster unreachable: its NetworkPolicy is not updated");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(Error::Randomness)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates a Secret once, with the data `data` makes only then; never
/// rewrites it (rotating keys is a deliberate act).
async fn ensure_secret(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    ns: &str,
    name: String,
    data: impl FnOnce() -> Result<BTreeMap<String, String>, Error>,
) -> Result<Secret, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(s) = api.get_opt(&name).await? {
        return Ok(s);
    }
    let data = data()?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(resources::labels(&cluster_name(lrc), None)),
            // No owner reference: the keys outlive the cluster object, like
            // the volumes whose contacts they sealed (D18).
            owner_references: None,
            ..Default::default()
        },
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    };
    let created = api.create(&PostParams::default(), &secret).await?;
    ctx.metrics.writes.with_label_values(&["Secret"]).inc();
    ctx.event_for(
        lrc,
        false,
        "SecretCreated",
        format!("created Secret {name}"),
    )
    .await;
    Ok(created)
}

/// A key of a Secret as trimmed text.
/// The pod's Ready condition is True.
pub(crate) fn pod_is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(crate) fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: last.unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    }
}

async fn write_status(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    status: LiveRoomClusterStatus,
) -> Result<(), Error> {
    if lrc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let ns = lrc.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<LiveRoomCluster> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &lrc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    ctx.metrics
        .writes
        .with_label_values(&["LiveRoomClusterStatus"])
        .inc();
    Ok(())
}

/// The status with only these conditions changed (others kept as they were).
fn with_conditions(
    mut status: LiveRoomClusterStatus,
    lrc: &LiveRoomCluster,
    conds: &[(&str, bool, &str, &str)],
) -> LiveRoomClusterStatus {
    let prev = lrc
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = lrc.metadata.generation;
    let mut out: Vec<Condition> = Vec::new();
    for (t, ok, reason, msg) in conds {
        out.push(condition(t, *ok, reason, msg, generation, &prev));
    }
    for c in &prev {
        if !out.iter().any(|o| o.type_ == c.type_) {
            out.push(c.clone());
        }
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    status.conditions = out;
    status.observed_generation = generation;
    status
}

/// What the nodes of a cluster's pods said when probed.
struct NodeReplies {
    /// Pod name to the status its node reported.
    statuses: BTreeMap<String, roomkeeper_api::NodeStatus>,
    /// Pod name to the node id its node reports quarantined under (D11).
    quarantined: BTreeMap<String, u64>,
}

/// One reconcile of a cluster that is not being deleted. Each step below makes
/// its API calls in this order: validate, secrets, pods, nodes, identities,
/// workload, (paused?), membership step, playbook, status.
///
/// Everything but the playbook works on the effective spec: the spec with
/// the voter moves of evacuations applied (evacuate.rs), so a voter moved to
/// another region stays there.
async fn apply(spec_lrc: &LiveRoomCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = spec_lrc.namespace().ok_or(Error::NoNamespace)?;
    let name = spec_lrc.name_any();
    let names = Names { cluster: &name };
    ctx.metrics.set_slo(&ns, &name, &spec_lrc.spec.slo);
    let base = spec_lrc.status.clone().unwrap_or_default();

    if let Err(problems) = validate_spec(&spec_lrc.spec) {
        return report_invalid_spec(ctx, spec_lrc, &base, problems).await;
    }
    // Which Kubernetes cluster each region runs in (D57).
    let apis = match ctx.kubeconfigs.resolve(&ctx.client, spec_lrc, &ns).await {
        Ok(apis) => apis,
        Err(e) if e.is_spec_problem() => {
            return report_invalid_spec(ctx, spec_lrc, &base, vec![e.to_string()]).await
        }
        Err(e) => return Err(e.into()),
    };
    let apis = &apis;
    let mut moves = crate::evacuate::VoterMoves::load(ctx, spec_lrc).await?;
    let (effective, skipped) = crate::evacuate::effective(spec_lrc, &moves);
    if !skipped.is_empty() {
        tracing::warn!(cluster = %name, old_voters = ?skipped, "voter moves that no longer fit the spec are not applied");
    }
    let lrc = &effective;

    // Credentials first: pods mount them.
    tracing::debug!(cluster = %name, phase = "secrets", "reconcile");
    let (admin, ca) = ensure_secrets(ctx, apis, lrc, &ns, &names).await?;

    // Pods and what their nodes say, before ids: the membership raises the id floor.
    tracing::debug!(cluster = %name, phase = "list pods", "reconcile");
    let (pods, unreachable) = list_pods_and_unreachable(apis, lrc, &ns).await?;
    report_api_reachability(ctx, apis, lrc, &base, &unreachable).await;
    // Each pod is reached the way its own spec says it serves: TLS under the
    // cluster's CA or, a pod not yet rolled, plain (crate::api_tls).
    ctx.nodes.learn_with(&ns, &name, &ca, &pods).map_err(|e| {
        Error::RaftCerts(crate::raft_certs::RaftCertsError::ClientTls(e.to_string()))
    })?;
    tracing::debug!(cluster = %name, phase = "probe nodes", "reconcile");
    let replies = observe_nodes(&admin, &pods).await;
    let floor = id_floor(&replies.statuses);
    let members_now = members_now(&replies.statuses, &base);

    // Node ids: append-only identity map.
    tracing::debug!(cluster = %name, phase = "identities", "reconcile");
    let (mut ids, wiped) = ensure_identities(
        ctx,
        apis,
        lrc,
        &ns,
        &names,
        &ca,
        floor,
        &members_now,
        replies.quarantined,
    )
    .await?;
    let slots = resources::slots(lrc);

    let update_revision =
        apply_workload(ctx, apis, lrc, &ns, &names, &ids, &members_now, &pods).await?;
    tracing::debug!(cluster = %name, phase = "network policy", "reconcile");
    apply_network_policies(ctx, apis, lrc, &ns, &pods).await?;

    let views = pod_views(&pods, &ids, &replies.statuses, &wiped, &update_revision);
    let mut status = observed_status(lrc, &ids, &views, base.clone());
    show_api_reachability(apis, &unreachable, &mut status);
    if lrc.spec.paused {
        // No membership step; the playbook still decides, with every action
        // suppressed by the pause guard, so what it would do is recorded.
        if let Err(why) = crate::tier::run(spec_lrc, ctx, apis, &views, &admin).await? {
            tracing::debug!(cluster = %name, %why, "playbook not run while paused");
        }
        if let Some(h) = crate::tier::history(ctx, lrc) {
            status.decisions = h;
        }
        // A node that does not answer is watched every 2 s even while paused:
        // the people acting by hand meanwhile read the status to see it.
        let watching =
            views.iter().any(|v| v.status.is_none() && !v.deleting) || !unreachable.is_empty();
        return report_paused(ctx, lrc, status, watching).await;
    }

    if !moves.moves.is_empty() {
        let leader = plan::leader(&views).map(|(_, s)| s);
        crate::evacuate::settle_recorded(ctx, spec_lrc, &mut moves, leader, &ids).await;
    }

    let slot_ids: Vec<(resources::Slot, u64)> = slots
        .iter()
        .filter_map(|s| ids.id_of(&s.pod).map(|id| (s.clone(), id)))
        .collect();
    let step = plan::next_step(&slot_ids, &views, base.bootstrapped);
    if !matches!(step, Step::Wait(_) | Step::Converged) {
        tracing::info!(cluster = %name, ?step, "membership step");
    }
    let taken = MembershipStep {
        ctx,
        lrc,
        ns: &ns,
        admin: &admin,
        apis,
        views: &views,
        slots: &slots,
        floor,
        ca: &ca,
    }
    .take(&step, &mut ids, &mut status)
    .await?;

    tracing::debug!(cluster = %name, phase = "playbook", "reconcile");
    let tier = run_playbook(ctx, apis, spec_lrc, &base, &views, &admin, &step).await?;
    let progressing = taken.progressing;
    // A node that does not answer, or a tier in force, is a hold-down the
    // playbook is timing: tick it every 2 s, not every 15 s, so it acts
    // within its hold-down plus a tick.
    // So is a region whose own cluster does not answer: its return is seen
    // within 2 s.
    let watching = views.iter().any(|v| v.status.is_none() && !v.deleting)
        || tier.as_ref().is_ok_and(|t| t != "T0 watch")
        || !unreachable.is_empty();
    let mut status = status_after_step(lrc, status, &step, taken, tier);
    crate::tier::show_weights(ctx, lrc, &mut status);
    if let Some(h) = crate::tier::history(ctx, lrc) {
        status.decisions = h;
    }
    write_status(ctx, lrc, status).await?;
    Ok(if progressing || watching {
        Action::requeue(Duration::from_secs(2))
    } else {
        Action::requeue(Duration::from_secs(15))
    })
}

/// An invalid spec: say so once as an event, and in the status; act on nothing.
async fn report_invalid_spec(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    base: &LiveRoomClusterStatus,
    problems: Vec<String>,
) -> Result<Action, Error> {
    let msg = problems.join("; ");
    let already = base
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.reason == "InvalidSpec" && c.message == msg);
    if !already {
        ctx.event_for(lrc, true, "InvalidSpec", msg.clone()).await;
    }
    let mut status = base.clone();
    status.phase = Some("Invalid".into());
    let status = with_conditions(
        status,
        lrc,
        &[
            ("Ready", false, "InvalidSpec", &msg),
            ("Degraded", true, "InvalidSpec", &msg),
        ],
    );
    write_status(ctx, lrc, status).await?;
    Ok(Action::await_change())
}

/// The tokens, contact-key and Raft CA Secrets, created once; returns the
/// admin client that carries the admin token, and the cluster's Raft CA.
async fn ensure_secrets(
    ctx: &Context,
    apis: &RegionApis,
    lrc: &LiveRoomCluster,
    ns: &str,
    names: &Names<'_>,
) -> Result<(NodeAdmin, ClusterCa), Error> {
    let tokens = ensure_secret(ctx, lrc, ns, names.tokens(), || {
        Ok(BTreeMap::from([
            ("client-token".to_string(), random_hex(24)?),
            ("admin-token".to_string(), random_hex(24)?),
        ]))
    })
    .await?;
    let contact_keys = ensure_secret(ctx, lrc, ns, names.contact_keys(), || {
        Ok(BTreeMap::from([(
            "keys".to_string(),
            format!("1 {}\n", random_hex(32)?),
        )]))
    })
    .await?;
    // Pods mount both: each region's own cluster holds a copy, kept equal to
    // the original here (a rotated contact key reaches every region).
    for original in [&tokens, &contact_keys] {
        copy_to_regions(ctx, apis, ns, mounted_copy(original)).await?;
    }
    let ca = ensure_secret(ctx, lrc, ns, names.raft_ca(), || {
        crate::raft_certs::new_ca_data()
            .map_err(|e| Error::RaftCerts(crate::raft_certs::RaftCertsError::Cert(e)))
    })
    .await?;
    let ca = crate::raft_certs::ca_from_secret(&ca)?;
    // The API server certificates before any pod that mounts them.
    crate::api_tls::ensure_api_certs(ctx, apis, lrc, ns, &ca).await?;
    Ok((
        NodeAdmin::new(ctx.http.clone(), secret_value(&tokens, "admin-token")),
        ca,
    ))
}

/// Asks every pod with an IP for its node's status, all at once.
async fn observe_nodes(admin: &NodeAdmin, pods: &[Pod]) -> NodeReplies {
    let mut statuses = BTreeMap::new();
    let mut quarantined: BTreeMap<String, u64> = BTreeMap::new();
    let probes = pods.iter().filter_map(|p| {
        let ip = p.status.as_ref()?.pod_ip.clone()?;
        let admin = admin.clone();
        let pod = p.name_any();
        Some(async move { (pod, admin.status(&ip).await) })
    });
    for (pod, result) in futures::future::join_all(probes).await {
        match result {
            Ok(s) => {
                statuses.insert(pod, s);
            }
            Err(NodeError::Quarantined { reply, .. }) => {
                tracing::warn!(%pod, node_id = reply.node_id, "node quarantined: {}", reply.message);
                quarantined.insert(pod, reply.node_id);
            }
            Err(e) => tracing::debug!(%pod, error = %e, "node did not answer"),
        }
    }
    NodeReplies {
        statuses,
        quarantined,
    }
}

/// The lowest id a new node may get: above every id any node names.
fn id_floor(statuses: &BTreeMap<String, roomkeeper_api::NodeStatus>) -> u64 {
    statuses
        .values()
        .flat_map(|s| {
            s.voters
                .iter()
                .chain(s.learners.iter())
                .copied()
                .chain([s.node_id])
        })
        .max()
        .map_or(1, |m| m + 1)
}

/// Who is still a Raft member: the leader knows. Without a leader (it is
/// moving) count every id any node or the last status names: shrinking a
/// StatefulSet under a member would take a voter down unannounced. (A node
/// removed from the group may still list itself; the leader's view wins.)
fn members_now(
    statuses: &BTreeMap<String, roomkeeper_api::NodeStatus>,
    base: &LiveRoomClusterStatus,
) -> Vec<u64> {
    let leader_view = statuses
        .values()
        .find(|s| s.leader_id == Some(s.node_id) && s.role == "leader");
    let mut members_now: Vec<u64> = match leader_view {
        Some(l) => l.voters.iter().chain(l.learners.iter()).copied().collect(),
        None => statuses
            .values()
            .flat_map(|s| s.voters.iter().chain(s.learners.iter()).copied())
            .chain(
                base.members
                    .iter()
                    .filter_map(|m| u64::try_from(m.node_id).ok()),
            )
            .collect(),
    };
    members_now.sort_unstable();
    members_now.dedup();
    members_now
}

/// Reads the identity map, gives new slots ids, records current members as
/// joined and writes the map back if it changed; then every id has its Raft
/// certificate in its region's Secret, before the workload that starts its
/// pod is applied. Returns the map and the quarantine replies that count
/// (pod to wiped id).
#[allow(clippy::too_many_arguments)]
async fn ensure_identities(
    ctx: &Context,
    apis: &RegionApis,
    lrc: &LiveRoomCluster,
    ns: &str,
    names: &Names<'_>,
    ca: &ClusterCa,
    floor: u64,
    members_now: &[u64],
    quarantined: BTreeMap<String, u64>,
) -> Result<(Identities, BTreeMap<String, u64>), Error> {
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let existing = cm_api.get_opt(&names.identities()).await?;
    let mut ids = Identities::parse(existing.as_ref())?;
    let slots = resources::slots(lrc);
    if ids.assign(&slots, floor) {
        ctx.event_for(
            lrc,
            false,
            "NodeIdsAssigned",
            format!("node ids now {:?}", ids.by_pod),
        )
        .await;
    }
    // Every member is recorded as joined before any further step (a promotion
    // above all): from then on, its node refuses to rejoin on an empty volume.
    ids.mark_joined(members_now.iter().copied());
    write_identities(ctx, apis, lrc, ns, &ids).await?;
    crate::raft_certs::ensure_node_certs(ctx, apis, lrc, ns, ca, &ids).await?;
    // A quarantine reply counts only for the id the map gives that pod, or an
    // id no pod holds any more (retired, its pod not yet restarted): never
    // for another pod's id, whatever a stale mount or IP made the node say.
    let wiped: BTreeMap<String, u64> = quarantined
        .into_iter()
        .filter(|(pod, id)| ids.id_of(pod) == Some(*id) || ids.pod_of(*id).is_none())
        .collect();
    Ok((ids, wiped))
}

/// Whether this operator process has not yet said that `lrc` holds
/// plaintext Raft (once per process and cluster, not every reconcile).
fn first_notice_of_plaintext(lrc: &LiveRoomCluster) -> bool {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    let key = lrc.uid().unwrap_or_else(|| lrc.name_any());
    SEEN.get_or_init(Default::default)
        .lock()
        .map(|mut s| s.insert(key))
        .unwrap_or(false)
}

/// The replicas a region's StatefulSet needs to keep its highest-ordinal pod
/// that is still a member.
fn still_members(ids: &Identities, members_now: &[u64], sts_name: &str) -> i32 {
    ids.by_pod
        .iter()
        .filter(|(_, (id, _))| members_now.contains(id))
        .filter_map(|(pod, _)| pod.strip_prefix(&format!("{sts_name}-")))
        .filter_map(|ordinal| ordinal.parse::<i32>().ok())
        .map(|o| o + 1)
        .max()
        .unwrap_or(0)
}

/// Owned objects per region, and the regions that left the spec shrunk then
/// removed. Returns each region's StatefulSet update revision.
#[allow(clippy::too_many_arguments)]
async fn apply_workload(
    ctx: &Context,
    apis: &RegionApis,
    lrc: &LiveRoomCluster,
    ns: &str,
    names: &Names<'_>,
    ids: &Identities,
    members_now: &[u64],
    pods: &[Pod],
) -> Result<BTreeMap<String, String>, Error> {
    // A cluster whose pods still talk plaintext Raft keeps that template: a
    // pod rolled onto TLS could not reach its peers (D45).
    let raft = resources::raft_transport(lrc, pods);
    if raft == resources::RaftTransport::LegacyPlaintext && first_notice_of_plaintext(lrc) {
        ctx.event_for(
            lrc,
            true,
            "RaftPlaintextHeld",
            format!(
                "the pods run plaintext Raft (created before the operator issued certificates); their template keeps it, because a pod restarted onto mutual TLS could not reach its plaintext peers. To switch, annotate {}=enable and restart every pod at once",
                resources::RAFT_TLS_ANNOTATION
            ),
        )
        .await;
    }
    // A StatefulSet keeps pods that are still Raft members even when the spec
    // shrank: they leave the membership first.
    for region in &lrc.spec.regions {
        let mut sts = resources::statefulset_for(lrc, region, raft);
        let wanted = region.voters + region.learners;
        sts.spec.replicas = Some(wanted.max(still_members(
            ids,
            members_now,
            &names.statefulset(&region.name),
        )));
        let applied = async {
            let r = &region.name;
            let changed = apply_for_region(ctx, apis, ns, r, sts).await?;
            apply_for_region(ctx, apis, ns, r, resources::peers_service(lrc, region)).await?;
            apply_for_region(ctx, apis, ns, r, resources::client_service(lrc, region)).await?;
            apply_for_region(ctx, apis, ns, r, resources::pdb(lrc, region)).await?;
            Ok::<bool, Error>(changed)
        };
        match applied.await {
            Ok(true) => {
                ctx.event_for(
                    lrc,
                    false,
                    "StatefulSetApplied",
                    format!("applied StatefulSet {}", names.statefulset(&region.name)),
                )
                .await;
            }
            Ok(false) => {}
            // A lost region's cluster: the others go on (regions.rs).
            Err(e) if apis.is_remote(&region.name) && unreachable(&e) => {
                tracing::warn!(region = %region.name, error = %e, "region's cluster unreachable: its workload is left as it is");
            }
            Err(e) => return Err(e),
        }
    }
    // Regions removed from the spec: their pods are in no slot, so the planner
    // takes their members out of the group; the StatefulSet shrinks behind
    // them (whenScaled: Delete drops their volumes) and goes, with its
    // Services and budget, once no pod of it is left. (Only in the
    // operator's cluster: a region in another cluster is reached through its
    // spec entry, so it is shrunk to zero voters there before it leaves.)
    let mut owned_sets = Vec::new();
    for site in apis.sites() {
        let sts_api: Api<StatefulSet> = Api::namespaced(site.client.clone(), ns);
        match sts_api
            .list(&ListParams::default().labels(&RegionApis::selector(&site, names.cluster)))
            .await
        {
            Ok(list) => owned_sets.extend(list.items),
            Err(e) if site.region.is_some() && !matches!(e, kube::Error::Api(_)) => {
                tracing::warn!(region = ?site.region, error = %e, "region's cluster unreachable: its StatefulSet is not read");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    // Which pods run an outdated template: each set's update revision, from
    // the same list (read after the applies above).
    let update_revision: BTreeMap<String, String> = owned_sets
        .iter()
        .filter_map(|s| {
            let region = s.labels().get(REGION_LABEL)?.clone();
            let rev = s.status.as_ref()?.update_revision.clone()?;
            Some((region, rev))
        })
        .collect();
    for old in owned_sets {
        let Some(region) = old.labels().get(REGION_LABEL).cloned() else {
            continue;
        };
        if lrc.spec.regions.iter().any(|r| r.name == region) {
            continue;
        }
        let sts_name = old.name_any();
        let keep = still_members(ids, members_now, &sts_name);
        let replicas = old.spec.replicas;
        if replicas != Some(keep) {
            sts_api
                .patch(
                    &sts_name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": keep}})),
                )
                .await?;
            ctx.event_for(
                lrc,
                false,
                "RegionShrinking",
                format!("region {region} left the spec: {sts_name} scaled to {keep}"),
            )
            .await;
            continue;
        }
        let pods_left = pods
            .iter()
            .any(|p| p.labels().get(REGION_LABEL) == Some(&region));
        if keep > 0 || pods_left {
            continue;
        }
        let dp = DeleteParams::background();
        delete_if_present::<StatefulSet>(ctx, ns, &sts_name, &dp).await?;
        delete_if_present::<Service>(ctx, ns, &names.peers_service(&region), &dp).await?;
        delete_if_present::<Service>(ctx, ns, &names.client_service(&region), &dp).await?;
        delete_if_present::<PodDisruptionBudget>(ctx, ns, &sts_name, &dp).await?;
        delete_if_present::<Secret>(ctx, ns, &names.raft_certs(&region), &dp).await?;
        delete_if_present::<Secret>(ctx, ns, &names.api_certs(&region), &dp).await?;
        ctx.event_for(
            lrc,
            false,
            "RegionRemoved",
            format!("region {region} removed: its members left the group, its StatefulSet, Services, budget and Raft certificates are gone"),
        )
        .await;
    }
    Ok(update_revision)
}

/// What the planner sees of each pod.
fn pod_views(
    pods: &[Pod],
    ids: &Identities,
    statuses: &BTreeMap<String, roomkeeper_api::NodeStatus>,
    wiped: &BTreeMap<String, u64>,
    update_revision: &BTreeMap<String, String>,
) -> Vec<PodView> {
    pods.iter()
        .map(|p| {
            let pod = p.name_any();
            let region = p.labels().get(REGION_LABEL).cloned().unwrap_or_default();
            let revision = p.labels().get("controller-revision-hash");
            PodView {
                zone: ids
                    .by_pod
                    .get(&pod)
                    .and_then(|(_, z)| z.clone())
                    .unwrap_or_else(|| region.clone()),
                id: ids.id_of(&pod),
                ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
                // A node answering under another id than its pod's (a stale
                // identity map) counts as not answering: never act on it.
                status: statuses
                    .get(&pod)
                    .filter(|s| ids.id_of(&pod) == Some(s.node_id))
                    .cloned(),
                deleting: p.metadata.deletion_timestamp.is_some(),
                wiped: wiped.get(&pod).copied(),
                ready: pod_is_ready(p),
                outdated: match (revision, update_revision.get(&region)) {
                    (Some(have), Some(want)) => have != want,
                    _ => false,
                },
                region,
                pod,
            }
        })
        .collect()
}

/// `spec.paused`: the observed status only, no step and no playbook.
async fn report_paused(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    mut status: LiveRoomClusterStatus,
    watching: bool,
) -> Result<Action, Error> {
    status.phase = Some("Paused".into());
    let status = with_conditions(
        status,
        lrc,
        &[(
            "Progressing",
            false,
            "Paused",
            "spec.paused is set: membership and playbook actions stop",
        )],
    );
    write_status(ctx, lrc, status).await?;
    Ok(Action::requeue(Duration::from_secs(if watching {
        2
    } else {
        15
    })))
}

/// What taking a membership step left to report.
struct StepTaken {
    progressing: bool,
    degraded: Option<String>,
}

/// Everything one membership step may act on.
struct MembershipStep<'a> {
    ctx: &'a Context,
    lrc: &'a LiveRoomCluster,
    ns: &'a str,
    admin: &'a NodeAdmin,
    apis: &'a RegionApis,
    views: &'a [PodView],
    slots: &'a [resources::Slot],
    floor: u64,
    ca: &'a ClusterCa,
}

impl MembershipStep<'_> {
    /// Takes the planner's one step: node admin calls, identity map writes,
    /// pod deletions and their events.
    async fn take(
        &self,
        step: &Step,
        ids: &mut Identities,
        status: &mut LiveRoomClusterStatus,
    ) -> Result<StepTaken, Error> {
        let MembershipStep {
            ctx,
            lrc,
            ns,
            admin,
            apis,
            views,
            slots,
            floor,
            ca,
        } = *self;
        // A pod is deleted in its region's cluster.
        let pods_api = |pod: &str| -> Api<Pod> {
            let region = views
                .iter()
                .find(|v| v.pod == pod)
                .map(|v| v.region.as_str())
                .unwrap_or_default();
            Api::namespaced(apis.of(region).clone(), ns)
        };
        let name = lrc.name_any();
        let leader_ip = plan::leader(views).and_then(|(p, _)| p.ip.clone());
        let mut progressing = true;
        let mut degraded: Option<String> = None;
        match step {
            Step::Bootstrap { via, members } => {
                let ip = views
                    .iter()
                    .find(|v| &v.pod == via)
                    .and_then(|v| v.ip.clone())
                    .unwrap_or_default();
                // Recorded as joined before they can vote: a wipe in between
                // must find the node quarantined (marking early costs at most a
                // replacement, never safety).
                ids.mark_joined(members.keys().copied());
                write_identities(ctx, apis, lrc, ns, ids).await?;
                admin.init(&ip, members).await?;
                status.bootstrapped = true;
                ctx.event_for(
                    lrc,
                    false,
                    "Bootstrapped",
                    format!(
                        "initialized the Raft group on {via} with voters {:?}",
                        members.keys().collect::<Vec<_>>()
                    ),
                )
                .await;
            }
            Step::AddLearner { id, pod, node } => {
                let ip = leader_ip.clone().unwrap_or_default();
                ids.mark_joined([*id]);
                write_identities(ctx, apis, lrc, ns, ids).await?;
                admin.add_learner(&ip, *id, node).await?;
                ctx.event_for(
                    lrc,
                    false,
                    "LearnerAdded",
                    format!("added node {id} ({pod}) as a learner"),
                )
                .await;
            }
            Step::Promote { id, pod } => {
                let ip = leader_ip.clone().unwrap_or_default();
                admin.promote(&ip, *id).await?;
                ctx.event_for(
                    lrc,
                    false,
                    "VoterPromoted",
                    format!("promoted node {id} ({pod}) to voter"),
                )
                .await;
            }
            Step::Remove { id, voter } => {
                let ip = leader_ip.clone().unwrap_or_default();
                admin.remove(&ip, *id).await?;
                // A node that left the group for good gives up its id: if its pod
                // name comes back (scale up again), it joins under a fresh id.
                let leaving_pod = ids.pod_of(*id).map(str::to_string);
                if let Some(pod) = leaving_pod {
                    if !slots.iter().any(|s| s.pod == pod) {
                        ids.retire(&pod);
                        write_identities(ctx, apis, lrc, ns, ids).await?;
                    }
                }
                let what = if *voter {
                    "from the voters"
                } else {
                    "from the group"
                };
                ctx.event_for(
                    lrc,
                    false,
                    "MemberRemoved",
                    format!("removed node {id} {what}"),
                )
                .await;
            }
            Step::SeedPeerAddresses { raft_addrs } => {
                let mut told = Vec::new();
                for v in views.iter().filter(|v| v.status.is_some()) {
                    let Some(ip) = v.ip.as_deref() else { continue };
                    match admin.seed_peer_addresses(ip, raft_addrs).await {
                        Ok(changed) if !changed.is_empty() => told.push(v.pod.clone()),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(pod = %v.pod, error = %e, "could not seed peer addresses")
                        }
                    }
                }
                if !told.is_empty() {
                    ctx.event_for(
                        lrc,
                        false,
                        "PeerAddressesSeeded",
                        format!(
                            "no leader and members moved: told {} where members {:?} are now",
                            told.join(", "),
                            raft_addrs
                        ),
                    )
                    .await;
                }
            }
            Step::UpdateAddresses { id, pod, node } => {
                let ip = leader_ip.clone().unwrap_or_default();
                admin.update_addresses(&ip, *id, node).await?;
                ctx.event_for(
                    lrc,
                    false,
                    "AddressesUpdated",
                    format!(
                        "node {id} ({pod}) came back at {}; recorded its new addresses",
                        node.raft_addr
                    ),
                )
                .await;
            }
            Step::RemoveWiped { id, pod, voter } => {
                let ip = leader_ip.clone().unwrap_or_default();
                admin.remove(&ip, *id).await?;
                let what = if *voter { "voter" } else { "learner" };
                ctx.event_for(
                    lrc,
                    true,
                    "WipedVolume",
                    format!(
                    "node {id} ({pod}) lost its volume and stays out of Raft; removed {what} {id} \
                     from the group, the pod rejoins under a new id"
                ),
                )
                .await;
            }
            Step::ReplaceWiped { pod, id } => {
                if ids.id_of(pod) == Some(*id) {
                    ids.retire(pod);
                    ids.assign(slots, floor);
                    write_identities(ctx, apis, lrc, ns, ids).await?;
                    // The new id's certificate is in the region's Secret
                    // before the pod restarts to use it.
                    crate::raft_certs::ensure_node_certs(ctx, apis, lrc, ns, ca, ids).await?;
                    let new = ids
                        .id_of(pod)
                        .map_or_else(|| "none (no longer wanted)".to_string(), |n| n.to_string());
                    ctx.event_for(
                        lrc,
                        false,
                        "NodeIdRetired",
                        format!("retired node {id} of {pod} (wiped volume); its new id is {new}"),
                    )
                    .await;
                }
                pods_api(pod).delete(pod, &DeleteParams::default()).await?;
                ctx.event_for(
                    lrc,
                    false,
                    "WipedPodRestarted",
                    format!("restarting {pod} under its new node id"),
                )
                .await;
            }
            Step::TransferLeader { to, reason } => {
                let ip = leader_ip.clone().unwrap_or_default();
                admin.transfer_leader(&ip, *to).await?;
                ctx.event_for(
                    lrc,
                    false,
                    "LeadershipTransferred",
                    format!("moved leadership to node {to}: {reason}"),
                )
                .await;
            }
            Step::RestartForUpdate { pod } => {
                pods_api(pod).delete(pod, &DeleteParams::default()).await?;
                ctx.event_for(
                    lrc,
                    false,
                    "RollingRestart",
                    format!("restarting {pod} for the new template"),
                )
                .await;
            }
            Step::Wait(why) => {
                tracing::info!(cluster = %name, reason = %why, "waiting");
                if why.contains("refusing")
                    || why.contains("no live quorum")
                    || why.contains("no leader")
                {
                    degraded = Some(why.clone());
                }
            }
            Step::Converged => progressing = false,
        }
        Ok(StepTaken {
            progressing,
            degraded,
        })
    }
}

/// The playbook acts only on a cluster the operator is not changing right
/// now: its view was taken before this step. Returns the tier in force, or why
/// the playbook cannot run.
async fn run_playbook(
    ctx: &Context,
    apis: &RegionApis,
    lrc: &LiveRoomCluster,
    base: &LiveRoomClusterStatus,
    views: &[PodView],
    admin: &NodeAdmin,
    step: &Step,
) -> Result<Result<String, crate::tier::PlaybookUnavailable>, Error> {
    if matches!(step, Step::Wait(_) | Step::Converged) {
        crate::tier::run(lrc, ctx, apis, views, admin).await
    } else {
        Ok(Ok(base
            .active_tier
            .clone()
            .unwrap_or_else(|| "T0 watch".into())))
    }
}

/// The status after the step: phase and conditions.
fn status_after_step(
    lrc: &LiveRoomCluster,
    mut status: LiveRoomClusterStatus,
    step: &Step,
    taken: StepTaken,
    tier: Result<String, crate::tier::PlaybookUnavailable>,
) -> LiveRoomClusterStatus {
    let StepTaken {
        progressing,
        degraded,
    } = taken;
    let (tier_ok, tier_msg) = match &tier {
        Ok(t) => {
            status.active_tier = Some(t.clone());
            (true, format!("playbook tier in force: {t}"))
        }
        Err(why) => {
            status.active_tier = Some("unknown".into());
            (false, why.to_string())
        }
    };
    let step_text = match &step {
        Step::Wait(w) => w.clone(),
        Step::Converged => "membership matches the spec".to_string(),
        other => format!("{other:?}"),
    };
    let ready =
        status.leader.is_some() && status.regions.iter().all(|r| r.ready_voters >= r.voters);
    status.phase = Some(
        if !status.bootstrapped {
            "Bootstrapping"
        } else if degraded.is_some() || status.leader.is_none() {
            "Degraded"
        } else if progressing {
            "Progressing"
        } else {
            "Running"
        }
        .into(),
    );
    let quorum = status.leader.is_some();
    let degraded_msg = degraded
        .clone()
        .unwrap_or_else(|| "every voter is live".into());
    with_conditions(
        status,
        lrc,
        &[
            (
                "Ready",
                ready,
                if ready {
                    "AllVotersReady"
                } else {
                    "VotersNotReady"
                },
                &step_text,
            ),
            (
                "Available",
                quorum,
                if quorum { "LeaderElected" } else { "NoLeader" },
                if quorum {
                    "a leader accepts orders"
                } else {
                    "no Raft leader: orders are refused"
                },
            ),
            (
                "Progressing",
                progressing,
                if progressing {
                    "Reconciling"
                } else {
                    "Converged"
                },
                &step_text,
            ),
            (
                "Degraded",
                degraded.is_some(),
                if degraded.is_some() {
                    "Blocked"
                } else {
                    "Healthy"
                },
                &degraded_msg,
            ),
            (
                "PlaybookReady",
                tier_ok,
                if tier_ok {
                    "Running"
                } else {
                    "PlaybookInvalid"
                },
                &tier_msg,
            ),
        ],
    )
}

/// The status fields that describe what is observed (not the step taken).
/// The live windows every answering node reports, once each, soonest first.
fn live_windows(views: &[PodView]) -> Vec<crate::crd::LiveWindowStatus> {
    let mut all: Vec<(u64, u64, String, String, u32)> = views
        .iter()
        .filter_map(|v| v.status.as_ref())
        .flat_map(|s| &s.live_windows)
        .map(|w| {
            (
                w.window.start_ms,
                w.window.end_ms,
                w.room.clone(),
                w.home_region.clone(),
                w.window.expected_peak_orders_per_s,
            )
        })
        .collect();
    all.sort();
    all.dedup();
    all.into_iter()
        .map(
            |(start, end, room, home_region, peak)| crate::crd::LiveWindowStatus {
                room,
                home_region,
                start: crate::approval::rfc3339(start),
                end: crate::approval::rfc3339(end),
                expected_peak_orders_per_s: i64::from(peak),
            },
        )
        .collect()
}

fn observed_status(
    lrc: &LiveRoomCluster,
    ids: &Identities,
    views: &[PodView],
    mut status: LiveRoomClusterStatus,
) -> LiveRoomClusterStatus {
    let leader = plan::leader(views);
    status.leader = leader.map(|(p, _)| p.pod.clone());
    status.leader_id = leader.and_then(|(_, s)| i64::try_from(s.node_id).ok());
    let term = views
        .iter()
        .filter_map(|v| v.status.as_ref().map(|s| s.term))
        .max();
    status.term = term.and_then(|t| i64::try_from(t).ok());
    status.commit_index = leader.and_then(|(_, s)| i64::try_from(s.committed_index).ok());
    status.commit_lag = leader
        .map(|(_, s)| s.replication.values().map(|r| r.lag).max().unwrap_or(0))
        .and_then(|l| i64::try_from(l).ok());
    if views
        .iter()
        .any(|v| v.status.as_ref().is_some_and(|s| !s.voters.is_empty()))
    {
        status.bootstrapped = true;
    }
    let (voters, learners): (Vec<u64>, Vec<u64>) = leader
        .map(|(_, s)| (s.voters.clone(), s.learners.clone()))
        .unwrap_or_default();
    let ready_pod = |id: u64| -> bool {
        views
            .iter()
            .any(|v| v.id == Some(id) && v.status.as_ref().is_some_and(|s| s.leader_id.is_some()))
    };
    status.members = voters
        .iter()
        .map(|id| (*id, "voter"))
        .chain(learners.iter().map(|id| (*id, "learner")))
        .map(|(id, role)| {
            let pod = ids.pod_of(id).unwrap_or("").to_string();
            let region = views
                .iter()
                .find(|v| v.pod == pod)
                .map(|v| v.region.clone())
                .unwrap_or_default();
            MemberStatus {
                node_id: i64::try_from(id).unwrap_or(i64::MAX),
                pod,
                region,
                role: role.to_string(),
                lag: leader.and_then(|(_, s)| {
                    if s.node_id == id {
                        Some(0)
                    } else {
                        s.replication
                            .get(&id.to_string())
                            .and_then(|r| i64::try_from(r.lag).ok())
                    }
                }),
                matched_index: leader.and_then(|(_, s)| {
                    if s.node_id == id {
                        i64::try_from(s.last_log_index).ok()
                    } else {
                        s.progress_of(id)
                            .and_then(|r| r.matched_index)
                            .and_then(|i| i64::try_from(i).ok())
                    }
                }),
                replicating: leader
                    .map(|(_, s)| s.acked_within(id, crate::risk::REPLICATING_ACK_MS)),
            }
        })
        .collect();
    status.live_windows = live_windows(views);
    // Orders at risk (operator/src/risk.rs): in flight on the leader, and
    // committed but on a minority of regions.
    status.last_log_index = leader.and_then(|(_, s)| i64::try_from(s.last_log_index).ok());
    status.uncommitted_entries = leader
        .and_then(|(_, s)| i64::try_from(s.last_log_index.saturating_sub(s.committed_index)).ok());
    status.entries_below_region_majority = leader.and_then(|(_, s)| {
        let held = status
            .members
            .iter()
            .filter(|m| m.role == "voter")
            .map(|m| {
                let idx = m.matched_index.and_then(|i| u64::try_from(i).ok());
                (m.region.as_str(), idx.unwrap_or(0))
            });
        let majority = crate::risk::region_majority_index(held)?;
        i64::try_from(crate::risk::entries_below_region_majority(
            s.committed_index,
            majority,
        ))
        .ok()
    });
    status.regions =
        lrc.spec
            .regions
            .iter()
            .map(|r| {
                let in_region = |id: &u64| {
                    status.members.iter().any(|m| {
                        m.node_id == i64::try_from(*id).unwrap_or(-1) && m.region == r.name
                    })
                };
                RegionStatus {
                    name: r.name.clone(),
                    voters: r.voters,
                    ready_voters: i32::try_from(
                        voters
                            .iter()
                            .filter(|id| in_region(id) && ready_pod(**id))
                            .count(),
                    )
                    .unwrap_or(0),
                    learners: i32::try_from(learners.iter().filter(|id| in_region(id)).count())
                        .unwrap_or(0),
                    running_pods: i32::try_from(
                        views
                            .iter()
                            .filter(|v| v.region == r.name && v.ip.is_some() && !v.deleting)
                            .count(),
                    )
                    .unwrap_or(0),
                    traffic_weight: None,
                    kubernetes_api: None,
                }
            })
            .collect();
    let want: i32 = lrc.spec.regions.iter().map(|r| r.voters).sum();
    let have: i32 = status.regions.iter().map(|r| r.ready_voters).sum();
    status.ready_voters = Some(format!("{have}/{want}"));
    status
}

/// Orderly deletion: stop the nodes, delete what the cluster owns (garbage
/// collection would too, but not on clusters without it, and not before the
/// finalizer is gone), keep the PVCs' fate to the StatefulSet's policy.
async fn cleanup(lrc: &LiveRoomCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = lrc.namespace().ok_or(Error::NoNamespace)?;
    let name = lrc.name_any();
    let names = Names { cluster: &name };
    ctx.metrics.remove_slo(&ns, &name);
    ctx.kubeconfigs.forget(&ns, &name);
    let dp = DeleteParams::background();
    let destroy = lrc.spec.deletion_policy == DeletionPolicy::Delete;
    let note = if destroy {
        "deleting the cluster's StatefulSets, pods, Services, budgets and policy, and (deletionPolicy: Delete) its volumes, node ids and keys: the orders are gone"
    } else {
        "deleting the cluster's StatefulSets, pods, Services, budgets and policy; its volumes, node ids and keys are kept (deletionPolicy: Retain); create the cluster again to resume it, or delete them by label roomkeeper.dev/cluster to destroy the data"
    };
    ctx.event_for(lrc, destroy, "Deleting", note.into()).await;
    // A kubeconfig Secret already gone must not keep the cluster object
    // forever: its region's objects are then left, and said so.
    let apis = match ctx.kubeconfigs.resolve(&ctx.client, lrc, &ns).await {
        Ok(apis) => apis,
        Err(e) => {
            ctx.event_for(
                lrc,
                true,
                "RegionCleanupSkipped",
                format!("{e}: objects in regions' own Kubernetes clusters are left; delete them there by label {CLUSTER_LABEL}={name}"),
            )
            .await;
            RegionApis::local(ctx.client.clone())
        }
    };
    for site in apis.sites() {
        let swept = cleanup_site(lrc, &ns, &names, &site, destroy, &dp).await;
        match swept {
            Ok(()) => {}
            Err(e) if site.region.is_some() && unreachable(&e) => {
                ctx.event_for(
                    lrc,
                    true,
                    "RegionCleanupSkipped",
                    format!("region {}'s Kubernetes cluster cannot be reached ({e}): its objects are left; delete them there by label {CLUSTER_LABEL}={name}", site.region.unwrap_or_default()),
                )
                .await;
            }
            Err(e) => return Err(e),
        }
    }
    delete_if_present::<ConfigMap>(ctx, &ns, &format!("{name}-playbook-memory"), &dp).await?;
    if destroy {
        delete_if_present::<ConfigMap>(ctx, &ns, &crate::evacuate::configmap_name(&name), &dp)
            .await?;
        delete_if_present::<Secret>(ctx, &ns, &names.raft_ca(), &dp).await?;
    }
    Ok(Action::await_change())
}

/// The cluster's objects in one Kubernetes cluster that runs regions of it
/// (see [`cleanup`]).
async fn cleanup_site(
    lrc: &LiveRoomCluster,
    ns: &str,
    names: &Names<'_>,
    site: &crate::regions::Site<'_>,
    destroy: bool,
    dp: &DeleteParams,
) -> Result<(), Error> {
    let client = site.client;
    let here: Vec<&str> = lrc
        .spec
        .regions
        .iter()
        .map(|r| r.name.as_str())
        .filter(|r| site.region.is_none_or(|s| s == *r))
        .collect();
    for region in &here {
        delete_in::<StatefulSet>(client, ns, &names.statefulset(region), dp).await?;
        delete_in::<Service>(client, ns, &names.peers_service(region), dp).await?;
        delete_in::<Service>(client, ns, &names.client_service(region), dp).await?;
        delete_in::<PodDisruptionBudget>(client, ns, &names.statefulset(region), dp).await?;
    }
    delete_in::<NetworkPolicy>(client, ns, &names.network_policy(), dp).await?;
    // Kept on purpose: the PVCs (StatefulSet retention whenDeleted: Retain),
    // the identity map and the Secrets. Without the contact keys the sealed
    // contacts in the retained logs are unreadable; without the identity map a
    // recreated cluster would hand the retained volumes other ids; with the
    // Raft CA and certificates it resumes under the same trust.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selected = ListParams::default().labels(&RegionApis::selector(site, names.cluster));
    pods.delete_collection(dp, &selected).await?;
    if destroy {
        // The volumes go once their pods have stopped (PVC protection).
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        pvcs.delete_collection(dp, &selected).await?;
        delete_in::<ConfigMap>(client, ns, &names.identities(), dp).await?;
        delete_in::<Secret>(client, ns, &names.tokens(), dp).await?;
        delete_in::<Secret>(client, ns, &names.contact_keys(), dp).await?;
        for region in &here {
            delete_in::<Secret>(client, ns, &names.raft_certs(region), dp).await?;
            delete_in::<Secret>(client, ns, &names.api_certs(region), dp).await?;
        }
    }
    Ok(())
}

async fn delete_if_present<K>(
    ctx: &Context,
    ns: &str,
    name: &str,
    dp: &DeleteParams,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    delete_in::<K>(&ctx.client, ns, name, dp).await
}

/// [`delete_if_present`] in the cluster `client` reaches.
async fn delete_in<K>(client: &Client, ns: &str, name: &str, dp: &DeleteParams) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Validates FailoverPlaybooks and reports the result in their status.
pub async fn run_playbooks(
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<FailoverPlaybook> = Api::all(client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            |fpb: Arc<FailoverPlaybook>, client: Arc<Client>| async move {
                let ns = fpb.namespace().ok_or(Error::NoNamespace)?;
                let api: Api<FailoverPlaybook> = Api::namespaced((*client).clone(), &ns);
                let result = roomkeeper_playbook::validate(&fpb.spec.0);
                let (valid, msg) = match &result {
                    Ok(()) => ("True".to_string(), "the playbook is valid".to_string()),
                    Err(problems) => (
                        "False".to_string(),
                        problems
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                };
                let prev = fpb.status.clone().unwrap_or_default();
                let cond = condition(
                    "Valid",
                    result.is_ok(),
                    if result.is_ok() {
                        "Validated"
                    } else {
                        "Invalid"
                    },
                    &msg,
                    fpb.metadata.generation,
                    &prev.conditions,
                );
                let status = crate::crd::FailoverPlaybookStatus {
                    observed_generation: fpb.metadata.generation,
                    valid: Some(valid),
                    tiers: i64::try_from(fpb.spec.0.tiers.len()).ok(),
                    conditions: vec![cond],
                };
                if fpb.status.as_ref() != Some(&status) {
                    api.patch_status(
                        &fpb.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await?;
                }
                Ok::<_, Error>(Action::await_change())
            },
            |_, _: &Error, _| Action::requeue(Duration::from_secs(10)),
            Arc::new(client),
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
#[path = "controller_scenarios.rs"]
mod scenarios;
