//! Per-token and per-buyer rate limits of the client API: token buckets
//! (`rate` per second, up to `burst` saved up). Over a limit a request is
//! answered 429 `rate_limited` with `Retry-After`, before it reaches the
//! proposer; counted in `roomkeeper_rate_limited_requests_total{limit}`.
//!
//! Per-token buckets are made once at start (the token table is fixed). The
//! per-buyer table is sharded and capped: when a shard is full, buckets that
//! have refilled (idle buyers, indistinguishable from new ones) are dropped,
//! and if the shard is still full (a flood of new buyer ids) the least
//! recently used half is dropped; ids longer than `MAX_ID_LEN` (refused by
//! the API anyway) are never kept. Memory stays bounded by the cap whatever clients send; an
//! evicted buyer starts again with a full bucket.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `per_sec` tokens a second, at most `burst` saved up. `per_sec`
/// 0 turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub fn off() -> Self {
        Self {
            per_sec: 0.0,
            burst: 0.0,
        }
    }

    pub fn is_off(&self) -> bool {
        self.per_sec <= 0.0
    }

    /// Time after which an untouched bucket is full again.
    fn refill_time(&self) -> Duration {
        Duration::from_secs_f64((self.burst / self.per_sec).max(0.0))
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.per_sec))
        }
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        now.saturating_duration_since(self.at) >= rate.refill_time()
    }
}

/// Limits of one node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Requests per token (every route of the client API).
    pub per_token: Rate,
    /// Orders per buyer id.
    pub per_buyer: Rate,
    /// Most buyers whose buckets are kept at once.
    pub max_tracked_buyers: usize,
}

impl Default for RateLimits {
    /// Per token: 50,000 requests/s (above what one node serves on the bench
    /// machine: a storefront token carries many users). Per buyer: 10
    /// orders/s, 20 at once. 100,000 buyers tracked (≤ 20 MB).
    fn default() -> Self {
        Self {
            per_token: Rate {
                per_sec: 50_000.0,
                burst: 50_000.0,
            },
            per_buyer: Rate {
                per_sec: 10.0,
                burst: 20.0,
            },
            max_tracked_buyers: 100_000,
        }
    }
}

const BUYER_SHARDS: usize = 16;
use roomkeeper_order_state::command::MAX_ID_LEN;

type Shard = Mutex<HashMap<Box<str>, Bucket>>;

/// The node's buckets.
pub struct RateLimiter {
    limits: RateLimits,
    tokens: HashMap<String, Mutex<Bucket>>,
    buyers: Vec<Shard>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl RateLimiter {
    /// Buckets for these token names (made once; unknown names are not limited).
    pub fn new<'a>(limits: RateLimits, token_names: impl IntoIterator<Item = &'a str>) -> Self {
        let now = Instant::now();
        Self {
            limits,
            tokens: token_names
                .into_iter()
                .map(|n| {
                    (
                        n.to_string(),
                        Mutex::new(Bucket::full(limits.per_token, now)),
                    )
                })
                .collect(),
            buyers: (0..BUYER_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }

    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// One request of token `name`: `Err(wait)` when over its limit.
    pub fn check_token(&self, name: &str, now: Instant) -> Result<(), Duration> {
        if self.limits.per_token.is_off() {
            return Ok(());
        }
        match self.tokens.get(name).map(|b| b.lock()) {
            Some(Ok(mut b)) => b.take(self.limits.per_token, now),
            _ => Ok(()),
        }
    }

    /// One order of `buyer`: `Err(wait)` when over its limit.
    pub fn check_buyer(&self, buyer: &str, now: Instant) -> Result<(), Duration> {
        let rate = self.limits.per_buyer;
        // Longer ids are refused as invalid by the API anyway; not keeping
        // them bounds a table entry's size.
        if rate.is_off() || self.limits.max_tracked_buyers == 0 || buyer.len() > MAX_ID_LEN {
            return Ok(());
        }
        let shard = &self.buyers[(self.hasher.hash_one(buyer) as usize) % BUYER_SHARDS];
        let Ok(mut map) = shard.lock() else {
            return Ok(());
        };
        if let Some(b) = map.get_mut(buyer) {
            return b.take(rate, now);
        }
        let cap = self.limits.max_tracked_buyers.div_ceil(BUYER_SHARDS);
        if map.len() >= cap {
            evict(&mut map, rate, now, cap);
        }
        let mut b = Bucket::full(rate, now);
        let r = b.take(rate, now);
        map.insert(buyer.into(), b);
        r
    }

    /// Buyers tracked now (all shards).
    pub fn tracked_buyers(&self) -> usize {
        self.buyers
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// Makes room in a full shard: refilled buckets go first; if that frees
/// less than a quarter, the least recently used half goes too.
fn evict(map: &mut HashMap<Box<str>, Bucket>, rate: Rate, now: Instant, cap: usize) {
    map.retain(|_, b| !b.is_full(rate, now));
    if map.len() > cap - cap / 4 {
        let mut ages: Vec<Instant> = map.values().map(|b| b.at).collect();
        let mid = ages.len() / 2;
        let (_, median, _) = ages.select_nth_unstable(mid);
        let median = *median;
        map.retain(|_, b| b.at > median);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_sec: f64, burst: f64) -> Rate {
        Rate { per_sec, burst }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_says_how_long_to_wait() {
        let r = rate(10.0, 3.0);
        let t0 = Instant::now();
        let mut b = Bucket::full(r, t0);
        for _ in 0..3 {
            assert!(b.take(r, t0).is_ok());
        }
        let wait = b.take(r, t0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // 100 ms later one token is back, not more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(r, t1).is_ok());
        assert!(b.take(r, t1).is_err());
        // Long idle refills to the burst only.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(r, t2).is_ok());
        }
        assert!(b.take(r, t2).is_err());
        assert!(b.is_full(r, t2 + Duration::from_millis(300)));
        assert!(!b.is_full(r, t2 + Duration::from_millis(200)));
    }

    #[test]
    fn tokens_and_buyers_are_limited_separately_and_off_means_off() {
        let limits = RateLimits {
            per_token: rate(1.0, 2.0),
            per_buyer: rate(1.0, 1.0),
            max_tracked_buyers: 1000,
        };
        let l = RateLimiter::new(limits, ["a", "b"]);
        let t = Instant::now();
        assert!(l.check_token("a", t).is_ok());
        assert!(l.check_token("a", t).is_ok());
        assert!(l.check_token("a", t).is_err());
        assert!(l.check_token("b", t).is_ok(), "b has its own bucket");
        assert!(l.check_token("unknown", t).is_ok());
        assert!(l.check_buyer("x", t).is_ok());
        assert!(l.check_buyer("x", t).is_err());
        assert!(l.check_buyer("y", t).is_ok());
        assert!(l.check_buyer("x", t + Duration::from_secs(1)).is_ok());
        let off = RateLimiter::new(
            RateLimits {
                per_token: Rate::off(),
                per_buyer: Rate::off(),
                max_tracked_buyers: 10,
            },
            ["a"],
        );
        for _ in 0..1000 {
            assert!(off.check_token("a", t).is_ok());
            assert!(off.check_buyer("x", t).is_ok());
        }
        assert_eq!(off.tracked_buyers(), 0);
    }

    #[test]
    fn a_flood_of_new_buyer_ids_keeps_the_table_under_its_cap() {
        let limits = RateLimits {
            per_token: Rate::off(),
            per_buyer: rate(1.0, 5.0),
            max_tracked_buyers: 1600,
        };
        let l = RateLimiter::new(limits, []);
        let t = Instant::now();
        // A buyer who is over the limit stays limited while the flood runs
        // as long as it keeps ordering (recently used buckets survive).
        for _ in 0..5 {
            assert!(l.check_buyer("victim-of-own-spam", t).is_ok());
        }
        for i in 0..200_000u32 {
            let now = t + Duration::from_micros(u64::from(i));
            assert!(l.check_buyer(&format!("bot-{i}"), now).is_ok());
            if i % 100 == 0 {
                assert!(l.check_buyer("victim-of-own-spam", now).is_err());
            }
            assert!(l.tracked_buyers() <= 1600, "{} tracked", l.tracked_buyers());
        }
        assert!(l.tracked_buyers() >= 400, "eviction dropped too much");
    }
}
