//! Pure history checker (no I/O).
//!
//! [`check`] judges a [`History`] against the order-store invariants of the
//! design: no acknowledged order lost, no oversell, exactly one effect per
//! `(buyer, key)`, no phantom orders, and stock reads linearizable against a
//! counter model (WGL/Knossos-style backtracking search with memoization).
//!
//! Limits: the linearizability search runs per sku over at most
//! [`MAX_LINEARIZABILITY_OPS`] operations (decrements + reads) and visits at
//! most [`MAX_SEARCH_STATES`] states; a sku over either limit is not judged
//! and is listed in [`Report::linearizability_skipped`] (it does not make the
//! history invalid).

use crate::history::{History, OpKind, OpResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Most operations (decrements + reads) per sku the linearizability search takes.
pub const MAX_LINEARIZABILITY_OPS: usize = 64;
/// Most search states per sku before the search gives up.
pub const MAX_SEARCH_STATES: usize = 1_000_000;

/// A planted or real violation found in a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "violation", rename_all = "snake_case")]
pub enum Violation {
    #[error("op {op}: malformed: {reason}")]
    Malformed { op: u64, reason: String },
    #[error("acknowledged order {order_id} (op {op}) is missing after healing")]
    LostOrder { op: u64, order_id: String },
    #[error("acknowledged order {order_id} (op {op}) differs after healing: {reason}")]
    OrderMismatch {
        op: u64,
        order_id: String,
        reason: String,
    },
    #[error("final order {order_id} is for unknown sku {sku}")]
    UnknownSku { order_id: String, sku: String },
    #[error("sku {sku} oversold: {sold} sold of {stock_total}")]
    Oversell {
        sku: String,
        sold: u64,
        stock_total: u32,
    },
    #[error("sku {sku}: final stock_left {reported:?}, expected {expected} from final orders")]
    StockMismatch {
        sku: String,
        expected: i64,
        reported: Option<u32>,
    },
    #[error("buyer {buyer} key {key}: {} final orders {order_ids:?}", order_ids.len())]
    DoubleEffect {
        buyer: String,
        key: String,
        order_ids: Vec<String>,
    },
    #[error("buyer {buyer} key {key}: acknowledged with different order ids {order_ids:?}")]
    ConflictingAcks {
        buyer: String,
        key: String,
        order_ids: Vec<String>,
    },
    #[error("final order {order_id} (buyer {buyer} key {key}) was never invoked")]
    PhantomOrder {
        order_id: String,
        buyer: String,
        key: String,
    },
    #[error("op {op} was rejected but final order {order_id} exists for its key")]
    RejectedButApplied { op: u64, order_id: String },
    #[error("sku {sku}: read op {read_op} saw {seen}, no linearization allows it (possible: {possible:?})")]
    NonLinearizableRead {
        sku: String,
        read_op: u64,
        seen: u32,
        possible: Vec<i64>,
    },
}

/// The verdict of [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `true` iff `violations` is empty.
    pub valid: bool,
    pub violations: Vec<Violation>,
    /// Distinct acknowledged order ids.
    pub acknowledged: usize,
    /// Acknowledged order ids missing after healing.
    pub lost: Vec<String>,
    /// Longest gap (ms) between consecutive successful `PlaceOrder`
    /// completions; 0 with fewer than two successes.
    pub rto_ms: u64,
    /// Acknowledged orders missing (= `lost.len()`).
    pub rpo: usize,
    /// Skus whose reads were not judged (over [`MAX_LINEARIZABILITY_OPS`] or
    /// [`MAX_SEARCH_STATES`]).
    pub linearizability_skipped: Vec<String>,
}

/// Judge a history. Pure: no I/O, deterministic output order.
pub fn check(h: &History) -> Report {
    let mut v = Vec::new();
    malformed(h, &mut v);

    // 1. no acknowledged order lost.
    let mut acked: BTreeSet<&str> = BTreeSet::new();
    let mut lost = Vec::new();
    for op in &h.ops {
        if let (
            OpKind::PlaceOrder {
                sku,
                buyer,
                qty,
                key,
            },
            OpResult::Placed { order_id },
        ) = (&op.kind, &op.result)
        {
            acked.insert(order_id);
            match h.final_orders.get(order_id) {
                None => {
                    if !lost.contains(order_id) {
                        lost.push(order_id.clone());
                    }
                    v.push(Violation::LostOrder {
                        op: op.id,
                        order_id: order_id.clone(),
                    });
                }
                Some(f) if (&f.sku, &f.buyer, f.qty, &f.key) != (sku, buyer, *qty, key) => {
                    v.push(Violation::OrderMismatch {
                        op: op.id,
                        order_id: order_id.clone(),
                        reason: format!(
                            "invoked ({sku}, {buyer}, {qty}, {key}), found ({}, {}, {}, {})",
                            f.sku, f.buyer, f.qty, f.key
                        ),
                    })
                }
                Some(_) => {}
            }
        }
    }

    // 2. no oversell, stock_left consistent.
    let mut sold: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, f) in &h.final_orders {
        if !h.listings.contains_key(&f.sku) {
            v.push(Violation::UnknownSku {
                order_id: id.clone(),
                sku: f.sku.clone(),
            });
        }
        *sold.entry(&f.sku).or_default() += u64::from(f.qty);
    }
    for (sku, &total) in &h.listings {
        let s = sold.get(sku.as_str()).copied().unwrap_or(0);
        if s > u64::from(total) {
            v.push(Violation::Oversell {
                sku: sku.clone(),
                sold: s,
                stock_total: total,
            });
        }
        let expected = i64::from(total) - s as i64;
        let reported = h.final_stock_left.get(sku).copied();
        if reported.map(i64::from) != Some(expected) {
            v.push(Violation::StockMismatch {
                sku: sku.clone(),
                expected,
                reported,
            });
        }
    }

    // 3. exactly one effect per (buyer, key).
    let mut finals_by_key: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for (id, f) in &h.final_orders {
        finals_by_key
            .entry((&f.buyer, &f.key))
            .or_default()
            .push(id.clone());
    }
    for ((buyer, key), ids) in &finals_by_key {
        if ids.len() > 1 {
            v.push(Violation::DoubleEffect {
                buyer: buyer.to_string(),
                key: key.to_string(),
                order_ids: ids.clone(),
            });
        }
    }
    let mut acks_by_key: BTreeMap<(&str, &str), BTreeSet<String>> = BTreeMap::new();
    for op in &h.ops {
        if let (OpKind::PlaceOrder { buyer, key, .. }, OpResult::Placed { order_id }) =
            (&op.kind, &op.result)
        {
            acks_by_key
                .entry((buyer, key))
                .or_default()
                .insert(order_id.clone());
        }
    }
    for ((buyer, key), ids) in &acks_by_key {
        if ids.len() > 1 {
            v.push(Violation::ConflictingAcks {
                buyer: buyer.to_string(),
                key: key.to_string(),
                order_ids: ids.iter().cloned().collect(),
            });
        }
    }

    // 4. no phantom orders.
    let mut maybe_applied: HashSet<(&str, &str)> = HashSet::new();
    let mut rejected: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for op in &h.ops {
        if let OpKind::PlaceOrder { buyer, key, .. } = &op.kind {
            match op.result {
                OpResult::Rejected { .. } => {
                    rejected.entry((buyer, key)).or_insert(op.id);
                }
                _ => {
                    maybe_applied.insert((buyer, key));
                }
            }
        }
    }
    for (id, f) in &h.final_orders {
        let k = (f.buyer.as_str(), f.key.as_str());
        if maybe_applied.contains(&k) {
            continue;
        }
        match rejected.get(&k) {
            Some(&op) => v.push(Violation::RejectedButApplied {
                op,
                order_id: id.clone(),
            }),
            None => v.push(Violation::PhantomOrder {
                order_id: id.clone(),
                buyer: f.buyer.clone(),
                key: f.key.clone(),
            }),
        }
    }

    // 5. linearizable stock reads.
    let mut skipped = Vec::new();
    for (sku, &total) in &h.listings {
        match linearize_sku(h, sku, total) {
            Lin::Ok => {}
            Lin::Skipped => skipped.push(sku.clone()),
            Lin::Violation(x) => v.push(x),
        }
    }

    // RTO: longest gap between consecutive successful PlaceOrder completions.
    let mut done: Vec<u64> = h
        .ops
        .iter()
        .filter(|o| {
            matches!(o.kind, OpKind::PlaceOrder { .. })
                && matches!(o.result, OpResult::Placed { .. })
        })
        .filter_map(|o| o.complete_ms)
        .collect();
    done.sort_unstable();
    let rto_ms = done.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);

    Report {
        valid: v.is_empty(),
        violations: v,
        acknowledged: acked.len(),
        rpo: lost.len(),
        lost,
        rto_ms,
        linearizability_skipped: skipped,
    }
}

fn malformed(h: &History, v: &mut Vec<Violation>) {
    let mut ids = HashSet::new();
    for op in &h.ops {
        let reason = if !ids.insert(op.id) {
            Some("duplicate op id".to_string())
        } else {
            match (&op.kind, &op.result, op.complete_ms) {
                (_, OpResult::Unknown, _) => None,
                (_, _, None) => Some("definite result without complete_ms".into()),
                (_, _, Some(c)) if c < op.invoke_ms => Some("completes before invoke".into()),
                (OpKind::PlaceOrder { .. }, OpResult::Stock { .. }, _) => {
                    Some("PlaceOrder answered with a stock read".into())
                }
                (OpKind::ReadStock { .. }, OpResult::Placed { .. }, _) => {
                    Some("ReadStock answered with an order".into())
                }
                _ => None,
            }
        };
        if let Some(reason) = reason {
            v.push(Violation::Malformed { op: op.id, reason });
        }
    }
}

enum Lin {
    Ok,
    Skipped,
    Violation(Violation),
}

/// One operation of the counter model.
#[derive(Debug, Clone)]
struct Event {
    op: u64,
    invoke: u64,
    /// `u64::MAX` = never completed (∞).
    complete: u64,
    /// `Some(qty)` for a decrement, `None` for a read.
    dec: Option<u32>,
    /// Value a read returned.
    seen: u32,
}

fn linearize_sku(h: &History, sku: &str, total: u32) -> Lin {
    // Decrements: one per (buyer, key) that took effect. Its interval is the
    // hull over the ops that may have caused it: earliest invoke, earliest
    // acknowledgement (∞ if none was acknowledged). This over-approximates the
    // possible linearization points, so it never rejects a correct history.
    let mut decs: BTreeMap<(&str, &str), Event> = BTreeMap::new();
    let finals: HashSet<(&str, &str)> = h
        .final_orders
        .values()
        .filter(|f| f.sku == sku)
        .map(|f| (f.buyer.as_str(), f.key.as_str()))
        .collect();
    let mut events = Vec::new();
    for op in &h.ops {
        let complete = op.complete_ms.unwrap_or(u64::MAX);
        match (&op.kind, &op.result) {
            (
                OpKind::PlaceOrder {
                    sku: s,
                    buyer,
                    qty,
                    key,
                },
                r,
            ) if s == sku => {
                let k = (buyer.as_str(), key.as_str());
                let effect = match r {
                    OpResult::Placed { .. } => true,
                    OpResult::Unknown => finals.contains(&k),
                    _ => false,
                };
                if !effect {
                    continue;
                }
                let c = if matches!(r, OpResult::Placed { .. }) {
                    complete
                } else {
                    u64::MAX
                };
                let e = decs.entry(k).or_insert(Event {
                    op: op.id,
                    invoke: op.invoke_ms,
                    complete: c,
                    dec: Some(*qty),
                    seen: 0,
                });
                e.invoke = e.invoke.min(op.invoke_ms);
                e.complete = e.complete.min(c);
            }
            (OpKind::ReadStock { sku: s }, OpResult::Stock { stock_left }) if s == sku => {
                if let Some(c) = op.complete_ms {
                    events.push(Event {
                        op: op.id,
                        invoke: op.invoke_ms,
                        complete: c,
                        dec: None,
                        seen: *stock_left,
                    });
                }
            }
            _ => {}
        }
    }
    if events.is_empty() {
        return Lin::Ok; // nothing observed, nothing to judge
    }
    events.extend(decs.into_values());
    if events.len() > MAX_LINEARIZABILITY_OPS {
        return Lin::Skipped;
    }
    events.sort_by_key(|e| (e.invoke, e.op));
    let n = events.len();
    // pred[i]: ops that must be linearized before i (complete before i's invoke).
    let pred: Vec<u64> = (0..n)
        .map(|i| {
            (0..n)
                .filter(|&j| events[j].complete < events[i].invoke)
                .fold(0u64, |m, j| m | (1 << j))
        })
        .collect();
    let full: u64 = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };

    let mut s = Search {
        events: &events,
        pred: &pred,
        full,
        seen_states: HashSet::new(),
        budget_hit: false,
        best: 0,
        possible: vec![BTreeSet::new(); n],
    };
    if s.dfs(0, i64::from(total)) {
        return Lin::Ok;
    }
    if s.budget_hit {
        return Lin::Skipped;
    }
    // Blame: among reads not in the deepest prefix, the earliest invoked one
    // that could be a candidate there; fall back to any unlinearized read.
    let best = s.best;
    let blamed = (0..n)
        .filter(|&i| best & (1 << i) == 0 && events[i].dec.is_none())
        .find(|&i| pred[i] & !best == 0)
        .or_else(|| (0..n).find(|&i| best & (1 << i) == 0 && events[i].dec.is_none()))
        .or_else(|| (0..n).find(|&i| events[i].dec.is_none()))
        .unwrap_or(0);
    Lin::Violation(Violation::NonLinearizableRead {
        sku: sku.to_string(),
        read_op: events[blamed].op,
        seen: events[blamed].seen,
        possible: s.possible[blamed].iter().copied().collect(),
    })
}

struct Search<'a> {
    events: &'a [Event],
    pred: &'a [u64],
    full: u64,
    /// Memo of (linearized set, counter value) states already explored.
    seen_states: HashSet<(u64, i64)>,
    budget_hit: bool,
    /// Largest linearized set reached (for blame).
    best: u64,
    /// Counter values at which each read was a candidate.
    possible: Vec<BTreeSet<i64>>,
}

impl Search<'_> {
    fn dfs(&mut self, done: u64, value: i64) -> bool {
        if done == self.full {
            return true;
        }
        if !self.seen_states.insert((done, value)) {
            return false;
        }
        if self.seen_states.len() > MAX_SEARCH_STATES {
            self.budget_hit = true;
            return false;
        }
        if done.count_ones() > self.best.count_ones() {
            self.best = done;
        }
        for i in 0..self.events.len() {
            let bit = 1u64 << i;
            if done & bit != 0 || self.pred[i] & !done != 0 {
                continue;
            }
            let e = &self.events[i];
            let next = match e.dec {
                Some(q) => value - i64::from(q),
                None => {
                    self.possible[i].insert(value);
                    if i64::from(e.seen) != value {
                        continue;
                    }
                    value
                }
            };
            if self.dfs(done | bit, next) {
                return true;
            }
            if self.budget_hit {
                return false;
            }
        }
        false
    }
}
