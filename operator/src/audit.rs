//! What the operator can tell on its own about a cluster's invariants, after
//! each playbook tick: the commit audit (acknowledged writes lost), how many
//! regions it reaches, and how long approval requests have waited. Each is an
//! operator series the chart's invariant alerts read
//! (`files/roomkeeper-nodes.rules.yaml`, group `roomkeeper-operator-view.alerts`).
//!
//! The commit audit rests on Raft's election restriction: a leader elected
//! by a quorum holds every entry that was committed before it, so the log of
//! a current leader never ends below a commit index an earlier leader
//! reported. When it does, committed entries — orders the cluster
//! acknowledged — are gone (a majority of volumes lost or rolled back, a
//! group bootstrapped again over old data, a disk that lied about fsync).
//! Only a leader that heard from a quorum within [`LEADER_FRESH_MS`] counts:
//! a deposed leader cut off in a minority may still claim the role with a
//! shorter log. What it cannot see: losses while no operator watched (the
//! high-water mark lives in the operator process), and losses that a later
//! leader's log covers again before the operator looks (it compares indexes,
//! not entries).

use std::collections::BTreeMap;

use roomkeeper_api::admin::NodeStatus;
use roomkeeper_api::NodeId;
use roomkeeper_control::observation::ClusterObservation;
use roomkeeper_control::ControlLoop;
use roomkeeper_playbook::health::RegionVisibility;

use crate::controller::Context;
use crate::crd::LiveRoomCluster;
use crate::plan::PodView;

/// A leader counts for the audit only if a quorum acknowledged it this recently.
pub const LEADER_FRESH_MS: u64 = 5_000;

/// Committed entries a leader's log does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitLoss {
    /// The commit index a leader reported before.
    pub committed_before: u64,
    /// The current leader, its term and the end of its log.
    pub leader: NodeId,
    pub term: u64,
    pub last_log_index: u64,
    /// `committed_before - last_log_index`.
    pub lost_entries: u64,
}

impl std::fmt::Display for CommitLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "leader node {} (term {}) holds a log up to index {}, but a leader had reported index {} committed: {} committed entries (acknowledged writes) are missing",
            self.leader, self.term, self.last_log_index, self.committed_before, self.lost_entries
        )
    }
}

/// The current leader among `statuses`: claims the role, heard from a quorum
/// within [`LEADER_FRESH_MS`], highest term.
fn fresh_leader<'a>(statuses: &[&'a NodeStatus]) -> Option<&'a NodeStatus> {
    statuses
        .iter()
        .copied()
        .filter(|s| s.claims_leadership())
        .filter(|s| {
            s.millis_since_quorum_ack
                .is_some_and(|ms| ms <= LEADER_FRESH_MS)
        })
        .max_by_key(|s| s.term)
}

/// One audit step: `high` is the highest commit index a leader reported so
/// far. Returns the next high-water mark and the loss, if the current
/// leader's log ends below `high`. After a loss the mark restarts at the
/// current leader's commit index, so one loss is reported once.
pub fn audit_commits(high: u64, statuses: &[&NodeStatus]) -> (u64, Option<CommitLoss>) {
    let Some(leader) = fresh_leader(statuses) else {
        return (high, None);
    };
    if leader.last_log_index < high {
        let loss = CommitLoss {
            committed_before: high,
            leader: leader.node_id,
            term: leader.term,
            last_log_index: leader.last_log_index,
            lost_entries: high - leader.last_log_index,
        };
        return (leader.committed_index, Some(loss));
    }
    (high.max(leader.committed_index), None)
}

/// After a playbook tick: the operator's own view of the cluster as series,
/// and a Warning Event when the commit audit finds acknowledged writes lost.
pub async fn after_tick(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    (ns, cluster): (&str, &str),
    views: &[PodView],
    control: &ControlLoop,
    obs: &ClusterObservation,
) {
    let snap = control.snapshot(obs, &BTreeMap::new());
    ctx.metrics
        .set_regions(ns, cluster, RegionVisibility::of(&snap));
    ctx.metrics
        .set_approvals(ns, cluster, control.memory(), obs.at_ms);
    let statuses: Vec<&NodeStatus> = views.iter().filter_map(|v| v.status.as_ref()).collect();
    if let Some(loss) = ctx.metrics.audit_commits(ns, cluster, &statuses) {
        tracing::error!(%ns, %cluster, %loss, "committed Raft entries lost");
        ctx.event_for(lrc, true, "CommittedEntriesLost", loss.to_string())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, role: &str, term: u64, last: u64, committed: u64) -> NodeStatus {
        let leader = role == roomkeeper_api::admin::role::LEADER;
        NodeStatus {
            node_id: id,
            role: role.into(),
            term,
            leader_id: leader.then_some(id),
            last_log_index: last,
            committed_index: committed,
            applied_index: committed,
            millis_since_quorum_ack: leader.then_some(40),
            voters: vec![1, 2, 3],
            ..Default::default()
        }
    }

    const L: &str = roomkeeper_api::admin::role::LEADER;
    const F: &str = roomkeeper_api::admin::role::FOLLOWER;

    #[test]
    fn a_new_leader_with_every_committed_entry_is_no_loss() {
        let old = node(1, L, 3, 120, 118);
        let (high, loss) = audit_commits(0, &[&old, &node(2, F, 3, 118, 118)]);
        assert_eq!((high, loss), (118, None));
        // Node 1 dies; node 2 wins with the committed entries (its commit
        // index still trails until it commits in its own term).
        let new = node(2, L, 4, 119, 100);
        assert_eq!(audit_commits(high, &[&new]), (118, None));
    }

    #[test]
    fn a_leader_whose_log_ends_below_the_commit_mark_lost_entries_once() {
        let (high, _) = audit_commits(0, &[&node(1, L, 3, 500, 500)]);
        // A majority came back from old volumes: the new leader's log is shorter.
        let new = node(2, L, 5, 420, 420);
        let (high, loss) = audit_commits(high, &[&new]);
        let loss = loss.expect("a loss");
        assert_eq!(loss.lost_entries, 80);
        assert_eq!((loss.leader, loss.committed_before), (2, 500));
        assert!(loss.to_string().contains("80 committed entries"), "{loss}");
        // Reported once: the mark restarts at the new leader's commit index.
        assert_eq!(high, 420);
        assert_eq!(audit_commits(high, &[&new]), (420, None));
    }

    #[test]
    fn a_stale_or_unconfirmed_leader_is_not_evidence() {
        let (high, _) = audit_commits(0, &[&node(1, L, 3, 500, 500)]);
        // A deposed leader in a minority still says leader, but no quorum
        // answered it for a minute.
        let mut stale = node(3, L, 2, 300, 300);
        stale.millis_since_quorum_ack = Some(60_000);
        assert_eq!(audit_commits(high, &[&stale]), (500, None));
        // Two claimants: the higher term is the leader.
        let current = node(2, L, 6, 510, 505);
        let mut old = node(3, L, 2, 300, 300);
        old.millis_since_quorum_ack = Some(10);
        assert_eq!(audit_commits(high, &[&old, &current]), (505, None));
        // No leader at all changes nothing.
        assert_eq!(audit_commits(high, &[&node(2, F, 6, 10, 10)]), (500, None));
    }
}
