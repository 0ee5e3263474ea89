//! The checker accepts correct histories and rejects each planted violation.

use proptest::prelude::*;
use roomkeeper_chaos::{check, FinalOrder, History, Op, OpKind, OpResult, Violation};

fn place(
    id: u64,
    inv: u64,
    done: Option<u64>,
    buyer: &str,
    qty: u32,
    key: &str,
    r: OpResult,
) -> Op {
    Op {
        id,
        client: id as u32,
        invoke_ms: inv,
        complete_ms: done,
        kind: OpKind::PlaceOrder {
            sku: "tee".into(),
            buyer: buyer.into(),
            qty,
            key: key.into(),
        },
        result: r,
    }
}

fn placed(order_id: &str) -> OpResult {
    OpResult::Placed {
        order_id: order_id.into(),
    }
}

fn read(id: u64, inv: u64, done: u64, stock_left: u32) -> Op {
    Op {
        id,
        client: 100 + id as u32,
        invoke_ms: inv,
        complete_ms: Some(done),
        kind: OpKind::ReadStock { sku: "tee".into() },
        result: OpResult::Stock { stock_left },
    }
}

fn fo(buyer: &str, qty: u32, key: &str) -> FinalOrder {
    FinalOrder {
        sku: "tee".into(),
        buyer: buyer.into(),
        qty,
        key: key.into(),
    }
}

/// A valid, concurrent history: stock 10; alice buys 2 (acked), bob buys 3
/// (timed out but applied), carol is rejected, dave's timeout did not apply;
/// reads overlap the writes.
fn good() -> History {
    let mut h = History::default();
    h.listings.insert("tee".into(), 10);
    h.ops = vec![
        read(1, 0, 5, 10),
        place(2, 10, Some(30), "alice", 2, "k1", placed("o1")),
        read(3, 12, 40, 10), // concurrent with alice: may see before
        place(4, 35, None, "bob", 3, "k2", OpResult::Unknown),
        read(5, 41, 50, 8), // after alice; bob may or may not have happened
        place(
            6,
            60,
            Some(70),
            "carol",
            20,
            "k3",
            OpResult::Rejected {
                code: "sold_out".into(),
            },
        ),
        place(7, 61, None, "dave", 1, "k4", OpResult::Unknown),
        place(8, 80, Some(90), "alice", 2, "k1", placed("o1")), // retry, same answer
        read(9, 100, 110, 5),
        place(10, 120, Some(130), "erin", 1, "k5", placed("o5")),
    ];
    h.final_orders.insert("o1".into(), fo("alice", 2, "k1"));
    h.final_orders.insert("o2".into(), fo("bob", 3, "k2"));
    h.final_orders.insert("o5".into(), fo("erin", 1, "k5"));
    h.final_stock_left.insert("tee".into(), 4);
    h
}

fn only(h: &History) -> Violation {
    let r = check(h);
    assert!(!r.valid, "expected a violation: {r:?}");
    assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
    let v = r.violations[0].clone();
    assert!(!v.to_string().is_empty());
    v
}

#[test]
fn valid_history_is_accepted() {
    let r = check(&good());
    assert!(r.valid, "{:?}", r.violations);
    assert_eq!(r.acknowledged, 2);
    assert!(r.lost.is_empty());
    assert_eq!(r.rpo, 0);
    assert!(r.linearizability_skipped.is_empty());
    // JSON round trip of history and report.
    let j = serde_json::to_string(&good()).unwrap();
    assert_eq!(serde_json::from_str::<History>(&j).unwrap(), good());
    serde_json::to_string(&r).unwrap();
}

#[test]
fn lost_acknowledged_order_is_rejected() {
    let mut h = good();
    h.final_orders.remove("o5");
    h.final_stock_left.insert("tee".into(), 5);
    let r = check(&h);
    assert_eq!(r.lost, vec!["o5".to_string()]);
    assert_eq!(r.rpo, 1);
    assert!(matches!(only(&h), Violation::LostOrder { op: 10, ref order_id } if order_id == "o5"));
}

#[test]
fn acknowledged_order_changed_is_rejected() {
    let mut h = good();
    h.final_orders.insert("o5".into(), fo("erin", 2, "k5"));
    h.final_stock_left.insert("tee".into(), 3);
    assert!(matches!(only(&h), Violation::OrderMismatch { op: 10, .. }));
}

#[test]
fn oversell_is_rejected() {
    let mut h = History::default();
    h.listings.insert("tee".into(), 3);
    h.ops = vec![
        place(1, 0, Some(10), "a", 2, "k1", placed("o1")),
        place(2, 0, Some(10), "b", 2, "k2", placed("o2")),
    ];
    h.final_orders.insert("o1".into(), fo("a", 2, "k1"));
    h.final_orders.insert("o2".into(), fo("b", 2, "k2"));
    h.final_stock_left.insert("tee".into(), 0);
    let r = check(&h);
    assert!(!r.valid);
    assert!(r.violations.contains(&Violation::Oversell {
        sku: "tee".into(),
        sold: 4,
        stock_total: 3
    }));
}

#[test]
fn double_effect_for_one_key_is_rejected() {
    let mut h = good();
    h.final_orders.insert("o1b".into(), fo("alice", 2, "k1"));
    h.final_stock_left.insert("tee".into(), 2);
    match only(&h) {
        Violation::DoubleEffect {
            buyer,
            key,
            order_ids,
        } => {
            assert_eq!((buyer.as_str(), key.as_str()), ("alice", "k1"));
            assert_eq!(order_ids, vec!["o1".to_string(), "o1b".to_string()]);
        }
        v => panic!("{v}"),
    }
}

#[test]
fn two_acks_with_different_order_ids_are_rejected() {
    let mut h = good();
    h.ops[7].result = placed("o9");
    let r = check(&h);
    assert!(!r.valid);
    assert!(r.violations.iter().any(|v| matches!(v,
        Violation::ConflictingAcks { buyer, key, order_ids }
            if buyer == "alice" && key == "k1" && order_ids == &["o1".to_string(), "o9".to_string()])));
}

#[test]
fn phantom_order_for_rejected_op_is_rejected() {
    let mut h = good();
    h.ops[5] = place(
        6,
        60,
        Some(70),
        "carol",
        1,
        "k3",
        OpResult::Rejected {
            code: "overloaded".into(),
        },
    );
    h.final_orders.insert("o3".into(), fo("carol", 1, "k3"));
    h.final_stock_left.insert("tee".into(), 3);
    assert_eq!(
        only(&h),
        Violation::RejectedButApplied {
            op: 6,
            order_id: "o3".into()
        }
    );
}

#[test]
fn order_never_invoked_is_rejected() {
    let mut h = good();
    h.final_orders.insert("ox".into(), fo("mallory", 1, "kx"));
    h.final_stock_left.insert("tee".into(), 3);
    assert!(matches!(only(&h), Violation::PhantomOrder { ref order_id, .. } if order_id == "ox"));
}

#[test]
fn final_stock_left_inconsistent_is_rejected() {
    let mut h = good();
    h.final_stock_left.insert("tee".into(), 5);
    assert_eq!(
        only(&h),
        Violation::StockMismatch {
            sku: "tee".into(),
            expected: 4,
            reported: Some(5)
        }
    );
}

#[test]
fn stale_read_is_rejected() {
    // alice's order was acknowledged at 30; a read invoked at 41 still sees 10.
    let mut h = good();
    h.ops[4] = read(5, 41, 50, 10);
    match only(&h) {
        Violation::NonLinearizableRead {
            sku,
            read_op,
            seen,
            possible,
        } => {
            assert_eq!((sku.as_str(), read_op, seen), ("tee", 5, 10));
            assert!(
                possible.contains(&8) && !possible.contains(&10),
                "{possible:?}"
            );
        }
        v => panic!("{v}"),
    }
}

#[test]
fn future_read_is_rejected() {
    // A read that completed at 5 sees erin's decrement, invoked only at 120.
    let mut h = History::default();
    h.listings.insert("tee".into(), 10);
    h.ops = vec![
        read(1, 0, 5, 9),
        place(2, 120, Some(130), "erin", 1, "k5", placed("o5")),
    ];
    h.final_orders.insert("o5".into(), fo("erin", 1, "k5"));
    h.final_stock_left.insert("tee".into(), 9);
    match only(&h) {
        Violation::NonLinearizableRead {
            read_op,
            seen,
            possible,
            ..
        } => {
            assert_eq!((read_op, seen, possible), (1, 9, vec![10]));
        }
        v => panic!("{v}"),
    }
}

#[test]
fn non_monotonic_concurrent_reads_are_rejected() {
    // Two sequential reads see 8 then 10 while no stock is ever returned.
    let mut h = good();
    h.ops.push(read(11, 140, 150, 4));
    h.ops.push(read(12, 151, 160, 5));
    assert!(matches!(
        only(&h),
        Violation::NonLinearizableRead {
            read_op: 12,
            seen: 5,
            ..
        }
    ));
}

#[test]
fn malformed_op_is_rejected() {
    let mut h = good();
    h.ops[1].complete_ms = None;
    assert!(matches!(only(&h), Violation::Malformed { op: 2, .. }));
}

#[test]
fn rto_is_longest_gap_between_successful_orders() {
    let mut h = History::default();
    h.listings.insert("tee".into(), 100);
    let mut ops = Vec::new();
    let mut id = 0;
    let mut ok = |inv: u64, done: u64, ops: &mut Vec<Op>, h: &mut History| {
        id += 1;
        let oid = format!("o{id}");
        let key = format!("k{id}");
        ops.push(place(id, inv, Some(done), "a", 1, &key, placed(&oid)));
        h.final_orders.insert(oid, fo("a", 1, &key));
    };
    ok(0, 10, &mut ops, &mut h);
    ok(10, 20, &mut ops, &mut h);
    // outage: failures and timeouts between 20 and 1520
    ops.push(place(
        50,
        25,
        Some(1000),
        "b",
        1,
        "kb",
        OpResult::Rejected {
            code: "no_quorum".into(),
        },
    ));
    ops.push(place(51, 30, None, "c", 1, "kc", OpResult::Unknown));
    ok(1400, 1520, &mut ops, &mut h);
    ok(1500, 1600, &mut ops, &mut h);
    h.ops = ops;
    h.final_stock_left.insert("tee".into(), 96);
    let r = check(&h);
    assert!(r.valid, "{:?}", r.violations);
    assert_eq!(r.rto_ms, 1500);
    assert_eq!(r.acknowledged, 4);
}

#[test]
fn too_many_ops_are_skipped_not_failed() {
    let mut h = History::default();
    h.listings.insert("tee".into(), 1000);
    for i in 0..70 {
        h.ops.push(read(i, i * 10, i * 10 + 5, 1000));
    }
    h.final_stock_left.insert("tee".into(), 1000);
    let r = check(&h);
    assert!(r.valid);
    assert_eq!(r.linearizability_skipped, vec!["tee".to_string()]);
}

#[derive(Debug, Clone)]
enum Step {
    Place { qty: u32, outcome: u8 },
    Read,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u32..4, 0u8..4).prop_map(|(qty, outcome)| Step::Place { qty, outcome }),
        Just(Step::Read),
    ]
}

/// Simulate a correct counter, sequentially (with ambiguous timeouts that
/// may or may not apply and retries of acknowledged keys).
fn simulate(total: u32, steps: &[Step]) -> History {
    let mut h = History::default();
    h.listings.insert("tee".into(), total);
    let mut left = total;
    let mut t = 0;
    for (i, s) in steps.iter().enumerate() {
        let id = i as u64;
        t += 10;
        match s {
            Step::Read => h.ops.push(read(id, t, t + 5, left)),
            Step::Place { qty, outcome } => {
                let key = format!("k{i}");
                let oid = format!("o{i}");
                let fits = *qty <= left;
                let (res, applied) = match (outcome, fits) {
                    (0, _) => (OpResult::Unknown, false),
                    (1, true) => (OpResult::Unknown, true),
                    (_, true) => (placed(&oid), true),
                    (_, false) => (
                        OpResult::Rejected {
                            code: "sold_out".into(),
                        },
                        false,
                    ),
                };
                let done = if res == OpResult::Unknown {
                    None
                } else {
                    Some(t + 5)
                };
                h.ops.push(place(id, t, done, "b", *qty, &key, res.clone()));
                if applied {
                    left -= qty;
                    h.final_orders.insert(oid, fo("b", *qty, &key));
                }
                if *outcome == 3 && matches!(res, OpResult::Placed { .. }) {
                    // retry of the same key later returns the same outcome
                    h.ops
                        .push(place(1000 + id, t + 6, Some(t + 8), "b", *qty, &key, res));
                }
            }
        }
    }
    h.final_stock_left.insert("tee".into(), left);
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn valid_sequential_histories_are_accepted(total in 0u32..20, steps in prop::collection::vec(step(), 0..40)) {
        let h = simulate(total, &steps);
        let r = check(&h);
        prop_assert!(r.valid, "{:?}", r.violations);
        prop_assert!(r.linearizability_skipped.is_empty());
        prop_assert_eq!(r.rpo, 0);
    }
}

/// Simulate a correct counter whose operations take effect at points spaced
/// 10 ms apart, but whose client-visible intervals are widened randomly so
/// they overlap: the checker must still find the linearization.
fn simulate_concurrent(total: u32, steps: &[(Step, u64, u64)]) -> History {
    let mut h = History::default();
    h.listings.insert("tee".into(), total);
    let mut left = total;
    for (i, (s, before, after)) in steps.iter().enumerate() {
        let id = i as u64;
        let point = 100 + 10 * id;
        let (inv, done) = (point - before, point + after);
        match s {
            Step::Read => h.ops.push(read(id, inv, done, left)),
            Step::Place { qty, outcome } => {
                let key = format!("k{i}");
                let oid = format!("o{i}");
                let fits = *qty <= left;
                let (res, applied) = match (outcome, fits) {
                    (0, _) => (OpResult::Unknown, false),
                    (1, true) => (OpResult::Unknown, true),
                    (_, true) => (placed(&oid), true),
                    (_, false) => (
                        OpResult::Rejected {
                            code: "sold_out".into(),
                        },
                        false,
                    ),
                };
                let c = if res == OpResult::Unknown {
                    None
                } else {
                    Some(done)
                };
                h.ops.push(place(id, inv, c, "b", *qty, &key, res));
                if applied {
                    left -= qty;
                    h.final_orders.insert(oid, fo("b", *qty, &key));
                }
            }
        }
    }
    h.final_stock_left.insert("tee".into(), left);
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn valid_concurrent_histories_are_accepted(
        total in 0u32..20,
        steps in prop::collection::vec((step(), 0u64..40, 0u64..40), 0..40),
    ) {
        let h = simulate_concurrent(total, &steps);
        let r = check(&h);
        prop_assert!(r.valid, "{:?}", r.violations);
        prop_assert!(r.linearizability_skipped.is_empty());
    }
}
