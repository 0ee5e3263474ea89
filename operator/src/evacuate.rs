//! T3 evacuate on Kubernetes: a voter of a lost region is replaced by a new
//! node in a surviving region, one membership change at a time, and every
//! move is recorded in the ConfigMap `<cluster>-voter-moves` (decision
//! "Evacuated voter slots live in a voter-moves ConfigMap" in
//! docs/decisions.md):
//!
//! - the planner works on [`effective`] — the spec with every recorded move
//!   applied — so the StatefulSets, the identity map and the membership
//!   planner all want the moved slot where it went, and nothing undoes it;
//! - each step of a move (recorded → scaled → learner added → promoted → old
//!   voter removed) is written to the record when done, and checked against
//!   the membership before it is taken, so an operator restarted between
//!   steps resumes the move and never takes a step twice (the membership
//!   planner, working on the same effective spec, may finish it first; the
//!   next check then finds the step done and records it as found).
//!
//! A region that comes back does not get its voters back by itself: its
//! StatefulSet shrank as its voters left (its volumes went with the pods),
//! and the tier's exit (T3 stands down with an event) leaves it drained. A
//! person gives the voters back by deleting the region's moves from the
//! ConfigMap; the planner then moves each slot home one membership change at
//! a time (learner, promotion, removal of the surplus voter).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use roomkeeper_api::NodeStatus;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::controller::{Context, MANAGER};
use crate::crd::LiveRoomCluster;
use crate::nodes::{node_info, NodeAdmin};
use crate::plan::{LIVE_ACK_MS, PROMOTE_MAX_LAG};
use crate::resources::{self, cluster_name, Identities, Names};

/// The key of the record in the ConfigMap.
pub const MOVES_KEY: &str = "moves.json";

/// How long a move waits for its new pod to answer as its node id.
const POD_WAIT: Duration = Duration::from_secs(90);
/// How long a move waits for its learner to catch up before promoting it.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(300);

/// The ConfigMap holding a cluster's voter moves.
pub fn configmap_name(cluster: &str) -> String {
    format!("{cluster}-voter-moves")
}

/// One step of a move, in the order they are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MoveStep {
    /// The move is recorded: from now on the planner wants the slot in `into`.
    Recorded,
    /// The target region's StatefulSet has the new slot's replica.
    Scaled,
    /// The new node is a learner.
    LearnerAdded,
    /// The new node votes.
    Promoted,
    /// The old voter left the group: the move is done.
    OldRemoved,
}

/// A step taken, and how: `done` by this move, or `found` done already
/// (by the membership planner, or by a call whose record was lost to a
/// restart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub step: MoveStep,
    pub at_ms: u64,
    pub how: String,
}

/// One voter slot moved out of a region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoterMove {
    /// The region the voter leaves.
    pub from: String,
    /// The region that takes the voter slot.
    pub into: String,
    /// The pod of the slot that takes the vote.
    pub pod: String,
    /// Its node id, once the identity map gave it one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_id: Option<u64>,
    /// Why (the decision's words).
    #[serde(default)]
    pub reason: String,
    /// Steps taken, each once, in order.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
}

impl VoterMove {
    pub fn has(&self, step: MoveStep) -> bool {
        self.steps.iter().any(|s| s.step == step)
    }

    pub fn done(&self) -> bool {
        self.has(MoveStep::OldRemoved)
    }

    /// Records `step` unless it is recorded already; whether it was new.
    fn mark(&mut self, step: MoveStep, how: &str, at_ms: u64) -> bool {
        if self.has(step) {
            return false;
        }
        self.steps.push(StepRecord {
            step,
            at_ms,
            how: how.to_string(),
        });
        true
    }
}

/// Every voter move of a cluster, by the node id of the voter that left.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterMoves {
    pub moves: BTreeMap<u64, VoterMove>,
}

/// Why the voter-moves record cannot be read. The reconcile stops on it:
/// guessing would hand a slot back to a dead region or move it twice.
#[derive(Debug, thiserror::Error)]
pub enum MovesError {
    #[error("ConfigMap {name} key {MOVES_KEY}: {source}")]
    Unreadable {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("reading ConfigMap {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl VoterMoves {
    pub fn parse(name: &str, cm: Option<&ConfigMap>) -> Result<VoterMoves, MovesError> {
        let Some(text) = cm.and_then(|c| c.data.as_ref()?.get(MOVES_KEY)) else {
            return Ok(VoterMoves::default());
        };
        if text.trim().is_empty() {
            return Ok(VoterMoves::default());
        }
        serde_json::from_str(text).map_err(|source| MovesError::Unreadable {
            name: name.to_string(),
            source,
        })
    }

    /// Reads the cluster's record (empty when there is none).
    pub async fn load(ctx: &Context, lrc: &LiveRoomCluster) -> Result<VoterMoves, MovesError> {
        let ns = lrc.namespace().unwrap_or_default();
        let name = configmap_name(&cluster_name(lrc));
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        let cm = api
            .get_opt(&name)
            .await
            .map_err(|source| MovesError::Kube {
                name: name.clone(),
                source,
            })?;
        VoterMoves::parse(&name, cm.as_ref())
    }

    /// The record as its ConfigMap. Like the identity map it has no owner:
    /// it says where the membership kept on the volumes lives, and a cluster
    /// created again on retained volumes needs it (D18).
    pub fn configmap(&self, lrc: &LiveRoomCluster) -> ConfigMap {
        let cluster = cluster_name(lrc);
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(configmap_name(&cluster)),
                namespace: lrc.metadata.namespace.clone(),
                labels: Some(resources::labels(&cluster, None)),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                MOVES_KEY.to_string(),
                serde_json::to_string_pretty(self).unwrap_or_default(),
            )])),
            ..ConfigMap::default()
        }
    }

    async fn save(&self, ctx: &Context, lrc: &LiveRoomCluster) -> Result<(), String> {
        let ns = lrc.namespace().unwrap_or_default();
        let cm = self.configmap(lrc);
        let name = cm.metadata.name.clone().unwrap_or_default();
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(|e| format!("writing ConfigMap {name}: {e}"))?;
        ctx.metrics.writes.with_label_values(&["ConfigMap"]).inc();
        Ok(())
    }
}

/// The spec with every recorded move applied: each move takes one voter
/// from `from` and gives one to `into`. A move whose regions left the spec,
/// or whose `from` has no voter left to give (the spec changed since), is
/// not applied; those are returned so the caller can say so.
pub fn effective(lrc: &LiveRoomCluster, moves: &VoterMoves) -> (LiveRoomCluster, Vec<u64>) {
    let mut out = lrc.clone();
    let mut skipped = Vec::new();
    for (old, m) in &moves.moves {
        let from = out.spec.regions.iter().position(|r| r.name == m.from);
        let into = out.spec.regions.iter().position(|r| r.name == m.into);
        match (from, into) {
            (Some(f), Some(i)) if f != i && out.spec.regions[f].voters > 0 => {
                out.spec.regions[f].voters -= 1;
                out.spec.regions[i].voters += 1;
            }
            _ => skipped.push(*old),
        }
    }
    (out, skipped)
}

/// The pod of the slot that takes the vote when one more voter goes into
/// `into`: the voter slot of that region the move adds.
pub fn new_voter_slot(lrc: &LiveRoomCluster, moves: &VoterMoves, into: &str) -> Option<String> {
    let (before, _) = effective(lrc, moves);
    let voters_before: Vec<String> = resources::slots(&before)
        .into_iter()
        .filter(|s| s.voter && s.region == into)
        .map(|s| s.pod)
        .collect();
    let region = before.spec.regions.iter().position(|r| r.name == into)?;
    let mut after = before.clone();
    after.spec.regions[region].voters += 1;
    resources::slots(&after)
        .into_iter()
        .find(|s| s.voter && s.region == into && !voters_before.contains(&s.pod))
        .map(|s| s.pod)
}

/// Marks the steps the membership shows done for every unfinished move
/// (`how` = found), and the new node's id when the identity map gave its
/// slot one after the move was recorded (the operator stopped in between);
/// whether anything changed. Pure.
pub fn settle(
    moves: &mut VoterMoves,
    leader: &NodeStatus,
    id_of: &dyn Fn(&str) -> Option<u64>,
    at_ms: u64,
) -> bool {
    let mut changed = false;
    for (old, m) in moves.moves.iter_mut().filter(|(_, m)| !m.done()) {
        if m.new_id.is_none() {
            m.new_id = id_of(&m.pod);
            changed |= m.new_id.is_some();
        }
        let Some(new) = m.new_id else { continue };
        let voter = leader.voters.contains(&new);
        let member = voter || leader.learners.contains(&new);
        if member {
            changed |= m.mark(MoveStep::Scaled, "found", at_ms);
            changed |= m.mark(MoveStep::LearnerAdded, "found", at_ms);
        }
        if voter {
            changed |= m.mark(MoveStep::Promoted, "found", at_ms);
            let old_member = leader.voters.contains(old) || leader.learners.contains(old);
            if !old_member {
                changed |= m.mark(MoveStep::OldRemoved, "found", at_ms);
            }
        }
    }
    changed
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the evacuation needs of the operator: the cluster, its namespace
/// and the nodes' admin API.
pub struct Evacuation<'a> {
    pub ctx: &'a Context,
    /// The cluster as its spec says (not the effective one).
    pub lrc: &'a LiveRoomCluster,
    pub ns: &'a str,
    pub admin: &'a NodeAdmin,
    /// The Kubernetes cluster of each region (crate::regions).
    pub apis: &'a crate::regions::RegionApis,
    /// Pods whose node answered at the start of this reconcile: the only
    /// ones asked for the leader's view (a lost region's pods would hold
    /// every probe for the admin timeout).
    pub answering: Vec<String>,
}

/// Every pod of the cluster with its IP and, when it answered, its status.
struct Fresh {
    pods: Vec<(String, Option<String>, Option<NodeStatus>)>,
}

impl Fresh {
    fn leader(&self) -> Option<(&str, &NodeStatus)> {
        let s = roomkeeper_api::leader_of(self.pods.iter().filter_map(|(_, _, s)| s.as_ref()))?;
        let ip = self
            .pods
            .iter()
            .find(|(_, _, st)| st.as_ref().is_some_and(|x| x.node_id == s.node_id))
            .and_then(|(_, ip, _)| ip.as_deref())?;
        Some((ip, s))
    }

    fn pod(&self, name: &str) -> Option<&(String, Option<String>, Option<NodeStatus>)> {
        self.pods.iter().find(|(p, _, _)| p == name)
    }
}

impl Evacuation<'_> {
    /// The answering pods' statuses now, and `also`'s.
    async fn fresh(&self, also: Option<&str>) -> Result<Fresh, String> {
        let name = cluster_name(self.lrc);
        let pods = crate::controller::list_pods(self.apis, self.lrc, self.ns)
            .await
            .map_err(|e| format!("listing pods: {e}"))?;
        self.ctx
            .nodes
            .learn(&self.ctx.client, self.ns, &name, &pods)
            .await
            .map_err(|e| format!("reaching the pods: {e}"))?;
        let asked = |p: &Pod| {
            let n = p.name_any();
            self.answering.contains(&n) || also == Some(n.as_str())
        };
        let probes = pods.iter().filter(|p| asked(p)).map(|p| {
            let pod = p.name_any();
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
            let admin = self.admin.clone();
            async move {
                let status = match &ip {
                    Some(ip) => admin.status(ip).await.ok(),
                    None => None,
                };
                (pod, ip, status)
            }
        });
        Ok(Fresh {
            pods: futures::future::join_all(probes).await,
        })
    }

    async fn event(&self, note: String) {
        tracing::info!(cluster = %cluster_name(self.lrc), "{note}");
        self.ctx.event_for(self.lrc, true, "VoterMove", note).await;
    }

    /// Replaces voter `old` by a node in `into`, one membership change at a
    /// time, resuming a recorded move of `old` where it stopped. Returns the
    /// new node's id.
    pub async fn replace_voter(
        &self,
        old: u64,
        into: &str,
        old_region: &str,
    ) -> Result<u64, String> {
        let cluster = cluster_name(self.lrc);
        let mut moves = VoterMoves::load(self.ctx, self.lrc)
            .await
            .map_err(|e| e.to_string())?;
        // 1. Record the move (once): from now on the planner wants the slot there.
        let m = match moves.moves.get(&old) {
            Some(m) => {
                if m.into != into {
                    tracing::info!(cluster = %cluster, old, recorded = %m.into, asked = %into, "resuming the recorded move, not the new target");
                }
                m.clone()
            }
            None => {
                let pod = new_voter_slot(self.lrc, &moves, into)
                    .ok_or_else(|| format!("region {into} is not in the spec"))?;
                let mut m = VoterMove {
                    from: old_region.to_string(),
                    into: into.to_string(),
                    pod,
                    new_id: None,
                    reason: format!("T3 evacuate: region {old_region} lost"),
                    steps: Vec::new(),
                };
                m.mark(MoveStep::Recorded, "done", now_ms());
                moves.moves.insert(old, m.clone());
                moves.save(self.ctx, self.lrc).await?;
                self.event(format!(
                    "voter {old} of lost region {old_region} moves to {into}: slot {} is recorded in ConfigMap {}",
                    m.pod,
                    configmap_name(&cluster)
                ))
                .await;
                m
            }
        };
        let into = m.into.clone();
        let (eff, _) = effective(self.lrc, &moves);

        // 2. The new slot's node id (before its pod starts: it reads it at
        //    start), then the region's StatefulSet grows by that replica.
        let new_id = self.assign_id(&eff, &m.pod).await?;
        if m.new_id != Some(new_id) {
            if let Some(rec) = moves.moves.get_mut(&old) {
                rec.new_id = Some(new_id);
            }
            moves.save(self.ctx, self.lrc).await?;
        }
        if !m.has(MoveStep::Scaled) {
            match self.scale(&eff, &into).await? {
                Some(words) => {
                    self.step(&mut moves, old, MoveStep::Scaled, "done").await?;
                    self.event(format!("voter {old} → {into}: {words}")).await;
                }
                None => {
                    self.step(&mut moves, old, MoveStep::Scaled, "found")
                        .await?
                }
            }
        }

        // 3. Wait for the new node, then add it as a learner (unless it is one).
        let node = self.wait_node(&m.pod, new_id).await?;
        let fresh = self.fresh(None).await?;
        let (leader_ip, leader) = fresh
            .leader()
            .map(|(ip, s)| (ip.to_string(), s.clone()))
            .ok_or("no leader to change the membership")?;
        let member = |s: &NodeStatus, id: u64| s.voters.contains(&id) || s.learners.contains(&id);
        if member(&leader, new_id) {
            self.step(&mut moves, old, MoveStep::LearnerAdded, "found")
                .await?;
        } else {
            self.mark_joined(new_id).await?;
            self.admin
                .add_learner(&leader_ip, new_id, &node)
                .await
                .map_err(|e| e.to_string())?;
            self.step(&mut moves, old, MoveStep::LearnerAdded, "done")
                .await?;
            self.event(format!(
                "voter {old} → {into}: node {new_id} ({}) added as a learner",
                m.pod
            ))
            .await;
        }

        // 4. Promote it once it caught up.
        let (leader_ip, leader) = self.caught_up(new_id).await?;
        if leader.voters.contains(&new_id) {
            self.step(&mut moves, old, MoveStep::Promoted, "found")
                .await?;
        } else {
            self.admin
                .promote(&leader_ip, new_id)
                .await
                .map_err(|e| e.to_string())?;
            self.step(&mut moves, old, MoveStep::Promoted, "done")
                .await?;
            self.event(format!(
                "voter {old} → {into}: node {new_id} ({}) promoted to voter",
                m.pod
            ))
            .await;
        }

        // 5. Remove the old voter.
        let fresh = self.fresh(None).await?;
        let (leader_ip, leader) = fresh
            .leader()
            .map(|(ip, s)| (ip.to_string(), s.clone()))
            .ok_or("no leader to change the membership")?;
        if leader.node_id == old {
            return Err(format!(
                "voter {old} leads: leadership must move before it is removed"
            ));
        }
        if member(&leader, old) {
            self.admin
                .remove(&leader_ip, old)
                .await
                .map_err(|e| e.to_string())?;
            self.step(&mut moves, old, MoveStep::OldRemoved, "done")
                .await?;
            self.retire(old).await?;
            self.event(format!(
                "voter {old} of {} removed: node {new_id} ({}) votes in its place",
                m.from, m.pod
            ))
            .await;
        } else {
            self.step(&mut moves, old, MoveStep::OldRemoved, "found")
                .await?;
            self.retire(old).await?;
        }
        Ok(new_id)
    }

    async fn step(
        &self,
        moves: &mut VoterMoves,
        old: u64,
        step: MoveStep,
        how: &str,
    ) -> Result<(), String> {
        let changed = moves
            .moves
            .get_mut(&old)
            .is_some_and(|m| m.mark(step, how, now_ms()));
        if changed {
            moves.save(self.ctx, self.lrc).await?;
        }
        Ok(())
    }

    async fn identities(&self) -> Result<Identities, String> {
        let cluster = cluster_name(self.lrc);
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let name = Names { cluster: &cluster }.identities();
        let cm = api
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading ConfigMap {name}: {e}"))?;
        Identities::parse(cm.as_ref()).map_err(|e| e.to_string())
    }

    async fn write_identities(&self, ids: &Identities) -> Result<(), String> {
        // In the operator's cluster, and where other regions' pods mount it.
        crate::controller::write_identities(self.ctx, self.apis, self.lrc, self.ns, ids)
            .await
            .map_err(|e| format!("writing the node-id map: {e}"))?;
        // A new id's Raft certificate is in its region's Secret before the
        // StatefulSet grows to start its pod.
        let ca = crate::raft_certs::read_ca(self.ctx, self.lrc, self.ns)
            .await
            .map_err(|e| format!("reading the Raft CA: {e}"))?;
        crate::raft_certs::ensure_node_certs(self.ctx, self.apis, self.lrc, self.ns, &ca, ids)
            .await
            .map_err(|e| format!("issuing Raft certificates: {e}"))?;
        Ok(())
    }

    /// The id of the slot's pod, assigned now if it has none.
    async fn assign_id(&self, eff: &LiveRoomCluster, pod: &str) -> Result<u64, String> {
        let mut ids = self.identities().await?;
        if let Some(id) = ids.id_of(pod) {
            return Ok(id);
        }
        let fresh = self.fresh(None).await?;
        let floor = fresh
            .pods
            .iter()
            .filter_map(|(_, _, s)| s.as_ref())
            .flat_map(|s| {
                s.voters
                    .iter()
                    .chain(&s.learners)
                    .copied()
                    .chain([s.node_id])
            })
            .max()
            .map_or(1, |m| m + 1);
        ids.assign(&resources::slots(eff), floor);
        self.write_identities(&ids).await?;
        ids.id_of(pod)
            .ok_or_else(|| format!("no node id for {pod} after assigning"))
    }

    /// Recorded as joined before it can vote (D11), as the planner does.
    async fn mark_joined(&self, id: u64) -> Result<(), String> {
        let mut ids = self.identities().await?;
        if ids.mark_joined([id]) {
            self.write_identities(&ids).await?;
        }
        Ok(())
    }

    /// The old voter's pod gives up its id: if the region comes back, its
    /// pod joins under a fresh one (never as the removed member).
    async fn retire(&self, old: u64) -> Result<(), String> {
        let mut ids = self.identities().await?;
        let Some(pod) = ids.pod_of(old).map(str::to_string) else {
            return Ok(());
        };
        let (eff, _) = effective(
            self.lrc,
            &VoterMoves::load(self.ctx, self.lrc)
                .await
                .map_err(|e| e.to_string())?,
        );
        if resources::slots(&eff).iter().any(|s| s.pod == pod) {
            return Ok(());
        }
        if ids.retire(&pod) {
            self.write_identities(&ids).await?;
        }
        Ok(())
    }

    /// Grows the region's StatefulSet to the effective replica count (never
    /// shrinks it here: the controller shrinks behind departed members).
    /// What it did, or `None` when the StatefulSet had the replica already.
    async fn scale(&self, eff: &LiveRoomCluster, region: &str) -> Result<Option<String>, String> {
        let r = eff
            .spec
            .regions
            .iter()
            .find(|r| r.name == region)
            .ok_or_else(|| format!("region {region} is not in the spec"))?;
        let cluster = cluster_name(self.lrc);
        let sts_name = Names { cluster: &cluster }.statefulset(region);
        let api: Api<StatefulSet> = Api::namespaced(self.apis.of(region).clone(), self.ns);
        let want = r.voters + r.learners;
        let have = api
            .get_opt(&sts_name)
            .await
            .map_err(|e| format!("reading StatefulSet {sts_name}: {e}"))?
            .and_then(|s| s.spec.replicas)
            .unwrap_or(0);
        if have >= want {
            return Ok(None);
        }
        api.patch(
            &sts_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": want}})),
        )
        .await
        .map_err(|e| format!("scaling StatefulSet {sts_name}: {e}"))?;
        Ok(Some(format!(
            "StatefulSet {sts_name} scaled {have} → {want}"
        )))
    }

    /// Waits until the slot's pod answers as node `id`; its addresses.
    async fn wait_node(&self, pod: &str, id: u64) -> Result<roomkeeper_api::NodeInfo, String> {
        let started = std::time::Instant::now();
        let region_zone = self.region_zone(pod).await?;
        loop {
            let fresh = self.fresh(Some(pod)).await?;
            if let Some((_, Some(ip), Some(s))) = fresh.pod(pod) {
                if s.node_id == id {
                    return Ok(node_info(ip, &region_zone.0, &region_zone.1));
                }
            }
            if started.elapsed() > POD_WAIT {
                return Err(format!(
                    "pod {pod} did not answer as node {id} within {POD_WAIT:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The region and zone the identity map gives the pod.
    async fn region_zone(&self, pod: &str) -> Result<(String, String), String> {
        let ids = self.identities().await?;
        let region = self
            .lrc
            .spec
            .regions
            .iter()
            .map(|r| r.name.clone())
            .find(|r| {
                pod.strip_prefix(&format!("{}-{r}-", cluster_name(self.lrc)))
                    .is_some_and(|o| o.parse::<u32>().is_ok())
            })
            .ok_or_else(|| format!("pod {pod} is in no region of the spec"))?;
        let zone = ids
            .by_pod
            .get(pod)
            .and_then(|(_, z)| z.clone())
            .unwrap_or_else(|| region.clone());
        Ok((region, zone))
    }

    /// Waits until the leader sees `id` live and within [`PROMOTE_MAX_LAG`]
    /// (or already voting); the leader's IP and status.
    async fn caught_up(&self, id: u64) -> Result<(String, NodeStatus), String> {
        let started = std::time::Instant::now();
        loop {
            let fresh = self.fresh(None).await?;
            if let Some((ip, s)) = fresh.leader() {
                let ready = s.voters.contains(&id)
                    || s.progress_of(id).is_some_and(|p| {
                        p.lag <= PROMOTE_MAX_LAG
                            && p.millis_since_ack.is_some_and(|ms| ms <= LIVE_ACK_MS)
                    });
                if ready {
                    return Ok((ip.to_string(), s.clone()));
                }
            }
            if started.elapsed() > CATCH_UP_WAIT {
                return Err(format!(
                    "learner {id} did not catch up within {CATCH_UP_WAIT:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Brings the record up to date with the membership (steps the planner
/// took count as found); called by the controller each reconcile.
pub async fn settle_recorded(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    moves: &mut VoterMoves,
    leader: Option<&NodeStatus>,
    ids: &Identities,
) {
    let Some(leader) = leader else { return };
    if settle(moves, leader, &|pod| ids.id_of(pod), now_ms()) {
        if let Err(e) = moves.save(ctx, lrc).await {
            tracing::warn!(cluster = %cluster_name(lrc), error = %e, "could not record settled voter moves");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LiveRoomClusterSpec, RegionSpec};

    fn cluster(regions: &[(&str, i32, i32)]) -> LiveRoomCluster {
        let mut spec: LiveRoomClusterSpec = serde_json::from_value(json!({
            "image": "roomkeeper:test",
            "regions": []
        }))
        .expect("spec");
        spec.regions = regions
            .iter()
            .map(|(name, voters, learners)| {
                let mut r: RegionSpec =
                    serde_json::from_value(json!({"name": name, "voters": voters}))
                        .expect("region");
                r.learners = *learners;
                r
            })
            .collect();
        let mut lrc = LiveRoomCluster::new("shop", spec);
        lrc.metadata.namespace = Some("ns".into());
        lrc
    }

    fn moved(from: &str, into: &str, pod: &str) -> VoterMove {
        VoterMove {
            from: from.into(),
            into: into.into(),
            pod: pod.into(),
            new_id: None,
            reason: String::new(),
            steps: Vec::new(),
        }
    }

    fn voters(lrc: &LiveRoomCluster) -> Vec<(String, i32)> {
        lrc.spec
            .regions
            .iter()
            .map(|r| (r.name.clone(), r.voters))
            .collect()
    }

    #[test]
    fn moves_shift_voter_slots_and_keep_the_total() {
        let lrc = cluster(&[("us", 2, 0), ("eu", 2, 0), ("ap", 1, 0)]);
        let mut moves = VoterMoves::default();
        assert_eq!(
            new_voter_slot(&lrc, &moves, "eu").as_deref(),
            Some("shop-eu-2")
        );
        moves.moves.insert(5, moved("ap", "eu", "shop-eu-2"));
        let (eff, skipped) = effective(&lrc, &moves);
        assert!(skipped.is_empty());
        assert_eq!(
            voters(&eff),
            vec![("us".into(), 2), ("eu".into(), 3), ("ap".into(), 0)]
        );
        // The next move into eu takes the next ordinal, never the same slot.
        assert_eq!(
            new_voter_slot(&lrc, &moves, "eu").as_deref(),
            Some("shop-eu-3")
        );
        // The spec itself is untouched.
        assert_eq!(voters(&lrc)[2], ("ap".into(), 1));
    }

    #[test]
    fn a_learner_slot_of_the_target_region_becomes_the_voter() {
        let lrc = cluster(&[("us", 1, 1), ("eu", 1, 0), ("ap", 1, 0)]);
        assert_eq!(
            new_voter_slot(&lrc, &VoterMoves::default(), "us").as_deref(),
            Some("shop-us-1"),
            "the caught-up learner's slot votes; a new learner slot follows"
        );
        assert_eq!(new_voter_slot(&lrc, &VoterMoves::default(), "mars"), None);
    }

    #[test]
    fn moves_that_no_longer_fit_the_spec_are_skipped_not_applied() {
        let lrc = cluster(&[("us", 2, 0), ("eu", 2, 0), ("ap", 0, 0)]);
        let mut moves = VoterMoves::default();
        moves.moves.insert(5, moved("ap", "eu", "shop-eu-2"));
        moves.moves.insert(6, moved("gone", "eu", "shop-eu-3"));
        let (eff, skipped) = effective(&lrc, &moves);
        assert_eq!(skipped, vec![5, 6]);
        assert_eq!(voters(&eff), voters(&lrc));
    }

    #[test]
    fn the_record_round_trips_and_garbage_is_an_error() {
        let lrc = cluster(&[("us", 1, 0), ("eu", 1, 0), ("ap", 1, 0)]);
        let mut moves = VoterMoves::default();
        let mut m = moved("ap", "eu", "shop-eu-1");
        m.new_id = Some(9);
        assert!(m.mark(MoveStep::Recorded, "done", 1));
        assert!(
            !m.mark(MoveStep::Recorded, "done", 2),
            "a step is recorded once"
        );
        moves.moves.insert(3, m);
        let cm = moves.configmap(&lrc);
        assert_eq!(cm.metadata.name.as_deref(), Some("shop-voter-moves"));
        assert!(cm.metadata.owner_references.is_none());
        let back = VoterMoves::parse("x", Some(&cm)).expect("parses");
        assert_eq!(back, moves);
        assert_eq!(
            VoterMoves::parse("x", None).expect("empty"),
            VoterMoves::default()
        );
        let mut bad = cm.clone();
        bad.data = Some(BTreeMap::from([(MOVES_KEY.into(), "{nope".into())]));
        assert!(VoterMoves::parse("x", Some(&bad)).is_err());
    }

    #[test]
    fn settling_records_what_the_membership_shows_and_nothing_more() {
        let mut moves = VoterMoves::default();
        let mut m = moved("ap", "eu", "shop-eu-2");
        m.new_id = Some(9);
        m.mark(MoveStep::Recorded, "done", 1);
        moves.moves.insert(5, m);
        let mut leader = NodeStatus {
            node_id: 1,
            voters: vec![1, 2, 3, 4, 5],
            learners: vec![],
            ..NodeStatus::default()
        };
        let no_ids = |_: &str| None;
        assert!(!settle(&mut moves, &leader, &no_ids, 2), "nothing done yet");
        leader.learners = vec![9];
        assert!(settle(&mut moves, &leader, &no_ids, 3));
        let steps: Vec<MoveStep> = moves.moves[&5].steps.iter().map(|s| s.step).collect();
        assert_eq!(
            steps,
            vec![MoveStep::Recorded, MoveStep::Scaled, MoveStep::LearnerAdded]
        );
        leader.learners.clear();
        leader.voters = vec![1, 2, 3, 4, 5, 9];
        assert!(settle(&mut moves, &leader, &no_ids, 4));
        assert!(!moves.moves[&5].done(), "5 still votes");
        leader.voters = vec![1, 2, 3, 4, 9];
        assert!(settle(&mut moves, &leader, &no_ids, 5));
        assert!(moves.moves[&5].done());
        assert!(
            !settle(&mut moves, &leader, &no_ids, 6),
            "a done move is left alone"
        );
        assert!(moves.moves[&5]
            .steps
            .iter()
            .skip(1)
            .all(|s| s.how == "found"));
    }

    #[test]
    fn a_move_recorded_before_its_id_was_given_learns_it_from_the_identity_map() {
        let mut moves = VoterMoves::default();
        let mut m = moved("ap", "eu", "shop-eu-2");
        m.mark(MoveStep::Recorded, "done", 1);
        moves.moves.insert(5, m);
        let leader = NodeStatus {
            node_id: 1,
            voters: vec![1, 2, 3, 4, 9],
            ..NodeStatus::default()
        };
        let ids = |pod: &str| (pod == "shop-eu-2").then_some(9);
        assert!(settle(&mut moves, &leader, &ids, 2));
        assert_eq!(moves.moves[&5].new_id, Some(9));
        assert!(moves.moves[&5].done(), "9 votes and 5 left: done");
    }
}
