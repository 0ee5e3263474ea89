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
//! 2. openraft confirms the leadership by its lease (`ReadPolicy::LeaseRead`: a
//!    quorum acknowledged this leader within the lease, so no other leader can
//!    have been elected) and waits until the state machine has applied
//!    everything committed when the read began. Every order acknowledged before
//!    this request arrived is therefore in the state.
//!    A quorum must also have acknowledged the leader within half an election
//!    timeout: voters lift the lease for a leader whose process is gone only
//!    after longer silence than that (`dead_leader`, D49).
//! 3. The check runs again on that state; its answer is the refusal.
//!
//! A refused order leaves no state (docs/decisions.md, "Refused orders leave no
//! state"), so refusing it is a read, and this is a linearizable read: nothing
//! is ever accepted here, and an order that could still succeed goes to the log.

use std::time::Duration;

use openraft::ReadPolicy;
use roomkeeper_order_state::{Command, RejectCode};

use crate::node::NodeContext;

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
    // Bounded: a leader whose state machine lags far behind answers through the log.
    tokio::time::timeout(
        Duration::from_millis(200),
        ctx.raft.ensure_linearizable(ReadPolicy::LeaseRead),
    )
    .await
    .ok()?
    .ok()?;
    // The lease alone is not enough since voters may lift it for a leader
    // whose process is gone (D49): a quorum must have acknowledged this
    // leader more recently than any such voter would vote.
    if !ctx.dead_leader.precheck_allows(&ctx.raft) {
        return None;
    }
    let code = judge()?;
    ctx.metrics
        .order_early_refusals_total
        .with_label_values(&[code.as_str()])
        .inc();
    Some(code)
}
