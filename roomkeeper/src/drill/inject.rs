//! Local fault injectors: process signals (SIGKILL, SIGSTOP/SIGCONT), Raft
//! partitions, WAN latency and loss, and disk stalls through the nodes' test
//! fault hooks (`/admin/faults`, nodes run with `--enable-test-faults`), the
//! controller's own death, and client retry storms.
//!
//! Network faults are kept as contributions per fault and merged into one
//! setting per node, so overlapping faults compose and healing one leaves the
//! others in place.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomkeeper_chaos::drill::{FaultKind, FaultSpec, NodeRole, RegionPick, Selector};
use roomkeeper_control::load::TrafficMap;
use roomkeeper_control::observation::ClusterObservation;
use roomkeeper_control::{ControlLoop, FileStore};
use roomkeeper_local::sale::refresh_endpoints;
use roomkeeper_local::{LocalCluster, NodeFaults};
use roomkeeper_playbook::Playbook;

use roomkeeper_control::recorded_load::{Rng, Storm};

/// Errors of an injector.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("no node matches the selector {0}")]
    NoMatch(String),
    #[error("the selection {nodes:?} would take {lost} of {voters} voters down (quorum lost); set select.allowQuorumLoss to allow it")]
    QuorumGuard {
        nodes: Vec<u64>,
        lost: usize,
        voters: usize,
    },
    #[error("no leader to select")]
    NoLeader,
    #[error("{0}")]
    Cluster(#[from] roomkeeper_local::LocalError),
    #[error("{0}")]
    Control(#[from] roomkeeper_control::ControlError),
}

/// What the drill acts on.
pub struct World {
    pub cluster: LocalCluster,
    pub control: Option<ControlLoop>,
    /// The controller's memory and decision record (survive a controller kill).
    pub store: FileStore,
    pub playbook: Playbook,
    pub regions_total: u32,
    pub traffic: Arc<TrafficMap>,
    pub storm: Arc<Storm>,
    /// What the drill's buyers feel of each node: the control loop's
    /// client-side signals, as in the demo.
    pub endpoints: Arc<roomkeeper_control::load::EndpointStats>,
    /// A game day's human, if this is one.
    pub game_day: Option<super::gameday::GameDay>,
    pub automation_resumed: bool,
    /// A fault was injected after this tick's observation was taken: the
    /// game day waits for the next one before judging commands against it.
    pub observation_predates_fault: bool,
}

impl World {
    /// Starts the controller again from its persisted memory.
    pub async fn restart_controller(&mut self) -> Result<(), InjectError> {
        self.control = Some(
            ControlLoop::open(&mut self.store, self.playbook.clone(), self.regions_total).await?,
        );
        Ok(())
    }
}

/// A network or disk fault's share of the merged node settings.
#[derive(Debug, Clone)]
enum Contribution {
    /// These nodes are cut off from every node outside the group.
    Isolate(Vec<u64>),
    /// Log fsyncs of these nodes take `delay_ms` longer.
    Disk { nodes: Vec<u64>, delay_ms: u64 },
    /// Links between regions (touching `region`, if given) get slower and lossy.
    Wan {
        region: Option<String>,
        delay_ms: u64,
        loss: u8,
    },
}

#[derive(Debug)]
enum State {
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    Network,
    QuorumLost(Vec<u64>),
    Flap {
        node: u64,
        half: Duration,
        since: Instant,
        crashes: u32,
    },
    Rolling {
        queue: VecDeque<u64>,
        current: Option<(u64, Instant)>,
        period: Duration,
        next_at: Instant,
        done: Vec<u64>,
    },
    ControllerDown,
    Storm,
    MembershipChanged,
}

/// One fault in effect.
#[derive(Debug)]
pub struct Active {
    pub index: usize,
    pub kind: FaultKind,
    /// The fault has a `durationSecs` (the runner heals it on schedule).
    pub timed: bool,
    /// A fault that finished by itself (a rolling restart).
    pub finished: bool,
    state: State,
}

/// Injects and heals faults.
pub struct Injector {
    contribs: BTreeMap<usize, Contribution>,
    pub active: BTreeMap<usize, Active>,
    rng: Rng,
    paused: BTreeSet<u64>,
    wan_base_ms: u64,
    /// When the merged settings were last pushed again.
    pub last_repush: Instant,
}

fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

impl Injector {
    pub fn new(seed: u64, wan_base_ms: u64) -> Self {
        Self {
            contribs: BTreeMap::new(),
            active: BTreeMap::new(),
            rng: Rng::new(seed ^ 0xFA17),
            paused: BTreeSet::new(),
            wan_base_ms,
            last_repush: Instant::now(),
        }
    }

    /// Nodes currently stopped with SIGSTOP.
    pub fn paused(&self) -> &BTreeSet<u64> {
        &self.paused
    }

    fn voters(w: &World, obs: &ClusterObservation) -> Vec<u64> {
        if obs.voters.is_empty() {
            w.cluster.nodes.keys().copied().collect()
        } else {
            obs.voters.clone()
        }
    }

    fn region_of(w: &World, id: u64) -> Option<String> {
        w.cluster.info(id).map(|i| i.region.clone())
    }

    fn pick_region(
        w: &World,
        obs: &ClusterObservation,
        pick: RegionPick,
    ) -> Result<String, InjectError> {
        let voters = Self::voters(w, obs);
        let leader_region = obs.leader.and_then(|l| Self::region_of(w, l));
        let regions: Vec<String> = w
            .cluster
            .cfg
            .regions
            .iter()
            .map(|r| r.name.clone())
            .collect();
        match pick {
            RegionPick::Leader => leader_region.ok_or(InjectError::NoLeader),
            RegionPick::NonLeader => regions
                .into_iter()
                .find(|r| Some(r) != leader_region.as_ref())
                .ok_or_else(|| InjectError::NoMatch("regionOf: nonLeader".into())),
            RegionPick::Minority => {
                let count = |r: &String| {
                    voters
                        .iter()
                        .filter(|v| Self::region_of(w, **v).as_ref() == Some(r))
                        .count()
                };
                let mut best: Option<(usize, String)> = None;
                for r in regions {
                    let c = count(&r);
                    if c > 0 && best.as_ref().is_none_or(|(b, _)| c <= *b) {
                        best = Some((c, r));
                    }
                }
                best.map(|(_, r)| r)
                    .ok_or_else(|| InjectError::NoMatch("regionOf: minority".into()))
            }
        }
    }

    /// Resolves a selector against the current observation.
    fn select(
        &mut self,
        w: &mut World,
        obs: &ClusterObservation,
        sel: &Selector,
        default_role: NodeRole,
        guard: bool,
    ) -> Result<Vec<u64>, InjectError> {
        let voters = Self::voters(w, obs);
        let role = sel.role.unwrap_or(default_role);
        let region = match (&sel.region, sel.region_of) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(p)) => Some(Self::pick_region(w, obs, p)?),
            (None, None) => None,
        };
        let leader = obs.leader;
        let running: Vec<u64> = voters
            .iter()
            .copied()
            .filter(|id| w.cluster.is_running(*id))
            .collect();
        let mut cands: Vec<u64> = running
            .into_iter()
            .filter(|id| match role {
                NodeRole::Leader => Some(*id) == leader,
                NodeRole::Follower => Some(*id) != leader,
                NodeRole::Any => true,
            })
            .filter(|id| region.is_none() || Self::region_of(w, *id) == region)
            .filter(|id| sel.node_id.is_none_or(|n| n == *id))
            .collect();
        if role == NodeRole::Leader && leader.is_none() {
            return Err(InjectError::NoLeader);
        }
        if cands.is_empty() {
            return Err(InjectError::NoMatch(format!("{sel:?}")));
        }
        let n = if sel.all == Some(true) {
            cands.len()
        } else {
            (sel.count.unwrap_or(1) as usize).min(cands.len())
        };
        // Seeded shuffle, then take n.
        for i in (1..cands.len()).rev() {
            let j = self.rng.below(i + 1);
            cands.swap(i, j);
        }
        cands.truncate(n);
        cands.sort_unstable();
        if guard && sel.allow_quorum_loss != Some(true) {
            let lost = cands.len();
            if voters.len() - lost.min(voters.len()) < majority(voters.len()) {
                return Err(InjectError::QuorumGuard {
                    nodes: cands,
                    lost,
                    voters: voters.len(),
                });
            }
        }
        Ok(cands)
    }

    /// Injects fault `index`. Returns what was done, in words.
    pub async fn inject(
        &mut self,
        w: &mut World,
        obs: &ClusterObservation,
        index: usize,
        f: &FaultSpec,
    ) -> Result<String, InjectError> {
        let sel = f.select.clone().unwrap_or_default();
        let (detail, state) = match f.kind {
            FaultKind::KillLeader | FaultKind::KillNode => {
                let role = if f.kind == FaultKind::KillLeader {
                    NodeRole::Leader
                } else {
                    NodeRole::Follower
                };
                let nodes = self.select(w, obs, &sel, role, true)?;
                for n in &nodes {
                    w.cluster.kill(*n).await;
                }
                (format!("SIGKILL node(s) {nodes:?}"), State::Killed(nodes))
            }
            FaultKind::PauseNode => {
                let nodes = self.select(w, obs, &sel, NodeRole::Leader, true)?;
                for n in &nodes {
                    w.cluster.signal(*n, "STOP").await?;
                    self.paused.insert(*n);
                }
                (format!("SIGSTOP node(s) {nodes:?}"), State::Paused(nodes))
            }
            FaultKind::PartitionNode => {
                let nodes = self.select(w, obs, &sel, NodeRole::Follower, true)?;
                self.contribs
                    .insert(index, Contribution::Isolate(nodes.clone()));
                self.apply(w).await;
                (
                    format!("node(s) {nodes:?} cut off from every other node (Raft traffic dropped both ways)"),
                    State::Network,
                )
            }
            FaultKind::PartitionRegion => {
                let region = match (&sel.region, sel.region_of) {
                    (Some(r), _) => r.clone(),
                    (None, Some(p)) => Self::pick_region(w, obs, p)?,
                    (None, None) => return Err(InjectError::NoMatch("no region given".into())),
                };
                let nodes: Vec<u64> = w
                    .cluster
                    .nodes
                    .values()
                    .filter(|n| n.info.region == region)
                    .map(|n| n.id)
                    .collect();
                if nodes.is_empty() {
                    return Err(InjectError::NoMatch(format!("region {region}")));
                }
                self.contribs
                    .insert(index, Contribution::Isolate(nodes.clone()));
                self.apply(w).await;
                let leader_note = if obs.leader.is_some_and(|l| nodes.contains(&l)) {
                    " (it holds the leader)"
                } else {
                    ""
                };
                (
                    format!("region {region}{leader_note} cut off from the other regions: nodes {nodes:?}"),
                    State::Network,
                )
            }
            FaultKind::RollingRestart => {
                let mut order = Self::voters(w, obs);
                // Followers first, the leader last, as an operator rolls a cluster.
                if let Some(l) = obs.leader {
                    order.retain(|v| *v != l);
                    order.push(l);
                }
                let period = Duration::from_millis(f.period_ms.unwrap_or(3_000));
                (
                    format!(
                        "restart every node one at a time in order {order:?}, {} ms apart",
                        period.as_millis()
                    ),
                    State::Rolling {
                        queue: order.into(),
                        current: None,
                        period,
                        next_at: Instant::now(),
                        done: Vec::new(),
                    },
                )
            }
            FaultKind::DiskStall => {
                let s = if f.select.is_some() {
                    sel.clone()
                } else {
                    Selector {
                        all: Some(true),
                        ..Selector::default()
                    }
                };
                let nodes = self.select(w, obs, &s, NodeRole::Any, false)?;
                let delay_ms = f.delay_ms.unwrap_or(0);
                self.contribs.insert(
                    index,
                    Contribution::Disk {
                        nodes: nodes.clone(),
                        delay_ms,
                    },
                );
                self.apply(w).await;
                (
                    format!("every log fsync of node(s) {nodes:?} delayed by {delay_ms} ms"),
                    State::Network,
                )
            }
            FaultKind::WanLatency => {
                let region = match (&sel.region, sel.region_of) {
                    (Some(r), _) => Some(r.clone()),
                    (None, Some(p)) => Some(Self::pick_region(w, obs, p)?),
                    (None, None) => None,
                };
                let delay_ms = f.delay_ms.unwrap_or(0);
                let loss = f.loss_percent.unwrap_or(0).min(100) as u8;
                self.contribs.insert(
                    index,
                    Contribution::Wan {
                        region: region.clone(),
                        delay_ms,
                        loss,
                    },
                );
                self.apply(w).await;
                (
                    format!(
                        "links between regions{}: +{delay_ms} ms one way (WAN {} → {} ms), {loss}% of Raft messages lost",
                        region.map(|r| format!(" touching {r}")).unwrap_or_default(),
                        self.wan_base_ms,
                        self.wan_base_ms + delay_ms
                    ),
                    State::Network,
                )
            }
            FaultKind::FlapNode => {
                let nodes = self.select(w, obs, &sel, NodeRole::Follower, true)?;
                let node = nodes[0];
                let half = Duration::from_millis(f.period_ms.unwrap_or(4_000) / 2);
                w.cluster.kill(node).await;
                (
                    format!(
                        "node {node} crashes and comes back every {} ms",
                        half.as_millis() * 2
                    ),
                    State::Flap {
                        node,
                        half,
                        since: Instant::now(),
                        crashes: 1,
                    },
                )
            }
            FaultKind::QuorumLoss => {
                let voters = Self::voters(w, obs);
                let lose = voters.len() - majority(voters.len()) + 1;
                // One voter per region first, round robin, so no region is emptied
                // while another still has spares.
                let mut by_region: BTreeMap<usize, VecDeque<u64>> = BTreeMap::new();
                for v in &voters {
                    let r = Self::region_of(w, *v)
                        .and_then(|r| w.cluster.cfg.regions.iter().position(|x| x.name == r))
                        .unwrap_or(0);
                    by_region.entry(r).or_default().push_back(*v);
                }
                let mut victims = Vec::new();
                while victims.len() < lose {
                    let before = victims.len();
                    for q in by_region.values_mut() {
                        if victims.len() < lose {
                            if let Some(v) = q.pop_front() {
                                victims.push(v);
                            }
                        }
                    }
                    if victims.len() == before {
                        break;
                    }
                }
                for v in &victims {
                    w.cluster.block(*v, None);
                    w.cluster.kill(*v).await;
                }
                (
                    format!(
                        "hosts of {} of {} voters down: nodes {victims:?} (cannot be restarted until healed)",
                        victims.len(),
                        voters.len()
                    ),
                    State::QuorumLost(victims),
                )
            }
            FaultKind::MembershipChangeDuringPartition => {
                let nodes = self.select(w, obs, &sel, NodeRole::Follower, true)?;
                let old = nodes[0];
                let region = Self::region_of(w, old).unwrap_or_default();
                self.contribs
                    .insert(index, Contribution::Isolate(vec![old]));
                self.apply(w).await;
                // Let the partition bite before the change starts.
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                let new = w.cluster.replace_voter(old, &region).await?;
                refresh_endpoints(&w.cluster, &w.traffic, &[]);
                self.apply(w).await;
                (
                    format!("node {old} cut off, then replaced by new voter {new} in {region} while partitioned"),
                    State::MembershipChanged,
                )
            }
            FaultKind::KillController => {
                w.control = None;
                (
                    "the active controller is killed (its memory stays on disk)".to_string(),
                    State::ControllerDown,
                )
            }
            FaultKind::RetryStorm => (roomkeeper_drill::storm_on(&w.storm, f), State::Storm),
        };
        self.active.insert(
            index,
            Active {
                index,
                kind: f.kind,
                timed: f.duration_secs.is_some(),
                finished: false,
                state,
            },
        );
        Ok(detail)
    }

    /// Heals fault `index` (if active). Returns what was done.
    pub async fn heal(&mut self, w: &mut World, index: usize) -> Result<String, InjectError> {
        let Some(a) = self.active.remove(&index) else {
            return Ok(String::new());
        };
        let what = match a.state {
            State::Killed(nodes) => {
                let mut started = Vec::new();
                for n in nodes {
                    if !w.cluster.is_running(n) {
                        w.cluster.spawn(n)?;
                        started.push(n);
                    }
                }
                if started.is_empty() {
                    "the killed node(s) were already back (restarted by the playbook)".to_string()
                } else {
                    format!("node(s) {started:?} started again")
                }
            }
            State::Paused(nodes) => {
                for n in &nodes {
                    self.paused.remove(n);
                    if w.cluster.is_running(*n) {
                        w.cluster.signal(*n, "CONT").await?;
                    }
                }
                format!("SIGCONT node(s) {nodes:?}")
            }
            State::Network | State::MembershipChanged => {
                self.contribs.remove(&index);
                self.apply(w).await;
                "injected network/disk settings removed".to_string()
            }
            State::QuorumLost(nodes) => {
                for n in &nodes {
                    w.cluster.unblock(*n);
                    if !w.cluster.is_running(*n) {
                        w.cluster.spawn(*n)?;
                    }
                }
                format!("hosts of nodes {nodes:?} back, their nodes start")
            }
            State::Flap { node, crashes, .. } => {
                if !w.cluster.is_running(node) {
                    w.cluster.spawn(node)?;
                }
                format!("node {node} stops flapping after {crashes} crash(es)")
            }
            State::Rolling { done, queue, .. } => {
                format!(
                    "rolling restart ended: restarted {done:?}, not reached {:?}",
                    Vec::from(queue)
                )
            }
            State::ControllerDown => {
                w.restart_controller().await?;
                "the controller starts again from its persisted memory".to_string()
            }
            State::Storm => roomkeeper_drill::storm_off(&w.storm),
        };
        Ok(what)
    }

    /// Advances faults that act over time (flapping, rolling restart). Returns events.
    pub async fn step_faults(&mut self, w: &mut World) -> Vec<(usize, String)> {
        let mut all = Vec::new();
        for a in self.active.values_mut() {
            let mut events = Vec::new();
            match &mut a.state {
                // A kill without a duration lasts until the node runs again
                // (the playbook's job); the heal then only records it.
                State::Killed(nodes)
                    if !a.timed
                        && !a.finished
                        && nodes.iter().all(|n| w.cluster.is_running(*n)) =>
                {
                    a.finished = true;
                }
                State::Flap {
                    node,
                    half,
                    since,
                    crashes,
                } => {
                    let running = w.cluster.is_running(*node);
                    if since.elapsed() >= *half {
                        if running {
                            w.cluster.kill(*node).await;
                            *crashes += 1;
                            events.push(format!("flap: node {node} crashed"));
                        } else if let Err(e) = w.cluster.spawn(*node) {
                            events.push(format!("flap: node {node} could not start: {e}"));
                        } else {
                            events.push(format!("flap: node {node} started"));
                        }
                        *since = Instant::now();
                    }
                }
                State::Rolling {
                    queue,
                    current,
                    period,
                    next_at,
                    done,
                } => {
                    if let Some((n, at)) = *current {
                        if w.cluster.healthz(n).await {
                            events.push(format!(
                                "rolling restart: node {n} healthy again after {:.1} s",
                                at.elapsed().as_secs_f64()
                            ));
                            done.push(n);
                            *current = None;
                            *next_at = Instant::now() + *period;
                        } else if at.elapsed() > Duration::from_secs(30) {
                            events
                                .push(format!("rolling restart: node {n} not healthy after 30 s"));
                            *current = None;
                        }
                    } else if Instant::now() >= *next_at {
                        match queue.pop_front() {
                            Some(n) => {
                                w.cluster.kill(n).await;
                                match w.cluster.spawn(n) {
                                    Ok(()) => {
                                        events.push(format!("rolling restart: node {n} restarting"))
                                    }
                                    Err(e) => {
                                        events.push(format!("rolling restart: node {n}: {e}"))
                                    }
                                }
                                *current = Some((n, Instant::now()));
                            }
                            None => a.finished = true,
                        }
                    }
                }
                _ => {}
            }
            all.extend(events.into_iter().map(|e| (a.index, e)));
        }
        all
    }

    /// Pushes every node's merged fault settings again (restarted nodes start
    /// without them). Skips paused nodes; each push is bounded.
    pub async fn repush(&self, w: &mut World) {
        let ids: Vec<u64> = w.cluster.nodes.keys().copied().collect();
        let mut running = Vec::new();
        for id in ids {
            if !self.paused.contains(&id) && w.cluster.is_running(id) {
                running.push(id);
            }
        }
        let cluster = &w.cluster;
        let pushes = running
            .iter()
            .map(|id| tokio::time::timeout(Duration::from_millis(400), cluster.push_faults(*id)));
        let _ = futures_util::future::join_all(pushes).await;
    }

    /// Merges the contributions into per-node settings and applies the changed ones.
    async fn apply(&self, w: &mut World) {
        let nodes: Vec<(u64, String)> = w
            .cluster
            .nodes
            .values()
            .map(|n| (n.id, n.info.region.clone()))
            .collect();
        let mut merged: BTreeMap<u64, NodeFaults> = BTreeMap::new();
        for (id, region) in &nodes {
            let mut nf = NodeFaults::default();
            for c in self.contribs.values() {
                match c {
                    Contribution::Isolate(group) => {
                        if group.contains(id) {
                            nf.isolated_peers
                                .extend(nodes.iter().map(|n| n.0).filter(|o| !group.contains(o)));
                        } else {
                            nf.isolated_peers.extend(group.iter().copied());
                        }
                    }
                    Contribution::Disk {
                        nodes: on,
                        delay_ms,
                    } => {
                        if on.contains(id) {
                            nf.fsync_delay_ms = nf.fsync_delay_ms.max(*delay_ms);
                        }
                    }
                    Contribution::Wan {
                        region: only,
                        delay_ms,
                        loss,
                    } => {
                        for (o, oregion) in &nodes {
                            if o == id || oregion == region {
                                continue;
                            }
                            if let Some(r) = only {
                                if r != region && r != oregion {
                                    continue;
                                }
                            }
                            let d = nf.peer_delay_ms.entry(*o).or_insert(0);
                            *d = (*d).max(self.wan_base_ms + delay_ms);
                            if *loss > 0 {
                                let l = nf.peer_loss_percent.entry(*o).or_insert(0);
                                *l = (*l).max(*loss);
                            }
                        }
                    }
                }
            }
            merged.insert(*id, nf);
        }
        let mut changed = Vec::new();
        for (id, nf) in merged {
            if w.cluster.faults(id) != nf {
                w.cluster.store_faults(id, nf);
                if !self.paused.contains(&id) && w.cluster.is_running(id) {
                    changed.push(id);
                }
            }
        }
        // Paused nodes get theirs when they run again (see `repush`).
        let cluster = &w.cluster;
        let pushes = changed
            .iter()
            .map(|id| tokio::time::timeout(Duration::from_millis(800), cluster.push_faults(*id)));
        let _ = futures_util::future::join_all(pushes).await;
    }
}
