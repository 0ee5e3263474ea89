//! Live windows: while a room homed in a region is on air, disruptive actions
//! that are not protective wait (or ask a human); protective ones still act.

mod support;

use roomkeeper_playbook::{
    default_playbook, Disposition, Engine, Guard, LiveWindowPolicy, OperatorCommand,
    RoomLiveWindow, Target,
};
use support::{about, executed, guard_of, Sim};

use roomkeeper_playbook::ActionKind::*;

fn region(r: &str) -> Target {
    Target::Region(r.into())
}

fn window(room: &str, home: &str, start_ms: u64, end_ms: u64) -> RoomLiveWindow {
    RoomLiveWindow {
        room: room.into(),
        home_region: home.into(),
        start_ms,
        end_ms,
        expected_peak_orders_per_s: 900,
    }
}

/// Region b's nodes answer slowly: T2 (`move`) wants to drain it.
fn degrade_b(sim: &mut Sim) {
    for id in [3, 4] {
        sim.node(id).p99_ms = 900.0;
    }
}

#[test]
fn a_degraded_region_is_not_drained_during_a_live_window_and_is_once_it_ends() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    let end = sim.now + 60_000;
    sim.live_windows = vec![window("r1", "b", 0, end)];
    degrade_b(&mut sim);
    let during = sim.secs(50);
    let drain = about(&during, SetTrafficWeightZero, &region("b"));
    assert_eq!(drain.len(), 1, "recorded once, not every tick: {during:#?}");
    assert_eq!(guard_of(drain[0]), Some(Guard::LiveWindow));
    let Disposition::Suppressed { why, .. } = &drain[0].disposition else {
        unreachable!()
    };
    assert!(
        why.starts_with("deferred: room r1 is live in b until 00:17 UTC (1970-01-01), expected peak 900 orders/s"),
        "{why}"
    );
    assert!(why.contains("region b is degraded, not lost"), "{why}");
    assert!(sim.drained.is_empty(), "nothing moved during the window");
    assert!(executed(&during).iter().all(|d| d.action.is_notification()));

    // The window ends: the deferred drain goes ahead on the next tick.
    let after = sim.secs(20);
    let drain = about(&after, SetTrafficWeightZero, &region("b"));
    assert!(drain[0].disposition.is_execute(), "{after:#?}");
    assert!(drain[0].at_ms >= end && drain[0].at_ms <= end + 1_000);
    assert_eq!(sim.drained, vec!["b".to_string()]);
}

#[test]
fn a_window_in_another_region_holds_nothing_here() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    sim.live_windows = vec![window("r2", "c", 0, sim.now + 600_000)];
    degrade_b(&mut sim);
    let d = sim.secs(30);
    assert!(about(&d, SetTrafficWeightZero, &region("b"))[0]
        .disposition
        .is_execute());
}

#[test]
fn a_window_not_yet_started_holds_nothing() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    sim.live_windows = vec![window("r1", "b", sim.now + 600_000, sim.now + 900_000)];
    degrade_b(&mut sim);
    let d = sim.secs(30);
    assert!(about(&d, SetTrafficWeightZero, &region("b"))[0]
        .disposition
        .is_execute());
}

#[test]
fn a_lost_region_is_evacuated_during_its_live_window() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    sim.live_windows = vec![window("r1", "c", 0, sim.now + 3_600_000)];
    sim.unrestartable.push("c".into());
    sim.kill_region("c");
    let d = sim.secs(40);
    assert!(
        d.iter().all(|x| guard_of(x) != Some(Guard::LiveWindow)),
        "{d:#?}"
    );
    assert!(about(&d, ReplaceVotersElsewhere, &region("c"))[0]
        .disposition
        .is_execute());
    assert!(sim.drained.contains(&"c".to_string()));
}

#[test]
fn restarts_and_pausing_sales_act_during_a_live_window() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.secs(5);
    let live = sim.now + 3_600_000;
    sim.live_windows = ["a", "b", "c"]
        .iter()
        .map(|r| window(&format!("room-{r}"), r, 0, live))
        .collect();
    // T1: a follower dies and is restarted.
    sim.kill(3);
    let d = sim.secs(10);
    assert!(about(&d, RestartNode, &Target::Node(3))[0]
        .disposition
        .is_execute());
    // T4: quorum is lost and sales pause.
    sim.auto_succeed = false;
    for id in [2, 3, 4] {
        sim.kill(id);
    }
    let d = sim.secs(10);
    assert!(
        d.iter()
            .any(|x| x.action == PauseSales && x.disposition.is_execute()),
        "{d:#?}"
    );
    assert!(d.iter().all(|x| guard_of(x) != Some(Guard::LiveWindow)));
}

#[test]
fn require_approval_asks_a_human_and_unanswered_goes_when_the_window_ends() {
    let mut pb = default_playbook();
    pb.guards.live_window = LiveWindowPolicy::RequireApproval;
    let mut sim = Sim::three_regions(pb);
    sim.secs(5);
    let end = sim.now + 60_000;
    sim.live_windows = vec![window("r1", "b", 0, end)];
    degrade_b(&mut sim);
    let d = sim.secs(30);
    let drain = about(&d, SetTrafficWeightZero, &region("b"));
    // The `move` tier has no approval gate of its own: the window adds one.
    assert!(
        matches!(drain[0].disposition, Disposition::AwaitingApproval { expires_at_ms } if expires_at_ms == end),
        "{d:#?}"
    );
    assert!(
        drain[0].reason.contains("room r1 is live in b"),
        "{}",
        drain[0].reason
    );
    assert!(sim.drained.is_empty());
    let d = sim.secs(40);
    assert!(
        about(&d, SetTrafficWeightZero, &region("b"))
            .iter()
            .any(|x| x.disposition.is_execute()),
        "{d:#?}"
    );
    assert_eq!(sim.drained, vec!["b".to_string()]);
}

#[test]
fn an_approved_live_window_request_is_carried_out_during_the_window() {
    let mut pb = default_playbook();
    pb.guards.live_window = LiveWindowPolicy::RequireApproval;
    let mut sim = Sim::three_regions(pb);
    sim.secs(5);
    let end = sim.now + 600_000;
    sim.live_windows = vec![window("r1", "b", 0, end)];
    degrade_b(&mut sim);
    let d = sim.secs(30);
    let request = about(&d, SetTrafficWeightZero, &region("b"));
    assert!(
        matches!(request[0].disposition, Disposition::AwaitingApproval { .. }),
        "{d:#?}"
    );
    sim.memory
        .approve(request[0].id, "alice", sim.now)
        .expect("approve");
    // Well inside the window: the approval is the human's word that it may go.
    let d = sim.secs(5);
    let drain = about(&d, SetTrafficWeightZero, &region("b"));
    assert!(
        drain.iter().any(|x| x.disposition.is_execute()),
        "approved, so carried out, not asked again: {d:#?}"
    );
    assert!(
        drain
            .iter()
            .all(|x| !matches!(x.disposition, Disposition::AwaitingApproval { .. })),
        "no second request: {d:#?}"
    );
    assert!(sim.now < end);
    assert_eq!(sim.drained, vec!["b".to_string()]);
}

#[test]
fn a_planned_switchover_is_refused_during_a_live_window() {
    let mut sim = Sim::three_regions(default_playbook());
    sim.live_windows = vec![window("r1", "c", 0, sim.now + 3_600_000)];
    sim.secs(5);
    let cmd = OperatorCommand {
        action: TransferLeadershipAway,
        target: Target::Node(1),
        requested_by: "alice".into(),
        approved_by: None,
        reason: "host maintenance".into(),
    };
    let d = Engine::operator_command(
        &sim.playbook,
        &sim.history,
        sim.now,
        &mut sim.memory,
        cmd.clone(),
    );
    assert_eq!(guard_of(&d), Some(Guard::LiveWindow), "{d:#?}");
    // After the window the same command is accepted.
    sim.live_windows.clear();
    sim.secs(1);
    let d = Engine::operator_command(&sim.playbook, &sim.history, sim.now, &mut sim.memory, cmd);
    assert!(d.disposition.is_execute(), "{d:#?}");
}
