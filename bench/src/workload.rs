//! The closed-loop flash-sale workload, independent of the target: N buyers,
//! each places an order, waits for the answer, and places the next one.
//! Only answers that arrive inside the measurement window (after the warm-up,
//! before the end) count for throughput and latency.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use roomkeeper_control::recorded_load::Rng;
use tokio::task::JoinSet;

use crate::latency::Latency;

/// Buyers are drawn from a pool this large (the per-buyer limit is set high
/// enough that it never binds).
pub const BUYER_POOL: usize = 100_000;

#[derive(Clone, Debug)]
pub struct OrderReq {
    pub sku: usize,
    pub buyer: String,
    pub idempotency_key: String,
    pub contact: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (201, or 200 for a replayed key).
    Ok {
        order_id: Option<String>,
        /// Optimistic-concurrency conflicts retried inside this attempt (etcd).
        conflicts: u32,
    },
    /// A business rejection (409 sold_out / limit_exceeded).
    Rejected { code: String },
    /// A failed attempt whose fate is unknown or that the server refused for
    /// now (429/503, 5xx, connection error, timeout): retried with the same
    /// idempotency key, after `after_ms`.
    Retry { reason: String, after_ms: u64 },
    /// A failed attempt that retrying will not fix; the order is given up.
    Error { reason: String },
}

/// One buyer's connection to a target.
pub trait Driver: Send + 'static {
    fn place(&mut self, req: &OrderReq) -> impl Future<Output = Outcome> + Send;
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub label: String,
    pub run_id: String,
    pub skus: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Keep every acknowledged order (for the post-run loss check).
    pub record_acks: bool,
    /// How long after the end an order already started keeps retrying.
    pub retry_grace: Duration,
    /// Server processes whose CPU time is measured over the window.
    pub server_pids: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct Ack {
    pub order_id: String,
    pub sku: usize,
    pub buyer: String,
    pub idempotency_key: String,
}

#[derive(Debug, Default)]
pub struct LoadStats {
    /// Latency of acknowledged orders in the window, microseconds, from the
    /// first attempt to the acknowledgement (retries included).
    pub hist: Latency,
    pub ok: u64,
    pub rejected: u64,
    /// Failed attempts in the window.
    pub errors: u64,
    pub conflicts: u64,
    /// Orders still unanswered when retrying stopped (fate unknown).
    pub abandoned: u64,
    /// Every acknowledged order, warm-up and grace included.
    pub ok_total: u64,
    pub acks: Vec<Ack>,
    pub rejected_codes: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    /// Acknowledgements per millisecond since the start.
    pub slots: Vec<u32>,
    pub warmup_ms: u64,
    pub end_ms: u64,
    /// CPU spent in the measurement window (servers and load generator).
    pub cpu: Option<crate::cpu::WindowCpu>,
}

impl LoadStats {
    pub fn orders_per_sec(&self) -> f64 {
        let secs = (self.end_ms - self.warmup_ms) as f64 / 1000.0;
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Longest stretch inside the window with no acknowledgement, in ms, and
    /// the millisecond (since start) where it began.
    pub fn longest_gap_ms(&self) -> (u64, u64) {
        longest_gap(&self.slots, self.warmup_ms, self.end_ms)
    }

    /// Acknowledgements per second of the window.
    pub fn per_second(&self) -> Vec<u64> {
        let lo = self.warmup_ms as usize;
        let hi = (self.end_ms as usize).min(self.slots.len());
        self.slots
            .get(lo..hi)
            .unwrap_or(&[])
            .chunks(1000)
            .map(|c| c.iter().map(|v| u64::from(*v)).sum())
            .collect()
    }

    fn merge(&mut self, other: ClientStats) {
        self.hist.merge(&other.hist);
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.errors += other.errors;
        self.conflicts += other.conflicts;
        self.abandoned += other.abandoned;
        self.ok_total += other.ok_total;
        self.acks.extend(other.acks);
        for (k, v) in other.rejected_codes {
            *self.rejected_codes.entry(k).or_default() += v;
        }
        for s in other.error_samples {
            if self.error_samples.len() < 8 && !self.error_samples.contains(&s) {
                self.error_samples.push(s);
            }
        }
    }
}

/// Longest run of empty slots in `[lo, hi)`; returns (length, start).
pub fn longest_gap(slots: &[u32], lo: u64, hi: u64) -> (u64, u64) {
    let hi = (hi as usize).min(slots.len());
    let lo = (lo as usize).min(hi);
    let mut best = (0u64, lo as u64);
    let mut run_start = None;
    for (i, v) in slots[lo..hi].iter().enumerate() {
        let i = i + lo;
        if *v == 0 {
            run_start.get_or_insert(i);
        } else if let Some(s) = run_start.take() {
            if (i - s) as u64 > best.0 {
                best = ((i - s) as u64, s as u64);
            }
        }
    }
    if let Some(s) = run_start {
        if (hi - s) as u64 > best.0 {
            best = ((hi - s) as u64, s as u64);
        }
    }
    best
}

#[derive(Default)]
struct ClientStats {
    hist: Latency,
    ok: u64,
    rejected: u64,
    errors: u64,
    conflicts: u64,
    abandoned: u64,
    ok_total: u64,
    acks: Vec<Ack>,
    rejected_codes: BTreeMap<String, u64>,
    error_samples: Vec<String>,
}

impl ClientStats {
    fn sample_error(&mut self, reason: &str) {
        if self.error_samples.len() < 3 && !self.error_samples.iter().any(|s| s == reason) {
            self.error_samples.push(reason.to_string());
        }
    }
}

struct Shared {
    start: Instant,
    ok: AtomicU64,
    errors: AtomicU64,
    slots: Vec<AtomicU32>,
}

impl Shared {
    fn mark(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.start).as_millis() as usize;
        if let Some(slot) = self.slots.get(ms) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn sku_name(idx: usize) -> String {
    format!("sku-{idx:05}")
}

/// Runs the workload with one driver per client and returns merged stats.
/// `start` is the instant the run began (so callers can schedule faults).
pub async fn run_load<D: Driver>(
    plan: &Plan,
    drivers: Vec<D>,
    start: Instant,
) -> Result<LoadStats> {
    let warm_end = start + plan.warmup;
    let end = warm_end + plan.duration;
    let give_up = end + plan.retry_grace;
    let total_ms = (plan.warmup + plan.duration + plan.retry_grace).as_millis() as usize + 1000;
    let shared = Arc::new(Shared {
        start,
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        slots: (0..total_ms).map(|_| AtomicU32::new(0)).collect(),
    });

    let mut set = JoinSet::new();
    for (client, mut driver) in drivers.into_iter().enumerate() {
        let shared = shared.clone();
        let plan = plan.clone();
        set.spawn(async move {
            let mut st = ClientStats::default();
            let mut rng = Rng::new(
                (client as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)
                    ^ start.elapsed().as_nanos() as u64,
            );
            let mut seq = 0u64;
            while Instant::now() < end {
                seq += 1;
                let sku = rng.below(plan.skus);
                let req = OrderReq {
                    sku,
                    buyer: format!("buyer-{}", rng.below(BUYER_POOL)),
                    idempotency_key: format!("{}-{client}-{seq}", plan.run_id),
                    contact: format!("+1555{:07}", rng.below(10_000_000)),
                };
                let first = Instant::now();
                loop {
                    let out = driver.place(&req).await;
                    let now = Instant::now();
                    let in_window = now >= warm_end && now < end;
                    match out {
                        Outcome::Ok {
                            order_id,
                            conflicts,
                        } => {
                            st.ok_total += 1;
                            shared.ok.fetch_add(1, Ordering::Relaxed);
                            shared.mark(now);
                            if in_window {
                                st.ok += 1;
                                st.conflicts += u64::from(conflicts);
                                st.hist.record(now.duration_since(first).as_micros() as u64);
                            }
                            if plan.record_acks {
                                st.acks.push(Ack {
                                    order_id: order_id.unwrap_or_default(),
                                    sku,
                                    buyer: req.buyer.clone(),
                                    idempotency_key: req.idempotency_key.clone(),
                                });
                            }
                            break;
                        }
                        Outcome::Rejected { code } => {
                            if in_window {
                                st.rejected += 1;
                                *st.rejected_codes.entry(code).or_default() += 1;
                            }
                            break;
                        }
                        Outcome::Retry { reason, after_ms } => {
                            if in_window {
                                st.errors += 1;
                            }
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            st.sample_error(&reason);
                            let wait = Duration::from_millis(after_ms.clamp(1, 1000));
                            if now + wait >= give_up {
                                st.abandoned += 1;
                                break;
                            }
                            tokio::time::sleep(wait).await;
                        }
                        Outcome::Error { reason } => {
                            if in_window {
                                st.errors += 1;
                            }
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            st.sample_error(&reason);
                            // Do not spin on a persistent failure.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            break;
                        }
                    }
                }
            }
            st
        });
    }

    let progress = {
        let shared = shared.clone();
        let label = plan.label.clone();
        let warmup = plan.warmup;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::from_std(start + Duration::from_secs(1)),
                Duration::from_secs(1),
            );
            let (mut last_ok, mut last_err) = (0u64, 0u64);
            for second in 1u64.. {
                tick.tick().await;
                let ok = shared.ok.load(Ordering::Relaxed);
                let err = shared.errors.load(Ordering::Relaxed);
                // The phase of the second that just ended.
                let phase = if Duration::from_secs(second) <= warmup {
                    "warm-up"
                } else {
                    "measure"
                };
                eprintln!(
                    "  {label:<28} {second:>4}s {phase}  {:>9} orders/s  {:>6} errors/s",
                    ok - last_ok,
                    err - last_err
                );
                last_ok = ok;
                last_err = err;
            }
        })
    };

    let cpu = {
        let pids = plan.server_pids.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(warm_end.into()).await;
            let first = crate::cpu::sample(&pids);
            tokio::time::sleep_until(end.into()).await;
            first.until(&crate::cpu::sample(&pids))
        })
    };

    let mut stats = LoadStats::default();
    let mut failure = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(st) => stats.merge(st),
            Err(e) => {
                failure.get_or_insert(anyhow!("a buyer task failed: {e}"));
            }
        }
    }
    progress.abort();
    if let Some(e) = failure {
        cpu.abort();
        return Err(e);
    }
    stats.cpu = cpu.await.ok();
    stats.slots = shared
        .slots
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    stats.warmup_ms = plan.warmup.as_millis() as u64;
    stats.end_ms = (plan.warmup + plan.duration).as_millis() as u64;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_gap_finds_the_widest_hole() {
        let slots = [1, 0, 0, 1, 0, 0, 0, 0, 2, 0, 1];
        assert_eq!(longest_gap(&slots, 0, slots.len() as u64), (4, 4));
        // The window clips the hole.
        assert_eq!(longest_gap(&slots, 6, 11), (2, 6));
        // A hole running to the end of the window counts.
        let tail = [1, 1, 0, 0, 0];
        assert_eq!(longest_gap(&tail, 0, 5), (3, 2));
        assert_eq!(longest_gap(&[], 0, 10), (0, 0));
    }

    struct Flaky {
        n: u64,
    }

    impl Driver for Flaky {
        async fn place(&mut self, req: &OrderReq) -> Outcome {
            self.n += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
            match self.n % 4 {
                0 => Outcome::Retry {
                    reason: "503 no_leader".into(),
                    after_ms: 1,
                },
                1 => Outcome::Rejected {
                    code: "sold_out".into(),
                },
                _ => Outcome::Ok {
                    order_id: Some(req.idempotency_key.clone()),
                    conflicts: 1,
                },
            }
        }
    }

    #[tokio::test]
    async fn closed_loop_counts_outcomes() {
        let plan = Plan {
            label: "test".into(),
            run_id: "r".into(),
            skus: 16,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            record_acks: true,
            retry_grace: Duration::from_millis(100),
            server_pids: vec![],
        };
        let drivers = (0..4).map(|_| Flaky { n: 0 }).collect();
        let stats = run_load(&plan, drivers, Instant::now()).await.unwrap();
        assert!(stats.ok > 10, "{stats:?}");
        assert!(stats.rejected > 0 && stats.errors > 0);
        assert_eq!(stats.hist.count(), stats.ok);
        assert_eq!(stats.conflicts, stats.ok);
        assert_eq!(stats.acks.len() as u64, stats.ok_total);
        assert!(stats.ok_total >= stats.ok);
        assert_eq!(stats.rejected_codes.get("sold_out"), Some(&stats.rejected));
        assert_eq!(stats.error_samples, vec!["503 no_leader".to_string()]);
        let mut keys: Vec<_> = stats.acks.iter().map(|a| &a.idempotency_key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len() as u64, stats.ok_total, "keys are unique");
        assert!(stats.orders_per_sec() > 0.0);
        let per_sec: u64 = stats.per_second().iter().sum();
        assert_eq!(per_sec, stats.ok);
    }
}
