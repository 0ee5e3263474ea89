//! Property tests over generated fault timelines: nodes dying, flapping and
//! returning, whole regions lost or partitioned, quorum loss, the controller
//! losing sight of regions, slow and failing nodes, lag, hosts that cannot be
//! restarted, failed actions, controller restarts (memory through JSON), pause
//! and dry-run switches, approvals.
//!
//! - Safety: on every tick no guard is violated — nothing executes while
//!   paused or in dry-run, never from a minority view, never two evacuations,
//!   never below quorum, never beyond the rate limit, a failure budget, a
//!   restart budget or its back-off, never restarting a quarantined node.
//! - Liveness: once the faults end and the cluster stays healthy, within
//!   `Playbook::convergence_bound_ms()` every drained region is restored,
//!   sales are resumed, no tier is active and no node is quarantined.
//!
//! 64 cases per property by default; `PROPTEST_CASES=5000` runs a longer search
//! (see docs/playbook-engine.md).

mod support;

use std::collections::BTreeSet;

use proptest::prelude::*;
use roomkeeper_playbook::health::{self, Liveness, RegionVisibility};
use roomkeeper_playbook::{
    default_playbook, ActionKind, ActionOutcome, Approval, Decision, DecisionId, Disposition,
    Engine, EngineMemory, Guard, GuardBudgets, HealthSnapshot, OnTimeout, Playbook, Target,
};
use support::Sim;

#[derive(Clone, Debug)]
enum Op {
    Kill(u64),
    Revive(u64),
    KillRegion(usize),
    ReviveRegion(usize),
    /// Bit i set: the controller cannot see region i.
    CutController(u8),
    Unreachable(u64, bool),
    Slow(u64, f64),
    Errors(u64, f64),
    Lag(u64, u64),
    Disk(u64, bool),
    /// Cut a node off from everyone (controller and leader).
    Partition(u64, bool),
    /// Cut a whole region off from everyone.
    PartitionRegion(usize, bool),
    /// Kill a majority of voters at once.
    QuorumLoss,
    /// Kill a node, observe it dead for one tick, bring it back.
    Flap(u64),
    /// The hosts of a region can (not) be restarted: restarts there fail.
    HostDown(usize, bool),
    /// The controller restarts: memory goes through JSON and back.
    ControllerRestart,
    TogglePause,
    ToggleDryRun,
    Approve(usize),
    Reject(usize),
    Outcome(usize, bool),
    Nothing,
}

const REGIONS: [&str; 3] = ["a", "b", "c"];

fn op() -> impl Strategy<Value = Op> {
    let node = 1u64..=5;
    prop_oneof![
        4 => node.clone().prop_map(Op::Kill),
        4 => node.clone().prop_map(Op::Revive),
        2 => (0usize..3).prop_map(Op::KillRegion),
        2 => (0usize..3).prop_map(Op::ReviveRegion),
        2 => (0u8..8).prop_map(Op::CutController),
        2 => (node.clone(), any::<bool>()).prop_map(|(n, b)| Op::Unreachable(n, b)),
        2 => (node.clone(), prop_oneof![Just(20.0), Just(300.0), Just(900.0)]).prop_map(|(n, v)| Op::Slow(n, v)),
        1 => (node.clone(), prop_oneof![Just(0.0), Just(0.03), Just(0.5)]).prop_map(|(n, v)| Op::Errors(n, v)),
        1 => (node.clone(), prop_oneof![Just(0u64), Just(5_000u64)]).prop_map(|(n, v)| Op::Lag(n, v)),
        1 => (node.clone(), any::<bool>()).prop_map(|(n, b)| Op::Disk(n, b)),
        2 => (node.clone(), any::<bool>()).prop_map(|(n, b)| Op::Partition(n, b)),
        1 => ((0usize..3), any::<bool>()).prop_map(|(r, b)| Op::PartitionRegion(r, b)),
        1 => Just(Op::QuorumLoss),
        3 => node.clone().prop_map(Op::Flap),
        2 => ((0usize..3), any::<bool>()).prop_map(|(r, b)| Op::HostDown(r, b)),
        2 => Just(Op::ControllerRestart),
        1 => Just(Op::TogglePause),
        1 => Just(Op::ToggleDryRun),
        2 => any::<usize>().prop_map(Op::Approve),
        1 => any::<usize>().prop_map(Op::Reject),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::Outcome(i, ok)),
        4 => Just(Op::Nothing),
    ]
}

/// The default playbook with short, random times so that a short history
/// reaches every tier, and random guard settings.
fn playbook() -> impl Strategy<Value = Playbook> {
    playbook_with(1..=3)
}

fn playbook_with(min_regions: std::ops::RangeInclusive<u32>) -> impl Strategy<Value = Playbook> {
    (
        (
            prop::collection::vec((0i64..4_000, 0i64..8_000), 5),
            0i64..6_000,
            1u32..4,
            5_000i64..30_000,
            min_regions,
            prop::option::of((1_000i64..10_000, any::<bool>())),
            any::<bool>(),
            any::<bool>(),
        ),
        (1u32..5, 2_000i64..20_000, 0i64..10_000),
        (1u32..4, 2_000i64..20_000, 0i64..3_000),
    )
        .prop_map(
            |(
                (times, cooldown, max, window, min_regions, approval, paused, dry_run),
                (max_restarts, restart_window, backoff),
                (max_failures, failure_window, retry_after),
            )| {
                let mut p = default_playbook();
                for (tier, (for_ms, clear_ms)) in p.tiers.iter_mut().zip(times) {
                    // A tier that changes membership needs a hold-down.
                    tier.trigger.for_ms = if tier.level == 3 {
                        for_ms.max(1_000)
                    } else {
                        for_ms
                    };
                    tier.trigger.clear_for_ms = clear_ms;
                }
                p.guards.cooldown_ms = cooldown;
                p.guards.max_actions_per_window = max;
                p.guards.window_ms = window;
                p.guards.min_regions_visible_to_act = min_regions;
                p.tiers[3].approval = approval.map(|(timeout_ms, approve)| Approval {
                    timeout_ms,
                    on_timeout: if approve {
                        OnTimeout::Approve
                    } else {
                        OnTimeout::Reject
                    },
                });
                p.paused = paused;
                p.dry_run = dry_run;
                let rb = &mut p.guards.restart_budget;
                rb.max_restarts = max_restarts;
                rb.window_ms = restart_window;
                rb.backoff_base_ms = backoff;
                let fb = &mut p.guards.failure_budget;
                fb.max_failures = max_failures;
                fb.window_ms = failure_window;
                fb.retry_after_ms = retry_after;
                p
            },
        )
}

/// Decisions whose failure was reported: they do not count toward the rate limit.
#[derive(Default)]
struct Failed(BTreeSet<DecisionId>);

fn apply(sim: &mut Sim, op: &Op, failed: &mut Failed) {
    match op {
        Op::Kill(n) => sim.kill(*n),
        Op::Revive(n) => {
            if sim.nodes.iter().any(|x| x.id == *n) {
                sim.revive(*n)
            }
        }
        Op::KillRegion(r) => sim.kill_region(REGIONS[*r]),
        Op::ReviveRegion(r) => {
            let ids: Vec<u64> = sim
                .nodes
                .iter()
                .filter(|n| n.region == REGIONS[*r])
                .map(|n| n.id)
                .collect();
            for id in ids {
                sim.revive(id);
            }
        }
        Op::CutController(mask) => {
            sim.controller_cut_from = (0..3)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| REGIONS[i].to_string())
                .collect();
        }
        Op::Unreachable(n, b) => {
            if let Some(x) = sim.nodes.iter_mut().find(|x| x.id == *n) {
                x.unreachable = *b;
            }
        }
        Op::Slow(n, v) => {
            if let Some(x) = sim.nodes.iter_mut().find(|x| x.id == *n) {
                x.p99_ms = *v;
            }
        }
        Op::Errors(n, v) => {
            if let Some(x) = sim.nodes.iter_mut().find(|x| x.id == *n) {
                x.error_rate = *v;
            }
        }
        Op::Lag(n, v) => {
            if let Some(x) = sim.nodes.iter_mut().find(|x| x.id == *n) {
                x.lag = *v;
            }
        }
        Op::Disk(n, b) => {
            if let Some(x) = sim.nodes.iter_mut().find(|x| x.id == *n) {
                x.disk_ok = *b;
            }
        }
        Op::Partition(n, b) => {
            if let Some(x) = sim.nodes.iter_mut().find(|x| x.id == *n) {
                x.partitioned = *b;
            }
            sim.elect();
        }
        Op::PartitionRegion(r, b) => {
            for x in sim.nodes.iter_mut().filter(|x| x.region == REGIONS[*r]) {
                x.partitioned = *b;
            }
            sim.elect();
        }
        Op::QuorumLoss => {
            for n in [1, 3, 4] {
                sim.kill(n);
            }
        }
        Op::Flap(n) => {
            // The kill is observed for one tick; the runner brings it back.
            sim.kill(*n);
        }
        Op::HostDown(r, b) => {
            let r = REGIONS[*r].to_string();
            sim.unrestartable.retain(|x| *x != r);
            if *b {
                sim.unrestartable.push(r);
            }
        }
        Op::ControllerRestart => sim.restart_controller(),
        Op::TogglePause => sim.playbook.paused = !sim.playbook.paused,
        Op::ToggleDryRun => sim.playbook.dry_run = !sim.playbook.dry_run,
        Op::Approve(i) => {
            let ids: Vec<u64> = sim
                .memory
                .pending_approvals()
                .iter()
                .map(|d| d.id)
                .collect();
            if !ids.is_empty() {
                sim.memory
                    .approve(ids[i % ids.len()], "alice", sim.now)
                    .unwrap();
            }
        }
        Op::Reject(i) => {
            let ids: Vec<u64> = sim
                .memory
                .pending_approvals()
                .iter()
                .map(|d| d.id)
                .collect();
            if !ids.is_empty() {
                sim.memory
                    .reject(ids[i % ids.len()], "bob", "", sim.now)
                    .unwrap();
            }
        }
        Op::Outcome(i, ok) => {
            // A binding carries out the actions on one target in order.
            let all: Vec<Decision> = sim.memory.open_actions().into_iter().cloned().collect();
            let open: Vec<Decision> = all
                .iter()
                .filter(|d| !all.iter().any(|e| e.target == d.target && e.id < d.id))
                .cloned()
                .collect();
            if !open.is_empty() {
                let d = &open[i % open.len()];
                let outcome = if *ok {
                    sim.carry_out(d)
                } else {
                    ActionOutcome::Failed {
                        at_ms: sim.now,
                        error: "injected".into(),
                    }
                };
                if !outcome.succeeded() {
                    failed.0.insert(d.id);
                }
                sim.memory.record_outcome(d.id, outcome).unwrap();
            }
        }
        Op::Nothing => {}
    }
}

fn alive_voters(snap: &HealthSnapshot, pred: impl Fn(&str) -> bool) -> usize {
    snap.nodes
        .iter()
        .filter(|n| snap.shard.voters.contains(&n.node_id) && pred(&n.region))
        .filter(|n| health::node_liveness(snap, n) == Liveness::Alive)
        .count()
}

/// The rate-limited decisions acted on so far (id, time), to check the
/// sliding window; failed ones are left out as the engine leaves them out.
#[derive(Default)]
struct Acted(Vec<(DecisionId, u64)>);

/// Checks every safety property on one tick's decisions. `before` are the
/// budgets as they stood when the tick began.
fn check_tick(
    sim: &Sim,
    snap: &HealthSnapshot,
    out: &[Decision],
    before: &GuardBudgets,
    acted: &mut Acted,
    failed: &Failed,
) -> Result<(), TestCaseError> {
    let g = &sim.playbook.guards;
    let executes: Vec<&Decision> = out.iter().filter(|d| d.disposition.is_execute()).collect();

    // Nothing executes while paused or in dry-run.
    if sim.playbook.paused || sim.playbook.dry_run {
        prop_assert!(
            executes.is_empty(),
            "executed while paused/dry-run: {executes:#?}"
        );
    }

    // Never acts when the controller sees a minority of regions.
    if !executes.is_empty() {
        let v = RegionVisibility::of(snap);
        prop_assert!(
            v.majority(),
            "acted seeing {} of {} regions: {executes:#?}",
            v.visible,
            v.total
        );
        prop_assert!(v.visible >= g.min_regions_visible_to_act);
    }

    // Never two regions evacuated at once.
    let open = sim.memory.evacuation_in_progress();
    prop_assert!(open.len() <= 1, "evacuations in progress: {open:?}");

    let total = snap.shard.voters.len();
    for d in &executes {
        match (&d.action, &d.target) {
            // No membership change that could leave fewer live voters than a quorum.
            (ActionKind::ReplaceVotersElsewhere, Target::Region(r)) => {
                let outside = alive_voters(snap, |x| x != r);
                prop_assert!(
                    outside * 2 > total,
                    "evacuated {r} with {outside} of {total} live voters outside it"
                );
            }
            (ActionKind::RestartNode, Target::Node(id)) => {
                let node = snap.nodes.iter().find(|n| n.node_id == *id).unwrap();
                if snap.shard.voters.contains(id)
                    && health::node_liveness(snap, node) == Liveness::Alive
                {
                    let alive = alive_voters(snap, |_| true);
                    prop_assert!(
                        (alive - 1) * 2 > total,
                        "restarted live voter {id}, {alive} of {total} alive"
                    );
                }
            }
            (ActionKind::TransferLeadershipAway, _) => {
                prop_assert!(
                    snap.shard.leader.is_some(),
                    "moved leadership without a leader"
                );
            }
            _ => {}
        }
    }

    // The budgets as they stood: the rate limit, the failure budget of each
    // action and target, each node's restart budget, back-off and quarantine.
    let limited = out
        .iter()
        .filter(|d| {
            matches!(d.disposition, Disposition::Execute | Disposition::DryRun)
                && d.action.is_rate_limited()
                && d.tier != "operator"
        })
        .count() as u32;
    prop_assert!(
        limited <= before.rate_limit_remaining,
        "{limited} rate-limited actions with {} left",
        before.rate_limit_remaining
    );
    for d in &executes {
        if d.action.is_notification() {
            continue;
        }
        let blocked = before
            .failure_budgets
            .iter()
            .find(|f| f.action == d.action && f.target == d.target)
            .and_then(|f| f.blocked_until_ms);
        prop_assert!(
            blocked.is_none(),
            "retried {} on {} while its failure budget was spent",
            d.action.name(),
            d.target
        );
        if let (ActionKind::RestartNode, Target::Node(id)) = (&d.action, &d.target) {
            prop_assert!(
                !before.quarantined.contains(id),
                "restarted quarantined node {id}"
            );
            if let Some(r) = before.restart_budgets.iter().find(|r| r.node == *id) {
                prop_assert!(r.remaining > 0, "restarted node {id} past its budget");
                prop_assert!(
                    r.next_restart_after_ms.is_none_or(|t| t <= d.at_ms),
                    "restarted node {id} inside its back-off"
                );
            }
        }
    }

    // Never more than maxActionsPerWindow disruptive actions per window (the
    // ones that failed do not count).
    for d in out {
        if matches!(d.disposition, Disposition::Execute | Disposition::DryRun)
            && d.action.is_rate_limited()
        {
            acted.0.push((d.id, d.at_ms));
        }
    }
    acted.0.retain(|(id, _)| !failed.0.contains(id));
    let window = g.window_ms as u64;
    for (i, (_, t)) in acted.0.iter().enumerate() {
        let n = acted.0[i..]
            .iter()
            .take_while(|(_, u)| *u < t + window)
            .count();
        prop_assert!(
            n <= g.max_actions_per_window as usize,
            "{n} actions within {window} ms of {t}"
        );
    }

    for d in out {
        // Minority recovery is never decided by the engine.
        prop_assert_ne!(d.action, ActionKind::ForceRecoverFromMinority);
        prop_assert!(!d.reason.is_empty());
        if let Disposition::Suppressed { guard, why } = &d.disposition {
            prop_assert!(!why.is_empty());
            // Restoring actions are never held back by the budget of
            // disruptive ones.
            if d.action.is_restoring() {
                prop_assert!(
                    !matches!(guard, Guard::Cooldown | Guard::RateLimit),
                    "{} suppressed by {guard}",
                    d.action.name()
                );
            }
        }
    }
    Ok(())
}

/// One step of a fault timeline: apply the fault, let time pass, tick, check.
fn step(
    sim: &mut Sim,
    dt: u64,
    op: &Op,
    acted: &mut Acted,
    failed: &mut Failed,
    last_id: &mut DecisionId,
) -> Result<(), TestCaseError> {
    apply(sim, op, failed);
    sim.now += dt;
    tick_checked(sim, acted, failed, last_id)?;
    if let Op::Flap(n) = op {
        if sim.nodes.iter().any(|x| x.id == *n) {
            sim.revive(*n);
        }
    }
    Ok(())
}

fn tick_checked(
    sim: &mut Sim,
    acted: &mut Acted,
    failed: &mut Failed,
    last_id: &mut DecisionId,
) -> Result<(), TestCaseError> {
    let before = Engine::budgets(&sim.playbook, &sim.memory, sim.now);
    let out = sim.tick();
    // Outcomes the binding reported within the tick (restarts on a down host).
    for d in &out {
        if sim
            .memory
            .record(d.id)
            .and_then(|r| r.outcome.as_ref())
            .is_some_and(|o| !o.succeeded())
        {
            failed.0.insert(d.id);
        }
    }
    let snap = sim.history.last().unwrap().clone();
    check_tick(sim, &snap, &out, &before, acted, failed)?;
    for d in &out {
        prop_assert!(d.id > *last_id, "decision ids increase");
        *last_id = d.id;
    }
    Ok(())
}

/// Regions that no longer have any node (evacuated): they wait for a person.
fn nodeless_regions(sim: &Sim) -> BTreeSet<String> {
    sim.regions
        .iter()
        .filter(|r| !sim.nodes.iter().any(|n| &n.region == *r))
        .cloned()
        .collect()
}

/// What is left to converge, in words (empty once converged).
fn not_converged(sim: &Sim) -> Vec<String> {
    let waiting = nodeless_regions(sim);
    let mut left = Vec::new();
    for r in sim.memory.drained_regions().keys() {
        if !waiting.contains(r) {
            left.push(format!("region {r} is drained"));
        }
    }
    for r in &sim.drained {
        if !waiting.contains(r) {
            left.push(format!("region {r} is at weight 0 in the cluster"));
        }
    }
    if sim.memory.sales_paused().is_some() || sim.sales_paused {
        left.push("sales are paused".into());
    }
    for a in sim.memory.activations() {
        let waits = matches!(&a.target, Target::Region(r) if waiting.contains(r));
        if !waits {
            left.push(format!("tier {} is {:?} for {}", a.tier, a.phase, a.target));
        }
    }
    for n in sim.memory.quarantined_nodes().keys() {
        left.push(format!("node {n} is quarantined"));
    }
    left
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 64 by default; PROPTEST_CASES=5000 for a longer search.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn safety_guards_hold_over_random_histories(
        pb in playbook(),
        steps in prop::collection::vec((500u64..4_000, op()), 1..80),
        binding_acts_at_once in any::<bool>(),
    ) {
        let mut sim = Sim::three_regions(pb);
        // Either the binding carries out each action at once (restarts revive,
        // restarts in a down host fail), or outcomes arrive at random times.
        sim.auto_succeed = binding_acts_at_once;
        let (mut acted, mut failed, mut last_id) = (Acted::default(), Failed::default(), 0);
        for (dt, op) in &steps {
            step(&mut sim, *dt, op, &mut acted, &mut failed, &mut last_id)?;
        }
        // The memory survives a restart unchanged.
        let json = serde_json::to_string(&sim.memory).unwrap();
        let back: EngineMemory = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, sim.memory);
    }

    /// Once every fault has ended and the cluster stays healthy, the engine
    /// converges within the playbook's stated bound, and stays converged.
    #[test]
    fn the_engine_converges_once_faults_end(
        pb in playbook_with(1..=2),
        steps in prop::collection::vec((500u64..4_000, op()), 1..60),
        restarts in prop::collection::vec(any::<bool>(), 64),
        binding_acts_at_once in any::<bool>(),
    ) {
        let mut sim = Sim::three_regions(pb);
        sim.auto_succeed = binding_acts_at_once;
        let (mut acted, mut failed, mut last_id) = (Acted::default(), Failed::default(), 0);
        for (dt, op) in &steps {
            step(&mut sim, *dt, op, &mut acted, &mut failed, &mut last_id)?;
        }
        // The faults end: everything heals, the playbook is switched back on,
        // the binding finishes what it started, and actions succeed from now on.
        sim.heal_all();
        sim.playbook.paused = false;
        sim.playbook.dry_run = false;
        sim.close_open_actions();
        sim.auto_succeed = true;
        let bound = sim.playbook.convergence_bound_ms();
        let healthy_from = sim.now + 1_000; // the first healthy snapshot
        let mut converged_at = None;
        let mut i = 0;
        while sim.now < healthy_from + bound + 10_000 {
            if restarts[i % restarts.len()] && i % 7 == 0 {
                sim.restart_controller();
            }
            i += 1;
            sim.now += 1_000;
            tick_checked(&mut sim, &mut acted, &mut failed, &mut last_id)?;
            let left = not_converged(&sim);
            match (left.is_empty(), converged_at) {
                (true, None) => converged_at = Some(sim.now),
                (false, Some(at)) => prop_assert!(
                    false,
                    "converged at {at} but then {left:?} at {}",
                    sim.now
                ),
                _ => {}
            }
        }
        let left = not_converged(&sim);
        prop_assert!(left.is_empty(), "not converged after the bound ({bound} ms): {left:?}");
        let at = converged_at.unwrap();
        // Decisions are taken at ticks: the first tick at or after the bound.
        prop_assert!(
            at <= healthy_from + bound + 1_000,
            "converged {} ms after the faults ended; the bound is {bound} ms",
            at - healthy_from
        );
    }

    #[test]
    fn the_engine_is_deterministic(
        pb in playbook(),
        steps in prop::collection::vec((500u64..4_000, op()), 1..40),
    ) {
        let run = || {
            let mut sim = Sim::three_regions(pb.clone());
            sim.auto_succeed = false;
            let mut failed = Failed::default();
            for (dt, op) in &steps {
                apply(&mut sim, op, &mut failed);
                sim.now += dt;
                sim.tick();
                if let Op::Flap(n) = op {
                    if sim.nodes.iter().any(|x| x.id == *n) {
                        sim.revive(*n);
                    }
                }
            }
            sim.decisions
        };
        prop_assert_eq!(run(), run());
    }
}

/// The properties above are only worth something if the random histories
/// reach the actions and guards they speak about. This runs the same
/// generators with a fixed seed and checks that they do.
#[test]
fn random_histories_reach_every_guarded_action() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = (
        playbook(),
        prop::collection::vec((500u64..4_000, op()), 40..80),
    );
    let mut executed = BTreeSet::new();
    let mut suppressed = BTreeSet::new();
    let mut awaiting = 0;
    let mut converge = 0;
    for i in 0..200 {
        let (pb, steps) = strategy.new_tree(&mut runner).unwrap().current();
        let mut sim = Sim::three_regions(pb);
        sim.auto_succeed = i % 2 == 0;
        let mut failed = Failed::default();
        for (dt, op) in &steps {
            apply(&mut sim, op, &mut failed);
            sim.now += dt;
            for d in sim.tick() {
                if d.tier == roomkeeper_playbook::CONVERGE {
                    converge += 1;
                }
                match &d.disposition {
                    Disposition::Execute => {
                        executed.insert(d.action.name());
                    }
                    Disposition::Suppressed { guard, .. } => {
                        suppressed.insert(guard.name());
                    }
                    Disposition::AwaitingApproval { .. } => awaiting += 1,
                    Disposition::DryRun => {}
                }
            }
            if let Op::Flap(n) = op {
                if sim.nodes.iter().any(|x| x.id == *n) {
                    sim.revive(*n);
                }
            }
        }
    }
    for a in [
        ActionKind::RestartNode,
        ActionKind::TransferLeadershipAway,
        ActionKind::SetTrafficWeightZero,
        ActionKind::RestoreTrafficWeight,
        ActionKind::ReplaceVotersElsewhere,
        ActionKind::PauseSales,
        ActionKind::ResumeSales,
        ActionKind::PageHuman,
    ] {
        assert!(
            executed.contains(a.name()),
            "never executed {}: {executed:?}",
            a.name()
        );
    }
    for g in [
        Guard::Paused,
        Guard::MajorityVisible,
        Guard::Cooldown,
        Guard::RateLimit,
        Guard::NeverBelowQuorum,
        Guard::OneRegionAtATime,
        Guard::FailureBudget,
        Guard::RestartBackOff,
        Guard::RestartBudget,
        Guard::Quarantined,
    ] {
        assert!(
            suppressed.contains(g.name()),
            "guard {} never used: {suppressed:?}",
            g.name()
        );
    }
    assert!(awaiting > 0, "no approval was ever requested");
    assert!(converge > 0, "no orphaned effect was ever undone");
}
