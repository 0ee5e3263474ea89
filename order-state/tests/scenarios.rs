//! Hand-written scenarios, one behaviour each.

use roomkeeper_order_state::{
    Command, ListingState, OrderStatus, Outcome, RejectCode, RoomState, ShardState, Stamped,
};

fn at(at_ms: u64, command: Command) -> Stamped {
    Stamped { at_ms, command }
}

fn live_room_with_listing(stock: u32, limit: u32) -> ShardState {
    let mut s = ShardState::new();
    s.apply(&at(
        1,
        Command::UpsertRoom {
            room: "room-1".into(),
            title: "Flash sale".into(),
            home_region: "eu-west".into(),
            state: RoomState::Live,
        },
    ));
    let out = s.apply(&at(
        2,
        Command::UpsertListing {
            room: "room-1".into(),
            sku: "sku-1".into(),
            price_cents: 1999,
            stock_total: stock,
            per_buyer_limit: limit,
            state: ListingState::Open,
        },
    ));
    assert!(matches!(out, Outcome::Listing(_)), "{out:?}");
    s
}

fn order(buyer: &str, key: &str, qty: u32) -> Command {
    Command::PlaceOrder {
        room: "room-1".into(),
        sku: "sku-1".into(),
        buyer: buyer.into(),
        qty,
        idempotency_key: key.into(),
        contact: b"sealed".to_vec(),
    }
}

fn code(o: &Outcome) -> Option<RejectCode> {
    match o {
        Outcome::Rejected { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn last_unit_sells_once_then_sold_out() {
    let mut s = live_room_with_listing(1, 5);
    assert!(matches!(
        s.apply(&at(3, order("a", "k", 1))),
        Outcome::Order { .. }
    ));
    assert_eq!(
        code(&s.apply(&at(4, order("b", "k", 1)))),
        Some(RejectCode::SoldOut)
    );
    assert_eq!(s.listing("room-1", "sku-1").map(|l| l.stock_left), Some(0));
    s.check_invariants().expect("invariants");
}

#[test]
fn per_buyer_limit_counts_live_orders_only() {
    let mut s = live_room_with_listing(10, 2);
    let first = s.apply(&at(3, order("a", "k1", 2)));
    let Outcome::Order { order: o, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        code(&s.apply(&at(4, order("a", "k2", 1)))),
        Some(RejectCode::LimitExceeded)
    );
    s.apply(&at(
        5,
        Command::CancelOrder {
            order_id: o.order_id,
        },
    ));
    assert!(matches!(
        s.apply(&at(6, order("a", "k3", 1))),
        Outcome::Order { .. }
    ));
    s.check_invariants().expect("invariants");
}

#[test]
fn time_comes_from_the_log_entry() {
    let mut s = live_room_with_listing(10, 2);
    let Outcome::Order { order: o, .. } = s.apply(&at(42_000, order("a", "k", 1))) else {
        panic!()
    };
    assert_eq!(o.created_at_ms, 42_000);
}

#[test]
fn cancel_returns_stock_and_paid_orders_cannot_be_cancelled() {
    let mut s = live_room_with_listing(3, 3);
    let Outcome::Order { order: o1, .. } = s.apply(&at(3, order("a", "k1", 1))) else {
        panic!()
    };
    let Outcome::Order { order: o2, .. } = s.apply(&at(3, order("b", "k1", 2))) else {
        panic!()
    };
    s.apply(&at(
        4,
        Command::PayOrder {
            order_id: o2.order_id,
        },
    ));
    let c = s.apply(&at(
        5,
        Command::CancelOrder {
            order_id: o2.order_id,
        },
    ));
    assert_eq!(code(&c), Some(RejectCode::InvalidTransition));
    let c = s.apply(&at(
        6,
        Command::CancelOrder {
            order_id: o1.order_id,
        },
    ));
    let Outcome::Order { order, .. } = c else {
        panic!("{c:?}")
    };
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(s.listing("room-1", "sku-1").map(|l| l.stock_left), Some(1));
    s.check_invariants().expect("invariants");
}

#[test]
fn stock_cannot_drop_below_what_is_sold() {
    let mut s = live_room_with_listing(5, 5);
    s.apply(&at(3, order("a", "k", 3)));
    let out = s.apply(&at(
        4,
        Command::UpsertListing {
            room: "room-1".into(),
            sku: "sku-1".into(),
            price_cents: 1,
            stock_total: 2,
            per_buyer_limit: 5,
            state: ListingState::Open,
        },
    ));
    assert_eq!(code(&out), Some(RejectCode::StockBelowSold));
}

#[test]
fn reusing_a_key_for_another_order_is_refused() {
    let mut s = live_room_with_listing(5, 5);
    s.apply(&at(3, order("a", "k", 1)));
    assert_eq!(
        code(&s.apply(&at(4, order("a", "k", 2)))),
        Some(RejectCode::IdempotencyKeyReused)
    );
    assert_eq!(s.summary().orders, 1);
}

#[test]
fn paused_sales_refuse_orders_and_resume() {
    let mut s = live_room_with_listing(5, 5);
    s.apply(&at(
        3,
        Command::SetSalesPaused {
            paused: true,
            reason: "quorum lost".into(),
        },
    ));
    assert_eq!(
        code(&s.apply(&at(4, order("a", "k", 1)))),
        Some(RejectCode::SalesPaused)
    );
    s.apply(&at(
        5,
        Command::SetSalesPaused {
            paused: false,
            reason: String::new(),
        },
    ));
    // The key's first outcome was the pause; a new key orders normally.
    assert!(matches!(
        s.apply(&at(6, order("a", "k2", 1))),
        Outcome::Order { .. }
    ));
}

#[test]
fn refused_orders_leave_no_buyer_and_no_key_behind() {
    let mut s = live_room_with_listing(1, 1);
    let before = s.clone();
    let unknown_room = Command::PlaceOrder {
        room: "no-such-room".into(),
        sku: "sku-1".into(),
        buyer: "stranger".into(),
        qty: 1,
        idempotency_key: "k".into(),
        contact: b"sealed".to_vec(),
    };
    for i in 0..1000u64 {
        let mut c = unknown_room.clone();
        if let Command::PlaceOrder {
            buyer,
            idempotency_key,
            ..
        } = &mut c
        {
            *buyer = format!("b{i}");
            *idempotency_key = format!("k{i}");
        }
        assert_eq!(code(&s.apply(&at(3, c))), Some(RejectCode::RoomNotFound));
        assert_eq!(
            code(&s.apply(&at(3, order(&format!("b{i}"), "k", 2)))),
            Some(RejectCode::LimitExceeded)
        );
    }
    assert_eq!(s, before);
    assert_eq!(s.summary().buyers, 0);
    assert_eq!(s.summary().idempotency_keys, 0);
}

#[test]
fn a_refused_key_is_refused_the_same_way_until_the_state_changes() {
    let mut s = live_room_with_listing(1, 1);
    let Outcome::Order { order: o, .. } = s.apply(&at(3, order("a", "k1", 1))) else {
        panic!()
    };
    for t in 4..6 {
        assert_eq!(
            s.apply(&at(t, order("b", "k", 1))),
            Outcome::Rejected {
                code: RejectCode::SoldOut,
                replayed: false
            }
        );
    }
    s.apply(&at(
        6,
        Command::CancelOrder {
            order_id: o.order_id,
        },
    ));
    // The refusal had no effect, so the same key now buys the freed unit, once.
    let Outcome::Order { order: o2, .. } = s.apply(&at(7, order("b", "k", 1))) else {
        panic!()
    };
    assert!(matches!(
        s.apply(&at(8, order("b", "k", 1))),
        Outcome::Order { order, replayed: true } if order.order_id == o2.order_id
    ));
    assert_eq!(s.summary().idempotency_keys, 2);
    s.check_invariants().expect("invariants");
}

#[test]
fn malformed_commands_are_rejected_without_effect() {
    let mut s = live_room_with_listing(5, 5);
    let before = s.clone();
    for bad in [
        order("", "k", 1),
        order("a", "k", 0),
        order("a", "k", u32::MAX),
        order("a b", "k", 1),
    ] {
        assert_eq!(
            code(&s.apply(&at(3, bad))),
            Some(RejectCode::InvalidRequest)
        );
    }
    assert_eq!(s, before);
}

#[test]
fn state_round_trips_through_serde() {
    let mut s = live_room_with_listing(5, 5);
    s.apply(&at(3, order("a", "k", 1)));
    let json = serde_json::to_string(&s).expect("serialize");
    let back: ShardState = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(s, back);
}

#[test]
fn commands_and_outcomes_survive_the_log_codec() {
    // The Raft log and the node transport use postcard, which cannot decode
    // internally tagged enums; this guards the wire shape of log entries.
    let mut s = live_room_with_listing(5, 5);
    let cmd = order("a", "k", 1);
    let bytes = postcard::to_allocvec(&cmd).expect("encode command");
    assert_eq!(
        postcard::from_bytes::<Command>(&bytes).expect("decode command"),
        cmd
    );
    let outcome = s.apply(&at(3, cmd));
    let bytes = postcard::to_allocvec(&outcome).expect("encode outcome");
    assert_eq!(
        postcard::from_bytes::<Outcome>(&bytes).expect("decode outcome"),
        outcome
    );
    s.apply(&at(4, order("b", "k", 1)));
    s.apply(&at(5, order("a", "k2", 2)));
    let bytes = postcard::to_allocvec(&s).expect("encode state");
    let back = postcard::from_bytes::<ShardState>(&bytes).expect("decode state");
    assert_eq!(back, s);
    // Lookup indexes are rebuilt on load: a buyer's orders are found in order.
    let ids: Vec<u64> = back
        .orders_of_buyer("a")
        .iter()
        .map(|o| o.order_id)
        .collect();
    assert_eq!(ids, vec![1, 3]);
    back.check_invariants()
        .expect("invariants after a snapshot round trip");
}

#[test]
fn the_cheap_order_check_answers_sold_out_and_over_limit_but_never_a_used_key() {
    let mut s = live_room_with_listing(2, 1);
    assert_eq!(s.order_refusal("room-1", "sku-1", "a", 1, "k1"), None);
    assert!(matches!(
        s.apply(&at(3, order("a", "k1", 1))),
        Outcome::Order { .. }
    ));
    // Over the per-buyer limit of 1.
    assert_eq!(
        s.order_refusal("room-1", "sku-1", "a", 1, "k2"),
        Some(RejectCode::LimitExceeded)
    );
    // The key that placed the order replays through the log, never refused here.
    assert_eq!(s.order_refusal("room-1", "sku-1", "a", 1, "k1"), None);
    assert!(matches!(
        s.apply(&at(4, order("b", "k1", 1))),
        Outcome::Order { .. }
    ));
    assert_eq!(
        s.order_refusal("room-1", "sku-1", "c", 1, "k1"),
        Some(RejectCode::SoldOut)
    );
    // Other refusals (unknown listing, invalid quantity) are left to the log.
    assert_eq!(s.order_refusal("room-1", "nope", "c", 1, "k1"), None);
    // A cancellation frees the unit: the check sees it at once.
    s.apply(&at(5, Command::CancelOrder { order_id: 2 }));
    assert_eq!(s.order_refusal("room-1", "sku-1", "c", 1, "k1"), None);
}
