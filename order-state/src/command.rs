//! Commands that enter the Raft log, their validation, and the outcomes they produce.
//!
//! Every command carries the time the leader stamped on it (`at_ms`); applying a
//! command never reads a local clock, so every replica reaches the same state.

use serde::{Deserialize, Serialize};

/// Longest identifier (room, sku, buyer, idempotency key) accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Largest quantity one order may ask for.
pub const MAX_ORDER_QTY: u32 = 10_000;
/// Largest stock one listing may hold (also the largest per-buyer limit).
pub const MAX_STOCK: u32 = 1_000_000_000;
/// Largest integer a JSON client decoding numbers as IEEE doubles reads exactly (2^53 − 1).
pub const MAX_JSON_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Largest listing price, in cents (10 million currency units). Chosen so that
/// an order's total (`price × qty` ≤ 10^13) stays below 2^53 and a listing's
/// whole stock (`price × stock` ≤ 10^18) fits a signed 64-bit sum.
pub const MAX_PRICE_CENTS: u64 = 1_000_000_000;

const _: () = assert!(MAX_PRICE_CENTS * MAX_ORDER_QTY as u64 <= MAX_JSON_SAFE_INTEGER);
const _: () = assert!(MAX_PRICE_CENTS * MAX_STOCK as u64 <= i64::MAX as u64);
/// Largest encrypted contact blob accepted, in bytes.
pub const MAX_CONTACT_LEN: usize = 1024;
/// Longest room title, in bytes.
pub const MAX_TITLE_LEN: usize = 512;
/// Most contacts one `ResealContacts` entry rewrites (a batch stays a small
/// Raft entry: ≤ 256 × ~1 KiB, and orders keep flowing between batches).
pub const MAX_RESEAL_BATCH: usize = 256;

/// Most live windows one room carries.
pub const MAX_LIVE_WINDOWS: usize = 64;
/// Longest live window, in milliseconds (7 days).
pub const MAX_LIVE_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;
/// Largest expected peak a live window may declare, in orders per second.
pub const MAX_EXPECTED_PEAK_ORDERS_PER_S: u32 = 10_000_000;

/// A live window of a room: a streamer is on air from `start_ms` to `end_ms`
/// (Unix milliseconds, end exclusive), with the peak order rate the seller
/// expects. The control plane defers disruptive, non-protective actions in
/// the room's home region during it (docs/decisions.md, "Live windows").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveWindow {
    pub start_ms: u64,
    pub end_ms: u64,
    pub expected_peak_orders_per_s: u32,
}

impl LiveWindow {
    /// True when `[from_ms, to_ms)` overlaps the window.
    pub fn overlaps(&self, from_ms: u64, to_ms: u64) -> bool {
        self.start_ms < to_ms && from_ms < self.end_ms
    }
}

/// Checks a room's live windows: bounded count, each `start < end`, at most
/// [`MAX_LIVE_WINDOW_MS`] long, ends JSON-safe, peaks bounded.
pub fn check_live_windows(windows: &[LiveWindow]) -> Result<(), InvalidField> {
    let bad = |reason: String| InvalidField {
        field: "live_windows",
        reason,
    };
    if windows.len() > MAX_LIVE_WINDOWS {
        return Err(bad(format!("at most {MAX_LIVE_WINDOWS} windows per room")));
    }
    for (i, w) in windows.iter().enumerate() {
        if w.start_ms >= w.end_ms {
            return Err(bad(format!("window {i}: start_ms must be before end_ms")));
        }
        if w.end_ms > MAX_JSON_SAFE_INTEGER {
            return Err(bad(format!(
                "window {i}: end_ms must be at most {MAX_JSON_SAFE_INTEGER}"
            )));
        }
        if w.end_ms - w.start_ms > MAX_LIVE_WINDOW_MS {
            return Err(bad(format!(
                "window {i}: at most {MAX_LIVE_WINDOW_MS} ms (7 days) long"
            )));
        }
        if w.expected_peak_orders_per_s > MAX_EXPECTED_PEAK_ORDERS_PER_S {
            return Err(bad(format!(
                "window {i}: expected_peak_orders_per_s must be at most {MAX_EXPECTED_PEAK_ORDERS_PER_S}"
            )));
        }
    }
    Ok(())
}

/// The key id of a sealed contact: its second byte (`[version][key id][nonce]
/// [ciphertext]`, order-store/src/contact.rs). `None` for an order placed
/// without contact data or a blob too short to name a key.
pub fn contact_key_id(sealed: &[u8]) -> Option<u8> {
    match sealed {
        [1, id, ..] => Some(*id),
        _ => None,
    }
}

/// One contact of a [`Command::ResealContacts`]: already sealed on the leader
/// under the newest key; replaces the order's contact only while that is
/// still sealed under `from_key` (so a repeated or stale batch changes nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResealedContact {
    pub order_id: u64,
    pub from_key: u8,
    pub contact: Vec<u8>,
}

/// Whether a room is selling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomState {
    Scheduled,
    Live,
    Ended,
}

/// Whether a listing is open for orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListingState {
    Open,
    Closed,
}

/// Life cycle of an order. Placed and Paid orders hold stock; Cancelled orders do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Paid,
    Cancelled,
}

impl OrderStatus {
    /// True when the order holds stock.
    pub fn is_live(self) -> bool {
        !matches!(self, OrderStatus::Cancelled)
    }
}

/// A deterministic command of the order state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    UpsertRoom {
        room: String,
        title: String,
        home_region: String,
        state: RoomState,
    },
    UpsertListing {
        room: String,
        sku: String,
        price_cents: u64,
        stock_total: u32,
        per_buyer_limit: u32,
        state: ListingState,
    },
    PlaceOrder {
        room: String,
        sku: String,
        buyer: String,
        qty: u32,
        idempotency_key: String,
        /// Buyer contact, already encrypted by the node before it entered the log.
        contact: Vec<u8>,
    },
    CancelOrder {
        order_id: u64,
    },
    PayOrder {
        order_id: u64,
    },
    /// Pause or resume every sale of the shard (playbook tier T4 and operators).
    SetSalesPaused {
        paused: bool,
        reason: String,
    },
    /// Contact key rotation: replace contacts sealed under an older key with
    /// the same contacts sealed under the newest one. The ciphertexts are made
    /// on the leader; no plaintext enters the log (docs/decisions.md, "Contact
    /// key rotation"). Only the admin API's re-seal proposes it.
    ResealContacts {
        contacts: Vec<ResealedContact>,
    },
    /// `UpsertRoom` that also replaces the room's live windows (an empty list
    /// clears them). A new variant, appended last, so log entries written
    /// before it (postcard numbers variants by position) still decode;
    /// `UpsertRoom` keeps whatever windows the room had.
    UpsertRoomWithWindows {
        room: String,
        title: String,
        home_region: String,
        state: RoomState,
        live_windows: Vec<LiveWindow>,
    },
}

/// A command together with the leader's timestamp: the unit stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub at_ms: u64,
    pub command: Command,
}

/// Why a command was refused. Stable snake_case codes are the API contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    #[error("the room does not exist")]
    RoomNotFound,
    #[error("the room is not live")]
    RoomNotLive,
    #[error("the listing does not exist")]
    ListingNotFound,
    #[error("the listing is not on sale")]
    NotOnSale,
    #[error("not enough stock left")]
    SoldOut,
    #[error("the buyer would exceed the per-buyer limit")]
    LimitExceeded,
    #[error("the order does not exist")]
    OrderNotFound,
    #[error("the order cannot make this transition")]
    InvalidTransition,
    #[error("stock cannot be set below what live orders already hold")]
    StockBelowSold,
    #[error("sales are paused")]
    SalesPaused,
    #[error("the idempotency key was already used for a different order")]
    IdempotencyKeyReused,
    #[error("the request is invalid")]
    InvalidRequest,
    /// Never produced by the state machine: the leader's answer to a forwarded
    /// command the client's token does not allow (docs/security.md).
    #[error("the client's token does not allow this")]
    Forbidden,
}

impl RejectCode {
    /// The stable code used in JSON error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::RoomNotFound => "room_not_found",
            RejectCode::RoomNotLive => "room_not_live",
            RejectCode::ListingNotFound => "listing_not_found",
            RejectCode::NotOnSale => "not_on_sale",
            RejectCode::SoldOut => "sold_out",
            RejectCode::LimitExceeded => "limit_exceeded",
            RejectCode::OrderNotFound => "order_not_found",
            RejectCode::InvalidTransition => "invalid_transition",
            RejectCode::StockBelowSold => "stock_below_sold",
            RejectCode::SalesPaused => "sales_paused",
            RejectCode::IdempotencyKeyReused => "idempotency_key_reused",
            RejectCode::InvalidRequest => "invalid_request",
            RejectCode::Forbidden => "forbidden",
        }
    }

    /// Every code, for metrics and documentation.
    pub const ALL: [RejectCode; 13] = [
        RejectCode::RoomNotFound,
        RejectCode::RoomNotLive,
        RejectCode::ListingNotFound,
        RejectCode::NotOnSale,
        RejectCode::SoldOut,
        RejectCode::LimitExceeded,
        RejectCode::OrderNotFound,
        RejectCode::InvalidTransition,
        RejectCode::StockBelowSold,
        RejectCode::SalesPaused,
        RejectCode::IdempotencyKeyReused,
        RejectCode::InvalidRequest,
        RejectCode::Forbidden,
    ];
}

/// A field of a command that failed validation, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

fn check_id(field: &'static str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() {
        return Err(InvalidField {
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.len() > MAX_ID_LEN {
        return Err(InvalidField {
            field,
            reason: format!("must be at most {MAX_ID_LEN} bytes, got {}", value.len()),
        });
    }
    // `.` and `..` are path segments with a meaning of their own: a proxy or a
    // client library may resolve them before the request reaches a node.
    if value == "." || value == ".." {
        return Err(InvalidField {
            field,
            reason: "must not be `.` or `..`".into(),
        });
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(InvalidField {
            field,
            reason: format!("may hold only ASCII letters, digits and - _ . : (found {c:?})"),
        });
    }
    Ok(())
}

impl Command {
    /// Checks the shape of a command before it is proposed. Apply re-checks, so a
    /// malformed entry already in the log is rejected instead of corrupting state.
    pub fn validate(&self) -> Result<(), InvalidField> {
        match self {
            Command::UpsertRoomWithWindows {
                room,
                title,
                home_region,
                state,
                live_windows,
            } => {
                check_live_windows(live_windows)?;
                Command::UpsertRoom {
                    room: room.clone(),
                    title: title.clone(),
                    home_region: home_region.clone(),
                    state: *state,
                }
                .validate()
            }
            Command::UpsertRoom {
                room,
                title,
                home_region,
                ..
            } => {
                check_id("room", room)?;
                check_id("home_region", home_region)?;
                if title.len() > MAX_TITLE_LEN {
                    return Err(InvalidField {
                        field: "title",
                        reason: format!("must be at most {MAX_TITLE_LEN} bytes"),
                    });
                }
                Ok(())
            }
            Command::UpsertListing {
                room,
                sku,
                price_cents,
                stock_total,
                per_buyer_limit,
                ..
            } => {
                check_id("room", room)?;
                check_id("sku", sku)?;
                if *price_cents > MAX_PRICE_CENTS {
                    return Err(InvalidField {
                        field: "price_cents",
                        reason: format!("must be at most {MAX_PRICE_CENTS}"),
                    });
                }
                if *stock_total > MAX_STOCK {
                    return Err(InvalidField {
                        field: "stock",
                        reason: format!("must be at most {MAX_STOCK}"),
                    });
                }
                if *per_buyer_limit == 0 || *per_buyer_limit > MAX_STOCK {
                    return Err(InvalidField {
                        field: "per_buyer_limit",
                        reason: format!("must be between 1 and {MAX_STOCK}"),
                    });
                }
                Ok(())
            }
            Command::PlaceOrder {
                room,
                sku,
                buyer,
                qty,
                idempotency_key,
                contact,
            } => {
                check_id("room", room)?;
                check_id("sku", sku)?;
                check_id("buyer", buyer)?;
                check_id("idempotency_key", idempotency_key)?;
                if *qty == 0 || *qty > MAX_ORDER_QTY {
                    return Err(InvalidField {
                        field: "qty",
                        reason: format!("must be between 1 and {MAX_ORDER_QTY}"),
                    });
                }
                if contact.len() > MAX_CONTACT_LEN {
                    return Err(InvalidField {
                        field: "contact",
                        reason: format!("must be at most {MAX_CONTACT_LEN} bytes once encrypted"),
                    });
                }
                Ok(())
            }
            Command::CancelOrder { .. } | Command::PayOrder { .. } => Ok(()),
            Command::SetSalesPaused { reason, .. } => {
                if reason.len() > MAX_TITLE_LEN {
                    return Err(InvalidField {
                        field: "reason",
                        reason: format!("must be at most {MAX_TITLE_LEN} bytes"),
                    });
                }
                Ok(())
            }
            Command::ResealContacts { contacts } => {
                if contacts.is_empty() || contacts.len() > MAX_RESEAL_BATCH {
                    return Err(InvalidField {
                        field: "contacts",
                        reason: format!("must hold between 1 and {MAX_RESEAL_BATCH} contacts"),
                    });
                }
                for c in contacts {
                    if c.contact.len() > MAX_CONTACT_LEN || contact_key_id(&c.contact).is_none() {
                        return Err(InvalidField {
                            field: "contact",
                            reason: format!(
                                "must be a sealed contact of at most {MAX_CONTACT_LEN} bytes"
                            ),
                        });
                    }
                }
                Ok(())
            }
        }
    }

    /// Short name for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::UpsertRoom { .. } | Command::UpsertRoomWithWindows { .. } => "upsert_room",
            Command::UpsertListing { .. } => "upsert_listing",
            Command::PlaceOrder { .. } => "place_order",
            Command::CancelOrder { .. } => "cancel_order",
            Command::PayOrder { .. } => "pay_order",
            Command::SetSalesPaused { .. } => "set_sales_paused",
            Command::ResealContacts { .. } => "reseal_contacts",
        }
    }
}

/// A room as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub room: String,
    pub title: String,
    pub home_region: String,
    pub state: RoomState,
    /// The room's live windows, oldest start first (empty: none declared).
    #[serde(default)]
    pub live_windows: Vec<LiveWindow>,
}

/// A listing as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingView {
    pub room: String,
    pub sku: String,
    pub price_cents: u64,
    pub stock_total: u32,
    pub stock_left: u32,
    pub per_buyer_limit: u32,
    pub state: ListingState,
}

/// An order as clients see it. The contact stays encrypted; only the node that
/// holds the key can open it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: u64,
    pub room: String,
    pub sku: String,
    pub buyer: String,
    pub qty: u32,
    pub price_cents: u64,
    pub status: OrderStatus,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Room(RoomView),
    Listing(ListingView),
    /// `replayed` is true when an idempotency key returned an earlier outcome.
    Order {
        order: OrderView,
        replayed: bool,
    },
    SalesPaused {
        paused: bool,
    },
    Rejected {
        code: RejectCode,
        replayed: bool,
    },
    /// A `ResealContacts` applied: `resealed` contacts replaced, `skipped`
    /// left as they were (no such order, or no longer under `from_key`).
    /// Last, so the variants before it keep their postcard index (replies
    /// to forwarded writes carry outcomes).
    Resealed {
        resealed: u32,
        skipped: u32,
    },
}

impl Outcome {
    /// Short label for metrics: the rejection code or "ok".
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Rejected { code, .. } => code.as_str(),
            _ => "ok",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(price_cents: u64, per_buyer_limit: u32) -> Command {
        Command::UpsertListing {
            room: "r".into(),
            sku: "s".into(),
            price_cents,
            stock_total: 10,
            per_buyer_limit,
            state: ListingState::Open,
        }
    }

    fn room(id: &str) -> Command {
        Command::UpsertRoom {
            room: id.into(),
            title: String::new(),
            home_region: "eu".into(),
            state: RoomState::Live,
        }
    }

    #[test]
    fn prices_are_bounded_so_totals_stay_json_safe() {
        assert!(listing(MAX_PRICE_CENTS, 1).validate().is_ok());
        for bad in [MAX_PRICE_CENTS + 1, MAX_JSON_SAFE_INTEGER + 1, u64::MAX] {
            let e = listing(bad, 1).validate().unwrap_err();
            assert_eq!(e.field, "price_cents");
        }
        // The largest order total a client can be shown is exact in a double.
        let total = MAX_PRICE_CENTS * u64::from(MAX_ORDER_QTY);
        assert_eq!(total as f64 as u64, total);
    }

    #[test]
    fn per_buyer_limit_is_bounded_like_stock() {
        assert!(listing(1, MAX_STOCK).validate().is_ok());
        assert_eq!(
            listing(1, MAX_STOCK + 1).validate().unwrap_err().field,
            "per_buyer_limit"
        );
        assert_eq!(
            listing(1, 0).validate().unwrap_err().field,
            "per_buyer_limit"
        );
    }

    fn windowed(windows: Vec<LiveWindow>) -> Command {
        Command::UpsertRoomWithWindows {
            room: "r".into(),
            title: String::new(),
            home_region: "eu".into(),
            state: RoomState::Live,
            live_windows: windows,
        }
    }

    fn w(start_ms: u64, end_ms: u64, peak: u32) -> LiveWindow {
        LiveWindow {
            start_ms,
            end_ms,
            expected_peak_orders_per_s: peak,
        }
    }

    #[test]
    fn live_windows_are_validated() {
        assert!(windowed(vec![w(1, 2, 900)]).validate().is_ok());
        assert!(windowed(vec![]).validate().is_ok());
        for bad in [
            vec![w(2, 2, 1)],
            vec![w(3, 2, 1)],
            vec![w(0, MAX_LIVE_WINDOW_MS + 1, 1)],
            vec![w(MAX_JSON_SAFE_INTEGER, MAX_JSON_SAFE_INTEGER + 1, 1)],
            vec![w(1, 2, MAX_EXPECTED_PEAK_ORDERS_PER_S + 1)],
            vec![w(1, 2, 1); MAX_LIVE_WINDOWS + 1],
        ] {
            let e = windowed(bad.clone()).validate().unwrap_err();
            assert_eq!(e.field, "live_windows", "{bad:?}");
        }
        // The room's own fields are still checked.
        let mut c = windowed(vec![w(1, 2, 1)]);
        if let Command::UpsertRoomWithWindows { room, .. } = &mut c {
            *room = "..".into();
        }
        assert_eq!(c.validate().unwrap_err().field, "room");
    }

    #[test]
    fn log_entries_written_before_live_windows_still_decode() {
        // Variant indexes are positions: the old variants keep theirs.
        let old = Stamped {
            at_ms: 7,
            command: room("r"),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        assert_eq!(bytes[1], 0, "UpsertRoom stays variant 0");
        assert_eq!(postcard::from_bytes::<Stamped>(&bytes).unwrap(), old);
        let new = Stamped {
            at_ms: 7,
            command: windowed(vec![w(1, 2, 3)]),
        };
        let bytes = postcard::to_allocvec(&new).unwrap();
        assert_eq!(postcard::from_bytes::<Stamped>(&bytes).unwrap(), new);
    }

    #[test]
    fn dot_segments_are_not_ids() {
        for bad in [".", ".."] {
            assert_eq!(room(bad).validate().unwrap_err().field, "room");
        }
        for ok in ["...", ".a", "a.", "a..b"] {
            assert!(room(ok).validate().is_ok(), "{ok} refused");
        }
    }
}
