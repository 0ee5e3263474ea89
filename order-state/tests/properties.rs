//! Property tests: random command sequences keep every invariant after every step,
//! and replaying the same log always produces the same state (determinism).

use proptest::prelude::*;
use roomkeeper_order_state::{Command, ListingState, Outcome, RoomState, ShardState, Stamped};

const ROOMS: [&str; 2] = ["r1", "r2"];
const SKUS: [&str; 3] = ["s1", "s2", "s3"];
const BUYERS: [&str; 4] = ["b1", "b2", "b3", "b4"];
const KEYS: [&str; 5] = ["k1", "k2", "k3", "k4", "k5"];

fn room_state() -> impl Strategy<Value = RoomState> {
    prop_oneof![
        1 => Just(RoomState::Scheduled),
        6 => Just(RoomState::Live),
        1 => Just(RoomState::Ended),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        1 => (0..ROOMS.len(), room_state()).prop_map(|(r, state)| Command::UpsertRoom {
            room: ROOMS[r].into(),
            title: "t".into(),
            home_region: "eu".into(),
            state,
        }),
        2 => (0..ROOMS.len(), 0..SKUS.len(), 0u32..12, 1u32..4, prop::bool::weighted(0.85)).prop_map(
            |(r, s, stock_total, per_buyer_limit, open)| Command::UpsertListing {
                room: ROOMS[r].into(),
                sku: SKUS[s].into(),
                price_cents: 100,
                stock_total,
                per_buyer_limit,
                state: if open { ListingState::Open } else { ListingState::Closed },
            }
        ),
        8 => (0..ROOMS.len(), 0..SKUS.len(), 0..BUYERS.len(), 0u32..4, 0..KEYS.len()).prop_map(
            |(r, s, b, qty, k)| Command::PlaceOrder {
                room: ROOMS[r].into(),
                sku: SKUS[s].into(),
                buyer: BUYERS[b].into(),
                qty,
                idempotency_key: KEYS[k].into(),
                contact: vec![1, 2, 3],
            }
        ),
        2 => (0u64..30).prop_map(|order_id| Command::CancelOrder { order_id }),
        2 => (0u64..30).prop_map(|order_id| Command::PayOrder { order_id }),
        1 => prop::bool::weighted(0.2).prop_map(|paused| Command::SetSalesPaused {
            paused,
            reason: "drill".into(),
        }),
        // Contacts above are sealed-looking blobs under key 2; a re-seal moves
        // some to key 3 (or asks for a key they are not under).
        1 => (0u64..30, 2u8..4).prop_map(|(order_id, from_key)| Command::ResealContacts {
            contacts: vec![roomkeeper_order_state::ResealedContact {
                order_id,
                from_key,
                contact: vec![1, 3, 9],
            }],
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_invariant_holds_after_every_step(cmds in prop::collection::vec(command(), 1..120)) {
        let mut state = ShardState::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let stamped = Stamped { at_ms: i as u64, command: cmd.clone() };
            let before = state.clone();
            let outcome = state.apply(&stamped);
            if let Err(v) = state.check_invariants() {
                return Err(TestCaseError::fail(format!("step {i} {cmd:?} -> {outcome:?}: {v}")));
            }
            // A rejection changes nothing: refused orders leave no buyer and no
            // idempotency record behind, so refusals cannot grow the state.
            if let Outcome::Rejected { code, .. } = outcome {
                prop_assert_eq!(&before, &state, "rejected {:?} ({:?}) changed state", cmd, code);
            }
        }
    }

    #[test]
    fn followers_apply_without_answers_to_the_same_state(cmds in prop::collection::vec(command(), 1..120)) {
        // A follower applies with `apply_unanswered`, the leader with `apply`:
        // both must reach the same state and count the same outcome label.
        let mut leader = ShardState::new();
        let mut follower = ShardState::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let outcome = leader.apply(&Stamped { at_ms: i as u64, command: cmd.clone() });
            let label = follower.apply_unanswered(i as u64, cmd);
            let want = match &outcome {
                Outcome::Order { replayed: true, .. } => "replayed",
                other => other.label(),
            };
            prop_assert_eq!(label, want, "step {} {:?}", i, cmd);
            prop_assert_eq!(&leader, &follower, "step {} {:?}", i, cmd);
        }
    }

    #[test]
    fn the_cheap_order_check_refuses_only_what_apply_refuses(
        cmds in prop::collection::vec(command(), 1..120),
        probes in prop::collection::vec((0..ROOMS.len(), 0..SKUS.len(), 0..BUYERS.len(), 0u32..4, 0..KEYS.len()), 1..8),
    ) {
        // Whenever `order_refusal` answers, applying that order to the same
        // state gives the same refusal and leaves the state as it was.
        let mut state = ShardState::new();
        for (i, cmd) in cmds.into_iter().enumerate() {
            state.apply(&Stamped { at_ms: i as u64, command: cmd });
            for &(r, s, b, qty, k) in &probes {
                let Some(code) = state.order_refusal(ROOMS[r], SKUS[s], BUYERS[b], qty, KEYS[k]) else {
                    continue;
                };
                let mut applied = state.clone();
                let place = Command::PlaceOrder {
                    room: ROOMS[r].into(), sku: SKUS[s].into(), buyer: BUYERS[b].into(), qty,
                    idempotency_key: KEYS[k].into(), contact: vec![1],
                };
                let out = applied.apply(&Stamped { at_ms: 10_000, command: place });
                prop_assert_eq!(out, Outcome::Rejected { code, replayed: false });
                prop_assert_eq!(&applied, &state);
            }
        }
    }

    #[test]
    fn replaying_the_same_log_gives_the_same_state(cmds in prop::collection::vec(command(), 1..80)) {
        let log: Vec<Stamped> = cmds.into_iter().enumerate()
            .map(|(i, command)| Stamped { at_ms: 1_000 + i as u64, command }).collect();
        let mut a = ShardState::new();
        let mut b = ShardState::new();
        let oa: Vec<Outcome> = log.iter().map(|e| a.apply(e)).collect();
        let ob: Vec<Outcome> = log.iter().map(|e| b.apply(e)).collect();
        prop_assert_eq!(oa, ob);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn repeating_an_order_key_returns_the_first_outcome(
        cmds in prop::collection::vec(command(), 0..60),
        b in 0..BUYERS.len(), k in 0..KEYS.len(), qty in 1u32..3,
    ) {
        let mut state = ShardState::new();
        for (i, command) in cmds.into_iter().enumerate() {
            state.apply(&Stamped { at_ms: i as u64, command });
        }
        let place = Command::PlaceOrder {
            room: "r1".into(), sku: "s1".into(), buyer: BUYERS[b].into(), qty,
            idempotency_key: KEYS[k].into(), contact: vec![],
        };
        let first = state.apply(&Stamped { at_ms: 500, command: place.clone() });
        let orders_after_first = state.summary().orders;
        let again = state.apply(&Stamped { at_ms: 501, command: place });
        prop_assert_eq!(state.summary().orders, orders_after_first, "a repeated key created an order");
        match (first, again) {
            (Outcome::Order { order: o1, .. }, Outcome::Order { order: o2, replayed }) => {
                prop_assert!(replayed);
                prop_assert_eq!(o1.order_id, o2.order_id);
            }
            // Nothing changed between the two: the retry is refused the same way.
            (Outcome::Rejected { code: c1, .. }, Outcome::Rejected { code: c2, replayed }) => {
                prop_assert!(!replayed);
                prop_assert_eq!(c1, c2);
            }
            (f, a) => prop_assert!(false, "first {:?} then {:?}", f, a),
        }
    }
}
