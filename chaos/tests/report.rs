//! Probe evaluation, verdicts and report rendering.

use std::collections::BTreeMap;

use roomkeeper_chaos::drill::{DrillManifest, DrillPhase, ProbeKind, ProbeSpec, TierExpectation};
use roomkeeper_chaos::report::{
    evaluate, order_counts, timeline, verdict, ControlState, DecisionMark, DrillReport,
    FaultRecord, NodeInvariant, Phases, Verdict,
};
use roomkeeper_chaos::{check, FinalOrder, History, Op, OpKind, OpResult};

fn order(id: u64, client: u32, t: u64, dt: u64, key: &str, result: OpResult) -> Op {
    Op {
        id,
        client,
        invoke_ms: t,
        complete_ms: (!matches!(result, OpResult::Unknown)).then_some(t + dt),
        kind: OpKind::PlaceOrder {
            sku: "s".into(),
            buyer: format!("b-{key}"),
            qty: 1,
            key: key.into(),
        },
        result,
    }
}

/// One order per 100 ms for 10 s, a 3 s outage from 4 s (unknown, then a
/// retry acknowledged), everything present at the end.
fn history() -> History {
    let mut ops = Vec::new();
    let mut finals = BTreeMap::new();
    let mut id = 0;
    for i in 0..100u64 {
        let t = i * 100;
        let key = format!("k{i}");
        if (40..70).contains(&i) {
            ops.push(order(id, 1, t, 0, &key, OpResult::Unknown));
            id += 1;
            if i % 10 == 0 {
                // Retried after the outage with the same key, acknowledged.
                ops.push(order(
                    id,
                    1,
                    7_000 + i,
                    20,
                    &key,
                    OpResult::Placed {
                        order_id: format!("o{i}"),
                    },
                ));
                id += 1;
                finals.insert(
                    format!("o{i}"),
                    FinalOrder {
                        sku: "s".into(),
                        buyer: format!("b-{key}"),
                        qty: 1,
                        key,
                    },
                );
            }
            continue;
        }
        ops.push(order(
            id,
            1,
            t,
            10,
            &key,
            OpResult::Placed {
                order_id: format!("o{i}"),
            },
        ));
        id += 1;
        finals.insert(
            format!("o{i}"),
            FinalOrder {
                sku: "s".into(),
                buyer: format!("b-{key}"),
                qty: 1,
                key,
            },
        );
    }
    let sold = finals.len() as u32;
    History {
        ops,
        listings: BTreeMap::from([("s".into(), 1_000)]),
        final_stock_left: BTreeMap::from([("s".into(), 1_000 - sold)]),
        final_orders: finals,
    }
}

fn probe(kind: ProbeKind) -> ProbeSpec {
    ProbeSpec {
        kind,
        name: None,
        phase: None,
        min_percent: None,
        min_percent_of_steady: None,
        percentile: None,
        max_ms: None,
        max: None,
        tier: None,
        within_secs: None,
        expect: None,
    }
}

const PHASES: Phases = Phases {
    fault_start_ms: Some(4_000),
    fault_end_ms: Some(7_000),
    end_ms: 10_000,
};

fn inv() -> Vec<NodeInvariant> {
    vec![NodeInvariant {
        node: 1,
        ok: true,
        detail: "ok".into(),
    }]
}

#[test]
fn probes_measure_what_they_say() {
    let h = history();
    let c = check(&h);
    assert!(c.valid, "{:?}", c.violations);
    let decisions = vec![DecisionMark {
        at_ms: 6_000,
        tier: "heal".into(),
        level: Some(1),
        action: "RestartNode".into(),
        target: "node 1".into(),
        disposition: "execute".into(),
        reason: "dead".into(),
    }];
    let probes = vec![
        ProbeSpec {
            min_percent: Some(95),
            phase: Some(DrillPhase::Steady),
            ..probe(ProbeKind::OrdersAccepted)
        },
        ProbeSpec {
            min_percent: Some(50),
            phase: Some(DrillPhase::Fault),
            ..probe(ProbeKind::OrdersAccepted)
        },
        ProbeSpec {
            max_ms: Some(2_000),
            ..probe(ProbeKind::Rto)
        },
        ProbeSpec {
            max_ms: Some(5_000),
            ..probe(ProbeKind::Rto)
        },
        ProbeSpec {
            tier: Some("T1".into()),
            within_secs: Some(3),
            ..probe(ProbeKind::PlaybookTier)
        },
        ProbeSpec {
            tier: Some("heal".into()),
            within_secs: Some(1),
            ..probe(ProbeKind::PlaybookTier)
        },
        ProbeSpec {
            tier: Some("evacuate".into()),
            expect: Some(TierExpectation::NotReached),
            ..probe(ProbeKind::PlaybookTier)
        },
        ProbeSpec {
            tier: Some("heal".into()),
            expect: Some(TierExpectation::NotReached),
            ..probe(ProbeKind::PlaybookTier)
        },
        probe(ProbeKind::Invariants),
        ProbeSpec {
            max: Some(0),
            ..probe(ProbeKind::Rpo)
        },
        ProbeSpec {
            max_ms: Some(50),
            percentile: Some(99),
            phase: Some(DrillPhase::Steady),
            ..probe(ProbeKind::Latency)
        },
        ProbeSpec {
            max_ms: Some(5),
            percentile: Some(50),
            ..probe(ProbeKind::Latency)
        },
        ProbeSpec {
            within_secs: Some(2),
            ..probe(ProbeKind::Recovery)
        },
    ];
    let r = evaluate(&probes, &h, &c, &PHASES, &decisions, &inv(), &[]);
    let passed: Vec<bool> = r.iter().map(|p| p.passed).collect();
    assert_eq!(
        passed,
        vec![true, false, false, true, true, false, true, false, true, true, true, false, true],
        "{r:#?}"
    );
    assert!(
        r[1].measured == "10.0% accepted (3 of 30 orders; 0 refused as unavailable, 27 unknown)",
        "{}",
        r[1].measured
    );
    assert_eq!(verdict(false, &[], &c, &inv(), &r, None), Verdict::Fail);
    assert_eq!(
        verdict(false, &[], &c, &inv(), &r[..1], None),
        Verdict::Pass
    );
    assert_eq!(
        verdict(true, &[], &c, &inv(), &r[..1], None),
        Verdict::Aborted
    );
    assert_eq!(
        verdict(
            false,
            &["final read failed".into()],
            &c,
            &inv(),
            &r[..1],
            None
        ),
        Verdict::Fail
    );
}

#[test]
fn a_lost_order_or_a_broken_node_fails_the_invariants_probe() {
    let mut h = history();
    h.final_orders.remove("o3");
    *h.final_stock_left.get_mut("s").expect("s") += 1;
    let c = check(&h);
    let r = evaluate(
        &[
            probe(ProbeKind::Invariants),
            ProbeSpec {
                max: Some(0),
                ..probe(ProbeKind::Rpo)
            },
        ],
        &h,
        &c,
        &PHASES,
        &[],
        &inv(),
        &[],
    );
    assert!(!r[0].passed && !r[1].passed, "{r:?}");
    assert!(r[0].measured.contains("o3"), "{}", r[0].measured);
    let good = check(&history());
    let broken = vec![NodeInvariant {
        node: 2,
        ok: false,
        detail: "stock below zero".into(),
    }];
    let r = evaluate(
        &[probe(ProbeKind::Invariants)],
        &history(),
        &good,
        &PHASES,
        &[],
        &broken,
        &[],
    );
    assert!(!r[0].passed && r[0].measured.contains("node 2"), "{r:?}");
    assert_eq!(
        verdict(false, &[], &good, &broken, &[], None),
        Verdict::Fail
    );
}

#[test]
fn counts_and_timeline_follow_the_history() {
    let h = history();
    let o = order_counts(&h);
    assert_eq!(
        (o.orders, o.acked, o.failed, o.unknown_ops, o.retries),
        (100, 73, 27, 30, 3)
    );
    let t = timeline(&h, 1_000, 10_000);
    assert_eq!(t.len(), 10);
    assert_eq!(t[0].acked, 10);
    assert_eq!(t[5].acked, 0);
    assert_eq!(t[5].unknown, 10);
    assert_eq!(t[7].acked, 13); // 10 from the normal flow + 3 retried.
}

#[test]
fn the_html_report_has_a_timeline_with_fault_bands_and_markers_and_escapes_text() {
    let h = history();
    let c = check(&h);
    let spec = DrillManifest::from_yaml(include_str!("../drills/leader-kill.yaml"))
        .expect("valid")
        .spec;
    let report = DrillReport {
        name: "leader-kill".into(),
        description: Some("<script>alert(1)</script>".into()),
        started_unix_ms: 0,
        duration_ms: 10_000,
        seed: 7,
        verdict: Verdict::Pass,
        abort_reason: None,
        run_errors: vec![],
        probes: evaluate(&spec.hypothesis.probes, &h, &c, &PHASES, &[], &inv(), &[]),
        orders: order_counts(&h),
        check: c,
        faults: vec![FaultRecord {
            index: 0,
            kind: "killLeader".into(),
            detail: "SIGKILL node(s) [3]".into(),
            start_ms: 4_000,
            end_ms: Some(7_000),
        }],
        decisions: vec![DecisionMark {
            at_ms: 6_000,
            tier: "heal".into(),
            level: Some(1),
            action: "RestartNode".into(),
            target: "node 3".into(),
            disposition: "execute".into(),
            reason: "node 3 is down".into(),
        }],
        events: vec![],
        invariants: inv(),
        timeline: timeline(&h, 1_000, 10_000),
        bucket_ms: 1_000,
        game_day: None,
        final_control: None,
        spec,
    };
    let html = report.html();
    assert!(html.contains("<svg"), "inline SVG");
    assert!(html.contains("fault 0: killLeader"), "fault band");
    assert!(html.contains("fill-opacity=\"0.12\""), "shaded band");
    assert!(html.contains("heal RestartNode node 3"), "decision marker");
    assert!(html.contains("<polyline"), "latency line");
    assert!(!html.contains("<script>"), "text is escaped");
    assert!(html.contains("&lt;script&gt;"));
    let text = report.text();
    assert!(
        text.contains("fault 0 killLeader at 4.0 s → 7.0 s"),
        "{text}"
    );
    // The JSON round-trips (drill report reads it back).
    let back: DrillReport =
        serde_json::from_slice(&serde_json::to_vec(&report).expect("json")).expect("parse");
    assert_eq!(back, report);
}

#[test]
fn orders_accepted_counts_unavailable_and_unknown_orders_not_business_answers() {
    let ops = vec![
        order(
            0,
            1,
            100,
            5,
            "a",
            OpResult::Placed {
                order_id: "o1".into(),
            },
        ),
        order(
            1,
            1,
            200,
            5,
            "b",
            OpResult::Rejected {
                code: "sold_out".into(),
            },
        ),
        order(2, 1, 300, 5, "c", OpResult::Unknown),
        // Unavailable, retried, still unavailable when the retries ran out.
        order(
            3,
            1,
            400,
            5,
            "d",
            OpResult::Rejected {
                code: "no_quorum".into(),
            },
        ),
        order(
            4,
            1,
            500,
            5,
            "d",
            OpResult::Rejected {
                code: "no_quorum".into(),
            },
        ),
        // Unavailable first, then acknowledged.
        order(
            5,
            1,
            600,
            5,
            "e",
            OpResult::Rejected {
                code: "not_leader".into(),
            },
        ),
        order(
            6,
            1,
            700,
            5,
            "e",
            OpResult::Placed {
                order_id: "o2".into(),
            },
        ),
    ];
    let h = History {
        ops,
        ..History::default()
    };
    let c = check(&h);
    let p = [
        ProbeSpec {
            min_percent: Some(50),
            ..probe(ProbeKind::OrdersAccepted)
        },
        ProbeSpec {
            min_percent: Some(51),
            ..probe(ProbeKind::OrdersAccepted)
        },
    ];
    let r = evaluate(&p, &h, &c, &PHASES, &[], &inv(), &[]);
    assert_eq!(
        r[0].measured,
        "50.0% accepted (2 of 4 orders; 1 refused as unavailable, 1 unknown; 1 more answered sold out or over the limit)",
        "{r:?}"
    );
    assert!(r[0].passed);
    assert!(!r[1].passed, "a sold-out answer must not count as accepted");
    let o = order_counts(&h);
    assert_eq!((o.orders, o.acked, o.refused, o.failed), (5, 2, 2, 1));
}

#[test]
fn throughput_compares_the_phase_with_the_steady_rate() {
    let h = history();
    let c = check(&h);
    let probes = [
        ProbeSpec {
            min_percent_of_steady: Some(50),
            ..probe(ProbeKind::Throughput)
        },
        ProbeSpec {
            min_percent_of_steady: Some(100),
            phase: Some(DrillPhase::Recovery),
            ..probe(ProbeKind::Throughput)
        },
    ];
    let r = evaluate(&probes, &h, &c, &PHASES, &[], &inv(), &[]);
    // Steady 10/s; nothing acknowledged during the outage; 33 in the 3 s after.
    assert!(!r[0].passed, "{r:?}");
    assert_eq!(
        r[0].measured,
        "0 accepted orders/s during the fault phase (3.0 s) = 0% of the steady 10/s"
    );
    assert!(r[1].passed, "{r:?}");
    assert!(r[1].measured.contains("= 110% of the steady 10/s"), "{r:?}");
    assert_eq!(r[0].name, "accepted orders/s ≥ 50% of steady (fault)");
}

fn state(at_ms: u64, drained: Option<&str>, tier: bool) -> ControlState {
    let mut weights = BTreeMap::from([("eu".to_string(), 100), ("ap".to_string(), 100)]);
    if let Some(r) = drained {
        weights.insert(r.to_string(), 0);
    }
    ControlState {
        at_ms,
        weights,
        sales_paused: false,
        tiers: if tier {
            vec!["T2 move on region ap: active".into()]
        } else {
            vec![]
        },
        stranded: if drained.is_some() && !tier {
            vec![drained.unwrap_or_default().to_string()]
        } else {
            vec![]
        },
        leader: Some(1),
        leader_away: None,
    }
}

#[test]
fn full_recovery_needs_the_control_loop_back_to_normal_in_time_and_staying_so() {
    let h = history();
    let c = check(&h);
    let within = |s: u64| ProbeSpec {
        within_secs: Some(s),
        ..probe(ProbeKind::FullRecovery)
    };
    let eval = |states: &[ControlState], s: u64| {
        evaluate(&[within(s)], &h, &c, &PHASES, &[], &inv(), states).remove(0)
    };
    // Drained during the fault, back to normal 1 s after the heal at 7 s.
    let good = [
        state(5_000, Some("ap"), true),
        state(7_500, Some("ap"), true),
        state(8_000, None, false),
        state(9_500, None, false),
    ];
    let r = eval(&good, 2);
    assert!(r.passed, "{r:?}");
    assert!(
        r.measured
            .starts_with("back to normal 1.0 s after the last heal"),
        "{r:?}"
    );
    assert!(!eval(&good, 0).passed);
    // Normal for a moment, then drained again: not recovered.
    let relapse = [state(8_000, None, false), state(9_000, Some("ap"), true)];
    let r = eval(&relapse, 5);
    assert!(!r.passed);
    assert!(
        r.measured
            .contains("region ap at weight 0; T2 move on region ap: active"),
        "{r:?}"
    );
    // A binding that reports nothing is not silently passed.
    let r = eval(&[], 60);
    assert!(!r.passed && r.measured.starts_with("not measured"), "{r:?}");
}

#[test]
fn a_region_left_stranded_fails_the_drill() {
    let c = check(&history());
    let stranded = state(9_000, Some("ap"), false);
    assert_eq!(stranded.stranded, vec!["ap".to_string()]);
    assert_eq!(
        verdict(false, &[], &c, &inv(), &[], Some(&stranded)),
        Verdict::Fail
    );
    let held = state(9_000, Some("ap"), true);
    assert_eq!(
        verdict(false, &[], &c, &inv(), &[], Some(&held)),
        Verdict::Pass
    );
}
