//! Who leads, decided once for every reader.
//!
//! A node's claim to lead is only as good as its term: a former leader that
//! was cut off (or paused, or restarted from an old snapshot of its state)
//! can keep saying "leader" for a term the rest of the group has left. Of the
//! nodes that claim leadership, the one with the highest term wins; a claim
//! older than the highest term any node reports is ignored, because a newer
//! term means an election happened after it.

use crate::admin::NodeStatus;

/// The leader among these answers: the node claiming leadership in the
/// highest term, provided no node reports a newer term (then the claim is
/// stale and the group has no known leader yet).
pub fn leader_of<'a, I>(statuses: I) -> Option<&'a NodeStatus>
where
    I: IntoIterator<Item = &'a NodeStatus>,
{
    let mut newest_term = 0;
    let mut best: Option<&'a NodeStatus> = None;
    for s in statuses {
        newest_term = newest_term.max(s.term);
        if s.claims_leadership() && best.is_none_or(|b| s.term > b.term) {
            best = Some(s);
        }
    }
    best.filter(|b| b.term >= newest_term)
}

/// Whose membership to believe: the leader's, else the answer with the
/// newest term (ties: the one that has applied the most).
pub fn membership_of<'a, I>(statuses: I) -> Option<&'a NodeStatus>
where
    I: IntoIterator<Item = &'a NodeStatus> + Clone,
{
    leader_of(statuses.clone()).or_else(|| {
        statuses
            .into_iter()
            .max_by_key(|s| (s.term, s.applied_index))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::role;

    fn status(id: u64, role: &str, term: u64, leader: Option<u64>) -> NodeStatus {
        NodeStatus {
            node_id: id,
            role: role.into(),
            term,
            leader_id: leader,
            ..NodeStatus::default()
        }
    }

    #[test]
    fn the_claim_with_the_highest_term_leads() {
        let s = [
            status(1, role::LEADER, 3, Some(1)),
            status(2, role::LEADER, 5, Some(2)),
            status(3, role::FOLLOWER, 5, Some(2)),
        ];
        assert_eq!(leader_of(&s).map(|s| s.node_id), Some(2));
    }

    #[test]
    fn a_restarted_former_leader_with_an_old_term_is_not_the_leader() {
        // Node 1 led in term 3, was cut off, and still says so; the others
        // moved on to term 4 and have not elected anyone yet.
        let s = [
            status(1, role::LEADER, 3, Some(1)),
            status(2, role::CANDIDATE, 4, None),
            status(3, role::FOLLOWER, 4, None),
        ];
        assert!(leader_of(&s).is_none());
    }

    #[test]
    fn a_node_that_names_another_leader_is_not_a_leader() {
        let s = [status(1, role::LEADER, 3, Some(2))];
        assert!(leader_of(&s).is_none());
    }

    #[test]
    fn membership_comes_from_the_leader_else_the_newest_term() {
        let mut a = status(1, role::FOLLOWER, 2, None);
        a.voters = vec![1, 2, 3];
        let mut b = status(2, role::FOLLOWER, 4, None);
        b.voters = vec![2, 3, 4];
        let s = [a.clone(), b.clone()];
        assert_eq!(
            membership_of(&s).map(|s| s.voters.clone()),
            Some(vec![2, 3, 4])
        );
        let mut l = status(3, role::LEADER, 4, Some(3));
        l.voters = vec![3, 4, 5];
        let s = [a, b, l];
        assert_eq!(
            membership_of(&s).map(|s| s.voters.clone()),
            Some(vec![3, 4, 5])
        );
    }
}
