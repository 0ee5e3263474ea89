//! The client API's bodies (`order-store/api/openapi.yaml` is the contract):
//! what a storefront sends to place orders and manage rooms and listings, and
//! what every refusal looks like.

use roomkeeper_order_state::{ListingState, LiveWindow, OrderView, RoomState};
use serde::{Deserialize, Serialize};

/// `PUT /v1/rooms/{room}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRoom {
    #[serde(default)]
    pub title: String,
    pub home_region: String,
    pub state: RoomState,
    /// The room's live windows (`[{start_ms, end_ms, expected_peak_orders_per_s}]`,
    /// Unix ms, end exclusive). Absent: the room keeps the windows it has;
    /// `[]` clears them. At most `MAX_LIVE_WINDOWS`, each `start_ms < end_ms`
    /// and at most 7 days long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_windows: Option<Vec<LiveWindow>>,
}

/// `PUT /v1/rooms/{room}/listings/{sku}`.
///
/// Bounds (checked by the node, refused with `invalid_request` and `field`):
/// `price_cents` ≤ `MAX_PRICE_CENTS` (10^9) so that price × qty stays below
/// 2^53 (exact for JSON clients that read numbers as doubles); `stock` and
/// `per_buyer_limit` ≤ `MAX_STOCK` (10^9). Ids are never `.` or `..`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutListing {
    /// At most `roomkeeper_order_state::command::MAX_PRICE_CENTS`.
    pub price_cents: u64,
    /// At most `roomkeeper_order_state::command::MAX_STOCK`.
    pub stock: u32,
    /// Between 1 and `MAX_STOCK`.
    pub per_buyer_limit: u32,
    pub state: ListingState,
}

/// `POST /v1/rooms/{room}/orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub sku: String,
    pub buyer: String,
    /// Between 1 and `roomkeeper_order_state::command::MAX_ORDER_QTY` (10^4).
    pub qty: u32,
    /// Identifies the order for retries. Only an accepted order is remembered
    /// under its key; a refused one leaves nothing and a retry is decided again.
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

/// `GET /v1/orders/{order_id}/contact`: the buyer's contact, opened. Only a
/// token with the `read_contact` verb on the order's room gets it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderContact {
    pub order_id: u64,
    pub contact: String,
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
/// The only refusals without it are hyper's own answers to an unparsable
/// request head (400, 414, 431 with an empty body; see the OpenAPI file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For `forbidden`: the verb the token lacks (`order`,
    /// `manage_listings`, `read_contact`), or `room` for a read outside its rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_scope: Option<String>,
}
