//! The operator's health view: a health snapshot built from the nodes' admin
//! status on every reconcile, fed to the same playbook engine the local demo
//! runs. Its memory (activations, decisions, open actions) is kept in a
//! ConfigMap so a restarted operator neither repeats nor forgets an action.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams};
use kube::ResourceExt;
use roomkeeper_playbook::{
    default_playbook, ActionKind, ActionOutcome, ActivationPhase, ControllerView, Disposition,
    Engine, EngineMemory, HealthSnapshot, NodeHealth, Playbook, Role, ShardHealth, Target,
};

use crate::controller::{Context, Error};
use crate::crd::{FailoverPlaybook, LiveRoomCluster};
use crate::nodes::NodeAdmin;
use crate::plan::{self, PodView, LIVE_ACK_MS};
use crate::resources::{self, cluster_name};

/// Per-cluster engine state held between reconciles.
#[derive(Default)]
pub struct PlaybookState {
    history: VecDeque<HealthSnapshot>,
    memory: Option<EngineMemory>,
    saved: String,
}

/// Engine state of every cluster this replica reconciles.
#[derive(Default)]
pub struct PlaybookStates {
    inner: Mutex<HashMap<String, PlaybookState>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The health snapshot of this moment.
pub fn snapshot(lrc: &LiveRoomCluster, views: &[PodView], at_ms: u64) -> HealthSnapshot {
    let leader = plan::leader(views).map(|(_, s)| s);
    let mut regions_reachable: Vec<String> = views
        .iter()
        .filter(|v| v.status.is_some())
        .map(|v| v.region.clone())
        .collect();
    regions_reachable.sort();
    regions_reachable.dedup();
    let newest = views
        .iter()
        .filter_map(|v| v.status.as_ref())
        .max_by_key(|s| s.term);
    let membership = leader.or(newest);
    let nodes = views
        .iter()
        .filter_map(|v| {
            let id = v.id?;
            let progress = leader.and_then(|l| l.replication.get(&id.to_string()));
            let is_leader = leader.is_some_and(|l| l.node_id == id);
            Some(NodeHealth {
                node_id: id,
                region: v.region.clone(),
                zone: v.zone.clone(),
                reachable_by_controller: v.status.is_some(),
                process_alive: None,
                self_reported_role: v
                    .status
                    .as_ref()
                    .and_then(|s| Role::from_admin_name(&s.role)),
                leader_sees_replicating: match (leader, is_leader, progress) {
                    (Some(_), true, _) => Some(true),
                    (Some(_), false, Some(p)) => {
                        Some(p.millis_since_ack.is_some_and(|ms| ms <= LIVE_ACK_MS))
                    }
                    _ => None,
                },
                lag_entries: progress.map(|p| p.lag),
                order_p99_ms: None,
                error_rate: None,
                disk_ok: None,
            })
        })
        .collect();
    HealthSnapshot {
        at_ms,
        controller: ControllerView {
            regions_reachable,
            regions_total: u32::try_from(lrc.spec.regions.len()).unwrap_or(u32::MAX),
        },
        nodes,
        shard: ShardHealth {
            leader: leader.map(|l| l.node_id),
            term: membership.map_or(0, |s| s.term),
            voters: membership.map(|s| s.voters.clone()).unwrap_or_default(),
            learners: membership.map(|s| s.learners.clone()).unwrap_or_default(),
        },
    }
}

/// The highest active tier in the engine memory, as `T<level> <name>`.
pub fn tier_name(memory: &EngineMemory) -> String {
    memory
        .activations()
        .iter()
        .filter(|a| a.phase == ActivationPhase::Active)
        .max_by_key(|a| a.level)
        .map_or_else(
            || "T0 watch".to_string(),
            |a| format!("T{} {}", a.level, a.tier),
        )
}

async fn load_playbook(lrc: &LiveRoomCluster, ctx: &Context, ns: &str) -> Result<Playbook, String> {
    let mut playbook = match &lrc.spec.playbook_ref {
        None => default_playbook(),
        Some(r) => {
            let api: Api<FailoverPlaybook> = Api::namespaced(ctx.client.clone(), ns);
            match api.get_opt(&r.name).await {
                Ok(Some(f)) => f.spec.0,
                Ok(None) => return Err(format!("FailoverPlaybook {:?} not found", r.name)),
                Err(e) => return Err(format!("reading FailoverPlaybook {:?}: {e}", r.name)),
            }
        }
    };
    if let Err(errors) = roomkeeper_playbook::validate(&playbook) {
        return Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "));
    }
    playbook.dry_run |= lrc.spec.dry_run;
    playbook.paused |= lrc.spec.paused;
    Ok(playbook)
}

/// Runs one engine step for the cluster; returns the active tier, or why the
/// playbook cannot run.
pub async fn run(
    lrc: &LiveRoomCluster,
    ctx: &Context,
    views: &[PodView],
    admin: &NodeAdmin,
) -> Result<Result<String, String>, Error> {
    let ns = lrc.namespace().ok_or(Error::NoNamespace)?;
    let name = cluster_name(lrc);
    let playbook = match load_playbook(lrc, ctx, &ns).await {
        Ok(p) => p,
        Err(why) => return Ok(Err(why)),
    };
    let key = format!("{ns}/{name}");
    let cm_name = format!("{name}-playbook-memory");
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    // Take the state out of the lock for the awaits below.
    let mut state = ctx
        .playbooks
        .inner
        .lock()
        .map(|mut m| m.remove(&key).unwrap_or_default())
        .unwrap_or_default();
    if state.memory.is_none() {
        let loaded = cm_api
            .get_opt(&cm_name)
            .await?
            .and_then(|cm| cm.data?.get("memory.json").cloned());
        state.memory = Some(match &loaded {
            Some(text) => serde_json::from_str(text).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "playbook memory unreadable; starting afresh");
                EngineMemory::new()
            }),
            None => EngineMemory::new(),
        });
        state.saved = loaded.unwrap_or_default();
        // Actions an earlier operator started and never closed are closed as
        // failed: repeating them blindly could double their effect.
        if let Some(m) = state.memory.as_mut() {
            let open: Vec<_> = m.open_actions().iter().map(|d| d.id).collect();
            for id in open {
                let _ = m.record_outcome(
                    id,
                    ActionOutcome::Failed {
                        at_ms: now_ms(),
                        error: "the operator restarted before the outcome was known".into(),
                    },
                );
            }
        }
    }
    let now = now_ms();
    state.history.push_back(snapshot(lrc, views, now));
    let keep = playbook.history_needed_ms().max(60_000);
    while state.history.front().is_some_and(|s| s.at_ms + keep < now) {
        state.history.pop_front();
    }
    let mut memory = state.memory.take().unwrap_or_default();
    let history: Vec<HealthSnapshot> = state.history.iter().cloned().collect();
    tracing::debug!(cluster = %name, snapshots = history.len(), "playbook engine");
    let decisions = Engine::decide(&playbook, &history, now, &mut memory);
    tracing::debug!(cluster = %name, decisions = decisions.len(), "playbook engine decided");
    for d in &decisions {
        let disposition = match &d.disposition {
            Disposition::Execute => "execute",
            Disposition::DryRun => "dry_run",
            Disposition::AwaitingApproval { .. } => "awaiting_approval",
            Disposition::Suppressed { .. } => "suppressed",
        };
        ctx.metrics
            .playbook_decisions
            .with_label_values(&[d.action.name(), disposition])
            .inc();
        let warning = matches!(d.action, ActionKind::PageHuman) || d.level.unwrap_or(0) >= 2;
        ctx.event_for(lrc, warning, "PlaybookDecision", d.to_string())
            .await;
        if d.disposition != Disposition::Execute {
            continue;
        }
        let outcome = execute(lrc, ctx, views, admin, d.action, &d.target).await;
        let outcome = match outcome {
            Ok(detail) => ActionOutcome::Succeeded {
                at_ms: now_ms(),
                detail,
            },
            Err(error) => ActionOutcome::Failed {
                at_ms: now_ms(),
                error,
            },
        };
        let _ = memory.record_outcome(d.id, outcome);
    }
    let tier = tier_name(&memory);
    let text = serde_json::to_string(&memory).unwrap_or_default();
    if text != state.saved {
        let mut cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(cm_name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(resources::labels(&name, None)),
                owner_references: kube::Resource::controller_owner_ref(lrc, &()).map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("memory.json".to_string(), text.clone())])),
            ..ConfigMap::default()
        };
        cm.metadata.annotations = None;
        cm_api
            .patch(
                &cm_name,
                &kube::api::PatchParams::apply(crate::controller::MANAGER).force(),
                &kube::api::Patch::Apply(&cm),
            )
            .await?;
        ctx.metrics.writes.with_label_values(&["ConfigMap"]).inc();
        state.saved = text;
    }
    state.memory = Some(memory);
    if let Ok(mut m) = ctx.playbooks.inner.lock() {
        m.insert(key, state);
    }
    Ok(Ok(tier))
}

/// Carries out one action through Kubernetes and the nodes' admin API.
async fn execute(
    lrc: &LiveRoomCluster,
    ctx: &Context,
    views: &[PodView],
    admin: &NodeAdmin,
    action: ActionKind,
    target: &Target,
) -> Result<String, String> {
    let ns = lrc.namespace().unwrap_or_default();
    match (action, target) {
        (ActionKind::RecordEvent, _) => Ok("recorded as an event".into()),
        (ActionKind::PageHuman, _) => Ok("paged through a Warning event (route roomkeeper_operator_playbook_decisions_total{action=\"pageHuman\"} to your pager)".into()),
        (ActionKind::RestartNode, Target::Node(id)) => {
            let pod = views
                .iter()
                .find(|v| v.id == Some(*id))
                .map(|v| v.pod.clone())
                .ok_or_else(|| format!("no pod runs node {id}"))?;
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            pods.delete(&pod, &DeleteParams::default())
                .await
                .map_err(|e| format!("deleting pod {pod}: {e}"))?;
            Ok(format!("deleted pod {pod}; its StatefulSet recreates it"))
        }
        (ActionKind::TransferLeadershipAway, target) => {
            let (leader_pod, ls) = plan::leader(views).ok_or("no leader to move")?;
            let inside = |v: &PodView| match target {
                Target::Node(id) => v.id == Some(*id),
                Target::Region(r) => &v.region == r,
                Target::Shard => false,
            };
            if !inside(leader_pod) {
                return Ok("the leader is already outside the target".into());
            }
            let to = views
                .iter()
                .filter(|v| !inside(v))
                .filter_map(|v| v.id)
                .filter(|id| ls.voters.contains(id))
                .filter(|id| {
                    ls.replication
                        .get(&id.to_string())
                        .and_then(|r| r.millis_since_ack)
                        .is_some_and(|ms| ms <= LIVE_ACK_MS)
                })
                .min_by_key(|id| ls.replication.get(&id.to_string()).map_or(u64::MAX, |r| r.lag))
                .ok_or("no live voter outside the target")?;
            let ip = leader_pod.ip.clone().ok_or("leader pod has no IP")?;
            admin
                .transfer_leader(&ip, to)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("asked leader {} to hand over to node {to}", ls.node_id))
        }
        (other, t) => Err(format!(
            "{} on {t} is not carried out by the Kubernetes binding of this release; follow the tier's runbook",
            other.name()
        )),
    }
}
