//! Recorded client history of an order-store drill.
//!
//! Every client operation is recorded with its invocation time and, if the
//! client got an answer, its completion time. Times are milliseconds on one
//! monotonic clock of the recorder.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// `POST /v1/rooms/{room}/orders` with an idempotency key.
    PlaceOrder {
        sku: String,
        buyer: String,
        qty: u32,
        key: String,
    },
    /// A linearizable read of a listing's `stock_left`.
    ReadStock { sku: String },
}

/// What the client observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OpResult {
    /// A `PlaceOrder` was acknowledged (201) with this order id.
    Placed { order_id: String },
    /// A `ReadStock` returned this `stock_left`.
    Stock { stock_left: u32 },
    /// A definite, typed rejection (409 sold_out, 429 overloaded, …): the
    /// operation must have had no effect.
    Rejected { code: String },
    /// Timeout, connection reset, 5xx without a definite answer: the
    /// operation may or may not have taken effect.
    Unknown,
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique id within the history.
    pub id: u64,
    /// The client (worker) that issued it.
    pub client: u32,
    /// When the request was sent.
    pub invoke_ms: u64,
    /// When the answer arrived; `None` for `Unknown` results (treated as ∞).
    pub complete_ms: Option<u64>,
    pub kind: OpKind,
    pub result: OpResult,
}

/// An order as read on the healed cluster after the drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalOrder {
    pub sku: String,
    pub buyer: String,
    pub qty: u32,
    pub key: String,
}

/// A whole drill history plus the final state read on the healed cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
    /// `stock_total` of every listing, by sku.
    pub listings: BTreeMap<String, u32>,
    /// Every live order after healing, by order id.
    pub final_orders: BTreeMap<String, FinalOrder>,
    /// `stock_left` of every listing after healing, by sku.
    pub final_stock_left: BTreeMap<String, u32>,
}
