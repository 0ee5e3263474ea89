//! The client API's bodies (`order-store/api/openapi.yaml` is the contract):
//! what a storefront sends to place orders and manage rooms and listings, and
//! what every refusal looks like.

use roomkeeper_order_state::{ListingState, OrderView, RoomState};
use serde::{Deserialize, Serialize};

/// `PUT /v1/rooms/{room}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRoom {
    #[serde(default)]
    pub title: String,
    pub home_region: String,
    pub state: RoomState,
}

/// `PUT /v1/rooms/{room}/listings/{sku}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutListing {
    pub price_cents: u64,
    pub stock: u32,
    pub per_buyer_limit: u32,
    pub state: ListingState,
}

/// `POST /v1/rooms/{room}/orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub sku: String,
    pub buyer: String,
    pub qty: u32,
    pub idempotency_key: String,
    /// Buyer contact data; sealed by the node before it enters the log.
    #[serde(default)]
    pub contact: String,
}

/// An order as the client API answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderResponse {
    #[serde(flatten)]
    pub order: OrderView,
    /// The idempotency key was seen before: this is the first outcome again.
    pub replayed: bool,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

/// The query of reads: `?consistency=…&max_staleness_ms=…`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadParams {
    #[serde(default)]
    pub consistency: Consistency,
    pub max_staleness_ms: Option<u64>,
}

/// Every refusal of the client and admin APIs: `{code, message, field?, retry_after_ms?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}
