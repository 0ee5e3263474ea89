//! Evaluating a tier's condition for one target in one snapshot, and over the
//! history of snapshots (how long it has held, how long it has been clear).

use crate::decision::{Evidence, Target, TargetKind};
use crate::health::{
    self, node_liveness, node_views, HealthSnapshot, Liveness, NodeHealth, QuorumState, ViewAnswer,
};
use crate::playbook::{Condition, LagSpec, SignalThresholdSpec};
use crate::words;

/// Where a condition stands in one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// Above the escalation threshold.
    Breached,
    /// Neither breached nor clear: inside the hysteresis band.
    Between,
    /// At or below the stand-down threshold.
    Clear,
}

/// A signal value without its time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fact {
    pub signal: String,
    pub value: String,
    pub threshold: Option<String>,
}

impl Fact {
    fn new(signal: impl Into<String>, value: impl Into<String>, threshold: Option<String>) -> Fact {
        Fact {
            signal: signal.into(),
            value: value.into(),
            threshold,
        }
    }

    pub fn at(&self, since_ms: u64) -> Evidence {
        Evidence {
            signal: self.signal.clone(),
            value: self.value.clone(),
            threshold: self.threshold.clone(),
            since_ms,
        }
    }
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reading {
    pub level: Level,
    pub facts: Vec<Fact>,
}

impl Reading {
    fn clear() -> Reading {
        Reading {
            level: Level::Clear,
            facts: Vec::new(),
        }
    }
}

/// The targets a condition is evaluated for in a snapshot.
pub(crate) fn candidates(kind: TargetKind, snapshot: &HealthSnapshot) -> Vec<Target> {
    match kind {
        TargetKind::Node => snapshot
            .nodes
            .iter()
            .map(|n| Target::Node(n.node_id))
            .collect(),
        TargetKind::Region => health::regions(snapshot)
            .into_iter()
            .map(Target::Region)
            .collect(),
        TargetKind::Shard => vec![Target::Shard],
    }
}

fn find_node<'a>(snapshot: &'a HealthSnapshot, target: &Target) -> Option<&'a NodeHealth> {
    match target {
        Target::Node(id) => snapshot.nodes.iter().find(|n| n.node_id == *id),
        _ => None,
    }
}

fn answer(a: ViewAnswer) -> &'static str {
    match a {
        ViewAnswer::Up => "up",
        ViewAnswer::Down => "down",
        ViewAnswer::Unknown => "no answer",
    }
}

fn view_facts(snapshot: &HealthSnapshot, n: &NodeHealth, out: &mut Vec<Fact>) {
    let v = node_views(snapshot, n);
    let id = n.node_id;
    out.push(Fact::new(
        format!("node {id} own answer"),
        answer(v.own_answer),
        None,
    ));
    out.push(Fact::new(
        format!("node {id} leader replication view"),
        answer(v.leader_replication),
        None,
    ));
    out.push(Fact::new(
        format!("node {id} controller view"),
        answer(v.controller),
        None,
    ));
}

/// Evaluates `condition` for `target` in one snapshot.
pub(crate) fn evaluate(
    condition: &Condition,
    snapshot: &HealthSnapshot,
    target: &Target,
) -> Reading {
    match condition {
        Condition::SignalDegraded(spec) => match find_node(snapshot, target) {
            Some(n) => signal_reading(n, spec),
            None => Reading::clear(),
        },
        Condition::NodeUnhealthy => match find_node(snapshot, target) {
            Some(n) => unhealthy_reading(snapshot, n),
            None => Reading::clear(),
        },
        Condition::ReplicaLagging(spec) => match find_node(snapshot, target) {
            Some(n) => lag_reading(snapshot, n, spec),
            None => Reading::clear(),
        },
        Condition::RegionDegraded(spec) => match target {
            Target::Region(r) => region_degraded_reading(snapshot, r, spec),
            _ => Reading::clear(),
        },
        Condition::RegionLost => match target {
            Target::Region(r) => region_lost_reading(snapshot, r),
            _ => Reading::clear(),
        },
        Condition::QuorumLost => match target {
            Target::Shard => quorum_reading(snapshot),
            _ => Reading::clear(),
        },
        Condition::AnyOf {
            conditions: members,
        } => {
            let readings: Vec<Reading> = members
                .iter()
                .map(|c| evaluate(c, snapshot, target))
                .collect();
            let breached: Vec<&Reading> = readings
                .iter()
                .filter(|r| r.level == Level::Breached)
                .collect();
            if !breached.is_empty() {
                Reading {
                    level: Level::Breached,
                    facts: breached.iter().flat_map(|r| r.facts.clone()).collect(),
                }
            } else if readings.iter().all(|r| r.level == Level::Clear) {
                Reading::clear()
            } else {
                Reading {
                    level: Level::Between,
                    facts: readings.into_iter().flat_map(|r| r.facts).collect(),
                }
            }
        }
    }
}

fn signal_reading(n: &NodeHealth, spec: &SignalThresholdSpec) -> Reading {
    let up = spec.escalate();
    let down = spec.clear();
    let mut facts = Vec::new();
    let mut breached = false;
    let mut clear = true;
    if let (Some(v), Some(t)) = (n.order_p99_ms, spec.p99_ms_above) {
        breached |= v > up.p99_ms;
        clear &= v <= down.p99_ms;
        facts.push(Fact::new(
            format!("node {} order p99 (ms)", n.node_id),
            words::number(v),
            Some(format!("> {}", words::number(t))),
        ));
    }
    if let (Some(v), Some(t)) = (n.error_rate, spec.error_rate_above) {
        breached |= v > up.error_rate;
        clear &= v <= down.error_rate;
        facts.push(Fact::new(
            format!("node {} error rate", n.node_id),
            words::number(v),
            Some(format!("> {}", words::number(t))),
        ));
    }
    Reading {
        level: if breached {
            Level::Breached
        } else if clear {
            Level::Clear
        } else {
            Level::Between
        },
        facts,
    }
}

fn unhealthy_reading(snapshot: &HealthSnapshot, n: &NodeHealth) -> Reading {
    let mut facts = Vec::new();
    view_facts(snapshot, n, &mut facts);
    if let Some(alive) = n.process_alive {
        facts.push(Fact::new(
            format!("node {} process", n.node_id),
            if alive { "running" } else { "not running" },
            None,
        ));
    }
    if let Some(ok) = n.disk_ok {
        facts.push(Fact::new(
            format!("node {} disk", n.node_id),
            if ok { "ok" } else { "failing" },
            None,
        ));
    }
    let level = if health::node_unhealthy(snapshot, n) {
        Level::Breached
    } else if node_liveness(snapshot, n) == Liveness::Alive {
        Level::Clear
    } else {
        Level::Between
    };
    Reading { level, facts }
}

fn lag_reading(snapshot: &HealthSnapshot, n: &NodeHealth, spec: &LagSpec) -> Reading {
    let Some(lag) = n.lag_entries else {
        return Reading::clear();
    };
    let facts = vec![Fact::new(
        format!("node {} replication lag (entries)", n.node_id),
        lag.to_string(),
        Some(format!("> {}", spec.entries_above)),
    )];
    let down = node_liveness(snapshot, n) == Liveness::Down;
    let level = if health::replica_lagging(snapshot, n, spec.entries_above) {
        Level::Breached
    } else if down || lag <= spec.entries_clear_below.unwrap_or(spec.entries_above) {
        Level::Clear
    } else {
        Level::Between
    };
    Reading { level, facts }
}

fn region_degraded_reading(
    snapshot: &HealthSnapshot,
    region: &str,
    spec: &SignalThresholdSpec,
) -> Reading {
    let lost = health::region_lost(snapshot, region);
    let (bad_up, total) = health::region_bad_nodes(snapshot, region, &spec.escalate());
    let (bad_down, _) = health::region_bad_nodes(snapshot, region, &spec.clear());
    let mut facts = vec![Fact::new(
        format!("region {region} bad nodes"),
        format!("{bad_up} of {total}"),
        Some("a majority".to_string()),
    )];
    if lost {
        facts.push(Fact::new(format!("region {region} health"), "lost", None));
    }
    for n in health::region_nodes(snapshot, region) {
        if let Some(v) = n.order_p99_ms {
            if spec.p99_ms_above.is_some_and(|t| v > t) {
                facts.push(Fact::new(
                    format!("node {} order p99 (ms)", n.node_id),
                    words::number(v),
                    spec.p99_ms_above.map(|t| format!("> {}", words::number(t))),
                ));
            }
        }
        if let Some(v) = n.error_rate {
            if spec.error_rate_above.is_some_and(|t| v > t) {
                facts.push(Fact::new(
                    format!("node {} error rate", n.node_id),
                    words::number(v),
                    spec.error_rate_above
                        .map(|t| format!("> {}", words::number(t))),
                ));
            }
        }
        let liveness = node_liveness(snapshot, n);
        if liveness != Liveness::Alive {
            facts.push(Fact::new(
                format!("node {} liveness", n.node_id),
                match liveness {
                    Liveness::Down => "down by two views",
                    _ => "uncertain (views disagree)",
                },
                None,
            ));
        }
    }
    // A region no node reports for (its nodes were removed from membership
    // and are no longer watched) is neither breached nor clear: the tier that
    // acted on it stays active until a person restores it.
    let level = if total == 0 {
        Level::Between
    } else if lost || bad_up * 2 > total {
        Level::Breached
    } else if bad_down * 2 <= total {
        Level::Clear
    } else {
        Level::Between
    };
    Reading { level, facts }
}

fn region_lost_reading(snapshot: &HealthSnapshot, region: &str) -> Reading {
    let mut facts = Vec::new();
    let mut down = 0;
    let mut alive = 0;
    let mut total = 0;
    for n in health::region_nodes(snapshot, region) {
        total += 1;
        match node_liveness(snapshot, n) {
            Liveness::Down => down += 1,
            Liveness::Alive => alive += 1,
            Liveness::Uncertain => {}
        }
        view_facts(snapshot, n, &mut facts);
    }
    facts.insert(
        0,
        Fact::new(
            format!("region {region} nodes down by two views"),
            format!("{down} of {total}"),
            Some("all".to_string()),
        ),
    );
    let reachable = snapshot
        .controller
        .regions_reachable
        .iter()
        .any(|r| r == region);
    facts.insert(
        1,
        Fact::new(
            format!("controller reaches region {region}"),
            if reachable { "yes" } else { "no" },
            None,
        ),
    );
    let level = if total > 0 && down == total {
        Level::Breached
    } else if alive > 0 {
        Level::Clear
    } else {
        Level::Between
    };
    Reading { level, facts }
}

fn quorum_reading(snapshot: &HealthSnapshot) -> Reading {
    let c = health::voter_counts(snapshot);
    let q = health::quorum(snapshot);
    let facts = vec![
        Fact::new(
            "voters alive by two views",
            format!("{} of {}", c.alive, c.total),
            Some(format!("at least {}", c.majority())),
        ),
        Fact::new(
            "voters down by two views",
            format!("{} of {}", c.down, c.total),
            None,
        ),
        Fact::new(
            "shard leader",
            snapshot
                .shard
                .leader
                .map_or("none".to_string(), |l| format!("node {l}")),
            None,
        ),
    ];
    let level = match q {
        QuorumState::Lost => Level::Breached,
        QuorumState::Present if snapshot.shard.leader.is_some() => Level::Clear,
        _ => Level::Between,
    };
    Reading { level, facts }
}

/// The snapshots not from the future, newest first.
pub(crate) fn newest_first(history: &[HealthSnapshot], now_ms: u64) -> Vec<&HealthSnapshot> {
    let mut v: Vec<&HealthSnapshot> = history.iter().filter(|s| s.at_ms <= now_ms).collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.at_ms));
    v
}

/// The trailing run of snapshots (`snaps`, newest first) whose reading
/// satisfies `want`: the time of the oldest snapshot in the run, and the newest
/// reading. `None` when the newest snapshot does not satisfy it.
///
/// With `bound`, the walk stops at the first snapshot at or before `bound`: the
/// run is then known to cover `bound`, which is all a hold-down needs, and each
/// tick costs at most the snapshots of one hold-down instead of the whole
/// history.
pub(crate) fn run_since(
    condition: &Condition,
    snaps: &[&HealthSnapshot],
    target: &Target,
    bound: Option<u64>,
    want: impl Fn(Level) -> bool,
) -> Option<(u64, Reading)> {
    run_since_where(condition, snaps, target, bound, want, |_| true)
}

/// [`run_since`], counting only snapshots that also satisfy `keep`: a
/// snapshot failing `keep` ends the run as a reading failing `want` would.
/// Per-region tiers use it to leave out the snapshots of a global outage.
pub(crate) fn run_since_where(
    condition: &Condition,
    snaps: &[&HealthSnapshot],
    target: &Target,
    bound: Option<u64>,
    want: impl Fn(Level) -> bool,
    keep: impl Fn(&HealthSnapshot) -> bool,
) -> Option<(u64, Reading)> {
    let newest = snaps.first()?;
    if !keep(newest) {
        return None;
    }
    let reading = evaluate(condition, newest, target);
    if !want(reading.level) {
        return None;
    }
    let mut since = newest.at_ms;
    if bound.is_some_and(|b| since <= b) {
        return Some((since, reading));
    }
    for s in snaps.iter().skip(1) {
        if !keep(s) || !want(evaluate(condition, s, target).level) {
            break;
        }
        since = s.at_ms;
        if bound.is_some_and(|b| since <= b) {
            break;
        }
    }
    Some((since, reading))
}

/// The trailing run of snapshots (`snaps`, newest first) satisfying `pred`:
/// the time of its oldest snapshot, walking no further than the first
/// snapshot at or before `bound`. `None` when the newest does not satisfy it.
pub(crate) fn held_since(
    snaps: &[&HealthSnapshot],
    bound: u64,
    pred: impl Fn(&HealthSnapshot) -> bool,
) -> Option<u64> {
    let newest = snaps.first()?;
    if !pred(newest) {
        return None;
    }
    let mut since = newest.at_ms;
    for s in snaps.iter().skip(1) {
        if since <= bound || !pred(s) {
            break;
        }
        since = s.at_ms;
    }
    Some(since)
}

/// How the condition reads for a target in the newest snapshot.
pub(crate) fn current(
    condition: &Condition,
    snaps: &[&HealthSnapshot],
    target: &Target,
) -> Option<Reading> {
    snaps.first().map(|s| evaluate(condition, s, target))
}

/// How the condition is described in a sentence: "has been unhealthy".
pub(crate) fn phrase(condition: &Condition) -> &'static str {
    match condition {
        Condition::SignalDegraded(_) => "has had degraded latency or errors",
        Condition::NodeUnhealthy => "has been unhealthy",
        Condition::ReplicaLagging(_) => "has been lagging behind the leader",
        Condition::RegionDegraded(_) => "has been degraded",
        Condition::RegionLost => "has been lost",
        Condition::QuorumLost => "has been without a quorum of live voters",
        Condition::AnyOf { .. } => "has met its watch condition",
    }
}
