//! Resident bytes per stored order: the state of one shard filled with the
//! benchmark's flash-sale orders (16 SKUs, a pool of 100,000 buyers, a fresh
//! idempotency key and a sealed-size contact per order), measured as the
//! growth of this process's resident set under the node's allocator, after the
//! orders went in and again after the state was rebuilt from its snapshot
//! encoding (what a restart or an installed snapshot leaves).
//!
//! `cargo run --release -p roomkeeper-order-state --example memory_per_order -- [ORDERS]`
//! (default 1,000,000). Issue 14's goal: at most 256 bytes per order.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

use mimalloc::MiMalloc;
use roomkeeper_order_state::{Command, ListingState, RoomState, ShardState};

/// The node's allocator, counting the bytes it has handed out and not taken
/// back (by usable size: what a block really occupies).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to mimalloc unchanged; the counter only
// reads the usable size of blocks mimalloc handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(unsafe { MiMalloc.usable_size(p) }, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(unsafe { MiMalloc.usable_size(ptr) }, Ordering::Relaxed);
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = unsafe { MiMalloc.usable_size(ptr) };
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(old, Ordering::Relaxed);
            LIVE.fetch_add(unsafe { MiMalloc.usable_size(p) }, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SKUS: u32 = 16;
const BUYER_POOL: u64 = 100_000;
/// A sealed contact's length: version, key id, 24-byte nonce, a 12-byte phone
/// number and the 16-byte tag (order-store/src/contact.rs).
const SEALED_CONTACT_LEN: usize = 54;
const GOAL_BYTES_PER_ORDER: f64 = 256.0;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A deterministic stand-in for the benchmark's random draws.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn main() {
    let orders: u64 = std::env::args()
        .nth(1)
        .map(|a| a.replace('_', "").parse().expect("ORDERS must be a number"))
        .unwrap_or(1_000_000);
    let mut state = ShardState::default();
    let at = 1_700_000_000_000;
    state.apply_command(
        at,
        &Command::UpsertRoom {
            room: "live-1".into(),
            title: "memory".into(),
            home_region: "eu-west".into(),
            state: RoomState::Live,
        },
    );
    for s in 0..SKUS {
        state.apply_command(
            at,
            &Command::UpsertListing {
                room: "live-1".into(),
                sku: format!("sku-{s:02}"),
                price_cents: 1999,
                stock_total: 1_000_000_000,
                per_buyer_limit: 1_000_000,
                state: ListingState::Open,
            },
        );
    }
    let before = resident_bytes();
    let heap_before = LIVE.load(Ordering::Relaxed);
    let mut seed = 0x9E37_79B9_7F4A_7C15;
    let mut contact = vec![1u8; SEALED_CONTACT_LEN];
    for n in 0..orders {
        let r = next(&mut seed);
        contact[2..10].copy_from_slice(&r.to_le_bytes());
        let outcome = state.apply_unanswered(
            at + n / 20,
            &Command::PlaceOrder {
                room: "live-1".into(),
                sku: format!("sku-{:02}", r % u64::from(SKUS)),
                buyer: format!("buyer-{}", (r >> 8) % BUYER_POOL),
                qty: 1,
                idempotency_key: format!("5f3a9c01-{}-{n}", r % 64),
                contact: contact.clone(),
            },
        );
        assert_eq!(outcome, "ok", "order {n} was refused");
    }
    let filled = resident_bytes().saturating_sub(before);
    let heap_filled = LIVE.load(Ordering::Relaxed).saturating_sub(heap_before);
    let encoded = postcard::to_allocvec(&state).expect("encode the state");
    drop(state);
    let restored: ShardState = postcard::from_bytes(&encoded).expect("decode the state");
    drop(encoded);
    let heap_rebuilt = LIVE.load(Ordering::Relaxed).saturating_sub(heap_before);
    assert_eq!(restored.summary().orders, orders);
    let per = |b: u64| b as f64 / orders as f64;
    let heap = |b: usize| {
        let per = per(b as u64);
        format!(
            "heap {per:>4.0} B/order ({:.2}x the goal of {GOAL_BYTES_PER_ORDER} B)",
            per / GOAL_BYTES_PER_ORDER
        )
    };
    println!("orders: {orders}");
    println!(
        "after the orders went in: {}, resident {:.0} B/order",
        heap(heap_filled),
        per(filled)
    );
    // Resident memory after the rebuild still holds what the first copy freed
    // (the allocator keeps it for reuse): only the heap is the new state's.
    println!("rebuilt from a snapshot:  {}", heap(heap_rebuilt));
}
