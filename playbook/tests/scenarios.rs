//! The default playbook through the failure scenarios, on a simulated
//! 2-2-1 cluster whose binding carries out every executed decision.

mod support;

use roomkeeper_playbook::{
    default_playbook, health, ActionKind, Decision, Disposition, Engine, EngineMemory, Guard,
    OperatorCommand, Phase, QuorumState, Target,
};
use support::{about, executed, guard_of, Sim};

use ActionKind::*;

fn region(r: &str) -> Target {
    Target::Region(r.into())
}

fn live_voters(sim: &Sim) -> usize {
    sim.voters
        .iter()
        .filter(|v| sim.nodes.iter().any(|n| n.id == **v && n.up))
        .count()
}

#[test]
fn leader_killed_t1_restarts_it_and_nothing_bigger_happens() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(10);
    sim.kill(1);
    assert_eq!(sim.leader, Some(2), "a new leader is elected");
    let d = sim.secs(120);
    let ex = executed(&d);
    assert_eq!(
        ex.iter()
            .filter(|x| !x.action.is_notification())
            .map(|x| (x.action, x.target.clone()))
            .collect::<Vec<_>>(),
        vec![(RestartNode, Target::Node(1))],
        "{d:#?}"
    );
    assert!(sim.node(1).up);
    assert!(d.iter().all(|x| x.tier == "heal"), "{d:#?}");
    // Healed and clear for 30 s: T1 stands down with an event.
    assert!(d.iter().any(|x| x.phase == Phase::StandDown));
}

#[test]
fn one_voter_region_lost_traffic_moves_and_five_voters_are_restored() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(10);
    sim.unrestartable.push("c".into());
    sim.kill_region("c");
    let before = sim.secs(29);
    assert!(
        about(&before, ReplaceVotersElsewhere, &region("c")).is_empty(),
        "no evacuation before the 30 s hold-down"
    );
    // T2 already moved leadership and traffic away (hold-down 20 s).
    assert!(about(&before, SetTrafficWeightZero, &region("c"))[0]
        .disposition
        .is_execute());
    let d = sim.secs(2);
    let evac = about(&d, ReplaceVotersElsewhere, &region("c"));
    assert!(evac[0].disposition.is_execute(), "{d:#?}");
    assert!(
        evac[0]
            .reason
            .starts_with("Region c has been lost for 30 s (hold-down 30 s)"),
        "{}",
        evac[0].reason
    );
    assert!(
        about(&d, SetTrafficWeightZero, &region("c")).is_empty(),
        "already drained by T2"
    );
    assert!(d
        .iter()
        .any(|x| x.action == PageHuman && x.disposition.is_execute()));
    assert_eq!(sim.voters.len(), 5);
    assert_eq!(live_voters(&sim), 5, "five live voters again");
    assert!(sim.drained.contains(&"c".to_string()));

    let explained = Engine::explain(
        &sim.playbook,
        &sim.history,
        sim.now,
        &sim.memory,
        &region("c"),
    );
    assert!(
        explained.contains("T3 evacuate is active for region c"),
        "{explained}"
    );
    assert!(explained.contains("It acted"), "{explained}");
}

#[test]
fn two_voter_region_lost_quorum_is_kept_throughout() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(10);
    sim.unrestartable.push("b".into());
    sim.kill_region("b");
    for _ in 0..600 {
        sim.secs(1);
        let snap = sim.history.last().unwrap();
        assert_eq!(health::quorum(snap), QuorumState::Present, "at {}", sim.now);
    }
    let evacs: Vec<&Decision> = executed(&sim.decisions)
        .into_iter()
        .filter(|x| x.action == ReplaceVotersElsewhere)
        .collect();
    assert_eq!(evacs.len(), 1);
    assert_eq!(evacs[0].target, region("b"));
    assert_eq!(live_voters(&sim), 5);
    assert!(!sim.sales_paused);
}

#[test]
fn a_flapping_node_is_handed_to_a_human_instead_of_restarted_forever() {
    let mut sim = Sim::three_regions(default_playbook());
    for _ in 0..40 {
        sim.kill(4);
        sim.secs(8);
        sim.revive(4);
        sim.secs(35);
    }
    let g = &sim.playbook.guards;
    let acts: Vec<u64> = executed(&sim.decisions)
        .iter()
        .filter(|x| !x.action.is_notification())
        .map(|x| x.at_ms)
        .collect();
    for (i, t) in acts.iter().enumerate() {
        let in_window = acts[i..]
            .iter()
            .take_while(|u| **u < t + g.window_ms as u64)
            .count();
        assert!(in_window <= g.max_actions_per_window as usize);
    }
    let pages: Vec<_> = sim
        .decisions
        .iter()
        .filter(|x| x.phase == Phase::Escalation && x.disposition.is_execute())
        .collect();
    assert!(!pages.is_empty(), "the engine escalates to a human");
    assert!(
        pages.len() <= 3,
        "at most one page per window: {}",
        pages.len()
    );
}

#[test]
fn controller_cut_off_from_the_majority_takes_no_action() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(10);
    sim.controller_cut_from = vec!["a".into(), "b".into()];
    let d = sim.secs(900);
    assert!(executed(&d).is_empty(), "{:#?}", executed(&d));
    assert!(
        d.iter()
            .all(|x| guard_of(x) == Some(Guard::MajorityVisible)),
        "{d:#?}"
    );
    assert!(!d.is_empty(), "the refusals are recorded");
}

#[test]
fn quorum_lost_pauses_sales_and_resumes_after_quorum_held_for_the_stand_down_time() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(10);
    sim.unrestartable = vec!["a".into(), "b".into()];
    sim.kill(1);
    sim.kill(3);
    sim.kill(4);
    assert_eq!(sim.leader, None);
    let d = sim.secs(6);
    let pause = about(&d, PauseSales, &Target::Shard);
    assert!(pause[0].disposition.is_execute(), "{d:#?}");
    assert!(
        pause[0].reason.contains("without a quorum of live voters"),
        "{}",
        pause[0].reason
    );
    assert!(sim.sales_paused);
    assert!(about(&d, PageHuman, &Target::Shard)[0]
        .disposition
        .is_execute());
    // No voter replacement is attempted without a quorum.
    assert!(executed(&sim.decisions)
        .iter()
        .all(|x| x.action != ReplaceVotersElsewhere));

    sim.secs(60);
    sim.unrestartable.clear();
    sim.revive(3);
    assert!(sim.leader.is_some());
    let early = sim.secs(29);
    assert!(
        about(&early, ResumeSales, &Target::Shard).is_empty(),
        "{early:#?}"
    );
    let d = sim.secs(2);
    let resume = about(&d, ResumeSales, &Target::Shard);
    assert!(resume[0].disposition.is_execute(), "{d:#?}");
    assert_eq!(resume[0].phase, Phase::StandDown);
    assert!(!sim.sales_paused);
}

#[test]
fn minority_recovery_only_by_an_approved_operator_command() {
    let mut sim = Sim::three_regions(default_playbook());
    let cmd = |approved: Option<&str>| OperatorCommand {
        action: ForceRecoverFromMinority,
        target: Target::Shard,
        requested_by: "alice".into(),
        approved_by: approved.map(String::from),
        reason: "regions b and c are gone for hours".into(),
    };
    sim.secs(5);
    let refused = Engine::operator_command(
        &sim.playbook,
        &sim.history,
        sim.now,
        &mut sim.memory,
        cmd(Some("bob")),
    );
    assert_eq!(guard_of(&refused), Some(Guard::OperatorCommand));
    let Disposition::Suppressed { why, .. } = &refused.disposition else {
        unreachable!()
    };
    assert!(why.contains("quorum is present"), "{why}");

    sim.unrestartable = vec!["b".into(), "c".into()];
    sim.kill_region("b");
    sim.kill_region("c");
    sim.secs(600);
    assert!(
        sim.decisions
            .iter()
            .all(|x| x.action != ForceRecoverFromMinority),
        "never decided by the engine"
    );
    let unapproved = Engine::operator_command(
        &sim.playbook,
        &sim.history,
        sim.now,
        &mut sim.memory,
        cmd(None),
    );
    assert_eq!(guard_of(&unapproved), Some(Guard::ApprovalGate));
    let self_approved = Engine::operator_command(
        &sim.playbook,
        &sim.history,
        sim.now,
        &mut sim.memory,
        cmd(Some("alice")),
    );
    assert_eq!(guard_of(&self_approved), Some(Guard::ApprovalGate));
    let ok = Engine::operator_command(
        &sim.playbook,
        &sim.history,
        sim.now,
        &mut sim.memory,
        cmd(Some("bob")),
    );
    assert!(ok.disposition.is_execute(), "{ok:#?}");
    assert_eq!(
        ok.phase,
        Phase::Operator {
            requested_by: "alice".into(),
            approved_by: Some("bob".into())
        }
    );
    assert!(sim
        .memory
        .explain_last(&Target::Shard)
        .contains("approved by bob"));
    assert!(
        sim.memory.open_actions().iter().any(|d| d.id == ok.id),
        "awaits its outcome"
    );
}

#[test]
fn an_operator_can_restore_a_drained_region() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.unrestartable.push("c".into());
    sim.kill_region("c");
    sim.secs(40);
    assert!(sim.memory.drained_regions().contains_key("c"));
    let d = Engine::operator_command(
        &sim.playbook,
        &sim.history,
        sim.now,
        &mut sim.memory,
        OperatorCommand {
            action: RestoreTrafficWeight,
            target: region("c"),
            requested_by: "carol".into(),
            approved_by: None,
            reason: "region c is back after the provider's repair".into(),
        },
    );
    assert!(d.disposition.is_execute());
    assert!(!sim.memory.drained_regions().contains_key("c"));
}

#[test]
fn memory_survives_a_controller_restart_with_the_same_decisions() {
    // Two controllers see the same cluster; one is "restarted" every tick
    // (memory written to JSON and read back). Their decisions are identical.
    let mut steady = Sim::three_regions(default_playbook());
    let mut restarted = Sim::three_regions(default_playbook());
    for sim in [&mut steady, &mut restarted] {
        sim.unrestartable.push("c".into());
        sim.kill_region("c");
        sim.kill(3);
    }
    for _ in 0..400 {
        steady.secs(1);
        let json = serde_json::to_string(&restarted.memory).unwrap();
        restarted.memory = serde_json::from_str::<EngineMemory>(&json).unwrap();
        restarted.secs(1);
    }
    assert!(!steady.decisions.is_empty());
    assert_eq!(steady.decisions, restarted.decisions);
}

#[test]
fn why_did_it_not_act_during_the_hold_down() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.unrestartable.push("c".into());
    sim.kill_region("c");
    sim.secs(13);
    let text = Engine::explain(
        &sim.playbook,
        &sim.history,
        sim.now,
        &sim.memory,
        &region("c"),
    );
    assert!(
        text.contains("T3 evacuate: region c has been lost for 12 s of its 30 s hold-down; it acts after 18 s more"),
        "{text}"
    );
    assert!(
        text.contains("the controller sees 2 of 3 regions (needs 2)"),
        "{text}"
    );
    assert!(text.contains("No decision about region c"), "{text}");
}

#[test]
fn decisions_serialize_with_camel_case_for_the_crd_status() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.controller_cut_from = vec!["a".into(), "b".into()];
    let d = sim.secs(10);
    let json = serde_json::to_value(&d[0]).unwrap();
    assert!(json.get("atMs").is_some(), "{json}");
    assert_eq!(
        json["disposition"]["suppressed"]["guard"], "majorityVisible",
        "{json}"
    );
    let back: Decision = serde_json::from_value(json).unwrap();
    assert_eq!(back, d[0]);
}

#[test]
fn a_tier_never_undoes_an_operators_pause() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    let paused = Engine::operator_command(
        &sim.playbook,
        &sim.history,
        sim.now,
        &mut sim.memory,
        OperatorCommand {
            action: PauseSales,
            target: Target::Shard,
            requested_by: "dave".into(),
            approved_by: None,
            reason: "price error on a listing".into(),
        },
    );
    assert!(paused.disposition.is_execute());
    // Quorum is lost and comes back: T4 fires and stands down, but the sales
    // pause belongs to the operator.
    sim.unrestartable = vec!["a".into(), "b".into()];
    sim.kill(1);
    sim.kill(3);
    sim.kill(4);
    sim.secs(30);
    sim.unrestartable.clear();
    sim.revive(3);
    let d = sim.secs(120);
    assert!(
        executed(&d).iter().all(|x| x.action != ResumeSales),
        "{:#?}",
        executed(&d)
    );
    assert_eq!(
        sim.memory.sales_paused(),
        Some(roomkeeper_playbook::EffectOwner::Operator)
    );
}

#[test]
fn memory_stays_bounded_over_a_long_flapping_run() {
    let mut sim = Sim::three_regions(default_playbook());
    for _ in 0..300 {
        sim.kill(4);
        sim.secs(8);
        sim.revive(4);
        sim.secs(35);
    }
    assert!(sim.decisions.len() > roomkeeper_playbook::memory::RECORD_CAP);
    assert!(sim.memory.records().len() <= roomkeeper_playbook::memory::RECORD_CAP);
}
