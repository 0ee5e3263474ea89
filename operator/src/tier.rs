//! The operator's binding of the one control loop ([`roomkeeper_control`]):
//! pods and their nodes' admin status are observed, the shared snapshot
//! builder and engine decide, and decisions are carried out through
//! Kubernetes and the nodes' admin API. The engine memory lives in a
//! ConfigMap (so a restarted operator neither repeats nor forgets an action);
//! every decision is published as an Event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use roomkeeper_api::{NodeId, SalesGate};
use roomkeeper_control::actuate::sales_gate_summary;
use roomkeeper_control::observation::{ClusterObservation, NodeObservation};
use roomkeeper_control::{
    ActError, Actuate, ControlError, ControlLoop, Journal, MemoryStore, StoreError,
};
use roomkeeper_playbook::{
    default_playbook, ActionOutcome, ActivationPhase, Decision, Disposition, EngineMemory, Playbook,
};

use crate::controller::{Context, Error};
use crate::crd::{FailoverPlaybook, LiveRoomCluster, LiveRoomClusterStatus};
use crate::nodes::NodeAdmin;
use crate::plan::PodView;
use crate::resources::{self, cluster_name};
use crate::traffic::{HttpRouteRouter, TrafficRouter, FULL_WEIGHT};

/// The control loop of every cluster this replica reconciles.
#[derive(Default)]
pub struct PlaybookStates {
    inner: Mutex<HashMap<String, ControlLoop>>,
    /// The traffic weights last read from each cluster's router, for status.
    weights: Mutex<HashMap<String, BTreeMap<String, u32>>>,
}

/// Shows the weights the router last reported in `status.regions[].trafficWeight`.
pub fn show_weights(ctx: &Context, lrc: &LiveRoomCluster, status: &mut LiveRoomClusterStatus) {
    let key = format!(
        "{}/{}",
        lrc.namespace().unwrap_or_default(),
        cluster_name(lrc)
    );
    let Ok(all) = ctx.playbooks.weights.lock() else {
        return;
    };
    let weights = all.get(&key);
    for r in &mut status.regions {
        r.traffic_weight = weights
            .and_then(|w| w.get(&r.name))
            .map(|w| i32::try_from(*w).unwrap_or(i32::MAX));
    }
}

/// What the operator sees of the cluster: one observation per node id the
/// identity map gives a pod. The operator cannot see processes, so
/// `process_alive` is unknown; the status call is its probe.
pub fn observation(views: &[PodView], at_ms: u64) -> ClusterObservation {
    let nodes = views
        .iter()
        .filter_map(|v| {
            Some(NodeObservation {
                node_id: v.id?,
                region: v.region.clone(),
                zone: v.zone.clone(),
                process_alive: None,
                healthz_ok: v.status.is_some(),
                status: v.status.clone(),
            })
        })
        .collect();
    ClusterObservation::new(at_ms, nodes)
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

/// Why a cluster's playbook cannot run now. Not a reconcile failure: the
/// cluster's status says it (condition PlaybookReady False) and membership
/// work goes on.
#[derive(Debug, thiserror::Error)]
pub enum PlaybookUnavailable {
    #[error("FailoverPlaybook {0:?} not found")]
    NotFound(String),
    #[error("reading FailoverPlaybook {name:?}: {source}")]
    Unreadable {
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The playbook cannot work on this cluster (the engine's reason).
    #[error("{0}")]
    Invalid(String),
}

async fn load_playbook(
    lrc: &LiveRoomCluster,
    ctx: &Context,
    ns: &str,
) -> Result<Playbook, PlaybookUnavailable> {
    let mut playbook = match &lrc.spec.playbook_ref {
        None => default_playbook(),
        Some(r) => {
            let api: Api<FailoverPlaybook> = Api::namespaced(ctx.client.clone(), ns);
            match api.get_opt(&r.name).await {
                Ok(Some(f)) => f.spec.0,
                Ok(None) => return Err(PlaybookUnavailable::NotFound(r.name.clone())),
                Err(e) => {
                    return Err(PlaybookUnavailable::Unreadable {
                        name: r.name.clone(),
                        source: e,
                    })
                }
            }
        }
    };
    playbook.dry_run |= lrc.spec.dry_run;
    playbook.paused |= lrc.spec.paused;
    Ok(playbook)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The engine memory in the ConfigMap `<cluster>-playbook-memory`, owned by
/// the cluster, written with server-side apply.
struct ConfigMapStore<'a> {
    ctx: &'a Context,
    api: Api<ConfigMap>,
    name: String,
    template: ConfigMap,
}

const MEMORY_KEY: &str = "memory.json";

impl MemoryStore for ConfigMapStore<'_> {
    async fn load(&mut self) -> Result<Option<EngineMemory>, StoreError> {
        let cm =
            self.api.get_opt(&self.name).await.map_err(|e| {
                StoreError::Backend(format!("reading ConfigMap {}: {e}", self.name))
            })?;
        let Some(text) = cm.and_then(|cm| cm.data?.get(MEMORY_KEY).cloned()) else {
            return Ok(None);
        };
        match serde_json::from_str(&text) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                // Refusing to start would leave the cluster without a playbook;
                // starting afresh loses only history, and says so.
                tracing::warn!(error = %e, configmap = %self.name, "playbook memory unreadable; starting afresh");
                Ok(None)
            }
        }
    }

    async fn save(&mut self, json: &str) -> Result<(), StoreError> {
        let mut cm = self.template.clone();
        cm.data = Some(BTreeMap::from([(MEMORY_KEY.to_string(), json.to_string())]));
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(crate::controller::MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(|e| StoreError::Backend(format!("writing ConfigMap {}: {e}", self.name)))?;
        self.ctx
            .metrics
            .writes
            .with_label_values(&["ConfigMap"])
            .inc();
        Ok(())
    }
}

/// Decisions as Events on the cluster, and as the decisions metric.
struct EventJournal<'a> {
    lrc: &'a LiveRoomCluster,
    ctx: &'a Context,
}

impl Journal for EventJournal<'_> {
    async fn decided(&mut self, d: &Decision) -> Result<(), StoreError> {
        let disposition = match &d.disposition {
            Disposition::Execute => "execute",
            Disposition::DryRun => "dry_run",
            Disposition::AwaitingApproval { .. } => "awaiting_approval",
            Disposition::Suppressed { .. } => "suppressed",
        };
        self.ctx
            .metrics
            .playbook_decisions
            .with_label_values(&[d.action.name(), disposition])
            .inc();
        if let Disposition::Suppressed { guard, .. } = &d.disposition {
            let ns = self.lrc.namespace().unwrap_or_default();
            self.ctx
                .metrics
                .guard_blocks
                .with_label_values(&[&ns, &cluster_name(self.lrc), guard.name()])
                .inc();
        }
        let (warning, note) = crate::runbooks::decision_event(d);
        self.ctx
            .event_for(self.lrc, warning, "PlaybookDecision", note)
            .await;
        Ok(())
    }

    async fn outcome(&mut self, d: &Decision, outcome: &ActionOutcome) -> Result<(), StoreError> {
        if let ActionOutcome::Failed { error, .. } = outcome {
            self.ctx
                .event_for(
                    self.lrc,
                    true,
                    "PlaybookActionFailed",
                    format!("decision #{} ({}) failed: {error}", d.id, d.action.name()),
                )
                .await;
        }
        Ok(())
    }
}

/// The Kubernetes binding of [`Actuate`].
struct KubeActuator<'a> {
    ctx: &'a Context,
    /// The cluster as its spec says (moves are applied on top, evacuate.rs).
    lrc: &'a LiveRoomCluster,
    ns: String,
    views: &'a [PodView],
    admin: &'a NodeAdmin,
    router: &'a HttpRouteRouter,
    apis: &'a crate::regions::RegionApis,
}

impl Actuate for KubeActuator<'_> {
    fn binding(&self) -> &'static str {
        "Kubernetes"
    }

    async fn restart_node(&mut self, id: NodeId) -> Result<String, ActError> {
        let pod = self
            .views
            .iter()
            .find(|v| v.id == Some(id))
            .map(|v| v.pod.clone())
            .ok_or_else(|| ActError::NoCandidate(format!("no pod runs node {id}")))?;
        let region = self
            .views
            .iter()
            .find(|v| v.pod == pod)
            .map(|v| v.region.as_str())
            .unwrap_or_default();
        // In the pod's region's cluster.
        let pods: Api<Pod> = Api::namespaced(self.apis.of(region).clone(), &self.ns);
        pods.delete(&pod, &DeleteParams::default())
            .await
            .map_err(|e| ActError::Failed(format!("deleting pod {pod}: {e}")))?;
        Ok(format!("deleted pod {pod}; its StatefulSet recreates it"))
    }

    async fn transfer_leadership(&mut self, from: NodeId, to: NodeId) -> Result<String, ActError> {
        let ip = self
            .views
            .iter()
            .find(|v| v.id == Some(from))
            .and_then(|v| v.ip.clone())
            .ok_or_else(|| ActError::NoCandidate(format!("the pod of leader {from} has no IP")))?;
        self.admin
            .transfer_leader(&ip, to)
            .await
            .map_err(|e| ActError::Failed(e.to_string()))?;
        Ok(format!("asked leader {from} to hand over to node {to}"))
    }

    async fn set_traffic_weight(&mut self, region: &str, weight: u32) -> Result<String, ActError> {
        self.router
            .set_weight(region, weight)
            .await
            .map_err(|e| ActError::Failed(e.to_string()))
    }

    /// Adds a learner in `into` (its StatefulSet grows by one), promotes it,
    /// removes `old`: one membership change at a time, each step recorded in
    /// the cluster's voter-moves ConfigMap and resumed after a restart
    /// (evacuate.rs).
    async fn replace_voter(&mut self, old: NodeId, into: &str) -> Result<NodeId, ActError> {
        let region = self
            .views
            .iter()
            .find(|v| v.id == Some(old))
            .map(|v| v.region.clone())
            .ok_or_else(|| ActError::NoCandidate(format!("no pod holds voter {old}")))?;
        crate::evacuate::Evacuation {
            ctx: self.ctx,
            lrc: self.lrc,
            ns: &self.ns,
            admin: self.admin,
            apis: self.apis,
            answering: self
                .views
                .iter()
                .filter(|v| v.status.is_some() && !v.deleting)
                .map(|v| v.pod.clone())
                .collect(),
        }
        .replace_voter(old, into, &region)
        .await
        .map_err(ActError::Failed)
    }

    async fn set_sales_paused(&mut self, paused: bool) -> Result<String, ActError> {
        let gate = SalesGate {
            paused,
            reason: if paused {
                "T4: the operator paused sales".into()
            } else {
                "the operator resumed sales".into()
            },
        };
        let admin = self.admin;
        let calls = self
            .views
            .iter()
            .filter(|v| !v.deleting)
            .filter_map(|v| Some((v.id?, v.ip.clone()?)))
            .map(|(id, ip)| {
                let gate = &gate;
                async move {
                    let reply = admin.sales_gate(&ip, gate).await.map_err(|e| e.to_string());
                    (id, reply)
                }
            });
        let replies = futures::future::join_all(calls).await;
        sales_gate_summary(paused, &replies)
    }
}

/// Runs one tick of the control loop for the cluster; returns the active
/// tier, or why the playbook cannot run.
pub async fn run(
    lrc: &LiveRoomCluster,
    ctx: &Context,
    apis: &crate::regions::RegionApis,
    views: &[PodView],
    admin: &NodeAdmin,
) -> Result<Result<String, PlaybookUnavailable>, Error> {
    let ns = lrc.namespace().ok_or(Error::NoNamespace)?;
    let name = cluster_name(lrc);
    let playbook = match load_playbook(lrc, ctx, &ns).await {
        Ok(p) => p,
        Err(why) => return Ok(Err(why)),
    };
    let regions_total = u32::try_from(lrc.spec.regions.len()).unwrap_or(u32::MAX);
    let key = format!("{ns}/{name}");
    let cm_name = format!("{name}-playbook-memory");
    let mut store = ConfigMapStore {
        ctx,
        api: Api::namespaced(ctx.client.clone(), &ns),
        name: cm_name.clone(),
        template: ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(cm_name),
                namespace: Some(ns.clone()),
                labels: Some(resources::labels(&name, None)),
                owner_references: kube::Resource::controller_owner_ref(lrc, &()).map(|o| vec![o]),
                ..Default::default()
            },
            ..ConfigMap::default()
        },
    };
    // Take the loop out of the lock for the awaits below.
    let existing = ctx
        .playbooks
        .inner
        .lock()
        .map(|mut m| m.remove(&key))
        .unwrap_or_default();
    let opened = match existing {
        Some(mut control) => control
            .set_playbook(playbook, regions_total)
            .map(|()| control),
        None => ControlLoop::open(&mut store, playbook, regions_total).await,
    };
    let mut control = match opened {
        Ok(c) => c,
        Err(ControlError::InvalidPlaybook(why)) => {
            return Ok(Err(PlaybookUnavailable::Invalid(why)))
        }
        Err(e) => return Err(Error::Playbook(e)),
    };
    let router = HttpRouteRouter::new(
        ctx.client.clone(),
        &ns,
        &name,
        lrc.spec.regions.iter().map(|r| r.name.clone()).collect(),
        lrc.spec
            .regions
            .iter()
            .filter(|r| apis.is_remote(&r.name))
            .map(|r| r.name.clone())
            .collect(),
        kube::Resource::controller_owner_ref(lrc, &()),
    );
    // The route lists every region; a new one starts where the engine
    // memory says (0 when drained). Without the Gateway API CRD the cluster
    // runs on, and a weight change fails naming the CRD.
    let drained: Vec<String> = control.memory().drained_regions().keys().cloned().collect();
    let initial = |r: &str| {
        if drained.iter().any(|d| d == r) {
            0
        } else {
            FULL_WEIGHT
        }
    };
    match router.ensure(&initial).await {
        Ok(weights) => {
            if let Ok(mut m) = ctx.playbooks.weights.lock() {
                m.insert(key.clone(), weights);
            }
        }
        Err(e) => {
            tracing::debug!(cluster = %name, router = router.kind(), error = %e, "traffic weights unavailable");
            if let Ok(mut m) = ctx.playbooks.weights.lock() {
                m.remove(&key);
            }
        }
    }
    let obs = observation(views, now_ms());
    let mut actuator = KubeActuator {
        ctx,
        lrc,
        ns: ns.clone(),
        views,
        admin,
        router: &router,
        apis,
    };
    let mut journal = EventJournal { lrc, ctx };
    // People's answers reach the engine before it decides (approval.rs).
    let approvals = crate::approval::list(ctx, &ns, &name)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(cluster = %name, error = %e, "cannot list FailoverApprovals");
            Vec::new()
        });
    let answered =
        crate::approval::take_answers(ctx, lrc, &mut control, &approvals, obs.at_ms, &mut store)
            .await;
    let ticked = control
        .tick(
            &obs,
            &BTreeMap::new(),
            &mut actuator,
            &mut store,
            &mut journal,
        )
        .await;
    // Then people's commands, on the same observation (switchover.rs), and
    // the approval requests the tick left open, as objects.
    let humans = match &ticked {
        Ok(_) => {
            let on_timeout = on_timeout_by_tier(control.playbook());
            let commands = crate::switchover::carry_out_pending(
                ctx,
                lrc,
                &mut control,
                &obs,
                &mut actuator,
                &mut store,
                &mut journal,
            )
            .await;
            let published =
                crate::approval::publish(ctx, lrc, control.memory(), &on_timeout, &approvals)
                    .await
                    .map_err(Error::from);
            commands.and(published)
        }
        Err(_) => Ok(()),
    };
    crate::audit::after_tick(ctx, lrc, (&ns, &name), views, &control, &obs).await;
    let tier = tier_name(control.memory());
    if let Ok(mut m) = ctx.playbooks.inner.lock() {
        m.insert(key, control);
    }
    answered?;
    humans?;
    match ticked {
        Ok(decisions) => {
            tracing::debug!(cluster = %name, decisions = decisions.len(), "playbook engine decided");
            Ok(Ok(tier))
        }
        Err(e) => Err(Error::Playbook(e)),
    }
}

/// Each tier's declared default at an approval's deadline.
fn on_timeout_by_tier(playbook: &Playbook) -> BTreeMap<String, String> {
    playbook
        .tiers
        .iter()
        .filter_map(|t| {
            let a = t.approval.as_ref()?;
            let word = match a.on_timeout {
                roomkeeper_playbook::OnTimeout::Approve => "approve",
                roomkeeper_playbook::OnTimeout::Reject => "reject",
            };
            Some((t.name.clone(), word.to_string()))
        })
        .collect()
}

/// The newest decisions of the cluster's control loop, for its status
/// (history.rs); `None` before the playbook first ran in this operator.
pub fn history(ctx: &Context, lrc: &LiveRoomCluster) -> Option<Vec<crate::history::DecisionEntry>> {
    let key = format!(
        "{}/{}",
        lrc.namespace().unwrap_or_default(),
        cluster_name(lrc)
    );
    ctx.playbooks
        .inner
        .lock()
        .ok()
        .and_then(|m| m.get(&key).map(|c| crate::history::entries(c.memory())))
}
