//! Issue 11, "A playbook you can leave unattended": the incidents that kept a
//! cluster degraded after the faults were gone, replayed on the simulated
//! cluster, and the rules that now prevent them — restoring actions outside
//! the rate limit, failures on their own budget, a global outage superseding
//! per-region tiers, orphaned effects undone, flap damping with quarantine,
//! and when T4 reopens sales.

mod support;

use roomkeeper_playbook::{
    default_playbook, ActionKind, Decision, EffectOwner, Engine, EngineMemory, Guard,
    OperatorCommand, Phase, Playbook, Target, CONVERGE,
};
use support::{about, executed, guard_of, Sim};

use ActionKind::*;

fn region(r: &str) -> Target {
    Target::Region(r.into())
}

/// Every duration of a playbook times `f`, as the demo and drills run it
/// (the budgets' windows included).
fn scaled(mut p: Playbook, f: f64) -> Playbook {
    let s = |ms: i64| ((ms as f64) * f).round() as i64;
    for t in &mut p.tiers {
        t.trigger.for_ms = s(t.trigger.for_ms);
        t.trigger.clear_for_ms = s(t.trigger.clear_for_ms);
        if let Some(a) = &mut t.approval {
            a.timeout_ms = s(a.timeout_ms);
        }
    }
    let g = &mut p.guards;
    g.cooldown_ms = s(g.cooldown_ms);
    g.window_ms = s(g.window_ms);
    g.restart_budget.window_ms = s(g.restart_budget.window_ms);
    g.restart_budget.backoff_base_ms = s(g.restart_budget.backoff_base_ms);
    g.failure_budget.window_ms = s(g.failure_budget.window_ms);
    g.failure_budget.retry_after_ms = s(g.failure_budget.retry_after_ms);
    p
}

/// The three-region layout of the incident report: 2-2-1 voters.
fn incident_cluster(playbook: Playbook) -> Sim {
    Sim::with_layout(
        playbook,
        &[
            (1, "ap-south"),
            (2, "ap-south"),
            (3, "eu-west"),
            (4, "eu-west"),
            (5, "us-east"),
        ],
    )
}

fn disruptive_region_actions(ds: &[Decision]) -> Vec<&Decision> {
    ds.iter()
        .filter(|d| {
            matches!(d.target, Target::Region(_))
                && matches!(
                    d.action,
                    SetTrafficWeightZero | TransferLeadershipAway | ReplaceVotersElsewhere
                )
        })
        .collect()
}

/// Asserts the engine has converged: nothing drained, sales open, no tier
/// active, nobody quarantined — in memory and in the simulated cluster.
fn assert_converged(sim: &Sim) {
    assert!(
        sim.memory.drained_regions().is_empty(),
        "drained: {:?}",
        sim.memory.drained_regions()
    );
    assert!(sim.drained.is_empty(), "cluster drained: {:?}", sim.drained);
    assert_eq!(sim.memory.sales_paused(), None);
    assert!(!sim.sales_paused);
    assert!(
        sim.memory.activations().is_empty(),
        "{:#?}",
        sim.memory.activations()
    );
    assert!(sim.memory.quarantined_nodes().is_empty());
}

// ---- the observed incident ----------------------------------------------------

/// Whole-cluster quorum loss: three regions equally degraded, hosts down so
/// every restart fails, and no leader. Before issue 11, T2 drained ap-south,
/// the failed restarts and a leader transfer without a leader spent the rate
/// limit (6 per 2 min at the demo's scale), T2's `restoreTrafficWeight
/// ap-south` was rate limited when everything was healthy again, and the
/// region stayed at weight 0 for good with no tier active.
#[test]
fn the_unattended_quorum_loss_incident_converges() {
    let pb = scaled(default_playbook(), 0.2); // 6 actions per 2 min
    let bound = pb.convergence_bound_ms();
    let mut sim = incident_cluster(pb);
    sim.secs(10);
    sim.unrestartable = vec!["ap-south".into(), "eu-west".into(), "us-east".into()];
    for id in [1, 3, 5] {
        sim.kill(id);
    }
    for id in [2, 4] {
        sim.node(id).p99_ms = 900.0;
        sim.node(id).error_rate = 0.3;
    }
    assert_eq!(sim.leader, None);
    // A minute of outage: long enough for T2's hold-down (4 s at this scale),
    // and for the failed restarts to have spent the old shared budget.
    let during = sim.secs(60);

    assert!(
        disruptive_region_actions(&during).is_empty(),
        "no region is drained, moved or evacuated for a global outage: {:#?}",
        disruptive_region_actions(&during)
    );
    assert!(sim
        .memory
        .activations()
        .iter()
        .all(|a| !matches!(a.target, Target::Region(_))));
    assert!(sim.sales_paused, "T4 paused sales");
    // The failed restarts spent their own budget, not the rate limit.
    let budgets = Engine::budgets(&sim.playbook, &sim.memory, sim.now);
    assert_eq!(budgets.rate_limit_remaining, budgets.rate_limit_max);
    assert!(during
        .iter()
        .any(|d| d.action == RestartNode && guard_of(d) == Some(Guard::FailureBudget)));
    let failure_pages: Vec<_> = during
        .iter()
        .filter(|d| {
            d.phase == Phase::Escalation
                && d.action == PageHuman
                && d.reason.contains("failed 3 times")
        })
        .collect();
    assert_eq!(
        failure_pages.len(),
        3,
        "one page per failing node, not one per exhausted window: {failure_pages:#?}"
    );

    // Hosts come back; everything is healthy from here on.
    sim.heal_all();
    let after = sim.run(bound + 2_000, 1_000);
    assert!(
        executed(&after)
            .iter()
            .all(|d| !d.action.is_rate_limited() || d.action == RestartNode),
        "{:#?}",
        executed(&after)
    );
    assert_converged(&sim);
}

#[test]
fn a_global_outage_supersedes_per_region_tiers_from_its_first_snapshot() {
    let mut sim = incident_cluster(default_playbook());
    sim.secs(10);
    sim.unrestartable = vec!["ap-south".into(), "eu-west".into(), "us-east".into()];
    for id in [1, 3, 5] {
        sim.kill(id);
    }
    for id in [2, 4] {
        sim.node(id).p99_ms = 900.0;
    }
    // The T2 hold-down (20 s) passes long before anything comes back.
    let d = sim.secs(120);
    assert!(disruptive_region_actions(&d).is_empty(), "{d:#?}");
    let text = Engine::explain(
        &sim.playbook,
        &sim.history,
        sim.now,
        &sim.memory,
        &region("ap-south"),
    );
    assert!(text.contains("superseded"), "{text}");

    // Quorum returns, but ap-south stays degraded (node 1's host is still
    // down): its hold-down starts when the global outage ends, not when the
    // region first degraded.
    sim.unrestartable = vec!["ap-south".into()];
    sim.revive(3);
    sim.revive(5);
    assert!(sim.leader.is_some());
    let early = sim.secs(19);
    assert!(
        about(&early, SetTrafficWeightZero, &region("ap-south")).is_empty(),
        "{early:#?}"
    );
    let due = sim.secs(3);
    assert!(
        about(&due, SetTrafficWeightZero, &region("ap-south"))
            .iter()
            .any(|d| d.disposition.is_execute()),
        "T2 acts on a region that stays degraded after the outage: {due:#?}"
    );
}

// ---- restoring actions are outside the rate limit -------------------------------

#[test]
fn a_spent_rate_limit_never_keeps_a_region_drained() {
    let mut pb = default_playbook();
    pb.guards.max_actions_per_window = 2;
    let mut sim = Sim::three_regions(pb);
    sim.secs(5);
    sim.node(3).p99_ms = 900.0;
    sim.node(4).p99_ms = 900.0;
    let d = sim.secs(25);
    assert!(about(&d, SetTrafficWeightZero, &region("b"))[0]
        .disposition
        .is_execute());
    assert_eq!(
        Engine::budgets(&sim.playbook, &sim.memory, sim.now).rate_limit_remaining,
        0,
        "moving leadership and traffic spent the budget"
    );
    sim.node(3).p99_ms = 20.0;
    sim.node(4).p99_ms = 20.0;
    let d = sim.secs(125);
    let restore = about(&d, RestoreTrafficWeight, &region("b"));
    assert_eq!(restore.len(), 1, "{d:#?}");
    assert!(restore[0].disposition.is_execute(), "{:#?}", restore[0]);
    assert!(sim.memory.drained_regions().is_empty());
    assert!(sim.drained.is_empty());
    assert_eq!(
        Engine::budgets(&sim.playbook, &sim.memory, sim.now).rate_limit_used,
        2,
        "a restore does not spend the budget"
    );
}

#[test]
fn restoring_actions_skip_the_cooldown() {
    let mut pb = default_playbook();
    pb.guards.cooldown_ms = 3_600_000;
    let mut sim = Sim::three_regions(pb);
    // Drain b, restore it, drain it again (cooldown of an hour between the
    // two drains), restore it again right away.
    for round in 0..2 {
        sim.node(3).p99_ms = 900.0;
        sim.node(4).p99_ms = 900.0;
        sim.secs(25);
        sim.node(3).p99_ms = 20.0;
        sim.node(4).p99_ms = 20.0;
        let d = sim.secs(125);
        let restores = about(&d, RestoreTrafficWeight, &region("b"));
        if round == 0 {
            assert!(restores[0].disposition.is_execute());
        } else {
            assert!(restores.is_empty(), "nothing drained, nothing to restore");
        }
    }
    let drains: Vec<_> = about(&sim.decisions, SetTrafficWeightZero, &region("b"));
    assert_eq!(guard_of(drains[1]), Some(Guard::Cooldown));
    assert!(sim.memory.drained_regions().is_empty());
}

// ---- failed actions: their own budget --------------------------------------------

#[test]
fn failed_actions_spend_their_own_budget_then_a_human_is_paged() {
    let mut sim = Sim::three_regions(default_playbook()); // cooldown 60 s, 3 failures per 10 min
    sim.secs(5);
    sim.unrestartable.push("b".into()); // node 3's host is down: restarts fail
    sim.kill(3);
    let d = sim.secs(200);
    let tries: Vec<_> = about(&d, RestartNode, &Target::Node(3))
        .into_iter()
        .filter(|x| x.disposition.is_execute())
        .collect();
    assert_eq!(tries.len(), 3, "three failures, then no more retries");
    let blocked = about(&d, RestartNode, &Target::Node(3))
        .into_iter()
        .find(|x| guard_of(x) == Some(Guard::FailureBudget))
        .expect("the fourth retry is stopped by the failure budget");
    let page = d
        .iter()
        .find(|x| x.action == PageHuman && x.phase == Phase::Escalation)
        .expect("a human is paged");
    assert!(page.disposition.is_execute());
    assert_eq!(page.follows, Some(blocked.id));
    assert_eq!(page.target, Target::Node(3));
    assert_eq!(page.evidence.len(), 3, "{:#?}", page.evidence);
    assert!(page.evidence[0].value.contains("region b is unreachable"));

    let budgets = Engine::budgets(&sim.playbook, &sim.memory, sim.now);
    assert_eq!(
        budgets.rate_limit_used, 0,
        "failures do not spend the rate limit"
    );
    let fb = &budgets.failure_budgets[0];
    assert_eq!((fb.failures, fb.remaining), (3, 0));
    let until = fb.blocked_until_ms.unwrap();

    // Nothing is retried (or re-recorded) until the window has passed…
    let quiet = sim.run(until - sim.now - 1_000, 1_000);
    assert!(
        about(&quiet, RestartNode, &Target::Node(3)).is_empty(),
        "{quiet:#?}"
    );
    // …then it is tried again with a fresh budget.
    sim.unrestartable.clear();
    let d = sim.secs(2);
    assert!(about(&d, RestartNode, &Target::Node(3))[0]
        .disposition
        .is_execute());
    assert!(sim.node(3).up);
}

#[test]
fn leadership_is_not_moved_while_there_is_no_leader() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    // An election that does not finish: every voter is alive, none leads.
    sim.leader = None;
    sim.node(3).p99_ms = 900.0;
    sim.node(4).p99_ms = 900.0;
    let d = sim.secs(60);
    let moves = about(&d, TransferLeadershipAway, &region("b"));
    assert_eq!(moves.len(), 1, "recorded once: {d:#?}");
    assert_eq!(guard_of(moves[0]), Some(Guard::NoLeader));
    assert!(about(&d, SetTrafficWeightZero, &region("b"))[0]
        .disposition
        .is_execute());
    sim.elect();
    let d = sim.secs(2);
    assert!(about(&d, TransferLeadershipAway, &region("b"))[0]
        .disposition
        .is_execute());
}

// ---- effects no tier owns ------------------------------------------------------

#[test]
fn a_healthy_region_left_at_weight_zero_with_no_tier_is_restored() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    sim.node(3).p99_ms = 900.0;
    sim.node(4).p99_ms = 900.0;
    sim.secs(25);
    assert!(sim.memory.drained_regions().contains_key("b"));
    // The tier that drained it leaves the playbook mid-incident; region b
    // recovers. No tier owns the drain any more.
    sim.playbook.tiers.retain(|t| t.name != "move");
    sim.node(3).p99_ms = 20.0;
    sim.node(4).p99_ms = 20.0;
    // The hold is the longest stand-down of the tiers that drain (T3: 5 min).
    let early = sim.secs(299);
    assert!(about(&early, RestoreTrafficWeight, &region("b")).is_empty());
    let d = sim.secs(2);
    let restore = about(&d, RestoreTrafficWeight, &region("b"));
    assert_eq!(restore.len(), 1, "{d:#?}");
    assert!(restore[0].disposition.is_execute());
    assert_eq!(restore[0].tier, CONVERGE);
    assert_eq!(restore[0].phase, Phase::StandDown);
    assert!(
        restore[0].reason.contains("no tier owns that any more"),
        "{}",
        restore[0].reason
    );
    assert!(sim.drained.is_empty());
    assert!(sim.memory.drained_regions().is_empty());
}

#[test]
fn sales_left_paused_with_no_tier_are_resumed_but_an_operators_drain_is_not_undone() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    let drain = Engine::operator_command(
        &sim.playbook,
        &sim.history,
        sim.now,
        &mut sim.memory,
        OperatorCommand {
            action: SetTrafficWeightZero,
            target: region("c"),
            requested_by: "erin".into(),
            approved_by: None,
            reason: "maintenance".into(),
        },
    );
    assert!(drain.disposition.is_execute());
    sim.unrestartable = vec!["a".into(), "b".into()];
    sim.kill(1);
    sim.kill(3);
    sim.kill(4);
    sim.secs(10);
    assert_eq!(sim.memory.sales_paused(), Some(EffectOwner::Engine));
    // T4 is removed from the playbook while sales are paused.
    sim.playbook.tiers.retain(|t| t.name != "protect");
    sim.heal_all();
    let d = sim.secs(5);
    let resume = about(&d, ResumeSales, &Target::Shard);
    assert_eq!(resume.len(), 1, "{d:#?}");
    assert_eq!(resume[0].tier, CONVERGE);
    assert!(resume[0].disposition.is_execute());
    assert!(!sim.sales_paused);
    let d = sim.secs(1_000);
    assert!(about(&d, RestoreTrafficWeight, &region("c")).is_empty());
    assert_eq!(
        sim.memory.drained_regions().get("c"),
        Some(&EffectOwner::Operator)
    );
}

// ---- flap damping ----------------------------------------------------------------

/// At the demo's scale (cooldown 6 s), T1 used to restart a flapping node five
/// times in 50 s without ever escalating.
#[test]
fn a_flapping_node_is_quarantined_once_its_restart_budget_is_spent() {
    let pb = scaled(default_playbook(), 0.1);
    let window = pb.guards.restart_budget.window_ms as u64;
    let mut sim = Sim::three_regions(pb);
    sim.secs(5);
    for _ in 0..6 {
        sim.kill(2);
        sim.secs(8);
    }
    let restarts: Vec<u64> = executed(&sim.decisions)
        .iter()
        .filter(|d| d.action == RestartNode && d.target == Target::Node(2))
        .map(|d| d.at_ms)
        .collect();
    assert_eq!(restarts.len(), 3, "{restarts:?}");
    let pages: Vec<_> = sim
        .decisions
        .iter()
        .filter(|d| d.action == PageHuman && d.phase == Phase::Escalation)
        .collect();
    assert_eq!(pages.len(), 1, "paged once: {pages:#?}");
    assert!(pages[0].disposition.is_execute());
    assert_eq!(pages[0].target, Target::Node(2));
    assert!(
        pages[0].reason.contains("quarantines it"),
        "{}",
        pages[0].reason
    );
    let limited = sim.memory.record(pages[0].follows.unwrap()).unwrap();
    assert_eq!(guard_of(&limited.decision), Some(Guard::RestartBudget));
    assert_eq!(
        pages[0]
            .evidence
            .iter()
            .filter(|e| e.signal.starts_with("node 2 restart"))
            .count(),
        3
    );
    let q = &sim.memory.quarantined_nodes()[&2];
    assert_eq!(q.page_decision, Some(pages[0].id));
    let budgets = Engine::budgets(&sim.playbook, &sim.memory, sim.now);
    assert_eq!(budgets.quarantined, vec![2]);
    assert!(!sim.node(2).up, "a quarantined node is not restarted");

    // It keeps flapping by itself: no restart, no second page.
    for _ in 0..5 {
        sim.revive(2);
        sim.secs(5);
        sim.kill(2);
        sim.secs(5);
    }
    assert_eq!(
        executed(&sim.decisions)
            .iter()
            .filter(|d| d.action == RestartNode)
            .count(),
        3
    );
    assert_eq!(
        sim.decisions
            .iter()
            .filter(|d| d.action == PageHuman && d.phase == Phase::Escalation)
            .count(),
        1
    );

    // Healthy for the whole window: the quarantine lifts by itself.
    sim.revive(2);
    sim.run(window - 2_000, 1_000);
    assert!(sim.memory.is_quarantined(2));
    let d = sim.secs(3);
    assert!(!sim.memory.is_quarantined(2), "{d:#?}");
    let lifted = about(&d, RecordEvent, &Target::Node(2));
    assert!(
        lifted[0].reason.contains("quarantine is lifted"),
        "{:#?}",
        lifted
    );
}

#[test]
fn restarts_of_one_node_back_off_exponentially() {
    let mut pb = default_playbook();
    pb.guards.cooldown_ms = 0;
    pb.guards.restart_budget.max_restarts = 4;
    pb.guards.restart_budget.backoff_base_ms = 10_000;
    let mut sim = Sim::three_regions(pb);
    sim.auto_succeed = false;
    sim.kill(3);
    let mut restarts = Vec::new();
    for _ in 0..120 {
        for d in sim.secs(1) {
            if d.action == RestartNode && d.disposition.is_execute() {
                restarts.push(d.at_ms);
                // The restart "succeeds" but the node stays down.
                sim.memory
                    .record_outcome(
                        d.id,
                        roomkeeper_playbook::ActionOutcome::Succeeded {
                            at_ms: sim.now,
                            detail: "restarted".into(),
                        },
                    )
                    .unwrap();
            }
        }
    }
    let gaps: Vec<u64> = restarts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, vec![10_000, 20_000, 40_000], "{restarts:?}");
    assert!(sim.memory.is_quarantined(3), "the fifth restart is refused");
    let backoffs = about(&sim.decisions, RestartNode, &Target::Node(3))
        .into_iter()
        .filter(|d| guard_of(d) == Some(Guard::RestartBackOff))
        .count();
    assert_eq!(backoffs, 3, "each back-off is recorded once");
}

#[test]
fn an_operator_can_release_a_quarantine() {
    let pb = scaled(default_playbook(), 0.1);
    let mut sim = Sim::three_regions(pb);
    for _ in 0..5 {
        sim.kill(2);
        sim.secs(8);
    }
    assert!(sim.memory.is_quarantined(2));
    assert!(sim
        .memory
        .release_quarantine(4, "frank", "", sim.now)
        .is_err());
    assert!(sim.memory.release_quarantine(2, " ", "", sim.now).is_err());
    let d = sim
        .memory
        .release_quarantine(2, "frank", "replaced the bad DIMM", sim.now)
        .unwrap();
    assert!(d.reason.contains("replaced the bad DIMM"), "{}", d.reason);
    assert!(matches!(d.phase, Phase::Operator { .. }));
    assert!(sim.memory.quarantined_nodes().is_empty());
    // The node is still down; once the old restarts leave the budget's window
    // the engine restarts it again.
    sim.secs(70);
    assert!(sim.node(2).up);
}

// ---- T4: when sales reopen ----------------------------------------------------

/// A stated property of the default playbook: T4 reopens sales exactly 30 s
/// (T4's `clearForMs`) after the first snapshot that shows a quorum of live
/// voters **and** an elected leader — not earlier, and not later for any
/// spent rate limit, cooldown or failure budget.
#[test]
fn t4_reopens_sales_30_s_after_quorum_and_a_leader_are_back() {
    let mut pb = default_playbook();
    assert_eq!(pb.sales_reopen_after_ms(), Some(30_000));
    pb.guards.max_actions_per_window = 1;
    let mut sim = Sim::three_regions(pb);
    sim.secs(5);
    sim.unrestartable = vec!["a".into(), "b".into()];
    sim.kill(1);
    sim.kill(3);
    sim.kill(4);
    sim.secs(60);
    assert!(sim.sales_paused);

    // Quorum flickers back for 10 s: not long enough.
    sim.revive(3);
    sim.secs(10);
    sim.kill(3);
    let d = sim.secs(20);
    assert!(about(&d, ResumeSales, &Target::Shard).is_empty());

    // A majority of voters is back, but no leader is elected for 10 s.
    sim.revive(3);
    sim.leader = None;
    let d = sim.secs(10);
    assert!(about(&d, ResumeSales, &Target::Shard).is_empty());
    sim.elect();
    let back = sim.now + 1_000; // the first snapshot with quorum and a leader
    let d = sim.secs(30); // up to back + 29 s
    assert!(about(&d, ResumeSales, &Target::Shard).is_empty(), "{d:#?}");
    let d = sim.secs(1);
    let resume = about(&d, ResumeSales, &Target::Shard);
    assert_eq!(resume.len(), 1, "{d:#?}");
    assert!(resume[0].disposition.is_execute());
    assert_eq!(resume[0].at_ms, back + 30_000);
    assert!(!sim.sales_paused);
}

// ---- budgets for metrics, memory compatibility ----------------------------------

#[test]
fn budgets_show_what_is_left_of_each_guard() {
    let mut sim = Sim::three_regions(default_playbook());
    let fresh = Engine::budgets(&sim.playbook, &sim.memory, sim.now);
    assert_eq!(fresh.rate_limit_remaining, 6);
    assert!(fresh.cooldowns.is_empty() && fresh.failure_budgets.is_empty());
    sim.kill(3);
    sim.secs(10);
    let b = Engine::budgets(&sim.playbook, &sim.memory, sim.now);
    assert_eq!((b.rate_limit_used, b.rate_limit_remaining), (1, 5));
    assert_eq!(b.cooldowns.len(), 1);
    assert_eq!(b.cooldowns[0].action, RestartNode);
    let r = &b.restart_budgets[0];
    assert_eq!((r.node, r.restarts, r.remaining), (3, 1, 2));
    let json = serde_json::to_value(&b).unwrap();
    assert!(json.get("rateLimitRemaining").is_some(), "{json}");
}

#[test]
fn memory_written_before_these_budgets_still_reads() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.kill(3);
    sim.secs(10);
    let json = serde_json::to_value(&sim.memory).unwrap();
    for field in ["quarantined", "failureBlocks", "converging"] {
        assert!(json.get(field).is_none(), "{field} is omitted when empty");
    }
    let back: EngineMemory = serde_json::from_value(json).unwrap();
    assert_eq!(back, sim.memory);
}

#[test]
fn a_tier_active_before_a_global_outage_waits_a_new_hold_down_after_it() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    // Regions b and c degrade; T2 drains b, and c waits (one region at a time).
    for id in [3, 4, 5] {
        sim.node(id).p99_ms = 900.0;
    }
    let d = sim.secs(25);
    assert_eq!(
        guard_of(about(&d, SetTrafficWeightZero, &region("c"))[0]),
        Some(Guard::OneRegionAtATime)
    );
    // Quorum is lost for a minute; meanwhile an operator restores b, so
    // nothing but the outage holds c's pending drain back.
    sim.unrestartable = vec!["a".into(), "b".into()];
    for id in [1, 2, 3] {
        sim.kill(id);
    }
    let during = sim.secs(30);
    let restore = Engine::operator_command(
        &sim.playbook,
        &sim.history,
        sim.now,
        &mut sim.memory,
        OperatorCommand {
            action: RestoreTrafficWeight,
            target: region("b"),
            requested_by: "grace".into(),
            approved_by: None,
            reason: "b is fine, the outage is global".into(),
        },
    );
    assert!(restore.disposition.is_execute());
    let during2 = sim.secs(30);
    assert!(disruptive_region_actions(&during).is_empty(), "{during:#?}");
    assert!(
        disruptive_region_actions(&during2).is_empty(),
        "{during2:#?}"
    );
    sim.unrestartable.clear();
    sim.heal_all();
    sim.node(5).p99_ms = 900.0;
    let back = sim.now + 1_000; // the first snapshot with quorum again
    let after = sim.secs(200);
    let c = about(&after, SetTrafficWeightZero, &region("c"));
    let drained_c = c
        .iter()
        .find(|d| d.disposition.is_execute())
        .expect("c drained");
    assert!(
        drained_c.at_ms >= back + 20_000,
        "c is drained only after a fresh 20 s hold-down: at {} (quorum back at {back})",
        drained_c.at_ms
    );
}
