//! A thread-safe recorder of client operations during a drill.
//!
//! Every operation is recorded twice: when it is sent ([`Recorder::invoke`])
//! and when its outcome is known ([`Recorder::complete`]). Times are
//! milliseconds since the recorder was created, on one monotonic clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::history::{Op, OpKind, OpResult};

/// An operation that was sent and awaits its outcome.
#[derive(Debug)]
#[must_use = "complete every invoked operation, with OpResult::Unknown if nothing is known"]
pub struct Pending {
    id: u64,
    client: u32,
    invoke_ms: u64,
    kind: OpKind,
}

impl Pending {
    /// The operation's id in the history.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Records a history; share it behind an `Arc`.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
    acked: AtomicU64,
    unknown: AtomicU64,
    /// Time (ms) of the last acknowledged order, `u64::MAX` before the first.
    last_ack_ms: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Starts the clock.
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    /// A recorder whose time 0 is `start`.
    pub fn starting_at(start: Instant) -> Self {
        Self {
            start,
            next_id: AtomicU64::new(0),
            ops: Mutex::new(Vec::new()),
            acked: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            last_ack_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Milliseconds since the recorder started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The instant of time 0.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records the sending of an operation.
    pub fn invoke(&self, client: u32, kind: OpKind) -> Pending {
        Pending {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client,
            invoke_ms: self.now_ms(),
            kind,
        }
    }

    /// Records the outcome of an operation. `Unknown` outcomes have no completion time.
    pub fn complete(&self, p: Pending, result: OpResult) {
        let now = self.now_ms().max(p.invoke_ms);
        let complete_ms = match result {
            OpResult::Unknown => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
                None
            }
            OpResult::Placed { .. } => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                self.last_ack_ms.store(now, Ordering::Relaxed);
                Some(now)
            }
            _ => Some(now),
        };
        let op = Op {
            id: p.id,
            client: p.client,
            invoke_ms: p.invoke_ms,
            complete_ms,
            kind: p.kind,
            result,
        };
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    /// Acknowledged `PlaceOrder` operations so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Operations with an unknown outcome so far.
    pub fn unknown(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Time of the last acknowledgement, if any.
    pub fn last_ack_ms(&self) -> Option<u64> {
        match self.last_ack_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    /// Every completed operation, by id.
    pub fn ops(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().map(|o| o.clone()).unwrap_or_default();
        ops.sort_by_key(|o| o.id);
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_invocations_and_outcomes_in_id_order() {
        let r = Recorder::new();
        let a = r.invoke(1, OpKind::ReadStock { sku: "s".into() });
        let b = r.invoke(
            2,
            OpKind::PlaceOrder {
                sku: "s".into(),
                buyer: "b".into(),
                qty: 1,
                key: "k".into(),
            },
        );
        r.complete(
            b,
            OpResult::Placed {
                order_id: "7".into(),
            },
        );
        r.complete(a, OpResult::Unknown);
        let ops = r.ops();
        assert_eq!(ops.iter().map(|o| o.id).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(ops[0].complete_ms, None);
        assert!(ops[1].complete_ms.is_some());
        assert_eq!((r.acked(), r.unknown()), (1, 1));
        assert!(r.last_ack_ms().is_some());
    }
}
