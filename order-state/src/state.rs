//! The in-memory state of one shard and the deterministic `apply`.
//!
//! Layout is chosen for a million orders in little memory: buyers and listings are
//! interned to `u32` indexes, orders live in fixed-size chunks indexed by their
//! id and carry their own idempotency key, and the idempotency index holds only
//! order indexes (docs/decisions.md D54).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use crate::chunked::Chunked;
use crate::command::{
    contact_key_id, Command, ListingState, ListingView, LiveWindow, OrderStatus, OrderView,
    Outcome, RejectCode, ResealedContact, RoomState, RoomView, Stamped,
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
    /// The same buyer's previous order (0: none): a list through the orders,
    /// so listing a buyer's orders needs no per-buyer vector.
    prev_of_buyer: u64,
    /// The idempotency key the order was placed with. Snapshots carry it in
    /// their idempotency list, as they always did, not in the order.
    #[serde(skip)]
    key: Box<str>,
}

/// An interned buyer: the name is shared with the lookup index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Buyer {
    name: Arc<str>,
    /// The buyer's latest order (0: none).
    last_order: u64,
}

/// What an idempotency key resolved to the first time it was used. Only
/// accepted orders are recorded now; `Rejected` entries are still read from
/// states written before refused orders stopped leaving records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstOutcome {
    Order(u64),
    /// A rejection, with what was asked so a reuse for something else is caught.
    Rejected {
        listing: Option<u32>,
        qty: u32,
        code: RejectCode,
    },
}

/// A `FirstOutcome` in eight bytes, as snapshots write it.
/// Bit 63 clear: an order id. Bit 63 set: a rejection, with bit 62 "has a
/// listing", bits 24..56 the listing, bits 8..24 the quantity, bits 0..8 the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PackedOutcome(u64);

const REJECTED_BIT: u64 = 1 << 63;
const HAS_LISTING_BIT: u64 = 1 << 62;

impl PackedOutcome {
    fn pack(o: FirstOutcome) -> Self {
        match o {
            FirstOutcome::Order(id) => PackedOutcome(id & !REJECTED_BIT),
            FirstOutcome::Rejected { listing, qty, code } => {
                let code = RejectCode::ALL.iter().position(|c| *c == code).unwrap_or(0) as u64;
                let mut v = REJECTED_BIT | code | (u64::from(qty.min(0xFFFF)) << 8);
                if let Some(l) = listing {
                    v |= HAS_LISTING_BIT | (u64::from(l) << 24);
                }
                PackedOutcome(v)
            }
        }
    }

    fn unpack(self) -> FirstOutcome {
        let v = self.0;
        if v & REJECTED_BIT == 0 {
            return FirstOutcome::Order(v);
        }
        let code = RejectCode::ALL
            .get((v & 0xFF) as usize)
            .copied()
            .unwrap_or(RejectCode::InvalidRequest);
        FirstOutcome::Rejected {
            listing: (v & HAS_LISTING_BIT != 0).then_some(((v >> 24) & 0xFFFF_FFFF) as u32),
            qty: ((v >> 8) & 0xFFFF) as u32,
            code,
        }
    }
}

/// State of one shard: rooms, listings, orders, per-buyer counters.
///
/// Serialized (snapshots) without its lookup indexes, which are rebuilt on load
/// so that buyer names stay shared between the buyer table and its index. The
/// serialized form is [`PersistedShard`]'s: written by hand below, because its
/// idempotency list is gathered from the orders.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "PersistedShard")]
pub struct ShardState {
    rooms: HashMap<String, Room>,
    listings: Vec<Listing>,
    listing_index: HashMap<(String, String), u32>,
    buyers: Vec<Buyer>,
    /// Order id N is `orders[N - 1]`.
    orders: Chunked<Order>,
    /// Quantity held by live orders, per (listing, buyer).
    held: HashMap<(u32, u32), u32>,
    /// Refusals that states written by older versions recorded under their
    /// idempotency keys (refused orders no longer leave any). Accepted orders'
    /// keys live in the orders, found through `key_index`.
    legacy_keys: HashMap<(u32, Box<str>), PackedOutcome>,
    sales_paused: bool,
    pause_reason: String,
    /// Live windows by room (rooms without any are absent). Last, and new in
    /// snapshot format 2: format-1 snapshots decode through [`ShardStateV1`].
    live_windows: HashMap<String, Vec<LiveWindow>>,
    buyer_index: HashMap<Arc<str>, u32>,
    /// `listing_index` by room, then sku: looked up with borrowed names (the
    /// tuple key would need two owned strings per order).
    listing_lookup: HashMap<String, HashMap<String, u32>>,
    /// Every order's index, found by its (buyer, idempotency key).
    key_index: KeyIndex,
}

/// The idempotency index: four bytes per order (its index in `orders`), hashed
/// by the (buyer, key) stored in the order itself. A map keyed by owned
/// (buyer, key) pairs took 33 bytes per order besides the key (D54).
#[derive(Clone, Debug, Default)]
struct KeyIndex {
    table: HashTable<u32>,
    hasher: RandomState,
}

impl KeyIndex {
    fn hash(&self, buyer: u32, key: &str) -> u64 {
        self.hasher.hash_one((buyer, key))
    }

    /// The index in `orders` of the order placed by `buyer` under `key`.
    fn find(&self, orders: &Chunked<Order>, buyer: u32, key: &str) -> Option<usize> {
        self.table
            .find(self.hash(buyer, key), |&i| {
                let o = &orders[i as usize];
                o.buyer == buyer && &*o.key == key
            })
            .map(|&i| i as usize)
    }

    /// Indexes `orders[index]`; the caller has checked that its key is new.
    fn insert(&mut self, orders: &Chunked<Order>, index: u32) {
        let o = &orders[index as usize];
        let hash = self.hash(o.buyer, &o.key);
        let hasher = &self.hasher;
        self.table.insert_unique(hash, index, |&i| {
            let o = &orders[i as usize];
            hasher.hash_one((o.buyer, &*o.key))
        });
    }

    fn rebuild(orders: &Chunked<Order>) -> Self {
        let mut index = KeyIndex::default();
        index.table.reserve(orders.len(), |_| 0);
        for i in 0..orders.len() {
            index.insert(orders, i as u32);
        }
        index
    }
}

/// Most orders one shard holds: the idempotency index stores order indexes
/// as `u32`. Orders past it are refused (`invalid_request`) rather than
/// indexed wrongly; at ~200 bytes per order the shard would need 800 GiB of
/// memory first.
const MAX_ORDERS: usize = u32::MAX as usize;

impl PartialEq for ShardState {
    /// Equal when everything a snapshot carries is: the lookup indexes are
    /// rebuilt from it.
    fn eq(&self, other: &Self) -> bool {
        self.rooms == other.rooms
            && self.listings == other.listings
            && self.listing_index == other.listing_index
            && self.buyers == other.buyers
            && self.orders == other.orders
            && self.held == other.held
            && self.legacy_keys == other.legacy_keys
            && self.sales_paused == other.sales_paused
            && self.pause_reason == other.pause_reason
            && self.live_windows == other.live_windows
    }
}

impl Eq for ShardState {}

impl Serialize for ShardState {
    /// [`PersistedShard`]'s layout, field for field: the idempotency list is
    /// every order's (buyer, key) with its id, then the legacy refusals.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ShardState", 10)?;
        st.serialize_field("rooms", &self.rooms)?;
        st.serialize_field("listings", &self.listings)?;
        st.serialize_field("listing_index", &Pairs(&self.listing_index))?;
        st.serialize_field("buyers", &self.buyers)?;
        st.serialize_field("orders", &self.orders)?;
        st.serialize_field("held", &Pairs(&self.held))?;
        st.serialize_field("idempotency", &IdempotencyList(self))?;
        st.serialize_field("sales_paused", &self.sales_paused)?;
        st.serialize_field("pause_reason", &self.pause_reason)?;
        st.serialize_field("live_windows", &Pairs(&self.live_windows))?;
        st.end()
    }
}

/// A map written as a list of pairs (see [`as_pairs`]).
struct Pairs<'a, K, V>(&'a HashMap<K, V>);

impl<K: Serialize, V: Serialize> Serialize for Pairs<'_, K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// The idempotency table as snapshots have always written it: a list of
/// ((buyer, key), first outcome), in order id order.
struct IdempotencyList<'a>(&'a ShardState);

impl Serialize for IdempotencyList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let state = self.0;
        let orders = state.orders.iter().enumerate().map(|(i, o)| {
            let first = PackedOutcome::pack(FirstOutcome::Order(i as u64 + 1));
            ((o.buyer, &*o.key), first)
        });
        let legacy = state
            .legacy_keys
            .iter()
            .map(|((b, k), first)| ((*b, &**k), *first));
        let mut seq = s.serialize_seq(Some(state.orders.len() + state.legacy_keys.len()))?;
        for entry in orders.chain(legacy) {
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

/// What applying a command did, before the answer is built (followers build none).
enum Effect {
    /// An order was placed, replayed or moved on: the answer is its view.
    Order {
        id: u64,
        replayed: bool,
    },
    Outcome(Outcome),
}

/// The serialized form of `ShardState`: the same fields in the same order,
/// without the lookup indexes.
#[derive(Deserialize)]
struct PersistedShard {
    rooms: HashMap<String, Room>,
    listings: Vec<Listing>,
    #[serde(with = "as_pairs")]
    listing_index: HashMap<(String, String), u32>,
    buyers: Vec<Buyer>,
    orders: Chunked<Order>,
    #[serde(with = "as_pairs")]
    held: HashMap<(u32, u32), u32>,
    /// Read as the list it is: a map of a million owned keys would be built
    /// only to be taken apart.
    idempotency: Vec<((u32, Box<str>), PackedOutcome)>,
    sales_paused: bool,
    pause_reason: String,
    #[serde(with = "as_pairs")]
    live_windows: HashMap<String, Vec<LiveWindow>>,
}

/// The serialized form of a state written before rooms had live windows
/// (snapshot format 1): `PersistedShard` without `live_windows`.
#[derive(Deserialize)]
struct PersistedShardV1 {
    rooms: HashMap<String, Room>,
    listings: Vec<Listing>,
    #[serde(with = "as_pairs")]
    listing_index: HashMap<(String, String), u32>,
    buyers: Vec<Buyer>,
    orders: Chunked<Order>,
    #[serde(with = "as_pairs")]
    held: HashMap<(u32, u32), u32>,
    idempotency: Vec<((u32, Box<str>), PackedOutcome)>,
    sales_paused: bool,
    pause_reason: String,
}

/// A [`ShardState`] decoded from the format written before live windows
/// existed (postcard is not self-describing, so a missing trailing field
/// cannot default). Its rooms have no live windows.
#[derive(Deserialize)]
#[serde(from = "PersistedShardV1")]
pub struct ShardStateV1(pub ShardState);

impl From<PersistedShardV1> for ShardStateV1 {
    fn from(p: PersistedShardV1) -> Self {
        ShardStateV1(ShardState::from(PersistedShard {
            rooms: p.rooms,
            listings: p.listings,
            listing_index: p.listing_index,
            buyers: p.buyers,
            orders: p.orders,
            held: p.held,
            idempotency: p.idempotency,
            sales_paused: p.sales_paused,
            pause_reason: p.pause_reason,
            live_windows: HashMap::new(),
        }))
    }
}

/// One live window with the room it belongs to (the node's `/status` summary).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveWindowOfRoom {
    pub room: String,
    pub home_region: String,
    #[serde(flatten)]
    pub window: LiveWindow,
}

impl From<PersistedShard> for ShardState {
    fn from(p: PersistedShard) -> Self {
        let mut orders = p.orders;
        let buyers = exact(p.buyers);
        // Each accepted order's key moves into the order; anything else (old
        // refusals, and what a damaged state might hold: a key for a missing
        // order, a second key for one) stays in the legacy map, where
        // `check_invariants` reports the damage.
        let mut legacy_keys = HashMap::new();
        let mut keyed = vec![false; orders.len()];
        for ((b, key), first) in p.idempotency {
            if let FirstOutcome::Order(id) = first.unpack() {
                if let Some(i) = order_index(id, orders.len()) {
                    if !keyed[i] && orders[i].buyer == b {
                        keyed[i] = true;
                        orders[i].key = key;
                        continue;
                    }
                }
            }
            legacy_keys.insert((b, key), first);
        }
        let mut s = ShardState {
            rooms: p.rooms,
            listings: p.listings,
            listing_index: p.listing_index,
            buyers,
            orders,
            held: p.held,
            legacy_keys,
            sales_paused: p.sales_paused,
            pause_reason: p.pause_reason,
            live_windows: p.live_windows,
            buyer_index: HashMap::new(),
            listing_lookup: HashMap::new(),
            key_index: KeyIndex::default(),
        };
        s.rebuild_indexes();
        s
    }
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
    /// Entries of the idempotency table (one per accepted order).
    #[serde(default)]
    pub idempotency_keys: u64,
    pub sales_paused: bool,
    pub pause_reason: String,
}

impl ShardState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one stamped command. Never panics on any input; refusals are outcomes.
    pub fn apply(&mut self, stamped: &Stamped) -> Outcome {
        self.apply_command(stamped.at_ms, &stamped.command)
    }

    /// `apply` for a command stamped `at_ms`, without building a `Stamped` (no copy
    /// of the command).
    pub fn apply_command(&mut self, at_ms: u64, command: &Command) -> Outcome {
        match self.apply_effect(at_ms, command) {
            Effect::Order { id, replayed } => self.order_outcome(id, replayed),
            Effect::Outcome(o) => o,
        }
    }

    /// Applies a command nobody waits for (a follower, or a replay of the log):
    /// the same change of state as `apply_command`, without building the answer.
    /// Returns the outcome's metrics label (`ok`, `replayed` or a refusal code).
    pub fn apply_unanswered(&mut self, at_ms: u64, command: &Command) -> &'static str {
        match self.apply_effect(at_ms, command) {
            Effect::Order { replayed: true, .. } => "replayed",
            Effect::Order { .. } => "ok",
            Effect::Outcome(o) => o.label(),
        }
    }

    /// The refusal an order would get if it were applied to this state now, for
    /// the cheap check before any Raft work (`None`: it might be accepted, or it
    /// reuses an idempotency key and must be answered by the log). Only
    /// `SoldOut` and `LimitExceeded` are reported: the refusals of a busy sale.
    /// For an order that passed `Command::validate` (invalid ones are not judged).
    pub fn order_refusal(
        &self,
        room: &str,
        sku: &str,
        buyer: &str,
        qty: u32,
        key: &str,
    ) -> Option<RejectCode> {
        if qty == 0 {
            return None;
        }
        let listing_idx = self.listing_idx(room, sku);
        let buyer_idx = self.buyer_index.get(buyer).copied();
        if let Some(b) = buyer_idx {
            if self.first_outcome(b, key).is_some() {
                return None;
            }
        }
        match self.check_order(room, listing_idx, buyer_idx, qty) {
            Err(code @ (RejectCode::SoldOut | RejectCode::LimitExceeded)) => Some(code),
            _ => None,
        }
    }

    fn listing_idx(&self, room: &str, sku: &str) -> Option<u32> {
        self.listing_lookup.get(room)?.get(sku).copied()
    }

    fn apply_effect(&mut self, at: u64, command: &Command) -> Effect {
        if command.validate().is_err() {
            return Effect::Outcome(Outcome::Rejected {
                code: RejectCode::InvalidRequest,
                replayed: false,
            });
        }
        Effect::Outcome(match command {
            Command::UpsertRoom {
                room,
                title,
                home_region,
                state,
            } => self.upsert_room(room, title, home_region, *state, None),
            Command::UpsertRoomWithWindows {
                room,
                title,
                home_region,
                state,
                live_windows,
            } => self.upsert_room(room, title, home_region, *state, Some(live_windows)),
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
            } => return self.place_order(room, sku, buyer, *qty, idempotency_key, contact, at),
            Command::CancelOrder { order_id } => {
                return self.transition(*order_id, OrderStatus::Cancelled, at)
            }
            Command::PayOrder { order_id } => {
                return self.transition(*order_id, OrderStatus::Paid, at)
            }
            Command::SetSalesPaused { paused, reason } => {
                self.sales_paused = *paused;
                self.pause_reason = if *paused {
                    reason.clone()
                } else {
                    String::new()
                };
                Outcome::SalesPaused { paused: *paused }
            }
            Command::ResealContacts { contacts } => self.reseal_contacts(contacts),
        })
    }

    fn reseal_contacts(&mut self, contacts: &[ResealedContact]) -> Outcome {
        let (mut resealed, mut skipped) = (0u32, 0u32);
        for c in contacts {
            let slot = order_index(c.order_id, self.orders.len())
                .map(|i| &mut self.orders[i].contact)
                .filter(|old| contact_key_id(old) == Some(c.from_key));
            match slot {
                Some(old) => {
                    *old = c.contact.as_slice().into();
                    resealed += 1;
                }
                None => skipped += 1,
            }
        }
        Outcome::Resealed { resealed, skipped }
    }

    /// How many stored contacts are sealed under each key id (orders placed
    /// without contact data are not counted).
    pub fn contact_key_counts(&self) -> std::collections::BTreeMap<u8, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for o in self.orders.iter() {
            if let Some(id) = contact_key_id(&o.contact) {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Up to `limit` contacts sealed under a key other than `keep`, from order
    /// ids above `after`, in id order: `(order id, sealed contact)`.
    pub fn contacts_not_under(&self, keep: u8, after: u64, limit: usize) -> Vec<(u64, Vec<u8>)> {
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        self.orders
            .iter()
            .enumerate()
            .skip(start)
            .filter(|(_, o)| contact_key_id(&o.contact).is_some_and(|id| id != keep))
            .take(limit)
            .map(|(i, o)| (i as u64 + 1, o.contact.to_vec()))
            .collect()
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
                self.listing_lookup
                    .entry(room.to_string())
                    .or_default()
                    .insert(sku.to_string(), idx);
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
    ) -> Effect {
        let listing_idx = self.listing_idx(room, sku);
        let buyer_idx = self.buyer_index.get(buyer).copied();
        if let Some(b) = buyer_idx {
            if let Some(first) = self.first_outcome(b, key) {
                return self.replay(first, listing_idx, qty);
            }
        }
        if self.orders.len() >= MAX_ORDERS {
            return Effect::Outcome(rejected(RejectCode::InvalidRequest));
        }
        // A refused order leaves no trace: no buyer, no idempotency entry. A
        // retry is decided again against the state of its own turn, which is the
        // same refusal while nothing changed (docs/decisions.md, "Refused orders
        // leave no state").
        let l = match self.check_order(room, listing_idx, buyer_idx, qty) {
            Ok(l) => l,
            Err(code) => return Effect::Outcome(rejected(code)),
        };
        let b = match buyer_idx {
            Some(b) => b,
            None => {
                let b = self.buyers.len() as u32;
                let name: Arc<str> = Arc::from(buyer);
                self.buyers.push(Buyer {
                    name: name.clone(),
                    last_order: 0,
                });
                self.buyer_index.insert(name, b);
                b
            }
        };
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
            prev_of_buyer: self.buyers[b as usize].last_order,
            key: key.into(),
        };
        self.orders.push(order);
        let id = self.orders.len() as u64;
        self.key_index.insert(&self.orders, (id - 1) as u32);
        *self.held.entry((l, b)).or_insert(0) += qty;
        self.buyers[b as usize].last_order = id;
        Effect::Order {
            id,
            replayed: false,
        }
    }

    /// What (buyer, key) resolved to the first time it was used, if it was.
    fn first_outcome(&self, buyer: u32, key: &str) -> Option<FirstOutcome> {
        if let Some(i) = self.key_index.find(&self.orders, buyer, key) {
            return Some(FirstOutcome::Order(i as u64 + 1));
        }
        if self.legacy_keys.is_empty() {
            return None;
        }
        self.legacy_keys
            .get(&(buyer, Box::<str>::from(key)))
            .map(|first| first.unpack())
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

    fn replay(&self, first: FirstOutcome, listing_idx: Option<u32>, qty: u32) -> Effect {
        match first {
            FirstOutcome::Order(id) => {
                let o = &self.orders[(id - 1) as usize];
                if Some(o.listing) != listing_idx || o.qty != qty {
                    return Effect::Outcome(rejected(RejectCode::IdempotencyKeyReused));
                }
                Effect::Order { id, replayed: true }
            }
            FirstOutcome::Rejected {
                listing,
                qty: first_qty,
                code,
            } => {
                if listing != listing_idx || first_qty != qty {
                    return Effect::Outcome(rejected(RejectCode::IdempotencyKeyReused));
                }
                Effect::Outcome(Outcome::Rejected {
                    code,
                    replayed: true,
                })
            }
        }
    }

    fn transition(&mut self, order_id: u64, to: OrderStatus, at: u64) -> Effect {
        let Some(idx) = order_index(order_id, self.orders.len()) else {
            return Effect::Outcome(rejected(RejectCode::OrderNotFound));
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
            _ => return Effect::Outcome(rejected(RejectCode::InvalidTransition)),
        }
        Effect::Order {
            id: order_id,
            replayed: false,
        }
    }

    fn order_outcome(&self, order_id: u64, replayed: bool) -> Outcome {
        match self.order_view(order_id) {
            Some(order) => Outcome::Order { order, replayed },
            None => rejected(RejectCode::OrderNotFound),
        }
    }

    /// Inserts or replaces a room; `windows` replaces its live windows
    /// (`None`: keep them).
    fn upsert_room(
        &mut self,
        room: &str,
        title: &str,
        home_region: &str,
        state: RoomState,
        windows: Option<&Vec<LiveWindow>>,
    ) -> Outcome {
        self.rooms.insert(
            room.to_string(),
            Room {
                title: title.to_string(),
                home_region: home_region.to_string(),
                state,
            },
        );
        if let Some(w) = windows {
            let mut w = w.clone();
            w.sort_by_key(|w| (w.start_ms, w.end_ms));
            if w.is_empty() {
                self.live_windows.remove(room);
            } else {
                self.live_windows.insert(room.to_string(), w);
            }
        }
        match self.room(room) {
            Some(view) => Outcome::Room(view),
            None => rejected(RejectCode::RoomNotFound),
        }
    }

    pub fn room(&self, room: &str) -> Option<RoomView> {
        self.rooms.get(room).map(|r| RoomView {
            room: room.to_string(),
            title: r.title.clone(),
            home_region: r.home_region.clone(),
            state: r.state,
            live_windows: self.live_windows.get(room).cloned().unwrap_or_default(),
        })
    }

    /// Live windows that overlap `[from_ms, to_ms)`, with their rooms and
    /// home regions, ordered by start then room. Windows of ended rooms are
    /// left out: nobody is on air in them.
    pub fn live_windows_between(&self, from_ms: u64, to_ms: u64) -> Vec<LiveWindowOfRoom> {
        let mut out: Vec<LiveWindowOfRoom> = self
            .live_windows
            .iter()
            .filter_map(|(room, ws)| Some((room, ws, self.rooms.get(room)?)))
            .filter(|(_, _, r)| r.state != RoomState::Ended)
            .flat_map(|(room, ws, r)| {
                ws.iter()
                    .filter(|w| w.overlaps(from_ms, to_ms))
                    .map(|w| LiveWindowOfRoom {
                        room: room.clone(),
                        home_region: r.home_region.clone(),
                        window: *w,
                    })
            })
            .collect();
        out.sort_by(|a, b| (a.window.start_ms, &a.room).cmp(&(b.window.start_ms, &b.room)));
        out
    }

    pub fn listing(&self, room: &str, sku: &str) -> Option<ListingView> {
        self.listing_idx(room, sku)
            .map(|i| listing_view(&self.listings[i as usize]))
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
            buyer: self.buyers[o.buyer as usize].name.to_string(),
            qty: o.qty,
            price_cents: o.price_cents,
            status: o.status,
            created_at_ms: o.created_at_ms,
            updated_at_ms: o.updated_at_ms,
        })
    }

    /// The room of an order (for authorization: no allocation).
    pub fn order_room(&self, order_id: u64) -> Option<&str> {
        let o = &self.orders[order_index(order_id, self.orders.len())?];
        Some(&self.listings[o.listing as usize].room)
    }

    /// The encrypted contact of an order, for the node that holds the key.
    pub fn order_contact(&self, order_id: u64) -> Option<&[u8]> {
        order_index(order_id, self.orders.len()).map(|i| &*self.orders[i].contact)
    }

    pub fn orders_of_buyer(&self, buyer: &str) -> Vec<OrderView> {
        let Some(&b) = self.buyer_index.get(buyer) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        let mut next = self.buyers[b as usize].last_order;
        while let Some(i) = order_index(next, self.orders.len()) {
            ids.push(next);
            next = self.orders[i].prev_of_buyer;
        }
        ids.reverse();
        ids.into_iter()
            .filter_map(|id| self.order_view(id))
            .collect()
    }

    /// Rebuilds the lookup indexes that snapshots do not carry.
    fn rebuild_indexes(&mut self) {
        self.buyer_index = self
            .buyers
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.clone(), i as u32))
            .collect();
        self.key_index = KeyIndex::rebuild(&self.orders);
        self.listing_lookup = HashMap::new();
        for ((room, sku), &idx) in &self.listing_index {
            self.listing_lookup
                .entry(room.clone())
                .or_default()
                .insert(sku.clone(), idx);
        }
    }

    /// The order an idempotency key produced, if it produced one.
    pub fn order_for_key(&self, buyer: &str, key: &str) -> Option<OrderView> {
        let b = *self.buyer_index.get(buyer)?;
        match self.first_outcome(b, key)? {
            FirstOutcome::Order(id) => self.order_view(id),
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
            idempotency_keys: (self.orders.len() + self.legacy_keys.len()) as u64,
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
        let mut chained = 0usize;
        for (b, buyer) in self.buyers.iter().enumerate() {
            if self.buyer_index.get(&buyer.name) != Some(&(b as u32)) {
                return Err(InvariantViolation(format!(
                    "buyer {} is missing from the index",
                    buyer.name
                )));
            }
            let mut next = buyer.last_order;
            while let Some(i) = order_index(next, self.orders.len()) {
                if self.orders[i].buyer != b as u32 || self.orders[i].prev_of_buyer >= next {
                    return Err(InvariantViolation(format!(
                        "order {next} is chained to buyer {} but is not theirs",
                        buyer.name
                    )));
                }
                chained += 1;
                next = self.orders[i].prev_of_buyer;
            }
        }
        if chained != self.orders.len() {
            return Err(InvariantViolation(format!(
                "{chained} orders reachable from their buyers, {} exist",
                self.orders.len()
            )));
        }
        // Every order is found by its own (buyer, key), so no two share one.
        for (i, o) in self.orders.iter().enumerate() {
            if o.key.is_empty() {
                return Err(InvariantViolation(format!(
                    "order {} has no idempotency key",
                    i + 1
                )));
            }
            let found = self.key_index.find(&self.orders, o.buyer, &o.key);
            if found != Some(i) {
                return Err(InvariantViolation(format!(
                    "order {} is not the outcome of its idempotency key (found {:?})",
                    i + 1,
                    found.map(|f| f + 1)
                )));
            }
        }
        if self.key_index.table.len() != self.orders.len() {
            return Err(InvariantViolation(format!(
                "{} orders but {} idempotency keys resolve to an order",
                self.orders.len(),
                self.key_index.table.len()
            )));
        }
        for ((b, key), first) in &self.legacy_keys {
            if let FirstOutcome::Order(id) = first.unpack() {
                return Err(InvariantViolation(format!(
                    "order {id} is the outcome of a second idempotency key ({key:?} of buyer {b})"
                )));
            }
        }
        Ok(())
    }
}

/// `v` in a buffer of its own size. serde grows a decoded list from a
/// cautious first guess by doubling, up to 1.6x what the elements take, and
/// `shrink_to_fit` keeps such a buffer under mimalloc (it only shrinks past
/// half); this copies instead, once, when the slack is worth it.
fn exact<T>(v: Vec<T>) -> Vec<T> {
    if v.capacity() <= v.len() + v.len() / 8 {
        return v;
    }
    let mut e = Vec::with_capacity(v.len());
    e.extend(v);
    e
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

/// Maps with composite keys are written as a list of pairs ([`Pairs`]), so every
/// serde format (JSON included) can carry a snapshot; this reads them back.
mod as_pairs {
    use std::collections::HashMap;
    use std::hash::Hash;

    use serde::{Deserialize, Deserializer};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: u8, tag: u8) -> Vec<u8> {
        let mut v = vec![1, key];
        v.extend_from_slice(&[tag; 40]);
        v
    }

    #[test]
    fn reseal_replaces_only_contacts_still_under_the_old_key_and_repeats_change_nothing() {
        let mut s = ShardState::new();
        let at = |command| Stamped { at_ms: 1, command };
        s.apply(&at(Command::UpsertRoom {
            room: "r".into(),
            title: String::new(),
            home_region: "eu".into(),
            state: RoomState::Live,
        }));
        s.apply(&at(Command::UpsertListing {
            room: "r".into(),
            sku: "s".into(),
            price_cents: 1,
            stock_total: 10,
            per_buyer_limit: 10,
            state: ListingState::Open,
        }));
        for (i, contact) in [sealed(1, 1), sealed(1, 2), sealed(2, 3), vec![]]
            .into_iter()
            .enumerate()
        {
            let o = s.apply(&at(Command::PlaceOrder {
                room: "r".into(),
                sku: "s".into(),
                buyer: format!("b{i}"),
                qty: 1,
                idempotency_key: "k".into(),
                contact,
            }));
            assert!(matches!(o, Outcome::Order { .. }), "{o:?}");
        }
        assert_eq!(
            s.contact_key_counts(),
            std::collections::BTreeMap::from([(1, 2), (2, 1)])
        );
        let todo = s.contacts_not_under(2, 0, 10);
        assert_eq!(
            todo.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            s.contacts_not_under(2, 1, 10).len(),
            1,
            "the cursor skips order 1"
        );
        let reseal = Command::ResealContacts {
            contacts: vec![
                ResealedContact {
                    order_id: 1,
                    from_key: 1,
                    contact: sealed(2, 9),
                },
                ResealedContact {
                    order_id: 2,
                    from_key: 1,
                    contact: sealed(2, 8),
                },
                // Not under key 1 (any more): left alone.
                ResealedContact {
                    order_id: 3,
                    from_key: 1,
                    contact: sealed(2, 7),
                },
                ResealedContact {
                    order_id: 99,
                    from_key: 1,
                    contact: sealed(2, 6),
                },
            ],
        };
        assert_eq!(
            s.apply(&at(reseal.clone())),
            Outcome::Resealed {
                resealed: 2,
                skipped: 2
            }
        );
        assert_eq!(s.order_contact(1), Some(&sealed(2, 9)[..]));
        assert_eq!(s.order_contact(3), Some(&sealed(2, 3)[..]));
        assert_eq!(
            s.contact_key_counts(),
            std::collections::BTreeMap::from([(2, 3)])
        );
        // The same entry applied again (a retried batch) changes nothing.
        let before = s.clone();
        assert_eq!(
            s.apply(&at(reseal)),
            Outcome::Resealed {
                resealed: 0,
                skipped: 4
            }
        );
        assert_eq!(s, before);
        s.check_invariants().expect("invariants");
        // Unsealed or empty blobs and oversized batches are refused whole.
        for bad in [
            vec![ResealedContact {
                order_id: 1,
                from_key: 2,
                contact: b"plain".to_vec(),
            }],
            vec![],
            vec![
                ResealedContact {
                    order_id: 1,
                    from_key: 2,
                    contact: sealed(3, 1)
                };
                crate::command::MAX_RESEAL_BATCH + 1
            ],
        ] {
            let o = s.apply(&at(Command::ResealContacts { contacts: bad }));
            assert_eq!(
                o,
                Outcome::Rejected {
                    code: RejectCode::InvalidRequest,
                    replayed: false
                }
            );
        }
        assert_eq!(s, before);
    }

    fn three_orders() -> ShardState {
        let mut s = ShardState::new();
        let at = |command| Stamped { at_ms: 1, command };
        s.apply(&at(Command::UpsertRoom {
            room: "r".into(),
            title: "t".into(),
            home_region: "eu-west".into(),
            state: RoomState::Live,
        }));
        s.apply(&at(Command::UpsertListing {
            room: "r".into(),
            sku: "s".into(),
            price_cents: 100,
            stock_total: 10,
            per_buyer_limit: 10,
            state: ListingState::Open,
        }));
        for (buyer, key) in [("b1", "k1"), ("b2", "k1"), ("b1", "k2")] {
            s.apply(&at(Command::PlaceOrder {
                room: "r".into(),
                sku: "s".into(),
                buyer: buyer.into(),
                qty: 1,
                idempotency_key: key.into(),
                contact: vec![],
            }));
        }
        s
    }

    #[test]
    fn snapshots_keep_the_idempotency_list_they_always_had() {
        // Keys moved from a map into the orders (D54); what a snapshot holds
        // must not change, or a node of the previous version could not read
        // a snapshot this one sends.
        let s = three_orders();
        let bytes = postcard::to_allocvec(&s).expect("encode");
        let persisted: PersistedShard = postcard::from_bytes(&bytes).expect("decode");
        let mut list: Vec<(u32, String, FirstOutcome)> = persisted
            .idempotency
            .into_iter()
            .map(|((b, k), first)| (b, k.to_string(), first.unpack()))
            .collect();
        list.sort_by_key(|(b, k, _)| (*b, k.clone()));
        assert_eq!(
            list,
            vec![
                (0, "k1".to_string(), FirstOutcome::Order(1)),
                (0, "k2".to_string(), FirstOutcome::Order(3)),
                (1, "k1".to_string(), FirstOutcome::Order(2)),
            ]
        );
        assert!(persisted.orders.iter().all(|o| o.key.is_empty()));
        // And it reads back into the same state, keys found again.
        let mut back: ShardState = postcard::from_bytes(&bytes).expect("decode state");
        assert_eq!(back, s);
        back.check_invariants().expect("invariants");
        let replay = back.apply(&Stamped {
            at_ms: 2,
            command: Command::PlaceOrder {
                room: "r".into(),
                sku: "s".into(),
                buyer: "b2".into(),
                qty: 1,
                idempotency_key: "k1".into(),
                contact: vec![],
            },
        });
        assert!(
            matches!(replay, Outcome::Order { ref order, replayed: true } if order.order_id == 2),
            "{replay:?}"
        );
    }

    #[test]
    fn a_snapshot_with_a_lost_or_doubled_key_fails_the_invariants() {
        let s = three_orders();
        let bytes = serde_json::to_vec(&s).expect("encode");
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        // Order 3's key lost: the order has none.
        let mut lost = v.clone();
        lost["idempotency"]
            .as_array_mut()
            .expect("list")
            .retain(|e| e[1] != serde_json::json!(3));
        // Order 1 under a second key of the same buyer.
        v["idempotency"]
            .as_array_mut()
            .expect("list")
            .push(serde_json::json!([[0, "k9"], 1]));
        for (what, damaged) in [("lost", lost), ("doubled", v)] {
            let back: ShardState = serde_json::from_value(damaged).expect("decode");
            assert!(back.check_invariants().is_err(), "{what} key not caught");
        }
    }

    #[test]
    fn rejections_recorded_by_older_versions_still_replay() {
        let mut s = ShardState::new();
        let place = Command::PlaceOrder {
            room: "r".into(),
            sku: "s".into(),
            buyer: "b".into(),
            qty: 1,
            idempotency_key: "k".into(),
            contact: vec![],
        };
        // What a state written before refused orders stopped leaving records holds.
        s.buyers.push(Buyer {
            name: Arc::from("b"),
            last_order: 0,
        });
        s.legacy_keys.insert(
            (0, "k".into()),
            PackedOutcome::pack(FirstOutcome::Rejected {
                listing: None,
                qty: 1,
                code: RejectCode::RoomNotFound,
            }),
        );
        let bytes = serde_json::to_vec(&s).expect("serialize");
        let mut back: ShardState = serde_json::from_slice(&bytes).expect("deserialize");
        assert_eq!(
            back.apply(&Stamped {
                at_ms: 1,
                command: place
            }),
            Outcome::Rejected {
                code: RejectCode::RoomNotFound,
                replayed: true
            }
        );
        back.check_invariants().expect("invariants");
    }

    fn upsert(windows: Option<Vec<LiveWindow>>) -> Command {
        match windows {
            None => Command::UpsertRoom {
                room: "r1".into(),
                title: "t".into(),
                home_region: "ap-south".into(),
                state: RoomState::Live,
            },
            Some(live_windows) => Command::UpsertRoomWithWindows {
                room: "r1".into(),
                title: "t".into(),
                home_region: "ap-south".into(),
                state: RoomState::Live,
                live_windows,
            },
        }
    }

    fn lw(start_ms: u64, end_ms: u64) -> LiveWindow {
        LiveWindow {
            start_ms,
            end_ms,
            expected_peak_orders_per_s: 900,
        }
    }

    #[test]
    fn rooms_keep_their_live_windows_until_replaced() {
        let mut s = ShardState::new();
        let at = |command| Stamped { at_ms: 1, command };
        let Outcome::Room(v) = s.apply(&at(upsert(Some(vec![lw(50, 60), lw(10, 20)])))) else {
            panic!("room not created")
        };
        assert_eq!(
            v.live_windows,
            vec![lw(10, 20), lw(50, 60)],
            "sorted by start"
        );
        // A plain upsert (the old command) keeps them.
        s.apply(&at(upsert(None)));
        assert_eq!(s.room("r1").unwrap().live_windows.len(), 2);
        let between = s.live_windows_between(15, 55);
        assert_eq!(between.len(), 2);
        assert_eq!(between[0].home_region, "ap-south");
        assert!(
            s.live_windows_between(20, 50).is_empty(),
            "end is exclusive"
        );
        // An invalid list changes nothing.
        s.apply(&at(upsert(Some(vec![lw(5, 5)]))));
        assert_eq!(s.room("r1").unwrap().live_windows.len(), 2);
        s.apply(&at(upsert(Some(vec![]))));
        assert!(s.room("r1").unwrap().live_windows.is_empty());
        s.check_invariants().expect("invariants");
    }

    #[test]
    fn states_written_before_live_windows_decode_as_format_1() {
        let mut s = ShardState::new();
        s.apply(&Stamped {
            at_ms: 1,
            command: upsert(None),
        });
        let v2 = postcard::to_allocvec(&s).unwrap();
        // Format 1 is format 2 without the trailing `live_windows` (an empty
        // sequence: one zero byte).
        assert_eq!(v2.last(), Some(&0));
        let v1 = &v2[..v2.len() - 1];
        assert!(postcard::from_bytes::<ShardState>(v1).is_err());
        let ShardStateV1(back) = postcard::from_bytes(v1).unwrap();
        assert_eq!(back, s);
        assert_eq!(postcard::from_bytes::<ShardState>(&v2).unwrap(), s);
    }

    #[test]
    fn packed_outcomes_round_trip() {
        let cases = [
            FirstOutcome::Order(1),
            FirstOutcome::Order((1 << 62) + 5),
            FirstOutcome::Rejected {
                listing: None,
                qty: 1,
                code: RejectCode::SoldOut,
            },
            FirstOutcome::Rejected {
                listing: Some(u32::MAX),
                qty: 10_000,
                code: RejectCode::IdempotencyKeyReused,
            },
            FirstOutcome::Rejected {
                listing: Some(0),
                qty: 0,
                code: RejectCode::RoomNotFound,
            },
        ];
        for c in cases {
            assert_eq!(PackedOutcome::pack(c).unpack(), c);
        }
        for code in RejectCode::ALL {
            let c = FirstOutcome::Rejected {
                listing: Some(7),
                qty: 3,
                code,
            };
            assert_eq!(PackedOutcome::pack(c).unpack(), c);
        }
    }
}
