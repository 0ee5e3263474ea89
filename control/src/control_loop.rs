//! The control loop of the local binding: observation → health snapshot →
//! playbook engine → actuators, with every decision and outcome appended to a
//! decision log and the engine's memory saved after each tick, so a restarted
//! controller carries on where it stopped.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use roomkeeper_playbook::{
    validate_for_regions, ActionKind, ActionOutcome, Decision, Disposition, Engine, EngineMemory,
    HealthSnapshot, NodeHealth, Playbook, Role, ShardHealth, Target,
};
use serde::Serialize;

use crate::load::{EndpointSignal, TrafficMap};
use crate::local_cluster::LocalCluster;
use crate::metrics::ControlMetrics;
use crate::monitor::ClusterObservation;

/// A follower that acknowledged the leader within this is being replicated to.
const REPLICATING_ACK_MS: u64 = 2_000;

/// Errors of the control loop.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the playbook is invalid: {0}")]
    InvalidPlaybook(String),
    #[error("decision record {path}: {source}")]
    Record {
        path: String,
        source: std::io::Error,
    },
    #[error("engine memory {path} is unreadable: {reason}")]
    Memory { path: String, reason: String },
}

/// One line of the decision log.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum LogLine<'a> {
    Decision(&'a Decision),
    Outcome {
        decision: u64,
        at_ms: u64,
        outcome: &'a ActionOutcome,
    },
}

/// Runs the engine against a local cluster.
pub struct ControlLoop {
    pub playbook: Playbook,
    memory: EngineMemory,
    history: VecDeque<HealthSnapshot>,
    log_path: PathBuf,
    memory_path: PathBuf,
    regions_total: u32,
    /// Recent decisions in words, newest last, for status views.
    pub recent: VecDeque<String>,
    pub metrics: Option<ControlMetrics>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Record {
        path: path.display().to_string(),
        source,
    }
}

impl ControlLoop {
    /// Opens the loop's record in `dir`, restoring the engine memory of an earlier run.
    pub fn open(dir: &Path, playbook: Playbook, regions_total: u32) -> Result<Self, ControlError> {
        validate_for_regions(&playbook, regions_total).map_err(|errs| {
            ControlError::InvalidPlaybook(
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let memory_path = dir.join("engine-memory.json");
        let mut memory = match std::fs::read(&memory_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ControlError::Memory {
                path: memory_path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => EngineMemory::new(),
            Err(e) => return Err(io_err(&memory_path)(e)),
        };
        // Actions that were executing when the controller stopped have an unknown
        // fate: close them as failed so the engine re-evaluates them.
        let open: Vec<u64> = memory.open_actions().iter().map(|d| d.id).collect();
        for id in open {
            let _ = memory.record_outcome(
                id,
                ActionOutcome::Failed {
                    at_ms: 0,
                    error: "the controller restarted before the outcome was known".into(),
                },
            );
        }
        Ok(Self {
            playbook,
            memory,
            history: VecDeque::new(),
            log_path: dir.join("decisions.jsonl"),
            memory_path,
            regions_total,
            recent: VecDeque::new(),
            metrics: ControlMetrics::new()
                .map_err(|e| tracing::warn!(error = %e, "control metrics unavailable"))
                .ok(),
        })
    }

    pub fn memory(&self) -> &EngineMemory {
        &self.memory
    }

    /// Builds the engine's snapshot from one observation and the order latency
    /// and error rate clients saw per node.
    pub fn snapshot(
        &self,
        obs: &ClusterObservation,
        signals: &BTreeMap<u64, EndpointSignal>,
    ) -> HealthSnapshot {
        let leader = obs.leader_status();
        let mut regions_reachable: Vec<String> = obs
            .nodes
            .iter()
            .filter(|n| n.healthz_ok)
            .map(|n| n.region.clone())
            .collect();
        regions_reachable.sort();
        regions_reachable.dedup();
        let nodes = obs
            .nodes
            .iter()
            .map(|n| {
                let progress = leader.and_then(|l| l.replication.get(&n.node_id.to_string()));
                let is_leader = obs.leader == Some(n.node_id);
                NodeHealth {
                    node_id: n.node_id,
                    region: n.region.clone(),
                    zone: n.zone.clone(),
                    reachable_by_controller: n.healthz_ok,
                    process_alive: n.process_visible.then_some(n.process_alive),
                    self_reported_role: n
                        .status
                        .as_ref()
                        .and_then(|s| Role::from_admin_name(&s.role)),
                    leader_sees_replicating: match (leader, is_leader, progress) {
                        (Some(_), true, _) => Some(true),
                        (Some(_), false, Some(p)) => Some(
                            p.millis_since_ack
                                .map(|ms| ms <= REPLICATING_ACK_MS)
                                .unwrap_or(false),
                        ),
                        (Some(_), false, None) => None,
                        (None, _, _) => None,
                    },
                    lag_entries: progress.map(|p| p.lag),
                    order_p99_ms: signals.get(&n.node_id).map(|s| s.p99_ms),
                    error_rate: signals.get(&n.node_id).map(|s| s.error_rate),
                    disk_ok: None,
                }
            })
            .collect();
        HealthSnapshot {
            at_ms: obs.at_ms,
            controller: roomkeeper_playbook::ControllerView {
                regions_reachable,
                regions_total: self.regions_total,
            },
            nodes,
            shard: ShardHealth {
                leader: obs.leader,
                term: obs.term,
                voters: obs.voters.clone(),
                learners: obs.learners.clone(),
            },
        }
    }

    /// One tick: decide, act on `execute` decisions, record everything.
    pub async fn tick(
        &mut self,
        obs: &ClusterObservation,
        signals: &BTreeMap<u64, EndpointSignal>,
        cluster: &mut LocalCluster,
        traffic: &TrafficMap,
    ) -> Result<Vec<Decision>, ControlError> {
        let snap = self.snapshot(obs, signals);
        if let Some(m) = &self.metrics {
            m.observe(&snap);
        }
        let now = obs.at_ms;
        self.history.push_back(snap);
        let keep = self.playbook.history_needed_ms() + 10_000;
        while self
            .history
            .front()
            .map(|s| now.saturating_sub(s.at_ms) > keep)
            .unwrap_or(false)
        {
            self.history.pop_front();
        }
        let history: Vec<HealthSnapshot> = self.history.iter().cloned().collect();
        let decisions = Engine::decide(&self.playbook, &history, now, &mut self.memory);
        for d in &decisions {
            self.append(&LogLine::Decision(d))?;
            self.remember(d);
            if let Some(m) = &self.metrics {
                m.decided(d);
            }
            if !matches!(d.disposition, Disposition::Execute) {
                continue;
            }
            if matches!(d.action, ActionKind::RecordEvent | ActionKind::PageHuman) {
                continue;
            }
            let outcome = match act(d, obs, cluster, traffic, &self.memory).await {
                Ok(detail) => ActionOutcome::Succeeded {
                    at_ms: now_ms(),
                    detail,
                },
                Err(error) => ActionOutcome::Failed {
                    at_ms: now_ms(),
                    error,
                },
            };
            self.append(&LogLine::Outcome {
                decision: d.id,
                at_ms: outcome.at_ms(),
                outcome: &outcome,
            })?;
            if let (Some(m), ActionOutcome::Failed { .. }) = (&self.metrics, &outcome) {
                m.failed(d);
            }
            let line = match &outcome {
                ActionOutcome::Succeeded { detail, .. } => format!("  ↳ done: {detail}"),
                ActionOutcome::Failed { error, .. } => format!("  ↳ FAILED: {error}"),
            };
            self.push_recent(line);
            let _ = self.memory.record_outcome(d.id, outcome);
        }
        if let Some(m) = &self.metrics {
            m.tiers(&self.memory);
        }
        self.save_memory()?;
        Ok(decisions)
    }

    /// Why did (or didn't) the engine act on `target`, in words.
    pub fn explain(&self, target: &Target) -> String {
        let history: Vec<HealthSnapshot> = self.history.iter().cloned().collect();
        let now = self.history.back().map_or(0, |s| s.at_ms);
        Engine::explain(&self.playbook, &history, now, &self.memory, target)
    }

    fn remember(&mut self, d: &Decision) {
        let disposition = match &d.disposition {
            Disposition::Execute => "EXECUTE".to_string(),
            Disposition::DryRun => "dry-run".to_string(),
            Disposition::AwaitingApproval { .. } => "awaiting approval".to_string(),
            Disposition::Suppressed { guard, .. } => format!("suppressed by {}", guard.name()),
        };
        let line = format!(
            "{} {} {:?} → {}: {}",
            d.tier,
            roomkeeper_playbook::action_phrase(d.action, &d.target),
            d.phase,
            disposition,
            d.reason
        );
        self.push_recent(line);
    }

    fn push_recent(&mut self, line: String) {
        self.recent.push_back(line);
        while self.recent.len() > 50 {
            self.recent.pop_front();
        }
    }

    fn append(&self, line: &LogLine<'_>) -> Result<(), ControlError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err(&self.log_path))?;
        let mut text = serde_json::to_string(line)
            .unwrap_or_else(|e| format!("{{\"unserializable\":\"{e}\"}}"));
        text.push('\n');
        f.write_all(text.as_bytes()).map_err(io_err(&self.log_path))
    }

    fn save_memory(&self) -> Result<(), ControlError> {
        let bytes = serde_json::to_vec(&self.memory).map_err(|e| ControlError::Memory {
            path: self.memory_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let tmp = self.memory_path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &self.memory_path).map_err(io_err(&self.memory_path))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Carries out one decision with the local actuators.
async fn act(
    d: &Decision,
    obs: &ClusterObservation,
    cluster: &mut LocalCluster,
    traffic: &TrafficMap,
    memory: &EngineMemory,
) -> Result<String, String> {
    match (d.action, &d.target) {
        (ActionKind::RestartNode, Target::Node(id)) => {
            if cluster.is_running(*id) {
                cluster.kill(*id).await;
            }
            cluster.spawn(*id).map_err(|e| e.to_string())?;
            cluster
                .wait_healthy(*id, std::time::Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            cluster.apply_wan_latency().await;
            Ok(format!("node {id} restarted"))
        }
        (ActionKind::TransferLeadershipAway, target) => {
            let away_from = |n: &crate::monitor::NodeObservation| match target {
                Target::Node(id) => n.node_id == *id,
                Target::Region(r) => &n.region == r,
                Target::Shard => false,
            };
            let to = obs
                .nodes
                .iter()
                .filter(|n| !away_from(n) && obs.voters.contains(&n.node_id))
                .filter(|n| n.status.is_some())
                .map(|n| n.node_id)
                .next()
                .ok_or("no healthy voter outside the target to take leadership")?;
            if obs.leader == Some(to) || obs.leader.map(|l| !obs.nodes.iter().any(|n| n.node_id == l && away_from(n))).unwrap_or(false) {
                return Ok(format!("leader already outside {target:?}"));
            }
            cluster.transfer_leader(to).await.map_err(|e| e.to_string())?;
            Ok(format!("leadership handed to node {to}"))
        }
        (ActionKind::SetTrafficWeightZero, Target::Region(r)) => {
            traffic.set_weight(r, 0);
            Ok(format!("traffic weight of {r} set to 0"))
        }
        (ActionKind::RestoreTrafficWeight, Target::Region(r)) => {
            traffic.set_weight(r, 100);
            Ok(format!("traffic weight of {r} restored to 100"))
        }
        (ActionKind::ReplaceVotersElsewhere, Target::Region(r)) => {
            let doomed: Vec<u64> = obs
                .voters
                .iter()
                .copied()
                .filter(|v| obs.nodes.iter().any(|n| n.node_id == *v && &n.region == r))
                .collect();
            let drained = memory.drained_regions();
            let mut per_region: BTreeMap<String, usize> = BTreeMap::new();
            for n in &obs.nodes {
                if &n.region != r && !drained.contains_key(&n.region) {
                    let entry = per_region.entry(n.region.clone()).or_insert(0);
                    if obs.voters.contains(&n.node_id) {
                        *entry += 1;
                    }
                }
            }
            let mut replaced = Vec::new();
            for old in doomed {
                let into = per_region
                    .iter()
                    .min_by_key(|(_, c)| **c)
                    .map(|(region, _)| region.clone())
                    .ok_or("no surviving region to move voters into")?;
                let new = cluster.replace_voter(old, &into).await.map_err(|e| e.to_string())?;
                *per_region.entry(into.clone()).or_insert(0) += 1;
                traffic_endpoints_refresh(cluster, traffic);
                replaced.push(format!("{old}→{new} ({into})"));
            }
            Ok(format!("voters of {r} replaced: {}", replaced.join(", ")))
        }
        (ActionKind::PauseSales, _) => {
            traffic.set_paused(true);
            Ok("sales paused: the storefront stops taking orders".into())
        }
        (ActionKind::ResumeSales, _) => {
            traffic.set_paused(false);
            Ok("sales resumed".into())
        }
        (ActionKind::ForceRecoverFromMinority, _) => {
            Err("recovery from a minority is not automated by the local binding; follow runbooks/tier-t4-protect.md".into())
        }
        (action, target) => Err(format!("{action:?} does not apply to {target:?}")),
    }
}

/// Points the load at every node of each region (new nodes join their region's pool).
pub fn traffic_endpoints_refresh(cluster: &LocalCluster, traffic: &TrafficMap) {
    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in cluster.nodes.values() {
        by_region
            .entry(n.info.region.clone())
            .or_default()
            .push(n.info.api_addr.clone());
    }
    for (region, addrs) in by_region {
        traffic.set_endpoints(&region, addrs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_playbook::{default_playbook, ControllerView};

    fn snapshot(at_ms: u64, dead: u64) -> HealthSnapshot {
        let regions = ["eu-west", "eu-west", "us-east", "us-east", "ap-south"];
        let nodes = (1..=5u64)
            .map(|id| {
                let alive = id != dead;
                NodeHealth {
                    node_id: id,
                    region: regions[(id - 1) as usize].into(),
                    zone: "a".into(),
                    reachable_by_controller: alive,
                    process_alive: Some(alive),
                    self_reported_role: alive.then_some(if id == 1 {
                        Role::Leader
                    } else {
                        Role::Follower
                    }),
                    leader_sees_replicating: Some(alive),
                    lag_entries: Some(0),
                    order_p99_ms: None,
                    error_rate: None,
                    disk_ok: None,
                }
            })
            .collect();
        HealthSnapshot {
            at_ms,
            controller: ControllerView {
                regions_reachable: vec!["ap-south".into(), "eu-west".into(), "us-east".into()],
                regions_total: 3,
            },
            nodes,
            shard: ShardHealth {
                leader: Some(1),
                term: 1,
                voters: vec![1, 2, 3, 4, 5],
                learners: vec![],
            },
        }
    }

    #[test]
    fn engine_memory_survives_a_controller_restart_and_unknown_outcomes_are_closed() {
        let dir = std::env::temp_dir().join(format!("roomkeeper-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ctl = ControlLoop::open(&dir, default_playbook(), 3).expect("open");
        let history: Vec<HealthSnapshot> =
            (0..=20).map(|i| snapshot(1_000_000 + i * 500, 3)).collect();
        let now = 1_000_000 + 20 * 500;
        let decisions = Engine::decide(&ctl.playbook, &history, now, &mut ctl.memory);
        let restart = decisions
            .iter()
            .find(|d| d.action == ActionKind::RestartNode && d.disposition.is_execute())
            .expect("T1 decides to restart the dead node");
        assert_eq!(restart.target, Target::Node(3));
        for d in &decisions {
            ctl.append(&LogLine::Decision(d)).expect("append");
        }
        ctl.save_memory().expect("save");
        let records_before = ctl.memory().records().len();
        drop(ctl);

        // The controller restarts: it remembers, and the restart whose outcome it
        // never learned is closed as failed so the engine can decide again.
        let ctl = ControlLoop::open(&dir, default_playbook(), 3).expect("reopen");
        assert_eq!(ctl.memory().records().len(), records_before);
        assert!(
            ctl.memory().open_actions().is_empty(),
            "open actions are closed on restart"
        );
        let why = ctl.memory().explain_last(&Target::Node(3));
        assert!(why.contains('3'), "the explanation names the node: {why}");
        let log = std::fs::read_to_string(dir.join("decisions.jsonl")).expect("log");
        assert!(log.lines().count() >= decisions.len());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_invalid_playbook_is_refused_before_the_loop_starts() {
        let dir = std::env::temp_dir().join(format!("roomkeeper-ctl-bad-{}", std::process::id()));
        let mut p = default_playbook();
        p.guards.min_regions_visible_to_act = 9;
        let err = ControlLoop::open(&dir, p, 3).err().expect("refused");
        assert!(err.to_string().contains("minRegionsVisibleToAct"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
