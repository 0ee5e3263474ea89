//! One test (or a few) per guard. Each reads as the rule it checks.

mod support;

use roomkeeper_playbook::{
    default_playbook, ActionKind, ActionOutcome, Approval, Condition, Disposition, Engine,
    EngineMemory, Guard, Guards, OnTimeout, Phase, Playbook, SignalThresholdSpec, Target, Tier,
    Trigger,
};
use support::{about, executed, guard_of, Sim};

use ActionKind::*;

fn tier(name: &str, level: u8, condition: Condition, for_ms: i64, clear_for_ms: i64) -> Tier {
    Tier {
        name: name.into(),
        level,
        trigger: Trigger {
            condition,
            for_ms,
            clear_for_ms,
        },
        actions: vec![],
        stand_down_actions: vec![],
        approval: None,
    }
}

/// T1 only: restart an unhealthy node after 5 s; stand down after 10 s clear.
fn heal_only() -> Playbook {
    let mut t = tier("heal", 1, Condition::NodeUnhealthy, 5_000, 10_000);
    t.actions = vec![RestartNode];
    t.stand_down_actions = vec![RecordEvent];
    Playbook {
        tiers: vec![t],
        guards: Guards::default(),
        dry_run: false,
        paused: false,
        health: Default::default(),
    }
}

/// T3 only: drain, evacuate and page for a region lost 30 s.
fn evacuate_only() -> Playbook {
    let mut t = tier("evacuate", 3, Condition::RegionLost, 30_000, 60_000);
    t.actions = vec![SetTrafficWeightZero, ReplaceVotersElsewhere, PageHuman];
    t.stand_down_actions = vec![RecordEvent];
    Playbook {
        tiers: vec![t],
        guards: Guards::default(),
        dry_run: false,
        paused: false,
        health: Default::default(),
    }
}

fn restarts_of(ds: &[roomkeeper_playbook::Decision], id: u64) -> usize {
    about(ds, RestartNode, &Target::Node(id))
        .iter()
        .filter(|d| d.disposition.is_execute())
        .count()
}

// ---- hold-down -------------------------------------------------------------

#[test]
fn hold_down_acts_only_after_the_condition_held_for_its_duration() {
    let mut sim = Sim::three_regions(heal_only());
    sim.secs(5);
    sim.unrestartable.push("b".into());
    sim.kill(3);
    // Observed dead from the next tick on; 5 ticks later it has held 4 s.
    let early = sim.secs(5);
    assert!(
        early.is_empty(),
        "acted before the 5 s hold-down: {early:#?}"
    );
    let due = sim.secs(1);
    assert_eq!(
        restarts_of(&due, 3),
        1,
        "restart once the hold-down is met: {:#?}",
        sim.decisions
    );
    let d = &due[0];
    assert!(
        d.reason
            .contains("has been unhealthy for 5 s (hold-down 5 s)"),
        "{}",
        d.reason
    );
    assert!(
        d.evidence
            .iter()
            .any(|e| e.signal == "node 3 process" && e.value == "not running"),
        "{:#?}",
        d.evidence
    );
}

#[test]
fn hold_down_restarts_when_one_snapshot_shows_the_condition_gone() {
    let mut sim = Sim::three_regions(heal_only());
    sim.auto_succeed = false;
    sim.kill(3);
    sim.secs(5);
    sim.revive(3);
    sim.secs(1);
    sim.kill(3);
    let d = sim.secs(5);
    assert!(
        d.is_empty(),
        "the hold-down must restart after a clear snapshot: {d:#?}"
    );
    assert_eq!(restarts_of(&sim.secs(1), 3), 1);
}

#[test]
fn one_flaky_probe_never_triggers_an_action() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.node(5).unreachable = true; // the controller's probe fails; the node is fine
    let d = sim.secs(600);
    assert!(executed(&d).is_empty(), "acted on one view: {d:#?}");
}

// ---- separate escalate and stand-down thresholds (hysteresis) ---------------

#[test]
fn stand_down_needs_the_lower_threshold_held_for_its_own_time() {
    let mut t = tier(
        "watch",
        0,
        Condition::SignalDegraded(SignalThresholdSpec {
            p99_ms_above: Some(250.0),
            error_rate_above: None,
            p99_ms_clear_below: Some(150.0),
            error_rate_clear_below: None,
        }),
        3_000,
        5_000,
    );
    t.actions = vec![RecordEvent];
    t.stand_down_actions = vec![RecordEvent];
    let mut sim = Sim::three_regions(Playbook {
        tiers: vec![t],
        ..heal_only()
    });
    sim.node(3).p99_ms = 300.0;
    let fired = sim.secs(4); // breached from the first tick: held 3 s at the fourth
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].phase, Phase::Escalate);

    // Between the thresholds: neither escalates again nor stands down.
    sim.node(3).p99_ms = 200.0;
    assert!(
        sim.secs(60).is_empty(),
        "stood down inside the hysteresis band"
    );

    // Below the stand-down threshold, but not yet for clearForMs.
    sim.node(3).p99_ms = 100.0;
    assert!(sim.secs(5).is_empty(), "stood down before clearForMs");
    let down = sim.secs(1);
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].phase, Phase::StandDown);
    assert!(
        down[0].reason.contains("clear for 5 s (stand-down 5 s)"),
        "{}",
        down[0].reason
    );

    // Back in the band: not breached, so nothing fires again.
    sim.node(3).p99_ms = 200.0;
    assert!(sim.secs(30).is_empty());
}

// ---- cooldown per target ----------------------------------------------------

#[test]
fn cooldown_keeps_the_same_action_on_the_same_target_apart() {
    let mut sim = Sim::three_regions(heal_only()); // cooldown 60 s
    sim.kill(3);
    let first = sim.secs(6);
    assert_eq!(restarts_of(&first, 3), 1);
    assert!(sim.node(3).up, "the restart revived it");
    sim.secs(11); // clear for 10 s: the tier stands down

    sim.kill(3);
    let again = sim.secs(6);
    let suppressed: Vec<_> = about(&again, RestartNode, &Target::Node(3))
        .into_iter()
        .filter(|d| guard_of(d) == Some(Guard::Cooldown))
        .collect();
    assert_eq!(
        suppressed.len(),
        1,
        "one suppression recorded, not one per tick: {again:#?}"
    );
    assert_eq!(restarts_of(&again, 3), 0);
    let Disposition::Suppressed { why, .. } = &suppressed[0].disposition else {
        unreachable!()
    };
    assert!(why.contains("the cooldown is 1 min"), "{why}");

    // Another target is not held back by node 3's cooldown.
    sim.kill(4);
    let other = sim.secs(6);
    assert_eq!(restarts_of(&other, 4), 1);

    // Once the cooldown has passed, node 3 is restarted.
    let later = sim.secs(60);
    assert_eq!(restarts_of(&later, 3), 1);
}

// ---- rate limit per window, then a human ------------------------------------

#[test]
fn a_flapping_node_stays_within_the_rate_limit_then_pages_a_human() {
    let mut pb = heal_only();
    pb.guards.cooldown_ms = 0;
    pb.guards.max_actions_per_window = 3;
    pb.guards.window_ms = 600_000;
    // This test is about the rate limit: the per-node restart budget (flap
    // damping, tested below) is raised out of its way.
    pb.guards.restart_budget.max_restarts = 100;
    pb.guards.restart_budget.backoff_base_ms = 0;
    let mut sim = Sim::three_regions(pb);
    for _ in 0..10 {
        sim.kill(3);
        sim.secs(6);
        sim.revive(3);
        sim.secs(11);
    }
    let all = sim.decisions.clone();
    assert_eq!(restarts_of(&all, 3), 3, "only maxActionsPerWindow restarts");
    let limited: Vec<_> = all
        .iter()
        .filter(|d| guard_of(d) == Some(Guard::RateLimit))
        .collect();
    assert!(!limited.is_empty());
    let pages: Vec<_> = all
        .iter()
        .filter(|d| d.action == PageHuman && d.phase == Phase::Escalation)
        .collect();
    assert_eq!(
        pages.len(),
        1,
        "one page per window, not one per flap: {pages:#?}"
    );
    assert!(pages[0].disposition.is_execute());
    assert_eq!(pages[0].follows, Some(limited[0].id));
    assert!(
        pages[0]
            .reason
            .contains("stopped acting instead of looping"),
        "{}",
        pages[0].reason
    );

    // After the window, the budget is back.
    sim.now += 600_000;
    sim.kill(3);
    assert_eq!(restarts_of(&sim.secs(6), 3), 1);
}

// ---- never below quorum -----------------------------------------------------

#[test]
fn restarting_a_live_voter_that_quorum_depends_on_is_suppressed() {
    let mut sim = Sim::three_regions(heal_only());
    sim.unrestartable = vec!["b".into(), "c".into()];
    sim.kill(4);
    sim.kill(5);
    sim.node(3).disk_ok = false; // unhealthy, but alive and one of the three live voters
    let d = sim.secs(6);
    let three = about(&d, RestartNode, &Target::Node(3));
    assert_eq!(three.len(), 1, "{d:#?}");
    assert_eq!(guard_of(three[0]), Some(Guard::NeverBelowQuorum));
    // The dead voters may be restarted: that cannot lower the live count.
    assert_eq!(restarts_of(&d, 4), 1);
    assert_eq!(restarts_of(&d, 5), 1);
}

#[test]
fn evacuation_is_suppressed_when_the_voters_outside_the_region_are_not_a_quorum() {
    let mut sim = Sim::three_regions(evacuate_only());
    // Region b's voters are uncertain (the controller cannot reach them but
    // the leader replicates to them): they do not count as alive.
    sim.node(3).unreachable = true;
    sim.node(4).unreachable = true;
    sim.unrestartable.push("c".into());
    sim.kill_region("c");
    let d = sim.secs(31);
    let evac = about(&d, ReplaceVotersElsewhere, &Target::Region("c".into()));
    assert_eq!(evac.len(), 1, "{d:#?}");
    assert_eq!(guard_of(evac[0]), Some(Guard::NeverBelowQuorum));
    let Disposition::Suppressed { why, .. } = &evac[0].disposition else {
        unreachable!()
    };
    assert!(why.contains("2 of 5 voters are alive"), "{why}");
    // Draining traffic from a lost region is still done.
    assert_eq!(
        executed(&d)
            .iter()
            .filter(|d| d.action == SetTrafficWeightZero)
            .count(),
        1
    );
}

// ---- one region at a time ---------------------------------------------------

#[test]
fn two_lost_regions_are_evacuated_one_after_the_other() {
    let layout = [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")];
    let mut sim = Sim::with_layout(evacuate_only(), &layout);
    sim.auto_succeed = false;
    sim.kill_region("d");
    sim.kill_region("e");
    let d = sim.secs(31);
    let d_evac = about(&d, ReplaceVotersElsewhere, &Target::Region("d".into()));
    let e_evac = about(&d, ReplaceVotersElsewhere, &Target::Region("e".into()));
    assert!(d_evac[0].disposition.is_execute(), "{d:#?}");
    assert_eq!(guard_of(e_evac[0]), Some(Guard::OneRegionAtATime));
    // Draining a lost region is not held back by the other one.
    assert_eq!(
        executed(&d)
            .iter()
            .filter(|x| x.action == SetTrafficWeightZero)
            .count(),
        2
    );
    assert_eq!(sim.memory.evacuation_in_progress(), vec!["d"]);

    // While d's evacuation has no outcome, e waits (and is not re-recorded).
    let waiting = sim.secs(120);
    assert!(about(
        &waiting,
        ReplaceVotersElsewhere,
        &Target::Region("e".into())
    )
    .is_empty());

    let id = d_evac[0].id;
    sim.memory
        .record_outcome(
            id,
            ActionOutcome::Succeeded {
                at_ms: sim.now,
                detail: "voters replaced".into(),
            },
        )
        .unwrap();
    let next = sim.secs(1);
    let e_now = about(&next, ReplaceVotersElsewhere, &Target::Region("e".into()));
    assert!(e_now[0].disposition.is_execute(), "{next:#?}");
}

#[test]
fn a_second_degraded_region_is_not_drained_while_another_is() {
    let mut t = tier(
        "move",
        2,
        Condition::RegionDegraded(SignalThresholdSpec {
            p99_ms_above: Some(400.0),
            ..SignalThresholdSpec::default()
        }),
        5_000,
        60_000,
    );
    t.actions = vec![SetTrafficWeightZero];
    t.stand_down_actions = vec![RestoreTrafficWeight];
    let mut sim = Sim::three_regions(Playbook {
        tiers: vec![t],
        ..heal_only()
    });
    for id in [3, 4, 5] {
        sim.node(id).p99_ms = 900.0;
    }
    let d = sim.secs(6);
    let b = about(&d, SetTrafficWeightZero, &Target::Region("b".into()));
    let c = about(&d, SetTrafficWeightZero, &Target::Region("c".into()));
    assert!(b[0].disposition.is_execute());
    assert_eq!(guard_of(c[0]), Some(Guard::OneRegionAtATime), "{d:#?}");

    // When b recovers and is restored, c may be drained.
    sim.node(3).p99_ms = 20.0;
    sim.node(4).p99_ms = 20.0;
    let later = sim.secs(61);
    assert!(
        about(&later, RestoreTrafficWeight, &Target::Region("b".into()))[0]
            .disposition
            .is_execute()
    );
    assert!(
        about(&later, SetTrafficWeightZero, &Target::Region("c".into()))[0]
            .disposition
            .is_execute()
    );
}

// ---- the controller must see a majority of regions --------------------------

#[test]
fn a_controller_cut_off_in_a_minority_takes_no_action_and_says_so() {
    let mut sim = Sim::three_regions(default_playbook());
    // The controller sits with region c; a and b (and the leader) are out of
    // its sight. From there, a and b look lost and quorum looks lost.
    sim.controller_cut_from = vec!["a".into(), "b".into()];
    let d = sim.secs(300);
    assert!(
        executed(&d).is_empty(),
        "acted from a minority view: {:#?}",
        executed(&d)
    );
    let pause = about(&d, PauseSales, &Target::Shard);
    assert_eq!(pause.len(), 1, "one suppressed decision, not one per tick");
    assert_eq!(guard_of(pause[0]), Some(Guard::MajorityVisible));
    let Disposition::Suppressed { why, .. } = &pause[0].disposition else {
        unreachable!()
    };
    assert!(why.contains("sees 1 of 3 regions and needs 2"), "{why}");
    assert!(sim
        .memory
        .explain_last(&Target::Shard)
        .contains("It did not act: guard majorityVisible stopped it"));
}

#[test]
fn the_configured_minimum_can_raise_but_not_lower_the_majority() {
    let mut pb = heal_only();
    pb.guards.min_regions_visible_to_act = 3;
    let mut sim = Sim::three_regions(pb);
    sim.unrestartable.push("c".into());
    sim.kill(5); // region c is now out of reach: 2 of 3 visible
    let d = sim.secs(6);
    assert_eq!(guard_of(&d[0]), Some(Guard::MajorityVisible), "{d:#?}");

    let mut pb = heal_only();
    pb.guards.min_regions_visible_to_act = 1; // still needs a majority
    let mut sim = Sim::three_regions(pb);
    sim.controller_cut_from = vec!["a".into(), "b".into()];
    sim.kill(5);
    let d = sim.secs(6);
    assert!(executed(&d).is_empty());
}

// ---- global pause -----------------------------------------------------------

#[test]
fn pause_records_decisions_and_carries_out_none_until_resumed() {
    let mut pb = heal_only();
    pb.paused = true;
    let mut sim = Sim::three_regions(pb);
    sim.kill(3);
    let d = sim.secs(30);
    assert_eq!(d.len(), 1, "recorded once: {d:#?}");
    assert_eq!(guard_of(&d[0]), Some(Guard::Paused));
    assert!(!sim.node(3).up, "nothing was carried out");

    sim.playbook.paused = false;
    let resumed = sim.secs(1);
    assert_eq!(
        restarts_of(&resumed, 3),
        1,
        "acts on the still-current condition"
    );
}

// ---- dry-run ----------------------------------------------------------------

#[test]
fn dry_run_records_what_would_be_done_and_does_nothing() {
    let mut pb = default_playbook();
    pb.dry_run = true;
    let mut sim = Sim::three_regions(pb);
    sim.unrestartable.push("c".into());
    sim.kill_region("c");
    let d = sim.secs(120);
    assert!(executed(&d).is_empty(), "{:#?}", executed(&d));
    let dry: Vec<ActionKind> = d
        .iter()
        .filter(|x| x.disposition == Disposition::DryRun)
        .map(|x| x.action)
        .collect();
    for a in [
        RestartNode,
        TransferLeadershipAway,
        SetTrafficWeightZero,
        ReplaceVotersElsewhere,
        PageHuman,
    ] {
        assert!(
            dry.contains(&a),
            "{a:?} missing from the dry-run record {dry:?}"
        );
    }
    assert!(sim.memory.drained_regions().is_empty());
    assert!(sim.drained.is_empty());
    assert_eq!(sim.memory.records().len(), d.len());
}

// ---- approval gates ---------------------------------------------------------

fn gated(on_timeout: OnTimeout) -> Sim {
    let mut pb = evacuate_only();
    pb.tiers[0].approval = Some(Approval {
        timeout_ms: 120_000,
        on_timeout,
    });
    let mut sim = Sim::three_regions(pb);
    sim.unrestartable.push("c".into());
    sim.kill_region("c");
    sim
}

#[test]
fn approval_gate_waits_then_executes_what_a_human_approved() {
    let mut sim = gated(OnTimeout::Reject);
    let d = sim.secs(31);
    let asks: Vec<_> = d
        .iter()
        .filter(|x| matches!(x.disposition, Disposition::AwaitingApproval { .. }))
        .collect();
    assert_eq!(asks.len(), 2, "weight and evacuation wait: {d:#?}");
    assert!(
        d.iter()
            .any(|x| x.action == PageHuman && x.disposition.is_execute()),
        "notifications do not wait"
    );
    assert_eq!(sim.memory.pending_approvals().len(), 2);
    assert!(sim.secs(30).is_empty(), "nothing happens without an answer");

    for a in &asks {
        sim.memory.approve(a.id, "alice", sim.now).unwrap();
    }
    let next = sim.secs(1);
    assert_eq!(next.len(), 2);
    for x in &next {
        assert!(x.disposition.is_execute());
        assert!(x.reason.contains("Approved by alice."), "{}", x.reason);
        assert!(asks.iter().any(|a| Some(a.id) == x.follows));
    }
    assert!(sim.memory.pending_approvals().is_empty());
}

#[test]
fn approval_gate_records_a_rejection() {
    let mut sim = gated(OnTimeout::Approve);
    let d = sim.secs(31);
    let ask = about(&d, ReplaceVotersElsewhere, &Target::Region("c".into()))[0].clone();
    sim.memory
        .reject(ask.id, "bob", "region c is coming back", sim.now)
        .unwrap();
    let next = sim.secs(1);
    let r = about(&next, ReplaceVotersElsewhere, &Target::Region("c".into()));
    assert_eq!(guard_of(r[0]), Some(Guard::ApprovalGate));
    let Disposition::Suppressed { why, .. } = &r[0].disposition else {
        unreachable!()
    };
    assert_eq!(why, "rejected by bob: region c is coming back");
    assert!(
        sim.secs(300)
            .iter()
            .all(|x| x.action != ReplaceVotersElsewhere),
        "a rejection is final for this firing"
    );
}

#[test]
fn approval_gate_timeout_applies_the_declared_default_approve() {
    let mut sim = gated(OnTimeout::Approve);
    sim.secs(31);
    assert!(sim.secs(119).is_empty());
    let d = sim.secs(1);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(d.iter().all(|x| x.disposition.is_execute()));
    assert!(
        d[0].reason.contains("declared default is to approve"),
        "{}",
        d[0].reason
    );
    let asked = sim.memory.record(d[0].follows.unwrap()).unwrap();
    assert_eq!(asked.verdict.as_ref().unwrap().by, "timeout");
}

#[test]
fn approval_gate_timeout_applies_the_declared_default_reject() {
    let mut sim = gated(OnTimeout::Reject);
    sim.secs(31);
    let d = sim.secs(120);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(d.iter().all(|x| guard_of(x) == Some(Guard::ApprovalGate)));
    assert!(sim
        .memory
        .approve(d[0].follows.unwrap(), "late", sim.now)
        .is_err());
}

#[test]
fn an_approval_request_is_withdrawn_when_the_condition_clears() {
    let mut sim = gated(OnTimeout::Reject);
    sim.secs(31);
    sim.unrestartable.clear();
    sim.revive(5);
    let d = sim.secs(61);
    let withdrawn: Vec<_> = d
        .iter()
        .filter(|x| {
            matches!(&x.disposition, Disposition::Suppressed { guard: Guard::ApprovalGate, why } if why.contains("withdrawn"))
        })
        .collect();
    assert_eq!(withdrawn.len(), 2, "{d:#?}");
    assert!(sim.memory.pending_approvals().is_empty());
}

// ---- stale observations -----------------------------------------------------

#[test]
fn a_stale_snapshot_is_not_acted_on() {
    let mut sim = Sim::three_regions(heal_only()); // maxSnapshotAgeMs 15 s
    sim.kill(3);
    sim.secs(3);
    // The monitor stops; the engine is still called.
    let later = sim.now + 20_000;
    let d = Engine::decide(&sim.playbook, &sim.history, later, &mut sim.memory);
    assert_eq!(d.len(), 1);
    assert_eq!(guard_of(&d[0]), Some(Guard::StaleObservation));
}

// ---- an invalid playbook ----------------------------------------------------

#[test]
fn an_invalid_playbook_does_nothing_and_says_why_once() {
    let mut pb = heal_only();
    pb.tiers[0].trigger.for_ms = -1;
    let mut sim = Sim::three_regions(pb);
    sim.kill(3);
    let d = sim.secs(30);
    assert_eq!(d.len(), 1);
    assert_eq!(guard_of(&d[0]), Some(Guard::InvalidPlaybook));
    let Disposition::Suppressed { why, .. } = &d[0].disposition else {
        unreachable!()
    };
    assert!(
        why.contains("tiers[0].trigger.forMs: must not be negative"),
        "{why}"
    );
}

#[test]
fn memory_errors_are_specific() {
    let mut m = EngineMemory::new();
    assert!(m.approve(7, "alice", 0).is_err());
    let mut sim = gated(OnTimeout::Reject);
    let d = sim.secs(31);
    let page = d.iter().find(|x| x.action == PageHuman).unwrap();
    assert_eq!(
        sim.memory
            .approve(page.id, "alice", 0)
            .unwrap_err()
            .to_string(),
        format!("decision {} is not awaiting approval", page.id)
    );
    let ask = d
        .iter()
        .find(|x| x.action == ReplaceVotersElsewhere)
        .unwrap();
    assert!(
        sim.memory.approve(ask.id, " ", 0).is_err(),
        "an approver must be named"
    );
    sim.memory.approve(ask.id, "alice", 0).unwrap();
    assert!(
        sim.memory.approve(ask.id, "bob", 0).is_err(),
        "answered once"
    );
    assert!(sim
        .memory
        .record_outcome(
            ask.id,
            ActionOutcome::Failed {
                at_ms: 0,
                error: "x".into()
            }
        )
        .is_err());
}
