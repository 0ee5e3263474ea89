//! `ChaosDrill` on Kubernetes: the operator runs a drill against a
//! LiveRoomCluster of its namespace (recorded flash-sale load through the pods'
//! client API, faults through the Kubernetes API), checks the recorded history
//! with the same checker as local drills, and writes the verdict into the
//! drill's status. A drill runs once; its status is its record.
//!
//! Faults this runner carries out: `killLeader` and `killNode` (pod deletion
//! with no grace period). Other kinds need injectors inside the node's network
//! or disk and are refused up front with a condition, never half-run.

// kube's `printcolumn(name = …, type_ = …)` repeats key names by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, CustomResource, ResourceExt};
use roomkeeper_chaos::drill::{DrillSpec, FaultKind, FaultSpec, NodeRole, RegionPick};
use roomkeeper_chaos::history::{History, OpKind};
use roomkeeper_chaos::recorder::Recorder;
use roomkeeper_chaos::report::{evaluate, order_counts, verdict, NodeInvariant, Phases};
use roomkeeper_control::http::JsonClient;
use roomkeeper_control::load::TrafficMap;
use roomkeeper_control::recorded_load::{final_read_at, Load, LoadConfig, Storm};
use roomkeeper_control::setup::{catalog_listings, create_sale_at};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::controller::{pod_is_ready, secret_value};
use crate::crd::LiveRoomCluster;
use crate::nodes::NodeAdmin;
use crate::plan::leader;
use crate::resources::{
    partition_policy, Names, CLUSTER_LABEL, PARTITION_LABEL, PARTITION_RUN_LABEL, REGION_LABEL,
};

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
pub const SUPPORTED_FAULTS: [FaultKind; 8] = [
    FaultKind::KillLeader,
    FaultKind::KillNode,
    FaultKind::RollingRestart,
    FaultKind::FlapNode,
    FaultKind::RetryStorm,
    FaultKind::PartitionNode,
    FaultKind::PartitionRegion,
    FaultKind::QuorumLoss,
];

/// Why the spec cannot run on Kubernetes, if it cannot.
pub fn unsupported(spec: &DrillSpec) -> Option<String> {
    if let Err(errors) = roomkeeper_chaos::drill::validate(spec) {
        return Some(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    let bad: Vec<String> = spec
        .faults
        .iter()
        .enumerate()
        .filter(|(_, f)| !SUPPORTED_FAULTS.contains(&f.kind))
        .map(|(i, f)| {
            let supported: Vec<String> = SUPPORTED_FAULTS.iter().map(ToString::to_string).collect();
            format!(
                "spec.faults[{i}].kind: {} is not run by the Kubernetes drill runner ({} are)",
                f.kind,
                supported.join(", ")
            )
        })
        .collect();
    if spec.game_day == Some(true) {
        return Some("spec.gameDay: game days run locally (`roomkeeper drill run --game-day`), not in the operator".into());
    }
    (!bad.is_empty()).then(|| bad.join("; "))
}

struct DrillContext {
    client: Client,
    http: JsonClient,
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
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(DrillContext {
        client: client.clone(),
        http: JsonClient::new(),
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
            if let Err(e) = heal_partitions(
                &ctx.client,
                &ns,
                &drill.spec.0.target.cluster,
                &run_id(&drill),
            )
            .await
            {
                tracing::warn!(drill = %key, error = %e, "could not heal an interrupted drill's partition");
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
    let ready = lrcs
        .get_opt(target)
        .await?
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

/// The cluster's pods with IPs, and the leader's pod name.
async fn pods_of(ctx: &DrillContext, ns: &str, cluster: &str) -> Result<Vec<Pod>, String> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={cluster}")))
        .await
        .map(|l| l.items)
        .map_err(|e| format!("listing pods: {e}"))
}

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

async fn leader_pod(
    ctx: &DrillContext,
    admin: &NodeAdmin,
    ns: &str,
    cluster: &str,
) -> Result<Option<String>, String> {
    let lrcs: Api<LiveRoomCluster> = Api::namespaced(ctx.client.clone(), ns);
    let lrc = lrcs
        .get(cluster)
        .await
        .map_err(|e| format!("reading {cluster}: {e}"))?;
    // The operator's own status can lag a failover; ask the nodes.
    let mut views = Vec::new();
    for p in pods_of(ctx, ns, cluster).await? {
        if let Some(ip) = pod_ip(&p) {
            views.push(crate::plan::PodView {
                pod: p.name_any(),
                status: admin.status(&ip).await.ok(),
                ip: Some(ip),
                ..crate::plan::PodView::default()
            });
        }
    }
    Ok(leader(&views)
        .map(|(p, _)| p.pod.clone())
        .or(lrc.status.and_then(|s| s.leader)))
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

/// Takes down every partition of run `run` on `cluster`: labels first (the
/// pods fall back under the cluster's policy), then the side policies.
async fn heal_partitions(
    client: &Client,
    ns: &str,
    cluster: &str,
    run: &str,
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
            .is_some_and(|g| g.starts_with(&format!("{run}-")));
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
    for np in sides.items {
        let name = np.name_any();
        match policies.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("deleting policy {name}: {e}")),
        }
    }
    Ok(healed)
}

/// What one fault did: when it started and healed (drill clock), in words.
struct Injected {
    start_ms: u64,
    end_ms: u64,
    lines: Vec<String>,
}

/// The Kubernetes injectors that work through pods: deletion, one at a time.
struct PodFaults<'a> {
    ctx: &'a DrillContext,
    admin: &'a NodeAdmin,
    ns: &'a str,
    cluster: &'a str,
    rec: &'a Recorder,
    /// This run's id: the prefix of its partition groups.
    run: &'a str,
    /// The drill, owner of the policies it creates.
    owner: Option<OwnerReference>,
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
const POD_BACK_TIMEOUT_MS: u64 = 60_000;

impl PodFaults<'_> {
    /// The cluster's pods as (name, region), the leader's name.
    async fn members(&self) -> Result<(Vec<(String, String)>, String), String> {
        let leader = leader_pod(self.ctx, self.admin, self.ns, self.cluster)
            .await?
            .unwrap_or_default();
        let mut pods: Vec<(String, String)> = pods_of(self.ctx, self.ns, self.cluster)
            .await?
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                (
                    p.name_any(),
                    p.labels().get(REGION_LABEL).cloned().unwrap_or_default(),
                )
            })
            .collect();
        pods.sort();
        Ok((pods, leader))
    }

    /// The pod a fault's selector names (default: a follower).
    async fn select(&self, f: &FaultSpec) -> Result<String, String> {
        let (pods, leader) = self.members().await?;
        if f.kind == FaultKind::KillLeader {
            return Some(leader)
                .filter(|l| !l.is_empty())
                .ok_or_else(|| "no leader".to_string());
        }
        let want_leader = f.select.as_ref().and_then(|s| s.role) == Some(NodeRole::Leader);
        let region = f.select.as_ref().and_then(|s| s.region.clone());
        pods.into_iter()
            .filter(|(n, r)| {
                (n == &leader) == want_leader && region.as_ref().is_none_or(|want| want == r)
            })
            .map(|(n, _)| n)
            .next()
            .ok_or_else(|| "no pod matched the selector".to_string())
    }

    async fn delete(&self, pod: &str, grace: Option<u32>) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), self.ns);
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

    /// Waits until the StatefulSet brought `pod` back and it is Ready.
    async fn wait_back(&self, pod: &str) -> Result<bool, String> {
        let deadline = self.rec.now_ms() + POD_BACK_TIMEOUT_MS;
        while self.rec.now_ms() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let back = pods_of(self.ctx, self.ns, self.cluster)
                .await?
                .iter()
                .any(|p| {
                    p.name_any() == pod
                        && p.metadata.deletion_timestamp.is_none()
                        && pod_is_ready(p)
                });
            if back {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// killLeader / killNode: delete the pod with grace 0 (a crash); the fault
    /// lasts until the StatefulSet brought it back.
    async fn kill(&self, f: &FaultSpec) -> Result<Injected, String> {
        let victim = self.select(f).await?;
        let start = self.rec.now_ms();
        self.delete(&victim, Some(0)).await?;
        let mut lines = vec![format!(
            "{} at {start} ms: deleted pod {victim} (grace 0)",
            f.kind
        )];
        if !self.wait_back(&victim).await? {
            lines.push(format!(
                "{victim} was not Ready again within {POD_BACK_TIMEOUT_MS} ms"
            ));
        }
        Ok(Injected {
            start_ms: start,
            end_ms: self.rec.now_ms(),
            lines,
        })
    }

    /// rollingRestart: every pod in turn, followers first and the leader last,
    /// each deleted with its grace period (an orderly stop), the next one
    /// `periodMs` after the previous is Ready again.
    async fn rolling_restart(&self, f: &FaultSpec) -> Result<Injected, String> {
        let (pods, leader) = self.members().await?;
        let mut order: Vec<String> = pods.into_iter().map(|(n, _)| n).collect();
        order.sort_by_key(|n| n == &leader);
        let period = Duration::from_millis(f.period_ms.unwrap_or(3_000));
        let start = self.rec.now_ms();
        let mut lines = Vec::new();
        for pod in &order {
            let t = self.rec.now_ms();
            self.delete(pod, None).await?;
            let back = self.wait_back(pod).await?;
            lines.push(format!(
                "rollingRestart at {t} ms: restarted pod {pod}{}",
                if back {
                    ""
                } else {
                    " (not Ready again in time)"
                }
            ));
            tokio::time::sleep(period).await;
        }
        Ok(Injected {
            start_ms: start,
            end_ms: self.rec.now_ms(),
            lines,
        })
    }

    /// Cuts each group of pods off from every other pod of the cluster for
    /// the fault's duration (NetworkPolicy: a side policy per group, then the
    /// pods labelled into it), then heals.
    async fn partition(&self, f: &FaultSpec, groups: Vec<Vec<String>>) -> Result<Injected, String> {
        let policies: Api<NetworkPolicy> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let start = self.rec.now_ms();
        let mut lines = Vec::new();
        for (i, members) in groups.iter().enumerate() {
            let group = format!("{}-{i}", self.run);
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
                "{} at {start} ms: cut off {} (NetworkPolicy {name})",
                f.kind,
                members.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_secs(f.duration_secs.unwrap_or(10))).await;
        let healed = heal_partitions(&self.ctx.client, self.ns, self.cluster, self.run).await?;
        let end = self.rec.now_ms();
        lines.push(format!("healed at {end} ms: {}", healed.join(", ")));
        Ok(Injected {
            start_ms: start,
            end_ms: end,
            lines,
        })
    }

    /// The pods of the region a partitionRegion fault names.
    async fn region_pods(&self, f: &FaultSpec) -> Result<Vec<String>, String> {
        let (pods, leader) = self.members().await?;
        let mut regions = by_region(&pods);
        let leader_region = pods
            .iter()
            .find(|(p, _)| *p == leader)
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
    async fn majority(&self) -> Result<Vec<Vec<String>>, String> {
        let (pods, _) = self.members().await?;
        let regions = by_region(&pods);
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
        Ok(round_robin.into_iter().map(|p| vec![p]).collect())
    }

    /// flapNode: the selected pod (default a follower) crashes, comes back,
    /// and crashes again `periodMs` later, for `durationSecs`.
    async fn flap(&self, f: &FaultSpec) -> Result<Injected, String> {
        let victim = self.select(f).await?;
        let period = Duration::from_millis(f.period_ms.unwrap_or(4_000));
        let start = self.rec.now_ms();
        let until = start + f.duration_secs.unwrap_or(16) * 1000;
        let mut crashes = 0;
        while self.rec.now_ms() < until {
            self.delete(&victim, Some(0)).await?;
            crashes += 1;
            self.wait_back(&victim).await?;
            tokio::time::sleep(period).await;
        }
        Ok(Injected {
            start_ms: start,
            end_ms: self.rec.now_ms(),
            lines: vec![format!(
                "flapNode at {start} ms: deleted pod {victim} {crashes} times (grace 0), {} ms apart",
                period.as_millis()
            )],
        })
    }
}

/// Runs the drill; returns the finished status (phase/timestamps filled by the caller).
async fn execute(
    ctx: &DrillContext,
    drill: &ChaosDrill,
    ns: &str,
) -> Result<ChaosDrillStatus, String> {
    let spec = &drill.spec.0;
    let cluster = spec.target.cluster.clone();
    let names = Names { cluster: &cluster };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let tokens = secrets
        .get(&names.tokens())
        .await
        .map_err(|e| format!("reading the tokens Secret: {e}"))?;
    let token =
        secret_value(&tokens, "client-token").ok_or("the tokens Secret has no client-token")?;
    let admin = NodeAdmin::new(ctx.http.clone(), secret_value(&tokens, "admin-token"));
    let pods = pods_of(ctx, ns, &cluster).await?;
    let traffic = Arc::new(TrafficMap::default());
    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &pods {
        if let (Some(ip), Some(region)) = (pod_ip(p), p.labels().get(REGION_LABEL)) {
            by_region
                .entry(region.clone())
                .or_default()
                .push(format!("{ip}:{}", crate::resources::API_PORT));
        }
    }
    for (region, addrs) in &by_region {
        traffic.set_endpoints(region, addrs.clone());
        traffic.set_weight(region, 100);
    }
    let all_addrs: Vec<String> = by_region.values().flatten().cloned().collect();
    let leader_name = leader_pod(ctx, &admin, ns, &cluster)
        .await?
        .ok_or("the cluster has no leader")?;
    let leader_addr = pods
        .iter()
        .find(|p| p.name_any() == leader_name)
        .and_then(pod_ip)
        .map(|ip| format!("{ip}:{}", crate::resources::API_PORT))
        .ok_or("the leader pod has no IP")?;

    // The sale: a room of its own per run, and buyers and keys of its own: the
    // cluster outlives drills, and a buyer's key spans rooms.
    let run_id = run_id(drill);
    let name: String = drill.name_any().chars().take(100).collect();
    let room = format!("drill-{name}-{run_id}");
    let (skus, hot, listings) = catalog_listings(&spec.load.catalog);
    let region0 = by_region.keys().next().cloned().unwrap_or_default();
    create_sale_at(
        &ctx.http,
        &leader_addr,
        &token,
        &room,
        "Drill flash sale",
        &region0,
        &listings,
    )
    .await
    .map_err(|e| format!("creating the sale: {e}"))?;

    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        cfg: Arc::new(LoadConfig {
            room: room.clone(),
            skus,
            hot_skus: hot,
            probe_skus: Vec::new(),
            probe_window: Duration::from_secs(4),
            clients: spec.load.clients,
            think: Duration::from_millis(spec.load.think_time_ms),
            client_timeout: Duration::from_millis(spec.load.client_timeout_ms.unwrap_or(3_000)),
            retry_deadline: Duration::from_millis(spec.load.retry_deadline_ms.unwrap_or(10_000)),
            client_token: token.clone(),
            seed: 7,
            run_id: format!("{run_id}-"),
        }),
        rec: rec.clone(),
        traffic: traffic.clone(),
        stop: stop.clone(),
        storm: Arc::new(Storm {
            active: AtomicBool::new(false),
            timeout_ms: AtomicU64::new(0),
            duplicates: AtomicU32::new(1),
        }),
        http: ctx.http.clone(),
    };
    let tasks = load.start(false);

    // Faults on schedule.
    let mut faults_done = Vec::new();
    let mut fault_start: Option<u64> = None;
    let mut fault_end: Option<u64> = None;
    let mut order: Vec<usize> = (0..spec.faults.len()).collect();
    order.sort_by_key(|i| spec.faults[*i].after_secs);
    let mut run_errors = Vec::new();
    let storm = load.storm.clone();
    let faults = PodFaults {
        ctx,
        admin: &admin,
        ns,
        cluster: &cluster,
        rec: &rec,
        run: &run_id,
        owner: kube::Resource::controller_owner_ref(drill, &()),
    };
    for i in order {
        let f = &spec.faults[i];
        let at = f.after_secs * 1000;
        while rec.now_ms() < at {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ran = match f.kind {
            FaultKind::KillLeader | FaultKind::KillNode => faults.kill(f).await,
            FaultKind::RollingRestart => faults.rolling_restart(f).await,
            FaultKind::FlapNode => faults.flap(f).await,
            FaultKind::PartitionNode => match faults.select(f).await {
                Ok(pod) => faults.partition(f, vec![vec![pod]]).await,
                Err(e) => Err(e),
            },
            FaultKind::PartitionRegion => match faults.region_pods(f).await {
                Ok(pods) => faults.partition(f, vec![pods]).await,
                Err(e) => Err(e),
            },
            FaultKind::QuorumLoss => match faults.majority().await {
                Ok(groups) => faults.partition(f, groups).await,
                Err(e) => Err(e),
            },
            FaultKind::RetryStorm => {
                let t = f.client_timeout_ms.unwrap_or(100);
                let d = f.duplicates.unwrap_or(1);
                let start = rec.now_ms();
                storm.timeout_ms.store(t, Ordering::Relaxed);
                storm.duplicates.store(d, Ordering::Relaxed);
                storm.active.store(true, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(f.duration_secs.unwrap_or(10))).await;
                storm.active.store(false, Ordering::Relaxed);
                Ok(Injected {
                    start_ms: start,
                    end_ms: rec.now_ms(),
                    lines: vec![format!(
                        "retryStorm at {start} ms: clients time out after {t} ms and retry each ambiguous order with the same idempotency key, {d} copies at once"
                    )],
                })
            }
            other => Err(format!("fault {i}: {other} is not run on Kubernetes")),
        };
        match ran {
            Ok(done) => {
                fault_start.get_or_insert(done.start_ms);
                fault_end = Some(fault_end.unwrap_or(0).max(done.end_ms));
                faults_done.extend(done.lines);
            }
            Err(e) => run_errors.push(format!("fault {i} ({}): {e}", f.kind)),
        }
    }
    // A fault that failed half-way may have left a partition behind.
    if let Err(e) = heal_partitions(&ctx.client, ns, &cluster, &run_id).await {
        run_errors.push(e);
    }
    let end_ms = spec.duration_secs * 1000;
    while rec.now_ms() < end_ms {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let load_end = rec.now_ms();

    // Final read on the healed cluster, then the checker.
    let ops = rec.ops();
    let mut buyers: Vec<(String, String)> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            OpKind::PlaceOrder { buyer, key, .. } => Some((buyer.clone(), key.clone())),
            OpKind::ReadStock { .. } => None,
        })
        .collect();
    buyers.sort();
    buyers.dedup();
    let mut history = History {
        ops,
        ..History::default()
    };
    let leader_name = leader_pod(ctx, &admin, ns, &cluster)
        .await?
        .unwrap_or_default();
    let mut addrs = all_addrs.clone();
    if let Some(l) = pods_of(ctx, ns, &cluster)
        .await?
        .iter()
        .find(|p| p.name_any() == leader_name)
        .and_then(pod_ip)
    {
        let l = format!("{l}:{}", crate::resources::API_PORT);
        addrs.retain(|a| *a != l);
        addrs.insert(0, l);
    }
    match final_read_at(&ctx.http, &addrs, &token, &room, &buyers).await {
        Ok(f) => {
            history.listings = f.listings;
            history.final_stock_left = f.stock_left;
            history.final_orders = f.orders;
        }
        Err(e) => run_errors.push(format!("final read failed: {e}")),
    }
    // Every node audits its own state machine.
    let mut invariants = Vec::new();
    for p in pods_of(ctx, ns, &cluster).await? {
        let Some(ip) = pod_ip(&p) else { continue };
        match admin.invariants(&ip).await {
            Ok((ok, detail)) => invariants.push(NodeInvariant {
                node: admin.status(&ip).await.map(|s| s.node_id).unwrap_or(0),
                ok,
                detail: format!("{}: {detail}", p.name_any()),
            }),
            Err(e) => run_errors.push(format!("invariant audit of {}: {e}", p.name_any())),
        }
    }
    let h2 = history.clone();
    let check = tokio::task::spawn_blocking(move || roomkeeper_chaos::check(&h2))
        .await
        .map_err(|e| format!("the history checker panicked: {e}"))?;
    let phases = Phases {
        fault_start_ms: fault_start,
        fault_end_ms: fault_end,
        end_ms: load_end,
    };
    let probes = evaluate(
        &spec.hypothesis.probes,
        &history,
        &check,
        &phases,
        &[],
        &invariants,
    );
    let v = verdict(false, &run_errors, &check, &invariants, &probes);
    let counts = order_counts(&history);
    let oversold = check
        .violations
        .iter()
        .filter(|v| matches!(v, roomkeeper_chaos::checker::Violation::Oversell { .. }))
        .count();

    // The full report goes into a ConfigMap owned by the drill.
    let cm_name = format!("{}-report", drill.name_any());
    let report = json!({
        "verdict": v.as_str(), "orders": counts, "check": check, "probes": probes,
        "faults": faults_done, "runErrors": run_errors, "phases": {
            "faultStartMs": fault_start, "faultEndMs": fault_end, "endMs": load_end
        }
    });
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(cm_name.clone()),
            namespace: Some(ns.to_string()),
            owner_references: kube::Resource::controller_owner_ref(drill, &()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "report.json".to_string(),
            report.to_string(),
        )])),
        ..ConfigMap::default()
    };
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    cms.patch(
        &cm_name,
        &PatchParams::apply(crate::controller::MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map_err(|e| format!("writing the report ConfigMap: {e}"))?;

    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let message = format!(
        "{}: {} orders acknowledged, {} lost, {} oversold, RTO {} ms{}",
        v.as_str(),
        check.acknowledged,
        check.rpo,
        oversold,
        check.rto_ms,
        if run_errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {}", run_errors.join("; "))
        }
    );
    Ok(ChaosDrillStatus {
        verdict: Some(v.as_str().into()),
        message: Some(message.clone()),
        acked: Some(as_i64(check.acknowledged)),
        lost: Some(as_i64(check.rpo)),
        oversold: Some(as_i64(oversold)),
        unknown_ops: Some(as_i64(counts.unknown_ops)),
        rto_ms: i64::try_from(check.rto_ms).ok(),
        violations: check
            .violations
            .iter()
            .take(20)
            .map(ToString::to_string)
            .collect(),
        probes: probes
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
        faults: faults_done,
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
    })
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
        ] {
            assert_eq!(unsupported(&library(name)), None, "{name}");
        }
        // The ambiguous-retry drill also stalls disks, which needs the node's test hook.
        let why = unsupported(&library("ambiguous-retry-storm")).unwrap();
        assert!(
            why.contains("diskStall") && !why.contains("retryStorm is not"),
            "{why}"
        );
    }

    #[test]
    fn drills_needing_node_level_injectors_are_refused_with_the_field() {
        let why = unsupported(&library("pause-leader")).unwrap();
        assert!(
            why.contains("spec.faults[0].kind") && why.contains("pauseNode"),
            "{why}"
        );
        let why = unsupported(&library("game-day-follower-kill")).unwrap();
        assert!(why.contains("gameDay"), "{why}");
    }
}
