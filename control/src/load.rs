//! A flash-sale load for the demo and drills: buyers ordering in a live room,
//! routed to regions by traffic weight (the playbook sets a lost region's weight
//! to 0). Each order keeps its idempotency key across retries, so an ambiguous
//! answer is retried safely.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::http::{JsonClient, JsonReply};

/// Where buyers send orders: client API addresses per region, and weights.
#[derive(Debug, Default)]
pub struct TrafficMap {
    pub endpoints: RwLock<BTreeMap<String, Vec<String>>>,
    pub weights: RwLock<BTreeMap<String, u32>>,
    /// Endpoints that failed at the transport level, skipped until the instant given
    /// (what a real client's connection pool does).
    down_until: Mutex<BTreeMap<String, Instant>>,
    /// Sales paused by the control plane: buyers wait instead of ordering.
    paused: AtomicBool,
}

impl TrafficMap {
    pub fn set_endpoints(&self, region: &str, addrs: Vec<String>) {
        if let Ok(mut e) = self.endpoints.write() {
            e.insert(region.to_string(), addrs);
        }
    }

    pub fn set_weight(&self, region: &str, weight: u32) {
        if let Ok(mut w) = self.weights.write() {
            w.insert(region.to_string(), weight);
        }
    }

    pub fn weights(&self) -> BTreeMap<String, u32> {
        self.weights.read().map(|w| w.clone()).unwrap_or_default()
    }

    /// Pauses or resumes the storefront (playbook T4 protect).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Skips `addr` for a while after a transport failure.
    pub fn mark_down(&self, addr: &str) {
        if let Ok(mut d) = self.down_until.lock() {
            d.insert(addr.to_string(), Instant::now() + Duration::from_secs(1));
        }
    }

    fn is_down(&self, addr: &str) -> bool {
        self.down_until
            .lock()
            .map(|d| d.get(addr).map(|t| Instant::now() < *t).unwrap_or(false))
            .unwrap_or(false)
    }

    /// Picks a healthy endpoint by weight, trying a few spreads before giving
    /// up and returning any endpoint.
    pub fn pick(&self, n: u64) -> Option<String> {
        let mut fallback = None;
        for k in 0..8u64 {
            let addr = self.pick_weighted(n.wrapping_add(k.wrapping_mul(7)))?;
            if !self.is_down(&addr) {
                return Some(addr);
            }
            fallback.get_or_insert(addr);
        }
        fallback
    }

    fn pick_weighted(&self, n: u64) -> Option<String> {
        let w = self.weights.read().ok()?;
        let e = self.endpoints.read().ok()?;
        let total: u64 = e.keys().map(|r| u64::from(*w.get(r).unwrap_or(&100))).sum();
        if total == 0 {
            return None;
        }
        let mut x = n % total;
        for (region, addrs) in e.iter() {
            let weight = u64::from(*w.get(region).unwrap_or(&100));
            if x < weight && !addrs.is_empty() {
                return Some(addrs[(n as usize / 7) % addrs.len()].clone());
            }
            x = x.saturating_sub(weight);
        }
        None
    }
}

/// Live counters of the load.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
    recent: Mutex<VecDeque<(Instant, u32)>>,
    last_ok: Mutex<Option<Instant>>,
    longest_gap_ms: AtomicU64,
    /// Every acknowledged order: (order id, buyer, quantity), checked after the run.
    acknowledged: Mutex<Vec<(u64, String, u64)>>,
    /// The client-side view of each node's order latency and error rate.
    pub endpoints: EndpointStats,
}

/// Per endpoint: recent (when, latency µs, served) of requests sent there —
/// what buyers feel of each node. The demo's load and the drill's recorded
/// load both feed it; the control loop reads it as [`EndpointSignal`]s.
#[derive(Debug, Default)]
pub struct EndpointStats {
    per_endpoint: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

/// One request as its client saw it: when, latency in µs, and whether it was served.
type Sample = (Instant, u32, bool);

/// Order latency and error rate one endpoint showed its clients recently.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EndpointSignal {
    pub p99_ms: f64,
    pub error_rate: f64,
    pub requests: usize,
    /// Orders the endpoint served per second over the window (what buyers get).
    pub served_per_second: f64,
}

/// A summary for the status view.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    pub ok: u64,
    pub rejected: u64,
    pub errors: u64,
    pub retries: u64,
    pub orders_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub longest_gap_ms: u64,
}

const WINDOW: Duration = Duration::from_secs(3);

/// Whether a request was served, as its client sees it: an answer below 500
/// that is not "overloaded" (a business refusal is served; a timeout, a
/// reset or a 5xx is not).
pub fn served<E>(r: &Result<JsonReply, E>) -> bool {
    matches!(r, Ok(r) if r.status < 500 && r.status != 429)
}

impl EndpointStats {
    /// Records one request sent to `addr`: its latency and whether it was served.
    pub fn record(&self, addr: &str, latency: Duration, served: bool) {
        let now = Instant::now();
        if let Ok(mut m) = self.per_endpoint.lock() {
            let q = m.entry(addr.to_string()).or_default();
            q.push_back((
                now,
                latency.as_micros().min(u128::from(u32::MAX)) as u32,
                served,
            ));
            while q
                .front()
                .map(|(t, _, _)| now.duration_since(*t) > WINDOW)
                .unwrap_or(false)
            {
                q.pop_front();
            }
        }
    }

    /// Client-side latency and error rate per endpoint over the last few seconds.
    pub fn endpoint_signals(&self) -> BTreeMap<String, EndpointSignal> {
        let now = Instant::now();
        let Ok(m) = self.per_endpoint.lock() else {
            return BTreeMap::new();
        };
        m.iter()
            .filter_map(|(addr, q)| {
                let recent: Vec<&Sample> = q
                    .iter()
                    .filter(|(t, _, _)| now.duration_since(*t) <= WINDOW)
                    .collect();
                if recent.is_empty() {
                    return None;
                }
                let mut lat: Vec<u32> = recent.iter().filter(|r| r.2).map(|r| r.1).collect();
                lat.sort_unstable();
                let p99 = if lat.is_empty() {
                    0.0
                } else {
                    let i = ((lat.len() as f64 - 1.0) * 0.99).round() as usize;
                    f64::from(lat[i.min(lat.len() - 1)]) / 1000.0
                };
                let errors = recent.iter().filter(|r| !r.2).count();
                Some((
                    addr.clone(),
                    EndpointSignal {
                        p99_ms: p99,
                        error_rate: errors as f64 / recent.len() as f64,
                        requests: recent.len(),
                        served_per_second: (recent.len() - errors) as f64 / WINDOW.as_secs_f64(),
                    },
                ))
            })
            .collect()
    }
}

impl LoadStats {
    /// Client-side latency and error rate per endpoint over the last few seconds.
    pub fn endpoint_signals(&self) -> BTreeMap<String, EndpointSignal> {
        self.endpoints.endpoint_signals()
    }

    /// Every order the store acknowledged during the run.
    pub fn acknowledged(&self) -> Vec<(u64, String, u64)> {
        self.acknowledged
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    fn record_ok(&self, latency: Duration) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if let Ok(mut last) = self.last_ok.lock() {
            if let Some(prev) = *last {
                let gap = now.duration_since(prev).as_millis() as u64;
                self.longest_gap_ms.fetch_max(gap, Ordering::Relaxed);
            }
            *last = Some(now);
        }
        if let Ok(mut r) = self.recent.lock() {
            r.push_back((now, latency.as_micros().min(u128::from(u32::MAX)) as u32));
            while r
                .front()
                .map(|(t, _)| now.duration_since(*t) > WINDOW)
                .unwrap_or(false)
            {
                r.pop_front();
            }
        }
    }

    /// Orders/s and latency percentiles over the last few seconds.
    pub fn summary(&self) -> LoadSummary {
        let now = Instant::now();
        let mut lat: Vec<u32> = match self.recent.lock() {
            Ok(r) => r
                .iter()
                .filter(|(t, _)| now.duration_since(*t) <= WINDOW)
                .map(|(_, l)| *l)
                .collect(),
            Err(_) => Vec::new(),
        };
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            f64::from(lat[i]) / 1000.0
        };
        LoadSummary {
            ok: self.ok.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            orders_per_sec: lat.len() as f64 / WINDOW.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            longest_gap_ms: self.longest_gap_ms.load(Ordering::Relaxed),
        }
    }
}

/// The flash sale to run.
#[derive(Debug, Clone)]
pub struct FlashSale {
    pub room: String,
    pub skus: Vec<String>,
    pub buyers: usize,
    pub think_time: Duration,
    pub client_token: String,
}

/// Runs buyers until `stop` is set, over `http` (plain or TLS, as the
/// nodes' APIs speak).
pub fn start_buyers(
    sale: FlashSale,
    http: JsonClient,
    traffic: Arc<TrafficMap>,
    stats: Arc<LoadStats>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..sale.buyers)
        .map(|b| {
            let (sale, traffic, stats, stop, http) = (
                sale.clone(),
                traffic.clone(),
                stats.clone(),
                stop.clone(),
                http.clone(),
            );
            tokio::spawn(async move {
                let mut n: u64 = b as u64 * 7919;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if traffic.is_paused() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    seq += 1;
                    let sku = &sale.skus[(seq as usize + b) % sale.skus.len()];
                    let body = json!({
                        "sku": sku,
                        "buyer": format!("viewer-{b}-{}", seq % 50),
                        "qty": 1,
                        "idempotency_key": format!("k-{b}-{seq}"),
                        "contact": format!("+1-555-{b:04}"),
                    });
                    let started = Instant::now();
                    let deadline = started + Duration::from_secs(10);
                    loop {
                        n = n.wrapping_add(1);
                        let Some(addr) = traffic.pick(n) else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let path = format!("/v1/rooms/{}/orders", sale.room);
                        let sent = Instant::now();
                        let r = http
                            .post(
                                &addr,
                                &path,
                                &body,
                                Some(&sale.client_token),
                                Duration::from_secs(3),
                            )
                            .await;
                        stats.endpoints.record(&addr, sent.elapsed(), served(&r));
                        match r {
                            Ok(r) if r.status == 201 || r.status == 200 => {
                                stats.record_ok(started.elapsed());
                                if let (Some(id), Ok(mut acked)) =
                                    (r.body["order_id"].as_u64(), stats.acknowledged.lock())
                                {
                                    let buyer = body["buyer"].as_str().unwrap_or("").to_string();
                                    acked.push((id, buyer, 1));
                                }
                                break;
                            }
                            Ok(r) if (400..500).contains(&r.status) && r.status != 429 => {
                                stats.rejected.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            other => {
                                if other.is_err() {
                                    traffic.mark_down(&addr);
                                }
                                if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                                    stats.errors.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                stats.retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    if !sale.think_time.is_zero() {
                        tokio::time::sleep(sale.think_time).await;
                    }
                }
            })
        })
        .collect()
}
