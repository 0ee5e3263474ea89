//! A small simulated cluster for engine tests: five voters spread 2-2-1 over
//! regions a, b, c (nodes 1–2 in a, 3–4 in b, 5 in c), a clock, and helpers
//! that break things the way the monitor would see them.
#![allow(dead_code)]

use roomkeeper_playbook::{
    ActionKind, ActionOutcome, ControllerView, Decision, Disposition, Engine, EngineMemory,
    HealthSnapshot, NodeHealth, Playbook, Role, RoomLiveWindow, ShardHealth, Target,
};

/// One node's simulated state.
#[derive(Clone, Debug)]
pub struct SimNode {
    pub id: u64,
    pub region: String,
    pub up: bool,
    pub p99_ms: f64,
    pub error_rate: f64,
    pub lag: u64,
    pub disk_ok: bool,
    /// The controller cannot reach it (but the node may be fine).
    pub unreachable: bool,
    /// Cut off from everyone (controller and leader): it runs, but nobody
    /// reaches it and it does not count toward an election.
    pub partitioned: bool,
}

/// A simulated cluster and the engine driving it.
pub struct Sim {
    pub playbook: Playbook,
    pub nodes: Vec<SimNode>,
    pub voters: Vec<u64>,
    pub leader: Option<u64>,
    pub regions: Vec<String>,
    /// Regions the controller cannot reach.
    pub controller_cut_from: Vec<String>,
    pub now: u64,
    pub history: Vec<HealthSnapshot>,
    pub memory: EngineMemory,
    pub decisions: Vec<Decision>,
    /// Carry out `execute` decisions right away (restart revives a node, an
    /// evacuation moves voters) and report their outcomes.
    pub auto_succeed: bool,
    /// Regions whose nodes cannot be restarted (a lost region).
    pub unrestartable: Vec<String>,
    pub sales_paused: bool,
    pub drained: Vec<String>,
    /// Rooms' live windows, as the nodes would report them.
    pub live_windows: Vec<RoomLiveWindow>,
    next_new_node: u64,
}

impl Sim {
    /// Five voters 2-2-1 over regions a, b, c; leader node 1.
    pub fn three_regions(playbook: Playbook) -> Sim {
        let layout = [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c")];
        Sim::with_layout(playbook, &layout)
    }

    pub fn with_layout(playbook: Playbook, layout: &[(u64, &str)]) -> Sim {
        let nodes: Vec<SimNode> = layout
            .iter()
            .map(|(id, r)| SimNode {
                id: *id,
                region: r.to_string(),
                up: true,
                p99_ms: 20.0,
                error_rate: 0.0,
                lag: 0,
                disk_ok: true,
                unreachable: false,
                partitioned: false,
            })
            .collect();
        let mut regions: Vec<String> = nodes.iter().map(|n| n.region.clone()).collect();
        regions.sort();
        regions.dedup();
        Sim {
            playbook,
            voters: nodes.iter().map(|n| n.id).collect(),
            leader: Some(layout[0].0),
            nodes,
            regions,
            controller_cut_from: Vec::new(),
            now: 1_000_000,
            history: Vec::new(),
            memory: EngineMemory::new(),
            decisions: Vec::new(),
            auto_succeed: true,
            unrestartable: Vec::new(),
            sales_paused: false,
            drained: Vec::new(),
            live_windows: Vec::new(),
            next_new_node: 100,
        }
    }

    pub fn node(&mut self, id: u64) -> &mut SimNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    /// Kills a node; if it led, the lowest live voter takes over when a majority
    /// of voters is up, otherwise there is no leader.
    pub fn kill(&mut self, id: u64) {
        let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) else {
            return; // removed from membership earlier
        };
        n.up = false;
        self.elect();
    }

    pub fn revive(&mut self, id: u64) {
        self.node(id).up = true;
        self.elect();
    }

    pub fn kill_region(&mut self, region: &str) {
        let ids: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.region == region)
            .map(|n| n.id)
            .collect();
        for id in ids {
            self.kill(id);
        }
    }

    pub fn elect(&mut self) {
        self.voters.sort();
        let live: Vec<u64> = self
            .voters
            .iter()
            .copied()
            .filter(|v| {
                self.nodes
                    .iter()
                    .any(|n| n.id == *v && n.up && !n.partitioned)
            })
            .collect();
        if live.len() * 2 <= self.voters.len() {
            self.leader = None;
        } else if !self.leader.is_some_and(|l| live.contains(&l)) {
            self.leader = live.first().copied();
        }
    }

    /// The snapshot the monitor would build now.
    pub fn snapshot(&self) -> HealthSnapshot {
        let leader_up = self.leader.is_some();
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let reachable = n.up
                    && !n.unreachable
                    && !n.partitioned
                    && !self.controller_cut_from.contains(&n.region);
                NodeHealth {
                    node_id: n.id,
                    region: n.region.clone(),
                    zone: format!("{}-1", n.region),
                    reachable_by_controller: reachable,
                    process_alive: if self.controller_cut_from.contains(&n.region) {
                        None
                    } else {
                        Some(n.up)
                    },
                    self_reported_role: if reachable {
                        Some(if Some(n.id) == self.leader {
                            Role::Leader
                        } else if self.voters.contains(&n.id) {
                            Role::Follower
                        } else {
                            Role::Learner
                        })
                    } else {
                        None
                    },
                    leader_sees_replicating: if leader_up
                        && self
                            .leader
                            .and_then(|l| self.nodes.iter().find(|x| x.id == l))
                            .is_some_and(|l| !self.controller_cut_from.contains(&l.region))
                    {
                        Some(n.up && !n.partitioned)
                    } else {
                        None
                    },
                    lag_entries: if leader_up && n.up { Some(n.lag) } else { None },
                    order_p99_ms: if reachable { Some(n.p99_ms) } else { None },
                    error_rate: if reachable { Some(n.error_rate) } else { None },
                    disk_ok: if reachable { Some(n.disk_ok) } else { None },
                }
            })
            .collect();
        HealthSnapshot {
            at_ms: self.now,
            controller: ControllerView {
                regions_reachable: self
                    .regions
                    .iter()
                    .filter(|r| !self.controller_cut_from.contains(r))
                    .filter(|r| {
                        self.nodes
                            .iter()
                            .any(|n| &&n.region == r && n.up && !n.partitioned)
                    })
                    .cloned()
                    .collect(),
                regions_total: self.regions.len() as u32,
            },
            nodes,
            shard: ShardHealth {
                leader: self.leader,
                term: 1,
                voters: self.voters.clone(),
                learners: vec![],
            },
            live_windows: self.live_windows.clone(),
        }
    }

    /// Observes, decides, and (when `auto_succeed`) reports success of every
    /// executed decision. Returns this tick's decisions.
    pub fn tick(&mut self) -> Vec<Decision> {
        self.history.push(self.snapshot());
        if self.history.len() > 2_000 {
            self.history.remove(0);
        }
        let out = Engine::decide(&self.playbook, &self.history, self.now, &mut self.memory);
        if self.auto_succeed {
            for d in &out {
                if d.disposition.is_execute() && !d.action.is_notification() {
                    let outcome = self.carry_out(d);
                    self.memory
                        .record_outcome(d.id, outcome)
                        .expect("record outcome");
                }
            }
        }
        self.decisions.extend(out.clone());
        out
    }

    /// What the local binding would do for an executed decision.
    pub fn carry_out(&mut self, d: &Decision) -> ActionOutcome {
        let now = self.now;
        let ok = move |detail: &str| ActionOutcome::Succeeded {
            at_ms: now,
            detail: detail.to_string(),
        };
        match (&d.action, &d.target) {
            (ActionKind::RestartNode, Target::Node(id)) => {
                let Some(region) = self
                    .nodes
                    .iter()
                    .find(|n| n.id == *id)
                    .map(|n| n.region.clone())
                else {
                    return ActionOutcome::Failed {
                        at_ms: self.now,
                        error: format!("node {id} no longer exists"),
                    };
                };
                if self.unrestartable.contains(&region) {
                    return ActionOutcome::Failed {
                        at_ms: self.now,
                        error: format!("region {region} is unreachable"),
                    };
                }
                self.revive(*id);
                ok("restarted")
            }
            (ActionKind::ReplaceVotersElsewhere, Target::Region(r)) => {
                let old: Vec<u64> = self
                    .nodes
                    .iter()
                    .filter(|n| &n.region == r && self.voters.contains(&n.id))
                    .map(|n| n.id)
                    .collect();
                for o in old {
                    // Add a learner in the surviving region with the fewest
                    // voters, promote it, remove the old voter.
                    let mut survivors: Vec<(usize, String)> = self
                        .regions
                        .iter()
                        .filter(|x| *x != r && self.nodes.iter().any(|n| &n.region == *x && n.up))
                        .map(|x| {
                            let count = self
                                .nodes
                                .iter()
                                .filter(|n| &n.region == x && self.voters.contains(&n.id))
                                .count();
                            (count, x.clone())
                        })
                        .collect();
                    survivors.sort();
                    let Some((_, dest)) = survivors.first().cloned() else {
                        return ActionOutcome::Failed {
                            at_ms: self.now,
                            error: "no surviving region".into(),
                        };
                    };
                    let id = self.next_new_node;
                    self.next_new_node += 1;
                    let mut n = self.nodes[0].clone();
                    n.id = id;
                    n.region = dest;
                    n.up = true;
                    n.unreachable = false;
                    n.disk_ok = true;
                    self.nodes.push(n);
                    self.voters.push(id);
                    self.voters.retain(|v| *v != o);
                    // The binding stops watching a node removed from membership.
                    self.nodes.retain(|n| n.id != o);
                }
                self.elect();
                ok("voters replaced")
            }
            (ActionKind::SetTrafficWeightZero, Target::Region(r)) => {
                self.drained.push(r.clone());
                ok("weight 0")
            }
            (ActionKind::RestoreTrafficWeight, Target::Region(r)) => {
                self.drained.retain(|x| x != r);
                ok("weight restored")
            }
            (ActionKind::PauseSales, _) => {
                self.sales_paused = true;
                ok("sales paused")
            }
            (ActionKind::ResumeSales, _) => {
                self.sales_paused = false;
                ok("sales resumed")
            }
            (ActionKind::TransferLeadershipAway, target) => {
                let away: Vec<u64> = match target {
                    Target::Node(id) => vec![*id],
                    Target::Region(r) => self
                        .nodes
                        .iter()
                        .filter(|n| &n.region == r)
                        .map(|n| n.id)
                        .collect(),
                    Target::Shard => vec![],
                };
                if self.leader.is_some_and(|l| away.contains(&l)) {
                    self.leader = self.voters.iter().copied().find(|v| {
                        !away.contains(v) && self.nodes.iter().any(|n| n.id == *v && n.up)
                    });
                }
                ok("leadership moved")
            }
            _ => ok(""),
        }
    }

    /// Every fault ends: every node runs, answers and is reachable, signals are
    /// normal, hosts can be restarted again, and a leader is elected.
    pub fn heal_all(&mut self) {
        for n in &mut self.nodes {
            n.up = true;
            n.unreachable = false;
            n.partitioned = false;
            n.p99_ms = 20.0;
            n.error_rate = 0.0;
            n.lag = 0;
            n.disk_ok = true;
        }
        self.controller_cut_from.clear();
        self.unrestartable.clear();
        self.elect();
    }

    /// The binding finishes every open action (as a restarted binding would)
    /// and reports its outcome.
    pub fn close_open_actions(&mut self) {
        let open: Vec<Decision> = self.memory.open_actions().into_iter().cloned().collect();
        for d in open {
            let outcome = self.carry_out(&d);
            self.memory
                .record_outcome(d.id, outcome)
                .expect("record outcome");
        }
    }

    /// The controller restarts: its memory goes through JSON and back.
    pub fn restart_controller(&mut self) {
        let json = serde_json::to_string(&self.memory).expect("memory serializes");
        self.memory = serde_json::from_str(&json).expect("memory deserializes");
    }

    /// Ticks every `step_ms` for `duration_ms`; returns the decisions made.
    pub fn run(&mut self, duration_ms: u64, step_ms: u64) -> Vec<Decision> {
        let mut out = Vec::new();
        let end = self.now + duration_ms;
        while self.now < end {
            self.now += step_ms;
            out.extend(self.tick());
        }
        out
    }

    /// Ticks every second for `secs` seconds.
    pub fn secs(&mut self, secs: u64) -> Vec<Decision> {
        self.run(secs * 1_000, 1_000)
    }
}

/// The executed decisions among `ds`.
pub fn executed(ds: &[Decision]) -> Vec<&Decision> {
    ds.iter().filter(|d| d.disposition.is_execute()).collect()
}

/// Decisions of one action about one target.
pub fn about<'a>(
    ds: &'a [Decision],
    action: roomkeeper_playbook::ActionKind,
    target: &Target,
) -> Vec<&'a Decision> {
    ds.iter()
        .filter(|d| d.action == action && &d.target == target)
        .collect()
}

/// The guard of a suppressed decision.
pub fn guard_of(d: &Decision) -> Option<roomkeeper_playbook::Guard> {
    match &d.disposition {
        Disposition::Suppressed { guard, .. } => Some(*guard),
        _ => None,
    }
}
