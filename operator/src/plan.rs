//! The next Raft membership step, as a pure function of what the operator sees.
//!
//! One change at a time, in a safe order: bootstrap once; add learners; promote
//! caught-up learners; only then remove voters, never leaving fewer live voters
//! than a quorum of the new configuration, and never removing the leader (its
//! leadership is transferred first). Rolling restarts take one pod at a time,
//! only while every voter is live, followers before the leader.

use std::collections::{BTreeMap, BTreeSet};

use roomkeeper_api::{NodeInfo, NodeStatus};

use crate::nodes::node_info;
use crate::resources::Slot;

/// A learner is promoted only this close to the leader's log.
pub const PROMOTE_MAX_LAG: u64 = 1_000;
/// A voter counts as live when it acknowledged the leader this recently.
pub const LIVE_ACK_MS: u64 = 3_000;

/// One pod of the cluster as the operator sees it.
#[derive(Clone, Debug, Default)]
pub struct PodView {
    pub pod: String,
    pub region: String,
    pub zone: String,
    pub ip: Option<String>,
    /// The node id the identity map gives the pod.
    pub id: Option<u64>,
    /// The node's own admin status, when it answered.
    pub status: Option<NodeStatus>,
    /// Being deleted.
    pub deleting: bool,
    /// Runs an older pod template than the StatefulSet's.
    pub outdated: bool,
    /// The pod's Ready condition (its node answers /readyz).
    pub ready: bool,
    /// The node is quarantined: it was this node id, which has been a Raft
    /// member, and its volume is empty (D11).
    pub wiped: Option<u64>,
}

impl PodView {
    fn info(&self) -> Option<NodeInfo> {
        self.ip
            .as_deref()
            .map(|ip| node_info(ip, &self.region, &self.zone))
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Initialize the Raft group on `via` with every voter slot.
    Bootstrap {
        via: String,
        members: BTreeMap<u64, NodeInfo>,
    },
    AddLearner {
        id: u64,
        pod: String,
        node: NodeInfo,
    },
    Promote {
        id: u64,
        pod: String,
    },
    /// Remove a voter or a learner from the group (a voter is not kept as a
    /// learner; if its slot still wants a learner, it is added back as one).
    Remove {
        id: u64,
        voter: bool,
    },
    TransferLeader {
        to: u64,
        reason: String,
    },
    /// A member's pod came back with another IP: record its new addresses
    /// (region and zone as the group knows them).
    UpdateAddresses {
        id: u64,
        pod: String,
        node: NodeInfo,
    },
    /// No leader, and members answer from addresses the group does not know
    /// (their pods moved): tell every node where they are (node-local, no
    /// Raft), so an election can happen; the new leader then records them.
    SeedPeerAddresses {
        raft_addrs: BTreeMap<u64, String>,
    },
    /// A member's volume was wiped: take its id out of the group for good.
    RemoveWiped {
        id: u64,
        pod: String,
        voter: bool,
    },
    /// The wiped member is out of the group: retire its id, give the pod a new
    /// one and restart it, so it joins as a new node.
    ReplaceWiped {
        pod: String,
        id: u64,
    },
    /// Delete the pod so the StatefulSet recreates it from the new template.
    RestartForUpdate {
        pod: String,
    },
    /// Nothing can safely be done now.
    Wait(String),
    /// Membership and pods match the spec.
    Converged,
}

/// The leader's view: membership, term, commit index and follower progress.
/// The leader is chosen by the one rule every plane uses
/// ([`roomkeeper_api::leader_of`]): a stale claim from an older term loses.
pub fn leader(pods: &[PodView]) -> Option<(&PodView, &NodeStatus)> {
    let s = roomkeeper_api::leader_of(pods.iter().filter_map(|p| p.status.as_ref()))?;
    let pod = pods
        .iter()
        .find(|p| p.status.as_ref().is_some_and(|x| x.node_id == s.node_id))?;
    Some((pod, s))
}

fn live(leader: &NodeStatus, id: u64) -> bool {
    if id == leader.node_id {
        return true;
    }
    leader
        .replication
        .get(&id.to_string())
        .and_then(|r| r.millis_since_ack)
        .is_some_and(|ms| ms <= LIVE_ACK_MS)
}

fn lag(leader: &NodeStatus, id: u64) -> Option<u64> {
    if id == leader.node_id {
        return Some(0);
    }
    leader.replication.get(&id.to_string()).map(|r| r.lag)
}

/// Would the voter set still have a live quorum without `id`?
fn quorum_without(leader: &NodeStatus, voters: &BTreeSet<u64>, id: u64) -> bool {
    let rest: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
    if rest.is_empty() {
        return false;
    }
    let live_rest = rest.iter().filter(|v| live(leader, **v)).count();
    live_rest > rest.len() / 2
}

/// Where every node that answers as its own id is now, when some node's
/// membership records another address for one of them; empty otherwise.
fn moved_members(pods: &[PodView]) -> BTreeMap<u64, String> {
    let here: BTreeMap<u64, String> = pods
        .iter()
        .filter(|p| !p.deleting)
        .filter_map(|p| {
            let s = p.status.as_ref()?;
            (p.id == Some(s.node_id)).then_some((s.node_id, p.info()?.raft_addr))
        })
        .collect();
    let stale = pods.iter().filter_map(|p| p.status.as_ref()).any(|s| {
        here.iter().any(|(id, addr)| {
            s.members
                .get(&id.to_string())
                .is_some_and(|known| known.raft_addr != *addr)
        })
    });
    if stale {
        here
    } else {
        BTreeMap::new()
    }
}

/// Plans the next step. `slots` carry their assigned ids; `bootstrapped` is the
/// operator's record that it initialized the group before.
pub fn next_step(slots: &[(Slot, u64)], pods: &[PodView], bootstrapped: bool) -> Step {
    let by_pod: BTreeMap<&str, &PodView> = pods.iter().map(|p| (p.pod.as_str(), p)).collect();
    let initialized = pods
        .iter()
        .any(|p| p.status.as_ref().is_some_and(|s| !s.voters.is_empty()));
    if !initialized {
        if bootstrapped {
            return Step::Wait(
                "no node reports a Raft membership although the group was bootstrapped; \
                 refusing to bootstrap twice (see runbooks/operator-no-membership.md)"
                    .into(),
            );
        }
        let voters: Vec<&(Slot, u64)> = slots.iter().filter(|(s, _)| s.voter).collect();
        let mut members = BTreeMap::new();
        let mut waiting = Vec::new();
        for (slot, id) in &voters {
            match by_pod.get(slot.pod.as_str()) {
                Some(p) if p.status.is_some() && !p.deleting => {
                    if let Some(info) = p.info() {
                        members.insert(*id, info);
                    }
                }
                _ => waiting.push(slot.pod.clone()),
            }
        }
        if !waiting.is_empty() || members.is_empty() {
            return Step::Wait(format!(
                "bootstrap waits for voter pods to answer: {}",
                waiting.join(", ")
            ));
        }
        let via = voters
            .iter()
            .min_by_key(|(_, id)| *id)
            .map(|(s, _)| s.pod.clone())
            .unwrap_or_default();
        return Step::Bootstrap { via, members };
    }
    let Some((leader_pod, ls)) = leader(pods) else {
        let seeds = moved_members(pods);
        if !seeds.is_empty() {
            return Step::SeedPeerAddresses { raft_addrs: seeds };
        }
        return Step::Wait("no leader elected yet".into());
    };
    let voters: BTreeSet<u64> = ls.voters.iter().copied().collect();
    let learners: BTreeSet<u64> = ls.learners.iter().copied().collect();
    let members: BTreeSet<u64> = voters.union(&learners).copied().collect();
    let desired_voters: BTreeSet<u64> = slots
        .iter()
        .filter(|(s, _)| s.voter)
        .map(|(_, id)| *id)
        .collect();
    let desired_all: BTreeSet<u64> = slots.iter().map(|(_, id)| *id).collect();

    // 0. A member whose volume was wiped stays out of Raft: its id leaves the
    //    group (it can never come back as that id), then its pod gets a new id.
    for p in pods {
        let Some(old) = p.wiped else { continue };
        if members.contains(&old) && old != ls.node_id {
            let voter = voters.contains(&old);
            if voter && !quorum_without(ls, &voters, old) {
                return Step::Wait(format!(
                    "node {old} ({}) lost its volume; removing it now would leave no live quorum",
                    p.pod
                ));
            }
            return Step::RemoveWiped {
                id: old,
                pod: p.pod.clone(),
                voter,
            };
        }
        if !members.contains(&old) && !p.deleting {
            return Step::ReplaceWiped {
                pod: p.pod.clone(),
                id: old,
            };
        }
    }

    // 0b. A member whose pod came back with another IP (pods get new IPs when
    //     recreated) is unreachable at its recorded addresses: record the new
    //     ones, only for a node that answers as that id.
    for p in pods {
        let (Some(id), Some(s), Some(now)) = (p.id, p.status.as_ref(), p.info()) else {
            continue;
        };
        if p.deleting || s.node_id != id {
            continue;
        }
        let Some(known) = ls.members.get(&id.to_string()) else {
            continue;
        };
        if known.raft_addr != now.raft_addr
            || known.api_addr != now.api_addr
            || known.admin_addr != now.admin_addr
        {
            return Step::UpdateAddresses {
                id,
                pod: p.pod.clone(),
                node: NodeInfo {
                    region: known.region.clone(),
                    zone: known.zone.clone(),
                    ..now
                },
            };
        }
    }

    // 1. Add every wanted node as a learner first (voter slots first).
    let mut ordered: Vec<&(Slot, u64)> = slots.iter().collect();
    ordered.sort_by_key(|(s, id)| (!s.voter, *id));
    for (slot, id) in &ordered {
        if members.contains(id) {
            continue;
        }
        if let Some(p) = by_pod.get(slot.pod.as_str()) {
            if p.status.is_some() && !p.deleting && p.id == Some(*id) {
                if let Some(node) = p.info() {
                    return Step::AddLearner {
                        id: *id,
                        pod: slot.pod.clone(),
                        node,
                    };
                }
            }
        }
    }
    // 2. Promote caught-up learners that should vote.
    for id in desired_voters.intersection(&learners) {
        if lag(ls, *id).is_some_and(|l| l <= PROMOTE_MAX_LAG) && live(ls, *id) {
            let pod = slots
                .iter()
                .find(|(_, i)| i == id)
                .map(|(s, _)| s.pod.clone())
                .unwrap_or_default();
            return Step::Promote { id: *id, pod };
        }
    }
    // 3. Remove voters that should not vote, once every wanted voter votes; one
    //    at a time, dead ones first, never below a live quorum, the leader last
    //    (after handing leadership over).
    let leaving: Vec<u64> = voters.difference(&desired_voters).copied().collect();
    if !leaving.is_empty() {
        if !desired_voters.is_subset(&voters) {
            return Step::Wait(format!(
                "voters {leaving:?} leave once the new voters {:?} vote",
                desired_voters.difference(&voters).collect::<Vec<_>>()
            ));
        }
        let mut candidates: Vec<u64> = leaving
            .iter()
            .copied()
            .filter(|v| *v != ls.node_id)
            .collect();
        candidates.sort_by_key(|v| (live(ls, *v), *v));
        for id in &candidates {
            if quorum_without(ls, &voters, *id) {
                return Step::Remove {
                    id: *id,
                    voter: true,
                };
            }
        }
        if leaving.contains(&ls.node_id) && candidates.is_empty() {
            let to = desired_voters
                .iter()
                .copied()
                .filter(|v| *v != ls.node_id && live(ls, *v))
                .min_by_key(|v| lag(ls, *v).unwrap_or(u64::MAX));
            return match to {
                Some(to) => Step::TransferLeader {
                    to,
                    reason: format!("leader {} is leaving the voters", ls.node_id),
                },
                None => Step::Wait(format!(
                    "leader {} must leave but no live voter can take over",
                    ls.node_id
                )),
            };
        }
        return Step::Wait(format!(
            "removing any of voters {leaving:?} now would leave no live quorum"
        ));
    }
    // 4. Remove learners nobody wants.
    if let Some(id) = learners.difference(&desired_all).next() {
        return Step::Remove {
            id: *id,
            voter: false,
        };
    }
    // Membership matches; wait for voters still joining before anything else.
    if desired_voters != voters {
        return Step::Wait(format!(
            "voters are {voters:?}, want {desired_voters:?}: waiting for pods to answer and catch up"
        ));
    }
    // 5. Rolling restart of outdated pods: one at a time, all voters live and
    //    caught up, followers first, the leader only after leadership moved.
    let outdated: Vec<&PodView> = pods.iter().filter(|p| p.outdated && !p.deleting).collect();
    if outdated.is_empty() {
        return Step::Converged;
    }
    if pods.iter().any(|p| p.deleting) {
        return Step::Wait("a pod is restarting".into());
    }
    if let Some(p) = pods
        .iter()
        .find(|p| p.id.is_some_and(|id| members.contains(&id)) && !p.ready)
    {
        return Step::Wait(format!(
            "rolling restart waits until {} is ready again",
            p.pod
        ));
    }
    // Every voter must have a pod that exists, is not terminating, is Ready and
    // whose node answers as that voter: a pod between its deletion and its
    // recreation is in no list, and the leader may still count it live.
    for v in &voters {
        let up = pods.iter().any(|p| {
            p.id == Some(*v)
                && !p.deleting
                && p.ready
                && p.status.as_ref().is_some_and(|s| s.node_id == *v)
        });
        if !up {
            return Step::Wait(format!(
                "rolling restart waits until voter {v} is back and ready"
            ));
        }
    }
    let all_live = voters
        .iter()
        .all(|v| live(ls, *v) && lag(ls, *v).is_some_and(|l| l <= PROMOTE_MAX_LAG));
    if !all_live {
        return Step::Wait("rolling restart waits until every voter is live and caught up".into());
    }
    if let Some(p) = outdated.iter().find(|p| p.pod != leader_pod.pod) {
        return Step::RestartForUpdate { pod: p.pod.clone() };
    }
    let to = voters
        .iter()
        .copied()
        .filter(|v| *v != ls.node_id)
        .min_by_key(|v| lag(ls, *v).unwrap_or(u64::MAX));
    match to {
        Some(to) => Step::TransferLeader {
            to,
            reason: format!("{} restarts for an update", leader_pod.pod),
        },
        None => Step::RestartForUpdate {
            pod: leader_pod.pod.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_api::ReplicationProgress;

    fn slot(pod: &str, voter: bool) -> Slot {
        Slot {
            pod: pod.into(),
            region: "r".into(),
            ordinal: 0,
            voter,
            zone: None,
        }
    }

    fn status(id: u64, leader: Option<u64>, voters: &[u64], learners: &[u64]) -> NodeStatus {
        serde_json::from_value(serde_json::json!({
            "node_id": id, "region": "r", "zone": "z",
            "role": if leader == Some(id) { "leader" } else { "follower" },
            "term": 3, "leader_id": leader, "last_log_index": 50, "committed_index": 50,
            "applied_index": 50, "snapshot_index": 0, "purged_index": 0,
            "millis_since_quorum_ack": 5, "voters": voters, "learners": learners,
            "members": {}, "replication": {}, "orders": 0, "sales_paused": false,
            "test_faults_enabled": false
        }))
        .unwrap()
    }

    fn pod(name: &str, id: u64, s: Option<NodeStatus>) -> PodView {
        PodView {
            pod: name.into(),
            region: "r".into(),
            zone: "z".into(),
            ip: Some(format!("10.0.0.{id}")),
            id: Some(id),
            status: s,
            ready: true,
            ..PodView::default()
        }
    }

    fn with_followers(mut s: NodeStatus, followers: &[(u64, u64, u64)]) -> NodeStatus {
        for (id, lag, ack) in followers {
            s.replication.insert(
                id.to_string(),
                ReplicationProgress {
                    matched_index: Some(50u64.saturating_sub(*lag)),
                    lag: *lag,
                    millis_since_ack: Some(*ack),
                },
            );
        }
        s
    }

    fn fresh(id: u64) -> NodeStatus {
        let mut s = status(id, None, &[], &[]);
        s.last_log_index = 0;
        s.fresh_data_dir = true;
        s
    }

    #[test]
    fn bootstrap_waits_for_every_voter_then_uses_the_lowest_id() {
        let slots = vec![
            (slot("a", true), 1),
            (slot("b", true), 2),
            (slot("c", true), 3),
        ];
        let pods = vec![pod("a", 1, Some(fresh(1))), pod("b", 2, Some(fresh(2)))];
        assert!(matches!(next_step(&slots, &pods, false), Step::Wait(_)));
        let mut pods = pods;
        pods.push(pod("c", 3, Some(fresh(3))));
        match next_step(&slots, &pods, false) {
            Step::Bootstrap { via, members } => {
                assert_eq!(via, "a");
                assert_eq!(members.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
            }
            other => panic!("{other:?}"),
        }
        // Never twice.
        assert!(matches!(next_step(&slots, &pods, true), Step::Wait(_)));
    }

    fn three_voters(extra_slots: &[(&str, bool, u64)]) -> (Vec<(Slot, u64)>, Vec<PodView>) {
        let mut slots = vec![
            (slot("a", true), 1),
            (slot("b", true), 2),
            (slot("c", true), 3),
        ];
        for (p, v, id) in extra_slots {
            slots.push((slot(p, *v), *id));
        }
        let ls = with_followers(
            status(1, Some(1), &[1, 2, 3], &[]),
            &[(2, 0, 10), (3, 0, 10)],
        );
        let pods = vec![
            pod("a", 1, Some(ls)),
            pod("b", 2, Some(status(2, Some(1), &[1, 2, 3], &[]))),
            pod("c", 3, Some(status(3, Some(1), &[1, 2, 3], &[]))),
        ];
        (slots, pods)
    }

    #[test]
    fn scale_up_adds_a_learner_then_promotes_it() {
        let (slots, mut pods) = three_voters(&[("d", true, 4), ("e", true, 5)]);
        pods.push(pod("d", 4, Some(fresh(4))));
        assert!(matches!(
            next_step(&slots, &pods, true),
            Step::AddLearner { id: 4, .. }
        ));
        // Learner 4 joined and caught up: promote it.
        let ls = with_followers(
            status(1, Some(1), &[1, 2, 3], &[4]),
            &[(2, 0, 10), (3, 0, 10), (4, 0, 10)],
        );
        pods[0].status = Some(ls);
        pods[3].status = Some(status(4, Some(1), &[1, 2, 3], &[4]));
        assert_eq!(
            next_step(&slots, &pods, true),
            Step::Promote {
                id: 4,
                pod: "d".into()
            }
        );
    }

    #[test]
    fn a_lagging_learner_is_not_promoted() {
        let (slots, mut pods) = three_voters(&[("d", true, 4)]);
        let ls = with_followers(
            status(1, Some(1), &[1, 2, 3], &[4]),
            &[(2, 0, 10), (3, 0, 10), (4, 5_000, 10)],
        );
        pods[0].status = Some(ls);
        pods.push(pod("d", 4, Some(status(4, Some(1), &[1, 2, 3], &[4]))));
        assert!(matches!(next_step(&slots, &pods, true), Step::Wait(_)));
    }

    #[test]
    fn scale_down_removes_one_voter_and_never_below_quorum() {
        let (mut slots, mut pods) = three_voters(&[]);
        slots.truncate(1); // want only voter 1 (an invalid spec, but the planner must stay safe)
                           // Node 3 is dead: removing 2 would leave {1,3} with one live voter.
        let ls = with_followers(
            status(1, Some(1), &[1, 2, 3], &[]),
            &[(2, 0, 10), (3, 0, 60_000)],
        );
        pods[0].status = Some(ls);
        match next_step(&slots, &pods, true) {
            Step::Remove { id: 3, voter: true } => {}
            other => panic!("{other:?}"),
        }
        // Both others dead: nothing may be removed.
        let ls = with_followers(
            status(1, Some(1), &[1, 2, 3], &[]),
            &[(2, 0, 60_000), (3, 0, 60_000)],
        );
        pods[0].status = Some(ls);
        assert!(matches!(next_step(&slots, &pods, true), Step::Wait(_)));
    }

    #[test]
    fn a_leaving_leader_transfers_leadership_first() {
        let (mut slots, pods) = three_voters(&[("d", true, 4)]);
        slots.remove(0); // voter 1 (the leader) is no longer wanted
        let mut pods = pods;
        let ls = with_followers(
            status(1, Some(1), &[1, 2, 3, 4], &[]),
            &[(2, 0, 10), (3, 0, 10), (4, 0, 10)],
        );
        pods[0].status = Some(ls);
        pods.push(pod("d", 4, Some(status(4, Some(1), &[1, 2, 3, 4], &[]))));
        assert!(matches!(
            next_step(&slots, &pods, true),
            Step::TransferLeader { .. }
        ));
    }

    #[test]
    fn a_wiped_member_leaves_the_group_then_its_pod_gets_a_new_id() {
        let (slots, mut pods) = three_voters(&[]);
        // Node 3's volume was wiped: it answers no status, only quarantine.
        let ls = with_followers(
            status(1, Some(1), &[1, 2, 3], &[]),
            &[(2, 0, 10), (3, 40, 9_000)],
        );
        pods[0].status = Some(ls);
        pods[2].status = None;
        pods[2].wiped = Some(3);
        pods[2].ready = false;
        assert_eq!(
            next_step(&slots, &pods, true),
            Step::RemoveWiped {
                id: 3,
                pod: "c".into(),
                voter: true
            }
        );
        // Out of the group: the pod is replaced under a new id.
        let ls = with_followers(status(1, Some(1), &[1, 2], &[]), &[(2, 0, 10)]);
        pods[0].status = Some(ls);
        assert_eq!(
            next_step(&slots, &pods, true),
            Step::ReplaceWiped {
                pod: "c".into(),
                id: 3
            }
        );
        // While the pod restarts, nothing else is done for it.
        pods[2].deleting = true;
        assert!(matches!(next_step(&slots, &pods, true), Step::Wait(_)));
    }

    #[test]
    fn a_member_with_a_new_pod_ip_gets_its_addresses_recorded() {
        let (slots, mut pods) = three_voters(&[]);
        let mut ls = with_followers(
            status(1, Some(1), &[1, 2, 3], &[]),
            &[(2, 0, 10), (3, 40, 9_000)],
        );
        for (id, ip) in [(1, "10.0.0.1"), (2, "10.0.0.2"), (3, "10.0.0.3")] {
            ls.members
                .insert(id.to_string(), node_info(ip, "r", &format!("zone-{id}")));
        }
        pods[0].status = Some(ls);
        assert_eq!(next_step(&slots, &pods, true), Step::Converged);
        // Pod c was recreated and got another IP; its node answers as 3.
        pods[2].ip = Some("10.0.0.33".into());
        match next_step(&slots, &pods, true) {
            Step::UpdateAddresses { id: 3, pod, node } => {
                assert_eq!(pod, "c");
                assert_eq!(node.raft_addr, node_info("10.0.0.33", "r", "z").raft_addr);
                assert_eq!(node.zone, "zone-3", "region and zone stay as recorded");
            }
            other => panic!("{other:?}"),
        }
        // A node answering under another id is never recorded at that IP.
        pods[2].status = Some(status(7, Some(1), &[1, 2, 3], &[]));
        assert_ne!(
            std::mem::discriminant(&next_step(&slots, &pods, true)),
            std::mem::discriminant(&Step::UpdateAddresses {
                id: 0,
                pod: String::new(),
                node: node_info("x", "r", "z"),
            })
        );
    }

    #[test]
    fn a_leaderless_group_whose_members_moved_is_told_where_they_are() {
        let (slots, mut pods) = three_voters(&[]);
        // Every pod came back on a new IP: nobody leads, every node still
        // lists the old addresses.
        for (i, p) in pods.iter_mut().enumerate() {
            let id = i as u64 + 1;
            let mut s = status(id, None, &[1, 2, 3], &[]);
            for old in 1..=3u64 {
                s.members.insert(
                    old.to_string(),
                    node_info(&format!("10.0.0.{old}"), "r", "z"),
                );
            }
            p.status = Some(s);
            p.ip = Some(format!("10.0.1.{id}"));
        }
        match next_step(&slots, &pods, true) {
            Step::SeedPeerAddresses { raft_addrs } => {
                assert_eq!(raft_addrs.len(), 3);
                assert_eq!(raft_addrs[&2], node_info("10.0.1.2", "r", "z").raft_addr);
            }
            other => panic!("{other:?}"),
        }
        // Where they are is where the group thinks: just wait for the election.
        for (i, p) in pods.iter_mut().enumerate() {
            p.ip = Some(format!("10.0.0.{}", i + 1));
        }
        assert!(matches!(next_step(&slots, &pods, true), Step::Wait(_)));
    }

    #[test]
    fn a_wiped_voter_is_not_removed_below_a_live_quorum() {
        let (slots, mut pods) = three_voters(&[]);
        let ls = with_followers(
            status(1, Some(1), &[1, 2, 3], &[]),
            &[(2, 0, 60_000), (3, 0, 60_000)],
        );
        pods[0].status = Some(ls);
        pods[2].status = None;
        pods[2].wiped = Some(3);
        match next_step(&slots, &pods, true) {
            Step::Wait(why) => assert!(why.contains("lost its volume"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rolling_restart_goes_follower_first_and_moves_the_leader_last() {
        let (slots, mut pods) = three_voters(&[]);
        assert_eq!(next_step(&slots, &pods, true), Step::Converged);
        pods[0].outdated = true;
        pods[1].outdated = true;
        assert_eq!(
            next_step(&slots, &pods, true),
            Step::RestartForUpdate { pod: "b".into() }
        );
        pods[1].outdated = false;
        assert!(matches!(
            next_step(&slots, &pods, true),
            Step::TransferLeader { .. }
        ));
        // Not while a voter is down.
        let ls = with_followers(
            status(1, Some(1), &[1, 2, 3], &[]),
            &[(2, 0, 10), (3, 0, 60_000)],
        );
        pods[0].status = Some(ls);
        assert!(matches!(next_step(&slots, &pods, true), Step::Wait(_)));
    }
}
