//! Health snapshots (what the monitor saw at one instant) and the views derived
//! from them: node liveness by independent views, region health, shard quorum.
//!
//! Everything here is a pure function of one snapshot. The engine combines these
//! views over a history of snapshots to apply hold-down and stand-down times.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identifier (the Raft node id).
pub type NodeId = u64;

/// The Raft role a node reports for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    /// Parses the role names of the order store's admin API (`leader`, `follower`, …).
    pub fn from_admin_name(name: &str) -> Option<Role> {
        match name {
            "leader" => Some(Role::Leader),
            "follower" => Some(Role::Follower),
            "candidate" => Some(Role::Candidate),
            "learner" => Some(Role::Learner),
            "shutdown" => Some(Role::Shutdown),
            _ => None,
        }
    }
}

/// Everything the monitor saw of the cluster at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthSnapshot {
    /// When the observation was taken (milliseconds, the binding's clock).
    pub at_ms: u64,
    /// What the controller itself can reach.
    pub controller: ControllerView,
    /// One entry per node the controller knows of, reachable or not.
    pub nodes: Vec<NodeHealth>,
    /// The shard's Raft state, as the best-informed node reported it.
    pub shard: ShardHealth,
    /// Live windows of the shard's rooms on air now or soon, as the nodes
    /// report them (`/admin/status`). During one, disruptive actions that are
    /// not protective wait in the room's home region (`guards.liveWindow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live_windows: Vec<RoomLiveWindow>,
}

/// A room's live window: a streamer is on air in `[startMs, endMs)` (Unix ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomLiveWindow {
    pub room: String,
    pub home_region: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub expected_peak_orders_per_s: u32,
}

impl RoomLiveWindow {
    /// On air at `now_ms`.
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.start_ms <= now_ms && now_ms < self.end_ms
    }
}

/// The controller's own reachability of regions (the split-brain guard reads it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerView {
    /// Regions in which the controller reached at least one endpoint.
    pub regions_reachable: Vec<String>,
    /// How many regions the topology has.
    pub regions_total: u32,
}

/// One node as seen by the three independent views and its own metrics.
///
/// `None` means "this view has no answer", which is different from a negative
/// answer: the two-view rule counts only answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealth {
    pub node_id: NodeId,
    pub region: String,
    pub zone: String,
    /// Controller view: a probe independent of the status call (TCP connect,
    /// `/healthz`, pod readiness) reached the node.
    pub reachable_by_controller: bool,
    /// Controller view: the process (or pod) is running, when the binding knows.
    #[serde(default)]
    pub process_alive: Option<bool>,
    /// The node's own answer: the role it reported, `None` when it did not answer.
    #[serde(default)]
    pub self_reported_role: Option<Role>,
    /// The leader's replication view: is the leader replicating to this node?
    /// `None` when there is no leader or the leader did not answer.
    #[serde(default)]
    pub leader_sees_replicating: Option<bool>,
    /// Entries this node is behind the leader, as the leader sees it.
    #[serde(default)]
    pub lag_entries: Option<u64>,
    /// 99th percentile order latency served by this node (ms).
    #[serde(default)]
    pub order_p99_ms: Option<f64>,
    /// Share of order requests that failed on this node (0.0–1.0).
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Whether the node's disk accepts writes.
    #[serde(default)]
    pub disk_ok: Option<bool>,
}

/// The shard's Raft state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardHealth {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// One view's answer about whether a node is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ViewAnswer {
    Up,
    Down,
    Unknown,
}

/// The three independent views of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeViews {
    /// Did the node answer for itself?
    pub own_answer: ViewAnswer,
    /// Is the leader replicating to it? (The leader counts itself as up.)
    pub leader_replication: ViewAnswer,
    /// Can the controller reach it, and is its process running?
    pub controller: ViewAnswer,
}

impl NodeViews {
    fn answers(&self) -> [ViewAnswer; 3] {
        [self.own_answer, self.leader_replication, self.controller]
    }

    /// How many views say the node is up.
    pub fn up(&self) -> usize {
        self.answers()
            .iter()
            .filter(|a| **a == ViewAnswer::Up)
            .count()
    }

    /// How many views say the node is down.
    pub fn down(&self) -> usize {
        self.answers()
            .iter()
            .filter(|a| **a == ViewAnswer::Down)
            .count()
    }

    /// The two-view rule: alive when at least two views say up; down when at
    /// least two say down and none says up; uncertain otherwise.
    pub fn liveness(&self) -> Liveness {
        if self.up() >= 2 {
            Liveness::Alive
        } else if self.down() >= 2 && self.up() == 0 {
            Liveness::Down
        } else {
            Liveness::Uncertain
        }
    }
}

/// A node's liveness after combining its views.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Liveness {
    /// At least two views say up.
    Alive,
    /// At least two views say down and none says up.
    Down,
    /// The views disagree or are missing; the engine does not act on it.
    Uncertain,
}

/// Computes the three views of a node within a snapshot.
pub fn node_views(snapshot: &HealthSnapshot, node: &NodeHealth) -> NodeViews {
    let own_answer = match node.self_reported_role {
        Some(Role::Shutdown) | None => ViewAnswer::Down,
        Some(_) => ViewAnswer::Up,
    };
    let leader_replication = if snapshot.shard.leader == Some(node.node_id)
        && node.self_reported_role == Some(Role::Leader)
    {
        ViewAnswer::Up
    } else {
        match node.leader_sees_replicating {
            Some(true) => ViewAnswer::Up,
            Some(false) => ViewAnswer::Down,
            None => ViewAnswer::Unknown,
        }
    };
    let controller = if !node.reachable_by_controller || node.process_alive == Some(false) {
        ViewAnswer::Down
    } else {
        ViewAnswer::Up
    };
    NodeViews {
        own_answer,
        leader_replication,
        controller,
    }
}

/// The two-view liveness of a node within a snapshot.
pub fn node_liveness(snapshot: &HealthSnapshot, node: &NodeHealth) -> Liveness {
    node_views(snapshot, node).liveness()
}

/// A node is unhealthy when it is down by two views, its process is known to be
/// dead, or its disk is failing. An uncertain node is not unhealthy: restarting a
/// node on one view's word is how split-brain controllers do harm.
pub fn node_unhealthy(snapshot: &HealthSnapshot, node: &NodeHealth) -> bool {
    node.process_alive == Some(false)
        || node.disk_ok == Some(false)
        || node_liveness(snapshot, node) == Liveness::Down
}

/// A replica lags when the leader sees it more than `entries_above` entries
/// behind and it is not down (a down node is unhealthy, not lagging).
pub fn replica_lagging(snapshot: &HealthSnapshot, node: &NodeHealth, entries_above: u64) -> bool {
    node.lag_entries.is_some_and(|l| l > entries_above)
        && node_liveness(snapshot, node) != Liveness::Down
}

/// Latency and error thresholds for "signal degraded".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalThresholds {
    pub p99_ms: f64,
    pub error_rate: f64,
}

impl Default for SignalThresholds {
    fn default() -> Self {
        SignalThresholds {
            p99_ms: 250.0,
            error_rate: 0.05,
        }
    }
}

/// Whether a node's own signals are above the thresholds.
pub fn signals_above(node: &NodeHealth, t: &SignalThresholds) -> bool {
    node.order_p99_ms.is_some_and(|v| v > t.p99_ms)
        || node.error_rate.is_some_and(|v| v > t.error_rate)
}

/// A region's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegionHealth {
    Healthy,
    /// A majority of the region's nodes are unhealthy or above the signal
    /// thresholds.
    Degraded,
    /// Every node of the region is down by at least two independent views.
    Lost,
}

impl fmt::Display for RegionHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegionHealth::Healthy => "healthy",
            RegionHealth::Degraded => "degraded",
            RegionHealth::Lost => "lost",
        })
    }
}

/// The nodes of one region within a snapshot.
pub fn region_nodes<'a>(
    snapshot: &'a HealthSnapshot,
    region: &'a str,
) -> impl Iterator<Item = &'a NodeHealth> + 'a {
    snapshot.nodes.iter().filter(move |n| n.region == region)
}

/// The regions that have at least one node, in a stable order.
pub fn regions(snapshot: &HealthSnapshot) -> Vec<String> {
    snapshot
        .nodes
        .iter()
        .map(|n| n.region.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// A region is lost only when it has nodes and every one of them is down by at
/// least two independent views. One flaky probe never makes a region lost.
pub fn region_lost(snapshot: &HealthSnapshot, region: &str) -> bool {
    let mut any = false;
    for n in region_nodes(snapshot, region) {
        any = true;
        if node_liveness(snapshot, n) != Liveness::Down {
            return false;
        }
    }
    any
}

/// How many of a region's nodes count as bad under `t`: unhealthy (which
/// includes down by two views) or with signals above the thresholds. A node
/// whose views disagree is not counted: one view's word never moves a region.
/// Returns (bad, total).
pub fn region_bad_nodes(
    snapshot: &HealthSnapshot,
    region: &str,
    t: &SignalThresholds,
) -> (usize, usize) {
    let mut bad = 0;
    let mut total = 0;
    for n in region_nodes(snapshot, region) {
        total += 1;
        if node_unhealthy(snapshot, n) || signals_above(n, t) {
            bad += 1;
        }
    }
    (bad, total)
}

/// Region health under the given signal thresholds.
pub fn region_health(
    snapshot: &HealthSnapshot,
    region: &str,
    t: &SignalThresholds,
) -> RegionHealth {
    if region_lost(snapshot, region) {
        return RegionHealth::Lost;
    }
    let (bad, total) = region_bad_nodes(snapshot, region, t);
    if total > 0 && bad * 2 > total {
        RegionHealth::Degraded
    } else {
        RegionHealth::Healthy
    }
}

/// Whether the shard's voters form a quorum, by the two-view rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QuorumState {
    /// A majority of voters is alive by at least two views.
    Present,
    /// At least half of the voters are down by two views: no majority can form.
    Lost,
    /// Neither can be shown (views disagree, or the shard has no voters yet).
    Unknown,
}

/// Counts of the shard's voters by liveness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoterCounts {
    pub total: usize,
    pub alive: usize,
    pub down: usize,
}

impl VoterCounts {
    /// The smallest majority of `total`.
    pub fn majority(&self) -> usize {
        self.total / 2 + 1
    }
}

/// Counts voters by two-view liveness. A voter missing from `nodes` counts as
/// neither alive nor down.
pub fn voter_counts(snapshot: &HealthSnapshot) -> VoterCounts {
    let mut c = VoterCounts {
        total: snapshot.shard.voters.len(),
        ..VoterCounts::default()
    };
    for v in &snapshot.shard.voters {
        if let Some(n) = snapshot.nodes.iter().find(|n| n.node_id == *v) {
            match node_liveness(snapshot, n) {
                Liveness::Alive => c.alive += 1,
                Liveness::Down => c.down += 1,
                Liveness::Uncertain => {}
            }
        }
    }
    c
}

/// The shard's quorum state.
pub fn quorum(snapshot: &HealthSnapshot) -> QuorumState {
    let c = voter_counts(snapshot);
    if c.total == 0 {
        QuorumState::Unknown
    } else if c.alive >= c.majority() {
        QuorumState::Present
    } else if c.down * 2 >= c.total {
        QuorumState::Lost
    } else {
        QuorumState::Unknown
    }
}

/// How many regions the controller reaches, and how many it must reach to act.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionVisibility {
    pub visible: u32,
    pub total: u32,
}

impl RegionVisibility {
    /// Regions the controller reaches (duplicates ignored).
    pub fn of(snapshot: &HealthSnapshot) -> RegionVisibility {
        let visible = snapshot
            .controller
            .regions_reachable
            .iter()
            .collect::<BTreeSet<_>>()
            .len() as u32;
        RegionVisibility {
            visible,
            total: snapshot.controller.regions_total,
        }
    }

    /// A strict majority of all regions is visible.
    pub fn majority(&self) -> bool {
        self.visible * 2 > self.total
    }
}

/// A node's derived state, for status views and explanations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAssessment {
    pub node_id: NodeId,
    pub region: String,
    pub views: NodeViews,
    pub liveness: Liveness,
    pub unhealthy: bool,
    pub voter: bool,
}

/// A region's derived state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionAssessment {
    pub region: String,
    pub health: RegionHealth,
    pub nodes: usize,
    pub nodes_bad: usize,
    pub voters: usize,
}

/// Everything derived from one snapshot, for a status view (the engine uses the
/// same functions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assessment {
    pub at_ms: u64,
    pub nodes: Vec<NodeAssessment>,
    pub regions: Vec<RegionAssessment>,
    pub quorum: QuorumState,
    pub voters: VoterCounts,
    pub visibility: RegionVisibility,
}

/// Derives node, region and shard views from one snapshot.
pub fn assess(snapshot: &HealthSnapshot, t: &SignalThresholds) -> Assessment {
    let nodes = snapshot
        .nodes
        .iter()
        .map(|n| {
            let views = node_views(snapshot, n);
            NodeAssessment {
                node_id: n.node_id,
                region: n.region.clone(),
                views,
                liveness: views.liveness(),
                unhealthy: node_unhealthy(snapshot, n),
                voter: snapshot.shard.voters.contains(&n.node_id),
            }
        })
        .collect();
    let regions = regions(snapshot)
        .into_iter()
        .map(|r| {
            let (bad, total) = region_bad_nodes(snapshot, &r, t);
            let voters = region_nodes(snapshot, &r)
                .filter(|n| snapshot.shard.voters.contains(&n.node_id))
                .count();
            RegionAssessment {
                health: region_health(snapshot, &r, t),
                region: r,
                nodes: total,
                nodes_bad: bad,
                voters,
            }
        })
        .collect();
    Assessment {
        at_ms: snapshot.at_ms,
        nodes,
        regions,
        quorum: quorum(snapshot),
        voters: voter_counts(snapshot),
        visibility: RegionVisibility::of(snapshot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, region: &str) -> NodeHealth {
        NodeHealth {
            node_id: id,
            region: region.into(),
            zone: format!("{region}-1"),
            reachable_by_controller: true,
            process_alive: Some(true),
            self_reported_role: Some(if id == 1 {
                Role::Leader
            } else {
                Role::Follower
            }),
            leader_sees_replicating: Some(true),
            lag_entries: Some(0),
            order_p99_ms: Some(20.0),
            error_rate: Some(0.0),
            disk_ok: Some(true),
        }
    }

    fn snapshot() -> HealthSnapshot {
        HealthSnapshot {
            at_ms: 0,
            controller: ControllerView {
                regions_reachable: vec!["a".into(), "b".into(), "c".into()],
                regions_total: 3,
            },
            nodes: vec![
                node(1, "a"),
                node(2, "a"),
                node(3, "b"),
                node(4, "b"),
                node(5, "c"),
            ],
            shard: ShardHealth {
                leader: Some(1),
                term: 3,
                voters: vec![1, 2, 3, 4, 5],
                learners: vec![],
            },
            live_windows: Vec::new(),
        }
    }

    fn kill(s: &mut HealthSnapshot, id: NodeId) {
        let n = s.nodes.iter_mut().find(|n| n.node_id == id).unwrap();
        n.reachable_by_controller = false;
        n.process_alive = Some(false);
        n.self_reported_role = None;
        n.leader_sees_replicating = Some(false);
    }

    #[test]
    fn one_failed_probe_does_not_make_a_region_lost() {
        let mut s = snapshot();
        s.nodes[4].reachable_by_controller = false;
        // The node's own answer and the leader's view still say up.
        assert_eq!(node_liveness(&s, &s.nodes[4]), Liveness::Alive);
        assert!(!region_lost(&s, "c"));
        // Even with no leader to ask, one failed probe is only one view.
        s.shard.leader = None;
        s.nodes[4].leader_sees_replicating = None;
        assert_ne!(node_liveness(&s, &s.nodes[4]), Liveness::Down);
        assert!(!region_lost(&s, "c"));
    }

    #[test]
    fn controller_cut_off_while_leader_replicates_is_not_lost() {
        let mut s = snapshot();
        // Both controller-side views fail, but the leader still replicates to it.
        s.nodes[4].reachable_by_controller = false;
        s.nodes[4].self_reported_role = None;
        assert_eq!(node_liveness(&s, &s.nodes[4]), Liveness::Uncertain);
        assert!(!region_lost(&s, "c"));
    }

    #[test]
    fn two_agreeing_views_make_a_node_down_and_its_region_lost() {
        let mut s = snapshot();
        kill(&mut s, 5);
        assert_eq!(node_liveness(&s, &s.nodes[4]), Liveness::Down);
        assert!(region_lost(&s, "c"));
        assert_eq!(
            region_health(&s, "c", &SignalThresholds::default()),
            RegionHealth::Lost
        );
        assert_eq!(quorum(&s), QuorumState::Present);
    }

    #[test]
    fn a_region_with_one_of_two_nodes_down_is_not_lost() {
        let mut s = snapshot();
        kill(&mut s, 3);
        assert!(!region_lost(&s, "b"));
        assert_eq!(
            region_health(&s, "b", &SignalThresholds::default()),
            RegionHealth::Healthy
        );
    }

    #[test]
    fn slow_majority_of_a_region_degrades_it() {
        let mut s = snapshot();
        s.nodes[2].order_p99_ms = Some(900.0);
        s.nodes[3].order_p99_ms = Some(900.0);
        assert_eq!(
            region_health(&s, "b", &SignalThresholds::default()),
            RegionHealth::Degraded
        );
    }

    #[test]
    fn quorum_is_lost_only_when_half_the_voters_are_down_by_two_views() {
        let mut s = snapshot();
        for id in [3, 4, 5] {
            kill(&mut s, id);
        }
        s.shard.leader = None;
        for n in &mut s.nodes {
            n.leader_sees_replicating = None;
        }
        assert_eq!(quorum(&s), QuorumState::Lost);
        let mut s2 = snapshot();
        kill(&mut s2, 4);
        kill(&mut s2, 5);
        assert_eq!(quorum(&s2), QuorumState::Present);
    }

    #[test]
    fn a_dead_process_or_bad_disk_makes_a_node_unhealthy() {
        let mut s = snapshot();
        s.nodes[1].disk_ok = Some(false);
        assert!(node_unhealthy(&s, &s.nodes[1]));
        s.nodes[2].process_alive = Some(false);
        assert!(node_unhealthy(&s, &s.nodes[2]));
        assert!(!node_unhealthy(&s, &s.nodes[3]));
    }

    #[test]
    fn lag_counts_only_for_replicas_that_are_not_down() {
        let mut s = snapshot();
        s.nodes[2].lag_entries = Some(5000);
        assert!(replica_lagging(&s, &s.nodes[2], 1000));
        kill(&mut s, 3);
        assert!(!replica_lagging(&s, &s.nodes[2], 1000));
    }
}
