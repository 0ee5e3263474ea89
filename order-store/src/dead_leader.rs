//! Failing over at once from a leader whose process is gone (decision D49).
//!
//! openraft's followers keep a lease on their leader: for
//! `election_timeout_max` after its last append they refuse every vote and
//! pre-vote, so that a leader may answer reads from its own state. A leader
//! that was killed therefore costs one election timeout to notice and often a
//! second one before a vote can succeed (~0.5–1.1 s without orders). A crashed
//! process leaves a sharper trace than silence, though: its Raft port refuses
//! connections (the kernel answers a connect with a reset). This module turns
//! that trace into a fast, safe election:
//!
//! - **The candidate.** A follower whose leader has sent nothing for
//!   [`Timings::candidate_after`] and whose Raft port refuses a TCP connect
//!   starts an election without a pre-vote round, after a delay that grows
//!   with its rank among the remaining voters (so the voters do not split
//!   their votes). Once per leader and term.
//! - **The voter.** A vote request that arrives while this node's leader has
//!   sent nothing for [`Timings::voter_after`] and refuses a TCP connect is
//!   passed to openraft as if the leader had handed over
//!   (`leadership_transfer`), which lifts the lease for that one request.
//!   Partitions, paused processes and lost hosts leave the port silent, not
//!   refusing: they keep the ordinary lease and election timeout.
//! - **The leader's reads.** The one place the store trusts its lease is the
//!   early refusal of orders that must fail (`precheck`). It asks that a
//!   quorum acknowledged a message sent within [`Timings::precheck_fresh`]
//!   before the request arrived (waiting for a heartbeat round if not), which
//!   is shorter than `voter_after`: any voter whose acknowledgement made that
//!   quorum waits longer than that before it votes for anyone, so no new
//!   leader exists while an old one answers from its state.
//!
//! The thresholds derive from `election_timeout_min` (E): the precheck trusts
//! acknowledgements younger than E/2, a voter lifts the lease after 5E/8 of
//! silence, a candidate starts one poll (E/20) later. The margin between E/2
//! and 5E/8 covers clock-rate drift and the rounding of the silence clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::raft::VoteRequest;
use openraft::ServerState;

use crate::metrics::NodeMetrics;
use crate::raft_types::{NodeId, Raft, TypeConfig};

/// How long a connect to the leader's Raft port may take before its answer
/// counts as silence (which proves nothing).
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// A silent leader's port is probed at most this often by the watch (a
/// paused or partitioned leader would otherwise collect a connection per
/// poll in its accept queue).
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// The thresholds, all derived from the election timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// The precheck answers from local state only if a quorum acknowledged
    /// this leader within this long.
    pub precheck_fresh: Duration,
    /// A voter lifts the lease for a vote after this much silence from a
    /// leader whose port refuses connections.
    pub voter_after: Duration,
    /// A follower starts an election after this much silence from a leader
    /// whose port refuses connections (plus its rank's delay).
    pub candidate_after: Duration,
    /// Added per rank among the remaining voters before a candidate starts.
    pub rank_delay: Duration,
    /// How often followers look at their leader's silence.
    pub poll: Duration,
}

impl Timings {
    /// The thresholds for an election timeout of `election_timeout_min_ms`
    /// and a heartbeat of `heartbeat_ms`.
    pub fn new(election_timeout_min_ms: u64, heartbeat_ms: u64) -> Self {
        let e = election_timeout_min_ms.max(16);
        let poll = Duration::from_millis((e / 20).clamp(5, 25));
        let voter_after = Duration::from_millis(e / 2 + e / 8);
        Self {
            precheck_fresh: Duration::from_millis(e / 2),
            voter_after,
            candidate_after: voter_after + poll,
            rank_delay: Duration::from_millis(heartbeat_ms.clamp(10, 100)),
            poll,
        }
    }

    /// The delay of the candidate of `rank` (0 = first).
    pub fn candidate_delay(&self, rank: usize) -> Duration {
        self.rank_delay.saturating_mul(rank.min(16) as u32)
    }
}

/// When this node last accepted an append or snapshot from a leader: the
/// moment after which it may have counted toward that leader's quorum.
#[derive(Debug)]
pub struct LeaderSilence {
    started: Instant,
    /// Milliseconds after `started`, rounded up, plus one; 0: never.
    last_ms: AtomicU64,
}

impl LeaderSilence {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// An append or snapshot from the current leader was accepted now.
    pub fn heard(&self) {
        // Rounded up, so the silence is never overstated.
        let ms = self.started.elapsed().as_micros().div_ceil(1000) as u64;
        self.last_ms.fetch_max(ms + 1, Ordering::Relaxed);
    }

    /// How long the leader has been silent, if it ever spoke.
    pub fn silent_for(&self) -> Option<Duration> {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }
}

impl Default for LeaderSilence {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `addr` refuses a TCP connect: the process that listened there is
/// gone. A connect that succeeds, times out or fails otherwise proves nothing.
pub async fn port_refuses(addr: &str) -> bool {
    // An address or a name, resolved the way the transport does.
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

/// The dead-leader watch of one node.
pub struct DeadLeader {
    pub node_id: NodeId,
    pub timings: Timings,
    pub silence: LeaderSilence,
    metrics: NodeMetrics,
    /// The (leader, term) this node already started an election for.
    started_for: Mutex<Option<(NodeId, u64)>>,
    /// When the watch last probed a leader's port.
    last_probe: Mutex<Option<Instant>>,
}

/// What this node's Raft state says about its leader.
struct Followed {
    leader: NodeId,
    term: u64,
    leader_addr: String,
    /// The voters other than the leader, ascending.
    others: Vec<NodeId>,
}

impl DeadLeader {
    pub fn new(node_id: NodeId, timings: Timings, metrics: NodeMetrics) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            timings,
            silence: LeaderSilence::new(),
            metrics,
            started_for: Mutex::new(None),
            last_probe: Mutex::new(None),
        })
    }

    fn followed(&self, raft: &Raft) -> Option<Followed> {
        let rx = raft.metrics();
        let m = rx.borrow_watched();
        if m.state != ServerState::Follower {
            return None;
        }
        let leader = m.current_leader?;
        if leader == self.node_id {
            return None;
        }
        let membership = m.membership_config.membership();
        if !membership.voter_ids().any(|v| v == self.node_id) {
            return None;
        }
        let leader_addr = membership.get_node(&leader)?.raft_addr.clone();
        let mut others: Vec<NodeId> = membership.voter_ids().filter(|v| *v != leader).collect();
        others.sort_unstable();
        Some(Followed {
            leader,
            term: m.current_term,
            leader_addr,
            others,
        })
    }

    /// Whether the leader this node follows has been silent for `after` and
    /// its port refuses connections.
    async fn leader_gone(&self, f: &Followed, after: Duration) -> bool {
        self.silence.silent_for().is_some_and(|s| s >= after) && port_refuses(&f.leader_addr).await
    }

    /// The vote request as openraft should judge it: with the lease lifted
    /// when this node's own leader is gone (see the module docs).
    pub async fn vouch(
        &self,
        raft: &Raft,
        mut req: VoteRequest<TypeConfig>,
        candidate: NodeId,
    ) -> VoteRequest<TypeConfig> {
        if req.leadership_transfer {
            return req;
        }
        let Some(f) = self.followed(raft) else {
            return req;
        };
        if f.leader == candidate {
            return req;
        }
        if self.leader_gone(&f, self.timings.voter_after).await {
            tracing::info!(
                leader = f.leader,
                candidate,
                "vote: the leader's raft port refuses connections; its lease is lifted for this vote"
            );
            self.metrics
                .raft_dead_leader_total
                .with_label_values(&["vote_vouched"])
                .inc();
            req.leadership_transfer = true;
        }
        req
    }

    /// One look at the leader: starts an election when it is gone and this
    /// node's turn has come. Returns whether it started one.
    pub async fn check_once(&self, raft: &Raft) -> bool {
        let Some(f) = self.followed(raft) else {
            return false;
        };
        if self.started_for.lock().map(|s| *s).unwrap_or(None) == Some((f.leader, f.term)) {
            return false;
        }
        let rank = f
            .others
            .iter()
            .position(|v| *v == self.node_id)
            .unwrap_or(f.others.len());
        let after = self.timings.candidate_after + self.timings.candidate_delay(rank);
        if self.silence.silent_for().is_none_or(|s| s < after) {
            return false;
        }
        if let Ok(mut last) = self.last_probe.lock() {
            if last.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        if !port_refuses(&f.leader_addr).await {
            return false;
        }
        // Still the same leader and term after the probe?
        match self.followed(raft) {
            Some(now) if now.leader == f.leader && now.term == f.term => {}
            _ => return false,
        }
        if let Ok(mut s) = self.started_for.lock() {
            *s = Some((f.leader, f.term));
        }
        tracing::warn!(
            leader = f.leader,
            term = f.term,
            rank,
            "the leader's raft port refuses connections: starting an election"
        );
        self.metrics
            .raft_dead_leader_total
            .with_label_values(&["election_started"])
            .inc();
        if let Err(e) = raft.trigger().elect(false).await {
            tracing::warn!(error = %e, "could not start the election");
        }
        true
    }

    /// Watches the leader until Raft shuts down.
    pub async fn run(self: Arc<Self>, raft: Raft) {
        let mut tick = tokio::time::interval(self.timings.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if raft.metrics().borrow_watched().state == ServerState::Shutdown {
                return;
            }
            self.check_once(&raft).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vote_waits_longer_than_the_precheck_trusts_and_a_candidate_longer_still() {
        for (e, hb) in [(250, 60), (150, 50), (1000, 100), (10, 1), (17, 3)] {
            let t = Timings::new(e, hb);
            assert!(t.precheck_fresh < t.voter_after, "{t:?}");
            assert!(t.voter_after < t.candidate_after, "{t:?}");
            // The margin covers the silence clock's rounding and drift.
            assert!(
                t.voter_after - t.precheck_fresh >= Duration::from_millis(2),
                "{t:?}"
            );
        }
    }

    #[test]
    fn candidates_start_one_after_another_by_rank() {
        let t = Timings::new(250, 60);
        assert_eq!(t.candidate_delay(0), Duration::ZERO);
        assert_eq!(t.candidate_delay(2), Duration::from_millis(120));
        assert!(t.candidate_delay(1000) <= Duration::from_millis(60 * 16));
    }

    #[test]
    fn silence_is_unknown_until_a_leader_spoke_and_never_overstated() {
        let s = LeaderSilence::new();
        assert_eq!(s.silent_for(), None);
        std::thread::sleep(Duration::from_millis(3));
        s.heard();
        let silent = s.silent_for().unwrap_or(Duration::MAX);
        assert!(silent < Duration::from_millis(2), "{silent:?}");
        std::thread::sleep(Duration::from_millis(20));
        let silent = s.silent_for().unwrap_or(Duration::ZERO);
        assert!(silent >= Duration::from_millis(18), "{silent:?}");
    }

    #[tokio::test]
    async fn a_closed_port_refuses_and_a_listening_one_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert!(!port_refuses(&open).await);
        drop(listener);
        assert!(port_refuses(&open).await);
        assert!(!port_refuses("not an address").await);
    }
}
