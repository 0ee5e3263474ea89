//! `kubectl roomkeeper simulate --playbook FILE --timeline FILE`: the real
//! control loop ([`roomkeeper_control::ControlLoop`], the code the operator
//! and the local demo run) over a synthetic health timeline, with an
//! actuator that carries actions out on the simulated cluster. No cluster,
//! no clock: simulated time advances one tick at a time.
//!
//! The timeline format (YAML, documented in docs/kubectl-plugin.md):
//!
//! ```yaml
//! regions:                 # node ids are given in order: a → 1, b → 2, …
//!   - {name: a, voters: 1}
//!   - {name: b, voters: 1}
//!   - {name: c, voters: 1}
//! tickMs: 1000             # default 1000
//! durationMs: 90000        # default: the last event + 60 s
//! events:
//!   - {atMs: 10000, node: 2, state: down}       # up | down | hung
//!   - {atMs: 10000, node: 3, lag: 50000}        # entries behind the leader
//!   - {atMs: 20000, region: b, state: unreachable}  # controller view: unreachable | reachable | down | up
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use roomkeeper_api::{NodeStatus, ReplicationProgress};
use roomkeeper_control::memory_store::StoreError;
use roomkeeper_control::observation::{hide_regions, NodeObservation};
use roomkeeper_control::{
    ActError, Actuate, ClusterObservation, ControlLoop, Journal, MemoryStore,
};
use roomkeeper_playbook::{ActionOutcome, Decision, Disposition, EngineMemory, Playbook};
use serde::{Deserialize, Serialize};

use super::{print_structured, Format, PluginError};

/// A health timeline.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeline {
    pub regions: Vec<TimelineRegion>,
    #[serde(default = "default_tick")]
    pub tick_ms: u64,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub events: Vec<TimelineEvent>,
}

fn default_tick() -> u64 {
    1_000
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimelineRegion {
    pub name: String,
    pub voters: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimelineEvent {
    pub at_ms: u64,
    #[serde(default)]
    pub node: Option<u64>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub state: Option<EventState>,
    #[serde(default)]
    pub lag: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EventState {
    /// The process runs and answers.
    Up,
    /// The process is dead.
    Down,
    /// The process runs but answers nothing (SIGSTOP, a full disk).
    Hung,
    /// The controller cannot reach the region (the nodes may be fine).
    Unreachable,
    /// The controller reaches the region again.
    Reachable,
}

impl Timeline {
    /// Parses and checks a timeline: every event names a known node or region.
    pub fn from_yaml(text: &str) -> Result<Timeline, String> {
        let t: Timeline = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if t.regions.is_empty() {
            return Err("regions: at least one region".into());
        }
        if t.tick_ms == 0 {
            return Err("tickMs must be above 0".into());
        }
        let nodes: u64 = t.regions.iter().map(|r| u64::from(r.voters)).sum();
        for (i, e) in t.events.iter().enumerate() {
            match (&e.node, &e.region) {
                (Some(n), None) if (1..=nodes).contains(n) => {}
                (Some(n), None) => {
                    return Err(format!("events[{i}].node: {n} is not a node (1..={nodes})"))
                }
                (None, Some(r)) if t.regions.iter().any(|x| &x.name == r) => {}
                (None, Some(r)) => return Err(format!("events[{i}].region: no region {r}")),
                _ => return Err(format!("events[{i}]: name exactly one of node and region")),
            }
            if e.state.is_none() && e.lag.is_none() {
                return Err(format!("events[{i}]: give a state or a lag"));
            }
            if e.node.is_some()
                && matches!(
                    e.state,
                    Some(EventState::Unreachable | EventState::Reachable)
                )
            {
                return Err(format!(
                    "events[{i}].state: unreachable/reachable apply to a region"
                ));
            }
        }
        Ok(t)
    }

    fn duration(&self) -> u64 {
        self.duration_ms
            .unwrap_or_else(|| self.events.iter().map(|e| e.at_ms).max().unwrap_or(0) + 60_000)
    }
}

#[derive(Debug, Clone)]
struct SimNode {
    id: u64,
    region: String,
    state: EventState,
    since_ms: u64,
    lag: u64,
}

/// The simulated cluster.
#[derive(Debug, Default)]
struct Sim {
    nodes: Vec<SimNode>,
    leader: Option<u64>,
    term: u64,
    index: u64,
    hidden: BTreeSet<String>,
    next_id: u64,
    now: u64,
}

impl Sim {
    fn new(t: &Timeline) -> Sim {
        let mut s = Sim {
            term: 1,
            ..Default::default()
        };
        for r in &t.regions {
            for _ in 0..r.voters {
                s.next_id += 1;
                s.nodes.push(SimNode {
                    id: s.next_id,
                    region: r.name.clone(),
                    state: EventState::Up,
                    since_ms: 0,
                    lag: 0,
                });
            }
        }
        s
    }

    fn node(&mut self, id: u64) -> Option<&mut SimNode> {
        self.nodes.iter_mut().find(|n| n.id == id)
    }

    fn apply(&mut self, e: &TimelineEvent) {
        let now = self.now;
        let set = |n: &mut SimNode| {
            if let Some(s) = e.state {
                n.state = s;
                n.since_ms = now;
            }
            if let Some(l) = e.lag {
                n.lag = l;
            }
        };
        match (&e.node, &e.region, e.state) {
            (None, Some(r), Some(EventState::Unreachable)) => {
                self.hidden.insert(r.clone());
            }
            (None, Some(r), Some(EventState::Reachable)) => {
                self.hidden.remove(r);
            }
            (None, Some(r), _) => self
                .nodes
                .iter_mut()
                .filter(|n| &n.region == r)
                .for_each(set),
            (Some(id), _, _) => {
                if let Some(n) = self.node(*id) {
                    set(n);
                }
            }
            _ => {}
        }
    }

    /// Raft, coarsely: a leader that stops answering loses leadership; the
    /// live voter least behind wins when a majority is live.
    fn elect(&mut self) {
        let up = |n: &SimNode| n.state == EventState::Up;
        if self
            .leader
            .and_then(|l| self.nodes.iter().find(|n| n.id == l))
            .is_some_and(up)
        {
            return;
        }
        let live = self.nodes.iter().filter(|n| up(n)).count();
        self.leader = if 2 * live > self.nodes.len() {
            self.term += 1;
            self.nodes
                .iter()
                .filter(|n| up(n))
                .min_by_key(|n| (n.lag, n.id))
                .map(|n| n.id)
        } else {
            None
        };
    }

    fn observe(&self) -> ClusterObservation {
        let voters: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let answers = n.state == EventState::Up;
                let status = answers.then(|| {
                    let leads = self.leader == Some(n.id);
                    let replication = if leads {
                        self.nodes
                            .iter()
                            .filter(|m| m.id != n.id)
                            .map(|m| {
                                let ack = if m.state == EventState::Up {
                                    50
                                } else {
                                    self.now.saturating_sub(m.since_ms).max(60_000)
                                };
                                (
                                    m.id.to_string(),
                                    ReplicationProgress {
                                        matched_index: Some(self.index.saturating_sub(m.lag)),
                                        lag: m.lag,
                                        millis_since_ack: Some(ack),
                                    },
                                )
                            })
                            .collect()
                    } else {
                        BTreeMap::new()
                    };
                    NodeStatus {
                        node_id: n.id,
                        region: n.region.clone(),
                        zone: format!("{}-a", n.region),
                        role: if leads { "leader" } else { "follower" }.into(),
                        term: self.term,
                        leader_id: self.leader,
                        last_log_index: self.index.saturating_sub(n.lag),
                        committed_index: self.index.saturating_sub(n.lag),
                        applied_index: self.index.saturating_sub(n.lag),
                        millis_since_quorum_ack: leads.then_some(0),
                        voters: voters.clone(),
                        replication,
                        ..Default::default()
                    }
                });
                NodeObservation {
                    node_id: n.id,
                    region: n.region.clone(),
                    zone: format!("{}-a", n.region),
                    process_alive: Some(n.state != EventState::Down),
                    healthz_ok: answers,
                    status,
                }
            })
            .collect();
        let mut obs = ClusterObservation::new(self.now, nodes);
        let hidden: Vec<String> = self.hidden.iter().cloned().collect();
        if !hidden.is_empty() {
            hide_regions(&mut obs, &hidden);
        }
        obs
    }
}

impl Actuate for Sim {
    fn binding(&self) -> &'static str {
        "simulated"
    }

    async fn restart_node(&mut self, id: u64) -> Result<String, ActError> {
        let now = self.now;
        let n = self
            .node(id)
            .ok_or_else(|| ActError::Failed(format!("node {id} is not in the simulation")))?;
        n.state = EventState::Up;
        n.since_ms = now;
        Ok(format!("restarted node {id} (simulated)"))
    }

    async fn transfer_leadership(&mut self, from: u64, to: u64) -> Result<String, ActError> {
        self.leader = Some(to);
        self.term += 1;
        Ok(format!(
            "leadership moved from node {from} to node {to} (simulated)"
        ))
    }

    async fn set_traffic_weight(&mut self, region: &str, weight: u32) -> Result<String, ActError> {
        Ok(format!(
            "traffic weight of region {region} set to {weight} (simulated)"
        ))
    }

    async fn replace_voter(&mut self, old: u64, into_region: &str) -> Result<u64, ActError> {
        self.next_id += 1;
        let id = self.next_id;
        self.nodes.retain(|n| n.id != old);
        self.nodes.push(SimNode {
            id,
            region: into_region.to_string(),
            state: EventState::Up,
            since_ms: self.now,
            lag: 0,
        });
        Ok(id)
    }

    async fn set_sales_paused(&mut self, paused: bool) -> Result<String, ActError> {
        Ok(format!(
            "sales {} on every node (simulated)",
            if paused { "paused" } else { "resumed" }
        ))
    }
}

/// The engine memory lives only as long as the run.
struct NoStore;

impl MemoryStore for NoStore {
    async fn load(&mut self) -> Result<Option<EngineMemory>, StoreError> {
        Ok(None)
    }
    async fn save(&mut self, _json: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One decision of the run, as printed.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SimDecision {
    pub at_ms: u64,
    pub id: u64,
    pub tier: String,
    pub action: String,
    pub target: String,
    pub disposition: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

#[derive(Default)]
struct Record {
    start: u64,
    rows: Vec<SimDecision>,
}

impl Journal for Record {
    async fn decided(&mut self, d: &Decision) -> Result<(), StoreError> {
        let (disposition, guard) = match &d.disposition {
            Disposition::Execute => ("execute".to_string(), None),
            Disposition::DryRun => ("dryRun".to_string(), None),
            Disposition::AwaitingApproval { .. } => ("awaitingApproval".to_string(), None),
            Disposition::Suppressed { guard, why } => {
                (format!("suppressed: {why}"), Some(guard.name().to_string()))
            }
        };
        self.rows.push(SimDecision {
            at_ms: d.at_ms.saturating_sub(self.start),
            id: d.id,
            tier: d
                .level
                .map_or_else(|| d.tier.clone(), |l| format!("T{l} {}", d.tier)),
            action: d.action.name().to_string(),
            target: d.target.to_string(),
            disposition,
            guard,
            reason: d.reason.clone(),
            outcome: None,
        });
        Ok(())
    }

    async fn outcome(&mut self, d: &Decision, outcome: &ActionOutcome) -> Result<(), StoreError> {
        if let Some(row) = self.rows.iter_mut().rev().find(|r| r.id == d.id) {
            row.outcome = Some(match outcome {
                ActionOutcome::Succeeded { detail, .. } => format!("done: {detail}"),
                ActionOutcome::Failed { error, .. } => format!("FAILED: {error}"),
            });
        }
        Ok(())
    }
}

/// Runs `playbook` over `timeline` and returns the decisions, in order.
pub async fn simulate(
    playbook: Playbook,
    timeline: &Timeline,
) -> Result<Vec<SimDecision>, PluginError> {
    let regions = u32::try_from(timeline.regions.len()).unwrap_or(u32::MAX);
    let mut store = NoStore;
    let mut ctl = ControlLoop::open(&mut store, playbook, regions)
        .await
        .map_err(|e| PluginError::Usage(e.to_string()))?;
    // Outcomes are stamped with the wall clock, so simulated time starts now.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let mut sim = Sim::new(timeline);
    let mut record = Record {
        start,
        rows: Vec::new(),
    };
    let mut events = timeline.events.clone();
    events.sort_by_key(|e| e.at_ms);
    let mut next = 0;
    let mut t = 0;
    while t <= timeline.duration() {
        sim.now = start + t;
        while next < events.len() && events[next].at_ms <= t {
            sim.apply(&events[next]);
            next += 1;
        }
        sim.elect();
        if sim.leader.is_some() {
            sim.index += 10;
        }
        let obs = sim.observe();
        ctl.tick(&obs, &BTreeMap::new(), &mut sim, &mut store, &mut record)
            .await
            .map_err(|e| anyhow::anyhow!("tick at {t} ms: {e}"))?;
        t += timeline.tick_ms;
    }
    Ok(record.rows)
}

fn read_playbook(path: Option<&Path>) -> Result<Playbook, PluginError> {
    let Some(path) = path else {
        return Ok(roomkeeper_playbook::default_playbook());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let value: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| PluginError::Usage(format!("{}: {e}", path.display())))?;
    // A FailoverPlaybook object, or its spec alone.
    let spec = match value.get("spec") {
        Some(s) if value.get("kind").is_some() => s.clone(),
        _ => value,
    };
    serde_yaml::from_value(spec).map_err(|e| PluginError::Usage(format!("{}: {e}", path.display())))
}

pub async fn run(playbook: Option<&Path>, timeline: &Path, f: Format) -> Result<(), PluginError> {
    let pb = read_playbook(playbook)?;
    let text = std::fs::read_to_string(timeline)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", timeline.display()))?;
    let tl = Timeline::from_yaml(&text)
        .map_err(|e| PluginError::Usage(format!("timeline {}: {e}", timeline.display())))?;
    let rows = simulate(pb, &tl).await?;
    match f {
        Format::Json | Format::Yaml => print_structured(&rows, f),
        _ => {
            if rows.is_empty() {
                println!("No decisions: no tier's trigger held for its hold-down time.");
            }
            for r in &rows {
                println!(
                    "+{:>6.1}s  #{} {} {} {}: {}{}",
                    r.at_ms as f64 / 1000.0,
                    r.id,
                    r.tier,
                    r.action,
                    r.target,
                    r.disposition,
                    r.guard
                        .as_deref()
                        .map(|g| format!(" [{g}]"))
                        .unwrap_or_default()
                );
                if f == Format::Wide {
                    println!("          {}", r.reason);
                }
                if let Some(o) = &r.outcome {
                    println!("          ↳ {o}");
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN_NODE: &str = "
regions:
  - {name: a, voters: 1}
  - {name: b, voters: 1}
  - {name: c, voters: 1}
durationMs: 30000
events:
  - {atMs: 5000, node: 2, state: down}
";

    #[test]
    fn timelines_are_checked_with_the_field_named() {
        assert!(Timeline::from_yaml(DOWN_NODE).is_ok());
        let bad = DOWN_NODE.replace("node: 2", "node: 9");
        assert!(Timeline::from_yaml(&bad)
            .unwrap_err()
            .contains("events[0].node: 9"));
        let bad = DOWN_NODE.replace("state: down", "state: sleepy");
        assert!(Timeline::from_yaml(&bad).is_err());
        let bad = DOWN_NODE.replace("node: 2, state: down", "node: 2, state: unreachable");
        assert!(Timeline::from_yaml(&bad)
            .unwrap_err()
            .contains("apply to a region"));
        assert!(Timeline::from_yaml("regions: []").is_err());
        assert!(Timeline::from_yaml("regions: [{name: a, voters: 1}]\nextra: 1").is_err());
    }

    #[tokio::test]
    async fn a_dead_node_is_restarted_by_the_heal_tier_after_its_hold_down() {
        let tl = Timeline::from_yaml(DOWN_NODE).unwrap();
        let rows = simulate(roomkeeper_playbook::default_playbook(), &tl)
            .await
            .unwrap();
        let restart = rows
            .iter()
            .find(|r| r.action == "restartNode" && r.target == "node 2")
            .unwrap_or_else(|| panic!("no restart of node 2 in {rows:#?}"));
        assert_eq!(restart.tier, "T1 heal");
        assert_eq!(restart.disposition, "execute");
        // The hold-down of T1 (5 s) counts from the first unhealthy snapshot.
        assert!(restart.at_ms >= 10_000, "{restart:?}");
        assert!(
            restart
                .outcome
                .as_deref()
                .is_some_and(|o| o.starts_with("done")),
            "{restart:?}"
        );
    }

    #[tokio::test]
    async fn a_paused_playbook_records_and_does_nothing() {
        let tl = Timeline::from_yaml(DOWN_NODE).unwrap();
        let mut pb = roomkeeper_playbook::default_playbook();
        pb.paused = true;
        let rows = simulate(pb, &tl).await.unwrap();
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|r| r.disposition != "execute"), "{rows:#?}");
        assert!(
            rows.iter().any(|r| r.guard.as_deref() == Some("paused")),
            "{rows:#?}"
        );
    }
}
