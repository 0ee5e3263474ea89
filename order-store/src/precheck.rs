//! The cheap check before any Raft work for orders that must fail.
//!
//! In a flash sale most orders arrive after the stock is gone. Proposing each of
//! them through Raft (seal the contact, replicate, fsync on three nodes, apply)
//! only to refuse it costs as much as an accepted order. The leader answers them
//! from its own applied state instead, and only when that answer is one the log
//! would give at some instant between the request's arrival and its answer:
//!
//! 1. The local state says `sold_out` or `limit_exceeded` (never for an order
//!    whose idempotency key was used: a retry is answered by the log).
//! 2. openraft confirms the leadership: a quorum acknowledged a message this
//!    leader sent less than half an election timeout before the request
//!    arrived, or, when none did (a quorum farther away than that, as over a
//!    slow WAN), it sends a heartbeat round at once and waits for a quorum to
//!    acknowledge it, as ReadIndex does. Requests waiting together share that
//!    round. Then it waits until the state machine has applied everything
//!    committed when the read began, so every order acknowledged before this
//!    request arrived is in the state. Half an election timeout is shorter
//!    than any voter waits before it votes for another leader, even for one
//!    whose process is gone (`dead_leader`, D49), so no newer leader can exist
//!    at the read's instant.
//! 3. The check runs again on that state; its answer is the refusal.
//!
//! A refused order leaves no state (docs/decisions.md, "Refused orders leave no
//! state"), so refusing it is a read, and this is a linearizable read: nothing
//! is ever accepted here, and an order that could still succeed goes to the log.

use std::time::Duration;

use openraft::LinearizerOption;
use roomkeeper_order_state::{Command, RejectCode};

use crate::node::NodeContext;

/// How long a refusal waits for a quorum to acknowledge a heartbeat round
/// when the last acknowledgement is too old to reuse. Longer than a slow
/// WAN's round trip, shorter than the client's patience.
const CONFIRM_WAIT: Duration = Duration::from_millis(500);
/// How long it then waits for the state machine to catch up.
const APPLY_WAIT: Duration = Duration::from_millis(200);

/// The refusal this node may give at once to a validated `PlaceOrder`, or
/// `None`: propose it (every other command is always proposed).
pub async fn early_refusal(ctx: &NodeContext, command: &Command) -> Option<RejectCode> {
    let Command::PlaceOrder {
        room,
        sku,
        buyer,
        qty,
        idempotency_key,
        ..
    } = command
    else {
        return None;
    };
    let judge = || {
        ctx.sm
            .read(|s| s.order_refusal(room, sku, buyer, *qty, idempotency_key))
    };
    // Most orders can succeed: they pay one state lookup, no Raft round.
    judge()?;
    // A quorum acknowledgement younger than `precheck_fresh` is reused; an
    // older one costs one heartbeat round, bounded so that a leader losing its
    // quorum (or with a state machine far behind) answers through the log.
    let fresh = ctx.dead_leader.timings.precheck_fresh;
    let confirm = LinearizerOption::new(Some(fresh), true).with_wait_timeout(CONFIRM_WAIT);
    tokio::time::timeout(
        CONFIRM_WAIT + APPLY_WAIT,
        ctx.raft.ensure_linearizable(confirm),
    )
    .await
    .ok()?
    .ok()?;
    let code = judge()?;
    ctx.metrics
        .order_early_refusals_total
        .with_label_values(&[code.as_str()])
        .inc();
    Some(code)
}
