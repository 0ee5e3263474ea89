//! The drill's load: buyers whose every request is recorded in a
//! [`Recorder`], a linearizability probe (a writer and a reader on small
//! listings, one listing per window), and the final read on the healed
//! cluster.
//!
//! Each order has its own buyer (`b<client>-<seq>`) and idempotency key
//! (`k<client>-<seq>`), so the final read can find every order of a key
//! through `GET /v1/buyers/{buyer}/orders` (the API does not return keys).
//! An ambiguous answer (timeout, reset, 5xx) is retried with the same key.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::http::{HttpError, JsonClient, JsonReply};
use crate::load::{served, EndpointStats, TrafficMap};
use roomkeeper_chaos::history::{FinalOrder, OpKind, OpResult};
use roomkeeper_chaos::recorder::Recorder;
use serde_json::{json, Value};

/// Codes of a definite refusal that is worth retrying (the store did not act).
const RETRYABLE_REFUSALS: [&str; 4] = ["overloaded", "no_leader", "no_quorum", "not_leader"];

/// A retry storm, switched on and off by the injector.
#[derive(Debug, Default)]
pub struct Storm {
    pub active: AtomicBool,
    pub timeout_ms: AtomicU64,
    pub duplicates: AtomicU32,
}

/// What the buyers do.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub room: String,
    pub skus: Vec<String>,
    pub hot_skus: Vec<String>,
    pub probe_skus: Vec<String>,
    pub probe_window: Duration,
    pub clients: u32,
    pub think: Duration,
    pub client_timeout: Duration,
    pub retry_deadline: Duration,
    pub client_token: String,
    pub seed: u64,
    /// Prefix of every buyer and idempotency key of this run. A key belongs
    /// to its buyer across rooms, so two runs against one long-lived cluster
    /// (drills on Kubernetes, schedules) must not share them: the second run
    /// would be answered with the first one's orders.
    pub run_id: String,
}

/// Everything the load tasks share.
#[derive(Clone)]
pub struct Load {
    pub cfg: Arc<LoadConfig>,
    pub rec: Arc<Recorder>,
    pub traffic: Arc<TrafficMap>,
    pub stop: Arc<AtomicBool>,
    pub storm: Arc<Storm>,
    pub http: JsonClient,
    /// What buyers feel of each endpoint (latency, served or not), for the
    /// control loop's client-side signals — the same the demo's load feeds.
    pub endpoints: Arc<EndpointStats>,
}

/// A small deterministic generator (splitmix64): the drills' recorded load
/// and the benchmark's buyers; not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// How one answer is recorded, and whether the order should be retried.
fn classify(r: &Result<JsonReply, HttpError>) -> (OpResult, bool) {
    match r {
        Ok(r) if r.status == 200 || r.status == 201 => match r.body.get("order_id") {
            Some(id) if id.is_u64() => (
                OpResult::Placed {
                    order_id: id.to_string(),
                },
                false,
            ),
            // An acknowledgement without an order id is not one we can check.
            _ => (OpResult::Unknown, true),
        },
        Ok(r) if r.status == 429 => (
            OpResult::Rejected {
                code: code_of(r, "overloaded"),
            },
            true,
        ),
        Ok(r) if (400..500).contains(&r.status) => (
            OpResult::Rejected {
                code: code_of(r, "client_error"),
            },
            false,
        ),
        Ok(r) if RETRYABLE_REFUSALS.contains(&r.code()) => (
            OpResult::Rejected {
                code: r.code().to_string(),
            },
            true,
        ),
        Ok(_) | Err(_) => (OpResult::Unknown, true),
    }
}

fn code_of(r: &JsonReply, default: &str) -> String {
    match r.code() {
        "" => default.to_string(),
        c => c.to_string(),
    }
}

fn retry_pause(r: &Result<JsonReply, HttpError>) -> Duration {
    let hint = r
        .as_ref()
        .ok()
        .and_then(|r| r.body.get("retry_after_ms"))
        .and_then(Value::as_u64)
        .unwrap_or(50);
    Duration::from_millis(hint.clamp(20, 300))
}

impl Load {
    /// Starts the buyers and, if asked, the probe; returns their tasks.
    pub fn start(&self, probe: bool) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = (0..self.cfg.clients)
            .map(|c| {
                let me = self.clone();
                tokio::spawn(async move { me.buyer(c).await })
            })
            .collect();
        if probe && !self.cfg.probe_skus.is_empty() {
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.probe_writer().await }));
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.probe_reader().await }));
        }
        tasks
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    async fn buyer(&self, client: u32) {
        let mut rng = Rng::new(self.cfg.seed ^ (u64::from(client) << 32) ^ 0xB0B);
        let mut seq = 0u64;
        while !self.stopped() {
            if self.traffic.is_paused() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            seq += 1;
            let sku = if !self.cfg.hot_skus.is_empty() && rng.below(4) == 0 {
                &self.cfg.hot_skus[rng.below(self.cfg.hot_skus.len())]
            } else {
                &self.cfg.skus[rng.below(self.cfg.skus.len())]
            };
            let buyer = format!("{}b{client}-{seq}", self.cfg.run_id);
            let key = format!("{}k{client}-{seq}", self.cfg.run_id);
            self.place(client, sku, &buyer, &key, &mut rng).await;
            if !self.cfg.think.is_zero() {
                tokio::time::sleep(self.cfg.think).await;
            }
        }
    }

    /// Places one order, retrying the same key until a definite answer, the
    /// retry deadline, or the end of the load. During a retry storm each
    /// attempt sends several copies at once.
    async fn place(&self, client: u32, sku: &str, buyer: &str, key: &str, rng: &mut Rng) {
        let body = json!({
            "sku": sku, "buyer": buyer, "qty": 1, "idempotency_key": key,
            "contact": format!("+1-555-{client:04}"),
        });
        let path = format!("/v1/rooms/{}/orders", self.cfg.room);
        let started = tokio::time::Instant::now();
        loop {
            let storm = self.storm.active.load(Ordering::Relaxed);
            let (timeout, copies) = if storm {
                (
                    Duration::from_millis(self.storm.timeout_ms.load(Ordering::Relaxed).max(10)),
                    self.storm.duplicates.load(Ordering::Relaxed).max(1),
                )
            } else {
                (self.cfg.client_timeout, 1)
            };
            let attempts = (0..copies).map(|_| {
                let addr = self.traffic.pick(rng.next_u64());
                let (body, path) = (&body, &path);
                async move {
                    let addr = addr?;
                    let p = self.rec.invoke(
                        client,
                        OpKind::PlaceOrder {
                            sku: sku.to_string(),
                            buyer: buyer.to_string(),
                            qty: 1,
                            key: key.to_string(),
                        },
                    );
                    let sent = std::time::Instant::now();
                    let r = self
                        .http
                        .post(&addr, path, body, Some(&self.cfg.client_token), timeout)
                        .await;
                    self.endpoints.record(&addr, sent.elapsed(), served(&r));
                    if matches!(r, Err(HttpError::Transport { .. })) {
                        self.traffic.mark_down(&addr);
                    }
                    let (result, retry) = classify(&r);
                    self.rec.complete(p, result);
                    Some((retry, retry_pause(&r)))
                }
            });
            let outcomes: Vec<Option<(bool, Duration)>> =
                futures_util::future::join_all(attempts).await;
            let sent: Vec<(bool, Duration)> = outcomes.into_iter().flatten().collect();
            if !sent.is_empty() && sent.iter().any(|(retry, _)| !retry) {
                return;
            }
            if self.stopped() || started.elapsed() >= self.cfg.retry_deadline {
                return;
            }
            let pause = sent
                .iter()
                .map(|(_, p)| *p)
                .max()
                .unwrap_or(Duration::from_millis(100));
            tokio::time::sleep(pause).await;
        }
    }

    fn window(&self) -> usize {
        (self.rec.now_ms() / self.cfg.probe_window.as_millis().max(1) as u64) as usize
    }

    /// Orders on the window's probe listing: at most 20 keys per window.
    async fn probe_writer(&self) {
        const CLIENT: u32 = 10_000;
        let mut rng = Rng::new(self.cfg.seed ^ 0x5EED);
        let mut seq = 0u64;
        let mut last_window = usize::MAX;
        let mut keys_in_window = 0;
        while !self.stopped() {
            let w = self.window();
            let Some(sku) = self.cfg.probe_skus.get(w) else {
                return;
            };
            if w != last_window {
                last_window = w;
                keys_in_window = 0;
            }
            if keys_in_window < 20 && !self.traffic.is_paused() {
                keys_in_window += 1;
                seq += 1;
                let (buyer, key) = (
                    format!("{}p-{seq}", self.cfg.run_id),
                    format!("{}pk-{seq}", self.cfg.run_id),
                );
                self.place(CLIENT, sku, &buyer, &key, &mut rng).await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Linearizable stock reads of the window's probe listing: at most 30 per window.
    async fn probe_reader(&self) {
        const CLIENT: u32 = 10_001;
        let mut rng = Rng::new(self.cfg.seed ^ 0x4EAD);
        let mut last_window = usize::MAX;
        let mut reads = 0;
        while !self.stopped() {
            let w = self.window();
            let Some(sku) = self.cfg.probe_skus.get(w) else {
                return;
            };
            if w != last_window {
                last_window = w;
                reads = 0;
            }
            if reads < 30 {
                if let Some(addr) = self.traffic.pick(rng.next_u64()) {
                    reads += 1;
                    let p = self
                        .rec
                        .invoke(CLIENT, OpKind::ReadStock { sku: sku.clone() });
                    let r = self
                        .http
                        .get(
                            &addr,
                            &format!(
                                "/v1/rooms/{}/listings/{sku}?consistency=linearizable",
                                self.cfg.room
                            ),
                            Some(&self.cfg.client_token),
                            self.cfg.client_timeout,
                        )
                        .await;
                    let result = match &r {
                        Ok(r) if r.status == 200 => {
                            match r.body.get("stock_left").and_then(Value::as_u64) {
                                Some(s) => OpResult::Stock {
                                    stock_left: s as u32,
                                },
                                None => OpResult::Unknown,
                            }
                        }
                        Ok(r) if r.status < 500 && r.status != 429 => OpResult::Rejected {
                            code: code_of(r, "client_error"),
                        },
                        _ => OpResult::Unknown,
                    };
                    self.rec.complete(p, result);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the final read found on the healed cluster.
#[derive(Debug, Default)]
pub struct FinalState {
    pub listings: BTreeMap<String, u32>,
    pub stock_left: BTreeMap<String, u32>,
    pub orders: BTreeMap<String, FinalOrder>,
}

/// Errors of the final read.
#[derive(Debug, thiserror::Error)]
pub enum FinalReadError {
    #[error("no node is running")]
    NoNode,
    #[error("reading {what} failed after retries: {detail}")]
    Unreadable { what: String, detail: String },
}

async fn get_json(
    http: &JsonClient,
    addrs: &[String],
    path: &str,
    token: &str,
) -> Result<Value, String> {
    let mut last = String::new();
    for attempt in 0..(addrs.len() * 4).max(8) {
        let addr = &addrs[attempt % addrs.len()];
        match http
            .get(addr, path, Some(token), Duration::from_secs(3))
            .await
        {
            Ok(r) if r.status == 200 => return Ok(r.body),
            Ok(r) => last = format!("{addr}: HTTP {} {}", r.status, r.body),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Err(last)
}

/// Reads every listing and every order of the given buyers, linearizably,
/// from client API addresses, `addrs[0]` first (it should be the leader's).
pub async fn final_read_at(
    http: &JsonClient,
    addrs: &[String],
    token: &str,
    room: &str,
    buyers: &[(String, String)],
) -> Result<FinalState, FinalReadError> {
    if addrs.is_empty() {
        return Err(FinalReadError::NoNode);
    }
    let (http, token) = (http.clone(), token.to_string());
    let addrs = addrs.to_vec();
    let mut out = FinalState::default();
    let listings = get_json(
        &http,
        &addrs,
        &format!("/v1/rooms/{room}/listings?consistency=linearizable"),
        &token,
    )
    .await
    .map_err(|detail| FinalReadError::Unreadable {
        what: "the listings".into(),
        detail,
    })?;
    for l in listings.as_array().into_iter().flatten() {
        if let (Some(sku), Some(total), Some(left)) = (
            l["sku"].as_str(),
            l["stock_total"].as_u64(),
            l["stock_left"].as_u64(),
        ) {
            out.listings.insert(sku.to_string(), total as u32);
            out.stock_left.insert(sku.to_string(), left as u32);
        }
    }
    let per_task = buyers.len().div_ceil(32).max(1);
    let reads = buyers.chunks(per_task).map(|chunk| {
        let (http, token, addrs) = (http.clone(), token.clone(), addrs.clone());
        async move {
            let mut found = Vec::new();
            for (buyer, key) in chunk {
                let path = format!("/v1/buyers/{buyer}/orders?consistency=linearizable");
                let v = get_json(&http, &addrs, &path, &token)
                    .await
                    .map_err(|detail| FinalReadError::Unreadable {
                        what: format!("the orders of buyer {buyer}"),
                        detail,
                    })?;
                for o in v.as_array().into_iter().flatten() {
                    // A buyer's orders in other rooms are not this run's.
                    if o["status"] == "cancelled" || o["room"] != room {
                        continue;
                    }
                    if let (Some(id), Some(sku), Some(qty)) =
                        (o["order_id"].as_u64(), o["sku"].as_str(), o["qty"].as_u64())
                    {
                        found.push((
                            id.to_string(),
                            FinalOrder {
                                sku: sku.to_string(),
                                buyer: buyer.clone(),
                                qty: qty as u32,
                                key: key.clone(),
                            },
                        ));
                    }
                }
            }
            Ok::<_, FinalReadError>(found)
        }
    });
    for r in futures_util::future::join_all(reads).await {
        out.orders.extend(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: Value) -> Result<JsonReply, HttpError> {
        Ok(JsonReply { status, body })
    }

    #[test]
    fn answers_are_classified_conservatively() {
        let (r, retry) = classify(&reply(201, json!({"order_id": 7})));
        assert_eq!(
            r,
            OpResult::Placed {
                order_id: "7".into()
            }
        );
        assert!(!retry);
        let (r, retry) = classify(&reply(409, json!({"code": "sold_out"})));
        assert_eq!(
            r,
            OpResult::Rejected {
                code: "sold_out".into()
            }
        );
        assert!(!retry);
        let (r, retry) = classify(&reply(503, json!({"code": "no_quorum"})));
        assert_eq!(
            r,
            OpResult::Rejected {
                code: "no_quorum".into()
            }
        );
        assert!(retry);
        // A write whose fate is unknown is never a rejection.
        let (r, retry) = classify(&reply(503, json!({"code": "outcome_unknown"})));
        assert_eq!(r, OpResult::Unknown);
        assert!(retry);
        let (r, _) = classify(&reply(500, json!("boom")));
        assert_eq!(r, OpResult::Unknown);
    }

    #[test]
    fn the_generator_is_deterministic() {
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert!(Rng::new(4).below(10) < 10);
    }

    #[test]
    fn the_generator_spreads_evenly() {
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 16];
        for _ in 0..160_000 {
            counts[rng.below(16)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
