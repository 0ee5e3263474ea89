//! `ChaosDrill` on Kubernetes: the operator runs a drill against a
//! LiveRoomCluster of its namespace through the one drill runner
//! (`roomkeeper-drill`, the same code as `roomkeeper drill run`): recorded
//! flash-sale load through the pods' client API, faults through the
//! Kubernetes API, the same abort conditions, probes, timeline and report. A
//! drill runs once; its status is its record, the full report is in the
//! ConfigMap `<drill>-report` (`report.json`).
//!
//! This file is the Kubernetes binding: the CRD types, the reconcile, the
//! status, a `DrillTarget` over the cluster's pods ([`KubeTarget`]), a
//! non-blocking `FaultInjector` ([`PodFaults`]: pod deletion, NetworkPolicy
//! partitions, retry storms) and a `ReportSink` into the ConfigMap. Fault
//! kinds that need an injector inside the node's network or disk are refused
//! up front with the field named, never half-run.

// kube's `printcolumn(name = …, type_ = …)` repeats key names by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, CustomResource, ResourceExt};
use roomkeeper_chaos::drill::{DrillSpec, FaultKind, FaultSpec, NodeRole, RegionPick};
use roomkeeper_chaos::history::History;
use roomkeeper_chaos::report::{ControlState, DecisionMark, DrillReport, NodeInvariant};
use roomkeeper_control::load::{EndpointStats, TrafficMap};
use roomkeeper_control::recorded_load::Storm;
use roomkeeper_control::ClusterObservation;
use roomkeeper_drill::{ClientSide, DrillTarget, FaultInjector, ReportSink, RunConfig, Tick};
use roomkeeper_playbook::{DecisionId, EngineMemory};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api_tls::NodeRoutes;
use crate::controller::{pod_is_ready, secret_value};
use crate::crd::LiveRoomCluster;
use crate::nodes::NodeAdmin;
use crate::plan::{leader, PodView};
use crate::resources::{
    partition_policy, Names, CLUSTER_LABEL, PARTITION_LABEL, PARTITION_RUN_LABEL, REGION_LABEL,
};
use crate::tier::observation;

/// A chaos drill run by the operator against a LiveRoomCluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "roomkeeper.dev",
    version = "v1alpha1",
    kind = "ChaosDrill",
    namespaced,
    shortname = "drill",
    category = "roomkeeper",
    status = "ChaosDrillStatus",
    doc = "A chaos drill: faults, a steady-state hypothesis and a recorded, checked history; run once by the operator.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Verdict", type_ = "string", json_path = ".status.verdict"),
    printcolumn(name = "Acked", type_ = "integer", json_path = ".status.acked"),
    printcolumn(name = "Lost", type_ = "integer", json_path = ".status.lost"),
    printcolumn(name = "RTO-ms", type_ = "integer", json_path = ".status.rtoMs"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct ChaosDrillSpec(pub DrillSpec);

/// The outcome of a drill.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChaosDrillStatus {
    /// Pending, Running, Completed, or Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// PASS, FAIL or ABORTED once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Orders acknowledged to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<i64>,
    /// Acknowledged orders missing after the drill (the RPO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<i64>,
    /// Listings sold beyond their stock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oversold: Option<i64>,
    /// Operations whose outcome the client could not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_ops: Option<i64>,
    /// Longest gap between acknowledged orders (the measured RTO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_ms: Option<i64>,
    /// Checker violations, in words (at most 20).
    #[serde(default)]
    pub violations: Vec<String>,
    /// Each hypothesis probe: `name: PASS|FAIL (measured)`.
    #[serde(default)]
    pub probes: Vec<String>,
    /// What was injected, in order.
    #[serde(default)]
    pub faults: Vec<String>,
    /// ConfigMap holding the full report (history counts, check, probes) as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_config_map: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Fault kinds this runner carries out on Kubernetes.
pub const SUPPORTED_FAULTS: [FaultKind; 11] = [
    FaultKind::KillLeader,
    FaultKind::KillNode,
    FaultKind::RollingRestart,
    FaultKind::FlapNode,
    FaultKind::RetryStorm,
    FaultKind::PartitionNode,
    FaultKind::PartitionRegion,
    FaultKind::QuorumLoss,
    FaultKind::DiskStall,
    FaultKind::WanLatency,
    FaultKind::PauseNode,
];

/// How long a tick waits for the status of a node the drill froze, or whose
/// pod is being deleted: a live process answers well within it, a frozen one
/// not at all, and a deleted pod's address may swallow the call until the
/// full timeout.
const DOUBTFUL_STATUS_TIMEOUT: Duration = Duration::from_millis(300);

/// Fault kinds carried out through the nodes' own fault hooks
/// (`POST /admin/faults`): they need the LiveRoomCluster's
/// `spec.orderStore.faultHooks`. `pauseNode` is one of them because no
/// SIGSTOP reaches a pod's process from the API server: the hook freezes the
/// node from inside (Raft timers stopped, traffic dropped, HTTP held).
pub const HOOK_FAULTS: [FaultKind; 3] = [
    FaultKind::DiskStall,
    FaultKind::WanLatency,
    FaultKind::PauseNode,
];

/// Why the spec cannot run against a cluster whose nodes have (or lack)
/// their fault hooks, naming the field.
pub fn needs_fault_hooks(spec: &DrillSpec, cluster: &str, hooks_on: bool) -> Option<String> {
    if hooks_on {
        return None;
    }
    let bad: Vec<String> = spec
        .faults
        .iter()
        .enumerate()
        .filter(|(_, f)| HOOK_FAULTS.contains(&f.kind))
        .map(|(i, f)| {
            format!(
                "spec.faults[{i}].kind: {} acts through the nodes' fault hooks, which \
                 LiveRoomCluster {cluster} has off (set spec.orderStore.faultHooks: true)",
                f.kind
            )
        })
        .collect();
    (!bad.is_empty()).then(|| bad.join("; "))
}

/// Why the spec cannot run on Kubernetes, if it cannot: each problem names
/// its field.
/// Why a drill cannot run against `lrc`: the runner injects through this
/// Kubernetes cluster's API only, and a region of `lrc` runs in another one
/// (D57).
pub fn spans_clusters(lrc: &LiveRoomCluster, target: &str) -> Option<String> {
    let (i, region) = lrc
        .spec
        .regions
        .iter()
        .enumerate()
        .find(|(_, r)| r.kubeconfig_secret_ref.is_some())?;
    Some(format!(
        "spec.target.cluster: LiveRoomCluster {target} runs region {:?} in another Kubernetes cluster (spec.regions[{i}].kubeconfigSecretRef); this release injects drill faults through the operator's own cluster only, so drills against it are refused rather than run half",
        region.name
    ))
}

pub fn unsupported(spec: &DrillSpec) -> Option<String> {
    if let Err(why) =
        roomkeeper_drill::check_kinds(spec, &SUPPORTED_FAULTS, "the Kubernetes drill runner")
    {
        return Some(why);
    }
    if spec.game_day == Some(true) {
        return Some("spec.gameDay: game days run locally (`roomkeeper drill run --game-day`), not in the operator".into());
    }
    None
}

struct DrillContext {
    client: Client,
    /// The operator's client to the nodes (shared with the cluster controller).
    nodes: NodeRoutes,
    /// Drills this replica is running now (namespace/name).
    running: Mutex<HashSet<String>>,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.chars().take(1000).collect(),
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

async fn patch_status(
    api: &Api<ChaosDrill>,
    name: &str,
    status: &ChaosDrillStatus,
) -> Result<(), kube::Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(|_| ())
}

/// Runs the ChaosDrill controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    nodes: NodeRoutes,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(DrillContext {
        client: client.clone(),
        nodes,
        running: Mutex::new(HashSet::new()),
    });
    Controller::new(Api::<ChaosDrill>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            |_, _: &kube::Error, _| Action::requeue(Duration::from_secs(10)),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile(drill: Arc<ChaosDrill>, ctx: Arc<DrillContext>) -> Result<Action, kube::Error> {
    let ns = drill.namespace().unwrap_or_default();
    let name = drill.name_any();
    let key = format!("{ns}/{name}");
    let api: Api<ChaosDrill> = Api::namespaced(ctx.client.clone(), &ns);
    let status = drill.status.clone().unwrap_or_default();
    match status.phase.as_deref() {
        Some("Completed") | Some("Invalid") => return Ok(Action::await_change()),
        Some("Running") => {
            let mine = ctx
                .running
                .lock()
                .map(|r| r.contains(&key))
                .unwrap_or(false);
            if mine {
                return Ok(Action::requeue(Duration::from_secs(10)));
            }
            // Started by a replica that is gone: its faults and load stopped
            // with it. Re-running would inject the faults twice; record it,
            // and take down any partition it left in place.
            let run = run_id(&drill);
            if let Err(e) = heal_partitions(
                &ctx.client,
                &ns,
                &drill.spec.0.target.cluster,
                &run,
                &format!("{run}-"),
            )
            .await
            {
                tracing::warn!(drill = %key, error = %e, "could not heal an interrupted drill's partition");
            }
            // Hook faults live in the node processes: the dead replica's
            // injector cannot take them back, so every pod is cleared here.
            if uses_fault_hooks(&drill.spec.0) {
                if let Err(e) =
                    clear_fault_hooks(&ctx.client, &ctx.nodes, &ns, &drill.spec.0.target.cluster)
                        .await
                {
                    tracing::warn!(drill = %key, error = %e, "could not clear an interrupted drill's fault hooks");
                }
            }
            let mut s = status.clone();
            s.phase = Some("Completed".into());
            s.verdict = Some("ABORTED".into());
            s.message = Some("the operator replica running this drill stopped before it finished; create a new ChaosDrill to run it again".into());
            s.finished_at = Some(now());
            s.conditions = vec![condition(
                "Completed",
                true,
                "Interrupted",
                s.message.as_deref().unwrap_or(""),
            )];
            patch_status(&api, &name, &s).await?;
            return Ok(Action::await_change());
        }
        _ => {}
    }
    if let Some(why) = unsupported(&drill.spec.0) {
        let s = ChaosDrillStatus {
            phase: Some("Invalid".into()),
            message: Some(why.clone()),
            conditions: vec![condition("Completed", false, "Invalid", &why)],
            ..ChaosDrillStatus::default()
        };
        patch_status(&api, &name, &s).await?;
        return Ok(Action::await_change());
    }
    let lrcs: Api<LiveRoomCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let target = &drill.spec.0.target.cluster;
    let lrc = lrcs.get_opt(target).await?;
    if let Some(why) = lrc.as_ref().and_then(|l| {
        needs_fault_hooks(&drill.spec.0, target, l.spec.order_store.fault_hooks)
            .or_else(|| spans_clusters(l, target))
    }) {
        let s = ChaosDrillStatus {
            phase: Some("Invalid".into()),
            message: Some(why.clone()),
            conditions: vec![condition("Completed", false, "Invalid", &why)],
            ..ChaosDrillStatus::default()
        };
        patch_status(&api, &name, &s).await?;
        return Ok(Action::await_change());
    }
    let ready = lrc
        .and_then(|l| l.status)
        .is_some_and(|s| s.phase.as_deref() == Some("Running"));
    if !ready {
        let msg = format!("waiting for LiveRoomCluster {target} to be Running");
        if status.message.as_deref() != Some(msg.as_str()) {
            let s = ChaosDrillStatus {
                phase: Some("Pending".into()),
                message: Some(msg.clone()),
                conditions: vec![condition("Completed", false, "WaitingForTarget", &msg)],
                ..ChaosDrillStatus::default()
            };
            patch_status(&api, &name, &s).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let started = ChaosDrillStatus {
        phase: Some("Running".into()),
        message: Some(format!("running against {target}")),
        started_at: Some(now()),
        conditions: vec![condition(
            "Completed",
            false,
            "Running",
            "the drill is running",
        )],
        ..ChaosDrillStatus::default()
    };
    patch_status(&api, &name, &started).await?;
    if let Ok(mut r) = ctx.running.lock() {
        r.insert(key.clone());
    }
    let drill = (*drill).clone();
    let ctx2 = ctx.clone();
    tokio::spawn(async move {
        let outcome = execute(&ctx2, &drill, &ns).await;
        let mut s = started.clone();
        s.phase = Some("Completed".into());
        s.finished_at = Some(now());
        match outcome {
            Ok(done) => {
                s = ChaosDrillStatus {
                    phase: s.phase,
                    started_at: s.started_at,
                    finished_at: s.finished_at,
                    ..done
                };
            }
            Err(e) => {
                s.verdict = Some("ABORTED".into());
                s.message = Some(format!("the drill could not run: {e}"));
                s.conditions = vec![condition("Completed", true, "RunError", &e)];
            }
        }
        let api: Api<ChaosDrill> = Api::namespaced(ctx2.client.clone(), &ns);
        if let Err(e) = patch_status(&api, &drill.name_any(), &s).await {
            tracing::warn!(error = %e, "could not write the drill verdict");
        }
        if let Ok(mut r) = ctx2.running.lock() {
            r.remove(&format!("{ns}/{}", drill.name_any()));
        }
    });
    Ok(Action::requeue(Duration::from_secs(10)))
}

/// The cluster's pods.
pub(crate) async fn pods_of(client: &Client, ns: &str, cluster: &str) -> Result<Vec<Pod>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={cluster}")))
        .await
        .map(|l| l.items)
        .map_err(|e| format!("listing pods: {e}"))
}

pub(crate) fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

fn api_addr(ip: &str) -> String {
    format!("{ip}:{}", crate::resources::API_PORT)
}

/// A short id of one drill run (from the object's uid): names its room, its
/// buyers, and its partitions.
fn run_id(drill: &ChaosDrill) -> String {
    drill
        .uid()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_lowercase()
}

/// The seed of one drill run, from the object's uid (recorded in the report):
/// a re-created drill draws again, the same object always draws the same.
pub fn seed_of(uid: &str) -> u64 {
    let hex: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    u64::from_str_radix(&hex, 16).unwrap_or_else(|_| u64::from(crc32fast::hash(uid.as_bytes())))
}

/// Takes down the partitions of run `run` on `cluster` whose group starts
/// with `prefix` (`<run>-` for all of them): labels first (the pods fall back
/// under the cluster's policy), then the side policies.
/// Clears the fault hooks of every pod of `cluster` (`{}` to
/// `/admin/faults`, three tries each): the last word on a drill with hook
/// faults, whether it ended, failed half-way or its replica died — the
/// settings live in the node processes, not in the operator. Returns the
/// pods it could not clear, in words.
async fn clear_fault_hooks(
    client: &Client,
    nodes: &NodeRoutes,
    ns: &str,
    cluster: &str,
) -> Result<usize, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let tokens = secrets
        .get(&Names { cluster }.tokens())
        .await
        .map_err(|e| format!("clearing fault hooks: reading the tokens Secret: {e}"))?;
    let admin = NodeAdmin::new(nodes.http.clone(), secret_value(&tokens, "admin-token"));
    let pods = pods_of(client, ns, cluster)
        .await
        .map_err(|e| format!("clearing fault hooks: {e}"))?;
    nodes
        .learn(client, ns, cluster, &pods)
        .await
        .map_err(|e| format!("clearing fault hooks: reaching the pods: {e}"))?;
    let targets: Vec<(String, String)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.name_any(), pod_ip(p)?)))
        .collect();
    let admin = &admin;
    let results = futures::future::join_all(targets.iter().map(|(pod, ip)| async move {
        let mut last = String::new();
        for attempt in 0..3u64 {
            match admin.set_faults(ip, json!({})).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
        }
        Err(format!("{pod}: {last}"))
    }))
    .await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if failed.is_empty() {
        Ok(targets.len())
    } else {
        Err(format!(
            "fault hooks left on {} pod(s): {}",
            failed.len(),
            failed.join("; ")
        ))
    }
}

/// Whether the spec slows nodes through their fault hooks.
fn uses_fault_hooks(spec: &DrillSpec) -> bool {
    spec.faults.iter().any(|f| HOOK_FAULTS.contains(&f.kind))
}

async fn heal_partitions(
    client: &Client,
    ns: &str,
    cluster: &str,
    run: &str,
    prefix: &str,
) -> Result<Vec<String>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut healed = Vec::new();
    let listed = pods
        .list(
            &ListParams::default().labels(&format!("{CLUSTER_LABEL}={cluster},{PARTITION_LABEL}")),
        )
        .await
        .map_err(|e| format!("listing partitioned pods: {e}"))?;
    for p in listed.items {
        let ours = p
            .labels()
            .get(PARTITION_LABEL)
            .is_some_and(|g| g.starts_with(prefix));
        if !ours {
            continue;
        }
        let name = p.name_any();
        pods.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {PARTITION_LABEL: null}}})),
        )
        .await
        .map_err(|e| format!("healing pod {name}: {e}"))?;
        healed.push(name);
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let sides = policies
        .list(&ListParams::default().labels(&format!("{PARTITION_RUN_LABEL}={run}")))
        .await
        .map_err(|e| format!("listing partition policies: {e}"))?;
    let ours = format!("{cluster}-partition-{prefix}");
    for np in sides.items {
        let name = np.name_any();
        if !name.starts_with(&ours) {
            continue;
        }
        match policies.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("deleting policy {name}: {e}")),
        }
    }
    Ok(healed)
}

/// Pod names grouped by region, from `(pod, region)` pairs.
fn by_region(pods: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut regions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (p, r) in pods {
        regions.entry(r.clone()).or_default().push(p.clone());
    }
    regions
}

/// How long a deleted pod may take to come back Ready before the drill goes on.
const POD_BACK_TIMEOUT: Duration = Duration::from_secs(60);

/// The Kubernetes binding's `DrillTarget`: a LiveRoomCluster of this
/// namespace, reached through its pods' client and admin APIs. Its control
/// loop is the operator's own; the decisions it recorded during the drill
/// are read from the engine memory (`<cluster>-playbook-memory`).
struct KubeTarget<'a> {
    ctx: &'a DrillContext,
    ns: &'a str,
    cluster: &'a str,
    admin: NodeAdmin,
    token: String,
    traffic: Arc<TrafficMap>,
    home_region: String,
    /// Pod name → node id, from the nodes' own answers.
    ids: BTreeMap<String, u64>,
    /// Decisions already reported.
    seen: BTreeSet<DecisionId>,
    memory_unreadable: bool,
    /// The operator's engine memory as last read (`None`: unreadable).
    memory: Option<EngineMemory>,
    /// What the drill's buyers feel of each pod (recorded by the load; the
    /// operator's own loop does not read it yet).
    endpoints: Arc<EndpointStats>,
    /// Node ids this drill's fault hooks freeze now (`pauseNode`): their
    /// status is asked with a short deadline, since a frozen node holds the
    /// call for the whole pause and every tick would wait for it.
    frozen: BTreeSet<u64>,
}

impl KubeTarget<'_> {
    /// The cluster's pods, each routed as its spec says it serves (TLS or not).
    async fn pods(&self) -> Result<Vec<Pod>, String> {
        let pods = pods_of(&self.ctx.client, self.ns, self.cluster).await?;
        self.ctx
            .nodes
            .learn(&self.ctx.client, self.ns, self.cluster, &pods)
            .await
            .map_err(|e| format!("reaching the pods: {e}"))?;
        Ok(pods)
    }

    /// Every pod with an IP, with its node's answer.
    async fn views(&mut self) -> Vec<PodView> {
        let pods: Vec<(Pod, String)> = self
            .pods()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| pod_ip(&p).map(|ip| (p, ip)))
            .collect();
        // Every pod at once: a deleted pod's address may take the whole timeout.
        let admin = &self.admin;
        let frozen = |p: &Pod| {
            self.ids
                .get(&p.name_any())
                .is_some_and(|id| self.frozen.contains(id))
        };
        let statuses = futures::future::join_all(pods.iter().map(|(p, ip)| {
            let timeout = if frozen(p) || p.metadata.deletion_timestamp.is_some() {
                DOUBTFUL_STATUS_TIMEOUT
            } else {
                crate::nodes::TIMEOUT
            };
            admin.status_within(ip, timeout)
        }))
        .await;
        let mut views = Vec::new();
        for ((p, ip), status) in pods.into_iter().zip(statuses) {
            let status = status.ok();
            let pod = p.name_any();
            if let Some(s) = &status {
                self.ids.insert(pod.clone(), s.node_id);
            }
            let region = p.labels().get(REGION_LABEL).cloned().unwrap_or_default();
            views.push(PodView {
                id: self.ids.get(&pod).copied(),
                zone: region.clone(),
                region,
                pod,
                ip: Some(ip),
                status,
                deleting: p.metadata.deletion_timestamp.is_some(),
                ready: pod_is_ready(&p),
                ..PodView::default()
            });
        }
        views
    }

    /// Points the load at every pod's current IP (a recreated pod has a new one).
    fn refresh_endpoints(&self, views: &[PodView]) {
        let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in views {
            if let Some(ip) = &v.ip {
                by_region
                    .entry(v.region.clone())
                    .or_default()
                    .push(api_addr(ip));
            }
        }
        for (region, addrs) in by_region {
            self.traffic.set_endpoints(&region, addrs);
            self.traffic.set_weight(&region, 100);
        }
    }

    /// Client API addresses of every pod, the leader's first.
    async fn addresses(&mut self) -> Vec<String> {
        let views = self.views().await;
        let mut addrs: Vec<String> = views
            .iter()
            .filter_map(|v| v.ip.as_deref().map(api_addr))
            .collect();
        if let Some(ip) = leader(&views).and_then(|(v, _)| v.ip.clone()) {
            let l = api_addr(&ip);
            addrs.retain(|a| *a != l);
            addrs.insert(0, l);
        }
        addrs
    }

    /// Reads the operator's engine memory (ConfigMap
    /// `<cluster>-playbook-memory`): what its loop holds. No ConfigMap yet
    /// means the loop has decided nothing.
    async fn read_memory(&self) -> Result<EngineMemory, String> {
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let name = format!("{}-playbook-memory", self.cluster);
        let Some(cm) = cms
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading ConfigMap {name}: {e}"))?
        else {
            return Ok(EngineMemory::default());
        };
        let Some(text) = cm.data.and_then(|d| d.get("memory.json").cloned()) else {
            return Ok(EngineMemory::default());
        };
        serde_json::from_str(&text)
            .map_err(|e| format!("ConfigMap {name}: unreadable engine memory: {e}"))
    }

    /// The decisions the operator's loop recorded since the drill started
    /// and not reported yet; keeps the memory read for [`DrillTarget::control_state`].
    async fn new_decisions(&mut self, start_unix_ms: u64) -> Result<Vec<DecisionMark>, String> {
        let memory = self.read_memory().await;
        self.memory = memory.as_ref().ok().cloned();
        let memory = memory?;
        let mut out = Vec::new();
        for r in memory.records() {
            let d = &r.decision;
            if d.at_ms >= start_unix_ms && self.seen.insert(d.id) {
                out.push(roomkeeper_drill::mark(d, start_unix_ms));
            }
        }
        Ok(out)
    }
}

impl DrillTarget for KubeTarget<'_> {
    async fn prepare(&mut self) -> Result<(), String> {
        let names = Names {
            cluster: self.cluster,
        };
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let tokens = secrets
            .get(&names.tokens())
            .await
            .map_err(|e| format!("reading the tokens Secret: {e}"))?;
        self.token =
            secret_value(&tokens, "client-token").ok_or("the tokens Secret has no client-token")?;
        self.admin = NodeAdmin::new(
            self.ctx.nodes.http.clone(),
            secret_value(&tokens, "admin-token"),
        );
        let views = self.views().await;
        self.refresh_endpoints(&views);
        self.home_region = views
            .iter()
            .map(|v| v.region.clone())
            .min()
            .unwrap_or_default();
        Ok(())
    }

    fn client(&self) -> ClientSide {
        ClientSide {
            http: self.ctx.nodes.http.clone(),
            token: self.token.clone(),
            traffic: self.traffic.clone(),
            home_region: self.home_region.clone(),
            endpoints: self.endpoints.clone(),
        }
    }

    async fn sale_address(&mut self) -> Result<String, String> {
        let views = self.views().await;
        leader(&views)
            .and_then(|(v, _)| v.ip.as_deref().map(api_addr))
            .ok_or_else(|| "the cluster has no leader".to_string())
    }

    async fn observe(&mut self, at_unix_ms: u64) -> ClusterObservation {
        let views = self.views().await;
        self.refresh_endpoints(&views);
        observation(&views, at_unix_ms)
    }

    async fn tick(&mut self, _obs: &ClusterObservation, start_unix_ms: u64, _now_ms: u64) -> Tick {
        let mut tick = Tick::default();
        match self.new_decisions(start_unix_ms).await {
            Ok(d) => tick.decisions = d,
            Err(e) if !self.memory_unreadable => {
                self.memory_unreadable = true;
                tick.events.push(format!(
                    "the operator's decisions cannot be read ({e}); the report lists none"
                ));
            }
            Err(_) => {}
        }
        tick
    }

    async fn audit(
        &mut self,
        skip: &BTreeSet<u64>,
        _timeout: Duration,
    ) -> (Vec<NodeInvariant>, Vec<String>) {
        let views: Vec<(String, String, u64)> = self
            .views()
            .await
            .into_iter()
            .filter(|v| !v.deleting)
            .filter_map(|v| Some((v.pod, v.ip?, v.id?)))
            .filter(|(_, _, id)| !skip.contains(id))
            .collect();
        let admin = &self.admin;
        let audits =
            futures::future::join_all(views.iter().map(|(_, ip, _)| admin.invariants(ip))).await;
        let (mut invariants, mut errors) = (Vec::new(), Vec::new());
        for ((pod, _, id), audit) in views.into_iter().zip(audits) {
            match audit {
                Ok((ok, detail)) => invariants.push(NodeInvariant {
                    node: id,
                    ok,
                    detail: format!("{pod}: {detail}"),
                }),
                Err(e) => errors.push(format!("invariant audit of {pod}: {e}")),
            }
        }
        (invariants, errors)
    }

    async fn heal_everything(&mut self) -> Vec<String> {
        // The injector healed its partitions; the StatefulSet brings pods back.
        let deadline = tokio::time::Instant::now() + POD_BACK_TIMEOUT;
        loop {
            let views = self.views().await;
            let settled = views
                .iter()
                .all(|v| v.ready && !v.deleting && v.status.is_some())
                && leader(&views).is_some_and(|(l, _)| {
                    let committed = l.status.as_ref().map_or(0, |s| s.committed_index);
                    views
                        .iter()
                        .filter_map(|v| v.status.as_ref())
                        .all(|s| s.applied_index >= committed)
                });
            if settled {
                self.refresh_endpoints(&views);
                return Vec::new();
            }
            if tokio::time::Instant::now() >= deadline {
                // As locally: the final read goes on, leader first; what is
                // missing shows in the checker, not as a run error.
                tracing::warn!(cluster = %self.cluster, "the cluster did not settle after the faults were healed");
                self.refresh_endpoints(&views);
                return Vec::new();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn final_read_addresses(&mut self) -> Vec<String> {
        self.addresses().await
    }

    /// From the operator's engine memory, as its loop left it at the last
    /// tick: the operator routes no storefront, so weights are what the
    /// engine drained.
    async fn control_state(&mut self, obs: &ClusterObservation, at: u64) -> Option<ControlState> {
        let memory = self.memory.as_ref()?;
        Some(roomkeeper_control::state::control_state(
            memory, obs, None, at,
        ))
    }
}

/// One Kubernetes fault in effect: a state machine the runner steps.
enum PodFault {
    /// A deleted pod, until the StatefulSet brought it back Ready.
    Killed {
        pod: String,
        uid: Option<String>,
        since: Instant,
        done: bool,
    },
    /// Every pod in turn, followers first and the leader last.
    Rolling {
        queue: VecDeque<String>,
        current: Option<(String, Option<String>, Instant)>,
        period: Duration,
        next_at: Instant,
        done: Vec<String>,
        total: usize,
    },
    /// A pod deleted every `period`, once it is back.
    Flap {
        pod: String,
        /// The uid of the deleted pod, while waiting for it to come back.
        waiting: Option<String>,
        period: Duration,
        next_at: Instant,
        crashes: u32,
    },
    /// Side policies and labels with this group prefix.
    Partition {
        prefix: String,
    },
    Storm,
    /// A contribution to the nodes' fault hooks (`hooks`), merged with the
    /// others in effect and pushed to every pod.
    Hooks,
}

/// What one hook fault asks of the nodes, as the local injector merges it:
/// the largest delay and loss win where faults overlap.
#[derive(Debug, Clone, PartialEq)]
enum HookContribution {
    /// Every log fsync of these nodes takes `delay_ms` longer.
    Disk { nodes: BTreeSet<u64>, delay_ms: u64 },
    /// These nodes act as frozen processes until healed.
    Pause { nodes: BTreeSet<u64> },
    /// Raft traffic between regions (only to and from `region` when named)
    /// is delayed and lossy.
    Wan {
        region: Option<String>,
        delay_ms: u64,
        loss: u8,
    },
}

/// Each node's fault settings (the `/admin/faults` body) under the hook
/// contributions in effect; nodes are `(id, region)`.
fn merged_hook_settings(
    nodes: &[(u64, String)],
    contributions: &[&HookContribution],
) -> BTreeMap<u64, serde_json::Value> {
    let mut out = BTreeMap::new();
    for (id, region) in nodes {
        let mut fsync_delay_ms = 0u64;
        let mut paused = false;
        let mut delays: BTreeMap<String, u64> = BTreeMap::new();
        let mut losses: BTreeMap<String, u8> = BTreeMap::new();
        for c in contributions {
            match c {
                HookContribution::Disk {
                    nodes: on,
                    delay_ms,
                } => {
                    if on.contains(id) {
                        fsync_delay_ms = fsync_delay_ms.max(*delay_ms);
                    }
                }
                HookContribution::Pause { nodes: on } => paused |= on.contains(id),
                HookContribution::Wan {
                    region: only,
                    delay_ms,
                    loss,
                } => {
                    for (o, oregion) in nodes {
                        if o == id || oregion == region {
                            continue;
                        }
                        if only.as_ref().is_some_and(|r| r != region && r != oregion) {
                            continue;
                        }
                        let d = delays.entry(o.to_string()).or_insert(0);
                        *d = (*d).max(*delay_ms);
                        if *loss > 0 {
                            let l = losses.entry(o.to_string()).or_insert(0);
                            *l = (*l).max(*loss);
                        }
                    }
                }
            }
        }
        let mut v = json!({});
        if fsync_delay_ms > 0 {
            v["fsync_delay_ms"] = json!(fsync_delay_ms);
        }
        if !delays.is_empty() {
            v["peer_delay_ms"] = json!(delays);
        }
        if !losses.is_empty() {
            v["peer_loss_percent"] = json!(losses);
        }
        if paused {
            v["paused"] = json!(true);
        }
        out.insert(*id, v);
    }
    out
}

/// The Kubernetes `FaultInjector`: pod deletion, NetworkPolicy partitions,
/// client retry storms. Nothing blocks: multi-step faults advance in `step`.
struct PodFaults<'a> {
    client: &'a Client,
    ns: &'a str,
    cluster: &'a str,
    /// This run's id: the prefix of its partition groups.
    run: &'a str,
    /// The drill, owner of the policies it creates.
    owner: Option<OwnerReference>,
    storm: Arc<Storm>,
    active: BTreeMap<usize, PodFault>,
    /// The hook faults in effect, by fault index.
    hooks: BTreeMap<usize, HookContribution>,
}

/// A pod is back: the same name, a new object, Ready.
fn is_back(pods: &[Pod], pod: &str, old_uid: Option<&String>) -> bool {
    pods.iter().any(|p| {
        p.name_any() == pod
            && p.metadata.uid.as_ref() != old_uid
            && p.metadata.deletion_timestamp.is_none()
            && pod_is_ready(p)
    })
}

impl PodFaults<'_> {
    async fn pods(&self) -> Result<Vec<Pod>, String> {
        pods_of(self.client, self.ns, self.cluster).await
    }

    /// The cluster's live pods as (name, region), sorted, and the leader's
    /// pod: as the nodes answer now (the operator's status can lag a failover).
    async fn members(target: &mut KubeTarget<'_>) -> (Vec<(String, String)>, Option<String>) {
        let views = target.views().await;
        let leader = leader(&views).map(|(v, _)| v.pod.clone());
        let mut pods: Vec<(String, String)> = views
            .into_iter()
            .filter(|v| !v.deleting)
            .map(|v| (v.pod, v.region))
            .collect();
        pods.sort();
        (pods, leader)
    }

    async fn delete(&self, pod: &str, grace: Option<u32>) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.ns);
        pods.delete(
            pod,
            &DeleteParams {
                grace_period_seconds: grace,
                ..DeleteParams::default()
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("deleting pod {pod}: {e}"))
    }

    /// Deletes `pod` with no grace period (a crash); returns the uid of the
    /// object deleted (its successor has another).
    async fn crash(&self, pod: &str) -> Result<Option<String>, String> {
        let uid = self
            .pods()
            .await?
            .into_iter()
            .find(|p| p.name_any() == pod)
            .and_then(|p| p.metadata.uid);
        self.delete(pod, Some(0)).await?;
        Ok(uid)
    }

    /// The pod a fault's selector names (default: a follower).
    fn select(
        f: &FaultSpec,
        pods: &[(String, String)],
        leader: Option<&String>,
    ) -> Result<String, String> {
        if f.kind == FaultKind::KillLeader {
            return leader.cloned().ok_or_else(|| "no leader".to_string());
        }
        let want_leader = f.select.as_ref().and_then(|s| s.role) == Some(NodeRole::Leader);
        let region = f.select.as_ref().and_then(|s| s.region.clone());
        pods.iter()
            .filter(|(n, r)| {
                (Some(n) == leader) == want_leader && region.as_ref().is_none_or(|want| want == r)
            })
            .map(|(n, _)| n.clone())
            .next()
            .ok_or_else(|| "no pod matched the selector".to_string())
    }

    /// The pods of the region a partitionRegion fault names.
    fn region_pods(
        f: &FaultSpec,
        pods: &[(String, String)],
        leader: Option<&String>,
    ) -> Result<Vec<String>, String> {
        let mut regions = by_region(pods);
        let leader_region = pods
            .iter()
            .find(|(p, _)| Some(p) == leader)
            .map(|(_, r)| r.clone());
        let sel = f.select.clone().unwrap_or_default();
        let region = match (sel.region, sel.region_of) {
            (Some(r), _) => Some(r),
            (None, Some(RegionPick::Leader)) => leader_region,
            (None, Some(RegionPick::NonLeader)) => regions
                .keys()
                .find(|r| Some(*r) != leader_region.as_ref())
                .cloned(),
            (None, Some(RegionPick::Minority) | None) => regions
                .iter()
                .min_by_key(|(r, p)| (p.len(), std::cmp::Reverse((*r).clone())))
                .map(|(r, _)| r.clone()),
        };
        region
            .and_then(|r| regions.remove(&r))
            .ok_or_else(|| "no region matched the selector".to_string())
    }

    /// A majority of the pods, one per region first, each cut off alone.
    fn majority(pods: &[(String, String)]) -> Vec<Vec<String>> {
        let regions = by_region(pods);
        let mut round_robin = Vec::new();
        for round in 0.. {
            let before = round_robin.len();
            for members in regions.values() {
                if let Some(p) = members.get(round) {
                    round_robin.push(p.clone());
                }
            }
            if round_robin.len() == before {
                break;
            }
        }
        round_robin.truncate(pods.len() / 2 + 1);
        round_robin.into_iter().map(|p| vec![p]).collect()
    }

    /// Pushes every node its merged hook settings (`{}` once nothing is
    /// left); an answer other than 2xx is the fault's error, naming the pod.
    async fn push_hooks(&self, target: &mut KubeTarget<'_>) -> Result<Vec<String>, String> {
        let views = target.views().await;
        let live: Vec<(String, String, u64, String)> = views
            .into_iter()
            .filter(|v| !v.deleting)
            .filter_map(|v| Some((v.pod, v.ip?, v.id?, v.region)))
            .collect();
        let nodes: Vec<(u64, String)> = live.iter().map(|(_, _, id, r)| (*id, r.clone())).collect();
        let contributions: Vec<&HookContribution> = self.hooks.values().collect();
        let settings = merged_hook_settings(&nodes, &contributions);
        target.frozen = settings
            .iter()
            .filter(|(_, s)| s["paused"] == json!(true))
            .map(|(id, _)| *id)
            .collect();
        let admin = &target.admin;
        let pushes = live.iter().map(|(pod, ip, id, _)| {
            let body = settings.get(id).cloned().unwrap_or_else(|| json!({}));
            async move {
                admin
                    .set_faults(ip, body.clone())
                    .await
                    .map(|()| format!("{pod}: {body}"))
                    .map_err(|e| format!("setting the fault hooks of pod {pod}: {e}"))
            }
        });
        let results = futures::future::join_all(pushes).await;
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(l) => lines.push(l),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(lines)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Cuts each group of pods off from every other pod of the cluster
    /// (NetworkPolicy: a side policy per group, then the pods labelled into it).
    async fn partition(
        &self,
        index: usize,
        groups: Vec<Vec<String>>,
    ) -> Result<(String, PodFault), String> {
        let policies: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), self.ns);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.ns);
        let prefix = format!("{}-{index}-", self.run);
        let mut lines = Vec::new();
        for (g, members) in groups.iter().enumerate() {
            let group = format!("{prefix}{g}");
            let np = partition_policy(self.cluster, self.ns, &group, self.run, self.owner.clone());
            let name = np.name_any();
            policies
                .patch(
                    &name,
                    &PatchParams::apply(crate::controller::MANAGER).force(),
                    &Patch::Apply(&np),
                )
                .await
                .map_err(|e| format!("applying {name}: {e}"))?;
            for pod in members {
                pods.patch(
                    pod,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {PARTITION_LABEL: group}}})),
                )
                .await
                .map_err(|e| format!("labelling {pod}: {e}"))?;
            }
            lines.push(format!(
                "cut off {} (NetworkPolicy {name})",
                members.join(", ")
            ));
        }
        Ok((lines.join("; "), PodFault::Partition { prefix }))
    }
}

impl<'t> FaultInjector<KubeTarget<'t>> for PodFaults<'_> {
    fn check(&self, spec: &DrillSpec) -> Result<(), String> {
        match unsupported(spec) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    async fn inject(
        &mut self,
        target: &mut KubeTarget<'t>,
        index: usize,
        f: &FaultSpec,
        _obs: &ClusterObservation,
    ) -> Result<String, String> {
        let (pods, leader) = Self::members(target).await;
        let (detail, state) = match f.kind {
            FaultKind::KillLeader | FaultKind::KillNode => {
                let pod = Self::select(f, &pods, leader.as_ref())?;
                let uid = self.crash(&pod).await?;
                (
                    format!("deleted pod {pod} (grace 0)"),
                    PodFault::Killed {
                        pod,
                        uid,
                        since: Instant::now(),
                        done: false,
                    },
                )
            }
            FaultKind::RollingRestart => {
                let mut order: Vec<String> = pods.into_iter().map(|(n, _)| n).collect();
                order.sort_by_key(|n| Some(n) == leader.as_ref());
                let period = Duration::from_millis(f.period_ms.unwrap_or(3_000));
                (
                    format!(
                        "restart every pod in turn, followers first: {}, {} ms apart",
                        order.join(", "),
                        period.as_millis()
                    ),
                    PodFault::Rolling {
                        total: order.len(),
                        queue: order.into(),
                        current: None,
                        period,
                        next_at: Instant::now(),
                        done: Vec::new(),
                    },
                )
            }
            FaultKind::FlapNode => {
                let pod = Self::select(f, &pods, leader.as_ref())?;
                let period = Duration::from_millis(f.period_ms.unwrap_or(4_000));
                let uid = self.crash(&pod).await?;
                (
                    format!(
                        "pod {pod} deleted (grace 0), and again {} ms after each return",
                        period.as_millis()
                    ),
                    PodFault::Flap {
                        pod,
                        waiting: uid.or_else(|| Some(String::new())),
                        period,
                        next_at: Instant::now(),
                        crashes: 1,
                    },
                )
            }
            FaultKind::PartitionNode => {
                let pod = Self::select(f, &pods, leader.as_ref())?;
                self.partition(index, vec![vec![pod]]).await?
            }
            FaultKind::PartitionRegion => {
                let members = Self::region_pods(f, &pods, leader.as_ref())?;
                self.partition(index, vec![members]).await?
            }
            FaultKind::QuorumLoss => self.partition(index, Self::majority(&pods)).await?,
            FaultKind::RetryStorm => (roomkeeper_drill::storm_on(&self.storm, f), PodFault::Storm),
            FaultKind::DiskStall => {
                let views = target.views().await;
                let region = f.select.as_ref().and_then(|s| s.region.clone());
                let one = f.select.as_ref().is_some_and(|s| s.role.is_some());
                let chosen: BTreeSet<u64> = if one {
                    let pod = Self::select(f, &pods, leader.as_ref())?;
                    views
                        .iter()
                        .filter(|v| v.pod == pod)
                        .filter_map(|v| v.id)
                        .collect()
                } else {
                    views
                        .iter()
                        .filter(|v| !v.deleting)
                        .filter(|v| region.as_ref().is_none_or(|r| *r == v.region))
                        .filter_map(|v| v.id)
                        .collect()
                };
                if chosen.is_empty() {
                    return Err("no pod matched the selector".into());
                }
                let delay_ms = f.delay_ms.unwrap_or(0);
                self.hooks.insert(
                    index,
                    HookContribution::Disk {
                        nodes: chosen.clone(),
                        delay_ms,
                    },
                );
                if let Err(e) = self.push_hooks(target).await {
                    self.hooks.remove(&index);
                    let _ = self.push_hooks(target).await;
                    return Err(e);
                }
                (
                    format!("every log fsync of node(s) {chosen:?} takes {delay_ms} ms longer (fault hooks)"),
                    PodFault::Hooks,
                )
            }
            FaultKind::PauseNode => {
                let pod = Self::select(f, &pods, leader.as_ref())?;
                let nodes: BTreeSet<u64> = target
                    .views()
                    .await
                    .iter()
                    .filter(|v| v.pod == pod)
                    .filter_map(|v| v.id)
                    .collect();
                if nodes.is_empty() {
                    return Err(format!("pod {pod} has no node id yet"));
                }
                self.hooks.insert(index, HookContribution::Pause { nodes });
                if let Err(e) = self.push_hooks(target).await {
                    self.hooks.remove(&index);
                    let _ = self.push_hooks(target).await;
                    return Err(e);
                }
                (
                    format!("pod {pod} frozen: Raft timers stopped, traffic dropped, HTTP held (fault hooks)"),
                    PodFault::Hooks,
                )
            }
            FaultKind::WanLatency => {
                let sel = f.select.clone().unwrap_or_default();
                let region = match (sel.region, sel.region_of) {
                    (Some(r), _) => Some(r),
                    (None, Some(_)) => Some(
                        Self::region_pods(f, &pods, leader.as_ref())?
                            .first()
                            .and_then(|p| pods.iter().find(|(n, _)| n == p))
                            .map(|(_, r)| r.clone())
                            .ok_or("no region matched the selector")?,
                    ),
                    (None, None) => None,
                };
                let delay_ms = f.delay_ms.unwrap_or(0);
                let loss = f.loss_percent.unwrap_or(0).min(100) as u8;
                self.hooks.insert(
                    index,
                    HookContribution::Wan {
                        region: region.clone(),
                        delay_ms,
                        loss,
                    },
                );
                if let Err(e) = self.push_hooks(target).await {
                    self.hooks.remove(&index);
                    let _ = self.push_hooks(target).await;
                    return Err(e);
                }
                let between = region.map_or("between every pair of regions".to_string(), |r| {
                    format!("between region {r} and the others")
                });
                (
                    format!("Raft traffic {between}: +{delay_ms} ms, {loss}% lost (fault hooks)"),
                    PodFault::Hooks,
                )
            }
            other => return Err(format!("{other} is not run on Kubernetes")),
        };
        self.active.insert(index, state);
        Ok(detail)
    }

    async fn heal(&mut self, target: &mut KubeTarget<'t>, index: usize) -> Result<String, String> {
        let Some(state) = self.active.remove(&index) else {
            return Ok(String::new());
        };
        Ok(match state {
            PodFault::Killed { pod, done, .. } => {
                if done {
                    format!("pod {pod} is back")
                } else {
                    format!("pod {pod} not back yet; the StatefulSet brings it back")
                }
            }
            PodFault::Rolling {
                done, queue, total, ..
            } => format!(
                "rolling restart ended: {} of {total} pods done, not reached: {:?}",
                done.len(),
                Vec::from(queue)
            ),
            PodFault::Flap { pod, crashes, .. } => {
                format!("pod {pod} stops flapping after {crashes} crash(es)")
            }
            PodFault::Partition { prefix } => {
                let healed =
                    heal_partitions(self.client, self.ns, self.cluster, self.run, &prefix).await?;
                format!("partition removed: {}", healed.join(", "))
            }
            PodFault::Storm => roomkeeper_drill::storm_off(&self.storm),
            PodFault::Hooks => {
                self.hooks.remove(&index);
                let left = if self.hooks.is_empty() {
                    "cleared"
                } else {
                    "narrowed to the faults still in effect"
                };
                match self.push_hooks(target).await {
                    Ok(_) => format!("fault hooks {left} on every pod"),
                    Err(e) => return Err(e),
                }
            }
        })
    }

    async fn step(&mut self, _target: &mut KubeTarget<'t>) -> Vec<(usize, String)> {
        let moving = self.active.values().any(|s| {
            matches!(
                s,
                PodFault::Killed { done: false, .. }
                    | PodFault::Rolling { .. }
                    | PodFault::Flap { .. }
            )
        });
        if !moving {
            return Vec::new();
        }
        let pods = match self.pods().await {
            Ok(p) => p,
            Err(e) => return vec![(*self.active.keys().next().unwrap_or(&0), e)],
        };
        let uid_of = |name: &str| {
            pods.iter()
                .find(|p| p.name_any() == name)
                .and_then(|p| p.metadata.uid.clone())
        };
        let mut events = Vec::new();
        let mut deletes: Vec<(usize, String, Option<u32>)> = Vec::new();
        for (i, state) in &mut self.active {
            match state {
                PodFault::Killed {
                    pod,
                    uid,
                    since,
                    done,
                } if !*done => {
                    if is_back(&pods, pod, uid.as_ref()) {
                        *done = true;
                        events.push((
                            *i,
                            format!(
                                "pod {pod} Ready again after {:.1} s",
                                since.elapsed().as_secs_f64()
                            ),
                        ));
                    } else if since.elapsed() > POD_BACK_TIMEOUT {
                        *done = true;
                        events.push((
                            *i,
                            format!(
                                "pod {pod} not Ready again within {} s",
                                POD_BACK_TIMEOUT.as_secs()
                            ),
                        ));
                    }
                }
                PodFault::Rolling {
                    queue,
                    current,
                    period,
                    next_at,
                    done,
                    ..
                } => {
                    if let Some((pod, uid, at)) = current.clone() {
                        let back = is_back(&pods, &pod, uid.as_ref());
                        if back || at.elapsed() > POD_BACK_TIMEOUT {
                            events.push((
                                *i,
                                format!(
                                    "restarted pod {pod}{}",
                                    if back {
                                        format!(
                                            ", Ready again after {:.1} s",
                                            at.elapsed().as_secs_f64()
                                        )
                                    } else {
                                        " (not Ready again in time)".to_string()
                                    }
                                ),
                            ));
                            done.push(pod);
                            *current = None;
                            *next_at = Instant::now() + *period;
                        }
                    } else if Instant::now() >= *next_at {
                        if let Some(pod) = queue.pop_front() {
                            *current = Some((pod.clone(), uid_of(&pod), Instant::now()));
                            // With its grace period: an orderly stop, as an upgrade does.
                            deletes.push((*i, pod, None));
                        }
                    }
                }
                PodFault::Flap {
                    pod,
                    waiting,
                    period,
                    next_at,
                    crashes,
                } => match waiting.clone() {
                    Some(uid) if is_back(&pods, pod, Some(&uid)) => {
                        *waiting = None;
                        *next_at = Instant::now() + *period;
                        events.push((*i, format!("pod {pod} back")));
                    }
                    Some(_) => {}
                    None if Instant::now() >= *next_at => {
                        *waiting = uid_of(pod).or_else(|| Some(String::new()));
                        *crashes += 1;
                        deletes.push((*i, pod.clone(), Some(0)));
                    }
                    None => {}
                },
                _ => {}
            }
        }
        for (i, pod, grace) in deletes {
            match self.delete(&pod, grace).await {
                Ok(()) => events.push((
                    i,
                    format!(
                        "deleted pod {pod} ({})",
                        grace.map_or("with its grace period".to_string(), |g| format!(
                            "grace {g}"
                        ))
                    ),
                )),
                Err(e) => events.push((i, e)),
            }
        }
        events
    }

    /// The nodes a `pauseNode` hook freezes: the runner's invariant audit
    /// skips them, as it skips SIGSTOPped processes locally.
    fn paused(&self) -> BTreeSet<u64> {
        self.hooks
            .values()
            .filter_map(|h| match h {
                HookContribution::Pause { nodes } => Some(nodes.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn finished(&self) -> Vec<usize> {
        self.active
            .iter()
            .filter(|(_, s)| match s {
                PodFault::Killed { done, .. } => *done,
                PodFault::Rolling { queue, current, .. } => queue.is_empty() && current.is_none(),
                _ => false,
            })
            .map(|(i, _)| *i)
            .collect()
    }

    fn busy(&self) -> Vec<usize> {
        self.active
            .iter()
            .filter(|(_, s)| matches!(s, PodFault::Rolling { .. }))
            .map(|(i, _)| *i)
            .collect()
    }
}

/// The Kubernetes outputs: the full report in the ConfigMap `<drill>-report`
/// (owned by the drill); the status is written by the reconcile.
struct ConfigMapSink<'a> {
    client: &'a Client,
    ns: &'a str,
    name: String,
    owner: Option<OwnerReference>,
}

impl ReportSink for ConfigMapSink<'_> {
    async fn write(&mut self, report: &DrillReport, _history: &History) -> Result<(), String> {
        let text = serde_json::to_string(report).map_err(|e| e.to_string())?;
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.ns.to_string()),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("report.json".to_string(), text)])),
            ..ConfigMap::default()
        };
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.ns);
        cms.patch(
            &self.name,
            &PatchParams::apply(crate::controller::MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("writing the report ConfigMap: {e}"))
    }
}

/// Runs the drill through the one runner; returns the finished status
/// (phase/timestamps filled by the caller).
async fn execute(
    ctx: &DrillContext,
    drill: &ChaosDrill,
    ns: &str,
) -> Result<ChaosDrillStatus, String> {
    let spec = &drill.spec.0;
    let cluster = spec.target.cluster.clone();
    let run_id = run_id(drill);
    let owner = kube::Resource::controller_owner_ref(drill, &());
    let storm = Arc::new(Storm::default());
    let mut target = KubeTarget {
        ctx,
        ns,
        cluster: &cluster,
        admin: NodeAdmin::new(ctx.nodes.http.clone(), None),
        token: String::new(),
        traffic: Arc::new(TrafficMap::default()),
        home_region: String::new(),
        ids: BTreeMap::new(),
        seen: BTreeSet::new(),
        memory_unreadable: false,
        memory: None,
        endpoints: Arc::new(EndpointStats::default()),
        frozen: BTreeSet::new(),
    };
    let mut injector = PodFaults {
        client: &ctx.client,
        ns,
        cluster: &cluster,
        run: &run_id,
        owner: owner.clone(),
        storm: storm.clone(),
        active: BTreeMap::new(),
        hooks: BTreeMap::new(),
    };
    let cm_name = format!("{}-report", drill.name_any());
    let mut sink = ConfigMapSink {
        client: &ctx.client,
        ns,
        name: cm_name.clone(),
        owner,
    };
    // A room of its own per run, and buyers and keys of its own: the cluster
    // outlives drills, and a buyer's key spans rooms.
    let name: String = drill.name_any().chars().take(100).collect();
    let cfg = RunConfig {
        name: drill.name_any(),
        spec: spec.clone(),
        seed: seed_of(&drill.uid().unwrap_or_default()),
        room: format!("drill-{name}-{run_id}"),
        buyer_prefix: format!("{run_id}-"),
        interruptible: false,
        echo: false,
        storm,
    };
    let result = roomkeeper_drill::run(&cfg, &mut target, &mut injector, &mut sink).await;
    // A fault that failed half-way may have left a partition behind.
    let leftover = heal_partitions(&ctx.client, ns, &cluster, &run_id, &format!("{run_id}-")).await;
    // And hook settings a failed heal (or an error mid-run) left on a pod.
    let hooks_left = if uses_fault_hooks(spec) {
        clear_fault_hooks(&ctx.client, &ctx.nodes, ns, &cluster)
            .await
            .err()
    } else {
        None
    };
    let report = result?;
    let mut status = status_of(&report, cm_name);
    if let Err(e) = leftover {
        status.message = Some(format!("{}; {e}", status.message.unwrap_or_default()));
    }
    if let Some(e) = hooks_left {
        status.message = Some(format!("{}; {e}", status.message.unwrap_or_default()));
    }
    Ok(status)
}

/// The drill's status from its report: the printer columns and the fields
/// `kubectl get chaosdrill -o yaml` shows; the whole report is in `cm_name`.
fn status_of(report: &DrillReport, cm_name: String) -> ChaosDrillStatus {
    let check = &report.check;
    let v = report.verdict;
    let oversold = check
        .violations
        .iter()
        .filter(|v| matches!(v, roomkeeper_chaos::checker::Violation::Oversell { .. }))
        .count();
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let mut problems = report.run_errors.clone();
    problems.extend(report.abort_reason.iter().map(|r| format!("aborted: {r}")));
    let message = format!(
        "{}: {} orders acknowledged, {} lost, {} oversold, RTO {} ms{}",
        v.as_str(),
        check.acknowledged,
        check.rpo,
        oversold,
        check.rto_ms,
        if problems.is_empty() {
            String::new()
        } else {
            format!("; {}", problems.join("; "))
        }
    );
    // What was injected, in order: every fault line of the event log.
    let faults = report
        .events
        .iter()
        .filter(|e| {
            e.text.starts_with("FAULT ")
                || e.text.starts_with("HEAL ")
                || e.text.starts_with("fault ")
        })
        .map(|e| format!("{} ms: {}", e.at_ms, e.text))
        .collect();
    ChaosDrillStatus {
        verdict: Some(v.as_str().into()),
        message: Some(message.clone()),
        acked: Some(as_i64(check.acknowledged)),
        lost: Some(as_i64(check.rpo)),
        oversold: Some(as_i64(oversold)),
        unknown_ops: Some(as_i64(report.orders.unknown_ops)),
        rto_ms: i64::try_from(check.rto_ms).ok(),
        violations: check
            .violations
            .iter()
            .take(20)
            .map(ToString::to_string)
            .collect(),
        probes: report
            .probes
            .iter()
            .map(|p| {
                format!(
                    "{}: {} ({})",
                    p.name,
                    if p.passed { "PASS" } else { "FAIL" },
                    p.measured
                )
            })
            .collect(),
        faults,
        report_config_map: Some(cm_name),
        conditions: vec![condition(
            "Completed",
            true,
            if v.as_str() == "PASS" {
                "Passed"
            } else {
                "Failed"
            },
            &message,
        )],
        ..ChaosDrillStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library(name: &str) -> DrillSpec {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../chaos/drills")
            .join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(path).unwrap();
        let drill: ChaosDrill = serde_yaml::from_str(&text).unwrap();
        drill.spec.0
    }

    #[test]
    fn pod_fault_drills_run_on_kubernetes() {
        for name in [
            "leader-kill",
            "follower-kill",
            "rolling-restart",
            "flapping-node",
            "partition-node",
            "partition-minority-region",
            "partition-leader-region",
            "quorum-loss",
            "disk-stall",
            "wan-latency-loss",
            "ambiguous-retry-storm",
        ] {
            assert_eq!(unsupported(&library(name)), None, "{name}");
        }
    }

    #[test]
    fn hook_drills_need_the_clusters_fault_hooks_and_say_which_field() {
        for name in ["disk-stall", "wan-latency-loss", "ambiguous-retry-storm"] {
            let why = needs_fault_hooks(&library(name), "shop", false).unwrap();
            assert!(
                why.contains("spec.faults[0].kind")
                    && why.contains("spec.orderStore.faultHooks: true")
                    && why.contains("shop"),
                "{name}: {why}"
            );
            assert_eq!(needs_fault_hooks(&library(name), "shop", true), None);
        }
        assert_eq!(
            needs_fault_hooks(&library("leader-kill"), "shop", false),
            None
        );
    }

    #[test]
    fn hook_settings_merge_as_the_local_injector_does() {
        let nodes = vec![
            (1, "a".to_string()),
            (2, "a".to_string()),
            (3, "b".to_string()),
            (4, "c".to_string()),
        ];
        let disk = HookContribution::Disk {
            nodes: [1, 3].into(),
            delay_ms: 200,
        };
        let slower_disk = HookContribution::Disk {
            nodes: [3].into(),
            delay_ms: 500,
        };
        let wan_c = HookContribution::Wan {
            region: Some("c".into()),
            delay_ms: 80,
            loss: 10,
        };
        let s = merged_hook_settings(&nodes, &[&disk, &slower_disk, &wan_c]);
        assert_eq!(
            s[&1],
            json!({"fsync_delay_ms": 200, "peer_delay_ms": {"4": 80}, "peer_loss_percent": {"4": 10}})
        );
        // The largest delay wins; node 2 has no disk fault.
        assert_eq!(s[&3]["fsync_delay_ms"], json!(500));
        assert_eq!(s[&2].get("fsync_delay_ms"), None);
        // Region c's node is slowed towards every other region, not itself.
        assert_eq!(s[&4]["peer_delay_ms"], json!({"1": 80, "2": 80, "3": 80}));
        // Traffic inside a region and between a and b is untouched by wan_c.
        assert_eq!(s[&3]["peer_delay_ms"], json!({"4": 80}));
        let every = HookContribution::Wan {
            region: None,
            delay_ms: 30,
            loss: 0,
        };
        let s = merged_hook_settings(&nodes, &[&every]);
        assert_eq!(s[&1], json!({"peer_delay_ms": {"3": 30, "4": 30}}));
        // A pause freezes only its node, alongside the other faults.
        let pause = HookContribution::Pause { nodes: [2].into() };
        let s = merged_hook_settings(&nodes, &[&every, &pause]);
        assert_eq!(
            s[&2],
            json!({"peer_delay_ms": {"3": 30, "4": 30}, "paused": true})
        );
        assert_eq!(s[&1].get("paused"), None);
        // Nothing in effect: every node is sent `{}`, which clears its hooks.
        let s = merged_hook_settings(&nodes, &[]);
        assert!(s.values().all(|v| *v == json!({})), "{s:?}");
    }

    #[test]
    fn the_seed_comes_from_the_drills_uid() {
        let a = seed_of("3f2a9c1e-7b44-4d0a-9e1f-0c5b2d8a6e71");
        assert_eq!(a, 0x3f2a_9c1e_7b44_4d0a);
        assert_eq!(a, seed_of("3f2a9c1e-7b44-4d0a-9e1f-0c5b2d8a6e71"));
        assert_ne!(a, seed_of("3f2a9c1e-7b44-4d0b-9e1f-0c5b2d8a6e71"));
        assert_ne!(seed_of("not-a-uid"), 7, "never the old hard-coded seed");
    }

    #[test]
    fn drills_needing_node_level_injectors_are_refused_with_the_field() {
        let why = unsupported(&library("membership-change-during-partition")).unwrap();
        assert!(
            why.contains("spec.faults[0].kind") && why.contains("membershipChangeDuringPartition"),
            "{why}"
        );
        // pauseNode runs through the fault hooks now.
        assert_eq!(unsupported(&library("pause-leader")), None);
        let why = unsupported(&library("game-day-follower-kill")).unwrap();
        assert!(why.contains("gameDay"), "{why}");
    }
}
