//! The state machine's fuzz harness (cargo-fuzz target `state_machine` in
//! `fuzz/`, docs/security.md): any byte string becomes a command sequence,
//! applied step by step with the invariant checker as the oracle. Kept in the
//! crate so its regression cases run as plain unit tests.

use crate::{Command, ListingState, Outcome, ResealedContact, RoomState, ShardState, Stamped};

const IDS: [&str; 6] = ["a", "b", "c", ".", "", "x:y.z-_"];

/// Reads fields of commands from fuzzer bytes; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        // Mostly small numbers (they collide), sometimes the bounds and beyond.
        match self.u8() {
            250 => u64::MAX,
            251 => u64::from(u32::MAX),
            252 => 1_000_000_000,
            253 => 1_000_000_001,
            254 => 10_000,
            255 => 10_001,
            n => u64::from(n % 8),
        }
    }

    fn u32(&mut self) -> u32 {
        u32::try_from(self.u64()).unwrap_or(u32::MAX)
    }

    fn id(&mut self) -> String {
        match self.u8() {
            200 => "a".repeat(129),
            201 => "..".into(),
            n => IDS[usize::from(n) % IDS.len()].to_string(),
        }
    }

    fn command(&mut self) -> Command {
        match self.u8() % 8 {
            0 => Command::UpsertRoom {
                room: self.id(),
                title: self.id(),
                home_region: self.id(),
                state: [RoomState::Live, RoomState::Scheduled, RoomState::Ended]
                    [usize::from(self.u8()) % 3],
            },
            1 => Command::UpsertListing {
                room: self.id(),
                sku: self.id(),
                price_cents: self.u64(),
                stock_total: self.u32(),
                per_buyer_limit: self.u32(),
                state: [ListingState::Open, ListingState::Closed][usize::from(self.u8()) % 2],
            },
            2 | 3 => Command::PlaceOrder {
                room: self.id(),
                sku: self.id(),
                buyer: self.id(),
                qty: self.u32(),
                idempotency_key: self.id(),
                contact: sealed_like(self.u8()),
            },
            4 => Command::CancelOrder {
                order_id: self.u64(),
            },
            5 => Command::PayOrder {
                order_id: self.u64(),
            },
            6 => Command::SetSalesPaused {
                paused: self.u8() & 1 == 0,
                reason: self.id(),
            },
            // Re-seals: 0 to 3 contacts (none is refused), any order id,
            // from and to key ids 0..3, sometimes not sealed-looking.
            _ => Command::ResealContacts {
                contacts: (0..self.u8() % 4)
                    .map(|_| ResealedContact {
                        order_id: self.u64(),
                        from_key: self.u8() % 3,
                        contact: sealed_like(self.u8()),
                    })
                    .collect(),
            },
        }
    }
}

/// A contact blob of `n × 8` bytes; when not empty it looks sealed (version
/// 1) under key id `n % 3`, so re-seals find contacts under each key.
fn sealed_like(n: u8) -> Vec<u8> {
    let mut v = vec![0; usize::from(n) * 8];
    if let [version, key, ..] = v.as_mut_slice() {
        *version = 1;
        *key = n % 3;
    }
    v
}

/// Decodes `data` into commands (at most 256).
pub fn decode(data: &[u8]) -> Vec<Command> {
    let mut b = Bytes(data);
    let mut out = Vec::new();
    while !b.0.is_empty() && out.len() < 256 {
        out.push(b.command());
    }
    out
}

/// Applies the commands of `data`; panics (the fuzzer's crash) when an
/// invariant breaks, a refusal changes the state, or replaying the same log
/// gives another state.
pub fn commands(data: &[u8]) {
    let log: Vec<Stamped> = decode(data)
        .into_iter()
        .enumerate()
        .map(|(i, command)| Stamped {
            at_ms: 1_000 + i as u64,
            command,
        })
        .collect();
    let mut state = ShardState::new();
    for (i, stamped) in log.iter().enumerate() {
        let before = state.clone();
        let outcome = state.apply(stamped);
        if let Err(v) = state.check_invariants() {
            panic!("step {i} {:?} -> {outcome:?}: {v}", stamped.command);
        }
        if let Outcome::Rejected { code, .. } = outcome {
            assert!(
                before == state,
                "step {i}: rejected {:?} ({code:?}) changed the state",
                stamped.command
            );
        }
    }
    let mut replay = ShardState::new();
    for stamped in &log {
        replay.apply(stamped);
    }
    assert!(replay == state, "replaying the log gave another state");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_reaches_a_reseal_that_moves_a_contact() {
        // Room, listing, an order whose contact is under key 1, then a
        // re-seal of order 1 from key 1 to a contact under key 2.
        let seed = [
            0, 0, 0, 0, 0, 1, 0, 0, 3, 5, 5, 0, 2, 0, 0, 0, 1, 0, 1, 7, 1, 1, 1, 2,
        ];
        let cmds = decode(&seed);
        assert!(
            matches!(cmds[3], Command::ResealContacts { .. }),
            "{cmds:?}"
        );
        let mut s = ShardState::new();
        let outs: Vec<Outcome> = cmds
            .iter()
            .map(|c| {
                s.apply(&Stamped {
                    at_ms: 1,
                    command: c.clone(),
                })
            })
            .collect();
        assert_eq!(
            outs[3],
            Outcome::Resealed {
                resealed: 1,
                skipped: 0
            },
            "{outs:?}"
        );
        assert_eq!(s.contact_key_counts().get(&2), Some(&1));
        commands(&seed);
    }

    #[test]
    fn the_harness_reaches_orders_and_its_oracle_holds_on_seeds() {
        // Room a live, listing a/a open, an order, a cancel, a pay.
        let seed = [
            0, 0, 0, 0, 0, 1, 0, 0, 3, 5, 5, 0, 2, 0, 0, 0, 1, 0, 0, 4, 1, 5, 1,
        ];
        let cmds = decode(&seed);
        assert!(matches!(cmds[0], Command::UpsertRoom { .. }), "{cmds:?}");
        assert!(matches!(cmds[1], Command::UpsertListing { .. }), "{cmds:?}");
        assert!(matches!(cmds[2], Command::PlaceOrder { .. }), "{cmds:?}");
        let mut s = ShardState::new();
        let outs: Vec<Outcome> = cmds
            .iter()
            .map(|c| {
                s.apply(&Stamped {
                    at_ms: 1,
                    command: c.clone(),
                })
            })
            .collect();
        assert!(
            matches!(outs[2], Outcome::Order { .. }),
            "the seed must place an order: {outs:?}"
        );
        commands(&seed);
        for n in 0..=255u8 {
            commands(&[n; 40]);
            commands(&[n, 1, n, 2, n, 3, 255, 250, n]);
        }
    }
}
