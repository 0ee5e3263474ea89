//! The in-memory state of one shard and the deterministic `apply`.
//!
//! Layout is chosen for a million orders in little memory: buyers and listings are
//! interned to `u32` indexes, orders live in a `Vec` indexed by their id, and the
//! idempotency table keys on (buyer index, key).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::command::{
    Command, ListingState, ListingView, OrderStatus, OrderView, Outcome, RejectCode, RoomState,
    RoomView, Stamped,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Room {
    title: String,
    home_region: String,
    state: RoomState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Listing {
    room: String,
    sku: String,
    price_cents: u64,
    stock_total: u32,
    stock_left: u32,
    per_buyer_limit: u32,
    state: ListingState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Order {
    listing: u32,
    buyer: u32,
    qty: u32,
    status: OrderStatus,
    price_cents: u64,
    created_at_ms: u64,
    updated_at_ms: u64,
    contact: Box<[u8]>,
}

/// What an idempotency key resolved to the first time it was used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum FirstOutcome {
    Order(u64),
    /// A rejection, with what was asked so a reuse for something else is caught.
    Rejected {
        listing: Option<u32>,
        qty: u32,
        code: RejectCode,
    },
}

/// State of one shard: rooms, listings, orders, per-buyer counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    rooms: HashMap<String, Room>,
    listings: Vec<Listing>,
    #[serde(with = "as_pairs")]
    listing_index: HashMap<(String, String), u32>,
    buyers: Vec<String>,
    buyer_index: HashMap<String, u32>,
    /// Order id N is `orders[N - 1]`.
    orders: Vec<Order>,
    orders_by_buyer: HashMap<u32, Vec<u64>>,
    /// Quantity held by live orders, per (listing, buyer).
    #[serde(with = "as_pairs")]
    held: HashMap<(u32, u32), u32>,
    #[serde(with = "as_pairs")]
    idempotency: HashMap<(u32, Box<str>), FirstOutcome>,
    sales_paused: bool,
    pause_reason: String,
}

/// A broken invariant, described for a human.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invariant violated: {0}")]
pub struct InvariantViolation(pub String);

/// Counts that summarise the state, for metrics and status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSummary {
    pub rooms: u64,
    pub listings: u64,
    pub orders: u64,
    pub live_orders: u64,
    pub buyers: u64,
    pub sales_paused: bool,
    pub pause_reason: String,
}

impl ShardState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one stamped command. Never panics on any input; refusals are outcomes.
    pub fn apply(&mut self, stamped: &Stamped) -> Outcome {
        if stamped.command.validate().is_err() {
            return Outcome::Rejected {
                code: RejectCode::InvalidRequest,
                replayed: false,
            };
        }
        let at = stamped.at_ms;
        match &stamped.command {
            Command::UpsertRoom {
                room,
                title,
                home_region,
                state,
            } => {
                let r = Room {
                    title: title.clone(),
                    home_region: home_region.clone(),
                    state: *state,
                };
                let view = RoomView {
                    room: room.clone(),
                    title: r.title.clone(),
                    home_region: r.home_region.clone(),
                    state: r.state,
                };
                self.rooms.insert(room.clone(), r);
                Outcome::Room(view)
            }
            Command::UpsertListing {
                room,
                sku,
                price_cents,
                stock_total,
                per_buyer_limit,
                state,
            } => self.upsert_listing(
                room,
                sku,
                *price_cents,
                *stock_total,
                *per_buyer_limit,
                *state,
            ),
            Command::PlaceOrder {
                room,
                sku,
                buyer,
                qty,
                idempotency_key,
                contact,
            } => self.place_order(room, sku, buyer, *qty, idempotency_key, contact, at),
            Command::CancelOrder { order_id } => {
                self.transition(*order_id, OrderStatus::Cancelled, at)
            }
            Command::PayOrder { order_id } => self.transition(*order_id, OrderStatus::Paid, at),
            Command::SetSalesPaused { paused, reason } => {
                self.sales_paused = *paused;
                self.pause_reason = if *paused {
                    reason.clone()
                } else {
                    String::new()
                };
                Outcome::SalesPaused { paused: *paused }
            }
        }
    }

    fn upsert_listing(
        &mut self,
        room: &str,
        sku: &str,
        price_cents: u64,
        stock_total: u32,
        per_buyer_limit: u32,
        state: ListingState,
    ) -> Outcome {
        if !self.rooms.contains_key(room) {
            return rejected(RejectCode::RoomNotFound);
        }
        let key = (room.to_string(), sku.to_string());
        match self.listing_index.get(&key) {
            Some(&idx) => {
                let l = &mut self.listings[idx as usize];
                let sold = l.stock_total - l.stock_left;
                if stock_total < sold {
                    return rejected(RejectCode::StockBelowSold);
                }
                l.price_cents = price_cents;
                l.stock_total = stock_total;
                l.stock_left = stock_total - sold;
                l.per_buyer_limit = per_buyer_limit;
                l.state = state;
                Outcome::Listing(listing_view(l))
            }
            None => {
                let l = Listing {
                    room: room.to_string(),
                    sku: sku.to_string(),
                    price_cents,
                    stock_total,
                    stock_left: stock_total,
                    per_buyer_limit,
                    state,
                };
                let view = listing_view(&l);
                let idx = self.listings.len() as u32;
                self.listings.push(l);
                self.listing_index.insert(key, idx);
                Outcome::Listing(view)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn place_order(
        &mut self,
        room: &str,
        sku: &str,
        buyer: &str,
        qty: u32,
        key: &str,
        contact: &[u8],
        at: u64,
    ) -> Outcome {
        let listing_idx = self
            .listing_index
            .get(&(room.to_string(), sku.to_string()))
            .copied();
        let buyer_idx = self.buyer_index.get(buyer).copied();
        if let Some(b) = buyer_idx {
            if let Some(first) = self.idempotency.get(&(b, Box::<str>::from(key))) {
                return self.replay(*first, listing_idx, qty);
            }
        }
        let decision = self.check_order(room, listing_idx, buyer_idx, qty);
        let b = match buyer_idx {
            Some(b) => b,
            None => {
                let b = self.buyers.len() as u32;
                self.buyers.push(buyer.to_string());
                self.buyer_index.insert(buyer.to_string(), b);
                b
            }
        };
        match decision {
            Err(code) => {
                self.idempotency.insert(
                    (b, key.into()),
                    FirstOutcome::Rejected {
                        listing: listing_idx,
                        qty,
                        code,
                    },
                );
                rejected(code)
            }
            Ok(l) => {
                let listing = &mut self.listings[l as usize];
                listing.stock_left -= qty;
                let order = Order {
                    listing: l,
                    buyer: b,
                    qty,
                    status: OrderStatus::Placed,
                    price_cents: listing.price_cents,
                    created_at_ms: at,
                    updated_at_ms: at,
                    contact: contact.into(),
                };
                self.orders.push(order);
                let id = self.orders.len() as u64;
                *self.held.entry((l, b)).or_insert(0) += qty;
                self.orders_by_buyer.entry(b).or_default().push(id);
                self.idempotency
                    .insert((b, key.into()), FirstOutcome::Order(id));
                self.order_outcome(id, false)
            }
        }
    }

    /// Decides a new order; returns the listing index on success.
    fn check_order(
        &self,
        room: &str,
        listing_idx: Option<u32>,
        buyer_idx: Option<u32>,
        qty: u32,
    ) -> Result<u32, RejectCode> {
        if self.sales_paused {
            return Err(RejectCode::SalesPaused);
        }
        let r = self.rooms.get(room).ok_or(RejectCode::RoomNotFound)?;
        let l = listing_idx.ok_or(RejectCode::ListingNotFound)?;
        if r.state != RoomState::Live {
            return Err(RejectCode::RoomNotLive);
        }
        let listing = &self.listings[l as usize];
        if listing.state != ListingState::Open {
            return Err(RejectCode::NotOnSale);
        }
        let held = buyer_idx
            .and_then(|b| self.held.get(&(l, b)).copied())
            .unwrap_or(0);
        if u64::from(held) + u64::from(qty) > u64::from(listing.per_buyer_limit) {
            return Err(RejectCode::LimitExceeded);
        }
        if listing.stock_left < qty {
            return Err(RejectCode::SoldOut);
        }
        Ok(l)
    }

    fn replay(&self, first: FirstOutcome, listing_idx: Option<u32>, qty: u32) -> Outcome {
        match first {
            FirstOutcome::Order(id) => {
                let o = &self.orders[(id - 1) as usize];
                if Some(o.listing) != listing_idx || o.qty != qty {
                    return rejected(RejectCode::IdempotencyKeyReused);
                }
                self.order_outcome(id, true)
            }
            FirstOutcome::Rejected {
                listing,
                qty: first_qty,
                code,
            } => {
                if listing != listing_idx || first_qty != qty {
                    return rejected(RejectCode::IdempotencyKeyReused);
                }
                Outcome::Rejected {
                    code,
                    replayed: true,
                }
            }
        }
    }

    fn transition(&mut self, order_id: u64, to: OrderStatus, at: u64) -> Outcome {
        let Some(idx) = order_index(order_id, self.orders.len()) else {
            return rejected(RejectCode::OrderNotFound);
        };
        let o = &mut self.orders[idx];
        match (o.status, to) {
            // Repeating a transition that already happened is idempotent.
            (OrderStatus::Paid, OrderStatus::Paid)
            | (OrderStatus::Cancelled, OrderStatus::Cancelled) => {}
            (OrderStatus::Placed, OrderStatus::Paid) => {
                o.status = OrderStatus::Paid;
                o.updated_at_ms = at;
            }
            (OrderStatus::Placed, OrderStatus::Cancelled) => {
                o.status = OrderStatus::Cancelled;
                o.updated_at_ms = at;
                let (l, b, qty) = (o.listing, o.buyer, o.qty);
                self.listings[l as usize].stock_left += qty;
                if let Some(h) = self.held.get_mut(&(l, b)) {
                    *h -= qty;
                    if *h == 0 {
                        self.held.remove(&(l, b));
                    }
                }
            }
            _ => return rejected(RejectCode::InvalidTransition),
        }
        self.order_outcome(order_id, false)
    }

    fn order_outcome(&self, order_id: u64, replayed: bool) -> Outcome {
        match self.order_view(order_id) {
            Some(order) => Outcome::Order { order, replayed },
            None => rejected(RejectCode::OrderNotFound),
        }
    }

    pub fn room(&self, room: &str) -> Option<RoomView> {
        self.rooms.get(room).map(|r| RoomView {
            room: room.to_string(),
            title: r.title.clone(),
            home_region: r.home_region.clone(),
            state: r.state,
        })
    }

    pub fn listing(&self, room: &str, sku: &str) -> Option<ListingView> {
        self.listing_index
            .get(&(room.to_string(), sku.to_string()))
            .map(|&i| listing_view(&self.listings[i as usize]))
    }

    pub fn listings_of_room(&self, room: &str) -> Vec<ListingView> {
        self.listings
            .iter()
            .filter(|l| l.room == room)
            .map(listing_view)
            .collect()
    }

    pub fn order_view(&self, order_id: u64) -> Option<OrderView> {
        let o = &self.orders[order_index(order_id, self.orders.len())?];
        let l = &self.listings[o.listing as usize];
        Some(OrderView {
            order_id,
            room: l.room.clone(),
            sku: l.sku.clone(),
            buyer: self.buyers[o.buyer as usize].clone(),
            qty: o.qty,
            price_cents: o.price_cents,
            status: o.status,
            created_at_ms: o.created_at_ms,
            updated_at_ms: o.updated_at_ms,
        })
    }

    /// The encrypted contact of an order, for the node that holds the key.
    pub fn order_contact(&self, order_id: u64) -> Option<&[u8]> {
        order_index(order_id, self.orders.len()).map(|i| &*self.orders[i].contact)
    }

    pub fn orders_of_buyer(&self, buyer: &str) -> Vec<OrderView> {
        let Some(b) = self.buyer_index.get(buyer) else {
            return Vec::new();
        };
        self.orders_by_buyer
            .get(b)
            .map(|ids| ids.iter().filter_map(|&id| self.order_view(id)).collect())
            .unwrap_or_default()
    }

    /// The order an idempotency key produced, if it produced one.
    pub fn order_for_key(&self, buyer: &str, key: &str) -> Option<OrderView> {
        let b = *self.buyer_index.get(buyer)?;
        match self.idempotency.get(&(b, Box::<str>::from(key)))? {
            FirstOutcome::Order(id) => self.order_view(*id),
            FirstOutcome::Rejected { .. } => None,
        }
    }

    pub fn summary(&self) -> StateSummary {
        StateSummary {
            rooms: self.rooms.len() as u64,
            listings: self.listings.len() as u64,
            orders: self.orders.len() as u64,
            live_orders: self.orders.iter().filter(|o| o.status.is_live()).count() as u64,
            buyers: self.buyers.len() as u64,
            sales_paused: self.sales_paused,
            pause_reason: self.pause_reason.clone(),
        }
    }

    /// Number of orders ever accepted (ids run from 1 to this).
    pub fn order_count(&self) -> u64 {
        self.orders.len() as u64
    }

    pub fn sales_paused(&self) -> bool {
        self.sales_paused
    }

    /// Checks every invariant of DESIGN.md that a single state can show:
    /// stock never below zero; stock_total = stock_left + Σ qty of live orders;
    /// per-buyer holdings match live orders and stay within the limit in force when
    /// they were placed; at most one order per (buyer, key).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let mut live_qty = vec![0u64; self.listings.len()];
        let mut held: HashMap<(u32, u32), u32> = HashMap::new();
        for (i, o) in self.orders.iter().enumerate() {
            let l = o.listing as usize;
            if l >= self.listings.len() || o.buyer as usize >= self.buyers.len() {
                return Err(InvariantViolation(format!(
                    "order {} points at a missing listing or buyer",
                    i + 1
                )));
            }
            if o.status.is_live() {
                live_qty[l] += u64::from(o.qty);
                *held.entry((o.listing, o.buyer)).or_insert(0) += o.qty;
            }
        }
        for (i, l) in self.listings.iter().enumerate() {
            if l.stock_left > l.stock_total {
                return Err(InvariantViolation(format!(
                    "listing {}/{}: stock_left {} exceeds stock_total {}",
                    l.room, l.sku, l.stock_left, l.stock_total
                )));
            }
            if u64::from(l.stock_total) != u64::from(l.stock_left) + live_qty[i] {
                return Err(InvariantViolation(format!(
                    "listing {}/{}: stock_total {} != stock_left {} + live qty {}",
                    l.room, l.sku, l.stock_total, l.stock_left, live_qty[i]
                )));
            }
        }
        if held != self.held {
            return Err(InvariantViolation(
                "per-buyer counters disagree with live orders".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for first in self.idempotency.values() {
            if let FirstOutcome::Order(id) = first {
                if !seen.insert(*id) {
                    return Err(InvariantViolation(format!(
                        "order {id} is the outcome of two idempotency keys"
                    )));
                }
            }
        }
        let keyed_orders = seen.len();
        if keyed_orders != self.orders.len() {
            return Err(InvariantViolation(format!(
                "{} orders but {} idempotency keys resolve to an order",
                self.orders.len(),
                keyed_orders
            )));
        }
        Ok(())
    }
}

fn order_index(order_id: u64, len: usize) -> Option<usize> {
    let idx = usize::try_from(order_id.checked_sub(1)?).ok()?;
    (idx < len).then_some(idx)
}

fn rejected(code: RejectCode) -> Outcome {
    Outcome::Rejected {
        code,
        replayed: false,
    }
}

fn listing_view(l: &Listing) -> ListingView {
    ListingView {
        room: l.room.clone(),
        sku: l.sku.clone(),
        price_cents: l.price_cents,
        stock_total: l.stock_total,
        stock_left: l.stock_left,
        per_buyer_limit: l.per_buyer_limit,
        state: l.state,
    }
}

/// Maps with composite keys are written as a list of pairs, so every serde format
/// (JSON included) can carry a snapshot.
mod as_pairs {
    use std::collections::HashMap;
    use std::hash::Hash;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K, V, S>(map: &HashMap<K, V>, s: S) -> Result<S::Ok, S::Error>
    where
        K: Serialize,
        V: Serialize,
        S: Serializer,
    {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<HashMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let pairs: Vec<(K, V)> = Vec::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}
